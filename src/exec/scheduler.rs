//! The scheduler: runs a sealed [`Plan`] on tokio.
//!
//! One loop owns all run state and every user-visible event. Ready
//! instances wait in a queue ordered by `priority`, then by the longest
//! remaining path to a sink (critical path first), then by plan order. The
//! loop starts instances while the global limit and their pool's limit allow,
//! and reacts to completions, retries, ticks and signals. Fail-fast (the
//! default) starts nothing new after a failure; `--keep-going` runs all that
//! does not depend on one. SIGINT/SIGTERM cancel every running instance
//! (their process groups get SIGTERM, then SIGKILL after the grace period),
//! the record is written, and the run reports `interrupted` (exit 130).
//!
//! Cache probes do not hold job slots: up to [`PROBE_AHEAD`] shell
//! instances beyond `-j` are in flight, hashing their inputs and looking up
//! the cache; only a miss asks the loop for a slot ([`Notice::WantSlot`]) to
//! run its process. The loop grants slots in ready-queue order, and never to
//! an instance while a higher-ranked one is still probing, so the start
//! order is the queue order as if every instance had held a slot. An
//! instance is reported started when it gets its slot (a hit, just before it
//! is reported finished). A slot is free again as soon as its process has
//! succeeded ([`Notice::SlotFree`]), so that recording outputs overlaps the
//! next process instead of idling a core, unless finishing the instance
//! makes a successor ready (which may outrank every waiting instance); a
//! failed process keeps its slot until the loop has seen the failure, so
//! fail-fast starts nothing in its place. `ccflow run` drives all of this
//! on one thread (tokio's current-thread runtime); blocking work goes to
//! the blocking pool.
//! Agents are dispatched within `-j` as before, since
//! dispatch reserves their budget. Without this, a no-op run at `-j 2`
//! passed every cached instance through the loop two at a time and spent
//! most of its wall time in thread wake-ups.
//!
//! Deadlock hazard: the loop never waits on a job; a job waits on the loop
//! only for its slot, which the loop grants or drops (when it stops starting
//! work) from its own state, so the loop can always drain completions.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use petgraph::stable_graph::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{BTreeSet, HashSet};

use tokio::sync::{mpsc, oneshot};

use super::instance::{execute, Job, JobResult, Notice, RunShared};
use crate::graph::instance::{base_context, render, NeedContext};
use crate::graph::{NodeKind, Plan};
use crate::report::record::{
    now_ms, Counts, InstanceRecord, InstanceStatus, RunRecord, RunStatus, Usage, RECORD_VERSION,
};
use crate::report::{Reporters, RunEvent};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub jobs: Option<usize>,
    pub keep_going: bool,
    /// The most instances the process can run at once (open-file limit);
    /// a larger `-j` or `concurrency` is lowered to it, with a message.
    pub max_jobs: Option<usize>,
}

/// How the run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub record: Arc<RunRecord>,
    /// Every instance that succeeded or was cached, for the up-to-date memo.
    pub settled: Vec<crate::memo::Settled>,
    /// Whether each of `settled` was settled from the memo.
    pub from_memo: Vec<bool>,
    /// Per instance of `record`, its JSON for the memo when it was
    /// prepared during the run (see [`crate::memo::instance_json`]).
    pub memo_json: Vec<Option<Vec<u8>>>,
    /// The threads writing the final `run.json`, the cache's last entries
    /// and the file-hash index, which the caller joins before the process
    /// ends (see [`RunOutcome::wait_for_disk`]).
    pub writers: Vec<std::thread::JoinHandle<()>>,
    /// The plan and every instance's result, handed over rather than freed
    /// when the run ends: `ccflow run` exits right after, and freeing 1,000
    /// instances piece by piece took ~2 ms of a 40 ms run.
    pub spent: Box<dyn std::any::Any>,
}

impl RunOutcome {
    /// Waits until the final record, the cache and the index are on disk.
    pub fn wait_for_disk(&mut self) {
        for writer in self.writers.drain(..) {
            let _ = writer.join();
        }
    }
}

/// Maps and sets of graph nodes: foldhash rather than SipHash, as a run
/// touches each of them a few times per instance.
type NodeMap<V> = HashMap<NodeIndex, V, foldhash::fast::FixedState>;
type NodeSet = HashSet<NodeIndex, foldhash::fast::FixedState>;

/// Shell instances probing the cache beyond the job limit.
pub const PROBE_AHEAD: usize = 32;

/// Instances settled from the memo between two turns of the run loop.
const SETTLE_BATCH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ready {
    priority: i32,
    depth: u32,
    order: usize,
    node: NodeIndex,
}

impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then(self.depth.cmp(&other.depth))
            .then(other.order.cmp(&self.order))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct State {
    /// When the scheduler started (debug timings).
    started: Instant,
    plan: Plan,
    shared: Arc<RunShared>,
    options: RunOptions,
    indegree: NodeMap<usize>,
    results: NodeMap<JobResult>,
    /// The outputs' digest of each finished instance that has dependents
    /// (see [`JobResult::outputs_digest`]), taken as it finishes or handed
    /// on by the memo with a settled instance: a reduce over 1,000
    /// instances no longer digests them all as it starts (~1 ms on the
    /// critical path of a rerun after a one-file edit).
    digests: NodeMap<String>,
    status: NodeMap<InstanceStatus>,
    ready: BinaryHeap<Ready>,
    order: NodeMap<usize>,
    running: NodeMap<String>,
    /// Dispatched instances not yet reported started, with their activity line.
    unannounced: NodeMap<Arc<Mutex<String>>>,
    /// Rank of each dispatched instance that has not asked for a slot nor
    /// finished yet.
    probing: BTreeSet<Ready>,
    /// Rank of every dispatched instance.
    ranks: NodeMap<Ready>,
    /// Misses waiting for a slot.
    slot_queue: BinaryHeap<Ready>,
    /// Where to send each dispatched instance its slot.
    slot_senders: NodeMap<oneshot::Sender<()>>,
    /// Instances holding a slot (at most `global_limit`).
    holding_slot: NodeSet,
    pool_running: HashMap<String, usize>,
    global_limit: usize,
    stop: bool,
    interrupted: bool,
    failed: bool,
    reporters: Reporters,
    started_unix_ms: u64,
    messages: Vec<String>,
    budget: BudgetState,
    /// Per task: whether its templates read run-time state (re-rendered at start).
    runtime_context: Vec<bool>,
    /// Recent rate-limit notices, and the agent pool's temporary limit.
    rate_limits: Vec<Instant>,
    throttle: Option<Throttle>,
    /// Instances the up-to-date memo settles (by id), when their upstream
    /// instances are settled too (see `crate::memo`): each is moved, not
    /// copied, into its result as it is settled.
    memo_settled: HashMap<String, crate::memo::Settled>,
    /// Instances the up-to-date memo settled (see [`State::settle`]).
    settled_nodes: NodeSet,
    /// Ready instances the memo can settle, settled in batches after what
    /// must run has started (see [`State::start_ready`]).
    settle_queue: std::collections::VecDeque<Ready>,
    /// Writes the first record in the background.
    record_writer: Option<std::thread::JoinHandle<()>>,
    /// Records of finished instances, with their JSON for the up-to-date
    /// memo, built while the run waits on its processes (see
    /// [`State::prepare_records`]) rather than after the last one.
    /// A finished instance's record is kept from [`State::finish`], which
    /// built it for the reporters; its JSON is added later.
    prepared: NodeMap<(InstanceRecord, Option<Vec<u8>>)>,
    /// Instances in the order they finished, and how many of them have
    /// been looked at for [`State::prepare_records`].
    finished: Vec<NodeIndex>,
    prepared_upto: usize,
    /// Whether the record as the run starts was written.
    first_record_written: bool,
}

