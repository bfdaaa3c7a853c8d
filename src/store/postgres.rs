//! The PostgreSQL backend: a deadpool of tokio-postgres connections; request
//! records go in with binary `COPY` into a per-session staging table, then one
//! `INSERT … ON CONFLICT (id) DO NOTHING` that also adds the newly written rows
//! to their keys' counters, all in one transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::{pin_mut, SinkExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use uuid::Uuid;

use super::migrations::{LEDGER_TABLE, MIGRATIONS};
use super::pg_copy::{self, Unencodable, COPY_COLUMNS};
use super::{ApiKey, MetadataKey, NewKey, RequestRecord, StoreError};
use crate::config::PostgresConfig;

/// The channel on which revocations are announced to every replica.
pub const KEYS_CHANNEL: &str = "majordomo_keys";

pub struct PgStore {
    pool: Pool,
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No SQLSTATE: I/O, a closed connection, the database being away.
        return StoreError::Unavailable(e.to_string());
    };
    // The server's own words ("db error" alone names nothing). Not its
    // DETAIL, which can quote a whole row, bodies included.
    let why = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    match db.code().code().get(..2) {
        // Data exception, integrity constraint violation, program limit
        // exceeded (a value too large for an index): the row's own fault.
        Some("22" | "23" | "54") => StoreError::Rejected(why),
        // Connection exception, transaction rollback (deadlock, serialization
        // failure), insufficient resources, object in use or lock timeout,
        // operator intervention (shutdown), system error: retry.
        Some("08" | "40" | "53" | "55" | "57" | "58") => StoreError::Unavailable(why),
        // Read-only transaction (a standby after a failover), permissions,
        // authentication, a missing table: the database's state, not the
        // data's. Rows wait in the spool rather than being dead-lettered.
        _ => StoreError::Refused(why),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

pub fn pg_config(cfg: &PostgresConfig) -> Result<tokio_postgres::Config, StoreError> {
    let mut c = match &cfg.url {
        Some(url) => url.parse::<tokio_postgres::Config>().map_err(|_| {
            StoreError::Rejected("storage.postgres.url is not a valid PostgreSQL URL".into())
        })?,
        None => {
            let mut c = tokio_postgres::Config::new();
            c.host(cfg.host.as_deref().unwrap_or("localhost"))
                .port(cfg.port)
                .user(&cfg.user)
                .dbname(&cfg.database);
            if let Some(p) = &cfg.password {
                c.password(p);
            }
            c
        }
    };
    c.application_name("majordomo")
        .connect_timeout(Duration::from_secs(5))
        .keepalives(true);
    Ok(c)
}

impl PgStore {
    pub fn new(cfg: &PostgresConfig) -> Result<PgStore, StoreError> {
        let config = pg_config(cfg)?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.max_conns)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(PgStore { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // One migrator at a time across replicas starting together.
        tx.execute("SELECT pg_advisory_xact_lock(7680001)", &[])
            .await
            .map_err(pg_err)?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .await
        .map_err(pg_err)?;
        let mut applied = Vec::new();
        for m in MIGRATIONS {
            let done = tx
                .query_opt(
                    &format!("SELECT version FROM {LEDGER_TABLE} WHERE version = $1"),
                    &[&m.version],
                )
                .await
                .map_err(pg_err)?;
            if done.is_none() {
                tx.batch_execute(m.postgres)
                    .await
                    .map_err(|e| StoreError::Migration {
                        version: m.version,
                        message: e.to_string(),
                    })?;
                tx.execute(
                    &format!("INSERT INTO {LEDGER_TABLE} (version, name) VALUES ($1, $2)"),
                    &[&m.version, &m.name],
                )
                .await
                .map_err(pg_err)?;
                applied.push(m.version);
            }
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(applied)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(pg_err)?;
        Ok(())
    }

    pub async fn create_key(&self, new: NewKey<'_>) -> Result<ApiKey, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO api_keys (id, key_hash, key_hint, name, description) VALUES ($1, $2, $3, $4, $5) RETURNING {KEY_COLUMNS}"
                ),
                &[&Uuid::now_v7(), &new.key_hash, &new.key_hint, &new.name, &new.description],
            )
            .await
            .map_err(pg_err)?;
        Ok(row_to_key(&row))
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"),
                &[],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows.iter().map(row_to_key).collect())
    }

    pub async fn get_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.as_ref().map(row_to_key))
    }

    pub async fn update_key(
        &self,
        id: Uuid,
        name: Option<&str>,
        description: Option<&str>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE api_keys SET name = COALESCE($2, name), description = COALESCE($3, description) WHERE id = $1 RETURNING {KEY_COLUMNS}"
                ),
                &[&id, &name, &description],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.as_ref().map(row_to_key))
    }

    pub async fn revoke_key(&self, id: Uuid) -> Result<Option<(ApiKey, String)>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE api_keys SET is_active = false, revoked_at = COALESCE(revoked_at, clock_timestamp()) WHERE id = $1 RETURNING {KEY_COLUMNS}, key_hash"
                ),
                &[&id],
            )
            .await
            .map_err(pg_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash: String = row.get("key_hash");
        // Delivered to every listening replica when the transaction commits.
        tx.execute("SELECT pg_notify($1, $2)", &[&KEYS_CHANNEL, &hash])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Some((row_to_key(&row), hash)))
    }

    pub async fn find_active_key(&self, key_hash: &str) -> Result<Option<Uuid>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT id FROM api_keys WHERE key_hash = $1 AND is_active")
            .await
            .map_err(pg_err)?;
        let row = client
            .query_opt(&stmt, &[&key_hash])
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn forget_billed_responses(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM majordomo_billed_responses WHERE billed_at < $1",
                &[&before],
            )
            .await
            .map_err(pg_err)
    }

    /// Writes a batch of request records, each exactly once (a record whose id
    /// is already stored is skipped), adds the written rows to their keys'
    /// counters and metadata statistics, all in one transaction. Returns how
    /// many rows were new.
    ///
    /// The common case — no id of the batch is stored yet — is one binary
    /// `COPY` straight into `llm_requests`. Only when that hits the primary key
    /// (a spool replay of rows already written) is the batch rewritten through
    /// a staging table with `INSERT … ON CONFLICT (id) DO NOTHING`.
    pub async fn insert_requests(&self, batch: Arc<Vec<RequestRecord>>) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        match self.copy_new_rows(&mut client, &batch).await {
            Err(CopyFailure::Db(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                self.insert_skipping_stored(&mut client, &batch).await
            }
            other => other.map_err(StoreError::from),
        }
    }

    async fn copy_new_rows(
        &self,
        client: &mut deadpool_postgres::Object,
        batch: &[RequestRecord],
    ) -> Result<u64, CopyFailure> {
        let tx = client.transaction().await?;
        let settled = claim_billed_responses(&tx, batch).await?;
        let batch = settled.as_deref().unwrap_or(batch);
        let active = active_metadata_keys(&tx, batch).await?;
        copy_rows(&tx, "llm_requests", batch, &active).await?;
        add_to_key_counters(&tx, batch.iter()).await?;
        add_to_metadata_stats(&tx, batch.iter()).await?;
        tx.commit().await?;
        Ok(batch.len() as u64)
    }

    async fn insert_skipping_stored(
        &self,
        client: &mut deadpool_postgres::Object,
        batch: &[RequestRecord],
    ) -> Result<u64, StoreError> {
        let tx = client.transaction().await.map_err(pg_err)?;
        let settled = claim_billed_responses(&tx, batch).await.map_err(pg_err)?;
        let batch = settled.as_deref().unwrap_or(batch);
        let active = active_metadata_keys(&tx, batch).await.map_err(pg_err)?;
        tx.batch_execute(STAGE_DDL).await.map_err(pg_err)?;
        copy_rows(&tx, "majordomo_stage", batch, &active).await?;
        let inserted = tx
            .query(
                &format!(
                    "INSERT INTO llm_requests ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM majordomo_stage
                     ON CONFLICT (id) DO NOTHING RETURNING id"
                ),
                &[],
            )
            .await
            .map_err(pg_err)?;
        let mut new_ids: std::collections::HashSet<Uuid> =
            inserted.iter().map(|r| r.get(0)).collect();
        let written = new_ids.len() as u64;
        // Each new row once, even if the batch held its id twice.
        let new_rows: Vec<&RequestRecord> =
            batch.iter().filter(|r| new_ids.remove(&r.id)).collect();
        add_to_key_counters(&tx, new_rows.iter().copied())
            .await
            .map_err(pg_err)?;
        add_to_metadata_stats(&tx, new_rows.iter().copied())
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(written)
    }

    pub async fn list_metadata_keys(
        &self,
        api_key: Option<Uuid>,
    ) -> Result<Vec<MetadataKey>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT majordomo_api_key_id, key_name, is_active, activated_at, request_count,
                        last_seen_at, approx_cardinality::bigint
                 FROM llm_requests_metadata_keys
                 WHERE $1::uuid IS NULL OR majordomo_api_key_id = $1
                 ORDER BY majordomo_api_key_id, key_name",
                &[&api_key],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| MetadataKey {
                api_key_id: r.get(0),
                key_name: r.get(1),
                is_active: r.get(2),
                activated_at: r.get(3),
                request_count: r.get(4),
                last_seen_at: r.get(5),
                approx_cardinality: r.get(6),
            })
            .collect())
    }

    pub async fn set_metadata_active(
        &self,
        api_key: Uuid,
        name: &str,
        active: bool,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        if client
            .query_opt("SELECT 1 FROM api_keys WHERE id = $1", &[&api_key])
            .await
            .map_err(pg_err)?
            .is_none()
        {
            return Ok(false);
        }
        client
            .execute(
                "INSERT INTO llm_requests_metadata_keys (majordomo_api_key_id, key_name, is_active, activated_at)
                 VALUES ($1, $2, $3, CASE WHEN $3 THEN now() END)
                 ON CONFLICT (majordomo_api_key_id, key_name) DO UPDATE
                 SET is_active = $3,
                     activated_at = CASE WHEN $3 THEN COALESCE(llm_requests_metadata_keys.activated_at, now()) END",
                &[&api_key, &name, &active],
            )
            .await
            .map_err(pg_err)?;
        Ok(true)
    }
}

