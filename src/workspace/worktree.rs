//! Checkouts of a snapshot for agents: linked git worktrees detached at the
//! snapshot commit (so `git status` and `git diff` work inside them), their
//! removal, and the cleanup of what crashed runs left behind.
//!
//! The worktrees are registered by writing git's linked-worktree layout
//! (`.git/worktrees/<name>/{gitdir,commondir,HEAD}` and a `.git` file in the
//! checkout, see gitrepository-layout(5)) rather than with libgit2's
//! `git_worktree_add`: that one can only start from a branch, and creating,
//! checking and deleting a temporary branch per worktree races when several
//! worktrees are made at once ("already checked out", reflog directories
//! removed under a sibling). Writing the files touches no ref at all, so
//! worktrees can be created from parallel threads or processes.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use git2::build::CheckoutBuilder;
use git2::Repository;

use super::remove::remove_trees;
use super::snapshot::{delete_snapshot_ref, open_repository, SNAPSHOT_REF_PREFIX};
use super::{Snapshot, WorkspaceError};

/// Prefix of the git worktree names ccflow registers; worktrees without it
/// belong to the user and are never touched.
const WORKTREE_NAME_PREFIX: &str = "ccflow-";
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

/// Replaces what git refuses in a worktree name.
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

/// The admin directory of worktree `name`.
fn admin_dir(repo: &Repository, name: &str) -> PathBuf {
    repo.commondir().join("worktrees").join(name)
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
    let (repo, _root) = open_repository(&snapshot.repo_root)?;

    // An empty directory (made by the caller) is fine; anything else may be
    // someone's files and is refused rather than overwritten.
    if dir.is_dir() && fs_err::read_dir(dir)?.next().is_none() {
        fs_err::remove_dir(dir)?;
    }
    if fs_err::symlink_metadata(dir).is_ok() {
        return Err(WorkspaceError::WorktreeDirectoryExists {
            path: dir.to_owned(),
        });
    }
    ignore_state_dir(dir)?;
    let admin = admin_dir(&repo, &git_name);
    fs_err::create_dir_all(admin.parent().unwrap_or(&admin))?;
    match fs_err::create_dir(&admin) {
        Ok(()) => {}
        // A leftover entry whose checkout is gone is replaced; a live one
        // means the name is taken.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            if checkout_of(&admin).is_some_and(|checkout| checkout.exists()) {
                return Err(WorkspaceError::WorktreeNameTaken { name: git_name });
            }
            fs_err::remove_dir_all(&admin)?;
            fs_err::create_dir(&admin)?;
        }
        Err(error) => return Err(error.into()),
    }

    let made = register_and_check_out(snapshot, &admin, dir);
    if let Err(error) = made {
        // Leave nothing half-made behind; what cannot be removed now,
        // `cleanup_stale` removes later.
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(&admin);
        return Err(error);
    }
    Ok(Worktree {
        path: dir.to_owned(),
        name: git_name,
    })
}

fn register_and_check_out(
    snapshot: &Snapshot,
    admin: &Path,
    dir: &Path,
) -> Result<(), WorkspaceError> {
    // `locked` keeps a concurrent `git worktree prune` off the entry while
    // it is incomplete, as `git worktree add` does.
    fs_err::write(admin.join("locked"), "initializing")?;
    fs_err::write(admin.join(RUN_MARKER_FILE), &snapshot.run_id)?;
    fs_err::create_dir_all(dir)?;
    let checkout_dir = fs_err::canonicalize(dir)?;
    let admin = fs_err::canonicalize(admin)?;
    let mut dot_git = b"gitdir: ".to_vec();
    dot_git.extend_from_slice(admin.as_os_str().as_bytes());
    dot_git.push(b'\n');
    fs_err::write(checkout_dir.join(".git"), dot_git)?;
    let mut gitdir = checkout_dir.join(".git").into_os_string().into_vec();
    gitdir.push(b'\n');
    fs_err::write(admin.join("gitdir"), gitdir)?;
    fs_err::write(admin.join("commondir"), "../..\n")?;
    fs_err::write(admin.join("HEAD"), format!("{}\n", snapshot.commit))?;

    let checkout = Repository::open(&checkout_dir)
        .map_err(WorkspaceError::git("open the new worktree", &checkout_dir))?;
    // The commit must be looked up through the worktree's own handle:
    // libgit2 refuses to check out an object of another repository object.
    let commit = checkout
        .find_commit(snapshot.commit)
        .map_err(WorkspaceError::git(
            "find the snapshot commit",
            &checkout_dir,
        ))?;
    // Writes the files and the worktree's index (with stat data, which makes
    // the later `diff` fast).
    checkout
        .checkout_tree(commit.as_object(), Some(CheckoutBuilder::new().force()))
        .map_err(WorkspaceError::git("check out the snapshot", &checkout_dir))?;
    fs_err::remove_file(admin.join("locked"))?;
    Ok(())
}

