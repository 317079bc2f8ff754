//! Open Inference Protocol (KServe V2) over HTTP: health, server and model metadata,
//! readiness and inference with JSON tensors.

use crate::error::ApiError;
use crate::models::{Lookup, ServingVersion, VersionState};
use crate::reply_cache::{reply_slot, ReplySlot, Started};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use invariant_core::json::parse_data;
use invariant_core::tensor::concrete_shape;
use invariant_core::{CorridorId, DataType, Tensor, TensorData};
use invariant_registry::TensorSpec;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Header naming the corridor of a request.
pub const CORRIDOR_HEADER: &str = "x-corridor";

/// Header carrying a request's deadline in milliseconds.
pub const DEADLINE_HEADER: &str = "x-deadline-ms";

/// Header carrying the routing key of a request (e.g. a user id).
pub const ROUTING_KEY_HEADER: &str = "x-routing-key";

/// The V2 routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(version_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(version_ready))
        .route("/v2/models/{model}/infer", post(infer_latest))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_version))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

/// Ready once the repository is loaded and at least one model version serves.
async fn ready(State(state): State<AppState>) -> Response {
    let (ready, failed) = state.models.load().counts();
    let status = if ready > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": ready > 0, "versions_ready": ready, "versions_failed": failed })),
    )
        .into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "invariant",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["parameters"],
    }))
}

fn lookup_error(model: &str, version: Option<&str>, lookup: Lookup) -> ApiError {
    match (lookup, version) {
        (Lookup::UnknownModel, _) => ApiError::not_found(format!("unknown model '{model}'")),
        (Lookup::UnknownVersion, Some(v)) => ApiError::not_found(format!("model '{model}' has no version '{v}'")),
        (Lookup::UnknownVersion, None) => ApiError::not_found(format!("unknown model '{model}'")),
        (Lookup::Failed(reason), Some(v)) => {
            ApiError::unavailable(format!("model '{model}' version '{v}' failed to load: {reason}"))
        }
        (Lookup::Failed(reason), None) => ApiError::unavailable(reason),
    }
}

/// A named version, or without one the model's active version.
fn resolve(state: &AppState, model: &str, version: Option<&str>) -> Result<Arc<ServingVersion>, ApiError> {
    let table = state.models.load();
    let active = version.is_none().then(|| {
        let ready = |v: &str| crate::lifecycle::ready(&table, model, v);
        state
            .registry
            .load()
            .active(model, None, &ready, table.default_version(model).as_deref())
    });
    if let Some(Some(active)) = active {
        return table
            .resolve(model, Some(&active))
            .map_err(|l| lookup_error(model, None, l));
    }
    state
        .models
        .load()
        .resolve(model, version)
        .map_err(|l| lookup_error(model, version, l))
}

#[derive(Serialize)]
struct SpecJson<'a> {
    name: &'a str,
    datatype: DataType,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    columns: Option<&'a [String]>,
}

fn specs_json(specs: &[TensorSpec]) -> Vec<SpecJson<'_>> {
    specs
        .iter()
        .map(|s| SpecJson {
            name: &s.name,
            datatype: s.datatype,
            shape: &s.shape,
            columns: s.columns.as_deref(),
        })
        .collect()
}

fn metadata(state: &AppState, serving: &ServingVersion) -> Value {
    let model = &serving.model;
    let m = model.manifest();
    let mut versions = Vec::new();
    let mut failed = Vec::new();
    let table = state.models.load();
    for e in table.versions(&m.name).unwrap_or_default() {
        match &e.state {
            VersionState::Ready(_) => versions.push(json!(e.version)),
            VersionState::Failed { reason } => failed.push(json!({ "version": e.version, "error": reason })),
        }
    }
    let runtime = model.runtime();
    json!({
        "name": m.name,
        "versions": versions,
        "platform": m.format.platform(),
        "inputs": specs_json(&m.inputs),
        "outputs": specs_json(&m.outputs),
        "version": m.version.to_string(),
        "description": m.description,
        "max_batch_size": m.inference.max_batch_size,
        "device": model.placement().device,
        "device_reason": model.placement().reason,
        "runtime": { "name": runtime.name, "version": runtime.version },
        "content_hash": model.content_hash(),
        "verification": {
            "golden_vectors": serving.golden_vectors,
            "golden_hash": serving.golden_hash,
            "verification_hash": serving.verification_hash,
            "batch_invariant": serving.batch_invariant,
            "rows_run": if serving.batch_invariant { "batched" } else { "one at a time (not batch-invariant)" },
        },
        "failed_versions": failed,
        "instances": instances_json(serving),
    })
}

