//! `StreamingUsageInjector`, `RequestSniffer` and `inject_include_usage` on
//! arbitrary request bodies.
//!
//! Input: a 4-byte chunking seed (see `common::chunk_ends`), then the body.
//!
//! Invariants:
//! - never panics;
//! - the streaming injector's output (its pushes, then the tail `finish`
//!   returns) is the input, byte for byte, when it reports no injection and
//!   no edit of `stream_options`;
//! - when it edited the client's `stream_options`, the output is the input
//!   with `"include_usage":true` (and a comma unless the object was empty)
//!   right after an object's `{`, 20 or 21 bytes more; it reports an
//!   injection exactly when the request streams without asking for usage;
//!   as JSON (when `stream_options` appears once) `include_usage` is `true`
//!   and nothing else changed;
//! - when it injects without editing, the output is the input with
//!   `,"stream_options":{"include_usage":true}` inserted before the final `}`,
//!   and it parses with serde_json as an object whose
//!   `stream_options.include_usage` is `true` and which, with `stream_options`
//!   removed, equals the original object;
//! - the injector's `RequestInfo` equals `RequestSniffer`'s (pushed in the
//!   same chunks, and pushed whole);
//! - the fixed-length injector (`StreamingUsageInjector::fixed_length`, used
//!   when the upstream request keeps a Content-Length) decides the same,
//!   outputs exactly `INJECTION_LEN` more bytes than its input, the same bytes
//!   as the chunked form when it appends, the chunked form's bytes and
//!   spaces when it edits, and otherwise only spaces more (the same JSON
//!   object when the input is one); a second pass of the same body through
//!   it (a retry's replay) gives the same result;
//! - `inject_include_usage` (the whole-body form): its output, sniffed, asks
//!   for a stream with usage and keeps the model; as JSON it only changes
//!   `stream_options.include_usage`; when it had to add `stream_options`
//!   (not edit one), the streaming form injected too, and both give the same
//!   JSON value.
//!
//! JSON-level checks are made only when serde_json accepts the original body
//! and no object key in it is spelled with a backslash escape: the scanner
//! is deliberately lenient (numbers, escapes, UTF-8 and control bytes in
//! strings are not validated) and compares keys as written on the wire. Set
//! `MAJORDOMO_FUZZ_STRICT=1` to make them unconditional (that mode finds the
//! leniency at once; see README.md).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use majordomo::usage::{
    inject_include_usage, RequestInfo, RequestSniffer, StreamingUsageInjector, INJECTION_LEN,
};
use serde_json::Value;

mod common;

const INJECTED_FIELD: &[u8] = br#","stream_options":{"include_usage":true}"#;
const INSERTED_FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
const OPTIONS_MEMBER: &[u8] = br#""include_usage":true"#;
/// `StreamingUsageInjector` stops holding a tail longer than this.
const HELD_CAP: usize = 4096;


fn sniff<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> RequestInfo {
    let mut s = RequestSniffer::new();
    for chunk in chunks {
        s.push(chunk);
    }
    s.finish()
}

/// Some object key in this (valid JSON) text contains a backslash escape.
fn has_escaped_key(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        let mut escaped = false;
        while j < json.len() && json[j] != b'"' {
            if json[j] == b'\\' {
                escaped = true;
                j += 1;
            }
            j += 1;
        }
        let after = json
            .get(j + 1..)
            .unwrap_or_default()
            .iter()
            .find(|b| !b.is_ascii_whitespace());
        if escaped && after == Some(&b':') {
            return true;
        }
        i = j + 1;
    }
    false
}

/// The original body as a serde_json object, when the JSON-level checks apply.
fn reference_object(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) if !has_escaped_key(body) => Some(map),
        _ => None,
    }
}

fn parse_object(out: &[u8], what: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_slice::<Value>(out) {
        Ok(Value::Object(map)) => map,
        other => panic!(
            "{what}: output is not a JSON object ({other:?}): {:?}",
            String::from_utf8_lossy(out)
        ),
    }
}

