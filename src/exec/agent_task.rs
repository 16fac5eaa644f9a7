//! Executing one agent instance: a headless Claude Code session in its own
//! git worktree of the run's snapshot, supervised, verified, and its diff
//! brought back to the user's tree (SPEC §5).
//!
//! Flow: key (prompt, options, CLI version, inputs) → cache hit: re-apply the
//! cached patch, no API call → miss: worktree → session (rate limits retried
//! with backoff, idle sessions killed and retried) → `verify` (resume the
//! session with the check's output, up to `verify_attempts`) → diff → reject
//! paths outside `outputs` → apply (three-way, serialized, completion order)
//! → save the patch under the pre- and post-state keys → remove the worktree.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::instance::{instance_key, JobResult, Notice, RunShared};
use crate::agent::{build_args, AgentOptions};
use crate::agent::{SessionOutcome, SessionSpec, SessionStatus};
use crate::cache::key::{CacheKey, KeyHash};
use crate::cache::store::NewEntry;
use crate::cli::ApplyMode;
use crate::report::record::{file_name_for, now_ms, AttemptRecord, InstanceStatus, Usage};
use crate::workflow::{AgentSpec, Task, TaskKind};
use crate::workspace::{self, ApplyOutcome, Patch, Snapshot};

/// Environment variables an agent session inherits from the caller besides
/// the basics: API endpoint and credentials, and the CLI's own switches.
const AGENT_ENV_PREFIXES: [&str; 3] = ["ANTHROPIC_", "CLAUDE_CODE_", "DISABLE_"];
const AGENT_ENV_NAMES: [&str; 5] = ["HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "USER", "TMPDIR"];
/// Values of these are masked in transcripts shown to users.
const CREDENTIALS: [&str; 2] = ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"];
/// Rate-limit retries of one instance, separate from `retries`.
const RATE_LIMIT_RETRIES: u32 = 5;

/// The run's snapshot, taken before the first agent starts.
///
/// # Errors
/// Not a git repository, or git failures.
async fn snapshot(shared: &Arc<RunShared>) -> Result<Arc<Snapshot>, String> {
    let result = shared
        .snapshot
        .get_or_init(|| {
            let shared = Arc::clone(shared);
            async move {
                tokio::task::spawn_blocking(move || {
                    let worktrees = shared.state_dir.join("worktrees");
                    // Leftovers of crashed runs go first.
                    let run_id = shared.run_id.clone();
                    if let Err(e) =
                        workspace::cleanup_stale_with(&shared.root, &worktrees, &|run| {
                            // Another ccflow may be running in this repository now.
                            run == run_id || !super::stale::run_is_dead(&shared.state_dir, run)
                        })
                    {
                        tracing::warn!("cannot clean up old worktrees: {e}");
                    }
                    // Each slot's checkout in a block group of its own (ext4).
                    let run_dir = worktrees.join(&run_id);
                    if std::fs::create_dir_all(&run_dir).is_ok() {
                        crate::cache::fsutil::mark_top_directory(&run_dir);
                    }
                    // Agents that need a snapshot change the tree.
                    crate::memo::spoil("an agent needed a snapshot of the working tree");
                    let clock = std::time::Instant::now();
                    let taken = workspace::snapshot(&shared.root, &shared.run_id);
                    tracing::debug!("snapshot taken in {:?}", clock.elapsed());
                    taken.map(Arc::new).map_err(|e| {
                        let mut message = e.to_string();
                        if let Some(hint) = e.hint() {
                            message.push_str(&format!(" (hint: {hint})"));
                        }
                        message
                    })
                })
                .await
                .unwrap_or_else(|e| Err(format!("snapshot task failed: {e}")))
            }
        })
        .await;
    result.clone()
}

fn options(agent: &AgentSpec, prompt: String) -> AgentOptions {
    AgentOptions {
        prompt,
        model: agent.model.clone(),
        max_turns: agent.max_turns,
        max_budget_usd: agent.max_budget_usd,
        allowed_tools: agent.allowed_tools.clone(),
        disallowed_tools: agent.disallowed_tools.clone(),
        append_system_prompt: agent.append_system_prompt.clone(),
        mcp_config: agent.mcp_config.clone(),
        permission_mode: agent.permission_mode.clone(),
        command: agent.command.clone(),
        bare: agent.bare,
    }
}

fn agent_env(
    shared: &RunShared,
    rendered_env: &BTreeMap<String, String>,
    config_dir: &Path,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = shared.base_env.iter().cloned().collect();
    for (key, value) in std::env::vars() {
        if AGENT_ENV_PREFIXES.iter().any(|p| key.starts_with(p))
            || AGENT_ENV_NAMES.contains(&key.as_str())
        {
            env.insert(key, value);
        }
    }
    env.extend(shared.workflow.env.clone());
    env.extend(rendered_env.clone());
    env.extend(shared.secrets.iter().cloned());
    env.insert("CLAUDE_CONFIG_DIR".into(), config_dir.display().to_string());
    env.insert("CCFLOW_RUN_ID".into(), shared.run_id.clone());
    env.into_iter().collect()
}

fn usage_of(outcome: &SessionOutcome) -> Usage {
    Usage {
        input_tokens: outcome.usage.input,
        output_tokens: outcome.usage.output,
        cache_read_tokens: outcome.usage.cache_read,
        cache_creation_tokens: outcome.usage.cache_creation,
        cost_usd: outcome.cost_usd,
    }
}

fn session_text(status: &SessionStatus) -> String {
    match status {
        SessionStatus::Succeeded => "succeeded".into(),
        SessionStatus::Failed { reason } => format!("the agent failed: {reason}"),
        SessionStatus::RateLimited {
            status,
            retries_seen,
        } => format!("rate limited by the API (HTTP {status}, {retries_seen} retries by the CLI)"),
        SessionStatus::MaxTurns => {
            "the agent hit `max_turns` (the diff so far is kept as a salvaged patch)".into()
        }
        SessionStatus::MaxBudget => {
            "the agent hit `max_budget_usd` (the diff so far is kept as a salvaged patch)".into()
        }
        SessionStatus::NoResult => "the session ended without a result".into(),
        SessionStatus::Malformed { line, message } => {
            format!("the session's output line {line} is not stream-json: {message}")
        }
        SessionStatus::IdleTimeout => {
            "the session went silent past `idle_timeout` and was killed".into()
        }
        SessionStatus::TimedOut => "timed out".into(),
        SessionStatus::Cancelled => "cancelled".into(),
        SessionStatus::SpawnFailed { binary, error } => {
            format!("cannot start `{}`: {error}", binary.display())
        }
    }
}

fn rate_limit_backoff(attempt: u32) -> Duration {
    let base = std::env::var("CCFLOW_RATE_LIMIT_BACKOFF")
        .ok()
        .and_then(|v| crate::workflow::resolve::parse_duration(&v).ok())
        .unwrap_or(Duration::from_secs(5));
    let factor = 2f64.powi(
        i32::try_from(attempt.saturating_sub(1))
            .unwrap_or(10)
            .min(10),
    );
    Duration::from_secs_f64((base.as_secs_f64() * factor * (0.5 + fastrand::f64())).min(600.0))
}

/// Runs one agent instance. `result` arrives with the rendered instance's
/// identity filled in.
#[expect(
    clippy::too_many_lines,
    reason = "the steps of SPEC §5 in order, each short"
)]
pub async fn execute_agent(
    shared: Arc<RunShared>,
    job: super::instance::Job,
    mut result: JobResult,
    started: Instant,
) -> JobResult {
    let workflow = Arc::clone(&shared.workflow);
    let task: &Task = &workflow.tasks[job.task];
    let TaskKind::Agent(agent) = &task.kind else {
        result.message = Some("not an agent task".into());
        return result;
    };
    // Until this instance has a worktree (or ends without one), the pool
    // keeps worktrees that come free.
    let mut claim = shared.worktree_pool.claim();
    let rendered = Arc::clone(&job.rendered);
    let prompt = rendered.prompt.clone().unwrap_or_default();
    let fail = |mut result: JobResult, message: String| {
        result.status = InstanceStatus::Failed;
        result.message = Some(message);
        result.duration = started.elapsed();
        result
    };
    // The CLI and its version (part of the key).
    let command = agent.command.clone();
    let runner = task.runner;
    let found = tokio::task::spawn_blocking(move || {
        super::agent_docker::locate_claude(runner, command.as_deref()).map_err(|e| e.to_string())
    })
    .await;
    let (binary, version) = match found {
        Ok(Ok(found)) => {
            // The version joins the key; a new binary has a new stat.
            crate::memo::stat(&found.0);
            found
        }
        Ok(Err(message)) => return fail(result, message),
        Err(e) => return fail(result, format!("cannot look for the claude CLI: {e}")),
    };
    // The key. Agents read what they edit: without `inputs`, the outputs are the inputs.
    let key_rendered = (*rendered).clone();
    let keyed = {
        let shared = Arc::clone(&shared);
        let deps = job.deps.clone();
        let task_index = job.task;
        tokio::task::spawn_blocking(move || {
            instance_key(
                &shared.key_context(),
                &shared.workflow.tasks[task_index],
                &key_rendered,
                &deps,
            )
        })
        .await
    };
    let (mut key, inputs) = match keyed {
        Ok(Ok(k)) => k,
        Ok(Err(message)) => return fail(result, message),
        Err(e) => return fail(result, format!("cannot compute the cache key: {e}")),
    };
    key.extra.insert("claude_version".into(), version.clone());
    let key_hash = key.hash();
    result.key = Some(key_hash.to_string());
    let use_cache = task.cache && shared.store.is_some();
    let may_hit = use_cache && !shared.no_cache && !shared.rerun.iter().any(|t| t == &task.name);
    let agents_dir = shared.run_dir.join("agents");
    let _ = fs_err::create_dir_all(&agents_dir);
    let file_stem = file_name_for(&job.id);

    if may_hit {
        if let Some(hit) = cache_hit(&shared, &job.id, &key_hash, &agents_dir, &file_stem).await {
            match hit {
                Ok((_saved, artifacts)) => {
                    // Nothing was spent: the record counts tokens used by this run only.
                    result.status = InstanceStatus::Cached;
                    result.artifacts = artifacts;
                    result.exit_code = Some(0);
                    result.duration = started.elapsed();
                    return result;
                }
                Err(message) => return fail(result, message),
            }
        }
    }

    let snapshot = match snapshot(&shared).await {
        Ok(s) => s,
        Err(message) => {
            return fail(
                result,
                format!("cannot snapshot the working tree: {message}"),
            )
        }
    };
    // The run's tail in the name too: ext4 places a directory created under
    // a `chattr +T` one by a hash of its name, and the same names every run
    // would land where the last run's checkouts were just deleted.
    let tail = shared
        .run_id
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .to_owned();
    let worktree_dir = shared
        .state_dir
        .join("worktrees")
        .join(&shared.run_id)
        .join(format!("{}-{tail}", job.node.index()));
    // A worktree another instance left (reset to the snapshot), else a new one.
    let worktree = if let Some(worktree) = claim.take_idle() {
        worktree
    } else {
        let snapshot = Arc::clone(&snapshot);
        let dir = worktree_dir.clone();
        let name = format!("{}", job.node.index());
        match tokio::task::spawn_blocking(move || {
            workspace::create_worktree(&snapshot, &dir, &name)
        })
        .await
        {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return fail(result, format!("cannot create the agent's worktree: {e}")),
            Err(e) => return fail(result, format!("cannot create the agent's worktree: {e}")),
        }
    };
    claim.settle();
    tracing::debug!(
        "agent `{}`: worktree ready at {:?}",
        job.id,
        started.elapsed()
    );
    let config_dir = shared
        .run_dir
        .join("agents")
        .join(format!("{file_stem}.config"));
    let _ = fs_err::create_dir_all(&config_dir);
    let transcript = agents_dir.join(format!("{file_stem}.ndjson"));
    result
        .artifacts
        .insert("transcript".into(), rel(&shared, &transcript));
    let persist = rendered.verify.is_some();
    let mut opts = options(agent, prompt.clone());
    let env = agent_env(&shared, &rendered.env, &config_dir);
    let mut resume: Option<String> = None;
    let mut verify_round = 0u32;
    let mut rate_limit_round = 0u32;
    let mut attempt = 0u32;
    let idle_retries_left = &mut task.retry.attempts.max(2).saturating_sub(1);
    let session_ok = loop {
        attempt += 1;
        let spec = SessionSpec {
            binary: binary.clone(),
            args: build_args(&opts, resume.as_deref(), persist),
            prompt: opts.prompt.clone(),
            cwd: worktree.path.clone(),
            env: env.clone(),
            transcript_path: transcript.clone(),
            timeout: task.timeout,
            idle_timeout: agent.idle_timeout,
            result_grace: Duration::from_secs(2),
            kill_grace: shared.kill_grace,
        };
        let attempt_started = now_ms();
        let outcome = super::agent_docker::run_agent_session(
            &shared,
            task,
            &job.id,
            spec,
            Some(Arc::clone(&job.activity)),
        )
        .await;
        result.usage.add(&usage_of(&outcome));
        let text = session_text(&outcome.status);
        result.attempts.push(AttemptRecord {
            attempt,
            started_unix_ms: attempt_started,
            duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
            exit_code: outcome.exit_code,
            outcome: if outcome.api_retries > 0 {
                format!("{text} ({} API retries)", outcome.api_retries)
            } else {
                text.clone()
            },
        });
        result.exit_code = outcome.exit_code;
        match &outcome.status {
            SessionStatus::Succeeded => {}
            SessionStatus::RateLimited { .. }
                if rate_limit_round < RATE_LIMIT_RETRIES && !shared.cancel.is_cancelled() =>
            {
                rate_limit_round += 1;
                let _ = shared
                    .notices
                    .send(Notice::RateLimited { id: job.id.clone() });
                let delay = rate_limit_backoff(rate_limit_round);
                let _ = shared.notices.send(Notice::Retrying {
                    id: job.id.clone(),
                    attempt: attempt + 1,
                    delay,
                    reason: text,
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shared.cancel.cancelled() => {}
                }
                continue;
            }
            SessionStatus::IdleTimeout | SessionStatus::NoResult
                if *idle_retries_left > 0 && !shared.cancel.is_cancelled() =>
            {
                *idle_retries_left -= 1;
                let delay = Duration::from_millis(200);
                let _ = shared.notices.send(Notice::Retrying {
                    id: job.id.clone(),
                    attempt: attempt + 1,
                    delay,
                    reason: text,
                });
                continue;
            }
            status => {
                let salvage = matches!(status, SessionStatus::MaxTurns | SessionStatus::MaxBudget);
                result.status = match status {
                    SessionStatus::TimedOut => InstanceStatus::TimedOut,
                    SessionStatus::Cancelled => InstanceStatus::Cancelled,
                    _ => InstanceStatus::Failed,
                };
                let mut message = text;
                if let SessionStatus::Failed { .. } | SessionStatus::NoResult = status {
                    let tail = outcome.stderr_tail.trim();
                    if !tail.is_empty() {
                        message.push_str(&format!(
                            "; stderr: {}",
                            tail.lines().last().unwrap_or(tail)
                        ));
                    }
                }
                result.message = Some(message);
                if salvage {
                    if let Ok(patch) = diff_blocking(&snapshot, &worktree).await {
                        if !patch.is_empty() {
                            let path = agents_dir.join(format!("{file_stem}.salvaged.patch"));
                            if fs_err::write(&path, patch.text.as_bytes()).is_ok() {
                                result
                                    .artifacts
                                    .insert("salvaged_patch".into(), rel(&shared, &path));
                            }
                        }
                    }
                }
                break false;
            }
        }
        // Verification gate.
        let Some(check) = &rendered.verify else {
            break true;
        };
        let (passed, output) = if task.runner == crate::workflow::raw::Runner::Docker {
            super::agent_docker::run_verify(&shared, task, &job.id, check, &worktree.path, &env)
                .await
        } else {
            run_verify(&shared, check, &worktree.path, &env).await
        };
        let log = agents_dir.join(format!("{file_stem}.verify-{}.log", verify_round + 1));
        let _ = fs_err::write(&log, &output);
        result
            .artifacts
            .insert(format!("verify_{}", verify_round + 1), rel(&shared, &log));
        if passed {
            break true;
        }
        verify_round += 1;
        if verify_round > task.verify_attempts || outcome.session_id.is_none() {
            result.status = InstanceStatus::Failed;
            result.message = Some(format!("`verify` failed {verify_round} time(s); nothing was applied (last check output in the record)"));
            break false;
        }
        resume.clone_from(&outcome.session_id);
        let tail: String = String::from_utf8_lossy(&output)
            .chars()
            .rev()
            .take(4000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        opts.prompt = format!("The check `{check}` failed after your changes. Its output:\n\n{tail}\n\nFix the problem so that the check passes.");
        let _ = shared.notices.send(Notice::Retrying {
            id: job.id.clone(),
            attempt: attempt + 1,
            delay: Duration::ZERO,
            reason: "`verify` failed; resuming the session with its output".into(),
        });
    };
    tracing::debug!(
        "agent `{}`: session over at {:?}",
        job.id,
        started.elapsed()
    );
    if !session_ok {
        release_worktree(&shared, &snapshot, worktree, None).await;
        result.duration = started.elapsed();
        return result;
    }
    // The diff, its scope, and applying it.
    let patch = match diff_blocking(&snapshot, &worktree).await {
        Ok(p) => p,
        Err(message) => {
            remove_worktree(&snapshot, worktree).await;
            return fail(result, message);
        }
    };
    release_worktree(&shared, &snapshot, worktree, Some(&patch)).await;
    tracing::debug!(
        "agent `{}`: diff taken, worktree reset at {:?}",
        job.id,
        started.elapsed()
    );
    let patch_path = agents_dir.join(format!("{file_stem}.patch"));
    if !patch.is_empty() {
        let _ = fs_err::write(&patch_path, patch.text.as_bytes());
        result
            .artifacts
            .insert("diff".into(), rel(&shared, &patch_path));
    }
    match workspace::paths_outside(&patch, &rendered.outputs) {
        Ok(outside) if !outside.is_empty() => {
            return fail(
                result,
                format!(
                    "the agent changed files outside `outputs`: {}; nothing was applied",
                    outside
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        Ok(_) => {}
        Err(e) => {
            return fail(
                result,
                format!("cannot check the diff against `outputs`: {e}"),
            )
        }
    }
    let summary = result_summary(&transcript);
    if let Err(message) = land(&shared, &snapshot, &patch, &job.id, &summary, &mut result).await {
        return fail(result, message);
    }
    tracing::debug!("agent `{}`: landed at {:?}", job.id, started.elapsed());
    if result.status == InstanceStatus::Conflict {
        result.duration = started.elapsed();
        return result;
    }
    result.status = InstanceStatus::Succeeded;
    result.message = None;
    // Cache: the patch under the pre-state key and the post-state key.
    if use_cache {
        let shared2 = Arc::clone(&shared);
        let id = job.id.clone();
        let bytes = patch.to_bytes();
        let usage = result.usage;
        let paths: Vec<String> = patch.paths().iter().map(|p| (*p).to_owned()).collect();
        let transcript2 = transcript.clone();
        // The input globs as the next run will expand them (new files included).
        let patterns = super::instance::input_patterns(&rendered).to_vec();
        let saved = tokio::task::spawn_blocking(move || {
            save_agent(
                &shared2,
                &id,
                key,
                (&inputs, &patterns),
                &bytes,
                &paths,
                &transcript2,
                usage,
            )
        })
        .await;
        if let Ok(Err(e)) | Err(e) = saved.map_err(|e| e.to_string()) {
            tracing::warn!("cannot save the cache entry of `{}`: {e}", job.id);
        }
    }
    result.duration = started.elapsed();
    result
}

fn rel(shared: &RunShared, path: &Path) -> String {
    path.strip_prefix(&shared.run_dir)
        .unwrap_or(path)
        .display()
        .to_string()
}

async fn diff_blocking(
    snapshot: &Arc<Snapshot>,
    worktree: &workspace::Worktree,
) -> Result<Patch, String> {
    let snapshot = Arc::clone(snapshot);
    let worktree = worktree.clone();
    tokio::task::spawn_blocking(move || {
        workspace::diff(&snapshot, &worktree)
            .map_err(|e| format!("cannot diff the agent's worktree: {e}"))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
}

/// Returns a worktree to the run's pool, reset to the snapshot (only the
/// files the agent changed are rewritten: a checkout per instance would cost
/// the whole tree); removes it instead when the run is stopping, when no
/// instance is left to take it, or when the reset fails.
async fn release_worktree(
    shared: &Arc<RunShared>,
    snapshot: &Arc<Snapshot>,
    worktree: workspace::Worktree,
    patch: Option<&Patch>,
) {
    if shared.cancel.is_cancelled() {
        remove_worktree(snapshot, worktree).await;
        return;
    }
    // No instance is left to take it: no reset, it goes.
    if !shared.worktree_pool.wanted() {
        shared.worktree_pool.discard(worktree);
        return;
    }
    let patch = match patch {
        Some(p) => p.clone(),
        None => match diff_blocking(snapshot, &worktree).await {
            Ok(p) => p,
            Err(_) => {
                remove_worktree(snapshot, worktree).await;
                return;
            }
        },
    };
    let reset = {
        let snapshot = Arc::clone(snapshot);
        let worktree = worktree.clone();
        tokio::task::spawn_blocking(move || workspace::reset_worktree(&snapshot, &worktree, &patch))
            .await
    };
    match reset {
        Ok(Ok(())) => shared.worktree_pool.give_back(worktree),
        Ok(Err(e)) => {
            tracing::warn!(
                "cannot reset worktree `{}` ({e}); removing it",
                worktree.path.display()
            );
            remove_worktree(snapshot, worktree).await;
        }
        Err(_) => remove_worktree(snapshot, worktree).await,
    }
}

async fn remove_worktree(snapshot: &Arc<Snapshot>, worktree: workspace::Worktree) {
    let root = snapshot.repo_root.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = workspace::remove_worktree(&root, &worktree) {
            tracing::warn!("cannot remove worktree `{}`: {e}", worktree.path.display());
        }
    })
    .await;
}

/// The agent's final text, for commit messages.
fn result_summary(transcript: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(transcript) else {
        return String::new();
    };
    text.lines()
        .rev()
        .find_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            (value.get("type")?.as_str()? == "result").then(|| {
                value
                    .get("result")
                    .and_then(|r| r.as_str())
                    .unwrap_or("")
                    .to_owned()
            })
        })
        .unwrap_or_default()
}

/// Lands a patch per `--apply`, serialized so diffs land in completion order.
async fn land(
    shared: &Arc<RunShared>,
    snapshot: &Arc<Snapshot>,
    patch: &Patch,
    id: &str,
    summary: &str,
    result: &mut JobResult,
) -> Result<(), String> {
    if patch.is_empty() {
        return Ok(());
    }
    let _guard = shared.apply_lock.lock().await;
    let snapshot = Arc::clone(snapshot);
    let patch2 = patch.clone();
    let mode = shared.apply_mode;
    let branch = format!("ccflow/{}", shared.run_id);
    let first_line = summary
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    let message = format!("ccflow: {id}\n\n{first_line}\n\nrun {}", shared.run_id);
    let outcome = tokio::task::spawn_blocking(move || match mode {
        ApplyMode::Worktree => workspace::apply(&snapshot, &patch2).map(Some),
        ApplyMode::Branch => {
            workspace::commit_to_branch(&snapshot, &branch, &patch2, &message).map(|_| None)
        }
        ApplyMode::None => Ok(None),
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot apply the agent's diff: {e}"))?;
    if let Some(ApplyOutcome::Conflict { paths, .. }) = outcome {
        result.status = InstanceStatus::Conflict;
        result.message = Some(format!(
            "the agent's diff conflicts with the working tree in {}; its patch is kept in the run record",
            paths.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// A cache hit: re-apply the cached patch. `None` when there is no usable entry.
async fn cache_hit(
    shared: &Arc<RunShared>,
    id: &str,
    key: &KeyHash,
    agents_dir: &Path,
    file_stem: &str,
) -> Option<Result<(Usage, BTreeMap<String, String>), String>> {
    let store = shared.store.as_ref()?;
    let entry = match store.lookup(key) {
        Ok(Some(entry)) => entry,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!("cache lookup for `{id}` failed ({e}); running it");
            return None;
        }
    };
    let usage: Usage = entry
        .metadata
        .get("usage")
        .and_then(|u| serde_json::from_value(u.clone()).ok())
        .unwrap_or_default();
    let mut artifacts = BTreeMap::new();
    let patch = match entry.attachments.get("patch") {
        Some(hash) => match store
            .read_blob(hash)
            .map_err(|e| e.to_string())
            .and_then(|b| Patch::from_bytes(&b).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cached patch of `{id}` is unreadable ({e}); running it");
                return None;
            }
        },
        None => Patch::default(),
    };
    if let Some(hash) = entry.attachments.get("transcript") {
        if let Ok(bytes) = store.read_blob(hash) {
            let path = agents_dir.join(format!("{file_stem}.cached.ndjson"));
            if fs_err::write(&path, bytes).is_ok() {
                artifacts.insert("transcript".into(), rel(shared, &path));
            }
        }
    }
    if patch.is_empty() {
        return Some(Ok((usage, artifacts)));
    }
    let snapshot = match snapshot(shared).await {
        Ok(s) => s,
        Err(message) => return Some(Err(format!("cannot snapshot the working tree: {message}"))),
    };
    let mut scratch = JobResult::empty();
    if let Err(message) = land(shared, &snapshot, &patch, id, "cached result", &mut scratch).await {
        return Some(Err(message));
    }
    if scratch.status == InstanceStatus::Conflict {
        return Some(Err(scratch.message.unwrap_or_default()));
    }
    Some(Ok((usage, artifacts)))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the entry's parts"
)]
fn save_agent(
    shared: &RunShared,
    id: &str,
    key: CacheKey,
    (inputs, patterns): (&BTreeMap<String, String>, &[String]),
    patch: &[u8],
    changed: &[String],
    transcript: &Path,
    usage: Usage,
) -> Result<(), String> {
    let Some(store) = &shared.store else {
        return Ok(());
    };
    let temp = shared
        .run_dir
        .join("agents")
        .join(format!("{}.patch.bin", file_name_for(id)));
    fs_err::write(&temp, patch).map_err(|e| e.to_string())?;
    // Post-state: the files the patch touched, as the user's tree holds them now.
    let mut post_state = BTreeMap::new();
    let mut post = key.clone();
    for path in changed {
        let full = shared.root.join(path);
        if full.is_file() {
            let hash = shared
                .index
                .hash_file(&shared.root, path)
                .map_err(|e| e.to_string())?;
            post_state.insert(path.clone(), hash.hash.clone());
            if inputs.contains_key(path) || key.inputs.contains_key(path) {
                post.inputs.insert(path.clone(), hash.hash);
            }
        } else if post.inputs.remove(path).is_some() {
            post_state.insert(path.clone(), String::new());
        }
    }
    // Files the agent created under the input globs are inputs of the next run.
    if let Ok(files) = super::paths::expand(&shared.root, patterns, true) {
        for file in files {
            if !post.inputs.contains_key(&file) && changed.contains(&file) {
                if let Ok(hash) = shared.index.hash_file(&shared.root, &file) {
                    post.inputs.insert(file, hash.hash);
                }
            }
        }
    }
    let mut keys = vec![key.hash()];
    let post_hash = post.hash();
    if post_hash != keys[0] {
        keys.push(post_hash);
    }
    let mut attachments = BTreeMap::new();
    attachments.insert("patch".to_owned(), temp.clone());
    if transcript.exists() {
        attachments.insert("transcript".to_owned(), transcript.to_path_buf());
    }
    let entry = NewEntry {
        instance_id: id.to_owned(),
        key,
        outputs: Vec::new(),
        exit_code: 0,
        log: None,
        attachments,
        post_state,
        metadata: serde_json::json!({ "usage": usage }),
    };
    store
        .save(&keys, entry, &shared.root)
        .map_err(|e| e.to_string())?;
    let _ = fs_err::remove_file(&temp);
    Ok(())
}

/// Runs the `verify` check in the worktree; returns (passed, output).
async fn run_verify(
    shared: &RunShared,
    check: &str,
    dir: &Path,
    env: &[(String, String)],
) -> (bool, Vec<u8>) {
    let log = std::env::temp_dir().join(format!(
        "ccflow-verify-{}-{}.log",
        std::process::id(),
        fastrand::u64(..)
    ));
    let spec = super::local::ProcessSpec {
        command: super::local::CommandLine::Shell {
            interpreter: vec!["sh".into(), "-c".into()],
            script: check.to_owned(),
        },
        env: env.to_vec(),
        cwd: dir.to_path_buf(),
        log_path: log.clone(),
        timeout: Some(Duration::from_secs(1800)),
        kill_grace: shared.kill_grace,
        masks: shared
            .masks()
            .into_iter()
            .chain(CREDENTIALS.iter().filter_map(|k| std::env::var(k).ok()))
            .filter(|v| !v.is_empty())
            .collect(),
        log_limit: 1024 * 1024,
        stdin: None,
        instance_token: format!("{}/verify/{}", shared.run_id, fastrand::u64(..)),
    };
    let report = super::local::run(spec, shared.cancel.clone(), None).await;
    let output = std::fs::read(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (report.outcome.is_success(), output)
}
