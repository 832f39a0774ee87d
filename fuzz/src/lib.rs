//! The checks behind the fuzz targets in `fuzz_targets/`, one function per target.
//!
//! Refusing an input is the expected outcome for almost every input; these functions
//! panic (which libFuzzer reports as a crash) only when a property fails: a parser or
//! decoder panicked, a decoded message does not survive re-encoding, chunking changed
//! what a decoder saw, or an accepted request breaks the bounds it was checked against.

use std::collections::HashSet;
use std::fmt::Debug;

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};
use tvm_api::{
    parse_execute, validate, ExecuteCommand, ExecuteRequest, LanguageTable, LimitBounds,
};
use tvm_proto::{check_relative_path, decode_payload, FrameCodec, MAX_FRAME_BYTES};

/// The codes `ValidationError::code` documents.
const CODES: [&str; 7] = [
    "invalid_json",
    "unknown_language",
    "limit_out_of_range",
    "input_too_large",
    "invalid_base64",
    "invalid_path",
    "invalid_argument",
];

/// `POST /v1/execute`: the body as the handler parses and validates it.
pub fn execute_request(data: &[u8]) {
    match parse_execute(data) {
        Err(e) => {
            assert_eq!(e.code(), "invalid_json");
            let _ = e.to_string();
        }
        Ok(req) => {
            let again = serde_json::to_vec(&req).expect("a parsed request serializes");
            assert_eq!(
                parse_execute(&again).ok().as_ref(),
                Some(&req),
                "a parsed request changes through its own JSON"
            );
            validate_and_check(req);
        }
    }
}

/// `POST /api/v2/execute`: the Piston body, its translation, then validation, in the
/// order the handler in `pyrovm::piston` runs them.
pub fn piston_request(data: &[u8]) {
    let Ok(preq) = serde_json::from_slice::<pyrovm::piston::PistonRequest>(data) else {
        return;
    };
    let req = match pyrovm::piston::to_request(
        preq,
        LanguageTable::builtin(),
        &tvm_api::LimitBounds::default(),
    ) {
        Ok(r) => r,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };
    assert!(
        LanguageTable::builtin()
            .iter()
            .any(|l| l.name == req.language),
        "the translation names a language by its canonical name"
    );
    // Whatever Piston can say, the native API can say the same way.
    let native = serde_json::to_vec(&req).expect("a translated request serializes");
    assert_eq!(
        parse_execute(&native).ok().as_ref(),
        Some(&req),
        "a translated request is not a valid /v1/execute body"
    );
    validate_and_check(req);
}

fn validate_and_check(req: ExecuteRequest) {
    let table = LanguageTable::builtin();
    let bounds = LimitBounds::default();
    let result = validate(req.clone(), table, &bounds);
    assert_eq!(
        validate(req.clone(), table, &bounds),
        result,
        "validation is not deterministic"
    );
    match result {
        Err(e) => {
            assert!(CODES.contains(&e.code()), "undocumented code {}", e.code());
            let _ = e.to_string();
        }
        Ok(cmd) => check_command(&req, &cmd, table, &bounds),
    }
}

/// What an accepted request promises the core.
fn check_command(
    req: &ExecuteRequest,
    cmd: &ExecuteCommand,
    table: &LanguageTable,
    bounds: &LimitBounds,
) {
    assert_eq!(table.get(&req.language), Some(&cmd.language));
    let l = cmd.limits;
    for (got, b) in [
        (l.timeout_ms, bounds.timeout_ms),
        (l.memory_mb, bounds.memory_mb),
        (u64::from(l.vcpus), bounds.vcpus),
        (l.max_output_bytes, bounds.max_output_bytes),
        (u64::from(l.max_processes), bounds.max_processes),
    ] {
        assert!((b.min..=b.max).contains(&got), "{got} outside {b:?}");
    }
    assert!(cmd.code.len() <= bounds.max_code_bytes);
    assert!(cmd.stdin.len() <= bounds.max_stdin_bytes);
    assert!(cmd.args.len() <= bounds.max_args);
    assert!(cmd.env.len() <= bounds.max_env);
    assert!(cmd.files.len() <= bounds.max_files);
    for s in cmd.args.iter().chain(cmd.env.values()) {
        assert!(s.len() <= bounds.max_arg_bytes && !s.contains('\0'));
    }
    let mut seen = HashSet::from([cmd.language.file_name.as_str()]);
    let mut total = 0;
    for f in &cmd.files {
        assert_eq!(check_relative_path(&f.path), Ok(()), "{:?}", f.path);
        assert!(seen.insert(&f.path), "{:?} given twice", f.path);
        total += f.content.len();
    }
    assert!(total <= bounds.max_file_bytes_total);
}

