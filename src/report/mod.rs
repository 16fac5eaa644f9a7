//! What the user sees of a run. The scheduler loop is the one owner of
//! user-visible state: it emits [`RunEvent`]s, and reporters (plain lines,
//! the indicatif TTY view, NDJSON events, GitHub Actions) render them into
//! their own writers. Runners never print.

pub mod events;
pub mod github;
pub mod plain;
pub mod progress;
pub mod record;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use record::{Counts, InstanceRecord, RunStatus, Usage};

/// Something that happened during a run.
#[derive(Debug, Clone)]
pub enum RunEvent {
    RunStarted {
        run_id: String,
        workflow: String,
        total: usize,
    },
    /// The number of instances changed (a dynamic fan-out expanded).
    TotalChanged {
        total: usize,
    },
    TaskQueued {
        id: String,
    },
    TaskStarted {
        id: String,
        attempt: u32,
        activity: Arc<Mutex<String>>,
    },
    TaskRetrying {
        id: String,
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    TaskFinished {
        record: InstanceRecord,
        log_path: Option<std::path::PathBuf>,
    },
    Message {
        text: String,
    },
    RunFinished {
        status: RunStatus,
        counts: Counts,
        usage: Usage,
        duration: Duration,
        run_dir: std::path::PathBuf,
    },
}

/// A renderer of run events.
pub trait Reporter: Send {
    fn event(&mut self, event: &RunEvent);
    /// Called about ten times a second while tasks run (live views).
    fn tick(&mut self) {}
}

/// Several reporters behind one.
#[derive(Default)]
pub struct Reporters {
    pub reporters: Vec<Box<dyn Reporter>>,
}

impl Reporters {
    pub fn event(&mut self, event: &RunEvent) {
        for r in &mut self.reporters {
            r.event(event);
        }
    }

    pub fn tick(&mut self) {
        for r in &mut self.reporters {
            r.tick();
        }
    }
}

/// `n` and `noun`, plural unless `n` is 1: "1 instance", "3 instances".
#[must_use]
pub fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `1.2k`, `3.4M` for token counts.
#[must_use]
pub fn human_count(n: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let f = n as f64;
    if n >= 1_000_000 {
        format!("{:.1}M", f / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}k", f / 1e3)
    } else {
        n.to_string()
    }
}

/// `3.1s`, `120ms`, `2m05s`.
#[must_use]
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        #[expect(clippy::cast_precision_loss, reason = "display only")]
        let s = ms as f64 / 1000.0;
        format!("{s:.1}s")
    } else {
        let s = ms / 1000;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
