//! Makes sure no process started by a task outlives it.
//!
//! Every task runs in its own process group, which catches ordinary
//! background jobs (`sleep 1000 &`). Daemons leave the group (`setsid`, double
//! fork), so ccflow also becomes a child subreaper ([`init`]): any orphaned
//! descendant is re-parented to ccflow instead of init. After a task's main
//! process ends, [`cleanup`] looks at ccflow's own children — cheap, one
//! small `/proc/self/task/PID/children` read — and kills those that belong to
//! the task: members of its process group, or processes whose environment
//! carries the task's `CCFLOW_INSTANCE_TOKEN` (a child whose environment
//! reads empty, as one does in the middle of an exec, is looked at again for
//! a few milliseconds). Only those specific pids are
//! reaped with `waitpid(pid)`: `waitpid(-1)` would steal exit statuses tokio
//! (and other modules) wait for.
//!
//! A descendant that escapes the group *and* wipes its environment
//! (`setsid env -i ...`) carries no token; if it still holds the task's output
//! pipe, [`kill_pipe_holders`] finds it by the pipe's inode (a full `/proc`
//! scan, done only in that case). Not covered: such a process that also
//! closed its output, which nothing ties to its task any more; and an
//! escaped daemon that exits by itself before the scan stays a zombie (no
//! longer running) until ccflow exits, since its owner cannot be proven.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The environment variable that marks every process of a task instance.
pub const TOKEN_VAR: &str = "CCFLOW_INSTANCE_TOKEN";

/// How long [`cleanup`] keeps killing before giving up on processes that do
/// not die (uninterruptible sleep on a dead NFS mount, for instance).
const CLEANUP_DEADLINE: Duration = Duration::from_secs(5);

/// How long [`cleanup`] looks again at a child whose environment reads
/// empty: a process in the middle of an exec shows none until the kernel
/// has set up the new one (microseconds), and one that escaped the group
/// would otherwise survive if the last scan caught it then.
const EMPTY_ENVIRON_WINDOW: Duration = Duration::from_millis(10);

static SUBREAPER: OnceLock<bool> = OnceLock::new();

/// Pids of the main processes the local runner has spawned and not yet
/// reaped: tokio owns their exit status, so [`cleanup`] never touches them.
fn live_children() -> &'static Mutex<HashSet<u32>> {
    static LIVE: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Makes ccflow a child subreaper (`PR_SET_CHILD_SUBREAPER`), once; later
/// calls return the first result. Returns whether it is in effect.
pub fn init() -> bool {
    *SUBREAPER.get_or_init(|| {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument
        // and touches no memory of ours.
        let result = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if result != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot become a child subreaper; escaped daemons may outlive their task"
            );
        }
        result == 0
    })
}

/// Records a freshly spawned main process (see [`live_children`]).
pub fn register(pid: u32) {
    if let Ok(mut live) = live_children().lock() {
        live.insert(pid);
    }
}

/// Forgets a main process once tokio has reaped it.
pub fn unregister(pid: u32) {
    if let Ok(mut live) = live_children().lock() {
        live.remove(&pid);
    }
}

/// Sends `signal` to every process of the group `pgid`. Returns false when
/// the group no longer exists.
pub fn signal_group(pgid: u32, signal: i32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    if pgid <= 1 {
        // killpg(0) and killpg(1) would hit ccflow's own group or everything.
        return false;
    }
    // SAFETY: killpg has no memory effects.
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// Kills and reaps what a finished task left behind: the rest of its process
/// group `pgid` and the processes carrying its `token` that escaped the
/// group. Returns how many such processes it found. Call it only after the
/// main process has been reaped.
///
/// The group id cannot be reused while any member (even a zombie) exists, so
/// signalling it after the main process was reaped is safe; if the group is
/// empty, reuse would need the pid counter to wrap in between.
pub async fn cleanup(pgid: u32, token: &str) -> usize {
    let needle = format!("{TOKEN_VAR}={token}");
    let started = Instant::now();
    let deadline = started + CLEANUP_DEADLINE;
    let mut seen: HashSet<u32> = HashSet::new();
    let mut unreaped: HashSet<u32> = HashSet::new();
    loop {
        // Leftover group members die; their children re-parent to us.
        let group_alive = signal_group(pgid, libc::SIGKILL);
        let mut found_new = false;
        let mut unsure = false;
        for pid in own_children() {
            if unreaped.contains(&pid) || is_live_child(pid) {
                continue;
            }
            let Some(stat) = ProcStat::read(pid) else {
                continue;
            };
            let ours = stat.pgrp == pgid
                || (!stat.zombie
                    && match environ_has(pid, needle.as_bytes()) {
                        Environ::Has => true,
                        Environ::Lacks => false,
                        Environ::Empty => {
                            unsure = true;
                            false
                        }
                    });
            if !ours {
                continue;
            }
            if !stat.zombie {
                kill(pid, libc::SIGKILL);
            }
            found_new |= seen.insert(pid);
            unreaped.insert(pid);
        }
        unreaped.retain(|&pid| !try_reap(pid));
        let look_again = unsure && started.elapsed() < EMPTY_ENVIRON_WINDOW;
        if !group_alive && unreaped.is_empty() && !found_new && !look_again {
            return seen.len();
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                pgid,
                remaining = unreaped.len(),
                "processes of a finished task did not die after SIGKILL"
            );
            return seen.len();
        }
        // Killed processes need a moment to die and re-parent their children.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Kills every process holding an fd on the pipe with inode `inode` and
/// reaps those that are ccflow's children. Scans all of `/proc`, so it is
/// only called when a finished task's output pipe stays open. Returns how
/// many processes were killed.
pub async fn kill_pipe_holders(inode: u64) -> usize {
    let target = format!("pipe:[{inode}]");
    let own = std::process::id();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut holders = Vec::new();
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
        });
        if holds {
            kill(pid, libc::SIGKILL);
            holders.push(pid);
        }
    }
    // Holders re-parented to ccflow must be reaped; others belong to init.
    let mut unreaped: Vec<u32> = holders
        .iter()
        .copied()
        .filter(|&pid| own_children().contains(&pid))
        .collect();
    let deadline = Instant::now() + CLEANUP_DEADLINE;
    while !unreaped.is_empty() && Instant::now() < deadline {
        unreaped.retain(|&pid| !try_reap(pid));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    holders.len()
}

