//! The `docker run` command line of containerized agent sessions, and where
//! their `claude` comes from. Running sessions in real containers is tested
//! end to end in `tests/docker_agents.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;

fn session() -> ContainerSession {
    let mut labels = BTreeMap::new();
    labels.insert(RUN_LABEL.to_owned(), "20260101-abc".to_owned());
    labels.insert(INSTANCE_LABEL.to_owned(), "refactor[a.rs]".to_owned());
    ContainerSession {
        name: "ccflow-agent-x-1".into(),
        image: "sha256:feed".into(),
        claude: PathBuf::from("/opt/claude/bin/claude"),
        claude_args: vec!["-p".into(), "--output-format".into(), "stream-json".into()],
        worktree: PathBuf::from("/repo/.ccflow/worktrees/r/3"),
        config_dir: None,
        env: vec![
            ("ANTHROPIC_API_KEY".into(), "sk-secret".into()),
            ("ANTHROPIC_BASE_URL".into(), "http://127.0.0.1:9".into()),
            (
                "CLAUDE_CONFIG_DIR".into(),
                "/repo/.ccflow/runs/r/agents/x.config".into(),
            ),
            ("DOCKER_HOST".into(), "tcp://inner:2375".into()),
            ("HOME".into(), "/home/me".into()),
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("TMPDIR".into(), "/var/tmp/me".into()),
        ],
        network: "host".into(),
        user: "1000:1000".into(),
        cpus: Some(1.5),
        memory: Some(536_870_912),
        labels,
    }
}

/// The value following `flag` each time it occurs.
fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn docker_args_mount_the_worktree_and_the_host_claude_only() {
    let args = session().docker_args();
    assert_eq!(&args[..4], ["run", "--interactive", "--rm", "--name"]);
    assert_eq!(
        values(&args, "--mount"),
        [
            "type=bind,source=/repo/.ccflow/worktrees/r/3,target=/workspace",
            "type=bind,source=/opt/claude/bin/claude,target=/usr/local/bin/claude,readonly",
        ]
    );
    assert_eq!(values(&args, "--workdir"), ["/workspace"]);
    assert_eq!(values(&args, "--network"), ["host"]);
    assert_eq!(values(&args, "--user"), ["1000:1000"]);
    assert_eq!(values(&args, "--cpus"), ["1.5"]);
    assert_eq!(values(&args, "--memory"), ["536870912"]);
    assert_eq!(
        values(&args, "--label"),
        ["ccflow.instance=refactor[a.rs]", "ccflow.run=20260101-abc"]
    );
    // The image, then claude's own arguments, unchanged, at the end.
    let image_at = args.iter().position(|a| a == "sha256:feed").expect("image");
    assert_eq!(
        args[image_at - 2..image_at],
        ["--entrypoint", "/usr/local/bin/claude"]
    );
    assert_eq!(
        args[image_at + 1..],
        ["-p", "--output-format", "stream-json"]
    );
}

#[test]
fn secrets_are_passed_by_name_never_as_values() {
    let session = session();
    let args = session.docker_args();
    assert!(!args.iter().any(|a| a.contains("sk-secret")), "{args:?}");
    assert_eq!(
        values(&args, "--env"),
        [
            "HOME=/tmp",
            "CLAUDE_CONFIG_DIR=/tmp/.claude",
            // The client's own setting cannot be passed by name.
            "DOCKER_HOST=tcp://inner:2375",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
        ]
    );
    let client: BTreeMap<String, String> = session
        .client_env("unix:///run/docker.sock")
        .into_iter()
        .collect();
    assert_eq!(
        client.get("ANTHROPIC_API_KEY").map(String::as_str),
        Some("sk-secret")
    );
    assert_eq!(
        client.get("DOCKER_HOST").map(String::as_str),
        Some("unix:///run/docker.sock")
    );
    assert_eq!(client.get("HOME").map(String::as_str), Some("/home/me"));
    assert_eq!(
        client.get("PATH").map(String::as_str),
        Some("/usr/bin:/bin")
    );
    assert!(
        !client.contains_key("TMPDIR") && !client.contains_key("CLAUDE_CONFIG_DIR"),
        "{client:?}"
    );
}

#[test]
fn image_claude_is_not_mounted_and_persisted_sessions_mount_their_config() {
    let mut session = session();
    session.claude = PathBuf::from("claude");
    session.config_dir = Some(PathBuf::from("/runs/x, \"odd\".config"));
    session.network = "none".into();
    session.cpus = None;
    session.memory = None;
    let args = session.docker_args();
    assert_eq!(
        values(&args, "--mount"),
        [
            "type=bind,source=/repo/.ccflow/worktrees/r/3,target=/workspace",
            "type=bind,\"source=/runs/x, \"\"odd\"\".config\",target=/ccflow/config",
        ]
    );
    assert_eq!(values(&args, "--entrypoint"), ["claude"]);
    assert!(values(&args, "--env").contains(&"CLAUDE_CONFIG_DIR=/ccflow/config"));
    assert_eq!(values(&args, "--network"), ["none"]);
    assert!(values(&args, "--cpus").is_empty() && values(&args, "--memory").is_empty());
}

#[test]
fn locate_claude_in_a_container_defers_to_the_image_unless_given_a_path() {
    let (binary, version) = locate_claude(Runner::Docker, None).expect("no lookup on the host");
    assert_eq!(binary, PathBuf::from("claude"));
    assert_eq!(version, "`claude` of the image");
    let (binary, _) =
        locate_claude(Runner::Docker, Some("claude-beta")).expect("no lookup on the host");
    assert_eq!(binary, PathBuf::from("claude-beta"));
    // A path is a host binary, and must exist.
    let missing = locate_claude(Runner::Docker, Some("/nonexistent/claude"));
    assert!(missing.is_err(), "{missing:?}");
}

#[test]
fn container_names_are_valid_and_unique() {
    let a = container_name("2026-01-01T00:00:00Z/ü");
    let b = container_name("2026-01-01T00:00:00Z/ü");
    assert_ne!(a, b);
    assert!(a.starts_with("ccflow-agent-2026-01-01T00_00_00Z__-"), "{a}");
    assert!(
        a.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
        "{a}"
    );
}
