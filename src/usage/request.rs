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

use super::scan::{Capture, Scanner, Seg::Key, Status, Target};
use super::{captured_string, target, truncate_utf8, MODEL_CAP};

const MODEL: usize = 0;
const STREAM: usize = 1;
const INCLUDE_USAGE: usize = 2;
const STREAM_OPTIONS: usize = 3;

const TARGETS: &[Target] = &[
    target(&[Key("model")], MODEL),
    target(&[Key("stream")], STREAM),
    target(
        &[Key("stream_options"), Key("include_usage")],
        INCLUDE_USAGE,
    ),
    target(&[Key("stream_options")], STREAM_OPTIONS),
];

/// What the gateway needs to know about a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// The top-level `model`, at most [`MODEL_CAP`] bytes.
    pub model: Option<String>,
    /// `"stream": true`.
    pub stream: bool,
    /// `"stream_options": {"include_usage": true}`.
    pub include_usage: bool,
}

/// Learns [`RequestInfo`] from a request JSON body fed in chunks.
#[derive(Debug)]
pub struct RequestSniffer {
    scanner: Scanner,
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
            scanner: Scanner::new(TARGETS),
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
        }
    }
}

fn is_true(capture: Option<&Capture>) -> bool {
    capture.is_some_and(|c| c.bytes == b"true")
}

