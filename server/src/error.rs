//! API errors: a status code and a V2 `{"error": "..."}` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answered to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Message, naming the field or resource at fault.
    pub message: String,
}

impl ApiError {
    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    /// 503 Service Unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }

    /// 500 Internal Server Error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    /// A V2 error body; 429 carries `Retry-After: 1`.
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// A 400 for a request body that does not deserialize: the field path and serde's message, or
/// "malformed JSON request" when the text is not JSON at all.
pub fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    if path == "." || e.inner().is_syntax() || e.inner().is_eof() {
        ApiError::bad_request(format!("malformed JSON request: {}", e.inner()))
    } else {
        ApiError::bad_request(format!("{path}: {}", e.inner()))
    }
}

/// Deserializes a whole JSON body (trailing text is an error), naming the field at fault.
pub fn parse_json<'de, T: serde::Deserialize<'de>>(body: &'de [u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("malformed JSON request: {e}")))?;
    Ok(value)
}

impl From<invariant_core::CoreError> for ApiError {
    fn from(e: invariant_core::CoreError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<invariant_engine::EngineError> for ApiError {
    fn from(e: invariant_engine::EngineError) -> Self {
        match e {
            invariant_engine::EngineError::InvalidInput { .. } => Self::bad_request(e.to_string()),
            invariant_engine::EngineError::Load(_) => Self::unavailable(e.to_string()),
            invariant_engine::EngineError::Runtime(_) => Self::internal(e.to_string()),
        }
    }
}