fn without(mut map: serde_json::Map<String, Value>, key: &str) -> serde_json::Map<String, Value> {
    map.remove(key);
    map
}

/// `stream_options.include_usage` is true in `new`, and (when the original
/// object is known) nothing else differs from it: not the other members, nor
/// the other options of an original `stream_options` object.
fn assert_only_include_usage_set(
    new: &serde_json::Map<String, Value>,
    original: Option<&serde_json::Map<String, Value>>,
) {
    assert!(include_usage_is_true(new));
    let Some(original) = original else {
        return;
    };
    assert_eq!(
        without(new.clone(), "stream_options"),
        without(original.clone(), "stream_options")
    );
    if let Some(Value::Object(options)) = original.get("stream_options") {
        let Some(Value::Object(new_options)) = new.get("stream_options") else {
            panic!("stream_options is no longer an object");
        };
        assert_eq!(
            without(new_options.clone(), "include_usage"),
            without(options.clone(), "include_usage")
        );
    }
}

fn include_usage_is_true(map: &serde_json::Map<String, Value>) -> bool {
    map.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        == Some(&Value::Bool(true))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (h, body) = data.split_at(4);
    let ends = common::chunk_ends(common::seed(h), body.len());
    let whole = Bytes::copy_from_slice(body);

    // The streaming injector, fed zero-copy slices in input-derived chunks.
    let mut injector = StreamingUsageInjector::new();
    let mut out = Vec::with_capacity(body.len() + INJECTED_FIELD.len());
    let mut from = 0;
    for &end in &ends {
        out.extend_from_slice(&injector.push(whole.slice(from..end)));
        from = end;
    }
    let (info, injected, tail) = injector.finish();
    out.extend_from_slice(&tail);
    let edited = injector.edited_stream_options();
    // Duplicate top-level keys: serde_json keeps the last, the edit goes to the first.
    let single_options = body.windows(16).filter(|w| w == b"\"stream_options\"").count() <= 1;

    // RequestSniffer agrees with the injector, in any chunking.
    let sniffed_whole = sniff(std::iter::once(body));
    let sniffed_chunked = sniff(common::chunks(body, &ends));
    assert_eq!(sniffed_chunked, sniffed_whole, "sniffer split invariance");
    assert_eq!(info, sniffed_whole, "injector info vs sniffer info");
    if let Some(model) = &info.model {
        assert!(model.len() <= majordomo::usage::MODEL_CAP);
    }

    let reference = if common::strict() {
        None
    } else {
        reference_object(body)
    };
    let check_json = common::strict() || reference.is_some();

    if edited {
        assert_eq!(injected, info.stream && !info.include_usage, "edit reported wrongly");
        let grown = out.len() - body.len();
        assert!(grown == OPTIONS_MEMBER.len() || grown == OPTIONS_MEMBER.len() + 1);
        let common = out.iter().zip(body).take_while(|(a, b)| a == b).count();
        let at = (1..=common)
            .filter(|&k| body[k - 1] == b'{')
            .find(|&k| {
                let member = &out[k..k + grown];
                member.starts_with(OPTIONS_MEMBER)
                    && (grown == OPTIONS_MEMBER.len() || member.ends_with(b","))
                    && out[k + grown..] == body[k..]
            });
        assert!(at.is_some(), "the edit is not one member after a {{");
        if check_json && single_options {
            let edited_obj = parse_object(&out, "stream_options edit");
            if let Some(original) = &reference {
                let Some(Value::Object(options)) = original.get("stream_options") else {
                    panic!("edited a stream_options that is not an object");
                };
                assert!(!options.contains_key("include_usage"));
            }
            assert_only_include_usage_set(&edited_obj, reference.as_ref());
        }
    } else if !injected {
        assert!(out == body, "no injection reported, but the bytes changed");
    } else {
        assert!(info.stream, "injected into a non-stream request");
        assert!(!info.include_usage, "injected although include_usage was true");
        let last = body
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .expect("injected into a blank body");
        assert_eq!(body[last], b'}');
        let mut expected = body[..last].to_vec();
        expected.extend_from_slice(INJECTED_FIELD);
        expected.extend_from_slice(&body[last..]);
        assert!(out == expected, "injection not at the final brace");
        let after = sniff(std::iter::once(&out[..]));
        assert!(after.stream && after.include_usage, "{after:?}");
        assert_eq!(after.model, info.model);
        if check_json {
            let injected_obj = parse_object(&out, "streaming injection");
            assert!(include_usage_is_true(&injected_obj));
            if let Some(original) = &reference {
                assert!(!original.contains_key("stream_options"));
                assert_eq!(
                    without(injected_obj, "stream_options"),
                    without(original.clone(), "stream_options")
                );
            }
        }
    }

    // The fixed-length form, twice (the second pass is a retry's replay).
    let mut fixed = StreamingUsageInjector::fixed_length();
    let mut passes = Vec::new();
    let mut fixed_edits = Vec::new();
    for _ in 0..2 {
        let mut fixed_out = Vec::with_capacity(body.len() + INJECTION_LEN);
        let mut from = 0;
        for &end in &ends {
            fixed_out.extend_from_slice(&fixed.push(whole.slice(from..end)));
            from = end;
        }
        let (fixed_info, fixed_injected, fixed_tail) = fixed.finish();
        fixed_out.extend_from_slice(&fixed_tail);
        passes.push((fixed_info, fixed_injected, fixed_out));
        fixed_edits.push(fixed.edited_stream_options());
    }
    assert!(passes[0] == passes[1], "a replay is rewritten differently");
    let (fixed_info, fixed_injected, fixed_out) = &passes[0];
    assert_eq!(fixed_info, &info, "fixed-length info");
    assert_eq!(*fixed_injected, injected, "fixed-length decision");
    assert_eq!(fixed_out.len(), body.len() + INJECTION_LEN, "fixed length");
    assert!(fixed_edits == [edited, edited], "fixed-length edit decision");
    let no_spaces = |b: &[u8]| b.iter().copied().filter(|c| *c != b' ').collect::<Vec<u8>>();
    if edited {
        assert!(no_spaces(fixed_out) == no_spaces(&out), "fixed-length edit differs");
    } else if injected {
        assert!(*fixed_out == out, "fixed-length injection differs");
    } else {
        assert!(no_spaces(fixed_out) == no_spaces(body), "padding changed more than spaces");
        if let Some(original) = &reference {
            assert_eq!(&parse_object(fixed_out, "padded body"), original);
        }
    }

    // The whole-body form.
    let rewritten = inject_include_usage(body);
    // An edit is made before the body's end is seen; only an appended field
    // implies the body was one complete object.
    if injected && !edited {
        assert!(
            rewritten.is_some(),
            "the streaming form injected, the whole-body form did not"
        );
    }
    let Some(rewritten) = rewritten else {
        return;
    };
    assert!(rewritten != body);
    assert!(info.stream && !info.include_usage, "rewrote a body that needed nothing: {info:?}");
    let after = sniff(std::iter::once(&rewritten[..]));
    assert!(after.stream && after.include_usage, "rewritten body sniffs as {after:?}");
    assert_eq!(after.model, info.model);

    let open = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .expect("rewrote a blank body");
    let mut added = body[..=open].to_vec();
    added.extend_from_slice(INSERTED_FIELD);
    added.extend_from_slice(&body[open + 1..]);
    let trailing_ws = body.len() - 1 - body.iter().rposition(|b| !b.is_ascii_whitespace()).unwrap();
    if rewritten == added && trailing_ws < HELD_CAP {
        assert!(
            injected,
            "the whole-body form added stream_options, the streaming form did not"
        );
    }

    if check_json {
        let rewritten_obj = parse_object(&rewritten, "whole-body injection");
        assert_only_include_usage_set(&rewritten_obj, reference.as_ref());
        if injected && single_options {
            let streamed = parse_object(&out, "streaming injection");
            assert_eq!(streamed, rewritten_obj, "the two injections disagree");
        }
    }
});
