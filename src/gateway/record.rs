//! Turns a finished request into its log row: tokens, model, cost, status.
//!
//! Pure functions over what the phases collected; `logging` calls
//! [`build`] and hands the result to the sink.

use std::cell::RefCell;

use chrono::Utc;
use http::header::{HeaderName, AUTHORIZATION};
use pingora::http::RequestHeader;
use serde_json::{Map, Value};

use super::RequestCtx;
use crate::keys::LastHash;
use crate::pricing::{self, PriceTable};
use crate::provider::Provider;
use crate::store::RequestRecord;
use crate::usage::{self, ParsedResponse};

/// How the exchange with the client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The response was delivered (whatever its status).
    Delivered,
    /// The client went away before the response was complete.
    ClientGone,
    /// The upstream failed before or during the response.
    UpstreamFailed,
}

/// The status recorded for a client that disconnected mid-response.
pub const CLIENT_CLOSED: u16 = 499;

pub fn build(
    ctx: &mut RequestCtx,
    req: &RequestHeader,
    parsed: Option<ParsedResponse>,
    ending: Ending,
    prices: &PriceTable,
) -> (RequestRecord, Option<String>) {
    let parsed = parsed.unwrap_or_default();
    // A client that closes right after the stream's natural end (the OpenAI
    // SDK does after `[DONE]`) is not a disconnect.
    let ending = if ending == Ending::ClientGone && parsed.complete {
        Ending::Delivered
    } else {
        ending
    };
    let status = match ending {
        Ending::ClientGone => CLIENT_CLOSED,
        _ => ctx.status,
    };
    let usage_complete = ending == Ending::Delivered && parsed.complete && parsed.usage.is_some();
    let usage = parsed.usage.unwrap_or_default();
    let model = without_nul(choose_model(ctx, req, parsed.model));
    let (cost, priced_as) = match prices.lookup(&model, usage.input_tokens) {
        Some(m) => {
            let rules = pricing::caching_rules(ctx.provider, &m.id);
            (pricing::cost(rules, &usage, &m.price), Some(m.id))
        }
        None => (pricing::Cost::default(), None),
    };
    let price_found = priced_as.is_some();
    let error_message = ctx
        .error_message
        .clone()
        .or(parsed.error)
        .or_else(|| match ending {
            Ending::ClientGone => {
                Some("client closed the connection before the response was complete".into())
            }
            _ => None,
        });
    let elapsed = ctx.started.elapsed();
    // Every field named, no `..Default::default()`: a new column must be
    // decided here, not silently left empty.
    let record = RequestRecord {
        id: ctx.request_id,
        api_key_id: ctx.api_key_id,
        provider_api_key_hash: provider_credential_hash(ctx.provider, req),
        provider: ctx.provider.as_str().to_string(),
        model,
        request_path: req.uri.path().to_string(),
        request_method: req.method.as_str().to_string(),
        requested_at: ctx.requested_at,
        responded_at: Utc::now(),
        response_time_ms: millis(elapsed),
        time_to_first_byte_ms: ctx
            .first_byte_at
            .map(|t| millis(t.duration_since(ctx.started))),
        input_tokens: clamp(usage.input_tokens),
        output_tokens: clamp(usage.output_tokens),
        cached_tokens: clamp(usage.cached_tokens),
        cache_creation_tokens: clamp(usage.cache_creation_tokens),
        reasoning_tokens: clamp(usage.reasoning_tokens),
        input_cost: cost.input_cost,
        output_cost: cost.output_cost,
        total_cost: cost.total_cost,
        price_found,
        usage_complete,
        status_code: i32::from(status),
        error_message,
        raw_metadata: metadata_json(&ctx.metadata),
        request_body: ctx.request_capture.take().and_then(|c| c.finish(None)),
        response_body: ctx
            .response_capture
            .take()
            .and_then(|c| c.finish(ctx.response_encoding.as_deref())),
        body_s3_key: None,
        billed_response: parsed.background_response,
    };
    (record, priced_as)
}

