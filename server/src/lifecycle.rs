//! Version lifecycle transitions (stage, canary, promote, rollback, deprecate) over the
//! loaded model table: each runs the deploy-time verification first, is written atomically
//! to the registry state file, swapped in for routing, and audited. Used by the admin API,
//! by the `invariant models` CLI when no server runs, and by canary auto-rollback.

use crate::models::{ModelTable, VersionState};
use crate::Shared;
use invariant_registry::lifecycle::{Action, LifecycleError, Transition, TransitionContext};
use invariant_verify::{verify_deploy, GoldenFile};
use serde::Serialize;
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
}

/// The audit record of a transition.
#[derive(Serialize)]
struct TransitionRecord<'a> {
    event: &'static str,
    #[serde(flatten)]
    transition: &'a Transition,
}

/// Whether a version is loaded and verified.
pub fn ready(table: &ModelTable, model: &str, version: &str) -> bool {
    table.versions(model).is_some_and(|vs| {
        vs.iter()
            .any(|e| e.version == version && matches!(e.state, VersionState::Ready(_)))
    })
}

/// Runs the deploy-time checks again (golden file re-read from disk) before a version
/// receives traffic.
fn reverify(table: &ModelTable, golden_dir: &Path, model: &str, version: &str) -> Result<(), TransitionError> {
    let serving = table
        .resolve(model, Some(version))
        .map_err(|_| TransitionError::Verification(format!("{model} {version} is not loaded and verified")))?;
    let path = GoldenFile::path(golden_dir, model, version);
    let (golden, _) = GoldenFile::read(&path).map_err(|e| TransitionError::Verification(e.to_string()))?;
    let report = verify_deploy(&serving.model, &golden).map_err(|e| TransitionError::Verification(e.to_string()))?;
    if let Some(v) = report.violations.first() {
        return Err(TransitionError::Verification(format!("verification failed: {v}")));
    }
    Ok(())
}

impl Shared {
    /// One transition: canary and promotion re-verify the version first; the new state is
    /// written atomically to the registry state file, swapped in for routing, and audited.
    /// Callers serialise admin changes (`reload_lock`).
    pub fn transition(
        &self,
        model: &str,
        version: &str,
        action: &Action,
        actor: &str,
        reason: &str,
    ) -> Result<Transition, TransitionError> {
        let table = self.models.load_full();
        let versions = table
            .versions(model)
            .ok_or_else(|| TransitionError::NotFound(format!("unknown model '{model}'")))?;
        if !versions.iter().any(|e| e.version == version) {
            return Err(TransitionError::NotFound(format!(
                "model '{model}' has no version '{version}'"
            )));
        }
        if matches!(action, Action::Canary { .. } | Action::Promote { .. }) {
            reverify(&table, &self.config.golden_vectors, model, version)?;
        }
        let default_active = table.default_version(model);
        let is_ready = |v: &str| ready(&table, model, v);
        let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let ctx = TransitionContext {
            actor,
            reason,
            time: &time,
            ready: &is_ready,
            default_active: default_active.as_deref(),
        };
        let (next, transition) = self.registry.load().apply(model, version, action, &ctx)?;
        next.save(&self.config.registry_state_path())?;
        self.set_registry(Arc::new(next));
        if let Err(e) = self.audit.append(&TransitionRecord {
            event: "transition",
            transition: &transition,
        }) {
            tracing::error!(error = %e, "cannot write the transition audit record");
        }
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
