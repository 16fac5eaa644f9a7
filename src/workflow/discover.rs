//! Finding the repository root, the state directory and workflow files
//! (SPEC §1): the root is the first folder upwards holding `.claudecluster/`,
//! else the git work tree root, else the current directory.

use std::path::{Path, PathBuf};

/// The folder holding workflows, relative to the root.
pub const WORKFLOW_DIR: &str = ".claudecluster";

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("no workflow `{name}`: looked for {}", tried.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", "))]
    NotFound {
        name: String,
        tried: Vec<PathBuf>,
        available: Vec<String>,
    },
    #[error("cannot read the current directory: {0}")]
    Cwd(std::io::Error),
}

/// Finds the repository root from `start`.
#[must_use]
pub fn find_root(start: &Path) -> PathBuf {
    for dir in start.ancestors() {
        if dir.join(WORKFLOW_DIR).is_dir() {
            return dir.to_path_buf();
        }
    }
    for dir in start.ancestors() {
        if dir.join(".git").exists() {
            return dir.to_path_buf();
        }
    }
    start.to_path_buf()
}

/// The state directory: `$CCFLOW_STATE_DIR`, else `ROOT/.ccflow`.
#[must_use]
pub fn state_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CCFLOW_STATE_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        }
        _ => root.join(".ccflow"),
    }
}

/// Every workflow file under `ROOT/.claudecluster`, sorted.
#[must_use]
pub fn list_workflows(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join(WORKFLOW_DIR)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    files
}

/// Resolves a workflow argument: as a path first, then as
/// `.claudecluster/NAME`, `.claudecluster/NAME.yaml`, `.claudecluster/NAME.yml`.
///
/// # Errors
/// [`DiscoverError::NotFound`] listing what was tried and what exists.
pub fn resolve_workflow(arg: &str, cwd: &Path, root: &Path) -> Result<PathBuf, DiscoverError> {
    let direct = cwd.join(arg);
    if direct.is_file() {
        return Ok(direct);
    }
    let dir = root.join(WORKFLOW_DIR);
    let mut tried = vec![direct];
    let stem = Path::new(arg)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for candidate in [stem.clone(), format!("{stem}.yaml"), format!("{stem}.yml")] {
        let path = dir.join(&candidate);
        if path.is_file() {
            return Ok(path);
        }
        tried.push(path);
    }
    let available = list_workflows(root)
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    Err(DiscoverError::NotFound {
        name: arg.to_owned(),
        tried,
        available,
    })
}
