//! Who is calling from where: the client address (believing `X-Forwarded-For` only from
//! configured trusted proxies), the user agent and the request id.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{header, request::Parts},
};
use ipnet::IpNet;

use crate::{app::AppState, error::Error, http::middleware::REQUEST_ID};

#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub ip: Option<IpAddr>,
    pub user_agent: String,
    pub request_id: String,
}

impl RequestMeta {
    pub fn ip_string(&self) -> String {
        self.ip.map(|i| i.to_string()).unwrap_or_default()
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(parts: &Parts, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())?;
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !trusted.iter().any(|n| n.contains(ip)))
            .unwrap_or(peer),
    )
}

impl FromRequestParts<AppState> for RequestMeta {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Ok(RequestMeta::of(parts, state))
    }
}

impl RequestMeta {
    pub fn of(parts: &Parts, state: &AppState) -> RequestMeta {
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .take(256)
            .collect();
        RequestMeta {
            ip: client_ip(parts, &state.config.trusted_proxies),
            user_agent,
            // Set (or checked) by the edge on every request.
            request_id: parts
                .headers
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(peer: &str, xff: Option<&str>) -> Parts {
        let mut req = Request::builder().uri("/");
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        let (mut parts, _) = req.body(()).unwrap().into_parts();
        parts.extensions.insert(ConnectInfo::<SocketAddr>(
            format!("{peer}:1234").parse().unwrap(),
        ));
        parts
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |p: &Parts| client_ip(p, &trusted).unwrap().to_string();
        assert_eq!(ip(&parts("203.0.113.9", Some("1.2.3.4"))), "203.0.113.9");
        assert_eq!(ip(&parts("10.0.0.2", Some("1.2.3.4"))), "1.2.3.4");
        // A client cannot spoof by prepending: the right-most untrusted hop wins.
        assert_eq!(
            ip(&parts("10.0.0.2", Some("6.6.6.6, 1.2.3.4, 10.0.0.3"))),
            "1.2.3.4"
        );
        assert_eq!(ip(&parts("10.0.0.2", None)), "10.0.0.2");
        assert_eq!(
            client_ip(&parts("10.0.0.2", Some("1.2.3.4")), &[])
                .unwrap()
                .to_string(),
            "10.0.0.2"
        );
    }
}
