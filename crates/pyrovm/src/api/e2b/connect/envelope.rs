//! Connect's streaming envelopes: a flag byte, a 4-byte big-endian length, the
//! payload. Pure: an incremental decoder and the encoders, no I/O.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ConnectError;

/// Flag: the payload is compressed (never accepted here).
pub const COMPRESSED: u8 = 0x01;
/// Flag: the last envelope of a response, its payload the JSON end-of-stream message.
pub const END_STREAM: u8 = 0x02;
/// The largest payload a decoder accepts unless told otherwise: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

const HEADER_LEN: usize = 5;

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The flag byte: 0 or [`END_STREAM`].
    pub flags: u8,
    /// The message, or for an end-stream envelope its JSON.
    pub payload: Bytes,
}

impl Envelope {
    /// Whether this is the end-stream envelope.
    pub fn is_end_stream(&self) -> bool {
        self.flags & END_STREAM != 0
    }
}

/// Why a run of envelopes is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// A compressed envelope; no compression is ever negotiated.
    #[error("compressed messages are not supported")]
    Compressed,
    /// Flag bits the protocol does not define.
    #[error("unknown envelope flags {0:#04x}")]
    UnknownFlags(u8),
    /// A payload over the limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The declared payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ended inside an envelope.
    #[error("stream ended inside an envelope ({buffered} bytes left over)")]
    Truncated {
        /// Bytes received after the last whole envelope.
        buffered: usize,
    },
}

/// Splits bytes, however they are chunked, into envelopes. After an error it keeps
/// returning that error.
#[derive(Debug)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
    max_message_size: usize,
    failed: Option<EnvelopeError>,
}

impl Default for EnvelopeDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvelopeDecoder {
    /// A decoder with the [`DEFAULT_MAX_MESSAGE_SIZE`] limit.
    pub fn new() -> Self {
        Self::with_max_message_size(DEFAULT_MAX_MESSAGE_SIZE)
    }

    /// A decoder refusing payloads over `max_message_size` bytes.
    pub fn with_max_message_size(max_message_size: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_message_size,
            failed: None,
        }
    }

    /// Appends received bytes. Call [`Self::next_envelope`] until it returns
    /// `Ok(None)` before pushing more, so that at most one envelope is buffered.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next whole envelope, `Ok(None)` if more bytes are needed. A bad header
    /// is reported as soon as its 5 bytes are in, before its payload.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, EnvelopeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let flags = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let error = if flags & COMPRESSED != 0 {
            Some(EnvelopeError::Compressed)
        } else if flags & !END_STREAM != 0 {
            Some(EnvelopeError::UnknownFlags(flags))
        } else if len > self.max_message_size {
            Some(EnvelopeError::TooLarge {
                len,
                max: self.max_message_size,
            })
        } else {
            None
        };
        if let Some(e) = error {
            self.buf = BytesMut::new();
            self.failed = Some(e.clone());
            return Err(e);
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flags, payload }))
    }

    /// Bytes received but not yet returned in an envelope.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Checks, at the end of the input, that it did not stop inside an envelope.
    pub fn finish(&self) -> Result<(), EnvelopeError> {
        match (&self.failed, self.buf.len()) {
            (Some(e), _) => Err(e.clone()),
            (None, 0) => Ok(()),
            (None, buffered) => Err(EnvelopeError::Truncated { buffered }),
        }
    }
}

/// One envelope around `payload`. A payload can't exceed 4 GiB here (messages are
/// capped far below); one that did would be cut so the framing stays valid.
pub fn encode_envelope(flags: u8, payload: &[u8]) -> Bytes {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let payload = payload.get(..len as usize).unwrap_or(payload);
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_u8(flags);
    out.put_u32(len);
    out.put_slice(payload);
    out.freeze()
}

