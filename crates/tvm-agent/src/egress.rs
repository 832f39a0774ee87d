//! The guest half of egress: a byte forwarder between a job's proxy connections and
//! the host.
//!
//! The VM has no network device. A job with egress (its own flag, or its sandbox's)
//! finds `HTTP_PROXY` and friends set to `http://127.0.0.1:3128` ([`EGRESS_PORT`]);
//! the agent listens there — bound once, before the first such job is spawned, and
//! kept for the VM's life — and carries every accepted connection over the host
//! channel as `Net` frames. The forward proxy runs on the host: it parses the request
//! head (`CONNECT` or a plain HTTP request) and decides what may pass. The guest never
//! looks at the bytes.
//!
//! Threads: one accepts, and gives each connection a new id, says `Open`, and starts
//! two threads for it, one per direction:
//! - *up* (socket → host) reads at most `min(NET_CHUNK, credit)` bytes and sends them
//!   as `Data`. The credit starts at [`NET_WINDOW`] and grows by each `Ack` of the
//!   host; at 0 the thread sleeps on a condition variable. EOF becomes `Close` (a
//!   half-close: the other direction goes on), a read error `Reset`.
//! - *down* (host → socket) writes the `Data` queued for it and only then acks it;
//!   after the host's `Close` and the rest of the queue it shuts the socket's write
//!   side. A write error becomes `Reset`.
//!
//! The channel's reader thread ([`crate::link`]) only queues, counts and wakes here, so
//! it never waits for a connection, nor for the writer: the host keeps at most
//! `NET_WINDOW` bytes unacked per connection, which bounds each queue (a host that
//! sends more gets the connection reset), and the two `Reset`s the reader decides on
//! (data for an unknown connection, a broken window) are written by a thread of their
//! own. A connection is forgotten once both directions are closed, or either side
//! reset it; at most `max_conns` live at once, and one accepted beyond that is closed
//! at once. When the channel goes away every connection is shut and nothing more is
//! accepted (the VM is about to be destroyed anyway).
//!
//! [`EGRESS_PORT`]: tvm_proto::EGRESS_PORT

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tvm_proto::{GuestMsg, NetFrame, NetOp, NET_CHUNK, NET_WINDOW};

use crate::link::Link;

/// Proxy connections open at once, at most.
pub(crate) const MAX_CONNS: usize = 256;
/// Stack of the accept and pump threads: they hold their buffers on the heap.
const STACK_BYTES: usize = 128 * 1024;
/// After `accept` failed for want of descriptors or memory, wait this long before
/// the next try (the condition does not clear by itself at once).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub(crate) enum EgressError {
    #[error("cannot accept the job's proxy connections on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the host channel is gone")]
    ChannelGone,
}

/// The proxy port and its connections.
#[derive(Debug)]
pub(crate) struct Forwarder {
    link: Arc<Link>,
    /// Where to listen ([`EGRESS_PORT`](tvm_proto::EGRESS_PORT) on loopback in the VM).
    addr: SocketAddr,
    max_conns: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The listener and the address it got, once [`Forwarder::listen`] bound it.
    listener: Option<(Arc<TcpListener>, SocketAddr)>,
    conns: HashMap<u32, Arc<Conn>>,
    next_id: u32,
    /// The channel is gone: accept nothing more.
    closed: bool,
    /// Resets the reader thread owes the host, sent by a thread of their own (started
    /// on first use) so that the reader never waits for the writer.
    resets: Option<mpsc::Sender<u32>>,
}

/// One proxy connection.
#[derive(Debug)]
struct Conn {
    id: u32,
    sock: TcpStream,
    /// Set once either side reset the connection, or the channel went away. The
    /// link reads and sets it under its writer lock (see [`Link::send_net`]).
    reset: AtomicBool,
    state: Mutex<ConnState>,
    /// Wakes both pumps after any change of `state` or `reset`.
    changed: Condvar,
}

#[derive(Debug)]
struct ConnState {
    /// Bytes the up pump may still send before the host acks more.
    credit: u32,
    /// Host data not yet written to the socket, in order.
    queue: VecDeque<Vec<u8>>,
    /// Host bytes queued or being written, not yet acked (at most `NET_WINDOW`).
    unacked: usize,
    /// The host sent `Close`.
    host_closed: bool,
    up_done: bool,
    down_done: bool,
}

/// What the down pump does next.
enum Step {
    Write(Vec<u8>),
    ShutWrite,
    Stop,
}

