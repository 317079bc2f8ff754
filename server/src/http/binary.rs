//! Decoding and encoding of V2 inference bodies over HTTP: JSON tensors, and Triton's binary
//! tensor extension (`Inference-Header-Content-Length`: a JSON header, then the raw
//! little-endian bytes of each input that gives `parameters.binary_data_size`, in input
//! order; outputs asked for with `binary_data` come back the same way).
//!
//! Every claimed size is checked against the bytes actually present and against the shape ×
//! datatype before anything is allocated for it.

use crate::http::error::parse_json;
use bytes::{BufMut, Bytes, BytesMut};
use invariant_core::json::parse_data_with_shape;
use invariant_core::tensor::{concrete_shape, element_count};
use invariant_core::{DataType, Tensor, TensorData};
use invariant_serving::{InferBody, InferResponse, ServeError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The header giving the length of the JSON part of a binary body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// JSON nested deeper than this is refused before it is parsed.
pub const MAX_JSON_DEPTH: usize = 100;

/// A V2 inference request as it arrives; tensor data is kept as raw JSON text so numbers are
/// decoded straight to the declared datatype.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// May be empty when `parameters.entities` fills the inputs from the feature store.
    #[serde(borrow, default)]
    inputs: Vec<RawInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// How the reply's outputs are to be encoded, decided by the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputEncoding {
    /// `parameters.binary_data_output`: every output binary unless it says otherwise.
    pub all_binary: bool,
    /// Per requested output: its own `binary_data`, when given.
    pub per_output: Vec<(String, bool)>,
}

impl OutputEncoding {
    /// Whether `name` goes out as binary.
    pub fn binary(&self, name: &str) -> bool {
        self.per_output
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.all_binary, |(_, b)| *b)
    }

    /// Whether any output could go out as binary.
    pub fn any_binary(&self) -> bool {
        self.all_binary || self.per_output.iter().any(|(_, b)| *b)
    }
}

/// The largest nesting depth of arrays and objects in `json` (strings skipped), stopping
/// early once `limit` is passed.
pub fn nesting_depth(json: &[u8], limit: usize) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
                if max > limit {
                    return max;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn flag(parameters: Option<&Map<String, Value>>, key: &str, field: &str) -> Result<Option<bool>, ServeError> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ServeError::invalid(format!(
            "{field}.parameters.{key}: must be true or false"
        ))),
    }
}

/// Refuses parameters of extensions this server does not implement, naming them.
fn unsupported(parameters: Option<&Map<String, Value>>, field: &str) -> Result<(), ServeError> {
    for key in [
        "shared_memory_region",
        "shared_memory_byte_size",
        "shared_memory_offset",
    ] {
        if parameters.is_some_and(|p| p.contains_key(key)) {
            return Err(ServeError::invalid(format!(
                "{field}.parameters.{key}: shared memory is not supported by this server"
            )));
        }
    }
    if parameters.is_some_and(|p| p.contains_key("classification")) {
        return Err(ServeError::invalid(format!(
            "{field}.parameters.classification: the classification extension is not supported by this server"
        )));
    }
    Ok(())
}

