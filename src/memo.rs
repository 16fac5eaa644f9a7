//! The up-to-date check: a `ccflow run` whose answer is already known (every
//! instance cached, nothing changed since) ends without planning anything,
//! in the time it takes to `stat` what the answer rests on.
//!
//! # What a slow run records
//!
//! While a run plans and executes, every file-system observation a decision
//! rests on is recorded with the stat seen ([`metadata`], [`stat`],
//! [`absent`]): the workflow file and its directory, each directory a glob
//! walk listed and the ignore files that shaped the walk (in the directory
//! and its ancestors), every input and output stat'ed or hashed, the files
//! `lines_of`/`json_of` read, the claude CLI. This is what git's untracked
//! cache keeps (directory stats plus ignore files) and what ninja compares
//! on a no-op (file stats).
//!
//! # When it becomes a memo
//!
//! Only a run that proved itself a no-op writes a memo: it succeeded with
//! every instance cached or skipped, wrote no file (no restore), took no
//! agent snapshot and ran no Docker task (an image can change under its
//! tag), and no observation contradicts another (a path seen with two
//! stats) or is racy (modified too close to when it was seen: a second
//! write within one timestamp tick would not show). So a workflow whose key
//! changes on every run (`cache: false`, `run.id` in a template) never gets
//! a memo, by construction: its runs never end all cached.
//!
//! The memo holds the context (the ccflow binary's identity, the root, the
//! workflow path, the arguments, `PATH` and `CCFLOW_CLAUDE`), the instance
//! records of the proving run and every observed path with its stat
//! (device, inode, size, mtime, ctime, mode). Any slow run removes the
//! memo of its context first.
//!
//! # The check
//!
//! The next `ccflow run` with the same context reads the memo (its checksum
//! guards against a torn write) and stats every path. If every stat is
//! identical, a slow run would observe exactly what the proving run did and
//! reach the same decisions: every instance cached. The run record is
//! written from the proving run's records and the run ends. Any difference
//! (a touched file, a new file in a walked directory, an edited
//! `.gitignore`) falls back to the slow run, which is always correct.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::report::record::{Counts, InstanceRecord, InstanceStatus, Usage};

/// File magic and format version.
const MAGIC: &[u8; 12] = b"CCFMEMO\0\x00\x01\r\n";

/// An observation is racy when the file changed this close before it was
/// observed: one more write within the same timestamp tick would leave the
/// same stat. Generous: it only costs one more slow run.
const RACY_NS: i64 = 100_000_000;

/// A file's identity and state as `stat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    mode: u32,
}

impl Seen {
    fn of(metadata: &std::fs::Metadata) -> Seen {
        Seen {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
            mode: metadata.mode(),
        }
    }
}

/// What one path looked like when observed; `None` when it did not exist.
type Observation = Option<Seen>;

