//! The up-to-date check: a `ccflow run` whose answer is already known ends
//! in the time it takes to `stat` what the answer rests on, and a run after
//! a small edit settles every unaffected instance without touching the
//! cache.
//!
//! # What a run records
//!
//! While a run plans and executes, every file-system observation a decision
//! rests on is recorded with the stat seen: the workflow file and its
//! directory, each directory a glob walk listed and the ignore files that
//! shaped the walk (in the directory and its ancestors), the files
//! `lines_of`/`json_of` read and the claude CLI ([`stat`], [`absent`]:
//! *global* observations, which can change the plan itself); and every
//! input and output stat'ed or hashed ([`metadata`], [`file`]: *file*
//! observations, with their content hash when one was computed). This is
//! what git's untracked cache keeps (directory stats plus ignore files) and
//! what ninja compares on a no-op (file stats).
//!
//! # The memo
//!
//! A run that succeeded, took no agent snapshot, ran no Docker task (an
//! image can change under its tag) and saw no path in two states writes a
//! memo: the context (the ccflow binary's identity, the root, the workflow
//! path, the arguments, `PATH` and `CCFLOW_CLAUDE`), every observation, and
//! each instance's result (cache key, inputs, outputs with their hashes).
//! Observations of files modified just before or during the run are marked
//! racy: one more write within the same timestamp tick would leave the same
//! stat, so their content is checked too (as git does for racily clean
//! index entries). Every slow run invalidates its context's memo first.
//!
//! # The check
//!
//! The instances' results and their records live in two side files the
//! memo names by checksum (read only when needed: the results after a
//! change, the records to answer a run with nothing changed). The next
//! `ccflow run` with the same context reads the memo (a checksum guards
//! against a torn write) and stats every path:
//! - nothing changed, and every instance's key is reproducible (no
//!   `cache: false`, no run-dependent template): a slow run would observe
//!   what the last one did and find every instance cached. The run record
//!   is written from the memo and the run ends ([`Verdict::UpToDate`]);
//! - only file observations changed: the plan is the same; an instance
//!   none of whose inputs and outputs changed, and whose upstream
//!   instances are settled the same way, has the same key and the same
//!   outputs on disk, so the scheduler settles it as cached from the memo
//!   without hashing or reading the cache; the others run the full path
//!   ([`Verdict::Changed`]);
//! - a global observation changed (a new file in a walked directory, an
//!   edited `.gitignore`, the workflow): the full run, always correct.
//!
//! # Kept walks
//!
//! The memo also keeps the directory walks the run made, each with the
//! stats it depends on ([`walks`]): any later run, whatever the verdict,
//! reuses a walk whose directories and ignore files stat the same.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cache::fsutil::{DirStat, FileStat};

use crate::report::record::{Counts, InstanceRecord, RunRecord, Usage};

pub mod walks;

/// File magic and format version.
const MAGIC: &[u8; 12] = b"CCFMEMO\0\x00\x05\r\n";

/// A file modified this close to (or after) the start of the run that
/// observed it is racy. Generous: it only costs reading the file once more.
const RACY_NS: i64 = 100_000_000;

/// A file's identity and state as `stat` reports it.
type Seen = FileStat;

/// Whether `seen` was modified within [`RACY_NS`] of `reference_ns` (or
/// after it).
fn is_racy(seen: &Seen, reference_ns: i64) -> bool {
    seen.mtime_ns >= reference_ns - RACY_NS || seen.ctime_ns >= reference_ns - RACY_NS
}

/// One observation: what a path looked like (`None`: it did not exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Observation {
    seen: Option<Seen>,
    /// A file observation (an instance's input or output), as opposed to a
    /// global one (the plan's).
    file: bool,
    /// The content hash, when the run computed one.
    hash: Option<[u8; 32]>,
    /// Seeded from the last memo and not observed by this run yet (never
    /// written to a memo).
    prior: bool,
    /// Seeded, and a declared output of an instance the memo found
    /// unaffected: its stat may stand in for a new one (see [`vouched`]).
    vouches: bool,
}

/// A path as the recorder's key: hashed and compared as bytes. `Path`
/// hashes component by component, several times slower, and a change run
/// records and looks up thousands of paths (every one spelled the same
/// way each time: `root` joined with a repository-relative path).
#[derive(PartialEq, Eq)]
struct PathKey(PathBuf);

impl std::hash::Hash for PathKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_os_str().as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for PathKey {
    fn borrow(&self) -> &[u8] {
        self.0.as_os_str().as_bytes()
    }
}

