//! `majordomo serve`: builds the Pingora server from majordomo.yaml and runs it.
//!
//! Pingora's `ServerConf` is derived from our config so users keep one file;
//! `-d`, `-u` and `-t` keep Pingora's meaning. Nothing that starts threads
//! (runtimes, pools with live connections) may exist before `Server::run`,
//! which forks in daemon mode: migrations run on a runtime that is dropped
//! before the server starts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};

use crate::cli::ServeFlags;
use crate::config::{BodyStorage, Config};
use crate::gateway::Gateway;
use crate::keys::revocation::RevocationListener;
use crate::metrics::{Metrics, MetricsApp};
use crate::pricing::live::{LivePrices, PriceRefreshService};
use crate::sink::bodies::BodyStore;
use crate::sink::SinkSettings;
use crate::store::Store;
use pingora::services::background::background_service;

/// Applies migrations, retrying for a short while so a database that is still
/// starting (compose, Kubernetes) does not fail the first start.
pub fn migrate_blocking(config: &Config, attempts: u32) -> anyhow::Result<Vec<i64>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for migrations")?;
    rt.block_on(async {
        let store = Store::open(&config.storage).context("opening the store")?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match store.migrate().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < attempts => {
                    log::warn!("database not ready ({e}); retrying migrations");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(anyhow::Error::new(e).context("applying migrations")),
            }
        }
    })
}

/// The spool directory exists (or can be made) and takes a file.
fn spool_is_writable(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".majordomo-t-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

fn server_conf(config: &Config, flags: &ServeFlags) -> ServerConf {
    let s = &config.server;
    let threads = if s.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        s.threads
    };
    ServerConf {
        daemon: flags.daemon,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        error_log: s.error_log.clone(),
        threads,
        grace_period_seconds: Some(s.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_secs),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        // One thread: its own runtime is cheaper and safe. Several own
        // runtimes race in Pingora's upstream pool (ServerConfig::work_stealing).
        work_stealing: s.work_stealing.unwrap_or(threads > 1),
        ..ServerConf::default()
    }
}

pub fn run(config: Config, flags: ServeFlags) -> anyhow::Result<()> {
    let config = Arc::new(config);
    if flags.test {
        // Config already validated; also prove that what a start opens from
        // it opens (the database is not asked: it may not be reachable from
        // where the configuration is checked).
        Store::open(&config.storage).context("opening the store")?;
        LivePrices::from_config(&config.pricing)
            .map_err(anyhow::Error::msg)
            .context("loading the prices")?;
        if matches!(config.logging.body_storage, BodyStorage::S3) {
            BodyStore::from_config(&config.s3).map_err(anyhow::Error::msg)?;
        }
        spool_is_writable(&config.sink.spool_dir)
            .with_context(|| format!("sink.spool_dir {}", config.sink.spool_dir.display()))?;
        println!("majordomo: configuration OK");
        return Ok(());
    }
    let applied = migrate_blocking(&config, 15)?;
    if !applied.is_empty() {
        log::info!("applied migrations {applied:?}");
    }
    let store = Store::open(&config.storage).context("opening the store")?;
    let prices = Arc::new(LivePrices::from_config(&config.pricing).map_err(anyhow::Error::msg)?);
    // The sink has its own store handle (its own pool), so key lookups and
    // log writes never wait for each other's connections.
    let sink_store = Store::open(&config.storage).context("opening the store")?;
    let (sink, sink_service) = crate::sink::channel(
        sink_store,
        SinkSettings {
            channel_capacity: config.sink.channel_capacity,
            channel_max_bytes: config.sink.channel_max_bytes,
            max_events: config.sink.batch_max_events,
            timeout: Duration::from_millis(config.sink.batch_timeout_ms),
            writers: config.sink.writers,
            spool_dir: config.sink.spool_dir.clone(),
            spool_segment_max_bytes: config.sink.spool_segment_max_bytes,
            spool_fsync_interval: Duration::from_millis(config.sink.spool_fsync_interval_ms),
            memory_hold_max_bytes: config.sink.memory_hold_max_bytes,
            bodies: match config.logging.body_storage {
                BodyStorage::S3 => Some(Arc::new(
                    BodyStore::from_config(&config.s3).map_err(anyhow::Error::msg)?,
                )),
                BodyStorage::None | BodyStorage::Postgres => None,
            },
        },
    )
    .with_context(|| format!("sink.spool_dir {}", config.sink.spool_dir.display()))?;
    let metrics = Arc::new(Metrics::new());
    let gateway = Gateway::new(
        config.clone(),
        store,
        sink.clone(),
        prices.clone(),
        metrics.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    metrics.attach(sink, gateway.key_cache(), prices.clone());
    let revocations = RevocationListener {
        storage: config.storage.clone(),
        store: Store::open(&config.storage).context("opening the store")?,
        keys: gateway.key_cache(),
    };

    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config, &flags));
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "majordomo gateway",
    );
    let addr = format!("{}:{}", config.server.host, config.server.port);
    proxy.add_listener(
        ListenerConfig::tcp(addr.as_str()).l4_buffer(L4BufferSettings {
            read: Some(config.server.read_buffer_bytes),
            write: None,
        }),
    );
    server.add_service(proxy);
    server.add_service(background_service("request log sink", sink_service));
    server.add_service(background_service("key revocations", revocations));
    if config.metrics.port != 0 {
        let mut metrics_service =
            pingora::services::listening::Service::new("metrics".to_string(), MetricsApp(metrics));
        metrics_service.add_tcp(&format!("{}:{}", config.server.host, config.metrics.port));
        server.add_service(metrics_service);
    }
    server.add_service(background_service(
        "price refresh",
        PriceRefreshService { prices },
    ));

    log::info!(
        "majordomo listening on {addr} (storage: {:?})",
        config.storage.effective_driver()
    );
    // `run`, not `run_forever`: the latter exits the process, and main still
    // has the last access lines to write out.
    server.run(RunArgs::default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn conf_from(yaml: &str) -> ServerConf {
        let config =
            Config::from_yaml_and_env(yaml, "test", &BTreeMap::<String, String>::new()).unwrap();
        server_conf(&config, &ServeFlags::default())
    }

    #[test]
    fn several_proxy_threads_share_a_work_stealing_runtime_and_one_thread_runs_its_own() {
        let several = conf_from("server:\n  threads: 3\n");
        assert!(several.work_stealing);
        assert_eq!(several.threads, 3);
        let one = conf_from("server:\n  threads: 1\n");
        assert!(!one.work_stealing);
        assert_eq!(one.threads, 1);
        assert!(!conf_from("server:\n  threads: 2\n  work_stealing: false\n").work_stealing);
        assert!(conf_from("server:\n  threads: 1\n  work_stealing: true\n").work_stealing);
    }
}
