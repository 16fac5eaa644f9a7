//! The checked workflow: what `resolve` produces from the raw model once
//! every semantic rule holds (names exist, no cycles, templates compile,
//! durations parse). Later stages read only these types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::raw::{Isolation, RawMatrix, Runner};
use super::yaml::SpanMap;
use crate::diagnostic::{SourceFile, Span};

#[derive(Debug)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    /// The workflow file.
    pub path: PathBuf,
    pub file: Arc<SourceFile>,
    pub spans: SpanMap,
    /// The repository root (tasks run relative to it).
    pub root: PathBuf,
    pub vars: BTreeMap<String, Value>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub limits: Limits,
    pub budget: Budget,
    /// Tasks in declaration order.
    pub tasks: Vec<Task>,
}

impl Workflow {
    #[must_use]
    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }

    #[must_use]
    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name == name)
    }

    /// The span of a task's name.
    #[must_use]
    pub fn task_span(&self, name: &str) -> Span {
        self.spans
            .key_or_value(&format!("/tasks/{}", super::yaml::pointer_segment(name)))
    }
}

/// Concurrency: a global limit and per-pool limits.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub global: Option<usize>,
    pub pools: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    pub max_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub description: Option<String>,
    pub kind: TaskKind,
    pub needs: Vec<String>,
    pub for_each: Option<ForEach>,
    pub condition: Option<String>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub runner: Runner,
    pub image: Option<String>,
    pub pull: bool,
    pub network: Option<String>,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub priority: i32,
    pub pool: String,
    pub cache: bool,
    pub isolation: Isolation,
    pub continue_on_error: bool,
    pub verify: Option<String>,
    pub verify_attempts: u32,
    pub budget: Budget,
}

impl Task {
    #[must_use]
    pub fn is_agent(&self) -> bool {
        matches!(self.kind, TaskKind::Agent(_))
    }

    /// Whether this task's instances are only known at run time.
    #[must_use]
    pub fn is_dynamic(&self) -> bool {
        self.for_each
            .as_ref()
            .is_some_and(|f| matches!(f.source, FanSource::LinesOf(_) | FanSource::JsonOf(_)))
    }
}

#[derive(Debug, Clone)]
pub enum TaskKind {
    Shell {
        script: String,
        /// `None` means the default: `sh -c`, or a direct exec when the command needs no shell.
        shell: Option<Vec<String>>,
    },
    Agent(AgentSpec),
}

#[derive(Debug, Clone, Default)]
pub struct AgentSpec {
    pub prompt: String,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub append_system_prompt: Option<String>,
    pub mcp_config: Option<String>,
    pub permission_mode: Option<String>,
    pub command: Option<String>,
    pub bare: bool,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ForEach {
    pub source: FanSource,
    pub batch: Option<usize>,
}

#[derive(Debug, Clone)]
pub enum FanSource {
    Files {
        globs: Vec<String>,
        exclude: Vec<String>,
    },
    Items(Vec<Value>),
    Matrix(RawMatrix),
    From(String),
    LinesOf(String),
    JsonOf(String),
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts including the first.
    pub attempts: u32,
    pub backoff: Duration,
    pub on_failure: bool,
    pub on_timeout: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            backoff: Duration::from_secs(1),
            on_failure: true,
            on_timeout: true,
        }
    }
}
