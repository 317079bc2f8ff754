//! The portable operator set: attribute parsing at load (every attribute checked once) and
//! each operator's kernel at run time.

use crate::kernels::{broadcast, broadcast_shape, sigmoid, softmax_row, Float, Num, Products};
use crate::proto::{elem, AttributeProto, NodeProto, TensorProto};
use crate::tree::{Classifier, Regressor};
use crate::{tensor_from_proto, PortableError, Value};
use invariant_core::TensorData;

/// The operators the portable path runs, as `domain.op` (`ai.onnx` ops without a prefix).
pub const SUPPORTED: &[&str] = &[
    "Add",
    "Cast",
    "Concat",
    "Div",
    "Dropout",
    "Flatten",
    "Gemm",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "Mul",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softmax",
    "Sub",
    "Tanh",
    "ai.onnx.ml.Scaler",
    "ai.onnx.ml.TreeEnsembleClassifier",
    "ai.onnx.ml.TreeEnsembleRegressor",
];

/// Operators whose outputs are random: refused everywhere (no runtime of Invariant seeds them).
pub const NONDETERMINISTIC: &[&str] = &[
    "Bernoulli",
    "Multinomial",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
];

/// A node's attributes by name.
pub(crate) struct Attrs<'a> {
    op: String,
    list: &'a [AttributeProto],
}

