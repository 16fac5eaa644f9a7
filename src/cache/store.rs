//! The content-addressed store: output files, logs and attachments as blobs
//! named by their BLAKE3 hash, and one manifest per cache key naming them.
//!
//! Layout under `CACHE_DIR/v1/` (the format version is part of the path):
//! - `blobs/<hash>` — file contents, named by their hash (one flat
//!   directory: creating 256 fan-out directories cost more than a large
//!   directory's lookups, which ext4 and xfs index);
//! - `packs/pack-<time>-<pid>-<n>` — manifests, one pack per published
//!   batch (see [`super::pack`]); each manifest is a header line
//!   `ccflow-manifest 2 <blake3 of the body>` then the [`Entry`] as JSON;
//!   a pack's mtime records the last use of its entries for LRU gc;
//! - `entries/<key hash>.json` — one manifest per file, as stores written
//!   before packs kept them: still read, collected and cleared;
//! - `instances/log-<time>-<pid>` — one append-only file per process:
//!   lines `<blake3 of an instance id> <key hash>` naming an instance's
//!   latest entry, for `ccflow explain` (the newest file naming an instance
//!   wins; one file per run rather than one per instance, because creating
//!   files is most of what saving an entry costs). Older stores kept one
//!   file per instance, `instances/<blake3 of the instance id>`, still read;
//! - `tmp/` — temp files, renamed into place (same file system).
//!
//! # Durability without an fsync per entry
//!
//! Every file is written to a uniquely named temp file (pid + counter) and
//! renamed into place, so no reader ever sees a partial file, and several
//! processes can share a store without locks. What must never happen is a
//! visible manifest naming a blob that is not complete, after a SIGKILL or
//! a power loss. The order of operations guarantees it:
//!
//! 1. `save` writes each blob to a temp file and renames it into `blobs/`
//!    (a blob is immutable once named: its name is its content hash);
//! 2. `save` then hands the manifests to a background flusher thread and
//!    returns: the caller pays for writing blobs, not for any fsync, nor for
//!    encoding the manifests (see [`LazyManifest`]);
//! 3. the flusher takes everything queued so far as one batch, makes its
//!    blobs durable (an `fdatasync` of each and an `fsync` of `blobs/` for
//!    up to [`SYNC_EACH_BLOB_UP_TO`] blobs, else one `syncfs`), and only
//!    then renames the batch's manifests and instance pointers into place.
//!    A batch naming no blob (every output small enough to be inlined in
//!    its manifest, no log) syncs nothing: there is nothing a manifest
//!    could point at that is not durable.
//!
//! While a batch is being synced, new saves queue up behind it, so batches
//! grow with the load (group commit). `flush()` waits until everything
//! saved before it is published; the scheduler calls it at the end of a run
//! (and may call it every N saves, bounding what a SIGKILL can lose).
//! `Drop` drains the queue too.
//!
//! `syncfs` only for large batches: it is one call whatever the batch size,
//! but it also writes out every other dirty file of the file system (the
//! run's outputs and logs, agents' worktrees about to be removed). That
//! happens on the flusher thread, off the caller's path, except for the
//! last batch `flush()` waits for: 18-150 ms at the end of a cold run of
//! 1,000 tasks, against 1 ms for syncing the one blob it named.
//!
//! After a SIGKILL at any point, the page cache survives, so every renamed
//! blob is complete, and a manifest is only visible once its blobs were
//! renamed (and synced). Manifests not yet published are lost: those tasks
//! are misses next time, never wrong results. After a power loss, blobs named
//! by a visible manifest were synced before it was renamed; the manifest
//! itself may be torn, which its checksum detects. Readers check the
//! manifest's checksum and that every blob exists with the right size, and
//! `restore`/`read_blob` verify content hashes while copying, so a blob
//! damaged later is an error (and is deleted), never a wrong file.
//!
//! Manifests saved by this process but not yet published are served to its
//! own lookups from memory, so identical instances in one run still hit.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use super::entry::{decode_manifest, encode_manifest};
pub use super::entry::{Entry, NewEntry, OutputFile};
use super::fsutil::{self, RESTORE_TEMP, STORE_TEMP};
use super::index::StatIndex;
use super::key::{parse_hex32, KeyHash, CACHE_FORMAT_VERSION};
use super::pack::{self, Located, Pack, PackIndex};
use super::CacheError;

/// Files up to this size are read into memory (hash first, then write only
/// if the blob is new); larger ones are reflinked or streamed.
const SMALL_FILE: u64 = 1024 * 1024;
/// A hit re-stamps its manifest's mtime (last use) only when older than this.
const TOUCH_RESOLUTION: Duration = Duration::from_secs(600);
/// Temp files older than this are leftovers of killed processes.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// What [`Store::restore`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Paths written (new or different content).
    pub written: Vec<String>,
    /// Paths already identical (content and mode), left untouched.
    pub skipped: Vec<String>,
    /// Paths whose content was identical but whose mode was fixed.
    pub chmodded: Vec<String>,
    pub bytes_written: u64,
}

/// Size of the store, for `ccflow cache stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub entries: u64,
    pub blobs: u64,
    /// Bytes of manifests and blobs.
    pub bytes: u64,
}

/// What [`Store::gc`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub entries_removed: u64,
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub bytes_after: u64,
}

/// The cache store. `Send + Sync`; its methods block on file I/O, so async
/// callers run them in `spawn_blocking`.
pub struct Store {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    /// `CACHE_DIR/v1`.
    dir: PathBuf,
    /// Open handle on `dir`, for `syncfs`.
    dir_handle: File,
    state: Mutex<FlushState>,
    /// Wakes the flusher when work is queued or on shutdown.
    work: Condvar,
    /// Wakes `flush()` callers when a batch is published.
    progress: Condvar,
    /// Keys already reported as corrupt, so each is warned about once.
    warned: Mutex<HashSet<KeyHash>>,
    /// Roots this store restored into or saved from, with their canonical
    /// paths: canonicalizing costs a `readlink` per component, per call.
    roots: Mutex<HashMap<PathBuf, PathBuf>>,
    /// This process's instance-pointer log, opened on first publish.
    pointer_log: Mutex<Option<File>>,
    /// The packs this process has read or written.
    packs: Mutex<PackIndex>,
    /// Packs this process published (names them).
    packs_published: std::sync::atomic::AtomicU64,
    /// Whether `entries/` held per-entry manifests when the store was
    /// opened (a store from before packs): only then is it read on a miss.
    legacy_entries: bool,
    /// This process's staging directory for restores and its device, made
    /// on first use (see [`Shared::restore_staging`]).
    staging: std::sync::OnceLock<Option<(PathBuf, u64)>>,
}

#[derive(Default)]
struct FlushState {
    queue: Vec<Pending>,
    /// Manifests queued but not published yet, served to this process's
    /// lookups: key -> (sequence number, manifest bytes).
    unpublished: HashMap<KeyHash, (u64, Arc<LazyManifest>)>,
    /// Instance pointers not published yet: instance id -> (sequence, key).
    unpublished_instances: HashMap<String, (u64, KeyHash)>,
    enqueued: u64,
    published: u64,
    error: Option<CacheError>,
    shutdown: bool,
    /// A `flush()` is waiting: publish without waiting out the window.
    urgent: bool,
}

