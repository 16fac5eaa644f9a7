//! `runner: docker` through the real binary and the real engine: a fan-out
//! gives the same outputs as the local runner and reruns from the cache; the
//! network is off by default; files belong to the invoking user; timeouts
//! and Ctrl-C leave no container behind; a missing image fails before
//! anything runs. The test image comes from `.ci/docker-images.sh`.

use std::process::Command;
use std::time::Duration;

use crate::support::{signal, status_of, wait_output, wait_until, Test};

const IMAGE: &str = "ccflow-test/busybox:latest";

/// Whether the engine and the test image are here; under `CI=true` their
/// absence fails the test instead of skipping it.
fn docker_ready() -> bool {
    let ok = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/docker-images.sh");
        let built = Command::new("bash")
            .arg(script)
            .status()
            .is_ok_and(|s| s.success());
        if built {
            return true;
        }
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "the Docker engine or the test image `{IMAGE}` is missing (CI=true)"
        );
        eprintln!("skipping: the Docker engine or `{IMAGE}` is not available");
        return false;
    }
    true
}

/// Containers of ccflow runs in this repository's records still present.
fn leftover_containers(test: &Test) -> Vec<String> {
    let mut left = Vec::new();
    for run in test.runs() {
        let id = run["run_id"].as_str().unwrap_or_default().to_owned();
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=ccflow.run={id}")])
            .output()
            .expect("docker ps");
        left.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned),
        );
    }
    left
}

fn workflow(runner: &str) -> String {
    format!(
        r#"version: 1
tasks:
  upper:
    runner: {runner}
    image: {IMAGE}
    for_each: {{ files: "src/*.txt" }}
    inputs: ["{{{{ item }}}}"]
    outputs: ["out/{{{{ item.stem }}}}.up"]
    run: mkdir -p out && tr a-z A-Z < {{{{ item }}}} > out/{{{{ item.stem }}}}.up && echo x >> .count/{{{{ item.stem }}}}
  all:
    needs: [upper]
    runner: {runner}
    image: {IMAGE}
    inputs: ["out/*.up"]
    outputs: [all.txt]
    run: cat {{{{ needs.upper.outputs }}}} > all.txt
"#
    )
}

fn files(mut test: Test) -> Test {
    for (name, text) in [("a", "alpha\n"), ("b", "bravo\n"), ("c", "charlie\n")] {
        test = test.file(&format!("src/{name}.txt"), text);
    }
    test
}

#[test]
fn docker_fan_out_matches_the_local_runner_and_reruns_from_the_cache() {
    if !docker_ready() {
        return;
    }
    let local = files(Test::new().workflow("w", &workflow("local")));
    local.run_args(&["run", "w"]).ok();
    let docker = files(Test::new().workflow("w", &workflow("docker")));
    docker.run_args(&["run", "w", "-j", "2"]).ok();
    assert_eq!(docker.read("all.txt"), "ALPHA\nBRAVO\nCHARLIE\n");
    for name in ["a", "b", "c"] {
        assert_eq!(
            docker.read(&format!("out/{name}.up")),
            local.read(&format!("out/{name}.up"))
        );
    }
    assert_eq!(docker.read("all.txt"), local.read("all.txt"));
    // Written in the container, owned by the invoking user.
    let meta = std::fs::metadata(docker.path("out/a.up")).expect("stat output");
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), uid);
    assert_eq!(docker.total_count(), 3);
    // A rerun executes nothing (counted by the tasks themselves).
    let again = docker.run_args(&["run", "w"]);
    again.ok();
    assert_eq!(docker.total_count(), 3, "{}", again.stderr);
    assert!(again.stderr.contains("0 ran, 4 cached"), "{}", again.stderr);
    assert!(leftover_containers(&docker).is_empty());
}

#[test]
fn containers_have_no_network_unless_asked() {
    if !docker_ready() {
        return;
    }
    let test = Test::new().workflow(
        "net",
        &format!(
            r#"version: 1
tasks:
  offline:
    runner: docker
    image: {IMAGE}
    cache: false
    run: "cat /proc/net/dev > offline.txt"
  online:
    runner: docker
    image: {IMAGE}
    network: bridge
    cache: false
    run: "cat /proc/net/dev > online.txt"
"#
        ),
    );
    test.run_args(&["run", "net"]).ok();
    let offline = test.read("offline.txt");
    assert!(offline.contains("lo:"), "{offline}");
    assert!(
        !offline.contains("eth0"),
        "no interface but loopback: {offline}"
    );
    assert!(test.read("online.txt").contains("eth0"));
    assert!(leftover_containers(&test).is_empty());
}

#[test]
fn docker_timeout_and_sigint_leave_no_container() {
    if !docker_ready() {
        return;
    }
    let test = Test::new()
        .workflow(
            "slow",
            &format!(
                r#"version: 1
tasks:
  hang:
    runner: docker
    image: {IMAGE}
    timeout: 2s
    run: sleep 1000
"#
            ),
        )
        .env("CCFLOW_KILL_GRACE", "1s");
    let out = test.run_args(&["run", "slow"]);
    out.expect_code(1);
    assert_eq!(
        status_of(&test.last_run(), "hang"),
        "timed_out",
        "{}",
        out.stderr
    );
    assert!(leftover_containers(&test).is_empty());

    let test = Test::new()
        .workflow(
            "slow",
            &format!(
                r#"version: 1
tasks:
  hang:
    runner: docker
    image: {IMAGE}
    for_each: {{ items: [1, 2] }}
    run: touch started-{{{{ item }}}} && sleep 1000
"#
            ),
        )
        .env("CCFLOW_KILL_GRACE", "1s")
        .args(["run", "slow", "-j", "2"]);
    let child = test.spawn();
    wait_until(Duration::from_secs(60), "containers to start", || {
        test.exists("started-1") && test.exists("started-2")
    });
    signal(&child, libc::SIGINT);
    let out = wait_output(child, Duration::from_secs(60));
    out.expect_code(130);
    assert!(leftover_containers(&test).is_empty(), "{}", out.stderr);
}

#[test]
fn a_missing_image_fails_before_anything_runs() {
    if !docker_ready() {
        return;
    }
    let test = Test::new().workflow(
        "missing",
        r#"version: 1
tasks:
  first:
    run: echo x >> .count/first
  boxed:
    needs: [first]
    runner: docker
    image: ccflow-test/does-not-exist:1
    run: "true"
"#,
    );
    let out = test.run_args(&["run", "missing"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("ccflow-test/does-not-exist:1"),
        "{}",
        out.stderr
    );
    assert_eq!(test.total_count(), 0, "nothing ran");
}
