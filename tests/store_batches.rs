//! The store's batch write, on both backends: a batch holding rows that are
//! already stored (a spool replay after a crash between commit and
//! acknowledgement) writes only the new rows, and the key counters,
//! metadata statistics and `indexed_metadata` count each row once. On
//! PostgreSQL this is the fallback from the direct `COPY` to the staging
//! table, taken only when the `COPY` hits the primary key.

mod common;

use std::sync::Arc;

use chrono::Utc;
use common::*;
use majordomo::config::{PostgresConfig, StorageConfig, StorageDriver};
use majordomo::store::{NewKey, RequestRecord, Store};
use rust_decimal::Decimal;
use uuid::Uuid;

fn storage(env: &TestEnv) -> StorageConfig {
    let mut s = StorageConfig::default();
    match &env.pg_database {
        None => {
            s.driver = Some(StorageDriver::Sqlite);
            s.sqlite.path = env.sqlite_path();
        }
        Some(db) => {
            s.driver = Some(StorageDriver::Postgres);
            s.postgres = PostgresConfig {
                host: Some("127.0.0.1".into()),
                port: 5432,
                user: "postgres".into(),
                database: db.clone(),
                ..PostgresConfig::default()
            };
        }
    }
    s
}

fn record(key: Uuid, user: &str) -> RequestRecord {
    let now = Utc::now();
    let mut meta = serde_json::Map::new();
    meta.insert("team".into(), "search".into());
    meta.insert("user-id".into(), user.into());
    RequestRecord {
        id: Uuid::now_v7(),
        api_key_id: Some(key),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        request_path: "/v1/chat/completions".into(),
        request_method: "POST".into(),
        requested_at: now,
        responded_at: now,
        response_time_ms: 12,
        time_to_first_byte_ms: Some(5),
        input_tokens: 10,
        output_tokens: 20,
        input_cost: Decimal::new(25, 6),
        output_cost: Decimal::new(200, 6),
        total_cost: Decimal::new(225, 6),
        price_found: true,
        usage_complete: true,
        status_code: 200,
        raw_metadata: Some(meta),
        ..Default::default()
    }
}

/// `indexed_metadata` of every row, as JSON text sorted by row id.
async fn indexed_metadata(env: &TestEnv) -> Vec<serde_json::Value> {
    match env.backend {
        Backend::Postgres => env
            .pg_client()
            .await
            .query(
                "SELECT indexed_metadata::text FROM llm_requests ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
            .collect(),
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(env.sqlite_path()).unwrap();
            let mut stmt = c
                .prepare("SELECT indexed_metadata FROM llm_requests ORDER BY id")
                .unwrap();
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(|t| serde_json::from_str(&t.unwrap()).unwrap())
                .collect();
            rows
        }
    }
}

/// The test's store, migrated, and a key named `name` in it.
async fn migrated_store_with_key(env: &TestEnv, name: &str) -> (Store, Uuid) {
    let store = Store::open(&storage(env)).unwrap();
    store.migrate().await.unwrap();
    let key = store
        .create_key(NewKey {
            name,
            description: None,
            key_hash: &majordomo::keys::hash_hex(&format!("mdm_sk_store_{name}_test")),
            key_hint: "mdm_sk_…test",
        })
        .await
        .unwrap()
        .id;
    (store, key)
}

async fn a_replayed_batch_writes_and_counts_only_new_rows(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (store, key) = migrated_store_with_key(&env, "batches").await;
    assert!(store.set_metadata_active(key, "team", true).await.unwrap());

    let first: Vec<RequestRecord> = (0..3).map(|i| record(key, &format!("u{i}"))).collect();
    assert_eq!(
        store
            .insert_requests(Arc::new(first.clone()))
            .await
            .unwrap(),
        3
    );

    // Two of the first batch again, with two new ones.
    let mut second: Vec<RequestRecord> = first[1..].to_vec();
    second.push(record(key, "u3"));
    second.push(record(key, "u4"));
    assert_eq!(
        store
            .insert_requests(Arc::new(second.clone()))
            .await
            .unwrap(),
        2
    );
    // All of it again: nothing new.
    assert_eq!(store.insert_requests(Arc::new(second)).await.unwrap(), 0);
    // A new record twice in one batch, beside a stored one: written and counted once.
    let sixth = record(key, "u5");
    let third = vec![sixth.clone(), sixth, first[0].clone()];
    assert_eq!(store.insert_requests(Arc::new(third)).await.unwrap(), 1);

    let rows = env.rows().await;
    assert_eq!(rows.len(), 6, "each row once");
    let stored = store.get_key(key).await.unwrap().unwrap();
    assert_eq!(stored.request_count, 6, "the key counts each row once");
    let stats = store.list_metadata_keys(Some(key)).await.unwrap();
    let count = |name: &str| {
        stats
            .iter()
            .find(|m| m.key_name == name)
            .unwrap_or_else(|| panic!("no stats for {name}: {stats:?}"))
    };
    assert_eq!(count("team").request_count, 6);
    assert_eq!(count("user-id").request_count, 6);
    assert_eq!(count("user-id").approx_cardinality, 6, "u0..u5");
    assert_eq!(count("team").approx_cardinality, 1);
    // Only the active name is indexed, on the rows of either path.
    for indexed in indexed_metadata(&env).await {
        assert_eq!(indexed, serde_json::json!({"team": "search"}));
    }
}

