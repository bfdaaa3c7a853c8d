//! Token usage extraction from provider responses (SPEC §4).
//!
//! The gateway streams every response to the client as it arrives and feeds a
//! copy of each chunk to a [`UsageParser`]; when the response ends (or the
//! client or upstream goes away) [`UsageParser::finish`] says what the body
//! reported: token counts in majordomo's provider-neutral meaning
//! ([`Usage`]), the model, an in-band or error-body message, and whether the
//! body reached its natural end.
//!
//! The parser is pure (no I/O, no Pingora types) and incremental: chunks may
//! split the body anywhere, and memory stays bounded whatever the body's size.
//! The layers, outermost first:
//!
//! 1. `decode`: `Content-Encoding` (gzip, deflate, br) is undone for the
//!    parser's copy only.
//! 2. The body format ([`BodyFormat`]): chosen from the content type and the
//!    request path, or sniffed from the first byte when there is no content
//!    type. JSON bodies go straight to the scanner; SSE streams go through
//!    `sse`, which hands each event's data to the scanner.
//! 3. `scan`: a streaming JSON scanner that keeps only the raw bytes of the
//!    few values usage lives in (`usage`, `usageMetadata`, `model`, `error`,
//!    `type`, …), each capped at 64 KiB.
//! 4. The provider modules (`openai`, `anthropic`, `gemini`) turn those
//!    values into [`Usage`] with the rules of the SPEC §4 table.
//!
//! Going over a cap (nesting, a captured value, an SSE event name), a
//! malformed body or event, a corrupt or unsupported encoding: all make the
//! usage unknown (`None`). None of them fails or alters the response.
//!
//! Streams spend most of their bytes in content events that carry no usage.
//! Where such events can be told apart from their bytes ([`Triage`]: OpenAI
//! chat completions and responses, Anthropic messages, Gemini), an event's
//! data is gathered (a copy, up to [`TRIAGE_CAP`]) and scanned only if it can
//! matter: it holds a `"usage"` object (a chat chunk that ends with
//! `"usage":null` holds none that counts) or a non-null `"error"`, or its name is
//! not one of the content events (Anthropic; responses: every `response.*`
//! event but the terminal `response.completed` / `.incomplete` / `.failed`),
//! or the model is not known yet. OpenAI's events that matter only for the
//! model (the first chat chunk, `response.created`) are kept unscanned: the
//! usage chunk or terminal event that is scanned later names the model too,
//! and the kept event is scanned at the end only if none did. Gemini
//! repeats the cumulative `usageMetadata` in every event: an event that has
//! it but no `finishReason` / `blockReason` / `error` is kept unscanned, and
//! scanned only if no later such event replaces it before the next scanned
//! event or the end, and if that scanned event (most often the last, with the
//! `finishReason`) does not itself carry counts and a model, which replace
//! all the kept one could say; an event without it is skipped. A skipped
//! event is framed but not checked for JSON syntax.
//!
//! The request side lives in [`request`] (learning `model` / `stream`,
//! injecting `stream_options.include_usage`) and [`strip`] (removing the usage
//! chunk the gateway asked for on a client's behalf).

mod anthropic;
mod counts;
mod decode;
mod gemini;
mod openai;
mod recycle;
pub mod request;
mod scan;
mod sse;
pub mod strip;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::LazyLock;
use std::thread::LocalKey;

use memchr::memmem;
use serde_json::Value;

use crate::provider::Provider;
use decode::Decoder;
use recycle::{FreeList, Recycle, Recycled};
use scan::{Capture, Scanner, Seg, Status, Target, Targets};

pub use gemini::model_from_path as gemini_model_from_path;
pub use request::{
    inject_include_usage, RequestInfo, RequestSniffer, StreamingUsageInjector, INJECTION_LEN,
};
pub use strip::InjectedUsageStripper;

/// Longest model name kept, in bytes.
pub const MODEL_CAP: usize = 256;
/// Longest error message kept, in bytes.
pub const ERROR_CAP: usize = 512;

/// Token counts in majordomo's provider-neutral meaning (SPEC §4 table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every prompt token, cache reads and writes included.
    pub input_tokens: u64,
    /// Cache reads among them.
    pub cached_tokens: u64,
    /// Cache writes among them (total).
    pub cache_creation_tokens: u64,
    /// The part of cache writes known to be 1-hour (the rest is 5-minute).
    pub cache_creation_1h_tokens: u64,
    /// Every billed output token, reasoning / thoughts included.
    pub output_tokens: u64,
    /// Reasoning / thinking tokens among them.
    pub reasoning_tokens: u64,
}

/// What kind of response body a parser expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON document (non-stream responses, error bodies).
    Json,
    /// A `text/event-stream`.
    Sse,
    /// A JSON array of response objects: Gemini `streamGenerateContent`
    /// without `alt=sse`.
    JsonArray,
}

