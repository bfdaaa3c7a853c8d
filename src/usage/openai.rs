//! OpenAI usage: chat completions, completions, embeddings, and responses.
//!
//! One extractor serves every endpoint, because the `usage` object says which
//! shape it has: `prompt_tokens` / `completion_tokens` (chat, completions,
//! embeddings, and OpenAI-compatible servers on unknown paths) or
//! `input_tokens` / `output_tokens` (responses). Where it lives:
//!
//! - JSON bodies: top-level `usage` and `model`.
//! - Chat streams: every chunk carries `"usage": null` except the final one
//!   (`"choices": []`, present when `stream_options.include_usage` is true);
//!   the stream ends with `data: [DONE]`. A chunk with `error` is an in-band
//!   error.
//! - Responses streams: `response.usage` / `response.model` on
//!   `response.completed` (or `response.incomplete` / `response.failed`),
//!   which end the stream; `response.failed` carries `response.error`, and an
//!   `error` event its own top-level `message`.
//!
//! The last non-null `usage` wins.

use super::counts::{captured_counts, CountPaths, Counts};
use super::scan::{Scanner, Seg::Item, Seg::Key, Target, Targets};
use super::slot::{BACKGROUND, ERROR, MESSAGE, MODEL, RESPONSE_ID, TYPE, USAGE};
use super::{captured_string, error_message, target, Findings, Usage};

pub(super) static TARGETS: Targets = Targets::new(&BILLED);

/// For the response to a GET, or to a request that asked for
/// `"background": true`: also the `background` flag, which says whether a
/// retrieved response is billed (see `Answers::Retrieval`), and its id (a
/// stream event's `response.id`, a response object's `id`), by which a
/// background response is claimed as billed by the first request that
/// carries its usage (`ParsedResponse::background_response`). Every
/// target costs the scan of every body, so other requests go without.
pub(super) static BACKGROUND_TARGETS: Targets = Targets::new(&WITH_BACKGROUND);

const WITH_BACKGROUND: [Target; BILLED.len() + 4] = {
    let mut all = [BILLED[0]; BILLED.len() + 4];
    let mut t = 0;
    while t < BILLED.len() {
        all[t] = BILLED[t];
        t += 1;
    }
    all[t] = target(&[Key("background")], BACKGROUND);
    all[t + 1] = target(&[Key("response"), Key("background")], BACKGROUND);
    all[t + 2] = target(&[Key("response"), Key("id")], RESPONSE_ID);
    all[t + 3] = target(&[Key("id")], RESPONSE_ID);
    all
};

const BILLED: [Target; 9] = [
    target(&[Key("type")], TYPE),
    target(&[Key("usage")], USAGE),
    target(&[Key("response"), Key("usage")], USAGE),
    target(&[Key("model")], MODEL),
    target(&[Key("response"), Key("model")], MODEL),
    target(&[Key("error")], ERROR),
    target(&[Key("response"), Key("error")], ERROR),
    target(&[Key("message")], MESSAGE),
    // Some OpenAI-compatible servers stream a bare array of chunks.
    target(&[Item, Key("usage")], USAGE),
];

#[derive(Debug, Default)]
pub(super) struct OpenAiUsage {
    usage: Option<Usage>,
}

impl OpenAiUsage {
    pub(super) fn value(&mut self, kind: &str, doc: &Scanner, findings: &mut Findings) {
        match captured_counts(doc.capture(USAGE), &USAGE_PATHS) {
            Ok(Some(counts)) => {
                if let Some(usage) = usage_from(&counts) {
                    self.usage = Some(usage);
                }
            }
            Ok(None) => {}
            Err(()) => findings.unknown = true,
        }
        findings.note_model(doc.capture(MODEL));
        if doc.capture(BACKGROUND).is_some_and(|c| c.bytes == b"true") {
            findings.background = true;
            if let Some(id) = captured_string(doc.capture(RESPONSE_ID)) {
                findings.response_id = Some(id);
            }
        }
        let mut failed = findings.note_error(error_message(doc.capture(ERROR)));
        match kind {
            kind if is_terminal_event(kind.as_bytes()) => findings.terminal = true,
            "error" => {
                failed |= findings.note_error(error_message(doc.capture(MESSAGE)));
                findings.terminal = true;
            }
            _ => {}
        }
        if failed {
            findings.terminal = true;
        }
    }

