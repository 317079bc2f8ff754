//! The control plane: every change of what serves, in one place. Lifecycle transitions
//! (stage, canary, promote, rollback, deprecate), reloads and unloads each take the reload
//! lock, do their blocking work off the async threads, swap the serving snapshot, write the
//! audit record and publish the replica event. Transitions run the deploy-time verification
//! first and are stored by compare-and-set in the shared control state (a file or Redis)
//! before they are acknowledged.
//! Used by the admin APIs of every transport, by the `invariant models` CLI when no server
//! runs, and by canary auto-rollback.

use crate::guards::RollbackOrder;
use crate::models::{ModelTable, ReloadOutcome, VersionState};
use crate::{InferenceService, ServeError};
use invariant_control::ControlError;
use invariant_registry::lifecycle::{Action, LifecycleError, RegistryState, Transition, TransitionContext};
use invariant_verify::{verify_deploy, GoldenFile};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// Why a transition did not happen.
#[derive(Debug, Error)]
pub enum TransitionError {
    /// Unknown model or version.
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in the current state.
    #[error(transparent)]
    Invalid(#[from] LifecycleError),
    /// The version failed its verification just now.
    #[error("{0}")]
    Verification(String),
    /// The control state cannot be read or written, or kept changing under the transition.
    #[error(transparent)]
    Control(#[from] invariant_control::ControlError),
}

impl From<TransitionError> for ServeError {
    fn from(e: TransitionError) -> Self {
        match e {
            TransitionError::NotFound(m) => ServeError::NotFound(m),
            TransitionError::Invalid(_) | TransitionError::Verification(_) => ServeError::Conflict(e.to_string()),
            TransitionError::Control(ControlError::Conflict { .. }) => ServeError::Conflict(e.to_string()),
            TransitionError::Control(ControlError::Unavailable { .. }) => ServeError::unavailable(e.to_string()),
            TransitionError::Control(ControlError::Corrupt { .. }) => ServeError::Internal(e.to_string()),
        }
    }
}

/// Whether a version of the subject of a transition is ready for traffic.
type Ready<'a> = dyn Fn(&str) -> bool + 'a;

/// Whether a version is loaded and verified.
pub fn ready(table: &ModelTable, model: &str, version: &str) -> bool {
    table.versions(model).is_some_and(|vs| {
        vs.iter()
            .any(|e| e.version == version && matches!(e.state, VersionState::Ready(_)))
    })
}

/// Runs the deploy-time checks again (golden file re-read from disk) before a version
/// receives traffic.
fn reverify(
    table: &ModelTable,
    golden_dir: &Path,
    limits: &invariant_verify::GoldenLimits,
    model: &str,
    version: &str,
) -> Result<(), TransitionError> {
    let serving = table
        .resolve(model, Some(version))
        .map_err(|_| TransitionError::Verification(format!("{model} {version} is not loaded and verified")))?;
    let path = invariant_verify::locate(golden_dir, model, version, &serving.model.portability())
        .map_err(|e| TransitionError::Verification(e.to_string()))?;
    let (golden, _) =
        GoldenFile::read_with_limits(&path, limits).map_err(|e| TransitionError::Verification(e.to_string()))?;
    let report = verify_deploy(&serving.model, &golden).map_err(|e| TransitionError::Verification(e.to_string()))?;
    if let Some(v) = report.violations.first() {
        return Err(TransitionError::Verification(format!("verification failed: {v}")));
    }
    Ok(())
}

impl InferenceService {
    /// One transition, blocking: canary and promotion re-verify the version first; the
    /// transition is applied to the newest stored registry state and stored by compare-and-set
    /// (rebuilt on the fresher state when another process changed it meanwhile, so no
    /// acknowledged transition is ever lost or applied twice), durably, then swapped in for
    /// routing and audited. Within a process [`ControlPlane`] serialises admin changes.
    pub fn transition(
        &self,
        model: &str,
        version: &str,
        action: &Action,
        actor: &str,
        reason: &str,
    ) -> Result<Transition, TransitionError> {
        let snapshot = self.snapshot();
        let table = &snapshot.table;
        let pipelines = self.pipelines();
        let pipeline = model.strip_prefix(crate::advisory::SUBJECT_PREFIX);
        let (default_active, is_ready): (Option<String>, Box<Ready<'_>>) = match pipeline {
            // A pipeline: its versions are those of the repository, ready when verified, and
            // verified again (golden decisions, on the loaded models) before traffic.
            Some(name) => {
                let versions = pipelines
                    .versions
                    .get(name)
                    .ok_or_else(|| TransitionError::NotFound(format!("unknown pipeline '{name}'")))?;
                if !versions.iter().any(|e| e.version.to_string() == version) {
                    return Err(TransitionError::NotFound(format!(
                        "pipeline '{name}' has no version '{version}'"
                    )));
                }
                if matches!(action, Action::Canary { .. } | Action::Promote { .. }) {
                    self.reverify_pipeline(name, version)?;
                }
                let p = pipelines.clone();
                (
                    pipelines.default_version(name),
                    Box::new(move |v: &str| p.verified(name, v).is_some()),
                )
            }
            None => {
                let versions = table
                    .versions(model)
                    .ok_or_else(|| TransitionError::NotFound(format!("unknown model '{model}'")))?;
                if !versions.iter().any(|e| e.version == version) {
                    return Err(TransitionError::NotFound(format!(
                        "model '{model}' has no version '{version}'"
                    )));
                }
                if matches!(action, Action::Canary { .. } | Action::Promote { .. }) {
                    reverify(
                        table,
                        &self.config.golden_vectors,
                        &self.config.limits.golden,
                        model,
                        version,
                    )?;
                }
                (table.default_version(model), Box::new(|v: &str| ready(table, model, v)))
            }
        };
        let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let ctx = TransitionContext {
            actor,
            reason,
            time: &time,
            ready: &*is_ready,
            default_active: default_active.as_deref(),
        };
        let limits = &self.config.limits.lifecycle;
        let (next, transition) = self
            .control_state
            .update::<RegistryState, Transition, TransitionError>(None, |latest| {
                Ok(latest.apply_with_limits(model, version, action, &ctx, limits)?)
            })?;
        self.set_registry(Arc::new(next));
        // The record's own time is the trail's; a transition confined to one corridor is in
        // that corridor's chain.
        let mut record = serde_json::to_value(&transition).unwrap_or_default();
        if let Some(fields) = record.as_object_mut() {
            fields.remove("time");
        }
        let corridor = match transition.corridors.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        };
        let _ = self.audit.record(corridor, "transition", &record);
        tracing::info!(
            model,
            version,
            action = action.name(),
            to = %transition.to,
            actor,
            reason,
            revision = transition.revision,
            "lifecycle transition"
        );
        Ok(transition)
    }
}

/// Changes what serves, for one service; cheap to create ([`InferenceService::control`]).
#[derive(Debug, Clone)]
pub struct ControlPlane {
    service: Arc<InferenceService>,
}

/// What an unload or reload did.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// Each version's outcome.
    pub versions: Vec<ReloadOutcome>,
}

