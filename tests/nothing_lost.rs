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
                let (status, id, _) = finish(r).await;
                assert_eq!(status, 200);
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

/// Ways a database refuses writes for a reason that is not the rows' own.
#[derive(Clone, Copy)]
enum Refusal {
    /// Read-only, as a standby is after a failover (SQLSTATE 25006 when the
    /// `COPY` starts); the gateway's sessions are ended so its pool
    /// reconnects under the setting.
    ReadOnly,
    /// An error with a SQLSTATE outside the data's classes raised while the
    /// rows go in, as a permission or lock timeout is: the connection stays
    /// usable, so the sink's own handling of the answer is what is tested.
    RaisedWhileWriting,
}

impl Refusal {
    async fn set(self, env: &TestEnv, on: bool) {
        let db = env.pg_database.as_deref().expect("postgres env");
        let admin = pg_admin().await;
        match self {
            Refusal::ReadOnly => {
                let setting = if on {
                    "SET default_transaction_read_only = on"
                } else {
                    "RESET default_transaction_read_only"
                };
                admin
                    .batch_execute(&format!("ALTER DATABASE {db} {setting}"))
                    .await
                    .unwrap();
                admin
                    .batch_execute(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
                    ))
                    .await
                    .unwrap();
            }
            Refusal::RaisedWhileWriting => {
                let sql = if on {
                    "CREATE FUNCTION refuse_rows() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN RAISE EXCEPTION 'not now' USING ERRCODE = '25006'; END $$;
                     CREATE TRIGGER refuse_rows BEFORE INSERT ON llm_requests
                     FOR EACH ROW EXECUTE FUNCTION refuse_rows();"
                } else {
                    "DROP TRIGGER refuse_rows ON llm_requests; DROP FUNCTION refuse_rows();"
                };
                env.pg_client().await.batch_execute(sql).await.unwrap();
            }
        }
    }
}

