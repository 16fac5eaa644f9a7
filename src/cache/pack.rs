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
//! A pack is the line `ccflow-pack 2`, the record count, a table of
//! records (key, offset and length of its manifest), then the manifests,
//! each exactly as a manifest file holds it (header line with its own
//! checksum, then JSON). Readers verify each manifest's checksum and key as
//! before; a record reaching past the end of the file (torn) is ignored,
//! never a wrong entry.
//!
//! Every process keeps an index of the packs' tables (key → pack, range),
//! refreshed when the `packs/` directory changes (one `stat` per lookup);
//! a hit reads its one manifest from the pack.
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

const PACK_MAGIC: &[u8] = b"ccflow-pack 2\n";
/// Magic, then the record count (u32, little-endian).
const PREAMBLE: usize = PACK_MAGIC.len() + 4;
/// Per record in the table: key (32 bytes), offset and length (u64 each).
const RECORD: usize = 48;

/// Whether a file name is a pack's.
pub(crate) fn is_pack_name(name: &str) -> bool {
    name.starts_with("pack-")
}

/// A fresh pack name, sorting after every pack named before it by any
/// process (nanoseconds, then pid and a per-process sequence).
pub(crate) fn new_name(sequence: u64) -> String {
    format!("pack-{:020}-{}-{sequence:08}", now_ns(), std::process::id())
}

/// Nanoseconds since the epoch, for names that sort by time.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The name for a rewrite of the pack at `path` (merged or collected): a
/// new file, since readers index packs by name and offset, sorting right
/// after the original (its time, pid and sequence) and before any later
/// pack.
pub(crate) fn rewritten(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("pack");
    let base: Vec<&str> = name.splitn(5, '-').take(4).collect();
    path.with_file_name(format!("{}-r{:020}", base.join("-"), now_ns()))
}

/// Encodes `(key, manifest)` records as a pack: the table of keys with
/// their manifests' offsets and lengths first, so that indexing a pack
/// reads the table only, then the manifests.
pub(crate) fn encode<'a>(records: impl IntoIterator<Item = (&'a KeyHash, &'a [u8])>) -> Vec<u8> {
    let records: Vec<(&KeyHash, &[u8])> = records.into_iter().collect();
    let table_end = PREAMBLE + records.len() * RECORD;
    let total = table_end + records.iter().map(|(_, m)| m.len()).sum::<usize>();
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(PACK_MAGIC);
    bytes.extend_from_slice(
        &u32::try_from(records.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    let mut offset = table_end as u64;
    for (key, manifest) in &records {
        bytes.extend_from_slice(&key.0);
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&(manifest.len() as u64).to_le_bytes());
        offset += manifest.len() as u64;
    }
    for (_, manifest) in &records {
        bytes.extend_from_slice(manifest);
    }
    bytes
}

/// A pack's records: key and byte range of its manifest in the file.
type Table = Vec<(KeyHash, Range<u64>)>;

/// The records of a pack whose first bytes are `head` and whose size is
/// `size`: key and the byte range of its manifest, in table order. A
/// record reaching past the end of the file (torn) is left out; a table
/// that does not parse yields nothing.
fn decode_table(head: &[u8], size: u64) -> Table {
    let Some(count) = head
        .strip_prefix(PACK_MAGIC)
        .and_then(|rest| rest.get(..4))
        .and_then(|count| count.try_into().ok())
        .map(u32::from_le_bytes)
    else {
        return Vec::new();
    };
    let Some(table) = head.get(PREAMBLE..PREAMBLE + count as usize * RECORD) else {
        return Vec::new();
    };
    table
        .chunks_exact(RECORD)
        .filter_map(|record| {
            let key = KeyHash(record[..32].try_into().ok()?);
            let offset = u64::from_le_bytes(record[32..40].try_into().ok()?);
            let len = u64::from_le_bytes(record[40..48].try_into().ok()?);
            let end = offset.checked_add(len)?;
            (end <= size).then_some((key, offset..end))
        })
        .collect()
}

