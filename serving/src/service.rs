//! [`InferenceService::infer`]: the request path every transport calls, and
//! [`InferenceService::stored_reply`] / [`InferenceService::store_reply`]: a transport's
//! reply cache, admitted and observed by the same guards.

use crate::guards::{Admit, Outcome, RequestContext};
use crate::models::{Lookup, ServingVersion};
use crate::pool::RunTimings;
use crate::request::{InferBody, InferResponse, Metadata, Routing, Source, Target, Transport};
use crate::{CorridorRuntime, InferenceService, ServeError, Snapshot};
use bytes::Bytes;
use invariant_core::{CorridorId, Tensor};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The error of a failed lookup of `model` (`version`).
pub fn lookup_error(model: &str, version: Option<&str>, lookup: Lookup) -> ServeError {
    match (lookup, version) {
        (Lookup::UnknownModel, _) => ServeError::not_found(format!("unknown model '{model}'")),
        (Lookup::UnknownVersion, Some(v)) => ServeError::not_found(format!("model '{model}' has no version '{v}'")),
        (Lookup::UnknownVersion, None) => ServeError::not_found(format!("unknown model '{model}'")),
        (Lookup::Failed(reason), Some(v)) => {
            ServeError::unavailable(format!("model '{model}' version '{v}' failed to load: {reason}"))
        }
        (Lookup::Failed(reason), None) => ServeError::unavailable(reason),
    }
}

/// What the pipeline learns of a request as it goes (the owned side of a [`RequestContext`]).
struct Progress {
    model_known: bool,
    version: Option<String>,
    routing: Option<Routing>,
    corridor: Option<CorridorId>,
    request_id: Option<String>,
    run: Option<RunTimings>,
    rows: usize,
    admitted_early: bool,
    caller_deadline: bool,
    fallback: invariant_registry::Fallback,
    /// A guard refused it.
    refused: bool,
    /// The authenticated caller.
    caller: Option<invariant_auth::Principal>,
    /// The body's `id`.
    body_id: Option<String>,
    /// Time spent fetching features.
    features: Option<Duration>,
    /// The inputs its audit record keeps, when the model retains them.
    retained: Option<crate::audit::Retained>,
}

impl Progress {
    fn context<'a>(&'a self, target: &'a Target) -> RequestContext<'a> {
        RequestContext {
            transport: target.transport,
            started: target.started,
            model: &target.model,
            model_known: self.model_known,
            version: self.version.as_deref(),
            routing: self.routing,
            corridor: self.corridor.as_ref().map(CorridorId::as_str),
            request_id: self.request_id.as_deref(),
            body_id: self.body_id.as_deref(),
            caller: self.caller.as_ref(),
            admitted_early: self.admitted_early,
            caller_deadline: self.caller_deadline,
            fallback: self.fallback,
        }
    }
}

/// What a stored reply remembers of the answer it repeats, so a hit is admitted and observed
/// as that answer.
#[derive(Debug)]
struct StoredMeta {
    model: String,
    version: String,
    routing: Routing,
    /// The inference key (hex) and output hash of the answer, for its audit record.
    key: String,
    output_hash: String,
    /// See [`StoredReply::header_length`].
    header_length: Option<usize>,
}

/// A reply a transport found for an exact repeat of a request.
#[derive(Debug, Clone)]
pub struct StoredReply {
    /// The stored bytes, as the transport encoded them.
    pub bytes: Bytes,
    /// Where the encoding splits the reply into a JSON header and raw tensors (Triton's binary
    /// tensor extension): the header's length, as the transport kept it.
    pub header_length: Option<usize>,
}

