//! Metrics of the serving core, in Prometheus text: the recorder (histogram buckets suited
//! to 10 µs – 10 s, a `# HELP` for every family), the [`MetricsGuard`] that counts every
//! request once by outcome and records its latencies, and [`InferenceService::collect_metrics`],
//! which sets the gauges read at scrape time (cache, pools, governance).
//!
//! Every label is bounded: model names the server knows (others are `unknown`), versions,
//! declared corridors, fixed enums. Nothing per entity, request or key.

use crate::guards::{Guard, Outcome, RequestContext};
use crate::request::Routing;
use crate::InferenceService;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::hash::BuildHasher;
use std::sync::RwLock;

/// Latency buckets (seconds): 10 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 22] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
    0.5, 0.75, 1.0, 2.0, 2.5, 5.0, 10.0,
];

/// Batch size buckets (requests per engine run).
pub const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Feature age buckets (seconds): 1 s to a week.
pub const AGE_BUCKETS: [f64; 10] = [
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    6.0 * 3600.0,
    86400.0,
    2.0 * 86400.0,
    7.0 * 86400.0,
];

/// Every metric family: name, kind, unit, help.
const FAMILIES: &[(&str, Kind, Option<Unit>, &str)] = &[
    ("invariant_inference_requests_total", Kind::Counter, None, "Inference requests by outcome: model (\"unknown\" when the server has no such model), version, corridor, routing (active, canary, explicit), source (computed, l1, l2, reply, fallback, error), status (ok or the error kind), code (HTTP status), class (2xx, 4xx, 5xx) and transport."),
    ("invariant_request_duration_seconds", Kind::Histogram, Some(Unit::Seconds), "Time from a request's arrival to its answer or error, by model, corridor and transport."),
    ("invariant_queue_wait_seconds", Kind::Histogram, Some(Unit::Seconds), "Time computed requests waited for a worker or a batch, by model and corridor."),
    ("invariant_compute_seconds", Kind::Histogram, Some(Unit::Seconds), "Engine run time of computed requests (the whole batch they were part of), by model, version and corridor."),
    ("invariant_feature_fetch_seconds", Kind::Histogram, Some(Unit::Seconds), "Time enriching a request with online features, by corridor."),
    ("invariant_batch_size", Kind::Histogram, None, "Requests per engine run, by model and corridor."),
    ("invariant_redis_round_trip_seconds", Kind::Histogram, Some(Unit::Seconds), "Redis round trips by purpose (cache_get, cache_set, feature_read, feature_write, event_publish) and outcome (ok, error, timeout)."),
    ("invariant_cache_hits_total", Kind::Counter, None, "Inference cache hits by corridor and tier (l1, l2)."),
    ("invariant_cache_misses_total", Kind::Counter, None, "Inference cache misses (answers computed) by corridor."),
    ("invariant_cache_evictions_total", Kind::Counter, None, "L1 entries evicted for room or expired, by corridor."),
    ("invariant_cache_bytes", Kind::Gauge, Some(Unit::Bytes), "Bytes held by the L1 cache, by corridor."),
    ("invariant_cache_entries", Kind::Gauge, None, "Entries held by the L1 cache, by corridor."),
    ("invariant_pool_in_flight", Kind::Gauge, None, "Requests holding a place in the corridor's pool (running or queued)."),
    ("invariant_pool_queue_depth", Kind::Gauge, None, "Requests of the corridor's pool waiting for a worker."),
    ("invariant_pool_capacity", Kind::Gauge, None, "Places in the corridor's pool (workers plus queue)."),
    ("invariant_rejected_requests_total", Kind::Counter, None, "Requests refused before running, by corridor and reason (queue_full, rate_limited, killed, frozen, breaker_open, degraded, features_full)."),
    ("invariant_circuit_breaker_open", Kind::Gauge, None, "1 while the circuit breaker of a corridor's model is open, else 0."),
    ("invariant_corridor_degradation_level", Kind::Gauge, None, "The corridor's degradation level (0 full service to 4 emergency)."),
    ("invariant_kill_switch_active", Kind::Gauge, None, "1 while a kill switch is on, by scope (global, market:<n>, corridor:<id>)."),
    ("invariant_freeze_active", Kind::Gauge, None, "1 while a freeze is on, by scope."),
    ("invariant_rate_limit_per_second", Kind::Gauge, None, "The configured or governed request rate limit, by scope."),
    ("invariant_model_verified", Kind::Gauge, None, "Determinism verification per model version: 1 verified against its golden vectors, 0 failed."),
    ("invariant_engine_runs_total", Kind::Counter, None, "Engine runs by model, version and corridor."),
    ("invariant_engine_requests_total", Kind::Counter, None, "Requests computed by engine runs, by model, version and corridor."),
    ("invariant_canary_auto_rollbacks_total", Kind::Counter, None, "Canaries rolled back automatically, by model and version."),
    ("invariant_feature_served_age_seconds", Kind::Histogram, Some(Unit::Seconds), "Age of the oldest feature value served as present, per read, by view and corridor."),
    ("invariant_feature_newest_event_timestamp_seconds", Kind::Gauge, Some(Unit::Seconds), "Event time (Unix seconds) of the newest feature row written, by view and corridor."),
    ("invariant_audit_records_total", Kind::Counter, None, "Audit records written, by chain (corridor, or _server)."),
    ("invariant_audit_bytes_total", Kind::Counter, Some(Unit::Bytes), "Audit bytes written, by chain."),
    ("invariant_audit_fsync_seconds", Kind::Histogram, Some(Unit::Seconds), "Time of each audit segment sync."),
    ("invariant_audit_chain_head_sequence", Kind::Gauge, None, "Sequence number of the newest record of each audit chain."),
    ("invariant_control_revision", Kind::Gauge, None, "Revision of each control document (registry, governance, keys) this server applies: equal on every replica once converged."),
    ("invariant_object_store_fetched_objects_total", Kind::Counter, None, "Objects fetched from the object store into the local copy of the model repository or golden vectors (an unchanged object is never fetched again)."),
    ("invariant_object_store_sync_errors_total", Kind::Counter, None, "Failed syncs from the object store (the local copy, hash-verified at load, stays in use)."),
    ("invariant_advisories_total", Kind::Counter, None, "Advisories computed (cache misses), by corridor, pipeline, recommendation and source (models or degraded)."),
    ("invariant_review_items_total", Kind::Counter, None, "Items submitted to the review queue, by corridor and priority."),
    ("invariant_review_resolved_total", Kind::Counter, None, "Review items resolved, by corridor and decision (approve, reject)."),
    ("invariant_review_queue_depth", Kind::Gauge, None, "Open and claimed review items, by corridor and priority."),
    ("invariant_review_oldest_age_seconds", Kind::Gauge, None, "Age of the oldest open or claimed review item, by corridor and priority (0 when none)."),
    ("invariant_review_near_breach", Kind::Gauge, None, "Review items with less than review.near_breach_share of their SLA left (breached included), by corridor and priority."),
    ("invariant_review_breached", Kind::Gauge, None, "Review items past their SLA, by corridor and priority."),
    ("invariant_review_claimed_items", Kind::Gauge, None, "Review items under a live claim, by corridor."),
    ("invariant_review_active_reviewers", Kind::Gauge, None, "Reviewers holding a live claim, by corridor (claimed items per reviewer is their utilisation)."),
    ("invariant_control_sync_errors_total", Kind::Counter, None, "Failed reads of the shared control state, by document (the last good state stays in force)."),
    ("invariant_audit_errors_total", Kind::Counter, None, "Audit writes or syncs that failed, by chain."),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The process-wide Prometheus recorder, installed once with the buckets and descriptions
/// (`None` if another recorder was installed first).
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("invariant_batch_size".into()), &BATCH_BUCKETS))
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("invariant_feature_served_age_seconds".into()),
                        &AGE_BUCKETS,
                    )
                })
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            // Histogram samples wait in buckets until they are folded in; without a scrape
            // they would pile up, so fold them every few seconds.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            for &(name, kind, unit, help) in FAMILIES {
                match (kind, unit) {
                    (Kind::Counter, Some(u)) => describe_counter!(name, u, help),
                    (Kind::Counter, None) => describe_counter!(name, help),
                    (Kind::Gauge, Some(u)) => describe_gauge!(name, u, help),
                    (Kind::Gauge, None) => describe_gauge!(name, help),
                    (Kind::Histogram, Some(u)) => describe_histogram!(name, u, help),
                    (Kind::Histogram, None) => describe_histogram!(name, help),
                }
            }
            Some(handle)
        })
        .clone()
}

