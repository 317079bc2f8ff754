//! Open Inference Protocol (KServe V2) over HTTP: health, server and model metadata,
//! readiness, inference with JSON or binary tensors, and Triton's model configuration and
//! statistics extensions. Each handler decodes, calls the serving core, and encodes.

use crate::http::binary::{self, OutputEncoding, HEADER_LENGTH};
use crate::http::error::ApiError;
use crate::http::error::Path;
use crate::http::reply_cache::{reply_slot, Started};
use crate::http::{authorize, body_of, error_response, json_reply, metadata_of, AppState};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use invariant_serving::auth::Need;
use invariant_serving::service::StoredReply;
use invariant_serving::{Target, Transport};
use serde_json::{json, Value};

/// The V2 routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(version_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(version_ready))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(version_config))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route("/v2/models/{model}/versions/{version}/stats", get(version_stats))
        .route("/v2/models/{model}/infer", post(infer_latest))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_version))
}

/// The protocol extensions this server implements (`GET /v2` and gRPC ServerMetadata).
pub const EXTENSIONS: [&str; 5] = [
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
];

#[utoipa::path(get, path = "/v2/health/live", tag = "health", security(()), responses((status = 200, description = "the process is up", body = crate::http::openapi::Live), crate::http::openapi::Errors))]
pub(crate) async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// Ready when every version receiving traffic is loaded and verified and every required
/// dependency answers; the body names what is not.
#[utoipa::path(get, path = "/v2/health/ready", tag = "health", security(()), responses((status = 200, description = "ready", body = invariant_serving::health::ServerReadiness), (status = 503, description = "not ready", body = invariant_serving::health::ServerReadiness), crate::http::openapi::Errors))]
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let r = state.server_health().await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!(r))).into_response()
}

#[utoipa::path(get, path = "/v2", tag = "v2", responses((status = 200, description = "server metadata", body = crate::http::openapi::ServerMetadata), crate::http::openapi::Errors))]
pub(crate) async fn server_metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::AnyKey)?;
    Ok(Json(json!({
        "name": "invariant",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    })))
}

#[utoipa::path(get, path = "/v2/models/{model}", tag = "v2", params(("model" = String, Path, description = "model name")), responses((status = 200, description = "model metadata", body = crate::http::openapi::ModelMetadata), crate::http::openapi::Errors))]
pub(crate) async fn model_metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::AnyKey)?;
    Ok(Json(state.metadata_json(&model, None)?))
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}", tag = "v2", params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version")), responses((status = 200, description = "version metadata", body = crate::http::openapi::ModelMetadata), crate::http::openapi::Errors))]
pub(crate) async fn version_metadata(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::AnyKey)?;
    Ok(Json(state.metadata_json(&model, Some(&version))?))
}

fn readiness(state: &AppState, headers: &HeaderMap, model: &str, version: Option<&str>) -> Response {
    if let Err(e) = authorize(state, headers, Need::AnyKey) {
        return e.into_response();
    }
    match state.readiness(model, version) {
        Ok(r) if r.ready => Json(json!({ "name": model, "version": r.version, "ready": true })).into_response(),
        Ok(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "name": model, "version": r.version, "ready": false, "error": r.error })),
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}

#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "v2", params(("model" = String, Path, description = "model name")), responses((status = 200, description = "ready", body = crate::http::openapi::ModelReady), (status = 503, description = "refused", body = crate::http::openapi::ModelReady), crate::http::openapi::Errors))]
pub(crate) async fn model_ready(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Response {
    readiness(&state, &headers, &model, None)
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/ready", tag = "v2", params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version")), responses((status = 200, description = "ready", body = crate::http::openapi::ModelReady), (status = 503, description = "refused", body = crate::http::openapi::ModelReady), crate::http::openapi::Errors))]
pub(crate) async fn version_ready(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    readiness(&state, &headers, &model, Some(&version))
}

#[utoipa::path(get, path = "/v2/models/{model}/config", tag = "v2", params(("model" = String, Path, description = "model name")), responses((status = 200, description = "Triton model configuration", body = invariant_serving::views::ModelConfig), crate::http::openapi::Errors))]
pub(crate) async fn model_config(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::AnyKey)?;
    Ok(Json(json!(state.model_config(&model, None)?)))
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/config", tag = "v2", params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version")), responses((status = 200, description = "Triton model configuration", body = invariant_serving::views::ModelConfig), crate::http::openapi::Errors))]
pub(crate) async fn version_config(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::AnyKey)?;
    Ok(Json(json!(state.model_config(&model, Some(&version))?)))
}

fn stats_reply(
    state: &AppState,
    headers: &HeaderMap,
    model: Option<&str>,
    version: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    authorize(state, headers, Need::AnyKey)?;
    Ok(Json(json!({ "model_stats": state.statistics(model, version)? })))
}

#[utoipa::path(get, path = "/v2/models/stats", tag = "v2", responses((status = 200, description = "statistics of every version", body = crate::http::openapi::Statistics), crate::http::openapi::Errors))]
pub(crate) async fn all_stats(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    stats_reply(&state, &headers, None, None)
}

