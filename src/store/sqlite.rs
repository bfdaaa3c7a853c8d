//! The embedded SQLite backend: the zero-setup default for one machine.
//!
//! One connection in WAL mode behind a mutex; every call runs on tokio's
//! blocking pool so no proxy thread ever waits on the file.
//!
//! The connection is opened on first use, not by [`SqliteStore::open`]: the
//! stores are made before Pingora forks for `-d`, and a connection must not
//! cross a fork. SQLite's locks are POSIX record locks, which the daemon
//! would not inherit: holding none, its WAL could be checkpointed and
//! deleted under it by the next `majordomo keys …`, and every row it wrote
//! after that would be lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::migrations::{LEDGER_TABLE, MIGRATIONS};
use super::{ApiKey, MetadataKey, NewKey, RequestRecord, StoreError};

pub struct SqliteStore {
    path: PathBuf,
    /// `None` until the first call (see the module's comment), and again
    /// after a failed open, which the next call retries.
    conn: Arc<Mutex<Option<Connection>>>,
}

fn err(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        // The row's own fault: the same data fails again.
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::ConstraintViolation
                    | rusqlite::ErrorCode::TooBig
                    | rusqlite::ErrorCode::TypeMismatch
            ) =>
        {
            StoreError::Rejected(e.to_string())
        }
        // A read-only file or directory, permissions, a damaged or foreign
        // file: the database's state, not the data's.
        rusqlite::Error::SqliteFailure(..) => StoreError::Refused(e.to_string()),
        other => StoreError::Rejected(other.to_string()),
    }
}

pub(super) fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(err)?;
    Ok(conn)
}

