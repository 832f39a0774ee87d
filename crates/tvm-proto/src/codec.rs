//! Framing: a length-delimited codec with a size cap and a version check.

use std::io::{Read, Write};
use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::messages::{Envelope, PROTOCOL_VERSION};

/// Largest frame either side accepts (a job carries code, stdin and files).
pub const MAX_FRAME_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("channel I/O failed")]
    Io(#[from] std::io::Error),
    #[error("frame is not a valid message")]
    Json(#[from] serde_json::Error),
    #[error("peer speaks protocol version {got}, this side speaks {PROTOCOL_VERSION}")]
    Version { got: u16 },
    #[error("channel closed by the peer")]
    Closed,
}

/// Decodes frames into `Rx` and encodes `Tx` into frames.
#[derive(Debug)]
pub struct FrameCodec<Rx, Tx> {
    inner: LengthDelimitedCodec,
    _marker: PhantomData<fn(Tx) -> Rx>,
}

impl<Rx, Tx> Default for FrameCodec<Rx, Tx> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Rx, Tx> FrameCodec<Rx, Tx> {
    pub fn new() -> Self {
        Self {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .max_frame_length(MAX_FRAME_BYTES)
                .new_codec(),
            _marker: PhantomData,
        }
    }
}

/// Parses one frame payload; public so the fuzz targets can reach it.
pub fn decode_payload<Rx: DeserializeOwned>(payload: &[u8]) -> Result<Rx, CodecError> {
    // Check the version before the message shape, so an unknown version is named as such.
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        v: u16,
    }
    let VersionOnly { v } = serde_json::from_slice(payload)?;
    if v != PROTOCOL_VERSION {
        return Err(CodecError::Version { got: v });
    }
    let env: Envelope<Rx> = serde_json::from_slice(payload)?;
    Ok(env.msg)
}

impl<Rx: DeserializeOwned, Tx> Decoder for FrameCodec<Rx, Tx> {
    type Item = Rx;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Rx>, CodecError> {
        match self.inner.decode(src)? {
            Some(frame) => decode_payload(&frame).map(Some),
            None => Ok(None),
        }
    }
}

impl<Rx, Tx: Serialize> Encoder<Tx> for FrameCodec<Rx, Tx> {
    type Error = CodecError;

    fn encode(&mut self, msg: Tx, dst: &mut BytesMut) -> Result<(), CodecError> {
        let payload = serde_json::to_vec(&Envelope {
            v: PROTOCOL_VERSION,
            msg,
        })?;
        self.inner.encode(Bytes::from(payload), dst)?;
        Ok(())
    }
}

/// Synchronous use of [`FrameCodec`] over any `Read + Write` (the agent's side).
#[derive(Debug)]
pub struct BlockingChannel<T, Rx, Tx> {
    io: T,
    codec: FrameCodec<Rx, Tx>,
    rbuf: BytesMut,
}