/// `path` as a recorder lookup key (see [`PathKey`]).
fn key(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// The observations of one run.
#[derive(Default)]
struct Recorder {
    /// foldhash rather than SipHash, bytes rather than components: a
    /// change run records and looks up thousands of paths.
    seen: HashMap<PathKey, Observation, foldhash::fast::FixedState>,
    /// Seeded paths this run then saw in another state (see [`conclude`]).
    replaced: Vec<PathBuf>,
    /// Why this run cannot vouch for what it saw, if it cannot.
    spoiled: Option<String>,
    /// Observed directories the run has since restored files into (see
    /// [`dir_rewritten`]), settled once when the run concludes.
    rewritten_dirs: HashSet<PathBuf>,
    /// The coarse clock when recording started.
    started_ns: i64,
    /// The walks kept by the last memo (see [`walks`]).
    prior_walks: walks::Walks,
    /// The walks this run made or reused: the next memo keeps them.
    walks: walks::Walks,
    /// Until when seeded observations vouch for their files (see
    /// [`vouched`]).
    vouch_until: Option<Instant>,
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Set while seeded observations may vouch for their files (see
/// [`vouched`]).
static VOUCHING: AtomicBool = AtomicBool::new(false);
static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

fn recorder() -> MutexGuard<'static, Option<Recorder>> {
    RECORDER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The observations of the last memo that still hold: a run that settles
/// instances from the memo does not observe their files again, so its own
/// memo starts from these.
#[derive(Default)]
pub struct Seed {
    entries: Vec<(PathBuf, Observation)>,
    /// When the check began the stats that found these unchanged.
    checked: Option<Instant>,
}

/// For how long after the up-to-date check its stats of unchanged files
/// stand in for new ones when the run hashes them as inputs (see
/// [`vouched`]). The stat an input's key is taken with is always some time
/// older than the command that reads the file; this lets it be older by at
/// most this much, as long as no instance of the run has written the file.
const VOUCH_FOR: Duration = Duration::from_millis(250);

/// Adds the observations of `seed` the run has not made itself yet, as
/// seeded ones (see [`start`]), to the recording in progress.
fn merge_seed(seed: Seed) {
    let mut guard = recorder();
    let Some(rec) = guard.as_mut() else { return };
    rec.seen.reserve(seed.entries.len());
    rec.vouch_until = seed.checked.map(|checked| checked + VOUCH_FOR);
    VOUCHING.store(rec.vouch_until.is_some(), Ordering::Release);
    for (path, observation) in seed.entries {
        rec.seen.entry(PathKey(path)).or_insert(Observation {
            prior: true,
            ..observation
        });
    }
}

/// Starts recording observations (the slow path of `ccflow run`), from
/// `seed`.
pub fn start(seed: Seed) {
    *recorder() = Some(Recorder {
        started_ns: crate::cache::fsutil::coarse_now_ns(),
        prior_walks: walks::take_handed_over(),
        ..Recorder::default()
    });
    merge_seed(seed);
    ACTIVE.store(true, Ordering::Release);
}

fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Drops the observations seeded from the last memo that this run has not
/// made itself: the memo turned out unable to settle anything, and the run
/// goes the full way (as if it had started without a seed).
pub fn forget_seed() {
    if let Some(rec) = recorder().as_mut() {
        rec.seen.retain(|_, observation| !observation.prior);
        rec.replaced.clear();
    }
    stop_vouching();
}

/// Whether seeded observations may vouch for files now (see [`vouched`]):
/// a cheap test before the caller gathers paths.
#[must_use]
pub fn vouching() -> bool {
    VOUCHING.load(Ordering::Acquire)
}

/// Ends vouching for this run: an instance failed (a tolerated failure
/// releases its dependents, and it may have written its outputs before
/// failing without their being hashed), or an agent started (it brings
/// back changes to files it may not declare).
pub fn stop_vouching() {
    VOUCHING.store(false, Ordering::Release);
}

/// The stat of each of `paths` (absolute, as the run spells them) that the
/// up-to-date check took less than [`VOUCH_FOR`] ago and found as the last
/// run left it, if it is a declared output of an instance the memo found
/// unaffected (an instance of this run is not to write it) and this run
/// has not seen the file since (an instance's outputs are hashed as it
/// finishes, a restore records what it wrote). `None` for the others: the
/// caller stats them.
///
/// A reduce over 1,000 outputs after a one-file edit stat'ed every one of
/// them a second time within milliseconds (1,000 `stat`s of ~2.5 µs on the
/// path to its command); ninja, too, stats each file once per build. What
/// this gives up: a task that writes another instance's declared output
/// (which the cache cannot restore either) within that window goes unseen
/// by the reduce's key, as a write while the reduce runs always does.
#[must_use]
pub fn vouched(paths: &[PathBuf]) -> Vec<Option<FileStat>> {
    if !vouching() {
        return vec![None; paths.len()];
    }
    match recorder().as_ref() {
        Some(rec) => rec.vouched(paths, Instant::now()),
        None => vec![None; paths.len()],
    }
}

impl Recorder {
    /// [`vouched`] at `now`.
    fn vouched(&self, paths: &[PathBuf], now: Instant) -> Vec<Option<FileStat>> {
        if self.vouch_until.is_none_or(|until| now >= until) {
            return vec![None; paths.len()];
        }
        paths
            .iter()
            .map(|path| {
                self.seen
                    .get(key(path))
                    .filter(|o| o.prior && o.file && o.vouches)
                    .and_then(|o| o.seen)
                    .filter(|seen| !seen.is_dir())
            })
            .collect()
    }
}

/// Whether this run is recording observations for a memo.
#[must_use]
pub fn recording() -> bool {
    active()
}

/// `record` as the memo keeps it, JSON: without this run's logs and times
/// (the memo's answer has none), a success counted as cached.
#[must_use]
pub fn instance_json(record: &InstanceRecord) -> Vec<u8> {
    use crate::report::record::InstanceStatus;
    /// What [`InstanceRecord`] serializes to without the fields the memo
    /// drops, borrowed (a copy of each record's strings cost a rerun over
    /// 1,000 instances ~2,000 allocations); read back as an
    /// [`InstanceRecord`].
    #[derive(serde::Serialize)]
    struct Kept<'a> {
        id: &'a str,
        task: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<&'a str>,
        status: InstanceStatus,
        duration_ms: u64,
        exit_code: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_key: Option<&'a str>,
        usage: &'a crate::report::record::Usage,
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        artifacts: &'a std::collections::BTreeMap<String, String>,
    }
    let kept = Kept {
        id: &record.id,
        task: &record.task,
        label: record.label.as_deref(),
        status: match record.status {
            InstanceStatus::Succeeded => InstanceStatus::Cached,
            other => other,
        },
        duration_ms: 0,
        exit_code: Some(0),
        cache_key: record.cache_key.as_deref(),
        usage: &record.usage,
        artifacts: &record.artifacts,
    };
    let mut json = Vec::with_capacity(320);
    match serde_json::to_writer(&mut json, &kept) {
        Ok(()) => json,
        Err(_) => Vec::new(),
    }
}

/// Records `observation` of `path`. `written`: the run has just written the
/// file itself, so a different earlier state of it (compared only to decide
/// whether to write) is replaced rather than a change during the run.
fn record(path: &Path, observation: Observation, written: bool) {
    let mut guard = recorder();
    let Some(rec) = guard.as_mut() else { return };
    if let Some(seeded) = rec.seen.get_mut(key(path)).filter(|o| o.prior) {
        // First seen by this run: its own observation counts (a task may
        // have rewritten it); `conclude` checks no settled instance relied
        // on the seeded state.
        seeded.prior = false;
        if seeded.seen != observation.seen {
            *seeded = observation;
            rec.replaced.push(path.to_path_buf());
            return;
        }
    }
    if written {
        rec.seen.insert(PathKey(path.to_path_buf()), observation);
        return;
    }
    match rec.seen.get_mut(key(path)) {
        Some(previous) if previous.seen == observation.seen => {
            // Seen by the plan too: a global observation.
            previous.file &= observation.file;
            if previous.hash.is_none() {
                previous.hash = observation.hash;
            } else if observation.hash.is_some() && previous.hash != observation.hash {
                rec.spoiled
                    .get_or_insert_with(|| format!("`{}` changed while read", path.display()));
            }
        }
        Some(_) => {
            rec.spoiled
                .get_or_insert_with(|| format!("`{}` changed during the run", path.display()));
        }
        None => {
            rec.seen.insert(PathKey(path.to_path_buf()), observation);
        }
    }
}

/// Records an instance's input or output seen with `stat` (which must
/// follow symlinks, as `std::fs::metadata` does).
pub fn metadata(path: &Path, stat: &FileStat) {
    observe_file(path, stat, None, false);
}

/// Records an instance's input or output with the content hash computed
/// from it while it had `stat`.
pub fn file(path: &Path, stat: &FileStat, hash: [u8; 32]) {
    observe_file(path, stat, Some(hash), false);
}

/// Records a file this run has just written itself (an output restored
/// from the cache, or its mode fixed) with the content hash it wrote. Its
/// state before was only compared to decide whether to write it: the new
/// state replaces it instead of counting as a change during the run.
pub fn rewritten(path: &Path, stat: &FileStat, hash: [u8; 32]) {
    observe_file(path, stat, Some(hash), true);
}

/// Records that the run replaced files in directory `dir` (renamed over
/// existing ones, when restoring outputs). If the run had observed `dir`,
/// its listing is compared once when the run concludes: still what it was,
/// its new stat replaces the old one (otherwise the next check finds it
/// changed and takes the full run). Compared there rather than here: a
/// restore into a walked directory of 1,000 files listed all of them again
/// for each of the 1,000 restores.
pub fn dir_rewritten(dir: &Path) {
    if !active() {
        return;
    }
    if let Some(rec) = recorder().as_mut() {
        if rec.seen.get(key(dir)).is_some_and(|o| o.hash.is_some()) {
            rec.rewritten_dirs.insert(dir.to_path_buf());
        }
    }
}

/// The stats of directories restored into whose listing is unchanged (see
/// [`dir_rewritten`]).
fn settle_rewritten_dirs(rec: &mut Recorder) {
    for dir in std::mem::take(&mut rec.rewritten_dirs) {
        let Some(recorded) = rec.seen.get(key(&dir)).and_then(|o| o.hash) else {
            continue;
        };
        let Ok(metadata) = std::fs::metadata(&dir) else {
            continue;
        };
        if listing_hash(&dir) != Some(recorded) {
            continue;
        }
        if let Some(observation) = rec.seen.get_mut(key(&dir)) {
            observation.seen = Some(FileStat::of(&metadata));
        }
    }
}

fn observe_file(path: &Path, stat: &FileStat, hash: Option<[u8; 32]>, written: bool) {
    if active() {
        record(
            path,
            Observation {
                seen: Some(*stat),
                file: true,
                hash,
                prior: false,
                vouches: false,
            },
            written,
        );
    }
}

/// Records that `path` did not exist (a global observation: what exists
/// decides what the plan holds).
pub fn absent(path: &Path) {
    if active() {
        record(
            path,
            Observation {
                seen: None,
                file: false,
                hash: None,
                prior: false,
                vouches: false,
            },
            false,
        );
    }
}

/// Stats `path` (following symlinks) and records a global observation of
/// it, once per path and run: directories listed by a walk, ignore files,
/// the workflow, files read to expand a fan-out.
pub fn stat(path: &Path) {
    if !active() {
        return;
    }
    let started_ns = {
        let guard = recorder();
        match guard.as_ref() {
            Some(rec) if !rec.seen.contains_key(key(path)) => rec.started_ns,
            _ => return,
        }
    };
    let metadata = std::fs::metadata(path).ok();
    let seen = metadata.as_ref().map(FileStat::of);
    // A directory's listing, read before the walk reads it: when the
    // directory changed too recently for its stat to vouch for it (files
    // created in it by the run itself), the listing can. So can the
    // content of a small file modified just before (a workflow written by
    // a script that then runs it), which the stat cannot vouch for either.
    let hash = match (&metadata, seen) {
        (Some(m), _) if m.is_dir() => listing_hash(path),
        (Some(m), Some(seen))
            if m.is_file() && m.len() <= RACY_FILE_HASHED && is_racy(&seen, started_ns) =>
        {
            content_hash_if_unchanged(path, &seen)
        }
        _ => None,
    };
    record(
        path,
        Observation {
            seen,
            file: false,
            hash,
            prior: false,
            vouches: false,
        },
        false,
    );
}

/// Files up to this size observed while racy are hashed (see [`stat`]).
const RACY_FILE_HASHED: u64 = 1 << 20;

/// The content hash of the file at `path`, if its stat after reading is
/// still `seen` (otherwise the content read may not be the one observed).
fn content_hash_if_unchanged(path: &Path, seen: &Seen) -> Option<[u8; 32]> {
    let hash = content_hash(path)?;
    let after = std::fs::metadata(path).ok().map(|m| FileStat::of(&m));
    (after.as_ref() == Some(seen)).then_some(hash)
}

/// The content hash of the file at `path` (as the file-hash index has it).
fn content_hash(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path)
        .ok()
        .map(|bytes| *blake3::hash(&bytes).as_bytes())
}

/// A hash of a directory's entries (names and types), in name order.
fn listing_hash(dir: &Path) -> Option<[u8; 32]> {
    let mut entries: Vec<(std::ffi::OsString, u8)> = std::fs::read_dir(dir)
        .ok()?
        .map(|entry| {
            let entry = entry.ok()?;
            let kind = entry.file_type().ok().map_or(0, |t| {
                u8::from(t.is_file()) | u8::from(t.is_dir()) << 1 | u8::from(t.is_symlink()) << 2
            });
            Some((entry.file_name(), kind))
        })
        .collect::<Option<_>>()?;
    entries.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    for (name, kind) in &entries {
        hasher.update(name.as_bytes());
        hasher.update(&[0, *kind]);
    }
    Some(*hasher.finalize().as_bytes())
}

/// Records the ignore files a walk starting at `dir` consults: `.gitignore`
/// and `.ignore` in `dir` and every ancestor, and `.git/info/exclude`.
pub fn ignore_files_above(dir: &Path) {
    if !active() {
        return;
    }
    for ancestor in dir.ancestors() {
        ignore_files_in(ancestor);
        stat(&ancestor.join(GIT_EXCLUDE));
    }
}

/// The ignore files a walk reads in each directory it lists...
pub(crate) const IGNORE_FILES: [&str; 2] = [".gitignore", ".ignore"];
/// ...and the git exclude file it reads per repository.
pub(crate) const GIT_EXCLUDE: &str = ".git/info/exclude";

/// Records a directory listed by a walk, and its ignore files.
pub fn walked_dir(dir: &Path) {
    if !active() {
        return;
    }
    stat(dir);
    ignore_files_in(dir);
}

fn ignore_files_in(dir: &Path) {
    for name in IGNORE_FILES {
        stat(&dir.join(name));
    }
}

/// This run cannot vouch for what it saw (it depends on something no stat
/// shows, or changed the tree in ways not recorded).
pub fn spoil(reason: &str) {
    if !active() {
        return;
    }
    if let Some(rec) = recorder().as_mut() {
        rec.spoiled.get_or_insert_with(|| reason.to_owned());
    }
}

/// Stops recording, discarding the observations.
pub fn stop() {
    ACTIVE.store(false, Ordering::Release);
    stop_vouching();
    recorder().take();
}

/// What identifies a memo: everything outside the observed files that a
/// run's decisions depend on.
pub struct Context {
    digest: [u8; 32],
    path: PathBuf,
    root: PathBuf,
}

impl Context {
    /// The context of `ccflow run` of `workflow` under `root` with these
    /// arguments, its memo kept under `state_dir/memo/`.
    #[must_use]
    pub fn new(state_dir: &Path, root: &Path, workflow: &Path, args: &[String]) -> Context {
        let mut name = blake3::Hasher::new();
        for part in [root.as_os_str(), workflow.as_os_str()] {
            name.update(part.as_encoded_bytes());
            name.update(&[0]);
        }
        for arg in args {
            name.update(arg.as_bytes());
            name.update(&[0]);
        }
        let file_name = name.finalize().to_hex()[..32].to_owned();
        let mut digest = name;
        // The binary: a rebuilt ccflow may decide differently.
        if let Ok(m) = std::fs::metadata("/proc/self/exe") {
            let seen = FileStat::of(&m);
            for n in [seen.dev, seen.ino, seen.size] {
                digest.update(&n.to_le_bytes());
            }
            digest.update(&seen.mtime_ns.to_le_bytes());
        }
        digest.update(env!("CARGO_PKG_VERSION").as_bytes());
        // Where the claude CLI is found.
        for var in ["PATH", "CCFLOW_CLAUDE"] {
            digest.update(var.as_bytes());
            digest.update(&[0]);
            if let Some(value) = std::env::var_os(var) {
                digest.update(value.as_encoded_bytes());
            }
            digest.update(&[0]);
        }
        Context {
            digest: *digest.finalize().as_bytes(),
            path: state_dir.join("memo").join(file_name),
            root: root.to_path_buf(),
        }
    }

    /// This context's memo file (a slow run invalidates it as it starts).
    #[must_use]
    pub fn file(&self) -> &Path {
        &self.path
    }

    fn settled_path(&self) -> PathBuf {
        self.path.with_extension("settled")
    }

    /// The side file of the instances' records (JSON), read only to answer
    /// a run with nothing changed: a run after an edit reads and checks
    /// ~1/3 of the bytes it did when they were part of the memo.
    fn instances_path(&self) -> PathBuf {
        self.path.with_extension("instances")
    }
}

/// What the run that wrote a memo recorded about the workflow.
#[derive(Serialize, Deserialize)]
pub struct Proven {
    pub workflow: String,
    pub workflow_file: String,
    pub run_id: String,
    pub counts: Counts,
    pub usage: Usage,
    /// Every instance would be cached by a rerun with nothing changed.
    #[serde(default)]
    pub all_reproducible: bool,
}

/// One instance's result, as the memo keeps it.
#[derive(Debug)]
pub struct Settled {
    pub id: String,
    pub key: String,
    /// Repository-relative input files.
    pub inputs: Vec<String>,
    /// Repository-relative output files with their content hashes.
    pub outputs: Vec<(String, String)>,
    pub usage: Usage,
    /// Whether a rerun with unchanged files reproduces this key: a shell
    /// task with the cache on and no run-dependent template.
    pub reproducible: bool,
    /// The digest of `outputs` (see `crate::cache::key::outputs_digest`)
    /// when the run took it (an instance with dependents): a run settling
    /// this instance hands it on instead of taking it again, ~1 µs for
    /// each of 1,000 instances on the critical path of a reduce's rerun.
    pub digest: Option<String>,
}

/// A memo that holds entirely.
pub struct UpToDate {
    pub proven: Proven,
    /// The instance records of the run, without its times and logs, as a
    /// JSON array ready to be spliced into the new run record.
    pub instances_json: Vec<u8>,
    /// Every instance: the memo's side file, read by
    /// [`UpToDate::settled`] only when the run must still report each one.
    settled_file: PathBuf,
    settled_checksum: [u8; 32],
    /// How many paths were checked.
    pub checked: usize,
    /// The observations, for that run's recording.
    pub seed: Seed,
}

impl UpToDate {
    /// Every instance the memo holds.
    #[must_use]
    pub fn settled(&self) -> Vec<Settled> {
        read_settled(&self.settled_file, &self.settled_checksum).unwrap_or_default()
    }
}

/// What the check found.
pub enum Verdict {
    /// No memo, a damaged one, or a global change: the full run.
    Unknown,
    /// Nothing changed.
    UpToDate(Box<UpToDate>),
    /// Only inputs or outputs of some instances changed: the others are
    /// settled (by instance id), once found (see [`Unaffected::find`]); the
    /// observations that still hold are added to the recording then.
    Changed { settled: Unaffected, changed: usize },
}

/// Ends recording; writes the memo when the run can vouch for what it saw.
///
/// # Errors
/// Why no memo was written.
pub fn conclude(
    context: &Context,
    run: &RunRecord,
    settled: &[Settled],
    from_memo: &[bool],
    prepared: &[Option<Vec<u8>>],
) -> Result<(), String> {
    let instances = &run.instances;
    ACTIVE.store(false, Ordering::Release);
    let mut rec = recorder().take().ok_or("not recording")?;
    if let Some(reason) = &rec.spoiled {
        return Err(reason.clone());
    }
    crate::timing!("memo: recording stopped");
    settle_rewritten_dirs(&mut rec);
    // An instance settled from the memo relied on its files being as the
    // memo saw them; if the run then saw one of them change, its result
    // no longer matches what the new memo would say.
    // The few replaced paths are looked up, rather than a set built of
    // every path the settled instances hold.
    if !rec.replaced.is_empty() {
        let replaced: HashSet<&Path> = rec
            .replaced
            .iter()
            .filter_map(|p| p.strip_prefix(&context.root).ok())
            .collect();
        if let Some(path) = settled
            .iter()
            .zip(from_memo)
            .filter(|(_, from_memo)| **from_memo)
            .flat_map(|(s, _)| {
                s.inputs
                    .iter()
                    .map(String::as_str)
                    .chain(s.outputs.iter().map(|(p, _)| p.as_str()))
            })
            .find(|p| replaced.contains(Path::new(p)))
        {
            return Err(format!(
                "`{}` changed under an instance settled from the memo",
                context.root.join(path).display()
            ));
        }
    }
    // The instances' records as JSON (see [`instance_json`]): those the
    // run prepared while it waited on its processes as they are, the rest
    // serialized on a thread beside the rest of the memo.
    let to_json = || {
        crate::timing!("memo: serializing instance records");
        let mut json = Vec::with_capacity(instances.len() * 320);
        json.push(b'[');
        for (i, record) in instances.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            match prepared.get(i) {
                Some(Some(ready)) => json.extend_from_slice(ready),
                _ => json.extend_from_slice(&instance_json(record)),
            }
        }
        json.push(b']');
        Ok(json)
    };
    // A thread only for many records to serialize: starting one while the
    // record and the cache are being written beside took ~0.8 ms, longer
    // than joining the prepared ones.
    let unprepared = (0..instances.len())
        .filter(|i| !matches!(prepared.get(*i), Some(Some(_))))
        .count();
    if unprepared < 256 {
        return write_results(context, run, settled, &rec, to_json);
    }
    std::thread::scope(|scope| {
        let json = std::thread::Builder::new()
            .name("ccflow-memo".to_owned())
            .spawn_scoped(scope, to_json)
            .ok();
        write_results(context, run, settled, &rec, || {
            json.and_then(|thread| thread.join().ok())
                .unwrap_or_else(to_json)
        })
    })
}