impl SqliteStore {
    /// Checks that the file opens (a clear error at start, not at the first
    /// request), then closes it again: see the module's comment.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        drop(connect(path)?);
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(None)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            let conn = match &mut *guard {
                Some(conn) => conn,
                empty => empty.insert(connect(&path)?),
            };
            f(conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite task failed: {e}")))?
    }

    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        self.with(|c| {
            c.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            ))
            .map_err(err)?;
            let mut applied = Vec::new();
            for m in MIGRATIONS {
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(err)?;
                let done: Option<i64> = tx
                    .query_row(
                        &format!("SELECT version FROM {LEDGER_TABLE} WHERE version = ?1"),
                        [m.version],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(err)?;
                if done.is_none() {
                    tx.execute_batch(m.sqlite).map_err(|e| StoreError::Migration {
                        version: m.version,
                        message: e.to_string(),
                    })?;
                    tx.execute(
                        &format!("INSERT INTO {LEDGER_TABLE} (version, name, applied_at) VALUES (?1, ?2, ?3)"),
                        params![m.version, m.name, ts(&Utc::now())],
                    )
                    .map_err(err)?;
                    applied.push(m.version);
                }
                tx.commit().map_err(err)?;
            }
            Ok(applied)
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(err))
            .await
    }

    pub async fn create_key(&self, new: NewKey<'_>) -> Result<ApiKey, StoreError> {
        let id = Uuid::now_v7();
        let (name, description, hash, hint) = (
            new.name.to_string(),
            new.description.map(str::to_string),
            new.key_hash.to_string(),
            new.key_hint.to_string(),
        );
        self.with(move |c| {
            c.execute(
                "INSERT INTO api_keys (id, key_hash, key_hint, name, description, is_active, created_at, request_count)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, 0)",
                params![id.to_string(), hash, hint, name, description, ts(&Utc::now())],
            )
            .map_err(err)?;
            get(c, id)?.ok_or_else(|| StoreError::Rejected("inserted key not found".into()))
        })
        .await
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!("{SELECT_KEY} ORDER BY created_at, id"))
                .map_err(err)?;
            let rows = stmt.query_map([], row_to_key).map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
        .await
    }

    pub async fn get_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        self.with(move |c| get(c, id)).await
    }

    pub async fn update_key(
        &self,
        id: Uuid,
        name: Option<&str>,
        description: Option<&str>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let (name, description) = (name.map(str::to_string), description.map(str::to_string));
        self.with(move |c| {
            c.execute(
                "UPDATE api_keys SET name = COALESCE(?2, name), description = COALESCE(?3, description) WHERE id = ?1",
                params![id.to_string(), name, description],
            )
            .map_err(err)?;
            get(c, id)
        })
        .await
    }

    pub async fn revoke_key(&self, id: Uuid) -> Result<Option<(ApiKey, String)>, StoreError> {
        self.with(move |c| {
            // The time is read once the write lock is held: pollers look a
            // few seconds back, and a revocation that waited out a long
            // write (up to the busy timeout) must not be stamped before it.
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(err)?;
            tx.execute(
                "UPDATE api_keys SET is_active = 0, revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id.to_string(), ts(&Utc::now())],
            )
            .map_err(err)?;
            let hash: Option<String> = tx
                .query_row(
                    "SELECT key_hash FROM api_keys WHERE id = ?1",
                    [id.to_string()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            let key = get(&tx, id)?;
            tx.commit().map_err(err)?;
            match (key, hash) {
                (Some(k), Some(h)) => Ok(Some((k, h))),
                _ => Ok(None),
            }
        })
        .await
    }

    pub async fn find_active_key(&self, key_hash: &str) -> Result<Option<Uuid>, StoreError> {
        let hash = key_hash.to_string();
        self.with(move |c| {
            let id: Option<String> = c
                .query_row(
                    "SELECT id FROM api_keys WHERE key_hash = ?1 AND is_active = 1",
                    [hash],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            Ok(id.and_then(|s| Uuid::parse_str(&s).ok()))
        })
        .await
    }

    pub async fn forget_billed_responses(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let before = ts(&before);
        self.with(move |c| {
            c.execute(
                "DELETE FROM majordomo_billed_responses WHERE billed_at < ?1",
                [before],
            )
            .map(|n| n as u64)
            .map_err(err)
        })
        .await
    }

    pub async fn revoked_since(&self, since: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let since = ts(&since);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT key_hash FROM api_keys WHERE revoked_at >= ?1")
                .map_err(err)?;
            let rows = stmt.query_map([since], |r| r.get(0)).map_err(err)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(err)
        })
        .await
    }

    pub async fn insert_requests(&self, batch: Arc<Vec<RequestRecord>>) -> Result<u64, StoreError> {
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(err)?;
            let settled = claim_billed_responses(&tx, &batch)?;
            let batch = settled.as_deref().unwrap_or(&batch);
            let mut written = 0u64;
            let mut new_rows: Vec<&RequestRecord> = Vec::new();
            // key id → (new rows, latest requested_at)
            let mut per_key: std::collections::HashMap<Uuid, (i64, DateTime<Utc>)> =
                Default::default();
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO llm_requests (
                            id, majordomo_api_key_id, provider_api_key_hash, provider, model,
                            request_path, request_method, requested_at, responded_at,
                            response_time_ms, time_to_first_byte_ms, input_tokens, output_tokens,
                            cached_tokens, cache_creation_tokens, reasoning_tokens, input_cost,
                            output_cost, total_cost, price_found, usage_complete, status_code,
                            error_message, raw_metadata, request_body, response_body, body_s3_key,
                            indexed_metadata)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                                 ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27,
                                 (SELECT json_group_object(e.key, e.value) FROM json_each(?24) e
                                  JOIN llm_requests_metadata_keys m
                                    ON m.majordomo_api_key_id = ?2 AND m.key_name = e.key
                                   AND m.is_active = 1))",
                    )
                    .map_err(err)?;
                for r in batch.iter() {
                    let n = stmt
                        .execute(params![
                            r.id.to_string(),
                            r.api_key_id.map(|k| k.to_string()),
                            r.provider_api_key_hash,
                            r.provider,
                            r.model,
                            r.request_path,
                            r.request_method,
                            ts(&r.requested_at),
                            ts(&r.responded_at),
                            r.response_time_ms,
                            r.time_to_first_byte_ms,
                            r.input_tokens,
                            r.output_tokens,
                            r.cached_tokens,
                            r.cache_creation_tokens,
                            r.reasoning_tokens,
                            r.input_cost.to_string(),
                            r.output_cost.to_string(),
                            r.total_cost.to_string(),
                            r.price_found,
                            r.usage_complete,
                            r.status_code,
                            r.error_message,
                            r.raw_metadata
                                .as_ref()
                                .map(|m| serde_json::Value::Object(m.clone()).to_string()),
                            r.request_body,
                            r.response_body,
                            r.body_s3_key,
                        ])
                        .map_err(err)?;
                    if n == 1 {
                        written += 1;
                        new_rows.push(r);
                        if let Some(k) = r.api_key_id {
                            let e = per_key.entry(k).or_insert((0, r.requested_at));
                            e.0 += 1;
                            e.1 = e.1.max(r.requested_at);
                        }
                    }
                }
                let mut upd = tx
                    .prepare_cached(
                        "UPDATE api_keys SET request_count = request_count + ?2,
                           last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ?3 THEN ?3 ELSE last_used_at END
                         WHERE id = ?1",
                    )
                    .map_err(err)?;
                for (k, (n, t)) in per_key {
                    upd.execute(params![k.to_string(), n, ts(&t)]).map_err(err)?;
                }
                for d in super::metadata_deltas(new_rows.into_iter()) {
                    let key = d.api_key_id.to_string();
                    let stored: Option<Vec<u8>> = tx
                        .query_row(
                            "SELECT hll_state FROM llm_requests_metadata_keys
                             WHERE majordomo_api_key_id = ?1 AND key_name = ?2",
                            params![key, d.key_name],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(err)?
                        .flatten();
                    let mut sketch = super::hll::Hll::from_bytes(stored.as_deref());
                    sketch.merge(&d.sketch);
                    tx.execute(
                        "INSERT INTO llm_requests_metadata_keys
                            (majordomo_api_key_id, key_name, request_count, last_seen_at, hll_state,
                             approx_cardinality, hll_updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (majordomo_api_key_id, key_name) DO UPDATE SET
                            request_count = request_count + excluded.request_count,
                            last_seen_at = max(coalesce(last_seen_at, ''), excluded.last_seen_at),
                            hll_state = excluded.hll_state,
                            approx_cardinality = max(approx_cardinality, excluded.approx_cardinality),
                            hll_updated_at = excluded.hll_updated_at",
                        params![
                            key,
                            d.key_name,
                            d.count,
                            ts(&d.last_seen),
                            sketch.as_bytes(),
                            sketch.estimate() as i64,
                            ts(&Utc::now())
                        ],
                    )
                    .map_err(err)?;
                }
            }
            tx.commit().map_err(err)?;
            Ok(written)
        })
        .await
    }
}

