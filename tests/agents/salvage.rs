//! A session stopped by `max_turns` after editing: failed, its partial diff
//! kept as a `salvaged_patch` (not applied) that `ccflow show` lists.

use crate::support::{instance, Mock, Repo};

#[test]
fn max_turns_keeps_the_partial_diff_as_a_salvaged_patch() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = Repo::new(&claude);
    repo.write("a.txt", "before\n");
    repo.commit("a");
    repo.workflow(
        "long",
        r#"
version: 1
name: long
tasks:
  long:
    agent: { prompt: "Work long on a", model: sonnet, max_turns: 2 }
    outputs: [a.txt]
"#,
    );
    let mock = Mock::start(
        r#"
rules:
  - name: long
    match: "Work long"
    turns:
      - content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/a.txt", old_string: "before", new_string: "after" } }
      - content:
          - tool_use: { name: Read, input: { file_path: "{{cwd}}/a.txt" } }
      - content:
          - tool_use: { name: Read, input: { file_path: "{{cwd}}/a.txt" } }
      - text: "Finally done."
"#,
    );
    let out = repo.ccflow(&mock, &["run", "long"]);
    assert_eq!(out.code, 1);
    assert_eq!(
        repo.read("a.txt"),
        "before\n",
        "a salvaged patch is not applied"
    );
    let record = repo.last_record();
    let inst = instance(&record, "long");
    assert_eq!(inst["status"], "failed", "{inst:#}");
    assert!(
        inst["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_turns")),
        "{inst:#}"
    );
    let salvaged = inst["artifacts"]["salvaged_patch"]
        .as_str()
        .expect("salvaged_patch artifact");
    let patch =
        std::fs::read_to_string(repo.run_dir(&record).join(salvaged)).expect("salvaged patch");
    assert!(
        patch.contains("-before") && patch.contains("+after"),
        "{patch}"
    );
    let show = repo.ccflow(&mock, &["show", record["run_id"].as_str().expect("id")]);
    assert_eq!(show.code, 0);
    assert!(
        show.stdout.contains("salvaged_patch") || show.stdout.contains("salvaged"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains(salvaged),
        "ccflow show names the file: {}",
        show.stdout
    );
}
