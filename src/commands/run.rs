//! `ccflow run WORKFLOW`: plan, then execute with the scheduler, reporting
//! to the terminal (or plain lines, GitHub Actions, `--events`), and leave
//! a run record in `.ccflow/runs/RUN_ID/`.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::common;
use super::Ctx;
use crate::cache::{StatIndex, Store};
use crate::cli::RunArgs;
use crate::error::{CommandError, CommandResult, ExitStatus};
use crate::exec::instance::RunShared;
use crate::exec::scheduler::{self, RunOptions};
use crate::exec::worktree_pool::WorktreePool;
use crate::report::events::EventsReporter;
use crate::report::github::GithubReporter;
use crate::report::plain::PlainReporter;
use crate::report::progress::ProgressReporter;
use crate::report::record::{new_run_id, RunStatus};
use crate::report::Reporters;
use crate::workflow::resolve::parse_duration;

/// The environment variables a task inherits from the caller (SPEC §4).
const BASE_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TERM"];

/// Descriptors a running instance holds (output pipe ends, log file, and
/// some slack for the cache and the reaper).
const FILES_PER_INSTANCE: u64 = 4;

/// Descriptors kept for ccflow itself (store, index, runtime, reporters).
const FILES_RESERVED: u64 = 64;

/// Raises the soft open-file limit to the hard one, as the Go runtime does:
/// every running instance holds a few descriptors, so `-j 500` under the
/// common soft limit of 1024 failed hundreds of instances with "too many
/// open files". Returns the soft limit now in effect.
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass. It fails when the
        // hard limit is unlimited (Linux caps at `nr_open`); then the soft
        // limit stays as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

