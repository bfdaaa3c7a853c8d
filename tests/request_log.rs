//! Issue 3 "Usage, cost and the request log": every request through the
//! gateway becomes one exact, priced row, on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::mock_upstream::{canned, Tokens};
use common::*;
use futures_util::StreamExt;
use rust_decimal::Decimal;
use serde_json::{json, Value};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

struct Case {
    name: &'static str,
    path: &'static str,
    body: Value,
    tokens: Tokens,
    model: &'static str,
    /// Hand-computed from conf/prices.json (USD per million tokens).
    total_cost: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let chat = |stream: bool| {
        let mut b = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
        if stream {
            b["stream"] = json!(true);
            b["stream_options"] = json!({"include_usage": true});
        }
        b
    };
    let messages = |stream: bool| {
        json!({"model": "claude-sonnet-4-5-20250929", "max_tokens": 100, "stream": stream,
               "messages": [{"role": "user", "content": "hi"}]})
    };
    // gpt-4o: 2.5 in, 1.25 cached, 10 out.
    //   chat: 1034×2.5 + 200×1.25 + 567×10 = 8505 µ$  → 0.008505
    //   responses: 2024×2.5 + 321×1.25 + 432×10 = 9781.25 µ$ → 0.00978125
    // claude-sonnet-4.5: 3 in, no cached price (0.1×), 15 out; writes 5m 1.25×, 1h 2×:
    //   1111×3 + 2222×0.3 + 300×3.75 + 33×6 + 444×15 = 11982.6 µ$ → 0.0119826
    // gemini-2.5-flash: 0.3 in, 0.03 cached, 2.5 out:
    //   552×0.3 + 456×0.03 + 308×2.5 = 949.28 µ$ → 0.00094928
    vec![
        Case {
            name: "openai chat json",
            path: "/v1/chat/completions",
            body: chat(false),
            tokens: canned::OPENAI_CHAT,
            model: "gpt-4o",
            total_cost: Some("0.008505"),
        },
        Case {
            name: "openai chat sse",
            path: "/v1/chat/completions",
            body: chat(true),
            tokens: canned::OPENAI_CHAT_STREAM,
            model: "gpt-4o",
            total_cost: Some("0.008505"),
        },
        Case {
            name: "openai responses json",
            path: "/v1/responses",
            body: json!({"model": "gpt-4o", "input": "hi"}),
            tokens: canned::OPENAI_RESPONSES,
            model: "gpt-4o",
            total_cost: Some("0.00978125"),
        },
        Case {
            name: "openai responses sse",
            path: "/v1/responses",
            body: json!({"model": "gpt-4o", "input": "hi", "stream": true}),
            tokens: canned::OPENAI_RESPONSES_STREAM,
            model: "gpt-4o",
            total_cost: Some("0.00978125"),
        },
        Case {
            name: "openai embeddings",
            path: "/v1/embeddings",
            body: json!({"model": "text-embedding-3-small", "input": "hi"}),
            tokens: canned::OPENAI_EMBEDDINGS,
            model: "text-embedding-3-small",
            total_cost: None,
        },
        Case {
            name: "anthropic json",
            path: "/v1/messages",
            body: messages(false),
            tokens: canned::ANTHROPIC_MESSAGES,
            model: "claude-sonnet-4-5-20250929",
            total_cost: Some("0.0119826"),
        },
        Case {
            name: "anthropic sse",
            path: "/v1/messages",
            body: messages(true),
            tokens: canned::ANTHROPIC_MESSAGES_STREAM,
            model: "claude-sonnet-4-5-20250929",
            total_cost: Some("0.0119826"),
        },
        Case {
            name: "gemini json",
            path: "/v1beta/models/gemini-2.5-flash:generateContent",
            body: json!({"contents": []}),
            tokens: canned::GEMINI,
            model: "gemini-2.5-flash",
            total_cost: Some("0.00094928"),
        },
        Case {
            name: "gemini sse",
            path: "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            body: json!({"contents": []}),
            tokens: canned::GEMINI_STREAM,
            model: "gemini-2.5-flash",
            total_cost: Some("0.00094928"),
        },
        Case {
            name: "gemini json array stream",
            path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            body: json!({"contents": []}),
            tokens: canned::GEMINI_STREAM,
            model: "gemini-2.5-flash",
            total_cost: Some("0.00094928"),
        },
    ]
}

