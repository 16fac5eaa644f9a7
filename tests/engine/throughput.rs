//! Large fan-outs: 1,000 instances plus a reduce, run cold, warm, and
//! after changing one input.

use crate::support::{fan_out_workflow, numbered_files, Test};

#[test]
fn thousand_instance_fan_out_reduces_right_and_reruns_only_the_changed_instance() {
    let test = numbered_files(Test::new().workflow("fan", fan_out_workflow()), 1000)
        .args(["run", "fan", "-j", "4"]);
    test.run().ok();
    // 0 + 1 + ... + 999
    assert_eq!(test.read("total.txt").trim(), "499500");
    let all: String = (0..1000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        test.read("all.txt"),
        all,
        "the reduce concatenates in item order"
    );
    for i in [0, 1, 500, 999] {
        assert_eq!(test.read(&format!("out/{i:04}.txt")), format!("{i}\n"));
    }
    assert_eq!(test.total_count(), 1001, "every instance ran exactly once");
    let record = test.last_run();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["counts"]["succeeded"], 1001);

    // Warm: nothing runs.
    test.run().ok();
    assert_eq!(test.total_count(), 1001, "a warm run executes nothing");
    assert_eq!(test.last_run()["counts"]["cached"], 1001);

    // One input changes: that instance and the reduce run, nothing else.
    test.write("src/0500.txt", "1500\n");
    test.run().ok();
    assert_eq!(test.count("0500"), 2);
    assert_eq!(test.count("total"), 2);
    assert_eq!(test.total_count(), 1003, "exactly two instances reran");
    assert_eq!(test.read("total.txt").trim(), "500500");
    let counts = &test.last_run()["counts"];
    assert_eq!(
        (counts["succeeded"].as_u64(), counts["cached"].as_u64()),
        (Some(2), Some(999))
    );
}