/// The names of every family this crate exports.
pub fn family_names() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().map(|f| f.0)
}

/// The series of a family with the same label hash: (label values, handle).
type Bucket<M> = Vec<(Box<[String]>, M)>;

/// Handles of one metric family by label values, registered once: a repeat costs a hash, a
/// read lock and a comparison; a repeat on a thread that already used the series (through
/// [`Family::with`]) costs a hash and a comparison, and touches no shared lock or reference
/// count.
pub(crate) struct Family<M> {
    /// Tells families apart in each thread's copies (never reused, unlike an address).
    id: u64,
    name: &'static str,
    labels: &'static [&'static str],
    series: RwLock<hashbrown::HashMap<u64, Bucket<M>>>,
    hasher: foldhash::fast::FixedState,
}

/// The next [`Family`] id.
static NEXT_FAMILY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A thread's copies of the handles it used: (label values, handle), by family id and label hash.
type LocalSeries = hashbrown::HashMap<(u64, u64), Vec<(Box<[String]>, Box<dyn std::any::Any>)>>;

thread_local! {
    static LOCAL: std::cell::RefCell<LocalSeries> = std::cell::RefCell::new(LocalSeries::new());
}

fn same(k: &[String], values: &[&str]) -> bool {
    k.len() == values.len() && k.iter().zip(values).all(|(a, b)| a == b)
}