    pub(super) fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// The Responses stream events that end it with the response's outcome.
pub(super) fn is_terminal_event(kind: &[u8]) -> bool {
    matches!(
        kind,
        b"response.completed" | b"response.incomplete" | b"response.failed"
    )
}

/// The counts read from a usage object: the Responses API's names, then
/// Chat Completions'.
const USAGE_PATHS: CountPaths<10> = CountPaths::new([
    &["input_tokens"],
    &["input_tokens_details", "cached_tokens"],
    &["input_tokens_details", "cache_write_tokens"],
    &["output_tokens"],
    &["output_tokens_details", "reasoning_tokens"],
    &["prompt_tokens"],
    &["prompt_tokens_details", "cached_tokens"],
    &["prompt_tokens_details", "cache_write_tokens"],
    &["completion_tokens"],
    &["completion_tokens_details", "reasoning_tokens"],
]);

/// Reads either usage shape; `None` when the object has neither. Some
/// OpenAI-compatible relays send both, one of them all zeros (new-api's chat
/// usage carries `"input_tokens":0,"output_tokens":0`): the shape with counts
/// wins, the Responses one when both have them.
fn usage_from(counts: &Counts<10>) -> Option<Usage> {
    let [input, cached, cache_write, output, reasoning, prompt, prompt_cached, prompt_cache_write, completion, completion_reasoning] =
        counts.values;
    let responses = input.is_some() || output.is_some();
    let chat = prompt.is_some() || completion.is_some();
    let counted = |a: Option<u64>, b: Option<u64>| a.unwrap_or(0) + b.unwrap_or(0) > 0;
    if responses && (!chat || counted(input, output) || !counted(prompt, completion)) {
        Some(Usage {
            input_tokens: input.unwrap_or(0),
            cached_tokens: cached.unwrap_or(0),
            cache_creation_tokens: cache_write.unwrap_or(0),
            cache_creation_1h_tokens: 0,
            output_tokens: output.unwrap_or(0),
            reasoning_tokens: reasoning.unwrap_or(0),
        })
    } else if chat {
        Some(Usage {
            input_tokens: prompt.unwrap_or(0),
            cached_tokens: prompt_cached.unwrap_or(0),
            cache_creation_tokens: prompt_cache_write.unwrap_or(0),
            cache_creation_1h_tokens: 0,
            output_tokens: completion.unwrap_or(0),
            reasoning_tokens: completion_reasoning.unwrap_or(0),
        })
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testing::{crlf, lf, usage, Req};
    use super::super::{Answers, ParsedResponse, UsageParser};
    use crate::provider::Provider;

    pub(crate) const CHAT_JSON: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "o4-mini-2025-04-16",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Hello! \"usage\": {\"prompt_tokens\": 999} is just text \\",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": { "cached_tokens": 1920, "cache_write_tokens": 64, "audio_tokens": 0 },
    "completion_tokens_details": { "reasoning_tokens": 192, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 }
  },
  "service_tier": "default",
  "system_fingerprint": null
}"#;

    pub(crate) fn chat_stream() -> Vec<u8> {
        lf(&[
            r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            "",
            r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":"Hello \"usage\":{} \n"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            "",
            ": keep-alive",
            "",
            r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
            "",
            r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":1200,"completion_tokens":300,"total_tokens":1500,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":128,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
            "",
            "data: [DONE]",
            "",
        ])
    }

