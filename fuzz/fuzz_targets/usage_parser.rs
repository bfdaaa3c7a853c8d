//! `UsageParser` on arbitrary response bodies.
//!
//! Input: an 8-byte header, then the body.
//!
//! | byte | meaning |
//! |------|---------|
//! | 0 | provider (`% 3`: openai, anthropic, gemini) |
//! | 1 | bits 0-6: request path (`% PATHS.len()`); bit 7: query `alt=sse` |
//! | 2 | `Content-Type` (`% CONTENT_TYPES.len()`) |
//! | 3 | bits 0-1: `Content-Encoding` (none, gzip, br, deflate); bit 2: the harness compresses the body itself (else the body is fed raw, as if already compressed); bit 3: deflate as raw deflate instead of zlib; bit 4: gzip as two members; bits 5-7: brotli quality (`% 5`) |
//! | 4-7 | chunking seed (see `common::chunk_ends`) |
//!
//! Invariants:
//! - never panics;
//! - split invariance: the body pushed in input-derived chunks parses to the
//!   same `ParsedResponse` as the body pushed whole (for raw bytes under a
//!   `Content-Encoding`, which are mostly corrupt streams, only when either
//!   result has usage, unless `MAJORDOMO_FUZZ_STRICT=1`: see README.md);
//! - decoding is transparent: a body the harness compressed parses the same
//!   as the plain body without `Content-Encoding`;
//! - caps: `model` ≤ `MODEL_CAP` bytes, `error` ≤ `ERROR_CAP` bytes;
//! - an empty body has unknown usage and is not complete;
//! - `count_tokens` never yields usage;
//! - the per-provider shape of `Usage` (SPEC §4 table): e.g. the 1-hour cache
//!   writes are part of the cache writes, Gemini's reasoning is part of its
//!   output, only Anthropic reports cache-write splits.

#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use majordomo::provider::Provider;
use majordomo::usage::{ParsedResponse, UsageParser, ERROR_CAP, MODEL_CAP};

mod common;

const PATHS: [&str; 7] = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
    "/v1beta/models/gemini-2.5-flash:generateContent",
    "/v1/models/g:streamGenerateContent",
    "/v1/messages/count_tokens",
];

const CONTENT_TYPES: [Option<&str>; 5] = [
    Some("application/json"),
    Some("text/event-stream"),
    None,
    Some("text/event-stream; charset=utf-8"),
    Some("text/plain"),
];

const ENCODINGS: [Option<&str>; 4] = [None, Some("gzip"), Some("br"), Some("deflate")];

struct Request {
    provider: Provider,
    path: &'static str,
    query: Option<&'static str>,
    content_type: Option<&'static str>,
}

impl Request {
    fn parse<'a>(
        &self,
        encoding: Option<&str>,
        chunks: impl Iterator<Item = &'a [u8]>,
    ) -> ParsedResponse {
        let mut parser = UsageParser::new(
            self.provider,
            self.path,
            self.query,
            self.content_type,
            encoding,
        );
        for chunk in chunks {
            parser.push(chunk);
        }
        parser.finish()
    }
}

fn compress(body: &[u8], encoding: &str, flags: u8) -> Vec<u8> {
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    match encoding {
        "gzip" => {
            let members: Vec<&[u8]> = if flags & 0x10 != 0 {
                let (a, b) = body.split_at(body.len() / 2);
                vec![a, b]
            } else {
                vec![body]
            };
            let mut out = Vec::new();
            for member in members {
                let mut e = GzEncoder::new(Vec::new(), Compression::fast());
                e.write_all(member).unwrap();
                out.extend(e.finish().unwrap());
            }
            out
        }
        "deflate" if flags & 0x08 != 0 => {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::fast());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            // Qualities above 4 and large windows cost far more time (in
            // the encoder) than they add decoder coverage.
            let quality = u32::from(flags >> 5) % 5;
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, quality, 16);
            w.write_all(body).unwrap();
            w.flush().unwrap();
            w.into_inner()
        }
        other => unreachable!("{other}"),
    }
}

fn check_shape(req: &Request, parsed: &ParsedResponse) {
    if let Some(model) = &parsed.model {
        assert!(model.len() <= MODEL_CAP, "model over cap: {}", model.len());
    }
    if let Some(error) = &parsed.error {
        assert!(error.len() <= ERROR_CAP, "error over cap: {}", error.len());
    }
    let Some(u) = parsed.usage else {
        return;
    };
    assert!(
        !(req.provider == Provider::Anthropic && req.path.ends_with("/count_tokens")),
        "count_tokens yielded usage {u:?}"
    );
    assert!(
        u.cache_creation_1h_tokens <= u.cache_creation_tokens,
        "1h writes over total writes: {u:?}"
    );
    match req.provider {
        Provider::OpenAi => {
            assert_eq!(u.cache_creation_1h_tokens, 0, "{u:?}");
        }
        Provider::Anthropic => {
            assert_eq!(u.reasoning_tokens, 0, "{u:?}");
            assert!(
                u.input_tokens >= u.cached_tokens.saturating_add(u.cache_creation_tokens),
                "Anthropic input excludes its cache parts: {u:?}"
            );
        }
        Provider::Gemini => {
            assert_eq!(u.cache_creation_tokens, 0, "{u:?}");
            assert_eq!(u.cache_creation_1h_tokens, 0, "{u:?}");
            assert!(u.reasoning_tokens <= u.output_tokens, "{u:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (h, body) = data.split_at(8);
    let req = Request {
        provider: Provider::ALL[usize::from(h[0]) % 3],
        path: PATHS[usize::from(h[1] & 0x7f) % PATHS.len()],
        query: (h[1] & 0x80 != 0).then_some("alt=sse"),
        content_type: CONTENT_TYPES[usize::from(h[2]) % CONTENT_TYPES.len()],
    };
    let encoding = ENCODINGS[usize::from(h[3] & 3)];
    let encode_here = h[3] & 0x04 != 0;
    let wire: Vec<u8> = match encoding {
        Some(enc) if encode_here => compress(body, enc, h[3]),
        _ => body.to_vec(),
    };

    let whole = req.parse(encoding, std::iter::once(&wire[..]));
    let ends = common::chunk_ends(common::seed(&h[4..8]), wire.len());
    let chunked = req.parse(encoding, common::chunks(&wire, &ends));
    // Bytes fed raw under a Content-Encoding are mostly a corrupt stream;
    // how much was decoded before the error depends on the chunking
    // (findings/usage_parser-corrupt-gzip-split.bin), so by default only the
    // usage (then unknown either way) must agree there.
    let raw_encoded = encoding.is_some() && !encode_here;
    if raw_encoded && !common::strict() && whole.usage.is_none() && chunked.usage.is_none() {
        // Known limitation; see README.md.
    } else {
        assert_eq!(
            chunked, whole,
            "split invariance broken (chunk ends {ends:?})"
        );
    }
    check_shape(&req, &whole);

    if wire.is_empty() {
        assert_eq!(whole.usage, None);
        assert!(!whole.complete);
    }

    if encoding.is_some() && encode_here {
        let plain = req.parse(None, std::iter::once(body));
        assert_eq!(whole, plain, "decoding is not transparent");
    }
});
