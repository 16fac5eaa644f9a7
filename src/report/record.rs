//! Run records: `.ccflow/runs/RUN_ID/run.json` with every instance's
//! status, attempts, times, exit code, log path, tokens and cost. Written
//! atomically at the start of a run (status `running`) and at its end, so a
//! killed run still leaves a record. `ccflow runs`, `logs` and `show` read them.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of `run.json`.
pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Not run yet (still in the record of an interrupted run, or never reached).
    Pending,
    Running,
    Succeeded,
    Cached,
    Failed,
    TimedOut,
    /// `if:` rendered false.
    Skipped,
    /// A dependency failed.
    Blocked,
    Cancelled,
    /// The agent's diff did not apply cleanly.
    Conflict,
    /// Not started: fail-fast stop, or budget exhausted.
    NotStarted,
}

impl InstanceStatus {
    /// The short word of the plain reporter.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            InstanceStatus::Pending => "pending",
            InstanceStatus::Running => "running",
            InstanceStatus::Succeeded => "ok",
            InstanceStatus::Cached => "cached",
            InstanceStatus::Failed => "failed",
            InstanceStatus::TimedOut => "timeout",
            InstanceStatus::Skipped => "skipped",
            InstanceStatus::Blocked => "blocked",
            InstanceStatus::Cancelled => "cancel",
            InstanceStatus::Conflict => "conflict",
            InstanceStatus::NotStarted => "not run",
        }
    }

    /// Whether downstream instances may use this instance's outputs.
    #[must_use]
    pub fn is_success(self) -> bool {
        matches!(
            self,
            InstanceStatus::Succeeded | InstanceStatus::Cached | InstanceStatus::Skipped
        )
    }

    #[must_use]
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            InstanceStatus::Failed | InstanceStatus::TimedOut | InstanceStatus::Conflict
        )
    }
}

/// One attempt of an instance.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How it ended, in words (`exited with code 1`, `timed out after 2s`).
    pub outcome: String,
}

/// Token usage and cost of agent instances.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    pub cost_usd: f64,
}

impl Usage {
    #[must_use]
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_creation_tokens
    }

    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_creation_tokens += other.cache_creation_tokens;
        self.cost_usd += other.cost_usd;
    }
}

/// One instance in the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub task: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub status: InstanceStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_unix_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The log, relative to the run directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    #[serde(default)]
    pub usage: Usage,
    /// Files kept for this instance (transcript, diff, salvaged patch), relative to the run directory.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub artifacts: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
    BudgetExhausted,
}

impl RunStatus {
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::BudgetExhausted => "budget exhausted",
        }
    }
}

/// Counts by status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct Counts {
    pub total: usize,
    pub succeeded: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    pub blocked: usize,
    pub not_started: usize,
    pub conflicts: usize,
}

impl Counts {
    #[must_use]
    pub fn from_instances(instances: &[InstanceRecord]) -> Counts {
        let mut c = Counts {
            total: instances.len(),
            ..Counts::default()
        };
        for i in instances {
            match i.status {
                InstanceStatus::Succeeded => c.succeeded += 1,
                InstanceStatus::Cached => c.cached += 1,
                InstanceStatus::Failed | InstanceStatus::TimedOut => c.failed += 1,
                InstanceStatus::Conflict => c.conflicts += 1,
                InstanceStatus::Skipped => c.skipped += 1,
                InstanceStatus::Blocked => c.blocked += 1,
                InstanceStatus::NotStarted
                | InstanceStatus::Cancelled
                | InstanceStatus::Pending
                | InstanceStatus::Running => {
                    c.not_started += 1;
                }
            }
        }
        c
    }
}

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub version: u32,
    pub run_id: String,
    pub workflow: String,
    pub workflow_file: String,
    pub status: RunStatus,
    pub started_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    pub duration_ms: u64,
    pub counts: Counts,
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    pub instances: Vec<InstanceRecord>,
}

impl RunRecord {
    /// Writes `run.json` atomically into `dir`, as compact JSON: a run over
    /// 1,000 instances writes its record twice (as it starts and as it
    /// ends), and pretty-printed it was 40% larger (511 KB against 364)
    /// and ~1 ms slower to serialize and write each time. `jq .` reads it.
    ///
    /// # Errors
    /// I/O failures, naming the path.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        write_run_json(dir, |out| {
            serde_json::to_writer(out, self).map_err(std::io::Error::other)
        })
    }

    /// Writes the record with `instances_json` (a JSON array of
    /// [`InstanceRecord`]s, already encoded) as its instances.
    ///
    /// # Errors
    /// I/O failures, naming the path.
    pub fn write_with_instances(&self, dir: &Path, instances_json: &[u8]) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let empty = b"[]}";
        if !self.instances.is_empty() || !text.ends_with(empty) {
            return Err(std::io::Error::other("unexpected run record layout"));
        }
        text.truncate(text.len() - empty.len());
        write_run_json(dir, |out| {
            out.write_all(&text)?;
            out.write_all(instances_json)?;
            out.write_all(b"}")
        })
    }

    /// Reads a run's record.
    ///
    /// # Errors
    /// Missing or unreadable record.
    pub fn read(dir: &Path) -> Result<RunRecord, String> {
        let path = dir.join("run.json");
        let text = fs_err::read(&path).map_err(|e| e.to_string())?;
        serde_json::from_slice(&text)
            .map_err(|e| format!("`{}` is not a valid run record: {e}", path.display()))
    }
}

/// Replaces `dir/run.json` atomically (temp file, then
/// [`crate::cache::fsutil::replace_file`]) with what `fill` writes. Streamed
/// through a small buffer: serializing 1,000 instances into one growing
/// buffer touched ~1 MB of fresh memory, most of the writer's time.
fn write_run_json(
    dir: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<fs_err::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let temp = dir.join(format!(".run.json.{}.tmp", std::process::id()));
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, fs_err::File::create(&temp)?);
    let written = fill(&mut out)
        .and_then(|()| out.flush())
        .and_then(|()| crate::cache::fsutil::replace_file(&temp, &dir.join("run.json")));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Run directories under `state/runs`, newest first.
#[must_use]
pub fn list_runs(state_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = run_dirs_newest_first(state_dir);
    dirs.retain(|dir| has_record(dir));
    dirs
}

/// Whether a run directory holds its record.
#[must_use]
pub fn has_record(run_dir: &Path) -> bool {
    run_dir.join("run.json").is_file()
}

/// Every entry of `.ccflow/runs`, newest first, record or not.
#[must_use]
pub fn run_dirs_newest_first(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("runs")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    dirs.sort_unstable_by(|a, b| b.cmp(a));
    dirs
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A sortable, unique run id: `20261126-011500-3fa2`.
#[must_use]
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs()),
    )
    .to_string();
    // 2026-11-26T01:15:00Z -> 20261126-011500
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    format!(
        "{}-{}-{:04x}",
        &digits[..8],
        &digits[8..14],
        fastrand::u16(..)
    )
}

/// A file-name-safe form of an instance id, for log files.
///
/// Distinct ids give distinct names: when characters had to be replaced
/// (`a[x y]` and `a[x_y]` both read `a_x_y_`), a hash of the id is appended,
/// or two instances would write (and cache) one log file.
#[must_use]
pub fn file_name_for(id: &str) -> String {
    let mut name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | ',') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.len() > 100 {
        name.truncate(80);
        name.push_str(&format!("-{}", &blake3::hash(id.as_bytes()).to_hex()[..16]));
    } else if name != id {
        name.push_str(&format!("-{}", &blake3::hash(id.as_bytes()).to_hex()[..8]));
    }
    name
}