/// Claims the batch's background responses (see `Store::insert_requests`);
/// the batch to write, if a claim was lost.
fn claim_billed_responses(
    tx: &rusqlite::Transaction<'_>,
    batch: &[RequestRecord],
) -> Result<Option<Vec<RequestRecord>>, StoreError> {
    let claims = super::billed_response_claims(batch);
    if claims.is_empty() {
        return Ok(None);
    }
    let now = ts(&Utc::now());
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO majordomo_billed_responses (response_id, request_id, billed_at)
             VALUES (?1, ?2, ?3) ON CONFLICT (response_id) DO NOTHING",
        )
        .map_err(err)?;
    let mut holder = tx
        .prepare_cached("SELECT request_id FROM majordomo_billed_responses WHERE response_id = ?1")
        .map_err(err)?;
    let mut held = HashMap::new();
    for (response, request) in claims {
        insert
            .execute(params![response, request.to_string(), now])
            .map_err(err)?;
        let by: String = holder.query_row([response], |r| r.get(0)).map_err(err)?;
        // A holder that is not a request id is not this row: unbilled.
        held.insert(response, Uuid::parse_str(&by).unwrap_or(Uuid::nil()));
    }
    Ok(super::settle_claims(batch, |id| held.get(id).copied()))
}

impl SqliteStore {
    pub async fn list_metadata_keys(
        &self,
        api_key: Option<Uuid>,
    ) -> Result<Vec<MetadataKey>, StoreError> {
        let filter = api_key.map(|k| k.to_string());
        self.with(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT majordomo_api_key_id, key_name, is_active, activated_at, request_count,
                            last_seen_at, approx_cardinality
                     FROM llm_requests_metadata_keys
                     WHERE ?1 IS NULL OR majordomo_api_key_id = ?1
                     ORDER BY majordomo_api_key_id, key_name",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map([filter], |r| {
                    let id: String = r.get(0)?;
                    Ok(MetadataKey {
                        api_key_id: Uuid::parse_str(&id).unwrap_or_default(),
                        key_name: r.get(1)?,
                        is_active: r.get(2)?,
                        activated_at: parse_ts(r.get(3)?),
                        request_count: r.get(4)?,
                        last_seen_at: parse_ts(r.get(5)?),
                        approx_cardinality: r.get(6)?,
                    })
                })
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
        .await
    }

    pub async fn set_metadata_active(
        &self,
        api_key: Uuid,
        name: &str,
        active: bool,
    ) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let key = api_key.to_string();
            if get(c, api_key)?.is_none() {
                return Ok(false);
            }
            let now = ts(&Utc::now());
            c.execute(
                "INSERT INTO llm_requests_metadata_keys (majordomo_api_key_id, key_name, is_active, activated_at)
                 VALUES (?1, ?2, ?3, CASE WHEN ?3 THEN ?4 END)
                 ON CONFLICT (majordomo_api_key_id, key_name) DO UPDATE SET
                    is_active = ?3,
                    activated_at = CASE WHEN ?3 THEN coalesce(activated_at, ?4) END",
                params![key, name, active, now],
            )
            .map_err(err)?;
            Ok(true)
        })
        .await
    }
}