impl<'a> Attrs<'a> {
    pub(crate) fn new(op: &str, list: &'a [AttributeProto]) -> Self {
        Self { op: op.into(), list }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.list.iter().find(|a| a.name.as_deref() == Some(name))
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn missing(&self, name: &str) -> PortableError {
        PortableError::Invalid(format!("{}: attribute '{name}' is missing", self.op))
    }

    pub(crate) fn int_opt(&self, name: &str) -> Result<Option<i64>, PortableError> {
        Ok(self.get(name).and_then(|a| a.i))
    }

    pub(crate) fn float_opt(&self, name: &str) -> Result<Option<f32>, PortableError> {
        Ok(self.get(name).and_then(|a| a.f))
    }

    pub(crate) fn ints_opt(&self, name: &str) -> Result<Option<Vec<i64>>, PortableError> {
        Ok(self.get(name).map(|a| a.ints.clone()))
    }

    pub(crate) fn ints(&self, name: &str) -> Result<Vec<i64>, PortableError> {
        self.ints_opt(name)?.ok_or_else(|| self.missing(name))
    }

    pub(crate) fn floats_opt(&self, name: &str) -> Result<Option<Vec<f32>>, PortableError> {
        Ok(self.get(name).map(|a| a.floats.clone()))
    }

    /// A tensor attribute's elements as `f32` (`*_as_tensor` attributes of opset 3).
    pub(crate) fn tensor_floats(&self, name: &str) -> Result<Option<Vec<f32>>, PortableError> {
        let Some(t) = self.get(name).and_then(|a| a.t.as_ref()) else {
            return Ok(None);
        };
        match tensor_from_proto(t)?.data {
            TensorData::Fp32(v) => Ok(Some(v)),
            TensorData::Fp64(_) => Err(PortableError::Unsupported {
                ops: vec![format!("{} with double thresholds or weights", self.op)],
            }),
            _ => Err(PortableError::Invalid(format!(
                "{}: '{name}' is not a float tensor",
                self.op
            ))),
        }
    }

    pub(crate) fn string_opt(&self, name: &str) -> Result<Option<String>, PortableError> {
        self.get(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| {
                String::from_utf8(s.clone())
                    .map_err(|_| PortableError::Invalid(format!("{}: '{name}' is not UTF-8", self.op)))
            })
            .transpose()
    }

    pub(crate) fn strings(&self, name: &str) -> Result<Vec<String>, PortableError> {
        let a = self.get(name).ok_or_else(|| self.missing(name))?;
        a.strings
            .iter()
            .map(|s| {
                String::from_utf8(s.clone())
                    .map_err(|_| PortableError::Invalid(format!("{}: '{name}' is not UTF-8", self.op)))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

/// One operator with its checked attributes.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Binary(Binary),
    Relu,
    LeakyRelu {
        alpha: f32,
    },
    Sigmoid,
    Tanh,
    Softmax {
        axis: i64,
        coerce_2d: bool,
    },
    Identity,
    Flatten {
        axis: i64,
    },
    Reshape {
        allow_zero: bool,
    },
    Concat {
        axis: i64,
    },
    Cast {
        to: i32,
    },
    Scaler {
        offset: Vec<f32>,
        scale: Vec<f32>,
    },
    Classifier(Box<Classifier>),
    Regressor(Box<Regressor>),
}

/// `domain.op` of a node (`ai.onnx` and the empty domain without a prefix).
pub(crate) fn qualified(node: &NodeProto) -> String {
    let op = node.op_type.clone().unwrap_or_default();
    match node.domain.as_deref().unwrap_or("") {
        "" | "ai.onnx" => op,
        d => format!("{d}.{op}"),
    }
}

impl Op {
    /// Parses a supported node; `opset` is the default domain's version.
    pub(crate) fn parse(node: &NodeProto, opset: i64) -> Result<Self, PortableError> {
        let name = qualified(node);
        let a = Attrs::new(&name, &node.attribute);
        Ok(match name.as_str() {
            "Gemm" => Op::Gemm {
                alpha: a.float_opt("alpha")?.unwrap_or(1.0),
                beta: a.float_opt("beta")?.unwrap_or(1.0),
                trans_a: a.int_opt("transA")?.unwrap_or(0) != 0,
                trans_b: a.int_opt("transB")?.unwrap_or(0) != 0,
            },
            "MatMul" => Op::MatMul,
            "Add" => Op::Binary(Binary::Add),
            "Sub" => Op::Binary(Binary::Sub),
            "Mul" => Op::Binary(Binary::Mul),
            "Div" => Op::Binary(Binary::Div),
            "Relu" => Op::Relu,
            "LeakyRelu" => Op::LeakyRelu {
                alpha: a.float_opt("alpha")?.unwrap_or(0.01),
            },
            "Sigmoid" => Op::Sigmoid,
            "Tanh" => Op::Tanh,
            "Softmax" => Op::Softmax {
                axis: a.int_opt("axis")?.unwrap_or(if opset >= 13 { -1 } else { 1 }),
                coerce_2d: opset < 13,
            },
            "Identity" | "Dropout" => Op::Identity,
            "Flatten" => Op::Flatten {
                axis: a.int_opt("axis")?.unwrap_or(1),
            },
            "Reshape" => Op::Reshape {
                allow_zero: a.int_opt("allowzero")?.unwrap_or(0) != 0,
            },
            "Concat" => Op::Concat {
                axis: a.int_opt("axis")?.ok_or_else(|| a.missing("axis"))?,
            },
            "Cast" => {
                let to = a.int_opt("to")?.ok_or_else(|| a.missing("to"))? as i32;
                if ![elem::FLOAT, elem::DOUBLE, elem::INT64, elem::INT32, elem::BOOL].contains(&to) {
                    return Err(PortableError::Unsupported {
                        ops: vec![format!("Cast to ONNX type {to}")],
                    });
                }
                Op::Cast { to }
            }
            "ai.onnx.ml.Scaler" => Op::Scaler {
                offset: a.floats_opt("offset")?.unwrap_or_default(),
                scale: a.floats_opt("scale")?.unwrap_or_default(),
            },
            "ai.onnx.ml.TreeEnsembleClassifier" => Op::Classifier(Box::new(Classifier::build(&a)?)),
            "ai.onnx.ml.TreeEnsembleRegressor" => Op::Regressor(Box::new(Regressor::build(&a)?)),
            other => {
                return Err(PortableError::Unsupported {
                    ops: vec![other.to_string()],
                })
            }
        })
    }

    /// Element-wise operators that can overwrite an input nothing reads afterwards.
    pub(crate) fn in_place(&self) -> bool {
        matches!(self, Op::Relu | Op::LeakyRelu { .. } | Op::Sigmoid | Op::Tanh)
    }

    /// An [`Op::in_place`] operator on an owned input, element by element.
    pub(crate) fn run_in_place(&self, mut x: Value) -> Result<Value, String> {
        macro_rules! apply {
            ($f32:expr, $f64:expr) => {
                match &mut x.data {
                    TensorData::Fp32(v) => v.iter_mut().for_each(|e| *e = $f32(*e)),
                    TensorData::Fp64(v) => v.iter_mut().for_each(|e| *e = $f64(*e)),
                    other => return Err(format!("takes FLOAT or DOUBLE, got {}", type_name(other))),
                }
            };
        }
        match self {
            Op::Relu => apply!(|x: f32| if x > 0.0 { x } else { 0.0 }, |x: f64| if x > 0.0 {
                x
            } else {
                0.0
            }),
            Op::LeakyRelu { alpha } => {
                let (a32, a64) = (*alpha, *alpha as f64);
                apply!(|x: f32| if x < 0.0 { a32 * x } else { x }, |x: f64| if x < 0.0 {
                    a64 * x
                } else {
                    x
                })
            }
            Op::Sigmoid => apply!(sigmoid::<f32>, sigmoid::<f64>),
            Op::Tanh => apply!(Float::tanh, Float::tanh),
            _ => return Err("not an element-wise operator".into()),
        }
        Ok(x)
    }

    /// Runs the operator on its inputs (`None` for an omitted optional input).
    pub(crate) fn run(
        &self,
        inputs: &[Option<&Value>],
        outputs: usize,
        products: Products,
    ) -> Result<Vec<Value>, String> {
        let arg = |i: usize| {
            inputs
                .get(i)
                .copied()
                .flatten()
                .ok_or_else(|| format!("input {i} is missing"))
        };
        Ok(match self {
            Op::Identity => {
                let x = arg(0)?;
                let mut out = vec![x.clone()];
                if outputs > 1 {
                    // Dropout's mask in inference mode: every element kept.
                    out.push(Value {
                        shape: x.shape.clone(),
                        data: TensorData::Bool(vec![true; x.data.len()]),
                    });
                }
                out
            }
            Op::MatMul => vec![matmul(arg(0)?, arg(1)?, products)?],
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => vec![gemm(
                arg(0)?,
                arg(1)?,
                inputs.get(2).copied().flatten(),
                *alpha,
                *beta,
                *trans_a,
                *trans_b,
                products,
            )?],
            Op::Binary(op) => vec![binary(*op, arg(0)?, arg(1)?)?],
            Op::Relu | Op::LeakyRelu { .. } | Op::Sigmoid | Op::Tanh => vec![self.run_in_place(arg(0)?.clone())?],
            Op::Softmax { axis, coerce_2d } => vec![softmax(arg(0)?, *axis, *coerce_2d)?],
            Op::Flatten { axis } => {
                let x = arg(0)?;
                let rank = x.shape.len() as i64;
                let axis = if *axis < 0 { axis + rank } else { *axis };
                if !(0..=rank).contains(&axis) {
                    return Err(format!("axis {axis} out of range for rank {rank}"));
                }
                let outer: usize = x.shape[..axis as usize].iter().product();
                let inner: usize = x.shape[axis as usize..].iter().product();
                vec![Value {
                    shape: vec![outer, inner],
                    data: x.data.clone(),
                }]
            }
            Op::Reshape { allow_zero } => vec![reshape(arg(0)?, arg(1)?, *allow_zero)?],
            Op::Concat { axis } => {
                let parts: Vec<&Value> = inputs.iter().flatten().copied().collect();
                vec![concat(&parts, *axis)?]
            }
            Op::Cast { to } => vec![cast(arg(0)?, *to)?],
            Op::Scaler { offset, scale } => vec![scaler(arg(0)?, offset, scale)?],
            Op::Classifier(c) => {
                let x = arg(0)?;
                let TensorData::Fp32(data) = &x.data else {
                    return Err("TreeEnsembleClassifier takes FLOAT input on the portable path".into());
                };
                let (labels, scores, classes) = c.run(data, &x.shape).map_err(|e| e.to_string())?;
                let n = labels.len();
                vec![
                    Value {
                        shape: vec![n],
                        data: TensorData::Int64(labels),
                    },
                    Value {
                        shape: vec![n, classes],
                        data: TensorData::Fp32(scores),
                    },
                ]
            }
            Op::Regressor(r) => {
                let x = arg(0)?;
                let TensorData::Fp32(data) = &x.data else {
                    return Err("TreeEnsembleRegressor takes FLOAT input on the portable path".into());
                };
                let (y, targets) = r.run(data, &x.shape).map_err(|e| e.to_string())?;
                vec![Value {
                    shape: vec![y.len() / targets.max(1), targets],
                    data: TensorData::Fp32(y),
                }]
            }
        })
    }
}

fn type_name(d: &TensorData) -> &'static str {
    d.datatype().name()
}

fn binary(op: Binary, a: &Value, b: &Value) -> Result<Value, String> {
    let shape = broadcast_shape(&a.shape, &b.shape)
        .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", a.shape, b.shape))?;
    fn apply<T: Num>(op: Binary, x: &[T], xs: &[usize], y: &[T], ys: &[usize], s: &[usize]) -> Vec<T> {
        match op {
            Binary::Add => broadcast(x, xs, y, ys, s, |p, q| p + q),
            Binary::Sub => broadcast(x, xs, y, ys, s, |p, q| p - q),
            Binary::Mul => broadcast(x, xs, y, ys, s, |p, q| p * q),
            Binary::Div => broadcast(x, xs, y, ys, s, |p, q| p.div(q)),
        }
    }
    let data = match (&a.data, &b.data) {
        (TensorData::Fp32(x), TensorData::Fp32(y)) => TensorData::Fp32(apply(op, x, &a.shape, y, &b.shape, &shape)),
        (TensorData::Fp64(x), TensorData::Fp64(y)) => TensorData::Fp64(apply(op, x, &a.shape, y, &b.shape, &shape)),
        (TensorData::Int64(x), TensorData::Int64(y)) => TensorData::Int64(apply(op, x, &a.shape, y, &b.shape, &shape)),
        (TensorData::Int32(x), TensorData::Int32(y)) => TensorData::Int32(apply(op, x, &a.shape, y, &b.shape, &shape)),
        (x, y) => return Err(format!("operands are {} and {}", type_name(x), type_name(y))),
    };
    Ok(Value { shape, data })
}

/// `[.., m, k] × [k, n]` (the right operand 2-D, as exported tabular models have it) or
/// `[k] × [k, n]`.
fn matmul(a: &Value, b: &Value, products: Products) -> Result<Value, String> {
    let [k, n] = b.shape[..] else {
        return Err(format!("the right operand must be 2-D, got {:?}", b.shape));
    };
    let Some((&last, lead)) = a.shape.split_last() else {
        return Err("the left operand is a scalar".into());
    };
    if last != k {
        return Err(format!("shapes {:?} and {:?} do not multiply", a.shape, b.shape));
    }
    let mut shape = lead.to_vec();
    shape.push(n);
    let data = match (&a.data, &b.data) {
        (TensorData::Fp32(x), TensorData::Fp32(w)) => TensorData::Fp32(products.matmul(x, w, None, k, n)),
        (TensorData::Fp64(x), TensorData::Fp64(w)) => TensorData::Fp64(products.matmul(x, w, None, k, n)),
        (x, y) => return Err(format!("operands are {} and {}", type_name(x), type_name(y))),
    };
    Ok(Value { shape, data })
}

fn transpose<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for c in 0..cols {
        for r in 0..rows {
            out.push(v[r * cols + c]);
        }
    }
    out
}

/// `Y = alpha · A' · B' + beta · C`: the product in [`fixed_order_matmul`]'s order, then
/// `· alpha` when `alpha ≠ 1`, then `+ beta · C` (`beta · C` rounded first when `beta ≠ 1`).
#[allow(clippy::too_many_arguments)]
fn gemm(
    a: &Value,
    b: &Value,
    c: Option<&Value>,
    alpha: f32,
    beta: f32,
    ta: bool,
    tb: bool,
    products: Products,
) -> Result<Value, String> {
    let (&[ar, ac], &[br, bc]) = (&a.shape[..], &b.shape[..]) else {
        return Err(format!("Gemm takes 2-D operands, got {:?} and {:?}", a.shape, b.shape));
    };
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if tb { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(format!("shapes {:?} and {:?} do not multiply", a.shape, b.shape));
    }
    fn run<T: Float>(
        x: &[T],
        w: &[T],
        c: Option<(&[T], &[usize])>,
        dims: (usize, usize, usize, usize, usize, usize),
        alpha: f32,
        beta: f32,
        flags: (bool, bool),
        products: Products,
    ) -> Result<Vec<T>, String> {
        let (m, k, n, ar, ac, br) = dims;
        let x: std::borrow::Cow<'_, [T]> = if flags.0 { transpose(x, ar, ac).into() } else { x.into() };
        let w: std::borrow::Cow<'_, [T]> = if flags.1 { transpose(w, br, k).into() } else { w.into() };
        // `C` of one row with alpha 1 is exactly the kernel's bias (added after the sum):
        // one pass instead of two, the same bits.
        let row_bias = alpha == 1.0
            && c.is_some_and(|(c, cs)| {
                c.len() == n && cs.last() == Some(&n) && cs.iter().rev().skip(1).all(|&d| d == 1)
            });
        if let (true, Some((c, _))) = (row_bias, c) {
            let bias: std::borrow::Cow<'_, [T]> = if beta != 1.0 {
                let b = T::from_f32(beta);
                c.iter().map(|&v| v * b).collect::<Vec<T>>().into()
            } else {
                c.into()
            };
            return Ok(products.matmul(&x, &w, Some(&bias), k, n));
        }
        let mut y = products.matmul(&x, &w, None, k, n);
        if alpha != 1.0 {
            let a = T::from_f32(alpha);
            y.iter_mut().for_each(|v| *v = *v * a);
        }
        if let Some((c, cs)) = c {
            let b = T::from_f32(beta);
            let scaled: Vec<T> = if beta != 1.0 {
                c.iter().map(|&v| v * b).collect()
            } else {
                c.to_vec()
            };
            let shape = broadcast_shape(&[m, n], cs).filter(|s| s[..] == [m, n]);
            let Some(shape) = shape else {
                return Err(format!("C of shape {cs:?} does not broadcast to [{m}, {n}]"));
            };
            y = broadcast(&y, &[m, n], &scaled, cs, &shape, |p, q| p + q);
        }
        Ok(y)
    }
    let dims = (m, k, n, ar, ac, br);
    let c_shape = c.map(|c| c.shape.clone()).unwrap_or_default();
    macro_rules! typed {
        ($variant:ident, $x:expr, $w:expr, $c:expr) => {
            TensorData::$variant(run(
                $x,
                $w,
                $c.map(|cv| (&cv[..], &c_shape[..])),
                dims,
                alpha,
                beta,
                (ta, tb),
                products,
            )?)
        };
    }
    let data = match (&a.data, &b.data, c.map(|c| &c.data)) {
        (TensorData::Fp32(x), TensorData::Fp32(w), None) => typed!(Fp32, x, w, None::<&Vec<f32>>),
        (TensorData::Fp32(x), TensorData::Fp32(w), Some(TensorData::Fp32(cv))) => typed!(Fp32, x, w, Some(cv)),
        (TensorData::Fp64(x), TensorData::Fp64(w), None) => typed!(Fp64, x, w, None::<&Vec<f64>>),
        (TensorData::Fp64(x), TensorData::Fp64(w), Some(TensorData::Fp64(cv))) => typed!(Fp64, x, w, Some(cv)),
        _ => return Err("Gemm takes FLOAT or DOUBLE operands of one type".into()),
    };
    Ok(Value {
        shape: vec![m, n],
        data,
    })
}

fn softmax(x: &Value, axis: i64, coerce_2d: bool) -> Result<Value, String> {
    let rank = x.shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..rank.max(1)).contains(&axis) {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    let axis = axis as usize;
    // Opset < 13: rows of the input coerced to 2-D at `axis`; 13+: along one axis.
    let (outer, len, inner) = if coerce_2d {
        (
            x.shape[..axis].iter().product::<usize>(),
            x.shape[axis..].iter().product::<usize>(),
            1,
        )
    } else {
        (
            x.shape[..axis].iter().product::<usize>(),
            x.shape.get(axis).copied().unwrap_or(1),
            x.shape[axis + 1..].iter().product::<usize>(),
        )
    };
    fn run<T: Float>(v: &[T], outer: usize, len: usize, inner: usize) -> Vec<T> {
        let mut out = v.to_vec();
        let mut row = vec![T::ZERO; len];
        for o in 0..outer {
            for i in 0..inner {
                for (j, r) in row.iter_mut().enumerate() {
                    *r = v[(o * len + j) * inner + i];
                }
                softmax_row(&mut row);
                for (j, r) in row.iter().enumerate() {
                    out[(o * len + j) * inner + i] = *r;
                }
            }
        }
        out
    }
    let data = match &x.data {
        TensorData::Fp32(v) => TensorData::Fp32(run(v, outer, len, inner)),
        TensorData::Fp64(v) => TensorData::Fp64(run(v, outer, len, inner)),
        other => return Err(format!("takes FLOAT or DOUBLE, got {}", type_name(other))),
    };
    Ok(Value {
        shape: x.shape.clone(),
        data,
    })
}

fn reshape(x: &Value, shape: &Value, allow_zero: bool) -> Result<Value, String> {
    let TensorData::Int64(dims) = &shape.data else {
        return Err("the shape input must be INT64".into());
    };
    let total = x.data.len();
    let mut out = Vec::with_capacity(dims.len());
    let mut infer = None;
    for (i, &d) in dims.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(
                *x.shape
                    .get(i)
                    .ok_or("a 0 in the shape has no input dimension to copy")?,
            ),
            d if d >= 0 => out.push(d as usize),
            d => return Err(format!("invalid dimension {d} in the shape")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {:?} to {dims:?}", x.shape));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(format!("cannot reshape {:?} to {dims:?}", x.shape));
    }
    Ok(Value {
        shape: out,
        data: x.data.clone(),
    })
}

fn concat(parts: &[&Value], axis: i64) -> Result<Value, String> {
    let first = parts.first().ok_or("Concat has no inputs")?;
    let rank = first.shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&axis) {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    let axis = axis as usize;
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    for p in parts {
        let same = p.shape.len() == first.shape.len()
            && p.shape
                .iter()
                .zip(&first.shape)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !same || p.data.datatype() != first.data.datatype() {
            return Err(format!("inputs {:?} and {:?} do not concatenate", first.shape, p.shape));
        }
        shape[axis] += p.shape[axis];
    }
    let outer: usize = first.shape[..axis].iter().product();
    macro_rules! join {
        ($variant:ident) => {{
            let mut out = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for p in parts {
                    let TensorData::$variant(v) = &p.data else {
                        unreachable!("types checked above")
                    };
                    let chunk: usize = p.shape[axis..].iter().product();
                    out.extend_from_slice(&v[o * chunk..(o + 1) * chunk]);
                }
            }
            TensorData::$variant(out)
        }};
    }
    let data = match &first.data {
        TensorData::Fp32(_) => join!(Fp32),
        TensorData::Fp64(_) => join!(Fp64),
        TensorData::Int64(_) => join!(Int64),
        TensorData::Int32(_) => join!(Int32),
        TensorData::Bool(_) => join!(Bool),
        other => return Err(format!("cannot concatenate {}", type_name(other))),
    };
    Ok(Value { shape, data })
}

