//! The splice: one guest connection, from its request head to the end of its bytes.
//!
//! Order: read the head (at most 16 KiB) → admit the connection against the grant's
//! count → a rule must name the target before anything is resolved (no DNS look-up for
//! hosts the grant does not name) → resolve → [`decide`] → connect → answer CONNECT with
//! 200 (or send the rewritten plain-HTTP head) → copy both ways under the grant's byte
//! caps. Logs name the destination, the decision and byte counts, never a path, header
//! or payload byte.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{debug, info};

use crate::head::{parse_head, Head, HeadError, MAX_HEAD};
use crate::policy::{decide, matching_rule, node_addresses, Grant, Reason, Target};
use crate::rules::Host;
use crate::usage::{Direction, Usage};

/// The longest wait for a name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait for a guest to take a refusal or the CONNECT answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read at once, per direction.
const CHUNK: usize = 16 * 1024;
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// The node's own addresses, read once per process.
fn node_addrs() -> &'static [IpAddr] {
    static ADDRS: OnceLock<Vec<IpAddr>> = OnceLock::new();
    ADDRS.get_or_init(node_addresses)
}

/// Why no request head could be read.
enum HeadFailure {
    /// The guest closed or failed before sending a byte: nothing to answer.
    Gone,
    /// The guest closed in the middle of the head.
    Truncated,
    Bad(HeadError),
}

/// How a splice ended early.
enum Stop {
    /// A byte cap was reached.
    Cut,
    Io(std::io::Error),
}

/// Serves one guest connection under `grant`, counting into `usage`; returns when the
/// connection is over. Never fails: every refusal is answered to the guest and recorded.
pub async fn serve_connection<S>(guest: S, grant: Arc<Grant>, usage: Arc<Usage>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut guest = guest;
    let mut buf = Vec::with_capacity(4096);
    let (head, used) = match read_head(&mut guest, &mut buf).await {
        Ok(found) => found,
        Err(HeadFailure::Gone) => return,
        Err(HeadFailure::Truncated) => {
            let detail = "the connection closed inside the request head";
            refuse(&mut guest, &usage, None, Reason::BadRequest, detail).await;
            return;
        }
        Err(HeadFailure::Bad(error)) => {
            let detail = error.to_string();
            refuse(&mut guest, &usage, None, Reason::BadRequest, &detail).await;
            return;
        }
    };
    let target = head.target().clone();
    let Some(upstream) = open(&mut guest, &target, &grant, &usage).await else {
        return;
    };
    let mut first_out = buf.split_off(used);
    match head {
        Head::Connect { .. } => {
            let answered = timeout(REPLY_TIMEOUT, async {
                guest.write_all(ESTABLISHED).await?;
                guest.flush().await
            })
            .await;
            if !matches!(answered, Ok(Ok(()))) {
                debug!(%target, "egress: the guest did not take the CONNECT answer");
                return;
            }
        }
        Head::Forward { mut request, .. } => {
            request.append(&mut first_out);
            first_out = request;
        }
    }
    splice(guest, upstream, first_out, &target, &grant, &usage).await;
}

/// Reads until a whole request head is in `buf`; answers it and its length.
async fn read_head<S: AsyncRead + Unpin>(
    guest: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(Head, usize), HeadFailure> {
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some(found) = parse_head(buf).map_err(HeadFailure::Bad)? {
            return Ok(found);
        }
        let room = (MAX_HEAD + 1)
            .saturating_sub(buf.len())
            .clamp(1, chunk.len());
        match guest.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) if buf.is_empty() => return Err(HeadFailure::Gone),
            Ok(0) => return Err(HeadFailure::Truncated),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(HeadFailure::Gone),
        }
    }
}

/// Admits, checks, resolves, decides and connects; answers the guest and records the
/// refusal when any step says no.
async fn open<S>(guest: &mut S, target: &Target, grant: &Grant, usage: &Usage) -> Option<TcpStream>
where
    S: AsyncWrite + Unpin,
{
    let limits = &grant.limits;
    let refused = if !usage.admit_connection(limits.max_connections) {
        Some(Reason::LimitConnections)
    } else if usage.exhausted(limits.max_bytes_in, limits.max_bytes_out) {
        Some(Reason::LimitBytes)
    } else if matching_rule(target, grant).is_none() {
        Some(Reason::NotAllowed)
    } else {
        None
    };
    if let Some(reason) = refused {
        refuse(guest, usage, Some(target), reason, "").await;
        return None;
    }
    let resolved = resolve(target).await;
    let addrs = match decide(target, &resolved, grant, node_addrs()) {
        Ok(addrs) => addrs,
        Err(refusal) => {
            refuse(guest, usage, Some(target), refusal.reason, "").await;
            return None;
        }
    };
    match connect(&addrs, limits.connect_timeout).await {
        Ok(upstream) => {
            info!(%target, decision = "allowed", "egress");
            Some(upstream)
        }
        Err(reason) => {
            refuse(guest, usage, Some(target), reason, "").await;
            None
        }
    }
}

