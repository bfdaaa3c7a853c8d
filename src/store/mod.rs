//! Persistence: API keys and the request log, on PostgreSQL or SQLite.
//!
//! [`Store`] is a cheap, cloneable handle over either backend; both pass the
//! same behaviour tests. Migrations are embedded in the binary and applied at
//! start (and by `majordomo migrate`). Writes of request records are
//! idempotent on the request id, so a replayed batch never duplicates a row.

pub mod hll;
mod migrations;
pub mod pg_copy;
pub mod postgres;
pub mod record;
mod sqlite;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::config::{StorageConfig, StorageDriver};
pub use record::RequestRecord;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Occurs when the database cannot be reached or a connection fails; worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Occurs when the database rejects the data itself (a constraint, a value
    /// out of range); retrying the same data will fail again.
    #[error("database rejected the operation: {0}")]
    Rejected(String),
    /// Occurs when the database refuses an operation for a reason that is not
    /// the data's: read-only (a standby after a failover), a missing
    /// permission or table, failed authentication. The same data succeeds
    /// once that is mended, so it is not retried at once but never dropped.
    #[error("database refused the operation: {0}")]
    Refused(String),
    /// Occurs when a migration cannot be applied.
    #[error("migration {version} failed: {message}")]
    Migration { version: i64, message: String },
}

impl StoreError {
    /// Whether the same operation may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// Whether the data itself is at fault: the same records will be refused
    /// whatever the database's state, so the sink dead-letters them. Any other
    /// failure leaves them in the spool.
    pub fn blames_the_data(&self) -> bool {
        matches!(self, StoreError::Rejected(_))
    }
}

/// An API key as stored (never the plaintext).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub key_hint: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub request_count: i64,
}

/// One row of `llm_requests_metadata_keys`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetadataKey {
    pub api_key_id: Uuid,
    pub key_name: String,
    pub is_active: bool,
    pub activated_at: Option<DateTime<Utc>>,
    pub request_count: i64,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub approx_cardinality: i64,
}

/// A batch's contribution to one (API key, metadata name) statistics row.
pub(crate) struct MetadataDelta {
    pub api_key_id: Uuid,
    pub key_name: String,
    pub count: i64,
    pub last_seen: DateTime<Utc>,
    pub sketch: hll::Hll,
}

/// Aggregates the metadata of the newly written records, sorted by
/// (key, name) so concurrent replicas lock rows in the same order.
pub(crate) fn metadata_deltas<'a>(
    records: impl Iterator<Item = &'a RequestRecord>,
) -> Vec<MetadataDelta> {
    let mut by: std::collections::BTreeMap<(Uuid, &str), MetadataDelta> = Default::default();
    for r in records {
        let (Some(key), Some(meta)) = (r.api_key_id, r.raw_metadata.as_ref()) else {
            continue;
        };
        for (name, value) in meta {
            let d = by
                .entry((key, name.as_str()))
                .or_insert_with(|| MetadataDelta {
                    api_key_id: key,
                    key_name: name.clone(),
                    count: 0,
                    last_seen: r.requested_at,
                    sketch: hll::Hll::default(),
                });
            d.count += 1;
            d.last_seen = d.last_seen.max(r.requested_at);
            match value {
                serde_json::Value::String(v) => d.sketch.insert(v),
                other => d.sketch.insert(&other.to_string()),
            }
        }
    }
    by.into_values().collect()
}

/// How long a background response's claim is kept. OpenAI keeps a stored
/// response 30 days; past that a retrieval finds nothing to bill, so an
/// older claim only takes room.
pub const BILLED_RESPONSES_KEPT: chrono::TimeDelta = chrono::TimeDelta::days(45);

/// Longest background-response id claimed. OpenAI's are `resp_` and 48 hex
/// digits; far past this is not an id, and PostgreSQL's index refuses keys
/// over ~2.7 kB.
const CLAIM_ID_MAX: usize = 256;

/// Whether the store can hold a claim of `id`. One it cannot (empty, too
/// long, holding a NUL, which PostgreSQL refuses in text) would get the row
/// it rides on refused: it is not claimed, and the row keeps its usage.
fn claimable(id: &str) -> bool {
    !id.is_empty() && id.len() <= CLAIM_ID_MAX && !id.contains('\0')
}

