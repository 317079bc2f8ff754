//! ONNX models through ONNX Runtime (`ort` 2.x, shared library loaded at run time).
//!
//! The library is the one from the `onnxruntime` wheel that setup installs into the project
//! (`.deps/onnxruntime/`); [`init_runtime`] loads it once per process. Each version keeps a
//! small pool of sessions (an `ort` session runs one request at a time); every session is
//! built with the manifest's intra-op thread count, one inter-op thread, sequential execution
//! and deterministic compute.

use crate::{Engine, EngineError, EngineOptions, Portability, RuntimeInfo};
use invariant_core::{DataType, Tensor, TensorData};
use invariant_registry::{TensorSpec, VerifiedVersion};
use ort::session::Session;
use ort::value::{DynValue, TensorElementType, ValueType};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The loaded ONNX Runtime: its environment and version.
#[derive(Clone)]
pub struct OnnxRuntime {
    environment: ort::environment::Environment,
    version: String,
}

impl std::fmt::Debug for OnnxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxRuntime").field("version", &self.version).finish()
    }
}

impl OnnxRuntime {
    /// The runtime's version, e.g. `1.31.1`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

static RUNTIME: OnceLock<Result<OnnxRuntime, String>> = OnceLock::new();

/// The variable ONNX Runtime reads to stay silent: set, its builds neither keep a device id
/// and an event store under `~/.cache/Microsoft/DeveloperTools/.onnxruntime` nor send usage
/// events to `mobile.events.data.microsoft.com`, which they otherwise do from every process
/// that creates an environment.
pub const TELEMETRY_OPT_OUT: &str = "ORT_DISABLE_TELEMETRY";

/// Turns ONNX Runtime's own telemetry off for this process (see [`TELEMETRY_OPT_OUT`]). Call
/// it first thing in `main`, while the process has one thread: it sets an environment variable.
pub fn opt_out_of_telemetry() {
    std::env::set_var(TELEMETRY_OPT_OUT, "1");
}

/// Loads the ONNX Runtime shared library at `dylib` (once per process; later calls return the
/// first result whatever path they pass).
pub fn init_runtime(dylib: &Path) -> Result<OnnxRuntime, EngineError> {
    RUNTIME
        .get_or_init(|| {
            let builder =
                ort::init_from(dylib).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", dylib.display()))?;
            // As well as the process-wide opt-out (`opt_out_of_telemetry`), the environment's
            // own switch: `ort` turns the runtime's telemetry events on unless told otherwise.
            let environment = builder
                .with_name("invariant")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("ONNX Runtime environment: {e}"))?;
            let version = version_from_path(dylib).unwrap_or_else(|| runtime_version(ort::info()));
            Ok(OnnxRuntime { environment, version })
        })
        .clone()
        .map_err(EngineError::Load)
}

/// The runtime loaded by [`init_runtime`], if it succeeded.
pub fn runtime() -> Option<OnnxRuntime> {
    RUNTIME.get().and_then(|r| r.as_ref().ok()).cloned()
}

/// Extracts `1.31.1` from the library's real file name `libonnxruntime.so.1.31.1`.
fn version_from_path(dylib: &Path) -> Option<String> {
    let real = std::fs::canonicalize(dylib).ok()?;
    let name = real.file_name()?.to_str()?;
    let version = name.strip_prefix("libonnxruntime.so.")?;
    version
        .split('.')
        .all(|p| p.parse::<u32>().is_ok())
        .then(|| version.to_string())
}

/// Extracts `1.31.1` from a build-info string holding `git-branch=rel-1.31.1`.
fn runtime_version(info: &str) -> String {
    info.split([',', ' '])
        .find_map(|part| part.trim().strip_prefix("git-branch=rel-"))
        .map(str::to_string)
        .unwrap_or_else(|| info.to_string())
}

