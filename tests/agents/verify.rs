//! `verify` gates: a failing check resumes the session with the check's
//! output until it passes (then the diff lands), or fails the instance with
//! nothing applied.

use crate::support::{instance, Mock, Repo};

/// Turns 0-1: the first session edits notes.txt and stops without the
/// marker; turns 2-3: the resumed session (history of two assistant
/// messages) creates the marker.
const SCRIPT: &str = r#"
rules:
  - name: work
    match: "Do the work"
    turns:
      - content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/notes.txt", old_string: "before", new_string: "after" } }
      - text: "Done."
      - content:
          - tool_use: { name: Bash, input: { command: "touch marker" } }
      - text: "Created the marker."
"#;

fn setup(claude: &std::path::Path, check: &str, attempts: u32) -> Repo {
    let repo = Repo::new(claude);
    repo.write("notes.txt", "before\n");
    repo.commit("notes");
    repo.workflow(
        "verify",
        &format!(
            r#"
version: 1
name: verify
tasks:
  work:
    agent: {{ prompt: "Do the work", model: sonnet, allowed_tools: [Read, Edit, Bash] }}
    verify: "{check}"
    verify_attempts: {attempts}
    outputs: [notes.txt, marker]
"#
        ),
    );
    repo
}

#[test]
fn a_check_failing_once_resumes_the_session_and_then_lands() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = setup(&claude, "test -f marker", 2);
    let mock = Mock::start(SCRIPT);
    let out = repo.ccflow(&mock, &["run", "verify"]);
    assert_eq!(out.code, 0);
    assert_eq!(repo.read("notes.txt"), "after\n");
    assert!(repo.root.join("marker").is_file());
    assert_eq!(
        mock.stats().per_rule.get("work"),
        Some(&4),
        "two turns, then two resumed"
    );
    let record = repo.last_record();
    let inst = instance(&record, "work");
    assert_eq!(inst["status"], "succeeded", "{inst:#}");
    assert_eq!(
        inst["attempts"].as_array().map(Vec::len),
        Some(2),
        "{inst:#}"
    );
    assert!(
        inst["artifacts"]["verify_1"].is_string() && inst["artifacts"]["verify_2"].is_string(),
        "{inst:#}"
    );
    let transcript = std::fs::read_to_string(
        repo.run_dir(&record).join(
            inst["artifacts"]["transcript"]
                .as_str()
                .expect("transcript"),
        ),
    )
    .expect("transcript");
    assert!(transcript.contains("touch marker"));
}

#[test]
fn a_check_that_never_passes_fails_and_applies_nothing() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = setup(&claude, "test -f never-there", 1);
    let mock = Mock::start(SCRIPT);
    let before = repo.tree();
    let out = repo.ccflow(&mock, &["run", "verify"]);
    assert_eq!(out.code, 1);
    assert_eq!(repo.tree(), before, "an unverified diff landed");
    let record = repo.last_record();
    let inst = instance(&record, "work");
    assert_eq!(inst["status"], "failed", "{inst:#}");
    assert!(
        inst["message"]
            .as_str()
            .is_some_and(|m| m.contains("`verify` failed 2 time(s)")),
        "{inst:#}"
    );
    assert!(repo.worktrees_left().is_empty());
}
