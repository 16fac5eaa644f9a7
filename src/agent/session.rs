//! Supervising one `claude` process: spawn it in its own process group, feed
//! the prompt on stdin, read stream-json as it arrives (keeping the raw
//! transcript), and end it on a hang, a timeout or a cancel.
//!
//! Invariant: when `run_session` returns, the process group has been killed
//! (when it outlived its session) and the leader reaped, so no `claude`
//! process survives its session. The CLI is known to hang after printing its
//! `result` line; that is why a result is followed by a short grace period
//! and then a kill, which does not turn a successful result into a failure.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_util::sync::CancellationToken;

use super::stream::{activity, parse_line, ResultMessage, StreamEvent, Usage};

/// Everything needed to run one session.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The `claude` binary.
    pub binary: PathBuf,
    /// Its arguments (from `build_args`).
    pub args: Vec<String>,
    /// The prompt, written to stdin.
    pub prompt: String,
    /// The working directory (the agent's worktree).
    pub cwd: PathBuf,
    /// The complete environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Where the raw NDJSON stdout is kept; stderr goes beside it (see [`stderr_path`]).
    pub transcript_path: PathBuf,
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Longest time without a stdout line before the session is killed.
    pub idle_timeout: Duration,
    /// How long the process may linger after its `result` line.
    pub result_grace: Duration,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionStatus {
    /// A `success` result without `is_error`, and exit 0 (or killed after the result).
    Succeeded,
    /// The agent failed (non-zero exit, `is_error`, or an error subtype).
    Failed {
        /// Why, for the user.
        reason: String,
    },
    /// The API kept answering 429/529 (overloaded): retry later with backoff.
    RateLimited {
        /// The HTTP status.
        status: u16,
        /// `api_retry` lines seen (the CLI's own retries).
        retries_seen: u32,
    },
    /// `error_max_turns`: the diff made so far may be salvaged.
    MaxTurns,
    /// `error_max_budget_usd`.
    MaxBudget,
    /// The process ended without a `result` line.
    NoResult,
    /// A stdout line was not stream-json and no result followed.
    Malformed {
        /// Its 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// No output for `idle_timeout`.
    IdleTimeout,
    /// The wall-clock `timeout` passed.
    TimedOut,
    /// The cancellation token fired.
    Cancelled,
    /// The process could not be started.
    SpawnFailed {
        /// The binary.
        binary: PathBuf,
        /// The error.
        error: String,
    },
}

impl SessionStatus {
    /// Whether the session succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, SessionStatus::Succeeded)
    }
}

/// The outcome of a session.
#[derive(Debug, Clone)]
pub struct SessionOutcome {
    /// How it ended.
    pub status: SessionStatus,
    /// The `result` line, when there was one.
    pub result: Option<ResultMessage>,
    /// The exit code (`None` when killed by a signal or never started).
    pub exit_code: Option<i32>,
    /// Token usage (from the result).
    pub usage: Usage,
    /// The CLI's cost figure (from the result).
    pub cost_usd: f64,
    /// Model turns (from the result).
    pub num_turns: u32,
    /// The session id (from the result, else from `init`).
    pub session_id: Option<String>,
    /// `api_retry` lines seen.
    pub api_retries: u32,
    /// Wall time.
    pub duration: Duration,
    /// Whether ccflow had to kill the process (hang after result, timeouts, cancel).
    pub killed: bool,
    /// The end of stderr (at most 4 KiB), for failure messages.
    pub stderr_tail: String,
    /// The process id (also its process group id), when it started.
    pub pid: Option<u32>,
}

/// Where a session's stderr is kept: beside the transcript, `.stderr` added.
pub fn stderr_path(transcript: &Path) -> PathBuf {
    let mut name = transcript.as_os_str().to_owned();
    name.push(".stderr");
    PathBuf::from(name)
}

/// Why the read loop stopped early.
enum Stop {
    Cancelled,
    TimedOut,
    Idle,
    AfterResult,
}

