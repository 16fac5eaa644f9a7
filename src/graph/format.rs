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
        "workflow `{}`: {}, {}",
        workflow.name,
        crate::report::counted(workflow.tasks.len(), "task"),
        crate::report::counted(total, "instance")
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
            "\n{} [{kind}, {}]{needs}",
            task.name,
            crate::report::counted(nodes.len(), "instance")
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
    serde_json::to_value(PlanJson {
        plan,
        notes,
        extra: &[],
    })
    .unwrap_or(serde_json::Value::Null)
}

/// Writes the JSON view (pretty, with a final newline) straight to `out`,
/// without building it in memory first: a plan of 100,000 instances as a
/// `serde_json::Value` takes hundreds of megabytes.
///
/// # Errors
/// Writing to `out` failed.
pub fn write_json(
    plan: &Plan,
    notes: &Annotations,
    extra: &[(&str, serde_json::Value)],
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &PlanJson { plan, notes, extra })?;
    out.write_all(b"\n")
}

struct PlanJson<'a> {
    plan: &'a Plan,
    notes: &'a Annotations,
    extra: &'a [(&'a str, serde_json::Value)],
}

impl serde::Serialize for PlanJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let plan = self.plan;
        let workflow = &plan.workflow;
        let tasks: Vec<serde_json::Value> = workflow
            .tasks
            .iter()
            .enumerate()
            .map(|(index, t)| {
                serde_json::json!({
                    "name": t.name,
                    "kind": if t.is_agent() { "agent" } else { "run" },
                    "needs": t.needs,
                    "instances": plan.task_nodes[index].len(),
                })
            })
            .collect();
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("version", &PLAN_JSON_VERSION)?;
        map.serialize_entry("workflow", &workflow.name)?;
        map.serialize_entry("file", &workflow.file.name)?;
        map.serialize_entry("tasks", &tasks)?;
        map.serialize_entry("instances", &InstancesJson(self))?;
        map.serialize_entry("edges", &EdgesJson(plan))?;
        for (key, value) in self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

struct InstancesJson<'a>(&'a PlanJson<'a>);

impl serde::Serialize for InstancesJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let plan = self.0.plan;
        let notes = self.0.notes;
        serializer.collect_seq(plan.ordered_nodes().into_iter().map(|node| {
            let instance = &plan.graph[node];
            let task = &plan.workflow.tasks[instance.task];
            InstanceJson {
                id: &instance.id,
                task: &task.name,
                label: instance.label.as_deref(),
                item: instance.item.as_ref(),
                kind: match task.kind {
                    TaskKind::Shell { .. } => "run",
                    TaskKind::Agent(_) => "agent",
                },
                dynamic: instance.kind == NodeKind::Pending,
                needs: plan
                    .graph
                    .edges_directed(node, petgraph::Direction::Incoming)
                    .map(|e| plan.graph[e.source()].id.0.as_str())
                    .collect(),
                rendered: instance.rendered.as_deref(),
                priority: task.priority,
                critical_path: instance.depth,
                status: notes.get(&instance.id).map(String::as_str),
            }
        }))
    }
}

#[derive(serde::Serialize)]
struct InstanceJson<'a> {
    id: &'a InstanceId,
    task: &'a str,
    label: Option<&'a str>,
    item: Option<&'a crate::fanout::ItemValue>,
    kind: &'static str,
    dynamic: bool,
    needs: Vec<&'a str>,
    rendered: Option<&'a super::instance::RenderedInstance>,
    priority: i32,
    critical_path: u32,
    status: Option<&'a str>,
}

struct EdgesJson<'a>(&'a Plan);

impl serde::Serialize for EdgesJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let graph = &self.0.graph;
        serializer.collect_seq(graph.edge_references().map(|e| {
            serde_json::json!({
                "from": graph[e.source()].id,
                "to": graph[e.target()].id,
                "kind": e.weight(),
            })
        }))
    }
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
