//! Views of a plan: human text, JSON (documented in the README), Graphviz
//! dot and Mermaid. Each takes an optional status per instance (`cached`,
//! `run`) so `plan` can say what would run.

use std::collections::HashMap;
use std::fmt::Write as _;

use petgraph::visit::{EdgeRef, IntoEdgeReferences};

use super::instance::InstanceId;
use super::plan::{EdgeKind, NodeKind, Plan};
use crate::workflow::TaskKind;

/// Version of the JSON produced by `plan --format json`.
pub const PLAN_JSON_VERSION: u32 = 1;

/// Per-instance annotation shown by `plan` (e.g. `cached`, `run`).
pub type Annotations = HashMap<InstanceId, String>;

fn short(text: &str, limit: usize) -> String {
    let one_line = text.replace('\n', " ⏎ ");
    if one_line.chars().count() > limit {
        one_line
            .chars()
            .take(limit.saturating_sub(1))
            .collect::<String>()
            + "…"
    } else {
        one_line
    }
}

/// The text view: tasks in order, each instance with what it runs.
#[must_use]
pub fn text(plan: &Plan, notes: &Annotations) -> String {
    let workflow = &plan.workflow;
    let mut out = String::new();
    let total: usize = plan.task_nodes.iter().map(Vec::len).sum();
    let _ = writeln!(
        out,
        "workflow `{}`: {} tasks, {} instances",
        workflow.name,
        workflow.tasks.len(),
        total
    );
    for (index, task) in workflow.tasks.iter().enumerate() {
        let nodes = &plan.task_nodes[index];
        if nodes.is_empty()
            && !plan
                .graph
                .node_indices()
                .any(|n| plan.graph[n].task == index)
        {
            let _ = writeln!(out, "\n{} (0 instances)", task.name);
            continue;
        }
        let kind = if task.is_agent() { "agent" } else { "run" };
        let needs = if task.needs.is_empty() {
            String::new()
        } else {
            format!(" needs: {}", task.needs.join(", "))
        };
        let _ = writeln!(
            out,
            "\n{} [{kind}, {} instance{}]{needs}",
            task.name,
            nodes.len(),
            if nodes.len() == 1 { "" } else { "s" }
        );
        for node in nodes {
            let instance = &plan.graph[*node];
            let note = notes
                .get(&instance.id)
                .map(|n| format!("  ({n})"))
                .unwrap_or_default();
            if instance.kind == NodeKind::Pending {
                let _ = writeln!(out, "  {}  (expands at run time){note}", instance.id);
                continue;
            }
            let what = instance.rendered.as_ref().map_or_else(String::new, |r| {
                let body = r.command.as_deref().or(r.prompt.as_deref()).unwrap_or("");
                let skipped = if r.enabled {
                    ""
                } else {
                    "  [skipped: if is false]"
                };
                format!("{}{skipped}", short(body, 70))
            });
            let _ = writeln!(out, "  {}  {what}{note}", instance.id);
        }
    }
    out
}

/// The JSON view (see README "plan --format json").
#[must_use]
pub fn json(plan: &Plan, notes: &Annotations) -> serde_json::Value {
    let workflow = &plan.workflow;
    let instances: Vec<serde_json::Value> = plan
        .ordered_nodes()
        .into_iter()
        .map(|node| {
            let instance = &plan.graph[node];
            let task = &workflow.tasks[instance.task];
            let needs: Vec<String> = plan
                .graph
                .edges_directed(node, petgraph::Direction::Incoming)
                .map(|e| plan.graph[e.source()].id.0.clone())
                .collect();
            serde_json::json!({
                "id": instance.id,
                "task": task.name,
                "label": instance.label,
                "item": instance.item.as_ref().map(crate::fanout::ItemValue::to_json),
                "kind": match task.kind { TaskKind::Shell { .. } => "run", TaskKind::Agent(_) => "agent" },
                "dynamic": instance.kind == NodeKind::Pending,
                "needs": needs,
                "rendered": instance.rendered.as_deref(),
                "priority": task.priority,
                "critical_path": instance.depth,
                "status": notes.get(&instance.id),
            })
        })
        .collect();
    let edges: Vec<serde_json::Value> = (&plan.graph)
        .edge_references()
        .map(|e| {
            serde_json::json!({
                "from": plan.graph[e.source()].id,
                "to": plan.graph[e.target()].id,
                "kind": e.weight(),
            })
        })
        .collect();
    serde_json::json!({
        "version": PLAN_JSON_VERSION,
        "workflow": workflow.name,
        "file": workflow.file.name,
        "tasks": workflow.tasks.iter().map(|t| serde_json::json!({
            "name": t.name,
            "kind": if t.is_agent() { "agent" } else { "run" },
            "needs": t.needs,
            "instances": plan.task_nodes[workflow.task_index(&t.name).unwrap_or(0)].len(),
        })).collect::<Vec<_>>(),
        "instances": instances,
        "edges": edges,
    })
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// Graphviz dot.
#[must_use]
pub fn dot(plan: &Plan, notes: &Annotations) -> String {
    let mut out = String::from(
        "digraph ccflow {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    let index: HashMap<_, _> = plan
        .ordered_nodes()
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    for (node, i) in &index {
        let instance = &plan.graph[*node];
        let note = notes
            .get(&instance.id)
            .map(|n| format!("\\n({n})"))
            .unwrap_or_default();
        let style = if instance.kind == NodeKind::Pending {
            ", style=dashed"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {} [label=\"{}{note}\"{style}];",
            node_name(*i),
            instance.id.0.replace('\\', "\\\\").replace('"', "\\\"")
        );
    }
    for edge in (&plan.graph).edge_references() {
        let (Some(a), Some(b)) = (index.get(&edge.source()), index.get(&edge.target())) else {
            continue;
        };
        let style = if *edge.weight() == EdgeKind::PerItem {
            " [style=bold]"
        } else {
            ""
        };
        let _ = writeln!(out, "  {} -> {}{style};", node_name(*a), node_name(*b));
    }
    out.push_str("}\n");
    out
}

/// Mermaid flowchart.
#[must_use]
pub fn mermaid(plan: &Plan, notes: &Annotations) -> String {
    let mut out = String::from("flowchart LR\n");
    let index: HashMap<_, _> = plan
        .ordered_nodes()
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    let mut nodes: Vec<_> = index.iter().collect();
    nodes.sort_by_key(|(_, i)| **i);
    for (node, i) in nodes {
        let instance = &plan.graph[*node];
        let note = notes
            .get(&instance.id)
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let label = format!("{}{note}", instance.id.0).replace('"', "#quot;");
        let _ = writeln!(out, "  {}[\"{label}\"]", node_name(*i));
    }
    for edge in (&plan.graph).edge_references() {
        let (Some(a), Some(b)) = (index.get(&edge.source()), index.get(&edge.target())) else {
            continue;
        };
        let arrow = if *edge.weight() == EdgeKind::PerItem {
            "==>"
        } else {
            "-->"
        };
        let _ = writeln!(out, "  {} {arrow} {}", node_name(*a), node_name(*b));
    }
    out
}
