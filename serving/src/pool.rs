//! Per-corridor serving pools (bulkheads): a bounded number of requests in flight, a worker
//! budget (concurrent engine runs), a deadline per request, and a dynamic batcher per model
//! version. One corridor's flood fills only its own queue: it is answered 429 with
//! `Retry-After` at once, while other corridors keep their workers.

use crate::error::ServeError;
use crate::models::{ModelTable, ServingVersion, VersionState};
use invariant_core::Tensor;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

/// Engine runs expected to take at most this long run on the task that asked for them, not
/// on the blocking pool: the hand-off there and back (two thread wake-ups) costs more than
/// they do. Longer runs keep off the async workers, so a slow model never stalls other
/// corridors' requests.
pub const INLINE_RUN: std::time::Duration = std::time::Duration::from_micros(50);

/// A version's engine cost per row: a moving average of its runs (including the hand-off of
/// those that went to the blocking pool), unknown until the first run.
#[derive(Debug)]
pub struct RunCost {
    nanos_per_row: std::sync::atomic::AtomicU64,
}

impl Default for RunCost {
    fn default() -> Self {
        Self {
            nanos_per_row: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }
}

impl RunCost {
    /// Whether a run of `rows` rows is expected within [`INLINE_RUN`] (never before the first
    /// run is measured).
    pub fn cheap(&self, rows: usize) -> bool {
        let per_row = self.nanos_per_row.load(Ordering::Relaxed);
        per_row != u64::MAX && per_row.saturating_mul(rows.max(1) as u64) <= INLINE_RUN.as_nanos() as u64
    }

    /// Records a run of `rows` rows that took `took`.
    pub fn record(&self, rows: usize, took: std::time::Duration) {
        let sample = (took.as_nanos() / rows.max(1) as u128).min(u64::MAX as u128 - 1) as u64;
        let old = self.nanos_per_row.load(Ordering::Relaxed);
        let new = if old == u64::MAX {
            sample
        } else {
            // An eighth of the way to the new sample (an exponential moving average).
            (old - old / 8).saturating_add(sample / 8)
        };
        self.nanos_per_row.store(new, Ordering::Relaxed);
    }
}

/// Runs `work`, an engine run of `rows` rows of `serving`, here when it is cheap (see
/// [`INLINE_RUN`]), else on the blocking pool; records what it cost. A panic in the engine is
/// answered as an internal error either way.
async fn run_engine<T: Send + 'static>(
    serving: &ServingVersion,
    rows: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServeError> {
    let started = std::time::Instant::now();
    let result = if serving.run_cost.cheap(rows) {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
            .map_err(|_| ServeError::internal("inference task failed: the engine panicked"))
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ServeError::internal(format!("inference task failed: {e}")))
    };
    serving.run_cost.record(rows, started.elapsed());
    result
}

/// Sizes of one corridor's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    /// Concurrent engine runs.
    pub workers: usize,
    /// Requests that may wait for a worker beyond those running.
    pub queue: usize,
}

/// Dynamic batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Whether batch-invariant versions are batched.
    pub enabled: bool,
    /// How long the batcher waits for more requests after the first.
    pub max_queue_delay: std::time::Duration,
}

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    deadline: Instant,
    queued: Instant,
    reply: oneshot::Sender<Result<(Vec<Tensor>, RunTimings), ServeError>>,
}

/// Where an engine run's time went, for the serving statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunTimings {
    /// From the request reaching the pool to its engine run starting.
    pub queue: std::time::Duration,
    /// The engine run (of the whole batch the request was part of).
    pub compute: std::time::Duration,
    /// Requests in that run (1 when not batched).
    pub batch_requests: usize,
}

/// How full a pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PoolLoad {
    /// Requests holding a place (running or waiting).
    pub in_flight: usize,
    /// Of those, waiting for a worker.
    pub queued: usize,
    /// Places: workers plus queue.
    pub capacity: usize,
}

