//! `--apply branch` (one commit per instance on `ccflow/RUN_ID`, the working
//! tree untouched) and `--apply none` (the diffs only in the run record).

use crate::support::{instance, with_status, Mock, Repo};

const SCRIPT: &str = r#"
rules:
  - name: edit
    regex: 'Update (?<name>\w+)'
    turns:
      - content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/{{name}}.txt", old_string: "before", new_string: "after" } }
      - text: "Updated {{name}}."
"#;

const WORKFLOW: &str = r#"
version: 1
name: apply
tasks:
  edit:
    for_each: { items: [a, b] }
    agent: { prompt: "Update {{ item }}", model: sonnet }
    outputs: ["{{ item }}.txt"]
"#;

fn setup(claude: &std::path::Path) -> Repo {
    let repo = Repo::new(claude);
    repo.write("a.txt", "before\n");
    repo.write("b.txt", "before\n");
    repo.commit("files");
    repo.write("a.txt", "before\nuncommitted\n");
    repo.write("untracked.txt", "mine\n");
    repo.workflow("apply", WORKFLOW);
    repo
}

#[test]
fn apply_branch_commits_each_instance_and_leaves_the_tree_alone() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = setup(&claude);
    let mock = Mock::start(SCRIPT);
    let before = repo.tree();
    let head = repo.git(&["rev-parse", "HEAD"]).trim().to_owned();
    let out = repo.ccflow(&mock, &["run", "apply", "--apply", "branch"]);
    assert_eq!(out.code, 0);
    assert_eq!(
        repo.tree(),
        before,
        "--apply branch touched the working tree"
    );
    assert_eq!(repo.git(&["rev-parse", "HEAD"]).trim(), head);
    assert_eq!(repo.git(&["branch", "--show-current"]).trim(), "main");
    let record = repo.last_record();
    assert_eq!(with_status(&record, "succeeded").len(), 2, "{record:#}");
    let branch = format!("ccflow/{}", record["run_id"].as_str().expect("run id"));
    // The branch starts at the run's snapshot (the user's uncommitted work
    // as a commit on HEAD), then one commit per instance.
    let log = repo.git(&["log", "--format=%B%x00", &format!("{head}..{branch}")]);
    let messages: Vec<&str> = log
        .split('\0')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    let instance_commits: Vec<&&str> = messages.iter().filter(|m| m.contains("edit[")).collect();
    assert_eq!(
        instance_commits.len(),
        2,
        "one commit per instance: {messages:#?}"
    );
    for item in ["a", "b"] {
        assert_eq!(
            instance_commits
                .iter()
                .filter(|m| m.contains(&format!("edit[{item}]")))
                .count(),
            1,
            "{messages:#?}"
        );
    }
    assert!(messages.len() <= 3, "{messages:#?}");
    let changed = repo.git(&["diff", "--name-only", &format!("{branch}~2..{branch}")]);
    assert_eq!(
        changed.lines().collect::<Vec<_>>(),
        vec!["a.txt", "b.txt"],
        "only the agents' files in their commits"
    );
    assert_eq!(repo.git(&["show", &format!("{branch}:b.txt")]), "after\n");
    // The agents worked on the snapshot, uncommitted change included.
    assert_eq!(
        repo.git(&["show", &format!("{branch}:a.txt")]),
        "after\nuncommitted\n"
    );
}

#[test]
fn apply_none_keeps_the_diffs_in_the_record_only() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let repo = setup(&claude);
    let mock = Mock::start(SCRIPT);
    let before = repo.tree();
    let branches = repo.git(&["branch", "--list"]);
    let out = repo.ccflow(&mock, &["run", "apply", "--apply", "none"]);
    assert_eq!(out.code, 0);
    assert_eq!(repo.tree(), before, "--apply none touched the working tree");
    assert_eq!(repo.git(&["branch", "--list"]), branches);
    let record = repo.last_record();
    for item in ["a", "b"] {
        let inst = instance(&record, &format!("edit[{item}]"));
        assert_eq!(inst["status"], "succeeded", "{inst:#}");
        let diff = inst["artifacts"]["diff"].as_str().expect("diff artifact");
        let diff = std::fs::read_to_string(repo.run_dir(&record).join(diff)).expect("diff file");
        assert!(
            diff.contains(&format!("{item}.txt"))
                && diff.contains("-before")
                && diff.contains("+after"),
            "{diff}"
        );
    }
}
