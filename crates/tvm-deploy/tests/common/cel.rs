//! The CEL rules (`x-kubernetes-validations`) of the Istio CRDs we use, evaluated here so
//! that a value the API server would refuse (say, `timeout: 110`) fails our test too.
//!
//! Only the exact rules the validated CRD versions contain are known; any other rule makes
//! schema compilation fail, so a new upstream rule is noticed instead of ignored.

use serde_json::Value;

/// One known rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// `duration(self) >= duration('1ms')`
    DurationAtLeast1ms,
    /// `!self.contains("*")`
    NoWildcard,
    /// `self.all(key, !key.contains("*"))`
    KeysNoWildcard,
    /// `self.all(key, key.size() != 0)`
    KeysNonEmpty,
    /// `(has(self.a) ? 1 : 0) + (has(self.b) ? 1 : 0) … <= 1`
    AtMostOneOf(Vec<String>),
    /// `self.size() == 0`
    Empty,
    /// portLevelMtls needs a selector with matchLabels (PeerAuthentication)
    PortLevelMtlsNeedsSelector,
    /// `self.all(key, 0 < int(key) && int(key) <= 65535)`
    KeysArePorts,
    /// serviceAccounts excludes principals and namespaces (AuthorizationPolicy source)
    ServiceAccountsExclusive,
    /// `self != "*"` (ServiceEntry host)
    NotStar,
    /// `0 < self && self <= 65535` (a port number)
    PortNumber,
    /// `self.all(l1, self.exists_one(l2, l1.number == l2.number))` (ServiceEntry ports)
    UniquePortNumbers,
    /// CIDR `addresses` only with resolution STATIC or NONE (ServiceEntry)
    CidrAddressesNeedStaticOrNone,
    /// resolution NONE (the default) takes no `endpoints` (ServiceEntry)
    NoEndpointsWithResolutionNone,
    /// resolution DNS_ROUND_ROBIN takes at most one endpoint (ServiceEntry)
    DnsRoundRobinAtMostOneEndpoint,
    /// `has(self.address) || has(self.network)` (WorkloadEntry)
    AddressOrNetwork,
    /// a `unix://` address has no `ports` (WorkloadEntry)
    UnixAddressNoPorts,
    /// a `unix://` address is absolute (`/`) or abstract (`@`)
    UnixAddressAbsoluteOrAbstract,
    /// a `unix://` address does not end in `/`
    UnixAddressNoTrailingSlash,
    /// keys are port names: `size(key) < 63 && key.matches("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")`
    KeysArePortNames,
}

