//! The mock server: accepts connections on 127.0.0.1, routes requests
//! (`/v1/messages`, `/v1/messages/count_tokens`, `/__ccflow/stats`), picks the
//! script turn for each model request, injects faults and counts everything.
//!
//! Model requests are counted apart from the CLI's auxiliary ones (token
//! counting, quota probes, title generation) so tests can assert exactly how
//! many turns the agent took.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::MockError;
use super::http::{self, Request};
use super::responder::{error_body, Reply};
use super::script::{Script, Turn};

/// A running mock of the Anthropic Messages API on 127.0.0.1.
#[derive(Debug)]
pub struct MockServer {
    port: u16,
    state: Arc<State>,
    cancel: CancellationToken,
    accept_task: Option<JoinHandle<()>>,
}

/// The server's counters, also served as JSON at `GET /__ccflow/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockStats {
    /// Every API request (model, auxiliary, token counting, unknown paths);
    /// the stats endpoint itself is not counted.
    pub requests: u64,
    /// `POST /v1/messages` requests answered from the script (agent turns,
    /// including those answered with an injected fault).
    pub model_requests: u64,
    /// `POST /v1/messages/count_tokens` requests.
    pub count_tokens_requests: u64,
    /// Auxiliary `POST /v1/messages` requests (quota probes with
    /// `max_tokens: 1`, non-streaming tool-less helpers such as titles).
    pub auxiliary_requests: u64,
    /// Requests to any other path (answered 404).
    pub other_requests: u64,
    /// Responses that were an injected fault (error, hang, cut stream).
    pub faults_injected: u64,
    /// Model requests that no rule matched (answered 400).
    pub unmatched_requests: u64,
    /// Model requests per rule name.
    pub per_rule: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct State {
    script: Script,
    ids: AtomicU64,
    stats: Mutex<MockStats>,
    /// Faults served so far per (conversation, rule, turn), for `times`.
    faults: Mutex<HashMap<(String, String, usize), u32>>,
}

impl State {
    fn stats(&self) -> std::sync::MutexGuard<'_, MockStats> {
        // A panic while holding the lock cannot leave the counters
        // inconsistent in a way that matters; keep serving.
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MockServer {
    /// Binds 127.0.0.1:`port` (0 picks a free port) and starts serving `script`.
    pub async fn start(script: Script, port: u16) -> Result<MockServer, MockError> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|source| MockError::Bind { port, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| MockError::Bind { port, source })?
            .port();
        let state = Arc::new(State {
            script,
            ids: AtomicU64::new(1),
            stats: Mutex::new(MockStats::default()),
            faults: Mutex::new(HashMap::new()),
        });
        let cancel = CancellationToken::new();
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&state), cancel.clone()));
        Ok(MockServer {
            port,
            state,
            cancel,
            accept_task: Some(accept_task),
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, the value for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every API request received so far (see [`MockStats::requests`]).
    pub fn request_count(&self) -> u64 {
        self.state.stats().requests
    }

    /// Model requests (agent turns) received so far.
    pub fn model_request_count(&self) -> u64 {
        self.state.stats().model_requests
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> MockStats {
        self.state.stats().clone()
    }

    /// Stops accepting, closes every connection (hung ones included) and waits
    /// for the accept loop to end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        // The accept loop only ends by cancellation; a join error would mean
        // it panicked, which leaves nothing to clean up.
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // A test that forgets `shutdown` must not leave connections hanging.
        self.cancel.cancel();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&state), cancel.clone()));
            }
            Err(error) => {
                tracing::debug!(%error, "mock: accept failed");
                // Avoid a hot loop on persistent errors such as EMFILE.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What to do with the connection after a response.
enum After {
    KeepAlive,
    Close,
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, cancel: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (read_half, mut writer) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    loop {
        let request = tokio::select! {
            () = cancel.cancelled() => return,
            request = http::read_request(&mut reader) => request,
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%error, "mock: bad request");
                let body = error_body(400, Some(&format!("bad request: {error}")), "req_mock_bad");
                let _ = http::write_response(&mut writer, 400, &json_headers(), &body, false).await;
                return;
            }
        };
        let keep_alive = request.keep_alive;
        let after = handle(&state, &request, &mut reader, &mut writer, &cancel).await;
        match after {
            Ok(After::KeepAlive) if keep_alive => {}
            Ok(_) => return,
            Err(error) => {
                tracing::debug!(%error, "mock: connection error");
                return;
            }
        }
    }
}

fn json_headers() -> Vec<(&'static str, String)> {
    vec![("content-type", "application/json".to_owned())]
}

async fn respond_json(
    writer: &mut OwnedWriteHalf,
    status: u16,
    body: &serde_json::Value,
    keep_alive: bool,
) -> std::io::Result<After> {
    http::write_response(
        writer,
        status,
        &json_headers(),
        body.to_string().as_bytes(),
        keep_alive,
    )
    .await?;
    Ok(After::KeepAlive)
}