impl BodyFormat {
    /// The format a response has, from the request path and query and the
    /// response's `Content-Type`. `None` when the content type does not say
    /// (missing, `text/plain`, …): [`UsageParser`] then sniffs the body's
    /// first non-whitespace byte (`{` / `[` → JSON, a field name or `:` → SSE,
    /// anything else → unreadable, usage unknown).
    ///
    /// The request's `stream` flag is not needed: providers always answer a
    /// stream request with `text/event-stream` (or, for Gemini without
    /// `alt=sse`, a JSON array), and an error with JSON.
    #[must_use]
    pub fn detect(
        provider: Provider,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
    ) -> Option<BodyFormat> {
        let essence = content_type.map_or("", media_type);
        if essence.eq_ignore_ascii_case("text/event-stream") {
            Some(BodyFormat::Sse)
        } else if is_json_media_type(essence) {
            Some(json_kind(provider, path, query))
        } else {
            None
        }
    }
}

/// A `Content-Type` value without its parameters (`; charset=…`).
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn is_json_media_type(essence: &str) -> bool {
    let ends_with_json = essence
        .len()
        .checked_sub(5)
        .and_then(|at| essence.get(at..))
        .is_some_and(|tail| tail.eq_ignore_ascii_case("+json"));
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || ends_with_json
}

/// Whether a `Content-Type` header value says JSON (`application/json`,
/// `text/json`, `…+json`, any parameters).
#[must_use]
pub fn is_json_content_type(content_type: &str) -> bool {
    is_json_media_type(media_type(content_type))
}

/// Json or JsonArray for a JSON body (the scanner reads both the same way;
/// the distinction documents what is expected).
fn json_kind(provider: Provider, path: &str, query: Option<&str>) -> BodyFormat {
    if provider == Provider::Gemini && gemini::is_stream_path(path) && !gemini::wants_sse(query) {
        BodyFormat::JsonArray
    } else {
        BodyFormat::Json
    }
}

/// Result of parsing one response body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedResponse {
    /// `None` = unknown: no usage seen, a malformed body, or a cap exceeded.
    pub usage: Option<Usage>,
    /// The response's `model` / `modelVersion`, at most [`MODEL_CAP`] bytes.
    pub model: Option<String>,
    /// A provider error message from an error body or an in-band stream
    /// error, at most [`ERROR_CAP`] bytes.
    pub error: Option<String>,
    /// The body reached its natural end: the JSON document closed, or the
    /// stream saw its terminal event (`[DONE]`, `message_stop`,
    /// `response.completed`, a Gemini `finishReason`, an in-band error).
    pub complete: bool,
    /// `usage` is that of this background response (its id): a response
    /// made with `"background": true`, retrieved finished, or streamed to
    /// its end by its POST. The first request that carries it bills it
    /// (see `gateway::retrievals`); a later one must not.
    pub background_response: Option<String>,
}

/// Incremental usage parser for one response body. See the module docs.
pub struct UsageParser {
    input: Decoder<Body>,
}

/// Which stream events can be skipped unscanned (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Triage {
    /// Every event is scanned.
    #[default]
    None,
    /// OpenAI `chat/completions`: only the first event (the model), the
    /// usage chunk and errors matter; the first one only if the others do
    /// not name the model ([`Verdict::KeepForModel`]).
    OpenAiChat,
    /// OpenAI `responses`: of the named `response.*` events only the first
    /// (the model), the terminal ones and any with usage or an error matter;
    /// the output's `.added` / `.delta` / `.done` events and the repeats of
    /// the response in progress (same model, no usage yet) do not. The
    /// first is kept like chat's.
    OpenAiResponses,
    /// Anthropic `messages`: the content block events and pings do not matter.
    AnthropicMessages,
    /// Gemini: every event repeats the cumulative `usageMetadata`, so of the
    /// events that matter only for it, only the last one is read
    /// ([`Verdict::KeepAsLast`]).
    Gemini,
}

/// What becomes of one gathered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Scan,
    Skip,
    /// Its usage counts only if no later event carries usage: kept unscanned
    /// until the next event that is scanned, another one like it, or the end.
    KeepAsLast,
    /// It matters only for the model, which later events scanned for their
    /// usage or outcome name too: kept unscanned (the first such event
    /// only), and scanned at the end only if the model is still unknown. It
    /// holds no usage and no error (else it would be scanned), so reading it
    /// after later events finds what reading it first would.
    KeepForModel,
}

impl Triage {
    /// Keeps events for their model ([`Verdict::KeepForModel`]) rather than
    /// for their usage ([`Verdict::KeepAsLast`]).
    fn keeps_for_model(self) -> bool {
        matches!(self, Triage::OpenAiChat | Triage::OpenAiResponses)
    }

    fn for_request(provider: Provider, path: &str) -> Triage {
        let path = path.trim_end_matches('/');
        match provider {
            Provider::OpenAi if path.ends_with("/chat/completions") => Triage::OpenAiChat,
            Provider::OpenAi if path.ends_with("/responses") => Triage::OpenAiResponses,
            Provider::Anthropic if path.ends_with("/messages") => Triage::AnthropicMessages,
            Provider::Gemini => Triage::Gemini,
            _ => Triage::None,
        }
    }