/// Which instances serve the version: one per corridor with its session count (ONNX), or
/// one shared by every corridor (native: immutable weights, no sessions).
fn instances_json(serving: &ServingVersion) -> Value {
    if serving.corridor_models.is_empty() {
        return json!({ "per_corridor": false, "sessions": serving.model.sessions() });
    }
    let sessions: Map<String, Value> = serving
        .corridor_models
        .iter()
        .map(|(corridor, m)| (corridor.clone(), json!(m.sessions())))
        .collect();
    json!({ "per_corridor": true, "sessions": sessions })
}

async fn model_metadata(State(state): State<AppState>, Path(model): Path<String>) -> Result<Json<Value>, ApiError> {
    let m = resolve(&state, &model, None)?;
    Ok(Json(metadata(&state, &m)))
}

async fn version_metadata(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let m = resolve(&state, &model, Some(&version))?;
    Ok(Json(metadata(&state, &m)))
}

fn readiness(state: &AppState, model: &str, version: Option<&str>) -> Response {
    match state.models.load().resolve(model, version) {
        Ok(s) => Json(json!({ "name": model, "version": s.model.manifest().version.to_string(), "ready": true }))
            .into_response(),
        Err(Lookup::Failed(reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "name": model, "version": version, "ready": false, "error": reason })),
        )
            .into_response(),
        Err(other) => lookup_error(model, version, other).into_response(),
    }
}

async fn model_ready(State(state): State<AppState>, Path(model): Path<String>) -> Response {
    readiness(&state, &model, None)
}

async fn version_ready(State(state): State<AppState>, Path((model, version)): Path<(String, String)>) -> Response {
    readiness(&state, &model, Some(&version))
}

/// A V2 inference request as it arrives; tensor data is kept as raw JSON text so numbers are
/// decoded straight to the declared datatype.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// May be empty when `parameters.entities` fills the inputs from the feature store.
    #[serde(borrow, default)]
    inputs: Vec<RawInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    #[allow(dead_code)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    parameters: Option<Map<String, Value>>,
}

/// A decoded inference request.
struct InferRequest {
    id: Option<String>,
    parameters: Map<String, Value>,
    inputs: Vec<Tensor>,
    outputs: Option<Vec<String>>,
}

pub(crate) fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body is larger than the limit of {limit} bytes (server.max_body_bytes)")
    } else {
        format!("request body: {}", rejection.body_text())
    };
    ApiError { status, message }
}

fn parse_request(body: &[u8]) -> Result<InferRequest, ApiError> {
    let raw: RawRequest<'_> = crate::error::parse_json(body)?;
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for (i, input) in raw.inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        let datatype = DataType::parse(&input.datatype, &format!("{field}.datatype"))?;
        let shape = concrete_shape(&input.shape, &field)?;
        let data = parse_data(input.data.get(), datatype, &format!("{field}.data"))?;
        inputs.push(Tensor::new(input.name.clone(), shape, data, &field)?);
    }
    Ok(InferRequest {
        id: raw.id,
        parameters: raw.parameters.unwrap_or_default(),
        inputs,
        outputs: raw.outputs.map(|o| o.into_iter().map(|o| o.name).collect()),
    })
}

