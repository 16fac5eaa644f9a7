//! End-to-end tests of agent tasks: the real `ccflow` binary runs the real
//! `claude` CLI in git worktrees, pointed at the crate's own mock of the
//! Messages API (SPEC §5). One file per feature under `tests/agents/`.

#[path = "agents/support.rs"]
mod support;

#[path = "agents/fanout.rs"]
mod fanout;
#[path = "agents/conflict.rs"]
mod conflict;
#[path = "agents/kill.rs"]
mod kill;
#[path = "agents/apply.rs"]
mod apply;