/// The rest of [`conclude`]: the counts, the instances' results and the
/// observations; `instances_json` gives the serialized records.
fn write_results(
    context: &Context,
    run: &RunRecord,
    settled: &[Settled],
    rec: &Recorder,
    instances_json: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<(), String> {
    // What a rerun reports: what ran now would be cached then.
    let mut counts = run.counts;
    counts.cached += counts.succeeded;
    counts.succeeded = 0;
    let proven = Proven {
        workflow: run.workflow.clone(),
        workflow_file: run.workflow_file.clone(),
        run_id: run.run_id.clone(),
        counts,
        usage: run.usage,
        all_reproducible: settled.iter().all(|s| s.reproducible)
            && settled.len() == counts.cached
            && counts.cached + counts.skipped == counts.total,
    };
    let proven_json = serde_json::to_vec(&proven).map_err(|e| e.to_string())?;
    let settled_bytes = encode_settled(settled);
    // The instances' results go to a side file the no-op answer never
    // reads; the memo names it by checksum, so a torn pair is a miss.
    let settled_checksum = *blake3::hash(&settled_bytes).as_bytes();
    crate::timing!("memo: instance results encoded");
    overwrite(&context.settled_path(), &settled_bytes)?;
    crate::timing!("memo: instance results written");
    let mut entries: Vec<(&PathBuf, &Observation)> =
        rec.seen.iter().map(|(k, o)| (&k.0, o)).collect();
    // By bytes: `Path`'s order parses components at each comparison, and
    // any fixed order will do.
    entries.sort_unstable_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    let mut racy: Vec<bool> = entries
        .iter()
        .map(|(_, o)| o.seen.is_some_and(|s| is_racy(&s, rec.started_ns)))
        .collect();
    verify_settled_racy(&entries, &mut racy);
    crate::timing!("memo: observations sorted");
    let walks = walks::encode(&rec.walks);
    let instances_json = instances_json()?;
    crate::timing!("memo: instance records serialized");
    let instances_checksum = *blake3::hash(&instances_json).as_bytes();
    overwrite(&context.instances_path(), &instances_json)?;
    write_memo(
        context,
        &Sections {
            proven: &proven_json,
            instances: &instances_checksum,
            settled: &settled_checksum,
            walks: &walks,
        },
        &entries,
        &racy,
    )
}

/// Entries from this many on are verified on two threads.
const VERIFY_IN_PARALLEL: usize = 256;

/// Clears the racy mark of the racy observations that are no longer
/// racy now and still hold (the same stat, the same content: what the
/// next run's check would verify, see [`compare`]): a long run (a first
/// build) saw most of its files while they were fresh, and the first run
/// after it re-read every one of them (57 ms instead of ~25 for a change
/// over 1,000 files). Files modified within [`RACY_NS`] of now stay racy.
fn verify_settled_racy(entries: &[(&PathBuf, &Observation)], racy: &mut [bool]) {
    let now_ns = crate::cache::fsutil::coarse_now_ns();
    let candidates: Vec<usize> = (0..entries.len())
        .filter(|i| {
            racy[*i]
                && entries[*i].1.hash.is_some()
                && entries[*i].1.seen.is_some_and(|s| !is_racy(&s, now_ns))
        })
        .collect();
    if candidates.is_empty() {
        return;
    }
    let verify = |range: std::ops::Range<usize>| -> Vec<bool> {
        let mut stat = DirStat::default();
        candidates[range]
            .iter()
            .map(|i| {
                let (path, observation) = entries[*i];
                compare(&mut stat, path, observation, true, now_ns) == Now::Verified
            })
            .collect()
    };
    let verified = on_two_threads(candidates.len(), VERIFY_IN_PARALLEL, false, verify);
    for (i, verified) in candidates.into_iter().zip(verified) {
        if verified {
            racy[i] = false;
        }
    }
}

/// `work` over `0..len`, split in two halves on two threads from
/// `min_for_two` items on; the results in order. A half whose thread
/// panicked is `failed` throughout.
fn on_two_threads<T: Clone + Send>(
    len: usize,
    min_for_two: usize,
    failed: T,
    work: impl Fn(std::ops::Range<usize>) -> Vec<T> + Sync,
) -> Vec<T> {
    if len < min_for_two {
        return work(0..len);
    }
    std::thread::scope(|scope| {
        let other = scope.spawn(|| work(len / 2..len));
        let mut results = work(0..len / 2);
        results.extend(other.join().unwrap_or_else(|_| vec![failed; len - len / 2]));
        results
    })
}

/// Writes `bytes` over the file at `path` in place (created if missing),
/// then cuts it to their length.
///
/// Not atomic, and need not be: the memo and its side file are checked
/// on read (a checksum each), so a reader that meets a write half done, or
/// two runs writing at once, find no memo and take the full run. In place
/// rather than a new file renamed over the old one: a change run wrote
/// ~770 KB of memo to a new file each time, and rewriting the pages already
/// cached (no new inode, no page allocated, none freed) took ~2 ms off a
/// 40 ms run (ext4 without a journal skips every recently deleted inode
/// when it allocates one, and a new file per run deleted one per run).
fn overwrite(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    let mut file = match open() {
        Ok(file) => file,
        Err(_) => {
            let dir = path.parent().ok_or("no memo directory")?;
            fs_err::create_dir_all(dir).map_err(|e| e.to_string())?;
            open().map_err(|e| e.to_string())?
        }
    };
    file.write_all(bytes)
        .and_then(|()| file.set_len(u64::try_from(bytes.len()).unwrap_or(u64::MAX)))
        .map_err(|e| e.to_string())
}

/// Makes the memo at `path` unreadable (its magic overwritten), as a slow
/// run starts: if it is killed, the next run must not take a memo that the
/// files this run has begun to change no longer match.
pub fn invalidate(path: &Path) {
    use std::os::unix::fs::FileExt as _;
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
        if file.write_all_at(&[0], 0).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The instances' results from the side file, if it is the one expected.
fn read_settled(path: &Path, checksum: &[u8; 32]) -> Option<Vec<Settled>> {
    let bytes = std::fs::read(path).ok()?;
    if blake3::hash(&bytes).as_bytes() != checksum {
        return None;
    }
    decode_settled(&bytes)
}

/// File magic and format version of the side file of instance results.
const SETTLED_MAGIC: &[u8; 12] = b"CCFSETL\0\x00\x02\r\n";

/// The side file's bytes: every instance's result, length-prefixed fields.
/// Binary rather than JSON: a run after a one-file edit reads it whole,
/// and parsing the JSON of 1,000 instances cost more than stat'ing them.
fn encode_settled(settled: &[Settled]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SETTLED_MAGIC.len() + settled.len() * 256);
    out.extend_from_slice(SETTLED_MAGIC);
    put_u64(&mut out, settled.len());
    for instance in settled {
        put_bytes(&mut out, instance.id.as_bytes());
        put_bytes(&mut out, instance.key.as_bytes());
        put_u64(&mut out, instance.inputs.len());
        for input in &instance.inputs {
            put_bytes(&mut out, input.as_bytes());
        }
        put_u64(&mut out, instance.outputs.len());
        for (path, hash) in &instance.outputs {
            put_bytes(&mut out, path.as_bytes());
            put_bytes(&mut out, hash.as_bytes());
        }
        // Destructured: a new field must be encoded too.
        let Usage {
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_creation_tokens,
            cost_usd,
        } = instance.usage;
        for n in [
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_creation_tokens,
            cost_usd.to_bits(),
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.push(u8::from(instance.reproducible));
        put_bytes(
            &mut out,
            instance.digest.as_deref().unwrap_or_default().as_bytes(),
        );
    }
    out
}

/// The instances of a side file [`encode_settled`] wrote; `None` when the
/// bytes are not one.
fn decode_settled(bytes: &[u8]) -> Option<Vec<Settled>> {
    let mut reader = Reader {
        bytes: bytes.strip_prefix(SETTLED_MAGIC.as_slice())?,
    };
    let string = |reader: &mut Reader<'_>| -> Option<String> {
        std::str::from_utf8(reader.bytes_field()?)
            .ok()
            .map(str::to_owned)
    };
    let count = usize::try_from(reader.u64()?).ok()?;
    // Every instance takes at least this many bytes: a damaged count
    // cannot reserve more than the file could hold.
    let mut settled = Vec::with_capacity(count.min(bytes.len() / 65));
    for _ in 0..count {
        let id = string(&mut reader)?;
        let key = string(&mut reader)?;
        let inputs = (0..reader.u64()?)
            .map(|_| string(&mut reader))
            .collect::<Option<Vec<_>>>()?;
        let outputs = (0..reader.u64()?)
            .map(|_| Some((string(&mut reader)?, string(&mut reader)?)))
            .collect::<Option<Vec<_>>>()?;
        let usage = Usage {
            input_tokens: reader.u64()?,
            output_tokens: reader.u64()?,
            cache_read_tokens: reader.u64()?,
            cache_creation_tokens: reader.u64()?,
            cost_usd: f64::from_bits(reader.u64()?),
        };
        let reproducible = reader.take(1)?[0] != 0;
        let digest = Some(string(&mut reader)?).filter(|d| !d.is_empty());
        settled.push(Settled {
            id,
            key,
            inputs,
            outputs,
            usage,
            reproducible,
            digest,
        });
    }
    reader.bytes.is_empty().then_some(settled)
}

struct Sections<'a> {
    proven: &'a [u8],
    /// The checksum of the instances' side file.
    instances: &'a [u8],
    settled: &'a [u8],
    /// The kept walks (see [`walks`]).
    walks: &'a [u8],
}

