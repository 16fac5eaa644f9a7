//! Real processes in temp dirs: outcomes, process-tree cleanup (checked by
//! pid), environment, masking, limits, stdin, and the equivalence of direct
//! exec with `sh -c` over a corpus of scripts.

use super::*;
use std::path::Path;
use tempfile::TempDir;

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn env() -> Vec<(String, String)> {
    vec![("PATH".to_owned(), PATH.to_owned())]
}

fn shell(script: &str) -> CommandLine {
    CommandLine::Shell {
        interpreter: vec!["sh".to_owned(), "-c".to_owned()],
        script: script.to_owned(),
    }
}

fn auto(script: &str) -> CommandLine {
    CommandLine::Auto {
        script: script.to_owned(),
    }
}

fn token() -> String {
    format!("test-{}", fastrand::u64(..))
}

/// A temp dir with a `work` directory (the task's cwd) and room for the log.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("work")).expect("mkdir work");
        Self { dir }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn spec(&self, command: CommandLine) -> ProcessSpec {
        ProcessSpec {
            command,
            env: env(),
            cwd: self.work(),
            log_path: self.dir.path().join("task.log"),
            timeout: None,
            kill_grace: Duration::from_secs(2),
            masks: Vec::new(),
            log_limit: 1 << 20,
            stdin: None,
            instance_token: token(),
        }
    }

    /// The log; a task without output leaves none, which reads as empty.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("task.log")).unwrap_or_default()
    }

    /// Pids a script wrote, one per line, into `work/NAME`.
    fn pids(&self, name: &str) -> Vec<u32> {
        let text = std::fs::read_to_string(self.work().join(name)).expect("read pid file");
        let pids: Vec<u32> = text
            .lines()
            .map(|l| l.trim().parse().expect("pid"))
            .collect();
        assert!(!pids.is_empty(), "no pid in `{name}`");
        pids
    }
}

async fn run_spec(spec: ProcessSpec) -> ProcessReport {
    run(spec, CancellationToken::new(), None).await
}

/// A process exists (zombies included) under this pid.
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a process still runs (a zombie waiting to be reaped does not).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z'),
        Err(_) => false,
    }
}

fn assert_gone(pids: &[u32]) {
    // SIGKILL takes effect asynchronously; on a loaded machine the kernel
    // may need a moment to tear a process down.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    for &pid in pids {
        while running(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!running(pid), "process {pid} survived its task");
    }
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let fixture = Fixture::new();
    let report = run_spec(fixture.spec(auto("/bin/true"))).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 0 });
    assert!(report.pid.is_some());
    let report = run_spec(fixture.spec(auto("false"))).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 1 });
    let report = run_spec(fixture.spec(shell("exit 3"))).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 3 });
    let report = run_spec(fixture.spec(auto("sh -c 'exit 42'"))).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 42 });
    assert_eq!(report.orphans_killed, 0);
}

#[tokio::test]
async fn sh_is_found_without_path() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(auto("exit 4"));
    spec.env = Vec::new();
    let report = run_spec(spec).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 4 });
}

#[tokio::test]
async fn bash_interpreter_with_pipefail() {
    let fixture = Fixture::new();
    let command = CommandLine::Shell {
        interpreter: ["bash", "-eo", "pipefail", "-c"]
            .map(str::to_owned)
            .to_vec(),
        script: "false | true".to_owned(),
    };
    let report = run_spec(fixture.spec(command)).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 1 });
}

#[tokio::test]
async fn signal_is_reported() {
    let fixture = Fixture::new();
    let report = run_spec(fixture.spec(shell("kill -KILL $$"))).await;
    assert_eq!(report.outcome, ProcessOutcome::Signaled { signal: 9 });
    assert_eq!(report.outcome.to_string(), "killed by signal 9 (SIGKILL)");
}

#[tokio::test]
async fn timeout_kills_the_process_tree() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(shell(
        "sleep 1000 & echo $! > pids; (sleep 1000; true) & echo $! >> pids; wait",
    ));
    spec.timeout = Some(Duration::from_millis(300));
    let report = run_spec(spec).await;
    assert_eq!(
        report.outcome,
        ProcessOutcome::TimedOut {
            after: Duration::from_millis(300)
        }
    );
    assert!(
        report.duration < Duration::from_secs(2),
        "{:?}",
        report.duration
    );
    assert!(report.orphans_killed >= 2, "{report:?}");
    assert_gone(&fixture.pids("pids"));
}

