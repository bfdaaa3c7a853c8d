//! Sink throughput: request-log rows per second into PostgreSQL through the
//! store's batch path (`Store::insert_requests`: one binary COPY straight into
//! `llm_requests` plus the keys' counters and metadata statistics, in one
//! transaction) — what each of the sink's `sink.writers` (2) concurrent
//! writers calls for every batch of `sink.batch_max_events` (2000) records.
//!
//! ```sh
//! cargo bench --bench sink_throughput                 # PostgreSQL on 127.0.0.1:5432, user postgres
//! ROWS=200000 BATCH=1000 WRITERS="1 2 4" cargo bench --bench sink_throughput
//! ```
//! Environment: `PGHOST` (127.0.0.1), `PGPORT` (5432), `PGUSER` (postgres),
//! `PGPASSWORD`, `ROWS` per measured pass (100 000), `BATCH` (2000, the sink's default),
//! `WRITERS` (concurrent batch writers per pass, "1 2": the sink's default
//! `sink.writers` is 2, so `2` is the number that matters).
//! A throwaway database `mdm_sink_bench_<pid>` is created and dropped.
//! Prints a Markdown table; exits non-zero if the target (100 000 rows/s
//! with the sink's default 2 writers) is missed, or if the row count in the table is not the
//! number of rows written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use majordomo::config::{PostgresConfig, StorageConfig, StorageDriver};
use majordomo::store::{NewKey, RequestRecord, Store};
use rust_decimal::Decimal;
use uuid::Uuid;

const TARGET_ROWS_PER_S: f64 = 100_000.0;
/// `sink.writers` by default.
const SINK_WRITERS: usize = 2;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A row like the gateway writes for an OpenAI chat completion with one
/// metadata header; ids are fresh UUIDv7s (time-ordered, as in production).
fn record(key: Uuid, i: usize) -> RequestRecord {
    let now = Utc::now();
    let mut meta = serde_json::Map::new();
    meta.insert("feature".into(), serde_json::Value::String("bench".into()));
    meta.insert(
        "user-id".into(),
        serde_json::Value::String(format!("user-{}", i % 50)),
    );
    RequestRecord {
        id: Uuid::now_v7(),
        api_key_id: Some(key),
        provider_api_key_hash: Some(
            "3b2b6d6f0f2a5d1c3d0bd7c8e3f1d40b8f2c5a6e9b7d4c1a0f9e8d7c6b5a4f3e".into(),
        ),
        provider: "openai".into(),
        model: "gpt-4o-2024-08-06".into(),
        request_path: "/v1/chat/completions".into(),
        request_method: "POST".into(),
        requested_at: now,
        responded_at: now,
        response_time_ms: 412,
        time_to_first_byte_ms: Some(180),
        input_tokens: 1026,
        output_tokens: 219,
        cached_tokens: 512,
        cache_creation_tokens: 0,
        reasoning_tokens: 0,
        input_cost: Decimal::new(1925, 6),
        output_cost: Decimal::new(2190, 6),
        total_cost: Decimal::new(4115, 6),
        price_found: true,
        usage_complete: true,
        status_code: 200,
        error_message: None,
        raw_metadata: Some(meta),
        request_body: None,
        response_body: None,
        body_s3_key: None,
        billed_response: None,
    }
}

fn pg(database: &str) -> StorageConfig {
    let pg = PostgresConfig {
        host: Some(std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into())),
        port: env_or("PGPORT", 5432u16),
        user: std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()),
        password: std::env::var("PGPASSWORD").ok(),
        database: database.into(),
        max_conns: 8,
        ..Default::default()
    };
    StorageConfig {
        driver: Some(StorageDriver::Postgres),
        postgres: pg,
        ..Default::default()
    }
}

/// A plain connection to `database` (the admin work and the final count).
async fn connect(
    database: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), String> {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&host)
        .port(env_or("PGPORT", 5432u16))
        .user(&user)
        .dbname(database);
    if let Ok(p) = std::env::var("PGPASSWORD") {
        cfg.password(p);
    }
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to PostgreSQL at {host}: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, task))
}

