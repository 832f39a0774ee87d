//! The host end of a VM's agent channel, with egress connections multiplexed on it.
//!
//! Requests and their answers travel as before: [`AgentLink`] is a `Stream` of
//! [`GuestMsg`] and a `Sink` of [`HostMsg`]. When a [`NetPort`] is attached, every
//! [`GuestMsg::Net`] frame read from the guest is handed to the port instead of the
//! reader, and the frames the port queues for the guest are written out, both
//! whenever the link is polled for its next message. The agent's per-connection
//! window ([`tvm_proto::NET_WINDOW`]) bounds what either queue holds, so reading the
//! channel never waits on a connection and a job's output is never stuck behind one.
//!
//! Connections progress while someone reads the link: during a job and during any
//! request; between the requests of a sandbox, pyrovm keeps reading it (`hold`).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tvm_proto::{CodecError, GuestMsg, HostMsg, NetFrame, NetOp, ProcEvent};

use crate::AgentChannel;

/// Where a VM's egress frames go, and where the frames for the guest come from.
pub struct NetPort {
    deliver: Box<dyn FnMut(NetFrame) + Send>,
    outgoing: mpsc::UnboundedReceiver<NetFrame>,
}

impl NetPort {
    /// `deliver` is called (from the reader's task, so it must not block) with every
    /// frame from the guest; `outgoing` holds the frames to send to the guest.
    pub fn new(
        deliver: impl FnMut(NetFrame) + Send + 'static,
        outgoing: mpsc::UnboundedReceiver<NetFrame>,
    ) -> Self {
        Self {
            deliver: Box::new(deliver),
            outgoing,
        }
    }
}

impl std::fmt::Debug for NetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetPort").finish_non_exhaustive()
    }
}

/// Where a VM's `Proc` frames (the output and end of processes a sandbox spawned)
/// go: called from the reader's task with each frame, so it must not block.
pub type ProcSink = Box<dyn FnMut(u32, ProcEvent) + Send>;

/// The agent channel of one VM (see the module docs).
pub struct AgentLink {
    framed: AgentChannel,
    net: Option<NetPort>,
    procs: Option<ProcSink>,
    /// A frame for the guest that the sink has not taken yet.
    pending: Option<HostMsg>,
}

impl AgentLink {
    pub fn new(framed: AgentChannel) -> Self {
        Self {
            framed,
            net: None,
            procs: None,
            pending: None,
        }
    }

    /// Gives the guest's `Proc` frames to `sink` from now on (replacing any sink).
    pub fn attach_procs(&mut self, sink: ProcSink) {
        self.procs = Some(sink);
    }

    /// Gives the guest's egress frames to `port` from now on (replacing any port).
    pub fn attach_net(&mut self, port: NetPort) {
        self.net = Some(port);
    }

    /// Whether a port is attached.
    pub fn has_net(&self) -> bool {
        self.net.is_some()
    }

