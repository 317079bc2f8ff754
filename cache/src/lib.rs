//! Inference cache of Invariant.
//!
//! One [`CorridorCache`] per corridor: an in-process L1 (`moka`), bounded in bytes (0 turns it off), with a
//! time-to-live per entry, and an optional Redis L2 ([`RedisL2`]) under a key prefix of the
//! corridor's own. Concurrent misses of the same key compute once (single flight): the first
//! caller computes, the others wait for its result. Keys are opaque 32-byte hashes (the
//! server's blake3 over corridor, model, version, artifact hash and the canonical inputs, or,
//! for its reply cache, a fast hash whose entries carry the exact request to compare, see
//! [`Entry::request`]); values are opaque bytes stored and returned unchanged. Redis errors never fail a request:
//! they count as misses, and the connection is re-established in the background.

use bytes::Bytes;
use moka::future::Cache;
use redis::AsyncCommands;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// A cache key: 32 bytes of a hash (cryptographic, unless the entry carries its request).
pub type Key = [u8; 32];

/// A cached answer.
#[derive(Debug)]
pub struct Entry {
    /// Model name (for invalidation by model).
    pub model: String,
    /// Model version.
    pub version: String,
    /// The stored bytes (shared, so a hit is served without copying them).
    pub bytes: Bytes,
    /// For an entry found under a fast, non-cryptographic key (the server's reply cache): the
    /// exact request it answers, which a hit must match byte for byte. Empty for entries under
    /// a cryptographic [`Key`].
    pub request: Bytes,
    /// Time to live from insertion.
    pub ttl: Duration,
    /// What the owner keeps with the entry (e.g. which model version and routing produced a
    /// stored reply, so a hit is admitted and observed like the answer it repeats). `None`
    /// for inference-cache entries.
    pub meta: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Computed by this call.
    Computed,
    /// Found in L1, or computed by a concurrent identical request this call waited for.
    L1,
    /// Found in Redis.
    L2,
}

impl Source {
    /// True unless the answer was computed for this request.
    pub fn cached(self) -> bool {
        self != Source::Computed
    }

    /// `l1`, `l2` or `computed`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Computed => "computed",
            Source::L1 => "l1",
            Source::L2 => "l2",
        }
    }
}

/// Cache construction errors.
#[derive(Debug, Error)]
pub enum CacheError {
    /// The Redis URL cannot be parsed.
    #[error("invalid Redis URL '{url}': {message}")]
    RedisUrl {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
}

struct TtlExpiry;

impl moka::Expiry<Key, Arc<Entry>> for TtlExpiry {
    fn expire_after_create(&self, _key: &Key, value: &Arc<Entry>, _created_at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A Redis L2 for one corridor: keys `inv:{corridor}:cache:{hex key}`, values the entry bytes,
/// expiring with the entry's TTL. Connects lazily and reconnects after failures (at most one
/// attempt per second); every operation is bounded by a timeout.
pub struct RedisL2 {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    conn: tokio::sync::Mutex<(Option<redis::aio::ConnectionManager>, Option<Instant>)>,
}

impl std::fmt::Debug for RedisL2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisL2").field("prefix", &self.prefix).finish()
    }
}

impl RedisL2 {
    /// An L2 on `url` for `corridor`; no connection is made until first use.
    pub fn new(url: &str, corridor: &str, timeout: Duration) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(|e| CacheError::RedisUrl {
            url: invariant_core::secret::redact_url(url),
            message: e.to_string(),
        })?;
        Ok(Self {
            client,
            prefix: format!("inv:{corridor}:cache:"),
            timeout,
            conn: tokio::sync::Mutex::new((None, None)),
        })
    }

