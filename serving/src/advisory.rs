//! Advisory pipelines served: `pipelines/<name>/<version>/pipeline.toml` of the model
//! repository, each version verified against its golden decisions at load and on every
//! reload (only verified versions serve). Which version answers is the model registry's
//! routing under the name `pipelines/<name>` (active, corridor override, canary share; the
//! highest verified version while none was promoted), unless a request names one. Facts come
//! from the request and from the version's feature services (the request's entity keys, read
//! through the one feature path). An advisory asks every pinned model through the one request
//! path ([`InferenceService::infer`]: governance, the inference cache, metrics and the audit
//! record apply to each model call), applies the rule table, and is cached for the pipeline's
//! TTL. A model that cannot be asked (killed, breaker open, corridor degraded, or answering
//! from its fallback rules) makes the declared degraded decision, never a silent guess.
//! Every advisory is audited; one that needs a person enters the corridor's review queue.

use crate::config::Config;
use crate::request::{InferBody, Metadata, Routing, Target, Transport};
use crate::{InferenceService, ServeError};
use invariant_auth::Role;
use invariant_core::tensor::TensorData;
use invariant_core::{CorridorId, Tensor};
use invariant_featurestore::defs::Definitions;
use invariant_featurestore::GetOnlineRequest;
use invariant_pipeline::golden::{self, GoldenSet};
use invariant_pipeline::{Advisory, FactType, Pipeline, Recommendation, Step, PIPELINES_DIR, PIPELINE_FILE};
use invariant_registry::lifecycle::RegistryState;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Advisories kept in the cache at most (past it, the cache lets the least used go).
const CACHE_CAPACITY: u64 = 10_000;

/// One pipeline version as loaded.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The version.
    pub version: semver::Version,
    /// The pipeline, when it parsed and verified.
    pub pipeline: Option<Arc<Pipeline>>,
    /// Why it does not serve.
    pub error: Option<String>,
}

/// Every pipeline version, and the advisory cache.
#[derive(Debug)]
pub struct Pipelines {
    /// Versions by pipeline name, lowest first.
    pub versions: BTreeMap<String, Vec<Entry>>,
    cache: moka::future::Cache<String, Arc<Kept>>,
}

/// An advisory in the cache: when it was computed, and how long it may be kept.
#[derive(Debug)]
struct Kept {
    at: Instant,
    kept_for: Duration,
    reply: AdvisoryReply,
}

struct KeptExpiry;

impl moka::Expiry<String, Arc<Kept>> for KeptExpiry {
    fn expire_after_create(&self, _key: &String, value: &Arc<Kept>, _created_at: Instant) -> Option<Duration> {
        Some(value.kept_for)
    }
}

impl Default for Pipelines {
    fn default() -> Self {
        Self::with_versions(BTreeMap::new())
    }
}

/// The registry name of pipeline `name` (`pipelines/<name>`: model names hold no `/`, so the
/// two never meet): its lifecycle (stage, canary, promote, rollback, deprecate) is the model
/// registry's, under this name.
pub fn subject(name: &str) -> String {
    format!("{SUBJECT_PREFIX}{name}")
}

/// The prefix of pipeline names in the registry.
pub const SUBJECT_PREFIX: &str = "pipelines/";

/// An advisory request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvisoryRequest {
    /// The request's facts.
    #[serde(default)]
    pub facts: Map<String, Value>,
    /// Entity keys for the pipeline's feature services, by join key (`{"account_id": "a1"}`).
    #[serde(default)]
    pub entities: BTreeMap<String, Value>,
    /// A pipeline version (default: the registry's routing among verified versions).
    #[serde(default)]
    pub version: Option<String>,
}

/// A model version an advisory used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelUsed {
    /// The step.
    pub name: String,
    /// The model.
    pub model: String,
    /// Its pinned version.
    pub version: String,
}

/// A feature an advisory read, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureUsed {
    /// The feature service.
    pub service: String,
    /// The feature (the fact it fills).
    pub feature: String,
    /// The store's status: `PRESENT`, `NOT_FOUND` or `OUTSIDE_MAX_AGE`.
    pub status: String,
    /// The value the fact took from it (`null` when the fact did not come from the store).
    pub value: Value,
    /// `store` (the stored value), `default` (the feature's declared default: nothing
    /// fresh is stored), `request` (the request gave the fact itself) or `missing`.
    pub used: &'static str,
}

