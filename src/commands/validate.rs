//! `ccflow validate [FILES]`: every pass up to planning, nothing runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::common;
use super::Ctx;
use crate::cli::{ValidateArgs, ValidateFormat};
use crate::diagnostic::Diagnostic;
use crate::error::{CommandResult, ExitStatus};
use crate::graph::Plan;
use crate::workflow::discover;
use crate::workflow::resolve::{self, display_path};

/// Validates the given workflows (or all), reporting every error of each file.
///
/// # Errors
/// A workflow argument that names no file.
pub fn run(args: &ValidateArgs, ctx: &Ctx) -> CommandResult {
    let paths = if args.files.is_empty() {
        discover::list_workflows(&ctx.root)
    } else {
        args.files
            .iter()
            .map(|f| common::find(ctx, f))
            .collect::<Result<Vec<_>, _>>()?
    };
    if paths.is_empty() {
        crate::errln!("no workflows to validate; `ccflow init` creates one");
        return Ok(ExitStatus::Success);
    }
    let mut reports = Vec::new();
    let mut failed = 0;
    for path in &paths {
        let display = display_path(path, &ctx.cwd);
        let loaded = resolve::load(path, &display, &ctx.root, &BTreeMap::new());
        let mut diagnostics: Vec<Diagnostic> = loaded.diagnostics;
        let mut instances = None;
        if let Some(workflow) = loaded.workflow {
            // Planning renders every template: undefined variables surface here.
            match Plan::build(Arc::new(workflow), "validate") {
                Ok(plan) => {
                    instances = Some(plan.graph.node_count());
                    diagnostics.extend(plan.warnings);
                }
                Err(errors) => diagnostics.extend(errors),
            }
        }
        let ok = !diagnostics.iter().any(Diagnostic::is_error);
        if !ok {
            failed += 1;
        }
        match args.format {
            ValidateFormat::Human => {
                common::print_diagnostics(ctx, &diagnostics);
                if ok {
                    let count = instances.unwrap_or(0);
                    crate::errln!(
                        "ok: {display} ({})",
                        crate::report::counted(count, "instance")
                    );
                }
            }
            ValidateFormat::Json => reports.push(serde_json::json!({
                "file": display,
                "valid": ok,
                "instances": instances,
                "diagnostics": diagnostics.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
            })),
        }
    }
    if args.format == ValidateFormat::Json {
        let out = serde_json::json!({ "version": 1, "valid": failed == 0, "files": reports });
        crate::outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if failed > 0 {
        crate::errln!(
            "error: {failed} of {} workflow file{} invalid",
            paths.len(),
            if paths.len() == 1 { " is" } else { "s are" }
        );
    }
    Ok(if failed == 0 {
        ExitStatus::Success
    } else {
        ExitStatus::Invalid
    })
}