/// The corridor of a request: the `x-corridor` header or `parameters.corridor` (they must
/// agree when both are given), else the configured default.
pub(crate) fn corridor_of(
    state: &AppState,
    headers: &HeaderMap,
    parameters: &Map<String, Value>,
) -> Result<CorridorId, ApiError> {
    let header = match headers.get(CORRIDOR_HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("x-corridor header: not valid text"))?,
        ),
        None => None,
    };
    let param = match parameters.get("corridor") {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "parameters.corridor: must be a string such as \"UAE-SA\"",
            ))
        }
        None => None,
    };
    let named = match (header, param) {
        (Some(h), Some(p)) if !h.eq_ignore_ascii_case(p) => {
            return Err(ApiError::bad_request(format!(
                "x-corridor header '{h}' and parameters.corridor '{p}' name different corridors"
            )))
        }
        (Some(h), _) => Some(h),
        (None, p) => p,
    };
    let Some(named) = named else {
        return state.config.server.default_corridor.clone().ok_or_else(|| {
            ApiError::bad_request(
                "no corridor: send the x-corridor header or parameters.corridor (no default is configured)",
            )
        });
    };
    let id = CorridorId::parse(named).map_err(|e| ApiError::bad_request(format!("corridor: {e}")))?;
    match state.config.corridor(id.as_str()) {
        Some(c) => Ok(c.id.clone()),
        None => {
            let declared: Vec<&str> = state.config.corridors.iter().map(|c| c.id.as_str()).collect();
            Err(ApiError::bad_request(format!(
                "unknown corridor '{id}' (declared: {})",
                declared.join(", ")
            )))
        }
    }
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: DataType,
    shape: &'a [usize],
    data: &'a TensorData,
}

async fn infer_latest(State(state): State<AppState>, request: Request) -> Response {
    serve_infer(&state, request, false).await
}

async fn infer_version(State(state): State<AppState>, request: Request) -> Response {
    serve_infer(&state, request, true).await
}

/// Reads the body, decodes and runs it ([`infer`]), and keeps the reply for the reply cache.
/// Repeated requests are answered before routing, by [`crate::reply_cache::App`].
async fn serve_infer(state: &AppState, request: Request, versioned: bool) -> Response {
    let started = request
        .extensions()
        .get::<Started>()
        .map_or_else(tokio::time::Instant::now, |s| s.0);
    let (mut parts, body) = request.into_parts();
    let body = match read_body(body, state.config.server.max_body_bytes).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let slot = reply_slot(state, parts.uri.path(), &parts.headers, &body);
    let names = if versioned {
        Path::<(String, String)>::from_request_parts(&mut parts, state)
            .await
            .map(|Path((model, version))| (model, Some(version)))
            .map_err(IntoResponse::into_response)
    } else {
        Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map(|Path(model)| (model, None))
            .map_err(IntoResponse::into_response)
    };
    let (model, version) = match names {
        Ok(names) => names,
        Err(rejection) => return rejection,
    };
    infer(state, model, version, &parts.headers, body, slot, started)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// A JSON response carrying `bytes` as they are.
pub(crate) fn json_reply(bytes: Bytes) -> Response {
    let mut response = Response::new(axum::body::Body::from(bytes));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The whole request body, at most `limit` bytes (413 past it). A body that arrives in one
/// piece (the usual case) is returned as it is, without copying.
pub(crate) async fn read_body(mut body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("request body is larger than the limit of {limit} bytes (server.max_body_bytes)"),
    };
    if axum::body::HttpBody::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    let mut whole = Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let so_far = joined.as_ref().map_or(whole.len(), |j| j.len());
        if so_far + data.len() > limit {
            return Err(too_large());
        }
        match &mut joined {
            Some(j) => j.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut j = bytes::BytesMut::with_capacity(so_far + data.len());
                j.extend_from_slice(&whole);
                j.extend_from_slice(&data);
                joined = Some(j);
            }
        }
    }
    Ok(joined.map_or(whole, bytes::BytesMut::freeze))
}

