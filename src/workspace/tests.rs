//! Tests of the workspace module against real git repositories in temporary
//! directories, set up with the `git` CLI.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// Runs `git` in `dir` with a hermetic configuration; panics on failure.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(["-c", "init.defaultBranch=main", "-c", "core.autocrlf=false"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write(root: &Path, path: &str, content: impl AsRef<[u8]>) {
    let full = root.join(path);
    fs_err::create_dir_all(full.parent().unwrap()).unwrap();
    fs_err::write(full, content).unwrap();
}

fn read(root: &Path, path: &str) -> String {
    fs_err::read_to_string(root.join(path)).unwrap()
}

fn set_executable(path: &Path, executable: bool) {
    let mode = if executable { 0o755 } else { 0o644 };
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A repository with one commit holding `files`.
fn repo_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    for (path, content) in files {
        write(dir.path(), path, content);
    }
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "initial"]);
    dir
}

/// Every file of a tree, as (path, mode, content).
fn tree_files(repo_root: &Path, tree: git2::Oid) -> Vec<(String, i32, Vec<u8>)> {
    let repo = git2::Repository::open(repo_root).unwrap();
    let tree = repo.find_tree(tree).unwrap();
    let mut files = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob) {
            let blob = repo.find_blob(entry.id()).unwrap();
            files.push((
                format!("{dir}{}", entry.name().unwrap()),
                entry.filemode(),
                blob.content().to_vec(),
            ));
        }
        git2::TreeWalkResult::Ok
    })
    .unwrap();
    files.sort();
    files
}

fn tree_paths(repo_root: &Path, tree: git2::Oid) -> Vec<String> {
    tree_files(repo_root, tree)
        .into_iter()
        .map(|(path, _, _)| path)
        .collect()
}

/// Every file under `dir` (not `.git`), as (path, git mode, content).
fn disk_files(dir: &Path) -> Vec<(String, i32, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in fs_err::read_dir(&current).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            let relative = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let file_type = entry.file_type().unwrap();
            if file_type.is_dir() {
                stack.push(path);
            } else {
                let (content, mode) = patch::read_disk_file(&path).unwrap().unwrap();
                files.push((relative, mode as i32, content));
            }
        }
    }
    files.sort();
    files
}

fn worktree_dir(root: &Path, run: &str, name: &str) -> PathBuf {
    root.join(".ccflow").join("worktrees").join(run).join(name)
}

/// Snapshot + worktree, then `edit` in the worktree, then the diff.
fn agent_patch(snapshot: &Snapshot, name: &str, edit: impl FnOnce(&Path)) -> (Worktree, Patch) {
    let dir = worktree_dir(&snapshot.repo_root, &snapshot.run_id, name);
    let worktree = create_worktree(snapshot, &dir, name).unwrap();
    edit(&worktree.path);
    let patch = diff(snapshot, &worktree).unwrap();
    (worktree, patch)
}

fn applied_paths(outcome: ApplyOutcome) -> Vec<String> {
    match outcome {
        ApplyOutcome::Applied { paths, .. } => paths,
        ApplyOutcome::Conflict { paths, .. } => panic!("unexpected conflict in {paths:?}"),
    }
}

#[test]
fn snapshot_holds_working_files_and_leaves_head_and_index_alone() {
    let repo = repo_with(&[
        ("a.txt", "one\n"),
        ("gone.txt", "bye\n"),
        (".gitignore", "*.log\n"),
        ("src/lib.rs", "fn main() {}\n"),
    ]);
    let root = repo.path();
    // A tracked file that matches .gitignore stays tracked.
    write(root, "kept.log", "tracked anyway\n");
    git(root, &["add", "-f", "kept.log"]);
    git(root, &["commit", "-qm", "kept"]);
    write(root, "a.txt", "one, modified\n");
    write(root, "staged.txt", "staged\n");
    git(root, &["add", "staged.txt"]);
    fs_err::remove_file(root.join("gone.txt")).unwrap();
    write(root, "new/deep/dir/b.txt", "untracked\n");
    write(root, "debug.log", "ignored\n");
    write(root, ".ccflow/cache/entry", "state\n");
    write(root, "sub/.ccflow/x", "state\n");
    let head_before = git(root, &["rev-parse", "HEAD"]);
    let index_before = fs_err::read(root.join(".git/index")).unwrap();
    let status_before = git(root, &["status", "--porcelain"]);

    let snapshot = snapshot(root, "run1").unwrap();

    assert_eq!(
        tree_paths(root, snapshot.tree),
        [
            ".gitignore",
            "a.txt",
            "kept.log",
            "new/deep/dir/b.txt",
            "src/lib.rs",
            "staged.txt"
        ]
    );
    let files = tree_files(root, snapshot.tree);
    assert_eq!(files[1].2, b"one, modified\n");
    assert_eq!(git(root, &["rev-parse", "HEAD"]), head_before);
    assert_eq!(fs_err::read(root.join(".git/index")).unwrap(), index_before);
    assert_eq!(git(root, &["status", "--porcelain"]), status_before);
    // The ref keeps the commit alive, and the commit's parent is HEAD.
    let ref_target = git(root, &["rev-parse", "refs/ccflow/snapshots/run1"]);
    assert_eq!(ref_target.trim(), snapshot.commit.to_string());
    let parent = git(root, &["rev-parse", &format!("{}^", snapshot.commit)]);
    assert_eq!(parent, head_before);
    assert_eq!(snapshot.repo_root, root.canonicalize().unwrap());
    release_snapshot(&snapshot).unwrap();
    release_snapshot(&snapshot).unwrap();
    assert_eq!(git(root, &["for-each-ref", "refs/ccflow"]), "");
}

