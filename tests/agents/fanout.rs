//! A fan-out of eight agents over a dirty working tree: every diff lands,
//! uncommitted and untracked files survive, tokens and cost add up exactly,
//! a rerun costs nothing and an edited file reruns exactly its instance.

use crate::support::{instance, sonnet_cost, with_status, Mock, Repo};

/// Read, Edit (`old_` → `new_`), then a final text; usage per turn fixed.
pub const REFACTOR_SCRIPT: &str = r#"
rules:
  - name: refactor
    regex: 'Refactor (?<file>\S+)'
    turns:
      - content:
          - tool_use: { name: Read, input: { file_path: "{{cwd}}/{{file}}" } }
        usage: { input_tokens: 1000, output_tokens: 100, cache_creation_input_tokens: 2000 }
      - content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/{{file}}", old_string: "old_", new_string: "new_" } }
        usage: { input_tokens: 500, output_tokens: 200, cache_read_input_tokens: 3000 }
      - text: "Done."
        usage: { input_tokens: 300, output_tokens: 50, cache_read_input_tokens: 5000 }
"#;

pub const REFACTOR_WORKFLOW: &str = r#"
version: 1
name: refactor
tasks:
  refactor:
    for_each: { files: "src/*.rs" }
    agent:
      prompt: "Refactor {{ item }} to the new naming."
      model: sonnet
      max_turns: 10
    outputs: ["{{ item }}"]
"#;

#[test]
fn eight_agents_edit_a_dirty_tree_then_rerun_is_free_and_incremental() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = Repo::new(&claude);
    for n in 1..=8 {
        repo.write(&format!("src/f{n}.rs"), format!("pub fn old_{n}() {{}}\n"));
    }
    repo.write("docs/guide.md", "guide v1\n");
    repo.commit("sources");
    // Uncommitted: one fanned-out file and one other tracked file; untracked: two files.
    repo.write("src/f1.rs", "pub fn old_1() {}\n// uncommitted note\n");
    repo.write("docs/guide.md", "guide v2 (uncommitted)\n");
    repo.write("notes.txt", "untracked notes\n");
    repo.write("src/scratch.txt", "untracked scratch\n");
    repo.workflow("refactor", REFACTOR_WORKFLOW);
    let mock = Mock::start(REFACTOR_SCRIPT);

    let first = repo.ccflow(&mock, &["run", "refactor", "-j", "8"]);
    assert_eq!(first.code, 0, "first run failed");
    for n in 1..=8 {
        let expected = if n == 1 {
            "pub fn new_1() {}\n// uncommitted note\n".to_owned()
        } else {
            format!("pub fn new_{n}() {{}}\n")
        };
        assert_eq!(repo.read(&format!("src/f{n}.rs")), expected, "src/f{n}.rs");
    }
    assert_eq!(repo.read("docs/guide.md"), "guide v2 (uncommitted)\n");
    assert_eq!(repo.read("notes.txt"), "untracked notes\n");
    assert_eq!(repo.read("src/scratch.txt"), "untracked scratch\n");
    // Nothing got staged or committed behind the user's back.
    assert_eq!(repo.git(&["log", "--format=%s"]).lines().count(), 2);
    assert_eq!(repo.git(&["diff", "--cached", "--name-only"]), "");
    assert!(
        repo.worktrees_left().is_empty(),
        "{:?}",
        repo.worktrees_left()
    );
    assert_eq!(repo.git_worktrees().len(), 1);

    let stats = mock.stats();
    assert_eq!(stats.model_requests, 24, "{stats:?}");
    assert_eq!(stats.per_rule.get("refactor"), Some(&24));
    assert_eq!(stats.unmatched_requests, 0);
    assert_eq!(mock.http_stats()["model_requests"], 24);

    let record = repo.last_record();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(with_status(&record, "succeeded").len(), 8, "{record:#}");
    let per_instance = sonnet_cost(1800, 350, 2000, 8000);
    assert!((per_instance - 0.0129).abs() < 1e-12);
    let mut sum = 0.0;
    for n in 1..=8 {
        let inst = instance(&record, &format!("refactor[src/f{n}.rs]"));
        let usage = &inst["usage"];
        assert_eq!(usage["input_tokens"], 1800, "{inst:#}");
        assert_eq!(usage["output_tokens"], 350);
        assert_eq!(usage["cache_creation_tokens"], 2000);
        assert_eq!(usage["cache_read_tokens"], 8000);
        let cost = usage["cost_usd"].as_f64().expect("cost");
        assert!((cost - per_instance).abs() < 1e-9, "cost {cost}");
        sum += cost;
        assert!(inst["artifacts"]["diff"].is_string(), "{inst:#}");
        assert!(inst["artifacts"]["transcript"].is_string(), "{inst:#}");
    }
    let total = &record["usage"];
    assert_eq!(total["input_tokens"], 8 * 1800);
    assert_eq!(total["output_tokens"], 8 * 350);
    assert_eq!(total["cache_creation_tokens"], 8 * 2000);
    assert_eq!(total["cache_read_tokens"], 8 * 8000);
    let total_cost = total["cost_usd"].as_f64().expect("cost");
    assert!(
        (total_cost - sum).abs() < 1e-9 && (total_cost - 8.0 * per_instance).abs() < 1e-9,
        "total {total_cost}"
    );

    // A rerun: no request at all, the tree byte-identical.
    let before = repo.tree();
    let requests = mock.stats().requests;
    let second = repo.ccflow(&mock, &["run", "refactor", "-j", "8"]);
    assert_eq!(second.code, 0);
    assert_eq!(
        mock.stats().requests,
        requests,
        "a cached rerun talked to the API"
    );
    assert_eq!(repo.tree(), before, "a cached rerun changed the tree");
    let record = repo.last_record();
    assert_eq!(with_status(&record, "cached").len(), 8, "{record:#}");
    assert_eq!(record["usage"]["cost_usd"].as_f64(), Some(0.0));

    // Editing one file by hand reruns exactly that instance.
    repo.write("src/f3.rs", "pub fn new_3() {}\npub fn old_9() {}\n");
    let third = repo.ccflow(&mock, &["run", "refactor", "-j", "8"]);
    assert_eq!(third.code, 0);
    let stats = mock.stats();
    assert_eq!(
        stats.model_requests, 27,
        "one more session of three turns: {stats:?}"
    );
    let record = repo.last_record();
    assert_eq!(
        with_status(&record, "succeeded"),
        vec!["refactor[src/f3.rs]".to_owned()],
        "{record:#}"
    );
    assert_eq!(with_status(&record, "cached").len(), 7);
    assert_eq!(
        repo.read("src/f3.rs"),
        "pub fn new_3() {}\npub fn new_9() {}\n"
    );
    assert!((record["usage"]["cost_usd"].as_f64().expect("cost") - per_instance).abs() < 1e-9);
}