async fn infer(
    state: &AppState,
    model_name: String,
    version: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
    slot: Option<ReplySlot<'_>>,
    started: tokio::time::Instant,
) -> Result<Response, ApiError> {
    let table = state.models.load_full();
    // A named version is looked up before the body is parsed: unknown ones are 404 whatever the body.
    let explicit = match &version {
        Some(v) => Some(
            table
                .resolve(&model_name, Some(v))
                .map_err(|l| lookup_error(&model_name, Some(v), l))?,
        ),
        None if table.versions(&model_name).is_none() => {
            return Err(lookup_error(&model_name, None, Lookup::UnknownModel))
        }
        None => None,
    };
    let request = parse_request(&body)?;
    let corridor = corridor_of(state, headers, &request.parameters)?;
    let (serving, routing) = match explicit {
        Some(serving) => (serving, "explicit"),
        None => {
            let key = routing_key(headers, &request)?;
            let default = table.default_version(&model_name);
            let registry = state.registry.load();
            let ready = |v: &str| crate::lifecycle::ready(&table, &model_name, v);
            let Some(route) = registry.route(&model_name, corridor.as_str(), &key, &ready, default.as_deref()) else {
                let why = table.resolve(&model_name, None).err().unwrap_or(Lookup::UnknownModel);
                return Err(lookup_error(&model_name, None, why));
            };
            let serving = table
                .resolve(&model_name, Some(&route.version))
                .map_err(|l| lookup_error(&model_name, None, l))?;
            (serving, route.reason)
        }
    };
    let model = &serving.model;
    let manifest = model.manifest();
    let selection = select_outputs(model, request.outputs.as_deref())?;
    let mut inputs = request.inputs;
    let mut degraded = None;
    let features_used = crate::features::enrich(
        state,
        corridor.as_str(),
        manifest,
        &request.parameters,
        &mut inputs,
        &mut degraded,
    )
    .await?;
    let return_features = request
        .parameters
        .get("return_features")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (ordered, _) = invariant_engine::check_inputs(manifest, inputs)?;
    let runtime = state
        .corridors
        .get(corridor.as_str())
        .ok_or_else(|| ApiError::internal(format!("corridor {corridor} has no pool")))?;
    let deadline_ms = deadline_of(state, headers)?;
    let deadline = started + std::time::Duration::from_millis(deadline_ms);
    let version_text = manifest.version.to_string();
    let requested: Vec<String> = selection.iter().map(|&i| manifest.outputs[i].name.clone()).collect();
    let key = invariant_core::hash::inference_key(invariant_core::hash::InferenceKeyParts {
        corridor: &corridor,
        model: &manifest.name,
        version: &version_text,
        artifact_hash: model.content_hash(),
        inputs: &ordered,
        outputs: &requested,
    });
    let compute = async {
        let _admission = runtime.pool.admit()?;
        let outputs = runtime
            .pool
            .run(serving.clone(), ordered, deadline, deadline_ms)
            .await?;
        let refs: Vec<&Tensor> = outputs.iter().collect();
        Ok::<_, ApiError>(invariant_core::hash::encode_list(&refs))
    };
    let ttl = state
        .config
        .cache_ttl(&manifest.name, manifest.inference.cache_ttl_seconds);
    let caching = state.config.cache.enabled && !ttl.is_zero();
    // An L1 hit needs no admission, timer or coalescing.
    let hit = if caching {
        runtime.cache.peek(key.as_bytes()).await
    } else {
        None
    };
    let result: Result<(Arc<invariant_cache::Entry>, invariant_cache::Source), ApiError> = if let Some(entry) = hit {
        Ok((entry, invariant_cache::Source::L1))
    } else if caching {
        let lookup = runtime
            .cache
            .get_or_compute(*key.as_bytes(), &manifest.name, &version_text, ttl, compute);
        match tokio::time::timeout_at(deadline, lookup).await {
            Err(_) => Err(ApiError {
                status: axum::http::StatusCode::GATEWAY_TIMEOUT,
                message: format!("deadline of {deadline_ms} ms exceeded"),
            }),
            Ok(r) => r.map_err(|e| (*e).clone()),
        }
    } else {
        compute.await.map(|bytes| {
            let entry = invariant_cache::Entry {
                model: String::new(),
                version: String::new(),
                bytes: Bytes::from(bytes),
                request: Bytes::new(),
                ttl,
                hits: metrics::Counter::noop(),
            };
            (Arc::new(entry), invariant_cache::Source::Computed)
        })
    };
    let status = result.as_ref().map(|_| 200).unwrap_or_else(|e| e.status.as_u16());
    let source = result.as_ref().map(|(_, s)| s.name()).unwrap_or("error");
    requests_counter(
        &manifest.name,
        &version_text,
        routing,
        &corridor,
        &status.to_string(),
        source,
    )
    .increment(1);
    if routing == "canary" {
        observe_canary(state, &manifest.name, &version_text, status < 500, started.elapsed());
    }
    let (entry, source) = result?;
    let outputs = invariant_core::hash::decode_list(&entry.bytes)
        .ok_or_else(|| ApiError::internal("a cached answer could not be decoded"))?;

    let mut reply = InferResponse {
        model_name: &manifest.name,
        model_version: version_text.clone(),
        id: request.id.as_deref(),
        parameters: ReplyParameters {
            corridor: &corridor,
            device: model.placement().device,
            routing,
            cached: source.cached(),
            cache_key: key.to_hex().to_string(),
            features: if return_features { features_used } else { None },
            degraded,
        },
        outputs: selection
            .iter()
            .filter_map(|&i| outputs.get(i))
            .map(|t| OutputJson {
                name: &t.name,
                datatype: t.datatype(),
                shape: &t.shape,
                data: &t.data,
            })
            .collect(),
    };
    // Serialised directly (not through serde_json::Value, which would widen FP32 to f64 and
    // print 0.1f32 as 0.10000000149011612).
    let encode = |r: &InferResponse<'_>| serde_json::to_vec(r).map_err(|e| ApiError::internal(e.to_string()));
    let bytes = encode(&reply)?;
    // Replies built from the feature store change when features do: only answers computed
    // from the request's own tensors are kept for the reply cache.
    let enriched = request.parameters.contains_key("entities");
    if let (true, false, Some(slot)) = (caching, enriched, slot) {
        if slot.corridor == corridor.as_str() {
            reply.parameters.cached = true;
            let stored = encode(&reply)?;
            let hits = requests_counter(&manifest.name, &version_text, "cached", &corridor, "200", "l1");
            let entry = invariant_cache::Entry {
                model: manifest.name.clone(),
                version: version_text,
                bytes: Bytes::from(stored),
                request: slot.request,
                ttl,
                hits,
            };
            slot.runtime.cache.insert_l1(slot.key, Arc::new(entry)).await;
        }
    }
    Ok(json_reply(Bytes::from(bytes)))
}

