//! A deterministic mutation fuzzer for the loader and planner: no input may
//! make ccflow panic (SPEC §8). `cargo fuzz` needs nightly, so this is a
//! plain test: it starts from the examples and the invalid corpus, applies
//! random line and byte mutations (YAML- and template-significant characters,
//! spliced files, odd numbers) with a fixed seed, and feeds each result to
//! `load_source` and, when that succeeds, to `Plan::build`, inside
//! `catch_unwind`.
//!
//! The normal run lasts about two seconds. `CCFLOW_FUZZ_ITERS=N` runs exactly
//! N iterations (no time limit), `CCFLOW_FUZZ_SECS=S` runs for S seconds,
//! `CCFLOW_FUZZ_SEED=S` changes the seed; every
//! panicking input is written to `$TMPDIR/ccflow-fuzz/` and listed.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccflow::diagnostic::SourceFile;
use ccflow::graph::Plan;
use ccflow::workflow::resolve::load_source;

use crate::support::repo_root;

/// Fragments that matter to YAML, minijinja or ccflow, spliced in at random.
const TOKENS: &[&str] = &[
    ":",
    "{",
    "}",
    "[",
    "]",
    "&",
    "*",
    "!",
    "|",
    ">",
    "-",
    "'",
    "\"",
    "#",
    "%",
    "@",
    "`",
    ",",
    "?",
    "\t",
    "\n",
    " ",
    "\\",
    "---",
    "...",
    "<<: *a",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "{{ item }}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "{{ needs.a.outputs }}",
    "{% for x in item %}{{ x }}{% endfor %}",
    "{{ vars.x|json }}",
    "{{ 'f'|read_file }}",
    "needs: [a]",
    "for_each: { from: a }",
    "for_each: { files: '**' }",
    "for_each: { lines_of: f }",
    "for_each: { matrix: { a: [1, 2], include: [{a: 3}] } }",
    "batch: 0",
    "batch: 2",
    "runner: docker",
    "timeout: 1e309",
    "memory: 1e30g",
    "retries: -1",
    "0",
    "-1",
    "99999999999999999999",
    "1e400",
    ".nan",
    "~",
    "null",
    "true",
    "é",
    "日本",
    "\u{202e}",
    "\u{feff}",
    "\r\n",
    "../",
    "/etc/passwd",
    "a/[b",
    "**/{a,b",
];

fn seeds() -> Vec<String> {
    let mut seeds = Vec::new();
    for dir in ["examples", "tests/corpus/invalid"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
            .expect("read seed folder")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        paths.sort();
        for path in paths {
            if let Ok(text) = std::fs::read_to_string(&path) {
                seeds.push(text);
            }
        }
    }
    seeds
}

fn char_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// One random mutation of `text`.
fn mutate(rng: &mut fastrand::Rng, text: &str, seeds: &[String]) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let other = &seeds[rng.usize(..seeds.len())];
    let other_lines: Vec<&str> = other.split('\n').collect();
    let at = rng.usize(..=lines.len().saturating_sub(1));
    match rng.u8(..10) {
        0 => lines.insert(at, other_lines[rng.usize(..other_lines.len())].to_owned()),
        1 if lines.len() > 1 => {
            lines.remove(at);
        }
        2 => {
            let line = lines[at].clone();
            lines.insert(at, line);
        }
        3 => {
            let b = rng.usize(..lines.len());
            lines.swap(at, b);
        }
        4 => {
            // Indent or dedent a line by two spaces.
            if rng.bool() {
                lines[at].insert_str(0, "  ");
            } else if let Some(rest) = lines[at].strip_prefix("  ") {
                lines[at] = rest.to_owned();
            }
        }
        5 => {
            // Splice: the start of this file with the end of another.
            let cut = char_boundary(text, rng.usize(..=text.len()));
            let other_cut = char_boundary(other, rng.usize(..=other.len()));
            return format!("{}{}", &text[..cut], &other[other_cut..]);
        }
        6 | 7 => {
            // Replace or insert a significant token at a random byte.
            let pos = char_boundary(text, rng.usize(..=text.len()));
            let token = TOKENS[rng.usize(..TOKENS.len())];
            let end = if rng.bool() {
                char_boundary(text, pos + 1).max(pos)
            } else {
                pos
            };
            let end = if end == pos && pos < text.len() && rng.bool() {
                pos + text[pos..].chars().next().map_or(0, char::len_utf8)
            } else {
                end
            };
            return format!("{}{}{}", &text[..pos], token, &text[end..]);
        }
        8 => {
            // Delete a random range of bytes.
            let a = char_boundary(text, rng.usize(..=text.len()));
            let b = char_boundary(text, a + rng.usize(..16));
            return format!("{}{}", &text[..a], &text[b..]);
        }
        _ => {
            // A random character, any plane.
            let pos = char_boundary(text, rng.usize(..=text.len()));
            let c = char::from_u32(rng.u32(..0x11_0000)).unwrap_or('\u{fffd}');
            return format!("{}{}{}", &text[..pos], c, &text[pos..]);
        }
    }
    lines.join("\n")
}

