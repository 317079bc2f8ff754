//! Advisory pipelines served: `pipelines/<name>/<version>/pipeline.toml` of the model
//! repository, each version verified against its golden decisions at start (only verified
//! versions serve; the highest one unless a request names another). An advisory asks every
//! pinned model through the one request path ([`InferenceService::infer`]: governance, the
//! inference cache, metrics and the audit record apply to each model call), applies the rule
//! table, and is cached for the pipeline's TTL. A model that cannot be asked (killed, breaker
//! open, corridor degraded) makes the declared degraded decision, never a silent guess.
//! Every advisory is audited; one that needs a person enters the corridor's review queue.

use crate::request::{InferBody, Metadata, Target, Transport};
use crate::{InferenceService, ServeError};
use invariant_auth::Role;
use invariant_core::tensor::TensorData;
use invariant_core::Tensor;
use invariant_pipeline::golden::{self, GoldenSet};
use invariant_pipeline::{Advisory, Pipeline, Recommendation, Step, PIPELINES_DIR, PIPELINE_FILE};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Advisories kept in the cache at most (past it, expired ones go, then all).
const CACHE_CAPACITY: usize = 10_000;

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
#[derive(Debug, Default)]
pub struct Pipelines {
    /// Versions by pipeline name, lowest first.
    pub versions: BTreeMap<String, Vec<Entry>>,
    cache: Mutex<BTreeMap<String, (Instant, Value)>>,
}

/// An advisory request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvisoryRequest {
    /// The request's facts.
    pub facts: Map<String, Value>,
    /// A pipeline version (default: the highest verified one).
    #[serde(default)]
    pub version: Option<String>,
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

impl Pipelines {
    /// Loads and verifies every pipeline version of the service's repository.
    pub fn load(service: &InferenceService) -> Self {
        let root = service.config.model_repository.join(PIPELINES_DIR);
        let snapshot = service.snapshot();
        let mut versions: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        let names = std::fs::read_dir(&root).into_iter().flatten().flatten();
        for name in names.filter(|e| e.path().is_dir()) {
            let name_text = name.file_name().to_string_lossy().into_owned();
            for dir in std::fs::read_dir(name.path()).into_iter().flatten().flatten() {
                let file = dir.path().join(PIPELINE_FILE);
                if !file.is_file() {
                    continue;
                }
                let dir_version = dir.file_name().to_string_lossy().into_owned();
                let Ok(version) = semver::Version::parse(&dir_version) else {
                    tracing::warn!(pipeline = %name_text, dir = %dir_version, "not a semantic version; ignored");
                    continue;
                };
                let loaded = std::fs::read(&file)
                    .map_err(|e| format!("{}: {e}", file.display()))
                    .and_then(|b| Pipeline::parse(&b).map_err(|e| e.to_string()))
                    .and_then(|p| {
                        if p.name != name_text || p.version != version {
                            return Err(format!("{} declares {} {}", file.display(), p.name, p.version));
                        }
                        let set = GoldenSet::read(&golden::path(&service.config.golden_vectors, &p.name, &dir_version))
                            .map_err(|e| e.to_string())?;
                        let violations = set.verify(&p, &mut |s, row| score_in(&snapshot.table, s, row));
                        match violations.first() {
                            Some(v) => Err(format!("verification failed ({} violations): {v}", violations.len())),
                            None => Ok(p),
                        }
                    });
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
        }
        for v in versions.values_mut() {
            v.sort_by(|a, b| a.version.cmp(&b.version));
        }
        Self {
            versions,
            cache: Mutex::default(),
        }
    }

    /// The version that serves `name` (`version`, else the highest verified one).
    pub fn pick(&self, name: &str, version: Option<&str>) -> Result<Arc<Pipeline>, ServeError> {
        let entries = self
            .versions
            .get(name)
            .ok_or_else(|| ServeError::not_found(format!("unknown pipeline '{name}'")))?;
        match version {
            Some(v) => {
                let entry = entries
                    .iter()
                    .find(|e| e.version.to_string() == v)
                    .ok_or_else(|| ServeError::not_found(format!("pipeline '{name}' has no version '{v}'")))?;
                entry.pipeline.clone().ok_or_else(|| {
                    ServeError::unavailable(format!(
                        "pipeline {name} {v} does not serve: {}",
                        entry.error.as_deref().unwrap_or("not verified")
                    ))
                })
            }
            None => entries
                .iter()
                .rev()
                .find_map(|e| e.pipeline.clone())
                .ok_or_else(|| ServeError::unavailable(format!("pipeline '{name}' has no verified version"))),
        }
    }

    fn cached(&self, key: &str, ttl: Duration) -> Option<Value> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, v)| v.clone())
    }

    fn keep(&self, key: String, reply: Value, ttl: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), reply));
    }
}

