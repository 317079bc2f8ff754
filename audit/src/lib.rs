//! The audit trail of Invariant: one hash chain of records per corridor (and one, `_server`,
//! for what belongs to no corridor), kept in append-only segment files.
//!
//! A record is one JSON line: `seq` (1, 2, … within its chain), `prev` (the blake3 of the
//! previous record's line, 64 zeros for the first), `chain`, `time` (RFC 3339, UTC,
//! milliseconds), `event`, then the event's own fields. Editing, deleting or reordering a
//! record breaks the link after it, which [`read::verify`] names.
//!
//! Records are written by one thread per [`Trail`] that takes whatever has queued, appends it to
//! each chain's current segment and syncs it (group commit):
//! - [`Mode::Durable`]: a record's [`Commit`] resolves only once its line is on disk, so an
//!   answer that waits for it is never sent unaudited;
//! - [`Mode::Buffered`]: commits resolve at once and lines are synced at least every
//!   `flush_ms`; a crash loses at most that window of records, and the chain stays verifiable
//!   (a torn last line is cut off when the chain is next opened).
//!
//! Several processes may append to the same directory (a server and the CLI, say): each group
//! commit holds the chain's lock file, and a writer that finds the chain changed by another
//! re-reads its head first, so links never fork.

pub mod read;
mod redis_stream;
mod writer;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

/// The chain of records that belong to no corridor (server-wide admin actions, requests that
/// never resolved a corridor).
pub const SERVER_CHAIN: &str = "_server";

/// The `prev` of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// When a record counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Once it is synced to disk: its [`Commit`] waits for the sync.
    Durable,
    /// Once it is queued: lines are synced at least every `flush_ms`.
    #[default]
    Buffered,
}

impl Mode {
    /// `durable` or `buffered`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Durable => "durable",
            Mode::Buffered => "buffered",
        }
    }
}

/// Where and how a trail writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The directory holding one sub-directory per chain.
    pub dir: PathBuf,
    /// Durable or buffered.
    pub mode: Mode,
    /// In buffered mode, the longest time a written line waits for its sync.
    pub flush_ms: u64,
    /// A segment file is closed and a new one started once it would grow past this.
    pub segment_bytes: u64,
    /// Redis to keep the chains in, as one stream per chain (empty: the files in `dir`).
    pub redis_url: String,
}

/// Audit failures.
#[derive(Debug, Error)]
pub enum AuditError {
    /// A file or directory of the trail cannot be used.
    #[error("audit trail {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A chain's files hold something that is not a record of it.
    #[error("audit chain {chain}: {message}")]
    Chain {
        /// The chain.
        chain: String,
        /// What is wrong, and where.
        message: String,
    },
    /// A chain name that is not a corridor id or `_server`.
    #[error("invalid audit chain name '{0}' (letters, digits, '-' and '_', at most 32)")]
    InvalidChain(String),
    /// A record's fields are not a JSON object.
    #[error("audit record: {0}")]
    Record(String),
    /// The record was not written (the writer failed, or the trail is closed).
    #[error("audit record not written: {0}")]
    NotWritten(String),
}

