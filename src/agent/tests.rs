//! Tests of the agent layer: argument building and stream parsing as units;
//! sessions with the REAL `claude` CLI against the crate's own mock of the
//! Messages API; supervision edge cases the real CLI cannot be made to show on
//! demand (a hang after the result, a non-zero exit) with small shell scripts
//! standing in as the binary.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indoc::indoc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::mock::{MockServer, Script};

/// The real CLI: `CCFLOW_CLAUDE`, `claude` on PATH, or the one bundled with
/// the `claude-agent-sdk` Python package. `None` (test skipped) when absent,
/// unless `CI=true`, where a missing CLI fails the test.
fn real_claude() -> Option<PathBuf> {
    if let Ok(path) = find_claude(None) {
        return Some(path);
    }
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import claude_agent_sdk,os;print(os.path.dirname(claude_agent_sdk.__file__))",
        ])
        .output();
    if let Ok(output) = output {
        let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let path = PathBuf::from(dir).join("_bundled/claude");
        if output.status.success() && path.is_file() {
            return Some(path);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the claude CLI is required under CI=true: pip install claude-agent-sdk or set CCFLOW_CLAUDE"
    );
    crate::errln!("skipping: no claude CLI (pip install claude-agent-sdk, or set CCFLOW_CLAUDE)");
    None
}

/// A hermetic environment for the CLI pointed at the mock.
fn env_for(mock: &MockServer, home: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".to_owned(), home.display().to_string()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        (
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_owned(),
            "1".to_owned(),
        ),
        ("DISABLE_AUTOUPDATER".to_owned(), "1".to_owned()),
        ("ANTHROPIC_BASE_URL".to_owned(), mock.base_url()),
        ("ANTHROPIC_API_KEY".to_owned(), "test-key".to_owned()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
    );
    env
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("home")).expect("home");
        std::fs::create_dir_all(dir.path().join("work")).expect("work");
        Fixture { dir }
    }
    fn work(&self) -> PathBuf {
        // The CLI reports the canonical path (`/tmp` may be a symlink).
        self.dir
            .path()
            .join("work")
            .canonicalize()
            .expect("canonical work dir")
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    fn transcript(&self) -> PathBuf {
        self.dir.path().join("run/transcript.ndjson")
    }
    fn spec(
        &self,
        binary: PathBuf,
        opts: &AgentOptions,
        env: Vec<(String, String)>,
    ) -> SessionSpec {
        SessionSpec {
            binary,
            args: build_args(opts, None, false),
            prompt: opts.prompt.clone(),
            cwd: self.work(),
            env,
            transcript_path: self.transcript(),
            timeout: Some(Duration::from_secs(60)),
            idle_timeout: Duration::from_secs(30),
            result_grace: Duration::from_secs(2),
            kill_grace: Duration::from_millis(500),
        }
    }
}

fn script(yaml: &str) -> Script {
    Script::from_yaml_str(yaml, Path::new("<test>")).expect("valid script")
}

/// Processes whose working directory is inside `dir` (none may survive a session).
fn processes_in(dir: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            if cwd.starts_with(dir) {
                found.push(pid);
            }
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still have one,
    // so check its state too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.split_whitespace().nth(2) != Some("Z"))
}

// ---------------------------------------------------------------- units

#[test]
fn build_args_maps_every_option_in_order() {
    let opts = AgentOptions {
        prompt: "ignored".to_owned(),
        model: Some("sonnet".to_owned()),
        max_turns: Some(30),
        max_budget_usd: Some(1.5),
        allowed_tools: vec!["Read".to_owned(), "Bash(cargo check:*)".to_owned()],
        disallowed_tools: vec!["WebFetch".to_owned()],
        append_system_prompt: Some("Be terse.".to_owned()),
        mcp_config: Some("mcp.json".to_owned()),
        permission_mode: None,
        command: None,
        bare: true,
    };
    let args = build_args(&opts, None, false);
    assert_eq!(
        args,
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--bare",
            "--no-session-persistence",
            "--strict-mcp-config",
            "--model",
            "sonnet",
            "--max-turns",
            "30",
            "--max-budget-usd",
            "1.5",
            "--allowedTools",
            "Read",
            "--allowedTools",
            "Bash(cargo check:*)",
            "--disallowedTools",
            "WebFetch",
            "--append-system-prompt",
            "Be terse.",
            "--mcp-config",
            "mcp.json",
            "--permission-mode",
            "acceptEdits",
        ]
    );
    assert!(
        !args.iter().any(|arg| arg == "ignored"),
        "the prompt goes on stdin"
    );
}

