//! The cache, observed from outside: counter files say what ran, output
//! files say what was restored.

use std::time::Duration;

use crate::support::{fan_out_workflow, instance, numbered_files, status_of, Test};

const PIPE: &str = r#"version: 1
name: pipe
tasks:
  gen:
    inputs: [in.txt]
    outputs: [mid.txt]
    run: echo x >> .count/gen && tr a-z A-Z < in.txt > mid.txt
  use:
    needs: [gen]
    outputs: [final.txt]
    run: echo x >> .count/use && cat mid.txt mid.txt > final.txt
"#;

fn pipe() -> Test {
    Test::new()
        .workflow("pipe", PIPE)
        .file("in.txt", "hello\n")
        .args(["run", "pipe"])
}

#[test]
fn second_run_executes_nothing_and_reports_all_cached() {
    let test = pipe();
    test.run().ok();
    assert_eq!((test.count("gen"), test.count("use")), (1, 1));
    let out = test.run();
    out.ok();
    assert_eq!(
        (test.count("gen"), test.count("use")),
        (1, 1),
        "no command ran"
    );
    let record = test.last_run();
    assert_eq!(status_of(&record, "gen"), "cached");
    assert_eq!(status_of(&record, "use"), "cached");
    assert!(out.stderr.contains("0 ran, 2 cached"), "{}", out.stderr);
    assert_eq!(test.read("final.txt"), "HELLO\nHELLO\n");
}

#[test]
fn touching_an_input_without_changing_it_reruns_nothing() {
    let test = pipe();
    test.run().ok();
    std::thread::sleep(Duration::from_millis(20));
    // Same content, new mtime and ctime.
    test.write("in.txt", "hello\n");
    let file = std::fs::File::options()
        .append(true)
        .open(test.path("in.txt"))
        .expect("open");
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .expect("set mtime");
    drop(file);
    test.run().ok();
    assert_eq!((test.count("gen"), test.count("use")), (1, 1));
}

#[test]
fn deleted_output_is_restored_from_the_cache_without_running() {
    let test = pipe();
    test.run().ok();
    std::fs::remove_file(test.path("mid.txt")).expect("rm");
    std::fs::remove_file(test.path("final.txt")).expect("rm");
    test.run().ok();
    assert_eq!(
        (test.count("gen"), test.count("use")),
        (1, 1),
        "restored, not rerun"
    );
    assert_eq!(test.read("mid.txt"), "HELLO\n");
    assert_eq!(test.read("final.txt"), "HELLO\nHELLO\n");
    // A changed (not deleted) output of a task with declared inputs that
    // do not name it (a generated file) is restored too.
    test.write("mid.txt", "garbage\n");
    test.run().ok();
    assert_eq!(test.read("mid.txt"), "HELLO\n");
    assert_eq!((test.count("gen"), test.count("use")), (1, 1));
    // `use` declares no inputs, so its output is its input: an edit there
    // runs it again rather than restoring over the edit.
    test.write("final.txt", "garbage\n");
    test.run().ok();
    assert_eq!(test.read("final.txt"), "HELLO\nHELLO\n");
    assert_eq!((test.count("gen"), test.count("use")), (1, 2));
}

