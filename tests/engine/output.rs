//! What the user sees without a TTY, `--events -`, and exit codes.

use serde_json::Value;

use crate::support::Test;

const THREE: &str = r#"version: 1
name: three
tasks:
  a:
    for_each: { items: [x, y] }
    run: echo x >> .count/a-{{ item }}
  b:
    needs: [a]
    run: echo x >> .count/b
"#;

#[test]
fn plain_output_has_one_line_per_finished_instance_and_a_summary() {
    let test = Test::new().workflow("three", THREE).args(["run", "three"]);
    let out = test.run();
    out.ok();
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(lines.len(), 3, "{}", out.stderr);
    let mut ids = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        // `[1/3] ok      a[x]   12ms`
        let (counter, rest) = line.split_once("] ").expect("counter");
        assert_eq!(
            counter
                .trim_start_matches('[')
                .split('/')
                .map(str::trim)
                .collect::<Vec<_>>(),
            vec![(n + 1).to_string(), "3".to_owned()],
            "{line}"
        );
        let words: Vec<&str> = rest.split_whitespace().collect();
        assert_eq!(words.len(), 3, "status, id, duration: {line}");
        assert_eq!(words[0], "ok", "{line}");
        assert!(
            rest.starts_with("ok      "),
            "the status is padded to a column: {line:?}"
        );
        ids.push(words[1].to_owned());
        assert!(
            words[2].ends_with("ms") || words[2].ends_with('s'),
            "a duration: {line}"
        );
    }
    ids.sort();
    assert_eq!(ids, vec!["a[x]", "a[y]", "b"]);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("ccflow: succeeded in ") && l.contains("3 ran, 0 cached")),
        "summary line:\n{}",
        out.stderr
    );
    // Second run, without the up-to-date memo (which answers in one line):
    // every instance's line says cached.
    std::fs::remove_dir_all(test.path(".ccflow/memo")).expect("remove the memo");
    let again = test.run();
    again.ok();
    let cached = again
        .stderr
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("] cached  "))
        .count();
    assert_eq!(cached, 3, "{}", again.stderr);
    assert!(again.stderr.contains("0 ran, 3 cached"), "{}", again.stderr);
}

#[test]
fn events_to_stdout_are_versioned_ndjson_in_order() {
    let test = Test::new()
        .workflow("three", THREE)
        .args(["run", "three", "--events", "-"]);
    let out = test.run();
    out.ok();
    let events: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        events.iter().all(|e| e["v"] == 1 && e["ts_ms"].is_u64()),
        "every line has `v: 1` and a timestamp"
    );
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().expect("event name"))
        .collect();
    assert_eq!(names.first(), Some(&"run_started"));
    assert_eq!(names.last(), Some(&"run_finished"));
    assert_eq!(names.iter().filter(|n| **n == "run_started").count(), 1);
    assert_eq!(names.iter().filter(|n| **n == "task_finished").count(), 3);
    // Each instance: queued, then started, then finished.
    for id in ["a[x]", "a[y]", "b"] {
        let position = |name: &str| {
            events
                .iter()
                .position(|e| e["event"] == name && e["id"] == id)
                .unwrap_or_else(|| panic!("no `{name}` for `{id}`"))
        };
        assert!(position("task_queued") < position("task_started"));
        assert!(position("task_started") < position("task_finished"));
    }
    // `b` starts only after both `a` instances finished.
    let finished_a = events
        .iter()
        .rposition(|e| e["event"] == "task_finished" && e["task"] == "a")
        .expect("a finished");
    let started_b = events
        .iter()
        .position(|e| e["event"] == "task_started" && e["id"] == "b")
        .expect("b started");
    assert!(finished_a < started_b);
    let last = events.last().expect("events");
    assert_eq!(last["status"], "succeeded");
    assert_eq!(last["counts"]["succeeded"], 3);
    let timestamps: Vec<u64> = events.iter().filter_map(|e| e["ts_ms"].as_u64()).collect();
    assert!(
        timestamps.windows(2).all(|w| w[0] <= w[1]),
        "timestamps never go back"
    );
    // Nothing but events on stdout; the human lines went to stderr.
    assert!(out.stderr.contains("ccflow: succeeded"));
}

#[test]
fn exit_codes_are_0_1_2() {
    let yaml = r#"version: 1
name: codes
vars: { fail: "no" }
tasks:
  t:
    cache: false
    run: test {{ vars.fail }} = no
"#;
    let test = Test::new().workflow("codes", yaml);
    test.run_args(&["run", "codes"]).expect_code(0);
    test.run_args(&["run", "codes", "--var", "fail=yes"])
        .expect_code(1);
    test.run_args(&["run", "missing-workflow"]).expect_code(2);
    test.write(
        ".claudecluster/broken.yaml",
        "version: 1\nname: broken\ntasks:\n  t:\n    runn: true\n",
    );
    let invalid = test.run_args(&["run", "broken"]);
    invalid.expect_code(2);
    assert!(invalid.stderr.contains("runn"), "{}", invalid.stderr);
    // 130 is covered by the signal tests.
}

#[test]
fn instances_whose_ids_differ_only_in_replaced_characters_keep_separate_logs() {
    // Regression: `echo[x y]` and `echo[x_y]` both logged to
    // `logs/echo_x_y_.log`, each overwriting the other's log (and caching it).
    let yaml = r#"version: 1
name: logs
tasks:
  echo:
    for_each: { items: ["x y", "x_y", "x/y"] }
    run: echo I am {{ item }}
"#;
    let test = Test::new().workflow("logs", yaml).args(["run", "logs"]);
    test.run().ok();
    let record = test.last_run();
    let run_dir = test.path(&format!(
        ".ccflow/runs/{}",
        record["run_id"].as_str().expect("run id")
    ));
    let mut paths = std::collections::BTreeSet::new();
    for item in ["x y", "x_y", "x/y"] {
        let id = format!("echo[{item}]");
        let log = crate::support::instance(&record, &id)["log"]
            .as_str()
            .expect("a log path")
            .to_owned();
        assert!(paths.insert(log.clone()), "`{id}` shares `{log}`");
        let text = std::fs::read_to_string(run_dir.join(&log)).expect("read log");
        assert_eq!(text, format!("I am {item}\n"), "`{id}`");
    }
}

/// `ccflow run ... 2>&1 | head -1`: once the reader is gone every write to
/// stderr fails. The run must still finish every instance and exit with its
/// status: neither a panic ("failed printing to stderr") nor a hang in an
/// instance whose logging panicked.
#[test]
fn a_closed_stderr_neither_panics_nor_hangs_the_run() {
    let test = Test::new()
        .workflow("three", THREE)
        .args(["run", "three"])
        .env("CCFLOW_LOG", "trace");
    let mut child = test.spawn();
    // Nobody reads stdout or stderr any more.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ccflow hung with a closed stderr");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(test.counters().len(), 3, "every instance ran");
    assert_eq!(test.last_run()["status"], "succeeded");
    // `ccflow runs | head -1`, `ccflow plan | head -1`: no panic either.
    for args in [&["runs"][..], &["plan", "three"], &["show", "--help"]] {
        let mut child = std::process::Command::new(crate::support::BIN)
            .args(args)
            .current_dir(test.root())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ccflow");
        drop(child.stdout.take());
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("read stderr");
        let status = child.wait().expect("wait");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(status.code(), Some(101), "{args:?}: {stderr}");
    }
}