/// How often the run loop refreshes the display; the first tick writes the
/// record as the run starts.
const TICK: Duration = Duration::from_millis(100);

/// How long the run loop waits with nothing to do but wait for running
/// processes before it prepares records of finished instances...
const PREPARE_AFTER: Duration = Duration::from_millis(1);
/// ...and how many at a time (~0.3 ms): an instance that finishes
/// meanwhile is seen after one batch at most.
const PREPARE_BATCH: usize = 256;

/// A temporary cap on concurrent agents after rate limits.
struct Throttle {
    limit: usize,
    until: Instant,
}

/// Rate limits within this window...
const RATE_LIMIT_WINDOW: Duration = Duration::from_secs(30);
/// ...this many times shrink the agent pool...
const RATE_LIMITS_TO_SHRINK: usize = 2;
/// ...for this long.
const THROTTLE_FOR: Duration = Duration::from_secs(60);

/// Agent spending against `budget:` (run-wide and per task).
#[derive(Default)]
struct BudgetState {
    spent: Usage,
    /// Expected (cost, tokens) of each running agent instance.
    reserved: NodeMap<(f64, u64)>,
    /// Per task: finished sessions, their cost and tokens.
    per_task: HashMap<usize, (u32, f64, u64, Usage)>,
    exhausted: bool,
}

