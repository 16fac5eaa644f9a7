//! The local runner: one task instance's command as a real process.
//!
//! Responsible for spawning (directly when [`shellwords::parse`] proves it
//! equivalent to `sh -c`, otherwise through the interpreter), the clean
//! environment, one pipe for stdout and stderr streamed into a [`LogSink`],
//! timeouts and cancellation (SIGTERM to the process group, SIGKILL after the
//! grace period) and, through [`reaper::cleanup`], killing whatever the task
//! left behind. Not responsible for retries, caching or printing: it reports
//! a [`ProcessReport`] and the scheduler decides.
//!
//! Per-task overhead matters (workflows of thousands of tiny tasks), so the
//! common path is: one `pipe2`, one `posix_spawn` of an absolute path (std
//! uses `posix_spawn` only when no PATH search is left to it), reads on the
//! pipe in the caller's task, and a cleanup that reads a few `/proc/self`
//! files when nothing escaped.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::log_sink::{LogSink, LogSummary};
use super::outcome::{ProcessOutcome, ProcessReport};
use super::reaper;
use super::shellwords::{self, DirectCommand};

/// dash's search path when `PATH` is unset; direct exec must find the same
/// program `sh -c` would.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long to keep reading the output pipe after the task and everything
/// attributable to it are gone. Only a process that escaped without the
/// instance token can still hold the pipe open; it must not hang the run.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Size of one read from the output pipe (the default pipe capacity).
const READ_CHUNK: usize = 64 * 1024;

/// One process to run, fully resolved by the scheduler.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub command: CommandLine,
    /// The complete environment: the process gets exactly this, plus
    /// `CCFLOW_INSTANCE_TOKEN`.
    pub env: Vec<(String, String)>,
    /// Working directory; must exist.
    pub cwd: PathBuf,
    /// stdout and stderr, interleaved; created or truncated at the first
    /// byte of output. A task that prints nothing leaves no file (see
    /// [`super::log_sink`]).
    pub log_path: PathBuf,
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when stopping the process group.
    pub kill_grace: Duration,
    /// Secret values replaced by `***` in the log and the latest line.
    pub masks: Vec<String>,
    /// Bytes of output kept in the log; the rest is read and dropped.
    pub log_limit: u64,
    /// Bytes fed to stdin; `None` means `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Unique per instance; exported as `CCFLOW_INSTANCE_TOKEN` so that
    /// descendants that escape the process group can still be found.
    pub instance_token: String,
}

impl ProcessSpec {
    /// The value of `name` in the task's environment (the last one given
    /// wins, as in `env`).
    fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// `interpreter... script`, e.g. `["bash", "-eo", "pipefail", "-c"]`.
    Shell {
        interpreter: Vec<String>,
        script: String,
    },
    /// Executed directly when [`shellwords::parse`] can represent the script
    /// exactly, else as `sh -c script`.
    Auto { script: String },
}

impl CommandLine {
    /// How this command would be executed: `Some` when it runs without a
    /// shell.
    #[must_use]
    pub fn direct(&self) -> Option<DirectCommand> {
        match self {
            Self::Shell { .. } => None,
            Self::Auto { script } => shellwords::parse(script),
        }
    }
}

/// Runs `spec` to completion and reports how it ended. Never panics and never
/// returns before every process of the task is gone (up to the reaper's
/// deadline for unkillable processes).
///
/// `last_line`, when given, is kept updated with the latest non-empty output
/// line (masked, trimmed, at most ~200 characters), at most every 50 ms.
pub async fn run(
    spec: ProcessSpec,
    cancel: CancellationToken,
    last_line: Option<Arc<Mutex<String>>>,
) -> ProcessReport {
    let started = Instant::now();
    reaper::init();
    let mut report = ProcessReport {
        outcome: ProcessOutcome::Cancelled,
        duration: Duration::ZERO,
        log_bytes: 0,
        output_bytes: 0,
        log_truncated: false,
        orphans_killed: 0,
        pid: None,
        log_error: None,
    };
    let mut sink = LogSink::new(&spec.log_path, spec.log_limit, &spec.masks, last_line);
    if cancel.is_cancelled() {
        finish_log(&mut report, sink.finish());
        report.duration = started.elapsed();
        return report;
    }
    match spawn(&spec) {
        Ok(spawned) => supervise(spawned, &spec, cancel, sink, &mut report).await,
        Err(outcome) => {
            // The log says why nothing ran, as a shell would have printed it.
            sink.feed(format!("ccflow: {outcome}\n").as_bytes());
            report.outcome = outcome;
            finish_log(&mut report, sink.finish());
        }
    }
    report.duration = started.elapsed();
    report
}

