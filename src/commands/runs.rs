//! `ccflow runs`, `ccflow show [RUN_ID]` and `ccflow logs TASK[ITEM]`: reading run records.

use std::path::PathBuf;

use super::Ctx;
use crate::cli::{LogsArgs, RunsArgs, ShowArgs};
use crate::error::{CommandError, CommandResult, ExitStatus};
use crate::report::record::{list_runs, RunRecord};
use crate::report::{human_count, human_duration};

fn run_dir(ctx: &Ctx, id: Option<&str>) -> Result<PathBuf, CommandError> {
    let runs = list_runs(&ctx.state_dir);
    match id {
        None => runs.into_iter().next().ok_or_else(|| {
            CommandError::usage("no runs recorded yet").hint("`ccflow run WORKFLOW` records one")
        }),
        Some(id) => runs
            .iter()
            .find(|d| d.file_name().is_some_and(|n| n.to_string_lossy() == id))
            .or_else(|| {
                let matches: Vec<&PathBuf> = runs
                    .iter()
                    .filter(|d| {
                        d.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with(id))
                    })
                    .collect();
                (matches.len() == 1).then(|| matches[0])
            })
            .cloned()
            .ok_or_else(|| {
                CommandError::usage(format!("no run `{id}`")).hint("`ccflow runs` lists them")
            }),
    }
}

/// Lists recent runs.
///
/// # Errors
/// Never; kept fallible like every command.
pub fn runs(args: &RunsArgs, ctx: &Ctx) -> CommandResult {
    let runs = list_runs(&ctx.state_dir);
    if runs.is_empty() {
        crate::errln!("no runs recorded yet");
        return Ok(ExitStatus::Success);
    }
    crate::outln!(
        "{:<22} {:<16} {:<12} {:>8} {:>6} {:>6} {:>6} {:>9}",
        "RUN",
        "WORKFLOW",
        "STATUS",
        "TIME",
        "RAN",
        "CACHED",
        "FAILED",
        "TOKENS"
    );
    for dir in runs.into_iter().take(args.limit) {
        match RunRecord::read(&dir) {
            Ok(r) => crate::outln!(
                "{:<22} {:<16} {:<12} {:>8} {:>6} {:>6} {:>6} {:>9}",
                r.run_id,
                r.workflow,
                r.status.word(),
                human_duration(std::time::Duration::from_millis(r.duration_ms)),
                r.counts.succeeded,
                r.counts.cached,
                r.counts.failed + r.counts.conflicts,
                human_count(r.usage.total_tokens())
            ),
            Err(e) => crate::outln!(
                "{:<22} (unreadable: {e})",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        }
    }
    Ok(ExitStatus::Success)
}

/// Shows one run.
///
/// # Errors
/// Unknown run.
pub fn show(args: &ShowArgs, ctx: &Ctx) -> CommandResult {
    let dir = run_dir(ctx, args.run.as_deref())?;
    let record = RunRecord::read(&dir).map_err(CommandError::usage)?;
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&record).unwrap_or_default()
        );
        return Ok(ExitStatus::Success);
    }
    crate::outln!(
        "run {} of `{}` ({}): {}",
        record.run_id,
        record.workflow,
        record.workflow_file,
        record.status.word()
    );
    crate::outln!(
        "  {} instances: {} ran, {} cached, {} failed, {} skipped, {} blocked, {} not started; {} tokens, ${:.4}; {}",
        record.counts.total,
        record.counts.succeeded,
        record.counts.cached,
        record.counts.failed + record.counts.conflicts,
        record.counts.skipped,
        record.counts.blocked,
        record.counts.not_started,
        human_count(record.usage.total_tokens()),
        record.usage.cost_usd,
        human_duration(std::time::Duration::from_millis(record.duration_ms))
    );
    for message in &record.messages {
        crate::outln!("  {message}");
    }
    for i in &record.instances {
        let attempts = if i.attempts.len() > 1 {
            format!("  ({} attempts)", i.attempts.len())
        } else {
            String::new()
        };
        let tokens = if i.usage.total_tokens() > 0 {
            format!(
                "  {} tok ${:.4}",
                human_count(i.usage.total_tokens()),
                i.usage.cost_usd
            )
        } else {
            String::new()
        };
        crate::outln!(
            "  {:<8} {:<40} {:>7}{tokens}{attempts}{}",
            i.status.word(),
            i.id,
            human_duration(std::time::Duration::from_millis(i.duration_ms)),
            i.message
                .as_ref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default()
        );
        for (name, path) in &i.artifacts {
            crate::outln!("           {name}: {}", dir.join(path).display());
        }
    }
    Ok(ExitStatus::Success)
}

/// Prints an instance's log.
///
/// # Errors
/// Unknown run or instance, or no log.
pub fn logs(args: &LogsArgs, ctx: &Ctx) -> CommandResult {
    let dir = run_dir(ctx, args.run.as_deref())?;
    let record = RunRecord::read(&dir).map_err(CommandError::usage)?;
    let Some(instance) = record.instances.iter().find(|i| i.id == args.instance) else {
        let mut error = CommandError::usage(format!(
            "no instance `{}` in run {}",
            args.instance, record.run_id
        ));
        if let Some(h) = crate::diagnostic::did_you_mean(
            &args.instance,
            record.instances.iter().map(|i| i.id.as_str()),
        ) {
            error = error.hint(h);
        }
        return Err(error);
    };
    if let Some(log) = &instance.log {
        let path = dir.join(log);
        // A task that printed nothing leaves no log file.
        let bytes = if path.exists() {
            fs_err::read(&path).map_err(|e| CommandError::usage(e.to_string()))?
        } else {
            Vec::new()
        };
        if bytes.is_empty() {
            crate::errln!("(`{}` printed nothing)", args.instance);
        }
        use std::io::Write as _;
        let _ = std::io::stdout().write_all(&bytes);
        return Ok(ExitStatus::Success);
    }
    // A cached instance: its log lives in the cache entry.
    if let Some(key) = &instance.cache_key {
        if let Ok(store) = crate::cache::Store::open(&ctx.state_dir.join("cache")) {
            if let Ok(hash) = key.parse() {
                if let Ok(Some(entry)) = store.lookup(&hash) {
                    if let Some(log) = entry.log.and_then(|h| store.read_blob(&h).ok()) {
                        if log.is_empty() {
                            crate::errln!("(`{}` printed nothing)", args.instance);
                        }
                        use std::io::Write as _;
                        let _ = std::io::stdout().write_all(&log);
                        return Ok(ExitStatus::Success);
                    }
                }
            }
        }
    }
    Err(CommandError::usage(format!(
        "`{}` has no log in run {} (status: {})",
        args.instance,
        record.run_id,
        instance.status.word()
    )))
}
