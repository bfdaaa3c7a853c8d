//! The request-log sink: the proxy hands finished records over without
//! waiting; a Pingora background service batches them into the store; the
//! [`spool`] makes every accepted record durable first.
//!
//! `logging` calls [`SinkSender::submit`]: the record is appended to the
//! spool (a `write(2)`, so it survives the process being killed) and then
//! `try_send` on a bounded channel. [`SinkService`] takes records off the
//! channel, closes a batch at `sink.batch_max_events` records or
//! `sink.batch_timeout_ms` after its first, and writes it in one store call
//! (`COPY` on PostgreSQL, one transaction on SQLite), then acknowledges the
//! records' spool segments. When the channel is full, or the database fails,
//! the records are left to the spool: their segments are marked for replay,
//! and the replayer writes them once the database answers. A record whose
//! spool append failed too waits in the bounded in-memory [`held`] hold
//! until the spool or the database takes it. Writes are
//! idempotent on the request id, so nothing is ever written twice. A record
//! the database rejects even alone goes to the dead letter file. Every
//! outcome is counted in [`SinkStats`]. The service also deletes
//! background-response claims past their keeping time (hourly).

pub mod bodies;
mod held;
mod record_bin;
pub mod spool;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::store::{RequestRecord, Store};
use held::{Held, HeldRecords};
use spool::{SegmentId, SpoolWriter};

/// Counters of what happened to records (exported as metrics).
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records accepted from the proxy.
    pub queued: AtomicU64,
    /// Rows newly written to the store (from the queue or a replay).
    pub written: AtomicU64,
    /// Records the store already had (a replay of rows already written); not an error.
    pub duplicates: AtomicU64,
    /// Records left to the spool because the channel was full or the database failed.
    pub spooled: AtomicU64,
    /// Records written from the spool.
    pub replayed: AtomicU64,
    /// Records the store rejected even alone, or undecodable spool bytes.
    pub dead_lettered: AtomicU64,
    /// Records lost: neither the spool nor the database could take them and
    /// the in-memory hold was full (`sink.memory_hold_max_bytes`). Must stay 0.
    pub dropped: AtomicU64,
    /// Spool appends that failed (the record still went to the queue).
    pub spool_errors: AtomicU64,
    /// Batch write attempts that failed.
    pub failed_writes: AtomicU64,
    /// Bodies not stored in S3 (their rows keep them inline).
    pub body_upload_failures: AtomicU64,
}

impl SinkStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A record on its way to the store, with the spool segment holding its copy
/// and the bytes it is charged for (its spool encoding's length).
struct Queued {
    record: RequestRecord,
    segment: Option<SegmentId>,
    bytes: usize,
}

thread_local! {
    /// Encoding buffer reused by each proxy thread.
    static ENCODE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Records a write gave back, and why.
struct Unwritten {
    records: Vec<RequestRecord>,
    /// The database failed (else a rejected record could not be dead-lettered).
    database_down: bool,
}

/// The proxy's side of the sink.
#[derive(Clone)]
pub struct SinkSender {
    tx: mpsc::Sender<Queued>,
    spool: Arc<SpoolWriter>,
    stats: Arc<SinkStats>,
    held: Arc<HeldRecords>,
    /// Bytes of the records in the channel and in batches being written.
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
}

impl SinkSender {
    /// Makes the record durable and hands it over, without waiting.
    pub fn submit(&self, record: RequestRecord) {
        let (segment, encoded_bytes) = ENCODE_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            let segment = spool::encode(&record, &mut buf).and_then(|()| self.spool.append(&buf));
            (segment, buf.len())
        });
        let segment = match segment {
            Ok(s) => Some(s),
            Err(e) => {
                self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
                log::error!("request log spool write failed: {e}");
                None
            }
        };
        let queued = Queued {
            record,
            segment,
            bytes: encoded_bytes,
        };
        // Counted before the send, so the writer never subtracts first. Past
        // the bound (bodies make records large) the channel counts as full.
        let before = self
            .queued_bytes
            .fetch_add(encoded_bytes, Ordering::Relaxed);
        let sent = if before + encoded_bytes > self.max_queued_bytes {
            Err(mpsc::error::TrySendError::Full(queued))
        } else {
            self.tx.try_send(queued)
        };
        match sent {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(q)) | Err(mpsc::error::TrySendError::Closed(q)) => {
                self.queued_bytes
                    .fetch_sub(encoded_bytes, Ordering::Relaxed);
                match q.segment {
                    Some(seg) => {
                        self.spool.needs_replay(&seg);
                        self.stats.spooled.fetch_add(1, Ordering::Relaxed);
                    }
                    None => hold_or_drop(&self.held, &self.stats, q.record, encoded_bytes),
                }
            }
        }
    }

    /// Records waiting in the channel.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Bytes of the records in the channel and in batches being written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }

    /// (records, bytes) held in memory because neither the spool nor the
    /// database could take them.
    pub fn held(&self) -> (usize, usize) {
        self.held.size()
    }
}

