//! One request's log row, as the sink hands it to the store.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Everything `llm_requests` records about one request. Column meanings are
/// SPEC §4's. The spool holds it as a binary record (`sink::record_bin`);
/// serde's form is the dead letter file's, and the JSON of the spool's
/// `.seg` segments that earlier versions wrote.
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
    /// The OpenAI background response whose usage this row carries (not a
    /// column). The store keeps the usage only if this row is the first to
    /// claim the id in `majordomo_billed_responses`, in the transaction that
    /// writes the row; a later one is written [`unbilled`](Self::unbilled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_response: Option<String>,
}

impl RequestRecord {
    /// This row as written when another request billed its background
    /// response: no tokens, no cost, usage not complete, as a retrieval of
    /// an already-billed response is logged.
    pub fn unbilled(&self) -> RequestRecord {
        RequestRecord {
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            cache_creation_tokens: 0,
            reasoning_tokens: 0,
            input_cost: Decimal::ZERO,
            output_cost: Decimal::ZERO,
            total_cost: Decimal::ZERO,
            usage_complete: false,
            billed_response: None,
            ..self.clone()
        }
    }
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

    /// Records of every shape, with fixed ids and times: absent and present
    /// options, escapes, metadata that is not a string, extreme counts, a
    /// negative cost, a leap second, a year past 9999. The committed segment
    /// `tests/fixtures/spool/*.seg` holds them as the JSON spool format wrote them.
    pub(crate) fn samples() -> Vec<RequestRecord> {
        use chrono::TimeZone;
        use rust_decimal::Decimal;
        use std::str::FromStr;
        let at = |s: i64, ns: u32| chrono::DateTime::from_timestamp(s, ns).unwrap();
        let typical = RequestRecord {
            id: Uuid::from_u128(0x0193_6f2a_0000_7000_8000_0000_0000_0001),
            api_key_id: Some(Uuid::from_u128(0x0193_6f2a_0000_7000_8000_0000_0000_00aa)),
            provider_api_key_hash: Some("3f2a".repeat(16)),
            provider: "openai".into(),
            model: "gpt-4o-2024-08-06".into(),
            request_path: "/v1/chat/completions".into(),
            request_method: "POST".into(),
            requested_at: at(1_795_766_401, 123_456_789),
            responded_at: at(1_795_766_402, 5_000),
            response_time_ms: 812,
            time_to_first_byte_ms: Some(95),
            input_tokens: 1200,
            output_tokens: 345,
            cached_tokens: 1024,
            cache_creation_tokens: 0,
            reasoning_tokens: 64,
            input_cost: Decimal::from_str("0.000440").unwrap(),
            output_cost: Decimal::from_str("0.00345").unwrap(),
            total_cost: Decimal::from_str("0.003890").unwrap(),
            price_found: true,
            usage_complete: true,
            status_code: 200,
            error_message: None,
            raw_metadata: Some(
                [("feature", "chat"), ("user-id", "u-42")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                    .collect(),
            ),
            request_body: None,
            response_body: None,
            body_s3_key: None,
            billed_response: None,
        };
        let mut odd = typical.clone();
        odd.id = Uuid::from_u128(0x0193_6f2a_0000_7000_8000_0000_0000_0002);
        odd.api_key_id = None;
        odd.provider_api_key_hash = None;
        odd.time_to_first_byte_ms = None;
        odd.error_message = Some("upstream said \"no\"\n\tbad \\ path \u{1} é ✓".into());
        odd.model = "weird\"model\\".into();
        odd.request_body = Some("{\"a\":\"\u{7f}\u{0}\"}".into());
        odd.response_body = Some(String::new());
        odd.body_s3_key = Some("k/2026-11-27/x.json.gz".into());
        odd.input_cost = Decimal::from_str("-0.5").unwrap();
        odd.status_code = -1;
        odd.input_tokens = i64::MIN;
        odd.output_tokens = i64::MAX;
        odd.price_found = false;
        odd.usage_complete = false;
        let mut meta = serde_json::Map::new();
        meta.insert("n".into(), serde_json::Value::from(5));
        meta.insert("q\"".into(), serde_json::Value::String("v\n".into()));
        odd.raw_metadata = Some(meta);
        let mut edges = typical.clone();
        edges.id = Uuid::from_u128(0x0193_6f2a_0000_7000_8000_0000_0000_0003);
        edges.raw_metadata = None;
        edges.requested_at = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        edges.responded_at = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
        edges.total_cost = Decimal::from_str("0.0000000000000000000000000001").unwrap();
        vec![typical, odd, edges]
    }
}

/// A proptest strategy for any record the gateway could build: every
/// option absent or present, text with quotes, backslashes and control
/// characters, any 96-bit cost at any scale, dates across ±126 000 years.
/// Shared by the tests of every encoding of a record (`COPY` rows, the spool).
#[cfg(test)]
pub(crate) mod strategy {
    use chrono::DateTime;
    use proptest::prelude::*;
    use rust_decimal::Decimal;
    use serde_json::Value;
    use uuid::Uuid;

