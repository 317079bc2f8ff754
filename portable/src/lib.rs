//! Portable execution of ONNX graphs for Invariant.
//!
//! ONNX Runtime picks its matrix kernels by CPU feature at run time, so an ONNX network's
//! output bits depend on the host. This crate runs the graphs of common tabular models
//! (the operators in [`SUPPORTED_OPS`]) with Invariant's own kernels instead: every output
//! element is reduced in one fixed order that does not depend on the batch size, the row's
//! position, the thread count or the CPU; no fused multiply-add is used anywhere;
//! transcendental functions are pure Rust built into the binary for the baseline target
//! (`e^x` in `f32` is glibc's algorithm without FMA, [`expf`]; the rest from `libm`). The bits are therefore the same on every x86-64 generation (and on
//! any other IEEE-754 target).
//!
//! [`Graph::load`] decodes a `.onnx` file (prost messages in [`proto`]), checks every node
//! and attribute once and refuses what it cannot run faithfully; [`inspect`] reports a
//! graph's operators, which are outside the portable set, and which are random, without
//! building anything (for `models import` and for refusing random graphs on every engine).

pub mod build;
pub mod expf;
mod kernels;
mod ops;
pub mod proto;
mod tree;

pub use kernels::{fixed_order_matmul, fused_order_matmul, sigmoid, Float, Num, Products};
pub use ops::{NONDETERMINISTIC as NONDETERMINISTIC_OPS, SUPPORTED as SUPPORTED_OPS};

use invariant_core::TensorData;
use ops::{qualified, Op};
use prost::Message;
use proto::{elem, ModelProto, NodeProto, TensorProto};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// Errors of decoding, checking or running a graph.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PortableError {
    /// The bytes are not an ONNX model.
    #[error("not an ONNX model: {0}")]
    Decode(String),
    /// Operators (or operator variants) outside the portable set.
    #[error("operators outside the portable set: {}", ops.join(", "))]
    Unsupported {
        /// Each one, `domain.op` or a description of the variant.
        ops: Vec<String>,
    },
    /// Operators whose outputs are random.
    #[error("the graph has nondeterministic operators ({}): refused, since no runtime of Invariant seeds them", ops.join(", "))]
    Nondeterministic {
        /// Each one.
        ops: Vec<String>,
    },
    /// The graph is malformed.
    #[error("invalid graph: {0}")]
    Invalid(String),
    /// A node failed on its inputs.
    #[error("{0}")]
    Runtime(String),
}

/// A tensor value inside a graph: shape and row-major elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements.
    pub data: TensorData,
}

/// A graph input or output as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSpec {
    /// Name.
    pub name: String,
    /// ONNX element type (`TensorProto.DataType`).
    pub elem_type: i32,
    /// Declared dimensions (`None`: symbolic or unknown); `None` when no shape is declared.
    pub dims: Option<Vec<Option<i64>>>,
}

/// What [`inspect`] found in a graph.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inspection {
    /// Every operator used, `domain.op`, sorted.
    pub ops: Vec<String>,
    /// Those outside the portable set.
    pub unsupported: Vec<String>,
    /// Those whose outputs are random (including Dropout in training mode).
    pub nondeterministic: Vec<String>,
}

impl Inspection {
    /// True when the portable path can run the graph.
    pub fn portable(&self) -> bool {
        self.unsupported.is_empty() && self.nondeterministic.is_empty()
    }
}

fn decode(bytes: &[u8]) -> Result<ModelProto, PortableError> {
    let model = ModelProto::decode(bytes).map_err(|e| PortableError::Decode(e.to_string()))?;
    if model.graph.is_none() {
        return Err(PortableError::Decode("the model has no graph".into()));
    }
    Ok(model)
}

/// The opset version of the default (`ai.onnx`) domain.
fn default_opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .filter(|o| matches!(o.domain.as_deref().unwrap_or(""), "" | "ai.onnx"))
        .filter_map(|o| o.version)
        .max()
        .unwrap_or(1)
}

/// True when a Dropout node can only run in inference mode.
fn dropout_is_inference(node: &NodeProto, opset: i64, constants: &BTreeMap<&str, &TensorProto>) -> bool {
    if opset < 7 {
        let is_test = node
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some("is_test"))
            .and_then(|a| a.i);
        return is_test == Some(1);
    }
    match node.input.get(2).map(String::as_str) {
        None | Some("") => true,
        Some(name) => constants
            .get(name)
            .and_then(|t| tensor_from_proto(t).ok())
            .is_some_and(|v| matches!(v.data, TensorData::Bool(ref b) if b.iter().all(|x| !x))),
    }
}