impl AuditError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Whether `name` may name a chain (and so a directory).
pub fn valid_chain(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

/// The current time as records carry it.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The chains of the trail `settings` names (its files, or its Redis), sorted.
pub fn list_chains(settings: &Settings) -> Result<Vec<String>, AuditError> {
    if settings.redis_url.is_empty() {
        read::chains(&settings.dir)
    } else {
        redis_stream::chains(&settings.redis_url)
    }
}

/// Verifies `chain` of the trail `settings` names (see [`read::verify`]).
pub fn verify_chain(settings: &Settings, chain: &str) -> Result<read::Report, AuditError> {
    if !valid_chain(chain) {
        return Err(AuditError::InvalidChain(chain.to_string()));
    }
    if settings.redis_url.is_empty() {
        read::verify(&settings.dir, chain)
    } else {
        redis_stream::verify(&settings.redis_url, chain)
    }
}

/// Calls `visit` with each record of `chain` that passes `filter`, oldest first, from the
/// trail `settings` names (see [`read::read`]).
pub fn read_chain(
    settings: &Settings,
    chain: &str,
    filter: &read::Filter,
    visit: impl FnMut(serde_json::Value) -> std::ops::ControlFlow<()>,
) -> Result<(), AuditError> {
    if !valid_chain(chain) {
        return Err(AuditError::InvalidChain(chain.to_string()));
    }
    if settings.redis_url.is_empty() {
        read::read(&settings.dir, chain, filter, visit)
    } else {
        redis_stream::read(&settings.redis_url, chain, filter, visit)
    }
}

/// The outcome of one append, to wait for before acknowledging what it records.
#[derive(Debug)]
#[must_use = "a durable record is written only when its commit resolves"]
pub struct Commit(CommitState);

#[derive(Debug)]
enum CommitState {
    Done,
    Failed(String),
    Waiting(tokio::sync::oneshot::Receiver<Result<(), String>>),
}

impl Commit {
    /// Resolves once the record counts as written (synced in durable mode), or with why not.
    pub async fn wait(self) -> Result<(), AuditError> {
        match self.0 {
            CommitState::Done => Ok(()),
            CommitState::Failed(why) => Err(AuditError::NotWritten(why)),
            CommitState::Waiting(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(AuditError::NotWritten(why)),
                Err(_) => Err(AuditError::NotWritten("the audit writer stopped".into())),
            },
        }
    }

    /// Whether [`Commit::wait`] has anything to wait for.
    pub fn is_pending(&self) -> bool {
        matches!(self.0, CommitState::Waiting(_))
    }
}

/// An open audit trail: the writer thread and the queue to it. Dropping it writes and syncs
/// everything queued.
#[derive(Debug)]
pub struct Trail {
    settings: Settings,
    queue: std::sync::RwLock<Option<std::sync::mpsc::SyncSender<writer::Pending>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The writer, to wake for records someone waits for.
    writer: std::thread::Thread,
}

/// How many records may wait for the writer before appends block (back-pressure from a slow disk).
pub(crate) const QUEUE: usize = 65_536;

impl Trail {
    /// Opens the trail in `settings.dir`: every existing chain's head is read (a torn last
    /// line from a crash is cut off) and the writer thread is started.
    pub fn open(settings: Settings) -> Result<Self, AuditError> {
        let sink = writer::open_sink(&settings)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let thread_settings = settings.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer::run(thread_settings, sink, rx))
            .map_err(|e| AuditError::io(&settings.dir, e))?;
        Ok(Self {
            settings,
            queue: std::sync::RwLock::new(Some(tx)),
            writer: thread.thread().clone(),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The settings it writes with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn enqueue(
        &self,
        chain: &str,
        event: &str,
        fields: &impl Serialize,
        sync: bool,
        done: writer::Done,
    ) -> Result<(), String> {
        if !valid_chain(chain) {
            return Err(AuditError::InvalidChain(chain.to_string()).to_string());
        }
        let tail = writer::tail(event, fields).map_err(|e| e.to_string())?;
        let pending = writer::Pending {
            chain: chain.to_string(),
            time: now(),
            tail,
            sync,
            done,
        };
        let wake = !matches!(pending.done, writer::Done::None);
        let queue = self.queue.read().unwrap_or_else(|p| p.into_inner());
        let sent = match queue.as_ref() {
            Some(tx) => tx.send(pending).map_err(|_| "the audit writer stopped".to_string()),
            None => Err("the audit trail is closed".into()),
        };
        drop(queue);
        if wake {
            self.writer.unpark();
        }
        sent
    }

    /// Appends a record of `event` with `fields` (a struct or map serialising to a JSON object)
    /// to `chain`. In durable mode the returned commit resolves once the record is synced;
    /// in buffered mode at once.
    pub fn append(&self, chain: &str, event: &str, fields: &impl Serialize) -> Commit {
        let durable = self.settings.mode == Mode::Durable;
        let (done, state) = if durable {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (writer::Done::Async(tx), CommitState::Waiting(rx))
        } else {
            (writer::Done::None, CommitState::Done)
        };
        match self.enqueue(chain, event, fields, durable, done) {
            Ok(()) => Commit(state),
            Err(why) => Commit(CommitState::Failed(why)),
        }
    }

    /// Appends a record and blocks until it is synced, whatever the mode (admin actions:
    /// rare, and never acknowledged unaudited). Call it from blocking code, not from an async
    /// task.
    pub fn append_synced(&self, chain: &str, event: &str, fields: &impl Serialize) -> Result<(), AuditError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.enqueue(chain, event, fields, true, writer::Done::Blocking(tx))
            .map_err(AuditError::NotWritten)?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(AuditError::NotWritten(why)),
            Err(_) => Err(AuditError::NotWritten("the audit writer stopped".into())),
        }
    }

    /// Writes and syncs everything queued, then stops the writer (later appends fail).
    pub fn close(&self) {
        drop(self.queue.write().unwrap_or_else(|p| p.into_inner()).take());
        self.writer.unpark();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Trail {
    fn drop(&mut self) {
        self.close();
    }
}