/// A shell task without `inputs:` that edits the file it names (`sed -i`)
/// once lost a hand edit: keyed without the file, the next run was a hit
/// and the restore wrote the cached result over the edit.
#[test]
fn hand_edit_of_an_in_place_output_without_declared_inputs_is_never_overwritten() {
    let yaml = r#"version: 1
name: inplace
tasks:
  fmt:
    for_each: { files: "src/*.txt" }
    outputs: ["{{ item }}"]
    run: echo x >> .count/{{ item.stem }} && sed -i 's/hello/bye/' {{ item }}
  gen:
    outputs: [made.txt]
    run: echo x >> .count/gen && echo made > made.txt
"#;
    let test = Test::new()
        .workflow("inplace", yaml)
        .file("src/a.txt", "hello a\n")
        .file("src/b.txt", "hello b\n")
        .args(["run", "inplace"]);
    test.run().ok();
    assert_eq!(
        (test.count("a"), test.count("b"), test.count("gen")),
        (1, 1, 1)
    );
    assert_eq!(test.read("src/a.txt"), "bye a\n");
    test.run().ok();
    assert_eq!(test.total_count(), 3, "the applied results are up to date");
    assert_eq!(test.last_run()["counts"]["cached"], 3);
    // The user's edit stays and the task runs on it.
    test.write("src/a.txt", "hello again, and keep this line\n");
    test.run().ok();
    assert_eq!(test.read("src/a.txt"), "bye again, and keep this line\n");
    assert_eq!((test.count("a"), test.count("b")), (2, 1));
    test.run().ok();
    assert_eq!(test.total_count(), 4);
    // An edit that needs no change is kept as it is, and is up to date after.
    test.write("src/b.txt", "already done\n");
    test.run().ok();
    assert_eq!(test.read("src/b.txt"), "already done\n");
    assert_eq!(test.count("b"), 2);
    // A created output, deleted, is still restored without running.
    std::fs::remove_file(test.path("made.txt")).expect("rm");
    test.run().ok();
    assert_eq!(test.read("made.txt"), "made\n");
    assert_eq!(test.count("gen"), 1);
    test.run().ok();
    assert_eq!(test.total_count(), 5, "nothing ran");
    let out = test.run_args(&["explain", "inplace", "fmt[src/a.txt]"]);
    out.ok();
    assert!(out.stdout.contains("up to date"), "{}", out.stdout);
    test.write("src/a.txt", "edited\n");
    let out = test.run_args(&["explain", "inplace", "fmt[src/a.txt]"]);
    out.ok();
    assert!(out.stdout.contains("`src/a.txt`"), "{}", out.stdout);
}

#[test]
fn early_cutoff_keeps_downstream_cached_when_upstream_output_is_identical() {
    let test = pipe();
    test.run().ok();
    // A different command producing the same bytes.
    let changed = PIPE.replace(
        "tr a-z A-Z < in.txt > mid.txt",
        "sed 's/.*/\\U&/' in.txt > mid.txt",
    );
    assert_ne!(changed, PIPE);
    test.write(".claudecluster/pipe.yaml", &changed);
    test.run().ok();
    assert_eq!(test.count("gen"), 2, "the changed task reran");
    assert_eq!(
        test.count("use"),
        1,
        "its identical output kept the downstream cached"
    );
    let record = test.last_run();
    assert_eq!(status_of(&record, "gen"), "succeeded");
    assert_eq!(status_of(&record, "use"), "cached");
    // A real output change reaches downstream.
    test.write("in.txt", "bye\n");
    test.run().ok();
    assert_eq!(test.count("use"), 2);
    assert_eq!(test.read("final.txt"), "BYE\nBYE\n");
}

#[test]
fn in_place_task_runs_once_and_reruns_exactly_the_hand_edited_file() {
    let yaml = r#"version: 1
name: inplace
tasks:
  fmt:
    for_each: { files: "src/*.txt" }
    inputs: ["{{ item }}"]
    outputs: ["{{ item }}"]
    run: echo x >> .count/{{ item.stem }} && sed -i 's/hello/bye/' {{ item }}
"#;
    let mut test = Test::new().workflow("inplace", yaml);
    for i in 0..100 {
        test = test.file(&format!("src/{i:03}.txt"), &format!("hello {i}\n"));
    }
    let test = test.args(["run", "inplace", "-j", "4"]);
    test.run().ok();
    assert_eq!(test.total_count(), 100);
    assert_eq!(test.read("src/042.txt"), "bye 42\n");
    test.run().ok();
    assert_eq!(test.total_count(), 100, "the applied result is up to date");
    assert_eq!(test.last_run()["counts"]["cached"], 100);
    test.write("src/042.txt", "hello again\n");
    test.run().ok();
    assert_eq!(test.count("042"), 2);
    assert_eq!(test.total_count(), 101, "only the edited file reran");
    assert_eq!(test.read("src/042.txt"), "bye again\n");
    test.run().ok();
    assert_eq!(test.total_count(), 101);
}

