//! Checking tensors against a manifest's signature.

use crate::EngineError;
use invariant_core::Tensor;
use invariant_registry::{Manifest, TensorSpec};

fn invalid(field: String, message: String) -> EngineError {
    EngineError::InvalidInput { field, message }
}

fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Checks request inputs (in request order; errors name `inputs[i]`) against the manifest:
/// every declared input present exactly once and no other, datatypes equal, shapes fitting
/// the declared ones with the batch dimension between 1 and `max_batch_size` and equal across
/// batched inputs, and no NaN or ±Inf where the input does not allow them.
/// Returns the tensors in signature order and the batch size (1 when nothing is batched).
pub fn check_inputs(manifest: &Manifest, inputs: Vec<Tensor>) -> Result<(Vec<Tensor>, usize), EngineError> {
    let specs = &manifest.inputs;
    let mut slots: Vec<Option<(usize, Tensor)>> = vec![None; specs.len()];
    let mut batch: Option<(usize, usize)> = None;
    for (i, tensor) in inputs.into_iter().enumerate() {
        let field = format!("inputs[{i}]");
        let Some(pos) = specs.iter().position(|s| s.name == tensor.name) else {
            return Err(invalid(
                format!("{field}.name"),
                format!(
                    "model '{}' has no input '{}' (inputs: {})",
                    manifest.name,
                    tensor.name,
                    names(specs)
                ),
            ));
        };
        if let Some((first, _)) = &slots[pos] {
            return Err(invalid(
                format!("{field}.name"),
                format!("input '{}' given twice (also inputs[{first}])", tensor.name),
            ));
        }
        let spec = &specs[pos];
        if tensor.datatype() != spec.datatype {
            return Err(invalid(
                format!("{field}.datatype"),
                format!(
                    "input '{}' expects {}, got {}",
                    spec.name,
                    spec.datatype,
                    tensor.datatype()
                ),
            ));
        }
        check_shape(
            spec,
            &tensor.shape,
            &format!("{field}.shape"),
            manifest.inference.max_batch_size,
        )?;
        if spec.is_batched() {
            let n = tensor.shape[0];
            match batch {
                Some((b, j)) if b != n => {
                    return Err(invalid(
                        format!("{field}.shape"),
                        format!("batch size {n} differs from inputs[{j}]'s batch size {b}"),
                    ))
                }
                Some(_) => {}
                None => batch = Some((n, i)),
            }
        }
        if !spec.allow_non_finite {
            if let Some(k) = tensor.data.first_non_finite() {
                return Err(invalid(
                    format!("{field}.data[{k}]"),
                    format!("NaN and infinite values are not allowed in input '{}'", spec.name),
                ));
            }
        }
        slots[pos] = Some((i, tensor));
    }
    let mut ordered = Vec::with_capacity(specs.len());
    for (spec, slot) in specs.iter().zip(slots) {
        match slot {
            Some((_, t)) => ordered.push(t),
            None => {
                return Err(invalid(
                    "inputs".into(),
                    format!("missing input '{}' of model '{}'", spec.name, manifest.name),
                ))
            }
        }
    }
    Ok((ordered, batch.map(|(b, _)| b).unwrap_or(1)))
}

fn check_shape(spec: &TensorSpec, shape: &[usize], field: &str, max_batch: usize) -> Result<(), EngineError> {
    if shape.len() != spec.shape.len() {
        return Err(invalid(
            field.into(),
            format!(
                "input '{}' expects rank {} {:?}, got {:?}",
                spec.name,
                spec.shape.len(),
                spec.shape,
                shape
            ),
        ));
    }
    for (d, (&want, &got)) in spec.shape.iter().zip(shape).enumerate() {
        if want == -1 {
            if got == 0 || got > max_batch {
                return Err(invalid(
                    field.into(),
                    format!("batch dimension is {got}; it must be between 1 and max_batch_size {max_batch}"),
                ));
            }
        } else if want as usize != got {
            return Err(invalid(
                field.into(),
                format!(
                    "input '{}' expects shape {:?}, got {:?} (dimension {d})",
                    spec.name, spec.shape, shape
                ),
            ));
        }
    }
    Ok(())
}

/// Checks engine outputs against the output signature; a mismatch is a runtime fault (the
/// artifact does not do what its manifest says), never the caller's.
pub fn check_outputs(manifest: &Manifest, outputs: &[Tensor], batch: usize) -> Result<(), EngineError> {
    if outputs.len() != manifest.outputs.len() {
        return Err(EngineError::Runtime(format!(
            "engine returned {} outputs, manifest declares {}",
            outputs.len(),
            manifest.outputs.len()
        )));
    }
    for (spec, t) in manifest.outputs.iter().zip(outputs) {
        let shape_ok = t.shape.len() == spec.shape.len()
            && spec
                .shape
                .iter()
                .zip(&t.shape)
                .all(|(&want, &got)| if want == -1 { got == batch } else { want as usize == got });
        if t.name != spec.name || t.datatype() != spec.datatype || !shape_ok {
            return Err(EngineError::Runtime(format!(
                "output '{}' {} {:?} does not match the manifest's '{}' {} {:?}",
                t.name,
                t.datatype(),
                t.shape,
                spec.name,
                spec.datatype,
                spec.shape
            )));
        }
    }
    Ok(())
}
