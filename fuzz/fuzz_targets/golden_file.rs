//! Fuzz target: `invariant_server::fuzz_entry::golden_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariant_server::fuzz_entry::golden_file(data));
