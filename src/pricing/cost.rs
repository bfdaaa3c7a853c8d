//! The cost of one request from its token usage and a [`Price`] (SPEC §5).
//!
//! All prices are per million tokens:
//!
//! ```text
//! uncached     = input_tokens − cached_tokens − cache_creation_tokens   (saturating at 0)
//! cached_rate  = input_cached, else 0.1 × input (Anthropic's cache-read rate), else input
//! input_cost   = uncached × input + cached_tokens × cached_rate
//!              + Anthropic: 5-minute writes × 1.25 × input + 1-hour writes × 2 × input
//!                others:    cache writes × input
//! output_cost  = output_tokens × output     (reasoning and Gemini thoughts are already in output_tokens)
//! total_cost   = input_cost + output_cost
//! ```
//!
//! Arithmetic is exact `Decimal`; `input_cost` and `output_cost` are then
//! rounded to [`COST_DECIMAL_PLACES`] (the `NUMERIC(20,10)` columns), half
//! away from zero (what PostgreSQL does when it stores a NUMERIC, i.e. half-up
//! for these non-negative amounts), and `total_cost` is the sum of the two
//! rounded parts, so the stored columns always add up.

use rust_decimal::{Decimal, RoundingStrategy};

use super::Price;
use crate::provider::Provider;
use crate::usage::Usage;

/// Decimal places kept in every cost (the scale of the cost columns).
pub const COST_DECIMAL_PLACES: u32 = 10;

const TOKENS_PER_PRICE_UNIT: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
/// Anthropic's cache-read rate as a share of the input price.
const ANTHROPIC_CACHE_READ: Decimal = Decimal::from_parts(1, 0, 0, false, 1); // 0.1
/// Anthropic's 5-minute cache-write rate as a multiple of the input price.
const ANTHROPIC_CACHE_WRITE_5M: Decimal = Decimal::from_parts(125, 0, 0, false, 2); // 1.25
/// Anthropic's 1-hour cache-write rate as a multiple of the input price.
const ANTHROPIC_CACHE_WRITE_1H: Decimal = Decimal::TWO;

/// What one request cost, in USD.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cost {
    pub input_cost: Decimal,
    pub output_cost: Decimal,
    /// `input_cost + output_cost`.
    pub total_cost: Decimal,
}

/// Prices `usage` at `price` under `provider`'s caching rules.
///
/// Never panics: inconsistent usage (more cached than total tokens) prices
/// the parts it names, and amounts beyond `Decimal`'s range saturate.
pub fn cost(provider: Provider, usage: &Usage, price: &Price) -> Cost {
    let cache_reads = usage.cached_tokens;
    let cache_writes = usage.cache_creation_tokens;
    let uncached = usage
        .input_tokens
        .saturating_sub(cache_reads)
        .saturating_sub(cache_writes);

    let cached_rate = price.input_cached.unwrap_or(match provider {
        Provider::Anthropic => price.input.saturating_mul(ANTHROPIC_CACHE_READ),
        Provider::OpenAi | Provider::Gemini => price.input,
    });

    let mut input = tokens(uncached)
        .saturating_mul(price.input)
        .saturating_add(tokens(cache_reads).saturating_mul(cached_rate));
    match provider {
        Provider::Anthropic => {
            let writes_1h = usage.cache_creation_1h_tokens.min(cache_writes);
            let writes_5m = cache_writes - writes_1h;
            let rate_5m = price.input.saturating_mul(ANTHROPIC_CACHE_WRITE_5M);
            let rate_1h = price.input.saturating_mul(ANTHROPIC_CACHE_WRITE_1H);
            input = input
                .saturating_add(tokens(writes_5m).saturating_mul(rate_5m))
                .saturating_add(tokens(writes_1h).saturating_mul(rate_1h));
        }
        Provider::OpenAi | Provider::Gemini => {
            input = input.saturating_add(tokens(cache_writes).saturating_mul(price.input));
        }
    }
    let output = tokens(usage.output_tokens).saturating_mul(price.output);

    let input_cost = per_million(input);
    let output_cost = per_million(output);
    Cost {
        input_cost,
        output_cost,
        total_cost: input_cost.saturating_add(output_cost),
    }
}

