//! Connect's streaming envelopes as a client sends them: `EnvelopeDecoder` from
//! `pyrovm::api::e2b::connect`. The first byte picks the size limit and the second how
//! the rest is cut into chunks. Besides never panicking, the chunking must not change
//! what is decoded, an accepted envelope must respect the limit and its flags, and
//! re-encoding the envelopes must give back exactly the bytes they came from.
#![no_main]

use pyrovm::api::e2b::connect::{
    encode_envelope, Envelope, EnvelopeDecoder, EnvelopeError, COMPRESSED, END_STREAM,
};

/// Every envelope decoded, and how the input ended (`finish` after the last chunk).
fn decode<'a>(
    max: usize,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Vec<Envelope>, Result<(), EnvelopeError>) {
    let mut decoder = EnvelopeDecoder::with_max_message_size(max);
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_envelope() {
                Ok(Some(envelope)) => out.push(envelope),
                Ok(None) => break,
                Err(e) => {
                    // Sticky: the same error, whatever comes after.
                    decoder.push(b"\x00\x00\x00\x00\x00");
                    assert_eq!(decoder.next_envelope(), Err(e.clone()));
                    assert_eq!(decoder.finish(), Err(e.clone()));
                    return (out, Err(e));
                }
            }
        }
    }
    let end = decoder.finish();
    if end.is_ok() {
        assert_eq!(decoder.buffered(), 0);
    }
    (out, end)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [limit, cut, rest @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) * 4;
    let whole = decode(max, std::iter::once(rest));
    // Chunk lengths cycle through 1..=8 starting from `cut`, or one byte at a time.
    let mut sizes = (0..).map(|i| usize::from(cut.wrapping_add(i) % 8) + 1);
    let mut at = 0;
    let chunked = decode(
        max,
        std::iter::from_fn(|| {
            let n = sizes.next()?.min(rest.len() - at);
            let chunk = rest.get(at..at + n)?;
            at += n;
            (n > 0).then_some(chunk)
        }),
    );
    let bytewise = decode(max, rest.chunks(1));
    assert_eq!(whole, chunked);
    assert_eq!(whole, bytewise);

    let (envelopes, end) = whole;
    let mut again = Vec::new();
    for e in &envelopes {
        assert!(e.payload.len() <= max);
        assert_eq!(e.flags & COMPRESSED, 0);
        assert_eq!(e.flags & !END_STREAM, 0);
        again.extend_from_slice(&encode_envelope(e.flags, &e.payload));
    }
    assert!(rest.starts_with(&again));
    if end.is_ok() {
        assert_eq!(again.len(), rest.len());
    }
});
