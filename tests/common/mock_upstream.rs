//! A realistic mock LLM provider upstream (OpenAI, Anthropic, Gemini) for majordomo's
//! integration tests and load benchmarks.
//!
//! [`MockUpstream::start`] binds `127.0.0.1:0` and serves HTTP/1.1 in a task on the current
//! tokio runtime until the value is dropped. It answers with payloads shaped like the real
//! APIs (JSON and streaming), with exact, distinct token numbers (see [`canned`]) so tests can
//! assert what majordomo logged to the token. Every request is recorded (method, path, query,
//! all headers, full body) *before* it is answered.
//!
//! Routes (matched on the end of the path, so any prefix such as `/openai` is fine; POST only):
//! - `…/chat/completions` — `chat.completion`, or with `"stream": true` an SSE stream of
//!   `chat.completion.chunk` (role chunk, content chunks, finish chunk, then a usage chunk only
//!   when `stream_options.include_usage` is true, then `data: [DONE]`).
//! - `…/responses` — a `response` object, or the `response.*` event stream.
//! - `…/embeddings` — an embedding `list` (honours `dimensions` and `encoding_format: base64`).
//! - `…/messages` — an Anthropic `message`, or its `event:` stream.
//! - `…/messages/count_tokens` — `{"input_tokens": N}`.
//! - `…models/{m}:generateContent` and `…models/{m}:streamGenerateContent` (SSE with `alt=sse`,
//!   CRLF framed; otherwise a JSON array streamed in pieces).
//! - anything else: 404 with an OpenAI-shaped error.
//!
//! Streams are written one event per body chunk (one HTTP chunk each). [`MockUpstream::set_event_delay`]
//! sleeps between events, and [`MockUpstream::set_pause`] sleeps before the last event.
//! [`MockUpstream::push_response`] queues scripted responses served FIFO to the next requests,
//! whatever their path (errors, gzip bodies, mid-stream connection drops, ...).
//!
//! Dropping the [`MockUpstream`] stops it completely: the listener closes and every open
//! connection (including idle keep-alive ones in a client's pool) is torn down.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------------
// Canned numbers
// ---------------------------------------------------------------------------------------------

/// Token numbers in majordomo's column meaning.
///
/// `input` counts every prompt token, including cache reads and cache writes; `cached` is cache
/// reads; `cache_creation` is cache writes; `output` counts every output token including
/// reasoning; `reasoning` is the reasoning part of `output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tokens {
    pub input: u64,
    pub cached: u64,
    pub cache_creation: u64,
    pub output: u64,
    pub reasoning: u64,
}

/// What the canned (non-scripted) responses contain: the text, the default model names and the
/// exact token numbers, both as sent on the wire (`*_RAW_*` / provider field names) and in
/// majordomo's column meaning ([`Tokens`]).
///
/// Streaming variants report the same final totals as the JSON variants.
pub mod canned {
    use super::Tokens;

    /// The assistant text of every canned response; streams send it as [`TEXT_PIECES`].
    pub const TEXT: &str = "Hello from the \"mock\" upstream \u{2713}";
    /// The content deltas of every canned stream, in order (concatenated = [`TEXT`]).
    pub const TEXT_PIECES: &[&str] = &["Hello", " from", " the \"mock\"", " upstream", " \u{2713}"];

    /// The response `model` echoes the request's `model`; these are used only when the request
    /// has none. Gemini reports `modelVersion` = the model named in the path.
    pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4o-mini-2024-07-18";
    pub const DEFAULT_EMBEDDING_MODEL: &str = "text-embedding-3-small";
    pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5-20250929";
    pub const DEFAULT_GEMINI_MODEL: &str = "gemini-2.5-flash";

    // --- OpenAI chat completions (JSON, and the stream's usage chunk) -------------------------
    pub const OPENAI_CHAT_PROMPT_TOKENS: u64 = 1234; // includes cached
    pub const OPENAI_CHAT_CACHED_TOKENS: u64 = 200;
    pub const OPENAI_CHAT_COMPLETION_TOKENS: u64 = 567; // includes reasoning
    pub const OPENAI_CHAT_REASONING_TOKENS: u64 = 64;
    pub const OPENAI_CHAT_TOTAL_TOKENS: u64 =
        OPENAI_CHAT_PROMPT_TOKENS + OPENAI_CHAT_COMPLETION_TOKENS; // 1801
    pub const OPENAI_CHAT: Tokens = Tokens {
        input: OPENAI_CHAT_PROMPT_TOKENS,
        cached: OPENAI_CHAT_CACHED_TOKENS,
        cache_creation: 0,
        output: OPENAI_CHAT_COMPLETION_TOKENS,
        reasoning: OPENAI_CHAT_REASONING_TOKENS,
    };
    /// Streamed chat completion with `stream_options.include_usage: true` (without it the
    /// stream carries no usage at all).
    pub const OPENAI_CHAT_STREAM: Tokens = OPENAI_CHAT;

