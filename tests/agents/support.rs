//! Shared fixtures of the agent end-to-end tests: a temp git repository with
//! committed, uncommitted and untracked files; the crate's mock of the
//! Messages API served in-process; the real `ccflow` binary run against both
//! with the real `claude` CLI; and probes of what a run left behind (run
//! records, worktrees, processes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ccflow::mock::{MockServer, MockStats, Script};

/// The real CLI: `CCFLOW_CLAUDE`, else the one bundled with the
/// `claude-agent-sdk` Python package. `None` (test skipped) when absent,
/// unless `CI=true`, where a missing CLI fails the test.
pub fn claude() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CCFLOW_CLAUDE").map(PathBuf::from) {
        if path.is_file() {
            return Some(path);
        }
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import claude_agent_sdk,os;print(os.path.dirname(claude_agent_sdk.__file__))",
        ])
        .output();
    if let Ok(output) = output {
        let path =
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("_bundled/claude");
        if output.status.success() && path.is_file() {
            return Some(path);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the claude CLI is required under CI=true: pip install claude-agent-sdk or set CCFLOW_CLAUDE"
    );
    eprintln!("skipping: no claude CLI (pip install claude-agent-sdk, or set CCFLOW_CLAUDE)");
    None
}

/// The mock API, served by its own runtime so tests stay synchronous.
pub struct Mock {
    server: Option<MockServer>,
    runtime: tokio::runtime::Runtime,
}

impl Mock {
    pub fn start(yaml: &str) -> Mock {
        let script =
            Script::from_yaml_str(yaml, Path::new("mock.yaml")).expect("valid mock script");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(MockServer::start(script, 0))
            .expect("start the mock");
        Mock {
            server: Some(server),
            runtime,
        }
    }

    pub fn url(&self) -> String {
        self.server.as_ref().expect("server").base_url()
    }

    pub fn stats(&self) -> MockStats {
        self.server.as_ref().expect("server").stats()
    }

