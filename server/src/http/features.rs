//! Feature store API (Feast-compatible shapes): `POST /v1/features/get-online` and
//! `POST /v1/features/push`, both in the request's corridor (`x-corridor` header, else the
//! default corridor), served by the serving core. See `docs/features.md`.

use crate::http::error::{parse_json, ApiError};
use crate::http::{body_of, metadata_of, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use invariant_auth::{Principal, Role};
use invariant_core::CorridorId;
use serde_json::Value;

/// The feature routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/features/get-online", post(get_online))
        .route("/v1/features/push", post(push))
}

/// The caller and the request's corridor (`x-corridor`, else the default), once its key has
/// `role` there.
fn corridor(state: &AppState, headers: &HeaderMap, role: Role) -> Result<(Principal, CorridorId), ApiError> {
    let metadata = metadata_of(headers);
    let caller = state.authenticate(&metadata)?;
    let corridor = state.corridor_for(&caller, role, metadata.corridor.as_deref(), &serde_json::Map::new())?;
    Ok((caller, corridor))
}

fn json<T: serde::Serialize>(value: T) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| ApiError::from(invariant_serving::ServeError::internal(e.to_string())))
}

#[utoipa::path(post, path = "/v1/features/get-online", tag = "features", params(("x-corridor" = Option<String>, Header, description = "corridor (else the default)")), request_body(content = crate::http::openapi::Object, description = "feature_service or features, entities", content_type = "application/json"), responses((status = 200, description = "values and statuses", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn get_online(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (_, corridor) = corridor(&state, &headers, Role::FeaturesRead)?;
    state.feature_store()?;
    let body = body_of(&state, &headers, body).await?;
    let reply = state.get_online_features(&corridor, parse_json(&body)?).await?;
    json(reply)
}

#[utoipa::path(post, path = "/v1/features/push", tag = "features", params(("x-corridor" = Option<String>, Header, description = "corridor (else the default)")), request_body(content = crate::http::openapi::Object, description = "feature_view, rows", content_type = "application/json"), responses((status = 200, description = "rows written and refused", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (caller, corridor) = corridor(&state, &headers, Role::FeaturesWrite)?;
    state.feature_store()?;
    let body = body_of(&state, &headers, body).await?;
    let reply = state.push_features(&corridor, parse_json(&body)?, caller.id()).await?;
    json(reply)
}