fn finish_log(report: &mut ProcessReport, summary: LogSummary) {
    report.log_bytes = summary.file_bytes;
    report.output_bytes = summary.output_bytes;
    report.log_truncated = summary.truncated;
    report.log_error = summary.error;
}

/// A started process and the parent's ends of its pipes.
struct Spawned {
    child: Child,
    pid: u32,
    output: pipe::Receiver,
    stdin: Option<(tokio::process::ChildStdin, Vec<u8>)>,
}

/// Kills the process group if the runner's future is dropped mid-run (the
/// scheduler aborting), so that even then nothing survives.
struct GroupGuard {
    pgid: u32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            reaper::signal_group(self.pgid, libc::SIGKILL);
            reaper::unregister(self.pgid);
        }
    }
}

async fn supervise(
    spawned: Spawned,
    spec: &ProcessSpec,
    cancel: CancellationToken,
    mut sink: LogSink,
    report: &mut ProcessReport,
) {
    let Spawned {
        mut child,
        pid,
        output,
        stdin,
    } = spawned;
    report.pid = Some(pid);
    let mut guard = GroupGuard {
        pgid: pid,
        armed: true,
    };
    // Feeding stdin runs beside the task: a child that never reads it must
    // not block us, so the writer is aborted once the child is gone.
    let stdin_writer = stdin.map(|(mut pipe, bytes)| {
        tokio::spawn(async move {
            // A child that exits without reading all of stdin is not an error.
            let _ = pipe.write_all(&bytes).await;
        })
    });
    let (done_sender, done_receiver) = oneshot::channel::<()>();
    let waiting = async {
        let outcome = wait(&mut child, pid, spec, &cancel).await;
        reaper::unregister(pid);
        if let Some(writer) = &stdin_writer {
            writer.abort();
        }
        let orphans = reaper::cleanup(pid, &spec.instance_token).await;
        let _ = done_sender.send(());
        (outcome, orphans)
    };
    let ((outcome, orphans), drained) =
        tokio::join!(waiting, pump(output, &mut sink, done_receiver));
    guard.armed = false;
    if !drained.eof {
        tracing::warn!(
            pid,
            "the output pipe of a finished task is still open; its output is no longer read"
        );
    }
    report.outcome = outcome;
    report.orphans_killed = orphans + drained.holders_killed;
    finish_log(report, sink.finish());
}

/// Waits for the main process, enforcing the timeout and cancellation.
async fn wait(
    child: &mut Child,
    pgid: u32,
    spec: &ProcessSpec,
    cancel: &CancellationToken,
) -> ProcessOutcome {
    let timeout = async {
        match spec.timeout {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    let stopped = tokio::select! {
        status = child.wait() => return exit_outcome(&status),
        () = timeout => ProcessOutcome::TimedOut { after: spec.timeout.unwrap_or_default() },
        () = cancel.cancelled() => ProcessOutcome::Cancelled,
    };
    reaper::signal_group(pgid, libc::SIGTERM);
    if tokio::time::timeout(spec.kill_grace, child.wait())
        .await
        .is_err()
    {
        reaper::signal_group(pgid, libc::SIGKILL);
        // SIGKILL cannot be ignored; this returns once the kernel is done.
        let _ = child.wait().await;
    }
    stopped
}

fn exit_outcome(status: &io::Result<ExitStatus>) -> ProcessOutcome {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ProcessOutcome::Exited { code },
            (None, Some(signal)) => ProcessOutcome::Signaled { signal },
            // Stopped/continued are not reported by wait(); treat as failure.
            (None, None) => ProcessOutcome::Exited { code: -1 },
        },
        // Waiting itself failed: the status is lost, the process is gone.
        Err(_) => ProcessOutcome::Exited { code: -1 },
    }
}