fn normalize(rule: &str) -> String {
    rule.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Rule {
    pub fn parse(rule: &str) -> Option<Self> {
        let r = normalize(rule);
        Some(match r.as_str() {
            "duration(self) >= duration('1ms')" => Self::DurationAtLeast1ms,
            "!self.contains(\"*\")" => Self::NoWildcard,
            "self.all(key, !key.contains(\"*\"))" => Self::KeysNoWildcard,
            "self.all(key, key.size() != 0)" => Self::KeysNonEmpty,
            "self.size() == 0" => Self::Empty,
            "has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? self.selector.matchLabels : {}).size() > 0) : true" => {
                Self::PortLevelMtlsNeedsSelector
            }
            "self.all(key, 0 < int(key) && int(key) <= 65535)" => Self::KeysArePorts,
            "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) && !has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true" => {
                Self::ServiceAccountsExclusive
            }
            "self != \"*\"" => Self::NotStar,
            "0 < self && self <= 65535" => Self::PortNumber,
            "self.all(l1, self.exists_one(l2, l1.number == l2.number))" => Self::UniquePortNumbers,
            "!((has(self.addresses) ? self.addresses : []).exists(k, k.contains(\"/\")) && !((has(self.resolution) ? self.resolution : \"NONE\") in [\"STATIC\", \"NONE\"]))" => {
                Self::CidrAddressesNeedStaticOrNone
            }
            "((has(self.resolution) ? self.resolution : \"NONE\") == \"NONE\") ? !has(self.endpoints) : true" => {
                Self::NoEndpointsWithResolutionNone
            }
            "((has(self.resolution) ? self.resolution : \"\") == \"DNS_ROUND_ROBIN\") ? ((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true" => {
                Self::DnsRoundRobinAtMostOneEndpoint
            }
            "has(self.address) || has(self.network)" => Self::AddressOrNetwork,
            "(has(self.address) ? self.address : \"\").startsWith(\"unix://\") ? !has(self.ports) : true" => {
                Self::UnixAddressNoPorts
            }
            "self.startsWith(\"unix://\") ? (self.substring(7, 8) == \"/\" || self.substring(7, 8) == \"@\") : true" => {
                Self::UnixAddressAbsoluteOrAbstract
            }
            "self.startsWith(\"unix://\") ? !self.endsWith(\"/\") : true" => {
                Self::UnixAddressNoTrailingSlash
            }
            "self.all(key, size(key) < 63 && key.matches(\"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$\"))" => {
                Self::KeysArePortNames
            }
            other => return at_most_one_of(other).map(Self::AtMostOneOf),
        })
    }

    /// `None` when `v` satisfies the rule (or is of a type the rule does not apply to).
    pub fn check(&self, v: &Value) -> Option<String> {
        let ok = match (self, v) {
            (Self::DurationAtLeast1ms, Value::String(s)) => {
                go_duration_secs(s).is_some_and(|secs| secs >= 0.001)
            }
            (Self::NoWildcard, Value::String(s)) => !s.contains('*'),
            (Self::KeysNoWildcard, Value::Object(m)) => m.keys().all(|k| !k.contains('*')),
            (Self::KeysNonEmpty, Value::Object(m)) => m.keys().all(|k| !k.is_empty()),
            (Self::AtMostOneOf(fields), Value::Object(m)) => {
                fields.iter().filter(|f| m.contains_key(f.as_str())).count() <= 1
            }
            (Self::Empty, Value::String(s)) => s.is_empty(),
            (Self::Empty, Value::Array(a)) => a.is_empty(),
            (Self::Empty, Value::Object(m)) => m.is_empty(),
            (Self::PortLevelMtlsNeedsSelector, Value::Object(m)) => {
                !m.contains_key("portLevelMtls")
                    || m.get("selector")
                        .and_then(|s| s.get("matchLabels"))
                        .and_then(Value::as_object)
                        .is_some_and(|l| !l.is_empty())
            }
            (Self::KeysArePorts, Value::Object(m)) => m
                .keys()
                .all(|k| k.parse::<i64>().is_ok_and(|p| (1..=65535).contains(&p))),
            (Self::ServiceAccountsExclusive, Value::Object(m)) => {
                let has = |k: &str| m.contains_key(k);
                !(has("serviceAccounts") || has("notServiceAccounts"))
                    || !(has("principals")
                        || has("notPrincipals")
                        || has("namespaces")
                        || has("notNamespaces"))
            }
            (Self::NotStar, Value::String(s)) => s != "*",
            (Self::PortNumber, Value::Number(n)) => n.as_i64().is_some_and(|p| 0 < p && p <= 65535),
            (Self::UniquePortNumbers, Value::Array(ports)) => ports.iter().all(|p1| {
                ports
                    .iter()
                    .filter(|p2| p1.get("number") == p2.get("number"))
                    .count()
                    == 1
            }),
            (Self::CidrAddressesNeedStaticOrNone, Value::Object(m)) => {
                let cidr = m
                    .get("addresses")
                    .and_then(Value::as_array)
                    .is_some_and(|a| {
                        a.iter()
                            .any(|k| k.as_str().is_some_and(|k| k.contains('/')))
                    });
                let resolution = m
                    .get("resolution")
                    .and_then(Value::as_str)
                    .unwrap_or("NONE");
                !cidr || ["STATIC", "NONE"].contains(&resolution)
            }
            (Self::NoEndpointsWithResolutionNone, Value::Object(m)) => {
                m.get("resolution")
                    .and_then(Value::as_str)
                    .unwrap_or("NONE")
                    != "NONE"
                    || !m.contains_key("endpoints")
            }
            (Self::DnsRoundRobinAtMostOneEndpoint, Value::Object(m)) => {
                m.get("resolution").and_then(Value::as_str) != Some("DNS_ROUND_ROBIN")
                    || m.get("endpoints")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                        <= 1
            }
            (Self::AddressOrNetwork, Value::Object(m)) => {
                m.contains_key("address") || m.contains_key("network")
            }
            (Self::UnixAddressNoPorts, Value::Object(m)) => {
                !m.get("address")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .starts_with("unix://")
                    || !m.contains_key("ports")
            }
            (Self::UnixAddressAbsoluteOrAbstract, Value::String(s)) => {
                match s.strip_prefix("unix://") {
                    // CEL's substring(7, 8) fails on a string of 7 characters: the rule fails.
                    Some(rest) => rest.starts_with('/') || rest.starts_with('@'),
                    None => true,
                }
            }
            (Self::UnixAddressNoTrailingSlash, Value::String(s)) => {
                !s.starts_with("unix://") || !s.ends_with('/')
            }
            (Self::KeysArePortNames, Value::Object(m)) => m.keys().all(|k| {
                let b = k.as_bytes();
                let alnum = |c: &u8| c.is_ascii_alphanumeric();
                k.chars().count() < 63
                    && b.first().is_some_and(alnum)
                    && b.last().is_some_and(alnum)
                    && b.iter().all(|c| alnum(c) || *c == b'-')
            }),
            _ => true,
        };
        (!ok).then(|| format!("violates {self:?}"))
    }
}

/// `(has(self.a) ? 1 : 0) + (has(self.b) ? 1 : 0) <= 1` → `[a, b]`.
fn at_most_one_of(rule: &str) -> Option<Vec<String>> {
    let sum = rule.strip_suffix(" <= 1")?;
    sum.split(" + ")
        .map(|term| {
            let field = term
                .strip_prefix("(has(self.")?
                .strip_suffix(") ? 1 : 0)")?;
            field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| field.to_string())
        })
        .collect::<Option<Vec<_>>>()
        .filter(|fields| fields.len() >= 2)
}