/// Runs the plan to completion.
/// `settled`: what the up-to-date memo settles, by instance id (see
/// [`State::settle`]).
pub async fn run(
    plan: Plan,
    shared: Arc<RunShared>,
    settled: HashMap<String, crate::memo::Settled>,
    options: RunOptions,
    reporters: Reporters,
    mut notices: mpsc::UnboundedReceiver<Notice>,
) -> RunOutcome {
    let clock = Instant::now();
    let global_limit = options
        .jobs
        .or(plan.workflow.limits.global)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
        .max(1);
    let requested_limit = global_limit;
    let global_limit = options
        .max_jobs
        .map_or(global_limit, |cap| global_limit.min(cap.max(1)));
    // Room for every node's result and status at once: a rerun over
    // 1,000 instances moved the results (large) over and over as the maps
    // grew (~0.5 ms).
    let nodes = plan.graph.node_count();
    let mut state = State {
        started: clock,
        order: plan
            .ordered_nodes()
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, i))
            .collect(),
        plan,
        shared,
        options,
        indegree: NodeMap::with_capacity_and_hasher(nodes, Default::default()),
        results: NodeMap::with_capacity_and_hasher(nodes, Default::default()),
        digests: NodeMap::with_capacity_and_hasher(nodes, Default::default()),
        status: NodeMap::with_capacity_and_hasher(nodes, Default::default()),
        ready: BinaryHeap::new(),
        running: NodeMap::default(),
        unannounced: NodeMap::default(),
        probing: BTreeSet::new(),
        ranks: NodeMap::default(),
        slot_queue: BinaryHeap::new(),
        slot_senders: NodeMap::default(),
        holding_slot: NodeSet::default(),
        pool_running: HashMap::new(),
        global_limit,
        stop: false,
        interrupted: false,
        failed: false,
        reporters,
        started_unix_ms: now_ms(),
        messages: Vec::new(),
        budget: BudgetState::default(),
        runtime_context: Vec::new(),
        rate_limits: Vec::new(),
        throttle: None,
        memo_settled: settled,
        settled_nodes: NodeSet::default(),
        settle_queue: std::collections::VecDeque::new(),
        record_writer: None,
        prepared: NodeMap::with_capacity_and_hasher(nodes, Default::default()),
        finished: Vec::with_capacity(nodes),
        prepared_upto: 0,
        first_record_written: false,
    };
    state.runtime_context = state
        .plan
        .workflow
        .tasks
        .iter()
        .map(crate::graph::plan::uses_runtime_context)
        .collect();
    let total = state.instance_count();
    state.reporters.event(&RunEvent::RunStarted {
        run_id: state.shared.run_id.clone(),
        workflow: state.plan.workflow.name.clone(),
        total,
    });
    if global_limit < requested_limit {
        state.reporters.event(&RunEvent::Message {
            text: format!("ccflow: running at most {global_limit} instances at once instead of {requested_limit}: the open-file limit is too low (raise it with `ulimit -n`)"),
        });
    }
    let nodes: Vec<NodeIndex> = state.plan.graph.node_indices().collect();
    for node in &nodes {
        let degree = state
            .plan
            .graph
            .edges_directed(*node, Direction::Incoming)
            .count();
        state.indegree.insert(*node, degree);
    }
    let mut initially_ready: Vec<NodeIndex> = nodes
        .into_iter()
        .filter(|n| state.indegree[n] == 0)
        .collect();
    initially_ready.sort_by_key(|n| state.order.get(n).copied().unwrap_or(usize::MAX));
    for node in initially_ready {
        state.make_ready(node);
    }

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<JobResult>();
    // The first tick a tick from now, not at once: it writes the record as
    // the run starts (see `State::write_first_record`).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        state.start_ready(&done_tx);
        let queued = !state.ready.is_empty() || !state.settle_queue.is_empty();
        if state.running.is_empty() && (!queued || state.stop) {
            break;
        }
        // Biased, in this order: a result or a request for a slot is
        // never kept waiting behind work the loop does while it would idle
        // (a rerun after a one-file edit lost ~2 ms of its reduce to a
        // batch of records prepared while the reduce asked for its slot).
        tokio::select! {
            biased;
            Some(()) = recv_signal(&mut sigint) => state.interrupt(),
            Some(()) = recv_signal(&mut sigterm) => state.interrupt(),
            Some(result) = done_rx.recv() => state.finish(result),
            Some(notice) = notices.recv() => state.notice(notice),
            // More to settle: after the runtime has run the jobs just started.
            () = tokio::task::yield_now(), if !state.settle_queue.is_empty() && !state.stop => {}
            _ = tick.tick() => {
                state.restore_agent_pool();
                state.reporters.tick();
                if !state.first_record_written && state.settle_queue.is_empty() {
                    state.write_first_record();
                }
            }
            () = tokio::time::sleep(PREPARE_AFTER), if state.may_prepare() => state.prepare_records(),
        }
    }
    // Drain notices that raced with completion.
    while let Ok(notice) = notices.try_recv() {
        state.notice(notice);
    }
    crate::timing!("scheduler: last instance done");
    // The cache's last entries and the file-hash index reach the disk on a
    // thread, beside the record and the up-to-date memo (each ~1 ms of a
    // 30 ms rerun after a one-file edit); the caller joins it.
    let persist = persist_in_background(&state.shared);
    if state.stop || state.interrupted {
        state.report_unstarted();
    }
    // Agents' worktrees and the snapshot ref go with the run, after the
    // removals the pool started (which this cleanup must not race).
    state.shared.worktree_pool.finish_removals().await;
    if let Some(Ok(snapshot)) = state.shared.snapshot.get() {
        let own = state.shared.run_id.clone();
        let state_dir = state.shared.state_dir.clone();
        // Only this run's worktrees, and those of runs whose ccflow is gone.
        let _ = crate::workspace::cleanup_stale_with(
            &state.shared.root,
            &state.shared.state_dir.join("worktrees"),
            &|run| run != own && !crate::exec::stale::run_is_dead(&state_dir, run),
        );
        if let Err(e) = crate::workspace::release_snapshot(snapshot) {
            tracing::warn!("cannot release the snapshot: {e}");
        }
    }
    let status = if state.interrupted {
        RunStatus::Interrupted
    } else if state.budget.exhausted {
        let not_started: Vec<String> = state
            .plan
            .ordered_nodes()
            .into_iter()
            .filter(|n| {
                state.plan.graph[*n].kind == NodeKind::Instance
                    && matches!(
                        state.status.get(n),
                        None | Some(InstanceStatus::NotStarted | InstanceStatus::Blocked)
                    )
            })
            .map(|n| state.plan.graph[n].id.0.clone())
            .collect();
        let done = state.status.values().filter(|s| s.is_success()).count();
        let text = format!(
            "ccflow: budget exhausted after ${:.4} and {} tokens: {done} instances done, {} not started: {}",
            state.budget.spent.cost_usd,
            state.budget.spent.total_tokens(),
            not_started.len(),
            not_started.join(", ")
        );
        state.messages.push(text.clone());
        state.reporters.event(&RunEvent::Message { text });
        RunStatus::BudgetExhausted
    } else if state.failed {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    let (record, memo_json) = state.write_record(status);
    crate::timing!("scheduler: record built");
    state.reporters.event(&RunEvent::RunFinished {
        status,
        counts: record.counts,
        usage: record.usage,
        duration: clock.elapsed(),
        run_dir: state.shared.run_dir.clone(),
    });
    let (settled, from_memo) = state.settled_results();
    crate::timing!("scheduler: results for the memo");
    let State {
        plan,
        results,
        status: statuses,
        order,
        indegree,
        record_writer,
        ..
    } = state;
    RunOutcome {
        status,
        record,
        settled,
        from_memo,
        memo_json,
        writers: [record_writer, persist].into_iter().flatten().collect(),
        spent: Box::new((plan, results, statuses, order, indegree)),
    }
}

/// Flushes the cache and saves the file-hash index on a thread of its own,
/// whose handle the caller joins; in place when no thread can be started.
fn persist_in_background(shared: &Arc<RunShared>) -> Option<std::thread::JoinHandle<()>> {
    fn persist(shared: &RunShared) {
        // The index first: the cache's flusher is already syncing the last
        // entries' blobs (~1.5 ms here), and saving the index meanwhile
        // no longer comes after it.
        if let Err(e) = shared.index.save() {
            tracing::warn!("cannot save the file-hash index: {e}");
        }
        crate::timing!("persist: index saved");
        if let Some(store) = &shared.store {
            if let Err(e) = store.flush() {
                tracing::warn!("cannot flush the cache: {e}");
            }
        }
        crate::timing!("persist: cache flushed");
    }
    let spawned = {
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name("ccflow-persist".to_owned())
            .spawn(move || persist(&shared))
    };
    match spawned {
        Ok(handle) => Some(handle),
        Err(_) => {
            persist(shared);
            None
        }
    }
}

/// Writes `record` into `run_dir` on a thread of its own, whose handle the
/// caller joins; in place when no thread can be started.
fn write_in_background(
    record: Arc<RunRecord>,
    run_dir: &std::path::Path,
) -> Option<std::thread::JoinHandle<()>> {
    fn write(record: &RunRecord, run_dir: &std::path::Path) {
        crate::timing!(format!("record ({:?}): writing", record.status));
        if let Err(e) = record.write(run_dir) {
            tracing::warn!("cannot write the run record: {e}");
        }
        crate::timing!(format!("record ({:?}): written", record.status));
    }
    let spawned = {
        let (record, run_dir) = (Arc::clone(&record), run_dir.to_owned());
        std::thread::Builder::new()
            .name("ccflow-record".to_owned())
            .spawn(move || write(&record, &run_dir))
    };
    match spawned {
        Ok(handle) => Some(handle),
        Err(_) => {
            write(&record, run_dir);
            None
        }
    }
}

