//! Diffs that cannot land: two agents editing the same line of one file
//! (one lands, the other is `conflict` with its patch kept), and an agent
//! editing outside its `outputs` (rejected whole, naming the path).

use crate::support::{instance, with_status, Mock, Repo};

const SCRIPT: &str = r#"
rules:
  - name: shared
    regex: 'Set shared to (?<v>\w+)'
    turns:
      - content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/shared.txt", old_string: "line one", new_string: "line {{v}}" } }
        usage: { input_tokens: 100, output_tokens: 10 }
      - text: "Set."
        usage: { input_tokens: 100, output_tokens: 10 }
  - name: sneaky
    match: 'Update sneaky'
    turns:
      - content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/sneaky.txt", old_string: "before", new_string: "after" } }
      - content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/secret.txt", old_string: "before", new_string: "after" } }
      - text: "Updated."
  - name: own
    regex: 'Update (?<name>\w+)'
    turns:
      - delay_ms: 1500
        content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/{{name}}.txt", old_string: "before", new_string: "after" } }
      - text: "Updated."
"#;

#[test]
fn same_lines_edited_twice_one_lands_the_other_is_a_kept_conflict() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = Repo::new(&claude);
    repo.write("shared.txt", "line one\nline two\n");
    repo.write("gamma.txt", "before\n");
    repo.write("delta.txt", "before\n");
    repo.commit("files");
    repo.workflow(
        "conflict",
        r#"
version: 1
name: conflict
tasks:
  shared:
    for_each: { items: [alpha, beta] }
    agent: { prompt: "Set shared to {{ item }}", model: sonnet }
    outputs: [shared.txt]
  own:
    for_each: { items: [gamma, delta] }
    agent: { prompt: "Update {{ item }}", model: sonnet }
    outputs: ["{{ item }}.txt"]
"#,
    );
    let mock = Mock::start(SCRIPT);
    let out = repo.ccflow(&mock, &["run", "conflict", "-j", "8"]);
    assert_eq!(out.code, 1, "a conflict fails the run");
    let record = repo.last_record();
    let landed = with_status(&record, "succeeded");
    let conflicts = with_status(&record, "conflict");
    assert_eq!(conflicts.len(), 1, "{record:#}");
    assert_eq!(landed.len(), 3, "{record:#}");
    let (winner, loser) = if conflicts[0] == "shared[beta]" {
        ("alpha", "beta")
    } else {
        ("beta", "alpha")
    };
    assert_eq!(
        repo.read("shared.txt"),
        format!("line {winner}\nline two\n")
    );
    let lost = instance(&record, &format!("shared[{loser}]"));
    assert!(
        lost["message"]
            .as_str()
            .is_some_and(|m| m.contains("`shared.txt`")),
        "{lost:#}"
    );
    let patch = lost["artifacts"]["diff"]
        .as_str()
        .expect("the conflicting patch is kept");
    let patch = std::fs::read_to_string(repo.run_dir(&record).join(patch)).expect("patch file");
    assert!(patch.contains(&format!("+line {loser}")), "{patch}");
    assert_eq!(repo.read("gamma.txt"), "after\n");
    assert_eq!(repo.read("delta.txt"), "after\n");
    assert!(repo.worktrees_left().is_empty());
}

#[test]
fn an_edit_outside_outputs_fails_its_instance_and_applies_nothing_of_it() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = Repo::new(&claude);
    for name in ["sneaky", "secret", "good1", "good2"] {
        repo.write(&format!("{name}.txt"), "before\n");
    }
    repo.commit("files");
    repo.workflow(
        "scope",
        r#"
version: 1
name: scope
tasks:
  own:
    for_each: { items: [sneaky, good1, good2] }
    agent: { prompt: "Update {{ item }}", model: sonnet }
    outputs: ["{{ item }}.txt"]
"#,
    );
    let mock = Mock::start(SCRIPT);
    let out = repo.ccflow(&mock, &["run", "scope", "-j", "8"]);
    assert_eq!(out.code, 1);
    let record = repo.last_record();
    let sneaky = instance(&record, "own[sneaky]");
    assert_eq!(sneaky["status"], "failed", "{sneaky:#}");
    let message = sneaky["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`secret.txt`") && !message.contains("`sneaky.txt`"),
        "{message}"
    );
    assert!(
        out.stderr.contains("secret.txt") || out.stdout.contains("secret.txt"),
        "the summary names the path"
    );
    assert_eq!(repo.read("secret.txt"), "before\n");
    assert_eq!(
        repo.read("sneaky.txt"),
        "before\n",
        "nothing of the rejected diff lands"
    );
    assert_eq!(with_status(&record, "succeeded").len(), 2, "{record:#}");
    assert_eq!(repo.read("good1.txt"), "after\n");
    assert_eq!(repo.read("good2.txt"), "after\n");
}
