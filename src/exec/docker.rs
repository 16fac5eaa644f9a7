//! The Docker runner: runs one task instance in a fresh container through the
//! Docker Engine API (bollard), for Docker or Podman behind `DOCKER_HOST`.
//!
//! It is responsible for the container's whole life: create it from an image
//! resolved beforehand ([`DockerRunner::image_id`], whose answer joins the
//! cache key), bind-mount the workspace at `/workspace` and nothing else of
//! the host, apply the network, CPU, memory and user settings, stream its
//! output (secrets masked) into a log file, enforce the timeout and
//! cancellation (SIGTERM, then SIGKILL after the grace), read how it ended,
//! and remove it on every path. It neither prints nor decides retries: the
//! scheduler owns user-visible state and interprets the [`ContainerReport`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use log_sink::{drain_logs, stream_logs, LogSink};
pub use masker::Masker;
pub use memory::parse_memory;

mod log_sink;
mod masker;
mod memory;

/// The label naming the run a container belongs to; leftovers are found by it.
pub const RUN_LABEL: &str = "ccflow.run";
/// The label naming the task instance a container runs (set by the caller).
pub const INSTANCE_LABEL: &str = "ccflow.instance";
/// Where the workspace is mounted inside the container.
pub const WORKSPACE_TARGET: &str = "/workspace";

/// Where bollard connects when `DOCKER_HOST` is unset.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// How long `connect` waits for the daemon's answer: a blackholed TCP host
/// would otherwise hold the run for bollard's two-minute request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a container to die after SIGKILL.
const KILL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the Docker runner's engine-level operations (not of a container's
/// run, which ends in a [`ContainerOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("connect to the Docker daemon at `{host}`: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("find image `{image}` on the Docker host")]
    ImageMissing { image: String },
    #[error("pull image `{image}`")]
    Pull {
        image: String,
        #[source]
        source: BollardError,
    },
    #[error("{operation}")]
    Engine {
        operation: String,
        #[source]
        source: BollardError,
    },
    #[error(
        "parse memory size `{value}`: expected bytes or a number with a unit \
         (`1073741824`, `512m`, `2g`, `1.5G`, `256Mi`, `64k`)"
    )]
    InvalidMemory { value: String },
}

impl DockerError {
    /// What the user can do about it, printed after the message as `hint: ...`.
    pub fn hint(&self) -> Option<String> {
        match self {
            DockerError::Unreachable { .. } => Some(
                "is the Docker daemon running? set `DOCKER_HOST` (e.g. `unix:///run/user/1000/podman/podman.sock` or `tcp://host:2375`) to use another engine"
                    .to_owned(),
            ),
            DockerError::ImageMissing { image } => Some(format!(
                "build it (`docker build -t {image} .`), load it (`docker load -i FILE`), or set `pull: true` to pull it from its registry"
            )),
            DockerError::Pull { .. } => {
                Some("check the image name and that the registry is reachable".to_owned())
            }
            DockerError::InvalidMemory { .. } => {
                Some("units are binary as in `docker run --memory`: `1m` is 1048576 bytes".to_owned())
            }
            DockerError::Engine { .. } => None,
        }
    }
}

/// What `ccflow doctor` shows about the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// `DOCKER_HOST`, or the default socket.
    pub host: String,
    /// The engine's version, e.g. `20.10.24+dfsg1`.
    pub server_version: String,
    /// The newest API version the engine speaks, e.g. `1.41`.
    pub api_version: String,
    /// The API version ccflow talks after negotiation (never newer than the engine's).
    pub negotiated_api_version: String,
    pub os: String,
    pub arch: String,
}

