//! Per-request state, created empty by `new_ctx` and filled in phase order.

use std::time::Instant;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::capture::BodyCapture;
use crate::provider::Provider;
use crate::usage::{InjectedUsageStripper, RequestSniffer, StreamingUsageInjector, UsageParser};

/// How the request body is watched on its way upstream. The injector is
/// boxed, like the response parser: Pingora keeps the context inside each
/// connection's session future, which it moves more than once per request
/// and holds for the whole connection, so the context stays small. The
/// sniffer is a pointer to its (recycled) scanner already.
#[derive(Default)]
pub enum BodyWatch {
    /// No body, or nothing to learn from it.
    #[default]
    None,
    /// Learn `model` / `stream` as the bytes pass.
    Sniff(RequestSniffer),
    /// Also add `stream_options.include_usage` to an OpenAI chat stream.
    Inject(Box<StreamingUsageInjector>),
}

/// What the gateway knows about one request as it moves through the phases.
pub struct RequestCtx {
    /// The request id (UUIDv7): log row id, `X-Majordomo-Request-Id`.
    pub request_id: Uuid,
    pub started: Instant,
    pub requested_at: DateTime<Utc>,
    pub provider: Provider,
    pub api_key_id: Option<Uuid>,
    /// `X-Majordomo-*` metadata: lowercased name without the prefix → first value.
    pub metadata: Vec<(String, String)>,
    /// Set when the gateway answered the request itself (health, errors).
    pub local_response: bool,
    /// Request body bytes seen so far (for the size limit on chunked bodies).
    pub request_body_bytes: u64,
    /// The status sent to the client.
    pub status: u16,
    /// When the first response body byte reached the client.
    pub first_byte_at: Option<Instant>,
    /// A short message for the log row when the request failed.
    pub error_message: Option<String>,
    /// The request body's `model`.
    pub request_model: Option<String>,
    pub body_watch: BodyWatch,
    /// The gateway asked upstream for stream usage the client did not ask for.
    pub injected_usage: bool,
    /// Reads usage from the response body as it passes (boxed: see [`BodyWatch`]).
    pub parser: Option<Box<UsageParser>>,
    /// Hides the injected usage chunk from the client.
    pub stripper: Option<InjectedUsageStripper>,
    /// Copies of the bodies for `logging.body_storage`.
    pub request_capture: Option<BodyCapture>,
    pub response_capture: Option<BodyCapture>,
    /// The upstream response's `Content-Encoding`, if not identity.
    pub response_encoding: Option<String>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            request_id: Uuid::now_v7(),
            started: Instant::now(),
            requested_at: Utc::now(),
            provider: Provider::OpenAi,
            api_key_id: None,
            metadata: Vec::new(),
            local_response: false,
            request_body_bytes: 0,
            status: 0,
            first_byte_at: None,
            error_message: None,
            request_model: None,
            body_watch: BodyWatch::None,
            injected_usage: false,
            parser: None,
            stripper: None,
            request_capture: None,
            response_capture: None,
            response_encoding: None,
        }
    }
}

impl RequestCtx {
    /// The request id as the 36-character header value, without allocating.
    pub fn request_id_str<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
        self.request_id.hyphenated().encode_lower(buf)
    }
}
