//! The durable spool: every accepted request record is written here before
//! it is queued for the database, so no record is lost to a full queue, a
//! database outage, a restart or a `SIGKILL`.
//!
//! # On-disk format
//!
//! The spool is a directory (`sink.spool_dir`) of segment files named
//! `<unix-millis>-<pid>-<seq>.rec2`. A segment is a sequence of records:
//!
//! ```text
//! [len: u32 LE][crc32(payload): u32 LE][payload: len bytes, a RequestRecord]
//! ```
//!
//! The payload is the binary record of [`super::record_bin`] (versioned in
//! its first byte). Earlier builds wrote other segments, which are still
//! replayed, never written:
//! - `.seg` holds JSON payloads;
//! - `.rec` holds binary records without `billed_response` (flag 16, which
//!   those builds refuse).
//!
//! Each build claims only the kinds it can read, so during an `-u` upgrade
//! the old process never takes (and dead-letters) the new one's segments:
//! segments are named `.rec2` since flag 16.
//!
//! Beside a segment being replayed, `<segment>.ack` holds the byte offset up
//! to which its records are known to be in the database (the ledger; 8 bytes,
//! u64 LE, replaced atomically by rename). `dead-letter.jsonl` collects
//! records the database rejects even alone, and undecodable bytes.
//!
//! # Invariants
//!
//! - A process appends only to its own *active* segment, which it holds an
//!   exclusive file lock on; a segment nobody holds locked is *sealed* and
//!   never written again. Two processes sharing the directory (an `-u`
//!   upgrade, a restart) therefore never write the same file.
//! - A segment is deleted only when every record in it is acknowledged by
//!   the database: either the writer saw each of its records written from
//!   the in-memory queue, or a replay read it to the end and wrote it all.
//! - Replay may write a record that is already in the database (the queue
//!   wrote it, or a replay was interrupted before its ledger moved); the
//!   store's writes are idempotent on the request id, so that is harmless.
//!   Hence the ledger is an optimisation: without it a segment is replayed
//!   from its start, and nothing is duplicated or lost.
//! - A torn write (a crash mid-append) can only be at the end of a segment:
//!   the reader stops at a record whose length runs past the end of the
//!   file. A record whose checksum does not match is copied to the dead
//!   letter file and skipped; a length that cannot be right ends the segment.
//!
//! # Durability
//!
//! An append is a `write(2)` into the page cache before the record is
//! queued: it survives the process being killed. Surviving power loss needs
//! the data on disk: the spool is `fsync`ed every `sink.spool_fsync_interval_ms`
//! (0 = after every append, the slowest and safest).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::store::RequestRecord;

/// Records larger than this are not accepted (they cannot be a real request record).
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
const HEADER_BYTES: usize = 8;
const DEAD_LETTER: &str = "dead-letter.jsonl";
/// Segments of binary records, the format written.
const SEGMENT_EXT: &str = "rec2";
/// Segments of binary records without flag 16, written by earlier versions;
/// read only.
const FLAGLESS_SEGMENT_EXT: &str = "rec";
/// Segments of JSON records, written by earlier versions; read only.
const JSON_SEGMENT_EXT: &str = "seg";

/// A segment's identity within the directory.
pub type SegmentId = std::sync::Arc<str>;

