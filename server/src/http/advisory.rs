//! Advisory pipelines over HTTP: `POST /v1/advisory/{pipeline}` with
//! `{"facts": {...}, "entities": {"account_id": "a1"}, "version": "1.0.0"}` (entities and
//! version optional) in the corridor of `x-corridor`; `GET /v1/advisory`; the admin API's
//! reload and lifecycle transitions (`/admin/v1/pipelines/…`).
//! Every rule is the serving core's ([`invariant_serving::advisory`]); this module decodes,
//! calls and encodes.

use crate::http::error::{parse_json, ApiError, Path};
use crate::http::{body_of, metadata_of, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use invariant_auth::Role;
use invariant_serving::advisory::AdvisoryRequest;
use invariant_serving::auth::Need;
use serde_json::{json, Value};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/advisory", get(list))
        .route("/v1/advisory/{pipeline}", post(advise))
        .route("/admin/v1/pipelines/reload", post(reload))
        .route(
            "/admin/v1/pipelines/{pipeline}/versions/{version}/{action}",
            post(crate::http::admin::act_pipeline),
        )
}

/// Every pipeline version: verified (serves) or refused, with why, and its lifecycle.
#[utoipa::path(get, path = "/v1/advisory", tag = "advisory", responses((status = 200, description = "every pipeline version and whether it serves", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    crate::http::authorize(&state, &headers, Need::AnyKey)?;
    let rows = state.pipelines().views(&state.snapshot().registry);
    Ok(Json(json!({ "pipelines": rows })))
}

/// `POST /admin/v1/pipelines/reload`: re-read and verify every pipeline version.
#[utoipa::path(post, path = "/admin/v1/pipelines/reload", tag = "advisory", responses((status = 200, description = "every pipeline version after the reload", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn reload(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let caller = crate::http::authorize(&state, &headers, Need::Everywhere(Role::Admin))?;
    let rows = state.control().reload_pipelines(caller.id()).await?;
    Ok(Json(json!({ "pipelines": rows })))
}

/// The advisory of a pipeline for the request's facts.
#[utoipa::path(post, path = "/v1/advisory/{pipeline}", tag = "advisory", params(("pipeline" = String, Path, description = "pipeline name"), ("x-corridor" = Option<String>, Header, description = "corridor (else the default)")), request_body(content = crate::http::openapi::Object, description = "facts, and optionally the pipeline version", content_type = "application/json"), responses((status = 200, description = "the advisory", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn advise(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let metadata = metadata_of(&headers);
    // The caller first: a caller without a key learns nothing from the body's errors.
    state.authorize(&metadata, Need::AnyKey)?;
    let body = body_of(&state, &headers, body).await?;
    let request: AdvisoryRequest = parse_json(&body)?;
    Ok(Json(
        serde_json::to_value(state.advise(&metadata, &pipeline, request).await?)
            .map_err(|e| ApiError::from(invariant_serving::ServeError::internal(e.to_string())))?,
    ))
}
