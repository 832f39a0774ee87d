//! `POST /api/v2/execute` bodies: the Piston request, `pyrovm::piston::to_request`,
//! then `validate`. See `tvm_fuzz::piston_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tvm_fuzz::piston_request(data));
