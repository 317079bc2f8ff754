//! Model runtimes of Invariant behind one trait.
//!
//! [`Engine`] is what a runtime implements: run already-checked input tensors, return output
//! tensors in signature order. Three runtimes exist: ONNX Runtime through `ort`
//! ([`onnx::OnnxEngine`], the shared library loaded at run time), ONNX graphs on Invariant's
//! own fixed-order kernels ([`portable::PortableEngine`], the same bits on every CPU), and
//! native feed-forward networks with the same fixed-order kernels
//! ([`native::NativeEngine`]). Every engine says whether its bits are portable across CPU
//! generations ([`Portability`]). [`Model`] wraps an engine with its manifest: it checks every
//! request against the signature before the engine sees it and every result after.
//! Engines know nothing of HTTP, corridors or caches.

pub mod native;
pub mod onnx;
pub mod portable;
mod signature;

pub use signature::{check_inputs, check_outputs};

use invariant_core::Tensor;
use invariant_gpu::{DeviceLayer, Placement};
use invariant_registry::{Format, Manifest, OnnxEngine, VerifiedVersion};
use thiserror::Error;

/// Which runtime runs a model, and its version: for model metadata and verification records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// `onnxruntime` or `candle`.
    pub name: &'static str,
    /// Runtime version, e.g. `1.31.1`.
    pub version: String,
}

/// Whether an engine's output bits are the same on every CPU, and why (model metadata,
/// the gate's portability report, the choice of golden file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Portability {
    /// True when the bits do not depend on the CPU's features.
    pub portable: bool,
    /// Why, in one sentence.
    pub reason: String,
}

impl Portability {
    /// Invariant's fixed-order kernels.
    pub fn portable() -> Self {
        Self {
            portable: true,
            reason: "Invariant's fixed-order kernels: one reduction order per element, no fused multiply-add, \
                     no CPU-dependent dispatch"
                .into(),
        }
    }

    /// A runtime whose kernels depend on the CPU.
    pub fn host_dependent(reason: impl Into<String>) -> Self {
        Self {
            portable: false,
            reason: reason.into(),
        }
    }
}

/// Errors of loading or running a model.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// A request tensor does not fit the signature; `field` names it (`inputs[0].shape`).
    #[error("{field}: {message}")]
    InvalidInput {
        /// The offending request field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The version cannot be loaded by its runtime.
    #[error("cannot load model: {0}")]
    Load(String),
    /// The runtime failed while running a request.
    #[error("inference failed: {0}")]
    Runtime(String),
}

/// A model runtime. Implementations are deterministic: the same inputs give the same output
/// bits on every call.
pub trait Engine: Send + Sync {
    /// Which runtime this is.
    fn runtime(&self) -> RuntimeInfo;
    /// Runs one batch. `inputs` are in signature order and already checked against it;
    /// outputs are returned in the manifest's output order.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError>;
    /// How many runs can proceed at once when the runtime holds a fixed pool of sessions (one
    /// run per session); `None` when runs share immutable state and need no session.
    fn sessions(&self) -> Option<usize> {
        None
    }
    /// Whether the bits are the same on every CPU.
    fn portability(&self) -> Portability;
}

/// The `[onnx]` section of an ONNX version and its verified graph bytes.
fn onnx_graph(version: &VerifiedVersion) -> Result<(&invariant_registry::OnnxSection, &[u8]), EngineError> {
    let onnx = version
        .manifest
        .onnx
        .as_ref()
        .ok_or_else(|| EngineError::Load("manifest has no [onnx] section".into()))?;
    let bytes = version
        .artifact(&onnx.model)
        .ok_or_else(|| EngineError::Load(format!("model '{}' not among the verified artifacts", onnx.model)))?;
    Ok((onnx, bytes))
}

/// Most engine threads any engine accepts, whatever the manifest or the options say: ONNX
/// Runtime builds one session per thread, so this bounds the sessions of an unvalidated
/// manifest (the repository's limits are far lower by default).
pub const MAX_THREADS: usize = 1024;

/// Settings that belong to the server rather than to a model version.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Concurrent instances (sessions) of each ONNX model.
    pub instances: usize,
    /// Engine threads instead of the manifest's `[inference] threads` (thread-invariance
    /// checks build the same version with several counts).
    pub threads: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            instances: 2,
            threads: None,
        }
    }
}

/// A loaded model version: manifest, placement and engine.
pub struct Model {
    manifest: Manifest,
    content_hash: String,
    placement: Placement,
    engine: Box<dyn Engine>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version.to_string())
            .field("placement", &self.placement)
            .finish()
    }
}

impl Model {
    /// Builds the runtime for a verified version on the device the device layer picks.
    /// ONNX versions need [`onnx::init_runtime`] to have succeeded first.
    pub fn load(
        version: &VerifiedVersion,
        devices: &DeviceLayer,
        options: &EngineOptions,
    ) -> Result<Self, EngineError> {
        let manifest = &version.manifest;
        let placement = devices
            .place(manifest.inference.device)
            .map_err(|e| EngineError::Load(e.to_string()))?;
        let engine: Box<dyn Engine> = match manifest.format {
            Format::Onnx => match manifest.onnx.as_ref().map(|o| o.engine).unwrap_or_default() {
                OnnxEngine::Onnxruntime => Box::new(onnx::OnnxEngine::load(version, options)?),
                OnnxEngine::Portable => Box::new(portable::PortableEngine::load(version, options)?),
            },
            Format::Native => {
                let engine = native::NativeEngine::load(version)?;
                Box::new(match options.threads {
                    Some(t) => engine.with_threads(t),
                    None => engine,
                })
            }
        };
        Ok(Self {
            manifest: manifest.clone(),
            content_hash: version.content_hash.clone(),
            placement,
            engine,
        })
    }

    /// Wraps an engine built elsewhere (tests, custom runtimes).
    pub fn from_engine(
        manifest: Manifest,
        content_hash: String,
        placement: Placement,
        engine: Box<dyn Engine>,
    ) -> Self {
        Self {
            manifest,
            content_hash,
            placement,
            engine,
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Content hash of the artifacts.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// Where the version runs.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Which runtime runs it.
    pub fn runtime(&self) -> RuntimeInfo {
        self.engine.runtime()
    }

    /// Whether the version's bits are the same on every CPU.
    pub fn portability(&self) -> Portability {
        self.engine.portability()
    }

    /// The runtime's session pool size, if it has one (see [`Engine::sessions`]).
    pub fn sessions(&self) -> Option<usize> {
        self.engine.sessions()
    }

    /// Checks `inputs` (in request order) against the signature, runs them, and checks the
    /// outputs. Errors name the request field at fault.
    pub fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        let (ordered, batch) = check_inputs(&self.manifest, inputs)?;
        let outputs = self.engine.run(&ordered)?;
        check_outputs(&self.manifest, &outputs, batch)?;
        Ok(outputs)
    }
}
