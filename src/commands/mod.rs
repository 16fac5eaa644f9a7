//! One file per subcommand: `run(args, &Ctx) -> CommandResult`.

pub mod cache;
pub mod common;
pub mod completions;
pub mod doctor;
pub mod explain;
pub mod init;
pub mod list;
pub mod plan;
pub mod run;
pub mod runs;
pub mod validate;

use std::io::IsTerminal as _;
use std::path::PathBuf;

use crate::cli::{Cli, Command};
use crate::error::{CommandError, CommandResult, ExitStatus};
use crate::workflow::discover;

/// What every command needs to know about where it runs.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub cwd: PathBuf,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub color: bool,
    pub github: bool,
}

impl Ctx {
    fn new(cli: &Cli) -> Result<Ctx, CommandError> {
        let mut cwd = std::env::current_dir()
            .map_err(|e| CommandError::usage(format!("cannot read the current directory: {e}")))?;
        if let Some(dir) = &cli.directory {
            cwd = cwd.join(dir);
            if !cwd.is_dir() {
                return Err(CommandError::usage(format!(
                    "`-C {}`: no such directory",
                    dir.display()
                )));
            }
        }
        let cwd = cwd.canonicalize().unwrap_or(cwd);
        let root = discover::find_root(&cwd);
        let state_dir = discover::state_dir(&root);
        crate::workflow::schema::remember_valid_documents_in(state_dir.join("validated"));
        let color = !cli.no_color
            && std::env::var_os("NO_COLOR").is_none()
            && std::io::stderr().is_terminal();
        let github = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
        Ok(Ctx {
            cwd,
            root,
            state_dir,
            color,
            github,
        })
    }
}

/// Runs one parsed command line.
///
/// # Errors
/// A usage or environment problem, with its exit status.
pub fn dispatch(cli: Cli) -> CommandResult {
    let ctx = Ctx::new(&cli)?;
    match cli.command {
        Command::Init(args) => init::run(&args, &ctx),
        Command::List => list::run(&ctx),
        Command::Validate(args) => validate::run(&args, &ctx),
        Command::Plan(args) => plan::run(&args, &ctx),
        Command::Run(args) => run::run(&args, &ctx),
        Command::Explain(args) => explain::run(&args, &ctx),
        Command::Runs(args) => runs::runs(&args, &ctx),
        Command::Show(args) => runs::show(&args, &ctx),
        Command::Logs(args) => runs::logs(&args, &ctx),
        Command::Cache(args) => cache::run(&args, &ctx),
        Command::Schema => {
            crate::out!("{}", crate::workflow::schema::schema_text());
            Ok(ExitStatus::Success)
        }
        Command::Completions(args) => completions::run(&args),
        Command::MockApi(args) => Ok(match crate::mock::run_cli(&args.script, args.port) {
            0 => ExitStatus::Success,
            2 => ExitStatus::Invalid,
            130 => ExitStatus::Interrupted,
            _ => ExitStatus::TaskFailed,
        }),
        Command::Doctor => doctor::run(&ctx),
    }
}