fn assert_tokens(row: &LogRow, t: &Tokens, what: &str) {
    assert_eq!(row.input_tokens as u64, t.input, "{what}: input");
    assert_eq!(row.output_tokens as u64, t.output, "{what}: output");
    assert_eq!(row.cached_tokens as u64, t.cached, "{what}: cached");
    assert_eq!(
        row.cache_creation_tokens as u64, t.cache_creation,
        "{what}: cache creation"
    );
    assert_eq!(
        row.reasoning_tokens as u64, t.reasoning,
        "{what}: reasoning"
    );
}

/// The upstream's last request went without `stream_options`.
fn assert_no_stream_options(mock: &MockUpstream) {
    let seen = mock.last_request().unwrap().json();
    assert!(seen.get("stream_options").is_none(), "{seen}");
}

/// Where an OpenAI chat stream with `stream_options` goes: the gateway,
/// its key, the upstream and the rows.
struct Streams<'a> {
    env: &'a TestEnv,
    gw: &'a GatewayProcess,
    key: &'a str,
    mock: &'a MockUpstream,
}

/// One such stream: what the client sends, what the upstream answers, and
/// what each side should see.
struct StreamCase<'a> {
    /// The client's `stream_options`.
    options: Value,
    /// The upstream's SSE bytes (sent 7 at a time: cut mid-line, mid-JSON).
    upstream: &'a str,
    client_sees: &'a str,
    /// The `stream_options` the upstream gets.
    upstream_options: Value,
    what: &'a str,
}

impl Streams<'_> {
    /// The client gets exactly `client_sees`; the upstream gets
    /// `upstream_options` and a `Content-Length` that is its body's (not
    /// sent chunked); the row has the canned usage, priced.
    async fn check(&self, case: StreamCase<'_>) {
        self.mock.push_response(
            ScriptedResponse::new(200)
                .with_header("content-type", "text/event-stream")
                .with_chunks(
                    case.upstream
                        .as_bytes()
                        .chunks(7)
                        .map(Bytes::copy_from_slice)
                        .collect(),
                ),
        );
        let body = json!({"model": "gpt-4o", "stream": true, "stream_options": case.options,
            "messages": [{"role": "user", "content": "hi"}]});
        let (status, id, got) = send(self.gw, self.key, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{}", case.what);
        assert_eq!(
            String::from_utf8(got.to_vec()).unwrap(),
            case.client_sees,
            "{}",
            case.what
        );
        let seen = self.mock.last_request().unwrap();
        assert_eq!(
            seen.json()["stream_options"],
            case.upstream_options,
            "{}",
            case.what
        );
        assert_eq!(
            seen.header("content-length"),
            Some(seen.body.len().to_string().as_str()),
            "{}",
            case.what
        );
        let row = self.env.row(&id).await;
        assert_tokens(&row, &canned::OPENAI_CHAT, case.what);
        assert!(row.usage_complete && row.price_found, "{}", case.what);
    }
}

async fn send(gw: &GatewayProcess, key: &str, path: &str, body: &Value) -> (u16, String, Bytes) {
    let r = client()
        .post(gw.url(path))
        .header("X-Majordomo-Key", key)
        .header("Authorization", "Bearer sk-provider-secret")
        .header("X-Majordomo-User-Id", "user_42")
        .header("X-Majordomo-Feature", "chat")
        .json(body)
        .send()
        .await
        .unwrap();
    finish(r).await
}

async fn each_provider_and_mode_logs_an_exact_priced_row(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (key_id, key) = env.create_key("log");
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    for case in cases() {
        let (status, id, _) = send(&gw, &key, case.path, &case.body).await;
        assert_eq!(status, 200, "{}", case.name);
        let row = env.row(&id).await;
        assert_tokens(&row, &case.tokens, case.name);
        assert_eq!(row.model, case.model, "{}", case.name);
        assert_eq!(row.status_code, 200, "{}", case.name);
        assert!(row.usage_complete, "{}: usage_complete", case.name);
        assert_eq!(row.api_key_id.as_deref(), Some(key_id.as_str()));
        assert_eq!(row.request_method, "POST");
        assert_eq!(row.request_path, case.path.split('?').next().unwrap());
        assert!(
            row.error_message.is_none(),
            "{}: {:?}",
            case.name,
            row.error_message
        );
        assert_eq!(
            row.raw_metadata,
            Some(json!({"user-id": "user_42", "feature": "chat"})),
            "{}",
            case.name
        );
        assert!(row.time_to_first_byte_ms.is_some());
        if let Some(total) = case.total_cost {
            assert!(row.price_found, "{}", case.name);
            assert_eq!(row.total_cost, d(total), "{}", case.name);
            assert_eq!(row.input_cost + row.output_cost, row.total_cost);
        }
    }
    // Credentials never stored in clear.
    for row in env.rows().await {
        assert_ne!(
            row.provider_api_key_hash.as_deref(),
            Some("sk-provider-secret")
        );
        assert_eq!(
            row.provider_api_key_hash.as_deref(),
            Some(blake3::hash(b"sk-provider-secret").to_hex().as_str())
        );
    }
    let info: Value =
        serde_json::from_str(&env.cli_ok(&["keys", "get", &key_id, "--json"])).unwrap();
    assert_eq!(info["request_count"], cases().len());
    assert!(info["last_used_at"].is_string());
}

