//! Agent sessions in containers: an agent task with `runner: docker` runs its
//! `claude` session inside the task's image (SPEC §4, §5).
//!
//! The session's process is the `docker` CLI (`docker run -i --rm ...`), so
//! [`run_session`] keeps doing what it does for a local CLI: it writes the
//! prompt to the client's stdin, reads stream-json from its stdout, and
//! supervises and kills it. The client only relays; the container is what
//! must not outlive the session, so after `run_session` returns, whatever the
//! outcome, the container is force-removed by name through the engine API
//! (a killed client leaves a running container behind), and a cancel removes
//! it at once (`claude` as the container's PID 1 may ignore the SIGTERM the
//! client forwards, which would cost the whole kill grace).
//!
//! What the container sees of the host: the agent's worktree at `/workspace`
//! (read-write, the workdir), the `claude` binary when `agent.command` names
//! a host path (read-only at [`CONTAINER_CLAUDE`]; otherwise `claude` comes
//! from the image's `PATH`), and, only for sessions that persist (`verify`
//! resumes them), the instance's private config dir. Environment values reach
//! the container as `-e NAME` (the client passes its own value), never on a
//! command line where `ps` would show an API key.
//!
//! Not here: worktrees, diffs, retries, verification (`agent_task` owns them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::agent::{
    claude_version, find_claude, run_session, AgentError, SessionOutcome, SessionSpec,
    SessionStatus,
};
use crate::workflow::raw::Runner;
use crate::workflow::Task;

use super::docker::{DockerRunner, INSTANCE_LABEL, RUN_LABEL, WORKSPACE_TARGET};
use super::instance::RunShared;

/// Where a host `claude` binary is mounted (read-only) in the container.
pub const CONTAINER_CLAUDE: &str = "/usr/local/bin/claude";
/// `HOME` in the container: writable in any image, and not the caller's.
pub const CONTAINER_HOME: &str = "/tmp";
/// `CLAUDE_CONFIG_DIR` of a session that is not kept (gone with the container).
pub const EPHEMERAL_CONFIG_DIR: &str = "/tmp/.claude";
/// Where the instance's private config dir is mounted for sessions that are
/// kept, so a `verify` round can `--resume` them in a later container.
pub const PERSISTENT_CONFIG_DIR: &str = "/ccflow/config";
/// The network of agent containers that name none: the API must be reachable,
/// including an `ANTHROPIC_BASE_URL` on the host's loopback.
pub const DEFAULT_AGENT_NETWORK: &str = "host";

/// Session variables the container does not get: they name host paths or
/// the host's search path, meaningless (or harmful) inside an image.
const HOST_ONLY: [&str; 4] = ["PATH", "HOME", "TMPDIR", "CLAUDE_CONFIG_DIR"];
/// The `docker` CLI's own settings, taken from ccflow's environment. A
/// session variable of the same name cannot be passed by name (the client's
/// value would win), so it goes as `NAME=VALUE`.
const CLIENT_SETTINGS: [&str; 6] = [
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "DOCKER_API_VERSION",
    "DOCKER_CONTEXT",
];
/// `docker run`'s own failures: 125 (the daemon refused), 126 (the
/// entrypoint cannot run), 127 (the entrypoint is not in the image).
const DOCKER_RUN_FAILURES: std::ops::RangeInclusive<i32> = 125..=127;

/// Finds the `claude` an agent task runs and its version (part of the key).
///
/// Local runner: [`find_claude`] and [`claude_version`]. Docker runner: an
/// `agent.command` holding a `/` is a host binary, mounted into the
/// container (its absolute path and `--version` are returned); otherwise the
/// command (default `claude`) is looked up on the image's `PATH` when the
/// container starts, the returned path is that bare name, and the version
/// is left to the image id, which the key already holds. `CCFLOW_CLAUDE`
/// names a host binary for local sessions and is not used in containers.
///
/// # Errors
/// The binary is missing or `--version` fails.
pub fn locate_claude(
    runner: Runner,
    command: Option<&str>,
) -> Result<(PathBuf, String), AgentError> {
    match (runner, command) {
        (Runner::Docker, Some(command)) if command.contains('/') => {
            let binary = find_claude(Some(command))?;
            // Mount sources must be absolute; a relative command is relative
            // to where ccflow runs, as for local sessions.
            let binary = std::path::absolute(&binary).unwrap_or(binary);
            let version = claude_version(&binary)?;
            Ok((binary, version))
        }
        (Runner::Docker, command) => {
            let name = command.unwrap_or("claude");
            Ok((PathBuf::from(name), format!("`{name}` of the image")))
        }
        (Runner::Local, command) => {
            let binary = find_claude(command)?;
            let version = claude_version(&binary)?;
            Ok((binary, version))
        }
    }
}

