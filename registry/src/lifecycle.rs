//! Version lifecycle and deterministic traffic splits.
//!
//! Each model version is `STAGED` (no traffic), `CANARY` (a percentage of requests, optionally
//! only in listed corridors), `ACTIVE` (globally, or in listed corridors as an override) or
//! `DEPRECATED`. `FAILED` is not stored here: it is the verification outcome of a loaded
//! version, and [`RegistryState::route`] never picks a version that is not ready.
//!
//! Transitions are pure functions from one [`RegistryState`] to the next ([`RegistryState::apply`]);
//! the state is a control document (`invariant_control`), stored by compare-and-set on its
//! revision, durably, in a file or in Redis.
//! Routing ([`RegistryState::route`]) is a pure function of model, corridor, routing key and
//! state: the same key always reaches the same version while the state is unchanged.
//!
//! The state stays small whatever operators send ([`LifecycleLimits`]): corridor lists are
//! sorted and de-duplicated, an action names a bounded number of corridors, actor and reason
//! are bounded, and only the most recent transitions of each model are kept.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Format tag of the state file.
pub const STATE_FORMAT: &str = "invariant-registry/1";

/// Lifecycle state of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Lifecycle {
    /// Loaded, no traffic unless named explicitly.
    Staged,
    /// Receives a deterministic share of traffic.
    Canary,
    /// Receives the traffic of its scope.
    Active,
    /// Retired; answers only requests that name it.
    Deprecated,
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lifecycle::Staged => "STAGED",
            Lifecycle::Canary => "CANARY",
            Lifecycle::Active => "ACTIVE",
            Lifecycle::Deprecated => "DEPRECATED",
        })
    }
}

/// A canary: a version, its share of traffic, and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// The canary version.
    pub version: String,
    /// Share of requests, in percent (0 < p ≤ 100).
    pub percent: f64,
    /// Corridors it applies to; empty means every corridor.
    #[serde(default)]
    pub corridors: Vec<String>,
}

/// The routing state of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelRouting {
    /// Lifecycle of every version that has had a transition.
    #[serde(default)]
    pub versions: BTreeMap<String, Lifecycle>,
    /// The globally active version.
    #[serde(default)]
    pub active: Option<String>,
    /// Per-corridor active overrides.
    #[serde(default)]
    pub corridor_active: BTreeMap<String, String>,
    /// The canary, if any.
    #[serde(default)]
    pub canary: Option<Canary>,
    /// Previously active versions, most recent last (what a rollback returns to).
    #[serde(default)]
    pub previous: Vec<String>,
}

/// One audited transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Revision of the state this transition produced.
    pub revision: u64,
    /// RFC 3339 time.
    pub time: String,
    /// Who asked.
    pub actor: String,
    /// `stage`, `canary`, `promote`, `rollback`, `deprecate`.
    pub action: String,
    /// Model name.
    pub model: String,
    /// The version acted on.
    pub version: String,
    /// Lifecycle before, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Lifecycle>,
    /// Lifecycle after.
    pub to: Lifecycle,
    /// Canary share, for `canary`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Corridors, when the action was limited to some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corridors: Vec<String>,
    /// Why.
    pub reason: String,
}

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Back to no traffic.
    Stage,
    /// A share of traffic, optionally in some corridors only.
    Canary {
        /// Percent of requests.
        percent: f64,
        /// Corridors (empty: all).
        corridors: Vec<String>,
    },
    /// Make the version active, globally or in some corridors.
    Promote {
        /// Corridors (empty: global).
        corridors: Vec<String>,
    },
    /// Undo: cancel the canary, drop corridor overrides, or return to the previous active version.
    Rollback {
        /// Corridors whose override to drop (empty: canary, else global).
        corridors: Vec<String>,
    },
    /// Retire a version.
    Deprecate,
}

impl Action {
    /// The action's name in transitions.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Stage => "stage",
            Action::Canary { .. } => "canary",
            Action::Promote { .. } => "promote",
            Action::Rollback { .. } => "rollback",
            Action::Deprecate => "deprecate",
        }
    }
}

/// A transition that is not allowed.
#[derive(Debug, Error)]
pub enum LifecycleError {
    /// The transition does not fit the current state.
    #[error("cannot {action} {model} {version}: {why}")]
    Invalid {
        /// Action name.
        action: &'static str,
        /// Model.
        model: String,
        /// Version.
        version: String,
        /// Why not.
        why: String,
    },
}

