//! The human review queue behind every transport: the caller needs the `reviewer` (or
//! `admin`) role in the corridor; a killed, frozen or isolated corridor takes no new items but
//! its queue stays workable (claim, resolve, release, escalate); every action is recorded in
//! the corridor's audit chain before it is acknowledged; depth, ages, near-breach items,
//! claims and reviewers are read at scrape time and in the corridor's health.

use crate::request::Metadata;
use crate::{InferenceService, ServeError};
use invariant_auth::{Principal, Role};
use invariant_core::CorridorId;
use invariant_review::{Decision, Item, NewItem, Priority, ReviewError, Status, Summary};
use serde_json::json;

/// A change to one item.
#[derive(Debug, Clone, PartialEq)]
pub enum ReviewAction {
    /// Take it (for `claim_ttl_ms`).
    Claim,
    /// Give a live claim up.
    Release,
    /// Decide it (needs the live claim).
    Resolve {
        /// Approve or reject.
        decision: Decision,
        /// Why.
        note: String,
    },
    /// Raise its priority (to `to`, else one level).
    Escalate {
        /// The new priority.
        to: Option<Priority>,
        /// Why.
        reason: String,
    },
}

impl ReviewAction {
    /// Its name in audit records.
    pub fn name(&self) -> &'static str {
        match self {
            ReviewAction::Claim => "claim",
            ReviewAction::Release => "release",
            ReviewAction::Resolve { .. } => "resolve",
            ReviewAction::Escalate { .. } => "escalate",
        }
    }
}

impl From<ReviewError> for ServeError {
    fn from(e: ReviewError) -> Self {
        match e {
            ReviewError::Invalid(m) => ServeError::invalid(m),
            ReviewError::NotFound(m) => ServeError::not_found(m),
            ReviewError::Conflict(m) => ServeError::Conflict(m),
            ReviewError::Full(message) => ServeError::Overloaded {
                message,
                retry_after_s: 60,
            },
            ReviewError::Store(m) => ServeError::unavailable(format!("review store: {m}")),
        }
    }
}

pub use crate::features::now_ms;

impl InferenceService {
    fn review_queue(&self) -> Result<&invariant_review::Queue, ServeError> {
        self.review
            .as_deref()
            .map_err(|why| ServeError::unavailable(format!("the review queue is not available: {why}")))
    }

    /// The caller, when it may work `corridor`'s queue (a declared corridor, `reviewer` or
    /// `admin` there).
    pub fn reviewer(&self, metadata: &Metadata, corridor: &str) -> Result<(Principal, CorridorId), ServeError> {
        let caller = self.authenticate(metadata)?;
        let id = CorridorId::parse(corridor).map_err(|e| ServeError::invalid(format!("corridor: {e}")))?;
        if !(caller.may(Role::Reviewer, id.as_str()) || caller.may(Role::Admin, id.as_str())) {
            return Err(ServeError::PermissionDenied(format!(
                "API key {} has no 'reviewer' access to corridor '{id}'",
                caller.id()
            )));
        }
        if self.config.corridor(id.as_str()).is_none() {
            return Err(ServeError::not_found(format!("unknown corridor '{id}'")));
        }
        Ok((caller, id))
    }

    fn audit_review(&self, corridor: &str, record: serde_json::Value) -> Result<(), ServeError> {
        self.audit
            .record(Some(corridor), "review", &record)
            .map(|_| ())
            .map_err(|e| ServeError::unavailable(format!("the review change was stored but could not be audited: {e}")))
    }

    /// Adds an item to the corridor's queue (blocking: durable and audited before it returns).
    /// Refused while the corridor is killed, frozen or isolated.
    pub fn review_submit(&self, metadata: &Metadata, corridor: &str, new: &NewItem) -> Result<Item, ServeError> {
        let (caller, id) = self.reviewer(metadata, corridor)?;
        self.review_intake(&id, new, caller.id())
    }

    /// Adds an item to a declared corridor's queue for `actor` (the caller was checked by
    /// whoever asks: a reviewer, or an advisory that needs a person). Durable and audited
    /// before it returns; refused while the corridor is killed, frozen or isolated.
    pub(crate) fn review_intake(&self, id: &CorridorId, new: &NewItem, actor: &str) -> Result<Item, ServeError> {
        if let Some(g) = &self.governance {
            g.feature_write(id.as_str())
                .map_err(|r| crate::governance::refusal_error(id.as_str(), &r))?;
        }
        let item = self.review_queue()?.submit(id.as_str(), new, actor, now_ms())?;
        metrics::counter!("invariant_review_items_total", "corridor" => id.to_string(), "priority" => item.priority.name())
            .increment(1);
        self.audit_review(
            id.as_str(),
            json!({"action": "submit", "id": item.id, "actor": actor, "priority": item.priority,
                   "subject": item.subject, "reason_codes": item.reason_codes, "source": item.source,
                   "deadline": invariant_review::rfc3339_ms(item.deadline_ms)}),
        )?;
        Ok(item)
    }

