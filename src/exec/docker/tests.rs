//! Tests of the Docker runner against the real Docker Engine, with the
//! `ccflow-test/busybox` image built by `.ci/docker-images.sh`.
//!
//! Without a reachable engine they fail under `CI=true` and skip otherwise.
//! Every test labels its containers with its own run id and asserts at the
//! end that none is left.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::*;

const IMAGE: &str = "ccflow-test/busybox:latest";

/// The fixtures are mounted read-only here in the containers.
const FIXTURES: &str = "/fixtures";

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docker")
}

/// Builds the test image once per test process.
fn ensure_image() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/docker-images.sh");
        let output = Command::new(&script)
            .output()
            .map_err(|error| format!("run {}: {error}", script.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(message) = ready {
        panic!("{message}");
    }
}

/// A connected runner with the test image present, or `None` (after printing
/// why) when there is no engine and `CI` is not `true`.
async fn runner() -> Option<DockerRunner> {
    match DockerRunner::connect().await {
        Ok(runner) => {
            ensure_image();
            Some(runner)
        }
        Err(error) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "docker is required under CI=true: {error}"
            );
            crate::errln!("skipping: docker unreachable: {error}");
            None
        }
    }
}

/// One test's temp dir, workspace and run id.
struct Fixture {
    runner: DockerRunner,
    dir: tempfile::TempDir,
    workspace: PathBuf,
    run_id: String,
}

