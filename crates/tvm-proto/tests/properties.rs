//! Properties of the agent protocol: every message survives the wire unchanged, however
//! the byte stream is cut; no input makes a decoder panic; oversized frames are refused
//! from their header; `check_relative_path` agrees with a model built on `std::path`.

use std::path::{Component, Path};

use bytes::BytesMut;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};
use tvm_proto::{
    check_relative_path, decode_payload, ExitReport, FrameCodec, GuestMsg, HostMsg, Job, JobFile,
    JobLimits, NetFrame, NetOp, Outcome, Resume, Stream, WarmUp, MAX_FRAME_BYTES,
};

/// Byte strings as code, stdin, files and output carry them: any byte, including NUL and invalid UTF-8.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode scalar: control characters, quotes and backslashes must survive JSON escaping.
    any::<String>()
}

fn job() -> impl Strategy<Value = Job> {
    let limits = (
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(timeout_ms, memory_bytes, max_processes, max_output_bytes, workdir_bytes)| {
                JobLimits {
                    timeout_ms,
                    memory_bytes,
                    max_processes,
                    max_output_bytes,
                    workdir_bytes,
                }
            },
        );
    let files = vec(
        (text(), bytes(64)).prop_map(|(path, content)| JobFile { path, content }),
        0..4,
    );
    (
        vec(text(), 0..6),
        text(),
        bytes(256),
        bytes(256),
        btree_map(text(), text(), 0..8),
        files,
        limits,
        any::<u64>(),
        bytes(64),
    )
        .prop_map(
            |(argv, code_file, code, stdin, env, files, limits, clock_unix_ns, entropy)| Job {
                argv,
                code_file,
                code,
                stdin,
                env,
                files,
                limits,
                clock_unix_ns,
                entropy,
                egress: clock_unix_ns % 2 == 0,
            },
        )
}

fn net_frame() -> impl Strategy<Value = NetFrame> {
    let op = prop_oneof![
        Just(NetOp::Open),
        bytes(512).prop_map(NetOp::Data),
        any::<u32>().prop_map(NetOp::Ack),
        Just(NetOp::Close),
        Just(NetOp::Reset),
    ];
    (any::<u32>(), op).prop_map(|(conn, op)| NetFrame { conn, op })
}

fn host_msg() -> impl Strategy<Value = HostMsg> {
    prop_oneof![
        job().prop_map(|j| HostMsg::Run(Box::new(j))),
        (vec(vec(text(), 0..4), 0..4), any::<u64>()).prop_map(|(commands, timeout_ms)| {
            HostMsg::Warm(WarmUp {
                commands,
                timeout_ms,
            })
        }),
        (any::<u64>(), bytes(128)).prop_map(|(clock_unix_ns, entropy)| HostMsg::Resume(Resume {
            clock_unix_ns,
            entropy
        })),
        net_frame().prop_map(HostMsg::Net),
    ]
}

fn guest_msg() -> impl Strategy<Value = GuestMsg> {
    let outcome = prop_oneof![
        Just(Outcome::Completed),
        Just(Outcome::Timeout),
        Just(Outcome::MemoryLimit),
        Just(Outcome::OutputLimit),
    ];
    let exit = (
        outcome,
        any::<Option<i32>>(),
        any::<Option<i32>>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(outcome, exit_code, signal, stdout_truncated, stderr_truncated, exec_ms)| {
                GuestMsg::Exit(ExitReport {
                    outcome,
                    exit_code,
                    signal,
                    stdout_truncated,
                    stderr_truncated,
                    exec_ms,
                })
            },
        );
    prop_oneof![
        (text(), any::<u64>()).prop_map(|(agent_version, boot_ms)| GuestMsg::Ready {
            agent_version,
            boot_ms
        }),
        (any::<bool>(), bytes(512)).prop_map(|(err, data)| GuestMsg::Output {
            stream: if err { Stream::Stderr } else { Stream::Stdout },
            data,
        }),
        exit,
        text().prop_map(|message| GuestMsg::Failed { message }),
        net_frame().prop_map(GuestMsg::Net),
    ]
}

/// Encodes `msgs` with the sender's codec (`FrameCodec<Back, M>`), cuts the stream at
/// `cut` (a fraction of its length), and decodes with the receiver's codec
/// (`FrameCodec<M, Back>`) as the two pieces arrive.
fn send_in_two_pieces<M, Back>(msgs: &[M], cut: f64) -> Result<Vec<M>, TestCaseError>
where
    M: serde::de::DeserializeOwned + serde::Serialize + Clone,
{
    let mut sender: FrameCodec<Back, M> = FrameCodec::new();
    let mut wire = BytesMut::new();
    for m in msgs {
        sender
            .encode(m.clone(), &mut wire)
            .map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    }
    let at = ((wire.len() as f64) * cut) as usize;
    let mut receiver: FrameCodec<M, Back> = FrameCodec::new();
    let mut buf = BytesMut::from(&wire[..at]);
    let mut got = Vec::new();
    for rest in [&wire[at..], &[][..]] {
        while let Some(m) = receiver
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(format!("decode: {e}")))?
        {
            got.push(m);
        }
        buf.extend_from_slice(rest);
    }
    prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(got)
}