/// The addresses of the target: an IP literal as is, a name through the system
/// resolver (nothing on failure or timeout).
async fn resolve(target: &Target) -> Vec<IpAddr> {
    let name = match &target.host {
        Host::Ip(ip) => return vec![*ip],
        Host::Name(name) => name.as_str(),
    };
    match timeout(
        RESOLVE_TIMEOUT,
        tokio::net::lookup_host((name, target.port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.map(|addr| addr.ip()).collect(),
        Ok(Err(error)) => {
            debug!(%target, %error, "egress: name did not resolve");
            Vec::new()
        }
        Err(_) => {
            debug!(%target, "egress: name resolution timed out");
            Vec::new()
        }
    }
}

/// Tries each address in turn, each within `wait`. Fails with
/// [`Reason::ConnectTimeout`] when any attempt timed out, else [`Reason::ConnectFailed`].
async fn connect(addrs: &[SocketAddr], wait: Duration) -> Result<TcpStream, Reason> {
    let mut reason = Reason::ConnectFailed;
    for addr in addrs {
        match timeout(wait, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    debug!(%addr, %error, "egress: cannot set TCP_NODELAY");
                }
                return Ok(stream);
            }
            Ok(Err(error)) => debug!(%addr, %error, "egress: connect failed"),
            Err(_) => {
                debug!(%addr, "egress: connect timed out");
                reason = Reason::ConnectTimeout;
            }
        }
    }
    Err(reason)
}

/// Records a refusal and answers it: an HTTP/1.1 response with `Connection: close` and
/// a one-line body naming the reason and the host (or, for a bad request, the problem).
async fn refuse<S>(
    guest: &mut S,
    usage: &Usage,
    target: Option<&Target>,
    reason: Reason,
    detail: &str,
) where
    S: AsyncWrite + Unpin,
{
    let (host, port) = match target {
        Some(target) => (target.host.to_string(), target.port),
        None => (String::new(), 0),
    };
    usage.refuse(&host, port, reason);
    let about = match target {
        Some(target) => target.to_string(),
        None => detail.to_string(),
    };
    match target {
        Some(target) => info!(%target, decision = "refused", reason = reason.as_str(), "egress"),
        None => info!(decision = "refused", reason = reason.as_str(), "egress"),
    }
    let (code, phrase) = reason.status();
    let body = format!("egress refused ({reason}): {about}\n");
    let response = format!(
        "HTTP/1.1 {code} {phrase}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let sent = timeout(REPLY_TIMEOUT, async {
        guest.write_all(response.as_bytes()).await?;
        guest.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        debug!(
            reason = reason.as_str(),
            "egress: the guest did not take the refusal"
        );
    }
}

/// Copies both ways until both directions end (half-close passes through) or either
/// fails or reaches its byte cap (then both sides are closed).
async fn splice<S>(
    guest: S,
    upstream: TcpStream,
    first_out: Vec<u8>,
    target: &Target,
    grant: &Grant,
    usage: &Usage,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (guest_read, guest_write) = tokio::io::split(guest);
    let (up_read, up_write) = upstream.into_split();
    let (sent_in, sent_out) = (AtomicU64::new(0), AtomicU64::new(0));
    let limits = &grant.limits;
    let out = pump(
        guest_read,
        up_write,
        first_out,
        Budget {
            usage,
            direction: Direction::Out,
            cap: limits.max_bytes_out,
            sent: &sent_out,
        },
    );
    let back = pump(
        up_read,
        guest_write,
        Vec::new(),
        Budget {
            usage,
            direction: Direction::In,
            cap: limits.max_bytes_in,
            sent: &sent_in,
        },
    );
    tokio::pin!(out, back);
    let (mut out_done, mut back_done) = (false, false);
    let mut stop = None;
    while !(out_done && back_done) {
        let (done, result) = tokio::select! {
            result = &mut out, if !out_done => (&mut out_done, result),
            result = &mut back, if !back_done => (&mut back_done, result),
        };
        *done = true;
        if let Err(error) = result {
            stop = Some(error);
            break;
        }
    }
    let end = match stop {
        None => "closed",
        Some(Stop::Cut) => {
            usage.refuse(&target.host.to_string(), target.port, Reason::LimitBytes);
            "limit_bytes"
        }
        Some(Stop::Io(error)) => {
            debug!(%target, %error, "egress: splice failed");
            "error"
        }
    };
    info!(
        %target,
        bytes_in = sent_in.load(Ordering::Relaxed),
        bytes_out = sent_out.load(Ordering::Relaxed),
        end,
        "egress connection over"
    );
}

/// One direction's share of the grant's byte budget.
struct Budget<'a> {
    usage: &'a Usage,
    direction: Direction,
    cap: u64,
    /// Bytes this connection sent this way, for the log.
    sent: &'a AtomicU64,
}

impl Budget<'_> {
    /// Writes as much of `bytes` as the budget allows; [`Stop::Cut`] (after closing
    /// `to`) when that is not all of it.
    async fn send<W: AsyncWrite + Unpin>(&self, to: &mut W, bytes: &[u8]) -> Result<(), Stop> {
        let granted = self.usage.take(self.direction, bytes.len(), self.cap);
        if granted > 0 {
            to.write_all(&bytes[..granted]).await.map_err(Stop::Io)?;
            to.flush().await.map_err(Stop::Io)?;
            let granted = u64::try_from(granted).unwrap_or(u64::MAX);
            self.sent.fetch_add(granted, Ordering::Relaxed);
        }
        if granted < bytes.len() {
            // Best effort: the connection is being cut either way.
            let _ = to.shutdown().await;
            return Err(Stop::Cut);
        }
        Ok(())
    }
}

/// Copies `from` to `to`, `first` ahead of it; at the end of `from`, shuts `to` down
/// for writing so that the other direction can still finish.
async fn pump<R, W>(mut from: R, mut to: W, first: Vec<u8>, budget: Budget<'_>) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !first.is_empty() {
        budget.send(&mut to, &first).await?;
    }
    drop(first);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await.map_err(Stop::Io)?;
        if n == 0 {
            // The peer may be gone already; the other direction will tell.
            if let Err(error) = to.shutdown().await {
                debug!(%error, "egress: half-close failed");
            }
            return Ok(());
        }
        budget.send(&mut to, &buf[..n]).await?;
    }
}