#[test]
fn outputs_outside_the_repository_are_errors() {
    let outside = tempfile::tempdir().expect("outside dir");
    let marker = format!("ccflow-e2e-parent-{}.txt", std::process::id());
    // Literal paths are caught when the workflow is loaded.
    let literal = format!(
        r#"version: 1
name: lit
tasks:
  parent:
    outputs: ["../{marker}"]
    run: echo x > ../{marker}
  absolute:
    outputs: ["{abs}"]
    run: echo x > {abs}
"#,
        abs = outside.path().join("abs.txt").display()
    );
    // Templated ones when the plan is built.
    let templated = format!(
        r#"version: 1
name: tpl
vars: {{ up: ".." }}
tasks:
  templated:
    outputs: ["{{{{ vars.up }}}}/{marker}"]
    run: echo x > ../{marker}
"#
    );
    // Symlinked ones only once the task has run.
    let dynamic = r#"version: 1
name: dyn
tasks:
  symlink:
    outputs: [link/x.txt]
    run: echo x >> .count/symlink; echo x > link/x.txt
"#;
    let test = Test::new()
        .workflow("lit", &literal)
        .workflow("tpl", &templated)
        .workflow("dyn", dynamic);
    std::os::unix::fs::symlink(outside.path(), test.path("link")).expect("symlink");
    let out = test.run_args(&["run", "lit"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains(&format!("`../{marker}`")) && out.stderr.contains("abs.txt"),
        "{}",
        out.stderr
    );
    assert!(!outside.path().join("abs.txt").exists(), "nothing ran");
    let out = test.run_args(&["run", "tpl"]);
    out.expect_code(2);
    assert!(out.stderr.contains("outside"), "{}", out.stderr);
    assert!(
        !test.root().join("..").join(&marker).exists(),
        "nothing ran"
    );
    let out = test.run_args(&["run", "dyn"]);
    out.expect_code(1);
    let i = instance(&test.last_run(), "symlink").clone();
    assert_eq!(i["status"], "failed", "{i:#}");
    assert!(
        i["message"].as_str().unwrap_or("").contains("outside"),
        "{i:#}"
    );
    // Nothing was cached: the next run runs it again (and fails again).
    test.run_args(&["run", "dyn"]).expect_code(1);
    assert_eq!(test.count("symlink"), 2);
}

#[test]
fn no_cache_rerun_and_cache_false() {
    let yaml = r#"version: 1
name: knobs
tasks:
  a:
    outputs: [a.txt]
    run: echo x >> .count/a && echo a > a.txt
  b:
    needs: [a]
    outputs: [b.txt]
    run: echo x >> .count/b && echo b > b.txt
  never:
    cache: false
    run: echo x >> .count/never
"#;
    let test = Test::new().workflow("knobs", yaml).args(["run", "knobs"]);
    test.run().ok();
    test.run().ok();
    assert_eq!(
        (test.count("a"), test.count("b"), test.count("never")),
        (1, 1, 2),
        "`cache: false` always runs"
    );
    test.run_args(&["run", "knobs", "--rerun", "b"]).ok();
    assert_eq!(
        (test.count("a"), test.count("b"), test.count("never")),
        (1, 2, 3),
        "`--rerun b` reruns only `b`"
    );
    test.run_args(&["run", "knobs", "--no-cache"]).ok();
    assert_eq!(
        (test.count("a"), test.count("b"), test.count("never")),
        (2, 3, 4),
        "`--no-cache` runs everything"
    );
    // Afterwards the cache still answers.
    test.run().ok();
    assert_eq!((test.count("a"), test.count("b")), (2, 3));
}

/// Flips one byte in the middle of every blob of the store.
fn corrupt_blobs(test: &Test) -> usize {
    let mut n = 0;
    let mut stack = vec![test.path(".ccflow/cache")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.components().any(|c| c.as_os_str() == "blobs") {
                let mut bytes = std::fs::read(&path).expect("read blob");
                if bytes.is_empty() {
                    continue;
                }
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x20;
                std::fs::write(&path, bytes).expect("write blob");
                n += 1;
            }
        }
    }
    n
}