/// Where a request goes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The version.
    pub version: String,
    /// `canary` or `active`.
    pub reason: &'static str,
}

/// The whole registry state, as stored in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryState {
    /// Always [`STATE_FORMAT`].
    pub format: String,
    /// Incremented by every transition.
    pub revision: u64,
    /// Routing state by model.
    #[serde(default)]
    pub models: BTreeMap<String, ModelRouting>,
    /// Every transition, oldest first.
    #[serde(default)]
    pub history: Vec<Transition>,
}

impl Default for RegistryState {
    fn default() -> Self {
        Self {
            format: STATE_FORMAT.into(),
            revision: 0,
            models: BTreeMap::new(),
            history: Vec::new(),
        }
    }
}

/// Bounds on what one transition may ask for and on what the state keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleLimits {
    /// Most corridors one action may name (before de-duplication).
    pub max_corridors: usize,
    /// Transitions kept in the history per model (older ones are dropped, oldest first).
    pub max_history_per_model: usize,
    /// Longest actor and reason, in bytes.
    pub max_text_bytes: usize,
}

impl Default for LifecycleLimits {
    fn default() -> Self {
        Self {
            max_corridors: 1024,
            max_history_per_model: 1000,
            max_text_bytes: 4096,
        }
    }
}

/// A corridor list in its stored form: sorted, each corridor once.
fn canonical_corridors(corridors: &[String]) -> Vec<String> {
    let mut out = corridors.to_vec();
    out.sort_unstable();
    out.dedup();
    out
}