#[utoipa::path(get, path = "/v2/models/{model}/stats", tag = "v2", params(("model" = String, Path, description = "model name")), responses((status = 200, description = "statistics", body = crate::http::openapi::Statistics), crate::http::openapi::Errors))]
pub(crate) async fn model_stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    stats_reply(&state, &headers, Some(&model), None)
}

#[utoipa::path(get, path = "/v2/models/{model}/versions/{version}/stats", tag = "v2", params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version")), responses((status = 200, description = "statistics", body = crate::http::openapi::Statistics), crate::http::openapi::Errors))]
pub(crate) async fn version_stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    stats_reply(&state, &headers, Some(&model), Some(&version))
}

#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "v2", params(("model" = String, Path, description = "model name"), ("x-corridor" = Option<String>, Header, description = "corridor (else parameters.corridor, else the default)"), ("x-routing-key" = Option<String>, Header, description = "routing key for canaries"), ("x-deadline-ms" = Option<String>, Header, description = "deadline in milliseconds")), request_body(content = crate::http::openapi::InferenceRequest, content_type = "application/json"), responses((status = 200, description = "the answer", body = crate::http::openapi::InferenceResponse), crate::http::openapi::Errors))]
pub(crate) async fn infer_latest(
    State(state): State<AppState>,
    Path(model): Path<String>,
    request: Request,
) -> Response {
    serve_infer(&state, model, None, request).await
}

#[utoipa::path(post, path = "/v2/models/{model}/versions/{version}/infer", tag = "v2", params(("model" = String, Path, description = "model name"), ("version" = String, Path, description = "model version"), ("x-corridor" = Option<String>, Header, description = "corridor (else parameters.corridor, else the default)"), ("x-routing-key" = Option<String>, Header, description = "routing key for canaries"), ("x-deadline-ms" = Option<String>, Header, description = "deadline in milliseconds")), request_body(content = crate::http::openapi::InferenceRequest, content_type = "application/json"), responses((status = 200, description = "the answer", body = crate::http::openapi::InferenceResponse), crate::http::openapi::Errors))]
pub(crate) async fn infer_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    serve_infer(&state, model, Some(version), request).await
}

/// Reads and decodes the body, runs it through the serving core, encodes the answer, and keeps
/// a plain JSON reply for the reply cache ([`crate::http::reply_cache::App`] answers repeats).
async fn serve_infer(state: &AppState, model: String, version: Option<String>, request: Request) -> Response {
    let started = request
        .extensions()
        .get::<Started>()
        .map_or_else(tokio::time::Instant::now, |s| s.0);
    let (parts, body) = request.into_parts();
    let body = match body_of(state, &parts.headers, body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let header_length = parts
        .headers
        .get(HEADER_LENGTH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let target = Target {
        model,
        version,
        metadata: metadata_of(&parts.headers),
        transport: transport_of(&parts.headers),
        started,
    };
    let mut encoding = OutputEncoding::default();
    let result = state
        .infer(target, || {
            let (decoded, wants) = binary::decode(&body, header_length.as_deref())?;
            encoding = wants;
            Ok(decoded)
        })
        .await;
    let response = match result {
        Ok(r) => r,
        Err(e) => return error_response(e),
    };
    let encoded = match binary::encode(&response, &encoding, response.source.cached()) {
        Ok(e) => e,
        Err(e) => return error_response(e),
    };
    // Kept for the identical request, when the core allows it and the request's reply-cache
    // identity names the corridor that answered (compressed bodies are not looked up).
    let cacheable = !parts.headers.contains_key(axum::http::header::CONTENT_ENCODING) && response.reply_ttl.is_some();
    if let Some(slot) = cacheable
        .then(|| reply_slot(state, parts.uri.path(), &parts.headers, &body))
        .flatten()
        .filter(|s| s.corridor == response.corridor.as_str())
    {
        if let Ok(stored) = binary::encode(&response, &encoding, true) {
            let reply = StoredReply {
                bytes: stored.body,
                header_length: stored.header_length,
            };
            state.store_reply(&response, slot.key, slot.request, reply).await;
        }
    }
    infer_reply(encoded.body, encoded.header_length)
}

/// The transport of an inference request: binary tensors when it names its JSON header's
/// length (`Inference-Header-Content-Length`), else JSON (whatever its outputs ask for).
pub(crate) fn transport_of(headers: &HeaderMap) -> Transport {
    if headers.contains_key(HEADER_LENGTH) {
        Transport::HttpBinary
    } else {
        Transport::HttpJson
    }
}

/// An inference reply: JSON, or a JSON header of `header_length` bytes followed by raw
/// tensors (Triton's binary tensor extension).
pub(crate) fn infer_reply(body: Bytes, header_length: Option<usize>) -> Response {
    let Some(n) = header_length else {
        return json_reply(body);
    };
    let mut reply = Response::new(axum::body::Body::from(body));
    let headers = reply.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(HEADER_LENGTH, HeaderValue::from(n));
    reply
}