/// Keeps a record that exists nowhere else in the bounded in-memory hold, or
/// counts it lost when the hold is full.
fn hold_or_drop(held: &HeldRecords, stats: &SinkStats, record: RequestRecord, bytes: usize) {
    if let Err(refused) = held.hold(Held { record, bytes }) {
        let lost = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // A disk and a database both failing can drop every record: the log
        // (perhaps on that disk) gets the first and then fewer and fewer.
        if lost.is_power_of_two() {
            log::error!(
                "request log record {} lost ({lost} so far): neither the spool nor the database \
                 takes records and sink.memory_hold_max_bytes are already held in memory",
                refused.record.id
            );
        }
    }
}

/// The length of `record`'s spool encoding: what holding it costs.
fn encoded_len(record: &RequestRecord) -> usize {
    let mut buf = Vec::new();
    let _ = spool::encode(record, &mut buf);
    buf.len()
}

#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub channel_capacity: usize,
    pub max_events: usize,
    pub timeout: Duration,
    /// Batches written concurrently.
    pub writers: usize,
    pub spool_dir: PathBuf,
    pub spool_segment_max_bytes: u64,
    /// 0: fsync after every append.
    pub spool_fsync_interval: Duration,
    /// Where bodies go when `logging.body_storage` is s3.
    pub bodies: Option<Arc<bodies::BodyStore>>,
    /// Bound of the in-memory hold for records neither the spool nor the
    /// database can take ([`held`]).
    pub memory_hold_max_bytes: usize,
    /// Bound of the bytes in the channel and in batches being written; past
    /// it records go to the spool only, as when the channel is full.
    pub channel_max_bytes: usize,
}

/// The background writer and replayer.
pub struct SinkService {
    rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    core: Arc<SinkCore>,
}

/// What the writer and the replayer share.
pub struct SinkCore {
    store: Store,
    settings: SinkSettings,
    spool: Arc<SpoolWriter>,
    stats: Arc<SinkStats>,
    held: Arc<HeldRecords>,
    queued_bytes: Arc<AtomicUsize>,
    /// Set when a body upload failed: until then bodies stay in their rows.
    s3_paused_until: Mutex<Option<Instant>>,
    /// Set when the database just failed: (when it failed, until when queued
    /// batches go straight to the spool).
    degraded: Mutex<Option<(Instant, Instant)>>,
    /// Set when a graceful shutdown begins: batches stop waiting out their
    /// window (the process ends after the grace period, whatever is queued).
    shutting_down: AtomicBool,
}

/// Longest wait between two looks at a batch being collected, so that a
/// shutdown cuts a long batch window short.
const BATCH_NAP_MAX: Duration = Duration::from_millis(100);