/// An advisory as answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdvisoryReply {
    /// The corridor.
    pub corridor: String,
    /// How the pipeline version was chosen: `explicit`, `active` or `canary`.
    pub routing: &'static str,
    /// The advisory.
    pub advisory: Advisory,
    /// Every model version the pipeline asks.
    pub models: Vec<ModelUsed>,
    /// Every feature read.
    pub features: Vec<FeatureUsed>,
    /// Why the models could not be asked (the degraded policy decided), if so.
    pub degraded: Option<String>,
    /// Whether the answer came from the advisory cache.
    pub cached: bool,
    /// The review item it raised (`None` for `auto_clear` or when intake is stopped).
    pub review_item: Option<String>,
    /// Why intake refused the item, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_error: Option<String>,
}

/// A step's input: its row of facts as one FP32 row of its input tensor.
fn row_tensor(step: &Step, row: Vec<f32>) -> Result<Tensor, String> {
    Tensor::new(step.input.clone(), vec![1, row.len()], TensorData::Fp32(row), "row").map_err(|e| e.to_string())
}

/// Scores one step with `model` (the step's pinned version), in-process, outside the request
/// path: what golden verification of a pipeline runs (the server's, and the gate's).
pub fn score_model(model: &invariant_engine::Model, step: &Step, row: &[f32]) -> Result<f64, String> {
    let outputs = model
        .infer(vec![row_tensor(step, row.to_vec())?])
        .map_err(|e| e.to_string())?;
    output_value(&outputs, step)
}

/// Scores one step with a loaded, verified model version of the serving table.
fn score_in(table: &crate::models::ModelTable, step: &Step, row: &[f32]) -> Result<f64, String> {
    let serving = table
        .resolve(&step.model, Some(&step.version))
        .map_err(|_| format!("{} {} is not loaded and verified", step.model, step.version))?;
    score_model(&serving.model, step, row)
}

/// A step's score in a model's outputs: element `step.index` of output `step.output`, as f64
/// (exactly).
fn output_value(outputs: &[Tensor], step: &Step) -> Result<f64, String> {
    let out = outputs
        .iter()
        .find(|t| t.name == step.output)
        .ok_or_else(|| format!("no output '{}'", step.output))?;
    let value = match &out.data {
        TensorData::Fp32(v) => v.get(step.index).map(|x| f64::from(*x)),
        TensorData::Fp64(v) => v.get(step.index).copied(),
        TensorData::Int64(v) => v.get(step.index).map(|x| *x as f64),
        TensorData::Int32(v) => v.get(step.index).map(|x| f64::from(*x)),
        _ => return Err(format!("output '{}' is not numeric", step.output)),
    };
    value.ok_or_else(|| format!("output '{}' has no element {}", step.output, step.index))
}

/// Checks a pipeline's feature inputs against the feature repository: each service exists,
/// and each of its features is a fact of the pipeline that a feature value can fill (a
/// number fact for a numeric feature, a bool fact for a BOOL one).
/// Used by the server at load and by the gate.
pub fn check_features(p: &Pipeline, defs: Result<&Definitions, String>) -> Result<(), String> {
    if p.features.is_empty() {
        return Ok(());
    }
    let defs =
        defs.map_err(|why| format!("it reads feature services, but the feature store is not available: {why}"))?;
    for (i, input) in p.features.iter().enumerate() {
        let service = defs
            .service(&input.service)
            .ok_or_else(|| format!("features[{i}].service: unknown feature service '{}'", input.service))?;
        let refs = defs.resolve(&service.features).map_err(|e| e.to_string())?;
        for r in refs {
            let feature = &defs.views[r.view].features[r.feature];
            let fact = p.facts.iter().find(|f| f.name == feature.name).ok_or_else(|| {
                format!(
                    "features[{i}]: feature '{}' of service '{}' is not a fact of the pipeline",
                    feature.name, input.service
                )
            })?;
            let fits = match feature.datatype {
                invariant_core::DataType::Bool => fact.kind == FactType::Bool,
                invariant_core::DataType::Bytes => fact.kind == FactType::String,
                _ => fact.kind == FactType::Number,
            };
            if !fits {
                return Err(format!(
                    "features[{i}]: feature '{}' ({:?}) cannot fill fact '{}' ({:?})",
                    feature.name, feature.datatype, fact.name, fact.kind
                ));
            }
        }
    }
    Ok(())
}

