//! Parsing the CLI's `--output-format stream-json` lines (one JSON object per
//! line) into typed events, and turning tool calls into live progress text.
//!
//! Parsing is lenient about content (unknown line types and fields are kept
//! or ignored: the CLI adds fields often) and strict about form (a line that
//! is not a JSON object with a `type` is an error naming its line number).

use std::path::Path;

use serde_json::Value;

use super::error::StreamError;

/// Token counts of a session (the `result` line's `usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Uncached input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation: u64,
}

impl Usage {
    /// All tokens, for budgets and progress.
    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_creation
    }

    fn from_json(value: Option<&Value>) -> Usage {
        let field = |name: &str| {
            value
                .and_then(|usage| usage.get(name))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Usage {
            input: field("input_tokens"),
            output: field("output_tokens"),
            cache_read: field("cache_read_input_tokens"),
            cache_creation: field("cache_creation_input_tokens"),
        }
    }
}

/// One content block of an `assistant` line.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentBlock {
    /// Text the model wrote.
    Text(String),
    /// A tool call.
    ToolUse {
        /// The block id, matched by the tool result.
        id: String,
        /// The tool (`Read`, `Edit`, `Bash`, …).
        name: String,
        /// Its input.
        input: Value,
    },
    /// Thinking text (may be empty when redacted).
    Thinking(String),
    /// Any other block type, kept as is.
    Other(Value),
}

/// The final `result` line.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultMessage {
    /// `success`, `error_max_turns`, `error_max_budget_usd`, `error_during_execution`…
    pub subtype: String,
    /// Set on API errors even when `subtype` is `success`.
    pub is_error: bool,
    /// Model turns taken.
    pub num_turns: u32,
    /// The final text (or the error text).
    pub result: Option<String>,
    /// The session id (for `--resume`).
    pub session_id: Option<String>,
    /// Token usage summed over the session: the sum of `modelUsage` when the
    /// line has it (CLI 2.1.x zeroes `usage` on `error_max_budget_usd` while
    /// `modelUsage`, which `total_cost_usd` is computed from, stays right),
    /// else `usage`.
    pub usage: Usage,
    /// `modelUsage`: usage per model name.
    pub model_usage: std::collections::BTreeMap<String, Usage>,
    /// The CLI's own cost figure, from the usage the API reported.
    pub total_cost_usd: f64,
    /// Tool calls the permission mode refused.
    pub permission_denials: Vec<Value>,
    /// Error texts (on error subtypes).
    pub errors: Vec<String>,
    /// The HTTP status of the API error that ended the session, if any.
    pub api_error_status: Option<u16>,
    /// Wall time the CLI measured.
    pub duration_ms: Option<u64>,
}

/// One line of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// `system`/`init`: the session starts.
    Init {
        /// The session id.
        session_id: Option<String>,
        /// The model the CLI resolved.
        model: Option<String>,
        /// The working directory.
        cwd: Option<String>,
        /// The tools offered to the model.
        tools: Vec<String>,
    },
    /// `system`/`api_retry`: the CLI retries an API call (rate limit, overload…).
    ApiRetry {
        /// 1-based attempt number.
        attempt: u32,
        /// The CLI's retry limit.
        max_retries: u32,
        /// The delay before the retry.
        retry_delay_ms: u64,
        /// The HTTP status that caused it.
        error_status: Option<u16>,
        /// The CLI's error kind (`rate_limit`, `overloaded`…).
        error: Option<String>,
    },
    /// `system`/`permission_denied`: a tool call was refused.
    PermissionDenied {
        /// The tool, when given.
        tool_name: Option<String>,
        /// Why, when given.
        message: Option<String>,
        /// The whole line.
        raw: Value,
    },
    /// Any other `system` subtype.
    System {
        /// The subtype.
        subtype: String,
        /// The whole line.
        raw: Value,
    },
    /// `assistant`: content blocks of a model reply.
    Assistant {
        /// The blocks on this line.
        blocks: Vec<ContentBlock>,
    },
    /// `user`: tool results fed back to the model.
    User {
        /// `(tool_use_id, is_error)` of each tool result.
        tool_results: Vec<(String, bool)>,
    },
    /// The final `result`.
    Result(ResultMessage),
    /// A line type this version does not know; kept, not an error.
    Unknown {
        /// Its `type`.
        kind: String,
        /// The whole line.
        raw: Value,
    },
}

