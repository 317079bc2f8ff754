//! Corridor governance for Invariant: what lets an operator act on one corridor, market or
//! model without touching the others, and what degrades a corridor by itself.
//!
//! - [`state`]: the control state (kill switches, freezes, rate-limit overrides,
//!   degradation-level overrides, feature flags) and its changes;
//! - [`store`]: its durable file, changed by compare-and-set on the revision, shared by every
//!   process that opens it;
//! - [`limiter`]: GCRA buckets per market, corridor and model within a corridor;
//! - [`breaker`]: circuit breakers per model within each corridor;
//! - [`signals`]: per-corridor windows of latency and failures, and the level they compute.
//!
//! [`Governance`] puts them together behind the checks the serving core's guard runs. The
//! crate knows nothing of HTTP, gRPC or engines.

pub mod breaker;
pub mod limiter;
pub mod signals;
pub mod state;
pub mod store;

use breaker::{BreakerChange, BreakerSettings, Breakers};
use limiter::{Defaults, Exhausted, Limiters};
use serde::{Deserialize, Serialize};
use signals::{DegradationSettings, Summary, Window};
use state::{Change, ControlState, Scope, Setting, Topology, EMERGENCY_SWITCH};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::{StateStore, StoreError};

/// The `[governance]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Whether the governance guard runs at all (off: no switches, limits or breakers; for
    /// measuring what it costs).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The governance document's file under the file control backend (empty:
    /// `governance.json` in the state directory).
    #[serde(default)]
    pub state: String,
    /// How often degradation levels are recomputed (and level changes audited), in ms.
    #[serde(default = "default_refresh")]
    pub refresh_ms: u64,
    /// Inference requests per second admitted per corridor, by the corridor's market
    /// (`"0" = 200`); a corridor's own `rate_limit` overrides it. 0 or absent: unlimited.
    #[serde(default)]
    pub corridor_rate: BTreeMap<String, f64>,
    /// Requests per second admitted per market, all its corridors together.
    #[serde(default)]
    pub market_rate: BTreeMap<String, f64>,
    /// Requests per second per model within each corridor (0: unlimited).
    #[serde(default)]
    pub model_rate: f64,
    /// Circuit breakers.
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// Computed degradation levels.
    #[serde(default)]
    pub degradation: DegradationSettings,
}

fn yes() -> bool {
    true
}
fn default_refresh() -> u64 {
    250
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            enabled: true,
            state: String::new(),
            refresh_ms: default_refresh(),
            corridor_rate: BTreeMap::new(),
            market_rate: BTreeMap::new(),
            model_rate: 0.0,
            breaker: BreakerSettings::default(),
            degradation: DegradationSettings::default(),
        }
    }
}

/// A settings value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("governance.{0}")]
pub struct SettingsError(pub String);

impl Settings {
    /// Checks the numbers; the markets named must be numbers.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (table, rates) in [
            ("corridor_rate", &self.corridor_rate),
            ("market_rate", &self.market_rate),
        ] {
            for (k, v) in rates {
                if k.parse::<u32>().is_err() {
                    return Err(SettingsError(format!("{table}: '{k}' is not a market number")));
                }
                if !v.is_finite() || *v < 0.0 {
                    return Err(SettingsError(format!("{table}.{k}: must be 0 or a positive rate")));
                }
            }
        }
        if !self.model_rate.is_finite() || self.model_rate < 0.0 {
            return Err(SettingsError("model_rate: must be 0 or a positive rate".into()));
        }
        if !self.breaker.open_seconds.is_finite() || self.breaker.open_seconds < 0.0 {
            return Err(SettingsError("breaker.open_seconds: must be 0 or more".into()));
        }
        Ok(())
    }

    fn market_rate(&self, table: &BTreeMap<String, f64>, market: u32) -> Option<f64> {
        table.get(&market.to_string()).copied().filter(|r| *r > 0.0)
    }
}

/// Why a request or a feature write is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A kill switch is on.
    Killed {
        /// The switch's scope.
        scope: Scope,
        /// Who, when, why.
        setting: Setting,
    },
    /// The corridor or its market is frozen.
    Frozen {
        /// The freeze's scope.
        scope: Scope,
        /// Who, when, why.
        setting: Setting,
    },
    /// A rate-limit bucket is empty.
    Limited(Exhausted),
    /// The model's circuit breaker in this corridor is open.
    BreakerOpen {
        /// Corridor.
        corridor: String,
        /// Model.
        model: String,
        /// Until it lets a trial request through.
        retry_after: Duration,
    },
    /// The corridor's degradation level forbids this.
    Degraded {
        /// Corridor.
        corridor: String,
        /// Its level.
        level: u8,
        /// What is refused at that level.
        what: &'static str,
    },
}

