//! The request side of usage: what the client asked for, and the OpenAI
//! `stream_options.include_usage` injection (SPEC §4).
//!
//! [`RequestSniffer`] learns `model`, `stream` and
//! `stream_options.include_usage` from a request body fed in chunks, with the
//! same bounded scanner the response side uses, so a request body of any size
//! costs a few KiB. It never fails: a body that is not JSON simply teaches it
//! nothing (or what was seen before the error).
//!
//! [`inject_include_usage`] rewrites a whole OpenAI chat request body so the
//! upstream reports usage on a stream. It edits text rather than
//! re-serialising, so every other byte (key order, whitespace, number
//! spelling) stays as the client sent it.

use super::recycle::Recycled;
use super::scan::{Capture, Scanner, Seg::Key, Status, Targets};
use super::{captured_string, target, truncate_utf8, MODEL_CAP};

const MODEL: usize = 0;
const STREAM: usize = 1;
const INCLUDE_USAGE: usize = 2;
const STREAM_OPTIONS: usize = 3;
const BACKGROUND: usize = 4;

static TARGETS: Targets = Targets::new(&[
    target(&[Key("model")], MODEL),
    target(&[Key("stream")], STREAM),
    target(
        &[Key("stream_options"), Key("include_usage")],
        INCLUDE_USAGE,
    ),
    target(&[Key("stream_options")], STREAM_OPTIONS),
    target(&[Key("background")], BACKGROUND),
]);

/// What the gateway needs to know about a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// The top-level `model`, at most [`MODEL_CAP`] bytes.
    pub model: Option<String>,
    /// `"stream": true`.
    pub stream: bool,
    /// `"stream_options": {"include_usage": true}`.
    pub include_usage: bool,
    /// `"background": true` (an OpenAI response run in the background).
    pub background: bool,
}

/// Learns [`RequestInfo`] from a request JSON body fed in chunks.
#[derive(Debug)]
pub struct RequestSniffer {
    scanner: Recycled<Scanner>,
}

impl Default for RequestSniffer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestSniffer {
    #[must_use]
    pub fn new() -> Self {
        RequestSniffer {
            scanner: Scanner::recycled(&TARGETS),
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.scanner.push(chunk);
    }

    #[must_use]
    pub fn finish(mut self) -> RequestInfo {
        self.scanner.end_of_input();
        let s = &self.scanner;
        RequestInfo {
            model: captured_string(s.capture(MODEL)).map(|m| truncate_utf8(m, MODEL_CAP)),
            stream: is_true(s.capture(STREAM)),
            include_usage: include_usage_is_true(s),
            background: is_true(s.capture(BACKGROUND)),
        }
    }
}

fn is_true(capture: Option<&Capture>) -> bool {
    capture.is_some_and(|c| c.bytes == b"true")
}

/// `include_usage` counts only inside the `stream_options` that wins (the
/// last one, if the key is repeated).
fn include_usage_is_true(s: &Scanner) -> bool {
    s.capture(STREAM_OPTIONS)
        .and_then(|options| include_usage_in(s, options))
        .is_some_and(|flag| flag.bytes == b"true")
}

/// The `include_usage` value captured inside `options` (the last one there,
/// if the key is repeated): one in another `stream_options` is not its.
fn include_usage_in<'a>(s: &'a Scanner, options: &Capture) -> Option<&'a Capture> {
    s.capture(INCLUDE_USAGE)
        .filter(|flag| flag.start > options.start && flag.end <= options.end)
}

