//! Bringing a patch back: a per-file three-way merge of base (the snapshot
//! blob), ours (the user's file now, or the branch tip's) and theirs (the
//! agent's content), all-or-nothing per patch. The user's uncommitted work is
//! the "ours" side, so it is merged, never overwritten, and only the files of
//! the patch are ever written.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::{IndexEntry, IndexTime, ObjectType, Oid, Repository};

use super::patch::{read_disk_file, validate_path, MODE_EXECUTABLE, MODE_SYMLINK};
use super::snapshot::{ccflow_signature, find_blob_content, open_repository};
use super::{ChangeKind, FileChange, Patch, Snapshot, WorkspaceError};

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Every file of the patch now holds its merged result.
    Applied {
        /// The files written or removed.
        paths: Vec<String>,
        /// The files that already held the result (nothing written).
        unchanged: Vec<String>,
    },
    /// At least one file conflicts: no file of the patch was touched.
    Conflict {
        /// The conflicting files.
        paths: Vec<String>,
        /// The patch's diff, to keep under the run record.
        patch_text: String,
    },
}

/// One side of a merge: a file's bytes and git mode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Side {
    content: Vec<u8>,
    mode: u32,
}

/// The merge decision for one file.
enum Resolution {
    Unchanged,
    Write(Side),
    Remove,
    Conflict,
}

/// Merges one file. `ours` is the current state (`None`: no file).
fn resolve(
    repo: &Repository,
    change: &FileChange,
    ours: Option<Side>,
) -> Result<Resolution, WorkspaceError> {
    let theirs = match change.kind {
        ChangeKind::Deleted => None,
        _ => Some(Side {
            content: change
                .new_content
                .clone()
                .ok_or_else(|| WorkspaceError::MissingContent {
                    path: change.path.clone(),
                })?,
            mode: change.new_mode.unwrap_or(super::patch::MODE_FILE),
        }),
    };
    if ours == theirs {
        return Ok(Resolution::Unchanged);
    }
    // Ours untouched since the snapshot: theirs wins. Comparing hashes works
    // even when the base blob is not in this clone (a patch from the cache).
    let ours_is_base = match (&ours, change.old_blob) {
        (None, None) => true,
        (Some(side), Some(base_id)) => {
            Oid::hash_object(ObjectType::Blob, &side.content).is_ok_and(|id| id == base_id)
                && change.old_mode.is_none_or(|mode| mode == side.mode)
        }
        _ => false,
    };
    if ours_is_base {
        return Ok(match theirs {
            Some(side) => Resolution::Write(side),
            None => Resolution::Remove,
        });
    }
    // Both sides changed the file: only a content-and-mode merge of two
    // surviving files can succeed; add/add, modify/delete and delete/modify
    // conflict, as in git.
    let (Some(ours), Some(theirs), Some(base_id)) = (ours, theirs, change.old_blob) else {
        return Ok(Resolution::Conflict);
    };
    let Some(base_content) = find_blob_content(repo, base_id) else {
        return Ok(Resolution::Conflict);
    };
    let base = Side {
        content: base_content,
        mode: change.old_mode.unwrap_or(ours.mode),
    };
    let Some(mode) = merge_value(base.mode, ours.mode, theirs.mode) else {
        return Ok(Resolution::Conflict);
    };
    let content = if let Some(content) = merge_value(&base.content, &ours.content, &theirs.content)
    {
        content.clone()
    } else if [base.mode, ours.mode, theirs.mode].contains(&MODE_SYMLINK) {
        return Ok(Resolution::Conflict);
    } else {
        match merge_text(repo, &change.path, &base, &ours, &theirs)? {
            Some(content) => content,
            None => return Ok(Resolution::Conflict),
        }
    };
    let merged = Side { content, mode };
    Ok(if merged == ours {
        Resolution::Unchanged
    } else {
        Resolution::Write(merged)
    })
}

/// The trivial three-way rule: the side that changed wins; `None` when both
/// changed differently.
fn merge_value<T: PartialEq>(base: T, ours: T, theirs: T) -> Option<T> {
    if ours == base || ours == theirs {
        Some(theirs)
    } else if theirs == base {
        Some(ours)
    } else {
        None
    }
}

