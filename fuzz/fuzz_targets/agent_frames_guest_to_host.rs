//! What the host decodes from a possibly hostile guest: `FrameCodec<GuestMsg, HostMsg>`
//! and `decode_payload::<GuestMsg>`. The first byte picks where the stream is cut.
#![no_main]

use tvm_proto::{GuestMsg, HostMsg};

libfuzzer_sys::fuzz_target!(|data: &[u8]| tvm_fuzz::frames::<GuestMsg, HostMsg>(data));
