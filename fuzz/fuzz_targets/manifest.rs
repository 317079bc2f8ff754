//! Fuzz target: `invariant_server::fuzz_entry::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariant_server::fuzz_entry::manifest(data));
