//! The ops dashboard: `GET /dashboard` (one page, its script and style embedded in the binary:
//! no CDN, no external request) and its data, `GET /admin/v1/dashboard` (the serving core's
//! [`InferenceService::dashboard`](invariant_serving::InferenceService::dashboard), for an
//! `admin` or `reviewer` key). The page signs in with an API key, polls the data every two
//! seconds, and acts through the existing audited APIs: governance changes
//! (`POST /admin/v1/governance`) and review actions, each after a confirmation.

use crate::http::error::ApiError;
use crate::http::{metadata_of, AppState};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// Only this origin's script, style and API; no frames.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(|| async { asset(PAGE, "text/html; charset=utf-8") }))
        .route(
            "/dashboard/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/admin/v1/dashboard", get(data))
}

/// An embedded asset with its type and the page's security headers. The assets hold no data:
/// everything the page shows comes from the API, with the key the operator signs in with.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Everything the dashboard shows, for the caller's corridors.
#[utoipa::path(get, path = "/admin/v1/dashboard", tag = "admin", responses((status = 200, description = "corridors (health, governance, series, review queue, traffic), models, pipelines", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn data(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.dashboard(&metadata_of(&headers)).await?))
}