/// One `save` waiting for its blobs to be durable.
struct Pending {
    sequence: u64,
    manifests: Vec<(KeyHash, Arc<LazyManifest>)>,
    instance_id: String,
    latest: KeyHash,
    /// The blobs the entry names (which must be durable before its
    /// manifest is visible); outputs inlined in the manifest need no sync.
    blobs: Vec<PathBuf>,
}

/// A batch naming up to this many blobs syncs each of them (and the blob
/// directory) rather than the whole file system (see the module docs). A
/// batch of 8 agent instances names about 24 (transcript, diff, log).
const SYNC_EACH_BLOB_UP_TO: usize = 64;

impl Store {
    /// Opens (creating it if needed) the store under `cache_dir/v1`.
    pub fn open(cache_dir: &Path) -> Result<Store, CacheError> {
        let dir = cache_dir.join(format!("v{CACHE_FORMAT_VERSION}"));
        for sub in ["blobs", "entries", "packs", "instances", "tmp"] {
            fs_err::create_dir_all(dir.join(sub))?;
        }
        let dir_handle = fs_err::File::open(&dir)?.into_parts().0;
        let legacy_entries = std::fs::read_dir(dir.join("entries"))
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false);
        let shared = Arc::new(Shared {
            dir,
            dir_handle,
            state: Mutex::new(FlushState::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
            warned: Mutex::new(HashSet::new()),
            roots: Mutex::new(HashMap::new()),
            pointer_log: Mutex::new(None),
            packs: Mutex::new(PackIndex::default()),
            packs_published: std::sync::atomic::AtomicU64::new(0),
            legacy_entries,
            staging: std::sync::OnceLock::new(),
        });
        compact_pointer_logs(&shared.dir.join("instances"));
        // Indexed now, on the caller's thread (`ccflow run` opens the store
        // beside its planning), rather than by the run's first lookup.
        lock(&shared.packs).refresh(&shared.packs_dir());
        let flusher = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("ccflow-cache-flush".to_owned())
                .spawn(move || {
                    compact_packs(&shared);
                    run_flusher(&shared);
                })?
        };
        Ok(Store {
            shared,
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// The directory holding this store's format version (`CACHE_DIR/v1`).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The entry stored under `key`, if there is a complete one. A torn or
    /// corrupt manifest, or one naming a missing blob, is a miss (warned
    /// about once per key), never an error and never a wrong result.
    pub fn lookup(&self, key: &KeyHash) -> Result<Option<Entry>, CacheError> {
        let Some((bytes, source)) = self.shared.stored_manifest(key)? else {
            return Ok(None);
        };
        let entry = match decode_manifest(&bytes, key).and_then(|entry| self.check_blobs(entry)) {
            Ok(entry) => entry,
            Err(reason) => {
                if lock(&self.shared.warned).insert(*key) {
                    tracing::warn!("ignoring cache entry `{key}`: {reason}");
                }
                return Ok(None);
            }
        };
        source.record_use(key);
        Ok(Some(entry))
    }

    /// Checks that every blob of `entry` exists (with the recorded size).
    fn check_blobs(&self, entry: Entry) -> Result<Entry, String> {
        for (hash, size) in entry.blobs() {
            let path = self
                .shared
                .blob_path(hash)
                .ok_or_else(|| format!("invalid blob name `{hash}`"))?;
            match std::fs::metadata(&path) {
                Ok(metadata)
                    if metadata.is_file() && size.is_none_or(|size| metadata.len() == size) => {}
                Ok(_) => return Err(format!("blob `{hash}` has the wrong size")),
                Err(_) => return Err(format!("blob `{hash}` is missing")),
            }
        }
        Ok(entry)
    }

    /// Stores `new`'s output files, log and attachments as blobs and its
    /// manifest under every key in `keys` (an in-place task saves under its
    /// pre-state and post-state keys; empty means `new.key.hash()`), and
    /// points the instance at it. The manifests become visible once the
    /// blobs are durable (see the module doc); lookups from this process see
    /// them at once.
    pub fn save(
        &self,
        keys: &[KeyHash],
        new: NewEntry,
        root: &Path,
    ) -> Result<Arc<Entry>, CacheError> {
        let own_hash = new.key.hash();
        self.save_hashed(keys, own_hash, new, root)
    }

    /// [`Store::save`] for a caller that has hashed `new.key` already
    /// (`own_hash`): a reduce's key lists every input, and hashing it is
    /// not free.
    pub fn save_hashed(
        &self,
        keys: &[KeyHash],
        own_hash: KeyHash,
        new: NewEntry,
        root: &Path,
    ) -> Result<Arc<Entry>, CacheError> {
        let (root_canonical, _) = self.shared.canonical_root(root)?;
        let mut outputs: BTreeMap<String, OutputFile> = BTreeMap::new();
        for rel in &new.outputs {
            let path = normalize_rel(rel)?.into_owned();
            if outputs.contains_key(&path) {
                continue;
            }
            if !inside_root(root, &root_canonical, &path)? {
                return Err(CacheError::OutputOutsideRoot { path: rel.clone() });
            }
            let output = self.shared.store_output(&root.join(&path), path.clone())?;
            outputs.insert(path, output);
        }
        let log = match &new.log {
            Some(path) => Some(self.shared.store_file(path)?.0),
            None => None,
        };
        let mut attachments = BTreeMap::new();
        for (name, path) in &new.attachments {
            attachments.insert(name.clone(), self.shared.store_file(path)?.0);
        }

        let keys: Vec<KeyHash> = if keys.is_empty() {
            vec![own_hash]
        } else {
            keys.to_vec()
        };
        let latest = if keys.contains(&own_hash) {
            own_hash
        } else {
            keys[0]
        };
        let entry = Entry {
            key: new.key,
            key_hash: latest,
            instance_id: new.instance_id,
            outputs: outputs.into_values().collect(),
            exit_code: new.exit_code,
            log,
            attachments,
            post_state: new.post_state,
            metadata: new.metadata,
            created_unix_ms: fsutil::now_unix_ms(),
        };
        let blobs = entry
            .blobs()
            .filter_map(|(hash, _)| self.shared.blob_path(hash))
            .collect();
        let entry = Arc::new(entry);
        let manifests = keys
            .iter()
            .map(|key| {
                // Another key (an in-place task's post-state): a copy that
                // names it.
                let named = if *key == latest {
                    Arc::clone(&entry)
                } else {
                    Arc::new(Entry {
                        key_hash: *key,
                        ..(*entry).clone()
                    })
                };
                (*key, Arc::new(LazyManifest::new(named)))
            })
            .collect();
        self.shared
            .enqueue(manifests, entry.instance_id.clone(), latest, blobs);
        Ok(entry)
    }

    /// Whether every output of `entry` is already in place under `root`
    /// (same content and mode), so that a restore would write nothing. A
    /// stat per output through the index; `false` on any doubt.
    pub fn is_restored(&self, entry: &Entry, root: &Path, index: Option<&StatIndex>) -> bool {
        entry.outputs.iter().all(|output| {
            normalize_rel(&output.path).is_ok_and(|rel| {
                matches!(
                    identical_file(&root.join(&*rel), root, &rel, output, index),
                    Ok(Some(mode)) if mode == output.mode & 0o7777
                )
            })
        })
    }

    /// Writes `entry`'s outputs under `root`; see [`Store::restore_with_index`].
    pub fn restore(&self, entry: &Entry, root: &Path) -> Result<RestoreReport, CacheError> {
        self.restore_with_index(entry, root, None)
    }

    /// Writes `entry`'s outputs under `root`, all or nothing: every blob is
    /// first copied (verifying its hash) to a temp file beside its target,
    /// and only when all are good are they renamed into place, with their
    /// modes. Files already identical are left untouched (their mtime
    /// unchanged); `index`, when given, answers "identical?" from a stat.
    /// A corrupt blob is an error (and is deleted from the store) and no
    /// file is written.
    pub fn restore_with_index(
        &self,
        entry: &Entry,
        root: &Path,
        index: Option<&StatIndex>,
    ) -> Result<RestoreReport, CacheError> {
        let (root_canonical, root_dev) = self.shared.canonical_root(root)?;
        // Files are staged in this process's staging directory when it is
        // on the root's file system (the rename needs that), else beside
        // their targets; an output on another mount below the root gets a
        // copy (see `publish_staged`).
        let staging = self
            .shared
            .restore_staging()
            .filter(|(_, dev)| *dev == root_dev)
            .map(|(dir, _)| dir.as_path());
        let mut report = RestoreReport::default();
        let mut staged = StagedFiles::default();
        let mut chmods = Vec::new();
        for output in &entry.outputs {
            let rel = normalize_rel(&output.path)?.into_owned();
            let target = root.join(&rel);
            let mode = output.mode & 0o7777;
            if let Some(existing_mode) = identical_file(&target, root, &rel, output, index)? {
                if existing_mode == mode {
                    report.skipped.push(rel);
                } else {
                    chmods.push((target, rel, mode, output.hash.clone()));
                }
                continue;
            }
            let parent = match target.parent() {
                Some(parent) => parent.to_owned(),
                None => return Err(CacheError::OutputOutsideRoot { path: rel }),
            };
            if !parent_inside_root(root, &root_canonical, &rel)? {
                return Err(CacheError::OutputOutsideRoot { path: rel });
            }
            let (file, temp) = match staging {
                Some(dir) => fsutil::create_temp(dir, RESTORE_TEMP, 0o600)
                    .or_else(|_| fsutil::create_temp(&parent, RESTORE_TEMP, 0o600))?,
                None => fsutil::create_temp(&parent, RESTORE_TEMP, 0o600)?,
            };
            staged.files.push(StagedFile {
                temp: temp.clone(),
                target,
                rel,
                size: output.size,
                hash: output.hash.clone(),
            });
            let (mut file, _) = file.into_parts();
            match &output.inline {
                Some(hex) => {
                    // The manifest's checksum covers it; verified anyway.
                    let bytes = super::entry::from_hex(hex)
                        .filter(|bytes| fsutil::hash_bytes(bytes) == output.hash)
                        .ok_or_else(|| CacheError::CorruptBlob {
                            hash: output.hash.clone(),
                            path: self.shared.entry_path(&entry.key_hash),
                        })?;
                    file.write_all(&bytes)?;
                }
                None => self.shared.copy_blob_verified(&output.hash, &file, &temp)?,
            }
            // On the descriptor: the mode given at creation is masked by the
            // umask, and this saves a path lookup.
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|error| {
                    io::Error::new(
                        error.kind(),
                        format!("failed to set the mode of `{}`: {error}", temp.display()),
                    )
                })?;
        }
        // Every blob verified: publish. A failure here leaves some files
        // restored, each one complete.
        while staged.renamed < staged.files.len() {
            let file = &staged.files[staged.renamed];
            publish_staged(&file.temp, &file.target)?;
            // What the up-to-date memo must see of it from now on.
            if let (Ok(metadata), Some(hash)) =
                (std::fs::metadata(&file.target), parse_hex32(&file.hash))
            {
                crate::memo::rewritten(&file.target, &fsutil::FileStat::of(&metadata), hash);
            }
            report.written.push(file.rel.clone());
            report.bytes_written += file.size;
            staged.renamed += 1;
        }
        let mut parents: Vec<&Path> = staged
            .files
            .iter()
            .filter_map(|f| f.target.parent())
            .collect();
        parents.sort();
        parents.dedup();
        for parent in parents {
            crate::memo::dir_rewritten(parent);
        }
        for (target, rel, mode, hash) in chmods {
            fs_err::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
            if let (Ok(metadata), Some(hash)) = (std::fs::metadata(&target), parse_hex32(&hash)) {
                crate::memo::rewritten(&target, &fsutil::FileStat::of(&metadata), hash);
            }
            report.chmodded.push(rel);
        }
        Ok(report)
    }

    /// The content of blob `hash`, verified against its name.
    pub fn read_blob(&self, hash: &str) -> Result<Vec<u8>, CacheError> {
        let path = self
            .shared
            .blob_path(hash)
            .ok_or_else(|| CacheError::InvalidHash {
                text: hash.to_owned(),
            })?;
        let bytes = match fs_err::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::MissingBlob {
                    hash: hash.to_owned(),
                })
            }
            Err(error) => return Err(error.into()),
        };
        if fsutil::hash_bytes(&bytes) != hash {
            return Err(self.shared.corrupt_blob(hash, path));
        }
        Ok(bytes)
    }

    /// The latest entry saved for `instance_id` (for `ccflow explain`), if
    /// it is still complete.
    pub fn latest_for_instance(&self, instance_id: &str) -> Result<Option<Entry>, CacheError> {
        let unpublished = lock(&self.shared.state)
            .unpublished_instances
            .get(instance_id)
            .map(|(_, key)| *key);
        let key = match unpublished {
            Some(key) => key,
            None => {
                let instance = fsutil::hash_bytes(instance_id.as_bytes());
                match latest_pointer(&self.shared.dir.join("instances"), &instance)? {
                    Some(key) => key,
                    None => return Ok(None),
                }
            }
        };
        self.lookup(&key)
    }

    /// Waits until every entry saved before this call is published (its
    /// blobs synced, its manifest renamed into place). Reports (once) a
    /// failure of the background flusher since the last call.
    ///
    /// It does not sync the manifests themselves: each batch's `syncfs`
    /// also makes the previous batches' manifests durable, and losing the
    /// last batch's manifests to a power cut only turns them into misses.
    pub fn flush(&self) -> Result<(), CacheError> {
        let mut state = lock(&self.shared.state);
        let target = state.enqueued;
        if state.published < target {
            state.urgent = true;
            self.shared.work.notify_all();
        }
        while state.published < target && state.error.is_none() {
            state = self
                .shared
                .progress
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(error) = state.error.take() {
            return Err(CacheError::Flush {
                source: Box::new(error),
            });
        }
        Ok(())
    }

    /// Counts entries and blobs and their bytes.
    pub fn stats(&self) -> Result<StoreStats, CacheError> {
        let mut stats = StoreStats::default();
        for (_, metadata) in list_files(&self.shared.dir.join("entries"))? {
            stats.entries += 1;
            stats.bytes += metadata.len();
        }
        let mut keys = HashSet::new();
        for pack in self.shared.read_packs() {
            stats.bytes += pack.bytes.len() as u64;
            keys.extend(pack::decode(&pack.bytes).into_iter().map(|(key, _)| key));
        }
        stats.entries += keys.len() as u64;
        for (_, size) in self.shared.list_blobs()? {
            stats.blobs += 1;
            stats.bytes += size;
        }
        Ok(stats)
    }

    /// Evicts the least recently used entries until manifests and blobs fit
    /// in `max_size` bytes, then removes blobs no entry references, stale
    /// temp files and dangling instance pointers. Another process saving at
    /// the same time may lose an entry (a miss), never get a wrong one.
    pub fn gc(&self, max_size: u64) -> Result<GcReport, CacheError> {
        self.flush()?;
        let shared = &self.shared;
        let mut report = GcReport::default();
        let blobs: HashMap<String, u64> = shared.list_blobs()?.into_iter().collect();

        // (last use, where, manifest size, blobs) of every readable entry.
        let mut entries: Vec<(SystemTime, Stored, u64, Vec<String>)> = Vec::new();
        for (path, metadata) in list_files(&shared.dir.join("entries"))? {
            let decoded = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse::<KeyHash>().ok())
                .and_then(|key| {
                    let bytes = fs_err::read(&path).ok()?;
                    decode_manifest(&bytes, &key).ok()
                });
            let Some(entry) = decoded else {
                // Unreadable manifests are misses anyway; reclaim them.
                remove_counting(&path, metadata.len(), &mut report)?;
                report.entries_removed += 1;
                continue;
            };
            let hashes: Vec<String> = entry.blobs().map(|(hash, _)| hash.to_owned()).collect();
            if !hashes.iter().all(|hash| blobs.contains_key(hash)) {
                // A blob is gone: the entry is a miss forever, reclaim it.
                remove_counting(&path, metadata.len(), &mut report)?;
                report.entries_removed += 1;
                continue;
            }
            let last_use = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push((last_use, Stored::File(path), metadata.len(), hashes));
        }
        // Packs, newest first: a key already seen is superseded.
        let mut packs = shared.read_packs();
        packs.sort_by(|a, b| b.path.cmp(&a.path));
        let mut seen = HashSet::new();
        let mut kept_records: Vec<Vec<bool>> = Vec::with_capacity(packs.len());
        for (pack_index, pack) in packs.iter().enumerate() {
            let records = pack::decode(&pack.bytes);
            let mut kept = vec![false; records.len()];
            for (record, (key, range)) in records.into_iter().enumerate() {
                if !seen.insert(key) {
                    continue;
                }
                let Ok(entry) = decode_manifest(&pack.bytes[range.clone()], &key) else {
                    report.entries_removed += 1;
                    continue;
                };
                let hashes: Vec<String> = entry.blobs().map(|(hash, _)| hash.to_owned()).collect();
                if !hashes.iter().all(|hash| blobs.contains_key(hash)) {
                    report.entries_removed += 1;
                    continue;
                }
                kept[record] = true;
                let size = range.len() as u64;
                entries.push((
                    pack.last_use.time(),
                    Stored::Packed(pack_index, record),
                    size,
                    hashes,
                ));
            }
            kept_records.push(kept);
        }
        // Most recently used first; entries of one pack share its time, and
        // among equals the smaller go first (more of them fit).
        entries.sort_by_key(|entry| (std::cmp::Reverse(entry.0), entry.2));

        let mut kept_blobs: HashSet<String> = HashSet::new();
        let mut used = 0u64;
        let mut evicting = false;
        for (_, stored, size, hashes) in entries {
            let new_blobs: HashSet<&String> = hashes
                .iter()
                .filter(|hash| !kept_blobs.contains(*hash))
                .collect();
            let extra = size
                + new_blobs
                    .iter()
                    .filter_map(|hash| blobs.get(*hash))
                    .sum::<u64>();
            // Strict LRU: once an entry does not fit, it and every entry
            // used less recently go.
            if !evicting && used + extra <= max_size {
                used += extra;
                kept_blobs.extend(hashes);
            } else {
                evicting = true;
                match stored {
                    Stored::File(path) => remove_counting(&path, size, &mut report)?,
                    Stored::Packed(pack, record) => kept_records[pack][record] = false,
                }
                report.entries_removed += 1;
            }
        }
        for (pack, kept) in packs.iter().zip(&kept_records) {
            shared.rewrite_pack(pack, kept, &mut report)?;
        }
        lock(&shared.packs).reset();
        for (hash, size) in &blobs {
            if !kept_blobs.contains(hash) {
                if let Some(path) = shared.blob_path(hash) {
                    remove_counting(&path, *size, &mut report)?;
                    report.blobs_removed += 1;
                }
            }
        }
        // Leftovers of killed processes.
        let now = SystemTime::now();
        for (path, metadata) in list_files(&shared.dir.join("tmp"))? {
            let age = metadata
                .modified()
                .ok()
                .and_then(|modified| now.duration_since(modified).ok());
            if age.is_some_and(|age| age > STALE_TEMP) {
                remove_counting(&path, metadata.len(), &mut report)?;
            }
        }
        for (path, _) in list_files(&shared.dir.join("instances"))? {
            if is_pointer_log(&path) {
                continue;
            }
            let target = fs_err::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse::<KeyHash>().ok());
            if target.is_none_or(|key| !shared.entry_exists(&key)) {
                remove_counting(&path, 0, &mut report)?;
            }
        }
        report.bytes_after = self.stats()?.bytes;
        Ok(report)
    }

    /// Removes every entry and blob.
    pub fn clear(&self) -> Result<(), CacheError> {
        self.flush()?;
        for sub in ["entries", "packs", "blobs", "instances", "tmp"] {
            let path = self.shared.dir.join(sub);
            match fs_err::remove_dir_all(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
            fs_err::create_dir_all(&path)?;
        }
        lock(&self.shared.warned).clear();
        lock(&self.shared.packs).reset();
        Ok(())
    }
}

