//! Shared types of Invariant.
//!
//! This crate holds what every other crate speaks: the Open Inference Protocol (KServe V2)
//! datatypes, typed tensors, the exact JSON decoding of tensor data (FP32 numbers are parsed
//! straight to `f32`, never through `f64`), the canonical byte encoding of tensors and the
//! input hash built on it, corridor identifiers, and the atomic, locked writes of small
//! state files. It knows nothing of HTTP or models.

pub mod corridor;
pub mod datatype;
pub mod durable;
pub mod error;
pub mod hash;
pub mod json;
pub mod secret;
pub mod tensor;

pub use corridor::CorridorId;
pub use datatype::DataType;
pub use error::CoreError;
pub use tensor::{Tensor, TensorData};
