//! Where a provider's requests go: a parsed base URL and its resolved address.
//!
//! Pingora's `HttpPeer::new` resolves host names synchronously and panics when
//! resolution fails, so the address is resolved here, asynchronously, cached
//! for `upstream.dns_ttl_secs`, and handed to Pingora as a socket address with
//! the SNI passed separately.

use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// A validated upstream base URL (`http(s)://host[:port][/prefix]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" when none).
    pub path_prefix: String,
    /// The `Host` header value sent upstream.
    pub host_header: String,
}

/// Errors in a configured base URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BaseUrlError {
    /// Occurs when the URL does not start with `http://` or `https://`.
    #[error("must start with http:// or https://")]
    Scheme,
    /// Occurs when there is no host after the scheme.
    #[error("has no host")]
    NoHost,
    /// Occurs when the host is not ASCII (an internationalised name must be
    /// written in its `xn--` form).
    #[error("has a host that is not ASCII (write an internationalised name as xn--…)")]
    HostNotAscii,
    /// Occurs when the port is not a number between 1 and 65535.
    #[error("has an invalid port")]
    Port,
    /// Occurs when the URL carries a query, fragment or user info, which a base URL cannot use.
    #[error("must not contain a query, fragment or user info")]
    Extra,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, BaseUrlError> {
        let url = url.trim();
        let (tls, rest) = if let Some(r) = strip_prefix_ci(url, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(url, "http://") {
            (false, r)
        } else {
            return Err(BaseUrlError::Scheme);
        };
        if rest.contains(['?', '#', '@']) {
            return Err(BaseUrlError::Extra);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or(BaseUrlError::NoHost)?;
            let host = &v6[..end];
            let port = match &v6[end + 1..] {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|p| *p != 0)
                    .ok_or(BaseUrlError::Port)?,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or(BaseUrlError::Port)?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(BaseUrlError::NoHost);
        }
        if !host.is_ascii() {
            return Err(BaseUrlError::HostNotAscii);
        }
        let host_for_header = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let host_header = if port == default_port {
            host_for_header
        } else {
            format!("{host_for_header}:{port}")
        };
        Ok(BaseUrl {
            tls,
            host,
            port,
            path_prefix: path.trim_end_matches('/').to_string(),
            host_header,
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    // By bytes: `s` may have a multi-byte character where the prefix ends.
    let (head, tail) = (s.as_bytes().get(..prefix.len())?, s.get(prefix.len()..)?);
    head.eq_ignore_ascii_case(prefix.as_bytes()).then_some(tail)
}

/// One provider's upstream: its base URL and a cached resolved address.
#[derive(Debug)]
pub struct Upstream {
    pub base: BaseUrl,
    /// The address in use, and when to look it up again.
    resolved: RwLock<Option<(SocketAddr, Instant)>>,
    dns_ttl: Duration,
}

impl Upstream {
    pub fn new(base: BaseUrl, dns_ttl: Duration) -> Upstream {
        // Literal IPs never need resolving.
        let literal = base
            .host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| (SocketAddr::new(ip, base.port), Instant::now()));
        Upstream {
            base,
            resolved: RwLock::new(literal),
            dns_ttl,
        }
    }

    fn is_literal(&self) -> bool {
        self.base.host.parse::<std::net::IpAddr>().is_ok()
    }

    /// The address to connect to, resolving (without blocking a thread) when
    /// the cached one is due. One request looks it up: the others go on with
    /// the last good address meanwhile, and after a failed lookup for
    /// [`RESOLVE_RETRY`] (during a resolver outage each would otherwise wait
    /// out the lookup's timeout).
    pub async fn address(&self) -> std::io::Result<SocketAddr> {
        let now = Instant::now();
        if let Some((addr, due)) = *self.resolved.read().unwrap_or_else(|p| p.into_inner()) {
            if self.is_literal() || now < due {
                return Ok(addr);
            }
        }
        let stale = {
            let mut resolved = self.resolved.write().unwrap_or_else(|p| p.into_inner());
            // Checked again: another request may have claimed it meanwhile.
            match *resolved {
                Some((addr, due)) if self.is_literal() || now < due => return Ok(addr),
                // Due: this request refreshes it; the others keep it till then.
                Some((addr, _)) => {
                    *resolved = Some((addr, later(now, RESOLVE_RETRY)));
                    Some(addr)
                }
                None => None,
            }
        };
        let lookup = tokio::net::lookup_host((self.base.host.as_str(), self.base.port)).await;
        match lookup.map(|mut addrs| addrs.next()) {
            Ok(Some(addr)) => {
                *self.resolved.write().unwrap_or_else(|p| p.into_inner()) =
                    Some((addr, later(Instant::now(), self.dns_ttl)));
                Ok(addr)
            }
            // The stale address stays, due again RESOLVE_RETRY from the claim.
            Ok(None) => stale.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "upstream host has no address")
            }),
            Err(e) => stale.ok_or(e),
        }
    }
}

