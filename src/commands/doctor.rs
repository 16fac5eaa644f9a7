//! `ccflow doctor`: what this machine offers ccflow — the Docker engine, the
//! claude CLI, git — each with its version or the reason it is missing.

use super::Ctx;
use crate::error::{CommandResult, ExitStatus};

/// Prints the report; exits 0 even when something is missing (it is a report).
///
/// # Errors
/// Never; kept fallible like every command.
pub fn run(ctx: &Ctx) -> CommandResult {
    crate::outln!("ccflow {}", env!("CARGO_PKG_VERSION"));
    crate::outln!("repository root: {}", ctx.root.display());
    crate::outln!("state directory: {}", ctx.state_dir.display());
    // git
    let (major, minor, rev) = git2::Version::get().libgit2_version();
    crate::outln!("libgit2: {major}.{minor}.{rev}");
    match std::process::Command::new("git").arg("--version").output() {
        Ok(out) if out.status.success() => {
            crate::outln!("git: {}", String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => crate::outln!("git: not found (optional; ccflow uses libgit2)"),
    }
    match git2::Repository::discover(&ctx.root) {
        Ok(_) => crate::outln!("git repository: yes (agent tasks can run)"),
        Err(_) => crate::outln!("git repository: no — agent tasks need one (`git init`)"),
    }
    // claude
    match crate::agent::find_claude(None) {
        Ok(binary) => match crate::agent::claude_version(&binary) {
            Ok(version) => crate::outln!("claude CLI: {} ({version})", binary.display()),
            Err(e) => crate::outln!(
                "claude CLI: {} (cannot read its version: {e})",
                binary.display()
            ),
        },
        Err(e) => crate::outln!("claude CLI: {e}"),
    }
    // docker
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(async {
            match crate::exec::docker::DockerRunner::connect().await {
                Ok(docker) => match docker.engine_info().await {
                    Ok(info) => crate::outln!(
                        "docker engine: {} (server {}, API {} negotiated {}, {}/{})",
                        info.host,
                        info.server_version,
                        info.api_version,
                        info.negotiated_api_version,
                        info.os,
                        info.arch
                    ),
                    Err(e) => {
                        crate::outln!("docker engine: reachable at {} but: {e}", docker.host())
                    }
                },
                Err(e) => {
                    let hint = e
                        .hint()
                        .map(|h| format!(" (hint: {h})"))
                        .unwrap_or_default();
                    crate::outln!("docker engine: {e}{hint} — `runner: docker` tasks cannot run");
                }
            }
        }),
        Err(e) => crate::outln!("docker engine: cannot start a runtime: {e}"),
    }
    Ok(ExitStatus::Success)
}
