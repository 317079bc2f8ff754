//! Feature-store reads and writes of the serving core (Feast-compatible shapes), in a
//! corridor's namespace, and feature enrichment: model inputs bound to a feature service
//! filled from the request corridor's store. See `docs/features.md`.

use crate::{InferenceService, ServeError};
use invariant_core::CorridorId;
use invariant_featurestore::{
    FeatureError, FeatureStore, GetOnlineRequest, GetOnlineResponse, PushOutcome, PushRequest,
};
use serde_json::Value;
use std::sync::Arc;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl InferenceService {
    /// The feature store, or 503 with why it is not available.
    pub fn feature_store(&self) -> Result<Arc<FeatureStore>, ServeError> {
        match &self.features {
            Ok(s) => Ok(s.clone()),
            Err(why) => Err(ServeError::unavailable(format!(
                "the feature store is not available: {why}"
            ))),
        }
    }

    /// Feast-shaped online read in `corridor` (see [`FeatureStore::get_online`]).
    pub async fn get_online_features(
        &self,
        corridor: &CorridorId,
        request: GetOnlineRequest,
    ) -> Result<GetOnlineResponse, ServeError> {
        self.config
            .limits
            .request
            .check_entities("entities", &request.entities)
            .map_err(ServeError::invalid)?;
        if let Some(g) = &self.governance {
            g.feature_read(corridor.as_str())
                .map_err(|r| crate::governance::refusal_error(corridor.as_str(), &r))?;
        }
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(self.config.pools.feature_timeout_ms);
        let reply = self.feature_read(corridor.as_str(), deadline, request).await??;
        observe_read(corridor.as_str(), &reply);
        Ok(reply)
    }

    /// Idempotent, ordered push of feature rows in `corridor` (see [`FeatureStore::push`]).
    /// Refused while the corridor is killed, frozen or isolated (degradation level 3 or more).
    /// The push is recorded in the corridor's audit chain (view, rows written and ignored, the
    /// caller) before it is acknowledged. A global view (shared by every corridor) is written
    /// only by `*` admin keys, and its pushes are in the `_server` chain.
    pub async fn push_features(
        &self,
        corridor: &CorridorId,
        request: PushRequest,
        caller: &invariant_auth::Principal,
    ) -> Result<PushOutcome, ServeError> {
        let actor = caller.id();
        let global = self.feature_store()?.is_global(&request.feature_view);
        if global {
            crate::auth::check(caller, crate::auth::Need::Everywhere(invariant_auth::Role::Admin)).map_err(|_| {
                ServeError::PermissionDenied(format!(
                    "feature_view: '{}' is global (shared by every corridor): only admin keys of every corridor write it",
                    request.feature_view
                ))
            })?;
        }
        let limit = self.config.limits.request.max_push_rows;
        if let Some((column, cells)) = request.df.iter().find(|(_, cells)| cells.len() > limit) {
            return Err(ServeError::invalid(format!(
                "df.{column}: {} rows exceed the limit of {limit} per push (limits.request.max_push_rows)",
                cells.len()
            )));
        }
        if let Some(g) = &self.governance {
            g.feature_write(corridor.as_str())
                .map_err(|r| crate::governance::refusal_error(corridor.as_str(), &r))?;
        }
        let view = request.feature_view.clone();
        let outcome = self.on_store(corridor, request, FeatureStore::push).await?;
        self.observe_push(corridor.as_str(), &outcome);
        let record = serde_json::json!({
            "actor": actor, "feature_view": view, "written": outcome.written, "ignored": outcome.ignored,
        });
        let audit = self.audit.clone();
        let chain = (!global).then(|| corridor.to_string());
        tokio::task::spawn_blocking(move || audit.record(chain.as_deref(), "feature_push", &record))
            .await
            .map_err(|e| ServeError::internal(format!("audit task failed: {e}")))?
            .map_err(|e| ServeError::unavailable(format!("the push was written but could not be audited: {e}")))?;
        Ok(outcome)
    }

    /// Runs `op` on the store within the corridor's feature bulkhead and the feature timeout
    /// (see [`InferenceService::feature_call`]).
    async fn on_store<Req, Out>(
        &self,
        corridor: &CorridorId,
        request: Req,
        op: fn(&FeatureStore, &str, &Req, i64) -> Result<Out, FeatureError>,
    ) -> Result<Out, ServeError>
    where
        Req: Send + 'static,
        Out: Send + 'static,
    {
        let store = self.feature_store()?;
        let c = corridor.clone();
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(self.config.pools.feature_timeout_ms);
        self.feature_call(corridor.as_str(), deadline, false, move || {
            op(&store, c.as_str(), &request, now_ms())
        })
        .await?
        .map_err(ServeError::from)
    }

    /// Reads features in `corridor` within its feature bulkhead, giving up at `deadline`:
    /// over the store's asynchronous client where the corridor has one (a single Redis: the
    /// wait holds no thread, and a read given up on is dropped), here for the embedded store
    /// (no network to wait for), else on the blocking pool ([`InferenceService::feature_call`]).
    pub(crate) async fn feature_read(
        &self,
        corridor: &str,
        deadline: tokio::time::Instant,
        request: GetOnlineRequest,
    ) -> Result<Result<GetOnlineResponse, FeatureError>, ServeError> {
        let store = self.feature_store()?;
        if store.async_reads(corridor) {
            let _slot = self.feature_slot(corridor)?;
            let read = store.get_online_async(corridor, &request, now_ms());
            return Ok(tokio::time::timeout_at(deadline, read)
                .await
                .unwrap_or_else(|_| Err(too_late(corridor))));
        }
        let inline = store.local_reads();
        let c = corridor.to_string();
        self.feature_call(corridor, deadline, inline, move || {
            store.get_online(&c, &request, now_ms())
        })
        .await
    }

    /// Runs `call` within `corridor`'s feature bulkhead (`pools.feature_concurrency` calls in
    /// flight; more are answered 429 at once): on the blocking pool, giving up at `deadline`
    /// (the store's error then says it did not answer in time), the bulkhead's place held
    /// until the call really ends, so a hung store holds at most that many threads. `inline`
    /// runs it here instead: for reads of the embedded store, which wait for no network and
    /// cost less than the hop to another thread.
    pub(crate) async fn feature_call<T: Send + 'static>(
        &self,
        corridor: &str,
        deadline: tokio::time::Instant,
        inline: bool,
        call: impl FnOnce() -> Result<T, FeatureError> + Send + 'static,
    ) -> Result<Result<T, FeatureError>, ServeError> {
        let slot = self.feature_slot(corridor)?;
        if inline {
            let _slot = slot;
            return Ok(call());
        }
        let task = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            call()
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(ServeError::internal(format!("feature store task failed: {e}"))),
            Err(_) => Ok(Err(too_late(corridor))),
        }
    }

    /// A place in `corridor`'s feature bulkhead, or 429 at once when it is full.
    fn feature_slot(&self, corridor: &str) -> Result<tokio::sync::OwnedSemaphorePermit, ServeError> {
        let slots = self
            .feature_slots
            .get(corridor)
            .ok_or_else(|| ServeError::internal(format!("corridor {corridor} has no feature bulkhead")))?;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("invariant_rejected_requests_total", "corridor" => corridor.to_string(), "reason" => "features_full")
                .increment(1);
            return Err(ServeError::Overloaded {
                retry_after_s: 1,
                message: format!(
                    "corridor {corridor}: {} feature-store calls are in flight (pools.feature_concurrency); retry later",
                    self.config.pools.feature_concurrency
                ),
            });
        };
        Ok(slot)
    }

    /// Freshness of writes: the newest event time stored, per view and corridor.
    fn observe_push(&self, corridor: &str, outcome: &PushOutcome) {
        let (view, Some(newest)) = &outcome.newest_written else {
            return;
        };
        let mut seen = self.feature_freshness.lock().unwrap_or_else(|p| p.into_inner());
        let slot = seen.entry((corridor.to_string(), view.clone())).or_insert(i64::MIN);
        if *newest > *slot {
            *slot = *newest;
            metrics::gauge!("invariant_feature_newest_event_timestamp_seconds", "view" => view.clone(), "corridor" => corridor.to_string())
                .set(*newest as f64 / 1000.0);
        }
    }
}

