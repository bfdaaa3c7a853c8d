//! Token counts read from a captured usage object without building a
//! document (and, for the stripper, the kinds of a few members:
//! [`member_kinds`]).
//!
//! Parsing the capture into a `serde_json::Value` allocated a map, a string
//! per key and a node per value (about 15 000 instructions for OpenAI's
//! usage object, on every request). The provider modules only want a few
//! counts at fixed paths, one or two keys deep, so this reads the JSON with
//! serde's visitors, compares keys in place and keeps only those numbers.
//!
//! The answers are the ones `Value` gave: a count is a non-negative integer
//! (`1.0`, `-1`, `"1"` are not counts), a repeated key means its last value
//! (for an object: the last object), keys are compared decoded, and input
//! that is not JSON is an error — also text in fields nobody reads: values
//! are skipped through [`Kind`], which (unlike serde's `IgnoredAny`) reads
//! strings as strings, so invalid UTF-8 or a lone surrogate escape fails as
//! it did in a document.
//!
//! There are two readers: a small cursor, [`plain_counts`], reads the
//! objects providers actually send (plain ASCII keys, integer counts) and
//! declines anything else, which serde then reads.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::scan::{bits, key_slot, printable_string_end, Capture};

/// What a usage capture held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts<const N: usize> {
    /// The value was a JSON object (not a number, string, array, …).
    pub object: bool,
    /// The count at each of the paths asked for, in their order.
    pub values: [Option<u64>; N],
}

/// The paths a provider reads counts at (each one or two keys long), with
/// tables from a key to the paths it can be part of, worked out at compile
/// time. Most keys of a usage object (`total_tokens`, `audio_tokens`, …)
/// are no path's: their entry is empty and they are compared with nothing.
/// The others are compared with the paths in their entry only, about one.
#[derive(Debug)]
pub(super) struct CountPaths<const N: usize> {
    paths: [&'static [&'static str]; N],
    /// By [`key_slot`]: the paths (bit `i` = `paths[i]`) whose first key
    /// has that slot.
    by_first_key: [u32; 64],
    /// By [`key_slot`]: the two-key paths whose second key has that slot.
    by_second_key: [u32; 64],
}

impl<const N: usize> CountPaths<N> {
    pub(super) const fn new(paths: [&'static [&'static str]; N]) -> CountPaths<N> {
        assert!(N <= 32, "at most 32 count paths (bits of a u32)");
        let mut by_first_key = [0; 64];
        let mut by_second_key = [0; 64];
        let mut i = 0;
        while i < N {
            let path = paths[i];
            assert!(
                !path.is_empty() && path.len() <= 2,
                "a count path is one or two keys"
            );
            by_first_key[key_slot(path[0].as_bytes())] |= 1 << i;
            if path.len() == 2 {
                by_second_key[key_slot(path[1].as_bytes())] |= 1 << i;
            }
            i += 1;
        }
        CountPaths {
            paths,
            by_first_key,
            by_second_key,
        }
    }
}

/// Reads the counts at `paths` from a captured value. `Ok(None)`: no
/// capture, or `null`; `Err`: cut short or not JSON.
pub(super) fn captured_counts<const N: usize>(
    capture: Option<&Capture>,
    paths: &CountPaths<N>,
) -> Result<Option<Counts<N>>, ()> {
    let Some(capture) = capture else {
        return Ok(None);
    };
    if capture.truncated {
        return Err(());
    }
    match plain_counts(&capture.bytes, paths) {
        Some(plain) => Ok(plain),
        None => serde_counts(&capture.bytes, paths),
    }
}