/// Go's `time.ParseDuration` (what CEL's `duration()` accepts), in seconds.
pub fn go_duration_secs(s: &str) -> Option<f64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = next;
    }
    Some(if neg { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(go_duration_secs("110s"), Some(110.0));
        assert_eq!(go_duration_secs("1m30s"), Some(90.0));
        assert_eq!(go_duration_secs("250ms"), Some(0.25));
        assert_eq!(go_duration_secs("1.5h"), Some(5400.0));
        assert_eq!(go_duration_secs("0"), Some(0.0));
        for bad in ["", "110", "s", "10x", "1..5s", "ms"] {
            assert_eq!(go_duration_secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn rules_parse_and_check() {
        let r = Rule::parse("duration(self) >= duration('1ms')").unwrap();
        assert!(r.check(&json!("110s")).is_none());
        assert!(r.check(&json!("110")).is_some());
        assert!(r.check(&json!("0s")).is_some());
        let r = Rule::parse(
            "(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1",
        )
        .unwrap();
        assert_eq!(
            r,
            Rule::AtMostOneOf(vec!["credentialName".into(), "credentialNames".into()])
        );
        assert!(r.check(&json!({"credentialName": "a"})).is_none());
        assert!(r
            .check(&json!({"credentialName": "a", "credentialNames": ["b"]}))
            .is_some());
        let r = Rule::parse(
            "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ?\n (!has(self.principals) &&\n!has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true",
        )
        .unwrap();
        assert!(r.check(&json!({"principals": ["x"]})).is_none());
        assert!(r
            .check(&json!({"serviceAccounts": ["a"], "principals": ["x"]}))
            .is_some());
        let r = Rule::parse("self.all(l1, self.exists_one(l2, l1.number == l2.number))").unwrap();
        assert!(r.check(&json!([{"number": 80}, {"number": 443}])).is_none());
        assert!(r.check(&json!([{"number": 80}, {"number": 80}])).is_some());
        let r = Rule::parse("self != \"*\"").unwrap();
        assert!(r.check(&json!("pypi.org")).is_none());
        assert!(r.check(&json!("*")).is_some());
        let r = Rule::parse("0 < self && self <= 65535").unwrap();
        assert!(r.check(&json!(443)).is_none());
        assert!(r.check(&json!(0)).is_some());
        assert!(r.check(&json!(65536)).is_some());
        let r = Rule::parse(
            "((has(self.resolution) ? self.resolution : \"NONE\") == \"NONE\") ? !has(self.endpoints) : true",
        )
        .unwrap();
        assert!(r
            .check(&json!({"resolution": "DNS", "endpoints": []}))
            .is_none());
        assert!(r.check(&json!({"endpoints": []})).is_some());
        let r = Rule::parse("self.startsWith(\"unix://\") ? (self.substring(7, 8) == \"/\" || self.substring(7, 8) == \"@\") : true").unwrap();
        assert!(r.check(&json!("unix:///run/x.sock")).is_none());
        assert!(r.check(&json!("unix://")).is_some());
        assert!(r.check(&json!("1.2.3.4")).is_none());
        let r = Rule::parse("self.all(key, size(key) < 63 && key.matches(\"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$\"))").unwrap();
        assert!(r.check(&json!({"http-2": 80, "a": 1})).is_none());
        assert!(r.check(&json!({"-http": 80})).is_some());
        assert!(r.check(&json!({"http_2": 80})).is_some());
        assert!(Rule::parse("self.matches('^[a-z]+$')").is_none());
        assert!(Rule::parse("(has(self.a) ? 1 : 0) <= 1").is_none());
    }
}