fn cast(x: &Value, to: i32) -> Result<Value, String> {
    macro_rules! convert {
        ($v:expr) => {
            match to {
                elem::FLOAT => TensorData::Fp32($v.iter().map(|&e| e as f32).collect()),
                elem::DOUBLE => TensorData::Fp64($v.iter().map(|&e| e as f64).collect()),
                elem::INT64 => TensorData::Int64($v.iter().map(|&e| e as i64).collect()),
                elem::INT32 => TensorData::Int32($v.iter().map(|&e| e as i32).collect()),
                _ => TensorData::Bool($v.iter().map(|&e| e as f64 != 0.0).collect()),
            }
        };
    }
    let data = match &x.data {
        TensorData::Fp32(v) => convert!(v),
        TensorData::Fp64(v) => convert!(v),
        TensorData::Int64(v) => convert!(v),
        TensorData::Int32(v) => convert!(v),
        TensorData::Bool(v) => {
            let as_u8: Vec<u8> = v.iter().map(|&b| b as u8).collect();
            convert!(as_u8)
        }
        other => return Err(format!("cannot cast {}", type_name(other))),
    };
    Ok(Value {
        shape: x.shape.clone(),
        data,
    })
}

/// `Y = (X - offset) · scale` in `f32`, per column (one-element lists apply to all).
fn scaler(x: &Value, offset: &[f32], scale: &[f32]) -> Result<Value, String> {
    let cols = x.shape.last().copied().unwrap_or(1).max(1);
    for (name, v) in [("offset", offset), ("scale", scale)] {
        if v.len() > 1 && v.len() != cols {
            return Err(format!("{name} has {} entries for {cols} columns", v.len()));
        }
    }
    let pick = |v: &[f32], j: usize, default: f32| match v.len() {
        0 => default,
        1 => v[0],
        _ => v[j],
    };
    let values: Vec<f32> = match &x.data {
        TensorData::Fp32(v) => v.clone(),
        TensorData::Fp64(v) => v.iter().map(|&e| e as f32).collect(),
        TensorData::Int64(v) => v.iter().map(|&e| e as f32).collect(),
        TensorData::Int32(v) => v.iter().map(|&e| e as f32).collect(),
        other => return Err(format!("cannot scale {}", type_name(other))),
    };
    let out = values
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            let j = i % cols;
            (e - pick(offset, j, 0.0)) * pick(scale, j, 1.0)
        })
        .collect();
    Ok(Value {
        shape: x.shape.clone(),
        data: TensorData::Fp32(out),
    })
}

/// A constant tensor's value (initializers), checked for the portable path.
pub(crate) fn constant(t: &TensorProto) -> Result<Value, PortableError> {
    tensor_from_proto(t)
}
