//! Retries: the attempts are counted by the task itself.

use crate::support::{instance, Test};

#[test]
fn task_failing_twice_then_succeeding_with_retries_two_succeeds_in_three_attempts() {
    let yaml = r#"version: 1
name: flaky
tasks:
  flaky:
    retries: 2
    outputs: [done.txt]
    run: echo x >> .count/flaky; test $(wc -l < .count/flaky) -ge 3 && echo ok > done.txt
"#;
    let test = Test::new().workflow("flaky", yaml).args(["run", "flaky"]);
    test.run().ok();
    assert_eq!(test.count("flaky"), 3);
    let record = test.last_run();
    let flaky = instance(&record, "flaky");
    assert_eq!(flaky["status"], "succeeded");
    assert_eq!(flaky["attempts"].as_array().map(Vec::len), Some(3));
    assert_eq!(test.read("done.txt"), "ok\n");
}

#[test]
fn task_always_failing_with_two_attempts_fails_after_two() {
    let yaml = r#"version: 1
name: broken
tasks:
  broken:
    retry: { attempts: 2, backoff: 100ms }
    run: echo x >> .count/broken; exit 3
"#;
    let test = Test::new().workflow("broken", yaml).args(["run", "broken"]);
    let out = test.run();
    out.expect_code(1);
    assert_eq!(test.count("broken"), 2);
    let record = test.last_run();
    let broken = instance(&record, "broken");
    assert_eq!(broken["status"], "failed");
    assert_eq!(broken["attempts"].as_array().map(Vec::len), Some(2));
    assert_eq!(broken["exit_code"], 3);
}
