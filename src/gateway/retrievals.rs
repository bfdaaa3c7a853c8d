//! Which background responses have been billed.
//!
//! An OpenAI response created with `"background": true` is billed when its
//! usage is first seen: when a GET retrieves it finished (its POST answered
//! `queued`, without usage), a cancel answers with it, or its POST streamed
//! it to its end. A client that retrieves it again (a dashboard re-reading
//! it, a poller that asks once more) must not be billed twice, whichever
//! gateway process serves it: a replica behind the same load balancer, or
//! this one after a restart or an upgrade. The usage parser names the
//! response whose usage an answer carries
//! (`ParsedResponse::background_response`); the first request to claim that
//! id in the store (`majordomo_billed_responses`, one row per response; the
//! first insert wins) bills it, later ones are logged unbilled. Each process
//! also remembers the ids it has seen claimed, so a poller's repeated looks
//! cost one store round trip, not one each.
//!
//! If the store fails or does not answer within [`CLAIM_TIMEOUT`], the
//! process falls back to what it remembers: a response it has not seen is
//! billed, so one that another process billed may be billed again.

use std::time::Duration;

use moka::future::Cache;
use uuid::Uuid;

use crate::store::Store;

/// Response ids remembered (~100 bytes each).
const CAPACITY: u64 = 100_000;
/// How long one is remembered: OpenAI keeps stored responses 30 days, but
/// pollers re-read a finished one within minutes.
const REMEMBERED_FOR: Duration = Duration::from_secs(24 * 3600);
/// Longest wait for the store's answer; the client has its response
/// already, this only holds the logging phase of a rare request.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);

pub struct BilledRetrievals {
    store: Store,
    /// Response ids known to be billed.
    billed: Cache<Box<str>, ()>,
}

impl BilledRetrievals {
    pub fn new(store: Store) -> BilledRetrievals {
        BilledRetrievals {
            store,
            billed: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(REMEMBERED_FOR)
                .build(),
        }
    }

    /// Whether `request_id` is the first to bill the background response
    /// `id` (a retrieval, a cancel, or the POST that streamed it to its
    /// end); claims it if so.
    pub async fn claim(&self, id: &str, request_id: Uuid) -> bool {
        if self.billed.contains_key(id) {
            return false;
        }
        let claim = self.store.claim_billed_response(id, request_id);
        match tokio::time::timeout(CLAIM_TIMEOUT, claim).await {
            Ok(Ok(first)) => {
                self.billed.insert(Box::from(id), ()).await;
                first
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {CLAIM_TIMEOUT:?}"),
                };
                log::warn!(
                    "cannot record that background response {id} is billed ({why}); \
                     billing it unless this process billed it before"
                );
                self.billed
                    .entry(Box::from(id))
                    .or_insert(())
                    .await
                    .is_fresh()
            }
        }
    }
}

/// `…/responses/{id}/cancel`: its POST answers with the response object,
/// which a background response's usage may be in; it is billed as a
/// retrieval is, once.
pub fn is_cancel(path: &str) -> bool {
    path.trim_end_matches('/')
        .strip_suffix("/cancel")
        .and_then(|p| p.rsplit_once('/'))
        .is_some_and(|(parent, id)| parent.ends_with("/responses") && !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StorageConfig, StorageDriver};

    #[test]
    fn a_cancel_is_a_post_to_a_responses_id_cancel() {
        assert!(is_cancel("/v1/responses/resp_1/cancel"));
        assert!(is_cancel("/openai/v1/responses/resp_1/cancel/"));
        assert!(!is_cancel("/v1/responses/resp_1"));
        assert!(!is_cancel("/v1/responses/cancel"));
        assert!(!is_cancel("/v1/responses//cancel"));
        assert!(!is_cancel("/v1/chat/completions/cancel"));
        assert!(!is_cancel("/v1/responses/resp_1/input_items"));
    }

    fn store(storage: impl FnOnce(&mut StorageConfig)) -> Store {
        let mut cfg = StorageConfig::default();
        storage(&mut cfg);
        Store::open(&cfg).unwrap()
    }

    #[tokio::test]
    async fn only_the_first_claim_of_a_response_is_first_in_any_process_on_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = |cfg: &mut StorageConfig| {
            cfg.driver = Some(StorageDriver::Sqlite);
            cfg.sqlite.path = dir.path().join("m.db");
        };
        store(sqlite).migrate().await.unwrap();
        // Two gateway processes on one store, each with its own memory.
        let (one, two) = (
            BilledRetrievals::new(store(sqlite)),
            BilledRetrievals::new(store(sqlite)),
        );
        let request = Uuid::now_v7;
        assert!(one.claim("resp_1", request()).await);
        assert!(!one.claim("resp_1", request()).await);
        assert!(!two.claim("resp_1", request()).await);
        assert!(two.claim("resp_2", request()).await);
        assert!(!one.claim("resp_2", request()).await);
    }

    #[tokio::test]
    async fn a_store_that_hangs_is_given_up_on_after_the_claim_timeout() {
        // Accepts connections (the kernel's backlog does) and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let billed = BilledRetrievals::new(store(|cfg| {
            cfg.driver = Some(StorageDriver::Postgres);
            cfg.postgres.host = Some("127.0.0.1".into());
            cfg.postgres.port = port;
        }));
        let started = std::time::Instant::now();
        assert!(billed.claim("resp_1", Uuid::now_v7()).await);
        let waited = started.elapsed();
        assert!(waited >= CLAIM_TIMEOUT, "{waited:?}");
        assert!(waited < CLAIM_TIMEOUT * 2, "{waited:?}");
        // Remembered: the next look does not wait again.
        let started = std::time::Instant::now();
        assert!(!billed.claim("resp_1", Uuid::now_v7()).await);
        assert!(started.elapsed() < CLAIM_TIMEOUT / 2);
        drop(listener);
    }

    #[tokio::test]
    async fn a_store_that_does_not_answer_leaves_the_process_memory_to_decide() {
        let unreachable = store(|cfg| {
            cfg.driver = Some(StorageDriver::Postgres);
            cfg.postgres.host = Some("127.0.0.1".into());
            cfg.postgres.port = 1;
        });
        let billed = BilledRetrievals::new(unreachable);
        let started = std::time::Instant::now();
        assert!(billed.claim("resp_1", Uuid::now_v7()).await);
        assert!(!billed.claim("resp_1", Uuid::now_v7()).await);
        assert!(billed.claim("resp_2", Uuid::now_v7()).await);
        assert!(started.elapsed() < 3 * CLAIM_TIMEOUT);
    }
}
