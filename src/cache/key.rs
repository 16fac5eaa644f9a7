//! The cache key of a task instance: every fact that decides its result, its
//! canonical hash, and a readable account of what changed between two keys
//! (for `ccflow explain`).
//!
//! The key is made only of sorted collections (`BTreeMap`, a sorted `Vec`)
//! so its JSON encoding is canonical: the same facts give the same bytes in
//! any process, whatever order the scheduler inserted them in. Secrets enter
//! by name only; their values never reach the key, the store or a log.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::CacheError;

/// Bumped whenever the meaning of a key or the store layout changes; it is
/// part of every key and of the store path (`cache/v2/`).
pub const CACHE_FORMAT_VERSION: u32 = 2;

/// `extra` entries named `vars.NAME` render as workflow variables in
/// [`KeyChange`] messages (the scheduler may record the variables a task's
/// templates used, so `explain` can name them rather than "the command").
pub const VAR_PREFIX: &str = "vars.";

/// Domain separation, so a key hash can never equal a content or digest hash
/// computed over the same bytes.
const KEY_DOMAIN: &[u8] = b"ccflow-cache-key\0";
const DIGEST_DOMAIN: &[u8] = b"ccflow-outputs-digest\0";

/// Everything that decides a task instance's result (SPEC §3).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    pub version: u32,
    /// The task name.
    pub task: String,
    /// The rendered command, or the agent request as canonical JSON.
    pub command: String,
    /// `local` or `docker`.
    pub runner: String,
    pub image_id: Option<String>,
    pub resources: BTreeMap<String, String>,
    /// Declared env values.
    pub env: BTreeMap<String, String>,
    /// Secret names only (sorted; [`CacheKey::hash`] sorts a copy anyway).
    pub secrets: Vec<String>,
    /// Repo-relative path -> hex content hash.
    pub inputs: BTreeMap<String, String>,
    /// Upstream instance id -> digest of its outputs (not its key: early cutoff).
    pub deps: BTreeMap<String, String>,
    /// Anything else that decides the result: claude CLI version, verify
    /// command, workdir, ...
    pub extra: BTreeMap<String, String>,
}

