//! `X-Majordomo-*` request headers → metadata entries (SPEC §7).
//!
//! Every such header except `-Key` and `-Provider` becomes an entry named by
//! the lowercased rest of its name (`X-Majordomo-User-Id` → `user-id`), first
//! value only. Limits on count and size are a 400, never a truncated row.

use http::{HeaderMap, HeaderName};

use crate::config::MetadataConfig;

pub const HEADER_PREFIX: &str = "x-majordomo-";
pub const KEY_HEADER: &str = "x-majordomo-key";
pub const PROVIDER_HEADER: &str = "x-majordomo-provider";
/// The same two as parsed names: a lookup by `&str` parses and lowercases the
/// name on every request.
pub const KEY_HEADER_NAME: HeaderName = HeaderName::from_static(KEY_HEADER);
pub const PROVIDER_HEADER_NAME: HeaderName = HeaderName::from_static(PROVIDER_HEADER);

/// Collects metadata entries, or says why the headers are not acceptable.
pub fn collect(
    headers: &HeaderMap,
    limits: &MetadataConfig,
) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let name = name.as_str(); // http lowercases header names
        let Some(key) = name.strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if name == KEY_HEADER || name == PROVIDER_HEADER || key.is_empty() {
            continue;
        }
        if out.iter().any(|(k, _)| k == key) {
            continue; // first value wins
        }
        if out.len() >= limits.max_keys {
            return Err(format!("more than {} metadata headers", limits.max_keys));
        }
        if key.len() > limits.max_key_bytes {
            return Err(format!(
                "metadata name {:?} is longer than {} bytes",
                &key[..limits.max_key_bytes.min(key.len())],
                limits.max_key_bytes
            ));
        }
        if value.len() > limits.max_value_bytes {
            return Err(format!(
                "value of metadata {key:?} is longer than {} bytes",
                limits.max_value_bytes
            ));
        }
        let value = match value.to_str() {
            Ok(v) => v.to_string(),
            // Non-ASCII header bytes: keep them if they are UTF-8.
            Err(_) => String::from_utf8(value.as_bytes().to_vec())
                .map_err(|_| format!("value of metadata {key:?} is not valid UTF-8"))?,
        };
        out.push((key.to_string(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn limits() -> MetadataConfig {
        MetadataConfig {
            max_keys: 3,
            max_key_bytes: 16,
            max_value_bytes: 8,
        }
    }

    #[test]
    fn metadata_headers_become_lowercased_entries_without_key_and_provider() {
        let mut h = HeaderMap::new();
        h.insert("X-Majordomo-User-Id", HeaderValue::from_static("u1"));
        h.append("X-Majordomo-User-Id", HeaderValue::from_static("u2"));
        h.insert("X-Majordomo-Key", HeaderValue::from_static("secret"));
        h.insert("X-Majordomo-Provider", HeaderValue::from_static("openai"));
        h.insert("Authorization", HeaderValue::from_static("Bearer x"));
        let m = collect(&h, &limits()).unwrap();
        assert_eq!(m, vec![("user-id".to_string(), "u1".to_string())]);
    }

    #[test]
    fn too_many_or_too_long_metadata_is_refused() {
        let mut h = HeaderMap::new();
        for i in 0..4 {
            h.insert(
                http::HeaderName::from_bytes(format!("x-majordomo-k{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        assert!(collect(&h, &limits()).unwrap_err().contains("more than 3"));
        let mut h = HeaderMap::new();
        h.insert("x-majordomo-feature", HeaderValue::from_static("123456789"));
        assert!(collect(&h, &limits())
            .unwrap_err()
            .contains("longer than 8"));
    }
}
