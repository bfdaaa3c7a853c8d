//! The spool's binary record: a [`RequestRecord`] as fixed-width fields and
//! length-prefixed strings.
//!
//! Every accepted request is encoded once on the proxy thread. The JSON
//! document the spool held before (hand-written, `.seg` segments) cost about
//! 2 300 instructions a record: UUIDs in hyphenated hex, dates in RFC 3339,
//! costs as decimal text, then a checksum over ~800 bytes. Here each field is
//! a copy of its bytes, and the record is less than half the size (344
//! bytes for the first of `RequestRecord::samples`, 756 as JSON).
//!
//! # Layout (version 1; integers little-endian)
//!
//! ```text
//! version                u8   = 1
//! flags                  u8   1 api_key_id, 2 time_to_first_byte_ms,
//!                             4 price_found, 8 usage_complete, 16 billed_response
//! id                     [16]
//! api_key_id             [16] when flag 1
//! requested_at           i64 seconds, u32 nanoseconds (since the Unix epoch)
//! responded_at           i64, u32
//! response_time_ms       i32
//! time_to_first_byte_ms  i32  when flag 2
//! status_code            i32
//! input, output, cached, cache_creation, reasoning tokens   5 × i64
//! input, output, total cost                                 3 × [16] (rust_decimal's serialized form)
//! provider_api_key_hash, provider, model, request_path, request_method,
//! error_message, raw_metadata (its JSON text), request_body, response_body,
//! body_s3_key            each u32 length + UTF-8 bytes; u32::MAX = absent
//! billed_response        u32 length + UTF-8 bytes, when flag 16
//! ```
//!
//! A reader refuses a version it does not know, bytes left over, a string
//! that is not UTF-8, a date or decimal out of range: the spool then
//! dead-letters the record's bytes. A later version must keep reading
//! version 1 records (segments survive an upgrade). Flag 16 came later
//! within version 1: a record without it reads as before; a build older
//! than it refuses (dead-letters) a record with it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::store::RequestRecord;

/// The layout this module writes.
const VERSION: u8 = 1;

const HAS_API_KEY: u8 = 1;
const HAS_TTFB: u8 = 2;
const PRICE_FOUND: u8 = 4;
const USAGE_COMPLETE: u8 = 8;
const BILLS_RESPONSE: u8 = 16;
const KNOWN_FLAGS: u8 = HAS_API_KEY | HAS_TTFB | PRICE_FOUND | USAGE_COMPLETE | BILLS_RESPONSE;

/// The length written for an absent string.
const ABSENT: u32 = u32::MAX;

