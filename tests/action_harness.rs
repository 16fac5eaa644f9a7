//! Runs the GitHub Action (`action.yml`) end to end through the harness in
//! `tests/action/`: its real `run:` scripts under bash, the real `ccflow`
//! binary of this build (input `version: local`), real git repositories in
//! temp dirs, and emulated actions/cache and upload-artifact. The only
//! stand-in is `gh` (tests/action/fixtures/gh), since there is no GitHub
//! here; `git push` goes to a real bare repository.

mod action;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use action::runner::{ActionRun, CacheStorage, Conclusion, Outcome};

const INSTANCES: [&str; 4] = ["greet[alpha]", "greet[beta]", "greet[gamma]", "collect"];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=harness",
            "-c",
            "user.email=harness@example.test",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A temp folder holding the repositories, `HOME`, the cache storage, the
/// `PATH` folder with this build's `ccflow`, and the marker that an executed
/// input would create.
struct Sandbox {
    dir: tempfile::TempDir,
    /// Whether `/tmp/pwned` existed before (then it proves nothing).
    tmp_pwned_existed: bool,
}

impl Sandbox {
    fn new() -> Sandbox {
        let sandbox = Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
            tmp_pwned_existed: Path::new("/tmp/pwned").exists(),
        };
        for sub in ["bin", "home", "storage", "gh", "server/owner"] {
            std::fs::create_dir_all(sandbox.path(sub)).expect("sandbox folders");
        }
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ccflow"), sandbox.path("bin/ccflow"))
            .expect("ccflow on PATH");
        std::fs::copy(
            manifest_dir().join("tests/action/fixtures/gh"),
            sandbox.path("bin/gh"),
        )
        .expect("gh stand-in");
        std::fs::write(sandbox.path("home/sentinel"), "still here").expect("sentinel");
        git(
            &sandbox.path("server/owner"),
            &["init", "--quiet", "--bare", "repo.git"],
        );
        sandbox
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Text that would create the marker (or worse) if a shell ever ran it.
    fn payload(&self) -> String {
        let marker = self.path("pwned").display().to_string();
        format!(
            "$(touch /tmp/pwned) $(touch {marker}) `touch {marker}` \"; touch {marker}; rm -rf ~; \" '; touch {marker}; '"
        )
    }

    fn assert_not_executed(&self, outcome: &Outcome) {
        assert!(
            !self.path("pwned").exists(),
            "an input was executed as shell code\n{}",
            outcome.log
        );
        assert!(
            self.tmp_pwned_existed || !Path::new("/tmp/pwned").exists(),
            "an input was executed as shell code (`/tmp/pwned`)\n{}",
            outcome.log
        );
        assert!(
            self.path("home/sentinel").exists(),
            "HOME was wiped\n{}",
            outcome.log
        );
    }

    /// A git repository holding the fixture workflow, `words.txt` and a
    /// `.gitignore` for the shell outputs, all committed on `main`.
    fn repo(&self, name: &str, fixture: &str) -> PathBuf {
        let repo = self.path(name);
        std::fs::create_dir_all(repo.join(".claudecluster")).expect("repo folders");
        std::fs::copy(
            manifest_dir().join("tests/action/fixtures").join(fixture),
            repo.join(".claudecluster").join(fixture),
        )
        .expect("workflow");
        std::fs::write(repo.join("words.txt"), "alpha\nbeta\ngamma\n").expect("words.txt");
        std::fs::write(repo.join(".gitignore"), "out/\n").expect(".gitignore");
        git(&repo, &["init", "--quiet"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "--quiet", "-m", "fixture"]);
        repo
    }

    /// A fresh checkout of `from` (no `.ccflow/`, no ignored outputs).
    fn clone(&self, from: &Path, name: &str) -> PathBuf {
        git(
            self.dir.path(),
            &["clone", "--quiet", &from.display().to_string(), name],
        );
        self.path(name)
    }

    fn run(&self, workspace: &Path, temp: &str, inputs: &[(&str, &str)]) -> Outcome {
        self.run_with_env(workspace, temp, inputs, &[])
    }