fn element_type(d: DataType) -> TensorElementType {
    match d {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

fn datatype_of(t: TensorElementType) -> Option<DataType> {
    DataType::ALL.into_iter().find(|d| element_type(*d) == t)
}

/// Reads the input and output signature of an ONNX graph (for importing an artifact without
/// a hand-written manifest): names, V2 datatypes, and shapes with `-1` for the batch
/// dimension. Fails for element types V2 JSON cannot carry and for dynamic dimensions other
/// than the first.
pub fn graph_signature(bytes: &[u8]) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), EngineError> {
    let rt = runtime().ok_or_else(|| load_err("ONNX Runtime is not loaded"))?;
    let session = Session::builder(&rt.environment)
        .and_then(|mut b| b.commit_from_memory(bytes))
        .map_err(|e| load_err(format!("cannot read the ONNX graph: {e}")))?;
    let specs = |kind: &str, outlets: &[ort::value::Outlet]| -> Result<Vec<TensorSpec>, EngineError> {
        outlets
            .iter()
            .map(|o| {
                let ValueType::Tensor { ty, shape, .. } = o.dtype() else {
                    return Err(load_err(format!("{kind} '{}' is not a tensor ({:?})", o.name(), o.dtype())));
                };
                let datatype = datatype_of(*ty)
                    .ok_or_else(|| load_err(format!("{kind} '{}' has element type {ty:?}, which V2 JSON cannot carry", o.name())))?;
                let dims: Vec<i64> = shape.iter().copied().collect();
                if dims.iter().skip(1).any(|&d| d < 1) {
                    return Err(load_err(format!(
                        "{kind} '{}' has shape {dims:?}: only the first dimension may be dynamic; write the manifest by hand",
                        o.name()
                    )));
                }
                Ok(TensorSpec {
                    name: o.name().to_string(),
                    datatype,
                    shape: dims.iter().enumerate().map(|(i, &d)| if i == 0 && d < 1 { -1 } else { d }).collect(),
                    allow_non_finite: false,
                    columns: None,
                    ranges: None,
                    feature_service: None,
                })
            })
            .collect()
    };
    Ok((specs("input", session.inputs())?, specs("output", session.outputs())?))
}

/// Refuses graphs with random operators (and Dropout in training mode): no runtime of
/// Invariant seeds them, so their outputs would change from run to run. A graph the
/// portable decoder cannot read at all is left for ONNX Runtime to judge.
pub fn refuse_random(bytes: &[u8]) -> Result<(), EngineError> {
    match invariant_portable::inspect(bytes) {
        Ok(found) if !found.nondeterministic.is_empty() => {
            Err(load_err(invariant_portable::PortableError::Nondeterministic {
                ops: found.nondeterministic,
            }))
        }
        _ => Ok(()),
    }
}

/// An ONNX model version with its pool of sessions.
pub struct OnnxEngine {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    outputs: Vec<TensorSpec>,
    /// Row chunks one request may run in parallel.
    threads: usize,
    /// Whether every input and output has a batch dimension (only then can rows be split).
    splittable: bool,
    version: String,
}

fn load_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Load(e.to_string())
}

fn run_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Runtime(e.to_string())
}

/// Checks that the graph declares every manifest tensor with the same element type.
fn check_graph(
    kind: &str,
    graph: &[ort::value::Outlet],
    specs: &[TensorSpec],
    exhaustive: bool,
) -> Result<(), EngineError> {
    for spec in specs {
        let Some(outlet) = graph.iter().find(|o| o.name() == spec.name) else {
            let names: Vec<_> = graph.iter().map(|o| o.name().to_string()).collect();
            return Err(load_err(format!(
                "graph has no {kind} '{}' (graph {kind}s: {names:?})",
                spec.name
            )));
        };
        match outlet.dtype() {
            ValueType::Tensor { ty, .. } if *ty == element_type(spec.datatype) => {}
            other => {
                return Err(load_err(format!(
                    "graph {kind} '{}' is {other:?}, manifest declares {}",
                    spec.name, spec.datatype
                )))
            }
        }
    }
    if exhaustive {
        if let Some(extra) = graph.iter().find(|o| !specs.iter().any(|s| s.name == o.name())) {
            return Err(load_err(format!(
                "graph {kind} '{}' is not in the manifest",
                extra.name()
            )));
        }
    }
    Ok(())
}

