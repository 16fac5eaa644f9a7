//! Loading one workflow file through the passes YAML syntax → JSON Schema →
//! semantics, collecting every error of a pass before stopping, and turning
//! the raw model into a checked [`Workflow`].

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::model::{
    AgentSpec, Budget, FanSource, ForEach, Limits, RetryPolicy, Task, TaskKind, Workflow,
};
use super::raw::{
    Concurrency, DurationValue, Isolation, RawDefaults, RawTask, RawWorkflow, Runner,
};
use super::schema;
use super::yaml::{self, pointer_segment, SpanMap};
use crate::diagnostic::{did_you_mean, Diagnostic, SourceFile, Span};
use crate::template::Templates;

/// The most combinations a `matrix` may expand to.
const MAX_MATRIX: usize = 10_000;

/// Files larger than this are refused before parsing. Real workflows are a
/// few kilobytes; a megabyte of YAML is generated data, which belongs in a
/// file read by `lines_of`/`json_of`, and would take seconds to plan.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The outcome of loading: a workflow (when no error), plus every diagnostic.
pub struct Loaded {
    pub workflow: Option<Workflow>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Loads and checks the workflow at `path`; `display` is how the path is shown.
#[must_use]
pub fn load(path: &Path, display: &str, root: &Path, vars: &BTreeMap<String, String>) -> Loaded {
    let fail = |d: Diagnostic| Loaded {
        workflow: None,
        diagnostics: vec![d],
    };
    let empty = SourceFile::new(display, "");
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_FILE_BYTES => {
            return fail(
                Diagnostic::error(
                    "too-large",
                    format!("workflow file is {} bytes, more than the limit of {MAX_FILE_BYTES} (1 MiB)", meta.len()),
                )
                .at(&empty, Span::new(0, 0))
                .with_hint("a workflow describes tasks; generate large item lists into a file and use `for_each: { lines_of: FILE }`"),
            );
        }
        Ok(_) => {}
        Err(error) => {
            return fail(
                Diagnostic::error("io", format!("cannot read `{display}`: {error}"))
                    .with_hint("check the path; workflows live in `.claudecluster/NAME.yaml`"),
            )
        }
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(error) => {
            return fail(Diagnostic::error(
                "io",
                format!("cannot read `{display}`: {error}"),
            ))
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(error) => {
            let offset = error.utf8_error().valid_up_to();
            // Only the text before the bad byte is shown (control characters
            // made visible): echoing binary garbage could upset the terminal.
            let shown = printable(&String::from_utf8_lossy(&error.as_bytes()[..offset]));
            let offset = shown.len();
            let file = SourceFile::new(display, shown);
            return fail(
                Diagnostic::error("encoding", "workflow file is not valid UTF-8 text")
                    .at(&file, Span::new(offset, offset + 1))
                    .with_hint("save the file as UTF-8; is this a binary file?"),
            );
        }
    };
    let file = SourceFile::new(display, text);
    load_source(&file, path, root, vars)
}

/// Loads a workflow from text already in memory (tests, fuzzing).
#[must_use]
pub fn load_source(
    file: &Arc<SourceFile>,
    path: &Path,
    root: &Path,
    vars: &BTreeMap<String, String>,
) -> Loaded {
    let fail = |diagnostics| Loaded {
        workflow: None,
        diagnostics,
    };
    if file.text.contains('\0') {
        let shown = SourceFile::new(file.name.clone(), printable(&file.text));
        let offset = shown.text.find('\u{2400}').unwrap_or(0);
        return fail(vec![Diagnostic::error(
            "encoding",
            "workflow file contains NUL bytes",
        )
        .at(&shown, Span::new(offset, offset + '\u{2400}'.len_utf8()))
        .with_hint("is this a binary file? workflows are YAML text")]);
    }
    if file.text.trim().is_empty() {
        return fail(vec![Diagnostic::error("empty", "workflow file is empty")
            .at(file, Span::new(0, 0))
            .with_hint(
                "start with `version: 1` and a `tasks:` mapping; `ccflow init` writes an example",
            )]);
    }
    // Pass 1: YAML syntax.
    let (value, spans) = match yaml::parse(file) {
        Ok(parsed) => parsed,
        Err(error) => {
            let mut diagnostic = Diagnostic::error("yaml", error.message).at(file, error.span);
            if let Some(hint) = yaml_hint(&diagnostic.message) {
                diagnostic = diagnostic.with_hint(hint);
            }
            return fail(vec![diagnostic]);
        }
    };
    if !value.is_object() {
        return fail(vec![Diagnostic::error(
            "not-a-mapping",
            "a workflow must be a YAML mapping",
        )
        .at(file, spans.value(""))
        .with_hint("start with `version: 1` and a `tasks:` mapping")]);
    }
    // Pass 2: the schema.
    let schema_errors = schema::validate(&value, &spans, file);
    let all_names: Vec<String> = value
        .get("tasks")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    // With schema errors, semantics still check the tasks that are well
    // formed, so one run reports as much as possible.
    let lenient = if schema_errors.is_empty() {
        value.clone()
    } else {
        lenient_value(&value)
    };
    let raw: RawWorkflow = match serde_json::from_value(lenient) {
        Ok(raw) => raw,
        Err(error) => {
            if !schema_errors.is_empty() {
                return fail(schema_errors);
            }
            return fail(vec![Diagnostic::error(
                "invalid",
                format!("invalid workflow: {error}"),
            )
            .at(file, spans.value(""))]);
        }
    };
    // Pass 3: semantics.
    let mut checker = Checker {
        file: Arc::clone(file),
        spans: &spans,
        diagnostics: schema_errors,
        templates: Templates::new(root),
    };
    let workflow = checker.workflow(raw, &all_names, path, root, vars);
    let has_errors = checker.diagnostics.iter().any(Diagnostic::is_error);
    // The schema and the semantic pass can flag the same spot (a bad
    // duration, say): keep the first message per location.
    let mut seen = HashSet::new();
    let diagnostics: Vec<Diagnostic> = checker
        .diagnostics
        .into_iter()
        .filter(|d| d.span.is_none_or(|s| seen.insert(s.start)))
        .collect();
    match workflow {
        Some(mut workflow) if !has_errors => {
            workflow.spans = spans;
            Loaded {
                workflow: Some(workflow),
                diagnostics,
            }
        }
        _ => Loaded {
            workflow: None,
            diagnostics,
        },
    }
}

/// Control characters (other than newline and tab) made visible, so a
/// diagnostic quoting the line cannot emit terminal escapes.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            '\0' => '\u{2400}',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// What to do about a YAML syntax error, from the parser's message.
fn yaml_hint(message: &str) -> Option<&'static str> {
    let hints: [(&str, &str); 7] = [
        (
            "tabs",
            "indent with spaces: YAML does not allow tabs in indentation",
        ),
        (
            "quoted scalar",
            "is a quote (`\"` or `'`) left open on this line?",
        ),
        (
            "did not find expected key",
            "check the indentation of this line: keys of one mapping must line up",
        ),
        (
            "illegal placement of ':'",
            "is a `[` or `{` left open on an earlier line?",
        ),
        (
            "did not find expected ',' or",
            "is a `[` or `{` left open, or a `,` missing?",
        ),
        (
            "mapping values are not allowed",
            "quote a value that contains `: `, e.g. `run: \"echo a: b\"`",
        ),
        (
            "unknown anchor",
            "define the anchor (`&name`) before the alias (`*name`) that uses it",
        ),
    ];
    if message.starts_with("duplicate key") {
        return Some(
            "keys of a mapping (and task names) must be unique: rename or merge one of them",
        );
    }
    if message.contains("expected one YAML document") {
        return Some("put each workflow in its own file under `.claudecluster/`");
    }
    hints
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map(|(_, hint)| *hint)
}

