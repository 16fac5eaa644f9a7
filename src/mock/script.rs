//! The mock's script: which canned replies to give to which conversation.
//!
//! A script is YAML (or JSON, chosen by the `.json` extension) with a list of
//! `rules` and an optional `default` rule. Each request is matched against the
//! rules by its first user message (first match wins); the rule's turns are
//! served in order, the turn index being the number of assistant messages
//! already in the request. This file parses and validates; serving lives in
//! `server.rs` and `responder.rs`.

use std::path::Path;

use regex::Regex;
use serde::Deserialize;
use yaml_rust2::{Yaml, YamlLoader};

use super::error::MockError;
use super::template;

/// A validated script, ready to serve.
#[derive(Debug, Clone)]
pub struct Script {
    /// The rules, tried in order.
    pub rules: Vec<Rule>,
    /// The rule used when no other matches (serves every conversation).
    pub default: Option<Rule>,
}

/// One rule: which conversations it answers and the turns it serves.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's name in the stats (`name:`, else `rules[i]`, or `default`).
    pub name: String,
    /// `match:` — a substring of the first user message.
    pub contains: Option<String>,
    /// `regex:` — a regular expression searched in the first user message;
    /// its named groups become template variables.
    pub regex: Option<Regex>,
    /// The turns, one per model request in the conversation.
    pub turns: Vec<Turn>,
}

/// One reply (or fault) for one model request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// Content blocks of the reply.
    #[serde(default)]
    pub content: Vec<Block>,
    /// Shorthand for a single text block (appended after `content`).
    #[serde(default)]
    pub text: Option<String>,
    /// `end_turn`, `tool_use`, `max_tokens`…; defaults to `tool_use` when the
    /// turn has a tool_use block, else `end_turn`.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// Token usage reported for this reply.
    #[serde(default)]
    pub usage: TurnUsage,
    /// Wait this long before sending the response headers.
    #[serde(default)]
    pub delay_ms: u64,
    /// Wait this long between two streamed events.
    #[serde(default)]
    pub event_delay_ms: u64,
    /// Answer with this HTTP error status (429, 529, 500, …) instead.
    #[serde(default)]
    pub error: Option<u16>,
    /// The error message (default: one fitting the status).
    #[serde(default)]
    pub error_message: Option<String>,
    /// The `retry-after` header (seconds) sent with errors; default 0 for 429.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Accept the request, send the headers and then nothing.
    #[serde(default)]
    pub hang: bool,
    /// Stream only this many SSE events, then close the connection.
    #[serde(default)]
    pub stop_after_events: Option<usize>,
    /// How many requests of a conversation at this turn get the fault
    /// (`error`, `hang`, `stop_after_events`) before the content is served;
    /// absent means every request.
    #[serde(default)]
    pub times: Option<u32>,
}

/// Token usage numbers, as the API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnUsage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

/// A content block of a reply.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Block {
    /// `- text: "..."`
    Text(String),
    /// `- tool_use: { name: Read, input: { file_path: "{{cwd}}/a.txt" } }`
    ToolUse(ToolUse),
}

/// A tool call the mock model makes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolUse {
    /// The tool's name (`Read`, `Edit`, `Bash`, …).
    pub name: String,
    /// The tool's input; strings are templated.
    #[serde(default = "empty_object")]
    pub input: serde_json::Value,
    /// The block id (default: a unique `toolu_mock_N`).
    #[serde(default)]
    pub id: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl Turn {
    /// Whether this turn holds a fault (error, hang or cut stream).
    pub fn has_fault(&self) -> bool {
        self.error.is_some() || self.hang || self.stop_after_events.is_some()
    }

    /// The content blocks including the `text:` shorthand.
    pub fn blocks(&self) -> Vec<Block> {
        let mut blocks = self.content.clone();
        if let Some(text) = &self.text {
            blocks.push(Block::Text(text.clone()));
        }
        blocks
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    default: Option<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "match")]
    contains: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    turns: Vec<Turn>,
}

/// Loads and validates a script file (YAML, or JSON when it ends in `.json`).
///
/// Errors name the file and the problem.
pub fn load_script(path: &Path) -> Result<Script, MockError> {
    let text = fs_err::read_to_string(path).map_err(|source| MockError::ReadScript {
        path: path.to_path_buf(),
        source,
    })?;
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    if is_json {
        Script::from_json_str(&text, path)
    } else {
        Script::from_yaml_str(&text, path)
    }
}

impl Script {
    /// Parses a YAML script; `origin` names it in errors.
    pub fn from_yaml_str(text: &str, origin: &Path) -> Result<Script, MockError> {
        let invalid = |message: String| MockError::InvalidScript {
            path: origin.to_path_buf(),
            message,
        };
        let docs = YamlLoader::load_from_str(text).map_err(|error| invalid(error.to_string()))?;
        let value = match docs.into_iter().next() {
            Some(doc) => yaml_to_json(&doc).map_err(invalid)?,
            None => return Err(invalid("the file is empty".to_owned())),
        };
        Script::from_value(value, origin)
    }

