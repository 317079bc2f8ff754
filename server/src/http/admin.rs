//! Admin API (`/admin/v1`): the model registry's state, lifecycle transitions, load and
//! unload at run time (all through the serving core's control plane), and `/metrics` in the
//! Prometheus text format.

use crate::http::error::Path;
use crate::http::error::{parse_json, ApiError};
use crate::http::{authorize, body_of, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use invariant_auth::Role;
use invariant_core::CorridorId;
use invariant_registry::lifecycle::Action;
use invariant_serving::auth::check;
use invariant_serving::auth::Need;
use invariant_serving::control::model_view;
use invariant_serving::ServeError;
use serde::Deserialize;
use serde_json::{json, Value};

/// The admin routes and `/metrics`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/v1/models", get(list))
        .route("/admin/v1/models/{model}", get(show))
        .route("/admin/v1/models/{model}/load", post(load_model))
        .route("/admin/v1/models/{model}/versions/{version}/{action}", post(act))
}

#[utoipa::path(get, path = "/metrics", tag = "admin", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), crate::http::openapi::Errors))]
pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers, Need::Everywhere(Role::Metrics)) {
        return e.into_response();
    }
    match state.render_metrics() {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => ApiError::from(ServeError::unavailable(
            "metrics recorder not installed in this process",
        ))
        .into_response(),
    }
}

#[utoipa::path(get, path = "/admin/v1/models", tag = "admin", responses((status = 200, description = "every model's registry view", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::Everywhere(Role::Admin))?;
    let snapshot = state.snapshot();
    let models: Vec<Value> = snapshot
        .table
        .names()
        .filter_map(|m| model_view(&snapshot, m))
        .collect();
    Ok(Json(
        json!({ "revision": snapshot.registry.revision, "control": state.control_status(), "models": models }),
    ))
}

#[utoipa::path(get, path = "/admin/v1/models/{model}", tag = "admin", params(("model" = String, Path, description = "model name")), responses((status = 200, description = "the model's registry view", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::Everywhere(Role::Admin))?;
    model_view(&state.snapshot(), &model)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("unknown model '{model}'")))
}

/// `POST /admin/v1/models/{model}/load`: the repository extension's load, under the admin API.
#[utoipa::path(post, path = "/admin/v1/models/{model}/load", tag = "admin", params(("model" = String, Path, description = "model name")), responses((status = 200, description = "every version ready", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn load_model(
    state: State<AppState>,
    headers: HeaderMap,
    model: Path<String>,
) -> Result<axum::response::Response, ApiError> {
    crate::http::repository::load(state, headers, model).await
}

/// Body of a transition request; every field optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    corridors: Vec<String>,
}

/// `POST /admin/v1/models/{model}/versions/{version}/{stage|canary|promote|rollback|deprecate|unload}`.
#[utoipa::path(post, path = "/admin/v1/models/{model}/versions/{version}/{action}", tag = "admin", params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version"), ("action" = String, Path, description = "stage, canary, promote, rollback, deprecate or unload")), request_body(content = crate::http::openapi::Object, description = "reason, percent, corridors", content_type = "application/json"), responses((status = 200, description = "the transition and the model's view", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn act(
    state: State<AppState>,
    Path((model, version, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    transition(state, model, version, action, headers, body).await
}

/// `POST /admin/v1/pipelines/{pipeline}/versions/{version}/{stage|canary|promote|rollback|deprecate}`:
/// a pipeline's lifecycle, in the model registry under `pipelines/<name>`.
#[utoipa::path(post, path = "/admin/v1/pipelines/{pipeline}/versions/{version}/{action}", tag = "advisory", params(("pipeline" = String, Path, description = "pipeline name"), ("version" = String, Path, description = "pipeline version"), ("action" = String, Path, description = "stage, canary, promote, rollback or deprecate")), request_body(content = crate::http::openapi::Object, description = "reason, percent, corridors", content_type = "application/json"), responses((status = 200, description = "the transition and the pipeline's versions", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn act_pipeline(
    state: State<AppState>,
    Path((pipeline, version, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if action == "unload" {
        return Err(ApiError::not_found(
            "unknown action 'unload' for a pipeline (stage, canary, promote, rollback, deprecate)",
        ));
    }
    let subject = invariant_serving::advisory::subject(&pipeline);
    transition(state, subject, version, action, headers, body).await
}

/// One transition of a model or (`pipelines/<name>`) a pipeline.
async fn transition(
    State(state): State<AppState>,
    model: String,
    version: String,
    action: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Authenticated before the body is read; authorised once the corridors it names are known.
    let caller = authorize(&state, &headers, Need::AnyKey)?;
    let body = body_of(&state, &headers, body).await?;
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        parse_json(&body)?
    };
    let actor = caller.id();
    let reason = body.reason.clone().unwrap_or_default();
    // Scoped actions need the admin role in each corridor they name; the others reach every
    // corridor.
    let scoped = matches!(action.as_str(), "promote" | "rollback" | "canary") && !body.corridors.is_empty();
    if !scoped {
        check(&caller, Need::Everywhere(Role::Admin))?;
    }
    let mut corridors = Vec::with_capacity(body.corridors.len());
    for (i, c) in body.corridors.iter().enumerate() {
        let id = CorridorId::parse(c).map_err(|e| ApiError::bad_request(format!("corridors[{i}]: {e}")))?;
        check(&caller, Need::In(Role::Admin, id.as_str()))?;
        if state.config.corridor(id.as_str()).is_none() {
            return Err(ApiError::bad_request(format!(
                "corridors[{i}]: unknown corridor '{id}'"
            )));
        }
        corridors.push(id.to_string());
    }
    let control = state.control();
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
        "unload" => {
            control.unload(&model, &version, actor, &reason).await?;
            let view = model_view(&state.snapshot(), &model);
            return Ok(Json(json!({ "unloaded": version, "model": view })).into_response());
        }
        other => {
            return Err(ApiError::not_found(format!(
                "unknown action '{other}' (stage, canary, promote, rollback, deprecate, unload)"
            )))
        }
    };
    let transition = control.transition(&model, &version, action, actor, &reason).await?;
    if let Some(name) = model.strip_prefix(invariant_serving::advisory::SUBJECT_PREFIX) {
        let versions: Vec<Value> = state
            .pipelines()
            .views(&state.snapshot().registry)
            .into_iter()
            .filter(|v| v["name"] == name)
            .collect();
        return Ok(Json(json!({ "transition": transition, "pipeline": versions })).into_response());
    }
    let view = model_view(&state.snapshot(), &model);
    Ok(Json(json!({ "transition": transition, "model": view })).into_response())
}
