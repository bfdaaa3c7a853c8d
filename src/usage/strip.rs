//! Removes the usage-only chunk the gateway asked for on a client's behalf.
//!
//! When a client streams an OpenAI chat completion without
//! `stream_options.include_usage`, the gateway injects it upstream (see
//! [`super::request::inject_include_usage`]) and must then take the resulting
//! usage chunk — an event whose data has `"choices": []` and a non-null
//! `usage` object — back out, so the client receives exactly the stream it
//! asked for. The `"usage":null` field the upstream then adds to every other
//! chunk is removed too (a client that did not ask never sees it); every
//! other byte passes unchanged.
//!
//! Events are the byte ranges up to and including the blank line that ends
//! them (LF, CRLF or CR line ends, split anywhere across chunks). Complete
//! events are released as soon as their chunk arrives; only an incomplete
//! trailing event is held, up to [`HOLD_CAP`] bytes. An event that outgrows
//! the cap is released as it comes (it is a content chunk; usage chunks are
//! small) and stripping resumes with the next event. When a chunk holds only
//! complete events, none of them stripped, and nothing was held, the chunk is
//! returned as is, without a copy.
//!
//! The stripper works on the upstream's raw bytes, so it is only used with an
//! identity `Content-Encoding` (the gateway asks for one on injected streams).

use bytes::{Bytes, BytesMut};

use super::counts::{member_kinds, Kind};

/// Most bytes of an incomplete event held back.
pub const HOLD_CAP: usize = 256 * 1024;

/// See the module docs.
#[derive(Debug)]
pub struct InjectedUsageStripper {
    /// The start of an incomplete event.
    held: Vec<u8>,
    /// The current event outgrew [`HOLD_CAP`] and is being passed through.
    passing: bool,
    /// The current line is empty so far (a line end now ends the event).
    line_empty: bool,
    /// The last byte was a CR; an LF now belongs to the same line end.
    cr_pending: bool,
    /// The event ended with that CR; whether it also owns the next LF is not
    /// known yet.
    end_pending: bool,
}

impl Default for InjectedUsageStripper {
    fn default() -> Self {
        Self::new()
    }
}

/// What the client gets from one chunk, built as its events are released:
/// a range of the chunk as long as everything kept is contiguous (returned
/// without a copy), else the kept bytes copied out.
struct Output<'a> {
    chunk: &'a Bytes,
    /// All that is kept so far, while it is one range of the chunk.
    range: Option<(usize, usize)>,
    /// All that is kept so far, once it is not (`range` is then `None`).
    copied: Option<BytesMut>,
    /// Enough for all of it: what was held plus the chunk.
    capacity: usize,
}

impl Output<'_> {
    /// Keeps `chunk[start..end]`.
    fn range(&mut self, start: usize, end: usize) {
        if start == end {
            return;
        }
        if self.copied.is_none() {
            let joined = match self.range {
                None => Some((start, end)),
                Some((from, to)) if to == start => Some((from, end)),
                Some(_) => None,
            };
            if joined.is_some() {
                self.range = joined;
                return;
            }
        }
        let chunk = self.chunk;
        self.copied().extend_from_slice(&chunk[start..end]);
    }

    /// Keeps bytes from outside the chunk.
    fn bytes(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.copied().extend_from_slice(bytes);
        }
    }

    /// The copied output, started with what was kept so far.
    fn copied(&mut self) -> &mut BytesMut {
        let (chunk, capacity, range) = (self.chunk, self.capacity, &mut self.range);
        self.copied.get_or_insert_with(|| {
            let mut out = BytesMut::with_capacity(capacity);
            if let Some((start, end)) = range.take() {
                out.extend_from_slice(&chunk[start..end]);
            }
            out
        })
    }

    fn into_bytes(self) -> Bytes {
        match (self.copied, self.range) {
            (Some(out), _) => out.freeze(),
            (None, Some((start, end))) => self.chunk.slice(start..end),
            (None, None) => Bytes::new(),
        }
    }
}

