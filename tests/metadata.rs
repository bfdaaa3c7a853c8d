//! Issue 4: metadata statistics per API key (counts, last seen, approximate
//! distinct values that merge across replicas) and indexing of chosen keys.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn send(gw: &GatewayProcess, key: &str, user: &str) -> String {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("X-Majordomo-Key", key)
        .header("X-Majordomo-User-Id", user)
        .header("X-Majordomo-Feature", "chat")
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, id, _) = finish(r).await;
    id
}

fn stats(env: &TestEnv, key_id: &str) -> Vec<Value> {
    let out = env.cli_ok(&["metadata", "list", "--key", key_id, "--json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn stat<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["key_name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {rows:?}"))
}

async fn indexed_metadata(env: &TestEnv, id: &str) -> Value {
    let text: Option<String> = match env.backend {
        Backend::Postgres => env
            .pg_client()
            .await
            .query_one(
                "SELECT indexed_metadata::text FROM llm_requests WHERE id::text = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0),
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(env.sqlite_path()).unwrap();
            c.query_row(
                "SELECT indexed_metadata FROM llm_requests WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        }
    };
    serde_json::from_str(&text.unwrap_or_else(|| "{}".into())).unwrap()
}

async fn metadata_keys_are_counted_per_api_key_and_chosen_ones_indexed(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (key_id, key) = env.create_key("meta");
    let mock = MockUpstream::start().await;
    let gw = env.gateway(&mock).start().await;
    for user in ["u1", "u2", "u3", "u1", "u2"] {
        send(&gw, &key, user).await;
    }
    env.wait_rows(5, Duration::from_secs(10)).await;
    let rows = stats(&env, &key_id);
    assert_eq!(stat(&rows, "user-id")["request_count"], 5);
    assert_eq!(stat(&rows, "user-id")["approx_cardinality"], 3);
    assert_eq!(stat(&rows, "feature")["approx_cardinality"], 1);
    assert_eq!(stat(&rows, "user-id")["is_active"], false);
    assert!(stat(&rows, "user-id")["last_seen_at"].is_string());

    let id = send(&gw, &key, "u9").await;
    env.row(&id).await;
    assert_eq!(indexed_metadata(&env, &id).await, json!({}));

    env.cli_ok(&["metadata", "activate", &key_id, "User-Id"]);
    let id = send(&gw, &key, "u7").await;
    env.row(&id).await;
    assert_eq!(indexed_metadata(&env, &id).await, json!({"user-id": "u7"}));
    assert_eq!(stat(&stats(&env, &key_id), "user-id")["is_active"], true);

    env.cli_ok(&["metadata", "deactivate", &key_id, "user-id"]);
    let id = send(&gw, &key, "u8").await;
    env.row(&id).await;
    assert_eq!(indexed_metadata(&env, &id).await, json!({}));

    // The header's full name is the same name.
    env.cli_ok(&["metadata", "activate", &key_id, "X-Majordomo-User-Id"]);
    let id = send(&gw, &key, "u6").await;
    env.row(&id).await;
    assert_eq!(indexed_metadata(&env, &id).await, json!({"user-id": "u6"}));
    env.cli_ok(&["metadata", "deactivate", &key_id, "X-MAJORDOMO-USER-ID"]);
    assert_eq!(stat(&stats(&env, &key_id), "user-id")["is_active"], false);

    let out = env.cli(&[
        "metadata",
        "activate",
        &uuid::Uuid::now_v7().to_string(),
        "x",
    ]);
    assert!(!out.status.success());
}

async fn distinct_counts_merge_across_replicas(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (key_id, key) = env.create_key("replicas");
    let mock = MockUpstream::start().await;
    let a = env.gateway(&mock).start().await;
    let b = env.gateway(&mock).start().await;
    for i in 0..40 {
        // Both replicas see u0..u29; a also sees 10 of its own.
        send(&a, &key, &format!("u{}", i % 30)).await;
        send(&b, &key, &format!("u{}", (i + 7) % 30)).await;
    }
    for i in 0..10 {
        send(&a, &key, &format!("only-a-{i}")).await;
    }
    env.wait_rows(90, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = stats(&env, &key_id);
    assert_eq!(stat(&rows, "user-id")["request_count"], 90);
    let distinct = stat(&rows, "user-id")["approx_cardinality"]
        .as_i64()
        .unwrap();
    assert!(
        (38..=42).contains(&distinct),
        "~40 distinct users, got {distinct}"
    );
}

both_stores!(
    metadata_keys_are_counted_per_api_key_and_chosen_ones_indexed,
    distinct_counts_merge_across_replicas,
);
