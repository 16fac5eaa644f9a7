//! A ccflow killed with SIGKILL mid-run leaves a store from which the next
//! run completes correctly (SPEC §8 "nothing lost").

use std::time::Duration;

use crate::support::{signal, wait_until, Test};

const N: usize = 200;

/// Each instance writes `out/STEM.txt` = its input doubled; the reduce
/// sums every output.
const WORKFLOW: &str = r#"version: 1
name: crash
tasks:
  double:
    for_each: { files: "src/*.txt" }
    inputs: ["{{ item }}"]
    outputs: ["out/{{ item.stem }}.txt"]
    run: echo x >> .count/{{ item.stem }} && mkdir -p out && awk '{print $1*2}' {{ item }} > out/{{ item.stem }}.txt
  sum:
    needs: [double]
    outputs: [sum.txt]
    run: cat {{ needs.double.outputs }} | awk '{s+=$1} END {print s+0}' > sum.txt
"#;

fn kill_after(fraction_percent: usize) {
    let mut test = Test::new().workflow("crash", WORKFLOW);
    for i in 0..N {
        test = test.file(&format!("src/{i:03}.txt"), &format!("{i}\n"));
    }
    let test = test.args(["run", "crash", "-j", "4"]);
    let mut child = test.spawn();
    let threshold = N * fraction_percent / 100;
    wait_until(Duration::from_secs(60), "instances to start", || {
        test.counters().len() >= threshold
    });
    signal(&child, libc::SIGKILL);
    let _ = child.wait();
    // Change a few inputs, some that ran and some that did not, so stale
    // outputs would show.
    let changed = [0, threshold.saturating_sub(1), N - 1];
    for i in changed {
        test.write(&format!("src/{i:03}.txt"), &format!("{}\n", i + 1000));
    }
    let out = test.run();
    out.ok();
    let mut expected_sum = 0;
    for i in 0..N {
        let value = if changed.contains(&i) { i + 1000 } else { i };
        expected_sum += 2 * value;
        assert_eq!(
            test.read(&format!("out/{i:03}.txt")),
            format!("{}\n", 2 * value),
            "killed at {fraction_percent}%: `out/{i:03}.txt`"
        );
    }
    assert_eq!(
        test.read("sum.txt").trim(),
        expected_sum.to_string(),
        "killed at {fraction_percent}%"
    );
    if fraction_percent != 50 {
        return;
    }
    // And the store is sound: a further run is all cached.
    let before = test.total_count();
    test.run().ok();
    assert_eq!(
        test.total_count(),
        before,
        "killed at {fraction_percent}%: the run after recovery is all cached"
    );
    assert_eq!(test.last_run()["counts"]["cached"], N + 1);
}

#[test]
fn sigkill_at_10_50_90_percent_leaves_a_store_the_next_run_completes_from() {
    for percent in [10, 50, 90] {
        kill_after(percent);
    }
}
