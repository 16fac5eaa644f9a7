//! Executing one task instance: compute its cache key, restore on a hit,
//! otherwise run it (with retries) and save the result on success.
//!
//! Order matters (as in turborepo's run cache): look up before spawning,
//! save only after success, restore outputs before reporting `cached`.
//! In-place instances (outputs overlapping inputs, e.g. a formatter) are
//! saved under two keys: the pre-state key they ran with and the post-state
//! key their own output produces, so a rerun over their result is a hit.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::local::{CommandLine, ProcessSpec};
use super::outcome::ProcessOutcome;
use super::paths;
use crate::cache::index::StatIndex;
use crate::cache::key::{outputs_digest, CacheKey, KeyHash};
use crate::cache::store::{NewEntry, Store};
use crate::graph::RenderedInstance;
use crate::report::record::{now_ms, AttemptRecord, InstanceStatus, Usage};
use crate::workflow::raw::Runner;
use crate::workflow::{Task, TaskKind, Workflow};

/// How many restores write files at once: one per core.
static RESTORE_WRITERS: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| {
        tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        )
    });

/// Everything instances of one run share.
pub struct RunShared {
    pub workflow: Arc<Workflow>,
    pub root: PathBuf,
    /// `root` with symlinks resolved.
    pub root_canonical: PathBuf,
    pub run_id: String,
    pub run_dir: PathBuf,
    pub store: Option<Store>,
    pub index: StatIndex,
    pub cancel: CancellationToken,
    /// Secret name → value, from the caller's environment.
    pub secrets: Vec<(String, String)>,
    /// PATH, HOME, LANG, TERM from the caller.
    pub base_env: Vec<(String, String)>,
    pub no_cache: bool,
    pub rerun: Vec<String>,
    pub kill_grace: Duration,
    pub log_limit: u64,
    /// Keys being computed right now: identical instances run once.
    pub inflight: Mutex<HashMap<KeyHash, Arc<tokio::sync::Notify>>>,
    /// Sends retry notices to the scheduler loop.
    pub notices: tokio::sync::mpsc::UnboundedSender<Notice>,
    /// The Docker engine, when a task uses `runner: docker`.
    pub docker: Option<super::docker::DockerRunner>,
    /// Image reference → image id, resolved before the run starts.
    pub image_ids: HashMap<String, String>,
    /// The state directory (`.ccflow`).
    pub state_dir: PathBuf,
    /// The working-tree snapshot agents start from, taken before the first agent.
    pub snapshot: tokio::sync::OnceCell<Result<Arc<crate::workspace::Snapshot>, String>>,
    /// Where agents' diffs go.
    pub apply_mode: crate::cli::ApplyMode,
    /// Diffs land one at a time, in completion order.
    pub apply_lock: tokio::sync::Mutex<()>,
    /// Agent worktrees reset to the snapshot, ready for the next instance.
    pub worktree_pool: super::worktree_pool::WorktreePool,
    /// Copy cached instances' logs into the run directory (`--replay`);
    /// otherwise `ccflow logs` reads them from the cache entry.
    pub replay_logs: bool,
}

/// A message from a running instance to the scheduler loop.
#[derive(Debug)]
pub enum Notice {
    Retrying {
        id: String,
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    /// An agent was rate limited by the API (429/529/overloaded).
    RateLimited { id: String },
    /// The instance missed the cache and needs a job slot to run; the
    /// loop answers on [`Job::slot`].
    WantSlot {
        node: petgraph::stable_graph::NodeIndex,
    },
    /// The instance's process has exited: its job slot is free for the
    /// next one while it records its outputs (a slot bounds processes, as
    /// ninja's `-j` does, not ccflow's bookkeeping).
    SlotFree {
        node: petgraph::stable_graph::NodeIndex,
    },
}

/// One instance to execute.
pub struct Job {
    pub node: petgraph::stable_graph::NodeIndex,
    pub id: String,
    pub task: usize,
    pub label: Option<String>,
    pub rendered: Arc<RenderedInstance>,
    /// Upstream instance id → digest of its outputs.
    pub deps: BTreeMap<String, String>,
    pub activity: Arc<Mutex<String>>,
    /// Where the loop grants the instance a job slot (`-j`). An instance
    /// probes the cache without one and asks for one only to run, so cache
    /// hits never wait behind processes. The slot is the loop's to account:
    /// it is free again when the process has exited ([`Notice::SlotFree`])
    /// or when the loop handles the instance's result, whichever is first.
    pub slot: tokio::sync::oneshot::Receiver<()>,
}

/// Asks the loop for a job slot and waits for it. `false` when the run
/// stopped starting work (fail-fast or interrupt).
async fn acquire_slot(shared: &RunShared, job: &mut Job) -> bool {
    if shared
        .notices
        .send(Notice::WantSlot { node: job.node })
        .is_err()
    {
        return false;
    }
    (&mut job.slot).await.is_ok()
}

/// What came of one instance.
#[derive(Debug)]
pub struct JobResult {
    pub node: petgraph::stable_graph::NodeIndex,
    pub status: InstanceStatus,
    pub attempts: Vec<AttemptRecord>,
    pub started_unix_ms: u64,
    pub duration: Duration,
    pub exit_code: Option<i32>,
    pub log_path: Option<PathBuf>,
    pub message: Option<String>,
    /// Output files with their content hashes (for downstream keys).
    pub outputs: Vec<(String, String)>,
    /// Input files (repository-relative), for the up-to-date memo.
    pub inputs: Vec<String>,
    pub key: Option<String>,
    pub usage: Usage,
    pub artifacts: BTreeMap<String, String>,
}

impl RunShared {
    /// What this run's instance keys are computed against.
    #[must_use]
    pub fn key_context(&self) -> KeyContext<'_> {
        KeyContext {
            workflow: &self.workflow,
            root: &self.root,
            index: &self.index,
            image_ids: &self.image_ids,
        }
    }