/// Spool errors.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Occurs when the spool directory or a segment cannot be written.
    #[error("spool I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// Occurs when a record cannot be encoded (never for a well-formed record).
    #[error("spool record too large or unencodable: {0}")]
    Encode(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes one record in the segment format.
pub fn encode(record: &RequestRecord, out: &mut Vec<u8>) -> Result<(), SpoolError> {
    out.clear();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    super::record_bin::write(record, out);
    let len = out.len() - HEADER_BYTES;
    if len > MAX_RECORD_BYTES {
        return Err(SpoolError::Encode(format!("{len} bytes")));
    }
    let crc = crc32fast::hash(&out[HEADER_BYTES..]);
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// What reading a segment found.
#[derive(Debug, Default)]
pub struct SegmentRead {
    /// Decoded records with the byte offset just past each.
    pub records: Vec<(RequestRecord, u64)>,
    /// Records skipped for a bad checksum or undecodable JSON.
    pub corrupt: u64,
    /// The segment ended in an incomplete record (a torn write).
    pub torn_tail: bool,
}

/// Reads the records of a segment from `offset` on. Corrupt records are
/// appended (as raw bytes: escaped text from a JSON segment, base64 from a
/// binary one) to the dead letter file in `dir`.
pub fn read_segment(dir: &Path, path: &Path, offset: u64) -> Result<SegmentRead, SpoolError> {
    let json = path.extension().is_some_and(|x| x == JSON_SEGMENT_EXT);
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut data = Vec::new();
    file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    file.read_to_end(&mut data).map_err(io_err(path))?;
    let mut out = SegmentRead::default();
    let mut pos = 0usize;
    while pos < data.len() {
        if data.len() - pos < HEADER_BYTES {
            out.torn_tail = true;
            break;
        }
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap_or_default());
        if len > MAX_RECORD_BYTES {
            // The length itself is damaged: nothing after it can be framed.
            out.corrupt += 1;
            dead_letter_raw(dir, &data[pos..], json, "unframeable tail")?;
            break;
        }
        let start = pos + HEADER_BYTES;
        if data.len() - start < len {
            out.torn_tail = true;
            break;
        }
        let payload = &data[start..start + len];
        pos = start + len;
        let end = offset + pos as u64;
        if crc32fast::hash(payload) != crc {
            out.corrupt += 1;
            dead_letter_raw(dir, payload, json, "bad checksum")?;
            continue;
        }
        let decoded = if json {
            serde_json::from_slice::<RequestRecord>(payload).map_err(|e| e.to_string())
        } else {
            super::record_bin::read(payload).map_err(|e| e.to_string())
        };
        match decoded {
            Ok(r) => out.records.push((r, end)),
            Err(e) => {
                out.corrupt += 1;
                dead_letter_raw(dir, payload, json, &format!("undecodable: {e}"))?;
            }
        }
    }
    Ok(out)
}

/// Appends a record the database refused to the dead letter file.
pub fn dead_letter(dir: &Path, record: &RequestRecord, why: &str) -> Result<(), SpoolError> {
    let line = serde_json::json!({"reason": why, "record": record});
    append_line(dir, &line.to_string())
}

/// Bytes that are not a record: a JSON segment's as text (what is left of
/// the document), a binary segment's in base64 (every byte, to decode by hand).
fn dead_letter_raw(dir: &Path, bytes: &[u8], json: bool, why: &str) -> Result<(), SpoolError> {
    use base64::Engine;
    let line = if json {
        serde_json::json!({"reason": why, "raw": String::from_utf8_lossy(bytes)})
    } else {
        let raw = base64::engine::general_purpose::STANDARD.encode(bytes);
        serde_json::json!({"reason": why, "raw_base64": raw})
    };
    append_line(dir, &line.to_string())
}

fn append_line(dir: &Path, line: &str) -> Result<(), SpoolError> {
    let path = dir.join(DEAD_LETTER);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    writeln!(f, "{line}").map_err(io_err(&path))
}

/// The acknowledged offset of a segment (0 when it has no ledger).
pub fn read_ack(segment: &Path) -> u64 {
    fs::read(ack_path(segment))
        .ok()
        .and_then(|b| {
            b.get(..8)
                .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
        })
        .unwrap_or(0)
}

/// Records that every record before `offset` is in the database.
pub fn write_ack(segment: &Path, offset: u64) -> Result<(), SpoolError> {
    let path = ack_path(segment);
    let tmp = path.with_extension("ack.tmp");
    fs::write(&tmp, offset.to_le_bytes()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

fn ack_path(segment: &Path) -> PathBuf {
    let mut p = segment.as_os_str().to_owned();
    p.push(".ack");
    PathBuf::from(p)
}

/// Removes a fully acknowledged segment and its ledger.
pub fn remove_segment(segment: &Path) {
    let _ = fs::remove_file(ack_path(segment));
    let _ = fs::remove_file(segment);
}

/// Sealed segments in the directory (oldest first) that no live process
/// holds: each is returned with its lock held, so no two replayers take it.
/// Every one is open at once: the replayer takes them one at a time instead
/// ([`segment_paths`], [`claim`]).
pub fn claim_sealed(dir: &Path, skip: impl Fn(&str) -> bool) -> Vec<(PathBuf, File)> {
    segment_paths(dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| !skip(&n.to_string_lossy())))
        .filter_map(|p| claim(&p).map(|f| (p, f)))
        .collect()
}

/// Every segment file in the directory, oldest first (names start with the
/// creation time).
pub fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return vec![];
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| {
                x == SEGMENT_EXT || x == FLAGLESS_SEGMENT_EXT || x == JSON_SEGMENT_EXT
            })
        })
        .collect();
    names.sort();
    names
}

