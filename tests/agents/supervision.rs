//! Supervision of sessions that stop talking: silent past `idle_timeout`
//! (killed, retried, failed), and a CLI that hangs after its `result` line
//! (finished as a success, the process gone).

use std::time::{Duration, Instant};

use crate::support::{instance, Mock, Repo};

#[test]
fn a_silent_session_is_killed_after_idle_timeout_and_retried() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = Repo::new(&claude);
    repo.workflow(
        "silent",
        r#"
version: 1
name: silent
tasks:
  hang:
    agent: { prompt: "Say something", model: sonnet, idle_timeout: 3s }
"#,
    );
    let mock = Mock::start(
        r#"
default:
  turns:
    - hang: true
      text: "never"
"#,
    );
    let started = Instant::now();
    let out = repo.ccflow(&mock, &["run", "silent"]);
    let elapsed = started.elapsed();
    assert_eq!(out.code, 1);
    let record = repo.last_record();
    let inst = instance(&record, "hang");
    assert_eq!(inst["status"], "failed", "{inst:#}");
    let attempts = inst["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "killed, retried once, killed: {inst:#}");
    for attempt in attempts {
        assert!(
            attempt["outcome"]
                .as_str()
                .is_some_and(|o| o.contains("idle_timeout")),
            "{attempt:#}"
        );
        let ms = attempt["duration_ms"].as_u64().expect("duration");
        assert!(
            (2900..8000).contains(&ms),
            "an attempt took {ms} ms with idle_timeout 3s"
        );
    }
    assert!(elapsed < Duration::from_secs(25), "{elapsed:?}");
    assert!(mock.stats().faults_injected >= 2);
    let left = repo.wait_no_processes(Duration::from_secs(3));
    assert!(left.is_empty(), "{left:#?}");
    assert!(repo.worktrees_left().is_empty());
}

#[test]
fn a_cli_hanging_after_its_result_is_finished_as_a_success() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = Repo::new(&claude);
    // A stand-in for the CLI: a valid result line, a file edited, then a hang.
    let fake = repo.home.join("fake-claude");
    std::fs::write(
        &fake,
        r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "0.0.1 (fake)"; exit 0; fi
cat > /dev/null
echo '{"type":"system","subtype":"init","session_id":"fake-1","model":"fake"}'
echo written > out.txt
echo '{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"done","session_id":"fake-1","total_cost_usd":0.001,"usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}'
exec sleep 1000
"#,
    )
    .expect("write the stand-in");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    repo.workflow(
        "after",
        &format!(
            r#"
version: 1
name: after
tasks:
  write:
    agent: {{ prompt: "Write out.txt", command: "{}" }}
    outputs: [out.txt]
"#,
            fake.display()
        ),
    );
    let mock = Mock::start("default: { turns: [ { text: unused } ] }");
    let started = Instant::now();
    let out = repo.ccflow(&mock, &["run", "after"]);
    let elapsed = started.elapsed();
    assert_eq!(out.code, 0);
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let record = repo.last_record();
    let inst = instance(&record, "write");
    assert_eq!(inst["status"], "succeeded", "{inst:#}");
    assert_eq!(inst["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(repo.read("out.txt"), "written\n");
    let left = repo.wait_no_processes(Duration::from_secs(3));
    assert!(left.is_empty(), "the sleeper survived: {left:#?}");
    assert_eq!(mock.stats().requests, 0);
}