/// `include_usage` counts only inside the `stream_options` that wins (the
/// last one, if the key is repeated).
fn include_usage_is_true(s: &Scanner) -> bool {
    match (s.capture(STREAM_OPTIONS), s.capture(INCLUDE_USAGE)) {
        (Some(options), Some(flag)) => {
            flag.start >= options.start && flag.end <= options.end && flag.bytes == b"true"
        }
        _ => false,
    }
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
    let mut s = Scanner::new(TARGETS);
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
    match s.capture(INCLUDE_USAGE) {
        Some(flag) if flag.start >= options.start && flag.end <= options.end => Some(splice(
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
        };
        for at in 0..=body.len() {
            let mut s = RequestSniffer::new();
            s.push(&body[..at]);
            s.push(&body[at..]);
            assert_eq!(s.finish(), expected, "split at {at}");
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
/// A body that already has a `stream_options` object is left alone (a
/// duplicate key would override the client's other options); its usage is
/// then only known if the client asked for it.
#[derive(Debug, Default)]
pub struct StreamingUsageInjector {
    scanner: Option<Scanner>,
    held: Vec<u8>,
    first: Option<u8>,
    /// Pad a body that gets no field to the same length.
    fixed_length: bool,
}

/// How many bytes the injection adds (also the padding of a fixed-length injector).
pub const INJECTION_LEN: usize = INJECTED_FIELD.len();

/// Held bytes beyond this mean the tail is not "`}` + whitespace": give up holding.
const HELD_CAP: usize = 4096;

impl StreamingUsageInjector {
    #[must_use]
    pub fn new() -> Self {
        StreamingUsageInjector {
            scanner: Some(Scanner::new(TARGETS)),
            held: Vec::new(),
            first: None,
            fixed_length: false,
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

    /// Feeds a chunk; returns the bytes to forward now.
    pub fn push(&mut self, chunk: bytes::Bytes) -> bytes::Bytes {
        if self.scanner.is_none() {
            // A body after `finish`: Pingora replays the request body when it
            // retries on another upstream connection. Start over, so the
            // replay is rewritten exactly like the first attempt.
            *self = StreamingUsageInjector {
                fixed_length: self.fixed_length,
                ..Self::new()
            };
        }
        if let Some(s) = self.scanner.as_mut() {
            s.push(&chunk);
        }
        if self.first.is_none() {
            self.first = chunk.iter().copied().find(|b| !b.is_ascii_whitespace());
        }
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

    /// Ends the body: returns what the request asked for, whether the
    /// injection was made, and the last bytes to forward.
    pub fn finish(&mut self) -> (RequestInfo, bool, bytes::Bytes) {
        let mut scanner = self.scanner.take().unwrap_or_else(|| Scanner::new(TARGETS));
        scanner.end_of_input();
        let info = RequestInfo {
            model: captured_string(scanner.capture(MODEL)).map(|m| truncate_utf8(m, MODEL_CAP)),
            stream: is_true(scanner.capture(STREAM)),
            include_usage: include_usage_is_true(&scanner),
        };
        let held = std::mem::take(&mut self.held);
        let inject = scanner.status() == Status::Complete
            && scanner.documents() == 1
            && self.first == Some(b'{')
            && info.stream
            && scanner.capture(STREAM_OPTIONS).is_none()
            && held.first() == Some(&b'}');
        if !inject {
            if !self.fixed_length {
                return (info, false, bytes::Bytes::from(held));
            }
            // Spaces inside the object (before its `}`) when it has one,
            // else after whatever the body was.
            let mut out = Vec::with_capacity(INJECTION_LEN + held.len());
            if held.first() == Some(&b'}') {
                out.resize(INJECTION_LEN, b' ');
                out.extend_from_slice(&held);
            } else {
                out.extend_from_slice(&held);
                out.resize(held.len() + INJECTION_LEN, b' ');
            }
            return (info, false, bytes::Bytes::from(out));
        }
        let mut out = Vec::with_capacity(INJECTED_FIELD.len() + held.len());
        out.extend_from_slice(INJECTED_FIELD);
        out.extend_from_slice(&held);
        (info, true, bytes::Bytes::from(out))
    }
}

const INJECTED_FIELD: &[u8] = br#","stream_options":{"include_usage":true}"#;

/// Where a trailing `}` followed only by whitespace starts, if the data ends so.
fn closing_tail(data: &[u8]) -> Option<usize> {
    let last = data.iter().rposition(|b| !b.is_ascii_whitespace())?;
    (data[last] == b'}').then_some(last)
}

#[cfg(test)]
mod streaming_injector_tests {
    use super::*;

    fn run(body: &[u8], split: usize) -> (RequestInfo, bool, Vec<u8>) {
        let mut inj = StreamingUsageInjector::new();
        let mut out = Vec::new();
        let split = split.min(body.len());
        for part in [&body[..split], &body[split..]] {
            out.extend_from_slice(&inj.push(bytes::Bytes::copy_from_slice(part)));
        }
        let (info, injected, tail) = inj.finish();
        out.extend_from_slice(&tail);
        (info, injected, out)
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
            br#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#,
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

    fn run_fixed(body: &[u8], split: usize) -> (bool, Vec<u8>) {
        let mut inj = StreamingUsageInjector::fixed_length();
        let mut out = Vec::new();
        let split = split.min(body.len());
        for part in [&body[..split], &body[split..]] {
            out.extend_from_slice(&inj.push(bytes::Bytes::copy_from_slice(part)));
        }
        let (_, injected, tail) = inj.finish();
        out.extend_from_slice(&tail);
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
    fn a_replayed_body_is_rewritten_like_the_first_attempt() {
        for fixed in [false, true] {
            let mut inj = if fixed {
                StreamingUsageInjector::fixed_length()
            } else {
                StreamingUsageInjector::new()
            };
            for body in [
                &br#"{"model":"gpt-4o","stream":true,"messages":[]}"#[..],
                br#"{"model":"gpt-4o","messages":[]}"#,
            ] {
                let mut attempts = Vec::new();
                for _ in 0..2 {
                    let mut out = Vec::new();
                    for part in body.chunks(5) {
                        out.extend_from_slice(&inj.push(bytes::Bytes::copy_from_slice(part)));
                    }
                    let (info, injected, tail) = inj.finish();
                    out.extend_from_slice(&tail);
                    attempts.push((info, injected, out));
                }
                assert_eq!(attempts[0], attempts[1], "fixed {fixed}");
                assert_eq!(attempts[0].0.model.as_deref(), Some("gpt-4o"));
            }
        }
    }

    #[test]
    fn a_chunk_that_does_not_end_the_object_is_forwarded_without_copy() {
        let mut inj = StreamingUsageInjector::new();
        let chunk = bytes::Bytes::from_static(br#"{"model":"gpt-4o","#);
        let out = inj.push(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }
}