    // --- OpenAI responses -----------------------------------------------------------------------
    pub const OPENAI_RESPONSES_INPUT_TOKENS: u64 = 2345; // includes cached
    pub const OPENAI_RESPONSES_CACHED_TOKENS: u64 = 321;
    pub const OPENAI_RESPONSES_OUTPUT_TOKENS: u64 = 432; // includes reasoning
    pub const OPENAI_RESPONSES_REASONING_TOKENS: u64 = 123;
    pub const OPENAI_RESPONSES_TOTAL_TOKENS: u64 =
        OPENAI_RESPONSES_INPUT_TOKENS + OPENAI_RESPONSES_OUTPUT_TOKENS; // 2777
    pub const OPENAI_RESPONSES: Tokens = Tokens {
        input: OPENAI_RESPONSES_INPUT_TOKENS,
        cached: OPENAI_RESPONSES_CACHED_TOKENS,
        cache_creation: 0,
        output: OPENAI_RESPONSES_OUTPUT_TOKENS,
        reasoning: OPENAI_RESPONSES_REASONING_TOKENS,
    };
    pub const OPENAI_RESPONSES_STREAM: Tokens = OPENAI_RESPONSES;

    // --- OpenAI embeddings ----------------------------------------------------------------------
    pub const OPENAI_EMBEDDINGS_PROMPT_TOKENS: u64 = 77; // = total_tokens
    pub const OPENAI_EMBEDDINGS: Tokens = Tokens {
        input: OPENAI_EMBEDDINGS_PROMPT_TOKENS,
        cached: 0,
        cache_creation: 0,
        output: 0,
        reasoning: 0,
    };
    /// Embedding vector length when the request has no `dimensions`.
    pub const DEFAULT_EMBEDDING_DIMENSIONS: usize = 8;

    // --- Anthropic messages ---------------------------------------------------------------------
    pub const ANTHROPIC_RAW_INPUT_TOKENS: u64 = 1111; // uncached part only, as Anthropic reports
    pub const ANTHROPIC_CACHE_READ_TOKENS: u64 = 2222;
    pub const ANTHROPIC_CACHE_CREATION_5M_TOKENS: u64 = 300;
    pub const ANTHROPIC_CACHE_CREATION_1H_TOKENS: u64 = 33;
    pub const ANTHROPIC_CACHE_CREATION_TOKENS: u64 =
        ANTHROPIC_CACHE_CREATION_5M_TOKENS + ANTHROPIC_CACHE_CREATION_1H_TOKENS; // 333
    pub const ANTHROPIC_OUTPUT_TOKENS: u64 = 444;
    /// `output_tokens` in the stream's `message_start` (the real API sends a small placeholder).
    pub const ANTHROPIC_STREAM_START_OUTPUT_TOKENS: u64 = 1;
    pub const ANTHROPIC_MESSAGES: Tokens = Tokens {
        input: ANTHROPIC_RAW_INPUT_TOKENS
            + ANTHROPIC_CACHE_READ_TOKENS
            + ANTHROPIC_CACHE_CREATION_TOKENS, // 3666
        cached: ANTHROPIC_CACHE_READ_TOKENS,
        cache_creation: ANTHROPIC_CACHE_CREATION_TOKENS,
        output: ANTHROPIC_OUTPUT_TOKENS,
        reasoning: 0,
    };
    pub const ANTHROPIC_MESSAGES_STREAM: Tokens = ANTHROPIC_MESSAGES;
    /// `POST …/messages/count_tokens` answers `{"input_tokens": 1357}`.
    pub const ANTHROPIC_COUNT_TOKENS: u64 = 1357;

