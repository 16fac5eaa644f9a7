//! Manifest packs: the manifests of one published batch in one file.
//!
//! A cold run of 1,000 instances used to create 1,000 manifest files (and as
//! many temp files renamed into place). Creating a file is most of what
//! saving a small entry costs, and on some file systems (ext4 without a
//! journal) each creation after a mass delete scans past recently freed
//! inodes. The store's flusher publishes saves in batches anyway (one
//! `syncfs` per batch), so it now writes each batch as one pack:
//! `packs/pack-<unix ns>-<pid>-<sequence>`, temp file then rename, immutable
//! once named.
//!
//! A pack is the line `ccflow-pack 1`, then one record per manifest:
//! `<key hash> <length>\n`, the manifest's bytes exactly as a manifest file
//! holds them (header line with its own checksum, then JSON), then `\n`.
//! Readers verify each manifest's checksum and key as before; a record that
//! does not parse ends the pack (a torn tail after a power cut), never a
//! wrong entry.
//!
//! Every process keeps an index of the packs it has read (key → record),
//! refreshed when the `packs/` directory changes (one `stat` per lookup).
//! When a key is in several packs, the pack whose name sorts last wins (the
//! newest). A pack's mtime is the last use of its entries, for LRU gc
//! (coarser than a file per entry: a hit on one entry keeps its packmates).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::key::KeyHash;

const PACK_MAGIC: &[u8] = b"ccflow-pack 1\n";

/// Whether a file name is a pack's.
pub(crate) fn is_pack_name(name: &str) -> bool {
    name.starts_with("pack-")
}

/// A fresh pack name, sorting after every pack named before it by any
/// process (nanoseconds, then pid and a per-process sequence).
pub(crate) fn new_name(sequence: u64) -> String {
    format!(
        "pack-{:020}-{}-{sequence:08}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        std::process::id()
    )
}

/// Encodes `(key, manifest)` records as a pack.
pub(crate) fn encode<'a>(records: impl IntoIterator<Item = (&'a KeyHash, &'a [u8])>) -> Vec<u8> {
    let mut bytes = PACK_MAGIC.to_vec();
    for (key, manifest) in records {
        bytes.extend_from_slice(format!("{key} {}\n", manifest.len()).as_bytes());
        bytes.extend_from_slice(manifest);
        bytes.push(b'\n');
    }
    bytes
}

/// The records of a pack, in file order: key and the byte range of its
/// manifest. Stops at the first record that does not parse.
pub(crate) fn decode(bytes: &[u8]) -> Vec<(KeyHash, Range<usize>)> {
    let mut records = Vec::new();
    let Some(mut rest) = bytes.strip_prefix(PACK_MAGIC) else {
        return records;
    };
    let mut offset = PACK_MAGIC.len();
    while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
        let parsed = std::str::from_utf8(&rest[..newline])
            .ok()
            .and_then(|line| line.split_once(' '))
            .and_then(|(key, len)| {
                Some((key.parse::<KeyHash>().ok()?, len.parse::<usize>().ok()?))
            });
        let Some((key, len)) = parsed else { break };
        let start = offset + newline + 1;
        let end = start.saturating_add(len);
        if end >= bytes.len() || bytes[end] != b'\n' {
            break;
        }
        records.push((key, start..end));
        offset = end + 1;
        rest = &bytes[offset..];
    }
    records
}

/// One pack read into memory.
pub(crate) struct Pack {
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    /// Its mtime when read, or when this process last touched it (last
    /// use), in ms since the epoch.
    last_use_ms: AtomicU64,
}

impl Pack {
    pub(crate) fn new(path: PathBuf, bytes: Vec<u8>, last_use: SystemTime) -> Pack {
        Pack {
            path,
            bytes,
            last_use_ms: AtomicU64::new(unix_ms(last_use)),
        }
    }

    /// Whether its last recorded use is older than `age`.
    pub(crate) fn used_before(&self, age: Duration) -> bool {
        let now = unix_ms(SystemTime::now());
        now.saturating_sub(self.last_use_ms.load(Ordering::Relaxed))
            > u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
    }

