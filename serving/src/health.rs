//! Health: server readiness with its reasons, the dependencies serving needs, and each
//! corridor's health (readiness, dependencies, pool load, recent latency and errors,
//! governance).
//!
//! The server is ready when every version that receives traffic (active, corridor-active,
//! canary) is loaded and verified, every model has a version that serves, and every required
//! dependency answers: the feature store of each corridor (when a feature repository is
//! configured) and each corridor's Redis L2 when `cache.redis_required`. Dependency checks are
//! round trips, so their results are kept for [`DEPENDENCY_TTL`]: a health probe costs a map
//! lookup, not a Redis call.

use crate::guards::{Guard, Outcome, RequestContext};
use crate::request::Source;
use crate::{InferenceService, Snapshot};
use invariant_governance::signals::{Point, Summary, Window};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a dependency check is reused.
pub const DEPENDENCY_TTL: Duration = Duration::from_secs(1);

/// The window of each corridor's recent latency and errors, in seconds.
pub const RECENT_SECONDS: u32 = 60;

/// How far back each corridor's series goes (the dashboard's charts), in seconds.
pub const SERIES_SECONDS: u32 = 300;

/// One dependency's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Dependency {
    /// `feature_store` or `cache_l2`.
    pub name: &'static str,
    /// The corridor it serves.
    pub corridor: String,
    /// Whether serving needs it (a required dependency that is down makes the server not ready).
    pub required: bool,
    /// Whether it answered.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Server readiness, with what is not ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ServerReadiness {
    /// Whether the server serves.
    pub ready: bool,
    /// Versions ready.
    pub versions_ready: usize,
    /// Versions refused.
    pub versions_failed: usize,
    /// What keeps it from being ready (empty when ready).
    pub not_ready: Vec<String>,
    /// Every dependency's state.
    pub dependencies: Vec<Dependency>,
    /// What this server applies of the shared control state (equal revisions on every
    /// replica once converged).
    pub control: crate::convergence::ControlApplied,
}

/// One corridor's health.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CorridorHealth {
    /// The corridor.
    pub corridor: String,
    /// Whether it serves: the server's versions are ready, its required dependencies answer,
    /// and it is neither killed, frozen nor isolated.
    pub ready: bool,
    /// What keeps it from being ready.
    pub not_ready: Vec<String>,
    /// Its dependencies.
    pub dependencies: Vec<Dependency>,
    /// Its pool.
    pub pool: crate::pool::PoolLoad,
    /// Every request of the corridor over the last [`RECENT_SECONDS`].
    #[schema(value_type = Object)]
    pub recent: Summary,
    /// Its governance (level, switches, freeze, limit, breakers), when governance is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub governance: Option<invariant_governance::CorridorStatus>,
    /// Its review queue (depth, oldest age, near-breach and breached items by priority,
    /// claims, reviewers, overflow signals), when the server has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub review: Option<invariant_review::Summary>,
}

/// Each corridor's recent requests, fed by the [`RecentGuard`].
#[derive(Debug)]
pub struct Recent {
    windows: BTreeMap<String, Window>,
}

impl Recent {
    /// Windows for `corridors`.
    pub fn new<'a>(corridors: impl Iterator<Item = &'a str>) -> Self {
        Self {
            windows: corridors
                .map(|c| (c.to_string(), Window::new(SERIES_SECONDS)))
                .collect(),
        }
    }

    /// `corridor`'s last [`RECENT_SECONDS`] now.
    pub fn summary(&self, corridor: &str) -> Summary {
        self.windows.get(corridor).map_or(
            Summary {
                requests: 0,
                failures: 0,
                error_rate: 0.0,
                p99_ms: 0.0,
                p50_ms: 0.0,
                cache_hits: 0,
            },
            |w| w.summary_over(u64::from(RECENT_SECONDS)),
        )
    }

    /// `corridor`'s last [`SERIES_SECONDS`] in steps of `step` seconds, oldest first.
    pub fn series(&self, corridor: &str, step: u64) -> Vec<Point> {
        self.windows.get(corridor).map(|w| w.series(step)).unwrap_or_default()
    }
}

/// Records every request with a corridor in its recent window (server faults count as errors).
#[derive(Debug)]
pub struct RecentGuard {
    recent: Arc<Recent>,
}

impl RecentGuard {
    /// A guard feeding `recent`.
    pub fn new(recent: Arc<Recent>) -> Self {
        Self { recent }
    }
}

impl Guard for RecentGuard {
    fn name(&self) -> &'static str {
        "recent"
    }

    fn observe(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) {
        if let Some(w) = ctx.corridor.and_then(|c| self.recent.windows.get(c)) {
            let failed = outcome.result.is_err_and(|e| e.kind().is_server_fault());
            let hit = matches!(outcome.result, Ok(Source::L1 | Source::L2 | Source::Reply));
            w.record_answer(outcome.elapsed, failed, hit);
        }
    }
}

/// Dependency results, kept for [`DEPENDENCY_TTL`].
#[derive(Debug, Default)]
pub struct DependencyCache {
    last: Mutex<Option<(Instant, Vec<Dependency>)>>,
    /// One check at a time; callers meanwhile get the last result.
    checking: tokio::sync::Mutex<()>,
}