    // --- Gemini generateContent / streamGenerateContent -----------------------------------------
    pub const GEMINI_PROMPT_TOKEN_COUNT: u64 = 987; // includes cached
    pub const GEMINI_CACHED_CONTENT_TOKEN_COUNT: u64 = 456;
    pub const GEMINI_TOOL_USE_PROMPT_TOKEN_COUNT: u64 = 21;
    pub const GEMINI_CANDIDATES_TOKEN_COUNT: u64 = 210; // excludes thoughts
    pub const GEMINI_THOUGHTS_TOKEN_COUNT: u64 = 98;
    pub const GEMINI_TOTAL_TOKEN_COUNT: u64 = GEMINI_PROMPT_TOKEN_COUNT
        + GEMINI_TOOL_USE_PROMPT_TOKEN_COUNT
        + GEMINI_CANDIDATES_TOKEN_COUNT
        + GEMINI_THOUGHTS_TOKEN_COUNT; // 1316
    /// `candidatesTokenCount` of each streamed chunk (cumulative, like the real API: every
    /// chunk restates usageMetadata; the last value is the final count). One per text piece.
    pub const GEMINI_STREAM_CANDIDATES_PROGRESS: &[u64] =
        &[40, 85, 130, 175, GEMINI_CANDIDATES_TOKEN_COUNT];
    pub const GEMINI: Tokens = Tokens {
        input: GEMINI_PROMPT_TOKEN_COUNT + GEMINI_TOOL_USE_PROMPT_TOKEN_COUNT, // 1008
        cached: GEMINI_CACHED_CONTENT_TOKEN_COUNT,
        cache_creation: 0,
        output: GEMINI_CANDIDATES_TOKEN_COUNT + GEMINI_THOUGHTS_TOKEN_COUNT, // 308
        reasoning: GEMINI_THOUGHTS_TOKEN_COUNT,
    };
    pub const GEMINI_STREAM: Tokens = GEMINI;
}

// ---------------------------------------------------------------------------------------------
// Recorded requests and scripted responses
// ---------------------------------------------------------------------------------------------

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Raw query string (without `?`), if any.
    pub query: Option<String>,
    /// Every header in arrival order; names are lower-case.
    pub headers: Vec<(String, String)>,
    /// The full request body, exactly as received (not decompressed).
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body parsed as JSON; `Value::Null` for an empty body. Panics on invalid JSON.
    pub fn json(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "recorded request body of {} {} is not JSON ({e}): {:?}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A scripted one-shot response, served (FIFO) to the next request whatever its path.
///
/// The body is `chunks`, each written as its own body frame, with `chunk_delay` slept between
/// chunks (not before the first). With `abort_after_chunks: Some(n)` the mock sends the first
/// `n` chunks (all of them if fewer) and then drops the connection without finishing the body.
/// A single chunk with no delay and no abort is sent with `Content-Length`; otherwise the body
/// is chunked (unless `headers` sets `content-length` itself). `set_pause`/`set_event_delay` do
/// not apply to scripted responses.
#[derive(Clone, Debug)]
pub struct ScriptedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunks: Vec<Bytes>,
    pub chunk_delay: Duration,
    pub abort_after_chunks: Option<usize>,
}

impl ScriptedResponse {
    /// Empty body, no headers.
    pub fn new(status: u16) -> Self {
        ScriptedResponse {
            status,
            headers: Vec::new(),
            chunks: Vec::new(),
            chunk_delay: Duration::ZERO,
            abort_after_chunks: None,
        }
    }

    /// A JSON body (`content-type: application/json`), one chunk.
    pub fn json(status: u16, body: Value) -> Self {
        Self::new(status)
            .with_header("content-type", "application/json")
            .with_chunks(vec![Bytes::from(
                serde_json::to_vec(&body).expect("serialize json"),
            )])
    }

    /// A 200 `text/event-stream`, one chunk per event. Each string is one event's raw text
    /// (e.g. `"event: x\ndata: {...}"`); a blank-line terminator `"\n\n"` is appended unless the
    /// text already ends with `"\n\n"` or `"\r\n\r\n"`.
    pub fn sse(events: Vec<String>) -> Self {
        let chunks = events
            .into_iter()
            .map(|mut e| {
                if !(e.ends_with("\n\n") || e.ends_with("\r\n\r\n")) {
                    e.push_str("\n\n");
                }
                Bytes::from(e)
            })
            .collect();
        Self::new(200)
            .with_header("content-type", "text/event-stream; charset=utf-8")
            .with_header("cache-control", "no-cache")
            .with_chunks(chunks)
    }