/// How reading the output pipe ended.
struct Drained {
    /// EOF was reached: no process holds the pipe any more.
    eof: bool,
    /// Processes killed because they still held the pipe after the task.
    holders_killed: usize,
}

/// Streams the output pipe into the sink until EOF. Once `done` fires (the
/// task and everything attributable to it are gone), only a process that
/// escaped without the instance token can keep the pipe open: after
/// [`DRAIN_GRACE`] those holders are found by the pipe's inode and killed, and
/// reading stops after one more grace period whatever happens.
async fn pump(
    mut output: pipe::Receiver,
    sink: &mut LogSink,
    done: oneshot::Receiver<()>,
) -> Drained {
    let mut buffer = vec![0_u8; READ_CHUNK];
    let mut holders_killed = 0;
    let mut done = Some(done);
    for round in 0..2 {
        let deadline = async {
            if let Some(done) = done.take() {
                let _ = done.await;
            }
            tokio::time::sleep(DRAIN_GRACE).await;
        };
        tokio::pin!(deadline);
        loop {
            // The deadline is polled first so that a writer that never stops
            // cannot starve it.
            tokio::select! {
                biased;
                () = &mut deadline => break,
                read = output.read(&mut buffer) => match read {
                    Ok(0) => return Drained { eof: true, holders_killed },
                    Ok(n) => sink.feed(&buffer[..n]),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Drained { eof: true, holders_killed },
                },
            }
        }
        if round == 0 {
            if let Some(inode) = pipe_inode(&output) {
                holders_killed = reaper::kill_pipe_holders(inode).await;
            }
        }
    }
    Drained {
        eof: false,
        holders_killed,
    }
}

fn pipe_inode(output: &pipe::Receiver) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: the fd stays owned by `output`; ManuallyDrop keeps the
    // temporary File from closing it.
    let file =
        std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(output.as_raw_fd()) });
    file.metadata().ok().map(|meta| meta.ino())
}

/// How the process will be started, before any fd is opened.
enum Plan {
    Direct(DirectCommand),
    Shell {
        interpreter: Vec<String>,
        script: String,
    },
}

/// Starts the process. Errors are the outcome to report.
fn spawn(spec: &ProcessSpec) -> Result<Spawned, ProcessOutcome> {
    if !spec.cwd.is_dir() {
        let reason = if spec.cwd.exists() {
            format!(
                "working directory `{}` is not a directory",
                spec.cwd.display()
            )
        } else {
            format!("working directory `{}` does not exist", spec.cwd.display())
        };
        return Err(ProcessOutcome::SpawnFailed {
            program: program_name(&spec.command),
            reason,
        });
    }
    let plan = match &spec.command {
        CommandLine::Auto { script } => match shellwords::parse(script).and_then(|direct| {
            if direct.globs.is_empty() {
                Some(direct)
            } else {
                expand_globs(spec, direct)
            }
        }) {
            Some(direct) => Plan::Direct(direct),
            None => Plan::Shell {
                interpreter: vec!["sh".to_owned(), "-c".to_owned()],
                script: script.clone(),
            },
        },
        CommandLine::Shell {
            interpreter,
            script,
        } => Plan::Shell {
            interpreter: interpreter.clone(),
            script: script.clone(),
        },
    };
    match plan {
        Plan::Direct(direct) => match spawn_direct(spec, &direct) {
            // A file without a `#!` line: sh would run it as a shell script.
            Err(SpawnError::NotExecutableFormat) => spawn_shell(
                spec,
                &["sh".to_owned(), "-c".to_owned()],
                &program_script(&spec.command),
            ),
            other => other.map_err(|error| error.into_outcome(&direct.argv[0])),
        },
        Plan::Shell {
            interpreter,
            script,
        } => spawn_shell(spec, &interpreter, &script),
    }
}