    /// The secret values to mask in logs (empty ones would mask everything).
    #[must_use]
    pub fn masks(&self) -> Vec<String> {
        self.secrets
            .iter()
            .map(|(_, value)| value.clone())
            .filter(|value| !value.is_empty())
            .collect()
    }
}

impl JobResult {
    /// A blank result (for internal bookkeeping).
    #[must_use]
    pub fn empty() -> JobResult {
        JobResult::new(petgraph::stable_graph::NodeIndex::new(0))
    }

    /// A failure that happened before anything ran.
    #[must_use]
    pub fn failed(node: petgraph::stable_graph::NodeIndex, message: String) -> JobResult {
        let mut result = JobResult::new(node);
        result.message = Some(message);
        result
    }

    /// A result with nothing yet: failed until told otherwise.
    pub(crate) fn new(node: petgraph::stable_graph::NodeIndex) -> JobResult {
        JobResult {
            node,
            status: InstanceStatus::Failed,
            attempts: Vec::new(),
            started_unix_ms: now_ms(),
            duration: Duration::ZERO,
            exit_code: None,
            log_path: None,
            message: None,
            outputs: Vec::new(),
            inputs: Vec::new(),
            key: None,
            usage: Usage::default(),
            artifacts: BTreeMap::new(),
        }
    }

    /// The digest of the outputs, as a dependency component of downstream keys.
    #[must_use]
    pub fn outputs_digest(&self) -> String {
        outputs_digest(&self.outputs)
    }
}

/// Inputs up to this size are hashed on the run loop's thread.
const INLINE_HASH_LIMIT: u64 = 1024 * 1024;

fn hash_files(shared: &RunShared, files: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut hashes = BTreeMap::new();
    for file in files {
        let hash = shared
            .index
            .hash_file(&shared.root, file)
            .map_err(|e| e.to_string())?;
        hashes.insert(file.clone(), hash.hash);
    }
    Ok(hashes)
}

/// An instance's cache key and its hashed inputs (path → hash).
pub type Keyed = (CacheKey, BTreeMap<String, String>);

/// What instance keys are computed against: the workflow (its env and
/// secret names join every key), the root, the file-hash index and the
/// image ids of `runner: docker` tasks.
pub struct KeyContext<'a> {
    pub workflow: &'a Workflow,
    pub root: &'a Path,
    pub index: &'a StatIndex,
    pub image_ids: &'a HashMap<String, String>,
}

/// The cache key of an instance (shell or agent) and its hashed inputs.
///
/// # Errors
/// Inputs that cannot be expanded or hashed.
pub fn instance_key(
    context: &KeyContext<'_>,
    task: &Task,
    rendered: &RenderedInstance,
    deps: &BTreeMap<String, String>,
) -> Result<(CacheKey, BTreeMap<String, String>), String> {
    let keyed = instance_key_within(context, task, rendered, deps, u64::MAX)?;
    Ok(keyed.unwrap_or_else(|| unreachable!("no file is larger than u64::MAX")))
}

/// Inputs from this many on are hashed on two threads (a reduce over a
/// fan-out): stat'ing, and hashing what the index does not know, is most of
/// such a key.
const PARALLEL_INPUTS: usize = 256;