/// One container to run: everything is decided by the caller.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// An image id (`sha256:...`) or reference, resolved by `image_id` beforehand.
    pub image: String,
    /// e.g. `["sh", "-c", script]`; empty runs the image's default command.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Host directory bind-mounted read-write at `/workspace`; nothing else of
    /// the host is visible.
    pub workspace: PathBuf,
    /// Inside the container; empty means `/workspace`.
    pub workdir: String,
    /// `(host path, container path, read_only)`; each host path must exist.
    pub extra_mounts: Vec<(PathBuf, String, bool)>,
    /// `None` means `none` (no network); else `bridge`, `host` or a network name.
    pub network: Option<String>,
    pub cpus: Option<f64>,
    /// Bytes; swap is capped at the same value so the limit is real.
    pub memory: Option<u64>,
    /// `uid:gid` or a name; `None` runs as the invoking uid:gid so files
    /// written in `/workspace` belong to the user.
    pub user: Option<String>,
    /// `ccflow.run=<run_id>` is always added; callers set `ccflow.instance`.
    pub labels: BTreeMap<String, String>,
    pub run_id: String,
    /// stdout and stderr are streamed live into this file (created, truncated).
    pub log_path: PathBuf,
    /// Secret values replaced by `***` in the log.
    pub masks: Vec<String>,
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL on timeout or cancellation.
    pub kill_grace: Duration,
}

impl ContainerSpec {
    /// A spec with the defaults: no network, no limits, the invoking user,
    /// `/workspace` as workdir, a 10 s kill grace.
    pub fn new(
        image: impl Into<String>,
        command: Vec<String>,
        workspace: impl Into<PathBuf>,
        run_id: impl Into<String>,
        log_path: impl Into<PathBuf>,
    ) -> ContainerSpec {
        ContainerSpec {
            image: image.into(),
            command,
            env: Vec::new(),
            workspace: workspace.into(),
            workdir: WORKSPACE_TARGET.to_owned(),
            extra_mounts: Vec::new(),
            network: None,
            cpus: None,
            memory: None,
            user: None,
            labels: BTreeMap::new(),
            run_id: run_id.into(),
            log_path: log_path.into(),
            masks: Vec::new(),
            timeout: None,
            kill_grace: Duration::from_secs(10),
        }
    }
}

/// How a container run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerOutcome {
    /// The command exited on its own (0 is success).
    Exited { code: i64 },
    /// The kernel killed it for exceeding its memory limit.
    OomKilled,
    /// The timeout elapsed; the container was stopped and removed.
    TimedOut { after: Duration },
    /// The cancellation token fired; the container was stopped and removed.
    Cancelled,
    /// The engine refused or failed an API call (create, start, wait, inspect).
    EngineError { message: String },
    /// A host-side precondition failed before the container was created: a
    /// mount source is missing or the log file cannot be written.
    SetupFailed { message: String },
}

impl ContainerOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, ContainerOutcome::Exited { code: 0 })
    }
}

impl fmt::Display for ContainerOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerOutcome::Exited { code } => write!(f, "exited with code {code}"),
            ContainerOutcome::OomKilled => f.write_str("killed for exceeding its memory limit"),
            ContainerOutcome::TimedOut { after } => {
                write!(f, "timed out after {}", humantime::format_duration(*after))
            }
            ContainerOutcome::Cancelled => f.write_str("cancelled"),
            ContainerOutcome::EngineError { message } => {
                write!(f, "docker engine error: {message}")
            }
            ContainerOutcome::SetupFailed { message } => write!(f, "{message}"),
        }
    }
}

/// The result of [`DockerRunner::run`].
#[derive(Debug, Clone)]
pub struct ContainerReport {
    pub outcome: ContainerOutcome,
    /// From the create call to the removal.
    pub duration: Duration,
    /// `None` when the container was never created.
    pub container_id: Option<String>,
}

/// A connection to a Docker Engine; cheap to clone (the client is shared).
#[derive(Clone)]
pub struct DockerRunner {
    docker: Docker,
    host: String,
}

