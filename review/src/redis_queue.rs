//! The review queue in Redis, for replicas that share one queue. Per corridor: a sequence
//! counter (`<prefix>:review:<C>:seq`), the set of unresolved item ids (`…:open`) and the
//! newest resolved ids by resolution time (`…:resolved`, trimmed to `keep_resolved`); per item
//! a hash (`<prefix>:review:item:<id>`, fields `rev` and `item`, the item's JSON).
//!
//! Intake is one script (check the corridor's open count, take the next sequence number,
//! store the item), so the limit and the ids hold whichever replica submits. Every change is a
//! compare-and-set on the item's `rev`: claim, resolve, release and escalate read the item,
//! apply the same rules as the embedded queue, and store it only if no one changed it
//! meanwhile (else they run again on the fresh item), so two replicas never give one item to
//! two reviewers. A change is acknowledged once Redis has executed it; that it survives a
//! crash of Redis is Redis's persistence (`appendonly yes`, `appendfsync always`; checked at
//! open and reported by [`RedisQueue::durability`]).

use crate::{Item, ReviewError};
use invariant_control::redis_backend::{durable, persistence, Link};

/// KEYS: sequence counter, open set. ARGV: the limit, the corridor, the item key prefix, the
/// item's JSON after its id field. Returns `{1, seq}` when stored, `{0, open}` when full.
const SUBMIT: &str = r#"
local open = redis.call('SCARD', KEYS[2])
if open >= tonumber(ARGV[1]) then
  return {0, open}
end
local seq = redis.call('INCR', KEYS[1])
local id = string.format('%s-%08d', ARGV[2], seq)
redis.call('HSET', ARGV[3] .. id, 'rev', 1, 'item', '{"id":"' .. id .. '",' .. ARGV[4])
redis.call('SADD', KEYS[2], id)
return {1, seq}
"#;

/// KEYS: item hash, open set, resolved set. ARGV: expected rev, JSON, resolution time (empty
/// when unresolved), id, how many resolved ids to keep. Returns 1 when stored, 0 when the item
/// changed meanwhile.
const CHANGE: &str = r#"
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if rev ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'rev', rev + 1, 'item', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('SREM', KEYS[2], ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[5]) + 1))
end
return 1
"#;

/// Review items in one Redis.
#[derive(Debug)]
pub struct RedisQueue {
    link: Link,
    prefix: String,
    durability: String,
}

impl RedisQueue {
    /// The queue on `url` with keys under `prefix`. Connects once to check the server and read
    /// its persistence settings.
    pub fn open(url: &str, prefix: &str) -> Result<Self, ReviewError> {
        let link = Link::new(url).map_err(|e| ReviewError::Store(format!("Redis: {e}")))?;
        let queue = Self {
            link,
            prefix: prefix.to_string(),
            durability: String::new(),
        };
        let durability = queue.with_conn(true, |c| Ok(persistence(c)))?;
        if !durable(&durability) {
            tracing::warn!(
                redis = %queue.link.place(),
                "{durability}: an acknowledged review change can be lost if Redis itself crashes; \
                 run it with appendonly yes and appendfsync always"
            );
        }
        Ok(Self { durability, ..queue })
    }

    /// Redis's persistence settings, as read at open.
    pub fn durability(&self) -> &str {
        &self.durability
    }

    fn key(&self, corridor: &str, what: &str) -> String {
        format!("{}:review:{corridor}:{what}", self.prefix)
    }

    fn item_prefix(&self) -> String {
        format!("{}:review:item:", self.prefix)
    }

