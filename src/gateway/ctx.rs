//! Per-request state, created empty by `new_ctx` and filled in phase order.

use std::net::SocketAddr;
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
    /// The request's body length as Pingora frames it (`content_length`),
    /// read once when the request is authorized.
    pub request_length: Option<u64>,
    /// Upstream connections tried so far (Pingora retries a request whose
    /// pooled connection the provider had closed).
    pub upstream_attempts: u8,
    /// Connections that failed to open, each to another of the host's
    /// addresses (see `Upstream::address`), and the last one's address.
    pub connect_failures: u8,
    pub failed_address: Option<SocketAddr>,
    /// How many addresses the upstream host had for this request.
    pub upstream_addresses: u8,
    /// When this attempt's request body had all gone upstream.
    pub request_sent_at: Option<Instant>,
    /// The status sent to the client.
    pub status: u16,
    /// When the first response body byte reached the client.
    pub first_byte_at: Option<Instant>,
    /// A short message for the log row when the request failed.
    pub error_message: Option<String>,
    /// The request body's `model`.
    pub request_model: Option<String>,
    /// The request asked for `"background": true` (an OpenAI response).
    pub request_background: bool,
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
            request_length: None,
            upstream_attempts: 0,
            connect_failures: 0,
            failed_address: None,
            upstream_addresses: 0,
            request_sent_at: None,
            status: 0,
            first_byte_at: None,
            error_message: None,
            request_model: None,
            request_background: false,
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
    pub fn request_id_text(&self) -> [u8; 36] {
        hyphenated_lower(&self.request_id)
    }
}

/// A UUID as its 36-character hyphenated lowercase text (what
/// `Uuid::hyphenated().encode_lower` writes), as bytes: a header value and
/// the access log take bytes, so nothing checks them again as UTF-8. 4
/// bytes per step: their 8 nibbles spread to the 8 bytes of a word, then
/// made digits at once.
pub fn hyphenated_lower(id: &Uuid) -> [u8; 36] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut hex = [0u8; 32];
    for (src, dst) in id.as_bytes().chunks_exact(4).zip(hex.chunks_exact_mut(8)) {
        let mut x = u64::from(u32::from_be_bytes([src[0], src[1], src[2], src[3]]));
        // Each step moves the upper half of every group up, leaving
        // nibble k (from the most significant) in byte k, big-endian.
        x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
        // '0' + n, and 'a' - '0' - 10 more where n > 9 (n + 6 reaches 16).
        let letters = ((x + ONES * 6) >> 4) & ONES;
        let digits = x + ONES * u64::from(b'0') + letters * 0x27;
        dst.copy_from_slice(&digits.to_be_bytes());
    }
    let mut text = [b'-'; 36];
    text[..8].copy_from_slice(&hex[..8]);
    text[9..13].copy_from_slice(&hex[8..12]);
    text[14..18].copy_from_slice(&hex[12..16]);
    text[19..23].copy_from_slice(&hex[16..20]);
    text[24..].copy_from_slice(&hex[20..]);
    text
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::hyphenated_lower;

    fn check(id: Uuid) {
        let mut expected = [0; 36];
        assert_eq!(
            hyphenated_lower(&id),
            id.hyphenated().encode_lower(&mut expected).as_bytes()
        );
    }

    #[test]
    fn request_ids_are_written_as_uuid_writes_them() {
        check(Uuid::nil());
        check(Uuid::max());
        check(Uuid::now_v7());
        // Every byte value in every position.
        for b in 0..=255u8 {
            for at in 0..16 {
                let mut bytes = [0x5a; 16];
                bytes[at] = b;
                check(Uuid::from_bytes(bytes));
            }
        }
    }

    proptest! {
        #[test]
        fn any_request_id_is_written_as_uuid_writes_it(bytes in any::<[u8; 16]>()) {
            check(Uuid::from_bytes(bytes));
        }
    }
}