/// The records of a whole pack in memory (see [`decode_table`]).
pub(crate) fn decode(bytes: &[u8]) -> Vec<(KeyHash, Range<usize>)> {
    decode_table(bytes, bytes.len() as u64)
        .into_iter()
        .filter_map(|(key, range)| {
            Some((
                key,
                usize::try_from(range.start).ok()?..usize::try_from(range.end).ok()?,
            ))
        })
        .collect()
}

/// Last use of a pack's entries, in ms since the epoch: its mtime when
/// read, or when this process last touched it.
pub(crate) struct LastUse(AtomicU64);

impl LastUse {
    fn new(time: SystemTime) -> LastUse {
        LastUse(AtomicU64::new(unix_ms(time)))
    }

    /// Whether the last recorded use is older than `age`.
    pub(crate) fn before(&self, age: Duration) -> bool {
        let now = unix_ms(SystemTime::now());
        now.saturating_sub(self.0.load(Ordering::Relaxed))
            > u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
    }

    /// Records a use now (after touching the file).
    pub(crate) fn mark(&self) {
        self.0.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }

    pub(crate) fn time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    /// In ns since the epoch.
    pub(crate) fn ns(&self) -> i64 {
        i64::try_from(self.0.load(Ordering::Relaxed))
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000)
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One pack read whole (for gc, stats and merging).
pub(crate) struct Pack {
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    pub(crate) last_use: LastUse,
}

/// A pack as the index knows it: where it is and when it was last used.
pub(crate) struct PackFile {
    pub(crate) path: PathBuf,
    pub(crate) last_use: LastUse,
}

/// Where a key's manifest is.
#[derive(Clone)]
pub(crate) struct Located {
    pub(crate) pack: Arc<PackFile>,
    range: Range<u64>,
}

impl Located {
    /// The manifest's bytes, read from the pack.
    pub(crate) fn manifest(&self) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&self.pack.path)?;
        let len = usize::try_from(self.range.end - self.range.start)
            .map_err(|_| std::io::Error::other("manifest too large"))?;
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, self.range.start)?;
        Ok(bytes)
    }
}

/// A directory whose mtime is this close to the time it was listed may
/// change again within the same timestamp tick: list it again (at most
/// every [`RELIST_INTERVAL`]) until its mtime is settled.
const RACY: Duration = Duration::from_millis(100);
const RELIST_INTERVAL: Duration = Duration::from_millis(10);

/// This process's view of `packs/`: the tables of the packs it has seen.
#[derive(Default)]
pub(crate) struct PackIndex {
    /// mtime of `packs/` when it was last listed.
    dir_mtime: Option<SystemTime>,
    /// When it was listed, if its mtime was racy then.
    racy_since: Option<Instant>,
    /// Packs indexed, by file name.
    loaded: BTreeMap<String, Arc<PackFile>>,
    /// foldhash: keys are BLAKE3 hashes, and indexing a pack of 1,000
    /// entries with SipHash was most of the first lookup of a run.
    keys: HashMap<KeyHash, Located, foldhash::fast::FixedState>,
}

impl PackIndex {
    /// The record for `key`, re-reading `dir` first if it changed.
    pub(crate) fn find(&mut self, dir: &Path, key: &KeyHash) -> Option<Located> {
        self.refresh(dir);
        self.keys.get(key).cloned()
    }