/// The workflow with its ill-formed tasks (and top-level keys) left out.
fn lenient_value(value: &Value) -> Value {
    let mut value = value.clone();
    let Some(map) = value.as_object_mut() else {
        return value;
    };
    if let Some(Value::Object(tasks)) = map.get_mut("tasks") {
        tasks.retain(|_, task| serde_json::from_value::<RawTask>(task.clone()).is_ok());
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if key == "tasks" || key == "version" {
            continue;
        }
        let mut probe = serde_json::Map::new();
        probe.insert("version".into(), Value::from(1));
        probe.insert("tasks".into(), Value::Object(serde_json::Map::new()));
        probe.insert(key.clone(), map[&key].clone());
        if serde_json::from_value::<RawWorkflow>(Value::Object(probe)).is_err() {
            map.remove(&key);
        }
    }
    map.insert("version".into(), Value::from(1));
    map.entry("tasks")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    value
}

/// Parses `90s`, `15m`, `1h30m`, `500ms`, `2d`, or a plain number of seconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration `{text}`: expected e.g. `90s`, `15m`, `1h30m`, `500ms` or a number of seconds")
    };
    let trimmed = text.trim();
    if let Ok(seconds) = trimmed.parse::<f64>() {
        return if seconds.is_finite() && seconds >= 0.0 {
            Ok(Duration::from_secs_f64(seconds))
        } else {
            Err(bad())
        };
    }
    let mut total = 0f64;
    let mut rest = trimmed;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if number_end == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = rest[number_end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += number * factor;
        rest = rest[unit_end..].trim_start();
    }
    if total.is_finite() && total < 1e12 {
        Ok(Duration::from_secs_f64(total))
    } else {
        Err(bad())
    }
}