    /// What to do with this (complete, or cut off by the end of the body)
    /// event.
    fn verdict(self, event: &sse::Event<'_>, data: &[u8], findings: &Findings) -> Verdict {
        let matters = || has_usage_object(data) || has_error_value(data);
        let model_unknown = || findings.model_unknown();
        let scan_if = |scan: bool| if scan { Verdict::Scan } else { Verdict::Skip };
        // OpenAI: an event that matters only for the model. One cut off by
        // the end of the body is scanned at once: nothing comes after it.
        let for_model = || match (model_unknown(), event.at_eof) {
            (false, _) => Verdict::Skip,
            (true, true) => Verdict::Scan,
            (true, false) => Verdict::KeepForModel,
        };
        match self {
            Triage::None => Verdict::Scan,
            Triage::OpenAiChat => {
                // Most chunks end with the `"usage":null` the upstream adds
                // when usage is asked for (or with it just before OpenAI's
                // `"obfuscation"` padding): the last `usage` member, so any
                // earlier one is replaced (as in a document) and is not
                // searched for.
                let usage = strip::null_usage_member(data).is_none() && has_usage_object(data);
                if usage || has_error_value(data) {
                    Verdict::Scan
                } else {
                    for_model()
                }
            }
            Triage::OpenAiResponses => {
                let in_progress = event.name.is_some_and(|name| {
                    name.starts_with(b"response.") && !openai::is_terminal_event(name)
                });
                if !in_progress || matters() {
                    Verdict::Scan
                } else {
                    for_model()
                }
            }
            Triage::AnthropicMessages => scan_if(
                !matches!(
                    event.name,
                    Some(
                        b"content_block_delta"
                            | b"content_block_start"
                            | b"content_block_stop"
                            | b"ping"
                    )
                ) || matters(),
            ),
            Triage::Gemini => {
                let matters = event.at_eof
                    || model_unknown()
                    || REASON_KEY.find(data).is_some()
                    || has_error_value(data);
                // Usage alone is read only if no later event supersedes it.
                if !matters && has_usage_metadata_object(data) {
                    return Verdict::KeepAsLast;
                }
                scan_if(matters)
            }
        }
    }
}

/// Most bytes of one event's data gathered for [`Triage`]; a longer event is
/// scanned as it comes.
pub const TRIAGE_CAP: usize = 64 * 1024;

/// Capacity of an event buffer kept between events.
const GATHERED_KEEP: usize = 8 * 1024;

/// Empties an event buffer for the next event; one large event must not pin
/// up to 64 KiB for the rest of the stream.
fn clear_for_reuse(buffer: &mut Vec<u8>) {
    buffer.clear();
    if buffer.capacity() > GATHERED_KEEP {
        *buffer = Vec::new();
    }
}

/// Searchers built once: building one costs more than searching an event.
static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
static ERROR_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"error\""));
/// Gemini's `"finishReason"` and `"blockReason"`.
static REASON_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"Reason\""));
static USAGE_METADATA_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usageMetadata\""));

/// `"usage"` followed by `:` and `{` (whitespace allowed): a usage object,
/// not `"usage":null`.
pub(crate) fn has_usage_object(data: &[u8]) -> bool {
    any_value(&USAGE_KEY, data, |first| first == Some(b'{'))
}

/// `"error"` anywhere but as a key whose value is `null` (every Responses
/// event that repeats the response has `"error":null`); `"type":"error"`
/// counts.
fn has_error_value(data: &[u8]) -> bool {
    any_value(&ERROR_KEY, data, |first| first != Some(b'n'))
}

/// `"usageMetadata"` followed by an object (not a text that says it).
fn has_usage_metadata_object(data: &[u8]) -> bool {
    any_value(&USAGE_METADATA_KEY, data, |first| first == Some(b'{'))
}

/// Whether some occurrence of the quoted `key` in `data` passes `test` on
/// what follows it: the first byte of its value (after `:` and whitespace),
/// or `None` when no `:` follows (not a key).
fn any_value(key: &memmem::Finder<'_>, data: &[u8], test: impl Fn(Option<u8>) -> bool) -> bool {
    key.find_iter(data).any(|at| {
        let mut tokens = data[at + key.needle().len()..]
            .iter()
            .filter(|b| !b.is_ascii_whitespace());
        let first = match tokens.next() {
            Some(b':') => tokens.next().copied(),
            _ => None,
        };
        test(first)
    })
}

/// The provider whose format a response is in: Anthropic's and Gemini's
/// OpenAI-compatible endpoints (`/v1/chat/completions`,
/// `/v1beta/openai/chat/completions`, `…/embeddings`) answer as OpenAI does.
fn answering_format(provider: Provider, path: &str) -> Provider {
    let path = path.trim_end_matches('/');
    if provider != Provider::OpenAi
        && (path.ends_with("/completions") || path.ends_with("/embeddings"))
    {
        Provider::OpenAi
    } else {
        provider
    }
}

impl std::fmt::Debug for UsageParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageParser").finish_non_exhaustive()
    }
}

