//! pyroshell: TVM's front door. One API (HTTP, SSE, gRPC, Piston) in three modes:
//! `embedded` (pyrovm's core in-process, Linux), `forward` (a reverse proxy to an
//! upstream such as an Istio ingress) and `lima` (a Lima VM with k3s + Istio + pyrovm,
//! managed by pyrolima, behind the same proxy). The binary only parses flags.
//! docs/pyroshell.md describes the behaviour.

pub mod config;
pub mod headers;
pub mod lima;
pub mod proxy;
pub mod retry;
pub mod upstream;
