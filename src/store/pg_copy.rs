//! The binary `COPY` encoding of request records.
//!
//! [`write_row`] writes one `llm_requests` row, field by field in
//! [`COPY_COLUMNS`] order, straight into the buffer that goes to PostgreSQL.
//! The bytes are what tokio-postgres' generic `BinaryCopyInWriter` wrote
//! through each field's `ToSql` (a test compares the two on generated
//! records), without its dynamic dispatch, type check and back-patched length
//! per field: a row took ~4 100 instructions on the sink's thread that way,
//! ~1 500 this way (`benches/load/instructions.sh`).
//!
//! Format (PostgreSQL's "Binary Format" of `COPY`): a header, then per row an
//! `i16` field count and per field an `i32` byte length (`-1` for NULL)
//! followed by the value in the type's binary send format, then an `i16` -1.

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use super::RequestRecord;

/// The columns of a row, in the order [`write_row`] writes them.
pub const COPY_COLUMNS: &str = "id, majordomo_api_key_id, provider_api_key_hash, provider, model, \
    request_path, request_method, requested_at, responded_at, response_time_ms, \
    time_to_first_byte_ms, input_tokens, output_tokens, cached_tokens, cache_creation_tokens, \
    reasoning_tokens, input_cost, output_cost, total_cost, price_found, usage_complete, \
    status_code, error_message, raw_metadata, indexed_metadata, request_body, response_body, body_s3_key";

const FIELDS: i16 = 28;
const MAGIC: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// PostgreSQL's timestamps count microseconds from 2000-01-01 00:00 UTC.
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// A record that no `COPY` can carry.
#[derive(Debug, thiserror::Error)]
#[error("request record {id}: {what} is too large for a PostgreSQL COPY")]
pub struct Unencodable {
    id: Uuid,
    what: &'static str,
}

/// The start of a binary `COPY` stream: signature, flags, no extension.
pub fn write_header(out: &mut BytesMut) {
    out.put_slice(MAGIC);
    out.put_i32(0);
    out.put_i32(0);
}

/// The end of a binary `COPY` stream.
pub fn write_trailer(out: &mut BytesMut) {
    out.put_i16(-1);
}

/// Appends one row. `indexed_names` are the metadata names active for the
/// record's key: `indexed_metadata` holds only those (`{}` when none).
/// On error `out` may hold part of the row; the copy must be abandoned.
pub fn write_row(
    out: &mut BytesMut,
    r: &RequestRecord,
    indexed_names: &[String],
) -> Result<(), Unencodable> {
    let fail = |what| Unencodable { id: r.id, what };
    out.put_i16(FIELDS);
    uuid(out, &r.id);
    match &r.api_key_id {
        Some(id) => uuid(out, id),
        None => null(out),
    }
    opt_text(out, r.provider_api_key_hash.as_deref()).map_err(|()| fail("the key hash"))?;
    text(out, &r.provider).map_err(|()| fail("the provider"))?;
    text(out, &r.model).map_err(|()| fail("the model"))?;
    text(out, &r.request_path).map_err(|()| fail("the path"))?;
    text(out, &r.request_method).map_err(|()| fail("the method"))?;
    timestamp(out, &r.requested_at).map_err(|()| fail("requested_at"))?;
    timestamp(out, &r.responded_at).map_err(|()| fail("responded_at"))?;
    int4(out, r.response_time_ms);
    match r.time_to_first_byte_ms {
        Some(ms) => int4(out, ms),
        None => null(out),
    }
    for n in [
        r.input_tokens,
        r.output_tokens,
        r.cached_tokens,
        r.cache_creation_tokens,
        r.reasoning_tokens,
    ] {
        out.put_i32(8);
        out.put_i64(n);
    }
    numeric(out, &r.input_cost);
    numeric(out, &r.output_cost);
    numeric(out, &r.total_cost);
    boolean(out, r.price_found);
    boolean(out, r.usage_complete);
    int4(out, r.status_code);
    opt_text(out, r.error_message.as_deref()).map_err(|()| fail("the error message"))?;
    match &r.raw_metadata {
        Some(map) => {
            jsonb(out, |w| serde_json::to_writer(w, map)).map_err(|()| fail("the metadata"))?
        }
        None => null(out),
    }
    let indexed = r
        .raw_metadata
        .iter()
        .flat_map(|m| m.iter())
        .filter(|(name, _)| indexed_names.iter().any(|n| n == *name));
    jsonb(out, |w| serde_json::to_writer(w, &JsonObject(indexed)))
        .map_err(|()| fail("the indexed metadata"))?;
    opt_text(out, r.request_body.as_deref()).map_err(|()| fail("the request body"))?;
    opt_text(out, r.response_body.as_deref()).map_err(|()| fail("the response body"))?;
    opt_text(out, r.body_s3_key.as_deref()).map_err(|()| fail("the body's S3 key"))?;
    Ok(())
}

