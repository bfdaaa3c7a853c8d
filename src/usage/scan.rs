//! A bounded, incremental JSON scanner that captures the values at chosen
//! paths.
//!
//! Usage fields sit in a few known places (`usage`, `response.usage`,
//! `[*].usageMetadata`, …) of bodies that can be arbitrarily large: a 50 MB
//! embeddings response, a `response.completed` event that repeats the whole
//! output. Instead of building a document, the scanner runs a byte state
//! machine over the input as it arrives (split anywhere, strings with escapes
//! included), tracks the current path, and copies only the raw bytes of the
//! values whose path matches a [`Target`]. Those small captured slices are
//! then parsed with `serde_json` by the provider modules.
//!
//! Paths are sequences of object keys and array items ([`Seg::Item`] matches
//! any index). Keys are compared byte for byte as written on the wire, so a key
//! spelled with escapes never matches (no provider does that).
//!
//! Limits, all independent of the input size:
//! - each capture keeps at most [`CAPTURE_CAP`] bytes; a longer value is still
//!   scanned but its capture is marked [`Capture::truncated`];
//! - nesting deeper than [`MAX_DEPTH`] is reported as [`ScanError::TooDeep`];
//! - a syntax error is [`ScanError::Malformed`]; after any error further
//!   input is ignored.
//!
//! The input may hold several top-level values in a row (a JSON text followed
//! by a stray error object is something upstreams do); each is scanned the
//! same way.

/// One step of a capture path.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg {
    /// The member of an object with this key.
    Key(&'static str),
    /// Any item of an array.
    Item,
}

/// A path to capture and the slot its value is stored in. Several targets may
/// share a slot (`usage` and `response.usage`); the value completed last wins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub path: &'static [Seg],
    pub slot: usize,
}

/// Bytes kept per captured value.
pub(crate) const CAPTURE_CAP: usize = 64 * 1024;
/// Deepest nesting accepted.
pub(crate) const MAX_DEPTH: usize = 512;
/// Keys are remembered only for this many outer levels (targets are shallow).
const KEY_DEPTH: usize = 6;
/// Longest key remembered; longer keys never match a target.
const KEY_CAP: usize = 32;
/// Number of capture slots.
pub(crate) const SLOTS: usize = 8;

/// Why a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// Occurs when the input is not JSON (a syntax error at some byte).
    Malformed,
    /// Occurs when objects and arrays nest deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// Where the scanner stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Nothing but whitespace so far.
    Empty,
    /// Inside a value: the input so far is a prefix of valid JSON.
    Partial,
    /// At least one top-level value closed, and not inside another one.
    Complete,
    /// The scan stopped; see [`ScanError`].
    Failed(ScanError),
}

