//! The top-level error and the one mapping from outcomes to exit codes
//! (SPEC §4): 0 all succeeded or cached, 1 a task failed, 2 invalid workflow
//! or usage, 130 interrupted.

use std::fmt;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    TaskFailed,
    Invalid,
    Interrupted,
}

impl ExitStatus {
    #[must_use]
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::TaskFailed => 1,
            ExitStatus::Invalid => 2,
            ExitStatus::Interrupted => 130,
        }
    }
}

/// An error at the command edge: a message, hints, and its exit status.
#[derive(Debug)]
pub struct CommandError {
    pub message: String,
    pub hints: Vec<String>,
    pub status: ExitStatus,
}

impl CommandError {
    #[must_use]
    pub fn usage(message: impl Into<String>) -> CommandError {
        CommandError {
            message: message.into(),
            hints: Vec::new(),
            status: ExitStatus::Invalid,
        }
    }

    #[must_use]
    pub fn failed(message: impl Into<String>) -> CommandError {
        CommandError {
            message: message.into(),
            hints: Vec::new(),
            status: ExitStatus::TaskFailed,
        }
    }

    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> CommandError {
        self.hints.push(hint.into());
        self
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        for hint in &self.hints {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CommandError {}

/// The result of a command.
pub type CommandResult = Result<ExitStatus, CommandError>;
