//! Directory walks kept in the memo: a run after a small edit lists no
//! directory whose listing cannot have changed.
//!
//! A walk (a `files:` fan-out, an `inputs:` or `outputs:` glob) reads the
//! listing of every directory it descends into and, when it honours
//! .gitignore, the ignore files in those directories and above the start.
//! What it yields is decided by those alone, so a walk is kept with its
//! *guards*: the stat of each directory it listed and of each ignore file
//! it could have read (or that the file did not exist), taken after the
//! walk and kept only when none was modified within [`RACY_NS`] of the
//! walk's start (a directory changed while it was listed, or within the
//! same timestamp tick, could hold entries its stat does not vouch for).
//! A later walk with the same start, depth and ignore setting whose guards
//! all stat the same yields what the kept one did, without listing
//! anything: a new or removed entry changes its directory's mtime, an
//! edited ignore file its own. This is git's untracked cache (directory
//! stats and ignore files) applied to ccflow's walks.
//!
//! Kept walks live in the memo ([`super::check`] hands them to the run,
//! [`super::conclude`] writes those the run used or made); unlike the
//! memo's other observations they do not need the rest of the memo to
//! hold: each one vouches for itself.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::cache::fsutil::{DirStat, FileStat};

use super::{is_racy, put_bytes, put_u64, Reader, GIT_EXCLUDE, IGNORE_FILES};

/// One path a walk's result depends on, with what `stat` said of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub path: PathBuf,
    /// `None`: it did not exist.
    pub seen: Option<FileStat>,
    /// A directory the walk listed (as opposed to an ignore file).
    pub listed: bool,
}

/// A kept walk: its guards and what it yielded.
#[derive(Clone, Debug)]
pub struct Walk {
    pub guards: Arc<[Guard]>,
    /// The files and symlinks found, relative to the root, NUL-separated,
    /// in the order the walk found them.
    pub files: Arc<str>,
}

/// Kept walks by [`key`].
pub(super) type Walks = HashMap<Vec<u8>, Walk>;

/// The walks of the memo the last check read, until recording starts.
static FROM_CHECK: Mutex<Option<Walks>> = Mutex::new(None);

/// Hands the walks of the memo just checked to the next recording.
pub(super) fn handed_over(walks: Walks) {
    *FROM_CHECK.lock().unwrap_or_else(PoisonError::into_inner) = Some(walks);
}

/// The walks handed over by the last check (see [`handed_over`]).
pub(super) fn take_handed_over() -> Walks {
    FROM_CHECK
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_default()
}

/// What identifies a walk: where it starts, how deep it goes, whether it
/// honours ignore files.
#[must_use]
pub fn key(dir: &Path, honour_ignore: bool, max_depth: Option<usize>) -> Vec<u8> {
    let mut key = dir.as_os_str().as_bytes().to_vec();
    key.push(0);
    key.push(u8::from(honour_ignore));
    let depth = max_depth.map_or(u64::MAX, |d| u64::try_from(d).unwrap_or(u64::MAX - 1));
    key.extend_from_slice(&depth.to_le_bytes());
    key
}

/// The kept walk for `key` from the last memo, if the run is recording
/// and there is one. The caller checks its guards ([`guards_hold`]).
#[must_use]
pub fn prior(key: &[u8]) -> Option<Walk> {
    if !super::active() {
        return None;
    }
    super::recorder().as_ref()?.prior_walks.get(key).cloned()
}

/// Whether every guard stats now as it did when the walk was kept.
#[must_use]
pub fn guards_hold(guards: &[Guard]) -> bool {
    let mut stat = DirStat::default();
    guards
        .iter()
        .all(|guard| stat.stat(&guard.path).ok() == guard.seen)
}

/// Stats `paths` after a walk that started at `started_ns` (the coarse
/// clock): the guards of a walk that can be kept, or `None` when one of
/// them was modified too recently to vouch for what the walk saw.
#[must_use]
pub fn guards_after(paths: Vec<(PathBuf, bool)>, started_ns: i64) -> Option<Vec<Guard>> {
    let mut stat = DirStat::default();
    paths
        .into_iter()
        .map(|(path, listed)| {
            let seen = stat.stat(&path).ok();
            if seen.is_some_and(|s| is_racy(&s, started_ns)) {
                return None;
            }
            Some(Guard { path, seen, listed })
        })
        .collect()
}

/// What a walk from `dir` that listed `listed` depends on, each path with
/// whether it is a listed directory: each listed directory and, honouring
/// ignore files, the ignore files in them and in every directory above
/// `dir` (those `super::ignore_files_above` records, and the git exclude
/// file of a repository nested in a listed directory).
#[must_use]
pub fn guard_paths(dir: &Path, listed: Vec<PathBuf>, honour_ignore: bool) -> Vec<(PathBuf, bool)> {
    let mut paths: Vec<(PathBuf, bool)> = Vec::new();
    if honour_ignore {
        for ignoring in dir.ancestors().chain(listed.iter().map(PathBuf::as_path)) {
            for name in IGNORE_FILES.into_iter().chain([GIT_EXCLUDE]) {
                paths.push((ignoring.join(name), false));
            }
        }
    }
    paths.extend(listed.into_iter().map(|path| (path, true)));
    paths
}