    /// Arbitrary body bytes with a content type, one chunk.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        Self::new(status)
            .with_header("content-type", content_type)
            .with_chunks(vec![body.into()])
    }

    /// A gzip-compressed JSON body with `content-encoding: gzip`.
    pub fn gzip_json(status: u16, body: Value) -> Self {
        let raw = serde_json::to_vec(&body).expect("serialize json");
        Self::bytes(status, "application/json", gzip(&raw)).with_header("content-encoding", "gzip")
    }

    /// An OpenAI-shaped error (`{"error":{"message","type","param","code"}}`), e.g. 429/500.
    pub fn openai_error(status: u16, message: &str) -> Self {
        let (ty, code) = match status {
            429 => ("rate_limit_exceeded", json!("rate_limit_exceeded")),
            400 => ("invalid_request_error", Value::Null),
            401 => ("invalid_request_error", json!("invalid_api_key")),
            _ => ("server_error", Value::Null),
        };
        Self::json(
            status,
            json!({"error": {"message": message, "type": ty, "param": null, "code": code}}),
        )
    }

    /// An Anthropic-shaped error (`{"type":"error","error":{"type","message"}}`), e.g. 429/529.
    pub fn anthropic_error(status: u16, message: &str) -> Self {
        let ty = match status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        Self::json(
            status,
            json!({"type": "error", "error": {"type": ty, "message": message}}),
        )
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn with_chunks(mut self, chunks: Vec<Bytes>) -> Self {
        self.chunks = chunks;
        self
    }

    pub fn with_chunk_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    /// Send `n` chunks, then drop the connection mid-body.
    pub fn with_abort_after(mut self, n: usize) -> Self {
        self.abort_after_chunks = Some(n);
        self
    }
}

/// gzip-compress `data` (helper for scripted compressed bodies and assertions).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip write");
    enc.finish().expect("gzip finish")
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

struct Inner {
    requests: Mutex<Vec<RecordedRequest>>,
    scripted: Mutex<VecDeque<ScriptedResponse>>,
    pause_ns: AtomicU64,
    event_delay_ns: AtomicU64,
    recording: AtomicBool,
    request_seq: AtomicU64,
    connections: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

/// A running mock provider on `127.0.0.1:<ephemeral port>`; stopped (listener and every open
/// connection) when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    inner: Arc<Inner>,
    shutdown_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Bind `127.0.0.1:0` and serve in a task on the current tokio runtime.
    pub async fn start() -> MockUpstream {
        Self::start_on(0).await
    }

    /// Like [`start`](Self::start) on a chosen port (0 = any).
    pub async fn start_on(port: u16) -> MockUpstream {
        let listener = listen(port).expect("mock upstream: bind 127.0.0.1");
        let addr = listener.local_addr().expect("mock upstream: local_addr");
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            requests: Mutex::new(Vec::new()),
            scripted: Mutex::new(VecDeque::new()),
            pause_ns: AtomicU64::new(0),
            event_delay_ns: AtomicU64::new(0),
            recording: AtomicBool::new(true),
            request_seq: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            shutdown: shutdown_rx.clone(),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = MockListener {
            inner: listener,
            shutdown: shutdown_rx,
            state: inner.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockUpstream {
            addr,
            inner,
            shutdown_tx,
            task,
        }
    }

    /// `"http://127.0.0.1:PORT"` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.inner.requests.lock().unwrap().last().cloned()
    }

    /// Number of requests received (counted even while recording is off).
    pub fn request_count(&self) -> usize {
        self.inner.request_seq.load(Ordering::SeqCst) as usize
    }

