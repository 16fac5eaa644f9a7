//! Helpers shared by commands: loading a workflow by name with its
//! diagnostics printed, and parsing `--var k=v`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Ctx;
use crate::diagnostic::Diagnostic;
use crate::error::CommandError;
use crate::workflow::discover::{self, DiscoverError};
use crate::workflow::resolve::{self, display_path};
use crate::workflow::Workflow;

/// Parses `--var k=v` arguments.
///
/// # Errors
/// An argument without `=`.
pub fn parse_vars(vars: &[String]) -> Result<BTreeMap<String, String>, CommandError> {
    vars.iter()
        .map(|v| {
            v.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| CommandError::usage(format!("`--var {v}`: expected `NAME=VALUE`")))
        })
        .collect()
}

/// Prints diagnostics to stderr (and as GitHub annotations under Actions).
pub fn print_diagnostics(ctx: &Ctx, diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        eprint!("{}", diagnostic.render(ctx.color));
        if ctx.github {
            println!("{}", diagnostic.to_github_annotation());
        }
    }
}

/// Resolves a workflow argument to a path.
///
/// # Errors
/// Not found: lists what was tried and what exists.
pub fn find(ctx: &Ctx, arg: &str) -> Result<std::path::PathBuf, CommandError> {
    discover::resolve_workflow(arg, &ctx.cwd, &ctx.root).map_err(|e| {
        let mut error = CommandError::usage(e.to_string());
        if let DiscoverError::NotFound { available, .. } = &e {
            if available.is_empty() {
                error = error.hint("no workflows in `.claudecluster/`; `ccflow init` creates one");
            } else {
                if let Some(h) = crate::diagnostic::did_you_mean(arg, available.iter().map(String::as_str)) {
                    error = error.hint(h);
                }
                error = error.hint(format!("available: {}", available.join(", ")));
            }
        }
        error
    })
}

/// Loads and checks a workflow, printing every diagnostic.
///
/// # Errors
/// Exit status 2 when the workflow is invalid.
pub fn load(ctx: &Ctx, arg: &str, vars: &BTreeMap<String, String>) -> Result<Arc<Workflow>, CommandError> {
    let path = find(ctx, arg)?;
    let display = display_path(&path, &ctx.cwd);
    let loaded = resolve::load(&path, &display, &ctx.root, vars);
    print_diagnostics(ctx, &loaded.diagnostics);
    match loaded.workflow {
        Some(workflow) => Ok(Arc::new(workflow)),
        None => {
            let count = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
            Err(CommandError::usage(format!(
                "`{display}` is invalid ({count} error{})",
                if count == 1 { "" } else { "s" }
            )))
        }
    }
}