impl Drop for Store {
    /// Publishes everything still queued, then stops the flusher.
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.work.notify_all();
        if let Some(handle) = lock(&self.flusher).take() {
            let _ = handle.join();
        }
        if let Some(Some((staging, _))) = self.shared.staging.get() {
            let _ = std::fs::remove_dir_all(staging);
        }
    }
}

impl Shared {
    /// `root`'s canonical path (creating `root` if needed), computed once
    /// while `root` stays a directory, and its device.
    fn canonical_root(&self, root: &Path) -> Result<(PathBuf, u64), CacheError> {
        if let Some(canonical) = lock(&self.roots).get(root) {
            if let Ok(metadata) = std::fs::symlink_metadata(root) {
                if metadata.is_dir() {
                    return Ok((canonical.clone(), metadata.dev()));
                }
            }
        }
        fs_err::create_dir_all(root)?;
        let canonical = fs_err::canonicalize(root)?;
        let dev = fs_err::metadata(&canonical)?.dev();
        lock(&self.roots).insert(root.to_owned(), canonical.clone());
        Ok((canonical, dev))
    }

    fn blob_path(&self, hash: &str) -> Option<PathBuf> {
        parse_hex32(hash)?;
        Some(self.dir.join("blobs").join(hash))
    }

    fn entry_path(&self, key: &KeyHash) -> PathBuf {
        self.dir.join("entries").join(format!("{key}.json"))
    }