type InputHash = Result<Option<crate::cache::index::FileHash>, crate::cache::CacheError>;

/// Each input's hash (see [`StatIndex::hash_file_seen`]), in order. Files
/// not stat'ed yet are stat'ed relative to their directory (see
/// [`crate::cache::DirStat`]); one the stat cannot see is left to
/// `hash_file_seen`, which reports why.
fn hash_inputs(
    index: &StatIndex,
    root: &Path,
    files: Vec<(String, Option<crate::cache::FileStat>)>,
    limit: u64,
) -> Vec<(String, InputHash)> {
    let hash_all =
        |files: Vec<(String, Option<crate::cache::FileStat>)>| -> Vec<(String, InputHash)> {
            let mut dir_stat = crate::cache::DirStat::default();
            files
                .into_iter()
                .map(|(file, seen)| {
                    let path = root.join(&file);
                    let seen = seen.or_else(|| dir_stat.stat(&path).ok());
                    let hashed = index.hash_file_seen(path, &file, seen, limit);
                    (file, hashed)
                })
                .collect()
        };
    // Stats the up-to-date check has just taken stand in for new ones
    // (see `crate::memo::vouched`); the rest are taken below.
    let mut files = files;
    if crate::memo::vouching() {
        let unseen: Vec<usize> = (0..files.len()).filter(|i| files[*i].1.is_none()).collect();
        let paths: Vec<PathBuf> = unseen.iter().map(|i| root.join(&files[*i].0)).collect();
        for (i, vouched) in unseen.into_iter().zip(crate::memo::vouched(&paths)) {
            files[i].1 = vouched;
        }
    }
    let left = files.iter().filter(|(_, seen)| seen.is_none()).count();
    if left < PARALLEL_INPUTS {
        return hash_all(files);
    }
    let mut first = files;
    let second = first.split_off(first.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| hash_all(second));
        let mut hashed = hash_all(first);
        match other.join() {
            Ok(rest) => hashed.extend(rest),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        hashed
    })
}

/// [`instance_key`], or `None` when an input of more than `limit` bytes
/// would have to be read (see [`StatIndex::hash_file_within`]).
pub fn instance_key_within(
    context: &KeyContext<'_>,
    task: &Task,
    rendered: &RenderedInstance,
    deps: &BTreeMap<String, String>,
    limit: u64,
) -> Result<Option<Keyed>, String> {
    let KeyContext {
        workflow,
        root,
        index,
        image_ids,
    } = *context;
    // Timings only for `CCFLOW_LOG=trace`: this runs once per instance.
    let clock = tracing::enabled!(tracing::Level::TRACE).then(Instant::now);
    let input_files = paths::expand_seen(root, input_patterns(rendered), true)
        .map_err(|e| format!("cannot expand inputs: {e}"))?;
    let expanded = clock.map(|c| c.elapsed());
    let mut hashes = Vec::with_capacity(input_files.len());
    for (file, hashed) in hash_inputs(index, root, input_files, limit) {
        let hashed = hashed.map_err(|e| format!("cannot hash input `{file}`: {e}"))?;
        let Some(hash) = hashed else {
            return Ok(None);
        };
        hashes.push((file, hash.hash));
    }
    // Built from the sorted list in one go (the expansion is in path
    // order), not by 1,000 inserts comparing paths.
    let inputs: BTreeMap<String, String> = hashes.into_iter().collect();
    if let (Some(clock), Some(expanded)) = (clock, expanded) {
        tracing::trace!(
            "{} inputs expanded in {expanded:?}, hashed at {:?}",
            inputs.len(),
            clock.elapsed()
        );
    }
    let mut key = CacheKey::new(task.name.clone());
    key.command = match &task.kind {
        TaskKind::Shell { .. } => rendered.command.clone().unwrap_or_default(),
        TaskKind::Agent(agent) => serde_json::json!({
            "prompt": rendered.prompt,
            "model": agent.model,
            "max_turns": agent.max_turns,
            "max_budget_usd": agent.max_budget_usd,
            "allowed_tools": agent.allowed_tools,
            "disallowed_tools": agent.disallowed_tools,
            "append_system_prompt": agent.append_system_prompt,
            "mcp_config": agent.mcp_config,
            "permission_mode": agent.permission_mode,
            "bare": agent.bare,
            "outputs": rendered.outputs,
        })
        .to_string(),
    };
    key.runner = match task.runner {
        Runner::Local => "local".into(),
        Runner::Docker => "docker".into(),
    };
    // The image's id, not its tag: a rebuilt image reruns the task.
    key.image_id = task.image.as_ref().map(|image| {
        image_ids
            .get(image)
            .cloned()
            .unwrap_or_else(|| image.clone())
    });
    if let Some(cpus) = task.cpus {
        key.resources.insert("cpus".into(), cpus.to_string());
    }
    if let Some(memory) = &task.memory {
        key.resources.insert("memory".into(), memory.clone());
    }
    key.env = workflow.env.clone();
    key.env.extend(rendered.env.clone());
    key.secrets.clone_from(&workflow.secrets);
    key.secrets.sort();
    key.inputs.clone_from(&inputs);
    key.deps.clone_from(deps);
    if let TaskKind::Shell {
        shell: Some(shell), ..
    } = &task.kind
    {
        key.extra.insert("shell".into(), shell.join(" "));
    }
    if let Some(workdir) = &rendered.workdir {
        key.extra.insert("workdir".into(), workdir.clone());
    }
    // The declared outputs decide what a hit restores: without them in the
    // key, adding `b.txt` to `outputs` hit the old entry, which never saved
    // `b.txt`, and a clean checkout ended "cached" without it.
    if !rendered.outputs.is_empty() {
        key.extra.insert(
            "outputs".into(),
            serde_json::to_string(&rendered.outputs).unwrap_or_default(),
        );
    }
    if let Some(network) = &task.network {
        key.extra.insert("network".into(), network.clone());
    }
    if let Some(verify) = &rendered.verify {
        key.extra.insert("verify".into(), verify.clone());
        key.extra
            .insert("verify_attempts".into(), task.verify_attempts.to_string());
    }
    Ok(Some((key, inputs)))
}

