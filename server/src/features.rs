//! Feature store API (Feast-compatible shapes): `POST /v1/features/get-online` and
//! `POST /v1/features/push`, both in the request's corridor (`x-corridor` header, else the
//! default corridor). See `docs/features.md`.

use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use invariant_featurestore::{FeatureError, FeatureStore, GetOnlineRequest, PushRequest};
use serde_json::Value;
use std::sync::Arc;

/// The feature routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/features/get-online", post(get_online))
        .route("/v1/features/push", post(push))
}

pub(crate) fn feature_error(e: FeatureError) -> ApiError {
    match e {
        FeatureError::Request(m) => ApiError::bad_request(m),
        FeatureError::Definition(_) => ApiError::internal(e.to_string()),
        FeatureError::Store(_) => ApiError::unavailable(e.to_string()),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn store(state: &AppState) -> Result<Arc<FeatureStore>, ApiError> {
    match &state.features {
        Ok(s) => Ok(s.clone()),
        Err(why) => Err(ApiError::unavailable(format!(
            "the feature store is not available: {why}"
        ))),
    }
}

fn parse<T: serde::de::DeserializeOwned>(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|r| crate::v2::body_error(r, state.config.server.max_body_bytes))?;
    crate::error::parse_json(&body)
}

/// Freshness of reads: the age of the oldest value served as PRESENT, per view and corridor.
fn observe_read(_: &AppState, corridor: &str, reply: &invariant_featurestore::GetOnlineResponse) {
    let now = now_ms();
    for (view, oldest) in &reply.oldest_served {
        if let Some(oldest) = oldest {
            metrics::histogram!("invariant_feature_served_age_seconds", "view" => view.clone(), "corridor" => corridor.to_string())
                .record((now - oldest).max(0) as f64 / 1000.0);
        }
    }
}

/// Freshness of writes: the newest event time stored, per view and corridor.
fn observe_push(state: &AppState, corridor: &str, outcome: &invariant_featurestore::PushOutcome) {
    let (view, Some(newest)) = &outcome.newest_written else {
        return;
    };
    let mut seen = state.feature_freshness.lock().unwrap_or_else(|p| p.into_inner());
    let slot = seen.entry((corridor.to_string(), view.clone())).or_insert(i64::MIN);
    if *newest > *slot {
        *slot = *newest;
        metrics::gauge!("invariant_feature_newest_event_timestamp_seconds", "view" => view.clone(), "corridor" => corridor.to_string())
            .set(*newest as f64 / 1000.0);
    }
}

/// A reply made of the service's declared defaults, every value flagged `UNAVAILABLE`.
fn defaults_reply(
    store: &FeatureStore,
    service: &str,
    entities: &std::collections::BTreeMap<String, Vec<Value>>,
) -> Result<invariant_featurestore::GetOnlineResponse, ApiError> {
    use invariant_featurestore::{FeatureColumn, GetOnlineResponse, Metadata};
    let refs = store
        .defs
        .service(service)
        .ok_or_else(|| ApiError::unavailable(format!("feature service '{service}' is not defined")))?
        .features
        .clone();
    let resolved = store.defs.resolve(&refs).map_err(feature_error)?;
    let (join_key, keys) = entities
        .iter()
        .next()
        .ok_or_else(|| ApiError::bad_request("parameters.entities: give one join key with its entity keys"))?;
    let n = keys.len();
    let mut names = vec![join_key.clone()];
    let mut results = vec![FeatureColumn {
        values: keys.clone(),
        statuses: vec!["PRESENT"; n],
        event_timestamps: vec![String::new(); n],
    }];
    for r in resolved {
        let feature = &store.defs.views[r.view].features[r.feature];
        names.push(feature.name.clone());
        results.push(FeatureColumn {
            values: vec![feature.default.clone().unwrap_or(Value::Null); n],
            statuses: vec!["UNAVAILABLE"; n],
            event_timestamps: vec![String::new(); n],
        });
    }
    Ok(GetOnlineResponse {
        metadata: Metadata { feature_names: names },
        results,
        oldest_served: Vec::new(),
    })
}

/// Fills the inputs of `manifest` bound to a feature service and left out of the request from
/// the feature store of `corridor`, for the entities in `parameters.entities`. Returns the
/// features used (names, values, statuses per entity), or `None` when the request names no
/// entities.
pub(crate) async fn enrich(
    state: &AppState,
    corridor: &str,
    manifest: &invariant_registry::Manifest,
    parameters: &serde_json::Map<String, Value>,
    inputs: &mut Vec<invariant_core::Tensor>,
    degraded: &mut Option<String>,
) -> Result<Option<Value>, ApiError> {
    let Some(entities) = parameters.get("entities") else {
        return Ok(None);
    };
    let entities: std::collections::BTreeMap<String, Vec<Value>> = serde_json::from_value(entities.clone())
        .map_err(|e| ApiError::bad_request(format!("parameters.entities: {e}")))?;
    let bound: Vec<&invariant_registry::TensorSpec> = manifest
        .inputs
        .iter()
        .filter(|s| s.feature_service.is_some() && !inputs.iter().any(|t| t.name == s.name))
        .collect();
    if bound.is_empty() {
        return Err(ApiError::bad_request(format!(
            "parameters.entities: model '{}' has no input bound to a feature service that the request leaves out",
            manifest.name
        )));
    }
    let store = store(state)?;
    let mut used = Vec::new();
    for spec in bound {
        let service = spec.feature_service.clone().unwrap_or_default();
        let request = GetOnlineRequest {
            features: None,
            feature_service: Some(service.clone()),
            entities: entities.clone(),
            full_feature_names: false,
        };
        let (s, c) = (store.clone(), corridor.to_string());
        let read = tokio::task::spawn_blocking(move || s.get_online(&c, &request, now_ms()))
            .await
            .map_err(|e| ApiError::internal(format!("feature read failed: {e}")))?;
        let reply = match read {
            Err(FeatureError::Store(why))
                if manifest.inference.feature_fallback == Some(invariant_registry::FeatureFallback::Defaults) =>
            {
                tracing::warn!(model = %manifest.name, %why, "feature store unavailable: answering from defaults");
                *degraded = Some(format!(
                    "feature store unavailable ({why}); features are the declared defaults"
                ));
                defaults_reply(&store, &service, &entities)?
            }
            other => other.map_err(feature_error)?,
        };
        observe_read(state, corridor, &reply);
        let width = reply.results.len().saturating_sub(1);
        if spec.shape.get(1).copied() != Some(width as i64) {
            return Err(ApiError::internal(format!(
                "input '{}' has {:?} columns but feature service '{service}' has {width} features",
                spec.name,
                spec.shape.get(1)
            )));
        }
        let rows = reply.results[0].values.len();
        let mut data = Vec::with_capacity(rows * width);
        for r in 0..rows {
            for column in &reply.results[1..] {
                let value = column.values[r].as_f64().ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "parameters.entities: feature '{}' of entity {} is {} and has no default",
                        reply.metadata.feature_names[1 + data.len() % width],
                        reply.results[0].values[r],
                        column.statuses[r]
                    ))
                })?;
                data.push(value as f32);
            }
        }
        let tensor = invariant_core::Tensor::new(
            spec.name.clone(),
            vec![rows, width],
            invariant_core::TensorData::Fp32(data),
            "parameters.entities",
        )?;
        inputs.push(tensor);
        used.push(serde_json::json!({
            "input": spec.name,
            "feature_service": service,
            "feature_names": reply.metadata.feature_names[1..],
            "values": reply.results[1..].iter().map(|c| &c.values).collect::<Vec<_>>(),
            "statuses": reply.results[1..].iter().map(|c| &c.statuses).collect::<Vec<_>>(),
        }));
    }
    Ok(Some(Value::Array(used)))
}

/// Parses the body, resolves the corridor, and runs `op` on the store off the async threads.
async fn call<Req, Out>(
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    op: fn(&FeatureStore, &str, &Req, i64) -> Result<Out, FeatureError>,
    observe: fn(&AppState, &str, &Out),
) -> Result<Json<Value>, ApiError>
where
    Req: serde::de::DeserializeOwned + Send + 'static,
    Out: serde::Serialize + Send + 'static,
{
    let store = store(&state)?;
    let corridor = crate::v2::corridor_of(&state, &headers, &serde_json::Map::new())?;
    let request: Req = parse(&state, body)?;
    let c = corridor.clone();
    let reply = tokio::task::spawn_blocking(move || op(&store, c.as_str(), &request, now_ms()))
        .await
        .map_err(|e| ApiError::internal(format!("feature store task failed: {e}")))?
        .map_err(feature_error)?;
    observe(&state, corridor.as_str(), &reply);
    serde_json::to_value(reply)
        .map(Json)
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn get_online(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    call::<GetOnlineRequest, _>(state, headers, body, FeatureStore::get_online, observe_read).await
}

async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    call::<PushRequest, _>(state, headers, body, FeatureStore::push, observe_push).await
}
