//! `invariant.advisory.v1.AdvisoryService` (`proto/advisory.proto`): the advisory of a pipeline
//! over gRPC. It decodes the typed facts and entity keys into the request the HTTP route
//! decodes from JSON, calls the same serving core ([`InferenceService::advise`]), and encodes
//! the answer, so one request gives one advisory hash on either transport.

/// The generated protocol types and service trait.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("invariant.advisory.v1");
}

use super::{metadata_of, status_of};
use invariant_serving::advisory::{AdvisoryReply, AdvisoryRequest};
use invariant_serving::{InferenceService, ServeError};
use proto::advisory_service_server::{AdvisoryService, AdvisoryServiceServer};
use proto::{entity_key, fact_value, AdviseRequest, AdviseResponse, EntityKey, FactValue, FeatureUsed, ModelUsed};
use serde_json::Value;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The advisory service over one serving core.
#[derive(Debug, Clone)]
pub struct Advisory {
    service: Arc<InferenceService>,
}

/// The tonic service to mount, with message limits from `server.max_body_bytes`.
pub fn service(service: Arc<InferenceService>) -> AdvisoryServiceServer<Advisory> {
    let limit = service.config.server.max_body_bytes;
    AdvisoryServiceServer::new(Advisory { service })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

/// A fact as JSON (the shape the core checks against the pipeline's declaration).
fn fact_json(name: &str, v: &FactValue) -> Result<Value, ServeError> {
    match &v.kind {
        Some(fact_value::Kind::Number(x)) => serde_json::Number::from_f64(*x)
            .map(Value::Number)
            .ok_or_else(|| ServeError::invalid(format!("facts.{name}: not a finite number"))),
        Some(fact_value::Kind::Flag(b)) => Ok(Value::Bool(*b)),
        Some(fact_value::Kind::Text(s)) => Ok(Value::String(s.clone())),
        None => Err(ServeError::invalid(format!(
            "facts.{name}: no value (set number, flag or text)"
        ))),
    }
}

fn key_json(name: &str, k: &EntityKey) -> Result<Value, ServeError> {
    match &k.kind {
        Some(entity_key::Kind::Text(s)) => Ok(Value::String(s.clone())),
        Some(entity_key::Kind::Integer(i)) => Ok(Value::from(*i)),
        None => Err(ServeError::invalid(format!(
            "entities.{name}: no key (set text or integer)"
        ))),
    }
}

/// The request the core takes.
pub fn decode(request: &AdviseRequest) -> Result<AdvisoryRequest, ServeError> {
    let mut out = AdvisoryRequest {
        version: (!request.version.is_empty()).then(|| request.version.clone()),
        ..AdvisoryRequest::default()
    };
    // Sorted, whatever order the map arrived in.
    let mut facts: Vec<_> = request.facts.iter().collect();
    facts.sort_by(|a, b| a.0.cmp(b.0));
    for (name, v) in facts {
        out.facts.insert(name.clone(), fact_json(name, v)?);
    }
    for (name, k) in &request.entities {
        out.entities.insert(name.clone(), key_json(name, k)?);
    }
    Ok(out)
}

fn fact_value(v: &Value) -> Option<FactValue> {
    let kind = match v {
        Value::Number(n) => fact_value::Kind::Number(n.as_f64()?),
        Value::Bool(b) => fact_value::Kind::Flag(*b),
        Value::String(s) => fact_value::Kind::Text(s.clone()),
        _ => return None,
    };
    Some(FactValue { kind: Some(kind) })
}

/// A serde-named enum's name (`auto_clear`, `P1`, `models`).
fn name_of(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The answer as the message.
pub fn encode(r: AdvisoryReply) -> AdviseResponse {
    let a = r.advisory;
    AdviseResponse {
        corridor: r.corridor,
        pipeline: a.pipeline,
        version: a.version,
        routing: r.routing.to_string(),
        recommendation: name_of(&a.recommendation),
        priority: a.priority.map(|p| p.name().to_string()).unwrap_or_default(),
        reason_codes: a.reason_codes,
        scores: a.scores.into_iter().collect(),
        source: name_of(&a.source),
        advisory_hash: a.advisory_hash,
        models: r
            .models
            .into_iter()
            .map(|m| ModelUsed {
                name: m.name,
                model: m.model,
                version: m.version,
            })
            .collect(),
        features: r
            .features
            .into_iter()
            .map(|f| FeatureUsed {
                value: fact_value(&f.value),
                service: f.service,
                feature: f.feature,
                status: f.status,
                used: f.used.to_string(),
            })
            .collect(),
        degraded: r.degraded.unwrap_or_default(),
        cached: r.cached,
        review_item: r.review_item.unwrap_or_default(),
        review_error: r.review_error.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl AdvisoryService for Advisory {
    async fn advise(&self, request: Request<AdviseRequest>) -> Result<Response<AdviseResponse>, Status> {
        let metadata = metadata_of(request.metadata());
        // The caller first: a caller without a key learns nothing from the message's errors.
        self.service
            .authorize(&metadata, invariant_serving::auth::Need::AnyKey)
            .map_err(status_of)?;
        let message = request.into_inner();
        let decoded = decode(&message).map_err(status_of)?;
        let reply = self
            .service
            .advise(&metadata, &message.pipeline, decoded)
            .await
            .map_err(status_of)?;
        Ok(Response::new(encode(reply)))
    }
}