/// The `invariant_inference_requests_total` counter of one label set.
fn requests_counter(
    model: &str,
    version: &str,
    routing: &'static str,
    corridor: &CorridorId,
    status: &str,
    source: &'static str,
) -> metrics::Counter {
    metrics::counter!(
        "invariant_inference_requests_total",
        "model" => model.to_string(),
        "version" => version.to_string(),
        "routing" => routing,
        "corridor" => corridor.to_string(),
        "status" => status.to_string(),
        "source" => source
    )
}

/// The request's deadline in milliseconds: the `x-deadline-ms` header, else
/// `pools.request_timeout_ms`.
fn deadline_of(state: &AppState, headers: &HeaderMap) -> Result<u64, ApiError> {
    match headers.get(DEADLINE_HEADER) {
        None => Ok(state.config.pools.request_timeout_ms),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .ok_or_else(|| ApiError::bad_request("x-deadline-ms header: must be a positive number of milliseconds")),
    }
}

/// The routing key of a request: the `x-routing-key` header, else `parameters.routing_key`,
/// else the request id, else the blake3 of the canonical encoding of its inputs.
fn routing_key(headers: &HeaderMap, request: &InferRequest) -> Result<Vec<u8>, ApiError> {
    if let Some(v) = headers.get(ROUTING_KEY_HEADER) {
        return Ok(v.as_bytes().to_vec());
    }
    match request.parameters.get("routing_key") {
        Some(Value::String(s)) => return Ok(s.as_bytes().to_vec()),
        Some(Value::Number(n)) => return Ok(n.to_string().into_bytes()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "parameters.routing_key: must be a string or a number",
            ))
        }
        None => {}
    }
    if let Some(id) = &request.id {
        return Ok(id.as_bytes().to_vec());
    }
    Ok(blake3::hash(&invariant_core::hash::encode_tensors(&request.inputs))
        .as_bytes()
        .to_vec())
}