    fn packs_dir(&self) -> PathBuf {
        self.dir.join("packs")
    }

    /// `key`'s manifest in a pack, if any pack holds it.
    fn find_packed(&self, key: &KeyHash) -> Option<Located> {
        lock(&self.packs).find(&self.packs_dir(), key)
    }

    /// The manifest bytes stored under `key` and where they came from:
    /// this process's unpublished saves, a pack, or (stores from before
    /// packs) a manifest file.
    fn stored_manifest(&self, key: &KeyHash) -> Result<Option<StoredManifest>, CacheError> {
        let unpublished = lock(&self.state)
            .unpublished
            .get(key)
            .map(|(_, manifest)| Arc::clone(manifest));
        if let Some(manifest) = unpublished {
            // Encoded here if the flusher has not yet; one that cannot be
            // is never published either: a miss.
            return Ok(manifest.bytes().map(|bytes| (bytes, Source::Memory)));
        }
        if let Some(located) = self.find_packed(key) {
            // Unreadable: merged or collected meanwhile by another process.
            return Ok(located
                .manifest()
                .ok()
                .map(|bytes| (Arc::new(bytes), Source::Pack(located))));
        }
        if !self.legacy_entries {
            return Ok(None);
        }
        let path = self.entry_path(key);
        match read_with_mtime(&path) {
            Ok((bytes, modified)) => Ok(Some((Arc::new(bytes), Source::File(path, modified)))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Whether a manifest for `key` is stored (valid or not).
    fn entry_exists(&self, key: &KeyHash) -> bool {
        self.find_packed(key).is_some() || self.entry_path(key).exists()
    }

    /// Every pack now in `packs/`, read.
    fn read_packs(&self) -> Vec<Pack> {
        let dir = self.packs_dir();
        pack::list(&dir)
            .into_iter()
            .filter_map(|name| pack::read(&dir.join(name)))
            .collect()
    }

    /// Rewrites `pack` with only the records marked kept (removing it when
    /// none is), keeping its last-use time; counts what it frees.
    fn rewrite_pack(
        &self,
        pack: &Pack,
        kept: &[bool],
        report: &mut GcReport,
    ) -> Result<(), CacheError> {
        if kept.iter().all(|k| *k) && !kept.is_empty() {
            return Ok(());
        }
        let size = pack.bytes.len() as u64;
        if !kept.iter().any(|k| *k) {
            return remove_counting(&pack.path, size, report);
        }
        let records = pack::decode(&pack.bytes);
        let bytes = pack::encode(
            records
                .iter()
                .zip(kept)
                .filter(|(_, kept)| **kept)
                .map(|((key, range), _)| (key, &pack.bytes[range.clone()])),
        );
        self.write_rewritten(pack, &bytes, pack.last_use.ns())?;
        let _ = std::fs::remove_file(&pack.path);
        report.bytes_freed += size.saturating_sub(bytes.len() as u64);
        Ok(())
    }

    /// Writes `bytes` as the rewrite of `pack` (merged or collected) with
    /// last use `last_use_ns`. Under a new name ([`pack::rewritten`]): a
    /// reader's index holds offsets into the old file.
    fn write_rewritten(&self, pack: &Pack, bytes: &[u8], last_use_ns: i64) -> io::Result<()> {
        let target = pack::rewritten(&pack.path);
        fsutil::write_atomic(&self.temp_dir(), &target, bytes)?;
        let _ = fsutil::set_mtime_ns(&target, last_use_ns);
        Ok(())
    }

    fn temp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Records the output file at `source`: small ones inline, others as
    /// blobs (see [`Shared::store_file`]).
    fn store_output(&self, source: &Path, path: String) -> Result<OutputFile, CacheError> {
        let mut file = fs_err::File::open(source)?;
        let metadata = file.metadata()?;
        if metadata.is_file() && metadata.len() <= super::entry::INLINE_MAX {
            let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0) + 1);
            file.read_to_end(&mut bytes)?;
            // It grew while read: a blob then.
            if bytes.len() as u64 <= super::entry::INLINE_MAX {
                return Ok(OutputFile {
                    path,
                    hash: fsutil::hash_bytes(&bytes),
                    size: bytes.len() as u64,
                    mode: metadata.mode() & 0o7777,
                    inline: Some(super::entry::to_hex(&bytes)),
                });
            }
        }
        drop(file);
        let (hash, size, mode) = self.store_file(source)?;
        Ok(OutputFile {
            path,
            hash,
            size,
            mode,
            inline: None,
        })
    }

    /// Stores the file at `source` as a blob; returns (hash, size, mode).
    /// The hash is always computed from our own copy of the bytes, so a
    /// file changing while we store it cannot give a blob a wrong name.
    fn store_file(&self, source: &Path) -> Result<(String, u64, u32), CacheError> {
        let mut file = fs_err::File::open(source)?;
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(CacheError::NotAFile {
                path: source.to_owned(),
            });
        }
        let mode = metadata.mode() & 0o7777;
        if metadata.len() <= SMALL_FILE {
            let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0) + 1);
            file.read_to_end(&mut bytes)?;
            let hash = fsutil::hash_bytes(&bytes);
            let size = bytes.len() as u64;
            if !self.blob_exists(&hash, size) {
                let (mut temp_file, temp) =
                    fsutil::create_temp(&self.temp_dir(), STORE_TEMP, 0o644)?;
                if let Err(error) = temp_file.write_all(&bytes) {
                    let _ = fs_err::remove_file(&temp);
                    return Err(error.into());
                }
                drop(temp_file);
                self.publish_blob(&temp, &hash)?;
            }
            return Ok((hash, size, mode));
        }
        // Large: share extents when the file system can (no bytes copied),
        // else stream; then hash the private copy.
        let (temp_file, temp) = fsutil::create_temp(&self.temp_dir(), STORE_TEMP, 0o644)?;
        let result = (|| {
            let (source_file, _) = file.into_parts();
            let (mut temp_file, _) = temp_file.into_parts();
            let (hash, size) = if fsutil::try_reflink(&source_file, &temp_file) {
                fsutil::hash_reader(fs_err::File::open(&temp)?)?
            } else {
                let copied = fsutil::copy_hashing(&source_file, &mut temp_file);
                copied.map_err(|error| {
                    io::Error::new(
                        error.kind(),
                        format!(
                            "failed to copy `{}` into the cache: {error}",
                            source.display()
                        ),
                    )
                })?
            };
            if self.blob_exists(&hash, size) {
                fs_err::remove_file(&temp)?;
            } else {
                self.publish_blob(&temp, &hash)?;
            }
            Ok::<_, CacheError>((hash, size, mode))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    fn blob_exists(&self, hash: &str, size: u64) -> bool {
        self.blob_path(hash)
            .and_then(|path| std::fs::metadata(path).ok())
            .is_some_and(|metadata| metadata.is_file() && metadata.len() == size)
    }

    /// Renames a complete temp file to its blob name, creating the fan-out
    /// directory on first use.
    fn publish_blob(&self, temp: &Path, hash: &str) -> Result<(), CacheError> {
        let Some(path) = self.blob_path(hash) else {
            return Err(CacheError::InvalidHash {
                text: hash.to_owned(),
            });
        };
        match fs_err::rename(temp, &path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    fs_err::create_dir_all(parent)?;
                }
                fs_err::rename(temp, &path)?;
                Ok(())
            }
            Err(error) => {
                let _ = std::fs::remove_file(temp);
                Err(error.into())
            }
        }
    }

    /// Copies blob `hash` into `target` (an open temp file at `temp`),
    /// verifying the content against the name.
    fn copy_blob_verified(
        &self,
        hash: &str,
        mut target: &File,
        temp: &Path,
    ) -> Result<(), CacheError> {
        let Some(path) = self.blob_path(hash) else {
            return Err(CacheError::InvalidHash {
                text: hash.to_owned(),
            });
        };
        let blob = match fs_err::File::open(&path) {
            Ok(blob) => blob,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::MissingBlob {
                    hash: hash.to_owned(),
                })
            }
            Err(error) => return Err(error.into()),
        };
        let large = blob.metadata()?.len() > SMALL_FILE;
        let (blob, _) = blob.into_parts();
        let actual = if large && fsutil::try_reflink(&blob, target) {
            fsutil::hash_reader(fs_err::File::open(temp)?)?.0
        } else {
            fsutil::copy_hashing(&blob, &mut target)?.0
        };
        if actual != hash {
            return Err(self.corrupt_blob(hash, path));
        }
        Ok(())
    }

    /// Deletes a blob found corrupt (a content-addressed blob that does not
    /// match its name is never useful, and its entries become misses) and
    /// returns the error to report.
    fn corrupt_blob(&self, hash: &str, path: PathBuf) -> CacheError {
        tracing::warn!("removing corrupt cache blob `{hash}`");
        let _ = std::fs::remove_file(&path);
        CacheError::CorruptBlob {
            hash: hash.to_owned(),
            path,
        }
    }

    /// Every blob as (hash, size).
    fn list_blobs(&self) -> Result<Vec<(String, u64)>, CacheError> {
        let mut blobs = Vec::new();
        for (path, metadata) in list_files(&self.dir.join("blobs"))? {
            if let Some(hash) = path.file_name().and_then(|name| name.to_str()) {
                if parse_hex32(hash).is_some() {
                    blobs.push((hash.to_owned(), metadata.len()));
                }
            }
        }
        Ok(blobs)
    }

    fn enqueue(
        &self,
        manifests: Vec<(KeyHash, Arc<LazyManifest>)>,
        instance_id: String,
        latest: KeyHash,
        blobs: Vec<PathBuf>,
    ) {
        let mut state = lock(&self.state);
        state.enqueued += 1;
        let sequence = state.enqueued;
        for (key, bytes) in &manifests {
            state
                .unpublished
                .insert(*key, (sequence, Arc::clone(bytes)));
        }
        state
            .unpublished_instances
            .insert(instance_id.clone(), (sequence, latest));
        state.queue.push(Pending {
            sequence,
            manifests,
            instance_id,
            latest,
            blobs,
        });
        drop(state);
        self.work.notify_one();
    }

    /// Makes a batch's blobs durable, then renames its manifests and
    /// instance pointers into place (the commit point of each entry).
    fn publish(&self, batch: &[Pending]) -> Result<(), CacheError> {
        // Blobs first: durable before any manifest names them. A batch
        // whose outputs are all inlined in its manifests has none.
        let blobs: HashSet<&PathBuf> = batch.iter().flat_map(|p| &p.blobs).collect();
        if blobs.len() > SYNC_EACH_BLOB_UP_TO {
            fsutil::sync_file_system(&self.dir_handle)?;
        } else if !blobs.is_empty() {
            for blob in &blobs {
                match fs_err::File::open(blob) {
                    Ok(file) => file.sync_data()?,
                    // Collected meanwhile: the entry reads as a miss.
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error.into()),
                }
            }
            // Their names, renamed into the directory.
            fs_err::File::open(self.dir.join("blobs"))?.sync_all()?;
        }
        let encoded: Vec<(&KeyHash, Arc<Vec<u8>>)> = batch
            .iter()
            .flat_map(|pending| {
                pending
                    .manifests
                    .iter()
                    .filter_map(|(key, manifest)| Some((key, manifest.bytes()?)))
            })
            .collect();
        if !encoded.is_empty() {
            let sequence = self
                .packs_published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = pack::new_name(sequence);
            let path = self.packs_dir().join(&name);
            let bytes = pack::encode(encoded.iter().map(|(key, bytes)| (*key, bytes.as_slice())));
            fsutil::write_atomic(&self.temp_dir(), &path, &bytes)?;
            lock(&self.packs).insert(name, path, &bytes);
        }
        let mut pointers = String::new();
        for pending in batch {
            pointers.push_str(&format!(
                "{} {}\n",
                fsutil::hash_bytes(pending.instance_id.as_bytes()),
                pending.latest
            ));
        }
        // One append for the whole batch (a torn last line is skipped by
        // readers). A failure only costs `explain` its answer.
        let mut log = lock(&self.pointer_log);
        if log.is_none() {
            let name = format!(
                "log-{:020}-{}",
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
                std::process::id()
            );
            *log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("instances").join(name))
                .ok();
        }
        if let Some(file) = log.as_mut() {
            if let Err(error) = file.write_all(pointers.as_bytes()) {
                tracing::debug!("cannot append instance pointers: {error}");
            }
        }
        Ok(())
    }
}