/// For each key of the batch that sent metadata, the metadata names marked
/// active (`majordomo metadata activate`): their values are copied into
/// `indexed_metadata`.
async fn active_metadata_keys(
    tx: &Transaction<'_>,
    batch: &[RequestRecord],
) -> Result<HashMap<Uuid, Vec<String>>, tokio_postgres::Error> {
    let mut keys: Vec<Uuid> = batch
        .iter()
        .filter(|r| r.raw_metadata.is_some())
        .filter_map(|r| r.api_key_id)
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    keys.sort_unstable();
    keys.dedup();
    let rows = tx
        .query(
            "SELECT majordomo_api_key_id, key_name FROM llm_requests_metadata_keys
             WHERE is_active AND majordomo_api_key_id = ANY($1)",
            &[&keys],
        )
        .await?;
    let mut active: HashMap<Uuid, Vec<String>> = HashMap::new();
    for row in rows {
        active.entry(row.get(0)).or_default().push(row.get(1));
    }
    Ok(active)
}

/// Why a batch could not be copied.
#[derive(Debug)]
enum CopyFailure {
    Db(tokio_postgres::Error),
    Unencodable(Unencodable),
}

impl From<tokio_postgres::Error> for CopyFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        CopyFailure::Db(e)
    }
}

impl From<CopyFailure> for StoreError {
    fn from(f: CopyFailure) -> Self {
        match f {
            CopyFailure::Db(e) => pg_err(e),
            // A record no retry can write: the sink isolates it.
            CopyFailure::Unencodable(e) => StoreError::Rejected(e.to_string()),
        }
    }
}

