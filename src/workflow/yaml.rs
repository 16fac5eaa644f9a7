//! The span-aware YAML reader: YAML text → a JSON value plus a map from JSON
//! pointers to source spans.
//!
//! serde_yaml is archived and loses positions once parsed, so ccflow reads the
//! YAML event stream of `yaml-rust2` itself. That gives every node a location
//! (for schema and semantic errors), lets us reject duplicate keys, and lets us
//! bound alias expansion so an alias bomb fails fast instead of eating memory.
//! Scalars resolve with the YAML 1.2 core schema (`yes`/`on` stay strings).

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diagnostic::{SourceFile, Span};

/// Where a node sits: the span of its key (for mapping values) and of its value.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeSpan {
    pub key: Option<Span>,
    pub value: Span,
}

/// JSON pointer → span, for every node read from the source (not for nodes
/// copied through an alias: those resolve to the alias itself).
#[derive(Debug, Default)]
pub struct SpanMap {
    spans: HashMap<String, NodeSpan>,
}

impl SpanMap {
    /// The span of the node at `pointer`, or of its nearest ancestor.
    #[must_use]
    pub fn find(&self, pointer: &str) -> NodeSpan {
        let mut pointer = pointer;
        loop {
            if let Some(span) = self.spans.get(pointer) {
                return *span;
            }
            match pointer.rfind('/') {
                Some(i) => pointer = &pointer[..i],
                None => return NodeSpan::default(),
            }
        }
    }

    /// The span of the key of `pointer` when it is a mapping value, else of its value.
    #[must_use]
    pub fn key_or_value(&self, pointer: &str) -> Span {
        let span = self.find(pointer);
        span.key.unwrap_or(span.value)
    }

    #[must_use]
    pub fn value(&self, pointer: &str) -> Span {
        self.find(pointer).value
    }
}

/// Escapes one JSON-pointer segment.
#[must_use]
pub fn pointer_segment(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// A YAML error with its location.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub message: String,
    pub span: Span,
}

/// The most nodes an alias may make the document grow to, relative to the
/// events actually read: a legitimate file reuses anchors a few times, a
/// "billion laughs" document multiplies them exponentially.
const ALIAS_GROWTH_LIMIT: usize = 16;
const ALIAS_FLOOR: usize = 100_000;

/// Reads the single YAML document of `file`.
///
/// # Errors
/// Syntax errors, duplicate keys, non-scalar keys, unknown anchors, more than
/// one document, or alias expansion past the limit.
pub fn parse(file: &SourceFile) -> Result<(Value, SpanMap), YamlError> {
    let mut reader = Reader {
        file,
        parser: Parser::new_from_str(&file.text),
        anchors: HashMap::new(),
        spans: SpanMap::default(),
        events: 0,
        nodes: 0,
    };
    reader.document()
}

struct Reader<'a> {
    file: &'a SourceFile,
    parser: Parser<std::str::Chars<'a>>,
    anchors: HashMap<usize, (Value, usize)>,
    spans: SpanMap,
    events: usize,
    nodes: usize,
}

