//! `invariant models import`: brings an artifact into the repository as a new STAGED
//! version: copies it while hashing (sha256 + blake3), writes the manifest (from an existing
//! version with `--like`, or from the ONNX graph's signature, choosing the portable engine
//! when every operator is in its set), loads it exactly as the server would, and records its
//! golden vectors.

use invariant_engine::{EngineOptions, Model};
use invariant_gpu::DeviceLayer;
use invariant_registry::{ArtifactEntry, Format, Manifest, OnnxEngine, MANIFEST_FILE};
use invariant_serving::config::Config;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why an import failed (the half-written version directory is removed).
#[derive(Debug, Error)]
pub enum ImportError {
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// Reading, copying or hashing failed.
    #[error(transparent)]
    Registry(#[from] invariant_registry::RegistryError),
    /// The artifact does not load.
    #[error("the imported version does not load: {0}")]
    Load(String),
    /// Golden vectors could not be recorded.
    #[error(transparent)]
    Verify(#[from] invariant_verify::VerifyError),
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// The artifact file (`.onnx`, or `.safetensors` with `like`).
    pub artifact: PathBuf,
    /// Model name.
    pub name: String,
    /// New semantic version.
    pub version: String,
    /// Existing version whose manifest (signature, settings) the new one copies.
    pub like: Option<String>,
    /// Description (default: the `like` version's, or a generated one).
    pub description: Option<String>,
    /// Record golden vectors after loading (default true).
    pub record_golden: bool,
}

/// What an import produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportOutcome {
    /// The new version directory.
    pub dir: PathBuf,
    /// Artifact size in bytes.
    pub bytes: u64,
    /// sha256 of the artifact.
    pub sha256: String,
    /// blake3 of the artifact.
    pub blake3: String,
    /// Golden vectors recorded (0 when not recorded).
    pub golden_vectors: usize,
    /// Seconds spent copying and hashing.
    pub copy_seconds: f64,
    /// Seconds spent loading (hash check, parse) and recording golden vectors.
    pub load_seconds: f64,
}

/// Imports an artifact; `progress(done, total)` follows the copy.
pub fn import(
    config: &Config,
    req: &ImportRequest,
    progress: impl FnMut(u64, u64),
) -> Result<ImportOutcome, ImportError> {
    let version = semver::Version::parse(&req.version)
        .map_err(|e| ImportError::Invalid(format!("--version '{}' is not a semantic version: {e}", req.version)))?;
    if req.name.is_empty()
        || !req
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ImportError::Invalid(format!(
            "--name '{}' must be ASCII letters, digits, '-' or '_'",
            req.name
        )));
    }
    for (what, place) in [
        ("model_repository", &config.model_repository),
        ("golden_vectors", &config.golden_vectors),
    ] {
        if invariant_remote::is_remote(&place.to_string_lossy()) {
            return Err(ImportError::Invalid(format!(
                "{what} is {}: import into a local repository (--model-repository DIR, --golden-vectors DIR), \
                 then upload the version",
                place.display()
            )));
        }
    }
    let dir = config.model_repository.join(&req.name).join(version.to_string());
    if dir.exists() {
        return Err(ImportError::Invalid(format!("{} already exists", dir.display())));
    }
    let total = std::fs::metadata(&req.artifact)
        .map_err(|e| ImportError::Invalid(format!("{}: {e}", req.artifact.display())))?
        .len();
    std::fs::create_dir_all(&dir).map_err(|e| ImportError::Invalid(format!("{}: {e}", dir.display())))?;
    let result = import_into(config, req, &version, &dir, total, progress);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn import_into(
    config: &Config,
    req: &ImportRequest,
    version: &semver::Version,
    dir: &Path,
    total: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<ImportOutcome, ImportError> {
    let mut manifest = match &req.like {
        Some(like) => {
            let path = config.model_repository.join(&req.name).join(like).join(MANIFEST_FILE);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ImportError::Invalid(format!("--like {like}: {}: {e}", path.display())))?;
            Manifest::parse(&text, &path)?
        }
        None => onnx_manifest(config, req)?,
    };
    let file_name = match manifest.format {
        Format::Onnx => manifest.onnx.as_ref().map(|o| o.model.clone()),
        Format::Native => manifest.native.as_ref().map(|n| n.weights.clone()),
    }
    .ok_or_else(|| ImportError::Invalid("the manifest names no artifact".into()))?;
    let started = std::time::Instant::now();
    let hashes = invariant_registry::copy_and_hash(&req.artifact, &dir.join(&file_name), |done| progress(done, total))?;
    let copy_seconds = started.elapsed().as_secs_f64();
    manifest.version = version.clone();
    manifest.artifacts = vec![ArtifactEntry {
        path: file_name,
        sha256: hashes.sha256.clone(),
        blake3: hashes.blake3.clone(),
    }];
    if let Some(d) = &req.description {
        manifest.description = d.clone();
    }
    let text =
        toml::to_string(&manifest).map_err(|e| ImportError::Invalid(format!("cannot write the manifest: {e}")))?;
    std::fs::write(dir.join(MANIFEST_FILE), text)
        .map_err(|e| ImportError::Invalid(format!("{}: {e}", dir.display())))?;

    let started = std::time::Instant::now();
    let verified = invariant_registry::load_version_with_limits(dir, &config.limits.repository)?;
    let mut golden_vectors = 0;
    if req.record_golden {
        let model = Model::load(
            &verified,
            &DeviceLayer::discover(),
            &EngineOptions {
                instances: 1,
                threads: None,
            },
        )
        .map_err(|e| ImportError::Load(e.to_string()))?;
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let golden = invariant_verify::record(&model, &now)?;
        let path = invariant_verify::GoldenFile::path(&config.golden_vectors, &req.name, &version.to_string());
        golden.write(&path, false)?;
        golden_vectors = golden.vectors.len();
    }
    Ok(ImportOutcome {
        dir: dir.to_path_buf(),
        bytes: total,
        sha256: hashes.sha256,
        blake3: hashes.blake3,
        golden_vectors,
        copy_seconds,
        load_seconds: started.elapsed().as_secs_f64(),
    })
}

