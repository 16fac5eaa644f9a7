//! Cleaning up after a ccflow that was killed with SIGKILL: its tasks (and
//! what they started, e.g. a build run by an agent's Bash tool) may still be
//! running. Every task process carries `CCFLOW_RUN_ID`; every run writes its
//! owner's pid and start time to `runs/RUN_ID/owner`. At the start of a run,
//! processes of runs whose owner is gone are killed.

use std::path::Path;

/// The marker file of a run's owning ccflow process.
const OWNER_FILE: &str = "owner";

/// The start time of a process (clock ticks since boot), from `/proc/PID/stat`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Field 22 overall; 20th after the command name's closing parenthesis.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Records this process as the owner of the run in `run_dir`.
///
/// # Errors
/// The marker cannot be written.
pub fn write_owner(run_dir: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let started = start_time(pid).unwrap_or(0);
    fs_err::write(run_dir.join(OWNER_FILE), format!("{pid} {started}\n"))
}

/// What the owner file marks a run that ended normally with.
const FINISHED: &str = "finished";

/// Marks the run in `run_dir` as ended normally: later runs need not read
/// its record to see whether it was cut short.
///
/// # Errors
/// The marker cannot be written.
pub fn mark_finished(run_dir: &Path) -> std::io::Result<()> {
    fs_err::write(run_dir.join(OWNER_FILE), format!("{FINISHED}\n"))
}

/// The state of a run's owning ccflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// Still running.
    Alive,
    /// Gone without finishing (killed).
    Dead,
    /// Ended normally.
    Finished,
    /// No marker: an older or foreign run.
    Unknown,
}

fn owner(run_dir: &Path) -> Owner {
    let Ok(text) = std::fs::read_to_string(run_dir.join(OWNER_FILE)) else {
        return Owner::Unknown;
    };
    if text.trim() == FINISHED {
        return Owner::Finished;
    }
    let mut parts = text.split_whitespace();
    let (Some(pid), Some(started)) = (
        parts.next().and_then(|p| p.parse::<u32>().ok()),
        parts.next().and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return Owner::Unknown;
    };
    if start_time(pid) == Some(started) {
        Owner::Alive
    } else {
        Owner::Dead
    }
}

/// Whether the owner recorded in `run_dir` is gone (killed or finished):
/// processes and containers of such a run are leftovers.
fn owner_gone(run_dir: &Path) -> bool {
    matches!(owner(run_dir), Owner::Dead | Owner::Finished)
}

/// The most recent runs (at most 20) whose ccflow was killed mid-run and
/// that no later run has cleaned up after yet.
#[must_use]
pub fn killed_runs(state_dir: &Path) -> Vec<std::path::PathBuf> {
    // The newest first, and only as many as looked at: `list_runs` checks
    // every directory for a record.
    crate::report::record::run_dirs_newest_first(state_dir)
        .into_iter()
        .filter(|dir| crate::report::record::has_record(dir))
        .take(20)
        .filter(|dir| owner(dir) == Owner::Dead)
        .collect()
}

/// Whether `run_id` is a run of this state directory whose ccflow is gone
/// (containers and processes of such runs are leftovers).
#[must_use]
pub fn run_is_dead(state_dir: &Path, run_id: &str) -> bool {
    if run_id.is_empty() || run_id.contains('/') || run_id.contains("..") {
        return false;
    }
    let dir = state_dir.join("runs").join(run_id);
    dir.is_dir() && owner_gone(&dir)
}