/// One containerized session, before it runs: everything `docker run` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSession {
    /// The container's name (unique; how it is removed afterwards).
    pub name: String,
    /// The image, preferably its id.
    pub image: String,
    /// An absolute host path (mounted) or a name on the image's `PATH`.
    pub claude: PathBuf,
    /// `claude`'s arguments.
    pub claude_args: Vec<String>,
    /// The agent's worktree, mounted at `/workspace`.
    pub worktree: PathBuf,
    /// The instance's private config dir, mounted when the session persists.
    pub config_dir: Option<PathBuf>,
    /// The session's environment (host values; see [`HOST_ONLY`]).
    pub env: Vec<(String, String)>,
    /// `--network`.
    pub network: String,
    /// `--user`, `uid:gid`.
    pub user: String,
    /// `--cpus`.
    pub cpus: Option<f64>,
    /// `--memory`, in bytes.
    pub memory: Option<u64>,
    /// `--label`s, `ccflow.run` and `ccflow.instance` among them.
    pub labels: BTreeMap<String, String>,
}

impl ContainerSession {
    /// The container's path of `claude` and the mount that puts it there.
    fn claude_in_container(&self) -> (String, Option<String>) {
        if self.claude.is_absolute() {
            (
                CONTAINER_CLAUDE.to_owned(),
                Some(bind(&self.claude, CONTAINER_CLAUDE, true)),
            )
        } else {
            (self.claude.display().to_string(), None)
        }
    }

    /// The names passed by name (`-e NAME`), and the literal `NAME=VALUE`s.
    fn container_env(&self) -> (Vec<String>, Vec<String>) {
        let config_dir = if self.config_dir.is_some() {
            PERSISTENT_CONFIG_DIR
        } else {
            EPHEMERAL_CONFIG_DIR
        };
        let mut literal = vec![
            format!("HOME={CONTAINER_HOME}"),
            format!("CLAUDE_CONFIG_DIR={config_dir}"),
        ];
        let mut by_name = Vec::new();
        for (name, value) in &self.env {
            if HOST_ONLY.contains(&name.as_str()) || name.is_empty() || name.contains('=') {
                continue;
            }
            if CLIENT_SETTINGS.contains(&name.as_str()) {
                literal.push(format!("{name}={value}"));
            } else {
                by_name.push(name.clone());
            }
        }
        by_name.sort();
        by_name.dedup();
        (by_name, literal)
    }

    /// `docker`'s arguments: `run -i --rm ... IMAGE ARGS...`.
    #[must_use]
    pub fn docker_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["run", "--interactive", "--rm", "--name"]
            .map(str::to_owned)
            .to_vec();
        args.push(self.name.clone());
        for (key, value) in &self.labels {
            args.push("--label".to_owned());
            args.push(format!("{key}={value}"));
        }
        // The transcript is ccflow's; a second copy in the engine's log
        // files would only grow the disk.
        args.extend(["--log-driver", "none"].map(str::to_owned));
        args.push("--mount".to_owned());
        args.push(bind(&self.worktree, WORKSPACE_TARGET, false));
        args.push("--workdir".to_owned());
        args.push(WORKSPACE_TARGET.to_owned());
        let (claude, claude_mount) = self.claude_in_container();
        if let Some(mount) = claude_mount {
            args.push("--mount".to_owned());
            args.push(mount);
        }
        if let Some(dir) = &self.config_dir {
            args.push("--mount".to_owned());
            args.push(bind(dir, PERSISTENT_CONFIG_DIR, false));
        }
        args.extend([
            "--network".to_owned(),
            self.network.clone(),
            "--user".to_owned(),
            self.user.clone(),
        ]);
        if let Some(cpus) = self.cpus {
            args.extend(["--cpus".to_owned(), cpus.to_string()]);
        }
        if let Some(memory) = self.memory {
            args.extend(["--memory".to_owned(), memory.to_string()]);
        }
        let (by_name, literal) = self.container_env();
        for entry in literal.into_iter().chain(by_name) {
            args.push("--env".to_owned());
            args.push(entry);
        }
        // The image's entrypoint, if any, is not what the session runs.
        args.extend(["--entrypoint".to_owned(), claude, self.image.clone()]);
        args.extend(self.claude_args.iter().cloned());
        args
    }

    /// The `docker` client's environment: the caller's `PATH` and `HOME` (the
    /// CLI's config), the engine ccflow talks to, the CLI's own settings,
    /// and the value of every variable passed by name.
    #[must_use]
    pub fn client_env(&self, docker_host: &str) -> Vec<(String, String)> {
        let session: BTreeMap<&str, &str> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for name in ["PATH", "HOME"] {
            let value = session
                .get(name)
                .map(|v| (*v).to_owned())
                .or_else(|| std::env::var(name).ok());
            if let Some(value) = value {
                env.insert(name.to_owned(), value);
            }
        }
        for name in CLIENT_SETTINGS {
            if let Ok(value) = std::env::var(name) {
                env.insert(name.to_owned(), value);
            }
        }
        // The engine bollard resolved the images on, whatever the CLI's
        // current context says; DOCKER_HOST overrides a context.
        env.insert("DOCKER_HOST".to_owned(), docker_host.to_owned());
        env.remove("DOCKER_CONTEXT");
        let (by_name, _) = self.container_env();
        for name in by_name {
            if let Some(value) = session.get(name.as_str()) {
                env.insert(name, (*value).to_owned());
            }
        }
        env.into_iter().collect()
    }
}