/// Runs a session to its end; never panics, always reaps.
pub async fn run_session(
    spec: SessionSpec,
    cancel: CancellationToken,
    activity_slot: Option<Arc<Mutex<String>>>,
) -> SessionOutcome {
    let started = Instant::now();
    let mut outcome = SessionOutcome {
        status: SessionStatus::NoResult,
        result: None,
        exit_code: None,
        usage: Usage::default(),
        cost_usd: 0.0,
        num_turns: 0,
        session_id: None,
        api_retries: 0,
        duration: Duration::ZERO,
        killed: false,
        stderr_tail: String::new(),
        pid: None,
    };
    let spawn_failed = |error: String| SessionStatus::SpawnFailed {
        binary: spec.binary.clone(),
        error,
    };
    let files = open_files(&spec.transcript_path);
    let (mut transcript, stderr_file) = match files {
        Ok(files) => files,
        Err(error) => {
            outcome.status = spawn_failed(error);
            return outcome;
        }
    };
    let mut command = Command::new(&spec.binary);
    command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr_file))
        // Its own group, so one signal reaches the CLI and every tool
        // process it started (a Bash tool's `cargo build`, say).
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            outcome.status = spawn_failed(error.to_string());
            return outcome;
        }
    };
    outcome.pid = child.id();
    let pgid = child.id().and_then(|pid| i32::try_from(pid).ok());

    if let Some(mut stdin) = child.stdin.take() {
        let prompt = spec.prompt.clone();
        // Written by a task so a CLI that does not read stdin promptly cannot
        // block the supervision loop; dropping stdin closes it (EOF = prompt end).
        tokio::spawn(async move {
            let _ = stdin.write_all(prompt.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
    }
    let Some(stdout) = child.stdout.take() else {
        kill_group(pgid, &mut child, spec.kill_grace).await;
        outcome.status = spawn_failed("stdout was not captured".to_owned());
        return outcome;
    };
    let mut stdout = BufReader::new(stdout);
    // Kept across loop iterations: `read_until` may be interrupted by another
    // `select!` branch after reading part of a line, which stays in here.
    let mut buffer: Vec<u8> = Vec::new();

    let deadline = spec.timeout.map(|timeout| TokioInstant::now() + timeout);
    let mut last_output = TokioInstant::now();
    let mut result_at: Option<TokioInstant> = None;
    let mut malformed: Option<(usize, String)> = None;
    let mut line_number = 0usize;
    let mut stdout_open = true;
    let mut exit: Option<ExitStatus> = None;
    let mut stop: Option<Stop> = None;

    while stdout_open || exit.is_none() {
        let idle_at = last_output + spec.idle_timeout;
        let grace_at = result_at.map(|at| at + spec.result_grace);
        tokio::select! {
            () = cancel.cancelled() => { stop = Some(Stop::Cancelled); break; }
            () = sleep_until(deadline.unwrap_or(idle_at)), if deadline.is_some() => {
                stop = Some(Stop::TimedOut); break;
            }
            () = sleep_until(grace_at.unwrap_or(idle_at)), if grace_at.is_some() => {
                stop = Some(Stop::AfterResult); break;
            }
            () = sleep_until(idle_at), if result_at.is_none() => { stop = Some(Stop::Idle); break; }
            status = child.wait(), if exit.is_none() => {
                match status {
                    Ok(status) => exit = Some(status),
                    Err(error) => {
                        tracing::warn!(%error, "failed to wait for `claude`");
                        break;
                    }
                }
                // The leader is gone; tool processes it left behind may
                // still hold stdout open, so the group goes too.
                signal_group(pgid, libc::SIGKILL);
            }
            read = stdout.read_until(b'\n', &mut buffer), if stdout_open => match read {
                Ok(0) | Err(_) => stdout_open = false,
                Ok(_) => {
                    // Lossy: one stray non-UTF-8 byte must not stop the
                    // reading (the CLI would then block on a full pipe).
                    let line = String::from_utf8_lossy(&buffer).trim_end_matches(['\n', '\r']).to_owned();
                    buffer.clear();
                    last_output = TokioInstant::now();
                    line_number += 1;
                    if let Err(error) = transcript.write_all(format!("{line}\n").as_bytes()).await {
                        tracing::warn!(%error, path = %spec.transcript_path.display(), "failed to write the transcript");
                    }
                    if line.trim().is_empty() {
                        continue;
                    }
                    match parse_line(&line, line_number) {
                        Ok(event) => {
                            if let (Some(slot), Some(text)) = (&activity_slot, activity(&event, &spec.cwd)) {
                                *slot.lock().unwrap_or_else(PoisonError::into_inner) = text;
                            }
                            match event {
                                StreamEvent::Init { session_id, .. } => {
                                    outcome.session_id = outcome.session_id.take().or(session_id);
                                }
                                StreamEvent::ApiRetry { .. } => outcome.api_retries += 1,
                                StreamEvent::Result(result) => {
                                    result_at = Some(TokioInstant::now());
                                    outcome.result = Some(result);
                                }
                                _ => {}
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "unexpected `claude` output");
                            malformed.get_or_insert((error.line, error.message));
                        }
                    }
                }
            },
        }
    }

    if let Some(stop) = &stop {
        outcome.killed = exit.is_none();
        if matches!(stop, Stop::AfterResult) {
            tracing::debug!("`claude` lingered after its result; killing its process group");
        }
    }
    if exit.is_none() {
        exit = kill_group(pgid, &mut child, spec.kill_grace).await;
    } else {
        // Reaped already; stragglers in the group were sent SIGKILL.
        signal_group(pgid, libc::SIGKILL);
    }
    // SIGKILL is delivered asynchronously and stragglers are not our children
    // (we cannot wait for them): give them a bounded moment to be gone.
    wait_group_gone(pgid, spec.kill_grace.max(Duration::from_millis(500))).await;
    let _ = transcript.flush().await;

    outcome.exit_code = exit.and_then(|status| status.code());
    outcome.duration = started.elapsed();
    outcome.stderr_tail = read_tail(&stderr_path(&spec.transcript_path));
    if let Some(result) = &outcome.result {
        outcome.usage = result.usage;
        outcome.cost_usd = result.total_cost_usd;
        outcome.num_turns = result.num_turns;
        if result.session_id.is_some() {
            outcome.session_id.clone_from(&result.session_id);
        }
    }
    let exit_failure = exit.and_then(|status| {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(0), _) => None,
            (Some(code), _) => Some(format!("`claude` exited with code {code}")),
            (None, Some(signal)) => Some(format!("`claude` was killed by signal {signal}")),
            (None, None) => Some("`claude` ended abnormally".to_owned()),
        }
    });
    outcome.status = match stop {
        Some(Stop::Cancelled) => SessionStatus::Cancelled,
        Some(Stop::TimedOut) => SessionStatus::TimedOut,
        Some(Stop::Idle) => SessionStatus::IdleTimeout,
        // A kill after the result does not make the exit status count.
        Some(Stop::AfterResult) => classify(
            outcome.result.as_ref(),
            None,
            outcome.api_retries,
            malformed,
        ),
        None => classify(
            outcome.result.as_ref(),
            exit_failure,
            outcome.api_retries,
            malformed,
        ),
    };
    outcome
}

