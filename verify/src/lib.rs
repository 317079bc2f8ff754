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
pub use golden::locate;
pub use golden::{GoldenFile, GoldenHeader, GoldenLimits, GoldenOutput, GoldenVector};

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
    /// A version whose bits depend on the CPU has no golden vectors for this host's class.
    #[error(
        "{model} {version} is not portable ({reason}) and its golden vectors were recorded on {recorded} only; \
         this host is {host}: it is refused here. Record golden vectors for this class on such a host with \
         `invariant golden record {model} {version} --cpu-class {host}` (see docs/determinism.md)"
    )]
    UnrecordedClass {
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Why the engine is not portable.
        reason: String,
        /// Classes with golden vectors, comma-separated.
        recorded: String,
        /// This host's class.
        host: String,
    },
    /// A golden file is not read: not a regular file, or larger than the limit.
    #[error("golden vectors {path} are refused: {reason}")]
    UnsafeFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        reason: invariant_registry::files::FileRefusal,
    },
    /// Golden inputs cannot be generated for the signature.
    #[error("cannot generate golden inputs: {0}")]
    Generate(String),
    /// The version's fallback rules could not answer a vector.
    #[error("vector {vector}: {message}")]
    Fallback {
        /// Vector id.
        vector: String,
        /// Why.
        message: String,
    },
}

/// The CPU class of this machine: the x86-64 micro-architecture level (`x86-64-v1` to
/// `x86-64-v4`, the psABI levels), or the architecture's name elsewhere (`aarch64`). A
/// runtime that picks kernels by CPU feature (ONNX Runtime) can give other bits on another
/// class, so golden vectors of such versions are recorded per class.
pub fn cpu_class() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! all {
            ($($f:tt),*) => { true $( && std::arch::is_x86_feature_detected!($f) )* };
        }
        let v2 = all!("sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cmpxchg16b");
        let v3 = v2 && all!("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave");
        let v4 = v3 && all!("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl");
        let level = if v4 {
            4
        } else if v3 {
            3
        } else if v2 {
            2
        } else {
            1
        };
        format!("x86-64-v{level}")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// The CPU class implied by a list of [`cpu_features`] (golden files recorded before the
/// class was written into their header). The list names only some of each level's features,
/// so this is the level those features imply.
pub fn class_of_features(features: &[String]) -> String {
    let has = |f: &str| features.iter().any(|x| x == f);
    if !has("x86_64") {
        return features.first().cloned().unwrap_or_default();
    }
    let level = if has("avx512f") {
        4
    } else if has("avx2") && has("fma") {
        3
    } else if has("sse4.2") {
        2
    } else {
        1
    };
    format!("x86-64-v{level}")
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
