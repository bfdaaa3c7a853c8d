//! The process's log output: env_logger lines on stderr, except the access
//! log (one line per request), which is handed to a writer thread.
//!
//! A proxy thread must never wait on I/O: a stderr write is a system call on
//! every request, and a stalled reader of stderr (a full pipe to a log
//! collector) would stop every request behind it. Access lines are appended
//! to a bounded buffer instead, and a writer thread writes what gathered every
//! [`FLUSH_EVERY`]. When the buffer is full, lines are dropped and counted
//! (`majordomo_log_lines_dropped_total`, and a line saying how many once the
//! output moves again); request rows never depend on this log. Other lines
//! (start-up, warnings, errors) are rare and still go straight to stderr.
//!
//! The writer thread starts with the first access line, so a daemonized
//! server (which forks after logging is set up) starts its own.
//!
//! The access line is formatted by [`access`] straight into that buffer, in
//! the bytes env_logger would write for it (same header, same JSON), but
//! without `fmt` and env_logger's per-record work, which cost ~3 600
//! instructions per request for this one line (now ~500).

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, LoggingConfig};

/// The `log` target of the per-request access line.
pub const ACCESS_TARGET: &str = "majordomo::access";

/// How often the writer thread writes what gathered: one write per interval
/// under load, instead of one per request.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Most bytes of access lines waiting for the writer; past this, lines are
/// dropped rather than the proxy waiting or memory growing.
pub const PENDING_CAP: usize = 4 << 20;

/// Capacity of a write buffer kept between writes.
const KEEP_CAPACITY: usize = 256 << 10;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The access log [`init`] set up; without it, [`access`] goes through `log`.
static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

struct AccessLog {
    lines: Arc<DeferredLines>,
    /// The configured filters let `majordomo::access` through at info.
    enabled: bool,
    json: bool,
}

/// Access lines dropped because the log output did not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Installs the global logger for `config.logging`. Keep the handle: it
/// writes out the waiting access lines when the process ends.
pub fn init(config: &Config) -> LogOutput {
    let deferred = DeferredLines::new(Box::new(io::stderr()), FLUSH_EVERY, PENDING_CAP);
    let logger = builder(&config.logging).build();
    // The access line bypasses `log` (see [`access`]); the filters decide once.
    let enabled = log::Log::enabled(
        &logger,
        &log::Metadata::builder()
            .level(log::Level::Info)
            .target(ACCESS_TARGET)
            .build(),
    );
    let max_level = logger.filter();
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max_level);
        let _ = ACCESS_LOG.set(AccessLog {
            lines: deferred.clone(),
            enabled,
            json: config.logging.format == "json",
        });
    }
    LogOutput { deferred }
}

/// What Pingora's own error and warning lines name a request by (its
/// `ProxyHttp::request_summary`). Pingora's default is the raw path with its
/// query, which can carry a credential (Gemini's `?key=`): the query is left
/// out, and the request id put in so the line can be matched to the row.
pub fn request_summary(request_id: uuid::Uuid, method: &str, path: &str, host: &str) -> String {
    format!(
        "{method} {path}, Host: {host}, request {}",
        request_id.hyphenated()
    )
}

/// One request's access line.
pub struct AccessLine<'a> {
    pub request_id: uuid::Uuid,
    pub method: &'a str,
    pub path: &'a str,
    pub provider: &'a str,
    pub status: u16,
    pub elapsed_ms: u64,
}

impl fmt::Display for AccessLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}ms",
            self.request_id.hyphenated(),
            self.method,
            self.path,
            self.provider,
            self.status,
            self.elapsed_ms
        )
    }
}

/// Logs the access line (target [`ACCESS_TARGET`], level info).
pub fn access(line: &AccessLine<'_>) {
    match ACCESS_LOG.get() {
        Some(log) if log.enabled => {
            let now = SystemTime::now();
            let json = log.json;
            log.lines
                .push_with(|bytes, clock| write_access_line(bytes, clock, now, json, line));
        }
        Some(_) => {}
        None => log::info!(target: ACCESS_TARGET, "{line}"),
    }
}

/// The header's UTC time to the second ("2026-11-27T23:05:11"), formatted
/// again only when the second changes.
#[derive(Default)]
struct Clock {
    second: Option<u64>,
    text: [u8; 19],
}

impl Clock {
    fn text(&mut self, unix_seconds: u64) -> &[u8; 19] {
        if self.second != Some(unix_seconds) {
            let time = chrono::DateTime::from_timestamp(unix_seconds as i64, 0).unwrap_or_default();
            let mut text = String::with_capacity(19);
            let _ = write!(text, "{}", time.format("%Y-%m-%dT%H:%M:%S"));
            if let Ok(bytes) = <[u8; 19]>::try_from(text.as_bytes()) {
                self.text = bytes;
                self.second = Some(unix_seconds);
            }
        }
        &self.text
    }
}

