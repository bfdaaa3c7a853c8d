//! The price table: model id → [`Price`], with the indexes that make
//! [`PriceTable::lookup`] cheap.
//!
//! A table is immutable once built. Every constructor and combinator goes
//! through [`PriceTable::build`], which derives, once:
//! - the normalised-name index (see `matching`), with aliases;
//! - the long-context tiers: an id `<base>-<N>k` whose base is also in the
//!   table (`gemini-2.5-pro-200k`, `gpt-5.4-272k`) is not matched by name but
//!   chosen in place of its base when the prompt is over `N * 1000` tokens.
//!
//! When two ids normalise to the same key, the one from the stronger layer
//! wins (override > the table merged over > the table below), then the id
//! already in normal form, then the first in sorted order.

use std::collections::{BTreeMap, HashMap};

/// Maps looked up on every request: foldhash, seeded per process.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::RwLock;

use super::matching::{canonical, names_a_snapshot, strip_decorations, tier_suffix};
use super::parse::{self, Parsed};
use super::{MatchKind, Price, PriceMatch, PricingError};

/// The bundled snapshot of price facts (SPEC §5), our own format.
const BUNDLED_SNAPSHOT: &str = include_str!("../../conf/prices.json");

/// The layer of config overrides, above every table.
const OVERRIDE_LAYER: u32 = u32::MAX;

/// Prices by model id, with the source they came from.
#[derive(Debug, Clone)]
pub struct PriceTable {
    entries: BTreeMap<String, Entry>,
    /// Extra names for ids (alias → id), from snapshots.
    aliases: BTreeMap<String, String>,
    /// Normalised name → the id it stands for. Tier ids are not in here.
    by_canonical: Map<String, Target>,
    /// Normalised base id → its tiers, by ascending threshold.
    tiers: Map<String, Vec<Tier>>,
    source: String,
    updated_at: Option<String>,
    memo: LookupMemo,
}

/// Most model names a table remembers the answer for at once (clients choose
/// the names); when full, it forgets them all and starts over.
const MEMO_CAP: usize = 1024;

/// [`PriceTable::lookup`]'s answers by model name: each request is priced
/// with one hash lookup instead of normalising its model name and walking the
/// indexes again. Valid for the table it belongs to (a table never changes
/// once built); a clone starts empty.
#[derive(Default)]
struct LookupMemo(RwLock<Map<Box<str>, Memoized>>);

#[derive(Clone)]
enum Memoized {
    Unpriced,
    /// The match whatever the prompt size.
    Fixed(PriceMatch),
    /// The base id has long-context tiers: the prompt size picks one.
    Tiered(String, MatchKind),
}

impl Clone for LookupMemo {
    fn clone(&self) -> Self {
        LookupMemo::default()
    }
}

impl std::fmt::Debug for LookupMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.read().map(|m| m.len()).unwrap_or(0);
        write!(f, "LookupMemo({n} names)")
    }
}

#[derive(Debug, Clone)]
struct Entry {
    price: Price,
    /// `canonical(id)`, kept for the tier lookup.
    canonical: String,
    /// Higher layers win name collisions; see the module docs.
    layer: u32,
}

#[derive(Debug, Clone)]
struct Target {
    id: String,
    via_alias: bool,
}

#[derive(Debug, Clone)]
struct Tier {
    /// The tier applies when the prompt has more tokens than this.
    above_tokens: u64,
    id: String,
}

impl PriceTable {
    /// The snapshot compiled into the binary.
    ///
    /// Never fails: a broken snapshot (which the tests rule out) is logged
    /// and yields an empty table, so every request is recorded as unpriced.
    pub fn bundled() -> PriceTable {
        match parse::parse_snapshot(BUNDLED_SNAPSHOT.as_bytes()) {
            Ok(parsed) => {
                let source = format!("bundled snapshot ({})", parsed.source);
                PriceTable::from_parsed(Parsed { source, ..parsed })
            }
            Err(e) => {
                log::error!(
                    "the bundled price snapshot is invalid: {e}; requests will be unpriced"
                );
                PriceTable::from_parsed(Parsed {
                    source: "bundled snapshot (invalid)".into(),
                    ..Parsed::default()
                })
            }
        }
    }

    /// Reads llm-prices.com `current-v1.json`. Unusable entries are skipped;
    /// a document with no usable entry is an error.
    pub fn from_llm_prices_json(bytes: &[u8]) -> Result<PriceTable, PricingError> {
        parse::parse_llm_prices(bytes).map(PriceTable::from_parsed)
    }

