//! The integration-test harness: a mock provider upstream (in-process), a
//! store per test (a temporary SQLite file, or a fresh database on the local
//! PostgreSQL), the real `majordomo` binary started on a free port against
//! them, and the CLI run the same way a user runs it.
//!
//! Every behaviour test runs on both stores: write it as
//! `async fn name(backend: Backend)` and list it in `both_stores!`.
#![allow(dead_code)]

pub mod mock_upstream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use mock_upstream::{canned, MockUpstream, ScriptedResponse};

pub const BIN: &str = env!("CARGO_BIN_EXE_majordomo");
pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;
pub const PG_USER: &str = "postgres";

/// Runs each listed scenario once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::common::Backend::Sqlite).await }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::common::Backend::Postgres).await }
            )*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One test's store and scratch directory; the PostgreSQL database is dropped with it.
pub struct TestEnv {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub pg_database: Option<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub async fn pg_admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL must be running on 127.0.0.1:5432 (the PostgreSQL tests never skip)");
    tokio::spawn(conn);
    client
}

impl TestEnv {
    pub async fn new(backend: Backend) -> TestEnv {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg_database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let name = format!(
                    "mdm_test_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    Instant::now().elapsed().subsec_nanos() % 100_000
                );
                pg_admin()
                    .await
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                Some(name)
            }
        };
        TestEnv {
            backend,
            dir,
            pg_database,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join("majordomo.db")
    }

    /// The storage settings, as a user would give them in the environment.
    pub fn store_env(&self) -> Vec<(String, String)> {
        let mut env = vec![];
        match &self.pg_database {
            None => {
                env.push(("MAJORDOMO_STORAGE_DRIVER".into(), "sqlite".into()));
                env.push((
                    "MAJORDOMO_STORAGE_SQLITE_PATH".into(),
                    self.sqlite_path().display().to_string(),
                ));
            }
            Some(db) => {
                env.push(("MAJORDOMO_STORAGE_DRIVER".into(), "postgres".into()));
                env.push(("MAJORDOMO_STORAGE_POSTGRES_HOST".into(), PG_HOST.into()));
                env.push((
                    "MAJORDOMO_STORAGE_POSTGRES_PORT".into(),
                    PG_PORT.to_string(),
                ));
                env.push(("MAJORDOMO_STORAGE_POSTGRES_USER".into(), PG_USER.into()));
                env.push(("MAJORDOMO_STORAGE_POSTGRES_DATABASE".into(), db.clone()));
            }
        }
        env.push((
            "MAJORDOMO_SINK_SPOOL_DIR".into(),
            self.dir.path().join("spool").display().to_string(),
        ));
        env
    }

    /// A `majordomo` command with this store, run in the scratch directory,
    /// with no inherited `MAJORDOMO_*` settings.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("MAJORDOMO_") {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(self.dir.path());
        cmd.envs(self.store_env());
        cmd.env("MAJORDOMO_PRICING_REMOTE_URL", "");
        cmd
    }

    /// Runs the CLI and returns its output (whatever the exit status).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run majordomo")
    }

    /// Runs the CLI, asserting success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "majordomo {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Creates a key with the CLI; returns (id, plaintext key).
    pub fn create_key(&self, name: &str) -> (String, String) {
        let out = self.cli_ok(&["keys", "create", "--name", name, "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("create --json");
        (
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(db) = self.pg_database.take() {
            // Drop runs inside the test's runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    pg_admin()
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .await
                })
            })
            .join();
        }
    }
}

/// A free TCP port on loopback (bound and released; small race accepted).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `majordomo` process; killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub port: u16,
    pub log_path: PathBuf,
}

pub struct GatewayBuilder<'a> {
    env: &'a TestEnv,
    vars: Vec<(String, String)>,
    args: Vec<String>,
    unread_output: bool,
}

impl TestEnv {
    /// A gateway on this store with every provider pointed at `upstream`.
    pub fn gateway<'a>(&'a self, upstream: &MockUpstream) -> GatewayBuilder<'a> {
        let base = upstream.base_url();
        GatewayBuilder {
            env: self,
            vars: vec![
                ("MAJORDOMO_PROVIDERS_OPENAI_BASE_URL".into(), base.clone()),
                (
                    "MAJORDOMO_PROVIDERS_ANTHROPIC_BASE_URL".into(),
                    base.clone(),
                ),
                ("MAJORDOMO_PROVIDERS_GEMINI_BASE_URL".into(), base),
            ],
            args: vec![],
            unread_output: false,
        }
    }
}

