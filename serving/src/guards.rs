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
//! ([`MetricsGuard`]).

use crate::canary::CanaryMonitor;
use crate::pool::RunTimings;
use crate::request::{Routing, Source, Transport};
use crate::stats::Statistics;
use crate::ServeError;
use invariant_auth::Principal;
use std::sync::{Arc, RwLock};
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
    /// The request id.
    pub request_id: Option<&'a str>,
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
}

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

    /// Every guard's observation, in order.
    pub fn observe(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) {
        for g in &self.guards {
            g.observe(ctx, outcome);
        }
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

/// The label set of one `invariant_inference_requests_total` series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Labels {
    model: String,
    version: String,
    corridor: String,
    routing: &'static str,
    source: &'static str,
    status: &'static str,
    transport: &'static str,
}

/// The same labels, borrowed: looked up without allocating.
#[derive(Hash)]
struct LabelsRef<'a> {
    model: &'a str,
    version: &'a str,
    corridor: &'a str,
    routing: &'static str,
    source: &'static str,
    status: &'static str,
    transport: &'static str,
}

impl hashbrown::Equivalent<Labels> for LabelsRef<'_> {
    fn equivalent(&self, k: &Labels) -> bool {
        self.model == k.model
            && self.version == k.version
            && self.corridor == k.corridor
            && self.routing == k.routing
            && self.source == k.source
            && self.status == k.status
            && self.transport == k.transport
    }
}

/// Counts every request once by outcome (`invariant_inference_requests_total`, labels model,
/// version, corridor, routing, source, status, transport). A model the server does not know
/// is counted as `model="unknown"`, so a caller cannot grow the series with names.
#[derive(Debug, Default)]
pub struct MetricsGuard {
    /// Counters by label set, registered once: a repeat costs a hash, a read lock and an add.
    counters: RwLock<hashbrown::HashMap<Labels, metrics::Counter, foldhash::fast::RandomState>>,
}

impl MetricsGuard {
    fn counter(&self, labels: LabelsRef<'_>) -> metrics::Counter {
        if let Some(c) = self.counters.read().unwrap_or_else(|p| p.into_inner()).get(&labels) {
            return c.clone();
        }
        let owned = Labels {
            model: labels.model.to_string(),
            version: labels.version.to_string(),
            corridor: labels.corridor.to_string(),
            routing: labels.routing,
            source: labels.source,
            status: labels.status,
            transport: labels.transport,
        };
        let counter = metrics::counter!(
            "invariant_inference_requests_total",
            "model" => owned.model.clone(),
            "version" => owned.version.clone(),
            "corridor" => owned.corridor.clone(),
            "routing" => owned.routing,
            "source" => owned.source,
            "status" => owned.status,
            "transport" => owned.transport
        );
        self.counters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(owned)
            .or_insert(counter)
            .clone()
    }
}

impl Guard for MetricsGuard {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn observe(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) {
        let (source, status) = match outcome.result {
            Ok(source) => (source.name(), "ok"),
            Err(e) => ("error", e.kind().name()),
        };
        self.counter(LabelsRef {
            model: if ctx.model_known { ctx.model } else { "unknown" },
            version: ctx.version.unwrap_or(""),
            corridor: ctx.corridor.unwrap_or(""),
            routing: ctx.routing.map_or("", Routing::name),
            source,
            status,
            transport: ctx.transport.name(),
        })
        .increment(1);
    }
}
