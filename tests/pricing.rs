//! Pricing end to end: the remote table (llm-prices.com format) is merged
//! over the bundled snapshot, and a failed, non-200 or malformed refresh keeps
//! the last good table. The "remote" is a local HTTP server.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};

#[derive(Clone)]
struct Remote {
    answer: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
    url: String,
}

async fn remote_prices() -> Remote {
    let answer = Arc::new(Mutex::new((200u16, String::new())));
    let hits = Arc::new(AtomicUsize::new(0));
    let (a, h) = (answer.clone(), hits.clone());
    let app = axum::Router::new().route(
        "/current-v1.json",
        axum::routing::get(move || {
            let (a, h) = (a.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let (status, body) = a.lock().unwrap().clone();
                (StatusCode::from_u16(status).unwrap(), body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/current-v1.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Remote { answer, hits, url }
}

impl Remote {
    fn set(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_string());
    }
    async fn wait_hits(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.hits.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "remote prices never fetched");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const REMOTE: &str = r#"{"updated_at": "2026-11-01", "prices": [
  {"id": "gpt-4o", "vendor": "openai", "name": "GPT-4o (repriced)", "input": 5, "output": 20, "input_cached": null},
  {"id": "remote-only-model", "vendor": "acme", "name": "Remote only", "input": 1, "output": 1, "input_cached": null}
]}"#;

async fn cost_of(env: &TestEnv, gw: &GatewayProcess, key: &str, model: &str) -> (bool, Decimal) {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("X-Majordomo-Key", key)
        .json(&json!({"model": model, "messages": []}))
        .send()
        .await
        .unwrap();
    let (_, id, _) = finish(r).await;
    let row = env.row(&id).await;
    (row.price_found, row.total_cost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_prices_merge_over_the_snapshot_and_a_bad_refresh_keeps_the_last_good_table() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (_, key) = env.create_key("prices");
    let remote = remote_prices().await;
    remote.set(200, REMOTE);
    let mock = MockUpstream::start().await;
    let gw = env
        .gateway(&mock)
        .env("MAJORDOMO_PRICING_REMOTE_URL", &remote.url)
        .env("MAJORDOMO_PRICING_REFRESH_INTERVAL", "1s")
        .start()
        .await;
    remote.wait_hits(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Remote gpt-4o: 1234×5 (no cached rate for OpenAI → input price) + 567×20 = 17510 µ$.
    let repriced = "0.01751".parse::<Decimal>().unwrap();
    assert_eq!(cost_of(&env, &gw, &key, "gpt-4o").await, (true, repriced));
    // A model only the remote knows.
    assert_eq!(
        cost_of(&env, &gw, &key, "remote-only-model").await,
        (true, "0.001801".parse().unwrap())
    );
    // A model only the snapshot knows is still priced (merged, not swapped):
    // gpt-4o-mini 1034×0.15 + 200×0.075 + 567×0.6 = 510.3 µ$.
    assert_eq!(
        cost_of(&env, &gw, &key, "gpt-4o-mini").await,
        (true, "0.0005103".parse().unwrap())
    );

    for (status, body) in [
        (500, "oops"),
        (200, "{\"prices\": ["),
        (200, "{}"),
        (200, "[]"),
    ] {
        let before = remote.hits.load(Ordering::SeqCst);
        remote.set(status, body);
        remote.wait_hits(before + 2).await;
        assert_eq!(
            cost_of(&env, &gw, &key, "gpt-4o").await,
            (true, repriced),
            "after a refresh answering {status} {body:?}"
        );
    }
    assert!(gw.log().contains("price refresh failed"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prices_command_shows_the_table_and_prices_a_model() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let out = env.cli_ok(&["prices", "show", "claude-sonnet-4-5-20250929"]);
    assert!(out.contains("claude-sonnet-4.5"), "{out}");
    assert!(out.contains("$3 per 1M"), "{out}");
    let summary = env.cli_ok(&["prices"]);
    assert!(
        summary.contains("models:") && summary.contains("bundled"),
        "{summary}"
    );

    let remote = remote_prices().await;
    remote.set(200, REMOTE);
    let out = env
        .command()
        .env("MAJORDOMO_PRICING_REMOTE_URL", &remote.url)
        .args(["prices", "show", "gpt-4o-2024-08-06", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "gpt-4o");
    assert_eq!(v["input"], "5");

    let out = env.cli(&["prices", "show", "no-such-model-xyz"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("price_found = false"));
}