async fn handle(
    state: &State,
    request: &Request,
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    cancel: &CancellationToken,
) -> std::io::Result<After> {
    let keep_alive = request.keep_alive;
    if request.method == "GET" && request.path == "/__ccflow/stats" {
        let stats = serde_json::to_value(state.stats().clone()).unwrap_or_default();
        return respond_json(writer, 200, &stats, keep_alive).await;
    }
    state.stats().requests += 1;
    let request_id = format!("req_mock_{}", state.ids.fetch_add(1, Ordering::Relaxed));
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/v1/messages/count_tokens") => {
            state.stats().count_tokens_requests += 1;
            // A rough estimate is all the CLI needs (it sizes the context).
            let estimate = request.body.len() / 4;
            respond_json(writer, 200, &json!({"input_tokens": estimate}), keep_alive).await
        }
        ("POST", "/v1/messages") => {
            let body: serde_json::Value = match serde_json::from_slice(&request.body) {
                Ok(body) => body,
                Err(error) => {
                    let body = error_body(
                        400,
                        Some(&format!("request body is not JSON: {error}")),
                        &request_id,
                    );
                    http::write_response(writer, 400, &json_headers(), &body, keep_alive).await?;
                    return Ok(After::KeepAlive);
                }
            };
            messages(state, request, &body, &request_id, reader, writer, cancel).await
        }
        _ => {
            state.stats().other_requests += 1;
            let body = error_body(
                404,
                Some(&format!(
                    "no route for `{} {}`",
                    request.method, request.path
                )),
                &request_id,
            );
            http::write_response(writer, 404, &json_headers(), &body, keep_alive).await?;
            Ok(After::KeepAlive)
        }
    }
}

/// What a `/v1/messages` request tells about its conversation.
struct Conversation {
    /// All text of the first user message (rules match against it).
    first_user: String,
    /// The last text block of the first user message: the user's prompt.
    prompt: String,
    /// The working directory named in the system prompt, if any.
    cwd: Option<String>,
    /// Number of assistant messages already in the request.
    turn: usize,
    /// Identifies the conversation across requests (for fault `times`).
    key: String,
}