/// Lists a graph's operators and which of them the portable path cannot run or refuses.
pub fn inspect(bytes: &[u8]) -> Result<Inspection, PortableError> {
    inspect_model(&decode(bytes)?)
}

/// [`inspect`] on a decoded model.
fn inspect_model(model: &ModelProto) -> Result<Inspection, PortableError> {
    let opset = default_opset(model);
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| PortableError::Decode("no graph".into()))?;
    let constants: BTreeMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_deref().unwrap_or(""), t))
        .collect();
    let mut ops = BTreeSet::new();
    let mut unsupported = BTreeSet::new();
    let mut nondeterministic = BTreeSet::new();
    for node in &graph.node {
        let name = qualified(node);
        if NONDETERMINISTIC_OPS.contains(&name.as_str()) {
            nondeterministic.insert(name.clone());
        } else if name == "Dropout" && !dropout_is_inference(node, opset, &constants) {
            nondeterministic.insert("Dropout in training mode".to_string());
        }
        if !SUPPORTED_OPS.contains(&name.as_str()) {
            unsupported.insert(name.clone());
        }
        ops.insert(name);
    }
    Ok(Inspection {
        ops: ops.into_iter().collect(),
        unsupported: unsupported.into_iter().collect(),
        nondeterministic: nondeterministic.into_iter().collect(),
    })
}

/// Decodes a constant tensor, checking its element count against its dimensions.
pub(crate) fn tensor_from_proto(t: &TensorProto) -> Result<Value, PortableError> {
    let name = t.name.as_deref().unwrap_or("(unnamed)");
    let bad = |m: String| PortableError::Invalid(format!("tensor '{name}': {m}"));
    if !t.external_data.is_empty() || t.data_location == Some(1) {
        return Err(bad("external data is not supported".into()));
    }
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut count: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}")))?;
        count = count
            .checked_mul(d)
            .ok_or_else(|| bad("element count overflows".into()))?;
        shape.push(d);
    }
    let raw = t.raw_data.as_deref();
    macro_rules! from_raw {
        ($ty:ty, $width:expr, $variant:ident) => {{
            let raw = raw.unwrap_or_default();
            if raw.len() != count * $width {
                return Err(bad(format!("{} raw bytes for {count} elements", raw.len())));
            }
            TensorData::$variant(
                raw.chunks_exact($width)
                    .map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            )
        }};
    }
    let data = match t.data_type.unwrap_or(0) {
        elem::FLOAT if raw.is_some() => from_raw!(f32, 4, Fp32),
        elem::FLOAT => TensorData::Fp32(t.float_data.clone()),
        elem::DOUBLE if raw.is_some() => from_raw!(f64, 8, Fp64),
        elem::DOUBLE => TensorData::Fp64(t.double_data.clone()),
        elem::INT64 if raw.is_some() => from_raw!(i64, 8, Int64),
        elem::INT64 => TensorData::Int64(t.int64_data.clone()),
        elem::INT32 if raw.is_some() => from_raw!(i32, 4, Int32),
        elem::INT32 => TensorData::Int32(t.int32_data.clone()),
        elem::BOOL => match raw {
            Some(r) => TensorData::Bool(r.iter().map(|&b| b != 0).collect()),
            None => TensorData::Bool(t.int32_data.iter().map(|&b| b != 0).collect()),
        },
        other => {
            return Err(PortableError::Unsupported {
                ops: vec![format!("constant tensor '{name}' of ONNX type {other}")],
            })
        }
    };
    if data.len() != count {
        return Err(bad(format!("{} elements for dimensions {:?}", data.len(), t.dims)));
    }
    Ok(Value { shape, data })
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    /// The first input is read by nothing after this node (nor is it a graph output), so an
    /// in-place operator may take it.
    consume_first: bool,
    op: Op,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
}

/// A checked graph, ready to run.
#[derive(Debug, Clone)]
pub struct Graph {
    inputs: Vec<(IoSpec, usize)>,
    outputs: Vec<(IoSpec, usize)>,
    constants: Vec<(usize, Value)>,
    nodes: Vec<Node>,
    slots: usize,
    ops: Vec<String>,
    fused: bool,
}

