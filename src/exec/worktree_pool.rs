//! The run's agent worktrees between instances: a worktree an instance is
//! done with is reset to the snapshot and kept for the next instance (a
//! checkout per instance would cost the whole tree), until no instance is
//! left to take it; from then on worktrees are removed as they come free,
//! in the background while the last sessions still run, rather than all
//! together after the last one (eight checkouts of 2,000 files took 1.3 s to
//! delete at the end of the benchmark run, with nothing else to do).
//!
//! This type only counts and hands out; resetting is the instance's job,
//! and the scheduler removes whatever is left (and waits for the background
//! removals, see [`WorktreePool::finish_removals`]) when the run ends.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::task::JoinHandle;

use crate::workspace::{self, Worktree};

/// Idle worktrees and how many agent instances may still want one.
pub struct WorktreePool {
    state: Mutex<PoolState>,
    /// The repository the worktrees belong to (any path inside it).
    repo: PathBuf,
    /// Removals running on the blocking pool.
    removals: Mutex<Vec<JoinHandle<()>>>,
}

struct PoolState {
    idle: Vec<Worktree>,
    /// Agent instances of the run that have not yet taken a worktree nor
    /// ended without one. A task whose instances are only known at run time
    /// counts what the plan holds; should more come, they check out a new
    /// worktree (correct, only slower).
    waiting: usize,
}

impl WorktreePool {
    /// A pool for a run of `agent_instances` agent instances in the
    /// repository holding `repo`.
    pub fn new(repo: &Path, agent_instances: usize) -> WorktreePool {
        WorktreePool {
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                waiting: agent_instances,
            }),
            repo: repo.to_owned(),
            removals: Mutex::new(Vec::new()),
        }
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers an instance that may need a worktree; it leaves the count
    /// when the claim is settled or dropped.
    pub fn claim(&self) -> WorktreeClaim<'_> {
        WorktreeClaim {
            pool: self,
            settled: false,
        }
    }

    /// Whether an instance may still take a worktree given back now.
    pub fn wanted(&self) -> bool {
        self.state().waiting > 0
    }

    /// Keeps a worktree reset to the snapshot for the next instance, or
    /// removes it (in the background) when no instance is left to take it.
    pub fn give_back(&self, worktree: Worktree) {
        let mut state = self.state();
        if state.waiting > 0 {
            state.idle.push(worktree);
        } else {
            drop(state);
            self.remove_in_background(vec![worktree]);
        }
    }

    /// Removes a worktree no instance will take (in the background).
    pub fn discard(&self, worktree: Worktree) {
        self.remove_in_background(vec![worktree]);
    }

    /// Waits for the background removals; the run's final cleanup must not
    /// race them.
    pub async fn finish_removals(&self) {
        let removals =
            std::mem::take(&mut *self.removals.lock().unwrap_or_else(PoisonError::into_inner));
        for removal in removals {
            let _ = removal.await;
        }
    }

    fn remove_in_background(&self, worktrees: Vec<Worktree>) {
        if worktrees.is_empty() {
            return;
        }
        // Outside a runtime (a claim dropped during shutdown) the run's
        // final cleanup removes them.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let repo = self.repo.clone();
        let removal = runtime.spawn_blocking(move || {
            if let Err(error) = workspace::remove_worktrees(&repo, &worktrees) {
                tracing::warn!("cannot remove agent worktrees: {error}");
            }
        });
        self.removals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(removal);
    }
}

/// One agent instance's place among those that may want a worktree.
pub struct WorktreeClaim<'pool> {
    pool: &'pool WorktreePool,
    settled: bool,
}

impl WorktreeClaim<'_> {
    /// An idle worktree, if there is one. The claim stays open: settle it
    /// once the instance has its worktree.
    pub fn take_idle(&self) -> Option<Worktree> {
        self.pool.state().idle.pop()
    }

    /// The instance has its worktree, or will not need one. The last
    /// instance to settle makes the idle worktrees useless: they are removed.
    pub fn settle(&mut self) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let mut state = self.pool.state();
        state.waiting = state.waiting.saturating_sub(1);
        if state.waiting == 0 {
            let idle = std::mem::take(&mut state.idle);
            drop(state);
            self.pool.remove_in_background(idle);
        }
    }
}

impl Drop for WorktreeClaim<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}