/// A row that carries a background response's usage, claiming it.
fn billing(key: Uuid, response: &str) -> RequestRecord {
    RequestRecord {
        billed_response: Some(response.into()),
        ..record(key, "poller")
    }
}

/// (input tokens, total cost, usage complete) of each of `records`' rows.
async fn billed(env: &TestEnv, records: &[&RequestRecord]) -> Vec<(i64, Decimal, bool)> {
    let rows = env.rows().await;
    records
        .iter()
        .map(|r| {
            let row = rows
                .iter()
                .find(|row| row.id == r.id.to_string())
                .unwrap_or_else(|| panic!("no row {}", r.id));
            (row.input_tokens, row.total_cost, row.usage_complete)
        })
        .collect()
}

/// Makes the database refuse any row whose model is `poison`.
async fn poison_rows(env: &TestEnv) {
    match env.backend {
        Backend::Postgres => env
            .pg_client()
            .await
            .batch_execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF NEW.model = 'poison' THEN RAISE EXCEPTION 'poison row'; END IF;
                   RETURN NEW;
                 END $$;
                 CREATE TRIGGER refuse_poison BEFORE INSERT ON llm_requests
                 FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
            )
            .await
            .unwrap(),
        Backend::Sqlite => rusqlite::Connection::open(env.sqlite_path())
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON llm_requests
                 WHEN NEW.model = 'poison' BEGIN SELECT RAISE(ABORT, 'poison row'); END;",
            )
            .unwrap(),
    }
}

const BILLED: (i64, Decimal, bool) = (10, Decimal::from_parts(225, 0, 0, false, 6), true);
const UNBILLED: (i64, Decimal, bool) = (0, Decimal::ZERO, false);