    /// The corridor's items with one of `statuses`, in queue order (priority, SLA deadline, id).
    pub fn review_list(
        &self,
        metadata: &Metadata,
        corridor: &str,
        statuses: &[Status],
        limit: usize,
    ) -> Result<Vec<Item>, ServeError> {
        let (_, id) = self.reviewer(metadata, corridor)?;
        Ok(self.review_queue()?.list(id.as_str(), statuses, now_ms(), limit)?)
    }

    /// One item.
    pub fn review_get(&self, metadata: &Metadata, corridor: &str, item: &str) -> Result<Item, ServeError> {
        let (_, id) = self.reviewer(metadata, corridor)?;
        Ok(self.review_queue()?.get(id.as_str(), item)?)
    }

    /// Claims, releases, resolves or escalates one item, as the caller (blocking: durable and
    /// audited before it returns). Works while the corridor is killed or frozen.
    pub fn review_act(
        &self,
        metadata: &Metadata,
        corridor: &str,
        item: &str,
        action: &ReviewAction,
    ) -> Result<Item, ServeError> {
        let (caller, id) = self.reviewer(metadata, corridor)?;
        let queue = self.review_queue()?;
        let (c, who, now) = (id.as_str(), caller.id(), now_ms());
        let done = match action {
            ReviewAction::Claim => queue.claim(c, item, who, now)?,
            ReviewAction::Release => queue.release(c, item, who, now)?,
            ReviewAction::Resolve { decision, note } => queue.resolve(c, item, who, *decision, note, now)?,
            ReviewAction::Escalate { to, reason } => queue.escalate(c, item, who, *to, reason, now)?,
        };
        let mut record = json!({"action": action.name(), "id": done.id, "actor": who, "priority": done.priority});
        match action {
            ReviewAction::Resolve { decision, note } => {
                record["decision"] = json!(decision);
                record["note"] = json!(note);
            }
            ReviewAction::Escalate { reason, .. } => record["reason"] = json!(reason),
            ReviewAction::Claim => {
                record["until"] = json!(done.claim.as_ref().map(|cl| invariant_review::rfc3339_ms(cl.until_ms)))
            }
            ReviewAction::Release => {}
        }
        if let ReviewAction::Resolve { decision, .. } = action {
            let decision = match decision {
                Decision::Approve => "approve",
                Decision::Reject => "reject",
            };
            metrics::counter!("invariant_review_resolved_total", "corridor" => id.to_string(), "decision" => decision)
                .increment(1);
        }
        self.audit_review(c, record)?;
        Ok(done)
    }

    /// The corridor's queue at a glance (`None` without a queue, or when its store does not
    /// answer: logged).
    pub fn review_summary(&self, corridor: &str) -> Option<Summary> {
        let queue = self.review.as_ref().ok()?;
        queue
            .summary(corridor, now_ms())
            .inspect_err(|e| tracing::warn!(corridor, "review queue summary: {e}"))
            .ok()
    }
}

/// Sets the queue gauges of every declared corridor (called at scrape time).
pub(crate) fn record_gauges(service: &InferenceService) {
    if service.review.is_err() {
        return;
    }
    for c in &service.config.corridors {
        // A store that does not answer leaves the gauges as they were (and is logged).
        let Some(s) = service.review_summary(c.id.as_str()) else {
            continue;
        };
        let corridor = c.id.to_string();
        for p in Priority::ALL {
            let labels = [("corridor", corridor.clone()), ("priority", p.name().to_string())];
            metrics::gauge!("invariant_review_queue_depth", &labels).set(s.depth.get(&p).copied().unwrap_or(0) as f64);
            metrics::gauge!("invariant_review_oldest_age_seconds", &labels)
                .set(s.oldest_age_seconds.get(&p).copied().unwrap_or(0.0));
            metrics::gauge!("invariant_review_near_breach", &labels)
                .set(s.near_breach.get(&p).copied().unwrap_or(0) as f64);
            metrics::gauge!("invariant_review_breached", &labels).set(s.breached.get(&p).copied().unwrap_or(0) as f64);
        }
        metrics::gauge!("invariant_review_claimed_items", "corridor" => corridor.clone()).set(s.claimed as f64);
        metrics::gauge!("invariant_review_active_reviewers", "corridor" => corridor).set(s.active_reviewers as f64);
    }
}
