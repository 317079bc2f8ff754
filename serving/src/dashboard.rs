//! The ops dashboard's data: one read of everything an operator watches, for the corridors
//! the caller may see (`admin` or `reviewer` there). Per corridor: readiness, degradation
//! level, kill switches and freezes, breakers, rate-limit use, the last minute's p50/p99,
//! error and cache-hit ratios with a five-minute series for the charts, and the review queue
//! (depth by priority, near-breach and breached items, the first open items). Per model: its
//! versions, lifecycle, verification, and traffic split; per pipeline version: the same.
//! Served as JSON by the transports (`GET /admin/v1/dashboard`), polled by the page.

use crate::health::SERIES_SECONDS;
use crate::request::Metadata;
use crate::{InferenceService, ServeError};
use invariant_auth::Role;
use invariant_review::Status;
use serde_json::{json, Value};

/// The step of each corridor's series, in seconds.
pub const SERIES_STEP_SECONDS: u64 = 10;

/// Open items listed per corridor.
const ITEMS_SHOWN: usize = 25;

/// Each version's share of a model's traffic in `corridor`, in percent, from its registry view
/// (`active`, `corridor_active`, `canary`): the canary's share where it applies, the rest to
/// the corridor's active version.
fn traffic(view: &Value, corridor: &str) -> Value {
    let active = view["corridor_active"][corridor]
        .as_str()
        .or_else(|| view["active"].as_str())
        .map(str::to_string);
    let canary = &view["canary"];
    let applies = canary.is_object()
        && canary["corridors"]
            .as_array()
            .is_none_or(|c| c.is_empty() || c.iter().any(|x| x == corridor));
    let mut split = serde_json::Map::new();
    let mut rest = 100.0;
    if applies {
        if let (Some(v), Some(p)) = (canary["version"].as_str(), canary["percent"].as_f64()) {
            split.insert(v.to_string(), json!(p));
            rest -= p;
        }
    }
    if let Some(a) = active {
        if rest > 0.0 {
            let before = split.get(&a).and_then(Value::as_f64).unwrap_or(0.0);
            split.insert(a, json!(before + rest));
        }
    }
    Value::Object(split)
}

impl InferenceService {
    /// The dashboard's data for the caller (403 for a key with neither `admin` nor `reviewer`
    /// in any corridor).
    pub async fn dashboard(&self, metadata: &Metadata) -> Result<Value, ServeError> {
        let caller = self.authenticate(metadata)?;
        let visible: Vec<String> = self
            .config
            .corridors
            .iter()
            .map(|c| c.id.to_string())
            .filter(|c| caller.may(Role::Admin, c) || caller.may(Role::Reviewer, c))
            .collect();
        if visible.is_empty() {
            return Err(ServeError::PermissionDenied(format!(
                "API key {} has neither the 'admin' nor the 'reviewer' role in any corridor",
                caller.id()
            )));
        }
        let snapshot = self.snapshot();
        let views: Vec<Value> = snapshot
            .table
            .names()
            .filter_map(|m| crate::control::model_view(&snapshot, m))
            .collect();
        let now = crate::features::now_ms();
        let share = self.config.review.near_breach_share;
        let mut corridors = Vec::with_capacity(visible.len());
        for id in &visible {
            let Some(health) = self.corridor_health(id).await else {
                continue;
            };
            let items: Vec<Value> = match &self.review {
                Ok(queue) => queue
                    .list(id, &[Status::Open, Status::Claimed], now, ITEMS_SHOWN)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|item| {
                        let sla = self.config.review.sla_ms(item.priority);
                        json!({
                            "id": item.id, "priority": item.priority, "subject": item.subject,
                            "reason_codes": item.reason_codes, "source": item.source,
                            "deadline": invariant_review::rfc3339_ms(item.deadline_ms),
                            "seconds_left": (item.deadline_ms - now) / 1000,
                            "near_breach": item.near_breach(now, sla, share),
                            "breached": item.breached(now),
                            "claimed_by": item.claim.as_ref().map(|c| c.by.clone()),
                        })
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            let models: Vec<Value> = views
                .iter()
                .map(|v| json!({"name": v["name"], "traffic": traffic(v, id)}))
                .collect();
            corridors.push(json!({
                "corridor": id,
                "admin": caller.may(Role::Admin, id),
                "health": health,
                "series": self.recent.series(id, SERIES_STEP_SECONDS),
                "review_items": items,
                "models": models,
            }));
        }
        let server = self.server_health().await;
        let registry = &snapshot.registry;
        Ok(json!({
            "caller": caller.id(),
            "server": server,
            "series_seconds": SERIES_SECONDS,
            "series_step_seconds": SERIES_STEP_SECONDS,
            "corridors": corridors,
            "models": views,
            "pipelines": self.pipelines().views(registry),
            "governance_enabled": self.governance.is_some(),
        }))
    }
}
