//! Which background responses this process has billed on a retrieval.
//!
//! An OpenAI response created with `"background": true` is billed when a GET
//! retrieves it finished (its POST answered `queued`, without usage). A
//! client that retrieves it again (a dashboard re-reading it, a poller that
//! asks once more) must not be billed twice: the first retrieval that
//! carries its usage is remembered here, by response id, and later ones are
//! logged unbilled. Memory only, bounded: a restart, or another replica
//! behind the same load balancer, does not know what this one billed.

use std::time::Duration;

use moka::future::Cache;

/// Response ids remembered (~100 bytes each).
const CAPACITY: u64 = 100_000;
/// How long one is remembered: OpenAI keeps stored responses 30 days, but
/// pollers re-read a finished one within minutes.
const REMEMBERED_FOR: Duration = Duration::from_secs(24 * 3600);

pub struct BilledRetrievals {
    billed: Cache<Box<str>, ()>,
}

impl Default for BilledRetrievals {
    fn default() -> Self {
        BilledRetrievals {
            billed: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(REMEMBERED_FOR)
                .build(),
        }
    }
}

impl BilledRetrievals {
    /// Whether this is the first billed retrieval of the response the GET
    /// `path` names (`…/responses/{id}`); remembers it. A path that names
    /// no response is always first.
    pub async fn first(&self, path: &str) -> bool {
        let Some(id) = response_id(path) else {
            return true;
        };
        self.billed
            .entry(Box::from(id))
            .or_insert(())
            .await
            .is_fresh()
    }
}

/// The `{id}` of `…/responses/{id}` (a trailing slash allowed).
fn response_id(path: &str) -> Option<&str> {
    let path = path.trim_end_matches('/');
    let (parent, id) = path.rsplit_once('/')?;
    (parent.ends_with("/responses") && !id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_id_is_the_last_segment_after_responses() {
        assert_eq!(response_id("/v1/responses/resp_1"), Some("resp_1"));
        assert_eq!(response_id("/openai/v1/responses/resp_1/"), Some("resp_1"));
        assert_eq!(response_id("/v1/responses"), None);
        assert_eq!(response_id("/v1/responses/resp_1/input_items"), None);
        assert_eq!(response_id("/v1/chat/completions/chatcmpl-1"), None);
    }

    #[tokio::test]
    async fn only_the_first_retrieval_of_a_response_is_first() {
        let billed = BilledRetrievals::default();
        assert!(billed.first("/v1/responses/resp_1").await);
        assert!(!billed.first("/v1/responses/resp_1/").await);
        assert!(billed.first("/v1/responses/resp_2").await);
        assert!(billed.first("/v1/other").await);
        assert!(billed.first("/v1/other").await);
    }
}
