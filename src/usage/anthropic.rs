//! Anthropic messages usage.
//!
//! - JSON bodies: top-level `usage` and `model`.
//! - Streams: `message_start` carries `message.usage` (input and cache
//!   fields, an early `output_tokens`) and `message.model`; `message_delta`
//!   carries `usage` again, *cumulative*, and may restate `input_tokens` and
//!   the cache fields. Each field therefore takes its latest non-null value;
//!   nothing is ever summed across events. `message_stop` ends the stream; an
//!   `error` event (`{"type":"error","error":{..,"message":..}}`) is an
//!   in-band error that also ends it.
//!
//! The `input_tokens` column is `input_tokens + cache_read_input_tokens +
//! cache_creation_input_tokens`. Cache writes are `cache_creation_input_tokens`,
//! or, when only the split is given, the sum of
//! `cache_creation.ephemeral_5m_input_tokens` and `ephemeral_1h_input_tokens`;
//! the 1-hour part is reported separately because it is priced differently.
//!
//! `/v1/messages/count_tokens` answers `{"input_tokens": N}`, which is not
//! billed: it yields no usage.

use super::counts::{captured_counts, CountPaths, Counts};
use super::scan::{Scanner, Seg::Key, Targets};
use super::slot::{ERROR, MODEL, TYPE, USAGE};
use super::{error_message, target, Findings, Usage};

pub(super) static TARGETS: Targets = Targets::new(&[
    target(&[Key("type")], TYPE),
    target(&[Key("usage")], USAGE),
    target(&[Key("message"), Key("usage")], USAGE),
    target(&[Key("model")], MODEL),
    target(&[Key("message"), Key("model")], MODEL),
    target(&[Key("error")], ERROR),
]);

/// The token-counting endpoint, whose counts are not usage.
pub(super) fn is_count_tokens(path: &str) -> bool {
    path.trim_end_matches('/').ends_with("/count_tokens")
}

/// The counts read from a usage object, in the order of [`AnthropicUsage::merge`]'s slots.
const USAGE_PATHS: CountPaths<6> = CountPaths::new([
    &["input_tokens"],
    &["output_tokens"],
    &["cache_read_input_tokens"],
    &["cache_creation_input_tokens"],
    &["cache_creation", "ephemeral_5m_input_tokens"],
    &["cache_creation", "ephemeral_1h_input_tokens"],
]);

/// The latest value of each usage field.
#[derive(Debug, Default)]
pub(super) struct AnthropicUsage {
    seen: bool,
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    ephemeral_5m: Option<u64>,
    ephemeral_1h: Option<u64>,
}

impl AnthropicUsage {
    pub(super) fn value(&mut self, kind: &str, doc: &Scanner, findings: &mut Findings) {
        match captured_counts(doc.capture(USAGE), &USAGE_PATHS) {
            Ok(Some(counts)) => self.merge(&counts),
            Ok(None) => {}
            Err(()) => findings.unknown = true,
        }
        findings.note_model(doc.capture(MODEL));
        let failed = findings.note_error(error_message(doc.capture(ERROR)));
        if failed || kind == "message_stop" || kind == "error" {
            findings.terminal = true;
        }
    }

    fn merge(&mut self, usage: &Counts<6>) {
        // A usage object with none of Anthropic's fields (another format's)
        // is not a usage of zero: the row would be a real-looking $0.
        if !usage.object || usage.values.iter().all(Option::is_none) {
            return;
        }
        self.seen = true;
        let slots = [
            &mut self.input,
            &mut self.output,
            &mut self.cache_read,
            &mut self.cache_creation,
            &mut self.ephemeral_5m,
            &mut self.ephemeral_1h,
        ];
        // Each field keeps its latest value: an event that lacks one says nothing about it.
        for (slot, n) in slots.into_iter().zip(usage.values) {
            if n.is_some() {
                *slot = n;
            }
        }
    }

