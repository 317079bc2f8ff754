//! The Redis online store: how users grow past one machine. Each corridor may have its own
//! Redis (a URL per corridor, else a shared one).
//!
//! Key layout: `inv:{corridor}:fv:{view}:{entity key}`, a hash with fields `row` (the row as
//! JSON), `event_ms` and `vhash` (blake3 of the values). A write runs one Lua script per row
//! that stores it only if its event is newer, or equal with other values, so the rule "an older
//! event never overwrites a newer one" holds across writers. A read of many entities is one
//! pipelined round trip (`HGET row` per key), never one per feature. A failed connection is
//! dropped and re-established on the next call; while Redis is down, that corridor's calls fail
//! with a clear error and other corridors are unaffected.

use crate::store::{OnlineStore, Row, WriteOutcome};
use crate::FeatureError;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

const WRITE_IF_NEWER: &str = r#"
local event = tonumber(redis.call('HGET', KEYS[1], 'event_ms'))
local new_event = tonumber(ARGV[2])
if event and (event > new_event or (event == new_event and redis.call('HGET', KEYS[1], 'vhash') == ARGV[3])) then
  return 0
end
redis.call('HSET', KEYS[1], 'row', ARGV[1], 'event_ms', ARGV[2], 'vhash', ARGV[3])
return 1
"#;

/// One corridor's Redis.
struct Target {
    url: String,
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
}

/// The Redis store: a Redis per corridor.
pub struct RedisStore {
    targets: BTreeMap<String, Target>,
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
            let client = redis::Client::open(url.as_str())
                .map_err(|e| FeatureError::Store(format!("invalid Redis URL '{url}' for {corridor}: {e}")))?;
            targets.insert(
                corridor.clone(),
                Target {
                    url: url.clone(),
                    client,
                    conn: Mutex::new(None),
                },
            );
        }
        Ok(Self {
            targets,
            timeout,
            script: redis::Script::new(WRITE_IF_NEWER),
        })
    }

    /// Runs `op` on the corridor's connection, connecting first if needed; a failure drops the
    /// connection so the next call reconnects.
    fn with<T>(
        &self,
        corridor: &str,
        op: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, FeatureError> {
        let target = self
            .targets
            .get(corridor)
            .ok_or_else(|| FeatureError::Store(format!("no Redis is configured for corridor {corridor}")))?;
        let unavailable = |e: &dyn std::fmt::Display| {
            FeatureError::Store(format!(
                "Redis of corridor {corridor} ({}) unavailable: {e}",
                target.url
            ))
        };
        let mut guard = target.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let conn = target
                .client
                .get_connection_with_timeout(self.timeout)
                .map_err(|e| unavailable(&e))?;
            conn.set_read_timeout(Some(self.timeout)).map_err(|e| unavailable(&e))?;
            conn.set_write_timeout(Some(self.timeout))
                .map_err(|e| unavailable(&e))?;
            *guard = Some(conn);
        }
        let conn = guard.as_mut().ok_or_else(|| unavailable(&"no connection"))?;
        match op(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                *guard = None;
                Err(unavailable(&e))
            }
        }
    }
}

fn vhash(values: &[serde_json::Value]) -> String {
    blake3::hash(serde_json::to_string(values).unwrap_or_default().as_bytes())
        .to_hex()
        .to_string()
}

impl OnlineStore for RedisStore {
    fn write(&self, corridor: &str, view: &str, rows: &[(String, Row)]) -> Result<Vec<WriteOutcome>, FeatureError> {
        let mut payloads = Vec::with_capacity(rows.len());
        for (entity, row) in rows {
            let json = serde_json::to_string(row).map_err(|e| FeatureError::Store(e.to_string()))?;
            payloads.push((key(corridor, view, entity), json, row.event_ms, vhash(&row.values)));
        }
        self.with(corridor, |conn| {
            // Makes sure the script is cached so the pipelined EVALSHAs find it.
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(WRITE_IF_NEWER)
                .query::<String>(conn)?;
            let mut pipe = redis::pipe();
            for (k, json, event, hash) in &payloads {
                pipe.invoke_script(self.script.key(k).arg(json).arg(*event).arg(hash));
            }
            let done: Vec<i64> = pipe.query(conn)?;
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
        let raw: Vec<Option<String>> = self.with(corridor, |conn| {
            let mut pipe = redis::pipe();
            for e in entities {
                pipe.hget(key(corridor, view, e), "row");
            }
            pipe.query(conn)
        })?;
        raw.into_iter()
            .map(|r| match r {
                Some(json) => serde_json::from_str(&json)
                    .map(Some)
                    .map_err(|e| FeatureError::Store(e.to_string())),
                None => Ok(None),
            })
            .collect()
    }
}
