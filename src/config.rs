//! `majordomo.yaml` + `MAJORDOMO_*` environment → a validated [`Config`].
//!
//! Two stages, as the rest of the crate expects: this module only reads what
//! the user wrote and checks it (no I/O beyond reading the file); the runtime
//! objects (store, upstreams, caches) are built from the result elsewhere.
//!
//! Every leaf key has an environment override named `MAJORDOMO_` + the key
//! path upper-cased with `_` (`storage.postgres.host` →
//! `MAJORDOMO_STORAGE_POSTGRES_HOST`). The table [`ENV_KEYS`] lists them, so
//! names with underscores (`max_body_bytes`) map without ambiguity. The
//! environment is read through [`EnvSource`] so tests pass a map instead of
//! mutating the process environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

/// Where configuration values come from besides the file.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Errors while loading the configuration. Messages name the key and never
/// contain the value of a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Occurs when the config file named with `-c` (or found) cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Occurs when the file is not valid YAML or a key has the wrong type or is unknown.
    #[error("invalid config in {origin}: {message}")]
    Parse { origin: String, message: String },
    /// Occurs when an environment override cannot be parsed as its key's type.
    #[error(
        "invalid value in environment variable {var} (config key `{key}`): expected {expected}"
    )]
    Env {
        var: String,
        key: &'static str,
        expected: &'static str,
    },
    /// Occurs when a value parses but is not allowed (e.g. port 0, unknown driver).
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub providers: ProvidersConfig,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub metadata: MetadataConfig,
    pub logging: LoggingConfig,
    pub s3: S3Config,
    pub pricing: PricingConfig,
    pub sink: SinkConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Worker threads for the proxy service (0 = one per CPU).
    pub threads: usize,
    /// Idle time allowed while reading a client's request.
    #[serde(deserialize_with = "de_duration")]
    pub read_timeout: Duration,
    /// Time allowed for one write to a slow client.
    #[serde(deserialize_with = "de_duration")]
    pub write_timeout: Duration,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: u64,
    pub pid_file: String,
    pub upgrade_sock: String,
    /// How long an old process keeps serving open requests after an upgrade or SIGTERM.
    pub grace_period_secs: u64,
    /// Hard stop after the grace period.
    pub graceful_shutdown_timeout_secs: u64,
    pub error_log: Option<String>,
    /// Idle upstream connections kept per proxy thread.
    pub upstream_keepalive_pool_size: usize,
    /// Read buffer of each client connection's socket. Pingora's default is
    /// 64 KiB per connection, most of what an open stream costs in memory;
    /// with 0 the request head is read straight into its own buffer.
    pub read_buffer_bytes: usize,
    /// Let the proxy threads take each other's tasks (Pingora's default: one
    /// shared runtime) or give each thread its own single-threaded runtime
    /// (majordomo: 0–9 % less CPU per request on loopback in 7 of 8 benchmark
    /// cells over two machines, 8 % more in one). Unset:
    /// its own runtime when the service runs one thread, shared otherwise,
    /// because with several own runtimes Pingora 0.9's upstream pool loses a
    /// race with its idle watcher (spawned on a random thread) on ~10 % of
    /// requests accepted on different threads: it logs "failed to acquire
    /// reusable stream" and connects anew, a TLS handshake to a real
    /// provider. See benches/README.md, sessions 20 and 21.
    pub work_stealing: Option<bool>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 7680,
            threads: 0,
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(120),
            max_body_bytes: 32 * 1024 * 1024,
            pid_file: "/tmp/majordomo.pid".into(),
            upgrade_sock: "/tmp/majordomo_upgrade.sock".into(),
            grace_period_secs: 60,
            graceful_shutdown_timeout_secs: 10,
            error_log: None,
            upstream_keepalive_pool_size: 128,
            read_buffer_bytes: 0,
            work_stealing: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDriver {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite` (default) or `postgres`. When unset and a PostgreSQL host or
    /// url is configured, PostgreSQL is used (the reference only had PostgreSQL).
    pub driver: Option<StorageDriver>,
    pub sqlite: SqliteConfig,
    pub postgres: PostgresConfig,
}

impl StorageConfig {
    pub fn effective_driver(&self) -> StorageDriver {
        match self.driver {
            Some(d) => d,
            None if self.postgres.url.is_some() || self.postgres.host.is_some() => {
                StorageDriver::Postgres
            }
            None => StorageDriver::Sqlite,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    pub path: PathBuf,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: PathBuf::from("./majordomo.db"),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// A full `postgres://` URL; when set, the separate fields below are ignored.
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// `disable` or `prefer` (TLS to PostgreSQL is not built in; use a local socket or a sidecar).
    pub sslmode: String,
    pub max_conns: usize,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            host: None,
            port: 5432,
            user: "postgres".into(),
            password: None,
            database: "majordomo".into(),
            sslmode: "disable".into(),
            max_conns: 20,
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    // Never print the password or a URL that may carry one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("database", &self.database)
            .field("sslmode", &self.sslmode)
            .field("max_conns", &self.max_conns)
            .finish()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub openai: ProviderConfig,
    pub anthropic: ProviderConfig,
    pub gemini: ProviderConfig,
}

