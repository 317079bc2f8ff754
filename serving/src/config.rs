//! Configuration: `invariant.toml` (embedded default, then a file), then `INVARIANT_*`
//! environment variables, then command-line flags.

use invariant_core::CorridorId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The shipped `invariant.toml`, used when no file is given.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../invariant.toml");

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file or environment does not fit the schema.
    #[error("configuration: {0}")]
    Parse(String),
    /// The values are inconsistent.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Top-level keys that environment variables may override; other `INVARIANT_*` variables
/// (used by tools and tests) are not configuration.
const ENV_KEYS: [&str; 21] = [
    "model_repository",
    "feature_repository",
    "feature_store",
    "feature_backend",
    "feature_redis_url",
    "golden_vectors",
    "state_dir",
    "registry_state",
    "onnxruntime_lib",
    "engine_instances",
    "server__",
    "canary__",
    "cache__",
    "pools__",
    "governance__",
    "auth__",
    "limits__",
    "audit__",
    "control__",
    "object_store__",
    "review__",
];

fn is_config_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ENV_KEYS.iter().any(|k| {
        if k.ends_with("__") {
            key.starts_with(k)
        } else {
            key == *k
        }
    })
}

/// One declared corridor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorridorConfig {
    /// Corridor id, e.g. `UAE-SA`.
    pub id: CorridorId,
    /// Market the corridor belongs to.
    pub market: u32,
    /// Region name.
    pub region: String,
    /// Concurrent engine runs of this corridor (default: `pools.workers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Requests that may wait beyond the running ones (default: `pools.queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// This corridor's own Redis for the L2 cache (default: `cache.redis_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// This corridor's own Redis for feature rows (default: `feature_redis_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_redis_url: Option<String>,
    /// Inference requests per second admitted in this corridor (default: by its market, from
    /// `governance.corridor_rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address of the HTTP API.
    pub http_addr: String,
    /// Listen address of the gRPC API (`inference.GRPCInferenceService`); empty (the default
    /// when the key is absent): no gRPC listener.
    #[serde(default)]
    pub grpc_addr: String,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Corridor for requests that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_corridor: Option<CorridorId>,
    /// Open connections per listener at most (also kept below the process's descriptor
    /// limit); more are answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections per client address at most.
    #[serde(default = "default_max_per_client")]
    pub max_connections_per_client: usize,
    /// A client must send a complete request head within this many milliseconds of
    /// connecting or of starting the head.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and no traffic is closed after this.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// An HTTP request (body included) must be answered within this; 408 after it.
    #[serde(default = "default_http_request_timeout")]
    pub http_request_timeout_ms: u64,
    /// Header fields per request at most (431 past it).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Bytes of request head (HTTP/1) or header list (HTTP/2) at most (431 past it).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// TLS on both listeners (absent: plain text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Allow plain text on addresses that are not loopback (e.g. behind a TLS-terminating
    /// proxy); without it, such a listener is refused at start.
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// `[server.tls]`: PEM files, re-read on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle: when set, clients must present a certificate it signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

fn default_max_connections() -> usize {
    4096
}
fn default_max_per_client() -> usize {
    512
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_idle_timeout() -> u64 {
    60_000
}
fn default_http_request_timeout() -> u64 {
    30_000
}
fn default_max_headers() -> usize {
    64
}
fn default_max_header_bytes() -> usize {
    16 << 10
}

fn default_feature_backend() -> String {
    "embedded".into()
}

fn default_feature_repository() -> PathBuf {
    PathBuf::from("features")
}

/// `[canary]`: when a canary is rolled back automatically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Sliding window length.
    #[serde(default = "default_window")]
    pub window_seconds: f64,
    /// Requests in the window before a verdict.
    #[serde(default = "default_min_requests")]
    pub min_requests: usize,
    /// Error rate above which the canary is rolled back (0.05 = 5 %).
    #[serde(default = "default_error_rate")]
    pub max_error_rate: f64,
    /// p99 latency above which the canary is rolled back, in milliseconds.
    #[serde(default = "default_p99")]
    pub max_p99_ms: f64,
}

