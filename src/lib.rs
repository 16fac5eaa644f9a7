//! ccflow runs declarative workflows of shell tasks and headless Claude Code
//! sessions, committed in `.claudecluster/*.yaml`, as a cached parallel DAG.
//!
//! The modules follow the pipeline: discover → parse → validate → expand →
//! plan → hash → execute → report.

pub mod agent;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod diagnostic;
pub mod error;
pub mod exec;
pub mod fanout;
pub mod graph;
pub mod memo;
pub mod mock;
pub mod report;
pub mod template;
pub mod workflow;
pub mod workspace;