impl fmt::Debug for DockerRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerRunner")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl DockerRunner {
    /// Connects to `DOCKER_HOST` (unix:// or tcp://) or the default socket and
    /// negotiates the API version down to what the engine speaks.
    pub async fn connect() -> Result<DockerRunner, DockerError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_owned());
        DockerRunner::connect_to(&host).await
    }

    /// Connects to `host` (`unix:///path` or `tcp://host:port`) and negotiates
    /// the API version.
    pub async fn connect_to(host: &str) -> Result<DockerRunner, DockerError> {
        let host = host.to_owned();
        let unreachable = |reason: String| DockerError::Unreachable {
            host: host.clone(),
            reason,
        };
        let docker =
            Docker::connect_with_host(&host).map_err(|error| unreachable(error.to_string()))?;
        let docker = match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(error)) => return Err(unreachable(error.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        Ok(DockerRunner { docker, host })
    }

    /// The host this runner talks to (`DOCKER_HOST` or the default socket).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Resolves an image reference to its id (`sha256:...`), pulling it first
    /// when it is missing and `pull` is set.
    pub async fn image_id(&self, image: &str, pull: bool) -> Result<String, DockerError> {
        match self.inspect_image_id(image).await? {
            Some(id) => return Ok(id),
            None if !pull => {
                return Err(DockerError::ImageMissing {
                    image: image.to_owned(),
                })
            }
            None => {}
        }
        let options = CreateImageOptionsBuilder::new()
            .from_image(&reference_with_tag(image))
            .build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            step.map_err(|source| DockerError::Pull {
                image: image.to_owned(),
                source,
            })?;
        }
        self.inspect_image_id(image)
            .await?
            .ok_or_else(|| DockerError::ImageMissing {
                image: image.to_owned(),
            })
    }

    async fn inspect_image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(inspect.id),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(source) => Err(DockerError::Engine {
                operation: format!("inspect image `{image}`"),
                source,
            }),
        }
    }

    /// Runs one container to its end and removes it, whatever happens.
    ///
    /// `last_line`, when given, is kept up to date with the latest non-empty
    /// output line (masked), for progress display.
    pub async fn run(
        &self,
        spec: ContainerSpec,
        cancel: CancellationToken,
        last_line: Option<Arc<Mutex<String>>>,
    ) -> ContainerReport {
        let started = Instant::now();
        let mut guard = ContainerGuard {
            docker: self.docker.clone(),
            id: None,
        };
        let outcome = self.run_in(&spec, &cancel, last_line, &mut guard).await;
        let container_id = guard.id.clone();
        guard.remove().await;
        ContainerReport {
            outcome,
            duration: started.elapsed(),
            container_id,
        }
    }

    async fn run_in(
        &self,
        spec: &ContainerSpec,
        cancel: &CancellationToken,
        last_line: Option<Arc<Mutex<String>>>,
        guard: &mut ContainerGuard,
    ) -> ContainerOutcome {
        if cancel.is_cancelled() {
            return ContainerOutcome::Cancelled;
        }
        if let Err(message) = check_mount_sources(spec) {
            return ContainerOutcome::SetupFailed { message };
        }
        let log_file = match open_log(spec) {
            Ok(file) => file,
            Err(message) => return ContainerOutcome::SetupFailed { message },
        };

        let options = CreateContainerOptionsBuilder::new()
            .name(&container_name(&spec.run_id))
            .build();
        let id = match self
            .docker
            .create_container(Some(options), container_body(spec))
            .await
        {
            Ok(created) => created.id,
            Err(error) => {
                return ContainerOutcome::EngineError {
                    message: format!("create a container from `{}`: {error}", spec.image),
                }
            }
        };
        guard.id = Some(id.clone());

        // Attached before start, the live stream holds every byte and ends
        // only after the last one. (A following `logs` stream, tried first,
        // lost the final chunk of fast containers on Docker 20.10, and
        // `logs=true` on the attach replays what the live stream also
        // delivers, duplicating early lines.)
        let attach = AttachContainerOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let output = match self.docker.attach_container(&id, Some(attach)).await {
            Ok(attached) => attached,
            Err(error) => {
                return ContainerOutcome::EngineError {
                    message: format!("attach to container `{}`: {error}", short_id(&id)),
                }
            }
        };
        let logs = tokio::spawn(stream_logs(
            output,
            id.clone(),
            LogSink::new(log_file, &spec.masks, last_line),
        ));
        if let Err(error) = self.docker.start_container(&id, None).await {
            logs.abort();
            return ContainerOutcome::EngineError {
                message: format!("start container `{}`: {error}", short_id(&id)),
            };
        }

        let exit = wait_for_exit(&self.docker, &id);
        tokio::pin!(exit);
        let deadline = async {
            match spec.timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        let interrupted = tokio::select! {
            exited = &mut exit => {
                if let Err(message) = exited {
                    logs.abort();
                    return ContainerOutcome::EngineError { message };
                }
                None
            }
            () = cancel.cancelled() => Some(ContainerOutcome::Cancelled),
            () = deadline => Some(ContainerOutcome::TimedOut {
                after: spec.timeout.unwrap_or_default(),
            }),
        };
        if interrupted.is_some() {
            self.stop(&id, spec.kill_grace, &mut exit).await;
        }
        drain_logs(logs).await;
        if let Some(outcome) = interrupted {
            return outcome;
        }

        match self.docker.inspect_container(&id, None).await {
            Ok(inspect) => {
                let state = inspect.state.unwrap_or_default();
                let code = state.exit_code.unwrap_or(-1);
                // A process the script survives (and exits 0 after) may have
                // been OOM-killed; only a failing container counts as OOM.
                if state.oom_killed == Some(true) && code != 0 {
                    ContainerOutcome::OomKilled
                } else {
                    ContainerOutcome::Exited { code }
                }
            }
            Err(error) => ContainerOutcome::EngineError {
                message: format!("inspect container `{}`: {error}", short_id(&id)),
            },
        }
    }

    /// SIGTERM, then SIGKILL after `grace` unless the container exited.
    async fn stop<F>(&self, id: &str, grace: Duration, exit: &mut std::pin::Pin<&mut F>)
    where
        F: std::future::Future<Output = Result<(), String>>,
    {
        let term = KillContainerOptionsBuilder::new().signal("SIGTERM").build();
        if let Err(error) = self.docker.kill_container(id, Some(term)).await {
            tracing::debug!(container = short_id(id), %error, "SIGTERM failed");
        }
        if tokio::time::timeout(grace, exit.as_mut()).await.is_ok() {
            return;
        }
        let kill = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        if let Err(error) = self.docker.kill_container(id, Some(kill)).await {
            tracing::debug!(container = short_id(id), %error, "SIGKILL failed");
        }
        // The forced removal afterwards kills it anyway; this only lets the
        // log stream end cleanly.
        let _ = tokio::time::timeout(KILL_WAIT_TIMEOUT, exit.as_mut()).await;
    }

    /// Force-removes the container named `name` (killing it if it runs);
    /// `Ok(false)` when there is none. For containers started by the `docker`
    /// CLI (agent sessions), whose ids ccflow never sees.
    ///
    /// # Errors
    /// The engine refused the removal (other than "no such container").
    pub async fn remove_by_name(&self, name: &str) -> Result<bool, DockerError> {
        // One retry: `--rm` may be removing it already ("removal already in progress").
        for attempt in 0..2 {
            match self
                .docker
                .remove_container(name, Some(force_remove()))
                .await
            {
                Ok(()) => return Ok(true),
                Err(error) if is_not_found(&error) => return Ok(false),
                Err(error) if attempt == 0 && is_conflict(&error) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(source) => {
                    return Err(DockerError::Engine {
                        operation: format!("remove container `{name}`"),
                        source,
                    })
                }
            }
        }
        Ok(false)
    }

    /// Force-removes every container labelled `ccflow.run=*` (left by a killed
    /// run) except those of `except_run`; returns how many were removed.
    pub async fn remove_leftovers(&self, except_run: Option<&str>) -> Result<usize, DockerError> {
        self.remove_labelled(|run| Some(run) != except_run).await
    }

    /// Force-removes the containers of the runs for which `is_dead` holds
    /// (a run whose ccflow was killed), leaving live runs' containers alone.
    ///
    /// # Errors
    /// The engine cannot list or remove containers.
    pub async fn remove_containers_of(
        &self,
        is_dead: impl Fn(&str) -> bool,
    ) -> Result<usize, DockerError> {
        self.remove_labelled(is_dead).await
    }

    /// Force-removes the containers whose `ccflow.run` label satisfies `remove`.
    async fn remove_labelled(&self, remove: impl Fn(&str) -> bool) -> Result<usize, DockerError> {
        let filters = HashMap::from([("label", vec![RUN_LABEL])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| DockerError::Engine {
                operation: "list containers labelled `ccflow.run`".to_owned(),
                source,
            })?;
        let mut removed = 0;
        for container in containers {
            let (Some(id), Some(labels)) = (container.id, container.labels) else {
                continue;
            };
            if !labels.get(RUN_LABEL).is_some_and(|run| remove(run)) {
                continue;
            }
            match self
                .docker
                .remove_container(&id, Some(force_remove()))
                .await
            {
                Ok(()) => removed += 1,
                // Gone meanwhile (its own run removed it): nothing left over.
                Err(error) if is_not_found(&error) || is_conflict(&error) => {}
                Err(source) => {
                    return Err(DockerError::Engine {
                        operation: format!("remove container `{}`", short_id(&id)),
                        source,
                    })
                }
            }
        }
        Ok(removed)
    }

    /// The engine's identity, for `ccflow doctor`.
    pub async fn engine_info(&self) -> Result<EngineInfo, DockerError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|source| DockerError::Engine {
                operation: "query the engine version".to_owned(),
                source,
            })?;
        let unknown = || "unknown".to_owned();
        Ok(EngineInfo {
            host: self.host.clone(),
            server_version: version.version.unwrap_or_else(unknown),
            api_version: version.api_version.unwrap_or_else(unknown),
            negotiated_api_version: self.docker.client_version().to_string(),
            os: version.os.unwrap_or_else(unknown),
            arch: version.arch.unwrap_or_else(unknown),
        })
    }
}

