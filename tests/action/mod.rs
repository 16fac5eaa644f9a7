//! The GitHub Action harness: runs `action.yml` as the Actions runner would
//! (see `runner.rs`), with a small evaluator for `${{ }}` (`expr.rs`).

pub mod expr;
pub mod runner;