/// Builds the two ends of the sink; fails when the spool directory is unusable.
pub fn channel(
    store: Store,
    settings: SinkSettings,
) -> Result<(SinkSender, SinkService), spool::SpoolError> {
    let spool = Arc::new(SpoolWriter::open(
        &settings.spool_dir,
        settings.spool_segment_max_bytes,
        settings.spool_fsync_interval.is_zero(),
    )?);
    let (tx, rx) = mpsc::channel(settings.channel_capacity);
    let stats = Arc::new(SinkStats::default());
    let held = Arc::new(HeldRecords::new(settings.memory_hold_max_bytes));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    Ok((
        SinkSender {
            tx,
            spool: spool.clone(),
            stats: stats.clone(),
            held: held.clone(),
            queued_bytes: queued_bytes.clone(),
            max_queued_bytes: settings.channel_max_bytes,
        },
        SinkService {
            rx: Mutex::new(Some(rx)),
            core: Arc::new(SinkCore {
                store,
                settings,
                spool,
                stats,
                held,
                queued_bytes,
                s3_paused_until: Mutex::new(None),
                degraded: Mutex::new(None),
                shutting_down: AtomicBool::new(false),
            }),
        },
    ))
}

const DEGRADED_FOR: Duration = Duration::from_secs(2);
/// How long S3 is left alone after a failed body upload.
const S3_PAUSE: Duration = Duration::from_secs(30);
const REPLAY_EVERY: Duration = Duration::from_millis(500);
/// How often old background-response claims are deleted (at start, then
/// hourly; each replica does, which is harmless).
const FORGET_CLAIMS_EVERY: Duration = Duration::from_secs(3600);

impl SinkService {
    pub fn stats(&self) -> Arc<SinkStats> {
        self.core.stats.clone()
    }

    /// The shared core, e.g. for an explicit replay.
    pub fn core(&self) -> Arc<SinkCore> {
        self.core.clone()
    }
}

impl SinkCore {
    /// Takes up to a batch off the channel: waits for the first record, then
    /// sleeps until the batch's time is up (or takes what is there when it is
    /// already full), so senders do not wake the writer once per record.
    async fn next_batch(&self, rx: &mut mpsc::Receiver<Queued>) -> Option<Vec<Queued>> {
        let first = rx.recv().await?;
        let max = self.settings.max_events;
        let mut batch = Vec::with_capacity(max.min(4096));
        batch.push(first);
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        loop {
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let now = tokio::time::Instant::now();
            if batch.len() >= max || now >= deadline || self.shutting_down.load(Ordering::Relaxed) {
                break;
            }
            // Check back a few times per batch window: a full batch need not
            // wait for the whole window, nor a shutdown.
            let nap = (deadline - now)
                .min(self.settings.timeout / 4 + Duration::from_millis(1))
                .min(BATCH_NAP_MAX);
            tokio::time::sleep(nap).await;
        }
        Some(batch)
    }

