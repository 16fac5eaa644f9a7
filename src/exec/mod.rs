//! Execution.

pub mod docker;