const SELECT_KEY: &str = "SELECT id, name, description, key_hint, is_active, created_at, revoked_at, last_used_at, request_count FROM api_keys";

fn get(c: &Connection, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
    c.query_row(
        &format!("{SELECT_KEY} WHERE id = ?1"),
        [id.to_string()],
        row_to_key,
    )
    .optional()
    .map_err(err)
}

fn row_to_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    let id: String = r.get(0)?;
    Ok(ApiKey {
        id: Uuid::parse_str(&id).unwrap_or_default(),
        name: r.get(1)?,
        description: r.get(2)?,
        key_hint: r.get(3)?,
        is_active: r.get(4)?,
        created_at: parse_ts(r.get(5)?).unwrap_or_default(),
        revoked_at: parse_ts(r.get(6)?),
        last_used_at: parse_ts(r.get(7)?),
        request_count: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewKey;

    /// Revocation pollers look a few seconds back: a revocation that waited
    /// for another writer's lock must be stamped when it got the lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_is_stamped_when_it_gets_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        store.migrate().await.unwrap();
        let key = store
            .create_key(NewKey {
                name: "waited",
                description: None,
                key_hash: "hash-waited",
                key_hint: "hint",
            })
            .await
            .unwrap();
        let writer = Connection::open(&path).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        let revoke = tokio::spawn({
            let store = store.clone();
            async move { store.revoke_key(key.id).await }
        });
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let released = Utc::now();
        writer.execute_batch("COMMIT").unwrap();
        let (revoked, _) = revoke.await.unwrap().unwrap().unwrap();
        let stamped = revoked.revoked_at.unwrap();
        assert!(
            stamped >= released - chrono::Duration::milliseconds(100),
            "stamped {stamped}, lock released {released}"
        );
    }
}
