//! The audit trail of the serving core: every inference (the [`AuditGuard`], an observe step
//! of the guard pipeline, so HTTP, gRPC and stored-reply answers alike) and every admin action
//! (verifications, transitions, loads and unloads, governance changes, feature writes) is a
//! record in its corridor's hash chain ([`invariant_audit`]); what belongs to no corridor goes
//! to the `_server` chain.
//!
//! In durable mode an answer waits for its record's sync before it is sent: no acknowledged
//! answer is unaudited. Refusals and failures are recorded without waiting (nothing was
//! acknowledged). Requests without a valid key are not recorded (they are counted in the
//! metrics), so an unauthenticated flood cannot fill the disk.

use crate::guards::{Answer, AnswerOutputs, Guard, Outcome, Pending, RequestContext};
use crate::ServeError;
use invariant_audit::{AuditError, Trail, SERVER_CHAIN};
use invariant_core::Tensor;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// The trail and what the configuration asks of it.
#[derive(Debug)]
pub struct AuditLog {
    trail: Trail,
    inference: bool,
    retain: BTreeSet<String>,
}

/// The chain of `corridor`, or `_server` for none.
pub fn chain_of(corridor: Option<&str>) -> &str {
    corridor.unwrap_or(SERVER_CHAIN)
}

impl AuditLog {
    /// Opens the configured trail.
    pub fn open(config: &crate::config::Config) -> Result<Self, AuditError> {
        Ok(Self {
            trail: Trail::open(config.audit_settings())?,
            inference: config.audit.inference,
            retain: config
                .audit
                .models
                .iter()
                .filter(|(_, m)| m.retain_inputs)
                .map(|(name, _)| name.clone())
                .collect(),
        })
    }

    /// Where the chains live.
    pub fn dir(&self) -> &Path {
        &self.trail.settings().dir
    }

    /// The trail itself.
    pub fn trail(&self) -> &Trail {
        &self.trail
    }

    /// Whether inference records keep `model`'s inputs.
    pub fn retains(&self, model: &str) -> bool {
        self.inference && self.retain.contains(model)
    }

    /// Records an admin action in `corridor`'s chain (`None`: `_server`) and waits for its
    /// sync, whatever the mode. A failure is logged and counted, and returned.
    pub fn record(&self, corridor: Option<&str>, event: &str, fields: &impl Serialize) -> Result<(), AuditError> {
        let result = self.trail.append_synced(chain_of(corridor), event, fields);
        if let Err(e) = &result {
            tracing::error!(error = %e, event, "cannot write an audit record");
        }
        result
    }
}

/// What an inference record keeps of the inputs, when its model retains them.
#[derive(Debug, Clone)]
pub struct Retained {
    /// The inputs as the engine saw them (signature order, features included), in the
    /// canonical list encoding, base64.
    pub inputs: String,
    /// The outputs returned, in order.
    pub outputs: Vec<String>,
    /// The version's artifact content hash.
    pub artifact_hash: String,
}

impl Retained {
    /// What a record keeps of `inputs` (in signature order) for `outputs`.
    pub fn new(inputs: &[Tensor], outputs: Vec<String>, artifact_hash: &str) -> Self {
        use base64::Engine;
        let refs: Vec<&Tensor> = inputs.iter().collect();
        Self {
            inputs: base64::engine::general_purpose::STANDARD.encode(invariant_core::hash::encode_list(&refs)),
            outputs,
            artifact_hash: artifact_hash.to_string(),
        }
    }

    /// The inputs back, from a record's `inputs` field.
    pub fn decode_inputs(encoded: &str) -> Option<Vec<Tensor>> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
        invariant_core::hash::decode_list(&bytes)
    }
}

/// The blake3 (hex) of outputs in the order returned: what an inference record's
/// `output_hash` holds and a replay recomputes.
pub fn output_hash(outputs: &[Tensor]) -> String {
    let refs: Vec<&Tensor> = outputs.iter().collect();
    blake3::hash(&invariant_core::hash::encode_list(&refs))
        .to_hex()
        .to_string()
}

/// One inference record's own fields (the trail adds `seq`, `prev`, `chain`, `time`).
#[derive(Debug, Serialize)]
struct InferenceRecord<'a> {
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    transport: &'static str,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_hash: Option<std::borrow::Cow<'a, str>>,
    source: &'static str,
    degraded: bool,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    caller: Option<&'a str>,
    rows: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<&'a [String]>,
}