/// The background-response claims a batch makes, as (response id, request
/// id), sorted by response id: replicas inserting the same ids take their
/// locks in one order.
pub(crate) fn billed_response_claims(batch: &[RequestRecord]) -> Vec<(&str, Uuid)> {
    let mut claims: Vec<(&str, Uuid)> = batch
        .iter()
        .filter_map(|r| Some((r.billed_response.as_deref()?, r.id)))
        .filter(|(id, _)| claimable(id))
        .collect();
    claims.sort_unstable();
    claims
}

/// The batch as it is written once its claims are in the store: a record
/// whose background response another request holds (`holder` names the
/// request holding each claimed id) is written [`RequestRecord::unbilled`].
/// `None` when every record stands as it is.
pub(crate) fn settle_claims(
    batch: &[RequestRecord],
    holder: impl Fn(&str) -> Option<Uuid>,
) -> Option<Vec<RequestRecord>> {
    let loses = |r: &RequestRecord| {
        r.billed_response
            .as_deref()
            .and_then(&holder)
            .is_some_and(|held_by| held_by != r.id)
    };
    if !batch.iter().any(loses) {
        return None;
    }
    Some(
        batch
            .iter()
            .map(|r| if loses(r) { r.unbilled() } else { r.clone() })
            .collect(),
    )
}

/// What `keys create` stores.
pub struct NewKey<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub key_hash: &'a str,
    pub key_hint: &'a str,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Backend>,
}

enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens the configured backend. PostgreSQL connects lazily (the first
    /// query opens the pool), so a database that is down at start does not
    /// stop the gateway; SQLite opens (and creates) its file now.
    pub fn open(cfg: &StorageConfig) -> Result<Store, StoreError> {
        let backend = match cfg.effective_driver() {
            StorageDriver::Sqlite => Backend::Sqlite(sqlite::SqliteStore::open(&cfg.sqlite.path)?),
            StorageDriver::Postgres => Backend::Postgres(postgres::PgStore::new(&cfg.postgres)?),
        };
        Ok(Store {
            inner: Arc::new(backend),
        })
    }

    pub fn driver(&self) -> StorageDriver {
        match &*self.inner {
            Backend::Sqlite(_) => StorageDriver::Sqlite,
            Backend::Postgres(_) => StorageDriver::Postgres,
        }
    }

    /// Applies pending migrations; returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.migrate().await,
            Backend::Postgres(s) => s.migrate().await,
        }
    }

    /// A cheap round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.ping().await,
            Backend::Postgres(s) => s.ping().await,
        }
    }

    pub async fn create_key(&self, new: NewKey<'_>) -> Result<ApiKey, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.create_key(new).await,
            Backend::Postgres(s) => s.create_key(new).await,
        }
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.list_keys().await,
            Backend::Postgres(s) => s.list_keys().await,
        }
    }

    pub async fn get_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.get_key(id).await,
            Backend::Postgres(s) => s.get_key(id).await,
        }
    }

    pub async fn update_key(
        &self,
        id: Uuid,
        name: Option<&str>,
        description: Option<&str>,
    ) -> Result<Option<ApiKey>, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.update_key(id, name, description).await,
            Backend::Postgres(s) => s.update_key(id, name, description).await,
        }
    }

    /// Revokes a key; returns it with its hash (for cache invalidation), or None if unknown.
    pub async fn revoke_key(&self, id: Uuid) -> Result<Option<(ApiKey, String)>, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.revoke_key(id).await,
            Backend::Postgres(s) => s.revoke_key(id).await,
        }
    }

    /// The id of the active key with this hash.
    pub async fn find_active_key(&self, key_hash: &str) -> Result<Option<Uuid>, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.find_active_key(key_hash).await,
            Backend::Postgres(s) => s.find_active_key(key_hash).await,
        }
    }

    /// Hashes of keys revoked at or after `since` (for stores without
    /// notifications: SQLite is polled).
    pub async fn revoked_since(&self, since: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.revoked_since(since).await,
            Backend::Postgres(_) => Ok(vec![]),
        }
    }

    /// Metadata statistics, optionally for one API key.
    pub async fn list_metadata_keys(
        &self,
        api_key: Option<Uuid>,
    ) -> Result<Vec<MetadataKey>, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.list_metadata_keys(api_key).await,
            Backend::Postgres(s) => s.list_metadata_keys(api_key).await,
        }
    }

    /// Turns indexing of a metadata key on or off for one API key (the row
    /// is created if the key was never seen). New rows copy active keys'
    /// values into `indexed_metadata`. Returns false if the API key is unknown.
    pub async fn set_metadata_active(
        &self,
        api_key: Uuid,
        name: &str,
        active: bool,
    ) -> Result<bool, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.set_metadata_active(api_key, name, active).await,
            Backend::Postgres(s) => s.set_metadata_active(api_key, name, active).await,
        }
    }

    /// Deletes the background-response claims made before `before`
    /// ([`BILLED_RESPONSES_KEPT`] ago, from the sink); returns how many.
    pub async fn forget_billed_responses(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.forget_billed_responses(before).await,
            Backend::Postgres(s) => s.forget_billed_responses(before).await,
        }
    }

    /// Writes a batch of request records (idempotent on `id`) and adds the
    /// newly written ones to their keys' `request_count` / `last_used_at`.
    /// Returns how many rows were new.
    ///
    /// A record naming a background response (`billed_response`) claims it
    /// in `majordomo_billed_responses` in the same transaction; if another
    /// request holds the claim (of this process or any other on the store),
    /// the record is written unbilled. A replay finds its own claim and
    /// stays billed.
    pub async fn insert_requests(&self, batch: Arc<Vec<RequestRecord>>) -> Result<u64, StoreError> {
        match &*self.inner {
            Backend::Sqlite(s) => s.insert_requests(batch).await,
            Backend::Postgres(s) => s.insert_requests(batch).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn billing(id: u128, response: Option<&str>) -> RequestRecord {
        RequestRecord {
            id: Uuid::from_u128(id),
            input_tokens: 10,
            output_tokens: 20,
            cached_tokens: 3,
            cache_creation_tokens: 4,
            reasoning_tokens: 5,
            input_cost: rust_decimal::Decimal::new(1, 3),
            output_cost: rust_decimal::Decimal::new(2, 3),
            total_cost: rust_decimal::Decimal::new(3, 3),
            price_found: true,
            billed_response: response.map(str::to_string),
            ..RequestRecord::plain()
        }
    }

    #[test]
    fn claims_are_made_in_response_id_order() {
        let batch = [
            billing(1, Some("resp_b")),
            billing(2, None),
            billing(3, Some("resp_a")),
            billing(4, Some("resp_b")),
        ];
        let claims = billed_response_claims(&batch);
        let want = [
            ("resp_a", Uuid::from_u128(3)),
            ("resp_b", Uuid::from_u128(1)),
            ("resp_b", Uuid::from_u128(4)),
        ];
        assert_eq!(claims, want);
    }

    #[test]
    fn only_an_id_the_store_can_hold_is_claimed() {
        let long = "r".repeat(CLAIM_ID_MAX + 1);
        let batch = [
            billing(
                1,
                Some("resp_68af4c1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f"),
            ),
            billing(2, Some(&long[1..])),
            billing(3, Some("")),
            billing(4, Some(&long)),
            billing(5, Some("resp_\0")),
        ];
        let claimed: Vec<Uuid> = billed_response_claims(&batch)
            .into_iter()
            .map(|(_, request)| request)
            .collect();
        assert_eq!(claimed, [Uuid::from_u128(1), Uuid::from_u128(2)]);
        // Unclaimed, they find no holder: written with their usage.
        assert_eq!(settle_claims(&batch, |_| None), None);
    }

    #[test]
    fn only_a_row_whose_claim_another_request_holds_is_unbilled() {
        let batch = [
            billing(1, Some("resp_a")),
            billing(2, None),
            billing(3, Some("resp_a")),
            billing(4, Some("resp_gone")),
        ];
        let holder = |id: &str| (id == "resp_a").then(|| Uuid::from_u128(1));
        let settled = settle_claims(&batch, holder).expect("one row lost its claim");
        assert_eq!(settled[0], batch[0], "the holder keeps its usage");
        assert_eq!(settled[1], batch[1]);
        assert_eq!(settled[3], batch[3], "no claim row: billed as it is");
        let lost = &settled[2];
        assert_eq!(
            (lost.input_tokens, lost.output_tokens, lost.cached_tokens),
            (0, 0, 0)
        );
        assert_eq!((lost.cache_creation_tokens, lost.reasoning_tokens), (0, 0));
        assert!(
            lost.total_cost.is_zero() && lost.input_cost.is_zero() && lost.output_cost.is_zero()
        );
        assert!(!lost.usage_complete);
        assert!(lost.price_found, "the model is still priced");
        assert_eq!(lost.billed_response, None);
        assert_eq!((lost.id, &lost.model), (batch[2].id, &batch[2].model));
        // Every row holding its own claim: nothing to rewrite.
        assert_eq!(settle_claims(&batch[..2], holder), None);
    }
}