/// Runs a workflow.
///
/// # Errors
/// Invalid workflow or arguments (exit 2); state directory not writable.
pub fn run(args: &RunArgs, ctx: &Ctx) -> CommandResult {
    if args.jobs == Some(0) {
        return Err(
            CommandError::usage("`-j 0`: at least one job must run at a time")
                .hint("use `-j 1` to run one instance at a time"),
        );
    }
    let clock = std::time::Instant::now();
    // Run directories beyond the ones kept are listed and removed on a
    // thread beside the run (deleting one, its record and logs, took
    // ~1.5 ms of a 30 ms rerun; listing 100, ~0.4 ms).
    let run_id = new_run_id();
    let _pruning = Pruning::start(&ctx.state_dir, &run_id);
    let vars = common::parse_vars(&args.vars)?;
    let workflow_path = common::find(ctx, &args.workflow)?;
    // The up-to-date check (see `crate::memo`): not when the user asked
    // for reruns, and not when every instance must be reported.
    let memo = (!args.no_cache && args.rerun.is_empty())
        .then(|| memo_context(ctx, &workflow_path, args, &vars));
    let mut settled = std::collections::HashMap::new();
    let mut finding = None;
    let mut seed = crate::memo::Seed::default();
    if let Some(context) = &memo {
        let mut unaffected = None;
        match crate::memo::check(context) {
            crate::memo::Verdict::UpToDate(up_to_date) => {
                if up_to_date.proven.all_reproducible
                    && args.events.is_none()
                    && !ctx.github
                    && !args.replay
                {
                    return report_up_to_date(ctx, &up_to_date, clock, &run_id);
                }
                // Every instance must be reported: the scheduler settles them.
                settled = up_to_date
                    .settled()
                    .into_iter()
                    .filter(|s| s.reproducible)
                    .map(|s| (s.id.clone(), s))
                    .collect();
                seed = up_to_date.seed;
            }
            // Its seed goes to the recorder from the thread finding the
            // unaffected instances.
            crate::memo::Verdict::Changed { settled: found, .. } => {
                unaffected = Some(found);
            }
            crate::memo::Verdict::Unknown => {}
        }
        crate::memo::start(seed);
        finding = unaffected.map(crate::memo::Unaffected::find);
        crate::timing!("up-to-date check done");
    }
    // The cache and the file-hash index are opened beside the planning
    // (reading a 2,000-entry index took ~1 ms of a 40 ms rerun), the runs
    // whose ccflow was killed looked for (~0.4 ms: the owners of the last
    // 20 runs), and the memo this slow run replaces invalidated: joined before
    // anything runs.
    let open = {
        let state_dir = ctx.state_dir.clone();
        let stale_memo = memo.as_ref().map(|context| context.file().to_owned());
        move || {
            if let Some(stale) = &stale_memo {
                crate::memo::invalidate(stale);
            }
            (
                Store::open(&state_dir.join("cache")),
                StatIndex::open(&state_dir.join("index")),
                crate::exec::stale::killed_runs(&state_dir),
            )
        }
    };
    let opening = std::thread::Builder::new()
        .name("ccflow-open".to_owned())
        .spawn(open.clone())
        .ok();
    crate::memo::stat(&workflow_path);
    if let Some(dir) = workflow_path.parent() {
        crate::memo::stat(dir);
    }
    let workflow = common::load_path(ctx, &workflow_path, &vars)?;
    crate::timing!("workflow loaded");
    for name in &args.rerun {
        if workflow.task(name).is_none() {
            let mut error = CommandError::usage(format!(
                "`--rerun {name}`: no task `{name}` in workflow `{}`",
                workflow.name
            ));
            if let Some(h) = crate::diagnostic::did_you_mean(
                name,
                workflow.tasks.iter().map(|t| t.name.as_str()),
            ) {
                error = error.hint(h);
            }
            return Err(error);
        }
    }
    // What the memo settles is not run: its rendering can wait. After a
    // change, all of it waits (what runs is rendered as it starts): the
    // unaffected instances are still being found beside the planning, and
    // the workflow and its fan-outs are as the memo saw them rendered.
    let defer_all = finding.is_some();
    let plan = common::plan_deferring(ctx, Arc::clone(&workflow), &run_id, &args.tasks, &|id| {
        defer_all || settled.contains_key(id)
    })?;
    crate::timing!("planned");
    // The run's directory, made while the unaffected instances are still
    // being found (~0.5 ms: two new directories and a file).
    let io = |what: &str, e: std::io::Error| CommandError::usage(format!("cannot {what}: {e}"));
    let run_dir = scheduler::run_dir(&ctx.state_dir, &run_id);
    fs_err::create_dir_all(run_dir.join("logs")).map_err(|e| io("create the run directory", e))?;
    if let Err(e) = crate::exec::stale::write_owner(&run_dir) {
        crate::errln!("warning: cannot record the run's owner: {e}");
    }
    if let Some(found) = finding {
        match found.wait() {
            Some(clean) => settled = clean,
            // The full run: what this run observes from here on is all the
            // memo it writes will rest on.
            None => crate::memo::forget_seed(),
        }
    }
    let (store, index, killed) = opening
        .and_then(|thread| thread.join().ok())
        .unwrap_or_else(open);
    if !killed.is_empty() {
        match crate::exec::stale::kill_orphans_of_dead_runs(&ctx.state_dir, &run_id) {
            0 => {}
            n => {
                crate::errln!(
                    "ccflow: killed {n} process(es) left running by a ccflow that was killed"
                )
            }
        }
        let _ = crate::exec::stale::close_dead_records(&killed);
    }
    let gitignore = ctx.state_dir.join(".gitignore");
    if !gitignore.exists() {
        let _ = fs_err::write(&gitignore, "*\n");
    }
    let store = match store {
        Ok(store) => Some(store),
        Err(e) => {
            crate::errln!("warning: the cache is unavailable ({e}); running without it");
            None
        }
    };
    let index =
        index.map_err(|e| CommandError::usage(format!("cannot open the file-hash index: {e}")))?;
    let mut secrets = Vec::new();
    for name in &workflow.secrets {
        match std::env::var(name) {
            Ok(value) => secrets.push((name.clone(), value)),
            Err(_) => crate::errln!(
                "warning: secret `{name}` is not set in the environment; tasks will not see it"
            ),
        }
    }
    let base_env: Vec<(String, String)> = BASE_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    let kill_grace = std::env::var("CCFLOW_KILL_GRACE")
        .ok()
        .and_then(|v| parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(5));
    let log_limit = std::env::var("CCFLOW_LOG_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 * 1024 * 1024);
    crate::timing!("cache and index open");
    crate::exec::reaper::init();
    // One thread runs the loop and every instance's supervision, as ninja
    // and make do: the tasks' processes are what needs the cores. On 2
    // cores a cold run of 1,000 tasks took 874 ms on the multi-threaded
    // runtime (wake-ups between workers) and 777 ms on this one. Blocking
    // work (large hashes, saves, git) goes to the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::usage(format!("cannot start the runtime: {e}")))?;
    let selected: Vec<usize> = (0..workflow.tasks.len())
        .filter(|i| !plan.task_nodes[*i].is_empty())
        .collect();
    if selected
        .iter()
        .any(|i| workflow.tasks[*i].runner == crate::workflow::raw::Runner::Docker)
    {
        crate::memo::spoil("an image can change under its tag");
    }
    let (docker, image_ids) = common::prepare_docker(
        &runtime,
        &workflow,
        &selected,
        Some(&run_id),
        &ctx.state_dir,
    )?;
    let (notice_tx, notice_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(RunShared {
        workflow: Arc::clone(&workflow),
        root: ctx.root.clone(),
        root_canonical: std::fs::canonicalize(&ctx.root).unwrap_or_else(|_| ctx.root.clone()),
        run_id: run_id.clone(),
        run_dir: run_dir.clone(),
        store,
        index,
        cancel: CancellationToken::new(),
        secrets,
        base_env,
        no_cache: args.no_cache,
        rerun: args.rerun.clone(),
        kill_grace,
        log_limit,
        inflight: Mutex::new(std::collections::HashMap::new()),
        notices: notice_tx,
        docker,
        image_ids,
        state_dir: ctx.state_dir.clone(),
        snapshot: tokio::sync::OnceCell::new(),
        apply_mode: args.apply,
        apply_lock: tokio::sync::Mutex::new(()),
        worktree_pool: WorktreePool::new(
            &ctx.root,
            selected
                .iter()
                .filter(|task| workflow.tasks[**task].is_agent())
                .map(|task| plan.task_nodes[*task].len())
                .sum(),
        ),
        replay_logs: args.replay,
    });
    let mut reporters = Reporters::default();
    let events_to_stdout = args.events.as_deref() == Some("-");
    if std::io::stderr().is_terminal() && !ctx.github && std::env::var_os("CI").is_none() {
        reporters.reporters.push(Box::new(ProgressReporter::new()));
    } else {
        // Buffered: unbuffered stderr cost a write(2) per padded field, a
        // fifth of a no-op run over 10,000 cached instances; the reporter
        // flushes after every line but those of cached instances.
        reporters.reporters.push(Box::new(PlainReporter::new(
            Box::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            )),
            ctx.github,
            args.replay,
        )));
    }
    if ctx.github {
        reporters
            .reporters
            .push(Box::new(GithubReporter::from_env()));
    }
    if let Some(target) = &args.events {
        let out: Box<dyn std::io::Write + Send> = if events_to_stdout {
            Box::new(std::io::stdout())
        } else {
            Box::new(fs_err::File::create(target).map_err(|e| io("open the events file", e))?)
        };
        reporters.reporters.push(Box::new(EventsReporter::new(out)));
    }
    let max_jobs = raise_open_file_limit().map(|limit| {
        usize::try_from(limit.saturating_sub(FILES_RESERVED) / FILES_PER_INSTANCE)
            .unwrap_or(usize::MAX)
    });
    let options = RunOptions {
        jobs: args.jobs,
        keep_going: args.keep_going,
        max_jobs,
    };
    crate::timing!("scheduler starts");
    // Kept until the process exits rather than freed as the scheduler
    // ends: the file-hash index took ~0.5 ms to free piece by piece
    // (with the memo's settled instances, which the scheduler now owns).
    let kept = Arc::clone(&shared);
    let mut outcome = runtime.block_on(scheduler::run(
        plan, shared, settled, options, reporters, notice_rx,
    ));
    crate::timing!("scheduler done");
    if let Err(e) = crate::exec::stale::mark_finished(&run_dir) {
        tracing::debug!("cannot mark the run finished: {e}");
    }
    if let Some(context) = &memo {
        let concluded = if outcome.status == RunStatus::Succeeded {
            crate::memo::conclude(
                context,
                &outcome.record,
                &outcome.settled,
                &outcome.from_memo,
                &outcome.memo_json,
            )
        } else {
            crate::memo::stop();
            Err(format!("the run {}", outcome.status.word()))
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            log_cpu_time();
        }
        if let Err(reason) = concluded {
            tracing::debug!("no up-to-date memo: {reason}");
        }
    }
    crate::timing!("memo written");
    outcome.wait_for_disk();
    crate::timing!("record, cache and index on disk");
    let status = match outcome.status {
        RunStatus::Succeeded => ExitStatus::Success,
        RunStatus::Interrupted => ExitStatus::Interrupted,
        RunStatus::Failed | RunStatus::BudgetExhausted | RunStatus::Running => {
            ExitStatus::TaskFailed
        }
    };
    // Everything is on disk: the process exits next, so neither wait for
    // idle runtime threads nor free the record piece by piece.
    runtime.shutdown_background();
    std::mem::forget(outcome);
    std::mem::forget(kept);
    Ok(status)
}