/// For an OpenAI chat-completions request body with `"stream": true` whose
/// `stream_options.include_usage` is not true: the body rewritten so it is.
///
/// - no `stream_options`: `"stream_options":{"include_usage":true},` is
///   inserted right after the opening `{`;
/// - `stream_options` is an object: `"include_usage":true` is inserted into
///   it, or its existing `include_usage` value is replaced by `true`;
/// - `stream_options` is anything else (`null`): it is replaced by
///   `{"include_usage":true}`.
///
/// `None` when nothing must change, or the body is not exactly one JSON
/// object.
///
/// It needs the whole body (the gateway holds chat request bodies, which are
/// bounded by its request size limit); the caller must then send the new
/// length as `Content-Length`.
#[must_use]
pub fn inject_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let mut s = Scanner::recycled(&TARGETS);
    s.push(body);
    s.end_of_input();
    if s.status() != Status::Complete || s.documents() != 1 {
        return None;
    }
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' || !is_true(s.capture(STREAM)) || include_usage_is_true(&s) {
        return None;
    }
    let Some(options) = s.capture(STREAM_OPTIONS) else {
        return Some(splice(
            body,
            open + 1,
            open + 1,
            br#""stream_options":{"include_usage":true},"#,
        ));
    };
    let (start, end) = (offset(options.start)?, offset(options.end)?);
    if body.get(start) != Some(&b'{') {
        return Some(splice(body, start, end, br#"{"include_usage":true}"#));
    }
    match include_usage_in(&s, options) {
        Some(flag) => Some(splice(
            body,
            offset(flag.start)?,
            offset(flag.end)?,
            b"true",
        )),
        _ => {
            // `inside` ends with the object's `}`.
            let inside = body.get(start + 1..end)?;
            let empty = inside.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
            let text: &[u8] = if empty {
                br#""include_usage":true"#
            } else {
                br#""include_usage":true,"#
            };
            Some(splice(body, start + 1, start + 1, text))
        }
    }
}

fn offset(at: u64) -> Option<usize> {
    usize::try_from(at).ok()
}

/// `body` with `body[from..to]` replaced by `with`.
fn splice(body: &[u8], from: usize, to: usize, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + with.len());
    out.extend_from_slice(&body[..from]);
    out.extend_from_slice(with);
    out.extend_from_slice(&body[to..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sniff(body: &[u8]) -> RequestInfo {
        let mut s = RequestSniffer::new();
        s.push(body);
        s.finish()
    }

    fn inject(body: &str) -> Option<String> {
        inject_include_usage(body.as_bytes()).map(|b| String::from_utf8(b).expect("utf-8"))
    }

    fn parsed(body: &str) -> Value {
        serde_json::from_str(body).expect("valid JSON")
    }

    #[test]
    fn sniffer_learns_model_stream_and_include_usage_in_any_split() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"say \"stream\": false"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let expected = RequestInfo {
            model: Some("gpt-4o".into()),
            stream: true,
            include_usage: true,
            background: false,
        };
        for at in 0..=body.len() {
            let mut s = RequestSniffer::new();
            s.push(&body[..at]);
            s.push(&body[at..]);
            assert_eq!(s.finish(), expected, "split at {at}");
        }
    }

    #[test]
    fn sniffer_learns_a_background_response_in_any_split() {
        let body =
            br#"{"model":"o3","input":"say \"background\": true","background":true,"stream":true}"#;
        for at in 0..=body.len() {
            let mut s = RequestSniffer::new();
            s.push(&body[..at]);
            s.push(&body[at..]);
            let info = s.finish();
            assert!(info.background && info.stream, "split at {at}");
        }
        for body in [
            &br#"{"model":"o3","background":false}"#[..],
            br#"{"model":"o3","background":"true"}"#,
            br#"{"model":"o3","metadata":{"background":true}}"#,
        ] {
            assert!(!sniff(body).background, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn sniffer_defaults_for_non_stream_and_non_json_bodies() {
        assert_eq!(
            sniff(br#"{"model":"text-embedding-3-small","input":"hi"}"#),
            RequestInfo {
                model: Some("text-embedding-3-small".into()),
                ..Default::default()
            }
        );
        assert_eq!(
            sniff(b"--boundary\r\nContent-Disposition: form-data"),
            RequestInfo::default()
        );
        assert!(!sniff(br#"{"stream":"true"}"#).stream);
    }

    #[test]
    fn injection_inserts_stream_options_after_the_opening_brace() {
        let body = "  \n{\"model\": \"gpt-4o\", \"stream\": true, \"messages\": []}";
        let out = inject(body).expect("injected");
        assert_eq!(out, "  \n{\"stream_options\":{\"include_usage\":true},\"model\": \"gpt-4o\", \"stream\": true, \"messages\": []}");
        assert!(sniff(out.as_bytes()).include_usage);
    }

    #[test]
    fn injection_adds_include_usage_to_existing_stream_options() {
        let out = inject(
            r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":false}}"#,
        )
        .expect("injected");
        assert_eq!(
            out,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":false}}"#
        );
        let out = inject(r#"{"stream":true,"stream_options":{ }}"#).expect("injected");
        assert_eq!(
            parsed(&out),
            json!({"stream": true, "stream_options": {"include_usage": true}})
        );
    }

    #[test]
    fn injection_turns_include_usage_false_into_true() {
        let out = inject(r#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#)
            .expect("injected");
        assert_eq!(
            out,
            r#"{"stream":true,"stream_options":{"include_usage":true,"x":1}}"#
        );
        let out = inject(r#"{"stream":true,"stream_options":null}"#).expect("injected");
        assert_eq!(
            out,
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn injection_leaves_bodies_that_need_nothing_alone() {
        assert_eq!(inject(r#"{"stream":false,"model":"m"}"#), None);
        assert_eq!(inject(r#"{"model":"m"}"#), None);
        assert_eq!(
            inject(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            None
        );
        assert_eq!(inject(r#"[{"stream":true}]"#), None);
        assert_eq!(inject(r#"{"stream":true"#), None);
        assert_eq!(inject(r#"{"stream":true}{}"#), None);
        assert_eq!(inject("not json"), None);
    }

    #[test]
    fn repeated_stream_options_are_judged_by_the_last_one() {
        let body = r#"{"stream":true,"stream_options":{"include_usage":true},"stream_options":{}}"#;
        assert!(!sniff(body.as_bytes()).include_usage);
        let out = inject(body).expect("injected");
        assert_eq!(
            out,
            r#"{"stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":true}}"#
        );
    }
}

/// The streaming form of the injection, used by the gateway: request bytes
/// pass through as they arrive, except the closing `}` of the body (and any
/// whitespace after it), which is held back until the end. Once the whole
/// body has been seen, if it is one JSON object with `"stream": true` and no
/// `stream_options` at all, `,"stream_options":{"include_usage":true}` goes
/// out just before that brace. Memory is the sniffer's plus a few bytes;
/// nothing is buffered. The length changes by exactly [`INJECTION_LEN`]
/// bytes either way when made with [`StreamingUsageInjector::fixed_length`]
/// (a body that gets no field gets as many spaces before its closing brace),
/// so a client's `Content-Length` plus that stays true; otherwise the
/// upstream request must be sent chunked.
///
/// A body that already has a top-level `stream_options` object without an
/// `include_usage` member (`{"include_obfuscation":false}`, `{}`) gets
/// `"include_usage":true` as that object's first member instead: the object
/// is held back from its `{` to its `}` (at most [`OPTIONS_HOLD_CAP`] bytes;
/// a longer one passes unchanged) so the member is only added where it is
/// missing (no duplicate key, which strict JSON readers refuse) and with a
/// comma only when the object has other members. Only the first such object
/// is edited. A `"stream_options": null` (an SDK that writes every unset
/// field) is no options: it becomes `{"include_usage":true}` when
/// `"stream": true` came before it (a request that does not stream must not
/// get options, and this one has gone out by the time a later `stream` is
/// read). An
/// `include_usage` the client set to `false` or `null` is turned `true` in
/// place (`true ` and `true`: the length does not change), so that stream
/// too has its usage, removed from what the client sees like an added
/// one's. A `stream_options` that is neither an object nor null is left as
/// it is. The injection is reported only if the request streams.
#[derive(Debug, Default)]
pub struct StreamingUsageInjector {
    scanner: Option<Recycled<Scanner>>,
    held: Vec<u8>,
    first: Option<u8>,
    /// Pad a body that gets no field to the same length.
    fixed_length: bool,
    /// Bytes pushed so far (the scanner's offsets count from the body's start).
    consumed: u64,
    /// A `stream_options` object being held back: its offset and its bytes
    /// (and any after it in the same chunk) so far.
    options: Option<(u64, Vec<u8>)>,
    /// Bytes added inside a `stream_options` object.
    added: usize,
    /// An `include_usage` of `false` or `null` was turned `true`.
    turned_true: bool,
    /// No later `stream_options` is looked at: one was edited, or one
    /// outgrew the hold.
    options_done: bool,
}

/// The member added to a `stream_options` object that lacks it: alone, and
/// before the object's other members.
const INCLUDE_USAGE_MEMBER: &[u8] = br#""include_usage":true"#;
const INCLUDE_USAGE_MEMBER_FIRST: &[u8] = br#""include_usage":true,"#;

/// What a `"stream_options": null` becomes.
const NULL_OPTIONS_REPLACEMENT: &[u8] = br#"{"include_usage":true}"#;

/// Longest `stream_options` object held back to add `include_usage`.
pub const OPTIONS_HOLD_CAP: usize = 4096;

/// How many bytes the injection adds (also the padding of a fixed-length injector).
pub const INJECTION_LEN: usize = INJECTED_FIELD.len();

/// Held bytes beyond this mean the tail is not "`}` + whitespace": give up holding.
const HELD_CAP: usize = 4096;

impl StreamingUsageInjector {
    #[must_use]
    pub fn new() -> Self {
        StreamingUsageInjector {
            scanner: Some(Scanner::recycled(&TARGETS)),
            ..Default::default()
        }
    }

    /// An injector whose output is always [`INJECTION_LEN`] bytes longer
    /// than its input: JSON whitespace stands in for a field not added.
    #[must_use]
    pub fn fixed_length() -> Self {
        StreamingUsageInjector {
            fixed_length: true,
            ..Self::new()
        }
    }

    /// Whether the output is always [`INJECTION_LEN`] bytes longer than the input.
    #[must_use]
    pub fn is_fixed_length(&self) -> bool {
        self.fixed_length
    }

    /// Whether `include_usage` was added to the client's `stream_options`
    /// object (after [`StreamingUsageInjector::finish`]: the body changed even
    /// where the injection is not reported, e.g. a later `"stream": false`).
    #[must_use]
    pub fn edited_stream_options(&self) -> bool {
        self.added > 0 || self.turned_true
    }

    /// Feeds a chunk; returns the bytes to forward now. An injector serves
    /// one attempt: when Pingora retries on another upstream connection and
    /// sends the body again, the gateway starts a new one.
    pub fn push(&mut self, chunk: bytes::Bytes) -> bytes::Bytes {
        debug_assert!(self.scanner.is_some(), "a body pushed after finish");
        if let Some(s) = self.scanner.as_mut() {
            s.push(&chunk);
        }
        if self.first.is_none() {
            self.first = chunk.iter().copied().find(|b| !b.is_ascii_whitespace());
        }
        let base = self.consumed;
        self.consumed += chunk.len() as u64;
        let chunk = if self.options_done {
            chunk
        } else {
            self.edit_options(chunk, base)
        };
        if self.held.is_empty() {
            match closing_tail(&chunk) {
                None => chunk,
                Some(at) => {
                    self.held.extend_from_slice(&chunk[at..]);
                    chunk.slice(..at)
                }
            }
        } else {
            let mut joined = std::mem::take(&mut self.held);
            joined.extend_from_slice(&chunk);
            match closing_tail(&joined) {
                Some(at) if joined.len() - at <= HELD_CAP => {
                    self.held = joined.split_off(at);
                    bytes::Bytes::from(joined)
                }
                _ => bytes::Bytes::from(joined),
            }
        }
    }

    /// Holds back a `stream_options` object that began in this chunk (at
    /// `base` in the body) or earlier, and once it has ended, adds
    /// `include_usage` to it if it lacks it. Returns the bytes to forward.
    fn edit_options(&mut self, chunk: bytes::Bytes, base: u64) -> bytes::Bytes {
        let Some(scanner) = self.scanner.as_ref() else {
            return chunk;
        };
        // The bytes at hand and where the object's `{` is in them.
        let (start, data, at) = match self.options.take() {
            Some((start, mut held)) => {
                held.extend_from_slice(&chunk);
                (start, bytes::Bytes::from(held), 0)
            }
            None => {
                let Some(start) = scanner.last_start(STREAM_OPTIONS).filter(|&at| at >= base)
                else {
                    return chunk;
                };
                let at = (start - base) as usize;
                if !matches!(chunk.get(at), Some(b'{' | b'n')) {
                    // Not an object, nor `null`: left as it is.
                    return chunk;
                }
                (start, chunk, at)
            }
        };
        let ended = scanner
            .capture(STREAM_OPTIONS)
            .filter(|options| options.start == start);
        match ended {
            // `null` is no options at all: the object with the member instead.
            // Only when `"stream": true` came before it: OpenAI refuses
            // `stream_options` on a request that does not stream.
            Some(options) if data[at] == b'n' => {
                self.options_done = true;
                if options.bytes != b"null" || !is_true(scanner.capture(STREAM)) {
                    return data;
                }
                self.added = NULL_OPTIONS_REPLACEMENT.len() - options.bytes.len();
                let mut out = Vec::with_capacity(data.len() + self.added);
                out.extend_from_slice(&data[..at]);
                out.extend_from_slice(NULL_OPTIONS_REPLACEMENT);
                out.extend_from_slice(&data[at + options.bytes.len()..]);
                bytes::Bytes::from(out)
            }
            // Copied only if edited.
            Some(options) => {
                if let Some(member) = options_member(scanner, options, &data[at..]) {
                    self.added = member.len();
                    self.options_done = true;
                    return spliced(&data, at + 1, member);
                }
                let Some((offset, value)) = unset_include_usage(scanner, options) else {
                    return data;
                };
                let mut out = data.to_vec();
                match out.get_mut(at + offset..at + offset + value.len()) {
                    Some(place) => place.copy_from_slice(value),
                    None => return data,
                }
                self.turned_true = true;
                self.options_done = true;
                bytes::Bytes::from(out)
            }
            None if data.len() - at > OPTIONS_HOLD_CAP => {
                self.options_done = true;
                data
            }
            None => {
                self.options = Some((start, data[at..].to_vec()));
                data.slice(..at)
            }
        }
    }

    /// Ends the body: returns what the request asked for, whether the
    /// injection was made, and the last bytes to forward.
    pub fn finish(&mut self) -> (RequestInfo, bool, bytes::Bytes) {
        let mut scanner = self
            .scanner
            .take()
            .unwrap_or_else(|| Scanner::recycled(&TARGETS));
        scanner.end_of_input();
        let info = RequestInfo {
            model: captured_string(scanner.capture(MODEL)).map(|m| truncate_utf8(m, MODEL_CAP)),
            stream: is_true(scanner.capture(STREAM)),
            include_usage: include_usage_is_true(&scanner),
            background: is_true(scanner.capture(BACKGROUND)),
        };
        let mut held = std::mem::take(&mut self.held);
        if let Some((_, options)) = self.options.take() {
            // The body ended inside `stream_options`: it goes out unchanged.
            held.splice(0..0, options);
        }
        let inject = scanner.status() == Status::Complete
            && scanner.documents() == 1
            && self.first == Some(b'{')
            && info.stream
            && scanner.capture(STREAM_OPTIONS).is_none()
            && held.first() == Some(&b'}');
        if !inject {
            let edited = self.edited_stream_options() && info.stream && !info.include_usage;
            if !self.fixed_length {
                return (info, edited, bytes::Bytes::from(held));
            }
            let padding = INJECTION_LEN - self.added;
            // Spaces inside the object (before its `}`) when it has one,
            // else after whatever the body was.
            let mut out = Vec::with_capacity(padding + held.len());
            if held.first() == Some(&b'}') {
                out.resize(padding, b' ');
                out.extend_from_slice(&held);
            } else {
                out.extend_from_slice(&held);
                out.resize(held.len() + padding, b' ');
            }
            return (info, edited, bytes::Bytes::from(out));
        }
        let mut out = Vec::with_capacity(INJECTED_FIELD.len() + held.len());
        out.extend_from_slice(INJECTED_FIELD);
        out.extend_from_slice(&held);
        (info, true, bytes::Bytes::from(out))
    }
}

const INJECTED_FIELD: &[u8] = br#","stream_options":{"include_usage":true}"#;

/// Where a trailing `}` followed only by whitespace starts, if the data ends so.
/// Where an ended `stream_options` object's own `include_usage` is `false`
/// or `null`: its offset from the object's `{`, and the bytes of the same
/// length that make it `true`.
fn unset_include_usage(scanner: &Scanner, options: &Capture) -> Option<(usize, &'static [u8])> {
    let flag = include_usage_in(scanner, options)?;
    let value: &[u8] = match flag.bytes.as_slice() {
        b"false" => b"true ",
        b"null" => b"true",
        _ => return None,
    };
    Some((usize::try_from(flag.start - options.start).ok()?, value))
}

/// What goes after the `{` of an ended `stream_options` object (`object`
/// holds its bytes from that brace on): nothing if it has `include_usage`
/// or is longer than [`OPTIONS_HOLD_CAP`], else the member, with a comma if
/// the object has other members. Whether the request streams is not known
/// yet (`stream` may come later): a non-stream request with `stream_options`
/// is refused or ignores it, with the member as without it.
fn options_member(scanner: &Scanner, options: &Capture, object: &[u8]) -> Option<&'static [u8]> {
    let has_include_usage = include_usage_in(scanner, options).is_some();
    let len = usize::try_from(options.end - options.start).ok()?;
    if has_include_usage || len > OPTIONS_HOLD_CAP || len > object.len() {
        return None;
    }
    let empty = object[1..len]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|&b| b == b'}');
    Some(if empty {
        INCLUDE_USAGE_MEMBER
    } else {
        INCLUDE_USAGE_MEMBER_FIRST
    })
}

/// `data` with `insert` put in at `at`, as one buffer.
fn spliced(data: &[u8], at: usize, insert: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(data.len() + insert.len());
    out.extend_from_slice(&data[..at]);
    out.extend_from_slice(insert);
    out.extend_from_slice(&data[at..]);
    bytes::Bytes::from(out)
}

fn closing_tail(data: &[u8]) -> Option<usize> {
    let last = data.iter().rposition(|b| !b.is_ascii_whitespace())?;
    (data[last] == b'}').then_some(last)
}

#[cfg(test)]
mod streaming_injector_tests {
    use super::super::recycle;
    use super::*;

    /// Pushes the parts through a new injector (fixed-length or not);
    /// returns its info, decision and whole output.
    fn run_parts(fixed: bool, parts: &[&[u8]]) -> (RequestInfo, bool, Vec<u8>) {
        let mut inj = if fixed {
            StreamingUsageInjector::fixed_length()
        } else {
            StreamingUsageInjector::new()
        };
        let mut out = Vec::new();
        for part in parts {
            out.extend_from_slice(&inj.push(bytes::Bytes::copy_from_slice(part)));
        }
        let (info, injected, tail) = inj.finish();
        out.extend_from_slice(&tail);
        (info, injected, out)
    }

    fn run(body: &[u8], split: usize) -> (RequestInfo, bool, Vec<u8>) {
        let split = split.min(body.len());
        run_parts(false, &[&body[..split], &body[split..]])
    }

    /// The sniffer's and the injector's scanners come from the thread's
    /// free list: a body cut anywhere (in `stream_options`, in a string)
    /// before it leaves nothing that changes how the next body is read and
    /// rewritten.
    #[test]
    fn a_request_reads_the_same_on_a_recycled_scanner() {
        let bodies: [&[u8]; 4] = [
            br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_obfuscation":false},"messages":[]}"#,
            br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"\"stream_options\":{"}]}"#,
            br#"{"stream":true,"stream_options":{"include_usage":false},"model":"o3"}"#,
            br#"{"model":"text-embedding-3-small","input":["a","b"]}"#,
        ];
        let sniff = |body: &[u8]| {
            let mut sniffer = RequestSniffer::new();
            sniffer.push(body);
            sniffer.finish()
        };
        for later in bodies {
            recycle::forget::<Scanner>();
            let on_new = (run(later, later.len() / 2), sniff(later));
            for earlier in bodies {
                for cut in 0..=earlier.len() {
                    let mut left = earlier[..cut].to_vec();
                    left.extend_from_slice(b"\"\\x");
                    let _ = run(&left, cut / 2);
                    let _ = run_parts(true, &[&left]);
                    let _ = sniff(&left);
                    assert!(recycle::kept::<Scanner>() > 0);
                    assert_eq!(
                        (run(later, later.len() / 2), sniff(later)),
                        on_new,
                        "after {:?}",
                        String::from_utf8_lossy(&left)
                    );
                }
            }
        }
    }

    #[test]
    fn a_stream_without_stream_options_gets_include_usage_at_every_split() {
        let body =
            br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"}"}]}  "#;
        for split in 0..=body.len() {
            let (info, injected, out) = run(body, split);
            assert!(injected, "split {split}");
            assert!(info.stream);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true);
            assert_eq!(v["messages"][0]["content"], "}");
            assert_eq!(v["model"], "gpt-4o");
        }
    }

    #[test]
    fn bodies_that_need_nothing_pass_through_byte_for_byte() {
        for body in [
            &br#"{"model":"gpt-4o","messages":[]}"#[..],
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            br#"{"stream":true,"stream_options":{"include_obfuscation":true,"include_usage":1}}"#,
            br#"{"stream":true,"stream_options":"none"}"#,
            br#"{"stream":false}"#,
            br#"[{"stream":true}]"#,
            br#"{"stream":true"#,
            b"not json }",
            b"",
        ] {
            for split in 0..=body.len() {
                let (_, injected, out) = run(body, split);
                assert!(!injected, "{}", String::from_utf8_lossy(body));
                assert_eq!(out, body);
            }
        }
    }

    /// An `include_usage` the client set to `false` or `null` (an SDK that
    /// writes every unset field) is turned `true` where it is, at any cut:
    /// the same length, reported as an injection (the usage chunk is the
    /// gateway's to remove), and not reported when the request does not
    /// stream.
    #[test]
    fn an_include_usage_of_false_or_null_is_turned_true_in_place() {
        for (body, want, streams) in [
            (
                &br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false},"messages":[]}"#[..],
                &br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true },"messages":[]}"#[..],
                true,
            ),
            (
                br#"{"stream_options":{"include_obfuscation":false, "include_usage" : null },"stream":true}"#,
                br#"{"stream_options":{"include_obfuscation":false, "include_usage" : true },"stream":true}"#,
                true,
            ),
            (
                br#"{"stream":false,"stream_options":{"include_usage":false}}"#,
                br#"{"stream":false,"stream_options":{"include_usage":true }}"#,
                false,
            ),
        ] {
            for (a, b) in three_way_splits(body.len()) {
                let parts = [&body[..a], &body[a..b], &body[b..]];
                let what = format!("{} split {a}/{b}", String::from_utf8_lossy(body));
                let (info, injected, out) = run_parts(false, &parts);
                assert_eq!(out, want, "{what}");
                assert_eq!(injected, streams, "{what}");
                assert!(!info.include_usage, "{what}");
                let (_, fixed_injected, fixed_out) = run_parts(true, &parts);
                assert_eq!(fixed_injected, streams, "{what}");
                assert_eq!(fixed_out.len(), body.len() + INJECTION_LEN, "{what}");
                let fixed: serde_json::Value = serde_json::from_slice(&fixed_out).unwrap();
                assert_eq!(fixed, serde_json::from_slice::<serde_json::Value>(want).unwrap());
            }
        }
    }

    /// `"stream_options": null` (an SDK that writes every unset field) is no
    /// options: the stream is asked for its usage, at any split, and a
    /// fixed-length injector still adds exactly its length.
    #[test]
    fn a_null_stream_options_becomes_the_object_with_include_usage() {
        let body = br#"{"model":"gpt-4o","stream":true,"stream_options": null ,"messages":[]}"#;
        let want = br#"{"model":"gpt-4o","stream":true,"stream_options": {"include_usage":true} ,"messages":[]}"#;
        for split in 0..=body.len() {
            let (info, injected, out) = run(body, split);
            assert!(injected, "split at {split}");
            assert!(!info.include_usage);
            assert_eq!(out, want, "split at {split}");
            let (injected, out) = run_fixed(body, split);
            assert!(injected);
            assert_eq!(out.len(), body.len() + INJECTION_LEN);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                v["stream_options"],
                serde_json::json!({"include_usage": true})
            );
        }
        // Unless `"stream": true` is known by then, the null stays: OpenAI
        // refuses `stream_options` on a request that does not stream.
        for body in [
            &br#"{"stream":false,"stream_options":null}"#[..],
            br#"{"stream_options":null}"#,
        ] {
            for split in 0..=body.len() {
                let (_, injected, out) = run(body, split);
                assert!(!injected, "{} at {split}", String::from_utf8_lossy(body));
                assert_eq!(out, body);
            }
        }
        // `stream` after it: replaced only if it arrived with the null's
        // chunk, else left (and not reported).
        let body = br#"{"stream_options":null,"stream":true}"#;
        let replaced = br#"{"stream_options":{"include_usage":true},"stream":true}"#;
        for split in 0..=body.len() {
            let (_, injected, out) = run(body, split);
            let want: &[u8] = if injected { replaced } else { body };
            assert_eq!(out, want, "split at {split}");
            if split <= 18 {
                // `{"stream_options":` is 18 bytes: the null and `stream` came together.
                assert!(injected, "split at {split}");
            }
        }
    }

    fn run_fixed(body: &[u8], split: usize) -> (bool, Vec<u8>) {
        let split = split.min(body.len());
        let (_, injected, out) = run_parts(true, &[&body[..split], &body[split..]]);
        (injected, out)
    }

    #[test]
    fn a_fixed_length_injector_always_adds_exactly_injection_len_bytes() {
        for body in [
            &br#"{"model":"gpt-4o","stream":true,"messages":[]}"#[..],
            br#"{"model":"gpt-4o","messages":[]}  "#,
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            br#"[{"stream":true}]"#,
            br#"{"stream":true"#,
            b"not json }",
            b"",
        ] {
            for split in 0..=body.len() {
                let (injected, out) = run_fixed(body, split);
                assert_eq!(
                    out.len(),
                    body.len() + INJECTION_LEN,
                    "{}",
                    String::from_utf8_lossy(body)
                );
                if injected {
                    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                    assert_eq!(v["stream_options"]["include_usage"], true);
                } else {
                    // Only whitespace was added: the same JSON (or the same non-JSON).
                    let stripped =
                        |b: &[u8]| b.iter().copied().filter(|c| *c != b' ').collect::<Vec<_>>();
                    assert_eq!(stripped(&out), stripped(body));
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                        assert_eq!(
                            serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
                            v
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_new_injector_rewrites_a_replayed_body_like_the_first_attempt() {
        for fixed in [false, true] {
            let new = || {
                if fixed {
                    StreamingUsageInjector::fixed_length()
                } else {
                    StreamingUsageInjector::new()
                }
            };
            for body in [
                &br#"{"model":"gpt-4o","stream":true,"messages":[]}"#[..],
                br#"{"model":"gpt-4o","messages":[]}"#,
                br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_obfuscation":false}}"#,
            ] {
                let edits = body.windows(16).any(|w| w == b"\"stream_options\"");
                let mut attempts = Vec::new();
                for _ in 0..2 {
                    let mut inj = new();
                    let mut out = Vec::new();
                    for part in body.chunks(5) {
                        out.extend_from_slice(&inj.push(bytes::Bytes::copy_from_slice(part)));
                    }
                    let (info, injected, tail) = inj.finish();
                    out.extend_from_slice(&tail);
                    assert_eq!(inj.edited_stream_options(), edits);
                    attempts.push((info, injected, out));
                }
                assert_eq!(attempts[0], attempts[1], "fixed {fixed}");
                assert_eq!(attempts[0].0.model.as_deref(), Some("gpt-4o"));
                assert_eq!(attempts[0].1, body.windows(13).any(|w| w == b"\"stream\":true"));
            }
        }
    }

    /// Every way to cut the body in three.
    fn three_way_splits(len: usize) -> impl Iterator<Item = (usize, usize)> {
        (0..=len).flat_map(move |a| (a..=len).map(move |b| (a, b)))
    }

    #[test]
    fn a_stream_options_object_without_include_usage_gets_it_at_every_split() {
        for body in [
            &br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_obfuscation":false},"messages":[{"role":"user","content":"} {"}]}"#[..],
            br#"{"stream":true,"stream_options":{}}"#,
            br#"{ "stream" : true , "stream_options" : {  } , "n" : 1 }  "#,
            br#"{"stream":true,"stream_options":{"include_obfuscation":false,"x":{"include_usage":false}}}"#,
            br#"{"stream_options":{"include_obfuscation":false},"stream":true}"#,
        ] {
            let original: serde_json::Value = serde_json::from_slice(body).unwrap();
            let mut expected = original.clone();
            expected["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
            for (a, b) in three_way_splits(body.len()) {
                let parts = [&body[..a], &body[a..b], &body[b..]];
                let (info, injected, out) = run_parts(false, &parts);
                let what = format!("{} split {a}/{b}", String::from_utf8_lossy(body));
                assert!(injected, "{what}");
                assert!(info.stream && !info.include_usage, "{what}");
                let value: serde_json::Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&out)));
                assert_eq!(value, expected, "{what}");
                assert_eq!(out.len(), body.len() + value_growth(&original), "{what}");
                let (_, fixed_injected, fixed_out) = run_parts(true, &parts);
                assert!(fixed_injected, "{what}");
                assert_eq!(fixed_out.len(), body.len() + INJECTION_LEN, "{what}");
                let fixed_value: serde_json::Value = serde_json::from_slice(&fixed_out).unwrap();
                assert_eq!(fixed_value, expected, "{what}");
            }
        }
    }

    /// The bytes the member adds: with a comma unless the object was empty.
    fn value_growth(original: &serde_json::Value) -> usize {
        let empty = original["stream_options"]
            .as_object()
            .is_some_and(serde_json::Map::is_empty);
        if empty {
            INCLUDE_USAGE_MEMBER.len()
        } else {
            INCLUDE_USAGE_MEMBER_FIRST.len()
        }
    }

    #[test]
    fn a_non_stream_request_has_its_stream_options_edited_but_no_injection_reported() {
        let body = br#"{"stream":false,"stream_options":{}}"#;
        for split in 0..=body.len() {
            let (info, injected, out) = run(body, split);
            assert!(!injected && !info.stream);
            assert_eq!(
                out,
                br#"{"stream":false,"stream_options":{"include_usage":true}}"#
            );
        }
    }

    #[test]
    fn a_stream_options_object_longer_than_the_hold_passes_unchanged() {
        let body = format!(
            r#"{{"stream":true,"stream_options":{{"x":"{}"}},"model":"m"}}"#,
            "a".repeat(OPTIONS_HOLD_CAP)
        );
        for split in [0, 20, 40, body.len() - 5] {
            let (info, injected, out) = run(body.as_bytes(), split);
            assert!(!injected);
            assert_eq!(out, body.as_bytes());
            assert_eq!(info.model.as_deref(), Some("m"));
        }
    }

    #[test]
    fn a_body_that_ends_inside_stream_options_goes_out_unchanged() {
        let body = br#"{"stream":true,"stream_options":{"include_obfuscation":fal"#;
        for split in 0..=body.len() {
            let (_, injected, out) = run(body, split);
            assert!(!injected);
            assert_eq!(out, body);
            let (_, fixed_out) = run_fixed(body, split);
            assert_eq!(fixed_out.len(), body.len() + INJECTION_LEN);
        }
    }

    #[test]
    fn a_stream_options_that_needs_nothing_is_forwarded_without_copy() {
        let mut inj = StreamingUsageInjector::new();
        let chunk = bytes::Bytes::from_static(
            br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"#,
        );
        let out = inj.push(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(out.len(), chunk.len());
    }

    #[test]
    fn a_chunk_that_does_not_end_the_object_is_forwarded_without_copy() {
        let mut inj = StreamingUsageInjector::new();
        let chunk = bytes::Bytes::from_static(br#"{"model":"gpt-4o","#);
        let out = inj.push(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }
}