/// A `--mount` value for a bind mount. Fields holding `,` or `"` are quoted
/// (the value is CSV), so any path works, unlike `-v SRC:DST` and colons.
fn bind(source: &Path, target: &str, read_only: bool) -> String {
    let field = |text: String| {
        if text.contains(',') || text.contains('"') {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text
        }
    };
    let mut mount = format!(
        "type=bind,{},{}",
        field(format!("source={}", source.display())),
        field(format!("target={target}"))
    );
    if read_only {
        mount.push_str(",readonly");
    }
    mount
}

/// `uid:gid` of this process: files the agent writes in the worktree are the
/// user's, not root's.
fn invoking_user() -> String {
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    format!("{uid}:{gid}")
}

/// `ccflow-agent-<run>-<random>`: unique, and recognisable in `docker ps`.
fn container_name(run_id: &str) -> String {
    let run: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("ccflow-agent-{run}-{:08x}", fastrand::u32(..))
}

/// The `docker` CLI on the caller's `PATH`.
fn find_docker_cli() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("docker"))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Removes the container when dropped, so an aborted session future leaves
/// nothing running; `run_agent_session` removes explicitly on every normal path.
struct RemoveOnDrop {
    docker: DockerRunner,
    name: Option<String>,
}

impl RemoveOnDrop {
    async fn remove(&mut self) {
        let Some(name) = self.name.clone() else {
            return;
        };
        if let Err(error) = self.docker.remove_by_name(&name).await {
            tracing::warn!(container = %name, %error, "could not remove an agent's container");
        }
        self.name = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        // Without a runtime the next run's `remove_leftovers` finds it by its label.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            runtime.spawn(async move {
                let _ = docker.remove_by_name(&name).await;
            });
        }
    }
}

/// Runs one agent session of `task`: in a container for `runner: docker`,
/// else as a local process ([`run_session`] as is). `spec` is the local
/// session (its `binary` from [`locate_claude`], `cwd` the worktree).
pub async fn run_agent_session(
    shared: &RunShared,
    task: &Task,
    instance_id: &str,
    spec: SessionSpec,
    activity: Option<Arc<Mutex<String>>>,
) -> SessionOutcome {
    if task.runner != Runner::Docker {
        return run_session(spec, shared.cancel.clone(), activity).await;
    }
    let Some(docker) = &shared.docker else {
        return not_started(&spec, "the Docker engine is not connected");
    };
    let Some(cli) = find_docker_cli() else {
        return not_started(
            &spec,
            "the `docker` CLI is not on `PATH` (agents in containers run through it)",
        );
    };
    let image = task.image.clone().unwrap_or_default();
    let image = shared.image_ids.get(&image).cloned().unwrap_or(image);
    let persist = !spec
        .args
        .iter()
        .any(|arg| arg == "--no-session-persistence");
    let config_dir = persist
        .then(|| {
            spec.env
                .iter()
                .find(|(k, _)| k == "CLAUDE_CONFIG_DIR")
                .map(|(_, v)| PathBuf::from(v))
        })
        .flatten();
    let mut labels = BTreeMap::new();
    labels.insert(RUN_LABEL.to_owned(), shared.run_id.clone());
    labels.insert(INSTANCE_LABEL.to_owned(), instance_id.to_owned());
    let session = ContainerSession {
        name: container_name(&shared.run_id),
        image,
        claude: spec.binary.clone(),
        claude_args: spec.args.clone(),
        worktree: spec.cwd.clone(),
        config_dir,
        env: spec.env.clone(),
        network: task
            .network
            .clone()
            .unwrap_or_else(|| DEFAULT_AGENT_NETWORK.to_owned()),
        user: invoking_user(),
        cpus: task.cpus,
        memory: task
            .memory
            .as_deref()
            .and_then(crate::workflow::resolve::parse_memory),
        labels,
    };
    let wrapped = SessionSpec {
        binary: cli,
        args: session.docker_args(),
        env: session.client_env(docker.host()),
        ..spec
    };
    let mut guard = RemoveOnDrop {
        docker: docker.clone(),
        name: Some(session.name.clone()),
    };
    let remove_on_cancel = async {
        shared.cancel.cancelled().await;
        if let Err(error) = docker.remove_by_name(&session.name).await {
            tracing::debug!(container = %session.name, %error, "removal on cancel failed");
        }
    };
    let running = run_session(wrapped, shared.cancel.clone(), activity);
    tokio::pin!(running, remove_on_cancel);
    let mut watching = true;
    let mut outcome = loop {
        tokio::select! {
            outcome = &mut running => break outcome,
            () = &mut remove_on_cancel, if watching => watching = false,
        }
    };
    guard.remove().await;
    if outcome.killed {
        // A client killed while `docker run` was creating the container can
        // leave it to appear just after the first removal.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        guard.name = Some(session.name.clone());
        guard.remove().await;
    }
    if outcome.result.is_none() && matches!(outcome.status, SessionStatus::NoResult) {
        if let Some(code) = outcome
            .exit_code
            .filter(|code| DOCKER_RUN_FAILURES.contains(code))
        {
            outcome.status = SessionStatus::Failed {
                reason: format!(
                    "the agent's container did not start (`docker run` exited with {code})"
                ),
            };
        }
    }
    outcome
}