/// A manifest for a new ONNX model, its signature read from the graph.
fn onnx_manifest(config: &Config, req: &ImportRequest) -> Result<Manifest, ImportError> {
    let is_onnx = req.artifact.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if !is_onnx {
        return Err(ImportError::Invalid(
            "only .onnx artifacts can be imported without --like VERSION (native networks need a manifest to copy)"
                .into(),
        ));
    }
    if let Some(why) = invariant_serving::init_onnx(config) {
        return Err(ImportError::Load(why));
    }
    let bytes =
        std::fs::read(&req.artifact).map_err(|e| ImportError::Invalid(format!("{}: {e}", req.artifact.display())))?;
    let found = invariant_portable::inspect(&bytes)
        .map_err(|e| ImportError::Invalid(format!("{}: {e}", req.artifact.display())))?;
    if !found.nondeterministic.is_empty() {
        return Err(ImportError::Invalid(format!(
            "{}: {}",
            req.artifact.display(),
            invariant_portable::PortableError::Nondeterministic {
                ops: found.nondeterministic
            }
        )));
    }
    // The portable engine when it runs every operator (the same bits on every CPU), else ONNX
    // Runtime; the description says which and why.
    let (engine, why) = if found.portable() {
        (
            OnnxEngine::Portable,
            "every operator is in the portable set: Invariant's fixed-order kernels, the same bits on every CPU"
                .to_string(),
        )
    } else {
        (
            OnnxEngine::Onnxruntime,
            format!(
                "operators outside the portable set ({}): ONNX Runtime, golden vectors per CPU class",
                found.unsupported.join(", ")
            ),
        )
    };
    let (inputs, outputs) =
        invariant_engine::onnx::graph_signature(&bytes).map_err(|e| ImportError::Load(e.to_string()))?;
    let mut manifest = Manifest::onnx(&req.name, semver::Version::new(0, 0, 0), inputs, outputs, engine);
    manifest.description = format!(
        "{} imported from {}. Engine {}: {why}.",
        req.name,
        req.artifact.display(),
        engine.name()
    );
    Ok(manifest)
}