fn default_window() -> f64 {
    60.0
}
fn default_min_requests() -> usize {
    20
}
fn default_error_rate() -> f64 {
    0.05
}
fn default_p99() -> f64 {
    2000.0
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            window_seconds: default_window(),
            min_requests: default_min_requests(),
            max_error_rate: default_error_rate(),
            max_p99_ms: default_p99(),
        }
    }
}

/// `[cache]`: the inference cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether answers are cached.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Bytes of answers each corridor's in-process L1 holds at most.
    #[serde(default = "default_l1_bytes")]
    pub l1_max_bytes: u64,
    /// TTL of models whose manifest and name give none.
    #[serde(default = "default_ttl")]
    pub default_ttl_seconds: f64,
    /// Redis L2 shared by corridors without their own (empty: no L2). Also carries the
    /// invalidation messages between replicas.
    #[serde(default)]
    pub redis_url: String,
    /// Timeout of each Redis operation; a slower Redis counts as a miss.
    #[serde(default = "default_redis_timeout")]
    pub redis_timeout_ms: u64,
    /// Whether the Redis L2 is needed to serve: when true, `/v2/health/ready` answers 503
    /// while a corridor's L2 cannot be reached (when false, an unreachable L2 only means
    /// misses).
    #[serde(default)]
    pub redis_required: bool,
    /// `[cache.ttl]`: TTL in seconds by model name, for models whose manifest gives none.
    #[serde(default)]
    pub ttl: std::collections::BTreeMap<String, f64>,
}

fn yes() -> bool {
    true
}
fn default_l1_bytes() -> u64 {
    64 << 20
}
fn default_ttl() -> f64 {
    60.0
}
fn default_redis_timeout() -> u64 {
    50
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            l1_max_bytes: default_l1_bytes(),
            default_ttl_seconds: default_ttl(),
            redis_url: String::new(),
            redis_timeout_ms: default_redis_timeout(),
            redis_required: false,
            ttl: Default::default(),
        }
    }
}

/// `[pools]`: per-corridor serving pools (defaults for every corridor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsConfig {
    /// Concurrent engine runs per corridor.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Requests that may wait beyond the running ones; more are answered 429.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Deadline of a request unless its `x-deadline-ms` header says otherwise; 504 after it.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// Dynamic batching of batch-invariant versions.
    #[serde(default = "yes")]
    pub batching: bool,
    /// How long a batch waits for more requests after its first (0: it takes what is queued
    /// and runs; requests arriving meanwhile form the next batch). Timers have millisecond
    /// resolution, so small values round up to about 1 ms.
    #[serde(default = "default_delay")]
    pub max_queue_delay_us: u64,
    /// Feature-store calls (reads, pushes, enrichment reads) in flight per corridor; more are
    /// answered 429 at once, so one corridor's slow or hung store never takes threads that
    /// other corridors need.
    #[serde(default = "default_feature_concurrency")]
    pub feature_concurrency: usize,
    /// How long a feature-store call may take before it is answered 504 (an enriched
    /// inference also stops at its own deadline).
    #[serde(default = "default_feature_timeout")]
    pub feature_timeout_ms: u64,
}

fn default_feature_concurrency() -> usize {
    16
}
fn default_feature_timeout() -> u64 {
    2_000
}

fn default_workers() -> usize {
    2
}
fn default_queue() -> usize {
    64
}
fn default_timeout() -> u64 {
    10_000
}
fn default_delay() -> u64 {
    0
}

impl Default for PoolsConfig {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            queue: default_queue(),
            request_timeout_ms: default_timeout(),
            batching: true,
            max_queue_delay_us: default_delay(),
            feature_concurrency: default_feature_concurrency(),
            feature_timeout_ms: default_feature_timeout(),
        }
    }
}

/// `[auth]`: API keys (docs/security.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The key file (empty: `keys.json` in `state_dir`) of the file control backend.
    #[serde(default)]
    pub keys: String,
    /// The pepper file (empty: `key-pepper` in `state_dir`); `INVARIANT_KEY_PEPPER` wins.
    #[serde(default)]
    pub pepper_file: String,
    /// Authentication switched off. Never read from a file or the environment: only
    /// `invariant serve --dev-no-auth` (loopback addresses only) sets it.
    #[serde(skip)]
    pub disabled_for_development: bool,
}