    /// Parses a JSON script; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: &Path) -> Result<Script, MockError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| MockError::InvalidScript {
                path: origin.to_path_buf(),
                message: error.to_string(),
            })?;
        Script::from_value(value, origin)
    }

    fn from_value(value: serde_json::Value, origin: &Path) -> Result<Script, MockError> {
        let invalid = |message: String| MockError::InvalidScript {
            path: origin.to_path_buf(),
            message,
        };
        let raw: RawScript =
            serde_json::from_value(value).map_err(|error| invalid(error.to_string()))?;
        if raw.rules.is_empty() && raw.default.is_none() {
            return Err(invalid("no `rules` and no `default` rule".to_owned()));
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (index, rule) in raw.rules.into_iter().enumerate() {
            let fallback = format!("rules[{index}]");
            rules.push(compile_rule(rule, fallback).map_err(&invalid)?);
        }
        let default = match raw.default {
            Some(rule) => Some(compile_rule(rule, "default".to_owned()).map_err(&invalid)?),
            None => None,
        };
        Ok(Script { rules, default })
    }

    /// The rule answering a conversation whose first user message is `first_user`,
    /// with its index (`None` for the default rule).
    pub(crate) fn find_rule(&self, first_user: &str) -> Option<(Option<usize>, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches(first_user))
            .map(|(index, rule)| (Some(index), rule))
            .or_else(|| self.default.as_ref().map(|rule| (None, rule)))
    }
}

impl Rule {
    fn matches(&self, first_user: &str) -> bool {
        let contains = self
            .contains
            .as_ref()
            .is_none_or(|needle| first_user.contains(needle.as_str()));
        let regex = self
            .regex
            .as_ref()
            .is_none_or(|regex| regex.is_match(first_user));
        contains && regex
    }

    /// The named captures of `regex:` in the first user message.
    pub(crate) fn captures(&self, first_user: &str) -> Vec<(String, String)> {
        let Some(regex) = &self.regex else {
            return Vec::new();
        };
        let Some(captures) = regex.captures(first_user) else {
            return Vec::new();
        };
        regex
            .capture_names()
            .flatten()
            .filter_map(|name| {
                captures
                    .name(name)
                    .map(|found| (name.to_owned(), found.as_str().to_owned()))
            })
            .collect()
    }
}

fn compile_rule(raw: RawRule, fallback_name: String) -> Result<Rule, String> {
    let name = raw.name.unwrap_or(fallback_name);
    let regex = match &raw.regex {
        Some(pattern) => Some(
            Regex::new(pattern)
                .map_err(|error| format!("rule `{name}`: invalid `regex`: {error}"))?,
        ),
        None => None,
    };
    if raw.turns.is_empty() {
        return Err(format!("rule `{name}` has no `turns`"));
    }
    // Template variables are checked now so that a typo fails at load time, not
    // as a mysterious `{{fiel}}` path in an agent's tool call.
    let mut known = vec!["cwd".to_owned(), "prompt".to_owned(), "turn".to_owned()];
    if let Some(regex) = &regex {
        known.extend(regex.capture_names().flatten().map(str::to_owned));
    }
    for (index, turn) in raw.turns.iter().enumerate() {
        let at = |problem: String| format!("rule `{name}`, turn {index}: {problem}");
        if let Some(status) = turn.error {
            if !(400..=599).contains(&status) {
                return Err(at(format!(
                    "`error` must be an HTTP error status (400-599), got {status}"
                )));
            }
        }
        if turn.times.is_some() && !turn.has_fault() {
            return Err(at(
                "`times` needs `error`, `hang` or `stop_after_events`".to_owned()
            ));
        }
        let mut strings = Vec::new();
        for block in turn.blocks() {
            match block {
                Block::Text(text) => strings.push(text),
                Block::ToolUse(tool) => collect_strings(&tool.input, &mut strings),
            }
        }
        for text in strings {
            for variable in template::variables(&text) {
                if !known.contains(&variable) {
                    return Err(at(format!(
                        "unknown template variable `{variable}` (known: {})",
                        known.join(", ")
                    )));
                }
            }
        }
    }
    Ok(Rule {
        name,
        contains: raw.contains,
        regex,
        turns: raw.turns,
    })
}

fn collect_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(text) => out.push(text.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_strings(item, out)),
        serde_json::Value::Object(map) => map.values().for_each(|item| collect_strings(item, out)),
        _ => {}
    }
}

/// Converts a YAML document to JSON so serde can check it against the types.
fn yaml_to_json(yaml: &Yaml) -> Result<serde_json::Value, String> {
    Ok(match yaml {
        Yaml::Null => serde_json::Value::Null,
        Yaml::Boolean(value) => serde_json::Value::Bool(*value),
        Yaml::Integer(value) => serde_json::Value::from(*value),
        Yaml::Real(text) => {
            let number: f64 = text
                .parse()
                .map_err(|_| format!("invalid number `{text}`"))?;
            serde_json::Number::from_f64(number)
                .map(serde_json::Value::Number)
                .ok_or_else(|| format!("invalid number `{text}`"))?
        }
        Yaml::String(text) => serde_json::Value::String(text.clone()),
        Yaml::Array(items) => {
            serde_json::Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?)
        }
        Yaml::Hash(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map {
                let key = match key {
                    Yaml::String(text) | Yaml::Real(text) => text.clone(),
                    Yaml::Integer(number) => number.to_string(),
                    Yaml::Boolean(value) => value.to_string(),
                    _ => return Err("mapping keys must be scalars".to_owned()),
                };
                object.insert(key, yaml_to_json(value)?);
            }
            serde_json::Value::Object(object)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported".to_owned()),
        Yaml::BadValue => return Err("invalid YAML value".to_owned()),
    })
}
