//! Model repository API (Triton's repository extension): the index of every version with
//! its state, and loading (or reloading) a model at run time without a restart, through the
//! serving core's control plane.

use crate::http::error::ApiError;
use crate::http::error::Path;
use crate::http::{authorize, AppState};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use invariant_auth::Role;
use invariant_serving::auth::Need;
use serde_json::{json, Value};

/// The repository routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
}

/// Every version with its state (`READY` or `UNAVAILABLE` with the reason).
#[utoipa::path(post, path = "/v2/repository/index", tag = "repository", responses((status = 200, description = "every version and its state", body = Vec<invariant_serving::views::IndexRow>), crate::http::openapi::Errors))]
pub(crate) async fn index(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::Everywhere(Role::Admin))?;
    Ok(Json(json!(state.repository_index())))
}

/// Reloads `models/<model>/`: 200 when every version is ready, 400 with the per-version
/// outcome otherwise (the versions that serve keep serving).
#[utoipa::path(post, path = "/v2/repository/models/{model}/load", tag = "repository", params(("model" = String, Path, description = "model name")), responses((status = 200, description = "every version ready", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn load(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, Need::Everywhere(Role::Admin))?;
    let report = state.control().reload(&model, caller.id()).await?;
    let mut body = json!({ "model": model, "versions": report.versions });
    match report.failure(&model) {
        None => Ok((StatusCode::OK, Json(body)).into_response()),
        Some(why) => {
            body["error"] = json!(why);
            Ok((StatusCode::BAD_REQUEST, Json(body)).into_response())
        }
    }
}

/// Unloads every version of `model` (Triton's unload: the model stops serving until it is
/// loaded again).
#[utoipa::path(post, path = "/v2/repository/models/{model}/unload", tag = "repository", params(("model" = String, Path, description = "model name")), responses((status = 200, description = "unloaded", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn unload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&state, &headers, Need::Everywhere(Role::Admin))?;
    let unloaded = state.control().unload_model(&model, caller.id()).await?;
    Ok(Json(json!({ "model": model, "unloaded": unloaded })))
}
