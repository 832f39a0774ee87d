//! The host channel once work has begun: one reader thread and one shared writer.
//!
//! Until the first work message the agent reads and writes the channel from its main
//! thread alone (ready, warm-up, resume). From then on the host may send
//! [`HostMsg::Net`] frames at any time — while a job runs as much as between
//! requests — so the channel is split: a reader thread takes every frame as it
//! comes, hands `Net` frames to the egress [`Forwarder`] (which only queues and
//! wakes, never blocks on a connection) and every other message, in order, to the
//! main loop, which answers requests exactly as before. Job output, answers and
//! egress frames all go out through one [`Link`], a lock around the writing half, so
//! every frame is written whole. When the channel fails or closes, the reader ends
//! the forwarder's connections and drops its end of the request queue: the main
//! loop then ends, as it did when it read the channel itself.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use tvm_proto::{error_chain, BlockingChannel, CodecError, GuestMsg, HostMsg, NetFrame, NetOp};

use crate::egress::Forwarder;

/// The agent's end of the host channel.
pub(crate) type Channel = BlockingChannel<File, HostMsg, GuestMsg>;

/// The writing half of the channel, shared by everything that sends.
#[derive(Debug)]
pub(crate) struct Link {
    ch: Mutex<Channel>,
}

impl Link {
    /// `ch` is only written to.
    pub(crate) fn new(ch: Channel) -> Self {
        Self { ch: Mutex::new(ch) }
    }

    fn lock(&self) -> MutexGuard<'_, Channel> {
        self.ch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one frame (waiting for a frame another thread is writing).
    pub(crate) fn send(&self, msg: GuestMsg) -> Result<(), CodecError> {
        self.lock().send(msg)
    }

    /// Writes one frame of egress connection `conn` unless `reset` says the
    /// connection was reset; sending `Reset` sets it. Both happen under the writer's
    /// lock, so on the wire nothing of a connection ever follows its `Reset`.
    pub(crate) fn send_net(
        &self,
        conn: u32,
        op: NetOp,
        reset: &AtomicBool,
    ) -> Result<(), CodecError> {
        let mut ch = self.lock();
        let gone = if matches!(op, NetOp::Reset) {
            reset.swap(true, Ordering::SeqCst)
        } else {
            reset.load(Ordering::SeqCst)
        };
        if gone {
            return Ok(());
        }
        ch.send(GuestMsg::Net(NetFrame { conn, op }))
    }
}