#[test]
fn build_args_for_a_resumed_persistent_non_bare_session() {
    let opts = AgentOptions {
        permission_mode: Some("plan".to_owned()),
        bare: false,
        ..AgentOptions::default()
    };
    let args = build_args(&opts, Some("abc-123"), true);
    assert_eq!(
        args,
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--strict-mcp-config",
            "--permission-mode",
            "plan",
            "--resume",
            "abc-123",
        ]
    );
}

#[test]
fn find_claude_names_the_install_commands_when_missing() {
    let error = find_claude(Some("/nonexistent/dir/claude")).expect_err("missing binary");
    let message = error.to_string();
    assert!(message.contains("/nonexistent/dir/claude"), "{message}");
    assert!(
        message.contains("npm install -g @anthropic-ai/claude-code"),
        "{message}"
    );
    assert!(
        message.contains("pip install claude-agent-sdk"),
        "{message}"
    );
    assert!(message.contains("CCFLOW_CLAUDE"), "{message}");
    let error = find_claude(Some("no-such-claude-binary-xyz")).expect_err("not on PATH");
    assert!(error.to_string().contains("no-such-claude-binary-xyz"));
}

#[test]
fn parse_line_types_and_errors() {
    let init = parse_line(
        r#"{"type":"system","subtype":"init","session_id":"s1","model":"m","cwd":"/w","tools":["Read","Edit"]}"#,
        1,
    )
    .expect("init");
    assert_eq!(
        init,
        StreamEvent::Init {
            session_id: Some("s1".to_owned()),
            model: Some("m".to_owned()),
            cwd: Some("/w".to_owned()),
            tools: vec!["Read".to_owned(), "Edit".to_owned()],
        }
    );
    let retry = parse_line(
        r#"{"type":"system","subtype":"api_retry","attempt":2,"max_retries":10,"retry_delay_ms":1053,"error_status":429,"error":"rate_limit"}"#,
        2,
    )
    .expect("retry");
    assert!(matches!(
        retry,
        StreamEvent::ApiRetry {
            attempt: 2,
            error_status: Some(429),
            ..
        }
    ));
    let unknown = parse_line(r#"{"type":"stream_event","x":1}"#, 3).expect("unknown kept");
    assert!(matches!(unknown, StreamEvent::Unknown { ref kind, .. } if kind == "stream_event"));
    let error = parse_line("{not json", 7).expect_err("malformed");
    assert_eq!(error.line, 7);
    assert!(error
        .to_string()
        .starts_with("malformed stream-json line 7"));
    let error = parse_line("[1,2]", 9).expect_err("no type");
    assert_eq!(error.line, 9);
    let result = parse_line(
        r#"{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":2,"session_id":"s",
           "usage":{"input_tokens":5,"output_tokens":6,"cache_read_input_tokens":7,"cache_creation_input_tokens":8},
           "total_cost_usd":0.25,"errors":["too many turns"],"api_error_status":null}"#,
        4,
    )
    .expect("result");
    let StreamEvent::Result(result) = result else {
        panic!("not a result: {result:?}");
    };
    assert_eq!(result.subtype, "error_max_turns");
    assert_eq!(
        result.usage,
        Usage {
            input: 5,
            output: 6,
            cache_read: 7,
            cache_creation: 8
        }
    );
    assert_eq!(result.errors, ["too many turns"]);
    assert_eq!(result.api_error_status, None);
}

#[test]
fn activity_shows_tools_relative_to_the_worktree() {
    let event = parse_line(
        r#"{"type":"assistant","message":{"content":[{"type":"text","text":"ok"},
           {"type":"tool_use","id":"t","name":"Edit","input":{"file_path":"/w/src/lib.rs"}}]}}"#,
        1,
    )
    .expect("assistant");
    assert_eq!(
        activity(&event, Path::new("/w")).as_deref(),
        Some("Edit src/lib.rs")
    );
    let bash = parse_line(
        r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t","name":"Bash","input":{"command":"cargo check\necho done"}}]}}"#,
        1,
    )
    .expect("assistant");
    assert_eq!(
        activity(&bash, Path::new("/w")).as_deref(),
        Some("Bash cargo check")
    );
    let text = parse_line(
        r#"{"type":"assistant","message":{"content":[{"type":"text","text":"hi"}]}}"#,
        1,
    )
    .expect("text");
    assert_eq!(activity(&text, Path::new("/w")), None);
}

