//! `ccflow list`: the workflows of this repository and their tasks.

use std::collections::BTreeMap;

use super::Ctx;
use crate::error::{CommandResult, ExitStatus};
use crate::workflow::discover;
use crate::workflow::resolve::{self, display_path};

/// Lists workflows (invalid ones are marked, not fatal).
///
/// # Errors
/// Never; kept fallible like every command.
pub fn run(ctx: &Ctx) -> CommandResult {
    let files = discover::list_workflows(&ctx.root);
    if files.is_empty() {
        crate::errln!(
            "no workflows in `{}`; `ccflow init` creates one",
            ctx.root.join(discover::WORKFLOW_DIR).display()
        );
        return Ok(ExitStatus::Success);
    }
    for path in files {
        let display = display_path(&path, &ctx.cwd);
        let loaded = resolve::load(&path, &display, &ctx.root, &BTreeMap::new());
        match loaded.workflow {
            Some(workflow) => {
                let description = workflow
                    .description
                    .as_deref()
                    .map(|d| format!(" — {d}"))
                    .unwrap_or_default();
                crate::outln!("{}  ({display}){description}", workflow.name);
                for task in &workflow.tasks {
                    let kind = if task.is_agent() { "agent" } else { "run" };
                    let fan = if task.for_each.is_some() {
                        " [fan-out]"
                    } else {
                        ""
                    };
                    let description = task
                        .description
                        .as_deref()
                        .map(|d| format!("  {d}"))
                        .unwrap_or_default();
                    crate::outln!("  {:<20} {kind}{fan}{description}", task.name);
                }
            }
            None => {
                let errors = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
                crate::outln!(
                    "{display}  (invalid: {errors} errors; run `ccflow validate {display}`)"
                );
            }
        }
    }
    Ok(ExitStatus::Success)
}
