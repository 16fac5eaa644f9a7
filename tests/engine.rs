//! End-to-end tests of the engine and the cache: the real `ccflow` binary
//! run in temporary git repositories. One file per feature under
//! `tests/engine/`.

#[path = "engine/support.rs"]
mod support;

#[path = "engine/bad_input.rs"]
mod bad_input;
#[path = "engine/cache.rs"]
mod cache;
#[path = "engine/concurrency.rs"]
mod concurrency;
#[path = "engine/crash.rs"]
mod crash;
#[path = "engine/docker.rs"]
mod docker;
#[path = "engine/dynamic.rs"]
mod dynamic;
#[path = "engine/examples.rs"]
mod examples;
#[path = "engine/failure.rs"]
mod failure;
#[path = "engine/memo.rs"]
mod memo;
#[path = "engine/output.rs"]
mod output;
#[path = "engine/retries.rs"]
mod retries;
#[path = "engine/secrets.rs"]
mod secrets;
#[path = "engine/signals.rs"]
mod signals;
#[path = "engine/throughput.rs"]
mod throughput;