impl TestEnv {
    /// A second gateway on this store beside the one [`TestEnv::gateway`]
    /// starts, as a replica runs: its own PID file, upgrade socket and spool.
    pub fn replica<'a>(&'a self, upstream: &MockUpstream, name: &str) -> GatewayBuilder<'a> {
        let path = |ext: &str| {
            self.path()
                .join(format!("{name}{ext}"))
                .display()
                .to_string()
        };
        self.gateway(upstream)
            .env("MAJORDOMO_SERVER_PID_FILE", path(".pid"))
            .env("MAJORDOMO_SERVER_UPGRADE_SOCK", path(".sock"))
            .env("MAJORDOMO_SINK_SPOOL_DIR", path("-spool"))
    }
}

/// A finished OpenAI response that ran in the background (36 input and 87
/// output tokens), as a retrieval or a cancel answers with it.
pub fn finished_background_response(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "response", "status": "completed",
                       "background": true, "model": "gpt-4o", "output": [],
                       "usage": {"input_tokens": 36, "output_tokens": 87, "total_tokens": 123}})
}

/// GETs the response `object` names through `gw`, the mock answering with `object`.
pub async fn retrieve_response(
    mock: &MockUpstream,
    gw: &GatewayProcess,
    key: &str,
    object: &serde_json::Value,
) -> reqwest::Response {
    mock.push_response(ScriptedResponse::json(200, object.clone()));
    let id = object["id"].as_str().expect("a response object has an id");
    client()
        .get(gw.url(&format!("/v1/responses/{id}")))
        .header("X-Majordomo-Key", key)
        .header("Authorization", "Bearer sk-provider-secret")
        .send()
        .await
        .unwrap()
}