/// Applies SPEC §5's failure rule to a finished session.
fn classify(
    result: Option<&ResultMessage>,
    exit_failure: Option<String>,
    api_retries: u32,
    malformed: Option<(usize, String)>,
) -> SessionStatus {
    let Some(result) = result else {
        return match malformed {
            Some((line, message)) => SessionStatus::Malformed { line, message },
            None => SessionStatus::NoResult,
        };
    };
    let text = result.result.clone().unwrap_or_default();
    if result.is_error {
        if let Some(status) = rate_limit_status(result) {
            return SessionStatus::RateLimited {
                status,
                retries_seen: api_retries,
            };
        }
    }
    match result.subtype.as_str() {
        "error_max_turns" => return SessionStatus::MaxTurns,
        "error_max_budget_usd" => return SessionStatus::MaxBudget,
        "success" => {}
        other => {
            let details = if result.errors.is_empty() {
                text
            } else {
                result.errors.join("; ")
            };
            return SessionStatus::Failed {
                reason: format!("`{other}`: {details}"),
            };
        }
    }
    if result.is_error {
        return SessionStatus::Failed {
            reason: if text.is_empty() {
                "the result has `is_error: true`".to_owned()
            } else {
                text
            },
        };
    }
    match exit_failure {
        None => SessionStatus::Succeeded,
        Some(reason) => SessionStatus::Failed { reason },
    }
}

