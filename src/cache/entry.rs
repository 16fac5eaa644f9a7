//! What the store keeps per cache key: the [`NewEntry`] the scheduler hands
//! in, the [`Entry`] read back, and the manifest encoding that carries it
//! (a header line with the body's checksum, then JSON), so a torn or
//! tampered manifest is recognised and treated as a miss.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::fsutil;
use super::key::{outputs_digest, CacheKey, KeyHash, CACHE_FORMAT_VERSION};
use super::CacheError;

const MANIFEST_MAGIC: &str = "ccflow-manifest";

/// What a task left behind, as the scheduler hands it to [`Store::save`](super::Store::save).
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub instance_id: String,
    pub key: CacheKey,
    /// Repo-relative paths of output files (expanded, files only). Each must
    /// stay inside the root: `..`, absolute paths and symlinks resolving
    /// outside are rejected with [`CacheError::OutputOutsideRoot`].
    pub outputs: Vec<String>,
    pub exit_code: i32,
    /// The task's log, stored as a blob.
    pub log: Option<PathBuf>,
    /// Named artifacts (`transcript`, `diff`, ...), stored as blobs.
    pub attachments: BTreeMap<String, PathBuf>,
    /// Path -> content hash after the task (in-place tasks).
    pub post_state: BTreeMap<String, String>,
    /// Stored verbatim (agent usage, cost, ...).
    pub metadata: serde_json::Value,
}

/// A stored result, as read back from a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: CacheKey,
    /// The key this manifest is stored under (for an in-place task's
    /// post-state manifest, not the hash of `key`).
    pub key_hash: KeyHash,
    pub instance_id: String,
    /// Sorted by path.
    pub outputs: Vec<OutputFile>,
    pub exit_code: i32,
    /// Blob hash of the log.
    pub log: Option<String>,
    /// Attachment name -> blob hash.
    pub attachments: BTreeMap<String, String>,
    pub post_state: BTreeMap<String, String>,
    pub metadata: serde_json::Value,
    pub created_unix_ms: u64,
}

impl Entry {
    /// The digest downstream keys use for this entry's outputs.
    pub fn outputs_digest(&self) -> String {
        let pairs: Vec<(String, String)> = self
            .outputs
            .iter()
            .map(|output| (output.path.clone(), output.hash.clone()))
            .collect();
        outputs_digest(&pairs)
    }

    /// Every blob this entry needs, with its size when the manifest knows it.
    pub(crate) fn blobs(&self) -> impl Iterator<Item = (&str, Option<u64>)> {
        self.outputs
            .iter()
            .filter(|output| output.inline.is_none())
            .map(|output| (output.hash.as_str(), Some(output.size)))
            .chain(self.log.iter().map(|hash| (hash.as_str(), None)))
            .chain(self.attachments.values().map(|hash| (hash.as_str(), None)))
    }
}

/// One output file of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Repo-relative, `/`-separated, normalised (no `.` or `..`).
    pub path: String,
    /// Hex BLAKE3 of the content (the blob's name).
    pub hash: String,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// The content, hex-encoded, of a file small enough to live in the
    /// manifest rather than in a blob of its own (as Bazel's remote cache
    /// inlines small outputs): one file fewer to create per entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

/// Outputs up to this size are kept in the manifest: most source files,
/// which is what agents edit. A batch of such entries has no blob to make
/// durable, so publishing it syncs nothing: after a run that wrote much
/// (the file system busy writing it back), the `fdatasync` of one 18 KB
/// blob at the end of a rerun waited up to ~10 ms, half of what the rerun
/// took. Hex doubles them in the manifest; larger files are blobs.
pub(crate) const INLINE_MAX: u64 = 64 * 1024;

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    text
}

/// The bytes of hex `text`; `None` if malformed.
pub(crate) fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

pub(crate) fn encode_manifest(entry: &Entry) -> Result<Vec<u8>, CacheError> {
    let body = serde_json::to_vec(entry)?;
    let mut bytes = format!(
        "{MANIFEST_MAGIC} {CACHE_FORMAT_VERSION} {}\n",
        fsutil::hash_bytes(&body)
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Parses and verifies a manifest read for `key`; the error says why it is
/// not usable.
pub(crate) fn decode_manifest(bytes: &[u8], key: &KeyHash) -> Result<Entry, String> {
    let newline = bytes
        .iter()
        .position(|byte| *byte == b'\n')
        .ok_or("the manifest is truncated")?;
    let header =
        std::str::from_utf8(&bytes[..newline]).map_err(|_| "the manifest header is not text")?;
    let body = &bytes[newline + 1..];
    let mut fields = header.split(' ');
    if fields.next() != Some(MANIFEST_MAGIC) {
        return Err("the file is not a ccflow manifest".to_owned());
    }
    if fields.next() != Some(&*CACHE_FORMAT_VERSION.to_string()) {
        return Err("the manifest has another format version".to_owned());
    }
    if fields.next() != Some(&*fsutil::hash_bytes(body)) || fields.next().is_some() {
        return Err("the manifest is torn or corrupt (checksum mismatch)".to_owned());
    }
    let entry: Entry = serde_json::from_slice(body)
        .map_err(|error| format!("the manifest does not parse: {error}"))?;
    if entry.key_hash != *key {
        return Err(format!("the manifest belongs to key `{}`", entry.key_hash));
    }
    Ok(entry)
}