#[tokio::test]
async fn sigterm_ignored_is_killed_after_grace() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(shell(
        "trap '' TERM; sleep 1000 & echo $! > pids; wait; wait",
    ));
    spec.timeout = Some(Duration::from_millis(200));
    spec.kill_grace = Duration::from_millis(400);
    let report = run_spec(spec).await;
    assert!(
        matches!(report.outcome, ProcessOutcome::TimedOut { .. }),
        "{report:?}"
    );
    assert!(
        report.duration >= Duration::from_millis(600),
        "{:?}",
        report.duration
    );
    assert!(
        report.duration < Duration::from_secs(3),
        "{:?}",
        report.duration
    );
    assert_gone(&fixture.pids("pids"));
}

#[tokio::test]
async fn cancel_kills_the_tree() {
    let fixture = Fixture::new();
    let spec = fixture.spec(shell("sleep 1000 & echo $! > pids; sleep 1000"));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(spec, cancel.clone(), None));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    let report = task.await.expect("join");
    assert_eq!(report.outcome, ProcessOutcome::Cancelled);
    assert_gone(&fixture.pids("pids"));
    let main = report.pid.expect("pid");
    assert!(!exists(main));
}

#[tokio::test]
async fn already_cancelled_spawns_nothing() {
    let fixture = Fixture::new();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let report = run(fixture.spec(shell("touch ran")), cancel, None).await;
    assert_eq!(report.outcome, ProcessOutcome::Cancelled);
    assert_eq!(report.pid, None);
    assert!(!fixture.work().join("ran").exists());
}

#[tokio::test]
async fn background_job_holding_the_pipe_does_not_hang() {
    let fixture = Fixture::new();
    let report = run_spec(fixture.spec(shell("sleep 1000 & echo $! > pids; echo started"))).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 0 });
    assert!(report.duration < DRAIN_GRACE, "{:?}", report.duration);
    assert_eq!(report.orphans_killed, 1);
    assert_eq!(fixture.log(), "started\n");
    assert_gone(&fixture.pids("pids"));
}

#[tokio::test]
async fn escaped_daemons_are_killed() {
    let fixture = Fixture::new();
    // One daemon leaves the group and session with setsid and keeps the log
    // pipe open; another double-forks and closes its output; a third is
    // started by an escaped daemon (a grandchild in another session).
    let script = r#"
        setsid sh -c 'echo $$ >> pids; exec sleep 1000' &
        (setsid sh -c 'echo $$ >> pids; exec sleep 1000' > /dev/null 2>&1 < /dev/null &) &
        setsid sh -c 'sleep 1000 & echo $! >> pids; echo $$ >> pids; wait' > /dev/null 2>&1 &
        sleep 0.3
        echo done
    "#;
    let report = run_spec(fixture.spec(shell(script))).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 0 });
    let pids = fixture.pids("pids");
    assert_eq!(pids.len(), 4, "{pids:?}");
    assert_gone(&pids);
    assert!(report.orphans_killed >= 4, "{report:?}");
    assert!(
        report.duration < Duration::from_secs(2),
        "{:?}",
        report.duration
    );
}

#[tokio::test]
async fn escaped_daemon_without_token_holding_the_pipe_is_killed() {
    let fixture = Fixture::new();
    let script = "setsid env -i /bin/sleep 1000 & echo $! > pids; echo started";
    let report = run_spec(fixture.spec(shell(script))).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 0 });
    assert_eq!(fixture.log(), "started\n");
    assert_eq!(report.orphans_killed, 1, "{report:?}");
    assert!(
        report.duration < Duration::from_secs(3),
        "{:?}",
        report.duration
    );
    assert_gone(&fixture.pids("pids"));
}

