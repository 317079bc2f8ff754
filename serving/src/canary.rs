//! Canary health: a sliding window of outcomes per canary version. A canary whose error rate
//! or p99 latency exceeds the configured limits over the window is rolled back.

use crate::config::CanaryConfig;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    ok: bool,
    latency: Duration,
}

/// Outcomes of canary-routed requests, by (model, version).
#[derive(Debug)]
pub struct CanaryMonitor {
    config: CanaryConfig,
    windows: Mutex<BTreeMap<(String, String), VecDeque<Sample>>>,
}

impl CanaryMonitor {
    /// A monitor with the configured window and limits.
    pub fn new(config: CanaryConfig) -> Self {
        Self {
            config,
            windows: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one canary request. Returns why the canary must be rolled back when the window
    /// (at least `min_requests` within `window_seconds`) breaks a limit; the window is then
    /// cleared so one breach triggers one rollback.
    pub fn record(&self, model: &str, version: &str, ok: bool, latency: Duration) -> Option<String> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.entry((model.to_string(), version.to_string())).or_default();
        window.push_back(Sample { at: now, ok, latency });
        let horizon = Duration::from_secs_f64(self.config.window_seconds);
        while window.front().is_some_and(|s| now.duration_since(s.at) > horizon) {
            window.pop_front();
        }
        let n = window.len();
        if n < self.config.min_requests {
            return None;
        }
        let errors = window.iter().filter(|s| !s.ok).count();
        let error_rate = errors as f64 / n as f64;
        let mut latencies: Vec<Duration> = window.iter().map(|s| s.latency).collect();
        latencies.sort_unstable();
        let p99 = latencies[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
        let why = if error_rate > self.config.max_error_rate {
            Some(format!(
                "canary error rate {:.1}% over the last {n} requests exceeds {:.1}%",
                error_rate * 100.0,
                self.config.max_error_rate * 100.0
            ))
        } else if p99.as_secs_f64() * 1000.0 > self.config.max_p99_ms {
            Some(format!(
                "canary p99 latency {:.0} ms over the last {n} requests exceeds {:.0} ms",
                p99.as_secs_f64() * 1000.0,
                self.config.max_p99_ms
            ))
        } else {
            None
        };
        if why.is_some() {
            window.clear();
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CanaryConfig {
        CanaryConfig {
            window_seconds: 60.0,
            min_requests: 20,
            max_error_rate: 0.05,
            max_p99_ms: 2000.0,
        }
    }

    #[test]
    fn trips_on_error_rate_after_enough_requests() {
        let m = CanaryMonitor::new(config());
        for i in 0..19 {
            assert!(
                m.record("m", "1", i % 2 == 0, Duration::from_millis(1)).is_none(),
                "needs 20 requests"
            );
        }
        let why = m.record("m", "1", false, Duration::from_millis(1)).unwrap();
        assert!(why.contains("error rate") && why.contains("20 requests"), "{why}");
        assert!(
            m.record("m", "1", false, Duration::from_millis(1)).is_none(),
            "window cleared after a trip"
        );
    }

    #[test]
    fn trips_on_p99_and_not_on_healthy_traffic() {
        let m = CanaryMonitor::new(config());
        for _ in 0..100 {
            assert!(m.record("m", "1", true, Duration::from_millis(5)).is_none());
        }
        let mut why = None;
        for _ in 0..3 {
            why = why.or(m.record("m", "1", true, Duration::from_secs(3)));
        }
        assert!(why.unwrap().contains("p99"));
    }
}
