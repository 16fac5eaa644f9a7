//! Secrets reach the task but never a log, an event or the record.

use crate::support::Test;

#[test]
fn secret_values_are_masked_in_logs_events_and_the_record() {
    let secret = "s3cr3t-Value-42";
    let yaml = r#"version: 1
name: sec
secrets: [MY_TOKEN]
tasks:
  leak:
    cache: false
    run: echo "token=$MY_TOKEN"; echo "err=$MY_TOKEN" >&2; test "$MY_TOKEN" = s3cr3t-Value-42 && echo x >> .count/leak
  fail:
    cache: false
    needs: [leak]
    run: echo "failing with $MY_TOKEN"; exit 1
"#;
    let test = Test::new()
        .workflow("sec", yaml)
        .args(["run", "sec", "--events", "-"])
        .env("MY_TOKEN", secret);
    let out = test.run();
    out.expect_code(1);
    assert_eq!(test.count("leak"), 1, "the task saw the secret's value");
    assert!(
        !out.stdout.contains(secret),
        "events leak the secret:\n{}",
        out.stdout
    );
    assert!(
        !out.stderr.contains(secret),
        "the terminal output leaks the secret:\n{}",
        out.stderr
    );
    // The failing log tail is shown on stderr, masked.
    assert!(
        out.stderr.contains("failing with ***"),
        "the failure tail is shown masked:\n{}",
        out.stderr
    );
    let record = test.last_run();
    let run_dir = test.path(&format!(
        ".ccflow/runs/{}",
        record["run_id"].as_str().expect("run id")
    ));
    let leak_log =
        std::fs::read_to_string(run_dir.join("logs").join("leak.log")).expect("log of `leak`");
    assert!(leak_log.contains("token=***"), "log: {leak_log:?}");
    assert!(leak_log.contains("err=***"), "log: {leak_log:?}");
    for entry in walk(&test.path(".ccflow")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "`{}` holds the secret",
            entry.display()
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
