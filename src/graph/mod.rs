//! The plan: task instances as petgraph nodes, their ids, their rendering,
//! and the text/JSON/dot/mermaid views of it.

pub mod format;
pub mod instance;
pub mod plan;

pub use instance::{InstanceId, RenderedInstance};
pub use plan::{EdgeKind, Instance, NodeKind, Plan};
