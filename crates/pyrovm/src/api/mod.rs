//! Front doors that are thin adapters over the core. (`/v1/execute`, gRPC and
//! Piston still live in `server`, `grpc` and `piston`.)

pub mod e2b;
pub mod executions;
pub mod mcp;
pub mod sandboxes;
