//! Issue 4 "Nothing lost": a usage row survives a database outage, a
//! SIGKILL and a SIGTERM mid-stream, and is never written twice. These run
//! against the real PostgreSQL, reached through a TCP relay the test cuts.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;

/// Sends `n` chat requests, `concurrency` at a time; returns the request ids
/// of every request answered 200.
async fn load(gw: &GatewayProcess, key: &str, n: usize, concurrency: usize) -> Vec<String> {
    let c = client();
    let url = gw.url("/v1/chat/completions");
    let results = futures_util::stream::iter(0..n)
        .map(|i| {
            let (c, url, key) = (c.clone(), url.clone(), key.to_string());
            async move {
                let r = c
                    .post(url)
                    .header("X-Majordomo-Key", key)
                    .json(&json!({"model": "gpt-4o", "stream": i % 3 == 0, "messages": []}))
                    .send()
                    .await
                    .expect("the gateway answers even while the database is away");
                assert_eq!(r.status(), 200);
                let id = r.headers()["x-majordomo-request-id"]
                    .to_str()
                    .unwrap()
                    .to_string();
                r.bytes().await.unwrap();
                id
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    results
}

fn assert_exactly(rows: &[LogRow], ids: &[String]) {
    let got: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let unique: HashSet<&str> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "duplicate rows");
    let want: HashSet<&str> = ids.iter().map(|s| s.as_str()).collect();
    let missing: Vec<_> = want.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "{} rows missing, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(unique.len(), want.len(), "rows for requests never made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_survive_a_database_outage_under_load_without_duplicates() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (key_id, key) = env.create_key("outage");
    let relay = TcpRelay::start((PG_HOST, PG_PORT)).await;
    let mock = MockUpstream::start().await;
    mock.set_recording(false);
    let mut gw = env.gateway(&mock);
    for (k, v) in env.via_relay(&relay) {
        gw = gw.env(&k, v);
    }
    let gw = gw.env("MAJORDOMO_SINK_CHANNEL_CAPACITY", 64).start().await;

    let mut ids = load(&gw, &key, 100, 8).await;
    relay.cut();
    // The database is away while traffic keeps coming: every request still
    // answers (the key is cached), records go to the spool.
    let outage_started = Instant::now();
    while outage_started.elapsed() < Duration::from_secs(3) {
        ids.extend(load(&gw, &key, 50, 8).await);
    }
    assert!(
        env.rows().await.len() < ids.len(),
        "the outage must hold rows back"
    );
    relay.restore();
    ids.extend(load(&gw, &key, 100, 8).await);

    let rows = env.wait_rows(ids.len(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = if rows.len() == ids.len() {
        env.rows().await
    } else {
        rows
    };
    assert_exactly(&rows, &ids);
    let info: serde_json::Value =
        serde_json::from_str(&env.cli_ok(&["keys", "get", &key_id, "--json"])).unwrap();
    assert_eq!(
        info["request_count"],
        ids.len(),
        "counters count each row once"
    );
    assert!(!gw.log().contains("lost"), "{}", gw.log());
    assert_eq!(
        gw.metric("majordomo_sink_records_total{outcome=\"dropped\"}")
            .await,
        Some(0.0)
    );
    assert!(
        gw.metric("majordomo_sink_records_total{outcome=\"spooled\"}")
            .await
            .unwrap()
            > 0.0
    );
    assert!(
        gw.metric("majordomo_sink_records_total{outcome=\"replayed\"}")
            .await
            .unwrap()
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_gateway_loses_no_accepted_record() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (_, key) = env.create_key("kill");
    let relay = TcpRelay::start((PG_HOST, PG_PORT)).await;
    let mock = MockUpstream::start().await;
    mock.set_recording(false);
    let start = |relay: &TcpRelay| {
        let mut gw = env.gateway(&mock);
        for (k, v) in env.via_relay(relay) {
            gw = gw.env(&k, v);
        }
        gw.start()
    };
    let mut gw = start(&relay).await;
    let mut ids = load(&gw, &key, 150, 8).await;
    // With the database away, accepted records exist only in the spool and
    // in memory when the process is killed.
    relay.cut();
    ids.extend(load(&gw, &key, 150, 8).await);
    // Every answered request has been handed to the sink (logging runs as
    // the response ends); then kill -9, no chance to flush anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    relay.restore();
    let gw2 = start(&relay).await;
    let rows = env.wait_rows(ids.len(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows = if rows.len() == ids.len() {
        env.rows().await
    } else {
        rows
    };
    assert_exactly(&rows, &ids);
    assert!(
        gw2.log().contains("replayed"),
        "the rows came from the spool: {}",
        gw2.log()
    );
    assert_eq!(
        gw2.metric("majordomo_sink_records_total{outcome=\"dropped\"}")
            .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigterm_mid_stream_lets_the_stream_finish_and_writes_its_row() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (_, key) = env.create_key("term");
    let mock = MockUpstream::start().await;
    mock.set_pause(Duration::from_secs(2));
    let mut gw = env
        .gateway(&mock)
        .env("MAJORDOMO_SERVER_GRACE_PERIOD_SECS", 5)
        .env("MAJORDOMO_SERVER_GRACEFUL_SHUTDOWN_TIMEOUT_SECS", 2)
        .start()
        .await;
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
    let mut body = stream.next().await.unwrap().unwrap().to_vec();
    gw.signal("TERM");
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.expect("the stream completes during the grace period"));
    }
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
    let row = env.row(&id).await;
    assert_eq!(row.status_code, 200);
    assert!(row.usage_complete);
    assert_eq!(row.input_tokens as u64, canned::OPENAI_CHAT.input);
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some(), "the gateway exits after its grace period");
}