/// The globs that make an instance's inputs. Without `inputs`, a task's
/// outputs are its inputs: agents read what they edit, and so does a shell
/// task like `sed -i {{ item }}`, so a hand edit changes the key (the task
/// runs on it) instead of being restored over. A task that only creates its
/// outputs is found from its second run on under its post-state key.
#[must_use]
pub fn input_patterns(rendered: &RenderedInstance) -> &[String] {
    if rendered.inputs.is_empty() {
        &rendered.outputs
    } else {
        &rendered.inputs
    }
}

/// The entry an instance's key finds. A task whose outputs are its inputs
/// (no `inputs:`) and some of whose outputs were deleted is keyed by those
/// left: when each of them is as the entry of a run that found none left it
/// (a task that creates its outputs), that entry restores the deleted ones,
/// as it does when all are deleted. A file that differs (edited by hand, or
/// by the task itself in place) never matches, so nothing is overwritten.
///
/// # Errors
/// A store that cannot be read.
pub fn lookup_instance(
    store: &Store,
    key: &CacheKey,
    key_hash: &KeyHash,
    rendered: &RenderedInstance,
) -> Result<Option<crate::cache::Entry>, crate::cache::CacheError> {
    let found = store.lookup(key_hash)?;
    if found.is_some() || !rendered.inputs.is_empty() || key.inputs.is_empty() {
        return Ok(found);
    }
    let mut none_left = key.clone();
    none_left.inputs.clear();
    let Some(entry) = store.lookup(&none_left.hash())? else {
        return Ok(None);
    };
    // Outputs are sorted by path.
    let intact = key.inputs.iter().all(|(path, hash)| {
        entry
            .outputs
            .binary_search_by(|output| output.path.as_str().cmp(path))
            .is_ok_and(|i| entry.outputs[i].hash == *hash)
    });
    Ok(intact.then_some(entry))
}

/// The process environment: the caller's basics, declared env, secrets.
pub fn process_env(
    shared: &RunShared,
    rendered: &RenderedInstance,
    id: &str,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = shared.base_env.iter().cloned().collect();
    env.extend(shared.workflow.env.clone());
    env.extend(rendered.env.clone());
    env.extend(shared.secrets.iter().cloned());
    env.insert("CCFLOW_RUN_ID".into(), shared.run_id.clone());
    env.insert("CCFLOW_INSTANCE".into(), id.to_owned());
    env.into_iter().collect()
}

fn backoff_delay(base: Duration, attempt: u32) -> Duration {
    let factor = 2f64.powi(
        i32::try_from(attempt.saturating_sub(1))
            .unwrap_or(30)
            .min(30),
    );
    let jitter = 0.5 + fastrand::f64();
    let seconds = (base.as_secs_f64() * factor * jitter).min(300.0);
    Duration::from_secs_f64(seconds)
}

