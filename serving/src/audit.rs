//! The audit log: one JSON object per line, appended and synced to disk before the call
//! returns. Deploy-time verifications are recorded here.

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// An append-only JSON-lines file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    lock: Mutex<()>,
}

impl AuditLog {
    /// An audit log at `path` (created, with its directory, on first append).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    /// Where records go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and fsyncs it.
    pub fn append(&self, record: &impl Serialize) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
    }
}

/// The record of one deploy-time verification.
#[derive(Debug, Clone, Serialize)]
pub struct VerificationRecord {
    /// Always `verification`.
    pub event: &'static str,
    /// RFC 3339 time.
    pub time: String,
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
            event: "verification",
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
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
        let mut h = blake3::Hasher::new();
        for part in [
            &self.content_hash,
            &self.golden_hash,
            &self.engine,
            &self.runtime_version,
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        self.verification_hash = h.finalize().to_hex().to_string();
        self.verification_hash.clone()
    }
}
