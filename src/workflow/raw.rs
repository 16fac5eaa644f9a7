//! The serde model of workflow format v1, exactly as written in YAML.
//!
//! These types are the single source of `schema/ccflow.schema.json` (via
//! schemars), so doc comments here are what editors show. They hold what the
//! user wrote; `resolve` turns them into a checked `Workflow`. Either/or
//! values (`"a"` or `["a"]`, `8` or `{agent: 4}`) have hand-written
//! `Deserialize`/`JsonSchema` impls rather than `serde(untagged)`, so the
//! schema stays precise; the schema pass runs before serde ever sees a value.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A ccflow workflow (format version 1).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ccflow workflow")]
pub struct RawWorkflow {
    /// The format version; always `1`.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// A short name; defaults to the file name.
    #[serde(default)]
    pub name: Option<String>,
    /// What this workflow is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Template variables (`{{ vars.x }}`), overridable with `--var x=value`.
    #[serde(default)]
    pub vars: BTreeMap<String, Value>,
    /// Environment variables passed to every task.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Names of environment variables passed through from the caller: never logged, never hashed.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Defaults applied to every task.
    #[serde(default)]
    pub defaults: Option<RawDefaults>,
    /// How many tasks run at once: a number, or a limit per pool (`{default: 8, agent: 4}`).
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
    /// Spending limits for the agents of one run.
    #[serde(default)]
    pub budget: Option<RawBudget>,
    /// The tasks, by name.
    pub tasks: BTreeMap<String, RawTask>,
}

/// Task settings that every task inherits unless it sets its own.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    #[serde(default)]
    pub runner: Option<Runner>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub shell: Option<StringOrList>,
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub cache: Option<bool>,
    #[serde(default)]
    pub isolation: Option<Isolation>,
    #[serde(default)]
    pub continue_on_error: Option<bool>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub resources: Option<RawResources>,
    #[serde(default)]
    pub network: Option<String>,
}

/// One task: a shell command (`run`) or a Claude Code session (`agent`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    /// What the task does.
    #[serde(default)]
    pub description: Option<String>,
    /// A shell command (a template; interpolated values are shell-quoted).
    #[serde(default)]
    pub run: Option<String>,
    /// The interpreter for `run`, default `sh -c` (e.g. `bash -eo pipefail -c`).
    #[serde(default)]
    pub shell: Option<StringOrList>,
    /// A headless Claude Code session.
    #[serde(default)]
    pub agent: Option<RawAgent>,
    /// Tasks that must finish first.
    #[serde(default)]
    pub needs: Option<StringOrList>,
    /// Fan-out: one instance of this task per item.
    #[serde(default)]
    pub for_each: Option<RawForEach>,
    /// A template that renders to `true` or `false`; `false` skips the instance.
    #[serde(default, rename = "if")]
    pub condition: Option<Condition>,
    /// Files the task reads (globs, templated; default: its outputs): part of the cache key.
    #[serde(default)]
    pub inputs: Option<StringOrList>,
    /// Files the task writes (globs, templated): cached and restored.
    #[serde(default)]
    pub outputs: Option<StringOrList>,
    /// Environment variables for this task.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Working directory, relative to the repository root.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Where the task runs.
    #[serde(default)]
    pub runner: Option<Runner>,
    /// The container image for `runner: docker`.
    #[serde(default)]
    pub image: Option<String>,
    /// Pull the image when it is not present (default false).
    #[serde(default)]
    pub pull: Option<bool>,
    /// Container network (`runner: docker`); default `none`.
    #[serde(default)]
    pub network: Option<String>,
    /// CPU and memory limits.
    #[serde(default)]
    pub resources: Option<RawResources>,
    /// Wall-clock limit, e.g. `90s`, `15m`, `1h30m`.
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    /// How many times to retry a failed instance.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Retry policy (attempts, backoff).
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Higher runs first among ready instances.
    #[serde(default)]
    pub priority: Option<i32>,
    /// The concurrency pool (see `concurrency`); agents default to `agent`.
    #[serde(default)]
    pub pool: Option<String>,
    /// Cache this task's results (default true).
    #[serde(default)]
    pub cache: Option<bool>,
    /// `worktree` runs the task in its own checkout; agents default to it.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// A failure of this task does not fail the run.
    #[serde(default)]
    pub continue_on_error: Option<bool>,
    /// Agent tasks: a shell check run in the agent's worktree; on failure the session is resumed.
    #[serde(default)]
    pub verify: Option<String>,
    /// Agent tasks: how many times `verify` may send the agent back (default 1).
    #[serde(default)]
    pub verify_attempts: Option<u32>,
    /// Spending limits for this task's agents.
    #[serde(default)]
    pub budget: Option<RawBudget>,
}

