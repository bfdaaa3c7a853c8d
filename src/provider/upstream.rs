//! Where a provider's requests go: a parsed base URL and its resolved addresses.
//!
//! Pingora's `HttpPeer::new` resolves host names synchronously and panics when
//! resolution fails, so the addresses are resolved here, asynchronously, cached
//! for `upstream.dns_ttl_secs`, and handed to Pingora as a socket address with
//! the SNI passed separately. Requests use one address (so they share its
//! pooled connections); a connection to it that cannot be opened moves them
//! to the next one the lookup gave.

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
    /// The `Host` header value sent upstream, made once: each request's is
    /// a clone sharing its bytes, not a copy checked again.
    pub host_header: http::HeaderValue,
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
    /// Occurs when the host has whitespace or a control character, which
    /// no host name has and a `Host` header cannot carry.
    #[error("has whitespace or a control character in its host")]
    HostInvalid,
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
        if host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(BaseUrlError::HostInvalid);
        }
        let host_header =
            http::HeaderValue::try_from(host_header).map_err(|_| BaseUrlError::HostInvalid)?;
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

/// One provider's upstream: its base URL and its cached resolved addresses.
#[derive(Debug)]
pub struct Upstream {
    pub base: BaseUrl,
    /// The addresses in use, and when to look them up again.
    resolved: RwLock<Option<Resolved>>,
    dns_ttl: Duration,
    /// The host is an IP address: never looked up.
    literal: bool,
}

/// Most addresses of a host kept from one lookup, in the resolver's order of
/// preference.
pub const MAX_ADDRESSES: usize = 8;

/// Most connections one request tries (to as many addresses) before it
/// fails: each can take `upstream.connect_timeout_secs`.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// A lookup's addresses, held without allocating.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    list: [SocketAddr; MAX_ADDRESSES],
    len: usize,
    /// Where requests start: moves on when a connection to it fails.
    preferred: usize,
    /// `preferred` was moved on by a failure (not the lookup's first).
    moved: bool,
    due: Instant,
}

impl Resolved {
    fn new(addrs: impl IntoIterator<Item = SocketAddr>, due: Instant) -> Option<Resolved> {
        let mut addrs = addrs.into_iter();
        let first = addrs.next()?;
        let mut list = [first; MAX_ADDRESSES];
        let mut len = 1;
        for addr in addrs {
            if len == MAX_ADDRESSES {
                break;
            }
            // getaddrinfo lists an address once per socket type asked for.
            if !list[..len].contains(&addr) {
                list[len] = addr;
                len += 1;
            }
        }
        Some(Resolved {
            list,
            len,
            preferred: 0,
            moved: false,
            due,
        })
    }

    fn addresses(&self) -> &[SocketAddr] {
        &self.list[..self.len]
    }

    /// An address that took over from a failed one stays preferred,
    /// wherever the new lookup lists it; otherwise the lookup's order holds
    /// (DNS that rotates or drains its answers is followed).
    fn keep_preferred(&mut self, old: &Resolved) {
        if !old.moved {
            return;
        }
        let preferred = old.list[old.preferred];
        if let Some(at) = self.addresses().iter().position(|&a| a == preferred) {
            self.preferred = at;
            self.moved = true;
        }
    }

    /// The preferred address, or the one after `failed` (a request's last
    /// failed connection).
    fn pick(&self, failed: Option<SocketAddr>) -> Connect {
        let at = failed
            .and_then(|f| self.addresses().iter().position(|&a| a == f))
            .map_or(self.preferred, |i| (i + 1) % self.len);
        Connect {
            addr: self.list[at],
            addresses: self.len,
        }
    }
}

/// Where one connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    pub addr: SocketAddr,
    /// How many addresses the host has (those a request may try in turn).
    pub addresses: usize,
}

impl Upstream {
    pub fn new(base: BaseUrl, dns_ttl: Duration) -> Upstream {
        // Literal IPs never need resolving.
        let literal = base
            .host
            .parse::<std::net::IpAddr>()
            .ok()
            .and_then(|ip| Resolved::new([SocketAddr::new(ip, base.port)], Instant::now()));
        Upstream {
            base,
            literal: literal.is_some(),
            resolved: RwLock::new(literal),
            dns_ttl,
        }
    }

