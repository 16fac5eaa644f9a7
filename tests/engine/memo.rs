//! The up-to-date check (`src/memo.rs`): after a run proved everything
//! cached, the next run answers from stats alone, and any change that
//! could alter a decision sends it back to the full run.

use std::time::Duration;

use crate::support::{status_of, Test};

const WORKFLOW: &str = r#"version: 1
name: memo
vars:
  x: "0"
tasks:
  each:
    for_each: { files: "in/*.txt" }
    inputs: ["{{ item }}"]
    outputs: ["out/{{ item.stem }}.txt"]
    run: mkdir -p out && echo x >> .count/each && tr a-z A-Z < {{ item }} > out/{{ item.stem }}.txt
  all:
    needs: [each]
    inputs: ["out/*.txt"]
    outputs: [all.txt]
    run: echo x >> .count/all && cat out/*.txt > all.txt
"#;

const UP_TO_DATE: &str = "is up to date";

fn setup() -> Test {
    Test::new()
        .workflow("memo", WORKFLOW)
        .file("in/a.txt", "alpha\n")
        .file("in/b.txt", "beta\n")
        .file("in/c.txt", "gamma\n")
        .args(["run", "memo"])
}

/// Lets the files written so far age past the racy window, then runs once
/// more (a directory the last run changed, here `out/`, cannot be vouched
/// for by its stat: that run goes the full way and leaves a memo that can).
fn prove_no_op(test: &Test) {
    std::thread::sleep(Duration::from_millis(250));
    let counts = (test.count("each"), test.count("all"));
    test.run().ok();
    assert_eq!(
        (test.count("each"), test.count("all")),
        counts,
        "nothing ran"
    );
}

/// The first run, then one proving the next is a no-op (see [`prove_no_op`]).
fn run_then_prove_no_op(test: &Test) {
    test.run().ok();
    prove_no_op(test);
}

/// A run answered by the memo: nothing ran, every instance is recorded cached.
#[track_caller]
fn assert_answered_by_memo(test: &Test) {
    let counts = (test.count("each"), test.count("all"));
    let out = test.run();
    out.ok();
    assert!(out.stderr.contains(UP_TO_DATE), "{}", out.stderr);
    assert!(out.stderr.contains("0 ran, 4 cached"), "{}", out.stderr);
    assert_eq!(
        (test.count("each"), test.count("all")),
        counts,
        "nothing ran"
    );
    let record = test.last_run();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["counts"]["cached"], 4);
    assert_eq!(status_of(&record, "each[in/b.txt]"), "cached");
    assert_eq!(status_of(&record, "all"), "cached");
}

/// A run that did not trust the memo.
#[track_caller]
fn assert_full_run(out: &crate::support::Output) {
    out.ok();
    assert!(!out.stderr.contains(UP_TO_DATE), "{}", out.stderr);
}

#[test]
fn an_unchanged_tree_is_answered_from_stats_and_show_reads_the_record() {
    let test = setup();
    test.run().ok();
    assert_eq!((test.count("each"), test.count("all")), (3, 1));
    prove_no_op(&test);
    assert_answered_by_memo(&test);
    assert_answered_by_memo(&test);
    assert!(
        test.exists(".ccflow/memo"),
        "the memo lives in the state dir"
    );
    let show = test.run_args(&["show"]);
    show.ok();
    assert!(show.stdout.contains("cached"), "{}", show.stdout);
    assert_eq!(test.read("all.txt"), "ALPHA\nBETA\nGAMMA\n");
}

#[test]
fn an_edited_input_reruns_its_instance_and_the_reduce() {
    let test = setup();
    run_then_prove_no_op(&test);
    assert_answered_by_memo(&test);
    test.write("in/b.txt", "bravo\n");
    assert_full_run(&test.run());
    assert_eq!((test.count("each"), test.count("all")), (4, 2));
    assert_eq!(test.read("all.txt"), "ALPHA\nBRAVO\nGAMMA\n");
}

#[test]
fn after_an_edit_only_the_affected_instances_are_looked_at_again() {
    let test = setup();
    run_then_prove_no_op(&test);
    test.write("in/b.txt", "bravo\n");
    let out = test.run();
    assert_full_run(&out);
    assert_eq!((test.count("each"), test.count("all")), (4, 2));
    let record = test.last_run();
    assert_eq!(status_of(&record, "each[in/b.txt]"), "succeeded");
    assert_eq!(status_of(&record, "each[in/a.txt]"), "cached");
    assert_eq!(status_of(&record, "all"), "succeeded");
    // The run after the edit left a memo that holds at once (no directory
    // changed): the next run is answered from it.
    std::thread::sleep(Duration::from_millis(250));
    assert_answered_by_memo(&test);
    // An output edited by hand: its instance is looked at again, restored
    // from the cache, and the reduce reads the same content as before.
    test.write("out/c.txt", "tampered\n");
    assert_full_run(&test.run());
    assert_eq!(test.read("out/c.txt"), "GAMMA\n");
    assert_eq!(test.read("all.txt"), "ALPHA\nBRAVO\nGAMMA\n");
    assert_eq!(
        (test.count("each"), test.count("all")),
        (4, 2),
        "restored, not rerun"
    );
}

/// After an edit, the reduce's inputs the check has just stat'ed are not
/// stat'ed again (`crate::memo::vouched`), except the output the run has
/// rewritten: the memo the change run leaves holds the rewritten output's
/// new stat (the next run is answered from it), and the key it saved is the
/// one a full run computes from fresh stats (the full run finds the reduce
/// cached).
#[test]
fn the_reduce_keyed_after_an_edit_is_cached_for_a_full_run() {
    let test = setup();
    run_then_prove_no_op(&test);
    test.write("in/b.txt", "bravo\n");
    assert_full_run(&test.run());
    assert_eq!((test.count("each"), test.count("all")), (4, 2));
    let explained = test.run_args(&["explain", "memo", "all"]);
    explained.ok();
    assert!(
        explained.stdout.contains("`all` is up to date"),
        "{}",
        explained.stdout
    );
    // The memo holds what the files are now, the rewritten output too.
    std::thread::sleep(Duration::from_millis(250));
    assert_answered_by_memo(&test);
    std::fs::remove_dir_all(test.path(".ccflow/memo")).expect("remove the memo");
    let out = test.run();
    assert_full_run(&out);
    assert!(out.stderr.contains("0 ran, 4 cached"), "{}", out.stderr);
    assert_eq!((test.count("each"), test.count("all")), (4, 2));
    assert_eq!(test.read("all.txt"), "ALPHA\nBRAVO\nGAMMA\n");
}

#[test]
fn a_touched_input_goes_through_the_full_run_and_reruns_nothing() {
    let test = setup();
    run_then_prove_no_op(&test);
    let file = std::fs::File::options()
        .append(true)
        .open(test.path("in/a.txt"))
        .expect("open");
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .expect("set mtime");
    drop(file);
    assert_full_run(&test.run());
    assert_eq!((test.count("each"), test.count("all")), (3, 1));
    // An mtime in the future is never trusted by itself: the file stays
    // racy, and each check compares its content, which vouches for it.
    assert_answered_by_memo(&test);
    // New content under a future mtime: found changed.
    file_with_future_mtime(&test, "in/a.txt", "aleph\n");
    test.run().ok();
    assert_eq!((test.count("each"), test.count("all")), (4, 2));
    assert_eq!(test.read("all.txt"), "ALEPH\nBETA\nGAMMA\n");
}

/// Writes `content` to `path` and stamps it a minute in the future.
fn file_with_future_mtime(test: &Test, path: &str, content: &str) {
    test.write(path, content);
    let file = std::fs::File::options()
        .append(true)
        .open(test.path(path))
        .expect("open");
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .expect("set mtime");
}

#[test]
fn a_new_file_in_a_walked_directory_is_a_new_instance() {
    let test = setup();
    run_then_prove_no_op(&test);
    test.write("in/d.txt", "delta\n");
    assert_full_run(&test.run());
    assert_eq!((test.count("each"), test.count("all")), (4, 2));
    assert_eq!(test.read("all.txt"), "ALPHA\nBETA\nGAMMA\nDELTA\n");
}

#[test]
fn files_below_a_directory_a_glob_lists_only_directly_do_not_count() {
    // `in/*.txt` matches only files directly in `in/`: its subdirectories
    // are not walked, so what changes in them changes nothing.
    let test = setup().file("in/sub/deep.txt", "deep\n");
    run_then_prove_no_op(&test);
    assert_answered_by_memo(&test);
    test.write("in/sub/new.txt", "new\n");
    test.write("in/sub/deeper/x.txt", "x\n");
    assert_answered_by_memo(&test);
    // A new file directly in `in/` is a new instance.
    test.write("in/d.txt", "delta\n");
    assert_full_run(&test.run());
    assert_eq!(test.read("all.txt"), "ALPHA\nBETA\nGAMMA\nDELTA\n");
}

#[test]
fn an_edited_gitignore_changes_what_the_walk_finds() {
    let test = setup().file("in/.gitignore", "# nothing\n");
    run_then_prove_no_op(&test);
    assert_answered_by_memo(&test);
    // Same directory entries, new content: only the ignore file's stat shows it.
    test.write("in/.gitignore", "c.txt\n");
    let out = test.run();
    assert_full_run(&out);
    let record = test.last_run();
    assert_eq!(record["counts"]["total"], 3, "c.txt is ignored now");
}

#[test]
fn a_deleted_output_is_restored_by_the_full_run() {
    let test = setup();
    run_then_prove_no_op(&test);
    std::fs::remove_file(test.path("out/a.txt")).expect("remove output");
    assert_full_run(&test.run());
    assert_eq!(test.read("out/a.txt"), "ALPHA\n");
    assert_eq!(
        (test.count("each"), test.count("all")),
        (3, 1),
        "restored, not rerun"
    );
}

#[test]
fn other_arguments_an_edited_workflow_and_a_cleared_cache_are_not_answered_by_the_memo() {
    let test = setup();
    run_then_prove_no_op(&test);
    // Another context: `--var` is part of it.
    assert_full_run(&test.run_args(&["run", "memo", "--var", "x=1"]));
    // `--no-cache` and `--rerun` always run.
    assert_full_run(&test.run_args(&["run", "memo", "--rerun", "all"]));
    assert_eq!(test.count("all"), 2);
    prove_no_op(&test);
    assert_answered_by_memo(&test);
    // The workflow itself.
    test.write(
        ".claudecluster/memo.yaml",
        &WORKFLOW.replace("cat out/*.txt", "cat  out/*.txt"),
    );
    assert_full_run(&test.run());
    assert_eq!(test.count("all"), 3, "the changed command reran");
    prove_no_op(&test);
    assert_answered_by_memo(&test);
    // A cleared cache: the full run would rerun everything, so must this one.
    test.run_args(&["cache", "clear"]).ok();
    assert_full_run(&test.run());
    assert_eq!((test.count("each"), test.count("all")), (6, 4));
}

#[test]
fn a_failed_or_non_cached_run_leaves_no_memo() {
    let test = Test::new()
        .workflow(
            "volatile",
            "version: 1\ntasks:\n  always:\n    cache: false\n    run: echo x >> .count/always\n",
        )
        .args(["run", "volatile"]);
    for expected in 1..=3 {
        std::thread::sleep(Duration::from_millis(150));
        let out = test.run();
        assert_full_run(&out);
        assert_eq!(
            test.count("always"),
            expected,
            "`cache: false` runs every time"
        );
    }
}

/// Edits right after a run (the bench's loop, an editor saving as soon as
/// a run ends): the files the last run wrote are still racy, so the check
/// compares their content, finds them as written, and every run stays on
/// the memo's fast path; a restore over a file of the same size leaves a
/// memo too.
#[test]
fn back_to_back_edits_stay_on_the_memos_changed_path() {
    let test = setup().env("CCFLOW_LOG", "debug");
    run_then_prove_no_op(&test);
    for (round, word) in ["bravo", "BRAVE", "brava", "bravo"].iter().enumerate() {
        test.write("in/b.txt", &format!("{word}\n"));
        let out = test.run();
        out.ok();
        // Only the edited input is named changed; the outputs the previous
        // run wrote a moment ago are not.
        let changed = named_changed(&out);
        assert_eq!(changed.len(), 1, "round {round}: {}", out.stderr);
        assert!(changed[0].contains("in/b.txt"), "{}", out.stderr);
        assert!(
            !out.stderr.contains("no up-to-date memo"),
            "round {round} left no memo: {}",
            out.stderr
        );
        assert_eq!(
            test.read("all.txt"),
            format!("ALPHA\n{}\nGAMMA\n", word.to_uppercase())
        );
    }
    // "bravo" again: a cache hit restored over "BRAVA" (same size).
    let record = test.last_run();
    assert_eq!(status_of(&record, "each[in/b.txt]"), "cached");
    assert_eq!((test.count("each"), test.count("all")), (6, 4));
}

/// An in-place task's outputs restored into the directory its fan-out
/// walks (a formatter's files put back to what it last read): the
/// directory's listing is unchanged, so the restoring run still leaves a
/// memo and the next run is answered by it. (Checked once per directory
/// when the run concludes; it was once per restored file, which made
/// restoring 1,000 files into a walked directory quadratic.)
#[test]
fn outputs_restored_into_a_walked_directory_leave_a_memo() {
    let test = Test::new()
        .workflow(
            "fmt",
            r#"version: 1
tasks:
  fmt:
    for_each: { files: "in/*.txt" }
    inputs: ["{{ item }}"]
    outputs: ["{{ item }}"]
    run: echo x >> .count/fmt && tr a-z A-Z < {{ item }} > {{ item }}.up && mv {{ item }}.up {{ item }}
"#,
        )
        .file("in/a.txt", "alpha\n")
        .file("in/b.txt", "beta\n")
        .file("in/c.txt", "gamma\n")
        .args(["run", "fmt"]);
    // The fixture ages past the racy window: only `in/` can send the
    // restoring run down the full path (the tasks renamed files in it).
    std::thread::sleep(Duration::from_millis(250));
    test.run().ok();
    assert_eq!(test.count("fmt"), 3);
    // Puts the files back to what the formatter read (each pre-state key
    // hits, the outputs are restored into `in/`), then proves the next run
    // is answered by the memo the restoring run left.
    let restore_then_no_op = || {
        test.write("in/a.txt", "alpha\n");
        test.write("in/b.txt", "beta\n");
        test.write("in/c.txt", "gamma\n");
        let out = test.run();
        out.ok();
        assert!(out.stderr.contains("0 ran, 3 cached"), "{}", out.stderr);
        assert_eq!(test.read("in/b.txt"), "BETA\n");
        std::thread::sleep(Duration::from_millis(250));
        let out = test.run();
        out.ok();
        assert!(out.stderr.contains(UP_TO_DATE), "{}", out.stderr);
        assert_eq!(test.count("fmt"), 3, "restored, never rerun");
    };
    // The full run: it restores into the `in/` it has just walked.
    restore_then_no_op();
    // From that memo: only the three files changed, so the run starts from
    // the memo's observations of `in/`.
    restore_then_no_op();
}

/// A rerun after an edit prepares the records of the instances settled
/// before the slow reduce ends (the run loop has nothing else to do while
/// it runs); the memo that run leaves answers the next run with exactly
/// those instances: same ids, tasks, labels and keys, all cached, no
/// times or logs.
#[test]
fn records_prepared_while_a_reduce_runs_are_what_the_memo_answers_with() {
    let slow = WORKFLOW.replace(
        "run: echo x >> .count/all &&",
        "run: sleep 0.3 && echo x >> .count/all &&",
    );
    let test = Test::new()
        .workflow("memo", &slow)
        .file("in/a.txt", "alpha\n")
        .file("in/b.txt", "beta\n")
        .file("in/c.txt", "gamma\n")
        .env("CCFLOW_LOG", "debug")
        .args(["run", "memo"]);
    run_then_prove_no_op(&test);
    test.write("in/b.txt", "bravo\n");
    let out = test.run();
    assert_full_run(&out);
    assert!(
        out.stderr
            .contains("instance records prepared while waiting"),
        "the slow reduce left time to prepare the others: {}",
        out.stderr
    );
    assert_eq!((test.count("each"), test.count("all")), (4, 2));
    let proving = test.last_run();
    std::thread::sleep(Duration::from_millis(250));
    assert_answered_by_memo(&test);
    let answer = test.last_run();
    let instances = |record: &serde_json::Value| -> Vec<serde_json::Value> {
        record["instances"].as_array().expect("instances").clone()
    };
    assert_eq!(instances(&proving).len(), 4);
    assert_eq!(instances(&answer).len(), 4);
    for (before, after) in instances(&proving).iter().zip(instances(&answer).iter()) {
        for field in ["id", "task", "label", "cache_key"] {
            assert_eq!(before[field], after[field], "{field} of {}", before["id"]);
        }
        assert_eq!(after["status"], "cached", "{}", after["id"]);
        assert!(after.get("started_unix_ms").is_none(), "{after}");
        assert!(after.get("log").is_none(), "{after}");
    }
    assert_eq!(test.read("all.txt"), "ALPHA\nBRAVO\nGAMMA\n");
}

/// The lines of `out` (run with `CCFLOW_LOG=debug`) naming a path the
/// up-to-date check found changed.
fn named_changed(out: &crate::support::Output) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|line| line.contains("up-to-date check: `"))
        .collect()
}

/// Whether `out` says the walk of `dir` was reused from the memo.
fn walk_reused(test: &Test, out: &crate::support::Output, dir: &str) -> bool {
    out.stderr.contains(&format!(
        "walk of `{}` reused from the memo",
        test.path(dir).display()
    ))
}

/// The walks a run keeps (`src/memo/walks.rs`): the next run lists no
/// directory whose stat, and whose ignore files' stats, are unchanged, and
/// lists again any whose are not.
#[test]
fn a_kept_walk_is_reused_only_while_nothing_it_depends_on_changed() {
    let test = setup()
        .file(".gitignore", "# nothing\n")
        .env("CCFLOW_LOG", "debug");
    test.run().ok();
    // Past the racy window, a run that walks keeps its walks.
    std::thread::sleep(Duration::from_millis(250));
    test.write("in/b.txt", "brave\n");
    let out = test.run();
    out.ok();
    assert!(
        out.stderr
            .contains(&format!("walk of `{}`: kept", test.path("in").display())),
        "{}",
        out.stderr
    );
    // Another edited input: the same directories, so both walks (the
    // fan-out's `in/`, the reduce's `out/`) are reused, and the result is
    // right.
    test.write("in/b.txt", "bravo\n");
    let out = test.run();
    out.ok();
    assert!(walk_reused(&test, &out, "in"), "{}", out.stderr);
    assert!(walk_reused(&test, &out, "out"), "{}", out.stderr);
    assert_eq!(test.read("all.txt"), "ALPHA\nBRAVO\nGAMMA\n");
    // A new file: `in/` changed, is listed again, and the file is found.
    test.write("in/d.txt", "delta\n");
    let out = test.run();
    out.ok();
    assert!(!walk_reused(&test, &out, "in"), "{}", out.stderr);
    assert_eq!(test.read("all.txt"), "ALPHA\nBRAVO\nGAMMA\nDELTA\n");
    assert_eq!(test.count("each"), 6);
    // Kept again; then an ignore file above the walk is edited: no
    // directory changed, only the ignore file's stat shows it.
    std::thread::sleep(Duration::from_millis(250));
    test.run().ok();
    test.write(".gitignore", "in/c.txt\n");
    let out = test.run();
    out.ok();
    assert!(!walk_reused(&test, &out, "in"), "{}", out.stderr);
    assert_eq!(
        test.last_run()["counts"]["total"],
        4,
        "in/c.txt is ignored now: three files and the reduce"
    );
}

#[test]
fn a_kept_recursive_walk_sees_a_new_file_in_a_subdirectory() {
    let test = Test::new()
        .workflow(
            "deep",
            r#"version: 1
tasks:
  each:
    for_each: { files: "src/**/*.txt" }
    inputs: ["{{ item }}"]
    run: echo {{ item }} >> .count/each
