//! Issue 4: request/response bodies in the database or in S3 (a real
//! S3-compatible server, moto's standalone server from PyPI, on loopback),
//! and no secret anywhere: rows, bodies, logs, spool files.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

const PROVIDER_SECRET: &str = "sk-provider-very-secret-123";
const GOOGLE_SECRET: &str = "goog-query-secret-456";

struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    /// Reads an object back with credentials (objects are private).
    async fn get(&self, bucket: &str, key: &str) -> bytes::Bytes {
        use object_store::ObjectStoreExt;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test-access")
            .with_secret_access_key("test-secret")
            .build()
            .unwrap();
        store
            .get(&object_store::path::Path::from(key))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the S3-compatible server and creates a bucket. Installed by
/// `scripts/install-s3-server.sh` (run by `scripts/test.sh`); this test fails
/// rather than skips without it.
async fn s3_server(bucket: &str) -> S3Server {
    let bin = std::env::var("MAJORDOMO_TEST_MOTO_SERVER")
        .unwrap_or_else(|_| "/var/tmp/majordomo-s3-venv/bin/moto_server".to_string());
    assert!(
        std::path::Path::new(&bin).exists(),
        "S3-compatible test server missing at {bin}: run ./scripts/install-s3-server.sh"
    );
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = S3Server { child, endpoint };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client()
            .put(format!("{}/{bucket}", server.endpoint))
            .send()
            .await
        {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "S3 server did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server
}

/// A gateway that stores bodies in the bucket `majordomo-logs` of `s3`.
fn gateway_with_bodies_in<'a>(
    env: &'a TestEnv,
    mock: &MockUpstream,
    s3: &S3Server,
) -> GatewayBuilder<'a> {
    env.gateway(mock)
        .env("MAJORDOMO_LOGGING_BODY_STORAGE", "s3")
        .env("MAJORDOMO_S3_BUCKET", "majordomo-logs")
        .env("MAJORDOMO_S3_ENDPOINT", &s3.endpoint)
        .env("MAJORDOMO_S3_ACCESS_KEY_ID", "test-access")
        .env("MAJORDOMO_S3_SECRET_ACCESS_KEY", "test-secret")
}

async fn chat(gw: &GatewayProcess, key: &str, stream: bool) -> (String, String) {
    let r = client()
        .post(gw.url(&format!("/v1/chat/completions?key={GOOGLE_SECRET}")))
        .header("X-Majordomo-Key", key)
        .header("Authorization", format!("Bearer {PROVIDER_SECRET}"))
        .header("X-Majordomo-User-Id", "user-body")
        // As the SDKs (httpx) ask.
        .header("Accept-Encoding", "gzip, deflate")
        .json(&json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "Grüße 👋"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-majordomo-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        body.extend_from_slice(&c.unwrap());
    }
    (id, String::from_utf8(body).unwrap())
}

async fn bodies(env: &TestEnv, id: &str) -> (Option<String>, Option<String>, Option<String>) {
    match env.backend {
        Backend::Postgres => {
            let r = env
                .pg_client()
                .await
                .query_one(
                    "SELECT request_body, response_body, body_s3_key FROM llm_requests WHERE id::text = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1), r.get(2))
        }
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(env.sqlite_path()).unwrap();
            c.query_row(
                "SELECT request_body, response_body, body_s3_key FROM llm_requests WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
        }
    }
}

/// Every column of every row, as text.
async fn dump_rows(env: &TestEnv) -> String {
    match env.backend {
        Backend::Postgres => env
            .pg_client()
            .await
            .query("SELECT row_to_json(t)::text FROM llm_requests t", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"),
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(env.sqlite_path()).unwrap();
            let mut stmt = c.prepare("SELECT * FROM llm_requests").unwrap();
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| match r.get_ref(i).unwrap() {
                            rusqlite::types::ValueRef::Text(t) => {
                                String::from_utf8_lossy(t).into_owned()
                            }
                            rusqlite::types::ValueRef::Blob(b) => {
                                String::from_utf8_lossy(b).into_owned()
                            }
                            other => format!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            rows.join("\n")
        }
    }
}

fn dir_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push_str(&dir_text(&p));
            } else if let Ok(b) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    out
}

fn assert_no_secrets(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "secret {s:?} found in {what}");
    }
}

