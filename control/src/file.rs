//! One fsynced JSON file per document. A swap takes an exclusive lock on the sibling
//! `<file>.lock`, compares the file's revision, and replaces the file atomically (temporary
//! file, fsync, rename, fsync of the directory), so processes sharing the directory never
//! lose one another's change and a crash leaves the old or the new document.

use crate::{revision_of, Backend, ControlError, Stored};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Documents in files.
#[derive(Debug)]
pub struct FileBackend {
    paths: BTreeMap<String, PathBuf>,
}

impl FileBackend {
    /// The backend with these document → file paths.
    pub fn new<S: Into<String>>(paths: impl IntoIterator<Item = (S, PathBuf)>) -> Self {
        Self {
            paths: paths.into_iter().map(|(d, p)| (d.into(), p)).collect(),
        }
    }

    /// The file of `doc`.
    pub fn path(&self, doc: &str) -> Result<&PathBuf, ControlError> {
        self.paths.get(doc).ok_or_else(|| ControlError::Unavailable {
            doc: doc.to_string(),
            place: "files".into(),
            message: "no file is configured for this document".into(),
        })
    }

    fn unavailable(&self, doc: &str, e: impl std::fmt::Display) -> ControlError {
        ControlError::Unavailable {
            doc: doc.to_string(),
            place: self.paths.get(doc).map(|p| p.display().to_string()).unwrap_or_default(),
            message: e.to_string(),
        }
    }

    fn read_file(&self, doc: &str) -> Result<Option<Stored>, ControlError> {
        let path = self.path(doc)?;
        match std::fs::read(path) {
            Ok(bytes) => {
                let revision = revision_of(&bytes).map_err(|e| ControlError::Corrupt {
                    doc: doc.to_string(),
                    place: path.display().to_string(),
                    message: e.to_string(),
                })?;
                Ok(Some(Stored { revision, bytes }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.unavailable(doc, e)),
        }
    }
}

impl Backend for FileBackend {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn place(&self) -> String {
        let dirs: std::collections::BTreeSet<String> = self
            .paths
            .values()
            .map(|p| p.parent().unwrap_or(p).display().to_string())
            .collect();
        dirs.into_iter().collect::<Vec<_>>().join(", ")
    }

    fn read(&self, doc: &str) -> Result<Option<Stored>, ControlError> {
        self.read_file(doc)
    }

    fn revision(&self, doc: &str) -> Result<u64, ControlError> {
        Ok(self.read_file(doc)?.map_or(0, |s| s.revision))
    }

    fn swap(&self, doc: &str, expected: u64, next: &Stored) -> Result<(), ControlError> {
        let path = self.path(doc)?;
        let _lock = invariant_core::durable::lock_exclusive(path).map_err(|e| self.unavailable(doc, e))?;
        let current = self.read_file(doc)?.map_or(0, |s| s.revision);
        if current != expected {
            return Err(ControlError::Conflict {
                doc: doc.to_string(),
                expected,
                current,
            });
        }
        invariant_core::durable::write_atomic(path, &next.bytes).map_err(|e| self.unavailable(doc, e))
    }

    fn durability(&self) -> String {
        "fsynced file".into()
    }
}