    /// Number of TCP connections accepted (to check connection reuse / pooling).
    pub fn connection_count(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst) as usize
    }

    /// Forget the recorded requests (the request counter is kept).
    pub fn clear_requests(&self) {
        self.inner.requests.lock().unwrap().clear();
    }

    /// Stop (or resume) storing requests — for load benchmarks; `request_count` still counts.
    pub fn set_recording(&self, on: bool) {
        self.inner.recording.store(on, Ordering::SeqCst);
    }

    /// Wait until at least `n` requests have arrived; false on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.request_count() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Sleep inserted before the LAST event of every canned stream (default 0). Read when a
    /// response starts.
    pub fn set_pause(&self, d: Duration) {
        self.inner
            .pause_ns
            .store(d.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Sleep between consecutive events of every canned stream (default 0). Read when a
    /// response starts.
    pub fn set_event_delay(&self, d: Duration) {
        self.inner
            .event_delay_ns
            .store(d.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Queue a one-shot response for the next request (FIFO, whatever the path).
    pub fn push_response(&self, r: ScriptedResponse) {
        self.inner.scripted.lock().unwrap().push_back(r);
    }

    /// Scripted responses still queued.
    pub fn pending_responses(&self) -> usize {
        self.inner.scripted.lock().unwrap().len()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        self.task.abort();
    }
}

/// Resolves once the mock is stopped (flag set, or the sender dropped).
async fn stopped(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

struct MockListener {
    inner: TcpListener,
    shutdown: watch::Receiver<bool>,
    state: Arc<Inner>,
}

impl axum::serve::Listener for MockListener {
    type Io = MockConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (MockConn, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    self.state.connections.fetch_add(1, Ordering::SeqCst);
                    let conn = MockConn {
                        io: stream,
                        stopped: Box::pin(stopped(self.shutdown.clone())),
                        closed: false,
                    };
                    return (conn, addr);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Listen on `127.0.0.1:port` with a backlog of 4096 connections. A plain `bind` gets std's
/// 128: a burst of new connections (the gateway opens one per concurrent request) overflows
/// that queue, and the kernel resets the overflow, which would read as the gateway's fault.
fn listen(port: u16) -> io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(4096)
}

/// A TCP connection that fails every read/write once the mock is stopped, so hyper drops it
/// (axum's per-connection tasks would otherwise outlive the server task).
struct MockConn {
    io: TcpStream,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    closed: bool,
}

impl MockConn {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.closed && self.stopped.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
        if self.closed {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock upstream stopped",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for MockConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for MockConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Body plans: frames with delays, optional abort
// ---------------------------------------------------------------------------------------------

struct Plan {
    /// (sleep before, bytes)
    frames: Vec<(Duration, Bytes)>,
    /// Send this many frames, then fail the body (connection dropped mid-body).
    abort_after: Option<usize>,
}

fn plan_body(plan: Plan, shutdown: watch::Receiver<bool>) -> Body {
    let abort_after = plan.abort_after.map(|n| n.min(plan.frames.len()));
    let state = (0usize, plan.frames, shutdown, false);
    let stream = futures_util::stream::unfold(state, move |(i, frames, sd, done)| async move {
        if done {
            return None;
        }
        if abort_after == Some(i) {
            // Let hyper flush what was already written, then fail the body: hyper drops the
            // connection without the terminating chunk.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let e = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock upstream: scripted abort",
            );
            return Some((Err(e), (i, frames, sd, true)));
        }
        let (delay, bytes) = frames.get(i)?.clone();
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(sd.clone()) => {
                    let e = io::Error::new(io::ErrorKind::ConnectionAborted, "mock upstream stopped");
                    return Some((Err(e), (i, frames, sd, true)));
                }
            }
        }
        Some((Ok::<Bytes, io::Error>(bytes), (i + 1, frames, sd, false)))
    });
    Body::from_stream(stream)
}

// ---------------------------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------------------------

async fn handle(State(st): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let rec = RecordedRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let seq = st.request_seq.fetch_add(1, Ordering::SeqCst) + 1;
    if st.recording.load(Ordering::SeqCst) {
        st.requests.lock().unwrap().push(rec.clone());
    }

    let scripted = st.scripted.lock().unwrap().pop_front();
    if let Some(s) = scripted {
        return scripted_response(s, st.shutdown.clone());
    }

    let ctx = Ctx {
        seq,
        event_delay: Duration::from_nanos(st.event_delay_ns.load(Ordering::SeqCst)),
        pause: Duration::from_nanos(st.pause_ns.load(Ordering::SeqCst)),
        shutdown: st.shutdown.clone(),
    };
    route(&rec, &ctx)
}

fn scripted_response(s: ScriptedResponse, shutdown: watch::Receiver<bool>) -> Response {
    let mut b = Response::builder().status(s.status);
    for (k, v) in &s.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let body = if s.chunks.len() <= 1 && s.abort_after_chunks.is_none() && s.chunk_delay.is_zero() {
        Body::from(s.chunks.into_iter().next().unwrap_or_default())
    } else {
        let frames = s
            .chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    if i == 0 {
                        Duration::ZERO
                    } else {
                        s.chunk_delay
                    },
                    c,
                )
            })
            .collect();
        plan_body(
            Plan {
                frames,
                abort_after: s.abort_after_chunks,
            },
            shutdown,
        )
    };
    b.body(body)
        .expect("mock upstream: invalid scripted response (status or header)")
}

struct Ctx {
    seq: u64,
    event_delay: Duration,
    pause: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Ctx {
    /// A streamed response: one frame per event, event delay between, pause before the last.
    fn stream(
        &self,
        content_type: &str,
        extra: &[(&str, String)],
        events: Vec<String>,
    ) -> Response {
        let n = events.len();
        let frames = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let mut d = if i == 0 {
                    Duration::ZERO
                } else {
                    self.event_delay
                };
                if i + 1 == n {
                    d += self.pause;
                }
                (d, Bytes::from(e))
            })
            .collect();
        let mut b = Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-cache");
        for (k, v) in extra {
            b = b.header(*k, v.as_str());
        }
        b.body(plan_body(
            Plan {
                frames,
                abort_after: None,
            },
            self.shutdown.clone(),
        ))
        .unwrap()
    }
}

fn json_response(status: u16, extra: &[(&str, String)], v: &Value) -> Response {
    json_response_ct(status, "application/json", extra, v)
}