/// The segment with its lock held, unless a live process holds it (being
/// written, or replayed by another process) or it is gone.
pub fn claim(segment: &Path) -> Option<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)
        .ok()?;
    f.try_lock().ok()?;
    Some(f)
}

fn id_of(name: &str) -> SegmentId {
    SegmentId::from(name)
}

/// Per-segment bookkeeping of the writer.
#[derive(Debug, Default)]
struct SegmentState {
    outstanding: u64,
    sealed: bool,
    /// Some record of it never made it to the queue: replay the whole segment.
    needs_replay: bool,
}

struct Active {
    id: SegmentId,
    path: PathBuf,
    /// Shared so that an fsync can run without the writer's lock.
    file: Arc<File>,
    len: u64,
}

/// The writer side, shared by every proxy thread.
pub struct SpoolWriter {
    dir: PathBuf,
    segment_max_bytes: u64,
    fsync_every_append: bool,
    state: Mutex<WriterState>,
    pid: u32,
}

struct WriterState {
    active: Option<Active>,
    seq: u64,
    segments: HashMap<SegmentId, SegmentState, foldhash::fast::RandomState>,
    dirty: bool,
    last_sync: Instant,
    /// Sealed segments written since the last fsync. Each keeps its file
    /// (and so its lock: no replayer takes it) until [`SpoolWriter::sync`]
    /// has made it durable.
    unsynced: Vec<Arc<File>>,
}

/// Segments handed to the replayer because a record in them was not queued.
pub type ReplayList = Vec<PathBuf>;

