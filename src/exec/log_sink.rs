//! Where a task's output goes: secret masking, the size limit, the log file
//! and the "latest activity" line.
//!
//! The sink is fed raw chunks from the output pipe. Masking is streaming: a
//! secret split across two reads is still masked, because the last
//! `longest secret - 1` bytes are held back until the next chunk decides
//! them. Past the size limit output is still read (so the task never blocks on
//! a full pipe) and counted, but not written. The sink does no per-line work:
//! the latest line is found in a small tail buffer at most every
//! [`LAST_LINE_INTERVAL`], so a task printing gigabytes costs a memcpy of at
//! most [`TAIL_CAPACITY`] bytes per chunk.
//!
//! The file is created lazily, at the first byte of output: creating a file
//! costs more than spawning a process on a busy ext4 (~1 ms measured here),
//! and most tiny tasks print nothing. A task without output leaves no log
//! file (a stale one from an earlier attempt is removed).

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aho_corasick::{AhoCorasick, MatchKind};

/// What a masked secret is replaced with.
pub const MASK: &[u8] = b"***";
/// How often the shared latest line is refreshed at most.
pub const LAST_LINE_INTERVAL: Duration = Duration::from_millis(50);
/// Longest latest line kept, in characters.
pub const LAST_LINE_MAX_CHARS: usize = 200;
/// Bytes of recent output kept to find the latest line in.
const TAIL_CAPACITY: usize = 4096;

/// Totals of one finished sink.
#[derive(Debug, Default)]
pub struct LogSummary {
    /// Bytes in the log file, marker included.
    pub file_bytes: u64,
    /// Masked output bytes seen, kept or dropped.
    pub output_bytes: u64,
    pub truncated: bool,
    /// The first write error, if any; writing stops after it.
    pub error: Option<String>,
}

/// The log file of one task instance plus its masking and limit state.
pub struct LogSink {
    path: PathBuf,
    file: LogFile,
    limit: u64,
    kept: u64,
    dropped: u64,
    last_byte: Option<u8>,
    masker: Option<Masker>,
    last_line: Option<LastLine>,
    error: Option<String>,
}

impl LogSink {
    /// A sink writing to `path`, created (or truncated) at the first output.
    #[must_use]
    pub fn new(
        path: &Path,
        limit: u64,
        masks: &[String],
        last_line: Option<Arc<Mutex<String>>>,
    ) -> Self {
        Self {
            path: path.to_path_buf(),
            file: LogFile::NotYet,
            limit,
            kept: 0,
            dropped: 0,
            last_byte: None,
            masker: Masker::new(masks),
            last_line: last_line.map(LastLine::new),
            error: None,
        }
    }

