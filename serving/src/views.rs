//! What the server says about itself and its models, the same for every transport: server
//! readiness, model metadata and readiness, the repository index, Triton's model
//! configuration and statistics. Transports render these; they decide nothing.

use crate::models::{ServingVersion, VersionState};
use crate::service::lookup_error;
use crate::stats::{DurationStat, VersionStats};
use crate::{InferenceService, ServeError, Snapshot};
use invariant_registry::TensorSpec;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One version's readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionReadiness {
    /// The version asked for, or the one that answers the model.
    pub version: Option<String>,
    /// Whether it serves.
    pub ready: bool,
    /// Why not.
    pub error: Option<String>,
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IndexRow {
    /// Model.
    pub name: String,
    /// Version.
    pub version: String,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is unavailable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Whether batches leave every row's bits unchanged (ready versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_invariant: Option<bool>,
    /// The verification hash (ready versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_hash: Option<String>,
}

/// A tensor of a model configuration (Triton's `ModelInput`/`ModelOutput`): dims without the
/// batch dimension when the model batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ConfigTensor {
    /// Name.
    pub name: String,
    /// Triton's `TYPE_*` name.
    pub data_type: String,
    /// Dimensions (-1: variable).
    pub dims: Vec<i64>,
}

/// A model configuration, answered truthfully from the manifest and the serving settings.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelConfig {
    /// Model.
    pub name: String,
    /// The version this configuration describes.
    pub version: String,
    /// `onnxruntime_onnx` or `invariant_native`.
    pub platform: String,
    /// The runtime.
    pub backend: String,
    /// Rows per request at most (0: the model does not batch).
    pub max_batch_size: usize,
    /// Inputs.
    pub input: Vec<ConfigTensor>,
    /// Outputs.
    pub output: Vec<ConfigTensor>,
    /// Whether requests of this version are batched dynamically.
    pub dynamic_batching: bool,
    /// Microseconds a batch waits for more requests.
    pub max_queue_delay_microseconds: u64,
    /// Whether answers are cached.
    pub response_cache: bool,
    /// Engine sessions of the verified instance (1 for native versions, which have none).
    pub instance_count: usize,
}

/// Triton's `TYPE_*` name of a V2 datatype.
pub fn triton_type(datatype: invariant_core::DataType) -> String {
    match datatype {
        invariant_core::DataType::Bytes => "TYPE_STRING".to_string(),
        other => format!("TYPE_{}", other.name()),
    }
}

fn config_tensors(specs: &[TensorSpec], batching: bool) -> Vec<ConfigTensor> {
    specs
        .iter()
        .map(|s| ConfigTensor {
            name: s.name.clone(),
            data_type: triton_type(s.datatype),
            dims: if batching && s.is_batched() {
                s.shape[1..].to_vec()
            } else {
                s.shape.clone()
            },
        })
        .collect()
}