impl UsageParser {
    /// `answers`: what the response answers; `path` is the request path
    /// without query; `query` the raw query string; `content_type` /
    /// `content_encoding` the upstream response headers.
    #[must_use]
    pub fn new(
        answers: Answers,
        provider: Provider,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> UsageParser {
        UsageParser::build(
            provider,
            path,
            query,
            content_type,
            content_encoding,
            None,
            answers,
        )
    }

    /// `triage`: `None` for the request's own (tests ask for
    /// [`Triage::None`]).
    fn build(
        provider: Provider,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        triage: Option<Triage>,
        answers: Answers,
    ) -> UsageParser {
        let no_usage = provider == Provider::Anthropic && anthropic::is_count_tokens(path);
        let provider = answering_format(provider, path);
        let triage = triage.unwrap_or_else(|| Triage::for_request(provider, path));
        let reader = match BodyFormat::detect(provider, path, query, content_type) {
            Some(format) => Reader::for_format(provider, format, triage, answers),
            None => Reader::Sniff(json_kind(provider, path, query), triage),
        };
        let body = Body {
            provider: Some(provider),
            reader,
            extract: Extract::new(provider),
            findings: Findings::default(),
            no_usage,
            answers,
        };
        UsageParser {
            input: Decoder::new(content_encoding, body),
        }
    }

    /// Feeds a whole body and ends it.
    #[cfg(test)]
    pub(crate) fn finish_with(mut self, body: &[u8]) -> ParsedResponse {
        self.push(body);
        self.finish()
    }

    /// Feeds the next chunk of the body as received from upstream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.input.write(chunk);
    }

    /// Ends the body. Also valid after a truncated body: the usage seen so
    /// far is returned, with `complete: false`.
    #[must_use]
    pub fn finish(self) -> ParsedResponse {
        let (body, decode_error) = self.input.finish();
        body.finish(decode_error.is_some())
    }
}

/// Slots the provider modules capture into (see [`scan::Target`]).
mod slot {
    pub(super) const TYPE: usize = 0;
    pub(super) const USAGE: usize = 1;
    pub(super) const MODEL: usize = 2;
    pub(super) const ERROR: usize = 3;
    /// A top-level `message` (OpenAI responses' `error` event).
    pub(super) const MESSAGE: usize = 4;
    /// Gemini `finishReason` / `blockReason`.
    pub(super) const FINISH: usize = 5;
    /// OpenAI Responses' `background` flag: the one kind of retrieved
    /// object whose usage is billed (see [`super::Answers::Retrieval`]).
    pub(super) const BACKGROUND: usize = 6;
    /// A Responses stream event's `response.id`.
    pub(super) const RESPONSE_ID: usize = 7;
}

/// Shorthand for target tables.
const fn target(path: &'static [Seg], slot: usize) -> Target {
    Target { path, slot }
}

/// Error objects written into a stream outside any SSE field.
static STRAY_TARGETS: Targets = Targets::new(&[
    target(&[Seg::Key("error")], slot::ERROR),
    target(&[Seg::Item, Seg::Key("error")], slot::ERROR),
]);

/// What is learned besides the token counts, the same for every provider.
#[derive(Debug, Default)]
struct Findings {
    model: Option<String>,
    error: Option<String>,
    /// The stream saw its terminal event.
    terminal: bool,
    /// Usage can no longer be trusted (cap, malformed input, bad encoding).
    unknown: bool,
    /// An OpenAI response object created with `"background": true`.
    background: bool,
    /// Its id (`id`, or a stream event's `response.id`).
    response_id: Option<String>,
}

impl Findings {
    fn model_unknown(&self) -> bool {
        self.model.as_deref().is_none_or(str::is_empty)
    }

    fn note_model(&mut self, capture: Option<&Capture>) {
        // Every chunk of a stream repeats the model: parse it only when it changes.
        let unchanged = match (capture, &self.model) {
            (Some(c), Some(model)) => {
                c.bytes.len() == model.len() + 2
                    && c.bytes.first() == Some(&b'"')
                    && &c.bytes[1..c.bytes.len() - 1] == model.as_bytes()
            }
            _ => false,
        };
        if unchanged {
            return;
        }
        if let Some(model) = captured_string(capture) {
            self.model = Some(truncate_utf8(model, MODEL_CAP));
        }
    }

    /// Records an error message; the first one is the cause, later ones are
    /// fallout.
    fn note_error(&mut self, message: Option<String>) -> bool {
        match message {
            Some(message) => {
                self.error
                    .get_or_insert_with(|| truncate_utf8(message, ERROR_CAP));
                true
            }
            None => false,
        }
    }
}

/// One provider's interpretation of captured values.
#[derive(Debug)]
enum Extract {
    OpenAi(openai::OpenAiUsage),
    Anthropic(anthropic::AnthropicUsage),
    Gemini(gemini::GeminiUsage),
}

impl Extract {
    fn new(provider: Provider) -> Extract {
        match provider {
            Provider::OpenAi => Extract::OpenAi(Default::default()),
            Provider::Anthropic => Extract::Anthropic(Default::default()),
            Provider::Gemini => Extract::Gemini(Default::default()),
        }
    }

