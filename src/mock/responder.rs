//! Turns a script `Turn` into what the Messages API would send: the SSE event
//! sequence of a streaming reply, the JSON of a non-streaming one, and error
//! bodies in Anthropic's format.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use super::script::{Block, Turn};
use super::template;

/// A content block with its templates filled in and its id assigned.
enum Rendered {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
}

/// A reply ready to serialise either as SSE or as one JSON message.
pub(crate) struct Reply {
    message_id: String,
    model: String,
    blocks: Vec<Rendered>,
    stop_reason: String,
    usage: super::script::TurnUsage,
}

impl Reply {
    /// Renders `turn` with the template variables `vars`; `ids` numbers the
    /// message and tool_use ids so they are unique for the server's lifetime.
    pub(crate) fn new(
        turn: &Turn,
        vars: &[(String, String)],
        model: &str,
        ids: &AtomicU64,
    ) -> Reply {
        let mut has_tool = false;
        let blocks = turn
            .blocks()
            .into_iter()
            .map(|block| match block {
                Block::Text(text) => Rendered::Text(template::render(&text, vars)),
                Block::ToolUse(tool) => {
                    has_tool = true;
                    Rendered::ToolUse {
                        id: tool.id.unwrap_or_else(|| {
                            format!("toolu_mock_{}", ids.fetch_add(1, Ordering::Relaxed))
                        }),
                        name: tool.name,
                        input: template::render_value(&tool.input, vars),
                    }
                }
            })
            .collect();
        let stop_reason = turn
            .stop_reason
            .clone()
            .unwrap_or_else(|| if has_tool { "tool_use" } else { "end_turn" }.to_owned());
        Reply {
            message_id: format!("msg_mock_{}", ids.fetch_add(1, Ordering::Relaxed)),
            model: model.to_owned(),
            blocks,
            stop_reason,
            usage: turn.usage,
        }
    }

    /// The SSE events of a streaming reply, each a complete `event:`/`data:` record.
    pub(crate) fn sse_events(&self) -> Vec<String> {
        let usage = &self.usage;
        let mut events = vec![sse(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": self.message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": usage.input_tokens,
                        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                        "cache_read_input_tokens": usage.cache_read_input_tokens,
                        // As the real API: a small count at the start, the
                        // total in message_delta (which the CLI keeps).
                        "output_tokens": usage.output_tokens.min(1),
                    },
                },
            }),
        )];
        events.push(sse("ping", &json!({"type": "ping"})));
        for (index, block) in self.blocks.iter().enumerate() {
            match block {
                Rendered::Text(text) => {
                    events.push(sse(
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": index,
                                "content_block": {"type": "text", "text": ""}}),
                    ));
                    for piece in split_in_two(text) {
                        events.push(sse(
                            "content_block_delta",
                            &json!({"type": "content_block_delta", "index": index,
                                    "delta": {"type": "text_delta", "text": piece}}),
                        ));
                    }
                }
                Rendered::ToolUse { id, name, input } => {
                    events.push(sse(
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": index,
                                "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                    ));
                    // Sent in two pieces, as the API does, so the client's
                    // partial-JSON accumulation is exercised.
                    let input_json = input.to_string();
                    for piece in split_in_two(&input_json) {
                        events.push(sse(
                            "content_block_delta",
                            &json!({"type": "content_block_delta", "index": index,
                                    "delta": {"type": "input_json_delta", "partial_json": piece}}),
                        ));
                    }
                }
            }
            events.push(sse(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
        events.push(sse(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                    "usage": {"output_tokens": usage.output_tokens}}),
        ));
        events.push(sse("message_stop", &json!({"type": "message_stop"})));
        events
    }

    /// The JSON body of a non-streaming reply.
    pub(crate) fn message_json(&self) -> serde_json::Value {
        let content: Vec<serde_json::Value> = self
            .blocks
            .iter()
            .map(|block| match block {
                Rendered::Text(text) => json!({"type": "text", "text": text}),
                Rendered::ToolUse { id, name, input } => {
                    json!({"type": "tool_use", "id": id, "name": name, "input": input})
                }
            })
            .collect();
        json!({
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
                "cache_creation_input_tokens": self.usage.cache_creation_input_tokens,
                "cache_read_input_tokens": self.usage.cache_read_input_tokens,
            },
        })
    }
}

fn sse(event: &str, data: &serde_json::Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// Splits a string in two at a char boundary (one piece when short).
fn split_in_two(text: &str) -> Vec<&str> {
    if text.len() < 8 {
        return vec![text];
    }
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    vec![&text[..middle], &text[middle..]]
}

/// An error body in Anthropic's format, e.g.
/// `{"type":"error","error":{"type":"rate_limit_error","message":"..."}}`.
pub(crate) fn error_body(status: u16, message: Option<&str>, request_id: &str) -> Vec<u8> {
    let (kind, default_message) = match status {
        400 => ("invalid_request_error", "invalid request"),
        401 => ("authentication_error", "invalid x-api-key"),
        403 => ("permission_error", "permission denied"),
        404 => ("not_found_error", "not found"),
        413 => ("request_too_large", "request too large"),
        429 => ("rate_limit_error", "rate limited by the ccflow mock"),
        529 => ("overloaded_error", "Overloaded"),
        _ => ("api_error", "internal server error (ccflow mock)"),
    };
    json!({
        "type": "error",
        "error": {"type": kind, "message": message.unwrap_or(default_message)},
        "request_id": request_id,
    })
    .to_string()
    .into_bytes()
}
