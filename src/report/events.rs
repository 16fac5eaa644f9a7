//! `--events FILE|-`: newline-delimited JSON events for other tools.
//!
//! Schema version 1 (documented in docs/events.md). Every line is an object
//! with `v` (1), `event`, `ts_ms`, and per event:
//! - `run_started`: `run_id`, `workflow`, `total`
//! - `total_changed`: `total`
//! - `task_queued`: `id`
//! - `task_started`: `id`, `attempt`
//! - `task_progress`: `id`, `attempt`, `delay_ms`, `reason` (a retry is scheduled)
//! - `task_finished`: `id`, `task`, `status`, `duration_ms`, `exit_code`, `attempts`, `tokens`, `cost_usd`, `message`
//! - `run_finished`: `status`, `counts`, `tokens`, `cost_usd`, `duration_ms`

use std::io::Write;

use serde_json::json;

use super::record::now_ms;
use super::{Reporter, RunEvent};

pub const EVENTS_VERSION: u32 = 1;

pub struct EventsReporter {
    out: Box<dyn Write + Send>,
}

impl EventsReporter {
    #[must_use]
    pub fn new(out: Box<dyn Write + Send>) -> EventsReporter {
        EventsReporter { out }
    }

    fn write(&mut self, event: &str, mut body: serde_json::Value) {
        if let Some(map) = body.as_object_mut() {
            map.insert("v".into(), json!(EVENTS_VERSION));
            map.insert("event".into(), json!(event));
            map.insert("ts_ms".into(), json!(now_ms()));
        }
        // One write(2) per event: `Value`'s Display writes piece by piece,
        // which on an unbuffered file was a system call per token.
        let mut line = serde_json::to_vec(&body).unwrap_or_default();
        line.push(b'\n');
        let _ = self.out.write_all(&line);
        let _ = self.out.flush();
    }
}

impl Reporter for EventsReporter {
    fn event(&mut self, event: &RunEvent) {
        match event {
            RunEvent::RunStarted { run_id, workflow, total } => {
                self.write("run_started", json!({"run_id": run_id, "workflow": workflow, "total": total}));
            }
            RunEvent::TotalChanged { total } => self.write("total_changed", json!({"total": total})),
            RunEvent::TaskQueued { id } => self.write("task_queued", json!({"id": id})),
            RunEvent::TaskStarted { id, attempt, .. } => self.write("task_started", json!({"id": id, "attempt": attempt})),
            RunEvent::TaskRetrying { id, attempt, delay, reason } => self.write(
                "task_progress",
                json!({"id": id, "attempt": attempt, "delay_ms": u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "reason": reason}),
            ),
            RunEvent::TaskFinished { record, .. } => self.write(
                "task_finished",
                json!({
                    "id": record.id,
                    "task": record.task,
                    "status": record.status,
                    "duration_ms": record.duration_ms,
                    "exit_code": record.exit_code,
                    "attempts": record.attempts.len(),
                    "tokens": record.usage.total_tokens(),
                    "cost_usd": record.usage.cost_usd,
                    "message": record.message,
                }),
            ),
            RunEvent::Message { .. } => {}
            RunEvent::RunFinished { status, counts, usage, duration, .. } => self.write(
                "run_finished",
                json!({
                    "status": status,
                    "counts": counts,
                    "tokens": usage.total_tokens(),
                    "cost_usd": usage.cost_usd,
                    "duration_ms": u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                }),
            ),
        }
    }
}
