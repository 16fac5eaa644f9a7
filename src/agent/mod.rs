//! Running headless Claude Code sessions (SPEC §5): finding the `claude`
//! binary and building its arguments (`cli.rs`), reading its stream-json
//! output (`stream.rs`) and supervising the process (`session.rs`).
//!
//! Not here: budgets across agents, worktrees and diffs (the scheduler and
//! `workspace` own those).

mod cli;
mod error;
mod session;
mod stream;

pub use cli::{build_args, claude_version, find_claude, AgentOptions};
pub use error::{AgentError, StreamError};
pub use session::{run_session, stderr_path, SessionOutcome, SessionSpec, SessionStatus};
pub use stream::{activity, parse_line, ContentBlock, ResultMessage, StreamEvent, Usage};

#[cfg(test)]
mod tests;