/// [`captured_counts`] for any text, through serde.
fn serde_counts<const N: usize>(
    text: &[u8],
    paths: &CountPaths<N>,
) -> Result<Option<Counts<N>>, ()> {
    let mut counts = Counts {
        object: false,
        values: [None; N],
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    let null = de
        .deserialize_any(Top {
            paths,
            counts: &mut counts,
        })
        .map_err(|_| ())?;
    de.end().map_err(|_| ())?;
    Ok((!null).then_some(counts))
}

/// A key of the usage object, for both readers: clears the counts of the
/// paths that start there (a repeated key replaces what the earlier one
/// said) and says which one-key path it ends, if any (that wins), and
/// which two-key paths go on into its value (bit `i` = `paths[i]`).
#[inline]
fn outer_member<const N: usize>(
    paths: &CountPaths<N>,
    values: &mut [Option<u64>; N],
    key: &[u8],
) -> (Option<usize>, u32) {
    let mut leaf = None;
    let mut nested = 0;
    for i in bits(paths.by_first_key[key_slot(key)]) {
        let path = paths.paths[i];
        if path.first().map(|k| k.as_bytes()) == Some(key) {
            values[i] = None;
            match path.len() {
                1 => leaf = Some(i),
                _ => nested |= 1 << i,
            }
        }
    }
    (leaf, nested)
}

/// The path among `nested` (two-key paths whose first key is the
/// enclosing one, from [`outer_member`]) whose second key is `key`.
#[inline]
fn inner_slot<const N: usize>(paths: &CountPaths<N>, nested: u32, key: &[u8]) -> Option<usize> {
    bits(paths.by_second_key[key_slot(key)] & nested)
        .find(|&i| paths.paths[i].get(1).map(|k| k.as_bytes()) == Some(key))
}

/// The usage objects providers send, read without serde: `null`, or an
/// object whose keys and strings are printable ASCII without escapes, whose
/// numbers are integers that fit a `u64` (or are negative), nested at most
/// [`PLAIN_DEPTH`] deep. Serde's keys and numbers cost about 4 800
/// instructions for OpenAI's usage object, this about 2 700.
/// `None` for anything else, valid or not — escapes, non-ASCII text,
/// fractions, exponents, large numbers, leading zeros, bad syntax — which
/// serde then reads: this answers only where its answer is serde's.
fn plain_counts<const N: usize>(text: &[u8], paths: &CountPaths<N>) -> Option<Option<Counts<N>>> {
    let mut p = Plain { text, at: 0 };
    p.whitespace();
    let counts = if p.literal(b"null") {
        None
    } else {
        let mut counts = Counts {
            object: true,
            values: [None; N],
        };
        p.object(|p, key| {
            let (leaf, nested) = outer_member(paths, &mut counts.values, key);
            if let Some(i) = leaf {
                counts.values[i] = p.count()?;
            } else if nested != 0 && p.peek() == Some(b'{') {
                let values = &mut counts.values;
                p.object(|p, inner| {
                    match inner_slot(paths, nested, inner) {
                        Some(i) => values[i] = p.count()?,
                        None => p.skip(1)?,
                    }
                    Some(())
                })?;
            } else {
                p.skip(0)?;
            }
            Some(())
        })?;
        Some(counts)
    };
    p.whitespace();
    (p.at == text.len()).then_some(counts)
}

/// How deep [`plain_counts`] follows arrays and objects before leaving the
/// value to serde.
const PLAIN_DEPTH: usize = 4;

/// A cursor over the text [`plain_counts`] reads. Each method returns `None`
/// where the text leaves the plain subset.
struct Plain<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Plain<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.at += usize::from(hit);
        hit
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let hit = self.text[self.at..].starts_with(word);
        if hit {
            self.at += word.len();
        }
        hit
    }

    /// A string's content: printable ASCII, no escapes.
    fn string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let rest = &self.text[self.at..];
        // Up to the first quote, backslash or byte that is not printable
        // ASCII; any but the quote (an escape, a control character, UTF-8)
        // declines.
        let end = printable_string_end(rest);
        if rest.get(end) != Some(&b'"') {
            return None;
        }
        let content = &rest[..end];
        self.at += content.len() + 1;
        Some(content)
    }

    /// An integer: `Some(n)` for a non-negative one that fits a `u64`,
    /// `None` (inside) for a negative one.
    fn integer(&mut self) -> Option<Option<u64>> {
        let negative = self.eat(b'-');
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.text[start] == b'0';
        if digits == 0 || leading_zero || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some((!negative).then_some(n))
    }

    /// A value read as `Count` reads it: a count only when it is a
    /// non-negative integer.
    fn count(&mut self) -> Option<Option<u64>> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.integer(),
            _ => self.skip(1).map(|()| None),
        }
    }

    /// Any value, kept nowhere, and what kind it was.
    fn kind(&mut self) -> Option<Kind> {
        let start = self.at;
        let kind = match self.peek()? {
            b'n' => Kind::Null,
            b'{' => Kind::Object,
            b'[' => {
                self.at += 1;
                self.whitespace();
                let empty = self.peek() == Some(b']');
                self.at = start;
                if empty {
                    Kind::EmptyArray
                } else {
                    Kind::Array
                }
            }
            _ => Kind::Scalar,
        };
        // (A value starting with `n` that skips was the literal `null`.)
        self.skip(0)?;
        Some(kind)
    }

    /// Any value, kept nowhere.
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.integer().map(drop),
            b'{' if depth < PLAIN_DEPTH => self.object(|p, _| p.skip(depth + 1)),
            b'[' if depth < PLAIN_DEPTH => {
                self.at += 1;
                self.whitespace();
                if self.eat(b']') {
                    return Some(());
                }
                loop {
                    self.whitespace();
                    self.skip(depth + 1)?;
                    self.whitespace();
                    if self.eat(b']') {
                        return Some(());
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            _ => (self.literal(b"null") || self.literal(b"true") || self.literal(b"false"))
                .then_some(()),
        }
    }

    /// An object, each member's value read by `member` (given the key).
    fn object(&mut self, mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        if !self.eat(b'{') {
            return None;
        }
        self.whitespace();
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            self.whitespace();
            let key = self.string()?;
            self.whitespace();
            if !self.eat(b':') {
                return None;
            }
            self.whitespace();
            member(self, key)?;
            self.whitespace();
            if self.eat(b'}') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }
}

