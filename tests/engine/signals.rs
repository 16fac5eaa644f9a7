//! Timeouts, Ctrl-C / SIGTERM, tasks that ignore SIGTERM, daemons: no
//! process a task started outlives the run. Every check is by pid: the
//! tasks write `$$` and their children's pids to files.

use std::time::{Duration, Instant};

use crate::support::{assert_gone, instance, pids_in, signal, wait_output, wait_until, Test};

#[test]
fn timeout_kills_the_task_and_its_children() {
    let yaml = r#"version: 1
name: to
tasks:
  hang:
    timeout: 1s
    cache: false
    run: mkdir -p pids; echo $$ > pids/shell; sleep 1000 & echo $! > pids/child; wait
"#;
    let test = Test::new().workflow("to", yaml).args(["run", "to"]);
    let clock = Instant::now();
    let out = test.run();
    out.expect_code(1);
    assert!(
        clock.elapsed() < Duration::from_secs(20),
        "the timeout fired"
    );
    let pids = pids_in(&test, &["pids/shell", "pids/child"]);
    assert_eq!(pids.len(), 2);
    assert_gone(&pids);
    let record = test.last_run();
    assert_eq!(instance(&record, "hang")["status"], "timed_out");
    assert!(
        out.stderr.contains("timeout"),
        "the plain line says timeout:\n{}",
        out.stderr
    );
}

#[test]
fn task_ignoring_sigterm_is_killed_after_the_grace_period() {
    let yaml = r#"version: 1
name: stubborn
tasks:
  stubborn:
    timeout: 500ms
    cache: false
    run: trap '' TERM; mkdir -p pids; echo $$ > pids/shell; sleep 1000 & echo $! > pids/child; wait; wait; wait
"#;
    let test = Test::new()
        .workflow("stubborn", yaml)
        .args(["run", "stubborn"])
        .env("CCFLOW_KILL_GRACE", "1s");
    let clock = Instant::now();
    test.run().expect_code(1);
    let elapsed = clock.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400),
        "SIGKILL came only after the grace: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "SIGKILL came: {elapsed:?}"
    );
    assert_gone(&pids_in(&test, &["pids/shell", "pids/child"]));
    assert_eq!(
        instance(&test.last_run(), "stubborn")["status"],
        "timed_out"
    );
}

#[test]
fn daemons_forked_by_a_task_do_not_outlive_the_run() {
    // A background job, a subshell orphan, a `setsid` daemon in its own
    // session, and a double-forked one (`setsid -f`).
    let yaml = r#"version: 1
name: daemon
tasks:
  daemon:
    cache: false
    run: |
      mkdir -p pids
      sleep 1000 & echo $! > pids/bg
      (sleep 1000 & echo $! > pids/sub)
      setsid sleep 1000 & echo $! > pids/setsid
      setsid -f sh -c 'echo $$ > pids/forked.tmp && mv pids/forked.tmp pids/forked; exec sleep 1000'
      while [ ! -s pids/forked ]; do sleep 0.01; done
      echo x >> .count/daemon
"#;
    let test = Test::new().workflow("daemon", yaml).args(["run", "daemon"]);
    test.run().ok();
    assert_eq!(test.count("daemon"), 1);
    let pids = pids_in(
        &test,
        &["pids/bg", "pids/sub", "pids/setsid", "pids/forked"],
    );
    assert_eq!(pids.len(), 4);
    assert_gone(&pids);
}

/// Three long tasks start (they touch `started/ITEM`), a fourth waits for
/// a slot; the signal stops everything.
fn interrupted_run(sig: i32) {
    let yaml = r#"version: 1
name: long
tasks:
  long:
    for_each: { items: [a, b, c, d] }
    cache: false
    run: mkdir -p pids started; echo $$ > pids/{{ item }}; sleep 1000 & echo $! >> pids/{{ item }}.child; touch started/{{ item }}; wait
"#;
    let test = Test::new()
        .workflow("long", yaml)
        .args(["run", "long", "-j", "3"])
        .env("CCFLOW_KILL_GRACE", "2s");
    let child = test.spawn();
    wait_until(Duration::from_secs(20), "three tasks to start", || {
        std::fs::read_dir(test.path("started"))
            .map(|d| d.count() >= 3)
            .unwrap_or(false)
    });
    signal(&child, sig);
    let out = wait_output(child, Duration::from_secs(20));
    out.expect_code(130);
    let started: Vec<String> = std::fs::read_dir(test.path("started"))
        .expect("started")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(started.len(), 3, "the queued instance never started");
    let files: Vec<String> = started
        .iter()
        .flat_map(|s| [format!("pids/{s}"), format!("pids/{s}.child")])
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let pids = pids_in(&test, &files);
    assert_eq!(pids.len(), 6);
    assert_gone(&pids);
    let record = test.last_run();
    assert_eq!(record["status"], "interrupted", "{record:#}");
    for s in &started {
        let status = instance(&record, &format!("long[{s}]"))["status"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert_eq!(status, "cancelled", "`long[{s}]`");
    }
    assert_eq!(
        crate::support::ids_with_status(&record, "not_started").len(),
        1,
        "the queued instance is recorded as not started"
    );
}

#[test]
fn sigint_stops_every_task_writes_the_record_and_exits_130() {
    interrupted_run(libc::SIGINT);
}

#[test]
fn sigterm_stops_every_task_writes_the_record_and_exits_130() {
    interrupted_run(libc::SIGTERM);
}

#[test]
fn work_finished_before_ctrl_c_is_cached_for_the_next_run() {
    let yaml = r#"version: 1
name: resume
tasks:
  quick:
    for_each: { items: [a, b] }
    outputs: ["q-{{ item }}"]
    run: echo x >> .count/q-{{ item }}; echo {{ item }} > q-{{ item }}
  hang:
    outputs: [h]
    run: echo x >> .count/h; [ -e go ] || sleep 1000; echo h > h
"#;
    let test = Test::new().workflow("resume", yaml).args(["run", "resume"]);
    let child = test.spawn();
    wait_until(Duration::from_secs(20), "every task to start", || {
        test.counters().len() == 3
    });
    // Let the quick ones finish.
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGINT);
    wait_output(child, Duration::from_secs(20)).expect_code(130);
    test.write("go", "");
    test.run().ok();
    assert_eq!(
        (test.count("q-a"), test.count("q-b"), test.count("h")),
        (1, 1, 2)
    );
    let record = test.last_run();
    assert_eq!(instance(&record, "quick[a]")["status"], "cached");
    assert_eq!(test.read("h"), "h\n");
}
