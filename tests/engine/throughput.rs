//! Large fan-outs: 1,000 instances plus a reduce.

use crate::support::{fan_out_workflow, numbered_files, Test};

#[test]
fn thousand_instance_fan_out_and_reduce_produce_the_right_outputs() {
    let test = numbered_files(Test::new().workflow("fan", fan_out_workflow()), 1000).args(["run", "fan", "-j", "4"]);
    test.run().ok();
    // 0 + 1 + ... + 999
    assert_eq!(test.read("total.txt").trim(), "499500");
    for i in [0, 1, 500, 999] {
        assert_eq!(test.read(&format!("out/{i:04}.txt")), format!("{i}\n"));
    }
    assert_eq!(test.total_count(), 1001, "every instance ran exactly once");
    let record = test.last_run();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["counts"]["succeeded"], 1001);
}
