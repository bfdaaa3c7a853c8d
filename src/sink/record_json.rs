//! The spool's JSON for a [`RequestRecord`], written by hand.
//!
//! Every accepted request is encoded once on the proxy thread, so this is
//! hot: `serde_json::to_writer` escapes each field name and string byte by
//! byte and formats dates through `fmt`, about 15 000 instructions for a
//! typical record. This writer emits the field names as constants, copies
//! strings that need no escaping in one go, and prints dates and numbers
//! with integer arithmetic: the same JSON document, decoded by the same
//! `serde_json::from_slice::<RequestRecord>` as before (segments written by
//! either encoder read back identically; tests check both ways).

use std::io::Write;

use chrono::{DateTime, Datelike, Timelike, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use crate::store::RequestRecord;

/// Appends `record` as one JSON object to `out`.
pub fn write(record: &RequestRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    uuid(out, &record.id);
    out.extend_from_slice(b",\"api_key_id\":");
    match &record.api_key_id {
        Some(id) => uuid(out, id),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"provider_api_key_hash\":");
    opt_str(out, record.provider_api_key_hash.as_deref());
    out.extend_from_slice(b",\"provider\":");
    str(out, &record.provider);
    out.extend_from_slice(b",\"model\":");
    str(out, &record.model);
    out.extend_from_slice(b",\"request_path\":");
    str(out, &record.request_path);
    out.extend_from_slice(b",\"request_method\":");
    str(out, &record.request_method);
    out.extend_from_slice(b",\"requested_at\":");
    timestamp(out, &record.requested_at);
    out.extend_from_slice(b",\"responded_at\":");
    timestamp(out, &record.responded_at);
    out.extend_from_slice(b",\"response_time_ms\":");
    int(out, record.response_time_ms);
    out.extend_from_slice(b",\"time_to_first_byte_ms\":");
    match record.time_to_first_byte_ms {
        Some(ms) => int(out, ms),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"input_tokens\":");
    int(out, record.input_tokens);
    out.extend_from_slice(b",\"output_tokens\":");
    int(out, record.output_tokens);
    out.extend_from_slice(b",\"cached_tokens\":");
    int(out, record.cached_tokens);
    out.extend_from_slice(b",\"cache_creation_tokens\":");
    int(out, record.cache_creation_tokens);
    out.extend_from_slice(b",\"reasoning_tokens\":");
    int(out, record.reasoning_tokens);
    out.extend_from_slice(b",\"input_cost\":");
    decimal(out, &record.input_cost);
    out.extend_from_slice(b",\"output_cost\":");
    decimal(out, &record.output_cost);
    out.extend_from_slice(b",\"total_cost\":");
    decimal(out, &record.total_cost);
    out.extend_from_slice(b",\"price_found\":");
    boolean(out, record.price_found);
    out.extend_from_slice(b",\"usage_complete\":");
    boolean(out, record.usage_complete);
    out.extend_from_slice(b",\"status_code\":");
    int(out, record.status_code);
    out.extend_from_slice(b",\"error_message\":");
    opt_str(out, record.error_message.as_deref());
    out.extend_from_slice(b",\"raw_metadata\":");
    match &record.raw_metadata {
        Some(map) => {
            out.push(b'{');
            for (i, (name, value)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                str(out, name);
                out.push(b':');
                match value {
                    Value::String(s) => str(out, s),
                    other => json(out, other),
                }
            }
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    // Like the derive's `skip_serializing_if`: absent unless kept.
    if let Some(body) = &record.request_body {
        out.extend_from_slice(b",\"request_body\":");
        str(out, body);
    }
    if let Some(body) = &record.response_body {
        out.extend_from_slice(b",\"response_body\":");
        str(out, body);
    }
    if let Some(key) = &record.body_s3_key {
        out.extend_from_slice(b",\"body_s3_key\":");
        str(out, key);
    }
    out.push(b'}');
}

fn uuid(out: &mut Vec<u8>, id: &Uuid) {
    let mut buf = [0u8; 36];
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

/// A JSON string; one that needs escaping goes through serde_json.
fn str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        json(out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn needs_escape(bytes: &[u8]) -> bool {
    // No early exit, so the loop is vectorised.
    bytes.iter().fold(false, |found, &b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail, and strings and JSON values always serialize.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(n).as_bytes());
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// As `rust_decimal`'s `serde-str` writes it: the decimal's text, quoted
/// (its `Display`: every digit of the scale, `0.` before a fraction).
/// Negative values go through `Display` itself (costs are not negative).
fn decimal(out: &mut Vec<u8>, d: &Decimal) {
    out.push(b'"');
    if d.is_sign_negative() {
        let _ = write!(out, "{d}");
    } else {
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(d.mantissa().unsigned_abs()).as_bytes();
        let scale = d.scale() as usize;
        if scale == 0 {
            out.extend_from_slice(digits);
        } else if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            out.extend_from_slice(int);
            out.push(b'.');
            out.extend_from_slice(frac);
        } else {
            out.extend_from_slice(b"0.");
            out.resize(out.len() + scale - digits.len(), b'0');
            out.extend_from_slice(digits);
        }
    }
    out.push(b'"');
}

/// RFC 3339 in UTC with nanoseconds, `2026-11-27T08:00:00.123456789Z`;
/// what chrono cannot print as plain digits (a leap second, a year outside
/// 0..=9999) goes through chrono's own serializer.
fn timestamp(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    // The naive value once: each accessor of a `DateTime` converts it anew.
    let n = t.naive_utc();
    let year = n.year();
    let nanos = n.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        json(out, t);
        return;
    }
    let mut buf = *b"\"0000-00-00T00:00:00.000000000Z\"";
    digits(&mut buf[1..5], year as u32);
    digits(&mut buf[6..8], n.month());
    digits(&mut buf[9..11], n.day());
    digits(&mut buf[12..14], n.hour());
    digits(&mut buf[15..17], n.minute());
    digits(&mut buf[18..20], n.second());
    digits(&mut buf[21..30], nanos);
    out.extend_from_slice(&buf);
}

/// Writes `n` as exactly `slot.len()` decimal digits (leading zeros).
fn digits(slot: &mut [u8], mut n: u32) {
    for d in slot.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn sample() -> RequestRecord {
        RequestRecord {
            id: Uuid::now_v7(),
            api_key_id: Some(Uuid::now_v7()),
            provider_api_key_hash: Some("3f2a".repeat(16)),
            provider: "openai".into(),
            model: "gpt-4o-2024-08-06".into(),
            request_path: "/v1/chat/completions".into(),
            request_method: "POST".into(),
            requested_at: Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 1).unwrap()
                + chrono::Duration::nanoseconds(123_456_789),
            responded_at: Utc::now(),
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
                    .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                    .collect(),
            ),
            request_body: None,
            response_body: None,
            body_s3_key: None,
        }
    }

    fn written(record: &RequestRecord) -> Vec<u8> {
        let mut out = Vec::new();
        write(record, &mut out);
        out
    }

    /// Both encoders' output decodes to the record, and to each other's.
    fn assert_same_document(record: &RequestRecord) {
        let ours = written(record);
        let theirs = serde_json::to_vec(record).unwrap();
        let from_ours: RequestRecord = serde_json::from_slice(&ours)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&ours)));
        assert_eq!(&from_ours, record);
        let a: Value = serde_json::from_slice(&ours).unwrap();
        let b: Value = serde_json::from_slice(&theirs).unwrap();
        // Same fields and values, except that dates may differ in how many
        // fraction digits they print: compare them decoded.
        let dates = ["requested_at", "responded_at"];
        for (name, value) in a.as_object().unwrap() {
            if dates.contains(&name.as_str()) {
                let t = |v: &Value| DateTime::<Utc>::from_str(v.as_str().unwrap()).unwrap();
                assert_eq!(t(value), t(&b[name]), "{name}");
            } else {
                assert_eq!(value, &b[name], "{name}");
            }
        }
        assert_eq!(a.as_object().unwrap().len(), b.as_object().unwrap().len());
    }

    #[test]
    fn typical_record_is_the_derived_document() {
        assert_same_document(&sample());
    }

    #[test]
    fn nulls_bodies_and_escapes() {
        let mut r = sample();
        r.api_key_id = None;
        r.provider_api_key_hash = None;
        r.time_to_first_byte_ms = None;
        r.raw_metadata = None;
        r.error_message = Some("upstream said \"no\"\n\tbad \\ path \u{1} é ✓".into());
        r.model = "weird\"model\\".into();
        r.request_body = Some("{\"a\":\"\u{7f}\u{0}\"}".into());
        r.response_body = Some(String::new());
        r.body_s3_key = Some("k/2026-11-27/x.json.gz".into());
        r.input_cost = Decimal::from_str("-0.5").unwrap();
        r.status_code = -1;
        r.input_tokens = i64::MIN;
        r.output_tokens = i64::MAX;
        assert_same_document(&r);
        let mut m = serde_json::Map::new();
        m.insert("n".into(), Value::from(5));
        m.insert("q\"".into(), Value::String("v\n".into()));
        r.raw_metadata = Some(m);
        assert_same_document(&r);
    }

    #[test]
    fn dates_at_the_edges() {
        let mut r = sample();
        for t in [
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
                + chrono::Duration::nanoseconds(999_999_999),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-5, 3, 1, 0, 0, 0).unwrap(),
            // A leap second, as chrono represents one.
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                .unwrap()
                .and_utc(),
        ] {
            r.requested_at = t;
            assert_same_document(&r);
        }
    }

    #[test]
    fn costs_keep_every_digit_of_their_scale() {
        for text in [
            "0",
            "0.000",
            "0.0001",
            "0.000440",
            "1.5",
            "12345.678900",
            "7",
            "-0.5",
            "-0",
            "79228162514264337593543950335",
            "0.0000000000000000000000000001",
        ] {
            let d = Decimal::from_str(text).unwrap();
            let mut out = Vec::new();
            decimal(&mut out, &d);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("\"{d}\""),
                "{text}"
            );
        }
    }

    proptest! {
        #[test]
        fn decimals_are_written_as_their_display(
            lo in any::<u32>(), mid in any::<u32>(), hi in any::<u32>(),
            negative in any::<bool>(), scale in 0u32..=28,
        ) {
            let d = Decimal::from_parts(lo, mid, hi, negative, scale);
            let mut out = Vec::new();
            decimal(&mut out, &d);
            prop_assert_eq!(String::from_utf8(out).unwrap(), format!("\"{d}\""));
        }

        #[test]
        fn any_strings_and_numbers(
            model in ".{0,40}",
            error in proptest::option::of(".{0,60}"),
            meta in proptest::collection::btree_map("[a-z\"\\\\\\x00-\\x1f]{1,8}", ".{0,12}", 0..4),
            tokens in any::<i64>(),
            ms in any::<i32>(),
            nanos in 0i64..4_000_000_000_000_000_000,
        ) {
            let mut r = sample();
            r.model = model;
            r.error_message = error;
            r.raw_metadata = Some(meta.into_iter().map(|(k, v)| (k, Value::String(v))).collect());
            r.input_tokens = tokens;
            r.response_time_ms = ms;
            r.responded_at = DateTime::from_timestamp_nanos(nanos);
            assert_same_document(&r);
        }
    }
}
