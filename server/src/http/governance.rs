//! Governance admin API (`/admin/v1/governance`, `/admin/v1/corridors`, `/admin/v1/flags`):
//! the control state and every corridor's level, limits and breakers; changes (kill,
//! revive, freeze, unfreeze, limits, levels, flags) made durable, audited and effective
//! through the serving core.

use crate::http::error::{parse_json, ApiError};
use crate::http::{body_of, AppState};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use invariant_core::CorridorId;
use invariant_governance::state::Change;
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
async fn show(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
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
        "state_file": g.state_path().display().to_string(),
    })))
}

/// A change and who makes it.
#[derive(Deserialize)]
struct ChangeBody {
    #[serde(flatten)]
    change: Change,
    #[serde(default)]
    actor: Option<String>,
    /// Compare-and-set: refused with 409 unless the state is still at this revision.
    #[serde(default)]
    expected_revision: Option<u64>,
}

/// `POST /admin/v1/governance` with a change, e.g.
/// `{"op": "kill", "scope": "corridor:UAE-SA", "reason": "incident 42"}`.
async fn change(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    governance(&state)?;
    let body = body_of(&state, &headers, body).await?;
    let body: ChangeBody = parse_json(&body)?;
    let actor = body
        .actor
        .clone()
        .or_else(|| headers.get("x-actor").and_then(|v| v.to_str().ok()).map(str::to_string))
        .unwrap_or_else(|| "admin-api".into());
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
async fn corridors(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "corridors": governance(&state)?.corridors() })))
}

/// One corridor's governance status.
async fn corridor(State(state): State<AppState>, Path(corridor): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = CorridorId::parse(&corridor).map_err(|e| ApiError::bad_request(format!("corridor: {e}")))?;
    governance(&state)?
        .corridors()
        .into_iter()
        .find(|c| c.corridor == id.as_str())
        .map(|c| Json(json!(c)))
        .ok_or_else(|| ApiError::not_found(format!("unknown corridor '{id}'")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagsQuery {
    #[serde(default)]
    corridor: Option<String>,
}

/// `GET /admin/v1/flags[?corridor=ID]`: the flags in force (global, overridden by the
/// corridor's market, overridden by the corridor).
async fn flags(
    State(state): State<AppState>,
    query: Result<Query<FlagsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let g = governance(&state)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let corridor = match &query.corridor {
        None => None,
        Some(c) => {
            let id = CorridorId::parse(c).map_err(|e| ApiError::bad_request(format!("corridor: {e}")))?;
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