/// Reads and checks pipeline `name` in version directory `version` of the configuration's
/// model repository: the file parses and declares that name and version, its feature services
/// fit `defs`; and reads its golden decisions. What the server loads and the gate checks.
pub fn read_version(
    config: &Config,
    defs: Result<&Definitions, String>,
    name: &str,
    version: &str,
) -> Result<(Pipeline, GoldenSet), String> {
    let file = config
        .model_repository
        .join(PIPELINES_DIR)
        .join(name)
        .join(version)
        .join(PIPELINE_FILE);
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let p = Pipeline::parse(&bytes).map_err(|e| e.to_string())?;
    if p.name != name || p.version.to_string() != version {
        return Err(format!(
            "{} declares {} {}, but lives in {name}/{version}",
            file.display(),
            p.name,
            p.version
        ));
    }
    check_features(&p, defs)?;
    let set = GoldenSet::read(&golden::path(&config.golden_vectors, name, version)).map_err(|e| {
        format!("{e} (record them with `invariant golden record-pipeline {name} {version} --cases FILE`)")
    })?;
    Ok((p, set))
}

/// Reads, checks and verifies pipeline `name` `version` against the loaded model versions of
/// `table`.
fn load_version(
    service: &InferenceService,
    table: &crate::models::ModelTable,
    name: &str,
    version: &semver::Version,
) -> Result<Pipeline, String> {
    // The served definitions; a command-line tool (no store opened) reads them from the
    // repository as the server would.
    let config = &service.config;
    let read;
    let defs = match &service.features {
        Ok(store) => Ok(&store.defs),
        Err(_) => {
            read =
                invariant_featurestore::load_definitions(&config.feature_repository, &config.features_applied_path());
            read.as_ref().map_err(|e| e.to_string())
        }
    };
    let (p, set) = read_version(config, defs, name, &version.to_string())?;
    let violations = set.verify(&p, &mut |s, row| score_in(table, s, row));
    match violations.first() {
        Some(v) => Err(format!("verification failed ({} violations): {v}", violations.len())),
        None => Ok(p),
    }
}

impl Pipelines {
    /// Loads and verifies every pipeline version of the service's repository (a version that
    /// does not parse, reads an unknown feature service or misses a golden decision does not
    /// serve, and says why).
    pub fn load(service: &InferenceService) -> Self {
        let snapshot = service.snapshot();
        let mut versions: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for (name_text, dir_version, _) in invariant_pipeline::versions(&service.config.model_repository) {
            let Ok(version) = semver::Version::parse(&dir_version) else {
                tracing::warn!(pipeline = %name_text, dir = %dir_version, "not a semantic version; ignored");
                continue;
            };
            let loaded = load_version(service, &snapshot.table, &name_text, &version);
            let entry = match loaded {
                Ok(p) => {
                    tracing::info!(pipeline = %p.name, version = %p.version, "pipeline verified");
                    Entry {
                        version,
                        pipeline: Some(Arc::new(p)),
                        error: None,
                    }
                }
                Err(e) => {
                    tracing::error!(pipeline = %name_text, version = %dir_version, "pipeline refused: {e}");
                    Entry {
                        version,
                        pipeline: None,
                        error: Some(e),
                    }
                }
            };
            versions.entry(name_text.clone()).or_default().push(entry);
        }
        for v in versions.values_mut() {
            v.sort_by(|a, b| a.version.cmp(&b.version));
        }
        Self::with_versions(versions)
    }

    /// `versions`, with an empty advisory cache of [`CACHE_CAPACITY`] entries, each kept as
    /// long as its pipeline allows.
    fn with_versions(versions: BTreeMap<String, Vec<Entry>>) -> Self {
        Self {
            versions,
            cache: moka::future::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(KeptExpiry)
                .build(),
        }
    }

