//! Allow entries: what an operator (the ceiling) and a request (the grant) may name.
//!
//! An entry is `host`, `*.suffix`, an IPv4 literal or a bracketed IPv6 literal, each with
//! an optional `:port`; without a port it allows ports 80 and 443. Names are lowercase
//! DNS names; a name whose last label is a number (`127.1`, `0x7f.1`) is refused because
//! the system resolver would read it as an IPv4 address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Longest name accepted, in its text form without the trailing dot.
const MAX_NAME: usize = 253;
/// Longest label of a name.
const MAX_LABEL: usize = 63;
/// The ports an entry without a port allows.
const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// Where a connection goes: a DNS name (lowercase, no trailing dot) or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, resolved by the proxy.
    Name(String),
    /// An IP literal, used as is.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    /// The name or the address, IPv6 without brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One allow entry, e.g. `pypi.org`, `*.github.com:443`, `10.0.0.7:8000`, `[::1]:443`.
/// Its serde form is the string form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pattern: Pattern,
    /// `None`: ports 80 and 443.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Pattern {
    /// Exactly this name.
    Exact(String),
    /// Names strictly under this suffix (`*.example.com` stores `example.com`).
    Suffix(String),
    /// Exactly this address.
    Ip(IpAddr),
}

/// Why an allow entry was refused; every message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The entry is empty or only whitespace.
    #[error("empty egress rule")]
    Empty,
    /// The host part is not a DNS name, `*.suffix` or an IP literal.
    #[error("egress rule `{entry}`: {why}")]
    BadHost { entry: String, why: &'static str },
    /// The port is not a number from 1 to 65535.
    #[error("egress rule `{entry}`: the port must be a whole number from 1 to 65535")]
    BadPort { entry: String },
    /// A requested entry that no ceiling entry covers.
    #[error("egress rule `{entry}` is not within the egress this node allows")]
    NotWithin { entry: String },
}

/// The host part of an authority, before it is read as a name or an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthorityHost<'a> {
    /// `[…]`: always an IPv6 address.
    Bracketed(Ipv6Addr),
    /// A name, `*.suffix` or an IPv4 address.
    Plain(&'a str),
}

/// Splits `host[:port]` / `[v6][:port]` into the host and the port text (unchecked).
pub(crate) fn split_authority(s: &str) -> Result<(AuthorityHost<'_>, Option<&str>), &'static str> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err("`[` without a closing `]`");
        };
        let ip = inner
            .parse::<Ipv6Addr>()
            .map_err(|_| "the text in brackets is not an IPv6 address")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("only `:port` may follow `]`")?,
            ),
        };
        return Ok((AuthorityHost::Bracketed(ip), port));
    }
    match s.split_once(':') {
        None => Ok((AuthorityHost::Plain(s), None)),
        Some((_, rest)) if rest.contains(':') => {
            Err("an IPv6 address must be written in brackets, e.g. [::1]:443")
        }
        Some((host, port)) => Ok((AuthorityHost::Plain(host), Some(port))),
    }
}

/// A port from its decimal text: 1 to 65535, digits only.
pub(crate) fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// An unbracketed host: an IPv4 literal or a DNS name (normalised).
pub(crate) fn parse_plain_host(s: &str) -> Result<Host, &'static str> {
    if let Ok(v4) = s.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(v4)));
    }
    normalise_name(s).map(Host::Name)
}

/// Lowercases a DNS name, drops one trailing dot and checks every label.
fn normalise_name(raw: &str) -> Result<String, &'static str> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() {
        return Err("the host is empty");
    }
    if name.contains('*') {
        return Err("`*.` is allowed only as the whole first label of a rule");
    }
    if name.len() > MAX_NAME {
        return Err("the name is longer than 253 characters");
    }
    let name = name.to_ascii_lowercase();
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err("every label of a name must be 1 to 63 characters long");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("a name may hold only letters a-z, digits, `-` and `.`");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of a name must not start or end with `-`");
        }
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err("the last label is a number: write an IPv4 address as four decimal parts");
    }
    Ok(name)
}