impl InjectedUsageStripper {
    #[must_use]
    pub fn new() -> Self {
        InjectedUsageStripper {
            held: Vec::new(),
            passing: false,
            line_empty: true,
            cr_pending: false,
            end_pending: false,
        }
    }

    /// Takes the next upstream chunk, returns what the client gets now.
    pub fn filter(&mut self, chunk: Bytes) -> Bytes {
        let mut out = Output {
            chunk: &chunk,
            range: None,
            copied: None,
            capacity: self.held.len() + chunk.len(),
        };
        let mut event_start = 0;
        // The current line's start, and the data lines of the current event
        // (both right only for an event that began in this chunk).
        let mut line_start = 0;
        let mut data = DataLines::default();
        let mut i = 0;
        while i < chunk.len() {
            if !self.cr_pending {
                // A run of bytes that are not line ends only makes the line
                // non-empty: jump to the next CR or LF.
                let next =
                    memchr::memchr2(b'\n', b'\r', &chunk[i..]).map_or(chunk.len(), |o| i + o);
                // The usual event ends at its first line end and a blank
                // line (`\n\n`): it is released at once, without framing
                // the two line ends byte by byte. (`release_event` also
                // handles an event begun in a held or passed-through part.)
                if next > i && i == event_start && chunk.get(next..next + 2) == Some(b"\n\n") {
                    data.line(&chunk, i, next);
                    let end = next + 2;
                    self.release_event(&chunk, i, end, data, &mut out);
                    data = DataLines::default();
                    self.line_empty = true;
                    (event_start, line_start, i) = (end, end, end);
                    continue;
                }
                if next > i {
                    self.line_empty = false;
                    i = next;
                    if i == chunk.len() {
                        break;
                    }
                }
            }
            let b = chunk[i];
            if b == b'\n' || b == b'\r' {
                data.line(&chunk, line_start, i);
                line_start = i + 1;
            }
            if let Some(end) = self.event_end(i, b) {
                self.release_event(&chunk, event_start, end, data, &mut out);
                data = DataLines::default();
                event_start = end;
            }
            i += 1;
        }
        let rest = &chunk[event_start..];
        if self.passing {
            out.range(event_start, chunk.len());
        } else if self.held.len() + rest.len() > HOLD_CAP {
            out.bytes(&std::mem::take(&mut self.held));
            out.range(event_start, chunk.len());
            self.passing = true;
        } else {
            self.held.extend_from_slice(rest);
        }
        out.into_bytes()
    }

    /// The end of the stream: whatever is held, minus a usage event.
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        let complete = self.end_pending;
        *self = InjectedUsageStripper::new();
        if complete && is_usage_event(&held, single_data_line(&held)) {
            Bytes::new()
        } else {
            Bytes::from(without_null_usage(&held).unwrap_or(held))
        }
    }

    /// Advances the line state over byte `i`; returns the offset in the chunk
    /// where an event ended, if one did.
    fn event_end(&mut self, i: usize, b: u8) -> Option<usize> {
        let mut ended = None;
        if self.cr_pending {
            self.cr_pending = false;
            let pending = std::mem::take(&mut self.end_pending);
            if b == b'\n' {
                return pending.then_some(i + 1);
            }
            if pending {
                ended = Some(i);
            }
        }
        match b {
            b'\n' => {
                if self.line_empty {
                    // Two events cannot end at once: an LF right after a
                    // resolved CR end is handled above.
                    ended = Some(i + 1);
                }
                self.line_empty = true;
            }
            b'\r' => {
                self.cr_pending = true;
                self.end_pending = self.line_empty;
                self.line_empty = true;
            }
            _ => self.line_empty = false,
        }
        ended
    }

    fn release_event(
        &mut self,
        chunk: &Bytes,
        start: usize,
        end: usize,
        data: DataLines,
        out: &mut Output<'_>,
    ) {
        if self.passing {
            self.passing = false;
            out.range(start, end);
        } else if self.held.is_empty() {
            // The whole event is in this chunk: its lines were seen framing it.
            let single = data.single().map(|(from, to)| (from - start, to - start));
            kept_of_event(&chunk[start..end], single, |from, to| {
                out.range(start + from, start + to)
            });
        } else {
            self.held.extend_from_slice(&chunk[start..end]);
            let event = std::mem::take(&mut self.held);
            kept_of_event(&event, single_data_line(&event), |from, to| {
                out.bytes(&event[from..to])
            });
        }
    }
}