fn json_response_ct(
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    v: &Value,
) -> Response {
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type);
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.body(Body::from(serde_json::to_vec(v).unwrap())).unwrap()
}

fn openai_error(status: u16, message: String, code: Option<&str>) -> Response {
    json_response(
        status,
        &[],
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sse_data(v: &Value) -> String {
    format!("data: {}\n\n", v)
}

fn sse_event(name: &str, v: &Value) -> String {
    format!("event: {name}\ndata: {}\n\n", v)
}

fn route(req: &RecordedRequest, ctx: &Ctx) -> Response {
    let path = req.path.as_str();
    if req.method != "POST" {
        return not_found(req);
    }
    if path.contains(":streamGenerateContent") || path.contains(":generateContent") {
        return gemini(req, ctx);
    }
    let kind = if path.ends_with("/chat/completions") {
        "chat"
    } else if path.ends_with("/responses") {
        "responses"
    } else if path.ends_with("/embeddings") {
        "embeddings"
    } else if path.ends_with("/messages/count_tokens") {
        "count_tokens"
    } else if path.ends_with("/messages") {
        "messages"
    } else {
        return not_found(req);
    };
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => {
            return if kind == "messages" || kind == "count_tokens" {
                json_response(
                    400,
                    &[],
                    &json!({"type": "error", "error": {"type": "invalid_request_error", "message": format!("invalid JSON body: {e}")}}),
                )
            } else {
                openai_error(
                    400,
                    format!("We could not parse the JSON body of your request. ({e})"),
                    None,
                )
            };
        }
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    match kind {
        "chat" => openai_chat(&body, stream, ctx),
        "responses" => openai_responses(&body, stream, ctx),
        "embeddings" => openai_embeddings(&body, ctx),
        "count_tokens" => json_response(
            200,
            &[("request-id", format!("req_mock{:06}", ctx.seq))],
            &json!({"input_tokens": canned::ANTHROPIC_COUNT_TOKENS}),
        ),
        _ => anthropic_messages(&body, stream, ctx),
    }
}

fn not_found(req: &RecordedRequest) -> Response {
    openai_error(
        404,
        format!(
            "Invalid URL ({} {}): the mock upstream has no such route.",
            req.method, req.path
        ),
        Some("unknown_url"),
    )
}

fn model_of(body: &Value, default: &str) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or(default)
        .to_string()
}

// --- OpenAI chat ------------------------------------------------------------------------------

fn openai_chat_usage() -> Value {
    use canned::*;
    json!({
        "prompt_tokens": OPENAI_CHAT_PROMPT_TOKENS,
        "completion_tokens": OPENAI_CHAT_COMPLETION_TOKENS,
        "total_tokens": OPENAI_CHAT_TOTAL_TOKENS,
        "prompt_tokens_details": {"cached_tokens": OPENAI_CHAT_CACHED_TOKENS, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": OPENAI_CHAT_REASONING_TOKENS,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn openai_chat(body: &Value, stream: bool, ctx: &Ctx) -> Response {
    let model = model_of(body, canned::DEFAULT_OPENAI_MODEL);
    let id = format!("chatcmpl-mock{:06}", ctx.seq);
    let created = now_secs();
    let hdrs = [
        ("x-request-id", format!("req_mock{:06}", ctx.seq)),
        ("openai-processing-ms", "7".to_string()),
    ];
    if !stream {
        let v = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": canned::TEXT, "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": openai_chat_usage(),
            "service_tier": "default",
            "system_fingerprint": "fp_mock0001"
        });
        return json_response(200, &hdrs, &v);
    }
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock0001",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        sse_data(&c)
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    for p in canned::TEXT_PIECES {
        events.push(chunk(json!({"content": p}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        events.push(sse_data(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock0001",
            "choices": [],
            "usage": openai_chat_usage()
        })));
    }
    events.push("data: [DONE]\n\n".to_string());
    ctx.stream("text/event-stream; charset=utf-8", &hdrs, events)
}

// --- OpenAI responses -------------------------------------------------------------------------

fn openai_responses(body: &Value, stream: bool, ctx: &Ctx) -> Response {
    use canned::*;
    let model = model_of(body, DEFAULT_OPENAI_MODEL);
    let id = format!("resp_mock{:06}", ctx.seq);
    let msg_id = format!("msg_mock{:06}", ctx.seq);
    let rs_id = format!("rs_mock{:06}", ctx.seq);
    let created = now_secs();
    let hdrs = [
        ("x-request-id", format!("req_mock{:06}", ctx.seq)),
        ("openai-processing-ms", "9".to_string()),
    ];
    let usage = json!({
        "input_tokens": OPENAI_RESPONSES_INPUT_TOKENS,
        "input_tokens_details": {"cached_tokens": OPENAI_RESPONSES_CACHED_TOKENS},
        "output_tokens": OPENAI_RESPONSES_OUTPUT_TOKENS,
        "output_tokens_details": {"reasoning_tokens": OPENAI_RESPONSES_REASONING_TOKENS},
        "total_tokens": OPENAI_RESPONSES_TOTAL_TOKENS
    });
    let reasoning_item = json!({"id": rs_id, "type": "reasoning", "summary": []});
    let text_part = json!({"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []});
    let message_item = json!({
        "id": msg_id, "type": "message", "status": "completed", "role": "assistant",
        "content": [text_part]
    });
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": null,
            "model": model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": "medium", "summary": null},
            "service_tier": "default",
            "store": true,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {}
        })
    };
    let full = response("completed", json!([reasoning_item, message_item]), usage);
    if !stream {
        return json_response(200, &hdrs, &full);
    }
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut ev = |name: &str, mut v: Value| {
        v["type"] = json!(name);
        v["sequence_number"] = json!(seq);
        seq += 1;
        events.push(sse_event(name, &v));
    };
    let pending = response("in_progress", json!([]), Value::Null);
    ev("response.created", json!({"response": pending}));
    ev("response.in_progress", json!({"response": pending}));
    ev(
        "response.output_item.added",
        json!({"output_index": 0, "item": reasoning_item}),
    );
    ev(
        "response.output_item.done",
        json!({"output_index": 0, "item": reasoning_item}),
    );
    ev(
        "response.output_item.added",
        json!({"output_index": 1, "item": {"id": msg_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
    );
    ev(
        "response.content_part.added",
        json!({"item_id": msg_id, "output_index": 1, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
    );
    for p in TEXT_PIECES {
        ev(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": 1, "content_index": 0, "delta": p, "logprobs": []}),
        );
    }
    ev(
        "response.output_text.done",
        json!({"item_id": msg_id, "output_index": 1, "content_index": 0, "text": TEXT, "logprobs": []}),
    );
    ev(
        "response.content_part.done",
        json!({"item_id": msg_id, "output_index": 1, "content_index": 0, "part": text_part}),
    );
    ev(
        "response.output_item.done",
        json!({"output_index": 1, "item": message_item}),
    );
    ev("response.completed", json!({"response": full}));
    ctx.stream("text/event-stream; charset=utf-8", &hdrs, events)
}

// --- OpenAI embeddings ------------------------------------------------------------------------

fn openai_embeddings(body: &Value, ctx: &Ctx) -> Response {
    let model = model_of(body, canned::DEFAULT_EMBEDDING_MODEL);
    let inputs = match body.get("input") {
        Some(Value::Array(a)) if a.is_empty() => 0,
        // a single token array: one input
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => 1,
        Some(Value::Array(a)) => a.len(),
        _ => 1,
    };
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .map(|d| d as usize)
        .unwrap_or(canned::DEFAULT_EMBEDDING_DIMENSIONS);
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let vec: Vec<f32> = (0..dims)
                .map(|j| (((i * 7 + j * 13) % 100) as f32) / 100.0 - 0.5)
                .collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = vec.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(vec)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let v = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": canned::OPENAI_EMBEDDINGS_PROMPT_TOKENS, "total_tokens": canned::OPENAI_EMBEDDINGS_PROMPT_TOKENS}
    });
    json_response(
        200,
        &[("x-request-id", format!("req_mock{:06}", ctx.seq))],
        &v,
    )
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

// --- Anthropic messages -----------------------------------------------------------------------

fn anthropic_messages(body: &Value, stream: bool, ctx: &Ctx) -> Response {
    use canned::*;
    let model = model_of(body, DEFAULT_ANTHROPIC_MODEL);
    let id = format!("msg_01Mock{:06}", ctx.seq);
    let hdrs = [
        ("request-id", format!("req_mock{:06}", ctx.seq)),
        ("anthropic-organization-id", "org-mock".to_string()),
    ];
    let usage = |output: u64| {
        json!({
            "input_tokens": ANTHROPIC_RAW_INPUT_TOKENS,
            "cache_creation_input_tokens": ANTHROPIC_CACHE_CREATION_TOKENS,
            "cache_read_input_tokens": ANTHROPIC_CACHE_READ_TOKENS,
            "cache_creation": {
                "ephemeral_5m_input_tokens": ANTHROPIC_CACHE_CREATION_5M_TOKENS,
                "ephemeral_1h_input_tokens": ANTHROPIC_CACHE_CREATION_1H_TOKENS
            },
            "output_tokens": output,
            "service_tier": "standard"
        })
    };
    if !stream {
        let v = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": TEXT}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": usage(ANTHROPIC_OUTPUT_TOKENS)
        });
        return json_response(200, &hdrs, &v);
    }
    let mut events = vec![
        sse_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": usage(ANTHROPIC_STREAM_START_OUTPUT_TOKENS)
            }}),
        ),
        sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        sse_event("ping", &json!({"type": "ping"})),
    ];
    for p in TEXT_PIECES {
        events.push(sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    events.push(sse_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(sse_event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {
                "input_tokens": ANTHROPIC_RAW_INPUT_TOKENS,
                "cache_creation_input_tokens": ANTHROPIC_CACHE_CREATION_TOKENS,
                "cache_read_input_tokens": ANTHROPIC_CACHE_READ_TOKENS,
                "output_tokens": ANTHROPIC_OUTPUT_TOKENS
            }
        }),
    ));
    events.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    ctx.stream("text/event-stream; charset=utf-8", &hdrs, events)
}