/// The error of a feature-store call given up on at its deadline.
fn too_late(corridor: &str) -> FeatureError {
    FeatureError::Store(format!(
        "the feature store of corridor {corridor} did not answer in time"
    ))
}

/// Freshness of reads: the age of the oldest value served as PRESENT, per view and corridor.
fn observe_read(corridor: &str, reply: &GetOnlineResponse) {
    // The handles, registered once per (view, corridor). The recorder is installed when the
    // service is built (`metrics_handle`), before any read, so no handle here predates it.
    static SERVED_AGE: std::sync::LazyLock<crate::telemetry::Family<metrics::Histogram>> =
        std::sync::LazyLock::new(|| {
            crate::telemetry::Family::new("invariant_feature_served_age_seconds", &["view", "corridor"])
        });
    let now = now_ms();
    for (view, oldest) in &reply.oldest_served {
        if let Some(oldest) = oldest {
            let age = (now - oldest).max(0) as f64 / 1000.0;
            SERVED_AGE.with(&[view, corridor], crate::telemetry::histogram, |h| h.record(age));
        }
    }
}

/// A reply with no values, every one flagged `UNAVAILABLE` (the input is then assembled from
/// the declared defaults).
fn defaults_reply(
    store: &FeatureStore,
    service: &str,
    entities: &std::collections::BTreeMap<String, Vec<Value>>,
) -> Result<GetOnlineResponse, ServeError> {
    use invariant_featurestore::{FeatureColumn, Metadata};
    let refs = store
        .defs
        .service(service)
        .ok_or_else(|| ServeError::unavailable(format!("feature service '{service}' is not defined")))?
        .features
        .clone();
    let resolved = store.defs.resolve(&refs).map_err(ServeError::from)?;
    let (join_key, keys) = entities
        .iter()
        .next()
        .ok_or_else(|| ServeError::invalid("parameters.entities: give one join key with its entity keys"))?;
    let n = keys.len();
    let mut names = vec![join_key.clone()];
    let mut results = vec![FeatureColumn {
        values: keys.clone(),
        statuses: vec!["PRESENT"; n],
        event_timestamps: vec![invariant_featurestore::Stamp::from(""); n],
    }];
    for r in resolved {
        let feature = &store.defs.views[r.view].features[r.feature];
        names.push(feature.name.clone());
        results.push(FeatureColumn {
            values: vec![Value::Null; n],
            statuses: vec!["UNAVAILABLE"; n],
            event_timestamps: vec![invariant_featurestore::Stamp::from(""); n],
        });
    }
    Ok(GetOnlineResponse {
        metadata: Metadata {
            feature_names: names,
            feature_view_metadata: Vec::new(),
        },
        results,
        oldest_served: Vec::new(),
    })
}

