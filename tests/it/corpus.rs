//! The corpus of invalid workflows: every file under `tests/corpus/invalid/`
//! is one mistake, and `NAME.expected` beside it holds the exact stderr of
//! `ccflow validate NAME.yaml` (paths relative). A few inputs are generated
//! here instead of committed (binary garbage, a 10 MB file).
//!
//! `CCFLOW_BLESS=1 cargo test --test it corpus` rewrites the expected files;
//! review the diff by eye: each message must say what, where, and what to do.
//!
//! Also here: the examples validate and plan in every format, and a fan-out
//! that matches nothing is a warning, not an error.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::support::{repo_root, Test};

fn corpus_dir() -> PathBuf {
    repo_root().join("tests/corpus/invalid")
}

fn bless() -> bool {
    std::env::var_os("CCFLOW_BLESS").is_some_and(|v| v != "0")
}

/// Inputs generated at test time rather than committed.
fn generated() -> Vec<(&'static str, Vec<u8>)> {
    // Deterministic binary garbage: high bytes and control characters, not UTF-8.
    let mut rng = fastrand::Rng::with_seed(7);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
    // A 10 MB workflow: a valid start followed by a huge item list.
    let mut huge = String::from("version: 1\ntasks:\n  t:\n    for_each:\n      items:\n");
    while huge.len() < 10 * 1024 * 1024 {
        huge.push_str("        - some-item-name-that-is-quite-long\n");
    }
    huge.push_str("    run: echo {{ item }}\n");
    vec![
        ("binary-garbage.yaml", garbage),
        ("ten-megabytes.yaml", huge.into_bytes()),
    ]
}