    /// Only a response that may be a background one's needs the OpenAI
    /// targets for it, and every target costs the scan of every body.
    fn targets(provider: Provider, answers: Answers) -> &'static Targets {
        match provider {
            Provider::OpenAi if answers != Answers::Request => &openai::BACKGROUND_TARGETS,
            Provider::OpenAi => &openai::TARGETS,
            Provider::Anthropic => &anthropic::TARGETS,
            Provider::Gemini => &gemini::TARGETS,
        }
    }

    /// Takes in one complete JSON value: the whole body, or one event's data
    /// (`event` is then the SSE event name).
    fn value(&mut self, event: Option<&[u8]>, doc: &Scanner, findings: &mut Findings) {
        let typed = captured_str(doc.capture(slot::TYPE));
        let named = event.map(String::from_utf8_lossy);
        let kind = typed.as_deref().or(named.as_deref()).unwrap_or("");
        match self {
            Extract::OpenAi(u) => u.value(kind, doc, findings),
            Extract::Anthropic(u) => u.value(kind, doc, findings),
            Extract::Gemini(u) => u.value(doc, findings),
        }
    }

    fn usage(&self) -> Option<Usage> {
        match self {
            Extract::OpenAi(u) => u.usage(),
            Extract::Anthropic(u) => u.usage(),
            Extract::Gemini(u) => u.usage(),
        }
    }
}

impl Default for Extract {
    fn default() -> Self {
        Extract::OpenAi(Default::default())
    }
}

/// How the (decoded) body is being read.
#[derive(Debug, Default)]
enum Reader {
    /// No content type said; the first non-whitespace byte decides. Holds
    /// the JSON kind to use if it is JSON.
    Sniff(BodyFormat, Triage),
    Json(Recycled<Scanner>),
    Sse(Recycled<SseState>),
    /// Not something usage can be read from.
    #[default]
    Unreadable,
}

impl Reader {
    fn for_format(
        provider: Provider,
        format: BodyFormat,
        triage: Triage,
        answers: Answers,
    ) -> Reader {
        let targets = Extract::targets(provider, answers);
        match format {
            BodyFormat::Json | BodyFormat::JsonArray => Reader::Json(Scanner::recycled(targets)),
            BodyFormat::Sse => {
                let (mut state, _) = Recycled::take(|| SseState {
                    reader: sse::SseReader::default(),
                    event: Scanner::new(targets),
                    stray: Scanner::new(&STRAY_TARGETS),
                    triage,
                    gathered: Vec::new(),
                    kept: Vec::new(),
                    streaming: false,
                });
                state.event.retarget(targets);
                state.triage = triage;
                state.streaming = triage == Triage::None;
                Reader::Sse(state)
            }
        }
    }
}

thread_local! {
    static FREE_SSE_STATES: FreeList<SseState> = const { RefCell::new(Vec::new()) };
}

impl Recycle for SseState {
    fn free_list() -> &'static LocalKey<FreeList<SseState>> {
        &FREE_SSE_STATES
    }

    /// The reader back at a stream's start, both scanners cleaned, the
    /// event buffers emptied (a large one dropped).
    fn clean(&mut self) {
        self.reader.reset();
        self.event.clean();
        self.stray.clean();
        clear_for_reuse(&mut self.gathered);
        clear_for_reuse(&mut self.kept);
    }
}

#[derive(Debug)]
struct SseState {
    reader: sse::SseReader,
    /// Scans the current event's data; reset after each event.
    event: Scanner,
    /// Scans lines that are not SSE fields, for un-prefixed error objects.
    stray: Scanner,
    triage: Triage,
    /// The current event's data so far, while it is being gathered for triage.
    gathered: Vec<u8>,
    /// An earlier event's data, [`Verdict::KeepAsLast`] or
    /// [`Verdict::KeepForModel`].
    kept: Vec<u8>,
    /// The current event's data goes straight to the scanner (no triage, or
    /// it outgrew [`TRIAGE_CAP`]).
    streaming: bool,
}

/// The decoded-body end of the pipeline: it is the decoder's output sink.
#[derive(Debug, Default)]
struct Body {
    /// `None` only in the placeholder a decoder leaves behind when it hands
    /// the body back (`Default` is needed for that).
    provider: Option<Provider>,
    reader: Reader,
    extract: Extract,
    findings: Findings,
    /// The endpoint reports tokens that are not billed (`count_tokens`).
    no_usage: bool,
    answers: Answers,
}

/// What a response answers, as far as billing goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Answers {
    /// A request that makes something: its usage is billed.
    #[default]
    Request,
    /// A request that asked for `"background": true` (an OpenAI response):
    /// billed, and an answer that carries the response's usage (its stream,
    /// run to the end) names it ([`ParsedResponse::background_response`]),
    /// so that a later retrieval does not bill it again.
    BackgroundRequest,
    /// A GET, which retrieves what an earlier request made
    /// (`/v1/responses/{id}`, `/v1/chat/completions/{id}`): its usage was
    /// billed then, so it is not billed again. Except an OpenAI response
    /// created with `"background": true`: its POST answers `queued`, and its
    /// usage is seen only when it is retrieved (polled, or its stream
    /// resumed), and it is named as for [`Answers::BackgroundRequest`].
    Retrieval,
}

