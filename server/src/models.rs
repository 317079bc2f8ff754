//! The table of model versions the server knows: loaded ones ready to serve, refused ones
//! with their reason.

use invariant_engine::{EngineOptions, Model};
use invariant_gpu::DeviceLayer;
use invariant_registry::{Format, RegistryError};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// One version of a model.
#[derive(Debug, Clone)]
pub enum VersionState {
    /// Loaded, verified and serving.
    Ready(Arc<Model>),
    /// Refused at load; never serves.
    Failed {
        /// Why, naming the file and hashes where relevant.
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

impl ModelTable {
    /// Scans `root`, verifies and loads every version. ONNX versions fail with
    /// `onnx_unavailable` as their reason when ONNX Runtime could not be loaded.
    pub fn load(
        root: &Path,
        devices: &DeviceLayer,
        options: &EngineOptions,
        onnx_unavailable: Option<&str>,
    ) -> Result<Self, RegistryError> {
        let mut models: BTreeMap<String, Vec<VersionEntry>> = BTreeMap::new();
        for scanned in invariant_registry::scan(root)? {
            let state = match scanned.result {
                Err(e) => VersionState::Failed { reason: e.to_string() },
                Ok(v) => match (v.manifest.format, onnx_unavailable) {
                    (Format::Onnx, Some(why)) => VersionState::Failed {
                        reason: why.to_string(),
                    },
                    _ => match Model::load(&v, devices, options) {
                        Ok(model) => VersionState::Ready(Arc::new(model)),
                        Err(e) => VersionState::Failed {
                            reason: format!("{}: {e}", v.dir.display()),
                        },
                    },
                },
            };
            match &state {
                VersionState::Ready(m) => tracing::info!(
                    model = %scanned.model,
                    version = %scanned.version,
                    runtime = m.runtime().name,
                    device = %m.placement().device,
                    "model version loaded"
                ),
                VersionState::Failed { reason } => {
                    tracing::error!(model = %scanned.model, version = %scanned.version, %reason, "model version refused")
                }
            }
            models.entry(scanned.model).or_default().push(VersionEntry {
                version: scanned.version,
                state,
            });
        }
        Ok(Self { models })
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
    pub fn resolve(&self, model: &str, version: Option<&str>) -> Result<Arc<Model>, Lookup> {
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
                .ok_or_else(|| Lookup::Failed(format!("model '{model}' has no version that loaded"))),
        }
    }

    /// Number of (ready, failed) versions.
    pub fn counts(&self) -> (usize, usize) {
        self.entries().fold((0, 0), |(r, f), (_, e)| match e.state {
            VersionState::Ready(_) => (r + 1, f),
            VersionState::Failed { .. } => (r, f + 1),
        })
    }
}
