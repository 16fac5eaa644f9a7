//! `budget: {max_cost_usd}` smaller than the work: agents stop being started,
//! the run ends `budget_exhausted` (exit 1) naming what did not start, and
//! the spend stays within the budget plus one session.

use crate::support::{sonnet_cost, with_status, Mock, Repo};

#[test]
fn a_budget_for_two_and_a_half_sessions_stops_new_sessions() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = Repo::new(&claude);
    repo.workflow(
        "budget",
        r#"
version: 1
name: budget
budget: { max_cost_usd: 0.0075 }
tasks:
  ask:
    for_each: { items: [1, 2, 3, 4, 5, 6, 7, 8] }
    agent: { prompt: "Answer question {{ item }}", model: sonnet }
"#,
    );
    // One turn of 1000 input and 100 output tokens: $0.003 per session.
    let per_session = sonnet_cost(1000, 100, 0, 0);
    assert!((per_session - 0.003).abs() < 1e-12);
    let mock = Mock::start(
        r#"
default:
  turns:
    - text: "42"
      usage: { input_tokens: 1000, output_tokens: 100 }
"#,
    );
    let out = repo.ccflow(&mock, &["run", "budget", "-j", "1"]);
    assert_eq!(out.code, 1);
    let record = repo.last_record();
    assert_eq!(record["status"], "budget_exhausted", "{record:#}");
    let ran = with_status(&record, "succeeded");
    let not_started = with_status(&record, "not_started");
    assert!(!ran.is_empty() && ran.len() < 8, "{record:#}");
    assert_eq!(ran.len() + not_started.len(), 8, "{record:#}");
    let summary = out
        .stderr
        .lines()
        .find(|l| l.contains("budget exhausted"))
        .expect("a budget exhausted summary");
    for id in &not_started {
        assert!(
            summary.contains(id.as_str()),
            "`{id}` missing from: {summary}"
        );
    }
    let spent = record["usage"]["cost_usd"].as_f64().expect("cost");
    assert!(spent <= 0.0075 + per_session + 1e-9, "spent {spent}");
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let expected = ran.len() as f64 * per_session;
    assert!(
        (spent - expected).abs() < 1e-9,
        "spent {spent}, expected {expected}"
    );
    assert_eq!(
        mock.stats().model_requests,
        ran.len() as u64,
        "no session started past the budget"
    );
}
