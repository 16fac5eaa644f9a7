//! Small file-system helpers shared by the stat index and the store: unique
//! temp names, atomic writes, reflink-or-copy with hashing, timestamps and
//! file-system syncs. Only this file talks to `libc`.

use fs_err::os::unix::fs::OpenOptionsExt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Per-process counter for temp names; together with the pid it makes names
/// unique among live processes sharing a store.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of temp files inside the store.
pub(crate) const STORE_TEMP: &str = ".tmp-";
/// Prefix of temp files in the user's tree while restoring, recognisable if
/// a killed process leaves one behind.
pub(crate) const RESTORE_TEMP: &str = ".ccflow-restore-";

/// Creates a fresh temp file `{prefix}{pid}-{counter}` in `dir` (which must
/// exist) and returns it with its path. `create_new` guards against a stale
/// temp left by a killed process whose pid was reused.
pub(crate) fn create_temp(
    dir: &Path,
    prefix: &str,
    mode: u32,
) -> io::Result<(fs_err::File, PathBuf)> {
    let pid = std::process::id();
    loop {
        let count = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{prefix}{pid}-{count}"));
        let mut options = fs_err::OpenOptions::new();
        options.write(true).create_new(true).mode(mode);
        match options.open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Writes `bytes` to `path` atomically: temp file in `temp_dir` (same file
/// system), then [`replace_file`]. No fsync: callers batch durability.
pub(crate) fn write_atomic(temp_dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (mut file, temp) = create_temp(temp_dir, STORE_TEMP, 0o644)?;
    let result = file
        .write_all(bytes)
        .and_then(|()| replace_file(&temp, path));
    if result.is_err() {
        let _ = fs_err::remove_file(&temp);
    }
    result
}

/// Moves `temp` to `path` atomically, replacing what is there: readers see
/// the old file or the new one, never neither.
///
/// An existing `path` is swapped with `temp` (`renameat2` with
/// `RENAME_EXCHANGE`) and the old file, now at `temp`, unlinked. A plain
/// rename over an existing file makes ext4 (`auto_da_alloc`, its default)
/// start writing the new file's data back inside the rename: 0.46 ms
/// instead of 0.15 ms for a 450 KB file here, paid by every memo, index and
/// run record a run replaces. What that buys, the new content on disk
/// before the name after a power loss without fsync, these files do not
/// need: each is checksummed or validated on read, and unreadable is a
/// miss. Elsewhere (no such file yet, a file system without the flag) a
/// plain rename.
pub(crate) fn replace_file(temp: &Path, path: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::ffi::OsStrExt as _;
        let (Ok(from), Ok(to)) = (
            std::ffi::CString::new(temp.as_os_str().as_bytes()),
            std::ffi::CString::new(path.as_os_str().as_bytes()),
        ) else {
            return fs_err::rename(temp, path);
        };
        // SAFETY: both are NUL-terminated paths that live across the call.
        let swapped = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        } == 0;
        if swapped {
            // `temp` now holds the replaced content; a failure to unlink it
            // leaves a stray temp file, never a wrong `path`.
            let _ = std::fs::remove_file(temp);
            return Ok(());
        }
    }
    fs_err::rename(temp, path)
}

/// Asks the file system to share `source`'s extents with `target` (btrfs,
/// XFS, bcachefs). Returns false when that is not supported, and the caller
/// copies instead. Never a hard link: a later in-place edit of an output
/// would corrupt the store.
#[cfg(target_os = "linux")]
pub(crate) fn try_reflink(source: &File, target: &File) -> bool {
    use std::os::fd::AsRawFd;
    // _IOW(0x94, 9, int) from <linux/fs.h>.
    const FICLONE: libc::Ioctl = 0x4004_9409;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE
    // takes the source descriptor as its integer argument and writes no memory.
    let result = unsafe { libc::ioctl(target.as_raw_fd(), FICLONE, source.as_raw_fd()) };
    result == 0
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn try_reflink(_source: &File, _target: &File) -> bool {
    false
}

/// Hashes everything `reader` yields; returns (hex hash, byte count).
pub(crate) fn hash_reader(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    Ok((hasher.finalize().to_hex().to_string(), total))
}

/// Copies `reader` into `writer` while hashing; returns (hex hash, bytes).
pub(crate) fn copy_hashing(
    mut reader: impl Read,
    mut writer: impl Write,
) -> io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..read]);
        writer.write_all(&buffer[..read])?;
        total += read as u64;
    }
    Ok((hasher.finalize().to_hex().to_string(), total))
}

