//! The control state: what operators set (kill switches, freezes, rate-limit overrides,
//! degradation-level overrides, feature flags), as one versioned value, and the changes that
//! move it from one revision to the next.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// The name the global kill switch answers with (the platform's emergency flag).
pub const EMERGENCY_SWITCH: &str = "FF_EMERGENCY_DISABLE_ALL";

/// Where a control applies. Written `global`, `market:0`, `corridor:UAE-SA`,
/// `model:risk-assessor` or `model:risk-assessor@UAE-SA` (a model within one corridor).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Everything.
    Global,
    /// Every corridor of a market.
    Market(u32),
    /// One corridor.
    Corridor(String),
    /// One model, in every corridor.
    Model(String),
    /// One model within one corridor.
    ModelInCorridor {
        /// Model name.
        model: String,
        /// Corridor id.
        corridor: String,
    },
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Market(m) => write!(f, "market:{m}"),
            Scope::Corridor(c) => write!(f, "corridor:{c}"),
            Scope::Model(m) => write!(f, "model:{m}"),
            Scope::ModelInCorridor { model, corridor } => write!(f, "model:{model}@{corridor}"),
        }
    }
}

/// A scope that does not parse.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("scope '{0}': expected global, market:<n>, corridor:<id>, model:<name> or model:<name>@<corridor>")]
pub struct ScopeError(pub String);

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ScopeError(s.to_string());
        if s == "global" {
            return Ok(Scope::Global);
        }
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "market" => rest.parse().map(Scope::Market).map_err(|_| bad()),
            "corridor" if valid_name(rest) => Ok(Scope::Corridor(rest.to_ascii_uppercase())),
            "model" => match rest.split_once('@') {
                Some((model, corridor)) if valid_name(model) && valid_name(corridor) => Ok(Scope::ModelInCorridor {
                    model: model.to_string(),
                    corridor: corridor.to_ascii_uppercase(),
                }),
                None if valid_name(rest) => Ok(Scope::Model(rest.to_string())),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Who set a control, when and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    /// Why.
    pub reason: String,
    /// RFC 3339 time it was set.
    pub since: String,
    /// Who set it.
    pub actor: String,
}

/// A rate-limit override: requests per second and the bucket's size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// Sustained requests per second.
    pub rate_per_s: f64,
    /// Requests that may arrive at once (the bucket's capacity).
    pub burst: u32,
}

/// An operator's degradation level for a corridor (overrides the computed level).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSetting {
    /// 0 full … 4 emergency.
    pub level: u8,
    /// Who, when, why.
    #[serde(flatten)]
    pub setting: Setting,
}

/// Every control operators have set, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    /// Bumped by every change.
    pub revision: u64,
    /// Kill switches by scope.
    #[serde(default)]
    pub switches: BTreeMap<Scope, Setting>,
    /// Freezes (markets and corridors).
    #[serde(default)]
    pub freezes: BTreeMap<Scope, Setting>,
    /// Rate-limit overrides (markets, corridors, models within a corridor).
    #[serde(default)]
    pub limits: BTreeMap<Scope, Limit>,
    /// Degradation-level overrides by corridor.
    #[serde(default)]
    pub levels: BTreeMap<String, LevelSetting>,
    /// Feature flags by scope (global, markets, corridors).
    #[serde(default)]
    pub flags: BTreeMap<Scope, BTreeMap<String, bool>>,
}

/// One change to the control state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Turns a kill switch on.
    Kill {
        /// Where.
        scope: Scope,
        /// Why.
        reason: String,
    },
    /// Turns a kill switch off.
    Revive {
        /// Where.
        scope: Scope,
    },
    /// Freezes a market or corridor.
    Freeze {
        /// Where.
        scope: Scope,
        /// Why.
        reason: String,
    },
    /// Lifts a freeze.
    Unfreeze {
        /// Where.
        scope: Scope,
    },
    /// Sets a rate limit.
    SetLimit {
        /// Where.
        scope: Scope,
        /// Requests per second.
        rate_per_s: f64,
        /// Bucket size (default: one second's worth, at least 1).
        #[serde(default)]
        burst: Option<u32>,
    },
    /// Goes back to the configured limit.
    ClearLimit {
        /// Where.
        scope: Scope,
    },
    /// Sets a corridor's degradation level.
    SetLevel {
        /// Corridor id.
        corridor: String,
        /// 0–4.
        level: u8,
        /// Why.
        reason: String,
    },
    /// Goes back to the computed level.
    ClearLevel {
        /// Corridor id.
        corridor: String,
    },
    /// Sets a feature flag.
    SetFlag {
        /// Where (global, market, corridor).
        scope: Scope,
        /// Flag name.
        name: String,
        /// Value.
        value: bool,
    },
    /// Removes a feature flag at one scope.
    ClearFlag {
        /// Where.
        scope: Scope,
        /// Flag name.
        name: String,
    },
}

