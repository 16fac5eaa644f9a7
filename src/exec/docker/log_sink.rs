//! Streams a container's attached output into its log file: secrets masked,
//! the latest line kept for progress display. Write failures are logged, never
//! fatal to the container's run.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::{AttachContainerResults, LogOutput};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::masker::Masker;
use super::short_id;

/// How long to wait for the log stream to drain once the container stopped.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn stream_logs(attached: AttachContainerResults, id: String, mut sink: LogSink) {
    // The input half is kept open (unused) for as long as output is read.
    let AttachContainerResults {
        output: mut logs,
        input: _input,
    } = attached;
    while let Some(chunk) = logs.next().await {
        let result = match chunk {
            Ok(LogOutput::StdErr { message }) => sink.write(1, &message).await,
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                sink.write(0, &message).await
            }
            Ok(LogOutput::StdIn { .. }) => Ok(()),
            Err(error) => {
                tracing::debug!(container = short_id(&id), %error, "log stream ended");
                break;
            }
        };
        if let Err(error) = result {
            tracing::warn!(path = %sink.path.display(), %error, "could not write the container log");
            return;
        }
    }
    if let Err(error) = sink.finish().await {
        tracing::warn!(path = %sink.path.display(), %error, "could not write the container log");
    }
}

/// Waits for the log task to drain what the stopped container wrote.
pub(super) async fn drain_logs(logs: tokio::task::JoinHandle<()>) {
    let abort = logs.abort_handle();
    if tokio::time::timeout(LOG_DRAIN_TIMEOUT, logs).await.is_err() {
        abort.abort();
    }
}

/// Writes container output to the log file with secrets masked, keeping the
/// latest line for progress display. stdout and stderr are masked separately
/// so a partial line of one never joins the other.
pub(super) struct LogSink {
    path: PathBuf,
    file: tokio::fs::File,
    maskers: [Masker; 2],
    lines: [Vec<u8>; 2],
    last_line: Option<Arc<Mutex<String>>>,
}

impl LogSink {
    pub(super) fn new(
        (path, file): (PathBuf, tokio::fs::File),
        masks: &[String],
        last_line: Option<Arc<Mutex<String>>>,
    ) -> LogSink {
        LogSink {
            path,
            file,
            maskers: [Masker::new(masks), Masker::new(masks)],
            lines: [Vec::new(), Vec::new()],
            last_line,
        }
    }

    async fn write(&mut self, stream: usize, bytes: &[u8]) -> std::io::Result<()> {
        let masked = self.maskers[stream].push(bytes);
        self.emit(stream, &masked).await
    }

    async fn finish(&mut self) -> std::io::Result<()> {
        for stream in 0..2 {
            let masked = self.maskers[stream].finish();
            self.emit(stream, &masked).await?;
            let line = std::mem::take(&mut self.lines[stream]);
            self.set_last_line(&line);
        }
        self.file.flush().await
    }

    async fn emit(&mut self, stream: usize, masked: &[u8]) -> std::io::Result<()> {
        if masked.is_empty() {
            return Ok(());
        }
        self.file.write_all(masked).await?;
        if self.last_line.is_some() {
            for &byte in masked {
                if byte == b'\n' || byte == b'\r' {
                    let line = std::mem::take(&mut self.lines[stream]);
                    self.set_last_line(&line);
                } else if self.lines[stream].len() < 4096 {
                    self.lines[stream].push(byte);
                }
            }
        }
        Ok(())
    }

    fn set_last_line(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        if let Some(last_line) = &self.last_line {
            // A poisoned lock only means a reader panicked; the string is fine.
            let mut guard = last_line
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            text.clone_into(&mut guard);
        }
    }
}