#[tokio::test]
async fn environment_is_exactly_the_given_one() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(auto("env"));
    assert!(spec.command.direct().is_some());
    let cwd = std::fs::canonicalize(fixture.work()).expect("canonicalize");
    spec.env = vec![
        ("PATH".to_owned(), PATH.to_owned()),
        ("HOME".to_owned(), "/nonexistent".to_owned()),
        ("PWD".to_owned(), cwd.display().to_string()),
        ("SPACED".to_owned(), "a b  c".to_owned()),
    ];
    let token = spec.instance_token.clone();
    let mut expected: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    expected.push(format!("CCFLOW_INSTANCE_TOKEN={token}"));
    expected.sort();
    let report = run_spec(spec).await;
    assert!(report.outcome.is_success());
    let mut lines: Vec<String> = fixture.log().lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn missing_working_directory_is_a_spawn_failure() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(shell("true"));
    spec.cwd = fixture.work().join("missing");
    let report = run_spec(spec).await;
    let ProcessOutcome::SpawnFailed { program, reason } = &report.outcome else {
        panic!("{report:?}");
    };
    assert_eq!(program, "sh");
    assert!(reason.starts_with("working directory `"), "{reason}");
    assert!(reason.ends_with("missing` does not exist"), "{reason}");
}

#[tokio::test]
async fn command_not_found_direct_and_shell() {
    let fixture = Fixture::new();
    let report = run_spec(fixture.spec(auto("no-such-command-ccflow --flag"))).await;
    let ProcessOutcome::SpawnFailed { program, reason } = &report.outcome else {
        panic!("{report:?}");
    };
    assert_eq!(program, "no-such-command-ccflow");
    assert!(reason.starts_with("command not found"), "{reason}");
    assert_eq!(
        fixture.log(),
        format!("ccflow: failed to start `no-such-command-ccflow`: {reason}\n")
    );

    let report = run_spec(fixture.spec(shell("no-such-command-ccflow --flag"))).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 127 });
    assert_eq!(
        report.outcome.to_string(),
        "exited with code 127 (command not found)"
    );
    assert!(fixture.log().contains("not found"), "{}", fixture.log());

    let missing_shell = CommandLine::Shell {
        interpreter: vec!["no-such-shell-ccflow".to_owned(), "-c".to_owned()],
        script: "true".to_owned(),
    };
    let report = run_spec(fixture.spec(missing_shell)).await;
    assert!(
        matches!(&report.outcome, ProcessOutcome::SpawnFailed { program, .. } if program == "no-such-shell-ccflow"),
        "{report:?}"
    );
}

#[tokio::test]
async fn unwritable_log_is_reported_and_the_task_still_runs() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(shell("touch ran; echo output"));
    spec.log_path = fixture.work().join("no-dir").join("task.log");
    let report = run_spec(spec).await;
    assert!(report.outcome.is_success(), "{report:?}");
    let error = report.log_error.expect("a log error");
    assert!(error.contains("no-dir/task.log"), "{error}");
    assert!(fixture.work().join("ran").exists());
}

#[tokio::test]
async fn silent_task_leaves_no_log() {
    let fixture = Fixture::new();
    std::fs::write(fixture.dir.path().join("task.log"), "stale").expect("write");
    let report = run_spec(fixture.spec(auto("/bin/true"))).await;
    assert!(report.outcome.is_success());
    assert_eq!(report.log_bytes, 0);
    assert!(!fixture.dir.path().join("task.log").exists());
}

#[tokio::test]
async fn secrets_are_masked_in_log_and_last_line() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(shell(
        "echo token=s3cr3t-value; printf 's3cr3t'; sleep 0.1; printf -- '-value and s3cr3t-value\\n\\n'",
    ));
    spec.masks = vec!["s3cr3t-value".to_owned(), String::new()];
    let last_line = Arc::new(Mutex::new(String::new()));
    let report = run(spec, CancellationToken::new(), Some(Arc::clone(&last_line))).await;
    assert!(report.outcome.is_success());
    assert_eq!(fixture.log(), "token=***\n*** and ***\n\n");
    assert_eq!(*last_line.lock().expect("lock"), "*** and ***");
}

