//! The table of model versions the server knows: verified ones ready to serve, refused ones
//! with their reason. Every version passes deploy-time verification before it serves:
//! artifact hashes (at load), its golden vectors bit for bit, three identical runs, and batch
//! invariance. Each verification is written to the audit log.

use crate::audit::{AuditLog, VerificationRecord};
use invariant_core::Tensor;
use invariant_engine::{EngineError, EngineOptions, Model};
use invariant_gpu::DeviceLayer;
use invariant_registry::{RegistryError, VerifiedVersion};
use invariant_verify::{verify_deploy, verify_golden, GoldenFile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A verified version that serves.
#[derive(Debug)]
pub struct ServingVersion {
    /// The instance that passed deploy-time verification: metadata, the gate, and corridors
    /// without an instance of their own.
    pub model: Model,
    /// Each corridor's own instance (bulkheads), by corridor id: ONNX versions get one per
    /// declared corridor, with as many sessions as the corridor has workers, each checked
    /// against the golden vectors before it serves; so one corridor's load never waits on
    /// another corridor's sessions. Native versions hold no per-run state (immutable weights,
    /// no sessions to lock), so every corridor shares `model` and the corridor's worker budget
    /// is its bulkhead.
    pub corridor_models: BTreeMap<String, Model>,
    /// Whether batches leave every row's bits unchanged. When false (only possible for ONNX
    /// models, whose kernels are not ours), the rows of a request run one at a time.
    pub batch_invariant: bool,
    /// blake3 over artifact hashes, golden file hash, engine and runtime version.
    pub verification_hash: String,
    /// blake3 of the golden file the version was verified against.
    pub golden_hash: String,
    /// That golden file (the one for this host's CPU class unless the version is portable).
    pub golden_path: PathBuf,
    /// Golden vectors checked.
    pub golden_vectors: usize,
    /// What its engine runs have cost, to run the cheap ones where they are asked for.
    pub run_cost: crate::pool::RunCost,
}

impl ServingVersion {
    /// The instance serving `corridor`: its own, else the verified one.
    pub fn instance(&self, corridor: &str) -> &Model {
        self.corridor_models.get(corridor).unwrap_or(&self.model)
    }

    /// Runs a request on `corridor`'s instance. Rows run one at a time when the version is not
    /// batch-invariant, so a row's answer never depends on the rows sent with it.
    pub fn infer(&self, corridor: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        let model = self.instance(corridor);
        let specs = &model.manifest().inputs;
        let rows = inputs
            .iter()
            .zip(specs)
            .find(|(_, s)| s.is_batched())
            .and_then(|(t, _)| t.shape.first().copied())
            .unwrap_or(1);
        if self.batch_invariant || rows <= 1 {
            return model.infer(inputs);
        }
        // Signature errors are reported for the whole request, as a batched run would.
        invariant_engine::check_inputs(model.manifest(), inputs.clone())?;
        let mut per_row: Vec<Vec<Tensor>> = Vec::with_capacity(rows);
        for r in 0..rows {
            let row_inputs = inputs
                .iter()
                .map(|t| {
                    let batched = specs.iter().any(|s| s.name == t.name && s.is_batched());
                    if batched {
                        t.row(r)
                            .ok_or_else(|| EngineError::Runtime(format!("row {r} of '{}'", t.name)))
                    } else {
                        Ok(t.clone())
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            per_row.push(model.infer(row_inputs)?);
        }
        let outputs = model.manifest().outputs.len();
        (0..outputs)
            .map(|k| {
                let parts: Vec<&Tensor> = per_row.iter().map(|r| &r[k]).collect();
                Tensor::concat_rows(&parts).ok_or_else(|| EngineError::Runtime("cannot join per-row outputs".into()))
            })
            .collect()
    }
}

/// One version of a model.
#[derive(Debug, Clone)]
pub enum VersionState {
    /// Loaded, verified and serving.
    Ready(Arc<ServingVersion>),
    /// Refused at load or verification; never serves.
    Failed {
        /// Why, naming the file, hashes or vector where relevant.
        reason: String,
    },
}

/// A model version and its state.
#[derive(Debug, Clone)]
pub struct VersionEntry {
    /// Version directory name (a semantic version when valid).
    pub version: String,
    /// Loaded or failed.
    pub state: VersionState,
}

/// Every model of the repository, by name; versions sorted lowest first.
#[derive(Debug, Default, Clone)]
pub struct ModelTable {
    models: BTreeMap<String, Vec<VersionEntry>>,
}

/// Why a version lookup found nothing to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No such model.
    UnknownModel,
    /// The model exists, the version does not.
    UnknownVersion,
    /// The version (or, without a version, every version) failed to load.
    Failed(String),
}

/// What loading needs besides the repository.
pub struct Loader<'a> {
    /// Device layer.
    pub devices: &'a DeviceLayer,
    /// Engine options.
    pub options: &'a EngineOptions,
    /// Why ONNX versions cannot load (ONNX Runtime missing), if so.
    pub onnx_unavailable: Option<&'a str>,
    /// Golden vector directory.
    pub golden_dir: &'a Path,
    /// Audit log for verification records.
    pub audit: &'a AuditLog,
    /// Declared corridors with their worker budgets: each gets its own instance of every ONNX
    /// version, with that many sessions.
    pub corridors: Vec<(String, usize)>,
    /// What a version and its golden file may ask for.
    pub limits: &'a crate::config::LimitsConfig,
}

impl Loader<'_> {
    /// Loads and verifies one scanned version.
    fn load(&self, model: &str, version: &str, scanned: Result<VerifiedVersion, RegistryError>) -> VersionState {
        let state = match scanned {
            Err(e) => VersionState::Failed { reason: e.to_string() },
            Ok(v) => match (v.manifest.uses_onnxruntime(), self.onnx_unavailable) {
                (true, Some(why)) => VersionState::Failed {
                    reason: why.to_string(),
                },
                _ => self.verify(&v),
            },
        };
        match &state {
            VersionState::Ready(s) => tracing::info!(
                model,
                version,
                runtime = s.model.runtime().name,
                device = %s.model.placement().device,
                batch_invariant = s.batch_invariant,
                golden_vectors = s.golden_vectors,
                "model version verified and loaded"
            ),
            VersionState::Failed { reason } => tracing::error!(model, version, %reason, "model version refused"),
        }
        state
    }

    fn verify(&self, v: &VerifiedVersion) -> VersionState {
        let name = v.manifest.name.clone();
        let version = v.manifest.version.to_string();
        let model = match Model::load(v, self.devices, self.options) {
            Ok(m) => m,
            Err(e) => {
                return VersionState::Failed {
                    reason: format!("{}: {e}", v.dir.display()),
                }
            }
        };
        let runtime = model.runtime();
        let mut record =
            VerificationRecord::new(&name, &version, v.content_hash.clone(), runtime.name, &runtime.version);
        let located = invariant_verify::locate(self.golden_dir, &name, &version, &model.portability());
        let golden_path = located
            .as_ref()
            .cloned()
            .unwrap_or_else(|_| GoldenFile::path(self.golden_dir, &name, &version));
        let outcome = match located.and_then(|path| GoldenFile::read_with_limits(&path, &self.limits.golden)) {
            Err(e @ invariant_verify::VerifyError::UnrecordedClass { .. }) => Err(e.to_string()),
            Err(e) => Err(format!(
                "no usable golden vectors ({e}); record them with `invariant golden record {name} {version}`"
            )),
            Ok((golden, golden_hash)) => {
                record.golden_hash = golden_hash.clone();
                match verify_deploy(&model, &golden) {
                    Err(e) => Err(format!("verification could not run: {e}")),
                    Ok(report) if !report.outputs_match() => Err(summarize(&report.violations)),
                    // Invariant's own kernels are batch-invariant by construction: a batch that
                    // changes a row is a defect, never tolerated.
                    Ok(report) if !report.batch_invariant() && !v.manifest.uses_onnxruntime() => {
                        Err(summarize(&report.batch_violations))
                    }
                    Ok(report) => {
                        if !report.batch_invariant() {
                            tracing::warn!(
                                model = %name,
                                version = %version,
                                first = %report.batch_violations[0],
                                "ONNX model is not batch-invariant: its rows will run one at a time"
                            );
                        }
                        Ok((report.batch_invariant(), golden_hash, golden.vectors.len()))
                    }
                }
            }
        };
        record.passed = outcome.is_ok();
        record.reason = outcome.as_ref().err().cloned();
        let verification_hash = record.verification_hash();
        metrics::gauge!("invariant_model_verified", "model" => name.clone(), "version" => version.clone())
            .set(if record.passed { 1.0 } else { 0.0 });
        let _ = self.audit.record(None, "verification", &record);
        let (batch_invariant, golden_hash, golden_vectors) = match outcome {
            Ok(verified) => verified,
            Err(reason) => {
                return VersionState::Failed {
                    reason: format!("verification failed: {reason}"),
                }
            }
        };
        let corridor_models = match self.corridor_instances(v, &golden_path) {
            Ok(models) => models,
            Err(reason) => return VersionState::Failed { reason },
        };
        VersionState::Ready(Arc::new(ServingVersion {
            model,
            corridor_models,
            batch_invariant,
            verification_hash,
            golden_hash,
            golden_vectors,
            golden_path,
            run_cost: Default::default(),
        }))
    }

    /// One instance of an ONNX version per corridor, sized to the corridor's workers, each
    /// matching the golden vectors bit for bit (native versions share one instance).
    fn corridor_instances(&self, v: &VerifiedVersion, golden_path: &Path) -> Result<BTreeMap<String, Model>, String> {
        let mut out = BTreeMap::new();
        if !v.manifest.uses_onnxruntime() {
            return Ok(out);
        }
        let (golden, _) = GoldenFile::read_with_limits(golden_path, &self.limits.golden)
            .map_err(|e| format!("golden vectors: {e}"))?;
        let build = |corridor: &str, workers: usize| -> Result<Model, String> {
            let options = EngineOptions {
                instances: workers.max(1),
                threads: self.options.threads,
            };
            let model = Model::load(v, self.devices, &options)
                .map_err(|e| format!("{}: instance for corridor {corridor}: {e}", v.dir.display()))?;
            let violations = verify_golden(&model, &golden)
                .map_err(|e| format!("instance for corridor {corridor}: verification could not run: {e}"))?;
            if !violations.is_empty() {
                return Err(format!(
                    "verification failed: instance for corridor {corridor}: {}",
                    summarize(&violations)
                ));
            }
            Ok(model)
        };
        // Built and checked side by side; results are taken in corridor order.
        let built: Vec<(String, Result<Model, String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .corridors
                .iter()
                .map(|(corridor, workers)| (corridor, scope.spawn(|| build(corridor, *workers))))
                .collect();
            handles
                .into_iter()
                .map(|(corridor, h)| {
                    let result = h
                        .join()
                        .unwrap_or_else(|_| Err(format!("instance for corridor {corridor}: loading panicked")));
                    (corridor.clone(), result)
                })
                .collect()
        });
        for (corridor, model) in built {
            out.insert(corridor, model?);
        }
        Ok(out)
    }
}

