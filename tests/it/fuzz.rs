//! Placeholder, replaced by the mutation fuzzer.
