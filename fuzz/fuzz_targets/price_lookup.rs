//! `PriceTable::lookup` (and `cost`) on arbitrary model names.
//!
//! Input: byte 0 = length `n` of the model name; bytes `1..=n` = the name
//! (lossily decoded as UTF-8, so every input is a name); then, zero-padded:
//! 8 bytes prompt tokens (u64 LE), 1 byte provider, 6 × 8 bytes of `Usage`
//! fields (u64 LE).
//!
//! Invariants:
//! - never panics (neither `lookup` nor `cost` nor `gemini_model_from_path`);
//! - a match names an id of the table, with that id's price;
//! - the name resolves (or not) whatever the prompt size: only the chosen
//!   long-context tier may depend on it, not whether or how the name matched;
//! - a name that is a table id as is matches `Exact`;
//! - lookups are deterministic;
//! - a remembered answer (the table keeps each name's answer) is the answer
//!   computed afresh by a clone (a clone starts with an empty memo);
//! - costs are non-negative, with `total_cost = input_cost + output_cost`
//!   unless the sum saturates.

#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use majordomo::pricing::{cost, MatchKind, Price, PriceTable};
use majordomo::provider::Provider;
use majordomo::usage::{gemini_model_from_path, Usage};

struct Fixture {
    table: PriceTable,
    prices: BTreeMap<String, Price>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let table = PriceTable::bundled();
        assert!(!table.is_empty(), "the bundled snapshot is empty");
        let prices = table
            .iter()
            .map(|(id, price)| (id.to_owned(), price.clone()))
            .collect();
        Fixture { table, prices }
    })
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = bytes.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(buf)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (name, numbers) = rest.split_at(n);
    let model = String::from_utf8_lossy(name);
    let prompt_tokens = u64_at(numbers, 0);
    let provider = Provider::ALL[usize::from(numbers.get(8).copied().unwrap_or(0)) % 3];
    let usage = Usage {
        input_tokens: u64_at(numbers, 9),
        cached_tokens: u64_at(numbers, 17),
        cache_creation_tokens: u64_at(numbers, 25),
        cache_creation_1h_tokens: u64_at(numbers, 33),
        output_tokens: u64_at(numbers, 41),
        reasoning_tokens: u64_at(numbers, 49),
    };

    let Fixture { table, prices } = fixture();
    let _ = gemini_model_from_path(&model);

    let found = table.lookup(&model, prompt_tokens);
    assert_eq!(found, table.lookup(&model, prompt_tokens), "not deterministic");
    let small = table.lookup(&model, 0);
    let huge = table.lookup(&model, u64::MAX);
    let fresh = table.clone();
    for (answer, prompt) in [(&found, prompt_tokens), (&small, 0), (&huge, u64::MAX)] {
        assert_eq!(
            answer,
            &fresh.lookup(&model, prompt),
            "remembered answer differs for {model:?} at {prompt}"
        );
    }
    assert_eq!(found.is_some(), small.is_some(), "resolution depends on the prompt size");
    assert_eq!(found.is_some(), huge.is_some(), "resolution depends on the prompt size");
    if let (Some(a), Some(b), Some(c)) = (&found, &small, &huge) {
        assert_eq!(a.how, b.how);
        assert_eq!(a.how, c.how);
    }
    if prices.contains_key(model.as_ref()) {
        let m = found.as_ref().expect("a table id did not match");
        assert_eq!(m.how, MatchKind::Exact, "{model:?}");
    }

    let Some(m) = found else {
        return;
    };
    let price = prices
        .get(&m.id)
        .unwrap_or_else(|| panic!("matched id {:?} is not in the table", m.id));
    assert_eq!(&m.price, price, "price of {:?}", m.id);

    let c = cost(provider, &usage, &m.price);
    assert!(!c.input_cost.is_sign_negative() || c.input_cost.is_zero(), "{c:?}");
    assert!(!c.output_cost.is_sign_negative() || c.output_cost.is_zero(), "{c:?}");
    if let Some(sum) = c.input_cost.checked_add(c.output_cost) {
        assert_eq!(c.total_cost, sum, "{c:?}");
    }
});