fn is_live_child(pid: u32) -> bool {
    live_children().lock().is_ok_and(|live| live.contains(&pid))
}

fn kill(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory effects.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Reaps `pid` if it has exited. True when it is gone (reaped now, or not
/// our child any more).
fn try_reap(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return true;
    };
    let mut status = 0;
    // SAFETY: waitpid writes only to `status`, a valid local.
    let result = unsafe { libc::waitpid(raw, &raw mut status, libc::WNOHANG) };
    result != 0
}

/// Pids of the children that orphans are re-parented to. The kernel hands an
/// orphan to the first live thread of the subreaper, which is the main thread
/// as long as it runs, so one small read usually suffices; when the main
/// thread is gone every thread's list is read.
#[must_use]
pub fn own_children() -> Vec<u32> {
    let mut pids = Vec::new();
    let leader = std::process::id();
    if let Ok(list) = std::fs::read_to_string(format!("/proc/self/task/{leader}/children")) {
        parse_pids(&list, &mut pids);
        return pids;
    }
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for thread in threads.flatten() {
        let mut path = thread.path();
        path.push("children");
        if let Ok(list) = std::fs::read_to_string(&path) {
            parse_pids(&list, &mut pids);
        }
    }
    pids
}

fn parse_pids(list: &str, pids: &mut Vec<u32>) {
    pids.extend(
        list.split_ascii_whitespace()
            .filter_map(|p| p.parse::<u32>().ok()),
    );
}

/// The fields of `/proc/PID/stat` cleanup needs. They survive in zombies.
struct ProcStat {
    zombie: bool,
    pgrp: u32,
}

impl ProcStat {
    fn read(pid: u32) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `comm` is parenthesised and may contain anything, so parse after
        // its last `)`: state, ppid, pgrp, ...
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next()?;
        let _ppid = fields.next()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(Self {
            zombie: state == "Z" || state == "X",
            pgrp,
        })
    }
}

/// What `/proc/PID/environ` says of the entry `needle`.
#[derive(Debug, PartialEq, Eq)]
enum Environ {
    /// It holds exactly that entry.
    Has,
    /// It holds others.
    Lacks,
    /// It reads empty or not at all: mid-exec, wiped (`env -i`), or gone.
    Empty,
}

fn environ_has(pid: u32, needle: &[u8]) -> Environ {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(environ) if environ.split(|&b| b == 0).any(|entry| entry == needle) => Environ::Has,
        Ok(environ) if !environ.is_empty() => Environ::Lacks,
        _ => Environ::Empty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child started with exactly `env`, killed and reaped on drop.
    struct Child(std::process::Child);

    impl Child {
        fn spawn(env: &[(&str, &str)]) -> Child {
            let mut command = std::process::Command::new("/bin/sleep");
            command.arg("30").env_clear();
            for (name, value) in env {
                command.env(name, value);
            }
            Child(command.spawn().expect("spawn sleep"))
        }

        /// What its environ says once it is past its exec (an environ
        /// reads empty until the kernel has set up the new one).
        fn settled(&self, needle: &[u8], expected: &Environ) -> Environ {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let now = environ_has(self.0.id(), needle);
                if now == *expected || Instant::now() > deadline {
                    return now;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn an_environ_has_the_token_lacks_it_or_reads_empty() {
        let needle = format!("{TOKEN_VAR}=t-1");
        let with = Child::spawn(&[(TOKEN_VAR, "t-1"), ("LANG", "C")]);
        let other = Child::spawn(&[(TOKEN_VAR, "t-2")]);
        let empty = Child::spawn(&[]);
        assert_eq!(with.settled(needle.as_bytes(), &Environ::Has), Environ::Has);
        assert_eq!(
            other.settled(needle.as_bytes(), &Environ::Lacks),
            Environ::Lacks
        );
        // Empty whether or not its exec is over: cleanup looks at such a
        // process again for a moment instead of passing it by.
        assert_eq!(environ_has(empty.0.id(), needle.as_bytes()), Environ::Empty);
        assert_eq!(environ_has(u32::MAX, needle.as_bytes()), Environ::Empty);
    }
}