/// Whether `name` is strictly under `suffix` (`a.example.com` under `example.com`),
/// comparing ASCII case-insensitively.
fn is_under(name: &str, suffix: &str) -> bool {
    let (name, suffix) = (name.as_bytes(), suffix.as_bytes());
    name.len() > suffix.len() + 1
        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        && name[name.len() - suffix.len() - 1] == b'.'
}

/// Parses one allow entry; surrounding whitespace is ignored.
pub fn parse_rule(entry: &str) -> Result<Rule, RuleError> {
    let s = entry.trim();
    if s.is_empty() {
        return Err(RuleError::Empty);
    }
    let bad_host = |why| RuleError::BadHost {
        entry: s.to_string(),
        why,
    };
    let (host, port) = split_authority(s).map_err(bad_host)?;
    let port = match port {
        None => None,
        Some(text) => Some(parse_port(text).ok_or_else(|| RuleError::BadPort {
            entry: s.to_string(),
        })?),
    };
    let pattern = match host {
        AuthorityHost::Bracketed(v6) => Pattern::Ip(IpAddr::V6(v6)),
        AuthorityHost::Plain("*") => {
            return Err(bad_host(
                "a bare `*` would allow every host; name the hosts or `*.suffix`",
            ))
        }
        AuthorityHost::Plain(text) => match text.strip_prefix("*.") {
            Some(suffix) => Pattern::Suffix(normalise_name(suffix).map_err(bad_host)?),
            None => match parse_plain_host(text).map_err(bad_host)? {
                Host::Name(name) => Pattern::Exact(name),
                Host::Ip(ip) => Pattern::Ip(ip),
            },
        },
    };
    Ok(Rule { pattern, port })
}

impl Rule {
    /// Whether this entry allows a connection to `host` on `port`. A name matches only
    /// name entries and an IP literal only the identical IP entry; `*.example.com`
    /// matches `a.example.com` and `a.b.example.com` but not `example.com`.
    pub fn matches(&self, host: &Host, port: u16) -> bool {
        self.allows_port(port)
            && match (&self.pattern, host) {
                (Pattern::Exact(exact), Host::Name(name)) => name.eq_ignore_ascii_case(exact),
                (Pattern::Suffix(suffix), Host::Name(name)) => is_under(name, suffix),
                (Pattern::Ip(rule), Host::Ip(ip)) => rule == ip,
                _ => false,
            }
    }

    /// The port named by the entry; `None` means ports 80 and 443.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    fn allows_port(&self, port: u16) -> bool {
        match self.port {
            Some(own) => own == port,
            None => DEFAULT_PORTS.contains(&port),
        }
    }
}

impl Pattern {
    /// Whether every host `other` names is one this pattern names.
    fn covers(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::Exact(a), Pattern::Exact(b)) => a == b,
            (Pattern::Suffix(s), Pattern::Exact(name)) => is_under(name, s),
            (Pattern::Suffix(s), Pattern::Suffix(t)) => s == t || is_under(t, s),
            (Pattern::Ip(a), Pattern::Ip(b)) => a == b,
            _ => false,
        }
    }
}