    /// Reads a `pricing.file`: a majordomo snapshot (strictly) or an
    /// llm-prices.com document (leniently), told apart by their top-level
    /// `models` / `prices` field.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<PriceTable, PricingError> {
        parse::parse_any(bytes).map(PriceTable::from_parsed)
    }

    /// Replaces the source description, e.g. with the URL or path it came from.
    pub fn with_source(mut self, source: impl Into<String>) -> PriceTable {
        self.source = source.into();
        self
    }

    /// This table over `base`: ids in `self` replace the same ids in `base`,
    /// and `base`'s other ids are kept.
    ///
    /// Merge each refresh over the same base (bundled + file), not over the
    /// previous merge, so that the source text does not grow.
    pub fn merged_over(&self, base: &PriceTable) -> PriceTable {
        let offset = base
            .entries
            .values()
            .map(|e| e.layer)
            .filter(|&l| l != OVERRIDE_LAYER)
            .max()
            .map_or(0, |l| l.saturating_add(1));
        let mut entries = base.entries.clone();
        for (id, entry) in &self.entries {
            let layer = if entry.layer == OVERRIDE_LAYER {
                OVERRIDE_LAYER
            } else {
                entry.layer.saturating_add(offset).min(OVERRIDE_LAYER - 1)
            };
            entries.insert(
                id.clone(),
                Entry {
                    layer,
                    ..entry.clone()
                },
            );
        }
        let mut aliases = base.aliases.clone();
        aliases.extend(self.aliases.iter().map(|(a, t)| (a.clone(), t.clone())));
        PriceTable::build(
            entries,
            aliases,
            format!("{} over {}", self.source, base.source),
            self.updated_at.clone().or_else(|| base.updated_at.clone()),
        )
    }

    /// Applies per-model overrides from the config; they win over every
    /// table. An override is for the exact id given (matched by name like
    /// any id). When a lookup lands on an overridden id, its long-context
    /// tiers are used only if they are overridden too: the configured price
    /// is taken to hold at every prompt size.
    pub fn with_overrides(self, overrides: &[(String, Price)]) -> PriceTable {
        if overrides.is_empty() {
            return self;
        }
        let PriceTable {
            mut entries,
            aliases,
            source,
            updated_at,
            ..
        } = self;
        for (id, price) in overrides {
            let id = id.trim();
            entries.insert(
                id.to_owned(),
                Entry {
                    price: price.clone(),
                    canonical: canonical(id),
                    layer: OVERRIDE_LAYER,
                },
            );
        }
        let source = format!("{source} with {} config override(s)", overrides.len());
        PriceTable::build(entries, aliases, source, updated_at)
    }

    /// The number of ids (tiers included, aliases not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where the prices came from, for logs and `majordomo prices`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The data's own date (`updated_at` / `as_of`), as the data wrote it.
    pub fn updated_at(&self) -> Option<&str> {
        self.updated_at.as_deref()
    }

    /// Every id and its price, sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Price)> + '_ {
        self.entries.iter().map(|(id, e)| (id.as_str(), &e.price))
    }

    /// Finds the price for a model name as a provider returned it, choosing
    /// the long-context tier when the prompt is over its threshold.
    ///
    /// `prompt_tokens` is every prompt token, cache reads and writes
    /// included. Tries the exact id, then the normalised name (and aliases),
    /// then the longest known prefix on a `-` boundary. `None` means unpriced.
    pub fn lookup(&self, model: &str, prompt_tokens: u64) -> Option<PriceMatch> {
        let remembered = self
            .memo
            .0
            .read()
            .ok()
            .and_then(|memo| memo.get(model).cloned());
        let memoized = match remembered {
            Some(m) => m,
            None => {
                let m = self.memoizable(model);
                if let Ok(mut memo) = self.memo.0.write() {
                    // Full: start over rather than stop remembering (clients
                    // choose names; junk ones must not keep real ones out).
                    if memo.len() >= MEMO_CAP {
                        memo.clear();
                    }
                    memo.insert(model.into(), m.clone());
                }
                m
            }
        };
        match memoized {
            Memoized::Unpriced => None,
            Memoized::Fixed(m) => Some(m),
            Memoized::Tiered(base_id, how) => self.priced(&base_id, how, prompt_tokens),
        }
    }

    /// What [`Self::lookup`] remembers for a model name.
    fn memoizable(&self, model: &str) -> Memoized {
        let Some((base_id, how)) = self.resolve(model) else {
            return Memoized::Unpriced;
        };
        if self.tiers_of(base_id).is_some() {
            return Memoized::Tiered(base_id.to_owned(), how);
        }
        match self.priced(base_id, how, 0) {
            Some(m) => Memoized::Fixed(m),
            None => Memoized::Unpriced,
        }
    }

    fn priced(&self, base_id: &str, how: MatchKind, prompt_tokens: u64) -> Option<PriceMatch> {
        let id = self.tier_for(base_id, prompt_tokens);
        let entry = self.entries.get(id)?;
        Some(PriceMatch {
            id: id.to_owned(),
            price: entry.price.clone(),
            how,
        })
    }

    fn resolve(&self, model: &str) -> Option<(&str, MatchKind)> {
        if let Some((id, _)) = self.entries.get_key_value(model) {
            return Some((id.as_str(), MatchKind::Exact));
        }
        // A router's prefix or another case around an exact id is still that
        // id: `openai/gpt-4o-2024-05-13` is priced as itself, not as the
        // `gpt-4o` its normal form would find.
        // (Not a long-context tier's id: that is priced through its base.)
        let bare = strip_decorations(model);
        if bare.len() != model.len() || bare.bytes().any(|b| b.is_ascii_uppercase()) {
            let lower = bare.to_ascii_lowercase();
            let is_tier =
                tier_suffix(&lower).is_some_and(|(base, _)| self.tiers_of(base).is_some());
            if let Some((id, _)) = self.entries.get_key_value(&lower).filter(|_| !is_tier) {
                return Some((id.as_str(), MatchKind::Normalized));
            }
        }
        let key = canonical(model);
        if let Some(target) = self.by_canonical.get(&key) {
            let how = if target.via_alias {
                MatchKind::Alias
            } else {
                MatchKind::Normalized
            };
            return Some((target.id.as_str(), how));
        }
        let mut prefix = key.as_str();
        while let Some((head, _)) = prefix.rsplit_once('-') {
            if let Some(target) = self.by_canonical.get(head) {
                return Some((target.id.as_str(), MatchKind::Prefix));
            }
            prefix = head;
        }
        None
    }

    /// The id to price with: `id` itself, or its highest tier whose
    /// threshold the prompt is over.
    fn tier_for<'a>(&'a self, id: &'a str, prompt_tokens: u64) -> &'a str {
        let Some((entry, tiers)) = self.tiers_of(id) else {
            return id;
        };
        let Some(tier) = tiers.iter().rev().find(|t| prompt_tokens > t.above_tokens) else {
            return id;
        };
        let tier_overridden = self
            .entries
            .get(&tier.id)
            .is_some_and(|t| t.layer == OVERRIDE_LAYER);
        if entry.layer == OVERRIDE_LAYER && !tier_overridden {
            return id;
        }
        &tier.id
    }

    /// An id's entry and its long-context tiers, when it has any: the one
    /// place [`Self::tier_for`] and the memo learn whether the prompt size
    /// can change an id's price.
    fn tiers_of(&self, id: &str) -> Option<(&Entry, &Vec<Tier>)> {
        let entry = self.entries.get(id)?;
        Some((entry, self.tiers.get(&entry.canonical)?))
    }

    fn from_parsed(parsed: Parsed) -> PriceTable {
        let entries = parsed
            .entries
            .into_iter()
            .map(|(id, price)| {
                let canonical = canonical(&id);
                (
                    id,
                    Entry {
                        price,
                        canonical,
                        layer: 0,
                    },
                )
            })
            .collect();
        PriceTable::build(entries, parsed.aliases, parsed.source, parsed.updated_at)
    }

    /// Derives the indexes; the only way a table is assembled.
    fn build(
        entries: BTreeMap<String, Entry>,
        aliases: BTreeMap<String, String>,
        source: String,
        updated_at: Option<String>,
    ) -> PriceTable {
        let known_keys: std::collections::HashSet<&str> =
            entries.values().map(|e| e.canonical.as_str()).collect();

        let mut tiers: Map<String, Vec<Tier>> = Map::default();
        let mut by_canonical: Map<String, Target> = Map::default();
        // The winner of each key so far, to settle collisions.
        let mut winners: HashMap<&str, (&str, &Entry)> = HashMap::new();

        for (id, entry) in &entries {
            if let Some((base, above_tokens)) = tier_suffix(id) {
                let base_key = canonical(base);
                if known_keys.contains(base_key.as_str()) {
                    tiers.entry(base_key).or_default().push(Tier {
                        above_tokens,
                        id: id.clone(),
                    });
                    continue;
                }
            }
            let key = entry.canonical.as_str();
            let wins = match winners.get(key) {
                None => true,
                Some(&(held_id, held)) => beats((id, entry), (held_id, held)),
            };
            if wins {
                winners.insert(key, (id.as_str(), entry));
            }
        }
        for (key, (id, _)) in winners {
            by_canonical.insert(
                key.to_owned(),
                Target {
                    id: id.to_owned(),
                    via_alias: false,
                },
            );
        }
        for list in tiers.values_mut() {
            // One tier per threshold; an overridden one beats the data's.
            list.sort_by_key(|t| {
                let overridden = entries
                    .get(&t.id)
                    .is_some_and(|e| e.layer == OVERRIDE_LAYER);
                (t.above_tokens, !overridden)
            });
            list.dedup_by_key(|t| t.above_tokens);
        }
        for (alias, target) in &aliases {
            if entries.contains_key(target) {
                by_canonical
                    .entry(canonical(alias))
                    .or_insert_with(|| Target {
                        id: target.clone(),
                        via_alias: true,
                    });
            }
        }

        PriceTable {
            entries,
            aliases,
            by_canonical,
            tiers,
            source,
            updated_at,
            memo: LookupMemo::default(),
        }
    }
}