#[tokio::test]
async fn last_line_tracks_latest_output() {
    let fixture = Fixture::new();
    let spec = fixture.spec(shell(
        "echo first; sleep 0.2; echo '  second line  '; sleep 1000",
    ));
    let last_line = Arc::new(Mutex::new(String::new()));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(spec, cancel.clone(), Some(Arc::clone(&last_line))));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(*last_line.lock().expect("lock"), "second line");
    cancel.cancel();
    let report = task.await.expect("join");
    assert_eq!(report.outcome, ProcessOutcome::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_of_output_is_truncated_without_hanging() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(shell(
        "head -c 1000000000 /dev/zero | tr '\\0' a; echo tail",
    ));
    spec.log_limit = 100_000;
    let report = run_spec(spec).await;
    assert_eq!(report.outcome, ProcessOutcome::Exited { code: 0 });
    assert!(report.log_truncated);
    assert_eq!(report.output_bytes, 1_000_000_005);
    let log = fixture.log();
    let marker = "\n[ccflow: log truncated at 100000 bytes, 999900005 more bytes dropped]\n";
    assert_eq!(log.len(), 100_000 + marker.len());
    assert!(log.ends_with(marker), "{}", &log[99_990..]);
    assert_eq!(report.log_bytes, log.len() as u64);
    assert!(log[..100_000].bytes().all(|b| b == b'a'));
}

#[tokio::test]
async fn stdin_is_delivered() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(auto("cat"));
    spec.stdin = Some(b"hello\nworld".to_vec());
    let report = run_spec(spec).await;
    assert!(report.outcome.is_success());
    assert_eq!(fixture.log(), "hello\nworld");

    // A task that never reads a large stdin must still finish.
    let mut spec = fixture.spec(auto("/bin/true"));
    spec.stdin = Some(vec![b'x'; 4 << 20]);
    let report = run_spec(spec).await;
    assert!(report.outcome.is_success());

    // Without stdin the task reads /dev/null, never the runner's terminal.
    let report = run_spec(fixture.spec(shell("cat; echo end"))).await;
    assert!(report.outcome.is_success());
    assert_eq!(fixture.log(), "end\n");
}

/// Scripts that [`shellwords::parse`] accepts: each runs directly and via
/// `sh -c` in identical fresh directories, and the log, the exit code and
/// every file must match.
const EQUIVALENT: &[&str] = &[
    "cat input.txt",
    "cat 'input.txt'",
    "cat \"input.txt\"",
    "ls -1",
    "ls -1 'sub dir'",
    "ls -1 sub\\ dir",
    "ls -1 \"sub dir\" ./sub\\ dir/",
    "/usr/bin/printf '%s|' a b c",
    "/usr/bin/printf '%s|' 'a b' \"c d\" e\\ f",
    "/usr/bin/printf '[%s]' ''",
    "/usr/bin/printf '[%s]' \"\" ''\"\" x",
    "/usr/bin/printf '[%s]' a''b \"c\"'d'e",
    "/usr/bin/printf '[%s]' \"a\\\"b\" 'a\"b' a\\\"b",
    "/usr/bin/printf '[%s]' \"back\\\\slash\" 'back\\slash' back\\\\slash",
    "/usr/bin/printf '[%s]' \"\\a\\b\\c\\n\"",
    "/usr/bin/printf '[%s]' \"\\$HOME\" '$HOME' \\$HOME",
    "/usr/bin/printf '[%s]' \"\\`tick\\`\" \\`",
    "/usr/bin/printf '[%s]' héllo 'wörld' \"日本語\" 🎉",
    "/usr/bin/printf '[%s]'   spaced    out\ttabs\t",
    "/usr/bin/printf '[%s]' 'two\nlines'",
    "/usr/bin/printf '[%s]' \"con\\\ntinued\" un\\\nquoted",
    "/usr/bin/printf '[%s]' \"it's\" 'say \"hi\"' a=b --flag=x% ^caret @at ,comma +plus",
    "cat input.txt > out.txt",
    "cat input.txt >out.txt",
    "cat input.txt >> existing.txt",
    "cat < input.txt",
    "cat <input.txt > 'out file.txt'",
    "tr a-z A-Z < input.txt > upper.txt",
    "ls missing-file 2>&1",
    "ls missing-file > out.txt 2>&1",
    "ls missing-file 2>&1 > out.txt",
    "ls input.txt missing-file > out.txt",
    "2>&1 ls missing-file",
    "wc -c input.txt",
    "cat input.txt\n",
    "\nwc -l input.txt\n\n",
    "sort input.txt",
    "printenv PATH CCFLOW_INSTANCE_TOKEN HOME",
    "printenv PWD",
    "./script.sh 'an arg'",
    "./noshebang.sh one",
    "true",
    "false",
    "sh -c 'exit 7'",
    "cat nonexistent",
    // Pathname patterns, expanded by ccflow as sh would.
    "cat g/*.txt",
    "cat g/*.txt > all.txt",
    "/usr/bin/printf '[%s]' g/*",
    "/usr/bin/printf '[%s]' g/*.* g/a* g/*b* g/*.txt* g/B*",
    "/usr/bin/printf '[%s]' g/*x*x* g/a*a g/*.none",
    "/usr/bin/printf '[%s]' ./g/* g//*",
    "/usr/bin/printf '[%s]' *",
    "/usr/bin/printf '[%s]' missing/*.txt input.txt/*",
    "/usr/bin/printf '[%s]' g/*space* g/*sub*",
    "/usr/bin/printf '[%s]' '*' g/'*'",
];

