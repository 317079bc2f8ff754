//! The HTTP API as an OpenAPI 3.1 document, generated from the handlers' annotations and the
//! response types (utoipa), served at `GET /openapi.json` (no key needed: it describes, it
//! reveals nothing of any corridor). The types below document bodies the handlers build or
//! decode by hand (the V2 inference request is decoded by a streaming parser, not serde).

use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// Every error: a V2 error body whose message names the field or resource at fault.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// The errors any endpoint may answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// A malformed request; the message names the field.
    #[response(status = 400, description = "malformed request (the message names the field)")]
    BadRequest(ErrorBody),
    /// No valid key.
    #[response(status = 401, description = "missing, malformed, unknown or revoked API key")]
    Unauthenticated(ErrorBody),
    /// The key may not do this, or not in this corridor.
    #[response(
        status = 403,
        description = "the key lacks the role, or the corridor is outside its scope"
    )]
    Forbidden(ErrorBody),
    /// No such model, version, corridor or route.
    #[response(status = 404, description = "unknown model, version or route")]
    NotFound(ErrorBody),
    /// Method not allowed on this path.
    #[response(status = 405, description = "method not allowed")]
    MethodNotAllowed(ErrorBody),
    /// The request was not completed in time.
    #[response(
        status = 408,
        description = "request not completed within server.http_request_timeout_ms"
    )]
    RequestTimeout(ErrorBody),
    /// Conflicts with the current state.
    #[response(
        status = 409,
        description = "conflicts with the current state (transition, revision)"
    )]
    Conflict(ErrorBody),
    /// Body too large.
    #[response(status = 413, description = "body larger than server.max_body_bytes")]
    TooLarge(ErrorBody),
    /// Unsupported content encoding.
    #[response(status = 415, description = "Content-Encoding other than gzip, deflate, identity")]
    UnsupportedMediaType(ErrorBody),
    /// Over a rate limit or the corridor's queue (`Retry-After`).
    #[response(status = 429, description = "rate limit or full corridor queue (Retry-After)")]
    TooManyRequests(ErrorBody),
    /// A fault of the server.
    #[response(status = 500, description = "internal error")]
    Internal(ErrorBody),
    /// A refused version, governance, or a missing dependency.
    #[response(
        status = 503,
        description = "refused version, kill switch, freeze, breaker, degradation, or a dependency down"
    )]
    Unavailable(ErrorBody),
    /// The request's deadline passed.
    #[response(status = 504, description = "deadline passed")]
    DeadlineExceeded(ErrorBody),
}

/// `GET /v2/health/live`.
#[derive(Serialize, ToSchema)]
pub struct Live {
    /// Always true while the process answers.
    pub live: bool,
}

/// `GET /v2`.
#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    /// `invariant`.
    pub name: String,
    /// The server's version.
    pub version: String,
    /// Protocol extensions implemented.
    pub extensions: Vec<String>,
}

