//! The no-TTY reporter: one line per finished instance, e.g.
//! `[ 12/200] ok      refactor[src/lib.rs]   3.1s  1.2k tok`, failures with
//! the tail of their log, and a summary at the end.

use std::io::Write;

use super::record::InstanceStatus;
use super::{human_count, human_duration, Reporter, RunEvent};

/// Lines of a failing log shown inline.
const TAIL_LINES: usize = 20;

pub struct PlainReporter {
    out: Box<dyn Write + Send>,
    total: usize,
    finished: usize,
    /// Under GitHub Actions failing logs are wrapped in `::group::`.
    github: bool,
    replay: bool,
}

impl PlainReporter {
    #[must_use]
    pub fn new(out: Box<dyn Write + Send>, github: bool, replay: bool) -> PlainReporter {
        PlainReporter {
            out,
            total: 0,
            finished: 0,
            github,
            replay,
        }
    }
}

/// The last `n` lines of a log file.
#[must_use]
pub fn log_tail(path: &std::path::Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let start = bytes.len().saturating_sub(64 * 1024);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

impl Reporter for PlainReporter {
    fn event(&mut self, event: &RunEvent) {
        self.write_event(event);
        // Cached and skipped instances come by the thousand in a rerun:
        // their lines go out with the next other line (or tick), not in one
        // write(2) each.
        let quiet = matches!(
            event,
            RunEvent::TaskFinished { record, .. }
                if matches!(record.status, InstanceStatus::Cached | InstanceStatus::Skipped)
        );
        if !quiet {
            let _ = self.out.flush();
        }
    }

    fn tick(&mut self) {
        let _ = self.out.flush();
    }
}

impl PlainReporter {
    fn write_event(&mut self, event: &RunEvent) {
        match event {
            RunEvent::RunStarted {
                run_id,
                workflow,
                total,
            } => {
                self.total = *total;
                let _ = writeln!(
                    self.out,
                    "ccflow: running `{workflow}` ({}, run {run_id})",
                    crate::report::counted(*total, "instance")
                );
            }
            RunEvent::TotalChanged { total } => self.total = *total,
            RunEvent::TaskRetrying {
                id,
                attempt,
                delay,
                reason,
            } => {
                let _ = writeln!(
                    self.out,
                    "retry   {id}: {reason}; attempt {attempt} in {}",
                    human_duration(*delay)
                );
            }
            RunEvent::TaskFinished { record, log_path } => {
                self.finished += 1;
                let width = self.total.max(1).to_string().len();
                let tokens = record.usage.total_tokens();
                let tokens = if tokens > 0 {
                    format!("  {} tok", human_count(tokens))
                } else {
                    String::new()
                };
                let cost = if record.usage.cost_usd > 0.0 {
                    format!("  ${:.4}", record.usage.cost_usd)
                } else {
                    String::new()
                };
                let duration = human_duration(std::time::Duration::from_millis(record.duration_ms));
                let _ = writeln!(
                    self.out,
                    "[{:>width$}/{}] {:<8}{:<40} {duration:>7}{tokens}{cost}",
                    self.finished,
                    self.total,
                    record.status.word(),
                    record.id,
                );
                let failed = record.status.is_failure();
                if failed {
                    if let Some(message) = &record.message {
                        let _ = writeln!(self.out, "    {message}");
                    }
                }
                let show_log = failed || (self.replay && record.status == InstanceStatus::Cached);
                if let (true, Some(path)) = (show_log, log_path) {
                    let tail = log_tail(path, TAIL_LINES);
                    if !tail.is_empty() {
                        if self.github {
                            let _ = writeln!(self.out, "::group::log of {}", record.id);
                        }
                        for line in tail {
                            let _ = writeln!(self.out, "    | {line}");
                        }
                        if self.github {
                            let _ = writeln!(self.out, "::endgroup::");
                        }
                    }
                }
            }
            RunEvent::Message { text } => {
                let _ = writeln!(self.out, "{text}");
            }
            RunEvent::RunFinished {
                status,
                counts,
                usage,
                duration,
                run_dir,
            } => {
                let _ = writeln!(
                    self.out,
                    "{}",
                    summary(*status, counts, usage, *duration, run_dir)
                );
            }
            RunEvent::TaskQueued { .. } | RunEvent::TaskStarted { .. } => {}
        }
    }
}

/// The closing summary of a run: status, counts, tokens, and the record's path.
#[must_use]
pub fn summary(
    status: super::record::RunStatus,
    counts: &super::record::Counts,
    usage: &super::record::Usage,
    duration: std::time::Duration,
    run_dir: &std::path::Path,
) -> String {
    let mut parts = vec![
        format!("{} ran", counts.succeeded),
        format!("{} cached", counts.cached),
    ];
    for (n, word) in [
        (counts.failed, "failed"),
        (counts.conflicts, "conflicts"),
        (counts.skipped, "skipped"),
        (counts.blocked, "blocked"),
        (counts.not_started, "not started"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    let tokens = if usage.total_tokens() > 0 {
        format!(
            ", {} tokens, ${:.4}",
            human_count(usage.total_tokens()),
            usage.cost_usd
        )
    } else {
        String::new()
    };
    format!(
        "ccflow: {} in {} — {}{tokens}\n  record: {}",
        status.word(),
        human_duration(duration),
        parts.join(", "),
        run_dir.join("run.json").display()
    )
}