fn populate(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    // Names whose byte order and collation order differ, hidden ones, one
    // with a space and a subdirectory, for the pathname patterns.
    std::fs::create_dir(dir.join("g")).expect("mkdir");
    for name in [
        "b.txt",
        "a.txt",
        "B.txt",
        "_x.txt",
        "a-b.txt",
        "a.b.txt",
        "A10.txt",
        "A9.txt",
        "é.txt",
        "with space.txt",
        ".hidden.txt",
        "axbxa",
        "noext",
    ] {
        std::fs::write(dir.join("g").join(name), name).expect("write");
    }
    std::fs::create_dir(dir.join("g").join("sub.txt")).expect("mkdir");
    std::fs::write(dir.join("input.txt"), "pear\napple\nfig\n").expect("write");
    std::fs::write(dir.join("existing.txt"), "already here\n").expect("write");
    std::fs::create_dir(dir.join("sub dir")).expect("mkdir");
    std::fs::write(dir.join("sub dir").join("inner file"), "x").expect("write");
    for (name, body) in [
        ("script.sh", "#!/bin/sh\necho \"script got [$1]\"\n"),
        ("noshebang.sh", "echo \"no shebang got [$1]\"\n"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

/// Every file under `dir` with its content, sorted by path.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path
                    .strip_prefix(dir)
                    .expect("prefix")
                    .display()
                    .to_string();
                files.push((relative, std::fs::read(&path).expect("read")));
            }
        }
    }
    files.sort();
    files
}

