//! The one error type of the request path. Every transport maps it once: HTTP to a status
//! code and a V2 `{"error"}` body, gRPC to a `tonic::Code` and the same message.

use thiserror::Error;

/// Why a request (or an admin change) was not answered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ServeError {
    /// The request is malformed; the message names the field at fault.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such model, version, route or resource.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current state (e.g. a transition not allowed now).
    #[error("{0}")]
    Conflict(String),
    /// Too much work already queued: retry after `retry_after_s` seconds.
    #[error("{message}")]
    Overloaded {
        /// What is full.
        message: String,
        /// Seconds to wait before retrying.
        retry_after_s: u32,
    },
    /// The request's deadline passed before it was answered.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The model, corridor or a dependency cannot answer now.
    #[error("{0}")]
    Unavailable(String),
    /// A fault of the server.
    #[error("{0}")]
    Internal(String),
    /// No valid API key was presented.
    #[error("{0}")]
    Unauthenticated(String),
    /// The key may not do this (here).
    #[error("{0}")]
    PermissionDenied(String),
}

/// The kind of a [`ServeError`], without its message (for metrics and mappings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// See [`ServeError::InvalidArgument`].
    InvalidArgument,
    /// See [`ServeError::NotFound`].
    NotFound,
    /// See [`ServeError::Conflict`].
    Conflict,
    /// See [`ServeError::Overloaded`].
    Overloaded,
    /// See [`ServeError::DeadlineExceeded`].
    DeadlineExceeded,
    /// See [`ServeError::Unavailable`].
    Unavailable,
    /// See [`ServeError::Internal`].
    Internal,
    /// See [`ServeError::Unauthenticated`].
    Unauthenticated,
    /// See [`ServeError::PermissionDenied`].
    PermissionDenied,
}

impl ErrorKind {
    /// The HTTP status code of this kind: how every transport's metrics and audit records
    /// name the outcome (gRPC maps the same kinds to its own codes).
    pub fn code(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Overloaded => 429,
            ErrorKind::DeadlineExceeded => 504,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
        }
    }

    /// A stable lower-case name, e.g. `invalid_argument`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
        }
    }

    /// Whether the fault is the server's (counts against a canary), not the caller's.
    pub fn is_server_fault(self) -> bool {
        matches!(
            self,
            ErrorKind::DeadlineExceeded | ErrorKind::Unavailable | ErrorKind::Internal
        )
    }
}

impl ServeError {
    /// An [`ServeError::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// A [`ServeError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// A [`ServeError::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }

    /// A [`ServeError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// The deadline error of a request given `deadline_ms`.
    pub fn deadline(deadline_ms: u64) -> Self {
        Self::DeadlineExceeded(format!("deadline of {deadline_ms} ms exceeded"))
    }

    /// The kind, for mappings and metrics.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServeError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ServeError::NotFound(_) => ErrorKind::NotFound,
            ServeError::Conflict(_) => ErrorKind::Conflict,
            ServeError::Overloaded { .. } => ErrorKind::Overloaded,
            ServeError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            ServeError::Unavailable(_) => ErrorKind::Unavailable,
            ServeError::Internal(_) => ErrorKind::Internal,
            ServeError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            ServeError::PermissionDenied(_) => ErrorKind::PermissionDenied,
        }
    }

    /// The message (what `Display` prints).
    pub fn message(&self) -> &str {
        match self {
            ServeError::InvalidArgument(m)
            | ServeError::NotFound(m)
            | ServeError::Conflict(m)
            | ServeError::DeadlineExceeded(m)
            | ServeError::Unavailable(m)
            | ServeError::Internal(m)
            | ServeError::Unauthenticated(m)
            | ServeError::PermissionDenied(m) => m,
            ServeError::Overloaded { message, .. } => message,
        }
    }
}

impl From<invariant_core::CoreError> for ServeError {
    fn from(e: invariant_core::CoreError) -> Self {
        Self::InvalidArgument(e.to_string())
    }
}

impl From<invariant_engine::EngineError> for ServeError {
    fn from(e: invariant_engine::EngineError) -> Self {
        match e {
            invariant_engine::EngineError::InvalidInput { .. } => Self::InvalidArgument(e.to_string()),
            invariant_engine::EngineError::Load(_) => Self::Unavailable(e.to_string()),
            invariant_engine::EngineError::Runtime(_) => Self::Internal(e.to_string()),
        }
    }
}

impl From<invariant_featurestore::FeatureError> for ServeError {
    fn from(e: invariant_featurestore::FeatureError) -> Self {
        use invariant_featurestore::FeatureError;
        match e {
            FeatureError::Request(m) => Self::InvalidArgument(m),
            FeatureError::Definition(_) => Self::Internal(e.to_string()),
            FeatureError::Store(_) => Self::Unavailable(e.to_string()),
        }
    }
}