    pub(super) fn usage(&self) -> Option<Usage> {
        if !self.seen {
            return None;
        }
        let split = match (self.ephemeral_5m, self.ephemeral_1h) {
            (None, None) => None,
            (m5, h1) => Some(m5.unwrap_or(0).saturating_add(h1.unwrap_or(0))),
        };
        let creation = self.cache_creation.or(split).unwrap_or(0);
        let cache_read = self.cache_read.unwrap_or(0);
        Some(Usage {
            input_tokens: self
                .input
                .unwrap_or(0)
                .saturating_add(cache_read)
                .saturating_add(creation),
            cached_tokens: cache_read,
            cache_creation_tokens: creation,
            cache_creation_1h_tokens: self.ephemeral_1h.unwrap_or(0).min(creation),
            output_tokens: self.output.unwrap_or(0),
            reasoning_tokens: 0,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testing::{crlf, lf, usage, Req};
    use super::super::ParsedResponse;
    use crate::provider::Provider;

    pub(crate) const MESSAGE_JSON: &str = r#"{
  "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-5-20250929",
  "content": [{"type": "text", "text": "Hi! My name is Claude."}],
  "stop_reason": "end_turn",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 2095,
    "cache_creation_input_tokens": 2051,
    "cache_read_input_tokens": 1000,
    "cache_creation": {"ephemeral_5m_input_tokens": 51, "ephemeral_1h_input_tokens": 2000},
    "output_tokens": 503,
    "service_tier": "standard"
  }
}"#;

    pub(crate) fn message_stream() -> Vec<u8> {
        lf(&[
            "event: message_start",
            r#"data: {"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-opus-4-1-20250805","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":300,"cache_read_input_tokens":4000,"cache_creation":{"ephemeral_5m_input_tokens":300,"ephemeral_1h_input_tokens":0},"output_tokens":1}}}"#,
            "",
            "event: content_block_start",
            r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
            "",
            "event: ping",
            r#"data: {"type": "ping"}"#,
            "",
            "event: content_block_delta",
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think: \"usage\": {\"output_tokens\": 99999}"}}"#,
            "",
            "event: content_block_stop",
            r#"data: {"type":"content_block_stop","index":0}"#,
            "",
            "event: content_block_start",
            r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
            "",
            "event: content_block_delta",
            r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hello"}}"#,
            "",
            "event: content_block_stop",
            r#"data: {"type":"content_block_stop","index":1}"#,
            "",
            "event: message_delta",
            r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":25,"cache_creation_input_tokens":300,"cache_read_input_tokens":4000,"output_tokens":15}}"#,
            "",
            "event: message_stop",
            r#"data: {"type":"message_stop"}"#,
            "",
        ])
    }

    /// Triage: content block events are framed but not parsed; everything
    /// else (message_start / message_delta / errors) is.
    #[test]
    fn content_block_events_are_not_parsed_but_usage_events_are() {
        let stream = String::from_utf8(message_stream()).unwrap();
        let garbled = stream.replace(
            r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hello"}}"#,
            r#"data: {"type":"content_block_delta","index":1,"delta":{"#,
        );
        assert_ne!(garbled, stream);
        assert_eq!(
            sse().parse_everywhere(garbled.as_bytes()),
            sse().parse(stream.as_bytes())
        );
        // An unknown event name is parsed: a malformed one still counts.
        let unknown = stream.replace(
            "event: ping\ndata: {\"type\": \"ping\"}",
            "event: something_new\ndata: {\"type\": ",
        );
        assert_ne!(unknown, stream);
        assert_eq!(sse().parse(unknown.as_bytes()).usage, None);
    }

    fn sse() -> Req<'static> {
        Req::new(
            Provider::Anthropic,
            "/v1/messages",
            "text/event-stream; charset=utf-8",
        )
    }

    #[test]
    fn message_json_counts_cache_reads_and_writes_in_input() {
        let req = Req::new(Provider::Anthropic, "/v1/messages", "application/json");
        assert_eq!(
            req.parse_everywhere(MESSAGE_JSON.as_bytes()),
            ParsedResponse {
                usage: Some(usage(2095 + 1000 + 2051, 1000, 2051, 2000, 503, 0)),
                model: Some("claude-sonnet-4-5-20250929".into()),
                error: None,
                complete: true,
                background_response: None,
            }
        );
    }

    #[test]
    fn cache_writes_fall_back_to_the_ephemeral_split() {
        let body = r#"{"type":"message","model":"claude-haiku-4-5","usage":{"input_tokens":10,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":50},"output_tokens":5}}"#;
        let req = Req::new(Provider::Anthropic, "/v1/messages", "application/json");
        assert_eq!(
            req.parse(body.as_bytes()).usage,
            Some(usage(160, 0, 150, 50, 5, 0))
        );
    }

    #[test]
    fn message_stream_takes_the_latest_value_of_each_field() {
        assert_eq!(
            sse().parse_everywhere(&message_stream()),
            ParsedResponse {
                usage: Some(usage(25 + 4000 + 300, 4000, 300, 0, 15, 0)),
                model: Some("claude-opus-4-1-20250805".into()),
                error: None,
                complete: true,
                background_response: None,
            }
        );
    }

    #[test]
    fn anthropic_message_delta_restating_input_is_not_summed() {
        let body = lf(&[
            "event: message_start",
            r#"data: {"type":"message_start","message":{"model":"claude-sonnet-4-5","usage":{"input_tokens":100,"cache_read_input_tokens":50,"output_tokens":1}}}"#,
            "",
            "event: message_delta",
            r#"data: {"type":"message_delta","delta":{"stop_reason":null},"usage":{"input_tokens":100,"cache_read_input_tokens":50,"output_tokens":20}}"#,
            "",
            "event: message_delta",
            r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":42,"cache_read_input_tokens":null}}"#,
            "",
            "event: message_stop",
            r#"data: {"type":"message_stop"}"#,
            "",
        ]);
        assert_eq!(
            sse().parse_everywhere(&body).usage,
            Some(usage(150, 50, 0, 0, 42, 0))
        );
    }

    #[test]
    fn message_stream_with_crlf_and_no_event_lines_parses_the_same() {
        let expected = sse().parse(&message_stream());
        let crlf_body = crlf(&message_stream());
        assert_eq!(sse().parse_everywhere(&crlf_body), expected);
        let without_names: Vec<u8> = String::from_utf8(message_stream())
            .expect("utf-8")
            .lines()
            .filter(|l| !l.starts_with("event:"))
            .flat_map(|l| format!("{l}\n").into_bytes())
            .collect();
        assert_eq!(sse().parse(&without_names), expected);
    }

    #[test]
    fn mid_stream_error_keeps_usage_so_far_and_the_message() {
        let mut body = message_stream();
        let cut = String::from_utf8_lossy(&body)
            .find("event: content_block_stop")
            .expect("present");
        body.truncate(cut);
        body.extend(lf(&[
            "event: error",
            r#"data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
            "",
        ]));
        assert_eq!(
            sse().parse_everywhere(&body),
            ParsedResponse {
                usage: Some(usage(4325, 4000, 300, 0, 1, 0)),
                model: Some("claude-opus-4-1-20250805".into()),
                error: Some("Overloaded".into()),
                complete: true,
                background_response: None,
            }
        );
    }

    #[test]
    fn truncated_stream_reports_usage_so_far_as_incomplete() {
        let body = message_stream();
        let text = String::from_utf8_lossy(&body);
        let cut = text.find("event: message_stop").expect("present");
        let parsed = sse().parse(&body[..cut]);
        assert_eq!(parsed.usage, Some(usage(4325, 4000, 300, 0, 15, 0)));
        assert!(!parsed.complete);
        // Cut inside the message_delta data line: that event is dropped.
        let cut = text.find("\"output_tokens\":15").expect("present");
        let parsed = sse().parse(&body[..cut]);
        assert_eq!(parsed.usage, Some(usage(4325, 4000, 300, 0, 1, 0)));
        assert!(!parsed.complete);
    }

    #[test]
    fn error_body_reports_the_message() {
        let body = br#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-sonnet-9"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;
        let req = Req::new(Provider::Anthropic, "/v1/messages", "application/json");
        assert_eq!(
            req.parse_everywhere(body),
            ParsedResponse {
                usage: None,
                model: None,
                error: Some("model: claude-sonnet-9".into()),
                complete: true,
                background_response: None,
            }
        );
    }

    #[test]
    fn a_usage_object_without_anthropic_fields_is_not_a_usage_of_zero() {
        // Reached only through a path no OpenAI-compatible route covers.
        let req = Req::new(Provider::Anthropic, "/v1/messages", "application/json");
        let parsed = req.parse(
            br#"{"type":"message","model":"claude-sonnet-4-5","usage":{"prompt_tokens":1000,"completion_tokens":200}}"#,
        );
        assert_eq!(parsed.usage, None);
    }

    #[test]
    fn the_openai_compatible_endpoint_answers_in_openai_format() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"claude-sonnet-4-5","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200}}"#;
        for (provider, path) in [
            (Provider::Anthropic, "/v1/chat/completions"),
            (Provider::Gemini, "/v1beta/openai/chat/completions"),
        ] {
            let parsed = Req::new(provider, path, "application/json").parse(body);
            let usage = parsed.usage.unwrap_or_else(|| panic!("{path}"));
            assert_eq!(
                (usage.input_tokens, usage.output_tokens),
                (1000, 200),
                "{path}"
            );
        }
        let stream = "data: {\"id\":\"c\",\"model\":\"gemini-2.5-flash\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\
                      data: {\"id\":\"c\",\"model\":\"gemini-2.5-flash\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n\
                      data: [DONE]\n\n";
        let parsed = Req::new(
            Provider::Gemini,
            "/v1beta/openai/chat/completions",
            "text/event-stream",
        )
        .parse_everywhere(stream.as_bytes());
        let usage = parsed.usage.expect("stream usage");
        assert_eq!((usage.input_tokens, usage.output_tokens), (7, 3));
        assert!(parsed.complete);
    }

    #[test]
    fn count_tokens_is_not_usage() {
        let req = Req::new(
            Provider::Anthropic,
            "/v1/messages/count_tokens",
            "application/json",
        );
        let parsed = req.parse(br#"{"input_tokens": 2095}"#);
        assert_eq!(parsed.usage, None);
        assert!(parsed.complete);
    }
}
