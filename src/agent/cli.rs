//! The `claude` command line: where the binary is, which version it is (part
//! of the cache key), and the exact arguments of a session (SPEC §5).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use super::error::AgentError;

/// The `agent:` keys of a task, as the CLI needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOptions {
    /// The prompt (sent on stdin, never as an argument).
    pub prompt: String,
    /// `--model`.
    pub model: Option<String>,
    /// `--max-turns`.
    pub max_turns: Option<u32>,
    /// `--max-budget-usd`.
    pub max_budget_usd: Option<f64>,
    /// `--allowedTools`, one flag per entry.
    pub allowed_tools: Vec<String>,
    /// `--disallowedTools`, one flag per entry.
    pub disallowed_tools: Vec<String>,
    /// `--append-system-prompt`.
    pub append_system_prompt: Option<String>,
    /// `--mcp-config` (a file path or inline JSON).
    pub mcp_config: Option<String>,
    /// `--permission-mode`; `acceptEdits` when absent.
    pub permission_mode: Option<String>,
    /// `agent.command`: the binary to run instead of `CCFLOW_CLAUDE`/`claude`.
    pub command: Option<String>,
    /// `--bare` (the default): no CLAUDE.md, hooks, settings or plugins.
    pub bare: bool,
}

impl Default for AgentOptions {
    fn default() -> AgentOptions {
        AgentOptions {
            prompt: String::new(),
            model: None,
            max_turns: None,
            max_budget_usd: None,
            allowed_tools: Vec::new(),
            disallowed_tools: Vec::new(),
            append_system_prompt: None,
            mcp_config: None,
            permission_mode: None,
            command: None,
            bare: true,
        }
    }
}

/// The permission mode when the task names none. `bypassPermissions` would
/// be refused anyway when running as root, and agents only need edits.
const DEFAULT_PERMISSION_MODE: &str = "acceptEdits";

/// Finds the `claude` binary: `command` (the task's `agent.command`), else
/// `CCFLOW_CLAUDE`, else `claude` on `PATH`. A value with a `/` is a path;
/// a bare name is looked up on `PATH`.
pub fn find_claude(command: Option<&str>) -> Result<PathBuf, AgentError> {
    let from_env = std::env::var("CCFLOW_CLAUDE")
        .ok()
        .filter(|value| !value.is_empty());
    let (wanted, origin) = match (command, from_env.as_deref()) {
        (Some(command), _) => (command.to_owned(), "`agent.command`"),
        (None, Some(value)) => (value.to_owned(), "`CCFLOW_CLAUDE`"),
        (None, None) => ("claude".to_owned(), "`PATH`"),
    };
    let not_found = || AgentError::ClaudeNotFound {
        searched: format!("`{wanted}` from {origin}"),
    };
    if wanted.contains('/') {
        let path = PathBuf::from(&wanted);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(not_found())
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(&wanted))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(not_found)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `claude --version` (e.g. `2.1.332 (Claude Code)`), run once per binary path
/// per process: it is part of every agent task's cache key.
pub fn claude_version(bin: &Path) -> Result<String, AgentError> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(version) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(bin)
    {
        return Ok(version.clone());
    }
    let output = std::process::Command::new(bin)
        .arg("--version")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| AgentError::VersionSpawn {
            binary: bin.to_path_buf(),
            source,
        })?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || version.is_empty() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(AgentError::VersionFailed {
            binary: bin.to_path_buf(),
            status: output.status.to_string(),
            stderr: stderr.chars().take(500).collect(),
        });
    }
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(bin.to_path_buf(), version.clone());
    Ok(version)
}

/// The CLI arguments of a session, exactly as SPEC §5 lists them:
/// `-p --output-format stream-json --verbose --bare --no-session-persistence
/// --strict-mcp-config` plus the mapped `agent:` keys. The prompt is not among
/// them (it goes on stdin). `resume` adds `--resume SESSION`;
/// `persist_session` drops `--no-session-persistence` (for verify loops that
/// resume the session later).
pub fn build_args(opts: &AgentOptions, resume: Option<&str>, persist_session: bool) -> Vec<String> {
    let mut args: Vec<String> = ["-p", "--output-format", "stream-json", "--verbose"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if opts.bare {
        args.push("--bare".to_owned());
    }
    if !persist_session {
        args.push("--no-session-persistence".to_owned());
    }
    args.push("--strict-mcp-config".to_owned());
    let mut flag = |name: &str, value: String| {
        args.push(name.to_owned());
        args.push(value);
    };
    if let Some(model) = &opts.model {
        flag("--model", model.clone());
    }
    if let Some(max_turns) = opts.max_turns {
        flag("--max-turns", max_turns.to_string());
    }
    if let Some(budget) = opts.max_budget_usd {
        flag("--max-budget-usd", budget.to_string());
    }
    // One flag per tool: a pattern such as `Bash(git diff:*)` holds spaces,
    // and the CLI's variadic option accepts repeated flags.
    for tool in &opts.allowed_tools {
        flag("--allowedTools", tool.clone());
    }
    for tool in &opts.disallowed_tools {
        flag("--disallowedTools", tool.clone());
    }
    if let Some(prompt) = &opts.append_system_prompt {
        flag("--append-system-prompt", prompt.clone());
    }
    if let Some(config) = &opts.mcp_config {
        flag("--mcp-config", config.clone());
    }
    let mode = opts
        .permission_mode
        .as_deref()
        .unwrap_or(DEFAULT_PERMISSION_MODE);
    flag("--permission-mode", mode.to_owned());
    if let Some(session) = resume {
        flag("--resume", session.to_owned());
    }
    args
}