fn texts(content: &serde_json::Value) -> Vec<String> {
    match content {
        serde_json::Value::String(text) => vec![text.clone()],
        serde_json::Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| block.get("text").and_then(serde_json::Value::as_str))
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn conversation(request: &Request, body: &serde_json::Value) -> Conversation {
    let messages = body
        .get("messages")
        .and_then(serde_json::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let role = |message: &serde_json::Value| {
        message
            .get("role")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let first_user_texts = messages
        .iter()
        .find(|message| role(message).as_deref() == Some("user"))
        .and_then(|message| message.get("content"))
        .map(texts)
        .unwrap_or_default();
    let turn = messages
        .iter()
        .filter(|message| role(message).as_deref() == Some("assistant"))
        .count();
    // `--bare` puts `CWD: /path` in the system prompt; the full prompt says
    // `Primary working directory: /path` in an environment section.
    let mut all_texts = body.get("system").map(texts).unwrap_or_default();
    for message in messages {
        if let Some(content) = message.get("content") {
            all_texts.extend(texts(content));
        }
    }
    let cwd = all_texts
        .iter()
        .flat_map(|text| text.lines())
        .find_map(|line| {
            let line = line.trim_start_matches([' ', '-']);
            [
                "CWD: ",
                "Primary working directory: ",
                "Working directory: ",
            ]
            .iter()
            .find_map(|prefix| line.strip_prefix(prefix))
            .map(|rest| rest.trim().to_owned())
        });
    let first_user = first_user_texts.join("\n");
    let key = request
        .header("x-claude-code-session-id")
        .map(str::to_owned)
        .or_else(|| {
            body.pointer("/metadata/user_id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| first_user.clone());
    Conversation {
        prompt: first_user_texts
            .last()
            .map(|text| text.trim().to_owned())
            .unwrap_or_default(),
        first_user,
        cwd,
        turn,
        key,
    }
}

/// Quota probes (`max_tokens: 1`) and non-streaming, tool-less helper calls
/// (titles, summaries) are not agent turns: they get a short zero-usage reply
/// so they neither consume script turns nor change the session's cost.
fn is_auxiliary(body: &serde_json::Value) -> bool {
    let max_tokens = body.get("max_tokens").and_then(serde_json::Value::as_u64);
    let stream = body
        .get("stream")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let has_tools = body
        .get("tools")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|tools| !tools.is_empty());
    max_tokens.is_some_and(|max| max <= 1) || (!stream && !has_tools)
}

async fn messages(
    state: &State,
    request: &Request,
    body: &serde_json::Value,
    request_id: &str,
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    cancel: &CancellationToken,
) -> std::io::Result<After> {
    let keep_alive = request.keep_alive;
    let stream = body
        .get("stream")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let model = body
        .get("model")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("claude-mock")
        .to_owned();
    if is_auxiliary(body) {
        state.stats().auxiliary_requests += 1;
        let turn = Turn {
            text: Some("ccflow mock".to_owned()),
            ..Turn::default()
        };
        let reply = Reply::new(&turn, &[], &model, &state.ids);
        return send_reply(
            &reply, &turn, stream, None, reader, writer, keep_alive, cancel,
        )
        .await;
    }
    let conversation = conversation(request, body);
    state.stats().model_requests += 1;
    let Some((_, rule)) = state.script.find_rule(&conversation.first_user) else {
        state.stats().unmatched_requests += 1;
        let message = "no rule of the ccflow mock script matches this conversation and there is no `default` rule";
        let body = error_body(400, Some(message), request_id);
        http::write_response(writer, 400, &json_headers(), &body, keep_alive).await?;
        return Ok(After::KeepAlive);
    };
    *state.stats().per_rule.entry(rule.name.clone()).or_default() += 1;

    let fallback;
    let turn = match rule.turns.get(conversation.turn) {
        Some(turn) => turn,
        None => {
            // Running past the script ends the conversation rather than
            // looping, so a short script cannot make an agent spin forever.
            fallback = Turn {
                text: Some(format!(
                    "(ccflow mock: rule `{}` has no turn {})",
                    rule.name, conversation.turn
                )),
                ..Turn::default()
            };
            &fallback
        }
    };
    let fault_now = turn.has_fault() && {
        let mut faults = state.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let served = faults
            .entry((
                conversation.key.clone(),
                rule.name.clone(),
                conversation.turn,
            ))
            .or_default();
        let fault_now = turn.times.is_none_or(|times| *served < times);
        if fault_now {
            *served += 1;
        }
        fault_now
    };
    if fault_now {
        state.stats().faults_injected += 1;
    }

    if turn.delay_ms > 0 {
        tokio::select! {
            () = cancel.cancelled() => return Ok(After::Close),
            () = tokio::time::sleep(Duration::from_millis(turn.delay_ms)) => {}
        }
    }
    if fault_now {
        if let Some(status) = turn.error {
            let mut headers = json_headers();
            headers.push(("request-id", request_id.to_owned()));
            let retry_after = turn.retry_after.or((status == 429).then_some(0));
            if let Some(seconds) = retry_after {
                headers.push(("retry-after", seconds.to_string()));
            }
            let body = error_body(status, turn.error_message.as_deref(), request_id);
            http::write_response(writer, status, &headers, &body, keep_alive).await?;
            return Ok(After::KeepAlive);
        }
    }
    let mut vars = vec![
        ("prompt".to_owned(), conversation.prompt.clone()),
        ("turn".to_owned(), conversation.turn.to_string()),
    ];
    if let Some(cwd) = &conversation.cwd {
        vars.push(("cwd".to_owned(), cwd.clone()));
    }
    vars.extend(rule.captures(&conversation.first_user));
    let reply = Reply::new(turn, &vars, &model, &state.ids);
    let fault = fault_now.then_some(turn);
    send_reply(
        &reply, turn, stream, fault, reader, writer, keep_alive, cancel,
    )
    .await
}

/// Sends a reply, applying the `hang` or `stop_after_events` fault when given.
#[expect(
    clippy::too_many_arguments,
    reason = "one request's whole context, passed down once"
)]
async fn send_reply(
    reply: &Reply,
    turn: &Turn,
    stream: bool,
    fault: Option<&Turn>,
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    keep_alive: bool,
    cancel: &CancellationToken,
) -> std::io::Result<After> {
    let hang = fault.is_some_and(|fault| fault.hang);
    let stop_after = fault.and_then(|fault| fault.stop_after_events);
    if !stream && !hang {
        if stop_after.is_some() {
            // A cut non-streaming reply: the connection closes with no response.
            return Ok(After::Close);
        }
        respond_json(writer, 200, &reply.message_json(), keep_alive).await?;
        return Ok(After::KeepAlive);
    }
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let headers = [
        ("content-type", content_type.to_owned()),
        ("cache-control", "no-cache".to_owned()),
    ];
    http::write_chunked_head(writer, 200, &headers, keep_alive).await?;
    if hang {
        wait_for_close(reader, cancel).await;
        return Ok(After::Close);
    }
    for (index, event) in reply.sse_events().iter().enumerate() {
        if stop_after.is_some_and(|limit| index >= limit) {
            // Closing without the terminating chunk: the client sees a
            // stream that ends mid-message.
            return Ok(After::Close);
        }
        if index > 0 && turn.event_delay_ms > 0 {
            tokio::select! {
                () = cancel.cancelled() => return Ok(After::Close),
                () = tokio::time::sleep(Duration::from_millis(turn.event_delay_ms)) => {}
            }
        }
        http::write_chunk(writer, event.as_bytes()).await?;
    }
    http::finish_chunks(writer).await?;
    Ok(After::KeepAlive)
}

/// Holds a hung response open until the client goes away or the server stops.
async fn wait_for_close(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    cancel: &CancellationToken,
) {
    let mut buffer = [0u8; 1024];
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            read = reader.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}
