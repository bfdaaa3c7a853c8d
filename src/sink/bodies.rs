//! Request/response bodies in S3 (`logging.body_storage: s3`).
//!
//! Each request with a body becomes one gzip-compressed JSON object at
//! `<api_key_id>/<YYYY-MM-DD>/<request_id>.json.gz`, written before the row so
//! the row's `body_s3_key` is set only once the object exists. A body whose
//! upload fails stays in the row (its `request_body` / `response_body`
//! columns): S3 being away costs where the body is kept, never the body.
//! Each upload has a short time budget, so S3 being slow delays a batch of
//! rows by seconds, not by the client library's default minutes. Uploads are
//! idempotent (same key, same content), so a replayed record re-uploads
//! harmlessly. The object holds the bodies and the request's identity, never
//! a header: neither the majordomo key nor provider credentials reach it.
//! Any S3-compatible endpoint works (path-style requests by default).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::config::S3Config;
use crate::store::RequestRecord;

pub struct BodyStore {
    store: Arc<dyn ObjectStore>,
}

/// The object's JSON: the bodies and the request's identity, no header.
#[derive(serde::Serialize)]
struct BodyObject<'a> {
    request_id: &'a uuid::Uuid,
    api_key_id: Option<&'a uuid::Uuid>,
    provider: &'a str,
    model: &'a str,
    request_path: &'a str,
    requested_at: &'a chrono::DateTime<chrono::Utc>,
    status_code: i32,
    request_body: Option<&'a str>,
    response_body: Option<&'a str>,
}

impl std::fmt::Debug for BodyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BodyStore({})", self.store)
    }
}

impl BodyStore {
    /// Builds the client; credentials from the config, else the standard AWS
    /// environment / instance chain.
    pub fn from_config(cfg: &S3Config) -> Result<BodyStore, String> {
        if cfg.bucket.trim().is_empty() {
            return Err("s3.bucket must be set when logging.body_storage is s3".into());
        }
        let mut b = AmazonS3Builder::from_env()
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(Duration::from_secs(10)),
            )
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(15),
                ..RetryConfig::default()
            })
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_virtual_hosted_style_request(!cfg.path_style);
        if let Some(endpoint) = &cfg.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(id) = &cfg.access_key_id {
            b = b.with_access_key_id(id);
        }
        if let Some(secret) = &cfg.secret_access_key {
            b = b.with_secret_access_key(secret);
        }
        let store = b.build().map_err(|e| format!("s3: {e}"))?;
        Ok(BodyStore {
            store: Arc::new(store),
        })
    }

    /// The object key of a record's bodies.
    pub fn key_for(r: &RequestRecord) -> String {
        let owner = r
            .api_key_id
            .map(|k| k.to_string())
            .unwrap_or_else(|| "no-key".to_string());
        format!(
            "{owner}/{}/{}.json.gz",
            r.requested_at.format("%Y-%m-%d"),
            r.id
        )
    }

    /// The object to upload for a record's bodies: (key, gzip JSON). The
    /// bodies stay in the record until [`Self::stored`] says the object is in S3.
    pub fn prepare(r: &RequestRecord) -> Option<(String, Vec<u8>)> {
        if r.request_body.is_none() && r.response_body.is_none() {
            return None;
        }
        let doc = BodyObject {
            request_id: &r.id,
            api_key_id: r.api_key_id.as_ref(),
            provider: &r.provider,
            model: &r.model,
            request_path: &r.request_path,
            requested_at: &r.requested_at,
            status_code: r.status_code,
            request_body: r.request_body.as_deref(),
            response_body: r.response_body.as_deref(),
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        serde_json::to_writer(&mut gz, &doc).ok()?;
        Some((Self::key_for(r), gz.finish().ok()?))
    }

    /// The record's bodies are in S3 at `key`: the row points there instead.
    pub fn stored(r: &mut RequestRecord, key: String) {
        r.request_body = None;
        r.response_body = None;
        r.body_s3_key = Some(key);
    }

    /// Stores one prepared object.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), String> {
        self.store
            .put(&ObjectPath::from(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| format!("s3 put {key}: {e}"))
    }
}
