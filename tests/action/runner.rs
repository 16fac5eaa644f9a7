//! Runs the composite action in `action.yml` the way the GitHub runner
//! does, on this machine: steps in order, `if:` conditions, `${{ }}` in
//! `env:`/`with:`/`working-directory:`, `run:` scripts under
//! `bash --noprofile --norc -eo pipefail`, a fresh `GITHUB_OUTPUT`,
//! `GITHUB_ENV`, `GITHUB_PATH` and `GITHUB_STEP_SUMMARY` per step (read back
//! afterwards, `name=value` and `name<<DELIMITER` forms), and the action's
//! outputs evaluated at the end.
//!
//! Third-party actions cannot run here, so the ones the action uses are
//! emulated by what they do to the job: `actions/cache` (restore, save, and
//! the combined form with its post step) copies paths to and from a "cache
//! storage" folder with GitHub's key rules (an exact key is immutable; else
//! the newest entry matching a restore key prefix), and
//! `actions/upload-artifact` records the path after checking that it exists.
//! Any other `uses:` is an error, and so is a reference not pinned to a
//! commit SHA.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

use super::expr::{self, Context, JobStatus, Value};

/// One run of the action: where it runs and with what.
pub struct ActionRun {
    /// The folder holding `action.yml` (`GITHUB_ACTION_PATH`).
    pub action_dir: PathBuf,
    /// The checked-out repository (`GITHUB_WORKSPACE`).
    pub workspace: PathBuf,
    /// `RUNNER_TEMP`; created when missing.
    pub runner_temp: PathBuf,
    /// Where the emulated actions/cache keeps its entries.
    pub cache_storage: PathBuf,
    /// `HOME` of every step.
    pub home: PathBuf,
    /// Folders put first on `PATH` (the ccflow under test, stand-ins).
    pub path_prefix: Vec<PathBuf>,
    pub inputs: BTreeMap<String, String>,
    /// The `github` context (`sha`, `repository`, `ref_name`, ...); also
    /// exported as `GITHUB_*` variables.
    pub github: BTreeMap<String, String>,
    /// The job's `env:`, seen by every step.
    pub job_env: BTreeMap<String, String>,
}

/// What happened to one step.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub id: String,
    pub conclusion: Conclusion,
    pub outputs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conclusion {
    Success,
    Failure,
    Skipped,
}

impl Conclusion {
    fn word(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Skipped => "skipped",
        }
    }
}

/// An uploaded artifact (emulated).
#[derive(Debug, Clone)]
pub struct Artifact {
    pub name: String,
    pub path: PathBuf,
}

/// The result of running the action.
#[derive(Debug)]
pub struct Outcome {
    pub failed: bool,
    pub steps: Vec<StepReport>,
    /// The action's outputs, from `outputs.*.value`.
    pub outputs: BTreeMap<String, String>,
    /// Every step's `GITHUB_STEP_SUMMARY`, concatenated.
    pub summary: String,
    pub artifacts: Vec<Artifact>,
    /// stdout and stderr of every step and the emulated actions' notices.
    pub log: String,
}

impl Outcome {
    /// The report of the step with this id.
    pub fn step(&self, id: &str) -> &StepReport {
        self.steps
            .iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no step `{id}` in {:?}", self.steps))
    }

    /// An output of the action (empty when unset).
    pub fn output(&self, name: &str) -> &str {
        self.outputs.get(name).map_or("", String::as_str)
    }
}