fn string(value: &Value, name: &str) -> Option<String> {
    value.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn small(value: &Value, name: &str) -> Option<u32> {
    value
        .get(name)
        .and_then(Value::as_u64)
        .map(|number| u32::try_from(number).unwrap_or(u32::MAX))
}

fn status(value: &Value, name: &str) -> Option<u16> {
    let field = value.get(name)?;
    field
        .as_u64()
        .or_else(|| field.as_str().and_then(|text| text.parse().ok()))
        .and_then(|number| u16::try_from(number).ok())
}

/// Parses one stdout line; `line_number` (1-based) goes into the error.
pub fn parse_line(line: &str, line_number: usize) -> Result<StreamEvent, StreamError> {
    let malformed = |message: String| StreamError {
        line: line_number,
        message,
    };
    let value: Value = serde_json::from_str(line).map_err(|error| malformed(error.to_string()))?;
    let Some(kind) = value.get("type").and_then(Value::as_str).map(str::to_owned) else {
        return Err(malformed(
            "not a JSON object with a string `type`".to_owned(),
        ));
    };
    Ok(match kind.as_str() {
        "system" => parse_system(value),
        "assistant" => {
            let blocks = value
                .pointer("/message/content")
                .and_then(Value::as_array)
                .map(|blocks| blocks.iter().map(parse_block).collect())
                .unwrap_or_default();
            StreamEvent::Assistant { blocks }
        }
        "user" => {
            let tool_results = value
                .pointer("/message/content")
                .and_then(Value::as_array)
                .map(|blocks| {
                    blocks
                        .iter()
                        .filter(|block| {
                            block.get("type").and_then(Value::as_str) == Some("tool_result")
                        })
                        .map(|block| {
                            let id = string(block, "tool_use_id").unwrap_or_default();
                            let is_error = block
                                .get("is_error")
                                .and_then(Value::as_bool)
                                .unwrap_or(false);
                            (id, is_error)
                        })
                        .collect()
                })
                .unwrap_or_default();
            StreamEvent::User { tool_results }
        }
        "result" => StreamEvent::Result(parse_result(&value)),
        _ => StreamEvent::Unknown { kind, raw: value },
    })
}

fn parse_system(value: Value) -> StreamEvent {
    let subtype = string(&value, "subtype").unwrap_or_default();
    match subtype.as_str() {
        "init" => StreamEvent::Init {
            session_id: string(&value, "session_id"),
            model: string(&value, "model"),
            cwd: string(&value, "cwd"),
            tools: value
                .get("tools")
                .and_then(Value::as_array)
                .map(|tools| {
                    tools
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        },
        "api_retry" => StreamEvent::ApiRetry {
            attempt: small(&value, "attempt").unwrap_or(0),
            max_retries: small(&value, "max_retries").unwrap_or(0),
            retry_delay_ms: value
                .get("retry_delay_ms")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            error_status: status(&value, "error_status"),
            error: string(&value, "error"),
        },
        "permission_denied" => StreamEvent::PermissionDenied {
            tool_name: string(&value, "tool_name"),
            message: string(&value, "message"),
            raw: value,
        },
        _ => StreamEvent::System {
            subtype,
            raw: value,
        },
    }
}

fn parse_block(block: &Value) -> ContentBlock {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => ContentBlock::Text(string(block, "text").unwrap_or_default()),
        Some("tool_use") => ContentBlock::ToolUse {
            id: string(block, "id").unwrap_or_default(),
            name: string(block, "name").unwrap_or_default(),
            input: block.get("input").cloned().unwrap_or(Value::Null),
        },
        Some("thinking") => ContentBlock::Thinking(string(block, "thinking").unwrap_or_default()),
        _ => ContentBlock::Other(block.clone()),
    }
}

fn parse_result(value: &Value) -> ResultMessage {
    let errors = value
        .get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .map(|error| {
                    error
                        .as_str()
                        .map_or_else(|| error.to_string(), str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let model_usage: std::collections::BTreeMap<String, Usage> = value
        .get("modelUsage")
        .and_then(Value::as_object)
        .map(|models| {
            models
                .iter()
                .map(|(model, usage)| {
                    let field = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
                    let usage = Usage {
                        input: field("inputTokens"),
                        output: field("outputTokens"),
                        cache_read: field("cacheReadInputTokens"),
                        cache_creation: field("cacheCreationInputTokens"),
                    };
                    (model.clone(), usage)
                })
                .collect()
        })
        .unwrap_or_default();
    let usage = if model_usage.is_empty() {
        Usage::from_json(value.get("usage"))
    } else {
        model_usage
            .values()
            .fold(Usage::default(), |sum, usage| Usage {
                input: sum.input + usage.input,
                output: sum.output + usage.output,
                cache_read: sum.cache_read + usage.cache_read,
                cache_creation: sum.cache_creation + usage.cache_creation,
            })
    };
    ResultMessage {
        subtype: string(value, "subtype").unwrap_or_default(),
        is_error: value
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        num_turns: small(value, "num_turns").unwrap_or(0),
        result: string(value, "result"),
        session_id: string(value, "session_id"),
        usage,
        model_usage,
        total_cost_usd: value
            .get("total_cost_usd")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        permission_denials: value
            .get("permission_denials")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        errors,
        api_error_status: status(value, "api_error_status"),
        duration_ms: value.get("duration_ms").and_then(Value::as_u64),
    }
}

/// The longest progress text, so a long command does not flood a status line.
const ACTIVITY_MAX_CHARS: usize = 80;

/// Live progress text for an event, such as `Edit src/lib.rs` or
/// `Bash cargo check`; file paths are shown relative to `worktree`.
/// `None` for events that are not worth showing.
pub fn activity(event: &StreamEvent, worktree: &Path) -> Option<String> {
    match event {
        StreamEvent::Assistant { blocks } => blocks.iter().rev().find_map(|block| match block {
            ContentBlock::ToolUse { name, input, .. } => Some(tool_activity(name, input, worktree)),
            _ => None,
        }),
        StreamEvent::ApiRetry {
            attempt,
            max_retries,
            error_status,
            ..
        } => Some(match error_status {
            Some(status) => format!("API retry {attempt}/{max_retries} (HTTP {status})"),
            None => format!("API retry {attempt}/{max_retries}"),
        }),
        _ => None,
    }
}

fn tool_activity(name: &str, input: &Value, worktree: &Path) -> String {
    let field = |key: &str| input.get(key).and_then(Value::as_str);
    let detail = match name {
        "Read" | "Edit" | "Write" | "MultiEdit" | "NotebookEdit" => field("file_path")
            .or_else(|| field("notebook_path"))
            .map(|path| relative(path, worktree)),
        "Bash" => field("command").map(|command| command.lines().next().unwrap_or("").to_owned()),
        "Grep" | "Glob" => field("pattern").map(str::to_owned),
        "WebFetch" => field("url").map(str::to_owned),
        "WebSearch" => field("query").map(str::to_owned),
        "Task" | "Agent" => field("description").map(str::to_owned),
        _ => None,
    };
    let text = match detail {
        Some(detail) if !detail.is_empty() => format!("{name} {detail}"),
        _ => name.to_owned(),
    };
    if text.chars().count() > ACTIVITY_MAX_CHARS {
        let mut short: String = text.chars().take(ACTIVITY_MAX_CHARS - 1).collect();
        short.push('…');
        short
    } else {
        text
    }
}

fn relative(path: &str, worktree: &Path) -> String {
    Path::new(path)
        .strip_prefix(worktree)
        .map_or_else(|_| path.to_owned(), |rest| rest.display().to_string())
}