/// One corridor's pool.
pub struct CorridorPool {
    corridor: String,
    sizes: PoolSizes,
    batching: BatchSettings,
    workers: Arc<Semaphore>,
    in_flight: AtomicUsize,
    batchers: Mutex<BTreeMap<(String, String), Batcher>>,
}

/// A running batcher: the instance it runs on and its queue.
struct Batcher {
    serving: Arc<ServingVersion>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for CorridorPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorridorPool")
            .field("corridor", &self.corridor)
            .field("sizes", &self.sizes)
            .finish()
    }
}

/// A request's place in the pool; released on drop.
pub struct Admission<'a> {
    pool: &'a CorridorPool,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn deadline_error(deadline_ms: u64) -> ServeError {
    ServeError::deadline(deadline_ms)
}

fn rows_of(serving: &ServingVersion, inputs: &[Tensor]) -> Option<usize> {
    let specs = &serving.model.manifest().inputs;
    if !specs.iter().all(|s| s.is_batched()) || !serving.model.manifest().outputs.iter().all(|s| s.is_batched()) {
        return None;
    }
    inputs.first().and_then(|t| t.shape.first().copied())
}

impl CorridorPool {
    /// A pool for `corridor`.
    pub fn new(corridor: &str, sizes: PoolSizes, batching: BatchSettings) -> Self {
        Self {
            corridor: corridor.to_string(),
            sizes,
            batching,
            workers: Arc::new(Semaphore::new(sizes.workers.max(1))),
            in_flight: AtomicUsize::new(0),
            batchers: Mutex::new(BTreeMap::new()),
        }
    }

    /// How full the pool is now.
    pub fn load(&self) -> PoolLoad {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let workers = self.sizes.workers.max(1);
        let running = workers.saturating_sub(self.workers.available_permits());
        PoolLoad {
            in_flight,
            queued: in_flight.saturating_sub(running),
            capacity: workers + self.sizes.queue,
        }
    }

