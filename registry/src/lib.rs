//! Model repository of Invariant.
//!
//! Reads `models/<name>/<version>/manifest.toml`, and loads each version's artifacts with
//! both their sha256 and blake3 checked before anything parses them. A version that fails
//! (unparsable manifest, missing file, hash mismatch, a number past its [`Limits`], a file
//! that is not a regular file inside the repository) is reported with the reason; it never
//! stops the others from loading. The on-disk format is documented in
//! `docs/model-repository.md`.

pub mod files;
mod hashing;
pub mod lifecycle;
mod limits;
mod manifest;
mod repository;
pub mod rules;

pub use hashing::{copy_and_hash, hash_bytes, hash_file, FileHashes};
pub use limits::Limits;
pub use manifest::{
    Activation, ArtifactEntry, Fallback, FeatureFallback, Format, InferenceSettings, Kernel, LayerSpec, Manifest,
    NativeSection, OnnxEngine, OnnxSection, TensorSpec,
};
pub use repository::{
    load_version, load_version_with_limits, scan, scan_model_with_limits, scan_with_limits, ScannedVersion,
    VerifiedVersion, MANIFEST_FILE,
};

use std::path::PathBuf;
use thiserror::Error;

/// Why a model version (or the repository) could not be loaded.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid TOML or does not fit the schema.
    #[error("cannot parse manifest {path}: {message}")]
    ManifestParse {
        /// The manifest file.
        path: PathBuf,
        /// Parser message, naming the field.
        message: String,
    },
    /// The manifest parses but is inconsistent.
    #[error("invalid manifest {path}: {message}")]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// An artifact listed in the manifest is not there.
    #[error("artifact {path} is missing")]
    MissingArtifact {
        /// The artifact file.
        path: PathBuf,
    },
    /// An artifact's bytes do not hash to the manifest's value.
    #[error("artifact {path}: {algorithm} mismatch: expected {expected}, actual {actual}")]
    HashMismatch {
        /// The artifact file.
        path: PathBuf,
        /// `sha256` or `blake3`.
        algorithm: &'static str,
        /// Hash in the manifest.
        expected: String,
        /// Hash of the file's bytes.
        actual: String,
    },
    /// A file of the version is not read: not a regular file, outside the repository, or
    /// larger than the limit.
    #[error("{what} {path} is refused: {reason}")]
    UnsafeFile {
        /// `manifest` or `artifact`.
        what: &'static str,
        /// The file: the version directory joined with the manifest's path.
        path: PathBuf,
        /// Why.
        #[source]
        reason: files::FileRefusal,
    },
    /// The version's artifacts together are larger than the limit.
    #[error("artifacts of {dir} are {size} bytes in all, exceeding the limit of {limit} bytes")]
    VersionTooLarge {
        /// The version directory.
        dir: PathBuf,
        /// Bytes of every artifact read so far.
        size: u64,
        /// The limit.
        limit: u64,
    },
}
