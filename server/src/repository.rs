//! Model repository API (Triton's repository extension): the index of every version with
//! its state, and loading (or reloading) a model at run time without a restart.

use crate::error::ApiError;
use crate::models::VersionState;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// The repository routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{model}/load", post(load))
}

/// Every version with its state (`READY` or `FAILED` with the reason).
async fn index(State(state): State<AppState>) -> Json<Value> {
    let table = state.models.load();
    let rows: Vec<Value> = table
        .entries()
        .map(|(name, e)| match &e.state {
            VersionState::Ready(s) => json!({
                "name": name, "version": e.version, "state": "READY",
                "batch_invariant": s.batch_invariant, "verification_hash": s.verification_hash,
            }),
            VersionState::Failed { reason } => {
                json!({ "name": name, "version": e.version, "state": "FAILED", "reason": reason })
            }
        })
        .collect();
    Json(Value::Array(rows))
}

/// Re-reads `models/<model>/` and verifies new or changed versions, then swaps the routing
/// table atomically. In-flight requests finish on the instances they started with; a version
/// that fails verification never serves, and a serving version whose reload fails keeps
/// serving. 200 when every version is ready, 400 with the per-version outcome otherwise.
pub(crate) async fn load(State(state): State<AppState>, Path(model): Path<String>) -> Result<Response, ApiError> {
    if model.is_empty() || model.contains(['/', '\\']) || model.starts_with('.') {
        return Err(ApiError::bad_request(format!("invalid model name '{model}'")));
    }
    let root = state.config.model_repository.clone();
    if !root.join(&model).is_dir() {
        return Err(ApiError::not_found(format!(
            "model '{model}' is not in the repository {}",
            root.display()
        )));
    }
    let _one_at_a_time = state.reload_lock.lock().await;
    let worker = state.clone();
    let name = model.clone();
    let (table, outcomes) = tokio::task::spawn_blocking(move || {
        let current = worker.models.load_full();
        current.reload_model(&worker.config.model_repository, &name, &worker.loader())
    })
    .await
    .map_err(|e| ApiError::internal(format!("reload task failed: {e}")))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    state.set_models(Arc::new(table));
    crate::events::publish(&state, &model, "reload").await;
    let failed: Vec<_> = outcomes.iter().filter(|o| o.state == "FAILED").collect();
    let body = json!({ "model": model, "versions": outcomes });
    if failed.is_empty() {
        Ok((StatusCode::OK, Json(body)).into_response())
    } else {
        let reasons: Vec<String> = failed
            .iter()
            .map(|o| format!("{}: {}", o.version, o.error.as_deref().unwrap_or("failed")))
            .collect();
        let mut body = body;
        body["error"] = json!(format!("model '{model}': {}", reasons.join("; ")));
        Ok((StatusCode::BAD_REQUEST, Json(body)).into_response())
    }
}