/// Claims the batch's background responses (see `Store::insert_requests`);
/// the batch to write, if a claim was lost.
async fn claim_billed_responses(
    tx: &Transaction<'_>,
    batch: &[RequestRecord],
) -> Result<Option<Vec<RequestRecord>>, tokio_postgres::Error> {
    let claims = super::billed_response_claims(batch);
    if claims.is_empty() {
        return Ok(None);
    }
    let (responses, requests): (Vec<&str>, Vec<Uuid>) = claims.into_iter().unzip();
    let insert = tx
        .prepare_cached(
            "INSERT INTO majordomo_billed_responses (response_id, request_id)
             SELECT * FROM unnest($1::text[], $2::uuid[]) ON CONFLICT (response_id) DO NOTHING",
        )
        .await?;
    tx.execute(&insert, &[&responses, &requests]).await?;
    // A statement of its own: its snapshot sees a claim that a concurrent
    // transaction committed while the insert waited for it.
    let holders = tx
        .prepare_cached(
            "SELECT response_id, request_id FROM majordomo_billed_responses
             WHERE response_id = ANY($1)",
        )
        .await?;
    let held: HashMap<String, Uuid> = tx
        .query(&holders, &[&responses])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(super::settle_claims(batch, |id| held.get(id).copied()))
}