fn summarize(violations: &[invariant_verify::Violation]) -> String {
    let mut text: Vec<String> = violations.iter().take(3).map(ToString::to_string).collect();
    if violations.len() > 3 {
        text.push(format!("and {} more", violations.len() - 3));
    }
    text.join("; ")
}

/// What a reload of one model did to each of its versions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    /// Version.
    pub version: String,
    /// `READY`, `FAILED` or `UNCHANGED`.
    pub state: &'static str,
    /// Why it failed; for a failed reload of a serving version, the old instance keeps serving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ModelTable {
    /// Scans `root`, then verifies and loads every version.
    pub fn load(root: &Path, loader: &Loader<'_>) -> Result<Self, RegistryError> {
        let mut models: BTreeMap<String, Vec<VersionEntry>> = BTreeMap::new();
        for scanned in invariant_registry::scan_with_limits(root, &loader.limits.repository)? {
            let state = loader.load(&scanned.model, &scanned.version, scanned.result);
            models.entry(scanned.model).or_default().push(VersionEntry {
                version: scanned.version,
                state,
            });
        }
        Ok(Self { models })
    }

    /// A new table in which `model` is reloaded from `root/model`: versions whose artifacts and
    /// golden file are unchanged keep their running instance; new or changed versions are
    /// verified; a serving version whose reload fails keeps serving its old instance; versions
    /// gone from disk are dropped. The current table is untouched, so callers swap the result
    /// in atomically and in-flight requests finish on the instance they started with.
    pub fn reload_model(
        &self,
        root: &Path,
        model: &str,
        loader: &Loader<'_>,
    ) -> Result<(Self, Vec<ReloadOutcome>), RegistryError> {
        let dir = root.join(model);
        let mut entries = Vec::new();
        let mut outcomes = Vec::new();
        for scanned in invariant_registry::scan_model_with_limits(root, model, &loader.limits.repository)? {
            let current = self
                .versions(model)
                .and_then(|vs| vs.iter().find(|e| e.version == scanned.version));
            let serving = match current.map(|e| &e.state) {
                Some(VersionState::Ready(s)) => Some(s.clone()),
                _ => None,
            };
            if let (Some(s), Ok(v)) = (&serving, &scanned.result) {
                let golden_hash =
                    invariant_registry::files::read_bounded(&s.golden_path, loader.limits.golden.max_file_bytes, None)
                        .map(|b| blake3::hash(&b).to_hex().to_string())
                        .unwrap_or_default();
                if v.content_hash == s.model.content_hash() && golden_hash == s.golden_hash {
                    outcomes.push(ReloadOutcome {
                        version: scanned.version.clone(),
                        state: "UNCHANGED",
                        error: None,
                    });
                    entries.push(VersionEntry {
                        version: scanned.version,
                        state: VersionState::Ready(s.clone()),
                    });
                    continue;
                }
            }
            let state = loader.load(model, &scanned.version, scanned.result);
            let (state, outcome) = match (state, serving) {
                (VersionState::Ready(s), _) => (VersionState::Ready(s), ("READY", None)),
                (VersionState::Failed { reason }, Some(old)) => (VersionState::Ready(old), ("FAILED", Some(reason))),
                (VersionState::Failed { reason }, None) => (
                    VersionState::Failed { reason: reason.clone() },
                    ("FAILED", Some(reason)),
                ),
            };
            outcomes.push(ReloadOutcome {
                version: scanned.version.clone(),
                state: outcome.0,
                error: outcome.1,
            });
            entries.push(VersionEntry {
                version: scanned.version,
                state,
            });
        }
        let mut models = self.models.clone();
        if entries.is_empty() {
            if !dir.is_dir() {
                models.remove(model);
            }
        } else {
            models.insert(model.to_string(), entries);
        }
        Ok((Self { models }, outcomes))
    }

    /// Model names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// All versions of a model, lowest first.
    pub fn versions(&self, model: &str) -> Option<&[VersionEntry]> {
        self.models.get(model).map(Vec::as_slice)
    }

    /// Every version of every model.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &VersionEntry)> {
        self.models
            .iter()
            .flat_map(|(name, versions)| versions.iter().map(move |v| (name.as_str(), v)))
    }

    /// The version that serves `model` at `version`, or, without a version, the highest
    /// version that loaded.
    pub fn resolve(&self, model: &str, version: Option<&str>) -> Result<Arc<ServingVersion>, Lookup> {
        let versions = self.models.get(model).ok_or(Lookup::UnknownModel)?;
        match version {
            Some(v) => {
                let entry = versions.iter().find(|e| e.version == v).ok_or(Lookup::UnknownVersion)?;
                match &entry.state {
                    VersionState::Ready(m) => Ok(m.clone()),
                    VersionState::Failed { reason } => Err(Lookup::Failed(reason.clone())),
                }
            }
            None => versions
                .iter()
                .rev()
                .find_map(|e| match &e.state {
                    VersionState::Ready(m) => Some(m.clone()),
                    VersionState::Failed { .. } => None,
                })
                .ok_or_else(|| {
                    let reasons: Vec<String> = versions
                        .iter()
                        .filter_map(|e| match &e.state {
                            VersionState::Failed { reason } => Some(format!("{}: {reason}", e.version)),
                            VersionState::Ready(_) => None,
                        })
                        .collect();
                    Lookup::Failed(format!(
                        "model '{model}' has no version that loaded ({})",
                        reasons.join("; ")
                    ))
                }),
        }
    }

    /// A new table in which `model` `version` no longer serves (marked failed with `reason`);
    /// a later reload of the model loads it again.
    pub fn without_version(&self, model: &str, version: &str, reason: &str) -> Self {
        let mut models = self.models.clone();
        if let Some(entries) = models.get_mut(model) {
            for e in entries.iter_mut().filter(|e| e.version == version) {
                e.state = VersionState::Failed {
                    reason: reason.to_string(),
                };
            }
        }
        Self { models }
    }
    /// The highest loaded and verified version of a model: what serves it before any promotion.
    pub fn default_version(&self, model: &str) -> Option<String> {
        self.models
            .get(model)?
            .iter()
            .rev()
            .find(|e| matches!(e.state, VersionState::Ready(_)))
            .map(|e| e.version.clone())
    }

    /// Number of (ready, failed) versions.
    pub fn counts(&self) -> (usize, usize) {
        self.entries().fold((0, 0), |(r, f), (_, e)| match e.state {
            VersionState::Ready(_) => (r + 1, f),
            VersionState::Failed { .. } => (r, f + 1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use invariant_core::TensorData;
    use invariant_registry::Kernel;

    /// trust-scorer 1.2.0 with candle's batch-dependent matmul, wrapped as serving.
    fn batch_dependent(batch_invariant: bool) -> ServingVersion {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/trust-scorer/1.2.0");
        let mut version = invariant_registry::load_version(&dir).unwrap();
        version.manifest.native.as_mut().unwrap().kernel = Kernel::CandleMatmul;
        let model = Model::load(&version, &DeviceLayer::discover(), &EngineOptions::default()).unwrap();
        ServingVersion {
            model,
            corridor_models: BTreeMap::new(),
            batch_invariant,
            verification_hash: String::new(),
            golden_hash: String::new(),
            golden_vectors: 0,
            golden_path: PathBuf::new(),
            run_cost: Default::default(),
        }
    }

    fn rows(n: usize) -> Tensor {
        let data: Vec<f32> = (0..n * 8).map(|i| ((i * 37) % 101) as f32 * 0.37).collect();
        Tensor::new("features", vec![n, 8], TensorData::Fp32(data), "features").unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u64> {
        t.data.element_bits()
    }

    #[test]
    fn versions_that_are_not_batch_invariant_run_rows_one_at_a_time() {
        let n = 40;
        let batch = rows(n);
        let alone: Vec<u64> = (0..n)
            .flat_map(|r| {
                let out = batch_dependent(true).model.infer(vec![batch.row(r).unwrap()]).unwrap();
                bits(&out[0])
            })
            .collect();
        let batched = batch_dependent(true).infer("UAE-SA", vec![batch.clone()]).unwrap();
        assert_ne!(
            bits(&batched[0]),
            alone,
            "this model must depend on the batch for the test to mean anything"
        );
        let row_by_row = batch_dependent(false).infer("UAE-SA", vec![batch]).unwrap();
        assert_eq!(row_by_row[0].shape, vec![n, 1]);
        assert_eq!(bits(&row_by_row[0]), alone);
    }
}
