//! Admin API (`/admin/v1`): the model registry's state, lifecycle transitions, load and
//! unload at run time, and `/metrics` in the Prometheus text format.

use crate::error::ApiError;
use crate::lifecycle::TransitionError;
use crate::models::{ModelTable, VersionState};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use invariant_core::CorridorId;
use invariant_registry::lifecycle::{Action, LifecycleError, RegistryState};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The admin routes and `/metrics`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/v1/models", get(list))
        .route("/admin/v1/models/{model}", get(show))
        .route("/admin/v1/models/{model}/load", post(crate::repository::load))
        .route("/admin/v1/models/{model}/versions/{version}/{action}", post(act))
}

async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response(),
        None => ApiError::unavailable("metrics recorder not installed in this process").into_response(),
    }
}

/// One model's registry view: every version with lifecycle and verification state, the
/// routing (active, corridor overrides, canary, previous) and its transition history.
pub fn model_view(table: &ModelTable, registry: &RegistryState, model: &str) -> Option<Value> {
    let versions = table.versions(model)?;
    let default = table.default_version(model);
    let ready = |v: &str| crate::lifecycle::ready(table, model, v);
    let rows: Vec<Value> = versions
        .iter()
        .map(|e| {
            let (state, error, format) = match &e.state {
                VersionState::Ready(s) => ("READY", None, Some(s.model.manifest().format.platform())),
                VersionState::Failed { reason } => ("FAILED", Some(reason.clone()), None),
            };
            let lifecycle = match &e.state {
                VersionState::Ready(_) => registry.lifecycle(model, &e.version, default.as_deref()).to_string(),
                VersionState::Failed { .. } => "FAILED".to_string(),
            };
            json!({ "version": e.version, "lifecycle": lifecycle, "state": state, "platform": format, "error": error })
        })
        .collect();
    let routing = registry.models.get(model);
    let history: Vec<_> = registry.history.iter().filter(|t| t.model == model).collect();
    Some(json!({
        "name": model,
        "versions": rows,
        "active": registry.active(model, None, &ready, default.as_deref()),
        "corridor_active": routing.map(|r| json!(r.corridor_active)).unwrap_or(json!({})),
        "canary": routing.and_then(|r| r.canary.clone()),
        "previous": routing.map(|r| r.previous.clone()).unwrap_or_default(),
        "revision": registry.revision,
        "history": history,
    }))
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    let table = state.models.load();
    let registry = state.registry.load();
    let models: Vec<Value> = table.names().filter_map(|m| model_view(&table, &registry, m)).collect();
    Json(json!({ "revision": registry.revision, "models": models }))
}

async fn show(State(state): State<AppState>, Path(model): Path<String>) -> Result<Json<Value>, ApiError> {
    let table = state.models.load();
    let registry = state.registry.load();
    model_view(&table, &registry, &model)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("unknown model '{model}'")))
}

/// Body of a transition request; every field optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    corridors: Vec<String>,
}

fn transition_error(e: TransitionError) -> ApiError {
    match e {
        TransitionError::NotFound(m) => ApiError::not_found(m),
        TransitionError::Invalid(LifecycleError::File { .. }) => ApiError::internal(e.to_string()),
        TransitionError::Invalid(_) | TransitionError::Verification(_) => ApiError {
            status: StatusCode::CONFLICT,
            message: e.to_string(),
        },
    }
}

/// `POST /admin/v1/models/{model}/versions/{version}/{stage|canary|promote|rollback|deprecate|unload}`.
async fn act(
    State(state): State<AppState>,
    Path((model, version, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))?
    };
    let actor = body
        .actor
        .clone()
        .or_else(|| headers.get("x-actor").and_then(|v| v.to_str().ok()).map(str::to_string))
        .unwrap_or_else(|| "admin-api".into());
    let reason = body.reason.clone().unwrap_or_default();
    let mut corridors = Vec::with_capacity(body.corridors.len());
    for (i, c) in body.corridors.iter().enumerate() {
        let id = CorridorId::parse(c).map_err(|e| ApiError::bad_request(format!("corridors[{i}]: {e}")))?;
        if state.config.corridor(id.as_str()).is_none() {
            return Err(ApiError::bad_request(format!(
                "corridors[{i}]: unknown corridor '{id}'"
            )));
        }
        corridors.push(id.to_string());
    }
    let action = match action.as_str() {
        "stage" => Action::Stage,
        "deprecate" => Action::Deprecate,
        "promote" => Action::Promote { corridors },
        "rollback" => Action::Rollback { corridors },
        "canary" => Action::Canary {
            percent: body
                .percent
                .ok_or_else(|| ApiError::bad_request("percent: required for a canary, e.g. 5"))?,
            corridors,
        },
        "unload" => return unload(state, model, version, actor, reason).await,
        other => {
            return Err(ApiError::not_found(format!(
                "unknown action '{other}' (stage, canary, promote, rollback, deprecate, unload)"
            )))
        }
    };
    let _one_at_a_time = state.reload_lock.lock().await;
    let worker = state.clone();
    let (m, v) = (model.clone(), version.clone());
    let transition = tokio::task::spawn_blocking(move || worker.transition(&m, &v, &action, &actor, &reason))
        .await
        .map_err(|e| ApiError::internal(format!("transition task failed: {e}")))?
        .map_err(transition_error)?;
    crate::events::publish(&state, &model, "transition").await;
    let view = model_view(&state.models.load(), &state.registry.load(), &model);
    Ok(Json(json!({ "transition": transition, "model": view })).into_response())
}

/// Takes a version out of memory. Refused while it receives traffic (active or canary).
async fn unload(
    state: AppState,
    model: String,
    version: String,
    actor: String,
    reason: String,
) -> Result<Response, ApiError> {
    let _one_at_a_time = state.reload_lock.lock().await;
    let table = state.models.load_full();
    table
        .resolve(&model, Some(&version))
        .map_err(|_| ApiError::not_found(format!("model '{model}' has no loaded version '{version}'")))?;
    let registry = state.registry.load();
    let default = table.default_version(&model);
    let ready = |v: &str| crate::lifecycle::ready(&table, &model, v);
    let routing = registry.models.get(&model);
    let receives_traffic = registry.active(&model, None, &ready, default.as_deref()).as_deref()
        == Some(version.as_str())
        || routing.is_some_and(|r| {
            r.corridor_active.values().any(|v| *v == version) || r.canary.as_ref().is_some_and(|c| c.version == version)
        });
    if receives_traffic {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "cannot unload {model} {version}: it receives traffic; promote another version or roll it back first"
            ),
        });
    }
    let next = table.without_version(&model, &version, &format!("unloaded by {actor}: {reason}"));
    state.set_models(Arc::new(next));
    let record = json!({
        "event": "unload", "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "actor": actor, "model": model, "version": version, "reason": reason,
    });
    if let Err(e) = state.audit.append(&record) {
        tracing::error!(error = %e, "cannot write the unload audit record");
    }
    crate::events::publish(&state, &model, "reload").await;
    let view = model_view(&state.models.load(), &state.registry.load(), &model);
    Ok(Json(json!({ "unloaded": version, "model": view })).into_response())
}
