//! Checkouts of a snapshot for agents: linked git worktrees detached at the
//! snapshot commit (so `git status` and `git diff` work inside them), their
//! removal, and the cleanup of what crashed runs left behind.

use std::path::{Path, PathBuf};

use git2::{BranchType, ErrorCode, Repository, WorktreeAddOptions, WorktreePruneOptions};

use super::snapshot::{delete_snapshot_ref, open_repository, SNAPSHOT_REF_PREFIX};
use super::{Snapshot, WorkspaceError};

/// Prefix of the git worktree names ccflow registers; worktrees without it
/// belong to the user and are never touched.
const WORKTREE_NAME_PREFIX: &str = "ccflow-";
/// Branches that exist only while a worktree is being created (libgit2 can
/// only add a worktree on a branch; the worktree is detached right after).
const TEMP_BRANCH_PREFIX: &str = "ccflow-tmp/";
/// File in the worktree's git admin directory recording its run id, read by
/// [`cleanup_stale`].
const RUN_MARKER_FILE: &str = "ccflow-run";

/// A checkout of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worktree {
    /// The checkout directory.
    pub path: PathBuf,
    /// The git worktree name (its admin directory under `.git/worktrees/`).
    pub name: String,
}

/// Replaces what git refuses in a worktree or ref component.
fn sanitize(part: &str) -> String {
    part.chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || matches!(character, '-' | '_' | '.') {
                character
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

/// Checks the snapshot out at `dir` (which must not exist, or be empty) as a
/// linked worktree detached at the snapshot commit. `name` tells the
/// worktrees of one run apart (for example the instance number).
pub fn create_worktree(
    snapshot: &Snapshot,
    dir: &Path,
    name: &str,
) -> Result<Worktree, WorkspaceError> {
    let (run, instance) = (sanitize(&snapshot.run_id), sanitize(name));
    if instance.is_empty() || run.is_empty() {
        return Err(WorkspaceError::InvalidWorktreeName {
            name: name.to_owned(),
        });
    }
    let git_name = format!("{WORKTREE_NAME_PREFIX}{run}-{instance}");
    let repo =
        Repository::open(&snapshot.repo_root).map_err(|source| WorkspaceError::NotARepository {
            path: snapshot.repo_root.clone(),
            source,
        })?;
    let root = snapshot.repo_root.as_path();

    // libgit2 refuses an existing directory; an empty one (made by the
    // caller) is fine to replace.
    if dir.is_dir() && fs_err::read_dir(dir)?.next().is_none() {
        fs_err::remove_dir(dir)?;
    }
    if fs_err::symlink_metadata(dir).is_ok() {
        return Err(WorkspaceError::WorktreeDirectoryExists {
            path: dir.to_owned(),
        });
    }
    if let Some(parent) = dir.parent() {
        fs_err::create_dir_all(parent)?;
    }
    // A stale admin entry of the same name (its directory gone) would make
    // the add fail; prune it first.
    if let Ok(stale) = repo.find_worktree(&git_name) {
        if stale.validate().is_err() {
            prune(&stale).map_err(WorkspaceError::git(
                format!("prune the stale worktree `{git_name}`"),
                root,
            ))?;
        }
    }

    let commit = repo
        .find_commit(snapshot.commit)
        .map_err(WorkspaceError::git("find the snapshot commit", root))?;
    let temp_branch_name = format!("{TEMP_BRANCH_PREFIX}{run}/{instance}");
    let temp_branch =
        repo.branch(&temp_branch_name, &commit, true)
            .map_err(WorkspaceError::git(
                format!("create the branch `{temp_branch_name}`"),
                root,
            ))?;
    let mut options = WorktreeAddOptions::new();
    options.reference(Some(temp_branch.get()));
    let added = repo.worktree(&git_name, dir, Some(&options));
    let result = added
        .map_err(WorkspaceError::git(
            format!("add the worktree `{}`", dir.display()),
            root,
        ))
        .and_then(|_| {
            fs_err::write(
                repo.commondir()
                    .join("worktrees")
                    .join(&git_name)
                    .join(RUN_MARKER_FILE),
                &snapshot.run_id,
            )?;
            let checkout =
                Repository::open(dir).map_err(WorkspaceError::git("open the new worktree", dir))?;
            checkout
                .set_head_detached(snapshot.commit)
                .map_err(WorkspaceError::git("detach the worktree's HEAD", dir))
        });
    // The temporary branch goes whatever happened; once HEAD is detached it
    // is no longer checked out anywhere.
    let deleted = repo
        .find_branch(&temp_branch_name, BranchType::Local)
        .and_then(|mut branch| branch.delete());
    if let Err(error) = result {
        // Leave nothing half-made behind; what cannot be removed now,
        // `cleanup_stale` removes later.
        if let Ok(partial) = repo.find_worktree(&git_name) {
            let _ = prune(&partial);
        }
        let _ = std::fs::remove_dir_all(dir);
        return Err(error);
    }
    deleted.map_err(WorkspaceError::git(
        format!("delete the branch `{temp_branch_name}`"),
        root,
    ))?;
    Ok(Worktree {
        path: dir.to_owned(),
        name: git_name,
    })
}

fn prune(worktree: &git2::Worktree) -> Result<(), git2::Error> {
    worktree.prune(Some(
        WorktreePruneOptions::new()
            .valid(true)
            .locked(false)
            .working_tree(true),
    ))
}

/// Deletes a worktree's directory and its git admin entry.
pub fn remove_worktree(snapshot_repo: &Path, worktree: &Worktree) -> Result<(), WorkspaceError> {
    let (repo, root) = open_repository(snapshot_repo)?;
    if worktree.path.exists() {
        fs_err::remove_dir_all(&worktree.path)?;
    }
    match repo.find_worktree(&worktree.name) {
        Ok(registered) => prune(&registered).map_err(WorkspaceError::git(
            format!("prune the worktree `{}`", worktree.name),
            &root,
        ))?,
        Err(error) if error.code() == ErrorCode::NotFound => {}
        Err(error) => {
            return Err(WorkspaceError::git(
                format!("find the worktree `{}`", worktree.name),
                &root,
            )(error))
        }
    }
    // The per-run folder goes with its last worktree; failing to remove a
    // non-empty folder is expected.
    if let Some(parent) = worktree.path.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

/// Removes the leftovers of runs other than `keep_run`: see
/// [`cleanup_stale_with`].
pub fn cleanup_stale(
    repo_root: &Path,
    worktrees_dir: &Path,
    keep_run: Option<&str>,
) -> Result<usize, WorkspaceError> {
    cleanup_stale_with(repo_root, worktrees_dir, &|run| Some(run) == keep_run)
}

/// Removes the leftovers of runs for which `is_live` is false: ccflow
/// worktrees (directory and git admin entry), folders under `worktrees_dir`
/// (one per run id), snapshot refs and temporary branches. The user's own
/// worktrees and refs are never touched. Returns how many worktrees, folders
/// and refs were removed.
pub fn cleanup_stale_with(
    repo_root: &Path,
    worktrees_dir: &Path,
    is_live: &dyn Fn(&str) -> bool,
) -> Result<usize, WorkspaceError> {
    let (repo, root) = open_repository(repo_root)?;
    let mut removed = 0;

    let names = repo
        .worktrees()
        .map_err(WorkspaceError::git("list worktrees", &root))?;
    for name in names.iter().flatten() {
        if !name.starts_with(WORKTREE_NAME_PREFIX) {
            continue;
        }
        let Ok(worktree) = repo.find_worktree(name) else {
            continue;
        };
        let marker = repo
            .commondir()
            .join("worktrees")
            .join(name)
            .join(RUN_MARKER_FILE);
        let run = std::fs::read_to_string(&marker)
            .ok()
            .or_else(|| run_of_path(worktrees_dir, worktree.path()).map(str::to_owned));
        let stale = match run {
            Some(run) => !is_live(&run),
            // Unknown run (a crash between `add` and the marker): only an
            // entry whose checkout is gone is surely dead.
            None => worktree.validate().is_err(),
        };
        if stale {
            if worktree.path().exists() {
                fs_err::remove_dir_all(worktree.path())?;
            }
            prune(&worktree).map_err(WorkspaceError::git(
                format!("prune the worktree `{name}`"),
                &root,
            ))?;
            removed += 1;
        }
    }

    if worktrees_dir.is_dir() {
        for entry in fs_err::read_dir(worktrees_dir)? {
            let entry = entry?;
            let run = entry.file_name();
            let Some(run) = run.to_str() else { continue };
            if !is_live(run) {
                fs_err::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
    }

    let mut stale_refs = Vec::new();
    for pattern in [
        format!("{SNAPSHOT_REF_PREFIX}*"),
        format!("refs/heads/{TEMP_BRANCH_PREFIX}*"),
    ] {
        let references = repo
            .references_glob(&pattern)
            .map_err(WorkspaceError::git("list ccflow refs", &root))?;
        for reference in references.flatten() {
            let Some(name) = reference.name() else {
                continue;
            };
            let run = name
                .strip_prefix(SNAPSHOT_REF_PREFIX)
                .or_else(|| {
                    name.strip_prefix("refs/heads/")
                        .and_then(|branch| branch.strip_prefix(TEMP_BRANCH_PREFIX))
                        .and_then(|rest| rest.split('/').next())
                })
                .unwrap_or_default();
            if !is_live(run) {
                stale_refs.push((name.to_owned(), run.to_owned()));
            }
        }
    }
    for (name, run) in stale_refs {
        let deleted = if name.starts_with(SNAPSHOT_REF_PREFIX) {
            delete_snapshot_ref(&repo, &run)
        } else {
            repo.find_reference(&name)
                .and_then(|mut reference| reference.delete())
                .map(|()| true)
        };
        if deleted.map_err(WorkspaceError::git(
            format!("delete the ref `{name}`"),
            &root,
        ))? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The run id of a worktree checked out at `worktrees_dir/<run>/...`.
fn run_of_path<'path>(worktrees_dir: &Path, path: &'path Path) -> Option<&'path str> {
    path.strip_prefix(worktrees_dir)
        .ok()?
        .components()
        .next()?
        .as_os_str()
        .to_str()
}
