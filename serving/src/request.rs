//! What a transport hands the serving core and what it gets back: transport-neutral
//! requests, responses and the facts around them (corridor, routing key, deadline, caller).

use invariant_core::{CorridorId, Tensor};
use serde_json::{Map, Value};
use std::time::Duration;
use tokio::time::Instant;

/// The transport a request arrived on (a metrics label and an audit fact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// HTTP with JSON tensors.
    HttpJson,
    /// HTTP with Triton's binary tensor extension.
    HttpBinary,
    /// gRPC (`inference.GRPCInferenceService`).
    Grpc,
    /// A caller in the same process (tests, tools).
    InProcess,
}

impl Transport {
    /// `http_json`, `http_binary`, `grpc` or `in_process`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::HttpJson => "http_json",
            Transport::HttpBinary => "http_binary",
            Transport::Grpc => "grpc",
            Transport::InProcess => "in_process",
        }
    }
}

/// How the version answering a request was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Routing {
    /// The request named the version.
    Explicit,
    /// The model's active version (for the corridor).
    Active,
    /// The canary's share of traffic.
    Canary,
}

impl Routing {
    /// `explicit`, `active` or `canary`.
    pub fn name(self) -> &'static str {
        match self {
            Routing::Explicit => "explicit",
            Routing::Active => "active",
            Routing::Canary => "canary",
        }
    }

    /// The routing named by the registry's route reason.
    pub(crate) fn from_reason(reason: &str) -> Self {
        if reason == "canary" {
            Routing::Canary
        } else {
            Routing::Active
        }
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Computed by an engine run for this request.
    Computed,
    /// The corridor's in-process inference cache (or a concurrent identical request).
    L1,
    /// The corridor's Redis.
    L2,
    /// A transport's stored reply to the identical request.
    Reply,
    /// A declared fallback (features from defaults).
    Fallback,
}

impl Source {
    /// `computed`, `l1`, `l2`, `reply` or `fallback`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Computed => "computed",
            Source::L1 => "l1",
            Source::L2 => "l2",
            Source::Reply => "reply",
            Source::Fallback => "fallback",
        }
    }

    /// True unless computed for this request.
    pub fn cached(self) -> bool {
        matches!(self, Source::L1 | Source::L2 | Source::Reply)
    }
}

/// Request facts that every transport carries the same way: HTTP headers `authorization`,
/// `x-corridor`, `x-routing-key`, `x-deadline-ms`, or the gRPC metadata keys of the same names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The corridor named outside the body.
    pub corridor: Option<String>,
    /// The routing key named outside the body.
    pub routing_key: Option<Vec<u8>>,
    /// The deadline in milliseconds, as sent (checked by the core).
    pub deadline_ms: Option<String>,
    /// A deadline set by the transport itself (e.g. gRPC's `grpc-timeout`).
    pub timeout: Option<Duration>,
    /// The credential as sent (`Bearer <key>`), checked by the core.
    pub authorization: Option<String>,
    /// The request id the transport gave the request (`x-request-id`, else a `traceparent`'s
    /// trace id, else generated), for audit records.
    pub request_id: Option<String>,
}

/// Which model a request is for, and the facts known before its body is decoded.
#[derive(Debug, Clone)]
pub struct Target {
    /// Model name.
    pub model: String,
    /// A named version; `None` routes by the registry.
    pub version: Option<String>,
    /// Corridor, routing key, deadline.
    pub metadata: Metadata,
    /// The transport.
    pub transport: Transport,
    /// When the request arrived (deadlines and latencies count from here).
    pub started: Instant,
}

impl Target {
    /// A target for `model` (and `version`) arriving now.
    pub fn new(model: impl Into<String>, version: Option<String>, transport: Transport) -> Self {
        Self {
            model: model.into(),
            version,
            metadata: Metadata::default(),
            transport,
            started: Instant::now(),
        }
    }
}

/// A decoded inference body.
#[derive(Debug, Clone, Default)]
pub struct InferBody {
    /// Request id, echoed in the response.
    pub id: Option<String>,
    /// Request parameters (`corridor`, `routing_key`, `entities`, `return_features`, others
    /// ignored), as JSON values whatever the transport.
    pub parameters: Map<String, Value>,
    /// Input tensors (may leave out inputs filled from the feature store).
    pub inputs: Vec<Tensor>,
    /// Requested outputs by name, in order; empty: every output in signature order.
    pub outputs: Vec<String>,
}

/// An answer.
#[derive(Debug, Clone)]
pub struct InferResponse {
    /// Model name.
    pub model: String,
    /// The version that answered.
    pub version: String,
    /// The request's id.
    pub id: Option<String>,
    /// The corridor that answered.
    pub corridor: CorridorId,
    /// Where the version runs.
    pub device: invariant_gpu::Device,
    /// How the version was chosen.
    pub routing: Routing,
    /// Where the outputs came from.
    pub source: Source,
    /// The inference cache key (blake3 hex).
    pub cache_key: String,
    /// Output tensors, in the requested order.
    pub outputs: Vec<Tensor>,
    /// The feature values used, when the request asked (`parameters.return_features`).
    pub features: Option<Value>,
    /// How and why the answer is degraded, when it is.
    pub degraded: Option<Degraded>,
    /// How long a transport may keep this exact reply for an identical request; `None` when
    /// it must not (caching off, or built from feature-store values that can change).
    pub reply_ttl: Option<Duration>,
}

/// A degraded answer: where it came from instead of the model, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    /// `cache` (the cached answer for the same input, served by a fallback) or
    /// `feature-defaults` (computed from the features' declared defaults).
    pub source: &'static str,
    /// Why.
    pub reason: String,
}