/// The model for pricing: the response's, else the request's, else the path's.
fn choose_model(ctx: &RequestCtx, req: &RequestHeader, from_response: Option<String>) -> String {
    from_response
        .filter(|m| !m.is_empty())
        .or_else(|| ctx.request_model.clone().filter(|m| !m.is_empty()))
        .or_else(|| {
            (ctx.provider == Provider::Gemini)
                .then(|| usage::gemini_model_from_path(req.uri.path()))
                .flatten()
                .map(|m| m.to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// PostgreSQL text cannot hold NUL; a client-chosen model name must not be
/// able to make its row unwritable.
fn without_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s
    }
}

fn millis(d: std::time::Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn metadata_json(m: &[(String, String)]) -> Option<Map<String, Value>> {
    if m.is_empty() {
        return None;
    }
    Some(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// BLAKE3 of the provider credential the client sent (never the credential),
/// so usage can be grouped per provider key.
pub fn provider_credential_hash(provider: Provider, req: &RequestHeader) -> Option<String> {
    // Parsed names: a lookup by `&str` parses the name again on every request.
    const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
    const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
    const API_KEY: HeaderName = HeaderName::from_static("api-key");
    let header = |name: &HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    let credential = match provider {
        Provider::Anthropic => header(&X_API_KEY).or_else(|| bearer(header(&AUTHORIZATION))),
        Provider::Gemini => header(&X_GOOG_API_KEY)
            .or_else(|| query_param(req.uri.query(), "key"))
            .or_else(|| bearer(header(&AUTHORIZATION))),
        Provider::OpenAi => bearer(header(&AUTHORIZATION)).or_else(|| header(&API_KEY)),
    }?;
    let credential = credential.trim();
    (!credential.is_empty()).then(|| {
        LAST_CREDENTIAL
            .with_borrow_mut(|m| m.hash(credential.as_bytes()).0.to_hex().as_str().to_owned())
    })
}

thread_local! {
    /// The provider credential this thread hashed last.
    static LAST_CREDENTIAL: RefCell<LastHash> = RefCell::default();
}

fn bearer(v: Option<&str>) -> Option<&str> {
    let v = v?.trim();
    Some(
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v),
    )
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;
    use rust_decimal::Decimal;

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn provider_credentials_are_hashed_never_kept() {
        let r = req(
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-secret")],
        );
        let h = provider_credential_hash(Provider::OpenAi, &r).unwrap();
        assert_eq!(h, blake3::hash(b"sk-secret").to_hex().to_string());
        let r = req("/v1beta/models/g:generateContent?alt=sse&key=gk", &[]);
        assert_eq!(
            provider_credential_hash(Provider::Gemini, &r).unwrap(),
            blake3::hash(b"gk").to_hex().to_string()
        );
        let r = req("/v1/messages", &[]);
        assert_eq!(provider_credential_hash(Provider::Anthropic, &r), None);
    }

    fn ctx() -> RequestCtx {
        RequestCtx {
            status: 200,
            ..RequestCtx::default()
        }
    }

    fn parsed(complete: bool) -> ParsedResponse {
        ParsedResponse {
            usage: Some(Usage {
                input_tokens: 1000,
                output_tokens: 100,
                ..Usage::default()
            }),
            model: Some("gpt-4o-2024-08-06".into()),
            error: None,
            complete,
            background_response: None,
        }
    }

    #[test]
    fn a_client_that_leaves_after_the_end_of_the_stream_is_not_a_disconnect() {
        let r = req("/v1/chat/completions", &[]);
        let (rec, _) = build(
            &mut ctx(),
            &r,
            Some(parsed(true)),
            Ending::ClientGone,
            &PriceTable::bundled(),
        );
        assert_eq!(rec.status_code, 200);
        assert!(rec.usage_complete);
        assert!(rec.price_found);
        assert!(rec.total_cost > Decimal::ZERO);
    }

    #[test]
    fn a_client_that_leaves_mid_stream_is_a_499_with_partial_usage() {
        let r = req("/v1/chat/completions", &[]);
        let (rec, _) = build(
            &mut ctx(),
            &r,
            Some(parsed(false)),
            Ending::ClientGone,
            &PriceTable::bundled(),
        );
        assert_eq!(rec.status_code, 499);
        assert!(!rec.usage_complete);
        assert_eq!(rec.input_tokens, 1000);
        assert!(rec.error_message.is_some());
    }

    #[test]
    fn an_unknown_model_is_unpriced_not_free() {
        let r = req("/v1/chat/completions", &[]);
        let mut p = parsed(true);
        p.model = Some("my-local-llama".into());
        let (rec, _) = build(
            &mut ctx(),
            &r,
            Some(p),
            Ending::Delivered,
            &PriceTable::bundled(),
        );
        assert!(!rec.price_found);
        assert_eq!(rec.model, "my-local-llama");
        assert_eq!(rec.total_cost, Decimal::ZERO);
    }

    #[test]
    fn the_model_falls_back_to_the_request_then_the_gemini_path() {
        let mut c = ctx();
        c.provider = Provider::Gemini;
        let r = req("/v1beta/models/gemini-2.5-pro:generateContent", &[]);
        let (rec, _) = build(&mut c, &r, None, Ending::Delivered, &PriceTable::bundled());
        assert_eq!(rec.model, "gemini-2.5-pro");
        c.request_model = Some("from-request".into());
        let (rec, _) = build(&mut c, &r, None, Ending::Delivered, &PriceTable::bundled());
        assert_eq!(rec.model, "from-request");
    }
}