struct Checker<'a> {
    file: Arc<SourceFile>,
    spans: &'a SpanMap,
    diagnostics: Vec<Diagnostic>,
    templates: Templates,
}

fn task_pointer(name: &str) -> String {
    format!("/tasks/{}", pointer_segment(name))
}

impl Checker<'_> {
    fn error(
        &mut self,
        code: &'static str,
        message: String,
        pointer: &str,
        key: bool,
    ) -> &mut Diagnostic {
        let span = if key {
            self.spans.key_or_value(pointer)
        } else {
            self.spans.value(pointer)
        };
        self.diagnostics
            .push(Diagnostic::error(code, message).at(&self.file, span));
        self.diagnostics.last_mut().expect("just pushed")
    }

    fn duration(&mut self, value: Option<&DurationValue>, pointer: &str) -> Option<Duration> {
        let value = value?;
        match parse_duration(&value.0) {
            Ok(d) => Some(d),
            Err(message) => {
                self.error("bad-duration", message, pointer, false);
                None
            }
        }
    }

    fn template(&mut self, source: &str, pointer: &str, what: &str, task: &str) {
        if let Err(error) = self.templates.check_syntax(source) {
            let span = template_span(&self.file, self.spans.value(pointer), error.line);
            self.diagnostics.push(
                Diagnostic::error(
                    "template",
                    format!("{} in `{what}` of task `{task}`", error.message),
                )
                .at(&self.file, span),
            );
        }
    }

    fn workflow(
        &mut self,
        raw: RawWorkflow,
        order: &[String],
        path: &Path,
        root: &Path,
        overrides: &BTreeMap<String, String>,
    ) -> Option<Workflow> {
        let defaults = raw.defaults.clone().unwrap_or_default();
        let limits = match &raw.concurrency {
            None => Limits::default(),
            Some(Concurrency::Global(n)) => Limits {
                global: Some(*n as usize),
                pools: BTreeMap::new(),
            },
            Some(Concurrency::Pools(pools)) => Limits {
                global: pools.get("default").map(|n| *n as usize),
                pools: pools
                    .iter()
                    .filter(|(k, _)| k.as_str() != "default")
                    .map(|(k, v)| (k.clone(), *v as usize))
                    .collect(),
            },
        };
        if let Some(Concurrency::Global(0)) = raw.concurrency {
            self.error(
                "invalid-value",
                "`concurrency` must be at least 1".into(),
                "/concurrency",
                false,
            );
        }
        let mut vars = raw.vars.clone();
        for (name, value) in overrides {
            if !vars.contains_key(name) {
                let hint = did_you_mean(name, vars.keys().map(String::as_str));
                // Point at `vars:` when there is one, else at the top of the file.
                let span = if raw.vars.is_empty() {
                    Span::new(0, 0)
                } else {
                    self.spans.key_or_value("/vars")
                };
                let mut d = Diagnostic::error(
                    "unknown-var",
                    format!("`--var {name}=...` sets a variable the workflow does not declare"),
                )
                .at(&self.file, span);
                if let Some(hint) = hint {
                    d = d.with_hint(hint);
                }
                d = d.with_hint(format!("declare it under `vars:` in {}", self.file.name));
                self.diagnostics.push(d);
                continue;
            }
            // Keep the declared type when the override parses as it (numbers, booleans).
            let parsed = match vars.get(name) {
                Some(Value::Number(_)) | Some(Value::Bool(_)) => {
                    serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.clone()))
                }
                _ => Value::String(value.clone()),
            };
            vars.insert(name.clone(), parsed);
        }
        for secret in &raw.secrets {
            if raw.env.contains_key(secret) {
                self.error(
                    "secret-in-env",
                    format!("`{secret}` is both a secret and a plain `env` value"),
                    &format!("/env/{}", pointer_segment(secret)),
                    true,
                );
            }
        }
        let names: Vec<&str> = order.iter().map(String::as_str).collect();
        let mut tasks = Vec::new();
        for name in order {
            let Some(raw_task) = raw.tasks.get(name) else {
                continue;
            };
            if let Some(task) = self.task(name, raw_task, &defaults, &names, &raw.tasks, &limits) {
                tasks.push(task);
            }
        }
        // Without a `tasks` key the schema pass already said so.
        let tasks_missing = self
            .diagnostics
            .iter()
            .any(|d| d.code == "missing-key" && d.message.contains("`tasks`"));
        if names.is_empty() && !tasks_missing {
            self.error("no-tasks", "workflow has no tasks".into(), "/tasks", true)
                .hints
                .push("add a task under `tasks:`, e.g. `build: { run: make }`".into());
        }
        self.check_cycles(&tasks);
        let name = raw.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "workflow".into())
        });
        Some(Workflow {
            name,
            description: raw.description,
            path: path.to_path_buf(),
            file: Arc::clone(&self.file),
            spans: SpanMap::default(),
            root: root.to_path_buf(),
            vars,
            env: raw.env.into_iter().map(|(k, v)| (k, v.0)).collect(),
            secrets: raw.secrets,
            limits,
            budget: raw
                .budget
                .map(|b| Budget {
                    max_tokens: b.max_tokens,
                    max_cost_usd: b.max_cost_usd,
                })
                .unwrap_or_default(),
            tasks,
        })
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one pass over every task key, in the order of the spec"
    )]
    fn task(
        &mut self,
        name: &str,
        raw: &RawTask,
        defaults: &RawDefaults,
        names: &[&str],
        all: &BTreeMap<String, RawTask>,
        limits: &Limits,
    ) -> Option<Task> {
        let pointer = task_pointer(name);
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid_name {
            self.error(
                "bad-task-name",
                format!("task name `{name}` may only use letters, digits, `_`, `-` and `.`"),
                &pointer,
                true,
            );
        }
        let kind = match (&raw.run, &raw.agent) {
            (Some(script), None) => {
                self.template(script, &format!("{pointer}/run"), "run", name);
                let shell = raw
                    .shell
                    .clone()
                    .or_else(|| defaults.shell.clone())
                    .map(|s| {
                        if s.0.len() == 1 {
                            s.0[0].split_whitespace().map(str::to_owned).collect()
                        } else {
                            s.0
                        }
                    });
                if shell.as_ref().is_some_and(Vec::is_empty) {
                    self.error(
                        "invalid-value",
                        "`shell` must name an interpreter".into(),
                        &format!("{pointer}/shell"),
                        false,
                    );
                }
                TaskKind::Shell {
                    script: crate::template::contextualize_shell(script),
                    shell,
                }
            }
            (None, Some(agent)) => {
                self.template(
                    &agent.prompt,
                    &format!("{pointer}/agent/prompt"),
                    "agent.prompt",
                    name,
                );
                if raw.shell.is_some() {
                    self.error(
                        "invalid-key",
                        format!("`shell` applies to `run` tasks; task `{name}` is an agent"),
                        &format!("{pointer}/shell"),
                        true,
                    );
                }
                let idle = self
                    .duration(
                        agent.idle_timeout.as_ref(),
                        &format!("{pointer}/agent/idle_timeout"),
                    )
                    .unwrap_or(Duration::from_secs(600));
                TaskKind::Agent(AgentSpec {
                    prompt: agent.prompt.clone(),
                    model: agent.model.clone(),
                    max_turns: agent.max_turns,
                    max_budget_usd: agent
                        .max_budget_usd
                        .or_else(|| raw.budget.as_ref().and_then(|b| b.max_cost_usd)),
                    allowed_tools: agent.allowed_tools.clone(),
                    disallowed_tools: agent.disallowed_tools.clone(),
                    append_system_prompt: agent.append_system_prompt.clone(),
                    mcp_config: agent.mcp_config.clone(),
                    permission_mode: agent.permission_mode.clone(),
                    command: agent.command.clone(),
                    bare: agent.bare.unwrap_or(true),
                    idle_timeout: idle,
                })
            }
            (Some(_), Some(_)) => {
                self.error("run-and-agent", format!("task `{name}` has both `run` and `agent`"), &pointer, true)
                    .hints
                    .push("a task is either a shell command (`run`) or a Claude Code session (`agent`); split it into two tasks".into());
                return None;
            }
            (None, None) => {
                self.error(
                    "no-action",
                    format!("task `{name}` has neither `run` nor `agent`"),
                    &pointer,
                    true,
                )
                .hints
                .push("add `run: <shell command>` or `agent: { prompt: ... }`".into());
                return None;
            }
        };
        let is_agent = matches!(kind, TaskKind::Agent(_));
        if !is_agent && (raw.verify.is_some() || raw.verify_attempts.is_some()) {
            self.error(
                "invalid-key",
                format!("`verify` applies to agent tasks; task `{name}` runs a shell command"),
                &format!("{pointer}/verify"),
                true,
            );
        }
        if let Some(verify) = &raw.verify {
            self.template(verify, &format!("{pointer}/verify"), "verify", name);
        }
        // needs
        let mut needs: Vec<String> = raw.needs.clone().map(|n| n.0).unwrap_or_default();
        for (i, need) in needs.iter().enumerate() {
            let need_pointer = format!("{pointer}/needs/{i}");
            if need == name {
                self.error(
                    "self-dependency",
                    format!("task `{name}` needs itself"),
                    &need_pointer,
                    false,
                );
            } else if !names.contains(&need.as_str()) {
                let hint = did_you_mean(need, names.iter().copied());
                let d = self.error(
                    "unknown-need",
                    format!("task `{name}` needs `{need}`, which does not exist"),
                    &need_pointer,
                    false,
                );
                d.label = Some("no task with this name".into());
                match hint {
                    Some(h) => d.hints.push(h),
                    None => d.hints.push(format!(
                        "tasks in this workflow: {}",
                        names
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
        }
        // for_each
        let for_each = raw.for_each.as_ref().and_then(|f| {
            let fe_pointer = format!("{pointer}/for_each");
            let mut sources = Vec::new();
            if let Some(files) = &f.files {
                for (i, glob) in files.0.iter().enumerate() {
                    self.check_glob(glob, &format!("{fe_pointer}/files{}", if files.0.len() > 1 { format!("/{i}") } else { String::new() }));
                }
                sources.push(FanSource::Files { globs: files.0.clone(), exclude: f.exclude.clone().map(|e| e.0).unwrap_or_default() });
            }
            if let Some(items) = &f.items {
                sources.push(FanSource::Items(items.clone()));
            }
            if let Some(matrix) = &f.matrix {
                if matrix.axes.is_empty() && matrix.include.is_empty() {
                    self.error("empty-matrix", "a `matrix` needs at least one axis".into(), &format!("{fe_pointer}/matrix"), true)
                        .hints
                        .push("e.g. `matrix: { os: [linux, mac], rust: [\"1.85\"] }`".into());
                }
                // The product grows exponentially with the axes: a few lines
                // of YAML could otherwise ask for billions of instances.
                let combinations = matrix.axes.values().fold(1usize, |n, values| n.saturating_mul(values.len()));
                if combinations > MAX_MATRIX {
                    self.error(
                        "matrix-too-large",
                        format!("the `matrix` of task `{name}` has {combinations} combinations, more than the limit of {MAX_MATRIX}"),
                        &format!("{fe_pointer}/matrix"),
                        true,
                    )
                    .hints
                    .push("use fewer axes or values, or list the combinations you need under `items`".into());
                    return None;
                }
                sources.push(FanSource::Matrix(matrix.clone()));
            }
            if let Some(from) = &f.from {
                let from_pointer = format!("{fe_pointer}/from");
                match all.get(from) {
                    None if names.contains(&from.as_str()) => {}
                    None => {
                        let hint = did_you_mean(from, names.iter().copied());
                        let d = self.error("unknown-from", format!("`from: {from}` in task `{name}` names a task that does not exist"), &from_pointer, false);
                        if let Some(h) = hint {
                            d.hints.push(h);
                        }
                    }
                    Some(upstream) if upstream.for_each.is_none() => {
                        self.error("from-not-fanout", format!("`from: {from}` in task `{name}` needs a task that fans out, but `{from}` has no `for_each`"), &from_pointer, false)
                            .hints
                            .push(format!("use `needs: [{from}]` to wait for `{from}`, or give `{from}` a `for_each`"));
                    }
                    Some(_) if from == name => {
                        self.error("self-dependency", format!("task `{name}` fans out from itself"), &from_pointer, false);
                    }
                    Some(_) => {}
                }
                if !needs.contains(from) {
                    needs.push(from.clone());
                }
                if f.batch.is_some() {
                    self.error("invalid-key", "`batch` cannot be combined with `from` (instances pair one to one)".into(), &format!("{fe_pointer}/batch"), true);
                }
                sources.push(FanSource::From(from.clone()));
            }
            for (file, dynamic) in [(&f.lines_of, true), (&f.json_of, false)] {
                if let Some(file) = file {
                    let key = if dynamic { "lines_of" } else { "json_of" };
                    self.template(file, &format!("{fe_pointer}/{key}"), key, name);
                    if needs.is_empty() {
                        self.error("dynamic-without-needs", format!("`{key}: {file}` in task `{name}` reads a file produced by an upstream task, but the task has no `needs`"), &format!("{fe_pointer}/{key}"), false)
                            .hints
                            .push("add the task that writes the file to `needs`".into());
                    }
                    sources.push(if dynamic { FanSource::LinesOf(file.clone()) } else { FanSource::JsonOf(file.clone()) });
                }
            }
            if f.exclude.is_some() && f.files.is_none() {
                self.error("invalid-key", "`exclude` only applies to `files`".into(), &format!("{fe_pointer}/exclude"), true);
            }
            match sources.len() {
                1 => Some(ForEach { source: sources.remove(0), batch: f.batch.map(|b| b as usize) }),
                0 => {
                    self.error("empty-for-each", format!("`for_each` of task `{name}` needs one of `files`, `items`, `matrix`, `from`, `lines_of`, `json_of`"), &fe_pointer, true);
                    None
                }
                _ => {
                    self.error("several-sources", format!("`for_each` of task `{name}` has several sources; use exactly one of `files`, `items`, `matrix`, `from`, `lines_of`, `json_of`"), &fe_pointer, true);
                    None
                }
            }
        });
        // globs and templates in inputs/outputs
        let inputs = raw.inputs.clone().map(|v| v.0).unwrap_or_default();
        let outputs = raw.outputs.clone().map(|v| v.0).unwrap_or_default();
        for (key, list) in [("inputs", &inputs), ("outputs", &outputs)] {
            for (i, pattern) in list.iter().enumerate() {
                let p = format!("{pointer}/{key}/{i}");
                self.template(pattern, &p, key, name);
                if !pattern.contains("{{") {
                    self.check_glob(pattern, &p);
                }
                if key == "outputs" && escapes_root(pattern) {
                    self.error(
                        "output-outside",
                        format!(
                            "output `{pattern}` of task `{name}` points outside the repository"
                        ),
                        &p,
                        false,
                    )
                    .hints
                    .push("outputs are repository-relative paths or globs without `..`".into());
                }
            }
        }
        if let Some(condition) = &raw.condition {
            self.template(&condition.0, &format!("{pointer}/if"), "if", name);
        }
        let mut env = BTreeMap::new();
        for (key, value) in &raw.env {
            self.template(
                &value.0,
                &format!("{pointer}/env/{}", pointer_segment(key)),
                "env",
                name,
            );
            env.insert(key.clone(), value.0.clone());
        }
        let runner = raw.runner.or(defaults.runner).unwrap_or(Runner::Local);
        let image = raw.image.clone().or_else(|| defaults.image.clone());
        if runner == Runner::Docker && image.is_none() {
            self.error(
                "missing-image",
                format!("task `{name}` uses `runner: docker` but names no `image`"),
                &pointer,
                true,
            )
            .hints
            .push("add `image: NAME:TAG` to the task or to `defaults`".into());
        }
        let timeout = self
            .duration(raw.timeout.as_ref(), &format!("{pointer}/timeout"))
            .or_else(|| self.duration(defaults.timeout.as_ref(), "/defaults/timeout"));
        let retry_raw = raw.retry.clone().or_else(|| defaults.retry.clone());
        let retries = raw.retries.or(defaults.retries);
        if raw.retry.is_some() && raw.retries.is_some() {
            self.error(
                "invalid-key",
                format!("task `{name}` sets both `retries` and `retry`; keep one"),
                &format!("{pointer}/retries"),
                true,
            );
        }
        let mut retry = RetryPolicy::default();
        if let Some(n) = retries {
            retry.attempts = n.saturating_add(1);
        }
        if let Some(r) = retry_raw {
            if let Some(a) = r.attempts {
                retry.attempts = a.max(1);
            }
            if let Some(b) = self.duration(r.backoff.as_ref(), &format!("{pointer}/retry/backoff"))
            {
                retry.backoff = b;
            }
            if let Some(on) = r.on {
                retry.on_failure = on.0.iter().any(|o| o == "failure" || o == "error");
                retry.on_timeout = on.0.iter().any(|o| o == "timeout");
                for (i, o) in on.0.iter().enumerate() {
                    if !matches!(o.as_str(), "failure" | "error" | "timeout" | "rate_limit") {
                        let d = self.error(
                            "invalid-value",
                            format!("unknown retry condition `{o}`"),
                            &format!("{pointer}/retry/on/{i}"),
                            false,
                        );
                        d.hints
                            .push("expected `failure`, `timeout` or `rate_limit`".into());
                    }
                }
            }
        }
        let pool = raw
            .pool
            .clone()
            .or_else(|| defaults.pool.clone())
            .unwrap_or_else(|| {
                if is_agent {
                    "agent".into()
                } else {
                    "default".into()
                }
            });
        if raw.pool.is_some()
            && !limits.pools.is_empty()
            && pool != "default"
            && !limits.pools.contains_key(&pool)
        {
            let hint = did_you_mean(&pool, limits.pools.keys().map(String::as_str));
            let d = self.error(
                "unknown-pool",
                format!("task `{name}` uses pool `{pool}`, which `concurrency` does not define"),
                &format!("{pointer}/pool"),
                false,
            );
            if let Some(h) = hint {
                d.hints.push(h);
            }
        }
        let resources = raw
            .resources
            .clone()
            .or_else(|| defaults.resources.clone())
            .unwrap_or_default();
        if let Some(memory) = &resources.memory {
            if parse_memory(&memory.0).is_none() {
                self.error(
                    "bad-memory",
                    format!(
                        "invalid memory size `{}`: expected e.g. `512m`, `2g` or a number of bytes",
                        memory.0
                    ),
                    &format!("{pointer}/resources/memory"),
                    false,
                );
            }
        }
        let isolation = raw.isolation.or(defaults.isolation).unwrap_or(if is_agent {
            Isolation::Worktree
        } else {
            Isolation::None
        });
        let workdir = raw.workdir.clone().or_else(|| defaults.workdir.clone());
        if let Some(w) = &workdir {
            if escapes_root(w) {
                self.error(
                    "workdir-outside",
                    format!("`workdir` of task `{name}` points outside the repository"),
                    &format!("{pointer}/workdir"),
                    false,
                );
            }
        }
        Some(Task {
            name: name.to_owned(),
            description: raw.description.clone(),
            kind,
            needs,
            for_each,
            condition: raw.condition.clone().map(|c| c.0),
            inputs,
            outputs,
            env,
            workdir,
            runner,
            image,
            pull: raw.pull.unwrap_or(false),
            network: raw.network.clone().or_else(|| defaults.network.clone()),
            cpus: resources.cpus,
            memory: resources.memory.map(|m| m.0),
            timeout,
            retry,
            priority: raw.priority.unwrap_or(0),
            pool,
            cache: raw.cache.or(defaults.cache).unwrap_or(true),
            isolation,
            continue_on_error: raw
                .continue_on_error
                .or(defaults.continue_on_error)
                .unwrap_or(false),
            verify: raw
                .verify
                .as_deref()
                .map(crate::template::contextualize_shell),
            verify_attempts: raw.verify_attempts.unwrap_or(1),
            budget: raw
                .budget
                .as_ref()
                .map(|b| Budget {
                    max_tokens: b.max_tokens,
                    max_cost_usd: b.max_cost_usd,
                })
                .unwrap_or_default(),
        })
    }

    fn check_glob(&mut self, glob: &str, pointer: &str) {
        if let Err(error) = globset::GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
        {
            let kind = error.kind().to_string();
            self.error(
                "bad-glob",
                format!("malformed glob `{glob}`: {kind}"),
                pointer,
                false,
            );
        }
    }

    /// Reports every task-level dependency cycle, spelled out as `a -> b -> a`.
    fn check_cycles(&mut self, tasks: &[Task]) {
        let index: BTreeMap<&str, usize> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut graph = petgraph::graph::DiGraph::<usize, ()>::new();
        let nodes: Vec<_> = (0..tasks.len()).map(|i| graph.add_node(i)).collect();
        for (i, task) in tasks.iter().enumerate() {
            for need in &task.needs {
                if let Some(&j) = index.get(need.as_str()) {
                    if i != j {
                        graph.add_edge(nodes[j], nodes[i], ());
                    }
                }
            }
        }
        let mut reported = HashSet::new();
        for component in petgraph::algo::tarjan_scc(&graph) {
            if component.len() < 2 {
                continue;
            }
            let members: HashSet<usize> = component.iter().map(|n| graph[*n]).collect();
            // Walk needs inside the component from its first task until a repeat.
            let start = *members.iter().min().expect("non-empty");
            let mut path = vec![start];
            let mut current = start;
            loop {
                let next = tasks[current]
                    .needs
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .find(|j| members.contains(j));
                let Some(next) = next else { break };
                if let Some(pos) = path.iter().position(|&p| p == next) {
                    path.drain(..pos);
                    path.push(next);
                    break;
                }
                path.push(next);
                current = next;
            }
            let mut key: Vec<usize> = path.clone();
            key.sort_unstable();
            if !reported.insert(key) {
                continue;
            }
            let spelled: Vec<&str> = path.iter().map(|&i| tasks[i].name.as_str()).collect();
            let first = &tasks[path[0]].name;
            self.error(
                "cycle",
                format!("dependency cycle: {}", spelled.join(" -> ")),
                &format!("{}/needs", task_pointer(first)),
                true,
            )
            .hints
            .push(
                "a task cannot (even indirectly) need itself; remove one of these `needs`".into(),
            );
        }
    }
}

/// Whether a repository-relative path or glob escapes the root.
#[must_use]
pub fn escapes_root(pattern: &str) -> bool {
    let p = Path::new(pattern);
    p.is_absolute()
        || pattern.starts_with('~')
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// Parses `512m`, `2g`, `1.5G`, `256Mi`, or bytes.
#[must_use]
pub fn parse_memory(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let number: f64 = t[..split].parse().ok()?;
    let unit = t[split..].trim().to_ascii_lowercase();
    let factor: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "ki" | "kib" => 1024.0,
        "m" | "mb" | "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * factor;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked to be a finite positive size"
    )]
    (bytes.is_finite() && (1.0..1e18).contains(&bytes)).then_some(bytes as u64)
}

/// Maps a template's 1-based line to a span inside the YAML scalar holding it.
#[must_use]
pub fn template_span(file: &SourceFile, value: Span, line: Option<usize>) -> Span {
    let Some(line) = line else { return value };
    if line <= 1 {
        return value;
    }
    // Block scalars start on the line after the indicator: count from there.
    let (value_line, _) = file.line_col(value.start);
    let text = &file.text[value.start.min(file.text.len())..];
    let is_block = text.starts_with('|') || text.starts_with('>');
    let target = value_line + line - 1 + usize::from(is_block);
    let start = file.offset_of(target, 0);
    let start_trimmed = start + file.text[start..file.line_end(start)].len()
        - file.text[start..file.line_end(start)].trim_start().len();
    Span::new(start_trimmed, file.line_end(start).max(start_trimmed + 1))
}

/// Helper for loaders: the path to show for `path`, relative to `cwd` when inside it.
#[must_use]
pub fn display_path(path: &Path, cwd: &Path) -> String {
    path.strip_prefix(cwd)
        .map_or_else(|_| path.display().to_string(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("15 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512m"), Some(512 * 1024 * 1024));
        assert_eq!(parse_memory("2g"), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_memory("1000"), Some(1000));
        assert_eq!(parse_memory("lots"), None);
    }
}
