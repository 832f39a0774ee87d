//! Opt-in egress for sandboxed jobs: the policy and proxy half.
//!
//! A job's VM has no network card. When its request asks for egress and the operator
//! allows it, the guest's HTTP(S) connections reach the host as byte streams, one per
//! connection, and [`serve_connection`] acts as a forward proxy for each: it reads the
//! request head, decides, connects and splices. Nothing else leaves the VM.
//!
//! The parts, each replaceable on its own:
//!
//! - **Rules** ([`parse_rule`], [`Rule`], [`check_within`]): allow entries such as
//!   `pypi.org`, `*.github.com:443` or `10.0.0.7:8000`. A job's [`Grant`] must stay
//!   within the operator's ceiling.
//! - **Head** ([`parse_head`]): `CONNECT host:port` opens a tunnel whose bytes (TLS) are
//!   never inspected; `GET http://host/path` is plain HTTP, rewritten to origin-form with
//!   `Connection: close`. Pure and fuzzed (`fuzz/fuzz_targets/egress_head.rs`).
//! - **Policy** ([`decide`]): pure, given the resolved addresses. A rule must name the
//!   host and port; then addresses a name must never lead to are dropped: loopback,
//!   private, link-local (cloud metadata at 169.254.169.254), CGNAT, multicast,
//!   unspecified, broadcast, reserved, IPv6 forms carrying any of these, and the node's
//!   own addresses ([`node_addresses`]). A name that resolves there is how a guest would
//!   reach the host's services or the cloud's metadata (DNS rebinding included: the
//!   proxy resolves once and connects to exactly what it checked). Only a rule naming
//!   that very IP literal reaches such an address.
//! - **Splice** ([`serve_connection`]): the async plumbing. A rule must name the target
//!   before the proxy resolves anything, so a guest cannot leak data through look-ups
//!   of names it may not reach. Connections and bytes each way are capped per grant
//!   ([`Limits`]) and counted in [`Usage`]; refusals are answered with an HTTP status
//!   and a [`Reason`] and kept in the [`UsageReport`]. Logs name the destination, the
//!   decision and byte counts, never a path, a header or payload.

mod head;
mod policy;
mod proxy;
mod rules;
mod usage;

pub use head::{parse_head, Head, HeadError};
pub use policy::{decide, node_addresses, Grant, Limits, Reason, Refusal, Target};
pub use proxy::serve_connection;
pub use rules::{check_within, parse_rule, Host, Rule, RuleError};
pub use usage::{Refused, Usage, UsageReport};