    use super::RequestRecord;

    pub fn decimal() -> impl Strategy<Value = Decimal> {
        // Any mantissa of rust_decimal's 96 bits, any scale, either sign;
        // and the small exact amounts costs are.
        prop_oneof![
            (any::<u128>(), 0u32..=28, any::<bool>()).prop_map(|(m, scale, neg)| {
                let m = (m & ((1u128 << 96) - 1)) as i128;
                Decimal::from_i128_with_scale(if neg { -m } else { m }, scale)
            }),
            (0i64..10_000_000_000, 0u32..=10).prop_map(|(m, scale)| Decimal::new(m, scale)),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        "(\\PC|[\"\\\\\u{1}]){0,40}"
    }

    prop_compose! {
        pub fn record()(
            id in any::<u128>(),
            key in proptest::option::of(any::<u128>()),
            hash in proptest::option::of("[0-9a-f]{64}"),
            model in text(),
            path in text(),
            requested_micros in -4_000_000_000_000_000i64..4_000_000_000_000_000,
            nanos in 0u32..1_000_000_000,
            elapsed_nanos in 0i64..10_000_000_000,
            ints in any::<(i32, Option<i32>, i32)>(),
            tokens in any::<[i64; 5]>(),
            costs in (decimal(), decimal(), decimal()),
            flags in any::<(bool, bool)>(),
            error in proptest::option::of(text()),
            metadata in proptest::option::of(proptest::collection::btree_map(
                "[a-z-]{1,8}", text(), 0..4)),
            bodies in (proptest::option::of(text()), proptest::option::of(text()),
                proptest::option::of(text())),
            billed_response in proptest::option::of(text()),
        ) -> RequestRecord {
            let requested_at = DateTime::from_timestamp_micros(requested_micros).unwrap()
                + chrono::Duration::nanoseconds(i64::from(nanos % 1000));
            RequestRecord {
                id: Uuid::from_u128(id),
                api_key_id: key.map(Uuid::from_u128),
                provider_api_key_hash: hash,
                provider: "openai".into(),
                model,
                request_path: path,
                request_method: "POST".into(),
                requested_at,
                responded_at: requested_at + chrono::Duration::nanoseconds(elapsed_nanos),
                response_time_ms: ints.0,
                time_to_first_byte_ms: ints.1,
                input_tokens: tokens[0],
                output_tokens: tokens[1],
                cached_tokens: tokens[2],
                cache_creation_tokens: tokens[3],
                reasoning_tokens: tokens[4],
                input_cost: costs.0,
                output_cost: costs.1,
                total_cost: costs.2,
                price_found: flags.0,
                usage_complete: flags.1,
                status_code: ints.2,
                error_message: error,
                raw_metadata: metadata.map(|m| {
                    m.into_iter().map(|(k, v)| (k, Value::String(v))).collect()
                }),
                request_body: bodies.0,
                response_body: bodies.1,
                body_s3_key: bodies.2,
                billed_response,
            }
        }
    }
}