/// The bytes env_logger's format (or the JSON format of [`builder`]) gives
/// the access line.
fn write_access_line(
    out: &mut Vec<u8>,
    clock: &mut Clock,
    now: SystemTime,
    json: bool,
    line: &AccessLine<'_>,
) {
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let time = clock.text(since_epoch.as_secs());
    let mut number = itoa::Buffer::new();
    if json {
        out.extend_from_slice(br#"{"ts":""#);
        out.extend_from_slice(time);
        let millis = since_epoch.subsec_millis();
        out.extend_from_slice(&[
            b'.',
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
        ]);
        out.extend_from_slice(br#"Z","level":"INFO","target":""#);
        out.extend_from_slice(ACCESS_TARGET.as_bytes());
        out.extend_from_slice(br#"","msg":""#);
    } else {
        out.push(b'[');
        out.extend_from_slice(time);
        out.extend_from_slice(b"Z INFO  ");
        out.extend_from_slice(ACCESS_TARGET.as_bytes());
        out.extend_from_slice(b"] ");
    }
    // The id's text needs no escaping.
    out.extend_from_slice(&crate::gateway::ctx::hyphenated_lower(&line.request_id));
    for field in [line.method, line.path, line.provider] {
        out.push(b' ');
        if json {
            json_escape_into(out, field);
        } else {
            out.extend_from_slice(field.as_bytes());
        }
    }
    out.push(b' ');
    out.extend_from_slice(number.format(line.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(number.format(line.elapsed_ms).as_bytes());
    out.extend_from_slice(if json { &b"ms\"}\n"[..] } else { b"ms\n" });
}

/// Appends `s` escaped for the inside of a JSON string.
fn json_escape_into(out: &mut Vec<u8>, s: &str) {
    let _infallible = json_escaped(s, |piece| {
        out.extend_from_slice(piece.as_bytes());
        Ok::<(), ()>(())
    });
}

/// Hands `write` the pieces of `s` escaped for the inside of a JSON string:
/// the text as is, but quotes, backslashes and control bytes (for both JSON
/// log formatters).
fn json_escaped<E>(s: &str, mut write: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let mut unicode = *b"\\u00..";
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => {
                unicode[4] = HEX[usize::from(b >> 4)];
                unicode[5] = HEX[usize::from(b & 15)];
                std::str::from_utf8(&unicode).unwrap_or_default()
            }
            _ => continue,
        };
        // Only ASCII bytes are escaped: `i` and `i + 1` are char boundaries.
        write(&s[plain..i])?;
        write(escaped)?;
        plain = i + 1;
    }
    write(&s[plain..])
}

fn builder(config: &LoggingConfig) -> env_logger::Builder {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&config.level);
    // Pingora is chatty at info about every proxy error it already reports to us.
    builder.filter_module("pingora_proxy", log::LevelFilter::Warn);
    builder.filter_module("pingora_core", log::LevelFilter::Warn);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    if config.format == "json" {
        builder.format(|buf, record| {
            writeln!(
                buf,
                r#"{{"ts":"{}","level":"{}","target":{},"msg":{}}}"#,
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                record.level().as_str(),
                JsonString(format_args!("{}", record.target())),
                JsonString(*record.args()),
            )
        });
    }
    builder
}

/// What [`init`] returns: ends the access log cleanly.
pub struct LogOutput {
    deferred: Arc<DeferredLines>,
}

impl LogOutput {
    /// Writes out the waiting access lines; waits at most `timeout` (the
    /// output may be stalled: the process must still end).
    pub fn flush(&self, timeout: Duration) {
        self.deferred.flush(timeout);
    }
}

/// Lines waiting for the writer thread, and the thread's output.
pub struct DeferredLines {
    pending: Mutex<Pending>,
    /// Wakes the writer early (a flush was asked for).
    wake: Condvar,
    /// Tells flushers that a write finished.
    written: Condvar,
    output: Mutex<Option<Box<dyn Write + Send>>>,
    writer: Once,
    every: Duration,
    cap: usize,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Dropped since the writer last reported it.
    dropped: u64,
    flushes_asked: u64,
    flushes_done: u64,
    /// The writer thread could not start: lines are written by their caller.
    no_writer: bool,
    clock: Clock,
}

impl DeferredLines {
    pub fn new(output: Box<dyn Write + Send>, every: Duration, cap: usize) -> Arc<DeferredLines> {
        Arc::new(DeferredLines {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
            output: Mutex::new(Some(output)),
            writer: Once::new(),
            every,
            cap,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one line (it is dropped, and counted, if the buffer is full).
    pub fn push(self: &Arc<Self>, line: &[u8]) {
        self.push_with(|bytes, _| bytes.extend_from_slice(line));
    }

    /// Queues the line `write` appends, formatted in place under the lock.
    fn push_with(self: &Arc<Self>, write: impl FnOnce(&mut Vec<u8>, &mut Clock)) {
        self.writer.call_once(|| self.start_writer());
        let mut pending = self.lock();
        if pending.no_writer {
            let mut line = Vec::new();
            write(&mut line, &mut pending.clock);
            drop(pending);
            self.write_out(&line, 0);
            return;
        }
        let Pending { bytes, clock, .. } = &mut *pending;
        let start = bytes.len();
        write(bytes, clock);
        if bytes.len() > self.cap {
            bytes.truncate(start);
            pending.dropped += 1;
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start_writer(self: &Arc<Self>) {
        let lines = self.clone();
        let started = std::thread::Builder::new()
            .name("majordomo-log".into())
            .spawn(move || lines.run_writer());
        if let Err(e) = started {
            self.lock().no_writer = true;
            self.write_out(
                format!("majordomo: cannot start the log writer thread ({e}); access lines are written directly\n").as_bytes(),
                0,
            );
        }
    }

    fn run_writer(&self) {
        let mut batch = Vec::new();
        loop {
            let (dropped, asked) = {
                let mut pending = self.lock();
                if pending.flushes_asked == pending.flushes_done {
                    pending = self
                        .wake
                        .wait_timeout(pending, self.every)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                std::mem::swap(&mut pending.bytes, &mut batch);
                (std::mem::take(&mut pending.dropped), pending.flushes_asked)
            };
            self.write_out(&batch, dropped);
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch = Vec::new();
            }
            let mut pending = self.lock();
            pending.flushes_done = pending.flushes_done.max(asked);
            self.written.notify_all();
        }
    }

    /// Write errors are ignored: there is nowhere left to report them.
    fn write_out(&self, bytes: &[u8], dropped: u64) {
        let mut output = self.output.lock().unwrap_or_else(|p| p.into_inner());
        let output: &mut dyn Write = match output.as_mut() {
            Some(output) => output.as_mut(),
            None => return,
        };
        if dropped > 0 {
            let _ = writeln!(
                output,
                "majordomo: {dropped} access log lines dropped: the log output did not keep up"
            );
        }
        if !bytes.is_empty() {
            let _ = output.write_all(bytes);
        }
        let _ = output.flush();
    }

    /// Waits until everything queued before this call is written, or
    /// `timeout` passes.
    pub fn flush(&self, timeout: Duration) {
        if !self.writer.is_completed() {
            return;
        }
        let deadline = Instant::now() + timeout;
        let mut pending = self.lock();
        if pending.no_writer {
            return;
        }
        pending.flushes_asked += 1;
        let asked = pending.flushes_asked;
        self.wake.notify_one();
        while pending.flushes_done < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            pending = self
                .written
                .wait_timeout(pending, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Formats as a JSON string (quoted, escaped) without building it first.
struct JsonString<'a>(fmt::Arguments<'a>);

impl fmt::Display for JsonString<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        fmt::write(&mut JsonEscape(f), self.0)?;
        f.write_char('"')
    }
}

struct JsonEscape<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for JsonEscape<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        json_escaped(s, |piece| self.0.write_str(piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An output that hands each write to the test, and can be made to stall.
    #[derive(Clone)]
    struct Recorder {
        writes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Recorder {
        fn new() -> Recorder {
            Recorder {
                writes: Arc::default(),
                gate: Arc::default(),
            }
        }

        fn text(&self) -> String {
            String::from_utf8(self.writes.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _stalled_while_held = self.gate.lock().unwrap();
            self.writes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_by_the_writer_thread() {
        let out = Recorder::new();
        let lines = DeferredLines::new(Box::new(out.clone()), Duration::from_secs(3600), 1 << 20);
        for i in 0..100 {
            lines.push(format!("line {i}\n").as_bytes());
        }
        // Nothing is written by the caller; the flush wakes the writer early.
        assert_eq!(out.text(), "");
        lines.flush(Duration::from_secs(10));
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(out.text(), want);
    }

    #[test]
    fn the_writer_writes_on_its_own_every_interval() {
        let out = Recorder::new();
        let lines = DeferredLines::new(Box::new(out.clone()), Duration::from_millis(5), 1 << 20);
        lines.push(b"one\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.text() != "one\n" {
            assert!(Instant::now() < deadline, "never written: {:?}", out.text());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_stalled_output_never_blocks_a_caller_and_drops_are_counted_then_reported() {
        let out = Recorder::new();
        let lines = DeferredLines::new(Box::new(out.clone()), Duration::from_millis(1), 100);
        let stall = out.gate.lock().unwrap();
        lines.push(b"first line, taken by the writer, which then stalls\n");
        // Wait until the writer holds the batch (it blocks inside the write).
        std::thread::sleep(Duration::from_millis(50));
        let before = dropped_lines();
        let (done, finished) = mpsc::channel();
        let producer = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    lines.push(b"0123456789\n");
                }
                done.send(()).unwrap();
            })
        };
        // 1 000 pushes return while the output is stalled: 9 fit in 100 bytes.
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("a push waited for the stalled output");
        producer.join().unwrap();
        // The counter is process-wide: other tests may add to it.
        assert!(dropped_lines() - before >= 991);
        drop(stall);
        lines.flush(Duration::from_secs(10));
        let text = out.text();
        assert!(text.starts_with("first line"), "{text}");
        assert!(
            text.contains("majordomo: 991 access log lines dropped"),
            "{text}"
        );
        assert_eq!(text.matches("0123456789\n").count(), 9, "{text}");
    }

    #[test]
    fn a_flush_gives_up_on_a_stalled_output() {
        let out = Recorder::new();
        let lines = DeferredLines::new(Box::new(out.clone()), Duration::from_millis(1), 1 << 20);
        let _stall = out.gate.lock().unwrap();
        lines.push(b"stuck\n");
        let started = Instant::now();
        lines.flush(Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_flush_before_any_line_returns_at_once() {
        let lines = DeferredLines::new(Box::new(Recorder::new()), FLUSH_EVERY, PENDING_CAP);
        lines.flush(Duration::from_secs(3600));
    }

    /// What env_logger (configured as [`init`] does) writes for `line`.
    fn env_logger_line(format: &str, line: &AccessLine<'_>) -> String {
        let out = Recorder::new();
        let config = LoggingConfig {
            format: format.into(),
            level: "info".into(),
            ..LoggingConfig::default()
        };
        let logger = builder(&config)
            .target(env_logger::Target::Pipe(Box::new(out.clone())))
            .build();
        log::Log::log(
            &logger,
            &log::Record::builder()
                .level(log::Level::Info)
                .target(ACCESS_TARGET)
                .args(format_args!("{line}"))
                .build(),
        );
        out.text()
    }

    fn fast_line(json: bool, clock: &mut Clock, line: &AccessLine<'_>) -> String {
        let mut out = Vec::new();
        write_access_line(&mut out, clock, SystemTime::now(), json, line);
        String::from_utf8(out).unwrap()
    }

    /// The header's time, which may differ between two lines by a second.
    fn without_time(json: bool, line: &str) -> String {
        let (at, len) = if json { (7, 24) } else { (1, 20) };
        format!("{}<time>{}", &line[..at], &line[at + len..])
    }

    #[test]
    fn the_access_line_is_written_as_env_logger_writes_it() {
        let mut clock = Clock::default();
        let paths = [
            "/v1/chat/completions",
            "/v1/odd\"path\\with\tcontrol\u{1}bytes/é",
        ];
        for path in paths {
            let line = AccessLine {
                request_id: uuid::Uuid::parse_str("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap(),
                method: "POST",
                path,
                provider: "openai",
                status: 200,
                elapsed_ms: 1234,
            };
            for (format, json) in [("text", false), ("json", true)] {
                let want = env_logger_line(format, &line);
                let got = fast_line(json, &mut clock, &line);
                assert_eq!(without_time(json, &got), without_time(json, &want));
                if json {
                    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
                    assert_eq!(v["msg"], format!("{line}"));
                    let ts = v["ts"].as_str().unwrap();
                    chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.3fZ")
                        .unwrap_or_else(|e| panic!("{ts}: {e}"));
                } else {
                    let ts = &got[1..20];
                    chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S")
                        .unwrap_or_else(|e| panic!("{ts}: {e}"));
                }
            }
        }
    }

    #[test]
    fn the_header_time_follows_the_clock() {
        let mut clock = Clock::default();
        assert_eq!(&clock.text(0)[..], b"1970-01-01T00:00:00");
        assert_eq!(&clock.text(1_795_820_711)[..], b"2026-11-27T23:05:11");
        assert_eq!(&clock.text(1_795_820_712)[..], b"2026-11-27T23:05:12");
        let mut out = Vec::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_820_712_045);
        let line = AccessLine {
            request_id: uuid::Uuid::nil(),
            method: "GET",
            path: "/",
            provider: "gemini",
            status: 404,
            elapsed_ms: 0,
        };
        write_access_line(&mut out, &mut clock, at, true, &line);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(r#"{"ts":"2026-11-27T23:05:12.045Z","#),
            "{text}"
        );
    }

    #[test]
    fn json_strings_are_escaped_as_they_are_formatted() {
        let text = format!(
            "{}",
            JsonString(format_args!("a \"q\" \\ {}\n\t\u{1}é", "x"))
        );
        assert_eq!(text, r#""a \"q\" \\ x\n\t\u0001é""#);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v, "a \"q\" \\ x\n\t\u{1}é");
    }
}