/// Each background response's usage is kept on exactly one row: the first
/// written that claims it, in its batch's transaction. Later rows, in the
/// same batch or any later one, of any store handle (another process), are
/// written unbilled; a replay of the winning row's batch keeps it billed,
/// and a batch rolled back (here: by its `COPY` hitting a stored id, on
/// PostgreSQL) claims nothing until it is written.
async fn a_background_response_is_billed_by_the_first_row_written_that_claims_it(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (store, key) = migrated_store_with_key(&env, "claims").await;

    // Two rows of one batch claim resp_1: one keeps the usage.
    let (a, b, c, d) = (
        billing(key, "resp_1"),
        billing(key, "resp_1"),
        billing(key, "resp_2"),
        record(key, "plain"),
    );
    let first = vec![a.clone(), b.clone(), c.clone(), d.clone()];
    assert_eq!(
        store
            .insert_requests(Arc::new(first.clone()))
            .await
            .unwrap(),
        4
    );
    let mut got = billed(&env, &[&a, &b]).await;
    got.sort();
    assert_eq!(got, [UNBILLED, BILLED], "resp_1 billed once");
    assert_eq!(billed(&env, &[&c, &d]).await, [BILLED, BILLED]);
    let winner = if billed(&env, &[&a]).await[0] == BILLED {
        &a
    } else {
        &b
    };

    // Another process's store handle: resp_1 is held, resp_3 is new.
    let other = Store::open(&storage(&env)).unwrap();
    let (e, f) = (billing(key, "resp_1"), billing(key, "resp_3"));
    assert_eq!(
        other
            .insert_requests(Arc::new(vec![e.clone(), f.clone()]))
            .await
            .unwrap(),
        2
    );
    assert_eq!(billed(&env, &[&e, &f]).await, [UNBILLED, BILLED]);

    // The first batch replayed (a crash between commit and acknowledgement):
    // nothing new, and its winner is still the one billed.
    assert_eq!(store.insert_requests(Arc::new(first)).await.unwrap(), 0);
    assert_eq!(billed(&env, &[winner]).await, [BILLED]);

    // A replay holding a stored row beside new ones claiming resp_4 (new)
    // and resp_2 (held): on PostgreSQL the `COPY` fails on the stored id and
    // its transaction, claims included, is rolled back before the batch is
    // written the other way.
    let (g, h) = (billing(key, "resp_4"), billing(key, "resp_2"));
    let mixed = vec![c.clone(), g.clone(), h.clone()];
    assert_eq!(store.insert_requests(Arc::new(mixed)).await.unwrap(), 2);
    assert_eq!(
        billed(&env, &[&c, &g, &h]).await,
        [BILLED, BILLED, UNBILLED]
    );

    // A batch the database refuses after its claims (a row a trigger
    // rejects) claims nothing: a later row claiming the same response bills it.
    poison_rows(&env).await;
    let (i, mut poison) = (billing(key, "resp_5"), record(key, "poison"));
    poison.model = "poison".into();
    assert!(store
        .insert_requests(Arc::new(vec![i.clone(), poison]))
        .await
        .is_err());
    let j = billing(key, "resp_5");
    assert_eq!(
        store
            .insert_requests(Arc::new(vec![j.clone()]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(billed(&env, &[&j]).await, [BILLED]);

    // An id the store cannot hold (a NUL, which PostgreSQL refuses in text)
    // is not claimed: its row goes in, with its usage.
    let odd = billing(key, "resp_\0");
    assert_eq!(
        store
            .insert_requests(Arc::new(vec![odd.clone()]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(billed(&env, &[&odd]).await, [BILLED]);

    // Two handles writing batches that claim the same responses in opposite
    // orders, at once: each response billed once, no deadlock.
    let ids: Vec<String> = (0..20).map(|i| format!("resp_race_{i}")).collect();
    let one: Vec<RequestRecord> = ids.iter().map(|id| billing(key, id)).collect();
    let two: Vec<RequestRecord> = ids.iter().rev().map(|id| billing(key, id)).collect();
    let (x, y) = tokio::join!(
        store.insert_requests(Arc::new(one.clone())),
        other.insert_requests(Arc::new(two.clone())),
    );
    assert_eq!((x.unwrap(), y.unwrap()), (20, 20));
    for id in &ids {
        let pair: Vec<&RequestRecord> = one
            .iter()
            .chain(&two)
            .filter(|r| r.billed_response.as_deref() == Some(id))
            .collect();
        let mut got = billed(&env, &pair).await;
        got.sort();
        assert_eq!(got, [UNBILLED, BILLED], "{id} billed once");
    }
}

/// Backdates the claim of `response` by `days`.
async fn age_claim(env: &TestEnv, response: &str, days: i64) {
    let at = Utc::now() - chrono::TimeDelta::days(days);
    match env.backend {
        Backend::Postgres => {
            let n = env
                .pg_client()
                .await
                .execute(
                    "UPDATE majordomo_billed_responses SET billed_at = $2 WHERE response_id = $1",
                    &[&response, &at],
                )
                .await
                .unwrap();
            assert_eq!(n, 1);
        }
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(env.sqlite_path()).unwrap();
            let n = c
                .execute(
                    "UPDATE majordomo_billed_responses SET billed_at = ?2 WHERE response_id = ?1",
                    [
                        response,
                        &at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    ],
                )
                .unwrap();
            assert_eq!(n, 1);
        }
    }
}

/// Claims older than `BILLED_RESPONSES_KEPT` are deleted (the sink does it
/// hourly); younger ones stay and still hold their responses.
async fn claims_past_their_keeping_time_are_forgotten(backend: Backend) {
    let env = TestEnv::new(backend).await;
    let (store, key) = migrated_store_with_key(&env, "forgotten").await;
    let (old, young) = (billing(key, "resp_old"), billing(key, "resp_young"));
    store
        .insert_requests(Arc::new(vec![old, young]))
        .await
        .unwrap();
    age_claim(&env, "resp_old", 46).await;
    age_claim(&env, "resp_young", 44).await;
    let before = Utc::now() - majordomo::store::BILLED_RESPONSES_KEPT;
    assert_eq!(store.forget_billed_responses(before).await.unwrap(), 1);
    assert_eq!(store.forget_billed_responses(before).await.unwrap(), 0);

    let (again_old, again_young) = (billing(key, "resp_old"), billing(key, "resp_young"));
    store
        .insert_requests(Arc::new(vec![again_old.clone(), again_young.clone()]))
        .await
        .unwrap();
    assert_eq!(
        billed(&env, &[&again_old, &again_young]).await,
        [BILLED, UNBILLED]
    );
}

both_stores!(
    a_replayed_batch_writes_and_counts_only_new_rows,
    a_background_response_is_billed_by_the_first_row_written_that_claims_it,
    claims_past_their_keeping_time_are_forgotten,
);
