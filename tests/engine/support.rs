//! The test builder: runs the real `ccflow` binary in a git-initialised
//! temporary directory and reads back what it left (run records, counter
//! files, outputs).
//!
//! Tasks count their own executions by appending a line to a file under
//! `.count/` (never an input or an output), so tests never trust ccflow's
//! word for what ran.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_ccflow");

/// What one `ccflow` invocation produced.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Fails with both streams shown when the exit code differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }
}

/// A temporary repository plus the arguments of the next invocation.
pub struct Test {
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Test {
    pub fn new() -> Test {
        let dir = tempfile::Builder::new()
            .prefix("ccflow-e2e-")
            .tempdir()
            .expect("create temp dir");
        let status = Command::new("git")
            .args(["init", "-q"])
            .current_dir(dir.path())
            .status()
            .expect("run git init");
        assert!(status.success(), "git init failed");
        std::fs::create_dir_all(dir.path().join(".count")).expect("create .count");
        Test {
            dir,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn workflow(self, name: &str, yaml: &str) -> Test {
        self.file(&format!(".claudecluster/{name}.yaml"), yaml)
    }

    pub fn file(self, relative: &str, content: &str) -> Test {
        self.write(relative, content);
        self
    }

    /// Writes a file now (for changes between runs).
    pub fn write(&self, relative: &str, content: &str) {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&path, content).expect("write file");
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative))
            .unwrap_or_else(|e| panic!("read `{relative}`: {e}"))
    }

    pub fn exists(&self, relative: &str) -> bool {
        self.path(relative).exists()
    }

    pub fn args<I, S>(mut self, args: I) -> Test
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Test {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn command(&self, args: &[String]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(self.dir.path());
        for key in [
            "GITHUB_ACTIONS",
            "GITHUB_STEP_SUMMARY",
            "GITHUB_OUTPUT",
            "CCFLOW_STATE_DIR",
            "CCFLOW_LOG_LIMIT",
            "CCFLOW_KILL_GRACE",
            "NO_COLOR",
        ] {
            command.env_remove(key);
        }
        command.env("CI", "true");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }

    /// Runs with the builder's arguments.
    pub fn run(&self) -> Output {
        self.run_with(&self.args.clone())
    }

    /// Runs with other arguments (the builder's environment still applies).
    pub fn run_args(&self, args: &[&str]) -> Output {
        self.run_with(&args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    fn run_with(&self, args: &[String]) -> Output {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ccflow");
        Output {
            // A signal death shows as 128 + signal, as a shell would.
            code: out.status.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0)
            }),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts ccflow without waiting (signals, concurrent runs).
    pub fn spawn(&self) -> Child {
        self.command(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ccflow")
    }

    /// Every run record, oldest first.
    pub fn runs(&self) -> Vec<Value> {
        let dir = self.path(".ccflow/runs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut records: Vec<Value> = entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("run.json")).ok())
            .map(|text| serde_json::from_str(&text).expect("run.json is valid JSON"))
            .collect();
        records.sort_by_key(|r| {
            (
                r["started_unix_ms"].as_u64().unwrap_or(0),
                r["run_id"].as_str().unwrap_or("").to_owned(),
            )
        });
        records
    }

    /// The latest run record.
    pub fn last_run(&self) -> Value {
        self.runs().pop().expect("a run record")
    }

    /// Lines appended to `.count/NAME`: how often a task ran.
    pub fn count(&self, name: &str) -> usize {
        std::fs::read_to_string(self.path(&format!(".count/{name}")))
            .map_or(0, |s| s.lines().count())
    }

    /// Total lines in every counter file.
    pub fn total_count(&self) -> usize {
        counter_files(&self.path(".count"))
            .iter()
            .map(|p| std::fs::read_to_string(p).map_or(0, |s| s.lines().count()))
            .sum()
    }

    /// Names of the counter files.
    pub fn counters(&self) -> BTreeSet<String> {
        counter_files(&self.path(".count"))
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect()
    }
}

fn counter_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|e| e.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The instance record with this id.
pub fn instance<'a>(record: &'a Value, id: &str) -> &'a Value {
    record["instances"]
        .as_array()
        .and_then(|list| list.iter().find(|i| i["id"] == id))
        .unwrap_or_else(|| {
            panic!(
                "no instance `{id}` in the record: {}",
                serde_json::to_string_pretty(&record["instances"]).unwrap_or_default()
            )
        })
}

/// Ids of the instances with this status.
pub fn ids_with_status(record: &Value, status: &str) -> Vec<String> {
    record["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|i| i["status"] == status)
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub fn status_of(record: &Value, id: &str) -> String {
    instance(record, id)["status"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Whether a process exists and is not a zombie (an unreaped zombie has
/// already released everything; PID 1 of a container may never reap it).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            state != Some('Z') && state != Some('X')
        }
        Err(_) => false,
    }
}

/// Reads pids (one per line or whitespace-separated) from files.
pub fn pids_in(test: &Test, files: &[&str]) -> Vec<i32> {
    files
        .iter()
        .flat_map(|f| {
            test.read(f)
                .split_whitespace()
                .map(|p| p.parse::<i32>().expect("a pid"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Asserts that every pid is gone, waiting a little for the kernel.
#[track_caller]
pub fn assert_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for p in &left {
                // Do not leave them behind for the other tests.
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
            panic!("processes still alive: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `check` holds, or fails after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal to a child.
pub fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill failed");
}

/// Waits for a child with a deadline; returns (code, stdout, stderr).
pub fn wait_output(child: Child, timeout: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for ccflow"),
        Err(_) => {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("ccflow did not exit within {timeout:?}");
        }
    };
    Output {
        code: out.status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0)
        }),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A workflow of one `files:` fan-out over `src/*.txt` that copies each file
/// (counting itself), plus a reduce that concatenates the copies in item
/// order into `all.txt` and sums them into `total.txt`.
pub fn fan_out_workflow() -> &'static str {
    r#"version: 1
name: fan
tasks:
  copy:
    for_each: { files: "src/*.txt" }
    inputs: ["{{ item }}"]
    outputs: ["out/{{ item.stem }}.txt"]
    run: echo x >> .count/{{ item.stem }} && mkdir -p out && cp {{ item }} out/{{ item.stem }}.txt
  total:
    needs: [copy]
    outputs: [total.txt]
    run: echo x >> .count/total && cat {{ needs.copy.outputs }} > all.txt && awk '{s+=$1} END {print s+0}' all.txt > total.txt
"#
}

/// A test repository with `n` files `src/NNNN.txt` holding their number.
pub fn numbered_files(mut test: Test, n: usize) -> Test {
    for i in 0..n {
        test = test.file(&format!("src/{i:04}.txt"), &format!("{i}\n"));
    }
    test
}
