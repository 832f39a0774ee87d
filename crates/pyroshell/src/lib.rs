pub mod config;
pub mod headers;
pub mod proxy;
pub mod retry;
pub mod upstream;