/// The `data` lines of an event, noted as the framing passes their ends.
#[derive(Debug, Default, Clone, Copy)]
struct DataLines {
    /// How many (only none, one or more matters).
    count: u8,
    /// The last one's range.
    last: (usize, usize),
}

impl DataLines {
    fn line(&mut self, text: &[u8], start: usize, end: usize) {
        if data_value(&text[start..end]).is_some() {
            self.count = self.count.saturating_add(1);
            self.last = (start, end);
        }
    }

    /// The range of the only data line, if there is exactly one.
    fn single(&self) -> Option<(usize, usize)> {
        (self.count == 1).then_some(self.last)
    }
}

/// The range of an event's only data line, if it has exactly one.
fn single_data_line(event: &[u8]) -> Option<(usize, usize)> {
    let mut data = DataLines::default();
    for (start, line) in lines(event) {
        data.line(event, start, start + line.len());
    }
    data.single()
}

/// With `include_usage` on, the upstream adds `"usage":null` as the last
/// field of every other chunk; a client that did not ask would not see it.
/// Returns the event with `,"usage":null` removed where a `data:` line ends
/// in it (the top-level object's last field, so never text inside a string or
/// a nested object), or `None` when no line does.
fn without_null_usage(event: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let cut = kept_ranges(event, |from, to| {
        // The whole event is one range only when nothing is cut: no copy then.
        if (from, to) != (0, event.len()) {
            out.reserve(event.len());
            out.extend_from_slice(&event[from..to]);
        }
    });
    cut.then_some(out)
}

/// What the client gets of a complete event, as ranges of it handed to
/// `keep` in order: nothing of the usage event, the rest without its null
/// usage fields ([`kept_ranges`]). `single` is the range of the event's only
/// data line, if it has exactly one.
fn kept_of_event(event: &[u8], single: Option<(usize, usize)>, mut keep: impl FnMut(usize, usize)) {
    // Most events are one data line ending with the upstream's
    // `"usage":null`: the last `usage` member of a one-line object, so not
    // the usage event.
    if let Some((start, end)) = single {
        if let Some((comma, close)) = null_usage_member(&event[start..end]) {
            keep(0, start + comma);
            keep(start + close, event.len());
            return;
        }
    }
    if !is_usage_event(event, single) {
        kept_ranges(event, keep);
    }
}

/// What [`without_null_usage`] keeps, as ranges of `event` handed to `keep`
/// in order (the whole event when nothing is cut); `true` when something
/// was cut. Lets an event inside one chunk be passed on as slices of it.
fn kept_ranges(event: &[u8], mut keep: impl FnMut(usize, usize)) -> bool {
    let mut from = 0;
    for (line_start, line) in lines(event) {
        if line.starts_with(b"data:") {
            if let Some((comma, close)) = null_usage_member(line) {
                keep(from, line_start + comma);
                from = line_start + close;
            }
        }
    }
    keep(from, event.len());
    from > 0
}

/// The lines of an event with their offsets: split at each CR or LF, so a
/// CRLF gives an empty line between, which no caller minds.
fn lines(event: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut start = 0;
    memchr::memchr2_iter(b'\n', b'\r', event)
        .chain(std::iter::once(event.len()))
        .map(move |end| {
            let line_start = start;
            start = end + 1;
            (line_start, &event[line_start..end])
        })
}

