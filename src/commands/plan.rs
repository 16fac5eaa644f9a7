//! `ccflow plan WORKFLOW`: the instance graph in text, JSON, dot or mermaid.

use super::common;
use super::Ctx;
use crate::cli::{PlanArgs, PlanFormat};
use crate::error::{CommandError, CommandResult, ExitStatus};
use crate::graph::{format, Plan};

/// Prints the plan.
///
/// # Errors
/// Invalid workflow or arguments (exit 2).
pub fn run(args: &PlanArgs, ctx: &Ctx) -> CommandResult {
    let vars = common::parse_vars(&args.vars)?;
    let workflow = common::load(ctx, &args.workflow, &vars)?;
    let mut plan = match Plan::build(workflow, "plan") {
        Ok(plan) => plan,
        Err(errors) => {
            common::print_diagnostics(ctx, &errors);
            return Err(CommandError::usage("the workflow cannot be planned"));
        }
    };
    common::print_diagnostics(ctx, &plan.warnings);
    if let Err(d) = plan.select(&args.tasks) {
        common::print_diagnostics(ctx, &[d]);
        return Ok(ExitStatus::Invalid);
    }
    let notes = format::Annotations::new();
    match args.format {
        PlanFormat::Text => print!("{}", format::text(&plan, &notes)),
        PlanFormat::Json => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = format::write_json(&plan, &notes, &mut out).and_then(|()| std::io::Write::flush(&mut out));
        }
        PlanFormat::Dot => print!("{}", format::dot(&plan, &notes)),
        PlanFormat::Mermaid => print!("{}", format::mermaid(&plan, &notes)),
    }
    // Freeing a plan of 100,000 instances one allocation at a time costs a
    // tenth of the command's time, just before the process exits anyway.
    std::mem::forget(plan);
    Ok(ExitStatus::Success)
}