fn write_memo(
    context: &Context,
    sections: &Sections<'_>,
    entries: &[(&PathBuf, &Observation)],
    racy: &[bool],
) -> Result<(), String> {
    let mut body = Vec::with_capacity(
        MAGIC.len() + sections.proven.len() + sections.walks.len() + entries.len() * 128,
    );
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&context.digest);
    put_bytes(&mut body, sections.proven);
    put_bytes(&mut body, sections.instances);
    put_bytes(&mut body, sections.settled);
    put_bytes(&mut body, sections.walks);
    put_u64(&mut body, entries.len());
    for ((path, observation), racy) in entries.iter().zip(racy) {
        put_bytes(&mut body, path.as_os_str().as_encoded_bytes());
        // A racy observation needs its content hash (see `compare`); a
        // directory keeps its listing's, so that a run starting from this
        // memo can restore files into it and still vouch for it (see
        // `dir_rewritten`). Only directories carry a hash among the global
        // observations, and there are few of them.
        let hash = observation.hash.filter(|_| *racy || !observation.file);
        let flags = u8::from(observation.seen.is_some())
            | u8::from(observation.file) << 1
            | u8::from(hash.is_some()) << 2
            | u8::from(*racy) << 3;
        body.push(flags);
        if let Some(seen) = &observation.seen {
            put_stat(&mut body, seen);
        }
        if let Some(hash) = hash {
            body.extend_from_slice(&hash);
        }
    }
    let checksum = blake3::hash(&body[MAGIC.len()..]);
    body.extend_from_slice(checksum.as_bytes());
    overwrite(&context.path, &body)?;
    if let Some(dir) = context.path.parent() {
        prune(dir);
    }
    Ok(())
}