/// The range of the upstream's `"usage":null` member in a data line, to cut:
/// the object's last member ([`trailing_null_usage`]), or the one just
/// before OpenAI's `"obfuscation"` padding, which it sends last by default
/// (and which stays: the client would get it without usage too).
pub(super) fn null_usage_member(line: &[u8]) -> Option<(usize, usize)> {
    trailing_null_usage(line).or_else(|| null_usage_before_obfuscation(line))
}

/// In a line ending `…,"usage":null,"obfuscation":"…"}` (OpenAI's compact
/// spelling), the range from the usage's comma to the padding's. Both are
/// members of the top-level object: the padding's closes it. Its value is
/// letters and digits; the last quote but one opens it, since an escaped
/// quote would follow a backslash, not `:`.
fn null_usage_before_obfuscation(line: &[u8]) -> Option<(usize, usize)> {
    const USAGE: &[u8] = b",\"usage\":null";
    const PADDING: &[u8] = b",\"obfuscation\":\"";
    let value_end = line
        .len()
        .checked_sub(2)
        .filter(|&i| &line[i..] == b"\"}")?;
    let value_start = memchr::memrchr(b'"', &line[..value_end])? + 1;
    let padding = value_start
        .checked_sub(PADDING.len())
        .filter(|&i| &line[i..value_start] == PADDING)?;
    let comma = padding
        .checked_sub(USAGE.len())
        .filter(|&i| &line[i..padding] == USAGE)?;
    Some((comma, padding))
}

/// In a line ending `…, "usage" : null }` (whitespace allowed), the range
/// from the comma to just before the closing brace. In a line that is one
/// JSON object, that is its last member: no quote of it can be inside a
/// string (one there would follow a backslash, not a comma).
pub(super) fn trailing_null_usage(line: &[u8]) -> Option<(usize, usize)> {
    // OpenAI's own spelling, compared at once.
    const COMPACT: &[u8] = b",\"usage\":null}";
    if line.ends_with(COMPACT) {
        return Some((line.len() - COMPACT.len(), line.len() - 1));
    }
    spaced_trailing_null_usage(line)
}

/// [`trailing_null_usage`] read a byte at a time, whitespace allowed.
fn spaced_trailing_null_usage(line: &[u8]) -> Option<(usize, usize)> {
    let mut end = line.len();
    let back = |mut i: usize| {
        while i > 0 && line[i - 1].is_ascii_whitespace() {
            i -= 1;
        }
        i
    };
    end = back(end);
    if end == 0 || line[end - 1] != b'}' {
        return None;
    }
    let close = end - 1;
    let mut i = back(close);
    i = i.checked_sub(4).filter(|&i| &line[i..i + 4] == b"null")?;
    i = back(i);
    i = i.checked_sub(1).filter(|&i| line[i] == b':')?;
    i = back(i);
    i = i
        .checked_sub(7)
        .filter(|&i| &line[i..i + 7] == b"\"usage\"")?;
    i = back(i);
    let comma = i.checked_sub(1).filter(|&i| line[i] == b',')?;
    Some((comma, close))
}

/// An event whose data is a JSON object with `"choices": []` and a `usage`
/// object. `single` is the range of its only data line, if it has exactly
/// one ([`single_data_line`]): that line's value is the data, read in place.
fn is_usage_event(event: &[u8], single: Option<(usize, usize)>) -> bool {
    // Cheap pre-check, so ordinary chunks (`"usage":null`) are not parsed.
    if !super::has_usage_object(event) {
        return false;
    }
    let joined;
    let data = match single.and_then(|(start, end)| data_value(&event[start..end])) {
        Some(value) => value,
        None => {
            // No data line, or several: they join with `\n`.
            let mut all = Vec::new();
            for (i, value) in lines(event)
                .filter_map(|(_, line)| data_value(line))
                .enumerate()
            {
                if i > 0 {
                    all.push(b'\n');
                }
                all.extend_from_slice(value);
            }
            joined = all;
            &joined[..]
        }
    };
    // Read without building a document: only the two members' kinds matter.
    member_kinds(data, ["choices", "usage"]) == Some([Some(Kind::EmptyArray), Some(Kind::Object)])
}