/// Entity keys sent as a tensor, for clients that send only tensors (plain tritonclient or
/// gRPC): an input named after the join key of a feature service bound to one of `manifest`'s
/// inputs that the request leaves out, BYTES (UTF-8 keys) or INT64, shape `[n]` or `[n, 1]`. It
/// is taken out of `inputs` and returned as `{"<join key>": [keys...]}`; `None` when the request
/// has no such tensor.
pub(crate) fn entities_from_tensor(
    service: &InferenceService,
    manifest: &invariant_registry::Manifest,
    inputs: &mut Vec<invariant_core::Tensor>,
) -> Result<Option<Value>, ServeError> {
    let declared = |name: &str| manifest.inputs.iter().any(|s| s.name == name);
    if inputs.iter().all(|t| declared(&t.name)) {
        return Ok(None);
    }
    // Without a feature store an undeclared input is just unknown (the signature check says so).
    let Ok(store) = service.feature_store() else {
        return Ok(None);
    };
    let keys: Vec<&str> = manifest
        .inputs
        .iter()
        .filter(|s| !inputs.iter().any(|t| t.name == s.name))
        .filter_map(|s| s.feature_service.as_deref())
        .filter_map(|svc| store.service_join_key(svc))
        .collect();
    let Some(pos) = inputs.iter().position(|t| keys.contains(&t.name.as_str())) else {
        return Ok(None);
    };
    let tensor = inputs.remove(pos);
    let field = format!("inputs.{}", tensor.name);
    let n = tensor.shape.first().copied().unwrap_or(0);
    if !(tensor.shape.len() == 1 || (tensor.shape.len() == 2 && tensor.shape[1] == 1)) {
        return Err(ServeError::invalid(format!(
            "{field}: entity keys have shape [n] or [n, 1], not {:?}",
            tensor.shape
        )));
    }
    let values: Vec<Value> = match &tensor.data {
        invariant_core::TensorData::Int64(v) => v.iter().map(|k| Value::from(*k)).collect(),
        invariant_core::TensorData::Bytes(v) => v
            .iter()
            .enumerate()
            .map(|(i, b)| {
                String::from_utf8(b.clone())
                    .map(Value::from)
                    .map_err(|_| ServeError::invalid(format!("{field}[{i}]: an entity key must be UTF-8")))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ServeError::invalid(format!(
                "{field}: entity keys are BYTES or INT64, not {}",
                tensor.datatype().name()
            )))
        }
    };
    debug_assert_eq!(values.len(), n);
    let limit = service.config.limits.request.max_entities;
    if values.len() > limit {
        return Err(ServeError::invalid(format!(
            "{field}: {} entity keys exceed the limit of {limit} (limits.request.max_entities)",
            values.len()
        )));
    }
    let mut map = serde_json::Map::new();
    map.insert(tensor.name.clone(), Value::Array(values));
    Ok(Some(Value::Object(map)))
}

