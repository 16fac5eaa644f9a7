//! Errors of the agent layer: locating the CLI, asking its version, and
//! reading its stream.

use std::path::PathBuf;

/// What went wrong before or around a Claude Code session.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No `claude` binary was found.
    #[error(
        "failed to find the `claude` CLI (looked at {searched}); install it with \
         `npm install -g @anthropic-ai/claude-code`, or `pip install claude-agent-sdk` \
         and set `CCFLOW_CLAUDE` to its `claude_agent_sdk/_bundled/claude`"
    )]
    ClaudeNotFound {
        /// Where we looked, for the message.
        searched: String,
    },
    /// `claude --version` could not be run.
    #[error("failed to run `{} --version`", binary.display())]
    VersionSpawn {
        /// The binary.
        binary: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `claude --version` ran but failed or printed nothing.
    #[error("`{} --version` failed ({status}): {stderr}", binary.display())]
    VersionFailed {
        /// The binary.
        binary: PathBuf,
        /// Its exit status, as text.
        status: String,
        /// The start of its stderr.
        stderr: String,
    },
}

/// A line of the stream-json output that is not a JSON object with a `type`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed stream-json line {line}: {message}")]
pub struct StreamError {
    /// 1-based line number in the session's stdout.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}
