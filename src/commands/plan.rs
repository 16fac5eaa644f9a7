//! `ccflow plan WORKFLOW`: the instance graph in text, JSON, dot or mermaid,
//! with what would run and what is cached, and an estimate of the agents'
//! cost from earlier runs' records.

use std::collections::{BTreeMap, HashMap};

use petgraph::Direction;

use super::common;
use super::Ctx;
use crate::cache::{StatIndex, Store};
use crate::cli::{PlanArgs, PlanFormat};
use crate::error::{CommandResult, ExitStatus};
use crate::exec::instance::{instance_key, KeyContext};
use crate::graph::{format, NodeKind, Plan};
use crate::report::record::{list_runs, InstanceStatus, RunRecord};

/// The most instances whose cache status `plan` predicts.
const ANNOTATE_LIMIT: usize = 20_000;

/// Prints the plan.
///
/// # Errors
/// Invalid workflow or arguments (exit 2).
pub fn run(args: &PlanArgs, ctx: &Ctx) -> CommandResult {
    let vars = common::parse_vars(&args.vars)?;
    let workflow = common::load(ctx, &args.workflow, &vars)?;
    let plan = common::plan(ctx, workflow, "plan", &args.tasks)?;
    let notes = annotate(&plan, ctx);
    match args.format {
        PlanFormat::Text => {
            crate::out!("{}", format::text(&plan, &notes));
            let would_run = notes.values().filter(|n| n.starts_with("run")).count();
            let cached = notes.values().filter(|n| *n == "cached").count();
            crate::outln!("\n{would_run} would run, {cached} cached");
            if let Some((cost, sessions)) = estimate_cost(&plan, &notes, ctx) {
                crate::outln!("estimated agent cost of what would run: ${cost:.4} (from {sessions} earlier sessions)");
            }
        }
        PlanFormat::Json => {
            let mut extra = Vec::new();
            if let Some((cost, sessions)) = estimate_cost(&plan, &notes, ctx) {
                extra.push(("estimated_cost_usd", serde_json::json!(cost)));
                extra.push(("estimate_sessions", serde_json::json!(sessions)));
            }
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = format::write_json(&plan, &notes, &extra, &mut out)
                .and_then(|()| std::io::Write::flush(&mut out));
        }
        PlanFormat::Dot => crate::out!("{}", format::dot(&plan, &notes)),
        PlanFormat::Mermaid => crate::out!("{}", format::mermaid(&plan, &notes)),
    }
    // Freeing a plan of 100,000 instances one allocation at a time costs a
    // tenth of the command's time, just before the process exits anyway.
    std::mem::forget(plan);
    Ok(ExitStatus::Success)
}