impl<T: Read + Write, Rx: DeserializeOwned, Tx: Serialize> BlockingChannel<T, Rx, Tx> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            codec: FrameCodec::new(),
            rbuf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Blocks until one whole message arrives.
    pub fn recv(&mut self) -> Result<Rx, CodecError> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(msg) = self.codec.decode(&mut self.rbuf)? {
                return Ok(msg);
            }
            let n = self.io.read(&mut chunk)?;
            if n == 0 {
                return Err(CodecError::Closed);
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Writes one whole frame.
    pub fn send(&mut self, msg: Tx) -> Result<(), CodecError> {
        let mut out = BytesMut::new();
        self.codec.encode(msg, &mut out)?;
        self.io.write_all(&out)?;
        self.io.flush()?;
        Ok(())
    }

    /// Splits the channel so that one thread can block in [`recv`](Self::recv) while
    /// others [`send`](Self::send). The reading half is this channel, with every byte it
    /// has buffered already (and a frame it is part-way through); the writing half sends
    /// over what `clone` makes of the stream, normally a second descriptor of it
    /// (`File::try_clone`, `UnixStream::try_clone`). Use each half for its own direction
    /// only. Each `send` writes its frame whole, but two threads sending at once must
    /// share the writing half behind a lock, or their frames may interleave.
    pub fn split<W: Read + Write>(
        self,
        clone: impl FnOnce(&T) -> std::io::Result<W>,
    ) -> std::io::Result<(Self, BlockingChannel<W, Rx, Tx>)> {
        let writer = BlockingChannel::new(clone(&self.io)?);
        Ok((self, writer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{GuestMsg, HostMsg, Job, JobLimits, Stream};
    use std::collections::BTreeMap;

    fn job() -> Job {
        Job {
            argv: vec!["/usr/bin/python3".into(), "main.py".into()],
            code_file: "main.py".into(),
            code: b"print(1)".to_vec(),
            stdin: vec![0, 255, 10],
            env: BTreeMap::from([("A".into(), "b".into())]),
            files: vec![],
            limits: JobLimits {
                timeout_ms: 1000,
                memory_bytes: 1 << 27,
                max_processes: 64,
                max_output_bytes: 1024,
                workdir_bytes: 1 << 26,
            },
            clock_unix_ns: 1,
            entropy: vec![1, 2, 3],
            egress: true,
        }
    }

    #[test]
    fn round_trip_both_directions() {
        let mut host: FrameCodec<GuestMsg, HostMsg> = FrameCodec::new();
        let mut guest: FrameCodec<HostMsg, GuestMsg> = FrameCodec::new();
        let mut buf = BytesMut::new();
        host.encode(HostMsg::Run(Box::new(job())), &mut buf)
            .unwrap();
        assert_eq!(
            guest.decode(&mut buf).unwrap(),
            Some(HostMsg::Run(Box::new(job())))
        );
        let out = GuestMsg::Output {
            stream: Stream::Stderr,
            data: vec![0xff, 0, 1],
        };
        guest.encode(out.clone(), &mut buf).unwrap();
        assert_eq!(host.decode(&mut buf).unwrap(), Some(out));
        assert!(buf.is_empty());
    }

    #[test]
    fn snapshot_messages_round_trip() {
        let mut host: FrameCodec<GuestMsg, HostMsg> = FrameCodec::new();
        let mut guest: FrameCodec<HostMsg, GuestMsg> = FrameCodec::new();
        for msg in [
            HostMsg::Warm(crate::WarmUp {
                commands: vec![vec!["/usr/bin/python3".into(), "-c".into(), "pass".into()]],
                timeout_ms: 5000,
            }),
            HostMsg::Resume(crate::Resume {
                clock_unix_ns: 1_700_000_000_000_000_000,
                entropy: vec![7; 64],
            }),
            HostMsg::Checkpoint {
                max_bytes: 64 << 20,
            },
            HostMsg::Rewind,
        ] {
            let mut buf = BytesMut::new();
            host.encode(msg.clone(), &mut buf).unwrap();
            assert_eq!(guest.decode(&mut buf).unwrap(), Some(msg));
        }
    }

    #[test]
    fn sandbox_and_file_messages_round_trip() {
        let mut host: FrameCodec<GuestMsg, HostMsg> = FrameCodec::new();
        let mut guest: FrameCodec<HostMsg, GuestMsg> = FrameCodec::new();
        let file = crate::JobFile {
            path: "out/a.bin".into(),
            content: vec![0, 255, 10, 13],
        };
        for msg in [
            HostMsg::Open(crate::SessionSpec {
                memory_bytes: 256 << 20,
                max_processes: 64,
                workdir_bytes: 64 << 20,
                egress: false,
            }),
            HostMsg::WriteFile(file.clone()),
            HostMsg::ReadFile {
                path: "a".into(),
                max_bytes: 10,
            },
            HostMsg::ListDir { path: "".into() },
            HostMsg::Collect(crate::CollectSpec {
                patterns: vec!["**/*.png".into()],
                max_files: 3,
                max_bytes: 100,
            }),
        ] {
            let mut buf = BytesMut::new();
            host.encode(msg.clone(), &mut buf).unwrap();
            assert_eq!(guest.decode(&mut buf).unwrap(), Some(msg));
        }
        for msg in [
            GuestMsg::Done,
            GuestMsg::FileData {
                content: vec![1, 2, 3],
            },
            GuestMsg::Listing {
                entries: vec![crate::DirEntry {
                    name: "a".into(),
                    kind: crate::EntryKind::Dir,
                    size: 0,
                }],
                truncated: false,
            },
            GuestMsg::Collected {
                files: vec![file.clone()],
                truncated: true,
            },
            GuestMsg::FileError {
                kind: crate::FileErrorKind::InvalidPath,
                message: "x".into(),
            },
        ] {
            let mut buf = BytesMut::new();
            guest.encode(msg.clone(), &mut buf).unwrap();
            assert_eq!(host.decode(&mut buf).unwrap(), Some(msg));
        }
    }

    #[test]
    fn process_and_fs_messages_round_trip() {
        let mut host: FrameCodec<GuestMsg, HostMsg> = FrameCodec::new();
        let mut guest: FrameCodec<HostMsg, GuestMsg> = FrameCodec::new();
        for msg in [
            HostMsg::Spawn(Box::new(crate::Spawn {
                argv: vec!["/bin/bash".into(), "-c".into(), "cat".into()],
                env: [("A".to_string(), "b".to_string())].into(),
                cwd: Some("/home/user".into()),
                stdin: true,
                timeout_ms: 0,
                clock_unix_ns: 1,
            })),
            HostMsg::Input {
                pid: 7,
                data: vec![0, 10, 255],
            },
            HostMsg::CloseStdin { pid: 7 },
            HostMsg::Signal { pid: 7, signal: 9 },
            HostMsg::Fs(crate::FsOp::List {
                path: "/tmp".into(),
                depth: 2,
            }),
            HostMsg::Fs(crate::FsOp::Write {
                path: "/tmp/a".into(),
                content: vec![1, 2],
            }),
        ] {
            let mut buf = BytesMut::new();
            host.encode(msg.clone(), &mut buf).unwrap();
            assert_eq!(guest.decode(&mut buf).unwrap(), Some(msg));
        }
        for msg in [
            GuestMsg::Spawned { pid: 7 },
            GuestMsg::Proc {
                pid: 7,
                event: crate::ProcEvent::Output {
                    stream: crate::Stream::Stderr,
                    data: b"x".to_vec(),
                },
            },
            GuestMsg::Proc {
                pid: 7,
                event: crate::ProcEvent::Exit {
                    exit_code: None,
                    signal: Some(9),
                    outcome: crate::Outcome::Timeout,
                },
            },
            GuestMsg::NoProcess { pid: 8 },
            GuestMsg::Entries {
                entries: vec![crate::FsEntry {
                    name: "a".into(),
                    path: "/tmp/a".into(),
                    kind: crate::EntryKind::File,
                    size: 2,
                    mode: 0o100644,
                    uid: 1000,
                    gid: 1000,
                    modified_unix_ns: 5,
                    symlink_target: None,
                }],
            },
            GuestMsg::FileError {
                kind: crate::FileErrorKind::Exists,
                message: "x".into(),
            },
        ] {
            let mut buf = BytesMut::new();
            guest.encode(msg.clone(), &mut buf).unwrap();
            assert_eq!(host.decode(&mut buf).unwrap(), Some(msg));
        }
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let mut guest: FrameCodec<HostMsg, GuestMsg> = FrameCodec::new();
        let mut host: FrameCodec<GuestMsg, HostMsg> = FrameCodec::new();
        let mut full = BytesMut::new();
        host.encode(HostMsg::Run(Box::new(job())), &mut full)
            .unwrap();
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(guest.decode(&mut part).unwrap(), None);
        part.extend_from_slice(&full[full.len() - 1..]);
        assert!(guest.decode(&mut part).unwrap().is_some());
    }

    #[test]
    fn rejects_other_versions() {
        let mut guest: FrameCodec<HostMsg, GuestMsg> = FrameCodec::new();
        for (payload, got) in [
            (&br#"{"v":1,"msg":{"type":"run"}}"#[..], 1),
            (br#"{"v":3,"msg":{"type":"run"}}"#, 3),
            (br#"{"v":4,"msg":{"type":"run"}}"#, 4),
            (br#"{"v":5,"msg":{"type":"run"}}"#, 5),
            (br#"{"v":7,"msg":{"type":"run"}}"#, 7),
        ] {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            buf.extend_from_slice(payload);
            assert!(
                matches!(guest.decode(&mut buf), Err(CodecError::Version { got: g }) if g == got),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn rejects_oversized_frames_before_buffering_them() {
        let mut guest: FrameCodec<HostMsg, GuestMsg> = FrameCodec::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((MAX_FRAME_BYTES + 1) as u32).to_be_bytes());
        buf.extend_from_slice(b"{");
        assert!(matches!(guest.decode(&mut buf), Err(CodecError::Io(_))));
    }

    #[test]
    fn rejects_garbage_and_unknown_fields() {
        let mut guest: FrameCodec<HostMsg, GuestMsg> = FrameCodec::new();
        for payload in [
            &b"\x00\x01garbage"[..],
            br#"{"v":2,"msg":{"type":"run"}}"#,
            br#"{"v":2,"msg":{"type":"shutdown"}}"#,
            br#"{"v":2,"msg":null,"extra":1}"#,
            br#"{"v":2,"msg":{"type":"resume","clock_unix_ns":1}}"#,
            br#"{"v":2,"msg":{"type":"warm","commands":[],"timeout_ms":1,"x":0}}"#,
        ] {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            buf.extend_from_slice(payload);
            assert!(guest.decode(&mut buf).is_err(), "{payload:?}");
        }
    }

    #[test]
    fn blocking_channel_over_a_socket_pair() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut g: BlockingChannel<_, HostMsg, GuestMsg> = BlockingChannel::new(a);
        let mut h: BlockingChannel<_, GuestMsg, HostMsg> = BlockingChannel::new(b);
        h.send(HostMsg::Run(Box::new(job()))).unwrap();
        assert_eq!(g.recv().unwrap(), HostMsg::Run(Box::new(job())));
        drop(h);
        assert!(matches!(g.recv(), Err(CodecError::Closed)));
    }

    #[test]
    fn split_keeps_buffered_bytes_with_the_reader() {
        use std::os::unix::net::UnixStream;
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut g: BlockingChannel<_, HostMsg, GuestMsg> = BlockingChannel::new(a);
        // One whole frame, a second one, and the head of a third, in one write: the
        // first `recv` buffers all of it.
        let mut host: FrameCodec<GuestMsg, HostMsg> = FrameCodec::new();
        let mut wire = BytesMut::new();
        host.encode(HostMsg::Rewind, &mut wire).unwrap();
        host.encode(HostMsg::ListDir { path: "x".into() }, &mut wire)
            .unwrap();
        let mut third = BytesMut::new();
        host.encode(HostMsg::Run(Box::new(job())), &mut third)
            .unwrap();
        wire.extend_from_slice(&third[..7]);
        b.write_all(&wire).unwrap();
        assert_eq!(g.recv().unwrap(), HostMsg::Rewind);

        let (mut reader, mut writer) = g.split(UnixStream::try_clone).unwrap();
        assert_eq!(
            reader.recv().unwrap(),
            HostMsg::ListDir { path: "x".into() }
        );
        b.write_all(&third[7..]).unwrap();
        assert_eq!(reader.recv().unwrap(), HostMsg::Run(Box::new(job())));

        // The writing half writes to the same peer, while the reader is blocked.
        let blocked = std::thread::spawn(move || reader.recv());
        writer.send(GuestMsg::Done).unwrap();
        let mut h: BlockingChannel<_, GuestMsg, HostMsg> = BlockingChannel::new(b);
        assert_eq!(h.recv().unwrap(), GuestMsg::Done);
        h.send(HostMsg::Rewind).unwrap();
        assert_eq!(blocked.join().unwrap().unwrap(), HostMsg::Rewind);
    }
}