/// What a decoder saw in a byte stream: the messages, then the refusal if any, else
/// how many bytes of an unfinished frame it holds.
#[derive(Debug, PartialEq)]
struct Seen<M> {
    msgs: Vec<M>,
    end: Result<usize, String>,
}

/// Decodes `pieces` as they arrive one after the other, until the decoder refuses.
fn decode_stream<M: DeserializeOwned, Back>(pieces: &[&[u8]]) -> Seen<M> {
    let mut codec: FrameCodec<M, Back> = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut msgs = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(e) => {
                    return Seen {
                        msgs,
                        end: Err(tvm_proto::error_chain(&e)),
                    }
                }
            }
        }
    }
    Seen {
        msgs,
        end: Ok(buf.len()),
    }
}

/// Encodes `m` as its sender would and decodes it as its receiver would.
fn round_trip<M, Back>(m: &M)
where
    M: DeserializeOwned + Serialize + Clone + PartialEq + Debug,
{
    let mut sender: FrameCodec<Back, M> = FrameCodec::new();
    let mut wire = BytesMut::new();
    sender
        .encode(m.clone(), &mut wire)
        .expect("a decoded message encodes");
    let mut receiver: FrameCodec<M, Back> = FrameCodec::new();
    let again = receiver
        .decode(&mut wire)
        .expect("a re-encoded message decodes")
        .expect("a whole frame yields a message");
    assert_eq!(&again, m, "a message changed through re-encoding");
    assert!(wire.is_empty());
}

fn framed(payload: &[u8], len: u32) -> BytesMut {
    let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
    buf.extend_from_slice(payload);
    buf
}

/// The frames one side receives (`FrameCodec<M, Back>`). The first byte picks where the
/// rest is cut in two, so partial headers and payloads are exercised; the rest is also
/// tried as one frame's payload, and behind a header above [`MAX_FRAME_BYTES`].
pub fn frames<M, Back>(data: &[u8])
where
    M: DeserializeOwned + Serialize + Clone + PartialEq + Debug,
{
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let at = stream.len() * usize::from(pick) / usize::from(u8::MAX);
    let whole = decode_stream::<M, Back>(&[stream]);
    let cut = decode_stream::<M, Back>(&[&stream[..at], &stream[at..]]);
    assert_eq!(
        whole, cut,
        "cutting the stream at {at} changed what was decoded"
    );
    for m in &whole.msgs {
        round_trip::<M, Back>(m);
    }

    // The same bytes as one frame's payload: the codec and `decode_payload` agree.
    if stream.len() > MAX_FRAME_BYTES {
        return;
    }
    let direct = decode_payload::<M>(stream);
    let mut buf = framed(stream, stream.len() as u32);
    let mut codec: FrameCodec<M, Back> = FrameCodec::new();
    match (direct, codec.decode(&mut buf)) {
        (Ok(m), Ok(Some(via_codec))) => {
            assert_eq!(m, via_codec);
            round_trip::<M, Back>(&m);
        }
        (Err(e), Err(_)) => {
            let _ = tvm_proto::error_chain(&e);
        }
        (direct, via_codec) => panic!(
            "decode_payload and FrameCodec disagree: {:?} vs {:?}",
            direct.is_ok(),
            via_codec.map(|m| m.is_some())
        ),
    }

    // Above the cap: refused from the header, whatever follows.
    let over = u32::try_from(MAX_FRAME_BYTES).expect("the cap fits the length field") + 1;
    let len = over + u32::from(pick) * ((u32::MAX - over) / u32::from(u8::MAX));
    let mut buf = framed(stream, len);
    let mut codec: FrameCodec<M, Back> = FrameCodec::new();
    assert!(
        codec.decode(&mut buf).is_err(),
        "a {len}-byte frame was not refused"
    );
}
