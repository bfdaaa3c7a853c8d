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
    /// Counts revocation signals: a lookup that saw it move while it asked
    /// the store may have cached the key just after it was revoked.
    revocations: AtomicU64,
    /// Tests hold a lookup here, after the store answered and before the
    /// cache keeps the answer: where a revocation can slip in.
    #[cfg(test)]
    answered: std::sync::Mutex<Option<(Arc<tokio::sync::Notify>, Arc<tokio::sync::Semaphore>)>>,
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
            revocations: AtomicU64::new(0),
            #[cfg(test)]
            answered: std::sync::Mutex::new(None),
        }
    }

    /// Validates a well-formed key (see [`super::is_well_formed`]).
    pub async fn check(&self, key: &str) -> Result<KeyCheck, Arc<StoreError>> {
        let hash = super::hash_remembered(key);
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

    /// A cache miss: asks the store (concurrent misses for a key share one
    /// query). A revocation signalled meanwhile may have landed after the
    /// store answered, and the answer would then be cached for the whole TTL:
    /// it is dropped and the store asked again (a few times at most; the
    /// cache is left without the key either way).
    async fn look_up(&self, hash: [u8; 32]) -> Result<KeyCheck, Arc<StoreError>> {
        let mut tries = 0;
        loop {
            let seen = self.revocations.load(Ordering::Acquire);
            let answer = self.look_up_once(hash).await;
            if self.revocations.load(Ordering::Acquire) == seen {
                return answer;
            }
            self.valid.invalidate(&hash).await;
            self.invalid.invalidate(&hash).await;
            tries += 1;
            if tries == 3 {
                return answer;
            }
        }
    }

    async fn look_up_once(&self, hash: [u8; 32]) -> Result<KeyCheck, Arc<StoreError>> {
        let store = self.store.clone();
        #[cfg(test)]
        let answered = self.answered.lock().unwrap().clone();
        let lookup = self
            .valid
            .try_get_with(hash, async move {
                let found = store.find_active_key(&super::hash_to_hex(&hash)).await;
                #[cfg(test)]
                if let Some((reached, go)) = answered {
                    reached.notify_one();
                    go.acquire().await.unwrap().forget();
                }
                match found {
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
        self.revocations.fetch_add(1, Ordering::AcqRel);
        self.valid.invalidate(&hash).await;
        self.invalid.invalidate(&hash).await;
    }

    /// Forgets everything (the revocation channel was lost and may have missed signals).
    pub fn invalidate_all(&self) {
        self.revocations.fetch_add(1, Ordering::AcqRel);
        self.valid.invalidate_all();
        self.invalid.invalidate_all();
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(s).ok().map(|h| *h.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StorageConfig, StorageDriver};
    use crate::store::NewKey;

    /// A key revoked while a lookup of it is between the store's answer and
    /// the cache keeping it: the lookup's own request may pass (it began
    /// before the revocation), the next one must not.
    #[tokio::test]
    async fn a_key_revoked_during_its_lookup_is_not_cached_as_valid() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = StorageConfig {
            driver: Some(StorageDriver::Sqlite),
            ..StorageConfig::default()
        };
        storage.sqlite.path = dir.path().join("m.db");
        let store = Store::open(&storage).unwrap();
        store.migrate().await.unwrap();
        let key = super::super::generate().unwrap();
        let stored = store
            .create_key(NewKey {
                name: "race",
                description: None,
                key_hash: &key.hash,
                key_hint: &key.hint,
            })
            .await
            .unwrap();
        let cache = Arc::new(KeyCache::new(
            store.clone(),
            KeyCacheSettings {
                ttl: Duration::from_secs(300),
                negative_capacity: 100,
                negative_ttl: Duration::from_secs(300),
            },
        ));
        let reached = Arc::new(tokio::sync::Notify::new());
        let go = Arc::new(tokio::sync::Semaphore::new(0));
        *cache.answered.lock().unwrap() = Some((reached.clone(), go.clone()));
        let first = tokio::spawn({
            let (cache, key) = (cache.clone(), key.plaintext.clone());
            async move { cache.check(&key).await.unwrap() }
        });
        // The store has answered "valid"; the revocation and its signal land
        // before the cache keeps that answer.
        reached.notified().await;
        store.revoke_key(stored.id).await.unwrap().unwrap();
        cache.invalidate_hash(&key.hash).await;
        *cache.answered.lock().unwrap() = None;
        go.add_permits(1);
        first.await.unwrap();
        assert_eq!(
            cache.check(&key.plaintext).await.unwrap(),
            KeyCheck::Invalid,
            "a revoked key must not stay valid for the cache's TTL"
        );
    }
}
