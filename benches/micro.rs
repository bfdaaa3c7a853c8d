//! criterion micro-benchmarks of majordomo's per-request work.
//!
//! ```sh
//! cargo bench --bench micro                       # everything (~2-3 min)
//! cargo bench --bench micro -- usage/openai       # one group (criterion filter)
//! cargo bench --bench micro -- --quick            # short run
//! ```
//!
//! Groups:
//! - `usage/<provider>_<json|sse>_<small|large>` (`responses_*`: OpenAI's
//!   Responses API): `UsageParser::new` + `push`
//!   (the body in 16 KiB chunks, as Pingora hands them over) + `finish`;
//!   throughput in bytes of response body.
//! - `pricing/*`: `PriceTable::lookup` (exact, dated, unknown model) and
//!   lookup + `pricing::cost`.
//! - `keys/*`: `keys::hash` (BLAKE3 of the presented key) and a key-cache
//!   hit (`KeyCache::check` on a cached key, SQLite store behind it).
//! - `record/*`: `gateway::record::build` (ctx → row, incl. the provider
//!   credential hash and pricing), `sink::spool::encode` (row → spool bytes),
//!   `sink::spool::read_segment` over 1 000 records (replay; `_json`: the
//!   `.seg` format of earlier versions) and the sink's `COPY` row encoding.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use majordomo::gateway::record::{self, Ending};
use majordomo::gateway::RequestCtx;
use majordomo::keys::cache::{KeyCache, KeyCacheSettings, KeyCheck};
use majordomo::pricing::{self, PriceTable};
use majordomo::provider::Provider;
use majordomo::store::{NewKey, RequestRecord, Store};
use majordomo::usage::{Answers, ParsedResponse, Usage, UsageParser};
use pingora::http::RequestHeader;
use rust_decimal::Decimal;
use serde_json::json;

const CHUNK: usize = 16 * 1024;

fn compact(v: &serde_json::Value) -> String {
    serde_json::to_string(v).unwrap()
}

/// `n` words of answer text.
fn words(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(" word{}", i % 97))
        .collect::<Vec<_>>()
}

// ----------------------------------------------------------------- bodies

fn openai_json(answer_words: usize) -> String {
    compact(&json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion",
        "created": 1741570283, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant",
            "content": words(answer_words).concat(), "refusal": null, "annotations": []},
            "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 26, "completion_tokens": answer_words as u64,
            "total_tokens": 26 + answer_words as u64,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
        "service_tier": "default", "system_fingerprint": "fp_f9f4fb6dbf"
    })) + "\n"
}

fn openai_sse(tokens: usize) -> String {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        format!(
            "data: {}\n\n",
            compact(&json!({"id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
                "object": "chat.completion.chunk", "created": 1741570283,
                "model": "gpt-4o-2024-08-06", "service_tier": "default",
                "system_fingerprint": "fp_f9f4fb6dbf",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                "usage": null}))
        )
    };
    let mut out = chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    );
    for w in words(tokens) {
        out += &chunk(json!({"content": w}), None);
    }
    out += &chunk(json!({}), Some("stop"));
    out += &format!(
        "data: {}\n\n",
        compact(&json!({"id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion.chunk", "created": 1741570283,
            "model": "gpt-4o-2024-08-06", "choices": [],
            "usage": {"prompt_tokens": 26, "completion_tokens": tokens, "total_tokens": 26 + tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}}}))
    );
    out + "data: [DONE]\n\n"
}