/// Hex BLAKE3 of a byte slice.
pub(crate) fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Sets a file's access and modification times to now (records a cache hit
/// for LRU garbage collection) without opening it.
pub(crate) fn touch(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string; a null `times`
    // pointer means "now" for both timestamps.
    let result = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), std::ptr::null(), 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets a file's modification time (and access time) to `unix_ns` (a
/// rewritten pack keeps its last use; tests forge timestamps); kept here so
/// all `libc` use is in one file.
pub(crate) fn set_mtime_ns(path: &Path, unix_ns: i64) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let time = libc::timespec {
        tv_sec: unix_ns.div_euclid(1_000_000_000),
        tv_nsec: unix_ns.rem_euclid(1_000_000_000),
    };
    let times = [time, time];
    // SAFETY: valid C string and a two-element timespec array, as required.
    let result = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The clock file systems stamp files with (coarse: it lags the precise
/// clock by up to one tick). A file whose mtime is strictly below this value
/// read *before* hashing cannot be modified again without its mtime moving.
pub(crate) fn coarse_now_ns() -> i64 {
    #[cfg(target_os = "linux")]
    {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `time` is a valid out-pointer for clock_gettime.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut time) } == 0 {
            return time.tv_sec * 1_000_000_000 + time.tv_nsec;
        }
    }
    // Precise time is later than the coarse clock, so subtracting a generous
    // tick keeps the racy check conservative.
    let precise = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX)
        });
    precise - 20_000_000
}

/// Milliseconds since the Unix epoch (entry creation times).
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// What `stat` (following symlinks) says of a path: the fields the stat
/// index and the memo compare, as [`std::fs::Metadata`] reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
}

impl FileStat {
    #[must_use]
    pub fn of(metadata: &std::fs::Metadata) -> FileStat {
        FileStat {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime_ns: mtime_ns(metadata),
            ctime_ns: ctime_ns(metadata),
            mode: metadata.mode(),
        }
    }