    /// Also checks the HTTP endpoint agrees with the in-process counters.
    pub fn http_stats(&self) -> serde_json::Value {
        use std::io::{Read, Write};
        let port = self.server.as_ref().expect("server").port();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .write_all(b"GET /__ccflow/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        serde_json::from_str(body.trim()).expect("stats json")
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

/// What one `ccflow` process did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A git repository in a temp dir, plus a HOME outside it.
pub struct Repo {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub home: PathBuf,
    pub claude: PathBuf,
    pub env: Vec<(String, String)>,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Repo {
    /// An empty repository with one commit (`README.md`).
    pub fn new(claude: &Path) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        // The CLI reports canonical paths (`/tmp` may be a symlink).
        let base = dir.path().canonicalize().expect("canonical");
        let root = base.join("repo");
        let home = base.join("home");
        std::fs::create_dir_all(&root).expect("repo dir");
        std::fs::create_dir_all(&home).expect("home dir");
        git(&root, &["init", "-q", "-b", "main"]);
        git(&root, &["config", "user.email", "test@example.com"]);
        git(&root, &["config", "user.name", "Test"]);
        git(&root, &["config", "commit.gpgsign", "false"]);
        let repo = Repo {
            _dir: dir,
            root,
            home,
            claude: claude.to_path_buf(),
            env: Vec::new(),
        };
        repo.write("README.md", "# test repo\n");
        repo.commit("initial");
        repo
    }

    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) {
        let full = self.root.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("parent");
        }
        std::fs::write(full, content).expect("write");
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    pub fn commit(&self, message: &str) {
        git(&self.root, &["add", "-A"]);
        git(&self.root, &["commit", "-q", "-m", message]);
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(&self.root, args)
    }

    pub fn workflow(&self, name: &str, yaml: &str) {
        self.write(&format!(".claudecluster/{name}.yaml"), yaml);
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    fn command(&self, mock: &Mock, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ccflow"));
        command
            .args(args)
            .current_dir(&self.root)
            .env_remove("GITHUB_ACTIONS")
            .env_remove("CCFLOW_STATE_DIR")
            .env_remove("ANTHROPIC_AUTH_TOKEN")
            .env("NO_COLOR", "1")
            .env("HOME", &self.home)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("ANTHROPIC_BASE_URL", mock.url())
            .env("ANTHROPIC_API_KEY", "test-key")
            .env("CCFLOW_CLAUDE", &self.claude)
            .env("CCFLOW_RATE_LIMIT_BACKOFF", "200ms")
            .env("CCFLOW_KILL_GRACE", "1s")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Runs `ccflow ARGS` to the end.
    pub fn ccflow(&self, mock: &Mock, args: &[&str]) -> Output {
        let output = self
            .command(mock, args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn ccflow");
        let output = Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        eprintln!(
            "ccflow {args:?} -> {}\n--- stdout\n{}--- stderr\n{}",
            output.code, output.stdout, output.stderr
        );
        output
    }

    /// Starts `ccflow ARGS` in the background (output to files in HOME).
    pub fn spawn(&self, mock: &Mock, args: &[&str]) -> Child {
        let out = std::fs::File::create(self.home.join("ccflow.out")).expect("out");
        let err = std::fs::File::create(self.home.join("ccflow.err")).expect("err");
        self.command(mock, args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn ccflow")
    }

    /// The record of the latest run (by start time).
    pub fn last_record(&self) -> serde_json::Value {
        let mut records: Vec<serde_json::Value> = self.records();
        records.sort_by_key(|r| r["started_unix_ms"].as_u64().unwrap_or(0));
        records.pop().expect("a run record")
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        let Ok(entries) = std::fs::read_dir(self.root.join(".ccflow/runs")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path().join("run.json")).ok())
            .map(|bytes| serde_json::from_slice(&bytes).expect("run.json is JSON"))
            .collect()
    }

    pub fn run_dir(&self, record: &serde_json::Value) -> PathBuf {
        self.root
            .join(".ccflow/runs")
            .join(record["run_id"].as_str().expect("run_id"))
    }

    /// Every file of the working tree (not `.git`, not `.ccflow`) with its bytes.
    pub fn tree(&self) -> BTreeMap<String, Vec<u8>> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
            for entry in std::fs::read_dir(dir)
                .expect("read_dir")
                .filter_map(Result::ok)
            {
                let path = entry.path();
                let name = entry.file_name();
                if dir == root && (name == ".git" || name == ".ccflow") {
                    continue;
                }
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path
                        .strip_prefix(root)
                        .expect("prefix")
                        .display()
                        .to_string();
                    out.insert(rel, std::fs::read(&path).expect("read"));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root, &self.root, &mut out);
        out
    }

    /// Checkouts left under `.ccflow/worktrees` (folders holding a `.git` file).
    pub fn worktrees_left(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if path.join(".git").exists() {
                    out.push(path);
                } else if path.is_dir() && depth < 3 {
                    walk(&path, depth + 1, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root.join(".ccflow/worktrees"), 0, &mut out);
        out
    }

    /// Lines of `git worktree list --porcelain` naming a worktree.
    pub fn git_worktrees(&self) -> Vec<String> {
        self.git(&["worktree", "list", "--porcelain"])
            .lines()
            .filter(|l| l.starts_with("worktree "))
            .map(str::to_owned)
            .collect()
    }

    /// Processes (other than this test) whose cwd is inside the repository
    /// or whose command line names it.
    pub fn processes_inside(&self) -> Vec<String> {
        let me = std::process::id().to_string();
        let root = self.root.display().to_string();
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.filter_map(Result::ok) {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.chars().all(|c| c.is_ascii_digit()) || pid == me {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.is_empty() {
                continue; // zombie or kernel thread
            }
            let cwd = std::fs::read_link(entry.path().join("cwd"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if cwd.starts_with(&root) || cmdline.contains(&root) {
                found.push(format!("{pid} cwd={cwd} cmd={cmdline}"));
            }
        }
        found
    }

    /// Waits (bounded) until no process is inside the repository.
    pub fn wait_no_processes(&self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = self.processes_inside();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The record's instance with this id.
pub fn instance<'a>(record: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    record["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("no instance `{id}` in {record:#}"))
}

/// Ids of instances with this status.
pub fn with_status(record: &serde_json::Value, status: &str) -> Vec<String> {
    record["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["status"] == status)
        .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits (bounded) for `check`.
pub fn wait_for(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// Sonnet prices of CLI 2.1.332 in dollars per million tokens (input, output,
/// cache write, cache read), as measured in `src/agent/tests.rs`.
pub fn sonnet_cost(input: u64, output: u64, cache_write: u64, cache_read: u64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "token counts are small")]
    let cost = (input as f64 * 2.0
        + output as f64 * 10.0
        + cache_write as f64 * 2.5
        + cache_read as f64 * 0.1)
        / 1e6;
    cost
}
