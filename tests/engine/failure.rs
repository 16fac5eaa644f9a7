//! Fail-fast and `--keep-going`, `if:` and `continue_on_error`.

use std::collections::BTreeSet;

use crate::support::{ids_with_status, status_of, Test};

#[test]
fn fail_fast_starts_nothing_after_a_failure_and_lets_running_ones_finish() {
    // `bad` fails at once; `long` is already running and must finish;
    // `later[*]` are queued behind them (-j 2) and must not start.
    let yaml = r#"version: 1
name: ff
tasks:
  long:
    priority: 10
    cache: false
    run: sleep 0.5 && echo x >> .count/long
  bad:
    priority: 5
    cache: false
    run: echo x >> .count/bad; exit 1
  later:
    for_each: { items: [a, b, c, d, e, f] }
    cache: false
    run: echo x >> .count/later-{{ item }}
"#;
    let test = Test::new()
        .workflow("ff", yaml)
        .args(["run", "ff", "-j", "2"]);
    let out = test.run();
    out.expect_code(1);
    assert_eq!(test.count("long"), 1, "the running instance finished");
    assert_eq!(test.count("bad"), 1);
    let started_later = test
        .counters()
        .iter()
        .filter(|n| n.starts_with("later-"))
        .count();
    let record = test.last_run();
    assert_eq!(record["status"], "failed");
    assert_eq!(status_of(&record, "long"), "succeeded");
    assert_eq!(status_of(&record, "bad"), "failed");
    let not_started = ids_with_status(&record, "not_started");
    // At most the slot freed by `bad` racing with its own failure report
    // could have started one; fail-fast means in practice none.
    assert_eq!(started_later, 0, "nothing new started after the failure");
    assert_eq!(
        not_started.len(),
        6,
        "the record lists the instances that never started: {not_started:?}"
    );
}

#[test]
fn keep_going_completes_independent_branches_and_blocks_dependents() {
    let yaml = r#"version: 1
name: kg
tasks:
  bad:
    cache: false
    run: exit 1
  after_bad:
    needs: [bad]
    cache: false
    run: echo x >> .count/after_bad
  after_after:
    needs: [after_bad]
    cache: false
    run: echo x >> .count/after_after
  good:
    for_each: { items: [a, b, c] }
    cache: false
    run: sleep 0.1; echo x >> .count/good-{{ item }}
  after_good:
    needs: [good]
    cache: false
    run: echo x >> .count/after_good
"#;
    let test = Test::new()
        .workflow("kg", yaml)
        .args(["run", "kg", "--keep-going", "-j", "1"]);
    test.run().expect_code(1);
    let counters = test.counters();
    let expected: BTreeSet<String> = ["good-a", "good-b", "good-c", "after_good"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(counters, expected);
    let record = test.last_run();
    assert_eq!(status_of(&record, "after_bad"), "blocked");
    assert_eq!(status_of(&record, "after_after"), "blocked");
    assert_eq!(status_of(&record, "after_good"), "succeeded");
    assert_eq!(record["status"], "failed");
}

#[test]
fn if_false_skips_the_instance_and_downstream_still_runs() {
    let yaml = r#"version: 1
name: cond
vars: { enabled: "no" }
tasks:
  maybe:
    if: "{{ vars.enabled == 'yes' }}"
    run: echo x >> .count/maybe
  after:
    needs: [maybe]
    run: echo x >> .count/after
"#;
    let test = Test::new().workflow("cond", yaml).args(["run", "cond"]);
    test.run().ok();
    assert_eq!(test.count("maybe"), 0);
    assert_eq!(test.count("after"), 1);
    let record = test.last_run();
    assert_eq!(status_of(&record, "maybe"), "skipped");
    assert_eq!(status_of(&record, "after"), "succeeded");
    // And with the variable flipped it runs.
    test.run_args(&["run", "cond", "--var", "enabled=yes"]).ok();
    assert_eq!(test.count("maybe"), 1);
}