/// Predicts, per instance, `cached` or `run (...)`, walking the graph in
/// order so upstream predictions feed downstream keys (early cutoff included).
fn annotate(plan: &Plan, ctx: &Ctx) -> format::Annotations {
    let mut notes = format::Annotations::new();
    // Predicting means hashing every input: past this size `plan` stays a
    // quick look at the graph, and `run` finds out what is cached.
    if plan.graph.node_count() > ANNOTATE_LIMIT {
        crate::errln!(
            "note: {} instances: cache status not computed (more than {ANNOTATE_LIMIT})",
            plan.graph.node_count()
        );
        return notes;
    }
    let store = Store::open(&ctx.state_dir.join("cache")).ok();
    let index = StatIndex::open(&ctx.state_dir.join("index")).ok();
    let (Some(store), Some(index)) = (store, index) else {
        return notes;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok();
    let all_tasks: Vec<usize> = (0..plan.workflow.tasks.len()).collect();
    let image_ids = runtime
        .as_ref()
        .and_then(|rt| {
            common::prepare_docker(rt, &plan.workflow, &all_tasks, None, &ctx.state_dir).ok()
        })
        .map(|(_, ids)| ids)
        .unwrap_or_default();
    let mut claude_versions: HashMap<
        (crate::workflow::raw::Runner, Option<String>),
        Option<String>,
    > = HashMap::new();
    let mut predicted: HashMap<petgraph::stable_graph::NodeIndex, Option<String>> = HashMap::new();
    let Ok(order) = petgraph::algo::toposort(&plan.graph, None) else {
        return notes;
    };
    let keys = KeyContext {
        workflow: &plan.workflow,
        root: &ctx.root,
        index: &index,
        image_ids: &image_ids,
    };
    for node in order {
        let instance = &plan.graph[node];
        let task = &plan.workflow.tasks[instance.task];
        let note = (|| {
            if instance.kind != NodeKind::Instance {
                return ("run (expands at run time)".to_owned(), None);
            }
            let Some(rendered) = &instance.rendered else {
                return ("run".to_owned(), None);
            };
            if !rendered.enabled {
                return ("skip (`if` is false)".to_owned(), Some(String::new()));
            }
            if !task.cache {
                return ("run (cache: false)".to_owned(), None);
            }
            let mut deps = BTreeMap::new();
            for upstream in plan.graph.neighbors_directed(node, Direction::Incoming) {
                match predicted.get(&upstream) {
                    Some(Some(digest)) => {
                        deps.insert(plan.graph[upstream].id.0.clone(), digest.clone());
                    }
                    _ => return (format!("run (after `{}`)", plan.graph[upstream].id), None),
                }
            }
            let rendered = (**rendered).clone();
            let Ok((mut key, _)) = instance_key(&keys, task, &rendered, &deps) else {
                return ("run (inputs unreadable)".to_owned(), None);
            };
            if let crate::workflow::TaskKind::Agent(agent) = &task.kind {
                let version = claude_versions
                    .entry((task.runner, agent.command.clone()))
                    .or_insert_with(|| {
                        crate::exec::agent_docker::locate_claude(
                            task.runner,
                            agent.command.as_deref(),
                        )
                        .ok()
                        .map(|(_, version)| version)
                    })
                    .clone();
                let Some(version) = version else {
                    return ("run (claude CLI not found)".to_owned(), None);
                };
                key.extra.insert("claude_version".into(), version);
            }
            match crate::exec::instance::lookup_instance(&store, &key, &key.hash(), &rendered) {
                Ok(Some(entry)) => ("cached".to_owned(), Some(entry.outputs_digest())),
                _ => ("run".to_owned(), None),
            }
        })();
        predicted.insert(node, note.1);
        notes.insert(instance.id.clone(), note.0);
    }
    let _ = index.save();
    notes
}

/// The mean cost of each agent task's sessions in earlier runs, applied to
/// the instances that would run.
fn estimate_cost(plan: &Plan, notes: &format::Annotations, ctx: &Ctx) -> Option<(f64, usize)> {
    if !plan
        .workflow
        .tasks
        .iter()
        .any(crate::workflow::Task::is_agent)
    {
        return None;
    }
    let mut per_task: HashMap<String, (f64, usize)> = HashMap::new();
    for dir in list_runs(&ctx.state_dir).into_iter().take(50) {
        let Ok(record) = RunRecord::read(&dir) else {
            continue;
        };
        if record.workflow != plan.workflow.name {
            continue;
        }
        for instance in &record.instances {
            if instance.status != InstanceStatus::Cached && instance.usage.cost_usd > 0.0 {
                let entry = per_task.entry(instance.task.clone()).or_default();
                entry.0 += instance.usage.cost_usd;
                entry.1 += 1;
            }
        }
    }
    let sessions: usize = per_task.values().map(|v| v.1).sum();
    if sessions == 0 {
        return None;
    }
    let mut total = 0.0;
    for node in plan.ordered_nodes() {
        let instance = &plan.graph[node];
        let task = &plan.workflow.tasks[instance.task];
        if !task.is_agent()
            || !notes
                .get(&instance.id)
                .is_some_and(|n| n.starts_with("run"))
        {
            continue;
        }
        if let Some((sum, count)) = per_task.get(&task.name) {
            #[expect(clippy::cast_precision_loss, reason = "session counts are small")]
            let mean = sum / *count as f64;
            total += mean;
        }
    }
    Some((total, sessions))
}
