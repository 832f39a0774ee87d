//! What the agent decodes: `FrameCodec<HostMsg, GuestMsg>` and
//! `decode_payload::<HostMsg>`. The first byte picks where the stream is cut.
#![no_main]

use tvm_proto::{GuestMsg, HostMsg};

libfuzzer_sys::fuzz_target!(|data: &[u8]| tvm_fuzz::frames::<HostMsg, GuestMsg>(data));
