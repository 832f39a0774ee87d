//! The decision after name resolution, pure: which resolved addresses a connection may
//! use. The proxy supplies the resolved addresses and the node's own addresses, so every
//! case is testable with literal addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rules::{Host, Rule};

/// The destination a guest asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Target {
    /// `host:port`, an IPv6 address in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// What one job may reach and how much of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub rules: Vec<Rule>,
    pub limits: Limits,
}

/// Caps shared by all connections of one grant, over the grant's whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes from upstream to the guest.
    pub max_bytes_in: u64,
    /// Bytes from the guest to upstream (a rewritten plain-HTTP head included).
    pub max_bytes_out: u64,
    /// Connections admitted (a request head was read), whatever their outcome.
    pub max_connections: u32,
    /// The wait for each TCP connect attempt.
    pub connect_timeout: Duration,
}

/// Why a connection was refused or cut. The snake_case name ([`Reason::as_str`], also
/// the serde form) is stable: it appears in proxy answers, usage reports and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No rule of the grant names this host and port.
    NotAllowed,
    /// Every address the name resolved to is loopback, private, link-local, … or the node's.
    SpecialAddress,
    /// The name did not resolve (or resolved to nothing).
    ResolveFailed,
    /// The grant's connection count is used up.
    LimitConnections,
    /// A byte cap of the grant was reached.
    LimitBytes,
    /// The request head is not a proxy request this proxy accepts.
    BadRequest,
    /// Every permitted address refused the connection.
    ConnectFailed,
    /// A connect attempt outlasted `connect_timeout`.
    ConnectTimeout,
}

impl Reason {
    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::NotAllowed => "not_allowed",
            Reason::SpecialAddress => "special_address",
            Reason::ResolveFailed => "resolve_failed",
            Reason::LimitConnections => "limit_connections",
            Reason::LimitBytes => "limit_bytes",
            Reason::BadRequest => "bad_request",
            Reason::ConnectFailed => "connect_failed",
            Reason::ConnectTimeout => "connect_timeout",
        }
    }

    /// The HTTP status and reason phrase the proxy answers with.
    pub(crate) const fn status(self) -> (u16, &'static str) {
        match self {
            Reason::NotAllowed | Reason::SpecialAddress => (403, "Forbidden"),
            Reason::BadRequest => (400, "Bad Request"),
            Reason::LimitConnections | Reason::LimitBytes => (429, "Too Many Requests"),
            Reason::ResolveFailed | Reason::ConnectFailed => (502, "Bad Gateway"),
            Reason::ConnectTimeout => (504, "Gateway Timeout"),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("egress refused: {reason}")]
pub struct Refusal {
    pub reason: Reason,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal { reason }
    }
}

/// The grant's first rule naming `target`, if any.
pub(crate) fn matching_rule<'g>(target: &Target, grant: &'g Grant) -> Option<&'g Rule> {
    grant
        .rules
        .iter()
        .find(|rule| rule.matches(&target.host, target.port))
}

/// Decides where a connection to `target` may go, given what its host resolved to (for
/// an IP literal: that address alone) and the node's own addresses.
///
/// A rule of the grant must name (host, port). Then each special address is dropped:
/// loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16,
/// fe80::/10), CGNAT (100.64/10), multicast, unspecified, broadcast, 0/8, 240/4,
/// fec0::/10, the IPv6 forms carrying an IPv4 address (mapped, compatible, translated,
/// NAT64 `64:ff9b::/96`) of any of these, and `node_addrs`, the node's own; unless the
/// target is that very IP literal: a rule naming an address is the operator's
/// deliberate choice, a name that resolves to one is not.
/// The answer keeps the resolver's order, without duplicates.
pub fn decide(
    target: &Target,
    resolved: &[IpAddr],
    grant: &Grant,
    node_addrs: &[IpAddr],
) -> Result<Vec<SocketAddr>, Refusal> {
    if matching_rule(target, grant).is_none() {
        return Err(Reason::NotAllowed.into());
    }
    if resolved.is_empty() {
        return Err(Reason::ResolveFailed.into());
    }
    let literal = match target.host {
        Host::Ip(ip) => Some(ip),
        Host::Name(_) => None,
    };
    let mut permitted = Vec::new();
    for &ip in resolved {
        if literal != Some(ip) && is_special(ip, node_addrs) {
            continue;
        }
        let addr = SocketAddr::new(ip, target.port);
        if !permitted.contains(&addr) {
            permitted.push(addr);
        }
    }
    if permitted.is_empty() {
        return Err(Reason::SpecialAddress.into());
    }
    Ok(permitted)
}