/// A headless Claude Code session.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// The prompt (a template).
    pub prompt: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    #[serde(default)]
    pub max_budget_usd: Option<f64>,
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    #[serde(default)]
    pub disallowed_tools: Vec<String>,
    #[serde(default)]
    pub append_system_prompt: Option<String>,
    #[serde(default)]
    pub mcp_config: Option<String>,
    /// Default `acceptEdits`.
    #[serde(default)]
    pub permission_mode: Option<String>,
    /// The claude binary (else `CCFLOW_CLAUDE`, else `claude` on PATH).
    #[serde(default)]
    pub command: Option<String>,
    /// Hermetic mode (default true): no CLAUDE.md, hooks or settings.
    #[serde(default)]
    pub bare: Option<bool>,
    /// Kill and retry a session silent for this long (default 10m).
    #[serde(default)]
    pub idle_timeout: Option<DurationValue>,
}

/// What a task fans out over. Exactly one source: `files`, `items`, `matrix`, `from`, `lines_of` or `json_of`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawForEach {
    /// Glob(s) over the repository (honours .gitignore).
    #[serde(default)]
    pub files: Option<StringOrList>,
    /// Globs to leave out of `files`.
    #[serde(default)]
    pub exclude: Option<StringOrList>,
    /// A list of scalars or maps.
    #[serde(default)]
    pub items: Option<Vec<Value>>,
    /// The cartesian product of the lists, with `include`/`exclude` as in GitHub Actions.
    #[serde(default)]
    pub matrix: Option<RawMatrix>,
    /// One instance per instance of this task (a per-item pipeline).
    #[serde(default)]
    pub from: Option<String>,
    /// One instance per non-empty line of this file, produced by an upstream task.
    #[serde(default)]
    pub lines_of: Option<String>,
    /// One instance per element of the JSON array in this file, produced by an upstream task.
    #[serde(default)]
    pub json_of: Option<String>,
    /// Groups items into chunks of this size (one instance per chunk).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub batch: Option<u32>,
}

/// A build matrix: axes as lists, plus `include` and `exclude` combinations.
#[derive(Debug, Clone, Default)]
pub struct RawMatrix {
    pub axes: BTreeMap<String, Vec<Value>>,
    pub axis_order: Vec<String>,
    pub include: Vec<BTreeMap<String, Value>>,
    pub exclude: Vec<BTreeMap<String, Value>>,
}

impl<'de> Deserialize<'de> for RawMatrix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let Value::Object(map) = Value::deserialize(deserializer)? else {
            return Err(D::Error::custom(
                "expected a mapping of axis name to a list",
            ));
        };
        let mut matrix = RawMatrix::default();
        for (key, value) in map {
            match key.as_str() {
                "include" | "exclude" => {
                    let list: Vec<BTreeMap<String, Value>> =
                        serde_json::from_value(value).map_err(D::Error::custom)?;
                    if key == "include" {
                        matrix.include = list;
                    } else {
                        matrix.exclude = list;
                    }
                }
                _ => {
                    let Value::Array(values) = value else {
                        return Err(D::Error::custom(format!(
                            "matrix axis `{key}` must be a list"
                        )));
                    };
                    matrix.axis_order.push(key.clone());
                    matrix.axes.insert(key, values);
                }
            }
        }
        Ok(matrix)
    }
}

impl JsonSchema for RawMatrix {
    fn schema_name() -> Cow<'static, str> {
        "Matrix".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Axes as lists of values; `include` adds combinations, `exclude` removes them.",
            "type": "object",
            "properties": {
                "include": {"type": "array", "items": {"type": "object"}},
                "exclude": {"type": "array", "items": {"type": "object"}}
            },
            "additionalProperties": {"type": "array", "minItems": 1}
        })
    }
}

