//! Command-line types (clap derive) and the entry point that dispatches to
//! `commands::*`. Only argument shapes live here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands;
use crate::error::ExitStatus;

/// ccflow — declarative, cached, parallel workflows of shell tasks and Claude Code sessions.
#[derive(Debug, Parser)]
#[command(name = "ccflow", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Run as if started in this directory.
    #[arg(short = 'C', long, global = true, value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Never use colors (also: NO_COLOR).
    #[arg(long, global = true)]
    pub no_color: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create `.claudecluster/` with a commented example workflow.
    Init(InitArgs),
    /// List the workflows of this repository and their tasks.
    List,
    /// Check workflows without running anything (all of `.claudecluster/` by default).
    Validate(ValidateArgs),
    /// Show the task graph of a workflow, and what would run.
    Plan(PlanArgs),
    /// Run a workflow.
    Run(RunArgs),
    /// Say why an instance would run (which part of its cache key changed).
    Explain(ExplainArgs),
    /// Print the log of an instance (of the last run, or `--run ID`).
    Logs(LogsArgs),
    /// List recent runs.
    Runs(RunsArgs),
    /// Show one run's record.
    Show(ShowArgs),
    /// Inspect or trim the cache.
    Cache(CacheArgs),
    /// Print the JSON Schema of the workflow format.
    Schema,
    /// Print shell completions.
    Completions(CompletionsArgs),
    /// Serve a scripted mock of the Anthropic Messages API (rehearse agent workflows offline).
    MockApi(MockApiArgs),
    /// Report the environment: Docker engine, claude CLI, git.
    Doctor,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite an existing example workflow.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ValidateFormat {
    Human,
    Json,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Workflow files or names (default: every file in `.claudecluster/`).
    pub files: Vec<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: ValidateFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PlanFormat {
    Text,
    Json,
    Dot,
    Mermaid,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The workflow: a path, or a name in `.claudecluster/`.
    pub workflow: String,
    #[arg(long, value_enum, default_value = "text")]
    pub format: PlanFormat,
    /// Override a variable: `--var name=value` (repeatable).
    #[arg(long = "var", value_name = "K=V")]
    pub vars: Vec<String>,
    /// Only these tasks and what they need.
    #[arg(long = "task", value_name = "NAME")]
    pub tasks: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ApplyMode {
    /// Apply agents' diffs to the working tree (three-way merge).
    Worktree,
    /// Commit each agent's diff on branch `ccflow/RUN_ID`.
    Branch,
    /// Keep the diffs in the run record only.
    None,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow: a path, or a name in `.claudecluster/`.
    pub workflow: String,
    /// Maximum instances at once (overrides `concurrency`).
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Keep running what does not depend on a failure.
    #[arg(short = 'k', long)]
    pub keep_going: bool,
    /// Only these tasks and their dependencies (repeatable).
    #[arg(long = "task", value_name = "NAME")]
    pub tasks: Vec<String>,
    /// Override a variable: `--var name=value` (repeatable).
    #[arg(long = "var", value_name = "K=V")]
    pub vars: Vec<String>,
    /// Ignore the cache (run everything; results are still saved).
    #[arg(long)]
    pub no_cache: bool,
    /// Run this task again even when cached (repeatable).
    #[arg(long, value_name = "TASK")]
    pub rerun: Vec<String>,
    /// Write NDJSON events to FILE, or `-` for stdout.
    #[arg(long, value_name = "FILE")]
    pub events: Option<String>,
    /// Where agents' changes go.
    #[arg(long, value_enum, default_value = "worktree")]
    pub apply: ApplyMode,
    /// Print the logs of cached instances too.
    #[arg(long)]
    pub replay: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    pub workflow: String,
    /// The instance, e.g. `lint[src/lib.rs]` or `build`.
    pub instance: String,
    #[arg(long = "var", value_name = "K=V")]
    pub vars: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The instance, e.g. `lint[src/lib.rs]`.
    pub instance: String,
    /// The run (default: the latest).
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// How many runs to list.
    #[arg(short = 'n', long, default_value = "20")]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The run (default: the latest).
    pub run: Option<String>,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Entries, blobs and size.
    Stats,
    /// Remove least recently used entries until the cache fits.
    Gc {
        /// e.g. `500M`, `2G`.
        #[arg(long, value_name = "SIZE", default_value = "1G")]
        max_size: String,
    },
    /// Remove everything.
    Clear,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct MockApiArgs {
    /// The script (see docs/mock-api.md).
    #[arg(long, value_name = "FILE")]
    pub script: PathBuf,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value = "0")]
    pub port: u16,
}

/// Runs the CLI and returns the process exit code.
#[must_use]
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return match error.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => ExitStatus::Invalid.code(),
            };
        }
    };
    match commands::dispatch(cli) {
        Ok(status) => status.code(),
        Err(error) => {
            crate::errln!("{error}");
            error.status.code()
        }
    }
}
