//! Prometheus metrics: what the gateway did, per provider, and the state of
//! the sink, the key cache and the price table.
//!
//! Per-request series are recorded in `logging`; gauges and counters owned
//! by other modules (sink stats, cache hits) are read at scrape time. The
//! `model` label is the matched price id, or `unpriced`, so client-chosen
//! model names cannot grow the series without bound. Served at `/metrics` on
//! `metrics.port`, or on the main port when that is 0.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use prometheus::{
    Counter, CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::keys::cache::KeyCache;
use crate::pricing::live::LivePrices;
use crate::provider::Provider;
use crate::sink::{SinkSender, SinkStats};
use crate::store::RequestRecord;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    ttfb: HistogramVec,
    tokens: IntCounterVec,
    cost: CounterVec,
    upstream_errors: IntCounterVec,
    /// Each provider's series of the per-provider metrics, in
    /// `Provider::ALL` order, looked up once: a `with_label_values` hashes
    /// its labels and takes a lock on every call (about 300 instructions,
    /// five or more times per request). Each is made on its first use, so a
    /// series still appears only once something was counted in it.
    by_provider: [ProviderSeries; Provider::ALL.len()],
    sources: OnceLock<Sources>,
}

#[derive(Default)]
struct ProviderSeries {
    duration: OnceLock<Histogram>,
    ttfb: OnceLock<Histogram>,
    /// In `TOKEN_KINDS` order.
    tokens: [OnceLock<IntCounter>; 5],
    cost: OnceLock<Counter>,
    upstream_errors: OnceLock<IntCounter>,
}

const TOKEN_KINDS: [&str; 5] = ["input", "output", "cached", "cache_creation", "reasoning"];

/// Applies `apply` to a series: the one in `cell` (made by `make` on first
/// use), or a fresh lookup for a provider with no cell.
fn series<T>(cell: Option<&OnceLock<T>>, make: impl Fn() -> T, apply: impl FnOnce(&T)) {
    match cell {
        Some(cell) => apply(cell.get_or_init(make)),
        None => apply(&make()),
    }
}

