//! Execution: the scheduler, the local process runner and the Docker runner.
//!
//! The local runner ([`local::run`]) turns one task instance's command into a
//! real process in its own process group and reports a typed
//! [`ProcessOutcome`]; [`reaper`] makes sure nothing it started outlives it.

pub mod agent_docker;
pub mod agent_task;
pub mod docker;
pub mod instance;
pub mod local;
pub mod log_sink;
pub mod outcome;
pub mod paths;
pub mod reaper;
pub mod scheduler;
pub mod shellwords;
pub mod stale;
pub mod worktree_pool;

pub use local::{run, CommandLine, ProcessSpec};
pub use outcome::{ProcessOutcome, ProcessReport};
