//! The two JSON formats price data arrives in.
//!
//! **llm-prices.com `current-v1.json`** (remote, or a downloaded copy as
//! `pricing.file`):
//! `{"updated_at": "2026-08-05", "prices": [{"id", "vendor", "name", "input",
//! "output", "input_cached"}]}`, prices as JSON numbers (USD per million
//! tokens), `input_cached` possibly null. This is someone else's data fetched
//! over the network, so it is read leniently: an unusable entry is skipped
//! (and counted in a log line); only a file with no usable entry is rejected.
//!
//! **majordomo snapshot** (`conf/prices.json`, bundled; or `pricing.file`):
//! ```json
//! {"format": "majordomo-prices/1", "source": "...", "as_of": "2026-08-05",
//!  "models": [{"id": "gpt-4o", "vendor": "openai",
//!              "input": "2.5", "output": "10", "input_cached": "1.25"}],
//!  "aliases": [{"id": "claude-sonnet-4", "same_as": "claude-sonnet-4.5", "why": "..."}]}
//! ```
//! Prices are decimal strings (numbers are accepted too); `input_cached` may
//! be null or absent; `aliases` is optional. Snapshots are ours, so they are
//! read strictly: one bad entry rejects the file, naming the entry.
//!
//! JSON numbers become decimals through their shortest decimal text
//! (`0.035` stays `0.035`), never through float arithmetic.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use super::{Price, PricingError};

/// The snapshot `format` this build reads and writes.
pub(crate) const SNAPSHOT_FORMAT: &str = "majordomo-prices/1";

/// Prices above this (USD per million tokens) are taken for data errors.
/// The priciest model in the data is $600; the cap also keeps every cost
/// computation far from `Decimal`'s range.
const MAX_PRICE_PER_MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// Longest model id accepted.
const MAX_ID_LEN: usize = 200;

/// One table's worth of parsed facts, before indexing.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub entries: BTreeMap<String, Price>,
    pub aliases: BTreeMap<String, String>,
    pub source: String,
    pub updated_at: Option<String>,
}

/// Which of the two formats a JSON document is in.
pub(crate) fn parse_any(bytes: &[u8]) -> Result<Parsed, PricingError> {
    let doc = parse_json(bytes)?;
    let obj = doc
        .as_object()
        .ok_or_else(|| PricingError::Shape("the top level is not an object".into()))?;
    if obj.contains_key("models") {
        parse_snapshot_value(&doc)
    } else if obj.contains_key("prices") {
        parse_llm_prices_value(&doc)
    } else {
        Err(PricingError::Shape(
            "neither a `models` list (majordomo snapshot) nor a `prices` list (llm-prices)".into(),
        ))
    }
}

pub(crate) fn parse_llm_prices(bytes: &[u8]) -> Result<Parsed, PricingError> {
    parse_llm_prices_value(&parse_json(bytes)?)
}

pub(crate) fn parse_snapshot(bytes: &[u8]) -> Result<Parsed, PricingError> {
    parse_snapshot_value(&parse_json(bytes)?)
}

fn parse_json(bytes: &[u8]) -> Result<Value, PricingError> {
    serde_json::from_slice(bytes).map_err(PricingError::Json)
}

fn parse_llm_prices_value(doc: &Value) -> Result<Parsed, PricingError> {
    let obj = doc
        .as_object()
        .ok_or_else(|| PricingError::Shape("the top level is not an object".into()))?;
    let prices = obj
        .get("prices")
        .ok_or_else(|| PricingError::Shape("no `prices` field".into()))?
        .as_array()
        .ok_or_else(|| PricingError::Shape("`prices` is not an array".into()))?;
    if prices.is_empty() {
        return Err(PricingError::Empty);
    }
    let updated_at = obj
        .get("updated_at")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);

    let mut entries = BTreeMap::new();
    let mut skipped = 0usize;
    for (index, raw) in prices.iter().enumerate() {
        match llm_prices_entry(raw) {
            Ok((id, price)) => {
                // The data has repeated ids (`grok-4-fast` twice); the first wins.
                entries.entry(id).or_insert(price);
            }
            Err(reason) => {
                skipped += 1;
                log::debug!("skipping llm-prices entry #{index}: {reason}");
            }
        }
    }
    if entries.is_empty() {
        return Err(PricingError::NoValidEntries {
            total: prices.len(),
        });
    }
    if skipped > 0 {
        log::warn!(
            "skipped {skipped} of {} llm-prices entries with a missing id or an unusable price",
            prices.len()
        );
    }
    Ok(Parsed {
        entries,
        aliases: BTreeMap::new(),
        source: "llm-prices.com current-v1.json".into(),
        updated_at,
    })
}

fn llm_prices_entry(raw: &Value) -> Result<(String, Price), String> {
    let id = raw
        .get("id")
        .and_then(Value::as_str)
        .ok_or("no string `id`")?;
    let id = valid_id(id)?;
    let price = price_from_values(raw.get("input"), raw.get("output"), raw.get("input_cached"))?;
    Ok((id, price))
}