/// The whole value; `true` when it is `null`.
struct Top<'a, const N: usize> {
    paths: &'a CountPaths<N>,
    counts: &'a mut Counts<N>,
}

/// Accepts any JSON value and keeps nothing: the visitor methods of the
/// non-map kinds, returning `$ret`.
macro_rules! ignore_scalars {
    ($ret:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($ret)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($ret)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($ret)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($ret)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element_seed(Kind::Null)?.is_some() {}
            Ok($ret)
        }
    };
}

impl<'de, const N: usize> Visitor<'de> for Top<'_, N> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a usage object")
    }

    ignore_scalars!(false);

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(true)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        self.counts.object = true;
        while let Some(key) = map.next_key_seed(Key)? {
            let key = &*key;
            let (leaf, nested) = outer_member(self.paths, &mut self.counts.values, key.as_bytes());
            if let Some(i) = leaf {
                self.counts.values[i] = map.next_value_seed(Count)?;
            } else if nested != 0 {
                map.next_value_seed(Inner {
                    nested,
                    paths: self.paths,
                    values: &mut self.counts.values,
                })?;
            } else {
                map.next_value_seed(Kind::Null)?;
            }
        }
        Ok(false)
    }
}

/// A key: borrowed from the input unless it is written with escapes.
pub(super) struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }
}

/// A value that counts only when it is a non-negative integer.
struct Count;

impl<'de> DeserializeSeed<'de> for Count {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a token count")
    }

    ignore_scalars!(None);

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(n))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry_seed(Key, Kind::Null)?.is_some() {}
        Ok(None)
    }
}

/// The object under a usage key: fills the two-key paths that go on into it
/// (`nested`, from [`outer_member`]).
struct Inner<'a, const N: usize> {
    nested: u32,
    paths: &'a CountPaths<N>,
    values: &'a mut [Option<u64>; N],
}