impl CacheKey {
    /// An empty key of the current format version for `task`; the scheduler
    /// fills in the rest.
    pub fn new(task: impl Into<String>) -> CacheKey {
        CacheKey {
            version: CACHE_FORMAT_VERSION,
            task: task.into(),
            command: String::new(),
            runner: "local".to_owned(),
            image_id: None,
            resources: BTreeMap::new(),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            inputs: BTreeMap::new(),
            deps: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// BLAKE3 over the version and the canonical JSON of the key.
    pub fn hash(&self) -> KeyHash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(KEY_DOMAIN);
        hasher.update(&self.version.to_le_bytes());
        // Streamed into the hasher, and the key copied only when its
        // secrets need sorting: a reduce's key lists every input, and
        // copying and buffering it cost more than hashing it.
        // Serialising plain strings and BTreeMaps cannot fail; the fallback
        // keeps this function total without a panic path, and still
        // differs per key because it hashes the Debug rendering too.
        // Buffered: serde writes each string and punctuation mark on its
        // own, and blake3 is fast on large updates, slow on many tiny ones
        // (a key over 1,000 inputs: 0.46 ms unbuffered).
        let mut buffered = std::io::BufWriter::with_capacity(16 * 1024, &mut hasher);
        let written = if self.secrets.windows(2).all(|w| w[0] < w[1]) {
            serde_json::to_writer(&mut buffered, self)
        } else {
            serde_json::to_writer(&mut buffered, &self.canonical())
        }
        .map_err(std::io::Error::from)
        .and_then(|()| std::io::Write::flush(&mut buffered));
        drop(buffered);
        if written.is_err() {
            hasher.update(format!("{self:?}").as_bytes());
        }
        KeyHash(*hasher.finalize().as_bytes())
    }

    /// A copy whose only unsorted collection (`secrets`) is sorted and
    /// deduplicated, so callers cannot make two equal keys hash differently.
    fn canonical(&self) -> CacheKey {
        let mut key = self.clone();
        let secrets: BTreeSet<String> = key.secrets.into_iter().collect();
        key.secrets = secrets.into_iter().collect();
        key
    }

    /// What changed from `older` to `self`, in a stable order, one
    /// [`KeyChange`] per differing component (per file, variable, upstream).
    pub fn changes_since(&self, older: &CacheKey) -> Vec<KeyChange> {
        let mut changes = Vec::new();
        if self.version != older.version {
            changes.push(KeyChange::Version {
                before: older.version,
                after: self.version,
            });
        }
        if self.task != older.task {
            changes.push(KeyChange::Task {
                before: older.task.clone(),
                after: self.task.clone(),
            });
        }
        if self.command != older.command {
            changes.push(KeyChange::Command {
                before: older.command.clone(),
                after: self.command.clone(),
            });
        }
        if self.runner != older.runner {
            changes.push(KeyChange::Runner {
                before: older.runner.clone(),
                after: self.runner.clone(),
            });
        }
        if self.image_id != older.image_id {
            changes.push(KeyChange::Image {
                before: older.image_id.clone(),
                after: self.image_id.clone(),
            });
        }
        diff_maps(&older.resources, &self.resources, |name, before, after| {
            changes.push(KeyChange::Resource {
                name,
                before,
                after,
            });
        });
        diff_maps(&older.env, &self.env, |name, before, after| {
            changes.push(KeyChange::Env {
                name,
                before,
                after,
            });
        });
        let old_secrets: BTreeSet<&String> = older.secrets.iter().collect();
        let new_secrets: BTreeSet<&String> = self.secrets.iter().collect();
        for name in old_secrets.symmetric_difference(&new_secrets) {
            changes.push(KeyChange::Secret {
                name: (*name).clone(),
                added: new_secrets.contains(name),
            });
        }
        diff_maps(&older.inputs, &self.inputs, |path, before, after| {
            changes.push(KeyChange::Input {
                path,
                before,
                after,
            });
        });
        diff_maps(&older.deps, &self.deps, |instance, before, after| {
            changes.push(KeyChange::Dep {
                instance,
                before,
                after,
            });
        });
        diff_maps(&older.extra, &self.extra, |name, before, after| {
            changes.push(KeyChange::Extra {
                name,
                before,
                after,
            });
        });
        changes
    }
}

/// Calls `report(name, before, after)` for every name whose value differs
/// (added, removed or changed), in sorted order.
fn diff_maps(
    older: &BTreeMap<String, String>,
    newer: &BTreeMap<String, String>,
    mut report: impl FnMut(String, Option<String>, Option<String>),
) {
    let names: BTreeSet<&String> = older.keys().chain(newer.keys()).collect();
    for name in names {
        let before = older.get(name);
        let after = newer.get(name);
        if before != after {
            report(name.clone(), before.cloned(), after.cloned());
        }
    }
}

/// One component of a key that differs between two keys. `None` on either
/// side means the component was added or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChange {
    Version {
        before: u32,
        after: u32,
    },
    Task {
        before: String,
        after: String,
    },
    Command {
        before: String,
        after: String,
    },
    Runner {
        before: String,
        after: String,
    },
    Image {
        before: Option<String>,
        after: Option<String>,
    },
    Resource {
        name: String,
        before: Option<String>,
        after: Option<String>,
    },
    Env {
        name: String,
        before: Option<String>,
        after: Option<String>,
    },
    Secret {
        name: String,
        added: bool,
    },
    Input {
        path: String,
        before: Option<String>,
        after: Option<String>,
    },
    Dep {
        instance: String,
        before: Option<String>,
        after: Option<String>,
    },
    Extra {
        name: String,
        before: Option<String>,
        after: Option<String>,
    },
}

/// "changed", "was added" or "was removed", from the two sides of a change.
fn verb<T>(before: &Option<T>, after: &Option<T>) -> &'static str {
    match (before, after) {
        (None, Some(_)) => "was added",
        (Some(_), None) => "was removed",
        _ => "changed",
    }
}

/// For an agent request (canonical JSON object on both sides), the names of
/// its top-level fields that differ; `None` for plain shell commands.
fn changed_request_fields(before: &str, after: &str) -> Option<Vec<String>> {
    let before: serde_json::Map<String, serde_json::Value> = serde_json::from_str(before).ok()?;
    let after: serde_json::Map<String, serde_json::Value> = serde_json::from_str(after).ok()?;
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    Some(
        names
            .into_iter()
            .filter(|name| before.get(*name) != after.get(*name))
            .map(|name| format!("`{name}`"))
            .collect(),
    )
}

impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyChange::Version { before, after } => {
                write!(f, "the cache format changed (v{before} -> v{after})")
            }
            KeyChange::Task { before, after } => {
                write!(f, "the task was renamed from `{before}` to `{after}`")
            }
            KeyChange::Command { before, after } => match changed_request_fields(before, after) {
                Some(fields) if !fields.is_empty() => {
                    write!(f, "the agent request changed ({})", fields.join(", "))
                }
                _ => f.write_str("the command changed"),
            },
            KeyChange::Runner { before, after } => {
                write!(f, "the runner changed from `{before}` to `{after}`")
            }
            KeyChange::Image { before, after } => match (before, after) {
                (_, None) => f.write_str("the task no longer runs in an image"),
                (None, Some(_)) => f.write_str("the task now runs in an image"),
                (Some(_), Some(_)) => f.write_str("the image changed"),
            },
            KeyChange::Resource {
                name,
                before,
                after,
            } => write!(f, "resource `{name}` {}", verb(before, after)),
            KeyChange::Env {
                name,
                before,
                after,
            } => write!(f, "environment variable `{name}` {}", verb(before, after)),
            KeyChange::Secret { name, added } => {
                let verb = if *added { "was added" } else { "was removed" };
                write!(f, "secret `{name}` {verb}")
            }
            KeyChange::Input {
                path,
                before,
                after,
            } => write!(f, "input `{path}` {}", verb(before, after)),
            KeyChange::Dep {
                instance,
                before,
                after,
            } => match (before, after) {
                (Some(_), Some(_)) => {
                    write!(f, "upstream `{instance}` produced different outputs")
                }
                (None, _) => write!(f, "upstream `{instance}` was added"),
                (_, None) => write!(f, "upstream `{instance}` was removed"),
            },
            KeyChange::Extra {
                name,
                before,
                after,
            } => match name.strip_prefix(VAR_PREFIX) {
                Some(var) => write!(f, "variable `{var}` {}", verb(before, after)),
                None => write!(f, "`{name}` {}", verb(before, after)),
            },
        }
    }
}

/// The BLAKE3 hash of a [`CacheKey`]; names its manifest in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Lowercase hex, as in file names and messages.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

impl FromStr for KeyHash {
    type Err = CacheError;