/// How many memos (workflow and argument combinations) are kept.
const MEMOS_KEPT: usize = 64;

/// Removes the least recently written memos beyond [`MEMOS_KEPT`] (each
/// `--var` combination has its own).
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut memos: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_none() && !e.file_name().as_bytes().starts_with(b"."))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if memos.len() <= MEMOS_KEPT {
        return;
    }
    memos.sort();
    for (_, path) in &memos[..memos.len() - MEMOS_KEPT] {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(path.with_extension("settled"));
        let _ = std::fs::remove_file(path.with_extension("instances"));
    }
}

fn put_u64(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u64::try_from(n).unwrap_or(0).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_stat(out: &mut Vec<u8>, seen: &Seen) {
    for n in [seen.dev, seen.ino, seen.size] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&seen.mtime_ns.to_le_bytes());
    out.extend_from_slice(&seen.ctime_ns.to_le_bytes());
    out.extend_from_slice(&seen.mode.to_le_bytes());
}

fn read_stat(reader: &mut Reader<'_>) -> Option<Seen> {
    Some(Seen {
        dev: reader.u64()?,
        ino: reader.u64()?,
        size: reader.u64()?,
        mtime_ns: i64::from_le_bytes(reader.take(8)?.try_into().ok()?),
        ctime_ns: i64::from_le_bytes(reader.take(8)?.try_into().ok()?),
        mode: u32::from_le_bytes(reader.take(4)?.try_into().ok()?),
    })
}