impl<M: Clone + 'static> Family<M> {
    pub(crate) fn new(name: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            id: NEXT_FAMILY.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            name,
            labels,
            series: RwLock::new(hashbrown::HashMap::new()),
            hasher: foldhash::fast::FixedState::with_seed(0),
        }
    }

    /// Calls `use_it` with the handle of `values`, from this thread's copy when it has one.
    pub(crate) fn with<R>(
        &self,
        values: &[&str],
        make: impl FnOnce(&'static str, Vec<metrics::Label>) -> M,
        mut use_it: impl FnMut(&M) -> R,
    ) -> R {
        let hash = self.hasher.hash_one(values);
        let hit = LOCAL.try_with(|local| {
            let local = local.try_borrow().ok()?;
            let (_, m) = local.get(&(self.id, hash))?.iter().find(|(k, _)| same(k, values))?;
            Some(use_it(m.downcast_ref::<M>()?))
        });
        if let Ok(Some(result)) = hit {
            return result;
        }
        let m = self.shared(hash, values, make);
        // Kept for this thread's next use (not while the thread is ending, nor if re-entered).
        let _ = LOCAL.try_with(|local| {
            if let Ok(mut local) = local.try_borrow_mut() {
                local
                    .entry((self.id, hash))
                    .or_default()
                    .push((values.iter().map(|v| v.to_string()).collect(), Box::new(m.clone())));
            }
        });
        use_it(&m)
    }

    fn shared(&self, hash: u64, values: &[&str], make: impl FnOnce(&'static str, Vec<metrics::Label>) -> M) -> M {
        if let Some((_, m)) = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .and_then(|bucket| bucket.iter().find(|(k, _)| same(k, values)))
        {
            return m.clone();
        }
        let labels = self
            .labels
            .iter()
            .zip(values)
            .map(|(n, v)| metrics::Label::new(*n, v.to_string()))
            .collect();
        let m = make(self.name, labels);
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        let bucket = series.entry(hash).or_default();
        if let Some((_, existing)) = bucket.iter().find(|(k, _)| same(k, values)) {
            return existing.clone();
        }
        bucket.push((values.iter().map(|v| v.to_string()).collect(), m.clone()));
        m
    }
}

pub(crate) fn counter(name: &'static str, labels: Vec<metrics::Label>) -> metrics::Counter {
    metrics::counter!(name, labels)
}

pub(crate) fn histogram(name: &'static str, labels: Vec<metrics::Label>) -> metrics::Histogram {
    metrics::histogram!(name, labels)
}

/// Counts every request once by outcome and records its latencies:
/// `invariant_inference_requests_total`, `invariant_request_duration_seconds`,
/// `invariant_queue_wait_seconds`, `invariant_compute_seconds`,
/// `invariant_feature_fetch_seconds`. A model the server does not know is labelled
/// `unknown`, so a caller cannot grow the series with names.
pub struct MetricsGuard {
    requests: Family<metrics::Counter>,
    duration: Family<metrics::Histogram>,
    queue: Family<metrics::Histogram>,
    compute: Family<metrics::Histogram>,
    features: Family<metrics::Histogram>,
}

impl std::fmt::Debug for MetricsGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsGuard")
    }
}

