//! Which LLM provider a request is for, and where that provider lives.
//!
//! Detection is a pure function of the path and the optional
//! `X-Majordomo-Provider` header (SPEC §2); the gateway only calls it.

pub mod upstream;

use std::fmt;

/// The upstream API family a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::OpenAi, Provider::Anthropic, Provider::Gemini];

    /// The lowercase name used in config keys, headers and the `provider` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
        }
    }

    /// Parses an `X-Majordomo-Provider` value, case-insensitively.
    pub fn from_name(name: &str) -> Option<Provider> {
        let name = name.trim();
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
    }

    /// The public API's base URL, used when the config does not override it.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Provider::OpenAi => "https://api.openai.com",
            Provider::Anthropic => "https://api.anthropic.com",
            Provider::Gemini => "https://generativelanguage.googleapis.com",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Detects the provider from a request path (without the query string), as
/// SPEC §2's table does: what no row names is OpenAI's.
///
/// Gemini is checked first because its paths also start with `/v1/`.
pub fn detect_from_path(path: &str) -> Provider {
    detect(path, None, |_| false)
}

/// The paths SPEC §2 names for OpenAI (prefixes).
const OPENAI_PATHS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
];

/// Gemini's model methods other than `generateContent`.
const GEMINI_METHODS: [&str; 3] = [":counttokens", ":embedcontent", ":batchembedcontents"];

/// Detects the provider of a request: SPEC §2's path table, then, for a path
/// no row names, the request's own credentials. The reference sends every
/// such path to OpenAI, so a Gemini `:countTokens` or an Anthropic
/// `/v1/models` went to api.openai.com with the other vendor's key. A Gemini
/// key (`x-goog-api-key`, `?key=`), a `/v1beta/` path or a Gemini method means
/// Gemini; `anthropic-version` (which Anthropic requires on every request;
/// `x-api-key` alone is also how some OpenAI-compatible servers authenticate)
/// means Anthropic; anything else is still OpenAI's. `has_header` takes a
/// lowercase name.
pub fn detect(path: &str, query: Option<&str>, has_header: impl Fn(&str) -> bool) -> Provider {
    if contains_ignore_ascii_case(path, "generatecontent") {
        return Provider::Gemini;
    }
    if path.starts_with("/v1/messages") {
        return Provider::Anthropic;
    }
    if OPENAI_PATHS.iter().any(|p| path.starts_with(p)) {
        return Provider::OpenAi;
    }
    let gemini_key = has_header("x-goog-api-key")
        || query.is_some_and(|q| q.split('&').any(|pair| pair.starts_with("key=")));
    if gemini_key
        || path.starts_with("/v1beta/")
        || path.starts_with("/upload/v1beta/")
        || GEMINI_METHODS
            .iter()
            .any(|m| contains_ignore_ascii_case(path, m))
    {
        Provider::Gemini
    } else if has_header("anthropic-version") {
        Provider::Anthropic
    } else {
        Provider::OpenAi
    }
}

fn contains_ignore_ascii_case(haystack: &str, needle_lower: &str) -> bool {
    let needle = needle_lower.as_bytes();
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_providers_as_the_spec_table_says() {
        assert_eq!(detect_from_path("/v1/chat/completions"), Provider::OpenAi);
        assert_eq!(detect_from_path("/v1/responses/abc"), Provider::OpenAi);
        assert_eq!(detect_from_path("/v1/embeddings"), Provider::OpenAi);
        assert_eq!(detect_from_path("/v1/messages"), Provider::Anthropic);
        assert_eq!(
            detect_from_path("/v1/messages/count_tokens"),
            Provider::Anthropic
        );
        assert_eq!(
            detect_from_path("/v1beta/models/gemini-2.5-pro:generateContent"),
            Provider::Gemini
        );
        assert_eq!(
            detect_from_path("/v1/models/gemini-2.5-flash:streamGenerateContent"),
            Provider::Gemini
        );
        assert_eq!(detect_from_path("/something/else"), Provider::OpenAi);
    }

    #[test]
    fn a_path_no_row_names_goes_where_its_credentials_belong() {
        let none = |_: &str| false;
        let with = |name: &'static str| move |h: &str| h == name;
        // Gemini: its key, its API version, its methods.
        for (path, query) in [
            ("/v1beta/models/gemini-2.5-flash:countTokens", None),
            ("/v1/models/gemini-2.5-flash:embedContent", None),
            ("/v1beta/models/text-embedding-004:batchEmbedContents", None),
            ("/v1beta/models", None),
            ("/v1beta/openai/chat/completions", None),
            ("/v1/models", Some("pageSize=5&key=AIza123")),
        ] {
            assert_eq!(detect(path, query, none), Provider::Gemini, "{path}");
        }
        assert_eq!(
            detect("/v1/models", None, with("x-goog-api-key")),
            Provider::Gemini
        );
        // Anthropic: the version header it requires; a key header alone is
        // also how some OpenAI-compatible servers authenticate.
        assert_eq!(
            detect("/v1/models", None, with("anthropic-version")),
            Provider::Anthropic
        );
        assert_eq!(
            detect("/v1/files", None, with("x-api-key")),
            Provider::OpenAi
        );
        // Else OpenAI's, as before; and the table's rows never look further.
        assert_eq!(detect("/v1/models", None, none), Provider::OpenAi);
        assert_eq!(
            detect("/v1/models/ft:gpt-4o-mini:org::abc", Some("monkey=1"), none),
            Provider::OpenAi
        );
        assert_eq!(
            detect("/v1/chat/completions", Some("key=x"), with("x-api-key")),
            Provider::OpenAi
        );
        assert_eq!(
            detect("/v1/messages", None, with("x-goog-api-key")),
            Provider::Anthropic
        );
    }

    #[test]
    fn provider_header_is_case_insensitive() {
        assert_eq!(Provider::from_name("Anthropic"), Some(Provider::Anthropic));
        assert_eq!(Provider::from_name(" GEMINI "), Some(Provider::Gemini));
        assert_eq!(Provider::from_name("azure"), None);
    }
}
