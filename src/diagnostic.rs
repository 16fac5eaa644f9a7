//! Diagnostics that point at the source: `file:line:col`, the offending line
//! and a caret, rendered like rustc (via codespan-reporting), plus a JSON form
//! for `validate --format json` and GitHub `::error` annotations.
//!
//! A [`Diagnostic`] holds typed data (a [`DiagnosticKind`] and a [`Span`]);
//! rendering happens only at the edge.

use std::fmt::Write as _;
use std::sync::Arc;

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor::Buffer};

/// A byte range into a [`SourceFile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    #[must_use]
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start,
            end: end.max(start),
        }
    }
}

/// The text of one workflow file and its line index.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as shown to the user (relative to the current directory when possible).
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    #[must_use]
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Arc<SourceFile> {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Arc::new(SourceFile {
            name: name.into(),
            text,
            line_starts,
        })
    }

    /// 1-based line and column (in characters) of a byte offset.
    #[must_use]
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    /// Byte offset of a 1-based line and a 0-based column counted in characters.
    #[must_use]
    pub fn offset_of(&self, line: usize, char_col: usize) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        let rest = &self.text[start..];
        rest.char_indices()
            .nth(char_col)
            .map_or(self.text.len(), |(i, _)| start + i)
    }

    /// Byte offset where the line containing `offset` ends (before the newline).
    #[must_use]
    pub fn line_end(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a workflow, with where it is.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A short machine-readable code, e.g. `unknown-key`.
    pub code: &'static str,
    pub message: String,
    pub file: Option<Arc<SourceFile>>,
    pub span: Option<Span>,
    pub label: Option<String>,
    pub hints: Vec<String>,
}

impl Diagnostic {
    #[must_use]
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            file: None,
            span: None,
            label: None,
            hints: Vec::new(),
        }
    }

    #[must_use]
    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    #[must_use]
    pub fn at(mut self, file: &Arc<SourceFile>, span: Span) -> Diagnostic {
        self.file = Some(Arc::clone(file));
        self.span = Some(span);
        self
    }

    #[must_use]
    pub fn in_file(mut self, file: &Arc<SourceFile>) -> Diagnostic {
        self.file = Some(Arc::clone(file));
        self
    }

    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hints.push(hint.into());
        self
    }

    #[must_use]
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `(line, column)`, 1-based, when the diagnostic has a span.
    #[must_use]
    pub fn line_col(&self) -> Option<(usize, usize)> {
        match (&self.file, self.span) {
            (Some(file), Some(span)) => Some(file.line_col(span.start)),
            _ => None,
        }
    }

    /// `file:line:col`, or just the file, or nothing.
    #[must_use]
    pub fn location(&self) -> Option<String> {
        let file = self.file.as_ref()?;
        Some(match self.line_col() {
            Some((line, col)) => format!("{}:{line}:{col}", file.name),
            None => file.name.clone(),
        })
    }

    /// Renders like rustc: `error: ...`, `--> file:line:col`, the line and a caret, then hints.
    #[must_use]
    pub fn render(&self, color: bool) -> String {
        let mut buffer = if color {
            Buffer::ansi()
        } else {
            Buffer::no_color()
        };
        let mut diagnostic = match self.severity {
            Severity::Error => CsDiagnostic::error(),
            Severity::Warning => CsDiagnostic::warning(),
        }
        .with_message(&self.message);
        let notes: Vec<String> = self.hints.iter().map(|h| format!("hint: {h}")).collect();
        diagnostic = diagnostic.with_notes(notes);
        let config = term::Config {
            chars: term::Chars::ascii(),
            ..term::Config::default()
        };
        let rendered = match (&self.file, self.span) {
            (Some(file), Some(span)) => {
                let files = SimpleFile::new(file.name.as_str(), file.text.as_str());
                let end = span.end.min(file.text.len());
                let start = span.start.min(end);
                let label = Label::primary((), start..end)
                    .with_message(self.label.clone().unwrap_or_default());
                let diagnostic = diagnostic.with_labels(vec![label]);
                term::emit(&mut buffer, &config, &files, &diagnostic).is_ok()
            }
            _ => false,
        };
        if rendered {
            return String::from_utf8_lossy(buffer.as_slice()).into_owned();
        }
        // No span: a plain rendering in the same shape.
        let word = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!("{word}: {}\n", self.message);
        if let Some(location) = self.location() {
            let _ = writeln!(out, "  --> {location}");
        }
        for hint in &self.hints {
            let _ = writeln!(out, "  = hint: {hint}");
        }
        out
    }

    /// The JSON form used by `validate --format json`.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let (line, column) = self.line_col().unzip();
        serde_json::json!({
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "file": self.file.as_ref().map(|f| f.name.clone()),
            "line": line,
            "column": column,
            "hints": self.hints,
        })
    }

    /// A GitHub Actions workflow command annotating the file.
    #[must_use]
    pub fn to_github_annotation(&self) -> String {
        let word = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut properties = Vec::new();
        if let Some(file) = &self.file {
            properties.push(format!("file={}", escape_property(&file.name)));
        }
        if let Some((line, col)) = self.line_col() {
            properties.push(format!("line={line}"));
            properties.push(format!("col={col}"));
        }
        let mut message = self.message.clone();
        for hint in &self.hints {
            message.push_str("\nhint: ");
            message.push_str(hint);
        }
        format!(
            "::{word} {}::{}",
            properties.join(","),
            escape_data(&message)
        )
    }
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// "did you mean `x`?" for a name among candidates, when one is close enough.
#[must_use]
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(name, candidate);
        if score > 0.8 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based_and_counts_characters() {
        let file = SourceFile::new("f.yaml", "ab\nçd: x\n");
        assert_eq!(file.line_col(0), (1, 1));
        assert_eq!(file.line_col(3), (2, 1));
        // `d` follows a two-byte character.
        assert_eq!(file.line_col(5), (2, 2));
        assert_eq!(file.offset_of(2, 1), 5);
    }

    #[test]
    fn render_shows_location_line_and_hint() {
        let file = SourceFile::new(".claudecluster/ci.yaml", "tasks:\n  a:\n    neds: [b]\n");
        let diagnostic = Diagnostic::error("unknown-key", "unknown key `neds` in task `a`")
            .at(&file, Span::new(16, 20))
            .with_hint("did you mean `needs`?");
        let text = diagnostic.render(false);
        assert!(text.contains("--> .claudecluster/ci.yaml:3:5"), "{text}");
        assert!(text.contains("neds: [b]"), "{text}");
        assert!(text.contains("^^^^"), "{text}");
        assert!(text.contains("hint: did you mean `needs`?"), "{text}");
    }

    #[test]
    fn did_you_mean_picks_the_closest() {
        assert_eq!(
            did_you_mean("neds", ["needs", "env", "run"]).as_deref(),
            Some("did you mean `needs`?")
        );
        assert_eq!(did_you_mean("zzz", ["needs", "env"]), None);
    }
}