/// The observations of one run.
#[derive(Default)]
struct Recorder {
    seen: HashMap<PathBuf, Observation>,
    /// Why this run cannot vouch for a no-op, if it cannot.
    spoiled: Option<String>,
    /// The coarse clock when recording started: anything modified after it
    /// (minus a tick) is racy.
    started_ns: i64,
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

fn recorder() -> MutexGuard<'static, Option<Recorder>> {
    RECORDER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts recording observations (the slow path of `ccflow run`).
pub fn start() {
    *recorder() = Some(Recorder {
        started_ns: crate::cache::fsutil::coarse_now_ns(),
        ..Recorder::default()
    });
    ACTIVE.store(true, Ordering::Release);
}

fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

fn record(path: &Path, observation: Observation) {
    let mut guard = recorder();
    let Some(rec) = guard.as_mut() else { return };
    match rec.seen.get(path) {
        Some(previous) if *previous == observation => {}
        Some(_) => {
            if rec.spoiled.is_none() {
                rec.spoiled = Some(format!("`{}` changed during the run", path.display()));
            }
        }
        None => {
            rec.seen.insert(path.to_path_buf(), observation);
        }
    }
}

/// Records `path` as seen with `metadata` (which must follow symlinks, as
/// `std::fs::metadata` does).
pub fn metadata(path: &Path, metadata: &std::fs::Metadata) {
    if active() {
        record(path, Some(Seen::of(metadata)));
    }
}

/// Records that `path` did not exist.
pub fn absent(path: &Path) {
    if active() {
        record(path, None);
    }
}

/// Stats `path` (following symlinks) and records what it found, once per
/// path and run: for directories listed by a walk and ignore files.
pub fn stat(path: &Path) {
    if !active() {
        return;
    }
    if recorder()
        .as_ref()
        .is_some_and(|rec| rec.seen.contains_key(path))
    {
        return;
    }
    match std::fs::metadata(path) {
        Ok(m) => metadata(path, &m),
        Err(_) => absent(path),
    }
}

/// Records the ignore files a walk starting at `dir` consults: `.gitignore`
/// and `.ignore` in `dir` and every ancestor, and `.git/info/exclude`.
pub fn ignore_files_above(dir: &Path) {
    if !active() {
        return;
    }
    for ancestor in dir.ancestors() {
        ignore_files_in(ancestor);
        stat(&ancestor.join(".git/info/exclude"));
    }
}

/// Records a directory listed by a walk, and its ignore files.
pub fn walked_dir(dir: &Path) {
    if !active() {
        return;
    }
    stat(dir);
    ignore_files_in(dir);
}

fn ignore_files_in(dir: &Path) {
    stat(&dir.join(".gitignore"));
    stat(&dir.join(".ignore"));
}

/// This run cannot vouch for a no-op (it wrote files, or depends on
/// something no stat shows).
pub fn spoil(reason: &str) {
    if !active() {
        return;
    }
    if let Some(rec) = recorder().as_mut() {
        if rec.spoiled.is_none() {
            rec.spoiled = Some(reason.to_owned());
        }
    }
}

/// Stops recording, discarding the observations.
pub fn stop() {
    ACTIVE.store(false, Ordering::Release);
    recorder().take();
}

/// Stops recording and returns the observations, or why they cannot make
/// a memo.
fn finish() -> Result<Recorder, String> {
    ACTIVE.store(false, Ordering::Release);
    let rec = recorder().take().ok_or("not recording")?;
    if let Some(reason) = &rec.spoiled {
        return Err(reason.clone());
    }
    Ok(rec)
}

/// What identifies a memo: everything outside the observed files that a
/// run's decisions depend on.
pub struct Context {
    digest: [u8; 32],
    path: PathBuf,
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
            let seen = Seen::of(&m);
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
        }
    }

    /// Removes this context's memo (a slow run is starting).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the proving run recorded about the workflow.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Proven {
    pub workflow: String,
    pub workflow_file: String,
    pub run_id: String,
    pub counts: Counts,
    pub usage: Usage,
}

/// A memo that holds: the proving run and its instance records, as compact
/// JSON (ready to be spliced into the new run record).
pub struct UpToDate {
    pub proven: Proven,
    pub instances_json: Vec<u8>,
    /// How many paths were checked.
    pub checked: usize,
}

