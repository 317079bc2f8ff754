//! The Invariant server: wires the model repository, the engines, deploy-time verification
//! and the device layer to the Open Inference Protocol (KServe V2) HTTP API. The `invariant`
//! binary (`main.rs`) is its command-line front end, including the CI determinism gate.

pub mod admin;
pub mod audit;
pub mod canary;
pub mod config;
pub mod error;
pub mod events;
pub mod features;
pub mod gate;
pub mod import;
pub mod lifecycle;
pub mod models;
pub mod pool;
pub mod reply_cache;
pub mod repository;
pub mod v2;

use arc_swap::ArcSwap;
use audit::AuditLog;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use config::Config;
use error::ApiError;
use invariant_engine::EngineOptions;
use invariant_gpu::DeviceLayer;
use invariant_registry::lifecycle::{LifecycleError, RegistryState};
use models::{Loader, ModelTable};
use std::sync::Arc;
use thiserror::Error;

/// What every request handler shares.
#[derive(Debug)]
pub struct Shared {
    /// Effective configuration.
    pub config: Config,
    /// Loaded and refused model versions; swapped atomically on reload, so a request keeps
    /// the table (and model instance) it started with.
    pub models: ArcSwap<ModelTable>,
    /// Verification audit log.
    pub audit: AuditLog,
    /// Device layer.
    pub devices: DeviceLayer,
    /// Engine options.
    pub options: EngineOptions,
    /// Why ONNX versions cannot load, if ONNX Runtime is missing.
    pub onnx_unavailable: Option<String>,
    /// Serialises reloads and lifecycle transitions (one admin change at a time).
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Lifecycle, canaries and history; swapped atomically on every transition.
    pub registry: ArcSwap<RegistryState>,
    /// Canary health windows.
    pub canary: canary::CanaryMonitor,
    /// Prometheus rendering of the process's metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Each corridor's pool and cache (bulkheads), by corridor id.
    pub corridors: std::collections::BTreeMap<String, CorridorRuntime>,
    /// Redis for replica events (the `cache.redis_url`), if configured.
    pub events: Option<redis::Client>,
    /// This process's id in replica events.
    pub server_id: String,
    /// Newest event time pushed, per (corridor, view): the freshness gauge only moves forward.
    pub feature_freshness: std::sync::Mutex<std::collections::BTreeMap<(String, String), i64>>,
    /// The feature store, or why it is not available.
    pub features: Result<Arc<invariant_featurestore::FeatureStore>, String>,
    /// Bumped whenever the model table or the registry state is replaced: part of every
    /// response-cache key, so a change of what serves a model is never hidden by a cached reply.
    pub generation: std::sync::atomic::AtomicU64,
}

/// What one corridor owns: its serving pool and its cache.
#[derive(Debug)]
pub struct CorridorRuntime {
    /// Queue, workers, batchers.
    pub pool: pool::CorridorPool,
    /// L1 (and L2) cache.
    pub cache: invariant_cache::CorridorCache,
}

impl Shared {
    /// Replaces the model table (atomically for requests in flight) and retires the batchers of
    /// instances it no longer holds.
    pub fn set_models(&self, table: Arc<ModelTable>) {
        self.models.store(table.clone());
        for runtime in self.corridors.values() {
            runtime.pool.retire_batchers(&table);
        }
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Replaces the registry state.
    pub fn set_registry(&self, state: Arc<RegistryState>) {
        self.registry.store(state);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
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
        }
    }
}

/// Handler state.
pub type AppState = Arc<Shared>;

/// Start-up failures.
#[derive(Debug, Error)]
pub enum StartError {
    /// The repository directory cannot be read.
    #[error(transparent)]
    Repository(#[from] invariant_registry::RegistryError),
    /// The registry state file cannot be used.
    #[error(transparent)]
    Registry(#[from] LifecycleError),
    /// A cache setting cannot be used.
    #[error(transparent)]
    Cache(#[from] invariant_cache::CacheError),
}

/// Builds each declared corridor's pool and cache.
fn corridor_runtimes(config: &Config) -> Result<std::collections::BTreeMap<String, CorridorRuntime>, StartError> {
    let batching = pool::BatchSettings {
        enabled: config.pools.batching,
        max_queue_delay: std::time::Duration::from_micros(config.pools.max_queue_delay_us),
    };
    let timeout = std::time::Duration::from_millis(config.cache.redis_timeout_ms);
    let mut out = std::collections::BTreeMap::new();
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

/// The process-wide Prometheus recorder (installed once; `None` if another recorder is).
pub fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()
        })
        .clone()
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

/// Loads ONNX Runtime (when found), then verifies and loads every model version of the
/// configured repository. Versions that fail are kept with their reason; only an unreadable
/// repository is an error.
pub fn build_state(config: Config) -> Result<AppState, StartError> {
    let onnx_unavailable = init_onnx(&config);
    let registry = RegistryState::load(&config.registry_state_path())?;
    let corridors = corridor_runtimes(&config)?;
    let events = if config.cache.redis_url.is_empty() {
        None
    } else {
        Some(redis::Client::open(config.cache.redis_url.as_str()).map_err(|e| {
            invariant_cache::CacheError::RedisUrl {
                url: config.cache.redis_url.clone(),
                message: e.to_string(),
            }
        })?)
    };
    let features = if config.feature_repository.is_dir() {
        config.open_feature_store().map(Arc::new).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "no feature repository at {}",
            config.feature_repository.display()
        ))
    };
    if let Err(why) = &features {
        tracing::warn!("{why}; the feature endpoints answer 503");
    }
    let shared = Shared {
        feature_freshness: Default::default(),
        features,
        corridors,
        events,
        server_id: events::server_id(),
        generation: std::sync::atomic::AtomicU64::new(0),
        registry: ArcSwap::from_pointee(registry),
        canary: canary::CanaryMonitor::new(config.canary.clone()),
        metrics: metrics_handle(),
        audit: AuditLog::new(config.state_dir.join("audit.jsonl")),
        devices: DeviceLayer::discover(),
        options: EngineOptions {
            instances: config.engine_instances,
            threads: None,
        },
        onnx_unavailable,
        models: ArcSwap::from_pointee(ModelTable::default()),
        reload_lock: tokio::sync::Mutex::new(()),
        config,
    };
    let table = ModelTable::load(&shared.config.model_repository, &shared.loader())?;
    shared.set_models(Arc::new(table));
    Ok(Arc::new(shared))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "internal error while handling the request".into(),
    }
    .into_response()
}

/// The HTTP API with its body limit, JSON 404s and a last-resort panic guard.
pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    v2::routes()
        .merge(repository::routes())
        .merge(admin::routes())
        .merge(features::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// What the server serves: the [`router`] behind the reply cache ([`reply_cache::App`]).
pub fn app(state: AppState) -> reply_cache::App {
    let router = router(state.clone());
    reply_cache::App::new(state, router)
}
