//! A VM's egress: the guest's proxy connections, carried as [`NetFrame`]s on its
//! agent channel, become byte streams for [`tvm_egress::serve_connection`].
//!
//! [`port`] makes the [`NetPort`] a VM's [`tvm_vmm::AgentLink`] hands the frames to.
//! Each guest `Open` starts one proxy task over a [`GuestStream`]: its reads are the
//! guest's `Data` (acknowledged as the proxy takes them, so the guest never has more
//! than [`NET_WINDOW`] bytes in flight), its writes become `Data` frames within the
//! window the guest grants with its `Ack`s. Dropping the port (the VM ends) ends
//! every connection of the VM.

use crate::lock;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tvm_egress::{Grant, Usage};
use tvm_proto::{NetFrame, NetOp, NET_CHUNK, NET_WINDOW};
use tvm_vmm::NetPort;

/// What the guest sent on one connection, for its proxy task.
enum Inbound {
    Data(Vec<u8>),
    Close,
    Reset,
}

/// How much the proxy may still send to the guest on one connection.
#[derive(Debug)]
struct Credit {
    avail: u32,
    waker: Option<Waker>,
    reset: bool,
}

struct Conn {
    inbound: mpsc::UnboundedSender<Inbound>,
    credit: Arc<Mutex<Credit>>,
}