    fn redis_key(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, hex::encode(key))
    }

    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = &guard.0 {
            return Some(c.clone());
        }
        if guard.1.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        guard.1 = Some(Instant::now());
        match tokio::time::timeout(self.timeout * 4, self.client.get_connection_manager()).await {
            Ok(Ok(c)) => {
                guard.0 = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                tracing::warn!(prefix = %self.prefix, error = %e, "Redis L2 unavailable; serving from L1 and the engines");
                None
            }
            Err(_) => {
                tracing::warn!(prefix = %self.prefix, "Redis L2 connection timed out");
                None
            }
        }
    }

    /// The stored bytes, or `None` on a miss or any Redis failure.
    pub async fn get(&self, key: &Key) -> Option<Vec<u8>> {
        let mut conn = self.connection().await?;
        let key = self.redis_key(key);
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, conn.get::<_, Option<Vec<u8>>>(&key)).await;
        round_trip("cache_get", &result, started);
        match result {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis L2 GET failed; treated as a miss");
                None
            }
            Err(_) => {
                tracing::warn!("Redis L2 GET timed out; treated as a miss");
                None
            }
        }
    }

    /// A round trip (`PING`): `Err` with why when this corridor's Redis cannot be reached.
    pub async fn ping(&self) -> Result<(), String> {
        let Some(mut conn) = self.connection().await else {
            return Err(format!(
                "cannot connect to the Redis of {}",
                self.prefix.trim_end_matches(':')
            ));
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await;
        round_trip("cache_ping", &result, started);
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("PING failed: {e}")),
            Err(_) => Err("PING timed out".into()),
        }
    }

    /// Stores bytes with a TTL; failures are logged and ignored.
    pub async fn set(&self, key: &Key, bytes: &[u8], ttl: Duration) {
        let Some(mut conn) = self.connection().await else {
            return;
        };
        let millis = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let key = self.redis_key(key);
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, conn.pset_ex::<_, _, ()>(&key, bytes, millis)).await;
        round_trip("cache_set", &result, started);
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "Redis L2 SET failed"),
            Err(_) => tracing::warn!("Redis L2 SET timed out"),
        }
    }
}

/// Records one Redis round trip in `invariant_redis_round_trip_seconds`.
fn round_trip<T, E>(
    purpose: &'static str,
    result: &Result<Result<T, E>, tokio::time::error::Elapsed>,
    started: Instant,
) {
    let outcome = match result {
        Ok(Ok(_)) => "ok",
        Ok(Err(_)) => "error",
        Err(_) => "timeout",
    };
    metrics::histogram!("invariant_redis_round_trip_seconds", "purpose" => purpose, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// Counts of one corridor's cache since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers found in L1.
    pub l1_hits: u64,
    /// Answers found in L2.
    pub l2_hits: u64,
    /// Lookups that found nothing (the answer was computed, or a cache-only read missed).
    pub misses: u64,
    /// L1 entries removed for room or because they expired.
    pub evictions: u64,
    /// Bytes L1 holds (its weighed size).
    pub bytes: u64,
    /// Entries L1 holds.
    pub entries: u64,
}

#[derive(Debug, Default)]
struct Counts {
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    evictions: Arc<AtomicU64>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The cache of one corridor.
pub struct CorridorCache {
    counts: Counts,
    /// Keys are already uniform hashes: a fast seeded hasher is enough for the map.
    l1: Cache<Key, Arc<Entry>, foldhash::fast::RandomState>,
    /// False when L1 was given no room: every lookup goes to L2 (or computes).
    l1_enabled: bool,
    l2: Option<RedisL2>,
}

impl std::fmt::Debug for CorridorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorridorCache")
            .field("l1_entries", &self.l1.entry_count())
            .field("l2", &self.l2)
            .finish()
    }
}