#[test]
fn corrupted_blob_is_never_restored() {
    // Outputs larger than what manifests keep inline (64 KiB): blobs.
    let test = pipe().file("in.txt", &"hello\n".repeat(12_000));
    test.run().ok();
    assert!(corrupt_blobs(&test) >= 2, "the store holds blobs");
    std::fs::remove_file(test.path("mid.txt")).expect("rm");
    std::fs::remove_file(test.path("final.txt")).expect("rm");
    let out = test.run();
    assert!(out.code == 0 || out.code == 1, "{}", out.stderr);
    if out.code == 0 {
        assert_eq!(
            test.read("mid.txt"),
            "HELLO\n".repeat(12_000),
            "never wrong content"
        );
        assert_eq!(
            test.read("final.txt"),
            "HELLO\n".repeat(24_000),
            "never wrong content"
        );
        assert_eq!(
            (test.count("gen"), test.count("use")),
            (2, 2),
            "corrupt entries are misses"
        );
    } else {
        assert!(out.stderr.contains("corrupt"), "{}", out.stderr);
        for (f, expected) in [
            ("mid.txt", "HELLO\n".repeat(12_000)),
            ("final.txt", "HELLO\n".repeat(24_000)),
        ] {
            if test.exists(f) {
                assert_eq!(test.read(f), expected, "never wrong content in `{f}`");
            }
        }
    }
}

/// Like the fan-out workflow, but each task publishes its output with a
/// rename: two runs in one working tree write the same files, and `cp`
/// onto a file the other run is creating fails with `File exists`.
const ATOMIC_FAN: &str = r#"version: 1
name: fan
tasks:
  copy:
    for_each: { files: "src/*.txt" }
    inputs: ["{{ item }}"]
    outputs: ["out/{{ item.stem }}.txt"]
    run: echo x >> .count/{{ item.stem }} && mkdir -p out && cp {{ item }} out/.tmp.$$ && mv out/.tmp.$$ out/{{ item.stem }}.txt
  total:
    needs: [copy]
    outputs: [total.txt]
    run: echo x >> .count/total && cat {{ needs.copy.outputs }} | awk '{s+=$1} END {print s+0}' > total.$$ && mv total.$$ total.txt
"#;

#[test]
fn two_processes_in_one_tree_share_one_store() {
    let test = numbered_files(Test::new().workflow("fan", ATOMIC_FAN), 100)
        .args(["run", "fan", "-j", "2"]);
    let first = test.spawn();
    let second = test.spawn();
    let first = crate::support::wait_output(first, Duration::from_secs(60));
    let second = crate::support::wait_output(second, Duration::from_secs(60));
    first.ok();
    second.ok();
    assert_eq!(test.read("total.txt").trim(), "4950");
    let before = test.total_count();
    assert!(
        (101..=202).contains(&before),
        "each instance ran once or twice: {before}"
    );
    test.run().ok();
    assert_eq!(test.total_count(), before, "a third run is all cached");
    assert_eq!(test.last_run()["counts"]["cached"], 101);
}

#[test]
fn two_checkouts_share_one_store_through_ccflow_state_dir() {
    let state = tempfile::tempdir().expect("state dir");
    let state_dir = state.path().to_str().expect("utf-8 path").to_owned();
    let make = || {
        numbered_files(Test::new().workflow("fan", fan_out_workflow()), 100)
            .args(["run", "fan", "-j", "2"])
            .env("CCFLOW_STATE_DIR", &state_dir)
    };
    let (a, b) = (make(), make());
    let (first, second) = (a.spawn(), b.spawn());
    let first = crate::support::wait_output(first, Duration::from_secs(60));
    let second = crate::support::wait_output(second, Duration::from_secs(60));
    first.ok();
    second.ok();
    for test in [&a, &b] {
        assert_eq!(test.read("total.txt").trim(), "4950");
        assert_eq!(test.read("out/0042.txt"), "42\n");
    }
    // A third checkout restores everything from the shared store.
    let c = make();
    c.run().ok();
    assert_eq!(c.total_count(), 0, "a third checkout runs nothing");
    assert_eq!(c.read("total.txt").trim(), "4950");
    assert_eq!(c.read("out/0099.txt"), "99\n");
}

