//! Gemini `generateContent` / `streamGenerateContent` usage.
//!
//! Every response object (the whole JSON body, each SSE event with
//! `alt=sse`, each item of the JSON array streamed without it) may carry
//! `usageMetadata` and `modelVersion`; they are repeated on every chunk and
//! the last one counts, as a whole. In an SSE stream only the last event
//! with `usageMetadata` before a scanned one (the first, one with a
//! `finishReason` / `blockReason` / `error`) or the end is read (see the
//! triage in the parent module): the earlier ones are superseded unread, and
//! so is that last one when the scanned event has counts and a model
//! ([`replaces_earlier_usage`]). An event whose `usageMetadata` holds none of
//! the counts below therefore may hide an earlier one's (Gemini always sends
//! the prompt count).
//!
//! Columns: input = `promptTokenCount + toolUsePromptTokenCount`, cached = `cachedContentTokenCount` (part of the
//! prompt count), output = `candidatesTokenCount + thoughtsTokenCount`
//! (thoughts are billed as output but not part of the candidates count),
//! reasoning = `thoughtsTokenCount`.
//!
//! A stream has no end marker: it is complete once a candidate reports a
//! `finishReason` (or the prompt a `blockReason`). Errors are
//! `{"error":{"code","message","status"}}`, as a body, as an array item, or
//! written mid-stream without `data:` (handled by the caller's stray-line
//! scanner).

use super::counts::{captured_counts, CountPaths, Counts};
use super::scan::{Scanner, Seg::Item, Seg::Key, Targets};
use super::slot::{ERROR, FINISH, MODEL, USAGE};
use super::{captured_str, error_message, target, Findings, Usage};

pub(super) static TARGETS: Targets = Targets::new(&[
    target(&[Key("usageMetadata")], USAGE),
    target(&[Item, Key("usageMetadata")], USAGE),
    target(&[Key("modelVersion")], MODEL),
    target(&[Item, Key("modelVersion")], MODEL),
    target(&[Key("error")], ERROR),
    target(&[Item, Key("error")], ERROR),
    target(&[Key("candidates"), Item, Key("finishReason")], FINISH),
    target(
        &[Item, Key("candidates"), Item, Key("finishReason")],
        FINISH,
    ),
    target(&[Key("promptFeedback"), Key("blockReason")], FINISH),
    target(&[Item, Key("promptFeedback"), Key("blockReason")], FINISH),
]);

/// `…:streamGenerateContent`, in any case.
pub(super) fn is_stream_path(path: &str) -> bool {
    path.to_ascii_lowercase().contains("streamgeneratecontent")
}

/// The query asks for SSE (`alt=sse`).
pub(super) fn wants_sse(query: Option<&str>) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .any(|pair| pair.eq_ignore_ascii_case("alt=sse"))
}

/// The model named in a Gemini path: `gemini-2.5-pro` in
/// `/v1beta/models/gemini-2.5-pro:generateContent`. The pricing fallback when
/// a response has no `modelVersion`.
#[must_use]
pub fn model_from_path(path: &str) -> Option<&str> {
    let last = path.rsplit('/').next()?;
    let (model, _method) = last.split_once(':')?;
    (!model.is_empty()).then_some(model)
}

/// The last `usageMetadata` seen.
#[derive(Debug, Default)]
pub(super) struct GeminiUsage {
    usage: Option<Usage>,
}

impl GeminiUsage {
    pub(super) fn value(&mut self, doc: &Scanner, findings: &mut Findings) {
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
        let failed = findings.note_error(error_message(doc.capture(ERROR)));
        let finished = captured_str(doc.capture(FINISH)).is_some_and(|reason| !reason.is_empty());
        if failed || finished {
            findings.terminal = true;
        }
    }