#[derive(Deserialize)]
struct Snapshot {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    as_of: Option<String>,
    models: Vec<SnapshotModel>,
    #[serde(default)]
    aliases: Vec<SnapshotAlias>,
}

#[derive(Deserialize)]
struct SnapshotModel {
    id: String,
    // `vendor` and any other field are informational.
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    input_cached: Option<Value>,
}

#[derive(Deserialize)]
struct SnapshotAlias {
    id: String,
    same_as: String,
}

fn parse_snapshot_value(doc: &Value) -> Result<Parsed, PricingError> {
    let snapshot = Snapshot::deserialize(doc).map_err(|e| PricingError::Shape(e.to_string()))?;
    if let Some(format) = snapshot.format.as_deref() {
        if format != SNAPSHOT_FORMAT {
            return Err(PricingError::UnsupportedFormat(format.to_owned()));
        }
    }
    if snapshot.models.is_empty() {
        return Err(PricingError::Empty);
    }

    let mut entries = BTreeMap::new();
    for (index, model) in snapshot.models.iter().enumerate() {
        let invalid = |reason: String| PricingError::InvalidEntry {
            index,
            id: model.id.clone(),
            reason,
        };
        let id = valid_id(&model.id).map_err(invalid)?;
        let price = price_from_values(
            model.input.as_ref(),
            model.output.as_ref(),
            model.input_cached.as_ref(),
        )
        .map_err(invalid)?;
        if entries.insert(id, price).is_some() {
            return Err(invalid("the id appears twice".into()));
        }
    }

    let mut aliases = BTreeMap::new();
    for (index, alias) in snapshot.aliases.iter().enumerate() {
        let invalid = |reason: String| PricingError::InvalidEntry {
            index,
            id: alias.id.clone(),
            reason: format!("alias: {reason}"),
        };
        let id = valid_id(&alias.id).map_err(invalid)?;
        let target = valid_id(&alias.same_as).map_err(invalid)?;
        if !entries.contains_key(&target) {
            return Err(invalid(format!("`same_as` names unknown id {target:?}")));
        }
        aliases.insert(id, target);
    }

    Ok(Parsed {
        entries,
        aliases,
        source: snapshot
            .source
            .unwrap_or_else(|| "majordomo price snapshot".into()),
        updated_at: snapshot.as_of,
    })
}