#[test]
fn snapshot_of_a_non_git_directory_says_to_run_git_init() {
    let dir = tempfile::tempdir().unwrap();
    let error = snapshot(dir.path(), "run").unwrap_err();
    assert!(
        matches!(error, WorkspaceError::NotARepository { .. }),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .contains(&dir.path().display().to_string()));
    assert_eq!(
        error.hint().as_deref(),
        Some("agent tasks need a git repository: run `git init`")
    );
}

#[test]
fn snapshot_rejects_a_run_id_git_cannot_name() {
    let repo = repo_with(&[("a", "a")]);
    let error = snapshot(repo.path(), "bad..name").unwrap_err();
    assert!(
        matches!(error, WorkspaceError::InvalidRefName { .. }),
        "{error:?}"
    );
}

#[test]
fn repository_without_commits_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q"]);
    write(root, "notes.md", "draft\n");
    let snapshot = snapshot(root, "first").unwrap();
    assert_eq!(tree_paths(root, snapshot.tree), ["notes.md"]);
    let (worktree, patch) = agent_patch(&snapshot, "0", |path| {
        write(path, "notes.md", "final\n");
        write(path, "added.md", "new\n");
    });
    assert_eq!(patch.paths(), ["added.md", "notes.md"]);
    assert_eq!(
        applied_paths(apply(&snapshot, &patch).unwrap()),
        ["added.md", "notes.md"]
    );
    assert_eq!(read(root, "notes.md"), "final\n");
    assert_eq!(read(root, "added.md"), "new\n");
    remove_worktree(root, &worktree).unwrap();
    // HEAD is still unborn.
    assert!(git2::Repository::open(root).unwrap().head().is_err());
}

