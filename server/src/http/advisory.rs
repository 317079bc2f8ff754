//! Advisory pipelines over HTTP: `POST /v1/advisory/{pipeline}` with
//! `{"facts": {...}, "version": "1.0.0"}` (version optional) in the corridor of `x-corridor`.
//! Every rule is the serving core's ([`invariant_serving::advisory`]); this module decodes,
//! calls and encodes.

use crate::http::error::{parse_json, ApiError, Path};
use crate::http::{body_of, metadata_of, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use invariant_serving::advisory::AdvisoryRequest;
use invariant_serving::auth::Need;
use serde_json::{json, Value};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/advisory", get(list))
        .route("/v1/advisory/{pipeline}", post(advise))
}

/// Every pipeline version: verified (serves) or refused, with why.
#[utoipa::path(get, path = "/v1/advisory", tag = "advisory", responses((status = 200, description = "every pipeline version and whether it serves", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    crate::http::authorize(&state, &headers, Need::AnyKey)?;
    let rows: Vec<Value> = state
        .pipelines
        .get()
        .map(|p| {
            p.versions
                .iter()
                .flat_map(|(name, versions)| {
                    versions.iter().map(move |e| {
                        json!({
                            "name": name,
                            "version": e.version.to_string(),
                            "state": if e.pipeline.is_some() { "READY" } else { "FAILED" },
                            "error": e.error,
                            "content_hash": e.pipeline.as_ref().map(|p| p.content_hash.clone()),
                            "models": e.pipeline.as_ref().map(|p| p.steps.iter().map(|s| json!({"name": s.name, "model": s.model, "version": s.version})).collect::<Vec<_>>()),
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default();
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
    Ok(Json(state.advise(&metadata, &pipeline, request).await?))
}
