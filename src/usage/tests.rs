//! Properties that hold for every provider and format: chunking never
//! changes the result, encodings are transparent, caps make usage unknown,
//! and memory does not grow with the body.

use proptest::prelude::*;

use super::anthropic::tests::{message_stream, MESSAGE_JSON};
use super::decode::tests::{brotli, gzip, raw_deflate, zlib};
use super::gemini::tests::{array_stream, sse_stream, GENERATE_JSON};
use super::openai::tests::{chat_stream, responses_stream, CHAT_JSON};
use super::scan::{Scanner, CAPTURE_CAP, MAX_DEPTH};
use super::testing::{usage, Req};
use super::*;

const GEMINI_STREAM: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";

/// Every sample body with how it is requested.
fn samples() -> Vec<(Req<'static>, Vec<u8>)> {
    let gemini_sse = Req {
        query: Some("alt=sse"),
        ..Req::new(Provider::Gemini, GEMINI_STREAM, "text/event-stream")
    };
    vec![
        (
            Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json"),
            CHAT_JSON.as_bytes().to_vec(),
        ),
        (
            Req::new(
                Provider::OpenAi,
                "/v1/chat/completions",
                "text/event-stream",
            ),
            chat_stream(),
        ),
        (
            Req::new(Provider::OpenAi, "/v1/responses", "text/event-stream"),
            responses_stream(),
        ),
        (
            Req::new(Provider::Anthropic, "/v1/messages", "application/json"),
            MESSAGE_JSON.as_bytes().to_vec(),
        ),
        (
            Req::new(Provider::Anthropic, "/v1/messages", "text/event-stream"),
            message_stream(),
        ),
        (
            Req::new(
                Provider::Gemini,
                "/v1beta/models/gemini-2.5-pro:generateContent",
                "application/json",
            ),
            GENERATE_JSON.as_bytes().to_vec(),
        ),
        (gemini_sse, sse_stream()),
        (
            Req::new(Provider::Gemini, GEMINI_STREAM, "application/json"),
            array_stream(),
        ),
    ]
}

#[test]
fn every_sample_parses_to_complete_usage() {
    for (req, body) in samples() {
        let parsed = req.parse(&body);
        assert!(parsed.usage.is_some(), "{req:?}");
        assert!(parsed.model.is_some(), "{req:?}");
        assert!(parsed.complete, "{req:?}");
        assert_eq!(parsed.error, None, "{req:?}");
    }
}