/// Whether `challenger` should take a normalised key from `held` (`held`
/// came first in sorted order, and keeps it on a tie). Every id is ranked
/// by one key, so the winner never depends on the order: an id that is not
/// one dated snapshot first (an override of `gpt-4o-2024-05-13` or of
/// `claude-3-5-sonnet-20240620` prices that snapshot only, never every
/// other one of the model), then the higher layer, then the id in normal
/// form.
fn beats(challenger: (&str, &Entry), held: (&str, &Entry)) -> bool {
    let rank = |(id, e): (&str, &Entry)| {
        (
            !names_a_snapshot(id),
            e.layer,
            id.eq_ignore_ascii_case(&e.canonical),
        )
    };
    rank(challenger) > rank(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test literal")
    }

    fn price(input: &str, output: &str, cached: Option<&str>) -> Price {
        Price {
            input: dec(input),
            output: dec(output),
            input_cached: cached.map(dec),
        }
    }

    fn table(json: &str) -> PriceTable {
        PriceTable::from_file_bytes(json.as_bytes()).expect("test table parses")
    }

    /// The id and match kind a bundled lookup lands on.
    fn bundled_hit(model: &str, prompt_tokens: u64) -> Option<(String, MatchKind)> {
        PriceTable::bundled()
            .lookup(model, prompt_tokens)
            .map(|m| (m.id, m.how))
    }

    fn hit(id: &str, how: MatchKind) -> Option<(String, MatchKind)> {
        Some((id.to_owned(), how))
    }

    #[test]
    fn bundled_snapshot_loads_and_covers_the_three_providers() {
        let t = PriceTable::bundled();
        assert!(t.len() >= 140, "only {} entries", t.len());
        assert!(t.source().starts_with("bundled snapshot"));
        assert_eq!(t.updated_at(), Some("2026-08-05"));
        // Parsing it strictly must succeed: `bundled()` would hide a failure.
        parse::parse_snapshot(BUNDLED_SNAPSHOT.as_bytes()).expect("snapshot is valid");
    }

    #[test]
    fn fine_tunes_and_the_first_gpt_4o_snapshot_get_their_own_prices() {
        let t = PriceTable::bundled();
        let priced = |model: &str| t.lookup(model, 0).map(|m| (m.id, m.price));
        let (id, p) = priced("ft:gpt-4o-mini-2024-07-18:acme::abc").unwrap();
        assert_eq!(id, "ft:gpt-4o-mini-2024-07-18");
        assert_eq!(p, price("0.3", "1.2", Some("0.15")), "twice the base's");
        let (id, p) = priced("ft:gpt-4.1-nano-2025-04-14:acme:run:x").unwrap();
        assert_eq!(id, "ft:gpt-4.1-nano-2025-04-14");
        assert_eq!(p, price("0.2", "0.8", Some("0.05")));
        assert_eq!(
            priced("ft:gpt-5-mini-2025-08-07:acme::x"),
            None,
            "a fine-tune with no price of its own is unpriced, not its base's"
        );
        assert_eq!(
            priced("gpt-4o-2024-05-13").unwrap().1,
            price("5", "15", None)
        );
        // The later snapshots still meet gpt-4o itself.
        assert_eq!(
            bundled_hit("gpt-4o-2024-11-20", 0),
            hit("gpt-4o", MatchKind::Normalized)
        );
    }

    #[test]
    fn every_openai_anthropic_and_google_id_of_the_real_data_is_in_the_snapshot() {
        let real: serde_json::Value =
            serde_json::from_slice(include_bytes!("testdata/llm-prices-current-v1.json"))
                .expect("real data");
        let bundled = PriceTable::bundled();
        let prices = real["prices"].as_array().expect("prices");
        for p in prices {
            let vendor = p["vendor"].as_str().unwrap_or_default();
            if !matches!(vendor, "openai" | "anthropic" | "google") {
                continue;
            }
            let id = p["id"].as_str().expect("id");
            let m = bundled.lookup(id, 0).expect(id);
            assert_eq!(m.how, MatchKind::Exact, "{id}");
            assert_eq!(m.price.input, dec(&p["input"].to_string()), "{id}");
            assert_eq!(m.price.output, dec(&p["output"].to_string()), "{id}");
        }
    }

    #[test]
    fn bundled_prices_the_models_providers_actually_return() {
        let t = PriceTable::bundled();
        let gpt4o = t.lookup("gpt-4o", 1000).expect("gpt-4o");
        assert_eq!(gpt4o.price, price("2.5", "10", Some("1.25")));
        assert_eq!(gpt4o.how, MatchKind::Exact);

        assert_eq!(
            bundled_hit("claude-sonnet-4-5-20250929", 1000),
            hit("claude-sonnet-4.5", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("claude-opus-4-5", 1000),
            hit("claude-opus-4-5", MatchKind::Exact)
        );
        assert_eq!(
            bundled_hit("claude-opus-4-5-20251101", 1000),
            hit("claude-opus-4-5", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("claude-haiku-4-5", 1000),
            hit("claude-4.5-haiku", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("claude-haiku-4-5-20251001", 1000),
            hit("claude-4.5-haiku", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("gemini-2.5-pro", 1000),
            hit("gemini-2.5-pro", MatchKind::Exact)
        );
        assert_eq!(
            bundled_hit("gemini-2.5-flash", 1000),
            hit("gemini-2.5-flash", MatchKind::Exact)
        );
        assert_eq!(
            bundled_hit("models/gemini-2.5-flash", 1000),
            hit("gemini-2.5-flash", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("models/gemini-2.0-flash-001", 1000),
            hit("gemini-2.0-flash", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("gemini-3.1-pro-preview", 1000),
            hit("gemini-3-1-pro-preview", MatchKind::Normalized)
        );
        let flash = t.lookup("gemini-2.5-flash", 10).expect("flash");
        assert_eq!(flash.price, price("0.3", "2.5", Some("0.03")));
    }

    #[test]
    fn date_suffixed_openai_names_match_their_family() {
        assert_eq!(
            bundled_hit("gpt-4o-2024-08-06", 0),
            hit("gpt-4o", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("gpt-4o-mini-2024-07-18", 0),
            hit("gpt-4o-mini", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("gpt-5-2025-08-07", 0),
            hit("gpt-5", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("o3-mini-2025-01-31", 0),
            hit("o3-mini", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("GPT-4.1-2025-04-14", 0),
            hit("gpt-4.1", MatchKind::Normalized)
        );
    }

    #[test]
    fn dots_and_dashes_and_word_order_meet_the_same_id() {
        assert_eq!(
            bundled_hit("claude-3-5-sonnet-20241022", 0),
            hit("claude-3.5-sonnet", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("claude-3-7-sonnet-latest", 0),
            hit("claude-3.7-sonnet", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("claude-3-5-haiku-20241022", 0),
            hit("claude-3.5-haiku", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("claude-opus-4.5", 0),
            hit("claude-opus-4-5", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("claude-opus-4-1-20250805", 0),
            hit("claude-opus-4-1", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("claude-opus-4-20250514", 0),
            hit("claude-opus-4", MatchKind::Normalized)
        );
    }

    #[test]
    fn snapshot_aliases_cover_models_the_data_prices_under_another_id() {
        assert_eq!(
            bundled_hit("claude-sonnet-4-20250514", 0),
            hit("claude-sonnet-4.5", MatchKind::Alias)
        );
        assert_eq!(
            bundled_hit("o1-2024-12-17", 0),
            hit("o1-preview", MatchKind::Alias)
        );
        // An alias follows its target into the long-context tier.
        assert_eq!(
            bundled_hit("claude-sonnet-4-20250514", 200_001),
            hit("claude-sonnet-4.5-200k", MatchKind::Alias)
        );
    }

    #[test]
    fn longest_known_prefix_is_used_for_unknown_variants() {
        assert_eq!(
            bundled_hit("gpt-4o-mini-2024-07-18-ft-xyz", 0),
            hit("gpt-4o-mini", MatchKind::Prefix)
        );
        assert_eq!(
            bundled_hit("ft:gpt-4o-mini-2024-07-18:acme::abc", 0),
            hit("ft:gpt-4o-mini-2024-07-18", MatchKind::Normalized)
        );
        assert_eq!(
            bundled_hit("gpt-4o-audio-preview", 0),
            hit("gpt-4o", MatchKind::Prefix)
        );
        assert_eq!(
            bundled_hit("gemini-2.5-flash-lite-preview-06-17", 0),
            hit("gemini-2.5-flash-lite", MatchKind::Prefix)
        );
        assert_eq!(
            bundled_hit("gemini-2.5-pro-preview-05-06", 0),
            hit("gemini-2.5-pro", MatchKind::Prefix)
        );
        assert_eq!(
            bundled_hit("gpt-5-chat-latest", 0),
            hit("gpt-5", MatchKind::Prefix)
        );
    }

    #[test]
    fn a_remembered_answer_is_the_answer_a_fresh_table_gives() {
        let memo = PriceTable::bundled();
        let cases = [
            ("gpt-4o-2024-08-06", 1_000),
            ("gpt-4o", 0),
            ("models/gemini-2.5-pro", 10),
            ("models/gemini-2.5-pro", 200_001),
            ("gemini-2.5-pro", 200_001),
            ("gemini-2.5-pro", 10),
            ("claude-sonnet-4-5-20250929", 50),
            ("llama-3-70b", 100),
            ("", 0),
        ];
        for round in 0..3 {
            for (model, prompt) in cases {
                // A clone starts with an empty memo: its first answer is computed.
                let fresh = memo.clone().lookup(model, prompt);
                assert_eq!(
                    memo.lookup(model, prompt),
                    fresh,
                    "{model} {prompt} round {round}"
                );
            }
        }
        // The tier still follows the prompt size once the name is remembered.
        let small = memo.lookup("models/gemini-2.5-pro", 10).unwrap().id;
        let large = memo.lookup("models/gemini-2.5-pro", 200_001).unwrap().id;
        assert_ne!(small, large);
    }

    #[test]
    fn a_full_memo_starts_over_and_keeps_pricing() {
        let t = PriceTable::bundled();
        for i in 0..MEMO_CAP + 10 {
            assert_eq!(t.lookup(&format!("no-such-model-{i}"), 0), None);
            assert!(t.memo.0.read().unwrap().len() <= MEMO_CAP);
        }
        assert_eq!(t.memo.0.read().unwrap().len(), 10);
        let priced = t.lookup("gpt-4o-2024-08-06", 0);
        assert!(priced.is_some());
        assert_eq!(priced, t.clone().lookup("gpt-4o-2024-08-06", 0));
        assert_eq!(t.lookup("gpt-4o-2024-08-06", 0), priced);
    }

    #[test]
    fn remembered_answers_follow_the_override_rules_of_tiers() {
        let base = table(
            r#"{"models":[{"id":"gemini-2.5-pro","input":"1.25","output":"10"},
                          {"id":"gemini-2.5-pro-200k","input":"2.5","output":"15"},
                          {"id":"gpt-4o","input":"2.5","output":"10"}]}"#,
        );
        let price = |input: &str| Price {
            input: input.parse().unwrap(),
            output: "1".parse().unwrap(),
            input_cached: None,
        };
        // The base overridden, its tier not: the override holds at every size.
        let only_base = base
            .clone()
            .with_overrides(&[("gemini-2.5-pro".to_string(), price("9"))]);
        // Both overridden: the tier still applies over its threshold.
        let both = base.clone().with_overrides(&[
            ("gemini-2.5-pro".to_string(), price("9")),
            ("gemini-2.5-pro-200k".to_string(), price("18")),
        ]);
        for t in [&base, &only_base, &both] {
            for _ in 0..2 {
                for prompt in [0, 10, 200_000, 200_001, u64::MAX] {
                    for model in ["gemini-2.5-pro", "models/gemini-2.5-pro-001", "gpt-4o"] {
                        assert_eq!(
                            t.lookup(model, prompt),
                            t.clone().lookup(model, prompt),
                            "{model} {prompt}"
                        );
                    }
                }
            }
        }
        let id = |t: &PriceTable, n| t.lookup("gemini-2.5-pro", n).unwrap().id;
        assert_eq!(id(&base, 300_000), "gemini-2.5-pro-200k");
        assert_eq!(id(&only_base, 300_000), "gemini-2.5-pro");
        assert_eq!(id(&both, 300_000), "gemini-2.5-pro-200k");
    }

    #[test]
    fn a_prefix_never_cuts_inside_a_word_or_version() {
        let t = table(
            r#"{"models":[{"id":"gpt-4o","input":"2.5","output":"10"},
                          {"id":"claude-opus-4","input":"15","output":"75"}]}"#,
        );
        assert_eq!(
            t.lookup("gpt-4o-mini", 0).map(|m| m.how),
            Some(MatchKind::Prefix)
        );
        assert_eq!(t.lookup("gpt-4omni", 0), None);
        // `claude-opus-4-9` is version 4.9, not a variant of `claude-opus-4`.
        assert_eq!(t.lookup("claude-opus-4-9", 0), None);
    }

    #[test]
    fn unknown_models_are_unpriced() {
        let t = PriceTable::bundled();
        assert_eq!(t.lookup("llama-3-70b", 100), None);
        assert_eq!(t.lookup("", 100), None);
        assert_eq!(t.lookup("gpt", 100), None);
        assert_eq!(t.lookup("claude-2.1", 100), None);
        assert_eq!(t.lookup("gemini-exp-1206", 100), None);
    }

    #[test]
    fn long_context_tier_applies_only_over_the_threshold() {
        let t = PriceTable::bundled();
        let at = |model: &str, n: u64| t.lookup(model, n).map(|m| m.id);
        assert_eq!(
            at("gemini-2.5-pro", 199_999).as_deref(),
            Some("gemini-2.5-pro")
        );
        assert_eq!(
            at("gemini-2.5-pro", 200_000).as_deref(),
            Some("gemini-2.5-pro")
        );
        assert_eq!(
            at("gemini-2.5-pro", 200_001).as_deref(),
            Some("gemini-2.5-pro-200k")
        );
        let tier = t.lookup("models/gemini-2.5-pro", 200_001).expect("tier");
        assert_eq!(tier.price, price("2.5", "15", Some("0.25")));
        assert_eq!(tier.how, MatchKind::Normalized);

        assert_eq!(
            at("claude-sonnet-4-5-20250929", 200_001).as_deref(),
            Some("claude-sonnet-4.5-200k")
        );
        assert_eq!(at("gpt-5.4", 272_000).as_deref(), Some("gpt-5.4"));
        assert_eq!(
            at("gpt-5.4-2026-03-05", 272_001).as_deref(),
            Some("gpt-5.4-272k")
        );
        assert_eq!(
            at("gpt-5.4-pro", 300_000).as_deref(),
            Some("gpt-5.4-pro-272k")
        );
        assert_eq!(
            at("gemini-1.5-flash-8b", 128_001).as_deref(),
            Some("gemini-1.5-flash-8b-128k")
        );
        assert_eq!(
            at("gemini-1.5-flash", 128_001).as_deref(),
            Some("gemini-1.5-flash-128k")
        );
        assert_eq!(
            at("gemini-3.1-pro-preview", 250_000).as_deref(),
            Some("gemini-3-1-pro-preview-200k")
        );
        // Models without tiers are not affected by size.
        assert_eq!(at("gpt-4o", 10_000_000).as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn tier_ids_are_not_matched_by_name_from_other_models() {
        let t = PriceTable::bundled();
        // A prefix walk from a tier-looking name lands on the base, which
        // then picks its tier by size, never on the tier by name alone.
        let m = t
            .lookup("gemini-2.5-pro-200k-experimental", 10)
            .expect("base");
        assert_eq!(m.id, "gemini-2.5-pro");
        // The tier id itself still matches exactly.
        assert_eq!(
            t.lookup("gemini-2.5-pro-200k", 10).map(|m| m.how),
            Some(MatchKind::Exact)
        );
    }

    #[test]
    fn a_k_suffix_without_a_base_is_an_ordinary_model() {
        let t = table(r#"{"models":[{"id":"gpt-3.5-turbo-16k","input":"3","output":"4"}]}"#);
        assert_eq!(
            t.lookup("gpt-3.5-turbo-16k-0613", 0)
                .map(|m| m.id)
                .as_deref(),
            Some("gpt-3.5-turbo-16k")
        );
    }

    #[test]
    fn merged_over_keeps_base_entries_and_takes_changed_ones() {
        let base = PriceTable::bundled();
        let remote = PriceTable::from_llm_prices_json(
            br#"{"updated_at":"2026-09-01","prices":[
                {"id":"gpt-4o","vendor":"openai","name":"GPT-4o","input":2,"output":8,"input_cached":1},
                {"id":"gpt-9","vendor":"openai","name":"GPT-9","input":1,"output":2,"input_cached":null}]}"#,
        )
        .expect("remote");
        let merged = remote.merged_over(&base);
        assert_eq!(merged.len(), base.len() + 1);
        assert_eq!(
            merged.lookup("gpt-4o", 0).map(|m| m.price),
            Some(price("2", "8", Some("1")))
        );
        assert!(merged.lookup("gpt-9", 0).is_some());
        assert_eq!(
            merged.lookup("gemini-2.5-pro", 0).map(|m| m.price),
            base.lookup("gemini-2.5-pro", 0).map(|m| m.price)
        );
        assert_eq!(merged.updated_at(), Some("2026-09-01"));
        assert!(merged.source().contains(" over bundled snapshot"));
        // Bundled aliases survive a remote table that has none.
        assert_eq!(
            merged.lookup("o1", 0).map(|m| m.how),
            Some(MatchKind::Alias)
        );
    }

    #[test]
    fn a_merged_table_wins_name_collisions_over_its_base() {
        let base = table(r#"{"models":[{"id":"claude-4.5-haiku","input":"1","output":"5"}]}"#);
        let newer = table(r#"{"models":[{"id":"claude-haiku-4-5","input":"2","output":"6"}]}"#);
        let merged = newer.merged_over(&base);
        let m = merged
            .lookup("claude-haiku-4-5-20251001", 0)
            .expect("match");
        assert_eq!(m.id, "claude-haiku-4-5");
    }

    #[test]
    fn overrides_win_over_every_table() {
        let remote =
            PriceTable::from_llm_prices_json(include_bytes!("testdata/llm-prices-current-v1.json"))
                .expect("remote");
        let t = remote.merged_over(&PriceTable::bundled()).with_overrides(&[
            ("gpt-4o".into(), price("1", "2", None)),
            ("claude-sonnet-4-5".into(), price("2", "10", Some("0.2"))),
            ("my-local-model".into(), price("0", "0", None)),
        ]);
        assert_eq!(
            t.lookup("gpt-4o-2024-08-06", 0).map(|m| m.price),
            Some(price("1", "2", None))
        );
        // The override is spelled differently from the data's id and still wins.
        let sonnet = t.lookup("claude-sonnet-4-5-20250929", 0).expect("sonnet");
        assert_eq!(
            (sonnet.id.as_str(), sonnet.price),
            ("claude-sonnet-4-5", price("2", "10", Some("0.2")))
        );
        // And holds for long prompts, since its tier is not overridden.
        let long = t
            .lookup("claude-sonnet-4-5-20250929", 500_000)
            .expect("long");
        assert_eq!(long.id, "claude-sonnet-4-5");
        assert!(t.lookup("my-local-model", 0).is_some());
        assert!(t.source().ends_with("with 3 config override(s)"));
    }

    /// An override of one dated snapshot prices that snapshot only; the
    /// model's other snapshots keep the model's price.
    #[test]
    fn an_override_of_a_dated_snapshot_prices_only_that_snapshot() {
        let base = PriceTable::bundled();
        let gpt_4o = base.lookup("gpt-4o", 0).expect("gpt-4o").price;
        let t = base.with_overrides(&[("gpt-4o-2024-05-13".into(), price("5", "15", None))]);
        assert_eq!(
            t.lookup("gpt-4o-2024-05-13", 0).map(|m| m.price),
            Some(price("5", "15", None))
        );
        for other in ["gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"] {
            assert_eq!(
                t.lookup(other, 0).map(|m| m.price),
                Some(gpt_4o.clone()),
                "{other}"
            );
        }
        // Claude's dated names, whose model names are not in normal form.
        let base = PriceTable::bundled();
        let sonnet = base
            .lookup("claude-3-5-sonnet-20241022", 0)
            .expect("sonnet")
            .price;
        let t =
            base.with_overrides(&[("claude-3-5-sonnet-20240620".into(), price("9", "9", None))]);
        assert_eq!(
            t.lookup("claude-3-5-sonnet-20240620", 0).map(|m| m.price),
            Some(price("9", "9", None))
        );
        for other in ["claude-3-5-sonnet-20241022", "claude-3-5-sonnet-latest"] {
            assert_eq!(
                t.lookup(other, 0).map(|m| m.price),
                Some(sonnet.clone()),
                "{other}"
            );
        }
    }

    /// A router's prefix or another case around an exact id keeps that id's
    /// price, not its normal form's.
    #[test]
    fn a_decorated_exact_id_is_priced_as_itself() {
        let t = PriceTable::bundled();
        let dated = t.lookup("gpt-4o-2024-05-13", 0).expect("dated");
        assert_eq!(dated.id, "gpt-4o-2024-05-13");
        for name in [
            "openai/gpt-4o-2024-05-13",
            "GPT-4o-2024-05-13",
            "openai/GPT-4O-2024-05-13",
        ] {
            let m = t.lookup(name, 0).expect(name);
            assert_eq!(
                (m.id.as_str(), m.price),
                (dated.id.as_str(), dated.price.clone()),
                "{name}"
            );
        }
        assert_eq!(t.lookup("openai/gpt-4o", 0).expect("gpt-4o").id, "gpt-4o");
        // A long-context tier's id is still priced through its base.
        assert_eq!(
            t.lookup("models/Gemini-2.5-Pro-200K", 0).map(|m| m.id),
            t.lookup("gemini-2.5-pro", 0).map(|m| m.id)
        );
    }

    #[test]
    fn overriding_a_tier_too_keeps_the_tier_switch() {
        let t = PriceTable::bundled().with_overrides(&[
            ("gemini-2.5-pro".into(), price("1", "8", None)),
            ("gemini-2.5-pro-200k".into(), price("2", "12", None)),
        ]);
        assert_eq!(
            t.lookup("gemini-2.5-pro", 250_000).map(|m| m.price),
            Some(price("2", "12", None))
        );
        assert_eq!(
            t.lookup("gemini-2.5-pro", 150_000).map(|m| m.price),
            Some(price("1", "8", None))
        );
    }

    #[test]
    fn iter_is_sorted_by_id() {
        let t = PriceTable::bundled();
        let ids: Vec<&str> = t.iter().map(|(id, _)| id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted);
        assert_eq!(ids.len(), t.len());
    }

    #[test]
    fn file_bytes_accept_both_formats() {
        let ours = PriceTable::from_file_bytes(BUNDLED_SNAPSHOT.as_bytes()).expect("snapshot");
        let theirs =
            PriceTable::from_file_bytes(include_bytes!("testdata/llm-prices-current-v1.json"))
                .expect("llm-prices");
        // The snapshot adds the entries llm-prices lacks (those with a note).
        let added = BUNDLED_SNAPSHOT.matches("\"note\":").count();
        assert_eq!(ours.len(), theirs.len() + added);
        assert!(PriceTable::from_file_bytes(b"{}").is_err());
    }

    #[test]
    fn bundled_ids_that_share_a_normal_form_are_the_known_ones() {
        // Guards the normaliser against silently merging distinct models.
        let t = PriceTable::bundled();
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, e) in &t.entries {
            groups.entry(e.canonical.as_str()).or_default().push(id);
        }
        let shared: Vec<_> = groups.values().filter(|ids| ids.len() > 1).collect();
        // gpt-4o's first snapshot is a price of its own, met by its exact id.
        assert_eq!(shared, [&vec!["gpt-4o", "gpt-4o-2024-05-13"]]);
    }
}