impl Refusal {
    /// Seconds a client should wait (rate limits and open breakers), rounded up, at least 1.
    pub fn retry_after_s(&self) -> Option<u64> {
        let d = match self {
            Refusal::Limited(e) => e.retry_after,
            Refusal::BreakerOpen { retry_after, .. } => *retry_after,
            _ => return None,
        };
        Some(d.as_secs_f64().ceil().max(1.0) as u64)
    }
}

fn switch_name(scope: &Scope) -> String {
    match scope {
        Scope::Global => EMERGENCY_SWITCH.to_string(),
        other => other.to_string(),
    }
}

/// `<since> (by <actor>): <reason>`.
fn who(setting: &Setting) -> String {
    let reason = if setting.reason.is_empty() {
        "no reason given"
    } else {
        &setting.reason
    };
    format!("{} (by {}): {reason}", setting.since, setting.actor)
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Killed { scope, setting } => {
                write!(f, "kill switch '{}' is on since {}", switch_name(scope), who(setting))
            }
            Refusal::Frozen { scope, setting } => write!(f, "'{scope}' is frozen since {}", who(setting)),
            Refusal::Limited(e) => write!(
                f,
                "rate limit of '{}' exceeded ({} requests/s, burst {}); retry in {} ms",
                e.scope,
                e.limit.rate_per_s,
                e.limit.burst,
                e.retry_after.as_millis().max(1)
            ),
            Refusal::BreakerOpen {
                corridor,
                model,
                retry_after,
            } => write!(
                f,
                "circuit breaker of model '{model}' in corridor {corridor} is open after repeated failures; \
                 it lets a trial request through in {} ms",
                retry_after.as_millis().max(1)
            ),
            Refusal::Degraded { corridor, level, what } => {
                write!(
                    f,
                    "corridor {corridor} is at degradation level {level} ({}): {what}",
                    level_name(*level)
                )
            }
        }
    }
}

/// The name of a degradation level.
pub fn level_name(level: u8) -> &'static str {
    match level {
        0 => "full service",
        1 => "AI degraded",
        2 => "corridor degraded",
        3 => "corridor isolated",
        _ => "emergency",
    }
}

/// What an admitted request may do, beyond the entry checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// The corridor's effective degradation level.
    pub level: u8,
    /// Set while the model's breaker in this corridor is open: time until a trial.
    pub breaker_open: Option<Duration>,
}

/// A change of a corridor's effective degradation level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelChange {
    /// Corridor.
    pub corridor: String,
    /// Level before.
    pub from: u8,
    /// Level now.
    pub to: u8,
    /// Why (operator setting, emergency switch or the signal that crossed its limit).
    pub reason: String,
}

/// A corridor's governance, for the health and admin views.
#[derive(Debug, Clone, Serialize)]
pub struct CorridorStatus {
    /// Corridor.
    pub corridor: String,
    /// Market.
    pub market: Option<u32>,
    /// Effective degradation level.
    pub level: u8,
    /// Its name.
    pub level_name: &'static str,
    /// The level the signals compute.
    pub computed_level: u8,
    /// The operator's level, if set.
    pub operator_level: Option<u8>,
    /// The window's signals.
    pub signals: Summary,
    /// The kill switch over the corridor itself (global, market or corridor), if any.
    pub killed: Option<String>,
    /// The freeze over it, if any.
    pub frozen: Option<String>,
    /// Its rate limit (requests/s), if any.
    pub rate_limit: Option<f64>,
    /// Breakers that are not closed, model → state.
    pub breakers: BTreeMap<String, &'static str>,
    /// Feature flags in force.
    pub flags: BTreeMap<String, bool>,
}

/// The control state compiled for the hot path, per corridor: the kill switch over the whole
/// corridor (global, market or its own, widest first), the model kill switches (every
/// corridor's, then this corridor's own), and the freeze. Looked up without allocating.
#[derive(Debug, Default)]
struct Rules {
    corridors: BTreeMap<String, CorridorRules>,
}

#[derive(Debug, Default)]
struct CorridorRules {
    kill: Option<Refusal>,
    models: BTreeMap<String, Refusal>,
    freeze: Option<Refusal>,
}

