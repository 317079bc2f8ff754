//! The Redis online store: how users grow past one machine. Each corridor may have its own
//! Redis (a URL per corridor, else a shared one), a single server (`redis://…`) or a Redis
//! Cluster (`redis+cluster://host:port,host:port/`, seed nodes; keys spread over the slots).
//!
//! Key layout: `inv:{corridor}:fv:{view}:{entity key}`, a hash with fields `row` (the row as
//! JSON), `event_ms` and `vhash` (blake3 of the values). A write runs one Lua script per row
//! that stores it only if its event is newer, or equal with other values, so the rule "an older
//! event never overwrites a newer one" holds across writers. A read of many entities is one
//! pipelined round trip (`HGET row` per key), never one per feature. Reads of a single Redis
//! go over one multiplexed asynchronous connection per corridor
//! ([`OnlineStore::read_async`]): the reads of every caller are pipelined on it, and a caller
//! waiting for Redis holds no thread. Writes, health checks and Redis Cluster reads (whose
//! keys span slots, which one asynchronous pipeline cannot) are blocking calls over a few
//! connections per corridor. A failed connection is dropped; for the next second the
//! corridor's calls fail at once with the failure's text (no caller waits on a dead or hung
//! Redis but the one that retries after that second), then one call reconnects. Other
//! corridors are unaffected.

use crate::store::{OnlineStore, ReadFuture, Row, WriteOutcome};
use crate::FeatureError;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connections per corridor.
const CONNECTIONS: usize = 8;

/// How long a corridor's calls fail fast after its Redis failed, before one call retries.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// ARGV: the row, its event time, its values' hash, its creation time (-1: none), the
/// latest valid time. The same rule as [`Row::replaces`]: a newer event, or the same event
/// created later, or the same of both with other values; a stored row whose event time is out
/// of range is always replaced.
const WRITE_IF_NEWER: &str = r#"
local event = tonumber(redis.call('HGET', KEYS[1], 'event_ms'))
local created = tonumber(redis.call('HGET', KEYS[1], 'created_ms') or '-1')
local new_event = tonumber(ARGV[2])
local new_created = tonumber(ARGV[4])
if event and event >= 0 and event <= tonumber(ARGV[5]) then
  if event > new_event or (event == new_event and (created > new_created or
      (created == new_created and redis.call('HGET', KEYS[1], 'vhash') == ARGV[3]))) then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'row', ARGV[1], 'event_ms', ARGV[2], 'vhash', ARGV[3], 'created_ms', ARGV[4])
return 1
"#;

/// A connection to one Redis, or to a Redis Cluster.
enum Conn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

/// How to connect: a URL `redis://host:port/…`, or `redis+cluster://host:port,host:port/`
/// naming seed nodes of a Redis Cluster.
enum Endpoint {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// One corridor's Redis.
struct Target {
    url: String,
    endpoint: Endpoint,
    /// A few connections, so calls of the corridor do not wait for one another's round trips
    /// (each with the [`Target::epoch`] it was made in).
    conns: Vec<Mutex<Option<(u64, Conn)>>>,
    /// The multiplexed asynchronous connection reads share (single Redis only), made on
    /// first use.
    shared: tokio::sync::Mutex<Option<(u64, redis::aio::MultiplexedConnection)>>,
    /// Counts failures: a connection made before the last failure is not used again (after
    /// Redis restarts, every connection to the old process is dead, not just the one that
    /// noticed).
    epoch: std::sync::atomic::AtomicU64,
    /// The last failure and until when calls fail fast because of it.
    down: Mutex<Option<(Instant, String)>>,
}

impl Target {
    /// The error of a call that could not reach the corridor's Redis.
    fn unavailable(&self, corridor: &str, e: &dyn std::fmt::Display) -> FeatureError {
        FeatureError::Store(format!("Redis of corridor {corridor} ({}) unavailable: {e}", self.url))
    }

    /// Fails at once while the last failure is recent (see the module's documentation).
    fn fail_fast(&self, corridor: &str) -> Result<(), FeatureError> {
        if let Some((until, why)) = self.down.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let now = Instant::now();
            if now < *until {
                return Err(self.unavailable(
                    corridor,
                    &format!("{why} (retried in {} ms)", until.duration_since(now).as_millis().max(1)),
                ));
            }
        }
        Ok(())
    }

