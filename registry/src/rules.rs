//! A model's rule fallback (`fallback = "rules"` in `[inference]`, rules in
//! `[[fallback_rules]]`): a small deterministic table, versioned with the model, that answers
//! when the model cannot compute. Each row of the request takes the outputs of the first rule
//! whose condition holds on that row (`input`'s `column` compared with `value`); the last rule
//! has no condition, so every row gets an answer. Pure arithmetic on the request's values: the
//! same input always gives the same bits, and golden vectors record them.

use crate::manifest::{Manifest, TensorSpec};
use invariant_core::{DataType, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackRule {
    /// The input the condition reads (absent: the rule always holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The column of that input's row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// `>`, `>=`, `<`, `<=`, `==` or `!=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The value compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Per output, one row's values.
    pub outputs: BTreeMap<String, Vec<f64>>,
}

/// The values of one row of an output: every dimension after the batch must be fixed.
fn row_width(spec: &TensorSpec) -> Option<usize> {
    spec.shape
        .iter()
        .skip(1)
        .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
}

/// The datatypes rules read and write.
fn numeric(d: DataType) -> bool {
    matches!(d, DataType::Fp32 | DataType::Fp64 | DataType::Int32 | DataType::Int64)
}

fn compare(op: &str, a: f64, b: f64) -> Option<bool> {
    Some(match op {
        ">" => a > b,
        ">=" => a >= b,
        "<" => a < b,
        "<=" => a <= b,
        "==" => a == b,
        "!=" => a != b,
        _ => return None,
    })
}

/// Checks the rules against the manifest's signature; `Err` names the field at fault.
pub fn validate(m: &Manifest) -> Result<(), String> {
    let rules = &m.fallback_rules;
    if rules.is_empty() {
        return Err("fallback = \"rules\" needs [[fallback_rules]]".into());
    }
    for (i, r) in rules.iter().enumerate() {
        let field = format!("fallback_rules[{i}]");
        let conditional = r.input.is_some() || r.column.is_some() || r.op.is_some() || r.value.is_some();
        if conditional {
            let (Some(input), Some(column), Some(op), Some(value)) = (&r.input, r.column, &r.op, r.value) else {
                return Err(format!("{field}: a condition needs input, column, op and value"));
            };
            let Some(spec) = m.inputs.iter().find(|s| &s.name == input) else {
                return Err(format!("{field}.input: no input '{input}'"));
            };
            if !numeric(spec.datatype) {
                return Err(format!(
                    "{field}.input: '{input}' is {}, not a number type",
                    spec.datatype
                ));
            }
            match row_width(spec) {
                Some(w) if column < w => {}
                _ => return Err(format!("{field}.column: {column} is outside a row of '{input}'")),
            }
            if compare(op, 0.0, 0.0).is_none() {
                return Err(format!("{field}.op: '{op}' is not one of > >= < <= == !="));
            }
            if !value.is_finite() {
                return Err(format!("{field}.value: must be finite"));
            }
        } else if i + 1 != rules.len() {
            return Err(format!("{field}: only the last rule may have no condition"));
        }
        for spec in &m.outputs {
            let Some(values) = r.outputs.get(&spec.name) else {
                return Err(format!("{field}.outputs: missing output '{}'", spec.name));
            };
            let Some(width) = row_width(spec) else {
                return Err(format!(
                    "{field}.outputs: output '{}' has no fixed row width",
                    spec.name
                ));
            };
            if values.len() != width {
                return Err(format!(
                    "{field}.outputs.{}: {} values for a row of {width}",
                    spec.name,
                    values.len()
                ));
            }
            if !numeric(spec.datatype) {
                return Err(format!(
                    "{field}.outputs.{}: {} outputs are not supported",
                    spec.name, spec.datatype
                ));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(format!("{field}.outputs.{}: values must be finite", spec.name));
            }
        }
        if let Some(extra) = r.outputs.keys().find(|k| !m.outputs.iter().any(|s| &s.name == *k)) {
            return Err(format!("{field}.outputs: no output '{extra}'"));
        }
    }
    if rules.last().is_some_and(|r| r.input.is_some()) {
        return Err("fallback_rules: the last rule must have no condition (every row needs an answer)".into());
    }
    Ok(())
}

fn value_at(t: &TensorData, i: usize) -> Option<f64> {
    match t {
        TensorData::Fp32(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Fp64(v) => v.get(i).copied(),
        TensorData::Int32(v) => v.get(i).map(|x| f64::from(*x)),
        TensorData::Int64(v) => v.get(i).map(|x| *x as f64),
        _ => None,
    }
}

/// The rules' answer to `inputs` (checked against the signature), every output in manifest
/// order.
pub fn evaluate(m: &Manifest, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
    let rows = inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(1);
    // Every row of a signature-checked input holds elements: more rows than elements is a
    // shape with an empty dimension, which must not size the answer.
    if let Some(first) = inputs.first().filter(|t| rows > t.data.len()) {
        return Err(format!(
            "input '{}' has {rows} rows but {} elements",
            first.name,
            first.data.len()
        ));
    }
    let mut chosen = Vec::with_capacity(rows);
    for row in 0..rows {
        let rule = m.fallback_rules.iter().find(|r| {
            let (Some(input), Some(column), Some(op), Some(value)) = (&r.input, r.column, &r.op, r.value) else {
                return true;
            };
            inputs.iter().find(|t| &t.name == input).is_some_and(|t| {
                let at = t
                    .shape
                    .iter()
                    .skip(1)
                    .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                    .and_then(|width| row.checked_mul(width)?.checked_add(column));
                at.and_then(|at| value_at(&t.data, at))
                    .and_then(|x| compare(op, x, value))
                    .unwrap_or(false)
            })
        });
        chosen.push(rule.ok_or_else(|| format!("no fallback rule answers row {row}"))?);
    }
    m.outputs
        .iter()
        .map(|spec| {
            let values = chosen
                .iter()
                .flat_map(|r| r.outputs.get(&spec.name).into_iter().flatten().copied());
            let data = match spec.datatype {
                DataType::Fp32 => TensorData::Fp32(values.map(|v| v as f32).collect()),
                DataType::Fp64 => TensorData::Fp64(values.collect()),
                DataType::Int32 => TensorData::Int32(values.map(|v| v as i32).collect()),
                DataType::Int64 => TensorData::Int64(values.map(|v| v as i64).collect()),
                other => return Err(format!("output '{}': {other} is not supported by rules", spec.name)),
            };
            let mut shape = vec![rows];
            shape.extend(spec.shape.iter().skip(1).map(|&d| d.max(0) as usize));
            Ok(Tensor {
                name: spec.name.clone(),
                shape,
                data,
            })
        })
        .collect()
}
