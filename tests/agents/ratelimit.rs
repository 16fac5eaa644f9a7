//! HTTP 429 from the API: retried by the CLI (noted in the record), and when
//! the CLI gives up, retried by ccflow itself with backoff.

use crate::support::{instance, Mock, Repo};

const WORKFLOW: &str = r#"
version: 1
name: limited
tasks:
  edit:
    agent: { prompt: "Update a", model: sonnet }
    outputs: [a.txt]
"#;

fn setup(claude: &std::path::Path, max_retries: &str) -> Repo {
    let mut repo = Repo::new(claude);
    repo.write("a.txt", "before\n");
    repo.commit("a");
    repo.workflow("limited", WORKFLOW);
    repo.set_env("CLAUDE_CODE_MAX_RETRIES", max_retries);
    repo
}

#[test]
fn three_429s_then_success_lands_and_the_record_shows_the_retries() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = setup(&claude, "3");
    let mock = Mock::start(
        r#"
rules:
  - name: edit
    match: "Update a"
    turns:
      - error: 429
        times: 3
        content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/a.txt", old_string: "before", new_string: "after" } }
      - text: "Updated."
"#,
    );
    let out = repo.ccflow(&mock, &["run", "limited"]);
    assert_eq!(out.code, 0);
    assert_eq!(repo.read("a.txt"), "after\n");
    assert_eq!(mock.stats().faults_injected, 3);
    let record = repo.last_record();
    let inst = instance(&record, "edit");
    assert_eq!(inst["status"], "succeeded", "{inst:#}");
    let outcomes: Vec<&str> = inst["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert!(
        outcomes.iter().any(|o| o.contains("3 API retries")),
        "{outcomes:#?}"
    );
}

#[test]
fn persistent_429s_are_retried_by_ccflow_then_reported() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = setup(&claude, "0");
    let mock = Mock::start(
        r#"
rules:
  - name: edit
    match: "Update a"
    turns:
      - error: 429
        text: "never served"
"#,
    );
    let started = std::time::Instant::now();
    let out = repo.ccflow(&mock, &["run", "limited"]);
    assert_eq!(out.code, 1);
    assert_eq!(repo.read("a.txt"), "before\n");
    let record = repo.last_record();
    let inst = instance(&record, "edit");
    assert_eq!(inst["status"], "failed", "{inst:#}");
    assert!(
        inst["message"]
            .as_str()
            .is_some_and(|m| m.contains("rate limited") && m.contains("429")),
        "{inst:#}"
    );
    let attempts = inst["attempts"].as_array().expect("attempts");
    assert!(
        attempts.len() > 1,
        "ccflow retried the rate-limited session: {inst:#}"
    );
    assert!(
        attempts.iter().all(|a| a["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("rate limited"))),
        "{inst:#}"
    );
    // Repeated rate limits shrink the agent pool for a while, and say so.
    assert!(
        out.stderr.contains("agent pool shrinks to 1"),
        "{}",
        out.stderr
    );
    // Sessions are not counted: every attempt reached the API at least once.
    assert!(mock.stats().faults_injected >= attempts.len() as u64);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