    /// [`Link::run`], its failure as a store error.
    fn with_conn<T>(
        &self,
        idempotent: bool,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, ReviewError> {
        self.link
            .run(idempotent, f)
            .map_err(|e| ReviewError::Store(format!("Redis {}: {e}", self.link.place())))
    }

    /// Stores `item` (its id still empty) as `corridor`'s next item unless the corridor holds
    /// `max_open` unresolved items already (then `Ok(Err(count))`).
    pub fn submit(&self, corridor: &str, mut item: Item, max_open: usize) -> Result<Result<Item, usize>, ReviewError> {
        item.id.clear();
        let json = serde_json::to_string(&item).map_err(|e| ReviewError::Store(e.to_string()))?;
        let rest = json
            .strip_prefix(r#"{"id":"","#)
            .ok_or_else(|| ReviewError::Store("an item's JSON must start with its id".into()))?
            .to_string();
        let script = redis::Script::new(SUBMIT);
        let (seq_key, open_key, prefix) = (
            self.key(corridor, "seq"),
            self.key(corridor, "open"),
            self.item_prefix(),
        );
        let (stored, n): (u8, u64) = self.with_conn(false, |c| {
            script
                .key(&seq_key)
                .key(&open_key)
                .arg(max_open)
                .arg(corridor)
                .arg(&prefix)
                .arg(&rest)
                .invoke(c)
        })?;
        if stored == 0 {
            return Ok(Err(n as usize));
        }
        item.id = format!("{corridor}-{n:08}");
        Ok(Ok(item))
    }

    /// One item and its revision.
    pub fn get(&self, id: &str) -> Result<Option<(Item, u64)>, ReviewError> {
        let key = format!("{}{id}", self.item_prefix());
        let (rev, json): (Option<u64>, Option<String>) =
            self.with_conn(true, |c| redis::cmd("HMGET").arg(&key).arg("rev").arg("item").query(c))?;
        match (rev, json) {
            (Some(rev), Some(json)) => {
                let item = serde_json::from_str(&json).map_err(|e| ReviewError::Store(format!("item {id}: {e}")))?;
                Ok(Some((item, rev)))
            }
            _ => Ok(None),
        }
    }

    /// Stores `item` if it is still at `rev`; `false` when someone changed it meanwhile.
    pub fn replace(&self, item: &Item, rev: u64, keep_resolved: usize) -> Result<bool, ReviewError> {
        let json = serde_json::to_string(item).map_err(|e| ReviewError::Store(e.to_string()))?;
        let resolved_at = item
            .resolution
            .as_ref()
            .map(|r| r.at_ms.to_string())
            .unwrap_or_default();
        let script = redis::Script::new(CHANGE);
        let item_key = format!("{}{}", self.item_prefix(), item.id);
        let (open_key, resolved_key) = (self.key(&item.corridor, "open"), self.key(&item.corridor, "resolved"));
        let stored: u8 = self.with_conn(false, |c| {
            script
                .key(&item_key)
                .key(&open_key)
                .key(&resolved_key)
                .arg(rev)
                .arg(&json)
                .arg(&resolved_at)
                .arg(&item.id)
                .arg(keep_resolved.max(1))
                .invoke(c)
        })?;
        Ok(stored == 1)
    }

    /// `corridor`'s unresolved items, and with `resolved` its newest resolved ones.
    pub fn items(&self, corridor: &str, resolved: bool) -> Result<Vec<Item>, ReviewError> {
        let (open_key, resolved_key, prefix) = (
            self.key(corridor, "open"),
            self.key(corridor, "resolved"),
            self.item_prefix(),
        );
        let jsons: Vec<Option<String>> = self.with_conn(true, |c| {
            let mut ids: Vec<String> = redis::cmd("SMEMBERS").arg(&open_key).query(c)?;
            if resolved {
                let done: Vec<String> = redis::cmd("ZRANGE").arg(&resolved_key).arg(0).arg(-1).query(c)?;
                ids.extend(done);
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HGET").arg(format!("{prefix}{id}")).arg("item");
            }
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            pipe.query(c)
        })?;
        jsons
            .into_iter()
            .flatten()
            .map(|j| serde_json::from_str(&j).map_err(|e| ReviewError::Store(format!("a stored item: {e}"))))
            .collect()
    }
}