/// `direct` with its pathname patterns replaced by the names they match,
/// as sh would expand them: matches in byte order (dash's order, and the
/// C locale's), a pattern matching nothing left as written. `None` when sh
/// might do otherwise — a `sh` that is not dash under a locale that sorts
/// differently, a name that is not UTF-8, a directory that cannot be read
/// — and the caller runs `sh -c`.
fn expand_globs(spec: &ProcessSpec, mut direct: DirectCommand) -> Option<DirectCommand> {
    if !sh_sorts_bytewise(spec) {
        return None;
    }
    let mut expanded = Vec::with_capacity(direct.argv.len());
    let mut globs = std::mem::take(&mut direct.globs).into_iter().peekable();
    for (i, word) in direct.argv.into_iter().enumerate() {
        if globs.next_if_eq(&i).is_none() {
            expanded.push(word);
            continue;
        }
        let (dir, pattern) = match word.rsplit_once('/') {
            Some((dir, pattern)) => (Some(dir), pattern),
            None => (None, word.as_str()),
        };
        let listed = match dir {
            Some("") => std::fs::read_dir("/"),
            Some(dir) => std::fs::read_dir(spec.cwd.join(dir)),
            None => std::fs::read_dir(&spec.cwd),
        };
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                expanded.push(word);
                continue;
            }
            Err(_) => return None,
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.ok()?.file_name().into_string().ok()?;
            if !name.starts_with('.') && crate::fanout::star_match(pattern, &name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            expanded.push(word);
            continue;
        }
        names.sort_unstable();
        let prefix = dir.map(|d| format!("{d}/")).unwrap_or_default();
        expanded.extend(names.into_iter().map(|name| format!("{prefix}{name}")));
    }
    direct.argv = expanded;
    Some(direct)
}

/// Whether the task's `sh` sorts pathname expansions by bytes: dash always
/// does (it has no locale support); any sh does in the C locale (`LC_ALL`,
/// else `LC_COLLATE`, else `LANG`, is unset, empty, `C`, `C.*` or `POSIX`).
fn sh_sorts_bytewise(spec: &ProcessSpec) -> bool {
    let var = |name: &str| spec.env_var(name).filter(|value| !value.is_empty());
    let locale = var("LC_ALL")
        .or_else(|| var("LC_COLLATE"))
        .or_else(|| var("LANG"));
    if locale.is_none_or(|l| l == "C" || l == "POSIX" || l.starts_with("C.")) {
        return true;
    }
    let sh = match resolve_program("sh", spec) {
        Ok(path) => path,
        Err(SpawnError::NotFound) => PathBuf::from("/bin/sh"),
        Err(_) => return false,
    };
    static DASH: LazyLock<Mutex<HashMap<PathBuf, bool>>> = LazyLock::new(Default::default);
    let mut known = DASH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *known.entry(sh).or_insert_with_key(|sh| {
        std::fs::canonicalize(sh).is_ok_and(|real| real.file_name().is_some_and(|n| n == "dash"))
    })
}

fn program_script(command: &CommandLine) -> String {
    match command {
        CommandLine::Auto { script } | CommandLine::Shell { script, .. } => script.clone(),
    }
}

fn program_name(command: &CommandLine) -> String {
    match command {
        CommandLine::Shell { interpreter, .. } => interpreter.first().cloned().unwrap_or_default(),
        CommandLine::Auto { script } => match shellwords::parse(script) {
            Some(direct) => direct.argv.first().cloned().unwrap_or_default(),
            None => "sh".to_owned(),
        },
    }
}

enum SpawnError {
    NotFound,
    PermissionDenied,
    NotExecutableFormat,
    Redirection { path: PathBuf, error: io::Error },
    Other(io::Error),
}

impl SpawnError {
    fn into_outcome(self, program: &str) -> ProcessOutcome {
        let reason = match self {
            // Worded after the shell's exit code 127, which is what `sh -c`
            // would have reported.
            Self::NotFound => "command not found (exit code 127 under a shell)".to_owned(),
            Self::PermissionDenied => "permission denied (exit code 126 under a shell)".to_owned(),
            Self::NotExecutableFormat => "exec format error".to_owned(),
            Self::Redirection { path, error } => {
                format!("cannot open redirection `{}`: {error}", path.display())
            }
            Self::Other(error) => error.to_string(),
        };
        ProcessOutcome::SpawnFailed {
            program: program.to_owned(),
            reason,
        }
    }

    fn from_spawn(error: io::Error) -> Self {
        match error.raw_os_error() {
            Some(libc::ENOENT) => Self::NotFound,
            Some(libc::EACCES) => Self::PermissionDenied,
            Some(libc::ENOEXEC) => Self::NotExecutableFormat,
            _ => Self::Other(error),
        }
    }
}

