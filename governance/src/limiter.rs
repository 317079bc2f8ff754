//! Rate limits: one GCRA bucket (`governor`) per market, per corridor and per model within a
//! corridor, each on its own: one scope's exhaustion never takes another's tokens.

use crate::state::{default_burst, Limit, Scope};
use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A bucket and the limit it was built for.
#[derive(Debug)]
struct Bucket {
    limit: Limit,
    limiter: DefaultDirectRateLimiter,
}

impl Bucket {
    fn new(limit: Limit) -> Arc<Self> {
        let period = Duration::from_secs_f64(1.0 / limit.rate_per_s).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(limit.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Arc::new(Self {
            limit,
            limiter: RateLimiter::direct(quota),
        })
    }

    /// Takes a token, or says how long until one is free.
    fn take(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The limits configured for the whole process (before operators' overrides).
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// Requests per second per corridor, by corridor id.
    pub corridor: BTreeMap<String, f64>,
    /// Requests per second per market (all its corridors together), by market.
    pub market: BTreeMap<u32, f64>,
    /// Requests per second per model within each corridor (`None`: unlimited).
    pub model: Option<f64>,
}

fn limit_of(rate: f64) -> Limit {
    Limit {
        rate_per_s: rate,
        burst: default_burst(rate),
    }
}

/// A refusal by a bucket: its scope, its limit and when a token will be free.
#[derive(Debug, Clone, PartialEq)]
pub struct Exhausted {
    /// The bucket's scope.
    pub scope: Scope,
    /// Its limit.
    pub limit: Limit,
    /// Time until the next token.
    pub retry_after: Duration,
}

/// Corridor → model → bucket.
type ModelBuckets = BTreeMap<String, BTreeMap<String, Arc<Bucket>>>;

/// One consistent set of buckets, replaced as a whole (readers take no lock).
#[derive(Debug, Default)]
struct Buckets {
    overrides: BTreeMap<Scope, Limit>,
    markets: BTreeMap<u32, Arc<Bucket>>,
    corridors: BTreeMap<String, Arc<Bucket>>,
    /// Models within a corridor that have a limit (an override, or a default model limit
    /// once the model was first seen there).
    models: ModelBuckets,
}

/// Every bucket, rebuilt (keeping the buckets whose limit did not change) when operators'
/// overrides change. Requests read one snapshot through an `ArcSwap` (no lock, no shared
/// counter touched but the buckets' own).
#[derive(Debug)]
pub struct Limiters {
    defaults: Defaults,
    buckets: ArcSwap<Buckets>,
    /// Serialises replacements.
    write: Mutex<()>,
}

fn keep(old: Option<&Arc<Bucket>>, limit: Limit) -> Arc<Bucket> {
    match old {
        Some(b) if b.limit == limit => b.clone(),
        _ => Bucket::new(limit),
    }
}

impl Limiters {
    /// Buckets for `defaults` and `overrides`.
    pub fn new(defaults: Defaults, overrides: &BTreeMap<Scope, Limit>) -> Self {
        let l = Self {
            defaults,
            buckets: ArcSwap::from_pointee(Buckets::default()),
            write: Mutex::new(()),
        };
        l.rebuild(overrides, None);
        l
    }

    /// Applies a new set of overrides: buckets whose limit changed start full; the others keep
    /// their state.
    pub fn set_overrides(&self, overrides: &BTreeMap<Scope, Limit>) {
        if self.buckets.load().overrides == *overrides {
            return;
        }
        self.rebuild(overrides, None);
    }

    /// Builds the next snapshot from `overrides` (and, when given, one more model seen in a
    /// corridor that a default model limit applies to).
    fn rebuild(&self, overrides: &BTreeMap<Scope, Limit>, seen: Option<(&str, &str)>) {
        let _one = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.buckets.load_full();
        let mut markets: BTreeMap<u32, Limit> = self.defaults.market.iter().map(|(m, r)| (*m, limit_of(*r))).collect();
        let mut corridors: BTreeMap<String, Limit> = self
            .defaults
            .corridor
            .iter()
            .map(|(c, r)| (c.clone(), limit_of(*r)))
            .collect();
        let mut models: BTreeMap<(String, String), Limit> = BTreeMap::new();
        // Models seen before keep their default limit.
        if let Some(rate) = self.defaults.model {
            for (c, by_model) in &old.models {
                for m in by_model.keys() {
                    models.insert((c.clone(), m.clone()), limit_of(rate));
                }
            }
            if let Some((c, m)) = seen {
                models.insert((c.to_string(), m.to_string()), limit_of(rate));
            }
        }
        for (scope, limit) in overrides {
            match scope {
                Scope::Market(m) => {
                    markets.insert(*m, *limit);
                }
                Scope::Corridor(c) => {
                    corridors.insert(c.clone(), *limit);
                }
                Scope::ModelInCorridor { model, corridor } => {
                    models.insert((corridor.clone(), model.clone()), *limit);
                }
                _ => {}
            }
        }
        let mut next = Buckets {
            overrides: overrides.clone(),
            markets: markets
                .into_iter()
                .map(|(m, l)| (m, keep(old.markets.get(&m), l)))
                .collect(),
            corridors: corridors
                .into_iter()
                .map(|(c, l)| {
                    let b = keep(old.corridors.get(&c), l);
                    (c, b)
                })
                .collect(),
            models: BTreeMap::new(),
        };
        for ((c, m), l) in models {
            let b = keep(old.models.get(&c).and_then(|x| x.get(&m)), l);
            next.models.entry(c).or_default().insert(m, b);
        }
        self.buckets.store(Arc::new(next));
    }

    /// Takes one token from the model-in-corridor, corridor and market buckets over a request,
    /// in that order; the first empty one refuses.
    pub fn take(&self, market: Option<u32>, corridor: &str, model: &str) -> Result<(), Exhausted> {
        let mut buckets = self.buckets.load();
        let known = buckets.models.get(corridor).is_some_and(|m| m.contains_key(model));
        if !known && self.defaults.model.is_some() {
            // A default model limit applies to a model seen here for the first time.
            let overrides = buckets.overrides.clone();
            self.rebuild(&overrides, Some((corridor, model)));
            buckets = self.buckets.load();
        }
        let refuse = |scope: Scope, b: &Bucket, retry_after: Duration| Exhausted {
            scope,
            limit: b.limit,
            retry_after,
        };
        if let Some(b) = buckets.models.get(corridor).and_then(|m| m.get(model)) {
            b.take().map_err(|d| {
                refuse(
                    Scope::ModelInCorridor {
                        model: model.to_string(),
                        corridor: corridor.to_string(),
                    },
                    b,
                    d,
                )
            })?;
        }
        if let Some(b) = buckets.corridors.get(corridor) {
            b.take()
                .map_err(|d| refuse(Scope::Corridor(corridor.to_string()), b, d))?;
        }
        if let Some(m) = market {
            if let Some(b) = buckets.markets.get(&m) {
                b.take().map_err(|d| refuse(Scope::Market(m), b, d))?;
            }
        }
        Ok(())
    }

    /// The limit in force per scope (markets, corridors, and models within a corridor that
    /// have a bucket).
    pub fn limits(&self) -> BTreeMap<Scope, Limit> {
        let buckets = self.buckets.load();
        let mut out = BTreeMap::new();
        for (m, b) in &buckets.markets {
            out.insert(Scope::Market(*m), b.limit);
        }
        for (c, b) in &buckets.corridors {
            out.insert(Scope::Corridor(c.clone()), b.limit);
        }
        for (c, models) in &buckets.models {
            for (m, b) in models {
                out.insert(
                    Scope::ModelInCorridor {
                        model: m.clone(),
                        corridor: c.clone(),
                    },
                    b.limit,
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            corridor: [("A".to_string(), 10.0), ("B".to_string(), 10.0)].into_iter().collect(),
            market: BTreeMap::new(),
            model: None,
        }
    }

    #[test]
    fn one_corridor_exhausted_never_takes_anothers_tokens() {
        let l = Limiters::new(defaults(), &BTreeMap::new());
        for _ in 0..10 {
            l.take(Some(0), "A", "m").unwrap();
        }
        let e = l.take(Some(0), "A", "m").unwrap_err();
        assert_eq!(e.scope, Scope::Corridor("A".into()));
        assert!(
            e.retry_after > Duration::ZERO && e.retry_after <= Duration::from_millis(100),
            "{e:?}"
        );
        for _ in 0..10 {
            l.take(Some(0), "B", "m").unwrap();
        }
    }

    #[test]
    fn overrides_apply_and_unchanged_buckets_keep_their_state() {
        let l = Limiters::new(defaults(), &BTreeMap::new());
        for _ in 0..10 {
            l.take(None, "B", "m").unwrap();
        }
        let mut o = BTreeMap::new();
        o.insert(
            Scope::ModelInCorridor {
                model: "m".into(),
                corridor: "A".into(),
            },
            Limit {
                rate_per_s: 1.0,
                burst: 2,
            },
        );
        l.set_overrides(&o);
        assert!(l.take(None, "B", "m").is_err(), "B's bucket was kept, still empty");
        l.take(None, "A", "m").unwrap();
        l.take(None, "A", "m").unwrap();
        let e = l.take(None, "A", "m").unwrap_err();
        assert!(matches!(e.scope, Scope::ModelInCorridor { .. }), "{e:?}");
        l.take(None, "A", "other").unwrap();
    }
}