    pub(crate) fn responses_stream() -> Vec<u8> {
        lf(&[
            "event: response.created",
            r#"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"in_progress","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-5-2025-08-07","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":"medium","summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null,"metadata":{}}}"#,
            "",
            "event: response.output_text.delta",
            r#"data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":1,"content_index":0,"delta":"Hi"}"#,
            "",
            "event: response.completed",
            r#"data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"completed","error":null,"incomplete_details":null,"model":"gpt-5-2025-08-07","output":[{"id":"rs_1","type":"reasoning","summary":[]},{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there!","annotations":[]}]}],"usage":{"input_tokens":3037,"input_tokens_details":{"cached_tokens":2944},"output_tokens":411,"output_tokens_details":{"reasoning_tokens":384},"total_tokens":3448},"user":null,"metadata":{}}}"#,
            "",
        ])
    }

    fn chat_sse() -> Req<'static> {
        Req::new(
            Provider::OpenAi,
            "/v1/chat/completions",
            "text/event-stream",
        )
    }

    #[test]
    fn chat_completion_json_reports_cache_reads_writes_and_reasoning() {
        let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json");
        let parsed = req.parse_everywhere(CHAT_JSON.as_bytes());
        assert_eq!(
            parsed,
            ParsedResponse {
                usage: Some(usage(2006, 1920, 64, 0, 300, 192)),
                model: Some("o4-mini-2025-04-16".into()),
                error: None,
                complete: true,
                background_response: None,
            }
        );
    }

    /// A relay that fills both shapes, one with zeros, is billed by the one
    /// with counts, in JSON and in the stream's last chunk.
    #[test]
    fn a_usage_of_both_shapes_is_read_from_the_one_with_counts() {
        let chat_with_zero_responses = r#"{"prompt_tokens":940,"completion_tokens":56,"total_tokens":996,"prompt_tokens_details":{"cached_tokens":12},"input_tokens":0,"output_tokens":0,"input_tokens_details":null}"#;
        let responses_with_zero_chat = r#"{"input_tokens":940,"output_tokens":56,"input_tokens_details":{"cached_tokens":12},"prompt_tokens":0,"completion_tokens":0}"#;
        let both_counted = r#"{"input_tokens":940,"output_tokens":56,"input_tokens_details":{"cached_tokens":12},"prompt_tokens":1,"completion_tokens":2}"#;
        for usage_json in [
            chat_with_zero_responses,
            responses_with_zero_chat,
            both_counted,
        ] {
            let body = format!(r#"{{"id":"c","model":"gpt-4o","usage":{usage_json}}}"#);
            let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json");
            let parsed = req.parse_everywhere(body.as_bytes());
            assert_eq!(
                parsed.usage,
                Some(usage(940, 12, 0, 0, 56, 0)),
                "{usage_json}"
            );
            let stream = lf(&[
                r#"data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}],"usage":null}"#,
                "",
                &format!(
                    r#"data: {{"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[],"usage":{usage_json}}}"#
                ),
                "",
                "data: [DONE]",
                "",
            ]);
            let parsed = chat_sse().parse_everywhere(&stream);
            assert_eq!(
                parsed.usage,
                Some(usage(940, 12, 0, 0, 56, 0)),
                "{usage_json}"
            );
        }
        // All zeros is a usage of zero, not none.
        let body = r#"{"id":"c","model":"gpt-4o","usage":{"prompt_tokens":0,"completion_tokens":0,"input_tokens":0,"output_tokens":0}}"#;
        let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json");
        assert_eq!(
            req.parse_everywhere(body.as_bytes()).usage,
            Some(usage(0, 0, 0, 0, 0, 0))
        );
    }

    #[test]
    fn chat_stream_takes_usage_from_the_final_chunk_and_completes_on_done() {
        let parsed = chat_sse().parse_everywhere(&chat_stream());
        assert_eq!(
            parsed,
            ParsedResponse {
                usage: Some(usage(1200, 1024, 0, 0, 300, 128)),
                model: Some("gpt-4o-mini-2024-07-18".into()),
                error: None,
                complete: true,
                background_response: None,
            }
        );
    }

    #[test]
    fn chat_stream_with_crlf_line_ends_parses_the_same() {
        let body = crlf(&chat_stream());
        assert_eq!(
            chat_sse().parse_everywhere(&body),
            chat_sse().parse(&chat_stream())
        );
    }

    #[test]
    fn chat_stream_without_include_usage_has_unknown_usage_but_completes() {
        let body = lf(&[
            r#"data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}"#,
            "",
            "data: [DONE]",
            "",
        ]);
        let parsed = chat_sse().parse(&body);
        assert_eq!(parsed.usage, None);
        assert!(parsed.complete);
        assert_eq!(parsed.model.as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn chat_stream_cut_before_done_is_incomplete() {
        let body = chat_stream();
        let cut = body.len() - "data: [DONE]\n\n".len();
        let parsed = chat_sse().parse(&body[..cut]);
        assert!(!parsed.complete);
        assert_eq!(parsed.usage, Some(usage(1200, 1024, 0, 0, 300, 128)));
        let parsed = chat_sse().parse(&body[..cut - 40]);
        assert_eq!((parsed.usage, parsed.complete), (None, false));
    }

    #[test]
    fn chat_stream_in_band_error_is_reported_and_ends_the_stream() {
        let body = lf(&[
            r#"data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}"#,
            "",
            r#"data: {"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
            "",
        ]);
        let parsed = chat_sse().parse_everywhere(&body);
        assert_eq!(
            parsed.error.as_deref(),
            Some("The server had an error while processing your request. Sorry about that!")
        );
        assert!(parsed.complete);
        assert_eq!(parsed.usage, None);
    }

    /// Triage: once the model is known, content chunks are framed but not
    /// parsed, so one that is not even JSON does not hide the usage chunk.
    #[test]
    fn chat_content_chunks_after_the_model_are_not_parsed() {
        let stream = chat_stream();
        let first_end = stream.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
        let mut body = stream[..first_end].to_vec();
        body.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}]]}\n\n");
        body.extend_from_slice(&stream[first_end..]);
        assert_eq!(
            chat_sse().parse_everywhere(&body),
            chat_sse().parse(&stream)
        );
    }

    /// Triage keeps every event that can matter: a usage chunk longer than
    /// the triage buffer is scanned as it comes.
    #[test]
    fn a_usage_chunk_longer_than_the_triage_buffer_is_still_read() {
        let padding = "x".repeat(super::super::TRIAGE_CAP + 10);
        let body = lf(&[
            r#"data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}"#,
            "",
            &format!(
                r#"data: {{"id":"c","object":"chat.completion.chunk","model":"gpt-4o","system_fingerprint":"{padding}","choices":[],"usage":{{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}}}"#
            ),
            "",
            "data: [DONE]",
            "",
        ]);
        let parsed = chat_sse().parse(&body);
        assert_eq!(parsed.usage, Some(usage(7, 0, 0, 0, 3, 0)));
        assert!(parsed.complete);
        let mut p = chat_sse().parser();
        for piece in body.chunks(4096) {
            p.push(piece);
        }
        assert_eq!(p.finish(), parsed);
    }

    /// A stream cut inside `data: [DONE]` lost only its end marker: the
    /// usage before it stands (also where no triage applies).
    #[test]
    fn a_stream_cut_inside_the_done_marker_keeps_its_usage() {
        let stream = chat_stream();
        let cut = stream.len() - "NE]\n\n".len();
        assert!(stream[..cut].ends_with(b"data: [DO"));
        for path in ["/v1/chat/completions", "/v1/completions"] {
            let parsed =
                Req::new(Provider::OpenAi, path, "text/event-stream").parse(&stream[..cut]);
            assert_eq!(parsed.usage, chat_sse().parse(&stream).usage, "{path}");
            assert!(parsed.usage.is_some());
            assert!(!parsed.complete, "{path}");
        }
    }

    /// A malformed event that may hold usage is read, and makes the usage
    /// unknown. (One that cannot, such as a content chunk, is skipped
    /// unread: see `usage::tests`.)
    #[test]
    fn chat_stream_with_a_malformed_event_has_unknown_usage() {
        let mut body = b"data: {\"choices\":[},\"usage\":{\"prompt_tokens\":3}}\n\n".to_vec();
        body.extend(chat_stream());
        let parsed = chat_sse().parse(&body);
        assert_eq!(parsed.usage, None);
        assert!(parsed.complete);
    }

    #[test]
    fn responses_json_reports_cached_and_reasoning_tokens() {
        let body = r#"{"id":"resp_1","object":"response","created_at":1741476542,"status":"completed","error":null,"incomplete_details":null,"model":"o3-2025-04-16","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"ok","annotations":[]}]}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":12},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":123}}"#;
        let req = Req::new(Provider::OpenAi, "/v1/responses", "application/json");
        assert_eq!(
            req.parse_everywhere(body.as_bytes()),
            ParsedResponse {
                usage: Some(usage(36, 12, 0, 0, 87, 64)),
                model: Some("o3-2025-04-16".into()),
                error: None,
                complete: true,
                background_response: None,
            }
        );
    }

    /// A GET retrieves what an earlier request made and was billed for:
    /// its usage is not billed again, unless the response was created in
    /// background mode (its POST answered `queued`, without usage).
    #[test]
    fn a_retrieved_response_is_billed_only_when_made_in_the_background() {
        let stored = |background: &str| {
            format!(
                r#"{{"id":"resp_1","object":"response","status":"completed","background":{background},"model":"o3-2025-04-16","output":[],"usage":{{"input_tokens":36,"output_tokens":87,"total_tokens":123}}}}"#
            )
        };
        let req = Req::new(Provider::OpenAi, "/v1/responses/resp_1", "application/json");
        let retrieve = |body: &str| {
            let mut parser = req.answering(Answers::Retrieval);
            parser.push(body.as_bytes());
            parser.finish()
        };
        let billed = retrieve(&stored("true"));
        assert_eq!(billed.usage, Some(usage(36, 0, 0, 0, 87, 0)));
        assert_eq!(billed.background_response.as_deref(), Some("resp_1"));
        assert!(billed.complete);
        for body in [stored("false"), stored("null"), CHAT_JSON.to_string()] {
            let parsed = retrieve(&body);
            assert_eq!(parsed.usage, None, "{body}");
            assert_eq!(parsed.background_response, None, "{body}");
            assert!(parsed.model.is_some() && parsed.complete, "{body}");
        }
        // The same bodies from a POST are billed.
        assert!(req.parse(stored("false").as_bytes()).usage.is_some());

        // A background response's stream, resumed with a GET.
        let stream = concat!(
            "event: response.completed\n",
            r#"data: {"type":"response.completed","response":{"id":"resp_1","status":"completed","background":true,"model":"gpt-4.1","usage":{"input_tokens":5,"output_tokens":7}}}"#,
            "\n\n"
        );
        let req = Req::new(
            Provider::OpenAi,
            "/v1/responses/resp_1",
            "text/event-stream",
        );
        let mut parser = req.answering(Answers::Retrieval);
        parser.push(stream.as_bytes());
        let parsed = parser.finish();
        assert_eq!(parsed.usage, Some(usage(5, 0, 0, 0, 7, 0)));
        assert_eq!(parsed.background_response.as_deref(), Some("resp_1"));
        // One that did not run in the background is not.
        let mut parser = req.answering(Answers::Retrieval);
        parser.push(
            stream
                .replace(r#""background":true"#, r#""background":false"#)
                .as_bytes(),
        );
        let parsed = parser.finish();
        assert_eq!(parsed.usage, None);
        assert!(parsed.complete);
    }

    /// A request that asked for `"background": true` and streams the
    /// response to its end bills it and names it, so that a later retrieval
    /// does not bill it again. Other requests' parsers do not read the id
    /// (it would cost every Responses stream a capture).
    #[test]
    fn a_background_response_response_is_named_with_its_usage() {
        let completed = |background: &str, usage: &str| {
            format!(
                "event: response.created\n\
                 data: {{\"type\":\"response.created\",\"response\":{{\"id\":\"resp_bg\",\"status\":\"queued\",\"background\":{background},\"usage\":null}}}}\n\n\
                 event: response.completed\n\
                 data: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"resp_bg\",\"status\":\"completed\",\"background\":{background},\"model\":\"gpt-4.1\",\"usage\":{usage}}}}}\n\n"
            )
        };
        let req = Req::new(Provider::OpenAi, "/v1/responses", "text/event-stream");
        let parse = |parser: UsageParser, body: &str| parser.finish_with(body.as_bytes());
        let counts = r#"{"input_tokens":5,"output_tokens":7}"#;
        let body = completed("true", counts);
        // Cut anywhere, in two pieces.
        for cut in 0..=body.len() {
            let mut parser = req.answering(Answers::BackgroundRequest);
            parser.push(&body.as_bytes()[..cut]);
            parser.push(&body.as_bytes()[cut..]);
            let parsed = parser.finish();
            assert_eq!(parsed.usage, Some(usage(5, 0, 0, 0, 7, 0)), "cut at {cut}");
            assert_eq!(
                parsed.background_response.as_deref(),
                Some("resp_bg"),
                "cut at {cut}"
            );
        }
        for body in [
            completed("false", counts),
            completed("true", "null"),
            String::from_utf8(responses_stream()).unwrap(),
        ] {
            let parsed = parse(req.answering(Answers::BackgroundRequest), &body);
            assert_eq!(parsed.background_response, None, "{body}");
        }
        let parsed = parse(req.parser(), &body);
        assert_eq!(parsed.usage, Some(usage(5, 0, 0, 0, 7, 0)));
        assert_eq!(parsed.background_response, None);
        // An answer that is the response object names it by its own `id`.
        let object = r#"{"id":"resp_obj","object":"response","status":"completed","background":true,"model":"gpt-4.1","usage":{"input_tokens":5,"output_tokens":7}}"#;
        let json = Req::new(Provider::OpenAi, "/v1/responses", "application/json");
        let parsed = parse(json.answering(Answers::BackgroundRequest), object);
        assert_eq!(parsed.background_response.as_deref(), Some("resp_obj"));
        // A retrieval of it names it the same way.
        let get = Req::new(
            Provider::OpenAi,
            "/v1/responses/resp_bg",
            "text/event-stream",
        );
        let parsed = parse(get.answering(Answers::Retrieval), &body);
        assert_eq!(parsed.background_response.as_deref(), Some("resp_bg"));
    }

    #[test]
    fn responses_stream_takes_usage_from_response_completed() {
        let req = Req::new(Provider::OpenAi, "/v1/responses", "text/event-stream");
        assert_eq!(
            req.parse_everywhere(&responses_stream()),
            ParsedResponse {
                usage: Some(usage(3037, 2944, 0, 0, 411, 384)),
                model: Some("gpt-5-2025-08-07".into()),
                error: None,
                complete: true,
                background_response: None,
            }
        );
    }

    #[test]
    fn responses_stream_failure_reports_the_error_message() {
        let body = lf(&[
            "event: response.created",
            r#"data: {"type":"response.created","response":{"id":"resp_1","status":"in_progress","error":null,"model":"gpt-4.1","usage":null}}"#,
            "",
            "event: response.failed",
            r#"data: {"type":"response.failed","response":{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"The model failed to generate a response."},"model":"gpt-4.1","usage":null}}"#,
            "",
        ]);
        let req = Req::new(Provider::OpenAi, "/v1/responses", "text/event-stream");
        let parsed = req.parse_everywhere(&body);
        assert_eq!(
            parsed.error.as_deref(),
            Some("The model failed to generate a response.")
        );
        assert!(parsed.complete);
        assert_eq!(parsed.usage, None);
    }

    #[test]
    fn responses_stream_error_event_uses_its_top_level_message() {
        let body = lf(&[
            "event: error",
            r#"data: {"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null,"sequence_number":1}"#,
            "",
        ]);
        let req = Req::new(Provider::OpenAi, "/v1/responses", "text/event-stream");
        let parsed = req.parse(&body);
        assert_eq!(parsed.error.as_deref(), Some("Something went wrong"));
        assert!(parsed.complete);
    }

    #[test]
    fn embeddings_and_completions_report_prompt_tokens_and_zero_when_absent() {
        let embeddings = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023064255,-0.009327292,-1e-5]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let req = Req::new(Provider::OpenAi, "/v1/embeddings", "application/json");
        let parsed = req.parse_everywhere(embeddings.as_bytes());
        assert_eq!(parsed.usage, Some(usage(8, 0, 0, 0, 0, 0)));
        assert_eq!(parsed.model.as_deref(), Some("text-embedding-3-small"));

        let completion = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"gpt-3.5-turbo-instruct","choices":[{"text":"\n\nThis is","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        let req = Req::new(Provider::OpenAi, "/v1/completions", "application/json");
        assert_eq!(
            req.parse(completion.as_bytes()).usage,
            Some(usage(5, 0, 0, 0, 7, 0))
        );
    }

    #[test]
    fn error_body_reports_the_message_and_no_usage() {
        let body = br#"{
    "error": {
        "message": "Incorrect API key provided: sk-abc. You can find your API key at https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": null,
        "code": "invalid_api_key"
    }
}
"#;
        let req = Req::new(
            Provider::OpenAi,
            "/v1/chat/completions",
            "application/json; charset=utf-8",
        );
        let parsed = req.parse_everywhere(body);
        assert_eq!(parsed.usage, None);
        assert!(parsed
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("Incorrect API key provided")));
        assert!(parsed.complete);
    }

    #[test]
    fn non_json_error_body_has_no_error_and_no_usage() {
        let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "text/html");
        let parsed = req.parse(b"<html><body>502 Bad Gateway</body></html>");
        assert_eq!(parsed, ParsedResponse::default());
        let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json");
        let parsed = req.parse(b"<html><body>502 Bad Gateway</body></html>");
        assert_eq!(parsed, ParsedResponse::default());
    }

    #[test]
    fn malformed_json_body_has_unknown_usage() {
        let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json");
        // In the usage object: its counts cannot be read.
        let body = CHAT_JSON.replace("\"total_tokens\": 2306,", "\"total_tokens\": 2306,,");
        assert_eq!(req.parse(body.as_bytes()).usage, None);
        // Between the top-level fields: the body is not JSON.
        let body = CHAT_JSON.replace("\"choices\":", ",\"choices\":");
        let parsed = req.parse(body.as_bytes());
        assert_eq!((parsed.usage, parsed.complete), (None, false));
    }

    #[test]
    fn truncated_json_body_keeps_usage_seen_and_is_incomplete() {
        let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json");
        let cut = CHAT_JSON.find("\"service_tier\"").expect("present");
        let parsed = req.parse(&CHAT_JSON.as_bytes()[..cut]);
        assert_eq!(parsed.usage, Some(usage(2006, 1920, 64, 0, 300, 192)));
        assert!(!parsed.complete);
    }

    #[test]
    fn model_names_are_capped_on_a_char_boundary() {
        let long = "é".repeat(200);
        let body = format!(r#"{{"model":"{long}","usage":{{"prompt_tokens":1}}}}"#);
        let req = Req::new(Provider::OpenAi, "/v1/chat/completions", "application/json");
        let model = req.parse(body.as_bytes()).model.expect("model");
        assert_eq!(model.len(), 256);
        assert!(long.starts_with(&model));
    }
}