/// How long the flusher lets a batch grow before syncing it: each batch
/// is one pack file, and creating files is what costs (a `flush()` cuts the
/// window short; a SIGKILL loses at most this much of the cache).
const GROUP_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

/// The flusher thread: publishes queued saves in batches until shutdown,
/// draining the queue before it exits.
fn run_flusher(shared: &Shared) {
    loop {
        let batch = {
            let mut state = lock(&shared.state);
            while state.queue.is_empty() && !state.shutdown {
                state = shared
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.queue.is_empty() {
                return;
            }
            // Group commit: let the batch grow for a moment, so a busy run
            // pays one `syncfs` per interval rather than one per save (each
            // `syncfs` also writes back the run's other dirty files). A
            // `flush()` waiting for the batch cuts the window short (saves
            // notify `work` too, but do not end the wait).
            if !state.shutdown && !state.urgent {
                state = shared
                    .work
                    .wait_timeout_while(state, GROUP_COMMIT_WINDOW, |s| !s.shutdown && !s.urgent)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            state.urgent = false;
            std::mem::take(&mut state.queue)
        };
        let result = shared.publish(&batch);
        let mut state = lock(&shared.state);
        for pending in &batch {
            for (key, _) in &pending.manifests {
                // A later save of the same key stays visible until its own
                // batch is published.
                if state
                    .unpublished
                    .get(key)
                    .is_some_and(|(sequence, _)| *sequence == pending.sequence)
                {
                    state.unpublished.remove(key);
                }
            }
            if state
                .unpublished_instances
                .get(&pending.instance_id)
                .is_some_and(|(sequence, _)| *sequence == pending.sequence)
            {
                state.unpublished_instances.remove(&pending.instance_id);
            }
            state.published = state.published.max(pending.sequence);
        }
        if let Err(error) = result {
            tracing::warn!("failed to publish cache entries: {error}");
            state.error.get_or_insert(error);
        }
        drop(state);
        shared.progress.notify_all();
    }
}

impl Shared {
    /// This process's staging directory for restored files, and its device:
    /// `tmp/restore-PID-NS`, made on first use (when the staging directories
    /// of dead processes are removed). `tmp/` is marked as a top
    /// directory (`chattr +T`), so ext4's Orlov allocator puts each new
    /// staging directory, and the inodes of the files created in it, in a
    /// block group of its own choosing. Why: ext4 without a journal skips,
    /// for each new inode, every free inode of the group deleted in the
    /// last ~35 s (a crash must not reuse an inode whose deletion is not on
    /// disk), so creating 1,000 files beside 1,000 just deleted (`rm -rf
    /// out`, then a restore) scanned a million inodes: 0.7 s of system time
    /// for a restore that takes 0.1 s in a fresh group. Renamed into place,
    /// a file keeps its inode. Other file systems ignore the flag; the
    /// rename costs what the rename from beside the target cost. None when
    /// the directory cannot be made: restores stage beside their targets.
    fn restore_staging(&self) -> Option<&(PathBuf, u64)> {
        self.staging
            .get_or_init(|| {
                let tmp = self.dir.join("tmp");
                remove_dead_staging(&tmp);
                fsutil::mark_top_directory(&tmp);
                let dir = tmp.join(format!(
                    "{RESTORE_STAGING}{}-{}",
                    std::process::id(),
                    fsutil::coarse_now_ns()
                ));
                std::fs::create_dir(&dir).ok()?;
                let dev = std::fs::metadata(&dir).ok()?.dev();
                Some((dir, dev))
            })
            .as_ref()
    }
}

/// Renames a staged restore into place. A target on another file system
/// mounted below the root, or on another mount of the same one (a bind
/// mount: same device, still `EXDEV`), gets a copy staged beside it.
fn publish_staged(temp: &Path, target: &Path) -> io::Result<()> {
    match std::fs::rename(temp, target) {
        Err(error) if error.raw_os_error() == Some(libc::EXDEV) => {
            let parent = target.parent().unwrap_or(Path::new("."));
            let (file, beside) = fsutil::create_temp(parent, RESTORE_TEMP, 0o600)?;
            drop(file);
            let copied = std::fs::copy(temp, &beside)
                .and_then(|_| std::fs::rename(&beside, target))
                .map_err(|error| {
                    let _ = std::fs::remove_file(&beside);
                    io::Error::new(
                        error.kind(),
                        format!("failed to restore `{}`: {error}", target.display()),
                    )
                });
            if copied.is_ok() {
                let _ = std::fs::remove_file(temp);
            }
            copied
        }
        Err(error) => Err(io::Error::new(
            error.kind(),
            format!(
                "failed to rename `{}` to `{}`: {error}",
                temp.display(),
                target.display()
            ),
        )),
        Ok(()) => Ok(()),
    }
}

/// Prefix of the per-process staging directories in `tmp/`.
const RESTORE_STAGING: &str = "restore-";

/// Removes the staging directories in `tmp` of processes no longer alive
/// (with whatever a killed restore left in them).
fn remove_dead_staging(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(RESTORE_STAGING))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let dead = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if dead {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The temp files of a restore; those not renamed yet are removed when the
/// restore fails.
#[derive(Default)]
struct StagedFiles {
    files: Vec<StagedFile>,
    renamed: usize,
}

struct StagedFile {
    temp: PathBuf,
    target: PathBuf,
    rel: String,
    size: u64,
    hash: String,
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        for file in self.files.iter().skip(self.renamed) {
            let _ = std::fs::remove_file(&file.temp);
        }
    }
}

/// Whether `rel` (a normalized relative path) names, through whatever
/// symlinks, a path inside `root`: one `lstat` per component; only a
/// symlink costs a canonicalization.
pub(crate) fn inside_root(
    root: &Path,
    root_canonical: &Path,
    rel: &str,
) -> Result<bool, CacheError> {
    let mut path = root.to_path_buf();
    for part in rel.split('/') {
        path.push(part);
        let metadata = fs_err::symlink_metadata(&path)?;
        if metadata.file_type().is_symlink() {
            return Ok(fs_err::canonicalize(root.join(rel))?.starts_with(root_canonical));
        }
    }
    Ok(true)
}

/// Creates the directories above `rel` (a normalized relative path) under
/// `root` and says whether they stay inside the root: a directory on the
/// way may be a symlink leading out. One `lstat` per directory level; only
/// a symlink costs a canonicalization.
fn parent_inside_root(root: &Path, root_canonical: &Path, rel: &str) -> Result<bool, CacheError> {
    let mut dir = root.to_path_buf();
    let mut levels = rel.split('/').peekable();
    while let Some(part) = levels.next() {
        if levels.peek().is_none() {
            break;
        }
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(metadata) if metadata.file_type().is_symlink() => {
                if !fs_err::canonicalize(&dir)?.starts_with(root_canonical) {
                    return Ok(false);
                }
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("`{}` is not a directory", dir.display()),
                )
                .into())
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs_err::create_dir_all(&dir)?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(true)
}

/// A manifest's bytes and where they came from.
type StoredManifest = (Arc<Vec<u8>>, Source);

/// A saved entry's manifest under one key, encoded when first needed: by
/// the flusher as it publishes the entry, or by a lookup from this process
/// before that. A reduce over 1,000 inputs has a ~190 KB manifest (the
/// components of its key), ~0.5 ms to encode, which no longer stands
/// between its command's exit and what the run does next.
struct LazyManifest {
    /// The entry, naming the manifest's key.
    entry: Arc<Entry>,
    bytes: std::sync::OnceLock<Option<Arc<Vec<u8>>>>,
}

impl LazyManifest {
    fn new(entry: Arc<Entry>) -> LazyManifest {
        LazyManifest {
            entry,
            bytes: std::sync::OnceLock::new(),
        }
    }

    /// The manifest's bytes; `None` (warned about once) if the entry cannot
    /// be encoded, which no entry ccflow builds fails.
    fn bytes(&self) -> Option<Arc<Vec<u8>>> {
        self.bytes
            .get_or_init(|| match encode_manifest(&self.entry) {
                Ok(bytes) => Some(Arc::new(bytes)),
                Err(error) => {
                    tracing::warn!(
                        "cannot save the cache entry of `{}`: {error}",
                        self.entry.instance_id
                    );
                    None
                }
            })
            .clone()
    }
}

/// Where a looked-up manifest came from.
enum Source {
    /// Saved by this process, not published yet.
    Memory,
    Pack(Located),
    /// A per-entry manifest file and its mtime.
    File(PathBuf, SystemTime),
}

impl Source {
    /// Records a hit for LRU gc in the file's mtime. Touching costs a
    /// metadata write, so a use recorded recently enough is kept as is. A
    /// failure only makes gc less accurate: it does not fail the hit.
    fn record_use(&self, key: &KeyHash) {
        let (path, stale) = match self {
            Source::Memory => return,
            Source::Pack(located) => (
                &located.pack.path,
                located.pack.last_use.before(TOUCH_RESOLUTION),
            ),
            Source::File(path, modified) => (
                path,
                SystemTime::now()
                    .duration_since(*modified)
                    .is_ok_and(|age| age > TOUCH_RESOLUTION),
            ),
        };
        if !stale {
            return;
        }
        match fsutil::touch(path) {
            Ok(()) => {
                if let Source::Pack(located) = self {
                    located.pack.last_use.mark();
                }
            }
            Err(error) => tracing::debug!("failed to record use of cache entry `{key}`: {error}"),
        }
    }
}

/// Where gc found an entry: its own file, or (pack, record) in gc's list.
enum Stored {
    File(PathBuf),
    Packed(usize, usize),
}

/// How many packs may pile up (a few per run) before they are merged.
const PACKS_MAX: usize = 64;

/// Packs this large are left alone while the newer, smaller ones are
/// merged: merging every pack each time rewrote the whole store every 64
/// publishes (206 MB read and written again after 1,200 reruns of a
/// 1,000-input reduce, whose key components make a 170 KB manifest).
const PACK_MERGE_LIMIT: u64 = if cfg!(test) { 4096 } else { 16 * 1024 * 1024 };

/// Merges packs into one when there are more than [`PACKS_MAX`], so a
/// lookup reads a bounded number of files: every pack after the oldest
/// ones of [`PACK_MERGE_LIMIT`] or more (earlier merges), or every pack
/// when those are many. Packs are immutable once named, so a reader that
/// indexed the old ones sees them vanish and reads the merged one. The
/// merged pack is named after the newest merged pack ([`pack::rewritten`]:
/// it sorts after the packs left alone, so a key saved again later still
/// wins, and before any pack written later) and takes the latest use.
fn compact_packs(shared: &Shared) {
    let dir = shared.packs_dir();
    let mut names = pack::list(&dir);
    if names.len() <= PACKS_MAX {
        return;
    }
    names.sort();
    let large_oldest = names
        .iter()
        .take_while(|name| {
            std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() >= PACK_MERGE_LIMIT)
        })
        .count();
    let first = if names.len() - large_oldest >= 2 && large_oldest < PACKS_MAX / 2 {
        large_oldest
    } else {
        0
    };
    let packs: Vec<Pack> = names[first..]
        .iter()
        .filter_map(|name| pack::read(&dir.join(name)))
        .collect();
    let Some(newest) = packs.last() else { return };
    let mut latest: BTreeMap<KeyHash, (usize, std::ops::Range<usize>)> = BTreeMap::new();
    for (index, pack) in packs.iter().enumerate() {
        for (key, range) in pack::decode(&pack.bytes) {
            latest.insert(key, (index, range));
        }
    }
    let bytes = pack::encode(
        latest
            .iter()
            .map(|(key, (index, range))| (key, &packs[*index].bytes[range.clone()])),
    );
    let last_use = packs.iter().map(|p| p.last_use.ns()).max().unwrap_or(0);
    if shared.write_rewritten(newest, &bytes, last_use).is_err() {
        return;
    }
    for pack in &packs {
        let _ = std::fs::remove_file(&pack.path);
    }
}

/// Pointer logs older than this are merged when there are many.
const POINTER_LOG_COMPACT_AGE: Duration = Duration::from_secs(600);
/// How many pointer logs may pile up before they are merged.
const POINTER_LOGS_MAX: usize = 64;

fn is_pointer_log(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("log-"))
}

