//! Request/response bodies in S3 (`logging.body_storage: s3`).
//!
//! Each request with a body becomes one gzip-compressed JSON object at
//! `<api_key_id>/<YYYY-MM-DD>/<request_id>.json.gz`, written before the row so
//! the row's `body_s3_key` is set only once the object exists. Uploads are
//! idempotent (same key, same content), so a replayed record re-uploads
//! harmlessly. The object holds the bodies and the request's identity, never
//! a header: neither the majordomo key nor provider credentials reach it.
//! Any S3-compatible endpoint works (path-style requests by default).

use std::io::Write;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::S3Config;
use crate::store::RequestRecord;

pub struct BodyStore {
    store: Arc<dyn ObjectStore>,
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

    /// Takes a record's bodies out into the object to upload: (key, gzip JSON).
    pub fn prepare(r: &mut RequestRecord) -> Option<(String, Vec<u8>)> {
        if r.request_body.is_none() && r.response_body.is_none() {
            return None;
        }
        let doc = serde_json::json!({
            "request_id": r.id,
            "api_key_id": r.api_key_id,
            "provider": r.provider,
            "model": r.model,
            "request_path": r.request_path,
            "requested_at": r.requested_at,
            "status_code": r.status_code,
            "request_body": r.request_body.take(),
            "response_body": r.response_body.take(),
        });
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(doc.to_string().as_bytes()).ok()?;
        Some((Self::key_for(r), gz.finish().ok()?))
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
