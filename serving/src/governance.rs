//! Corridor governance as a guard of the pipeline ([`GovernanceGuard`]), its background task
//! (re-reading the shared control state, recomputing degradation levels, auditing level and
//! breaker changes) and the control-plane call that changes the state
//! ([`InferenceService::govern`]).
//!
//! Behaviour per degradation level (a corridor's effective level: the operator's, else the one
//! its signals compute; the emergency switch makes every corridor 4):
//! - 0 full service;
//! - 1 AI degraded: models that declare a fallback (`cache` or `rules`) answer from the cache,
//!   else from their rules, flagged; the others compute as usual;
//! - 2 corridor degraded: every answer comes from the cache or the model's rules, flagged;
//!   otherwise it is refused (503);
//! - 3 corridor isolated: as 2, and feature writes are refused;
//! - 4 emergency: every request of the corridor is refused (503).
//!
//! An open circuit breaker answers from the cache, else the model's rules (flagged), when the
//! model declares a fallback, else refuses fast with 503.

use crate::guards::{Admit, Guard, Outcome, RequestContext};
use crate::request::Source;
use crate::{ErrorKind, InferenceService, ServeError};
use invariant_governance::breaker::BreakerChange;
use invariant_governance::state::{Change, ControlState};
use invariant_governance::store::StoreError;
use invariant_governance::{Governance, LevelChange, Refusal};
use invariant_registry::Fallback;
use serde::Serialize;
use std::sync::Arc;

/// A governance refusal as the request path's error: rate limits are `Overloaded` (429 /
/// RESOURCE_EXHAUSTED, with the bucket's retry-after), everything else `Unavailable` (503 /
/// UNAVAILABLE), with the refusal's text (which switch, freeze or level, since when, why).
pub fn refusal_error(corridor: &str, r: &Refusal) -> ServeError {
    let reason = match r {
        Refusal::Killed { .. } => "killed",
        Refusal::Frozen { .. } => "frozen",
        Refusal::Limited(_) => "rate_limited",
        Refusal::BreakerOpen { .. } => "breaker_open",
        Refusal::Degraded { .. } => "degraded",
    };
    metrics::counter!("invariant_rejected_requests_total", "corridor" => corridor.to_string(), "reason" => reason)
        .increment(1);
    match r {
        Refusal::Limited(_) => ServeError::Overloaded {
            message: r.to_string(),
            retry_after_s: r.retry_after_s().unwrap_or(1).min(u64::from(u32::MAX)) as u32,
        },
        _ => ServeError::unavailable(r.to_string()),
    }
}

/// What the governance task audits besides level changes.
#[derive(Debug)]
pub enum GovernanceEvent {
    /// A breaker changed state.
    Breaker(BreakerChange),
}

/// Kill switches, freezes, rate limits, breakers and degradation levels, in the pipeline.
#[derive(Debug)]
pub struct GovernanceGuard {
    governance: Arc<Governance>,
    events: tokio::sync::mpsc::UnboundedSender<GovernanceEvent>,
}

impl GovernanceGuard {
    /// The guard and the receiving end of its events.
    pub fn new(governance: Arc<Governance>) -> (Self, tokio::sync::mpsc::UnboundedReceiver<GovernanceEvent>) {
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self { governance, events }, rx)
    }

    fn entry(&self, ctx: &RequestContext<'_>) -> Result<(), ServeError> {
        let Some(corridor) = ctx.corridor else {
            return Ok(());
        };
        self.governance
            .admit(corridor, ctx.model)
            .map_err(|r| refusal_error(corridor, &r))
    }

    fn breaker_event(&self, change: Option<BreakerChange>) {
        if let Some(c) = change {
            let _ = self.events.send(GovernanceEvent::Breaker(c));
        }
    }
}