/// Whether a model call's failure is one the degraded policy answers (the model or corridor
/// cannot be asked now) rather than one the caller must see.
fn degrades(e: &ServeError) -> bool {
    matches!(e, ServeError::Unavailable(_) | ServeError::DeadlineExceeded(_))
}

impl InferenceService {
    /// The advisory of `pipeline` for `request` in the caller's corridor (the `infer` role
    /// there), as JSON: the advisory (recommendation, priority, reason codes, scores, source,
    /// advisory hash), the model versions used, whether it came from the cache, and the review
    /// item it raised.
    pub async fn advise(
        self: &Arc<Self>,
        metadata: &Metadata,
        pipeline: &str,
        request: AdvisoryRequest,
    ) -> Result<Value, ServeError> {
        let corridor = self.corridor_of(metadata.corridor.as_deref(), &Map::new())?;
        let caller = self.authorize(metadata, crate::auth::Need::In(Role::Infer, corridor.as_str()))?;
        let pipelines = self
            .pipelines
            .get()
            .ok_or_else(|| ServeError::unavailable("pipelines are not loaded yet"))?;
        let p = pipelines.pick(pipeline, request.version.as_deref())?;
        let facts = p
            .facts(&request.facts)
            .map_err(|e| ServeError::invalid(e.to_string()))?;
        // The key: corridor, pipeline version and content, the checked facts (canonical).
        let key = {
            let mut h = blake3::Hasher::new();
            for part in [corridor.as_str(), &p.name, &p.version.to_string(), &p.content_hash] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            h.update(serde_json::to_string(&facts).unwrap_or_default().as_bytes());
            h.finalize().to_hex().to_string()
        };
        let ttl = Duration::try_from_secs_f64(p.cache_ttl_seconds).unwrap_or(Duration::ZERO);
        if let Some(mut hit) = pipelines.cached(&key, ttl) {
            hit["cached"] = json!(true);
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
        let advisory: Advisory = match &degraded_by {
            None => p.decide(&facts, &scores),
            Some(_) => p.degraded(&facts),
        };
        let models: Vec<Value> = p
            .steps
            .iter()
            .map(|s| json!({"name": s.name, "model": s.model, "version": s.version}))
            .collect();
        let mut reply = json!({
            "corridor": corridor.as_str(),
            "advisory": advisory,
            "models": models,
            "degraded": degraded_by,
            "cached": false,
            "review_item": null,
        });
        let record = json!({
            "actor": caller.id(), "pipeline": p.name, "version": p.version.to_string(),
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
            facts: Some(
                json!({"facts": request.facts, "scores": advisory.scores, "advisory_hash": advisory.advisory_hash}),
            ),
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
            Some(Ok(item)) => reply["review_item"] = json!(item.id),
            Some(Err(e)) => reply["review_error"] = json!(e.to_string()),
            None => {}
        }
        metrics::counter!("invariant_advisories_total", "corridor" => corridor.to_string(), "pipeline" => p.name.clone(),
            "recommendation" => advisory.recommendation.name(), "source" => if degraded_by.is_some() { "degraded" } else { "models" })
        .increment(1);
        // A degraded decision is not cached: the models may answer the next request.
        if degraded_by.is_none() {
            pipelines.keep(key, reply.clone(), ttl);
        }
        Ok(reply)
    }
}
