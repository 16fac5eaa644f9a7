//! Task instances: their stable ids (`refactor[src/lib.rs]`) and the
//! rendering of a task's templates for one item (command or prompt, inputs,
//! outputs, env, workdir, condition). Planning renders with a plan-time
//! context; the scheduler renders again just before running, with the real
//! status and outputs of the dependencies.

#![expect(
    clippy::result_large_err,
    reason = "a Diagnostic is built once per failure and carries its source; boxing buys nothing here"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use minijinja::value::Value as TemplateValue;
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Span};
use crate::fanout::ItemValue;
use crate::template::{Compiled, TemplateError, Templates};
use crate::workflow::resolve::template_span;
use crate::workflow::yaml::pointer_segment;
use crate::workflow::{Task, TaskKind, Workflow};

/// A task instance's id: `task` or `task[label]`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct InstanceId(pub String);

impl InstanceId {
    #[must_use]
    pub fn new(task: &str, label: Option<&str>) -> InstanceId {
        match label {
            Some(label) => InstanceId(format!("{task}[{label}]")),
            None => InstanceId(task.to_owned()),
        }
    }

    /// The task part of the id.
    #[must_use]
    pub fn task(&self) -> &str {
        self.0.split('[').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the templates of one instance rendered to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RenderedInstance {
    /// The shell command (for `run:` tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The prompt (for agent tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `false` when `if:` rendered false (the instance is skipped).
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
    /// Files read by `read_file`, which join the inputs.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub read_files: BTreeSet<String>,
}

/// What templates see of one dependency.
#[derive(Debug, Clone, Default)]
pub struct NeedContext {
    pub outputs: Vec<String>,
    pub items: Vec<Value>,
    pub status: String,
}

/// Builds the part of the template context shared by all instances of a task.
#[must_use]
pub fn base_context(
    workflow: &Workflow,
    task: &Task,
    needs: &BTreeMap<String, NeedContext>,
    run_id: &str,
) -> TemplateValue {
    let needs: BTreeMap<&str, TemplateValue> = needs
        .iter()
        .map(|(name, need)| {
            (
                name.as_str(),
                minijinja::context! {
                    outputs => need.outputs,
                    items => TemplateValue::from_serialize(&need.items),
                    status => need.status,
                },
            )
        })
        .collect();
    minijinja::context! {
        vars => TemplateValue::from_serialize(&workflow.vars),
        env => workflow.env.iter().chain(task.env.iter()).map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>(),
        workflow => minijinja::context! {
            name => workflow.name,
            description => workflow.description,
            root => workflow.root.display().to_string(),
        },
        task => minijinja::context! { name => task.name, description => task.description },
        needs => needs,
        run => minijinja::context! { id => run_id },
    }
}

/// Renders every template of `task` for one item.
///
/// # Errors
/// A diagnostic pointing at the template (task, key and line).
pub fn render(
    workflow: &Workflow,
    templates: &Templates,
    task: &Task,
    item: Option<&ItemValue>,
    base: &TemplateValue,
) -> Result<RenderedInstance, Diagnostic> {
    TaskTemplates::compile(workflow, templates, task)?.render(workflow, task, item, base)
}

/// The diagnostic for a template of `task` (under `key`) that failed.
fn template_failure(
    workflow: &Workflow,
    task: &Task,
    item: Option<&ItemValue>,
    key: &str,
    error: TemplateError,
) -> Diagnostic {
    let pointer = format!("/tasks/{}", pointer_segment(&task.name));
    let value_span: Span = workflow.spans.value(&format!("{pointer}/{key}"));
    let span = template_span(&workflow.file, value_span, error.line);
    let mut message = format!(
        "{} in `{}` of task `{}`",
        error.message,
        key.replace('/', "."),
        task.name
    );
    if let Some(item) = item {
        let label = match item {
            ItemValue::Path(p) => p.path().to_owned(),
            other => other.to_json().to_string(),
        };
        message.push_str(&format!(" (item `{label}`)"));
    }
    let mut d = Diagnostic::error("template", message).at(&workflow.file, span);
    if error.kind == crate::template::TemplateErrorKind::Undefined {
        d.hints
            .extend(undefined_hints(workflow, task, &error.message));
    }
    d
}

/// Every template of one task, compiled once and rendered per item.
pub struct TaskTemplates<'a> {
    condition: Option<Compiled<'a>>,
    body: Compiled<'a>,
    inputs: Vec<Compiled<'a>>,
    outputs: Vec<Compiled<'a>>,
    env: Vec<(&'a str, Compiled<'a>)>,
    workdir: Option<Compiled<'a>>,
    verify: Option<Compiled<'a>>,
}

impl<'a> TaskTemplates<'a> {
    /// Compiles the templates of `task`.
    ///
    /// # Errors
    /// A syntax error, located like a render error.
    pub fn compile(
        workflow: &Workflow,
        templates: &'a Templates,
        task: &'a Task,
    ) -> Result<TaskTemplates<'a>, Diagnostic> {
        let compile = |key: &str, source: &'a str, shell: bool| {
            templates
                .compile(source, shell)
                .map_err(|e| template_failure(workflow, task, None, key, e))
        };
        let condition = task
            .condition
            .as_deref()
            .map(|c| compile("if", c, false))
            .transpose()?;
        let body = match &task.kind {
            TaskKind::Shell { script, .. } => compile("run", script, true)?,
            TaskKind::Agent(agent) => compile("agent/prompt", &agent.prompt, false)?,
        };
        let inputs = task
            .inputs
            .iter()
            .enumerate()
            .map(|(i, p)| compile(&format!("inputs/{i}"), p, false))
            .collect::<Result<_, _>>()?;
        let outputs = task
            .outputs
            .iter()
            .enumerate()
            .map(|(i, p)| compile(&format!("outputs/{i}"), p, false))
            .collect::<Result<_, _>>()?;
        let env = task
            .env
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.as_str(),
                    compile(&format!("env/{}", pointer_segment(k)), v, false)?,
                ))
            })
            .collect::<Result<_, Diagnostic>>()?;
        let workdir = task
            .workdir
            .as_deref()
            .map(|w| compile("workdir", w, false))
            .transpose()?;
        let verify = task
            .verify
            .as_deref()
            .map(|v| compile("verify", v, true))
            .transpose()?;
        Ok(TaskTemplates {
            condition,
            body,
            inputs,
            outputs,
            env,
            workdir,
            verify,
        })
    }

    /// Renders every template for one item.
    ///
    /// # Errors
    /// A diagnostic pointing at the template (task, key and line).
    pub fn render(
        &self,
        workflow: &Workflow,
        task: &Task,
        item: Option<&ItemValue>,
        base: &TemplateValue,
    ) -> Result<RenderedInstance, Diagnostic> {
        let context = match item {
            Some(item) => minijinja::context! { item => item.to_template(), ..base.clone() },
            None => base.clone(),
        };
        let fail =
            |key: &str, error: TemplateError| template_failure(workflow, task, item, key, error);
        let mut read_files = BTreeSet::new();
        let mut text = |key: &str, template: &Compiled<'_>| -> Result<String, Diagnostic> {
            let out = template.render(&context).map_err(|e| fail(key, e))?;
            read_files.extend(out.read_files);
            Ok(out.text)
        };
        let enabled = match &self.condition {
            None => true,
            Some(condition) => {
                let out = text("if", condition)?;
                match out.trim() {
                    "true" | "True" | "1" | "yes" => true,
                    "false" | "False" | "0" | "no" | "" => false,
                    other => {
                        return Err(fail(
                            "if",
                            TemplateError {
                                message: format!(
                                    "condition rendered `{other}`, expected `true` or `false`"
                                ),
                                line: None,
                                kind: crate::template::TemplateErrorKind::Render,
                            },
                        ))
                    }
                }
            }
        };
        let (command, prompt) = match &task.kind {
            TaskKind::Shell { .. } => (Some(text("run", &self.body)?), None),
            TaskKind::Agent(_) => (None, Some(text("agent/prompt", &self.body)?)),
        };
        let mut inputs = Vec::new();
        for (i, template) in self.inputs.iter().enumerate() {
            let rendered = text(&format!("inputs/{i}"), template)?;
            if !rendered.trim().is_empty() {
                inputs.push(rendered);
            }
        }
        let mut outputs = Vec::new();
        for (i, template) in self.outputs.iter().enumerate() {
            let rendered = text(&format!("outputs/{i}"), template)?;
            if crate::workflow::resolve::escapes_root(&rendered) {
                let pointer = format!("/tasks/{}", pointer_segment(&task.name));
                return Err(Diagnostic::error(
                    "output-outside",
                    format!(
                        "output `{rendered}` of task `{}` points outside the repository",
                        task.name
                    ),
                )
                .at(
                    &workflow.file,
                    workflow.spans.value(&format!("{pointer}/outputs/{i}")),
                ));
            }
            if !rendered.trim().is_empty() {
                outputs.push(rendered);
            }
        }
        let mut env = BTreeMap::new();
        for (key, template) in &self.env {
            env.insert(
                (*key).to_owned(),
                text(&format!("env/{}", pointer_segment(key)), template)?,
            );
        }
        let workdir = match &self.workdir {
            Some(w) => Some(text("workdir", w)?),
            None => None,
        };
        let verify = match &self.verify {
            Some(v) => Some(text("verify", v)?),
            None => None,
        };
        inputs.extend(read_files.iter().cloned());
        Ok(RenderedInstance {
            command,
            prompt,
            inputs,
            outputs,
            env,
            workdir,
            enabled,
            verify,
            read_files,
        })
    }
}