/// One case: the file name, its bytes, and the arguments (default `validate FILE`).
struct Case {
    name: String,
    content: Vec<u8>,
    args: Vec<String>,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("read tests/corpus/invalid")
        .map(|e| e.expect("read corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let content = std::fs::read(&path).expect("read corpus file");
        // `NAME.args` replaces the default command line; `{file}` is the workflow.
        let args_path = path.with_extension("args");
        let args = match std::fs::read_to_string(&args_path) {
            Ok(text) => text
                .split_whitespace()
                .map(|a| a.replace("{file}", &name))
                .collect(),
            Err(_) => vec!["validate".to_owned(), name.clone()],
        };
        cases.push(Case {
            name,
            content,
            args,
        });
    }
    for (name, content) in generated() {
        cases.push(Case {
            name: name.to_owned(),
            content,
            args: vec!["validate".into(), name.into()],
        });
    }
    cases
}

fn expected_path(name: &str) -> PathBuf {
    corpus_dir().join(Path::new(name).with_extension("expected"))
}

#[test]
fn corpus_has_at_least_thirty_mistakes() {
    assert!(cases().len() >= 30, "only {} corpus files", cases().len());
}

#[test]
fn every_invalid_workflow_fails_with_its_expected_message() {
    let mut failures = String::new();
    for case in cases() {
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let test = Test::new().file(&case.name, &case.content).args(&args);
        let out = test.run();
        let root = test.path().display().to_string();
        let stderr = out.stderr.replace(&root, "[ROOT]");
        let expected_file = expected_path(&case.name);
        if bless() {
            std::fs::write(&expected_file, &stderr).expect("write expected file");
        }
        if out.code != 2 {
            let _ = writeln!(
                failures,
                "{}: exit code {} (expected 2)\n{stderr}",
                case.name, out.code
            );
            continue;
        }
        if out.stdout.contains("panicked") || stderr.contains("panicked") {
            let _ = writeln!(failures, "{}: panicked\n{stderr}", case.name);
            continue;
        }
        let located = stderr.lines().any(|line| {
            line.trim_start().strip_prefix("--> ").is_some_and(|loc| {
                let mut parts = loc.rsplitn(3, ':');
                let col = parts.next().and_then(|c| c.parse::<usize>().ok());
                let line_no = parts.next().and_then(|l| l.parse::<usize>().ok());
                let file = parts.next();
                col.is_some() && line_no.is_some() && file == Some(case.name.as_str())
            })
        });
        if !located {
            let _ = writeln!(
                failures,
                "{}: no `{}:LINE:COL` location in stderr\n{stderr}",
                case.name, case.name
            );
            continue;
        }
        match std::fs::read_to_string(&expected_file) {
            Ok(expected) if expected == stderr => {}
            Ok(expected) => {
                let _ = writeln!(
                    failures,
                    "{}: stderr differs from {}\n--- expected\n{expected}--- actual\n{stderr}",
                    case.name,
                    expected_file.display()
                );
            }
            Err(_) => {
                let _ = writeln!(
                    failures,
                    "{}: missing {} (run with CCFLOW_BLESS=1)\n{stderr}",
                    case.name,
                    expected_file.display()
                );
            }
        }
    }
    assert!(failures.is_empty(), "corpus failures:\n{failures}");
}

#[test]
fn no_expected_file_is_orphaned() {
    let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
    for entry in std::fs::read_dir(corpus_dir()).expect("read corpus") {
        let path = entry.expect("entry").path();
        if path
            .extension()
            .is_some_and(|e| e == "expected" || e == "args")
        {
            let stem = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            assert!(
                names.iter().any(|n| Path::new(n)
                    .file_stem()
                    .is_some_and(|s| s.to_string_lossy() == stem)),
                "{} has no workflow beside it",
                path.display()
            );
        }
    }
}

fn examples() -> Vec<String> {
    let mut list: Vec<String> = std::fs::read_dir(repo_root().join("examples"))
        .expect("read examples/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    list.sort();
    list
}

#[test]
fn examples_validate() {
    let examples = examples();
    assert!(
        examples.len() >= 4,
        "expected at least four examples, found {examples:?}"
    );
    for name in examples {
        let path = format!("examples/{name}");
        let out = Test::new()
            .current_dir(repo_root())
            .args(&["validate", &path])
            .run();
        assert_eq!(out.code, 0, "{path} does not validate:\n{}", out.stderr);
        assert!(!out.stderr.contains("error"), "{path}:\n{}", out.stderr);
        assert!(
            out.stderr.contains(&format!("ok: {path}")),
            "{path}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn examples_plan_in_every_format() {
    for name in examples() {
        let path = format!("examples/{name}");
        let plan = |format: &str| {
            let out = Test::new()
                .current_dir(repo_root())
                .args(&["plan", &path, "--format", format])
                .run();
            assert_eq!(
                out.code, 0,
                "plan {path} --format {format}:\n{}",
                out.stderr
            );
            out.stdout
        };
        let json: serde_json::Value =
            serde_json::from_str(&plan("json")).expect("plan --format json prints JSON");
        let tasks = json["tasks"].as_array().map_or(0, Vec::len);
        assert!(tasks >= 2, "{path}: expected several tasks in {json}");
        let text = plan("text");
        assert!(text.contains("workflow `"), "{path}: text plan:\n{text}");
        let dot = plan("dot");
        assert!(
            dot.starts_with("digraph") && dot.contains("->"),
            "{path}: dot plan:\n{dot}"
        );
        let mermaid = plan("mermaid");
        assert!(
            mermaid.starts_with("flowchart") && mermaid.contains("-->"),
            "{path}: mermaid plan:\n{mermaid}"
        );
    }
}

#[test]
fn a_fan_out_that_matches_nothing_is_a_warning() {
    let workflow = "version: 1\ntasks:\n  each:\n    for_each:\n      files: \"nothing/**/*.none\"\n    run: echo {{ item }}\n  after:\n    needs: [each]\n    run: echo done\n";
    let test = Test::new().file(".claudecluster/empty.yaml", workflow);
    let out = test.args(&["validate", "empty"]).run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: the fan-out of task `each` matches nothing"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(".claudecluster/empty.yaml:4:5"),
        "{}",
        out.stderr
    );

    let out = Test::new()
        .file(".claudecluster/empty.yaml", workflow)
        .args(&["plan", "empty", "--format", "json"])
        .run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("warning:"), "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("json plan");
    let instances = json["instances"].as_array().expect("instances array");
    assert!(instances.iter().all(|i| i["task"] != "each"), "{json}");
    assert!(instances.iter().any(|i| i["task"] == "after"), "{json}");
}
