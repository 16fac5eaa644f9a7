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
        crate::err!("{}", diagnostic.render(ctx.color));
        if ctx.github {
            crate::errln!("{}", diagnostic.to_github_annotation());
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
                if let Some(h) =
                    crate::diagnostic::did_you_mean(arg, available.iter().map(String::as_str))
                {
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
pub fn load(
    ctx: &Ctx,
    arg: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Arc<Workflow>, CommandError> {
    load_path(ctx, &find(ctx, arg)?, vars)
}

/// Loads and checks the workflow at `path` (as [`find`] resolved it).
///
/// # Errors
/// Exit status 2 when the workflow is invalid.
pub fn load_path(
    ctx: &Ctx,
    path: &std::path::Path,
    vars: &BTreeMap<String, String>,
) -> Result<Arc<Workflow>, CommandError> {
    let display = display_path(path, &ctx.cwd);
    let loaded = resolve::load(path, &display, &ctx.root, vars);
    print_diagnostics(ctx, &loaded.diagnostics);
    match loaded.workflow {
        Some(workflow) => Ok(Arc::new(workflow)),
        None => {
            let count = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
            Err(CommandError::usage(format!(
                "`{display}` is invalid ({})",
                crate::report::counted(count, "error")
            )))
        }
    }
}

/// Connects to the Docker engine and resolves every image the workflow's
/// docker tasks use, before anything starts: an unreachable engine or a
/// missing image is a usage error (exit 2) naming it.
///
/// # Errors
/// Engine unreachable, image missing (with hints).
pub fn prepare_docker(
    runtime: &tokio::runtime::Runtime,
    workflow: &Workflow,
    tasks: &[usize],
    run_id: Option<&str>,
    state_dir: &std::path::Path,
) -> Result<
    (
        Option<crate::exec::docker::DockerRunner>,
        std::collections::HashMap<String, String>,
    ),
    CommandError,
> {
    use crate::workflow::raw::Runner;
    let docker_tasks: Vec<&crate::workflow::Task> = tasks
        .iter()
        .map(|i| &workflow.tasks[*i])
        .filter(|t| t.runner == Runner::Docker)
        .collect();
    if docker_tasks.is_empty() {
        return Ok((None, std::collections::HashMap::new()));
    }
    let with_hint = |e: crate::exec::docker::DockerError| {
        let hint = e.hint();
        let mut error = CommandError::usage(e.to_string());
        if let Some(h) = hint {
            error = error.hint(h);
        }
        error
    };
    runtime.block_on(async {
        let docker = crate::exec::docker::DockerRunner::connect()
            .await
            .map_err(with_hint)?;
        let mut ids = std::collections::HashMap::new();
        for task in docker_tasks {
            let Some(image) = &task.image else { continue };
            if ids.contains_key(image) {
                continue;
            }
            let id = docker.image_id(image, task.pull).await.map_err(|e| {
                let mut error = with_hint(e);
                error.message = format!("task `{}`: {}", task.name, error.message);
                error
            })?;
            ids.insert(image.clone(), id);
        }
        if let Some(run_id) = run_id {
            // Only runs of this repository whose ccflow is gone: another
            // ccflow may be running right now next to this one.
            let state_dir = state_dir.to_path_buf();
            let own = run_id.to_owned();
            let dead =
                move |run: &str| run != own && crate::exec::stale::run_is_dead(&state_dir, run);
            match docker.remove_containers_of(dead).await {
                Ok(0) => {}
                Ok(n) => {
                    crate::errln!("ccflow: removed {n} container(s) left over by an earlier run")
                }
                Err(e) => crate::errln!("warning: cannot remove leftover containers: {e}"),
            }
        }
        Ok((Some(docker), ids))
    })
}

/// Plans a loaded workflow and applies `--task`, printing diagnostics.
///
/// # Errors
/// Template or fan-out errors, an unknown `--task` (exit 2).
pub fn plan(
    ctx: &Ctx,
    workflow: Arc<Workflow>,
    run_id: &str,
    tasks: &[String],
) -> Result<crate::graph::Plan, CommandError> {
    plan_deferring(ctx, workflow, run_id, tasks, &|_| false)
}

/// [`plan`], leaving the instances `defer` names unrendered (see
/// [`crate::graph::Plan::build_deferring`]).
///
/// # Errors
/// Template or fan-out errors, an unknown `--task` (exit 2).
pub fn plan_deferring(
    ctx: &Ctx,
    workflow: Arc<Workflow>,
    run_id: &str,
    tasks: &[String],
    defer: &dyn Fn(&str) -> bool,
) -> Result<crate::graph::Plan, CommandError> {
    let mut plan =
        crate::graph::Plan::build_deferring(workflow, run_id, defer).map_err(|errors| {
            print_diagnostics(ctx, &errors);
            CommandError::usage("the workflow cannot be planned")
        })?;
    print_diagnostics(ctx, &plan.warnings);
    if let Err(d) = plan.select(tasks) {
        let message = d.message.clone();
        let mut error = CommandError::usage(message);
        error.hints.clone_from(&d.hints);
        return Err(error);
    }
    Ok(plan)
}
