//! End-to-end tests of agent tasks: the real `ccflow` binary runs the real
//! `claude` CLI in git worktrees, pointed at the crate's own mock of the
//! Messages API (SPEC §5). One file per feature under `tests/agents/`.

#[path = "agents/support.rs"]
mod support;

#[path = "agents/apply.rs"]
mod apply;
#[path = "agents/budget.rs"]
mod budget;
#[path = "agents/conflict.rs"]
mod conflict;
#[path = "agents/examples.rs"]
mod examples;
#[path = "agents/fanout.rs"]
mod fanout;
#[path = "agents/kill.rs"]
mod kill;
#[path = "agents/ratelimit.rs"]
mod ratelimit;
#[path = "agents/salvage.rs"]
mod salvage;
#[path = "agents/supervision.rs"]
mod supervision;
#[path = "agents/verify.rs"]
mod verify;