/// Fills the inputs of `manifest` bound to a feature service and left out of the request from
/// the feature store of `corridor`, for the entities in `parameters.entities`. Returns the
/// features used (names, values, statuses per entity), or `None` when the request names no
/// entities.
pub(crate) async fn enrich(
    service: &InferenceService,
    corridor: &str,
    manifest: &invariant_registry::Manifest,
    entities: Option<&Value>,
    inputs: &mut Vec<invariant_core::Tensor>,
    degraded: &mut Option<crate::request::Degraded>,
    deadline: tokio::time::Instant,
) -> Result<Option<Value>, ServeError> {
    let core: &InferenceService = service;
    let deadline = deadline
        .min(tokio::time::Instant::now() + std::time::Duration::from_millis(service.config.pools.feature_timeout_ms));
    let Some(entities) = entities else {
        return Ok(None);
    };
    let entities: std::collections::BTreeMap<String, Vec<Value>> = serde_json::from_value(entities.clone())
        .map_err(|e| ServeError::invalid(format!("parameters.entities: {e}")))?;
    service
        .config
        .limits
        .request
        .check_entities("parameters.entities", &entities)
        .map_err(ServeError::invalid)?;
    let bound: Vec<&invariant_registry::TensorSpec> = manifest
        .inputs
        .iter()
        .filter(|s| s.feature_service.is_some() && !inputs.iter().any(|t| t.name == s.name))
        .collect();
    if bound.is_empty() {
        return Err(ServeError::invalid(format!(
            "parameters.entities: model '{}' has no input bound to a feature service that the request leaves out",
            manifest.name
        )));
    }
    let store = service.feature_store()?;
    let mut used = Vec::new();
    for spec in bound {
        let service = spec.feature_service.clone().unwrap_or_default();
        let request = GetOnlineRequest {
            features: None,
            feature_service: Some(service.clone()),
            entities: entities.clone(),
            full_feature_names: false,
            include_feature_view_version_metadata: false,
        };
        let read = core.feature_read(corridor, deadline, request).await?;
        let reply = match read {
            Err(FeatureError::Store(why))
                if manifest.inference.feature_fallback == Some(invariant_registry::FeatureFallback::Defaults) =>
            {
                tracing::warn!(model = %manifest.name, %why, "feature store unavailable: answering from defaults");
                *degraded = Some(crate::request::Degraded {
                    source: "feature-defaults",
                    reason: format!("feature store unavailable ({why}); features are the declared defaults"),
                });
                defaults_reply(&store, &service, &entities)?
            }
            other => other.map_err(ServeError::from)?,
        };
        observe_read(corridor, &reply);
        let width = reply.results.len().saturating_sub(1);
        if spec.shape.get(1).copied() != Some(width as i64) {
            return Err(ServeError::internal(format!(
                "input '{}' has {:?} columns but feature service '{service}' has {width} features",
                spec.name,
                spec.shape.get(1)
            )));
        }
        // Values the store did not have (NOT_FOUND, OUTSIDE_MAX_AGE, NULL_VALUE, INVALID,
        // UNAVAILABLE) are the features' declared defaults here, and their statuses say so.
        let defaults = store.service_defaults(&service).map_err(ServeError::from)?;
        let rows = reply.results[0].values.len();
        let mut data = Vec::with_capacity(rows * width);
        let mut values: Vec<Vec<Value>> = vec![Vec::with_capacity(rows); width];
        for r in 0..rows {
            for (c, column) in reply.results[1..].iter().enumerate() {
                let value = if column.statuses[r] == "PRESENT" {
                    column.values[r].clone()
                } else {
                    defaults.get(c).cloned().flatten().unwrap_or(Value::Null)
                };
                let number = value.as_f64().ok_or_else(|| {
                    ServeError::invalid(format!(
                        "parameters.entities: feature '{}' of entity {} is {} and has no default",
                        reply.metadata.feature_names[1 + c],
                        reply.results[0].values[r],
                        column.statuses[r]
                    ))
                })?;
                data.push(number as f32);
                values[c].push(value);
            }
        }
        let tensor = invariant_core::Tensor::new(
            spec.name.clone(),
            vec![rows, width],
            invariant_core::TensorData::Fp32(data),
            "parameters.entities",
        )?;
        inputs.push(tensor);
        used.push(serde_json::json!({
            "input": spec.name,
            "feature_service": service,
            "feature_names": reply.metadata.feature_names[1..],
            "values": values,
            "statuses": reply.results[1..].iter().map(|c| &c.statuses).collect::<Vec<_>>(),
        }));
    }
    Ok(Some(Value::Array(used)))
}