/// `at + d`, or far enough for a `d` too large to add.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 86_400))
}

/// How long a failed refresh of an upstream's address is not tried again.
pub const RESOLVE_RETRY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_address_and_waits_before_the_next() {
        for ttl in [Duration::from_secs(60), Duration::ZERO] {
            let base = BaseUrl::parse("https://no-such-host.invalid").unwrap();
            let upstream = Upstream::new(base, ttl);
            let last_good: SocketAddr = "192.0.2.7:443".parse().unwrap();
            *upstream.resolved.write().unwrap() = Some((last_good, Instant::now()));
            assert_eq!(upstream.address().await.unwrap(), last_good);
            let (addr, due) = upstream.resolved.read().unwrap().unwrap();
            assert_eq!(addr, last_good);
            // Due again RESOLVE_RETRY from now, not at once (even with no TTL).
            let due_in = due.saturating_duration_since(Instant::now());
            assert!(
                due_in > Duration::from_secs(3) && due_in <= RESOLVE_RETRY,
                "ttl {ttl:?}: due in {due_in:?}"
            );
        }
        // Never resolved: the lookup's error.
        let fresh = Upstream::new(
            BaseUrl::parse("https://no-such-host.invalid").unwrap(),
            Duration::from_secs(60),
        );
        assert!(fresh.address().await.is_err());
    }

    /// While one request looks the address up, the others do not: they go
    /// on with the last good one.
    #[tokio::test]
    async fn a_due_address_is_looked_up_by_one_request_at_a_time() {
        let upstream = Upstream::new(
            BaseUrl::parse("https://no-such-host.invalid").unwrap(),
            Duration::from_secs(60),
        );
        let last_good: SocketAddr = "192.0.2.7:443".parse().unwrap();
        *upstream.resolved.write().unwrap() = Some((last_good, Instant::now()));
        // Start the refresh, stop it at its lookup: the entry is claimed.
        let mut refresh = Box::pin(upstream.address());
        use std::future::Future;
        let waker = futures_util::task::noop_waker();
        let _ = refresh
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        let (_, due) = upstream.resolved.read().unwrap().unwrap();
        assert!(due > Instant::now(), "claimed: not due for the others");
        drop(refresh);
    }

    #[test]
    fn https_default_port_and_no_prefix() {
        let b = BaseUrl::parse("https://api.openai.com").unwrap();
        assert!(b.tls);
        assert_eq!(b.port, 443);
        assert_eq!(b.path_prefix, "");
        assert_eq!(b.host_header, "api.openai.com");
    }

    #[test]
    fn http_with_port_and_path_prefix() {
        let b = BaseUrl::parse("http://127.0.0.1:8080/proxy/openai/").unwrap();
        assert!(!b.tls);
        assert_eq!(b.port, 8080);
        assert_eq!(b.path_prefix, "/proxy/openai");
        assert_eq!(b.host_header, "127.0.0.1:8080");
    }

    #[test]
    fn ipv6_literal() {
        let b = BaseUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!(b.host, "::1");
        assert_eq!(b.host_header, "[::1]:9000");
    }

    #[test]
    fn bad_urls_are_rejected() {
        assert_eq!(BaseUrl::parse("ftp://x"), Err(BaseUrlError::Scheme));
        assert_eq!(BaseUrl::parse("http://"), Err(BaseUrlError::NoHost));
        assert_eq!(BaseUrl::parse("http://h:0"), Err(BaseUrlError::Port));
        assert_eq!(BaseUrl::parse("http://h:99999"), Err(BaseUrlError::Port));
        assert_eq!(BaseUrl::parse("http://u:p@h"), Err(BaseUrlError::Extra));
        // A multi-byte character where "https://" would end, or in the host.
        assert_eq!(
            BaseUrl::parse("http://ñandu.local"),
            Err(BaseUrlError::HostNotAscii)
        );
        assert_eq!(BaseUrl::parse("httpsñ//x"), Err(BaseUrlError::Scheme));
        assert_eq!(BaseUrl::parse("ñ"), Err(BaseUrlError::Scheme));
        assert!(BaseUrl::parse("HTTP://xn--andu-hqa.local").is_ok());
    }
}