async fn run_in_fresh_dir(
    command: CommandLine,
    token: &str,
) -> (ProcessOutcome, String, Vec<(String, Vec<u8>)>) {
    let fixture = Fixture::new();
    populate(&fixture.work());
    let mut spec = fixture.spec(command);
    spec.instance_token = token.to_owned();
    let report = run_spec(spec).await;
    let real = std::fs::canonicalize(fixture.work()).expect("canonicalize");
    let log = fixture
        .log()
        .replace(&real.display().to_string(), "<DIR>")
        .replace(&fixture.work().display().to_string(), "<DIR>");
    (report.outcome, log, snapshot(&fixture.work()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_exec_matches_sh() {
    for script in EQUIVALENT {
        assert!(
            shellwords::parse(script).is_some(),
            "not direct: {script:?}"
        );
        let token = token();
        let direct = run_in_fresh_dir(auto(script), &token).await;
        let via_shell = run_in_fresh_dir(shell(script), &token).await;
        assert_eq!(direct, via_shell, "script {script:?}");
    }
}

#[test]
fn star_patterns_expand_in_byte_order_only_where_sh_would_agree() {
    let fixture = Fixture::new();
    populate(&fixture.work());
    let mut spec = fixture.spec(auto("cat g/a*.txt g/none*"));
    let direct = shellwords::parse("cat g/a*.txt g/none*").expect("direct");
    let expanded = expand_globs(&spec, direct.clone()).expect("the C locale sorts by bytes");
    assert_eq!(
        expanded.argv,
        ["cat", "g/a-b.txt", "g/a.b.txt", "g/a.txt", "g/none*"]
    );
    assert!(expanded.globs.is_empty());
    // An `sh` that is bash, under a locale that may collate otherwise: the
    // script goes to sh. The same `sh` being dash: expanded here.
    let bin = tempfile::tempdir().expect("tempdir");
    for (shell, expands) in [("/bin/bash", false), ("/bin/dash", true)] {
        let dir = bin.path().join(shell.trim_start_matches("/bin/"));
        std::fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::symlink(shell, dir.join("sh")).expect("symlink");
        spec.env = vec![
            ("PATH".into(), format!("{}:/usr/bin:/bin", dir.display())),
            ("LANG".into(), "en_US.UTF-8".into()),
        ];
        assert_eq!(
            expand_globs(&spec, direct.clone()).is_some(),
            expands,
            "sh = {shell}"
        );
    }
}

/// Per-task overhead: 1,000 trivial tasks at concurrency 2, direct exec vs
/// `sh -c`. Run with
/// `cargo test --release --lib exec::local::tests::overhead -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark, prints figures"]
async fn overhead() {
    use futures_util::StreamExt as _;
    for (label, command) in [("direct", auto("true")), ("sh -c", shell("true"))] {
        let fixture = Fixture::new();
        let started = Instant::now();
        let count = 1000;
        let specs: Vec<ProcessSpec> = (0..count)
            .map(|i| {
                let mut spec = fixture.spec(command.clone());
                spec.log_path = fixture.dir.path().join(format!("task-{i}.log"));
                spec
            })
            .collect();
        let failures = futures_util::stream::iter(specs)
            .map(run_spec)
            .buffer_unordered(2)
            .filter(|report| std::future::ready(!report.outcome.is_success()))
            .count()
            .await;
        let elapsed = started.elapsed();
        assert_eq!(failures, 0);
        let per_task = elapsed.as_secs_f64() * 1000.0 / f64::from(count);
        crate::outln!("{label}: {count} tasks at -j2 in {elapsed:?}, {per_task:.3} ms per task");
    }
    // The floor: bare tokio spawn + wait of the same program, same runtime.
    let started = Instant::now();
    let failures = futures_util::stream::iter(0..1000)
        .map(|_| async {
            tokio::process::Command::new("/bin/true")
                .status()
                .await
                .map_or(true, |status| !status.success())
        })
        .buffer_unordered(2)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    assert_eq!(failures, 0);
    let per_task = started.elapsed().as_secs_f64();
    crate::outln!("bare tokio spawn: 1000 tasks at -j2, {per_task:.3} ms per task");
    // ninja, when installed: 1,000 phony-free edges running `true`.
    if let Ok(dir) = tempfile::tempdir() {
        let mut build = String::from("rule t\n  command = true\n");
        for i in 0..1000 {
            build.push_str(&format!("build o{i}: t\n"));
        }
        std::fs::write(dir.path().join("build.ninja"), build).expect("write build.ninja");
        let started = Instant::now();
        if let Ok(status) = std::process::Command::new("ninja")
            .args(["-j2", "-C"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .status()
        {
            assert!(status.success());
            let per_task = started.elapsed().as_secs_f64();
            crate::outln!("ninja (sh -c): 1000 tasks at -j2, {per_task:.3} ms per task");
        }
    }
    // The same work by xargs, measured in the same run for a fair reference
    // on a loaded machine.
    for (label, tail) in [("xargs direct", "true"), ("xargs sh -c", "sh -c true")] {
        let started = Instant::now();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("seq 1000 | xargs -P 2 -I{{}} {tail}"))
            .status()
            .expect("xargs");
        assert!(status.success());
        let per_task = started.elapsed().as_secs_f64();
        crate::outln!("{label}: 1000 tasks at -P2, {per_task:.3} ms per task");
    }
}
