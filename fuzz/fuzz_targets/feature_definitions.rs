//! Fuzz target: `invariant_server::fuzz_entry::feature_definitions`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariant_server::fuzz_entry::feature_definitions(data));
