//! ccflow runs declarative workflows of shell tasks and headless Claude Code
//! sessions, committed in `.claudecluster/*.yaml`, as a cached parallel DAG.
//!
//! The modules follow the pipeline: discover → parse → validate → expand →
//! plan → hash → execute → report.

/// Writes to stdout or stderr with `write!` or `writeln!`, dropping write
/// errors: a closed pipe (`ccflow runs | head -1`, `ccflow run ... 2>&1 |
/// head`) must neither panic, as `println!` and `eprintln!` do, nor stop a
/// run that still has to finish and record its tasks.
#[doc(hidden)]
#[macro_export]
macro_rules! quiet_write {
    ($stream:ident, $write:ident, $($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = $write!(std::io::$stream(), $($arg)*);
    }};
}

/// `println!` without the panic (see [`quiet_write!`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::quiet_write!(stdout, writeln, $($arg)*) };
}

/// `print!` without the panic (see [`quiet_write!`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::quiet_write!(stdout, write, $($arg)*) };
}

/// `eprintln!` without the panic (see [`quiet_write!`]).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::quiet_write!(stderr, writeln, $($arg)*) };
}

/// `eprint!` without the panic (see [`quiet_write!`]).
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => { $crate::quiet_write!(stderr, write, $($arg)*) };
}

pub mod agent;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod diagnostic;
pub mod error;
pub mod exec;
pub mod fanout;
pub mod graph;
pub mod memo;
pub mod mock;
pub mod report;
pub mod template;
pub mod workflow;
pub mod workspace;

/// When the process started (set first thing by the binary), for
/// [`timing!`].
pub static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Logs at debug level how long after the process started `what` happened:
/// where a run's time goes (`CCFLOW_LOG=debug`). Nothing is formatted when
/// debug logging is off.
#[macro_export]
macro_rules! timing {
    ($what:expr) => {
        tracing::debug!(
            "{} at {:.2} ms",
            $what,
            $crate::STARTED
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_secs_f64()
                * 1e3
        )
    };
}
