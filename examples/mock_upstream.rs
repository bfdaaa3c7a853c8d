//! The test suite's mock provider as a standalone server, for the Python SDK
//! tests and the load benchmarks.
//!
//! ```sh
//! cargo run --release --example mock_upstream -- --port 18080 [--pause-ms 0] [--event-delay-ms 0]
//! ```
//! Prints `listening on http://127.0.0.1:PORT` once it accepts connections.

#[path = "../tests/common/mock_upstream.rs"]
mod mock_upstream;

use std::time::Duration;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let port: u16 = arg("--port").and_then(|p| p.parse().ok()).unwrap_or(18080);
    let mock = mock_upstream::MockUpstream::start_on(port).await;
    mock.set_recording(false);
    if let Some(ms) = arg("--pause-ms").and_then(|v| v.parse().ok()) {
        mock.set_pause(Duration::from_millis(ms));
    }
    if let Some(ms) = arg("--event-delay-ms").and_then(|v| v.parse().ok()) {
        mock.set_event_delay(Duration::from_millis(ms));
    }
    println!("listening on {}", mock.base_url());
    let _ = tokio::signal::ctrl_c().await;
}