    fn from_str(text: &str) -> Result<KeyHash, CacheError> {
        parse_hex32(text)
            .map(KeyHash)
            .ok_or_else(|| CacheError::InvalidHash {
                text: text.to_owned(),
            })
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<KeyHash, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses exactly 64 lowercase hex digits (the only spelling we write, so a
/// file name in another case is not ours).
pub(crate) fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, pair) in bytes.chunks_exact(2).enumerate() {
        let high = hex_digit(pair[0])?;
        let low = hex_digit(pair[1])?;
        out[index] = (high << 4) | low;
    }
    Some(out)
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

/// A digest over the sorted `(path, content hash)` pairs of a task's outputs.
/// Downstream keys hold this instead of the upstream key, so an upstream
/// rerun that produces identical files leaves the downstream cached.
pub fn outputs_digest(files: &[(String, String)]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(DIGEST_DOMAIN);
    let mut add = |(path, hash): &(String, String)| {
        // Lengths first, so no choice of path bytes can shift a boundary.
        hasher.update(&(path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update(&(hash.len() as u64).to_le_bytes());
        hasher.update(hash.as_bytes());
    };
    // One output (most instances): nothing to sort; a reduce over 1,000
    // instances digests each of them.
    if let [only] = files {
        add(only);
    } else {
        let mut sorted: Vec<&(String, String)> = files.iter().collect();
        sorted.sort();
        sorted.dedup();
        sorted.into_iter().for_each(add);
    }
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CacheKey {
        let mut key = CacheKey::new("lint");
        key.command = "cargo clippy -- -D warnings".to_owned();
        key.env.insert("RUST_LOG".to_owned(), "info".to_owned());
        key.env.insert("A".to_owned(), "1".to_owned());
        key.secrets = vec!["ANTHROPIC_API_KEY".to_owned(), "GH_TOKEN".to_owned()];
        key.inputs.insert("src/a.rs".to_owned(), "aa".repeat(32));
        key.inputs.insert("src/b.rs".to_owned(), "bb".repeat(32));
        key.deps.insert("gen[x]".to_owned(), "cc".repeat(32));
        key
    }

    #[test]
    fn key_hash_is_stable_across_runs() {
        // A golden value: if this changes, every user's cache is invalidated,
        // so it must only change together with CACHE_FORMAT_VERSION.
        let hash = sample().hash();
        assert_eq!(
            hash.to_string(),
            "742fcd2540610eb167e401f9b68c69ced8932f9333ca7b769bdcc927b63ef5b3"
        );
    }

    #[test]
    fn key_hash_ignores_insertion_order() {
        let forward = sample();
        let mut backward = CacheKey::new("lint");
        backward.command = forward.command.clone();
        backward.deps.insert("gen[x]".to_owned(), "cc".repeat(32));
        backward
            .inputs
            .insert("src/b.rs".to_owned(), "bb".repeat(32));
        backward
            .inputs
            .insert("src/a.rs".to_owned(), "aa".repeat(32));
        backward.env.insert("A".to_owned(), "1".to_owned());
        backward
            .env
            .insert("RUST_LOG".to_owned(), "info".to_owned());
        backward.secrets = vec!["GH_TOKEN".to_owned(), "ANTHROPIC_API_KEY".to_owned()];
        assert_eq!(forward.hash(), backward.hash());
        // Sorted but repeated: hashed as the deduplicated list.
        backward.secrets = vec![
            "ANTHROPIC_API_KEY".to_owned(),
            "ANTHROPIC_API_KEY".to_owned(),
            "GH_TOKEN".to_owned(),
        ];
        assert_eq!(forward.hash(), backward.hash());

        let mut other = sample();
        other.inputs.insert("src/a.rs".to_owned(), "ab".repeat(32));
        assert_ne!(forward.hash(), other.hash());
    }

    #[test]
    fn key_hash_round_trips_through_text() {
        let hash = sample().hash();
        let parsed: KeyHash = hash.to_string().parse().expect("parse");
        assert_eq!(parsed, hash);
        assert!("xyz".parse::<KeyHash>().is_err());
        assert!(hash.to_string().to_uppercase().parse::<KeyHash>().is_err());
    }

    #[test]
    fn changes_since_names_the_changed_components() {
        let older = sample();
        let mut newer = sample();
        newer.inputs.insert("src/a.rs".to_owned(), "ff".repeat(32));
        newer.inputs.remove("src/b.rs");
        newer.inputs.insert("src/c.rs".to_owned(), "00".repeat(32));
        newer.env.insert("RUST_LOG".to_owned(), "debug".to_owned());
        newer.deps.insert("gen[x]".to_owned(), "dd".repeat(32));
        newer.secrets.push("NEW_SECRET".to_owned());
        newer
            .extra
            .insert("vars.style".to_owned(), "anyhow".to_owned());
        newer
            .extra
            .insert("claude_version".to_owned(), "2.1.0".to_owned());
        let rendered: Vec<String> = newer
            .changes_since(&older)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            rendered,
            [
                "environment variable `RUST_LOG` changed",
                "secret `NEW_SECRET` was added",
                "input `src/a.rs` changed",
                "input `src/b.rs` was removed",
                "input `src/c.rs` was added",
                "upstream `gen[x]` produced different outputs",
                "`claude_version` was added",
                "variable `style` was added",
            ]
        );
        assert!(older.changes_since(&older).is_empty());
    }

    #[test]
    fn changes_since_names_agent_request_fields() {
        let mut older = CacheKey::new("refactor");
        older.command = r#"{"model":"sonnet","prompt":"a","max_turns":3}"#.to_owned();
        let mut newer = older.clone();
        newer.command = r#"{"model":"opus","prompt":"a","max_turns":4}"#.to_owned();
        let changes = newer.changes_since(&older);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].to_string(),
            "the agent request changed (`max_turns`, `model`)"
        );
    }

    #[test]
    fn outputs_digest_is_order_insensitive_and_content_sensitive() {
        let a = ("a.txt".to_owned(), "11".repeat(32));
        let b = ("b.txt".to_owned(), "22".repeat(32));
        let forward = outputs_digest(&[a.clone(), b.clone()]);
        assert_eq!(forward, outputs_digest(&[b.clone(), a.clone()]));
        let renamed = ("c.txt".to_owned(), b.1.clone());
        assert_ne!(forward, outputs_digest(&[a.clone(), renamed]));
        assert_ne!(forward, outputs_digest(&[a]));
    }
}