/// Appends `record` to `out`.
pub fn write(record: &RequestRecord, out: &mut Vec<u8>) {
    let mut flags = 0;
    if record.api_key_id.is_some() {
        flags |= HAS_API_KEY;
    }
    if record.time_to_first_byte_ms.is_some() {
        flags |= HAS_TTFB;
    }
    if record.price_found {
        flags |= PRICE_FOUND;
    }
    if record.usage_complete {
        flags |= USAGE_COMPLETE;
    }
    if record.billed_response.is_some() {
        flags |= BILLS_RESPONSE;
    }
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(record.id.as_bytes());
    if let Some(id) = &record.api_key_id {
        out.extend_from_slice(id.as_bytes());
    }
    timestamp(out, &record.requested_at);
    timestamp(out, &record.responded_at);
    out.extend_from_slice(&record.response_time_ms.to_le_bytes());
    if let Some(ms) = record.time_to_first_byte_ms {
        out.extend_from_slice(&ms.to_le_bytes());
    }
    out.extend_from_slice(&record.status_code.to_le_bytes());
    for n in [
        record.input_tokens,
        record.output_tokens,
        record.cached_tokens,
        record.cache_creation_tokens,
        record.reasoning_tokens,
    ] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    for d in [&record.input_cost, &record.output_cost, &record.total_cost] {
        out.extend_from_slice(&d.serialize());
    }
    opt_str(out, record.provider_api_key_hash.as_deref());
    str(out, &record.provider);
    str(out, &record.model);
    str(out, &record.request_path);
    str(out, &record.request_method);
    opt_str(out, record.error_message.as_deref());
    match &record.raw_metadata {
        Some(map) => {
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            // Writing into a Vec cannot fail, and a JSON map always serializes.
            let _ = serde_json::to_writer(&mut *out, map);
            let len = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
    }
    opt_str(out, record.request_body.as_deref());
    opt_str(out, record.response_body.as_deref());
    opt_str(out, record.body_s3_key.as_deref());
    if let Some(id) = &record.billed_response {
        str(out, id);
    }
}

fn timestamp(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    out.extend_from_slice(&t.timestamp().to_le_bytes());
    // Above 999 999 999 for a leap second, as chrono represents one.
    out.extend_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
}

fn str(out: &mut Vec<u8>, s: &str) {
    // A string too long for its u32 length would make the record larger than
    // spool::MAX_RECORD_BYTES (4 MiB), which spool::encode refuses before the
    // record is written: a truncated length never reaches a segment.
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => str(out, s),
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

/// Why a payload is not a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Undecodable {
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    #[error("record ends inside its {0}")]
    Short(&'static str),
    #[error("{0} is absent")]
    Missing(&'static str),
    #[error("{0} bytes after the record's last field")]
    Trailing(usize),
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    #[error("raw_metadata is not a JSON object: {0}")]
    Metadata(String),
}

/// Reads one record written by [`write`].
pub fn read(payload: &[u8]) -> Result<RequestRecord, Undecodable> {
    let mut r = Reader { rest: payload };
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(Undecodable::Version(version));
    }
    let flags = r.u8("flags")?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(Undecodable::Flags(flags));
    }
    let id = r.uuid("id")?;
    let api_key_id = match flags & HAS_API_KEY {
        0 => None,
        _ => Some(r.uuid("api_key_id")?),
    };
    let requested_at = r.timestamp("requested_at")?;
    let responded_at = r.timestamp("responded_at")?;
    let response_time_ms = i32::from_le_bytes(r.array("response_time_ms")?);
    let time_to_first_byte_ms = match flags & HAS_TTFB {
        0 => None,
        _ => Some(i32::from_le_bytes(r.array("time_to_first_byte_ms")?)),
    };
    let status_code = i32::from_le_bytes(r.array("status_code")?);
    let mut tokens = [0i64; 5];
    for n in &mut tokens {
        *n = i64::from_le_bytes(r.array("token counts")?);
    }
    let mut costs = [Decimal::ZERO; 3];
    for d in &mut costs {
        *d = r.decimal()?;
    }
    let provider_api_key_hash = r.opt_string("provider_api_key_hash")?;
    let provider = r.string("provider")?;
    let model = r.string("model")?;
    let request_path = r.string("request_path")?;
    let request_method = r.string("request_method")?;
    let error_message = r.opt_string("error_message")?;
    let raw_metadata = match r.opt_bytes("raw_metadata")? {
        None => None,
        Some(text) => {
            Some(serde_json::from_slice(text).map_err(|e| Undecodable::Metadata(e.to_string()))?)
        }
    };
    let request_body = r.opt_string("request_body")?;
    let response_body = r.opt_string("response_body")?;
    let body_s3_key = r.opt_string("body_s3_key")?;
    let billed_response = match flags & BILLS_RESPONSE {
        0 => None,
        _ => Some(r.string("billed_response")?),
    };
    if !r.rest.is_empty() {
        return Err(Undecodable::Trailing(r.rest.len()));
    }
    let [input_tokens, output_tokens, cached_tokens, cache_creation_tokens, reasoning_tokens] =
        tokens;
    let [input_cost, output_cost, total_cost] = costs;
    Ok(RequestRecord {
        id,
        api_key_id,
        provider_api_key_hash,
        provider,
        model,
        request_path,
        request_method,
        requested_at,
        responded_at,
        response_time_ms,
        time_to_first_byte_ms,
        input_tokens,
        output_tokens,
        cached_tokens,
        cache_creation_tokens,
        reasoning_tokens,
        input_cost,
        output_cost,
        total_cost,
        price_found: flags & PRICE_FOUND != 0,
        usage_complete: flags & USAGE_COMPLETE != 0,
        status_code,
        error_message,
        raw_metadata,
        request_body,
        response_body,
        body_s3_key,
        billed_response,
    })
}

/// A cursor over a payload; each read names the field it is for.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Undecodable> {
        if self.rest.len() < n {
            return Err(Undecodable::Short(field));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Undecodable> {
        let bytes = self.bytes(N, field)?;
        Ok(bytes.try_into().unwrap_or([0; N]))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, Undecodable> {
        Ok(self.array::<1>(field)?[0])
    }

    fn uuid(&mut self, field: &'static str) -> Result<Uuid, Undecodable> {
        Ok(Uuid::from_bytes(self.array(field)?))
    }

    fn timestamp(&mut self, field: &'static str) -> Result<DateTime<Utc>, Undecodable> {
        let secs = i64::from_le_bytes(self.array(field)?);
        let nanos = u32::from_le_bytes(self.array(field)?);
        DateTime::from_timestamp(secs, nanos).ok_or(Undecodable::OutOfRange(field))
    }

    fn decimal(&mut self) -> Result<Decimal, Undecodable> {
        let bytes = self.array::<16>("costs")?;
        let d = Decimal::deserialize(bytes);
        // `deserialize` masks unused bits and clamps the scale: only bytes
        // that `serialize` can have written read back as themselves.
        if d.serialize() != bytes {
            return Err(Undecodable::OutOfRange("costs"));
        }
        Ok(d)
    }

    fn opt_bytes(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, Undecodable> {
        let len = u32::from_le_bytes(self.array(field)?);
        if len == ABSENT {
            return Ok(None);
        }
        self.bytes(len as usize, field).map(Some)
    }

    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, Undecodable> {
        match self.opt_bytes(field)? {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b)
                .map(|s| Some(s.to_owned()))
                .map_err(|_| Undecodable::NotUtf8(field)),
        }
    }

    fn string(&mut self, field: &'static str) -> Result<String, Undecodable> {
        self.opt_string(field)?.ok_or(Undecodable::Missing(field))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn written(record: &RequestRecord) -> Vec<u8> {
        let mut out = Vec::new();
        write(record, &mut out);
        out
    }

    /// The samples, and one naming the background response it bills.
    fn shapes() -> Vec<RequestRecord> {
        let mut records = RequestRecord::samples();
        let mut billing = records[1].clone();
        billing.billed_response = Some("resp_\"é\u{1}".into());
        records.push(billing);
        records
    }

    #[test]
    fn records_of_every_shape_read_back_as_written() {
        for record in shapes() {
            assert_eq!(read(&written(&record)), Ok(record));
        }
    }

    #[test]
    fn a_record_without_the_billed_response_flag_reads_as_before_it() {
        let record = RequestRecord::samples().remove(0);
        let bytes = written(&record);
        assert_eq!(bytes[1] & BILLS_RESPONSE, 0);
        let mut billing = record.clone();
        billing.billed_response = Some("resp_1".into());
        let longer = written(&billing);
        assert_eq!(longer.len(), bytes.len() + 4 + 6, "one string more");
        assert_eq!(&longer[2..bytes.len()], &bytes[2..], "the rest as before");
    }

    #[test]
    fn the_sample_record_is_less_than_half_its_json() {
        // The module doc's figures: the first sample record in this format,
        // and as the JSON encoder wrote it (the committed segment's first
        // record, whose length is the segment's first four bytes).
        let json = include_bytes!("../../tests/fixtures/spool/0001795766401000-4242-000001.seg");
        let json_len = u32::from_le_bytes([json[0], json[1], json[2], json[3]]);
        let binary_len = written(&RequestRecord::samples()[0]).len();
        assert_eq!((binary_len, json_len), (344, 756));
    }

    #[test]
    fn a_negative_zero_cost_keeps_its_sign() {
        let mut r = RequestRecord::plain();
        r.input_cost = -Decimal::ZERO;
        assert!(r.input_cost.is_sign_negative());
        let back = read(&written(&r)).unwrap();
        assert!(back.input_cost.is_sign_negative());
    }

    #[test]
    fn every_cut_of_a_record_is_refused() {
        for record in shapes() {
            let bytes = written(&record);
            for cut in 0..bytes.len() {
                assert!(
                    matches!(read(&bytes[..cut]), Err(Undecodable::Short(_))),
                    "cut at {cut} of {}",
                    bytes.len()
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(read(&longer), Err(Undecodable::Trailing(1)));
        }
    }

    #[test]
    fn an_unknown_version_or_flag_is_refused() {
        let mut bytes = written(&RequestRecord::plain());
        bytes[0] = 2;
        assert_eq!(read(&bytes), Err(Undecodable::Version(2)));
        bytes[0] = VERSION;
        bytes[1] |= 0x20;
        assert!(matches!(read(&bytes), Err(Undecodable::Flags(_))));
    }

    #[test]
    fn fields_out_of_range_are_refused() {
        let r = RequestRecord::plain();
        let bytes = written(&r);
        // requested_at's nanoseconds: after version, flags, id.
        let mut bad = bytes.clone();
        bad[2 + 16 + 8..2 + 16 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read(&bad), Err(Undecodable::OutOfRange("requested_at")));
        // The first cost's scale byte (its flags word, byte 2): above 28.
        let costs = 2 + 16 + 2 * 12 + 4 + 4 + 5 * 8;
        let mut bad = bytes.clone();
        bad[costs + 2] = 29;
        assert_eq!(read(&bad), Err(Undecodable::OutOfRange("costs")));
        // The provider (after the absent key hash's length): not UTF-8.
        let provider = costs + 3 * 16 + 4;
        let mut bad = bytes.clone();
        bad[provider + 4] = 0xff;
        assert_eq!(read(&bad), Err(Undecodable::NotUtf8("provider")));
        // The provider's length: absent.
        let mut bad = bytes;
        bad[provider..provider + 4].copy_from_slice(&ABSENT.to_le_bytes());
        assert_eq!(read(&bad), Err(Undecodable::Missing("provider")));
    }

    #[test]
    fn metadata_that_is_not_an_object_is_refused() {
        let mut r = RequestRecord::plain();
        r.raw_metadata = Some(serde_json::Map::new());
        let bytes = written(&r);
        // The empty object `{}` is the metadata's text; make it `[]`.
        let at = bytes
            .windows(6)
            .position(|w| w == [2, 0, 0, 0, b'{', b'}'])
            .unwrap();
        let mut bad = bytes;
        bad[at + 4] = b'[';
        bad[at + 5] = b']';
        assert!(matches!(read(&bad), Err(Undecodable::Metadata(_))));
    }

    proptest! {
        #[test]
        fn any_record_reads_back_as_written(
            r in crate::store::record::strategy::record(),
            leap in any::<bool>(),
        ) {
            let mut r = r;
            if leap {
                // chrono's leap second: nanoseconds past 999 999 999 at :59.
                let t = r.requested_at.timestamp();
                let t = t - t.rem_euclid(60) + 59;
                if let Some(at) = DateTime::from_timestamp(t, 1_500_000_000) {
                    r.requested_at = at;
                }
            }
            prop_assert_eq!(read(&written(&r)), Ok(r));
        }

        /// Damaged bytes (the checksum missed them) are refused or read as
        /// some record; they never panic.
        #[test]
        fn damaged_bytes_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let mut bytes = written(&RequestRecord::samples()[1]);
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            let _ = read(&bytes);
        }
    }
}