#[test]
fn every_sample_gives_the_same_result_at_every_split_point_and_in_single_bytes() {
    for (req, body) in samples() {
        req.parse_everywhere(&body);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_chunking_of_any_sample_gives_the_same_result(sample in 0usize..8, mut cuts in proptest::collection::vec(any::<usize>(), 0..24)) {
        let (req, body) = samples().swap_remove(sample);
        for cut in &mut cuts {
            *cut %= body.len() + 1;
        }
        cuts.sort_unstable();
        prop_assert_eq!(req.parse_split(&body, &cuts), req.parse(&body));
    }

    #[test]
    fn any_chunking_of_a_compressed_sample_gives_the_same_result(sample in 0usize..8, encoding in 0usize..4, mut cuts in proptest::collection::vec(any::<usize>(), 0..16)) {
        let (req, plain) = samples().swap_remove(sample);
        let (name, body) = match encoding {
            0 => ("gzip", gzip(&plain)),
            1 => ("deflate", zlib(&plain)),
            2 => ("deflate", raw_deflate(&plain)),
            _ => ("br", brotli(&plain)),
        };
        let req = Req { content_encoding: Some(name), ..req };
        for cut in &mut cuts {
            *cut %= body.len() + 1;
        }
        cuts.sort_unstable();
        let expected = Req { content_encoding: None, ..req }.parse(&plain);
        prop_assert_eq!(req.parse_split(&body, &cuts), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), sample in 0usize..8) {
        let (req, _) = samples().swap_remove(sample);
        let whole = req.parse(&body);
        let halves = req.parse_split(&body, &[body.len() / 2]);
        prop_assert_eq!(whole, halves);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A parser's scanners and stream state come from its thread's free
    /// list: whatever the last response left in them (cut in a value or an
    /// event, followed by garbage, another provider's targets), the next
    /// response reads exactly as on new ones.
    #[test]
    fn a_response_reads_the_same_on_recycled_parts(
        earlier in 0usize..8,
        cut in any::<usize>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
        overlong_event_name in any::<bool>(),
        finished in any::<bool>(),
        later in 0usize..8,
    ) {
        let samples = samples();
        let (req, body) = &samples[later];
        recycle::forget::<Scanner>();
        recycle::forget::<SseState>();
        let on_new_parts = req.parse(body);
        prop_assert!(recycle::kept::<Scanner>() + recycle::kept::<SseState>() > 0);
        let (earlier_req, earlier_body) = &samples[earlier];
        let mut left = earlier_body[..cut % (earlier_body.len() + 1)].to_vec();
        left.extend_from_slice(&garbage);
        if overlong_event_name {
            left.extend_from_slice(b"\n\nevent: ");
            left.resize(left.len() + sse::EVENT_NAME_CAP + 1, b'x');
            left.extend_from_slice(b"\ndata: {}\n\n");
        }
        if finished {
            let _ = earlier_req.parse_split(&left, &[left.len() / 2]);
        } else {
            // A response abandoned mid-body (the client went away).
            let mut parser = earlier_req.parser();
            parser.push(&left);
        }
        prop_assert_eq!(req.parse(body), on_new_parts);
    }
}

#[test]
fn encoded_bodies_parse_like_plain_ones_in_one_byte_chunks() {
    for (req, plain) in samples() {
        let expected = req.parse(&plain);
        for (name, body) in [
            ("gzip", gzip(&plain)),
            ("deflate", zlib(&plain)),
            ("deflate", raw_deflate(&plain)),
            ("br", brotli(&plain)),
        ] {
            let req = Req {
                content_encoding: Some(name),
                ..req
            };
            let bytes: Vec<usize> = (1..body.len()).collect();
            assert_eq!(req.parse_split(&body, &bytes), expected, "{name} {req:?}");
        }
    }
}

#[test]
fn unsupported_or_corrupt_encodings_make_usage_unknown() {
    let req = Req {
        content_encoding: Some("zstd"),
        ..Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json")
    };
    assert_eq!(req.parse(CHAT_JSON.as_bytes()), ParsedResponse::default());
    let req = Req {
        content_encoding: Some("gzip"),
        ..req
    };
    let parsed = req.parse(CHAT_JSON.as_bytes());
    assert_eq!((parsed.usage, parsed.complete), (None, false));
}

#[test]
fn a_truncated_compressed_stream_keeps_usage_seen_so_far() {
    let plain = message_stream();
    let body = gzip(&plain);
    let req = Req {
        content_encoding: Some("gzip"),
        ..Req::new(Provider::Anthropic, "/v1/messages", "text/event-stream")
    };
    let parsed = req.parse(&body[..body.len() - 30]);
    assert!(!parsed.complete);
    assert_eq!(parsed.model.as_deref(), Some("claude-opus-4-1-20250805"));
    assert!(parsed.usage.is_some_and(|u| u.input_tokens == 4325));
}

#[test]
fn a_missing_content_type_is_sniffed_from_the_body() {
    for (req, body) in samples() {
        let sniffed = Req {
            content_type: None,
            ..req
        };
        assert_eq!(sniffed.parse_everywhere(&body), req.parse(&body), "{req:?}");
    }
    let req = Req {
        content_type: None,
        ..Req::new(Provider::OpenAi, "/v1/chat/completions", "")
    };
    assert_eq!(
        req.parse(b"upstream connect error"),
        ParsedResponse::default()
    );
    assert_eq!(req.parse(b""), ParsedResponse::default());
}

#[test]
fn multi_line_data_is_joined_before_parsing() {
    let body = b"event: message_delta\ndata: {\"type\":\"message_delta\",\ndata: \"usage\":{\"output_tokens\":7}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let req = Req::new(Provider::Anthropic, "/v1/messages", "text/event-stream");
    assert_eq!(
        req.parse_everywhere(body),
        ParsedResponse {
            usage: Some(usage(0, 0, 0, 0, 7, 0)),
            model: None,
            error: None,
            complete: true,
            background_response: None,
        }
    );
}

#[test]
fn an_over_cap_usage_value_makes_usage_unknown() {
    let padding = "1".repeat(CAPTURE_CAP);
    let body = format!(r#"{{"model":"gpt-4o","usage":{{"prompt_tokens":1,"pad":"{padding}"}}}}"#);
    let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json");
    let parsed = req.parse(body.as_bytes());
    assert_eq!(parsed.usage, None);
    assert_eq!(parsed.model.as_deref(), Some("gpt-4o"));
    let sse = Req::new(
        Provider::OpenAi,
        "/v1/chat/completions",
        "text/event-stream",
    );
    let parsed = sse.parse(format!("data: {body}\n\ndata: [DONE]\n\n").as_bytes());
    assert_eq!((parsed.usage, parsed.complete), (None, true));
}

#[test]
fn an_over_cap_event_name_makes_usage_unknown() {
    let mut body = format!("event: {}\n", "x".repeat(sse::EVENT_NAME_CAP + 1)).into_bytes();
    body.extend(message_stream());
    let req = Req::new(Provider::Anthropic, "/v1/messages", "text/event-stream");
    assert_eq!(req.parse(&body).usage, None);
}

#[test]
fn nesting_over_the_depth_cap_makes_usage_unknown() {
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    let body = format!(r#"{{"usage":{{"prompt_tokens":1}},"x":{deep}}}"#);
    let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json");
    assert_eq!(req.parse(body.as_bytes()).usage, None);
}

#[test]
fn long_error_messages_are_capped_on_a_char_boundary() {
    let message = "ü".repeat(400);
    let body = format!(r#"{{"error":{{"message":"{message}","type":"server_error"}}}}"#);
    let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json");
    let error = req.parse(body.as_bytes()).error.expect("error");
    assert_eq!(error.len(), ERROR_CAP);
    assert!(message.starts_with(&error));
}

/// Streams a ~50 MB embeddings response through `f` in 16 KiB chunks,
/// without ever holding it.
fn fifty_megabyte_embeddings(mut f: impl FnMut(&[u8])) -> u64 {
    let vector: String = (0..1536)
        .map(|i| {
            format!(
                "{}{:.9},",
                if i % 3 == 0 { "-" } else { "" },
                (i as f64) / 7919.0
            )
        })
        .collect();
    let vector = vector.trim_end_matches(',');
    let mut total = 0u64;
    let mut pending = br#"{"object":"list","data":["#.to_vec();
    let items = 2700;
    for i in 0..items {
        pending.extend(
            format!(r#"{{"object":"embedding","index":{i},"embedding":[{vector}]}}"#).bytes(),
        );
        if i + 1 < items {
            pending.push(b',');
        }
        while pending.len() >= 16 * 1024 {
            let rest = pending.split_off(16 * 1024);
            f(&pending);
            total += pending.len() as u64;
            pending = rest;
        }
    }
    pending.extend(br#"],"model":"text-embedding-3-small","usage":{"prompt_tokens":52000,"total_tokens":52000}}"#);
    f(&pending);
    total + pending.len() as u64
}

#[test]
fn a_fifty_megabyte_embeddings_body_is_parsed_in_bounded_memory() {
    let req = Req::new(Provider::OpenAi, "/v1/embeddings", "application/json");
    let mut parser = req.parser();
    let mut scanner = Scanner::new(&openai::TARGETS);
    let total = fifty_megabyte_embeddings(|chunk| {
        parser.push(chunk);
        scanner.push(chunk);
    });
    assert!(total > 45_000_000, "{total} bytes");
    let parsed = parser.finish();
    assert_eq!(parsed.usage, Some(usage(52000, 0, 0, 0, 0, 0)));
    assert_eq!(parsed.model.as_deref(), Some("text-embedding-3-small"));
    assert!(parsed.complete);
    scanner.end_of_input();
    assert!(
        scanner.peak_capture() <= 128,
        "captured at most {} bytes",
        scanner.peak_capture()
    );
}

#[test]
fn a_multi_megabyte_sse_event_is_streamed_not_buffered() {
    let text = "lorem ipsum \\\"quoted\\\" ".repeat(400_000);
    let completed = format!(
        r#"data: {{"type":"response.completed","response":{{"id":"resp_1","status":"completed","error":null,"model":"gpt-5","output":[{{"type":"message","content":[{{"type":"output_text","text":"{text}"}}]}}],"usage":{{"input_tokens":10,"input_tokens_details":{{"cached_tokens":0}},"output_tokens":2000000,"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":2000010}}}}}}"#
    );
    let body = format!("event: response.completed\n{completed}\n\n").into_bytes();
    assert!(body.len() > 8_000_000);
    let req = Req::new(Provider::OpenAi, "/v1/responses", "text/event-stream");
    let splits: Vec<usize> = (1..body.len()).step_by(16 * 1024).collect();
    let parsed = req.parse_split(&body, &splits);
    assert_eq!(parsed.usage, Some(usage(10, 0, 0, 0, 2_000_000, 0)));
    assert!(parsed.complete);
    // The capture the event needed was the usage object, not the event.
    let mut scanner = Scanner::new(&openai::TARGETS);
    scanner.push(&completed.as_bytes()["data: ".len()..]);
    scanner.end_of_input();
    assert_eq!(scanner.status(), scan::Status::Complete);
    assert!(scanner.peak_capture() < 512);
}

#[test]
fn json_content_types_are_recognised_without_regard_to_case_or_parameters() {
    use super::is_json_content_type;
    for yes in [
        "application/json",
        "Application/JSON; charset=utf-8",
        " application/json ;charset=UTF-8",
        "text/json",
        "application/problem+json",
        "application/vnd.api+JSON",
    ] {
        assert!(is_json_content_type(yes), "{yes}");
    }
    for no in [
        "text/plain",
        "application/x-ndjson",
        "json",
        "",
        "+json5",
        "text/event-stream",
    ] {
        assert!(!is_json_content_type(no), "{no}");
    }
}

#[test]
fn a_captured_string_reads_as_the_json_parser_reads_it() {
    let cases: &[&[u8]] = &[
        b"\"gpt-4o-2024-08-06\"",
        b"\"\"",
        b"\"caf\xc3\xa9\"",
        b"\"a\\\"b\"",
        b"\"tab\\tescape\"",
        b"\"\\u00e9\"",
        b"\"bad \xff utf8\"",
        b"\"control \x01 byte\"",
        b"\"",
        b"42",
        b"null",
        b"{\"model\":\"x\"}",
    ];
    for bytes in cases {
        for truncated in [false, true] {
            let capture = scan::Capture {
                bytes: bytes.to_vec(),
                truncated,
                start: 0,
                end: bytes.len() as u64,
            };
            let by_parser = match captured_json(Some(&capture)) {
                Ok(Some(Value::String(s))) => Some(s),
                _ => None,
            };
            assert_eq!(
                captured_string(Some(&capture)),
                by_parser,
                "{:?} truncated={truncated}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}

// ------------------------------------------------------------------ triage
//
// Triage changes what is scanned, never what is found: for well-formed
// streams, cut anywhere and chunked anyhow, a triaged parser and one that
// scans every event agree.

fn parse_both(req: &Req, body: &[u8], cuts: &[usize]) -> (ParsedResponse, ParsedResponse) {
    (
        testing::feed(req.parser(), body, cuts),
        testing::feed(req.untriaged_parser(), body, cuts),
    )
}

#[test]
fn every_sample_stream_cut_anywhere_reads_the_same_triaged_or_not() {
    for (req, body) in samples() {
        for end in 0..=body.len() {
            let (triaged, untriaged) = parse_both(&req, &body[..end], &[]);
            assert_eq!(triaged, untriaged, "{req:?} cut at {end}");
        }
    }
}

/// One event of a Gemini `alt=sse` stream, as the generator below makes them.
#[derive(Debug, Clone)]
enum GeminiEvent {
    Text {
        usage: Option<(u64, u64, u64)>,
    },
    /// Usage under another model version than the other events'. Not
    /// generated: a stream names one model, and the triage reads it only
    /// from the events it reads.
    TextOtherModel {
        usage: (u64, u64, u64),
    },
    Finish {
        usage: Option<(u64, u64, u64)>,
        /// `modelVersion`, when there is one.
        model: Option<&'static str>,
    },
    /// A last event whose `usageMetadata` holds none of the counts read.
    FinishUncounted,
    Blocked,
    Error,
    /// Text that spells the keys triage looks for, without usage.
    Decoy,
    /// An error object written without `data:` (between events).
    StrayError,
}

fn gemini_event() -> impl Strategy<Value = GeminiEvent> {
    let usage = proptest::option::of((0u64..5000, 0u64..5000, 0u64..500));
    prop_oneof![
        6 => usage.clone().prop_map(|usage| GeminiEvent::Text { usage }),
        2 => (usage, proptest::option::of(Just("gemini-2.5-flash")))
            .prop_map(|(usage, model)| GeminiEvent::Finish { usage, model }),
        1 => Just(GeminiEvent::FinishUncounted),
        1 => Just(GeminiEvent::Blocked),
        1 => Just(GeminiEvent::Error),
        2 => Just(GeminiEvent::Decoy),
        1 => Just(GeminiEvent::StrayError),
    ]
}

fn gemini_event_data(event: &GeminiEvent) -> String {
    let meta = |usage: &Option<(u64, u64, u64)>| match usage {
        Some((prompt, candidates, thoughts)) => format!(
            r#","usageMetadata":{{"promptTokenCount":{prompt},"candidatesTokenCount":{candidates},"totalTokenCount":{},"thoughtsTokenCount":{thoughts}}}"#,
            prompt + candidates + thoughts
        ),
        None => String::new(),
    };
    match event {
        GeminiEvent::Text { usage } => format!(
            r#"{{"candidates":[{{"content":{{"parts":[{{"text":"a \"usageMetadata\" Reason\" \"error\""}}],"role":"model"}},"index":0}}]{},"modelVersion":"gemini-2.5-flash","responseId":"r1"}}"#,
            meta(usage)
        ),
        GeminiEvent::TextOtherModel { usage } => format!(
            r#"{{"candidates":[{{"content":{{"parts":[{{"text":"b"}}],"role":"model"}},"index":0}}]{},"modelVersion":"gemini-2.5-flash-002","responseId":"r1"}}"#,
            meta(&Some(*usage))
        ),
        GeminiEvent::Finish { usage, model } => format!(
            r#"{{"candidates":[{{"content":{{"parts":[{{"text":"."}}],"role":"model"}},"finishReason":"STOP","index":0}}]{}{},"responseId":"r1"}}"#,
            meta(usage),
            model.map_or(String::new(), |m| format!(r#","modelVersion":"{m}""#)),
        ),
        GeminiEvent::FinishUncounted => {
            r#"{"candidates":[{"content":{"parts":[{"text":"."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"totalTokenCount":7},"modelVersion":"gemini-2.5-flash"}"#.to_string()
        }
        GeminiEvent::Blocked => {
            r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9},"modelVersion":"gemini-2.5-flash"}"#.to_string()
        }
        GeminiEvent::Error => {
            r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#
                .to_string()
        }
        GeminiEvent::Decoy => {
            r#"{"candidates":[{"content":{"parts":[{"text":"usageMetadata"},{"functionCall":{"name":"f","args":{"usageMetadata":"none"}}}],"role":"model"},"index":0}],"modelVersion":"gemini-2.5-flash"}"#.to_string()
        }
        GeminiEvent::StrayError => {
            r#"{"error":{"code":500,"message":"Internal error mid-stream","status":"INTERNAL"}}"#
                .to_string()
        }
    }
}

/// A Gemini `alt=sse` body: each event as `data:`, a stray error as its own
/// line.
fn gemini_body(events: &[GeminiEvent], crlf_lines: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        let data = gemini_event_data(event);
        match event {
            GeminiEvent::StrayError => out.extend(format!("{data}\n").into_bytes()),
            _ => out.extend(sse_body(&[(None, data)], false)),
        }
    }
    if crlf_lines {
        testing::crlf(&out)
    } else {
        out
    }
}

/// The events of a Responses stream that carry the output, in the order
/// the API sends them, `deltas` text deltas in the middle.
fn responses_output_events(deltas: usize) -> Vec<(&'static str, String)> {
    let item = r#""item_id":"msg_1","output_index":0,"content_index":0"#;
    let mut events = vec![
        (
            "response.output_item.added",
            r#"{"type":"response.output_item.added","output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}}"#.to_string(),
        ),
        (
            "response.content_part.added",
            format!(r#"{{"type":"response.content_part.added",{item},"part":{{"type":"output_text","text":"","annotations":[]}}}}"#),
        ),
    ];
    for i in 0..deltas {
        events.push((
            "response.output_text.delta",
            format!(r#"{{"type":"response.output_text.delta",{item},"delta":"w{i} \"usage\":{{ \"error\""}}"#),
        ));
    }
    events.push((
        "response.output_text.done",
        format!(r#"{{"type":"response.output_text.done",{item},"text":"all"}}"#),
    ));
    events.push((
        "response.output_item.done",
        r#"{"type":"response.output_item.done","output_index":0,"item":{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"all","annotations":[]}]}}"#.to_string(),
    ));
    events
}

/// The lifecycle event that ends a Responses stream, by number.
fn responses_end(which: usize, input: u64, output: u64) -> (&'static str, String) {
    let usage = format!(
        r#"{{"input_tokens":{input},"input_tokens_details":{{"cached_tokens":0}},"output_tokens":{output},"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":{}}}"#,
        input + output
    );
    match which % 4 {
        0 => ("response.completed", format!(r#"{{"type":"response.completed","response":{{"id":"resp_1","status":"completed","error":null,"model":"gpt-4.1","output":[],"usage":{usage}}}}}"#)),
        1 => ("response.incomplete", format!(r#"{{"type":"response.incomplete","response":{{"id":"resp_1","status":"incomplete","error":null,"incomplete_details":{{"reason":"max_output_tokens"}},"model":"gpt-4.1","usage":{usage}}}}}"#)),
        2 => ("response.failed", r#"{"type":"response.failed","response":{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"The model failed."},"model":"gpt-4.1","usage":null}}"#.to_string()),
        _ => ("error", r#"{"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null}"#.to_string()),
    }
}

/// Joins events as SSE (named ones with an `event:` line).
fn sse_body(events: &[(Option<&str>, String)], crlf_lines: bool) -> Vec<u8> {
    let mut out = String::new();
    for (name, data) in events {
        if let Some(name) = name {
            out += &format!("event: {name}\n");
        }
        out += &format!("data: {data}\n\n");
    }
    let out = out.into_bytes();
    if crlf_lines {
        testing::crlf(&out)
    } else {
        out
    }
}

fn cut_and_chunk(len: usize, end: Option<usize>, mut cuts: Vec<usize>) -> (usize, Vec<usize>) {
    let end = end.map_or(len, |end| end % (len + 1));
    for cut in &mut cuts {
        *cut %= end + 1;
    }
    cuts.sort_unstable();
    (end, cuts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn gemini_streams_read_the_same_triaged_or_not(
        events in proptest::collection::vec(gemini_event(), 0..10),
        crlf_lines in any::<bool>(),
        end in proptest::option::of(any::<usize>()),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let req = Req {
            query: Some("alt=sse"),
            ..Req::new(Provider::Gemini, GEMINI_STREAM, "text/event-stream")
        };
        let body = gemini_body(&events, crlf_lines);
        let (end, cuts) = cut_and_chunk(body.len(), end, cuts);
        let (triaged, untriaged) = parse_both(&req, &body[..end], &cuts);
        prop_assert_eq!(triaged, untriaged);
    }

    #[test]
    fn responses_streams_read_the_same_triaged_or_not(
        with_created in any::<bool>(),
        deltas in 0usize..8,
        ending in 0usize..4,
        input in 0u64..100_000,
        output in 0u64..10_000,
        crlf_lines in any::<bool>(),
        end in proptest::option::of(any::<usize>()),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let req = Req::new(Provider::OpenAi, "/v1/responses", "text/event-stream");
        let created = r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress","error":null,"model":"gpt-4.1","output":[],"usage":null}}"#;
        let in_progress = r#"{"type":"response.in_progress","response":{"id":"resp_1","status":"in_progress","error":null,"model":"gpt-4.1","output":[],"usage":null}}"#;
        let mut events = Vec::new();
        if with_created {
            events.push((Some("response.created"), created.to_string()));
        }
        events.push((Some("response.in_progress"), in_progress.to_string()));
        events.push((
            Some("response.web_search_call.searching"),
            r#"{"type":"response.web_search_call.searching","output_index":0,"item_id":"ws_1","sequence_number":3}"#.to_string(),
        ));
        events.extend(responses_output_events(deltas).into_iter().map(|(name, data)| (Some(name), data)));
        let (name, data) = responses_end(ending, input, output);
        events.push((Some(name), data));
        let body = sse_body(&events, crlf_lines);
        let (end, cuts) = cut_and_chunk(body.len(), end, cuts);
        let (triaged, untriaged) = parse_both(&req, &body[..end], &cuts);
        prop_assert_eq!(triaged, untriaged);
    }
}

/// An error chunk that names itself only by `"type":"error"` is still read
/// in a triaged chat stream.
#[test]
fn a_chat_error_event_without_an_error_key_is_scanned() {
    let req = Req::new(
        Provider::OpenAi,
        "/v1/chat/completions",
        "text/event-stream",
    );
    let body = testing::lf(&[
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
        "",
        r#"data: {"type":"error","code":"server_error","message":"upstream overloaded","param":null}"#,
        "",
    ]);
    let parsed = req.parse_everywhere(&body);
    assert_eq!(parsed.error.as_deref(), Some("upstream overloaded"));
    assert!(parsed.complete);
    assert_eq!(parsed, req.untriaged_parser().finish_with(&body));
}

/// The work triage saves is real: a skipped event is not parsed, so one
/// that is not even JSON does not make the usage unknown (as with chat
/// content chunks).
#[test]
fn gemini_and_responses_content_events_are_not_parsed() {
    let gemini = Req {
        query: Some("alt=sse"),
        ..Req::new(Provider::Gemini, GEMINI_STREAM, "text/event-stream")
    };
    let first = gemini_event_data(&GeminiEvent::Text {
        usage: Some((8, 1, 0)),
    });
    let middle = gemini_event_data(&GeminiEvent::Text {
        usage: Some((8, 5, 0)),
    });
    let last = gemini_event_data(&GeminiEvent::Finish {
        usage: Some((8, 120, 300)),
        model: Some("gemini-2.5-flash"),
    });
    for broken in [
        r#"{"candidates":[}"#,
        r#"{"candidates":[],"usageMetadata":{"promptTokenCount":8]}"#,
    ] {
        // The broken one with usage is replaced by the next one before it
        // is read: by a later event with usage, or by the last one, which
        // has counts and a model.
        for events in [
            [&first, broken, &middle, &last],
            [&first, &middle, broken, &last],
        ] {
            let events = events.map(|data| (None, data.to_string()));
            let body = sse_body(&events, true);
            let parsed = gemini.parse_everywhere(&body);
            assert_eq!(
                parsed.usage,
                Some(usage(8, 0, 0, 0, 420, 300)),
                "{events:?}"
            );
            assert!(parsed.complete);
            assert_eq!(gemini.untriaged_parser().finish_with(&body).usage, None);
        }
    }

    let created = r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress","error":null,"model":"gpt-4.1","usage":null}}"#;
    responses_read_past_a_broken_event(&[
        (Some("response.created"), created.to_string()),
        (
            Some("response.output_text.delta"),
            r#"{"type":"response.output_text.delta","delta":"x"]"#.to_string(),
        ),
    ]);
}

/// A Responses stream of `events` and a `response.completed` that names the
/// model: triaged, the usage is read, cut anywhere; scanning every event,
/// the broken one among `events` makes it unknown.
fn responses_read_past_a_broken_event(events: &[(Option<&str>, String)]) {
    let responses = Req::new(Provider::OpenAi, "/v1/responses", "text/event-stream");
    let mut events = events.to_vec();
    let (name, data) = responses_end(0, 30, 4);
    events.push((Some(name), data));
    let body = sse_body(&events, false);
    let parsed = responses.parse_everywhere(&body);
    assert_eq!(parsed.usage, Some(usage(30, 0, 0, 0, 4, 0)));
    assert_eq!(parsed.model.as_deref(), Some("gpt-4.1"));
    assert!(parsed.complete);
    assert_eq!(responses.untriaged_parser().finish_with(&body).usage, None);
}

/// OpenAI's first event matters only for the model, which the usage chunk
/// (chat) or the terminal event (responses) names too: it is read only when
/// no later scanned event names the model. A first event that is not even
/// JSON then leaves the usage known, as a broken content chunk does.
#[test]
fn an_openai_first_event_is_read_for_the_model_only_if_no_scanned_event_names_it() {
    let chat = Req::new(
        Provider::OpenAi,
        "/v1/chat/completions",
        "text/event-stream",
    );
    let content = r#"{"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}"#;
    let usage_chunk = |model: &str| {
        format!(
            r#"{{"id":"c1","object":"chat.completion.chunk",{model}"choices":[],"usage":{{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}}}"#
        )
    };
    let chat_body = |first: &str, last: Option<String>| {
        let mut events = vec![(None, first.to_string()), (None, content.to_string())];
        events.extend(last.map(|last| (None, last)));
        events.push((None, "[DONE]".to_string()));
        sse_body(&events, false)
    };

    // Broken first chunk, model named by the usage chunk: never read.
    let broken = r#"{"id":"c1","model":"gpt-4o-2024-08-06","choices":[}"#;
    let body = chat_body(broken, Some(usage_chunk(r#""model":"gpt-4o-2024-08-06","#)));
    let parsed = chat.parse_everywhere(&body);
    assert_eq!(parsed.usage, Some(usage(9, 0, 0, 0, 2, 0)));
    assert_eq!(parsed.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert!(parsed.complete);
    assert_eq!(chat.untriaged_parser().finish_with(&body).usage, None);

    // A usage chunk without a model: the first chunk is read at the end.
    let first = r#"{"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}"#;
    let body = chat_body(first, Some(usage_chunk("")));
    let parsed = chat.parse_everywhere(&body);
    assert_eq!(parsed.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(parsed.usage, Some(usage(9, 0, 0, 0, 2, 0)));
    assert_eq!(parsed, chat.untriaged_parser().finish_with(&body));

    // No usage chunk at all: the first chunk is read at the end.
    let body = chat_body(first, None);
    let parsed = chat.parse_everywhere(&body);
    assert_eq!(parsed.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(parsed, chat.untriaged_parser().finish_with(&body));

    // Responses: a broken `response.created`, the model named by the end.
    responses_read_past_a_broken_event(&[(
        Some("response.created"),
        r#"{"type":"response.created","response":{"id":"resp_1","model":"gpt-4.1","usage":null]}"#
            .to_string(),
    )]);
}

/// A chat chunk that ends with `"usage":null` (the upstream adds it to every
/// chunk when usage is asked for) is not searched for a usage object: an
/// earlier one in it is replaced, as a document would replace it. It is
/// still read for an error.
#[test]
fn a_chat_chunk_ending_in_null_usage_is_read_only_for_an_error() {
    let chat = Req::new(
        Provider::OpenAi,
        "/v1/chat/completions",
        "text/event-stream",
    );
    let first = r#"{"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}"#;
    let replaced = r#"{"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":1},"choices":[{"index":0,"delta":{"content":"Hi"}}], "usage" : null }"#;
    let failed = r#"{"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[],"error":{"message":"overloaded"},"usage":null}"#;
    let usage_chunk = r#"{"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
    let body = |events: &[&str]| {
        let mut events: Vec<(Option<&str>, String)> =
            events.iter().map(|e| (None, e.to_string())).collect();
        events.push((None, "[DONE]".to_string()));
        sse_body(&events, false)
    };
    for (events, usage_seen, error) in [
        (vec![first, replaced], None, None),
        (
            vec![first, replaced, usage_chunk],
            Some(usage(9, 0, 0, 0, 2, 0)),
            None,
        ),
        (vec![first, failed], None, Some("overloaded")),
    ] {
        let body = body(&events);
        let parsed = chat.parse_everywhere(&body);
        assert_eq!(parsed.usage, usage_seen, "{events:?}");
        assert_eq!(parsed.error.as_deref(), error, "{events:?}");
        assert_eq!(
            parsed,
            chat.untriaged_parser().finish_with(&body),
            "{events:?}"
        );
    }
}

/// The kept Gemini event (the last with usage) is dropped unread only when
/// the event scanned after it sets both what it could: counts and a model.
/// Otherwise it is read first, as in an untriaged parse.
#[test]
fn a_gemini_last_event_replaces_the_kept_one_only_with_counts_and_a_model() {
    let req = Req {
        query: Some("alt=sse"),
        ..Req::new(Provider::Gemini, GEMINI_STREAM, "text/event-stream")
    };
    let first = GeminiEvent::Text {
        usage: Some((8, 1, 0)),
    };
    let kept = GeminiEvent::TextOtherModel { usage: (8, 40, 7) };
    let cases = [
        // Counts and a model: the kept event's usage and model are replaced.
        (
            GeminiEvent::Finish {
                usage: Some((8, 120, 300)),
                model: Some("gemini-2.5-flash"),
            },
            Some(usage(8, 0, 0, 0, 420, 300)),
            "gemini-2.5-flash",
        ),
        // No model: the kept event's stands.
        (
            GeminiEvent::Finish {
                usage: Some((8, 120, 300)),
                model: None,
            },
            Some(usage(8, 0, 0, 0, 420, 300)),
            "gemini-2.5-flash-002",
        ),
        // No usage, or usage without counts: the kept event's counts stand.
        (
            GeminiEvent::Finish {
                usage: None,
                model: Some("gemini-2.5-flash"),
            },
            Some(usage(8, 0, 0, 0, 47, 7)),
            "gemini-2.5-flash",
        ),
        (
            GeminiEvent::FinishUncounted,
            Some(usage(8, 0, 0, 0, 47, 7)),
            "gemini-2.5-flash",
        ),
    ];
    for (last, expected_usage, expected_model) in cases {
        let events = [&first, &kept, &last].map(|e| (None, gemini_event_data(e)));
        let body = sse_body(&events, true);
        let parsed = req.parse_everywhere(&body);
        assert_eq!(parsed.usage, expected_usage, "{last:?}");
        assert_eq!(parsed.model.as_deref(), Some(expected_model), "{last:?}");
        assert!(parsed.complete);
        assert_eq!(
            parsed,
            req.untriaged_parser().finish_with(&body),
            "{last:?}"
        );
    }
}

/// A Gemini event longer than the triage buffer is scanned as it comes;
/// the event kept before it is read first, so the later usage still wins.
#[test]
fn a_gemini_event_longer_than_the_triage_buffer_comes_after_the_kept_one() {
    let req = Req {
        query: Some("alt=sse"),
        ..Req::new(Provider::Gemini, GEMINI_STREAM, "text/event-stream")
    };
    let padding = "x".repeat(TRIAGE_CAP + 10);
    let events = [
        (
            None,
            gemini_event_data(&GeminiEvent::Text {
                usage: Some((8, 1, 0)),
            }),
        ),
        (
            None,
            gemini_event_data(&GeminiEvent::Text {
                usage: Some((8, 2, 0)),
            }),
        ),
        (
            None,
            format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{padding}"}}]}},"index":0}}],"usageMetadata":{{"promptTokenCount":8,"candidatesTokenCount":3}},"modelVersion":"gemini-2.5-flash"}}"#
            ),
        ),
        (None, gemini_event_data(&GeminiEvent::Text { usage: None })),
    ];
    let body = sse_body(&events, false);
    let expected = req.untriaged_parser().finish_with(&body);
    assert_eq!(expected.usage, Some(usage(8, 0, 0, 0, 3, 0)));
    for size in [4096, TRIAGE_CAP, body.len()] {
        let mut parser = req.parser();
        for piece in body.chunks(size) {
            parser.push(piece);
        }
        assert_eq!(parser.finish(), expected, "chunks of {size}");
    }
}