impl Guard for GovernanceGuard {
    fn name(&self) -> &'static str {
        "governance"
    }

    fn admit_early(&self, ctx: &RequestContext<'_>) -> Result<(), ServeError> {
        self.entry(ctx)
    }

    fn admit(&self, ctx: &RequestContext<'_>) -> Result<Admit, ServeError> {
        if !ctx.admitted_early {
            self.entry(ctx)?;
        }
        let Some(corridor) = ctx.corridor else {
            return Ok(Admit::Full);
        };
        let (mode, change) = self.governance.mode(corridor, ctx.model);
        self.breaker_event(change);
        let level_refusal = |what| Refusal::Degraded {
            corridor: corridor.to_string(),
            level: mode.level,
            what,
        };
        if mode.level >= 4 {
            return Err(refusal_error(corridor, &level_refusal("every request is refused")));
        }
        let declared = ctx.fallback != Fallback::Refuse;
        let degraded = |what, rules| Admit::CacheOnly {
            reason: level_refusal(what).to_string(),
            rules,
        };
        if let Some(retry_after) = mode.breaker_open {
            let open = Refusal::BreakerOpen {
                corridor: corridor.to_string(),
                model: ctx.model.to_string(),
                retry_after,
            };
            if !declared {
                return Err(refusal_error(corridor, &open));
            }
            return Ok(Admit::CacheOnly {
                reason: open.to_string(),
                rules: mode.level < 3,
            });
        }
        match mode.level {
            3 => Ok(degraded("only cached answers are served", false)),
            2 => Ok(degraded("only cached or rule-based answers are served", true)),
            1 if declared => Ok(degraded("answers come from the model's declared fallback", true)),
            _ => Ok(Admit::Full),
        }
    }

    fn allows_stored_reply(&self, ctx: &RequestContext<'_>) -> bool {
        ctx.corridor
            .is_none_or(|c| self.governance.is_full_service(c, ctx.model))
    }

    fn observe(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) {
        let (Some(corridor), Some(_)) = (ctx.corridor, ctx.version) else {
            return;
        };
        // Refusals prove nothing about the model; a canary's failures are the canary
        // monitor's to act on (it rolls the canary back), not a reason to break or degrade the
        // version that serves the corridor.
        if outcome.refused || ctx.routing == Some(crate::request::Routing::Canary) {
            return;
        }
        // Answers and the failures that are the model's or the corridor's (an engine error, a
        // timeout) count; the caller's mistakes and refusals count for neither the breaker
        // nor the window, and a fallback answer proves nothing about the model.
        let failed = match outcome.result {
            Ok(Source::Fallback) => return,
            Ok(_) => false,
            Err(e) => match e.kind() {
                ErrorKind::Internal => true,
                // A deadline the caller shortened is the caller's choice: counting it would let
                // any caller open a breaker (or degrade the corridor) for everyone.
                ErrorKind::DeadlineExceeded if !ctx.caller_deadline => true,
                _ => return,
            },
        };
        let change = self.governance.observe(corridor, ctx.model, outcome.elapsed, failed);
        self.breaker_event(change);
    }
}

/// The audit record of a governance change.
#[derive(Debug, Serialize)]
struct ChangeRecord<'a> {
    actor: &'a str,
    change: &'a Change,
    revision: u64,
}

/// The audit record of a level change.
#[derive(Debug, Serialize)]
struct LevelRecord<'a> {
    #[serde(flatten)]
    change: &'a LevelChange,
}

/// The audit record of a breaker change.
#[derive(Debug, Serialize)]
struct BreakerRecord<'a> {
    corridor: &'a str,
    model: &'a str,
    from: &'a str,
    to: &'a str,
}