impl InferenceService {
    /// The corridor of a request: `metadata` (header) or `parameters.corridor` (they must
    /// agree when both are given), else the configured default; it must be declared.
    pub fn corridor_of(&self, named: Option<&str>, parameters: &Map<String, Value>) -> Result<CorridorId, ServeError> {
        let param = match parameters.get("corridor") {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                return Err(ServeError::invalid(
                    "parameters.corridor: must be a string such as \"UAE-SA\"",
                ))
            }
            None => None,
        };
        let named = match (named, param) {
            (Some(h), Some(p)) if !h.eq_ignore_ascii_case(p) => {
                return Err(ServeError::invalid(format!(
                    "x-corridor '{h}' and parameters.corridor '{p}' name different corridors"
                )))
            }
            (Some(h), _) => Some(h),
            (None, p) => p,
        };
        let Some(named) = named else {
            return self.config.server.default_corridor.clone().ok_or_else(|| {
                ServeError::invalid(
                    "no corridor: send the x-corridor header (gRPC metadata) or parameters.corridor (no default is configured)",
                )
            });
        };
        let id = CorridorId::parse(named).map_err(|e| ServeError::invalid(format!("corridor: {e}")))?;
        match self.config.corridor(id.as_str()) {
            Some(c) => Ok(c.id.clone()),
            None => {
                let declared: Vec<&str> = self.config.corridors.iter().map(|c| c.id.as_str()).collect();
                Err(ServeError::invalid(format!(
                    "unknown corridor '{id}' (declared: {})",
                    declared.join(", ")
                )))
            }
        }
    }

    /// The request's deadline: `x-deadline-ms` (a positive number of milliseconds), else the
    /// transport's own timeout, else `pools.request_timeout_ms`; the earliest of those given.
    pub fn deadline_of(&self, metadata: &Metadata) -> Result<Duration, ServeError> {
        let header = match &metadata.deadline_ms {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&ms| ms > 0)
                    .map(Duration::from_millis)
                    .ok_or_else(|| ServeError::invalid("x-deadline-ms: must be a positive number of milliseconds"))?,
            ),
        };
        Ok(match (header, metadata.timeout) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => Duration::from_millis(self.config.pools.request_timeout_ms),
        })
    }

    /// Serves one inference request. `decode` turns the transport's body into tensors; it runs
    /// after the named model and version are looked up (so an unknown one is 404 whatever the
    /// body), and its errors are answered and observed like every other.
    pub async fn infer(
        &self,
        target: Target,
        decode: impl FnOnce() -> Result<InferBody, ServeError>,
    ) -> Result<InferResponse, ServeError> {
        let snapshot = self.snapshot();
        let mut progress = Progress {
            model_known: false,
            version: None,
            routing: None,
            corridor: None,
            request_id: target.metadata.request_id.clone(),
            body_id: None,
            features: None,
            retained: None,
            run: None,
            rows: 0,
            admitted_early: false,
            caller_deadline: false,
            fallback: invariant_registry::Fallback::Refuse,
            refused: false,
            caller: None,
        };
        let span = tracing::debug_span!("infer", model = %target.model, transport = target.transport.name());
        let result = self
            .serve(&snapshot, &target, decode, &mut progress)
            .instrument(span)
            .await;
        let outcome = Outcome {
            result: result.as_ref().map(|r| r.source),
            elapsed: target.started.elapsed(),
            run: progress.run,
            rows: progress.rows,
            refused: progress.refused,
            answer: result.as_ref().ok().map(|r| crate::guards::Answer {
                key: &r.cache_key,
                outputs: crate::guards::AnswerOutputs::Tensors(&r.outputs),
                degraded: r.degraded.is_some(),
                retained: progress.retained.as_ref(),
            }),
            features: progress.features,
        };
        let pending = self.guards.observe(&progress.context(&target), &outcome);
        crate::guards::Pipeline::settle(result, pending).await
    }

    /// [`InferenceService::infer`] for a body already decoded (in-process callers, tests).
    pub async fn infer_body(&self, target: Target, body: InferBody) -> Result<InferResponse, ServeError> {
        self.infer(target, move || Ok(body)).await
    }

    async fn serve(
        &self,
        snapshot: &Snapshot,
        target: &Target,
        decode: impl FnOnce() -> Result<InferBody, ServeError>,
        progress: &mut Progress,
    ) -> Result<InferResponse, ServeError> {
        let table = &snapshot.table;
        let model_name = target.model.as_str();
        // Who is calling, and whether a corridor named outside the body is theirs, comes
        // before anything about the model: a caller learns nothing of what they may not use.
        let caller = self.authenticate(&target.metadata)?;
        if let Some(named) = target.metadata.corridor.as_deref() {
            crate::auth::check(&caller, crate::auth::Need::In(invariant_auth::Role::Infer, named))?;
        }
        progress.caller = Some(caller.clone());
        progress.model_known = table.versions(model_name).is_some();
        // A named version is looked up before the body is decoded.
        let explicit = match &target.version {
            Some(v) => Some(
                table
                    .resolve(model_name, Some(v))
                    .map_err(|l| lookup_error(model_name, Some(v), l))?,
            ),
            None if !progress.model_known => return Err(lookup_error(model_name, None, Lookup::UnknownModel)),
            None => None,
        };
        // A corridor named outside the body is admitted before the body is parsed: killed,
        // frozen and over-limit work is refused before it costs a parse.
        if let Some(named) = target.metadata.corridor.as_deref() {
            progress.corridor = Some(self.corridor_of(Some(named), &Map::new())?);
            if let Err(e) = self.guards.admit_early(&progress.context(target)) {
                progress.refused = true;
                return Err(e);
            }
            progress.admitted_early = true;
        }
        let body = decode()?;
        progress.body_id = body.id.clone();
        self.config
            .limits
            .request
            .check_tensors(&body.inputs)
            .map_err(ServeError::invalid)?;
        let corridor = self.corridor_for(
            &caller,
            invariant_auth::Role::Infer,
            target.metadata.corridor.as_deref(),
            &body.parameters,
        )?;
        progress.corridor = Some(corridor.clone());
        let deadline_in = self.deadline_of(&target.metadata)?;
        progress.caller_deadline = deadline_in < std::time::Duration::from_millis(self.config.pools.request_timeout_ms);
        let (serving, routing) = match explicit {
            Some(serving) => (serving, Routing::Explicit),
            None => {
                let key = routing_key(&target.metadata, &body)?;
                let default = table.default_version(model_name);
                let ready = |v: &str| snapshot.ready(model_name, v);
                let Some(route) =
                    snapshot
                        .registry
                        .route(model_name, corridor.as_str(), &key, &ready, default.as_deref())
                else {
                    let why = table.resolve(model_name, None).err().unwrap_or(Lookup::UnknownModel);
                    return Err(lookup_error(model_name, None, why));
                };
                let serving = table
                    .resolve(model_name, Some(&route.version))
                    .map_err(|l| lookup_error(model_name, None, l))?;
                (serving, Routing::from_reason(route.reason))
            }
        };
        let manifest = serving.model.manifest();
        let version_text = manifest.version.to_string();
        progress.version = Some(version_text.clone());
        progress.routing = Some(routing);
        progress.fallback = manifest.inference.fallback;
        let admit = self
            .guards
            .admit(&progress.context(target))
            .inspect_err(|_| progress.refused = true)?;

        let selection = select_outputs(&serving, &body.outputs)?;
        let mut inputs = body.inputs;
        let mut degraded = None;
        // Entity keys come in `parameters.entities`, or as a tensor named after the join key.
        let from_tensor = match body.parameters.get("entities") {
            Some(_) => None,
            None => crate::features::entities_from_tensor(self, manifest, &mut inputs)?,
        };
        let entities = body.parameters.get("entities").or(from_tensor.as_ref());
        let fetch_started = std::time::Instant::now();
        let features_used = crate::features::enrich(
            self,
            corridor.as_str(),
            manifest,
            entities,
            &mut inputs,
            &mut degraded,
            target.started + deadline_in,
        )
        .instrument(tracing::debug_span!("features"))
        .await;
        if entities.is_some() {
            progress.features = Some(fetch_started.elapsed());
        }
        let features_used = features_used?;
        let return_features = body
            .parameters
            .get("return_features")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let (ordered, _) = invariant_engine::check_inputs(manifest, inputs)?;
        progress.rows = ordered.first().and_then(|t| t.shape.first().copied()).unwrap_or(1);
        let runtime = self
            .corridors
            .get(corridor.as_str())
            .ok_or_else(|| ServeError::internal(format!("corridor {corridor} has no pool")))?;
        let deadline = target.started + deadline_in;
        let deadline_ms = deadline_in.as_millis() as u64;
        let requested: Vec<String> = selection.iter().map(|&i| manifest.outputs[i].name.clone()).collect();
        if self.audit.retains(&manifest.name) {
            progress.retained = Some(crate::audit::Retained::new(
                &ordered,
                requested.clone(),
                serving.model.content_hash(),
            ));
        }
        let key = invariant_core::hash::inference_key(invariant_core::hash::InferenceKeyParts {
            corridor: &corridor,
            model: &manifest.name,
            version: &version_text,
            artifact_hash: serving.model.content_hash(),
            inputs: &ordered,
            outputs: &requested,
        });
        let ttl = self
            .config
            .cache_ttl(&manifest.name, manifest.inference.cache_ttl_seconds);
        let caching = self.config.cache.enabled && !ttl.is_zero();
        tracing::debug!(corridor = %corridor, version = %version_text, routing = routing.name(), "routed and admitted");
        let (bytes, source) = match &admit {
            Admit::Full => {
                self.compute_or_cached(
                    runtime,
                    &serving,
                    ordered,
                    (*key.as_bytes(), caching, ttl),
                    (deadline, deadline_ms),
                    progress,
                )
                .instrument(tracing::debug_span!("cache_or_compute", caching))
                .await?
            }
            Admit::CacheOnly { reason, rules } => {
                let found = if caching {
                    runtime.cache.lookup(key.as_bytes()).await
                } else {
                    None
                };
                let (bytes, source) = match found {
                    Some((bytes, _)) => (bytes, "cache"),
                    None if *rules && manifest.inference.fallback == invariant_registry::Fallback::Rules => {
                        let answer = invariant_registry::rules::evaluate(manifest, &ordered)
                            .map_err(|e| ServeError::internal(format!("fallback rules: {e}")))?;
                        let refs: Vec<&Tensor> = answer.iter().collect();
                        (Bytes::from(invariant_core::hash::encode_list(&refs)), "rules")
                    }
                    None => {
                        progress.refused = true;
                        return Err(ServeError::unavailable(format!(
                            "{reason}; no cached answer for this input"
                        )));
                    }
                };
                degraded = Some(crate::request::Degraded {
                    source,
                    reason: reason.clone(),
                });
                (bytes, Source::Fallback)
            }
        };
        let outputs = invariant_core::hash::decode_list(&bytes)
            .ok_or_else(|| ServeError::internal("a cached answer could not be decoded"))?;
        let outputs: Vec<Tensor> = selection.iter().filter_map(|&i| outputs.get(i).cloned()).collect();
        // Replies built from the feature store change when features do: only answers computed
        // from the request's own tensors may be kept by a transport's reply cache.
        let enriched = entities.is_some();
        let source = if degraded.is_some() { Source::Fallback } else { source };
        let reply_ttl = (caching && !enriched && degraded.is_none()).then_some(ttl);
        Ok(InferResponse {
            model: manifest.name.clone(),
            version: version_text,
            id: body.id,
            corridor,
            device: serving.model.placement().device,
            routing,
            source,
            cache_key: key.to_hex().to_string(),
            outputs,
            features: if return_features { features_used } else { None },
            degraded,
            reply_ttl,
        })
    }

    /// The answer's canonical bytes: from the corridor's cache, or computed in its pool.
    async fn compute_or_cached(
        &self,
        runtime: &CorridorRuntime,
        serving: &Arc<ServingVersion>,
        ordered: Vec<Tensor>,
        (key, caching, ttl): (invariant_cache::Key, bool, Duration),
        (deadline, deadline_ms): (tokio::time::Instant, u64),
        progress: &mut Progress,
    ) -> Result<(Bytes, Source), ServeError> {
        let timings = std::sync::Mutex::new(None);
        let compute = async {
            let _admission = runtime.pool.admit()?;
            let (outputs, run) = runtime
                .pool
                .run(serving.clone(), ordered, deadline, deadline_ms)
                .instrument(tracing::debug_span!("pool"))
                .await?;
            tracing::debug!(
                queue_us = run.queue.as_micros() as u64,
                compute_us = run.compute.as_micros() as u64,
                batch = run.batch_requests,
                "computed"
            );
            *timings.lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
            let refs: Vec<&Tensor> = outputs.iter().collect();
            Ok::<_, ServeError>(invariant_core::hash::encode_list(&refs))
        };
        let m = serving.model.manifest();
        let result = if !caching {
            compute.await.map(|bytes| (Bytes::from(bytes), Source::Computed))
        } else if let Some(entry) = runtime.cache.peek(&key).await {
            // An L1 hit needs no admission, timer or coalescing.
            Ok((entry.bytes.clone(), Source::L1))
        } else {
            let version = m.version.to_string();
            let lookup = runtime.cache.get_or_compute(key, &m.name, &version, ttl, compute);
            match tokio::time::timeout_at(deadline, lookup).await {
                Err(_) => Err(ServeError::deadline(deadline_ms)),
                Ok(Ok((entry, source))) => Ok((
                    entry.bytes.clone(),
                    match source {
                        invariant_cache::Source::Computed => Source::Computed,
                        invariant_cache::Source::L1 => Source::L1,
                        invariant_cache::Source::L2 => Source::L2,
                    },
                )),
                Ok(Err(e)) => Err((*e).clone()),
            }
        };
        progress.run = *timings.lock().unwrap_or_else(|p| p.into_inner());
        result
    }

    /// A transport's stored reply to the exact repeat of a request, found under `key` in
    /// `corridor`'s cache and confirmed by `matches` (which compares the stored request
    /// identity with this one). A hit is admitted and observed by the guard pipeline like the
    /// answer it repeats (`None`: no stored reply; the request takes the full path).
    pub async fn stored_reply(
        &self,
        corridor: &str,
        key: &invariant_cache::Key,
        matches: impl FnOnce(&[u8]) -> bool,
        metadata: &Metadata,
        transport: Transport,
        started: tokio::time::Instant,
    ) -> Option<Result<StoredReply, ServeError>> {
        let runtime = self.corridors.get(corridor)?;
        let hit = runtime.cache.peek(key).await?;
        if !matches(&hit.request) {
            return None;
        }
        let meta = hit.meta.as_ref()?.downcast_ref::<StoredMeta>()?;
        // A caller that may not have this reply takes the full path, which refuses it.
        let caller = self
            .authorize(metadata, crate::auth::Need::In(invariant_auth::Role::Infer, corridor))
            .ok()?;
        let ctx = RequestContext {
            transport,
            started,
            model: &meta.model,
            model_known: true,
            version: Some(&meta.version),
            routing: Some(meta.routing),
            corridor: Some(corridor),
            request_id: metadata.request_id.as_deref(),
            body_id: None,
            caller: Some(&caller),
            admitted_early: false,
            caller_deadline: false,
            fallback: invariant_registry::Fallback::Refuse,
        };
        // A degraded corridor or an open breaker flags or refuses answers: the request takes
        // the full path, which does.
        if !self.guards.allows_stored_reply(&ctx) {
            return None;
        }
        let mut refused = false;
        let result = self.deadline_of(metadata).and_then(|_| {
            match self.guards.admit(&ctx).inspect_err(|_| refused = true)? {
                Admit::Full => Ok(StoredReply {
                    bytes: hit.bytes.clone(),
                    header_length: meta.header_length,
                }),
                // The corridor degraded between the two checks: refuse rather than answer
                // unflagged.
                Admit::CacheOnly { reason, .. } => Err(ServeError::unavailable(reason)),
            }
        });
        let outcome = Outcome {
            result: result.as_ref().map(|_| Source::Reply),
            elapsed: started.elapsed(),
            run: None,
            rows: 0,
            refused,
            answer: result.is_ok().then_some(crate::guards::Answer {
                key: &meta.key,
                outputs: crate::guards::AnswerOutputs::Hash(&meta.output_hash),
                degraded: false,
                retained: None,
            }),
            features: None,
        };
        let pending = self.guards.observe(&ctx, &outcome);
        Some(crate::guards::Pipeline::settle(result, pending).await)
    }

    /// Keeps `reply`, the transport's encoding of `response`, as the reply to the exact
    /// request `identity` under `key` in the response's corridor, for the response's
    /// `reply_ttl` (nothing is kept when it has none).
    pub async fn store_reply(
        &self,
        response: &InferResponse,
        key: invariant_cache::Key,
        identity: Bytes,
        reply: StoredReply,
    ) {
        let (Some(ttl), Some(runtime)) = (response.reply_ttl, self.corridors.get(response.corridor.as_str())) else {
            return;
        };
        // A model that retains inputs keeps no stored replies: a hit's record would have none.
        if self.audit.retains(&response.model) {
            return;
        }
        let meta = StoredMeta {
            model: response.model.clone(),
            version: response.version.clone(),
            routing: response.routing,
            key: response.cache_key.clone(),
            output_hash: crate::audit::output_hash(&response.outputs),
            header_length: reply.header_length,
        };
        let entry = invariant_cache::Entry {
            model: response.model.clone(),
            version: response.version.clone(),
            bytes: reply.bytes,
            request: identity,
            ttl,
            meta: Some(Arc::new(meta)),
        };
        runtime.cache.insert_l1(key, Arc::new(entry)).await;
    }
}