/// Runs both sides' decoders over `data` until they stop or refuse it.
fn decode_all(data: &[u8]) {
    let mut agent: FrameCodec<HostMsg, GuestMsg> = FrameCodec::new();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = agent.decode(&mut buf) {}
    let mut host: FrameCodec<GuestMsg, HostMsg> = FrameCodec::new();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = host.decode(&mut buf) {}
    let _ = decode_payload::<HostMsg>(data);
    let _ = decode_payload::<GuestMsg>(data);
}

/// A model of the path rule in terms of `std::path`: the path is short, printable, and
/// std reads exactly one normal component per `/`-separated piece (so nothing is
/// absolute, `.`, `..`, or silently collapsed like `a//b` and `a/`).
fn model_accepts(p: &str) -> bool {
    let comps: Vec<Component<'_>> = Path::new(p).components().collect();
    !p.is_empty()
        && p.len() <= 255
        && !p.chars().any(char::is_control)
        && comps.iter().all(|c| matches!(c, Component::Normal(_)))
        && comps.len() == p.split('/').count()
}

fn path_like() -> impl Strategy<Value = String> {
    prop_oneof![
        // Mostly the characters that matter to the rule.
        "[a./\\\\\\x00\\n\\x7f é]{0,12}",
        vec(
            prop_oneof!["\\.\\.", "\\.", "", "[a-z]{1,3}", "\\.\\.[a-z]"],
            1..6
        )
        .prop_map(|parts| parts.join("/")),
        ("/?", "[a-z]{250,260}").prop_map(|(a, b)| a + &b),
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn host_msgs_round_trip_however_the_stream_is_cut(
        msgs in vec(host_msg(), 1..4),
        cut in 0.0..=1.0f64,
    ) {
        prop_assert_eq!(send_in_two_pieces::<HostMsg, GuestMsg>(&msgs, cut)?, msgs);
    }

    #[test]
    fn guest_msgs_round_trip_however_the_stream_is_cut(
        msgs in vec(guest_msg(), 1..6),
        cut in 0.0..=1.0f64,
    ) {
        prop_assert_eq!(send_in_two_pieces::<GuestMsg, HostMsg>(&msgs, cut)?, msgs);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in bytes(512)) {
        decode_all(&data);
    }

    #[test]
    fn decoding_arbitrary_payloads_in_valid_frames_never_panics(
        payload in prop_oneof![
            bytes(256),
            text().prop_map(String::into_bytes),
            "\\{\"v\":2,\"msg\":\\{\"type\":\"(run|warm|resume|ready|output|exit|failed)\"[ -~]{0,40}\\}\\}"
                .prop_map(String::into_bytes),
        ],
    ) {
        let mut framed = (payload.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&payload);
        decode_all(&framed);
    }

    #[test]
    fn frames_above_the_cap_are_refused_from_their_header(
        len in (MAX_FRAME_BYTES as u32 + 1)..=u32::MAX,
        body in bytes(64),
    ) {
        let mut wire = BytesMut::from(&len.to_be_bytes()[..]);
        wire.extend_from_slice(&body);
        let mut agent: FrameCodec<HostMsg, GuestMsg> = FrameCodec::new();
        prop_assert!(agent.decode(&mut wire.clone()).is_err());
        let mut host: FrameCodec<GuestMsg, HostMsg> = FrameCodec::new();
        prop_assert!(host.decode(&mut wire).is_err());
    }

    #[test]
    fn check_relative_path_agrees_with_a_std_path_model(p in path_like()) {
        prop_assert_eq!(check_relative_path(&p).is_ok(), model_accepts(&p), "{:?}", p);
    }
}

#[test]
fn model_agrees_on_the_documented_examples() {
    for (p, ok) in [
        ("a/b.txt", true),
        ("..a", true),
        (".hidden", true),
        ("/etc/passwd", false),
        ("a/../b", false),
        ("a/./b", false),
        ("a//b", false),
        ("a/", false),
        ("", false),
    ] {
        assert_eq!(model_accepts(p), ok, "{p}");
        assert_eq!(check_relative_path(p).is_ok(), ok, "{p}");
    }
}
