//! Open Inference Protocol (V2) datatypes.

use crate::CoreError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A V2 tensor datatype supported by Invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataType {
    /// `BOOL`: one byte per element, 0 or 1.
    Bool,
    /// `UINT8`
    Uint8,
    /// `INT8`
    Int8,
    /// `INT16`
    Int16,
    /// `INT32`
    Int32,
    /// `INT64`
    Int64,
    /// `FP32`: IEEE-754 binary32.
    Fp32,
    /// `FP64`: IEEE-754 binary64.
    Fp64,
    /// `BYTES`: variable-length byte strings (in binary form, each element is a 4-byte
    /// little-endian length followed by its bytes; in JSON, a string).
    Bytes,
}

impl DataType {
    /// Every supported datatype, in a fixed order.
    pub const ALL: [DataType; 9] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The V2 name, e.g. `FP32`.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element in the canonical (little-endian) encoding; 0 for BYTES, whose
    /// elements vary in length.
    pub fn size_bytes(self) -> usize {
        match self {
            DataType::Bytes => 0,
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Int16 => 2,
            DataType::Int32 | DataType::Fp32 => 4,
            DataType::Int64 | DataType::Fp64 => 8,
        }
    }

    /// True for FP32 and FP64.
    pub fn is_float(self) -> bool {
        matches!(self, DataType::Fp32 | DataType::Fp64)
    }

    /// Parses a V2 name; `field` names where it came from, for the error.
    pub fn parse(name: &str, field: &str) -> Result<Self, CoreError> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| CoreError::UnsupportedDatatype {
                field: field.to_string(),
                name: name.to_string(),
                supported: Self::ALL.map(|d| d.name()).join(", "),
            })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for DataType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for DataType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s, "datatype").map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.name(), "x").unwrap(), d);
        }
        let err = DataType::parse("FP16", "inputs[0].datatype").unwrap_err();
        assert!(err.to_string().contains("inputs[0].datatype"));
        assert!(err.to_string().contains("FP16"));
    }
}
