//! Upper bounds on what a model version may ask for.
//!
//! A manifest's numbers size allocations (batch buffers, golden vectors, engine sessions) and
//! its artifacts are read into memory, so a careless or hostile repository could otherwise
//! exhaust the process. Every bound here is checked when a version loads; a version past one
//! is refused with a message naming the field and the limit, and the other versions load.

use serde::{Deserialize, Serialize};

/// The bounds a model version must respect to load. The defaults suit tabular and
/// medium-sized models; a server configuration can raise or lower each one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest `[inference] max_batch_size`.
    pub max_batch_size: usize,
    /// Largest `[inference] threads` (ONNX Runtime builds one session per thread).
    pub max_threads: usize,
    /// Most tensors in `inputs`, and most in `outputs`.
    pub max_tensors: usize,
    /// Most dimensions of one tensor's shape.
    pub max_rank: usize,
    /// Most elements of one row of a tensor (the product of the dimensions after the batch
    /// dimension; of every dimension for a tensor without one).
    pub max_row_elements: usize,
    /// Most elements of one tensor at `max_batch_size` rows.
    pub max_batch_elements: usize,
    /// Most layers of a native network.
    pub max_layers: usize,
    /// Largest `native.input_size` and native layer `size`.
    pub max_layer_size: usize,
    /// Most `[[artifacts]]` of one version.
    pub max_artifacts: usize,
    /// Largest artifact file, in bytes.
    pub max_artifact_bytes: u64,
    /// Largest sum of one version's artifact files, in bytes.
    pub max_version_bytes: u64,
    /// Largest `manifest.toml`, in bytes.
    pub max_manifest_bytes: u64,
    /// Largest `[inference] cache_ttl_seconds`.
    pub max_cache_ttl_seconds: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_size: 4096,
            max_threads: 64,
            max_tensors: 64,
            max_rank: 8,
            max_row_elements: 1 << 20,
            max_batch_elements: 1 << 26,
            max_layers: 256,
            max_layer_size: 65_536,
            max_artifacts: 256,
            max_artifact_bytes: 2 << 30,
            max_version_bytes: 4 << 30,
            max_manifest_bytes: 4 << 20,
            max_cache_ttl_seconds: 366.0 * 24.0 * 3600.0,
        }
    }
}