/// What keeps the versions of `snapshot` from serving.
fn version_problems(snapshot: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let table = &snapshot.table;
    if table.counts().0 == 0 {
        out.push("no model version is loaded and verified".into());
    }
    for model in table.names() {
        let ready = |v: &str| snapshot.ready(model, v);
        let routing = snapshot.registry.models.get(model);
        let mut serving: Vec<(String, &str)> = Vec::new();
        if let Some(r) = routing {
            if let Some(v) = &r.active {
                serving.push((v.clone(), "active"));
            }
            for v in r.corridor_active.values() {
                serving.push((v.clone(), "corridor-active"));
            }
            if let Some(c) = &r.canary {
                serving.push((c.version.clone(), "canary"));
            }
        }
        serving.sort();
        serving.dedup();
        for (v, role) in serving {
            if !ready(&v) {
                let why = match table.resolve(model, Some(&v)) {
                    Err(crate::models::Lookup::Failed(reason)) => reason,
                    _ => "not loaded".into(),
                };
                out.push(format!("{model} {v} ({role}) does not serve: {why}"));
            }
        }
        if snapshot.active_version(model).is_none() {
            out.push(format!("{model} has no version that serves"));
        }
    }
    out
}

impl InferenceService {
    /// Every dependency's state (checked at most once per [`DEPENDENCY_TTL`]).
    pub async fn dependencies(&self) -> Vec<Dependency> {
        let fresh = |last: &Option<(Instant, Vec<Dependency>)>| {
            last.as_ref()
                .filter(|(at, _)| at.elapsed() < DEPENDENCY_TTL)
                .map(|(_, d)| d.clone())
        };
        if let Some(d) = fresh(&self.dependency_cache.last.lock().unwrap_or_else(|p| p.into_inner())) {
            return d;
        }
        let _one = self.dependency_cache.checking.lock().await;
        if let Some(d) = fresh(&self.dependency_cache.last.lock().unwrap_or_else(|p| p.into_inner())) {
            return d;
        }
        let deps = self.check_dependencies().await;
        *self.dependency_cache.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), deps.clone()));
        deps
    }

    async fn check_dependencies(&self) -> Vec<Dependency> {
        let mut out = Vec::new();
        let configured = self.config.feature_repository.is_dir();
        for (corridor, runtime) in &self.corridors {
            if configured {
                let result = match &self.features {
                    Err(why) => Err(why.clone()),
                    Ok(store) => {
                        let store = store.clone();
                        let c = corridor.clone();
                        tokio::task::spawn_blocking(move || store.check(&c).map_err(|e| e.to_string()))
                            .await
                            .unwrap_or_else(|e| Err(format!("check failed: {e}")))
                    }
                };
                out.push(Dependency {
                    name: "feature_store",
                    corridor: corridor.clone(),
                    required: true,
                    ok: result.is_ok(),
                    error: result.err(),
                });
            }
            if let Some(l2) = runtime.cache.l2() {
                let result = l2.ping().await;
                out.push(Dependency {
                    name: "cache_l2",
                    corridor: corridor.clone(),
                    required: self.config.cache.redis_required,
                    ok: result.is_ok(),
                    error: result.err(),
                });
            }
        }
        out
    }

    /// Whether the server is ready, and what is not.
    pub async fn server_health(&self) -> ServerReadiness {
        let snapshot = self.snapshot();
        let (ready, failed) = snapshot.table.counts();
        let mut not_ready = version_problems(&snapshot);
        let dependencies = self.dependencies().await;
        for d in dependencies.iter().filter(|d| d.required && !d.ok) {
            not_ready.push(format!(
                "{} of {} unreachable: {}",
                d.name,
                d.corridor,
                d.error.as_deref().unwrap_or("no answer")
            ));
        }
        ServerReadiness {
            ready: not_ready.is_empty(),
            versions_ready: ready,
            versions_failed: failed,
            not_ready,
            dependencies,
            control: self.control_applied(),
        }
    }

    /// The health of declared corridor `corridor` (`None` when not declared).
    pub async fn corridor_health(&self, corridor: &str) -> Option<CorridorHealth> {
        let id = self.config.corridor(corridor)?.id.to_string();
        let runtime = self.corridors.get(&id)?;
        let snapshot = self.snapshot();
        let mut not_ready = version_problems(&snapshot);
        let dependencies: Vec<Dependency> = self
            .dependencies()
            .await
            .into_iter()
            .filter(|d| d.corridor == id)
            .collect();
        for d in dependencies.iter().filter(|d| d.required && !d.ok) {
            not_ready.push(format!(
                "{} unreachable: {}",
                d.name,
                d.error.as_deref().unwrap_or("no answer")
            ));
        }
        let governance = self
            .governance
            .as_ref()
            .and_then(|g| g.corridors().into_iter().find(|c| c.corridor == id));
        if let Some(g) = &governance {
            if let Some(k) = &g.killed {
                not_ready.push(format!("killed ({k})"));
            }
            if let Some(f) = &g.frozen {
                not_ready.push(format!("frozen ({f})"));
            }
            if g.level >= 3 {
                not_ready.push(format!("degradation level {} ({})", g.level, g.level_name));
            }
        }
        Some(CorridorHealth {
            corridor: id.clone(),
            ready: not_ready.is_empty(),
            not_ready,
            dependencies,
            pool: runtime.pool.load(),
            recent: self.recent.summary(&id),
            governance,
            review: self.review_summary(&id),
        })
    }
}