/// Removes the container when dropped, so a `run` future dropped mid-way (its
/// task aborted) leaves nothing behind; `run` removes explicitly and awaits it
/// on every normal path.
struct ContainerGuard {
    docker: Docker,
    id: Option<String>,
}

impl ContainerGuard {
    /// The id is forgotten only once the removal is done, so dropping this
    /// future half-way still leaves the removal to `Drop`.
    async fn remove(&mut self) {
        let Some(id) = self.id.clone() else { return };
        // One retry: a removal racing the container's own teardown can be
        // refused with a conflict ("removal already in progress").
        for attempt in 0..2 {
            match self
                .docker
                .remove_container(&id, Some(force_remove()))
                .await
            {
                Ok(()) => break,
                Err(error) if is_not_found(&error) => break,
                Err(error) if attempt == 0 => {
                    tracing::debug!(container = short_id(&id), %error, "removal failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => {
                    tracing::warn!(container = short_id(&id), %error, "could not remove container");
                }
            }
        }
        self.id = None;
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        // Without a runtime (process exit) the next run's `remove_leftovers`
        // finds it by its label.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            runtime.spawn(async move {
                let _ = docker.remove_container(&id, Some(force_remove())).await;
            });
        }
    }
}

fn force_remove() -> bollard::query_parameters::RemoveContainerOptions {
    RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build()
}

