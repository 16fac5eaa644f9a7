//! Errors of the mock Messages API: loading a script and binding the socket.

use std::path::PathBuf;

/// What went wrong while loading a mock script or starting the mock server.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// The script file could not be read.
    #[error("failed to read mock script `{path}`")]
    ReadScript {
        /// The script's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The script is not valid YAML or JSON, or does not follow the format.
    #[error("invalid mock script `{path}`: {message}")]
    InvalidScript {
        /// The script's path (or a name such as `<inline>` for scripts given as text).
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// The listening socket could not be bound.
    #[error("failed to listen on `127.0.0.1:{port}`")]
    Bind {
        /// The requested port (0 = any).
        port: u16,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
