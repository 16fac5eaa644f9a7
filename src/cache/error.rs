//! The error type of the cache module.

use std::path::PathBuf;

/// Everything that can go wrong in the cache. A torn or corrupt entry found by
/// `lookup` is not an error (it is a miss); corruption found while restoring
/// or reading a blob is, because by then the caller trusted the entry.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// File I/O failed; `fs_err` puts the path in the message.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An output path is absolute, climbs out with `..`, or resolves (through
    /// a symlink) to a place outside the repository root.
    #[error("output `{path}` is outside the repository root")]
    OutputOutsideRoot { path: String },
    /// A path to hash or store names something that is not a regular file.
    #[error("`{path}` is not a regular file")]
    NotAFile { path: PathBuf },
    /// A blob's content does not hash to its name.
    #[error("cache blob `{hash}` is corrupt (its content does not match its hash)")]
    CorruptBlob { hash: String, path: PathBuf },
    /// A blob named by an entry is missing from the store.
    #[error("cache blob `{hash}` is missing")]
    MissingBlob { hash: String },
    /// A string is not a 64-digit lowercase hex BLAKE3 hash.
    #[error("`{text}` is not a cache key hash (expected 64 hex digits)")]
    InvalidHash { text: String },
    /// Serialising a manifest failed (never expected: the types are plain data).
    #[error("failed to encode cache manifest")]
    Encode(#[from] serde_json::Error),
    /// The background flusher failed earlier; entries saved since were not
    /// published (they are misses next time, never wrong results).
    #[error("failed to make cache entries durable")]
    Flush {
        #[source]
        source: Box<CacheError>,
    },
}