impl Fixture {
    async fn new(name: &str) -> Option<Fixture> {
        let runner = runner().await?;
        let dir = tempfile::tempdir().expect("temp dir");
        let workspace = dir.path().join("workspace");
        fs_err::create_dir(&workspace).expect("create workspace");
        let run_id = format!(
            "test-{name}-{}-{:06x}",
            std::process::id(),
            fastrand::u32(..1 << 24)
        );
        Some(Fixture {
            runner,
            dir,
            workspace,
            run_id,
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("logs/task.log")
    }

    fn spec(&self, script: &str) -> ContainerSpec {
        let mut spec = ContainerSpec::new(
            IMAGE,
            vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
            &self.workspace,
            &self.run_id,
            self.log_path(),
        );
        spec.labels
            .insert(INSTANCE_LABEL.to_owned(), "test[0]".to_owned());
        spec.extra_mounts
            .push((fixtures_dir(), FIXTURES.to_owned(), true));
        spec.kill_grace = Duration::from_secs(2);
        spec
    }

    async fn run(&self, spec: ContainerSpec) -> (ContainerReport, String) {
        let report = self.runner.run(spec, CancellationToken::new(), None).await;
        (report, self.log())
    }

    fn log(&self) -> String {
        fs_err::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `docker ps -a --filter label=ccflow.run=<run id>` is empty.
    fn assert_no_containers(&self) {
        let output = Command::new("docker")
            .args(["ps", "-a", "-q", "--filter"])
            .arg(format!("label={RUN_LABEL}={}", self.run_id))
            .output()
            .expect("run docker ps");
        assert!(output.status.success(), "docker ps failed");
        let ids = String::from_utf8_lossy(&output.stdout);
        assert!(
            ids.trim().is_empty(),
            "containers left for run {}: {ids}",
            self.run_id
        );
    }
}

fn assert_gone(report: &ContainerReport) {
    let id = report
        .container_id
        .as_deref()
        .expect("a container was created");
    let status = Command::new("docker")
        .args(["container", "inspect", id])
        .output()
        .expect("run docker inspect")
        .status;
    assert!(!status.success(), "container {id} still exists");
}

fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

#[tokio::test]
async fn exit_codes_and_output_reach_the_log() {
    let Some(fixture) = Fixture::new("exit").await else {
        return;
    };

    let (report, log) = fixture
        .run(fixture.spec("echo to-stdout; echo to-stderr >&2; exit 0"))
        .await;
    assert_eq!(report.outcome, ContainerOutcome::Exited { code: 0 });
    assert!(log.contains("to-stdout\n"), "log: {log:?}");
    assert!(log.contains("to-stderr\n"), "log: {log:?}");
    assert_gone(&report);

    let (report, log) = fixture.run(fixture.spec("echo failing; exit 3")).await;
    assert_eq!(report.outcome, ContainerOutcome::Exited { code: 3 });
    assert_eq!(log, "failing\n");
    assert_gone(&report);

    // Containers that exit at once must not be missed by the wait.
    for _ in 0..5 {
        let mut spec = fixture.spec("");
        spec.command = vec!["true".to_owned()];
        let (report, _) = fixture.run(spec).await;
        assert_eq!(report.outcome, ContainerOutcome::Exited { code: 0 });
    }
    fixture.assert_no_containers();
}

#[tokio::test]
async fn env_is_passed_and_secrets_are_masked() {
    let Some(fixture) = Fixture::new("env").await else {
        return;
    };
    let mut spec = fixture
        .spec("echo \"greeting=$GREETING\"; echo \"token=$TOKEN\"; printf 'last %s' \"$TOKEN\"");
    spec.env = vec![
        ("GREETING".to_owned(), "hello world".to_owned()),
        ("TOKEN".to_owned(), "s3cr3t-value".to_owned()),
    ];
    spec.masks = vec!["s3cr3t-value".to_owned()];
    let last_line = Arc::new(Mutex::new(String::new()));
    let report = fixture
        .runner
        .run(spec, CancellationToken::new(), Some(Arc::clone(&last_line)))
        .await;
    let log = fixture.log();
    assert_eq!(report.outcome, ContainerOutcome::Exited { code: 0 });
    assert_eq!(log, "greeting=hello world\ntoken=***\nlast ***");
    assert_eq!(*last_line.lock().expect("lock"), "last ***");
    fixture.assert_no_containers();
}

#[tokio::test]
async fn workspace_files_belong_to_the_invoking_user_or_the_given_one() {
    use std::os::unix::fs::MetadataExt;
    let Some(fixture) = Fixture::new("owner").await else {
        return;
    };
    let (report, log) = fixture
        .run(fixture.spec("pwd; id -u; echo data > out.txt; mkdir made"))
        .await;
    assert_eq!(
        report.outcome,
        ContainerOutcome::Exited { code: 0 },
        "log: {log}"
    );
    assert_eq!(log, format!("/workspace\n{}\n", current_uid()));
    let file = fs_err::metadata(fixture.workspace.join("out.txt")).expect("out.txt written");
    assert_eq!(file.uid(), current_uid());
    let made = fs_err::metadata(fixture.workspace.join("made")).expect("made created");
    assert_eq!(made.uid(), current_uid());

    if current_uid() == 0 {
        // Root can hand the workspace to another uid and read the result.
        fs_err::set_permissions(
            &fixture.workspace,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod workspace");
        let mut spec = fixture.spec("echo data > other.txt");
        spec.user = Some("1234:1234".to_owned());
        let (report, log) = fixture.run(spec).await;
        assert_eq!(
            report.outcome,
            ContainerOutcome::Exited { code: 0 },
            "log: {log}"
        );
        let other =
            fs_err::metadata(fixture.workspace.join("other.txt")).expect("other.txt written");
        assert_eq!((other.uid(), other.gid()), (1234, 1234));
    }
    fixture.assert_no_containers();
}

#[tokio::test]
async fn network_is_none_unless_asked() {
    let Some(fixture) = Fixture::new("net").await else {
        return;
    };
    let probe = format!("sh {FIXTURES}/network-probe.sh");

    let (report, log) = fixture.run(fixture.spec(&probe)).await;
    assert_eq!(
        report.outcome,
        ContainerOutcome::Exited { code: 0 },
        "log: {log}"
    );
    assert!(log.contains("lo:"), "log: {log}");
    assert!(!log.contains("eth0"), "an interface besides lo: {log}");
    assert!(log.contains("NET=down"), "log: {log}");

    let mut spec = fixture.spec(&probe);
    spec.network = Some("bridge".to_owned());
    let (report, log) = fixture.run(spec).await;
    assert_eq!(
        report.outcome,
        ContainerOutcome::Exited { code: 0 },
        "log: {log}"
    );
    assert!(log.contains("eth0:"), "bridge without eth0: {log}");
    fixture.assert_no_containers();
}

#[tokio::test]
async fn host_paths_outside_the_workspace_are_invisible() {
    let Some(fixture) = Fixture::new("isolation").await else {
        return;
    };
    let marker = format!("ccflow-marker-{:08x}", fastrand::u32(..));
    // Beside the workspace (in its parent) and inside it, as a control.
    fs_err::write(fixture.dir.path().join(&marker), "outside").expect("write marker");
    fs_err::write(fixture.workspace.join(format!("{marker}.inside")), "inside")
        .expect("write marker");
    let script = format!("find / -name '{marker}*' 2>/dev/null; true");
    let (report, log) = fixture.run(fixture.spec(&script)).await;
    assert_eq!(report.outcome, ContainerOutcome::Exited { code: 0 });
    assert_eq!(log, format!("/workspace/{marker}.inside\n"));
    fixture.assert_no_containers();
}

#[tokio::test]
async fn exceeding_the_memory_limit_is_oom_killed() {
    let Some(fixture) = Fixture::new("oom").await else {
        return;
    };
    let mut spec = fixture.spec(&format!("sh {FIXTURES}/allocate.sh"));
    spec.memory = Some(parse_memory("32m").expect("valid size"));
    spec.cpus = Some(0.5);
    let (report, log) = fixture.run(spec).await;
    assert_eq!(report.outcome, ContainerOutcome::OomKilled, "log: {log}");
    assert!(!log.contains("allocated"), "log: {log}");
    assert_gone(&report);

    // The same script fits without the limit: the limit is what killed it.
    let (report, log) = fixture
        .run(fixture.spec(&format!("sh {FIXTURES}/allocate.sh")))
        .await;
    assert_eq!(
        report.outcome,
        ContainerOutcome::Exited { code: 0 },
        "log: {log}"
    );
    assert!(log.contains("allocated 104857600 bytes"), "log: {log}");
    fixture.assert_no_containers();
}

#[tokio::test]
async fn timeout_stops_with_sigterm_and_removes_the_container() {
    let Some(fixture) = Fixture::new("timeout").await else {
        return;
    };
    let mut spec = fixture.spec(&format!("sh {FIXTURES}/graceful.sh"));
    spec.timeout = Some(Duration::from_secs(1));
    let (report, log) = fixture.run(spec).await;
    assert_eq!(
        report.outcome,
        ContainerOutcome::TimedOut {
            after: Duration::from_secs(1)
        }
    );
    assert!(log.contains("got-term"), "SIGTERM not delivered: {log}");
    assert!(
        report.duration < Duration::from_secs(10),
        "took {:?}",
        report.duration
    );
    assert_gone(&report);

    // A command ignoring SIGTERM is killed after the grace.
    let mut spec = fixture.spec("trap '' TERM; sleep 30 & wait; sleep 30");
    spec.timeout = Some(Duration::from_millis(500));
    spec.kill_grace = Duration::from_millis(500);
    let (report, _) = fixture.run(spec).await;
    assert!(matches!(report.outcome, ContainerOutcome::TimedOut { .. }));
    assert!(
        report.duration < Duration::from_secs(10),
        "took {:?}",
        report.duration
    );
    assert_gone(&report);
    fixture.assert_no_containers();
}

#[tokio::test]
async fn cancel_stops_and_removes_the_container() {
    let Some(fixture) = Fixture::new("cancel").await else {
        return;
    };
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        trigger.cancel();
    });
    let report = fixture
        .runner
        .run(fixture.spec("echo started; sleep 30"), cancel.clone(), None)
        .await;
    assert_eq!(report.outcome, ContainerOutcome::Cancelled);
    assert!(
        report.duration < Duration::from_secs(10),
        "took {:?}",
        report.duration
    );
    assert!(fixture.log().contains("started"), "log: {}", fixture.log());
    assert_gone(&report);

    // Already cancelled: nothing is created.
    let report = fixture.runner.run(fixture.spec("true"), cancel, None).await;
    assert_eq!(report.outcome, ContainerOutcome::Cancelled);
    assert_eq!(report.container_id, None);
    fixture.assert_no_containers();
}

#[tokio::test]
async fn dropping_the_run_future_removes_the_container() {
    let Some(fixture) = Fixture::new("drop").await else {
        return;
    };
    let run = fixture
        .runner
        .run(fixture.spec("sleep 30"), CancellationToken::new(), None);
    let dropped = tokio::time::timeout(Duration::from_secs(1), run).await;
    assert!(dropped.is_err(), "the container should still be running");
    // The guard removes it in a spawned task.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let output = Command::new("docker")
            .args(["ps", "-a", "-q", "--filter"])
            .arg(format!("label={RUN_LABEL}={}", fixture.run_id))
            .output()
            .expect("docker ps");
        if output.stdout.is_empty() {
            break;
        }
    }
    fixture.assert_no_containers();
}

#[tokio::test]
async fn missing_mount_source_fails_before_creating() {
    let Some(fixture) = Fixture::new("mount").await else {
        return;
    };
    let mut spec = fixture.spec("true");
    let missing = fixture.dir.path().join("no-such-binary");
    spec.extra_mounts
        .push((missing.clone(), "/bin/claude".to_owned(), true));
    let (report, _) = fixture.run(spec).await;
    let ContainerOutcome::SetupFailed { message } = &report.outcome else {
        panic!("unexpected outcome {:?}", report.outcome)
    };
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert_eq!(report.container_id, None);

    // A missing image surfaces as an engine error, and nothing is left.
    let mut spec = fixture.spec("true");
    spec.image = "ccflow-test/does-not-exist:never".to_owned();
    let (report, _) = fixture.run(spec).await;
    assert!(
        matches!(&report.outcome, ContainerOutcome::EngineError { message } if message.contains("does-not-exist")),
        "{:?}",
        report.outcome
    );
    fixture.assert_no_containers();
}

#[tokio::test]
async fn image_id_resolves_present_images_and_names_missing_ones() {
    let Some(runner) = runner().await else { return };
    let id = runner
        .image_id(IMAGE, false)
        .await
        .expect("test image present");
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(runner.image_id(&id, false).await.expect("by id"), id);

    let error = runner
        .image_id("ccflow-test/does-not-exist:never", false)
        .await
        .expect_err("missing image");
    assert!(
        matches!(&error, DockerError::ImageMissing { image } if image == "ccflow-test/does-not-exist:never"),
        "{error:?}"
    );
    let hint = error.hint().expect("a hint");
    assert!(
        hint.contains("docker build") && hint.contains("pull: true"),
        "{hint}"
    );
}

#[tokio::test]
async fn remove_leftovers_removes_labelled_containers_except_the_given_run() {
    let Some(fixture) = Fixture::new("leftovers").await else {
        return;
    };
    let keep = format!("{}-keep", fixture.run_id);
    let stale = format!("{}-stale", fixture.run_id);
    let mut ids = Vec::new();
    for run in [&keep, &stale, &stale] {
        let mut spec = fixture.spec("sleep 30");
        spec.run_id = run.clone();
        let created = fixture
            .runner
            .docker
            .create_container(None, container_body(&spec))
            .await
            .expect("create");
        ids.push(created.id);
    }
    fixture
        .runner
        .docker
        .start_container(&ids[1], None)
        .await
        .expect("start");

    // Scoped to this test's runs: other tests (and other ccflow processes on
    // this engine) have containers too. `remove_leftovers` applies the same
    // function with only the `except_run` condition.
    let prefix = fixture.run_id.clone();
    let removed = fixture
        .runner
        .remove_labelled(|run| run.starts_with(&prefix) && run != keep)
        .await
        .expect("remove leftovers");
    assert_eq!(removed, 2);
    let remaining: Vec<String> = fixture
        .runner
        .docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&HashMap::from([(
                    "label",
                    vec![format!("{RUN_LABEL}={keep}")],
                )]))
                .build(),
        ))
        .await
        .expect("list")
        .into_iter()
        .filter_map(|container| container.id)
        .collect();
    assert_eq!(remaining, vec![ids[0].clone()]);

    let removed = fixture
        .runner
        .remove_labelled(|run| run == keep)
        .await
        .expect("remove kept");
    assert_eq!(removed, 1);
    for run in [&keep, &stale] {
        Fixture {
            run_id: run.clone(),
            ..fixture_clone(&fixture)
        }
        .assert_no_containers();
    }
}