/// Runs one instance to completion (cache hit, success or failure).
pub async fn execute(shared: Arc<RunShared>, mut job: Job) -> JobResult {
    let started = Instant::now();
    let mut result = JobResult::new(job.node);
    let workflow = Arc::clone(&shared.workflow);
    let task = &workflow.tasks[job.task];
    let rendered = Arc::clone(&job.rendered);
    if !rendered.enabled {
        result.status = InstanceStatus::Skipped;
        result.message = Some("`if` is false".into());
        return result;
    }
    if task.is_agent() {
        if !acquire_slot(&shared, &mut job).await {
            result.status = InstanceStatus::NotStarted;
            return result;
        }
        result.status = InstanceStatus::Failed;
        result.started_unix_ms = now_ms();
        // Boxed: the agent's state machine is most of this future's size,
        // and every shell instance would carry (and copy) it.
        return Box::pin(super::agent_task::execute_agent(
            shared,
            job,
            result,
            Instant::now(),
        ))
        .await;
    }
    // Inputs → key. Usually a few stats through the warm index: cheaper in
    // place than a hand-off to the blocking pool and back. The run loop
    // shares this thread, so an input too large to hash in passing sends
    // the whole key to the blocking pool.
    let keyed = match instance_key_within(
        &shared.key_context(),
        task,
        &rendered,
        &job.deps,
        INLINE_HASH_LIMIT,
    ) {
        Ok(Some(keyed)) => Ok(keyed),
        Err(message) => Err(message),
        Ok(None) => {
            let shared = Arc::clone(&shared);
            let rendered = Arc::clone(&rendered);
            let deps = job.deps.clone();
            let task_index = job.task;
            tokio::task::spawn_blocking(move || {
                let task = &shared.workflow.tasks[task_index];
                instance_key(&shared.key_context(), task, &rendered, &deps)
            })
            .await
            .unwrap_or_else(|e| Err(format!("cannot hash the inputs: {e}")))
        }
    };
    let (key, inputs) = match keyed {
        Ok(k) => k,
        Err(message) => {
            result.message = Some(message);
            return result;
        }
    };
    let key_hash = key.hash();
    tracing::trace!("`{}`: key at {:?}", job.id, started.elapsed());
    result.key = Some(key_hash.to_string());
    result.inputs = inputs.keys().cloned().collect();
    let use_cache = task.cache && shared.store.is_some();
    let may_hit = use_cache && !shared.no_cache && !shared.rerun.iter().any(|t| t == &task.name);

    // Identical instances in one run execute once: wait for the first.
    let mut owner_notify = None;
    if use_cache {
        loop {
            let waiter = {
                let mut inflight = shared
                    .inflight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match inflight.get(&key_hash) {
                    Some(notify) => Some(Arc::clone(notify)),
                    None => {
                        let notify = Arc::new(tokio::sync::Notify::new());
                        inflight.insert(key_hash, Arc::clone(&notify));
                        owner_notify = Some(notify);
                        None
                    }
                }
            };
            match waiter {
                Some(notify) => {
                    let notified = notify.notified();
                    // Re-check: the owner may have finished between lookup and subscribe.
                    if shared
                        .inflight
                        .lock()
                        .map(|m| m.contains_key(&key_hash))
                        .unwrap_or(false)
                    {
                        notified.await;
                    }
                }
                None => break,
            }
        }
    }
    let release = |shared: &RunShared| {
        if let Some(notify) = &owner_notify {
            if let Ok(mut inflight) = shared.inflight.lock() {
                inflight.remove(&key_hash);
            }
            notify.notify_waiters();
        }
    };

    if may_hit {
        if let Some(store) = &shared.store {
            match lookup_instance(store, &key, &key_hash, &rendered) {
                Ok(Some(entry)) if entry.exit_code == 0 => {
                    // Outputs already in place cost a stat each, here;
                    // writing files goes to the blocking pool, so that
                    // restores run side by side and the loop goes on.
                    let restored = if store.is_restored(&entry, &shared.root, Some(&shared.index)) {
                        Ok(())
                    } else {
                        let shared = Arc::clone(&shared);
                        let entry = entry.clone();
                        // One writer per core: more threads creating files
                        // in one directory only contend for its inode
                        // allocation lock (measured: 22% of a restore's
                        // time spinning on it with 34 writers on 2 cores).
                        let _permit = RESTORE_WRITERS.acquire().await;
                        tokio::task::spawn_blocking(move || match &shared.store {
                            Some(store) => store
                                .restore_with_index(&entry, &shared.root, Some(&shared.index))
                                .map(|_| ())
                                .map_err(|e| e.to_string()),
                            None => Err("no cache".to_owned()),
                        })
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()))
                    };
                    match restored {
                        Ok(()) => {
                            result.status = InstanceStatus::Cached;
                            result.outputs = entry
                                .outputs
                                .iter()
                                .map(|o| (o.path.clone(), o.hash.clone()))
                                .collect();
                            result.exit_code = Some(0);
                            if let Some(usage) = entry.metadata.get("usage") {
                                result.usage =
                                    serde_json::from_value(usage.clone()).unwrap_or_default();
                            }
                            if let Some(log) = entry.log.as_ref().filter(|_| shared.replay_logs) {
                                if let Ok(bytes) = store.read_blob(log) {
                                    let path = shared.run_dir.join("logs").join(format!(
                                        "{}.log",
                                        crate::report::record::file_name_for(&job.id)
                                    ));
                                    if fs_err::write(&path, bytes).is_ok() {
                                        result.log_path = Some(path);
                                    }
                                }
                            }
                            result.duration = started.elapsed();
                            release(&shared);
                            return result;
                        }
                        Err(e) => {
                            tracing::warn!(
                                "cache entry for `{}` could not be restored ({e}); running it",
                                job.id
                            );
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cache lookup for `{}` failed ({e}); running it", job.id),
            }
        }
    }

    // Run, with retries, in a job slot.
    if !acquire_slot(&shared, &mut job).await {
        result.status = InstanceStatus::NotStarted;
        release(&shared);
        return result;
    }
    // Its time counts from here, not from the wait for a slot.
    let started = Instant::now();
    result.started_unix_ms = now_ms();
    let log_path = shared.run_dir.join("logs").join(format!(
        "{}.log",
        crate::report::record::file_name_for(&job.id)
    ));
    result.log_path = Some(log_path.clone());
    let cwd = rendered
        .workdir
        .as_ref()
        .map_or_else(|| shared.root.clone(), |w| shared.root.join(w));
    let command = match &task.kind {
        TaskKind::Shell {
            script: _,
            shell: Some(shell),
        } => CommandLine::Shell {
            interpreter: shell.clone(),
            script: rendered.command.clone().unwrap_or_default(),
        },
        _ => CommandLine::Auto {
            script: rendered.command.clone().unwrap_or_default(),
        },
    };
    let masks = shared.masks();
    let attempts = task.retry.attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let attempt_started = now_ms();
        let attempt_clock = Instant::now();
        tracing::trace!(
            "`{}`: attempt {attempt} starts at {:?}",
            job.id,
            started.elapsed()
        );
        let attempt_outcome = if task.runner == Runner::Docker {
            Box::pin(run_container(
                &shared, task, &rendered, &job, &log_path, &masks,
            ))
            .await
        } else {
            let spec = ProcessSpec {
                command: command.clone(),
                env: process_env(&shared, &rendered, &job.id),
                cwd: cwd.clone(),
                log_path: log_path.clone(),
                timeout: task.timeout,
                kill_grace: shared.kill_grace,
                masks: masks.clone(),
                log_limit: shared.log_limit,
                stdin: None,
                instance_token: format!("{}/{}/{attempt}", shared.run_id, job.node.index()),
            };
            // Boxed: cached instances need not carry the supervision's state.
            let report = Box::pin(super::local::run(
                spec,
                shared.cancel.clone(),
                Some(Arc::clone(&job.activity)),
            ))
            .await;
            let mut text = report.outcome.to_string();
            if report.log_truncated {
                text.push_str(" (log truncated)");
            }
            let status = match report.outcome {
                ProcessOutcome::Exited { code: 0 } => InstanceStatus::Succeeded,
                ProcessOutcome::TimedOut { .. } => InstanceStatus::TimedOut,
                ProcessOutcome::Cancelled => InstanceStatus::Cancelled,
                _ => InstanceStatus::Failed,
            };
            let exit_code = match report.outcome {
                ProcessOutcome::Exited { code } => Some(code),
                _ => None,
            };
            AttemptOutcome {
                status,
                exit_code,
                text,
            }
        };
        let exit_code = attempt_outcome.exit_code;
        let outcome_text = attempt_outcome.text.clone();
        result.attempts.push(AttemptRecord {
            attempt,
            started_unix_ms: attempt_started,
            duration_ms: u64::try_from(attempt_clock.elapsed().as_millis()).unwrap_or(u64::MAX),
            exit_code,
            outcome: outcome_text.clone(),
        });
        result.exit_code = exit_code;
        if attempt_outcome.status == InstanceStatus::Succeeded {
            result.status = InstanceStatus::Succeeded;
            result.message = None;
            break;
        }
        result.status = attempt_outcome.status;
        result.message = Some(outcome_text.clone());
        let retryable = match attempt_outcome.status {
            InstanceStatus::TimedOut => task.retry.on_timeout,
            InstanceStatus::Cancelled => false,
            _ => task.retry.on_failure,
        };
        if attempt >= attempts || !retryable || shared.cancel.is_cancelled() {
            break;
        }
        let delay = backoff_delay(task.retry.backoff, attempt);
        let _ = shared.notices.send(Notice::Retrying {
            id: job.id.clone(),
            attempt: attempt + 1,
            delay,
            reason: outcome_text,
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.cancel.cancelled() => break,
        }
    }
    // A failure keeps its slot until the loop has seen it: fail-fast must
    // stop before anything else takes the slot.
    if result.status == InstanceStatus::Succeeded {
        let _ = shared.notices.send(Notice::SlotFree { node: job.node });
    }
    if attempts > 1 && result.attempts.len() > 1 {
        if let Some(message) = &mut result.message {
            message.push_str(&format!(" (after {} attempts)", result.attempts.len()));
        }
    }
    tracing::trace!("`{}`: process over at {:?}", job.id, started.elapsed());
    if result.status == InstanceStatus::Succeeded {
        // Outputs, and the cache entry.
        let shared2 = Arc::clone(&shared);
        let rendered2 = Arc::clone(&rendered);
        let id = job.id.clone();
        let log = log_path.clone();
        let inputs2 = inputs;
        let saved = tokio::task::spawn_blocking(move || {
            save(
                &shared2,
                &id,
                &rendered2,
                (key, key_hash),
                &inputs2,
                &log,
                use_cache,
            )
        })
        .await;
        match saved {
            Ok(Ok(outputs)) => result.outputs = outputs,
            Ok(Err(message)) => {
                result.status = InstanceStatus::Failed;
                result.message = Some(message);
            }
            Err(e) => {
                result.status = InstanceStatus::Failed;
                result.message = Some(format!("cannot record outputs: {e}"));
            }
        }
    }
    release(&shared);
    result.duration = started.elapsed();
    tracing::trace!("`{}`: outputs saved at {:?}", job.id, result.duration);
    result
}

/// How one attempt ended.
struct AttemptOutcome {
    status: InstanceStatus,
    exit_code: Option<i32>,
    text: String,
}

/// Runs one attempt of a `runner: docker` instance: the repository is the
/// container's `/workspace`.
async fn run_container(
    shared: &RunShared,
    task: &Task,
    rendered: &RenderedInstance,
    job: &Job,
    log_path: &Path,
    masks: &[String],
) -> AttemptOutcome {
    let failed = |text: String| AttemptOutcome {
        status: InstanceStatus::Failed,
        exit_code: None,
        text,
    };
    let Some(docker) = &shared.docker else {
        return failed("the Docker engine is not connected".into());
    };
    let image = task.image.clone().unwrap_or_default();
    let image = shared.image_ids.get(&image).cloned().unwrap_or(image);
    let script = rendered.command.clone().unwrap_or_default();
    let mut command = match &task.kind {
        TaskKind::Shell {
            shell: Some(shell), ..
        } => shell.clone(),
        _ => vec!["sh".to_owned(), "-c".to_owned()],
    };
    command.push(script);
    let mut spec = super::docker::ContainerSpec::new(
        image,
        command,
        shared.root.clone(),
        shared.run_id.clone(),
        log_path.to_path_buf(),
    );
    // Only what the task declares: the caller's PATH/HOME mean nothing in the image.
    let mut env: BTreeMap<String, String> = shared.workflow.env.clone();
    env.extend(rendered.env.clone());
    env.extend(shared.secrets.iter().cloned());
    env.insert("CCFLOW_RUN_ID".into(), shared.run_id.clone());
    env.insert("CCFLOW_INSTANCE".into(), job.id.clone());
    spec.env = env.into_iter().collect();
    if let Some(workdir) = &rendered.workdir {
        spec.workdir = format!(
            "{}/{}",
            super::docker::WORKSPACE_TARGET,
            workdir.trim_start_matches("./")
        );
    }
    spec.network.clone_from(&task.network);
    spec.cpus = task.cpus;
    spec.memory = task
        .memory
        .as_deref()
        .and_then(crate::workflow::resolve::parse_memory);
    spec.labels
        .insert(super::docker::INSTANCE_LABEL.to_owned(), job.id.clone());
    spec.masks = masks.to_vec();
    spec.timeout = task.timeout;
    spec.kill_grace = shared.kill_grace;
    let report = docker
        .run(spec, shared.cancel.clone(), Some(Arc::clone(&job.activity)))
        .await;
    use super::docker::ContainerOutcome;
    let text = match &report.outcome {
        ContainerOutcome::OomKilled => format!(
            "killed: out of memory (limit {})",
            task.memory.clone().unwrap_or_default()
        ),
        other => other.to_string(),
    };
    match report.outcome {
        ContainerOutcome::Exited { code } => AttemptOutcome {
            status: if code == 0 {
                InstanceStatus::Succeeded
            } else {
                InstanceStatus::Failed
            },
            exit_code: i32::try_from(code).ok(),
            text,
        },
        ContainerOutcome::TimedOut { .. } => AttemptOutcome {
            status: InstanceStatus::TimedOut,
            exit_code: None,
            text,
        },
        ContainerOutcome::Cancelled => AttemptOutcome {
            status: InstanceStatus::Cancelled,
            exit_code: None,
            text,
        },
        _ => failed(text),
    }
}

/// Expands and hashes the outputs, and saves the cache entry (pre- and,
/// for in-place tasks, post-state keys).
fn save(
    shared: &RunShared,
    id: &str,
    rendered: &RenderedInstance,
    (key, key_hash): (CacheKey, KeyHash),
    inputs: &BTreeMap<String, String>,
    log: &Path,
    use_cache: bool,
) -> Result<Vec<(String, String)>, String> {
    // As in Bazel and Snakemake, a declared file the task did not create is
    // an error: caching the success would leave downstream tasks (and every
    // later cache hit) without it.
    let missing = paths::missing_literals(&shared.root, &rendered.outputs);
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "the task succeeded but did not create its declared output {list}"
        ));
    }
    let outputs = paths::expand(&shared.root, &rendered.outputs, false)?;
    for output in &outputs {
        // One lstat per path component; only a symlink is resolved.
        let outside =
            !crate::cache::store::inside_root(&shared.root, &shared.root_canonical, output)
                .unwrap_or(true);
        if outside {
            let target = std::fs::canonicalize(shared.root.join(output))
                .map_or_else(|_| "?".to_owned(), |t| t.display().to_string());
            return Err(format!(
                "output `{output}` is a symlink pointing outside the repository (`{target}`)"
            ));
        }
    }
    let hashes = hash_files(shared, &outputs)?;
    let pairs: Vec<(String, String)> = hashes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if !use_cache {
        return Ok(pairs);
    }
    let Some(store) = &shared.store else {
        return Ok(pairs);
    };
    // In-place: outputs that are also inputs changed under the task.
    // Without `inputs`, the outputs are the inputs (see [`input_patterns`]):
    // the next run's inputs are the outputs as its expansion will see them
    // (files this run created included), all among those just hashed.
    let outputs_are_inputs = rendered.inputs.is_empty();
    let in_place: BTreeMap<String, String> = if outputs_are_inputs {
        paths::expand_seen(&shared.root, &rendered.outputs, true)?
            .into_iter()
            .filter_map(|(path, _)| {
                let hash = hashes.get(&path)?.clone();
                Some((path, hash))
            })
            .collect()
    } else {
        hashes
            .iter()
            .filter(|(path, _)| inputs.contains_key(*path))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut keys = vec![key_hash];
    let mut post_state = BTreeMap::new();
    if !in_place.is_empty() {
        let mut post = key.clone();
        if outputs_are_inputs {
            post.inputs.clone_from(&in_place);
        } else {
            for (path, hash) in &in_place {
                post.inputs.insert(path.clone(), hash.clone());
            }
        }
        let post_hash = post.hash();
        if post_hash != keys[0] {
            keys.push(post_hash);
        }
        post_state = in_place;
    }
    let entry = NewEntry {
        instance_id: id.to_owned(),
        key,
        outputs,
        exit_code: 0,
        log: Some(log.to_path_buf()).filter(|p| p.exists()),
        attachments: BTreeMap::new(),
        post_state,
        metadata: serde_json::Value::Null,
    };
    match store.save_hashed(&keys, key_hash, entry, &shared.root) {
        Ok(_) => Ok(pairs),
        Err(crate::cache::CacheError::OutputOutsideRoot { path }) => {
            Err(format!("output `{path}` points outside the repository"))
        }
        Err(e) => {
            // A cache failure never fails the task; it only costs a rerun.
            tracing::warn!("cannot save the cache entry of `{id}`: {e}");
            Ok(pairs)
        }
    }
}
