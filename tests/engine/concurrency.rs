//! Concurrency limits, measured by the tasks themselves: each writes its
//! start and end time (`date +%s%N`) and the test computes the maximum
//! overlap.

use crate::support::Test;

/// Maximum number of intervals open at once.
fn max_overlap(intervals: &[(u128, u128)]) -> usize {
    let mut points: Vec<(u128, i32)> = Vec::new();
    for (start, end) in intervals {
        points.push((*start, 1));
        points.push((*end, -1));
    }
    // Ends sort before starts at the same instant.
    points.sort();
    let (mut open, mut max) = (0i32, 0i32);
    for (_, delta) in points {
        open += delta;
        max = max.max(open);
    }
    usize::try_from(max).unwrap_or(0)
}

/// Reads `times/NAME` files holding `start end` in nanoseconds.
fn intervals(test: &Test, prefix: &str) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(test.path("times"))
        .expect("times dir")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read times");
        let numbers: Vec<u128> = text
            .split_whitespace()
            .map(|n| n.parse().expect("a timestamp"))
            .collect();
        assert_eq!(numbers.len(), 2, "`{name}` holds start and end: {text:?}");
        out.push((numbers[0], numbers[1]));
    }
    out
}

const TIMED: &str =
    r#"s=$(date +%s%N); sleep 0.15; e=$(date +%s%N); mkdir -p times; echo "$s $e" > times/"#;

#[test]
fn jobs_limit_caps_concurrent_instances() {
    let yaml = format!(
        r#"version: 1
name: par
tasks:
  work:
    for_each: {{ items: [a, b, c, d, e, f, g, h, i, j, k, l] }}
    cache: false
    run: {TIMED}w-{{{{ item }}}}
"#
    );
    let test = Test::new()
        .workflow("par", &yaml)
        .args(["run", "par", "-j", "3"]);
    test.run().ok();
    let spans = intervals(&test, "w-");
    assert_eq!(spans.len(), 12);
    let overlap = max_overlap(&spans);
    assert!(overlap <= 3, "at most 3 at once, saw {overlap}");
    assert!(overlap >= 2, "instances do run in parallel, saw {overlap}");
}

#[test]
fn pool_limit_caps_its_pool_while_others_run() {
    let yaml = format!(
        r#"version: 1
name: pools
concurrency: {{ default: 4, slow: 1 }}
tasks:
  slow:
    for_each: {{ items: [a, b, c, d] }}
    pool: slow
    cache: false
    run: {TIMED}s-{{{{ item }}}}
  fast:
    for_each: {{ items: [a, b, c, d, e, f] }}
    cache: false
    run: {TIMED}f-{{{{ item }}}}
"#
    );
    let test = Test::new().workflow("pools", &yaml).args(["run", "pools"]);
    test.run().ok();
    let slow = intervals(&test, "s-");
    let fast = intervals(&test, "f-");
    assert_eq!((slow.len(), fast.len()), (4, 6));
    assert_eq!(max_overlap(&slow), 1, "pool `slow` runs one at a time");
    let all: Vec<(u128, u128)> = slow.iter().chain(&fast).copied().collect();
    let overlap = max_overlap(&all);
    assert!(overlap <= 4, "the global limit holds, saw {overlap}");
    // Something else ran while the slow pool was busy.
    let slow_busy_with_fast = slow
        .iter()
        .any(|(s, e)| fast.iter().any(|(fs, fe)| fs < e && fe > s));
    assert!(
        slow_busy_with_fast,
        "other pools are not held back by `slow`"
    );
}

#[test]
fn ready_queue_prefers_priority_then_the_critical_path() {
    // With one slot, the start order is the queue order: `urgent` first
    // (priority), then the head of the longest chain, then the rest.
    let yaml = r#"version: 1
name: order
tasks:
  leaf1:
    cache: false
    run: echo leaf1 >> order.txt
  leaf2:
    cache: false
    run: echo leaf2 >> order.txt
  chain1:
    cache: false
    run: echo chain1 >> order.txt
  chain2:
    needs: [chain1]
    cache: false
    run: echo chain2 >> order.txt
  chain3:
    needs: [chain2]
    cache: false
    run: echo chain3 >> order.txt
  urgent:
    priority: 5
    cache: false
    run: echo urgent >> order.txt
"#;
    let test = Test::new()
        .workflow("order", yaml)
        .args(["run", "order", "-j", "1"]);
    test.run().ok();
    let order = test.read("order.txt");
    let order: Vec<&str> = order.lines().collect();
    assert_eq!(order.len(), 6);
    assert_eq!(order[0], "urgent", "{order:?}");
    assert_eq!(
        order[1], "chain1",
        "the critical path goes first: {order:?}"
    );
    assert_eq!(order[2], "chain2", "{order:?}");
}

/// Runs `ccflow run fds -j 150` under `ulimit` arguments.
fn run_with_open_file_limit(test: &Test, ulimit: &str) -> crate::support::Output {
    let script = format!("ulimit {ulimit} && exec \"$0\" run fds -j 150");
    let out = std::process::Command::new("sh")
        .args(["-c", &script, crate::support::BIN])
        .current_dir(test.root())
        .env("CI", "true")
        .env_remove("GITHUB_ACTIONS")
        .output()
        .expect("run ccflow under sh");
    crate::support::Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn many_jobs_under_a_low_open_file_limit_do_not_fail_with_too_many_open_files() {
    // Regression: ~3 descriptors per running instance, so `-j 150` under a
    // limit of 256 failed most instances with EMFILE. ccflow now raises the
    // soft limit to the hard one, and below that runs fewer at once.
    let yaml = r#"version: 1
name: fds
tasks:
  t:
    for_each: { items: [RANGE] }
    cache: false
    run: sleep 0.3 && echo x >> .count/{{ item }}
"#;
    let items: Vec<String> = (0..150).map(|i| i.to_string()).collect();
    let test = Test::new().workflow("fds", &yaml.replace("RANGE", &items.join(", ")));
    // Only the soft limit is low: raised.
    let out = run_with_open_file_limit(&test, "-Sn 256");
    out.ok();
    assert_eq!(test.counters().len(), 150);
    // The hard limit is low too: fewer at once, with a message.
    let out = run_with_open_file_limit(&test, "-n 256");
    out.ok();
    assert_eq!(test.total_count(), 300);
    assert!(out.stderr.contains("open-file limit"), "{}", out.stderr);
}