/// A line-based merge with libgit2's `git_merge_file` (via the index-entry
/// form, the one git2 0.20 exposes). Ours and theirs are written to an
/// in-memory object database so the user's `.git` gains no objects.
fn merge_text(
    repo: &Repository,
    path: &str,
    base: &Side,
    ours: &Side,
    theirs: &Side,
) -> Result<Option<Vec<u8>>, WorkspaceError> {
    let root = repo.path().to_owned();
    // A private handle on the repository: the in-memory backend stays
    // attached to the object database it is added to, and must not swallow
    // the writes of the caller's handle (commits made afterwards would
    // otherwise exist only in memory).
    let repo =
        Repository::open(&root).map_err(WorkspaceError::git("open the repository", &root))?;
    let odb = repo
        .odb()
        .map_err(WorkspaceError::git("open the object database", &root))?;
    // Highest priority, so blob writes below land in memory.
    let _mempack = odb
        .add_new_mempack_backend(1000)
        .map_err(WorkspaceError::git("add an in-memory object store", &root))?;
    let entry = |side: &Side| -> Result<IndexEntry, WorkspaceError> {
        let id = odb
            .write(ObjectType::Blob, &side.content)
            .map_err(WorkspaceError::git("hash a file to merge", &root))?;
        Ok(IndexEntry {
            ctime: IndexTime::new(0, 0),
            mtime: IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: side.mode,
            uid: 0,
            gid: 0,
            file_size: u32::try_from(side.content.len()).unwrap_or(u32::MAX),
            id,
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        })
    };
    let (base_entry, ours_entry, theirs_entry) = (entry(base)?, entry(ours)?, entry(theirs)?);
    let result = repo
        .merge_file_from_index(&base_entry, &ours_entry, &theirs_entry, None)
        .map_err(WorkspaceError::git(format!("merge `{path}`"), &root))?;
    Ok(result.is_automergeable().then(|| result.content().to_vec()))
}

/// Applies `patch` onto the working tree of the snapshot's repository.
///
/// Per file: unchanged since the snapshot takes the agent's version, already
/// equal is a no-op, otherwise a three-way merge. A conflict in any file
/// leaves every file of the patch untouched. Writes are atomic per file
/// (temporary file + rename, permission bits kept); deletions also remove
/// directories left empty. Never touches the index, HEAD or any file outside
/// the patch.
pub fn apply(snapshot: &Snapshot, patch: &Patch) -> Result<ApplyOutcome, WorkspaceError> {
    let (repo, root) = open_repository(&snapshot.repo_root)?;
    let mut plan = Vec::with_capacity(patch.files.len());
    let mut conflicts = Vec::new();
    // A file the patch deletes may make room for a directory of the same
    // name, and the reverse (removals run before writes); should the removal
    // itself conflict, the whole patch does anyway.
    let deleted: BTreeSet<&str> = patch
        .files
        .iter()
        .filter(|change| change.kind == ChangeKind::Deleted)
        .map(|change| change.path.as_str())
        .collect();
    for change in &patch.files {
        validate_path(&change.path)?;
        let target = root.join(&change.path);
        let directory_in_the_way = target.is_dir()
            && !target.is_symlink()
            && !(change.kind != ChangeKind::Deleted
                && only_deleted_files(&root, &target, &deleted));
        if blocked_by_non_directory(&root, &change.path, &deleted) || directory_in_the_way {
            conflicts.push(change.path.clone());
            continue;
        }
        let ours = read_disk_file(&target)?.map(|(content, mode)| Side { content, mode });
        match resolve(&repo, change, ours)? {
            Resolution::Conflict => conflicts.push(change.path.clone()),
            resolution => plan.push((change.path.clone(), target, resolution)),
        }
    }
    if !conflicts.is_empty() {
        return Ok(ApplyOutcome::Conflict {
            paths: conflicts,
            patch_text: patch.text.clone(),
        });
    }

    let (mut paths, mut unchanged) = (Vec::new(), Vec::new());
    // Removals first, so that a file replaced by a directory of the same
    // name (or the reverse) has room.
    for (path, target, resolution) in &plan {
        if matches!(resolution, Resolution::Remove) {
            fs_err::remove_file(target)?;
            remove_empty_parents(&root, target);
            paths.push(path.clone());
        }
    }
    for (path, target, resolution) in plan {
        match resolution {
            Resolution::Write(side) => {
                write_atomically(&target, &side)?;
                paths.push(path);
            }
            Resolution::Unchanged => unchanged.push(path),
            Resolution::Remove | Resolution::Conflict => {}
        }
    }
    paths.sort();
    Ok(ApplyOutcome::Applied { paths, unchanged })
}

