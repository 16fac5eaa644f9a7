//! A small builder that runs the real `ccflow` binary in a fresh temp dir:
//! `Test::new().file(path, content).args(&[..]).run()`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One invocation of `ccflow`, in its own temporary repository.
pub struct Test {
    dir: tempfile::TempDir,
    args: Vec<String>,
    cwd: Option<PathBuf>,
}

/// What the process did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Test {
    /// A new temp dir holding an empty `.claudecluster/` (so it is the root).
    pub fn new() -> Test {
        let dir = tempfile::tempdir().expect("create a temp dir");
        std::fs::create_dir_all(dir.path().join(".claudecluster")).expect("create .claudecluster");
        Test {
            dir,
            args: Vec::new(),
            cwd: None,
        }
    }

    /// Writes `content` at `path` (relative to the temp dir), creating folders.
    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Test {
        let full = self.dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("create parent folder");
        }
        std::fs::write(&full, content).expect("write test file");
        self
    }

    pub fn args(mut self, args: &[&str]) -> Test {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Runs in `dir` instead of the temp dir (e.g. the ccflow repository).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Test {
        self.cwd = Some(dir.into());
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn run(&self) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_ccflow"))
            .args(&self.args)
            .current_dir(self.cwd.as_deref().unwrap_or(self.dir.path()))
            .env("NO_COLOR", "1")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("CCFLOW_STATE_DIR")
            .output()
            .expect("spawn ccflow");
        Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The ccflow repository (where `Cargo.toml` is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
