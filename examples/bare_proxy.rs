//! The framework's floor: a Pingora 0.9 proxy that only forwards every
//! request to one fixed plain-HTTP upstream. No auth, no body inspection, no
//! logging: the load harness (`benches/load/run.sh`, contender "bare-pingora")
//! compares majordomo against this to show what majordomo's own work costs.
//!
//! ```sh
//! cargo run --release --example bare_proxy -- \
//!     --listen 127.0.0.1:18082 --upstream 127.0.0.1:18080 --threads 1
//! ```
//! Each flag may also come from the environment: `BARE_LISTEN`,
//! `BARE_UPSTREAM`, `BARE_THREADS` (default 1), `BARE_KEEPALIVE_POOL`
//! (idle upstream connections kept per thread, default 128 as in majordomo),
//! `BARE_L4_READ_BUFFER` / `--l4-read-buffer` (bytes; the client side's L4
//! read buffer, Pingora's default 64 KiB: the memory experiment of
//! benches/README.md), `BARE_WORK_STEALING` / `--work-stealing` (unset:
//! as majordomo's `server.work_stealing`, each thread's own runtime with one
//! thread, Pingora's shared work-stealing runtime with more).
//! Pid file and upgrade socket live under `$TMPDIR` with the listen port in
//! their names, so two copies never collide. SIGINT stops it at once,
//! SIGTERM gracefully (Pingora's meaning).

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::Result;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// `--name VALUE` from the command line, else the environment variable.
fn setting(flag: &str, env: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

fn main() {
    let listen = setting("--listen", "BARE_LISTEN").unwrap_or_else(|| "127.0.0.1:18082".into());
    let upstream: SocketAddr = setting("--upstream", "BARE_UPSTREAM")
        .unwrap_or_else(|| "127.0.0.1:18080".into())
        .parse()
        .expect("--upstream / BARE_UPSTREAM must be IP:PORT");
    let threads: usize = setting("--threads", "BARE_THREADS")
        .map(|t| {
            t.parse()
                .expect("--threads / BARE_THREADS must be a number")
        })
        .unwrap_or(1);
    let pool: usize = setting("--keepalive-pool", "BARE_KEEPALIVE_POOL")
        .map(|t| t.parse().expect("BARE_KEEPALIVE_POOL must be a number"))
        .unwrap_or(128);
    let work_stealing: bool = setting("--work-stealing", "BARE_WORK_STEALING")
        .map(|t| {
            t.parse()
                .expect("--work-stealing / BARE_WORK_STEALING must be true or false")
        })
        .unwrap_or(threads > 1);
    let tmp = std::env::temp_dir();
    let tag = listen.replace([':', '.'], "_");
    let conf = ServerConf {
        threads,
        upstream_keepalive_pool_size: pool,
        work_stealing,
        pid_file: tmp
            .join(format!("bare_proxy_{tag}.pid"))
            .display()
            .to_string(),
        upgrade_sock: tmp
            .join(format!("bare_proxy_{tag}.sock"))
            .display()
            .to_string(),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Bare { upstream },
        "bare",
    );
    match setting("--l4-read-buffer", "BARE_L4_READ_BUFFER") {
        Some(n) => {
            let n: usize = n.parse().expect("BARE_L4_READ_BUFFER must be a number");
            let buffers = L4BufferSettings::default().read(n);
            proxy.add_listener(ListenerConfig::tcp(listen.clone()).l4_buffer(buffers));
        }
        None => proxy.add_tcp(&listen),
    }
    server.add_service(proxy);
    eprintln!("bare_proxy: {listen} -> {upstream}, {threads} thread(s)");
    server.run_forever()
}
