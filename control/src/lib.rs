//! The shared control state of Invariant: what operators change at run time (the registry's
//! lifecycle and history, governance switches, limits and flags, API keys), as named JSON
//! documents. Each document is a JSON object whose top-level `revision` counts its changes.
//!
//! A document changes only by compare-and-set on that revision ([`Backend::swap`]): a change
//! built on a stale revision is refused with [`ControlError::Conflict`], never written over a
//! newer one. [`Control::update`] retries such a change on the fresh document, so callers that
//! do not name a revision never lose one another's change; callers that do name one get the
//! conflict (an HTTP 409). A swap returns only once the change is durable.
//!
//! Two backends: [`file::FileBackend`] (one fsynced file per document, changed under an
//! exclusive lock: one node, or processes sharing a directory) and [`redis_backend::RedisBackend`]
//! (one hash per document, swapped by a script that also publishes the change: replicas).
//! [`watch::spawn`] keeps a process converged: it applies notified changes at once, re-reads
//! every revision after a reconnect and at least every poll period, so a missed notification
//! delays a change by one period at most.

pub mod file;
pub mod redis_backend;
pub mod watch;

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::sync::Arc;
use thiserror::Error;

/// The registry document: lifecycle, canaries and history.
pub const REGISTRY: &str = "registry";
/// The governance document: switches, freezes, limits, levels, flags.
pub const GOVERNANCE: &str = "governance";
/// The API key document.
pub const KEYS: &str = "keys";
/// Every document, in the order they are checked.
pub const DOCUMENTS: [&str; 3] = [REGISTRY, GOVERNANCE, KEYS];

/// How many times [`Control::update`] rebuilds a change that lost a race before refusing it.
pub const MAX_ATTEMPTS: usize = 64;

/// Control-state failures.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The backend cannot be read or written.
    #[error("control state '{doc}' in {place}: {message}")]
    Unavailable {
        /// The document.
        doc: String,
        /// Where (a path or a redacted URL).
        place: String,
        /// What failed.
        message: String,
    },
    /// The stored document is not what it should be.
    #[error("control state '{doc}' in {place} is corrupt: {message}")]
    Corrupt {
        /// The document.
        doc: String,
        /// Where.
        place: String,
        /// Why.
        message: String,
    },
    /// The change was built on an older revision than the stored one.
    #[error(
        "revision conflict on '{doc}': the change was made against revision {expected}, the state is at {current}"
    )]
    Conflict {
        /// The document.
        doc: String,
        /// The revision the change was built on.
        expected: u64,
        /// The revision stored now.
        current: u64,
    },
}

/// One stored document: its revision and its JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The document's revision.
    pub revision: u64,
    /// Its JSON.
    pub bytes: Vec<u8>,
}

/// Where control documents live.
pub trait Backend: Send + Sync + Debug {
    /// `file` or `redis`.
    fn kind(&self) -> &'static str;
    /// Where, for messages (a path, or a URL without its password).
    fn place(&self) -> String;
    /// The document now; `None` when it was never written (revision 0).
    fn read(&self, doc: &str) -> Result<Option<Stored>, ControlError>;
    /// The document's revision now (0 when never written), reading as little as possible.
    fn revision(&self, doc: &str) -> Result<u64, ControlError>;
    /// Stores `next` if the stored revision is still `expected`, durably before returning;
    /// otherwise [`ControlError::Conflict`] with the stored revision.
    fn swap(&self, doc: &str, expected: u64, next: &Stored) -> Result<(), ControlError>;
    /// How the backend makes an acknowledged change durable, in words (for health and logs).
    fn durability(&self) -> String;
    /// The notification channel, when the backend has one: (Redis URL, channel).
    fn notifications(&self) -> Option<(String, String)> {
        None
    }
}

/// A control document: JSON with its revision.
pub trait Document: Serialize + DeserializeOwned + Default {
    /// Its name in the backend.
    const NAME: &'static str;
    /// Its revision.
    fn revision(&self) -> u64;
    /// Checks and normalises a document as read (e.g. one written by an older release);
    /// an error makes it corrupt.
    fn loaded(self) -> Result<Self, String> {
        Ok(self)
    }
}

/// A typed view over a backend.
#[derive(Debug, Clone)]
pub struct Control {
    backend: Arc<dyn Backend>,
}

/// The revision of a document's JSON (its top-level `revision`, 0 when absent).
pub fn revision_of(bytes: &[u8]) -> Result<u64, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        revision: u64,
    }
    serde_json::from_slice::<Head>(bytes).map(|h| h.revision)
}