/// Decodes a body: JSON, or (with `header_length`) a JSON header followed by binary tensor data.
pub fn decode(body: &[u8], header_length: Option<&str>) -> Result<(InferBody, OutputEncoding), ServeError> {
    let (json, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(text) => {
            let n: usize = text.trim().parse().map_err(|_| {
                ServeError::invalid(format!(
                    "Inference-Header-Content-Length: '{text}' is not a number of bytes"
                ))
            })?;
            if n > body.len() {
                return Err(ServeError::invalid(format!(
                    "Inference-Header-Content-Length: {n} is larger than the body ({} bytes)",
                    body.len()
                )));
            }
            body.split_at(n)
        }
    };
    if nesting_depth(json, MAX_JSON_DEPTH) > MAX_JSON_DEPTH {
        return Err(ServeError::invalid(format!(
            "malformed JSON request: nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    let raw: RawRequest<'_> = parse_json(json)?;
    let mut inputs: Vec<Tensor> = Vec::with_capacity(raw.inputs.len().min(64));
    for (i, input) in raw.inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        let params = input.parameters.as_ref();
        unsupported(params, &field)?;
        let datatype = DataType::parse(&input.datatype, &format!("{field}.datatype"))?;
        let shape = concrete_shape(&input.shape, &field)?;
        let count = element_count(&shape, &field)?;
        let size = match params.and_then(|p| p.get("binary_data_size")) {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                ServeError::invalid(format!(
                    "{field}.parameters.binary_data_size: must be a non-negative number of bytes"
                ))
            })?),
        };
        let data = match (size, input.data) {
            (Some(_), Some(_)) => {
                return Err(ServeError::invalid(format!(
                    "{field}: give either data or parameters.binary_data_size, not both"
                )))
            }
            (Some(_), None) if header_length.is_none() => {
                return Err(ServeError::invalid(format!(
                    "{field}.parameters.binary_data_size: binary data needs the Inference-Header-Content-Length header"
                )))
            }
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(ServeError::invalid(format!(
                        "{field}.parameters.binary_data_size: {size} bytes claimed but only {} bytes of binary data remain",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                from_binary(mine, datatype, count, &shape, &field)?
            }
            (None, Some(raw)) => parse_data_with_shape(raw.get(), datatype, &shape, &format!("{field}.data"))?,
            (None, None) => {
                return Err(ServeError::invalid(format!(
                    "{field}.data: missing (send data, or parameters.binary_data_size with the Inference-Header-Content-Length header)"
                )))
            }
        };
        inputs.push(Tensor::new(input.name.clone(), shape, data, &field)?);
    }
    if !binary.is_empty() {
        return Err(ServeError::invalid(format!(
            "request body: {} bytes of binary data follow the inputs' binary_data_size",
            binary.len()
        )));
    }
    let parameters = raw.parameters.unwrap_or_default();
    unsupported(Some(&parameters), "request")?;
    let mut encoding = OutputEncoding {
        all_binary: flag(Some(&parameters), "binary_data_output", "request")?.unwrap_or(false),
        per_output: Vec::new(),
    };
    let mut outputs = Vec::new();
    for (i, o) in raw.outputs.unwrap_or_default().into_iter().enumerate() {
        let field = format!("outputs[{i}]");
        unsupported(o.parameters.as_ref(), &field)?;
        if let Some(b) = flag(o.parameters.as_ref(), "binary_data", &field)? {
            encoding.per_output.push((o.name.clone(), b));
        }
        outputs.push(o.name);
    }
    Ok((
        InferBody {
            id: raw.id,
            parameters,
            inputs,
            outputs,
        },
        encoding,
    ))
}

/// Elements of `datatype` from binary tensor bytes: fixed-size little-endian elements, or for
/// BYTES, elements each preceded by a 4-byte little-endian length.
fn from_binary(
    bytes: &[u8],
    datatype: DataType,
    count: usize,
    shape: &[usize],
    field: &str,
) -> Result<TensorData, ServeError> {
    let mismatch = |expected: String| {
        ServeError::invalid(format!(
            "{field}.parameters.binary_data_size: {} bytes do not match shape {shape:?} of {datatype} ({expected})",
            bytes.len()
        ))
    };
    if datatype == DataType::Bytes {
        return TensorData::bytes_from_wire(bytes, count).ok_or_else(|| {
            mismatch(format!(
                "{count} elements, each a 4-byte little-endian length and that many bytes"
            ))
        });
    }
    let width = datatype.size_bytes();
    let expected = count.checked_mul(width);
    if expected != Some(bytes.len()) {
        return Err(mismatch(match expected {
            Some(n) => format!("{n} bytes expected"),
            None => "the element count overflows".to_string(),
        }));
    }
    TensorData::from_le_bytes(datatype, bytes).ok_or_else(|| mismatch(format!("{width}-byte elements")))
}

#[derive(Serialize)]
struct ReplyParameters<'a> {
    corridor: &'a str,
    device: invariant_gpu::Device,
    /// `explicit` (the request named the version), `active` or `canary`.
    routing: &'static str,
    /// Whether the answer came from a cache.
    cached: bool,
    /// The inference cache key (blake3, hex).
    cache_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<&'a Value>,
    /// `true` on a degraded answer (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<bool>,
    /// Where a degraded answer came from: `cache` or `feature-defaults`.
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    /// Why it is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: DataType,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a TensorData>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct ReplyJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    parameters: ReplyParameters<'a>,
    outputs: Vec<OutputJson<'a>>,
}

/// An encoded reply: the body, and the JSON header's length when binary outputs follow it.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The body.
    pub body: Bytes,
    /// `Some(n)`: the first `n` bytes are the JSON header, binary output data follows.
    pub header_length: Option<usize>,
}

