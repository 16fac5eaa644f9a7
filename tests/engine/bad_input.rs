//! Bad input: unknown tasks, `-j 0`, missing workdir, unknown command,
//! huge output.

use crate::support::{assert_gone, instance, pids_in, Test};

const SIMPLE: &str = r#"version: 1
name: simple
tasks:
  build:
    run: echo x >> .count/build
  test:
    needs: [build]
    run: echo x >> .count/test
"#;

#[test]
fn unknown_task_is_a_usage_error_with_did_you_mean() {
    let test = Test::new().workflow("simple", SIMPLE);
    let out = test.run_args(&["run", "simple", "--task", "nope"]);
    out.expect_code(2);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);
    let typo = test.run_args(&["run", "simple", "--task", "tset"]);
    typo.expect_code(2);
    assert!(
        typo.stderr.contains("did you mean `test`"),
        "{}",
        typo.stderr
    );
    let rerun = test.run_args(&["run", "simple", "--rerun", "biuld"]);
    rerun.expect_code(2);
    assert!(
        rerun.stderr.contains("did you mean `build`"),
        "{}",
        rerun.stderr
    );
    assert_eq!(test.total_count(), 0, "nothing ran");
}

#[test]
fn zero_jobs_is_a_usage_error() {
    let test = Test::new().workflow("simple", SIMPLE);
    let out = test.run_args(&["run", "simple", "-j", "0"]);
    out.expect_code(2);
    assert!(out.stderr.contains("-j 0"), "{}", out.stderr);
    assert_eq!(test.total_count(), 0);
}

#[test]
fn missing_workdir_fails_with_a_clear_message() {
    let yaml = r#"version: 1
name: wd
tasks:
  t:
    workdir: no/such/dir
    run: "true"
"#;
    let test = Test::new().workflow("wd", yaml).args(["run", "wd"]);
    let out = test.run();
    out.expect_code(1);
    let record = test.last_run();
    let message = instance(&record, "t")["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        message.contains("no/such/dir"),
        "the message names the workdir: {message:?}"
    );
    assert!(out.stderr.contains("no/such/dir"), "{}", out.stderr);
}

#[test]
fn command_not_found_fails_saying_so() {
    let yaml = r#"version: 1
name: nf
tasks:
  direct:
    run: definitely-not-a-command-xyz --flag
  shell:
    run: echo hi | definitely-not-a-command-xyz
"#;
    let test = Test::new()
        .workflow("nf", yaml)
        .args(["run", "nf", "--keep-going"]);
    test.run().expect_code(1);
    let record = test.last_run();
    for id in ["direct", "shell"] {
        let i = instance(&record, id);
        assert_eq!(i["status"], "failed");
        let message = i["message"].as_str().unwrap_or("").to_owned();
        assert!(message.contains("not found"), "`{id}`: {message:?}");
    }
}

#[test]
fn gigabyte_of_output_completes_with_a_truncated_log() {
    let yaml = r#"version: 1
name: loud
tasks:
  loud:
    cache: false
    run: mkdir -p pids; echo $$ > pids/shell; yes | head -c 1000000000; echo x >> .count/loud
"#;
    let test = Test::new()
        .workflow("loud", yaml)
        .args(["run", "loud"])
        .env("CCFLOW_LOG_LIMIT", "100000");
    test.run().ok();
    assert_eq!(test.count("loud"), 1);
    let record = test.last_run();
    let run_dir = test.path(&format!(
        ".ccflow/runs/{}",
        record["run_id"].as_str().expect("run id")
    ));
    let log = std::fs::metadata(run_dir.join("logs/loud.log"))
        .expect("log")
        .len();
    assert!(
        log <= 200_000,
        "the log is truncated near the limit: {log} bytes"
    );
    assert!(
        log >= 50_000,
        "the log keeps output up to the limit: {log} bytes"
    );
    assert_gone(&pids_in(&test, &["pids/shell"]));
}

/// Two instances writing one file at the same time race (one `sed -i`
/// loses the other's edit), so the workflow is rejected before anything
/// runs, at the line of the second writer's `outputs`.
#[test]
fn two_instances_writing_one_file_at_once_are_rejected_before_running() {
    let yaml = r#"version: 1
name: shared
tasks:
  upper:
    outputs: [notes.txt]
    run: echo x >> .count/upper && tr a-z A-Z < notes.txt > t && mv t notes.txt
  number:
    outputs: ["./notes.txt"]
    run: echo x >> .count/number && nl notes.txt > t && mv t notes.txt
  summary:
    for_each: { files: "src/**/*.rs" }
    outputs: ["docs/{{ item.stem }}.md"]
    run: echo x >> .count/summary && mkdir -p docs && echo {{ item }} > docs/{{ item.stem }}.md
"#;
    let test = Test::new()
        .workflow("shared", yaml)
        .file("notes.txt", "hello\n")
        .file("src/a/mod.rs", "")
        .file("src/b/mod.rs", "")
        .file("src/lib.rs", "");
    for command in ["run", "validate", "plan"] {
        let out = test.run_args(&[command, "shared"]);
        out.expect_code(2);
        assert!(
            out.stderr.contains(
                "output `notes.txt` is written by both `upper` and `number`, \
                 which may run at the same time"
            ),
            "{command}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("shared.yaml:8:5") && out.stderr.contains("needs: [upper]"),
            "{command}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(
                "output `docs/mod.md` is written by both `summary[src/a/mod.rs]` \
                 and `summary[src/b/mod.rs]`"
            ) && out.stderr.contains("not just its stem"),
            "{command}: {}",
            out.stderr
        );
    }
    assert_eq!(test.total_count(), 0, "nothing ran");
    assert_eq!(test.read("notes.txt"), "hello\n");
    // Ordered by `needs`, the same writers are a pipeline, and items with
    // distinct outputs are fine.
    let fixed = yaml
        .replace("  number:\n", "  number:\n    needs: [upper]\n")
        .replace("{{ item.stem }}", "{{ item.path | replace('/', '-') }}");
    test.write(".claudecluster/shared.yaml", &fixed);
    test.run_args(&["run", "shared"]).ok();
    assert_eq!(test.read("notes.txt"), "     1\tHELLO\n");
    assert_eq!(test.count("summary"), 3);
}