impl InferenceService {
    /// Re-runs `inputs` (signature order, as an audit record retains them) on `model`
    /// `version` in `corridor`'s pool, with no cache and no guards, and returns `outputs` (by
    /// name, in order): how `invariant audit replay` confirms a recorded answer. When
    /// `artifact_hash` is given, the loaded version must have exactly those artifacts.
    pub async fn recompute(
        &self,
        (model, version, corridor): (&str, &str, &str),
        inputs: Vec<Tensor>,
        outputs: &[String],
        artifact_hash: Option<&str>,
    ) -> Result<Vec<Tensor>, ServeError> {
        let snapshot = self.snapshot();
        let serving = snapshot
            .table
            .resolve(model, Some(version))
            .map_err(|l| lookup_error(model, Some(version), l))?;
        if let Some(expected) = artifact_hash.filter(|h| *h != serving.model.content_hash()) {
            return Err(ServeError::Conflict(format!(
                "{model} {version} now has artifacts {} where the record has {expected}",
                serving.model.content_hash()
            )));
        }
        let selection = select_outputs(&serving, outputs)?;
        let runtime = self
            .corridors
            .get(corridor)
            .ok_or_else(|| ServeError::not_found(format!("unknown corridor '{corridor}'")))?;
        let (ordered, _) = invariant_engine::check_inputs(serving.model.manifest(), inputs)?;
        let timeout = Duration::from_secs(60);
        let (all, _) = runtime
            .pool
            .run(
                serving.clone(),
                ordered,
                tokio::time::Instant::now() + timeout,
                timeout.as_millis() as u64,
            )
            .await?;
        Ok(selection.iter().filter_map(|&i| all.get(i).cloned()).collect())
    }
}