fn fixture_clone(fixture: &Fixture) -> Fixture {
    Fixture {
        runner: fixture.runner.clone(),
        dir: tempfile::tempdir().expect("temp dir"),
        workspace: fixture.workspace.clone(),
        run_id: fixture.run_id.clone(),
    }
}

#[tokio::test]
async fn engine_info_reports_the_negotiated_version() {
    let Some(runner) = runner().await else { return };
    let info = runner.engine_info().await.expect("engine info");
    assert!(!info.server_version.is_empty() && info.server_version != "unknown");
    assert_eq!(info.os, "linux");
    let parse = |version: &str| -> (u32, u32) {
        let (major, minor) = version.split_once('.').expect("major.minor");
        (major.parse().expect("major"), minor.parse().expect("minor"))
    };
    assert!(
        parse(&info.negotiated_api_version) <= parse(&info.api_version),
        "{info:?}"
    );
}

#[tokio::test]
async fn unreachable_host_is_reported_with_a_hint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = format!("unix://{}/docker.sock", dir.path().display());
    let error = DockerRunner::connect_to(&host)
        .await
        .expect_err("no daemon there");
    assert!(
        matches!(&error, DockerError::Unreachable { host: reported, .. } if *reported == host),
        "{error:?}"
    );
    assert!(error.hint().expect("hint").contains("DOCKER_HOST"));
    assert!(error
        .to_string()
        .starts_with(&format!("connect to the Docker daemon at `{host}`")));

    for host in ["tcp://127.0.0.1:1", "ftp://example.invalid"] {
        let error = DockerRunner::connect_to(host).await.expect_err(host);
        assert!(
            matches!(&error, DockerError::Unreachable { host: reported, reason } if reported == host && !reason.is_empty()),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn pull_failure_names_the_image() {
    let Some(runner) = runner().await else { return };
    // Port 1 on loopback refuses at once: no registry is contacted.
    let image = "127.0.0.1:1/ccflow-test/absent:v1";
    let error = runner
        .image_id(image, true)
        .await
        .expect_err("nothing to pull from");
    assert!(
        matches!(&error, DockerError::Pull { image: named, .. } if named == image),
        "{error:?}"
    );
}

#[test]
fn parse_memory_accepts_docker_forms() {
    let cases: &[(&str, u64)] = &[
        ("1048576", 1_048_576),
        ("512m", 512 << 20),
        ("512M", 512 << 20),
        ("512mb", 512 << 20),
        ("2g", 2 << 30),
        ("1.5G", 3 << 29),
        ("256Mi", 256 << 20),
        ("256MiB", 256 << 20),
        ("64k", 64 << 10),
        ("1t", 1 << 40),
        ("100b", 100),
        (" 32m ", 32 << 20),
        ("0.5k", 512),
    ];
    for &(input, expected) in cases {
        assert_eq!(parse_memory(input).expect(input), expected, "{input}");
    }
    for input in [
        "",
        "m",
        "-1m",
        "1.2.3m",
        "12x",
        "1e3",
        "0",
        "0m",
        "inf",
        "NaN",
        ".",
        "99999999999999999999t",
    ] {
        let error = parse_memory(input).expect_err(input);
        assert!(
            matches!(&error, DockerError::InvalidMemory { value } if value == input),
            "{input}: {error:?}"
        );
        assert!(error.to_string().contains("`512m`"), "{error}");
    }
}

#[test]
fn masker_masks_secrets_split_across_chunks() {
    let mut masker = Masker::new(&[
        "secret".to_owned(),
        "secret-longer".to_owned(),
        String::new(),
    ]);
    let mut out = Vec::new();
    for chunk in ["a sec", "ret b se", "cret-lon", "ger c secre"] {
        out.extend(masker.push(chunk.as_bytes()));
    }
    out.extend(masker.finish());
    assert_eq!(
        String::from_utf8(out).expect("utf-8"),
        "a *** b *** c secre"
    );

    let mut plain = Masker::new(&[]);
    assert_eq!(plain.push(b"as is"), b"as is");
    assert!(plain.finish().is_empty());
}

#[test]
fn reference_without_tag_means_latest() {
    assert_eq!(reference_with_tag("busybox"), "busybox:latest");
    assert_eq!(
        reference_with_tag("localhost:5000/app"),
        "localhost:5000/app:latest"
    );
    assert_eq!(reference_with_tag("app:1.2"), "app:1.2");
    assert_eq!(reference_with_tag("app@sha256:abc"), "app@sha256:abc");
}

/// Figures, not a pass/fail bar: `cargo test --lib exec::docker::tests::bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: prints figures"]
async fn bench_trivial_containers_against_docker_run() {
    const COUNT: usize = 50;
    let Some(fixture) = Fixture::new("bench").await else {
        return;
    };

    let started = Instant::now();
    let mut handles = Vec::new();
    let queue = Arc::new(tokio::sync::Semaphore::new(2));
    for _ in 0..COUNT {
        let runner = fixture.runner.clone();
        let mut spec = fixture.spec("");
        spec.command = vec!["true".to_owned()];
        spec.extra_mounts.clear();
        spec.log_path = fixture
            .dir
            .path()
            .join(format!("logs/{}.log", fastrand::u64(..)));
        let queue = Arc::clone(&queue);
        handles.push(tokio::spawn(async move {
            let _permit = queue.acquire_owned().await.expect("semaphore");
            runner.run(spec, CancellationToken::new(), None).await
        }));
    }
    for handle in handles {
        let report = handle.await.expect("join");
        assert_eq!(report.outcome, ContainerOutcome::Exited { code: 0 });
    }
    let runner_ms = started.elapsed().as_secs_f64() * 1000.0 / COUNT as f64;

    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "seq {COUNT} | xargs -P2 -I{{}} docker run --rm --network none --label {RUN_LABEL}={} {IMAGE} true",
            fixture.run_id
        ))
        .status()
        .expect("run xargs");
    assert!(status.success());
    let cli_ms = started.elapsed().as_secs_f64() * 1000.0 / COUNT as f64;

    crate::errln!(
        "{COUNT} trivial containers at concurrency 2: DockerRunner::run {runner_ms:.0} ms/container, \
         `docker run --rm` (xargs -P2) {cli_ms:.0} ms/container"
    );
    fixture.assert_no_containers();
}

/// Regression: a following `logs` stream lost the last chunk of containers
/// that exit at once (Docker 20.10), and an attach with `logs=true`
/// duplicated the first line; the output must be exact.
#[tokio::test]
async fn final_output_of_fast_containers_is_not_lost() {
    let Some(fixture) = Fixture::new("tail").await else {
        return;
    };
    for round in 0..20 {
        let script = format!("echo first; printf 'tail-{round}'");
        let (report, log) = fixture.run(fixture.spec(&script)).await;
        assert_eq!(report.outcome, ContainerOutcome::Exited { code: 0 });
        assert_eq!(log, format!("first\ntail-{round}"));
    }
    fixture.assert_no_containers();
}
