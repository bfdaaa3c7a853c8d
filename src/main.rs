//! The `majordomo` binary: `serve` (default), `keys`, `migrate`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use majordomo::cli::{Cli, Command};
use majordomo::config::{find_config_file, Config, ProcessEnv};
use majordomo::store::Store;

// jemalloc rather than glibc's malloc: Pingora and the gateway allocate ~115 blocks per
// request, many of them larger than glibc's per-thread cache takes (header buffers, body
// buffers, session futures). benches/README.md, "Allocator", has the measurements.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = find_config_file(cli.config.as_deref());
    let config = match Config::load(file.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("majordomo: {e}");
            return ExitCode::from(2);
        }
    };
    let log_output = majordomo::logging::init(&config);
    let result = run(cli, config);
    // The access lines of the last requests (the writer thread may be stalled).
    log_output.flush(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("majordomo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        None | Some(Command::Serve) => majordomo::serve::run(config, cli.serve),
        Some(Command::Migrate) => {
            let applied = majordomo::serve::migrate_blocking(&config, 1)?;
            if applied.is_empty() {
                println!("schema is up to date");
            } else {
                println!("applied migrations: {applied:?}");
            }
            Ok(())
        }
        Some(Command::Prices { command, offline }) => runtime()?.block_on(async {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            majordomo::cli::prices::run(&config, command, offline, &mut out).await
        }),
        Some(Command::Metadata { command }) => runtime()?.block_on(async {
            let store = Store::open(&config.storage)?;
            store.migrate().await.context("applying migrations")?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            majordomo::cli::metadata::run(&store, command, &mut out).await
        }),
        Some(Command::Keys { command }) => runtime()?.block_on(async {
            let store = Store::open(&config.storage)?;
            store.migrate().await.context("applying migrations")?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            majordomo::cli::keys::run(&store, command, &mut out).await
        }),
    }
}

#[cfg(all(test, not(target_env = "msvc")))]
mod tests {
    /// `.cargo/config.toml` builds jemalloc with a thread cache for blocks of
    /// up to 64 KiB. A build without it still works but pays ~4 000
    /// instructions per request for Pingora's upstream body buffer.
    #[test]
    fn jemalloc_keeps_body_buffer_sized_blocks_in_the_thread_cache() {
        let max = tikv_jemalloc_ctl::opt::tcache_max::read().expect("reading opt.tcache_max");
        assert!(
            max >= 64 * 1024,
            "opt.tcache_max is {max}: was jemalloc built without .cargo/config.toml's JEMALLOC_SYS_WITH_MALLOC_CONF?"
        );
    }
}