/// An action's corridor list checked (each a corridor id, normalised as
/// [`invariant_core::CorridorId`] does) and in its stored form.
fn checked_corridors(corridors: &[String]) -> Result<Vec<String>, String> {
    let ids = corridors
        .iter()
        .map(|c| {
            invariant_core::CorridorId::parse(c)
                .map(|id| id.as_str().to_string())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(canonical_corridors(&ids))
}

/// Context of a transition: who, why, when, and which versions are verified and ready.
pub struct TransitionContext<'a> {
    /// Who asks.
    pub actor: &'a str,
    /// Why.
    pub reason: &'a str,
    /// RFC 3339 time.
    pub time: &'a str,
    /// True for versions that are loaded and passed verification.
    pub ready: &'a dyn Fn(&str) -> bool,
    /// The version that serves the model when nothing was ever promoted (highest ready).
    pub default_active: Option<&'a str>,
}

impl invariant_control::Document for RegistryState {
    const NAME: &'static str = invariant_control::REGISTRY;

    fn revision(&self) -> u64 {
        self.revision
    }

    fn loaded(mut self) -> Result<Self, String> {
        if self.format != STATE_FORMAT {
            return Err(format!("format '{}' is not {STATE_FORMAT}", self.format));
        }
        // States written before corridor lists were de-duplicated route as fast as new ones.
        for canary in self.models.values_mut().filter_map(|r| r.canary.as_mut()) {
            canary.corridors = canonical_corridors(&canary.corridors);
        }
        for t in &mut self.history {
            t.corridors = canonical_corridors(&t.corridors);
        }
        Ok(self)
    }
}

/// Where in `[0, 10000)` a routing key falls for a model and corridor: blake3 of the three,
/// first 8 bytes, modulo 10 000 (a basis-point bucket).
pub fn bucket(model: &str, corridor: &str, key: &[u8]) -> u64 {
    let bytes = invariant_core::hash::parts_hash([model.as_bytes(), corridor.as_bytes(), key]);
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(first) % 10_000
}

impl RegistryState {
    /// The lifecycle of a version: its recorded state, else ACTIVE for the default active
    /// version of a model that never had a promotion, else STAGED.
    pub fn lifecycle(&self, model: &str, version: &str, default_active: Option<&str>) -> Lifecycle {
        let routing = self.models.get(model);
        if let Some(state) = routing.and_then(|r| r.versions.get(version)) {
            return *state;
        }
        let never_promoted = routing.is_none_or(|r| r.active.is_none());
        if never_promoted && default_active == Some(version) {
            Lifecycle::Active
        } else {
            Lifecycle::Staged
        }
    }

    /// The version that serves a request of `model` in `corridor` with `key`, among versions
    /// for which `ready` holds. The canary takes the request when it applies to the corridor
    /// and the key's [`bucket`] is below its share; otherwise the corridor's override, the
    /// global active version, the most recent previous active one, or `default_active`, in that
    /// order, whichever is ready first.
    pub fn route(
        &self,
        model: &str,
        corridor: &str,
        key: &[u8],
        ready: &dyn Fn(&str) -> bool,
        default_active: Option<&str>,
    ) -> Option<Route> {
        let routing = self.models.get(model);
        if let Some(c) = routing.and_then(|r| r.canary.as_ref()) {
            let applies = c.corridors.is_empty() || c.corridors.iter().any(|x| x == corridor);
            if applies && ready(&c.version) && (bucket(model, corridor, key) as f64) < c.percent * 100.0 {
                return Some(Route {
                    version: c.version.clone(),
                    reason: "canary",
                });
            }
        }
        self.active(model, Some(corridor), ready, default_active)
            .map(|version| Route {
                version,
                reason: "active",
            })
    }

    /// The active version of `model` (in `corridor`, when given: its override first), among
    /// ready versions: the override, the global active version, the most recent previous
    /// active one, or `default_active`, whichever is ready first.
    pub fn active(
        &self,
        model: &str,
        corridor: Option<&str>,
        ready: &dyn Fn(&str) -> bool,
        default_active: Option<&str>,
    ) -> Option<String> {
        let routing = self.models.get(model);
        let overridden = routing.zip(corridor).and_then(|(r, c)| r.corridor_active.get(c));
        let candidates = overridden
            .into_iter()
            .chain(
                routing
                    .into_iter()
                    .flat_map(|r| r.active.iter().chain(r.previous.iter().rev())),
            )
            .map(String::as_str)
            .chain(default_active);
        candidates.into_iter().find(|v| ready(v)).map(str::to_string)
    }

    /// [`RegistryState::apply_with_limits`] within the default [`LifecycleLimits`].
    pub fn apply(
        &self,
        model: &str,
        version: &str,
        action: &Action,
        ctx: &TransitionContext<'_>,
    ) -> Result<(RegistryState, Transition), LifecycleError> {
        self.apply_with_limits(model, version, action, ctx, &LifecycleLimits::default())
    }

    /// The state after `action` on `model` `version`, and the transition record; `self` is
    /// unchanged. Canary and promotion need a ready (verified) version. The action's corridors
    /// are stored sorted and de-duplicated; more than `limits.max_corridors` of them, or an
    /// actor or reason longer than `limits.max_text_bytes`, is refused. The history keeps the
    /// last `limits.max_history_per_model` transitions of each model.
    pub fn apply_with_limits(
        &self,
        model: &str,
        version: &str,
        action: &Action,
        ctx: &TransitionContext<'_>,
        limits: &LifecycleLimits,
    ) -> Result<(RegistryState, Transition), LifecycleError> {
        let invalid = |why: String| LifecycleError::Invalid {
            action: action.name(),
            model: model.to_string(),
            version: version.to_string(),
            why,
        };
        let named = match action {
            Action::Canary { corridors, .. } | Action::Promote { corridors } | Action::Rollback { corridors } => {
                corridors.len()
            }
            Action::Stage | Action::Deprecate => 0,
        };
        if named > limits.max_corridors {
            return Err(invalid(format!(
                "{named} corridors given, exceeding the limit of {} per action",
                limits.max_corridors
            )));
        }
        for (field, text) in [("actor", ctx.actor), ("reason", ctx.reason)] {
            if text.len() > limits.max_text_bytes {
                return Err(invalid(format!(
                    "{field} is {} bytes, exceeding the limit of {}",
                    text.len(),
                    limits.max_text_bytes
                )));
            }
        }
        let action = &match action {
            Action::Canary { percent, corridors } => Action::Canary {
                percent: *percent,
                corridors: checked_corridors(corridors).map_err(invalid)?,
            },
            Action::Promote { corridors } => Action::Promote {
                corridors: checked_corridors(corridors).map_err(invalid)?,
            },
            Action::Rollback { corridors } => Action::Rollback {
                corridors: checked_corridors(corridors).map_err(invalid)?,
            },
            other => other.clone(),
        };
        let from = self.lifecycle(model, version, ctx.default_active);
        let mut next = self.clone();
        let r = next.models.entry(model.to_string()).or_default();
        // A model that never had a promotion is served by its default version: make that explicit.
        if r.active.is_none() {
            if let Some(d) = ctx.default_active {
                r.active = Some(d.to_string());
                r.versions.entry(d.to_string()).or_insert(Lifecycle::Active);
            }
        }
        let is_active =
            |r: &ModelRouting| r.active.as_deref() == Some(version) || r.corridor_active.values().any(|v| v == version);
        let is_canary = |r: &ModelRouting| r.canary.as_ref().is_some_and(|c| c.version == version);
        let mut percent = None;
        let mut corridors = Vec::new();
        let to = match action {
            Action::Stage => {
                if is_active(r) || is_canary(r) {
                    return Err(invalid(format!(
                        "it is {from}; roll it back or promote another version first"
                    )));
                }
                Lifecycle::Staged
            }
            Action::Deprecate => {
                if is_active(r) || is_canary(r) {
                    return Err(invalid(format!(
                        "it is {from}; roll it back or promote another version first"
                    )));
                }
                Lifecycle::Deprecated
            }
            Action::Canary {
                percent: p,
                corridors: cs,
            } => {
                if !(*p > 0.0 && *p <= 100.0) {
                    return Err(invalid(format!("percent must be above 0 and at most 100, got {p}")));
                }
                if !(ctx.ready)(version) {
                    return Err(invalid("it is not loaded and verified".into()));
                }
                if r.active.as_deref() == Some(version) {
                    return Err(invalid("it is already the active version".into()));
                }
                if let Some(c) = r.canary.as_ref().filter(|c| c.version != version) {
                    return Err(invalid(format!(
                        "{model} already has canary {}; promote or roll it back first",
                        c.version
                    )));
                }
                r.canary = Some(Canary {
                    version: version.into(),
                    percent: *p,
                    corridors: cs.clone(),
                });
                percent = Some(*p);
                corridors = cs.clone();
                Lifecycle::Canary
            }
            Action::Promote { corridors: cs } => {
                if !(ctx.ready)(version) {
                    return Err(invalid("it is not loaded and verified".into()));
                }
                if cs.is_empty() {
                    if r.active.as_deref() == Some(version) {
                        return Err(invalid("it is already the active version".into()));
                    }
                    if let Some(old) = r.active.replace(version.to_string()) {
                        let still_active = r.corridor_active.values().any(|v| *v == old);
                        if !still_active {
                            r.versions.insert(old.clone(), Lifecycle::Deprecated);
                        }
                        r.previous.retain(|v| *v != old);
                        r.previous.push(old);
                    }
                    r.previous.retain(|v| v != version);
                } else {
                    for c in cs {
                        r.corridor_active.insert(c.clone(), version.to_string());
                    }
                    corridors = cs.clone();
                }
                if is_canary(r) {
                    r.canary = None;
                }
                Lifecycle::Active
            }
            Action::Rollback { corridors: cs } => {
                if !cs.is_empty() {
                    let mut removed = false;
                    for c in cs {
                        if r.corridor_active.get(c).is_some_and(|v| v == version) {
                            r.corridor_active.remove(c);
                            removed = true;
                        }
                    }
                    if !removed {
                        return Err(invalid(format!("it is not the active override in {}", cs.join(", "))));
                    }
                    corridors = cs.clone();
                    if is_active(r) {
                        Lifecycle::Active
                    } else {
                        Lifecycle::Staged
                    }
                } else if is_canary(r) {
                    r.canary = None;
                    Lifecycle::Staged
                } else if r.active.as_deref() == Some(version) {
                    let Some(back) = r.previous.iter().rev().find(|v| (ctx.ready)(v)).cloned() else {
                        return Err(invalid("there is no previous ready version to return to".into()));
                    };
                    r.previous.retain(|v| *v != back);
                    r.active = Some(back.clone());
                    r.versions.insert(back, Lifecycle::Active);
                    if r.corridor_active.values().any(|v| v == version) {
                        Lifecycle::Active
                    } else {
                        Lifecycle::Deprecated
                    }
                } else {
                    return Err(invalid(format!(
                        "it is {from}: only the canary or the active version can be rolled back"
                    )));
                }
            }
        };
        r.versions.insert(version.to_string(), to);
        next.revision += 1;
        let t = Transition {
            revision: next.revision,
            time: ctx.time.to_string(),
            actor: ctx.actor.to_string(),
            action: action.name().to_string(),
            model: model.to_string(),
            version: version.to_string(),
            from: Some(from),
            to,
            percent,
            corridors,
            reason: ctx.reason.to_string(),
        };
        next.history.push(t.clone());
        next.trim_history(model, limits.max_history_per_model);
        Ok((next, t))
    }

    /// Drops the oldest transitions of `model` beyond the last `keep`.
    fn trim_history(&mut self, model: &str, keep: usize) {
        let count = self.history.iter().filter(|t| t.model == model).count();
        let mut excess = count.saturating_sub(keep);
        if excess > 0 {
            self.history.retain(|t| {
                if excess > 0 && t.model == model {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(ready: &'a dyn Fn(&str) -> bool, default_active: Option<&'a str>) -> TransitionContext<'a> {
        TransitionContext {
            actor: "test",
            reason: "because",
            time: "2026-11-23T00:00:00Z",
            ready,
            default_active,
        }
    }

    const ALL_READY: &dyn Fn(&str) -> bool = &|_| true;

    #[test]
    fn default_version_is_active_until_a_promotion() {
        let s = RegistryState::default();
        assert_eq!(s.lifecycle("m", "1.1.0", Some("1.1.0")), Lifecycle::Active);
        assert_eq!(s.lifecycle("m", "1.0.0", Some("1.1.0")), Lifecycle::Staged);
        assert_eq!(
            s.route("m", "UAE-SA", b"k", ALL_READY, Some("1.1.0")).unwrap().version,
            "1.1.0"
        );
    }

    #[test]
    fn canary_in_one_corridor_then_promote_then_rollback() {
        let s = RegistryState::default();
        let c = ctx(ALL_READY, Some("1.0.0"));
        let canary = Action::Canary {
            percent: 5.0,
            corridors: vec!["UAE-SA".into()],
        };
        let (s, t) = s.apply("risk", "1.1.0", &canary, &c).unwrap();
        assert_eq!(
            (t.from, t.to, t.revision),
            (Some(Lifecycle::Staged), Lifecycle::Canary, 1)
        );
        // About 5 % of keys in UAE-SA, none elsewhere.
        let share = |corridor: &str| {
            (0..4000)
                .filter(|i| {
                    s.route("risk", corridor, format!("user-{i}").as_bytes(), ALL_READY, None)
                        .unwrap()
                        .reason
                        == "canary"
                })
                .count()
        };
        let uae = share("UAE-SA");
        assert!((120..=280).contains(&uae), "{uae} of 4000 in the canary");
        assert_eq!(share("US-EG"), 0);
        // The same key always lands on the same version.
        let r1 = s.route("risk", "UAE-SA", b"user-7", ALL_READY, None);
        assert!((0..10).all(|_| s.route("risk", "UAE-SA", b"user-7", ALL_READY, None) == r1));

        let (s, t) = s
            .apply("risk", "1.1.0", &Action::Promote { corridors: vec![] }, &c)
            .unwrap();
        assert_eq!(t.to, Lifecycle::Active);
        assert!(s.models["risk"].canary.is_none());
        assert_eq!(s.lifecycle("risk", "1.0.0", None), Lifecycle::Deprecated);
        assert_eq!(
            s.route("risk", "US-EG", b"x", ALL_READY, None).unwrap().version,
            "1.1.0"
        );

        let (s, t) = s
            .apply("risk", "1.1.0", &Action::Rollback { corridors: vec![] }, &c)
            .unwrap();
        assert_eq!(t.to, Lifecycle::Deprecated);
        assert_eq!(
            s.route("risk", "US-EG", b"x", ALL_READY, None).unwrap().version,
            "1.0.0"
        );
        assert_eq!(s.lifecycle("risk", "1.0.0", None), Lifecycle::Active);
        assert_eq!(s.history.len(), 3);
    }

    #[test]
    fn corridor_override_and_its_rollback() {
        let c = ctx(ALL_READY, Some("1.0.0"));
        let (s, _) = RegistryState::default()
            .apply(
                "m",
                "2.0.0",
                &Action::Promote {
                    corridors: vec!["UK-NG".into()],
                },
                &c,
            )
            .unwrap();
        assert_eq!(s.route("m", "UK-NG", b"k", ALL_READY, None).unwrap().version, "2.0.0");
        assert_eq!(s.route("m", "UAE-SA", b"k", ALL_READY, None).unwrap().version, "1.0.0");
        let (s, _) = s
            .apply(
                "m",
                "2.0.0",
                &Action::Rollback {
                    corridors: vec!["UK-NG".into()],
                },
                &c,
            )
            .unwrap();
        assert_eq!(s.route("m", "UK-NG", b"k", ALL_READY, None).unwrap().version, "1.0.0");
    }

    #[test]
    fn invalid_transitions_say_why() {
        let c = ctx(ALL_READY, Some("1.0.0"));
        let s = RegistryState::default();
        let e = s.apply("m", "1.0.0", &Action::Deprecate, &c).unwrap_err().to_string();
        assert!(e.contains("cannot deprecate m 1.0.0") && e.contains("ACTIVE"), "{e}");
        let e = s
            .apply(
                "m",
                "1.1.0",
                &Action::Canary {
                    percent: 0.0,
                    corridors: vec![],
                },
                &c,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("percent"), "{e}");
        let not_ready: &dyn Fn(&str) -> bool = &|v| v != "1.1.0";
        let e = s
            .apply(
                "m",
                "1.1.0",
                &Action::Promote { corridors: vec![] },
                &ctx(not_ready, Some("1.0.0")),
            )
            .unwrap_err();
        assert!(e.to_string().contains("not loaded and verified"), "{e}");
        let e = s
            .apply("m", "1.0.0", &Action::Rollback { corridors: vec![] }, &c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no previous ready version"), "{e}");
        let (s2, _) = s
            .apply(
                "m",
                "1.1.0",
                &Action::Canary {
                    percent: 5.0,
                    corridors: vec![],
                },
                &c,
            )
            .unwrap();
        let e = s2
            .apply(
                "m",
                "1.2.0",
                &Action::Canary {
                    percent: 5.0,
                    corridors: vec![],
                },
                &c,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("already has canary 1.1.0"), "{e}");
    }

    #[test]
    fn routing_skips_versions_that_are_not_ready() {
        let c = ctx(ALL_READY, Some("1.0.0"));
        let (s, _) = RegistryState::default()
            .apply("m", "1.1.0", &Action::Promote { corridors: vec![] }, &c)
            .unwrap();
        let only_old: &dyn Fn(&str) -> bool = &|v| v == "1.0.0";
        assert_eq!(s.route("m", "UAE-SA", b"k", only_old, None).unwrap().version, "1.0.0");
        let none: &dyn Fn(&str) -> bool = &|_| false;
        assert!(s.route("m", "UAE-SA", b"k", none, None).is_none());
    }

    fn control(dir: &std::path::Path) -> invariant_control::Control {
        invariant_control::Control::new(std::sync::Arc::new(invariant_control::file::FileBackend::new([(
            invariant_control::REGISTRY,
            dir.join("registry.json"),
        )])))
    }

    #[test]
    fn state_round_trips_through_the_control_store() {
        let dir = tempfile::tempdir().unwrap();
        let control = control(dir.path());
        assert_eq!(control.load::<RegistryState>().unwrap(), RegistryState::default());
        let (s, _) = RegistryState::default()
            .apply(
                "m",
                "1.1.0",
                &Action::Canary {
                    percent: 12.5,
                    corridors: vec![],
                },
                &ctx(ALL_READY, Some("1.0.0")),
            )
            .unwrap();
        control.swap(0, &s).unwrap();
        assert_eq!(control.load::<RegistryState>().unwrap(), s);
        std::fs::write(
            dir.path().join("registry.json"),
            br#"{"format": "other/1", "revision": 1}"#,
        )
        .unwrap();
        let err = control.load::<RegistryState>().unwrap_err().to_string();
        assert!(err.contains("format 'other/1'"), "{err}");
    }

    #[test]
    fn corridor_lists_are_checked_sorted_and_deduplicated() {
        let c = ctx(ALL_READY, Some("1.0.0"));
        let many: Vec<String> = ["US-EG", "uae-sa", "UAE-SA", "US-EG"]
            .iter()
            .cycle()
            .take(1000)
            .map(|s| s.to_string())
            .collect();
        let canary = Action::Canary {
            percent: 5.0,
            corridors: many,
        };
        let (s, t) = RegistryState::default().apply("m", "1.1.0", &canary, &c).unwrap();
        let stored = &s.models["m"].canary.as_ref().unwrap().corridors;
        assert_eq!(stored, &["UAE-SA".to_string(), "US-EG".to_string()]);
        assert_eq!(t.corridors, *stored);
        assert!(serde_json::to_vec(&s).unwrap().len() < 2000);

        let promote = Action::Promote {
            corridors: vec!["UK-NG".into(), "UK-NG".into(), "FR-MA".into()],
        };
        let (s, t) = s.apply("m", "2.0.0", &promote, &c).unwrap();
        assert_eq!(t.corridors, ["FR-MA", "UK-NG"]);
        assert_eq!(s.models["m"].corridor_active.len(), 2);

        let too_many = Action::Canary {
            percent: 5.0,
            corridors: vec!["UAE-SA".to_string(); 300_000],
        };
        let e = RegistryState::default()
            .apply("m", "1.1.0", &too_many, &c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("300000 corridors given, exceeding the limit of 1024"), "{e}");
        let limits = LifecycleLimits {
            max_corridors: 2,
            ..LifecycleLimits::default()
        };
        let three = Action::Promote {
            corridors: vec!["UAE-SA".into(), "US-EG".into(), "UK-NG".into()],
        };
        assert!(RegistryState::default()
            .apply_with_limits("m", "1.1.0", &three, &c, &limits)
            .is_err());
        let bogus = Action::Promote {
            corridors: vec!["not a corridor".into()],
        };
        let e = RegistryState::default()
            .apply("m", "1.1.0", &bogus, &c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid corridor id 'not a corridor'"), "{e}");
    }

    #[test]
    fn long_actor_or_reason_is_refused() {
        let reason = "x".repeat(5000);
        let c = TransitionContext {
            reason: &reason,
            ..ctx(ALL_READY, Some("1.0.0"))
        };
        let e = RegistryState::default()
            .apply("m", "1.1.0", &Action::Promote { corridors: vec![] }, &c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reason is 5000 bytes, exceeding the limit of 4096"), "{e}");
    }

    #[test]
    fn history_keeps_the_last_transitions_of_each_model() {
        let c = ctx(ALL_READY, Some("1.0.0"));
        let limits = LifecycleLimits {
            max_history_per_model: 10,
            ..LifecycleLimits::default()
        };
        let (mut s, _) = RegistryState::default()
            .apply_with_limits("other", "2.0.0", &Action::Promote { corridors: vec![] }, &c, &limits)
            .unwrap();
        for i in 0..25 {
            let action = if i % 2 == 0 {
                Action::Promote { corridors: vec![] }
            } else {
                Action::Rollback { corridors: vec![] }
            };
            s = s.apply_with_limits("m", "1.1.0", &action, &c, &limits).unwrap().0;
        }
        assert_eq!(s.revision, 26);
        let of_m: Vec<u64> = s
            .history
            .iter()
            .filter(|t| t.model == "m")
            .map(|t| t.revision)
            .collect();
        assert_eq!(of_m, (17..=26).collect::<Vec<_>>());
        assert_eq!(s.history.iter().filter(|t| t.model == "other").count(), 1);
        assert_eq!(s.history[0].model, "other");
        // The default keeps far more than any test needs.
        assert_eq!(LifecycleLimits::default().max_history_per_model, 1000);
    }

    #[test]
    fn loading_deduplicates_old_corridor_lists() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RegistryState::default();
        s.models.entry("m".into()).or_default().canary = Some(Canary {
            version: "1.1.0".into(),
            percent: 5.0,
            corridors: vec!["US-EG".into(), "UAE-SA".into(), "US-EG".into()],
        });
        s.revision = 1;
        let control = control(dir.path());
        control.swap(0, &s).unwrap();
        let back = control.load::<RegistryState>().unwrap();
        assert_eq!(back.models["m"].canary.as_ref().unwrap().corridors, ["UAE-SA", "US-EG"]);
    }
}
