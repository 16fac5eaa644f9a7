//! A scripted stand-in for the Anthropic Messages API, the one thing ccflow
//! mocks: tests (and users rehearsing a workflow offline with
//! `ccflow mock-api`) point the real `claude` CLI at it with
//! `ANTHROPIC_BASE_URL`. The script format is documented in `docs/mock-api.md`.
//!
//! This module declares and re-exports; the logic lives in the named files.

mod cli;
mod error;
mod http;
mod responder;
mod script;
mod server;
mod template;

pub use cli::run_cli;
pub use error::MockError;
pub use script::{load_script, Block, Rule, Script, ToolUse, Turn, TurnUsage};
pub use server::{MockServer, MockStats};

#[cfg(test)]
mod tests;
