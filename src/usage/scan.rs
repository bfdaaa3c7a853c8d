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
//!   input is ignored. Inside an object or array that no target can reach
//!   (the choices of a completion, the content of a message) only brackets
//!   and strings are followed, which is several times faster; a syntax error
//!   in there that leaves the brackets balanced is not noticed.
//!
//! The input may hold several top-level values in a row (a JSON text followed
//! by a stray error object is something upstreams do); each is scanned the
//! same way.

use std::cell::RefCell;
use std::thread::LocalKey;

use super::recycle::{FreeList, Recycle, Recycled};

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

/// The targets a scanner follows and what it derives from them, worked out
/// at compile time ([`Targets::new`] is `const`): aiming a scanner, new or
/// recycled, is then a copy.
#[derive(Debug)]
pub(crate) struct Targets {
    list: &'static [Target],
    /// The deepest target path.
    max_depth: usize,
    /// One bit per target: all are alive at the top.
    all: u32,
    /// `key_filter[d]`: the [`key_bit`] of every target key at depth `d`.
    key_filter: [u64; KEY_DEPTH],
}

impl Targets {
    pub(crate) const fn new(list: &'static [Target]) -> Targets {
        assert!(list.len() <= MAX_TARGETS, "too many scan targets");
        let mut max_depth = 0;
        let mut key_filter = [0u64; KEY_DEPTH];
        let mut t = 0;
        while t < list.len() {
            let path = list[t].path;
            assert!(list[t].slot < SLOTS, "no such capture slot");
            assert!(path.len() <= KEY_DEPTH, "target path too deep");
            if path.len() > max_depth {
                max_depth = path.len();
            }
            let mut d = 0;
            while d < path.len() {
                if let Seg::Key(k) = path[d] {
                    key_filter[d] |= key_bit(k.as_bytes());
                }
                d += 1;
            }
            t += 1;
        }
        Targets {
            list,
            max_depth,
            all: (1u64 << list.len()).wrapping_sub(1) as u32,
            key_filter,
        }
    }
}

