//! The one request path of Invariant, with no transport in it.
//!
//! Every answer, whether it arrives over HTTP JSON, HTTP binary tensors, gRPC, from the HTTP
//! reply cache or from an in-process caller, goes through [`InferenceService`]:
//! resolve the corridor → route the version (a pure function of model, corridor, routing key
//! and registry state) → the [guard pipeline](guards) admits → cache or compute (pool
//! admission, batching, engine) → the guards observe. Errors are one enum, [`ServeError`],
//! that each transport maps once.
//!
//! The crate also owns what serving needs around that path: the model table and deploy-time
//! verification ([`models`]), per-corridor pools and batchers ([`pool`]), the serving
//! [`Snapshot`] (model table + registry state + generation, swapped together), the
//! [control plane](control) (transitions, reloads, unloads), corridor
//! [governance](governance) (switches, freezes, limits, breakers, levels), feature enrichment
//! ([`features`]), serving statistics ([`stats`]), replica events ([`events`]), the audit log
//! ([`audit`]), API keys ([`auth`]) and the configuration ([`config`]).

pub mod advisory;
pub mod audit;
pub mod auth;
pub mod canary;
pub mod config;
pub mod control;
pub mod convergence;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod features;
pub mod governance;
pub mod guards;
pub mod health;
pub mod models;
pub mod pool;
pub mod remote;
pub mod request;
pub mod review;
pub mod service;
pub mod stats;
pub mod telemetry;
pub mod views;

pub use error::{ErrorKind, ServeError};
pub use request::{InferBody, InferResponse, Metadata, Routing, Source, Target, Transport};

use arc_swap::ArcSwap;
use audit::AuditLog;
use config::Config;
use invariant_engine::EngineOptions;
use invariant_gpu::DeviceLayer;
use invariant_registry::lifecycle::RegistryState;
use models::{Loader, ModelTable};
use std::collections::BTreeMap;
use std::sync::Arc;
use thiserror::Error;

/// What serves at one moment: the model table and the registry state, replaced together, and
/// a generation bumped on every replacement. A request loads one snapshot and keeps it, so it
/// never routes with a registry of one moment over a table of another.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Loaded and refused model versions.
    pub table: Arc<ModelTable>,
    /// Lifecycle, canaries and history.
    pub registry: Arc<RegistryState>,
    /// Bumped on every change; part of every reply-cache identity.
    pub generation: u64,
}

impl Snapshot {
    /// Whether `model` `version` is loaded and verified.
    pub fn ready(&self, model: &str, version: &str) -> bool {
        control::ready(&self.table, model, version)
    }

    /// The version that answers `model` for a request without routing facts: its corridor-free
    /// active version, else the highest verified one.
    pub fn active_version(&self, model: &str) -> Option<String> {
        let ready = |v: &str| self.ready(model, v);
        self.registry
            .active(model, None, &ready, self.table.default_version(model).as_deref())
    }
}

/// What one corridor owns: its serving pool and its cache.
#[derive(Debug)]
pub struct CorridorRuntime {
    /// Queue, workers, batchers.
    pub pool: pool::CorridorPool,
    /// L1 (and L2) cache.
    pub cache: invariant_cache::CorridorCache,
}

