//! The instance graph (petgraph): one node per task instance, edges for
//! dependencies — `Reduce` (every instance of A before every instance of B)
//! or `PerItem` (`from:`, A[i] before B[i]). Dynamic fan-outs (`lines_of`,
//! `json_of`) are placeholder nodes until their producer has run; the
//! scheduler then calls [`Plan::expand`] and the graph grows.
//!
//! A [`Plan`] is only built from a checked `Workflow` (task-level cycles are
//! rejected there), so it is acyclic by construction; the scheduler accepts
//! nothing else.

#![expect(
    clippy::result_large_err,
    reason = "a Diagnostic is built once per failure and carries its source; boxing buys nothing here"
)]

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use super::instance::{base_context, InstanceId, NeedContext, RenderedInstance, TaskTemplates};
use crate::diagnostic::Diagnostic;
use crate::fanout::{self, Item, ItemValue};
use crate::template::Templates;
use crate::workflow::{FanSource, Workflow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    Reduce,
    PerItem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Instance,
    /// A dynamic fan-out not yet expanded.
    Pending,
    /// A dynamic fan-out already expanded into instances (kept for its edges).
    Expanded,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: InstanceId,
    pub task: usize,
    pub label: Option<String>,
    pub item: Option<ItemValue>,
    pub kind: NodeKind,
    /// Plan-time rendering (None for pending fan-outs, and for instances
    /// whose rendering [`Plan::build_deferring`] deferred).
    pub rendered: Option<Arc<RenderedInstance>>,
    /// Longest path (in instances) from here to a sink: critical path first.
    pub depth: u32,
}

/// A planned workflow.
pub struct Plan {
    pub workflow: Arc<Workflow>,
    pub templates: Arc<Templates>,
    pub graph: StableDiGraph<Instance, EdgeKind>,
    /// foldhash: a plan of 1,000 instances inserts 1,000 ids.
    pub by_id: HashMap<InstanceId, NodeIndex, foldhash::fast::FixedState>,
    /// Nodes of each task (by task index), in item order.
    pub task_nodes: Vec<Vec<NodeIndex>>,
    pub warnings: Vec<Diagnostic>,
    pub run_id: String,
}

/// Plan-time status of every task, for `needs.X.status`.
const PLAN_STATUS: &str = "pending";

impl Plan {
    /// Expands and renders every instance.
    ///
    /// # Errors
    /// Every template or fan-out problem found, each with its location.
    pub fn build(workflow: Arc<Workflow>, run_id: &str) -> Result<Plan, Vec<Diagnostic>> {
        Plan::build_deferring(workflow, run_id, &|_| false)
    }