/// The end-stream envelope: JSON whatever the codec, `{}` on success or
/// `{"error":{"code":"…","message":"…"}}`.
pub fn end_stream(error: Option<&ConnectError>) -> Bytes {
    let mut end = serde_json::Map::new();
    if let Some(e) = error {
        end.insert("error".into(), e.to_json());
    }
    encode_envelope(
        END_STREAM,
        serde_json::Value::Object(end).to_string().as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::e2b::connect::Code;

    fn decode_all(input: &[u8], chunk: usize) -> Result<Vec<Envelope>, EnvelopeError> {
        let mut decoder = EnvelopeDecoder::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            decoder.push(piece);
            while let Some(e) = decoder.next_envelope()? {
                out.push(e);
            }
        }
        decoder.finish()?;
        Ok(out)
    }

    #[test]
    fn encodes_header_then_payload() {
        assert_eq!(&encode_envelope(0, b"hi")[..], b"\x00\x00\x00\x00\x02hi");
        assert_eq!(
            &encode_envelope(END_STREAM, b"")[..],
            b"\x02\x00\x00\x00\x00"
        );
    }

    #[test]
    fn decodes_any_chunking() {
        let mut input = encode_envelope(0, b"first").to_vec();
        input.extend_from_slice(&encode_envelope(0, b""));
        input.extend_from_slice(&end_stream(None));
        for chunk in [1, 2, 5, 7, input.len()] {
            let got = decode_all(&input, chunk).expect("valid input");
            assert_eq!(got.len(), 3, "chunk {chunk}");
            assert_eq!(&got[0].payload[..], b"first");
            assert!(got[1].payload.is_empty() && !got[1].is_end_stream());
            assert!(got[2].is_end_stream());
            assert_eq!(&got[2].payload[..], b"{}");
        }
    }

    #[test]
    fn refuses_compression_and_unknown_flags() {
        assert_eq!(
            decode_all(&encode_envelope(COMPRESSED, b"x"), 1),
            Err(EnvelopeError::Compressed)
        );
        let e = decode_all(&encode_envelope(0x80, b"x"), 64);
        assert_eq!(e, Err(EnvelopeError::UnknownFlags(0x80)));
    }

    #[test]
    fn refuses_oversize_from_the_header_alone_and_stays_failed() {
        let mut decoder = EnvelopeDecoder::with_max_message_size(4);
        decoder.push(b"\x00\x00\x00\x00\x05");
        let too_large = EnvelopeError::TooLarge { len: 5, max: 4 };
        assert_eq!(decoder.next_envelope(), Err(too_large.clone()));
        decoder.push(b"\x00\x00\x00\x00\x00");
        assert_eq!(decoder.next_envelope(), Err(too_large.clone()));
        assert_eq!(decoder.finish(), Err(too_large));
        assert_eq!(decoder.buffered(), 0);
        let mut exact = EnvelopeDecoder::with_max_message_size(4);
        exact.push(&encode_envelope(0, b"four"));
        assert_eq!(
            exact
                .next_envelope()
                .expect("fits")
                .map(|e| e.payload.len()),
            Some(4)
        );
    }

    #[test]
    fn a_partial_envelope_at_the_end_is_truncated() {
        let mut decoder = EnvelopeDecoder::new();
        decoder.push(b"\x00\x00\x00\x00\x03ab");
        assert_eq!(decoder.next_envelope(), Ok(None));
        assert_eq!(
            decoder.finish(),
            Err(EnvelopeError::Truncated { buffered: 7 })
        );
        assert_eq!(
            decode_all(b"\x00\x00", 1),
            Err(EnvelopeError::Truncated { buffered: 2 })
        );
    }

    #[test]
    fn end_stream_is_json_with_the_error() {
        let e = ConnectError::new(Code::NotFound, "no such process");
        let frame = end_stream(Some(&e));
        assert_eq!(frame[0], END_STREAM);
        assert_eq!(
            &frame[5..],
            br#"{"error":{"code":"not_found","message":"no such process"}}"#
        );
        assert_eq!(
            u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
            frame.len() - 5
        );
    }
}