    /// Writes what the port has queued for the guest, as far as the sink takes it
    /// without waiting; `Err` only when the channel failed.
    fn pump_out(&mut self, cx: &mut Context<'_>) -> Result<(), CodecError> {
        let Some(net) = self.net.as_mut() else {
            return Ok(());
        };
        let mut sent = false;
        loop {
            if self.pending.is_none() {
                match net.outgoing.poll_recv(cx) {
                    Poll::Ready(Some(f)) => self.pending = Some(HostMsg::Net(f)),
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            match Pin::new(&mut self.framed).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
            if let Some(msg) = self.pending.take() {
                Pin::new(&mut self.framed).start_send(msg)?;
                sent = true;
            }
        }
        if sent || self.pending.is_some() {
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.framed).poll_flush(cx) {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for AgentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLink")
            .field("framed", &self.framed)
            .field("net", &self.net)
            .field("procs", &self.procs.is_some())
            .finish_non_exhaustive()
    }
}

impl Stream for AgentLink {
    type Item = Result<GuestMsg, CodecError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Err(e) = this.pump_out(cx) {
                return Poll::Ready(Some(Err(e)));
            }
            match Pin::new(&mut this.framed).poll_next(cx) {
                Poll::Ready(Some(Ok(GuestMsg::Net(frame)))) => match this.net.as_mut() {
                    Some(net) => (net.deliver)(frame),
                    // No port: a connection nobody serves. The guest only opens one
                    // when its job was given egress, so this is a confused guest; the
                    // frame is dropped (its connection then stalls until the VM ends).
                    None => {
                        if !matches!(frame.op, NetOp::Reset) {
                            tracing::debug!(conn = frame.conn, "net frame without egress dropped");
                        }
                    }
                },
                Poll::Ready(Some(Ok(GuestMsg::Proc { pid, event }))) => match this.procs.as_mut() {
                    Some(sink) => sink(pid, event),
                    None => tracing::debug!(pid, "process frame without a sink dropped"),
                },
                other => return other,
            }
        }
    }
}

impl Sink<HostMsg> for AgentLink {
    type Error = CodecError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), CodecError>> {
        Pin::new(&mut self.get_mut().framed).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: HostMsg) -> Result<(), CodecError> {
        Pin::new(&mut self.get_mut().framed).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), CodecError>> {
        Pin::new(&mut self.get_mut().framed).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), CodecError>> {
        Pin::new(&mut self.get_mut().framed).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::sync::{Arc, Mutex};
    use tokio::net::UnixStream;
    use tokio_util::codec::Framed;
    use tvm_proto::FrameCodec;

    fn pair() -> (AgentLink, Framed<UnixStream, FrameCodec<HostMsg, GuestMsg>>) {
        let (a, b) = UnixStream::pair().expect("socket pair");
        (
            AgentLink::new(Framed::new(a, FrameCodec::new())),
            Framed::new(b, FrameCodec::new()),
        )
    }

    #[tokio::test]
    async fn net_frames_go_to_the_port_and_requests_to_the_reader() {
        let (mut link, mut guest) = pair();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let s = seen.clone();
        let echo = tx.clone();
        link.attach_net(NetPort::new(
            move |f: NetFrame| {
                s.lock().expect("lock").push(f.clone());
                // Answer every data frame with an ack, as the proxy would.
                if let NetOp::Data(d) = &f.op {
                    let _ = echo.send(NetFrame {
                        conn: f.conn,
                        op: NetOp::Ack(d.len() as u32),
                    });
                }
            },
            rx,
        ));
        guest
            .send(GuestMsg::Net(NetFrame {
                conn: 1,
                op: NetOp::Open,
            }))
            .await
            .expect("send");
        guest
            .send(GuestMsg::Net(NetFrame {
                conn: 1,
                op: NetOp::Data(b"hello".to_vec()),
            }))
            .await
            .expect("send");
        guest.send(GuestMsg::Done).await.expect("send");
        // The reader sees only the answer; the net frames went to the port.
        assert_eq!(link.next().await.expect("msg").expect("ok"), GuestMsg::Done);
        assert_eq!(seen.lock().expect("lock").len(), 2);
        // The ack the port queued reaches the guest while the link is read.
        tx.send(NetFrame {
            conn: 1,
            op: NetOp::Data(b"back".to_vec()),
        })
        .expect("queue");
        let reader = tokio::spawn(async move {
            let m = link.next().await;
            (link, m)
        });
        let first = guest.next().await.expect("frame").expect("ok");
        assert_eq!(
            first,
            HostMsg::Net(NetFrame {
                conn: 1,
                op: NetOp::Ack(5)
            })
        );
        let second = guest.next().await.expect("frame").expect("ok");
        assert_eq!(
            second,
            HostMsg::Net(NetFrame {
                conn: 1,
                op: NetOp::Data(b"back".to_vec())
            })
        );
        guest.send(GuestMsg::Done).await.expect("send");
        let (_link, m) = reader.await.expect("join");
        assert_eq!(m.expect("msg").expect("ok"), GuestMsg::Done);
    }

    #[tokio::test]
    async fn without_a_port_net_frames_are_dropped() {
        let (mut link, mut guest) = pair();
        assert!(!link.has_net());
        guest
            .send(GuestMsg::Net(NetFrame {
                conn: 9,
                op: NetOp::Open,
            }))
            .await
            .expect("send");
        guest.send(GuestMsg::Done).await.expect("send");
        assert_eq!(link.next().await.expect("msg").expect("ok"), GuestMsg::Done);
        link.send(HostMsg::Rewind).await.expect("send");
        assert_eq!(
            guest.next().await.expect("frame").expect("ok"),
            HostMsg::Rewind
        );
    }
}