/// The raw bytes of one captured value.
#[derive(Debug, Clone, Default)]
pub(crate) struct Capture {
    /// The value as written, at most [`CAPTURE_CAP`] bytes.
    pub bytes: Vec<u8>,
    /// Set when the value was longer than [`CAPTURE_CAP`].
    pub truncated: bool,
    /// Offset of the value's first byte in the whole input.
    pub start: u64,
    /// Offset just past the value's last byte.
    pub end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value must follow (top level, after `:` or after `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    InKey {
        escaped: bool,
    },
    Colon,
    InString {
        escaped: bool,
    },
    Number,
    Literal {
        word: &'static [u8],
        pos: u8,
    },
    /// After a value: `,`, a closing bracket, or (top level) another value.
    AfterValue,
}

#[derive(Debug, Clone, Copy)]
struct KeyBuf {
    bytes: [u8; KEY_CAP],
    len: u8,
    /// Too long or escaped: never equal to a target key.
    unmatchable: bool,
}

impl KeyBuf {
    const EMPTY: KeyBuf = KeyBuf {
        bytes: [0; KEY_CAP],
        len: 0,
        unmatchable: false,
    };

    fn push(&mut self, b: u8) {
        if b == b'\\' {
            self.unmatchable = true;
        }
        match self.bytes.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
            }
            None => self.unmatchable = true,
        }
    }

    fn is(&self, key: &str) -> bool {
        !self.unmatchable && &self.bytes[..usize::from(self.len)] == key.as_bytes()
    }
}

#[derive(Debug)]
struct Active {
    slot: usize,
    /// Stack depth when the value started; it ends when we are back there.
    depth: usize,
    start: u64,
    len: u64,
    bytes: Vec<u8>,
}

/// The incremental scanner. See the module docs.
#[derive(Debug)]
pub(crate) struct Scanner {
    targets: &'static [Target],
    max_target_depth: usize,
    stack: Vec<Container>,
    keys: [KeyBuf; KEY_DEPTH],
    state: State,
    error: Option<ScanError>,
    /// Bytes consumed so far.
    pos: u64,
    started: bool,
    documents: u64,
    active: Vec<Active>,
    slots: [Option<Capture>; SLOTS],
    /// Capture buffers of earlier inputs, reused so that scanning one SSE
    /// event after another allocates nothing.
    spare: Vec<Vec<u8>>,
    /// The most bytes any capture buffer ever held (for tests and metrics).
    peak_capture: usize,
}

impl Scanner {
    pub(crate) fn new(targets: &'static [Target]) -> Scanner {
        let max_target_depth = targets.iter().map(|t| t.path.len()).max().unwrap_or(0);
        debug_assert!(max_target_depth <= KEY_DEPTH);
        debug_assert!(targets.iter().all(|t| t.slot < SLOTS));
        Scanner {
            targets,
            max_target_depth,
            stack: Vec::new(),
            keys: [KeyBuf::EMPTY; KEY_DEPTH],
            state: State::Value,
            error: None,
            pos: 0,
            started: false,
            documents: 0,
            active: Vec::new(),
            slots: Default::default(),
            spare: Vec::new(),
            peak_capture: 0,
        }
    }

    /// Forgets everything seen so far (keeps allocations), to scan a new input.
    pub(crate) fn reset(&mut self) {
        self.stack.clear();
        self.state = State::Value;
        self.error = None;
        self.pos = 0;
        self.started = false;
        self.documents = 0;
        for active in self.active.drain(..) {
            self.spare.push(active.bytes);
        }
        for slot in &mut self.slots {
            if let Some(capture) = slot.take() {
                self.spare.push(capture.bytes);
            }
        }
    }

    pub(crate) fn push(&mut self, mut input: &[u8]) {
        while !input.is_empty() && self.error.is_none() {
            // Fast path: skip plain string content nobody is capturing.
            if self.state == (State::InString { escaped: false }) && self.active.is_empty() {
                let run = input
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\')
                    .unwrap_or(input.len());
                self.pos += run as u64;
                input = &input[run..];
                if input.is_empty() {
                    break;
                }
            }
            let b = input[0];
            if let Err(e) = self.byte(b) {
                self.error = Some(e);
                self.active.clear();
                break;
            }
            self.pos += 1;
            input = &input[1..];
        }
    }

    /// Marks the end of the input: a top-level number needs it to be complete.
    pub(crate) fn end_of_input(&mut self) {
        if self.error.is_none() && self.state == State::Number && self.stack.is_empty() {
            self.end_value();
        }
    }

    pub(crate) fn status(&self) -> Status {
        if let Some(e) = self.error {
            Status::Failed(e)
        } else if !self.started {
            Status::Empty
        } else if self.documents > 0
            && self.stack.is_empty()
            && matches!(self.state, State::AfterValue | State::Value)
        {
            Status::Complete
        } else {
            Status::Partial
        }
    }

    /// Top-level values closed so far.
    pub(crate) fn documents(&self) -> u64 {
        self.documents
    }

    /// The last completed capture in `slot`.
    pub(crate) fn capture(&self, slot: usize) -> Option<&Capture> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// Removes and returns the last completed capture in `slot`.
    pub(crate) fn take_capture(&mut self, slot: usize) -> Option<Capture> {
        self.slots.get_mut(slot).and_then(Option::take)
    }

    /// The most bytes a capture buffer ever held.
    #[cfg(test)]
    pub(crate) fn peak_capture(&self) -> usize {
        self.peak_capture
    }

    fn byte(&mut self, b: u8) -> Result<(), ScanError> {
        // A number ends at the first byte that cannot continue it; that byte
        // is then handled as whatever follows a value.
        if self.state == State::Number {
            if matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                self.record(b);
                return Ok(());
            }
            self.end_value();
        }
        match self.state {
            State::InString { escaped } => {
                self.record(b);
                if escaped {
                    self.state = State::InString { escaped: false };
                } else if b == b'\\' {
                    self.state = State::InString { escaped: true };
                } else if b == b'"' {
                    self.end_value();
                } else if b < 0x20 {
                    return Err(ScanError::Malformed);
                }
            }
            State::InKey { escaped } => {
                self.record(b);
                if escaped {
                    self.state = State::InKey { escaped: false };
                    self.key_byte(b);
                } else if b == b'"' {
                    self.state = State::Colon;
                } else if b < 0x20 {
                    return Err(ScanError::Malformed);
                } else {
                    if b == b'\\' {
                        self.state = State::InKey { escaped: true };
                    }
                    self.key_byte(b);
                }
            }
            State::Literal { word, pos } => {
                let pos = usize::from(pos);
                if word.get(pos) != Some(&b) {
                    return Err(ScanError::Malformed);
                }
                self.record(b);
                if pos + 1 == word.len() {
                    self.end_value();
                } else {
                    self.state = State::Literal {
                        word,
                        pos: (pos + 1) as u8,
                    };
                }
            }
            _ if matches!(b, b' ' | b'\t' | b'\n' | b'\r') => self.record(b),
            State::Value | State::ValueOrClose => {
                if b == b']' && self.state == State::ValueOrClose {
                    self.record(b);
                    self.close(Container::Array)?;
                } else {
                    self.begin_value(b)?;
                }
            }
            State::KeyOrClose | State::Key => match b {
                b'"' => {
                    self.record(b);
                    if let Some(key) = self
                        .stack
                        .len()
                        .checked_sub(1)
                        .and_then(|d| self.keys.get_mut(d))
                    {
                        *key = KeyBuf::EMPTY;
                    }
                    self.state = State::InKey { escaped: false };
                }
                b'}' if self.state == State::KeyOrClose => {
                    self.record(b);
                    self.close(Container::Object)?;
                }
                _ => return Err(ScanError::Malformed),
            },
            State::Colon => {
                if b != b':' {
                    return Err(ScanError::Malformed);
                }
                self.record(b);
                self.state = State::Value;
            }
            State::AfterValue => match (self.stack.last(), b) {
                (Some(Container::Object), b',') => {
                    self.record(b);
                    self.state = State::Key;
                }
                (Some(Container::Array), b',') => {
                    self.record(b);
                    self.state = State::Value;
                }
                (Some(Container::Object), b'}') => {
                    self.record(b);
                    self.close(Container::Object)?;
                }
                (Some(Container::Array), b']') => {
                    self.record(b);
                    self.close(Container::Array)?;
                }
                (None, _) => self.begin_value(b)?,
                _ => return Err(ScanError::Malformed),
            },
            // Numbers were ended above; this arm cannot be reached.
            State::Number => return Err(ScanError::Malformed),
        }
        Ok(())
    }

    fn key_byte(&mut self, b: u8) {
        if let Some(key) = self
            .stack
            .len()
            .checked_sub(1)
            .and_then(|d| self.keys.get_mut(d))
        {
            key.push(b);
        }
    }

    /// `b` is the first byte of a value.
    fn begin_value(&mut self, b: u8) -> Result<(), ScanError> {
        let next = match b {
            b'{' | b'[' => None,
            b'"' => Some(State::InString { escaped: false }),
            b'-' | b'0'..=b'9' => Some(State::Number),
            b't' => Some(State::Literal {
                word: b"true",
                pos: 1,
            }),
            b'f' => Some(State::Literal {
                word: b"false",
                pos: 1,
            }),
            b'n' => Some(State::Literal {
                word: b"null",
                pos: 1,
            }),
            _ => return Err(ScanError::Malformed),
        };
        self.started = true;
        let depth = self.stack.len();
        if depth <= self.max_target_depth {
            for target in self.targets {
                if self.path_is(target.path) {
                    self.active.push(Active {
                        slot: target.slot,
                        depth,
                        start: self.pos,
                        len: 0,
                        bytes: self.spare.pop().map_or_else(Vec::new, |mut b| {
                            b.clear();
                            b
                        }),
                    });
                }
            }
        }
        self.record(b);
        match next {
            Some(state) => self.state = state,
            None => {
                if depth >= MAX_DEPTH {
                    return Err(ScanError::TooDeep);
                }
                if b == b'{' {
                    self.stack.push(Container::Object);
                    self.state = State::KeyOrClose;
                } else {
                    self.stack.push(Container::Array);
                    self.state = State::ValueOrClose;
                }
            }
        }
        Ok(())
    }

    fn path_is(&self, path: &[Seg]) -> bool {
        path.len() == self.stack.len()
            && path
                .iter()
                .zip(&self.stack)
                .enumerate()
                .all(|(depth, (seg, container))| match (seg, container) {
                    (Seg::Item, Container::Array) => true,
                    (Seg::Key(key), Container::Object) => {
                        self.keys.get(depth).is_some_and(|k| k.is(key))
                    }
                    _ => false,
                })
    }

    fn close(&mut self, container: Container) -> Result<(), ScanError> {
        if self.stack.pop() != Some(container) {
            return Err(ScanError::Malformed);
        }
        self.end_value();
        Ok(())
    }

    /// The value that started at the current depth is over.
    fn end_value(&mut self) {
        let depth = self.stack.len();
        while self.active.last().is_some_and(|a| a.depth == depth) {
            if let Some(done) = self.active.pop() {
                let capture = Capture {
                    truncated: done.len > done.bytes.len() as u64,
                    bytes: done.bytes,
                    start: done.start,
                    end: done.start + done.len,
                };
                if let Some(slot) = self.slots.get_mut(done.slot) {
                    *slot = Some(capture);
                }
            }
        }
        if depth == 0 {
            self.documents += 1;
        }
        self.state = State::AfterValue;
    }

    fn record(&mut self, b: u8) {
        for active in &mut self.active {
            active.len += 1;
            if active.bytes.len() < CAPTURE_CAP {
                active.bytes.push(b);
                self.peak_capture = self.peak_capture.max(active.bytes.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGETS: &[Target] = &[
        Target {
            path: &[Seg::Key("usage")],
            slot: 0,
        },
        Target {
            path: &[Seg::Key("response"), Seg::Key("usage")],
            slot: 0,
        },
        Target {
            path: &[Seg::Key("model")],
            slot: 1,
        },
        Target {
            path: &[Seg::Item, Seg::Key("n")],
            slot: 2,
        },
        Target {
            path: &[Seg::Key("s")],
            slot: 3,
        },
    ];

    fn scan(input: &[u8]) -> Scanner {
        let mut s = Scanner::new(TARGETS);
        s.push(input);
        s.end_of_input();
        s
    }

    fn captured(s: &Scanner, slot: usize) -> Option<&[u8]> {
        s.capture(slot).map(|c| c.bytes.as_slice())
    }

    #[test]
    fn values_at_target_paths_are_captured_verbatim() {
        let s = scan(br#"{"id":"x","usage": {"a": [1, 2.5e3], "b":null} ,"model":"m\"1"}"#);
        assert_eq!(s.status(), Status::Complete);
        assert_eq!(
            captured(&s, 0),
            Some(&br#"{"a": [1, 2.5e3], "b":null}"#[..])
        );
        assert_eq!(captured(&s, 1), Some(&br#""m\"1""#[..]));
    }

    #[test]
    fn nested_usage_keys_do_not_match_top_level_targets() {
        let s = scan(br#"{"choices":[{"usage":1}],"x":{"model":"no"}}"#);
        assert_eq!(captured(&s, 0), None);
        assert_eq!(captured(&s, 1), None);
        let s = scan(br#"{"response":{"usage":{"t":1}}}"#);
        assert_eq!(captured(&s, 0), Some(&br#"{"t":1}"#[..]));
    }

    #[test]
    fn array_items_match_wildcards_and_the_last_one_wins() {
        let s = scan(br#"[{"n":1},{"n":22},{"m":3}]"#);
        assert_eq!(captured(&s, 2), Some(&b"22"[..]));
        assert_eq!(s.status(), Status::Complete);
    }

    #[test]
    fn strings_with_escaped_quotes_and_backslashes_do_not_confuse_the_path() {
        let s = scan(br#"{"x":"a\\\"}{\\","usage":7,"y":"\\"}"#);
        assert_eq!(s.status(), Status::Complete);
        assert_eq!(captured(&s, 0), Some(&b"7"[..]));
    }

    #[test]
    fn offsets_locate_the_value_in_the_input() {
        let input = br#"{ "s" : "abc" , "usage":123}"#;
        let s = scan(input);
        let c = s.capture(3).expect("captured");
        assert_eq!(&input[c.start as usize..c.end as usize], b"\"abc\"");
        let c = s.capture(0).expect("captured");
        assert_eq!(&input[c.start as usize..c.end as usize], b"123");
    }

    #[test]
    fn malformed_inputs_fail() {
        for bad in [
            &b"{\"a\" 1}"[..],
            b"{\"a\":tru}",
            b"[1,]x",
            b"{]",
            b"<html>",
            b"{\"a\":1}}",
        ] {
            let s = scan(bad);
            assert_eq!(
                s.status(),
                Status::Failed(ScanError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn truncated_input_is_partial_not_failed() {
        let s = scan(br#"{"usage":{"a":1},"model":"gp"#);
        assert_eq!(s.status(), Status::Partial);
        assert_eq!(captured(&s, 0), Some(&br#"{"a":1}"#[..]));
        assert_eq!(captured(&s, 1), None);
    }

    #[test]
    fn top_level_number_completes_at_end_of_input() {
        let s = scan(b" 42 ");
        assert_eq!(s.status(), Status::Complete);
        let s = scan(b"42");
        assert_eq!(s.status(), Status::Complete);
    }

    #[test]
    fn several_top_level_values_are_all_scanned() {
        let s = scan(b"{\"usage\":1}\n{\"usage\":2}");
        assert_eq!(s.status(), Status::Complete);
        assert_eq!(s.documents(), 2);
        assert_eq!(captured(&s, 0), Some(&b"2"[..]));
    }

    #[test]
    fn oversized_values_are_truncated_and_flagged() {
        let mut input = br#"{"usage":""#.to_vec();
        input.extend(std::iter::repeat_n(b'a', CAPTURE_CAP * 2));
        input.extend(br#""}"#);
        let s = scan(&input);
        let c = s.capture(0).expect("captured");
        assert!(c.truncated);
        assert_eq!(c.bytes.len(), CAPTURE_CAP);
        assert_eq!(c.end - c.start, CAPTURE_CAP as u64 * 2 + 2);
    }

    #[test]
    fn nesting_beyond_the_cap_fails_without_panicking() {
        let input = vec![b'['; MAX_DEPTH + 10];
        assert_eq!(scan(&input).status(), Status::Failed(ScanError::TooDeep));
    }

    #[test]
    fn splitting_the_input_anywhere_gives_the_same_captures() {
        let input = br#"{"s":"x\\y\"z","usage":{"k":[true,false,null,-1.5E+2]},"model":"m"}"#;
        let whole = scan(input);
        for split in 0..=input.len() {
            let mut s = Scanner::new(TARGETS);
            s.push(&input[..split]);
            s.push(&input[split..]);
            s.end_of_input();
            assert_eq!(s.status(), whole.status());
            for slot in 0..4 {
                assert_eq!(captured(&s, slot), captured(&whole, slot), "split {split}");
            }
        }
    }
}
