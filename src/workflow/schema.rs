//! The JSON Schema of workflow format v1: generated from the serde model
//! (`raw.rs`), printed by `ccflow schema`, committed as
//! `schema/ccflow.schema.json` (a test fails when it drifts), and used to
//! validate every workflow before serde sees it, with each violation mapped
//! back to a source span.

use std::path::Path;
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::raw::{known_keys, RawWorkflow};
use super::yaml::{pointer_segment, SpanMap};
use crate::diagnostic::{did_you_mean, Diagnostic, SourceFile};

/// Where the schema is published, for `# yaml-language-server: $schema=...`.
pub const SCHEMA_URL: &str =
    "https://raw.githubusercontent.com/ccflow/ccflow/main/schema/ccflow.schema.json";

/// The schema as a JSON value (generated once), in draft-07: the draft
/// editors' YAML language servers support fully, and the one whose
/// meta-schema `jsonschema` checks a schema against in a few milliseconds.
/// With draft 2020-12, compiling that meta-schema cost every run that had
/// to validate a workflow (every run in a fresh checkout) 60 ms.
pub fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let generated = schemars::generate::SchemaSettings::draft07()
            .into_generator()
            .into_root_schema_for::<RawWorkflow>();
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
        ["tasks", task, "resources"] => {
            ("RawResources", format!("in `resources` of task `{task}`"))
        }
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

/// Replaces an `anyOf` error by the errors of the one alternative whose
/// type matched (`agent: {promt: x}` is a `RawAgent` with an unknown key, not
/// "not valid under any of the schemas"), recursively. An `anyOf` where no
/// alternative's type matched stays as it is.
fn flatten(
    error: jsonschema::ValidationError<'static>,
    out: &mut Vec<jsonschema::ValidationError<'static>>,
) {
    let jsonschema::ValidationError {
        instance,
        kind,
        instance_path,
        schema_path,
    } = error;
    let ValidationErrorKind::AnyOf { context } = kind else {
        out.push(jsonschema::ValidationError {
            instance,
            kind,
            instance_path,
            schema_path,
        });
        return;
    };
    let path = instance_path.to_string();
    let is_type_mismatch = |branch: &Vec<jsonschema::ValidationError<'static>>| {
        branch.iter().all(|e| {
            matches!(e.kind, ValidationErrorKind::Type { .. })
                && e.instance_path.to_string() == path
        })
    };
    if context.iter().filter(|b| !is_type_mismatch(b)).count() == 1 {
        for branch in context {
            if !is_type_mismatch(&branch) {
                for inner in branch {
                    flatten(inner, out);
                }
            }
        }
        return;
    }
    out.push(jsonschema::ValidationError {
        instance,
        kind: ValidationErrorKind::AnyOf { context },
        instance_path,
        schema_path,
    });
}

/// The JSON types an error expected, named for humans (`null` left out).
fn type_names(kind: &ValidationErrorKind) -> Vec<&'static str> {
    let ValidationErrorKind::Type { kind } = kind else {
        return Vec::new();
    };
    let types: Vec<jsonschema::JsonType> = match kind {
        jsonschema::error::TypeKind::Single(t) => vec![*t],
        jsonschema::error::TypeKind::Multiple(set) => set.iter().collect(),
    };
    types
        .into_iter()
        .filter_map(|t| match t {
            jsonschema::JsonType::Array => Some("a list"),
            jsonschema::JsonType::Boolean => Some("`true` or `false`"),
            jsonschema::JsonType::Integer => Some("a whole number"),
            jsonschema::JsonType::Number => Some("a number"),
            jsonschema::JsonType::Object => Some("a mapping"),
            jsonschema::JsonType::String => Some("a string"),
            jsonschema::JsonType::Null => None,
        })
        .collect()
}

/// A value as messages show it: strings in backticks, the rest as JSON.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("`{s}`"),
        other => other.to_string(),
    }
}

/// The first line holding YAML content (not blank, not a comment).
fn first_content_line(file: &SourceFile) -> crate::diagnostic::Span {
    let mut offset = 0;
    for line in file.text.split_inclusive('\n') {
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') && trimmed != "---" {
            let indent = line.len() - line.trim_start().len();
            return crate::diagnostic::Span::new(offset + indent, offset + line.trim_end().len());
        }
        offset += line.len();
    }
    crate::diagnostic::Span::new(0, 0)
}