impl Reader<'_> {
    fn offset(&self, mark: Marker) -> usize {
        self.file.offset_of(mark.line(), mark.col())
    }

    fn next(&mut self) -> Result<(Event, usize), YamlError> {
        match self.parser.next_token() {
            Ok((event, mark)) => {
                self.events += 1;
                let offset = self.offset(mark);
                Ok((event, offset))
            }
            Err(error) => {
                let offset = self.offset(*error.marker());
                Err(YamlError {
                    message: format!("invalid YAML: {}", error.info()),
                    span: Span::new(offset, self.file.line_end(offset).max(offset + 1)),
                })
            }
        }
    }

    fn document(&mut self) -> Result<(Value, SpanMap), YamlError> {
        let mut value = None;
        loop {
            let (event, offset) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::DocumentStart => {
                    if value.is_some() {
                        return Err(YamlError {
                            message: "expected one YAML document, found several".into(),
                            span: Span::new(offset, offset + 3),
                        });
                    }
                    let (event, offset) = self.next()?;
                    if matches!(event, Event::DocumentEnd) {
                        value = Some(Value::Null);
                        continue;
                    }
                    value = Some(self.node(event, offset, String::new(), None)?);
                }
                Event::StreamEnd => break,
                other => {
                    return Err(YamlError {
                        message: format!("unexpected YAML event {other:?}"),
                        span: Span::new(offset, offset + 1),
                    })
                }
            }
        }
        let value = value.unwrap_or(Value::Null);
        Ok((value, std::mem::take(&mut self.spans)))
    }

    fn count_node(&mut self, added: usize, offset: usize) -> Result<(), YamlError> {
        self.nodes += added;
        let limit = ALIAS_FLOOR.max(self.events.saturating_mul(ALIAS_GROWTH_LIMIT));
        if self.nodes > limit {
            return Err(YamlError {
                message: format!("YAML aliases expand to more than {limit} nodes (an alias bomb?)"),
                span: Span::new(offset, self.file.line_end(offset).max(offset + 1)),
            });
        }
        Ok(())
    }

    fn node(
        &mut self,
        event: Event,
        offset: usize,
        pointer: String,
        key: Option<Span>,
    ) -> Result<Value, YamlError> {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.count_node(1, offset)?;
                let len = scalar_source_len(&self.file.text, offset, &text, style);
                self.spans.spans.insert(
                    pointer,
                    NodeSpan {
                        key,
                        value: Span::new(offset, offset + len.max(1)),
                    },
                );
                let value = resolve_scalar(&text, style, tag.as_ref());
                self.remember(anchor, &value, 1);
                Ok(value)
            }
            Event::Alias(id) => {
                let Some((value, size)) = self.anchors.get(&id).cloned() else {
                    return Err(YamlError {
                        message: "alias refers to an unknown anchor".into(),
                        span: Span::new(offset, offset + 1),
                    });
                };
                self.count_node(size, offset)?;
                self.spans.spans.insert(
                    pointer,
                    NodeSpan {
                        key,
                        value: Span::new(offset, self.file.line_end(offset).max(offset + 1)),
                    },
                );
                Ok(value)
            }
            Event::SequenceStart(anchor, _) => {
                let start_nodes = self.nodes;
                self.count_node(1, offset)?;
                let mut items = Vec::new();
                loop {
                    let (event, item_offset) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    let child = format!("{pointer}/{}", items.len());
                    items.push(self.node(event, item_offset, child, None)?);
                }
                self.spans.spans.insert(
                    pointer,
                    NodeSpan {
                        key,
                        value: Span::new(offset, offset + 1),
                    },
                );
                let value = Value::Array(items);
                self.remember(anchor, &value, self.nodes - start_nodes);
                Ok(value)
            }
            Event::MappingStart(anchor, _) => {
                let start_nodes = self.nodes;
                self.count_node(1, offset)?;
                let mut map = Map::new();
                let mut merges: Vec<(Value, usize)> = Vec::new();
                loop {
                    let (event, key_offset) = self.next()?;
                    let key_text = match event {
                        Event::MappingEnd => break,
                        Event::Scalar(text, style, _, _) => {
                            let len = scalar_source_len(&self.file.text, key_offset, &text, style);
                            (text, Span::new(key_offset, key_offset + len.max(1)))
                        }
                        _ => {
                            return Err(YamlError {
                                message: "mapping keys must be plain strings".into(),
                                span: Span::new(key_offset, key_offset + 1),
                            })
                        }
                    };
                    let (name, key_span) = key_text;
                    let (event, value_offset) = self.next()?;
                    if name == "<<" {
                        let child = format!("{pointer}/<<");
                        let value = self.node(event, value_offset, child, Some(key_span))?;
                        merges.push((value, value_offset));
                        continue;
                    }
                    let child = format!("{pointer}/{}", pointer_segment(&name));
                    if map.contains_key(&name) {
                        let first = self.spans.spans.get(&child).and_then(|s| s.key);
                        let message = match first {
                            Some(first) => format!(
                                "duplicate key `{name}` (first defined on line {})",
                                self.file.line_col(first.start).0
                            ),
                            None => format!("duplicate key `{name}`"),
                        };
                        return Err(YamlError {
                            message,
                            span: key_span,
                        });
                    }
                    let value = self.node(event, value_offset, child, Some(key_span))?;
                    map.insert(name, value);
                }
                // YAML merge keys (`<<: *defaults`): explicit keys win.
                for (merge, merge_offset) in merges {
                    let sources = match merge {
                        Value::Object(m) => vec![m],
                        Value::Array(items) => items
                            .into_iter()
                            .filter_map(|v| match v {
                                Value::Object(m) => Some(m),
                                _ => None,
                            })
                            .collect(),
                        _ => {
                            return Err(YamlError {
                                message: "a merge key `<<` needs a mapping or a list of mappings"
                                    .into(),
                                span: Span::new(merge_offset, merge_offset + 1),
                            })
                        }
                    };
                    for source in sources {
                        for (k, v) in source {
                            map.entry(k).or_insert(v);
                        }
                    }
                }
                self.spans.spans.insert(
                    pointer,
                    NodeSpan {
                        key,
                        value: Span::new(offset, offset + 1),
                    },
                );
                let value = Value::Object(map);
                self.remember(anchor, &value, self.nodes - start_nodes);
                Ok(value)
            }
            other => Err(YamlError {
                message: format!("unexpected YAML event {other:?}"),
                span: Span::new(offset, offset + 1),
            }),
        }
    }

    fn remember(&mut self, anchor: usize, value: &Value, size: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (value.clone(), size.max(1)));
        }
    }
}