impl ReloadReport {
    /// The failures as one message, or `None` when every version is ready.
    pub fn failure(&self, model: &str) -> Option<String> {
        let failed: Vec<String> = self
            .versions
            .iter()
            .filter(|o| o.state == "FAILED")
            .map(|o| format!("{}: {}", o.version, o.error.as_deref().unwrap_or("failed")))
            .collect();
        (!failed.is_empty()).then(|| format!("model '{model}': {}", failed.join("; ")))
    }
}

impl ControlPlane {
    /// The control plane of `service`.
    pub fn new(service: Arc<InferenceService>) -> Self {
        Self { service }
    }

    /// One lifecycle transition (serialised with every other change), then the replica event.
    pub async fn transition(
        &self,
        model: &str,
        version: &str,
        action: Action,
        actor: &str,
        reason: &str,
    ) -> Result<Transition, ServeError> {
        let _one_at_a_time = self.service.reload_lock.lock().await;
        let worker = self.service.clone();
        let (m, v, a, r) = (
            model.to_string(),
            version.to_string(),
            actor.to_string(),
            reason.to_string(),
        );
        // The blocking work logs within the request's span (its id).
        let span = tracing::Span::current();
        let transition =
            tokio::task::spawn_blocking(move || span.in_scope(|| worker.transition(&m, &v, &action, &a, &r)))
                .await
                .map_err(|e| ServeError::internal(format!("transition task failed: {e}")))??;
        // The control state's own notification tells the other replicas.
        Ok(transition)
    }

