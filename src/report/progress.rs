//! The TTY reporter (indicatif): one overall bar with done / cached / failed
//! / running counts, tokens and cost, and one line per running instance with
//! its elapsed time and latest activity (last output line, or the agent's
//! current tool use). Finished failures are printed above the bars.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::record::{InstanceStatus, Usage};
use super::{human_count, human_duration, Reporter, RunEvent};

struct Running {
    bar: ProgressBar,
    started: Instant,
    activity: Arc<Mutex<String>>,
}

pub struct ProgressReporter {
    multi: MultiProgress,
    overall: ProgressBar,
    running: BTreeMap<String, Running>,
    total: usize,
    done: usize,
    cached: usize,
    failed: usize,
    usage: Usage,
}

impl Default for ProgressReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressReporter {
    #[must_use]
    pub fn new() -> ProgressReporter {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        ProgressReporter {
            multi,
            overall,
            running: BTreeMap::new(),
            total: 0,
            done: 0,
            cached: 0,
            failed: 0,
            usage: Usage::default(),
        }
    }

    fn update_overall(&self) {
        let mut msg = format!(
            "done {} · cached {} · failed {} · running {}",
            self.done,
            self.cached,
            self.failed,
            self.running.len()
        );
        if self.usage.total_tokens() > 0 {
            msg.push_str(&format!(
                " · {} tok · ${:.4}",
                human_count(self.usage.total_tokens()),
                self.usage.cost_usd
            ));
        }
        self.overall.set_message(msg);
    }
}

impl Reporter for ProgressReporter {
    fn event(&mut self, event: &RunEvent) {
        match event {
            RunEvent::RunStarted {
                total,
                workflow,
                run_id,
            } => {
                self.total = *total;
                self.overall.set_length(*total as u64);
                let _ = self.multi.println(format!(
                    "ccflow: running `{workflow}` ({}, run {run_id})",
                    crate::report::counted(*total, "instance")
                ));
                self.update_overall();
            }
            RunEvent::TotalChanged { total } => {
                self.total = *total;
                self.overall.set_length(*total as u64);
            }
            RunEvent::TaskStarted { id, activity, .. } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("  {spinner} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(id.clone());
                self.running.insert(
                    id.clone(),
                    Running {
                        bar,
                        started: Instant::now(),
                        activity: Arc::clone(activity),
                    },
                );
                self.update_overall();
            }
            RunEvent::TaskRetrying {
                id,
                attempt,
                delay,
                reason,
            } => {
                let _ = self.multi.println(format!(
                    "retry   {id}: {reason}; attempt {attempt} in {}",
                    human_duration(*delay)
                ));
            }
            RunEvent::TaskFinished { record, log_path } => {
                if let Some(running) = self.running.remove(&record.id) {
                    running.bar.finish_and_clear();
                    self.multi.remove(&running.bar);
                }
                self.done += 1;
                match record.status {
                    InstanceStatus::Cached => self.cached += 1,
                    s if s.is_failure() => self.failed += 1,
                    _ => {}
                }
                self.usage.add(&record.usage);
                self.overall.set_position(self.done as u64);
                if record.status.is_failure() {
                    let mut text = format!(
                        "{:<8}{}  {}",
                        record.status.word(),
                        record.id,
                        record.message.clone().unwrap_or_default()
                    );
                    if let Some(path) = log_path {
                        for line in super::plain::log_tail(path, 10) {
                            text.push_str(&format!("\n    | {line}"));
                        }
                    }
                    let _ = self.multi.println(text);
                }
                self.update_overall();
            }
            RunEvent::Message { text } => {
                let _ = self.multi.println(text);
            }
            RunEvent::RunFinished {
                status,
                counts,
                usage,
                duration,
                run_dir,
            } => {
                for (_, running) in std::mem::take(&mut self.running) {
                    running.bar.finish_and_clear();
                }
                self.overall.finish_and_clear();
                let _ = self.multi.clear();
                crate::errln!(
                    "{}",
                    super::plain::summary(*status, counts, usage, *duration, run_dir)
                );
            }
            RunEvent::TaskQueued { .. } => {}
        }
    }

    fn tick(&mut self) {
        for (id, running) in &self.running {
            let activity = running
                .activity
                .lock()
                .map(|a| a.clone())
                .unwrap_or_default();
            let elapsed = human_duration(Duration::from_secs(running.started.elapsed().as_secs()));
            running
                .bar
                .set_message(format!("{id}  {elapsed}  {activity}"));
            running.bar.tick();
        }
        self.overall.tick();
    }
}
