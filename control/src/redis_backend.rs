//! Documents in Redis, for replicas: one hash per document (`<prefix>:control:<doc>`, fields
//! `revision` and `doc`), swapped by a script that compares the revision, writes, and
//! publishes `{"doc", "revision"}` on `<prefix>:control` in one step, so no replica can
//! acknowledge a change over another's and every subscriber hears of it.
//!
//! A swap is acknowledged once Redis has executed it; that it also survives a crash of Redis
//! is Redis's persistence: run it with `appendonly yes` and `appendfsync always` (checked and
//! reported by [`RedisBackend::durability`]).

use crate::{Backend, ControlError, Stored};
use std::sync::Mutex;
use std::time::Duration;

/// KEYS: the document's hash. ARGV: expected revision, new revision, JSON, channel, message.
/// Returns `{1, new}` when stored, `{0, current}` when the revision moved on.
const SWAP: &str = r#"
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'revision', ARGV[2], 'doc', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {1, tonumber(ARGV[2])}
"#;

/// A Redis server's persistence settings, as text (`Redis appendonly yes, appendfsync always`).
pub fn persistence(c: &mut redis::Connection) -> String {
    let mut config = |name: &str| -> String {
        redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query::<Vec<String>>(c)
            .ok()
            .and_then(|v| v.get(1).cloned())
            .unwrap_or_else(|| "unknown".into())
    };
    format!(
        "Redis appendonly {}, appendfsync {}",
        config("appendonly"),
        config("appendfsync")
    )
}

/// Whether [`persistence`] says an acknowledged write survives a crash of Redis itself.
pub fn durable(persistence: &str) -> bool {
    persistence.contains("appendonly yes") && persistence.contains("appendfsync always")
}

/// One kept connection to a Redis, opened on first use and again after a failure, with
/// read and write timeouts. Shared by the control backend and the review queue.
pub struct Link {
    url: String,
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("url", &self.place())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link to `url` (nothing is connected yet); `Err` names what is wrong with the URL.
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(Self {
            url: url.to_string(),
            client: redis::Client::open(url).map_err(|e| e.to_string())?,
            conn: Mutex::new(None),
        })
    }

    /// The URL with any password redacted.
    pub fn place(&self) -> String {
        invariant_core::secret::redact_url(&self.url)
    }

    /// Runs `f` on the kept connection, reconnecting once after a failure; a command that
    /// is not `idempotent` is not sent twice (its first try may have been executed). `Err` is
    /// the last failure's message.
    pub fn run<T>(
        &self,
        idempotent: bool,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = String::new();
        for _ in 0..2 {
            if slot.is_none() {
                match self.connect() {
                    Ok(c) => *slot = Some(c),
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                }
            }
            let Some(conn) = slot.as_mut() else { continue };
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    last = e.to_string();
                    *slot = None;
                    if !idempotent || !(e.is_io_error() || e.is_connection_dropped()) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let conn = self.client.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        conn.set_write_timeout(Some(Duration::from_secs(3)))?;
        Ok(conn)
    }
}

/// Documents in one Redis.
#[derive(Debug)]
pub struct RedisBackend {
    link: Link,
    prefix: String,
    durability: String,
}

impl RedisBackend {
    /// The backend on `url` with keys under `prefix` (e.g. `inv`). Connects once to check the
    /// server and read its persistence settings.
    pub fn open(url: &str, prefix: &str) -> Result<Self, ControlError> {
        let place = invariant_core::secret::redact_url(url);
        let fail = |message: String| ControlError::Unavailable {
            doc: "*".into(),
            place: place.clone(),
            message,
        };
        let backend = Self {
            link: Link::new(url).map_err(fail)?,
            prefix: prefix.to_string(),
            durability: String::new(),
        };
        let durability = backend
            .with_conn("*", true, |c| Ok(persistence(c)))
            .map_err(|e| fail(format!("cannot reach it: {e}")))?;
        if !durable(&durability) {
            tracing::warn!(
                redis = %place,
                "{durability}: an acknowledged control change can be lost if Redis itself crashes; \
                 run it with appendonly yes and appendfsync always"
            );
        }
        Ok(Self { durability, ..backend })
    }

    /// The hash of `doc`.
    pub fn key(&self, doc: &str) -> String {
        format!("{}:control:{doc}", self.prefix)
    }

    /// The channel changes are published on.
    pub fn channel(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// [`Link::run`], its failure as the control error of `doc`.
    fn with_conn<T>(
        &self,
        doc: &str,
        idempotent: bool,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, ControlError> {
        self.link
            .run(idempotent, f)
            .map_err(|message| ControlError::Unavailable {
                doc: doc.to_string(),
                place: self.link.place(),
                message,
            })
    }
}

impl Backend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn place(&self) -> String {
        self.link.place()
    }

    fn read(&self, doc: &str) -> Result<Option<Stored>, ControlError> {
        let key = self.key(doc);
        let (revision, bytes): (Option<u64>, Option<Vec<u8>>) = self.with_conn(doc, true, |c| {
            redis::cmd("HMGET").arg(&key).arg("revision").arg("doc").query(c)
        })?;
        Ok(match (revision, bytes) {
            (Some(revision), Some(bytes)) => Some(Stored { revision, bytes }),
            _ => None,
        })
    }

    fn revision(&self, doc: &str) -> Result<u64, ControlError> {
        let key = self.key(doc);
        let revision: Option<u64> =
            self.with_conn(doc, true, |c| redis::cmd("HGET").arg(&key).arg("revision").query(c))?;
        Ok(revision.unwrap_or(0))
    }

    fn swap(&self, doc: &str, expected: u64, next: &Stored) -> Result<(), ControlError> {
        let key = self.key(doc);
        let message = serde_json::json!({"doc": doc, "revision": next.revision}).to_string();
        let script = redis::Script::new(SWAP);
        let channel = self.channel();
        let sent = self.with_conn(doc, false, |c| {
            script
                .key(&key)
                .arg(expected)
                .arg(next.revision)
                .arg(next.bytes.as_slice())
                .arg(&channel)
                .arg(&message)
                .invoke::<(u8, u64)>(c)
        });
        let (stored, current) = match sent {
            Ok(reply) => reply,
            // The connection failed with the script sent: it ran or it did not. The stored
            // document says which, so a change is never reported lost when it was made (nor
            // made twice by a retry).
            Err(e) => match self.read(doc) {
                Ok(Some(now)) if now == *next => return Ok(()),
                _ => return Err(e),
            },
        };
        if stored == 1 {
            Ok(())
        } else {
            Err(ControlError::Conflict {
                doc: doc.to_string(),
                expected,
                current,
            })
        }
    }

    fn durability(&self) -> String {
        self.durability.clone()
    }

    fn notifications(&self) -> Option<(String, String)> {
        Some((self.link.url.clone(), self.channel()))
    }
}