impl Rules {
    fn compile(state: &ControlState, topology: &Topology) -> Self {
        let killed = |scope: &Scope| {
            state.switches.get(scope).map(|setting| Refusal::Killed {
                scope: scope.clone(),
                setting: setting.clone(),
            })
        };
        let corridors = topology
            .corridors
            .iter()
            .map(|(corridor, market)| {
                let mut rules = CorridorRules::default();
                let wide = [Scope::Global, Scope::Market(*market), Scope::Corridor(corridor.clone())];
                rules.kill = wide.iter().find_map(killed);
                for scope in state.switches.keys() {
                    let model = match scope {
                        Scope::Model(m) => m,
                        Scope::ModelInCorridor { model, corridor: c } if c == corridor => model,
                        _ => continue,
                    };
                    // Scopes sort widest first (`model:M` before `model:M@C`): the wider
                    // switch names the refusal.
                    if let Some(r) = killed(scope) {
                        rules.models.entry(model.clone()).or_insert(r);
                    }
                }
                rules.freeze = state
                    .freeze_for(Some(*market), corridor)
                    .map(|(scope, setting)| Refusal::Frozen {
                        scope,
                        setting: setting.clone(),
                    });
                (corridor.clone(), rules)
            })
            .collect();
        Self { corridors }
    }
}

/// One corridor's live state.
#[derive(Debug)]
struct CorridorLive {
    window: Window,
    computed: AtomicU8,
    effective: AtomicU8,
}

/// Switches, freezes, limits, breakers and levels of every corridor.
#[derive(Debug)]
pub struct Governance {
    settings: Settings,
    topology: Topology,
    store: StateStore,
    rules: arc_swap::ArcSwap<Rules>,
    limiters: Limiters,
    breakers: Breakers,
    live: BTreeMap<String, CorridorLive>,
}