/// The routing key of a request: the metadata's (`x-routing-key`), else
/// `parameters.routing_key`, else the request id, else the blake3 of the canonical encoding of
/// its inputs.
fn routing_key(metadata: &Metadata, body: &InferBody) -> Result<Vec<u8>, ServeError> {
    if let Some(v) = &metadata.routing_key {
        return Ok(v.clone());
    }
    match body.parameters.get("routing_key") {
        Some(Value::String(s)) => return Ok(s.as_bytes().to_vec()),
        Some(Value::Number(n)) => return Ok(n.to_string().into_bytes()),
        Some(_) => {
            return Err(ServeError::invalid(
                "parameters.routing_key: must be a string or a number",
            ))
        }
        None => {}
    }
    if let Some(id) = &body.id {
        return Ok(id.as_bytes().to_vec());
    }
    Ok(blake3::hash(&invariant_core::hash::encode_tensors(&body.inputs))
        .as_bytes()
        .to_vec())
}

/// Indexes (into the manifest's outputs) of the outputs to return, in the requested order;
/// all outputs in manifest order when none are requested.
fn select_outputs(serving: &ServingVersion, requested: &[String]) -> Result<Vec<usize>, ServeError> {
    let specs = &serving.model.manifest().outputs;
    if requested.is_empty() {
        return Ok((0..specs.len()).collect());
    }
    let mut picked = Vec::with_capacity(requested.len());
    for (i, name) in requested.iter().enumerate() {
        let Some(pos) = specs.iter().position(|s| &s.name == name) else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(ServeError::invalid(format!(
                "outputs[{i}].name: model '{}' has no output '{name}' (outputs: {})",
                serving.model.manifest().name,
                names.join(", ")
            )));
        };
        if picked.contains(&pos) {
            return Err(ServeError::invalid(format!(
                "outputs[{i}].name: output '{name}' requested twice"
            )));
        }
        picked.push(pos);
    }
    Ok(picked)
}