#[test]
fn same_size_edit_with_the_old_mtime_still_reruns() {
    // The stat index must not trust (size, mtime) alone: an edit that keeps
    // the size and puts the mtime back (a racy write, `touch -d`, a tool
    // that preserves times) is still seen (ctime, or rehashing).
    let test = pipe();
    test.run().ok();
    let old = std::fs::metadata(test.path("in.txt"))
        .and_then(|m| m.modified())
        .expect("mtime");
    test.write("in.txt", "world\n");
    let file = std::fs::File::options()
        .append(true)
        .open(test.path("in.txt"))
        .expect("open");
    file.set_modified(old).expect("restore mtime");
    drop(file);
    test.run().ok();
    assert_eq!(test.count("gen"), 2);
    assert_eq!(test.read("final.txt"), "WORLD\nWORLD\n");
}

#[test]
fn failures_are_not_cached() {
    let yaml = r#"version: 1
name: flaky
tasks:
  flaky:
    outputs: [ok.txt]
    run: echo x >> .count/flaky; test -e allow && echo ok > ok.txt
"#;
    let test = Test::new().workflow("flaky", yaml).args(["run", "flaky"]);
    test.run().expect_code(1);
    test.run().expect_code(1);
    assert_eq!(test.count("flaky"), 2, "a failure is never a cache hit");
    test.write("allow", "");
    test.run().ok();
    test.run().ok();
    assert_eq!(test.count("flaky"), 3);
}

#[test]
fn garbage_in_the_stat_index_costs_a_rehash_never_a_wrong_hit() {
    let test = pipe();
    test.run().ok();
    std::fs::write(test.path(".ccflow/index"), b"\x00\xffnot an index at all\n")
        .expect("clobber index");
    test.run().ok();
    assert_eq!(test.count("gen"), 1, "unchanged inputs still hit");
    test.write("in.txt", "again\n");
    std::fs::write(test.path(".ccflow/index"), b"").expect("truncate index");
    test.run().ok();
    assert_eq!(test.count("gen"), 2, "a changed input is seen");
    assert_eq!(test.read("final.txt"), "AGAIN\nAGAIN\n");
}

#[test]
fn a_new_file_matching_an_input_glob_reruns_the_task() {
    let yaml = r#"version: 1
name: glob
tasks:
  cat:
    inputs: ["src/**/*.txt"]
    outputs: [all.txt]
    run: echo x >> .count/cat && cat $(find src -name '*.txt' | sort) > all.txt
"#;
    let test = Test::new()
        .workflow("glob", yaml)
        .file("src/a.txt", "a\n")
        .args(["run", "glob"]);
    test.run().ok();
    test.run().ok();
    assert_eq!(test.count("cat"), 1);
    test.write("src/deep/b.txt", "b\n");
    test.run().ok();
    assert_eq!(test.count("cat"), 2);
    assert_eq!(test.read("all.txt"), "a\nb\n");
    std::fs::remove_file(test.path("src/a.txt")).expect("rm");
    test.run().ok();
    assert_eq!(test.count("cat"), 3, "a deleted input reruns too");
    assert_eq!(test.read("all.txt"), "b\n");
}

