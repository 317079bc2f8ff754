//! Keeping this process converged with the shared control state (registry, governance, API
//! keys; `invariant_control`). A watcher thread reports notified changes at once and asks for
//! a full check after every reconnect and at least every `control.poll_ms`; each check reads a
//! document's revision and applies the document when it moved. What is applied is in the
//! metrics (`invariant_control_revision{document}`), in `/v2/health/ready` and in the admin
//! model list, so operators can see that replicas agree.

use crate::InferenceService;
use invariant_control::{Document, GOVERNANCE, KEYS, REGISTRY};
use invariant_registry::lifecycle::RegistryState;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What this process applied, and when it last checked the shared state.
#[derive(Debug)]
pub(crate) struct Converged {
    revisions: BTreeMap<&'static str, AtomicU64>,
    last_check: Mutex<Option<Instant>>,
    /// The last check's failure, if it failed.
    last_error: Mutex<Option<String>>,
    checks: AtomicU64,
}

impl Converged {
    pub(crate) fn new(registry: &RegistryState) -> Self {
        let c = Self {
            revisions: invariant_control::DOCUMENTS
                .iter()
                .map(|d| (*d, AtomicU64::new(0)))
                .collect(),
            last_check: Mutex::new(None),
            last_error: Mutex::new(None),
            checks: AtomicU64::new(0),
        };
        c.applied(REGISTRY, registry.revision());
        c
    }

    /// Records that `doc` is applied at `revision`.
    pub(crate) fn applied(&self, doc: &str, revision: u64) {
        if let Some(r) = self.revisions.get(doc) {
            r.store(revision, Ordering::Relaxed);
        }
        metrics::gauge!("invariant_control_revision", "document" => doc.to_string()).set(revision as f64);
    }

    fn revision(&self, doc: &str) -> u64 {
        self.revisions.get(doc).map_or(0, |r| r.load(Ordering::Relaxed))
    }
}

impl InferenceService {
    /// Reads the shared control state and applies what changed: one document (`Some`) or every
    /// document (`None`). On a failure the last good state stays in force; the error is
    /// returned (and counted) and the next check tries again.
    pub fn sync_control(&self, doc: Option<&str>) -> Result<(), String> {
        let docs: Vec<&str> = match doc {
            Some(d) => invariant_control::DOCUMENTS
                .iter()
                .copied()
                .filter(|x| *x == d)
                .collect(),
            None => invariant_control::DOCUMENTS.to_vec(),
        };
        let mut errors = Vec::new();
        for doc in docs {
            if let Err(e) = self.sync_document(doc) {
                metrics::counter!("invariant_control_sync_errors_total", "document" => doc.to_string()).increment(1);
                errors.push(e);
            }
        }
        if doc.is_none() {
            *self.converged.last_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.converged.checks.fetch_add(1, Ordering::Relaxed);
        }
        let outcome = if errors.is_empty() {
            None
        } else {
            Some(errors.join("; "))
        };
        *self.converged.last_error.lock().unwrap_or_else(|p| p.into_inner()) = outcome.clone();
        outcome.map_or(Ok(()), Err)
    }