impl Change {
    /// The one corridor this change is confined to, if it is (a corridor scope, a model
    /// within a corridor, a corridor's level); `None` for changes that reach more.
    pub fn corridor(&self) -> Option<&str> {
        let scope = match self {
            Change::SetLevel { corridor, .. } | Change::ClearLevel { corridor } => return Some(corridor),
            Change::Kill { scope, .. }
            | Change::Revive { scope }
            | Change::Freeze { scope, .. }
            | Change::Unfreeze { scope }
            | Change::SetLimit { scope, .. }
            | Change::ClearLimit { scope }
            | Change::SetFlag { scope, .. }
            | Change::ClearFlag { scope, .. } => scope,
        };
        match scope {
            Scope::Corridor(c) | Scope::ModelInCorridor { corridor: c, .. } => Some(c),
            Scope::Global | Scope::Market(_) | Scope::Model(_) => None,
        }
    }
}

/// What the state may name: the declared corridors and their markets.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Corridor id → market.
    pub corridors: BTreeMap<String, u32>,
}

impl Topology {
    /// The market of `corridor`.
    pub fn market(&self, corridor: &str) -> Option<u32> {
        self.corridors.get(corridor).copied()
    }

    fn check(&self, scope: &Scope) -> Result<(), ChangeError> {
        let corridor = |c: &str| {
            if self.corridors.contains_key(c) {
                Ok(())
            } else {
                Err(ChangeError::Invalid(format!(
                    "scope '{scope}': unknown corridor '{c}' (declared: {})",
                    self.corridors.keys().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
        };
        match scope {
            Scope::Market(m) if !self.corridors.values().any(|x| x == m) => Err(ChangeError::Invalid(format!(
                "scope '{scope}': no corridor is in market {m}"
            ))),
            Scope::Corridor(c) | Scope::ModelInCorridor { corridor: c, .. } => corridor(c),
            _ => Ok(()),
        }
    }
}

/// A change that cannot be made.
#[derive(Debug, Error, PartialEq)]
pub enum ChangeError {
    /// The change names something that does not exist or a value out of range.
    #[error("{0}")]
    Invalid(String),
    /// The change asks to undo something that is not set.
    #[error("{0}")]
    NotSet(String),
}

impl ControlState {
    /// The state after `change`, made by `actor` at `now` (RFC 3339), with the revision bumped.
    pub fn apply(&self, change: &Change, actor: &str, now: &str, topology: &Topology) -> Result<Self, ChangeError> {
        let mut next = self.clone();
        let setting = |reason: &str| Setting {
            reason: reason.to_string(),
            since: now.to_string(),
            actor: actor.to_string(),
        };
        let invalid = |m: String| Err(ChangeError::Invalid(m));
        match change {
            Change::Kill { scope, reason } => {
                topology.check(scope)?;
                next.switches.insert(scope.clone(), setting(reason));
            }
            Change::Revive { scope } => {
                if next.switches.remove(scope).is_none() {
                    return Err(ChangeError::NotSet(format!("no kill switch is on for '{scope}'")));
                }
            }
            Change::Freeze { scope, reason } => {
                if !matches!(scope, Scope::Market(_) | Scope::Corridor(_)) {
                    return invalid(format!("scope '{scope}': only a market or a corridor can be frozen"));
                }
                topology.check(scope)?;
                next.freezes.insert(scope.clone(), setting(reason));
            }
            Change::Unfreeze { scope } => {
                if next.freezes.remove(scope).is_none() {
                    return Err(ChangeError::NotSet(format!("'{scope}' is not frozen")));
                }
            }
            Change::SetLimit {
                scope,
                rate_per_s,
                burst,
            } => {
                if !matches!(
                    scope,
                    Scope::Market(_) | Scope::Corridor(_) | Scope::ModelInCorridor { .. }
                ) {
                    return invalid(format!(
                        "scope '{scope}': rate limits apply to a market, a corridor or a model within a corridor"
                    ));
                }
                topology.check(scope)?;
                if !rate_per_s.is_finite() || *rate_per_s <= 0.0 || *rate_per_s > 1e9 {
                    return invalid(format!(
                        "rate_per_s: must be a positive number of requests per second (got {rate_per_s})"
                    ));
                }
                let burst = match burst {
                    Some(0) => return invalid("burst: must be at least 1".into()),
                    Some(b) => *b,
                    None => default_burst(*rate_per_s),
                };
                next.limits.insert(
                    scope.clone(),
                    Limit {
                        rate_per_s: *rate_per_s,
                        burst,
                    },
                );
            }
            Change::ClearLimit { scope } => {
                if next.limits.remove(scope).is_none() {
                    return Err(ChangeError::NotSet(format!(
                        "no rate-limit override is set for '{scope}'"
                    )));
                }
            }
            Change::SetLevel {
                corridor,
                level,
                reason,
            } => {
                let corridor = corridor.to_ascii_uppercase();
                topology.check(&Scope::Corridor(corridor.clone()))?;
                if *level > 4 {
                    return invalid(format!("level: must be 0 to 4 (got {level})"));
                }
                next.levels.insert(
                    corridor,
                    LevelSetting {
                        level: *level,
                        setting: setting(reason),
                    },
                );
            }
            Change::ClearLevel { corridor } => {
                if next.levels.remove(&corridor.to_ascii_uppercase()).is_none() {
                    return Err(ChangeError::NotSet(format!(
                        "corridor '{corridor}' has no operator-set level"
                    )));
                }
            }
            Change::SetFlag { scope, name, value } => {
                if !matches!(scope, Scope::Global | Scope::Market(_) | Scope::Corridor(_)) {
                    return invalid(format!(
                        "scope '{scope}': flags are set globally, per market or per corridor"
                    ));
                }
                topology.check(scope)?;
                if !valid_name(name) {
                    return invalid(format!(
                        "name: '{name}' is not a flag name (letters, digits, '-', '_', '.'; at most 128)"
                    ));
                }
                next.flags
                    .entry(scope.clone())
                    .or_default()
                    .insert(name.clone(), *value);
            }
            Change::ClearFlag { scope, name } => {
                let removed = next.flags.get_mut(scope).and_then(|f| f.remove(name));
                if removed.is_none() {
                    return Err(ChangeError::NotSet(format!("flag '{name}' is not set at '{scope}'")));
                }
                if next.flags.get(scope).is_some_and(BTreeMap::is_empty) {
                    next.flags.remove(scope);
                }
            }
        }
        next.revision = self.revision + 1;
        Ok(next)
    }

    /// The kill switch that stops `model` in `corridor` (of `market`), narrowest scope last
    /// checked: global, market, corridor, model, model-in-corridor.
    pub fn kill_for(&self, market: Option<u32>, corridor: &str, model: &str) -> Option<(Scope, &Setting)> {
        if self.switches.is_empty() {
            return None;
        }
        scopes(market, corridor, Some(model))
            .into_iter()
            .find_map(|s| self.switches.get(&s).map(|v| (s, v)))
    }

    /// The freeze over `corridor` (its own, else its market's).
    pub fn freeze_for(&self, market: Option<u32>, corridor: &str) -> Option<(Scope, &Setting)> {
        if self.freezes.is_empty() {
            return None;
        }
        scopes(market, corridor, None)
            .into_iter()
            .find_map(|s| self.freezes.get(&s).map(|v| (s, v)))
    }

    /// The flags in force for a corridor: global ones, overridden by its market's, overridden
    /// by its own (`corridor` `None`: global ones only).
    pub fn flags_for(&self, market: Option<u32>, corridor: Option<&str>) -> BTreeMap<String, bool> {
        let mut out = BTreeMap::new();
        let mut chain = vec![Scope::Global];
        if let Some(m) = market {
            chain.push(Scope::Market(m));
        }
        if let Some(c) = corridor {
            chain.push(Scope::Corridor(c.to_string()));
        }
        for s in chain {
            if let Some(f) = self.flags.get(&s) {
                out.extend(f.iter().map(|(k, v)| (k.clone(), *v)));
            }
        }
        out
    }
}

/// One second's worth of requests, at least 1.
pub fn default_burst(rate_per_s: f64) -> u32 {
    rate_per_s.ceil().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// The scopes over a request, widest first.
fn scopes(market: Option<u32>, corridor: &str, model: Option<&str>) -> Vec<Scope> {
    let mut out = vec![Scope::Global];
    if let Some(m) = market {
        out.push(Scope::Market(m));
    }
    out.push(Scope::Corridor(corridor.to_string()));
    if let Some(model) = model {
        out.push(Scope::Model(model.to_string()));
        out.push(Scope::ModelInCorridor {
            model: model.to_string(),
            corridor: corridor.to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology {
            corridors: [("UAE-SA".to_string(), 0), ("UK-NG".to_string(), 1)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn scopes_round_trip_through_text() {
        for text in [
            "global",
            "market:1",
            "corridor:UAE-SA",
            "model:risk-assessor",
            "model:risk-assessor@UK-NG",
        ] {
            let s: Scope = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
        }
        assert_eq!(
            "corridor:uae-sa".parse::<Scope>().unwrap().to_string(),
            "corridor:UAE-SA"
        );
        for bad in ["", "market:x", "corridor:", "model:a@", "planet:mars", "model:a b"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kill_is_hierarchical_and_leaves_other_scopes_alone() {
        let t = topology();
        let s = ControlState::default()
            .apply(
                &Change::Kill {
                    scope: "model:risk-assessor@UAE-SA".parse().unwrap(),
                    reason: "bad".into(),
                },
                "ops",
                "2026-12-01T00:00:00Z",
                &t,
            )
            .unwrap();
        assert_eq!(s.revision, 1);
        assert!(s.kill_for(Some(0), "UAE-SA", "risk-assessor").is_some());
        assert!(s.kill_for(Some(1), "UK-NG", "risk-assessor").is_none());
        assert!(s.kill_for(Some(0), "UAE-SA", "trust-scorer").is_none());
        let s = s
            .apply(
                &Change::Kill {
                    scope: Scope::Market(1),
                    reason: "market".into(),
                },
                "ops",
                "t",
                &t,
            )
            .unwrap();
        let (scope, setting) = s.kill_for(Some(1), "UK-NG", "anything").unwrap();
        assert_eq!(scope, Scope::Market(1));
        assert_eq!(setting.reason, "market");
    }

    #[test]
    fn changes_are_validated() {
        let t = topology();
        let s = ControlState::default();
        let kill_unknown = Change::Kill {
            scope: Scope::Corridor("XX-YY".into()),
            reason: String::new(),
        };
        assert!(matches!(s.apply(&kill_unknown, "a", "t", &t), Err(ChangeError::Invalid(m)) if m.contains("XX-YY")));
        let freeze_model = Change::Freeze {
            scope: Scope::Model("m".into()),
            reason: String::new(),
        };
        assert!(s.apply(&freeze_model, "a", "t", &t).is_err());
        let zero = Change::SetLimit {
            scope: Scope::Corridor("UAE-SA".into()),
            rate_per_s: 0.0,
            burst: None,
        };
        assert!(s.apply(&zero, "a", "t", &t).is_err());
        let level = Change::SetLevel {
            corridor: "UAE-SA".into(),
            level: 5,
            reason: String::new(),
        };
        assert!(s.apply(&level, "a", "t", &t).is_err());
        assert!(matches!(
            s.apply(&Change::Revive { scope: Scope::Global }, "a", "t", &t),
            Err(ChangeError::NotSet(_))
        ));
    }

    #[test]
    fn flags_resolve_narrowest_scope_last() {
        let t = topology();
        let set = |s: ControlState, scope: Scope, v: bool| {
            s.apply(
                &Change::SetFlag {
                    scope,
                    name: "new-ui".into(),
                    value: v,
                },
                "a",
                "t",
                &t,
            )
            .unwrap()
        };
        let s = set(ControlState::default(), Scope::Global, true);
        let s = set(s, Scope::Market(1), false);
        assert!(s.flags_for(Some(0), Some("UAE-SA"))["new-ui"]);
        assert!(!s.flags_for(Some(1), Some("UK-NG"))["new-ui"]);
        let s = set(s, Scope::Corridor("UK-NG".into()), true);
        assert!(s.flags_for(Some(1), Some("UK-NG"))["new-ui"]);
    }

    #[test]
    fn state_serializes_with_scope_keys() {
        let t = topology();
        let s = ControlState::default()
            .apply(
                &Change::Freeze {
                    scope: Scope::Corridor("UK-NG".into()),
                    reason: "audit".into(),
                },
                "a",
                "t",
                &t,
            )
            .unwrap();
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"corridor:UK-NG\""), "{text}");
        let back: ControlState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }
}