/// The serving core: everything a request or an admin change needs, shared by every
/// transport. Build it with [`InferenceService::build`]; serve with
/// [`InferenceService::infer`]; change it through [`InferenceService::control`].
#[derive(Debug)]
pub struct InferenceService {
    /// Effective configuration.
    pub config: Config,
    snapshot: ArcSwap<Snapshot>,
    /// Serialises snapshot replacements (so two changes never lose one another).
    swap_lock: std::sync::Mutex<()>,
    /// The audit trail: inference records and admin actions, chained per corridor.
    pub audit: Arc<AuditLog>,
    /// Device layer.
    pub devices: DeviceLayer,
    /// Engine options.
    pub options: EngineOptions,
    /// Why ONNX versions cannot load, if ONNX Runtime is missing.
    pub onnx_unavailable: Option<String>,
    /// Serialises reloads and lifecycle transitions (one admin change at a time).
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// The guard pipeline every answer passes.
    pub guards: guards::Pipeline,
    /// Serving statistics per model version (Triton's statistics extension).
    pub stats: Arc<stats::Statistics>,
    /// Prometheus rendering of the process's metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Each corridor's pool and cache (bulkheads), by corridor id.
    pub corridors: BTreeMap<String, CorridorRuntime>,
    /// Redis for replica events (the `cache.redis_url`), if configured.
    pub events: Option<redis::Client>,
    /// This process's id in replica events.
    pub server_id: String,
    /// Newest event time pushed, per (corridor, view): the freshness gauge only moves forward.
    pub(crate) feature_freshness: std::sync::Mutex<BTreeMap<(String, String), i64>>,
    /// The feature store, or why it is not available.
    pub features: Result<Arc<invariant_featurestore::FeatureStore>, String>,
    /// Corridor governance (`None` when `governance.enabled` is false).
    pub governance: Option<Arc<invariant_governance::Governance>>,
    /// API keys: who may call, where.
    pub authority: auth::Authority,
    /// The shared control state (registry, governance, API keys): a file or Redis.
    pub control_state: invariant_control::Control,
    /// What this process has applied of it, and when it last checked.
    pub(crate) converged: convergence::Converged,
    /// The object-store mirrors of a remote model repository or golden vectors.
    pub mirrors: remote::Mirrors,
    /// The advisory pipelines, verified once the models are loaded (swapped whole by a
    /// reload: [`control::ControlPlane::reload_pipelines`]).
    pub pipelines: ArcSwap<advisory::Pipelines>,
    /// The human review queue, or why it is not available (command-line tools do not open
    /// it: a running server holds its file).
    pub review: Result<Arc<invariant_review::Queue>, String>,
    /// Each corridor's recent requests (for its health).
    pub recent: Arc<health::Recent>,
    /// The last dependency checks.
    pub(crate) dependency_cache: health::DependencyCache,
    /// Each corridor's feature bulkhead: places for feature-store calls in flight.
    pub(crate) feature_slots: BTreeMap<String, Arc<tokio::sync::Semaphore>>,
}