/// A tensor of model metadata.
#[derive(Serialize, ToSchema)]
pub struct TensorMetadata {
    /// Name.
    pub name: String,
    /// V2 datatype.
    pub datatype: String,
    /// Shape; -1 for a variable dimension.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{model}[/versions/{version}]` (more fields: portability, routing, failed
/// versions, instances).
#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    /// Model.
    pub name: String,
    /// Versions that serve.
    pub versions: Vec<String>,
    /// Runtime platform.
    pub platform: String,
    /// Inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// Model readiness.
#[derive(Serialize, ToSchema)]
pub struct ModelReady {
    /// Model.
    pub name: String,
    /// The version asked for, or the one routing picks.
    pub version: Option<String>,
    /// Whether it serves.
    pub ready: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A tensor of an inference request (an input) or answer (an output).
#[derive(Serialize, ToSchema)]
pub struct Tensor {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// V2 datatype (BOOL, UINT8, INT8, INT16, INT32, INT64, FP32, FP64, BYTES).
    pub datatype: String,
    /// `binary_data_size` with the binary extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Row-major data: flat (answers) or flat or nested as the shape (requests); absent when
    /// sent as binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A requested output.
#[derive(Serialize, ToSchema)]
pub struct RequestOutput {
    /// Output name.
    pub name: String,
    /// `binary_data` with the binary extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// `POST …/infer` body (JSON; with `Inference-Header-Content-Length`, this JSON followed by
/// the binary tensors).
#[derive(Serialize, ToSchema)]
pub struct InferenceRequest {
    /// Request id, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `corridor`, `routing_key`, `entities`, `return_features`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Input tensors.
    pub inputs: Vec<Tensor>,
    /// Outputs to return (default: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// `POST …/infer` answer.
#[derive(Serialize, ToSchema)]
pub struct InferenceResponse {
    /// Model.
    pub model_name: String,
    /// The version that answered.
    pub model_version: String,
    /// The request's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `corridor`, `device`, `routing`, `cached`, `cache_key`, `degraded`, `features`.
    pub parameters: Value,
    /// Output tensors.
    pub outputs: Vec<Tensor>,
}

/// `GET …/stats`.
#[derive(Serialize, ToSchema)]
pub struct Statistics {
    /// Per version.
    pub model_stats: Vec<invariant_serving::views::VersionStatistics>,
}

/// A JSON object (admin views and changes, feature requests and answers: see the docs).
pub struct Object;

impl utoipa::PartialSchema for Object {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Object)
            .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl ToSchema for Object {}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("inv_<id>_<secret>")
                    .description(Some("An API key from `invariant keys create` (docs/security.md)."))
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Invariant",
        description = "Deterministic inference over the Open Inference Protocol (KServe V2) with Triton's extensions, the admin API, governance and the feature store. Every endpoint but the health checks and this document needs an API key (docs/security.md)."
    ),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
    paths(
        crate::http::v2::server_metadata,
        crate::http::v2::live,
        crate::http::v2::ready,
        crate::http::v2::all_stats,
        crate::http::v2::model_metadata,
        crate::http::v2::version_metadata,
        crate::http::v2::model_ready,
        crate::http::v2::version_ready,
        crate::http::v2::model_config,
        crate::http::v2::version_config,
        crate::http::v2::model_stats,
        crate::http::v2::version_stats,
        crate::http::v2::infer_latest,
        crate::http::v2::infer_version,
        crate::http::repository::index,
        crate::http::repository::load,
        crate::http::repository::unload,
        crate::http::admin::metrics,
        crate::http::admin::list,
        crate::http::admin::show,
        crate::http::admin::load_model,
        crate::http::admin::act,
        crate::http::governance::show,
        crate::http::governance::change,
        crate::http::governance::corridors,
        crate::http::governance::corridor,
        crate::http::governance::flags,
        crate::http::features::get_online,
        crate::http::features::push,
        crate::http::features::feast_get_online,
        crate::http::features::feast_push,
        crate::http::features::feast_write,
        crate::http::features::feast_get_online_in,
        crate::http::features::feast_push_in,
        crate::http::features::feast_write_in,
        crate::http::features::feast_health,
        crate::http::observe::health,
        crate::http::observe::corridor_audit,
        crate::http::observe::server_audit,
        crate::http::review::list,
        crate::http::review::submit,
        crate::http::review::show,
        crate::http::review::act,
        crate::http::review::summary,
        crate::http::advisory::list,
        crate::http::advisory::advise,
        crate::http::advisory::reload,
        crate::http::dashboard::data,
        crate::http::admin::act_pipeline,
        document
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

/// The OpenAPI document (JSON).
#[utoipa::path(get, path = "/openapi.json", security(()), tag = "meta",
    responses((status = 200, description = "this document", body = Object), Errors))]
pub async fn document() -> axum::response::Response {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = TEXT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    });
    crate::http::json_reply(bytes::Bytes::from_static(text.as_bytes())).into_response()
}
