//! The error type of the workspace module: every failure names the repository
//! or path it concerns, and [`WorkspaceError::hint`] says what to do.

use std::path::PathBuf;

/// Everything that can go wrong while snapshotting, checking out, diffing or
/// applying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkspaceError {
    /// The directory is not inside a git work tree.
    #[error("find a git repository at `{path}`")]
    NotARepository {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    /// The repository has no working tree (a bare repository).
    #[error("use the bare repository at `{path}`: agent tasks need a working tree")]
    BareRepository { path: PathBuf },
    /// A libgit2 operation failed; `action` says which one.
    #[error("{action} in `{repo}`")]
    Git {
        action: String,
        repo: PathBuf,
        #[source]
        source: git2::Error,
    },
    /// A file operation failed (the `fs_err` error names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The directory for a new worktree already holds files.
    #[error("create a worktree at `{path}`: the directory exists and is not empty")]
    WorktreeDirectoryExists { path: PathBuf },
    /// A worktree of that name is registered and its checkout exists.
    #[error("create the worktree `{name}`: a worktree of that name exists")]
    WorktreeNameTaken { name: String },
    /// A run id or branch name that git refuses as a reference name.
    #[error("use `{name}` as a git reference name")]
    InvalidRefName { name: String },
    /// A worktree name that cannot name a git worktree (empty, or with `/`).
    #[error("use `{name}` as a worktree name")]
    InvalidWorktreeName { name: String },
    /// A path in a patch that is not a plain repository-relative path (for
    /// example `../x`, an absolute path, a `.git` component or non-UTF-8).
    #[error("use `{path}` as a repository-relative path")]
    InvalidPath { path: String },
    /// A change that is not `Deleted` but carries no content.
    #[error("apply the change of `{path}`: the patch holds no content for it")]
    MissingContent { path: String },
    /// An `outputs` glob that globset cannot compile.
    #[error("compile the glob `{glob}`")]
    Glob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    /// Bytes that are not a patch written by [`Patch::to_bytes`](super::Patch::to_bytes).
    #[error("read a serialized patch: {reason}")]
    CorruptPatch { reason: &'static str },
    /// The patch conflicts with commits already on the target branch.
    #[error("commit on branch `{branch}`: the patch conflicts in {}", list(.paths))]
    BranchConflict { branch: String, paths: Vec<String> },
    /// The target branch is the one checked out in the user's working tree,
    /// so moving it would desynchronise their index and files.
    #[error("commit on branch `{branch}`: it is checked out in `{repo}`")]
    BranchCheckedOut { branch: String, repo: PathBuf },
}

impl WorkspaceError {
    /// What the user can do about the error, printed as `hint: ...`.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NotARepository { .. } => {
                Some("agent tasks need a git repository: run `git init`".to_owned())
            }
            Self::BareRepository { .. } => {
                Some("run ccflow in a clone with a working tree".to_owned())
            }
            Self::BranchCheckedOut { .. } => {
                Some("pick another branch, or check out a different branch first".to_owned())
            }
            Self::WorktreeDirectoryExists { .. } => Some(
                "a crashed run may have left it: remove the directory, or let the next run clean up"
                    .to_owned(),
            ),
            Self::CorruptPatch { .. } => {
                Some("the cache entry is damaged: rerun with `--no-cache`".to_owned())
            }
            _ => None,
        }
    }

    /// Wraps a libgit2 error with the action and the repository it concerns.
    pub(crate) fn git(
        action: impl Into<String>,
        repo: impl Into<PathBuf>,
    ) -> impl FnOnce(git2::Error) -> Self {
        let action = action.into();
        let repo = repo.into();
        move |source| Self::Git {
            action,
            repo,
            source,
        }
    }
}

/// Renders paths as a short backticked list for messages.
fn list(paths: &[String]) -> String {
    paths
        .iter()
        .map(|path| format!("`{path}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