    pub(super) fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// Whether this event sets everything an earlier event with only usage
/// (no error, no finish reason) would: the counts, which replace the usage as
/// a whole, and the model.
pub(super) fn replaces_earlier_usage(doc: &Scanner) -> bool {
    captured_str(doc.capture(MODEL)).is_some()
        && matches!(
            captured_counts(doc.capture(USAGE), &USAGE_PATHS),
            Ok(Some(counts)) if usage_from(&counts).is_some()
        )
}

/// The counts read from `usageMetadata`.
const USAGE_PATHS: CountPaths<5> = CountPaths::new([
    &["promptTokenCount"],
    &["candidatesTokenCount"],
    &["cachedContentTokenCount"],
    &["thoughtsTokenCount"],
    &["toolUsePromptTokenCount"],
]);

fn usage_from(meta: &Counts<5>) -> Option<Usage> {
    if meta.values.iter().all(Option::is_none) {
        return None;
    }
    let [prompt, candidates, cached, thoughts, tool_use] = meta.values.map(|n| n.unwrap_or(0));
    Some(Usage {
        input_tokens: prompt.saturating_add(tool_use),
        cached_tokens: cached,
        cache_creation_tokens: 0,
        cache_creation_1h_tokens: 0,
        output_tokens: candidates.saturating_add(thoughts),
        reasoning_tokens: thoughts,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testing::{usage, Req};
    use super::super::ParsedResponse;
    use super::*;
    use crate::provider::Provider;

    pub(crate) const GENERATE_JSON: &str = r#"{
  "candidates": [
    {
      "content": {
        "parts": [{"text": "AI learns patterns from data. {\"usageMetadata\": {\"promptTokenCount\": 1}}"}],
        "role": "model"
      },
      "finishReason": "STOP",
      "index": 0
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 1200,
    "candidatesTokenCount": 250,
    "totalTokenCount": 1990,
    "cachedContentTokenCount": 1024,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 1024}],
    "thoughtsTokenCount": 500,
    "toolUsePromptTokenCount": 40
  },
  "modelVersion": "gemini-2.5-pro",
  "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"
}"#;

    /// Gemini ends SSE lines with CRLF.
    pub(crate) fn sse_stream() -> Vec<u8> {
        [
            r#"data: {"candidates": [{"content": {"parts": [{"text": "The"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 8}]},"modelVersion": "gemini-2.5-flash","responseId": "r1"}"#,
            r#"data: {"candidates": [{"content": {"parts": [{"text": " sky is blue"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 60,"totalTokenCount": 368,"thoughtsTokenCount": 300},"modelVersion": "gemini-2.5-flash","responseId": "r1"}"#,
            r#"data: {"candidates": [{"content": {"parts": [{"text": "."}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 120,"totalTokenCount": 428,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 8}],"thoughtsTokenCount": 300},"modelVersion": "gemini-2.5-flash","responseId": "r1"}"#,
        ]
        .iter()
        .flat_map(|event| format!("{event}\r\n\r\n").into_bytes())
        .collect()
    }

    pub(crate) fn array_stream() -> Vec<u8> {
        br#"[{
  "candidates": [{"content": {"parts": [{"text": "The"}], "role": "model"}, "index": 0}],
  "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
  "modelVersion": "gemini-2.5-flash"
}
,
{
  "candidates": [{"content": {"parts": [{"text": " end."}], "role": "model"}, "finishReason": "STOP", "index": 0}],
  "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 120, "totalTokenCount": 428, "thoughtsTokenCount": 300, "cachedContentTokenCount": 4},
  "modelVersion": "gemini-2.5-flash"
}
]"#
        .to_vec()
    }

    const FLASH: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";

    #[test]
    fn generate_content_json_counts_thoughts_and_tool_prompts() {
        let req = Req::new(
            Provider::Gemini,
            "/v1beta/models/gemini-2.5-pro:generateContent",
            "application/json; charset=UTF-8",
        );
        assert_eq!(
            req.parse_everywhere(GENERATE_JSON.as_bytes()),
            ParsedResponse {
                usage: Some(usage(1240, 1024, 0, 0, 750, 500)),
                model: Some("gemini-2.5-pro".into()),
                error: None,
                complete: true,
                background_response: None,
            }
        );
    }

    #[test]
    fn sse_stream_takes_the_last_usage_metadata() {
        let req = Req {
            query: Some("alt=sse&key=AIza"),
            ..Req::new(Provider::Gemini, FLASH, "text/event-stream")
        };
        assert_eq!(
            req.parse_everywhere(&sse_stream()),
            ParsedResponse {
                usage: Some(usage(8, 0, 0, 0, 420, 300)),
                model: Some("gemini-2.5-flash".into()),
                error: None,
                complete: true,
                background_response: None,
            }
        );
    }

    #[test]
    fn sse_stream_without_finish_reason_is_incomplete() {
        let body = sse_stream();
        let text = String::from_utf8_lossy(&body);
        let cut = text.rfind("data: ").expect("present");
        let parsed = Req::new(Provider::Gemini, FLASH, "text/event-stream").parse(&body[..cut]);
        assert_eq!(parsed.usage, Some(usage(8, 0, 0, 0, 360, 300)));
        assert!(!parsed.complete);
    }

    #[test]
    fn json_array_stream_takes_the_last_item_usage() {
        let req = Req::new(Provider::Gemini, FLASH, "application/json");
        assert_eq!(
            req.parse_everywhere(&array_stream()),
            ParsedResponse {
                usage: Some(usage(8, 4, 0, 0, 420, 300)),
                model: Some("gemini-2.5-flash".into()),
                error: None,
                complete: true,
                background_response: None,
            }
        );
    }

    #[test]
    fn json_array_cut_mid_stream_keeps_usage_so_far() {
        let body = array_stream();
        let cut = String::from_utf8_lossy(&body)
            .find("\" end.\"")
            .expect("present");
        let parsed = Req::new(Provider::Gemini, FLASH, "application/json").parse(&body[..cut]);
        assert_eq!(parsed.usage, Some(usage(8, 0, 0, 0, 0, 0)));
        assert!(!parsed.complete);
    }

    #[test]
    fn error_inside_the_json_array_is_reported() {
        let mut body = array_stream();
        body.truncate(body.len() - 1);
        body.extend(br#", {"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}]"#);
        let parsed = Req::new(Provider::Gemini, FLASH, "application/json").parse_everywhere(&body);
        assert_eq!(
            parsed.error.as_deref(),
            Some("The model is overloaded. Please try again later.")
        );
        assert_eq!(parsed.usage, Some(usage(8, 4, 0, 0, 420, 300)));
    }

    #[test]
    fn unprefixed_error_object_mid_stream_is_reported_with_usage_so_far() {
        let mut body = sse_stream();
        let cut = String::from_utf8_lossy(&body)
            .rfind("data: ")
            .expect("present");
        body.truncate(cut);
        body.extend(b"{\n  \"error\": {\n    \"code\": 503,\n    \"message\": \"The model is overloaded.\",\n    \"status\": \"UNAVAILABLE\"\n  }\n}\n");
        let req = Req {
            query: Some("alt=sse"),
            ..Req::new(Provider::Gemini, FLASH, "text/event-stream")
        };
        assert_eq!(
            req.parse_everywhere(&body),
            ParsedResponse {
                usage: Some(usage(8, 0, 0, 0, 360, 300)),
                model: Some("gemini-2.5-flash".into()),
                error: Some("The model is overloaded.".into()),
                complete: true,
                background_response: None,
            }
        );
    }

    #[test]
    fn error_body_reports_the_message() {
        let body = br#"{
  "error": {
    "code": 400,
    "message": "API key not valid. Please pass a valid API key.",
    "status": "INVALID_ARGUMENT",
    "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
  }
}"#;
        let req = Req::new(
            Provider::Gemini,
            "/v1beta/models/gemini-2.5-pro:generateContent",
            "application/json",
        );
        let parsed = req.parse(body);
        assert_eq!(
            parsed.error.as_deref(),
            Some("API key not valid. Please pass a valid API key.")
        );
        assert_eq!(parsed.usage, None);
        let req = Req::new(Provider::Gemini, FLASH, "application/json");
        let wrapped = [b"[".as_slice(), body, b"]"].concat();
        assert_eq!(req.parse(&wrapped).error, parsed.error);
    }

    #[test]
    fn formats_follow_path_query_and_content_type() {
        use super::super::BodyFormat;
        let detect = |path, query, ct| BodyFormat::detect(Provider::Gemini, path, query, ct);
        assert_eq!(
            detect(FLASH, Some("alt=sse"), Some("text/event-stream")),
            Some(BodyFormat::Sse)
        );
        assert_eq!(
            detect(FLASH, None, Some("application/json")),
            Some(BodyFormat::JsonArray)
        );
        assert_eq!(
            detect(FLASH, Some("alt=sse"), Some("application/json")),
            Some(BodyFormat::Json)
        );
        assert_eq!(
            detect(
                "/v1/models/m:generateContent",
                None,
                Some("application/json")
            ),
            Some(BodyFormat::Json)
        );
        assert_eq!(detect(FLASH, Some("alt=sse"), None), None);
    }

    #[test]
    fn model_is_read_from_the_path() {
        assert_eq!(
            model_from_path("/v1beta/models/gemini-2.5-pro:generateContent"),
            Some("gemini-2.5-pro")
        );
        assert_eq!(
            model_from_path("/v1/models/gemini-2.5-flash:streamGenerateContent"),
            Some("gemini-2.5-flash")
        );
        assert_eq!(model_from_path("/v1/chat/completions"), None);
    }
}