/// Addresses a name must never lead to: the node itself and everything not on the
/// public internet. IPv6 forms that carry an IPv4 address (mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) are
/// judged by that address.
pub(crate) fn is_special(ip: IpAddr, node_addrs: &[IpAddr]) -> bool {
    let ip = ip.to_canonical();
    if node_addrs.iter().any(|node| node.to_canonical() == ip) {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback() // 127/8
        || ip.is_private() // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local() // 169.254/16, cloud metadata included
        || ip.is_multicast() // 224/4
        || ip.is_unspecified()
        || ip.is_broadcast()
        || a == 0 // 0/8, "this network"
        || (a == 100 && (b & 0xc0) == 64) // 100.64/10, CGNAT
        || a >= 240 // 240/4, reserved
}

fn special_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast() // ff00::/8
        || (first & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (first & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (first & 0xffc0) == 0xfec0 // fec0::/10, the old site-local
        || embedded_v4(ip).is_some_and(special_v4)
}

/// The IPv4 address an IPv6 address stands for, in the forms that carry one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || {
        let [.., a, b, c, d] = ip.octets();
        Some(Ipv4Addr::new(a, b, c, d))
    };
    match s[..6] {
        [0, 0, 0, 0, 0, 0xffff] | [0, 0, 0, 0, 0, 0] => tail(),
        [0, 0, 0, 0, 0xffff, 0] => tail(),
        [0x64, 0xff9b, 0, 0, 0, 0] => tail(),
        _ => None,
    }
}

