//! Scheduler: filled in by its owner.
