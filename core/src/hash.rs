//! Canonical encoding of tensors and the inference input hash, and the length-prefixed hash
//! of a list of parts ([`Parts`]).
//!
//! The encoding is independent of how the tensors arrived (JSON spelling, key order, binary
//! or gRPC): tensors are sorted by name, and each is written as its name, datatype, shape and
//! raw little-endian bytes, every variable-length part prefixed by its length. Unlike
//! Triton's cache key, shape and datatype are part of it: `[2,2]` and `[4]` of the same bytes,
//! or the same bytes as INT32 and FP32, never share a key.

use crate::{CorridorId, Tensor};

/// Domain-separation tag of the inference key, bumped if the encoding ever changes.
const INFERENCE_KEY_DOMAIN: &[u8] = b"invariant/inference-key/v1";

/// blake3 over parts, each prefixed by its length (u64, little-endian), so no two different
/// lists of parts hash alike: the one way Invariant hashes a list of fields.
#[derive(Debug, Clone, Default)]
pub struct Parts(blake3::Hasher);

impl Parts {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one part.
    pub fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// The hash of the parts added.
    pub fn finish(&self) -> blake3::Hash {
        self.0.finalize()
    }
}

/// [`Parts`] over `parts`.
pub fn parts_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> blake3::Hash {
    let mut h = Parts::new();
    for p in parts {
        h.part(p);
    }
    h.finish()
}

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
    encode_list(&sorted)
}

/// Tensors encoded in the given order (count, then each tensor as [`encode_tensor`]); the
/// inverse is [`decode_list`]. Used to store computed outputs bit for bit.
pub fn encode_list(tensors: &[&Tensor]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    for t in tensors {
        encode_tensor(&mut out, t);
    }
    out
}

/// Decodes what [`encode_list`] wrote; `None` when the bytes are not such an encoding.
pub fn decode_list(mut bytes: &[u8]) -> Option<Vec<Tensor>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Some(head)
    }
    fn int(bytes: &mut &[u8]) -> Option<usize> {
        usize::try_from(u64::from_le_bytes(take(bytes, 8)?.try_into().ok()?)).ok()
    }
    fn chunk<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = int(bytes)?;
        take(bytes, n)
    }
    let count = int(&mut bytes)?;
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let name = String::from_utf8(chunk(&mut bytes)?.to_vec()).ok()?;
        let datatype = crate::DataType::parse(std::str::from_utf8(chunk(&mut bytes)?).ok()?, "").ok()?;
        let rank = int(&mut bytes)?;
        let shape = (0..rank).map(|_| int(&mut bytes)).collect::<Option<Vec<usize>>>()?;
        let data = crate::TensorData::from_le_bytes(datatype, chunk(&mut bytes)?)?;
        out.push(Tensor::new(name, shape, data, "").ok()?);
    }
    bytes.is_empty().then_some(out)
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
    #[test]
    fn parts_are_length_prefixed() {
        let split = |a: &[u8], b: &[u8]| super::parts_hash([a, b]);
        assert_ne!(split(b"ab", b"c"), split(b"a", b"bc"));
        let mut manual = blake3::Hasher::new();
        for p in [&b"ab"[..], b"c"] {
            manual.update(&(p.len() as u64).to_le_bytes());
            manual.update(p);
        }
        assert_eq!(split(b"ab", b"c"), manual.finalize());
        assert_eq!(super::Parts::new().part(b"ab").part(b"c").finish(), split(b"ab", b"c"));
    }

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
    fn lists_round_trip_bit_for_bit() {
        let a = t("b", vec![2], TensorData::Fp32(vec![f32::NAN, -0.0]));
        let b = t("a", vec![1, 1], TensorData::Int64(vec![i64::MIN]));
        let c = t("c", vec![2], TensorData::Bool(vec![true, false]));
        let bytes = encode_list(&[&a, &b, &c]);
        let back = decode_list(&bytes).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].name, "b", "order is kept");
        assert_eq!(back[0].data.element_bits(), a.data.element_bits());
        assert_eq!(back[1], b);
        assert_eq!(back[2], c);
        assert!(decode_list(&bytes[..bytes.len() - 1]).is_none());
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