/// Ends recording; writes the memo when the run proved a no-op, else
/// leaves none. Returns why no memo was written (for `--verbose` logs).
///
/// # Errors
/// Why this run cannot vouch for a no-op.
pub fn conclude(
    context: &Context,
    proven: &Proven,
    instances: &[InstanceRecord],
) -> Result<(), String> {
    let rec = finish()?;
    let all_cached = instances
        .iter()
        .all(|i| matches!(i.status, InstanceStatus::Cached | InstanceStatus::Skipped));
    if !all_cached || proven.counts.succeeded > 0 {
        return Err("some instances ran".into());
    }
    let now = crate::cache::fsutil::coarse_now_ns();
    let limit = rec.started_ns.min(now) - RACY_NS;
    if let Some((path, _)) = rec
        .seen
        .iter()
        .find(|(_, seen)| seen.is_some_and(|s| s.mtime_ns >= limit || s.ctime_ns >= limit))
    {
        return Err(format!("`{}` changed just before the run", path.display()));
    }
    // Records without this run's logs and times: the memo's answer has none.
    let records: Vec<InstanceRecord> = instances
        .iter()
        .map(|i| InstanceRecord {
            attempts: Vec::new(),
            started_unix_ms: None,
            finished_unix_ms: None,
            duration_ms: 0,
            log: None,
            ..i.clone()
        })
        .collect();
    let instances_json = serde_json::to_vec(&records).map_err(|e| e.to_string())?;
    let proven_json = serde_json::to_vec(proven).map_err(|e| e.to_string())?;
    let mut body = Vec::with_capacity(instances_json.len() + rec.seen.len() * 96);
    body.extend_from_slice(&context.digest);
    put_bytes(&mut body, &proven_json);
    put_bytes(&mut body, &instances_json);
    let mut seen: Vec<(&PathBuf, &Observation)> = rec.seen.iter().collect();
    seen.sort_by(|a, b| a.0.cmp(b.0));
    body.extend_from_slice(&u64::try_from(seen.len()).unwrap_or(0).to_le_bytes());
    for (path, observation) in seen {
        put_bytes(&mut body, path.as_os_str().as_encoded_bytes());
        match observation {
            None => body.push(0),
            Some(s) => {
                body.push(1);
                for n in [s.dev, s.ino, s.size] {
                    body.extend_from_slice(&n.to_le_bytes());
                }
                body.extend_from_slice(&s.mtime_ns.to_le_bytes());
                body.extend_from_slice(&s.ctime_ns.to_le_bytes());
                body.extend_from_slice(&s.mode.to_le_bytes());
            }
        }
    }
    let checksum = blake3::hash(&body);
    let dir = context.path.parent().ok_or("no memo directory")?;
    fs_err::create_dir_all(dir).map_err(|e| e.to_string())?;
    let temp = dir.join(format!(".tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(fs_err::File::create(&temp)?);
        file.write_all(MAGIC)?;
        file.write_all(&body)?;
        file.write_all(checksum.as_bytes())?;
        file.into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        fs_err::rename(&temp, &context.path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        e.to_string()
    })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u64::try_from(bytes.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads the memo of `context` and checks every observation against the
/// file system now. `None` when there is no memo, it is damaged, or
/// anything changed: the slow run decides.
#[must_use]
pub fn check(context: &Context) -> Option<UpToDate> {
    let bytes = std::fs::read(&context.path).ok()?;
    let body = bytes
        .strip_prefix(MAGIC.as_slice())?
        .split_at_checked(bytes.len().checked_sub(MAGIC.len() + 32)?)?;
    let (body, checksum) = body;
    if blake3::hash(body).as_bytes() != checksum {
        return None;
    }
    let mut reader = Reader { bytes: body };
    if reader.take(32)? != context.digest {
        return None;
    }
    let proven: Proven = serde_json::from_slice(reader.bytes_field()?).ok()?;
    let instances_json = reader.bytes_field()?.to_vec();
    let count = usize::try_from(reader.u64()?).ok()?;
    let mut seen = Vec::with_capacity(count);
    for _ in 0..count {
        let path = Path::new(std::ffi::OsStr::from_bytes(reader.bytes_field()?));
        let observation = match reader.take(1)?[0] {
            0 => None,
            _ => Some(Seen {
                dev: reader.u64()?,
                ino: reader.u64()?,
                size: reader.u64()?,
                mtime_ns: i64::from_le_bytes(reader.take(8)?.try_into().ok()?),
                ctime_ns: i64::from_le_bytes(reader.take(8)?.try_into().ok()?),
                mode: u32::from_le_bytes(reader.take(4)?.try_into().ok()?),
            }),
        };
        seen.push((path, observation));
    }
    if !reader.bytes.is_empty() {
        return None;
    }
    let unchanged = |part: &[(&Path, Observation)]| {
        part.iter().all(|(path, observation)| {
            let now = std::fs::metadata(path).ok().map(|m| Seen::of(&m));
            now == *observation
        })
    };
    // Two threads: stats are mostly system time, and 10,000 of them are
    // most of the check.
    let (first, second) = seen.split_at(seen.len() / 2);
    let all = if seen.len() < 2_000 {
        unchanged(&seen)
    } else {
        std::thread::scope(|scope| {
            let other = scope.spawn(|| unchanged(second));
            let mine = unchanged(first);
            other.join().unwrap_or(false) && mine
        })
    };
    all.then_some(UpToDate {
        proven,
        instances_json,
        checked: seen.len(),
    })
}

use std::os::unix::ffi::OsStrExt as _;

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