/// Makes sure a checkout under a `.ccflow/` state directory is invisible to
/// the user's `git status`: the state directory ignores itself with a
/// `.gitignore` holding `*` (written here when nothing else made it yet).
fn ignore_state_dir(dir: &Path) -> Result<(), WorkspaceError> {
    let Some(state_dir) = dir
        .ancestors()
        .find(|ancestor| ancestor.file_name() == Some(OsStr::new(super::STATE_DIR_NAME)))
    else {
        return Ok(());
    };
    let gitignore = state_dir.join(".gitignore");
    if fs_err::symlink_metadata(&gitignore).is_err() {
        fs_err::create_dir_all(state_dir)?;
        fs_err::write(&gitignore, "*\n")?;
    }
    Ok(())
}

/// The checkout directory an admin entry points at (from its `gitdir` file).
fn checkout_of(admin: &Path) -> Option<PathBuf> {
    let content = std::fs::read(admin.join("gitdir")).ok()?;
    let line = content.strip_suffix(b"\n").unwrap_or(&content);
    let dot_git = Path::new(OsStr::from_bytes(line));
    dot_git.parent().map(Path::to_owned)
}

/// Deletes a worktree's directory and its git admin entry.
pub fn remove_worktree(snapshot_repo: &Path, worktree: &Worktree) -> Result<(), WorkspaceError> {
    remove_worktrees(snapshot_repo, std::slice::from_ref(worktree))
}

/// Deletes worktrees' directories and git admin entries, the files of all
/// of them in one sweep from several threads.
pub fn remove_worktrees(
    snapshot_repo: &Path,
    worktrees: &[Worktree],
) -> Result<(), WorkspaceError> {
    let (repo, _root) = open_repository(snapshot_repo)?;
    let admins: Vec<PathBuf> = worktrees
        .iter()
        .map(|worktree| admin_dir(&repo, &worktree.name))
        .collect();
    let roots: Vec<&Path> = worktrees
        .iter()
        .map(|worktree| worktree.path.as_path())
        .chain(admins.iter().map(PathBuf::as_path))
        .collect();
    remove_trees(&roots)?;
    // The per-run folder goes with its last worktree; failing to remove a
    // non-empty folder is expected.
    for worktree in worktrees {
        if let Some(parent) = worktree.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
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
/// worktrees (checkout and git admin entry), folders under `worktrees_dir`
/// (one per run id) and snapshot refs. The user's own worktrees and refs are
/// never touched. Returns how many worktrees, folders and refs were removed.
pub fn cleanup_stale_with(
    repo_root: &Path,
    worktrees_dir: &Path,
    is_live: &dyn Fn(&str) -> bool,
) -> Result<usize, WorkspaceError> {
    let (repo, root) = open_repository(repo_root)?;
    let mut removed = 0;

    // Stale checkouts, their admin entries and the folders of dead runs are
    // collected first, then removed in one sweep (files from several
    // threads). Should it stop half-way, what is left is still stale for
    // the next cleanup: an entry of a dead run, a folder of a dead run.
    let mut checkouts = Vec::new();
    let mut admins = Vec::new();
    let admin_root = repo.commondir().join("worktrees");
    if admin_root.is_dir() {
        for entry in fs_err::read_dir(&admin_root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(WORKTREE_NAME_PREFIX) {
                continue;
            }
            let admin = entry.path();
            let checkout = checkout_of(&admin);
            let run = std::fs::read_to_string(admin.join(RUN_MARKER_FILE))
                .ok()
                .or_else(|| {
                    checkout
                        .as_deref()
                        .and_then(|path| run_of_path(worktrees_dir, path))
                        .map(str::to_owned)
                });
            let stale = match run {
                Some(run) => !is_live(&run),
                // Unknown run (a crash before the marker was written): only
                // an entry whose checkout is gone is surely dead.
                None => !checkout.as_deref().is_some_and(Path::exists),
            };
            if stale {
                checkouts.extend(checkout.filter(|path| path.exists()));
                admins.push(admin);
            }
        }
    }
    let mut folders = Vec::new();
    if worktrees_dir.is_dir() {
        for entry in fs_err::read_dir(worktrees_dir)? {
            let entry = entry?;
            let run = entry.file_name();
            let Some(run) = run.to_str() else { continue };
            if !is_live(run) {
                folders.push(entry.path());
            }
        }
    }
    // A checkout inside a folder being removed goes with the folder.
    checkouts.retain(|checkout| !folders.iter().any(|folder| checkout.starts_with(folder)));
    let roots: Vec<&Path> = checkouts
        .iter()
        .chain(&folders)
        .chain(&admins)
        .map(PathBuf::as_path)
        .collect();
    remove_trees(&roots)?;
    removed += admins.len() + folders.len();

    let references = repo
        .references_glob(&format!("{SNAPSHOT_REF_PREFIX}*"))
        .map_err(WorkspaceError::git("list ccflow refs", &root))?;
    let stale_runs: Vec<String> = references
        .flatten()
        .filter_map(|reference| {
            let run = reference.name()?.strip_prefix(SNAPSHOT_REF_PREFIX)?;
            (!is_live(run)).then(|| run.to_owned())
        })
        .collect();
    for run in stale_runs {
        let deleted = delete_snapshot_ref(&repo, &run).map_err(WorkspaceError::git(
            format!("delete the ref `{SNAPSHOT_REF_PREFIX}{run}`"),
            &root,
        ))?;
        removed += usize::from(deleted);
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