/// What to do about an undefined template variable: `item` outside a
/// fan-out, a misspelt `vars.x`/`needs.x`, or the list of what exists.
fn undefined_hints(workflow: &Workflow, task: &Task, message: &str) -> Vec<String> {
    // The message names the variable in backticks: "undefined template variable `vars.styel`".
    let name = message.split('`').nth(1).unwrap_or("");
    let mut parts = name.split('.');
    let head = parts.next().unwrap_or("");
    let member = parts.next();
    let did_you_mean = |candidate: &str, known: Vec<&str>, what: &str| -> String {
        crate::diagnostic::did_you_mean(candidate, known.iter().copied()).unwrap_or_else(|| {
            if known.is_empty() {
                format!("no {what} are declared")
            } else {
                format!(
                    "declared {what}: {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        })
    };
    match (head, member) {
        ("item", _) if task.for_each.is_none() => {
            vec![format!(
                "`item` exists only in tasks with `for_each`; task `{}` does not fan out",
                task.name
            )]
        }
        ("vars", Some(var)) => {
            vec![
                did_you_mean(
                    var,
                    workflow.vars.keys().map(String::as_str).collect(),
                    "vars",
                ),
                "declare variables under `vars:`".into(),
            ]
        }
        ("needs", Some(need)) => vec![did_you_mean(
            need,
            task.needs.iter().map(String::as_str).collect(),
            "needs of this task",
        )],
        ("env", Some(var)) => {
            let known: Vec<&str> = workflow
                .env
                .keys()
                .chain(task.env.keys())
                .map(String::as_str)
                .collect();
            vec![
                did_you_mean(var, known, "env variables"),
                "templates see only the `env` declared in the workflow".into(),
            ]
        }
        _ => vec![
            "templates see `item`, `vars`, `env`, `workflow`, `task`, `needs` and `run`".into(),
        ],
    }
}