fn null(out: &mut BytesMut) {
    out.put_i32(-1);
}

fn uuid(out: &mut BytesMut, id: &Uuid) {
    out.put_i32(16);
    out.put_slice(id.as_bytes());
}

fn int4(out: &mut BytesMut, n: i32) {
    out.put_i32(4);
    out.put_i32(n);
}

fn boolean(out: &mut BytesMut, b: bool) {
    out.put_i32(1);
    out.put_u8(u8::from(b));
}

/// A field's length as the format's `i32`; a value of 2 GiB or more has none.
fn field_len(len: usize) -> Result<i32, ()> {
    i32::try_from(len).map_err(|_| ())
}

/// `TEXT`. PostgreSQL's text cannot hold NUL and refuses a row with one
/// whole, so each is written as U+FFFD: an upstream's error message or a
/// stored body with a NUL in it must not make its row unwritable.
fn text(out: &mut BytesMut, s: &str) -> Result<(), ()> {
    if memchr::memchr(0, s.as_bytes()).is_some() {
        let s = s.replace('\0', "\u{fffd}");
        out.put_i32(field_len(s.len())?);
        out.put_slice(s.as_bytes());
    } else {
        out.put_i32(field_len(s.len())?);
        out.put_slice(s.as_bytes());
    }
    Ok(())
}

fn opt_text(out: &mut BytesMut, s: Option<&str>) -> Result<(), ()> {
    match s {
        Some(s) => text(out, s),
        None => {
            null(out);
            Ok(())
        }
    }
}

/// `TIMESTAMPTZ`: microseconds since PostgreSQL's epoch, truncated toward
/// zero as chrono's `num_microseconds` does (what tokio-postgres sends).
fn timestamp(out: &mut BytesMut, t: &DateTime<Utc>) -> Result<(), ()> {
    let epoch = DateTime::from_timestamp(PG_EPOCH_UNIX_SECS, 0).ok_or(())?;
    let micros = t
        .signed_duration_since(epoch)
        .num_microseconds()
        .ok_or(())?;
    out.put_i32(8);
    out.put_i64(micros);
    Ok(())
}

/// `JSONB`: the format version byte, then the JSON text written by `write`.
fn jsonb(
    out: &mut BytesMut,
    write: impl FnOnce(&mut bytes::buf::Writer<&mut BytesMut>) -> serde_json::Result<()>,
) -> Result<(), ()> {
    let at = out.len();
    out.put_i32(0);
    out.put_u8(1);
    write(&mut out.writer()).map_err(|_| ())?;
    let len = field_len(out.len() - at - 4)?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Serialises an iterator of entries as one JSON object.
struct JsonObject<I>(I);

impl<'a, I> serde::Serialize for JsonObject<I>
where
    I: Iterator<Item = (&'a String, &'a Value)> + Clone,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.clone())
    }
}

/// Base-10 000 digits of the largest mantissa (96 bits, 29 decimal digits,
/// times up to 1 000 to align the scale).
const MAX_GROUPS: usize = 8;

