//! The persistent stat index (like git's index): repo-relative path ->
//! (size, mtime, ctime, inode, device, mode) and the BLAKE3 content hash
//! seen with that stat. A file whose stat is unchanged is not read again, so
//! hashing an unchanged tree costs one `stat` per file.
//!
//! Racy timestamps. A file modified twice within one timestamp tick keeps
//! the same stat, so a hash taken between the two writes would be trusted
//! forever. As git does, an entry is trusted only when the file's mtime is
//! strictly older than a moment known to follow the hash:
//! - in memory, the coarse file-system clock read *before* the file was read
//!   (a later write must then stamp a newer mtime);
//! - after loading, the index file's own mtime (the moment it was written):
//!   an entry whose mtime is not strictly older is re-hashed next time.
//!
//! Untrusted entries are re-read on every call until the clock has moved on.
//!
//! One index belongs to one repository root; `hash_file` is called from many
//! tokio tasks at once, so entries live in mutex-guarded shards and no lock
//! is held while a file is read.
//!
//! # The file
//!
//! A base (every entry, checksummed) followed by a journal: each save that
//! changed a few entries appends one checksummed batch of them (a change
//! run over 1,000 files hashes two or three: ~300 bytes appended instead
//! of the whole 185 KB file rewritten through a temp file). Loading applies
//! the batches in order; a torn or damaged batch ends the journal there and
//! the next save rewrites the whole file. The journal is folded into a new
//! base once it outgrows a fraction of the base. Processes sharing the
//! index append whole batches (`O_APPEND`, one `write` each); a batch lost
//! to another process's rewrite costs only hashing again, since an entry
//! is used only while its file's stat still matches.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::fsutil;
use super::CacheError;

/// File magic and format version of the index file.
const MAGIC: &[u8; 8] = b"CCFIDX\0\x02";
/// The magic of the format before the journal: read as no index.
const MAGIC_V1: &[u8; 8] = b"CCFIDX\0\x01";
/// Length of a journal batch's checksum (a truncated BLAKE3).
const BATCH_CHECKSUM: usize = 16;
/// The journal is folded into a new base once it is larger than this, or
/// than half the base if that is larger.
const JOURNAL_MIN_LIMIT: u64 = 64 * 1024;
const SHARDS: usize = 32;
/// Fixed part of an encoded entry after the path: size, mtime, ctime, ino,
/// dev (8 bytes each), mode (4), flags (1), hash (32).
const FIXED_LEN: usize = 8 * 5 + 4 + 1 + 32;
/// Files up to this size are read in one `read` call.
const SMALL_FILE: u64 = 256 * 1024;

/// The content hash of a file, with the size and mode seen with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHash {
    /// Lowercase hex BLAKE3 of the content.
    pub hash: String,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

/// What the index remembers about one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IndexEntry {
    stat: Stat,
    hash: [u8; 32],
    /// Whether the mtime was strictly older than the hash (see module doc).
    trusted: bool,
}

/// The stat an entry was hashed with.
type Stat = fsutil::FileStat;

/// The persistent stat index. `Send + Sync`.
pub struct StatIndex {
    path: PathBuf,
    shards: Vec<Mutex<Shard>>,
    dirty: AtomicBool,
    files_read: AtomicU64,
    /// The entries changed since the last load or save (`None`: removed),
    /// in order: what the next save appends.
    changes: Mutex<Vec<(String, Option<IndexEntry>)>>,
    /// The next save rewrites the whole file (none yet, damaged, or its
    /// journal too long).
    rewrite: AtomicBool,
    /// Bytes of the base and of the journal in the file as loaded or last
    /// saved.
    base_len: AtomicU64,
    journal_len: AtomicU64,
}