// --- Gemini -----------------------------------------------------------------------------------

fn gemini_usage(candidates: u64) -> Value {
    use canned::*;
    json!({
        "promptTokenCount": GEMINI_PROMPT_TOKEN_COUNT,
        "candidatesTokenCount": candidates,
        "totalTokenCount": GEMINI_PROMPT_TOKEN_COUNT + GEMINI_TOOL_USE_PROMPT_TOKEN_COUNT + candidates + GEMINI_THOUGHTS_TOKEN_COUNT,
        "cachedContentTokenCount": GEMINI_CACHED_CONTENT_TOKEN_COUNT,
        "toolUsePromptTokenCount": GEMINI_TOOL_USE_PROMPT_TOKEN_COUNT,
        "thoughtsTokenCount": GEMINI_THOUGHTS_TOKEN_COUNT,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": GEMINI_PROMPT_TOKEN_COUNT}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": GEMINI_CACHED_CONTENT_TOKEN_COUNT}]
    })
}

/// `…/models/{model}:method` → model (default if the path names none).
fn gemini_model(path: &str) -> String {
    let before_colon = path.rsplit_once(':').map(|(a, _)| a).unwrap_or(path);
    match before_colon.rsplit_once("models/") {
        Some((_, m)) if !m.is_empty() => m.to_string(),
        _ => canned::DEFAULT_GEMINI_MODEL.to_string(),
    }
}