async fn bodies_are_stored_in_the_database_as_the_client_sent_and_received_them(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("bodies");
    let mock = MockUpstream::start().await;
    let gw = env
        .gateway(&mock)
        .env("MAJORDOMO_LOGGING_BODY_STORAGE", "postgres")
        .start()
        .await;
    let (id, received) = chat(&gw, &key, false).await;
    env.row(&id).await;
    let (req, resp, s3) = bodies(&env, &id).await;
    assert!(req.unwrap().contains("Grüße 👋"));
    assert_eq!(resp.unwrap(), received);
    assert!(s3.is_none());
    // A stored body is text: the provider is asked for it uncompressed
    // (an encoded one would be kept only as a placeholder).
    assert_eq!(
        mock.last_request().unwrap().header("accept-encoding"),
        Some("identity")
    );

    // A stream is stored as the text the client received (injected usage chunk removed).
    let (id, received) = chat(&gw, &key, true).await;
    env.row(&id).await;
    let (_, resp, _) = bodies(&env, &id).await;
    assert_eq!(resp.as_deref(), Some(received.as_str()));
    assert!(!received.contains("\"choices\":[]"));

    // Truncation at logging.max_body_bytes never splits a character.
    drop(gw);
    let gw = env
        .gateway(&mock)
        .env("MAJORDOMO_LOGGING_BODY_STORAGE", "postgres")
        .env("MAJORDOMO_LOGGING_MAX_BODY_BYTES", 80)
        .start()
        .await;
    let (id, _) = chat(&gw, &key, false).await;
    env.row(&id).await;
    let (req, _, _) = bodies(&env, &id).await;
    assert!(req.unwrap().contains("truncated"));

    let everything = dump_rows(&env).await + &gw.log() + &dir_text(env.path());
    assert_no_secrets(
        "rows, logs and spool",
        &everything,
        &[&key, PROVIDER_SECRET, GOOGLE_SECRET],
    );
}

async fn bodies_go_to_s3_as_gzip_json_and_no_secret_is_written_anywhere(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (key_id, key) = env.create_key("s3");
    let s3 = s3_server("majordomo-logs").await;
    let mock = MockUpstream::start().await;
    let gw = gateway_with_bodies_in(&env, &mock, &s3).start().await;
    let mut objects = String::new();
    for stream in [false, true] {
        let (id, received) = chat(&gw, &key, stream).await;
        env.row(&id).await;
        let (req, resp, s3_key) = bodies(&env, &id).await;
        assert!(
            req.is_none() && resp.is_none(),
            "bodies live in S3, not in the row"
        );
        let s3_key = s3_key.expect("body_s3_key is set once the object is stored");
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        assert_eq!(s3_key, format!("{key_id}/{today}/{id}.json.gz"));
        let object = s3.get("majordomo-logs", &s3_key).await;
        let mut text = String::new();
        flate2::read::GzDecoder::new(&object[..])
            .read_to_string(&mut text)
            .unwrap_or_else(|e| {
                panic!(
                    "{e}: {:?}",
                    String::from_utf8_lossy(&object[..object.len().min(300)])
                )
            });
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["request_id"], id);
        assert_eq!(doc["response_body"], received);
        assert!(doc["request_body"].as_str().unwrap().contains("Grüße 👋"));
        objects.push_str(&text);
    }
    let everything = objects + &dump_rows(&env).await + &gw.log() + &dir_text(env.path());
    assert_no_secrets(
        "S3 objects, rows, logs and spool",
        &everything,
        &[&key, PROVIDER_SECRET, GOOGLE_SECRET],
    );
}

/// S3 going away costs where a body is kept, never the body: a row whose
/// upload failed keeps its bodies inline, and arrives without waiting out
/// the client library's retries; while S3 is paused, later rows do too.
async fn a_body_whose_upload_fails_stays_in_its_row(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (_, key) = env.create_key("s3-away");
    let mut s3 = s3_server("majordomo-logs").await;
    let mock = MockUpstream::start().await;
    let gw = gateway_with_bodies_in(&env, &mock, &s3).start().await;
    let (id, _) = chat(&gw, &key, false).await;
    env.row(&id).await;
    assert!(bodies(&env, &id).await.2.is_some(), "S3 takes the first");

    s3.child.kill().unwrap();
    s3.child.wait().unwrap();
    for stream in [true, false] {
        let started = Instant::now();
        let (id, received) = chat(&gw, &key, stream).await;
        env.row(&id).await;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?} for the row",
            started.elapsed()
        );
        let (req, resp, s3_key) = bodies(&env, &id).await;
        assert_eq!(s3_key, None);
        assert!(req.expect("request body kept").contains("Grüße 👋"));
        assert_eq!(resp.expect("response body kept"), received);
    }
    let failures = gw
        .metric("majordomo_sink_errors_total{kind=\"body_upload\"}")
        .await
        .unwrap();
    assert_eq!(failures, 2.0, "{}", gw.log());
    assert!(gw.log().contains("keeps its bodies inline"), "{}", gw.log());
}

both_stores!(
    bodies_are_stored_in_the_database_as_the_client_sent_and_received_them,
    bodies_go_to_s3_as_gzip_json_and_no_secret_is_written_anywhere,
    a_body_whose_upload_fails_stays_in_its_row,
);
