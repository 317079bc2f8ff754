//! The durable store of the [`ControlState`]: the governance document of the shared control
//! state (`invariant_control`), changed by compare-and-set on its revision (in a file or in
//! Redis), durable before a change is acknowledged, so processes sharing it (a server and the
//! CLI, or several replicas) never lose one another's change. [`StateStore::refresh`] picks up
//! changes made elsewhere.

use crate::state::{Change, ChangeError, ControlState, Topology};
use arc_swap::ArcSwap;
use invariant_control::{Control, ControlError, Document};
use std::sync::{Arc, Mutex};
use thiserror::Error;

impl Document for ControlState {
    const NAME: &'static str = invariant_control::GOVERNANCE;

    fn revision(&self) -> u64 {
        self.revision
    }
}

/// Store failures.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The state cannot be read or written.
    #[error(transparent)]
    Unavailable(ControlError),
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

impl From<ControlError> for StoreError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Conflict { expected, current, .. } => StoreError::Conflict { expected, current },
            other => StoreError::Unavailable(other),
        }
    }
}

/// The governance document and the last state read from or written to it.
#[derive(Debug)]
pub struct StateStore {
    control: Control,
    current: ArcSwap<ControlState>,
    write: Mutex<()>,
}

impl StateStore {
    /// Opens the governance document of `control` (never written: the empty state at
    /// revision 0).
    pub fn open(control: Control) -> Result<Self, StoreError> {
        let state = control.load::<ControlState>()?;
        Ok(Self {
            control,
            current: ArcSwap::from_pointee(state),
            write: Mutex::new(()),
        })
    }

    /// Where the state is kept, for messages.
    pub fn place(&self) -> String {
        self.control.backend().place()
    }

    /// The state as last read or written (cheap: no file access).
    pub fn current(&self) -> Arc<ControlState> {
        self.current.load_full()
    }

    /// A guard on the state as last read or written, for the hot path (no reference count).
    pub fn peek(&self) -> arc_swap::Guard<Arc<ControlState>> {
        self.current.load()
    }

    /// Re-reads the stored revision; returns the new state when it moved on.
    pub fn refresh(&self) -> Result<Option<Arc<ControlState>>, StoreError> {
        let stored = self.control.backend().revision(invariant_control::GOVERNANCE)?;
        if stored <= self.current.load().revision {
            return Ok(None);
        }
        let fresh = Arc::new(self.control.load::<ControlState>()?);
        let _one = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if fresh.revision <= self.current.load().revision {
            return Ok(None);
        }
        self.current.store(fresh.clone());
        Ok(Some(fresh))
    }

    /// Applies `change` by `actor` to the newest stored state, when `expected` (if given) is
    /// still its revision (without it, a change that lost a race is rebuilt on the fresher
    /// state), and makes it durable before returning the new state.
    pub fn update(
        &self,
        change: &Change,
        actor: &str,
        expected: Option<u64>,
        topology: &Topology,
    ) -> Result<Arc<ControlState>, StoreError> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let (next, ()) = self.control.update::<ControlState, _, StoreError>(expected, |latest| {
            Ok((latest.apply(change, actor, &now, topology)?, ()))
        })?;
        let next = Arc::new(next);
        let _one = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if next.revision > self.current.load().revision {
            self.current.store(next.clone());
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Scope;

    fn open(path: &std::path::Path) -> StateStore {
        let backend = invariant_control::file::FileBackend::new([(invariant_control::GOVERNANCE, path.to_path_buf())]);
        StateStore::open(Control::new(Arc::new(backend))).unwrap()
    }

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
        let store = open(&path);
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
        let reopened = open(&path);
        assert_eq!(reopened.current().revision, 1);
        assert_eq!(reopened.current().switches.values().next().unwrap().reason, "one");
    }

    #[test]
    fn a_second_store_on_the_same_file_sees_and_builds_on_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governance.json");
        let a = open(&path);
        let b = open(&path);
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
        let stores: Vec<Arc<StateStore>> = (0..4).map(|_| Arc::new(open(&path))).collect();
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
        let s = open(&path).current();
        assert_eq!(s.revision, 40);
        assert_eq!(s.flags[&Scope::Global].len(), 40);
    }
}