/// Bytes kept per captured value.
pub(crate) const CAPTURE_CAP: usize = 64 * 1024;
/// Initial capacity of a capture buffer.
const CAPTURE_START: usize = 256;
/// Deepest nesting accepted.
pub(crate) const MAX_DEPTH: usize = 512;
/// Keys are remembered only for this many outer levels (targets are shallow).
const KEY_DEPTH: usize = 6;
/// Longest key remembered; longer keys never match a target.
const KEY_CAP: usize = 32;
/// Number of capture slots.
pub(crate) const SLOTS: usize = 8;
/// Most targets one scanner follows (they are bits of a `u32`).
const MAX_TARGETS: usize = 32;

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

    /// Key bytes without quote or backslash.
    fn push_run(&mut self, run: &[u8]) {
        let len = usize::from(self.len);
        match self.bytes.get_mut(len..len + run.len()) {
            Some(slots) => {
                slots.copy_from_slice(run);
                self.len += run.len() as u8;
            }
            None => self.unmatchable = true,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn is(&self, key: &str) -> bool {
        !self.unmatchable && self.bytes() == key.as_bytes()
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
    targets: &'static Targets,
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
    /// Where the latest value captured into each slot began (it may still
    /// be open).
    starts: [Option<u64>; SLOTS],
    /// Capture buffers of earlier inputs, reused so that scanning one SSE
    /// event after another allocates nothing.
    spare: Vec<Vec<u8>>,
    /// The most bytes any capture buffer ever held (for tests and metrics).
    peak_capture: usize,
    /// `alive[d]`: the targets (bit `i` = `targets[i]`) whose first `d`
    /// segments match the path down to depth `d`: the containers there and,
    /// in objects, the current keys. Set when an array opens and when a key
    /// ends, so a value's start tests bits instead of walking every path.
    alive: [u32; KEY_DEPTH + 1],
    /// `key_filter[d]`: the [`key_bit`] of every target key at depth `d`.
    /// Most keys on the wire are no target's, and are dismissed by it without
    /// being compared to any.
    key_filter: [u64; KEY_DEPTH],
    /// Inside a container no target can reach: skipping to the depth given,
    /// see [`Scanner::skip_run`].
    skip_to: Option<usize>,
    skip_in_string: bool,
    skip_escaped: bool,
}

impl Scanner {
    pub(crate) fn new(targets: &'static Targets) -> Scanner {
        Scanner {
            targets,
            max_target_depth: targets.max_depth,
            stack: Vec::with_capacity(KEY_DEPTH),
            keys: [KeyBuf::EMPTY; KEY_DEPTH],
            state: State::Value,
            error: None,
            pos: 0,
            started: false,
            documents: 0,
            active: Vec::new(),
            slots: Default::default(),
            starts: [None; SLOTS],
            spare: Vec::new(),
            peak_capture: 0,
            alive: alive_at_start(targets),
            key_filter: targets.key_filter,
            skip_to: None,
            skip_in_string: false,
            skip_escaped: false,
        }
    }

    /// A clean scanner for `targets` from this thread's free list (see
    /// [`super::recycle`]), or a new one.
    pub(crate) fn recycled(targets: &'static Targets) -> Recycled<Scanner> {
        let (mut scanner, reused) = Recycled::take(|| Scanner::new(targets));
        if reused {
            scanner.retarget(targets);
        }
        scanner
    }

    /// Follows `targets` from now on, on a clean scanner (new, or cleaned
    /// for reuse).
    pub(crate) fn retarget(&mut self, targets: &'static Targets) {
        debug_assert_eq!(self.pos, 0, "targets changed mid-input");
        if !std::ptr::eq(self.targets, targets) {
            self.targets = targets;
            self.max_target_depth = targets.max_depth;
            self.alive = alive_at_start(targets);
            self.key_filter = targets.key_filter;
        }
    }

    /// Forgets everything seen so far (keeps allocations), to scan a new input.
    pub(crate) fn reset(&mut self) {
        // Nothing consumed since the last reset (or since `new`), and no
        // failure on a first byte: nothing to forget. Stream triage resets
        // after every event, most of them unscanned.
        if self.pos == 0 && self.error.is_none() {
            return;
        }
        self.stack.clear();
        self.state = State::Value;
        self.error = None;
        self.pos = 0;
        self.started = false;
        self.documents = 0;
        self.skip_to = None;
        self.skip_in_string = false;
        self.skip_escaped = false;
        for active in self.active.drain(..) {
            self.spare.push(active.bytes);
        }
        for slot in &mut self.slots {
            if let Some(capture) = slot.take() {
                self.spare.push(capture.bytes);
            }
        }
        self.starts = [None; SLOTS];
    }

    pub(crate) fn push(&mut self, mut input: &[u8]) {
        while !input.is_empty() && self.error.is_none() {
            if let Some(depth) = self.skip_to {
                let run = self.skip_run(input, depth);
                self.pos += run as u64;
                input = &input[run..];
                continue;
            }
            // Fast paths: take a whole run of string, key or whitespace bytes
            // at once (the same result as byte by byte, far fewer steps).
            let run = match self.state {
                State::InString { escaped: false } => self.string_run(input),
                State::InKey { escaped: false } => self.key_run(input),
                State::Number => self.number_run(input),
                State::Key | State::KeyOrClose if input[0] == b'"' => self.member_run(input),
                State::InString { .. } | State::InKey { .. } | State::Literal { .. } => 0,
                _ if is_whitespace(input[0]) => self.whitespace_run(input),
                _ => 0,
            };
            if run > 0 {
                self.pos += run as u64;
                input = &input[run..];
                continue;
            }
            if self.error.is_some() {
                break;
            }
            let b = input[0];
            if let Err(e) = self.byte(b) {
                self.fail(e);
                break;
            }
            self.pos += 1;
            input = &input[1..];
        }
    }

    fn fail(&mut self, e: ScanError) {
        self.error = Some(e);
        self.active.clear();
    }

    /// Plain string content up to the next quote or backslash. Only a
    /// captured string is checked for raw control characters (nobody reads
    /// the others).
    fn string_run(&mut self, input: &[u8]) -> usize {
        if self.active.is_empty() {
            return string_end(input);
        }
        let run = checked_string_end(input);
        if control_at(input, run) {
            self.fail(ScanError::Malformed);
            return 0;
        }
        self.record_run(&input[..run]);
        run
    }

    /// A whole `"key": value` member of an object, taken at once when its
    /// key is plain and its value a plain string, a number or a literal:
    /// most members of a chunk or of a usage object, and the scalar targets
    /// (a model name, a type). The byte state machine took ~7 steps and 2
    /// runs for one. When the value is an object or an array, this takes
    /// the key and the colon (the state machine's 4 steps and a run) and
    /// leaves the bracket to [`Scanner::begin_value`], which works out the
    /// targets below it. Returns 0 to leave anything else to the state
    /// machine, which then reads the same bytes with the same result:
    /// escapes, a member cut by the end of the input, malformed text.
    fn member_run(&mut self, input: &[u8]) -> usize {
        // A key with a control character is left to the state machine, to fail.
        let key_len = checked_string_end(&input[1..]);
        let key = &input[1..1 + key_len];
        if input.get(1 + key_len) != Some(&b'"') {
            return 0;
        }
        let colon = skip_whitespace(input, 2 + key_len);
        if input.get(colon) != Some(&b':') {
            return 0;
        }
        let value = skip_whitespace(input, colon + 1);
        let rest = &input[value.min(input.len())..];
        let first = match rest.first() {
            Some(&b @ (b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n' | b'{' | b'[')) => b,
            _ => return 0,
        };
        // The targets whose path goes through this key; those that end here
        // capture the value. (Past the deepest target nothing is tracked.)
        let depth = self.stack.len();
        let tracked = depth <= self.max_target_depth;
        // The filter first: most keys are no target's.
        let below = if tracked && self.may_be_target_key(depth, key) {
            self.targets_below(depth, key)
        } else {
            0
        };
        if let b'{' | b'[' = first {
            // As the state machine leaves a key: then a value must follow.
            self.set_key(key);
            if tracked {
                self.alive[depth] = below;
            }
            self.record_run(&input[..value]);
            self.state = State::Value;
            return value;
        }
        let targets = self.targets.list;
        let captured = bits(below).any(|i| targets[i].path.len() == depth);
        let value_len = match first {
            b'"' => {
                // As in string_run: only a captured string is checked for control bytes.
                let text_len = if captured || !self.active.is_empty() {
                    checked_string_end(&rest[1..])
                } else {
                    string_end(&rest[1..])
                };
                if rest.get(1 + text_len) != Some(&b'"') {
                    return 0;
                }
                text_len + 2
            }
            // A number is over only at a byte that cannot continue it.
            b'-' | b'0'..=b'9' => match rest.iter().position(|b| !is_number_byte(*b)) {
                Some(len) => len,
                None => return 0,
            },
            b't' if rest.starts_with(b"true") => 4,
            b'f' if rest.starts_with(b"false") => 5,
            b'n' if rest.starts_with(b"null") => 4,
            _ => return 0,
        };
        self.set_key(key);
        if tracked {
            self.alive[depth] = below;
        }
        let end = value + value_len;
        if captured {
            // The key and colon go to the enclosing captures only.
            self.record_run(&input[..value]);
            self.start_captures(below, depth, self.pos + value as u64);
            self.record_run(&input[value..end]);
            self.finish_captures(depth);
        } else {
            self.record_run(&input[..end]);
        }
        self.state = State::AfterValue;
        end
    }

    /// The innermost object's key is `key` (plain: no quote, no backslash).
    fn set_key(&mut self, key: &[u8]) {
        if let Some(buf) = self.current_key() {
            *buf = KeyBuf::EMPTY;
            buf.push_run(key);
        }
    }

    /// Plain key bytes up to the next quote or backslash.
    fn key_run(&mut self, input: &[u8]) -> usize {
        let run = checked_string_end(input);
        if control_at(input, run) {
            self.fail(ScanError::Malformed);
            return 0;
        }
        let text = &input[..run];
        self.record_run(text);
        if let Some(key) = self.current_key() {
            key.push_run(text);
        }
        run
    }

    /// Inside a container that no target can reach (nothing in it is ever
    /// captured on its own), only brackets and strings matter: this runs over
    /// them until the container closes (back at `depth`), several times
    /// faster than the full state machine, copying the bytes to the captures
    /// that enclose it. Brackets are still matched and nesting still capped;
    /// the grammar between them (colons, commas, numbers, literals) is not
    /// checked here, so a syntax error inside such a container goes
    /// unnoticed (the values that matter are all outside it).
    fn skip_run(&mut self, input: &[u8], depth: usize) -> usize {
        let capturing = !self.active.is_empty();
        let mut i = 0;
        let mut failed = None;
        'input: while i < input.len() {
            if !self.skip_in_string {
                let b = input[i];
                i += 1;
                match b {
                    b'"' => self.skip_in_string = true,
                    b'{' | b'[' => {
                        if self.stack.len() >= MAX_DEPTH {
                            failed = Some(ScanError::TooDeep);
                            i -= 1;
                            break;
                        }
                        self.stack.push(if b == b'{' {
                            Container::Object
                        } else {
                            Container::Array
                        });
                        continue;
                    }
                    b'}' | b']' => {
                        let closing = if b == b'}' {
                            Container::Object
                        } else {
                            Container::Array
                        };
                        if self.stack.pop() != Some(closing) {
                            failed = Some(ScanError::Malformed);
                            i -= 1;
                            break;
                        }
                        if self.stack.len() == depth {
                            self.record_run(&input[..i]);
                            self.skip_to = None;
                            self.end_value();
                            return i;
                        }
                        continue;
                    }
                    _ => continue,
                }
            }
            // In a string (just opened, or carried over from the last
            // input): on to its closing quote, over any escapes, in this
            // same step.
            loop {
                if self.skip_escaped {
                    // The escaped byte.
                    if i == input.len() {
                        break 'input;
                    }
                    self.skip_escaped = false;
                    i += 1;
                }
                let rest = &input[i..];
                let run = if capturing {
                    checked_string_end(rest)
                } else {
                    string_end(rest)
                };
                if capturing && control_at(rest, run) {
                    failed = Some(ScanError::Malformed);
                    break 'input;
                }
                i += run;
                match input.get(i) {
                    None => break 'input,
                    Some(b'\\') => {
                        self.skip_escaped = true;
                        i += 1;
                    }
                    Some(_) => {
                        self.skip_in_string = false;
                        i += 1;
                        break;
                    }
                }
            }
        }
        match failed {
            Some(e) => self.fail(e),
            None => self.record_run(&input[..i]),
        }
        i
    }

    /// The rest of a number (its first byte began it). The byte that ends
    /// it is left to the state machine, as is the end of input.
    fn number_run(&mut self, input: &[u8]) -> usize {
        let run = input
            .iter()
            .position(|b| !is_number_byte(*b))
            .unwrap_or(input.len());
        if run > 0 {
            self.record_run(&input[..run]);
        }
        run
    }

    /// Whitespace between tokens.
    fn whitespace_run(&mut self, input: &[u8]) -> usize {
        let run = input
            .iter()
            .position(|&b| !is_whitespace(b))
            .unwrap_or(input.len());
        if run > 0 {
            self.record_run(&input[..run]);
        }
        run
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

    /// The offset of the first byte of the latest value that began at a
    /// target of `slot`, whether it has ended or not.
    pub(crate) fn last_start(&self, slot: usize) -> Option<u64> {
        self.starts.get(slot).copied().flatten()
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
            if is_number_byte(b) {
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
                    self.key_ended();
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
            _ if is_whitespace(b) => self.record(b),
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
                    if let Some(key) = self.current_key() {
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

    /// The key being read in the innermost object, if its depth is tracked.
    fn current_key(&mut self) -> Option<&mut KeyBuf> {
        let depth = self.stack.len().checked_sub(1)?;
        self.keys.get_mut(depth)
    }

    /// Whether `key`, in the object at `depth` (1 = top level), may be some
    /// target's key there: a "no" from [`Scanner::key_filter`] is certain.
    fn may_be_target_key(&self, depth: usize, key: &[u8]) -> bool {
        depth
            .checked_sub(1)
            .and_then(|d| self.key_filter.get(d))
            .is_none_or(|&filter| filter & key_bit(key) != 0)
    }

    /// The key of the innermost object is complete: the targets still alive
    /// one level down are those whose segment there is this key.
    fn key_ended(&mut self) {
        let depth = self.stack.len();
        if depth == 0 || depth > self.max_target_depth {
            return;
        }
        let Some(key) = self.keys.get(depth - 1) else {
            return;
        };
        self.alive[depth] = if key.unmatchable || !self.may_be_target_key(depth, key.bytes()) {
            0
        } else {
            self.targets_below(depth, key.bytes())
        };
    }

    /// The targets alive below `key` (plain, unescaped, passed by the key
    /// filter) in the object at `depth` (1 = top level, at most the deepest
    /// target's depth): those alive at the object whose segment there is
    /// this key.
    fn targets_below(&self, depth: usize, key: &[u8]) -> u32 {
        if key.len() > KEY_CAP {
            return 0;
        }
        let mut below = 0;
        for i in bits(self.alive[depth - 1]) {
            if let Some(Seg::Key(k)) = self.targets.list[i].path.get(depth - 1) {
                if key == k.as_bytes() {
                    below |= 1 << i;
                }
            }
        }
        below
    }

    fn key_byte(&mut self, b: u8) {
        if let Some(key) = self.current_key() {
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
        // Targets whose path leads here: some end here, others go deeper.
        let here = match self.alive.get(depth) {
            Some(&alive) if depth <= self.max_target_depth => alive,
            _ => 0,
        };
        debug_assert_eq!(
            here,
            self.targets
                .list
                .iter()
                .enumerate()
                .filter(|(_, t)| t.path.len() >= depth && self.path_is(&t.path[..depth]))
                .fold(0, |m, (i, _)| m | 1 << i),
            "alive targets at depth {depth}"
        );
        let targets = self.targets.list;
        if here != 0 {
            self.start_captures(here, depth, self.pos);
        }
        self.record(b);
        match next {
            Some(state) => self.state = state,
            None => {
                if depth >= MAX_DEPTH {
                    return Err(ScanError::TooDeep);
                }
                let reachable = depth < self.max_target_depth
                    && bits(here).any(|i| targets[i].path.len() > depth);
                let inside = if b == b'{' {
                    self.stack.push(Container::Object);
                    self.state = State::KeyOrClose;
                    // Nothing matches in an object before its first key.
                    0
                } else {
                    self.stack.push(Container::Array);
                    self.state = State::ValueOrClose;
                    bits(here)
                        .filter(|&i| matches!(targets[i].path.get(depth), Some(Seg::Item)))
                        .fold(0, |m, i| m | 1 << i)
                };
                if let Some(alive) = self.alive.get_mut(depth + 1) {
                    *alive = inside;
                }
                if !reachable {
                    self.skip_to = Some(depth);
                }
            }
        }
        Ok(())
    }

    #[inline]
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
        self.finish_captures(depth);
        if depth == 0 {
            self.documents += 1;
        }
        self.state = State::AfterValue;
    }

    /// The targets among `alive` that end at `depth` start capturing the
    /// value that begins at `start`.
    fn start_captures(&mut self, alive: u32, depth: usize, start: u64) {
        let targets = self.targets.list;
        for target in bits(alive).map(|i| &targets[i]) {
            if target.path.len() == depth {
                self.starts[target.slot] = Some(start);
                self.active.push(Active {
                    slot: target.slot,
                    depth,
                    start,
                    len: 0,
                    bytes: self.spare.pop().map_or_else(
                        // Room for a usage object without regrowing byte by byte.
                        || Vec::with_capacity(CAPTURE_START),
                        |mut b| {
                            b.clear();
                            b
                        },
                    ),
                });
            }
        }
    }

    /// The captures of the value that started at `depth` are complete.
    fn finish_captures(&mut self, depth: usize) {
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
    }

    fn record_run(&mut self, run: &[u8]) {
        for active in &mut self.active {
            active.len += run.len() as u64;
            let room = CAPTURE_CAP.saturating_sub(active.bytes.len());
            active.bytes.extend_from_slice(&run[..run.len().min(room)]);
            self.peak_capture = self.peak_capture.max(active.bytes.len());
        }
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

/// A kept scanner's capture buffers may be this large; a larger one (a long
/// error message) is freed rather than held by the free list.
const SPARE_KEEP: usize = 4 * 1024;

thread_local! {
    static FREE_SCANNERS: FreeList<Scanner> = const { RefCell::new(Vec::new()) };
}

impl Recycle for Scanner {
    fn free_list() -> &'static LocalKey<FreeList<Scanner>> {
        &FREE_SCANNERS
    }

    fn clean(&mut self) {
        self.reset();
        self.spare.retain(|buffer| buffer.capacity() <= SPARE_KEEP);
        self.spare.truncate(SLOTS);
        if self.stack.capacity() > 4 * KEY_DEPTH {
            self.stack = Vec::with_capacity(KEY_DEPTH);
        }
        self.peak_capture = 0;
    }
}

/// `Scanner::alive` before any input: every target, at the top.
fn alive_at_start(targets: &Targets) -> [u32; KEY_DEPTH + 1] {
    let mut alive = [0; KEY_DEPTH + 1];
    alive[0] = targets.all;
    alive
}

/// The indexes of the bits set in `mask`, lowest first.
pub(super) fn bits(mut mask: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            i
        })
    })
}

/// A byte that can continue a number (the grammar inside is not checked).
fn is_number_byte(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A key's bit in a one-word filter of keys (different keys may share a
/// bit: a filter only says "maybe").
const fn key_bit(key: &[u8]) -> u64 {
    1 << key_slot(key)
}

/// One of 64 slots for a key, from its length and first byte: the keys on
/// the wire that usage lives under differ in one or the other.
pub(super) const fn key_slot(key: &[u8]) -> usize {
    let first = if key.is_empty() { 0 } else { key[0] as usize };
    (first * 31 + key.len()) & 63
}

/// The first index from `at` that is not whitespace (or the length).
fn skip_whitespace(input: &[u8], mut at: usize) -> usize {
    while input.get(at).is_some_and(|&b| is_whitespace(b)) {
        at += 1;
    }
    at
}

/// Where a run of plain string bytes ends: the first `"` or `\`, else the
/// end of `text`.
///
/// Most keys and values on the wire are a few bytes long, where `memchr2`'s
/// set-up costs more than the search (~50 instructions a call, 66 calls per
/// chat completion; usage keys run to 26 bytes). The first 32 bytes are
/// tested a word at a time, ~10 instructions a word (the
/// has-zero-byte trick on `word ^ '"'` and `word ^ '\\'`: its lowest flagged
/// byte is always a true match, and only the lowest is used); `memchr2` takes
/// longer runs.
#[inline]
pub(super) fn string_end(text: &[u8]) -> usize {
    string_end_by::<false, false>(text)
}

/// [`string_end`] that also stops at a raw control character (below
/// 0x20), which JSON does not allow in a string: where a captured string or
/// a key is read, one pass instead of a search and then a check of the run.
#[inline]
fn checked_string_end(text: &[u8]) -> usize {
    string_end_by::<true, false>(text)
}

/// [`checked_string_end`] that also stops at any byte that is not printable
/// ASCII (0x7f and above): the usage reader's plain strings.
#[inline]
pub(super) fn printable_string_end(text: &[u8]) -> usize {
    string_end_by::<true, true>(text)
}

/// The first `"` or `\` in `text`, or with `CONTROL` also a byte below 0x20,
/// or with `UNPRINTABLE` also one above `~`; else `text.len()`.
///
/// In a word, every test flags its matching bytes in their high bit, and
/// flags another byte only above a match of its own (a borrow or carry runs
/// upward from a matching byte), so the lowest flag of all the tests
/// together is a true match. After 32 bytes, `memchr2` finds the quote or
/// backslash and a fold over the run (a vector loop) says whether another
/// stop comes first.
#[inline(always)]
fn string_end_by<const CONTROL: bool, const UNPRINTABLE: bool>(text: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let stops =
        |b: u8| b == b'"' || b == b'\\' || (CONTROL && b < 0x20) || (UNPRINTABLE && b > b'~');
    let mut at = 0;
    while at < 32 {
        let Some(word) = text.get(at..at + 8) else {
            // Fewer than 8 bytes left.
            return at
                + text[at..]
                    .iter()
                    .position(|&b| stops(b))
                    .unwrap_or(text.len() - at);
        };
        let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let mut found =
            (quote.wrapping_sub(ONES) & !quote) | (backslash.wrapping_sub(ONES) & !backslash);
        if CONTROL {
            found |= word.wrapping_sub(ONES * 0x20) & !word;
        }
        if UNPRINTABLE {
            found |= word | word.wrapping_add(ONES);
        }
        found &= HIGHS;
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let end = at + memchr::memchr2(b'"', b'\\', &text[at..]).unwrap_or(text.len() - at);
    if CONTROL || UNPRINTABLE {
        let run = &text[at..end];
        // No early exit: the compiler turns the fold into a vector loop.
        if run.iter().fold(false, |found, &b| found | stops(b)) {
            return at + run.iter().position(|&b| stops(b)).unwrap_or(run.len());
        }
    }
    end
}

/// Whether the byte at `at` is a raw control character (a run of string
/// bytes ended there rather than at a quote or backslash).
fn control_at(text: &[u8], at: usize) -> bool {
    text.get(at).is_some_and(|&b| b < 0x20)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each end-of-string search should answer, a byte at a time:
    /// [`string_end`], [`checked_string_end`], [`printable_string_end`].
    fn reference_ends(text: &[u8]) -> [usize; 3] {
        let first = |stops: &dyn Fn(u8) -> bool| text.iter().position(|&b| stops(b));
        let escapes = |b: u8| b == b'"' || b == b'\\';
        [
            first(&escapes),
            first(&|b| escapes(b) || b < 0x20),
            first(&|b| escapes(b) || !(b' '..=b'~').contains(&b)),
        ]
        .map(|at| at.unwrap_or(text.len()))
    }

    fn ends(text: &[u8]) -> [usize; 3] {
        [
            string_end(text),
            checked_string_end(text),
            printable_string_end(text),
        ]
    }

    #[test]
    fn string_ends_are_the_first_stop_byte() {
        let mut text = Vec::new();
        // Every length to past the word-wise part (32 bytes), each stop byte at every place
        // (and a quote after it), with neighbours that trip a careless test: 0x01 below a
        // match, 0x20 and 0x7e at the edges of printable, 0x21/0x23 beside the quote, 0x5b/0x5d
        // beside the backslash, 0x80+.
        for len in 0..48 {
            for stop in 0..=len {
                for mark in [b'"', b'\\', 0x00, 0x1f, 0x7f, 0x80, 0xff] {
                    for filler in [b'a', 0x01, b' ', b'~', 0x21, 0x5d, 0xa2] {
                        text.clear();
                        text.extend((0..len).map(|i| match i % 3 {
                            0 => filler,
                            1 => 0x21 + (i % 2) as u8 * 2,
                            _ => 0x5b,
                        }));
                        if stop < len {
                            text[stop] = mark;
                            if stop + 3 < len {
                                text[stop + 3] = b'"';
                            }
                        }
                        assert_eq!(ends(&text), reference_ends(&text), "{text:?}");
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn string_ends_agree_with_a_byte_at_a_time(text in proptest::collection::vec(
            proptest::prop_oneof![
                8 => b' '..=b'~',
                2 => proptest::prelude::any::<u8>(),
                1 => proptest::strategy::Just(b'"'),
                1 => proptest::strategy::Just(b'\\'),
            ],
            0..96,
        )) {
            proptest::prop_assert_eq!(ends(&text), reference_ends(&text));
        }
    }

    static TARGETS: Targets = Targets::new(&[
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
    ]);

    fn scan(input: &[u8]) -> Scanner {
        let mut s = Scanner::new(&TARGETS);
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
    fn containers_no_target_reaches_are_skipped_but_still_balanced() {
        // `choices` cannot hold a target: skipped, brackets still matched.
        let s = scan(br#"{"choices":[{"a":[1,{"b":"]}\"["}]}],"usage":{"x":[1]},"model":"m"}"#);
        assert_eq!(s.status(), Status::Complete);
        assert_eq!(captured(&s, 0), Some(&br#"{"x":[1]}"#[..]));
        assert_eq!(captured(&s, 1), Some(&br#""m""#[..]));
        for bad in [&br#"{"choices":[{"a":1]}"#[..], br#"{"usage":{"x":[1}}"#] {
            assert_eq!(scan(bad).status(), Status::Failed(ScanError::Malformed));
        }
        // The grammar inside a skipped container is not checked.
        let s = scan(br#"{"choices":[{"a" 1,,}],"model":"m"}"#);
        assert_eq!(s.status(), Status::Complete);
        assert_eq!(captured(&s, 1), Some(&br#""m""#[..]));
        // Control characters in a captured string are still refused.
        let s = scan(b"{\"usage\":{\"k\":[\"a\x01\"]}}");
        assert_eq!(s.status(), Status::Failed(ScanError::Malformed));
        let input = vec![b'['; MAX_DEPTH + 10];
        let mut nested = br#"{"choices":"#.to_vec();
        nested.extend(&input);
        assert_eq!(scan(&nested).status(), Status::Failed(ScanError::TooDeep));
    }

    #[test]
    fn control_characters_in_keys_and_captured_strings_are_refused() {
        for text in [
            // Keys, whatever their value and whether a target's or not.
            &b"{\"us\x01age\":1}"[..],
            b"{\"k\x1f\":{}}",
            b"{\"a\":1,\"\x00\":[1]}",
            // A captured string, alone or inside a captured object.
            b"{\"model\":\"g\npt\"}",
            b"{\"usage\":{\"k\":\"\x1f\"}}",
        ] {
            assert_eq!(
                scan(text).status(),
                Status::Failed(ScanError::Malformed),
                "{text:?}"
            );
            for split in 0..=text.len() {
                let mut s = Scanner::new(&TARGETS);
                s.push(&text[..split]);
                s.push(&text[split..]);
                s.end_of_input();
                assert_eq!(
                    s.status(),
                    Status::Failed(ScanError::Malformed),
                    "{text:?} at {split}"
                );
            }
        }
        // Nobody reads the other strings: not checked.
        assert_eq!(scan(b"{\"id\":\"a\x01b\"}").status(), Status::Complete);
    }

    #[test]
    fn truncated_input_is_partial_not_failed() {
        let s = scan(br#"{"usage":{"a":1},"model":"gp"#);
        assert_eq!(s.status(), Status::Partial);
        assert_eq!(captured(&s, 0), Some(&br#"{"a":1}"#[..]));
        assert_eq!(captured(&s, 1), None);
    }

    #[test]
    fn reset_forgets_a_failure_on_the_first_byte_and_a_whole_scan() {
        let mut s = Scanner::new(&TARGETS);
        s.reset(); // untouched: a no-op
        s.push(b"}");
        assert_eq!(s.status(), Status::Failed(ScanError::Malformed));
        s.reset();
        assert_eq!(s.status(), Status::Empty);
        s.push(br#"{"usage":{"a":1}}"#);
        assert_eq!(s.status(), Status::Complete);
        assert_eq!(captured(&s, 0), Some(&br#"{"a":1}"#[..]));
        s.reset();
        assert_eq!(s.status(), Status::Empty);
        assert_eq!(captured(&s, 0), None);
        s.push(br#"{"model":"m"}"#);
        assert_eq!(captured(&s, 0), None);
        assert_eq!(captured(&s, 1).map(<[u8]>::len), Some(3));
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

    /// JSON-ish text: target keys and others, escapes, control bytes,
    /// whitespace, containers, and (sometimes) a broken byte.
    fn json_text() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let ws = prop_oneof![Just(""), Just(" "), Just("\n  ")];
        let key = prop_oneof![
            Just("usage"),
            Just("model"),
            Just("response"),
            Just("n"),
            Just("s"),
            Just("id"),
            Just("prompt_tokens"),
            Just("a\\\"b"),
            Just("k\u{1}"),
            Just("a_key_longer_than_the_thirty_two_bytes_kept"),
        ];
        let scalar = prop_oneof![
            Just("\"text\"".to_string()),
            Just("\"esc\\\"aped\"".to_string()),
            Just("\"ctl\u{1}\"".to_string()),
            Just("\"\"".to_string()),
            Just("-12.5e+3".to_string()),
            Just("0".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
            Just("nul".to_string()),
        ];
        let value = scalar.prop_recursive(3, 24, 4, move |inner| {
            let members = proptest::collection::vec((key.clone(), ws.clone(), inner.clone()), 0..5);
            prop_oneof![
                members.prop_map(|m| {
                    let body: Vec<String> = m
                        .into_iter()
                        .map(|(k, w, v)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                }),
                proptest::collection::vec(inner, 0..4)
                    .prop_map(|items| format!("[{}]", items.join(","))),
            ]
        });
        (value, any::<u16>(), any::<u8>(), any::<bool>()).prop_map(|(text, at, byte, broken)| {
            let mut text = text.into_bytes();
            if broken && !text.is_empty() {
                let at = usize::from(at) % text.len();
                text[at] = byte;
            }
            text
        })
    }

    proptest::proptest! {
        /// Byte by byte, no member is ever whole in one push: the state
        /// machine alone reads it. Whole, `member_run` takes most members,
        /// and captures the scalar targets.
        #[test]
        fn whole_members_are_read_as_the_byte_state_machine_reads_them(text in json_text()) {
            proptest::prop_assert_eq!(reading(&fed([&text[..]])), reading(&fed(text.chunks(1))));
        }

        /// Cut in three anywhere (a string in a skipped container cut, then
        /// closed with its container in the next piece, …): read as whole.
        #[test]
        fn any_three_pieces_read_as_the_whole(text in json_text(), a in 0..=u16::MAX, b in 0..=u16::MAX) {
            let cut = |at: u16| usize::from(at) % (text.len() + 1);
            let (x, y) = (cut(a).min(cut(b)), cut(a).max(cut(b)));
            let pieces = [&text[..x], &text[x..y], &text[y..]];
            proptest::prop_assert_eq!(reading(&fed([&text[..]])), reading(&fed(pieces)));
        }
    }

    /// A scanner for [`PROPERTY_TARGETS`] fed `pieces` in order, then ended.
    fn fed<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Scanner {
        let mut s = Scanner::new(&PROPERTY_TARGETS);
        for piece in pieces {
            s.push(piece);
        }
        s.end_of_input();
        s
    }

    /// What a scanner made of its input: its status, the documents it
    /// closed, and each slot's capture with its offsets.
    type Reading = (Status, u64, Vec<Option<(Vec<u8>, u64, u64)>>);

    fn reading(s: &Scanner) -> Reading {
        let captures = (0..4)
            .map(|slot| s.capture(slot).map(|c| (c.bytes.clone(), c.start, c.end)))
            .collect();
        (s.status(), s.documents(), captures)
    }

    /// For the properties. `response` is captured and has a target inside:
    /// its members are read (not skipped) and recorded into its capture.
    static PROPERTY_TARGETS: Targets = Targets::new(&[
        Target {
            path: &[Seg::Key("response")],
            slot: 0,
        },
        Target {
            path: &[Seg::Key("response"), Seg::Key("usage")],
            slot: 1,
        },
        Target {
            path: &[Seg::Key("model")],
            slot: 2,
        },
        Target {
            path: &[Seg::Item, Seg::Key("n")],
            slot: 3,
        },
        // Two targets end at one member: each captures it.
        Target {
            path: &[Seg::Key("model")],
            slot: 3,
        },
    ]);

    #[test]
    fn splitting_the_input_anywhere_gives_the_same_captures() {
        let input = br#"{"s":"x\\y\"z","choices":[{"a":"b\"]"}],"id":"q","o":["}",{"c":"d"}],"usage":{"k":[true,false,null,-1.5E+2]},"model":"m"}"#;
        let whole = scan(input);
        assert_eq!(whole.status(), Status::Complete);
        assert_eq!(captured(&whole, 1), Some(&br#""m""#[..]));
        for split in 0..=input.len() {
            let mut s = Scanner::new(&TARGETS);
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