    /// Its last recorded use.
    pub(crate) fn last_use(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.last_use_ms.load(Ordering::Relaxed))
    }

    /// Its last recorded use, in ns since the epoch.
    pub(crate) fn last_use_ns(&self) -> i64 {
        i64::try_from(self.last_use_ms.load(Ordering::Relaxed))
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000)
    }

    /// Records a use now (after touching the file).
    pub(crate) fn mark_used(&self) {
        self.last_use_ms
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A directory whose mtime is this close to the time it was listed may
/// change again within the same timestamp tick: list it again (at most
/// every [`RELIST_INTERVAL`]) until its mtime is settled.
const RACY: Duration = Duration::from_millis(100);
const RELIST_INTERVAL: Duration = Duration::from_millis(10);

/// Where a key's manifest is.
#[derive(Clone)]
pub(crate) struct Located {
    pub(crate) pack: Arc<Pack>,
    pub(crate) range: Range<usize>,
}

impl Located {
    pub(crate) fn manifest(&self) -> &[u8] {
        &self.pack.bytes[self.range.clone()]
    }
}

/// This process's view of `packs/`.
#[derive(Default)]
pub(crate) struct PackIndex {
    /// mtime of `packs/` when it was last listed.
    dir_mtime: Option<SystemTime>,
    /// When it was listed, if its mtime was racy then.
    racy_since: Option<Instant>,
    /// Packs read, by file name.
    loaded: BTreeMap<String, Arc<Pack>>,
    keys: HashMap<KeyHash, Located>,
}

impl PackIndex {
    /// The record for `key`, re-reading `dir` first if it changed.
    pub(crate) fn find(&mut self, dir: &Path, key: &KeyHash) -> Option<Located> {
        self.refresh(dir);
        self.keys.get(key).cloned()
    }

    /// Reads packs that appeared in `dir` since the last call; starts over
    /// when one disappeared (merged or collected by another process).
    pub(crate) fn refresh(&mut self, dir: &Path) {
        let Ok(mtime) = std::fs::metadata(dir).and_then(|m| m.modified()) else {
            return;
        };
        if self.dir_mtime == Some(mtime)
            && self
                .racy_since
                .is_none_or(|listed| listed.elapsed() < RELIST_INTERVAL)
        {
            return;
        }
        let names = list(dir);
        let present: HashSet<&String> = names.iter().collect();
        if self.loaded.keys().any(|name| !present.contains(name)) {
            self.loaded.clear();
            self.keys.clear();
        }
        let mut fresh: Vec<&String> = names
            .iter()
            .filter(|name| !self.loaded.contains_key(*name))
            .collect();
        fresh.sort();
        let newest_loaded = self.loaded.keys().next_back().cloned();
        for name in fresh {
            let Some(pack) = read(&dir.join(name)) else {
                continue;
            };
            // A pack older than one already indexed must not override it.
            let overrides = newest_loaded.as_ref().is_none_or(|newest| name > newest);
            self.add(name.clone(), pack, overrides);
        }
        self.dir_mtime = Some(mtime);
        let racy = SystemTime::now()
            .duration_since(mtime)
            .map_or(true, |age| age < RACY);
        self.racy_since = racy.then(Instant::now);
    }

    /// Indexes a pack this process just published (it need not read it).
    pub(crate) fn insert(&mut self, name: String, pack: Pack) {
        self.add(name, pack, true);
    }

    fn add(&mut self, name: String, pack: Pack, overrides: bool) {
        let pack = Arc::new(pack);
        for (key, range) in decode(&pack.bytes) {
            let located = Located {
                pack: Arc::clone(&pack),
                range,
            };
            if overrides {
                self.keys.insert(key, located);
            } else {
                self.keys.entry(key).or_insert(located);
            }
        }
        self.loaded.insert(name, pack);
    }

    /// Forgets everything (after `clear`).
    pub(crate) fn reset(&mut self) {
        *self = PackIndex::default();
    }
}

/// Pack file names in `dir`, unsorted.
pub(crate) fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| is_pack_name(name))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads one pack; `None` when it is gone.
pub(crate) fn read(path: &Path) -> Option<Pack> {
    let mut file = std::fs::File::open(path).ok()?;
    let last_use = file
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
    Some(Pack::new(path.to_owned(), bytes, last_use))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> KeyHash {
        format!("{:02x}", n).repeat(32).parse().expect("key")
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_pack() {
        let a = key(1);
        let b = key(2);
        let bytes = encode([(&a, &b"first\nmanifest"[..]), (&b, &b"second"[..])]);
        let records = decode(&bytes);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, a);
        assert_eq!(&bytes[records[0].1.clone()], b"first\nmanifest");
        assert_eq!(&bytes[records[1].1.clone()], b"second");
        // Cut anywhere inside the second record: only the first survives.
        for cut in (records[1].1.start - 5)..bytes.len() {
            let torn = decode(&bytes[..cut]);
            assert_eq!(torn.len(), 1, "cut at {cut}");
        }
        // A wrong length ends the pack too.
        let mut garbled = bytes.clone();
        let at = records[1].1.start - 2;
        garbled[at] = b'9';
        assert_eq!(decode(&garbled).len(), 1);
        assert!(decode(b"not a pack").is_empty());
    }

    #[test]
    fn the_newest_pack_wins_and_vanished_packs_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = key(1);
        std::fs::write(dir.path().join("pack-1"), encode([(&a, &b"old"[..])])).expect("write");
        std::fs::write(dir.path().join("pack-2"), encode([(&a, &b"new"[..])])).expect("write");
        let mut index = PackIndex::default();
        assert_eq!(
            index.find(dir.path(), &a).expect("found").manifest(),
            b"new"
        );
        std::fs::remove_file(dir.path().join("pack-2")).expect("rm");
        // Directory mtimes may not move within a tick: force a re-list.
        index.dir_mtime = None;
        assert_eq!(
            index.find(dir.path(), &a).expect("found").manifest(),
            b"old"
        );
        std::fs::remove_file(dir.path().join("pack-1")).expect("rm");
        index.dir_mtime = None;
        assert!(index.find(dir.path(), &a).is_none());
    }
}
