//! The shipped agent examples (`examples/refactor.yaml`,
//! `examples/add-tests.yaml`) run against the shipped mock script
//! (`examples/mock/agents.yaml`) on a small Rust crate.

use crate::support::{instance, with_status, Mock, Repo};

fn example(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .expect("read the example")
}

/// A crate with one file returning `Box<dyn Error>` and two modules with
/// `mod.rs`; shell tasks find a working `cargo` on PATH.
fn crate_repo(claude: &std::path::Path) -> Option<Repo> {
    let mut repo = Repo::new(claude);
    let cargo = String::from_utf8_lossy(
        &std::process::Command::new("sh")
            .args(["-c", "command -v cargo"])
            .output()
            .ok()?
            .stdout,
    )
    .trim()
    .to_owned();
    if cargo.is_empty() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cargo is required under CI=true"
        );
        eprintln!("skipping: no cargo on PATH");
        return None;
    }
    // ccflow gives tasks a clean environment with our temp HOME: a shim
    // keeps the real rustup/cargo homes.
    let home = std::env::var("HOME").unwrap_or_default();
    let rustup_home = std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{home}/.rustup"));
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo"));
    let shims = repo.home.join("bin");
    std::fs::create_dir_all(&shims).expect("shims");
    let shim = shims.join("cargo");
    std::fs::write(&shim, format!("#!/bin/sh\nRUSTUP_HOME='{rustup_home}' CARGO_HOME='{cargo_home}' exec '{cargo}' \"$@\"\n")).expect("shim");
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    repo.set_env(
        "PATH",
        &format!(
            "{}:{}",
            shims.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    repo.write("Cargo.toml", "[package]\nname = \"fixture\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n");
    repo.write(".gitignore", "target/\n");
    repo.write(
        "src/lib.rs",
        "pub mod alpha;\npub mod beta;\npub mod parse;\n",
    );
    repo.write(
        "src/parse.rs",
        "pub fn parse(s: &str) -> Result<u32, Box<dyn std::error::Error>> {\n    Ok(s.trim().parse::<u32>().map_err(|_| std::fmt::Error)?)\n}\n\npub fn parse_twice(s: &str) -> Result<u32, Box<dyn std::error::Error>> {\n    Ok(parse(s)? * 2)\n}\n",
    );
    repo.write(
        "src/alpha/mod.rs",
        "pub fn value() -> u32 {\n    1\n}\n\n// tests go here\n",
    );
    repo.write(
        "src/beta/mod.rs",
        "pub fn value() -> u32 {\n    2\n}\n\n// tests go here\n",
    );
    repo.commit("crate");
    Some(repo)
}

#[test]
fn refactor_example_replaces_boxed_errors_and_the_crate_still_checks() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let Some(repo) = crate_repo(&claude) else {
        return;
    };
    repo.workflow("refactor", &example("examples/refactor.yaml"));
    let mock = Mock::start(&example("examples/mock/agents.yaml"));
    let out = repo.ccflow(&mock, &["run", "refactor"]);
    assert_eq!(out.code, 0);
    let record = repo.last_record();
    assert_eq!(
        with_status(&record, "succeeded"),
        vec!["refactor[src/parse.rs]".to_owned(), "check".to_owned()],
        "{record:#}"
    );
    let parse = repo.read("src/parse.rs");
    assert!(
        !parse.contains("Box<dyn") && parse.matches("std::fmt::Error").count() == 3,
        "{parse}"
    );
    assert_eq!(mock.stats().per_rule.get("refactor"), Some(&3));
    assert_eq!(mock.stats().unmatched_requests, 0);
    assert!(
        instance(&record, "refactor[src/parse.rs]")["usage"]["cost_usd"]
            .as_f64()
            .is_some_and(|c| c > 0.0)
    );
}

#[test]
fn add_tests_example_writes_tests_that_cargo_test_runs() {
    let Some(claude) = crate::support::claude() else {
        return;
    };
    let Some(repo) = crate_repo(&claude) else {
        return;
    };
    repo.workflow("add-tests", &example("examples/add-tests.yaml"));
    let mock = Mock::start(&example("examples/mock/agents.yaml"));
    let out = repo.ccflow(&mock, &["run", "add-tests"]);
    let record = repo.last_record();
    let log = instance(&record, "run-tests")["log"]
        .as_str()
        .expect("log")
        .to_owned();
    let log = std::fs::read_to_string(repo.run_dir(&record).join(log)).expect("run-tests log");
    assert_eq!(out.code, 0, "{log}");
    assert_eq!(
        with_status(&record, "succeeded").len(),
        3,
        "inventory, one batch of two modules, run-tests: {record:#}"
    );
    for module in ["alpha", "beta"] {
        assert!(repo
            .read(&format!("src/{module}/tests.rs"))
            .contains("fn value_is_positive"));
        assert!(repo
            .read(&format!("src/{module}/mod.rs"))
            .contains("#[cfg(test)]\nmod tests;"));
    }
    assert_eq!(mock.stats().per_rule.get("add-tests-pair"), Some(&5));
    assert!(log.contains("2 passed"), "{log}");
}
