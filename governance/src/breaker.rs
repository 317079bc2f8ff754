//! Circuit breakers, one per model within each corridor: open after `failures` consecutive
//! failures, half-open after `open_seconds`, closed again after `successes` successes in a
//! row (a failure while half-open opens it again).

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Breaker thresholds (the platform's defaults: 5 failures, 30 s, 3 successes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Seconds an open breaker refuses before it lets trial requests through.
    #[serde(default = "default_open_seconds")]
    pub open_seconds: f64,
    /// Consecutive successes while half-open that close it.
    #[serde(default = "default_successes")]
    pub successes: u32,
}

fn default_failures() -> u32 {
    5
}
fn default_open_seconds() -> f64 {
    30.0
}
fn default_successes() -> u32 {
    3
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: default_failures(),
            open_seconds: default_open_seconds(),
            successes: default_successes(),
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Serving; counting consecutive failures.
    Closed {
        /// Failures in a row so far.
        failures: u32,
    },
    /// Refusing until `since + open_seconds`.
    Open {
        /// When it opened.
        since: Instant,
    },
    /// Letting requests through on trial.
    HalfOpen {
        /// Successes in a row so far.
        successes: u32,
    },
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

/// A change of a breaker's state, for logs, metrics and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerChange {
    /// Corridor.
    pub corridor: String,
    /// Model.
    pub model: String,
    /// `closed`, `open` or `half_open`.
    pub from: &'static str,
    /// The new state's name.
    pub to: &'static str,
}

type Cell = Arc<Mutex<BreakerState>>;

/// Corridor → model → breaker.
type Cells = BTreeMap<String, BTreeMap<String, Cell>>;

/// Every corridor's breakers, created on a model's first failure (no breaker: closed). The
/// map is read through an `ArcSwap` (no lock on the request path) and replaced, under
/// `create`, when a breaker is created.
#[derive(Debug)]
pub struct Breakers {
    settings: BreakerSettings,
    cells: ArcSwap<Cells>,
    create: Mutex<()>,
}

impl Breakers {
    /// Breakers with these thresholds.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            cells: ArcSwap::from_pointee(BTreeMap::new()),
            create: Mutex::new(()),
        }
    }

    fn open_for(&self) -> Duration {
        Duration::from_secs_f64(self.settings.open_seconds.max(0.0))
    }

    fn cell(&self, corridor: &str, model: &str) -> Option<Cell> {
        self.cells.load().get(corridor)?.get(model).cloned()
    }

    /// `Some(retry after)` while `model`'s breaker in `corridor` is open; an open breaker past
    /// its time turns half-open here and lets the request through.
    pub fn check(&self, corridor: &str, model: &str) -> (Option<Duration>, Option<BreakerChange>) {
        let Some(cell) = self.cell(corridor, model) else {
            return (None, None);
        };
        let mut state = cell.lock().unwrap_or_else(|p| p.into_inner());
        match *state {
            BreakerState::Open { since } => {
                let elapsed = since.elapsed();
                let open_for = self.open_for();
                if elapsed < open_for {
                    (Some(open_for - elapsed), None)
                } else {
                    *state = BreakerState::HalfOpen { successes: 0 };
                    (None, Some(self.change(corridor, model, "open", "half_open")))
                }
            }
            _ => (None, None),
        }
    }

    /// Whether `model`'s breaker in `corridor` lets requests through now (no side effects).
    pub fn check_peek(&self, corridor: &str, model: &str) -> bool {
        let Some(cell) = self.cell(corridor, model) else {
            return true;
        };
        let state = *cell.lock().unwrap_or_else(|p| p.into_inner());
        !matches!(state, BreakerState::Open { since } if since.elapsed() < self.open_for())
    }

    /// The state of every breaker that exists, by corridor and model.
    pub fn states(&self) -> BTreeMap<String, BTreeMap<String, BreakerState>> {
        self.cells
            .load()
            .iter()
            .map(|(c, models)| {
                (
                    c.clone(),
                    models
                        .iter()
                        .map(|(m, cell)| (m.clone(), *cell.lock().unwrap_or_else(|p| p.into_inner())))
                        .collect(),
                )
            })
            .collect()
    }

    fn change(&self, corridor: &str, model: &str, from: &'static str, to: &'static str) -> BreakerChange {
        BreakerChange {
            corridor: corridor.to_string(),
            model: model.to_string(),
            from,
            to,
        }
    }

    /// Records a call's result: `true` for an answer, `false` for a failure that counts
    /// (an engine error or a timeout).
    pub fn record(&self, corridor: &str, model: &str, ok: bool) -> Option<BreakerChange> {
        let cell = match (self.cell(corridor, model), ok) {
            (Some(cell), _) => cell,
            // Success with no breaker: nothing to count.
            (None, true) => return None,
            (None, false) => {
                let _one = self.create.lock().unwrap_or_else(|p| p.into_inner());
                let mut cells = (**self.cells.load()).clone();
                let cell = cells
                    .entry(corridor.to_string())
                    .or_default()
                    .entry(model.to_string())
                    .or_insert_with(|| Arc::new(Mutex::new(BreakerState::Closed { failures: 0 })))
                    .clone();
                self.cells.store(Arc::new(cells));
                cell
            }
        };
        let mut state = cell.lock().unwrap_or_else(|p| p.into_inner());
        let before = state.name();
        *state = match (*state, ok) {
            (BreakerState::Closed { .. }, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false) if failures + 1 >= self.settings.failures.max(1) => {
                BreakerState::Open { since: Instant::now() }
            }
            (BreakerState::Closed { failures }, false) => BreakerState::Closed { failures: failures + 1 },
            (BreakerState::HalfOpen { successes }, true) if successes + 1 >= self.settings.successes.max(1) => {
                BreakerState::Closed { failures: 0 }
            }
            (BreakerState::HalfOpen { successes }, true) => BreakerState::HalfOpen {
                successes: successes + 1,
            },
            (BreakerState::HalfOpen { .. }, false) => BreakerState::Open { since: Instant::now() },
            // Results of calls admitted before it opened change nothing.
            (open @ BreakerState::Open { .. }, _) => open,
        };
        let after = state.name();
        (before != after).then(|| self.change(corridor, model, before, after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_half_opens_and_closes() {
        let b = Breakers::new(BreakerSettings {
            failures: 3,
            open_seconds: 0.05,
            successes: 2,
        });
        assert_eq!(b.check("A", "m"), (None, None));
        assert!(b.record("A", "m", false).is_none());
        assert!(b.record("A", "m", true).is_none()); // resets the count
        b.record("A", "m", false);
        b.record("A", "m", false);
        let opened = b.record("A", "m", false).unwrap();
        assert_eq!((opened.from, opened.to), ("closed", "open"));
        assert!(b.check("A", "m").0.is_some());
        assert_eq!(b.check("B", "m").0, None, "another corridor's breaker is untouched");
        assert_eq!(b.check("A", "other").0, None, "another model's breaker is untouched");
        std::thread::sleep(Duration::from_millis(60));
        let (retry, change) = b.check("A", "m");
        assert!(retry.is_none());
        assert_eq!(change.unwrap().to, "half_open");
        // A failure while half-open opens it again.
        assert_eq!(b.record("A", "m", false).unwrap().to, "open");
        std::thread::sleep(Duration::from_millis(60));
        b.check("A", "m");
        assert!(b.record("A", "m", true).is_none());
        assert_eq!(b.record("A", "m", true).unwrap().to, "closed");
    }
}