    /// Takes a place, or answers 429 with the reason when `workers + queue` requests are
    /// already in flight.
    pub fn admit(&self) -> Result<Admission<'_>, ServeError> {
        let capacity = self.sizes.workers.max(1) + self.sizes.queue;
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= capacity {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("invariant_rejected_requests_total", "corridor" => self.corridor.clone(), "reason" => "queue_full")
                .increment(1);
            return Err(ServeError::Overloaded {
                retry_after_s: 1,
                message: format!(
                    "corridor {} is at capacity ({} workers, {} queued); retry later",
                    self.corridor, self.sizes.workers, self.sizes.queue
                ),
            });
        }
        Ok(Admission { pool: self })
    }

    /// Runs checked inputs (signature order) on `serving`, batched with other requests when the
    /// version is batch-invariant and batching is on; gives up with 504 at `deadline`.
    pub async fn run(
        &self,
        serving: Arc<ServingVersion>,
        inputs: Vec<Tensor>,
        deadline: Instant,
        deadline_ms: u64,
    ) -> Result<(Vec<Tensor>, RunTimings), ServeError> {
        let queued = Instant::now();
        let rows = rows_of(&serving, &inputs);
        let batchable = self.batching.enabled && serving.batch_invariant;
        if let (true, Some(rows)) = (batchable, rows) {
            let (reply, answer) = oneshot::channel();
            let sender = self.batcher(&serving);
            sender
                .send(Job {
                    inputs,
                    rows,
                    deadline,
                    queued,
                    reply,
                })
                .map_err(|_| ServeError::internal("the batcher of this model stopped"))?;
            return match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ServeError::internal("the batcher dropped the request")),
                Err(_) => Err(deadline_error(deadline_ms)),
            };
        }
        let permit = tokio::time::timeout_at(deadline, self.workers.clone().acquire_owned())
            .await
            .map_err(|_| deadline_error(deadline_ms))?
            .map_err(|_| ServeError::internal("worker pool closed"))?;
        let corridor = self.corridor.clone();
        let runner = serving.clone();
        let task = run_engine(&serving, rows.unwrap_or(1), move || {
            let _permit = permit;
            count_run(&runner, &corridor, 1);
            let start = Instant::now();
            let outputs = runner.infer(&corridor, inputs)?;
            let timings = RunTimings {
                queue: start.duration_since(queued),
                compute: start.elapsed(),
                batch_requests: 1,
            };
            Ok::<_, invariant_engine::EngineError>((outputs, timings))
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(r)) => r.map_err(ServeError::from),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(deadline_error(deadline_ms)),
        }
    }

    /// The batcher task of `serving` in this corridor, started on first use. A version reloaded
    /// with a new instance gets a new batcher; the old one answers what it has queued, then ends.
    fn batcher(&self, serving: &Arc<ServingVersion>) -> mpsc::UnboundedSender<Job> {
        let m = serving.model.manifest();
        let key = (m.name.clone(), m.version.to_string());
        let mut batchers = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = batchers
            .get(&key)
            .filter(|b| Arc::ptr_eq(&b.serving, serving) && !b.jobs.is_closed())
        {
            return b.jobs.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(
            rx,
            serving.clone(),
            self.workers.clone(),
            self.batching.max_queue_delay,
            self.corridor.clone(),
        ));
        batchers.insert(
            key,
            Batcher {
                serving: serving.clone(),
                jobs: tx.clone(),
            },
        );
        tx
    }

    /// Stops the batchers of instances that no longer serve: versions `table` does not hold, or
    /// holds with another instance (unloaded, reloaded). Each answers what it has queued, then
    /// ends, releasing its instance.
    pub fn retire_batchers(&self, table: &ModelTable) {
        let mut batchers = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        batchers.retain(|(model, version), b| {
            table.versions(model).into_iter().flatten().any(|e| {
                e.version == *version && matches!(&e.state, VersionState::Ready(s) if Arc::ptr_eq(s, &b.serving))
            })
        });
    }
}

fn count_run(serving: &ServingVersion, corridor: &str, requests: usize) {
    use crate::telemetry::{counter, histogram, Family};
    use std::sync::LazyLock;
    // Registered once per series, then used through each thread's own handles.
    static RUNS: LazyLock<Family<metrics::Counter>> =
        LazyLock::new(|| Family::new("invariant_engine_runs_total", &["model", "version", "corridor"]));
    static REQUESTS: LazyLock<Family<metrics::Counter>> =
        LazyLock::new(|| Family::new("invariant_engine_requests_total", &["model", "version", "corridor"]));
    static SIZES: LazyLock<Family<metrics::Histogram>> =
        LazyLock::new(|| Family::new("invariant_batch_size", &["model", "corridor"]));
    let m = serving.model.manifest();
    let version = m.version.to_string();
    let series = [m.name.as_str(), version.as_str(), corridor];
    RUNS.with(&series, counter, |c| c.increment(1));
    REQUESTS.with(&series, counter, |c| c.increment(requests as u64));
    SIZES.with(&[m.name.as_str(), corridor], histogram, |h| h.record(requests as f64));
}

