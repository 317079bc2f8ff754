//! The advisory pipelines in the determinism gate and in `invariant golden record-pipeline`:
//! every `pipelines/<name>/<version>/pipeline.toml` of the model repository is parsed, its
//! pinned model versions are loaded hash-verified and run in-process, and each recorded case
//! of its golden file must give the same scores, bit for bit, and the same advisory.

use invariant_engine::{EngineOptions, Model};
use invariant_gpu::DeviceLayer;
use invariant_pipeline::golden::{self, GoldenSet};
use invariant_pipeline::{Pipeline, Step, PIPELINES_DIR, PIPELINE_FILE};
use invariant_serving::config::Config;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One pipeline version's gate result.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// The pipeline.
    pub pipeline: String,
    /// Its version.
    pub version: String,
    /// True when every case verified.
    pub passed: bool,
    /// Golden cases checked.
    pub cases: usize,
    /// Every violation.
    pub violations: Vec<String>,
}

/// Loads pinned model versions once each and scores rows with them.
pub struct Scorer<'a> {
    repository: &'a Path,
    limits: &'a invariant_registry::Limits,
    devices: DeviceLayer,
    models: BTreeMap<(String, String), Result<Model, String>>,
}

impl<'a> Scorer<'a> {
    /// A scorer over `repository`, loading versions within `limits` as the server does.
    pub fn new(repository: &'a Path, limits: &'a invariant_registry::Limits) -> Self {
        Self {
            repository,
            limits,
            devices: DeviceLayer::discover(),
            models: BTreeMap::new(),
        }
    }

    /// The score of `step` for `row`: the model version loaded hash-verified, run on one row,
    /// the output element as f64 (exactly).
    pub fn score(&mut self, step: &Step, row: &[f32]) -> Result<f64, String> {
        let key = (step.model.clone(), step.version.clone());
        let (repository, limits, devices) = (self.repository, self.limits, &self.devices);
        let model = self.models.entry(key).or_insert_with(|| {
            let dir = repository.join(&step.model).join(&step.version);
            let verified = invariant_registry::load_version_with_limits(&dir, limits).map_err(|e| e.to_string())?;
            Model::load(
                &verified,
                devices,
                &EngineOptions {
                    instances: 1,
                    threads: None,
                },
            )
            .map_err(|e| e.to_string())
        });
        let model = model.as_ref().map_err(Clone::clone)?;
        invariant_serving::advisory::score_model(model, step, row)
    }
}

/// Checks every pipeline version of the configuration's repository against its golden file.
pub fn check_pipelines(config: &Config) -> Vec<PipelineReport> {
    let mut scorer = Scorer::new(&config.model_repository, &config.limits.repository);
    let defs = invariant_featurestore::load_definitions(&config.feature_repository, &config.features_applied_path())
        .map_err(|e| e.to_string());
    invariant_pipeline::versions(&config.model_repository)
        .into_iter()
        .map(|(name, version, _)| {
            let mut report = PipelineReport {
                pipeline: name.clone(),
                version: version.clone(),
                passed: false,
                cases: 0,
                violations: Vec::new(),
            };
            let read =
                invariant_serving::advisory::read_version(config, defs.as_ref().map_err(Clone::clone), &name, &version);
            match read {
                Err(e) => report.violations.push(e),
                Ok((p, set)) => {
                    report.cases = set.cases.len();
                    report.violations = set.verify(&p, &mut |s, row| scorer.score(s, row));
                }
            }
            report.passed = report.violations.is_empty();
            report
        })
        .collect()
}

/// Records the golden vectors of pipeline `name` `version` from a JSONL file of cases
/// (`{"id": "...", "facts": {...}}` per line). Refuses to replace a file unless `force`.
pub fn record_pipeline(
    config: &Config,
    name: &str,
    version: &str,
    cases_file: &Path,
    force: bool,
) -> anyhow::Result<(PathBuf, usize)> {
    use anyhow::Context;
    let file = config
        .model_repository
        .join(PIPELINES_DIR)
        .join(name)
        .join(version)
        .join(PIPELINE_FILE);
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let pipeline = Pipeline::parse(&bytes)?;
    let out = golden::path(&config.golden_vectors, name, version);
    if out.exists() && !force {
        anyhow::bail!(
            "{} exists: recorded vectors are never edited (--force replaces them)",
            out.display()
        );
    }
    let text = std::fs::read_to_string(cases_file).with_context(|| format!("reading {}", cases_file.display()))?;
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct CaseLine {
            id: String,
            facts: serde_json::Map<String, serde_json::Value>,
        }
        let c: CaseLine =
            serde_json::from_str(line).with_context(|| format!("{} line {}", cases_file.display(), i + 1))?;
        cases.push((c.id, c.facts));
    }
    if let Some(why) = invariant_serving::init_onnx(config) {
        tracing::warn!("{why}");
    }
    let mut scorer = Scorer::new(&config.model_repository, &config.limits.repository);
    let set = GoldenSet::record(&pipeline, cases, &mut |s, row| scorer.score(s, row))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, set.to_text()?)?;
    Ok((out, set.cases.len()))
}
