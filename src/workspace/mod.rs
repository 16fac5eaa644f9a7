//! Agent isolation: every agent task instance works in its own checkout of a
//! snapshot of the user's working tree, and its result comes back as a diff
//! that is applied to the user's working tree with a three-way merge.
//!
//! The pipeline, one file per step:
//! - [`snapshot`](snapshot()) records tracked + untracked (not ignored) files as a git
//!   commit under `refs/ccflow/snapshots/<run_id>`, never touching HEAD or the index;
//! - [`create_worktree`] checks that commit out as a detached linked worktree;
//! - [`diff`] turns the worktree's files into a [`Patch`] against the snapshot;
//! - [`apply`] merges a patch into the working tree (all-or-nothing per patch),
//!   [`commit_to_branch`] commits it on a branch instead;
//! - [`remove_worktree`] (or [`remove_worktrees`], several at once), [`release_snapshot`] and [`cleanup_stale`] remove
//!   what runs leave behind.
//!
//! This module knows nothing about workflows, tasks or the cache: it takes
//! paths, run ids and globs, and the caller decides when to call what. Calls
//! that write to the same working tree or branch must be serialised by the
//! caller (the scheduler applies patches one at a time, in completion order).

mod apply;
mod error;
mod patch;
mod remove;
mod snapshot;
mod worktree;

#[cfg(test)]
mod tests;

pub use apply::{apply, commit_to_branch, reset_worktree, ApplyOutcome};
pub use error::WorkspaceError;
pub use patch::{diff, paths_outside, ChangeKind, FileChange, Patch};
pub use snapshot::{release_snapshot, snapshot, Snapshot};
pub use worktree::{
    cleanup_stale, cleanup_stale_with, create_worktree, remove_worktree, remove_worktrees, Worktree,
};

/// Path components that never take part in a snapshot, a diff or an apply:
/// ccflow's own state directory (cache, run records, the worktrees themselves).
pub(crate) const STATE_DIR_NAME: &str = ".ccflow";

/// Whether a repository-relative path lies inside a `.ccflow/` directory at
/// any depth (the state directory sits at the workflow root, which may be a
/// subdirectory of the git work tree).
pub(crate) fn is_state_path(path: &std::path::Path) -> bool {
    path.components()
        .any(|component| component.as_os_str() == STATE_DIR_NAME)
}
