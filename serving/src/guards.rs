//! The guard pipeline: an ordered list of [`Guard`]s. Each answer is admitted by every guard
//! in order before the cache or an engine is touched (the first refusal stops it), and every
//! outcome, refused, failed or answered, from a computed answer to a stored reply, is then
//! observed by every guard in order.
//!
//! Today the pipeline holds the canary monitor ([`CanaryGuard`]), the serving statistics
//! ([`StatsGuard`]) and the request metrics ([`MetricsGuard`]); kill switches, rate limits,
//! circuit breakers, authorisation and the audit record are guards of the same kind.

use crate::canary::CanaryMonitor;
use crate::pool::RunTimings;
use crate::request::{Caller, Routing, Source, Transport};
use crate::stats::Statistics;
use crate::ServeError;
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
    /// The caller.
    pub caller: &'a Caller,
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
}

/// One step of the pipeline.
pub trait Guard: Send + Sync + std::fmt::Debug {
    /// A short name (for logs and tests).
    fn name(&self) -> &'static str;

    /// Admits the request, or refuses it with the error its caller gets.
    fn admit(&self, _ctx: &RequestContext<'_>) -> Result<(), ServeError> {
        Ok(())
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

    /// Every guard's admission, in order; the first refusal is the answer.
    pub fn admit(&self, ctx: &RequestContext<'_>) -> Result<(), ServeError> {
        self.guards.iter().try_for_each(|g| g.admit(ctx))
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
        let (Some(Routing::Canary), Some(version)) = (ctx.routing, ctx.version) else {
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
