//! The guard pipeline: an ordered list of [`Guard`]s. Each answer is admitted by every guard
//! in order before the cache or an engine is touched (the first refusal stops it), and every
//! outcome, refused, failed or answered, from a computed answer to a stored reply, is then
//! observed by every guard in order.
//!
//! A guard may also admit a request early, before its body is parsed, when the transport
//! named its corridor outside the body ([`Guard::admit_early`]): corridor governance refuses
//! over-limit and killed work there, before it costs a parse.
//!
//! The pipeline holds corridor governance ([`crate::governance::GovernanceGuard`]: kill
//! switches, freezes, rate limits, circuit breakers, degradation levels), the canary monitor
//! ([`CanaryGuard`]), the serving statistics ([`StatsGuard`]) and the request metrics
//! ([`crate::telemetry::MetricsGuard`]) and the audit record ([`crate::audit::AuditGuard`]).

use crate::canary::CanaryMonitor;
use crate::pool::RunTimings;
use crate::request::{Routing, Source, Transport};
use crate::stats::Statistics;
use crate::ServeError;
use invariant_auth::Principal;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What a guard knows of a request. Fields the request never reached are `None` (a body that
/// did not decode has no corridor; an unknown model has no version).
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The transport.
    pub transport: Transport,
    /// When the request arrived.
    pub started: Instant,
    /// The model as named by the request.
    pub model: &'a str,
    /// Whether the model exists (a bounded metrics label needs it: unknown names are not kept).
    pub model_known: bool,
    /// The version chosen, once routed.
    pub version: Option<&'a str>,
    /// How it was chosen, once routed.
    pub routing: Option<Routing>,
    /// The corridor, once resolved.
    pub corridor: Option<&'a str>,
    /// The request id (the transport's: `x-request-id`, a `traceparent`'s trace id, or
    /// generated).
    pub request_id: Option<&'a str>,
    /// The id the body carried (`id`), echoed in the reply.
    pub body_id: Option<&'a str>,
    /// The authenticated caller (`None` until, or unless, its key was accepted).
    pub caller: Option<&'a Principal>,
    /// Whether the guards already admitted this request before its body was parsed.
    pub admitted_early: bool,
    /// Whether the caller shortened the deadline (`x-deadline-ms`, a gRPC timeout) below the
    /// server's own: its expiry is then the caller's choice, not a fault of the model.
    pub caller_deadline: bool,
    /// The routed version's declared fallback (`Refuse` before routing).
    pub fallback: invariant_registry::Fallback,
}

/// How a guard lets a request through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Serve it in full.
    Full,
    /// Compute nothing: serve it from the cache, else (when `rules` and the version declares
    /// them) from its fallback rules, flagged as degraded; otherwise refuse with `reason`.
    CacheOnly {
        /// Why (for the reply's `degraded_reason` and the refusal of a miss).
        reason: String,
        /// Whether the version's fallback rules may answer a miss.
        rules: bool,
    },
}

/// How a request ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// Where the answer came from, or why there is none.
    pub result: Result<Source, &'a ServeError>,
    /// Time from arrival to the answer.
    pub elapsed: Duration,
    /// The engine run's timings, when this request ran one.
    pub run: Option<RunTimings>,
    /// Rows (batch entries) the request carried, when known.
    pub rows: usize,
    /// Whether a guard refused it (its error is a refusal, not a failure of the model).
    pub refused: bool,
    /// What was answered, when something was.
    pub answer: Option<Answer<'a>>,
    /// Time spent fetching features for it.
    pub features: Option<Duration>,
}

/// The facts of an answer that its audit record keeps.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The canonical inference key (blake3 hex of corridor, model, version, artifact and
    /// inputs).
    pub key: &'a str,
    /// The outputs returned, or their hash when only that is kept (a stored reply).
    pub outputs: AnswerOutputs<'a>,
    /// Whether it was flagged as degraded.
    pub degraded: bool,
    /// The inputs, kept when the model retains them.
    pub retained: Option<&'a crate::audit::Retained>,
}

