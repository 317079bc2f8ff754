//! Feature store API (Feast-compatible shapes): `POST /v1/features/get-online` and
//! `POST /v1/features/push`, both in the request's corridor (`x-corridor` header, else the
//! default corridor), served by the serving core. See `docs/features.md`.

use crate::http::error::{parse_json, ApiError};
use crate::http::{body_of, AppState, CORRIDOR_HEADER};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use invariant_core::CorridorId;
use serde_json::Value;

/// The feature routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/features/get-online", post(get_online))
        .route("/v1/features/push", post(push))
}

fn corridor(state: &AppState, headers: &HeaderMap) -> Result<CorridorId, ApiError> {
    let named = headers
        .get(CORRIDOR_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    Ok(state.corridor_of(named.as_deref(), &serde_json::Map::new())?)
}

fn json<T: serde::Serialize>(value: T) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| ApiError::from(invariant_serving::ServeError::internal(e.to_string())))
}

async fn get_online(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    state.feature_store()?;
    let corridor = corridor(&state, &headers)?;
    let body = body_of(&state, &headers, body).await?;
    let reply = state.get_online_features(&corridor, parse_json(&body)?).await?;
    json(reply)
}

async fn push(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    state.feature_store()?;
    let corridor = corridor(&state, &headers)?;
    let body = body_of(&state, &headers, body).await?;
    let reply = state.push_features(&corridor, parse_json(&body)?).await?;
    json(reply)
}
