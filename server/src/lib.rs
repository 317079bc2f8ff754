//! The Invariant server: wires the model repository, the engines and the device layer to the
//! Open Inference Protocol (KServe V2) HTTP API. The `invariant` binary (`main.rs`) is its
//! command-line front end.

pub mod config;
pub mod error;
pub mod models;
pub mod v2;

use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use config::Config;
use error::ApiError;
use invariant_engine::EngineOptions;
use invariant_gpu::DeviceLayer;
use models::ModelTable;
use std::sync::Arc;
use thiserror::Error;

/// What every request handler shares.
#[derive(Debug)]
pub struct Shared {
    /// Effective configuration.
    pub config: Config,
    /// Loaded and refused model versions.
    pub models: ModelTable,
}

/// Handler state.
pub type AppState = Arc<Shared>;

/// Start-up failures.
#[derive(Debug, Error)]
pub enum StartError {
    /// The repository directory cannot be read.
    #[error(transparent)]
    Repository(#[from] invariant_registry::RegistryError),
}

/// Loads ONNX Runtime (when found), then every model version of the configured repository.
/// Versions that fail are kept with their reason; only an unreadable repository is an error.
pub fn build_state(config: Config) -> Result<AppState, StartError> {
    let onnx_unavailable = match config.onnxruntime_path() {
        None => Some(
            "ONNX Runtime library not found: run scripts/setup.sh, or set onnxruntime_lib in invariant.toml \
             (INVARIANT_ONNXRUNTIME_LIB) or ORT_DYLIB_PATH"
                .to_string(),
        ),
        Some(path) => match invariant_engine::onnx::init_runtime(&path) {
            Ok(rt) => {
                tracing::info!(path = %path.display(), version = rt.version(), "ONNX Runtime loaded");
                None
            }
            Err(e) => Some(e.to_string()),
        },
    };
    if let Some(why) = &onnx_unavailable {
        tracing::warn!("{why}; ONNX model versions will not load");
    }
    let options = EngineOptions {
        instances: config.engine_instances,
    };
    let models = ModelTable::load(
        &config.model_repository,
        &DeviceLayer::discover(),
        &options,
        onnx_unavailable.as_deref(),
    )?;
    Ok(Arc::new(Shared { config, models }))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "internal error while handling the request".into(),
    }
    .into_response()
}

/// The HTTP API with its body limit, JSON 404s and a last-resort panic guard.
pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    v2::routes()
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}
