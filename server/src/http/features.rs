//! Feature store API, served by the serving core in the request's corridor (`x-corridor`,
//! else the default corridor; or a `/corridors/{corridor}` path prefix for clients that
//! cannot send headers, such as Feast's remote online store):
//! - Feast's feature server paths, with Feast's request fields and its error shape
//!   (`{"detail"}`): `POST /get-online-features`, `POST /push` (by push source),
//!   `POST /write-to-online-store` (by feature view), `GET /health`;
//! - the same reads and writes at `POST /v1/features/get-online` and `POST /v1/features/push`
//!   (V2 error shape `{"error"}`).
//!
//! See `docs/features.md`.

use crate::http::error::{parse_json, ApiError, Path};
use crate::http::{body_of, json_reply, metadata_of, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use invariant_auth::{Principal, Role};
use invariant_core::CorridorId;
use invariant_featurestore::{GetOnlineRequest, PushRequest};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The feature routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/features/get-online", post(get_online))
        .route("/v1/features/push", post(push))
        .route("/get-online-features", post(feast_get_online))
        .route("/push", post(feast_push))
        .route("/write-to-online-store", post(feast_write))
        .route("/health", get(feast_health))
        .route("/corridors/{corridor}/get-online-features", post(feast_get_online_in))
        .route("/corridors/{corridor}/push", post(feast_push_in))
        .route("/corridors/{corridor}/write-to-online-store", post(feast_write_in))
}

/// The caller and the request's corridor (the path's, else `x-corridor`, else the default;
/// the path and the header must agree), once its key has `role` there.
fn corridor(
    state: &AppState,
    headers: &HeaderMap,
    role: Role,
    in_path: Option<&str>,
) -> Result<(Principal, CorridorId), ApiError> {
    let metadata = metadata_of(headers);
    let caller = state.authenticate(&metadata)?;
    let named = match (in_path, metadata.corridor.as_deref()) {
        (Some(p), Some(h)) if !p.eq_ignore_ascii_case(h) => {
            return Err(ApiError::bad_request(format!(
                "the path names corridor '{p}' and x-corridor '{h}'"
            )))
        }
        (Some(p), _) => Some(p),
        (None, h) => h,
    };
    let corridor = state.corridor_for(&caller, role, named, &serde_json::Map::new())?;
    Ok((caller, corridor))
}

/// An online read (serialised straight from the reply, never through a JSON value).
async fn read(state: &AppState, headers: &HeaderMap, body: Body, in_path: Option<&str>) -> Result<Response, ApiError> {
    let (_, corridor) = corridor(state, headers, Role::FeaturesRead, in_path)?;
    state.feature_store()?;
    let body = body_of(state, headers, body).await?;
    let request: GetOnlineRequest = parse_json(&body)?;
    let reply = state.get_online_features(&corridor, request).await?;
    let json = reply
        .to_json()
        .map_err(|e| invariant_serving::ServeError::internal(format!("the reply: {e}")))?;
    Ok(json_reply(json.into()))
}

/// Columns of rows, as every write path carries them.
type Columns = BTreeMap<String, Vec<Box<RawValue>>>;

/// Feast's `POST /push` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeastPush {
    push_source_name: String,
    df: Columns,
    #[serde(default)]
    #[allow(dead_code)]
    allow_registry_cache: Option<bool>,
    #[serde(default)]
    to: Option<String>,
    /// There are no on-demand transformations here: nothing to run on write either way.
    #[serde(default)]
    #[allow(dead_code)]
    transform_on_write: Option<bool>,
}

/// Feast's `POST /write-to-online-store` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeastWrite {
    feature_view_name: String,
    df: Columns,
    #[serde(default)]
    #[allow(dead_code)]
    allow_registry_cache: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    transform_on_write: Option<bool>,
}

/// How a write names what it writes.
enum WriteShape {
    /// `{"feature_view", "df"}`.
    Invariant,
    /// Feast's push: every view fed by the push source.
    FeastPush,
    /// Feast's write to one view.
    FeastWrite,
}

/// A write of rows to one or more views; the counts are summed.
async fn write(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    in_path: Option<&str>,
    shape: WriteShape,
) -> Result<Json<Value>, ApiError> {
    let (caller, corridor) = corridor(state, headers, Role::FeaturesWrite, in_path)?;
    let store = state.feature_store()?;
    let body = body_of(state, headers, body).await?;
    let requests: Vec<PushRequest> = match shape {
        WriteShape::Invariant => vec![parse_json(&body)?],
        WriteShape::FeastWrite => {
            let w: FeastWrite = parse_json(&body)?;
            vec![PushRequest {
                feature_view: w.feature_view_name,
                df: w.df,
            }]
        }
        WriteShape::FeastPush => {
            let p: FeastPush = parse_json(&body)?;
            match p.to.as_deref().unwrap_or("online") {
                "online" => {}
                other @ ("offline" | "online_and_offline") => {
                    return Err(ApiError::bad_request(format!(
                        "to: '{other}' needs an offline store, and this server has none; push with to = \"online\""
                    )))
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "to: '{other}' is not one of online, offline, online_and_offline"
                    )))
                }
            }
            let views = store.views_of_push_source(&p.push_source_name);
            if views.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "push_source_name: no feature view is fed by push source '{}'",
                    p.push_source_name
                )));
            }
            views
                .into_iter()
                .map(|feature_view| PushRequest {
                    feature_view,
                    df: p.df.clone(),
                })
                .collect()
        }
    };
    let (mut written, mut ignored) = (0, 0);
    for request in requests {
        let outcome = state.push_features(&corridor, request, &caller).await?;
        written += outcome.written;
        ignored += outcome.ignored;
    }
    Ok(Json(json!({ "written": written, "ignored": ignored })))
}