/// Model names longer than this are cut in records (a name the server does not know comes
/// from the caller).
const MAX_NAME: usize = 128;

fn bounded(s: &str) -> &str {
    if s.len() <= MAX_NAME {
        return s;
    }
    let mut end = MAX_NAME;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes the record of every authenticated inference; in durable mode, answers wait for it.
#[derive(Debug)]
pub struct AuditGuard {
    log: Arc<AuditLog>,
}

impl AuditGuard {
    /// A guard writing to `log`.
    pub fn new(log: Arc<AuditLog>) -> Self {
        Self { log }
    }
}

impl Guard for AuditGuard {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn observe_pending(&self, ctx: &RequestContext<'_>, outcome: &Outcome<'_>) -> Option<Pending> {
        let caller = ctx.caller?;
        if !self.log.inference {
            return None;
        }
        let answer: Option<&Answer<'_>> = outcome.answer.as_ref();
        let retained = answer.and_then(|a| a.retained);
        let record = InferenceRecord {
            request_id: ctx.request_id,
            id: ctx.body_id,
            transport: ctx.transport.name(),
            model: bounded(ctx.model),
            version: ctx.version,
            routing: ctx.routing.map(crate::Routing::name),
            input_hash: answer.map(|a| a.key),
            output_hash: answer.map(|a| match a.outputs {
                AnswerOutputs::Tensors(t) => std::borrow::Cow::Owned(output_hash(t)),
                AnswerOutputs::Hash(h) => std::borrow::Cow::Borrowed(h),
            }),
            source: match outcome.result {
                Ok(s) => s.name(),
                Err(_) => "error",
            },
            degraded: answer.is_some_and(|a| a.degraded),
            status: match outcome.result {
                Ok(_) => 200,
                Err(e) => e.kind().code(),
            },
            error: outcome.result.err().map(|e| e.kind().name()),
            caller: Some(caller.id()),
            rows: outcome.rows,
            artifact_hash: retained.map(|r| r.artifact_hash.as_str()),
            inputs: retained.map(|r| r.inputs.as_str()),
            outputs: retained.map(|r| r.outputs.as_slice()),
        };
        let commit = self.log.trail.append(chain_of(ctx.corridor), "inference", &record);
        // Only answers wait: a refusal or failure acknowledges nothing.
        if outcome.result.is_err() || !commit.is_pending() {
            // The record is written all the same; nobody waits for it.
            drop(commit);
            return None;
        }
        Some(Box::pin(async move {
            commit
                .wait()
                .await
                .map_err(|e| ServeError::unavailable(format!("the answer could not be audited: {e}")))
        }))
    }
}

/// The audit record of one deploy-time verification (event `verification`).
#[derive(Debug, Clone, Serialize)]
pub struct VerificationRecord {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Whether the version may serve.
    pub passed: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Content hash of the artifacts.
    pub content_hash: String,
    /// blake3 of the golden file (empty when there is none).
    pub golden_hash: String,
    /// Runtime name.
    pub engine: String,
    /// Runtime version.
    pub runtime_version: String,
    /// See [`VerificationRecord::verification_hash`].
    pub verification_hash: String,
}

impl VerificationRecord {
    /// A record for a verification about to run (not passed yet).
    pub fn new(model: &str, version: &str, content_hash: String, engine: &str, runtime_version: &str) -> Self {
        Self {
            model: model.into(),
            version: version.into(),
            passed: false,
            reason: None,
            content_hash,
            golden_hash: String::new(),
            engine: engine.into(),
            runtime_version: runtime_version.into(),
            verification_hash: String::new(),
        }
    }

    /// blake3 over the artifact content hash, the golden file hash, the engine and its version:
    /// equal hashes mean the same bits were verified against the same expectations by the
    /// same runtime. Also stored in the record.
    pub fn verification_hash(&mut self) -> String {
        let parts = [
            &self.content_hash,
            &self.golden_hash,
            &self.engine,
            &self.runtime_version,
        ];
        self.verification_hash = invariant_core::hash::parts_hash(parts.map(|p| p.as_bytes()))
            .to_hex()
            .to_string();
        self.verification_hash.clone()
    }
}