impl OnnxEngine {
    /// Creates `options.instances` sessions from the verified `.onnx` bytes and checks the
    /// graph's inputs and outputs against the manifest.
    pub fn load(version: &VerifiedVersion, options: &EngineOptions) -> Result<Self, EngineError> {
        let manifest = &version.manifest;
        let threads = options.threads.unwrap_or(manifest.inference.threads).max(1);
        if threads > crate::MAX_THREADS {
            return Err(load_err(format!(
                "{threads} engine threads exceed the limit of {} (one ONNX Runtime session each)",
                crate::MAX_THREADS
            )));
        }
        let rt =
            runtime().ok_or_else(|| load_err("ONNX Runtime is not loaded (see onnxruntime_lib in invariant.toml)"))?;
        let (onnx, bytes) = crate::onnx_graph(version)?;
        refuse_random(bytes).map_err(|e| load_err(format!("{}: {e}", onnx.model)))?;
        let mut sessions = Vec::new();
        for _ in 0..options.instances.max(threads) {
            // One intra-op thread: ONNX Runtime's parallel kernels (tree ensembles among them)
            // reduce in an order that depends on the thread count. Parallelism comes from
            // running row chunks on separate sessions instead.
            let session = Session::builder(&rt.environment)
                .and_then(|b| Ok(b.with_intra_threads(1)?))
                .and_then(|b| Ok(b.with_inter_threads(1)?))
                .and_then(|b| Ok(b.with_parallel_execution(false)?))
                .and_then(|b| Ok(b.with_deterministic_compute(true)?))
                .and_then(|mut b| b.commit_from_memory(bytes))
                .map_err(|e| load_err(format!("{}: {e}", onnx.model)))?;
            check_graph("input", session.inputs(), &manifest.inputs, true)?;
            check_graph("output", session.outputs(), &manifest.outputs, false)?;
            sessions.push(Mutex::new(session));
        }
        let splittable = manifest
            .inputs
            .iter()
            .chain(&manifest.outputs)
            .all(TensorSpec::is_batched);
        Ok(Self {
            sessions,
            next: AtomicUsize::new(0),
            outputs: manifest.outputs.clone(),
            threads,
            splittable,
            version: rt.version,
        })
    }

    fn value_of(t: &Tensor) -> Result<DynValue, EngineError> {
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        let v = match &t.data {
            TensorData::Bool(v) => ort::value::Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
            TensorData::Uint8(v) => ort::value::Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
            TensorData::Int8(v) => ort::value::Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
            TensorData::Int16(v) => ort::value::Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
            TensorData::Int32(v) => ort::value::Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
            TensorData::Int64(v) => ort::value::Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
            TensorData::Fp32(v) => ort::value::Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
            TensorData::Fp64(v) => ort::value::Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
            TensorData::Bytes(_) => {
                return Err(EngineError::Runtime(format!(
                    "input '{}': BYTES (string) tensors are not supported by the ONNX engine",
                    t.name
                )))
            }
        };
        v.map_err(run_err)
    }

    fn tensor_of(spec: &TensorSpec, value: &DynValue) -> Result<Tensor, EngineError> {
        fn extract<T: ort::value::PrimitiveTensorElementType + Clone>(
            value: &DynValue,
        ) -> Result<(Vec<usize>, Vec<T>), EngineError> {
            let (shape, data) = value.try_extract_tensor::<T>().map_err(run_err)?;
            let shape = shape
                .iter()
                .map(|&d| usize::try_from(d).map_err(run_err))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((shape, data.to_vec()))
        }
        let (shape, data) = match spec.datatype {
            DataType::Bool => extract::<bool>(value).map(|(s, d)| (s, TensorData::Bool(d)))?,
            DataType::Uint8 => extract::<u8>(value).map(|(s, d)| (s, TensorData::Uint8(d)))?,
            DataType::Int8 => extract::<i8>(value).map(|(s, d)| (s, TensorData::Int8(d)))?,
            DataType::Int16 => extract::<i16>(value).map(|(s, d)| (s, TensorData::Int16(d)))?,
            DataType::Int32 => extract::<i32>(value).map(|(s, d)| (s, TensorData::Int32(d)))?,
            DataType::Int64 => extract::<i64>(value).map(|(s, d)| (s, TensorData::Int64(d)))?,
            DataType::Fp32 => extract::<f32>(value).map(|(s, d)| (s, TensorData::Fp32(d)))?,
            DataType::Fp64 => extract::<f64>(value).map(|(s, d)| (s, TensorData::Fp64(d)))?,
            DataType::Bytes => {
                return Err(EngineError::Runtime(format!(
                    "output '{}': BYTES (string) tensors are not supported by the ONNX engine",
                    spec.name
                )))
            }
        };
        Tensor::new(spec.name.clone(), shape, data, &spec.name).map_err(run_err)
    }

