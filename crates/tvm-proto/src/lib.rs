//! The TVM agent protocol: one byte stream between the host and `tvm-agent`.
//!
//! The same protocol runs over a virtio-serial port (QEMU) or a vsock connection
//! (Firecracker). Each frame is a 4-byte big-endian length followed by a JSON
//! [`Envelope`] that carries the protocol version. Framing is
//! `tokio_util::codec::LengthDelimitedCodec`; the async host uses it through
//! `tokio_util::codec::Framed`, the synchronous agent through [`BlockingChannel`].
//!
//! A conversation is: guest sends [`GuestMsg::Ready`]; host sends one
//! [`HostMsg::Run`]; guest streams [`GuestMsg::Output`] frames and ends with one
//! [`GuestMsg::Exit`] (or [`GuestMsg::Failed`] if the job could not be started).
//!
//! Snapshot templates and clones add two exchanges before the job, each answered
//! by another `Ready`: [`HostMsg::Warm`] (template only: fill the page cache with
//! fixed commands, then the host snapshots the VM while the agent waits) and
//! [`HostMsg::Resume`] (every clone: set the clock, add host entropy and reseed the
//! kernel RNG, so no two clones share random state). Under vsock a restore resets
//! the connection; the agent then accepts a new one and says `Ready` again.
//!
//! After the job (version 3) the agent keeps serving requests until the host
//! destroys the VM: [`HostMsg::Collect`] (a one-shot's `files_out`), and for a
//! sandbox [`HostMsg::Open`] followed by any number of `Run`, `WriteFile`,
//! `ReadFile` and `ListDir`. Requests are strictly one at a time: the host sends
//! the next only after the answer to the previous one has ended.
//!
//! A compiled language (version 4) is two jobs in one VM: the compiler's `Run`, then
//! the program's. Test cases add [`HostMsg::Checkpoint`] after the compile and
//! [`HostMsg::Rewind`] before every case but the first, so each case starts from
//! the compiled work dir and sees nothing another case wrote.
//!
//! Egress (version 5) multiplexes proxy connections over the same channel:
//! [`HostMsg::Net`] and [`GuestMsg::Net`] carry [`NetFrame`]s, each naming its
//! connection, at any time and interleaved with the requests above. Per connection
//! and direction at most [`NET_WINDOW`] bytes are unacknowledged, so the receiving
//! side reads the channel without ever blocking on one connection, and output
//! frames are never stuck behind a slow download.
//!
//! Sandbox processes (version 6): [`HostMsg::Spawn`] starts a process that runs
//! alongside later requests and is answered at once by [`GuestMsg::Spawned`]; its
//! output and end come as [`GuestMsg::Proc`] frames, which like `Net` frames are not
//! answers and may arrive at any time. [`HostMsg::Input`], [`HostMsg::CloseStdin`]
//! and [`HostMsg::Signal`] address it by pid, and [`HostMsg::Fs`] works on absolute
//! guest paths with the job user's permissions.

mod codec;
mod messages;
mod paths;

pub use codec::{decode_payload, BlockingChannel, CodecError, FrameCodec, MAX_FRAME_BYTES};
pub use messages::{
    CollectSpec, DirEntry, EntryKind, Envelope, ExitReport, FileErrorKind, FsEntry, FsOp, GuestMsg,
    HostMsg, Job, JobFile, JobLimits, NetFrame, NetOp, Outcome, ProcEvent, Resume, SessionSpec,
    Spawn, Stream, WarmUp, EGRESS_PORT, MAX_FS_ENTRIES, NET_CHUNK, NET_WINDOW, PROTOCOL_VERSION,
};
pub use paths::{check_relative_path, PathError, MAX_PATH_BYTES};

/// Name of the virtio-serial port the agent opens under QEMU.
pub const VIRTIO_PORT_NAME: &str = "tvm.agent";
/// vsock port the agent listens on under Firecracker.
pub const VSOCK_PORT: u32 = 1024;
/// Where the job's files and code live inside the guest.
pub const WORK_DIR: &str = "/work";
/// The unprivileged uid/gid the job runs as inside the guest.
pub const JOB_UID: u32 = 1000;

/// Formats an error with its whole source chain on one line (`a: b: c`), for logs
/// and for the `failed` message; shared by the host and the agent.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}