// ------------------------------------------------------ real CLI sessions

const READ_EDIT_SCRIPT: &str = indoc! {r#"
    rules:
      - name: greeting
        regex: 'Fix the greeting in (?<file>\S+)'
        turns:
          - content:
              - text: "Let me read it."
              - tool_use: { name: Read, input: { file_path: "{{cwd}}/{{file}}" } }
            usage: { input_tokens: 1000, output_tokens: 100, cache_creation_input_tokens: 2000 }
          - content:
              - tool_use:
                  name: Edit
                  input: { file_path: "{{cwd}}/{{file}}", old_string: "hello", new_string: "goodbye" }
            usage: { input_tokens: 500, output_tokens: 200, cache_read_input_tokens: 3000 }
          - text: "Done."
            usage: { input_tokens: 300, output_tokens: 50, cache_read_input_tokens: 5000 }
"#};

#[tokio::test]
async fn real_cli_reads_then_edits_a_file_with_exact_usage_and_cost() {
    let Some(claude) = real_claude() else { return };
    let fixture = Fixture::new();
    std::fs::write(fixture.work().join("greeting.txt"), "hello world\n").expect("write");
    let mock = MockServer::start(script(READ_EDIT_SCRIPT), 0)
        .await
        .expect("mock");
    let opts = AgentOptions {
        prompt: "Fix the greeting in greeting.txt".to_owned(),
        model: Some("sonnet".to_owned()),
        ..AgentOptions::default()
    };
    let slot = Arc::new(Mutex::new(String::new()));
    let spec = fixture.spec(claude, &opts, env_for(&mock, &fixture.home(), &[]));
    let outcome = run_session(spec, CancellationToken::new(), Some(Arc::clone(&slot))).await;

    assert_eq!(outcome.status, SessionStatus::Succeeded, "{outcome:#?}");
    assert_eq!(
        std::fs::read_to_string(fixture.work().join("greeting.txt")).expect("read"),
        "goodbye world\n"
    );
    assert_eq!(outcome.num_turns, 3);
    assert_eq!(
        outcome.usage,
        Usage {
            input: 1800,
            output: 350,
            cache_read: 8000,
            cache_creation: 2000
        }
    );
    // `sonnet` resolves to claude-sonnet-5-5 in CLI 2.1.332, priced per
    // million tokens at $2 input, $10 output, $2.50 cache write, $0.10 cache
    // read: 1800*2 + 350*10 + 2000*2.5 + 8000*0.1 = 12900 per million.
    assert!(
        (outcome.cost_usd - 0.0129).abs() < 1e-9,
        "cost {}",
        outcome.cost_usd
    );
    assert_eq!(mock.model_request_count(), 3);
    assert_eq!(mock.stats().per_rule.get("greeting"), Some(&3));
    assert!(outcome.session_id.is_some());
    assert_eq!(slot.lock().expect("slot").as_str(), "Edit greeting.txt");
    let transcript = std::fs::read_to_string(fixture.transcript()).expect("transcript");
    assert!(transcript.lines().count() >= 5, "{transcript}");
    assert!(transcript
        .lines()
        .last()
        .is_some_and(|line| line.contains(r#""type":"result""#)));
    assert!(outcome.pid.is_some_and(|pid| !alive(pid)));
    mock.shutdown().await;
}

#[tokio::test]
async fn real_cli_retries_429_twice_then_succeeds() {
    let Some(claude) = real_claude() else { return };
    let fixture = Fixture::new();
    let mock = MockServer::start(
        script(indoc! {r#"
            default:
              turns:
                - error: 429
                  times: 2
                  text: "after the rate limit"
                  usage: { input_tokens: 10, output_tokens: 5 }
        "#}),
        0,
    )
    .await
    .expect("mock");
    let opts = AgentOptions {
        prompt: "anything".to_owned(),
        ..AgentOptions::default()
    };
    let spec = fixture.spec(claude, &opts, env_for(&mock, &fixture.home(), &[]));
    let outcome = run_session(spec, CancellationToken::new(), None).await;
    assert_eq!(outcome.status, SessionStatus::Succeeded, "{outcome:#?}");
    assert_eq!(outcome.api_retries, 2);
    assert_eq!(
        outcome.result.as_ref().and_then(|r| r.result.as_deref()),
        Some("after the rate limit")
    );
    let stats = mock.stats();
    assert_eq!(stats.model_requests, 3);
    assert_eq!(stats.faults_injected, 2);
    let transcript = std::fs::read_to_string(fixture.transcript()).expect("transcript");
    let retries: Vec<_> = transcript
        .lines()
        .filter_map(|line| parse_line(line, 0).ok())
        .filter_map(|event| match event {
            StreamEvent::ApiRetry {
                attempt,
                error_status,
                ..
            } => Some((attempt, error_status)),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [(1, Some(429)), (2, Some(429))]);
    mock.shutdown().await;
}

#[tokio::test]
async fn real_cli_persistent_overload_is_rate_limited() {
    let Some(claude) = real_claude() else { return };
    for status in [429u16, 529] {
        let fixture = Fixture::new();
        let yaml = format!("default:\n  turns:\n    - error: {status}\n");
        let mock = MockServer::start(script(&yaml), 0).await.expect("mock");
        let opts = AgentOptions {
            prompt: "anything".to_owned(),
            ..AgentOptions::default()
        };
        // One internal retry keeps the test short (the default is 10, with backoff).
        let env = env_for(&mock, &fixture.home(), &[("CLAUDE_CODE_MAX_RETRIES", "1")]);
        let outcome = run_session(
            fixture.spec(claude.clone(), &opts, env),
            CancellationToken::new(),
            None,
        )
        .await;
        assert_eq!(
            outcome.status,
            SessionStatus::RateLimited {
                status,
                retries_seen: 1
            },
            "{outcome:#?}"
        );
        assert_eq!(mock.model_request_count(), 2);
        mock.shutdown().await;
    }
}

#[tokio::test]
async fn real_cli_turn_limit_is_max_turns() {
    let Some(claude) = real_claude() else { return };
    let fixture = Fixture::new();
    std::fs::write(fixture.work().join("a.txt"), "a\n").expect("write");
    let mock = MockServer::start(
        script(indoc! {r#"
            rules:
              - match: "three turns"
                turns:
                  - content: [ { tool_use: { name: Read, input: { file_path: "{{cwd}}/a.txt" } } } ]
                  - content: [ { tool_use: { name: Read, input: { file_path: "{{cwd}}/a.txt" } } } ]
                  - text: "finished"
        "#}),
        0,
    )
    .await
    .expect("mock");
    let opts = AgentOptions {
        prompt: "this wants three turns".to_owned(),
        max_turns: Some(1),
        ..AgentOptions::default()
    };
    let outcome = run_session(
        fixture.spec(claude, &opts, env_for(&mock, &fixture.home(), &[])),
        CancellationToken::new(),
        None,
    )
    .await;
    assert_eq!(outcome.status, SessionStatus::MaxTurns, "{outcome:#?}");
    assert_eq!(
        outcome.result.as_ref().map(|r| r.subtype.as_str()),
        Some("error_max_turns")
    );
    assert_eq!(mock.model_request_count(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn real_cli_hung_stream_is_idle_timeout_and_leaves_no_process() {
    let Some(claude) = real_claude() else { return };
    let fixture = Fixture::new();
    let mock = MockServer::start(script("default:\n  turns:\n    - hang: true\n"), 0)
        .await
        .expect("mock");
    let opts = AgentOptions {
        prompt: "anything".to_owned(),
        ..AgentOptions::default()
    };
    let mut spec = fixture.spec(claude, &opts, env_for(&mock, &fixture.home(), &[]));
    // The idle clock runs from the CLI's last output, and its start-up prints
    // nothing: with the test binaries running side by side it has taken more
    // than 3 s, and a short timeout then killed it before its request. 8 s
    // leaves room for that and still proves the hang is cut.
    spec.idle_timeout = Duration::from_secs(8);
    let outcome = run_session(spec, CancellationToken::new(), None).await;
    assert_eq!(outcome.status, SessionStatus::IdleTimeout, "{outcome:#?}");
    assert!(outcome.killed);
    assert!(
        outcome.duration < Duration::from_secs(20),
        "{:?}",
        outcome.duration
    );
    let pid = outcome.pid.expect("pid");
    assert!(!alive(pid), "claude {pid} survived");
    assert_eq!(processes_in(&fixture.work()), Vec::<u32>::new());
    assert_eq!(mock.model_request_count(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn real_cli_recovers_from_a_stream_cut_mid_turn() {
    let Some(claude) = real_claude() else { return };
    let fixture = Fixture::new();
    let mock = MockServer::start(
        script(indoc! {r#"
            default:
              turns:
                - stop_after_events: 3
                  times: 1
                  text: "second try worked"
        "#}),
        0,
    )
    .await
    .expect("mock");
    let opts = AgentOptions {
        prompt: "anything".to_owned(),
        ..AgentOptions::default()
    };
    let outcome = run_session(
        fixture.spec(claude, &opts, env_for(&mock, &fixture.home(), &[])),
        CancellationToken::new(),
        None,
    )
    .await;
    assert_eq!(outcome.status, SessionStatus::Succeeded, "{outcome:#?}");
    assert_eq!(
        outcome.result.as_ref().and_then(|r| r.result.as_deref()),
        Some("second try worked")
    );
    assert_eq!(mock.model_request_count(), 2);
    mock.shutdown().await;
}

// ---------------------------------------- supervision with stand-in binaries

/// A shell script standing in for `claude`, for behaviours the real CLI
/// cannot be made to show on demand.
fn stand_in(fixture: &Fixture, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = fixture.dir.path().join("fake-claude");
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write stand-in");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

const SUCCESS_RESULT: &str = r#"{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"ok","session_id":"s1","total_cost_usd":0.5,"usage":{"input_tokens":1,"output_tokens":2}}"#;

fn stand_in_spec(fixture: &Fixture, binary: PathBuf) -> SessionSpec {
    SessionSpec {
        binary,
        args: Vec::new(),
        prompt: "prompt".to_owned(),
        cwd: fixture.work(),
        env: vec![("PATH".to_owned(), std::env::var("PATH").unwrap_or_default())],
        transcript_path: fixture.transcript(),
        timeout: Some(Duration::from_secs(20)),
        idle_timeout: Duration::from_secs(20),
        result_grace: Duration::from_millis(300),
        kill_grace: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn hang_after_result_is_killed_and_still_succeeds() {
    let fixture = Fixture::new();
    let pids = fixture.dir.path().join("pids");
    let binary = stand_in(
        &fixture,
        &format!(
            "echo '{SUCCESS_RESULT}'\nsleep 30 &\necho $$ $! > '{}'\nwait\n",
            pids.display()
        ),
    );
    let outcome = run_session(
        stand_in_spec(&fixture, binary),
        CancellationToken::new(),
        None,
    )
    .await;
    assert_eq!(outcome.status, SessionStatus::Succeeded, "{outcome:#?}");
    assert!(outcome.killed);
    assert!(outcome.duration < Duration::from_secs(5));
    assert!((outcome.cost_usd - 0.5).abs() < 1e-12);
    let pids = std::fs::read_to_string(pids).expect("pids");
    for pid in pids.split_whitespace() {
        let pid: u32 = pid.parse().expect("pid");
        assert!(!alive(pid), "process {pid} survived");
    }
}

#[tokio::test]
async fn stand_in_outcomes_follow_the_failure_rule() {
    let cases: &[(&str, SessionStatus)] = &[
        ("exit 3\n", SessionStatus::NoResult),
        (
            &format!("echo '{SUCCESS_RESULT}'\nexit 1\n"),
            SessionStatus::Failed {
                reason: "`claude` exited with code 1".to_owned(),
            },
        ),
        (
            "echo 'not json'\nexit 0\n",
            SessionStatus::Malformed {
                line: 1,
                message: "expected ident at line 1 column 2".to_owned(),
            },
        ),
        (
            r#"echo '{"type":"result","subtype":"success","is_error":true,"result":"API Error: 500 boom","api_error_status":500}'"#,
            SessionStatus::Failed {
                reason: "API Error: 500 boom".to_owned(),
            },
        ),
        (
            &format!("printf '\\377 junk\\n'\necho '{SUCCESS_RESULT}'\n"),
            SessionStatus::Succeeded,
        ),
        (
            r#"echo '{"type":"result","subtype":"error_max_budget_usd","is_error":true}'"#,
            SessionStatus::MaxBudget,
        ),
        (
            r#"echo '{"type":"result","subtype":"error_during_execution","is_error":true,"errors":["tool crashed"]}'"#,
            SessionStatus::Failed {
                reason: "`error_during_execution`: tool crashed".to_owned(),
            },
        ),
        (
            r#"echo '{"type":"result","subtype":"success","is_error":true,"result":"API Error: Repeated 529 Overloaded errors"}'"#,
            SessionStatus::RateLimited {
                status: 529,
                retries_seen: 0,
            },
        ),
    ];
    for (body, expected) in cases {
        let fixture = Fixture::new();
        let binary = stand_in(&fixture, body);
        let outcome = run_session(
            stand_in_spec(&fixture, binary),
            CancellationToken::new(),
            None,
        )
        .await;
        assert_eq!(&outcome.status, expected, "script: {body}");
    }
}

#[tokio::test]
async fn stand_in_idle_timeout_wall_timeout_and_cancel() {
    let fixture = Fixture::new();
    let binary = stand_in(
        &fixture,
        "echo '{\"type\":\"system\",\"subtype\":\"init\"}'\nsleep 30\n",
    );

    let mut spec = stand_in_spec(&fixture, binary.clone());
    spec.idle_timeout = Duration::from_millis(400);
    let outcome = run_session(spec, CancellationToken::new(), None).await;
    assert_eq!(outcome.status, SessionStatus::IdleTimeout);

    let mut spec = stand_in_spec(&fixture, binary.clone());
    spec.timeout = Some(Duration::from_millis(400));
    let outcome = run_session(spec, CancellationToken::new(), None).await;
    assert_eq!(outcome.status, SessionStatus::TimedOut);

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let outcome = run_session(stand_in_spec(&fixture, binary), cancel, None).await;
    assert_eq!(outcome.status, SessionStatus::Cancelled);
    assert!(outcome.duration < Duration::from_secs(3));
    assert!(outcome.pid.is_some_and(|pid| !alive(pid)));
    assert_eq!(processes_in(&fixture.work()), Vec::<u32>::new());
}

#[tokio::test]
async fn stand_in_receives_prompt_on_stdin_and_exact_env() {
    let fixture = Fixture::new();
    let out = fixture.dir.path().join("seen");
    let binary = stand_in(
        &fixture,
        &format!(
            "cat > '{0}.stdin'\nenv > '{0}.env'\necho \"$@\" > '{0}.args'\necho '{SUCCESS_RESULT}'\n",
            out.display()
        ),
    );
    let mut spec = stand_in_spec(&fixture, binary);
    spec.args = vec!["-p".to_owned(), "--verbose".to_owned()];
    spec.env
        .push(("CCFLOW_TEST_MARK".to_owned(), "1".to_owned()));
    let outcome = run_session(spec, CancellationToken::new(), None).await;
    assert_eq!(outcome.status, SessionStatus::Succeeded);
    assert_eq!(
        std::fs::read_to_string(out.with_extension("stdin")).expect("stdin"),
        "prompt"
    );
    assert_eq!(
        std::fs::read_to_string(out.with_extension("args")).expect("args"),
        "-p --verbose\n"
    );
    let env = std::fs::read_to_string(out.with_extension("env")).expect("env");
    assert!(env.contains("CCFLOW_TEST_MARK=1"));
    assert!(
        !env.contains("CARGO_"),
        "the environment must not be inherited: {env}"
    );
}

#[tokio::test]
async fn missing_binary_is_spawn_failed() {
    let fixture = Fixture::new();
    let outcome = run_session(
        stand_in_spec(&fixture, PathBuf::from("/nonexistent/claude")),
        CancellationToken::new(),
        None,
    )
    .await;
    assert!(
        matches!(&outcome.status, SessionStatus::SpawnFailed { binary, .. } if binary == Path::new("/nonexistent/claude")),
        "{outcome:#?}"
    );
}

#[test]
fn claude_version_of_the_real_cli() {
    let Some(claude) = real_claude() else { return };
    let version = claude_version(&claude).expect("version");
    assert!(version.contains("Claude Code"), "{version}");
    assert_eq!(claude_version(&claude).expect("memoized"), version);
}

#[tokio::test]
async fn real_cli_without_bare_still_gets_cwd_templated() {
    let Some(claude) = real_claude() else { return };
    let fixture = Fixture::new();
    std::fs::write(fixture.work().join("notes.txt"), "one\n").expect("write");
    let mock = MockServer::start(
        script(indoc! {r#"
            default:
              turns:
                - content:
                    - tool_use:
                        name: Edit
                        input: { file_path: "{{cwd}}/notes.txt", old_string: "one", new_string: "two" }
                - text: "edited"
        "#}),
        0,
    )
    .await
    .expect("mock");
    let opts = AgentOptions {
        prompt: "edit notes".to_owned(),
        bare: false,
        ..AgentOptions::default()
    };
    let outcome = run_session(
        fixture.spec(claude, &opts, env_for(&mock, &fixture.home(), &[])),
        CancellationToken::new(),
        None,
    )
    .await;
    assert_eq!(outcome.status, SessionStatus::Succeeded, "{outcome:#?}");
    let transcript = std::fs::read_to_string(fixture.transcript()).expect("transcript");
    let results: Vec<(String, bool)> = transcript
        .lines()
        .filter_map(|line| parse_line(line, 0).ok())
        .flat_map(|event| match event {
            StreamEvent::User { tool_results } => tool_results,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(results.len(), 1, "{transcript}");
    assert!(!results[0].1, "the Edit failed: {transcript}");
    // The path was templated from the full prompt's `Primary working directory`.
    assert_eq!(
        std::fs::read_to_string(fixture.work().join("notes.txt")).expect("read"),
        "two\n"
    );
    assert_eq!(mock.stats().per_rule.get("default"), Some(&2));
    mock.shutdown().await;
}

#[tokio::test]
async fn real_cli_budget_stop_is_max_budget_with_the_spent_usage() {
    let Some(claude) = real_claude() else { return };
    let fixture = Fixture::new();
    let mock = MockServer::start(
        script(indoc! {r#"
            default:
              turns:
                - content: [ { tool_use: { name: Read, input: { file_path: "{{cwd}}/missing.txt" } } } ]
                  usage: { input_tokens: 100000, output_tokens: 1000 }
                - content: [ { tool_use: { name: Read, input: { file_path: "{{cwd}}/missing.txt" } } } ]
                  usage: { input_tokens: 100000, output_tokens: 1000 }
                - text: "done"
        "#}),
        0,
    )
    .await
    .expect("mock");
    let opts = AgentOptions {
        prompt: "spend".to_owned(),
        max_budget_usd: Some(0.1),
        ..AgentOptions::default()
    };
    let outcome = run_session(
        fixture.spec(claude, &opts, env_for(&mock, &fixture.home(), &[])),
        CancellationToken::new(),
        None,
    )
    .await;
    assert_eq!(outcome.status, SessionStatus::MaxBudget, "{outcome:#?}");
    // Default model claude-opus-5-5: 100000 * $4/M + 1000 * $20/M = $0.42,
    // over the $0.10 budget after the first turn.
    assert!(
        (outcome.cost_usd - 0.42).abs() < 1e-9,
        "{}",
        outcome.cost_usd
    );
    assert_eq!(
        outcome.usage,
        Usage {
            input: 100_000,
            output: 1000,
            cache_read: 0,
            cache_creation: 0
        }
    );
    assert_eq!(mock.model_request_count(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn real_cli_permission_denials_are_reported() {
    let Some(claude) = real_claude() else { return };
    let fixture = Fixture::new();
    let mock = MockServer::start(
        script(indoc! {r#"
            default:
              turns:
                - content: [ { tool_use: { name: Bash, input: { command: "echo hi > {{cwd}}/x.txt" } } } ]
                - text: "could not"
        "#}),
        0,
    )
    .await
    .expect("mock");
    let opts = AgentOptions {
        prompt: "write x".to_owned(),
        permission_mode: Some("default".to_owned()),
        ..AgentOptions::default()
    };
    let outcome = run_session(
        fixture.spec(claude, &opts, env_for(&mock, &fixture.home(), &[])),
        CancellationToken::new(),
        None,
    )
    .await;
    // The session itself succeeds; the denial is reported, not fatal.
    assert_eq!(outcome.status, SessionStatus::Succeeded, "{outcome:#?}");
    assert_eq!(
        outcome.result.as_ref().map(|r| r.permission_denials.len()),
        Some(1)
    );
    assert!(!fixture.work().join("x.txt").exists());
    let transcript = std::fs::read_to_string(fixture.transcript()).expect("transcript");
    let denied: Vec<Option<String>> = transcript
        .lines()
        .filter_map(|line| parse_line(line, 0).ok())
        .filter_map(|event| match event {
            StreamEvent::PermissionDenied { tool_name, .. } => Some(tool_name),
            _ => None,
        })
        .collect();
    assert_eq!(denied, [Some("Bash".to_owned())]);
    mock.shutdown().await;
}
