//! GitHub Actions (`GITHUB_ACTIONS=true`): `::error` annotations for failed
//! instances, a Markdown summary table appended to `$GITHUB_STEP_SUMMARY`
//! (instance, status, duration, cache, tokens, cost; collapsed logs of
//! failures), and step outputs in `$GITHUB_OUTPUT`: `status`, `tasks-run`,
//! `tasks-cached`, `tasks-failed`, `tokens`, `cost-usd`, `run-id`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use super::record::{InstanceRecord, InstanceStatus, RunStatus};
use super::{human_count, human_duration, Reporter, RunEvent};

pub struct GithubReporter {
    summary: Option<PathBuf>,
    output: Option<PathBuf>,
    run_id: String,
    workflow: String,
    finished: Vec<(InstanceRecord, Option<PathBuf>)>,
}

impl GithubReporter {
    /// Reads `GITHUB_STEP_SUMMARY` and `GITHUB_OUTPUT` from the environment.
    #[must_use]
    pub fn from_env() -> GithubReporter {
        let path = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        GithubReporter {
            summary: path("GITHUB_STEP_SUMMARY"),
            output: path("GITHUB_OUTPUT"),
            run_id: String::new(),
            workflow: String::new(),
            finished: Vec::new(),
        }
    }
}

fn escape_cell(text: &str) -> String {
    // A CR ends a line in Markdown as LF does, and would cut the table row.
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// Escapes the message of a workflow command as @actions/core does: the
/// runner reads its output line by line, splitting on CR as well as LF, so an
/// unescaped CR in a task id or message would start a new line that could
/// be taken for a command of its own (`::add-mask::`, `::stop-commands::`).
fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn append(path: &PathBuf, text: &str) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    match file {
        Ok(mut f) => {
            let _ = f.write_all(text.as_bytes());
        }
        Err(error) => crate::errln!("warning: cannot write `{}`: {error}", path.display()),
    }
}

impl Reporter for GithubReporter {
    fn event(&mut self, event: &RunEvent) {
        match event {
            RunEvent::RunStarted {
                run_id, workflow, ..
            } => {
                self.run_id.clone_from(run_id);
                self.workflow.clone_from(workflow);
            }
            RunEvent::TaskFinished { record, log_path } => {
                if record.status.is_failure() {
                    // An annotation on the job; messages are %-escaped.
                    let message = format!(
                        "{}: {}",
                        record.id,
                        record
                            .message
                            .clone()
                            .unwrap_or_else(|| record.status.word().into())
                    );
                    crate::outln!(
                        "::error title=ccflow task failed::{}",
                        escape_data(&message)
                    );
                }
                self.finished.push((record.clone(), log_path.clone()));
            }
            RunEvent::RunFinished {
                status,
                counts,
                usage,
                duration,
                ..
            } => {
                if let Some(path) = &self.summary {
                    let mut md = String::new();
                    let icon = if *status == RunStatus::Succeeded {
                        "✅"
                    } else {
                        "❌"
                    };
                    let _ = writeln!(
                        md,
                        "### {icon} ccflow `{}` — {}\n",
                        self.workflow,
                        status.word()
                    );
                    let _ = writeln!(
                        md,
                        "{} ran · {} cached · {} failed · {} tokens · ${:.4} · {} · run `{}`\n",
                        counts.succeeded,
                        counts.cached,
                        counts.failed + counts.conflicts,
                        human_count(usage.total_tokens()),
                        usage.cost_usd,
                        human_duration(*duration),
                        self.run_id
                    );
                    let _ = writeln!(
                        md,
                        "| instance | status | duration | cache | tokens | cost |"
                    );
                    let _ = writeln!(md, "|---|---|---|---|---|---|");
                    for (record, _) in &self.finished {
                        let cache = if record.status == InstanceStatus::Cached {
                            "hit"
                        } else {
                            "miss"
                        };
                        let _ = writeln!(
                            md,
                            "| `{}` | {} | {} | {cache} | {} | ${:.4} |",
                            escape_cell(&record.id),
                            record.status.word(),
                            human_duration(std::time::Duration::from_millis(record.duration_ms)),
                            human_count(record.usage.total_tokens()),
                            record.usage.cost_usd
                        );
                    }
                    for (record, log) in self.finished.iter().filter(|(r, _)| r.status.is_failure())
                    {
                        let _ = writeln!(
                            md,
                            "\n<details><summary>log of <code>{}</code></summary>\n\n```",
                            escape_cell(&record.id)
                        );
                        if let Some(log) = log {
                            for line in super::plain::log_tail(log, 50) {
                                let _ = writeln!(md, "{}", line.replace("```", "'''"));
                            }
                        }
                        let _ = writeln!(md, "```\n</details>");
                    }
                    md.push('\n');
                    append(path, &md);
                }
                if let Some(path) = &self.output {
                    let status_word = match status {
                        RunStatus::Succeeded => "success",
                        RunStatus::Interrupted => "interrupted",
                        RunStatus::BudgetExhausted => "budget-exhausted",
                        _ => "failure",
                    };
                    let text = format!(
                        "status={status_word}\ntasks-run={}\ntasks-cached={}\ntasks-failed={}\ntokens={}\ncost-usd={:.6}\nrun-id={}\n",
                        counts.succeeded,
                        counts.cached,
                        counts.failed + counts.conflicts,
                        usage.total_tokens(),
                        usage.cost_usd,
                        self.run_id
                    );
                    append(path, &text);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{escape_cell, escape_data};

    #[test]
    fn carriage_returns_cannot_start_a_workflow_command() {
        assert_eq!(
            escape_data("a%b\r::add-mask::x\ny"),
            "a%25b%0D::add-mask::x%0Ay"
        );
        assert_eq!(escape_cell("a|b\r\nc"), "a\\|b  c");
    }
}
