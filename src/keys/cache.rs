//! The key validation cache in front of the store.
//!
//! Positive entries live for `auth.cache_ttl_secs`; unknown or revoked keys
//! are remembered in a separate, size-bounded negative cache so a flood of
//! random keys costs neither memory growth nor a database query each.
//! Concurrent misses for the same key share one store lookup.
//! [`KeyCache::invalidate_hash`] lets a revocation signal (LISTEN/NOTIFY)
//! evict a key at once instead of waiting for the TTL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// The outcome of validating a presented key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    Valid(Uuid),
    /// Not a key we know, or revoked.
    Invalid,
}

/// Keys are BLAKE3 hashes; foldhash (seeded per process) hashes them for
/// the cache several times faster than the default SipHash.
type Hasher = foldhash::fast::RandomState;

pub struct KeyCache {
    valid: Cache<[u8; 32], Uuid, Hasher>,
    invalid: Cache<[u8; 32], (), Hasher>,
    store: Store,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Clone, Copy)]
pub struct KeyCacheSettings {
    pub ttl: Duration,
    pub negative_capacity: u64,
    pub negative_ttl: Duration,
}

impl KeyCache {
    pub fn new(store: Store, s: KeyCacheSettings) -> KeyCache {
        KeyCache {
            valid: Cache::builder()
                .time_to_live(s.ttl)
                .max_capacity(1_000_000)
                .build_with_hasher(Hasher::default()),
            invalid: Cache::builder()
                .time_to_live(s.negative_ttl.min(s.ttl))
                .max_capacity(s.negative_capacity)
                .build_with_hasher(Hasher::default()),
            store,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Validates a well-formed key (see [`super::is_well_formed`]).
    pub async fn check(&self, key: &str) -> Result<KeyCheck, Arc<StoreError>> {
        let hash = super::hash(key);
        if let Some(id) = self.valid.get(&hash).await {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(KeyCheck::Valid(id));
        }
        if self.invalid.contains_key(&hash) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(KeyCheck::Invalid);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Boxed: the lookup's future (the cache's loader around a store
        // query) is ~5 KB, and every request's `request_filter` future,
        // which Pingora boxes and so copies whole, would carry it even when
        // the key is cached.
        Box::pin(self.look_up(hash)).await
    }

    /// A cache miss: asks the store (concurrent misses for a key share one query).
    async fn look_up(&self, hash: [u8; 32]) -> Result<KeyCheck, Arc<StoreError>> {
        let store = self.store.clone();
        let lookup = self
            .valid
            .try_get_with(hash, async move {
                match store.find_active_key(&super::hash_to_hex(&hash)).await {
                    Ok(Some(id)) => Ok(id),
                    Ok(None) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            })
            .await;
        match lookup {
            Ok(id) => Ok(KeyCheck::Valid(id)),
            Err(e) => match Arc::try_unwrap(e) {
                Ok(None) => {
                    self.invalid.insert(hash, ()).await;
                    Ok(KeyCheck::Invalid)
                }
                Ok(Some(err)) => Err(Arc::new(err)),
                Err(shared) => match shared.as_ref() {
                    None => {
                        self.invalid.insert(hash, ()).await;
                        Ok(KeyCheck::Invalid)
                    }
                    Some(_) => Err(Arc::new(StoreError::Unavailable(
                        "key lookup failed".into(),
                    ))),
                },
            },
        }
    }

    /// (hits, misses) since start.
    pub fn hit_counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Forgets a key at once (it was revoked or changed elsewhere).
    pub async fn invalidate_hash(&self, hash_hex: &str) {
        let Some(hash) = parse_hex32(hash_hex) else {
            return;
        };
        self.valid.invalidate(&hash).await;
        self.invalid.invalidate(&hash).await;
    }

    /// Forgets everything (the revocation channel was lost and may have missed signals).
    pub fn invalidate_all(&self) {
        self.valid.invalidate_all();
        self.invalid.invalidate_all();
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(s).ok().map(|h| *h.as_bytes())
}
