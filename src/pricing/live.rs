//! The price table in use, and its refresh.
//!
//! The base table is the bundled snapshot, with `pricing.file` merged over it
//! when configured. A remote table (`pricing.remote_url`, llm-prices.com
//! `current-v1.json` format) is merged over that base on every refresh —
//! always over the base, never over the previous result — and the per-model
//! overrides from the config win over everything. A failed, non-200 or
//! malformed refresh keeps the last good table. Readers take a lock-free
//! snapshot (`ArcSwap`) per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{Price, PriceTable};
use crate::config::PricingConfig;

/// The table in use and when it was built.
pub struct LoadedPrices {
    pub table: PriceTable,
    pub loaded_at: Instant,
    /// Whether the remote table is part of it.
    pub remote: bool,
}

pub struct LivePrices {
    current: ArcSwap<LoadedPrices>,
    base: PriceTable,
    overrides: Vec<(String, Price)>,
    remote_url: String,
    refresh_interval: Duration,
}

/// Largest remote price document accepted.
const MAX_REMOTE_BYTES: usize = 8 * 1024 * 1024;

impl LivePrices {
    /// Builds the starting table from the snapshot, `pricing.file` and the overrides.
    pub fn from_config(cfg: &PricingConfig) -> Result<LivePrices, String> {
        let bundled = PriceTable::bundled();
        let base = match &cfg.file {
            None => bundled,
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("pricing.file {}: {e}", path.display()))?;
                PriceTable::from_file_bytes(&bytes)
                    .map_err(|e| format!("pricing.file {}: {e}", path.display()))?
                    .with_source(path.display().to_string())
                    .merged_over(&bundled)
            }
        };
        let overrides: Vec<(String, Price)> = cfg
            .overrides
            .iter()
            .map(|(model, o)| {
                (
                    model.clone(),
                    Price {
                        input: o.input,
                        output: o.output,
                        input_cached: o.input_cached,
                    },
                )
            })
            .collect();
        let table = base.clone().with_overrides(&overrides);
        Ok(LivePrices {
            current: ArcSwap::from_pointee(LoadedPrices {
                table,
                loaded_at: Instant::now(),
                remote: false,
            }),
            base,
            overrides,
            remote_url: cfg.remote_url.trim().to_string(),
            refresh_interval: cfg.refresh_interval.max(Duration::from_secs(1)),
        })
    }

    /// The table to price with now.
    pub fn current(&self) -> Arc<LoadedPrices> {
        self.current.load_full()
    }

    pub fn remote_enabled(&self) -> bool {
        !self.remote_url.is_empty()
    }

    /// Fetches the remote table once and, if it is good, puts it in use.
    /// Returns the number of entries in the new table.
    pub async fn refresh_once(&self, client: &reqwest::Client) -> Result<usize, String> {
        if !self.remote_enabled() {
            return Err("pricing.remote_url is empty".into());
        }
        let resp = client
            .get(&self.remote_url)
            .send()
            .await
            .map_err(|e| format!("fetching prices: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("fetching prices: HTTP {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_REMOTE_BYTES)
        {
            return Err("price document too large".into());
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading prices: {e}"))?;
        if bytes.len() > MAX_REMOTE_BYTES {
            return Err("price document too large".into());
        }
        let remote = PriceTable::from_llm_prices_json(&bytes)
            .map_err(|e| format!("bad price document: {e}"))?
            .with_source(self.remote_url.clone());
        let table = remote
            .merged_over(&self.base)
            .with_overrides(&self.overrides);
        let n = table.len();
        self.current.store(Arc::new(LoadedPrices {
            table,
            loaded_at: Instant::now(),
            remote: true,
        }));
        Ok(n)
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("majordomo/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Background service: refreshes the remote table every `refresh_interval`.
pub struct PriceRefreshService {
    pub prices: Arc<LivePrices>,
}

#[async_trait]
impl BackgroundService for PriceRefreshService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.prices.remote_enabled() {
            return;
        }
        let client = http_client();
        loop {
            match self.prices.refresh_once(&client).await {
                Ok(n) => log::info!("price table refreshed: {n} models"),
                Err(e) => log::warn!("price refresh failed, keeping the last good table: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.prices.refresh_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