impl StatIndex {
    /// Loads the index at `path`. A missing file gives an empty index; a
    /// corrupt one too, reported once with a warning (it is only a cache).
    pub fn open(path: &Path) -> Result<StatIndex, CacheError> {
        let index = StatIndex {
            path: path.to_owned(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            dirty: AtomicBool::new(false),
            files_read: AtomicU64::new(0),
            changes: Mutex::new(Vec::new()),
            rewrite: AtomicBool::new(true),
            base_len: AtomicU64::new(0),
            journal_len: AtomicU64::new(0),
        };
        let (bytes, written_ns) = match fs_err::File::open(path) {
            Ok(mut file) => {
                let written_ns = fsutil::mtime_ns(&file.metadata()?);
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                (bytes, written_ns)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(index),
            Err(error) => return Err(error.into()),
        };
        if bytes.starts_with(MAGIC_V1) {
            tracing::debug!("file-hash index `{}` is of an older format", path.display());
            index.dirty.store(true, Ordering::Relaxed);
            return Ok(index);
        }
        match decode(&bytes) {
            Some(decoded) => {
                for (rel, entry) in decoded.entries {
                    match entry {
                        Some(mut entry) => {
                            // Git's racy rule: a file stamped in the same
                            // tick as the index write (or later) may have
                            // changed after hashing.
                            if entry.stat.mtime_ns >= written_ns {
                                entry.trusted = false;
                            }
                            index.shard(&rel).insert(rel, entry);
                        }
                        None => {
                            index.shard(&rel).remove(&rel);
                        }
                    }
                }
                index.base_len.store(decoded.base_len, Ordering::Relaxed);
                index
                    .journal_len
                    .store(decoded.journal_len, Ordering::Relaxed);
                if decoded.torn {
                    // Appending after damage would hide every later batch.
                    tracing::debug!(
                        "file-hash index `{}` ends in a damaged batch; it will be rewritten",
                        path.display()
                    );
                    index.dirty.store(true, Ordering::Relaxed);
                } else {
                    index.rewrite.store(false, Ordering::Relaxed);
                }
            }
            None => {
                tracing::warn!(
                    "ignoring corrupt file-hash index `{}`; every file will be hashed again",
                    path.display()
                );
                // Rewrite it on the next save even if nothing is hashed.
                index.dirty.store(true, Ordering::Relaxed);
            }
        }
        Ok(index)
    }

    /// The content hash of `root/rel`: from the index when its stat is
    /// unchanged (and the entry is not racy), else by reading the file.
    pub fn hash_file(&self, root: &Path, rel: &str) -> Result<FileHash, CacheError> {
        self.hash_file_within(root, rel, u64::MAX)
            .map(|hashed| hashed.unwrap_or_else(|| unreachable!("no file is larger than u64::MAX")))
    }

    /// [`StatIndex::hash_file`], but `None` instead of reading a file of
    /// more than `limit` bytes that the index cannot answer for: the
    /// caller hashes it off its thread (the run loop must not stall).
    pub fn hash_file_within(
        &self,
        root: &Path,
        rel: &str,
        limit: u64,
    ) -> Result<Option<FileHash>, CacheError> {
        self.hash_file_seen(root.join(rel), rel, None, limit)
    }

    /// [`StatIndex::hash_file_within`] of `path` (`root` joined with
    /// `rel`), with the file's `stat` when the caller has just taken it
    /// (`seen`), saving a second one.
    ///
    /// # Errors
    /// As [`StatIndex::hash_file_within`].
    pub fn hash_file_seen(
        &self,
        path: PathBuf,
        rel: &str,
        seen: Option<fsutil::FileStat>,
        limit: u64,
    ) -> Result<Option<FileHash>, CacheError> {
        let stat_now = || fs_err::metadata(&path).map(|m| fsutil::FileStat::of(&m));
        let stat = match seen.map_or_else(stat_now, Ok) {
            Ok(stat) => stat,
            Err(error) => {
                crate::memo::absent(&path);
                if error.kind() == io::ErrorKind::NotFound && self.shard(rel).remove(rel).is_some()
                {
                    self.changed(rel, None);
                }
                return Err(error.into());
            }
        };
        if !stat.is_file() {
            return Err(CacheError::NotAFile { path });
        }
        let cached = self.shard(rel).get(rel).copied();
        if let Some(entry) = cached {
            if entry.trusted && entry.stat == stat {
                crate::memo::file(&path, &stat, entry.hash);
                return Ok(Some(file_hash(&entry)));
            }
        }
        if stat.size > limit {
            return Ok(None);
        }

        // Read the clock before the content: if the mtime is older than this
        // moment, any later write must leave a newer mtime behind.
        let before_read = fsutil::coarse_now_ns();
        let mut file = fs_err::File::open(&path)?;
        let hash = if stat.size <= SMALL_FILE {
            let mut bytes = Vec::with_capacity(usize::try_from(stat.size).unwrap_or(0) + 1);
            file.read_to_end(&mut bytes)?;
            *blake3::hash(&bytes).as_bytes()
        } else {
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(&mut file)?;
            *hasher.finalize().as_bytes()
        };
        self.files_read.fetch_add(1, Ordering::Relaxed);
        // The stat of the open file after reading: if the file changed while
        // we read it, the hash may mix two versions and must not be trusted.
        let after = Stat::of(&file.metadata()?);
        let entry = IndexEntry {
            stat: after,
            hash,
            trusted: after == stat && stat.mtime_ns < before_read,
        };
        if cached != Some(entry) {
            self.shard(rel).insert(rel.to_owned(), entry);
            self.changed(rel, Some(entry));
        }
        // With the stat from before the read: a file that changed while it
        // was read no longer matches it.
        crate::memo::file(&path, &stat, hash);
        Ok(Some(file_hash(&entry)))
    }

    /// Notes a change for the next save (after the shard holds it).
    fn changed(&self, rel: &str, entry: Option<IndexEntry>) {
        lock(&self.changes).push((rel.to_owned(), entry));
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Saves what changed since the index was loaded or last saved: one
    /// batch appended to the journal, or the whole file rewritten
    /// atomically (temp file + rename) when there is none yet, it is
    /// damaged, or the journal has grown too long. Does nothing when no
    /// entry changed.
    pub fn save(&self) -> Result<(), CacheError> {
        // Cleared before encoding, so a hash recorded concurrently sets it
        // again and is written by the next save.
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let changes = std::mem::take(&mut *lock(&self.changes));
        if changes.is_empty() && !self.rewrite.load(Ordering::Relaxed) {
            return Ok(());
        }
        let batch = encode_batch(&changes);
        let limit = (self.base_len.load(Ordering::Relaxed) / 2).max(JOURNAL_MIN_LIMIT);
        let journal_len = self.journal_len.load(Ordering::Relaxed);
        let result =
            if self.rewrite.load(Ordering::Relaxed) || journal_len + batch.len() as u64 > limit {
                self.write()
            } else {
                // A file that takes no appends (gone, or read-only) can
                // still be replaced, as every save did before the journal.
                self.append(&batch).or_else(|_| self.write())
            };
        if result.is_err() {
            // Whatever reached the file, the next save writes it all.
            self.rewrite.store(true, Ordering::Relaxed);
            self.dirty.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Appends one batch to the file, which must exist (a rewrite may have
    /// replaced it since: the batch then goes to the new file, which is
    /// as good; [`StatIndex::save`] writes a new one when it is gone).
    fn append(&self, batch: &[u8]) -> Result<(), CacheError> {
        use std::io::Write as _;
        let mut file = fs_err::OpenOptions::new().append(true).open(&self.path)?;
        file.write_all(batch)?;
        self.journal_len
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write(&self) -> Result<(), CacheError> {
        let mut bytes = Vec::with_capacity(16 + self.len() * (FIXED_LEN + 40) + 32);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&0u64.to_le_bytes());
        let count_at = bytes.len();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        for shard in &self.shards {
            let shard = lock(shard);
            for (rel, entry) in shard.iter() {
                let Ok(path_len) = u32::try_from(rel.len()) else {
                    continue;
                };
                bytes.extend_from_slice(&path_len.to_le_bytes());
                bytes.extend_from_slice(rel.as_bytes());
                encode_entry(&mut bytes, entry);
                count += 1;
            }
        }
        bytes[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        let body_len = (bytes.len() - count_at) as u64;
        bytes[MAGIC.len()..count_at].copy_from_slice(&body_len.to_le_bytes());
        let checksum = blake3::hash(&bytes);
        bytes.extend_from_slice(checksum.as_bytes());

        let dir = match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        fs_err::create_dir_all(&dir)?;
        fsutil::write_atomic(&dir, &self.path, &bytes)?;
        self.rewrite.store(false, Ordering::Relaxed);
        self.base_len.store(bytes.len() as u64, Ordering::Relaxed);
        self.journal_len.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// How many entries the index holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Whether the index holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many files this index has read (hashed) since it was opened; the
    /// rest were answered from their stat alone.
    pub fn files_read(&self) -> u64 {
        self.files_read.load(Ordering::Relaxed)
    }

    fn shard(&self, rel: &str) -> MutexGuard<'_, Shard> {
        // FNV-1a: only spreads paths over shards, never part of a key.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in rel.as_bytes() {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        let slot = usize::try_from(hash % SHARDS as u64).unwrap_or(0);
        lock(&self.shards[slot])
    }
}

/// One shard of the index. foldhash rather than SipHash: the keys are the
/// repository's own paths, and a change run looks up thousands of them.
type Shard = HashMap<String, IndexEntry, foldhash::fast::FixedState>;

/// Locks a shard; a panic in another thread while holding it cannot leave an
/// entry half-written (inserts are single moves), so poison is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn file_hash(entry: &IndexEntry) -> FileHash {
    FileHash {
        hash: blake3::Hash::from_bytes(entry.hash).to_hex().to_string(),
        size: entry.stat.size,
        mode: entry.stat.mode & 0o7777,
    }
}

fn encode_entry(bytes: &mut Vec<u8>, entry: &IndexEntry) {
    let stat = &entry.stat;
    bytes.extend_from_slice(&stat.size.to_le_bytes());
    bytes.extend_from_slice(&stat.mtime_ns.to_le_bytes());
    bytes.extend_from_slice(&stat.ctime_ns.to_le_bytes());
    bytes.extend_from_slice(&stat.ino.to_le_bytes());
    bytes.extend_from_slice(&stat.dev.to_le_bytes());
    bytes.extend_from_slice(&stat.mode.to_le_bytes());
    bytes.push(u8::from(entry.trusted));
    bytes.extend_from_slice(&entry.hash);
}

/// One batch of the journal: its length, the changes, and a checksum of
/// both (see [`decode_batch`]).
fn encode_batch(changes: &[(String, Option<IndexEntry>)]) -> Vec<u8> {
    let mut bytes = vec![0; 8];
    let mut count = 0u32;
    for (rel, entry) in changes {
        let Ok(path_len) = u32::try_from(rel.len()) else {
            continue;
        };
        bytes.push(u8::from(entry.is_some()));
        bytes.extend_from_slice(&path_len.to_le_bytes());
        bytes.extend_from_slice(rel.as_bytes());
        if let Some(entry) = entry {
            encode_entry(&mut bytes, entry);
        }
        count += 1;
    }
    let body_len = u32::try_from(bytes.len() - 4).unwrap_or(u32::MAX);
    bytes[..4].copy_from_slice(&body_len.to_le_bytes());
    bytes[4..8].copy_from_slice(&count.to_le_bytes());
    let checksum = blake3::hash(&bytes);
    bytes.extend_from_slice(&checksum.as_bytes()[..BATCH_CHECKSUM]);
    bytes
}

/// An index file read: every entry of the base, then every change of the
/// journal in order (`None`: removed).
struct Decoded {
    entries: Vec<(String, Option<IndexEntry>)>,
    base_len: u64,
    journal_len: u64,
    /// The journal ends in bytes that are not a whole, intact batch.
    torn: bool,
}

/// Decodes an index file; `None` when its base is not complete and intact
/// (a damaged journal batch only ends the journal).
fn decode(bytes: &[u8]) -> Option<Decoded> {
    let mut reader = Reader { bytes };
    if reader.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let body_len = usize::try_from(reader.u64()?).ok()?;
    let base_len = (MAGIC.len() + 8).checked_add(body_len)?;
    let (base, checksum) = bytes
        .get(..base_len)
        .zip(bytes.get(base_len..base_len.checked_add(32)?))?;
    if blake3::hash(base).as_bytes() != checksum {
        return None;
    }
    let mut body = Reader {
        bytes: &base[MAGIC.len() + 8..],
    };
    let count = body.u32()?;
    // Never trust a count for an allocation beyond what the bytes can hold.
    let mut entries = Vec::with_capacity(usize::try_from(count).ok()?.min(body_len / FIXED_LEN));
    for _ in 0..count {
        let rel = body.path()?;
        entries.push((rel, Some(body.entry()?)));
    }
    if !body.bytes.is_empty() {
        return None;
    }
    let mut journal = Reader {
        bytes: &bytes[base_len + 32..],
    };
    let journal_len = journal.bytes.len() as u64;
    let mut torn = false;
    while !journal.bytes.is_empty() {
        if decode_batch(&mut journal, &mut entries).is_none() {
            torn = true;
            break;
        }
    }
    Some(Decoded {
        entries,
        base_len: (base_len + 32) as u64,
        journal_len,
        torn,
    })
}

/// Reads one batch into `entries`; `None`, adding nothing, when it is not
/// whole and intact.
fn decode_batch(
    journal: &mut Reader<'_>,
    entries: &mut Vec<(String, Option<IndexEntry>)>,
) -> Option<()> {
    let start = journal.bytes;
    let body_len = usize::try_from(journal.u32()?).ok()?;
    let body = journal.take(body_len)?;
    let checksum = journal.take(BATCH_CHECKSUM)?;
    if blake3::hash(&start[..4 + body_len]).as_bytes()[..BATCH_CHECKSUM] != *checksum {
        return None;
    }
    let mut body = Reader { bytes: body };
    let count = body.u32()?;
    let mut changes = Vec::new();
    for _ in 0..count {
        let present = body.take(1)?[0] == 1;
        let rel = body.path()?;
        let entry = if present { Some(body.entry()?) } else { None };
        changes.push((rel, entry));
    }
    if !body.bytes.is_empty() {
        return None;
    }
    entries.extend(changes);
    Some(())
}

/// A cursor over little-endian fields; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < len {
            return None;
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn path(&mut self) -> Option<String> {
        let path_len = usize::try_from(self.u32()?).ok()?;
        Some(std::str::from_utf8(self.take(path_len)?).ok()?.to_owned())
    }

    fn entry(&mut self) -> Option<IndexEntry> {
        let stat = Stat {
            size: self.u64()?,
            mtime_ns: self.i64()?,
            ctime_ns: self.i64()?,
            ino: self.u64()?,
            dev: self.u64()?,
            mode: self.u32()?,
        };
        let trusted = self.take(1)?[0] == 1;
        let hash: [u8; 32] = self.take(32)?.try_into().ok()?;
        Some(IndexEntry {
            stat,
            hash,
            trusted,
        })
    }
}

#[cfg(test)]
mod tests;