/// Resolves when the container is no longer running.
///
/// The wait is subscribed after `start` with condition `not-running`, which
/// answers at once for a container that already exited, so a fast container
/// cannot be missed (a `next-exit` wait subscribed late would hang). The
/// stream can also end for other reasons (bollard's request timeout, a
/// dropped connection): then the state is inspected and the wait resumed.
async fn wait_for_exit(docker: &Docker, id: &str) -> Result<(), String> {
    loop {
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut wait = docker.wait_container(id, Some(options));
        match wait.next().await {
            // A non-zero exit arrives as an error holding the code.
            Some(Ok(_) | Err(BollardError::DockerContainerWaitError { .. })) => return Ok(()),
            Some(Err(error)) => tracing::debug!(container = short_id(id), %error, "wait ended"),
            None => {}
        }
        match docker.inspect_container(id, None).await {
            Ok(inspect) if inspect.state.as_ref().and_then(|state| state.running) == Some(true) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(_) => return Ok(()),
            Err(error) => return Err(format!("wait for container `{}`: {error}", short_id(id))),
        }
    }
}

fn check_mount_sources(spec: &ContainerSpec) -> Result<(), String> {
    if !spec.workspace.is_dir() {
        return Err(format!(
            "mount the workspace `{}`: not a directory",
            spec.workspace.display()
        ));
    }
    for (source, target, _) in &spec.extra_mounts {
        if !source.exists() {
            return Err(format!(
                "mount `{}` at `{target}`: no such file or directory",
                source.display()
            ));
        }
    }
    Ok(())
}

