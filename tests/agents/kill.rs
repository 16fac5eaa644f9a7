//! Killing ccflow mid-run with sessions in flight: SIGINT cleans up at once
//! (exit 130); SIGKILL leaves debris that the next run removes. Either way no
//! worktree, no git worktree entry and no claude process survives, and the
//! user's tree only holds the diffs applied before the kill.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{with_status, Mock, Repo};

/// `fast` lands at once; every `slow*` session hangs on its first request.
const HANGING: &str = r#"
rules:
  - name: fast
    match: 'Update fast'
    turns:
      - content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/fast.txt", old_string: "before", new_string: "after" } }
      - text: "Updated."
  - name: slow
    regex: 'Update (?<name>slow\d)'
    turns:
      - hang: true
        content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/{{name}}.txt", old_string: "before", new_string: "after" } }
      - text: "Updated."
"#;

/// The same edits, served at once.
const QUICK: &str = r#"
rules:
  - name: any
    regex: 'Update (?<name>\w+)'
    turns:
      - content:
          - tool_use: { name: Edit, input: { file_path: "{{cwd}}/{{name}}.txt", old_string: "before", new_string: "after" } }
      - text: "Updated."
"#;

const WORKFLOW: &str = r#"
version: 1
name: kill
tasks:
  edit:
    for_each: { items: [fast, slow1, slow2, slow3] }
    agent: { prompt: "Update {{ item }}", model: sonnet }
    outputs: ["{{ item }}.txt"]
"#;

fn setup(claude: &std::path::Path) -> (Repo, BTreeMap<String, Vec<u8>>) {
    let repo = Repo::new(claude);
    for name in ["fast", "slow1", "slow2", "slow3"] {
        repo.write(&format!("{name}.txt"), "before\n");
    }
    repo.commit("files");
    repo.write("untracked.txt", "mine\n");
    repo.workflow("kill", WORKFLOW);
    let before = repo.tree();
    (repo, before)
}

/// Starts the run and waits until `fast` has landed and the three slow
/// sessions are hanging in the mock.
fn start_in_flight(repo: &Repo, mock: &Mock) -> std::process::Child {
    let child = repo.spawn(mock, &["run", "kill", "-j", "8"]);
    let in_flight = crate::support::wait_for(Duration::from_secs(60), || {
        repo.read("fast.txt") == "after\n"
            && mock.stats().per_rule.get("slow").copied().unwrap_or(0) >= 3
    });
    assert!(
        in_flight,
        "sessions never got in flight: {:?}",
        mock.stats()
    );
    // The hung requests have their headers; give the CLIs a moment to wait on them.
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn expected_after_fast(before: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    let mut expected = before.clone();
    expected.insert("fast.txt".into(), b"after\n".to_vec());
    expected
}

fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigint_mid_run_cleans_up_and_keeps_only_applied_diffs() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let (repo, before) = setup(&claude);
    let mock = Mock::start(HANGING);
    let mut child = start_in_flight(&repo, &mock);
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: signalling the child this test spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = wait_exit(&mut child, Duration::from_secs(20))
        .expect("ccflow did not stop within 20s of SIGINT");
    let stderr = std::fs::read_to_string(repo.home.join("ccflow.err")).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let leftover = repo.wait_no_processes(Duration::from_secs(5));
    assert!(leftover.is_empty(), "processes left: {leftover:#?}");
    assert!(
        repo.worktrees_left().is_empty(),
        "{:?}",
        repo.worktrees_left()
    );
    assert_eq!(repo.git_worktrees().len(), 1, "{:?}", repo.git_worktrees());
    assert_eq!(repo.tree(), expected_after_fast(&before));
    let record = repo.last_record();
    assert_eq!(record["status"], "interrupted", "{record:#}");
    assert_eq!(
        with_status(&record, "succeeded"),
        vec!["edit[fast]".to_owned()]
    );
}

#[test]
fn sigkill_mid_run_then_the_next_run_cleans_up_and_finishes() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let (repo, before) = setup(&claude);
    let hanging = Mock::start(HANGING);
    let mut child = start_in_flight(&repo, &hanging);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert_eq!(
        repo.tree(),
        expected_after_fast(&before),
        "the tree right after the kill"
    );
    // The sessions die with ccflow rather than spend tokens for nobody.
    let orphans = repo.wait_no_processes(Duration::from_secs(5));
    assert!(
        orphans.is_empty(),
        "sessions outlived a SIGKILLed ccflow: {orphans:#?}"
    );

    // The next run (the hanging mock still up, so nothing ends by itself).
    let quick = Mock::start(QUICK);
    let out = repo.ccflow(&quick, &["run", "kill", "-j", "8"]);
    assert_eq!(out.code, 0);
    let leftover = repo.wait_no_processes(Duration::from_secs(5));
    assert!(leftover.is_empty(), "processes left: {leftover:#?}");
    assert!(
        repo.worktrees_left().is_empty(),
        "{:?}",
        repo.worktrees_left()
    );
    assert_eq!(repo.git_worktrees().len(), 1, "{:?}", repo.git_worktrees());
    let record = repo.last_record();
    assert_eq!(
        with_status(&record, "cached"),
        vec!["edit[fast]".to_owned()],
        "{record:#}"
    );
    assert_eq!(with_status(&record, "succeeded").len(), 3);
    let mut expected = before;
    for name in ["fast", "slow1", "slow2", "slow3"] {
        expected.insert(format!("{name}.txt"), b"after\n".to_vec());
    }
    assert_eq!(repo.tree(), expected);
    assert_eq!(
        quick.stats().per_rule.get("any"),
        Some(&6),
        "only the three slow instances ran again"
    );
}