/// What a value violating `kind` at `pointer` should have been.
fn detail(error: &jsonschema::ValidationError<'_>, pointer: &str) -> String {
    let value = error.instance.as_ref();
    match &error.kind {
        ValidationErrorKind::Minimum { limit } => format!("must be at least {limit}"),
        ValidationErrorKind::Maximum { limit } if pointer == "/version" => {
            format!("unsupported format version {value}; this ccflow reads version {limit}")
        }
        ValidationErrorKind::Maximum { limit } => format!("must be at most {limit}"),
        ValidationErrorKind::Enum { options } => {
            let options: Vec<String> = options
                .as_array()
                .map(|o| {
                    o.iter()
                        .map(|v| {
                            format!(
                                "`{}`",
                                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "expected one of {}, found {}",
                options.join(", "),
                shown(value)
            )
        }
        kind => {
            if let Some(expected) = expectation(pointer) {
                return expected.to_owned();
            }
            let mut names = type_names(kind);
            if let ValidationErrorKind::AnyOf { context } = kind {
                for branch in context {
                    for e in branch {
                        names.extend(type_names(&e.kind));
                    }
                }
            }
            names.dedup();
            if names.is_empty() {
                error.to_string()
            } else {
                let found = match value {
                    Value::Null => "nothing".to_owned(),
                    Value::Bool(_) => "a boolean".to_owned(),
                    Value::Number(_) => format!("the number {value}"),
                    Value::String(_) => format!("the string {}", shown(value)),
                    Value::Array(_) => "a list".to_owned(),
                    Value::Object(_) => "a mapping".to_owned(),
                };
                format!("expected {}, found {found}", names.join(" or "))
            }
        }
    }
}

/// Where markers of documents that passed validation are kept (see
/// [`validate`]); unset, every document is validated.
static MARKER_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Lets [`validate`] remember documents that passed, under `dir` (the
/// state directory's `validated/`).
pub fn remember_valid_documents_in(dir: std::path::PathBuf) {
    let _ = MARKER_DIR.set(dir);
}

/// The marker file saying `value` passed this binary's schema: compiling
/// the schema costs tens of milliseconds, most of a no-op `ccflow run`,
/// while the same workflow is loaded again and again.
fn marker(value: &Value) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = MARKER_DIR.get()?;
    let exe = std::fs::metadata("/proc/self/exe").ok()?;
    let mut hasher = blake3::Hasher::new();
    // The binary's identity: another build may have another schema.
    for n in [exe.dev(), exe.ino(), exe.size()] {
        hasher.update(&n.to_le_bytes());
    }
    hasher.update(&exe.mtime().to_le_bytes());
    hasher.update(&exe.mtime_nsec().to_le_bytes());
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    hasher.update(&serde_json::to_vec(value).ok()?);
    Some(dir.join(&hasher.finalize().to_hex()[..32]))
}

/// Validates `value` against the schema; every violation becomes a diagnostic at its span.
#[must_use]
pub fn validate(
    value: &Value,
    spans: &SpanMap,
    file: &std::sync::Arc<SourceFile>,
) -> Vec<Diagnostic> {
    let marker = marker(value);
    if marker.as_ref().is_some_and(|m| m.is_file()) {
        return Vec::new();
    }
    let diagnostics = validate_with_schema(value, spans, file);
    if let (true, Some(marker)) = (diagnostics.is_empty(), marker) {
        // Only into a state directory a run created (and git ignores).
        if let Some(dir) = marker.parent() {
            if dir.parent().is_some_and(Path::is_dir) {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(marker, b"");
            }
        }
    }
    diagnostics
}

fn validate_with_schema(
    value: &Value,
    spans: &SpanMap,
    file: &std::sync::Arc<SourceFile>,
) -> Vec<Diagnostic> {
    let Some(validator) = validator() else {
        return vec![
            Diagnostic::error("schema", "the embedded schema does not compile").in_file(file),
        ];
    };
    let mut errors = Vec::new();
    for error in validator.iter_errors(value) {
        flatten(error.to_owned(), &mut errors);
    }
    let mut diagnostics = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for error in errors {
        let pointer = error.instance_path.to_string();
        let diagnostic = match &error.kind {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let (definition, context) = describe(&pointer);
                for key in unexpected {
                    let key_pointer = format!("{pointer}/{}", pointer_segment(key));
                    let known = known_keys(schema(), definition);
                    let noun = if pointer.starts_with("/concurrency") {
                        "pool"
                    } else {
                        "key"
                    };
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
                            known
                                .iter()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
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
                // The top level has no key to point at: its first line stands for it.
                let span = if pointer.is_empty() {
                    first_content_line(file)
                } else {
                    spans.key_or_value(&pointer)
                };
                let hint = match name {
                    "version" => "add `version: 1` as the first line".to_owned(),
                    "tasks" => "add a `tasks:` mapping with at least one task, e.g. `tasks: { build: { run: make } }`".to_owned(),
                    other => format!("add `{other}: ...`"),
                };
                Diagnostic::error(
                    "missing-key",
                    format!("missing required key `{name}` {context}"),
                )
                .at(file, span)
                .with_hint(hint)
            }
            _ => {
                let path = pointer_to_path(&pointer);
                Diagnostic::error(
                    "invalid-value",
                    format!("invalid value for `{path}`: {}", detail(&error, &pointer)),
                )
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
    fn schema_is_draft_07_and_closed() {
        let s = schema();
        assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
        assert_eq!(s["additionalProperties"], false);
        assert!(known_keys(s, "RawTask").contains(&"needs".to_string()));
    }
}