impl Write for Body {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.feed(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Body {
    fn feed(&mut self, mut bytes: &[u8]) {
        if let Reader::Sniff(json, triage) = self.reader {
            let Some(at) = bytes.iter().position(|b| !b.is_ascii_whitespace()) else {
                return;
            };
            bytes = &bytes[at..];
            let format = match bytes[0] {
                b'{' | b'[' => Some(json),
                b':' | b'd' | b'e' | b'i' | b'r' => Some(BodyFormat::Sse),
                _ => None,
            };
            self.reader = match (format, self.provider) {
                (Some(format), Some(provider)) => {
                    Reader::for_format(provider, format, triage, self.answers)
                }
                _ => Reader::Unreadable,
            };
        }
        match &mut self.reader {
            Reader::Json(scanner) => scanner.push(bytes),
            Reader::Sse(state) => {
                let SseState {
                    reader,
                    event,
                    stray,
                    triage,
                    gathered,
                    kept,
                    streaming,
                } = &mut **state;
                let mut sink = EventSink {
                    event,
                    stray,
                    triage: *triage,
                    gathered,
                    kept,
                    streaming,
                    extract: &mut self.extract,
                    findings: &mut self.findings,
                };
                reader.push(bytes, &mut sink);
            }
            Reader::Sniff(..) | Reader::Unreadable => {}
        }
    }

    fn finish(mut self, decode_failed: bool) -> ParsedResponse {
        let findings = &mut self.findings;
        findings.unknown |= decode_failed;
        let complete = match &mut self.reader {
            Reader::Json(scanner) => {
                scanner.end_of_input();
                let status = scanner.status();
                if let Status::Failed(_) = status {
                    findings.unknown = true;
                }
                self.extract.value(None, scanner, findings);
                status == Status::Complete
            }
            Reader::Sse(state) => {
                let SseState {
                    reader,
                    event,
                    stray,
                    triage,
                    gathered,
                    kept,
                    streaming,
                } = &mut **state;
                let mut sink = EventSink {
                    event,
                    stray,
                    triage: *triage,
                    gathered,
                    kept,
                    streaming,
                    extract: &mut self.extract,
                    findings: &mut *findings,
                };
                reader.finish(&mut sink);
                sink.scan_kept();
                sink.stray_done(true);
                findings.unknown |= reader.overflowed();
                findings.terminal
            }
            Reader::Sniff(..) | Reader::Unreadable => {
                findings.unknown = true;
                false
            }
        };
        let retrieval = self.answers == Answers::Retrieval;
        let billed = !self.no_usage && (!retrieval || findings.background);
        let usage = if findings.unknown || !billed {
            None
        } else {
            self.extract.usage()
        };
        let background_response = if findings.background && usage.is_some() {
            findings.response_id.take()
        } else {
            None
        };
        ParsedResponse {
            background_response,
            usage,
            model: findings.model.take(),
            error: findings.error.take(),
            complete: complete && !decode_failed,
        }
    }
}

/// Receives SSE framing results and runs each event's data through the
/// scanner and the provider's extractor.
struct EventSink<'a> {
    event: &'a mut Scanner,
    stray: &'a mut Scanner,
    triage: Triage,
    gathered: &'a mut Vec<u8>,
    kept: &'a mut Vec<u8>,
    streaming: &'a mut bool,
    extract: &'a mut Extract,
    findings: &'a mut Findings,
}

impl EventSink<'_> {
    /// Hands the scanned event (`name`) to the extractor and readies the
    /// scanner for the next one.
    fn conclude(&mut self, name: Option<&[u8]>, at_eof: bool) {
        self.event.end_of_input();
        match self.event.status() {
            Status::Complete => self.extract.value(name, self.event, self.findings),
            Status::Empty => {}
            // Cut off by the end of input: a truncated stream, not a
            // malformed one.
            Status::Partial if at_eof => {}
            Status::Partial | Status::Failed(_) => self.findings.unknown = true,
        }
        self.event.reset();
    }

    /// Before an event is scanned: Gemini's kept event (the last one with
    /// usage) is read first, so events are read in order. OpenAI's waits for
    /// the end.
    fn scan_kept_before_next(&mut self) {
        if !self.triage.keeps_for_model() {
            self.scan_kept();
        }
    }

    /// Scans the kept event, if any, when it is still wanted: OpenAI's
    /// ([`Verdict::KeepForModel`]) only if no scanned event named the model.
    fn scan_kept(&mut self) {
        if self.kept.is_empty() {
            return;
        }
        if self.triage.keeps_for_model() && !self.findings.model_unknown() {
            clear_for_reuse(self.kept);
            return;
        }
        self.event.push(self.kept);
        clear_for_reuse(self.kept);
        // A kept event's name matters to no extractor: Gemini's are unnamed,
        // and OpenAI's kept ones are neither terminal nor errors (their `type`,
        // read from the data, says the same).
        self.conclude(None, false);
    }

