//! The HTTP mapping of [`ServeError`], done once: a status code and a V2 `{"error": "..."}`
//! body (429 and 503 from an overload carry `Retry-After`).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use invariant_serving::{ErrorKind, ServeError};

/// An error answered to an HTTP caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Message, naming the field or resource at fault.
    pub message: String,
    /// Seconds for `Retry-After`, if any.
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

/// The HTTP status of an error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        let retry_after_s = match &e {
            ServeError::Overloaded { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        Self {
            status: status_of(e.kind()),
            message: e.message().to_string(),
            retry_after_s,
        }
    }
}

impl ApiError {
    /// The error in Feast's shape (`{"detail": "..."}`, which Feast's clients read), with the V2
    /// `error` key too.
    pub fn into_feast_response(self) -> Response {
        let body = serde_json::json!({ "detail": self.message, "error": self.message });
        self.respond(body)
    }

    fn respond(self, body: serde_json::Value) -> Response {
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"invariant\""),
            );
        }
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        self.respond(body)
    }
}

/// A 400 for a request body that does not deserialize: the field path and serde's message, or
/// "malformed JSON request" when the text is not JSON at all.
pub fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ServeError {
    let path = e.path().to_string();
    if path == "." || e.inner().is_syntax() || e.inner().is_eof() {
        ServeError::invalid(format!("malformed JSON request: {}", e.inner()))
    } else {
        ServeError::invalid(format!("{path}: {}", e.inner()))
    }
}

/// Deserializes a whole JSON body (trailing text is an error), naming the field at fault.
///
/// A body that deserializes is read once, without tracking the path; only a body that fails
/// is read again with the path tracked, for the message (the same error, found the same way).
pub fn parse_json<'de, T: serde::Deserialize<'de>>(body: &'de [u8]) -> Result<T, ServeError> {
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end()
        .map_err(|e| ServeError::invalid(format!("malformed JSON request: {e}")))?;
    Ok(value)
}

/// Path parameters, like [`axum::extract::Path`], whose rejection (e.g. `%ff`, which is not
/// UTF-8) is a V2 `{"error"}` body naming the parameter rather than plain text.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::new(
                rejection.status(),
                format!("path {}: {}", parts.uri.path(), rejection.body_text()),
            )),
        }
    }
}