/// Starts the reader thread over the reading half: `Net` frames go to `net`, every
/// other message to the returned queue, which ends when the channel does.
pub(crate) fn spawn_reader(
    mut reader: Channel,
    net: Arc<Forwarder>,
) -> std::io::Result<mpsc::Receiver<HostMsg>> {
    let (requests, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("channel-reader".into())
        .spawn(move || {
            loop {
                match reader.recv() {
                    Ok(HostMsg::Net(frame)) => net.deliver(frame),
                    Ok(msg) => {
                        if requests.send(msg).is_err() {
                            break;
                        }
                    }
                    Err(CodecError::Closed) => break,
                    Err(e) => {
                        eprintln!("tvm-agent: host channel: {}", error_chain(&e));
                        break;
                    }
                }
            }
            net.shut_down();
        })?;
    Ok(rx)
}

/// A fake host over a socket pair, for the tests of this module and of `egress`.
#[cfg(test)]
pub(crate) mod fake_host {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use super::*;

    /// How long a test waits for something that must happen.
    pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

    /// The host's end: a writing half, and what the guest sent, read by a thread.
    /// Dropping it closes the channel.
    pub(crate) struct Host {
        tx: BlockingChannel<UnixStream, GuestMsg, HostMsg>,
        pub(crate) rx: mpsc::Receiver<GuestMsg>,
        sock: UnixStream,
    }

    impl Drop for Host {
        fn drop(&mut self) {
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    impl Host {
        pub(crate) fn send(&mut self, msg: HostMsg) {
            self.tx.send(msg).unwrap();
        }

        pub(crate) fn net(&mut self, conn: u32, op: NetOp) {
            self.send(HostMsg::Net(NetFrame { conn, op }));
        }

        /// The next frame from the guest; panics if none comes in time.
        pub(crate) fn next(&self) -> GuestMsg {
            self.rx
                .recv_timeout(PATIENCE)
                .expect("the guest sent nothing")
        }

        /// The next frame, which must be a `Net` frame.
        pub(crate) fn next_net(&self) -> NetFrame {
            match self.next() {
                GuestMsg::Net(f) => f,
                other => panic!("expected a net frame, got {other:?}"),
            }
        }

        /// Whether the guest stays silent for `d`.
        pub(crate) fn quiet_for(&self, d: Duration) -> bool {
            match self.rx.recv_timeout(d) {
                Err(mpsc::RecvTimeoutError::Timeout) => true,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
                Ok(m) => {
                    eprintln!("unexpected frame: {m:?}");
                    false
                }
            }
        }
    }

    /// The guest's channel (a `File`, as in the VM) and a fake host on the other end.
    pub(crate) fn pair() -> (Channel, Host) {
        let (g, h) = UnixStream::pair().unwrap();
        let guest = BlockingChannel::new(File::from(OwnedFd::from(g)));
        let sock = h.try_clone().unwrap();
        let host: BlockingChannel<UnixStream, GuestMsg, HostMsg> = BlockingChannel::new(h);
        let (mut hr, tx) = host.split(UnixStream::try_clone).unwrap();
        let (frames, rx) = mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(m) = hr.recv() {
                if frames.send(m).is_err() {
                    break;
                }
            }
        });
        (guest, Host { tx, rx, sock })
    }

    /// The guest side as the agent sets it up after the first work message, with a
    /// forwarder that listens on an ephemeral port and allows `max_conns`.
    pub(crate) fn guest(
        ch: Channel,
        max_conns: usize,
    ) -> (Arc<Link>, Arc<Forwarder>, mpsc::Receiver<HostMsg>) {
        let (reader, writer) = ch.split(File::try_clone).unwrap();
        let link = Arc::new(Link::new(writer));
        let net = Forwarder::new(
            link.clone(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            max_conns,
        );
        let requests = spawn_reader(reader, net.clone()).unwrap();
        (link, net, requests)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpStream;

    use super::fake_host::{guest, pair, PATIENCE};
    use super::*;

    #[test]
    fn requests_reach_the_main_loop_and_net_frames_the_forwarder() {
        let (ch, mut host) = pair();
        let (link, net, requests) = guest(ch, 8);
        // A `Data` for a connection the guest does not know is answered by `Reset`;
        // the request behind it comes through all the same.
        host.net(7, NetOp::Data(b"x".to_vec()));
        host.send(HostMsg::ListDir { path: "".into() });
        assert_eq!(
            requests.recv_timeout(PATIENCE).unwrap(),
            HostMsg::ListDir { path: "".into() }
        );
        assert_eq!(
            host.next_net(),
            NetFrame {
                conn: 7,
                op: NetOp::Reset
            }
        );
        link.send(GuestMsg::Done).unwrap();
        assert_eq!(host.next(), GuestMsg::Done);
        // Other frames for unknown connections are ignored.
        host.net(8, NetOp::Ack(5));
        host.net(8, NetOp::Close);
        host.net(8, NetOp::Reset);
        host.send(HostMsg::Rewind);
        assert_eq!(requests.recv_timeout(PATIENCE).unwrap(), HostMsg::Rewind);
        assert!(host.quiet_for(std::time::Duration::from_millis(100)));

        // A proxy connection is open when the host goes away: the connection ends,
        // the request queue ends, and nothing listens any more.
        let addr = net.listen().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let open = host.next_net();
        assert_eq!(open.op, NetOp::Open);
        drop(host);
        assert!(requests.recv_timeout(PATIENCE).is_err());
        client.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
        assert!(matches!(
            net.listen(),
            Err(crate::egress::EgressError::ChannelGone)
        ));
        for _ in 0..100 {
            if TcpStream::connect(addr).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the proxy port still accepts after the channel closed");
    }
}