    /// Records a failure: calls fail fast for [`RETRY_AFTER`], then reconnect.
    fn failed(&self, corridor: &str, e: &dyn std::fmt::Display) -> FeatureError {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now() + RETRY_AFTER, e.to_string()));
        self.unavailable(corridor, e)
    }

    /// The current epoch (see [`Target::epoch`]).
    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records a call that reached Redis.
    fn answered(&self) {
        *self.down.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Records a round trip's duration and outcome.
fn observe(purpose: &'static str, started: Instant, error: Option<&redis::RedisError>) {
    let outcome = match error {
        None => "ok",
        Some(e) if e.is_timeout() => "timeout",
        Some(_) => "error",
    };
    metrics::histogram!("invariant_redis_round_trip_seconds", "purpose" => purpose, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// Stored rows from the `row` fields read.
fn decode(raw: Vec<Option<String>>) -> Result<Vec<Option<Row>>, FeatureError> {
    raw.into_iter()
        .map(|r| match r {
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| FeatureError::Store(e.to_string())),
            None => Ok(None),
        })
        .collect()
}

/// The Redis store: a Redis per corridor.
pub struct RedisStore {
    targets: BTreeMap<String, Target>,
    /// Round robin over busy connections.
    next: std::sync::atomic::AtomicUsize,
    timeout: Duration,
    script: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("corridors", &self.targets.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn key(corridor: &str, view: &str, entity: &str) -> String {
    format!("inv:{corridor}:fv:{view}:{entity}")
}

impl RedisStore {
    /// A store with a Redis URL per corridor; no connection is made until first use.
    pub fn new(urls: &BTreeMap<String, String>, timeout: Duration) -> Result<Self, FeatureError> {
        let mut targets = BTreeMap::new();
        for (corridor, url) in urls {
            let invalid = |e: redis::RedisError| {
                FeatureError::Store(format!(
                    "invalid Redis URL '{}' for {corridor}: {e}",
                    invariant_core::secret::redact_url(url)
                ))
            };
            let endpoint = match url.strip_prefix("redis+cluster://") {
                Some(nodes) => {
                    let nodes: Vec<String> = nodes
                        .trim_end_matches('/')
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(|n| format!("redis://{n}/"))
                        .collect();
                    Endpoint::Cluster(
                        redis::cluster::ClusterClientBuilder::new(nodes)
                            .connection_timeout(timeout)
                            .response_timeout(timeout)
                            .build()
                            .map_err(invalid)?,
                    )
                }
                None => Endpoint::Single(redis::Client::open(url.as_str()).map_err(invalid)?),
            };
            targets.insert(
                corridor.clone(),
                Target {
                    url: url.clone(),
                    endpoint,
                    conns: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(),
                    shared: tokio::sync::Mutex::new(None),
                    epoch: std::sync::atomic::AtomicU64::new(0),
                    down: Mutex::new(None),
                },
            );
        }
        Ok(Self {
            targets,
            next: std::sync::atomic::AtomicUsize::new(0),
            timeout,
            script: redis::Script::new(WRITE_IF_NEWER),
        })
    }

    fn target(&self, corridor: &str) -> Result<&Target, FeatureError> {
        self.targets
            .get(corridor)
            .ok_or_else(|| FeatureError::Store(format!("no Redis is configured for corridor {corridor}")))
    }

    /// Runs `op` on one of the corridor's blocking connections, connecting first if needed; a
    /// failure drops the connection so the next call reconnects.
    fn with<T>(
        &self,
        corridor: &str,
        purpose: &'static str,
        op: impl FnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, FeatureError> {
        let target = self.target(corridor)?;
        target.fail_fast(corridor)?;
        // A free connection, else wait for one (the caller's bulkhead bounds the waiters).
        let mut guard = target.conns.iter().find_map(|c| c.try_lock().ok()).unwrap_or_else(|| {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % target.conns.len();
            target.conns[i].lock().unwrap_or_else(|p| p.into_inner())
        });
        let epoch = target.epoch();
        if guard.as_ref().is_some_and(|(made, _)| *made != epoch) {
            *guard = None;
        }
        if guard.is_none() {
            let failed = |e: &dyn std::fmt::Display| target.failed(corridor, e);
            let conn = match &target.endpoint {
                Endpoint::Single(client) => {
                    let conn = client
                        .get_connection_with_timeout(self.timeout)
                        .map_err(|e| failed(&e))?;
                    conn.set_read_timeout(Some(self.timeout)).map_err(|e| failed(&e))?;
                    conn.set_write_timeout(Some(self.timeout)).map_err(|e| failed(&e))?;
                    Conn::Single(conn)
                }
                Endpoint::Cluster(client) => Conn::Cluster(Box::new(client.get_connection().map_err(|e| failed(&e))?)),
            };
            *guard = Some((epoch, conn));
        }
        let (_, conn) = guard
            .as_mut()
            .ok_or_else(|| target.unavailable(corridor, &"no connection"))?;
        let started = Instant::now();
        let result = op(conn);
        observe(purpose, started, result.as_ref().err());
        match result {
            Ok(v) => {
                target.answered();
                Ok(v)
            }
            Err(e) => {
                *guard = None;
                Err(target.failed(corridor, &e))
            }
        }
    }

    /// A read over the corridor's multiplexed connection (single Redis), connecting first if
    /// needed; a failure drops the connection so the next read reconnects.
    async fn read_shared(
        &self,
        target: &Target,
        client: &redis::Client,
        corridor: &str,
        view: &str,
        entities: &[String],
    ) -> Result<Vec<Option<Row>>, FeatureError> {
        target.fail_fast(corridor)?;
        let mut conn = {
            let mut slot = target.shared.lock().await;
            let epoch = target.epoch();
            match slot.as_ref().filter(|(made, _)| *made == epoch) {
                Some((_, conn)) => conn.clone(),
                None => {
                    // Checked again: the caller before this one may have just failed.
                    target.fail_fast(corridor)?;
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout));
                    let conn = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(|e| target.failed(corridor, &e))?;
                    *slot = Some((epoch, conn.clone()));
                    conn
                }
            }
        };
        let mut pipe = redis::pipe();
        for e in entities {
            pipe.hget(key(corridor, view, e), "row");
        }
        let started = Instant::now();
        let result: redis::RedisResult<Vec<Option<String>>> = pipe.query_async(&mut conn).await;
        observe("feature_read", started, result.as_ref().err());
        match result {
            Ok(raw) => {
                target.answered();
                decode(raw)
            }
            Err(e) => Err(target.failed(corridor, &e)),
        }
    }
}

fn vhash(values: &[serde_json::Value]) -> String {
    blake3::hash(serde_json::to_string(values).unwrap_or_default().as_bytes())
        .to_hex()
        .to_string()
}

impl OnlineStore for RedisStore {
    fn check(&self, corridor: &str) -> Result<(), FeatureError> {
        self.with(corridor, "feature_ping", |conn| match conn {
            Conn::Single(c) => redis::cmd("PING").query::<String>(c),
            Conn::Cluster(c) => redis::cmd("PING").query::<String>(c.as_mut()),
        })
        .map(|_| ())
    }

    fn write(&self, corridor: &str, view: &str, rows: &[(String, Row)]) -> Result<Vec<WriteOutcome>, FeatureError> {
        let mut payloads = Vec::with_capacity(rows.len());
        for (entity, row) in rows {
            let json = serde_json::to_string(row).map_err(|e| FeatureError::Store(e.to_string()))?;
            payloads.push((
                key(corridor, view, entity),
                json,
                (row.event_ms, row.created_ms.unwrap_or(-1)),
                vhash(&row.values),
            ));
        }
        let invocations: Vec<redis::ScriptInvocation<'_>> = payloads
            .iter()
            .map(|(k, json, (event, created), hash)| {
                let mut i = self.script.key(k);
                i.arg(json).arg(*event).arg(hash).arg(*created).arg(crate::time::MAX_MS);
                i
            })
            .collect();
        self.with(corridor, "feature_write", |conn| {
            let done: Vec<i64> = match conn {
                Conn::Single(conn) => {
                    // Makes sure the script is cached so the pipelined EVALSHAs find it.
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(WRITE_IF_NEWER)
                        .query::<String>(conn)?;
                    let mut pipe = redis::pipe();
                    for i in &invocations {
                        pipe.invoke_script(i);
                    }
                    pipe.query(conn)?
                }
                // In a cluster each row's script runs on the node that owns its key.
                Conn::Cluster(conn) => invocations
                    .iter()
                    .map(|i| i.invoke(&mut **conn))
                    .collect::<redis::RedisResult<Vec<i64>>>()?,
            };
            Ok(done
                .into_iter()
                .map(|d| {
                    if d == 1 {
                        WriteOutcome::Written
                    } else {
                        WriteOutcome::Ignored
                    }
                })
                .collect())
        })
    }

    fn read(&self, corridor: &str, view: &str, entities: &[String]) -> Result<Vec<Option<Row>>, FeatureError> {
        let raw: Vec<Option<String>> = self.with(corridor, "feature_read", |conn| match conn {
            Conn::Single(conn) => {
                let mut pipe = redis::pipe();
                for e in entities {
                    pipe.hget(key(corridor, view, e), "row");
                }
                pipe.query(conn)
            }
            Conn::Cluster(conn) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for e in entities {
                    pipe.hget(key(corridor, view, e), "row");
                }
                pipe.query(conn)
            }
        })?;
        decode(raw)
    }

    fn read_async<'a>(&'a self, corridor: &'a str, view: &'a str, entities: &'a [String]) -> Option<ReadFuture<'a>> {
        let target = self.targets.get(corridor)?;
        let Endpoint::Single(client) = &target.endpoint else {
            return None;
        };
        Some(Box::pin(self.read_shared(target, client, corridor, view, entities)))
    }

    fn async_reads(&self, corridor: &str) -> bool {
        matches!(
            self.targets.get(corridor),
            Some(Target {
                endpoint: Endpoint::Single(_),
                ..
            })
        )
    }
}