    fn sync_document(&self, doc: &str) -> Result<(), String> {
        match doc {
            REGISTRY => {
                let stored = self
                    .control_state
                    .backend()
                    .revision(REGISTRY)
                    .map_err(|e| e.to_string())?;
                let current = self.snapshot().registry.clone();
                if stored == current.revision {
                    return Ok(());
                }
                let fresh: RegistryState = self.control_state.load().map_err(|e| e.to_string())?;
                let backwards = fresh.revision < current.revision;
                if backwards {
                    tracing::warn!(
                        from = current.revision,
                        to = fresh.revision,
                        "the stored registry state went back (restored or reset); applying it"
                    );
                }
                let changed: Vec<String> = current
                    .models
                    .keys()
                    .chain(fresh.models.keys())
                    .filter(|m| current.models.get(*m) != fresh.models.get(*m))
                    .cloned()
                    .collect();
                let revision = fresh.revision;
                if self.store_registry(Arc::new(fresh), !backwards) {
                    // Answers cached under the old routing are not reused for the changed models.
                    for corridor in self.corridors.values() {
                        for model in &changed {
                            corridor.cache.invalidate_model(model);
                        }
                    }
                    tracing::info!(revision, models = ?changed, "applied a registry change made elsewhere");
                }
                Ok(())
            }
            GOVERNANCE => {
                let Some(g) = &self.governance else { return Ok(()) };
                if g.refresh().map_err(|e| e.to_string())? {
                    tracing::info!(
                        revision = g.state().revision,
                        "applied a governance change made elsewhere"
                    );
                }
                self.converged.applied(GOVERNANCE, g.state().revision);
                Ok(())
            }
            KEYS => {
                if self.authority.refresh().map_err(|e| e.to_string())? {
                    tracing::info!(
                        revision = self.authority.revision(),
                        active_keys = self.authority.active_keys(),
                        "API keys reloaded"
                    );
                }
                self.converged.applied(KEYS, self.authority.revision());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// What this process applies of the control state (for health, metrics and the admin
    /// model list).
    pub fn control_applied(&self) -> ControlApplied {
        let last = *self.converged.last_check.lock().unwrap_or_else(|p| p.into_inner());
        ControlApplied {
            server_id: self.server_id.clone(),
            backend: self.control_state.backend().kind().to_string(),
            revisions: invariant_control::DOCUMENTS
                .iter()
                .map(|d| (d.to_string(), self.converged.revision(d)))
                .collect(),
            poll_ms: self.config.control.poll_ms,
            last_check_ms_ago: last.map(|t| t.elapsed().as_millis() as u64),
            error: self
                .converged
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// [`InferenceService::control_applied`] with where the state lives and how it is kept
    /// durable (for administrators only).
    pub fn control_status(&self) -> Value {
        let backend = self.control_state.backend();
        let mut v = json!(self.control_applied());
        v["place"] = json!(backend.place());
        v["durability"] = json!(backend.durability());
        v
    }
}

/// What one process applies of the control state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ControlApplied {
    /// This process (unique per start).
    pub server_id: String,
    /// `file` or `redis`.
    pub backend: String,
    /// The revision applied of each document (`registry`, `governance`, `keys`).
    pub revisions: BTreeMap<String, u64>,
    /// The longest a missed notification delays a change.
    pub poll_ms: u64,
    /// How long ago every document was last checked (none yet: `null`).
    pub last_check_ms_ago: Option<u64>,
    /// Why the last check failed (the last good state stays in force), if it failed.
    pub error: Option<String>,
}

/// Starts the convergence watcher (when a Tokio runtime is running, i.e. in a server): it
/// lives as long as the service.
pub(crate) fn spawn_watcher(service: &Arc<InferenceService>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return; // a command-line tool: it reads the state once
    }
    if let Some(g) = &service.governance {
        service.converged.applied(GOVERNANCE, g.state().revision);
    }
    service.converged.applied(KEYS, service.authority.revision());
    let weak = Arc::downgrade(service);
    let backend = service.control_state.backend().clone();
    let period = Duration::from_millis(service.config.control.poll_ms);
    let failing = std::sync::atomic::AtomicBool::new(false);
    let started = invariant_control::watch::spawn(
        backend,
        period,
        Box::new(move |doc| {
            let Some(service) = weak.upgrade() else {
                return false;
            };
            match service.sync_control(doc) {
                Ok(()) => {
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("control state readable again");
                    }
                }
                // Logged once per failing stretch; the last good state stays in force.
                Err(e) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        tracing::error!("cannot read the control state: {e}; the last good state stays in force");
                    }
                }
            }
            true
        }),
    );
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the control-state watcher; changes made elsewhere are not applied");
    }
}