    fn degraded(&self) -> bool {
        self.degraded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|(_, until)| Instant::now() < until)
    }

    fn set_degraded(&self) {
        let now = Instant::now();
        *self.degraded.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, now + DEGRADED_FOR));
    }

    /// A write that began at `started` succeeded. Only one that began after
    /// the last failure proves the database is back: with several writers, a
    /// batch already under way when another failed says nothing about now.
    fn recovered(&self, started: Instant) {
        let mut degraded = self.degraded.lock().unwrap_or_else(|p| p.into_inner());
        if degraded.is_some_and(|(failed_at, _)| started >= failed_at) {
            *degraded = None;
        }
    }

    /// Writes a batch from the queue; on a database failure the records stay
    /// in the spool for the replayer.
    async fn write_queued(&self, batch: Vec<Queued>) {
        let bytes: usize = batch.iter().map(|q| q.bytes).sum();
        let (records, segments): (Vec<RequestRecord>, Vec<Option<SegmentId>>) =
            batch.into_iter().map(|q| (q.record, q.segment)).unzip();
        if self.degraded() {
            self.leave_to_spool(records, &segments);
        } else {
            match self.write_records(records, false).await {
                Ok(()) => self.ack(&segments),
                Err(unwritten) => self.leave_to_spool(unwritten.records, &segments),
            }
        }
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn leave_to_spool(&self, records: Vec<RequestRecord>, segments: &[Option<SegmentId>]) {
        let mut unspooled = Vec::new();
        for (record, seg) in records.into_iter().zip(segments) {
            match seg {
                Some(seg) => {
                    self.spool.needs_replay(seg);
                    self.stats.spooled.fetch_add(1, Ordering::Relaxed);
                }
                None => unspooled.push(record),
            }
        }
        // These exist only in memory: hold them until the spool or the
        // database takes them (`retry_held`).
        for record in unspooled {
            let bytes = encoded_len(&record);
            hold_or_drop(&self.held, &self.stats, record, bytes);
        }
    }

    /// Moves held records into the spool if it takes writes again (from
    /// there the replayer writes them), else tries the database. Returns
    /// false when records are still held because the database failed.
    async fn retry_held(&self) -> bool {
        self.respool_held();
        // Each chunk held at the start is tried once per tick: one holding a
        // record that can be neither stored nor dead-lettered goes to the
        // back, and the rest still go in.
        let (held, _) = self.held.size();
        for _ in 0..held.div_ceil(self.settings.max_events.max(1)) {
            let chunk = self.held.oldest(self.settings.max_events);
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            let records = chunk.into_iter().map(|h| h.record).collect();
            match self.write_records(records, false).await {
                Ok(()) => self.held.remove_oldest(n),
                Err(unwritten) if unwritten.database_down => return false,
                Err(_) => self.held.requeue_oldest(n),
            }
        }
        true
    }

    /// Appends held records to the spool, oldest first, until an append
    /// fails; returns how many are still held.
    fn respool_held(&self) -> usize {
        let held = self.held.take_all();
        if held.is_empty() {
            return 0;
        }
        let mut buf = Vec::new();
        let mut left = Vec::new();
        let mut spool_fails = false;
        for h in held {
            if !spool_fails {
                match spool::encode(&h.record, &mut buf).and_then(|()| self.spool.append(&buf)) {
                    Ok(seg) => {
                        self.spool.needs_replay(&seg);
                        self.stats.spooled.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Too large for the spool: only the database can take it.
                    Err(spool::SpoolError::Encode(_)) => {}
                    Err(spool::SpoolError::Io { .. }) => spool_fails = true,
                }
            }
            left.push(h);
        }
        let n = left.len();
        self.held.put_back(left);
        n
    }

    fn ack(&self, segments: &[Option<SegmentId>]) {
        let mut counts: HashMap<&SegmentId, u64, foldhash::fast::RandomState> = HashMap::default();
        for seg in segments.iter().flatten() {
            *counts.entry(seg).or_default() += 1;
        }
        for (seg, n) in counts {
            self.spool.ack(seg, n);
        }
    }

    /// One attempt to write records; a rejected batch is split to isolate
    /// (and dead-letter) the poison record. `Err` gives the records back
    /// when the database is unavailable, or when a rejected record could not
    /// be dead-lettered (the others went in; all are idempotent to rewrite).
    async fn write_records(
        &self,
        mut records: Vec<RequestRecord>,
        replay: bool,
    ) -> Result<(), Unwritten> {
        if let Some(bodies) = &self.settings.bodies {
            self.offload_bodies(bodies, &mut records).await;
        }
        let n = records.len() as u64;
        let batch = Arc::new(records);
        let started = Instant::now();
        match self.store.insert_requests(batch.clone()).await {
            Ok(written) => {
                self.recovered(started);
                self.count_written(n, written, replay);
                Ok(())
            }
            Err(e) if !e.blames_the_data() => {
                self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                self.set_degraded();
                log::warn!("request log write failed ({e}); {n} records left to the spool");
                Err(Unwritten {
                    records: Arc::try_unwrap(batch).unwrap_or_else(|b| (*b).clone()),
                    database_down: true,
                })
            }
            Err(e) => {
                log::warn!("request log batch rejected ({e}); isolating the bad record");
                let mut kept = false;
                for record in batch.iter() {
                    let one = Arc::new(vec![record.clone()]);
                    match self.store.insert_requests(one).await {
                        Ok(written) => self.count_written(1, written, replay),
                        Err(e) if !e.blames_the_data() => {
                            self.set_degraded();
                            return Err(Unwritten {
                                records: batch.iter().cloned().collect(),
                                database_down: true,
                            });
                        }
                        Err(e) => {
                            if let Err(why) =
                                spool::dead_letter(&self.settings.spool_dir, record, &e.to_string())
                            {
                                // Acknowledging it now would lose it: the
                                // batch is given back, tried again later. The
                                // database is up: the others still go in.
                                log::error!(
                                    "request log record {} rejected ({e}) and the dead-letter file \
                                     cannot be written ({why}); kept",
                                    record.id
                                );
                                kept = true;
                                continue;
                            }
                            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            log::error!(
                                "request log record {} rejected and dead-lettered: {e}",
                                record.id
                            );
                        }
                    }
                }
                if kept {
                    return Err(Unwritten {
                        records: batch.iter().cloned().collect(),
                        database_down: false,
                    });
                }
                Ok(())
            }
        }
    }

    /// Uploads bodies to S3 (a few at a time) before the rows are written;
    /// a row points at its object only once the object is stored. After a
    /// failed upload S3 is left alone for [`S3_PAUSE`]: meanwhile rows keep
    /// their bodies inline rather than each wait out an upload's time budget.
    async fn offload_bodies(&self, bodies: &Arc<bodies::BodyStore>, records: &mut [RequestRecord]) {
        let mut s3_failed = self
            .s3_paused_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until);
        for chunk in records.chunks_mut(16) {
            if s3_failed {
                let kept = chunk
                    .iter()
                    .filter(|r| r.request_body.is_some() || r.response_body.is_some())
                    .count();
                self.stats
                    .body_upload_failures
                    .fetch_add(kept as u64, Ordering::Relaxed);
                continue;
            }
            let uploads: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, r)| bodies::BodyStore::prepare(r).map(|obj| (i, obj)))
                .map(|(i, (key, bytes))| {
                    let bodies = bodies.clone();
                    (
                        i,
                        key.clone(),
                        tokio::spawn(async move { bodies.put(&key, bytes).await }),
                    )
                })
                .collect();
            for (i, key, upload) in uploads {
                let failure = match upload.await {
                    Ok(Ok(())) => {
                        bodies::BodyStore::stored(&mut chunk[i], key);
                        continue;
                    }
                    Ok(Err(e)) => e,
                    Err(e) => format!("upload task: {e}"),
                };
                s3_failed = true;
                *self
                    .s3_paused_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + S3_PAUSE);
                self.stats
                    .body_upload_failures
                    .fetch_add(1, Ordering::Relaxed);
                log::warn!("body upload failed ({failure}); the row keeps its bodies inline");
            }
        }
    }

    fn count_written(&self, attempted: u64, written: u64, replay: bool) {
        self.stats.written.fetch_add(written, Ordering::Relaxed);
        if replay {
            self.stats.replayed.fetch_add(written, Ordering::Relaxed);
        }
        self.stats
            .duplicates
            .fetch_add(attempted.saturating_sub(written), Ordering::Relaxed);
    }

    /// Replays every sealed segment nobody else is writing or delivering:
    /// left over by an earlier process, or ours and marked for replay.
    /// Returns false when the database failed (try again later).
    pub async fn replay_once(&self) -> bool {
        if !self.replay_sealed().await {
            return false;
        }
        // Our own records waiting for replay are sealed only once the older
        // segments went in: while the database fails they stay in the active
        // segment, instead of a new file every tick of a long outage.
        if self.spool.seal_if_replay_needed() {
            return self.replay_sealed().await;
        }
        true
    }

    /// Replays the sealed segments one at a time, oldest first: one file is
    /// open whatever the backlog, so a long outage cannot use up the
    /// process's descriptors. Stops at the first failed write.
    async fn replay_sealed(&self) -> bool {
        let dir = self.settings.spool_dir.clone();
        let paths = tokio::task::spawn_blocking(move || spool::segment_paths(&dir))
            .await
            .unwrap_or_default();
        for path in paths {
            let spool = self.spool.clone();
            let p = path.clone();
            let claimed = tokio::task::spawn_blocking(move || {
                let name = p.file_name()?.to_string_lossy().into_owned();
                if name == spool.active_name() || spool.is_in_flight(&name) {
                    return None;
                }
                spool::claim(&p)
            })
            .await
            .ok()
            .flatten();
            let Some(_lock) = claimed else {
                continue;
            };
            if !self.replay_segment(&path).await {
                return false;
            }
        }
        true
    }

    /// Deletes the background-response claims older than
    /// [`crate::store::BILLED_RESPONSES_KEPT`]; a failure waits for the next
    /// round.
    async fn forget_old_claims(&self) {
        let before = chrono::Utc::now() - crate::store::BILLED_RESPONSES_KEPT;
        match self.store.forget_billed_responses(before).await {
            Ok(0) => {}
            Ok(n) => log::info!("forgot {n} background-response claims made before {before}"),
            Err(e) => log::warn!("cannot delete old background-response claims: {e}"),
        }
    }

    /// Writes one claimed segment's records (from its ledger on), then
    /// removes it. Returns false when the database failed.
    async fn replay_segment(&self, path: &std::path::Path) -> bool {
        let dir = self.settings.spool_dir.clone();
        let p = path.to_path_buf();
        let read = tokio::task::spawn_blocking(move || {
            let offset = spool::read_ack(&p);
            spool::read_segment(&dir, &p, offset)
        })
        .await;
        let read = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                log::error!("cannot read spool segment {}: {e}", path.display());
                return true;
            }
            Err(_) => return true,
        };
        self.stats
            .dead_lettered
            .fetch_add(read.corrupt, Ordering::Relaxed);
        let mut records = read.records;
        let total = records.len();
        while !records.is_empty() {
            let take = records.len().min(self.settings.max_events);
            let chunk: Vec<_> = records.drain(..take).collect();
            let end = chunk.last().map(|(_, end)| *end).unwrap_or(0);
            let recs: Vec<RequestRecord> = chunk.into_iter().map(|(r, _)| r).collect();
            if let Err(unwritten) = self.write_records(recs, true).await {
                // A record that can be neither stored nor dead-lettered holds
                // its segment back; while the database is up, the replay goes
                // on with the next one.
                return !unwritten.database_down;
            }
            if let Err(e) = spool::write_ack(path, end) {
                log::warn!("spool ledger not written: {e}");
            }
        }
        if total > 0 {
            log::info!(
                "replayed {total} records from spool segment {}",
                path.display()
            );
        }
        spool::remove_segment(path);
        if let Some(name) = path.file_name() {
            self.spool.forget_replayed(&name.to_string_lossy());
        }
        true
    }
}

