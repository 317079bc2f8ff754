//! Determinism verification of Invariant.
//!
//! A model version keeps the determinism contract when its outputs are the same bits on
//! every run, alone or in any batch, with any thread count. This crate holds the golden-vector
//! files that record those bits ([`golden`]), the generator of golden inputs ([`generate`]),
//! and the checks ([`checks`]) that the CI gate (`invariant gate`) and deploy-time
//! verification run. Violations name the model, version, vector, output, element, expected
//! and actual bits and their ULP distance.

pub mod checks;
pub mod generate;
pub mod golden;

pub use checks::{record, verify_deploy, verify_golden, Check, DeployVerification, Violation};
pub use golden::{GoldenFile, GoldenHeader, GoldenOutput, GoldenVector};

use std::path::PathBuf;
use thiserror::Error;

/// Errors of reading, writing or recording golden vectors.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A golden file is malformed.
    #[error("{path} line {line}: {message}")]
    Golden {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Recording would overwrite an existing file.
    #[error("{0} exists; pass --force to overwrite it")]
    Exists(PathBuf),
    /// Encoding a golden file failed.
    #[error("cannot encode golden vectors: {0}")]
    Encode(String),
    /// The model failed while computing a vector.
    #[error("vector {vector}: {error}")]
    Engine {
        /// Vector id.
        vector: String,
        /// Engine error.
        error: invariant_engine::EngineError,
    },
    /// The version's fallback rules could not answer a vector.
    #[error("vector {vector}: {message}")]
    Fallback {
        /// Vector id.
        vector: String,
        /// Why.
        message: String,
    },
}

/// CPU features that can change floating-point code paths, as detected on this machine.
pub fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut found: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if std::arch::is_x86_feature_detected!($f) { found.push($f); } )* };
        }
        probe!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512vnni");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($f) { found.push($f); } )* };
        }
        probe!("neon", "fp16", "sve");
    }
    let mut out = vec![std::env::consts::ARCH.to_string()];
    out.extend(found.into_iter().map(String::from));
    out
}