impl ProvidersConfig {
    pub fn get(&self, p: crate::provider::Provider) -> &ProviderConfig {
        use crate::provider::Provider;
        match p {
            Provider::OpenAi => &self.openai,
            Provider::Anthropic => &self.anthropic,
            Provider::Gemini => &self.gemini,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// Overrides the provider's public API (may carry a path prefix; `http://` allowed for local upstreams).
    pub base_url: Option<String>,
    /// Add `stream_options.include_usage` to OpenAI chat streams that lack it (and hide the extra chunk).
    pub inject_stream_usage: bool,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            base_url: None,
            inject_stream_usage: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_secs: u64,
    /// Longest silence allowed while reading an upstream response (reasoning models think for minutes).
    pub read_timeout_secs: u64,
    /// How long a resolved upstream address is reused before resolving again.
    pub dns_ttl_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_secs: 10,
            read_timeout_secs: 600,
            dns_ttl_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How long a validated key is trusted without asking the store again.
    pub cache_ttl_secs: u64,
    /// Unknown keys remembered (bounded, so a flood of random keys cannot grow memory).
    pub negative_cache_size: u64,
    pub negative_cache_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cache_ttl_secs: 300,
            negative_cache_size: 10_000,
            negative_cache_ttl_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// Most `X-Majordomo-*` metadata headers on one request.
    pub max_keys: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            max_keys: 32,
            max_key_bytes: 64,
            max_value_bytes: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyStorage {
    None,
    Postgres,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub body_storage: BodyStorage,
    pub store_request_body: bool,
    pub store_response_body: bool,
    /// `max_body_size` is the reference gateway's name for it ([`KEY_ALIASES`]).
    pub max_body_bytes: usize,
    /// `text` or `json` log lines on stderr.
    pub format: String,
    /// `error`, `warn`, `info`, `debug`, `trace` (RUST_LOG wins when set).
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            body_storage: BodyStorage::None,
            store_request_body: true,
            store_response_body: true,
            max_body_bytes: 1024 * 1024,
            format: "text".into(),
            level: "info".into(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub enabled: bool,
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub path_style: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            enabled: false,
            bucket: "majordomo-logs".into(),
            region: "us-east-1".into(),
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            path_style: true,
        }
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("enabled", &self.enabled)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "<set>"),
            )
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<set>"),
            )
            .field("path_style", &self.path_style)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// llm-prices.com `current-v1.json` format; empty turns the refresh off.
    pub remote_url: String,
    #[serde(deserialize_with = "de_duration")]
    pub refresh_interval: Duration,
    /// A local price table (our snapshot format or the llm-prices format);
    /// `fallback_file` is the reference gateway's name for it ([`KEY_ALIASES`]).
    pub file: Option<PathBuf>,
    /// Per-model prices (USD per million tokens) that win over every table.
    pub overrides: BTreeMap<String, PriceOverride>,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            remote_url: "https://www.llm-prices.com/current-v1.json".into(),
            refresh_interval: Duration::from_secs(3600),
            file: None,
            overrides: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    #[serde(deserialize_with = "de_decimal")]
    pub input: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    pub output: Decimal,
    #[serde(default, deserialize_with = "de_decimal_opt")]
    pub input_cached: Option<Decimal>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Records waiting for the writer; when full, records go to the spool instead.
    pub channel_capacity: usize,
    /// Bytes those records (and the batches being written) may hold, bodies
    /// included; past it, records go to the spool instead.
    pub channel_max_bytes: usize,
    pub batch_max_events: usize,
    pub batch_timeout_ms: u64,
    /// Batches written to the database at the same time (each on its own
    /// connection): while one batch commits, the next is being sent.
    pub writers: usize,
    /// Every accepted record is written here first (see the sink's spool docs).
    pub spool_dir: PathBuf,
    /// A spool segment is sealed (and becomes replayable) at this size.
    pub spool_segment_max_bytes: u64,
    /// How often the spool is fsynced: what a power loss can cost. A killed
    /// process loses nothing either way. 0 = fsync every record.
    pub spool_fsync_interval_ms: u64,
    /// Records neither the spool nor the database can take (a full disk
    /// during an outage) are held in memory up to this many bytes; past it
    /// they are dropped and counted.
    pub memory_hold_max_bytes: usize,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            channel_capacity: 65_536,
            channel_max_bytes: 128 * 1024 * 1024,
            batch_max_events: 2_000,
            batch_timeout_ms: 200,
            writers: 2,
            spool_dir: PathBuf::from("./majordomo-spool"),
            spool_segment_max_bytes: 8 * 1024 * 1024,
            spool_fsync_interval_ms: 1000,
            memory_hold_max_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus `/metrics` port on `server.host`; 0 turns the listener off
    /// (`/metrics` is then still served on the main port).
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { port: 9091 }
    }
}