impl Default for MetricsGuard {
    fn default() -> Self {
        Self {
            requests: Family::new(
                "invariant_inference_requests_total",
                &[
                    "model",
                    "version",
                    "corridor",
                    "routing",
                    "source",
                    "status",
                    "code",
                    "class",
                    "transport",
                ],
            ),
            duration: Family::new(
                "invariant_request_duration_seconds",
                &["model", "corridor", "transport"],
            ),
            queue: Family::new("invariant_queue_wait_seconds", &["model", "corridor"]),
            compute: Family::new("invariant_compute_seconds", &["model", "version", "corridor"]),
            features: Family::new("invariant_feature_fetch_seconds", &["corridor"]),
        }
    }
}

/// The text of an HTTP status code and its class.
fn code_text(code: u16) -> (&'static str, &'static str) {
    match code {
        200 => ("200", "2xx"),
        400 => ("400", "4xx"),
        401 => ("401", "4xx"),
        403 => ("403", "4xx"),
        404 => ("404", "4xx"),
        409 => ("409", "4xx"),
        429 => ("429", "4xx"),
        500 => ("500", "5xx"),
        503 => ("503", "5xx"),
        504 => ("504", "5xx"),
        c if c < 500 => ("4xx", "4xx"),
        _ => ("5xx", "5xx"),
    }
}

impl Guard for MetricsGuard {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn observe(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) {
        let (source, status, code) = match outcome.result {
            Ok(source) => (source.name(), "ok", 200),
            Err(e) => ("error", e.kind().name(), e.kind().code()),
        };
        let (code, class) = code_text(code);
        let model = if ctx.model_known { ctx.model } else { "unknown" };
        let corridor = ctx.corridor.unwrap_or("");
        let version = ctx.version.unwrap_or("");
        let transport = ctx.transport.name();
        self.requests.with(
            &[
                model,
                version,
                corridor,
                ctx.routing.map_or("", Routing::name),
                source,
                status,
                code,
                class,
                transport,
            ],
            counter,
            |c| c.increment(1),
        );
        let elapsed = outcome.elapsed.as_secs_f64();
        self.duration
            .with(&[model, corridor, transport], histogram, |h| h.record(elapsed));
        if let Some(run) = outcome.run {
            self.queue
                .with(&[model, corridor], histogram, |h| h.record(run.queue.as_secs_f64()));
            self.compute.with(&[model, version, corridor], histogram, |h| {
                h.record(run.compute.as_secs_f64())
            });
        }
        if let Some(fetch) = outcome.features {
            self.features
                .with(&[corridor], histogram, |h| h.record(fetch.as_secs_f64()));
        }
    }
}