    /// Gemini: `data`, an event to scan, follows a kept one (usage only, no
    /// error nor finish reason, else it would have been scanned). `data` is
    /// read first: when it carries counts and a model, it replaces all the
    /// kept event could say, which is dropped unread (like the events the
    /// kept one replaced). Otherwise both are read, in order. Leaves `data`
    /// in the scanner, to be concluded.
    fn scan_after_kept_usage(&mut self, data: &[u8]) {
        self.event.push(data);
        self.event.end_of_input();
        if self.event.status() == Status::Complete && gemini::replaces_earlier_usage(self.event) {
            clear_for_reuse(self.kept);
            return;
        }
        self.event.reset();
        self.scan_kept();
        self.event.push(data);
    }

    /// What becomes of a whole event (`data`): end markers are skipped.
    fn verdict(&self, event: &sse::Event<'_>, data: &[u8]) -> Verdict {
        if event.is_end_marker() {
            Verdict::Skip
        } else {
            self.triage.verdict(event, data, self.findings)
        }
    }

    /// Scans a triaged event's data if it is to be scanned (a kept one is
    /// the caller's to keep).
    fn settle(&mut self, verdict: Verdict, data: &[u8]) {
        match verdict {
            Verdict::Scan if self.triage == Triage::Gemini && !self.kept.is_empty() => {
                self.scan_after_kept_usage(data);
            }
            Verdict::Scan => {
                self.scan_kept_before_next();
                self.event.push(data);
            }
            Verdict::KeepAsLast | Verdict::KeepForModel | Verdict::Skip => {}
        }
    }

    /// Ends a triaged event: a scanned one is concluded, any other only
    /// notes an end marker.
    fn conclude_as(&mut self, verdict: Verdict, event: &sse::Event<'_>) {
        if verdict == Verdict::Scan {
            self.conclude(event.name, event.at_eof);
        } else {
            self.findings.terminal |= event.done;
            self.event.reset();
        }
    }

    /// Looks for a complete error object among the stray lines.
    fn stray_done(&mut self, at_eof: bool) {
        if at_eof {
            self.stray.end_of_input();
        }
        if let Some(capture) = self.stray.take_capture(slot::ERROR) {
            if self.findings.note_error(error_message(Some(&capture))) {
                self.findings.terminal = true;
            }
        }
        if let Status::Failed(_) = self.stray.status() {
            // Stray lines are outside the protocol: garbage there says
            // nothing about the usage. Start over for the next line.
            self.stray.reset();
        }
    }
}

impl sse::Handler for EventSink<'_> {
    fn data(&mut self, bytes: &[u8]) {
        if *self.streaming {
            self.event.push(bytes);
        } else if self.gathered.len() + bytes.len() > TRIAGE_CAP {
            // Too long to gather: scan it all as it comes.
            self.scan_kept_before_next();
            self.event.push(&self.gathered[..]);
            self.gathered.clear();
            self.event.push(bytes);
            *self.streaming = true;
        } else {
            self.gathered.extend_from_slice(bytes);
        }
    }

    fn dispatch(&mut self, event: &sse::Event<'_>) {
        let gathered = !*self.streaming;
        *self.streaming = self.triage == Triage::None;
        if gathered {
            let mut data = std::mem::take(self.gathered);
            let verdict = self.verdict(event, &data);
            match verdict {
                // The kept buffer is swapped, not copied; the older one is
                // reused for gathering.
                Verdict::KeepAsLast => std::mem::swap(self.kept, &mut data),
                Verdict::KeepForModel if self.kept.is_empty() => {
                    std::mem::swap(self.kept, &mut data)
                }
                _ => self.settle(verdict, &data),
            }
            *self.gathered = data;
            clear_for_reuse(self.gathered);
            self.conclude_as(verdict, event);
        } else if event.is_end_marker() {
            self.findings.terminal |= event.done;
            self.event.reset();
        } else {
            self.conclude(event.name, event.at_eof);
        }
    }

    /// No data gathered: the event is triaged where it lies, and copied
    /// only if it is kept.
    fn whole(&mut self, data: &[u8], event: &sse::Event<'_>) {
        if *self.streaming || data.len() > TRIAGE_CAP {
            self.data(data);
            self.dispatch(event);
            return;
        }
        let verdict = self.verdict(event, data);
        match verdict {
            Verdict::KeepAsLast => {
                clear_for_reuse(self.kept);
                self.kept.extend_from_slice(data);
            }
            Verdict::KeepForModel if self.kept.is_empty() => self.kept.extend_from_slice(data),
            _ => self.settle(verdict, data),
        }
        self.conclude_as(verdict, event);
    }

    fn stray(&mut self, bytes: &[u8]) {
        self.stray.push(bytes);
        if bytes == b"\n" {
            self.stray_done(false);
        }
    }
}

/// A captured value parsed as JSON: `Ok(None)` when absent or `null`,
/// `Err(())` when it cannot be trusted (over the cap, or not JSON).
fn captured_json(capture: Option<&Capture>) -> Result<Option<Value>, ()> {
    let Some(capture) = capture else {
        return Ok(None);
    };
    if capture.truncated {
        return Err(());
    }
    match serde_json::from_slice(&capture.bytes) {
        Ok(Value::Null) => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(_) => Err(()),
    }
}

/// A captured value that is a JSON string.
fn captured_string(capture: Option<&Capture>) -> Option<String> {
    captured_str(capture).map(Cow::into_owned)
}