/// `[control]`: the shared control state (docs/replicas.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// `file` (one node: `registry_state`, `governance.state`, `auth.keys`) or `redis`
    /// (replicas sharing one Redis).
    #[serde(default = "default_control_backend")]
    pub backend: String,
    /// The Redis of the `redis` backend (empty: `cache.redis_url`).
    #[serde(default)]
    pub redis_url: String,
    /// Prefix of its keys and channel, so deployments can share one Redis.
    #[serde(default = "default_control_prefix")]
    pub key_prefix: String,
    /// Every document's revision is re-read at least this often, so a change whose
    /// notification was missed is applied within this period.
    #[serde(default = "default_control_poll")]
    pub poll_ms: u64,
}

fn default_control_backend() -> String {
    "file".into()
}

fn default_control_prefix() -> String {
    "inv".into()
}

fn default_control_poll() -> u64 {
    1000
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            backend: default_control_backend(),
            redis_url: String::new(),
            key_prefix: default_control_prefix(),
            poll_ms: default_control_poll(),
        }
    }
}

/// `[limits.*]`: what a model repository, a golden file and a lifecycle change may ask for
/// (docs/model-repository.md, "Limits"). A version over a limit is refused with the field
/// and the limit; the rest of the repository serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Manifest numbers and artifact sizes.
    #[serde(default)]
    pub repository: invariant_registry::Limits,
    /// Golden vector files.
    #[serde(default)]
    pub golden: invariant_verify::GoldenLimits,
    /// Lifecycle changes and the history kept.
    #[serde(default)]
    pub lifecycle: invariant_registry::lifecycle::LifecycleLimits,
    /// What one request may carry.
    #[serde(default)]
    pub request: RequestLimits,
}

/// `[limits.request]`: what one request may carry beyond the body size and the manifest's
/// shapes (each breach a 400 naming the field and the limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestLimits {
    /// Entity keys in one feature read or enriched inference (all join keys together).
    pub max_entities: usize,
    /// Rows in one feature push.
    pub max_push_rows: usize,
    /// Bytes of one BYTES tensor element.
    pub max_bytes_element: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_entities: 1000,
            max_push_rows: 10_000,
            max_bytes_element: 1 << 20,
        }
    }
}

impl RequestLimits {
    /// Refuses more than `max_entities` entity keys in `entities` (join key → keys).
    pub fn check_entities(
        &self,
        field: &str,
        entities: &std::collections::BTreeMap<String, Vec<serde_json::Value>>,
    ) -> Result<(), String> {
        let n: usize = entities.values().map(Vec::len).sum();
        if n > self.max_entities {
            return Err(format!(
                "{field}: {n} entity keys exceed the limit of {} (limits.request.max_entities)",
                self.max_entities
            ));
        }
        Ok(())
    }