    /// Re-reads `models/<model>/` and verifies new or changed versions, then swaps the model
    /// table atomically. In-flight requests finish on the instances they started with; a
    /// version that fails verification never serves, and a serving version whose reload fails
    /// keeps serving.
    /// The reload is audited (event `load`, with `actor` and each version's outcome); each
    /// verification it runs is audited too.
    pub async fn reload(&self, model: &str, actor: &str) -> Result<ReloadReport, ServeError> {
        if model.is_empty() || model.contains(['/', '\\']) || model.starts_with('.') {
            return Err(ServeError::invalid(format!("invalid model name '{model}'")));
        }
        if !self.service.mirrors.is_empty() {
            let worker = self.service.clone();
            let name = model.to_string();
            tokio::task::spawn_blocking(move || worker.mirrors.sync_model(&name))
                .await
                .map_err(|e| ServeError::internal(format!("object store task failed: {e}")))?
                .map_err(|e| ServeError::unavailable(format!("cannot fetch model '{model}': {e}")))?;
        }
        let root = self.service.config.model_repository.clone();
        if !root.join(model).is_dir() {
            return Err(ServeError::not_found(format!(
                "model '{model}' is not in the repository {}",
                root.display()
            )));
        }
        let _one_at_a_time = self.service.reload_lock.lock().await;
        let worker = self.service.clone();
        let name = model.to_string();
        let span = tracing::Span::current();
        let (table, versions) = tokio::task::spawn_blocking(move || {
            let _in_request = span.enter();
            let current = worker.snapshot().table.clone();
            current.reload_model(&worker.config.model_repository, &name, &worker.loader())
        })
        .await
        .map_err(|e| ServeError::internal(format!("reload task failed: {e}")))?
        .map_err(|e| ServeError::internal(e.to_string()))?;
        self.service.set_models(Arc::new(table));
        let count = |state: &str| versions.iter().filter(|v| v.state == state).count();
        tracing::info!(
            model,
            ready = count("READY"),
            unchanged = count("UNCHANGED"),
            failed = count("FAILED"),
            "model reloaded"
        );
        let record = json!({"actor": actor, "model": model, "versions": &versions});
        let audit = self.service.audit.clone();
        tokio::task::spawn_blocking(move || audit.record(None, "load", &record))
            .await
            .map_err(|e| ServeError::internal(format!("audit task failed: {e}")))?
            .map_err(|e| ServeError::unavailable(format!("the model was reloaded but could not be audited: {e}")))?;
        crate::events::publish(&self.service, model, "reload").await;
        Ok(ReloadReport { versions })
    }

    /// Re-reads and verifies every pipeline version of the repository (fetching
    /// `pipelines/` first from a remote repository) and swaps them in whole: advisories in
    /// flight finish on the versions they started with; a version that fails verification does
    /// not serve, and says why. Audited (event `load`, with each version's outcome).
    pub async fn reload_pipelines(&self, actor: &str) -> Result<Vec<Value>, ServeError> {
        let _one_at_a_time = self.service.reload_lock.lock().await;
        let worker = self.service.clone();
        let span = tracing::Span::current();
        let pipelines = tokio::task::spawn_blocking(move || {
            let _in_request = span.enter();
            if !worker.mirrors.is_empty() {
                worker
                    .mirrors
                    .sync_model(invariant_pipeline::PIPELINES_DIR)
                    .map_err(|e| ServeError::unavailable(format!("cannot fetch the pipelines: {e}")))?;
            }
            Ok::<_, ServeError>(crate::advisory::Pipelines::load(&worker))
        })
        .await
        .map_err(|e| ServeError::internal(format!("reload task failed: {e}")))??;
        let views = pipelines.views(&self.service.snapshot().registry);
        self.service.pipelines.store(Arc::new(pipelines));
        tracing::info!(versions = views.len(), "pipelines reloaded");
        let outcomes: Vec<Value> = views
            .iter()
            .map(|v| json!({"pipeline": v["name"], "version": v["version"], "state": v["state"], "error": v["error"]}))
            .collect();
        let record = json!({"actor": actor, "pipelines": outcomes});
        let audit = self.service.audit.clone();
        tokio::task::spawn_blocking(move || audit.record(None, "load", &record))
            .await
            .map_err(|e| ServeError::internal(format!("audit task failed: {e}")))?
            .map_err(|e| {
                ServeError::unavailable(format!("the pipelines were reloaded but could not be audited: {e}"))
            })?;
        Ok(views)
    }