/// The value of a `data` field line (`None` for other lines).
fn data_value(line: &[u8]) -> Option<&[u8]> {
    match line.strip_prefix(b"data")? {
        [] => Some(&[]),
        [b':', b' ', rest @ ..] => Some(rest),
        [b':', rest @ ..] => Some(rest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::openai::tests::chat_stream;
    use proptest::prelude::*;

    const USAGE_EVENT: &str = r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":1200,"completion_tokens":300,"total_tokens":1500,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":128,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;

    /// The chat stream, and what a client that did not ask for usage gets:
    /// no usage event, and no `"usage":null` in the other chunks.
    fn streams(line_end: &str) -> (Vec<u8>, Vec<u8>) {
        let upstream = String::from_utf8(chat_stream())
            .expect("utf-8")
            .replace('\n', line_end);
        let event = format!("{USAGE_EVENT}{line_end}{line_end}");
        assert!(upstream.contains(&event));
        assert!(
            upstream.contains(",\"usage\":null"),
            "the sample has null usage fields"
        );
        let client = upstream.replace(&event, "").replace(",\"usage\":null", "");
        (upstream.into_bytes(), client.into_bytes())
    }

    fn run(upstream: &[u8], splits: &[usize]) -> Vec<u8> {
        let body = Bytes::copy_from_slice(upstream);
        let mut stripper = InjectedUsageStripper::new();
        let mut out = Vec::new();
        let mut from = 0;
        for &at in splits.iter().chain(std::iter::once(&upstream.len())) {
            out.extend_from_slice(&stripper.filter(body.slice(from..at)));
            from = at;
        }
        out.extend_from_slice(&stripper.finish());
        out
    }

    /// OpenAI's chunks carry `"obfuscation"` padding after `"usage":null`
    /// (by default since 2025): the null usage goes, the padding stays, at
    /// every split point.
    #[test]
    fn a_null_usage_before_the_obfuscation_padding_is_removed_and_the_padding_kept() {
        let (upstream, client) = streams("\n");
        let pad = |s: Vec<u8>, with_usage: bool| {
            let s = String::from_utf8(s).unwrap();
            let mut out = String::new();
            for (i, line) in s.split_inclusive('\n').enumerate() {
                let usage_chunk = line.contains("\"choices\":[]");
                match line.strip_suffix("}\n") {
                    Some(object) if line.starts_with("data: {") && !usage_chunk => {
                        let object = if with_usage {
                            object.to_string()
                        } else {
                            object.replace(",\"usage\":null", "")
                        };
                        out.push_str(&format!("{object},\"obfuscation\":\"Rm{i}YFV8a\"}}\n"));
                    }
                    _ => out.push_str(line),
                }
            }
            out.into_bytes()
        };
        let upstream = pad(upstream, true);
        let client = pad(client, false);
        assert!(String::from_utf8_lossy(&upstream).contains(",\"usage\":null,\"obfuscation\":\""));
        for at in 0..=upstream.len() {
            assert_eq!(run(&upstream, &[at]), client, "split at {at}");
        }
        // Only that spelling: anything else after the null usage stays as is.
        for line in [
            &b"data: {\"a\":1,\"usage\":null,\"obfuscation\":\"x\\\"\"}"[..],
            b"data: {\"a\":1,\"usage\":null,\"other\":\"x\"}",
            b"data: {\"a\":{\"usage\":0},\"obfuscation\":\"x\"}",
            b"data: {\"obfuscation\":\"x\"}",
        ] {
            assert_eq!(
                null_usage_member(line),
                None,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            null_usage_member(b"{\"a\":1,\"usage\":null,\"obfuscation\":\"\"}"),
            Some((6, 19))
        );
    }

    #[test]
    fn the_usage_event_is_removed_at_every_split_point() {
        for line_end in ["\n", "\r\n", "\r"] {
            let (upstream, client) = streams(line_end);
            assert_eq!(run(&upstream, &[]), client, "{line_end:?}");
            for at in 0..=upstream.len() {
                assert_eq!(run(&upstream, &[at]), client, "{line_end:?} split at {at}");
            }
            let bytes: Vec<usize> = (1..upstream.len()).collect();
            assert_eq!(
                run(&upstream, &bytes),
                client,
                "{line_end:?} one-byte chunks"
            );
        }
    }

    #[test]
    fn every_data_line_of_an_event_loses_its_null_usage() {
        // Only an event with one data line takes the framing's shortcut; one
        // with two has both lines cut, however the stream is split.
        let upstream = "data: {\"a\":1,\"usage\":null}\ndata: {\"b\":2,\"usage\":null}\n\n\
                        data: {\"c\":3,\"usage\":null}\n\n";
        let client = "data: {\"a\":1}\ndata: {\"b\":2}\n\ndata: {\"c\":3}\n\n";
        for at in 0..=upstream.len() {
            assert_eq!(
                String::from_utf8(run(upstream.as_bytes(), &[at])).unwrap(),
                client,
                "split at {at}"
            );
        }
    }

    #[test]
    fn a_usage_event_ending_the_stream_is_removed_at_finish() {
        for tail in ["\n\n", "\r\r", "\r\n\r\n"] {
            let upstream =
                format!("data: {{\"choices\":[{{\"delta\":{{}}}}]}}\n\n{USAGE_EVENT}{tail}");
            let client = "data: {\"choices\":[{\"delta\":{}}]}\n\n";
            for at in 0..=upstream.len() {
                assert_eq!(
                    run(upstream.as_bytes(), &[at]),
                    client.as_bytes(),
                    "{tail:?} split at {at}"
                );
            }
        }
    }

    #[test]
    fn a_stream_without_a_usage_event_passes_through_identical() {
        let (_, client) = streams("\n");
        for at in 0..=client.len() {
            assert_eq!(run(&client, &[at]), client, "split at {at}");
        }
        let partial = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}";
        assert_eq!(run(partial, &[10]), partial);
    }

    #[test]
    fn a_chunk_of_complete_events_is_returned_without_a_copy() {
        let (_, client) = streams("\n");
        let chunk = Bytes::from(client);
        let mut stripper = InjectedUsageStripper::new();
        let out = stripper.filter(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(out.len(), chunk.len());
        assert!(stripper.finish().is_empty());
    }

    #[test]
    fn complete_events_are_released_before_an_incomplete_one() {
        let mut stripper = InjectedUsageStripper::new();
        let chunk = Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b\"");
        let out = stripper.filter(chunk.clone());
        assert_eq!(&out[..], b"data: {\"a\":1}\n\n");
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(
            &stripper.filter(Bytes::from_static(b":2}\n\n"))[..],
            b"data: {\"b\":2}\n\n"
        );
    }

    #[test]
    fn an_event_over_the_hold_cap_is_passed_through_and_stripping_resumes() {
        let big = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}],\"usage\":null}}\n\n",
            "x".repeat(HOLD_CAP)
        );
        let upstream = format!("{big}{USAGE_EVENT}\n\ndata: [DONE]\n\n");
        let splits: Vec<usize> = (1..upstream.len()).step_by(4096).collect();
        assert_eq!(
            run(upstream.as_bytes(), &splits),
            format!("{big}data: [DONE]\n\n").as_bytes()
        );
    }

    #[test]
    fn null_usage_fields_are_removed_with_their_comma() {
        assert_eq!(
            without_null_usage(b"data: {\"a\":1,\"usage\":null}\n\n").unwrap(),
            b"data: {\"a\":1}\n\n"
        );
        assert_eq!(
            without_null_usage(b"data: {\"a\":1 , \"usage\" : null }\r\n\r\n").unwrap(),
            b"data: {\"a\":1 }\r\n\r\n"
        );
        // Not the top-level object's last field: left alone.
        assert_eq!(
            without_null_usage(b"data: {\"usage\":null,\"a\":1}\n\n"),
            None
        );
        assert_eq!(
            without_null_usage(b"data: {\"choices\":[{\"delta\":{},\"usage\":null}]}\n\n"),
            None
        );
        assert_eq!(
            without_null_usage(
                b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\"}}],\"usage\":null}\n\n"
            )
            .unwrap(),
            b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\"}}]}\n\n"
        );
        assert_eq!(without_null_usage(b"data: {\"usage\":{}}\n\n"), None);
        // The only member: no comma to take with it.
        assert_eq!(without_null_usage(b"data: {\"usage\":null}\n\n"), None);
        assert_eq!(without_null_usage(b"data: [DONE]\n\n"), None);
    }

    #[test]
    fn the_compact_null_usage_reads_as_the_spaced_one() {
        for line in [
            &b"data: {\"a\":1,\"usage\":null}"[..],
            b"{\"choices\":[{\"delta\":{\"content\":\"\\\",\\\"usage\\\":null}\"}}],\"usage\":null}",
            b",\"usage\":null}",
            b"{\"usage\":null}",
            b"{\"a\":1, \"usage\":null}",
            b"{\"a\":1,\"usage\":null} ",
            b"{\"a\":1,\"usage\":nul}",
        ] {
            assert_eq!(
                trailing_null_usage(line),
                spaced_trailing_null_usage(line),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn chunks_with_choices_or_null_usage_are_not_usage_events() {
        let usage_event = |event: &[u8]| is_usage_event(event, single_data_line(event));
        assert!(!usage_event(
            b"data: {\"choices\":[{\"index\":0}],\"usage\":{\"prompt_tokens\":1}}\n\n"
        ));
        assert!(!usage_event(b"data: {\"choices\":[],\"usage\":null}\n\n"));
        assert!(!usage_event(b"data: [DONE]\n\n"));
        assert!(usage_event(
            b"data:{\"choices\" : [ ], \"usage\" :  {}}\n\n"
        ));
        assert!(usage_event(
            b"data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":1}}\n\n"
        ));
        // Not JSON (fuzz finding F4): a bad byte or a lone surrogate in any
        // string, even one nobody reads, means it is not the usage chunk.
        assert!(!usage_event(
            b"data: {\"model\":\"gpt-\xff\",\"choices\":[],\"usage\":{}}\n\n"
        ));
        assert!(!usage_event(
            b"data: {\"model\":\"\\ud800\",\"choices\":[],\"usage\":{}}\n\n"
        ));
    }

    /// Streams built from SSE-ish fragments, usage events included.
    fn fragments() -> impl Strategy<Value = Vec<u8>> {
        let pieces = prop_oneof![
            Just("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}"),
            Just("data: {\"choices\":[{}],\"usage\":null}"),
            Just("data: [DONE]"),
            Just(": ping"),
            Just("event: x"),
            Just("\n"),
            Just("\r"),
            Just("\r\n"),
            Just("data:"),
            Just("{\"usage\":{}"),
        ];
        proptest::collection::vec(pieces, 0..16).prop_map(|p| p.concat().into_bytes())
    }

    proptest! {
        #[test]
        fn stripping_does_not_depend_on_chunking(stream in fragments(), mut cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            for cut in &mut cuts {
                *cut %= stream.len() + 1;
            }
            cuts.sort_unstable();
            prop_assert_eq!(run(&stream, &cuts), run(&stream, &[]));
        }

        #[test]
        fn any_chunking_strips_exactly_the_usage_event(mut cuts in proptest::collection::vec(0usize..2000, 0..12), crlf in any::<bool>()) {
            let (upstream, client) = streams(if crlf { "\r\n" } else { "\n" });
            for cut in &mut cuts {
                *cut %= upstream.len() + 1;
            }
            cuts.sort_unstable();
            prop_assert_eq!(run(&upstream, &cuts), client);
        }
    }
}
