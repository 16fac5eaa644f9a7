//! Snapshots of the user's working tree: tracked plus untracked-but-not-ignored
//! files exactly as they are on disk, recorded as a git commit that nothing
//! but a private ref points at. HEAD, the index file and the user's branches
//! are never modified.

use std::path::{Path, PathBuf};

use git2::{IndexAddOption, Oid, Repository, Signature};

use super::{is_state_path, WorkspaceError};

/// Prefix of the refs that keep snapshot commits reachable while a run is
/// alive, so that `git gc` cannot prune them under a running agent.
pub(crate) const SNAPSHOT_REF_PREFIX: &str = "refs/ccflow/snapshots/";

/// A recorded state of the user's working tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The git work tree root (where patches are applied).
    pub repo_root: PathBuf,
    /// The tree of the working files.
    pub tree: git2::Oid,
    /// A commit of `tree` (parent: HEAD, if any) that worktrees check out.
    pub commit: git2::Oid,
    /// The run the snapshot belongs to (names its ref and its worktrees).
    pub run_id: String,
}

impl Snapshot {
    /// The ref that keeps this snapshot's commit alive.
    pub fn ref_name(&self) -> String {
        snapshot_ref_name(&self.run_id)
    }
}

pub(crate) fn snapshot_ref_name(run_id: &str) -> String {
    format!("{SNAPSHOT_REF_PREFIX}{run_id}")
}

/// Opens the repository holding `path`, with a clear error and hint when
/// there is none; returns it with its work tree root.
pub(crate) fn open_repository(path: &Path) -> Result<(Repository, PathBuf), WorkspaceError> {
    let repo = Repository::discover(path).map_err(|source| WorkspaceError::NotARepository {
        path: path.to_owned(),
        source,
    })?;
    let root =
        // Rebuilt from components to drop libgit2's trailing slash.
        repo.workdir()
            .map(|workdir| workdir.components().collect::<PathBuf>())
            .ok_or_else(|| WorkspaceError::BareRepository {
                path: path.to_owned(),
            })?;
    Ok((repo, root))
}

/// A fixed identity for commits ccflow makes on its own behalf, so that a
/// snapshot works in repositories (and CI jobs) with no `user.name`.
pub(crate) fn ccflow_signature() -> Result<Signature<'static>, git2::Error> {
    Signature::now("ccflow", "ccflow@localhost")
}

/// Records the working tree of the repository at `repo_root` (tracked files,
/// modified or not, plus untracked files that are not ignored, never anything
/// under `.ccflow/`) as a commit kept alive by `refs/ccflow/snapshots/<run_id>`.
///
/// Works in a repository without commits (the snapshot commit then has no
/// parent). The user's index is read to reuse its stat cache, so an unchanged
/// file is not re-hashed, but it is never written back.
pub fn snapshot(repo_root: &Path, run_id: &str) -> Result<Snapshot, WorkspaceError> {
    let (repo, root) = open_repository(repo_root)?;
    let ref_name = snapshot_ref_name(run_id);
    if !git2::Reference::is_valid_name(&ref_name) {
        return Err(WorkspaceError::InvalidRefName { name: ref_name });
    }

    // A working copy of the user's index: libgit2 hands out the repository's
    // index object, and changes to it stay in memory unless `write` is called,
    // which this function never does.
    let mut index = repo
        .index()
        .map_err(WorkspaceError::git("read the index", &root))?;
    let mut skip_state = |path: &Path, _spec: &[u8]| -> i32 { i32::from(is_state_path(path)) };
    // The pathspec must not be empty: libgit2 then reports a null matched
    // pathspec to the callback, which git2 0.20 dereferences (a segfault).
    let everything = ["*"];
    // `add_all` adds new and modified files (honouring .gitignore, while files
    // already tracked stay in even if ignored); `update_all` drops entries
    // whose files were deleted.
    index
        .add_all(everything, IndexAddOption::DEFAULT, Some(&mut skip_state))
        .map_err(WorkspaceError::git(
            "add the working files to the snapshot",
            &root,
        ))?;
    index
        .update_all(everything, Some(&mut skip_state))
        .map_err(WorkspaceError::git(
            "remove deleted files from the snapshot",
            &root,
        ))?;
    // Entries tracked under a state directory (a user committed one by
    // mistake) are dropped too: worktrees must not see ccflow's state.
    let tracked_state: Vec<PathBuf> = index
        .iter()
        .filter_map(|entry| {
            let path = PathBuf::from(String::from_utf8_lossy(&entry.path).into_owned());
            is_state_path(&path).then_some(path)
        })
        .collect();
    for path in tracked_state {
        index.remove_path(&path).map_err(WorkspaceError::git(
            "drop `.ccflow/` from the snapshot",
            &root,
        ))?;
    }
    let tree_id = index
        .write_tree_to(&repo)
        .map_err(WorkspaceError::git("write the snapshot tree", &root))?;

    let tree = repo
        .find_tree(tree_id)
        .map_err(WorkspaceError::git("read the snapshot tree", &root))?;
    // HEAD is the parent when there is one, so `git log` in a worktree shows
    // where the snapshot came from; an unborn HEAD gives a root commit.
    let parent = match repo.head() {
        Ok(head) => head.peel_to_commit().ok(),
        Err(_) => None,
    };
    let signature = ccflow_signature().map_err(WorkspaceError::git("make a signature", &root))?;
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    let commit = repo
        .commit(
            None,
            &signature,
            &signature,
            &format!("ccflow snapshot for run {run_id}"),
            &tree,
            &parents,
        )
        .map_err(WorkspaceError::git("commit the snapshot", &root))?;
    repo.reference(&ref_name, commit, true, "ccflow: snapshot")
        .map_err(WorkspaceError::git(
            format!("create the ref `{ref_name}`"),
            &root,
        ))?;

    Ok(Snapshot {
        repo_root: root,
        tree: tree_id,
        commit,
        run_id: run_id.to_owned(),
    })
}

/// Ends a snapshot's life at the end of its run: deletes its ref, so that
/// `git gc` may collect the commit once no worktree uses it. Idempotent.
pub fn release_snapshot(snapshot: &Snapshot) -> Result<(), WorkspaceError> {
    let (repo, root) = open_repository(&snapshot.repo_root)?;
    delete_snapshot_ref(&repo, &snapshot.run_id)
        .map(|_| ())
        .map_err(WorkspaceError::git(
            format!("delete the ref `{}`", snapshot.ref_name()),
            &root,
        ))
}

/// Deletes the snapshot ref of a run (the commit becomes unreachable and is
/// eventually collected by git). A missing ref is not an error.
pub(crate) fn delete_snapshot_ref(repo: &Repository, run_id: &str) -> Result<bool, git2::Error> {
    match repo.find_reference(&snapshot_ref_name(run_id)) {
        Ok(mut reference) => reference.delete().map(|()| true),
        Err(error) if error.code() == git2::ErrorCode::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// Reads a blob, `None` when the object database lacks it (a patch from the
/// cache of another clone).
pub(crate) fn find_blob_content(repo: &Repository, id: Oid) -> Option<Vec<u8>> {
    repo.find_blob(id).ok().map(|blob| blob.content().to_vec())
}