/// Bytes gathered before they go to the connection as one `CopyData` message.
const COPY_CHUNK: usize = 64 * 1024;

/// Binary `COPY` of the batch into `table` (`llm_requests` or the staging table).
async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    batch: &[RequestRecord],
    active: &HashMap<Uuid, Vec<String>>,
) -> Result<(), CopyFailure> {
    let sink = tx
        .copy_in::<_, Bytes>(&format!("COPY {table} ({COPY_COLUMNS}) FROM STDIN BINARY"))
        .await?;
    pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + 4096);
    pg_copy::write_header(&mut buf);
    for r in batch {
        let names = r
            .api_key_id
            .and_then(|k| active.get(&k))
            .map_or(&[][..], Vec::as_slice);
        // On an error the sink is dropped unfinished, which aborts the copy.
        pg_copy::write_row(&mut buf, r, names).map_err(CopyFailure::Unencodable)?;
        if buf.len() >= COPY_CHUNK {
            sink.send(buf.split().freeze()).await?;
        }
    }
    pg_copy::write_trailer(&mut buf);
    sink.send(buf.freeze()).await?;
    sink.finish().await?;
    Ok(())
}

/// Adds the written rows to their keys' `request_count` and `last_used_at`.
async fn add_to_key_counters<'a>(
    tx: &Transaction<'_>,
    written: impl Iterator<Item = &'a RequestRecord>,
) -> Result<(), tokio_postgres::Error> {
    // A batch holds few distinct keys: a linear search beats hashing.
    let (mut ids, mut counts, mut last) = (Vec::<Uuid>::new(), Vec::<i64>::new(), Vec::new());
    for r in written {
        let Some(key) = r.api_key_id else { continue };
        match ids.iter().position(|k| *k == key) {
            Some(i) => {
                counts[i] += 1;
                last[i] = r.requested_at.max(last[i]);
            }
            None => {
                ids.push(key);
                counts.push(1);
                last.push(r.requested_at);
            }
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    // Two batches updating the same keys lock them in the same (id) order,
    // so concurrent writers and replicas queue instead of deadlocking.
    let lock = tx
        .prepare_cached("SELECT 1 FROM api_keys WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .await?;
    tx.query(&lock, &[&ids]).await?;
    let stmt = tx
        .prepare_cached(
            "UPDATE api_keys k SET request_count = k.request_count + u.n,
                    last_used_at = GREATEST(k.last_used_at, u.t)
             FROM unnest($1::uuid[], $2::int8[], $3::timestamptz[]) AS u(id, n, t)
             WHERE k.id = u.id",
        )
        .await?;
    tx.execute(&stmt, &[&ids, &counts, &last]).await?;
    Ok(())
}

/// Merges the written rows' metadata into `llm_requests_metadata_keys`:
/// counts, last seen, and the HyperLogLog sketch, under row locks taken in
/// (key, name) order so replicas merging the same names serialise.
async fn add_to_metadata_stats<'a>(
    tx: &Transaction<'_>,
    written: impl Iterator<Item = &'a RequestRecord>,
) -> Result<(), tokio_postgres::Error> {
    let deltas = super::metadata_deltas(written);
    if deltas.is_empty() {
        return Ok(());
    }
    let keys: Vec<Uuid> = deltas.iter().map(|d| d.api_key_id).collect();
    let names: Vec<&str> = deltas.iter().map(|d| d.key_name.as_str()).collect();
    tx.execute(
        "INSERT INTO llm_requests_metadata_keys (majordomo_api_key_id, key_name)
         SELECT * FROM unnest($1::uuid[], $2::text[]) ON CONFLICT DO NOTHING",
        &[&keys, &names],
    )
    .await?;
    let stored = tx
        .query(
            "SELECT m.majordomo_api_key_id, m.key_name, m.hll_state
             FROM llm_requests_metadata_keys m
             JOIN unnest($1::uuid[], $2::text[]) AS u(k, n)
               ON m.majordomo_api_key_id = u.k AND m.key_name = u.n
             ORDER BY 1, 2 FOR UPDATE OF m",
            &[&keys, &names],
        )
        .await?;
    let mut sketches: HashMap<(Uuid, &str), super::hll::Hll> = stored
        .iter()
        .map(|row| {
            (
                (row.get(0), row.get(1)),
                super::hll::Hll::from_bytes(row.get::<_, Option<&[u8]>>(2)),
            )
        })
        .collect();
    let (mut counts, mut last_seen, mut states, mut estimates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for d in &deltas {
        let sketch = sketches
            .entry((d.api_key_id, d.key_name.as_str()))
            .or_default();
        sketch.merge(&d.sketch);
        counts.push(d.count);
        last_seen.push(d.last_seen);
        estimates.push(i32::try_from(sketch.estimate()).unwrap_or(i32::MAX));
        states.push(sketch.as_bytes().to_vec());
    }
    // The count never goes down: a sketch in another format (the reference
    // gateway's) reads as empty, and its count stays as a floor instead of
    // dropping to the new values'.
    tx.execute(
        "UPDATE llm_requests_metadata_keys m SET request_count = m.request_count + u.c,
                last_seen_at = GREATEST(m.last_seen_at, u.t), hll_state = u.s,
                approx_cardinality = GREATEST(m.approx_cardinality, u.e), hll_updated_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[], $5::bytea[], $6::int4[])
              AS u(k, n, c, t, s, e)
         WHERE m.majordomo_api_key_id = u.k AND m.key_name = u.n",
        &[&keys, &names, &counts, &last_seen, &states, &estimates],
    )
    .await?;
    Ok(())
}

const STAGE_DDL: &str = "CREATE TEMP TABLE IF NOT EXISTS majordomo_stage (
    id UUID, majordomo_api_key_id UUID, provider_api_key_hash VARCHAR(64), provider VARCHAR(100),
    model TEXT, request_path TEXT, request_method TEXT, requested_at TIMESTAMPTZ,
    responded_at TIMESTAMPTZ, response_time_ms INT, time_to_first_byte_ms INT,
    input_tokens BIGINT, output_tokens BIGINT, cached_tokens BIGINT, cache_creation_tokens BIGINT,
    reasoning_tokens BIGINT, input_cost NUMERIC(20,10), output_cost NUMERIC(20,10),
    total_cost NUMERIC(20,10), price_found BOOLEAN, usage_complete BOOLEAN, status_code INT,
    error_message TEXT, raw_metadata JSONB, indexed_metadata JSONB, request_body TEXT, response_body TEXT, body_s3_key TEXT
) ON COMMIT DELETE ROWS";

const KEY_COLUMNS: &str =
    "id, name, description, key_hint, is_active, created_at, revoked_at, last_used_at, request_count";

fn row_to_key(r: &tokio_postgres::Row) -> ApiKey {
    ApiKey {
        id: r.get("id"),
        name: r.get("name"),
        description: r.get("description"),
        key_hint: r.get("key_hint"),
        is_active: r.get("is_active"),
        created_at: r.get::<_, DateTime<Utc>>("created_at"),
        revoked_at: r.get("revoked_at"),
        last_used_at: r.get("last_used_at"),
        request_count: r.get("request_count"),
    }
}