/// The type of an overridable key, to turn an env string into a YAML value.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
}

/// Every key that an environment variable may override.
const ENV_KEYS: &[(&str, Kind)] = &[
    ("server.host", Kind::Str),
    ("server.port", Kind::Int),
    ("server.threads", Kind::Int),
    ("server.read_timeout", Kind::Str),
    ("server.write_timeout", Kind::Str),
    ("server.max_body_bytes", Kind::Int),
    ("server.pid_file", Kind::Str),
    ("server.upgrade_sock", Kind::Str),
    ("server.grace_period_secs", Kind::Int),
    ("server.graceful_shutdown_timeout_secs", Kind::Int),
    ("server.error_log", Kind::Str),
    ("server.upstream_keepalive_pool_size", Kind::Int),
    ("server.read_buffer_bytes", Kind::Int),
    ("server.work_stealing", Kind::Bool),
    ("storage.driver", Kind::Str),
    ("storage.sqlite.path", Kind::Str),
    ("storage.postgres.url", Kind::Str),
    ("storage.postgres.host", Kind::Str),
    ("storage.postgres.port", Kind::Int),
    ("storage.postgres.user", Kind::Str),
    ("storage.postgres.password", Kind::Str),
    ("storage.postgres.database", Kind::Str),
    ("storage.postgres.sslmode", Kind::Str),
    ("storage.postgres.max_conns", Kind::Int),
    ("providers.openai.base_url", Kind::Str),
    ("providers.openai.inject_stream_usage", Kind::Bool),
    ("providers.anthropic.base_url", Kind::Str),
    ("providers.anthropic.inject_stream_usage", Kind::Bool),
    ("providers.gemini.base_url", Kind::Str),
    ("providers.gemini.inject_stream_usage", Kind::Bool),
    ("upstream.connect_timeout_secs", Kind::Int),
    ("upstream.read_timeout_secs", Kind::Int),
    ("upstream.dns_ttl_secs", Kind::Int),
    ("auth.cache_ttl_secs", Kind::Int),
    ("auth.negative_cache_size", Kind::Int),
    ("auth.negative_cache_ttl_secs", Kind::Int),
    ("metadata.max_keys", Kind::Int),
    ("metadata.max_key_bytes", Kind::Int),
    ("metadata.max_value_bytes", Kind::Int),
    ("logging.body_storage", Kind::Str),
    ("logging.store_request_body", Kind::Bool),
    ("logging.store_response_body", Kind::Bool),
    // An alias before its key: when both variables are set, the key's wins.
    ("logging.max_body_size", Kind::Int),
    ("logging.max_body_bytes", Kind::Int),
    ("logging.format", Kind::Str),
    ("logging.level", Kind::Str),
    ("s3.enabled", Kind::Bool),
    ("s3.bucket", Kind::Str),
    ("s3.region", Kind::Str),
    ("s3.endpoint", Kind::Str),
    ("s3.access_key_id", Kind::Str),
    ("s3.secret_access_key", Kind::Str),
    ("s3.path_style", Kind::Bool),
    ("pricing.remote_url", Kind::Str),
    ("pricing.refresh_interval", Kind::Str),
    ("pricing.fallback_file", Kind::Str),
    ("pricing.file", Kind::Str),
    ("sink.channel_capacity", Kind::Int),
    ("sink.channel_max_bytes", Kind::Int),
    ("sink.batch_max_events", Kind::Int),
    ("sink.batch_timeout_ms", Kind::Int),
    ("sink.writers", Kind::Int),
    ("sink.spool_dir", Kind::Str),
    ("sink.spool_segment_max_bytes", Kind::Int),
    ("sink.spool_fsync_interval_ms", Kind::Int),
    ("sink.memory_hold_max_bytes", Kind::Int),
    ("metrics.port", Kind::Int),
];