impl InferenceService {
    /// The version that answers `model` (`version` when named, else the active one), with the
    /// snapshot it was found in.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<(Arc<Snapshot>, Arc<ServingVersion>), ServeError> {
        let snapshot = self.snapshot();
        let chosen = match version {
            Some(v) => Some(v.to_string()),
            None => snapshot.active_version(model),
        };
        // A named version is named in errors; the active one is not the caller's choice.
        let serving = snapshot
            .table
            .resolve(model, chosen.as_deref())
            .map_err(|l| lookup_error(model, version, l))?;
        Ok((snapshot, serving))
    }

    /// Whether `model` (`version`) serves. Unknown models and versions are errors.
    pub fn readiness(&self, model: &str, version: Option<&str>) -> Result<VersionReadiness, ServeError> {
        let snapshot = self.snapshot();
        let asked = version.map(str::to_string).or_else(|| snapshot.active_version(model));
        match snapshot.table.resolve(model, asked.as_deref()) {
            Ok(s) => Ok(VersionReadiness {
                version: Some(s.model.manifest().version.to_string()),
                ready: true,
                error: None,
            }),
            Err(crate::models::Lookup::Failed(reason)) => Ok(VersionReadiness {
                version: version.map(str::to_string),
                ready: false,
                error: Some(reason),
            }),
            Err(other) => Err(lookup_error(model, version, other)),
        }
    }

    /// Every version with its state.
    pub fn repository_index(&self) -> Vec<IndexRow> {
        self.snapshot()
            .table
            .entries()
            .map(|(name, e)| match &e.state {
                VersionState::Ready(s) => IndexRow {
                    name: name.to_string(),
                    version: e.version.clone(),
                    state: "READY",
                    reason: String::new(),
                    batch_invariant: Some(s.batch_invariant),
                    verification_hash: Some(s.verification_hash.clone()),
                },
                VersionState::Failed { reason } => IndexRow {
                    name: name.to_string(),
                    version: e.version.clone(),
                    state: "UNAVAILABLE",
                    reason: reason.clone(),
                    batch_invariant: None,
                    verification_hash: None,
                },
            })
            .collect()
    }

    /// The model configuration of `model` (`version`).
    pub fn model_config(&self, model: &str, version: Option<&str>) -> Result<ModelConfig, ServeError> {
        let (_, serving) = self.resolve(model, version)?;
        let m = serving.model.manifest();
        let batching = m.inference.max_batch_size > 1
            && m.inputs.iter().all(TensorSpec::is_batched)
            && m.outputs.iter().all(TensorSpec::is_batched);
        Ok(ModelConfig {
            name: m.name.clone(),
            version: m.version.to_string(),
            platform: m.format.platform().to_string(),
            backend: serving.model.runtime().name.to_string(),
            max_batch_size: if batching { m.inference.max_batch_size } else { 0 },
            input: config_tensors(&m.inputs, batching),
            output: config_tensors(&m.outputs, batching),
            dynamic_batching: batching && self.config.pools.batching && serving.batch_invariant,
            max_queue_delay_microseconds: self.config.pools.max_queue_delay_us,
            response_cache: self.config.cache.enabled
                && !self.config.cache_ttl(&m.name, m.inference.cache_ttl_seconds).is_zero(),
            instance_count: serving.model.sessions().unwrap_or(1),
        })
    }

    /// Statistics of every ready version of `model` (or of every model when `None`), or of one
    /// version; sorted by model and version.
    pub fn statistics(&self, model: Option<&str>, version: Option<&str>) -> Result<Vec<VersionStatistics>, ServeError> {
        let snapshot = self.snapshot();
        let mut out = Vec::new();
        if let Some(m) = model {
            if snapshot.table.versions(m).is_none() {
                return Err(lookup_error(m, None, crate::models::Lookup::UnknownModel));
            }
            if let Some(v) = version {
                snapshot
                    .table
                    .resolve(m, Some(v))
                    .map_err(|l| lookup_error(m, Some(v), l))?;
            }
        }
        for (name, e) in snapshot.table.entries() {
            if model.is_some_and(|m| m != name) || version.is_some_and(|v| v != e.version) {
                continue;
            }
            if !matches!(e.state, VersionState::Ready(_)) {
                continue;
            }
            let stats = self.stats.version(name, &e.version);
            out.push(VersionStatistics::read(name, &e.version, &stats));
        }
        Ok(out)
    }

    /// The metadata of a version as JSON: the V2 fields (name, versions, platform, inputs,
    /// outputs) and Invariant's (device, runtime, content hash, verification, instances).
    pub fn metadata_json(&self, model: &str, version: Option<&str>) -> Result<Value, ServeError> {
        let (snapshot, serving) = self.resolve(model, version)?;
        Ok(metadata_json(&snapshot, &serving))
    }
}

/// One version's statistics, read (Triton's `ModelStatistics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VersionStatistics {
    /// Model.
    pub name: String,
    /// Version.
    pub version: String,
    /// Milliseconds since the epoch of the last answer.
    pub last_inference: u64,
    /// Rows answered.
    pub inference_count: u64,
    /// Engine runs.
    pub execution_count: u64,
    /// Successes, failures, queue, compute, cache hits and misses.
    pub inference_stats: InferenceStats,
    /// Engine runs by batch size.
    pub batch_stats: Vec<BatchStat>,
}

/// Triton's `InferStatistics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InferenceStats {
    /// Answered requests.
    pub success: DurationStat,
    /// Failed requests.
    pub fail: DurationStat,
    /// Time queued.
    pub queue: DurationStat,
    /// Preparing inputs (part of `compute_infer` here: one engine call).
    pub compute_input: DurationStat,
    /// The engine run.
    pub compute_infer: DurationStat,
    /// Extracting outputs (part of `compute_infer` here).
    pub compute_output: DurationStat,
    /// Cache hits.
    pub cache_hit: DurationStat,
    /// Cache misses.
    pub cache_miss: DurationStat,
}

