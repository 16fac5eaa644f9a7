//! Agent tasks with `runner: docker`: the real `ccflow` binary runs real
//! `claude` CLI sessions inside `ccflow-test/agent` containers (built by
//! `.ci/docker-images.sh`; the host's CLI is mounted through
//! `agent.command`) against the crate's mock of the Messages API, served in
//! this process on the host's loopback.
//!
//! Needs the Docker engine and the claude CLI: both missing fail the tests
//! under `CI=true`; otherwise they are skipped with a printed reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ccflow::mock::{MockServer, Script};

const IMAGE: &str = "ccflow-test/agent:latest";

/// Fails under `CI=true`, else prints why the test is skipped.
fn missing(what: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} is required under CI=true"
    );
    eprintln!("skipping: {what} is missing");
}

/// The real claude CLI: `CCFLOW_CLAUDE`, `claude` on PATH, or the
/// claude-agent-sdk bundle.
fn find_claude() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CCFLOW_CLAUDE")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Some(path);
    }
    if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("claude"))
            .find(|p| p.is_file())
    }) {
        return Some(path);
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import claude_agent_sdk,os;print(os.path.dirname(claude_agent_sdk.__file__))",
        ])
        .output()
        .ok()?;
    let path =
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("_bundled/claude");
    (output.status.success() && path.is_file()).then_some(path)
}

/// The claude CLI, with the engine reachable and the test image built; `None`
/// when a test should be skipped.
fn prerequisites() -> Option<PathBuf> {
    let Some(claude) = find_claude() else {
        missing("the claude CLI (pip install claude-agent-sdk, or set CCFLOW_CLAUDE)");
        return None;
    };
    if !Command::new("docker")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        missing("a reachable Docker engine and the `docker` CLI");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/docker-images.sh");
    let built = Command::new("sh")
        .arg(&script)
        .env("CCFLOW_TEST_CLAUDE", &claude)
        .output()
        .expect("run .ci/docker-images.sh");
    assert!(
        built.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    Some(claude)
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .expect("run git");
    assert!(status.success(), "git {args:?}");
}

/// A committed git repository holding `files` and `.claudecluster/agents.yaml`.
fn repository(workflow: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join(".claudecluster")).expect("mkdir");
    std::fs::write(dir.path().join(".claudecluster/agents.yaml"), workflow)
        .expect("write workflow");
    for (path, content) in files {
        std::fs::write(dir.path().join(path), content).expect("write file");
    }
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    dir
}

/// An agent task fanned out over `items`, in the test image, running `claude`
/// mounted from the host.
fn workflow(claude: &Path, items: &[&str]) -> String {
    workflow_with(claude, items, "")
}

/// [`workflow`] with `extra` lines appended to the task.
fn workflow_with(claude: &Path, items: &[&str], extra: &str) -> String {
    format!(
        r#"version: 1
name: agents
tasks:
  refactor:
    for_each:
      items: [{items}]
    runner: docker
    image: {IMAGE}
    outputs: ["{{{{ item }}}}"]
    agent:
      command: {claude}
      prompt: "Refactor {{{{ item }}}} and record who you are"
      allowed_tools: [Bash]
{extra}"#,
        items = items.join(", "),
        claude = claude.display(),
    )
}

fn ccflow(dir: &Path, home: &Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ccflow"));
    command
        .args(["run", "agents"])
        .current_dir(dir)
        .env("HOME", home)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("ANTHROPIC_API_KEY", "test")
        .env_remove("CCFLOW_CLAUDE")
        .env_remove("GITHUB_ACTIONS");
    command
}

fn text(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The ids of this repository's runs, oldest first.
fn runs(dir: &Path) -> Vec<String> {
    let mut runs: Vec<String> = std::fs::read_dir(dir.join(".ccflow/runs"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    runs.sort();
    runs
}

/// The run record's agent artifact of `instance` (`refactor[a.rs]`) whose
/// name ends in `suffix` (names add a hash to sanitised ids).
fn artifact(dir: &Path, run_id: &str, instance: &str, suffix: &str) -> Option<PathBuf> {
    let prefix: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    std::fs::read_dir(dir.join(format!(".ccflow/runs/{run_id}/agents")))
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(suffix))
        })
}

