//! The gRPC transport (tonic): `inference.GRPCInferenceService` from Triton's
//! `grpc_service.proto`, a superset of KServe's `grpc_predict_v2.proto` (same package, service
//! and messages), so `tritonclient.grpc` and KServe's `InferenceGRPCClient` both speak to it.
//!
//! Each method decodes the message, calls the serving core, and encodes the answer: inference
//! takes `raw_input_contents` or typed `contents` and answers `raw_output_contents`; corridor,
//! routing key and deadline come from request `parameters` or the metadata keys `x-corridor`,
//! `x-routing-key`, `x-deadline-ms` and the gRPC deadline, with the same rules as HTTP.
//! Errors map once ([`status_of`]). Shared memory, tracing and log settings are not offered
//! (UNIMPLEMENTED). The same listener serves `invariant.advisory.v1.AdvisoryService`
//! ([`advisory`]).

pub mod advisory;

/// The generated protocol types and service trait.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("inference");
}

use invariant_auth::Role;
use invariant_core::tensor::{concrete_shape, element_count};
use invariant_core::{DataType, Tensor, TensorData};
use invariant_serving::auth::Need;
use invariant_serving::{
    ErrorKind, InferBody, InferResponse, InferenceService, Metadata, ServeError, Target, Transport,
};
use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;
use proto::*;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The gRPC service over one serving core.
#[derive(Debug, Clone)]
pub struct Grpc {
    service: Arc<InferenceService>,
}

/// The tonic service to mount, with message limits from `server.max_body_bytes`.
pub fn service(service: Arc<InferenceService>) -> GrpcInferenceServiceServer<Grpc> {
    let limit = service.config.server.max_body_bytes;
    GrpcInferenceServiceServer::new(Grpc { service })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

/// The gRPC code of an error kind.
pub fn code_of(kind: ErrorKind) -> tonic::Code {
    match kind {
        ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::Conflict => tonic::Code::FailedPrecondition,
        ErrorKind::Overloaded => tonic::Code::ResourceExhausted,
        ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Internal => tonic::Code::Internal,
        ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
    }
}

/// The gRPC status of a core error: its code and the same message HTTP sends.
pub fn status_of(e: ServeError) -> Status {
    Status::new(code_of(e.kind()), e.message().to_string())
}

fn text(metadata: &tonic::metadata::MetadataMap, key: &str) -> Option<String> {
    metadata
        .get(key)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The `grpc-timeout` header (`<digits><H|M|S|m|u|n>`), as a duration.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let raw = text(metadata, "grpc-timeout")?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request facts of gRPC metadata (the same keys as HTTP headers).
fn metadata_of(metadata: &tonic::metadata::MetadataMap) -> Metadata {
    Metadata {
        corridor: text(metadata, "x-corridor"),
        routing_key: metadata.get("x-routing-key").map(|v| v.as_bytes().to_vec()),
        deadline_ms: text(metadata, "x-deadline-ms"),
        timeout: grpc_timeout(metadata),
        authorization: text(metadata, "authorization"),
        request_id: text(metadata, "x-request-id"),
    }
}

fn json_of(p: &InferParameter) -> Value {
    match &p.parameter_choice {
        None => Value::Null,
        Some(ParameterChoice::BoolParam(b)) => Value::Bool(*b),
        Some(ParameterChoice::Int64Param(n)) => Value::from(*n),
        Some(ParameterChoice::Uint64Param(n)) => Value::from(*n),
        Some(ParameterChoice::DoubleParam(x)) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        Some(ParameterChoice::StringParam(s)) => {
            // Structured parameters (e.g. `entities`) travel as JSON text in a string.
            if s.starts_with('{') || s.starts_with('[') {
                serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
            } else {
                Value::String(s.clone())
            }
        }
    }
}

fn parameters_of(p: &HashMap<String, InferParameter>) -> Map<String, Value> {
    p.iter().map(|(k, v)| (k.clone(), json_of(v))).collect()
}

fn string_param(s: impl Into<String>) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(s.into())),
    }
}