/// The environment variable that overrides a key path.
/// The reference gateway's names for keys majordomo names otherwise,
/// (section, alias, key): read as the key, which wins when both are given.
const KEY_ALIASES: &[(&str, &str, &str)] = &[
    ("logging", "max_body_size", "max_body_bytes"),
    ("pricing", "fallback_file", "file"),
];

/// The key an environment override of `key` sets (itself, or what it aliases).
fn aliased_key(key: &str) -> String {
    KEY_ALIASES
        .iter()
        .find(|(section, alias, _)| {
            key.strip_prefix(section)
                .and_then(|rest| rest.strip_prefix('.'))
                == Some(alias)
        })
        .map(|(section, _, real)| format!("{section}.{real}"))
        .unwrap_or_else(|| key.to_string())
}

/// Reads a file's aliased keys as their keys (a key given too wins).
fn fold_aliases(root: &mut serde_norway::Value) {
    for (section, alias, key) in KEY_ALIASES {
        let Some(serde_norway::Value::Mapping(m)) = root.get_mut(*section) else {
            continue;
        };
        if let Some(v) = m.remove(*alias) {
            let key = serde_norway::Value::String((*key).to_string());
            if !m.contains_key(&key) {
                m.insert(key, v);
            }
        }
    }
}

pub fn env_var_name(key: &str) -> String {
    let mut name = String::with_capacity(10 + key.len());
    name.push_str("MAJORDOMO_");
    for c in key.chars() {
        name.push(if c == '.' {
            '_'
        } else {
            c.to_ascii_uppercase()
        });
    }
    name
}