fn text(yaml: &Yaml) -> Option<String> {
    match yaml {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn pairs(yaml: &Yaml) -> Vec<(String, String)> {
    yaml.as_hash()
        .map(|hash| {
            hash.iter()
                .filter_map(|(k, v)| Some((text(k)?, text(v).unwrap_or_default())))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a `GITHUB_OUTPUT`/`GITHUB_ENV` file: `name=value` lines and
/// `name<<DELIMITER` blocks.
pub fn parse_command_file(content: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut lines = content.lines();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let heredoc = line
            .find("<<")
            .filter(|&at| line.find('=').is_none_or(|eq| at < eq));
        if let Some(at) = heredoc {
            let (name, delimiter) = (&line[..at], &line[at + 2..]);
            let mut value = Vec::new();
            loop {
                match lines.next() {
                    Some(l) if l == delimiter => break,
                    Some(l) => value.push(l),
                    None => return Err(format!("missing delimiter `{delimiter}` for `{name}`")),
                }
            }
            out.push((name.to_string(), value.join("\n")));
        } else if let Some((name, value)) = line.split_once('=') {
            out.push((name.to_string(), value.to_string()));
        } else {
            return Err(format!("invalid line `{line}`"));
        }
    }
    Ok(out)
}

fn absolute(path: &str, workspace: &Path, home: &Path) -> PathBuf {
    if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else {
        workspace.join(path)
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create `{}`: {e}", to.display()))?;
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .map_err(|e| format!("cannot run cp: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "cp `{}` → `{}` failed",
            from.display(),
            to.display()
        ))
    }
}

/// The emulated cache service: `ENTRY/key` and `ENTRY/data/N/` per entry,
/// entries numbered in creation order.
pub struct CacheStorage {
    pub dir: PathBuf,
}

impl CacheStorage {
    /// Every entry's key, oldest first.
    pub fn keys(&self) -> Vec<String> {
        self.entries().into_iter().map(|(_, key)| key).collect()
    }

    fn entries(&self) -> Vec<(PathBuf, String)> {
        let Ok(read) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries: Vec<(PathBuf, String)> = read
            .filter_map(Result::ok)
            .filter_map(|e| {
                Some((
                    e.path(),
                    std::fs::read_to_string(e.path().join("key")).ok()?,
                ))
            })
            .collect();
        entries.sort();
        entries
    }

    fn restore(
        &self,
        paths: &[PathBuf],
        key: &str,
        restore_keys: &[String],
    ) -> Result<Option<String>, String> {
        let entries = self.entries();
        let exact = entries.iter().find(|(_, k)| k == key);
        let found = exact.or_else(|| {
            restore_keys.iter().find_map(|prefix| {
                entries
                    .iter()
                    .rev()
                    .find(|(_, k)| k.starts_with(prefix.as_str()))
            })
        });
        let Some((dir, matched)) = found else {
            return Ok(None);
        };
        for (i, path) in paths.iter().enumerate() {
            let data = dir.join("data").join(i.to_string());
            if data.is_dir() {
                copy_tree(&data, path)?;
            }
        }
        Ok(Some(matched.clone()))
    }

    fn save(&self, paths: &[PathBuf], key: &str) -> Result<String, String> {
        if self.entries().iter().any(|(_, k)| k == key) {
            return Ok(format!("cache entry `{key}` exists already; not saved"));
        }
        if !paths.iter().any(|p| p.exists()) {
            return Ok("no path to cache exists; not saved".to_string());
        }
        let dir = self.dir.join(format!("{:06}", self.entries().len()));
        for (i, path) in paths.iter().enumerate() {
            if path.is_dir() {
                copy_tree(path, &dir.join("data").join(i.to_string()))?;
            }
        }
        std::fs::write(dir.join("key"), key)
            .map_err(|e| format!("cannot write the cache key: {e}"))?;
        Ok(format!("cache saved with key `{key}`"))
    }
}

struct State<'a> {
    run: &'a ActionRun,
    inputs: BTreeMap<String, String>,
    steps: BTreeMap<String, Value>,
    env: BTreeMap<String, String>,
    extra_path: Vec<PathBuf>,
    status: JobStatus,
    summary: String,
    log: String,
    artifacts: Vec<Artifact>,
    post_saves: Vec<(Vec<PathBuf>, String, bool)>,
}

impl State<'_> {
    fn root(&self) -> Value {
        let mut github: BTreeMap<String, Value> = self
            .run
            .github
            .iter()
            .map(|(k, v)| (k.to_lowercase(), Value::from(v)))
            .collect();
        github.insert(
            "workspace".into(),
            Value::from(self.run.workspace.display().to_string()),
        );
        github.insert(
            "action_path".into(),
            Value::from(self.run.action_dir.display().to_string()),
        );
        Value::object([
            (
                "inputs",
                Value::object(self.inputs.iter().map(|(k, v)| (k, Value::from(v)))),
            ),
            ("steps", Value::Object(self.steps.clone())),
            ("github", Value::Object(github)),
            (
                "runner",
                Value::object([
                    ("temp", self.run.runner_temp.display().to_string()),
                    ("os", "Linux".into()),
                    ("arch", "X64".into()),
                ]),
            ),
            (
                "env",
                Value::object(
                    self.run
                        .job_env
                        .iter()
                        .chain(&self.env)
                        .map(|(k, v)| (k, Value::from(v))),
                ),
            ),
        ])
    }

    fn interpolate(&self, text: &str) -> Result<String, String> {
        let root = self.root();
        expr::interpolate(
            text,
            &Context {
                root: &root,
                status: self.status,
            },
        )
    }

    fn condition(&self, text: &str) -> Result<bool, String> {
        let root = self.root();
        expr::condition(
            text,
            &Context {
                root: &root,
                status: self.status,
            },
        )
    }

    fn with_values(&self, step: &Yaml) -> Result<BTreeMap<String, String>, String> {
        pairs(&step["with"])
            .into_iter()
            .map(|(k, v)| Ok((k, self.interpolate(&v)?)))
            .collect()
    }

    fn paths(&self, with: &BTreeMap<String, String>) -> Vec<PathBuf> {
        with.get("path")
            .map(|p| {
                p.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| absolute(l, &self.run.workspace, &self.run.home))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn lines(with: &BTreeMap<String, String>, name: &str) -> Vec<String> {
        with.get(name)
            .map(|v| {
                v.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn github_env(&self) -> Vec<(String, String)> {
        let w = |p: &Path| p.display().to_string();
        let mut vars = vec![
            ("GITHUB_ACTIONS".to_string(), "true".to_string()),
            ("CI".to_string(), "true".to_string()),
            ("GITHUB_WORKSPACE".to_string(), w(&self.run.workspace)),
            ("GITHUB_ACTION_PATH".to_string(), w(&self.run.action_dir)),
            ("RUNNER_TEMP".to_string(), w(&self.run.runner_temp)),
            ("RUNNER_OS".to_string(), "Linux".to_string()),
            ("RUNNER_ARCH".to_string(), "X64".to_string()),
        ];
        for (key, value) in &self.run.github {
            if key != "token" {
                vars.push((format!("GITHUB_{}", key.to_uppercase()), value.clone()));
            }
        }
        vars
    }

    /// Runs a `run:` step; returns its outputs and whether it succeeded.
    fn run_script(
        &mut self,
        index: usize,
        step: &Yaml,
        script: &str,
    ) -> Result<(BTreeMap<String, String>, bool), String> {
        let shell = step["shell"]
            .as_str()
            .ok_or("a composite `run:` step needs `shell:`")?;
        if shell != "bash" {
            return Err(format!("unsupported shell `{shell}`"));
        }
        let dir = self
            .run
            .runner_temp
            .join("_harness")
            .join(index.to_string());
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let files = ["output", "env", "path", "summary"].map(|name| dir.join(name));
        for file in &files {
            std::fs::write(file, "")
                .map_err(|e| format!("cannot create `{}`: {e}", file.display()))?;
        }
        let script_path = dir.join("script.sh");
        std::fs::write(&script_path, script)
            .map_err(|e| format!("cannot write the script: {e}"))?;

        let mut path: Vec<PathBuf> = self.run.path_prefix.clone();
        path.extend(self.extra_path.iter().rev().cloned());
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let mut command = Command::new("bash");
        command
            .args(["--noprofile", "--norc", "-eo", "pipefail"])
            .arg(&script_path)
            .env_clear()
            .env(
                "PATH",
                std::env::join_paths(path).map_err(|e| e.to_string())?,
            )
            .env("HOME", &self.run.home)
            .env("LANG", "C.UTF-8")
            .envs(&self.run.job_env)
            .envs(self.github_env())
            .env("GITHUB_OUTPUT", &files[0])
            .env("GITHUB_ENV", &files[1])
            .env("GITHUB_PATH", &files[2])
            .env("GITHUB_STEP_SUMMARY", &files[3])
            .envs(&self.env);
        for (key, value) in pairs(&step["env"]) {
            command.env(key, self.interpolate(&value)?);
        }
        let workdir = match text(&step["working-directory"]) {
            Some(d) => self.run.workspace.join(self.interpolate(&d)?),
            None => self.run.workspace.clone(),
        };
        command.current_dir(workdir);
        let output = command
            .output()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        self.log.push_str(&String::from_utf8_lossy(&output.stdout));
        self.log.push_str(&String::from_utf8_lossy(&output.stderr));

        let read = |file: &PathBuf| {
            std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read `{}`: {e}", file.display()))
        };
        let outputs: BTreeMap<String, String> =
            parse_command_file(&read(&files[0])?)?.into_iter().collect();
        self.env.extend(parse_command_file(&read(&files[1])?)?);
        self.extra_path.extend(
            read(&files[2])?
                .lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from),
        );
        self.summary.push_str(&read(&files[3])?);
        Ok((outputs, output.status.success()))
    }

    /// Emulates a `uses:` step; returns its outputs and whether it succeeded.
    fn run_uses(
        &mut self,
        step: &Yaml,
        uses: &str,
    ) -> Result<(BTreeMap<String, String>, bool), String> {
        let (name, reference) = uses
            .split_once('@')
            .ok_or_else(|| format!("`{uses}` names no version"))?;
        if reference.len() != 40 || !reference.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("`{uses}` is not pinned to a full commit SHA"));
        }
        let with = self.with_values(step)?;
        let storage = CacheStorage {
            dir: self.run.cache_storage.clone(),
        };
        let mut outputs = BTreeMap::new();
        match name {
            "actions/cache/restore" | "actions/cache" => {
                let key = with.get("key").cloned().unwrap_or_default();
                let paths = self.paths(&with);
                let matched = storage.restore(&paths, &key, &Self::lines(&with, "restore-keys"))?;
                let hit = matched.as_deref() == Some(key.as_str());
                let _ = writeln!(
                    self.log,
                    "[harness] {name}: key `{key}` matched {matched:?}"
                );
                outputs.insert("cache-hit".into(), hit.to_string());
                outputs.insert("cache-primary-key".into(), key.clone());
                outputs.insert("cache-matched-key".into(), matched.unwrap_or_default());
                if name == "actions/cache" {
                    self.post_saves.push((paths, key, hit));
                }
            }
            "actions/cache/save" => {
                let notice = storage.save(
                    &self.paths(&with),
                    with.get("key").map_or("", String::as_str),
                )?;
                let _ = writeln!(self.log, "[harness] {name}: {notice}");
            }
            "actions/upload-artifact" => {
                let paths = self.paths(&with);
                let artifact_name = with
                    .get("name")
                    .cloned()
                    .unwrap_or_else(|| "artifact".into());
                let missing = paths.iter().filter(|p| !p.exists()).count();
                if paths.is_empty() || missing > 0 {
                    let mode = with.get("if-no-files-found").map_or("warn", String::as_str);
                    let _ = writeln!(
                        self.log,
                        "[harness] {name}: {missing} of {} paths missing ({mode})",
                        paths.len()
                    );
                    return Ok((outputs, mode != "error"));
                }
                self.artifacts
                    .extend(paths.into_iter().map(|path| Artifact {
                        name: artifact_name.clone(),
                        path,
                    }));
            }
            other => return Err(format!("the harness cannot emulate `{other}`")),
        }
        Ok((outputs, true))
    }
}

impl ActionRun {
    /// Runs every step of `action_dir/action.yml` and returns what happened.
    ///
    /// # Errors
    /// A malformed `action.yml` or something the harness does not support;
    /// a failing step is not an error (see [`Outcome::failed`]).
    pub fn execute(&self) -> Result<Outcome, String> {
        let source = std::fs::read_to_string(self.action_dir.join("action.yml"))
            .map_err(|e| format!("cannot read action.yml: {e}"))?;
        let documents =
            YamlLoader::load_from_str(&source).map_err(|e| format!("action.yml: {e}"))?;
        let action = documents.first().ok_or("action.yml is empty")?;
        if action["runs"]["using"].as_str() != Some("composite") {
            return Err("action.yml is not a composite action".into());
        }
        std::fs::create_dir_all(&self.runner_temp)
            .map_err(|e| format!("cannot create RUNNER_TEMP: {e}"))?;
        std::fs::create_dir_all(&self.cache_storage)
            .map_err(|e| format!("cannot create the cache storage: {e}"))?;

        let mut state = State {
            run: self,
            inputs: BTreeMap::new(),
            steps: BTreeMap::new(),
            env: BTreeMap::new(),
            extra_path: Vec::new(),
            status: JobStatus::default(),
            summary: String::new(),
            log: String::new(),
            artifacts: Vec::new(),
            post_saves: Vec::new(),
        };
        // Inputs: given values, else defaults (which may hold expressions).
        let declared = action["inputs"]
            .as_hash()
            .ok_or("action.yml declares no inputs")?;
        for (name, spec) in declared {
            let name = text(name).ok_or("an input name is not a string")?;
            let value = match self.inputs.get(&name) {
                Some(value) => value.clone(),
                None if spec["required"].as_bool() == Some(true) => {
                    return Err(format!("input `{name}` is required"))
                }
                None => state.interpolate(&text(&spec["default"]).unwrap_or_default())?,
            };
            state.inputs.insert(name, value);
        }
        if let Some(unknown) = self.inputs.keys().find(|k| !state.inputs.contains_key(*k)) {
            return Err(format!("unknown input `{unknown}`"));
        }

        let steps = action["runs"]["steps"]
            .as_vec()
            .ok_or("action.yml has no steps")?;
        let mut reports = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let id = step["id"]
                .as_str()
                .map_or_else(|| format!("#{index}"), String::from);
            let run = match text(&step["if"]) {
                Some(condition) => state.condition(&condition)?,
                None => !state.status.failed,
            };
            let (outputs, conclusion) = if run {
                let (outputs, ok) = match (step["run"].as_str(), step["uses"].as_str()) {
                    // The runner expands `${{ }}` in scripts too (the action
                    // must not rely on it: that is script injection).
                    (Some(script), None) => {
                        let script = state.interpolate(script)?;
                        state.run_script(index, step, &script)?
                    }
                    (None, Some(uses)) => state.run_uses(step, uses)?,
                    _ => return Err(format!("step `{id}` needs exactly one of `run` and `uses`")),
                };
                if !ok {
                    state.status.failed = true;
                }
                (
                    outputs,
                    if ok {
                        Conclusion::Success
                    } else {
                        Conclusion::Failure
                    },
                )
            } else {
                (BTreeMap::new(), Conclusion::Skipped)
            };
            let _ = writeln!(state.log, "[harness] step `{id}`: {}", conclusion.word());
            state.steps.insert(
                id.to_lowercase(),
                Value::object([
                    (
                        "outputs",
                        Value::object(outputs.iter().map(|(k, v)| (k, Value::from(v)))),
                    ),
                    ("outcome", Value::from(conclusion.word())),
                    ("conclusion", Value::from(conclusion.word())),
                ]),
            );
            reports.push(StepReport {
                id,
                conclusion,
                outputs,
            });
        }

        let mut outputs = BTreeMap::new();
        if let Some(declared) = action["outputs"].as_hash() {
            for (name, spec) in declared {
                let name = text(name).ok_or("an output name is not a string")?;
                outputs.insert(
                    name,
                    state.interpolate(&text(&spec["value"]).unwrap_or_default())?,
                );
            }
        }
        // Post steps of actions/cache: save on success unless it was a hit.
        let storage = CacheStorage {
            dir: self.cache_storage.clone(),
        };
        for (paths, key, hit) in std::mem::take(&mut state.post_saves) {
            if !hit && !state.status.failed {
                let notice = storage.save(&paths, &key)?;
                let _ = writeln!(state.log, "[harness] post actions/cache: {notice}");
            }
        }
        Ok(Outcome {
            failed: state.status.failed,
            steps: reports,
            outputs,
            summary: state.summary,
            artifacts: state.artifacts,
            log: state.log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_command_file;

    #[test]
    fn command_files_accept_both_forms() {
        let parsed = parse_command_file("a=1\nb<<EOF\nx=y\nz\nEOF\nc=\n").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x=y\nz".into()),
                ("c".into(), String::new())
            ]
        );
        assert!(parse_command_file("d<<END\nnever closed\n").is_err());
    }
}