/// Collects jobs until `max_batch_size` rows or `delay` after the first, runs them as one
/// batch on a worker, and hands each job its rows. Jobs past their deadline, or whose caller
/// left, are dropped before running.
async fn batch_loop(
    mut rx: mpsc::UnboundedReceiver<Job>,
    serving: Arc<ServingVersion>,
    workers: Arc<Semaphore>,
    delay: std::time::Duration,
    corridor: String,
) {
    let max_rows = serving.model.manifest().inference.max_batch_size;
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let mut jobs = vec![first];
        let mut rows = jobs[0].rows;
        // Take what is already queued, then (with a delay configured) wait for more. Requests that
        // arrive while a batch runs queue up and form the next batch, so batches grow with load
        // without a fixed wait at low load.
        let until = (!delay.is_zero()).then(|| Instant::now() + delay);
        while rows < max_rows {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => match until {
                    Some(until) => tokio::time::timeout_at(until, rx.recv()).await.ok().flatten(),
                    None => None,
                },
            };
            match next {
                Some(j) if rows + j.rows <= max_rows => {
                    rows += j.rows;
                    jobs.push(j);
                }
                Some(j) => {
                    carry = Some(j);
                    break;
                }
                None => break,
            }
        }
        let Ok(permit) = workers.clone().acquire_owned().await else {
            return;
        };
        let now = Instant::now();
        // Jobs whose deadline passed are answered so (not dropped); callers that left are dropped.
        let (live, expired): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .filter(|j| !j.reply.is_closed())
            .partition(|j| j.deadline > now);
        for job in expired {
            let ms = job.deadline.saturating_duration_since(job.queued).as_millis() as u64;
            let _ = job.reply.send(Err(ServeError::DeadlineExceeded(format!(
                "deadline exceeded after {ms} ms in the queue"
            ))));
        }
        let mut jobs = live;
        if jobs.is_empty() {
            continue;
        }
        let parts: Vec<Vec<Tensor>> = jobs.iter_mut().map(|j| std::mem::take(&mut j.inputs)).collect();
        let counts: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
        let runner = serving.clone();
        let corridor = corridor.clone();
        let started = Instant::now();
        let total: usize = counts.iter().sum();
        let result = run_engine(&serving, total, move || {
            let _permit = permit;
            count_run(&runner, &corridor, parts.len());
            let inputs = (0..parts[0].len())
                .map(|k| {
                    let column: Vec<&Tensor> = parts.iter().map(|p| &p[k]).collect();
                    Tensor::concat_rows(&column).ok_or_else(|| ServeError::internal("cannot stack batched inputs"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let outputs = runner.infer(&corridor, inputs).map_err(ServeError::from)?;
            split(&outputs, &counts)
        })
        .await
        .and_then(|r| r);
        let compute = started.elapsed();
        let batch_requests = jobs.len();
        match result {
            Ok(per_job) => {
                for (job, outputs) in jobs.into_iter().zip(per_job) {
                    let timings = RunTimings {
                        queue: started.saturating_duration_since(job.queued),
                        compute,
                        batch_requests,
                    };
                    let _ = job.reply.send(Ok((outputs, timings)));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Splits batched outputs back into each job's rows.
fn split(outputs: &[Tensor], counts: &[usize]) -> Result<Vec<Vec<Tensor>>, ServeError> {
    let mut per_job = vec![Vec::with_capacity(outputs.len()); counts.len()];
    for t in outputs {
        let width: usize = t.shape.iter().skip(1).product();
        let mut start = 0;
        for (j, &n) in counts.iter().enumerate() {
            let mut shape = t.shape.clone();
            shape[0] = n;
            if (start + n) * width > t.data.len() {
                return Err(ServeError::internal("batched output has fewer rows than requested"));
            }
            per_job[j].push(Tensor {
                name: t.name.clone(),
                shape,
                data: t.data.slice(start * width, n * width),
            });
            start += n;
        }
    }
    Ok(per_job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn runs_are_inline_only_once_measured_cheap() {
        let cost = RunCost::default();
        assert!(!cost.cheap(1), "unknown cost: the first run goes to the blocking pool");
        cost.record(1, Duration::from_micros(2));
        assert!(cost.cheap(1));
        assert!(cost.cheap(25), "25 rows of 2 µs fit in 50 µs");
        assert!(!cost.cheap(26));
        // A model that turns slow leaves the async workers after a few runs.
        for _ in 0..8 {
            cost.record(1, Duration::from_millis(5));
        }
        assert!(!cost.cheap(1));
    }
}