    /// The verified version `version` of `name`.
    pub fn verified(&self, name: &str, version: &str) -> Option<Arc<Pipeline>> {
        self.versions
            .get(name)?
            .iter()
            .find(|e| e.version.to_string() == version)?
            .pipeline
            .clone()
    }

    /// The highest verified version of `name`: what serves while no version was promoted.
    pub fn default_version(&self, name: &str) -> Option<String> {
        self.versions
            .get(name)?
            .iter()
            .rev()
            .find(|e| e.pipeline.is_some())
            .map(|e| e.version.to_string())
    }

    /// The version that serves `name` in `corridor` for `key`: `version` when named (any
    /// verified one), else the registry's route among verified versions (canary share,
    /// corridor override, active version), else the highest verified one.
    pub fn route(
        &self,
        registry: &RegistryState,
        name: &str,
        version: Option<&str>,
        corridor: &str,
        key: &[u8],
    ) -> Result<(Arc<Pipeline>, Routing), ServeError> {
        let entries = self
            .versions
            .get(name)
            .ok_or_else(|| ServeError::not_found(format!("unknown pipeline '{name}'")))?;
        if let Some(v) = version {
            let entry = entries
                .iter()
                .find(|e| e.version.to_string() == v)
                .ok_or_else(|| ServeError::not_found(format!("version: pipeline '{name}' has no version '{v}'")))?;
            let p = entry.pipeline.clone().ok_or_else(|| {
                ServeError::unavailable(format!(
                    "pipeline {name} {v} does not serve: {}",
                    entry.error.as_deref().unwrap_or("not verified")
                ))
            })?;
            return Ok((p, Routing::Explicit));
        }
        let default = self.default_version(name);
        let ready = |v: &str| self.verified(name, v).is_some();
        let route = registry
            .route(&subject(name), corridor, key, &ready, default.as_deref())
            .ok_or_else(|| ServeError::unavailable(format!("pipeline '{name}' has no verified version")))?;
        let p = self
            .verified(name, &route.version)
            .ok_or_else(|| ServeError::unavailable(format!("pipeline {name} {} is not verified", route.version)))?;
        Ok((p, Routing::from_reason(route.reason)))
    }

    /// Every version's view: state (READY or FAILED), lifecycle in `registry`, content hash,
    /// models, feature services, why it does not serve.
    pub fn views(&self, registry: &RegistryState) -> Vec<Value> {
        self.versions
            .iter()
            .flat_map(|(name, versions)| {
                let default = self.default_version(name);
                versions.iter().map(move |e| {
                    let v = e.version.to_string();
                    json!({
                        "name": name,
                        "version": v,
                        "state": if e.pipeline.is_some() { "READY" } else { "FAILED" },
                        "lifecycle": registry.lifecycle(&subject(name), &v, default.as_deref()).to_string(),
                        "error": e.error,
                        "content_hash": e.pipeline.as_ref().map(|p| p.content_hash.clone()),
                        "models": e.pipeline.as_ref().map(|p| p.steps.iter().map(|s| json!({"name": s.name, "model": s.model, "version": s.version})).collect::<Vec<_>>()),
                        "features": e.pipeline.as_ref().map(|p| p.features.iter().map(|f| f.service.clone()).collect::<Vec<_>>()),
                    })
                })
            })
            .collect()
    }

    /// The advisory kept under `key`, if it was computed less than `within` ago.
    async fn cached(&self, key: &str, within: Duration) -> Option<AdvisoryReply> {
        let kept = self.cache.get(key).await?;
        (kept.at.elapsed() < within).then(|| kept.reply.clone())
    }

    /// Keeps `reply` under `key` for `kept_for` (the cache may let it go sooner when full).
    async fn keep(&self, key: String, reply: AdvisoryReply, kept_for: Duration) {
        let kept = Kept {
            at: Instant::now(),
            kept_for,
            reply,
        };
        self.cache.insert(key, Arc::new(kept)).await;
    }
}

/// Whether a model call's failure is one the degraded policy answers (the model or corridor
/// cannot be asked now) rather than one the caller must see.
fn degrades(e: &ServeError) -> bool {
    matches!(e, ServeError::Unavailable(_) | ServeError::DeadlineExceeded(_))
}