fn spawn_shell(
    spec: &ProcessSpec,
    interpreter: &[String],
    script: &str,
) -> Result<Spawned, ProcessOutcome> {
    let Some((program, flags)) = interpreter.split_first() else {
        return Err(ProcessOutcome::SpawnFailed {
            program: String::new(),
            reason: "the shell interpreter is empty".to_owned(),
        });
    };
    let failed = |error: SpawnError| error.into_outcome(program);
    let resolved = match resolve_program(program, spec) {
        // POSIX guarantees /bin/sh even when the task's PATH does not lead
        // to it (an empty or custom PATH).
        Err(SpawnError::NotFound) if program == "sh" => PathBuf::from("/bin/sh"),
        other => other.map_err(failed)?,
    };
    let mut command = Command::new(resolved);
    command.arg0(program).args(flags).arg(script);
    let (output, writer) = output_pipe().map_err(|e| failed(SpawnError::Other(e)))?;
    let stderr = writer
        .try_clone()
        .map_err(|e| failed(SpawnError::Other(e)))?;
    command.stdout(writer).stderr(stderr);
    let stdin = configure_stdin(&mut command, spec, None);
    start(command, spec, output, stdin, None).map_err(failed)
}

fn spawn_direct(spec: &ProcessSpec, direct: &DirectCommand) -> Result<Spawned, SpawnError> {
    let program = &direct.argv[0];
    let resolved = resolve_program(program, spec)?;
    let mut command = Command::new(resolved);
    command.arg0(program).args(&direct.argv[1..]);
    let (output, writer) = output_pipe().map_err(SpawnError::Other)?;
    // Redirections are opened in the parent, in the order sh applies them,
    // relative to the task's working directory.
    let stdout_file = match &direct.stdout {
        Some((path, append)) => {
            let path = spec.cwd.join(path);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .append(*append)
                .truncate(!*append)
                .open(&path)
                .map_err(|error| SpawnError::Redirection { path, error })?;
            Some(file)
        }
        None => None,
    };
    let stdin_file = match &direct.stdin {
        Some(path) => {
            let path = spec.cwd.join(path);
            let file = std::fs::File::open(&path)
                .map_err(|error| SpawnError::Redirection { path, error })?;
            Some(file)
        }
        None => None,
    };
    match (stdout_file, direct.stderr_to_stdout) {
        (Some(file), true) => {
            let copy = file.try_clone().map_err(SpawnError::Other)?;
            command.stdout(file).stderr(copy);
        }
        (Some(file), false) => {
            command.stdout(file).stderr(writer);
        }
        (None, _) => {
            let copy = writer.try_clone().map_err(SpawnError::Other)?;
            command.stdout(writer).stderr(copy);
        }
    }
    let stdin = configure_stdin(&mut command, spec, stdin_file);
    start(command, spec, output, stdin, shell_pwd(spec))
}

/// The `PWD` that `sh` would export: the given one if it names the working
/// directory, else the physical path. Direct exec sets it too, so programs
/// reading `$PWD` see no difference. `None` keeps the given value.
fn shell_pwd(spec: &ProcessSpec) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if let Some(given) = spec.env_var("PWD") {
        let same = Path::new(given).is_absolute()
            && match (std::fs::metadata(given), std::fs::metadata(&spec.cwd)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
        if same {
            return None;
        }
    }
    canonical_dir(&spec.cwd)
}

/// `dir`'s physical path, computed once per directory and process (a
/// `readlink` per component each time, for every task of a run).
fn canonical_dir(dir: &Path) -> Option<PathBuf> {
    static CANONICAL: LazyLock<Mutex<HashMap<PathBuf, PathBuf>>> = LazyLock::new(Default::default);
    let mut cache = CANONICAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(found) = cache.get(dir) {
        return Some(found.clone());
    }
    let canonical = std::fs::canonicalize(dir).ok()?;
    cache.insert(dir.to_owned(), canonical.clone());
    Some(canonical)
}

fn configure_stdin(
    command: &mut Command,
    spec: &ProcessSpec,
    redirected: Option<std::fs::File>,
) -> Option<Vec<u8>> {
    match (redirected, &spec.stdin) {
        (Some(file), _) => {
            command.stdin(file);
            None
        }
        (None, Some(bytes)) => {
            command.stdin(Stdio::piped());
            Some(bytes.clone())
        }
        (None, None) => {
            command.stdin(Stdio::null());
            None
        }
    }
}