    /// Feeds one chunk of raw output.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self.masker.take() {
            Some(mut masker) => {
                masker.push(chunk, false, |piece| self.emit(piece));
                self.masker = Some(masker);
            }
            None => self.emit(chunk),
        }
    }

    /// Flushes held-back bytes, writes the truncation marker and publishes
    /// the final latest line.
    #[must_use]
    pub fn finish(mut self) -> LogSummary {
        if let Some(mut masker) = self.masker.take() {
            masker.push(&[], true, |piece| self.emit(piece));
        }
        let mut file_bytes = self.kept;
        if self.dropped > 0 {
            let mut marker = String::new();
            if self.last_byte.is_some_and(|byte| byte != b'\n') {
                marker.push('\n');
            }
            let _ = writeln!(
                marker,
                "[ccflow: log truncated at {} bytes, {} more bytes dropped]",
                self.limit, self.dropped
            );
            self.write(marker.as_bytes());
            file_bytes += marker.len() as u64;
        }
        if let Some(last_line) = &mut self.last_line {
            last_line.publish();
        }
        if matches!(self.file, LogFile::NotYet) {
            match std::fs::remove_file(&self.path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    self.error = Some(format!(
                        "cannot remove the stale log `{}`: {error}",
                        self.path.display()
                    ));
                }
                _ => {}
            }
        }
        LogSummary {
            file_bytes,
            output_bytes: self.kept + self.dropped,
            truncated: self.dropped > 0,
            error: self.error,
        }
    }

    /// Takes masked bytes: writes what fits under the limit, counts the rest.
    fn emit(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let room = self.limit.saturating_sub(self.kept);
        let keep = usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()));
        if keep > 0 {
            self.write(&bytes[..keep]);
            self.kept += keep as u64;
            self.last_byte = bytes.get(keep - 1).copied();
        }
        self.dropped += (bytes.len() - keep) as u64;
        if let Some(last_line) = &mut self.last_line {
            last_line.push(bytes);
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if matches!(self.file, LogFile::NotYet) {
            self.file = match fs_err::File::create(&self.path) {
                Ok(file) => LogFile::Open(file),
                Err(error) => {
                    self.error = Some(error.to_string());
                    LogFile::Failed
                }
            };
        }
        if let LogFile::Open(file) = &mut self.file {
            if let Err(error) = file.write_all(bytes) {
                // Keep draining the pipe so the task is not disturbed; the
                // report carries the error.
                self.error = Some(error.to_string());
                self.file = LogFile::Failed;
            }
        }
    }
}

/// The log file's lifecycle; see the module docs for why it is lazy.
enum LogFile {
    NotYet,
    Open(fs_err::File),
    Failed,
}

/// Streaming replacement of secret values by [`MASK`].
struct Masker {
    matcher: AhoCorasick,
    longest: usize,
    buffer: Vec<u8>,
}

impl Masker {
    fn new(masks: &[String]) -> Option<Self> {
        // An empty secret would match everywhere; it protects nothing.
        let masks: Vec<&str> = masks
            .iter()
            .map(String::as_str)
            .filter(|m| !m.is_empty())
            .collect();
        let longest = masks.iter().map(|m| m.len()).max()?;
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&masks)
            .ok()?;
        Some(Self {
            matcher,
            longest,
            buffer: Vec::new(),
        })
    }

    /// Appends `input` and emits every byte whose masking is decided. A match
    /// starting before `len - (longest - 1)` lies entirely in the buffer, and
    /// so does any longer match from the same start, so it is final; later
    /// bytes wait for more input unless `at_end`.
    fn push(&mut self, input: &[u8], at_end: bool, mut emit: impl FnMut(&[u8])) {
        self.buffer.extend_from_slice(input);
        let decided = if at_end {
            self.buffer.len()
        } else {
            self.buffer.len().saturating_sub(self.longest - 1)
        };
        let mut position = 0;
        for found in self.matcher.find_iter(&self.buffer) {
            if found.start() >= decided {
                break;
            }
            emit(&self.buffer[position..found.start()]);
            emit(MASK);
            position = found.end();
        }
        let flushed = position.max(decided);
        emit(&self.buffer[position..flushed]);
        self.buffer.drain(..flushed);
    }
}

/// The shared "latest activity" line and the recent output it is found in.
struct LastLine {
    shared: Arc<Mutex<String>>,
    tail: Vec<u8>,
    published: Instant,
    dirty: bool,
}

impl LastLine {
    fn new(shared: Arc<Mutex<String>>) -> Self {
        Self {
            shared,
            tail: Vec::with_capacity(2 * TAIL_CAPACITY),
            published: Instant::now(),
            dirty: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= TAIL_CAPACITY {
            self.tail.clear();
            self.tail
                .extend_from_slice(&bytes[bytes.len() - TAIL_CAPACITY..]);
        } else {
            if self.tail.len() + bytes.len() > 2 * TAIL_CAPACITY {
                let excess = self.tail.len() + bytes.len() - TAIL_CAPACITY;
                self.tail.drain(..excess.min(self.tail.len()));
            }
            self.tail.extend_from_slice(bytes);
        }
        self.dirty = true;
        if self.published.elapsed() >= LAST_LINE_INTERVAL {
            self.publish();
        }
    }

    fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        self.published = Instant::now();
        if let Some(line) = latest_line(&self.tail) {
            if let Ok(mut shared) = self.shared.lock() {
                *shared = line;
            }
        }
    }
}