fn bool_param(b: bool) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::BoolParam(b)),
    }
}

/// Typed `contents` of an input, as elements of `datatype`, checking narrowing conversions.
fn from_contents(c: InferTensorContents, datatype: DataType, field: &str) -> Result<TensorData, ServeError> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        v: Vec<S>,
        field: &str,
        dt: DataType,
    ) -> Result<Vec<T>, ServeError> {
        v.into_iter()
            .enumerate()
            .map(|(i, x)| {
                T::try_from(x)
                    .map_err(|_| ServeError::invalid(format!("{field}.contents[{i}]: {x} is out of range for {dt}")))
            })
            .collect()
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Uint8 => TensorData::Uint8(narrow(c.uint_contents, field, datatype)?),
        DataType::Int8 => TensorData::Int8(narrow(c.int_contents, field, datatype)?),
        DataType::Int16 => TensorData::Int16(narrow(c.int_contents, field, datatype)?),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
    })
}

/// Decodes a `ModelInferRequest` body into the core's request.
pub fn decode(request: ModelInferRequest) -> Result<InferBody, ServeError> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(ServeError::invalid(format!(
            "raw_input_contents: {} entries for {} inputs (give one per input, or use contents)",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs: Vec<Tensor> = Vec::with_capacity(request.inputs.len().min(64));
    for (i, input) in request.inputs.into_iter().enumerate() {
        let field = format!("inputs[{i}]");
        if input.parameters.contains_key("shared_memory_region") {
            return Err(ServeError::invalid(format!(
                "{field}.parameters.shared_memory_region: shared memory is not supported by this server"
            )));
        }
        let datatype = DataType::parse(&input.datatype, &format!("{field}.datatype"))?;
        let shape = concrete_shape(&input.shape, &field)?;
        let count = element_count(&shape, &field)?;
        let data = match (raw.next(), input.contents) {
            (Some(_), Some(_)) => {
                return Err(ServeError::invalid(format!(
                    "{field}: give either contents or raw_input_contents, not both"
                )))
            }
            (Some(bytes), None) => {
                let wrong = || {
                    ServeError::invalid(format!(
                        "raw_input_contents[{i}]: {} bytes do not match shape {shape:?} of {datatype}",
                        bytes.len()
                    ))
                };
                if datatype == DataType::Bytes {
                    TensorData::bytes_from_wire(&bytes, count).ok_or_else(wrong)?
                } else {
                    if count.checked_mul(datatype.size_bytes()) != Some(bytes.len()) {
                        return Err(wrong());
                    }
                    TensorData::from_le_bytes(datatype, &bytes).ok_or_else(wrong)?
                }
            }
            (None, Some(contents)) => from_contents(contents, datatype, &field)?,
            (None, None) => {
                return Err(ServeError::invalid(format!(
                    "{field}.contents: missing (send contents or raw_input_contents)"
                )))
            }
        };
        inputs.push(Tensor::new(input.name, shape, data, &field)?);
    }
    Ok(InferBody {
        id: (!request.id.is_empty()).then_some(request.id),
        parameters: parameters_of(&request.parameters),
        inputs,
        outputs: request.outputs.into_iter().map(|o| o.name).collect(),
    })
}

/// Encodes the core's answer: every output as `raw_output_contents`.
fn encode(r: InferResponse) -> ModelInferResponse {
    let mut parameters = HashMap::from([
        ("corridor".to_string(), string_param(r.corridor.as_str())),
        ("device".to_string(), string_param(r.device.to_string())),
        ("routing".to_string(), string_param(r.routing.name())),
        ("cached".to_string(), bool_param(r.source.cached())),
        ("cache_key".to_string(), string_param(r.cache_key.clone())),
    ]);
    if let Some(d) = &r.degraded {
        parameters.insert("degraded".into(), bool_param(true));
        parameters.insert("source".into(), string_param(d.source));
        parameters.insert("degraded_reason".into(), string_param(d.reason.clone()));
    }
    if let Some(f) = &r.features {
        parameters.insert("features".into(), string_param(f.to_string()));
    }
    let outputs = r
        .outputs
        .iter()
        .map(|t| model_infer_response::InferOutputTensor {
            name: t.name.clone(),
            datatype: t.datatype().name().to_string(),
            shape: t.shape.iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        })
        .collect();
    ModelInferResponse {
        model_name: r.model,
        model_version: r.version,
        id: r.id.unwrap_or_default(),
        parameters,
        outputs,
        raw_output_contents: r.outputs.iter().map(|t| t.data.to_le_bytes()).collect(),
    }
}

fn version_of(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

fn duration(d: invariant_serving::stats::DurationStat) -> Option<StatisticDuration> {
    Some(StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

impl Grpc {
    /// The caller of `request`, if its key has what `need` asks.
    fn authorize<T>(&self, request: &Request<T>, need: Need<'_>) -> Result<invariant_auth::Principal, Status> {
        self.service
            .authorize(&metadata_of(request.metadata()), need)
            .map_err(status_of)
    }

    async fn infer(&self, request: Request<ModelInferRequest>) -> Result<ModelInferResponse, Status> {
        let metadata = metadata_of(request.metadata());
        let message = request.into_inner();
        let target = Target {
            model: message.model_name.clone(),
            version: version_of(&message.model_version).map(str::to_string),
            metadata,
            transport: Transport::Grpc,
            started: tokio::time::Instant::now(),
        };
        self.service
            .infer(target, move || decode(message))
            .await
            .map(encode)
            .map_err(status_of)
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.service.server_health().await.ready,
        }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        self.authorize(&request, Need::AnyKey)?;
        let r = request.into_inner();
        let readiness = self
            .service
            .readiness(&r.name, version_of(&r.version))
            .map_err(status_of)?;
        Ok(Response::new(ModelReadyResponse { ready: readiness.ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.authorize(&request, Need::AnyKey)?;
        Ok(Response::new(ServerMetadataResponse {
            name: "invariant".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::http::v2::EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.authorize(&request, Need::AnyKey)?;
        let r = request.into_inner();
        let meta = self
            .service
            .metadata_json(&r.name, version_of(&r.version))
            .map_err(status_of)?;
        let tensors = |key: &str| -> Vec<model_metadata_response::TensorMetadata> {
            meta[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| model_metadata_response::TensorMetadata {
                    name: t["name"].as_str().unwrap_or_default().to_string(),
                    datatype: t["datatype"].as_str().unwrap_or_default().to_string(),
                    shape: t["shape"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_i64)
                        .collect(),
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: meta["name"].as_str().unwrap_or_default().to_string(),
            versions: meta["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            platform: meta["platform"].as_str().unwrap_or_default().to_string(),
            inputs: tensors("inputs"),
            outputs: tensors("outputs"),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        self.infer(request).await.map(Response::new)
    }

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<Response<tonic::codegen::BoxStream<ModelStreamInferResponse>>, Status> {
        // Each message is authorised again by the core (its corridor may differ); a stream
        // without a valid key is refused at once.
        self.authorize(&request, Need::AnyKey)?;
        let metadata = request.metadata().clone();
        let mut incoming = request.into_inner();
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(message)) = incoming.message().await {
                let mut one = Request::new(message);
                *one.metadata_mut() = metadata.clone();
                let reply = match this.infer(one).await {
                    Ok(r) => ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(r),
                    },
                    Err(status) => ModelStreamInferResponse {
                        error_message: status.message().to_string(),
                        infer_response: None,
                    },
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        self.authorize(&request, Need::AnyKey)?;
        let r = request.into_inner();
        let c = self
            .service
            .model_config(&r.name, version_of(&r.version))
            .map_err(status_of)?;
        let data_type = |name: &str| DataType_::from_str_name(name).unwrap_or(DataType_::TypeInvalid) as i32;
        let config = ModelConfig {
            name: c.name,
            platform: c.platform,
            backend: c.backend,
            max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
            input: c
                .input
                .iter()
                .map(|t| ModelInput {
                    name: t.name.clone(),
                    data_type: data_type(&t.data_type),
                    dims: t.dims.clone(),
                    ..Default::default()
                })
                .collect(),
            output: c
                .output
                .iter()
                .map(|t| ModelOutput {
                    name: t.name.clone(),
                    data_type: data_type(&t.data_type),
                    dims: t.dims.clone(),
                    ..Default::default()
                })
                .collect(),
            instance_group: vec![ModelInstanceGroup {
                name: "cpu".into(),
                kind: model_instance_group::Kind::Cpu as i32,
                count: i32::try_from(c.instance_count).unwrap_or(i32::MAX),
                ..Default::default()
            }],
            response_cache: Some(ModelResponseCache {
                enable: c.response_cache,
            }),
            scheduling_choice: c.dynamic_batching.then(|| {
                model_config::SchedulingChoice::DynamicBatching(ModelDynamicBatching {
                    max_queue_delay_microseconds: c.max_queue_delay_microseconds,
                    ..Default::default()
                })
            }),
            ..Default::default()
        };
        Ok(Response::new(ModelConfigResponse { config: Some(config) }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        self.authorize(&request, Need::AnyKey)?;
        let r = request.into_inner();
        let name = (!r.name.is_empty()).then_some(r.name.as_str());
        let stats = self
            .service
            .statistics(name, version_of(&r.version))
            .map_err(status_of)?;
        let model_stats = stats
            .into_iter()
            .map(|s| ModelStatistics {
                name: s.name,
                version: s.version,
                last_inference: s.last_inference,
                inference_count: s.inference_count,
                execution_count: s.execution_count,
                inference_stats: Some(InferStatistics {
                    success: duration(s.inference_stats.success),
                    fail: duration(s.inference_stats.fail),
                    queue: duration(s.inference_stats.queue),
                    compute_input: duration(s.inference_stats.compute_input),
                    compute_infer: duration(s.inference_stats.compute_infer),
                    compute_output: duration(s.inference_stats.compute_output),
                    cache_hit: duration(s.inference_stats.cache_hit),
                    cache_miss: duration(s.inference_stats.cache_miss),
                }),
                batch_stats: s
                    .batch_stats
                    .into_iter()
                    .map(|b| InferBatchStatistics {
                        batch_size: b.batch_size,
                        compute_input: duration(b.compute_input),
                        compute_infer: duration(b.compute_infer),
                        compute_output: duration(b.compute_output),
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        self.authorize(&request, Need::Everywhere(Role::Admin))?;
        let ready_only = request.into_inner().ready;
        let models = self
            .service
            .repository_index()
            .into_iter()
            .filter(|row| !ready_only || row.state == "READY")
            .map(|row| repository_index_response::ModelIndex {
                name: row.name,
                version: row.version,
                state: row.state.to_string(),
                reason: row.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let caller = self.authorize(&request, Need::Everywhere(Role::Admin))?;
        let r = request.into_inner();
        if !r.parameters.is_empty() {
            return Err(Status::invalid_argument(
                "parameters: loading with overrides (config, files) is not supported; the model is read from the repository",
            ));
        }
        let report = self
            .service
            .control()
            .reload(&r.model_name, caller.id())
            .await
            .map_err(status_of)?;
        match report.failure(&r.model_name) {
            None => Ok(Response::new(RepositoryModelLoadResponse {})),
            Some(why) => Err(Status::invalid_argument(why)),
        }
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let caller = self.authorize(&request, Need::Everywhere(Role::Admin))?;
        let r = request.into_inner();
        self.service
            .control()
            .unload_model(&r.model_name, caller.id())
            .await
            .map_err(status_of)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

/// The generated `DataType` enum of the model configuration.
use proto::DataType as DataType_;