#[test]
fn worktree_is_a_detached_checkout_equal_to_the_snapshot() {
    let repo = repo_with(&[
        ("a.txt", "a\n"),
        ("dir/b.txt", "b\n"),
        ("run.sh", "#!/bin/sh\n"),
    ]);
    let root = repo.path();
    set_executable(&root.join("run.sh"), true);
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    write(root, "a.txt", "a, uncommitted\n");
    write(root, "untracked/c.txt", "c\n");
    let snapshot = snapshot(root, "run2").unwrap();

    let dir = worktree_dir(root, "run2", "0");
    let worktree = create_worktree(&snapshot, &dir, "0").unwrap();

    assert_eq!(disk_files(&worktree.path), tree_files(root, snapshot.tree));
    assert!(fs_err::symlink_metadata(dir.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(git(&dir, &["status", "--porcelain"]), "");
    // The user's status does not show the state directory either.
    assert_eq!(read(root, ".ccflow/.gitignore"), "*\n");
    assert_eq!(
        git(root, &["status", "--porcelain"]),
        " M a.txt\n M run.sh\n?? link\n?? untracked/\n"
    );
    assert_eq!(
        git(&dir, &["rev-parse", "HEAD"]).trim(),
        snapshot.commit.to_string()
    );
    assert_eq!(git(&dir, &["branch", "--show-current"]), "");
    // No temporary branch is left behind, and the user's repo is unchanged.
    assert_eq!(git(root, &["branch", "--list"]).trim(), "* main");
    assert!(git(root, &["worktree", "list"]).contains(&*dir.to_string_lossy()));
    // git sees a healthy linked worktree: prune keeps it, status works in it.
    git(root, &["worktree", "prune"]);
    let listed = git(root, &["worktree", "list", "--porcelain"]);
    assert!(listed.contains(&*dir.to_string_lossy()), "{listed}");
    assert!(!listed.contains("prunable"), "{listed}");
    assert!(!listed.contains("locked"), "{listed}");

    // A second worktree at the same place is refused, the first one intact.
    let error = create_worktree(&snapshot, &dir, "1").unwrap_err();
    assert!(
        matches!(error, WorkspaceError::WorktreeDirectoryExists { .. }),
        "{error:?}"
    );
    assert!(dir.join("a.txt").exists());

    remove_worktree(root, &worktree).unwrap();
    assert!(!dir.exists());
    assert!(!git(root, &["worktree", "list"]).contains(&*dir.to_string_lossy()));
}

#[test]
fn worktrees_can_be_created_and_diffed_from_parallel_threads() {
    let repo = repo_with(&[("a.txt", "a\n"), ("dir/b.txt", "b\n")]);
    let root = repo.path();
    let snapshot = snapshot(root, "parallel").unwrap();
    let patches: Vec<Patch> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|index| {
                let snapshot = &snapshot;
                scope.spawn(move || {
                    agent_patch(snapshot, &index.to_string(), |path| {
                        write(path, &format!("out/{index}.txt"), format!("{index}\n"));
                    })
                    .1
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    for (index, patch) in patches.iter().enumerate() {
        assert_eq!(patch.paths(), [format!("out/{index}.txt")]);
    }
    let listed = git(root, &["worktree", "list"]);
    assert_eq!(listed.lines().count(), 9, "{listed}");
    assert_eq!(git(root, &["branch", "--list"]).trim(), "* main");
}

#[test]
fn diff_finds_every_kind_of_change() {
    let repo = repo_with(&[
        ("keep.txt", "same\n"),
        ("edit.txt", "before\n"),
        ("delete.txt", "doomed\n"),
        ("tool.sh", "#!/bin/sh\necho hi\n"),
        (".gitignore", "target/\n"),
    ]);
    let root = repo.path();
    write(root, "image.bin", [0_u8, 1, 2, 3, 0, 255]);
    std::os::unix::fs::symlink("keep.txt", root.join("alias")).unwrap();
    let snapshot = snapshot(root, "run3").unwrap();
    let (_worktree, patch) = agent_patch(&snapshot, "0", |path| {
        write(path, "edit.txt", "after\n");
        fs_err::remove_file(path.join("delete.txt")).unwrap();
        set_executable(&path.join("tool.sh"), true);
        write(path, "nested/new dir/ünïcode file.txt", "hello\n");
        write(path, "image.bin", [0_u8, 9, 9, 0, 254]);
        write(path, "target/build.o", "ignored");
        fs_err::remove_file(path.join("alias")).unwrap();
        std::os::unix::fs::symlink("edit.txt", path.join("alias")).unwrap();
        // The agent committing in its worktree changes nothing.
        git(path, &["add", "-A"]);
        git(path, &["commit", "-qm", "agent commit"]);
    });
    let kinds: Vec<(&str, ChangeKind)> = patch
        .files
        .iter()
        .map(|file| (file.path.as_str(), file.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("alias", ChangeKind::Modified),
            ("delete.txt", ChangeKind::Deleted),
            ("edit.txt", ChangeKind::Modified),
            ("image.bin", ChangeKind::Modified),
            ("nested/new dir/ünïcode file.txt", ChangeKind::Added),
            ("tool.sh", ChangeKind::ModeChanged),
        ]
    );
    let by_path = |path: &str| patch.files.iter().find(|file| file.path == path).unwrap();
    assert_eq!(by_path("alias").new_mode, Some(0o120_000));
    assert_eq!(
        by_path("alias").new_content.as_deref(),
        Some(&b"edit.txt"[..])
    );
    assert_eq!(by_path("tool.sh").new_mode, Some(0o100_755));
    assert_eq!(by_path("tool.sh").old_mode, Some(0o100_644));
    assert_eq!(by_path("delete.txt").new_content, None);
    assert!(by_path("delete.txt").old_blob.is_some());
    assert!(
        patch.text.contains("diff --git a/edit.txt b/edit.txt"),
        "{}",
        patch.text
    );
    assert!(patch.text.contains("-before\n+after\n"), "{}", patch.text);
    assert!(patch.text.contains("Binary files"), "{}", patch.text);
    assert!(
        patch.text.contains("old mode 100644\nnew mode 100755"),
        "{}",
        patch.text
    );
    assert!(!patch.text.contains("target/build.o"));
}

#[test]
fn diff_ignores_what_the_agent_did_to_its_index() {
    let repo = repo_with(&[("a.txt", "a\n"), ("b.txt", "b\n"), ("c.txt", "c\n")]);
    let snapshot = snapshot(repo.path(), "run13").unwrap();
    let (_worktree, patch) = agent_patch(&snapshot, "0", |path| {
        git(path, &["rm", "-q", "--cached", "a.txt"]);
        write(path, "a.txt", "a, edited\n");
        write(path, "b.txt", "b, staged then reverted\n");
        git(path, &["add", "b.txt"]);
        write(path, "b.txt", "b\n");
        write(path, "c.txt", "c, staged\n");
        git(path, &["add", "c.txt"]);
        write(path, "c.txt", "c, staged then edited\n");
    });
    let summary: Vec<(&str, ChangeKind, bool, Option<&[u8]>)> = patch
        .files
        .iter()
        .map(|file| {
            (
                file.path.as_str(),
                file.kind,
                file.old_blob.is_some(),
                file.new_content.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "a.txt",
                ChangeKind::Modified,
                true,
                Some(&b"a, edited\n"[..])
            ),
            (
                "c.txt",
                ChangeKind::Modified,
                true,
                Some(&b"c, staged then edited\n"[..])
            ),
        ]
    );
}

#[test]
fn unchanged_worktree_gives_an_empty_patch() {
    let repo = repo_with(&[("a.txt", "a\n")]);
    let snapshot = snapshot(repo.path(), "run4").unwrap();
    let (_worktree, patch) = agent_patch(&snapshot, "0", |path| {
        // Touching a file without changing it is not a change.
        write(path, "a.txt", "a\n");
    });
    assert!(patch.is_empty(), "{patch:?}");
    assert_eq!(patch.text, "");
    assert_eq!(
        apply(&snapshot, &patch).unwrap(),
        ApplyOutcome::Applied {
            paths: vec![],
            unchanged: vec![]
        }
    );
}

#[test]
fn eight_independent_patches_land_on_a_tree_with_uncommitted_changes() {
    let files: Vec<(String, String)> = (0..8)
        .map(|index| {
            (
                format!("src/module{index}.rs"),
                format!("// module {index}\n"),
            )
        })
        .collect();
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(path, content)| (path.as_str(), content.as_str()))
        .collect();
    let repo = repo_with(&borrowed);
    let root = repo.path();
    write(root, "src/module0.rs", "// module 0, edited by the user\n");
    write(root, "scratch.txt", "user's untracked notes\n");
    let snapshot = snapshot(root, "run5").unwrap();
    // The user keeps working after the snapshot.
    write(root, "README.md", "written during the run\n");

    let patches: Vec<Patch> = (0..8)
        .map(|index| {
            agent_patch(&snapshot, &index.to_string(), |path| {
                let file = format!("src/module{index}.rs");
                let mut content = read(path, &file);
                content.push_str("fn refactored() {}\n");
                write(path, &file, content);
                write(path, &format!("src/new{index}/mod.rs"), "// new\n");
            })
            .1
        })
        .collect();
    for (index, patch) in patches.iter().enumerate() {
        assert_eq!(
            applied_paths(apply(&snapshot, patch).unwrap()),
            [
                format!("src/module{index}.rs"),
                format!("src/new{index}/mod.rs")
            ]
        );
    }
    assert_eq!(
        read(root, "src/module0.rs"),
        "// module 0, edited by the user\nfn refactored() {}\n"
    );
    for index in 1..8 {
        assert_eq!(
            read(root, &format!("src/module{index}.rs")),
            format!("// module {index}\nfn refactored() {{}}\n")
        );
    }
    assert_eq!(read(root, "scratch.txt"), "user's untracked notes\n");
    assert_eq!(read(root, "README.md"), "written during the run\n");
    // The index is untouched: the agents' files are unstaged changes.
    assert_eq!(git(root, &["diff", "--cached", "--name-only"]), "");
}

#[test]
fn conflicting_patch_leaves_every_file_untouched() {
    let repo = repo_with(&[
        ("shared.txt", "line 1\nline 2\nline 3\n"),
        ("other.txt", "other\n"),
    ]);
    let root = repo.path();
    let snapshot = snapshot(root, "run6").unwrap();
    let (_first_tree, first) = agent_patch(&snapshot, "0", |path| {
        write(path, "shared.txt", "line 1\nline 2 by first\nline 3\n");
    });
    let (_second_tree, second) = agent_patch(&snapshot, "1", |path| {
        write(path, "shared.txt", "line 1\nline 2 by second\nline 3\n");
        write(path, "other.txt", "other, by second\n");
        write(path, "brand/new.txt", "new\n");
    });
    assert_eq!(
        applied_paths(apply(&snapshot, &first).unwrap()),
        ["shared.txt"]
    );
    match apply(&snapshot, &second).unwrap() {
        ApplyOutcome::Conflict { paths, patch_text } => {
            assert_eq!(paths, ["shared.txt"]);
            assert_eq!(patch_text, second.text);
        }
        outcome @ ApplyOutcome::Applied { .. } => panic!("expected a conflict: {outcome:?}"),
    }
    assert_eq!(
        read(root, "shared.txt"),
        "line 1\nline 2 by first\nline 3\n"
    );
    assert_eq!(read(root, "other.txt"), "other\n");
    assert!(!root.join("brand").exists());
}

#[test]
fn non_overlapping_edits_of_one_file_both_land() {
    let original: String = (1..=12).map(|line| format!("line {line}\n")).collect();
    let repo = repo_with(&[("file.txt", &original)]);
    let root = repo.path();
    let snapshot = snapshot(root, "run7").unwrap();
    let edit = |from: &str, to: &str| {
        let content = original.replace(from, to);
        move |path: &Path| write(path, "file.txt", content)
    };
    let (_first_tree, first) = agent_patch(&snapshot, "0", edit("line 2\n", "line two\n"));
    let (_second_tree, second) = agent_patch(&snapshot, "1", edit("line 11\n", "line eleven\n"));
    // The user edits the middle meanwhile.
    write(root, "file.txt", original.replace("line 6\n", "line six\n"));
    let objects_before = git(root, &["count-objects"]);
    applied_paths(apply(&snapshot, &first).unwrap());
    applied_paths(apply(&snapshot, &second).unwrap());
    // The merges hash their inputs in memory: the user's `.git` gains nothing.
    assert_eq!(git(root, &["count-objects"]), objects_before);
    assert_eq!(
        read(root, "file.txt"),
        original
            .replace("line 2\n", "line two\n")
            .replace("line 6\n", "line six\n")
            .replace("line 11\n", "line eleven\n")
    );
}

#[test]
fn apply_handles_deletions_modes_symlinks_and_binary() {
    let repo = repo_with(&[("dir/gone.txt", "x\n"), ("tool.sh", "#!/bin/sh\n")]);
    let root = repo.path();
    write(root, "data.bin", [0_u8, 1, 2]);
    let snapshot = snapshot(root, "run8").unwrap();
    let (_worktree, patch) = agent_patch(&snapshot, "0", |path| {
        fs_err::remove_file(path.join("dir/gone.txt")).unwrap();
        set_executable(&path.join("tool.sh"), true);
        std::os::unix::fs::symlink("tool.sh", path.join("link")).unwrap();
        write(path, "data.bin", [0_u8, 7, 7, 255]);
    });
    assert_eq!(
        applied_paths(apply(&snapshot, &patch).unwrap()),
        ["data.bin", "dir/gone.txt", "link", "tool.sh"]
    );
    // The emptied directory goes too, as with git.
    assert!(!root.join("dir").exists());
    let mode = fs_err::metadata(root.join("tool.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111);
    assert_eq!(
        fs_err::read_link(root.join("link")).unwrap(),
        Path::new("tool.sh")
    );
    assert_eq!(
        fs_err::read(root.join("data.bin")).unwrap(),
        [0_u8, 7, 7, 255]
    );
    // Applying again is a no-op.
    assert_eq!(
        apply(&snapshot, &patch).unwrap(),
        ApplyOutcome::Applied {
            paths: vec![],
            unchanged: vec![
                "data.bin".to_owned(),
                "dir/gone.txt".to_owned(),
                "link".to_owned(),
                "tool.sh".to_owned()
            ]
        }
    );
}

#[test]
fn a_file_and_a_directory_may_swap_places() {
    let repo = repo_with(&[
        ("becomes_dir", "file\n"),
        ("becomes_file/inner/a.txt", "a\n"),
    ]);
    let root = repo.path();
    let snapshot = snapshot(root, "run14").unwrap();
    let (_worktree, patch) = agent_patch(&snapshot, "0", |path| {
        fs_err::remove_file(path.join("becomes_dir")).unwrap();
        write(path, "becomes_dir/child.txt", "child\n");
        fs_err::remove_dir_all(path.join("becomes_file")).unwrap();
        write(path, "becomes_file", "now a file\n");
    });
    assert_eq!(
        applied_paths(apply(&snapshot, &patch).unwrap()),
        [
            "becomes_dir",
            "becomes_dir/child.txt",
            "becomes_file",
            "becomes_file/inner/a.txt"
        ]
    );
    assert_eq!(read(root, "becomes_dir/child.txt"), "child\n");
    assert_eq!(read(root, "becomes_file"), "now a file\n");
}

#[test]
fn binary_edited_on_both_sides_conflicts_and_delete_of_edited_file_conflicts() {
    let repo = repo_with(&[("notes.txt", "a\n")]);
    let root = repo.path();
    write(root, "data.bin", [0_u8, 1, 2]);
    let snapshot = snapshot(root, "run9").unwrap();
    let (_first_tree, binary) = agent_patch(&snapshot, "0", |path| {
        write(path, "data.bin", [0_u8, 5]);
    });
    let (_second_tree, delete) = agent_patch(&snapshot, "1", |path| {
        fs_err::remove_file(path.join("notes.txt")).unwrap();
    });
    write(root, "data.bin", [0_u8, 6]);
    write(root, "notes.txt", "a, edited by the user\n");
    for patch in [&binary, &delete] {
        assert!(
            matches!(
                apply(&snapshot, patch).unwrap(),
                ApplyOutcome::Conflict { .. }
            ),
            "{patch:?}"
        );
    }
    assert_eq!(fs_err::read(root.join("data.bin")).unwrap(), [0_u8, 6]);
    assert_eq!(read(root, "notes.txt"), "a, edited by the user\n");
}

#[test]
fn paths_outside_lists_paths_no_glob_allows() {
    let change = |path: &str| FileChange {
        path: path.to_owned(),
        kind: ChangeKind::Added,
        new_content: Some(Vec::new()),
        new_mode: Some(0o100_644),
        old_blob: None,
        old_mode: None,
    };
    let patch = Patch {
        files: [
            "src/a/b.rs",
            "src/lib.rs",
            "Cargo.toml",
            "docs/x.md",
            "README.md",
            "tests/t.rs",
        ]
        .into_iter()
        .map(change)
        .collect(),
        text: String::new(),
    };
    let globs = [
        "src/**".to_owned(),
        "Cargo.toml".to_owned(),
        "docs".to_owned(),
    ];
    assert_eq!(
        paths_outside(&patch, &globs).unwrap(),
        ["README.md", "tests/t.rs"]
    );
    let single_star = ["src/*.rs".to_owned()];
    assert_eq!(
        paths_outside(&patch, &single_star).unwrap(),
        [
            "src/a/b.rs",
            "Cargo.toml",
            "docs/x.md",
            "README.md",
            "tests/t.rs"
        ]
    );
    assert_eq!(paths_outside(&patch, &[]).unwrap().len(), 6);
    let error = paths_outside(&patch, &["src/[".to_owned()]).unwrap_err();
    assert!(matches!(error, WorkspaceError::Glob { .. }), "{error:?}");
}

#[test]
fn commit_to_branch_commits_without_touching_the_working_tree() {
    let repo = repo_with(&[("a.txt", "1\n2\n3\n4\n5\n6\n7\n8\n"), ("b.txt", "b\n")]);
    let root = repo.path();
    write(root, "b.txt", "b, uncommitted\n");
    let snapshot = snapshot(root, "run10").unwrap();
    let (_first_tree, first) = agent_patch(&snapshot, "0", |path| {
        write(path, "a.txt", "one\n2\n3\n4\n5\n6\n7\n8\n");
        write(path, "new/file.txt", "new\n");
    });
    let (_second_tree, second) = agent_patch(&snapshot, "1", |path| {
        write(path, "a.txt", "1\n2\n3\n4\n5\n6\n7\neight\n");
    });
    let status_before = git(root, &["status", "--porcelain"]);
    let head_before = git(root, &["rev-parse", "HEAD"]);

    let first_commit =
        commit_to_branch(&snapshot, "ccflow/run10", &first, "refactor[src/a.rs]").unwrap();
    let second_commit =
        commit_to_branch(&snapshot, "ccflow/run10", &second, "refactor[src/b.rs]").unwrap();

    assert_eq!(
        git(root, &["rev-parse", "ccflow/run10"]).trim(),
        second_commit.to_string()
    );
    assert_eq!(
        git(root, &["rev-parse", "ccflow/run10^"]).trim(),
        first_commit.to_string()
    );
    assert_eq!(
        git(root, &["rev-parse", "ccflow/run10~2"]).trim(),
        snapshot.commit.to_string()
    );
    assert_eq!(
        git(root, &["log", "-1", "--format=%s", "ccflow/run10"]),
        "refactor[src/b.rs]\n"
    );
    assert_eq!(
        git(root, &["show", "ccflow/run10:a.txt"]),
        "one\n2\n3\n4\n5\n6\n7\neight\n"
    );
    assert_eq!(git(root, &["show", "ccflow/run10:new/file.txt"]), "new\n");
    assert_eq!(
        git(root, &["show", "ccflow/run10:b.txt"]),
        "b, uncommitted\n"
    );
    assert_eq!(git(root, &["status", "--porcelain"]), status_before);
    assert_eq!(git(root, &["rev-parse", "HEAD"]), head_before);
    assert_eq!(read(root, "a.txt"), "1\n2\n3\n4\n5\n6\n7\n8\n");

    // A patch the branch already holds makes no empty commit.
    assert_eq!(
        commit_to_branch(&snapshot, "ccflow/run10", &second, "again").unwrap(),
        second_commit
    );
    let empty = commit_to_branch(&snapshot, "ccflow/empty", &Patch::default(), "x").unwrap();
    assert_eq!(empty, snapshot.commit);
    assert_eq!(
        git(root, &["rev-parse", "ccflow/empty"]).trim(),
        snapshot.commit.to_string()
    );

    // The same lines again: the branch already has them changed.
    let (_third_tree, third) = agent_patch(&snapshot, "2", |path| {
        write(path, "a.txt", "uno\n2\n3\n4\n5\n6\n7\n8\n");
    });
    let error = commit_to_branch(&snapshot, "ccflow/run10", &third, "x").unwrap_err();
    assert!(
        matches!(error, WorkspaceError::BranchConflict { .. }),
        "{error}"
    );
    let error = commit_to_branch(&snapshot, "main", &third, "x").unwrap_err();
    assert!(
        matches!(error, WorkspaceError::BranchCheckedOut { .. }),
        "{error}"
    );
}

#[test]
fn cleanup_removes_what_a_crashed_run_left() {
    let repo = repo_with(&[("a.txt", "a\n")]);
    let root = repo.path();
    let worktrees = root.join(".ccflow/worktrees");
    let crashed = snapshot(root, "crashed").unwrap();
    let dir = worktree_dir(root, "crashed", "0");
    // "Crash": the worktree and its ref are left, nothing removes them.
    drop(create_worktree(&crashed, &dir, "0").unwrap());
    write(&worktrees, "crashed/1/half-made.txt", "x");
    let live = snapshot(root, "live").unwrap();
    let live_dir = worktree_dir(root, "live", "0");
    create_worktree(&live, &live_dir, "0").unwrap();
    // Another user worktree, not ccflow's.
    let own = tempfile::tempdir().unwrap();
    let own_path = own.path().join("mine");
    git(
        root,
        &[
            "worktree",
            "add",
            "-q",
            "--detach",
            own_path.to_str().unwrap(),
        ],
    );

    let removed = cleanup_stale(root, &worktrees, Some("live")).unwrap();

    assert_eq!(removed, 3, "worktree, its run folder, its snapshot ref");
    assert!(!worktrees.join("crashed").exists());
    assert!(live_dir.join("a.txt").exists());
    let listed = git(root, &["worktree", "list", "--porcelain"]);
    assert!(!listed.contains("crashed"), "{listed}");
    assert!(listed.contains("live"), "{listed}");
    assert!(listed.contains("mine"), "{listed}");
    let refs = git(
        root,
        &["for-each-ref", "--format=%(refname)", "refs/ccflow"],
    );
    assert_eq!(refs, "refs/ccflow/snapshots/live\n");
    // Nothing left to do the second time.
    assert_eq!(cleanup_stale(root, &worktrees, Some("live")).unwrap(), 0);
    // With no live run everything of ccflow goes, the user's worktree stays.
    assert_eq!(cleanup_stale(root, &worktrees, None).unwrap(), 3);
    assert!(git(root, &["worktree", "list"]).contains("mine"));
}

#[test]
fn patch_bytes_round_trip_and_reapply_from_the_cache() {
    let repo = repo_with(&[
        ("a.txt", "a\n"),
        ("gone.txt", "x\n"),
        ("tool.sh", "#!/bin/sh\n"),
    ]);
    let root = repo.path();
    let snapshot = snapshot(root, "run11").unwrap();
    let (worktree, patch) = agent_patch(&snapshot, "0", |path| {
        write(path, "a.txt", "a, changed\n");
        write(path, "bin/blob.bin", [0_u8, 159, 146, 150]);
        fs_err::remove_file(path.join("gone.txt")).unwrap();
        set_executable(&path.join("tool.sh"), true);
    });
    remove_worktree(root, &worktree).unwrap();
    let bytes = patch.to_bytes();
    let decoded = Patch::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, patch);

    // A cache hit in a later run: a new snapshot of the same state.
    let later = super::snapshot(root, "run12").unwrap();
    assert_eq!(
        applied_paths(apply(&later, &decoded).unwrap()),
        ["a.txt", "bin/blob.bin", "gone.txt", "tool.sh"]
    );
    assert_eq!(read(root, "a.txt"), "a, changed\n");

    for broken in [&bytes[..bytes.len() - 1], &bytes[1..], b"" as &[u8]] {
        let error = Patch::from_bytes(broken).unwrap_err();
        assert!(
            matches!(error, WorkspaceError::CorruptPatch { .. }),
            "{error:?}"
        );
    }
    let mut escaping = patch.clone();
    escaping.files[0].path = "../outside.txt".to_owned();
    let error = Patch::from_bytes(&escaping.to_bytes()).unwrap_err();
    assert!(
        matches!(error, WorkspaceError::InvalidPath { .. }),
        "{error:?}"
    );
    let error = apply(&snapshot, &escaping).unwrap_err();
    assert!(
        matches!(error, WorkspaceError::InvalidPath { .. }),
        "{error:?}"
    );
    escaping.files[0].path = ".git/config".to_owned();
    assert!(apply(&snapshot, &escaping).is_err());
}

/// Timing on a generated 2,000-file repository; run with
/// `cargo test --release --lib workspace::tests::measure -- --ignored --nocapture`.
/// Several rounds, minimum and median per step, with baselines taken in the
/// same rounds (the file system is shared with other builds, so absolute
/// figures swing; the ratios to the baselines are what to read).
#[test]
#[ignore = "measurement, run explicitly in release mode"]
fn measure_on_a_2000_file_repository() {
    use std::collections::BTreeMap;
    use std::time::Instant;

    const ROUNDS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q"]);
    let line = "the quick brown fox jumps over the lazy dog, again and again\n";
    for index in 0..2000 {
        let path = format!(
            "d{}/e{}/f{}/file{index}.txt",
            index % 10,
            index % 7,
            index % 5
        );
        write(root, &path, line.repeat(16));
    }
    git(root, &["add", "-A"]);
    git(root, &["commit", "-qm", "generated"]);
    write(root, "d0/e0/f0/file0.txt", "uncommitted\n");
    write(root, "untracked/new.txt", "untracked\n");

    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut time = |label: &'static str, started: Instant| {
        samples
            .entry(label)
            .or_default()
            .push(started.elapsed().as_secs_f64() * 1000.0);
    };
    for round in 0..ROUNDS {
        let run = format!("bench{round}");
        let started = Instant::now();
        let snapshot = snapshot(root, &run).unwrap();
        time("1 snapshot", started);
        let wt_dir = worktree_dir(root, &run, "0");
        let started = Instant::now();
        let worktree = create_worktree(&snapshot, &wt_dir, "0").unwrap();
        time("2 create_worktree", started);
        write(
            &wt_dir,
            &format!("d1/e1/f1/file{}.txt", 1 + 70 * round),
            "changed\n",
        );
        let started = Instant::now();
        let patch = diff(&snapshot, &worktree).unwrap();
        time("3 diff (one file changed)", started);
        assert_eq!(patch.files.len(), 1);
        let started = Instant::now();
        applied_paths(apply(&snapshot, &patch).unwrap());
        time("4 apply (one file)", started);
        let started = Instant::now();
        remove_worktree(root, &worktree).unwrap();
        time("5 remove_worktree", started);
        let started = Instant::now();
        cleanup_stale(root, &root.join(".ccflow/worktrees"), None).unwrap();
        time("6 cleanup_stale (nothing left)", started);

        let cli_dir = root.join(".ccflow/cli");
        let started = Instant::now();
        git(
            root,
            &[
                "worktree",
                "add",
                "-q",
                "--detach",
                cli_dir.to_str().unwrap(),
                &snapshot.commit.to_string(),
            ],
        );
        time("7 baseline: git worktree add --detach", started);
        let started = Instant::now();
        git(
            root,
            &["worktree", "remove", "--force", cli_dir.to_str().unwrap()],
        );
        time("8 baseline: git worktree remove --force", started);
        let plain = root.join(".ccflow/plain");
        let files = tree_files(root, snapshot.tree);
        let started = Instant::now();
        for (path, _mode, content) in files {
            write(&plain, &path, content);
        }
        time("9 baseline: write the files with std::fs", started);
        fs_err::remove_dir_all(&plain).unwrap();
    }
    crate::outln!("2,000 files of ~1 KB, {ROUNDS} rounds: min / median ms");
    for (label, mut values) in samples {
        values.sort_by(f64::total_cmp);
        crate::outln!(
            "{label:<45} {:>8.1} {:>8.1}",
            values[0],
            values[values.len() / 2]
        );
    }
}

#[test]
fn a_reset_worktree_is_the_snapshot_again_and_serves_the_next_agent() {
    let repo = repo_with(&[
        ("a.txt", "a\n"),
        ("b/c.txt", "c\n"),
        ("run.sh", "#!/bin/sh\n"),
        (".gitignore", "target/\n*.log\n"),
    ]);
    set_executable(&repo.path().join("run.sh"), true);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-qm", "exec"]);
    let snapshot = snapshot(repo.path(), "run-pool").unwrap();
    let (worktree, patch) = agent_patch(&snapshot, "0", |path| {
        write(path, "a.txt", "changed\n");
        std::fs::remove_file(path.join("b/c.txt")).unwrap();
        write(path, "new/deep/file.txt", "added\n");
        set_executable(&path.join("run.sh"), false);
        // Build products the agent's tools leave (ignored: not in the diff).
        write(path, "target/debug/out.bin", "bin");
        write(path, "b/trace.log", "log");
        // An agent that commits moves its worktree's HEAD.
        git(path, &["add", "-A"]);
        git(path, &["commit", "-qm", "agent commit"]);
    });
    assert_eq!(patch.files.len(), 4, "{patch:?}");
    reset_worktree(&snapshot, &worktree, &patch).unwrap();
    assert!(diff(&snapshot, &worktree).unwrap().is_empty());
    assert_eq!(read(&worktree.path, "a.txt"), "a\n");
    assert_eq!(read(&worktree.path, "b/c.txt"), "c\n");
    assert!(
        !worktree.path.join("new").exists(),
        "folders the agent made are gone"
    );
    assert!(
        !worktree.path.join("target").exists(),
        "ignored build products are gone"
    );
    assert!(!worktree.path.join("b/trace.log").exists());
    assert!(worktree.path.join(".gitignore").exists());
    let mode = std::fs::metadata(worktree.path.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "the executable bit is back");
    let head = git(&worktree.path, &["rev-parse", "HEAD"]);
    assert_eq!(head.trim(), snapshot.commit.to_string());
    // The next agent's diff holds only its own change.
    write(&worktree.path, "b/c.txt", "next\n");
    let next = diff(&snapshot, &worktree).unwrap();
    assert_eq!(next.paths(), vec!["b/c.txt"]);
}