/// The last line of `tail` with visible content: ANSI escapes removed,
/// trimmed, cut to [`LAST_LINE_MAX_CHARS`]. `\r` ends a line too, so progress
/// bars show their latest state.
#[must_use]
pub fn latest_line(tail: &[u8]) -> Option<String> {
    tail.split(|&byte| byte == b'\n' || byte == b'\r')
        .rev()
        .find_map(|raw| {
            let text = strip_ansi(&String::from_utf8_lossy(raw));
            let text = text.trim();
            (!text.is_empty()).then(|| shorten(text))
        })
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(LAST_LINE_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Removes CSI sequences (`ESC [ ... final`) and other control characters.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates run until a final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_all(masks: &[&str], chunks: &[&str]) -> String {
        let masks: Vec<String> = masks.iter().map(|m| (*m).to_owned()).collect();
        let mut masker = Masker::new(&masks).expect("non-empty masks");
        let mut out = Vec::new();
        for chunk in chunks {
            masker.push(chunk.as_bytes(), false, |piece| {
                out.extend_from_slice(piece)
            });
        }
        masker.push(&[], true, |piece| out.extend_from_slice(piece));
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn masks_within_and_across_chunks() {
        assert_eq!(mask_all(&["hunter2"], &["pw=hunter2\n"]), "pw=***\n");
        assert_eq!(
            mask_all(&["hunter2"], &["pw=hun", "ter2 and hunter2"]),
            "pw=*** and ***"
        );
        assert_eq!(
            mask_all(&["hunter2"], &["h", "u", "n", "t", "e", "r", "2", "!"]),
            "***!"
        );
        assert_eq!(
            mask_all(&["abc", "abcdef"], &["xabcdefx abcx"]),
            "x***x ***x"
        );
        assert_eq!(
            mask_all(&["secret"], &["no secrets? secre", "t"]),
            "no ***s? ***"
        );
        assert_eq!(mask_all(&["zz"], &["z", "", "a"]), "za");
    }

    #[test]
    fn empty_masks_are_ignored() {
        assert!(Masker::new(&[String::new()]).is_none());
    }

    #[test]
    fn latest_line_skips_blank_lines_and_escapes() {
        assert_eq!(latest_line(b"one\ntwo\n\n  \n").as_deref(), Some("two"));
        assert_eq!(latest_line(b"10%\r50%\r").as_deref(), Some("50%"));
        assert_eq!(latest_line(b"\x1b[32mok\x1b[0m  \n").as_deref(), Some("ok"));
        assert_eq!(latest_line(b"\n\n"), None);
        let long = "x".repeat(500);
        let shown = latest_line(long.as_bytes()).expect("a line");
        assert_eq!(shown.chars().count(), LAST_LINE_MAX_CHARS + 1);
    }

    #[test]
    fn limit_keeps_prefix_and_writes_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let mut sink = LogSink::new(&path, 10, &["SECRET".to_owned()], None);
        sink.feed(b"12345SEC");
        sink.feed(b"RET67890abcdef");
        let summary = sink.finish();
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            "12345***67\n[ccflow: log truncated at 10 bytes, 9 more bytes dropped]\n"
        );
        assert!(summary.truncated);
        assert_eq!(summary.output_bytes, 19);
        assert_eq!(summary.file_bytes, text.len() as u64);
    }

    #[test]
    fn no_output_leaves_no_file_and_removes_a_stale_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "stale").expect("write");
        let summary = LogSink::new(&path, 10, &[], None).finish();
        assert!(!path.exists());
        assert_eq!(summary.file_bytes, 0);
        assert!(summary.error.is_none());
    }
}
