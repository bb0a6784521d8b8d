//! The outbound HTTP client for webhooks, and the one place that decides where it may connect
//! (SSRF): a webhook URL must be `http`/`https`, at most 2048 characters, and every address its
//! host resolves to must be public — not private, loopback, link-local, unique-local, shared
//! (CGNAT), multicast, broadcast, reserved, documentation or unspecified, in IPv4 or IPv6
//! (including IPv4 embedded in IPv6; the IPv4-mapped range `::ffff:0:0/96` is refused whole) —
//! unless `allow_private_webhook_targets` is set.
//!
//! The gateway's providers are held to the same rule ([`resolve_vetted`], [`check_addrs`]) unless
//! `allow_private_provider_targets` is set (`src/gateway/client.rs`).
//!
//! The check runs when an endpoint is saved ([`vet_url`]) and again at every send: the client's
//! DNS resolver refuses non-public answers, so the connection goes to exactly the address that
//! was checked (a later DNS answer cannot rebind it to an internal one). Redirects are not
//! followed, proxies from the environment are not used, and response bodies are read up to a
//! cap.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    header::HeaderMap,
};
use url::{Host, Url};

pub const MAX_URL_LEN: usize = 2048;

/// Why a webhook target is refused. The messages complete "url …" in a field error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("is not a valid URL")]
    Invalid,
    #[error("must be at most {MAX_URL_LEN} characters")]
    TooLong,
    #[error("must be an http or https URL")]
    Scheme,
    #[error("must name a host")]
    NoHost,
    #[error("names a host that could not be resolved")]
    Unresolvable,
    #[error("resolves to a private, loopback or otherwise non-public address ({0})")]
    NonPublic(IpAddr),
}

/// Parses a webhook URL and checks its form (not yet where it points).
pub fn parse_url(s: &str) -> Result<Url, TargetError> {
    if s.len() > MAX_URL_LEN {
        return Err(TargetError::TooLong);
    }
    let url = Url::parse(s.trim()).map_err(|_| TargetError::Invalid)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetError::Scheme);
    }
    match url.host() {
        None => Err(TargetError::NoHost),
        Some(Host::Domain("")) => Err(TargetError::NoHost),
        Some(_) => Ok(url),
    }
}

/// Resolves the URL's host and checks every address. Returns the addresses.
/// With `allow_private`, nothing is resolved (there is nothing to refuse).
pub async fn vet_url(url: &Url, allow_private: bool) -> Result<Vec<IpAddr>, TargetError> {
    let addrs = match url.host() {
        _ if allow_private => return Ok(Vec::new()),
        None => return Err(TargetError::NoHost),
        Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(Host::Domain(d)) => resolve(d).await?,
    };
    check_addrs(&addrs, allow_private)?;
    Ok(addrs)
}

async fn resolve(host: &str) -> Result<Vec<IpAddr>, TargetError> {
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|_| TargetError::Unresolvable)?
        .map(|a| a.ip())
        .collect();
    if addrs.is_empty() {
        return Err(TargetError::Unresolvable);
    }
    Ok(addrs)
}

/// Resolves `host` and checks every address it resolves to (all of them are returned, to connect
/// to exactly those): what a connector calls when it opens a connection.
pub async fn resolve_vetted(host: &str, allow_private: bool) -> Result<Vec<IpAddr>, TargetError> {
    let addrs = resolve(host).await?;
    check_addrs(&addrs, allow_private)?;
    Ok(addrs)
}

/// Refuses the whole answer when any address is not public (a name that mixes public and
/// private answers is refused rather than trusted to pick the public one).
pub fn check_addrs(addrs: &[IpAddr], allow_private: bool) -> Result<(), TargetError> {
    if allow_private {
        return Ok(());
    }
    match addrs.iter().find(|ip| !is_public(**ip)) {
        Some(ip) => Err(TargetError::NonPublic(*ip)),
        None => Ok(()),
    }
}

/// True for a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()          // 0.0.0.0
        || a == 0                  // 0.0.0.0/8 "this network"
        || ip.is_loopback()        // 127.0.0.0/8
        || ip.is_private()         // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local()      // 169.254/16 (cloud metadata)
        || (a == 100 && (b & 0xc0) == 64) // 100.64/10 shared (CGNAT)
        || (a == 192 && b == 0 && c == 0) // 192.0.0/24 protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || (a == 198 && (b & 0xfe) == 18) // 198.18/15 benchmarking
        || ip.is_multicast()       // 224/4
        || a >= 240) // 240/4 reserved, and 255.255.255.255 broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4-mapped (::ffff:0:0/96) and IPv4-translated (::ffff:0:0:0/96) addresses are never
    // public: a socket given one talks IPv4 to the embedded address, and no public host needs
    // to be named that way. IPv4 embedded otherwise — compatible (::a.b.c.d), NAT64
    // (64:ff9b::/96) and 6to4 (2002:AABB:CCDD::/48) — is judged by its IPv4 address.
    if (s[..5] == [0; 5] && s[5] == 0xffff) || (s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0) {
        return false;
    }
    if s[..6] == [0; 6] {
        // ::/96 (includes :: and ::1)
        return !ip.is_unspecified() && !ip.is_loopback() && is_public_v4(v4_at(&s, 6));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return is_public_v4(v4_at(&s, 6));
    }
    if s[0] == 0x2002 {
        return is_public_v4(v4_at(&s, 1));
    }
    !(ip.is_multicast()                    // ff00::/8
        || (s[0] & 0xfe00) == 0xfc00       // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80       // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0       // fec0::/10 site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0)   // 2001::/32 Teredo
        || (s[0] == 0x0100 && s[1..4] == [0; 3])) // 100::/64 discard
}

