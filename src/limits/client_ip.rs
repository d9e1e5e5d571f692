//! The client's IP address for per-IP limits: the peer's, or, when the peer is a trusted
//! reverse proxy (`--trusted-proxies`), the address it reports in `X-Forwarded-For`.
//!
//! Behind a proxy every connection comes from the proxy, so keying limits on the peer would
//! make all users share one budget. The header is believed only from listed proxies, and
//! read from the right: the last address not itself a trusted proxy is the one the nearest
//! trusted hop saw; anything left of it was written by the client and may be forged.

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::engine::http::AllowRule;

/// The networks whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<AllowRule>);

impl TrustedProxies {
    /// Reads `--trusted-proxies` entries (IP addresses or networks).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        let mut rules = Vec::new();
        for entry in entries.iter().filter(|e| !e.trim().is_empty()) {
            match AllowRule::parse(entry)? {
                rule @ AllowRule::Network { .. } => rules.push(rule),
                AllowRule::Host(_) => {
                    return Err(format!("{entry:?} is not an IP address or network"))
                }
            }
        }
        Ok(TrustedProxies(rules))
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|r| r.allows(None, ip))
    }

    /// The client's address for a request that came from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().parse::<IpAddr>().ok())
            .collect::<Option<Vec<_>>>()
            // A malformed header is not evidence of anything: key on the proxy.
            .unwrap_or_default();
        hops.into_iter()
            .rev()
            .find(|ip| !self.trusts(*ip))
            .unwrap_or(peer)
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so `127.0.0.1` also matches `::ffff:127.0.0.1`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // From a trusted proxy: the rightmost untrusted hop.
        assert_eq!(
            trusted.client_ip(ip("10.1.2.3"), &headers("1.1.1.1, 203.0.113.7, 10.9.9.9")),
            ip("203.0.113.7")
        );
        // From anyone else: the peer, whatever the header says.
        assert_eq!(
            trusted.client_ip(ip("198.51.100.1"), &headers("1.1.1.1")),
            ip("198.51.100.1")
        );
        // Malformed or absent: the proxy itself.
        assert_eq!(
            trusted.client_ip(ip("127.0.0.1"), &headers("x, 1.1.1.1")),
            ip("127.0.0.1")
        );
        assert_eq!(
            trusted.client_ip(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        assert!(TrustedProxies::parse(&["proxy.internal".into()]).is_err());
        assert!(TrustedProxies::parse(&[]).unwrap().0.is_empty());
    }
}
