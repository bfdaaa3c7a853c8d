//! Model prices and the cost of one request (SPEC §5).
//!
//! This module is pure: it never does I/O. The gateway fetches the remote
//! llm-prices.com bytes (or reads `pricing.file`) itself and hands them to
//! the parsers here; the request path only calls [`PriceTable::lookup`] and
//! [`cost()`](fn@cost).
//!
//! The layers, from weakest to strongest:
//!
//! 1. [`PriceTable::bundled`]: the snapshot in `conf/prices.json`, compiled
//!    into the binary so requests are priced offline and at first start;
//! 2. a local file ([`PriceTable::from_file_bytes`]) and the remote table
//!    ([`PriceTable::from_llm_prices_json`]), each merged over the layer below
//!    with [`PriceTable::merged_over`] (entries with the same id are replaced,
//!    the others kept; a failed refresh simply keeps the last good table);
//! 3. per-model overrides from the config ([`PriceTable::with_overrides`]).
//!
//! Prices are USD per million tokens, held as exact decimals; nothing in this
//! module computes with floats. A model that no table knows is reported as
//! `None` so that the request is recorded as unpriced, never as a real $0.
//!
//! Files: `table` (the table and its layers), `matching` (how a provider's
//! model name is turned into a table id), `parse` (the two JSON formats),
//! `cost` (the arithmetic).

mod cost;
pub mod live;
mod matching;
mod parse;
mod table;

pub use cost::{caching_rules, cost, Cost, COST_DECIMAL_PLACES};
pub use table::PriceTable;

use rust_decimal::Decimal;

/// What one model costs, in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Uncached prompt tokens.
    pub input: Decimal,
    /// Output tokens, reasoning included.
    pub output: Decimal,
    /// Prompt tokens read from the provider's cache, when the data has a rate.
    ///
    /// `None` is not "free": [`cost()`](fn@cost) falls back to the provider's rule.
    pub input_cached: Option<Decimal>,
}

/// The result of [`PriceTable::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceMatch {
    /// The table id whose price applies (a long-context tier id such as
    /// `gemini-2.5-pro-200k` when the prompt was over its threshold).
    pub id: String,
    pub price: Price,
    /// How the model name reached the base id.
    pub how: MatchKind,
}

/// How a provider's model name was matched to a table id, from most to
/// least certain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchKind {
    /// The name is a table id as is.
    Exact,
    /// The name equals a table id once both are normalised (case, `models/`
    /// prefix, date and version suffixes, dots vs dashes, word order).
    Normalized,
    /// The normalised name is an alias the bundled snapshot declares for an
    /// id (for example `claude-sonnet-4`, which llm-prices prices under
    /// `claude-sonnet-4.5`).
    Alias,
    /// The longest known id that the normalised name starts with, on a `-`
    /// boundary (for example a fine-tune of `gpt-4o-mini`).
    Prefix,
}

impl MatchKind {
    /// A lowercase name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::Normalized => "normalized",
            MatchKind::Alias => "alias",
            MatchKind::Prefix => "prefix",
        }
    }
}

/// Errors from reading price data. Lookups and cost never fail.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    /// Occurs when the bytes are not valid JSON (including empty input).
    #[error("price data is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// Occurs when the JSON is valid but not shaped like a price table, such
    /// as `[]`, `{}`, or a `prices` field that is not an array.
    #[error("price data has an unexpected shape: {0}")]
    Shape(String),
    /// Occurs when the list of prices or models is present but empty.
    #[error("the price list is empty")]
    Empty,
    /// Occurs when not one entry of an llm-prices list is usable (every
    /// entry lacked an id or had a missing, negative or absurd price).
    #[error("none of the {total} price entries is usable")]
    NoValidEntries { total: usize },
    /// Occurs when an entry of a majordomo snapshot is invalid. Snapshots
    /// are checked strictly because they are written by us or by hand.
    #[error("price entry #{index} ({id:?}): {reason}")]
    InvalidEntry {
        index: usize,
        id: String,
        reason: String,
    },
    /// Occurs when a snapshot declares a `format` this build does not know.
    #[error("unsupported price snapshot format {0:?}")]
    UnsupportedFormat(String),
}