/// Whose caching rules price a request: Anthropic's for every Claude model,
/// also one served through an OpenAI-compatible upstream (a router, a
/// cloud's gateway) whose usage comes in OpenAI's format; otherwise the
/// provider's.
pub fn caching_rules(provider: Provider, price_id: &str) -> Provider {
    if price_id.starts_with("claude") {
        Provider::Anthropic
    } else {
        provider
    }
}

fn tokens(n: u64) -> Decimal {
    Decimal::from(n)
}

/// `amount` (tokens × USD per million tokens) in USD, rounded for storage.
fn per_million(amount: Decimal) -> Decimal {
    // Dividing by 10^6 is moving the point six places: the same digits at a
    // larger scale, exact (a division took ~300 instructions per cost), and
    // without trailing zeros, as the division writes it. Only past the
    // largest scale is it a division, which rounds; dividing by a non-zero
    // constant ≥ 1 can neither overflow nor fail.
    let mut moved = amount;
    let per_million = match moved.set_scale(amount.scale() + 6) {
        Ok(()) => moved.normalize(),
        Err(_) => amount / TOKENS_PER_PRICE_UNIT,
    };
    per_million.round_dp_with_strategy(COST_DECIMAL_PLACES, RoundingStrategy::MidpointAwayFromZero)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn expect(c: &Cost, input: &str, output: &str, total: &str) {
        assert_eq!(
            (c.input_cost, c.output_cost, c.total_cost),
            (dec(input), dec(output), dec(total))
        );
    }

    #[test]
    fn openai_cached_reads_use_the_table_rate() {
        // gpt-4o: 6_000 × 2.5 + 4_000 × 1.25 = 20_000 → $0.02; 1_000 × 10 → $0.01.
        let usage = Usage {
            input_tokens: 10_000,
            cached_tokens: 4_000,
            output_tokens: 1_000,
            reasoning_tokens: 300,
            ..Usage::default()
        };
        let c = cost(Provider::OpenAi, &usage, &price("2.5", "10", Some("1.25")));
        expect(&c, "0.02", "0.01", "0.03");
    }

    #[test]
    fn openai_without_a_cached_rate_charges_cache_reads_as_input() {
        // 500 × 2 + 500 × 2 = 2_000 → $0.002; 100 × 8 → $0.0008.
        let usage = Usage {
            input_tokens: 1_000,
            cached_tokens: 500,
            output_tokens: 100,
            ..Usage::default()
        };
        let c = cost(Provider::OpenAi, &usage, &price("2", "8", None));
        expect(&c, "0.002", "0.0008", "0.0028");
    }

    #[test]
    fn anthropic_without_a_cached_rate_charges_a_tenth_and_writes_by_duration() {
        // Sonnet 4.5 ($3 / $15), 10_000 prompt tokens: 6_000 read, 2_000 written
        // (500 of them 1-hour), 2_000 plain.
        //   2_000 × 3      =  6_000
        //   6_000 × 0.3    =  1_800
        //   1_500 × 3.75   =  5_625
        //     500 × 6      =  3_000   → 16_425 → $0.016425
        //     700 × 15     = 10_500   → $0.0105
        let usage = Usage {
            input_tokens: 10_000,
            cached_tokens: 6_000,
            cache_creation_tokens: 2_000,
            cache_creation_1h_tokens: 500,
            output_tokens: 700,
            reasoning_tokens: 0,
        };
        let c = cost(Provider::Anthropic, &usage, &price("3", "15", None));
        expect(&c, "0.016425", "0.0105", "0.026925");
    }

    #[test]
    fn a_claude_model_keeps_anthropics_caching_rules_behind_an_openai_compatible_upstream() {
        assert_eq!(
            caching_rules(Provider::OpenAi, "claude-sonnet-4.5"),
            Provider::Anthropic
        );
        assert_eq!(caching_rules(Provider::OpenAi, "gpt-4o"), Provider::OpenAi);
        assert_eq!(
            caching_rules(Provider::Gemini, "gemini-2.5-pro"),
            Provider::Gemini
        );
        // A router's OpenAI-format usage for Sonnet 4.5 ($3 / $15): 10_000
        // prompt tokens, 8_000 of them cache reads at 0.3, not at 3.
        //   2_000 × 3 + 8_000 × 0.3 = 8_400 → $0.0084
        let usage = Usage {
            input_tokens: 10_000,
            cached_tokens: 8_000,
            ..Usage::default()
        };
        let rules = caching_rules(Provider::OpenAi, "claude-sonnet-4.5");
        let c = cost(rules, &usage, &price("3", "15", None));
        expect(&c, "0.0084", "0", "0.0084");
    }

    #[test]
    fn anthropic_cache_writes_default_to_five_minutes() {
        // 1_000 × 5 × 1.25 = 6_250 → $0.00625 (Opus 4.5, all writes).
        let usage = Usage {
            input_tokens: 1_000,
            cache_creation_tokens: 1_000,
            ..Usage::default()
        };
        let c = cost(Provider::Anthropic, &usage, &price("5", "25", None));
        expect(&c, "0.00625", "0", "0.00625");
    }

    #[test]
    fn anthropic_uses_the_table_cached_rate_when_there_is_one() {
        // 1_000 × 0.5 (not 0.1 × 3 = 0.3) = 500 → $0.0005.
        let usage = Usage {
            input_tokens: 1_000,
            cached_tokens: 1_000,
            ..Usage::default()
        };
        let c = cost(Provider::Anthropic, &usage, &price("3", "15", Some("0.5")));
        expect(&c, "0.0005", "0", "0.0005");
    }

    #[test]
    fn anthropic_one_hour_writes_beyond_the_total_are_capped() {
        // Inconsistent usage: 1h count above the total writes → all 1-hour.
        // 100 × 3 × 2 = 600 → $0.0006.
        let usage = Usage {
            input_tokens: 100,
            cache_creation_tokens: 100,
            cache_creation_1h_tokens: 400,
            ..Usage::default()
        };
        let c = cost(Provider::Anthropic, &usage, &price("3", "15", None));
        expect(&c, "0.0006", "0", "0.0006");
    }

    #[test]
    fn non_anthropic_cache_writes_are_plain_input() {
        // 1_000 × 2.5 = 2_500 → $0.0025, whatever the 1-hour count says.
        let usage = Usage {
            input_tokens: 1_000,
            cache_creation_tokens: 300,
            cache_creation_1h_tokens: 300,
            ..Usage::default()
        };
        for provider in [Provider::OpenAi, Provider::Gemini] {
            let c = cost(provider, &usage, &price("2.5", "10", None));
            expect(&c, "0.0025", "0", "0.0025");
        }
    }

    #[test]
    fn gemini_thoughts_are_billed_once_as_output() {
        // gemini-2.5-flash ($0.3 / $2.5, cached $0.03): 100 candidates + 400
        // thoughts arrive as output_tokens = 500; reasoning_tokens is informational.
        //   800 × 0.3 + 200 × 0.03 = 246   → $0.000246
        //   500 × 2.5              = 1_250 → $0.00125
        let usage = Usage {
            input_tokens: 1_000,
            cached_tokens: 200,
            output_tokens: 500,
            reasoning_tokens: 400,
            ..Usage::default()
        };
        let c = cost(Provider::Gemini, &usage, &price("0.3", "2.5", Some("0.03")));
        expect(&c, "0.000246", "0.00125", "0.001496");
    }

    #[test]
    fn gemini_without_a_cached_rate_charges_cache_reads_as_input() {
        // 1_000 × 2 = 2_000 → $0.002.
        let usage = Usage {
            input_tokens: 1_000,
            cached_tokens: 600,
            ..Usage::default()
        };
        let c = cost(Provider::Gemini, &usage, &price("2", "12", None));
        expect(&c, "0.002", "0", "0.002");
    }

    #[test]
    fn more_cached_than_prompt_tokens_prices_no_negative_input() {
        // uncached saturates at 0; the 50 reads are still charged: 50 × 1.25 = 62.5.
        let usage = Usage {
            input_tokens: 10,
            cached_tokens: 50,
            ..Usage::default()
        };
        let c = cost(Provider::OpenAi, &usage, &price("2.5", "10", Some("1.25")));
        expect(&c, "0.0000625", "0", "0.0000625");
    }

    #[test]
    fn costs_round_half_away_from_zero_at_ten_places_and_total_adds_up() {
        // 1 token × $0.00005 / 1M = 0.00000000005 → 0.0000000001 (half-up);
        // 3 tokens × $0.00001 / 1M = 0.00000000003 → 0.
        let usage = Usage {
            input_tokens: 1,
            output_tokens: 3,
            ..Usage::default()
        };
        let c = cost(Provider::OpenAi, &usage, &price("0.00005", "0.00001", None));
        expect(&c, "0.0000000001", "0", "0.0000000001");
        assert!(c.input_cost.scale() <= COST_DECIMAL_PLACES);
        assert_eq!(c.total_cost, c.input_cost + c.output_cost);
    }

    #[test]
    fn small_prices_stay_exact() {
        // gemini-1.5-flash-8b $0.0375 × 1.25 for an Anthropic-style write would
        // be 0.046875; here: 7 × 0.0375 = 0.2625 → $0.0000002625 exactly.
        let usage = Usage {
            input_tokens: 7,
            ..Usage::default()
        };
        let c = cost(Provider::Gemini, &usage, &price("0.0375", "0.15", None));
        expect(&c, "0.0000002625", "0", "0.0000002625");
    }

    #[test]
    fn absurd_token_counts_do_not_panic() {
        let usage = Usage {
            input_tokens: u64::MAX,
            cached_tokens: u64::MAX,
            cache_creation_tokens: u64::MAX,
            cache_creation_1h_tokens: u64::MAX,
            output_tokens: u64::MAX,
            reasoning_tokens: u64::MAX,
        };
        let p = price("1000000", "1000000", Some("1000000"));
        for provider in Provider::ALL {
            let c = cost(provider, &usage, &p);
            assert!(c.total_cost > Decimal::ZERO);
        }
        assert_eq!(
            cost(Provider::OpenAi, &Usage::default(), &p),
            Cost::default()
        );
    }

    #[test]
    fn costs_are_written_without_trailing_zeros() {
        for (amount, text) in [
            ("0", "0"),
            ("65.0", "0.000065"),
            ("1000000", "1"),
            ("0.5", "0.0000005"),
        ] {
            assert_eq!(per_million(dec(amount)).to_string(), text);
        }
    }

    proptest::proptest! {
        /// Moving the point is the division it replaced: the same value,
        /// written the same (SQLite stores the text), at every scale,
        /// including amounts too fine to move and left to the division.
        #[test]
        fn moving_the_point_is_dividing_by_a_million(
            mantissa in proptest::num::i64::ANY,
            scale in 0u32..=28,
            tokens in 0u64..=10_000_000_000,
        ) {
            let amount = Decimal::new(mantissa, scale).saturating_mul(Decimal::from(tokens));
            let divided = (amount / TOKENS_PER_PRICE_UNIT)
                .round_dp_with_strategy(COST_DECIMAL_PLACES, RoundingStrategy::MidpointAwayFromZero);
            let moved = per_million(amount);
            proptest::prop_assert_eq!(moved, divided);
            proptest::prop_assert_eq!(moved.to_string(), divided.to_string());
        }
    }
}