fn v4_at(s: &[u16; 8], i: usize) -> Ipv4Addr {
    let [a, b] = s[i].to_be_bytes();
    let [c, d] = s[i + 1].to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// The DNS resolver of the outbound client: answers only with vetted addresses.
#[derive(Debug)]
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = resolve_vetted(name.as_str(), allow_private).await?;
            // reqwest puts the URL's port on these.
            let addrs: Addrs = Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// What one delivery attempt got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    pub status: u16,
    /// The first bytes of the body (at most the client's cap), lossily decoded.
    pub body_excerpt: String,
}

/// Why an attempt got no HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("refused: the URL {0}")]
    Refused(TargetError),
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Other(String),
}

/// The webhook HTTP client (cheap to clone).
#[derive(Debug, Clone)]
pub struct OutboundClient {
    client: reqwest::Client,
    allow_private: bool,
    body_limit: usize,
}

impl OutboundClient {
    /// `timeout` bounds a whole attempt (connect, send, read the capped body).
    pub fn new(allow_private: bool, timeout: Duration, body_limit: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("Gatehouse-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the webhook HTTP client: {e}"))?;
        Ok(OutboundClient {
            client,
            allow_private,
            body_limit,
        })
    }

    /// POSTs `body` to `url`. Literal addresses are checked here; names by the resolver.
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<OutboundResponse, OutboundError> {
        let url = parse_url(url).map_err(OutboundError::Refused)?;
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            check_addrs(&[ip], self.allow_private).map_err(OutboundError::Refused)?;
        }
        let mut res = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(classify)?;
        let status = res.status().as_u16();
        let mut excerpt = Vec::new();
        while excerpt.len() < self.body_limit {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.body_limit - excerpt.len();
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                // The status is what counts; a body cut short is still an answer.
                Err(_) => break,
            }
        }
        // Dropping `res` here closes the connection without reading the rest.
        Ok(OutboundResponse {
            status,
            body_excerpt: excerpt_text(&excerpt),
        })
    }
}

/// The bytes as text fit for a TEXT column: invalid UTF-8 replaced, NUL (which PostgreSQL
/// refuses in text) dropped.
fn excerpt_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "")
}

fn classify(e: reqwest::Error) -> OutboundError {
    if e.is_timeout() {
        return OutboundError::Timeout;
    }
    // Walk to the innermost cause: the resolver's refusal, or the OS's connect error.
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    let mut innermost = None;
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<TargetError>() {
            return OutboundError::Refused(refused.clone());
        }
        innermost = Some(s.to_string());
        source = s.source();
    }
    let detail = innermost.unwrap_or_else(|| e.to_string());
    if e.is_connect() {
        OutboundError::Connect(detail)
    } else {
        OutboundError::Other(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_recognised() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            // The whole IPv4-mapped and IPv4-translated ranges, public IPv4 inside included.
            "::ffff:0:0",
            "::ffff:8.8.8.8",
            "::ffff:1.1.1.1",
            "::ffff:0:8.8.8.8",
            "::ffff:0:7f00:1",
        ] {
            assert!(!is_public(ip(s)), "{s} should not be public");
        }
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip(s)), "{s} should be public");
        }
    }

    #[test]
    fn excerpts_are_storable_text() {
        assert_eq!(excerpt_text(b"ok\0\xff!"), "ok\u{fffd}!");
    }

    #[test]
    fn url_forms_are_checked() {
        assert!(parse_url("https://example.com/hook").is_ok());
        assert_eq!(parse_url("ftp://example.com/"), Err(TargetError::Scheme));
        assert_eq!(parse_url("file:///etc/passwd"), Err(TargetError::Scheme));
        assert_eq!(parse_url("not a url"), Err(TargetError::Invalid));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(parse_url(&long), Err(TargetError::TooLong));
    }

    #[tokio::test]
    async fn literal_and_resolved_private_targets_are_refused() {
        for url in [
            "http://127.0.0.1/",
            "http://10.1.2.3:8080/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:9/",
            "http://2130706433/", // 127.0.0.1 as one number
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:8.8.8.8]/",
            "http://[::ffff:0:a00:1]/",
            "http://localhost/",
        ] {
            let parsed = parse_url(url).unwrap();
            assert!(
                matches!(
                    vet_url(&parsed, false).await,
                    Err(TargetError::NonPublic(_))
                ),
                "{url}"
            );
            assert!(vet_url(&parsed, true).await.is_ok(), "{url} when allowed");
        }
    }
}
