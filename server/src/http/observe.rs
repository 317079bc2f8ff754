//! Corridor health (`GET /v1/corridors/{corridor}/health`) and the audit trail over HTTP:
//! `GET /v1/corridors/{corridor}/audit` reads that corridor's chain only (an admin key of
//! the corridor), `GET /admin/v1/audit` the server-wide chain (`*` admin keys).

use crate::http::error::{ApiError, Path};
use crate::http::{authorize, AppState};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use invariant_audit::read::{parse_since, Filter};
use invariant_auth::Role;
use invariant_core::CorridorId;
use invariant_serving::auth::{check, Need};
use invariant_serving::ServeError;
use serde::Deserialize;
use serde_json::{json, Value};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/corridors/{corridor}/health", get(health))
        .route("/v1/corridors/{corridor}/audit", get(corridor_audit))
        .route("/admin/v1/audit", get(server_audit))
}

/// The most records one read returns.
const MAX_LIMIT: usize = 1000;

/// A declared corridor named by the path, once the caller's key has `role` there (or, for
/// health, `metrics`). Checked before the path is judged: a caller without a key learns nothing.
fn corridor_of(state: &AppState, headers: &HeaderMap, corridor: &str, roles: &[Role]) -> Result<CorridorId, ApiError> {
    let caller = authorize(state, headers, Need::AnyKey)?;
    let id = CorridorId::parse(corridor).map_err(|e| ApiError::bad_request(format!("corridor: {e}")))?;
    let mut allowed = Err(ServeError::PermissionDenied(String::new()));
    for role in roles {
        allowed = check(&caller, Need::In(*role, id.as_str()));
        if allowed.is_ok() {
            break;
        }
    }
    allowed?;
    if state.config.corridor(id.as_str()).is_none() {
        return Err(ApiError::not_found(format!("unknown corridor '{id}'")));
    }
    Ok(id)
}

/// One corridor's readiness, dependencies, pool, recent latency and errors, and governance.
#[utoipa::path(get, path = "/v1/corridors/{corridor}/health", tag = "health", params(("corridor" = String, Path, description = "corridor id")), responses((status = 200, description = "the corridor serves", body = invariant_serving::health::CorridorHealth), (status = 503, description = "the corridor does not serve (the body says why)", body = invariant_serving::health::CorridorHealth), crate::http::openapi::Errors))]
pub(crate) async fn health(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(corridor): Path<String>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let id = corridor_of(&state, &headers, &corridor, &[Role::Admin, Role::Metrics])?;
    let h = state
        .corridor_health(id.as_str())
        .await
        .ok_or_else(|| ApiError::not_found(format!("unknown corridor '{id}'")))?;
    let status = if h.ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(json!(h))))
}

/// Which records to read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// Records at or after this time: RFC 3339, or a duration back from now (`15m`, `2h`).
    #[serde(default)]
    since: Option<String>,
    /// Records of this model only.
    #[serde(default)]
    model: Option<String>,
    /// Records of this event only (`inference`, `transition`, `governance`, …).
    #[serde(default)]
    event: Option<String>,
    /// At most this many records, oldest first (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

async fn read_chain(state: &AppState, chain: String, query: AuditQuery) -> Result<Json<Value>, ApiError> {
    let since = query
        .since
        .as_deref()
        .map(parse_since)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("since: {e}")))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!("limit: must be 1 to {MAX_LIMIT}")));
    }
    let filter = Filter {
        since,
        model: query.model,
        event: query.event,
    };
    let settings = state.audit.trail().settings().clone();
    let name = chain.clone();
    let (records, truncated) = tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        let mut truncated = false;
        invariant_audit::read_chain(&settings, &name, &filter, |r| {
            if records.len() == limit {
                truncated = true;
                return std::ops::ControlFlow::Break(());
            }
            records.push(r);
            std::ops::ControlFlow::Continue(())
        })
        .map(|()| (records, truncated))
    })
    .await
    .map_err(|e| ApiError::from(ServeError::internal(format!("audit read failed: {e}"))))?
    .map_err(|e| ApiError::from(ServeError::internal(e.to_string())))?;
    Ok(Json(
        json!({ "chain": chain, "records": records, "truncated": truncated }),
    ))
}

fn query_of(
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<AuditQuery, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))
}

/// The records of one corridor's audit chain, oldest first.
#[utoipa::path(get, path = "/v1/corridors/{corridor}/audit", tag = "audit", params(("corridor" = String, Path, description = "corridor id"), AuditQuery), responses((status = 200, description = "records of the corridor's chain", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn corridor_audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(corridor): Path<String>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = corridor_of(&state, &headers, &corridor, &[Role::Admin])?;
    let query = query_of(query)?;
    read_chain(&state, id.to_string(), query).await
}

/// The records of the server-wide chain (what belongs to no corridor), oldest first.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "audit", params(AuditQuery), responses((status = 200, description = "records of the _server chain", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn server_audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::Everywhere(Role::Admin))?;
    let query = query_of(query)?;
    read_chain(&state, invariant_audit::SERVER_CHAIN.to_string(), query).await
}