/// Feeds a canary outcome to the monitor; rolls the canary back (in the background,
/// serialised with other admin changes) when its window breaks a limit.
fn observe_canary(state: &AppState, model: &str, version: &str, ok: bool, latency: std::time::Duration) {
    let Some(why) = state.canary.record(model, version, ok, latency) else {
        return;
    };
    tracing::warn!(model, version, reason = %why, "rolling back canary automatically");
    let (state, model, version) = (state.clone(), model.to_string(), version.to_string());
    tokio::spawn(async move {
        let _one_at_a_time = state.reload_lock.lock().await;
        let worker = state.clone();
        let (m, v) = (model.clone(), version.clone());
        let action = invariant_registry::lifecycle::Action::Rollback { corridors: vec![] };
        let done = tokio::task::spawn_blocking(move || worker.transition(&m, &v, &action, "auto-rollback", &why)).await;
        match done {
            Ok(Ok(_)) => {
                crate::events::publish(&state, &model, "transition").await;
                metrics::counter!("invariant_canary_auto_rollbacks_total", "model" => model.clone(), "version" => version.clone())
                    .increment(1);
            }
            Ok(Err(e)) => tracing::warn!(%model, %version, error = %e, "automatic canary rollback not applied"),
            Err(e) => tracing::error!(%model, %version, error = %e, "automatic canary rollback task failed"),
        }
    });
}

#[derive(Serialize)]
struct ReplyParameters<'a> {
    corridor: &'a CorridorId,
    device: invariant_gpu::Device,
    /// `explicit` (the request named the version), `active` or `canary`.
    routing: &'static str,
    /// Whether the answer came from the cache.
    cached: bool,
    /// The inference cache key (blake3, hex).
    cache_key: String,
    /// The feature values used, when the request asked (`parameters.return_features`).
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<Value>,
    /// Why the answer is degraded (features from declared defaults), when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<String>,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    parameters: ReplyParameters<'a>,
    outputs: Vec<OutputJson<'a>>,
}

/// Indexes (into the manifest's outputs) of the outputs to return, in the requested order;
/// all outputs in manifest order when none are requested.
fn select_outputs(model: &invariant_engine::Model, requested: Option<&[String]>) -> Result<Vec<usize>, ApiError> {
    let specs = &model.manifest().outputs;
    let Some(requested) = requested.filter(|r| !r.is_empty()) else {
        return Ok((0..specs.len()).collect());
    };
    let mut picked = Vec::with_capacity(requested.len());
    for (i, name) in requested.iter().enumerate() {
        let Some(pos) = specs.iter().position(|s| &s.name == name) else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(ApiError::bad_request(format!(
                "outputs[{i}].name: model '{}' has no output '{name}' (outputs: {})",
                model.manifest().name,
                names.join(", ")
            )));
        };
        if picked.contains(&pos) {
            return Err(ApiError::bad_request(format!(
                "outputs[{i}].name: output '{name}' requested twice"
            )));
        }
        picked.push(pos);
    }
    Ok(picked)
}
