//! Tests of the mock over real TCP connections, with a small raw HTTP client
//! (the real `claude` CLI drives it in `agent::tests`).

use std::path::Path;
use std::time::Duration;

use indoc::indoc;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether a chunked body ended with its terminating chunk.
    complete: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    /// `(event name, data)` of each SSE record.
    fn events(&self) -> Vec<(String, Value)> {
        String::from_utf8_lossy(&self.body)
            .split("\n\n")
            .filter(|record| !record.trim().is_empty())
            .map(|record| {
                let mut name = String::new();
                let mut data = Value::Null;
                for line in record.lines() {
                    if let Some(rest) = line.strip_prefix("event: ") {
                        name = rest.to_owned();
                    } else if let Some(rest) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(rest).expect("event data");
                    }
                }
                (name, data)
            })
            .collect()
    }
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(key, value)| key.eq_ignore_ascii_case("transfer-encoding") && value == "chunked");
    if !chunked {
        return Response {
            status,
            headers,
            body: rest.to_vec(),
            complete: true,
        };
    }
    let mut body = Vec::new();
    let mut position = 0;
    let mut complete = false;
    while let Some(end) = rest[position..]
        .windows(2)
        .position(|window| window == b"\r\n")
    {
        let size = usize::from_str_radix(
            &String::from_utf8_lossy(&rest[position..position + end]),
            16,
        )
        .expect("size");
        position += end + 2;
        if size == 0 {
            complete = true;
            break;
        }
        body.extend_from_slice(&rest[position..position + size]);
        position += size + 2;
    }
    Response {
        status,
        headers,
        body,
        complete,
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (key, value) in headers {
        head.push_str(&format!("{key}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    parse_response(&raw)
}

async fn messages(port: u16, body: &Value, session: &str) -> Response {
    request(
        port,
        "POST",
        "/v1/messages?beta=true",
        &[
            ("x-claude-code-session-id", session),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

fn script(yaml: &str) -> Script {
    Script::from_yaml_str(yaml, Path::new("<test>")).expect("valid script")
}

/// A request as the CLI sends it under `--bare`, with `assistants` earlier turns.
fn conversation(prompt: &str, assistants: usize, stream: bool) -> Value {
    let mut messages = vec![json!({"role": "user", "content": [{"type": "text", "text": prompt}]})];
    for index in 0..assistants {
        messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": format!("turn {index}")}]}));
        messages.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]}));
    }
    json!({
        "model": "claude-test",
        "max_tokens": 32000,
        "stream": stream,
        "system": [{"type": "text", "text": "You are an agent."}, {"type": "text", "text": "CWD: /work/tree\nDate: 2026-01-01"}],
        "tools": [{"name": "Read"}],
        "messages": messages,
    })
}

const SCRIPT: &str = indoc! {r#"
    rules:
      - name: refactor
        regex: 'Refactor (?<file>\S+)'
        turns:
          - content:
              - text: "Reading {{file}}"
              - tool_use: { name: Read, input: { file_path: "{{cwd}}/{{file}}" } }
            usage: { input_tokens: 11, output_tokens: 22, cache_creation_input_tokens: 33, cache_read_input_tokens: 44 }
          - error: 429
            times: 2
            retry_after: 0
            text: "done: {{prompt}}"
    default:
      turns:
        - text: "default reply"
"#};

#[tokio::test]
async fn streaming_reply_follows_the_messages_api_event_sequence() {
    let server = MockServer::start(script(SCRIPT), 0).await.expect("start");
    let response = messages(
        server.port(),
        &conversation("Refactor src/lib.rs now", 0, true),
        "s1",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert!(response.complete);
    let events = response.events();
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let start = &events[0].1["message"];
    assert_eq!(start["model"], "claude-test");
    assert_eq!(start["usage"]["input_tokens"], 11);
    assert_eq!(start["usage"]["cache_creation_input_tokens"], 33);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 44);
    let text: String = events
        .iter()
        .filter_map(|(_, data)| data["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Reading src/lib.rs");
    assert_eq!(events[6].1["content_block"]["name"], "Read");
    let input: String = events
        .iter()
        .filter_map(|(_, data)| data["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).expect("input JSON"),
        json!({"file_path": "/work/tree/src/lib.rs"})
    );
    assert_eq!(events[10].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[10].1["usage"]["output_tokens"], 22);
    assert_eq!(server.model_request_count(), 1);
    assert_eq!(server.stats().per_rule.get("refactor"), Some(&1));
    server.shutdown().await;
}

#[tokio::test]
async fn errors_repeat_per_conversation_then_the_turn_is_served() {
    let server = MockServer::start(script(SCRIPT), 0).await.expect("start");
    let body = conversation("Refactor a.rs", 1, false);
    for _ in 0..2 {
        let response = messages(server.port(), &body, "conversation-a").await;
        assert_eq!(response.status, 429);
        assert_eq!(response.header("retry-after"), Some("0"));
        let error = response.json();
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "rate_limit_error");
    }
    let response = messages(server.port(), &body, "conversation-a").await;
    assert_eq!(response.status, 200);
    let message = response.json();
    assert_eq!(message["content"][0]["text"], "done: Refactor a.rs");
    assert_eq!(message["stop_reason"], "end_turn");
    // Another conversation gets its own two errors.
    assert_eq!(
        messages(server.port(), &body, "conversation-b")
            .await
            .status,
        429
    );
    // Past the last turn: a closing text, not a loop.
    let past = messages(
        server.port(),
        &conversation("Refactor a.rs", 2, false),
        "conversation-a",
    )
    .await;
    assert!(past.json()["content"][0]["text"]
        .as_str()
        .is_some_and(|text| text.contains("has no turn 2")));
    let stats = server.stats();
    assert_eq!(stats.model_requests, 5);
    assert_eq!(stats.faults_injected, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn overload_and_server_errors_use_anthropic_error_types() {
    let server = MockServer::start(script("default:\n  turns:\n    - error: 529\n"), 0)
        .await
        .expect("start");
    let response = messages(server.port(), &conversation("x", 0, true), "s").await;
    assert_eq!(response.status, 529);
    assert_eq!(response.json()["error"]["type"], "overloaded_error");
    assert_eq!(response.header("retry-after"), None);
    server.shutdown().await;
    let server = MockServer::start(
        script("default:\n  turns:\n    - error: 500\n      error_message: boom\n"),
        0,
    )
    .await
    .expect("start");
    let response = messages(server.port(), &conversation("x", 0, true), "s").await;
    assert_eq!(response.status, 500);
    assert_eq!(
        response.json()["error"],
        json!({"type": "api_error", "message": "boom"})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn auxiliary_requests_are_counted_apart_and_stats_are_served() {
    let server = MockServer::start(
        script("rules:\n  - match: only-this\n    turns:\n      - text: hi\n"),
        0,
    )
    .await
    .expect("start");
    let port = server.port();
    let count = request(
        port,
        "POST",
        "/v1/messages/count_tokens",
        &[],
        br#"{"messages":[]}"#,
    )
    .await;
    assert_eq!(count.status, 200);
    assert!(count.json()["input_tokens"].is_u64());
    let quota =
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]});
    assert_eq!(
        messages(port, &quota, "s").await.json()["usage"]["output_tokens"],
        0
    );
    let title = json!({"model": "m", "max_tokens": 512, "stream": false, "messages": [{"role": "user", "content": "title"}]});
    assert_eq!(messages(port, &title, "s").await.status, 200);
    assert_eq!(
        request(port, "GET", "/api/hello", &[], b"").await.status,
        404
    );
    let unmatched = messages(port, &conversation("something else", 0, true), "s").await;
    assert_eq!(unmatched.status, 400);
    assert_eq!(unmatched.json()["error"]["type"], "invalid_request_error");
    let stats = request(port, "GET", "/__ccflow/stats", &[], b"")
        .await
        .json();
    let stats: MockStats = serde_json::from_value(stats).expect("stats JSON");
    assert_eq!(
        stats,
        MockStats {
            requests: 5,
            model_requests: 1,
            count_tokens_requests: 1,
            auxiliary_requests: 2,
            other_requests: 1,
            faults_injected: 0,
            unmatched_requests: 1,
            per_rule: Default::default(),
        }
    );
    assert_eq!(server.request_count(), 5);
    server.shutdown().await;
}

#[tokio::test]
async fn keep_alive_and_chunked_request_bodies() {
    let server = MockServer::start(script(SCRIPT), 0).await.expect("start");
    let mut stream = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .expect("connect");
    let body = conversation("hello", 0, false).to_string();
    let (first, second) = body.split_at(body.len() / 2);
    let chunked = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    let plain = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(chunked.as_bytes()).await.expect("write");
    stream.write_all(plain.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(text.matches("default reply").count(), 2);
    assert_eq!(server.model_request_count(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn cut_stream_and_hang_faults() {
    let server = MockServer::start(
        script(indoc! {"
            rules:
              - match: cut
                turns:
                  - stop_after_events: 3
                    text: never finished
              - match: hang
                turns:
                  - hang: true
        "}),
        0,
    )
    .await
    .expect("start");
    let cut = messages(server.port(), &conversation("cut", 0, true), "s").await;
    assert_eq!(cut.status, 200);
    assert!(!cut.complete, "a cut stream has no terminating chunk");
    assert_eq!(cut.events().len(), 3);

    let mut stream = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .expect("connect");
    let body = conversation("hang", 0, true).to_string();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut buffer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("headers arrive")
        .expect("read");
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200 OK"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer))
            .await
            .is_err(),
        "a hung response sends nothing after its headers"
    );
    // Shutdown closes the hung connection instead of waiting for the client.
    tokio::time::timeout(Duration::from_secs(2), server.shutdown())
        .await
        .expect("shutdown is prompt");
    let after = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer))
        .await
        .expect("closed");
    assert!(matches!(after, Ok(0) | Err(_)));
}

#[test]
fn script_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "unknown.yaml",
            "rules:\n  - matc: x\n    turns: [{text: a}]\n",
            "unknown field `matc`",
        ),
        (
            "var.yaml",
            "default:\n  turns:\n    - text: '{{fiel}}'\n",
            "unknown template variable `fiel`",
        ),
        (
            "regex.yaml",
            "rules:\n  - regex: '(unclosed'\n    turns: [{text: a}]\n",
            "invalid `regex`",
        ),
        ("empty.yaml", "", "the file is empty"),
        (
            "none.yaml",
            "rules: []\n",
            "no `rules` and no `default` rule",
        ),
        (
            "times.yaml",
            "default:\n  turns:\n    - {text: a, times: 2}\n",
            "`times` needs",
        ),
        (
            "status.yaml",
            "default:\n  turns:\n    - {error: 200}\n",
            "HTTP error status",
        ),
        ("syntax.yaml", "rules: [\n", "invalid mock script"),
        ("bad.json", "{\"rules\": ", "EOF"),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let message = load_script(&path).expect_err(name).to_string();
        assert!(message.contains(name), "{message}");
        assert!(message.contains(expected), "{name}: {message}");
    }
    let missing = load_script(&dir.path().join("missing.yaml")).expect_err("missing");
    assert!(missing.to_string().contains("missing.yaml"));
    let path = dir.path().join("ok.json");
    std::fs::write(
        &path,
        r#"{"default": {"turns": [{"text": "hi", "usage": {"input_tokens": 3}}]}}"#,
    )
    .expect("write");
    let loaded = load_script(&path).expect("JSON script");
    assert_eq!(
        loaded.default.map(|rule| rule.turns[0].usage.input_tokens),
        Some(3)
    );
}

#[test]
fn run_cli_rejects_an_invalid_script_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "rules: 3\n").expect("write");
    assert_eq!(run_cli(&path, 0), 2);
}

/// Not a test on its own: the body of the child process that
/// `run_cli_serves_until_sigterm` starts (this test binary, filtered to this
/// test, with `CCFLOW_MOCK_CLI_CHILD` naming the script).
#[test]
fn run_cli_child() {
    if let Ok(script) = std::env::var("CCFLOW_MOCK_CLI_CHILD") {
        std::process::exit(run_cli(Path::new(&script), 0));
    }
}

#[test]
fn run_cli_serves_until_sigterm() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let script_path = dir.path().join("mock.yaml");
    std::fs::write(&script_path, "default:\n  turns:\n    - text: hi\n").expect("write");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "mock::tests::run_cli_child", "--nocapture"])
        .env("CCFLOW_MOCK_CLI_CHILD", &script_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let port: u16 = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read") > 0,
            "no `listening on` line"
        );
        if let Some(rest) = line.trim().strip_prefix("listening on http://127.0.0.1:") {
            break rest.parse().expect("port");
        }
    };
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(b"GET /__ccflow/stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let response = parse_response(&raw);
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["model_requests"], 0);
    // SAFETY: kill(2) on the child's pid, which we have not reaped yet.
    unsafe {
        libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn delays_hold_back_headers_and_events() {
    let server = MockServer::start(
        script("default:\n  turns:\n    - text: slow reply here\n      delay_ms: 200\n      event_delay_ms: 20\n"),
        0,
    )
    .await
    .expect("start");
    let started = std::time::Instant::now();
    let response = messages(server.port(), &conversation("x", 0, true), "s").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, 200);
    let events = response.events().len();
    // 200 ms before the headers, then 20 ms between each of the events.
    let floor = Duration::from_millis(200 + 20 * (events as u64 - 1));
    assert!(elapsed >= floor, "{elapsed:?} < {floor:?}");
    server.shutdown().await;
}