impl CorridorCache {
    /// A cache whose L1 holds at most `max_bytes` of entries (key and bookkeeping included).
    pub fn new(max_bytes: u64, l2: Option<RedisL2>) -> Self {
        let counts = Counts::default();
        let evictions = counts.evictions.clone();
        let l1 = Cache::builder()
            .eviction_listener(move |_k, _v, cause| {
                if matches!(
                    cause,
                    moka::notification::RemovalCause::Size | moka::notification::RemovalCause::Expired
                ) {
                    bump(&evictions);
                }
            })
            .max_capacity(max_bytes)
            .weigher(|_k: &Key, v: &Arc<Entry>| {
                u32::try_from(v.bytes.len() + v.request.len() + 128).unwrap_or(u32::MAX)
            })
            .expire_after(TtlExpiry)
            .support_invalidation_closures()
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            counts,
            l1,
            l1_enabled: max_bytes > 0,
            l2,
        }
    }

    /// The counts since start, and what L1 holds now.
    pub fn stats(&self) -> CacheStats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            l1_hits: read(&self.counts.l1_hits),
            l2_hits: read(&self.counts.l2_hits),
            misses: read(&self.counts.misses),
            evictions: read(&self.counts.evictions),
            bytes: self.l1.weighted_size(),
            entries: self.l1.entry_count(),
        }
    }

    /// Whether this corridor has a Redis L2.
    pub fn has_l2(&self) -> bool {
        self.l2.is_some()
    }

    /// The L2, if any.
    pub fn l2(&self) -> Option<&RedisL2> {
        self.l2.as_ref()
    }

    /// The cached entry for `key`, or the result of `compute` (stored in L1 and L2 with `ttl`).
    /// Concurrent calls with the same key run `compute` once; errors are not cached and are
    /// shared with the calls that waited.
    pub async fn get_or_compute<E, Fut>(
        &self,
        key: Key,
        model: &str,
        version: &str,
        ttl: Duration,
        compute: Fut,
    ) -> Result<(Arc<Entry>, Source), Arc<E>>
    where
        E: Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        const NONE: u8 = 0;
        const FROM_L2: u8 = 1;
        const COMPUTED: u8 = 2;
        let origin = AtomicU8::new(NONE);
        let make = |bytes: Vec<u8>| {
            Arc::new(Entry {
                model: model.to_string(),
                version: version.to_string(),
                bytes: Bytes::from(bytes),
                request: Bytes::new(),
                ttl,
                meta: None,
            })
        };
        let entry = self
            .l1
            .entry(key)
            .or_try_insert_with(async {
                if let Some(l2) = &self.l2 {
                    if let Some(bytes) = l2.get(&key).await {
                        origin.store(FROM_L2, Ordering::Relaxed);
                        return Ok(make(bytes));
                    }
                }
                let bytes = compute.await?;
                origin.store(COMPUTED, Ordering::Relaxed);
                if let Some(l2) = &self.l2 {
                    l2.set(&key, &bytes, ttl).await;
                }
                Ok(make(bytes))
            })
            .await?;
        let source = match origin.load(Ordering::Relaxed) {
            COMPUTED => Source::Computed,
            FROM_L2 => Source::L2,
            _ => Source::L1,
        };
        bump(match source {
            Source::Computed => &self.counts.misses,
            Source::L2 => &self.counts.l2_hits,
            Source::L1 => &self.counts.l1_hits,
        });
        Ok((entry.into_value(), source))
    }

    /// The L1 entry for `key`, if present: the cheapest possible hit (no timer, no admission).
    pub async fn peek(&self, key: &Key) -> Option<Arc<Entry>> {
        if !self.l1_enabled {
            return None;
        }
        let hit = self.l1.get(key).await;
        if hit.is_some() {
            bump(&self.counts.l1_hits);
        }
        hit
    }

    /// The cached answer for `key` from L1, else from L2, without computing anything (a
    /// degraded corridor's cache-only read); `None` on a miss.
    pub async fn lookup(&self, key: &Key) -> Option<(Bytes, Source)> {
        if let Some(e) = self.peek(key).await {
            return Some((e.bytes.clone(), Source::L1));
        }
        let found = match &self.l2 {
            Some(l2) => l2.get(key).await.map(|b| (Bytes::from(b), Source::L2)),
            None => None,
        };
        bump(if found.is_some() {
            &self.counts.l2_hits
        } else {
            &self.counts.misses
        });
        found
    }

    /// Stores an entry in L1 only (e.g. a rendered reply under its own key space).
    pub async fn insert_l1(&self, key: Key, entry: Arc<Entry>) {
        if self.l1_enabled {
            self.l1.insert(key, entry).await;
        }
    }

    /// Drops every L1 entry of `model` (another replica changed what serves it).
    pub fn invalidate_model(&self, model: &str) {
        let model = model.to_string();
        if let Err(e) = self.l1.invalidate_entries_if(move |_, v| v.model == model) {
            tracing::warn!(error = %e, "cannot invalidate L1 entries");
        }
    }

    /// Entries in L1 (after pending maintenance).
    pub async fn l1_entries(&self) -> u64 {
        self.l1.run_pending_tasks().await;
        self.l1.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn hit_after_miss_and_expiry() {
        let c = CorridorCache::new(1 << 20, None);
        let key = [1u8; 32];
        let (e, s) = c
            .get_or_compute::<(), _>(key, "m", "1", Duration::from_millis(200), async { Ok(vec![1, 2, 3]) })
            .await
            .unwrap();
        assert_eq!((e.bytes.to_vec(), s), (vec![1, 2, 3], Source::Computed));
        let (e, s) = c
            .get_or_compute::<(), _>(key, "m", "1", Duration::from_millis(200), async { Ok(vec![9]) })
            .await
            .unwrap();
        assert_eq!((e.bytes.to_vec(), s), (vec![1, 2, 3], Source::L1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (e, s) = c
            .get_or_compute::<(), _>(key, "m", "1", Duration::from_millis(200), async { Ok(vec![9]) })
            .await
            .unwrap();
        assert_eq!((e.bytes.to_vec(), s), (vec![9], Source::Computed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_compute_once() {
        let c = Arc::new(CorridorCache::new(1 << 20, None));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (c, runs) = (c.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_compute::<(), _>([7; 32], "m", "1", Duration::from_secs(60), async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(vec![42])
                })
                .await
                .unwrap()
            }));
        }
        let mut computed = 0;
        for t in tasks {
            let (e, s) = t.await.unwrap();
            assert_eq!(e.bytes, vec![42]);
            computed += usize::from(s == Source::Computed);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(computed, 1);
    }

    #[tokio::test]
    async fn errors_are_not_cached_and_invalidation_drops_a_model() {
        let c = CorridorCache::new(1 << 20, None);
        let r = c
            .get_or_compute::<&str, _>([3; 32], "m", "1", Duration::from_secs(60), async { Err("boom") })
            .await;
        assert_eq!(*r.unwrap_err(), "boom");
        let (_, s) = c
            .get_or_compute::<(), _>([3; 32], "m", "1", Duration::from_secs(60), async { Ok(vec![1]) })
            .await
            .unwrap();
        assert_eq!(s, Source::Computed);
        c.get_or_compute::<(), _>([4; 32], "other", "1", Duration::from_secs(60), async { Ok(vec![2]) })
            .await
            .unwrap();
        assert_eq!(c.l1_entries().await, 2);
        c.invalidate_model("m");
        assert_eq!(c.l1_entries().await, 1);
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_a_miss_not_an_error() {
        let l2 = RedisL2::new("redis://127.0.0.1:1/", "UAE-SA", Duration::from_millis(100)).unwrap();
        let c = CorridorCache::new(1 << 20, Some(l2));
        let (e, s) = c
            .get_or_compute::<(), _>([5; 32], "m", "1", Duration::from_secs(60), async { Ok(vec![5]) })
            .await
            .unwrap();
        assert_eq!((e.bytes.to_vec(), s), (vec![5], Source::Computed));
    }
}
