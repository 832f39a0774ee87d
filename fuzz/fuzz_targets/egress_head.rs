//! The egress proxy's request head, sent by a possibly hostile guest:
//! `tvm_egress::parse_head`. Besides never panicking, an accepted head must fit both the
//! buffer and the 16 KiB cap, parse the same from its own bytes alone (a byte short of
//! it asks for more), and a rewritten plain-HTTP head must be a well-formed request in
//! origin-form that ends with `Connection: close`.
#![no_main]

use tvm_egress::{parse_head, Head, HeadError};

/// The head size `parse_head` refuses beyond.
const MAX_HEAD: usize = 16 * 1024;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(Some((head, used))) = parse_head(data) else {
        return;
    };
    assert!(used > 0 && used <= data.len() && used <= MAX_HEAD, "{used}");
    assert_eq!(parse_head(&data[..used]), Ok(Some((head.clone(), used))));
    assert_eq!(parse_head(&data[..used - 1]), Ok(None));
    assert_ne!(head.target().port, 0);
    if let Head::Forward { request, .. } = &head {
        assert!(request.ends_with(b"\r\nConnection: close\r\n\r\n"));
        // Few lines (so few headers) and well under the cap: it must parse again, as
        // the origin-form request the proxy refuses from a guest.
        let lines = request.iter().filter(|&&b| b == b'\n').count();
        if request.len() < MAX_HEAD / 2 && lines < 90 {
            assert_eq!(parse_head(request), Err(HeadError::OriginForm));
        }
    }
});