    /// Where a request's connection goes: the preferred address, or after a
    /// connection to `failed` failed, the host's next address.
    ///
    /// Resolves (without blocking a thread) when the cached addresses are
    /// due. One request looks them up: the others go on with the last good
    /// ones meanwhile, and after a failed lookup for [`RESOLVE_RETRY`]
    /// (during a resolver outage each would otherwise wait out the lookup's
    /// timeout).
    pub async fn address(&self, failed: Option<SocketAddr>) -> std::io::Result<Connect> {
        let now = Instant::now();
        // Read in place: the list is a few hundred bytes, not worth a copy
        // per request.
        if let Some(resolved) = &*self.resolved.read().unwrap_or_else(|p| p.into_inner()) {
            if self.literal || now < resolved.due {
                return Ok(resolved.pick(failed));
            }
        }
        let stale = {
            let mut resolved = self.resolved.write().unwrap_or_else(|p| p.into_inner());
            // Checked again: another request may have claimed it meanwhile.
            match &mut *resolved {
                Some(r) if self.literal || now < r.due => return Ok(r.pick(failed)),
                // Due: this request refreshes it; the others keep it till then.
                Some(r) => {
                    r.due = later(now, RESOLVE_RETRY);
                    Some(r.pick(failed))
                }
                None => None,
            }
        };
        let lookup = tokio::net::lookup_host((self.base.host.as_str(), self.base.port)).await;
        let fresh = lookup.map(|addrs| Resolved::new(addrs, later(Instant::now(), self.dns_ttl)));
        match fresh {
            Ok(Some(mut fresh)) => {
                let mut resolved = self.resolved.write().unwrap_or_else(|p| p.into_inner());
                if let Some(old) = &*resolved {
                    fresh.keep_preferred(old);
                }
                *resolved = Some(fresh);
                Ok(fresh.pick(failed))
            }
            // The stale addresses stay, due again RESOLVE_RETRY from the claim.
            Ok(None) => stale.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "upstream host has no address")
            }),
            Err(e) => stale.ok_or(e),
        }
    }

    /// A connection to `addr` failed: if it was the preferred address, the
    /// next one is preferred from now on, so later requests do not wait on
    /// the failing one first.
    pub fn connect_failed(&self, addr: SocketAddr) {
        let mut resolved = self.resolved.write().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = &mut *resolved {
            if r.list[r.preferred] == addr && r.len > 1 {
                r.preferred = (r.preferred + 1) % r.len;
                r.moved = true;
            }
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

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Sets `upstream`'s addresses, due at `due`.
    fn preset(upstream: &Upstream, addrs: &[&str], due: Instant) {
        *upstream.resolved.write().unwrap() = Resolved::new(addrs.iter().map(|a| addr(a)), due);
    }

    fn unresolvable(ttl: Duration) -> Upstream {
        Upstream::new(BaseUrl::parse("https://no-such-host.invalid").unwrap(), ttl)
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_address_and_waits_before_the_next() {
        for ttl in [Duration::from_secs(60), Duration::ZERO] {
            let upstream = unresolvable(ttl);
            let last_good = addr("192.0.2.7:443");
            preset(&upstream, &["192.0.2.7:443"], Instant::now());
            assert_eq!(upstream.address(None).await.unwrap().addr, last_good);
            let r = upstream.resolved.read().unwrap().unwrap();
            assert_eq!(r.addresses(), [last_good]);
            // Due again RESOLVE_RETRY from now, not at once (even with no TTL).
            let due_in = r.due.saturating_duration_since(Instant::now());
            assert!(
                due_in > Duration::from_secs(3) && due_in <= RESOLVE_RETRY,
                "ttl {ttl:?}: due in {due_in:?}"
            );
        }
        // Never resolved: the lookup's error.
        let fresh = unresolvable(Duration::from_secs(60));
        assert!(fresh.address(None).await.is_err());
    }

    /// While one request looks the address up, the others do not: they go
    /// on with the last good one.
    #[tokio::test]
    async fn a_due_address_is_looked_up_by_one_request_at_a_time() {
        let upstream = unresolvable(Duration::from_secs(60));
        preset(&upstream, &["192.0.2.7:443"], Instant::now());
        // Start the refresh, stop it at its lookup: the entry is claimed.
        let mut refresh = Box::pin(upstream.address(None));
        use std::future::Future;
        let waker = futures_util::task::noop_waker();
        let _ = refresh
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        let due = upstream.resolved.read().unwrap().unwrap().due;
        assert!(due > Instant::now(), "claimed: not due for the others");
        drop(refresh);
    }

    /// A request's further connections go to the host's other addresses in
    /// turn; a failed preferred address hands the preference on.
    #[tokio::test]
    async fn connections_try_the_other_addresses_and_a_failure_moves_the_preference() {
        let upstream = unresolvable(Duration::from_secs(60));
        let later = Instant::now() + Duration::from_secs(60);
        preset(
            &upstream,
            &["[2001:db8::1]:443", "192.0.2.1:443", "192.0.2.2:443"],
            later,
        );
        // The first connection, then one after each failure in turn.
        let picks = |u: &Upstream| {
            let u = u.resolved.read().unwrap().unwrap();
            let mut failed = None;
            (0..4)
                .map(|_| {
                    let addr = u.pick(failed).addr;
                    failed = Some(addr);
                    addr.to_string()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(upstream.address(None).await.unwrap().addresses, 3);
        assert_eq!(
            picks(&upstream),
            [
                "[2001:db8::1]:443",
                "192.0.2.1:443",
                "192.0.2.2:443",
                "[2001:db8::1]:443"
            ]
        );
        // A failure of an address that is not the preferred one changes nothing.
        upstream.connect_failed(addr("192.0.2.2:443"));
        assert_eq!(
            upstream.address(None).await.unwrap().addr,
            addr("[2001:db8::1]:443")
        );
        upstream.connect_failed(addr("[2001:db8::1]:443"));
        assert_eq!(
            picks(&upstream),
            [
                "192.0.2.1:443",
                "192.0.2.2:443",
                "[2001:db8::1]:443",
                "192.0.2.1:443"
            ]
        );
        // Two requests that saw the same failure move it on once.
        upstream.connect_failed(addr("[2001:db8::1]:443"));
        assert_eq!(
            upstream.address(None).await.unwrap().addr,
            addr("192.0.2.1:443")
        );
        // A request goes on from its own failed address, wherever the
        // preference is by then; one the host no longer has starts over.
        let after = |a| upstream.address(Some(addr(a)));
        assert_eq!(
            after("192.0.2.2:443").await.unwrap().addr,
            addr("[2001:db8::1]:443")
        );
        assert_eq!(
            after("192.0.2.9:443").await.unwrap().addr,
            addr("192.0.2.1:443")
        );
    }

    /// A new lookup keeps the address that took over, wherever it now is in
    /// the list; one that is gone starts again at the first. With no
    /// failure, the new lookup's first address is used.
    #[test]
    fn a_refresh_keeps_the_address_that_took_over() {
        let due = Instant::now();
        let upstream = unresolvable(Duration::from_secs(60));
        *upstream.resolved.write().unwrap() =
            Resolved::new([addr("192.0.2.1:443"), addr("192.0.2.2:443")], due);
        let untouched = upstream.resolved.read().unwrap().unwrap();
        let mut rotated =
            Resolved::new([addr("192.0.2.2:443"), addr("192.0.2.1:443")], due).unwrap();
        rotated.keep_preferred(&untouched);
        assert_eq!(rotated.pick(None).addr, addr("192.0.2.2:443"));

        upstream.connect_failed(addr("192.0.2.1:443"));
        let old = upstream.resolved.read().unwrap().unwrap();
        let adopt = |addrs: &[&str]| {
            let mut fresh = Resolved::new(addrs.iter().map(|a| addr(a)), due).unwrap();
            fresh.keep_preferred(&old);
            fresh.pick(None).addr
        };
        assert_eq!(
            adopt(&["192.0.2.1:443", "192.0.2.2:443"]),
            addr("192.0.2.2:443")
        );
        assert_eq!(
            adopt(&["192.0.2.3:443", "192.0.2.2:443"]),
            addr("192.0.2.2:443")
        );
        assert_eq!(
            adopt(&["192.0.2.3:443", "192.0.2.4:443"]),
            addr("192.0.2.3:443")
        );
    }

    #[test]
    fn a_lookup_keeps_each_address_once_and_at_most_max_addresses() {
        let due = Instant::now();
        let same = Resolved::new([addr("192.0.2.1:443"), addr("192.0.2.1:443")], due).unwrap();
        assert_eq!(same.addresses(), [addr("192.0.2.1:443")]);
        let many = (1..=20).map(|n| addr(&format!("192.0.2.{n}:443")));
        assert_eq!(Resolved::new(many, due).unwrap().len, MAX_ADDRESSES);
        assert!(Resolved::new([], due).is_none());
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
        for host in [
            "http://api openai.com",
            "http://api\topenai.com",
            "http://h\u{7f}x:80",
        ] {
            assert_eq!(
                BaseUrl::parse(host),
                Err(BaseUrlError::HostInvalid),
                "{host:?}"
            );
        }
    }
}