/// Checks that every requested entry is covered by the ceiling: its host by the same
/// host or a covering suffix (an IP literal only by the identical literal), and each
/// port it allows (80 and 443 when it names none) by a ceiling entry allowing that port.
pub fn check_within(requested: &[Rule], ceiling: &[Rule]) -> Result<(), RuleError> {
    for rule in requested {
        let covered = |port: u16| {
            ceiling
                .iter()
                .any(|c| c.pattern.covers(&rule.pattern) && c.allows_port(port))
        };
        let ok = match rule.port {
            Some(port) => covered(port),
            None => DEFAULT_PORTS.iter().all(|p| covered(*p)),
        };
        if !ok {
            return Err(RuleError::NotWithin {
                entry: rule.to_string(),
            });
        }
    }
    Ok(())
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pattern {
            Pattern::Exact(name) => f.write_str(name)?,
            Pattern::Suffix(suffix) => write!(f, "*.{suffix}")?,
            Pattern::Ip(IpAddr::V4(v4)) => write!(f, "{v4}")?,
            Pattern::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_rule(s)
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_rule(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Rule {
        parse_rule(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn rules(list: &[&str]) -> Vec<Rule> {
        list.iter().map(|s| rule(s)).collect()
    }

    fn name(s: &str) -> Host {
        Host::Name(s.to_string())
    }

    #[test]
    fn accepted_forms_print_back_normalised() {
        for (input, shown) in [
            ("example.com", "example.com"),
            ("  Example.COM ", "example.com"),
            ("example.com.", "example.com"),
            ("*.Example.com", "*.example.com"),
            ("example.com:8443", "example.com:8443"),
            ("*.example.com:443", "*.example.com:443"),
            ("1.2.3.4", "1.2.3.4"),
            ("1.2.3.4:8000", "1.2.3.4:8000"),
            ("[::1]:443", "[::1]:443"),
            ("[::1]", "[::1]"),
            ("[2001:DB8::1]", "[2001:db8::1]"),
            ("localhost", "localhost"),
            ("a-b.c1.io:1", "a-b.c1.io:1"),
            ("x:65535", "x:65535"),
        ] {
            assert_eq!(rule(input).to_string(), shown, "{input}");
        }
    }

    #[test]
    fn refused_forms_name_the_entry() {
        for input in [
            "*",
            "*:443",
            "a.*.com",
            "*a.com",
            "**.com",
            "-a.com",
            "a-.com",
            "a..com",
            ".a.com",
            "a_b.com",
            "exämple.com",
            "host:0",
            "host:65536",
            "host:",
            "host:+80",
            "host:80:80",
            "::1",
            "[::1",
            "[::1]x",
            "[1.2.3.4]",
            "[fe80::1%eth0]",
            "127.1",
            "0x7f.1",
            "1.2.3.256",
            "01.2.3.4",
            "a b.com",
            "http://a.com",
            "a.com/path",
        ] {
            let err = parse_rule(input).expect_err(input);
            assert!(err.to_string().contains(input.trim()), "{input}: {err}");
        }
        assert_eq!(parse_rule("  "), Err(RuleError::Empty));
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(parse_rule(&long_label).is_err());
        let long_name = vec!["abcdefghi"; 26].join(".");
        assert!(long_name.len() > 253);
        assert!(parse_rule(&long_name).is_err());
        let max_label = format!("{}.com", "a".repeat(63));
        assert!(parse_rule(&max_label).is_ok());
    }

    #[test]
    fn bare_star_explains_itself() {
        let err = parse_rule("*").expect_err("bare star");
        assert!(err.to_string().contains("every host"), "{err}");
    }

    #[test]
    fn suffix_matches_strictly_below() {
        let r = rule("*.example.com");
        assert!(r.matches(&name("a.example.com"), 443));
        assert!(r.matches(&name("a.b.example.com"), 80));
        assert!(r.matches(&name("A.Example.COM"), 80));
        assert!(!r.matches(&name("example.com"), 443));
        assert!(!r.matches(&name("badexample.com"), 443));
        assert!(!r.matches(&name("a.example.com"), 8080));
        assert!(!r.matches(&name("example.com.evil.net"), 443));
    }

    #[test]
    fn ports_default_to_80_and_443() {
        let r = rule("example.com");
        assert!(r.matches(&name("example.com"), 80));
        assert!(r.matches(&name("example.com"), 443));
        assert!(!r.matches(&name("example.com"), 22));
        let r = rule("example.com:22");
        assert!(r.matches(&name("example.com"), 22));
        assert!(!r.matches(&name("example.com"), 443));
        assert_eq!(r.port(), Some(22));
    }

    #[test]
    fn names_and_addresses_match_only_their_own_kind() {
        let ip = Host::Ip("127.0.0.1".parse().expect("ip"));
        assert!(rule("127.0.0.1").matches(&ip, 80));
        assert!(!rule("127.0.0.2").matches(&ip, 80));
        assert!(!rule("localhost").matches(&ip, 80));
        assert!(!rule("127.0.0.1").matches(&name("localhost"), 80));
        let v6 = Host::Ip("::1".parse().expect("ip"));
        assert!(rule("[::1]:443").matches(&v6, 443));
        assert!(!rule("[::1]:443").matches(&v6, 80));
    }

    #[test]
    fn within_hosts() {
        let ceiling = rules(&["*.example.com", "api.other.org", "10.0.0.7:8000"]);
        for ok in [
            "a.example.com",
            "*.example.com",
            "*.b.example.com",
            "api.other.org",
            "api.other.org:443",
            "10.0.0.7:8000",
        ] {
            assert_eq!(check_within(&rules(&[ok]), &ceiling), Ok(()), "{ok}");
        }
        for no in [
            "example.com",
            "*.com",
            "other.org",
            "x.api.other.org",
            "10.0.0.7",
            "10.0.0.7:8001",
            "[::ffff:10.0.0.7]:8000",
        ] {
            assert_eq!(
                check_within(&rules(&[no]), &ceiling),
                Err(RuleError::NotWithin {
                    entry: rule(no).to_string()
                }),
                "{no}"
            );
        }
    }

    #[test]
    fn within_ports() {
        let portless = rules(&["example.com"]);
        assert!(check_within(&rules(&["example.com"]), &portless).is_ok());
        assert!(check_within(&rules(&["example.com:80"]), &portless).is_ok());
        assert!(check_within(&rules(&["example.com:443"]), &portless).is_ok());
        assert!(check_within(&rules(&["example.com:8080"]), &portless).is_err());

        let only_443 = rules(&["*.example.com:443"]);
        assert!(check_within(&rules(&["a.example.com:443"]), &only_443).is_ok());
        assert!(check_within(&rules(&["a.example.com"]), &only_443).is_err());

        let both = rules(&["*.example.com:443", "a.example.com:80"]);
        assert!(check_within(&rules(&["a.example.com"]), &both).is_ok());
        assert!(check_within(&rules(&["b.example.com"]), &both).is_err());
    }

    #[test]
    fn within_reports_the_first_uncovered_entry() {
        let ceiling = rules(&["a.com"]);
        let err = check_within(&rules(&["a.com", "b.com:22"]), &ceiling).expect_err("b.com");
        assert_eq!(
            err.to_string(),
            "egress rule `b.com:22` is not within the egress this node allows"
        );
        assert!(check_within(&[], &[]).is_ok());
    }

    #[test]
    fn serde_uses_the_string_form() {
        let list: Vec<Rule> =
            serde_json::from_str(r#"["Example.com", "*.x.org:8443", "[::1]"]"#).expect("json");
        assert_eq!(
            serde_json::to_string(&list).expect("json"),
            r#"["example.com","*.x.org:8443","[::1]"]"#
        );
        let err = serde_json::from_str::<Vec<Rule>>(r#"["*"]"#).expect_err("bare star");
        assert!(err.to_string().contains("egress rule `*`"), "{err}");
    }

    #[test]
    fn split_authority_forms() {
        assert_eq!(
            split_authority("a.com:80"),
            Ok((AuthorityHost::Plain("a.com"), Some("80")))
        );
        assert_eq!(
            split_authority("[::1]"),
            Ok((AuthorityHost::Bracketed(Ipv6Addr::LOCALHOST), None))
        );
        assert!(split_authority("[::1]80").is_err());
        assert!(split_authority("1:2:3").is_err());
        assert_eq!(parse_port("00080"), Some(80));
        assert_eq!(parse_port("080000"), None);
    }
}