    /// Takes a free session, or waits for the next one in turn.
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Ok(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        // A session that panicked mid-run holds no Rust invariants of ours; keep using it.
        self.sessions[start]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Engine for OnnxEngine {
    fn portability(&self) -> Portability {
        Portability::host_dependent(
            "ONNX Runtime selects its kernels by CPU feature at run time: the bits hold on the CPU classes \
             whose golden vectors were recorded",
        )
    }

    fn sessions(&self) -> Option<usize> {
        Some(self.sessions.len())
    }

    fn runtime(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "onnxruntime",
            version: self.version.clone(),
        }
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let rows = inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(1);
        let chunks = self.threads.min(rows);
        if !self.splittable || chunks <= 1 {
            return self.run_one(inputs);
        }
        // Rows split into contiguous chunks, each run single-threaded on its own session; the
        // deploy-time verification proves a row's bits do not depend on its batch, and the gate
        // proves they do not depend on the thread count.
        let per = rows.div_ceil(chunks);
        let parts: Vec<Vec<Tensor>> = (0..rows)
            .step_by(per)
            .map(|start| {
                let n = per.min(rows - start);
                inputs
                    .iter()
                    .map(|t| {
                        let width: usize = t.shape[1..].iter().product();
                        let mut shape = t.shape.clone();
                        shape[0] = n;
                        Tensor {
                            name: t.name.clone(),
                            shape,
                            data: t.data.slice(start * width, n * width),
                        }
                    })
                    .collect()
            })
            .collect();
        let results: Vec<Result<Vec<Tensor>, EngineError>> = std::thread::scope(|s| {
            let handles: Vec<_> = parts.iter().map(|p| s.spawn(move || self.run_one(p))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(run_err("an inference thread panicked")))
                })
                .collect()
        });
        let results = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        (0..self.outputs.len())
            .map(|k| {
                let pieces: Vec<&Tensor> = results.iter().map(|r| &r[k]).collect();
                Tensor::concat_rows(&pieces).ok_or_else(|| run_err("row chunks disagree in shape"))
            })
            .collect()
    }
}

impl OnnxEngine {
    /// Runs inputs as one batch on one session.
    fn run_one(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let values = inputs
            .iter()
            .map(|t| Ok((t.name.clone(), Self::value_of(t)?)))
            .collect::<Result<Vec<(String, DynValue)>, EngineError>>()?;
        let mut session = self.session();
        let outputs = session.run(values).map_err(run_err)?;
        self.outputs
            .iter()
            .map(|spec| {
                let value = outputs
                    .get(&spec.name)
                    .ok_or_else(|| run_err(format!("graph did not produce output '{}'", spec.name)))?;
                Self::tensor_of(spec, value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_from_build_info() {
        assert_eq!(
            super::runtime_version("ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release"),
            "1.31.1"
        );
    }

    #[test]
    fn an_absurd_thread_count_is_refused_before_any_session() {
        use invariant_core::DataType;
        use invariant_registry::{Manifest, OnnxEngine, TensorSpec, VerifiedVersion};
        let mut manifest = Manifest::onnx(
            "m",
            "1.0.0".parse().unwrap(),
            vec![TensorSpec::new("x", DataType::Fp32, &[-1, 2])],
            vec![TensorSpec::new("y", DataType::Fp32, &[-1, 1])],
            OnnxEngine::Onnxruntime,
        );
        manifest.inference.threads = 1_000_000;
        let version = VerifiedVersion::in_memory(manifest, [("model.onnx".to_string(), Vec::new())].into());
        let e = super::OnnxEngine::load(&version, &crate::EngineOptions::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("1000000 engine threads exceed the limit of 1024"), "{e}");
    }
}