/// Picks the config file: `-c PATH` if given (must exist), else
/// `./majordomo.yaml`, else `/etc/majordomo/majordomo.yaml`, else none.
pub fn find_config_file(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    ["./majordomo.yaml", "/etc/majordomo/majordomo.yaml"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

impl Config {
    /// Loads the file (if any), applies environment overrides and validates.
    pub fn load(file: Option<&Path>, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let (text, origin) = match file {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?,
                path.display().to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        Config::from_yaml_and_env(&text, &origin, env)
    }

    pub fn from_yaml_and_env(
        yaml: &str,
        origin: &str,
        env: &dyn EnvSource,
    ) -> Result<Config, ConfigError> {
        let mut root: serde_norway::Value = if yaml.trim().is_empty() {
            serde_norway::Value::Mapping(Default::default())
        } else {
            serde_norway::from_str(yaml).map_err(|e| ConfigError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?
        };
        if root.is_null() {
            root = serde_norway::Value::Mapping(Default::default());
        }
        fold_aliases(&mut root);
        let mut overridden = false;
        for (key, kind) in ENV_KEYS {
            let var = env_var_name(key);
            if let Some(raw) = env.var(&var) {
                let value = env_value(&raw, *kind).ok_or(ConfigError::Env {
                    var: var.clone(),
                    key,
                    expected: match kind {
                        Kind::Str => "a string",
                        Kind::Int => "a non-negative integer",
                        Kind::Bool => "true or false",
                    },
                })?;
                set_path(&mut root, &aliased_key(key), value).map_err(|message| {
                    ConfigError::Parse {
                        origin: origin.to_string(),
                        message,
                    }
                })?;
                overridden = true;
            }
        }
        let origin = if overridden {
            format!("{origin} + MAJORDOMO_* environment")
        } else {
            origin.to_string()
        };
        let config: Config = serde_path_to_error::deserialize(root).map_err(|e| {
            let key = e.path().to_string();
            // serde quotes a wrongly typed value in more than one way
            // (`integer `12345678``): a secret's message is never its own.
            let message = if SECRET_KEYS.contains(&key.as_str()) {
                "expected a string (quote the value; it is not shown here)".to_string()
            } else {
                redact(e.inner().to_string())
            };
            ConfigError::Parse {
                origin: origin.clone(),
                message: format!("key `{key}`: {message}"),
            }
        })?;
        config.validate()
    }

    fn validate(mut self) -> Result<Config, ConfigError> {
        // An optional value left empty (`MAJORDOMO_S3_ACCESS_KEY_ID=` in an
        // env file, `endpoint: ""`) is unset, not an empty credential or URL.
        for value in [
            &mut self.storage.postgres.url,
            &mut self.storage.postgres.host,
            &mut self.providers.openai.base_url,
            &mut self.providers.anthropic.base_url,
            &mut self.providers.gemini.base_url,
            &mut self.s3.endpoint,
            &mut self.s3.access_key_id,
            &mut self.s3.secret_access_key,
            &mut self.server.error_log,
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *value = None;
            }
        }
        if self
            .pricing
            .file
            .as_deref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            self.pricing.file = None;
        }
        if self.server.port == 0 {
            return Err(invalid("server.port", "must be between 1 and 65535"));
        }
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be greater than 0"));
        }
        // A zero timeout fires at once: every request would fail, not the start.
        if self.server.read_timeout.is_zero() {
            return Err(invalid("server.read_timeout", "must be greater than 0"));
        }
        if self.server.write_timeout.is_zero() {
            return Err(invalid("server.write_timeout", "must be greater than 0"));
        }
        if self.upstream.connect_timeout_secs == 0 {
            return Err(invalid(
                "upstream.connect_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.upstream.read_timeout_secs == 0 {
            return Err(invalid("upstream.read_timeout_secs", "must be at least 1"));
        }
        for p in crate::provider::Provider::ALL {
            if let Some(url) = &self.providers.get(p).base_url {
                crate::provider::upstream::BaseUrl::parse(url).map_err(|e| {
                    ConfigError::Invalid {
                        key: match p {
                            crate::provider::Provider::OpenAi => "providers.openai.base_url",
                            crate::provider::Provider::Anthropic => "providers.anthropic.base_url",
                            crate::provider::Provider::Gemini => "providers.gemini.base_url",
                        },
                        message: e.to_string(),
                    }
                })?;
            }
        }
        if self.storage.effective_driver() == StorageDriver::Postgres {
            if !matches!(
                self.storage.postgres.sslmode.as_str(),
                "disable" | "prefer" | "allow"
            ) {
                return Err(invalid(
                    "storage.postgres.sslmode",
                    "must be disable, allow or prefer (TLS to PostgreSQL is not built in)",
                ));
            }
            if self.storage.postgres.max_conns == 0 {
                return Err(invalid("storage.postgres.max_conns", "must be at least 1"));
            }
        }
        if self.storage.sqlite.path.as_os_str().is_empty() {
            return Err(invalid("storage.sqlite.path", "must not be empty"));
        }
        // Resolve relative paths now: `-d` may change the working directory.
        self.storage.sqlite.path = absolute(&self.storage.sqlite.path);
        self.sink.spool_dir = absolute(&self.sink.spool_dir);
        if !matches!(self.logging.format.as_str(), "text" | "json") {
            return Err(invalid("logging.format", "must be text or json"));
        }
        if !matches!(
            self.logging.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace" | "off"
        ) {
            return Err(invalid(
                "logging.level",
                "must be one of error, warn, info, debug, trace, off",
            ));
        }
        if self.sink.batch_max_events == 0 {
            return Err(invalid("sink.batch_max_events", "must be at least 1"));
        }
        if self.sink.writers == 0 {
            return Err(invalid("sink.writers", "must be at least 1"));
        }
        if self.sink.channel_capacity == 0 {
            return Err(invalid("sink.channel_capacity", "must be at least 1"));
        }
        if self.metrics.port == self.server.port {
            return Err(invalid(
                "metrics.port",
                "must differ from server.port (0 serves /metrics on the main port only)",
            ));
        }
        if self.pricing.refresh_interval.is_zero() && !self.pricing.remote_url.trim().is_empty() {
            return Err(invalid(
                "pricing.refresh_interval",
                "must be greater than 0 (an empty pricing.remote_url turns refreshing off)",
            ));
        }
        // The stores' metadata name column is VARCHAR(255): a longer name
        // would be refused with the row it came in.
        if self.metadata.max_key_bytes > 255 {
            return Err(invalid("metadata.max_key_bytes", "must be at most 255"));
        }
        if self.auth.cache_ttl_secs == 0 {
            return Err(invalid("auth.cache_ttl_secs", "must be at least 1"));
        }
        Ok(self)
    }
}

fn invalid(key: &'static str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.to_string(),
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(p.strip_prefix("./").unwrap_or(p)),
        Err(_) => p.to_path_buf(),
    }
}

/// The keys whose values are never printed.
const SECRET_KEYS: [&str; 4] = [
    "storage.postgres.password",
    "storage.postgres.url",
    "s3.access_key_id",
    "s3.secret_access_key",
];

/// serde's messages quote the offending value; a wrongly typed secret must not be echoed.
fn redact(message: String) -> String {
    match (message.find('"'), message.rfind('"')) {
        (Some(a), Some(b)) if b > a => format!("{}\"…\"{}", &message[..a], &message[b + 1..]),
        _ => message,
    }
}

fn env_value(raw: &str, kind: Kind) -> Option<serde_norway::Value> {
    use serde_norway::Value;
    match kind {
        Kind::Str => Some(Value::String(raw.to_string())),
        Kind::Int => raw
            .trim()
            .parse::<u64>()
            .ok()
            .map(|n| Value::Number(n.into())),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Some(Value::Bool(false)),
            _ => None,
        },
    }
}

fn set_path(
    root: &mut serde_norway::Value,
    key: &str,
    value: serde_norway::Value,
) -> Result<(), String> {
    use serde_norway::Value;
    let mut node = root;
    let mut parts = key.split('.').peekable();
    let mut walked = String::new();
    while let Some(part) = parts.next() {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        let map = match node {
            Value::Mapping(m) => m,
            Value::Null => {
                *node = Value::Mapping(Default::default());
                match node {
                    Value::Mapping(m) => m,
                    _ => unreachable!("just assigned a mapping"),
                }
            }
            _ => return Err(format!("key `{walked}` must be a mapping")),
        };
        let k = Value::String(part.to_string());
        if parts.peek().is_none() {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert(Value::Null);
    }
    Ok(())
}

/// A duration as Go's `time.ParseDuration` reads it (the reference gateway's
/// syntax: `90s`, `1h30m`, `1.5h`, `250ms`), plus `d` for days, a bare number
/// of seconds, and spaces anywhere (`30 s`, which earlier builds took).
fn parse_duration(s: &str) -> Option<Duration> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let s = s.as_str();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok().map(Duration::from_secs);
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let seconds_per_unit = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return None,
        };
        let n: f64 = number.parse().ok()?;
        total = total.checked_add(Duration::try_from_secs_f64(n * seconds_per_unit).ok()?)?;
        rest = tail;
    }
    (!s.is_empty()).then_some(total)
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom("expected a duration such as 30s, 5m, 1h30m or 250ms")
        }),
    }
}