    fn run_with_env(
        &self,
        workspace: &Path,
        temp: &str,
        inputs: &[(&str, &str)],
        job_env: &[(&str, &str)],
    ) -> Outcome {
        let github: BTreeMap<String, String> = [
            ("sha", git(workspace, &["rev-parse", "HEAD"])),
            ("repository", "owner/repo".to_string()),
            (
                "server_url",
                format!("file://{}", self.path("server").display()),
            ),
            ("ref_name", "main".to_string()),
            ("head_ref", String::new()),
            ("run_id", "4242".to_string()),
            ("event_name", "push".to_string()),
            ("action_repository", String::new()),
            ("token", "harness-token".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let run = ActionRun {
            action_dir: manifest_dir(),
            workspace: workspace.to_path_buf(),
            runner_temp: self.path(temp),
            cache_storage: self.path("storage"),
            home: self.path("home"),
            path_prefix: vec![self.path("bin")],
            inputs: inputs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            github,
            job_env: job_env
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .chain([(
                    "GH_STUB_DIR".to_string(),
                    self.path("gh").display().to_string(),
                )])
                .collect(),
        };
        run.execute()
            .unwrap_or_else(|error| panic!("the harness cannot run action.yml: {error}"))
    }

    fn cache_keys(&self) -> Vec<String> {
        CacheStorage {
            dir: self.path("storage"),
        }
        .keys()
    }
}

fn assert_counts(outcome: &Outcome, ran: usize, cached: usize) {
    let expected = [
        ("status", "success".to_string()),
        ("tasks-run", ran.to_string()),
        ("tasks-cached", cached.to_string()),
        ("tasks-failed", "0".to_string()),
        ("tokens", "0".to_string()),
    ];
    for (name, value) in expected {
        assert_eq!(
            outcome.output(name),
            value,
            "output `{name}`\n{}",
            outcome.log
        );
    }
    let cost: f64 = outcome
        .output("cost-usd")
        .parse()
        .unwrap_or_else(|_| panic!("cost-usd `{}` is a number", outcome.output("cost-usd")));
    assert!(cost.abs() < f64::EPSILON, "no agent, no cost: {cost}");
}

#[test]
fn runs_a_workflow_then_reuses_its_cache_in_fresh_checkouts() {
    let sandbox = Sandbox::new();
    let repo = sandbox.repo("first", "hello.yaml");
    let payload = sandbox.payload();
    let vars = format!("# comment lines and blank lines are skipped\n\n  greeting={payload}  \n");
    let inputs = [
        ("workflow", "hello"),
        ("vars", vars.as_str()),
        ("version", "local"),
        ("args", "--jobs 2\n--keep-going"),
    ];

    let first = sandbox.run(&repo, "temp-1", &inputs);
    assert!(!first.failed, "the first run failed\n{}", first.log);
    assert_counts(&first, 4, 0);
    let run_id = first.output("run-id");
    let run_dir = repo.join(".ccflow/runs").join(run_id);
    assert!(
        !run_id.is_empty() && run_dir.join("run.json").is_file(),
        "run-id `{run_id}` names a run record\n{}",
        first.log
    );
    assert!(
        first
            .summary
            .contains("| instance | status | duration | cache | tokens | cost |"),
        "summary table:\n{}",
        first.summary
    );
    for instance in INSTANCES {
        assert!(
            first.summary.contains(&format!("| `{instance}` | ok |")),
            "`{instance}` in the summary:\n{}",
            first.summary
        );
    }
    assert_eq!(
        first.artifacts.len(),
        1,
        "one artifact: {:?}",
        first.artifacts
    );
    assert_eq!(first.artifacts[0].name, format!("ccflow-run-{run_id}"));
    assert_eq!(
        first.artifacts[0].path.canonicalize().ok(),
        run_dir.canonicalize().ok()
    );
    // The variable reached the task as text, shell-quoted by ccflow.
    let greeting = std::fs::read_to_string(repo.join("out/alpha.txt")).expect("out/alpha.txt");
    assert_eq!(greeting, format!("{payload} alpha\n"));
    let keys = sandbox.cache_keys();
    let first_sha = git(&repo, &["rev-parse", "HEAD"]);
    assert_eq!(
        keys.len(),
        1,
        "one cache entry saved: {keys:?}\n{}",
        first.log
    );
    assert!(
        keys[0].starts_with("ccflow-v1-Linux-hello-") && keys[0].ends_with(&first_sha),
        "cache key `{}`",
        keys[0]
    );
    sandbox.assert_not_executed(&first);

    // A later commit, in a fresh checkout: the cache comes back through the
    // restore-keys prefix, and every instance is a hit.
    let second_repo = sandbox.clone(&repo, "second");
    std::fs::write(second_repo.join("notes.md"), "not an input of any task\n").expect("notes.md");
    git(&second_repo, &["add", "notes.md"]);
    git(
        &second_repo,
        &["commit", "--quiet", "-m", "unrelated change"],
    );
    let second = sandbox.run(&second_repo, "temp-2", &inputs);
    assert!(!second.failed, "the second run failed\n{}", second.log);
    let restore = second.step("cache-restore");
    assert_eq!(
        restore.outputs.get("cache-hit").map(String::as_str),
        Some("false"),
        "not an exact hit"
    );
    assert_eq!(
        restore.outputs.get("cache-matched-key"),
        Some(&keys[0]),
        "restored from the first run's entry"
    );
    assert_counts(&second, 0, 4);
    for instance in INSTANCES {
        assert!(
            second
                .summary
                .contains(&format!("| `{instance}` | cached |")),
            "`{instance}` cached in the summary:\n{}",
            second.summary
        );
    }
    let collected = std::fs::read_to_string(second_repo.join("out/all.txt"))
        .expect("cached outputs are restored");
    assert_eq!(collected.lines().count(), 3);
    let keys = sandbox.cache_keys();
    assert_eq!(
        keys.len(),
        2,
        "the new commit saved its own entry: {keys:?}"
    );
    assert!(keys[1].ends_with(&git(&second_repo, &["rev-parse", "HEAD"])));

    // A re-run of the same commit hits its exact key and saves nothing.
    let third_repo = sandbox.clone(&second_repo, "third");
    let third = sandbox.run(&third_repo, "temp-3", &inputs);
    assert!(!third.failed, "the third run failed\n{}", third.log);
    assert_eq!(
        third
            .step("cache-restore")
            .outputs
            .get("cache-hit")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(third.step("cache-save").conclusion, Conclusion::Skipped);
    assert_counts(&third, 0, 4);
    assert_eq!(sandbox.cache_keys().len(), 2);
    sandbox.assert_not_executed(&third);
}

#[test]
fn inputs_are_never_executed_as_shell() {
    let sandbox = Sandbox::new();
    let repo = sandbox.repo("repo", "hello.yaml");
    let payload = sandbox.payload();
    let inputs = [
        ("workflow", payload.as_str()),
        ("args", payload.as_str()),
        ("anthropic-api-key", payload.as_str()),
        ("pr-title", payload.as_str()),
        ("version", "local"),
    ];
    let outcome = sandbox.run(&repo, "temp", &inputs);
    assert!(
        outcome.failed,
        "ccflow rejects the arguments\n{}",
        outcome.log
    );
    assert_eq!(outcome.step("run").conclusion, Conclusion::Failure);
    assert_eq!(
        outcome.output("status"),
        "error",
        "ccflow did not run the workflow\n{}",
        outcome.log
    );
    assert_eq!(outcome.output("run-id"), "");
    assert!(
        outcome.summary.contains("ccflow did not run the workflow"),
        "the job summary says so: {}",
        outcome.summary
    );
    assert_eq!(outcome.step("cache-save").conclusion, Conclusion::Skipped);
    assert_eq!(outcome.step("upload").conclusion, Conclusion::Skipped);
    assert_eq!(outcome.step("pr").conclusion, Conclusion::Skipped);
    sandbox.assert_not_executed(&outcome);

    // A `vars` line without `=` is refused before ccflow runs, by line number.
    let bad_vars = format!("greeting=ok\n{payload}\n");
    let outcome = sandbox.run(
        &repo,
        "temp-vars",
        &[
            ("workflow", "hello"),
            ("vars", bad_vars.as_str()),
            ("version", "local"),
        ],
    );
    assert!(outcome.failed);
    assert!(
        outcome
            .log
            .contains("input `vars`, line 2: expected `name=value`"),
        "{}",
        outcome.log
    );
    assert_eq!(outcome.output("status"), "error");
    sandbox.assert_not_executed(&outcome);
}

#[test]
fn create_pr_pushes_the_changes_and_opens_a_pull_request() {
    let sandbox = Sandbox::new();
    let repo = sandbox.repo("repo", "edit.yaml");
    let title = format!("ccflow: {}", sandbox.payload());
    let inputs = [
        ("workflow", "edit"),
        ("version", "local"),
        ("cache", "false"),
        ("create-pr", "true"),
        ("pr-title", title.as_str()),
    ];
    let outcome = sandbox.run(&repo, "temp", &inputs);
    assert!(!outcome.failed, "the run failed\n{}", outcome.log);
    assert_eq!(
        outcome.step("cache-restore").conclusion,
        Conclusion::Skipped,
        "cache: false"
    );
    assert_eq!(
        outcome.output("pr-url"),
        "https://github.test/owner/repo/pull/7"
    );

    let branch = format!("ccflow/{}", outcome.output("run-id"));
    let remote = sandbox.path("server/owner/repo.git");
    assert_eq!(
        git(&remote, &["log", "-1", "--format=%s", &branch]),
        title,
        "the commit message is the title, as text"
    );
    assert_eq!(
        git(
            &remote,
            &["diff-tree", "--no-commit-id", "--name-only", "-r", &branch]
        ),
        "words.txt",
        "only the task's change, not `.ccflow/`"
    );
    assert_eq!(
        git(&remote, &["show", &format!("{branch}:words.txt")]),
        "alpha\nbeta\ngamma\nedited"
    );

    let args = std::fs::read_to_string(sandbox.path("gh/args")).expect("gh pr create ran");
    let args: Vec<&str> = args.split('\0').collect();
    for pair in [
        ["--repo", "owner/repo"],
        ["--base", "main"],
        ["--head", branch.as_str()],
        ["--title", title.as_str()],
    ] {
        assert!(
            args.windows(2).any(|w| w == pair),
            "`gh pr create` got {pair:?}: {args:?}"
        );
    }
    let body = std::fs::read_to_string(sandbox.path("gh/body.md")).expect("the body file");
    assert!(
        body.contains("| `edit` | succeeded | 0 | $0.0000 |"),
        "every instance with its status, tokens and cost:\n{body}"
    );
    assert!(
        body.contains(&format!("run `{}`", outcome.output("run-id"))),
        "{body}"
    );
    sandbox.assert_not_executed(&outcome);

    // Nothing to propose: no branch, no pull request, an empty pr-url.
    std::fs::remove_file(sandbox.path("gh/args")).expect("reset the gh record");
    let quiet = sandbox.repo("quiet", "hello.yaml");
    let outcome = sandbox.run(
        &quiet,
        "temp-quiet",
        &[
            ("workflow", "hello"),
            ("version", "local"),
            ("cache", "false"),
            ("create-pr", "true"),
        ],
    );
    assert!(!outcome.failed, "{}", outcome.log);
    assert_eq!(outcome.step("pr").conclusion, Conclusion::Success);
    assert_eq!(outcome.output("pr-url"), "");
    assert!(
        !sandbox.path("gh/args").exists(),
        "no pull request without changes"
    );
}

#[test]
fn the_api_key_reaches_the_declared_secret_and_is_masked() {
    let sandbox = Sandbox::new();
    let repo = sandbox.repo("repo", "secret.yaml");
    let probe = |outcome: &Outcome| {
        assert!(!outcome.failed, "{}", outcome.log);
        std::fs::read_to_string(repo.join("out/probe.txt")).expect("out/probe.txt")
    };
    let inputs = [
        ("workflow", "secret"),
        ("version", "local"),
        ("anthropic-api-key", "sk-harness-123"),
    ];
    let outcome = sandbox.run(&repo, "temp-input", &inputs);
    assert_eq!(probe(&outcome), "match\n");
    assert!(
        outcome.log.contains("::add-mask::sk-harness-123\n"),
        "{}",
        outcome.log
    );

    // Without the input, a key from the job's `env:` still gets through.
    let outcome = sandbox.run_with_env(
        &repo,
        "temp-env",
        &[("workflow", "secret"), ("version", "local")],
        &[("ANTHROPIC_API_KEY", "sk-harness-123")],
    );
    assert_eq!(probe(&outcome), "match\n");
}
