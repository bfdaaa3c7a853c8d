//! The request-log sink: the proxy hands finished records over without
//! waiting; a Pingora background service batches them into the store.
//!
//! `logging` calls [`SinkSender::submit`], a `try_send` on a bounded channel.
//! [`SinkService`] takes records off the channel, closes a batch at
//! `sink.batch_max_events` records or `sink.batch_timeout_ms` after its first
//! record, and writes it in one store call (`COPY` on PostgreSQL, one
//! transaction on SQLite). Writes are idempotent on the request id, so a batch
//! retried after an ambiguous failure never duplicates a row. Transient
//! failures are retried with jittered backoff; a batch the database rejects is
//! split to isolate the poison record. Every outcome is counted in
//! [`SinkStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::store::{RequestRecord, Store, StoreError};

/// Counters of what happened to records (exported as metrics).
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records accepted from the proxy.
    pub queued: AtomicU64,
    /// Rows newly written to the store.
    pub written: AtomicU64,
    /// Records the store already had (a retried batch); not an error.
    pub duplicates: AtomicU64,
    /// Records the store rejected even alone (kept in the log, never retried forever).
    pub dead_lettered: AtomicU64,
    /// Records lost because the channel was full or closed. Must stay 0.
    pub dropped: AtomicU64,
    /// Batch write attempts that failed and were retried.
    pub retries: AtomicU64,
}

impl SinkStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The proxy's side of the sink.
#[derive(Clone)]
pub struct SinkSender {
    tx: mpsc::Sender<RequestRecord>,
    stats: Arc<SinkStats>,
}

impl SinkSender {
    /// Hands a record over without waiting.
    pub fn submit(&self, record: RequestRecord) {
        match self.tx.try_send(record) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(r)) | Err(mpsc::error::TrySendError::Closed(r)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                log::error!("request log channel full: record {} dropped", r.id);
            }
        }
    }

    /// Records waiting in the channel.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub max_events: usize,
    pub timeout: Duration,
}

/// The background writer.
pub struct SinkService {
    rx: Mutex<Option<mpsc::Receiver<RequestRecord>>>,
    store: Store,
    settings: BatchSettings,
    stats: Arc<SinkStats>,
}

/// Builds the two ends of the sink.
pub fn channel(
    capacity: usize,
    store: Store,
    settings: BatchSettings,
) -> (SinkSender, SinkService) {
    let (tx, rx) = mpsc::channel(capacity);
    let stats = Arc::new(SinkStats::default());
    (
        SinkSender {
            tx,
            stats: stats.clone(),
        },
        SinkService {
            rx: Mutex::new(Some(rx)),
            store,
            settings,
            stats,
        },
    )
}

impl SinkService {
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// Takes up to a batch off the channel: waits for the first record, then
    /// for more until the batch is full or its time is up. `None` when the
    /// channel is closed and empty.
    async fn next_batch(
        &self,
        rx: &mut mpsc::Receiver<RequestRecord>,
    ) -> Option<Vec<RequestRecord>> {
        let first = rx.recv().await?;
        let mut batch = Vec::with_capacity(self.settings.max_events.min(4096));
        batch.push(first);
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        while batch.len() < self.settings.max_events {
            // Take what is already there without a timer per record.
            while batch.len() < self.settings.max_events {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if batch.len() >= self.settings.max_events {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        Some(batch)
    }

    /// Writes a batch, retrying transient failures with jittered backoff and
    /// isolating records the database rejects.
    pub async fn write_batch(&self, batch: Vec<RequestRecord>) {
        let batch = Arc::new(batch);
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.store.insert_requests(batch.clone()).await {
                Ok(written) => {
                    self.count_written(batch.len() as u64, written);
                    return;
                }
                Err(e) if e.is_transient() => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "request log write failed ({e}); retrying {} records",
                        batch.len()
                    );
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    log::warn!("request log batch rejected ({e}); isolating the bad record");
                    self.write_one_by_one(&batch).await;
                    return;
                }
            }
        }
    }

    async fn write_one_by_one(&self, batch: &[RequestRecord]) {
        for record in batch {
            let one = Arc::new(vec![record.clone()]);
            let mut backoff = Duration::from_millis(50);
            loop {
                match self.store.insert_requests(one.clone()).await {
                    Ok(written) => {
                        self.count_written(1, written);
                        break;
                    }
                    Err(StoreError::Rejected(why))
                    | Err(StoreError::Migration { message: why, .. }) => {
                        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        log::error!(
                            "request log record rejected by the database and dead-lettered: {why}; record: {}",
                            serde_json::to_string(record).unwrap_or_default()
                        );
                        break;
                    }
                    Err(e) => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        log::warn!("request log write failed ({e}); retrying");
                        tokio::time::sleep(jitter(backoff)).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    fn count_written(&self, attempted: u64, written: u64) {
        self.stats.written.fetch_add(written, Ordering::Relaxed);
        self.stats
            .duplicates
            .fetch_add(attempted.saturating_sub(written), Ordering::Relaxed);
    }
}

/// 50–150 % of `d`, so replicas that failed together do not retry together.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 1];
    let _ = getrandom::fill(&mut b);
    d.mul_f64(0.5 + f64::from(b[0]) / 255.0)
}

#[async_trait]
impl BackgroundService for SinkService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // Shutdown is not a reason to stop: requests still draining during the
        // grace period keep logging, and the loop ends when every sender is gone.
        while let Some(batch) = self.next_batch(&mut rx).await {
            self.write_batch(batch).await;
        }
    }
}