impl Governance {
    /// Opens the governance document of `control` for these corridors (corridor → market) with their
    /// configured rate limits (corridor → requests/s; absent: by market from the settings).
    pub fn open(
        settings: Settings,
        topology: Topology,
        corridor_rates: &BTreeMap<String, f64>,
        control: invariant_control::Control,
    ) -> Result<Self, StoreError> {
        let store = StateStore::open(control)?;
        let mut defaults = Defaults {
            model: Some(settings.model_rate).filter(|r| *r > 0.0),
            ..Default::default()
        };
        for (corridor, market) in &topology.corridors {
            let rate = corridor_rates
                .get(corridor)
                .copied()
                .or_else(|| settings.market_rate(&settings.corridor_rate, *market));
            if let Some(r) = rate.filter(|r| *r > 0.0) {
                defaults.corridor.insert(corridor.clone(), r);
            }
            if let Some(r) = settings.market_rate(&settings.market_rate, *market) {
                defaults.market.insert(*market, r);
            }
        }
        let limiters = Limiters::new(defaults, &store.current().limits);
        let rules = arc_swap::ArcSwap::from_pointee(Rules::compile(&store.current(), &topology));
        let live = topology
            .corridors
            .keys()
            .map(|c| {
                (
                    c.clone(),
                    CorridorLive {
                        window: Window::new(settings.degradation.window_seconds),
                        computed: AtomicU8::new(0),
                        effective: AtomicU8::new(0),
                    },
                )
            })
            .collect();
        let g = Self {
            breakers: Breakers::new(settings.breaker.clone()),
            settings,
            topology,
            store,
            rules,
            limiters,
            live,
        };
        g.tick();
        Ok(g)
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The corridors and their markets.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The control state now.
    pub fn state(&self) -> Arc<ControlState> {
        self.store.current()
    }

    /// Where the state is kept (a path or a Redis URL without its password).
    pub fn state_place(&self) -> String {
        self.store.place()
    }

    /// Kill switches, freezes and rate limits over an inference request for `model` in
    /// `corridor` (the checks that need no body).
    pub fn admit(&self, corridor: &str, model: &str) -> Result<(), Refusal> {
        let market = self.topology.market(corridor);
        {
            let rules = self.rules.load();
            if let Some(c) = rules.corridors.get(corridor) {
                if let Some(r) = c.kill.as_ref().or_else(|| c.models.get(model)).or(c.freeze.as_ref()) {
                    return Err(r.clone());
                }
            }
        }
        self.limiters.take(market, corridor, model).map_err(Refusal::Limited)
    }

    /// The corridor's level and the model's breaker, for a request already admitted (an open
    /// breaker past its time turns half-open here).
    pub fn mode(&self, corridor: &str, model: &str) -> (Mode, Option<BreakerChange>) {
        let level = self.level(corridor);
        let (breaker_open, change) = self.breakers.check(corridor, model);
        (Mode { level, breaker_open }, change)
    }

    /// The mode without side effects (whether a stored reply may answer as is).
    pub fn is_full_service(&self, corridor: &str, model: &str) -> bool {
        self.level(corridor) == 0 && self.breakers.check_peek(corridor, model)
    }

    /// The corridor's effective degradation level.
    pub fn level(&self, corridor: &str) -> u8 {
        self.live
            .get(corridor)
            .map_or(0, |l| l.effective.load(Ordering::Relaxed))
    }

    /// Records how a request that reached the cache or an engine ended: its latency, whether
    /// it failed in a way that counts (engine error, timeout), for the breaker and the
    /// corridor's window. `answered` is false for refusals and client errors, which count for
    /// neither.
    pub fn observe(&self, corridor: &str, model: &str, latency: Duration, failed: bool) -> Option<BreakerChange> {
        if let Some(l) = self.live.get(corridor) {
            l.window.record(latency, failed);
        }
        self.breakers.record(corridor, model, !failed)
    }

    /// Whether feature rows may be written in `corridor` (not while it is killed, frozen or at
    /// level 3 or more).
    pub fn feature_write(&self, corridor: &str) -> Result<(), Refusal> {
        self.feature_access(corridor, 3, "feature writes are refused")
    }

    /// Whether feature rows may be read in `corridor` (not while it is killed, frozen or in
    /// emergency).
    pub fn feature_read(&self, corridor: &str) -> Result<(), Refusal> {
        self.feature_access(corridor, 4, "every request is refused")
    }

    /// Refused while `corridor` is killed or frozen, or at level `refused_from` or more.
    fn feature_access(&self, corridor: &str, refused_from: u8, what: &'static str) -> Result<(), Refusal> {
        self.corridor_open(corridor)?;
        let level = self.level(corridor);
        if level >= refused_from {
            return Err(Refusal::Degraded {
                corridor: corridor.to_string(),
                level,
                what,
            });
        }
        Ok(())
    }

    fn corridor_open(&self, corridor: &str) -> Result<(), Refusal> {
        let rules = self.rules.load();
        match rules
            .corridors
            .get(corridor)
            .and_then(|c| c.kill.as_ref().or(c.freeze.as_ref()))
        {
            Some(r) => Err(r.clone()),
            None => Ok(()),
        }
    }

    fn applied(&self, state: &ControlState) {
        self.limiters.set_overrides(&state.limits);
        self.rules.store(Arc::new(Rules::compile(state, &self.topology)));
    }

    /// Makes a change durable (compare-and-set on `expected` when given) and applies it here.
    pub fn change(&self, change: &Change, actor: &str, expected: Option<u64>) -> Result<Arc<ControlState>, StoreError> {
        let state = self.store.update(change, actor, expected, &self.topology)?;
        self.applied(&state);
        Ok(state)
    }

    /// Re-reads the state file and applies what other processes changed; `Ok(true)` when
    /// something changed. On an error (an unreadable or malformed file) the last good state
    /// stays in force.
    pub fn refresh(&self) -> Result<bool, StoreError> {
        Ok(match self.store.refresh()? {
            Some(state) => {
                self.applied(&state);
                true
            }
            None => false,
        })
    }

    /// Recomputes every corridor's level; returns the level changes.
    pub fn tick(&self) -> Vec<LevelChange> {
        let state = self.store.current();
        let emergency = state.switches.get(&Scope::Global);
        let mut changes = Vec::new();
        for (corridor, live) in &self.live {
            let (computed, why) = self.settings.degradation.level_of(&live.window.summary());
            live.computed.store(computed, Ordering::Relaxed);
            let (level, reason) = if let Some(s) = emergency {
                (4, format!("{EMERGENCY_SWITCH} is on: {}", s.reason))
            } else if let Some(op) = state.levels.get(corridor) {
                (op.level, format!("set by {}: {}", op.setting.actor, op.setting.reason))
            } else {
                (computed, why)
            };
            let before = live.effective.swap(level, Ordering::Relaxed);
            if before != level {
                changes.push(LevelChange {
                    corridor: corridor.clone(),
                    from: before,
                    to: level,
                    reason,
                });
            }
        }
        changes
    }

    /// Every corridor's governance.
    pub fn corridors(&self) -> Vec<CorridorStatus> {
        let state = self.store.current();
        let breakers = self.breakers.states();
        let limits = self.limiters.limits();
        self.live
            .iter()
            .map(|(corridor, live)| {
                let market = self.topology.market(corridor);
                CorridorStatus {
                    corridor: corridor.clone(),
                    market,
                    level: live.effective.load(Ordering::Relaxed),
                    level_name: level_name(live.effective.load(Ordering::Relaxed)),
                    computed_level: live.computed.load(Ordering::Relaxed),
                    operator_level: state.levels.get(corridor).map(|l| l.level),
                    signals: live.window.summary(),
                    killed: self.corridor_open(corridor).err().and_then(|r| match r {
                        Refusal::Killed { scope, .. } => Some(switch_name(&scope)),
                        _ => None,
                    }),
                    frozen: state.freeze_for(market, corridor).map(|(s, _)| s.to_string()),
                    rate_limit: limits.get(&Scope::Corridor(corridor.clone())).map(|l| l.rate_per_s),
                    breakers: breakers
                        .get(corridor)
                        .map(|m| {
                            m.iter()
                                .filter(|(_, s)| s.name() != "closed")
                                .map(|(k, s)| (k.clone(), s.name()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    flags: state.flags_for(market, Some(corridor)),
                }
            })
            .collect()
    }

    /// The rate limit in force per scope.
    pub fn limits(&self) -> BTreeMap<Scope, state::Limit> {
        self.limiters.limits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path, settings: Settings) -> Governance {
        let topology = Topology {
            corridors: [("A".to_string(), 0), ("B".to_string(), 0), ("C".to_string(), 1)]
                .into_iter()
                .collect(),
        };
        let backend =
            invariant_control::file::FileBackend::new([(invariant_control::GOVERNANCE, dir.join("governance.json"))]);
        let control = invariant_control::Control::new(std::sync::Arc::new(backend));
        Governance::open(settings, topology, &BTreeMap::new(), control).unwrap()
    }

    fn change(g: &Governance, c: Change) {
        g.change(&c, "test", None).unwrap();
    }

    fn refused(g: &Governance, corridor: &str, model: &str) -> Option<String> {
        g.admit(corridor, model).err().map(|r| r.to_string())
    }

    #[test]
    fn every_switch_scope_refuses_its_requests_only() {
        let dir = tempfile::tempdir().unwrap();
        let g = open(dir.path(), Settings::default());
        let kill = |scope: &str| Change::Kill {
            scope: scope.parse().unwrap(),
            reason: scope.to_string(),
        };
        let revive = |scope: &str| Change::Revive {
            scope: scope.parse().unwrap(),
        };
        // (scope, refused (corridor, model) pairs, admitted pairs)
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: [(&str, Pairs, Pairs); 5] = [
            ("global", &[("A", "m"), ("C", "n")], &[]),
            ("market:0", &[("A", "m"), ("B", "n")], &[("C", "m")]),
            ("corridor:B", &[("B", "m"), ("B", "n")], &[("A", "m"), ("C", "m")]),
            ("model:m", &[("A", "m"), ("C", "m")], &[("A", "n")]),
            ("model:m@C", &[("C", "m")], &[("A", "m"), ("C", "n")]),
        ];
        for (scope, refused_pairs, admitted) in cases {
            change(&g, kill(scope));
            for (c, m) in refused_pairs {
                let why = refused(&g, c, m).unwrap_or_else(|| panic!("{scope}: {c}/{m} admitted"));
                assert!(why.contains(scope) || why.contains(EMERGENCY_SWITCH), "{why}");
            }
            for (c, m) in admitted {
                assert_eq!(refused(&g, c, m), None, "{scope}: {c}/{m} refused");
            }
            change(&g, revive(scope));
        }
        // A market freeze covers its corridors and their feature writes, nothing else.
        change(
            &g,
            Change::Freeze {
                scope: Scope::Market(1),
                reason: "audit".into(),
            },
        );
        assert!(refused(&g, "C", "m").unwrap().contains("frozen"));
        assert!(g.feature_write("C").is_err());
        assert!(g.feature_write("A").is_ok());
        assert_eq!(refused(&g, "A", "m"), None);
    }

    #[test]
    fn market_and_model_limits_come_from_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            market_rate: [("0".to_string(), 3.0)].into_iter().collect(),
            model_rate: 2.0,
            ..Settings::default()
        };
        let g = open(dir.path(), settings);
        // The model limit (2/s) of m in A, then the market's (3/s) across A and B.
        g.admit("A", "m").unwrap();
        g.admit("A", "m").unwrap();
        assert!(refused(&g, "A", "m").unwrap().contains("model:m@A"));
        g.admit("B", "m").unwrap();
        assert!(refused(&g, "B", "n").unwrap().contains("market:0"));
        // Market 1 has no limit of its own.
        for _ in 0..10 {
            g.admit("C", "x").ok();
        }
        assert_eq!(refused(&g, "C", "y"), None);
    }
}