fn spool_segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "rec2"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// A database that refuses writes for a reason that is not the rows' own
/// dead-letters nothing: the rows wait in the spool, which does not grow a
/// file per replay attempt, and are written once the database takes writes
/// again, each once.
async fn rows_wait_in_the_spool_while_the_database_refuses_writes(refusal: Refusal) {
    let env = TestEnv::new(Backend::Postgres).await;
    let (key_id, key) = env.create_key("refused");
    let mock = MockUpstream::start().await;
    mock.set_recording(false);
    let gw = env.gateway(&mock).start().await;
    let mut ids = load(&gw, &key, 20, 4).await;
    env.wait_rows(ids.len(), Duration::from_secs(15)).await;

    refusal.set(&env, true).await;
    let written_before = ids.len();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        ids.extend(load(&gw, &key, 20, 4).await);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        env.rows().await.len(),
        written_before,
        "a refusing database takes no rows"
    );
    let dead = "majordomo_sink_records_total{outcome=\"dead_lettered\"}";
    assert_eq!(gw.metric(dead).await, Some(0.0), "{}", gw.log());
    // One sealed segment waiting for replay and the active one: a replay
    // attempt every 500 ms does not start a file each.
    let segments = spool_segments(&env.path().join("spool"));
    assert!(
        segments <= 3,
        "{segments} spool segments after 3 s of refusals"
    );

    refusal.set(&env, false).await;
    let rows = env.wait_rows(ids.len(), Duration::from_secs(30)).await;
    assert_exactly(&rows, &ids);
    let info: serde_json::Value =
        serde_json::from_str(&env.cli_ok(&["keys", "get", &key_id, "--json"])).unwrap();
    assert_eq!(
        info["request_count"],
        ids.len(),
        "counters count each row once"
    );
    assert_eq!(gw.metric(dead).await, Some(0.0));
    assert!(!env.path().join("spool/dead-letter.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_wait_in_the_spool_while_the_database_is_read_only() {
    rows_wait_in_the_spool_while_the_database_refuses_writes(Refusal::ReadOnly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_wait_in_the_spool_while_the_database_raises_a_refusal() {
    rows_wait_in_the_spool_while_the_database_refuses_writes(Refusal::RaisedWhileWriting).await;
}

/// Two gateways retrieve one finished background response while the
/// database refuses writes: neither can record that it billed it, so both
/// rows wait in the spool, and the claim is made as each row is written.
/// Once the database takes writes, exactly one row carries the usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_background_response_retrieved_during_a_refusal_is_billed_once_after_it() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (_, key) = env.create_key("refused-claims");
    let mock = MockUpstream::start().await;
    let one = env.gateway(&mock).start().await;
    let two = env.replica(&mock, "two").start().await;
    let finished = finished_background_response("resp_refused");

    Refusal::ReadOnly.set(&env, true).await;
    let mut ids = Vec::new();
    for gw in [&one, &two, &one] {
        let (status, id, _) = finish(retrieve_response(&mock, gw, &key, &finished).await).await;
        assert_eq!(status, 200);
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        env.rows().await.is_empty(),
        "a refusing database takes no rows"
    );

    Refusal::ReadOnly.set(&env, false).await;
    let rows = env.wait_rows(3, Duration::from_secs(30)).await;
    assert_exactly(&rows, &ids);
    let billed: Vec<&LogRow> = rows.iter().filter(|r| r.input_tokens > 0).collect();
    assert_eq!(billed.len(), 1, "billed once: {rows:?}");
    assert_eq!((billed[0].input_tokens, billed[0].output_tokens), (36, 87));
    assert!(billed[0].usage_complete);
    // `one`'s second look is billed already in its own memory.
    assert_ne!(billed[0].id, ids[2]);
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

/// The queue is bounded in bytes too (bodies make records large): past
/// `sink.channel_max_bytes` a record takes the spool's way to the database,
/// as when the queue is full, and arrives all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_past_the_queue_byte_bound_reach_the_database_through_the_spool() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (_, key) = env.create_key("queue-bytes");
    let mock = MockUpstream::start().await;
    mock.set_recording(false);
    // Smaller than any record: every one goes the spool's way.
    let gw = env
        .gateway(&mock)
        .env("MAJORDOMO_SINK_CHANNEL_MAX_BYTES", 1)
        .start()
        .await;
    let ids = load(&gw, &key, 30, 4).await;
    let rows = env.wait_rows(ids.len(), Duration::from_secs(20)).await;
    assert_exactly(&rows, &ids);
    let outcome = |o: &str| format!("majordomo_sink_records_total{{outcome=\"{o}\"}}");
    assert_eq!(gw.metric(&outcome("queued")).await, Some(0.0));
    assert_eq!(gw.metric(&outcome("spooled")).await, Some(30.0));
    assert_eq!(gw.metric(&outcome("replayed")).await, Some(30.0));
    assert_eq!(gw.metric("majordomo_sink_queue_bytes").await, Some(0.0));
}

/// Sets the soft file-size limit of a running process (`prlimit`, util-linux):
/// "1" fails every write that would grow a file, as a full disk does;
/// "unlimited" lifts it.
fn set_file_size_limit(pid: u32, limit: &str) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={limit}:")])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --fsize={limit}");
}

