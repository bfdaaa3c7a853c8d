//! Revocation across replicas: a revoked key stops working on every gateway
//! within about a second, not after the cache TTL.
//!
//! PostgreSQL: `keys revoke` (from any process) sends `NOTIFY majordomo_keys,
//! '<key hash>'` in the revoking transaction; this service `LISTEN`s on a
//! dedicated connection and evicts the key from the local cache. When that
//! connection is lost the listener reconnects with backoff, and on every
//! (re)connect drops the whole cache: notifications sent meanwhile may have
//! been missed, so every key is validated again. The connection must answer a
//! query every 5 s: one that died silently is replaced within ~10 s. While
//! the database is away
//! the cache keeps serving (a revocation needs the database too); the cache
//! TTL bounds the worst case.
//! SQLite (one machine, possibly several processes during an upgrade): the
//! store is polled every 250 ms for newly revoked keys.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::cache::KeyCache;
use crate::config::{StorageConfig, StorageDriver};
use crate::store::postgres::{pg_config, KEYS_CHANNEL};
use crate::store::Store;

pub struct RevocationListener {
    pub storage: StorageConfig,
    pub store: Store,
    pub keys: Arc<KeyCache>,
}

const POLL_EVERY: Duration = Duration::from_millis(250);

/// How often the PostgreSQL listener's connection must answer a query (and
/// how long it has to), or be replaced.
const LISTENER_CHECK_EVERY: Duration = Duration::from_secs(5);

#[async_trait]
impl BackgroundService for RevocationListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let work = async {
            match self.storage.effective_driver() {
                StorageDriver::Postgres => self.listen_postgres().await,
                StorageDriver::Sqlite => self.poll_store().await,
            }
        };
        tokio::select! {
            _ = work => {}
            _ = shutdown.changed() => {}
        }
    }
}

impl RevocationListener {
    async fn listen_postgres(&self) {
        let Ok(config) = pg_config(&self.storage.postgres) else {
            return;
        };
        let mut backoff = Duration::from_millis(250);
        loop {
            match config.connect(tokio_postgres::NoTls).await {
                Ok((client, mut connection)) => {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    let driver = tokio::spawn(async move {
                        let mut messages =
                            futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(m) = messages.next().await {
                            if tx.send(m).is_err() {
                                break;
                            }
                        }
                        // The connection ended: closing the channel tells the listener.
                    });
                    if client
                        .batch_execute(&format!("LISTEN {KEYS_CHANNEL}"))
                        .await
                        .is_ok()
                    {
                        backoff = Duration::from_millis(250);
                        // Anything revoked while we were not listening.
                        self.keys.invalidate_all();
                        log::info!("listening for key revocations");
                        let mut check = tokio::time::interval(LISTENER_CHECK_EVERY);
                        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        check.tick().await;
                        loop {
                            tokio::select! {
                                msg = rx.recv() => match msg {
                                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                        self.keys.invalidate_hash(n.payload()).await;
                                        log::info!("key revoked elsewhere: evicted from the cache");
                                    }
                                    Some(Ok(_)) => {}
                                    Some(Err(_)) | None => break,
                                },
                                // A connection can die without a word (a NAT or load
                                // balancer forgetting it): a listener that only waits
                                // would never know, and miss every revocation.
                                _ = check.tick() => {
                                    let answered = tokio::time::timeout(
                                        LISTENER_CHECK_EVERY,
                                        client.simple_query("SELECT 1"),
                                    )
                                    .await;
                                    if !matches!(answered, Ok(Ok(_))) {
                                        log::warn!("key revocation listener: the database stopped answering");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    driver.abort();
                    drop(client);
                    log::warn!("key revocation listener disconnected; reconnecting");
                }
                Err(e) => log::warn!("key revocation listener cannot connect: {e}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn poll_store(&self) {
        let mut since = Utc::now() - chrono::Duration::seconds(2);
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let now = Utc::now();
            // Overlap the windows a little: a revocation is evicted twice rather than missed.
            match self.store.revoked_since(since).await {
                Ok(hashes) => {
                    for h in hashes {
                        self.keys.invalidate_hash(&h).await;
                    }
                    since = now - chrono::Duration::seconds(2);
                }
                Err(e) => log::warn!("revocation poll failed: {e}"),
            }
        }
    }
}
