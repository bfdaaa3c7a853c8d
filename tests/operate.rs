//! Issue 5 "Operate it": metrics, logs, revocation across replicas, upgrades.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_are_served_on_the_metrics_port_and_not_on_the_main_one() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (_, key) = env.create_key("metrics");
    let mock = MockUpstream::start().await;
    let metrics_port = free_port();
    let gw = env
        .gateway(&mock)
        .env("MAJORDOMO_METRICS_PORT", metrics_port)
        .start()
        .await;
    for model in ["gpt-4o", "some-unknown-model"] {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("X-Majordomo-Key", &key)
            .json(&json!({"model": model, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    env.wait_rows(2, Duration::from_secs(10)).await;
    let text = client()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = |s: &str| parse_metric(&text, s);
    assert_eq!(
        m(r#"majordomo_requests_total{model="gpt-4o",provider="openai",status="200"}"#),
        Some(1.0)
    );
    assert_eq!(
        m(r#"majordomo_requests_total{model="unpriced",provider="openai",status="200"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m(r#"majordomo_tokens_total{kind="input",provider="openai"}"#),
        Some(2.0 * 1234.0),
        "{text}"
    );
    assert_eq!(
        m(r#"majordomo_request_duration_seconds_count{provider="openai"}"#),
        Some(2.0)
    );
    assert_eq!(
        m(r#"majordomo_sink_records_total{outcome="dropped"}"#),
        Some(0.0)
    );
    assert!(m("majordomo_pricing_models").unwrap() > 100.0);
    assert!(m(r#"majordomo_key_cache_requests_total{result="hit"}"#).unwrap() >= 1.0);
    assert!(m(r#"majordomo_cost_usd_total{provider="openai"}"#).unwrap() > 0.0);
    // With a port of its own, /metrics is not on the clients' port: there it
    // is a request like any other, refused without a key.
    let main = client().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(main.status(), 401);
    assert!(!main
        .text()
        .await
        .unwrap()
        .contains("majordomo_sink_queue_depth"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_carry_the_request_id_and_never_a_secret() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (_, key) = env.create_key("logs");
    let mock = MockUpstream::start().await;
    let gw = env
        .gateway(&mock)
        .env("MAJORDOMO_LOGGING_FORMAT", "json")
        .start()
        .await;
    let r = client()
        .post(gw.url("/v1/chat/completions?key=query-secret"))
        .header("X-Majordomo-Key", &key)
        .header("Authorization", "Bearer sk-log-secret")
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    let (_, id, _) = finish(r).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log().contains(&id) {
        assert!(
            Instant::now() < deadline,
            "no access log line:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = gw.log();
    let line = log.lines().find(|l| l.contains(&id)).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
    assert_eq!(v["target"], "majordomo::access");

    // The upstream dies mid-stream: Pingora's own error line names the
    // request by the gateway's summary (its id, the path without the query),
    // never by the raw path, whose query holds a Gemini-style `key=`.
    let events = vec![
        r#"data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#.to_string(),
        r#"data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"!"}}]}"#.to_string(),
        "data: [DONE]".to_string(),
    ];
    mock.push_response(ScriptedResponse::sse(events).with_abort_after(1));
    let r = client()
        .post(gw.url("/v1/chat/completions?alt=sse&key=query-secret-2"))
        .header("X-Majordomo-Key", &key)
        .header("Authorization", "Bearer sk-log-secret")
        .json(&json!({"model": "gpt-4o", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    let cut_id = r.headers()[REQUEST_ID].to_str().unwrap().to_string();
    let _ = r.bytes().await; // an error: the body was cut
    let deadline = Instant::now() + Duration::from_secs(5);
    let proxy_error = |log: &str| {
        log.lines()
            .find(|l| l.contains("Fail to proxy") && l.contains(&cut_id))
            .map(str::to_owned)
    };
    while proxy_error(&gw.log()).is_none() {
        assert!(
            Instant::now() < deadline,
            "no proxy error line naming {cut_id}:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = proxy_error(&gw.log()).unwrap();
    assert!(line.contains("POST /v1/chat/completions, Host: "), "{line}");

    let log = gw.log();
    for secret in [key.as_str(), "sk-log-secret", "query-secret"] {
        assert!(!log.contains(secret), "secret {secret} in the log:\n{log}");
    }
}

/// Access lines go to a writer thread: a full stderr pipe (a log collector
/// that stopped reading) blocks that thread, never a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_does_not_stall_requests() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (_, key) = env.create_key("stalled-log");
    let mock = MockUpstream::start().await;
    let gw = env
        .gateway(&mock)
        .env("MAJORDOMO_LOGGING_LEVEL", "info")
        .unread_output()
        .start()
        .await;
    // ~110 bytes an access line: 2 000 lines are over three times the 64 KiB
    // a pipe holds.
    const N: usize = 2000;
    let client = client();
    let started = Instant::now();
    let mut sent = 0;
    while sent < N {
        let batch: Vec<_> = (sent..(sent + 16).min(N))
            .map(|_| {
                client
                    .post(gw.url("/v1/chat/completions"))
                    .header("X-Majordomo-Key", &key)
                    .json(&json!({"model": "gpt-4o", "messages": []}))
                    .timeout(Duration::from_secs(10))
                    .send()
            })
            .collect();
        for r in futures_util::future::join_all(batch).await {
            let r = r.unwrap_or_else(|e| panic!("request {sent} with stderr full: {e}"));
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            sent += 1;
        }
    }
    env.wait_rows(N, Duration::from_secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{N} requests took {:?}",
        started.elapsed()
    );
    // The lines wait in memory (under the 4 MiB cap): none dropped yet.
    assert_eq!(
        gw.metric("majordomo_log_lines_dropped_total").await,
        Some(0.0)
    );
}

async fn a_revoked_key_fails_on_every_replica_within_a_second(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (id, key) = env.create_key("replicas");
    let mock = MockUpstream::start().await;
    // Two replicas on one store, with the default 5-minute cache TTL.
    let a = env.gateway(&mock).start().await;
    let b = env.gateway(&mock).start().await;
    let send = |gw: &GatewayProcess| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .header("X-Majordomo-Key", &key)
            .json(&json!({"model": "gpt-4o", "messages": []}))
            .send()
    };
    assert_eq!(send(&a).await.unwrap().status(), 200);
    assert_eq!(send(&b).await.unwrap().status(), 200);
    // Let the listeners settle (PostgreSQL LISTEN / SQLite poller).
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.cli_ok(&["keys", "revoke", &id]);
    let revoked_at = Instant::now();
    for gw in [&a, &b] {
        loop {
            let status = send(gw).await.unwrap().status();
            if status == 401 {
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "still accepted {:?} after the revocation",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// A gateway on PostgreSQL whose every connection to it goes through `relay`.
async fn gateway_via(env: &TestEnv, mock: &MockUpstream, relay: &TcpRelay) -> GatewayProcess {
    let mut builder = env.gateway(mock);
    for (k, v) in env.via_relay(relay) {
        builder = builder.env(&k, v);
    }
    builder.start().await
}

/// Waits until the revocation listener has connected `times` times.
async fn wait_for_listener(gw: &GatewayProcess, times: usize, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while gw.log().matches("listening for key revocations").count() < times {
        assert!(Instant::now() < deadline, "{what}:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `key` works (and is cached); revoked with the CLI (which goes to the
/// database directly), it is refused within 3 s: the listener heard it.
async fn revocation_is_heard(env: &TestEnv, gw: &GatewayProcess, id: &str, key: &str) {
    let send = || {
        client()
            .post(gw.url("/v1/chat/completions"))
            .header("X-Majordomo-Key", key)
            .json(&json!({"model": "gpt-4o", "messages": []}))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    env.cli_ok(&["keys", "revoke", id]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while send().await.unwrap().status() != 401 {
        assert!(Instant::now() < deadline, "revocation not heard");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_listener_reconnects_after_losing_the_database() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (id, key) = env.create_key("reconnect");
    let relay = TcpRelay::start((PG_HOST, PG_PORT)).await;
    let mock = MockUpstream::start().await;
    let gw = gateway_via(&env, &mock, &relay).await;
    wait_for_listener(&gw, 1, Duration::from_secs(10), "never listened").await;
    // The key in the cache and the pools connected before the database goes.
    let r = gw
        .post_chat(&key, &json!({"model": "gpt-4o", "messages": []}))
        .await;
    assert_eq!(r.status(), 200);
    relay.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.restore();
    wait_for_listener(
        &gw,
        2,
        Duration::from_secs(15),
        "listener never reconnected",
    )
    .await;
    revocation_is_heard(&env, &gw, &id, &key).await;
}

both_stores!(a_revoked_key_fails_on_every_replica_within_a_second);

/// `-d` forks after the stores are made. A SQLite connection that crossed
/// the fork holds no locks in the daemon, so the next CLI run checkpointed
/// and deleted the WAL it was writing to: every later row was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_sqlite_keeps_its_rows_while_the_cli_uses_the_same_file() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let (_, key) = env.create_key("before");
    let mock = MockUpstream::start().await;
    let log = env.path().join("daemon.log");
    let gw = env
        .gateway(&mock)
        .env("MAJORDOMO_SERVER_ERROR_LOG", log.display())
        .env("MAJORDOMO_SERVER_GRACE_PERIOD_SECS", 1)
        .env("MAJORDOMO_SERVER_GRACEFUL_SHUTDOWN_TIMEOUT_SECS", 2)
        .start_daemon()
        .await;
    let send = |key: String| {
        let url = gw.url("/v1/chat/completions");
        async move {
            let r = client()
                .post(url)
                .header("X-Majordomo-Key", key)
                .json(&json!({"model": "gpt-4o", "messages": []}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            r.bytes().await.unwrap();
            status
        }
    };
    assert_eq!(send(key.clone()).await, 200);
    assert_eq!(env.wait_rows(1, Duration::from_secs(10)).await.len(), 1);
    // The CLI opens and closes the file beside the daemon.
    let (_, later) = env.create_key("after");
    assert_eq!(send(later).await, 200, "a key made after the start works");
    assert_eq!(send(key).await, 200);
    let rows = env.wait_rows(3, Duration::from_secs(10)).await;
    assert_eq!(
        rows.len(),
        3,
        "rows written after the CLI ran are visible\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        gw.stop(Duration::from_secs(20)).await,
        "the daemon ends on SIGTERM"
    );
    assert_eq!(env.rows().await.len(), 3, "and its rows outlive it");
}

/// A listener connection that dies without a word (a NAT or load balancer
/// forgetting it) is noticed and replaced: a listener that only waited
/// would miss every revocation until the cache TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_listener_replaces_a_connection_that_went_silent() {
    let env = TestEnv::new(Backend::Postgres).await;
    let relay = TcpRelay::start((PG_HOST, PG_PORT)).await;
    let mock = MockUpstream::start().await;
    let gw = gateway_via(&env, &mock, &relay).await;
    wait_for_listener(&gw, 1, Duration::from_secs(10), "never listened").await;
    relay.silence();
    wait_for_listener(
        &gw,
        2,
        Duration::from_secs(25),
        "the silent connection was never replaced",
    )
    .await;
    assert!(
        gw.log().contains("the database stopped answering"),
        "{}",
        gw.log()
    );
    // The new connection hears revocations (the key made now, so no pool
    // connection predates the silence).
    let (id, key) = env.create_key("after");
    revocation_is_heard(&env, &gw, &id, &key).await;
}