fn dims(v: &proto::ValueInfoProto) -> Option<Vec<Option<i64>>> {
    let shape = v.r#type.as_ref()?.tensor_type.as_ref()?.shape.as_ref()?;
    Some(shape.dim.iter().map(|d| d.dim_value).collect())
}

fn elem_type(v: &proto::ValueInfoProto) -> i32 {
    v.r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.elem_type)
        .unwrap_or(0)
}

/// The V2 datatype an ONNX element type maps to, if the portable path handles it.
fn matches_elem(data: &TensorData, elem_type: i32) -> bool {
    matches!(
        (data, elem_type),
        (TensorData::Fp32(_), elem::FLOAT)
            | (TensorData::Fp64(_), elem::DOUBLE)
            | (TensorData::Int64(_), elem::INT64)
            | (TensorData::Int32(_), elem::INT32)
            | (TensorData::Bool(_), elem::BOOL)
    )
}

impl Graph {
    /// Decodes and checks a `.onnx` file: every operator in the portable set, none random,
    /// every attribute valid, every value defined before it is read. Matrix products reduce
    /// with separate multiplies and adds ([`fixed_order_matmul`]).
    pub fn load(bytes: &[u8]) -> Result<Self, PortableError> {
        Self::load_with(bytes, false)
    }

    /// [`Graph::load`], with fused multiply-adds in the matrix products when `fused`
    /// ([`fused_order_matmul`]: other bits than unfused, the same on every CPU).
    pub fn load_with(bytes: &[u8], fused: bool) -> Result<Self, PortableError> {
        let model = decode(bytes)?;
        let inspection = inspect_model(&model)?;
        if !inspection.nondeterministic.is_empty() {
            return Err(PortableError::Nondeterministic {
                ops: inspection.nondeterministic,
            });
        }
        if !inspection.unsupported.is_empty() {
            return Err(PortableError::Unsupported {
                ops: inspection.unsupported,
            });
        }
        let opset = default_opset(&model);
        let graph = model.graph.ok_or_else(|| PortableError::Decode("no graph".into()))?;
        if !graph.sparse_initializer.is_empty() {
            return Err(PortableError::Unsupported {
                ops: vec!["sparse initializers".into()],
            });
        }
        let mut slot_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut constants = Vec::new();
        for t in &graph.initializer {
            let name = t.name.clone().unwrap_or_default();
            let slot = slot_of.len();
            if slot_of.insert(name.clone(), slot).is_some() {
                return Err(PortableError::Invalid(format!("initializer '{name}' defined twice")));
            }
            constants.push((slot, ops::constant(t)?));
        }
        let mut inputs = Vec::new();
        for v in &graph.input {
            let name = v.name.clone().unwrap_or_default();
            if slot_of.contains_key(&name) {
                continue; // an initializer listed as an input (IR < 4): the constant is used
            }
            let slot = slot_of.len();
            slot_of.insert(name.clone(), slot);
            inputs.push((
                IoSpec {
                    name,
                    elem_type: elem_type(v),
                    dims: dims(v),
                },
                slot,
            ));
        }
        let mut nodes = Vec::with_capacity(graph.node.len());
        for (i, n) in graph.node.iter().enumerate() {
            let name = n
                .name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("#{i}"));
            let op = Op::parse(n, opset).map_err(|e| match e {
                PortableError::Invalid(m) => PortableError::Invalid(format!("node {name}: {m}")),
                other => other,
            })?;
            let node_inputs = n
                .input
                .iter()
                .map(|x| {
                    if x.is_empty() {
                        return Ok(None);
                    }
                    slot_of.get(x).copied().map(Some).ok_or_else(|| {
                        PortableError::Invalid(format!("node {name} reads '{x}' before anything defines it"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut node_outputs = Vec::with_capacity(n.output.len());
            for x in &n.output {
                if x.is_empty() {
                    node_outputs.push(None);
                    continue;
                }
                let slot = slot_of.len();
                if slot_of.insert(x.clone(), slot).is_some() {
                    return Err(PortableError::Invalid(format!("'{x}' is defined twice")));
                }
                node_outputs.push(Some(slot));
            }
            nodes.push(Node {
                name,
                consume_first: false,
                op,
                inputs: node_inputs,
                outputs: node_outputs,
            });
        }
        let mut outputs = Vec::new();
        for v in &graph.output {
            let name = v.name.clone().unwrap_or_default();
            let slot = *slot_of
                .get(&name)
                .ok_or_else(|| PortableError::Invalid(format!("graph output '{name}' is never defined")))?;
            outputs.push((
                IoSpec {
                    name,
                    elem_type: elem_type(v),
                    dims: dims(v),
                },
                slot,
            ));
        }
        for i in 0..nodes.len() {
            let Some(Some(first)) = nodes[i].inputs.first().copied() else {
                continue;
            };
            let read_again = nodes[i].inputs[1..].contains(&Some(first))
                || nodes[i + 1..].iter().any(|n| n.inputs.contains(&Some(first)))
                || outputs.iter().any(|(_, s)| *s == first);
            nodes[i].consume_first = nodes[i].op.in_place() && !read_again;
        }
        Ok(Self {
            inputs,
            outputs,
            constants,
            nodes,
            slots: slot_of.len(),
            ops: inspection.ops,
            fused,
        })
    }

    /// The graph's inputs (initializers excluded), in declaration order.
    pub fn inputs(&self) -> impl Iterator<Item = &IoSpec> {
        self.inputs.iter().map(|(s, _)| s)
    }

    /// The graph's outputs, in declaration order.
    pub fn outputs(&self) -> impl Iterator<Item = &IoSpec> {
        self.outputs.iter().map(|(s, _)| s)
    }

    /// The operators the graph uses, `domain.op`, sorted.
    pub fn ops(&self) -> &[String] {
        &self.ops
    }

    /// Runs the graph on `inputs` (in [`Graph::inputs`] order); returns the outputs in
    /// [`Graph::outputs`] order. `threads` splits matrix products by rows, which cannot
    /// change any element's bits.
    pub fn run(&self, inputs: Vec<Value>, threads: usize) -> Result<Vec<Value>, PortableError> {
        if inputs.len() != self.inputs.len() {
            return Err(PortableError::Runtime(format!(
                "the graph takes {} inputs, got {}",
                self.inputs.len(),
                inputs.len()
            )));
        }
        let mut slots: Vec<Option<Cow<'_, Value>>> = vec![None; self.slots];
        for (slot, v) in &self.constants {
            slots[*slot] = Some(Cow::Borrowed(v));
        }
        for ((spec, slot), v) in self.inputs.iter().zip(inputs) {
            if !matches_elem(&v.data, spec.elem_type) {
                return Err(PortableError::Runtime(format!(
                    "input '{}' is {}, the graph declares ONNX type {}",
                    spec.name,
                    v.data.datatype(),
                    spec.elem_type
                )));
            }
            slots[*slot] = Some(Cow::Owned(v));
        }
        for node in &self.nodes {
            if let (true, Some(slot)) = (node.consume_first, node.inputs[0]) {
                match slots[slot].take() {
                    Some(Cow::Owned(x)) => {
                        let y = node
                            .op
                            .run_in_place(x)
                            .map_err(|m| PortableError::Runtime(format!("node {}: {m}", node.name)))?;
                        if let Some(Some(out)) = node.outputs.first() {
                            slots[*out] = Some(Cow::Owned(y));
                        }
                        continue;
                    }
                    // A constant (borrowed) input: computed into a new value below.
                    other => slots[slot] = other,
                }
            }
            let args: Vec<Option<&Value>> = node
                .inputs
                .iter()
                .map(|s| s.and_then(|s| slots[s].as_deref()))
                .collect();
            let produced = node
                .op
                .run(
                    &args,
                    node.outputs.len(),
                    Products {
                        threads,
                        fused: self.fused,
                    },
                )
                .map_err(|m| PortableError::Runtime(format!("node {}: {m}", node.name)))?;
            for (slot, v) in node.outputs.iter().zip(produced) {
                if let Some(slot) = slot {
                    slots[*slot] = Some(Cow::Owned(v));
                }
            }
        }
        self.outputs
            .iter()
            .map(|(spec, slot)| {
                slots[*slot]
                    .take()
                    .map(Cow::into_owned)
                    .ok_or_else(|| PortableError::Runtime(format!("output '{}' was not computed", spec.name)))
            })
            .collect()
    }
}
