//! Live signals per corridor over a sliding window of one-second buckets: requests, failures
//! and a latency histogram (buckets growing by √2 from 10 µs), from which the computed
//! degradation level follows.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a corridor degrades by itself (the platform's defaults: level 1 at p99 > 500 ms or
/// errors > 5 %, level 2 at > 1 s or > 10 %), over `window_seconds`, once `min_requests`
/// requests are in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradationSettings {
    /// The window, in whole seconds.
    #[serde(default = "default_window")]
    pub window_seconds: u32,
    /// Fewer requests than this in the window compute level 0.
    #[serde(default = "default_min")]
    pub min_requests: u64,
    /// Level 1 when p99 exceeds this.
    #[serde(default = "default_l1_p99")]
    pub level1_p99_ms: f64,
    /// Level 1 when the failure rate exceeds this.
    #[serde(default = "default_l1_errors")]
    pub level1_error_rate: f64,
    /// Level 2 when p99 exceeds this.
    #[serde(default = "default_l2_p99")]
    pub level2_p99_ms: f64,
    /// Level 2 when the failure rate exceeds this.
    #[serde(default = "default_l2_errors")]
    pub level2_error_rate: f64,
}

fn default_window() -> u32 {
    30
}
fn default_min() -> u64 {
    20
}
fn default_l1_p99() -> f64 {
    500.0
}
fn default_l1_errors() -> f64 {
    0.05
}
fn default_l2_p99() -> f64 {
    1000.0
}
fn default_l2_errors() -> f64 {
    0.10
}

impl Default for DegradationSettings {
    fn default() -> Self {
        Self {
            window_seconds: default_window(),
            min_requests: default_min(),
            level1_p99_ms: default_l1_p99(),
            level1_error_rate: default_l1_errors(),
            level2_p99_ms: default_l2_p99(),
            level2_error_rate: default_l2_errors(),
        }
    }
}

const BUCKETS: usize = 48;

/// Upper bound, in µs, of latency bucket `i`.
fn bucket_upper_us(i: usize) -> f64 {
    10.0 * std::f64::consts::SQRT_2.powi(i as i32 + 1)
}

fn bucket_of(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= 10.0 {
        return 0;
    }
    ((us / 10.0).log2() * 2.0).floor().clamp(0.0, (BUCKETS - 1) as f64) as usize
}

#[derive(Debug, Clone)]
struct Second {
    second: u64,
    requests: u64,
    failures: u64,
    hits: u64,
    latency: [u32; BUCKETS],
}

impl Second {
    fn empty(second: u64) -> Self {
        Self {
            second,
            requests: 0,
            failures: 0,
            hits: 0,
            latency: [0; BUCKETS],
        }
    }
}

/// What a corridor's window holds now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Requests in the window.
    pub requests: u64,
    /// Failures among them.
    pub failures: u64,
    /// Failure rate (0 when empty).
    pub error_rate: f64,
    /// p99 latency in ms (the upper bound of its histogram bucket; 0 when empty).
    pub p99_ms: f64,
    /// p50 latency in ms, the same way.
    pub p50_ms: f64,
    /// Requests answered from a cache.
    pub cache_hits: u64,
}

/// One step of a window's series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// How many seconds ago the step ended (0: the current step).
    pub ago_s: u64,
    /// The step's requests, failures, cache hits and latency quantiles.
    #[serde(flatten)]
    pub summary: Summary,
}

/// Totals and a latency histogram over some seconds.
struct Totals {
    requests: u64,
    failures: u64,
    hits: u64,
    hist: [u64; BUCKETS],
}

impl Totals {
    fn new() -> Self {
        Self {
            requests: 0,
            failures: 0,
            hits: 0,
            hist: [0; BUCKETS],
        }
    }

    fn add(&mut self, s: &Second) {
        self.requests += s.requests;
        self.failures += s.failures;
        self.hits += s.hits;
        for (h, v) in self.hist.iter_mut().zip(s.latency) {
            *h += u64::from(v);
        }
    }

    fn summary(&self) -> Summary {
        let requests = self.requests;
        let quantile = |q: f64| {
            if requests == 0 {
                return 0.0;
            }
            let rank = (requests as f64 * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in self.hist.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return (bucket_upper_us(i)).round() / 1000.0;
                }
            }
            0.0
        };
        Summary {
            requests,
            failures: self.failures,
            error_rate: if requests == 0 {
                0.0
            } else {
                self.failures as f64 / requests as f64
            },
            p99_ms: quantile(0.99),
            p50_ms: quantile(0.5),
            cache_hits: self.hits,
        }
    }
}

/// One corridor's sliding window.
#[derive(Debug)]
pub struct Window {
    origin: Instant,
    ring: Mutex<Vec<Second>>,
}

impl Window {
    /// A window of `seconds` one-second buckets.
    pub fn new(seconds: u32) -> Self {
        let n = seconds.max(1) as usize;
        Self {
            origin: Instant::now(),
            ring: Mutex::new(vec![Second::empty(u64::MAX); n]),
        }
    }