/// Common settings and the spawn itself; `pwd` overrides the given `PWD`. The `Command` (which holds the
/// parent's copy of the pipe's write end) is dropped before returning, so
/// the output pipe reaches EOF when the task's processes are gone.
fn start(
    mut command: Command,
    spec: &ProcessSpec,
    output: pipe::Receiver,
    stdin_bytes: Option<Vec<u8>>,
    pwd: Option<PathBuf>,
) -> Result<Spawned, SpawnError> {
    command
        .env_clear()
        .envs(spec.env.iter().map(|(key, value)| (key, value)));
    if let Some(pwd) = pwd {
        command.env("PWD", pwd);
    }
    command
        .env(reaper::TOKEN_VAR, &spec.instance_token)
        .current_dir(&spec.cwd)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(SpawnError::from_spawn)?;
    drop(command);
    let Some(pid) = child.id() else {
        return Err(SpawnError::Other(io::Error::other(
            "the process exited before its pid was read",
        )));
    };
    reaper::register(pid);
    let stdin = match (child.stdin.take(), stdin_bytes) {
        (Some(pipe), Some(bytes)) => Some((pipe, bytes)),
        _ => None,
    };
    Ok(Spawned {
        child,
        pid,
        output,
        stdin,
    })
}

/// One pipe for stdout and stderr: the read end (non-blocking, for tokio)
/// and the write end (blocking, for the child). Both are close-on-exec so
/// that tasks spawned concurrently do not inherit each other's pipes.
fn output_pipe() -> io::Result<(pipe::Receiver, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a valid fd we own.
    let flags = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0
        || unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    let receiver = pipe::Receiver::from_owned_fd_unchecked(read)?;
    Ok((receiver, write))
}

/// Finds the file `sh` would execute for `program`: a path containing `/` is
/// taken relative to the working directory; a bare name is searched in the
/// task's own `PATH` (not ccflow's). Resolving here also lets std use
/// `posix_spawn`, which it does not when it must search a changed PATH.
fn resolve_program(program: &str, spec: &ProcessSpec) -> Result<PathBuf, SpawnError> {
    if program.is_empty() {
        return Err(SpawnError::NotFound);
    }
    if program.contains('/') {
        let path = spec.cwd.join(program);
        return match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(path),
            Ok(_) => Err(SpawnError::PermissionDenied),
            Err(_) => Err(SpawnError::NotFound),
        };
    }
    let search = spec.env_var("PATH").unwrap_or(DEFAULT_PATH);
    // Like a shell's command hash: a run starts the same few programs
    // thousands of times. A remembered path is used while it is still an
    // executable file (a program installed earlier in PATH during the run
    // is not seen, as with `hash`).
    static FOUND: LazyLock<Mutex<HashMap<ProgramKey, PathBuf>>> = LazyLock::new(Default::default);
    let found = || {
        FOUND
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let key = (search.to_owned(), spec.cwd.clone(), program.to_owned());
    let remembered = found().get(&key).cloned();
    if let Some(path) = remembered {
        if std::fs::metadata(&path).is_ok_and(|meta| is_executable(&meta)) {
            return Ok(path);
        }
    }
    let path = search_path(program, search, spec)?;
    found().insert(key, path.clone());
    Ok(path)
}

/// `PATH`, working directory and program name of a search.
type ProgramKey = (String, PathBuf, String);

/// The first executable `program` in the directories of `search`.
fn search_path(program: &str, search: &str, spec: &ProcessSpec) -> Result<PathBuf, SpawnError> {
    let mut denied = false;
    for directory in search.split(':') {
        // An empty PATH entry means the working directory.
        let candidate = if directory.is_empty() {
            spec.cwd.join(program)
        } else {
            spec.cwd.join(Path::new(directory)).join(program)
        };
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if is_executable(&meta) {
                return Ok(candidate);
            }
            denied = true;
        }
    }
    Err(if denied {
        SpawnError::PermissionDenied
    } else {
        SpawnError::NotFound
    })
}

/// A regular file with an execute bit.
fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

#[cfg(test)]
mod tests;
