//! Normalising model names so that a provider's spelling meets the table's.
//!
//! Providers report names like `claude-sonnet-4-5-20250929`,
//! `models/gemini-2.0-flash-001` or `gpt-4o-2024-08-06`, while llm-prices
//! lists `claude-sonnet-4.5`, `gemini-2.0-flash` and `gpt-4o`, and even mixes
//! spellings itself (`claude-opus-4-5` next to `claude-4.5-haiku`,
//! `gemini-3-1-pro-preview` next to `gemini-3.1-flash-lite-preview`).
//! [`canonical`] maps every spelling of a model to one key; the table applies
//! it to its ids once, at construction, and to the provider's name once per
//! lookup.
//!
//! The rules, in order:
//! - an OpenAI fine-tune `ft:<base>:<org>::<id>` becomes `ft:` and its
//!   base's key: it meets the table's `ft:` entries (OpenAI's fine-tuned
//!   inference prices, 1.5–2 × the base's), never the base's own price;
//! - everything up to the last `/` is dropped (`models/…`), and everything
//!   from an `@` (Vertex's `claude-…@20250929`);
//! - ASCII lowercase;
//! - trailing `-latest`, dates (`-2024-08-06`, `-20250929`) and all-digit
//!   version tags of 3 or 4 digits (`-001`, `-0613`, `-2505`) are removed,
//!   repeatedly;
//! - `-` between two short numbers becomes `.` (`4-5` → `4.5`), so dashes
//!   and dots in version numbers compare equal;
//! - `claude-<version>-<family>` becomes `claude-<family>-<version>`
//!   (`claude-3.5-sonnet` → `claude-sonnet-3.5`).
//!
//! Stripping is applied to table ids too, so an id that itself ends in a tag
//! (`grok-4.20-multi-agent-0309`, `text-davinci-003`) still matches itself,
//! and the exact-id lookup runs before any of this anyway.

/// The normalised key of a model name or table id.
pub(crate) fn canonical(name: &str) -> String {
    let name = name.trim();
    if name.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ft:")) {
        let rest = &name[3..];
        return format!("ft:{}", canonical(rest.split(':').next().unwrap_or(rest)));
    }
    let base = strip_decorations(name);
    let lower = base.to_ascii_lowercase();
    let mut stem = lower.as_str();
    while let Some(shorter) = strip_version_suffix(stem) {
        stem = shorter;
    }

    let mut out = String::with_capacity(stem.len());
    let mut previous: Option<&str> = None;
    for token in stem.split('-') {
        if let Some(prev) = previous {
            let joins_version = is_short_number(prev) && is_short_number(token);
            out.push(if joins_version { '.' } else { '-' });
        }
        out.push_str(token);
        previous = Some(token);
    }
    reorder_claude(out)
}

