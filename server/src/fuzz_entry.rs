//! The inputs the server parses from the outside, as plain functions of bytes: the fuzz
//! targets (`fuzz/`, `bench/fuzz.sh`) and the regression test of every input a fuzzer ever
//! found (`server/tests/fuzz_regressions.rs`) call the same ones. Each must return (an answer
//! or a clean error) for any input: never panic, never hang, never allocate in proportion to
//! a size the input merely claims.

use std::path::Path;

/// A V2 JSON inference body.
pub fn v2_json(data: &[u8]) {
    let _ = crate::http::binary::decode(data, None);
}

/// A body of Triton's binary tensor extension: the first two bytes (little-endian) are the
/// `Inference-Header-Content-Length`, the rest is the body.
pub fn binary_tensors(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let header = u16::from_le_bytes([data[0], data[1]]).to_string();
    let _ = crate::http::binary::decode(&data[2..], Some(&header));
}

/// A gRPC `ModelInferRequest` message, converted to the core's request.
pub fn grpc_request(data: &[u8]) {
    use prost::Message;
    if let Ok(message) = crate::grpc::proto::ModelInferRequest::decode(data) {
        let _ = crate::grpc::decode(message);
    }
}

/// A model version's `manifest.toml`.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = invariant_registry::Manifest::parse(text, Path::new("fuzz/manifest.toml"));
    }
}

/// A golden vector file.
pub fn golden_file(data: &[u8]) {
    let _ = invariant_verify::GoldenFile::parse(
        data.to_vec(),
        Path::new("fuzz.jsonl"),
        &invariant_verify::GoldenLimits::default(),
    );
}

/// A feature repository file (entities, feature views, feature services).
pub fn feature_definitions(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = invariant_featurestore::defs::Definitions::parse(&[("fuzz.toml".to_string(), text.to_string())]);
    }
}

/// A target: its name and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name.
pub const TARGETS: [Target; 6] = [
    ("v2_json", v2_json),
    ("binary_tensors", binary_tensors),
    ("grpc_request", grpc_request),
    ("manifest", manifest),
    ("golden_file", golden_file),
    ("feature_definitions", feature_definitions),
];
