//! The JSON Schema of workflow format v1: generated from the serde model
//! (`raw.rs`), printed by `ccflow schema`, committed as
//! `schema/ccflow.schema.json` (a test fails when it drifts), and used to
//! validate every workflow before serde sees it, with each violation mapped
//! back to a source span.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::raw::{known_keys, RawWorkflow};
use super::yaml::{pointer_segment, SpanMap};
use crate::diagnostic::{did_you_mean, Diagnostic, SourceFile};

/// Where the schema is published, for `# yaml-language-server: $schema=...`.
pub const SCHEMA_URL: &str =
    "https://raw.githubusercontent.com/ccflow/ccflow/main/schema/ccflow.schema.json";

/// The schema as a JSON value (generated once).
pub fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let generated = schemars::schema_for!(RawWorkflow);
        let mut value = serde_json::to_value(&generated).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert("$id".into(), Value::String(SCHEMA_URL.into()));
        }
        value
    })
}

/// The schema as pretty JSON with a trailing newline (the committed file's content).
#[must_use]
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(schema()).unwrap_or_default();
    text.push('\n');
    text
}

fn validator() -> Option<&'static jsonschema::Validator> {
    static VALIDATOR: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| jsonschema::validator_for(schema()).ok())
        .as_ref()
}

/// Which model type sits at a JSON pointer, and how to name it in messages.
fn describe(pointer: &str) -> (&'static str, String) {
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    match parts.as_slice() {
        [] => ("RawWorkflow", "at the top level".into()),
        ["defaults"] => ("RawDefaults", "in `defaults`".into()),
        ["defaults", "retry"] => ("RawRetry", "in `defaults.retry`".into()),
        ["defaults", "resources"] => ("RawResources", "in `defaults.resources`".into()),
        ["budget"] => ("RawBudget", "in `budget`".into()),
        ["tasks", task] => ("RawTask", format!("in task `{task}`")),
        ["tasks", task, "agent"] => ("RawAgent", format!("in `agent` of task `{task}`")),
        ["tasks", task, "for_each"] => ("RawForEach", format!("in `for_each` of task `{task}`")),
        ["tasks", task, "retry"] => ("RawRetry", format!("in `retry` of task `{task}`")),
        ["tasks", task, "resources"] => ("RawResources", format!("in `resources` of task `{task}`")),
        ["tasks", task, "budget"] => ("RawBudget", format!("in `budget` of task `{task}`")),
        _ => ("", format!("at `{}`", pointer_to_path(pointer))),
    }
}

/// `/tasks/lint/needs/0` → `tasks.lint.needs[0]`.
#[must_use]
pub fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part);
        }
    }
    if out.is_empty() {
        "the top level".into()
    } else {
        out
    }
}

fn expectation(pointer: &str) -> Option<&'static str> {
    let last = pointer.rsplit('/').next().unwrap_or("");
    match last {
        "needs" | "inputs" | "outputs" | "files" | "exclude" | "shell" | "on" => {
            Some("expected a string or a list of strings")
        }
        "timeout" | "backoff" | "idle_timeout" => {
            Some("expected a duration such as `90s`, `15m` or `1h30m`, or a number of seconds")
        }
        "concurrency" => Some("expected a number, or a mapping of pool name to number"),
        "if" => Some("expected a template rendering to true/false, or a boolean"),
        _ => None,
    }
}

/// Validates `value` against the schema; every violation becomes a diagnostic at its span.
#[must_use]
pub fn validate(value: &Value, spans: &SpanMap, file: &std::sync::Arc<SourceFile>) -> Vec<Diagnostic> {
    let Some(validator) = validator() else {
        return vec![Diagnostic::error("schema", "the embedded schema does not compile").in_file(file)];
    };
    let mut diagnostics = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for error in validator.iter_errors(value) {
        let pointer = error.instance_path.to_string();
        let diagnostic = match &error.kind {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let (definition, context) = describe(&pointer);
                for key in unexpected {
                    let key_pointer = format!("{pointer}/{}", pointer_segment(key));
                    let known = known_keys(schema(), definition);
                    let noun = if pointer.starts_with("/concurrency") { "pool" } else { "key" };
                    let mut diagnostic = Diagnostic::error(
                        "unknown-key",
                        format!("unknown {noun} `{key}` {context}"),
                    )
                    .at(file, spans.key_or_value(&key_pointer))
                    .with_label("not a known key");
                    if let Some(hint) = did_you_mean(key, known.iter().map(String::as_str)) {
                        diagnostic = diagnostic.with_hint(hint);
                    } else if !known.is_empty() {
                        diagnostic = diagnostic.with_hint(format!(
                            "expected one of {}",
                            known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                        ));
                    }
                    if seen.insert((key_pointer.clone(), "unknown")) {
                        diagnostics.push(diagnostic);
                    }
                }
                continue;
            }
            ValidationErrorKind::Required { property } => {
                let (_, context) = describe(&pointer);
                let name = property.as_str().unwrap_or("?");
                Diagnostic::error("missing-key", format!("missing required key `{name}` {context}"))
                    .at(file, spans.key_or_value(&pointer))
            }
            _ => {
                let path = pointer_to_path(&pointer);
                let detail = expectation(&pointer).map_or_else(|| error.to_string(), str::to_owned);
                Diagnostic::error("invalid-value", format!("invalid value for `{path}`: {detail}"))
                    .at(file, spans.value(&pointer))
            }
        };
        // anyOf alternatives can report the same place several times.
        if seen.insert((pointer, "value")) {
            diagnostics.push(diagnostic);
        }
    }
    diagnostics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schema_matches_the_model() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/ccflow.schema.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = schema_text();
        if committed != generated {
            if std::env::var_os("CCFLOW_UPDATE_SCHEMA").is_some() {
                std::fs::write(path, &generated).expect("write schema");
                return;
            }
            panic!(
                "schema/ccflow.schema.json differs from the model; regenerate it with \
                 `CCFLOW_UPDATE_SCHEMA=1 cargo test committed_schema` or `ccflow schema > schema/ccflow.schema.json`"
            );
        }
    }

    #[test]
    fn schema_is_2020_12_and_closed() {
        let s = schema();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(s["additionalProperties"], false);
        assert!(known_keys(s, "RawTask").contains(&"needs".to_string()));
    }
}
