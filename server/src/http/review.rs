//! The human review queue over HTTP (`/v1/corridors/{corridor}/review/…`): list, submit,
//! show, claim, release, resolve, escalate, and the queue summary. Every rule is the serving
//! core's ([`invariant_serving::review`]); this module decodes, calls off the async threads
//! (each change is fsynced and audited) and encodes.

use crate::http::error::{parse_json, ApiError, Path};
use crate::http::{body_of, metadata_of, AppState};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use invariant_review::{Decision, NewItem, Priority, Status};
use invariant_serving::review::ReviewAction;
use invariant_serving::ServeError;
use serde::Deserialize;
use serde_json::{json, Value};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/corridors/{corridor}/review/items", get(list).post(submit))
        .route("/v1/corridors/{corridor}/review/items/{id}", get(show))
        .route("/v1/corridors/{corridor}/review/items/{id}/{action}", post(act))
        .route("/v1/corridors/{corridor}/review/summary", get(summary))
}

/// The most items one list returns.
const MAX_LIMIT: usize = 1000;

/// Which items to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Comma-separated statuses: `open`, `claimed`, `resolved` (default `open,claimed`).
    #[serde(default)]
    status: Option<String>,
    /// At most this many, in queue order (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServeError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServeError::internal(format!("review task failed: {e}")))??)
}

/// The corridor's items, in queue order: priority, SLA deadline, id.
#[utoipa::path(get, path = "/v1/corridors/{corridor}/review/items", tag = "review", params(("corridor" = String, Path, description = "corridor id"), ListQuery), responses((status = 200, description = "the items, in queue order", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(corridor): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let query = query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let statuses = match query.status.as_deref() {
        None => vec![Status::Open, Status::Claimed],
        Some(text) => text
            .split(',')
            .map(|s| match s.trim() {
                "open" => Ok(Status::Open),
                "claimed" => Ok(Status::Claimed),
                "resolved" => Ok(Status::Resolved),
                other => Err(ApiError::bad_request(format!(
                    "status: '{other}' is not open, claimed or resolved"
                ))),
            })
            .collect::<Result<_, _>>()?,
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!("limit: must be 1 to {MAX_LIMIT}")));
    }
    let items = state.review_list(&metadata_of(&headers), &corridor, &statuses, limit)?;
    let now = invariant_serving::review::now_ms();
    let rows: Vec<Value> = items.iter().map(|i| view(i, now)).collect();
    Ok(Json(
        json!({ "corridor": corridor.to_ascii_uppercase(), "items": rows }),
    ))
}

/// An item with its status now.
fn view(item: &invariant_review::Item, now: i64) -> Value {
    let mut v = json!(item);
    v["status"] = json!(item.status(now));
    v["deadline"] = json!(invariant_review::rfc3339_ms(item.deadline_ms));
    v["breached"] = json!(item.breached(now));
    v
}

/// Adds an item, e.g. `{"priority": "P1", "subject": "order:8812", "reason_codes":
/// ["HIGH_VALUE_OVER_1000"], "facts": {"amount": 1800}}`.
#[utoipa::path(post, path = "/v1/corridors/{corridor}/review/items", tag = "review", params(("corridor" = String, Path, description = "corridor id")), request_body(content = crate::http::openapi::Object, description = "priority (P0-P5), subject, reason_codes, facts, source", content_type = "application/json"), responses((status = 200, description = "the new item", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(corridor): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let metadata = metadata_of(&headers);
    // The caller first: a caller without a key learns nothing from the body's errors.
    state.reviewer(&metadata, &corridor)?;
    let body = body_of(&state, &headers, body).await?;
    let new: NewItem = parse_json(&body)?;
    let service = state.clone();
    let item = blocking(move || service.review_submit(&metadata, &corridor, &new)).await?;
    Ok(Json(view(&item, invariant_serving::review::now_ms())))
}

/// One item.
#[utoipa::path(get, path = "/v1/corridors/{corridor}/review/items/{id}", tag = "review", params(("corridor" = String, Path, description = "corridor id"), ("id" = String, Path, description = "item id")), responses((status = 200, description = "the item", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((corridor, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let item = state.review_get(&metadata_of(&headers), &corridor, &id)?;
    Ok(Json(view(&item, invariant_serving::review::now_ms())))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActBody {
    #[serde(default)]
    decision: Option<Decision>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `claim`, `release`, `resolve` (`{"decision": "approve"|"reject", "note": "…"}`) or
/// `escalate` (`{"reason": "…", "to": "P0"}`, `to` optional: one level up).
#[utoipa::path(post, path = "/v1/corridors/{corridor}/review/items/{id}/{action}", tag = "review", params(("corridor" = String, Path, description = "corridor id"), ("id" = String, Path, description = "item id"), ("action" = String, Path, description = "claim, release, resolve or escalate")), request_body(content = crate::http::openapi::Object, description = "resolve: decision and note; escalate: reason and optional to", content_type = "application/json"), responses((status = 200, description = "the item after the action", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((corridor, id, action)): Path<(String, String, String)>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let metadata = metadata_of(&headers);
    state.reviewer(&metadata, &corridor)?;
    let bytes = body_of(&state, &headers, body).await?;
    let body: ActBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        ActBody::default()
    } else {
        parse_json(&bytes)?
    };
    let action = match action.as_str() {
        "claim" => ReviewAction::Claim,
        "release" => ReviewAction::Release,
        "resolve" => ReviewAction::Resolve {
            decision: body
                .decision
                .ok_or_else(|| ApiError::bad_request("decision: required, \"approve\" or \"reject\""))?,
            note: body.note.unwrap_or_default(),
        },
        "escalate" => ReviewAction::Escalate {
            to: body
                .to
                .as_deref()
                .map(Priority::parse)
                .transpose()
                .map_err(|e| ApiError::bad_request(format!("to: {e}")))?,
            reason: body
                .reason
                .ok_or_else(|| ApiError::bad_request("reason: required to escalate"))?,
        },
        other => {
            return Err(ApiError::not_found(format!(
                "no review action '{other}': use claim, release, resolve or escalate"
            )))
        }
    };
    let service = state.clone();
    let item = blocking(move || service.review_act(&metadata, &corridor, &id, &action)).await?;
    Ok(Json(view(&item, invariant_serving::review::now_ms())))
}

/// The queue at a glance: depth, oldest age, near-breach and breached items by priority,
/// claims, reviewers and the overflow signals that fire.
#[utoipa::path(get, path = "/v1/corridors/{corridor}/review/summary", tag = "review", params(("corridor" = String, Path, description = "corridor id")), responses((status = 200, description = "the summary", body = crate::http::openapi::Object), crate::http::openapi::Errors))]
pub(crate) async fn summary(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(corridor): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, id) = state.reviewer(&metadata_of(&headers), &corridor)?;
    let summary = state
        .review_summary(id.as_str())
        .ok_or_else(|| ApiError::from(ServeError::unavailable("the review queue is not available")))?;
    Ok(Json(json!(summary)))
}
