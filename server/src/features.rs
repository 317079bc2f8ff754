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

fn feature_error(e: FeatureError) -> ApiError {
    match e {
        FeatureError::Request(m) => ApiError::bad_request(m),
        FeatureError::Definition(_) => ApiError::internal(e.to_string()),
        FeatureError::Store(_) => ApiError::unavailable(e.to_string()),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn store(state: &AppState) -> Result<Arc<FeatureStore>, ApiError> {
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

/// Parses the body, resolves the corridor, and runs `op` on the store off the async threads.
async fn call<Req, Out>(
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    op: fn(&FeatureStore, &str, &Req, i64) -> Result<Out, FeatureError>,
) -> Result<Json<Value>, ApiError>
where
    Req: serde::de::DeserializeOwned + Send + 'static,
    Out: serde::Serialize + Send + 'static,
{
    let store = store(&state)?;
    let corridor = crate::v2::corridor_of(&state, &headers, &serde_json::Map::new())?;
    let request: Req = parse(&state, body)?;
    let reply = tokio::task::spawn_blocking(move || op(&store, corridor.as_str(), &request, now_ms()))
        .await
        .map_err(|e| ApiError::internal(format!("feature store task failed: {e}")))?
        .map_err(feature_error)?;
    serde_json::to_value(reply)
        .map(Json)
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn get_online(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    call::<GetOnlineRequest, _>(state, headers, body, FeatureStore::get_online).await
}

async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    call::<PushRequest, _>(state, headers, body, FeatureStore::push).await
}