"#,
        )
        .file("src/a.txt", "a\n")
        .file("src/sub/b.txt", "b\n")
        .env("CCFLOW_LOG", "debug")
        .args(["run", "deep"]);
    test.run().ok();
    std::thread::sleep(Duration::from_millis(250));
    test.run().ok();
    assert_eq!(test.count("each"), 2, "the second run ran nothing");
    // The first edit's run walks and keeps the walk; the next reuses it.
    test.write("src/a.txt", "A\n");
    let out = test.run();
    out.ok();
    assert!(!walk_reused(&test, &out, "src"), "{}", out.stderr);
    test.write("src/a.txt", "AA\n");
    let out = test.run();
    out.ok();
    assert!(walk_reused(&test, &out, "src"), "{}", out.stderr);
    assert_eq!(test.count("each"), 4, "the edited file's instance reran");
    // A file two levels down: only `src/sub` changed, and that is enough.
    test.write("src/sub/c.txt", "c\n");
    let out = test.run();
    out.ok();
    assert!(!walk_reused(&test, &out, "src"), "{}", out.stderr);
    assert_eq!(test.count("each"), 5, "the new file is a new instance");
    assert_eq!(test.last_run()["counts"]["total"], 3);
}

/// The memo and its side file are rewritten in place (`memo::overwrite`):
/// whatever a torn or interleaved write leaves, the checksums turn into a
/// full run that gets everything right and leaves a good memo again.
#[test]
fn a_damaged_memo_or_side_file_is_a_full_run_that_writes_a_good_one() {
    let test = setup();
    run_then_prove_no_op(&test);
    assert_answered_by_memo(&test);
    let memo_dir = test.path(".ccflow/memo");
    let memo = std::fs::read_dir(&memo_dir)
        .expect("memo directory")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_none())
        .expect("a memo");
    let settled = memo.with_extension("settled");
    let instances = memo.with_extension("instances");
    let good = std::fs::read(&memo).expect("read memo");
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 4] = [
        ("a byte changed in the middle", |b| {
            let middle = b.len() / 2;
            b[middle] ^= 0x55;
        }),
        ("cut short", |b| b.truncate(b.len() / 2)),
        ("a longer old tail left after it", |b| {
            b.extend_from_slice(b"left over from a longer memo")
        }),
        ("its magic overwritten by a slow run that was killed", |b| {
            b[0] = 0
        }),
    ];
    for (what, damage) in damages {
        let mut bytes = good.clone();
        damage(&mut bytes);
        std::fs::write(&memo, &bytes).expect("damage memo");
        let counts = (test.count("each"), test.count("all"));
        assert_full_run(&test.run());
        assert_eq!(
            (test.count("each"), test.count("all")),
            counts,
            "{what}: everything still cached"
        );
        assert_answered_by_memo(&test);
    }
    // The side file of instance records, read to answer a run with
    // nothing changed: another one is not the one the memo names.
    let mut bytes = std::fs::read(&instances).expect("read records side file");
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&instances, &bytes).expect("damage records side file");
    assert_full_run(&test.run());
    assert_answered_by_memo(&test);
    // The side file of instance results, read after an edit.
    let mut bytes = std::fs::read(&settled).expect("read side file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&settled, &bytes).expect("damage side file");
    test.write("in/b.txt", "bravo\n");
    test.run().ok();
    assert_eq!(test.read("all.txt"), "ALPHA\nBRAVO\nGAMMA\n");
    assert_eq!(
        (test.count("each"), test.count("all")),
        (4, 2),
        "only the edited instance and the reduce reran"
    );
    prove_no_op(&test);
    assert_answered_by_memo(&test);
}

/// A workflow written just before a run (a script that writes it and runs
/// it) is too fresh for its stat to vouch for it: its content is what the
/// next run checks, so that run stays on the memo's changed path rather
/// than taking the full run.
#[test]
fn a_workflow_written_just_before_its_first_run_does_not_force_the_next_one_full() {
    let test = setup().env("CCFLOW_LOG", "debug");
    test.run().ok();
    std::thread::sleep(Duration::from_millis(250));
    test.write("in/b.txt", "bravo\n");
    let out = test.run();
    out.ok();
    let changed = named_changed(&out);
    assert_eq!(changed.len(), 1, "{}", out.stderr);
    assert!(changed[0].contains("in/b.txt"), "{}", out.stderr);
    assert_eq!(test.read("all.txt"), "ALPHA\nBRAVO\nGAMMA\n");
    assert_eq!((test.count("each"), test.count("all")), (4, 2));
    // An edit of the workflow itself is still seen, fresh or not.
    test.write(
        ".claudecluster/memo.yaml",
        &WORKFLOW.replace("cat out/*.txt", "cat  out/*.txt"),
    );
    assert_full_run(&test.run());
    assert_eq!(test.count("all"), 3, "the changed command reran");
}