impl Control {
    /// A view over `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn corrupt(&self, doc: &str, e: impl std::fmt::Display) -> ControlError {
        ControlError::Corrupt {
            doc: doc.to_string(),
            place: self.backend.place(),
            message: e.to_string(),
        }
    }

    /// The document now (the default, at revision 0, when never written).
    pub fn load<D: Document>(&self) -> Result<D, ControlError> {
        match self.backend.read(D::NAME)? {
            None => Ok(D::default()),
            Some(stored) => serde_json::from_slice::<D>(&stored.bytes)
                .map_err(|e| e.to_string())
                .and_then(D::loaded)
                .map_err(|e| self.corrupt(D::NAME, e)),
        }
    }

    /// Stores `next` if the stored revision is still `expected` (durably, before returning).
    pub fn swap<D: Document>(&self, expected: u64, next: &D) -> Result<(), ControlError> {
        let bytes = serde_json::to_vec_pretty(next).map_err(|e| self.corrupt(D::NAME, e))?;
        self.backend.swap(
            D::NAME,
            expected,
            &Stored {
                revision: next.revision(),
                bytes,
            },
        )
    }

    /// Applies `change` to the newest document and stores the result by compare-and-set;
    /// when another writer got there first, `change` runs again on the fresher document (up
    /// to [`MAX_ATTEMPTS`] times). `change` returns the next document (with a higher revision)
    /// and a value for the caller; its error stops the update. With `expected`, a document
    /// already past that revision is refused with a conflict instead of retried.
    pub fn update<D, T, E>(
        &self,
        expected: Option<u64>,
        mut change: impl FnMut(&D) -> Result<(D, T), E>,
    ) -> Result<(D, T), E>
    where
        D: Document,
        E: From<ControlError>,
    {
        let mut last = 0;
        for _ in 0..MAX_ATTEMPTS {
            let latest: D = self.load()?;
            if let Some(expected) = expected.filter(|&e| e != latest.revision()) {
                return Err(ControlError::Conflict {
                    doc: D::NAME.to_string(),
                    expected,
                    current: latest.revision(),
                }
                .into());
            }
            let (next, out) = change(&latest)?;
            if next.revision() <= latest.revision() {
                return Err(self
                    .corrupt(
                        D::NAME,
                        format!(
                            "a change must raise the revision ({} is not above {})",
                            next.revision(),
                            latest.revision()
                        ),
                    )
                    .into());
            }
            match self.swap(latest.revision(), &next) {
                Ok(()) => return Ok((next, out)),
                Err(ControlError::Conflict { current, .. }) if expected.is_none() => last = current,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlError::Conflict {
            doc: D::NAME.to_string(),
            expected: last,
            current: last,
        }
        .into())
    }

    /// Copies a document from an earlier home into this backend, once: only when the backend
    /// has never stored it. Returns whether it copied.
    pub fn adopt(&self, doc: &str, bytes: &[u8]) -> Result<bool, ControlError> {
        if self.backend.read(doc)?.is_some() {
            return Ok(false);
        }
        let revision = revision_of(bytes).map_err(|e| self.corrupt(doc, e))?;
        match self.backend.swap(
            doc,
            0,
            &Stored {
                revision,
                bytes: bytes.to_vec(),
            },
        ) {
            Ok(()) => Ok(true),
            // Another process adopted it first.
            Err(ControlError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
    struct Counter {
        revision: u64,
        seen: Vec<String>,
    }

    impl Document for Counter {
        const NAME: &'static str = "registry";
        fn revision(&self) -> u64 {
            self.revision
        }
    }

    fn push(who: &str) -> impl FnMut(&Counter) -> Result<(Counter, ()), ControlError> + '_ {
        move |c: &Counter| {
            let mut next = c.clone();
            next.revision += 1;
            next.seen.push(who.to_string());
            Ok((next, ()))
        }
    }

    #[test]
    fn concurrent_updates_on_one_directory_lose_nothing_and_stale_revisions_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // Each thread has its own backend, as separate processes would.
                    let control = Control::new(Arc::new(file::FileBackend::new([(REGISTRY, path)])));
                    for i in 0..25 {
                        control
                            .update::<Counter, _, _>(None, push(&format!("{t}-{i}")))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let control = Control::new(Arc::new(file::FileBackend::new([(REGISTRY, path)])));
        let c: Counter = control.load().unwrap();
        assert_eq!(c.revision, 100);
        let mut seen = c.seen.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 100, "every change exactly once");
        let err = control.update::<Counter, _, _>(Some(99), push("stale")).unwrap_err();
        assert!(
            matches!(
                err,
                ControlError::Conflict {
                    expected: 99,
                    current: 100,
                    ..
                }
            ),
            "{err}"
        );
        let stale = Counter {
            revision: 100,
            seen: vec![],
        };
        assert!(matches!(control.swap(98, &stale), Err(ControlError::Conflict { .. })));
        assert_eq!(control.load::<Counter>().unwrap().seen.len(), 100);
    }

    #[test]
    fn adopting_copies_once() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::new(Arc::new(file::FileBackend::new([(
            REGISTRY,
            dir.path().join("r.json"),
        )])));
        assert!(control.adopt(REGISTRY, br#"{"revision": 7, "seen": ["old"]}"#).unwrap());
        assert!(!control.adopt(REGISTRY, br#"{"revision": 9, "seen": []}"#).unwrap());
        let c: Counter = control.load().unwrap();
        assert_eq!((c.revision, c.seen), (7, vec!["old".to_string()]));
    }
}