impl SpoolWriter {
    pub fn open(
        dir: &Path,
        segment_max_bytes: u64,
        fsync_every_append: bool,
    ) -> Result<SpoolWriter, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(SpoolWriter {
            dir: dir.to_path_buf(),
            segment_max_bytes: segment_max_bytes.max(4096),
            fsync_every_append,
            state: Mutex::new(WriterState {
                active: None,
                seq: 0,
                segments: HashMap::default(),
                dirty: false,
                last_sync: Instant::now(),
                unsynced: Vec::new(),
            }),
            pid: std::process::id(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file name of the segment being written (the replayer skips it).
    pub fn active_name(&self) -> String {
        self.lock()
            .active
            .as_ref()
            .and_then(|a| a.path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an encoded record (see [`encode`]); returns its segment.
    /// Only a `write(2)` happens under the lock (and an fsync when configured
    /// per append); segment rotation opens a new file. Interval fsyncs run
    /// outside the lock, so a proxy thread never waits for one.
    pub fn append(&self, encoded: &[u8]) -> Result<SegmentId, SpoolError> {
        let mut st = self.lock();
        let needs_new = st
            .active
            .as_ref()
            .is_none_or(|a| a.len >= self.segment_max_bytes);
        if needs_new {
            self.rotate(&mut st)?;
        }
        let active = st.active.as_mut().expect("rotate opened a segment");
        if let Err(e) = (&*active.file).write_all(encoded) {
            // A write cut short (a full disk, an I/O error) may have left part
            // of the record: cut it off, or every record appended after it
            // would be read from the wrong place. If even that fails, seal the
            // segment (its reader stops at the torn tail) and start anew.
            let err = io_err(&active.path)(e);
            if active.file.set_len(active.len).is_err() {
                let _ = self.rotate(&mut st);
            }
            return Err(err);
        }
        if self.fsync_every_append {
            active.file.sync_data().map_err(io_err(&active.path))?;
        }
        active.len += encoded.len() as u64;
        let id = active.id.clone();
        st.dirty = true;
        st.segments.entry(id.clone()).or_default().outstanding += 1;
        Ok(id)
    }

    fn rotate(&self, st: &mut WriterState) -> Result<(), SpoolError> {
        if let Some(old) = st.active.take() {
            // Sealed: its lock goes with the last handle, after the next sync
            // (at once when every append is synced already).
            if !self.fsync_every_append {
                st.unsynced.push(old.file);
            }
            if let Some(s) = st.segments.get_mut(&old.id) {
                s.sealed = true;
                if s.outstanding == 0 && !s.needs_replay {
                    remove_segment(&old.path);
                    st.segments.remove(&old.id);
                }
            }
        }
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // A name is never reused: create_new, and step past any that exists.
        let (name, path, file) = loop {
            st.seq += 1;
            let name = format!("{millis:016}-{}-{:06}.{SEGMENT_EXT}", self.pid, st.seq);
            let path = self.dir.join(&name);
            match OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(file) => break (name, path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        };
        file.try_lock().map_err(|e| SpoolError::Io {
            path: path.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        st.active = Some(Active {
            id: id_of(&name),
            path,
            file: Arc::new(file),
            len: 0,
        });
        st.segments.insert(id_of(&name), SegmentState::default());
        Ok(())
    }

    /// `n` records of `segment` are in the database.
    pub fn ack(&self, segment: &str, n: u64) {
        let mut st = self.lock();
        let Some(s) = st.segments.get_mut(segment) else {
            return;
        };
        s.outstanding = s.outstanding.saturating_sub(n);
        if s.sealed && s.outstanding == 0 && !s.needs_replay {
            st.segments.remove(segment);
            drop(st);
            remove_segment(&self.dir.join(segment));
        }
    }

    /// A record of `segment` was not queued: the segment must be replayed
    /// from the file once sealed.
    pub fn needs_replay(&self, segment: &str) {
        if let Some(s) = self.lock().segments.get_mut(segment) {
            s.needs_replay = true;
        }
    }

    /// A segment was replayed and removed: stop tracking it.
    pub fn forget_replayed(&self, segment: &str) {
        self.lock().segments.remove(segment);
    }

    /// Seals the active segment if it holds records that must be replayed,
    /// so the replayer can take it. Returns whether it did.
    pub fn seal_if_replay_needed(&self) -> bool {
        let mut st = self.lock();
        let needs = st
            .active
            .as_ref()
            .and_then(|a| st.segments.get(&a.id))
            .is_some_and(|s| s.needs_replay);
        if needs && self.rotate(&mut st).is_ok() {
            drop(st);
            // Durable, and unlocked for the replayer.
            self.sync();
            return true;
        }
        false
    }

    /// Whether a replayer must leave this segment alone: it is ours and its
    /// records are still on their way through the queue.
    pub fn is_in_flight(&self, segment: &str) -> bool {
        self.lock()
            .segments
            .get(segment)
            .is_some_and(|s| !s.needs_replay)
    }

    /// fsyncs the active segment if it was written since the last sync.
    /// The fsyncs run after the lock is released: appends carry on meanwhile
    /// (a write that lands during one is covered by the next).
    pub fn sync(&self) {
        let (sealed, active) = {
            let mut st = self.lock();
            if !st.dirty && st.unsynced.is_empty() {
                return;
            }
            let active = st
                .active
                .as_ref()
                .filter(|_| st.dirty)
                .map(|a| a.file.clone());
            st.dirty = false;
            st.last_sync = Instant::now();
            (std::mem::take(&mut st.unsynced), active)
        };
        for file in sealed {
            let _ = file.sync_data();
        }
        if let Some(file) = active {
            let _ = file.sync_data();
        }
    }

    /// Seals the active segment (shutdown): it is then replayable by the
    /// next process if anything in it is not acknowledged.
    pub fn close(&self) {
        let done = {
            let mut st = self.lock();
            st.active.take().and_then(|old| {
                // One fsync for it and every other sealed segment, below.
                st.unsynced.push(old.file);
                let s = st.segments.get_mut(&old.id)?;
                s.sealed = true;
                (s.outstanding == 0).then_some(old.path)
            })
        };
        self.sync();
        if let Some(path) = done {
            remove_segment(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn record(n: u32) -> RequestRecord {
        RequestRecord {
            model: format!("model-{n}"),
            input_tokens: i64::from(n),
            ..RequestRecord::plain()
        }
    }

    fn append(w: &SpoolWriter, r: &RequestRecord) -> SegmentId {
        let mut buf = Vec::new();
        encode(r, &mut buf).unwrap();
        w.append(&buf).unwrap()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == SEGMENT_EXT))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn records_read_back_in_order_after_the_writer_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::open(dir.path(), 1 << 20, false).unwrap();
        let recs: Vec<_> = (0..10).map(record).collect();
        for r in &recs {
            append(&w, r);
        }
        drop(w); // a crash: nothing acknowledged
        let segs = claim_sealed(dir.path(), |_| false);
        assert_eq!(segs.len(), 1);
        let read = read_segment(dir.path(), &segs[0].0, 0).unwrap();
        let got: Vec<_> = read.records.into_iter().map(|(r, _)| r).collect();
        assert_eq!(got, recs);
    }

    /// A write cut short (here by the file size limit, as a full disk cuts
    /// one) leaves no part of the record behind: the segment ends at the
    /// last whole record, so records appended later are read from the right
    /// place. The limit is set in a child process (this test, run again).
    #[test]
    fn a_write_cut_short_leaves_no_part_of_its_record() {
        const CHILD_DIR: &str = "MAJORDOMO_TEST_CUT_SHORT_DIR";
        if let Some(dir) = std::env::var_os(CHILD_DIR) {
            let dir = Path::new(&dir);
            let w = SpoolWriter::open(dir, 1 << 30, false).unwrap();
            let mut buf = Vec::new();
            encode(&record(7), &mut buf).unwrap();
            let mut whole = 0;
            while w.append(&buf).is_ok() {
                whole += buf.len() as u64;
                assert!(whole < 1 << 20, "the file size limit was not applied");
            }
            let seg = &segments(dir)[0];
            assert_eq!(fs::metadata(seg).unwrap().len(), whole);
            // The limit (8 blocks of 512 or 1024 bytes, by the shell) fell
            // inside a record, not between two.
            assert!(4096 % buf.len() != 0 && 8192 % buf.len() != 0);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"trap '' XFSZ; ulimit -f 8 && exec "$0" "$@""#)
            .arg(std::env::current_exe().unwrap())
            .args([
                "sink::spool::tests::a_write_cut_short_leaves_no_part_of_its_record",
                "--exact",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = read_segment(dir.path(), &segments(dir.path())[0], 0).unwrap();
        assert!(!read.records.is_empty());
        assert_eq!(read.corrupt, 0);
    }

    #[test]
    fn an_active_segment_is_never_claimed_by_a_replayer() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::open(dir.path(), 1 << 20, false).unwrap();
        append(&w, &record(1));
        assert!(
            claim_sealed(dir.path(), |_| false).is_empty(),
            "locked by its writer"
        );
        w.close();
    }

    #[test]
    fn a_fully_acknowledged_sealed_segment_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::open(dir.path(), 4096, false).unwrap();
        let mut ids = vec![];
        for i in 0..200 {
            ids.push(append(&w, &record(i)));
        }
        assert!(segments(dir.path()).len() > 1, "rotated");
        for id in &ids {
            w.ack(id, 1);
        }
        assert_eq!(segments(dir.path()).len(), 1, "only the active one is left");
        w.close();
        assert!(segments(dir.path()).is_empty());
    }

    #[test]
    fn a_torn_write_at_the_end_loses_only_the_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::open(dir.path(), 1 << 20, false).unwrap();
        for i in 0..3 {
            append(&w, &record(i));
        }
        drop(w);
        let seg = segments(dir.path()).remove(0);
        let mut buf = Vec::new();
        encode(&record(99), &mut buf).unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&buf[..buf.len() / 2]).unwrap();
        let read = read_segment(dir.path(), &seg, 0).unwrap();
        assert_eq!(read.records.len(), 3);
        assert!(read.torn_tail);
        assert_eq!(read.corrupt, 0);
    }

    #[test]
    fn a_bad_checksum_dead_letters_that_record_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::open(dir.path(), 1 << 20, false).unwrap();
        for i in 0..3 {
            append(&w, &record(i));
        }
        drop(w);
        let seg = segments(dir.path()).remove(0);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[HEADER_BYTES + 5] ^= 0xff; // inside the first payload
        fs::write(&seg, &bytes).unwrap();
        let read = read_segment(dir.path(), &seg, 0).unwrap();
        assert_eq!(read.corrupt, 1);
        assert_eq!(read.records.len(), 2);
        let dl = fs::read_to_string(dir.path().join(DEAD_LETTER)).unwrap();
        assert!(dl.contains("bad checksum"));
    }

    #[test]
    fn a_missing_ledger_means_replay_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::open(dir.path(), 1 << 20, false).unwrap();
        for i in 0..4 {
            append(&w, &record(i));
        }
        drop(w);
        let seg = segments(dir.path()).remove(0);
        let read = read_segment(dir.path(), &seg, 0).unwrap();
        write_ack(&seg, read.records[1].1).unwrap();
        assert_eq!(
            read_segment(dir.path(), &seg, read_ack(&seg))
                .unwrap()
                .records
                .len(),
            2
        );
        fs::remove_file(ack_path(&seg)).unwrap();
        assert_eq!(read_ack(&seg), 0);
        assert_eq!(
            read_segment(dir.path(), &seg, read_ack(&seg))
                .unwrap()
                .records
                .len(),
            4
        );
    }

    #[test]
    fn a_damaged_length_ends_the_segment_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::open(dir.path(), 1 << 20, false).unwrap();
        for i in 0..2 {
            append(&w, &record(i));
        }
        drop(w);
        let seg = segments(dir.path()).remove(0);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&seg, &bytes).unwrap();
        let read = read_segment(dir.path(), &seg, 0).unwrap();
        assert_eq!(read.records.len(), 0);
        assert_eq!(read.corrupt, 1);
    }

    #[test]
    fn a_json_segment_from_an_earlier_version_still_replays() {
        // Written by the JSON encoder this format replaced, and committed.
        let name = "0001795766401000-4242-000001.seg";
        let bytes = include_bytes!("../../tests/fixtures/spool/0001795766401000-4242-000001.seg");
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(name), bytes).unwrap();
        let w = SpoolWriter::open(dir.path(), 1 << 20, false).unwrap();
        append(&w, &record(1));
        w.close();
        let claimed = claim_sealed(dir.path(), |_| false);
        let json: Vec<_> = claimed
            .iter()
            .filter(|(p, _)| p.extension().is_some_and(|x| x == JSON_SEGMENT_EXT))
            .collect();
        assert_eq!(json.len(), 1, "claimed beside the binary segment");
        let read = read_segment(dir.path(), &json[0].0, 0).unwrap();
        assert_eq!(read.corrupt, 0);
        assert!(!read.torn_tail);
        let got: Vec<_> = read.records.into_iter().map(|(r, _)| r).collect();
        assert_eq!(got, RequestRecord::samples());
    }

    #[test]
    fn a_segment_of_an_earlier_binary_build_still_replays() {
        // A build before flag 16 named its segments `.rec`; a record without
        // the flag is the same bytes in both (`record_bin`'s tests).
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::open(dir.path(), 1 << 20, false).unwrap();
        for r in RequestRecord::samples() {
            append(&w, &r);
        }
        w.close();
        let written = segments(dir.path());
        assert_eq!(written.len(), 1);
        assert!(written[0].to_string_lossy().ends_with(".rec2"));
        let earlier = written[0].with_extension(FLAGLESS_SEGMENT_EXT);
        fs::rename(&written[0], &earlier).unwrap();
        let claimed = claim_sealed(dir.path(), |_| false);
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].0, earlier);
        let read = read_segment(dir.path(), &earlier, 0).unwrap();
        assert_eq!(read.corrupt, 0);
        let got: Vec<_> = read.records.into_iter().map(|(r, _)| r).collect();
        assert_eq!(got, RequestRecord::samples());
    }

    #[test]
    fn an_undecodable_binary_record_is_dead_lettered_whole() {
        let dir = tempfile::tempdir().unwrap();
        let w = SpoolWriter::open(dir.path(), 1 << 20, false).unwrap();
        append(&w, &record(1));
        drop(w);
        let seg = segments(dir.path()).remove(0);
        // A record of a version this build does not know, with a good checksum.
        let mut bytes = fs::read(&seg).unwrap();
        bytes[HEADER_BYTES] = 0xee;
        let crc = crc32fast::hash(&bytes[HEADER_BYTES..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        fs::write(&seg, &bytes).unwrap();
        let read = read_segment(dir.path(), &seg, 0).unwrap();
        assert_eq!((read.records.len(), read.corrupt), (0, 1));
        let dl = fs::read_to_string(dir.path().join(DEAD_LETTER)).unwrap();
        let line: serde_json::Value = serde_json::from_str(dl.trim()).unwrap();
        assert!(
            line["reason"].as_str().unwrap().contains("version 238"),
            "{line}"
        );
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line["raw_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(raw, &bytes[HEADER_BYTES..]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append,
        AckOldest,
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![4 => Just(Op::Append), 2 => Just(Op::AckOldest), 1 => Just(Op::Crash)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Model: the set of records appended and not acknowledged. After
        /// any sequence of appends, acks and crashes (drop without close,
        /// then reopen), replaying every sealed segment from its ledger
        /// yields every unacknowledged record (possibly plus some
        /// acknowledged ones, which idempotent writes absorb) and nothing
        /// that was never appended.
        #[test]
        fn spool_matches_a_model_under_appends_acks_and_crashes(ops in proptest::collection::vec(op(), 1..80)) {
            let dir = tempfile::tempdir().unwrap();
            let mut w = SpoolWriter::open(dir.path(), 2048, false).unwrap();
            let mut pending: Vec<(Uuid, SegmentId)> = vec![];
            let mut all = std::collections::HashSet::new();
            let mut n = 0;
            for op in ops {
                match op {
                    Op::Append => {
                        let r = record(n);
                        n += 1;
                        all.insert(r.id);
                        let seg = append(&w, &r);
                        pending.push((r.id, seg));
                    }
                    Op::AckOldest => {
                        if !pending.is_empty() {
                            let (_, seg) = pending.remove(0);
                            w.ack(&seg, 1);
                        }
                    }
                    Op::Crash => {
                        drop(w);
                        w = SpoolWriter::open(dir.path(), 2048, false).unwrap();
                        // After a crash the in-memory acks are gone: every
                        // pending record must come back from the files.
                    }
                }
            }
            drop(w);
            let mut replayed = std::collections::HashSet::new();
            for (path, _lock) in claim_sealed(dir.path(), |_| false) {
                let read = read_segment(dir.path(), &path, read_ack(&path)).unwrap();
                prop_assert_eq!(read.corrupt, 0);
                for (r, _) in read.records {
                    replayed.insert(r.id);
                }
            }
            for (id, _) in &pending {
                prop_assert!(replayed.contains(id), "lost an unacknowledged record");
            }
            for id in &replayed {
                prop_assert!(all.contains(id), "replayed a record never appended");
            }
        }
    }
}