/// `retry:` — a retry policy.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total attempts including the first (so `attempts: 3` retries twice).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub attempts: Option<u32>,
    /// The first backoff delay, doubled each retry, with jitter (default `1s`).
    #[serde(default)]
    pub backoff: Option<DurationValue>,
    /// Which failures to retry: `failure`, `timeout`, `rate_limit` (default all).
    #[serde(default)]
    pub on: Option<StringOrList>,
}

/// CPU and memory limits.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    /// CPUs, e.g. `1.5`.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Memory, e.g. `512m`, `2g`, or bytes.
    #[serde(default)]
    pub memory: Option<EnvValue>,
}

/// Spending limits.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
}

/// Where a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runner {
    Local,
    Docker,
}

/// Whether a task gets its own checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    None,
    Worktree,
}

/// A string, or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringOrList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(StringOrList(vec![s])),
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(D::Error::custom(format!(
                        "expected a string, found {other}"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(StringOrList),
            other => Err(D::Error::custom(format!(
                "expected a string or a list of strings, found {other}"
            ))),
        }
    }
}

impl JsonSchema for StringOrList {
    fn schema_name() -> Cow<'static, str> {
        "StringOrList".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}}
            ]
        })
    }
}

/// A scalar written as a string, number or boolean (kept as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(EnvValue(s)),
            Value::Number(n) => Ok(EnvValue(n.to_string())),
            Value::Bool(b) => Ok(EnvValue(b.to_string())),
            other => Err(D::Error::custom(format!(
                "expected a string, found {other}"
            ))),
        }
    }
}

impl JsonSchema for EnvValue {
    fn schema_name() -> Cow<'static, str> {
        "Scalar".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": ["string", "number", "boolean"]})
    }
}

/// A duration: `90s`, `15m`, `1h30m`, `500ms`, or a number of seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationValue(pub String);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        EnvValue::deserialize(deserializer).map(|v| DurationValue(v.0))
    }
}

impl JsonSchema for DurationValue {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration such as `90s`, `15m`, `1h30m`, `500ms`, or a number of seconds.",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*([0-9]+(\\.[0-9]+)?\\s*(ms|s|m|h|d)\\s*)+$"},
                {"type": "number", "minimum": 0}
            ]
        })
    }
}

/// `if:` — a template rendering to true/false, or a boolean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition(pub String);

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        EnvValue::deserialize(deserializer).map(|v| Condition(v.0))
    }
}

impl JsonSchema for Condition {
    fn schema_name() -> Cow<'static, str> {
        "Condition".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A template that renders to `true` or `false`, e.g. `{{ item.ext == 'rs' }}`.",
            "type": ["string", "boolean"]
        })
    }
}

/// `concurrency:` — a number, or a limit per pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concurrency {
    Global(u32),
    Pools(BTreeMap<String, u32>),
}

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(deserializer)? {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Concurrency::Global)
                .ok_or_else(|| D::Error::custom("expected a positive whole number")),
            Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .map(|n| (k.clone(), n))
                        .ok_or_else(|| D::Error::custom(format!("pool `{k}` needs a whole number")))
                })
                .collect::<Result<_, _>>()
                .map(Concurrency::Pools),
            other => Err(D::Error::custom(format!(
                "expected a number or a mapping of pool to number, found {other}"
            ))),
        }
    }
}

impl JsonSchema for Concurrency {
    fn schema_name() -> Cow<'static, str> {
        "Concurrency".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "How many tasks run at once: a number, or a limit per pool such as `{default: 8, agent: 4}`.",
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}}
            ]
        })
    }
}

/// The known keys of each object kind, for "did you mean" hints. Read from the
/// generated schema so they cannot drift from the types.
#[must_use]
pub fn known_keys(schema: &Value, definition: &str) -> Vec<String> {
    let node = if definition == "RawWorkflow" {
        Some(schema)
    } else {
        schema.get("definitions").and_then(|d| d.get(definition))
    };
    node.and_then(|n| n.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}