    /// Takes a version out of memory (audited). Refused while it receives traffic (active,
    /// corridor-active or canary).
    pub async fn unload(&self, model: &str, version: &str, actor: &str, reason: &str) -> Result<(), ServeError> {
        let _one_at_a_time = self.service.reload_lock.lock().await;
        let snapshot = self.service.snapshot();
        let table = &snapshot.table;
        table
            .resolve(model, Some(version))
            .map_err(|_| ServeError::not_found(format!("model '{model}' has no loaded version '{version}'")))?;
        let routing = snapshot.registry.models.get(model);
        let receives_traffic = snapshot.active_version(model).as_deref() == Some(version)
            || routing.is_some_and(|r| {
                r.corridor_active.values().any(|v| v == version)
                    || r.canary.as_ref().is_some_and(|c| c.version == version)
            });
        if receives_traffic {
            return Err(ServeError::Conflict(format!(
                "cannot unload {model} {version}: it receives traffic; promote another version or roll it back first"
            )));
        }
        let next = table.without_version(model, version, &format!("unloaded by {actor}: {reason}"));
        self.service.set_models(Arc::new(next));
        let record = json!({"actor": actor, "model": model, "version": version, "reason": reason});
        let _ = self.service.audit.record(None, "unload", &record);
        crate::events::publish(&self.service, model, "reload").await;
        Ok(())
    }
}

impl ControlPlane {
    /// Takes every loaded version of `model` out of memory (Triton's repository unload: the
    /// model stops serving until it is loaded again), audited. Returns the versions unloaded.
    pub async fn unload_model(&self, model: &str, actor: &str) -> Result<Vec<String>, ServeError> {
        let _one_at_a_time = self.service.reload_lock.lock().await;
        let snapshot = self.service.snapshot();
        let versions = snapshot
            .table
            .versions(model)
            .ok_or_else(|| ServeError::not_found(format!("unknown model '{model}'")))?;
        let ready: Vec<String> = versions
            .iter()
            .filter(|e| matches!(e.state, VersionState::Ready(_)))
            .map(|e| e.version.clone())
            .collect();
        let mut next = (*snapshot.table).clone();
        for v in &ready {
            next = next.without_version(model, v, &format!("unloaded by {actor}"));
        }
        self.service.set_models(Arc::new(next));
        let record = json!({"actor": actor, "model": model, "versions": ready, "reason": "repository unload"});
        let _ = self.service.audit.record(None, "unload", &record);
        crate::events::publish(&self.service, model, "reload").await;
        Ok(ready)
    }
}

/// Carries out the canary guard's rollback orders, one at a time, through the control plane.
pub(crate) fn spawn_auto_rollback(
    service: &Arc<InferenceService>,
    mut orders: tokio::sync::mpsc::UnboundedReceiver<RollbackOrder>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return; // no runtime (a CLI tool): nothing serves, nothing to roll back
    };
    let control = ControlPlane::new(service.clone());
    runtime.spawn(async move {
        while let Some(order) = orders.recv().await {
            let action = Action::Rollback { corridors: vec![] };
            match control
                .transition(&order.model, &order.version, action, "auto-rollback", &order.reason)
                .await
            {
                Ok(_) => metrics::counter!("invariant_canary_auto_rollbacks_total", "model" => order.model.clone(), "version" => order.version.clone())
                    .increment(1),
                Err(e) => tracing::warn!(model = %order.model, version = %order.version, error = %e, "automatic canary rollback not applied"),
            }
        }
    });
}

/// One model's registry view: every version with lifecycle and verification state, the
/// routing (active, corridor overrides, canary, previous) and its transition history.
pub fn model_view(snapshot: &crate::Snapshot, model: &str) -> Option<Value> {
    let (table, registry) = (&snapshot.table, &snapshot.registry);
    let versions = table.versions(model)?;
    let default = table.default_version(model);
    let rows: Vec<Value> = versions
        .iter()
        .map(|e| {
            let (state, error, format) = match &e.state {
                VersionState::Ready(s) => ("READY", None, Some(s.model.manifest().format.platform())),
                VersionState::Failed { reason } => ("FAILED", Some(reason.clone()), None),
            };
            let lifecycle = match &e.state {
                VersionState::Ready(_) => registry.lifecycle(model, &e.version, default.as_deref()).to_string(),
                VersionState::Failed { .. } => "FAILED".to_string(),
            };
            json!({ "version": e.version, "lifecycle": lifecycle, "state": state, "platform": format, "error": error })
        })
        .collect();
    let routing = registry.models.get(model);
    let history: Vec<_> = registry.history.iter().filter(|t| t.model == model).collect();
    Some(json!({
        "name": model,
        "versions": rows,
        "active": snapshot.active_version(model),
        "corridor_active": routing.map(|r| json!(r.corridor_active)).unwrap_or(json!({})),
        "canary": routing.and_then(|r| r.canary.clone()),
        "previous": routing.map(|r| r.previous.clone()).unwrap_or_default(),
        "revision": registry.revision,
        "history": history,
    }))
}
