//! Typed tensors: a name, a V2 datatype, a shape and row-major data.

use crate::{CoreError, DataType};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

/// Row-major tensor elements, one vector variant per datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `BOOL`
    Bool(Vec<bool>),
    /// `UINT8`
    Uint8(Vec<u8>),
    /// `INT8`
    Int8(Vec<i8>),
    /// `INT16`
    Int16(Vec<i16>),
    /// `INT32`
    Int32(Vec<i32>),
    /// `INT64`
    Int64(Vec<i64>),
    /// `FP32`
    Fp32(Vec<f32>),
    /// `FP64`
    Fp64(Vec<f64>),
    /// `BYTES`
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the vector inside any [`TensorData`] variant, bound as `$v`.
macro_rules! for_each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    /// The datatype of the elements.
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        for_each_variant!(self, v => v.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the elements as little-endian bytes (BOOL as one byte, 0 or 1; each BYTES
    /// element as a 4-byte little-endian length and its bytes): the canonical encoding used
    /// by hashes and by the binary tensor wire format.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        out.reserve(self.len() * self.datatype().size_bytes());
        match self {
            TensorData::Bytes(v) => {
                for e in v {
                    out.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    out.extend_from_slice(e);
                }
            }
            TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            TensorData::Uint8(v) => out.extend_from_slice(v),
            TensorData::Int8(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::Int16(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::Int32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::Int64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::Fp32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            TensorData::Fp64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        }
    }

    /// Elements of `datatype` from their little-endian bytes (inverse of
    /// [`TensorData::to_le_bytes`]); `None` when the length is not a multiple of the element size.
    pub fn from_le_bytes(datatype: DataType, bytes: &[u8]) -> Option<TensorData> {
        if datatype == DataType::Bytes {
            return Self::bytes_from_wire(bytes, usize::MAX);
        }
        let width = datatype.size_bytes();
        if !bytes.len().is_multiple_of(width) {
            return None;
        }
        let chunks = bytes.chunks_exact(width);
        Some(match datatype {
            DataType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
            DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
            DataType::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
            DataType::Int16 => TensorData::Int16(chunks.map(|c| i16::from_le_bytes([c[0], c[1]])).collect()),
            DataType::Int32 => {
                TensorData::Int32(chunks.map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            DataType::Int64 => TensorData::Int64(
                chunks
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            DataType::Fp32 => TensorData::Fp32(chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            DataType::Fp64 => TensorData::Fp64(
                chunks
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            DataType::Bytes => return None,
        })
    }

    /// BYTES elements from their wire form (each a 4-byte little-endian length, then that many
    /// bytes), exactly `count` of them filling `bytes` (`usize::MAX`: as many as there are);
    /// `None` when a length runs past the end, or the count or the end do not match. Nothing is
    /// reserved in proportion to a claimed length before the bytes are seen to be there.
    pub fn bytes_from_wire(mut bytes: &[u8], count: usize) -> Option<TensorData> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if out.len() == count {
                return None;
            }
            let (len, rest) = bytes.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
            if len > rest.len() {
                return None;
            }
            let (element, rest) = rest.split_at(len);
            out.push(element.to_vec());
            bytes = rest;
        }
        (count == usize::MAX || out.len() == count).then_some(TensorData::Bytes(out))
    }

    /// The elements as little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_le_bytes(&mut out);
        out
    }

    /// Elements `start..start + len` as a new vector of the same datatype.
    pub fn slice(&self, start: usize, len: usize) -> TensorData {
        macro_rules! cut {
            ($($variant:ident),*) => {
                match self {
                    $(TensorData::$variant(v) => TensorData::$variant(v[start..start + len].to_vec()),)*
                }
            };
        }
        cut!(Bool, Uint8, Int8, Int16, Int32, Int64, Fp32, Fp64, Bytes)
    }

    /// Appends the elements of `other`; `false` (and nothing appended) when the datatypes differ.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        macro_rules! join {
            ($($variant:ident),*) => {
                match (self, other) {
                    $((TensorData::$variant(a), TensorData::$variant(b)) => { a.extend_from_slice(b); true })*
                    _ => false,
                }
            };
        }
        join!(Bool, Uint8, Int8, Int16, Int32, Int64, Fp32, Fp64, Bytes)
    }

    /// Each element's bits as an unsigned integer (its little-endian bytes, zero-extended):
    /// what golden vectors record and compare. A BYTES element, having no fixed width, is
    /// given as the first 8 bytes (little-endian) of the blake3 of its bytes.
    pub fn element_bits(&self) -> Vec<u64> {
        if let TensorData::Bytes(v) = self {
            return v
                .iter()
                .map(|e| {
                    let h = blake3::hash(e);
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&h.as_bytes()[..8]);
                    u64::from_le_bytes(b)
                })
                .collect();
        }
        let width = self.datatype().size_bytes();
        self.to_le_bytes()
            .chunks_exact(width)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..width].copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect()
    }

    /// Index of the first NaN or infinite element, if any (always `None` for integer types).
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            TensorData::Fp32(v) => v.iter().position(|x| !x.is_finite()),
            TensorData::Fp64(v) => v.iter().position(|x| !x.is_finite()),
            _ => None,
        }
    }
}

/// The V2 JSON spelling of a non-finite float: JSON has no number for it, so it travels as
/// one of the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (accepted on input too).
fn non_finite_name(nan: bool, negative: bool) -> &'static str {
    match (nan, negative) {
        (true, _) => "NaN",
        (false, true) => "-Infinity",
        (false, false) => "Infinity",
    }
}