/// Runs SQL on the `postgres` maintenance database (create / drop).
async fn admin(sql: &str) -> Result<(), String> {
    let (client, task) = connect("postgres").await?;
    client
        .batch_execute(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    drop(client);
    let _ = task.await;
    Ok(())
}

struct Pass {
    writers: usize,
    rows: usize,
    elapsed: Duration,
    batch_ms: Vec<f64>,
}

async fn pass(store: &Store, key: Uuid, rows: usize, batch: usize, writers: usize) -> Pass {
    // Build every batch first: the measurement is the store's, not the record builder's.
    let batches: Vec<Arc<Vec<RequestRecord>>> = (0..rows.div_ceil(batch))
        .map(|b| {
            let n = batch.min(rows - b * batch);
            Arc::new((0..n).map(|i| record(key, b * batch + i)).collect())
        })
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(batches));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let queue = queue.clone();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let next = queue.lock().unwrap().pop();
                let Some(b) = next else { break };
                let n = b.len() as u64;
                let t = Instant::now();
                let written = store
                    .insert_requests(b)
                    .await
                    .expect("insert_requests failed");
                assert_eq!(written, n, "rows written by one batch");
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times
        }));
    }
    let mut batch_ms = Vec::new();
    for t in tasks {
        batch_ms.extend(t.await.expect("writer task"));
    }
    Pass {
        writers,
        rows,
        elapsed: started.elapsed(),
        batch_ms,
    }
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

async fn run(db: &str) -> Result<bool, String> {
    let rows: usize = env_or("ROWS", 100_000);
    let batch: usize = env_or("BATCH", 2000);
    let writers: Vec<usize> = std::env::var("WRITERS")
        .unwrap_or_else(|_| "1 2".into())
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let store = Store::open(&pg(db)).map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let key = store
        .create_key(NewKey {
            name: "sink-bench",
            description: None,
            key_hash: &majordomo::keys::hash_hex("mdm_sk_sink_bench"),
            key_hint: "mdm_sk_…ench",
        })
        .await
        .map_err(|e| e.to_string())?
        .id;

    // Warm-up: connections, the staging table, plans.
    pass(&store, key, 5 * batch, batch, 1).await;

    println!("| writers | rows | batch | seconds | rows/s | batch p50 ms | batch p99 ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut ok = true;
    let mut total = 5 * batch;
    for &w in &writers {
        let mut p = pass(&store, key, rows, batch, w).await;
        total += p.rows;
        let rps = p.rows as f64 / p.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.1} |",
            p.writers,
            p.rows,
            batch,
            p.elapsed.as_secs_f64(),
            rps,
            pct(&mut p.batch_ms, 0.5),
            pct(&mut p.batch_ms, 0.99)
        );
        if w == SINK_WRITERS && rps < TARGET_ROWS_PER_S {
            ok = false;
        }
    }
    // Every row is there, once; the key's counter agrees.
    let counted = {
        let (client, task) = connect(db).await?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM llm_requests", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let k: i64 = client
            .query_one("SELECT request_count FROM api_keys WHERE id = $1", &[&key])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        drop(client);
        let _ = task.await;
        (n, k)
    };
    let rows_ok = counted.0 == total as i64 && counted.1 == total as i64;
    println!();
    println!(
        "rows in llm_requests: {} (expected {total}), api_keys.request_count: {} -> {}",
        counted.0,
        counted.1,
        if rows_ok { "PASS" } else { "FAIL" }
    );
    println!(
        "target >= {:.0} rows/s with {} writers (the sink's default): {}",
        TARGET_ROWS_PER_S,
        SINK_WRITERS,
        if ok { "PASS" } else { "MISSED" }
    );
    Ok(ok && rows_ok)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass other flags: only run for `--bench`.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") && std::env::var("SINK_BENCH_FORCE").is_err() {
        println!(
            "sink_throughput: run with `cargo bench --bench sink_throughput` (needs PostgreSQL)"
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let db = format!("mdm_sink_bench_{}", std::process::id());
    let result = rt.block_on(async {
        admin(&format!("CREATE DATABASE {db}")).await?;
        let r = run(&db).await;
        let dropped = admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        if let Err(e) = dropped {
            eprintln!("warning: {e}");
        }
        r
    });
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("sink_throughput: {e}");
            std::process::exit(2);
        }
    }
}