/// A price written as `2.5` or `"2.5"`; floats go through their shortest
/// round-trip text so `0.075` stays exactly 0.075.
fn de_decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Float(f64),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Int(n) => n.to_string(),
        Raw::Float(f) => f.to_string(),
        Raw::Text(t) => t,
    };
    text.trim()
        .parse::<Decimal>()
        .ok()
        .filter(|v| !v.is_sign_negative())
        .ok_or_else(|| serde::de::Error::custom("expected a non-negative decimal price"))
}

fn de_decimal_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    de_decimal(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_file_and_no_env_gives_the_sqlite_default_on_port_7680() {
        let c = Config::from_yaml_and_env("", "defaults", &env(&[])).unwrap();
        assert_eq!(c.server.port, 7680);
        assert_eq!(c.storage.effective_driver(), StorageDriver::Sqlite);
        assert!(c.storage.sqlite.path.is_absolute());
        assert_eq!(c.auth.cache_ttl_secs, 300);
        assert_eq!(c.server.max_body_bytes, 32 * 1024 * 1024);
    }

    #[test]
    fn the_shipped_example_config_loads() {
        let c =
            Config::from_yaml_and_env(include_str!("../conf/majordomo.yaml"), "example", &env(&[]))
                .unwrap();
        assert_eq!(c.storage.effective_driver(), StorageDriver::Sqlite);
        assert_eq!(c.server.port, 7680);
    }

    #[test]
    fn the_reference_example_config_loads() {
        let yaml = r#"
server:
  host: "0.0.0.0"
  port: 7680
  read_timeout: 30s
  write_timeout: 120s
storage:
  postgres:
    host: localhost
    port: 5432
    database: majordomo
    max_conns: 20
logging:
  body_storage: "none"
s3:
  enabled: true
  bucket: "majordomo-logs"
  region: "us-east-1"
pricing:
  remote_url: "https://www.llm-prices.com/current-v1.json"
  refresh_interval: 1h
"#;
        let c = Config::from_yaml_and_env(yaml, "test", &env(&[])).unwrap();
        assert_eq!(c.storage.effective_driver(), StorageDriver::Postgres);
        assert_eq!(c.pricing.refresh_interval, Duration::from_secs(3600));
        assert_eq!(c.server.write_timeout, Duration::from_secs(120));
    }

    #[test]
    fn env_overrides_keys_with_underscores_in_their_names() {
        let c = Config::from_yaml_and_env(
            "server:\n  port: 1234\n",
            "test",
            &env(&[
                ("MAJORDOMO_SERVER_PORT", "9999"),
                ("MAJORDOMO_SERVER_MAX_BODY_BYTES", "100"),
                ("MAJORDOMO_STORAGE_POSTGRES_MAX_CONNS", "3"),
                ("MAJORDOMO_STORAGE_DRIVER", "postgres"),
                (
                    "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL",
                    "http://127.0.0.1:1/v1",
                ),
                ("MAJORDOMO_PRICING_REMOTE_URL", ""),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.port, 9999);
        assert_eq!(c.server.max_body_bytes, 100);
        assert_eq!(c.storage.postgres.max_conns, 3);
        assert_eq!(c.storage.effective_driver(), StorageDriver::Postgres);
        assert_eq!(c.pricing.remote_url, "");
        assert_eq!(
            c.providers.openai.base_url.as_deref(),
            Some("http://127.0.0.1:1/v1")
        );
    }

    #[test]
    fn the_reference_names_of_the_body_limit_and_the_price_file_are_accepted() {
        let c =
            Config::from_yaml_and_env("logging:\n  max_body_size: 4096\n", "t", &env(&[])).unwrap();
        assert_eq!(c.logging.max_body_bytes, 4096);
        let c =
            Config::from_yaml_and_env("", "t", &env(&[("MAJORDOMO_LOGGING_MAX_BODY_SIZE", "512")]))
                .unwrap();
        assert_eq!(c.logging.max_body_bytes, 512);
        let c = Config::from_yaml_and_env("pricing:\n  fallback_file: ./p.json\n", "t", &env(&[]))
            .unwrap();
        assert_eq!(c.pricing.file.as_deref(), Some(Path::new("./p.json")));
        // Both names at once: majordomo's wins in the file, the environment
        // wins over the file, and majordomo's variable over the alias's.
        let both = "logging:\n  max_body_bytes: 100\n  max_body_size: 200\n";
        let c = Config::from_yaml_and_env(both, "t", &env(&[])).unwrap();
        assert_eq!(c.logging.max_body_bytes, 100);
        let c = Config::from_yaml_and_env(
            both,
            "t",
            &env(&[("MAJORDOMO_LOGGING_MAX_BODY_SIZE", "300")]),
        )
        .unwrap();
        assert_eq!(c.logging.max_body_bytes, 300);
        let c = Config::from_yaml_and_env(
            both,
            "t",
            &env(&[
                ("MAJORDOMO_LOGGING_MAX_BODY_SIZE", "300"),
                ("MAJORDOMO_LOGGING_MAX_BODY_BYTES", "400"),
            ]),
        )
        .unwrap();
        assert_eq!(c.logging.max_body_bytes, 400);
        let c = Config::from_yaml_and_env(
            include_str!("../conf/majordomo.yaml"),
            "example",
            &env(&[("MAJORDOMO_PRICING_FALLBACK_FILE", "./q.json")]),
        )
        .unwrap();
        assert_eq!(c.pricing.file.as_deref(), Some(Path::new("./q.json")));
    }

    #[test]
    fn an_optional_value_left_empty_is_unset() {
        let c = Config::from_yaml_and_env(
            "s3:\n  endpoint: \"\"\n",
            "t",
            &env(&[
                ("MAJORDOMO_S3_ACCESS_KEY_ID", ""),
                ("MAJORDOMO_S3_SECRET_ACCESS_KEY", " "),
                ("MAJORDOMO_STORAGE_POSTGRES_URL", ""),
                ("MAJORDOMO_PROVIDERS_GEMINI_BASE_URL", ""),
                ("MAJORDOMO_PRICING_FILE", ""),
                ("MAJORDOMO_SERVER_ERROR_LOG", ""),
            ]),
        )
        .unwrap();
        assert_eq!(c.s3.endpoint, None);
        assert_eq!(c.s3.access_key_id, None);
        assert_eq!(c.s3.secret_access_key, None);
        assert_eq!(c.storage.postgres.url, None);
        assert_eq!(c.providers.gemini.base_url, None);
        assert_eq!(c.pricing.file, None);
        assert_eq!(c.server.error_log, None);
        assert_eq!(
            c.storage.effective_driver(),
            StorageDriver::Sqlite,
            "an empty URL does not choose PostgreSQL"
        );
    }

    #[test]
    fn a_bad_env_value_names_the_variable_and_key() {
        let err = Config::from_yaml_and_env("", "t", &env(&[("MAJORDOMO_SERVER_PORT", "http")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MAJORDOMO_SERVER_PORT"), "{err}");
        assert!(err.contains("server.port"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let err = Config::from_yaml_and_env("server:\n  prot: 1\n", "t", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn a_wrongly_typed_password_is_not_echoed() {
        let err = Config::from_yaml_and_env(
            "storage:\n  postgres:\n    password: [\"hunter2secret\"]\n",
            "t",
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("storage.postgres.password"), "{err}");
        assert!(!err.contains("hunter2secret"), "{err}");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_never_echoed() {
        for yaml in [
            "storage:\n  postgres:\n    password: 12345678\n",
            "storage:\n  postgres:\n    url: 87654321\n",
            "s3:\n  secret_access_key: 1234.5678\n",
            "s3:\n  access_key_id: {id: \"AKIAsecretish\"}\n",
        ] {
            let err = Config::from_yaml_and_env(yaml, "t", &env(&[]))
                .unwrap_err()
                .to_string();
            for secret in ["12345678", "87654321", "1234.5678", "AKIAsecretish"] {
                assert!(!err.contains(secret), "{err}");
            }
            assert!(err.contains("quote the value"), "{err}");
        }
    }

    #[test]
    fn durations_are_read_as_the_reference_gateway_writes_them() {
        for (text, secs) in [
            ("30", 30.0),
            ("30s", 30.0),
            ("5m", 300.0),
            ("1h30m", 5400.0),
            ("1.5h", 5400.0),
            ("2m30s", 150.0),
            ("1h0m0s", 3600.0),
            ("250ms", 0.25),
            ("1500us", 0.0015),
            ("1d", 86_400.0),
            (" 2m ", 120.0),
            ("30 s", 30.0),
            ("1 h 30 m", 5400.0),
        ] {
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_secs_f64(secs)),
                "{text}"
            );
        }
        for text in ["", " ", "h", "5x", "1h30", ".", "-1s", "s30", "1e3s"] {
            assert_eq!(parse_duration(text), None, "{text:?}");
        }
        let c = Config::from_yaml_and_env(
            "server:\n  write_timeout: 2m30s\npricing:\n  refresh_interval: 1.5h\n",
            "t",
            &env(&[]),
        )
        .unwrap();
        assert_eq!(c.server.write_timeout, Duration::from_secs(150));
        assert_eq!(c.pricing.refresh_interval, Duration::from_secs(5400));
    }

    #[test]
    fn the_metrics_port_and_the_refresh_interval_are_checked() {
        let err = Config::from_yaml_and_env("metrics:\n  port: 7680\n", "t", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.port"), "{err}");
        let err = Config::from_yaml_and_env(
            "server:\n  port: 9000\n",
            "t",
            &env(&[("MAJORDOMO_METRICS_PORT", "9000")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("metrics.port"), "{err}");
        let err = Config::from_yaml_and_env("pricing:\n  refresh_interval: 0\n", "t", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pricing.refresh_interval"), "{err}");
        let err = Config::from_yaml_and_env("metadata:\n  max_key_bytes: 256\n", "t", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata.max_key_bytes"), "{err}");
        // Harmless with refreshing off.
        assert!(Config::from_yaml_and_env(
            "pricing:\n  refresh_interval: 0\n  remote_url: \"\"\n",
            "t",
            &env(&[])
        )
        .is_ok());
    }

    #[test]
    fn a_zero_timeout_is_an_error_naming_the_key() {
        for (var, value, key) in [
            ("MAJORDOMO_SERVER_READ_TIMEOUT", "0s", "server.read_timeout"),
            (
                "MAJORDOMO_SERVER_WRITE_TIMEOUT",
                "0",
                "server.write_timeout",
            ),
            (
                "MAJORDOMO_UPSTREAM_CONNECT_TIMEOUT_SECS",
                "0",
                "upstream.connect_timeout_secs",
            ),
            (
                "MAJORDOMO_UPSTREAM_READ_TIMEOUT_SECS",
                "0",
                "upstream.read_timeout_secs",
            ),
        ] {
            let err = Config::from_yaml_and_env("", "t", &env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn a_bad_base_url_is_an_error_naming_the_key() {
        let err = Config::from_yaml_and_env(
            "providers:\n  gemini:\n    base_url: ftp://x\n",
            "t",
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("providers.gemini.base_url"), "{err}");
    }

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("42"), Some(Duration::from_secs(42)));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn every_env_key_exists_in_the_config() {
        // Setting each override to a plausible value must never be "unknown key".
        for (key, kind) in ENV_KEYS {
            let v = match kind {
                Kind::Str => match *key {
                    "storage.driver" => "sqlite",
                    "logging.body_storage" => "none",
                    "logging.format" => "json",
                    "logging.level" => "info",
                    "server.read_timeout" | "server.write_timeout" | "pricing.refresh_interval" => {
                        "5s"
                    }
                    "storage.postgres.sslmode" => "disable",
                    k if k.ends_with("base_url") => "http://127.0.0.1:9",
                    _ => "x",
                },
                Kind::Int => "7",
                Kind::Bool => "true",
            };
            let e = env(&[(env_var_name(key).as_str(), v)]);
            Config::from_yaml_and_env("", "t", &e).unwrap_or_else(|err| panic!("{key}: {err}"));
        }
    }
}