fn v2<T: IntoResponse>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(v) => v.into_response(),
        Err(e) => e.into_response(),
    }
}

fn feast<T: IntoResponse>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(v) => v.into_response(),
        Err(e) => e.into_feast_response(),
    }
}

#[utoipa::path(post, path = "/v1/features/get-online", tag = "features", params(("x-corridor" = Option<String>, Header, description = "corridor (else the default)")), request_body(content = crate::http::openapi::Object, description = "feature_service or features, entities", content_type = "application/json"), responses((status = 200, description = "values and statuses", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn get_online(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    v2(read(&state, &headers, body, None).await)
}

#[utoipa::path(post, path = "/v1/features/push", tag = "features", params(("x-corridor" = Option<String>, Header, description = "corridor (else the default)")), request_body(content = crate::http::openapi::Object, description = "feature_view, df", content_type = "application/json"), responses((status = 200, description = "rows written and ignored", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn push(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    v2(write(&state, &headers, body, None, WriteShape::Invariant).await)
}

/// Feast's online read.
#[utoipa::path(post, path = "/get-online-features", tag = "feast", params(("x-corridor" = Option<String>, Header, description = "corridor (else the default)")), request_body(content = crate::http::openapi::Object, description = "Feast's GetOnlineFeaturesRequest: entities, features or feature_service, full_feature_names, include_feature_view_version_metadata", content_type = "application/json"), responses((status = 200, description = "values (null unless PRESENT), statuses, event timestamps", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn feast_get_online(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    feast(read(&state, &headers, body, None).await)
}

/// Feast's push, by push source.
#[utoipa::path(post, path = "/push", tag = "feast", params(("x-corridor" = Option<String>, Header, description = "corridor (else the default)")), request_body(content = crate::http::openapi::Object, description = "Feast's PushFeaturesRequest: push_source_name, df, to (online), allow_registry_cache, transform_on_write", content_type = "application/json"), responses((status = 200, description = "rows written and ignored", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn feast_push(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    feast(write(&state, &headers, body, None, WriteShape::FeastPush).await)
}

/// Feast's write to one feature view (what Feast's remote online store sends).
#[utoipa::path(post, path = "/write-to-online-store", tag = "feast", params(("x-corridor" = Option<String>, Header, description = "corridor (else the default)")), request_body(content = crate::http::openapi::Object, description = "Feast's WriteToFeatureStoreRequest: feature_view_name, df, allow_registry_cache, transform_on_write", content_type = "application/json"), responses((status = 200, description = "rows written and ignored", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn feast_write(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    feast(write(&state, &headers, body, None, WriteShape::FeastWrite).await)
}

#[utoipa::path(post, path = "/corridors/{corridor}/get-online-features", tag = "feast", params(("corridor" = String, Path, description = "corridor id")), request_body(content = crate::http::openapi::Object, description = "as /get-online-features", content_type = "application/json"), responses((status = 200, description = "as /get-online-features", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn feast_get_online_in(
    State(state): State<AppState>,
    Path(c): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    feast(read(&state, &headers, body, Some(&c)).await)
}

#[utoipa::path(post, path = "/corridors/{corridor}/push", tag = "feast", params(("corridor" = String, Path, description = "corridor id")), request_body(content = crate::http::openapi::Object, description = "as /push", content_type = "application/json"), responses((status = 200, description = "as /push", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn feast_push_in(
    State(state): State<AppState>,
    Path(c): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    feast(write(&state, &headers, body, Some(&c), WriteShape::FeastPush).await)
}

#[utoipa::path(post, path = "/corridors/{corridor}/write-to-online-store", tag = "feast", params(("corridor" = String, Path, description = "corridor id")), request_body(content = crate::http::openapi::Object, description = "as /write-to-online-store", content_type = "application/json"), responses((status = 200, description = "as /write-to-online-store", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn feast_write_in(
    State(state): State<AppState>,
    Path(c): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    feast(write(&state, &headers, body, Some(&c), WriteShape::FeastWrite).await)
}

/// Feast's health check: 200 while the feature store is open (no key needed, like
/// `/v2/health/*`).
#[utoipa::path(get, path = "/health", tag = "feast", security(()), responses((status = 200, description = "the feature store serves", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn feast_health(State(state): State<AppState>) -> Response {
    feast(
        state
            .feature_store()
            .map(|_| Json(json!({ "status": "ok" })))
            .map_err(ApiError::from),
    )
}