/// An answer's outputs, or their [`crate::audit::output_hash`].
#[derive(Debug, Clone, Copy)]
pub enum AnswerOutputs<'a> {
    /// The tensors returned.
    Tensors(&'a [invariant_core::Tensor]),
    /// Their hash.
    Hash(&'a str),
}

/// Work an answer must wait for before it is sent (a durable audit record); its error
/// replaces the answer.
pub type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ServeError>> + Send>>;

/// One step of the pipeline.
pub trait Guard: Send + Sync + std::fmt::Debug {
    /// A short name (for logs and tests).
    fn name(&self) -> &'static str;

    /// Admits the request before its body is parsed (the context has its model and corridor,
    /// no version), or refuses it. A request admitted early is admitted again after routing
    /// with `admitted_early` set.
    fn admit_early(&self, _ctx: &RequestContext<'_>) -> Result<(), ServeError> {
        Ok(())
    }

    /// Admits the routed request, or refuses it with the error its caller gets.
    fn admit(&self, _ctx: &RequestContext<'_>) -> Result<Admit, ServeError> {
        Ok(Admit::Full)
    }

    /// Whether a transport's stored reply may answer this request as it is (false when the
    /// answer would have to be flagged or refused).
    fn allows_stored_reply(&self, _ctx: &RequestContext<'_>) -> bool {
        true
    }

    /// Sees how the request ended (every request, admitted or not).
    fn observe(&self, _ctx: &RequestContext<'_>, _outcome: &Outcome<'_>) {}

    /// [`Guard::observe`] for a guard whose observation the answer must wait for: returns
    /// that wait (a durable audit record). The default observes and returns nothing.
    fn observe_pending(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) -> Option<Pending> {
        self.observe(ctx, outcome);
        None
    }
}

/// The ordered guards.
#[derive(Debug)]
pub struct Pipeline {
    guards: Vec<Box<dyn Guard>>,
}

impl Pipeline {
    /// A pipeline running `guards` in this order.
    pub fn new(guards: Vec<Box<dyn Guard>>) -> Self {
        Self { guards }
    }

    /// Every guard's early admission, in order; the first refusal is the answer.
    pub fn admit_early(&self, ctx: &RequestContext<'_>) -> Result<(), ServeError> {
        self.guards.iter().try_for_each(|g| g.admit_early(ctx))
    }

    /// Every guard's admission, in order; the first refusal is the answer, the first
    /// cache-only admission holds.
    pub fn admit(&self, ctx: &RequestContext<'_>) -> Result<Admit, ServeError> {
        let mut admit = Admit::Full;
        for g in &self.guards {
            match g.admit(ctx)? {
                Admit::Full => {}
                cache_only if admit == Admit::Full => admit = cache_only,
                Admit::CacheOnly { .. } => {}
            }
        }
        Ok(admit)
    }

    /// Whether every guard lets a stored reply answer as it is.
    pub fn allows_stored_reply(&self, ctx: &RequestContext<'_>) -> bool {
        self.guards.iter().all(|g| g.allows_stored_reply(ctx))
    }

    /// Every guard's observation, in order; returns what the answer must wait for.
    pub fn observe(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) -> Vec<Pending> {
        self.guards
            .iter()
            .filter_map(|g| g.observe_pending(ctx, outcome))
            .collect()
    }

    /// Waits for `pending`; the first failure replaces an answer (a failed request stays
    /// failed as it was).
    pub async fn settle<T>(result: Result<T, ServeError>, pending: Vec<Pending>) -> Result<T, ServeError> {
        let mut result = result;
        for p in pending {
            if let (Err(e), true) = (p.await, result.is_ok()) {
                result = Err(e);
            }
        }
        result
    }

    /// The guards' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.guards.iter().map(|g| g.name()).collect()
    }
}

/// An order to roll a canary back, sent by [`CanaryGuard`] to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackOrder {
    /// Model.
    pub model: String,
    /// The canary version.
    pub version: String,
    /// Which limit it broke.
    pub reason: String,
}

/// Feeds canary-routed outcomes to the [`CanaryMonitor`]; when a canary breaks its limits,
/// orders its rollback.
#[derive(Debug)]
pub struct CanaryGuard {
    monitor: CanaryMonitor,
    orders: tokio::sync::mpsc::UnboundedSender<RollbackOrder>,
}

impl CanaryGuard {
    /// The guard and the receiving end of its rollback orders.
    pub fn new(monitor: CanaryMonitor) -> (Self, tokio::sync::mpsc::UnboundedReceiver<RollbackOrder>) {
        let (orders, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self { monitor, orders }, rx)
    }
}

impl Guard for CanaryGuard {
    fn name(&self) -> &'static str {
        "canary"
    }

    fn observe(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) {
        let (Some(Routing::Canary), Some(version), false) = (ctx.routing, ctx.version, outcome.refused) else {
            return;
        };
        let ok = outcome.result.map_or_else(|e| !e.kind().is_server_fault(), |_| true);
        if let Some(reason) = self.monitor.record(ctx.model, version, ok, outcome.elapsed) {
            tracing::warn!(model = ctx.model, version, %reason, "rolling back canary automatically");
            let _ = self.orders.send(RollbackOrder {
                model: ctx.model.to_string(),
                version: version.to_string(),
                reason,
            });
        }
    }
}

/// Records each outcome in the per-version [`Statistics`].
#[derive(Debug)]
pub struct StatsGuard {
    stats: Arc<Statistics>,
}

impl StatsGuard {
    /// A guard writing to `stats`.
    pub fn new(stats: Arc<Statistics>) -> Self {
        Self { stats }
    }
}

impl Guard for StatsGuard {
    fn name(&self) -> &'static str {
        "statistics"
    }

    fn observe(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) {
        if let Some(version) = ctx.version {
            self.stats.version(ctx.model, version).record(outcome);
        }
    }
}