/// `NUMERIC`: digit count, weight of the first base-10 000 digit, sign,
/// display scale, digits; the same groups rust_decimal's `ToSql` sends (the
/// fraction padded to whole groups, trailing zero groups after the point
/// dropped when the number has an integer part), with no allocation.
fn numeric(out: &mut BytesMut, d: &Decimal) {
    if d.is_zero() {
        out.put_i32(8);
        out.put_slice(&[0; 8]);
        return;
    }
    let scale = d.scale() as u16;
    let mut mantissa = d.mantissa().unsigned_abs();
    let pad = (4 - scale % 4) % 4;
    mantissa *= 10u128.pow(u32::from(pad));
    // Least significant group first.
    let mut groups = [0u16; MAX_GROUPS];
    let mut n = 0;
    // In 64 bits (every cost) the divisions by a constant are multiplications.
    while mantissa > u128::from(u64::MAX) {
        groups[n] = (mantissa % 10_000) as u16;
        mantissa /= 10_000;
        n += 1;
    }
    let mut small = mantissa as u64;
    while small != 0 {
        groups[n] = (small % 10_000) as u16;
        small /= 10_000;
        n += 1;
    }
    let fraction_groups = scale.div_ceil(4) as usize;
    let weight = n as i16 - fraction_groups as i16 - 1;
    // Trailing zero groups after the point, only when there is an integer part.
    let mut skip = 0;
    if weight >= 0 {
        while skip < fraction_groups && groups[skip] == 0 {
            skip += 1;
        }
    }
    let digits = &groups[skip..n];
    out.put_i32(8 + 2 * digits.len() as i32);
    out.put_u16(digits.len() as u16);
    out.put_i16(weight);
    out.put_u16(if d.is_sign_negative() { 0x4000 } else { 0 });
    out.put_u16(scale);
    for g in digits.iter().rev() {
        out.put_u16(*g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Map;
    use tokio_postgres::types::{IsNull, ToSql, Type};

    /// The field types of [`COPY_COLUMNS`], as tokio-postgres checks them.
    const TYPES: [Type; 28] = [
        Type::UUID,
        Type::UUID,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::INT4,
        Type::INT4,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::BOOL,
        Type::BOOL,
        Type::INT4,
        Type::TEXT,
        Type::JSONB,
        Type::JSONB,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
    ];

    /// The record as PostgreSQL can hold it: every NUL of its text as U+FFFD.
    fn nul_free(r: &RequestRecord) -> RequestRecord {
        let clean = |s: &mut String| *s = s.replace('\0', "\u{fffd}");
        let mut r = r.clone();
        for s in [
            &mut r.provider,
            &mut r.model,
            &mut r.request_path,
            &mut r.request_method,
        ] {
            clean(s);
        }
        for s in [
            &mut r.provider_api_key_hash,
            &mut r.error_message,
            &mut r.request_body,
            &mut r.response_body,
            &mut r.body_s3_key,
        ]
        .into_iter()
        .flatten()
        {
            clean(s);
        }
        r
    }

    /// The row as tokio-postgres' `BinaryCopyInWriter` frames it: each field
    /// through `ToSql::to_sql_checked` for its column's type (NUL-free text:
    /// tokio-postgres sends a NUL as it is, and PostgreSQL refuses it).
    fn reference_row(r: &RequestRecord, indexed_names: &[String]) -> BytesMut {
        let r = &nul_free(r);
        let indexed: Map<String, Value> = r
            .raw_metadata
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _)| indexed_names.contains(name))
            .collect();
        let raw = r.raw_metadata.clone().map(Value::Object);
        let indexed = Value::Object(indexed);
        let fields: [&(dyn ToSql + Sync); 28] = [
            &r.id,
            &r.api_key_id,
            &r.provider_api_key_hash,
            &r.provider,
            &r.model,
            &r.request_path,
            &r.request_method,
            &r.requested_at,
            &r.responded_at,
            &r.response_time_ms,
            &r.time_to_first_byte_ms,
            &r.input_tokens,
            &r.output_tokens,
            &r.cached_tokens,
            &r.cache_creation_tokens,
            &r.reasoning_tokens,
            &r.input_cost,
            &r.output_cost,
            &r.total_cost,
            &r.price_found,
            &r.usage_complete,
            &r.status_code,
            &r.error_message,
            &raw,
            &indexed,
            &r.request_body,
            &r.response_body,
            &r.body_s3_key,
        ];
        let mut out = BytesMut::new();
        out.put_i16(FIELDS);
        for (value, ty) in fields.iter().zip(&TYPES) {
            let at = out.len();
            out.put_i32(0);
            let len = match value.to_sql_checked(ty, &mut out).unwrap() {
                IsNull::Yes => -1,
                IsNull::No => (out.len() - at - 4) as i32,
            };
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        out
    }

    fn ours(r: &RequestRecord, indexed_names: &[String]) -> BytesMut {
        let mut out = BytesMut::new();
        write_row(&mut out, r, indexed_names).unwrap();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_row_is_byte_for_byte_what_tokio_postgres_writes(
            r in crate::store::record::strategy::record(),
            pick in any::<[bool; 4]>(),
        ) {
            // Active names: some of the record's metadata names, and one it lacks.
            let mut names: Vec<String> = r.raw_metadata.iter()
                .flat_map(|m| m.keys())
                .zip(pick)
                .filter(|(_, p)| *p)
                .map(|(k, _)| k.clone())
                .collect();
            names.push("absent".into());
            prop_assert_eq!(ours(&r, &names), reference_row(&r, &names));
        }

        #[test]
        fn a_cost_is_the_numeric_rust_decimal_sends(d in crate::store::record::strategy::decimal()) {
            let mut reference = BytesMut::new();
            d.to_sql(&Type::NUMERIC, &mut reference).unwrap();
            let mut mine = BytesMut::new();
            numeric(&mut mine, &d);
            prop_assert_eq!(&mine[4..], &reference[..]);
            prop_assert_eq!(mine.len() - 4, reference.len());
        }
    }

    #[test]
    fn the_plain_record_and_its_edge_values_match_too() {
        let mut r = RequestRecord::plain();
        assert_eq!(ours(&r, &[]), reference_row(&r, &[]));
        for d in [
            Decimal::ZERO,
            Decimal::new(-0, 5),
            Decimal::MAX,
            Decimal::MIN,
            Decimal::new(1, 28),
            Decimal::new(10_000, 0),
            Decimal::new(100_000_000, 4),
            Decimal::new(25, 6),
            // Below one, with a zero group after the point: kept.
            Decimal::new(10_000, 8),
            Decimal::new(-1_000_000, 10),
        ] {
            r.input_cost = d;
            assert_eq!(ours(&r, &[]), reference_row(&r, &[]), "{d}");
        }
        // Every instant chrono can hold has a PostgreSQL timestamp.
        for t in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
            r.requested_at = t;
            assert_eq!(ours(&r, &[]), reference_row(&r, &[]), "{t}");
        }
    }

    #[test]
    fn a_nul_in_any_text_is_written_as_a_replacement_character() {
        let mut r = RequestRecord::plain();
        r.model = "gpt\0x".into();
        r.error_message = Some("bad model \"gpt\0x\"".into());
        r.request_body = Some("{\"a\":\"\0\"}".into());
        r.response_body = Some("\0".into());
        let row = ours(&r, &[]);
        assert_eq!(row, reference_row(&r, &[]));
        let clean = nul_free(&r);
        assert_eq!(
            clean.error_message.as_deref(),
            Some("bad model \"gpt\u{fffd}x\"")
        );
        assert_eq!(clean.response_body.as_deref(), Some("\u{fffd}"));
        // The replacement is in the row, the NUL is not.
        let row = String::from_utf8_lossy(&row);
        assert!(row.contains("bad model \"gpt\u{fffd}x\""), "{row}");
        assert!(!row.contains("gpt\0x"), "{row}");
    }

    #[test]
    fn a_field_of_two_gib_or_more_has_no_length() {
        assert_eq!(field_len(0), Ok(0));
        assert_eq!(field_len(i32::MAX as usize), Ok(i32::MAX));
        assert_eq!(field_len(i32::MAX as usize + 1), Err(()));
    }

    #[test]
    fn a_stream_is_framed_by_the_signature_and_the_end_marker() {
        let mut out = BytesMut::new();
        write_header(&mut out);
        write_trailer(&mut out);
        assert_eq!(&out[..], b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0\xff\xff");
    }
}