#[test]
fn adding_a_declared_output_invalidates_the_entry() {
    // Regression: `outputs` were not part of the key, so after adding
    // `b.txt` the old entry (which never saved it) was a hit, and a clean
    // checkout ended "cached" without `b.txt`.
    let yaml = r#"version: 1
name: outs
tasks:
  gen:
    outputs: [a.txt]
    run: echo x >> .count/gen && echo a > a.txt && echo b > b.txt
"#;
    let test = Test::new().workflow("outs", yaml).args(["run", "outs"]);
    test.run().ok();
    test.write(
        ".claudecluster/outs.yaml",
        &yaml.replace("[a.txt]", "[a.txt, b.txt]"),
    );
    std::fs::remove_file(test.path("a.txt")).expect("rm");
    std::fs::remove_file(test.path("b.txt")).expect("rm");
    test.run().ok();
    assert_eq!(test.count("gen"), 2);
    assert_eq!(test.read("b.txt"), "b\n");
    // And from then on both are restored: the task declares no inputs, so
    // its outputs are its inputs, and `a.txt` left as the entry has it
    // finds the entry that restores `b.txt`.
    std::fs::remove_file(test.path("b.txt")).expect("rm");
    let explained = test.run_args(&["explain", "outs", "gen"]);
    explained.ok();
    assert!(
        explained.stdout.contains("`gen` is cached") && explained.stdout.contains("2 output(s)"),
        "{}",
        explained.stdout
    );
    let planned = test.run_args(&["plan", "outs", "--format", "json"]);
    planned.ok();
    assert!(planned.stdout.contains("\"cached\""), "{}", planned.stdout);
    test.run().ok();
    assert_eq!(test.count("gen"), 2);
    assert_eq!(test.read("b.txt"), "b\n");
}

#[test]
fn a_declared_output_the_task_did_not_create_fails_the_instance() {
    // Regression: the instance succeeded and its empty result was cached,
    // so every later run was a "cached" success without `result.txt`.
    let yaml = r#"version: 1
name: typo
tasks:
  gen:
    outputs: [result.txt, "logs/*.log"]
    run: echo x >> .count/gen; echo oops > reslt.txt
  use:
    needs: [gen]
    run: echo x >> .count/use
"#;
    let test = Test::new().workflow("typo", yaml).args(["run", "typo"]);
    let out = test.run();
    out.expect_code(1);
    let record = test.last_run();
    let gen = instance(&record, "gen");
    assert_eq!(gen["status"], "failed");
    let message = gen["message"].as_str().unwrap_or("");
    assert!(
        message.contains("`result.txt`") && !message.contains("logs"),
        "names the missing literal output only: {message}"
    );
    assert_eq!(test.count("use"), 0);
    test.run().expect_code(1);
    assert_eq!(test.count("gen"), 2, "not cached");
}

#[test]
fn files_named_with_glob_characters_are_inputs_and_outputs() {
    // Regression: `{{ item }}` rendered to `pages/[id].tsx` was matched as
    // a glob (`pages/i.tsx`, `pages/d.tsx`), so the file was never hashed:
    // editing it kept the instance cached with a stale output.
    let yaml = r#"version: 1
name: routes
tasks:
  copy:
    for_each: { files: "pages/**/*.tsx" }
    inputs: ["{{ item }}"]
    outputs: ["out/{{ item.name }}"]
    run: echo x >> .count/{{ item.stem }}; mkdir -p out && cp {{ item }} out/{{ item.name }}
"#;
    let test = Test::new()
        .workflow("routes", yaml)
        .file("pages/[id].tsx", "one\n")
        .file("pages/[...slug]/{a,b}.tsx", "two\n")
        .args(["run", "routes"]);
    test.run().ok();
    assert_eq!(test.read("out/[id].tsx"), "one\n");
    test.write("pages/[id].tsx", "changed\n");
    test.write("pages/[...slug]/{a,b}.tsx", "changed too\n");
    test.run().ok();
    assert_eq!(test.count("[id]"), 2, "the edited file reran");
    assert_eq!(test.count("{a,b}"), 2, "the edited file reran");
    assert_eq!(test.read("out/[id].tsx"), "changed\n");
    // Outputs with such names are saved and restored.
    std::fs::remove_file(test.path("out/[id].tsx")).expect("rm");
    test.run().ok();
    assert_eq!(test.count("[id]"), 2);
    assert_eq!(test.read("out/[id].tsx"), "changed\n");
}