    /// Indexes packs that appeared in `dir` since the last call; starts
    /// over when one disappeared (merged or collected by another process).
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
            let Some((file, records)) = read_table(&dir.join(name)) else {
                continue;
            };
            // A pack older than one already indexed must not override it.
            let overrides = newest_loaded.as_ref().is_none_or(|newest| name > newest);
            self.add(name.clone(), file, records, overrides);
        }
        self.dir_mtime = Some(mtime);
        let racy = SystemTime::now()
            .duration_since(mtime)
            .map_or(true, |age| age < RACY);
        self.racy_since = racy.then(Instant::now);
    }

    /// Indexes a pack this process just wrote (its bytes are at hand).
    pub(crate) fn insert(&mut self, name: String, path: PathBuf, bytes: &[u8]) {
        let file = PackFile {
            path,
            last_use: LastUse::new(SystemTime::now()),
        };
        let records = decode_table(bytes, bytes.len() as u64);
        self.add(name, file, records, true);
    }

    fn add(
        &mut self,
        name: String,
        file: PackFile,
        records: Vec<(KeyHash, Range<u64>)>,
        overrides: bool,
    ) {
        let pack = Arc::new(file);
        self.keys.reserve(records.len());
        for (key, range) in records {
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

    /// Forgets everything (after `clear` or `gc`).
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

/// Reads one pack whole; `None` when it is gone.
pub(crate) fn read(path: &Path) -> Option<Pack> {
    let mut file = std::fs::File::open(path).ok()?;
    let last_use = file
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
    Some(Pack {
        path: path.to_owned(),
        bytes,
        last_use: LastUse::new(last_use),
    })
}

/// Reads a pack's table only; `None` when it is gone.
fn read_table(path: &Path) -> Option<(PackFile, Table)> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).ok()?;
    let metadata = file.metadata().ok()?;
    let size = metadata.len();
    let mut preamble = [0u8; PREAMBLE];
    file.read_exact_at(&mut preamble, 0).ok()?;
    let count = u32::from_le_bytes(preamble[PACK_MAGIC.len()..].try_into().ok()?) as usize;
    let table_len = PREAMBLE + count.checked_mul(RECORD)?;
    if table_len as u64 > size {
        return None;
    }
    let mut head = vec![0u8; table_len];
    file.read_exact_at(&mut head, 0).ok()?;
    let records = decode_table(&head, size);
    let pack = PackFile {
        path: path.to_owned(),
        last_use: LastUse::new(metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
    };
    Some((pack, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> KeyHash {
        KeyHash([n; 32])
    }

    #[test]
    fn records_round_trip_and_torn_records_are_left_out() {
        let a = key(1);
        let b = key(2);
        let bytes = encode([(&a, &b"first\nmanifest"[..]), (&b, &b"second"[..])]);
        let records = decode(&bytes);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, a);
        assert_eq!(&bytes[records[0].1.clone()], b"first\nmanifest");
        assert_eq!(&bytes[records[1].1.clone()], b"second");
        // Cut inside the second manifest: only the first survives.
        for cut in records[1].1.clone() {
            assert_eq!(decode(&bytes[..cut]).len(), 1, "cut at {cut}");
        }
        // Cut inside the table: nothing.
        assert!(decode(&bytes[..PREAMBLE + RECORD]).is_empty());
        assert!(decode(b"not a pack").is_empty());
    }

    #[test]
    fn a_rewritten_pack_sorts_after_its_original_and_before_later_packs() {
        let dir = Path::new("/c/packs");
        let original = dir.join("pack-00000000000000000100-7-00000003");
        let later = dir.join("pack-00000000000000000101-7-00000000");
        let once = rewritten(&original);
        let twice = rewritten(&once);
        assert!(once > original && once < later, "{once:?}");
        assert!(twice > original && twice < later, "{twice:?}");
        assert_ne!(once.file_name(), original.file_name());
        assert!(is_pack_name(
            once.file_name().and_then(|n| n.to_str()).unwrap_or("")
        ));
    }

    #[test]
    fn the_newest_pack_wins_and_vanished_packs_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = key(1);
        std::fs::write(dir.path().join("pack-1"), encode([(&a, &b"old"[..])])).expect("write");
        std::fs::write(dir.path().join("pack-2"), encode([(&a, &b"new"[..])])).expect("write");
        let mut index = PackIndex::default();
        let found = |index: &mut PackIndex| {
            index
                .find(dir.path(), &a)
                .map(|located| located.manifest().expect("read"))
        };
        assert_eq!(found(&mut index).as_deref(), Some(&b"new"[..]));
        std::fs::remove_file(dir.path().join("pack-2")).expect("rm");
        // Directory mtimes may not move within a tick: force a re-list.
        index.dir_mtime = None;
        assert_eq!(found(&mut index).as_deref(), Some(&b"old"[..]));
        std::fs::remove_file(dir.path().join("pack-1")).expect("rm");
        index.dir_mtime = None;
        assert!(found(&mut index).is_none());
    }
}