/// Engine runs of one batch size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BatchStat {
    /// Requests per run.
    pub batch_size: u64,
    /// Input preparation (zero: inside the engine call).
    pub compute_input: DurationStat,
    /// The runs.
    pub compute_infer: DurationStat,
    /// Output extraction (zero: inside the engine call).
    pub compute_output: DurationStat,
}

impl VersionStatistics {
    fn read(name: &str, version: &str, s: &VersionStats) -> Self {
        let zero = |d: DurationStat| DurationStat { count: d.count, ns: 0 };
        let infer = s.compute_infer.read();
        Self {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: s.last_inference_ms.load(Ordering::Relaxed),
            inference_count: s.inference_count.load(Ordering::Relaxed),
            execution_count: s.execution_count.load(Ordering::Relaxed),
            inference_stats: InferenceStats {
                success: s.success.read(),
                fail: s.fail.read(),
                queue: s.queue.read(),
                compute_input: zero(infer),
                compute_infer: infer,
                compute_output: zero(infer),
                cache_hit: s.cache_hit.read(),
                cache_miss: s.cache_miss.read(),
            },
            batch_stats: s
                .batch_stats()
                .into_iter()
                .map(|(size, d)| BatchStat {
                    batch_size: size as u64,
                    compute_input: zero(d),
                    compute_infer: d,
                    compute_output: zero(d),
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct SpecJson<'a> {
    name: &'a str,
    datatype: invariant_core::DataType,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    columns: Option<&'a [String]>,
}

fn specs_json(specs: &[TensorSpec]) -> Vec<SpecJson<'_>> {
    specs
        .iter()
        .map(|s| SpecJson {
            name: &s.name,
            datatype: s.datatype,
            shape: &s.shape,
            columns: s.columns.as_deref(),
        })
        .collect()
}

fn metadata_json(snapshot: &Snapshot, serving: &ServingVersion) -> Value {
    let model = &serving.model;
    let m = model.manifest();
    let mut versions = Vec::new();
    let mut failed = Vec::new();
    for e in snapshot.table.versions(&m.name).unwrap_or_default() {
        match &e.state {
            VersionState::Ready(_) => versions.push(json!(e.version)),
            VersionState::Failed { reason } => failed.push(json!({ "version": e.version, "error": reason })),
        }
    }
    let runtime = model.runtime();
    json!({
        "name": m.name,
        "versions": versions,
        "platform": m.format.platform(),
        "inputs": specs_json(&m.inputs),
        "outputs": specs_json(&m.outputs),
        "version": m.version.to_string(),
        "description": m.description,
        "max_batch_size": m.inference.max_batch_size,
        "device": model.placement().device,
        "device_reason": model.placement().reason,
        "runtime": { "name": runtime.name, "version": runtime.version },
        "portability": portability_json(serving),
        "content_hash": model.content_hash(),
        "verification": {
            "golden_vectors": serving.golden_vectors,
            "golden_hash": serving.golden_hash,
            "verification_hash": serving.verification_hash,
            "batch_invariant": serving.batch_invariant,
            "rows_run": if serving.batch_invariant { "batched" } else { "one at a time (not batch-invariant)" },
        },
        "failed_versions": failed,
        "instances": instances_json(serving),
    })
}

/// Whether the version's bits are the same on every CPU, why, and which golden file (CPU
/// class) verified it here.
fn portability_json(serving: &ServingVersion) -> Value {
    let p = serving.model.portability();
    let golden_file = serving
        .golden_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    json!({
        "portable": p.portable,
        "reason": p.reason,
        "host_cpu_class": invariant_verify::cpu_class(),
        "golden_file": golden_file,
    })
}

/// Which instances serve the version: one per corridor with its session count (ONNX), or
/// one shared by every corridor (native: immutable weights, no sessions).
fn instances_json(serving: &ServingVersion) -> Value {
    if serving.corridor_models.is_empty() {
        return json!({ "per_corridor": false, "sessions": serving.model.sessions() });
    }
    let sessions: Map<String, Value> = serving
        .corridor_models
        .iter()
        .map(|(corridor, m)| (corridor.clone(), json!(m.sessions())))
        .collect();
    json!({ "per_corridor": true, "sessions": sessions })
}
