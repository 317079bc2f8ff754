//! Serving statistics per model version, in the shape of Triton's statistics extension:
//! successes and failures with their total time, time queued and computing, cache hits and
//! misses, inference and execution counts, and per-batch-size engine runs. Counted by the
//! [`StatsGuard`](crate::guards::StatsGuard) from each request's outcome.

use crate::guards::Outcome;
use crate::request::Source;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A count and a total duration in nanoseconds.
#[derive(Debug, Default)]
pub struct Duration {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Duration {
    fn add(&self, d: std::time::Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The count and total as they are now.
    pub fn read(&self) -> DurationStat {
        DurationStat {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// A count and a total duration, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default, utoipa::ToSchema)]
pub struct DurationStat {
    /// How many.
    pub count: u64,
    /// Their total time in nanoseconds.
    pub ns: u64,
}

/// One version's counters.
#[derive(Debug, Default)]
pub struct VersionStats {
    /// Answered requests (any source) and their time from arrival to answer.
    pub success: Duration,
    /// Failed requests that reached this version.
    pub fail: Duration,
    /// Time computed requests waited for a worker or batch.
    pub queue: Duration,
    /// Time of the engine runs that computed requests were part of.
    pub compute_infer: Duration,
    /// Answers found in a cache (inference cache or stored reply), with their time.
    pub cache_hit: Duration,
    /// Answers that had to be computed, with their time.
    pub cache_miss: Duration,
    /// Rows answered (Triton's inference count: batch entries).
    pub inference_count: AtomicU64,
    /// Engine runs that computed requests were part of.
    pub execution_count: AtomicU64,
    /// Milliseconds since the Unix epoch of the last answer (0: none yet).
    pub last_inference_ms: AtomicU64,
    /// Engine runs by number of requests batched together.
    batches: RwLock<BTreeMap<usize, Arc<Duration>>>,
}

impl VersionStats {
    /// Counts one outcome.
    pub fn record(&self, outcome: &Outcome<'_>) {
        match outcome.result {
            Ok(source) => {
                self.success.add(outcome.elapsed);
                self.inference_count
                    .fetch_add(outcome.rows.max(1) as u64, Ordering::Relaxed);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                self.last_inference_ms.store(now, Ordering::Relaxed);
                if source.cached() {
                    self.cache_hit.add(outcome.elapsed);
                } else {
                    self.cache_miss.add(outcome.elapsed);
                }
                if let (Source::Computed | Source::Fallback, Some(run)) = (source, outcome.run) {
                    self.queue.add(run.queue);
                    self.compute_infer.add(run.compute);
                    self.execution_count.fetch_add(1, Ordering::Relaxed);
                    self.batch(run.batch_requests).add(run.compute);
                }
            }
            Err(_) => self.fail.add(outcome.elapsed),
        }
    }

    fn batch(&self, size: usize) -> Arc<Duration> {
        if let Some(d) = self.batches.read().unwrap_or_else(|p| p.into_inner()).get(&size) {
            return d.clone();
        }
        self.batches
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(size)
            .or_default()
            .clone()
    }

    /// Engine runs by batch size (requests per run), smallest first.
    pub fn batch_stats(&self) -> Vec<(usize, DurationStat)> {
        self.batches
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(size, d)| (*size, d.read()))
            .collect()
    }
}

/// Every version's counters, by model and version.
#[derive(Debug, Default)]
pub struct Statistics {
    versions: RwLock<BTreeMap<String, BTreeMap<String, Arc<VersionStats>>>>,
}

impl Statistics {
    /// The counters of `model` `version` (created on first use).
    pub fn version(&self, model: &str, version: &str) -> Arc<VersionStats> {
        if let Some(s) = self
            .versions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .and_then(|m| m.get(version))
        {
            return s.clone();
        }
        self.versions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(model.to_string())
            .or_default()
            .entry(version.to_string())
            .or_default()
            .clone()
    }

    /// The counters of `model` `version` if it has any.
    pub fn get(&self, model: &str, version: &str) -> Option<Arc<VersionStats>> {
        self.versions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .and_then(|m| m.get(version))
            .cloned()
    }
}