/// Serialises as a flat JSON array in row-major order; floats as the shortest decimal that
/// parses back to the same bits.
impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        match self {
            TensorData::Fp32(v) => {
                for x in v {
                    if x.is_finite() {
                        seq.serialize_element(x)?;
                    } else {
                        seq.serialize_element(non_finite_name(x.is_nan(), *x < 0.0))?;
                    }
                }
            }
            TensorData::Fp64(v) => {
                for x in v {
                    if x.is_finite() {
                        seq.serialize_element(x)?;
                    } else {
                        seq.serialize_element(non_finite_name(x.is_nan(), *x < 0.0))?;
                    }
                }
            }
            TensorData::Bytes(v) => {
                for x in v {
                    seq.serialize_element(&String::from_utf8_lossy(x))?;
                }
            }
            other => for_each_variant!(other, v => for x in v { seq.serialize_element(x)?; }),
        }
        seq.end()
    }
}

/// A named tensor with a concrete shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Tensor name, as in the model signature.
    pub name: String,
    /// Concrete shape; the product equals `data.len()`.
    pub shape: Vec<usize>,
    /// Row-major elements.
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that the shape's element count matches the data.
    /// `field` names the tensor in errors (e.g. `inputs[0]`).
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: TensorData, field: &str) -> Result<Self, CoreError> {
        let expected = element_count(&shape, field)?;
        if expected != data.len() {
            return Err(CoreError::ElementCount {
                field: format!("{field}.data"),
                shape: shape.iter().map(|&d| d as i64).collect(),
                expected,
                actual: data.len(),
            });
        }
        Ok(Self {
            name: name.into(),
            shape,
            data,
        })
    }

    /// The datatype of the elements.
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    /// Elements per entry of the first dimension.
    fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Row `i` of the first (batch) dimension, as a tensor of batch 1.
    pub fn row(&self, i: usize) -> Option<Tensor> {
        let n = self.row_len();
        if i >= self.shape.first().copied().unwrap_or(0) {
            return None;
        }
        let mut shape = self.shape.clone();
        shape[0] = 1;
        Some(Tensor {
            name: self.name.clone(),
            shape,
            data: self.data.slice(i * n, n),
        })
    }

    /// Concatenates tensors of one name along the first dimension; `None` when the parts
    /// disagree in datatype or trailing shape, or there are none.
    pub fn concat_rows(parts: &[&Tensor]) -> Option<Tensor> {
        let first = parts.first()?;
        let mut data = first.data.clone();
        let mut rows = first.shape.first().copied()?;
        for p in &parts[1..] {
            if p.shape.get(1..) != first.shape.get(1..) || !data.extend_from(&p.data) {
                return None;
            }
            rows += p.shape.first().copied()?;
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Some(Tensor {
            name: first.name.clone(),
            shape,
            data,
        })
    }
}

/// Converts a V2 shape (signed) to a concrete one, rejecting negative dimensions.
pub fn concrete_shape(shape: &[i64], field: &str) -> Result<Vec<usize>, CoreError> {
    shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| CoreError::InvalidShape {
                field: format!("{field}.shape"),
                shape: shape.to_vec(),
                message: "dimensions must be non-negative".into(),
            })
        })
        .collect()
}

/// Product of the dimensions, rejecting overflow.
pub fn element_count(shape: &[usize], field: &str) -> Result<usize, CoreError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| CoreError::InvalidShape {
            field: format!("{field}.shape"),
            shape: shape.iter().map(|&d| d as i64).collect(),
            message: "element count overflows".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_bytes_are_little_endian() {
        assert_eq!(
            TensorData::Int32(vec![1, -1]).to_le_bytes(),
            vec![1, 0, 0, 0, 255, 255, 255, 255]
        );
        assert_eq!(TensorData::Bool(vec![true, false]).to_le_bytes(), vec![1, 0]);
        assert_eq!(TensorData::Fp32(vec![1.0]).to_le_bytes(), 1.0f32.to_le_bytes().to_vec());
    }

    #[test]
    fn element_count_checked() {
        let err = Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![0.0; 5]), "inputs[0]").unwrap_err();
        assert!(err.to_string().contains("inputs[0].data"), "{err}");
        assert!(Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![0.0; 6]), "inputs[0]").is_ok());
        assert!(concrete_shape(&[-1, 3], "inputs[0]").is_err());
    }

    #[test]
    fn rows_split_and_join() {
        let t = Tensor::new("x", vec![3, 2], TensorData::Int32(vec![1, 2, 3, 4, 5, 6]), "x").unwrap();
        let r1 = t.row(1).unwrap();
        assert_eq!(r1.shape, vec![1, 2]);
        assert_eq!(r1.data, TensorData::Int32(vec![3, 4]));
        assert!(t.row(3).is_none());
        let joined = Tensor::concat_rows(&[&t.row(2).unwrap(), &r1]).unwrap();
        assert_eq!(joined.shape, vec![2, 2]);
        assert_eq!(joined.data, TensorData::Int32(vec![5, 6, 3, 4]));
        let other = Tensor::new("x", vec![1, 2], TensorData::Fp32(vec![0.0, 1.0]), "x").unwrap();
        assert!(Tensor::concat_rows(&[&r1, &other]).is_none());
        assert_eq!(TensorData::Fp32(vec![1.0]).element_bits(), vec![0x3f80_0000]);
        assert_eq!(TensorData::Int64(vec![-1]).element_bits(), vec![u64::MAX]);
    }

    #[test]
    fn floats_serialise_shortest_and_non_finite_as_strings() {
        let j = serde_json::to_string(&TensorData::Fp32(vec![0.1, f32::NAN, f32::NEG_INFINITY, 1.0])).unwrap();
        assert_eq!(j, r#"[0.1,"NaN","-Infinity",1.0]"#);
        let j = serde_json::to_string(&TensorData::Int64(vec![1, -2])).unwrap();
        assert_eq!(j, "[1,-2]");
    }
}
