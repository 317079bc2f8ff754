//! Errors raised while decoding or checking tensors.

use thiserror::Error;

/// An error in a tensor or identifier supplied by a caller. Every variant names the field
/// it concerns (for example `inputs[0].data[3]`), so it can be shown to the caller as is.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A datatype name that is not a V2 datatype this server supports.
    #[error("{field}: unsupported datatype '{name}' (supported: {supported})")]
    UnsupportedDatatype {
        /// The offending field.
        field: String,
        /// The name that was given.
        name: String,
        /// The supported names, comma separated.
        supported: String,
    },
    /// A tensor element that cannot be read as the declared datatype.
    #[error("{field}: {message}")]
    InvalidElement {
        /// The offending field, with the element index.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The tensor data is not an array (or nested arrays) of scalars.
    #[error("{field}: {message}")]
    MalformedData {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The number of elements does not match the product of the shape.
    #[error("{field}: shape {shape:?} holds {expected} elements but {actual} were given")]
    ElementCount {
        /// The offending field.
        field: String,
        /// The declared shape.
        shape: Vec<i64>,
        /// Elements the shape implies.
        expected: usize,
        /// Elements received.
        actual: usize,
    },
    /// A shape with a negative dimension or one too large to address.
    #[error("{field}: invalid shape {shape:?}: {message}")]
    InvalidShape {
        /// The offending field.
        field: String,
        /// The shape that was given.
        shape: Vec<i64>,
        /// What is wrong with it.
        message: String,
    },
    /// A corridor identifier that is not of the form `AAA-BB`.
    #[error("invalid corridor id '{0}': expected two 2-3 letter region codes joined by '-', e.g. UAE-SA")]
    InvalidCorridor(String),
}