impl Conn {
    fn new(id: u32, sock: TcpStream) -> Self {
        Self {
            id,
            sock,
            reset: AtomicBool::new(false),
            state: Mutex::new(ConnState {
                credit: NET_WINDOW,
                queue: VecDeque::new(),
                unacked: 0,
                host_closed: false,
                up_done: false,
                down_done: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, st: MutexGuard<'a, ConnState>) -> MutexGuard<'a, ConnState> {
        self.changed.wait(st).unwrap_or_else(|e| e.into_inner())
    }

    fn is_reset(&self) -> bool {
        self.reset.load(Ordering::SeqCst)
    }

    /// Wakes the pumps. The lock is taken first so that a pump between testing its
    /// condition and sleeping cannot miss a change made without it (`reset`).
    fn wake(&self) {
        drop(self.lock());
        self.changed.notify_all();
    }

    /// Ends the connection here without a word to the host (it reset it, or the
    /// channel is gone): nothing more is sent for it, both pumps stop.
    fn end(&self) {
        self.reset.store(true, Ordering::SeqCst);
        let _ = self.sock.shutdown(Shutdown::Both);
        self.wake();
    }

    /// Ends the connection from this side: `Reset` to the host, then as [`Conn::end`].
    fn reset_here(&self, link: &Link) {
        let _ = link.send_net(self.id, NetOp::Reset, &self.reset);
        self.end();
    }
}

impl Forwarder {
    /// A forwarder that will listen on `addr` once [`Forwarder::listen`] is called.
    pub(crate) fn new(link: Arc<Link>, addr: SocketAddr, max_conns: usize) -> Arc<Self> {
        Arc::new(Self {
            link,
            addr,
            max_conns,
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure the proxy port is listening (binds it the first time) and returns
    /// its address.
    pub(crate) fn listen(self: &Arc<Self>) -> Result<SocketAddr, EgressError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(EgressError::ChannelGone);
        }
        if let Some((_, addr)) = &inner.listener {
            return Ok(*addr);
        }
        let err = |source| EgressError::Listen {
            addr: self.addr,
            source,
        };
        let listener = TcpListener::bind(self.addr).map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        let listener = Arc::new(listener);
        let (fwd, l) = (self.clone(), listener.clone());
        std::thread::Builder::new()
            .name("egress-accept".into())
            .stack_size(STACK_BYTES)
            .spawn(move || fwd.accept_loop(&l))
            .map_err(err)?;
        inner.listener = Some((listener, addr));
        Ok(addr)
    }

    fn accept_loop(self: Arc<Self>, listener: &TcpListener) {
        loop {
            match listener.accept() {
                Ok((sock, _)) => self.adopt(sock),
                Err(_) if self.lock().closed => return,
                Err(e) => match e.raw_os_error() {
                    // The client gave up before we took it; a signal.
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => {}
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        std::thread::sleep(ACCEPT_BACKOFF);
                    }
                    _ => {
                        eprintln!(
                            "tvm-agent: egress: accept failed, no more proxy connections: {e}"
                        );
                        return;
                    }
                },
            }
        }
    }

    /// Takes an accepted connection: a new id, `Open` to the host, its two pumps.
    fn adopt(self: &Arc<Self>, sock: TcpStream) {
        let conn = {
            let mut inner = self.lock();
            if inner.closed || inner.conns.len() >= self.max_conns {
                return; // `sock` is closed here
            }
            let id = loop {
                let id = inner.next_id;
                inner.next_id = id.wrapping_add(1);
                if !inner.conns.contains_key(&id) {
                    break id;
                }
            };
            let conn = Arc::new(Conn::new(id, sock));
            inner.conns.insert(id, conn.clone());
            conn
        };
        // Our writes are whole chunks; do not let them wait for the client's acks.
        let _ = conn.sock.set_nodelay(true);
        if !self.send(&conn, NetOp::Open) {
            self.forget(&conn);
            return;
        }
        for up in [true, false] {
            let (fwd, c) = (self.clone(), conn.clone());
            let spawned = std::thread::Builder::new()
                .name(format!(
                    "egress-{}-{}",
                    if up { "up" } else { "down" },
                    conn.id
                ))
                .stack_size(STACK_BYTES)
                .spawn(move || {
                    if up {
                        fwd.up(&c);
                    } else {
                        fwd.down(&c);
                    }
                    fwd.finished(&c, up);
                });
            if spawned.is_err() {
                conn.reset_here(&self.link);
                self.forget(&conn);
                return;
            }
        }
    }

    /// Sends one frame of `conn`; `false` if the channel failed (the connection is
    /// then ended here; the reader ends the rest when it sees the channel go).
    fn send(&self, conn: &Conn, op: NetOp) -> bool {
        match self.link.send_net(conn.id, op, &conn.reset) {
            Ok(()) => true,
            Err(_) => {
                conn.end();
                false
            }
        }
    }

    /// Socket → host, within the credit the host gave.
    fn up(&self, conn: &Conn) {
        loop {
            let want = {
                let mut st = conn.lock();
                while st.credit == 0 && !conn.is_reset() {
                    st = conn.wait(st);
                }
                if conn.is_reset() {
                    return;
                }
                (st.credit as usize).min(NET_CHUNK)
            };
            let mut buf = vec![0u8; want];
            match (&conn.sock).read(&mut buf) {
                Ok(0) => {
                    self.send(conn, NetOp::Close);
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    conn.lock().credit -= n as u32;
                    if !self.send(conn, NetOp::Data(buf)) {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    conn.reset_here(&self.link);
                    return;
                }
            }
        }
    }

    /// Host → socket: writes what the reader queued, and acks what was written.
    fn down(&self, conn: &Conn) {
        loop {
            let step = {
                let mut st = conn.lock();
                loop {
                    if conn.is_reset() {
                        break Step::Stop;
                    }
                    if let Some(bytes) = st.queue.pop_front() {
                        break Step::Write(bytes);
                    }
                    if st.host_closed {
                        break Step::ShutWrite;
                    }
                    st = conn.wait(st);
                }
            };
            match step {
                Step::Stop => return,
                Step::ShutWrite => {
                    let _ = conn.sock.shutdown(Shutdown::Write);
                    return;
                }
                Step::Write(bytes) => {
                    if (&conn.sock).write_all(&bytes).is_err() {
                        conn.reset_here(&self.link);
                        return;
                    }
                    // Make room before the host hears of it: its next `Data` may
                    // come right after the `Ack`.
                    conn.lock().unacked -= bytes.len();
                    if !self.send(conn, NetOp::Ack(bytes.len() as u32)) {
                        return;
                    }
                }
            }
        }
    }

    /// One pump has ended; forget the connection once both have, or it was reset.
    fn finished(&self, conn: &Arc<Conn>, up: bool) {
        let both = {
            let mut st = conn.lock();
            if up {
                st.up_done = true;
            } else {
                st.down_done = true;
            }
            st.up_done && st.down_done
        };
        if both || conn.is_reset() {
            self.forget(conn);
        }
    }

    fn forget(&self, conn: &Arc<Conn>) {
        let mut inner = self.lock();
        if inner
            .conns
            .get(&conn.id)
            .is_some_and(|c| Arc::ptr_eq(c, conn))
        {
            inner.conns.remove(&conn.id);
        }
    }

    fn conn(&self, id: u32) -> Option<Arc<Conn>> {
        self.lock().conns.get(&id).cloned()
    }

    /// Has `Reset` sent for `id` without waiting for the writer (see `Inner::resets`).
    fn reset_later(&self, id: u32) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        if inner.resets.is_none() {
            let (tx, rx) = mpsc::channel::<u32>();
            let link = self.link.clone();
            let spawned = std::thread::Builder::new()
                .name("egress-resets".into())
                .stack_size(STACK_BYTES)
                .spawn(move || {
                    while let Ok(conn) = rx.recv() {
                        let reset = GuestMsg::Net(NetFrame {
                            conn,
                            op: NetOp::Reset,
                        });
                        if link.send(reset).is_err() {
                            return;
                        }
                    }
                });
            if spawned.is_err() {
                return; // the host then learns of it no sooner than at the VM's end
            }
            inner.resets = Some(tx);
        }
        if let Some(tx) = &inner.resets {
            let _ = tx.send(id);
        }
    }

    /// Takes one frame from the host (on the channel's reader thread): queues,
    /// counts and wakes; never waits for a connection or for the writer.
    pub(crate) fn deliver(&self, frame: NetFrame) {
        let NetFrame { conn: id, op } = frame;
        let Some(conn) = self.conn(id) else {
            // Data for a connection the guest does not know (any more): tell the host.
            if matches!(op, NetOp::Data(_)) {
                self.reset_later(id);
            }
            return;
        };
        match op {
            NetOp::Data(bytes) => {
                let mut st = conn.lock();
                if bytes.is_empty() || st.host_closed || conn.is_reset() {
                    return; // nothing, data after its own `Close`, or late
                }
                if st.unacked + bytes.len() > NET_WINDOW as usize {
                    // The host broke the window: the connection, not the agent, pays.
                    // Marked reset first, so nothing of it follows the `Reset`.
                    drop(st);
                    conn.end();
                    self.forget(&conn);
                    self.reset_later(id);
                    return;
                }
                st.unacked += bytes.len();
                st.queue.push_back(bytes);
            }
            NetOp::Ack(n) => {
                let mut st = conn.lock();
                st.credit = st.credit.saturating_add(n);
            }
            NetOp::Close => conn.lock().host_closed = true,
            NetOp::Reset => {
                conn.end();
                self.forget(&conn);
                return;
            }
            NetOp::Open => return, // only the guest opens connections
        }
        conn.changed.notify_all();
    }

    /// The channel is gone: shut every connection and stop accepting.
    pub(crate) fn shut_down(&self) {
        let (listener, conns) = {
            let mut inner = self.lock();
            inner.closed = true;
            let conns: Vec<_> = inner.conns.drain().map(|(_, c)| c).collect();
            inner.resets = None; // ends the resetter
            (inner.listener.take(), conns)
        };
        if let Some((l, _)) = listener {
            // Wakes the accept thread (accept fails with EINVAL), which then sees
            // `closed` and drops the listener.
            let _ = nix::sys::socket::shutdown(l.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
        for c in conns {
            c.end();
        }
    }

    /// Connections currently known.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.lock().conns.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use tvm_proto::Stream;

    use super::*;
    use crate::link::fake_host::{guest, pair, Host, PATIENCE};

    /// A short while in which nothing should happen.
    const SETTLE: Duration = Duration::from_millis(300);

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    }

    /// Reads `Data` frames of `conn` until `n` bytes came, failing on anything else.
    fn data_of(host: &Host, conn: u32, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            let f = host.next_net();
            assert_eq!(f.conn, conn, "{f:?}");
            match f.op {
                NetOp::Data(d) => {
                    assert!(!d.is_empty() && d.len() <= NET_CHUNK);
                    got.extend(d);
                }
                other => panic!("expected data, got {other:?}"),
            }
        }
        assert_eq!(got.len(), n);
        got
    }

    fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).unwrap();
        buf
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < PATIENCE, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Bytes `from..from + n` of an endless test pattern.
    fn pattern(from: usize, n: usize) -> Vec<u8> {
        (from..from + n).map(|i| (i % 251) as u8).collect()
    }

    /// Sends data for `conn`, whose client reads nothing, keeping a whole window in
    /// flight while acks come back; once the socket buffers are full the guest stops
    /// acking and holds a whole window queued. Returns the bytes sent.
    fn fill(host: &mut Host, conn: u32) -> usize {
        let mut sent = 0usize;
        let mut unacked = 0usize;
        let start = Instant::now();
        loop {
            while unacked + NET_CHUNK <= NET_WINDOW as usize {
                host.net(conn, NetOp::Data(pattern(sent, NET_CHUNK)));
                sent += NET_CHUNK;
                unacked += NET_CHUNK;
            }
            match host.rx.recv_timeout(SETTLE) {
                Ok(GuestMsg::Net(NetFrame {
                    conn: c,
                    op: NetOp::Ack(n),
                })) if c == conn => unacked -= n as usize,
                Ok(other) => panic!("{other:?}"),
                Err(_) => break, // no ack for a while: stuck
            }
            assert!(start.elapsed() < 6 * PATIENCE, "the client never filled up");
        }
        assert_eq!(unacked, NET_WINDOW as usize);
        sent
    }

    #[test]
    fn bytes_flow_both_ways_and_are_acked() {
        let (ch, mut host) = pair();
        let (_link, net, _requests) = guest(ch, MAX_CONNS);
        let addr = net.listen().unwrap();
        assert_eq!(net.listen().unwrap(), addr, "bound once");
        let mut client = connect(addr);
        let head = b"CONNECT example.com:443 HTTP/1.1\r\n\r\n";
        client.write_all(head).unwrap();
        let open = host.next_net();
        assert_eq!(open.op, NetOp::Open);
        let id = open.conn;
        assert_eq!(data_of(&host, id, head.len()), head);
        let answer = b"HTTP/1.1 200 OK\r\n\r\n";
        host.net(id, NetOp::Data(answer.to_vec()));
        assert_eq!(read_exact(&mut client, answer.len()), answer);
        assert_eq!(
            host.next_net(),
            NetFrame {
                conn: id,
                op: NetOp::Ack(answer.len() as u32)
            }
        );
        // A second connection gets another id.
        let _other = connect(addr);
        let open2 = host.next_net();
        assert_eq!(open2.op, NetOp::Open);
        assert_ne!(open2.conn, id);
        assert_eq!(net.live(), 2);
    }

    #[test]
    fn half_close_in_both_directions() {
        let (ch, mut host) = pair();
        let (_link, net, _requests) = guest(ch, MAX_CONNS);
        let mut client = connect(net.listen().unwrap());
        let id = host.next_net().conn;
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        data_of(&host, id, 18);
        assert_eq!(
            host.next_net(),
            NetFrame {
                conn: id,
                op: NetOp::Close
            }
        );
        // The other direction goes on after the client's half-close.
        host.net(id, NetOp::Data(b"HTTP/1.0 200 OK\r\n".to_vec()));
        host.net(id, NetOp::Data(b"\r\nbody".to_vec()));
        host.net(id, NetOp::Close);
        let mut all = Vec::new();
        client.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"HTTP/1.0 200 OK\r\n\r\nbody");
        let acked: Vec<_> = (0..2).map(|_| host.next_net().op).collect();
        assert_eq!(acked, [NetOp::Ack(17), NetOp::Ack(6)]);
        // Both directions closed: the connection is forgotten, and data for it is
        // answered by `Reset`.
        wait_until("the connection is forgotten", || net.live() == 0);
        host.net(id, NetOp::Data(b"late".to_vec()));
        assert_eq!(
            host.next_net(),
            NetFrame {
                conn: id,
                op: NetOp::Reset
            }
        );
    }

    #[test]
    fn host_close_first_then_client() {
        let (ch, mut host) = pair();
        let (_link, net, _requests) = guest(ch, MAX_CONNS);
        let mut client = connect(net.listen().unwrap());
        let id = host.next_net().conn;
        host.net(id, NetOp::Close);
        let mut buf = [0u8; 4];
        assert_eq!(
            client.read(&mut buf).unwrap(),
            0,
            "EOF after the host's Close"
        );
        // The client can still send.
        client.write_all(b"more").unwrap();
        assert_eq!(data_of(&host, id, 4), b"more");
        assert_eq!(net.live(), 1);
        drop(client);
        assert_eq!(host.next_net().op, NetOp::Close);
        wait_until("the connection is forgotten", || net.live() == 0);
    }

    #[test]
    fn host_reset_ends_the_connection() {
        let (ch, mut host) = pair();
        let (_link, net, _requests) = guest(ch, MAX_CONNS);
        let mut client = connect(net.listen().unwrap());
        let id = host.next_net().conn;
        host.net(id, NetOp::Reset);
        let mut buf = [0u8; 4];
        // Shut both ways: the client sees the end (EOF, or a reset).
        assert!(!matches!(client.read(&mut buf), Ok(n) if n > 0));
        wait_until("the connection is forgotten", || net.live() == 0);
        // Nothing more is sent for it: no Close, no Reset back.
        let _ = client.write_all(b"ignored");
        assert!(host.quiet_for(SETTLE));
    }

    #[test]
    fn client_reset_is_reported() {
        let (ch, host) = pair();
        let (_link, net, _requests) = guest(ch, MAX_CONNS);
        let client = connect(net.listen().unwrap());
        let id = host.next_net().conn;
        // A zero linger time makes `close` send a RST.
        nix::sys::socket::setsockopt(
            &client,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .unwrap();
        drop(client);
        assert_eq!(
            host.next_net(),
            NetFrame {
                conn: id,
                op: NetOp::Reset
            }
        );
        wait_until("the connection is forgotten", || net.live() == 0);
        assert!(host.quiet_for(SETTLE));
    }

    #[test]
    fn the_window_bounds_what_is_sent_before_an_ack() {
        let (ch, mut host) = pair();
        let (_link, net, _requests) = guest(ch, MAX_CONNS);
        let client = connect(net.listen().unwrap());
        let id = host.next_net().conn;
        let extra = 100_000;
        let total = NET_WINDOW as usize + extra;
        let sent = pattern(0, total);
        let writer = {
            let sent = sent.clone();
            let mut c = client.try_clone().unwrap();
            std::thread::spawn(move || c.write_all(&sent).unwrap())
        };
        let mut got = data_of(&host, id, NET_WINDOW as usize);
        // The client has more to send, but the guest waits for the host.
        assert!(host.quiet_for(SETTLE));
        host.net(id, NetOp::Ack(1000));
        got.extend(data_of(&host, id, 1000));
        assert!(host.quiet_for(SETTLE));
        host.net(id, NetOp::Ack(NET_WINDOW));
        got.extend(data_of(&host, id, extra - 1000));
        assert_eq!(got, sent);
        writer.join().unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(host.next_net().op, NetOp::Close);
    }

    #[test]
    fn a_host_that_breaks_the_window_loses_the_connection() {
        let (ch, mut host) = pair();
        let (_link, net, _requests) = guest(ch, MAX_CONNS);
        let _client = connect(net.listen().unwrap());
        let id = host.next_net().conn;
        fill(&mut host, id);
        // A whole window is unacked: one byte more is too much.
        host.net(id, NetOp::Data(vec![1]));
        assert_eq!(
            host.next_net(),
            NetFrame {
                conn: id,
                op: NetOp::Reset
            }
        );
        wait_until("the connection is forgotten", || net.live() == 0);
        assert!(host.quiet_for(SETTLE));
    }

    #[test]
    fn a_slow_connection_does_not_hold_up_another() {
        let (ch, mut host) = pair();
        let (link, net, _requests) = guest(ch, MAX_CONNS);
        let addr = net.listen().unwrap();
        let mut slow = connect(addr);
        let slow_id = host.next_net().conn;
        let mut fast = connect(addr);
        let fast_id = host.next_net().conn;
        let sent = fill(&mut host, slow_id);

        // The other connection, the requests and the job's output go on.
        host.net(fast_id, NetOp::Data(b"ping".to_vec()));
        assert_eq!(read_exact(&mut fast, 4), b"ping");
        assert_eq!(
            host.next_net(),
            NetFrame {
                conn: fast_id,
                op: NetOp::Ack(4)
            }
        );
        fast.write_all(b"pong").unwrap();
        assert_eq!(data_of(&host, fast_id, 4), b"pong");
        link.send(GuestMsg::Output {
            stream: Stream::Stdout,
            data: b"out".to_vec(),
        })
        .unwrap();
        assert!(matches!(host.next(), GuestMsg::Output { .. }));

        // The slow client finally reads: every byte arrives, in order, and is acked.
        assert_eq!(read_exact(&mut slow, sent), pattern(0, sent));
        let mut unacked = NET_WINDOW as usize;
        while unacked > 0 {
            match host.next_net() {
                NetFrame {
                    conn,
                    op: NetOp::Ack(n),
                } if conn == slow_id => unacked -= n as usize,
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn connections_beyond_the_cap_are_closed_at_once() {
        let (ch, mut host) = pair();
        let (_link, net, _requests) = guest(ch, 2);
        let addr = net.listen().unwrap();
        let a = connect(addr);
        let a_id = host.next_net().conn;
        let _b = connect(addr);
        assert_eq!(host.next_net().op, NetOp::Open);
        let mut c = connect(addr);
        let mut buf = [0u8; 1];
        assert!(!matches!(c.read(&mut buf), Ok(n) if n > 0));
        assert!(host.quiet_for(SETTLE), "no Open for a refused connection");
        // Once one is over in both directions there is room again.
        drop(a);
        assert_eq!(host.next_net().op, NetOp::Close);
        host.net(a_id, NetOp::Close);
        wait_until("the connection is forgotten", || net.live() == 1);
        let _d = connect(addr);
        assert_eq!(host.next_net().op, NetOp::Open);
    }

    #[test]
    fn nothing_listens_until_egress_is_asked_for() {
        let (ch, host) = pair();
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (reader, writer) = ch.split(std::fs::File::try_clone).unwrap();
        let link = Arc::new(Link::new(writer));
        let net = Forwarder::new(link, free, MAX_CONNS);
        let _requests = crate::link::spawn_reader(reader, net.clone()).unwrap();
        assert!(TcpStream::connect(free).is_err());
        assert_eq!(net.listen().unwrap(), free);
        let _client = connect(free);
        assert_eq!(host.next_net().op, NetOp::Open);
    }
}
