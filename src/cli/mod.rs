//! Command-line entry point (skeleton).

/// Runs the CLI and returns the process exit code.
#[must_use]
pub fn main() -> i32 {
    0
}