/// Old run directories being removed ([`crate::exec::stale::remove_runs`])
/// on a thread, joined when dropped: the process never exits halfway
/// through a removal it could finish.
struct Pruning(Option<std::thread::JoinHandle<()>>);

impl Pruning {
    fn start(state_dir: &std::path::Path, run_id: &str) -> Pruning {
        // Listed without this run's directory, so that the count kept
        // includes it whether it exists yet or not.
        let prune = {
            let (state_dir, run_id) = (state_dir.to_owned(), run_id.to_owned());
            move || {
                crate::exec::stale::remove_runs(crate::exec::stale::runs_to_prune_before(
                    &state_dir,
                    &run_id,
                    crate::exec::stale::runs_to_keep(),
                ));
            }
        };
        match std::thread::Builder::new()
            .name("ccflow-prune".to_owned())
            .spawn(prune.clone())
        {
            Ok(thread) => Pruning(Some(thread)),
            Err(_) => {
                prune();
                Pruning(None)
            }
        }
    }
}

impl Drop for Pruning {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

/// The memo context of this invocation: the workflow and every argument
/// that changes what a run decides (not `-j`, not how it reports).
fn memo_context(
    ctx: &Ctx,
    workflow: &std::path::Path,
    args: &RunArgs,
    vars: &std::collections::BTreeMap<String, String>,
) -> crate::memo::Context {
    let mut parts: Vec<String> = vars.iter().map(|(k, v)| format!("var {k}={v}")).collect();
    parts.extend(args.tasks.iter().map(|t| format!("task {t}")));
    parts.push(format!("apply {:?}", args.apply));
    crate::memo::Context::new(&ctx.state_dir, &ctx.root, workflow, &parts)
}

/// Ends a run the memo answered: writes its record (the proving run's
/// instances, all cached or skipped) and prints the summary.
fn report_up_to_date(
    ctx: &Ctx,
    up_to_date: &crate::memo::UpToDate,
    clock: std::time::Instant,
    run_id: &str,
) -> CommandResult {
    use crate::report::record::{now_ms, RunRecord, RECORD_VERSION};
    let proven = &up_to_date.proven;
    let run_dir = scheduler::run_dir(&ctx.state_dir, run_id);
    let io = |what: &str, e: std::io::Error| CommandError::usage(format!("cannot {what}: {e}"));
    fs_err::create_dir_all(&run_dir).map_err(|e| io("create the run directory", e))?;
    let duration = clock.elapsed();
    let finished = now_ms();
    let record = RunRecord {
        version: RECORD_VERSION,
        run_id: run_id.to_owned(),
        workflow: proven.workflow.clone(),
        workflow_file: proven.workflow_file.clone(),
        status: RunStatus::Succeeded,
        started_unix_ms: finished.saturating_sub(u64::try_from(duration.as_millis()).unwrap_or(0)),
        finished_unix_ms: Some(finished),
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(0),
        counts: proven.counts,
        usage: proven.usage,
        messages: vec![format!(
            "up to date: {} files and directories unchanged since run {}",
            up_to_date.checked, proven.run_id
        )],
        instances: Vec::new(),
    };
    record
        .write_with_instances(&run_dir, &up_to_date.instances_json)
        .map_err(|e| io("write the run record", e))?;
    crate::errln!(
        "ccflow: `{}` is up to date: {} files and directories unchanged since run {}",
        proven.workflow,
        up_to_date.checked,
        proven.run_id
    );
    crate::errln!(
        "{}",
        crate::report::plain::summary(
            RunStatus::Succeeded,
            &proven.counts,
            &proven.usage,
            duration,
            &run_dir
        )
    );
    Ok(ExitStatus::Success)
}

/// Logs the CPU time this process (all its threads, not its children) and
/// its children have used so far: where a run's cost goes, for profiling.
fn log_cpu_time() {
    let usage = |who| {
        // SAFETY: getrusage writes into the zeroed struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut usage) };
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
        (ms(usage.ru_utime), ms(usage.ru_stime))
    };
    let (user, sys) = usage(libc::RUSAGE_SELF);
    let (child_user, child_sys) = usage(libc::RUSAGE_CHILDREN);
    tracing::debug!(
        "cpu: ccflow {user:.0} ms user + {sys:.0} ms sys; children {child_user:.0} ms user + {child_sys:.0} ms sys"
    );
}
