//! `/health` (liveness) and `/readyz` (readiness: the store answers).
//!
//! `/readyz` never reveals why the store failed; the reason goes to the log.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;

use crate::store::Store;

/// A path the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthRoute {
    Health,
    Ready,
    Metrics,
}

/// Whether the request is for one of the gateway's own endpoints.
pub fn route(req: &RequestHeader) -> Option<HealthRoute> {
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return None;
    }
    match req.uri.path() {
        "/health" | "/healthz" => Some(HealthRoute::Health),
        "/readyz" => Some(HealthRoute::Ready),
        "/metrics" => Some(HealthRoute::Metrics),
        _ => None,
    }
}

impl HealthRoute {
    pub async fn respond(
        self,
        store: &Store,
        metrics: &crate::metrics::Metrics,
    ) -> (u16, &'static str, Bytes) {
        match self {
            HealthRoute::Metrics => (
                200,
                "text/plain; version=0.0.4",
                Bytes::from(metrics.render()),
            ),
            HealthRoute::Health => (200, "text/plain; charset=utf-8", Bytes::from_static(b"ok")),
            HealthRoute::Ready => {
                match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
                    Ok(Ok(())) => (
                        200,
                        "application/json",
                        Bytes::from_static(br#"{"status":"ok"}"#),
                    ),
                    outcome => {
                        match outcome {
                            Ok(Err(e)) => log::warn!("readiness check failed: {e}"),
                            _ => log::warn!("readiness check failed: database ping timed out"),
                        }
                        (
                            503,
                            "application/json",
                            Bytes::from_static(
                                br#"{"status":"error","error":"database unavailable"}"#,
                            ),
                        )
                    }
                }
            }
        }
    }
}