/// Runs an agent's `verify` check in a container of the task's image (the
/// toolchain the check needs is the image's, as the session's was), with the
/// worktree at `/workspace`; returns (passed, output). The session's
/// environment goes through the engine API, not a command line.
pub async fn run_verify(
    shared: &RunShared,
    task: &Task,
    instance_id: &str,
    check: &str,
    worktree: &Path,
    env: &[(String, String)],
) -> (bool, Vec<u8>) {
    let Some(docker) = &shared.docker else {
        return (
            false,
            b"ccflow: the Docker engine is not connected\n".to_vec(),
        );
    };
    let log = std::env::temp_dir().join(format!(
        "ccflow-verify-{}-{}.log",
        std::process::id(),
        fastrand::u64(..)
    ));
    let image = task.image.clone().unwrap_or_default();
    let image = shared.image_ids.get(&image).cloned().unwrap_or(image);
    let command = vec!["sh".to_owned(), "-c".to_owned(), check.to_owned()];
    let mut spec =
        super::docker::ContainerSpec::new(image, command, worktree, shared.run_id.clone(), &log);
    let mut container_env: BTreeMap<String, String> = env
        .iter()
        .filter(|(name, _)| !HOST_ONLY.contains(&name.as_str()))
        .cloned()
        .collect();
    container_env.insert("HOME".to_owned(), CONTAINER_HOME.to_owned());
    spec.env = container_env.into_iter().collect();
    spec.network = Some(
        task.network
            .clone()
            .unwrap_or_else(|| DEFAULT_AGENT_NETWORK.to_owned()),
    );
    spec.cpus = task.cpus;
    spec.memory = task
        .memory
        .as_deref()
        .and_then(crate::workflow::resolve::parse_memory);
    spec.labels
        .insert(INSTANCE_LABEL.to_owned(), instance_id.to_owned());
    spec.masks = shared.masks();
    spec.timeout = Some(std::time::Duration::from_secs(1800));
    spec.kill_grace = shared.kill_grace;
    let report = docker.run(spec, shared.cancel.clone(), None).await;
    let mut output = std::fs::read(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    if !matches!(
        report.outcome,
        super::docker::ContainerOutcome::Exited { .. }
    ) {
        output.extend_from_slice(
            format!("\nccflow: the check's container {}\n", report.outcome).as_bytes(),
        );
    }
    (report.outcome.is_success(), output)
}

/// A session that could not start, as [`run_session`] reports a spawn failure.
fn not_started(spec: &SessionSpec, error: &str) -> SessionOutcome {
    SessionOutcome {
        status: SessionStatus::SpawnFailed {
            binary: spec.binary.clone(),
            error: error.to_owned(),
        },
        result: None,
        exit_code: None,
        usage: crate::agent::Usage::default(),
        cost_usd: 0.0,
        num_turns: 0,
        session_id: None,
        api_retries: 0,
        duration: std::time::Duration::ZERO,
        killed: false,
        stderr_tail: String::new(),
        pid: None,
    }
}

#[cfg(test)]
mod tests;
