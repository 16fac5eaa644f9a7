//! What became of one process: the typed outcome and the report around it.
//!
//! The scheduler maps these to task statuses and exit codes; the runner never
//! prints, so [`ProcessOutcome`]'s `Display` is the wording users see.

use std::fmt;
use std::time::Duration;

/// How a task's process ended. Each variant is a distinct failure mode so
/// that retries, reporting and exit codes can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// The process exited by itself with this code (0 is success).
    Exited { code: i32 },
    /// The process was killed by a signal it did not get from ccflow.
    Signaled { signal: i32 },
    /// The task ran past its timeout and its process group was stopped.
    TimedOut { after: Duration },
    /// The run was cancelled (Ctrl-C, fail-fast) and the group was stopped.
    Cancelled,
    /// No process could be started: missing program, missing working
    /// directory, unopenable redirection or log file.
    SpawnFailed { program: String, reason: String },
}

impl ProcessOutcome {
    /// True only for `Exited { code: 0 }`.
    #[must_use]
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Exited { code: 0 })
    }
}

impl fmt::Display for ProcessOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { code: 0 } => write!(f, "succeeded"),
            // The shell's conventional codes, spelled out because "exit code
            // 127" alone sends users searching.
            Self::Exited { code: 126 } => {
                write!(f, "exited with code 126 (command not executable)")
            }
            Self::Exited { code: 127 } => write!(f, "exited with code 127 (command not found)"),
            Self::Exited { code } => write!(f, "exited with code {code}"),
            Self::Signaled { signal } => match signal_name(*signal) {
                Some(name) => write!(f, "killed by signal {signal} ({name})"),
                None => write!(f, "killed by signal {signal}"),
            },
            Self::TimedOut { after } => {
                write!(f, "timed out after {}", humantime::format_duration(*after))
            }
            Self::Cancelled => write!(f, "cancelled"),
            Self::SpawnFailed { program, reason } => {
                write!(f, "failed to start `{program}`: {reason}")
            }
        }
    }
}

/// The conventional name of the common signals.
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return None,
    })
}

/// Everything the runner knows about one finished process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessReport {
    pub outcome: ProcessOutcome,
    /// Wall time from just before spawning to the end of cleanup.
    pub duration: Duration,
    /// Size of the log file as written, truncation marker included.
    pub log_bytes: u64,
    /// Bytes the task wrote to stdout/stderr (after masking), kept or not.
    pub output_bytes: u64,
    /// Output past `log_limit` was dropped; the log ends with a marker line.
    pub log_truncated: bool,
    /// Processes other than the main one that outlived it (left in its
    /// group, or escaped it with `setsid` or a double fork) and that ccflow
    /// killed and reaped.
    pub orphans_killed: usize,
    /// The main process's pid (also its process group id), if it started.
    pub pid: Option<u32>,
    /// Writing the log failed (disk full, ...); the process still ran to
    /// completion and `outcome` is its real outcome.
    pub log_error: Option<String>,
}
