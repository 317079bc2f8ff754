//! The transports of Invariant, and nothing else: HTTP ([`http`], axum: the V2 protocol with
//! JSON and binary tensors, admin, features, metrics) and gRPC ([`grpc`], tonic:
//! `inference.GRPCInferenceService`). Each decodes a request, calls the transport-free serving
//! core ([`invariant_serving::InferenceService`]), and encodes its answer; serving rules live
//! in the core, once. Both are served by one accept loop ([`listener`]) with the connection
//! limits and timeouts, over TLS when configured ([`tls`]). The `invariant` binary (`main.rs`) starts both and dispatches the
//! operator tools of `invariant-cli`.

pub mod fuzz_entry;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod request_id;
pub mod tls;

pub use http::{app, router};