/// A decoded memo.
struct Memo<'a> {
    proven: &'a [u8],
    instances: &'a [u8],
    settled: &'a [u8],
    walks: &'a [u8],
    entries: Vec<(PathBuf, Observation)>,
    racy: Vec<bool>,
}

fn decode<'a>(bytes: &'a [u8], context: &Context) -> Option<Memo<'a>> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (body, checksum) = rest.split_at_checked(rest.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != checksum {
        return None;
    }
    let mut reader = Reader { bytes: body };
    if reader.take(32)? != context.digest {
        return None;
    }
    let proven = reader.bytes_field()?;
    let instances = reader.bytes_field()?;
    let settled = reader.bytes_field()?;
    if settled.len() != 32 || instances.len() != 32 {
        return None;
    }
    let walks = reader.bytes_field()?;
    let count = usize::try_from(reader.u64()?).ok()?;
    let mut entries = Vec::with_capacity(count);
    let mut racy = Vec::with_capacity(count);
    for _ in 0..count {
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(reader.bytes_field()?));
        let flags = reader.take(1)?[0];
        let seen = if flags & 1 != 0 {
            Some(read_stat(&mut reader)?)
        } else {
            None
        };
        let hash = if flags & 4 != 0 {
            Some(reader.take(32)?.try_into().ok()?)
        } else {
            None
        };
        entries.push((
            path,
            Observation {
                seen,
                file: flags & 2 != 0,
                hash,
                prior: false,
                vouches: false,
            },
        ));
        racy.push(flags & 8 != 0);
    }
    if !reader.bytes.is_empty() {
        return None;
    }
    Some(Memo {
        proven,
        instances,
        settled,
        walks,
        entries,
        racy,
    })
}

/// How one observation compares with the file system now.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Now {
    Same,
    /// Same stat and content, but racy when recorded: no longer racy now.
    Verified,
    /// Same stat and content, and still racy: the same now, but one more
    /// write within the tick could still hide, so it stays racy.
    SameRacy,
    Changed,
}

fn compare(
    stat: &mut DirStat,
    path: &Path,
    observation: &Observation,
    racy: bool,
    now_ns: i64,
) -> Now {
    let seen = stat.stat(path).ok();
    if seen != observation.seen {
        return Now::Changed;
    }
    let Some(seen) = seen.filter(|_| racy) else {
        return Now::Same;
    };
    // Racy: the stat cannot vouch for the content; the hash can.
    let Some(expected) = observation.hash else {
        return Now::Changed;
    };
    let actual = if seen.is_dir() {
        listing_hash(path)
    } else {
        content_hash(path)
    };
    if actual != Some(expected) {
        return Now::Changed;
    }
    // Verified now, if still the same stat after the read; trusted from
    // here on once the clock has moved past it. A file written by the run
    // just before (back-to-back runs) is still racy: the same, and checked
    // again next time.
    let after = stat.stat(path).ok();
    if after != Some(seen) {
        Now::Changed
    } else if is_racy(&seen, now_ns) {
        Now::SameRacy
    } else {
        Now::Verified
    }
}