    #[must_use]
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    #[must_use]
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// Stats paths relative to their open parent directory, which it keeps
/// open while the next paths share it (one per thread).
///
/// Resolving `/work/repo/src/f.rs` from `/` for every file was most of a
/// stat: 2,000 of them in one directory pair took 1.9 ms on one thread or
/// two (the walks of the shared prefix contend), 0.7 ms on two threads
/// relative to the directories. Same answers as [`std::fs::metadata`]
/// (`statx`, symlinks followed); paths it cannot split, and directories it
/// cannot open, are stat'ed whole.
#[derive(Default)]
pub struct DirStat {
    /// The directory `fd` is open on (its path bytes), when one is.
    dir: Vec<u8>,
    fd: Option<std::os::fd::OwnedFd>,
    /// The last directory that could not be opened.
    failed: Vec<u8>,
    name: Vec<u8>,
}

impl DirStat {
    /// `stat(path)`, following symlinks.
    ///
    /// # Errors
    /// As [`std::fs::metadata`].
    pub fn stat(&mut self, path: &Path) -> io::Result<FileStat> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        use std::os::unix::ffi::OsStrExt as _;
        let whole = || std::fs::metadata(path).map(|m| FileStat::of(&m));
        let bytes = path.as_os_str().as_bytes();
        let Some(slash) = bytes.iter().rposition(|b| *b == b'/') else {
            return whole();
        };
        let (dir, name) = (&bytes[..slash], &bytes[slash + 1..]);
        if dir.is_empty() || matches!(name, b"" | b"." | b"..") || name.contains(&0) {
            return whole();
        }
        if self.dir != dir || self.fd.is_none() {
            if self.failed == dir {
                return whole();
            }
            self.fd = None;
            let Ok(dir_c) = std::ffi::CString::new(dir) else {
                return whole();
            };
            // SAFETY: a NUL-terminated path; the descriptor returned is ours.
            let fd = unsafe {
                libc::open(
                    dir_c.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                dir.clone_into(&mut self.failed);
                return whole();
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            self.fd = Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
            dir.clone_into(&mut self.dir);
        }
        let Some(fd) = &self.fd else {
            return whole();
        };
        self.name.clear();
        self.name.extend_from_slice(name);
        self.name.push(0);
        // SAFETY: zeroed plain data, filled in by statx.
        let mut buf: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: a directory descriptor we own, a NUL-terminated name, and
        // a buffer of the right type; statx writes nothing else.
        let result = unsafe {
            libc::statx(
                fd.as_raw_fd(),
                self.name.as_ptr().cast(),
                libc::AT_STATX_SYNC_AS_STAT,
                libc::STATX_BASIC_STATS,
                &mut buf,
            )
        };
        if result != 0 {
            let error = io::Error::last_os_error();
            // No statx (old kernels, some sandboxes): the whole path, as std.
            if matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
                return whole();
            }
            return Err(error);
        }
        let time = |t: libc::statx_timestamp| t.tv_sec * 1_000_000_000 + i64::from(t.tv_nsec);
        Ok(FileStat {
            // As std builds `st_dev` from statx.
            dev: libc::makedev(buf.stx_dev_major, buf.stx_dev_minor),
            ino: buf.stx_ino,
            size: buf.stx_size,
            mtime_ns: time(buf.stx_mtime),
            ctime_ns: time(buf.stx_ctime),
            mode: u32::from(buf.stx_mode),
        })
    }
}

/// A file's mtime in nanoseconds since the epoch.
pub(crate) fn mtime_ns(metadata: &std::fs::Metadata) -> i64 {
    metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec()
}

/// A file's ctime in nanoseconds since the epoch.
pub(crate) fn ctime_ns(metadata: &std::fs::Metadata) -> i64 {
    metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec()
}

/// Makes everything written so far on the file system holding `dir` durable:
/// one `syncfs` for a whole batch instead of an fsync per file.
pub(crate) fn sync_file_system(dir: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `dir` is an open descriptor for the call's duration.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    }
}

/// Marks `dir` as the top of unrelated directory hierarchies for ext2/3/4's
/// Orlov allocator (`chattr +T`): each directory created in it is placed in
/// a block group of its own choosing instead of next to its parent. Agent
/// worktrees are such hierarchies; on ext4 without a journal, creating
/// thousands of files in the block group where the previous run deleted
/// thousands scans every recently deleted inode for each new one. Returns
/// whether the file system took the flag (others ignore it).
#[cfg(target_os = "linux")]
pub(crate) fn mark_top_directory(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    // _IOR('f', 1, long) and _IOW('f', 2, long) from <linux/fs.h>; the
    // kernel reads and writes an int.
    const FS_IOC_GETFLAGS: libc::Ioctl = 0x8008_6601_u32 as libc::Ioctl;
    const FS_IOC_SETFLAGS: libc::Ioctl = 0x4008_6602_u32 as libc::Ioctl;
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(file) = File::open(dir) else {
        return false;
    };
    let mut flags: libc::c_int = 0;
    // SAFETY: the descriptor is open; both calls read or write one int we own.
    unsafe {
        if libc::ioctl(file.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) != 0 {
            return false;
        }
        if flags & FS_TOPDIR_FL != 0 {
            return true;
        }
        flags |= FS_TOPDIR_FL;
        libc::ioctl(file.as_raw_fd(), FS_IOC_SETFLAGS, &flags) == 0
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn mark_top_directory(_dir: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On ext2/3/4 (this machine's /tmp) the flag is set and `lsattr`
    /// shows it; elsewhere the call reports that it did nothing.
    #[test]
    fn top_directory_flag_is_set_where_the_file_system_has_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kind = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir.path())
            .output()
            .expect("stat -f");
        let kind = String::from_utf8_lossy(&kind.stdout).trim().to_owned();
        let marked = mark_top_directory(dir.path());
        if kind.starts_with("ext2") {
            assert!(marked, "ext4 takes the flag");
            let attrs = std::process::Command::new("lsattr")
                .arg("-d")
                .arg(dir.path())
                .output()
                .expect("lsattr");
            let attrs = String::from_utf8_lossy(&attrs.stdout);
            let flags = attrs.split_whitespace().next().unwrap_or_default();
            assert!(flags.contains('T'), "{attrs}");
            assert!(mark_top_directory(dir.path()), "setting it again is fine");
        }
        assert!(!mark_top_directory(&dir.path().join("missing")));
    }

    /// The same answer as `std::fs::metadata` for files, directories and
    /// symlinks (followed), across directory changes, and the same error
    /// for what does not exist.
    #[test]
    fn dir_stat_answers_as_std_metadata_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/sub")).expect("mkdir");
        std::fs::create_dir_all(root.join("b")).expect("mkdir");
        std::fs::write(root.join("a/one"), b"1").expect("write");
        std::fs::write(root.join("a/two"), b"22").expect("write");
        std::fs::write(root.join("b/three"), b"333").expect("write");
        std::os::unix::fs::symlink("../a/two", root.join("b/link")).expect("symlink");
        std::os::unix::fs::symlink(root.join("a"), root.join("alias")).expect("symlink");
        let paths = [
            "a/one",
            "a/two",
            "a/sub",
            "b/three",
            "b/link",
            "a/one",
            "alias/two",
            "a/sub/..",
            "a/.",
            "a",
        ];
        let mut stat = DirStat::default();
        for rel in paths {
            let path = root.join(rel);
            let expected = FileStat::of(&std::fs::metadata(&path).expect("std stat"));
            assert_eq!(stat.stat(&path).expect("dir stat"), expected, "{rel}");
        }
        assert!(stat.stat(&root.join("b/link")).expect("link").is_file());
        assert!(stat.stat(&root.join("a/sub")).expect("dir").is_dir());
        for missing in ["a/none", "none/x", "a/one/x"] {
            let std_kind = std::fs::metadata(root.join(missing))
                .expect_err("std")
                .kind();
            let kind = stat.stat(&root.join(missing)).expect_err("dir stat").kind();
            assert_eq!(kind, std_kind, "{missing}");
        }
        // A relative path with no directory part is stat'ed whole.
        let name = Path::new("Cargo.toml");
        assert_eq!(
            stat.stat(name).ok(),
            std::fs::metadata(name).ok().map(|m| FileStat::of(&m))
        );
    }

    /// The new content under the name, the old one gone, no temp file
    /// left; the same whether the name existed or not. A reader holding
    /// the old file keeps reading the old content.
    #[test]
    fn replace_file_swaps_in_the_new_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("memo");
        write_atomic(dir.path(), &target, b"first").expect("first write");
        assert_eq!(std::fs::read(&target).expect("read"), b"first");
        let mut reader = File::open(&target).expect("open old");
        write_atomic(dir.path(), &target, b"second").expect("second write");
        assert_eq!(std::fs::read(&target).expect("read"), b"second");
        let mut old = String::new();
        reader.read_to_string(&mut old).expect("read old");
        assert_eq!(old, "first");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["memo"], "no temp file left behind");
        let err = replace_file(&dir.path().join("no-such-temp"), &target)
            .expect_err("a missing temp is an error");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(std::fs::read(&target).expect("read"), b"second");
    }
}
