//! `InjectedUsageStripper` on arbitrary upstream streams.
//!
//! Input: a 4-byte chunking seed (see `common::chunk_ends`), then the stream.
//!
//! Invariants:
//! - never panics;
//! - split invariance: the output for input-derived chunks (all `filter`
//!   results, then `finish`) equals the output for the stream passed whole;
//! - the output is never longer than the input;
//! - the output equals a small reference model that frames events on its own
//!   (an event ends with the line end of an empty line; LF, CRLF or CR) and,
//!   as the stripper's docs say, leaves out the complete events whose data is
//!   a JSON object with `"choices": []` and an object `usage`, and cuts
//!   `,"usage":null` from every `data:` line that ends in it (whitespace
//!   allowed between the tokens) in every other event, the incomplete
//!   trailing one (released by `finish`) included;
//! - cutting `,"usage":null` never turns an event whose data is valid JSON
//!   into one whose data is not;
//! - with `MAJORDOMO_FUZZ_STRICT=1`, also: the cut only ever drops the
//!   top-level `usage` key (the data, parsed, equals the original minus a
//!   null `usage`). This fails on contrived input (a JSON object split over
//!   several `data:` lines, duplicate keys), which OpenAI never sends.
//!
//! Inputs stay far below `HOLD_CAP` (256 KiB), so the pass-through of
//! oversized events is not modelled.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use majordomo::usage::InjectedUsageStripper;
use serde_json::Value;

mod common;

/// The stream's complete events as ranges, and where the incomplete rest
/// starts.
fn frame(stream: &[u8]) -> (Vec<(usize, usize)>, usize) {
    let mut events = Vec::new();
    let mut event_start = 0;
    let mut line_start = 0;
    let mut i = 0;
    while i < stream.len() {
        let terminator = match stream[i] {
            b'\r' if stream.get(i + 1) == Some(&b'\n') => 2,
            b'\r' | b'\n' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let empty_line = i == line_start;
        i += terminator;
        line_start = i;
        if empty_line {
            events.push((event_start, i));
            event_start = i;
        }
    }
    (events, event_start)
}

/// The event's data lines, joined with `\n` (the SSE `data` field, with one
/// space after the colon dropped).
fn event_data(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut first = true;
    for line in event.split(|&b| b == b'\n' || b == b'\r') {
        let value = if line == b"data" {
            &line[4..]
        } else if let Some(rest) = line.strip_prefix(b"data: ") {
            rest
        } else if let Some(rest) = line.strip_prefix(b"data:") {
            rest
        } else {
            continue;
        };
        if !first {
            data.push(b'\n');
        }
        first = false;
        data.extend_from_slice(value);
    }
    data
}

/// `"usage"` written literally and followed by an object (the stripper's
/// cheap pre-check; it rules out keys spelled with escapes).
fn names_usage_object(event: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    (0..event.len().saturating_sub(KEY.len() - 1))
        .filter(|&at| event[at..].starts_with(KEY))
        .any(|at| {
            let mut rest = event[at + KEY.len()..]
                .iter()
                .filter(|b| !b.is_ascii_whitespace());
            rest.next() == Some(&b':') && rest.next() == Some(&b'{')
        })
}

fn is_usage_event(event: &[u8]) -> bool {
    if !names_usage_object(event) {
        return false;
    }
    let Ok(value) = serde_json::from_slice::<Value>(&event_data(event)) else {
        return false;
    };
    value.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty)
        && value.get("usage").is_some_and(Value::is_object)
}