/// 429 or 529 from `api_error_status`, else recognised in the error text.
fn rate_limit_status(result: &ResultMessage) -> Option<u16> {
    if let Some(status) = result.api_error_status {
        return matches!(status, 429 | 529).then_some(status);
    }
    let text = result
        .result
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if text.contains("529") || text.contains("overloaded") {
        Some(529)
    } else if text.contains("429") || text.contains("rate limit") || text.contains("rate_limit") {
        Some(429)
    } else {
        None
    }
}

fn open_files(transcript: &Path) -> Result<(tokio::fs::File, std::fs::File), String> {
    if let Some(parent) = transcript.parent() {
        fs_err::create_dir_all(parent).map_err(|error| error.to_string())?;
    }
    let transcript_file = fs_err::File::create(transcript).map_err(|error| error.to_string())?;
    let stderr_file =
        fs_err::File::create(stderr_path(transcript)).map_err(|error| error.to_string())?;
    Ok((
        tokio::fs::File::from_std(transcript_file.into_parts().0),
        stderr_file.into_parts().0,
    ))
}

fn signal_group(pgid: Option<i32>, signal: i32) {
    if let Some(pgid) = pgid.filter(|pgid| *pgid > 0) {
        // SAFETY: kill(2) with a negative pid signals a process group; it has
        // no memory effects. ESRCH (group already gone) is fine.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Polls until no process of the group is left (zombies awaiting their
/// reaper count as gone), for at most `bound`.
async fn wait_group_gone(pgid: Option<i32>, bound: Duration) {
    let Some(pgid) = pgid.filter(|pgid| *pgid > 0) else {
        return;
    };
    let until = Instant::now() + bound;
    while Instant::now() < until && group_has_live_member(pgid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a non-zombie process is in group `pgid` (read from `/proc`, as
/// `kill(-pgid, 0)` also answers yes for zombies).
fn group_has_live_member(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // Fields after the command name (which may hold spaces and parens):
        // state, ppid, pgrp, …
        let Some(after) = stat.rfind(')').map(|end| &stat[end + 1..]) else {
            return false;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|field| field.parse::<i32>().ok());
        group == Some(pgid) && state != Some("Z")
    })
}

/// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL;
/// reaps the leader and returns its exit status.
/// Makes the CLI die with ccflow: when ccflow itself is SIGKILLed (OOM
/// killer, CI timeout), nothing runs `kill_group`, and an orphaned session
/// would go on spending tokens and editing a worktree nobody will read.
/// `PR_SET_PDEATHSIG` fires when the spawning thread ends; sessions are
/// spawned from the runtime's worker threads, which live as long as ccflow.
fn die_with_parent(command: &mut Command) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the forked child and makes only
    // async-signal-safe calls (prctl, getppid, raise), no allocation.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // ccflow died between the fork and the prctl: nobody to signal us.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
}

async fn kill_group(pgid: Option<i32>, child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    signal_group(pgid, libc::SIGTERM);
    let exited = tokio::time::timeout(grace, child.wait()).await;
    // Tool processes may ignore SIGTERM even when the leader obeyed it.
    signal_group(pgid, libc::SIGKILL);
    match exited {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

fn read_tail(path: &Path) -> String {
    const TAIL: usize = 4096;
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