#[async_trait]
impl BackgroundService for SinkService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let core = self.core.clone();
        // A file-size limit (`ulimit -f`, systemd's LimitFSIZE) must fail a
        // spool append as a full disk does, not kill the process and every
        // open stream with SIGXFSZ: a listener replaces the signal's default
        // action for the rest of the process's life.
        #[cfg(unix)]
        if let Err(e) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
        {
            log::warn!("cannot take over SIGXFSZ ({e}): a file-size limit would end the process");
        }
        // The replayer and the fsync timer run beside the writer.
        let background = tokio::spawn({
            let core = core.clone();
            async move {
                let mut replay_tick = tokio::time::interval(REPLAY_EVERY);
                let mut forgotten_at: Option<Instant> = None;
                loop {
                    replay_tick.tick().await;
                    if forgotten_at.is_none_or(|t| t.elapsed() >= FORGET_CLAIMS_EVERY) {
                        forgotten_at = Some(Instant::now());
                        // Beside the replay: a database that hangs must not hold it.
                        let core = core.clone();
                        tokio::spawn(async move { core.forget_old_claims().await });
                    }
                    // The replay doubles as the probe that ends a degraded spell.
                    let started = Instant::now();
                    if core.retry_held().await && core.replay_once().await {
                        core.recovered(started);
                    } else {
                        core.set_degraded();
                    }
                }
            }
        });
        // The fsync timer has its own task, so a long replay during an outage
        // never delays it, and the fsync itself runs on the blocking pool.
        // It also watches for the shutdown: from then on batches are written
        // as soon as they are taken, within the grace period.
        let syncer = tokio::spawn({
            let core = core.clone();
            let spool = core.spool.clone();
            let every = core
                .settings
                .spool_fsync_interval
                .max(Duration::from_millis(10));
            async move {
                let mut sync_tick = tokio::time::interval(every);
                let mut shutdown_seen = false;
                loop {
                    tokio::select! {
                        _ = sync_tick.tick() => {}
                        _ = shutdown.changed(), if !shutdown_seen => {
                            shutdown_seen = true;
                            core.shutting_down.store(true, Ordering::Relaxed);
                            // Pingora ends the process without running this
                            // service's end: say now what memory alone holds.
                            let (held, _) = core.held.size();
                            if held > 0 {
                                log::error!(
                                    "{held} request log records are held in memory (neither the \
                                     spool nor the database takes them): they are lost if the \
                                     process ends before either does"
                                );
                            }
                        }
                    }
                    let spool = spool.clone();
                    let _ = tokio::task::spawn_blocking(move || spool.sync()).await;
                }
            }
        });
        // Shutdown is not a reason to stop: requests still draining during
        // the grace period keep logging, and whatever is not written when the
        // process ends is in the spool for the next start. Up to `writers`
        // batches are in flight; acknowledgements are counts per spool
        // segment, so batches may commit in any order.
        let writers = Arc::new(tokio::sync::Semaphore::new(core.settings.writers.max(1)));
        let mut in_flight = tokio::task::JoinSet::new();
        while let Some(batch) = core.next_batch(&mut rx).await {
            let Ok(permit) = writers.clone().acquire_owned().await else {
                break;
            };
            while in_flight.try_join_next().is_some() {}
            let core = core.clone();
            in_flight.spawn(async move {
                core.write_queued(batch).await;
                drop(permit);
            });
        }
        while in_flight.join_next().await.is_some() {}
        background.abort();
        syncer.abort();
        // The replayer may be inside a write of held records: let it stop
        // before they are appended here.
        let _ = background.await;
        let lost = core.respool_held();
        if lost > 0 {
            log::error!(
                "{lost} request log records lost at exit: neither the spool nor the database took them"
            );
        }
        core.spool.sync();
        core.spool.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StorageConfig, StorageDriver};

    fn core(dir: &std::path::Path) -> Arc<SinkCore> {
        sink(dir).1.core()
    }

    fn sink(dir: &std::path::Path) -> (SinkSender, SinkService) {
        let mut storage = StorageConfig {
            driver: Some(StorageDriver::Sqlite),
            ..StorageConfig::default()
        };
        storage.sqlite.path = dir.join("m.db");
        let store = Store::open(&storage).unwrap();
        channel(
            store,
            SinkSettings {
                channel_capacity: 8,
                max_events: 10,
                timeout: Duration::from_millis(10),
                writers: 2,
                spool_dir: dir.join("spool"),
                spool_segment_max_bytes: 1 << 20,
                spool_fsync_interval: Duration::from_secs(1),
                bodies: None,
                memory_hold_max_bytes: 1 << 20,
                channel_max_bytes: 1 << 20,
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_batchs_bytes_are_given_back_once_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, service) = sink(dir.path());
        let core = service.core();
        core.store.migrate().await.unwrap();
        for _ in 0..3 {
            tx.submit(RequestRecord {
                id: uuid::Uuid::now_v7(),
                ..RequestRecord::default()
            });
        }
        assert!(tx.queued_bytes() > 0);
        let mut rx = service.rx.lock().unwrap().take().unwrap();
        let batch = core.next_batch(&mut rx).await.unwrap();
        assert_eq!(batch.len(), 3);
        core.write_queued(batch).await;
        assert_eq!(tx.queued_bytes(), 0);
        assert_eq!(SinkStats::get(&core.stats.written), 3);
    }

    #[test]
    fn only_a_write_begun_after_the_failure_ends_a_degraded_spell() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path());
        let before = Instant::now() - Duration::from_millis(1);
        core.set_degraded();
        assert!(core.degraded());
        // A batch that was already under way when another writer failed.
        core.recovered(before);
        assert!(core.degraded());
        core.recovered(Instant::now());
        assert!(!core.degraded());
    }
}