/// Kills processes left running by runs (under `state_dir/runs`) whose
/// ccflow is gone. Returns how many were killed.
#[must_use]
pub fn kill_orphans_of_dead_runs(state_dir: &Path, current_run: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let own = std::process::id();
    let mut killed = 0;
    let mut verdicts: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let Some(run_id) = environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(b"CCFLOW_RUN_ID="))
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
        else {
            continue;
        };
        if run_id == current_run || run_id.contains('/') || run_id.contains("..") {
            continue;
        }
        let dead = *verdicts.entry(run_id.clone()).or_insert_with(|| {
            let dir = state_dir.join("runs").join(&run_id);
            dir.is_dir() && owner_gone(&dir)
        });
        if dead {
            let Ok(pid) = libc::pid_t::try_from(pid) else {
                continue;
            };
            // SAFETY: kill(2) with a positive pid and a valid signal has no
            // memory-safety preconditions.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}

/// How many run records are kept by default (`CCFLOW_KEEP_RUNS`).
pub const KEEP_RUNS: usize = 100;

/// The run directories [`remove_runs`] should remove so that `keep`
/// remain with the new run `run_id` (0: keep all).
#[must_use]
pub fn runs_to_prune_before(
    state_dir: &Path,
    run_id: &str,
    keep: usize,
) -> Vec<std::path::PathBuf> {
    if keep == 0 {
        return Vec::new();
    }
    crate::report::record::list_runs(state_dir)
        .into_iter()
        .filter(|dir| dir.file_name().is_none_or(|name| name != run_id))
        .skip(keep - 1)
        .collect()
}

/// Removes these run directories but those whose ccflow is still running.
/// Returns how many were removed.
pub fn remove_runs(dirs: impl IntoIterator<Item = std::path::PathBuf>) -> usize {
    let mut removed = 0;
    for dir in dirs {
        if owner(&dir) != Owner::Alive && std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The number of run records to keep: `CCFLOW_KEEP_RUNS`, else [`KEEP_RUNS`].
#[must_use]
pub fn runs_to_keep() -> usize {
    std::env::var("CCFLOW_KEEP_RUNS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(KEEP_RUNS)
}

/// Marks the records of `killed` runs (see [`killed_runs`]) still saying
/// `running` as `interrupted`, so `ccflow runs` tells the truth, and marks
/// the runs cleaned up. Call it after [`kill_orphans_of_dead_runs`].
/// Returns how many records were fixed.
#[must_use]
pub fn close_dead_records(killed: &[std::path::PathBuf]) -> usize {
    let mut fixed = 0;
    for dir in killed {
        if let Ok(mut record) = crate::report::record::RunRecord::read(dir) {
            if record.status == crate::report::record::RunStatus::Running {
                record.status = crate::report::record::RunStatus::Interrupted;
                record.messages.push(
                    "ccflow was killed during this run; the next run cleaned up after it".into(),
                );
                if record.write(dir).is_ok() {
                    fixed += 1;
                }
            }
        }
        // Cleaned up: later runs need not look at it again.
        let _ = mark_finished(dir);
    }
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the oldest run directories beyond the `keep` most recent
    /// (`0` keeps all), as a run does before it starts, minus its own.
    fn prune_runs(state_dir: &Path, keep: usize) -> usize {
        if keep == 0 {
            return 0;
        }
        remove_runs(
            crate::report::record::list_runs(state_dir)
                .into_iter()
                .skip(keep),
        )
    }

    /// `runs/NAME` under `state` with a record in it.
    fn run_dir_with_record(state: &Path, name: &str) -> std::path::PathBuf {
        let dir = state.join("runs").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("run.json"), "{}").unwrap();
        dir
    }

    #[test]
    fn pruning_keeps_the_most_recent_runs_and_live_ones() {
        let state = tempfile::tempdir().unwrap();
        let run = |name: &str| run_dir_with_record(state.path(), name);
        let oldest_live = run("20260101-000000-aaaa");
        write_owner(&oldest_live).unwrap();
        let old = run("20260101-000001-bbbb");
        mark_finished(&old).unwrap();
        let recent = run("20260102-000000-cccc");
        let newest = run("20260103-000000-dddd");
        assert_eq!(prune_runs(state.path(), 2), 1);
        assert!(!old.exists(), "an old finished run goes");
        assert!(oldest_live.exists(), "a running ccflow's run stays");
        assert!(recent.exists() && newest.exists());
        assert_eq!(prune_runs(state.path(), 0), 0, "0 keeps all");
    }

    #[test]
    fn pruning_before_a_run_leaves_room_for_it_whenever_it_appears() {
        let state = tempfile::tempdir().unwrap();
        let run = |name: &str| run_dir_with_record(state.path(), name);
        let oldest = run("20260101-000000-aaaa");
        run("20260102-000000-bbbb");
        run("20260103-000000-cccc");
        let new = "20260104-000000-dddd";
        assert_eq!(
            runs_to_prune_before(state.path(), new, 3),
            [oldest.as_path()]
        );
        // The new run's directory, already there or not, is not counted.
        run(new);
        assert_eq!(
            runs_to_prune_before(state.path(), new, 3),
            [oldest.as_path()]
        );
        assert_eq!(remove_runs(runs_to_prune_before(state.path(), new, 3)), 1);
        assert!(!oldest.exists());
        assert_eq!(crate::report::record::list_runs(state.path()).len(), 3);
        assert!(
            runs_to_prune_before(state.path(), new, 0).is_empty(),
            "0 keeps all"
        );
    }

    #[test]
    fn processes_of_a_dead_run_are_killed_and_live_runs_are_kept() {
        let state = tempfile::tempdir().unwrap();
        let dead = state.path().join("runs/dead-run");
        let live = state.path().join("runs/live-run");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        // The dead run's owner: a pid with a start time that cannot match.
        std::fs::write(dead.join(OWNER_FILE), format!("{} 1\n", std::process::id())).unwrap();
        write_owner(&live).unwrap();
        let spawn = |run: &str| {
            std::process::Command::new("sleep")
                .arg("1000")
                .env("CCFLOW_RUN_ID", run)
                .spawn()
                .unwrap()
        };
        let mut orphan = spawn("dead-run");
        let mut kept = spawn("live-run");
        // A spawn returns once the child has begun its exec, but the kernel
        // sets up the new environment a moment later: until then its
        // `/proc/PID/environ` reads empty (seen under the full test suite's
        // load). Orphans of a dead run have long finished their exec.
        let needle = b"CCFLOW_RUN_ID=";
        for child in [&orphan, &kept] {
            let environ = format!("/proc/{}/environ", child.id());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !std::fs::read(&environ)
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle))
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{environ} never showed the run id"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let killed = kill_orphans_of_dead_runs(state.path(), "current");
        assert!(killed >= 1);
        let status = orphan.wait().unwrap();
        assert!(!status.success(), "the orphan was killed");
        assert!(
            kept.try_wait().unwrap().is_none(),
            "a live run's process is kept"
        );
        kept.kill().unwrap();
        kept.wait().unwrap();
    }
}
