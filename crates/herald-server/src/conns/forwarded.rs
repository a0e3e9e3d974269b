//! The client address of a request: the TCP peer's, or, when the peer is one
//! of `limits.trusted_proxies`, the address its forwarding header names.
//!
//! Written by hand: the header grammars are small, and the part that matters
//! (which entry to believe) is policy no crate decides for us. The rule is
//! the one nginx's `real_ip_recursive` follows: walk the list from the right
//! (the entries our own proxies appended) and take the first address that is
//! not itself a trusted proxy; everything left of it was written by the
//! client and proves nothing. `X-Forwarded-For` is read when present (what
//! nearly every proxy and load balancer sets), else `Forwarded: for=`. A
//! malformed entry on the way means the peer's own address is used.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap};
use ipnet::IpNet;

/// `limits.trusted_proxies`, parsed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`) and single addresses (`10.0.0.1`); on
    /// failure, the index of the bad entry and why.
    pub fn parse(list: &[String]) -> Result<Self, (usize, String)> {
        list.iter()
            .enumerate()
            .map(|(i, entry)| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| (i, format!("{entry:?} is not an IP address or CIDR")))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether any proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client address of a request that `peer` sent with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let xff = headers.get_all("x-forwarded-for");
        let chain = if xff.iter().next().is_some() {
            entries(xff.iter(), ',', parse_xff_entry)
        } else {
            entries(
                headers.get_all(header::FORWARDED).iter(),
                ',',
                parse_forwarded_element,
            )
        };
        let Some(chain) = chain else {
            return peer;
        };
        // Right to left; if every hop is trusted, the left-most one is the
        // best we know.
        let mut client = peer;
        for ip in chain.into_iter().rev() {
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// Every entry of every value, in order; `None` if any value or entry is
/// malformed (then nothing in the header can be trusted to be in order).
fn entries<'a>(
    values: impl Iterator<Item = &'a axum::http::HeaderValue>,
    sep: char,
    parse: fn(&str) -> Option<IpAddr>,
) -> Option<Vec<IpAddr>> {
    let mut out = Vec::new();
    for value in values {
        for entry in value.to_str().ok()?.split(sep) {
            out.push(parse(entry.trim())?.to_canonical());
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

fn parse_xff_entry(entry: &str) -> Option<IpAddr> {
    parse_node(entry)
}

/// One element of `Forwarded` (RFC 7239): `for=…;proto=…;by=…`, its `for`
/// possibly quoted. An element without `for`, or with an obfuscated or
/// `unknown` one, is malformed for our purpose.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        parse_node(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_cidrs_and_addresses_and_names_the_bad_entry() {
        let p = proxies(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]);
        assert!(p.contains(ip("10.1.2.3")) && p.contains(ip("192.0.2.7")));
        assert!(p.contains(ip("::ffff:10.9.9.9")) && p.contains(ip("2001:db8::5")));
        assert!(!p.contains(ip("192.0.2.8")) && !p.contains(ip("11.0.0.1")));
        let bad = TrustedProxies::parse(&["10.0.0.0/8".into(), "proxy.local".into()]);
        assert_eq!(bad.unwrap_err().0, 1);
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn headers_count_only_from_trusted_peers() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(p.client_ip(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_rightmost_untrusted_entry_wins() {
        let p = proxies(&["10.0.0.0/8"]);
        // The client wrote the first entry itself; our proxies appended the rest.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.5")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.9:555, 10.0.0.5"),
        ]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // All trusted: the left-most.
        let h = headers(&[("x-forwarded-for", "10.0.0.7, 10.0.0.5")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.7"));
    }

    #[test]
    fn malformed_headers_mean_the_peer() {
        let p = proxies(&["10.0.0.0/8"]);
        for bad in ["", "nonsense", "1.2.3.4, , 5.6.7.8", "999.1.1.1", "unknown"] {
            let h = headers(&[("x-forwarded-for", bad)]);
            assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"), "{bad:?}");
        }
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[(
            "forwarded",
            "for=1.2.3.4, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.5;by=10.0.0.1",
        )]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "for=1.2.3.4"), ("x-forwarded-for", "5.6.7.8")]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("5.6.7.8"));
    }
}