/// Whether a parent of `path` exists as something other than a real
/// directory (a file, or a symlink that could lead outside the repository)
/// that the patch does not delete.
fn blocked_by_non_directory(root: &Path, path: &str, deleted: &BTreeSet<&str>) -> bool {
    let mut current = root.to_path_buf();
    let mut prefix = String::new();
    let mut components = path.split('/').peekable();
    while let Some(component) = components.next() {
        if components.peek().is_none() {
            break;
        }
        current.push(component);
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(component);
        match std::fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => return !deleted.contains(prefix.as_str()),
            Err(_) => return false,
        }
    }
    false
}

/// Whether every file below `directory` is deleted by the patch, so that a
/// file may take the directory's place.
fn only_deleted_files(root: &Path, directory: &Path, deleted: &BTreeSet<&str>) -> bool {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return false;
    };
    entries.into_iter().all(|entry| {
        let Ok(entry) = entry else { return false };
        let path = entry.path();
        match entry.file_type() {
            Ok(file_type) if file_type.is_dir() => only_deleted_files(root, &path, deleted),
            Ok(_) => path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .is_some_and(|relative| deleted.contains(relative)),
            Err(_) => false,
        }
    })
}

/// Removes the directories that a deletion left empty, up to (not including)
/// the root, as git does.
fn remove_empty_parents(root: &Path, file: &Path) {
    let mut directory = file.parent();
    while let Some(current) = directory {
        if current == root || !current.starts_with(root) || std::fs::remove_dir(current).is_err() {
            break;
        }
        directory = current.parent();
    }
}