/// The pointer logs in `dir`, newest first.
fn pointer_logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| is_pointer_log(p))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs.reverse();
    logs
}

/// `(instance hash, key)` lines of a pointer log, in file order; a torn or
/// garbled line is skipped.
fn read_pointers(path: &Path) -> Vec<(String, KeyHash)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (instance, key) = line.split_once(' ')?;
            (instance.len() == 64 && parse_hex32(instance).is_some())
                .then(|| Some((instance.to_owned(), key.parse().ok()?)))?
        })
        .collect()
}

/// The key of the latest entry recorded for the instance whose id hashes
/// to `instance`: the last line naming it in the newest log that does, else
/// an older store's pointer file.
fn latest_pointer(dir: &Path, instance: &str) -> Result<Option<KeyHash>, CacheError> {
    for log in pointer_logs(dir) {
        if let Some((_, key)) = read_pointers(&log)
            .into_iter()
            .rev()
            .find(|(name, _)| name == instance)
        {
            return Ok(Some(key));
        }
    }
    match fs_err::read_to_string(dir.join(instance)) {
        Ok(text) => Ok(text.trim().parse().ok()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Merges old pointer logs into one when they pile up (one per run), so
/// `explain` reads a bounded number of files. Logs younger than
/// [`POINTER_LOG_COMPACT_AGE`] may belong to a running ccflow: kept.
fn compact_pointer_logs(dir: &Path) {
    let logs = pointer_logs(dir);
    if logs.len() <= POINTER_LOGS_MAX {
        return;
    }
    let now = SystemTime::now();
    let old: Vec<PathBuf> = logs
        .into_iter()
        .filter(|log| {
            std::fs::metadata(log)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > POINTER_LOG_COMPACT_AGE)
        })
        .collect();
    if old.len() < 2 {
        return;
    }
    // Oldest first, so later lines win; the merged log takes the newest
    // merged log's name (it stays ordered before every younger log).
    let mut latest: HashMap<String, KeyHash> = HashMap::new();
    for log in old.iter().rev() {
        latest.extend(read_pointers(log));
    }
    let merged: String = latest
        .iter()
        .map(|(instance, key)| format!("{instance} {key}\n"))
        .collect();
    let target = &old[0];
    let temp = dir.join(format!(".merge-{}", std::process::id()));
    if fs_err::write(&temp, merged)
        .and_then(|()| fs_err::rename(&temp, target))
        .is_err()
    {
        let _ = std::fs::remove_file(&temp);
        return;
    }
    for log in &old[1..] {
        let _ = std::fs::remove_file(log);
    }
}

/// If `target` is a regular file with `output`'s content, its mode.
fn identical_file(
    target: &Path,
    root: &Path,
    rel: &str,
    output: &OutputFile,
    index: Option<&StatIndex>,
) -> Result<Option<u32>, CacheError> {
    let metadata = match std::fs::symlink_metadata(target) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(fs_err::symlink_metadata(target)
                .err()
                .unwrap_or(error)
                .into())
        }
    };
    if !metadata.is_file() || metadata.len() != output.size {
        return Ok(None);
    }
    let hash = match index {
        Some(index) => index.hash_file(root, rel)?.hash,
        None => fsutil::hash_reader(fs_err::File::open(target)?)?.0,
    };
    Ok((hash == output.hash).then_some(metadata.mode() & 0o7777))
}

