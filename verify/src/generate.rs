//! Golden input generation from a manifest's signature and column ranges.
//!
//! Every batched input gets, in order: all zeros; every column at its minimum, at its
//! maximum, at its midpoint; each column alone at its minimum and at its maximum with the
//! others at their midpoints (for inputs of up to 16 columns; wider inputs get alternating
//! minimum/maximum rows instead); seeded pseudo-random rows inside the ranges until there are at
//! least [`MIN_SINGLE_ROW_VECTORS`] single-row vectors; and one vector of `max_batch_size`
//! random rows. Columns without declared ranges use `[0, 1]`.

use crate::VerifyError;
use invariant_core::{DataType, Tensor, TensorData};
use invariant_registry::{Manifest, TensorSpec};

/// Single-row vectors per version at least (the batch-invariance checks combine them).
pub const MIN_SINGLE_ROW_VECTORS: usize = 40;

/// Inputs with more columns than this get two alternating min/max rows instead of one pair of
/// rows per column.
pub const MAX_COLUMN_EXTREMES: usize = 16;

/// splitmix64: a tiny, fixed pseudo-random sequence (the same on every machine).
struct SplitMix(u64);

impl SplitMix {
    fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How one row is filled: a value for column `c` of `ranges`.
#[derive(Clone, Copy)]
enum Fill {
    Zero,
    Min,
    Max,
    Mid,
    /// Column `c` at min (`false`) or max (`true`), others mid.
    One(usize, bool),
    /// Even columns at min and odd at max (`false`), or the other way round (`true`).
    Alternate(bool),
    Random,
}

/// Columns of a tensor: its last dimension (1 for a shape ending in the batch dimension).
fn columns(spec: &TensorSpec) -> usize {
    usize::try_from(spec.shape.last().copied().unwrap_or(1).max(1)).unwrap_or(1)
}

/// The `[min, max]` of column `c`: declared, else `[0, 1]`.
fn range(spec: &TensorSpec, c: usize) -> [f64; 2] {
    spec.ranges
        .as_ref()
        .and_then(|r| r.get(c).copied())
        .unwrap_or([0.0, 1.0])
}

fn value(fill: Fill, col: usize, [lo, hi]: [f64; 2], rng: &mut SplitMix) -> f64 {
    let mid = lo + (hi - lo) / 2.0;
    match fill {
        Fill::Zero => 0.0,
        Fill::Min => lo,
        Fill::Max => hi,
        Fill::Mid => mid,
        Fill::One(c, at_max) if c == col => {
            if at_max {
                hi
            } else {
                lo
            }
        }
        Fill::One(..) => mid,
        Fill::Alternate(flip) => {
            if (col % 2 == 1) != flip {
                hi
            } else {
                lo
            }
        }
        Fill::Random => lo + rng.next_unit() * (hi - lo),
    }
}

fn data_of(d: DataType, values: Vec<f64>) -> TensorData {
    match d {
        DataType::Bool => TensorData::Bool(values.iter().map(|&v| v >= 0.5).collect()),
        DataType::Uint8 => TensorData::Uint8(values.iter().map(|&v| v.round() as u8).collect()),
        DataType::Int8 => TensorData::Int8(values.iter().map(|&v| v.round() as i8).collect()),
        DataType::Int16 => TensorData::Int16(values.iter().map(|&v| v.round() as i16).collect()),
        DataType::Int32 => TensorData::Int32(values.iter().map(|&v| v.round() as i32).collect()),
        DataType::Int64 => TensorData::Int64(values.iter().map(|&v| v.round() as i64).collect()),
        DataType::Fp32 => TensorData::Fp32(values.iter().map(|&v| v as f32).collect()),
        DataType::Fp64 => TensorData::Fp64(values),
        DataType::Bytes => TensorData::Bytes(values.iter().map(|v| v.to_string().into_bytes()).collect()),
    }
}

/// One tensor of `rows` rows for `spec`. The element count is checked for overflow; its
/// size is what the manifest's limits allowed when the version loaded.
fn tensor(spec: &TensorSpec, rows: usize, fill: Fill, rng: &mut SplitMix) -> Result<Tensor, VerifyError> {
    let too_large = || {
        VerifyError::Generate(format!(
            "input '{}' of shape {:?} at {rows} rows has too many elements",
            spec.name, spec.shape
        ))
    };
    let shape: Vec<usize> = spec
        .shape
        .iter()
        .map(|&d| if d == -1 { Some(rows) } else { usize::try_from(d).ok() })
        .collect::<Option<_>>()
        .ok_or_else(too_large)?;
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(too_large)?;
    let cols = columns(spec);
    let values = (0..n)
        .map(|e| value(fill, e % cols, range(spec, e % cols), rng))
        .collect();
    Ok(Tensor {
        name: spec.name.clone(),
        shape,
        data: data_of(spec.datatype, values),
    })
}

/// The golden inputs of a version: `(id, inputs)` pairs in a fixed order. Fails (instead of
/// overflowing) on a signature whose element counts do not fit in memory's address space.
pub fn golden_inputs(manifest: &Manifest) -> Result<Vec<(String, Vec<Tensor>)>, VerifyError> {
    let mut rng = SplitMix(manifest.inference.seed ^ 0x1a2b_3c4d_5e6f_7081);
    let first = manifest
        .inputs
        .first()
        .ok_or_else(|| VerifyError::Generate("the manifest declares no inputs".into()))?;
    let columns = columns(first);
    let column_name = |c: usize| {
        first
            .columns
            .as_ref()
            .and_then(|names| names.get(c).cloned())
            .unwrap_or_else(|| format!("col{c}"))
    };
    let mut plan: Vec<(String, Fill)> = vec![
        ("zeros".into(), Fill::Zero),
        ("min".into(), Fill::Min),
        ("max".into(), Fill::Max),
        ("mid".into(), Fill::Mid),
    ];
    if columns <= MAX_COLUMN_EXTREMES {
        for c in 0..columns {
            plan.push((format!("min-{}", column_name(c)), Fill::One(c, false)));
            plan.push((format!("max-{}", column_name(c)), Fill::One(c, true)));
        }
    } else {
        plan.push(("alternate-min-max".into(), Fill::Alternate(false)));
        plan.push(("alternate-max-min".into(), Fill::Alternate(true)));
    }
    let mut k = 0;
    while plan.len() < MIN_SINGLE_ROW_VECTORS {
        plan.push((format!("random-{k}"), Fill::Random));
        k += 1;
    }
    let mut vectors: Vec<(String, Vec<Tensor>)> = Vec::with_capacity(plan.len() + 1);
    for (name, fill) in plan {
        let inputs = manifest
            .inputs
            .iter()
            .map(|s| tensor(s, 1, fill, &mut rng))
            .collect::<Result<_, _>>()?;
        vectors.push((name, inputs));
    }
    if manifest.inputs.iter().any(TensorSpec::is_batched) {
        let rows = manifest.inference.max_batch_size;
        let inputs = manifest
            .inputs
            .iter()
            .map(|s| tensor(s, rows, Fill::Random, &mut rng))
            .collect::<Result<_, _>>()?;
        vectors.push((format!("random-batch-{rows}"), inputs));
    }
    Ok(vectors
        .into_iter()
        .enumerate()
        .map(|(i, (name, inputs))| (format!("{i:03}-{name}"), inputs))
        .collect())
}