impl<'de, const N: usize> DeserializeSeed<'de> for Inner<'_, N> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Inner<'_, N> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of counts")
    }

    ignore_scalars!(());

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(Key)? {
            match inner_slot(self.paths, self.nested, key.as_bytes()) {
                Some(i) => self.values[i] = map.next_value_seed(Count)?,
                None => {
                    map.next_value_seed(Kind::Null)?;
                }
            }
        }
        Ok(())
    }
}

/// What kind of JSON value was read (and skipped). Skipping through it
/// checks everything a document would: strings are read as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Null,
    Scalar,
    EmptyArray,
    Array,
    Object,
}

impl<'de> DeserializeSeed<'de> for Kind {
    type Value = Kind;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Kind {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = 0usize;
        while seq.next_element_seed(Kind::Null)?.is_some() {
            items += 1;
        }
        Ok(if items == 0 {
            Kind::EmptyArray
        } else {
            Kind::Array
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        while map.next_entry_seed(Key, Kind::Null)?.is_some() {}
        Ok(Kind::Object)
    }
}

/// The kinds of the values of `keys` in a JSON object (the last of a
/// repeated key, as in a document); `None` when the input is not one JSON
/// object.
pub(super) fn member_kinds<const N: usize>(
    json: &[u8],
    keys: [&str; N],
) -> Option<[Option<Kind>; N]> {
    match plain_member_kinds(json, &keys) {
        Some(kinds) => Some(kinds),
        None => serde_member_kinds(json, keys),
    }
}

/// [`member_kinds`] by the [`Plain`] cursor, for an object in the subset it
/// reads (a usage chunk: ~9 000 instructions fewer than serde); `None` for
/// anything else, valid or not, which serde then reads.
fn plain_member_kinds<const N: usize>(text: &[u8], keys: &[&str; N]) -> Option<[Option<Kind>; N]> {
    let mut p = Plain { text, at: 0 };
    let mut kinds = [None; N];
    p.whitespace();
    p.object(|p, key| {
        let kind = p.kind()?;
        if let Some(i) = keys.iter().position(|k| k.as_bytes() == key) {
            kinds[i] = Some(kind);
        }
        Some(())
    })?;
    p.whitespace();
    (p.at == text.len()).then_some(kinds)
}

/// [`member_kinds`] for any text, through serde.
fn serde_member_kinds<const N: usize>(json: &[u8], keys: [&str; N]) -> Option<[Option<Kind>; N]> {
    struct Members<'k, const N: usize>([&'k str; N]);

    impl<'de, const N: usize> Visitor<'de> for Members<'_, N> {
        type Value = [Option<Kind>; N];

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut kinds = [None; N];
            while let Some(key) = map.next_key_seed(Key)? {
                match self.0.iter().position(|k| *k == key) {
                    Some(i) => kinds[i] = Some(map.next_value_seed(Kind::Null)?),
                    None => {
                        map.next_value_seed(Kind::Null)?;
                    }
                }
            }
            Ok(kinds)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(json);
    let kinds = de.deserialize_map(Members(keys)).ok()?;
    de.end().ok()?;
    Some(kinds)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    const PATHS: CountPaths<5> = CountPaths::new([
        &["prompt_tokens"],
        &["completion_tokens"],
        &["prompt_tokens_details", "cached_tokens"],
        &["completion_tokens_details", "reasoning_tokens"],
        &["prompt_tokens_details", "cache_write_tokens"],
    ]);

    fn capture(text: &str) -> Capture {
        Capture {
            bytes: text.as_bytes().to_vec(),
            ..Capture::default()
        }
    }

    /// What reading the capture as a `serde_json::Value` gives.
    fn via_value<const N: usize>(
        text: &str,
        paths: &CountPaths<N>,
    ) -> Result<Option<Counts<N>>, ()> {
        match serde_json::from_str::<Value>(text) {
            Err(_) => Err(()),
            Ok(Value::Null) => Ok(None),
            Ok(v) => Ok(Some(Counts {
                object: v.is_object(),
                values: paths.paths.map(|path| {
                    path.iter()
                        .try_fold(&v, |v, key| v.get(key))
                        .and_then(Value::as_u64)
                }),
            })),
        }
    }