/// The long-context tier an id names, as `(base id, threshold in tokens)`:
/// `gemini-2.5-pro-200k` → `("gemini-2.5-pro", 200_000)`.
///
/// Whether the base really exists is the table's call: `-<N>k` alone could
/// be part of a model's own name.
pub(crate) fn tier_suffix(id: &str) -> Option<(&str, u64)> {
    let (base, suffix) = id.rsplit_once('-')?;
    let digits = suffix
        .strip_suffix('k')
        .or_else(|| suffix.strip_suffix('K'))?;
    if base.is_empty() || digits.is_empty() || digits.len() > 6 {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousands: u64 = digits.parse().ok()?;
    Some((base, thousands.checked_mul(1000)?))
}

/// Removes the wrappers around a model name that are not part of it.
pub(crate) fn strip_decorations(name: &str) -> &str {
    let mut s = name;
    if let Some((_, after)) = s.rsplit_once('/') {
        s = after;
    }
    if let Some((before, _)) = s.split_once('@') {
        s = before;
    }
    s
}

/// Whether an id is one dated (or `-latest`) snapshot of a model, such as
/// `gpt-4o-2024-05-13`.
pub(crate) fn names_a_snapshot(id: &str) -> bool {
    strip_version_suffix(&strip_decorations(id).to_ascii_lowercase()).is_some()
}

/// One trailing tag that does not change the price, if `s` ends with one.
fn strip_version_suffix(s: &str) -> Option<&str> {
    if let Some(rest) = s.strip_suffix("-latest") {
        return Some(rest);
    }
    if let Some(rest) = strip_iso_date(s) {
        return Some(rest);
    }
    let (rest, last) = s.rsplit_once('-')?;
    let is_tag = matches!(last.len(), 3 | 4 | 8) && last.bytes().all(|b| b.is_ascii_digit());
    (is_tag && !rest.is_empty()).then_some(rest)
}

/// Strips a trailing `-YYYY-MM-DD`.
fn strip_iso_date(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let n = b.len();
    if n < 12 {
        return None;
    }
    let tail = &b[n - 11..];
    let shape_ok = tail.iter().enumerate().all(|(i, &c)| match i {
        0 | 5 | 8 => c == b'-',
        _ => c.is_ascii_digit(),
    });
    shape_ok.then(|| &s[..n - 11])
}

fn is_short_number(token: &str) -> bool {
    matches!(token.len(), 1 | 2) && token.bytes().all(|b| b.is_ascii_digit())
}

fn is_version(token: &str) -> bool {
    token.starts_with(|c: char| c.is_ascii_digit())
        && token.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Anthropic named models `claude-3-5-sonnet` until 4.x and
/// `claude-sonnet-4-5` since; llm-prices uses both orders.
fn reorder_claude(key: String) -> String {
    let mut parts = key.splitn(4, '-');
    let (Some("claude"), Some(version), Some(family)) = (parts.next(), parts.next(), parts.next())
    else {
        return key;
    };
    if !is_version(version) || !family.bytes().all(|b| b.is_ascii_lowercase()) || family.is_empty()
    {
        return key;
    }
    let mut out = format!("claude-{family}-{version}");
    if let Some(rest) = parts.next() {
        out.push('-');
        out.push_str(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_version_tags_are_stripped() {
        assert_eq!(canonical("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(canonical("gpt-4o-mini-2024-07-18"), "gpt-4o-mini");
        assert_eq!(canonical("claude-sonnet-4-5-20250929"), "claude-sonnet-4.5");
        assert_eq!(canonical("gemini-2.0-flash-001"), "gemini-2.0-flash");
        assert_eq!(canonical("gpt-4-0613"), "gpt-4");
        assert_eq!(canonical("claude-3-7-sonnet-latest"), "claude-sonnet-3.7");
        assert_eq!(canonical("o3-2025-04-16"), "o3");
    }

    #[test]
    fn wrappers_around_the_name_are_removed() {
        assert_eq!(canonical("models/gemini-2.5-flash"), "gemini-2.5-flash");
        assert_eq!(
            canonical("publishers/google/models/gemini-2.5-pro"),
            "gemini-2.5-pro"
        );
        assert_eq!(
            canonical("ft:gpt-4o-mini-2024-07-18:acme::abc123"),
            "ft:gpt-4o-mini"
        );
        assert_eq!(
            canonical("FT:gpt-4.1-2025-04-14:acme:run:xyz"),
            "ft:gpt-4.1"
        );
        assert_eq!(canonical("claude-opus-4-1@20250805"), "claude-opus-4.1");
        assert_eq!(canonical("  GPT-4o  "), "gpt-4o");
    }

    #[test]
    fn dots_and_dashes_in_versions_compare_equal() {
        assert_eq!(canonical("claude-opus-4.5"), canonical("claude-opus-4-5"));
        assert_eq!(
            canonical("gemini-3-1-pro-preview"),
            canonical("gemini-3.1-pro-preview")
        );
        assert_ne!(canonical("gpt-4o-mini"), canonical("gpt-4o"));
    }

    #[test]
    fn claude_word_orders_compare_equal() {
        assert_eq!(canonical("claude-haiku-4-5"), canonical("claude-4.5-haiku"));
        assert_eq!(
            canonical("claude-3-5-sonnet-20241022"),
            canonical("claude-3.5-sonnet")
        );
        assert_eq!(
            canonical("claude-3-haiku-20240307"),
            canonical("claude-3-haiku")
        );
        assert_eq!(canonical("claude-instant-1.2"), "claude-instant-1.2");
    }

    #[test]
    fn real_ids_ending_in_numbers_survive_as_themselves() {
        // The digits are stripped from both sides, so the ids still meet.
        assert_eq!(
            canonical("grok-4.20-multi-agent-0309"),
            "grok-4.20-multi-agent"
        );
        assert_eq!(canonical("gpt-image-1"), "gpt-image-1");
        assert_eq!(canonical("claude-opus-4-1"), "claude-opus-4.1");
        assert_eq!(canonical("claude-opus-4-20250514"), "claude-opus-4");
    }

    #[test]
    fn tier_suffixes_are_parsed_with_their_threshold() {
        assert_eq!(
            tier_suffix("gemini-2.5-pro-200k"),
            Some(("gemini-2.5-pro", 200_000))
        );
        assert_eq!(tier_suffix("gpt-5.4-272k"), Some(("gpt-5.4", 272_000)));
        assert_eq!(
            tier_suffix("gemini-1.5-flash-8b-128k"),
            Some(("gemini-1.5-flash-8b", 128_000))
        );
        assert_eq!(tier_suffix("gemini-1.5-flash-8b"), None);
        assert_eq!(tier_suffix("-200k"), None);
        assert_eq!(tier_suffix("gpt-k"), None);
    }
}
