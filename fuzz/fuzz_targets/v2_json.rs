//! Fuzz target: `invariant_server::fuzz_entry::v2_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariant_server::fuzz_entry::v2_json(data));