    /// Both readers give a document's answer for `paths`; the plain one
    /// may decline.
    fn check_counts<const N: usize>(text: &str, paths: &CountPaths<N>) {
        let expected = via_value(text, paths);
        assert_eq!(
            captured_counts(Some(&capture(text)), paths),
            expected,
            "{text}"
        );
        assert_eq!(serde_counts(text.as_bytes(), paths), expected, "{text}");
        if let Some(plain) = plain_counts(text.as_bytes(), paths) {
            assert_eq!(Ok(plain), expected, "plain reader on {text}");
        }
    }

    /// [`check_counts`] for [`PATHS`], and the members' kinds.
    fn check(text: &str) {
        check_counts(text, &PATHS);
        // The members' kinds too, under keys that the texts use.
        let keys = ["prompt_tokens", "prompt_tokens_details", "x"];
        let by_serde = serde_member_kinds(text.as_bytes(), keys);
        assert_eq!(member_kinds(text.as_bytes(), keys), by_serde, "{text}");
        if let Some(plain) = plain_member_kinds(text.as_bytes(), &keys) {
            assert_eq!(Some(plain), by_serde, "plain kinds on {text}");
        }
    }

    #[test]
    fn keys_that_share_a_slot_are_told_apart() {
        // Same first byte and length: one slot for all the first keys, and
        // one for the second keys.
        const SHARED: CountPaths<5> = CountPaths::new([
            &["ab"],
            &["ac"],
            &["ad", "x1"],
            &["ae", "x2"],
            &["ad", "x2"],
        ]);
        assert_eq!(SHARED.by_first_key[key_slot(b"ab")], 0b11111);
        assert_eq!(SHARED.by_second_key[key_slot(b"x1")], 0b11100);
        for text in [
            r#"{"ab":1,"ac":2,"ad":{"x1":3,"x2":4},"ae":{"x1":5,"x2":6},"af":7}"#,
            r#"{"ae":{"x2":1},"ad":{"x2":2,"x3":9},"aa":{"x1":3}}"#,
            r#"{"ad":{"x1":1},"ad":{"x2":2},"ab":{"x1":3},"ac":4}"#,
            r#"{"ad":{"x\u0031":1},"a\u0062":2}"#,
        ] {
            assert!(matches!(via_value(text, &SHARED), Ok(Some(_))), "{text}");
            check_counts(text, &SHARED);
        }
    }

    #[test]
    fn the_providers_usage_objects_take_the_plain_path() {
        for text in [
            // OpenAI Chat Completions, Responses, Anthropic, Gemini.
            r#"{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
            r#"{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}"#,
            r#"{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":12,"service_tier":"standard","server_tool_use":null}"#,
            r#"{"promptTokenCount": 8, "candidatesTokenCount": 12, "totalTokenCount": 20, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}], "thoughtsTokenCount": 0}"#,
            " null ",
            "{ }",
            r#"{"prompt_tokens":-1,"completion_tokens":true,"prompt_tokens_details":[1,[2,{}]]}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":3},"prompt_tokens_details":7}"#,
        ] {
            assert!(plain_counts(text.as_bytes(), &PATHS).is_some(), "{text}");
            check(text);
        }
        let counts = plain_counts(
            br#"{"prompt_tokens":1200,"prompt_tokens_details":{"cached_tokens":1024,"x":[]},"completion_tokens":18446744073709551615}"#,
            &PATHS,
        );
        assert_eq!(
            counts,
            Some(Some(Counts {
                object: true,
                values: [Some(1200), Some(u64::MAX), Some(1024), None, None]
            }))
        );
    }