/// Checks that an output path is relative and stays below the root
/// lexically, and normalises it (`/`-separated, no `.` components);
/// borrowed when it already is.
pub(crate) fn normalize_rel(rel: &str) -> Result<Cow<'_, str>, CacheError> {
    if rel
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..")
    {
        return Ok(Cow::Borrowed(rel));
    }
    let mut parts = Vec::new();
    for component in Path::new(rel).components() {
        match component {
            Component::Normal(part) => match part.to_str() {
                Some(part) => parts.push(part),
                None => {
                    return Err(CacheError::OutputOutsideRoot {
                        path: rel.to_owned(),
                    })
                }
            },
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(CacheError::OutputOutsideRoot {
                    path: rel.to_owned(),
                })
            }
        }
    }
    if parts.is_empty() {
        return Err(CacheError::NotAFile {
            path: PathBuf::from(rel),
        });
    }
    Ok(Cow::Owned(parts.join("/")))
}

/// Regular files directly in `dir` (temp files of the store excluded unless
/// `dir` is `tmp/`), with their metadata.
fn list_files(dir: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>, CacheError> {
    let in_temp_dir = dir.file_name().is_some_and(|name| name == "tmp");
    let mut files = Vec::new();
    let entries = match fs_err::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(error) => return Err(error.into()),
    };
    for dir_entry in entries {
        let dir_entry = dir_entry?;
        let is_temp = dir_entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(STORE_TEMP));
        if is_temp != in_temp_dir {
            continue;
        }
        // Another process may remove it meanwhile (gc, clear, rename).
        let Ok(metadata) = dir_entry.metadata() else {
            continue;
        };
        if metadata.is_file() {
            files.push((dir_entry.path(), metadata));
        }
    }
    Ok(files)
}

/// A file's content and modification time, from one open.
fn read_with_mtime(path: &Path) -> io::Result<(Vec<u8>, SystemTime)> {
    let mut file = fs_err::File::open(path)?;
    let metadata = file.metadata()?;
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0) + 1);
    file.read_to_end(&mut bytes)?;
    Ok((bytes, metadata.modified()?))
}

/// Removes a file, ignoring one already gone, and counts its bytes.
fn remove_counting(path: &Path, size: u64, report: &mut GcReport) -> Result<(), CacheError> {
    match fs_err::remove_file(path) {
        Ok(()) => {
            report.bytes_freed += size;
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before any call that
    // can panic, so a poisoned lock still guards valid data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