/// [`captured_string`], borrowed from the capture when it can be.
fn captured_str(capture: Option<&Capture>) -> Option<Cow<'_, str>> {
    // Most strings (model names, event types) have no escape: the bytes
    // between the quotes are the value, no JSON parser needed.
    if let Some(c) = capture.filter(|c| !c.truncated) {
        if let [b'"', inner @ .., b'"'] = c.bytes.as_slice() {
            if !inner.iter().any(|&b| b == b'\\' || b == b'"' || b < 0x20) {
                return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
            }
        }
    }
    match captured_json(capture) {
        Ok(Some(Value::String(s))) => Some(Cow::Owned(s)),
        _ => None,
    }
}

/// The message of a captured `error` value: `error.message` when it is an
/// object with one, the string itself when it is a string, else the value's
/// JSON text. `None` for `null` and absent values.
fn error_message(capture: Option<&Capture>) -> Option<String> {
    let capture = capture?;
    match captured_json(Some(capture)) {
        Ok(None) => None,
        Ok(Some(Value::String(s))) => Some(s),
        Ok(Some(Value::Object(map))) => match map.get("message") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => Some(Value::Object(map).to_string()),
        },
        Ok(Some(other)) => Some(other.to_string()),
        Err(()) => Some(String::from_utf8_lossy(&capture.bytes).into_owned()),
    }
}

/// Cuts `s` to at most `max` bytes without splitting a character.
fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod send_sync {
    //! The gateway keeps these in its per-request context, which crosses
    //! threads.
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn parsers_can_live_in_the_request_context() {
        assert_send_sync::<super::UsageParser>();
        assert_send_sync::<super::RequestSniffer>();
        assert_send_sync::<super::InjectedUsageStripper>();
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the provider modules' tests.

    use super::*;

    /// How a test response is described.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Req<'a> {
        pub provider: Provider,
        pub path: &'a str,
        pub query: Option<&'a str>,
        pub content_type: Option<&'a str>,
        pub content_encoding: Option<&'a str>,
    }

    impl<'a> Req<'a> {
        pub(crate) fn new(provider: Provider, path: &'a str, content_type: &'a str) -> Self {
            Req {
                provider,
                path,
                query: None,
                content_type: Some(content_type),
                content_encoding: None,
            }
        }

        pub(crate) fn parser(&self) -> UsageParser {
            self.answering(Answers::Request)
        }

        /// A parser for the response to `answers`.
        pub(crate) fn answering(&self, answers: Answers) -> UsageParser {
            UsageParser::new(
                answers,
                self.provider,
                self.path,
                self.query,
                self.content_type,
                self.content_encoding,
            )
        }

        /// A parser that scans every event, as if no [`Triage`] applied.
        pub(crate) fn untriaged_parser(&self) -> UsageParser {
            UsageParser::build(
                self.provider,
                self.path,
                self.query,
                self.content_type,
                self.content_encoding,
                Some(Triage::None),
                Answers::Request,
            )
        }

        /// Parses `body` pushed in one piece.
        pub(crate) fn parse(&self, body: &[u8]) -> ParsedResponse {
            let mut p = self.parser();
            p.push(body);
            p.finish()
        }

        /// Parses `body` split at the given offsets (ascending).
        pub(crate) fn parse_split(&self, body: &[u8], splits: &[usize]) -> ParsedResponse {
            feed(self.parser(), body, splits)
        }

        /// Parses `body` and checks that every single split point and
        /// one-byte chunks give the same result; returns it.
        pub(crate) fn parse_everywhere(&self, body: &[u8]) -> ParsedResponse {
            let whole = self.parse(body);
            for at in 0..=body.len() {
                assert_eq!(self.parse_split(body, &[at]), whole, "split at {at}");
            }
            let bytes: Vec<usize> = (1..body.len()).collect();
            assert_eq!(self.parse_split(body, &bytes), whole, "one-byte chunks");
            whole
        }
    }

    /// Pushes `body` split at the given offsets (ascending) and finishes.
    pub(crate) fn feed(mut parser: UsageParser, body: &[u8], splits: &[usize]) -> ParsedResponse {
        let mut from = 0;
        for &at in splits {
            parser.push(&body[from..at]);
            from = at;
        }
        parser.push(&body[from..]);
        parser.finish()
    }

    pub(crate) fn usage(
        input: u64,
        cached: u64,
        creation: u64,
        creation_1h: u64,
        output: u64,
        reasoning: u64,
    ) -> Usage {
        Usage {
            input_tokens: input,
            cached_tokens: cached,
            cache_creation_tokens: creation,
            cache_creation_1h_tokens: creation_1h,
            output_tokens: output,
            reasoning_tokens: reasoning,
        }
    }

    /// Joins SSE lines with `\n`.
    pub(crate) fn lf(lines: &[&str]) -> Vec<u8> {
        let mut out = lines.join("\n");
        out.push('\n');
        out.into_bytes()
    }

    /// The same text with CRLF line ends.
    pub(crate) fn crlf(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() * 2);
        for &b in body {
            if b == b'\n' {
                out.push(b'\r');
            }
            out.push(b);
        }
        out
    }
}