/// Aborts a VM's proxy tasks when its port goes away.
#[derive(Default)]
struct Tasks(Vec<AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The port of one VM whose job (or sandbox) was granted egress.
pub(crate) fn port(grant: Arc<Grant>, usage: Arc<Usage>) -> NetPort {
    let (out_tx, out_rx) = mpsc::unbounded_channel::<NetFrame>();
    let mut conns: HashMap<u32, Conn> = HashMap::new();
    let mut tasks = Tasks::default();
    let deliver = move |f: NetFrame| {
        let conn = f.conn;
        match f.op {
            NetOp::Open => {
                if conns.contains_key(&conn) {
                    return;
                }
                let (in_tx, in_rx) = mpsc::unbounded_channel();
                let credit = Arc::new(Mutex::new(Credit {
                    avail: NET_WINDOW,
                    waker: None,
                    reset: false,
                }));
                let stream = GuestStream {
                    conn,
                    inbound: in_rx,
                    leftover: Vec::new(),
                    out: out_tx.clone(),
                    credit: credit.clone(),
                    sent_close: false,
                    got_close: false,
                    reset: false,
                };
                let task = tokio::spawn(tvm_egress::serve_connection(
                    stream,
                    grant.clone(),
                    usage.clone(),
                ));
                tasks.0.retain(|t| !t.is_finished());
                tasks.0.push(task.abort_handle());
                conns.insert(
                    conn,
                    Conn {
                        inbound: in_tx,
                        credit,
                    },
                );
            }
            NetOp::Data(d) => match conns.get(&conn) {
                Some(c) => {
                    if c.inbound.send(Inbound::Data(d)).is_err() {
                        conns.remove(&conn);
                        let _ = out_tx.send(NetFrame {
                            conn,
                            op: NetOp::Reset,
                        });
                    }
                }
                None => {
                    let _ = out_tx.send(NetFrame {
                        conn,
                        op: NetOp::Reset,
                    });
                }
            },
            NetOp::Ack(n) => {
                if let Some(c) = conns.get(&conn) {
                    let mut cr = lock(&c.credit);
                    cr.avail = cr.avail.saturating_add(n).min(NET_WINDOW);
                    if let Some(w) = cr.waker.take() {
                        w.wake();
                    }
                }
            }
            NetOp::Close => {
                // A proxy task that has ended takes nothing more: forget it.
                if let Some(c) = conns.get(&conn) {
                    if c.inbound.send(Inbound::Close).is_err() {
                        conns.remove(&conn);
                    }
                }
            }
            NetOp::Reset => {
                if let Some(c) = conns.remove(&conn) {
                    let _ = c.inbound.send(Inbound::Reset);
                    let mut cr = lock(&c.credit);
                    cr.reset = true;
                    if let Some(w) = cr.waker.take() {
                        w.wake();
                    }
                }
            }
        }
    };
    NetPort::new(deliver, out_rx)
}

/// One guest connection as the proxy sees it: a byte stream.
struct GuestStream {
    conn: u32,
    inbound: mpsc::UnboundedReceiver<Inbound>,
    /// Bytes of the last `Data` the reader has not taken yet.
    leftover: Vec<u8>,
    out: mpsc::UnboundedSender<NetFrame>,
    credit: Arc<Mutex<Credit>>,
    sent_close: bool,
    got_close: bool,
    reset: bool,
}

impl GuestStream {
    fn send(&self, op: NetOp) -> io::Result<()> {
        self.out
            .send(NetFrame {
                conn: self.conn,
                op,
            })
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the VM is gone"))
    }

    /// Hands `buf` as much of `data` as fits, keeps the rest, and acknowledges what
    /// was taken.
    fn take(&mut self, data: Vec<u8>, buf: &mut ReadBuf<'_>) -> io::Result<()> {
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        self.leftover = data[n..].to_vec();
        if n == 0 {
            return Ok(());
        }
        self.send(NetOp::Ack(n as u32))
    }
}

impl AsyncRead for GuestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.leftover.is_empty() {
            let data = std::mem::take(&mut this.leftover);
            return Poll::Ready(this.take(data, buf));
        }
        if this.got_close {
            return Poll::Ready(Ok(()));
        }
        match this.inbound.poll_recv(cx) {
            Poll::Ready(Some(Inbound::Data(d))) => Poll::Ready(this.take(d, buf)),
            Poll::Ready(Some(Inbound::Close)) => {
                this.got_close = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Some(Inbound::Reset)) => {
                this.reset = true;
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
            Poll::Ready(None) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the VM is gone",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sent_close {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = {
            let mut cr = lock(&this.credit);
            if cr.reset {
                this.reset = true;
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            if cr.avail == 0 {
                cr.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = buf.len().min(cr.avail as usize).min(NET_CHUNK);
            cr.avail -= n as u32;
            n
        };
        this.send(NetOp::Data(buf[..n].to_vec()))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.sent_close && !this.reset {
            this.sent_close = true;
            this.send(NetOp::Close)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for GuestStream {
    fn drop(&mut self) {
        // A connection the proxy drops without closing its side is reset, so the
        // guest's socket does not wait for more. One it closed is not: a reset could
        // overtake the answer still queued in the guest (a refusal's 403, say). Data
        // the guest sends afterwards is answered with a reset (see `port`).
        if !self.reset && !self.sent_close {
            let _ = self.send(NetOp::Reset);
        }
    }
}

/// What a grant's egress has done so far, as the API reports it.
pub(crate) fn usage_of(u: &Usage) -> tvm_api::NetworkUsage {
    let r = u.snapshot();
    tvm_api::NetworkUsage {
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        connections: r.connections,
        refused: r
            .refused
            .into_iter()
            .map(|x| tvm_api::RefusedDestination {
                host: x.host,
                port: x.port,
                reason: x.reason.as_str().to_string(),
            })
            .collect(),
    }
}

/// What happened between two reports of one sandbox's egress (an exec's share).
pub(crate) fn since(
    before: &tvm_api::NetworkUsage,
    now: tvm_api::NetworkUsage,
) -> tvm_api::NetworkUsage {
    tvm_api::NetworkUsage {
        bytes_in: now.bytes_in.saturating_sub(before.bytes_in),
        bytes_out: now.bytes_out.saturating_sub(before.bytes_out),
        connections: now.connections.saturating_sub(before.connections),
        refused: now.refused.into_iter().skip(before.refused.len()).collect(),
    }
}