    #[test]
    fn the_plain_path_declines_what_it_does_not_cover() {
        for text in [
            r#"{"prompt\u005ftokens":9}"#,
            r#"{"s":"\n","prompt_tokens":3}"#,
            r#"{"s":"é","prompt_tokens":3}"#,
            r#"{"prompt_tokens":1.0}"#,
            r#"{"prompt_tokens":1e3}"#,
            r#"{"prompt_tokens":01}"#,
            r#"{"prompt_tokens":18446744073709551616}"#,
            r#"{"a":[[[[[1]]]]],"prompt_tokens":3}"#,
            r#"{"prompt_tokens":1}x"#,
            r#"{"prompt_tokens":1"#,
            r#"{"prompt_tokens":1,}"#,
            r#"{"prompt_tokens" 1}"#,
            "[1,2]",
            "5",
            "nul",
            "",
        ] {
            assert_eq!(plain_counts(text.as_bytes(), &PATHS), None, "{text}");
            check(text);
        }
    }

    #[test]
    fn openai_usage_object() {
        let text = r#"{"prompt_tokens":1200,"completion_tokens":345,"total_tokens":1545,
            "prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},
            "completion_tokens_details":{"reasoning_tokens":64,"audio_tokens":0,
            "accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#;
        let counts = captured_counts(Some(&capture(text)), &PATHS)
            .unwrap()
            .unwrap();
        assert!(counts.object);
        assert_eq!(
            counts.values,
            [Some(1200), Some(345), Some(1024), Some(64), None]
        );
        check(text);
    }

    #[test]
    fn same_answers_as_a_document() {
        for text in [
            "null",
            " null ",
            "5",
            "\"x\"",
            "[1,2]",
            "{}",
            r#"{"prompt_tokens":-1,"completion_tokens":1.0}"#,
            r#"{"prompt_tokens":"7","completion_tokens":true}"#,
            r#"{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551616}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":null}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":3},"prompt_tokens_details":{"x":1}}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":3},"prompt_tokens_details":null}"#,
            r#"{"prompt_tokens_details":[{"cached_tokens":3}]}"#,
            r#"{"prompt_tokens_details":7,"prompt_tokens":{"a":[1,{"b":2}]}}"#,
            r#"{"prompt\u005ftokens":9}"#,
            r#"{"a":{"prompt_tokens":5},"completion_tokens":[],"prompt_tokens":0}"#,
            r#"{"prompt_tokens":1}x"#,
            r#"{"prompt_tokens":1"#,
            r#"{"prompt_tokens":01}"#,
            "",
        ] {
            check(text);
        }
        // Text nobody reads is still checked, as a document would.
        for text in [
            r#"{"s":"\ud800","prompt_tokens":3}"#,
            r#"{"a":[{"s":"\ud800"}],"prompt_tokens":3}"#,
            r#"{"prompt_tokens_details":{"s":"\ud800"}}"#,
            r#"{"a":{"\ud800":1},"prompt_tokens":3}"#,
        ] {
            assert!(serde_json::from_str::<Value>(text).is_err());
            check(text);
        }
        let mut bad_utf8 = capture(r#"{"s":"x","prompt_tokens":3}"#);
        bad_utf8.bytes[6] = 0xff;
        assert_eq!(captured_counts(Some(&bad_utf8), &PATHS), Err(()));
    }

    #[test]
    fn member_kinds_are_those_of_a_document() {
        let kinds = |text: &[u8]| member_kinds(text, ["choices", "usage"]);
        assert_eq!(
            kinds(br#"{"id":"x","choices":[],"usage":{"a":1}}"#),
            Some([Some(Kind::EmptyArray), Some(Kind::Object)])
        );
        assert_eq!(
            kinds(br#"{"choices":[{"i":0}],"usage":null}"#),
            Some([Some(Kind::Array), Some(Kind::Null)])
        );
        assert_eq!(
            kinds(br#"{"choices":[],"choices":[1],"usage":"x","usage":{}}"#),
            Some([Some(Kind::Array), Some(Kind::Object)])
        );
        assert_eq!(kinds(br#"{"other":1}"#), Some([None, None]));
        assert_eq!(kinds(b"[]"), None);
        // Not JSON, as a document would say: bad UTF-8 or a lone surrogate anywhere.
        assert_eq!(
            kinds(b"{\"model\":\"\xff\",\"choices\":[],\"usage\":{}}"),
            None
        );
        assert_eq!(
            kinds(br#"{"model":"\udc00","choices":[],"usage":{}}"#),
            None
        );
        assert_eq!(kinds(br#"{"choices":[]"#), None);
        assert_eq!(kinds(br#"{"choices":[]} {}"#), None);
        // Each of these answers with serde's, by the plain reader or not.
        for text in [
            br#"{"id":"x","choices":[],"usage":{"a":1}}"#.as_slice(),
            br#"{"choices":[{"i":0}],"usage":null}"#,
            br#"{"choices":[],"choices":[1],"usage":"x","usage":{}}"#,
            br#"{"model":"\udc00","choices":[],"usage":{}}"#,
            b"{\"model\":\"\xff\",\"choices\":[],\"usage\":{}}",
            br#"{"choices":[ ],"usage":{"a":1.5}}"#,
        ] {
            let keys = ["choices", "usage"];
            assert_eq!(kinds(text), serde_member_kinds(text, keys));
        }
        // An OpenAI usage chunk is read by the plain reader.
        let chunk = br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":1200,"completion_tokens":300,"total_tokens":1500,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":128,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"Ab3"}"#;
        assert_eq!(
            plain_member_kinds(chunk, &["choices", "usage"]),
            Some([Some(Kind::EmptyArray), Some(Kind::Object)])
        );
    }

    #[test]
    fn a_cut_capture_is_an_error() {
        let mut c = capture(r#"{"prompt_tokens":1}"#);
        c.truncated = true;
        assert_eq!(captured_counts(Some(&c), &PATHS), Err(()));
        assert_eq!(captured_counts::<5>(None, &PATHS), Ok(None));
    }

    proptest! {
        #[test]
        fn any_small_document(
            entries in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("prompt_tokens"), Just("completion_tokens"),
                        Just("prompt_tokens_details"), Just("completion_tokens_details"),
                        Just("cached_tokens"), Just("other"),
                    ],
                    prop_oneof![
                        Just("1".to_string()), Just("-2".to_string()), Just("3.5".to_string()),
                        Just("null".to_string()), Just("\"4\"".to_string()), Just("[5]".to_string()),
                        (0u64..u64::MAX).prop_map(|n| n.to_string()),
                        proptest::collection::vec(
                            (prop_oneof![Just("cached_tokens"), Just("reasoning_tokens"),
                                         Just("cache_write_tokens"), Just("x")],
                             prop_oneof![Just("6"), Just("-7"), Just("null"), Just("{}")]),
                            0..4,
                        ).prop_map(|inner| format!("{{{}}}", inner.iter()
                            .map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(","))),
                    ],
                ),
                0..8,
            )
        ) {
            let text = format!("{{{}}}", entries.iter()
                .map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(","));
            check(&text);
        }

        /// Texts near the plain subset's edges: odd spacing, numbers of every
        /// form, escapes, non-ASCII, deep nesting, and cuts anywhere.
        #[test]
        fn texts_at_the_plain_paths_edges(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"), Just(" "),
                    Just("\n"), Just("\"prompt_tokens\""), Just("\"prompt_tokens_details\""),
                    Just("\"cached_tokens\""), Just("\"completion_tokens\""), Just("\"x\""),
                    Just("\"a\\\"b\""), Just("\"\\u0041\""), Just("\"é\""), Just("0"), Just("7"),
                    Just("-3"), Just("-0"), Just("01"), Just("2.5"), Just("1e2"), Just("-"),
                    Just("18446744073709551615"), Just("18446744073709551616"), Just("null"),
                    Just("true"), Just("fals"),
                ],
                0..24,
            ),
            wrap in any::<bool>(),
        ) {
            let inner = parts.concat();
            let text = if wrap { format!("{{{inner}}}") } else { inner };
            check(&text);
        }

        /// Any short text over JSON's own characters.
        #[test]
        fn any_text_of_json_characters(text in r#"[{}\[\]":,0-9.eE+\- \tnulrtfasp_\\]{0,40}"#) {
            check(&text);
        }
    }
}