/// Why a governance change was not made.
#[derive(Debug, thiserror::Error)]
pub enum GovernError {
    /// Governance is disabled in the configuration.
    #[error("governance is disabled (governance.enabled = false)")]
    Disabled,
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<GovernError> for ServeError {
    fn from(e: GovernError) -> Self {
        use invariant_governance::state::ChangeError;
        match &e {
            GovernError::Disabled => ServeError::Conflict(e.to_string()),
            GovernError::Store(StoreError::Conflict { .. }) => ServeError::Conflict(e.to_string()),
            GovernError::Store(StoreError::Change(ChangeError::Invalid(_))) => ServeError::invalid(e.to_string()),
            GovernError::Store(StoreError::Change(ChangeError::NotSet(_))) => ServeError::not_found(e.to_string()),
            GovernError::Store(StoreError::Unavailable(invariant_control::ControlError::Corrupt { .. })) => {
                ServeError::internal(e.to_string())
            }
            GovernError::Store(StoreError::Unavailable(_)) => ServeError::unavailable(e.to_string()),
        }
    }
}

/// Applies a governance change to a store and audits it (a durable append) before answering;
/// shared by the server's admin API and the CLI working on the state file directly.
pub fn apply_change(
    governance: &Governance,
    audit: &crate::audit::AuditLog,
    change: &Change,
    actor: &str,
    expected_revision: Option<u64>,
) -> Result<Arc<ControlState>, GovernError> {
    let state = governance.change(change, actor, expected_revision)?;
    let record = ChangeRecord {
        actor,
        change,
        revision: state.revision,
    };
    let _ = audit.record(change.corridor(), "governance", &record);
    Ok(state)
}

impl InferenceService {
    /// Makes a governance change: durable (compare-and-set on `expected_revision` when given)
    /// and audited before it returns; effective at once here and within `refresh_ms` on every
    /// process sharing the state file.
    pub fn govern(
        &self,
        change: &Change,
        actor: &str,
        expected_revision: Option<u64>,
    ) -> Result<Arc<ControlState>, GovernError> {
        let governance = self.governance.as_ref().ok_or(GovernError::Disabled)?;
        let state = apply_change(governance, &self.audit, change, actor, expected_revision)?;
        self.after_tick(governance.tick());
        Ok(state)
    }

    /// Audits, logs and publishes level changes.
    fn after_tick(&self, changes: Vec<LevelChange>) {
        for c in changes {
            tracing::warn!(corridor = %c.corridor, from = c.from, to = c.to, reason = %c.reason, "degradation level changed");
            metrics::gauge!("invariant_corridor_degradation_level", "corridor" => c.corridor.clone())
                .set(f64::from(c.to));
            let record = LevelRecord { change: &c };
            let _ = self.audit.record(Some(&c.corridor), "degradation", &record);
        }
    }

    fn breaker_changed(&self, c: &BreakerChange) {
        tracing::warn!(corridor = %c.corridor, model = %c.model, from = c.from, to = c.to, "circuit breaker changed");
        let open = if c.to == "open" { 1.0 } else { 0.0 };
        metrics::gauge!("invariant_circuit_breaker_open", "corridor" => c.corridor.clone(), "model" => c.model.clone())
            .set(open);
        let record = BreakerRecord {
            corridor: &c.corridor,
            model: &c.model,
            from: c.from,
            to: c.to,
        };
        let _ = self.audit.record(Some(&c.corridor), "circuit_breaker", &record);
    }
}

/// Starts the governance task (when a Tokio runtime is running): every `refresh_ms` it
/// recomputes levels (the control state itself is kept current by the convergence watcher);
/// it audits level and breaker changes as they come.
pub(crate) fn spawn_governance_task(
    service: &Arc<InferenceService>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<GovernanceEvent>,
) {
    let Some(governance) = service.governance.clone() else {
        return;
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for c in governance.corridors() {
        metrics::gauge!("invariant_corridor_degradation_level", "corridor" => c.corridor.clone())
            .set(f64::from(c.level));
    }
    let weak = Arc::downgrade(service);
    let period = std::time::Duration::from_millis(governance.settings().refresh_ms.max(10));
    handle.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let Some(service) = weak.upgrade() else { return };
                    let g = governance.clone();
                    // Audit appends (fsync) stay off the runtime's threads.
                    let _ = tokio::task::spawn_blocking(move || service.after_tick(g.tick()))
                    .await;
                }
                event = events.recv() => {
                    let Some(service) = weak.upgrade() else { return };
                    match event {
                        Some(GovernanceEvent::Breaker(c)) => {
                            let _ = tokio::task::spawn_blocking(move || service.breaker_changed(&c)).await;
                        }
                        None => return,
                    }
                }
            }
        }
    });
}