/// Start-up failures.
#[derive(Debug, Error)]
pub enum StartError {
    /// The repository directory cannot be read.
    #[error(transparent)]
    Repository(#[from] invariant_registry::RegistryError),
    /// A cache setting cannot be used.
    #[error(transparent)]
    Cache(#[from] invariant_cache::CacheError),
    /// The governance control state cannot be used.
    #[error(transparent)]
    Governance(#[from] invariant_governance::store::StoreError),
    /// The API keys cannot be used.
    #[error(transparent)]
    Auth(#[from] invariant_auth::AuthError),
    /// The audit trail cannot be opened.
    #[error(transparent)]
    Audit(#[from] invariant_audit::AuditError),
    /// The control state cannot be used.
    #[error(transparent)]
    Control(#[from] invariant_control::ControlError),
    /// A remote model repository or golden vector store cannot be used.
    #[error(transparent)]
    Remote(#[from] remote::MirrorError),
}

/// Builds each declared corridor's pool and cache.
fn corridor_runtimes(config: &Config) -> Result<BTreeMap<String, CorridorRuntime>, StartError> {
    let batching = pool::BatchSettings {
        enabled: config.pools.batching,
        max_queue_delay: std::time::Duration::from_micros(config.pools.max_queue_delay_us),
    };
    let timeout = std::time::Duration::from_millis(config.cache.redis_timeout_ms);
    let mut out = BTreeMap::new();
    for c in &config.corridors {
        let sizes = pool::PoolSizes {
            workers: c.workers.unwrap_or(config.pools.workers),
            queue: c.queue.unwrap_or(config.pools.queue),
        };
        let url = c.redis_url.clone().unwrap_or_else(|| config.cache.redis_url.clone());
        let l2 = if url.is_empty() {
            None
        } else {
            Some(invariant_cache::RedisL2::new(&url, c.id.as_str(), timeout)?)
        };
        out.insert(
            c.id.to_string(),
            CorridorRuntime {
                pool: pool::CorridorPool::new(c.id.as_str(), sizes, batching),
                cache: invariant_cache::CorridorCache::new(config.cache.l1_max_bytes, l2),
            },
        );
    }
    Ok(out)
}

/// The process-wide Prometheus recorder (see [`telemetry::install`]).
pub fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    telemetry::install()
}

/// Loads ONNX Runtime if it can be found; `Some(reason)` when ONNX versions cannot load.
pub fn init_onnx(config: &Config) -> Option<String> {
    let why = match config.onnxruntime_path() {
        None => "ONNX Runtime library not found: run scripts/setup.sh, or set onnxruntime_lib in invariant.toml \
                 (INVARIANT_ONNXRUNTIME_LIB) or ORT_DYLIB_PATH"
            .to_string(),
        Some(path) => match invariant_engine::onnx::init_runtime(&path) {
            Ok(rt) => {
                tracing::info!(path = %path.display(), version = rt.version(), "ONNX Runtime loaded");
                return None;
            }
            Err(e) => e.to_string(),
        },
    };
    tracing::warn!("{why}; ONNX model versions will not load");
    Some(why)
}

impl InferenceService {
    /// Loads ONNX Runtime (when found), then verifies and loads every model version of the
    /// configured repository. Versions that fail are kept with their reason; only an unreadable
    /// repository is an error. The guard pipeline holds corridor governance, the canary
    /// monitor, the serving statistics, the request metrics and the audit record; a canary that breaks its limits is rolled back by a
    /// background task of the control plane (started here when a Tokio runtime is running).
    pub fn build(config: Config) -> Result<Arc<Self>, StartError> {
        Self::build_with(config, Vec::new())
    }

    /// [`InferenceService::build`] with `first` placed at the head of the guard pipeline,
    /// before the governance, canary, statistics and metrics guards.
    pub fn build_with(config: Config, first: Vec<Box<dyn guards::Guard>>) -> Result<Arc<Self>, StartError> {
        Self::build_inner(config, first, true)
    }

    /// [`InferenceService::build`] for command-line tools that work on models only: the
    /// feature store is not opened (a running server may hold it), so enrichment answers 503.
    pub fn build_for_tools(config: Config) -> Result<Arc<Self>, StartError> {
        Self::build_inner(config, Vec::new(), false)
    }

    fn build_inner(
        mut config: Config,
        first: Vec<Box<dyn guards::Guard>>,
        open_features: bool,
    ) -> Result<Arc<Self>, StartError> {
        // The recorder first: the object-store sync below already counts.
        let metrics = metrics_handle();
        // A remote repository is mirrored first; from here on the configuration names the copy.
        let mirrors = remote::Mirrors::open(&mut config)?;
        let control_state = config.open_control()?;
        let authority = auth::Authority::open(&config, control_state.clone())?;
        let audit = Arc::new(AuditLog::open(&config)?);
        let onnx_unavailable = init_onnx(&config);
        let registry: RegistryState = control_state.load()?;
        let corridors = corridor_runtimes(&config)?;
        let events = if config.cache.redis_url.is_empty() {
            None
        } else {
            Some(redis::Client::open(config.cache.redis_url.as_str()).map_err(|e| {
                invariant_cache::CacheError::RedisUrl {
                    url: invariant_core::secret::redact_url(&config.cache.redis_url),
                    message: e.to_string(),
                }
            })?)
        };
        let features = if !open_features {
            Err("the feature store is not opened by this command".to_string())
        } else if config.feature_repository.is_dir() {
            config.open_feature_store().map(Arc::new).map_err(|e| e.to_string())
        } else {
            Err(format!(
                "no feature repository at {}",
                config.feature_repository.display()
            ))
        };
        if let (Err(why), true) = (&features, open_features) {
            tracing::warn!("{why}; the feature endpoints answer 503");
        }
        let review = if open_features {
            invariant_review::Queue::open(&config.review_path(), config.review_settings())
                .map(Arc::new)
                .map_err(|e| e.to_string())
        } else {
            Err("the review queue is not opened by this command".to_string())
        };
        if let (Err(why), true) = (&review, open_features) {
            tracing::error!("{why}; the review endpoints answer 503");
        }
        let stats = Arc::new(stats::Statistics::default());
        let (canary, rollbacks) = guards::CanaryGuard::new(canary::CanaryMonitor::new(config.canary.clone()));
        let governance = if config.governance.enabled {
            Some(Arc::new(config.open_governance(control_state.clone())?))
        } else {
            None
        };
        let mut all = first;
        let governance_events = governance.as_ref().map(|g| {
            let (guard, events) = governance::GovernanceGuard::new(g.clone());
            all.push(Box::new(guard));
            events
        });
        all.push(Box::new(canary));
        all.push(Box::new(guards::StatsGuard::new(stats.clone())));
        let recent = Arc::new(health::Recent::new(corridors.keys().map(String::as_str)));
        all.push(Box::new(health::RecentGuard::new(recent.clone())));
        all.push(Box::new(telemetry::MetricsGuard::default()));
        all.push(Box::new(audit::AuditGuard::new(audit.clone())));
        let pipeline = guards::Pipeline::new(all);
        let service = Self {
            feature_freshness: Default::default(),
            recent,
            dependency_cache: Default::default(),
            feature_slots: config
                .corridors
                .iter()
                .map(|c| {
                    let places = config.pools.feature_concurrency.max(1);
                    (c.id.to_string(), Arc::new(tokio::sync::Semaphore::new(places)))
                })
                .collect(),
            features,
            governance,
            authority,
            converged: convergence::Converged::new(&registry),
            mirrors,
            review,
            pipelines: ArcSwap::from_pointee(advisory::Pipelines::default()),
            control_state,
            corridors,
            events,
            server_id: events::server_id(),
            snapshot: ArcSwap::from_pointee(Snapshot {
                table: Arc::new(ModelTable::default()),
                registry: Arc::new(registry),
                generation: 0,
            }),
            swap_lock: std::sync::Mutex::new(()),
            guards: pipeline,
            stats,
            metrics,
            audit,
            devices: DeviceLayer::discover(),
            options: EngineOptions {
                instances: config.engine_instances,
                threads: None,
            },
            onnx_unavailable,
            reload_lock: tokio::sync::Mutex::new(()),
            config,
        };
        let table = ModelTable::load(&service.config.model_repository, &service.loader())?;
        service.set_models(Arc::new(table));
        service.pipelines.store(Arc::new(advisory::Pipelines::load(&service)));
        let service = Arc::new(service);
        control::spawn_auto_rollback(&service, rollbacks);
        convergence::spawn_watcher(&service);
        if let Some(events) = governance_events {
            governance::spawn_governance_task(&service, events);
        }
        Ok(service)
    }

    /// The current serving snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current generation (cheap: no reference count taken).
    pub fn generation(&self) -> u64 {
        self.snapshot.load().generation
    }

    /// Replaces part of the snapshot under the swap lock and bumps the generation.
    fn swap(&self, change: impl FnOnce(&Snapshot) -> Snapshot) {
        let _one = self.swap_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot.load_full();
        let mut next = change(&current);
        next.generation = current.generation + 1;
        self.snapshot.store(Arc::new(next));
    }

    /// Replaces the model table (atomically for requests in flight) and retires the batchers of
    /// instances it no longer holds.
    pub fn set_models(&self, table: Arc<ModelTable>) {
        self.swap(|s| Snapshot {
            table: table.clone(),
            registry: s.registry.clone(),
            generation: 0,
        });
        for runtime in self.corridors.values() {
            runtime.pool.retire_batchers(&table);
        }
    }

    /// Replaces the registry state with a newer revision (an older one, e.g. a change of this
    /// process acknowledged after another replica's newer one was applied, is ignored: the
    /// snapshot only moves forward). Returns whether it replaced.
    pub fn set_registry(&self, registry: Arc<RegistryState>) -> bool {
        self.store_registry(registry, true)
    }

    /// Replaces the registry state; with `only_forward`, only by a newer revision.
    pub(crate) fn store_registry(&self, registry: Arc<RegistryState>, only_forward: bool) -> bool {
        let _one = self.swap_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot.load_full();
        if only_forward && registry.revision <= current.registry.revision {
            return false;
        }
        self.converged.applied(invariant_control::REGISTRY, registry.revision);
        self.snapshot.store(Arc::new(Snapshot {
            table: current.table.clone(),
            registry,
            generation: current.generation + 1,
        }));
        true
    }

    /// The loader for this configuration.
    pub fn loader(&self) -> Loader<'_> {
        Loader {
            devices: &self.devices,
            options: &self.options,
            onnx_unavailable: self.onnx_unavailable.as_deref(),
            golden_dir: &self.config.golden_vectors,
            audit: &self.audit,
            corridors: self
                .config
                .corridors
                .iter()
                .map(|c| (c.id.to_string(), c.workers.unwrap_or(self.config.pools.workers)))
                .collect(),
            limits: &self.config.limits,
        }
    }

    /// The control plane: transitions, reloads and unloads of this service.
    pub fn control(self: &Arc<Self>) -> control::ControlPlane {
        control::ControlPlane::new(self.clone())
    }
}
