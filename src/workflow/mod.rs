//! Workflow files: discovery, the span-aware YAML reader, the raw serde
//! model, its JSON Schema, and resolution into a checked [`Workflow`].

pub mod discover;
pub mod model;
pub mod raw;
pub mod resolve;
pub mod schema;
pub mod yaml;

pub use model::{AgentSpec, FanSource, ForEach, Task, TaskKind, Workflow};
pub use resolve::{load, Loaded};
