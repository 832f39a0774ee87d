//! The connection loop: HTTP/1.1 and HTTP/2 (gRPC too) on one port, with the
//! timeouts a public service needs. axum's own `serve` runs hyper without a timer,
//! so a client that sends headers a byte at a time holds its connection forever;
//! here hyper-util's auto builder gets a timer and a header-read deadline, HTTP/2
//! gets keep-alive pings, connections are capped, and shutdown drains with a deadline.
//! (The request *body* deadline is [`crate::middleware::body_deadline`].)

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    /// A client must send a request's complete headers within this (HTTP/1).
    pub header_timeout: Duration,
    /// After shutdown starts, in-flight requests get this long; then they are cut.
    pub drain_timeout: Duration,
    /// Open connections at most; more wait in the kernel's accept queue.
    pub max_connections: usize,
}

/// The exposure rule of every TVM listener (pyrovm's and pyroshell's): off loopback,
/// bearer tokens or an explicit opt-out.
pub fn check_exposure(
    listen: std::net::SocketAddr,
    has_tokens: bool,
    insecure_no_auth: bool,
) -> Result<(), String> {
    if !listen.ip().is_loopback() && !has_tokens && !insecure_no_auth {
        return Err(format!(
            "refusing to listen on {listen} without auth tokens: set --token-file or TVM_TOKENS \
             (or pass --insecure-no-auth to accept unauthenticated requests from the network)"
        ));
    }
    Ok(())
}

/// The connection deadlines and cap must be positive (zero would refuse everything).
pub fn check_limits(
    header_timeout_ms: u64,
    body_timeout_ms: u64,
    max_connections: usize,
) -> Result<(), String> {
    if header_timeout_ms == 0 || body_timeout_ms == 0 || max_connections == 0 {
        return Err(
            "header_timeout_ms, body_timeout_ms and max_connections must be positive".into(),
        );
    }
    Ok(())
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the drain deadline.
    Clean,
    /// The deadline passed; this many connections were cut.
    Cut(usize),
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and
/// drains (bounded by `drain_timeout`).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    opts: ListenOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<Drained> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // The auto builder first reads to tell HTTP/1 from HTTP/2, with no deadline of
        // its own: a client that connects and sends nothing must not keep its slot.
        let first_byte = opts.header_timeout;
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        conns.spawn(async move {
            let _permit = permit;
            let mut probe = [0u8; 1];
            match tokio::time::timeout(first_byte, stream.peek(&mut probe)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return, // silent, closed or broken: drop it
            }
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
        // Reap finished connection tasks as we go.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    match tokio::time::timeout(opts.drain_timeout, graceful.shutdown()).await {
        Ok(()) => Ok(Drained::Clean),
        Err(_) => {
            let cut = conns.len();
            tracing::warn!(
                connections = cut,
                deadline = ?opts.drain_timeout,
                "drain deadline passed; cutting the remaining connections"
            );
            // Dropping a connection drops its request futures, and with them their
            // VMs (a VM handle's Drop kills its VMM).
            conns.shutdown().await;
            Ok(Drained::Cut(cut))
        }
    }
}