/// [`invariant_core::hash::parts_hash`], hex.
fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    invariant_core::hash::parts_hash(parts).to_hex().to_string()
}

/// A request's own routing key: its facts and entity keys, canonical (keys sorted, numbers
/// by their f64 value, so `1` over HTTP and `1.0` over gRPC route alike).
fn routing_digest(request: &AdvisoryRequest) -> Vec<u8> {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Number(n) => n.as_f64().map_or(Value::Null, |x| json!(x)),
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), canonical(v))).collect()),
            other => other.clone(),
        }
    }
    let facts = canonical(&Value::Object(request.facts.clone())).to_string();
    let entities: BTreeMap<&String, Value> = request.entities.iter().map(|(k, v)| (k, canonical(v))).collect();
    let entities = serde_json::to_string(&entities).unwrap_or_default();
    digest([facts.as_bytes(), entities.as_bytes()]).into_bytes()
}

impl InferenceService {
    /// The advisory pipelines as loaded now.
    pub fn pipelines(&self) -> Arc<Pipelines> {
        self.pipelines.load_full()
    }

    /// Verifies pipeline `name` `version` again from the files (before it receives traffic):
    /// its golden decisions on the loaded models, and that the file is the one loaded.
    pub(crate) fn reverify_pipeline(&self, name: &str, version: &str) -> Result<(), crate::control::TransitionError> {
        use crate::control::TransitionError;
        let loaded = self
            .pipelines()
            .verified(name, version)
            .ok_or_else(|| TransitionError::Verification(format!("pipeline {name} {version} is not verified")))?;
        let parsed = semver::Version::parse(version)
            .map_err(|e| TransitionError::Verification(format!("version: '{version}': {e}")))?;
        let again = load_version(self, &self.snapshot().table, name, &parsed).map_err(TransitionError::Verification)?;
        if again.content_hash != loaded.content_hash {
            return Err(TransitionError::Verification(format!(
                "pipeline {name} {version} changed on disk since it was verified: reload the pipelines first"
            )));
        }
        Ok(())
    }

