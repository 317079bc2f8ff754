//! ONNX graphs on Invariant's fixed-order kernels ([`invariant_portable`]): the engine of
//! versions whose manifest says `[onnx] engine = "portable"`.

use crate::{Engine, EngineError, EngineOptions, Portability, RuntimeInfo};
use invariant_core::{DataType, Tensor};
use invariant_portable::proto::elem;
use invariant_portable::{Graph, Value};
use invariant_registry::{TensorSpec, VerifiedVersion};

/// A graph checked against its manifest, with the order maps between the two.
#[derive(Debug)]
pub struct PortableEngine {
    graph: Graph,
    /// For each graph input, the index of the manifest input that feeds it.
    feed: Vec<usize>,
    /// For each manifest output, the index of the graph output that answers it.
    answer: Vec<usize>,
    names: Vec<String>,
    threads: usize,
}

fn load_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Load(e.to_string())
}

/// The ONNX element type of a V2 datatype, if the portable path carries it.
fn onnx_type(d: DataType) -> Option<i32> {
    Some(match d {
        DataType::Fp32 => elem::FLOAT,
        DataType::Fp64 => elem::DOUBLE,
        DataType::Int64 => elem::INT64,
        DataType::Int32 => elem::INT32,
        DataType::Bool => elem::BOOL,
        _ => return None,
    })
}

/// Index of the graph tensor named like `spec` with its datatype.
fn find<'a>(
    kind: &str,
    mut graph: impl Iterator<Item = &'a invariant_portable::IoSpec>,
    spec: &TensorSpec,
) -> Result<usize, EngineError> {
    let want = onnx_type(spec.datatype).ok_or_else(|| {
        load_err(format!(
            "{kind} '{}': {} is not carried by the portable engine",
            spec.name, spec.datatype
        ))
    })?;
    let (i, io) = graph
        .by_ref()
        .enumerate()
        .find(|(_, io)| io.name == spec.name)
        .ok_or_else(|| load_err(format!("graph has no {kind} '{}'", spec.name)))?;
    if io.elem_type != want {
        return Err(load_err(format!(
            "graph {kind} '{}' has ONNX type {}, manifest declares {}",
            spec.name, io.elem_type, spec.datatype
        )));
    }
    // Declared dimensions must agree with the manifest's (symbolic ones match anything).
    if let Some(dims) = &io.dims {
        let agree = dims.len() == spec.shape.len()
            && dims
                .iter()
                .zip(&spec.shape)
                .all(|(g, &m)| g.is_none_or(|g| m < 0 || g == m));
        if !agree {
            let shown: Vec<i64> = dims.iter().map(|d| d.unwrap_or(-1)).collect();
            return Err(load_err(format!(
                "graph {kind} '{}' has shape {shown:?}, manifest declares {:?}",
                spec.name, spec.shape
            )));
        }
    }
    Ok(i)
}

impl PortableEngine {
    /// Decodes and checks the verified `.onnx` bytes (see [`Graph::load`]) and matches the
    /// graph's inputs (all of them) and outputs (those the manifest names) to the manifest.
    pub fn load(version: &VerifiedVersion, options: &EngineOptions) -> Result<Self, EngineError> {
        let manifest = &version.manifest;
        let (onnx, bytes) = crate::onnx_graph(version)?;
        let graph = Graph::load_with(bytes, onnx.fused_multiply_add)
            .map_err(|e| load_err(format!("{}: portable engine: {e}", onnx.model)))?;
        let graph_inputs: Vec<_> = graph.inputs().collect();
        if graph_inputs.len() != manifest.inputs.len() {
            let names: Vec<_> = graph_inputs.iter().map(|g| g.name.as_str()).collect();
            return Err(load_err(format!(
                "graph inputs {names:?} do not match the manifest's {} input(s)",
                manifest.inputs.len()
            )));
        }
        let mut feed = vec![0; graph_inputs.len()];
        for (m, spec) in manifest.inputs.iter().enumerate() {
            feed[find("input", graph.inputs(), spec)?] = m;
        }
        let answer = manifest
            .outputs
            .iter()
            .map(|spec| find("output", graph.outputs(), spec))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            graph,
            feed,
            answer,
            names: manifest.outputs.iter().map(|o| o.name.clone()).collect(),
            threads: options.threads.unwrap_or(manifest.inference.threads).max(1),
        })
    }

    /// The operators the graph uses.
    pub fn ops(&self) -> &[String] {
        self.graph.ops()
    }
}

impl Engine for PortableEngine {
    fn runtime(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "invariant-portable",
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn portability(&self) -> Portability {
        Portability::portable()
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let values = self
            .feed
            .iter()
            .map(|&m| {
                let t = inputs
                    .get(m)
                    .ok_or_else(|| EngineError::Runtime(format!("input {m} is missing")))?;
                Ok(Value {
                    shape: t.shape.clone(),
                    data: t.data.clone(),
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let mut outputs: Vec<Option<Value>> = self
            .graph
            .run(values, self.threads)
            .map_err(|e| EngineError::Runtime(e.to_string()))?
            .into_iter()
            .map(Some)
            .collect();
        self.answer
            .iter()
            .zip(&self.names)
            .map(|(&g, name)| {
                let v = outputs
                    .get_mut(g)
                    .and_then(Option::take)
                    .ok_or_else(|| EngineError::Runtime(format!("output '{name}' was not computed")))?;
                Tensor::new(name.clone(), v.shape, v.data, "output").map_err(|e| EngineError::Runtime(e.to_string()))
            })
            .collect()
    }
}
