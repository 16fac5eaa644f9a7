//! `ccflow explain WORKFLOW TASK[ITEM]`: why an instance would run — which
//! component of its cache key changed since its last cached entry (a file,
//! a variable, an upstream output), or that it never ran.

use std::collections::BTreeMap;

use super::common;
use super::Ctx;
use crate::cache::{StatIndex, Store};
use crate::cli::ExplainArgs;
use crate::error::{CommandError, CommandResult, ExitStatus};
use crate::exec::instance::{instance_key, KeyContext};
use crate::graph::{NodeKind, Plan};

/// Explains one instance.
///
/// # Errors
/// Invalid workflow, unknown instance (exit 2).
pub fn run(args: &ExplainArgs, ctx: &Ctx) -> CommandResult {
    let vars = common::parse_vars(&args.vars)?;
    let workflow = common::load(ctx, &args.workflow, &vars)?;
    let plan = Plan::build(workflow.clone(), "explain").map_err(|errors| {
        common::print_diagnostics(ctx, &errors);
        CommandError::usage("the workflow cannot be planned")
    })?;
    let Some(&node) = plan
        .by_id
        .get(&crate::graph::InstanceId(args.instance.clone()))
    else {
        let ids: Vec<String> = plan
            .ordered_nodes()
            .iter()
            .map(|n| plan.graph[*n].id.0.clone())
            .collect();
        let mut error = CommandError::usage(format!(
            "no instance `{}` in workflow `{}`",
            args.instance, workflow.name
        ));
        if let Some(h) =
            crate::diagnostic::did_you_mean(&args.instance, ids.iter().map(String::as_str))
        {
            error = error.hint(h);
        } else {
            let shown: Vec<&str> = ids.iter().take(8).map(String::as_str).collect();
            error = error.hint(format!(
                "instances: {}{}",
                shown.join(", "),
                if ids.len() > 8 { ", ..." } else { "" }
            ));
        }
        return Err(error);
    };
    let instance = &plan.graph[node];
    if instance.kind != NodeKind::Instance {
        crate::outln!(
            "`{}` expands at run time (dynamic fan-out); explain one of its instances after a run",
            instance.id
        );
        return Ok(ExitStatus::Success);
    }
    let task = &workflow.tasks[instance.task];
    let store = Store::open(&ctx.state_dir.join("cache"))
        .map_err(|e| CommandError::usage(format!("cannot open the cache: {e}")))?;
    let index = StatIndex::open(&ctx.state_dir.join("index"))
        .map_err(|e| CommandError::usage(format!("cannot open the index: {e}")))?;
    let Some(previous) = store
        .latest_for_instance(&instance.id.0)
        .map_err(|e| CommandError::usage(e.to_string()))?
    else {
        crate::outln!(
            "`{}` never ran (no cached entry): it would run",
            instance.id
        );
        return Ok(ExitStatus::Success);
    };
    if !task.cache {
        crate::outln!("`{}` has `cache: false`: it always runs", instance.id);
        return Ok(ExitStatus::Success);
    }
    // Upstream outputs as their latest entries recorded them.
    let mut deps = BTreeMap::new();
    for upstream in plan
        .graph
        .neighbors_directed(node, petgraph::Direction::Incoming)
    {
        let id = &plan.graph[upstream].id.0;
        match store.latest_for_instance(id) {
            Ok(Some(entry)) => {
                deps.insert(id.clone(), entry.outputs_digest());
            }
            _ => {
                crate::outln!("`{}` would run: upstream `{id}` never ran", instance.id);
                return Ok(ExitStatus::Success);
            }
        }
    }
    let rendered = instance.rendered.clone().unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::usage(format!("cannot start the runtime: {e}")))?;
    let (_, image_ids) =
        common::prepare_docker(&runtime, &workflow, &[instance.task], None, &ctx.state_dir)?;
    let keys = KeyContext {
        workflow: &workflow,
        root: &ctx.root,
        index: &index,
        image_ids: &image_ids,
    };
    let (mut key, _) = instance_key(&keys, task, &rendered, &deps).map_err(CommandError::usage)?;
    // Agent keys carry the CLI version.
    if let crate::workflow::TaskKind::Agent(agent) = &task.kind {
        match crate::exec::agent_docker::locate_claude(task.runner, agent.command.as_deref()) {
            Ok((_, version)) => {
                key.extra.insert("claude_version".into(), version);
            }
            Err(e) => crate::outln!("note: {e}; comparing without the CLI version"),
        }
        if !key.extra.contains_key("claude_version") {
            if let Some(v) = previous.key.extra.get("claude_version") {
                key.extra.insert("claude_version".into(), v.clone());
            }
        }
    }
    let _ = index.save();
    // In-place instances are also up to date against their post-state.
    let mut post = previous.key.clone();
    for (path, hash) in &previous.post_state {
        post.inputs.insert(path.clone(), hash.clone());
    }
    if key == previous.key || (!previous.post_state.is_empty() && key == post) {
        crate::outln!(
            "`{}` is up to date: its cache key is unchanged since the last run ({})",
            instance.id,
            &key.hash().to_string()[..12]
        );
        return Ok(ExitStatus::Success);
    }
    // An older entry (an input edited back), or for a task whose outputs
    // are its inputs, the entry that restores the deleted ones.
    let key_hash = key.hash();
    if let Ok(Some(entry)) =
        crate::exec::instance::lookup_instance(&store, &key, &key_hash, &rendered)
    {
        crate::outln!(
            "`{}` is cached: an earlier run left a result for its current inputs ({}); \
             a run restores its {} output(s) from it",
            instance.id,
            &key_hash.to_string()[..12],
            entry.outputs.len()
        );
        return Ok(ExitStatus::Success);
    }
    let base = if previous.post_state.is_empty() {
        &previous.key
    } else {
        &post
    };
    let changes = key.changes_since(base);
    crate::outln!("`{}` would run; since its last cached result:", instance.id);
    for change in changes {
        crate::outln!("  - {change}");
    }
    Ok(ExitStatus::Success)
}