impl InferenceService {
    /// Sets the gauges and counters read at scrape time: each corridor's cache and pool, and
    /// governance's switches, freezes and limits.
    pub fn collect_metrics(&self) {
        for (corridor, runtime) in &self.corridors {
            let c = runtime.cache.stats();
            let label = corridor.clone();
            metrics::counter!("invariant_cache_hits_total", "corridor" => label.clone(), "tier" => "l1")
                .absolute(c.l1_hits);
            metrics::counter!("invariant_cache_hits_total", "corridor" => label.clone(), "tier" => "l2")
                .absolute(c.l2_hits);
            metrics::counter!("invariant_cache_misses_total", "corridor" => label.clone()).absolute(c.misses);
            metrics::counter!("invariant_cache_evictions_total", "corridor" => label.clone()).absolute(c.evictions);
            metrics::gauge!("invariant_cache_bytes", "corridor" => label.clone()).set(c.bytes as f64);
            metrics::gauge!("invariant_cache_entries", "corridor" => label.clone()).set(c.entries as f64);
            let load = runtime.pool.load();
            metrics::gauge!("invariant_pool_in_flight", "corridor" => label.clone()).set(load.in_flight as f64);
            metrics::gauge!("invariant_pool_queue_depth", "corridor" => label.clone()).set(load.queued as f64);
            metrics::gauge!("invariant_pool_capacity", "corridor" => label.clone()).set(load.capacity as f64);
            if let Some(g) = &self.governance {
                metrics::gauge!("invariant_corridor_degradation_level", "corridor" => label)
                    .set(f64::from(g.level(corridor)));
            }
        }
        if let Some(g) = &self.governance {
            let state = g.state();
            let mut scopes: std::collections::BTreeSet<String> =
                std::collections::BTreeSet::from(["global".to_string()]);
            for c in &self.config.corridors {
                scopes.insert(format!("market:{}", c.market));
                scopes.insert(format!("corridor:{}", c.id));
            }
            for model in self.snapshot().table.names() {
                scopes.insert(format!("model:{model}"));
            }
            for scope in &scopes {
                let on = |map: &std::collections::BTreeMap<invariant_governance::state::Scope, _>| {
                    map.keys().any(|s| s.to_string() == *scope)
                };
                metrics::gauge!("invariant_kill_switch_active", "scope" => scope.clone()).set(if on(&state.switches) {
                    1.0
                } else {
                    0.0
                });
                metrics::gauge!("invariant_freeze_active", "scope" => scope.clone()).set(if on(&state.freezes) {
                    1.0
                } else {
                    0.0
                });
            }
            for (scope, limit) in &state.limits {
                metrics::gauge!("invariant_rate_limit_per_second", "scope" => scope.to_string()).set(limit.rate_per_s);
            }
        }
    }

    /// The Prometheus text of every metric, gauges collected first (`None` without a
    /// recorder).
    pub fn render_metrics(&self) -> Option<String> {
        let handle = self.metrics.as_ref()?;
        self.collect_metrics();
        crate::review::record_gauges(self);
        handle.run_upkeep();
        Some(handle.render())
    }
}

#[cfg(test)]
mod tests {
    use super::Family;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    /// Every handle made, with its label value.
    type Made = Arc<Mutex<Vec<(String, Arc<AtomicU64>)>>>;

    #[test]
    fn every_thread_counts_into_the_one_series_of_its_labels() {
        let family: Arc<Family<metrics::Counter>> = Arc::new(Family::new("t", &["a"]));
        let made: Made = Arc::default();
        let make = |made: &Made| {
            let made = made.clone();
            move |_: &'static str, labels: Vec<metrics::Label>| {
                let cell = Arc::new(AtomicU64::new(0));
                made.lock().unwrap().push((labels[0].value().to_string(), cell.clone()));
                metrics::Counter::from_arc(cell)
            }
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (family, make) = (family.clone(), make(&made));
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        family.with(&["x"], make.clone(), |c| c.increment(1));
                    }
                })
            })
            .collect();
        for _ in 0..500 {
            family.with(&["y"], make(&made), |c| c.increment(2));
        }
        for t in threads {
            t.join().unwrap();
        }
        let made = made.lock().unwrap();
        let total = |label: &str| -> Vec<u64> {
            made.iter()
                .filter(|(l, _)| l == label)
                .map(|(_, c)| c.load(Ordering::Relaxed))
                .filter(|&n| n > 0)
                .collect()
        };
        // One series per label value took every increment (a handle made in a race and
        // dropped took none).
        assert_eq!(total("x"), vec![4000]);
        assert_eq!(total("y"), vec![1000]);
        // Another family with the same labels is another series.
        let other: Family<metrics::Counter> = Family::new("u", &["a"]);
        let cell = Arc::new(AtomicU64::new(0));
        let c2 = cell.clone();
        other.with(&["x"], move |_, _| metrics::Counter::from_arc(c2), |c| c.increment(5));
        assert_eq!(cell.load(Ordering::Relaxed), 5);
        assert_eq!(total("x"), vec![4000]);
    }
}
