//! The shell example README's first command runs, on this repository.

use std::path::Path;
use std::process::Command;

use crate::support::BIN;

/// README's first command runs `examples/lint.yaml` over the repository:
/// its own Markdown, YAML and shell files must pass it (trailing blanks in
/// pasted benchmark tables once made that command fail). Run on a copy of
/// the tracked files, so the checkout is left as it was.
#[test]
fn the_lint_example_passes_on_this_repository() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo)
        .output()
        .expect("git ls-files");
    assert!(listed.status.success(), "git ls-files failed");
    let copy = tempfile::tempdir().expect("tempdir");
    let mut copied = 0;
    for name in String::from_utf8_lossy(&listed.stdout).split('\0') {
        let wanted = [".md", ".yaml", ".yml", ".sh"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if !wanted || !repo.join(name).is_file() {
            continue;
        }
        let target = copy.path().join(name);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(repo.join(name), &target).expect("copy");
        copied += 1;
    }
    assert!(copied > 20, "the repository's docs and workflows: {copied}");
    let out = Command::new(BIN)
        .args(["run", "examples/lint.yaml"])
        .current_dir(copy.path())
        .env("CI", "true")
        .output()
        .expect("run ccflow");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("succeeded"), "{stderr}");
    let report = std::fs::read_to_string(copy.path().join(".ccflow-out/lint-report.txt"))
        .expect("the report");
    assert_eq!(report, "", "no problem found");
}