/// The node's own interface addresses (all families, every interface, down ones
/// included), for [`decide`]. On failure: a warning and no addresses, which leaves the
/// ranges of [`decide`] as the only guard.
pub fn node_addresses() -> Vec<IpAddr> {
    let interfaces = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces,
        Err(error) => {
            tracing::warn!(%error, "egress: cannot list the node's interface addresses");
            return Vec::new();
        }
    };
    let mut addrs = Vec::new();
    for interface in interfaces {
        let Some(addr) = interface.address else {
            continue;
        };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_rule;

    fn grant(rules: &[&str]) -> Grant {
        Grant {
            rules: rules.iter().map(|r| parse_rule(r).expect("rule")).collect(),
            limits: Limits {
                max_bytes_in: 1 << 20,
                max_bytes_out: 1 << 20,
                max_connections: 10,
                connect_timeout: Duration::from_secs(1),
            },
        }
    }

    fn name(host: &str, port: u16) -> Target {
        Target {
            host: Host::Name(host.to_string()),
            port,
        }
    }

    fn literal(ip: &str, port: u16) -> Target {
        Target {
            host: Host::Ip(ip.parse().expect("ip")),
            port,
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    fn reason(r: Result<Vec<SocketAddr>, Refusal>) -> Reason {
        r.expect_err("refused").reason
    }

    #[test]
    fn public_address_of_an_allowed_name_is_permitted() {
        let g = grant(&["example.com"]);
        let got = decide(&name("example.com", 443), &ips(&["93.184.216.34"]), &g, &[]);
        assert_eq!(got, Ok(vec!["93.184.216.34:443".parse().expect("addr")]));
    }

    #[test]
    fn unlisted_host_or_port_is_not_allowed() {
        let g = grant(&["example.com", "*.example.org:8443"]);
        let public = ips(&["93.184.216.34"]);
        for target in [
            name("evil.com", 443),
            name("example.com", 8443),
            name("example.org", 8443),
            name("a.example.org", 443),
        ] {
            assert_eq!(
                reason(decide(&target, &public, &g, &[])),
                Reason::NotAllowed
            );
        }
    }

    #[test]
    fn names_resolving_to_special_addresses_are_refused() {
        let g = grant(&["example.com", "localhost"]);
        for addr in [
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::ffff:0:10.0.0.1",
            "64:ff9b::10.0.0.1",
        ] {
            let got = decide(&name("example.com", 443), &ips(&[addr]), &g, &[]);
            assert_eq!(reason(got), Reason::SpecialAddress, "{addr}");
        }
        let got = decide(&name("localhost", 80), &ips(&["127.0.0.1", "::1"]), &g, &[]);
        assert_eq!(reason(got), Reason::SpecialAddress);
    }

    #[test]
    fn ordinary_public_addresses_are_not_special() {
        for addr in [
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "169.255.0.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(!is_special(addr.parse().expect("ip"), &[]), "{addr}");
        }
    }

    #[test]
    fn special_addresses_are_dropped_but_public_ones_kept() {
        let g = grant(&["example.com"]);
        let got = decide(
            &name("example.com", 80),
            &ips(&["10.0.0.5", "93.184.216.34", "93.184.216.34", "::1"]),
            &g,
            &[],
        );
        assert_eq!(got, Ok(vec!["93.184.216.34:80".parse().expect("addr")]));
    }

    #[test]
    fn node_addresses_are_special_in_every_form() {
        let g = grant(&["example.com"]);
        let node = ips(&["203.0.113.9", "2001:db8::9"]);
        for addr in ["203.0.113.9", "::ffff:203.0.113.9", "2001:db8::9"] {
            let got = decide(&name("example.com", 443), &ips(&[addr]), &g, &node);
            assert_eq!(reason(got), Reason::SpecialAddress, "{addr}");
        }
        let got = decide(
            &name("example.com", 443),
            &ips(&["203.0.113.10"]),
            &g,
            &node,
        );
        assert!(got.is_ok());
    }

    #[test]
    fn a_literal_rule_permits_its_own_special_address() {
        let g = grant(&["127.0.0.2:8000", "169.254.169.254", "[::1]:443", "10.0.0.5"]);
        let got = decide(&literal("127.0.0.2", 8000), &ips(&["127.0.0.2"]), &g, &[]);
        assert_eq!(got, Ok(vec!["127.0.0.2:8000".parse().expect("addr")]));
        assert!(decide(
            &literal("169.254.169.254", 80),
            &ips(&["169.254.169.254"]),
            &g,
            &[]
        )
        .is_ok());
        assert!(decide(&literal("::1", 443), &ips(&["::1"]), &g, &[]).is_ok());
        let node = ips(&["10.0.0.5"]);
        assert!(decide(&literal("10.0.0.5", 443), &ips(&["10.0.0.5"]), &g, &node).is_ok());
    }

    #[test]
    fn literals_match_only_identical_literal_rules() {
        let g = grant(&["127.0.0.2:8000", "localhost"]);
        let refused = [
            literal("127.0.0.3", 8000),
            literal("127.0.0.2", 8001),
            literal("::ffff:127.0.0.2", 8000),
            literal("127.0.0.1", 80),
        ];
        for target in refused {
            let got = decide(&target, &ips(&["127.0.0.1"]), &g, &[]);
            assert_eq!(reason(got), Reason::NotAllowed, "{target}");
        }
        // A name rule never turns into an address rule, nor the other way round.
        let g = grant(&["127.0.0.1"]);
        let got = decide(&name("localhost", 80), &ips(&["127.0.0.1"]), &g, &[]);
        assert_eq!(reason(got), Reason::NotAllowed);
    }

    #[test]
    fn a_literal_rule_does_not_launder_other_resolved_addresses() {
        let g = grant(&["127.0.0.2:8000"]);
        let got = decide(
            &literal("127.0.0.2", 8000),
            &ips(&["127.0.0.2", "127.0.0.1"]),
            &g,
            &[],
        );
        assert_eq!(got, Ok(vec!["127.0.0.2:8000".parse().expect("addr")]));
    }

    #[test]
    fn nothing_resolved_is_resolve_failed() {
        let g = grant(&["example.com"]);
        assert_eq!(
            reason(decide(&name("example.com", 443), &[], &g, &[])),
            Reason::ResolveFailed
        );
    }

    #[test]
    fn reasons_have_stable_names_and_statuses() {
        let all = [
            (Reason::NotAllowed, "not_allowed", 403),
            (Reason::SpecialAddress, "special_address", 403),
            (Reason::ResolveFailed, "resolve_failed", 502),
            (Reason::LimitConnections, "limit_connections", 429),
            (Reason::LimitBytes, "limit_bytes", 429),
            (Reason::BadRequest, "bad_request", 400),
            (Reason::ConnectFailed, "connect_failed", 502),
            (Reason::ConnectTimeout, "connect_timeout", 504),
        ];
        for (reason, text, status) in all {
            assert_eq!(reason.as_str(), text);
            assert_eq!(reason.to_string(), text);
            assert_eq!(reason.status().0, status);
            let json = serde_json::to_string(&reason).expect("json");
            assert_eq!(json, format!("\"{text}\""));
        }
    }

    #[test]
    fn node_addresses_include_loopback() {
        let addrs = node_addresses();
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }

    #[test]
    fn targets_print_as_authorities() {
        assert_eq!(name("a.com", 443).to_string(), "a.com:443");
        assert_eq!(literal("::1", 80).to_string(), "[::1]:80");
        assert_eq!(literal("1.2.3.4", 80).to_string(), "1.2.3.4:80");
    }
}