async fn an_injected_usage_chunk_is_hidden_from_the_client_and_still_logged(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("inject");
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let chunk = |i: usize, content: &str| {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}],\"n\":{i},\"usage\":null}}\n\n"
        )
    };
    let usage_event = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":1234,\"completion_tokens\":567,\"total_tokens\":1801,\"prompt_tokens_details\":{\"cached_tokens\":200},\"completion_tokens_details\":{\"reasoning_tokens\":64}}}\n\n".to_string();
    let events = [
        chunk(0, "Hel"),
        chunk(1, "lo}"),
        usage_event,
        "data: [DONE]\n\n".to_string(),
    ];
    // What the client would get from OpenAI without include_usage: no usage
    // chunk, and no "usage":null field in the others.
    let expected: String = [events[0].clone(), events[1].clone(), events[3].clone()]
        .concat()
        .replace(",\"usage\":null", "");
    // Split the upstream bytes at awkward places (mid-line, mid-JSON).
    let all: String = events.concat();
    let pieces: Vec<Bytes> = all
        .as_bytes()
        .chunks(7)
        .map(Bytes::copy_from_slice)
        .collect();
    mock.push_response(
        ScriptedResponse::new(200)
            .with_header("content-type", "text/event-stream")
            .with_chunks(pieces),
    );
    let body =
        json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (status, id, got) = send(&gw, &key, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(got.to_vec()).unwrap(), expected);

    let upstream_request = mock.last_request().unwrap();
    let upstream_saw = upstream_request.json();
    assert_eq!(upstream_saw["stream_options"]["include_usage"], true);
    // The client's length plus the field: no chunked request body.
    assert_eq!(
        upstream_request.header("content-length"),
        Some(upstream_request.body.len().to_string().as_str())
    );
    assert_eq!(upstream_saw["messages"], body["messages"]);

    let row = env.row(&id).await;
    assert_tokens(&row, &canned::OPENAI_CHAT, "injected");
    assert_eq!(row.model, "gpt-4o-2024-08-06");
    assert!(row.usage_complete && row.price_found);

    let streams = Streams {
        env: &env,
        gw: &gw,
        key: &key,
        mock: &mock,
    };
    // A stream_options object without include_usage gets it added, the
    // client's own option kept; the client still sees no usage chunk.
    streams
        .check(StreamCase {
            options: json!({"include_obfuscation": false}),
            upstream: &all,
            client_sees: &expected,
            upstream_options: json!({"include_usage": true, "include_obfuscation": false}),
            what: "stream_options edited",
        })
        .await;

    // OpenAI's chunks end with "obfuscation" padding after "usage":null, and
    // an SDK that writes every unset field sends "stream_options": null: the
    // upstream is asked for usage all the same, and the client gets neither
    // the usage chunk nor a "usage":null, but keeps the padding.
    let padded = all.replace(
        ",\"usage\":null}",
        ",\"usage\":null,\"obfuscation\":\"Zq3v\"}",
    );
    let padded_expected = [events[0].clone(), events[1].clone(), events[3].clone()]
        .concat()
        .replace(",\"usage\":null}", ",\"obfuscation\":\"Zq3v\"}");
    streams
        .check(StreamCase {
            options: Value::Null,
            upstream: &padded,
            client_sees: &padded_expected,
            upstream_options: json!({"include_usage": true}),
            what: "null stream_options",
        })
        .await;

    // A client that turned usage off gets the stream it asked for, and the
    // row its usage all the same: `false` becomes `true ` in place, so the
    // upstream length is still the client's plus the padding.
    streams
        .check(StreamCase {
            options: json!({"include_usage": false}),
            upstream: &all,
            client_sees: &expected,
            upstream_options: json!({"include_usage": true}),
            what: "include_usage false",
        })
        .await;

    // Anthropic's OpenAI-compatible chat takes stream_options too: asked the
    // same way, hidden the same way, and the row is Anthropic's, priced.
    let claude = |s: &str| s.replace("gpt-4o-2024-08-06", "claude-sonnet-4-5-20250929");
    mock.push_response(
        ScriptedResponse::new(200)
            .with_header("content-type", "text/event-stream")
            .with_chunks(vec![Bytes::from(claude(&all))]),
    );
    let compat = json!({"model": "claude-sonnet-4-5", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("X-Majordomo-Key", &key)
        .header("X-Majordomo-Provider", "anthropic")
        .header("Authorization", "Bearer sk-ant-secret")
        .json(&compat)
        .send()
        .await
        .unwrap();
    let (status, id, got) = finish(r).await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(got.to_vec()).unwrap(), claude(&expected));
    assert_eq!(
        mock.last_request().unwrap().json()["stream_options"],
        json!({"include_usage": true})
    );
    let row = env.row(&id).await;
    assert_eq!(row.provider, "anthropic");
    assert_tokens(&row, &canned::OPENAI_CHAT, "anthropic compatible");
    assert!(row.usage_complete && row.price_found, "{row:?}");

    // Gemini's OpenAI-compatible chat sends usage unasked: left as it is.
    let (status, _, _) = send(&gw, &key, "/v1beta/openai/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_no_stream_options(&mock);

    // With injection turned off the request goes upstream untouched.
    drop(gw);
    let gw = env
        .gateway(&mock)
        .env("MAJORDOMO_PROVIDERS_OPENAI_INJECT_STREAM_USAGE", "false")
        .start()
        .await;
    let (status, id, _) = send(&gw, &key, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_no_stream_options(&mock);
    let row = env.row(&id).await;
    assert!(
        !row.usage_complete,
        "no usage was reported, so the row says so"
    );
}

/// Reads one HTTP/1.1 response with a chunked body off `stream`; returns its
/// head and decoded body. Panics on any other framing.
async fn read_chunked_response(
    stream: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> (String, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stream.read_line(&mut line).await.unwrap() > 0,
            "connection closed in the head"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    assert!(
        head.contains("transfer-encoding: chunked"),
        "not chunked: {head}"
    );
    assert!(!head.contains("content-length"), "{head}");
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        stream.read_line(&mut size).await.unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        stream.read_exact(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    (head, String::from_utf8(body).unwrap())
}

async fn a_stripped_stream_from_a_content_length_upstream_is_chunked_and_keeps_the_connection(
    backend: Backend,
) {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("inject-length");
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let events = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
        data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,\"total_tokens\":12}}\n\n\
        data: [DONE]\n\n";
    let expected = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
    // Served the way a static file server sends it: one body with a length.
    for _ in 0..2 {
        mock.push_response(ScriptedResponse::bytes(200, "text/event-stream", events));
    }
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Majordomo-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let addr = gw
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut conn = tokio::io::BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    // Two requests on one connection: the first response must be framed.
    for _ in 0..2 {
        conn.get_mut().write_all(request.as_bytes()).await.unwrap();
        let (head, got) =
            tokio::time::timeout(Duration::from_secs(10), read_chunked_response(&mut conn))
                .await
                .expect("a complete response on the same connection");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(got, expected);
    }
    let rows = env.wait_rows(2, Duration::from_secs(10)).await;
    assert!(rows
        .iter()
        .all(|r| r.usage_complete && r.input_tokens == 10 && r.output_tokens == 2));
}

async fn a_gzip_upstream_body_reaches_the_client_untouched_and_is_parsed(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("gzip");
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 2000, "total_tokens": 3000}
    });
    let compressed = common::mock_upstream::gzip(&serde_json::to_vec(&body).unwrap());
    mock.push_response(ScriptedResponse::gzip_json(200, body.clone()));
    let raw_client = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = raw_client
        .post(gw.url("/v1/chat/completions"))
        .header("X-Majordomo-Key", &key)
        .header("Accept-Encoding", "gzip")
        .json(&json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let id = r.headers()["x-majordomo-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(r.bytes().await.unwrap().as_ref(), compressed.as_slice());
    let row = env.row(&id).await;
    assert_eq!((row.input_tokens, row.output_tokens), (1000, 2000));
    // gpt-4o-mini: 1000×0.15 + 2000×0.6 = 1350 µ$
    assert_eq!(row.total_cost, d("0.00135"));
}

async fn a_client_that_disconnects_mid_stream_leaves_a_499_row_with_partial_usage(
    backend: Backend,
) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("gone");
    let mock = MockUpstream::start().await;
    mock.set_pause(Duration::from_secs(3));
    let gw = env.gateway(&mock).start().await;
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("X-Majordomo-Key", &key)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-majordomo-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(stream);
    let row = env.row(&id).await;
    assert_eq!(row.status_code, 499);
    assert!(!row.usage_complete);
    // message_start already told the input side.
    assert_eq!(row.input_tokens as u64, canned::ANTHROPIC_MESSAGES.input);
    assert!(row.error_message.is_some());
}

async fn a_client_that_closes_right_after_done_is_not_a_disconnect(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("done");
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("X-Majordomo-Key", &key)
        .json(&json!({"model": "gpt-4o", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-majordomo-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut stream = r.bytes_stream();
    let mut seen = Vec::new();
    while let Some(c) = stream.next().await {
        seen.extend_from_slice(&c.unwrap());
        if seen.ends_with(b"data: [DONE]\n\n") {
            break; // like the OpenAI SDK: stop reading at [DONE]
        }
    }
    drop(stream);
    let row = env.row(&id).await;
    assert_eq!(row.status_code, 200);
    assert!(row.usage_complete);
    assert_tokens(&row, &canned::OPENAI_CHAT, "done");
}

async fn upstream_errors_and_failures_are_logged_with_their_status(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("errors");
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let chat = json!({"model": "gpt-4o", "messages": []});
    mock.push_response(ScriptedResponse::openai_error(
        429,
        "Rate limit reached for gpt-4o",
    ));
    let (status, id, _) = send(&gw, &key, "/v1/chat/completions", &chat).await;
    assert_eq!(status, 429);
    let row = env.row(&id).await;
    assert_eq!(row.status_code, 429);
    assert_eq!(
        row.error_message.as_deref(),
        Some("Rate limit reached for gpt-4o")
    );
    assert_eq!(row.input_tokens, 0);
    assert_eq!(row.model, "gpt-4o");

    mock.push_response(ScriptedResponse::anthropic_error(
        500,
        "Internal server error",
    ));
    let (status, id, _) = send(
        &gw,
        &key,
        "/v1/messages",
        &json!({"model": "claude-sonnet-4-5", "messages": []}),
    )
    .await;
    assert_eq!(status, 500);
    let row = env.row(&id).await;
    assert_eq!(row.status_code, 500);
    assert!(row.error_message.unwrap().contains("Internal server error"));

    // The upstream dies mid-stream: the usage seen so far, flagged partial.
    let events = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"usage\":{\"input_tokens\":50,\"output_tokens\":1}}}".to_string(),
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}".to_string(),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}".to_string(),
    ];
    mock.push_response(ScriptedResponse::sse(events).with_abort_after(2));
    let r = client()
        .post(gw.url("/v1/messages"))
        .header("X-Majordomo-Key", &key)
        .json(&json!({"model": "claude-sonnet-4-5", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-majordomo-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = r.bytes().await; // an error: the body was cut
    let row = env.row(&id).await;
    assert!(!row.usage_complete);
    assert_eq!(row.input_tokens, 50);
    let message = row.error_message.unwrap();
    assert!(message.contains("response was cut short"), "{message}");

    // Unreachable upstream: a row with 502.
    let gw2 = env
        .gateway(&mock)
        .env(
            "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .start()
        .await;
    let (status, id, _) = send(&gw2, &key, "/v1/chat/completions", &chat).await;
    assert_eq!(status, 502);
    let row = env.row(&id).await;
    assert_eq!(row.status_code, 502);
    assert!(row.error_message.is_some());
}

async fn an_unknown_model_is_logged_unpriced_not_free(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("unpriced");
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let (_, id, _) = send(
        &gw,
        &key,
        "/v1/chat/completions",
        &json!({"model": "my-own-llama-70b", "messages": []}),
    )
    .await;
    let row = env.row(&id).await;
    assert_eq!(row.model, "my-own-llama-70b");
    assert!(!row.price_found);
    assert_eq!(row.total_cost, Decimal::ZERO);
    assert_eq!(row.input_tokens as u64, canned::OPENAI_CHAT.input);
}

async fn a_price_override_in_the_config_wins(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("override");
    std::fs::write(
        env.path().join("majordomo.yaml"),
        "pricing:\n  overrides:\n    my-own-llama-70b:\n      input: 1\n      output: 2\n",
    )
    .unwrap();
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let (_, id, _) = send(
        &gw,
        &key,
        "/v1/chat/completions",
        &json!({"model": "my-own-llama-70b", "messages": []}),
    )
    .await;
    let row = env.row(&id).await;
    assert!(row.price_found);
    // 1234×1 + 567×2 = 2368 µ$ (no cached price: cached reads at the input price)
    assert_eq!(row.total_cost, d("0.002368"));
}

async fn metadata_over_the_limits_is_a_400_with_a_clear_message(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("meta");
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let mut req = client()
        .post(gw.url("/v1/chat/completions"))
        .header("X-Majordomo-Key", &key)
        .json(&json!({"model": "gpt-4o", "messages": []}));
    for i in 0..40 {
        req = req.header(format!("X-Majordomo-Tag-{i}"), "v");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("metadata"),
        "{v}"
    );
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("X-Majordomo-Key", &key)
        .header("X-Majordomo-User-Id", "x".repeat(5000))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(mock.request_count(), 0);
}

async fn a_burst_of_500_concurrent_requests_gives_exactly_500_rows(backend: Backend) {
    burst_of_500_requests(backend, None).await;
}

/// The same burst with `server.work_stealing` off: each proxy thread runs
/// its own runtime instead of sharing one (the default for the harness's 2
/// threads).
async fn a_burst_on_per_thread_runtimes_gives_exactly_500_rows(backend: Backend) {
    burst_of_500_requests(backend, Some(false)).await;
}

async fn burst_of_500_requests(backend: Backend, work_stealing: Option<bool>) {
    let env = TestEnv::new(backend).await;
    let (key_id, key) = env.create_key("burst");
    let mock = MockUpstream::start().await;
    mock.set_recording(false);
    let mut gw = env.gateway(&mock);
    if let Some(on) = work_stealing {
        gw = gw.env("MAJORDOMO_SERVER_WORK_STEALING", on);
    }
    let gw = gw.start().await;
    let c = client();
    let url = gw.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let (c, url, key) = (c.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                let stream = i % 2 == 0;
                let r = c
                    .post(url)
                    .header("X-Majordomo-Key", key)
                    .json(&json!({"model": "gpt-4o", "stream": stream, "messages": []}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                r.bytes().await.unwrap();
                status
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += usize::from(t.await.unwrap() != 200);
    }
    if failed > 0 {
        let log = gw.log();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR"))
            .take(10)
            .collect();
        panic!(
            "{failed} of 500 requests failed; gateway errors:\n{}",
            errors.join("\n")
        );
    }
    let rows = env.wait_rows(500, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 500);
    let ids: std::collections::HashSet<_> = rows.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 500);
    assert!(rows
        .iter()
        .all(|r| r.usage_complete && r.input_tokens as u64 == canned::OPENAI_CHAT.input));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.rows().await.len(), 500, "no extra rows");
    let info: Value =
        serde_json::from_str(&env.cli_ok(&["keys", "get", &key_id, "--json"])).unwrap();
    assert_eq!(info["request_count"], 500);
}

/// A GET retrieves a response an earlier POST made and was billed for
/// (`/v1/responses/{id}`, `/v1/chat/completions/{id}`): logged, but its
/// usage is not counted again, or every dashboard that re-reads a stored
/// response would double its cost. A response made in background mode is
/// the exception: its POST answered `queued`, and its usage is seen only
/// when it is retrieved; it is billed on its first retrieval that has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrieved_response_is_logged_unbilled_unless_it_ran_in_the_background() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (_, key) = env.create_key("retrieve");
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let stored = |background: bool| {
        json!({"id": "resp_1", "object": "response", "status": "completed",
               "background": background, "model": "gpt-4o", "output": [],
               "usage": {"input_tokens": 36, "output_tokens": 87, "total_tokens": 123}})
    };
    let get = |path: &'static str| {
        client()
            .get(gw.url(path))
            .header("X-Majordomo-Key", &key)
            .header("Authorization", "Bearer sk-provider-secret")
            .send()
    };

    mock.push_response(ScriptedResponse::json(200, stored(false)));
    let (status, id, _) = finish(get("/v1/responses/resp_1").await.unwrap()).await;
    assert_eq!(status, 200);
    let row = env.row(&id).await;
    assert_eq!(
        (row.request_method.as_str(), row.model.as_str()),
        ("GET", "gpt-4o")
    );
    assert_eq!((row.input_tokens, row.output_tokens), (0, 0));
    assert_eq!(row.total_cost, Decimal::ZERO);
    assert!(!row.usage_complete);

    let chat = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
                      "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5}});
    mock.push_response(ScriptedResponse::json(200, chat));
    let (_, id, _) = finish(get("/v1/chat/completions/chatcmpl-1").await.unwrap()).await;
    let row = env.row(&id).await;
    assert_eq!((row.input_tokens, row.total_cost), (0, Decimal::ZERO));

    mock.push_response(ScriptedResponse::json(200, stored(true)));
    let (_, id, _) = finish(get("/v1/responses/resp_1").await.unwrap()).await;
    let row = env.row(&id).await;
    assert_eq!((row.input_tokens, row.output_tokens), (36, 87));
    assert!(row.usage_complete && row.price_found);
    assert!(row.total_cost > Decimal::ZERO);

    // Retrieved again once finished (a poller's last look, a dashboard):
    // billed already, so logged without usage.
    mock.push_response(ScriptedResponse::json(200, stored(true)));
    let (status, id, _) = finish(get("/v1/responses/resp_1/").await.unwrap()).await;
    assert_eq!(status, 200);
    let row = env.row(&id).await;
    assert_eq!((row.input_tokens, row.total_cost), (0, Decimal::ZERO));
    assert!(!row.usage_complete);
    // Another background response is billed on its own first retrieval.
    let mut other = stored(true);
    other["id"] = json!("resp_2");
    mock.push_response(ScriptedResponse::json(200, other));
    let (_, id, _) = finish(get("/v1/responses/resp_2").await.unwrap()).await;
    assert_eq!(env.row(&id).await.input_tokens, 36);

    // The same object from a POST is billed.
    mock.push_response(ScriptedResponse::json(200, stored(false)));
    let (_, id, _) = send(
        &gw,
        &key,
        "/v1/responses",
        &json!({"model": "gpt-4o", "input": "hi"}),
    )
    .await;
    let row = env.row(&id).await;
    assert_eq!((row.input_tokens, row.output_tokens), (36, 87));
}

/// A background response is billed once, whichever gateway sees its usage
/// first: a replica on the same store knows, and so does a gateway started
/// after both are gone (`majordomo_billed_responses`).
async fn a_background_response_is_billed_once_by_all_the_gateways_on_a_store(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("replicas");
    let mock = MockUpstream::start().await;
    let one = env.gateway(&mock).start().await;
    let two = env.replica(&mock, "two").start().await;
    let finished = finished_background_response("resp_bg");

    let (_, id, _) = finish(retrieve_response(&mock, &two, &key, &finished).await).await;
    let row = env.row(&id).await;
    assert_eq!((row.input_tokens, row.output_tokens), (36, 87));
    assert!(row.total_cost > Decimal::ZERO);

    // `one` never saw it billed; the store did.
    let (status, id, _) = finish(retrieve_response(&mock, &one, &key, &finished).await).await;
    assert_eq!(status, 200);
    let row = env.row(&id).await;
    assert_eq!((row.input_tokens, row.total_cost), (0, Decimal::ZERO));
    assert!(!row.usage_complete);

    // A cancel answers with the response object too: billed once, the
    // first time its usage is seen.
    let cancel = |gw: &GatewayProcess, response: &str| {
        let mut object = finished.clone();
        object["id"] = json!(response);
        object["status"] = json!("cancelled");
        mock.push_response(ScriptedResponse::json(200, object));
        client()
            .post(gw.url(&format!("/v1/responses/{response}/cancel")))
            .header("X-Majordomo-Key", &key)
            .header("Authorization", "Bearer sk-provider-secret")
            .send()
    };
    let (status, id, _) = finish(cancel(&one, "resp_bg").await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(env.row(&id).await.input_tokens, 0);
    let (_, id, _) = finish(cancel(&two, "resp_cancelled").await.unwrap()).await;
    assert_eq!(env.row(&id).await.input_tokens, 36);
    let (_, id, _) = finish(cancel(&one, "resp_cancelled").await.unwrap()).await;
    assert_eq!(env.row(&id).await.input_tokens, 0);

    // A background response its POST streamed to the end is billed then,
    // and not again when another gateway retrieves it.
    let event = |kind: &str, status: &str, usage: Value| {
        let data = json!({"type": kind, "response": {"id": "resp_streamed", "status": status,
                          "background": true, "model": "gpt-4o", "usage": usage}});
        format!("event: {kind}\ndata: {data}")
    };
    let counts = json!({"input_tokens": 12, "output_tokens": 34});
    mock.push_response(ScriptedResponse::sse(vec![
        event("response.created", "queued", Value::Null),
        event("response.completed", "completed", counts.clone()),
    ]));
    let body = json!({"model": "gpt-4o", "input": "hi", "stream": true, "background": true});
    let (status, id, _) = send(&one, &key, "/v1/responses", &body).await;
    assert_eq!(status, 200);
    assert_eq!(env.row(&id).await.input_tokens, 12);
    let mut stored = finished.clone();
    stored["id"] = json!("resp_streamed");
    stored["usage"] = counts;
    let (_, id, _) = finish(retrieve_response(&mock, &two, &key, &stored).await).await;
    assert_eq!(env.row(&id).await.input_tokens, 0);

    // Both killed: what they remembered is gone.
    drop((one, two));
    let three = env.gateway(&mock).start().await;
    let (_, id, _) = finish(retrieve_response(&mock, &three, &key, &finished).await).await;
    assert_eq!(env.row(&id).await.input_tokens, 0);
}

/// The claims in the store (response ids), sorted.
async fn claims(env: &TestEnv) -> Vec<String> {
    let sql = "SELECT response_id FROM majordomo_billed_responses ORDER BY response_id";
    match env.backend {
        Backend::Postgres => env
            .pg_client()
            .await
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect(),
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(env.sqlite_path()).unwrap();
            let mut stmt = c.prepare(sql).unwrap();
            let ids = stmt
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            ids
        }
    }
}

/// A running gateway deletes claims older than 45 days (OpenAI keeps a
/// response 30), so the table does not grow for ever; younger ones stay.
async fn a_gateway_forgets_background_claims_past_their_keeping_time(backend: Backend) {
    let env = TestEnv::new(backend).await;
    env.create_key("forgets");
    let (old, young) = (
        chrono::Utc::now() - chrono::TimeDelta::days(46),
        chrono::Utc::now() - chrono::TimeDelta::days(44),
    );
    match env.backend {
        Backend::Postgres => {
            env.pg_client()
                .await
                .execute(
                    "INSERT INTO majordomo_billed_responses (response_id, request_id, billed_at)
                     VALUES ('resp_old', gen_random_uuid(), $1), ('resp_young', gen_random_uuid(), $2)",
                    &[&old, &young],
                )
                .await
                .unwrap();
        }
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(env.sqlite_path()).unwrap();
            let text = |t: chrono::DateTime<chrono::Utc>| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            };
            c.execute(
                "INSERT INTO majordomo_billed_responses (response_id, request_id, billed_at)
                 VALUES ('resp_old', 'r1', ?1), ('resp_young', 'r2', ?2)",
                [text(old), text(young)],
            )
            .unwrap();
        }
    }
    assert_eq!(claims(&env).await, ["resp_old", "resp_young"]);
    let mock = MockUpstream::start().await;
    let _gw = env.gateway(&mock).start().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while claims(&env).await.len() == 2 {
        assert!(std::time::Instant::now() < deadline, "old claim still kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(claims(&env).await, ["resp_young"]);
}

both_stores!(
    each_provider_and_mode_logs_an_exact_priced_row,
    a_background_response_is_billed_once_by_all_the_gateways_on_a_store,
    a_gateway_forgets_background_claims_past_their_keeping_time,
    an_injected_usage_chunk_is_hidden_from_the_client_and_still_logged,
    a_stripped_stream_from_a_content_length_upstream_is_chunked_and_keeps_the_connection,
    a_gzip_upstream_body_reaches_the_client_untouched_and_is_parsed,
    a_client_that_disconnects_mid_stream_leaves_a_499_row_with_partial_usage,
    a_client_that_closes_right_after_done_is_not_a_disconnect,
    upstream_errors_and_failures_are_logged_with_their_status,
    an_unknown_model_is_logged_unpriced_not_free,
    a_price_override_in_the_config_wins,
    metadata_over_the_limits_is_a_400_with_a_clear_message,
    a_burst_of_500_concurrent_requests_gives_exactly_500_rows,
    a_burst_on_per_thread_runtimes_gives_exactly_500_rows,
);
