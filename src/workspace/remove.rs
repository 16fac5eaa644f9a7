//! Deleting checkouts. A worktree holds a copy of every file of the
//! repository, and unlinking them one after the other is slow where each
//! unlink waits for the disk: ext4 mounted with `discard` and no journal
//! frees and discards a file's blocks inside `unlink(2)`, ~80 µs to 2 ms a
//! file on the benchmark VM, so removing eight worktrees of 2,000 files took
//! 1.3 s with the cores idle. The files are unlinked from several threads,
//! so that those waits overlap (8,000 files: 0.6–15 s serial, 0.15–0.3 s
//! from 16 threads).
//!
//! Nothing here follows a symbolic link: directories are recognised from
//! the directory entry's own type (never the link target), and a link is
//! unlinked like a file. The paths are walked by name rather than through
//! directory handles, so a process that swaps a directory for a link while
//! the removal runs could redirect an unlink; the only processes in a
//! worktree are the agent's, which can already run any command as the user.

use std::path::{Path, PathBuf};

/// Threads that remove files. Removing is mostly waiting (for the disk, or
/// for a directory's lock), so more threads than cores pay off.
const REMOVE_THREADS: usize = 16;
/// A thread is started per this many paths (up to [`REMOVE_THREADS`]):
/// for a few files, starting threads costs more than it saves.
const PATHS_PER_THREAD: usize = 64;

/// Removes each of `roots` (a directory with everything below it, or a
/// single file) with the files of all of them unlinked from several threads.
/// A root that does not exist is fine.
///
/// # Errors
/// A file or directory cannot be listed or removed; the error names it.
pub(crate) fn remove_trees(roots: &[&Path]) -> std::io::Result<()> {
    let mut files = Vec::new();
    let mut directories = Vec::new();
    for root in roots {
        match fs_err::symlink_metadata(root) {
            Ok(metadata) if metadata.is_dir() => collect(root, &mut files, &mut directories)?,
            Ok(_) => files.push(root.to_path_buf()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    in_parallel(&files, |file| ignore_not_found(fs_err::remove_file(file)))?;
    // Removing a directory frees (and discards) its blocks too, which for a
    // folder of thousands of entries takes a while: the directories go
    // deepest first, each depth from several threads.
    directories.sort_by_key(|directory| std::cmp::Reverse(directory.components().count()));
    for level in
        directories.chunk_by(|left, right| left.components().count() == right.components().count())
    {
        in_parallel(level, |directory| match fs_err::remove_dir(directory) {
            // Something appeared meanwhile (a process the agent left still
            // writing): the plain recursive removal takes what is there now.
            Err(error) if error.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                ignore_not_found(fs_err::remove_dir_all(directory))
            }
            result => ignore_not_found(result),
        })?;
    }
    Ok(())
}

/// Lists everything below `root`: files (and links, and anything that is
/// not a directory) into `files`, directories (`root` included) into
/// `directories`.
fn collect(
    root: &Path,
    files: &mut Vec<PathBuf>,
    directories: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in fs_err::read_dir(&directory)? {
            let entry = entry?;
            // The entry's own type: a link to a directory is not descended.
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
        directories.push(directory);
    }
    Ok(())
}

/// Runs `operation` on every path, from several threads when there are
/// many; the first error wins.
fn in_parallel(
    paths: &[PathBuf],
    operation: impl Fn(&Path) -> std::io::Result<()> + Sync,
) -> std::io::Result<()> {
    let threads = paths
        .len()
        .div_ceil(PATHS_PER_THREAD)
        .clamp(1, REMOVE_THREADS);
    if threads == 1 {
        return paths.iter().try_for_each(|path| operation(path));
    }
    let operation = &operation;
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(paths.len().div_ceil(threads))
            .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(|path| operation(path))))
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("a removal thread panicked")))
        })
    })
}

fn ignore_not_found(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}