/// Writes a file (or symlink) through a temporary sibling and a rename, so a
/// reader or a crash never sees a half-written file. A regular file keeps the
/// permission bits of the file it replaces, with the executable bits set or
/// cleared as the mode says.
fn write_atomically(target: &Path, side: &Side) -> Result<(), WorkspaceError> {
    let parent = target.parent().unwrap_or(Path::new("."));
    fs_err::create_dir_all(parent)?;
    let file_name = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary: PathBuf = parent.join(format!(
        ".{file_name}.ccflow-{}-{:x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let written = if side.mode == MODE_SYMLINK {
        use std::os::unix::ffi::OsStrExt;
        let link = std::ffi::OsStr::from_bytes(&side.content);
        fs_err::os::unix::fs::symlink(link, &temporary).map_err(WorkspaceError::from)
    } else {
        let previous = std::fs::symlink_metadata(target)
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map(|metadata| metadata.permissions().mode() & 0o7777);
        write_file(&temporary, side, previous)
    };
    let renamed =
        written.and_then(|()| fs_err::rename(&temporary, target).map_err(WorkspaceError::from));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    renamed
}

fn write_file(temporary: &Path, side: &Side, previous: Option<u32>) -> Result<(), WorkspaceError> {
    let mut file = fs_err::File::create(temporary)?;
    file.write_all(&side.content)?;
    let base = match previous {
        Some(mode) => mode,
        None => file.metadata()?.permissions().mode() & 0o7777,
    };
    // Executable bits follow the read bits, as git does on checkout.
    let mode = if side.mode == MODE_EXECUTABLE {
        base | ((base & 0o444) >> 2)
    } else {
        base & !0o111
    };
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Commits `patch` on branch `branch` (created at the snapshot commit when
/// missing), merging three-way with what earlier commits on the branch did to
/// the same files, and returns the branch's new tip. A patch that changes
/// nothing on the branch makes no commit (the tip is returned as is). Never
/// touches the working tree, the index or HEAD.
pub fn commit_to_branch(
    snapshot: &Snapshot,
    branch: &str,
    patch: &Patch,
    message: &str,
) -> Result<git2::Oid, WorkspaceError> {
    let (repo, root) = open_repository(&snapshot.repo_root)?;
    let ref_name = format!("refs/heads/{branch}");
    if !git2::Reference::is_valid_name(&ref_name) {
        return Err(WorkspaceError::InvalidRefName { name: ref_name });
    }
    if let Ok(head) = repo.find_reference("HEAD") {
        if head.symbolic_target() == Some(ref_name.as_str()) {
            return Err(WorkspaceError::BranchCheckedOut {
                branch: branch.to_owned(),
                repo: root,
            });
        }
    }
    let existing = match repo.find_reference(&ref_name) {
        Ok(reference) => Some(reference.peel_to_commit().map_err(WorkspaceError::git(
            format!("read the branch `{branch}`"),
            &root,
        ))?),
        Err(error) if error.code() == git2::ErrorCode::NotFound => None,
        Err(error) => {
            return Err(WorkspaceError::git(
                format!("read the branch `{branch}`"),
                &root,
            )(error))
        }
    };
    let parent = match existing.clone() {
        Some(commit) => commit,
        None => repo
            .find_commit(snapshot.commit)
            .map_err(WorkspaceError::git("find the snapshot commit", &root))?,
    };
    let parent_tree = parent
        .tree()
        .map_err(WorkspaceError::git("read the branch tree", &root))?;

    let mut index = git2::Index::new().map_err(WorkspaceError::git("make an index", &root))?;
    index
        .read_tree(&parent_tree)
        .map_err(WorkspaceError::git("read the branch tree", &root))?;
    let mut conflicts = Vec::new();
    for change in &patch.files {
        validate_path(&change.path)?;
        let ours = match parent_tree.get_path(Path::new(&change.path)) {
            Ok(entry) if entry.kind() == Some(ObjectType::Blob) => {
                let blob = repo
                    .find_blob(entry.id())
                    .map_err(WorkspaceError::git("read a branch file", &root))?;
                Some(Side {
                    content: blob.content().to_vec(),
                    mode: u32::try_from(entry.filemode()).unwrap_or(super::patch::MODE_FILE),
                })
            }
            Ok(_) => {
                conflicts.push(change.path.clone());
                continue;
            }
            Err(_) => None,
        };
        match resolve(&repo, change, ours)? {
            Resolution::Conflict => conflicts.push(change.path.clone()),
            Resolution::Unchanged => {}
            Resolution::Remove => index
                .remove_path(Path::new(&change.path))
                .map_err(WorkspaceError::git("remove a file from the commit", &root))?,
            Resolution::Write(side) => {
                let id = repo
                    .blob(&side.content)
                    .map_err(WorkspaceError::git("write a blob", &root))?;
                index
                    .add(&IndexEntry {
                        ctime: IndexTime::new(0, 0),
                        mtime: IndexTime::new(0, 0),
                        dev: 0,
                        ino: 0,
                        mode: side.mode,
                        uid: 0,
                        gid: 0,
                        file_size: u32::try_from(side.content.len()).unwrap_or(u32::MAX),
                        id,
                        flags: 0,
                        flags_extended: 0,
                        path: change.path.as_bytes().to_vec(),
                    })
                    .map_err(WorkspaceError::git(
                        format!("add `{}` to the commit", change.path),
                        &root,
                    ))?;
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(WorkspaceError::BranchConflict {
            branch: branch.to_owned(),
            paths: conflicts,
        });
    }
    let tree_id = index
        .write_tree_to(&repo)
        .map_err(WorkspaceError::git("write the commit tree", &root))?;
    // Nothing to record (an empty patch, or changes the branch already has):
    // no empty commit, the branch just has to exist.
    if tree_id == parent_tree.id() {
        if existing.is_none() {
            repo.reference(&ref_name, parent.id(), false, "ccflow: branch")
                .map_err(WorkspaceError::git(
                    format!("create the branch `{branch}`"),
                    &root,
                ))?;
        }
        return Ok(parent.id());
    }
    let tree = repo
        .find_tree(tree_id)
        .map_err(WorkspaceError::git("read the commit tree", &root))?;
    let signature = repo
        .signature()
        .or_else(|_| ccflow_signature())
        .map_err(WorkspaceError::git("make a signature", &root))?;
    let commit = repo
        .commit(None, &signature, &signature, message, &tree, &[&parent])
        .map_err(WorkspaceError::git(format!("commit on `{branch}`"), &root))?;
    // Compare-and-swap, so two ccflow processes committing on one branch
    // cannot silently drop each other's commit.
    let log_message = format!("ccflow: {}", message.lines().next().unwrap_or_default());
    match existing {
        Some(previous) => repo
            .reference_matching(&ref_name, commit, true, previous.id(), &log_message)
            .map(|_| ()),
        None => repo
            .reference(&ref_name, commit, false, &log_message)
            .map(|_| ()),
    }
    .map_err(WorkspaceError::git(
        format!("move the branch `{branch}`"),
        &root,
    ))?;
    Ok(commit)
}

/// Puts a worktree back to its snapshot after an agent changed `patch`'s
/// files, so the worktree can serve the next instance: changed and deleted
/// files get their snapshot content and mode back, added files go, and a
/// HEAD the agent moved (by committing) returns to the snapshot commit.
/// Files git ignores are not touched (they are never part of a diff).
///
/// # Errors
/// A file cannot be restored; the caller then discards the worktree.
pub fn reset_worktree(
    snapshot: &Snapshot,
    worktree: &super::Worktree,
    patch: &Patch,
) -> Result<(), WorkspaceError> {
    let (repo, _root) = open_repository(&snapshot.repo_root)?;
    for change in &patch.files {
        validate_path(&change.path)?;
        let target = worktree.path.join(&change.path);
        match (change.kind, change.old_blob) {
            (ChangeKind::Added, _) => {
                if std::fs::symlink_metadata(&target).is_ok() {
                    fs_err::remove_file(&target)?;
                }
                // Folders the agent created and emptied go too.
                let mut dir = target.parent();
                while let Some(d) = dir {
                    if d == worktree.path || std::fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
            }
            (_, Some(blob)) => {
                let content = find_blob_content(&repo, blob).ok_or_else(|| {
                    WorkspaceError::from(std::io::Error::other(format!(
                        "snapshot blob of `{}` is missing",
                        change.path
                    )))
                })?;
                if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    fs_err::remove_dir_all(&target)?;
                }
                let side = Side {
                    content,
                    mode: change.old_mode.unwrap_or(super::patch::MODE_FILE),
                };
                // A symlink is replaced, never written through.
                if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
                    fs_err::remove_file(&target)?;
                }
                write_atomically(&target, &side)?;
            }
            (_, None) => {
                return Err(WorkspaceError::from(std::io::Error::other(format!(
                    "no snapshot content for `{}`",
                    change.path
                ))))
            }
        }
    }
    let git = |action: &'static str| WorkspaceError::git(action, worktree.path.clone());
    let checkout = git2::Repository::open(&worktree.path).map_err(git("open the worktree"))?;
    let moved = checkout
        .head()
        .ok()
        .and_then(|h| h.target())
        .is_none_or(|head| head != snapshot.commit);
    if moved {
        checkout
            .set_head_detached(snapshot.commit)
            .map_err(git("reset the worktree's HEAD"))?;
        let commit = checkout
            .find_object(snapshot.commit, None)
            .map_err(git("find the snapshot commit"))?;
        checkout
            .reset(&commit, git2::ResetType::Mixed, None)
            .map_err(git("reset the worktree's index"))?;
    }
    // Ignored files are never in a snapshot: any here were made by the agent
    // (a build folder, say). They go too, so the next agent starts clean.
    let mut options = git2::StatusOptions::new();
    options
        .include_ignored(true)
        .include_untracked(false)
        .recurse_ignored_dirs(false)
        .recurse_untracked_dirs(true);
    let ignored: Vec<String> = checkout
        .statuses(Some(&mut options))
        .map_err(git("list the worktree's ignored files"))?
        .iter()
        .filter(|entry| entry.status().contains(git2::Status::IGNORED))
        .filter_map(|entry| entry.path().map(str::to_owned))
        .collect();
    for path in ignored {
        let relative = Path::new(path.trim_end_matches('/'));
        if super::is_state_path(relative) {
            continue;
        }
        let target = worktree.path.join(relative);
        // A build folder can hold many files: several threads unlink them.
        super::remove::remove_trees(&[&target])?;
    }
    Ok(())
}