/// Reads the memo of `context` and checks every observation against the
/// file system now.
#[must_use]
pub fn check(context: &Context) -> Verdict {
    let Ok(bytes) = std::fs::read(&context.path) else {
        return Verdict::Unknown;
    };
    let Some(memo) = decode(&bytes, context) else {
        return Verdict::Unknown;
    };
    // Each kept walk vouches for itself: the run can use them whatever
    // the verdict.
    let Some(kept_walks) = walks::decode(memo.walks) else {
        return Verdict::Unknown;
    };
    walks::handed_over(kept_walks);
    crate::timing!("check: memo decoded");
    let now_ns = crate::cache::fsutil::coarse_now_ns();
    let compare_all = |range: std::ops::Range<usize>| -> Vec<Now> {
        let mut stat = DirStat::default();
        range
            .map(|i| {
                compare(
                    &mut stat,
                    &memo.entries[i].0,
                    &memo.entries[i].1,
                    memo.racy[i],
                    now_ns,
                )
            })
            .collect()
    };
    let n = memo.entries.len();
    let compared_at = Instant::now();
    // Two threads: the stats are most of the check.
    let results = on_two_threads(n, 2_000, Now::Changed, compare_all);
    crate::timing!("check: paths compared");
    let changed: Vec<usize> = (0..n).filter(|i| results[*i] == Now::Changed).collect();
    for i in changed.iter().take(10) {
        tracing::debug!(
            "up-to-date check: `{}` changed",
            memo.entries[*i].0.display()
        );
    }
    if changed.iter().any(|i| !memo.entries[*i].1.file) {
        return Verdict::Unknown;
    }
    if changed.is_empty() {
        let Ok(proven) = serde_json::from_slice::<Proven>(memo.proven) else {
            return Verdict::Unknown;
        };
        // The records the answer is written with, if they are the ones
        // the memo names.
        let Some(instances_json) = std::fs::read(context.instances_path())
            .ok()
            .filter(|json| blake3::hash(json).as_bytes() == memo.instances)
        else {
            return Verdict::Unknown;
        };
        // Racy entries verified now need no second look next time.
        if results.contains(&Now::Verified) {
            let entries: Vec<(&PathBuf, &Observation)> =
                memo.entries.iter().map(|(p, o)| (p, o)).collect();
            let racy: Vec<bool> = results.iter().map(|r| *r == Now::SameRacy).collect();
            let _ = write_memo(
                context,
                &Sections {
                    proven: memo.proven,
                    instances: memo.instances,
                    settled: memo.settled,
                    walks: memo.walks,
                },
                &entries,
                &racy,
            );
        }
        return Verdict::UpToDate(Box::new(UpToDate {
            proven,
            instances_json,
            settled_file: context.settled_path(),
            settled_checksum: memo.settled.try_into().unwrap_or_default(),
            checked: n,
            seed: Seed {
                entries: memo.entries,
                checked: Some(compared_at),
            },
        }));
    }
    let Ok(checksum) = <[u8; 32]>::try_from(memo.settled) else {
        return Verdict::Unknown;
    };
    // Which instances the changed files belong to, as relative path bytes.
    let changed_paths: Vec<Vec<u8>> = changed
        .iter()
        .filter_map(|i| memo.entries[*i].0.strip_prefix(&context.root).ok())
        .map(|rel| rel.as_os_str().as_bytes().to_vec())
        .collect();
    if changed_paths.len() != changed.len() {
        return Verdict::Unknown;
    }
    let changed_count = changed.len();
    let mut changed = changed.into_iter().peekable();
    let entries = memo
        .entries
        .into_iter()
        .enumerate()
        .filter(|(i, _)| {
            if changed.peek() == Some(i) {
                changed.next();
                false
            } else {
                true
            }
        })
        .map(|(_, entry)| entry)
        .collect();
    Verdict::Changed {
        settled: Unaffected {
            root: context.root.clone(),
            settled_file: context.settled_path(),
            checksum,
            changed: changed_paths,
            seed: Seed {
                entries,
                checked: Some(compared_at),
            },
        },
        changed: changed_count,
    }
}

/// The instances none of whose inputs and outputs changed, to be found on
/// a thread of their own ([`Unaffected::find`], once recording has
/// started): reading the memo's 1,000 instance results and matching their
/// paths (~1 ms) goes on beside the planning, which does not need them.
/// The same thread adds the observations that still hold to the
/// recording ([`merge_seed`]).
pub struct Unaffected {
    root: PathBuf,
    settled_file: PathBuf,
    checksum: [u8; 32],
    changed: Vec<Vec<u8>>,
    seed: Seed,
}

/// [`Unaffected`] being found.
pub struct Finding(FindingState);

enum FindingState {
    Running(std::thread::JoinHandle<Option<HashMap<String, Settled>>>),
    Done(Option<HashMap<String, Settled>>),
}

impl Unaffected {
    /// Starts finding them; call after [`start`].
    #[must_use]
    pub fn find(self) -> Finding {
        let Unaffected {
            root,
            settled_file,
            checksum,
            changed,
            seed,
        } = self;
        // Handed over through a channel: a closure given to a thread that
        // fails to start is gone, and the work must then be done here.
        let (sender, receiver) = std::sync::mpsc::channel::<Seed>();
        let work = move |seed: Seed| {
            merge_seed(seed);
            let clean = unaffected(&settled_file, &checksum, &changed);
            if let Some(clean) = &clean {
                let_outputs_vouch(&root, clean);
            }
            clean
        };
        let work_here = work.clone();
        let spawned = std::thread::Builder::new()
            .name("ccflow-memo-check".to_owned())
            .spawn(move || receiver.recv().ok().and_then(work));
        match spawned {
            Ok(thread) => {
                let _ = sender.send(seed);
                Finding(FindingState::Running(thread))
            }
            Err(_) => Finding(FindingState::Done(work_here(seed))),
        }
    }
}

impl Finding {
    /// The unaffected instances by id, or `None` when the memo cannot say
    /// (its results unreadable, or a changed file no instance reads or
    /// writes: what decided on it is unknown here).
    #[must_use]
    pub fn wait(self) -> Option<HashMap<String, Settled>> {
        match self.0 {
            FindingState::Running(thread) => thread.join().ok().flatten(),
            FindingState::Done(found) => found,
        }
    }
}

/// Lets the seeded observations of the declared outputs of the unaffected
/// instances `clean` vouch for their files (see [`vouched`]): files no
/// instance of the run is to write, unless a task writes what another
/// declares as its output.
fn let_outputs_vouch(root: &Path, clean: &HashMap<String, Settled>) {
    let mut guard = recorder();
    let Some(rec) = guard.as_mut() else { return };
    if rec.vouch_until.is_none() {
        return;
    }
    // Spelled as the run spells them: `root` joined with the relative path.
    let mut path = root.as_os_str().as_bytes().to_vec();
    path.push(b'/');
    let base = path.len();
    for instance in clean.values() {
        for (output, _) in &instance.outputs {
            path.truncate(base);
            path.extend_from_slice(output.as_bytes());
            if let Some(observation) = rec.seen.get_mut(path.as_slice()) {
                observation.vouches = observation.prior && observation.file;
            }
        }
    }
    crate::timing!("check: unaffected outputs may vouch");
}

fn unaffected(
    settled_file: &Path,
    checksum: &[u8; 32],
    changed: &[Vec<u8>],
) -> Option<HashMap<String, Settled>> {
    let settled = read_settled(settled_file, checksum)?;
    crate::timing!("check: instance results read");
    // As bytes, foldhash: every input and output of every instance is
    // looked up here, and `Path` hashes component by component.
    let changed_paths: HashSet<&[u8], foldhash::fast::FixedState> =
        changed.iter().map(Vec::as_slice).collect();
    let mut claimed: HashSet<&[u8], foldhash::fast::FixedState> = HashSet::default();
    let mut clean = HashMap::with_capacity(settled.len());
    for instance in settled {
        let mut touched = false;
        for path in instance
            .inputs
            .iter()
            .map(String::as_str)
            .chain(instance.outputs.iter().map(|(p, _)| p.as_str()))
        {
            if let Some(hit) = changed_paths.get(path.as_bytes()) {
                claimed.insert(hit);
                touched = true;
            }
        }
        if !touched && instance.reproducible {
            clean.insert(instance.id.clone(), instance);
        }
    }
    crate::timing!("check: unaffected instances found");
    (claimed.len() == changed_paths.len()).then_some(clean)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.bytes.split_at_checked(len)?;
        self.bytes = tail;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes_field(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }
}

