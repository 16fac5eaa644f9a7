//! `ccflow completions SHELL`.

use clap::CommandFactory as _;

use crate::cli::{Cli, CompletionsArgs};
use crate::error::{CommandResult, ExitStatus};

/// Prints the completion script.
///
/// # Errors
/// Never; kept fallible like every command.
pub fn run(args: &CompletionsArgs) -> CommandResult {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "ccflow", &mut std::io::stdout());
    Ok(ExitStatus::Success)
}
