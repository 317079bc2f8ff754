//! Governance admin API (`/admin/v1/governance`, `/admin/v1/corridors`, `/admin/v1/flags`):
//! the control state and every corridor's level, limits and breakers; changes (kill,
//! revive, freeze, unfreeze, limits, levels, flags) made durable, audited and effective
//! through the serving core.

use crate::http::error::Path;
use crate::http::error::{parse_json, ApiError};
use crate::http::{authorize, body_of, AppState};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use invariant_auth::Role;
use invariant_core::CorridorId;
use invariant_governance::state::Change;
use invariant_serving::auth::{check, Need};
use invariant_serving::ServeError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The governance routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/governance", get(show).post(change))
        .route("/admin/v1/corridors", get(corridors))
        .route("/admin/v1/corridors/{corridor}", get(corridor))
        .route("/admin/v1/flags", get(flags))
}

fn governance(state: &AppState) -> Result<&invariant_governance::Governance, ApiError> {
    state.governance.as_deref().ok_or_else(|| {
        ApiError::from(ServeError::not_found(
            "governance is disabled (governance.enabled = false)",
        ))
    })
}

/// The control state, the limits in force and every corridor's status.
#[utoipa::path(get, path = "/admin/v1/governance", tag = "governance", responses((status = 200, description = "control state, limits, corridors", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn show(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::Everywhere(Role::Admin))?;
    let g = governance(&state)?;
    let limits: BTreeMap<String, Value> = g
        .limits()
        .into_iter()
        .map(|(scope, l)| {
            (
                scope.to_string(),
                json!({ "rate_per_s": l.rate_per_s, "burst": l.burst }),
            )
        })
        .collect();
    Ok(Json(json!({
        "state": *g.state(),
        "limits": limits,
        "corridors": g.corridors(),
        "state_place": g.state_place(),
    })))
}

/// A change, and the revision it was made against.
struct ChangeBody {
    change: Change,
    /// Compare-and-set: refused with 409 unless the state is still at this revision.
    expected_revision: Option<u64>,
}

impl ChangeBody {
    /// Parses `{"op": ..., <the change's fields>, "expected_revision": N}`; a field the change
    /// does not have is refused, naming it.
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut fields: serde_json::Map<String, Value> = parse_json(body)?;
        let expected_revision = match fields.remove("expected_revision") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| ApiError::bad_request("expected_revision: must be a non-negative integer"))?,
            ),
        };
        let change =
            serde_json::from_value(Value::Object(fields)).map_err(|e| ApiError::bad_request(format!("change: {e}")))?;
        Ok(Self {
            change,
            expected_revision,
        })
    }
}

/// `POST /admin/v1/governance` with a change, e.g.
/// `{"op": "kill", "scope": "corridor:UAE-SA", "reason": "incident 42"}`.
#[utoipa::path(post, path = "/admin/v1/governance", tag = "governance", request_body(content = crate::http::openapi::Object, description = "one change: op, scope, reason, ... (docs/governance.md)", content_type = "application/json"), responses((status = 200, description = "the new state", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn change(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&state, &headers, Need::AnyKey)?;
    governance(&state)?;
    let body = body_of(&state, &headers, body).await?;
    let body = ChangeBody::parse(&body)?;
    // A change confined to one corridor needs the admin role there; any other, everywhere.
    match body.change.corridor() {
        Some(c) => check(&caller, Need::In(Role::Admin, c))?,
        None => check(&caller, Need::Everywhere(Role::Admin))?,
    }
    let actor = caller.id().to_string();
    let service = state.clone();
    let change = body.change.clone();
    // A durable write (fsync) and an audit append: off the async threads.
    let new_state = tokio::task::spawn_blocking(move || service.govern(&change, &actor, body.expected_revision))
        .await
        .map_err(|e| ApiError::from(ServeError::internal(format!("governance change failed: {e}"))))?
        .map_err(ServeError::from)?;
    Ok(Json(
        json!({ "revision": new_state.revision, "change": body.change, "state": *new_state }),
    ))
}

/// Every corridor's governance status.
#[utoipa::path(get, path = "/admin/v1/corridors", tag = "governance", responses((status = 200, description = "every corridor's status", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn corridors(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Need::Everywhere(Role::Admin))?;
    Ok(Json(json!({ "corridors": governance(&state)?.corridors() })))
}

/// One corridor's governance status.
#[utoipa::path(get, path = "/admin/v1/corridors/{corridor}", tag = "governance", params(("corridor" = String, Path, description = "corridor id")), responses((status = 200, description = "the corridor's status", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn corridor(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(corridor): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // Authenticated before the path is judged: a caller without a key learns nothing.
    let caller = authorize(&state, &headers, Need::AnyKey)?;
    let id = CorridorId::parse(&corridor).map_err(|e| ApiError::bad_request(format!("corridor: {e}")))?;
    check(&caller, Need::In(Role::Admin, id.as_str()))?;
    governance(&state)?
        .corridors()
        .into_iter()
        .find(|c| c.corridor == id.as_str())
        .map(|c| Json(json!(c)))
        .ok_or_else(|| ApiError::not_found(format!("unknown corridor '{id}'")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FlagsQuery {
    #[serde(default)]
    corridor: Option<String>,
}

/// `GET /admin/v1/flags[?corridor=ID]`: the flags in force (global, overridden by the
/// corridor's market, overridden by the corridor).
#[utoipa::path(get, path = "/admin/v1/flags", tag = "governance", params(("corridor" = Option<String>, Query, description = "corridor id")), responses((status = 200, description = "flags in force", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn flags(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<FlagsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = authorize(&state, &headers, Need::AnyKey)?;
    let g = governance(&state)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let corridor = match &query.corridor {
        None => {
            check(&caller, Need::Everywhere(Role::Admin))?;
            None
        }
        Some(c) => {
            let id = CorridorId::parse(c).map_err(|e| ApiError::bad_request(format!("corridor: {e}")))?;
            check(&caller, Need::In(Role::Admin, id.as_str()))?;
            if g.topology().market(id.as_str()).is_none() {
                return Err(ApiError::bad_request(format!("corridor: unknown corridor '{id}'")));
            }
            Some(id.to_string())
        }
    };
    let market = corridor.as_deref().and_then(|c| g.topology().market(c));
    Ok(Json(json!({
        "corridor": corridor,
        "market": market,
        "revision": g.state().revision,
        "flags": g.state().flags_for(market, corridor.as_deref()),
    })))
}