impl GatewayBuilder<'_> {
    pub fn env(mut self, k: &str, v: impl ToString) -> Self {
        self.vars.push((k.to_string(), v.to_string()));
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    /// Stdout and stderr go to pipes nobody reads: once the pipe is full,
    /// a write to it blocks (a stalled log collector). `log()` is then empty.
    pub fn unread_output(mut self) -> Self {
        self.unread_output = true;
        self
    }

    /// The command `start` runs, its port and its log file.
    fn prepare(self) -> (Command, u16, PathBuf) {
        let port = free_port();
        let log_path = self.env.path().join(format!("gateway-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = self.env.command();
        cmd.env("MAJORDOMO_SERVER_HOST", "127.0.0.1")
            .env("MAJORDOMO_SERVER_PORT", port.to_string())
            .env("MAJORDOMO_SERVER_THREADS", "2")
            .env("MAJORDOMO_METRICS_PORT", "0")
            .env(
                "MAJORDOMO_SERVER_PID_FILE",
                self.env.path().join("majordomo.pid").display().to_string(),
            )
            .env(
                "MAJORDOMO_SERVER_UPGRADE_SOCK",
                self.env.path().join("upgrade.sock").display().to_string(),
            )
            .envs(self.vars)
            .args(&self.args)
            .stdin(Stdio::null());
        if self.unread_output {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else {
            cmd.stdout(log.try_clone().unwrap()).stderr(log);
        }
        (cmd, port, log_path)
    }

    pub async fn start(self) -> GatewayProcess {
        let (mut cmd, port, log_path) = self.prepare();
        let child = cmd.spawn().expect("spawn majordomo");
        let mut gw = GatewayProcess {
            child,
            port,
            log_path,
        };
        gw.wait_ready(Duration::from_secs(30)).await;
        gw
    }

    /// Starts the gateway with `-d`: the command returns once it has forked,
    /// and the daemon is found by its pid file.
    pub async fn start_daemon(self) -> Daemon {
        let pid_file = self.env.path().join("majordomo.pid");
        let (mut cmd, port, log_path) = self.prepare();
        let status = cmd.arg("-d").status().expect("run majordomo -d");
        assert!(status.success(), "majordomo -d exited with {status}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid = loop {
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                break pid;
            }
            assert!(Instant::now() < deadline, "no pid file from majordomo -d");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let daemon = Daemon {
            pid,
            port,
            log_path,
        };
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(daemon.url("/health")).send().await {
                if r.status() == 200 {
                    return daemon;
                }
            }
            assert!(Instant::now() < deadline, "majordomo -d never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A gateway started with `-d` (not our child); killed when dropped.
pub struct Daemon {
    pub pid: u32,
    pub port: u16,
    pub log_path: PathBuf,
}

impl Daemon {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Running (a zombie nobody reaped has ended: a daemon's parent is
    /// whatever reaper the machine has, or none).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
            // The state follows the command's closing parenthesis.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
    }

    /// SIGTERM, then waits up to `timeout` for the process to be gone.
    pub async fn stop(&self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

impl GatewayProcess {
    /// POSTs `body` to OpenAI's chat through the gateway with `key`.
    pub async fn post_chat(&self, key: &str, body: &serde_json::Value) -> reqwest::Response {
        client()
            .post(self.url("/v1/chat/completions"))
            .header("X-Majordomo-Key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "majordomo exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = client.get(self.url("/health")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "majordomo not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (e.g. "TERM", "QUIT") to the process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP client for tests (no connection reuse surprises across tests).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One `llm_requests` row, read back the same way from either store.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub id: String,
    pub api_key_id: Option<String>,
    pub provider_api_key_hash: Option<String>,
    pub provider: String,
    pub model: String,
    pub request_path: String,
    pub request_method: String,
    pub status_code: i64,
    pub response_time_ms: i64,
    pub time_to_first_byte_ms: Option<i64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub cache_creation_tokens: i64,
    pub reasoning_tokens: i64,
    pub input_cost: rust_decimal::Decimal,
    pub output_cost: rust_decimal::Decimal,
    pub total_cost: rust_decimal::Decimal,
    pub price_found: bool,
    pub usage_complete: bool,
    pub error_message: Option<String>,
    pub raw_metadata: Option<serde_json::Value>,
}

const ROW_SQL: &str = "SELECT id, majordomo_api_key_id, provider_api_key_hash, provider, model, \
    request_path, request_method, status_code, response_time_ms, time_to_first_byte_ms, \
    input_tokens, output_tokens, cached_tokens, cache_creation_tokens, reasoning_tokens, \
    input_cost, output_cost, total_cost, price_found, usage_complete, error_message, raw_metadata \
    FROM llm_requests";

const PG_ROW_SQL: &str = "SELECT id::text, majordomo_api_key_id::text, provider_api_key_hash, \
    provider, model, request_path, request_method, status_code::bigint, response_time_ms::bigint, \
    time_to_first_byte_ms::bigint, input_tokens::bigint, output_tokens::bigint, \
    cached_tokens::bigint, cache_creation_tokens::bigint, reasoning_tokens, input_cost::text, output_cost::text, \
    total_cost::text, price_found, usage_complete, error_message, raw_metadata::text \
    FROM llm_requests";

fn dec(s: &str) -> rust_decimal::Decimal {
    s.parse().unwrap_or_else(|_| panic!("not a decimal: {s}"))
}

impl TestEnv {
    pub async fn pg_client(&self) -> tokio_postgres::Client {
        let db = self.pg_database.as_ref().expect("postgres env");
        let (client, conn) = tokio_postgres::connect(
            &format!("host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={db}"),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect to test database");
        tokio::spawn(conn);
        client
    }

    /// Every logged row (empty if the table does not exist yet).
    pub async fn rows(&self) -> Vec<LogRow> {
        match self.backend {
            Backend::Postgres => {
                let c = self.pg_client().await;
                let rows = match c.query(PG_ROW_SQL, &[]).await {
                    Ok(r) => r,
                    Err(_) => return vec![],
                };
                rows.iter()
                    .map(|r| LogRow {
                        id: r.get(0),
                        api_key_id: r.get(1),
                        provider_api_key_hash: r.get(2),
                        provider: r.get(3),
                        model: r.get(4),
                        request_path: r.get(5),
                        request_method: r.get(6),
                        status_code: r.get(7),
                        response_time_ms: r.get(8),
                        time_to_first_byte_ms: r.get(9),
                        input_tokens: r.get(10),
                        output_tokens: r.get(11),
                        cached_tokens: r.get::<_, Option<i64>>(12).unwrap_or(0),
                        cache_creation_tokens: r.get::<_, Option<i64>>(13).unwrap_or(0),
                        reasoning_tokens: r.get(14),
                        input_cost: dec(r.get(15)),
                        output_cost: dec(r.get(16)),
                        total_cost: dec(r.get(17)),
                        price_found: r.get(18),
                        usage_complete: r.get(19),
                        error_message: r.get(20),
                        raw_metadata: r
                            .get::<_, Option<String>>(21)
                            .map(|s| serde_json::from_str(&s).unwrap()),
                    })
                    .collect()
            }
            Backend::Sqlite => {
                let path = self.sqlite_path();
                tokio::task::spawn_blocking(move || {
                    let c = rusqlite::Connection::open(path).unwrap();
                    c.busy_timeout(Duration::from_secs(5)).unwrap();
                    let Ok(mut stmt) = c.prepare(ROW_SQL) else {
                        return vec![];
                    };
                    stmt.query_map([], |r| {
                        Ok(LogRow {
                            id: r.get(0)?,
                            api_key_id: r.get(1)?,
                            provider_api_key_hash: r.get(2)?,
                            provider: r.get(3)?,
                            model: r.get(4)?,
                            request_path: r.get(5)?,
                            request_method: r.get(6)?,
                            status_code: r.get(7)?,
                            response_time_ms: r.get(8)?,
                            time_to_first_byte_ms: r.get(9)?,
                            input_tokens: r.get(10)?,
                            output_tokens: r.get(11)?,
                            cached_tokens: r.get::<_, Option<i64>>(12)?.unwrap_or(0),
                            cache_creation_tokens: r.get::<_, Option<i64>>(13)?.unwrap_or(0),
                            reasoning_tokens: r.get(14)?,
                            input_cost: dec(&r.get::<_, String>(15)?),
                            output_cost: dec(&r.get::<_, String>(16)?),
                            total_cost: dec(&r.get::<_, String>(17)?),
                            price_found: r.get(18)?,
                            usage_complete: r.get(19)?,
                            error_message: r.get(20)?,
                            raw_metadata: r
                                .get::<_, Option<String>>(21)?
                                .map(|s| serde_json::from_str(&s).unwrap()),
                        })
                    })
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap()
                })
                .await
                .unwrap()
            }
        }
    }

    /// Waits until at least `n` rows are logged (the sink batches), then returns them all.
    pub async fn wait_rows(&self, n: usize, timeout: Duration) -> Vec<LogRow> {
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self.rows().await;
            if rows.len() >= n || Instant::now() >= deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The row for one request id, waiting for it to be written.
    pub async fn row(&self, request_id: &str) -> LogRow {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.rows().await.into_iter().find(|r| r.id == request_id) {
                return r;
            }
            assert!(Instant::now() < deadline, "no row for request {request_id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A TCP relay in front of a server (PostgreSQL), which a test can cut
/// (every open connection dropped, new ones closed at once) and restore, or
/// silence.
pub struct TcpRelay {
    pub port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Bumped by [`TcpRelay::silence`]: connections opened before go quiet.
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

use std::sync::Arc;

impl TcpRelay {
    pub async fn start(target: (&'static str, u16)) -> TcpRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (c, cs, gen) = (cut.clone(), conns.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut silenced = gen.subscribe();
                let born = *silenced.borrow_and_update();
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = async { silenced.wait_for(|g| *g > born).await.map(|_| ()) } => {
                                // Silent: the sockets stay open, nothing moves.
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                });
                cs.lock().unwrap().push(handle);
            }
        });
        TcpRelay {
            port,
            cut,
            conns,
            generation,
            task,
        }
    }

    /// The database "goes away": open connections die, new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// The open connections go silent, as when a NAT or a load balancer
    /// forgets them: nothing is forwarded on them any more and nothing says
    /// so (no FIN, no RST). New connections work.
    pub fn silence(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.task.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

impl TestEnv {
    /// Store settings that reach PostgreSQL through `relay`.
    pub fn via_relay(&self, relay: &TcpRelay) -> Vec<(String, String)> {
        vec![(
            "MAJORDOMO_STORAGE_POSTGRES_PORT".to_string(),
            relay.port.to_string(),
        )]
    }
}

impl GatewayProcess {
    /// The value of one series from `/metrics` on the main port, e.g.
    /// `majordomo_sink_records_total{outcome="dropped"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        parse_metric(&text, series)
    }
}

pub fn parse_metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Reads a gateway response to its end: (status, request id, body).
pub async fn finish(r: reqwest::Response) -> (u16, String, bytes::Bytes) {
    let status = r.status().as_u16();
    let id = r.headers()[REQUEST_ID].to_str().unwrap().to_string();
    (status, id, r.bytes().await.unwrap())
}

pub const REQUEST_ID: &str = "x-majordomo-request-id";

/// Environment that makes the gateway resolve names from `hosts` (a hosts
/// file: one `address name` per line, several lines per name in order) with
/// nss_wrapper (Debian `libnss-wrapper`, which `scripts/test.sh` installs):
/// a host name with several addresses, some of them dead, without touching
/// /etc/hosts or a DNS server.
pub fn resolving_from(hosts: &Path) -> Vec<(String, String)> {
    let lib = std::env::var("MAJORDOMO_TEST_NSS_WRAPPER").unwrap_or_else(|_| {
        [
            "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
            "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
            "/usr/lib64/libnss_wrapper.so",
            "/usr/lib/libnss_wrapper.so",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect(
            "libnss_wrapper.so not found: apt-get install libnss-wrapper (scripts/test.sh does)",
        )
        .to_string()
    });
    vec![
        ("LD_PRELOAD".into(), lib),
        ("NSS_WRAPPER_HOSTS".into(), hosts.display().to_string()),
    ]
}
