//! Per-request state, created empty by `new_ctx` and filled in phase order.

use std::time::Instant;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::provider::Provider;

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
        }
    }
}

impl RequestCtx {
    /// The request id as the 36-character header value, without allocating.
    pub fn request_id_str<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
        self.request_id.hyphenated().encode_lower(buf)
    }
}
