//! Links the `ccflow` executable at a fixed address (not position
//! independent) on Linux: a position-independent one spends its start
//! applying ~25,000 relocations, which also copies ~110 pages of tables
//! that are read-only afterwards, a page fault each (2.2 µs each in the
//! CI virtual machines). ccflow starts once per run, and often. The
//! executable itself then loads at a fixed address (its libraries, heap
//! and stacks are still randomized): fine for a developer tool.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os == "linux" && target_env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
