//! The durable store of the [`ControlState`]: one JSON file, changed by compare-and-set on its
//! revision under an exclusive lock on a sibling `.lock` file (so processes sharing the file,
//! a server and the CLI or several replicas, never lose one another's change), written
//! atomically (temporary file, fsync, rename, fsync of the directory) before a change is
//! acknowledged. [`StateStore::refresh`] picks up changes made by other processes.

use crate::state::{Change, ChangeError, ControlState, Topology};
use arc_swap::ArcSwap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Store failures.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The file cannot be read, locked or written.
    #[error("control state {path}: {message}")]
    Io {
        /// The state file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The change was made against an older revision.
    #[error("revision conflict: the change was made against revision {expected}, the state is at {current}")]
    Conflict {
        /// The revision the caller saw.
        expected: u64,
        /// The revision now.
        current: u64,
    },
    /// The change itself is refused.
    #[error(transparent)]
    Change(#[from] ChangeError),
}

/// The state file and the last state read from or written to it.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    current: ArcSwap<ControlState>,
    write: Mutex<()>,
}

impl StateStore {
    /// Opens the store at `path` (absent: the empty state at revision 0; created on the first
    /// change).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let state = read(&path)?;
        Ok(Self {
            path,
            current: ArcSwap::from_pointee(state),
            write: Mutex::new(()),
        })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state as last read or written (cheap: no file access).
    pub fn current(&self) -> Arc<ControlState> {
        self.current.load_full()
    }

    /// A guard on the state as last read or written, for the hot path (no reference count).
    pub fn peek(&self) -> arc_swap::Guard<Arc<ControlState>> {
        self.current.load()
    }

    /// Re-reads the file; returns the new state when another process changed it.
    pub fn refresh(&self) -> Result<Option<Arc<ControlState>>, StoreError> {
        let on_disk = read(&self.path)?;
        if on_disk.revision == self.current.load().revision {
            return Ok(None);
        }
        let on_disk = Arc::new(on_disk);
        self.current.store(on_disk.clone());
        Ok(Some(on_disk))
    }

    /// Applies `change` by `actor` to the newest state on disk, when `expected` (if given) is
    /// still its revision, and makes it durable before returning the new state.
    pub fn update(
        &self,
        change: &Change,
        actor: &str,
        expected: Option<u64>,
        topology: &Topology,
    ) -> Result<Arc<ControlState>, StoreError> {
        let _one = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = self.lock()?;
        let latest = read(&self.path)?;
        if let Some(expected) = expected.filter(|&e| e != latest.revision) {
            return Err(StoreError::Conflict {
                expected,
                current: latest.revision,
            });
        }
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let next = Arc::new(latest.apply(change, actor, &now, topology)?);
        write(&self.path, &next).map_err(|e| self.io(e))?;
        self.current.store(next.clone());
        Ok(next)
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// An exclusive lock on `<file>.lock`, held until dropped.
    fn lock(&self) -> Result<File, StoreError> {
        invariant_core::durable::lock_exclusive(&self.path).map_err(|e| self.io(e))
    }
}

fn read(path: &Path) -> Result<ControlState, StoreError> {
    let err = |message: String| StoreError::Io {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(format!("not a control state: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ControlState::default()),
        Err(e) => Err(err(e.to_string())),
    }
}

fn write(path: &Path, state: &ControlState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    invariant_core::durable::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Scope;

    fn topology() -> Topology {
        Topology {
            corridors: [("UAE-SA".to_string(), 0)].into_iter().collect(),
        }
    }

    fn kill(reason: &str) -> Change {
        Change::Kill {
            scope: Scope::Corridor("UAE-SA".into()),
            reason: reason.into(),
        }
    }

    #[test]
    fn changes_survive_reopening_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/governance.json");
        let store = StateStore::open(&path).unwrap();
        assert_eq!(store.current().revision, 0);
        let s = store.update(&kill("one"), "ops", Some(0), &topology()).unwrap();
        assert_eq!(s.revision, 1);
        let err = store.update(&kill("stale"), "ops", Some(0), &topology()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 0,
                    current: 1
                }
            ),
            "{err}"
        );
        let reopened = StateStore::open(&path).unwrap();
        assert_eq!(reopened.current().revision, 1);
        assert_eq!(reopened.current().switches.values().next().unwrap().reason, "one");
    }

    #[test]
    fn a_second_store_on_the_same_file_sees_and_builds_on_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governance.json");
        let a = StateStore::open(&path).unwrap();
        let b = StateStore::open(&path).unwrap();
        a.update(&kill("from a"), "a", None, &topology()).unwrap();
        // b has not refreshed, yet its change applies to the newest state on disk.
        let s = b
            .update(
                &Change::Freeze {
                    scope: Scope::Corridor("UAE-SA".into()),
                    reason: "from b".into(),
                },
                "b",
                None,
                &topology(),
            )
            .unwrap();
        assert_eq!(s.revision, 2);
        assert_eq!(s.switches.len(), 1);
        assert!(a.refresh().unwrap().is_some());
        assert_eq!(a.current().freezes.len(), 1);
        assert!(a.refresh().unwrap().is_none());
    }

    #[test]
    fn concurrent_changes_from_many_threads_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governance.json");
        let stores: Vec<Arc<StateStore>> = (0..4).map(|_| Arc::new(StateStore::open(&path).unwrap())).collect();
        let threads: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for j in 0..10 {
                        s.update(
                            &Change::SetFlag {
                                scope: Scope::Global,
                                name: format!("f{i}-{j}"),
                                value: true,
                            },
                            "t",
                            None,
                            &topology(),
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = StateStore::open(&path).unwrap().current();
        assert_eq!(s.revision, 40);
        assert_eq!(s.flags[&Scope::Global].len(), 40);
    }
}