fn responses_sse(tokens: usize) -> String {
    // The Responses API names every event; the text arrives as deltas and
    // again, whole, in the `.done` events and in `response.completed`.
    let ev = |name: &str, v: serde_json::Value| format!("event: {name}\ndata: {}\n\n", compact(&v));
    let text = words(tokens).concat();
    let response = |status: &str, output: serde_json::Value, usage: serde_json::Value| {
        json!({"id": "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654", "object": "response",
            "created_at": 1741290958, "status": status, "error": null,
            "incomplete_details": null, "instructions": null, "max_output_tokens": null,
            "model": "gpt-4.1-2025-04-14", "output": output, "parallel_tool_calls": true,
            "previous_response_id": null, "reasoning": {"effort": null, "summary": null},
            "store": true, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
            "usage": usage, "user": null, "metadata": {}})
    };
    let item = |status: &str, text: &str| {
        json!({"id": "msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654", "type": "message",
            "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let ids = |n: u64, rest: serde_json::Value| {
        let mut v = json!({"sequence_number": n,
            "item_id": "msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654",
            "output_index": 0, "content_index": 0});
        v.as_object_mut()
            .unwrap()
            .extend(rest.as_object().unwrap().clone());
        v
    };
    let mut seq = 0u64;
    let mut next = || {
        seq += 1;
        seq
    };
    let mut out = ev(
        "response.created",
        json!({"type": "response.created", "sequence_number": 0,
            "response": response("in_progress", json!([]), json!(null))}),
    );
    out += &ev(
        "response.in_progress",
        json!({"type": "response.in_progress", "sequence_number": next(),
            "response": response("in_progress", json!([]), json!(null))}),
    );
    out += &ev(
        "response.output_item.added",
        json!({"type": "response.output_item.added", "sequence_number": next(),
            "output_index": 0, "item": item("in_progress", "")}),
    );
    out += &ev(
        "response.content_part.added",
        ids(
            next(),
            json!({"type": "response.content_part.added", "part": part("")}),
        ),
    );
    for w in words(tokens) {
        out += &ev(
            "response.output_text.delta",
            ids(
                next(),
                json!({"type": "response.output_text.delta", "delta": w, "logprobs": []}),
            ),
        );
    }
    out += &ev(
        "response.output_text.done",
        ids(
            next(),
            json!({"type": "response.output_text.done", "text": text, "logprobs": []}),
        ),
    );
    out += &ev(
        "response.content_part.done",
        ids(
            next(),
            json!({"type": "response.content_part.done", "part": part(&text)}),
        ),
    );
    out += &ev(
        "response.output_item.done",
        json!({"type": "response.output_item.done", "sequence_number": next(),
            "output_index": 0, "item": item("completed", &text)}),
    );
    out + &ev(
        "response.completed",
        json!({"type": "response.completed", "sequence_number": next(),
            "response": response("completed", json!([item("completed", &text)]),
                json!({"input_tokens": 26, "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": tokens, "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 26 + tokens}))}),
    )
}

fn anthropic_json(answer_words: usize) -> String {
    compact(&json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": words(answer_words).concat()}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 26, "output_tokens": answer_words,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    })) + "\n"
}

fn anthropic_sse(tokens: usize) -> String {
    let ev = |name: &str, v: serde_json::Value| format!("event: {name}\ndata: {}\n\n", compact(&v));
    let mut out = ev(
        "message_start",
        json!({"type": "message_start", "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "content": [], "model": "claude-sonnet-4-20250514", "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": 26, "output_tokens": 1}}}),
    );
    out += &ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}}),
    );
    out += &ev("ping", json!({"type": "ping"}));
    for w in words(tokens) {
        out += &ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": w}}),
        );
    }
    out += &ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    out += &ev(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": tokens}}),
    );
    out + &ev("message_stop", json!({"type": "message_stop"}))
}

fn gemini_obj(text: &str, last: bool, tokens: usize) -> serde_json::Value {
    let mut cand = json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
    if last {
        cand["finishReason"] = json!("STOP");
    }
    json!({"candidates": [cand],
        "usageMetadata": {"promptTokenCount": 26, "candidatesTokenCount": tokens,
            "totalTokenCount": 26 + tokens, "thoughtsTokenCount": 0},
        "modelVersion": "gemini-2.5-flash", "responseId": "abcdEFGH123"})
}

fn gemini_json(answer_words: usize) -> String {
    compact(&gemini_obj(
        &words(answer_words).concat(),
        true,
        answer_words,
    )) + "\n"
}

fn gemini_sse(tokens: usize) -> String {
    let ws = words(tokens);
    let mut out = String::new();
    for (i, w) in ws.iter().enumerate() {
        let last = i + 1 == ws.len();
        out += &format!("data: {}\r\n\r\n", compact(&gemini_obj(w, last, i + 1)));
    }
    out
}

struct Case {
    name: &'static str,
    provider: Provider,
    path: &'static str,
    query: Option<&'static str>,
    content_type: &'static str,
    body: String,
}

fn cases() -> Vec<Case> {
    let chat = "/v1/chat/completions";
    let msgs = "/v1/messages";
    let gem = "/v1beta/models/gemini-2.5-flash:generateContent";
    let gem_s = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
    let j = "application/json";
    let s = "text/event-stream";
    let c = |name, provider, path, query, content_type, body| Case {
        name,
        provider,
        path,
        query,
        content_type,
        body,
    };
    vec![
        c(
            "openai_json_small",
            Provider::OpenAi,
            chat,
            None,
            j,
            openai_json(20),
        ),
        c(
            "openai_json_large",
            Provider::OpenAi,
            chat,
            None,
            j,
            openai_json(12_000),
        ),
        c(
            "openai_sse_small",
            Provider::OpenAi,
            chat,
            None,
            s,
            openai_sse(19),
        ),
        c(
            "openai_sse_large",
            Provider::OpenAi,
            chat,
            None,
            s,
            openai_sse(2_000),
        ),
        c(
            "responses_sse_small",
            Provider::OpenAi,
            "/v1/responses",
            None,
            s,
            responses_sse(19),
        ),
        c(
            "responses_sse_large",
            Provider::OpenAi,
            "/v1/responses",
            None,
            s,
            responses_sse(2_000),
        ),
        c(
            "anthropic_json_small",
            Provider::Anthropic,
            msgs,
            None,
            j,
            anthropic_json(20),
        ),
        c(
            "anthropic_json_large",
            Provider::Anthropic,
            msgs,
            None,
            j,
            anthropic_json(12_000),
        ),
        c(
            "anthropic_sse_small",
            Provider::Anthropic,
            msgs,
            None,
            s,
            anthropic_sse(19),
        ),
        c(
            "anthropic_sse_large",
            Provider::Anthropic,
            msgs,
            None,
            s,
            anthropic_sse(2_000),
        ),
        c(
            "gemini_json_small",
            Provider::Gemini,
            gem,
            None,
            j,
            gemini_json(20),
        ),
        c(
            "gemini_json_large",
            Provider::Gemini,
            gem,
            None,
            j,
            gemini_json(12_000),
        ),
        c(
            "gemini_sse_small",
            Provider::Gemini,
            gem_s,
            Some("alt=sse"),
            s,
            gemini_sse(19),
        ),
        c(
            "gemini_sse_large",
            Provider::Gemini,
            gem_s,
            Some("alt=sse"),
            s,
            gemini_sse(2_000),
        ),
    ]
}

fn parse(case: &Case) -> ParsedResponse {
    let mut p = UsageParser::new(
        Answers::Request,
        case.provider,
        case.path,
        case.query,
        Some(case.content_type),
        None,
    );
    for chunk in case.body.as_bytes().chunks(CHUNK) {
        p.push(chunk);
    }
    p.finish()
}

fn bench_usage(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage");
    for case in cases() {
        // The parser must actually find the usage, or the number is meaningless.
        let r = parse(&case);
        assert!(
            r.complete && r.usage.is_some(),
            "{}: parser found no usage: {r:?}",
            case.name
        );
        g.throughput(Throughput::Bytes(case.body.len() as u64));
        g.bench_function(case.name, |b| b.iter(|| black_box(parse(black_box(&case)))));
    }
    g.finish();
}

// ----------------------------------------------------------------- pricing

fn bench_pricing(c: &mut Criterion) {
    let table = PriceTable::bundled();
    let usage = Usage {
        input_tokens: 1026,
        cached_tokens: 512,
        output_tokens: 219,
        reasoning_tokens: 64,
        ..Usage::default()
    };
    let mut g = c.benchmark_group("pricing");
    for model in [
        "gpt-4o",
        "gpt-4o-2024-08-06",
        "claude-sonnet-4-20250514",
        "my-local-llama",
    ] {
        g.bench_function(format!("lookup/{model}"), |b| {
            b.iter(|| black_box(table.lookup(black_box(model), black_box(1026))))
        });
    }
    assert!(table.lookup("gpt-4o-2024-08-06", 1026).is_some());
    g.bench_function("lookup+cost/gpt-4o-2024-08-06", |b| {
        b.iter(|| {
            let m = table.lookup(black_box("gpt-4o-2024-08-06"), usage.input_tokens);
            black_box(m.map(|m| pricing::cost(Provider::OpenAi, black_box(&usage), &m.price)))
        })
    });
    let price = table
        .lookup("claude-sonnet-4-20250514", 1026)
        .unwrap()
        .price;
    g.bench_function("cost/anthropic", |b| {
        b.iter(|| {
            black_box(pricing::cost(
                Provider::Anthropic,
                black_box(&usage),
                &price,
            ))
        })
    });
    g.finish();
}

// ----------------------------------------------------------------- keys

fn bench_keys(c: &mut Criterion) {
    let key = majordomo::keys::generate().unwrap().plaintext;
    let mut g = c.benchmark_group("keys");
    g.bench_function("hash", |b| {
        b.iter(|| black_box(majordomo::keys::hash(black_box(&key))))
    });
    g.bench_function("is_well_formed", |b| {
        b.iter(|| black_box(majordomo::keys::is_well_formed(black_box(&key))))
    });

    // A cache hit, as on every request after the first with a key.
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut storage = majordomo::config::StorageConfig {
        driver: Some(majordomo::config::StorageDriver::Sqlite),
        ..Default::default()
    };
    storage.sqlite.path = dir.path().join("bench.db");
    let store = Store::open(&storage).unwrap();
    let cache = rt.block_on(async {
        store.migrate().await.unwrap();
        let hash = majordomo::keys::hash_hex(&key);
        let hint = majordomo::keys::display_hint(&key);
        store
            .create_key(NewKey {
                name: "bench",
                description: None,
                key_hash: &hash,
                key_hint: &hint,
            })
            .await
            .unwrap();
        let cache = KeyCache::new(
            store.clone(),
            KeyCacheSettings {
                ttl: Duration::from_secs(3600),
                negative_capacity: 10_000,
                negative_ttl: Duration::from_secs(60),
            },
        );
        assert!(matches!(cache.check(&key).await, Ok(KeyCheck::Valid(_))));
        cache
    });
    g.bench_function("cache_hit", |b| {
        b.iter(|| rt.block_on(async { black_box(cache.check(black_box(&key)).await.unwrap()) }))
    });
    g.finish();
}

// ----------------------------------------------------------------- record

fn sample_request() -> RequestHeader {
    let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
    r.insert_header("host", "127.0.0.1:18090").unwrap();
    r.insert_header("authorization", "Bearer sk-bench-0123456789abcdef")
        .unwrap();
    r.insert_header("content-type", "application/json").unwrap();
    r.insert_header("x-majordomo-key", "mdm_sk_x").unwrap();
    r.insert_header("x-majordomo-feature", "bench").unwrap();
    r
}

fn sample_ctx() -> RequestCtx {
    RequestCtx {
        status: 200,
        api_key_id: Some(uuid::Uuid::now_v7()),
        metadata: vec![("feature".into(), "bench".into())],
        request_model: Some("gpt-4o".into()),
        first_byte_at: Some(std::time::Instant::now()),
        ..RequestCtx::default()
    }
}

fn sample_parsed() -> ParsedResponse {
    ParsedResponse {
        usage: Some(Usage {
            input_tokens: 26,
            output_tokens: 19,
            ..Usage::default()
        }),
        model: Some("gpt-4o-2024-08-06".into()),
        error: None,
        complete: true,
        background_response: None,
    }
}

/// A row as the gateway builds it for the benchmark's OpenAI JSON request.
pub fn sample_record() -> RequestRecord {
    record::build(
        &mut sample_ctx(),
        &sample_request(),
        Some(sample_parsed()),
        Ending::Delivered,
        &PriceTable::bundled(),
    )
    .0
}

fn bench_record(c: &mut Criterion) {
    let table = PriceTable::bundled();
    let req = sample_request();
    let mut g = c.benchmark_group("record");
    g.bench_function("build", |b| {
        b.iter_batched(
            || (sample_ctx(), sample_parsed()),
            |(mut ctx, parsed)| {
                black_box(record::build(
                    black_box(&mut ctx),
                    black_box(&req),
                    Some(parsed),
                    Ending::Delivered,
                    &table,
                ))
            },
            BatchSize::SmallInput,
        )
    });
    let rec = sample_record();
    assert!(rec.price_found && rec.total_cost > Decimal::ZERO);
    let mut buf = Vec::new();
    majordomo::sink::spool::encode(&rec, &mut buf).unwrap();
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("spool_encode", |b| {
        b.iter(|| {
            majordomo::sink::spool::encode(black_box(&rec), &mut buf).unwrap();
            black_box(buf.len())
        })
    });
    // Replay: a segment of 1 000 such records read back, in the format
    // written (`.rec`) and in the JSON of earlier versions' `.seg` segments.
    let dir = tempfile::tempdir().unwrap();
    let mut binary = Vec::new();
    let mut json = Vec::new();
    for _ in 0..1000 {
        majordomo::sink::spool::encode(&rec, &mut buf).unwrap();
        binary.extend_from_slice(&buf);
        let doc = serde_json::to_vec(&rec).unwrap();
        json.extend_from_slice(&(doc.len() as u32).to_le_bytes());
        json.extend_from_slice(&crc32fast::hash(&doc).to_le_bytes());
        json.extend_from_slice(&doc);
    }
    for (name, bytes) in [
        ("spool_replay_1000", binary),
        ("spool_replay_1000_json", json),
    ] {
        let ext = if name.ends_with("json") { "seg" } else { "rec" };
        let path = dir.path().join(format!("0-0-{name}.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        let read = majordomo::sink::spool::read_segment(dir.path(), &path, 0).unwrap();
        assert_eq!((read.records.len(), read.corrupt), (1000, 0));
        assert_eq!(read.records[999].0, rec);
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let read = majordomo::sink::spool::read_segment(dir.path(), &path, 0).unwrap();
                black_box(read.records.len())
            })
        });
    }
    let mut row = bytes::BytesMut::new();
    majordomo::store::pg_copy::write_row(&mut row, &rec, &[]).unwrap();
    g.throughput(Throughput::Bytes(row.len() as u64));
    g.bench_function("copy_row", |b| {
        b.iter(|| {
            row.clear();
            majordomo::store::pg_copy::write_row(&mut row, black_box(&rec), &[]).unwrap();
            black_box(row.len())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = bench_usage, bench_pricing, bench_keys, bench_record
}
criterion_main!(benches);
