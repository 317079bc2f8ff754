//! The HTTP transport (axum): the Open Inference Protocol (KServe V2) with Triton's binary
//! tensor, model configuration, statistics and repository extensions, the admin API, the
//! feature API, `/metrics` and the OpenAPI document (`/openapi.json`). Every handler decodes, calls the serving core, and encodes;
//! errors map once ([`error`]). The reply cache ([`reply_cache::App`]) answers exact repeats
//! in front of the router, through the core's guard pipeline.

pub mod admin;
pub mod advisory;
pub mod binary;
pub mod dashboard;
pub mod error;
pub mod features;
pub mod governance;
pub mod observe;
pub mod openapi;
pub mod reply_cache;
pub mod repository;
pub mod review;
pub mod v2;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use error::ApiError;
use http_body_util::BodyExt;
use invariant_auth::Principal;
use invariant_serving::auth::Need;
use invariant_serving::{InferenceService, Metadata, ServeError};
use std::io::Read;
use std::sync::Arc;

/// Handler state.
pub type AppState = Arc<InferenceService>;

/// Header naming the corridor of a request.
pub const CORRIDOR_HEADER: &str = "x-corridor";

/// Header carrying a request's deadline in milliseconds.
pub const DEADLINE_HEADER: &str = "x-deadline-ms";

/// Header carrying the routing key of a request (e.g. a user id).
pub const ROUTING_KEY_HEADER: &str = "x-routing-key";

/// The request facts the core reads from headers (the same keys as gRPC metadata).
pub fn metadata_of(headers: &HeaderMap) -> Metadata {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    Metadata {
        corridor: text(CORRIDOR_HEADER),
        routing_key: headers.get(ROUTING_KEY_HEADER).map(|v| v.as_bytes().to_vec()),
        deadline_ms: text(DEADLINE_HEADER),
        timeout: None,
        authorization: text(axum::http::header::AUTHORIZATION.as_str()),
        request_id: text(crate::request_id::HEADER.as_str()),
    }
}

/// The caller of a request, if its key has what `need` asks (401 or 403 otherwise).
pub(crate) fn authorize(state: &AppState, headers: &HeaderMap, need: Need<'_>) -> Result<Principal, ApiError> {
    Ok(state.authorize(&metadata_of(headers), need)?)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error while handling the request",
    )
    .into_response()
}

/// The HTTP API with JSON 404s and 405s and a last-resort panic guard.
pub fn router(state: AppState) -> Router {
    v2::routes()
        .merge(repository::routes())
        .merge(admin::routes())
        .merge(governance::routes())
        .merge(features::routes())
        .merge(observe::routes())
        .merge(review::routes())
        .merge(advisory::routes())
        .merge(dashboard::routes())
        .route("/openapi.json", axum::routing::get(openapi::document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// What the server serves over HTTP: the [`router`] behind the reply cache.
pub fn app(state: AppState) -> reply_cache::App {
    let router = router(state.clone());
    reply_cache::App::new(state, router)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than the limit of {limit} bytes (server.max_body_bytes)"),
    )
}

/// The whole request body, at most `limit` bytes (413 past it). A body that arrives in one
/// piece (the usual case) is returned as it is, without copying.
pub(crate) async fn read_body(mut body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    if axum::body::HttpBody::size_hint(&body).lower() > limit as u64 {
        return Err(too_large(limit));
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
            return Err(too_large(limit));
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

/// The body as sent, undone from its `Content-Encoding` (`gzip`, `deflate` (zlib) or
/// `identity`), at most `limit` bytes once decoded (413 past it); other encodings are 415.
pub(crate) fn decode_content(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let Some(encoding) = headers.get(axum::http::header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let encoding = String::from_utf8_lossy(encoding.as_bytes()).trim().to_ascii_lowercase();
    let mut out = Vec::new();
    let read = match encoding.as_str() {
        "" | "identity" => return Ok(body),
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding '{other}' is not supported (gzip, deflate, identity)"),
            ))
        }
    };
    read.map_err(|e| ApiError::bad_request(format!("request body: cannot decode {encoding}: {e}")))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(out))
}

/// Reads and decodes a whole request body.
pub(crate) async fn body_of(state: &AppState, headers: &HeaderMap, body: axum::body::Body) -> Result<Bytes, ApiError> {
    let limit = state.config.server.max_body_bytes;
    let raw = read_body(body, limit).await?;
    decode_content(headers, raw, limit)
}

/// A JSON response carrying `bytes` as they are.
pub(crate) fn json_reply(bytes: Bytes) -> Response {
    let mut response = Response::new(axum::body::Body::from(bytes));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Maps a core error to its response.
pub(crate) fn error_response(e: ServeError) -> Response {
    ApiError::from(e).into_response()
}