    /// Fills `facts` the request did not give from the pipeline's feature services, read in
    /// `corridor` for the request's entity keys (through the one feature read path: its
    /// governance, bulkhead and deadline). A feature with no fresh value fills its fact with
    /// the feature's declared default, and says so.
    async fn pipeline_features(
        &self,
        corridor: &CorridorId,
        p: &Pipeline,
        entities: &BTreeMap<String, Value>,
        facts: &mut Map<String, Value>,
    ) -> Result<Vec<FeatureUsed>, ServeError> {
        let mut used = Vec::new();
        if p.features.is_empty() {
            if let Some(key) = entities.keys().next() {
                return Err(ServeError::invalid(format!(
                    "entities.{key}: pipeline {} {} reads no feature service",
                    p.name, p.version
                )));
            }
            return Ok(used);
        }
        let store = self.feature_store()?;
        let mut wanted = BTreeSet::new();
        for input in &p.features {
            let join_key = store
                .service_join_key(&input.service)
                .ok_or_else(|| ServeError::internal(format!("feature service '{}' has no entity", input.service)))?
                .to_string();
            wanted.insert(join_key.clone());
            let Some(key) = entities.get(&join_key) else {
                continue;
            };
            let request = GetOnlineRequest {
                features: None,
                feature_service: Some(input.service.clone()),
                entities: BTreeMap::from([(join_key.clone(), vec![key.clone()])]),
                full_feature_names: false,
                include_feature_view_version_metadata: false,
            };
            let reply = self.get_online_features(corridor, request).await.map_err(|e| match e {
                ServeError::InvalidArgument(m) => ServeError::invalid(format!("entities.{join_key}: {m}")),
                other => other,
            })?;
            let defaults = store.service_defaults(&input.service).map_err(ServeError::from)?;
            let names = reply.metadata.feature_names.iter().skip(1);
            for ((name, column), default) in names.zip(reply.results.iter().skip(1)).zip(defaults) {
                let status = column.statuses.first().copied().unwrap_or("NOT_FOUND");
                let stored = column.values.first().cloned().unwrap_or(Value::Null);
                let (value, how) = if facts.get(name).is_some_and(|v| !v.is_null()) {
                    (Value::Null, "request")
                } else if status == "PRESENT" && !stored.is_null() {
                    (stored, "store")
                } else if let Some(d) = default {
                    (d, "default")
                } else {
                    (Value::Null, "missing")
                };
                if !value.is_null() {
                    facts.insert(name.clone(), value.clone());
                }
                used.push(FeatureUsed {
                    service: input.service.clone(),
                    feature: name.clone(),
                    status: status.to_string(),
                    value,
                    used: how,
                });
            }
        }
        if let Some(key) = entities.keys().find(|k| !wanted.contains(k.as_str())) {
            return Err(ServeError::invalid(format!(
                "entities.{key}: not the join key of a feature service of pipeline {} {} (it reads {})",
                p.name,
                p.version,
                wanted.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(used)
    }

    /// The advisory of `pipeline` for `request` in the caller's corridor (the `infer` role
    /// there): facts from the request and the pipeline's feature services, every model step
    /// through the one request path, the rule table; the version chosen by the registry (or
    /// named); the advisory (recommendation, priority, reason codes, scores, source, advisory
    /// hash), the model versions and features used, whether it came from the cache, and the
    /// review item it raised.
    pub async fn advise(
        self: &Arc<Self>,
        metadata: &Metadata,
        pipeline: &str,
        request: AdvisoryRequest,
    ) -> Result<AdvisoryReply, ServeError> {
        let corridor = self.corridor_of(metadata.corridor.as_deref(), &Map::new())?;
        let caller = self.authorize(metadata, crate::auth::Need::In(Role::Infer, corridor.as_str()))?;
        let pipelines = self.pipelines();
        // The routing key: the caller's, else the request itself (the same request always
        // reaches the same version, so it always gets the same advisory).
        let key = match &metadata.routing_key {
            Some(k) => k.clone(),
            None => routing_digest(&request),
        };
        let (p, routing) = pipelines.route(
            &self.snapshot().registry,
            pipeline,
            request.version.as_deref(),
            corridor.as_str(),
            &key,
        )?;
        let mut given = request.facts.clone();
        let features = self
            .pipeline_features(&corridor, &p, &request.entities, &mut given)
            .await?;
        let facts = p.facts(&given).map_err(|e| ServeError::invalid(e.to_string()))?;
        // The key: corridor, pipeline version and content, the checked facts (canonical).
        let version = p.version.to_string();
        let canonical = serde_json::to_string(&facts).unwrap_or_default();
        let key = digest([
            corridor.as_str().as_bytes(),
            p.name.as_bytes(),
            version.as_bytes(),
            p.content_hash.as_bytes(),
            canonical.as_bytes(),
        ]);
        let ttl = Duration::try_from_secs_f64(p.cache_ttl_seconds).unwrap_or(Duration::ZERO);
        if let Some(mut hit) = pipelines.cached(&key, ttl).await {
            hit.cached = true;
            hit.routing = routing.name();
            hit.features = features;
            return Ok(hit);
        }
        let mut scores = BTreeMap::new();
        let mut degraded_by = None;
        for (step, row) in p.steps.iter().zip(p.rows(&facts)) {
            let mut target = Target::new(step.model.clone(), Some(step.version.clone()), Transport::InProcess);
            target.metadata = Metadata {
                corridor: Some(corridor.to_string()),
                ..metadata.clone()
            };
            let input = row_tensor(step, row).map_err(ServeError::internal)?;
            let body = InferBody {
                inputs: vec![input],
                outputs: vec![step.output.clone()],
                ..InferBody::default()
            };
            match self.infer(target, move || Ok(body)).await {
                // An answer from the model's declared fallback rules is not its score: the
                // pipeline degrades. (A cached answer for the same input is the model's own.)
                Ok(answer) if answer.degraded.as_ref().is_some_and(|d| d.source != "cache") => {
                    let why = answer
                        .degraded
                        .map(|d| format!("{} ({})", d.reason, d.source))
                        .unwrap_or_default();
                    degraded_by = Some(format!(
                        "{} {}: answered by its fallback: {why}",
                        step.model, step.version
                    ));
                    break;
                }
                Ok(answer) => {
                    let s = output_value(&answer.outputs, step).map_err(ServeError::internal)?;
                    scores.insert(step.name.clone(), s);
                }
                Err(e) if degrades(&e) => {
                    degraded_by = Some(format!("{} {}: {e}", step.model, step.version));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // The declared policy may answer the advisory last computed for these facts.
        let kept_for = match p.on_degraded {
            invariant_pipeline::Degraded::Cached => {
                ttl.max(Duration::try_from_secs_f64(p.degraded_cache_seconds).unwrap_or(Duration::ZERO))
            }
            _ => ttl,
        };
        if let (Some(why), invariant_pipeline::Degraded::Cached) = (&degraded_by, p.on_degraded) {
            if let Some(mut kept) = pipelines.cached(&key, kept_for).await {
                kept.cached = true;
                kept.routing = routing.name();
                kept.features = features;
                kept.degraded = Some(why.clone());
                metrics::counter!("invariant_advisories_total", "corridor" => corridor.to_string(), "pipeline" => p.name.clone(),
                    "recommendation" => kept.advisory.recommendation.name(), "source" => "degraded_cache")
                .increment(1);
                return Ok(kept);
            }
        }
        let advisory: Advisory = match &degraded_by {
            None => p.decide(&facts, &scores),
            Some(_) => p.degraded(&facts),
        };
        let models = p
            .steps
            .iter()
            .map(|s| ModelUsed {
                name: s.name.clone(),
                model: s.model.clone(),
                version: s.version.clone(),
            })
            .collect();
        let mut reply = AdvisoryReply {
            corridor: corridor.to_string(),
            routing: routing.name(),
            advisory: advisory.clone(),
            models,
            features,
            degraded: degraded_by.clone(),
            cached: false,
            review_item: None,
            review_error: None,
        };
        let record = json!({
            "actor": caller.id(), "pipeline": p.name, "version": version, "routing": routing.name(),
            "advisory_hash": advisory.advisory_hash, "recommendation": advisory.recommendation,
            "priority": advisory.priority, "reason_codes": advisory.reason_codes, "source": advisory.source,
        });
        let service = self.clone();
        let chain = corridor.to_string();
        let needs_person = advisory.recommendation != Recommendation::AutoClear;
        let subject = match facts.get("listing_id") {
            Some(invariant_pipeline::Value::Text(id)) => format!("listing:{id}"),
            _ => format!("advisory:{}", &advisory.advisory_hash[..16]),
        };
        let new_item = invariant_review::NewItem {
            priority: advisory.priority.map_or("P4", |p| p.name()).to_string(),
            subject,
            reason_codes: advisory.reason_codes.clone(),
            facts: Some(json!({"facts": given, "scores": advisory.scores, "advisory_hash": advisory.advisory_hash})),
            source: Some(format!("advisory:{}@{}", p.name, p.version)),
        };
        let (corridor_id, actor) = (corridor.clone(), caller.id().to_string());
        let review = tokio::task::spawn_blocking(move || {
            service
                .audit
                .record(Some(&chain), "advisory", &record)
                .map_err(|e| ServeError::unavailable(format!("the advisory could not be audited: {e}")))?;
            Ok::<_, ServeError>(needs_person.then(|| service.review_intake(&corridor_id, &new_item, &actor)))
        })
        .await
        .map_err(|e| ServeError::internal(format!("advisory task failed: {e}")))??;
        match review {
            Some(Ok(item)) => reply.review_item = Some(item.id),
            Some(Err(e)) => reply.review_error = Some(e.to_string()),
            None => {}
        }
        metrics::counter!("invariant_advisories_total", "corridor" => corridor.to_string(), "pipeline" => p.name.clone(),
            "recommendation" => advisory.recommendation.name(), "source" => if degraded_by.is_some() { "degraded" } else { "models" })
        .increment(1);
        // A degraded decision is not cached: the models may answer the next request.
        if degraded_by.is_none() {
            pipelines.keep(key, reply.clone(), kept_for).await;
        }
        Ok(reply)
    }
}
