//! The integration test binary: each module tests one feature by running the
//! real `ccflow` binary (through `support::Test`) or the library directly.

mod corpus;
mod fuzz;
mod support;
