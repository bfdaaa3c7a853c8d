//! Errors the gateway answers itself, as JSON shaped like the detected
//! provider's own error bodies so the official SDKs surface the message.

use bytes::Bytes;
use serde_json::json;

use crate::provider::Provider;

/// A request the gateway refuses or cannot complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No `X-Majordomo-Key` header.
    MissingKey,
    /// Malformed, unknown or revoked key (deliberately not distinguished).
    InvalidKey,
    /// The key could not be checked because the store is unreachable.
    AuthUnavailable,
    /// `X-Majordomo-Provider` names no provider we know.
    UnknownProvider(String),
    /// The request body is over `server.max_body_bytes`.
    BodyTooLarge { limit: u64 },
    /// Too many or too large `X-Majordomo-*` metadata headers.
    BadMetadata(String),
    /// A request header the proxy refuses to forward (Pingora's reason), such
    /// as a `Connection` header naming Host as hop-by-hop.
    BadHeader(String),
    /// The client's request could not be read as HTTP (Pingora's reason),
    /// such as a malformed chunk of a chunked body.
    BadRequest(String),
    /// The upstream could not be reached.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// Anything else that went wrong inside the gateway.
    Internal,
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::MissingKey | GatewayError::InvalidKey => 401,
            GatewayError::AuthUnavailable => 503,
            GatewayError::UnknownProvider(_)
            | GatewayError::BadMetadata(_)
            | GatewayError::BadHeader(_)
            | GatewayError::BadRequest(_) => 400,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::UpstreamUnreachable => 502,
            GatewayError::UpstreamTimeout => 504,
            GatewayError::Internal => 500,
        }
    }

    pub fn message(&self) -> String {
        match self {
            GatewayError::MissingKey => {
                "Missing X-Majordomo-Key header: every request through majordomo needs a majordomo API key (mdm_sk_...)".into()
            }
            GatewayError::InvalidKey => "Invalid X-Majordomo-Key: the key is unknown or has been revoked".into(),
            GatewayError::AuthUnavailable => {
                "majordomo cannot verify the API key right now (key store unavailable); retry shortly".into()
            }
            GatewayError::UnknownProvider(v) => format!(
                "Unknown X-Majordomo-Provider {:?}: expected openai, anthropic or gemini",
                truncate(v, 64)
            ),
            GatewayError::BodyTooLarge { limit } => {
                format!("Request body is larger than the gateway's limit of {limit} bytes")
            }
            GatewayError::BadMetadata(why) => format!("Invalid X-Majordomo-* metadata: {why}"),
            GatewayError::BadHeader(why) => format!("Invalid request header: {}", truncate(why, 200)),
            GatewayError::BadRequest(why) => format!("Malformed request: {}", truncate(why, 200)),
            GatewayError::UpstreamUnreachable => "majordomo could not connect to the upstream provider".into(),
            GatewayError::UpstreamTimeout => "The upstream provider did not respond in time".into(),
            GatewayError::Internal => "majordomo failed to process the request".into(),
        }
    }

    /// The JSON body in the provider's own error shape.
    pub fn body(&self, provider: Provider) -> Bytes {
        let status = self.status();
        let message = self.message();
        let value = match provider {
            Provider::OpenAi => json!({
                "error": {
                    "message": message,
                    "type": match status {
                        401 => "authentication_error",
                        400 | 413 => "invalid_request_error",
                        _ => "api_error",
                    },
                    "param": null,
                    "code": self.code(),
                }
            }),
            Provider::Anthropic => json!({
                "type": "error",
                "error": {
                    "type": match status {
                        401 => "authentication_error",
                        413 => "request_too_large",
                        400 => "invalid_request_error",
                        503 | 502 => "overloaded_error",
                        504 => "timeout_error",
                        _ => "api_error",
                    },
                    "message": message,
                }
            }),
            Provider::Gemini => json!({
                "error": {
                    "code": status,
                    "message": message,
                    "status": match status {
                        401 => "UNAUTHENTICATED",
                        400 | 413 => "INVALID_ARGUMENT",
                        503 | 502 => "UNAVAILABLE",
                        504 => "DEADLINE_EXCEEDED",
                        _ => "INTERNAL",
                    },
                }
            }),
        };
        Bytes::from(value.to_string())
    }

    fn code(&self) -> &'static str {
        match self {
            GatewayError::MissingKey => "missing_majordomo_key",
            GatewayError::InvalidKey => "invalid_majordomo_key",
            GatewayError::AuthUnavailable => "key_store_unavailable",
            GatewayError::UnknownProvider(_) => "unknown_provider",
            GatewayError::BodyTooLarge { .. } => "request_too_large",
            GatewayError::BadMetadata(_) => "invalid_metadata",
            GatewayError::BadHeader(_) => "invalid_header",
            GatewayError::BadRequest(_) => "malformed_request",
            GatewayError::UpstreamUnreachable => "upstream_unreachable",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::Internal => "internal_error",
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: Bytes) -> serde_json::Value {
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn each_provider_gets_its_own_error_shape() {
        let e = GatewayError::InvalidKey;
        let o = parse(e.body(Provider::OpenAi));
        assert_eq!(o["error"]["type"], "authentication_error");
        assert!(o["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-Majordomo-Key"));
        let a = parse(e.body(Provider::Anthropic));
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "authentication_error");
        let g = parse(e.body(Provider::Gemini));
        assert_eq!(g["error"]["code"], 401);
        assert_eq!(g["error"]["status"], "UNAUTHENTICATED");
    }

    #[test]
    fn unknown_provider_message_is_bounded_and_multibyte_safe() {
        let long = "é".repeat(100);
        let m = GatewayError::UnknownProvider(long).message();
        assert!(m.len() < 200);
    }
}