    /// [`Plan::build`], leaving unrendered (`rendered: None`) the instances
    /// `defer` names: those the up-to-date memo settles are not run, so a
    /// run after a one-file edit need not render the 999 others; the
    /// scheduler renders one should it start it after all. Only when no
    /// task's templates read run-time state (`needs`, `run.`, `read_file`):
    /// then no template reads another instance's rendering, and rendering
    /// later gives what rendering now would.
    ///
    /// # Errors
    /// Every template or fan-out problem found, each with its location.
    pub fn build_deferring(
        workflow: Arc<Workflow>,
        run_id: &str,
        defer: &dyn Fn(&str) -> bool,
    ) -> Result<Plan, Vec<Diagnostic>> {
        let never = |_: &str| false;
        let defer = if workflow.tasks.iter().any(uses_runtime_context) {
            &never
        } else {
            defer
        };
        let templates = Arc::new(Templates::new(&workflow.root));
        let mut plan = Plan {
            workflow: Arc::clone(&workflow),
            templates,
            graph: StableDiGraph::new(),
            by_id: HashMap::default(),
            task_nodes: vec![Vec::new(); workflow.tasks.len()],
            warnings: Vec::new(),
            run_id: run_id.to_owned(),
        };
        let mut errors = Vec::new();
        for task_index in task_order(&workflow) {
            if let Err(mut e) = plan.add_task(task_index, defer) {
                errors.append(&mut e);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let errors = plan.shared_outputs();
        if !errors.is_empty() {
            return Err(errors);
        }
        plan.compute_depths();
        Ok(plan)
    }

    /// Two instances that write the same file and may run at the same time
    /// (neither needs the other) race: one `sed -i` loses the other's edit,
    /// and the cache keeps whichever finished last. As Bazel and ninja do,
    /// the plan rejects them (shell tasks: agents work in worktrees of their
    /// own, see below). Literal paths only (a glob's matches are only
    /// known once the tasks have run); identical instances of one task run
    /// once, so they do not count; unrendered (deferred) instances were
    /// checked by the run that left the memo deferring them.
    fn shared_outputs(&self) -> Vec<Diagnostic> {
        const SHOWN: usize = 20;
        let mut writers: HashMap<Cow<'_, str>, NodeIndex, foldhash::fast::FixedState> =
            HashMap::default();
        let mut conflicts: Vec<(Cow<'_, str>, NodeIndex, NodeIndex)> = Vec::new();
        for node in self.ordered_nodes() {
            let Some(rendered) = &self.graph[node].rendered else {
                continue;
            };
            // Agents edit a worktree of their own; their diffs land one
            // after another, by a three-way apply that keeps a conflict.
            if !rendered.enabled || self.workflow.tasks[self.graph[node].task].is_agent() {
                continue;
            }
            for output in &rendered.outputs {
                if crate::exec::paths::has_glob(output) {
                    continue;
                }
                // Spelled as the cache spells it; one that leaves the
                // root was rejected when the instance was rendered.
                let Ok(path) = crate::cache::store::normalize_rel(output) else {
                    continue;
                };
                match writers.get(&path) {
                    None => {
                        writers.insert(path, node);
                    }
                    Some(&other) if other == node => {}
                    Some(&other) => {
                        let (a, b) = (&self.graph[other], &self.graph[node]);
                        let identical = a.task == b.task && a.rendered == b.rendered;
                        let ordered =
                            petgraph::algo::has_path_connecting(&self.graph, other, node, None)
                                || petgraph::algo::has_path_connecting(
                                    &self.graph,
                                    node,
                                    other,
                                    None,
                                );
                        if !identical && !ordered {
                            conflicts.push((path, other, node));
                        }
                    }
                }
            }
        }
        let total = conflicts.len();
        let workflow = &self.workflow;
        let mut errors: Vec<Diagnostic> = conflicts
            .into_iter()
            .take(SHOWN)
            .map(|(path, first, second)| {
                let (a, b) = (&self.graph[first], &self.graph[second]);
                let (task_a, task_b) = (&workflow.tasks[a.task].name, &workflow.tasks[b.task].name);
                let hint = if a.task == b.task {
                    format!(
                        "two items of `{task_b}` render the same output; name it after the \
                         whole item (`{{{{ item }}}}`, or `{{{{ item.dir }}}}/...`), not just its stem"
                    )
                } else {
                    format!(
                        "make one wait for the other (`needs: [{task_a}]` in `{task_b}`), \
                         or give them different outputs"
                    )
                };
                let pointer = format!(
                    "/tasks/{}/outputs",
                    crate::workflow::yaml::pointer_segment(task_b)
                );
                Diagnostic::error(
                    "shared-output",
                    format!(
                        "output `{path}` is written by both `{}` and `{}`, which may run at the same time",
                        a.id.0, b.id.0
                    ),
                )
                .at(&workflow.file, workflow.spans.key_or_value(&pointer))
                .with_hint(hint)
            })
            .collect();
        if total > SHOWN {
            errors.push(
                Diagnostic::error(
                    "shared-output",
                    format!(
                        "{} more outputs are written by two instances",
                        total - SHOWN
                    ),
                )
                .in_file(&workflow.file),
            );
        }
        errors
    }

    fn needs_context(&self, task_index: usize) -> BTreeMap<String, NeedContext> {
        let task = &self.workflow.tasks[task_index];
        // Only what the templates read is gathered: a reduce over 100,000
        // instances would otherwise copy every output path and item.
        let referenced: std::collections::HashSet<String> = task_sources(task)
            .into_iter()
            .flat_map(|source| self.templates.referenced(source))
            .collect();
        let wants = |need: &str, field: &str| {
            referenced.iter().any(|name| {
                let Some(rest) = name.strip_prefix("needs") else {
                    return false;
                };
                if rest.is_empty() {
                    return true;
                }
                let Some(rest) = rest.strip_prefix('.').and_then(|r| r.strip_prefix(need)) else {
                    return false;
                };
                rest.is_empty()
                    || rest
                        .strip_prefix('.')
                        .is_some_and(|r| r == field || r.starts_with(&format!("{field}.")))
            })
        };
        task.needs
            .iter()
            .filter_map(|need| {
                let index = self.workflow.task_index(need)?;
                let nodes = &self.task_nodes[index];
                let mut context = NeedContext {
                    status: PLAN_STATUS.into(),
                    ..NeedContext::default()
                };
                let (outputs, items) = (wants(need, "outputs"), wants(need, "items"));
                for node in nodes {
                    let instance = &self.graph[*node];
                    if let (true, Some(r)) = (outputs, &instance.rendered) {
                        context.outputs.extend(r.outputs.iter().cloned());
                    }
                    if let (true, Some(item)) = (items, &instance.item) {
                        context.items.push(item.to_json());
                    }
                }
                Some((need.clone(), context))
            })
            .collect()
    }

    fn add_task(
        &mut self,
        task_index: usize,
        defer: &dyn Fn(&str) -> bool,
    ) -> Result<(), Vec<Diagnostic>> {
        let workflow = Arc::clone(&self.workflow);
        let task = &workflow.tasks[task_index];
        let pointer = format!(
            "/tasks/{}/for_each",
            crate::workflow::yaml::pointer_segment(&task.name)
        );
        let fanout_error = |e: fanout::FanoutError| {
            vec![
                Diagnostic::error("fanout", format!("{e} (task `{}`)", task.name))
                    .at(&workflow.file, workflow.spans.key_or_value(&pointer)),
            ]
        };
        // Items, and for `from:` the partner node of each item.
        let mut partners: Vec<Option<NodeIndex>> = Vec::new();
        let items: Option<Vec<Item>> = match task.for_each.as_ref().map(|f| &f.source) {
            None => None,
            Some(FanSource::Files { globs, exclude }) => {
                let base = base_context(&workflow, task, &BTreeMap::new(), &self.run_id);
                let render_all = |list: &[String]| -> Result<Vec<String>, Vec<Diagnostic>> {
                    list.iter()
                        .map(|g| {
                            self.templates
                                .render(g, false, &base)
                                .map(|r| r.text)
                                .map_err(|e| {
                                    vec![Diagnostic::error(
                                        "template",
                                        format!(
                                            "{} in `for_each.files` of task `{}`",
                                            e.message, task.name
                                        ),
                                    )
                                    .at(&workflow.file, workflow.spans.value(&pointer))]
                                })
                        })
                        .collect()
                };
                let globs = render_all(globs)?;
                let exclude = render_all(exclude)?;
                Some(fanout::files(&workflow.root, &globs, &exclude).map_err(fanout_error)?)
            }
            Some(FanSource::Items(values)) => Some(fanout::items(values)),
            Some(FanSource::Matrix(matrix)) => Some(fanout::matrix(matrix)),
            Some(FanSource::From(upstream)) => {
                let upstream_index = workflow.task_index(upstream).unwrap_or(task_index);
                let nodes = self.task_nodes[upstream_index].clone();
                if nodes
                    .iter()
                    .any(|n| self.graph[*n].kind == NodeKind::Pending)
                {
                    // The upstream is dynamic: so is this task.
                    self.add_pending(task_index);
                    return Ok(());
                }
                let mut items = Vec::new();
                for node in nodes {
                    let instance = &self.graph[node];
                    items.push(Item {
                        label: instance
                            .label
                            .clone()
                            .unwrap_or_else(|| instance.id.0.clone()),
                        value: instance
                            .item
                            .clone()
                            .unwrap_or(ItemValue::Json(serde_json::Value::Null)),
                    });
                    partners.push(Some(node));
                }
                Some(items)
            }
            Some(FanSource::LinesOf(_) | FanSource::JsonOf(_)) => {
                self.add_pending(task_index);
                return Ok(());
            }
        };
        let items = items.map(|mut items| {
            if let Some(size) = task.for_each.as_ref().and_then(|f| f.batch) {
                items = fanout::batch(items, size);
            }
            fanout::unique_labels(&mut items);
            items
        });
        if let Some(items) = &items {
            if items.is_empty() {
                self.warnings.push(
                    Diagnostic::warning(
                        "empty-fanout",
                        format!(
                            "the fan-out of task `{}` matches nothing: zero instances",
                            task.name
                        ),
                    )
                    .at(&workflow.file, workflow.spans.key_or_value(&pointer))
                    .with_hint("check the glob or list; tasks that need it still run"),
                );
            }
        }
        self.add_instances(task_index, items, &partners, defer)
    }

    fn add_pending(&mut self, task_index: usize) {
        let task = &self.workflow.tasks[task_index];
        let node = self.graph.add_node(Instance {
            id: InstanceId::new(&task.name, Some("*")),
            task: task_index,
            label: Some("*".into()),
            item: None,
            kind: NodeKind::Pending,
            rendered: None,
            depth: 0,
        });
        self.by_id.insert(self.graph[node].id.clone(), node);
        self.task_nodes[task_index].push(node);
        self.connect_needs(task_index, node, None);
    }

    /// Adds (and renders) the instances of a task; `partners[i]` is the
    /// `from:` partner of item i.
    fn add_instances(
        &mut self,
        task_index: usize,
        items: Option<Vec<Item>>,
        partners: &[Option<NodeIndex>],
        defer: &dyn Fn(&str) -> bool,
    ) -> Result<(), Vec<Diagnostic>> {
        let workflow = Arc::clone(&self.workflow);
        let task = &workflow.tasks[task_index];
        let needs = self.needs_context(task_index);
        let base = base_context(&workflow, task, &needs, &self.run_id);
        let mut errors = Vec::new();
        let list: Vec<(Option<Item>, Option<NodeIndex>)> = match items {
            None => vec![(None, None)],
            Some(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| (Some(item), partners.get(i).copied().flatten()))
                .collect(),
        };
        let templates = Arc::clone(&self.templates);
        let compiled = TaskTemplates::compile(&workflow, &templates, task).map_err(|d| vec![d])?;
        // Room made once: growing the graph and the id map instance by
        // instance copied them over and over (~0.3 ms for 1,000).
        self.graph.reserve_nodes(list.len());
        self.by_id.reserve(list.len());
        self.task_nodes[task_index].reserve(list.len());
        for (item, partner) in list {
            let label = item.as_ref().map(|i| i.label.clone());
            let id = InstanceId::new(&task.name, label.as_deref());
            let rendered = if defer(&id.0) {
                None
            } else {
                match compiled.render(&workflow, task, item.as_ref().map(|i| &i.value), &base) {
                    Ok(r) => Some(Arc::new(r)),
                    Err(d) => {
                        // One error per task is enough: the same template fails for every item.
                        errors.push(d);
                        break;
                    }
                }
            };
            let node = self.graph.add_node(Instance {
                id: id.clone(),
                task: task_index,
                label,
                item: item.map(|i| i.value),
                kind: NodeKind::Instance,
                rendered,
                depth: 0,
            });
            self.by_id.insert(id, node);
            self.task_nodes[task_index].push(node);
            self.connect_needs(task_index, node, partner);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn connect_needs(&mut self, task_index: usize, node: NodeIndex, partner: Option<NodeIndex>) {
        let task = &self.workflow.tasks[task_index];
        let from = task.for_each.as_ref().and_then(|f| match &f.source {
            FanSource::From(t) => Some(t.clone()),
            _ => None,
        });
        for need in &task.needs {
            let Some(need_index) = self.workflow.task_index(need) else {
                continue;
            };
            if from.as_deref() == Some(need.as_str()) {
                if let Some(partner) = partner {
                    self.graph.add_edge(partner, node, EdgeKind::PerItem);
                    continue;
                }
                // A pending `from:` node waits on the pending upstream.
                for upstream in self.task_nodes[need_index].clone() {
                    self.graph.add_edge(upstream, node, EdgeKind::PerItem);
                }
                continue;
            }
            self.graph.reserve_edges(self.task_nodes[need_index].len());
            for upstream in self.task_nodes[need_index].clone() {
                self.graph.add_edge(upstream, node, EdgeKind::Reduce);
            }
        }
    }

    /// Expands a pending dynamic fan-out once its producers have run: adds its
    /// instances (and those of pending `from:` followers) and rewires edges.
    /// Returns the new nodes.
    ///
    /// # Errors
    /// The file cannot be read or rendered.
    pub fn expand(
        &mut self,
        pending: NodeIndex,
        needs: &BTreeMap<String, NeedContext>,
    ) -> Result<Vec<NodeIndex>, Diagnostic> {
        let workflow = Arc::clone(&self.workflow);
        let task_index = self.graph[pending].task;
        let task = &workflow.tasks[task_index];
        let base = base_context(&workflow, task, needs, &self.run_id);
        let (file, json) = match task.for_each.as_ref().map(|f| &f.source) {
            Some(FanSource::LinesOf(f)) => (f.clone(), false),
            Some(FanSource::JsonOf(f)) => (f.clone(), true),
            _ => return Ok(Vec::new()),
        };
        let file = self
            .templates
            .render(&file, false, &base)
            .map_err(|e| {
                Diagnostic::error(
                    "template",
                    format!("{} in `for_each` of task `{}`", e.message, task.name),
                )
            })?
            .text;
        let mut items = fanout::dynamic_items(&workflow.root, &file, json)
            .map_err(|e| Diagnostic::error("fanout", format!("{e} (task `{}`)", task.name)))?;
        if let Some(size) = task.for_each.as_ref().and_then(|f| f.batch) {
            items = fanout::batch(items, size);
        }
        fanout::unique_labels(&mut items);
        let new_nodes = self.materialize(pending, items, &base, &[])?;
        // The new instances may write what others write (two lines with
        // one stem): caught here, before any of them starts.
        if let Some(conflict) = self.shared_outputs().into_iter().next() {
            return Err(conflict);
        }
        Ok(new_nodes)
    }

    fn materialize(
        &mut self,
        pending: NodeIndex,
        items: Vec<Item>,
        base: &minijinja::Value,
        partners: &[NodeIndex],
    ) -> Result<Vec<NodeIndex>, Diagnostic> {
        let workflow = Arc::clone(&self.workflow);
        let task_index = self.graph[pending].task;
        let task = &workflow.tasks[task_index];
        let predecessors: Vec<(NodeIndex, EdgeKind)> = self
            .graph
            .edges_directed(pending, Direction::Incoming)
            .map(|e| (e.source(), *e.weight()))
            .collect();
        let successors: Vec<(NodeIndex, EdgeKind)> = self
            .graph
            .edges_directed(pending, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
        let mut new_nodes = Vec::new();
        let templates = Arc::clone(&self.templates);
        let compiled = TaskTemplates::compile(&workflow, &templates, task)?;
        for (i, item) in items.into_iter().enumerate() {
            let rendered = compiled.render(&workflow, task, Some(&item.value), base)?;
            let id = InstanceId::new(&task.name, Some(&item.label));
            let node = self.graph.add_node(Instance {
                id: id.clone(),
                task: task_index,
                label: Some(item.label),
                item: Some(item.value),
                kind: NodeKind::Instance,
                rendered: Some(Arc::new(rendered)),
                depth: self.graph[pending].depth,
            });
            self.by_id.insert(id, node);
            self.task_nodes[task_index].push(node);
            for (source, kind) in &predecessors {
                if *kind == EdgeKind::PerItem {
                    if let Some(partner) = partners.get(i) {
                        self.graph.add_edge(*partner, node, EdgeKind::PerItem);
                    }
                } else {
                    self.graph.add_edge(*source, node, *kind);
                }
            }
            for (target, kind) in &successors {
                if *kind == EdgeKind::Reduce {
                    self.graph.add_edge(node, *target, EdgeKind::Reduce);
                }
            }
            new_nodes.push(node);
        }
        self.graph[pending].kind = NodeKind::Expanded;
        self.task_nodes[task_index].retain(|n| *n != pending);
        // Pending `from:` followers expand alongside, one per new instance.
        for (target, kind) in successors {
            if kind == EdgeKind::PerItem && self.graph[target].kind == NodeKind::Pending {
                let follower_items: Vec<Item> = new_nodes
                    .iter()
                    .map(|n| Item {
                        label: self.graph[*n].label.clone().unwrap_or_default(),
                        value: self.graph[*n]
                            .item
                            .clone()
                            .unwrap_or(ItemValue::Json(serde_json::Value::Null)),
                    })
                    .collect();
                let follower_task = &workflow.tasks[self.graph[target].task];
                let follower_base =
                    base_context(&workflow, follower_task, &BTreeMap::new(), &self.run_id);
                let partners = new_nodes.clone();
                let more = self.materialize(target, follower_items, &follower_base, &partners)?;
                new_nodes.extend(more);
            }
        }
        Ok(new_nodes)
    }

    fn compute_depths(&mut self) {
        let order = match petgraph::algo::toposort(&self.graph, None) {
            Ok(order) => order,
            Err(_) => return,
        };
        for node in order.into_iter().rev() {
            let depth = self
                .graph
                .neighbors_directed(node, Direction::Outgoing)
                .map(|n| self.graph[n].depth + 1)
                .max()
                .unwrap_or(0);
            self.graph[node].depth = depth;
        }
    }

    /// Instances in a stable display order (task declaration, then item order).
    #[must_use]
    pub fn ordered_nodes(&self) -> Vec<NodeIndex> {
        self.task_nodes.iter().flatten().copied().collect()
    }

    /// Keeps only the named tasks and everything they depend on (`--task`).
    ///
    /// # Errors
    /// An unknown task name, with a suggestion.
    pub fn select(&mut self, names: &[String]) -> Result<(), Diagnostic> {
        if names.is_empty() {
            return Ok(());
        }
        let mut keep = std::collections::HashSet::new();
        let mut stack = Vec::new();
        for name in names {
            let Some(index) = self.workflow.task_index(name) else {
                let mut d = Diagnostic::error(
                    "unknown-task",
                    format!(
                        "`--task {name}`: no task `{name}` in workflow `{}`",
                        self.workflow.name
                    ),
                );
                if let Some(h) = crate::diagnostic::did_you_mean(
                    name,
                    self.workflow.tasks.iter().map(|t| t.name.as_str()),
                ) {
                    d = d.with_hint(h);
                } else {
                    d = d.with_hint(format!(
                        "tasks: {}",
                        self.workflow
                            .tasks
                            .iter()
                            .map(|t| format!("`{}`", t.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                return Err(d);
            };
            stack.extend(self.task_nodes[index].iter().copied());
        }
        while let Some(node) = stack.pop() {
            if keep.insert(node) {
                stack.extend(self.graph.neighbors_directed(node, Direction::Incoming));
            }
        }
        let all: Vec<NodeIndex> = self.graph.node_indices().collect();
        for node in all {
            if !keep.contains(&node) {
                let id = self.graph[node].id.clone();
                let task = self.graph[node].task;
                self.graph.remove_node(node);
                self.by_id.remove(&id);
                self.task_nodes[task].retain(|n| *n != node);
            }
        }
        Ok(())
    }
}

/// Every template source of a task.
fn task_sources(task: &crate::workflow::Task) -> Vec<&str> {
    let mut sources: Vec<&str> = Vec::new();
    sources.extend(task.condition.as_deref());
    match &task.kind {
        crate::workflow::TaskKind::Shell { script, .. } => sources.push(script),
        crate::workflow::TaskKind::Agent(agent) => sources.push(&agent.prompt),
    }
    sources.extend(task.inputs.iter().map(String::as_str));
    sources.extend(task.outputs.iter().map(String::as_str));
    sources.extend(task.env.values().map(String::as_str));
    sources.extend(task.workdir.as_deref());
    sources.extend(task.verify.as_deref());
    sources
}

/// Task indices with dependencies first (declaration order among equals).
fn task_order(workflow: &Workflow) -> Vec<usize> {
    let mut done = vec![false; workflow.tasks.len()];
    let mut order = Vec::new();
    while order.len() < workflow.tasks.len() {
        let before = order.len();
        for (i, task) in workflow.tasks.iter().enumerate() {
            if done[i] {
                continue;
            }
            let ready = task
                .needs
                .iter()
                .all(|n| workflow.task_index(n).is_none_or(|j| done[j]));
            if ready {
                done[i] = true;
                order.push(i);
            }
        }
        if order.len() == before {
            // A cycle would have been rejected by resolve; stop rather than loop.
            break;
        }
    }
    order
}

/// Whether a task's templates read `needs` or `run`, which only the
/// scheduler knows at run time, or a file through `read_file`, which an
/// upstream task may rewrite before this one starts (a plan-time render
/// would bake in the stale content). The scheduler renders such a task's
/// instances again when it starts them.
#[must_use]
pub fn uses_runtime_context(task: &crate::workflow::Task) -> bool {
    task_sources(task)
        .iter()
        .any(|t| t.contains("needs") || t.contains("run.") || t.contains("read_file"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;
    use std::path::Path;

    fn workflow(text: &str) -> Arc<Workflow> {
        let file = SourceFile::new("w.yaml", text);
        let loaded = crate::workflow::resolve::load_source(
            &file,
            Path::new("w.yaml"),
            Path::new("/nonexistent"),
            &BTreeMap::new(),
        );
        Arc::new(loaded.workflow.expect("valid workflow"))
    }

    fn rendered(plan: &Plan) -> Vec<(String, bool)> {
        plan.graph
            .node_weights()
            .map(|i| (i.id.0.clone(), i.rendered.is_some()))
            .collect()
    }

    #[test]
    fn deferring_leaves_named_instances_unrendered_unless_a_template_reads_run_time_state() {
        let plain = workflow(
            "version: 1\ntasks:\n  a:\n    for_each: { items: [x, y] }\n    run: echo {{ item }}\n  b:\n    needs: [a]\n    run: echo done\n",
        );
        let plan = Plan::build_deferring(plain, "r", &|id| id == "a[x]").expect("plans");
        let mut seen = rendered(&plan);
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("a[x]".to_owned(), false),
                ("a[y]".to_owned(), true),
                ("b".to_owned(), true)
            ]
        );
        // `b` reads its upstream's outputs: nothing is deferred.
        let reading = workflow(
            "version: 1\ntasks:\n  a:\n    for_each: { items: [x, y] }\n    run: echo {{ item }}\n  b:\n    needs: [a]\n    run: echo {{ needs.a.outputs }}\n",
        );
        let plan = Plan::build_deferring(reading, "r", &|id| id == "a[x]").expect("plans");
        assert!(rendered(&plan).iter().all(|(_, r)| *r));
    }
}