/// Encodes a response as V2 JSON, with the outputs `encoding` asks for as binary data after
/// the JSON header. `cached` overrides the response's own cache flag (a stored reply says
/// `true`). FP32 values are written by their shortest round-trip text, never widened to f64.
pub fn encode(r: &InferResponse, encoding: &OutputEncoding, cached: bool) -> Result<Encoded, ServeError> {
    let binary: Vec<Option<Vec<u8>>> = r
        .outputs
        .iter()
        .map(|t| encoding.binary(&t.name).then(|| t.data.to_le_bytes()))
        .collect();
    let reply = ReplyJson {
        model_name: &r.model,
        model_version: &r.version,
        id: r.id.as_deref(),
        parameters: ReplyParameters {
            corridor: r.corridor.as_str(),
            device: r.device,
            routing: r.routing.name(),
            cached,
            cache_key: &r.cache_key,
            features: r.features.as_ref(),
            degraded: r.degraded.as_ref().map(|_| true),
            source: r.degraded.as_ref().map(|d| d.source),
            degraded_reason: r.degraded.as_ref().map(|d| d.reason.as_str()),
        },
        outputs: r
            .outputs
            .iter()
            .zip(&binary)
            .map(|(t, b)| OutputJson {
                name: &t.name,
                datatype: t.datatype(),
                shape: &t.shape,
                parameters: b.as_ref().map(|b| BinaryParameters {
                    binary_data_size: b.len(),
                }),
                data: b.is_none().then_some(&t.data),
            })
            .collect(),
    };
    let json = serde_json::to_vec(&reply).map_err(|e| ServeError::internal(e.to_string()))?;
    if binary.iter().all(Option::is_none) {
        return Ok(Encoded {
            body: Bytes::from(json),
            header_length: None,
        });
    }
    let total = json.len() + binary.iter().flatten().map(Vec::len).sum::<usize>();
    let mut out = BytesMut::with_capacity(total);
    out.put_slice(&json);
    for b in binary.iter().flatten() {
        out.put_slice(b);
    }
    Ok(Encoded {
        body: out.freeze(),
        header_length: Some(json.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_and(json: &str, binary: &[u8]) -> (Vec<u8>, String) {
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(binary);
        (body, json.len().to_string())
    }

    #[test]
    fn binary_inputs_decode_to_the_same_tensor_as_json() {
        let values = [1.5f32, -0.1, 3.0, 7.25];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (body, n) = header_and(
            r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#,
            &bytes,
        );
        let (binary, _) = decode(&body, Some(&n)).unwrap();
        let (json, _) = decode(
            br#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1.5,-0.1,3.0,7.25]}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(binary.inputs, json.inputs);
    }

    #[test]
    fn claimed_sizes_are_checked_before_use() {
        let cases: [(&str, &[u8], Option<&str>, &str); 6] = [
            (
                r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":99999999999}}]}"#,
                &[0u8; 16],
                None,
                "only 16 bytes of binary data remain",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":12}}]}"#,
                &[0u8; 12],
                None,
                "do not match shape [1, 4] of FP32 (16 bytes expected)",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[4294967296,4294967296],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#,
                &[0u8; 16],
                None,
                "element count overflows",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,-4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#,
                &[0u8; 16],
                None,
                "non-negative",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#,
                &[0u8; 20],
                None,
                "4 bytes of binary data follow",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#,
                &[0u8; 16],
                Some("99999"),
                "larger than the body",
            ),
        ];
        for (json, binary, length, expected) in cases {
            let (body, n) = header_and(json, binary);
            let err = decode(&body, Some(length.unwrap_or(&n))).unwrap_err();
            assert!(err.to_string().contains(expected), "{json}: {err}");
            assert_eq!(err.kind(), invariant_serving::ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(nesting_depth(deep(50).as_bytes(), 100), 50);
        assert!(nesting_depth(deep(120).as_bytes(), 100) > 100);
        assert_eq!(
            nesting_depth(br#"{"a":"[[[[[[["}"#, 100),
            1,
            "brackets in strings do not count"
        );
    }
}
