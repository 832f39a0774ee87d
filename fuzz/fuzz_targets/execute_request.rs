//! `POST /v1/execute` bodies: `tvm_api::parse_execute`, then `validate` against the
//! builtin language table and the default bounds. See `tvm_fuzz::execute_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tvm_fuzz::execute_request(data));