/// Polls a gateway metric until `done` holds for it, up to `timeout`.
async fn wait_metric(
    gw: &GatewayProcess,
    series: &str,
    timeout: Duration,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = gw.metric(series).await.unwrap_or(f64::NAN);
        if done(v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The spool's disk fails (here a file-size limit: every append fails as on
/// a full disk) while the database is away: records wait in memory up to
/// `sink.memory_hold_max_bytes`, those past it are dropped and counted, and
/// once the disk takes writes again the held ones move into the spool, where
/// a `kill -9` no longer loses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_neither_the_spool_nor_the_database_takes_wait_in_memory_up_to_a_bound() {
    const HOLD_MAX_BYTES: f64 = 4000.0;
    let env = TestEnv::new(Backend::Postgres).await;
    let (_, key) = env.create_key("disk-full");
    let relay = TcpRelay::start((PG_HOST, PG_PORT)).await;
    let mock = MockUpstream::start().await;
    mock.set_recording(false);
    let start = |relay: &TcpRelay| {
        let mut gw = env
            .gateway(&mock)
            .env("MAJORDOMO_SINK_MEMORY_HOLD_MAX_BYTES", HOLD_MAX_BYTES);
        for (k, v) in env.via_relay(relay) {
            gw = gw.env(&k, v);
        }
        gw.start()
    };
    let mut gw = start(&relay).await;
    let mut ids = load(&gw, &key, 20, 4).await;
    env.wait_rows(ids.len(), Duration::from_secs(15)).await;

    relay.cut();
    set_file_size_limit(gw.child.id(), "1");
    let sent = 40;
    let during = load(&gw, &key, sent, 4).await;
    let dropped = "majordomo_sink_records_total{outcome=\"dropped\"}";
    let held = "majordomo_sink_held_records";
    let mut accounted = 0.0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        accounted = gw.metric(held).await.unwrap_or(0.0) + gw.metric(dropped).await.unwrap_or(0.0);
        if accounted == sent as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        accounted, sent as f64,
        "every record is held or counted dropped"
    );
    let held_records = gw.metric(held).await.unwrap();
    let held_bytes = gw.metric("majordomo_sink_held_bytes").await.unwrap();
    assert!(
        held_records >= 3.0 && held_bytes <= HOLD_MAX_BYTES,
        "{held_records} records, {held_bytes} bytes held"
    );
    assert!(
        gw.metric(dropped).await.unwrap() > 0.0,
        "the hold is bounded"
    );
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "a file-size limit does not end the process"
    );

    // The disk takes writes again: the held records move into the spool
    // while the database is still away.
    let spooled = "majordomo_sink_records_total{outcome=\"spooled\"}";
    let spooled_before = gw.metric(spooled).await.unwrap();
    set_file_size_limit(gw.child.id(), "unlimited");
    let left = wait_metric(&gw, held, Duration::from_secs(10), |v| v == 0.0).await;
    assert_eq!(left, 0.0, "held records move into the spool");
    assert_eq!(
        gw.metric(spooled).await.unwrap() - spooled_before,
        held_records
    );
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();

    relay.restore();
    let gw2 = start(&relay).await;
    let want = ids.len() + held_records as usize;
    let rows = env.wait_rows(want, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows = if rows.len() == want {
        env.rows().await
    } else {
        rows
    };
    ids.extend(during);
    let sent_ids: HashSet<&str> = ids.iter().map(|s| s.as_str()).collect();
    let unique: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(unique.len(), rows.len(), "duplicate rows");
    assert_eq!(rows.len(), want, "the rows before, and every held one");
    assert!(unique.is_subset(&sent_ids));
    assert_eq!(gw2.metric(dropped).await, Some(0.0));
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
    let status = status.expect("the gateway exits after its grace period");
    assert!(status.success(), "{status}");
    // The access log's writer thread was flushed before the process ended.
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains(&id) && l.contains(" 200 ")),
        "no access line for {id}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_stop_writes_the_batch_still_being_collected() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (_, key) = env.create_key("window");
    let mock = MockUpstream::start().await;
    let mut gw = env
        .gateway(&mock)
        // A batch window that never ends by itself within the test.
        .env("MAJORDOMO_SINK_BATCH_TIMEOUT_MS", 600_000)
        .env("MAJORDOMO_SERVER_GRACE_PERIOD_SECS", 3)
        .env("MAJORDOMO_SERVER_GRACEFUL_SHUTDOWN_TIMEOUT_SECS", 2)
        .start()
        .await;
    let mut ids = HashSet::new();
    for _ in 0..5 {
        let r = gw
            .post_chat(&key, &json!({"model": "gpt-4o", "messages": []}))
            .await;
        assert_eq!(r.status(), 200);
        ids.insert(
            r.headers()["x-majordomo-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        r.bytes().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.rows().await.is_empty(), "still in the batch window");
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some(), "the gateway exits after its grace period");
    // Written before the process ended, not left in the spool for a next start.
    let rows: HashSet<String> = env
        .rows()
        .await
        .into_iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(rows, ids);
}

fn record(key: Option<uuid::Uuid>, model: &str) -> majordomo::store::RequestRecord {
    let now = chrono::Utc::now();
    majordomo::store::RequestRecord {
        id: uuid::Uuid::now_v7(),
        api_key_id: key,
        provider: "openai".into(),
        model: model.into(),
        request_path: "/v1/chat/completions".into(),
        request_method: "POST".into(),
        requested_at: now,
        responded_at: now,
        response_time_ms: 5,
        time_to_first_byte_ms: Some(3),
        input_tokens: 10,
        output_tokens: 2,
        usage_complete: true,
        status_code: 200,
        ..Default::default()
    }
}

/// Writes `records` to a spool segment and drops the writer without any
/// acknowledgement: what a crashed process leaves.
fn spool_left_by_a_crash(dir: &std::path::Path, records: &[&majordomo::store::RequestRecord]) {
    let w = majordomo::sink::spool::SpoolWriter::open(dir, 1 << 20, true).unwrap();
    let mut buf = Vec::new();
    for r in records {
        majordomo::sink::spool::encode(r, &mut buf).unwrap();
        w.append(&buf).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_without_blocking_the_rest() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (key_id, key) = env.create_key("poison");
    let key_uuid = uuid::Uuid::parse_str(&key_id).unwrap();
    // A spool left by an earlier process: two good records around one the
    // database must refuse (its API key does not exist: a foreign-key violation).
    let spool_dir = env.path().join("spool");
    let good_a = record(Some(key_uuid), "gpt-4o");
    let poison = record(Some(uuid::Uuid::now_v7()), "gpt-4o");
    let good_b = record(Some(key_uuid), "gpt-4o");
    // NUL in an upstream's error message and in a stored body: PostgreSQL
    // text cannot hold it, and it must not make the row unwritable.
    let mut nul_text = record(Some(key_uuid), "gpt-4o");
    nul_text.status_code = 400;
    nul_text.error_message = Some("The model `bad\u{0}model` does not exist".into());
    nul_text.request_body = Some("{\"model\":\"bad\u{0}model\"}".into());
    spool_left_by_a_crash(&spool_dir, &[&good_a, &poison, &good_b, &nul_text]);
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    // A model name with a NUL byte (PostgreSQL text cannot hold it) still gets its row.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("X-Majordomo-Key", &key)
        .header("Content-Type", "application/json")
        .body(r#"{"model": "bad\u0000model", "messages": []}"#)
        .send()
        .await
        .unwrap();
    let (_, nul_id, _) = finish(r).await;

    let rows = env.wait_rows(4, Duration::from_secs(15)).await;
    let ids: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    assert!(ids.contains(&good_a.id.to_string()) && ids.contains(&good_b.id.to_string()));
    assert!(!ids.contains(&poison.id.to_string()));
    let nul_row = env.row(&nul_text.id.to_string()).await;
    assert_eq!(
        nul_row.error_message.as_deref(),
        Some("The model `bad\u{fffd}model` does not exist")
    );
    let nul_row = env.row(&nul_id).await;
    assert_eq!(nul_row.model, "bad\u{fffd}model");
    let dead = std::fs::read_to_string(spool_dir.join("dead-letter.jsonl")).unwrap();
    assert!(dead.contains(&poison.id.to_string()), "{dead}");
    assert_eq!(
        gw.metric("majordomo_sink_records_total{outcome=\"dead_lettered\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        gw.metric("majordomo_sink_records_total{outcome=\"dropped\"}")
            .await,
        Some(0.0)
    );
    // The replayed segment is gone; only this process's live segment remains.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let segments = std::fs::read_dir(&spool_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "rec2")
        })
        .count();
    assert!(segments <= 1, "{segments} segments left");
}

/// A record the database refuses whole while the dead-letter file cannot be
/// written (here a directory stands in its place, as a full or read-only
/// disk would refuse it) stays in the spool: it is neither counted as
/// dead-lettered nor lost, and goes to the file once it can be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_stays_in_the_spool_while_the_dead_letter_file_cannot_be_written() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (key_id, key) = env.create_key("poison-kept");
    let key_uuid = uuid::Uuid::parse_str(&key_id).unwrap();
    let spool_dir = env.path().join("spool");
    let good = record(Some(key_uuid), "gpt-4o");
    let poison = record(Some(uuid::Uuid::now_v7()), "gpt-4o");
    let good_after = record(Some(key_uuid), "gpt-4o");
    spool_left_by_a_crash(&spool_dir, &[&good, &poison, &good_after]);
    let crashed: Vec<_> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rec2"))
        .collect();
    assert_eq!(crashed.len(), 1);
    let dead_letter = spool_dir.join("dead-letter.jsonl");
    std::fs::create_dir(&dead_letter).unwrap();

    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let dead = "majordomo_sink_records_total{outcome=\"dead_lettered\"}";
    // Several replays (every 500 ms) meet the same refusal.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gw.metric(dead).await, Some(0.0), "{}", gw.log());
    assert!(
        crashed[0].exists(),
        "the segment holding the record was removed"
    );
    // The database is up: the kept record holds back neither its
    // neighbours nor the traffic logged meanwhile.
    let live = load(&gw, &key, 10, 2).await;
    let rows = env.wait_rows(12, Duration::from_secs(10)).await;
    let ids: HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    assert!(ids.contains(&good.id.to_string()) && ids.contains(&good_after.id.to_string()));
    assert!(live.iter().all(|id| ids.contains(id)), "{}", gw.log());
    assert_eq!(rows.len(), 12);

    std::fs::remove_dir(&dead_letter).unwrap();
    let dead_lettered = wait_metric(&gw, dead, Duration::from_secs(15), |v| v == 1.0).await;
    assert_eq!(dead_lettered, 1.0, "not dead-lettered:\n{}", gw.log());
    let lines = std::fs::read_to_string(&dead_letter).unwrap();
    assert!(lines.contains(&poison.id.to_string()), "{lines}");
    let rows = env.rows().await;
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| r.id != poison.id.to_string()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!crashed[0].exists(), "the replayed segment is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_spool_left_by_an_earlier_build_is_written_after_an_upgrade() {
    let env = TestEnv::new(Backend::Postgres).await;
    let (key_id, _) = env.create_key("json-spool");
    let key_uuid = uuid::Uuid::parse_str(&key_id).unwrap();
    // A segment as builds before the binary spool left it: a `.seg` file of
    // [len][crc32][JSON document] records. The document is serde's form of
    // the record, which those builds' hand-written encoder matched field for
    // field (the unit test `a_json_segment_from_an_earlier_version_still_replays`
    // reads a segment that encoder wrote).
    let spool_dir = env.path().join("spool");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let mut records: Vec<_> = (0..40)
        .map(|i| record(Some(key_uuid), &format!("gpt-4o-{i}")))
        .collect();
    records[7].error_message = Some("upstream said \"no\"\n".into());
    records[9].time_to_first_byte_ms = None;
    let mut segment = Vec::new();
    for r in &records {
        let doc = serde_json::to_vec(r).unwrap();
        segment.extend_from_slice(&(doc.len() as u32).to_le_bytes());
        segment.extend_from_slice(&crc32fast::hash(&doc).to_le_bytes());
        segment.extend_from_slice(&doc);
    }
    let old = spool_dir.join("0000000000000001-4242-000001.seg");
    std::fs::write(&old, &segment).unwrap();

    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    let rows = env.wait_rows(records.len(), Duration::from_secs(15)).await;
    assert_eq!(rows.len(), records.len());
    for r in &records {
        let row = env.row(&r.id.to_string()).await;
        assert_eq!(row.model, r.model);
        assert_eq!(row.api_key_id.as_deref(), Some(key_id.as_str()));
        assert_eq!(row.error_message, r.error_message);
        assert_eq!(
            row.time_to_first_byte_ms,
            r.time_to_first_byte_ms.map(i64::from)
        );
        assert_eq!((row.input_tokens, row.output_tokens), (10, 2));
    }
    // Written in full, the old segment is removed; nothing was refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while old.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the .seg segment stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!spool_dir.join("dead-letter.jsonl").exists());
    assert_eq!(
        gw.metric("majordomo_sink_records_total{outcome=\"replayed\"}")
            .await,
        Some(records.len() as f64)
    );
}