fn valid_id(id: &str) -> Result<String, String> {
    let id = id.trim();
    if id.is_empty() {
        return Err("empty id".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("id longer than {MAX_ID_LEN} bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err("id contains control characters".into());
    }
    Ok(id.to_owned())
}

fn price_from_values(
    input: Option<&Value>,
    output: Option<&Value>,
    input_cached: Option<&Value>,
) -> Result<Price, String> {
    let required = |v: Option<&Value>, field: &str| match v {
        None | Some(Value::Null) => Err(format!("no `{field}` price")),
        Some(v) => price_value(v).map_err(|e| format!("`{field}`: {e}")),
    };
    let input_cached = match input_cached {
        None | Some(Value::Null) => None,
        Some(v) => Some(price_value(v).map_err(|e| format!("`input_cached`: {e}"))?),
    };
    Ok(Price {
        input: required(input, "input")?,
        output: required(output, "output")?,
        input_cached,
    })
}

/// A price from a JSON number or decimal string.
fn price_value(v: &Value) -> Result<Decimal, String> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err("not a number".into()),
    };
    let value = Decimal::from_str(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| format!("{text:?} is not a decimal number"))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("negative price {text}"));
    }
    if value > MAX_PRICE_PER_MILLION {
        return Err(format!(
            "price {text} is above {MAX_PRICE_PER_MILLION} per million tokens"
        ));
    }
    Ok(value.normalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL_LLM_PRICES: &[u8] = include_bytes!("testdata/llm-prices-current-v1.json");

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test literal")
    }

    #[test]
    fn the_real_llm_prices_file_is_read_in_full() {
        let parsed = parse_llm_prices(REAL_LLM_PRICES).expect("real data parses");
        // 142 entries, one id (`grok-4-fast`) listed twice.
        assert_eq!(parsed.entries.len(), 141);
        assert_eq!(parsed.updated_at.as_deref(), Some("2026-08-05"));
        let gpt4o = &parsed.entries["gpt-4o"];
        assert_eq!(gpt4o.input, dec("2.5"));
        assert_eq!(gpt4o.output, dec("10"));
        assert_eq!(gpt4o.input_cached, Some(dec("1.25")));
        assert_eq!(parsed.entries["claude-sonnet-4.5"].input_cached, None);
        assert_eq!(parsed.entries["gemini-1.5-flash-8b"].input, dec("0.0375"));
    }

    #[test]
    fn json_numbers_become_exact_decimals() {
        let doc = br#"{"prices":[{"id":"a","input":0.035,"output":1e-7,"input_cached":0.1}]}"#;
        let parsed = parse_llm_prices(doc).expect("parses");
        let a = &parsed.entries["a"];
        assert_eq!(a.input.to_string(), "0.035");
        assert_eq!(a.output, dec("0.0000001"));
        assert_eq!(
            a.input_cached.map(|d| d.to_string()).as_deref(),
            Some("0.1")
        );
    }

    #[test]
    fn llm_prices_rejects_documents_without_a_price_list() {
        for doc in [
            &b"{}"[..],
            b"[]",
            b"",
            b"garbage",
            b"{\"prices\": {}}",
            b"null",
        ] {
            assert!(
                parse_llm_prices(doc).is_err(),
                "{:?}",
                String::from_utf8_lossy(doc)
            );
        }
        assert!(matches!(
            parse_llm_prices(b"{}"),
            Err(PricingError::Shape(_))
        ));
        assert!(matches!(
            parse_llm_prices(b"[]"),
            Err(PricingError::Shape(_))
        ));
        assert!(matches!(
            parse_llm_prices(b"garbage"),
            Err(PricingError::Json(_))
        ));
    }

    #[test]
    fn llm_prices_rejects_an_empty_price_list() {
        let doc = br#"{"updated_at":"2026-08-05","prices":[]}"#;
        assert!(matches!(parse_llm_prices(doc), Err(PricingError::Empty)));
    }

    #[test]
    fn llm_prices_skips_bad_entries_and_keeps_good_ones() {
        let doc = br#"{"prices":[
            {"id":"good","input":1,"output":2,"input_cached":null},
            {"id":"no-output","input":1},
            {"id":"negative","input":-1,"output":2},
            {"id":"text","input":"cheap","output":2},
            {"id":"","input":1,"output":2},
            {"input":1,"output":2},
            {"id":"absurd","input":1e30,"output":2},
            {"id":"bad-cached","input":1,"output":2,"input_cached":"x"},
            42
        ]}"#;
        let parsed = parse_llm_prices(doc).expect("one good entry is enough");
        assert_eq!(parsed.entries.keys().collect::<Vec<_>>(), ["good"]);
    }

    #[test]
    fn llm_prices_with_no_usable_entry_is_rejected() {
        let doc = br#"{"prices":[{"id":"x"},{"input":1,"output":1}]}"#;
        assert!(matches!(
            parse_llm_prices(doc),
            Err(PricingError::NoValidEntries { total: 2 })
        ));
    }

    #[test]
    fn snapshot_reads_strings_numbers_nulls_and_aliases() {
        let doc = br#"{"format":"majordomo-prices/1","source":"test","as_of":"2026-08-01",
            "models":[{"id":"m","vendor":"v","input":"1.5","output":3,"input_cached":null},
                      {"id":"n","input":"2","output":"4"}],
            "aliases":[{"id":"m-old","same_as":"m","why":"renamed"}]}"#;
        let parsed = parse_snapshot(doc).expect("parses");
        assert_eq!(parsed.entries["m"].input, dec("1.5"));
        assert_eq!(parsed.entries["m"].output, dec("3"));
        assert_eq!(parsed.entries["n"].input_cached, None);
        assert_eq!(parsed.aliases["m-old"], "m");
        assert_eq!(parsed.updated_at.as_deref(), Some("2026-08-01"));
    }

    #[test]
    fn snapshot_rejects_any_bad_entry_naming_it() {
        let bad_price = br#"{"models":[{"id":"ok","input":"1","output":"1"},{"id":"bad","input":"x","output":"1"}]}"#;
        match parse_snapshot(bad_price) {
            Err(PricingError::InvalidEntry { index: 1, id, .. }) => assert_eq!(id, "bad"),
            other => panic!("unexpected {other:?}"),
        }
        let duplicate = br#"{"models":[{"id":"a","input":"1","output":"1"},{"id":"a","input":"1","output":"1"}]}"#;
        assert!(matches!(
            parse_snapshot(duplicate),
            Err(PricingError::InvalidEntry { .. })
        ));
        let dangling = br#"{"models":[{"id":"a","input":"1","output":"1"}],"aliases":[{"id":"b","same_as":"c"}]}"#;
        assert!(matches!(
            parse_snapshot(dangling),
            Err(PricingError::InvalidEntry { .. })
        ));
        let future =
            br#"{"format":"majordomo-prices/9","models":[{"id":"a","input":"1","output":"1"}]}"#;
        assert!(matches!(
            parse_snapshot(future),
            Err(PricingError::UnsupportedFormat(_))
        ));
        assert!(matches!(
            parse_snapshot(br#"{"models":[]}"#),
            Err(PricingError::Empty)
        ));
    }

    #[test]
    fn either_format_is_recognised() {
        assert!(!parse_any(REAL_LLM_PRICES)
            .expect("llm-prices")
            .entries
            .is_empty());
        let ours = br#"{"models":[{"id":"a","input":"1","output":"1"}]}"#;
        assert_eq!(parse_any(ours).expect("snapshot").entries.len(), 1);
        assert!(matches!(
            parse_any(br#"{"foo":[]}"#),
            Err(PricingError::Shape(_))
        ));
        assert!(matches!(parse_any(b"[1]"), Err(PricingError::Shape(_))));
    }
}