/// A small repository for fan-outs and `read_file` to look at.
fn fixture_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, content) in [
        (
            "src/lib.rs",
            "pub fn a() -> Result<(), Box<dyn std::error::Error>> { Ok(()) }\n",
        ),
        ("src/agent/mod.rs", "mod x;\n"),
        ("docs/index.md", "# Title\n"),
        ("README.md", "hello\n"),
        ("f", "a\nb\n"),
        ("modules.txt", "src/lib.rs\nsrc/agent/mod.rs\n"),
        (".gitignore", "target/\n"),
    ] {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, content).expect("write fixture");
    }
    dir
}

/// Loads and plans `text`; `Err` carries the panic message.
fn exercise(text: &str, root: &Path) -> Result<(), String> {
    let vars = BTreeMap::new();
    catch_unwind(AssertUnwindSafe(|| {
        let file = SourceFile::new("fuzz.yaml", text);
        let loaded = load_source(&file, Path::new("fuzz.yaml"), root, &vars);
        for diagnostic in &loaded.diagnostics {
            // Rendering is part of the path a user hits.
            let _ = diagnostic.render(false);
            let _ = diagnostic.location();
        }
        if let Some(workflow) = loaded.workflow {
            match Plan::build(Arc::new(workflow), "fuzz") {
                Ok(plan) => {
                    let notes = ccflow::graph::format::Annotations::new();
                    let _ = ccflow::graph::format::text(&plan, &notes);
                    let _ = ccflow::graph::format::json(&plan, &notes);
                    let _ = ccflow::graph::format::dot(&plan, &notes);
                    let _ = ccflow::graph::format::mermaid(&plan, &notes);
                }
                Err(errors) => {
                    for error in errors {
                        let _ = error.render(false);
                    }
                }
            }
        }
    }))
    .map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".into())
    })
}

#[test]
fn no_input_makes_the_loader_or_planner_panic() {
    let seeds = seeds();
    assert!(seeds.len() > 10, "too few seeds");
    let root = fixture_root();
    let seed: u64 = std::env::var("CCFLOW_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00cc_f10f);
    let iterations: Option<u64> = std::env::var("CCFLOW_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok());
    let seconds: u64 = std::env::var("CCFLOW_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let budget = Duration::from_secs(seconds);
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let crash_dir = std::env::temp_dir().join("ccflow-fuzz");
    let mut crashes = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    let mut done = 0u64;
    loop {
        match iterations {
            Some(n) if done >= n => break,
            None if started.elapsed() >= budget => break,
            _ => {}
        }
        let mut text = seeds[rng.usize(..seeds.len())].clone();
        for _ in 0..rng.usize(1..=4) {
            text = mutate(&mut rng, &text, &seeds);
        }
        let one = Instant::now();
        let result = exercise(&text, root.path());
        let took = one.elapsed();
        if took > slowest.0 {
            slowest = (took, text.clone());
        }
        if let Err(message) = result {
            std::fs::create_dir_all(&crash_dir).expect("create crash dir");
            let path = crash_dir.join(format!("crash-{seed}-{done}.yaml"));
            std::fs::write(&path, &text).expect("write crash input");
            crashes.push(format!("{}: {message}", path.display()));
        }
        done += 1;
    }
    eprintln!(
        "fuzz: {done} inputs in {:.1?} (seed {seed}), slowest {:.1?}, {} panic(s)",
        started.elapsed(),
        slowest.0,
        crashes.len()
    );
    if slowest.0 > Duration::from_secs(5) {
        let path = crash_dir.join(format!("slow-{seed}.yaml"));
        let _ = std::fs::create_dir_all(&crash_dir);
        let _ = std::fs::write(&path, &slowest.1);
        crashes.push(format!("{}: took {:.1?}", path.display(), slowest.0));
    }
    assert!(
        crashes.is_empty(),
        "inputs that panicked or hung:\n{}",
        crashes.join("\n")
    );
}