/// Approximates how many source bytes a scalar takes, for the caret's width.
fn scalar_source_len(text: &str, offset: usize, value: &str, style: TScalarStyle) -> usize {
    let line_end = text[offset.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| offset + i);
    let available = line_end.saturating_sub(offset);
    let wanted = match style {
        TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => value.len() + 2,
        TScalarStyle::Plain => value.len(),
        _ => 1,
    };
    wanted.min(available).max(1)
}

fn resolve_scalar(text: &str, style: TScalarStyle, tag: Option<&yaml_rust2::parser::Tag>) -> Value {
    if let Some(tag) = tag {
        if tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:" {
            match tag.suffix.as_str() {
                "str" => return Value::String(text.to_owned()),
                "int" | "float" | "bool" | "null" => {}
                _ => return Value::String(text.to_owned()),
            }
        }
    }
    if style != TScalarStyle::Plain {
        return Value::String(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(number) = parse_int(text) {
        return Value::Number(number);
    }
    if looks_like_float(text) {
        if let Ok(f) = text.parse::<f64>() {
            if let Some(n) = Number::from_f64(f) {
                return Value::Number(n);
            }
        }
    }
    Value::String(text.to_owned())
}

fn parse_int(text: &str) -> Option<Number> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, body) = if let Some(rest) = digits.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = digits.strip_prefix("0o") {
        (8, rest)
    } else {
        (10, digits)
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(body, radix).ok()?;
    if negative {
        let value = i64::try_from(magnitude).ok()?;
        Some(Number::from(-value))
    } else {
        Some(Number::from(magnitude))
    }
}

fn looks_like_float(text: &str) -> bool {
    let body = text.trim_start_matches(['-', '+']);
    !body.is_empty()
        && body.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && body.chars().any(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<(Value, SpanMap), YamlError> {
        let file = SourceFile::new("t.yaml", text);
        parse(&file)
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let (value, _) = load("a: yes\nb: true\nc: 12\nd: 1.5\ne: ~\nf: '12'\ng: 0x10\n").unwrap();
        assert_eq!(
            value,
            serde_json::json!({"a": "yes", "b": true, "c": 12, "d": 1.5, "e": null, "f": "12", "g": 16})
        );
    }

    #[test]
    fn spans_point_at_keys_and_values() {
        let text = "tasks:\n  lint:\n    needs: [bulid]\n";
        let file = SourceFile::new("t.yaml", text);
        let (_, spans) = parse(&file).unwrap();
        let needs = spans.find("/tasks/lint/needs/0").value;
        assert_eq!(file.line_col(needs.start), (3, 13));
        assert_eq!(&text[needs.start..needs.end], "bulid");
        let key = spans.key_or_value("/tasks/lint/needs");
        assert_eq!(file.line_col(key.start), (3, 5));
    }

    #[test]
    fn duplicate_keys_are_rejected_at_the_second() {
        let text = "tasks:\n  a: {run: x}\n  a: {run: y}\n";
        let file = SourceFile::new("t.yaml", text);
        let error = parse(&file).unwrap_err();
        assert_eq!(error.message, "duplicate key `a` (first defined on line 2)");
        assert_eq!(file.line_col(error.span.start), (3, 3));
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let text = "a: [1, 2\nb: 3\n";
        let file = SourceFile::new("t.yaml", text);
        let error = parse(&file).unwrap_err();
        assert!(
            error.message.starts_with("invalid YAML"),
            "{}",
            error.message
        );
    }

    #[test]
    fn aliases_and_merge_keys_work() {
        let (value, _) =
            load("base: &b {runner: local, timeout: 5m}\nt:\n  <<: *b\n  timeout: 1m\nl: *b\n")
                .unwrap();
        assert_eq!(
            value["t"],
            serde_json::json!({"runner": "local", "timeout": "1m"})
        );
        assert_eq!(value["l"]["timeout"], "5m");
    }

    #[test]
    fn alias_bombs_fail_fast() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let started = std::time::Instant::now();
        let error = load(&text).unwrap_err();
        assert!(error.message.contains("alias bomb"), "{}", error.message);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
