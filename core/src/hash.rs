//! Canonical encoding of tensors and the inference input hash.
//!
//! The encoding is independent of how the tensors arrived (JSON spelling, key order, binary
//! or gRPC): tensors are sorted by name, and each is written as its name, datatype, shape and
//! raw little-endian bytes, every variable-length part prefixed by its length. Unlike
//! Triton's cache key, shape and datatype are part of it: `[2,2]` and `[4]` of the same bytes,
//! or the same bytes as INT32 and FP32, never share a key.

use crate::{CorridorId, Tensor};

/// Domain-separation tag of the inference key, bumped if the encoding ever changes.
const INFERENCE_KEY_DOMAIN: &[u8] = b"invariant/inference-key/v1";

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends the canonical encoding of one tensor.
pub fn encode_tensor(out: &mut Vec<u8>, t: &Tensor) {
    put_bytes(out, t.name.as_bytes());
    put_bytes(out, t.datatype().name().as_bytes());
    out.extend_from_slice(&(t.shape.len() as u64).to_le_bytes());
    for &d in &t.shape {
        out.extend_from_slice(&(d as u64).to_le_bytes());
    }
    let data = t.data.to_le_bytes();
    put_bytes(out, &data);
}

/// The canonical encoding of a set of tensors: sorted by name, then encoded one after another.
pub fn encode_tensors(tensors: &[Tensor]) -> Vec<u8> {
    let mut sorted: Vec<&Tensor> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    for t in sorted {
        encode_tensor(&mut out, t);
    }
    out
}

/// What identifies one inference answer.
#[derive(Debug, Clone, Copy)]
pub struct InferenceKeyParts<'a> {
    /// Corridor the request belongs to.
    pub corridor: &'a CorridorId,
    /// Model name.
    pub model: &'a str,
    /// Model version.
    pub version: &'a str,
    /// Content hash of the version's artifacts.
    pub artifact_hash: &'a str,
    /// Input tensors, in any order.
    pub inputs: &'a [Tensor],
    /// Names of the requested outputs, in any order (empty: all outputs).
    pub outputs: &'a [String],
}

/// blake3 over the corridor, model, version, artifact hash, the canonical encoding of the
/// inputs and the sorted requested outputs.
pub fn inference_key(parts: InferenceKeyParts<'_>) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut buf = Vec::new();
    put_bytes(&mut buf, INFERENCE_KEY_DOMAIN);
    put_bytes(&mut buf, parts.corridor.as_str().as_bytes());
    put_bytes(&mut buf, parts.model.as_bytes());
    put_bytes(&mut buf, parts.version.as_bytes());
    put_bytes(&mut buf, parts.artifact_hash.as_bytes());
    h.update(&buf);
    h.update(&encode_tensors(parts.inputs));
    let mut outputs: Vec<&String> = parts.outputs.iter().collect();
    outputs.sort();
    outputs.dedup();
    buf.clear();
    buf.extend_from_slice(&(outputs.len() as u64).to_le_bytes());
    for o in outputs {
        put_bytes(&mut buf, o.as_bytes());
    }
    h.update(&buf);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorData;

    fn t(name: &str, shape: Vec<usize>, data: TensorData) -> Tensor {
        Tensor::new(name, shape, data, "t").unwrap()
    }

    fn key(inputs: &[Tensor], outputs: &[String]) -> blake3::Hash {
        let c = CorridorId::parse("UAE-SA").unwrap();
        inference_key(InferenceKeyParts {
            corridor: &c,
            model: "m",
            version: "1.0.0",
            artifact_hash: "h",
            inputs,
            outputs,
        })
    }

    #[test]
    fn order_of_inputs_and_outputs_does_not_matter() {
        let a = t("a", vec![2], TensorData::Fp32(vec![1.0, 2.0]));
        let b = t("b", vec![1], TensorData::Int64(vec![7]));
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            key(&[a.clone(), b.clone()], &o(&["x", "y"])),
            key(&[b, a], &o(&["y", "x"]))
        );
    }

    #[test]
    fn shape_and_datatype_are_part_of_the_key() {
        let flat = t("a", vec![4], TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
        let square = t("a", vec![2, 2], TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
        assert_ne!(key(&[flat], &[]), key(&[square], &[]));
        let f = t("a", vec![1], TensorData::Fp32(vec![1.0]));
        let i = t("a", vec![1], TensorData::Int32(vec![1.0f32.to_bits() as i32]));
        assert_eq!(f.data.to_le_bytes(), i.data.to_le_bytes());
        assert_ne!(key(&[f], &[]), key(&[i], &[]));
    }

    #[test]
    fn corridor_is_part_of_the_key() {
        let a = t("a", vec![1], TensorData::Fp32(vec![1.0]));
        let c1 = CorridorId::parse("UAE-SA").unwrap();
        let c2 = CorridorId::parse("US-EG").unwrap();
        let k = |c| {
            inference_key(InferenceKeyParts {
                corridor: c,
                model: "m",
                version: "1",
                artifact_hash: "h",
                inputs: std::slice::from_ref(&a),
                outputs: &[],
            })
        };
        assert_ne!(k(&c1), k(&c2));
    }
}
