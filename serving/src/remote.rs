//! Model repositories and golden vectors on object storage, for the service: when
//! `model_repository` or `golden_vectors` is `s3://bucket/prefix`, it is mirrored into the
//! object cache (`[object_store] cache_dir`, default `object-cache/` in `state_dir`) before
//! anything loads, and the effective configuration names the local copies, so loading,
//! hash verification and golden checks are exactly those of a local repository. A reload of a
//! model fetches what changed under that model first.

use crate::config::Config;
use invariant_remote::{is_remote, Mirror, RemoteError, SyncReport};
use std::path::PathBuf;

/// The mirrors of a configuration's remote locations (none for local ones).
#[derive(Debug, Default)]
pub struct Mirrors {
    models: Option<Mirror>,
    golden: Option<Mirror>,
}

/// Why the remote locations cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {source}; no local copy to serve from")]
pub struct MirrorError {
    /// The remote location.
    pub location: String,
    /// What failed.
    #[source]
    pub source: RemoteError,
}

fn counted(report: &SyncReport) {
    metrics::counter!("invariant_object_store_fetched_objects_total").increment(report.fetched.len() as u64);
    for why in &report.refused {
        tracing::warn!("object not mirrored: {why}");
    }
}

impl Mirrors {
    /// Mirrors the remote locations of `config` and points it at the local copies. A sync
    /// that fails with a copy from an earlier sync serves that copy (every artifact is still
    /// hash-verified when it loads); without one it is an error.
    pub fn open(config: &mut Config) -> Result<Self, MirrorError> {
        let cache = if config.object_store.cache_dir.is_empty() {
            config.state_dir.join("object-cache")
        } else {
            PathBuf::from(&config.object_store.cache_dir)
        };
        let limits = &config.limits.repository;
        let max = limits.max_artifact_bytes.max(limits.max_manifest_bytes);
        let open = |location: &mut PathBuf, name: &str| -> Result<Option<Mirror>, MirrorError> {
            let url = location.to_string_lossy().to_string();
            if !is_remote(&url) {
                return Ok(None);
            }
            let fail = |source| MirrorError {
                location: url.clone(),
                source,
            };
            let mirror = Mirror::open(&url, &config.object_store, cache.join(name), max).map_err(fail)?;
            match mirror.sync(None) {
                Ok(report) => counted(&report),
                Err(e) if mirror.has_copy() => {
                    metrics::counter!("invariant_object_store_sync_errors_total").increment(1);
                    tracing::error!(location = %url, error = %e, "cannot sync from the object store; serving the local copy");
                }
                Err(e) => return Err(fail(e)),
            }
            *location = mirror.local().to_path_buf();
            Ok(Some(mirror))
        };
        let mut models_at = config.model_repository.clone();
        let mut golden_at = config.golden_vectors.clone();
        let models = open(&mut models_at, "models")?;
        let golden = open(&mut golden_at, "golden")?;
        config.model_repository = models_at;
        config.golden_vectors = golden_at;
        Ok(Self { models, golden })
    }

    /// Fetches what changed under `model` (its versions, its golden vectors), blocking.
    pub fn sync_model(&self, model: &str) -> Result<(), RemoteError> {
        for mirror in [&self.models, &self.golden].into_iter().flatten() {
            match mirror.sync(Some(model)) {
                Ok(report) => counted(&report),
                Err(e) => {
                    metrics::counter!("invariant_object_store_sync_errors_total").increment(1);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Whether any location is remote.
    pub fn is_empty(&self) -> bool {
        self.models.is_none() && self.golden.is_none()
    }
}