async fn recv_signal(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

impl State {
    fn instance_count(&self) -> usize {
        self.plan
            .graph
            .node_indices()
            .filter(|n| self.plan.graph[*n].kind == NodeKind::Instance)
            .count()
    }

    fn interrupt(&mut self) {
        if !self.interrupted {
            self.reporters.event(&RunEvent::Message {
                text: "ccflow: interrupted; stopping running tasks".into(),
            });
        }
        self.interrupted = true;
        self.stop = true;
        self.shared.cancel.cancel();
    }

    fn make_ready(&mut self, node: NodeIndex) {
        let instance = &self.plan.graph[node];
        match instance.kind {
            NodeKind::Pending => {
                self.expand(node);
            }
            NodeKind::Expanded => {
                // A `from:` follower expanded with its upstream: nothing to run.
                self.status.insert(node, InstanceStatus::Succeeded);
                self.release_successors(node, true);
            }
            NodeKind::Instance => {
                let task = &self.plan.workflow.tasks[instance.task];
                let order = self.order.get(&node).copied().unwrap_or(usize::MAX);
                let ready = Ready {
                    priority: task.priority,
                    depth: instance.depth,
                    order,
                    node,
                };
                self.reporters.event(&RunEvent::TaskQueued {
                    id: instance.id.0.clone(),
                });
                if self.settleable(node) {
                    self.settle_queue.push_back(ready);
                } else {
                    self.ready.push(ready);
                }
            }
        }
    }

    /// The needs context of a node, from its finished predecessors.
    fn needs_context(&self, node: NodeIndex) -> BTreeMap<String, NeedContext> {
        let mut needs: BTreeMap<String, NeedContext> = BTreeMap::new();
        let task = &self.plan.workflow.tasks[self.plan.graph[node].task];
        for need in &task.needs {
            needs.insert(
                need.clone(),
                NeedContext {
                    status: "succeeded".into(),
                    ..NeedContext::default()
                },
            );
        }
        // petgraph lists incoming edges newest first; a reduce must see its
        // upstream instances in plan (item) order, or `cat {{ needs.a.outputs }}`
        // concatenates backwards.
        let mut sources: Vec<NodeIndex> = self
            .plan
            .graph
            .edges_directed(node, Direction::Incoming)
            .map(|e| e.source())
            .collect();
        sources.sort_by_key(|s| self.order.get(s).copied().unwrap_or(usize::MAX));
        for source in sources {
            let upstream = &self.plan.graph[source];
            let name = &self.plan.workflow.tasks[upstream.task].name;
            let entry = needs.entry(name.clone()).or_default();
            if let Some(result) = self.results.get(&source) {
                entry
                    .outputs
                    .extend(result.outputs.iter().map(|(p, _)| p.clone()));
            }
            if let Some(item) = &upstream.item {
                entry.items.push(item.to_json());
            }
            match self.status.get(&source) {
                Some(s) if s.is_failure() => entry.status = "failed".into(),
                Some(InstanceStatus::Skipped) if entry.status != "failed" => {
                    entry.status = "skipped".into()
                }
                _ => {}
            }
        }
        needs
    }

    fn expand(&mut self, node: NodeIndex) {
        let needs = self.needs_context(node);
        match self.plan.expand(node, &needs) {
            Ok(new_nodes) => {
                for n in &new_nodes {
                    let degree = self
                        .plan
                        .graph
                        .edges_directed(*n, Direction::Incoming)
                        .filter(|e| !self.status.contains_key(&e.source()))
                        .count();
                    self.indegree.insert(*n, degree);
                    let next = self.order.len();
                    self.order.insert(*n, next);
                }
                for n in &new_nodes {
                    let targets: Vec<NodeIndex> = self
                        .plan
                        .graph
                        .neighbors_directed(*n, Direction::Outgoing)
                        .collect();
                    for t in targets {
                        if !new_nodes.contains(&t) {
                            *self.indegree.entry(t).or_insert(0) += 1;
                        }
                    }
                }
                let total = self.instance_count();
                self.reporters.event(&RunEvent::TotalChanged { total });
                self.status.insert(node, InstanceStatus::Succeeded);
                for n in new_nodes.clone() {
                    if self.indegree.get(&n).copied() == Some(0) {
                        self.make_ready(n);
                    }
                }
                self.release_successors(node, true);
            }
            Err(diagnostic) => {
                self.status.insert(node, InstanceStatus::Failed);
                let record = self.record(
                    node,
                    InstanceStatus::Failed,
                    None,
                    Some(&diagnostic.message),
                );
                self.reporters.event(&RunEvent::TaskFinished {
                    record,
                    log_path: None,
                });
                self.failed = true;
                if !self.options.keep_going {
                    self.stop = true;
                }
                self.release_successors(node, false);
            }
        }
    }

    fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Retrying {
                id,
                attempt,
                delay,
                reason,
            } => {
                self.reporters.event(&RunEvent::TaskRetrying {
                    id,
                    attempt,
                    delay,
                    reason,
                });
            }
            Notice::RateLimited { id } => self.rate_limited(&id),
            Notice::WantSlot { node } => {
                if let Some(rank) = self.ranks.get(&node).copied() {
                    self.probing.remove(&rank);
                    self.slot_queue.push(rank);
                }
            }
            Notice::SlotFree { node } => {
                // Early only when finishing cannot make a successor ready:
                // one might outrank whatever would take the slot now.
                let readies_successor = self
                    .plan
                    .graph
                    .neighbors_directed(node, Direction::Outgoing)
                    .any(|s| {
                        !self.status.contains_key(&s)
                            && self.indegree.get(&s).copied().unwrap_or(1) <= 1
                    });
                if !readies_successor {
                    self.holding_slot.remove(&node);
                }
            }
        }
    }

    /// Hands free slots to waiting misses, best rank first, but not past an
    /// instance that is still probing and might need one. After a stop, the
    /// waiting misses are told no (they finish as not started). Whether it
    /// gave any a slot.
    fn grant_slots(&mut self) -> bool {
        if self.stop {
            for rank in self.slot_queue.drain() {
                self.slot_senders.remove(&rank.node);
            }
            return false;
        }
        let mut granted = false;
        while self.holding_slot.len() < self.global_limit {
            let Some(best) = self.slot_queue.peek().copied() else {
                break;
            };
            if self.probing.last().is_some_and(|probing| *probing > best) {
                break;
            }
            self.slot_queue.pop();
            let Some(sender) = self.slot_senders.remove(&best.node) else {
                continue;
            };
            if sender.send(()).is_ok() {
                self.holding_slot.insert(best.node);
                self.announce(best.node);
                granted = true;
            }
        }
        granted
    }

    /// Reports a dispatched instance as started, once.
    fn announce(&mut self, node: NodeIndex) {
        if let Some(activity) = self.unannounced.remove(&node) {
            let id = self.plan.graph[node].id.0.clone();
            self.reporters.event(&RunEvent::TaskStarted {
                id,
                attempt: 1,
                activity,
            });
        }
    }

    fn pool_limit(&self, pool: &str) -> Option<usize> {
        let limit = self.plan.workflow.limits.pools.get(pool).copied();
        match (&self.throttle, pool) {
            (Some(throttle), "agent") => {
                Some(limit.map_or(throttle.limit, |l| l.min(throttle.limit)))
            }
            _ => limit,
        }
    }

    /// Repeated rate limits shrink the agent pool for a while (adaptive
    /// concurrency), so a fan-out stops hammering an API that pushes back.
    fn rate_limited(&mut self, id: &str) {
        let now = Instant::now();
        self.rate_limits
            .retain(|t| now.duration_since(*t) < RATE_LIMIT_WINDOW);
        self.rate_limits.push(now);
        if self.rate_limits.len() < RATE_LIMITS_TO_SHRINK {
            return;
        }
        self.rate_limits.clear();
        let running_agents = self.pool_running.get("agent").copied().unwrap_or(1).max(1);
        let current = self
            .pool_limit("agent")
            .unwrap_or(running_agents)
            .min(running_agents.max(1));
        let limit = (current / 2).max(1);
        self.throttle = Some(Throttle {
            limit,
            until: now + THROTTLE_FOR,
        });
        self.reporters.event(&RunEvent::Message {
            text: format!(
                "ccflow: rate limited (latest: {id}); agent pool shrinks to {limit} for {}s",
                THROTTLE_FOR.as_secs()
            ),
        });
    }

    fn restore_agent_pool(&mut self) {
        if self
            .throttle
            .as_ref()
            .is_some_and(|t| Instant::now() >= t.until)
        {
            self.throttle = None;
            self.reporters.event(&RunEvent::Message {
                text: "ccflow: no rate limits lately; agent pool back to its limit".into(),
            });
        }
    }

    fn start_ready(&mut self, done: &mpsc::UnboundedSender<JobResult>) {
        let started = self.start_queued(done);
        let granted = self.grant_slots();
        // Then a batch of what the memo settles, unless an instance was
        // just started or given its slot: it runs only once the loop
        // yields, which the loop does between batches (a rerun after a
        // one-file edit started its one instance after settling the 999
        // others, ~5 ms; then, after one batch, ~0.5 ms each time the
        // instance was started and given its slot). What the batch makes
        // ready starts at once.
        if !started && !granted && self.settle_batch() {
            self.start_queued(done);
        }
    }

    /// Settles up to [`SETTLE_BATCH`] instances of the settle queue; whether
    /// that made others ready.
    fn settle_batch(&mut self) -> bool {
        if self.stop {
            return false;
        }
        let before = self.ready.len();
        for _ in 0..SETTLE_BATCH {
            let Some(ready) = self.settle_queue.pop_front() else {
                break;
            };
            match self.settle(ready.node) {
                Some(result) => {
                    let task_index = self.plan.graph[ready.node].task;
                    let pool = self.plan.workflow.tasks[task_index].pool.clone();
                    // Started and finished at once: `finish` releases the pool.
                    *self.pool_running.entry(pool).or_insert(0) += 1;
                    self.finish(result);
                }
                None => self.ready.push(ready),
            }
        }
        self.ready.len() != before
    }

    /// Starts ready instances up to the limits; whether it started any.
    fn start_queued(&mut self, done: &mpsc::UnboundedSender<JobResult>) -> bool {
        if self.stop {
            return false;
        }
        let mut started = false;
        let mut deferred = Vec::new();
        while self.running.len() < self.global_limit + PROBE_AHEAD {
            let Some(ready) = self.ready.pop() else { break };
            let node = ready.node;
            let task_index = self.plan.graph[node].task;
            let pool = self.plan.workflow.tasks[task_index].pool.clone();
            // What the memo settles never comes here (see `make_ready`).
            if self.plan.workflow.tasks[task_index].is_agent()
                && self.running.len() >= self.global_limit
            {
                deferred.push(ready);
                continue;
            }
            if let Some(limit) = self.pool_limit(&pool) {
                if self.pool_running.get(&pool).copied().unwrap_or(0) >= limit {
                    deferred.push(ready);
                    continue;
                }
            }
            if self.plan.workflow.tasks[task_index].is_agent() {
                match self.reserve(node, task_index) {
                    Ok(()) => {}
                    Err(reason) => {
                        self.not_started(node, reason);
                        continue;
                    }
                }
            }
            self.start(ready, done);
            started = true;
            *self.pool_running.entry(pool).or_insert(0) += 1;
        }
        self.ready.extend(deferred);
        started
    }

    fn start(&mut self, ready: Ready, done: &mpsc::UnboundedSender<JobResult>) {
        let node = ready.node;
        // Only the parts a job needs: cloning the whole node copies its item.
        let instance = {
            let node_ref = &self.plan.graph[node];
            StartInfo {
                id: node_ref.id.clone(),
                task: node_ref.task,
                label: node_ref.label.clone(),
                rendered: node_ref.rendered.clone(),
                item: node_ref
                    .item
                    .clone()
                    .filter(|_| self.runtime_context[node_ref.task] || node_ref.rendered.is_none()),
            }
        };
        let workflow = Arc::clone(&self.plan.workflow);
        let task = &workflow.tasks[instance.task];
        if task.is_agent() {
            crate::memo::stop_vouching();
        }
        // Re-render with the real state of the dependencies when the task's
        // templates look at them; render now what the plan deferred (see
        // `Plan::build_deferring`).
        let mut rendered = instance.rendered.clone().unwrap_or_default();
        if self.runtime_context[instance.task] || instance.rendered.is_none() {
            // A deferred rendering reads no `needs` (see
            // `Plan::build_deferring`): gathering every upstream output and
            // item for a reduce would be wasted.
            let needs = if self.runtime_context[instance.task] {
                self.needs_context(node)
            } else {
                BTreeMap::new()
            };
            let base = base_context(&workflow, task, &needs, &self.shared.run_id);
            match render(
                &workflow,
                &self.plan.templates,
                task,
                instance.item.as_ref(),
                &base,
            ) {
                Ok(r) => rendered = Arc::new(r),
                Err(diagnostic) => {
                    let mut result = JobResult::failed(node, diagnostic.message);
                    result.status = InstanceStatus::Failed;
                    let _ = done.send(result);
                    self.running.insert(node, instance.id.0.clone());
                    return;
                }
            }
        }
        let deps: BTreeMap<String, String> = self
            .plan
            .graph
            .edges_directed(node, Direction::Incoming)
            .filter_map(|e| {
                let source = e.source();
                let id = self.plan.graph[source].id.0.clone();
                let digest = self
                    .digests
                    .get(&source)
                    .cloned()
                    .or_else(|| self.results.get(&source).map(JobResult::outputs_digest));
                digest.map(|digest| (id, digest))
            })
            .collect();
        let activity = Arc::new(Mutex::new(String::new()));
        self.unannounced.insert(node, Arc::clone(&activity));
        self.running.insert(node, instance.id.0.clone());
        let (slot_sender, slot) = oneshot::channel();
        self.slot_senders.insert(node, slot_sender);
        self.ranks.insert(node, ready);
        self.probing.insert(ready);
        let job = Job {
            node,
            id: instance.id.0.clone(),
            task: instance.task,
            label: instance.label.clone(),
            rendered,
            deps,
            activity,
            slot,
        };
        let shared = Arc::clone(&self.shared);
        let done = done.clone();
        tokio::spawn(async move {
            // A panic fails the instance rather than leaving the run
            // waiting for a result that never comes.
            let result = match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                execute(shared, job),
            ))
            .await
            {
                Ok(result) => result,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    let mut result =
                        JobResult::failed(node, format!("internal error: ccflow panicked: {what}"));
                    result.status = InstanceStatus::Failed;
                    result
                }
            };
            let _ = done.send(result);
        });
    }

    fn finish(&mut self, result: JobResult) {
        let node = result.node;
        if result.status != InstanceStatus::Cached && tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                "scheduler: `{}` {:?} at {:?}",
                self.plan.graph[node].id.0,
                result.status,
                self.started.elapsed()
            );
        }
        self.running.remove(&node);
        self.slot_senders.remove(&node);
        self.holding_slot.remove(&node);
        if let Some(rank) = self.ranks.remove(&node) {
            self.probing.remove(&rank);
        }
        let task_index = self.plan.graph[node].task;
        let workflow = Arc::clone(&self.plan.workflow);
        let task = &workflow.tasks[task_index];
        if let Some(count) = self.pool_running.get_mut(&task.pool) {
            *count = count.saturating_sub(1);
        }
        if result.status == InstanceStatus::NotStarted {
            // Stopped while waiting for a slot: it never ran.
            self.unannounced.remove(&node);
            self.budget.reserved.remove(&node);
            return;
        }
        self.announce(node);
        if task.is_agent() {
            self.budget.reserved.remove(&node);
            self.budget.spent.add(&result.usage);
            if result.status != InstanceStatus::Cached && result.usage.total_tokens() > 0 {
                let entry = self.budget.per_task.entry(task_index).or_default();
                entry.0 += 1;
                entry.1 += result.usage.cost_usd;
                entry.2 += result.usage.total_tokens();
                entry.3.add(&result.usage);
            } else if result.status == InstanceStatus::Cached {
                // Cached: nothing spent.
            }
        }
        let mut status = result.status;
        if status == InstanceStatus::Cancelled && !self.interrupted {
            status = InstanceStatus::Failed;
        }
        let failed = status.is_failure();
        let tolerated = failed && task.continue_on_error;
        if failed {
            crate::memo::stop_vouching();
        }
        if failed && !tolerated {
            self.failed = true;
            if !self.options.keep_going {
                self.stop = true;
            }
        }
        self.status.insert(node, status);
        let record = self.record(node, status, Some(&result), None);
        let event = RunEvent::TaskFinished {
            record,
            log_path: result.log_path.clone(),
        };
        self.reporters.event(&event);
        if let RunEvent::TaskFinished { record, .. } = event {
            self.prepared.insert(node, (record, None));
        }
        // Only what its dependents will read: they start only if released.
        let released = !failed || tolerated;
        let has_dependents = self
            .plan
            .graph
            .edges_directed(node, Direction::Outgoing)
            .next()
            .is_some();
        if released && has_dependents {
            self.digests
                .entry(node)
                .or_insert_with(|| result.outputs_digest());
        }
        self.results.insert(node, result);
        self.finished.push(node);
        self.release_successors(node, released);
    }

    /// The result of `node` as the up-to-date memo settles it: a shell
    /// instance with reproducible key whose inputs and outputs are as the
    /// memo saw them, and whose upstream instances were settled the same
    /// way (a rerun upstream may change what it reads). Its key and outputs
    /// are then those of the memo, without hashing or reading the cache.
    fn settle(&mut self, node: NodeIndex) -> Option<JobResult> {
        if !self.settleable(node) {
            return None;
        }
        let memo = self.memo_settled.remove(&self.plan.graph[node].id.0)?;
        let mut result = JobResult::new(node);
        result.status = InstanceStatus::Cached;
        result.exit_code = Some(0);
        result.key = Some(memo.key);
        result.outputs = memo.outputs;
        result.inputs = memo.inputs;
        result.usage = memo.usage;
        if let Some(digest) = memo.digest {
            self.digests.insert(node, digest);
        }
        self.settled_nodes.insert(node);
        Some(result)
    }

    /// Whether [`State::settle`] can settle `node` now from the memo.
    fn settleable(&self, node: NodeIndex) -> bool {
        let instance = &self.plan.graph[node];
        if !self.memo_settled.contains_key(&instance.id.0)
            || self.plan.workflow.tasks[instance.task].is_agent()
            || !self.reproducible(instance.task)
            || instance.rendered.as_ref().is_some_and(|r| !r.enabled)
        {
            return false;
        }
        self.plan
            .graph
            .edges_directed(node, Direction::Incoming)
            .all(|e| self.settled_nodes.contains(&e.source()))
    }

    /// What the memo keeps of this run: every instance that succeeded or
    /// was cached, and whether the memo settled it. Moved out of the
    /// results, which the run no longer reads (cloning them cost ~0.2 ms
    /// of a rerun over 1,000 instances).
    fn settled_results(&mut self) -> (Vec<crate::memo::Settled>, Vec<bool>) {
        let mut settled = Vec::new();
        let mut from_memo = Vec::new();
        for node in self.plan.ordered_nodes() {
            let task_reproducible = self.reproducible(self.plan.graph[node].task);
            let instance = &self.plan.graph[node];
            let Some(result) = self.results.get_mut(&node) else {
                continue;
            };
            if instance.kind != NodeKind::Instance
                || !matches!(
                    result.status,
                    InstanceStatus::Cached | InstanceStatus::Succeeded
                )
            {
                continue;
            }
            let reproducible = task_reproducible && result.key.is_some();
            settled.push(crate::memo::Settled {
                id: instance.id.0.clone(),
                key: result.key.take().unwrap_or_default(),
                inputs: std::mem::take(&mut result.inputs),
                outputs: std::mem::take(&mut result.outputs),
                usage: result.usage,
                reproducible,
                digest: self.digests.remove(&node),
            });
            from_memo.push(self.settled_nodes.contains(&node));
        }
        (settled, from_memo)
    }

    /// Whether a rerun of this task with unchanged files reproduces its
    /// keys: the cache is on and no template reads run-time state.
    fn reproducible(&self, task_index: usize) -> bool {
        self.plan.workflow.tasks[task_index].cache && !self.runtime_context[task_index]
    }

    /// Reserves the expected cost of an agent instance, or says why the
    /// budget cannot cover it.
    fn reserve(&mut self, node: NodeIndex, task_index: usize) -> Result<(), String> {
        if self.budget.exhausted {
            return Err("not started: budget exhausted".into());
        }
        let workflow = Arc::clone(&self.plan.workflow);
        let task = &workflow.tasks[task_index];
        let stats = self
            .budget
            .per_task
            .get(&task_index)
            .copied()
            .unwrap_or_default();
        // The running mean of this task's finished sessions, else its own limit.
        let own_limit = match &task.kind {
            crate::workflow::TaskKind::Agent(agent) => agent.max_budget_usd.unwrap_or(0.0),
            crate::workflow::TaskKind::Shell { .. } => 0.0,
        };
        let (expected_cost, expected_tokens) = if stats.0 > 0 {
            (stats.1 / f64::from(stats.0), stats.2 / u64::from(stats.0))
        } else {
            (own_limit, 0)
        };
        let reserved_cost: f64 = self.budget.reserved.values().map(|r| r.0).sum();
        let reserved_tokens: u64 = self.budget.reserved.values().map(|r| r.1).sum();
        let budget = workflow.budget;
        let over_cost = budget.max_cost_usd.is_some_and(|max| {
            self.budget.spent.cost_usd >= max
                || self.budget.spent.cost_usd + reserved_cost + expected_cost > max
        });
        let over_tokens = budget.max_tokens.is_some_and(|max| {
            self.budget.spent.total_tokens() >= max
                || self.budget.spent.total_tokens() + reserved_tokens + expected_tokens > max
        });
        let task_running: Vec<(f64, u64)> = self
            .budget
            .reserved
            .iter()
            .filter(|(n, _)| self.plan.graph[**n].task == task_index)
            .map(|(_, r)| *r)
            .collect();
        let task_reserved_cost: f64 = task_running.iter().map(|r| r.0).sum();
        let task_reserved_tokens: u64 = task_running.iter().map(|r| r.1).sum();
        let task_over = task.budget.max_cost_usd.is_some_and(|max| {
            stats.3.cost_usd + task_reserved_cost + expected_cost > max || stats.3.cost_usd >= max
        }) || task.budget.max_tokens.is_some_and(|max| {
            stats.3.total_tokens() + task_reserved_tokens + expected_tokens > max
                || stats.3.total_tokens() >= max
        });
        if over_cost || over_tokens {
            self.budget.exhausted = true;
            return Err("not started: budget exhausted".into());
        }
        if task_over {
            return Err(format!(
                "not started: the budget of task `{}` is exhausted",
                task.name
            ));
        }
        self.budget
            .reserved
            .insert(node, (expected_cost, expected_tokens));
        Ok(())
    }

    /// Records an instance that will not start (budget), blocking its dependents.
    fn not_started(&mut self, node: NodeIndex, reason: String) {
        self.status.insert(node, InstanceStatus::NotStarted);
        let mut result = JobResult::failed(node, reason);
        result.status = InstanceStatus::NotStarted;
        let record = self.record(node, InstanceStatus::NotStarted, Some(&result), None);
        self.reporters.event(&RunEvent::TaskFinished {
            record,
            log_path: None,
        });
        self.results.insert(node, result);
        self.release_successors(node, false);
    }

    /// Decrements successors; on failure, blocks everything downstream.
    fn release_successors(&mut self, node: NodeIndex, success: bool) {
        let successors: Vec<NodeIndex> = self
            .plan
            .graph
            .neighbors_directed(node, Direction::Outgoing)
            .collect();
        for s in successors {
            if self.status.contains_key(&s) {
                continue;
            }
            if !success {
                self.block(s);
                continue;
            }
            let degree = self.indegree.entry(s).or_insert(1);
            *degree = degree.saturating_sub(1);
            if *degree == 0 {
                self.make_ready(s);
            }
        }
    }

    fn block(&mut self, node: NodeIndex) {
        let mut stack = vec![node];
        while let Some(n) = stack.pop() {
            if self.status.contains_key(&n) {
                continue;
            }
            self.status.insert(n, InstanceStatus::Blocked);
            stack.extend(self.plan.graph.neighbors_directed(n, Direction::Outgoing));
            let instance = &self.plan.graph[n];
            if instance.kind == NodeKind::Instance {
                let record = self.record(
                    n,
                    InstanceStatus::Blocked,
                    None,
                    Some("a dependency failed"),
                );
                self.reporters.event(&RunEvent::TaskFinished {
                    record,
                    log_path: None,
                });
            }
        }
    }

    /// The record of an instance: from its result when it has one, else
    /// with `message` (an instance that did not run).
    fn record(
        &self,
        node: NodeIndex,
        status: InstanceStatus,
        result: Option<&JobResult>,
        message: Option<&str>,
    ) -> InstanceRecord {
        let instance = &self.plan.graph[node];
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        InstanceRecord {
            id: instance.id.0.clone(),
            task: self.plan.workflow.tasks[instance.task].name.clone(),
            label: instance.label.clone(),
            status,
            attempts: result.map(|r| r.attempts.clone()).unwrap_or_default(),
            started_unix_ms: result.map(|r| r.started_unix_ms),
            finished_unix_ms: result.map(|r| r.started_unix_ms.saturating_add(millis(r.duration))),
            duration_ms: result.map_or(0, |r| millis(r.duration)),
            exit_code: result.and_then(|r| r.exit_code),
            log: result
                .and_then(|r| r.log_path.as_ref())
                .and_then(|p| p.strip_prefix(&self.shared.run_dir).ok())
                .map(|p| p.display().to_string()),
            message: result
                .and_then(|r| r.message.clone())
                .or_else(|| message.map(str::to_owned)),
            cache_key: result.and_then(|r| r.key.clone()),
            usage: result.map(|r| r.usage).unwrap_or_default(),
            artifacts: result.map(|r| r.artifacts.clone()).unwrap_or_default(),
        }
    }

    /// Reports every instance that never started (fail-fast stop, interrupt).
    fn report_unstarted(&mut self) {
        let reason = if self.interrupted {
            "interrupted before it started"
        } else {
            "not started after a failure (fail-fast; `--keep-going` runs it)"
        };
        for node in self.plan.ordered_nodes() {
            if self.plan.graph[node].kind == NodeKind::Instance
                && !self.status.contains_key(&node)
                && !self.running.contains_key(&node)
            {
                let record = self.record(node, InstanceStatus::NotStarted, None, Some(reason));
                self.reporters.event(&RunEvent::TaskFinished {
                    record,
                    log_path: None,
                });
            }
        }
    }

    /// The final record, written on a thread, and the memo's JSON of the
    /// instances whose records were prepared (see [`State::prepare_records`]).
    fn write_record(&mut self, status: RunStatus) -> (Arc<RunRecord>, Vec<Option<Vec<u8>>>) {
        // After the first record, never before it.
        if let Some(writer) = self.record_writer.take() {
            let _ = writer.join();
        }
        // Serialized and written beside what the caller does next (the
        // up-to-date memo serializes the same instances): 1-3 ms each for
        // 1,000 instances. The caller joins the writer.
        let mut prepared = std::mem::take(&mut self.prepared);
        let mut memo_json = Vec::new();
        let record = Arc::new(self.build_record_with(status, |node| {
            let taken = prepared.remove(&node);
            let (record, json) = taken.map_or((None, None), |(r, j)| (Some(r), j));
            memo_json.push(json);
            record
        }));
        self.record_writer = write_in_background(Arc::clone(&record), &self.shared.run_dir);
        (record, memo_json)
    }

    /// Whether the loop, with nothing to start or settle and processes
    /// running, should prepare the records of instances finished since it
    /// last did (only when a memo is being recorded: it is their reader).
    fn may_prepare(&self) -> bool {
        self.ready.is_empty()
            && self.settle_queue.is_empty()
            && !self.running.is_empty()
            && self.prepared_upto < self.finished.len()
            && crate::memo::recording()
    }

    /// Builds the record of every finished instance that has none yet, and
    /// its JSON for the memo: done while the run waits on a long process
    /// (a reduce after a one-file edit), it is no longer done after it
    /// (~1.5 ms of a 22 ms rerun over 1,000 instances). A finished
    /// instance's record never changes.
    fn prepare_records(&mut self) {
        let end = self.finished.len().min(self.prepared_upto + PREPARE_BATCH);
        for index in self.prepared_upto..end {
            let node = self.finished[index];
            if let Some((record, json @ None)) = self.prepared.get_mut(&node) {
                *json = Some(crate::memo::instance_json(record));
            }
        }
        self.prepared_upto = end;
        tracing::debug!("scheduler: {end} instance records prepared while waiting");
    }

    /// The record as the run starts, so that a run killed with SIGKILL
    /// leaves one and `ccflow show` sees a run in progress: written on a
    /// thread at the loop's first tick, once what the memo settles is
    /// settled. A run over within that tick writes only its final record
    /// (as ninja writes its log as it ends): the first one had cost a rerun
    /// over 1,000 instances after a one-file edit ~0.6 ms of the loop's time
    /// to build and a 364 KB file beside its reduce. SIGINT and SIGTERM
    /// always leave the final record.
    fn write_first_record(&mut self) {
        self.first_record_written = true;
        let first = Arc::new(self.build_record(RunStatus::Running));
        self.record_writer = write_in_background(first, &self.shared.run_dir);
    }

    fn build_record(&self, status: RunStatus) -> RunRecord {
        self.build_record_with(status, |_| None)
    }

    /// The run's record; `prepared` gives the record of a node when one
    /// was built already (it is asked once per instance, in record order).
    fn build_record_with(
        &self,
        status: RunStatus,
        mut prepared: impl FnMut(NodeIndex) -> Option<InstanceRecord>,
    ) -> RunRecord {
        let mut instances = Vec::new();
        let mut usage = Usage::default();
        for node in self.plan.ordered_nodes() {
            let instance = &self.plan.graph[node];
            if instance.kind != NodeKind::Instance {
                continue;
            }
            let st =
                self.status
                    .get(&node)
                    .copied()
                    .unwrap_or(if self.running.contains_key(&node) {
                        InstanceStatus::Running
                    } else if status == RunStatus::Running {
                        InstanceStatus::Pending
                    } else {
                        InstanceStatus::NotStarted
                    });
            let result = self.results.get(&node);
            if let Some(r) = result {
                usage.add(&r.usage);
            }
            let record = prepared(node).unwrap_or_else(|| self.record(node, st, result, None));
            instances.push(record);
        }
        let counts = Counts::from_instances(&instances);
        let now = now_ms();
        RunRecord {
            version: RECORD_VERSION,
            run_id: self.shared.run_id.clone(),
            workflow: self.plan.workflow.name.clone(),
            workflow_file: self.plan.workflow.file.name.clone(),
            status,
            started_unix_ms: self.started_unix_ms,
            finished_unix_ms: (status != RunStatus::Running).then_some(now),
            duration_ms: now.saturating_sub(self.started_unix_ms),
            counts,
            usage,
            messages: self.messages.clone(),
            instances,
        }
    }
}

/// What `start` needs of a node.
struct StartInfo {
    id: crate::graph::InstanceId,
    task: usize,
    label: Option<String>,
    rendered: Option<Arc<crate::graph::RenderedInstance>>,
    /// Only when the task is re-rendered at start.
    item: Option<crate::fanout::ItemValue>,
}

/// Where a run's files go.
#[must_use]
pub fn run_dir(state_dir: &std::path::Path, run_id: &str) -> PathBuf {
    state_dir.join("runs").join(run_id)
}
