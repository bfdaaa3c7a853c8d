//! One request's log row, as the sink hands it to the store.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Everything `llm_requests` records about one request. Column meanings are
/// SPEC §4's; the sink serialises it to the spool as JSON.
///
/// `Default` (nil id, the epoch, zeros, empty text) is for tests and
/// benchmarks that set only the fields they are about; the gateway builds
/// every field explicitly (`gateway::record::build`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: Uuid,
    pub api_key_id: Option<Uuid>,
    pub provider_api_key_hash: Option<String>,
    pub provider: String,
    pub model: String,
    pub request_path: String,
    pub request_method: String,
    pub requested_at: DateTime<Utc>,
    pub responded_at: DateTime<Utc>,
    pub response_time_ms: i32,
    pub time_to_first_byte_ms: Option<i32>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub cache_creation_tokens: i64,
    pub reasoning_tokens: i64,
    pub input_cost: Decimal,
    pub output_cost: Decimal,
    pub total_cost: Decimal,
    pub price_found: bool,
    pub usage_complete: bool,
    pub status_code: i32,
    pub error_message: Option<String>,
    /// `X-Majordomo-*` metadata as a JSON object (name → first value).
    pub raw_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Bodies, when `logging.body_storage` keeps them (truncated to
    /// `logging.max_body_bytes` on a character boundary). With S3 storage they
    /// are moved into the object before the row is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    /// The S3 object holding the bodies, set once it is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_s3_key: Option<String>,
}

#[cfg(test)]
impl RequestRecord {
    /// A plain OpenAI 200 row with no tokens, for unit tests; each test sets
    /// the fields it is about.
    pub(crate) fn plain() -> RequestRecord {
        let at = Utc::now();
        RequestRecord {
            id: Uuid::now_v7(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            request_path: "/v1/chat/completions".into(),
            request_method: "POST".into(),
            requested_at: at,
            responded_at: at,
            response_time_ms: 1,
            usage_complete: true,
            status_code: 200,
            ..RequestRecord::default()
        }
    }
}