/// State owned elsewhere, read when scraped.
struct Sources {
    sink: SinkSender,
    keys: Arc<KeyCache>,
    prices: Arc<LivePrices>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "majordomo_requests_total",
                "Requests by provider, priced model and status",
            ),
            &["provider", "model", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "majordomo_request_duration_seconds",
                "Time from request to the end of the response",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("valid metric");
        let ttfb = HistogramVec::new(
            HistogramOpts::new(
                "majordomo_time_to_first_byte_seconds",
                "Time from request to the first response body byte",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new("majordomo_tokens_total", "Tokens by provider and kind (input includes cached and cache_creation; output includes reasoning)"),
            &["provider", "kind"],
        )
        .expect("valid metric");
        let cost = CounterVec::new(
            Opts::new(
                "majordomo_cost_usd_total",
                "Cost of priced requests in USD (the exact figures are in the request log)",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "majordomo_upstream_errors_total",
                "Requests that failed at the upstream (unreachable, timeout, cut mid-response)",
            ),
            &["provider"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(ttfb.clone()),
            Box::new(tokens.clone()),
            Box::new(cost.clone()),
            Box::new(upstream_errors.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Metrics {
            registry,
            requests,
            duration,
            ttfb,
            tokens,
            cost,
            upstream_errors,
            by_provider: Default::default(),
            sources: OnceLock::new(),
        }
    }

    /// Connects the scrape-time sources (once, at start).
    pub fn attach(&self, sink: SinkSender, keys: Arc<KeyCache>, prices: Arc<LivePrices>) {
        let _ = self.sources.set(Sources { sink, keys, prices });
    }

    /// Records one finished request.
    pub fn observe(&self, r: &RequestRecord, priced_as: Option<&str>, upstream_failed: bool) {
        let provider = r.provider.as_str();
        let mut status = itoa_buf();
        let status = fmt_u16(&mut status, r.status_code as u16);
        self.requests
            .with_label_values(&[provider, priced_as.unwrap_or("unpriced"), status])
            .inc();
        let cached = Provider::ALL
            .iter()
            .position(|p| p.as_str() == provider)
            .map(|i| &self.by_provider[i]);
        series(
            cached.map(|c| &c.duration),
            || self.duration.with_label_values(&[provider]),
            |h| h.observe(f64::from(r.response_time_ms) / 1000.0),
        );
        if let Some(t) = r.time_to_first_byte_ms {
            series(
                cached.map(|c| &c.ttfb),
                || self.ttfb.with_label_values(&[provider]),
                |h| h.observe(f64::from(t) / 1000.0),
            );
        }
        let counts = [
            r.input_tokens,
            r.output_tokens,
            r.cached_tokens,
            r.cache_creation_tokens,
            r.reasoning_tokens,
        ];
        for (i, (kind, n)) in TOKEN_KINDS.into_iter().zip(counts).enumerate() {
            if n > 0 {
                series(
                    cached.map(|c| &c.tokens[i]),
                    || self.tokens.with_label_values(&[provider, kind]),
                    |c| c.inc_by(n as u64),
                );
            }
        }
        if r.price_found {
            let usd: f64 = r.total_cost.try_into().unwrap_or(0.0);
            series(
                cached.map(|c| &c.cost),
                || self.cost.with_label_values(&[provider]),
                |c| c.inc_by(usd),
            );
        }
        if upstream_failed {
            series(
                cached.map(|c| &c.upstream_errors),
                || self.upstream_errors.with_label_values(&[provider]),
                |c| c.inc(),
            );
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut out = String::from_utf8(buf).unwrap_or_default();
        if let Some(s) = self.sources.get() {
            render_sources(s, &mut out);
        }
        let _ = writeln!(
            out,
            "# HELP majordomo_log_lines_dropped_total Access log lines dropped because stderr did not keep up"
        );
        let _ = writeln!(out, "# TYPE majordomo_log_lines_dropped_total counter");
        let _ = writeln!(
            out,
            "majordomo_log_lines_dropped_total {}",
            crate::logging::dropped_lines()
        );
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn itoa_buf() -> [u8; 5] {
    [0; 5]
}

fn fmt_u16(buf: &mut [u8; 5], mut n: u16) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

fn render_sources(s: &Sources, out: &mut String) {
    let stats: &SinkStats = s.sink.stats();
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP majordomo_sink_queue_depth Request records waiting for the database writer"
    );
    let _ = writeln!(out, "# TYPE majordomo_sink_queue_depth gauge");
    let _ = writeln!(out, "majordomo_sink_queue_depth {}", s.sink.depth());
    let _ = writeln!(
        out,
        "# HELP majordomo_sink_queue_bytes Bytes of the records waiting for or being written by the database writer (bounded by sink.channel_max_bytes)"
    );
    let _ = writeln!(out, "# TYPE majordomo_sink_queue_bytes gauge");
    let _ = writeln!(out, "majordomo_sink_queue_bytes {}", s.sink.queued_bytes());
    let (held, held_bytes) = s.sink.held();
    let _ = writeln!(
        out,
        "# HELP majordomo_sink_held_records Request records held in memory because neither the spool nor the database takes them"
    );
    let _ = writeln!(out, "# TYPE majordomo_sink_held_records gauge");
    let _ = writeln!(out, "majordomo_sink_held_records {held}");
    let _ = writeln!(
        out,
        "# HELP majordomo_sink_held_bytes Bytes of those records (bounded by sink.memory_hold_max_bytes)"
    );
    let _ = writeln!(out, "# TYPE majordomo_sink_held_bytes gauge");
    let _ = writeln!(out, "majordomo_sink_held_bytes {held_bytes}");
    let _ = writeln!(
        out,
        "# HELP majordomo_sink_records_total Request records by outcome (dropped must stay 0)"
    );
    let _ = writeln!(out, "# TYPE majordomo_sink_records_total counter");
    for (outcome, v) in [
        ("queued", g(&stats.queued)),
        ("written", g(&stats.written)),
        ("duplicate", g(&stats.duplicates)),
        ("spooled", g(&stats.spooled)),
        ("replayed", g(&stats.replayed)),
        ("dead_lettered", g(&stats.dead_lettered)),
        ("dropped", g(&stats.dropped)),
    ] {
        let _ = writeln!(
            out,
            "majordomo_sink_records_total{{outcome=\"{outcome}\"}} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP majordomo_sink_errors_total Failed database writes and spool appends"
    );
    let _ = writeln!(out, "# TYPE majordomo_sink_errors_total counter");
    let _ = writeln!(
        out,
        "majordomo_sink_errors_total{{kind=\"database\"}} {}",
        g(&stats.failed_writes)
    );
    let _ = writeln!(
        out,
        "majordomo_sink_errors_total{{kind=\"spool\"}} {}",
        g(&stats.spool_errors)
    );
    let _ = writeln!(
        out,
        "majordomo_sink_errors_total{{kind=\"body_upload\"}} {}",
        g(&stats.body_upload_failures)
    );
    let (hits, misses) = s.keys.hit_counts();
    let _ = writeln!(
        out,
        "# HELP majordomo_key_cache_requests_total Key validations by cache result"
    );
    let _ = writeln!(out, "# TYPE majordomo_key_cache_requests_total counter");
    let _ = writeln!(
        out,
        "majordomo_key_cache_requests_total{{result=\"hit\"}} {hits}"
    );
    let _ = writeln!(
        out,
        "majordomo_key_cache_requests_total{{result=\"miss\"}} {misses}"
    );
    let loaded = s.prices.current();
    let _ = writeln!(out, "# HELP majordomo_pricing_table_age_seconds Seconds since the price table in use was loaded");
    let _ = writeln!(out, "# TYPE majordomo_pricing_table_age_seconds gauge");
    let _ = writeln!(
        out,
        "majordomo_pricing_table_age_seconds {:.3}",
        loaded.loaded_at.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "# HELP majordomo_pricing_models Models in the price table in use"
    );
    let _ = writeln!(out, "# TYPE majordomo_pricing_models gauge");
    let _ = writeln!(out, "majordomo_pricing_models {}", loaded.table.len());
}

/// `/metrics` on its own port (a Pingora service, so `-u` hands it over too).
pub struct MetricsApp(pub Arc<Metrics>);

#[async_trait]
impl pingora::apps::http_app::ServeHttp for MetricsApp {
    async fn response(
        &self,
        _session: &mut pingora::protocols::http::ServerSession,
    ) -> http::Response<Vec<u8>> {
        let body = self.0.render().into_bytes();
        http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(provider: &str, input: i64, reasoning: i64) -> RequestRecord {
        RequestRecord {
            provider: provider.into(),
            response_time_ms: 20,
            time_to_first_byte_ms: Some(5),
            input_tokens: input,
            output_tokens: 7,
            reasoning_tokens: reasoning,
            total_cost: rust_decimal::Decimal::new(25, 2),
            price_found: true,
            ..RequestRecord::plain()
        }
    }

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(series))
            .map(|l| l[series.len()..].trim())
    }

    #[test]
    fn remembered_series_count_like_looked_up_ones_and_appear_only_once_used() {
        let m = Metrics::new();
        m.observe(&row("openai", 10, 0), Some("gpt-4o"), false);
        m.observe(&row("openai", 5, 3), Some("gpt-4o"), true);
        // A provider name with no remembered series still counts.
        m.observe(&row("other", 1, 0), None, false);
        let text = m.render();
        let tokens = |p: &str, k: &str| {
            line(
                &text,
                &format!(r#"majordomo_tokens_total{{kind="{k}",provider="{p}"}}"#),
            )
        };
        assert_eq!(tokens("openai", "input"), Some("15"));
        assert_eq!(tokens("openai", "output"), Some("14"));
        assert_eq!(tokens("openai", "reasoning"), Some("3"));
        assert_eq!(tokens("openai", "cached"), None, "never counted: no series");
        assert_eq!(tokens("other", "input"), Some("1"));
        assert_eq!(tokens("other", "reasoning"), None);
        let of = |name: &str, p: &str| line(&text, &format!(r#"{name}{{provider="{p}"}}"#));
        assert_eq!(of("majordomo_upstream_errors_total", "openai"), Some("1"));
        assert_eq!(of("majordomo_upstream_errors_total", "other"), None);
        assert_eq!(of("majordomo_cost_usd_total", "openai"), Some("0.5"));
        assert_eq!(
            of("majordomo_request_duration_seconds_count", "openai"),
            Some("2")
        );
        assert_eq!(
            of("majordomo_time_to_first_byte_seconds_count", "other"),
            Some("1")
        );
        assert!(!text.contains("anthropic"), "no request, no series");
    }

    #[test]
    fn statuses_format_without_allocating() {
        let mut b = itoa_buf();
        assert_eq!(fmt_u16(&mut b, 200), "200");
        let mut b = itoa_buf();
        assert_eq!(fmt_u16(&mut b, 0), "0");
        let mut b = itoa_buf();
        assert_eq!(fmt_u16(&mut b, 65535), "65535");
    }
}