/// Removes every memo (the cache was cleared or collected: a slow run
/// would miss where the memo says hit).
pub fn remove_all(state_dir: &Path) {
    let _ = std::fs::remove_dir_all(state_dir.join("memo"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_side_file_round_trips_and_rejects_damage() {
        let settled = vec![
            Settled {
                id: "each[in/a.txt]".into(),
                key: "ab".repeat(32),
                inputs: vec!["in/a.txt".into()],
                outputs: vec![("out/a.txt".into(), "cd".repeat(32))],
                usage: Usage {
                    input_tokens: 1,
                    output_tokens: 2,
                    cache_read_tokens: 3,
                    cache_creation_tokens: 4,
                    cost_usd: 0.125,
                },
                reproducible: true,
                digest: Some("ef".repeat(32)),
            },
            Settled {
                id: "all".into(),
                key: String::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                usage: Usage::default(),
                reproducible: false,
                digest: None,
            },
        ];
        let bytes = encode_settled(&settled);
        let decoded = decode_settled(&bytes).expect("decodes");
        assert_eq!(format!("{decoded:?}"), format!("{settled:?}"));
        // Torn, extended, or a count far larger than the file: not a file
        // of instances.
        assert!(decode_settled(&bytes[..bytes.len() - 1]).is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_settled(&longer).is_none());
        let mut huge = bytes;
        huge[SETTLED_MAGIC.len()..SETTLED_MAGIC.len() + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_settled(&huge).is_none());
        assert!(decode_settled(b"[]").is_none());
    }

    #[test]
    fn prune_keeps_the_most_recent_memos_and_their_side_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for n in 0..(MEMOS_KEPT + 3) {
            let memo = dir.path().join(format!("{n:032}"));
            std::fs::write(&memo, b"memo").expect("write");
            std::fs::write(memo.with_extension("settled"), b"[]").expect("write");
            let age = std::time::Duration::from_secs(u64::try_from(n).unwrap_or(0));
            std::fs::File::options()
                .append(true)
                .open(&memo)
                .and_then(|f| f.set_modified(base + age))
                .expect("mtime");
        }
        prune(dir.path());
        let left = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(
            left,
            2 * MEMOS_KEPT,
            "memos and side files beyond the limit go"
        );
        assert!(
            !dir.path().join(format!("{:032}", 0)).exists(),
            "the oldest goes"
        );
        assert!(!dir.path().join(format!("{:032}.settled", 2)).exists());
        assert!(dir.path().join(format!("{:032}", MEMOS_KEPT + 2)).exists());
    }

    #[test]
    fn racy_observations_that_still_hold_are_verified_once_no_longer_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let observe = |name: &str, content: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let seen = FileStat::of(&std::fs::metadata(&path).unwrap());
            let observation = Observation {
                seen: Some(seen),
                file: true,
                hash: Some(*blake3::hash(content.as_bytes()).as_bytes()),
                prior: false,
                vouches: false,
            };
            (path, observation)
        };
        let same = observe("same.txt", "alpha\n");
        let mut rewritten = observe("rewritten.txt", "beta\n");
        let mut unhashed = observe("unhashed.txt", "gamma\n");
        unhashed.1.hash = None;
        let verify = |observed: [&(PathBuf, Observation); 3]| {
            let entries: Vec<(&PathBuf, &Observation)> =
                observed.iter().map(|(path, o)| (path, o)).collect();
            let mut racy = vec![true; 3];
            verify_settled_racy(&entries, &mut racy);
            racy
        };
        // Written just now: still fresh, nothing is verified.
        assert_eq!(verify([&same, &rewritten, &unhashed]), [true, true, true]);
        // Past the window: the file as observed is verified; one whose
        // content differs from what was observed (here: the hash the run
        // recorded is another one) and one with no hash stay racy.
        rewritten.1.hash = Some(*blake3::hash(b"other\n").as_bytes());
        std::thread::sleep(std::time::Duration::from_nanos(
            u64::try_from(RACY_NS).unwrap() + 50_000_000,
        ));
        assert_eq!(verify([&same, &rewritten, &unhashed]), [false, true, true]);
    }

    #[test]
    fn only_unaffected_outputs_the_run_has_not_seen_since_the_check_are_vouched_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stat_of = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, name).expect("write");
            FileStat::of(&std::fs::metadata(&path).expect("stat"))
        };
        let observation = |seen: FileStat, file: bool| Observation {
            seen: Some(seen),
            file,
            hash: None,
            prior: false,
            vouches: false,
        };
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let sub_stat = FileStat::of(&std::fs::metadata(dir.path().join("sub")).expect("stat"));
        let entries = vec![
            ("kept.txt", observation(stat_of("kept.txt"), true)),
            ("written.txt", observation(stat_of("written.txt"), true)),
            ("global.txt", observation(stat_of("global.txt"), false)),
            ("sub", observation(sub_stat, true)),
            ("source.txt", observation(stat_of("source.txt"), true)),
        ];
        let checked = Instant::now();
        let mut rec = Recorder {
            vouch_until: Some(checked + VOUCH_FOR),
            ..Recorder::default()
        };
        for (name, o) in &entries {
            rec.seen.insert(
                PathKey(dir.path().join(name)),
                Observation { prior: true, ..*o },
            );
        }
        *recorder() = Some(rec);
        // Every one but `source.txt` is a declared output of an unaffected
        // instance.
        let output = |name: &str| (name.to_owned(), String::new());
        let settled = Settled {
            id: "each".into(),
            key: String::new(),
            inputs: vec!["source.txt".into()],
            outputs: ["kept.txt", "written.txt", "global.txt", "sub"]
                .into_iter()
                .map(output)
                .collect(),
            usage: Usage::default(),
            reproducible: true,
            digest: None,
        };
        let_outputs_vouch(dir.path(), &HashMap::from([("each".to_owned(), settled)]));
        let mut rec = recorder().take().expect("recorder");
        // The run rewrote one of them: its own observation replaced the seed.
        let written = dir.path().join("written.txt");
        std::fs::write(&written, "rewritten, longer").expect("write");
        let now_written = FileStat::of(&std::fs::metadata(&written).expect("stat"));
        rec.seen
            .insert(PathKey(written), observation(now_written, true));
        let mut paths: Vec<PathBuf> = entries.iter().map(|(n, _)| dir.path().join(n)).collect();
        paths.push(dir.path().join("never-seen.txt"));
        assert_eq!(
            rec.vouched(&paths, checked),
            [entries[0].1.seen, None, None, None, None, None],
            "only the unchanged output the run has not seen since"
        );
        assert_eq!(
            rec.vouched(&paths, checked + VOUCH_FOR),
            vec![None; paths.len()],
            "nothing once the window has passed"
        );
        rec.vouch_until = None;
        assert_eq!(rec.vouched(&paths[..1], checked), [None]);
    }

    #[test]
    fn a_directory_listing_hash_sees_a_new_entry_but_not_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), b"1").expect("write");
        let before = listing_hash(dir.path());
        std::fs::write(dir.path().join("a"), b"2").expect("write");
        assert_eq!(
            listing_hash(dir.path()),
            before,
            "contents are not listings"
        );
        std::fs::write(dir.path().join("b"), b"1").expect("write");
        assert_ne!(listing_hash(dir.path()), before);
    }
}