    fn now_second(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    /// Records one request's latency and whether it failed.
    pub fn record(&self, latency: Duration, failed: bool) {
        self.record_answer(latency, failed, false);
    }

    /// Records one request's latency, whether it failed, and whether a cache answered it.
    pub fn record_answer(&self, latency: Duration, failed: bool, hit: bool) {
        let second = self.now_second();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let n = ring.len();
        let slot = &mut ring[(second % n as u64) as usize];
        if slot.second != second {
            *slot = Second::empty(second);
        }
        slot.requests += 1;
        slot.failures += u64::from(failed);
        slot.hits += u64::from(hit);
        slot.latency[bucket_of(latency)] += 1;
    }

    /// The whole window's totals, its failure rate and latency quantiles.
    pub fn summary(&self) -> Summary {
        self.summary_over(u64::MAX)
    }

    /// The same over the last `seconds` (at most the window).
    pub fn summary_over(&self, seconds: u64) -> Summary {
        let now = self.now_second();
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let span = seconds.min(ring.len() as u64);
        let mut totals = Totals::new();
        for s in ring
            .iter()
            .filter(|s| s.second != u64::MAX && now - s.second.min(now) < span)
        {
            totals.add(s);
        }
        totals.summary()
    }

    /// The window as consecutive steps of `step` seconds, oldest first, the last one ending
    /// now (a step with no requests has zeros).
    pub fn series(&self, step: u64) -> Vec<Point> {
        let step = step.max(1);
        let now = self.now_second();
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let steps = (ring.len() as u64).div_ceil(step);
        let mut totals: Vec<Totals> = (0..steps).map(|_| Totals::new()).collect();
        for s in ring.iter().filter(|s| s.second != u64::MAX && s.second <= now) {
            let age = now - s.second;
            if let Some(t) = totals.get_mut((age / step) as usize) {
                t.add(s);
            }
        }
        totals
            .iter()
            .enumerate()
            .rev()
            .map(|(i, t)| Point {
                ago_s: i as u64 * step,
                summary: t.summary(),
            })
            .collect()
    }
}

impl DegradationSettings {
    /// The level a window's summary computes (0, 1 or 2; levels 3 and 4 are set by operators
    /// or the emergency switch), with the reason.
    pub fn level_of(&self, s: &Summary) -> (u8, String) {
        if s.requests < self.min_requests.max(1) {
            return (0, String::new());
        }
        let why = |limit_ms: f64, rate: f64| {
            if s.p99_ms > limit_ms {
                Some(format!("p99 {:.0} ms > {limit_ms} ms", s.p99_ms))
            } else if s.error_rate > rate {
                Some(format!(
                    "error rate {:.1}% > {:.1}%",
                    s.error_rate * 100.0,
                    rate * 100.0
                ))
            } else {
                None
            }
        };
        if let Some(r) = why(self.level2_p99_ms, self.level2_error_rate) {
            (2, r)
        } else if let Some(r) = why(self.level1_p99_ms, self.level1_error_rate) {
            (1, r)
        } else {
            (0, String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_levels_from_errors_and_latency() {
        let settings = DegradationSettings {
            min_requests: 10,
            ..Default::default()
        };
        let w = Window::new(30);
        for _ in 0..10 {
            w.record(Duration::from_micros(200), false);
        }
        assert_eq!(settings.level_of(&w.summary()).0, 0);
        w.record(Duration::from_micros(200), true); // 1 of 11: 9%
        let (level, why) = settings.level_of(&w.summary());
        assert_eq!(level, 1, "{why}");
        for _ in 0..3 {
            w.record(Duration::from_secs(2), false);
        }
        let s = w.summary();
        assert!(s.p99_ms > 1000.0, "{s:?}");
        assert_eq!(settings.level_of(&s).0, 2);
    }

    #[test]
    fn p99_bucket_bounds_the_latency() {
        for us in [5u64, 11, 100, 999, 12_345, 2_000_000] {
            let d = Duration::from_micros(us);
            let i = bucket_of(d);
            assert!(bucket_upper_us(i) >= us as f64, "{us} in bucket {i}");
            assert!(
                i == 0 || bucket_upper_us(i - 1) <= us as f64 * 1.0001,
                "{us} in bucket {i}"
            );
        }
    }

    #[test]
    fn series_steps_end_now_and_count_cache_hits() {
        let w = Window::new(60);
        w.record_answer(Duration::from_micros(300), false, true);
        w.record_answer(Duration::from_millis(30), true, false);
        let series = w.series(10);
        assert_eq!(series.len(), 6);
        assert_eq!(
            series.iter().map(|p| p.ago_s).collect::<Vec<_>>(),
            [50, 40, 30, 20, 10, 0]
        );
        let now = series[5].summary;
        assert_eq!((now.requests, now.failures, now.cache_hits), (2, 1, 1));
        assert!(now.p99_ms >= 30.0 && now.p50_ms < 1.0, "{now:?}");
        assert!(series[..5].iter().all(|p| p.summary.requests == 0));
        assert_eq!(w.summary_over(10), w.summary());
    }
}
