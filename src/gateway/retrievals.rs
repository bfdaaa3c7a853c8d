//! Which background responses have been billed.
//!
//! An OpenAI response created with `"background": true` is billed when its
//! usage is first seen: when a GET retrieves it finished (its POST answered
//! `queued`, without usage), a cancel answers with it, or its POST streamed
//! it to its end. A client that retrieves it again (a dashboard re-reading
//! it, a poller that asks once more) must not be billed twice, whichever
//! gateway process serves it: a replica behind the same load balancer, or
//! this one after a restart or an upgrade.
//!
//! The usage parser names the response whose usage an answer carries
//! (`ParsedResponse::background_response`). The row that carries it names
//! it too (`RequestRecord::billed_response`), and the store claims the id in
//! the transaction that writes the row (`Store::insert_requests`): the
//! first row to claim it keeps its usage, later ones are written unbilled.
//! So the decision is as durable as the row, whatever the database does
//! meanwhile (a row that waits in the spool claims when it is written), and
//! the proxy never waits for it.
//!
//! Each process also remembers the ids it has handed to the sink
//! ([`BilledResponses`]): a poller's repeated looks are logged unbilled at
//! once, without a claim, and the gateway's metrics count a response's
//! usage once per process.

use std::time::Duration;

use moka::future::Cache;

/// Response ids remembered (~100 bytes each).
const CAPACITY: u64 = 100_000;
/// How long one is remembered: OpenAI keeps stored responses 30 days, but
/// pollers re-read a finished one within minutes. One forgotten is claimed
/// again, and the store decides.
const REMEMBERED_FOR: Duration = Duration::from_secs(24 * 3600);

/// The background responses whose usage this process has handed to the sink.
pub struct BilledResponses {
    seen: Cache<Box<str>, ()>,
}

impl Default for BilledResponses {
    fn default() -> BilledResponses {
        BilledResponses {
            seen: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(REMEMBERED_FOR)
                .build(),
        }
    }
}

impl BilledResponses {
    /// Whether this is the process's first row to carry the usage of the
    /// background response `id`; remembers it if so. Only a first one goes
    /// to the store's claim; a later one is logged unbilled, since the first
    /// (or a row of another process that claimed it before) bills it.
    pub async fn first_look(&self, id: &str) -> bool {
        if self.seen.contains_key(id) {
            return false;
        }
        self.seen
            .entry(Box::from(id))
            .or_insert(())
            .await
            .is_fresh()
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

    #[tokio::test]
    async fn only_the_first_look_of_a_process_at_a_response_goes_to_the_claim() {
        let billed = BilledResponses::default();
        assert!(billed.first_look("resp_1").await);
        assert!(!billed.first_look("resp_1").await);
        assert!(billed.first_look("resp_2").await);
        assert!(!billed.first_look("resp_2").await);
    }
}