/// Records that this run walked `key` with this result (made now, or
/// reused with its guards holding): the memo this run writes keeps it.
pub fn walked(key: Vec<u8>, walk: Walk) {
    if !super::active() {
        return;
    }
    if let Some(rec) = super::recorder().as_mut() {
        rec.walks.insert(key, walk);
    }
}

/// The memo's section of kept walks.
pub(super) fn encode(walks: &Walks) -> Vec<u8> {
    let mut out = Vec::new();
    let mut sorted: Vec<(&Vec<u8>, &Walk)> = walks.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    put_u64(&mut out, sorted.len());
    for (key, walk) in sorted {
        put_bytes(&mut out, key);
        put_u64(&mut out, walk.guards.len());
        for guard in walk.guards.iter() {
            put_bytes(&mut out, guard.path.as_os_str().as_bytes());
            out.push(u8::from(guard.seen.is_some()) | u8::from(guard.listed) << 1);
            if let Some(seen) = guard.seen {
                super::put_stat(&mut out, &seen);
            }
        }
        put_bytes(&mut out, walk.files.as_bytes());
    }
    out
}

/// The walks of a section [`encode`] wrote; `None` when the bytes are not
/// one.
pub(super) fn decode(bytes: &[u8]) -> Option<Walks> {
    let mut reader = Reader { bytes };
    let count = usize::try_from(reader.u64()?).ok()?;
    let mut walks = HashMap::with_capacity(count.min(bytes.len() / 16));
    for _ in 0..count {
        let key = reader.bytes_field()?.to_vec();
        let guard_count = usize::try_from(reader.u64()?).ok()?;
        let mut guards = Vec::with_capacity(guard_count.min(reader.bytes.len() / 9));
        for _ in 0..guard_count {
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(reader.bytes_field()?));
            let flags = reader.take(1)?[0];
            let seen = if flags & 1 != 0 {
                Some(super::read_stat(&mut reader)?)
            } else {
                None
            };
            guards.push(Guard {
                path,
                seen,
                listed: flags & 2 != 0,
            });
        }
        let files = std::str::from_utf8(reader.bytes_field()?).ok()?;
        walks.insert(
            key,
            Walk {
                guards: guards.into(),
                files: files.into(),
            },
        );
    }
    reader.bytes.is_empty().then_some(walks)
}

#[cfg(test)]
mod tests {
    use super::super::RACY_NS;
    use super::*;

    #[test]
    fn walks_round_trip_and_reject_damage() {
        let seen = FileStat {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
            mode: 0o40755,
        };
        let mut walks = Walks::new();
        walks.insert(
            key(Path::new("/r/in"), true, Some(1)),
            Walk {
                guards: vec![
                    Guard {
                        path: "/r/in".into(),
                        seen: Some(seen),
                        listed: true,
                    },
                    Guard {
                        path: "/r/.gitignore".into(),
                        seen: None,
                        listed: false,
                    },
                ]
                .into(),
                files: "in/a.txt\0in/b.txt".into(),
            },
        );
        let bytes = encode(&walks);
        let back = decode(&bytes).expect("decodes");
        let walk = &back[&key(Path::new("/r/in"), true, Some(1))];
        assert_eq!(walk.guards.len(), 2);
        assert_eq!(walk.guards[0].seen, Some(seen));
        assert!(walk.guards[0].listed && !walk.guards[1].listed);
        assert_eq!(walk.guards[1].seen, None);
        assert_eq!(&*walk.files, "in/a.txt\0in/b.txt");
        // Another depth or ignore setting is another walk.
        assert!(!back.contains_key(&key(Path::new("/r/in"), true, None)));
        assert!(!back.contains_key(&key(Path::new("/r/in"), false, Some(1))));
        // Truncated or with bytes left over: not a section.
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
    }

    #[test]
    fn a_guard_modified_within_the_racy_window_keeps_no_walk() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::cache::fsutil::coarse_now_ns();
        // Just created: modified within the window of a walk starting now.
        assert!(guards_after(vec![(dir.path().to_path_buf(), true)], now).is_none());
        // A walk that starts once the window has passed can be kept, and
        // its guards hold until the directory changes.
        std::thread::sleep(std::time::Duration::from_nanos(
            u64::try_from(RACY_NS).unwrap() + 50_000_000,
        ));
        let guards = guards_after(
            vec![
                (dir.path().to_path_buf(), true),
                (dir.path().join(".gitignore"), false),
            ],
            crate::cache::fsutil::coarse_now_ns(),
        )
        .expect("not racy");
        assert_eq!(guards[1].seen, None);
        assert!(guards_hold(&guards));
        std::fs::write(dir.path().join("new.txt"), "x").unwrap();
        assert!(!guards_hold(&guards));
    }
}
