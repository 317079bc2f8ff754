//! Rate limits: one GCRA bucket (`governor`) per market, per corridor and per model within a
//! corridor, each on its own: one scope's exhaustion never takes another's tokens.

use crate::state::{default_burst, Limit, Scope};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
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

/// Corridor → model → bucket (`None`: no limit applies to that model).
type ModelBuckets = BTreeMap<String, BTreeMap<String, Option<Arc<Bucket>>>>;

/// Every bucket, rebuilt (keeping the buckets whose limit did not change) when operators'
/// overrides change.
#[derive(Debug)]
pub struct Limiters {
    defaults: Defaults,
    overrides: RwLock<BTreeMap<Scope, Limit>>,
    markets: RwLock<BTreeMap<u32, Arc<Bucket>>>,
    corridors: RwLock<BTreeMap<String, Arc<Bucket>>>,
    /// Corridor → model → bucket (created on a model's first request when a model limit
    /// applies).
    models: RwLock<ModelBuckets>,
}

impl Limiters {
    /// Buckets for `defaults` and `overrides`.
    pub fn new(defaults: Defaults, overrides: &BTreeMap<Scope, Limit>) -> Self {
        let l = Self {
            defaults,
            overrides: RwLock::new(BTreeMap::new()),
            markets: RwLock::new(BTreeMap::new()),
            corridors: RwLock::new(BTreeMap::new()),
            models: RwLock::new(BTreeMap::new()),
        };
        l.set_overrides(overrides);
        l
    }

    /// Applies a new set of overrides: buckets whose limit changed start full; the others keep
    /// their state.
    pub fn set_overrides(&self, overrides: &BTreeMap<Scope, Limit>) {
        {
            let current = self.overrides.read().unwrap_or_else(|p| p.into_inner());
            if *current == *overrides && !self.corridors.read().unwrap_or_else(|p| p.into_inner()).is_empty() {
                return;
            }
        }
        *self.overrides.write().unwrap_or_else(|p| p.into_inner()) = overrides.clone();
        let keep = |old: Option<&Arc<Bucket>>, limit: Limit| match old {
            Some(b) if b.limit == limit => b.clone(),
            _ => Bucket::new(limit),
        };
        {
            let mut markets = self.markets.write().unwrap_or_else(|p| p.into_inner());
            let mut next = BTreeMap::new();
            let mut wanted: BTreeMap<u32, Limit> =
                self.defaults.market.iter().map(|(m, r)| (*m, limit_of(*r))).collect();
            for (scope, limit) in overrides {
                if let Scope::Market(m) = scope {
                    wanted.insert(*m, *limit);
                }
            }
            for (m, limit) in wanted {
                next.insert(m, keep(markets.get(&m), limit));
            }
            *markets = next;
        }
        {
            let mut corridors = self.corridors.write().unwrap_or_else(|p| p.into_inner());
            let mut wanted: BTreeMap<String, Limit> = self
                .defaults
                .corridor
                .iter()
                .map(|(c, r)| (c.clone(), limit_of(*r)))
                .collect();
            for (scope, limit) in overrides {
                if let Scope::Corridor(c) = scope {
                    wanted.insert(c.clone(), *limit);
                }
            }
            let next = wanted
                .into_iter()
                .map(|(c, limit)| {
                    let b = keep(corridors.get(&c), limit);
                    (c, b)
                })
                .collect();
            *corridors = next;
        }
        // Model buckets are rebuilt lazily from the new overrides.
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        for (corridor, by_model) in models.iter_mut() {
            for (model, bucket) in by_model.iter_mut() {
                let limit = self.model_limit(overrides, corridor, model);
                *bucket = match (limit, bucket.take()) {
                    (None, _) => None,
                    (Some(l), old) => Some(keep(old.as_ref(), l)),
                };
            }
        }
    }

    fn model_limit(&self, overrides: &BTreeMap<Scope, Limit>, corridor: &str, model: &str) -> Option<Limit> {
        if !overrides.is_empty() {
            let scope = Scope::ModelInCorridor {
                model: model.to_string(),
                corridor: corridor.to_string(),
            };
            if let Some(l) = overrides.get(&scope) {
                return Some(*l);
            }
        }
        self.defaults.model.map(limit_of)
    }

    fn model_bucket(&self, corridor: &str, model: &str) -> Option<Arc<Bucket>> {
        {
            let models = self.models.read().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = models.get(corridor).and_then(|m| m.get(model)) {
                return b.clone();
            }
        }
        let overrides = self.overrides.read().unwrap_or_else(|p| p.into_inner()).clone();
        let bucket = self.model_limit(&overrides, corridor, model).map(Bucket::new);
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        models
            .entry(corridor.to_string())
            .or_default()
            .entry(model.to_string())
            .or_insert(bucket)
            .clone()
    }

    /// Takes one token from the model-in-corridor, corridor and market buckets over a request,
    /// in that order; the first empty one refuses.
    pub fn take(&self, market: Option<u32>, corridor: &str, model: &str) -> Result<(), Exhausted> {
        let refuse = |scope: Scope, b: &Bucket, retry_after: Duration| Exhausted {
            scope,
            limit: b.limit,
            retry_after,
        };
        if let Some(b) = self.model_bucket(corridor, model) {
            b.take().map_err(|d| {
                refuse(
                    Scope::ModelInCorridor {
                        model: model.to_string(),
                        corridor: corridor.to_string(),
                    },
                    &b,
                    d,
                )
            })?;
        }
        if let Some(b) = self.corridors.read().unwrap_or_else(|p| p.into_inner()).get(corridor) {
            b.take()
                .map_err(|d| refuse(Scope::Corridor(corridor.to_string()), b, d))?;
        }
        if let Some(m) = market {
            if let Some(b) = self.markets.read().unwrap_or_else(|p| p.into_inner()).get(&m) {
                b.take().map_err(|d| refuse(Scope::Market(m), b, d))?;
            }
        }
        Ok(())
    }

    /// The limit in force per scope (corridors and markets; models within a corridor that have
    /// a bucket).
    pub fn limits(&self) -> BTreeMap<Scope, Limit> {
        let mut out = BTreeMap::new();
        for (m, b) in self.markets.read().unwrap_or_else(|p| p.into_inner()).iter() {
            out.insert(Scope::Market(*m), b.limit);
        }
        for (c, b) in self.corridors.read().unwrap_or_else(|p| p.into_inner()).iter() {
            out.insert(Scope::Corridor(c.clone()), b.limit);
        }
        for (c, models) in self.models.read().unwrap_or_else(|p| p.into_inner()).iter() {
            for (m, b) in models {
                if let Some(b) = b {
                    out.insert(
                        Scope::ModelInCorridor {
                            model: m.clone(),
                            corridor: c.clone(),
                        },
                        b.limit,
                    );
                }
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
