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

/// Detects the provider from a request path (without the query string).
///
/// Gemini is checked first because its paths also start with `/v1/`.
/// Anything unknown falls back to OpenAI, as the reference gateway does.
pub fn detect_from_path(path: &str) -> Provider {
    if contains_ignore_ascii_case(path, "generatecontent") {
        Provider::Gemini
    } else if path.starts_with("/v1/messages") {
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
    fn provider_header_is_case_insensitive() {
        assert_eq!(Provider::from_name("Anthropic"), Some(Provider::Anthropic));
        assert_eq!(Provider::from_name(" GEMINI "), Some(Provider::Gemini));
        assert_eq!(Provider::from_name("azure"), None);
    }
}