fn open_log(spec: &ContainerSpec) -> Result<(PathBuf, tokio::fs::File), String> {
    if let Some(parent) = spec
        .log_path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        fs_err::create_dir_all(parent).map_err(|error| error.to_string())?;
    }
    let file = fs_err::File::create(&spec.log_path).map_err(|error| error.to_string())?;
    Ok((
        spec.log_path.clone(),
        tokio::fs::File::from_std(file.into_file()),
    ))
}

fn container_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    labels.insert(RUN_LABEL.to_owned(), spec.run_id.clone());

    let mut mounts = vec![bind(
        spec.workspace.display().to_string(),
        WORKSPACE_TARGET,
        false,
    )];
    for (source, target, read_only) in &spec.extra_mounts {
        mounts.push(bind(source.display().to_string(), target, *read_only));
    }
    let memory = spec
        .memory
        .map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX));
    let nano_cpus = spec
        .cpus
        .filter(|cpus| cpus.is_finite() && *cpus > 0.0)
        .map(cpus_to_nano);
    let workdir = if spec.workdir.is_empty() {
        WORKSPACE_TARGET.to_owned()
    } else {
        spec.workdir.clone()
    };

    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(
            spec.env
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect(),
        ),
        working_dir: Some(workdir),
        user: Some(spec.user.clone().unwrap_or_else(invoking_user)),
        labels: Some(labels),
        tty: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            network_mode: Some(spec.network.clone().unwrap_or_else(|| "none".to_owned())),
            nano_cpus,
            memory,
            memory_swap: memory,
            // An init as PID 1 forwards SIGTERM to the command (which as PID 1
            // would ignore it) and reaps zombies.
            init: Some(true),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "a finite positive CPU count times 1e9 fits i64; `as` saturates beyond"
)]
fn cpus_to_nano(cpus: f64) -> i64 {
    (cpus * 1e9).round() as i64
}

fn bind(source: String, target: &str, read_only: bool) -> Mount {
    Mount {
        source: Some(source),
        target: Some(target.to_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Mount::default()
    }
}

/// `uid:gid` of this process, so files the container writes are the user's.
fn invoking_user() -> String {
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    format!("{uid}:{gid}")
}

/// A readable, unique name: `ccflow-<run id>-<random>`.
fn container_name(run_id: &str) -> String {
    let run: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("ccflow-{run}-{:08x}", fastrand::u32(..))
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `busybox` pulls every tag of the repository; a reference without a tag or
/// digest means `:latest`, as for `docker pull`.
fn reference_with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

fn is_not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn is_conflict(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

#[cfg(test)]
mod tests;