/// Names of the containers (any state) labelled with run `run_id`.
fn containers_of(run_id: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args([
            "ps",
            "--all",
            "--filter",
            &format!("label=ccflow.run={run_id}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker ps");
    assert!(
        output.status.success(),
        "docker ps: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn mock(runtime: &tokio::runtime::Runtime, script: &str) -> MockServer {
    let script = Script::from_yaml_str(script, Path::new("mock.yaml")).expect("valid mock script");
    runtime
        .block_on(MockServer::start(script, 0))
        .expect("start the mock")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

// SAFETY (both): getuid and getgid cannot fail and touch no memory.
fn uid() -> u32 {
    unsafe { libc::getuid() }
}
fn gid() -> u32 {
    unsafe { libc::getgid() }
}

const REFACTOR: &str = r#"
rules:
  - name: refactor
    regex: 'Refactor (?<file>\S+)'
    turns:
      - content:
          - tool_use: { name: Read, input: { file_path: "{{cwd}}/{{file}}" } }
        usage: { input_tokens: 100, output_tokens: 10 }
      - content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/{{file}}", old_string: "Box<dyn Error>", new_string: "Error" } }
        usage: { input_tokens: 100, output_tokens: 10 }
      - content:
          - tool_use: { name: Bash, input: { command: "echo // $(id -u):$(id -g) >> {{cwd}}/{{file}}" } }
        usage: { input_tokens: 100, output_tokens: 10 }
      - text: "Refactored {{file}}."
        usage: { input_tokens: 100, output_tokens: 10 }
"#;

#[test]
fn agents_run_in_containers_and_their_diffs_land_in_the_users_tree() {
    let Some(claude) = prerequisites() else {
        return;
    };
    let runtime = runtime();
    let mock = mock(&runtime, REFACTOR);
    let files = [
        ("a.rs", "fn a() -> Box<dyn Error> {}\n"),
        ("b.rs", "fn b() -> Box<dyn Error> {}\n"),
    ];
    let repo = repository(&workflow(&claude, &["a.rs", "b.rs"]), &files);
    let home = tempfile::tempdir().expect("home");

    let output = ccflow(repo.path(), home.path(), mock.port())
        .output()
        .expect("run ccflow");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let run_id = runs(repo.path()).pop().expect("a run record");
    for (file, function) in [("a.rs", "a"), ("b.rs", "b")] {
        let path = repo.path().join(file);
        // Edited, and the Bash tool ran as the invoking user (not root).
        let expected = format!("fn {function}() -> Error {{}}\n// {}:{}\n", uid(), gid());
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            expected,
            "{}",
            text(&output)
        );
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                std::fs::metadata(&path).expect("stat").uid(),
                uid(),
                "{}",
                path.display()
            );
        }
        // The session ran in the container: its working directory was /workspace.
        let transcript = artifact(
            repo.path(),
            &run_id,
            &format!("refactor[{file}]"),
            ".ndjson",
        )
        .expect("the transcript");
        let transcript = std::fs::read_to_string(&transcript)
            .unwrap_or_else(|e| panic!("{}: {e}", transcript.display()));
        assert!(transcript.contains(r#""cwd":"/workspace""#), "{transcript}");
    }
    assert_eq!(
        containers_of(&run_id),
        Vec::<String>::new(),
        "containers left by run {run_id}"
    );
    let stats = mock.stats();
    assert_eq!(stats.model_requests, 8, "four turns per agent: {stats:?}");

    // A rerun is all cached and asks the API nothing.
    let again = ccflow(repo.path(), home.path(), mock.port())
        .output()
        .expect("rerun ccflow");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 ran, 2 cached"),
        "{}",
        text(&again)
    );
    assert_eq!(
        mock.stats().requests,
        stats.requests,
        "the rerun called the API"
    );
    runtime.block_on(mock.shutdown());
}

const HANG: &str = r"
rules:
  - name: hang
    regex: 'Refactor'
    turns:
      - hang: true
";

#[test]
fn sigint_mid_session_leaves_no_container() {
    let Some(claude) = prerequisites() else {
        return;
    };
    let runtime = runtime();
    let mock = mock(&runtime, HANG);
    let repo = repository(
        &workflow(&claude, &["a.rs", "b.rs"]),
        &[("a.rs", "a\n"), ("b.rs", "b\n")],
    );
    let home = tempfile::tempdir().expect("home");

    let mut child = ccflow(repo.path(), home.path(), mock.port())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ccflow");
    // Both sessions are mid-turn once the mock holds both requests.
    let until = Instant::now() + Duration::from_secs(90);
    while mock.stats().model_requests < 2 {
        if Instant::now() > until || child.try_wait().expect("poll ccflow").is_some() {
            let _ = child.kill();
            let output = child.wait_with_output().expect("ccflow output");
            panic!(
                "the sessions never reached the API: {:?}\n{}",
                mock.stats(),
                text(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let run_id = runs(repo.path()).pop().expect("a run record");
    assert_eq!(
        containers_of(&run_id).len(),
        2,
        "both sessions run in containers"
    );

    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child; no memory effects.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let interrupted = Instant::now();
    let until = interrupted + Duration::from_secs(60);
    while child.try_wait().expect("poll ccflow").is_none() {
        assert!(
            Instant::now() < until,
            "ccflow did not stop within 60s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped_after = interrupted.elapsed();
    let output = child.wait_with_output().expect("ccflow output");
    assert_eq!(output.status.code(), Some(130), "{}", text(&output));
    assert_eq!(
        containers_of(&run_id),
        Vec::<String>::new(),
        "containers left by run {run_id}"
    );
    // The engine removes containers at once: no kill grace is waited out.
    assert!(
        stopped_after < Duration::from_secs(8),
        "stopping took {stopped_after:?}"
    );
    eprintln!("ccflow stopped {stopped_after:?} after SIGINT");
    runtime.block_on(mock.shutdown());
}

/// Run as root, the test above cannot tell the invoking user from the
/// image's default (root): here ccflow itself runs as uid 1234 (through
/// `setpriv`, with the Docker socket's group), so a container that ignored
/// the invoking user would write root-owned files or fail to write at all.
#[test]
fn containers_write_as_a_non_root_invoking_user() {
    use std::os::unix::fs::MetadataExt;
    let Some(claude) = prerequisites() else {
        return;
    };
    let socket = Path::new("/var/run/docker.sock");
    let setpriv = Path::new("/usr/bin/setpriv");
    if uid() != 0
        || !setpriv.exists()
        || !socket.exists()
        || std::env::var_os("DOCKER_HOST").is_some()
    {
        eprintln!("skipping: needs root, `setpriv` and the default Docker socket to run ccflow as another user");
        return;
    }
    let socket_group = std::fs::metadata(socket).expect("stat the socket").gid();
    let runtime = runtime();
    let mock = mock(&runtime, REFACTOR);
    let scratch = tempfile::tempdir().expect("temp dir");
    // The user cannot reach a CLI under /root: a hard link elsewhere (same
    // file system) costs nothing, unlike a copy of the 400 MB binary.
    let linked = scratch.path().join("claude");
    if std::fs::hard_link(&claude, &linked).is_err() {
        eprintln!(
            "skipping: cannot hard-link `{}` into a temp dir",
            claude.display()
        );
        return;
    }
    let repo = repository(
        &workflow(&linked, &["a.rs"]),
        &[("a.rs", "fn a() -> Box<dyn Error> {}\n")],
    );
    let home = tempfile::tempdir().expect("home");
    for dir in [scratch.path(), repo.path(), home.path()] {
        let status = Command::new("chown")
            .args(["-R", "1234:1234"])
            .arg(dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {}", dir.display());
    }
    let template = ccflow(repo.path(), home.path(), mock.port());
    let mut command = Command::new(setpriv);
    command
        .args([
            "--reuid",
            "1234",
            "--regid",
            "1234",
            "--groups",
            &socket_group.to_string(),
            "--",
        ])
        .arg(template.get_program())
        .args(template.get_args())
        .current_dir(repo.path());
    for (name, value) in template.get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let output = command.output().expect("run ccflow as uid 1234");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let path = repo.path().join("a.rs");
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "fn a() -> Error {}\n// 1234:1234\n",
        "{}",
        text(&output)
    );
    assert_eq!(std::fs::metadata(&path).expect("stat").uid(), 1234);
    let run_id = runs(repo.path()).pop().expect("a run record");
    assert_eq!(
        containers_of(&run_id),
        Vec::<String>::new(),
        "containers left by run {run_id}"
    );
    runtime.block_on(mock.shutdown());
}

/// `verify` runs in a container of the task's image too: its check passes
/// only with `/workspace` as the working directory.
#[test]
fn verify_runs_in_the_container() {
    let Some(claude) = prerequisites() else {
        return;
    };
    let runtime = runtime();
    let mock = mock(&runtime, REFACTOR);
    let check = "    verify: test \"$PWD\" = /workspace && grep -q 'fn a() -> Error' a.rs\n";
    let repo = repository(
        &workflow_with(&claude, &["a.rs"], check),
        &[("a.rs", "fn a() -> Box<dyn Error> {}\n")],
    );
    let home = tempfile::tempdir().expect("home");
    let output = ccflow(repo.path(), home.path(), mock.port())
        .output()
        .expect("run ccflow");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let content = std::fs::read_to_string(repo.path().join("a.rs")).expect("read");
    assert!(content.starts_with("fn a() -> Error {}"), "{content}");
    let run_id = runs(repo.path()).pop().expect("a run record");
    assert!(
        artifact(repo.path(), &run_id, "refactor[a.rs]", ".verify-1.log").is_some(),
        "no verify log"
    );
    assert_eq!(
        containers_of(&run_id),
        Vec::<String>::new(),
        "containers left by run {run_id}"
    );
    runtime.block_on(mock.shutdown());
}