fn gemini(req: &RecordedRequest, ctx: &Ctx) -> Response {
    use canned::*;
    let model = gemini_model(&req.path);
    let response_id = format!("mockResp{:06}", ctx.seq);
    if serde_json::from_slice::<Value>(&req.body).is_err() {
        return json_response(
            400,
            &[],
            &json!({"error": {"code": 400, "message": "Invalid JSON payload received.", "status": "INVALID_ARGUMENT"}}),
        );
    }
    let candidate = |text: &str, finish: bool| {
        let mut c = json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if finish {
            c["finishReason"] = json!("STOP");
        }
        c
    };
    if req.path.contains(":generateContent") {
        let v = json!({
            "candidates": [candidate(TEXT, true)],
            "usageMetadata": gemini_usage(GEMINI_CANDIDATES_TOKEN_COUNT),
            "modelVersion": model,
            "responseId": response_id
        });
        return json_response_ct(200, "application/json; charset=UTF-8", &[], &v);
    }
    let n = TEXT_PIECES.len();
    let chunks: Vec<Value> = TEXT_PIECES
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "candidates": [candidate(p, i + 1 == n)],
                "usageMetadata": gemini_usage(GEMINI_STREAM_CANDIDATES_PROGRESS[i]),
                "modelVersion": model,
                "responseId": response_id
            })
        })
        .collect();
    let sse = req
        .query
        .as_deref()
        .map(|q| q.split('&').any(|kv| kv == "alt=sse"))
        .unwrap_or(false);
    if sse {
        let events = chunks
            .iter()
            .map(|c| format!("data: {c}\r\n\r\n"))
            .collect();
        ctx.stream("text/event-stream", &[], events)
    } else {
        // A JSON array streamed in pieces: `[{...}`, `\n,\r\n{...}`, ..., the last ending in `]`.
        let events = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pretty = serde_json::to_string_pretty(c).unwrap();
                let mut s = if i == 0 {
                    format!("[{pretty}")
                } else {
                    format!("\n,\r\n{pretty}")
                };
                if i + 1 == n {
                    s.push_str("\n]");
                }
                s
            })
            .collect();
        ctx.stream("application/json; charset=UTF-8", &[], events)
    }
}
