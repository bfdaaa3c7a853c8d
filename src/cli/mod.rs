//! The command line: `serve` (default), `keys`, `migrate`.
//!
//! Thin: parses arguments and calls into the store, keys and server modules.

pub mod keys;
pub mod metadata;
pub mod prices;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "majordomo",
    version,
    about = "An LLM API gateway: key auth, streaming usage parsing, exact cost, durable request log",
    args_conflicts_with_subcommands = false
)]
pub struct Cli {
    /// Config file (default: ./majordomo.yaml, then /etc/majordomo/majordomo.yaml).
    #[arg(short = 'c', long = "config", global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub serve: ServeFlags,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Pingora's server flags, with their usual meaning.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeFlags {
    /// Run in the background.
    #[arg(short = 'd', long = "daemon", global = true)]
    pub daemon: bool,
    /// Take over the listening sockets of a running instance (zero-downtime upgrade).
    #[arg(short = 'u', long = "upgrade", global = true)]
    pub upgrade: bool,
    /// Test the configuration and exit.
    #[arg(short = 't', long = "test", global = true)]
    pub test: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default when no command is given).
    Serve,
    /// Create, list, inspect, rename and revoke majordomo API keys.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Metadata statistics per API key, and which metadata keys are indexed.
    Metadata {
        #[command(subcommand)]
        command: metadata::MetadataCommand,
    },
    /// Show the price table in use, or price a model.
    Prices {
        #[command(subcommand)]
        command: Option<prices::PricesCommand>,
        /// Do not refresh from pricing.remote_url.
        #[arg(long, global = true)]
        offline: bool,
    },
}