/// Where a `data:` line ends in `, "usage" : null }` (whitespace allowed
/// between the tokens and after the brace): the range from the comma to just
/// before the brace.
fn trailing_null_usage(line: &[u8]) -> Option<(usize, usize)> {
    // Walk back over the tokens `}`, `null`, `:`, `"usage"`, `,`, each
    // optionally preceded by whitespace.
    let mut end = line.len();
    let mut expect = |token: &[u8]| -> Option<usize> {
        while end > 0 && line[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        if !line[..end].ends_with(token) {
            return None;
        }
        end -= token.len();
        Some(end)
    };
    let close = expect(b"}")?;
    expect(b"null")?;
    expect(b":")?;
    expect(b"\"usage\"")?;
    let comma = expect(b",")?;
    Some((comma, close))
}

/// The event with `,"usage":null` cut from every `data:` line that ends in
/// it; `None` when no line does.
fn without_null_usage(event: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(event.len());
    let mut changed = false;
    let mut line_start = 0;
    let ends = event
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n' || b == b'\r')
        .map(|(i, _)| i)
        .chain(std::iter::once(event.len()));
    for line_end in ends {
        let line = &event[line_start..line_end];
        match trailing_null_usage(line).filter(|_| line.starts_with(b"data:")) {
            Some((from, to)) => {
                out.extend_from_slice(&line[..from]);
                out.extend_from_slice(&line[to..]);
                changed = true;
            }
            None => out.extend_from_slice(line),
        }
        out.extend_from_slice(event.get(line_end..=line_end).unwrap_or_default());
        line_start = line_end + 1;
    }
    changed.then_some(out)
}

/// `event` as the client gets it, when it is not a usage event.
fn cleaned(event: &[u8], strict: bool) -> Vec<u8> {
    let Some(cleaned) = without_null_usage(event) else {
        return event.to_vec();
    };
    let before = serde_json::from_slice::<Value>(&event_data(event));
    let after = serde_json::from_slice::<Value>(&event_data(&cleaned));
    if let Ok(before) = &before {
        assert!(
            after.is_ok(),
            "removing \"usage\":null broke the JSON: {:?} -> {:?}",
            String::from_utf8_lossy(event),
            String::from_utf8_lossy(&cleaned)
        );
        if strict {
            let mut expected = before.clone();
            if let Some(map) = expected.as_object_mut() {
                assert_eq!(map.remove("usage"), Some(Value::Null), "no top-level null usage");
            }
            assert_eq!(after.as_ref().ok(), Some(&expected), "not the top-level usage removed");
        }
    }
    cleaned
}

fn model(stream: &[u8], strict: bool) -> Vec<u8> {
    let (events, rest) = frame(stream);
    let mut out = Vec::with_capacity(stream.len());
    for &(start, end) in &events {
        let event = &stream[start..end];
        if !is_usage_event(event) {
            out.extend_from_slice(&cleaned(event, strict));
        }
    }
    // The incomplete trailing event is released by `finish`, cleaned too.
    out.extend_from_slice(&cleaned(&stream[rest..], strict));
    out
}

fn run<'a>(whole: &Bytes, ends: impl Iterator<Item = &'a usize>) -> Vec<u8> {
    let mut stripper = InjectedUsageStripper::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &end in ends {
        out.extend_from_slice(&stripper.filter(whole.slice(from..end)));
        from = end;
    }
    out.extend_from_slice(&stripper.finish());
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (h, stream) = data.split_at(4);
    let whole = Bytes::copy_from_slice(stream);
    let ends = common::chunk_ends(common::seed(h), stream.len());

    let out_whole = run(&whole, std::iter::once(&stream.len()));
    let out_chunked = run(&whole, ends.iter());
    assert!(
        out_chunked == out_whole,
        "split invariance broken (chunk ends {ends:?}):\n whole:   {:?}\n chunked: {:?}",
        String::from_utf8_lossy(&out_whole),
        String::from_utf8_lossy(&out_chunked)
    );
    assert!(out_whole.len() <= stream.len());

    let expected = model(stream, common::strict());
    assert!(
        out_whole == expected,
        "output differs from the event model:\n got:      {:?}\n expected: {:?}",
        String::from_utf8_lossy(&out_whole),
        String::from_utf8_lossy(&expected)
    );

    // A chunk of complete events, none a usage event or with a null usage
    // field, comes back as is.
    // (A stream ending in a lone CR is held: an LF may still follow.)
    let (events, rest) = frame(stream);
    if rest == stream.len()
        && !stream.ends_with(b"\r")
        && events.iter().all(|&(s, e)| {
            let event = &stream[s..e];
            !is_usage_event(event) && without_null_usage(event).is_none()
        })
    {
        let mut stripper = InjectedUsageStripper::new();
        let out = stripper.filter(whole.clone());
        assert!(out == whole, "a stream with nothing to remove was altered");
    }
});