    /// Refuses BYTES elements longer than `max_bytes_element`.
    pub fn check_tensors(&self, tensors: &[invariant_core::Tensor]) -> Result<(), String> {
        for (i, t) in tensors.iter().enumerate() {
            if let invariant_core::TensorData::Bytes(elements) = &t.data {
                if let Some((j, e)) = elements
                    .iter()
                    .enumerate()
                    .find(|(_, e)| e.len() > self.max_bytes_element)
                {
                    return Err(format!(
                        "inputs[{i}] ('{}'): element {j} is {} bytes, over the limit of {} (limits.request.max_bytes_element)",
                        t.name,
                        e.len(),
                        self.max_bytes_element
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The audit trail (`[audit]`): hash-chained records per corridor of every inference and
/// every admin action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `durable` (an answer is sent only once its record is on disk) or `buffered` (records
    /// synced at least every `flush_ms`; a crash loses at most that window).
    pub mode: invariant_audit::Mode,
    /// Buffered mode's longest wait between a record and its sync, in milliseconds.
    pub flush_ms: u64,
    /// Segment files are closed past this many bytes.
    pub segment_bytes: u64,
    /// Where the chains live (empty: `audit/` in `state_dir`).
    pub dir: String,
    /// Keep the chains in this Redis instead (one stream per corridor; replicas sharing it
    /// keep one chain per corridor between them). Empty: the files.
    pub redis_url: String,
    /// Record every inference (the design's `LOG_ALL_INFERENCE`); admin actions are always
    /// recorded.
    pub inference: bool,
    /// Per-model settings, by model name: `retain_inputs = true` keeps each inference's inputs
    /// in its record so `invariant audit replay` can re-run it.
    pub models: std::collections::BTreeMap<String, AuditModelConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            mode: invariant_audit::Mode::Buffered,
            flush_ms: 50,
            segment_bytes: 64 << 20,
            dir: String::new(),
            redis_url: String::new(),
            inference: true,
            models: Default::default(),
        }
    }
}

/// One model's audit settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditModelConfig {
    /// Keep the inputs (as the engine saw them, features included) in every inference record.
    #[serde(default)]
    pub retain_inputs: bool,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model repository: a directory, or `s3://bucket/prefix` (mirrored into the object
    /// cache; `[object_store]`).
    pub model_repository: PathBuf,
    /// Golden vectors: a directory, or `s3://bucket/prefix`.
    pub golden_vectors: PathBuf,
    /// Directory of server state (audit log).
    pub state_dir: PathBuf,
    /// Feature repository: `*.toml` definitions of entities, feature views and services.
    #[serde(default = "default_feature_repository")]
    pub feature_repository: PathBuf,
    /// The embedded online store file (empty: `features.redb` in `state_dir`).
    #[serde(default)]
    pub feature_store: String,
    /// Where feature rows live: `embedded` (the redb file) or `redis`.
    #[serde(default = "default_feature_backend")]
    pub feature_backend: String,
    /// Redis of the feature store for corridors that name none (`feature_backend = "redis"`).
    #[serde(default)]
    pub feature_redis_url: String,
    /// Registry state file of the file control backend (empty: `registry.json` in
    /// `state_dir`; one left in the model repository by an older release is adopted once).
    #[serde(default)]
    pub registry_state: String,
    /// Canary auto-rollback limits.
    #[serde(default)]
    pub canary: CanaryConfig,
    /// Inference cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Per-corridor pools and batching.
    #[serde(default)]
    pub pools: PoolsConfig,
    /// Corridor governance: switches, limits, breakers, degradation levels.
    #[serde(default)]
    pub governance: invariant_governance::Settings,
    /// Explicit path of `libonnxruntime.so` (empty: search).
    #[serde(default)]
    pub onnxruntime_lib: String,
    /// ONNX Runtime sessions of the instance of each ONNX version that verification, the gate
    /// and metadata use (each corridor serves from its own instance, sized to its workers).
    pub engine_instances: usize,
    /// API keys.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Bounds on repositories, golden files and lifecycle changes.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Where the control state (registry, governance, API keys) lives.
    #[serde(default)]
    pub control: ControlConfig,
    /// How to reach an `s3://` model repository or golden vector store.
    #[serde(default)]
    pub object_store: invariant_remote::Settings,
    /// The human review queue: SLAs, claim expiry, overflow rules.
    #[serde(default)]
    pub review: invariant_review::Settings,
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Declared corridors.
    pub corridors: Vec<CorridorConfig>,
}

impl Config {
    /// Loads the configuration: `file` if given (it must exist), else the embedded defaults;
    /// then environment overrides (`INVARIANT_KEY`, `INVARIANT_SERVER__HTTP_ADDR`, ...).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        use figment::providers::{Env, Format, Toml};
        let base = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Parse(format!("cannot read {}: {e}", path.display())))?;
                Toml::string(&text)
            }
            None => Toml::string(EMBEDDED_DEFAULTS),
        };
        let config: Config = figment::Figment::from(base)
            .merge(
                Env::prefixed("INVARIANT_")
                    .filter(|key| is_config_key(key.as_str()))
                    .split("__"),
            )
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the schema cannot: unique corridors, a declared default corridor.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut ids: Vec<&CorridorId> = self.corridors.iter().map(|c| &c.id).collect();
        ids.sort();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid(format!("corridor {} is declared twice", w[0])));
        }
        self.review.validate().map_err(ConfigError::Invalid)?;
        if !matches!(self.control.backend.as_str(), "file" | "redis") {
            return Err(ConfigError::Invalid(format!(
                "control.backend = \"{}\": use \"file\" or \"redis\"",
                self.control.backend
            )));
        }
        if let Some(default) = &self.server.default_corridor {
            if self.corridor(default.as_str()).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "server.default_corridor {default} is not a declared corridor"
                )));
            }
        }
        let s = &self.server;
        for (name, value) in [
            ("server.max_connections", s.max_connections as u64),
            ("server.max_connections_per_client", s.max_connections_per_client as u64),
            ("server.header_read_timeout_ms", s.header_read_timeout_ms),
            ("server.idle_timeout_ms", s.idle_timeout_ms),
            ("server.http_request_timeout_ms", s.http_request_timeout_ms),
            ("server.max_headers", s.max_headers as u64),
            ("server.max_header_bytes", s.max_header_bytes as u64),
            ("server.max_body_bytes", s.max_body_bytes as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        let max_ttl = self.limits.repository.max_cache_ttl_seconds;
        for (name, ttl) in std::iter::once(("cache.default_ttl_seconds".to_string(), self.cache.default_ttl_seconds))
            .chain(self.cache.ttl.iter().map(|(m, t)| (format!("cache.ttl.{m}"), *t)))
        {
            if !ttl.is_finite() || !(0.0..=max_ttl).contains(&ttl) {
                return Err(ConfigError::Invalid(format!(
                    "{name} = {ttl} must be between 0 and {max_ttl} seconds (limits.repository.max_cache_ttl_seconds)"
                )));
            }
        }
        if !(10..=60_000).contains(&self.control.poll_ms) {
            return Err(ConfigError::Invalid(format!(
                "control.poll_ms = {} must be between 10 and 60000",
                self.control.poll_ms
            )));
        }
        if self.engine_instances == 0 {
            return Err(ConfigError::Invalid("engine_instances must be at least 1".into()));
        }
        self.governance
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// The TTL of a model's cached answers: its manifest's `cache_ttl_seconds`, else
    /// `[cache.ttl]` for its name, else `cache.default_ttl_seconds`.
    pub fn cache_ttl(&self, model: &str, manifest_ttl: Option<f64>) -> std::time::Duration {
        let by_name = self.cache.ttl.get(model).copied();
        let seconds = manifest_ttl.or(by_name).unwrap_or(self.cache.default_ttl_seconds);
        // Validated finite and bounded at load; a NaN or huge value cannot panic here either.
        std::time::Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(std::time::Duration::ZERO)
    }

    /// Opens the feature store this configuration describes.
    pub fn open_feature_store(
        &self,
    ) -> Result<invariant_featurestore::FeatureStore, invariant_featurestore::FeatureError> {
        use invariant_featurestore::{FeatureError, FeatureStore};
        match self.feature_backend.as_str() {
            "embedded" => FeatureStore::open(
                &self.feature_repository,
                &self.features_applied_path(),
                &self.feature_store_path(),
            ),
            "redis" => {
                let mut urls = std::collections::BTreeMap::new();
                for c in &self.corridors {
                    let url = c
                        .feature_redis_url
                        .clone()
                        .unwrap_or_else(|| self.feature_redis_url.clone());
                    if url.is_empty() {
                        return Err(FeatureError::Definition(format!(
                            "feature_backend = \"redis\" but corridor {} has no feature_redis_url",
                            c.id
                        )));
                    }
                    urls.insert(c.id.to_string(), url);
                }
                // Global views live in the shared feature Redis (else the first corridor's).
                let global = if self.feature_redis_url.is_empty() {
                    urls.values().next().cloned().unwrap_or_default()
                } else {
                    self.feature_redis_url.clone()
                };
                urls.insert(invariant_featurestore::GLOBAL.to_string(), global);
                FeatureStore::open_redis(
                    &self.feature_repository,
                    &self.features_applied_path(),
                    &urls,
                    std::time::Duration::from_millis(500),
                )
            }
            other => Err(FeatureError::Definition(format!(
                "feature_backend '{other}': use \"embedded\" or \"redis\""
            ))),
        }
    }

    /// Where `invariant features apply` records the definitions the server serves.
    pub fn features_applied_path(&self) -> PathBuf {
        self.state_dir.join("features-applied.json")
    }

    /// Where the embedded feature store lives.
    pub fn feature_store_path(&self) -> PathBuf {
        if self.feature_store.is_empty() {
            self.state_dir.join("features.redb")
        } else {
            PathBuf::from(&self.feature_store)
        }
    }

    /// Where the governance control state is stored.
    pub fn governance_state_path(&self) -> PathBuf {
        if self.governance.state.is_empty() {
            self.state_dir.join("governance.json")
        } else {
            PathBuf::from(&self.governance.state)
        }
    }

    /// The corridors and their markets, as governance names them.
    pub fn topology(&self) -> invariant_governance::state::Topology {
        invariant_governance::state::Topology {
            corridors: self.corridors.iter().map(|c| (c.id.to_string(), c.market)).collect(),
        }
    }

    /// Opens governance over this configuration's corridors (its limits), its state in `control`.
    pub fn open_governance(
        &self,
        control: invariant_control::Control,
    ) -> Result<invariant_governance::Governance, invariant_governance::store::StoreError> {
        let rates = self
            .corridors
            .iter()
            .filter_map(|c| c.rate_limit.map(|r| (c.id.to_string(), f64::from(r))))
            .collect();
        invariant_governance::Governance::open(self.governance.clone(), self.topology(), &rates, control)
    }

    /// Where the review queue is stored (the embedded backend's file).
    pub fn review_path(&self) -> PathBuf {
        self.state_dir.join("review.redb")
    }

    /// The review queue's settings with the Redis of its `redis` backend resolved
    /// (`review.redis_url`, else the control state's Redis).
    pub fn review_settings(&self) -> invariant_review::Settings {
        let mut settings = self.review.clone();
        if settings.redis_url.is_empty() {
            settings.redis_url = self.control_redis_url().to_string();
        }
        settings
    }

    /// Where the audit chains live.
    pub fn audit_dir(&self) -> PathBuf {
        if self.audit.dir.is_empty() {
            self.state_dir.join("audit")
        } else {
            PathBuf::from(&self.audit.dir)
        }
    }

    /// The audit trail's settings.
    pub fn audit_settings(&self) -> invariant_audit::Settings {
        invariant_audit::Settings {
            dir: self.audit_dir(),
            mode: self.audit.mode,
            flush_ms: self.audit.flush_ms,
            segment_bytes: self.audit.segment_bytes.max(4096),
            redis_url: self.audit.redis_url.clone(),
        }
    }

    /// Where the API keys are stored.
    pub fn keys_path(&self) -> PathBuf {
        if self.auth.keys.is_empty() {
            self.state_dir.join("keys.json")
        } else {
            PathBuf::from(&self.auth.keys)
        }
    }

    /// Where the key pepper is read from (unless `INVARIANT_KEY_PEPPER` is set).
    pub fn pepper_path(&self) -> PathBuf {
        if self.auth.pepper_file.is_empty() {
            self.state_dir.join("key-pepper")
        } else {
            PathBuf::from(&self.auth.pepper_file)
        }
    }

    /// Where the file backend stores the registry state (lifecycle, canaries, history).
    pub fn registry_state_path(&self) -> PathBuf {
        if self.registry_state.is_empty() {
            self.state_dir.join("registry.json")
        } else {
            PathBuf::from(&self.registry_state)
        }
    }

    /// Where releases before the control state kept the registry state by default.
    pub fn legacy_registry_state_path(&self) -> PathBuf {
        self.model_repository.join("registry.json")
    }

    /// The Redis of the `redis` control backend.
    pub fn control_redis_url(&self) -> &str {
        if self.control.redis_url.is_empty() {
            &self.cache.redis_url
        } else {
            &self.control.redis_url
        }
    }

    /// Opens the control state's backend, then adopts (once) documents it has never stored
    /// from their earlier homes: the registry file an older release kept in the model
    /// repository, and, for the Redis backend, this node's files (moving one node to
    /// replicas).
    pub fn open_control(&self) -> Result<invariant_control::Control, invariant_control::ControlError> {
        use invariant_control::{file::FileBackend, redis_backend::RedisBackend, Control, GOVERNANCE, KEYS, REGISTRY};
        let files = [
            (REGISTRY, self.registry_state_path()),
            (GOVERNANCE, self.governance_state_path()),
            (KEYS, self.keys_path()),
        ];
        let control = match self.control.backend.as_str() {
            "redis" => {
                let url = self.control_redis_url();
                if url.is_empty() {
                    return Err(invariant_control::ControlError::Unavailable {
                        doc: "*".into(),
                        place: "[control]".into(),
                        message: "backend \"redis\" needs control.redis_url or cache.redis_url".into(),
                    });
                }
                Control::new(std::sync::Arc::new(RedisBackend::open(url, &self.control.key_prefix)?))
            }
            _ => Control::new(std::sync::Arc::new(FileBackend::new(files.clone()))),
        };
        let mut earlier: Vec<(&str, PathBuf)> = Vec::new();
        if control.backend().kind() == "redis" {
            earlier.extend(files.iter().cloned());
        }
        if self.registry_state.is_empty() {
            earlier.push((REGISTRY, self.legacy_registry_state_path()));
        }
        for (doc, path) in earlier {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            if control.adopt(doc, &bytes)? {
                tracing::info!(
                    document = doc,
                    from = %path.display(),
                    to = %control.backend().place(),
                    "adopted the control document from its earlier home"
                );
            }
        }
        Ok(control)
    }

    /// The declared corridor with this id (case-insensitive), if any.
    pub fn corridor(&self, id: &str) -> Option<&CorridorConfig> {
        let id = CorridorId::parse(id).ok()?;
        self.corridors.iter().find(|c| c.id == id)
    }

    /// Where `libonnxruntime.so` is: `onnxruntime_lib`, else `ORT_DYLIB_PATH`, else
    /// `.deps/onnxruntime/lib/libonnxruntime.so` in the working directory, the executable's
    /// directory, or any of their ancestors.
    pub fn onnxruntime_path(&self) -> Option<PathBuf> {
        if !self.onnxruntime_lib.is_empty() {
            return Some(PathBuf::from(&self.onnxruntime_lib));
        }
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let starts = [
            std::env::current_dir().ok(),
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf)),
        ];
        starts.into_iter().flatten().find_map(|start| {
            start
                .ancestors()
                .map(|dir| dir.join(".deps/onnxruntime/lib/libonnxruntime.so"))
                .find(|candidate| candidate.exists())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let c: Config = toml::from_str(EMBEDDED_DEFAULTS).unwrap();
        c.validate().unwrap();
        assert!(c.corridor("uae-sa").is_some());
        assert_eq!(c.server.default_corridor.as_ref().map(|c| c.as_str()), Some("UAE-SA"));
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let vars = [
            ("INVARIANT_CACHE__L1_MAX_BYTES", "0"),
            ("INVARIANT_CACHE__REDIS_URL", "redis://127.0.0.1:1/"),
            ("INVARIANT_POOLS__WORKERS", "5"),
            ("INVARIANT_POOLS__BATCHING", "false"),
            ("INVARIANT_CANARY__MAX_ERROR_RATE", "0.5"),
            ("INVARIANT_REGISTRY_STATE", "/tmp/r.json"),
            ("INVARIANT_TEST_UNRELATED", "ignored"),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let c = Config::load(None);
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        let c = c.unwrap();
        assert_eq!(c.cache.l1_max_bytes, 0);
        assert_eq!(c.cache.redis_url, "redis://127.0.0.1:1/");
        assert_eq!(c.pools.workers, 5);
        assert!(!c.pools.batching);
        assert_eq!(c.canary.max_error_rate, 0.5);
        assert_eq!(c.registry_state, "/tmp/r.json");
    }

    #[test]
    fn rejects_undeclared_default_and_duplicates() {
        let mut c: Config = toml::from_str(EMBEDDED_DEFAULTS).unwrap();
        c.server.default_corridor = Some(CorridorId::parse("FR-MA").unwrap());
        assert!(c.validate().unwrap_err().to_string().contains("FR-MA"));
        let mut c: Config = toml::from_str(EMBEDDED_DEFAULTS).unwrap();
        let dup = c.corridors[0].clone();
        c.corridors.push(dup);
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
    }
}
