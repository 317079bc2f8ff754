//! Chains in Redis, for replicas sharing one trail: one stream per chain
//! (`inv:{<chain>}:audit`, entry id `<seq>-0`, field `line`: the same record line as the
//! files hold), its head (`inv:{<chain>}:audit:head`: `seq`, `hash`) and the set of chains
//! (`inv:audit:chains`). An append is a script that adds a batch only if the head is still
//! the one the writer built it on (compare-and-append), so writers on several servers never
//! fork a chain: one that lost the race re-reads the head and rebuilds its lines.
//!
//! A commit resolves once Redis has acknowledged the append; how that survives Redis's own
//! crash is Redis's persistence (`appendonly yes` with `appendfsync always` for durable mode).

use crate::read::{link_fault, Broken, Filter, Report};
use crate::writer::{push_record, Pending, Sink};
use crate::AuditError;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

/// The set of chain names.
const CHAINS: &str = "inv:audit:chains";

fn stream_key(chain: &str) -> String {
    format!("inv:{{{chain}}}:audit")
}

fn head_key(chain: &str) -> String {
    format!("inv:{{{chain}}}:audit:head")
}

/// KEYS: stream, head, chains set. ARGV: chain, the head seq the batch was built on, then a
/// line and its hash per record. Returns `OK`, or the current head (`{seq, hash}`).
const APPEND: &str = r#"
local head = redis.call('HGET', KEYS[2], 'seq') or '0'
if head ~= ARGV[2] then
  return {head, redis.call('HGET', KEYS[2], 'hash') or ''}
end
local seq = tonumber(head)
local hash = ''
for i = 3, #ARGV, 2 do
  seq = seq + 1
  redis.call('XADD', KEYS[1], seq .. '-0', 'line', ARGV[i])
  hash = ARGV[i + 1]
end
redis.call('HSET', KEYS[2], 'seq', seq, 'hash', hash)
redis.call('SADD', KEYS[3], ARGV[1])
return redis.status_reply('OK')
"#;

fn redis_error(url: &str, e: impl std::fmt::Display) -> AuditError {
    AuditError::NotWritten(format!("audit Redis {}: {e}", invariant_core::secret::redact_url(url)))
}

fn connect(url: &str) -> Result<redis::Connection, AuditError> {
    let client = redis::Client::open(url).map_err(|e| redis_error(url, e))?;
    let conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| redis_error(url, e))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| redis_error(url, e))?;
    Ok(conn)
}

/// The writing end.
pub(crate) struct RedisSink {
    url: String,
    conn: Option<redis::Connection>,
    script: redis::Script,
    /// Each chain's head as this writer last saw it: (seq, hash).
    heads: BTreeMap<String, (u64, String)>,
}

impl RedisSink {
    /// A sink on `url` (connected on first use).
    pub(crate) fn new(url: &str) -> Result<Self, AuditError> {
        redis::Client::open(url).map_err(|e| redis_error(url, e))?;
        Ok(Self {
            url: url.to_string(),
            conn: None,
            script: redis::Script::new(APPEND),
            heads: BTreeMap::new(),
        })
    }

    fn try_write(&mut self, chain: &str, records: &[&Pending]) -> Result<u64, AuditError> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.url)?);
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| redis_error(&self.url, "no connection"))?;
        let (mut seq, mut prev) = match self.heads.get(chain) {
            Some(h) => h.clone(),
            None => read_head(conn, chain).map_err(|e| redis_error(&self.url, e))?,
        };
        // Lost races re-read the head and rebuild; another writer appending without pause
        // could starve this one, so give up after a bounded number of tries.
        for _ in 0..16 {
            let mut invocation = self.script.key(stream_key(chain));
            invocation.key(head_key(chain)).key(CHAINS).arg(chain).arg(seq);
            let (mut next, mut hash) = (seq, prev.clone());
            for r in records {
                next += 1;
                let mut line = Vec::with_capacity(r.tail.len() + 160);
                hash = push_record(&mut line, next, &hash, chain, r);
                invocation.arg(line).arg(&hash);
            }
            match invocation
                .invoke::<redis::Value>(conn)
                .map_err(|e| redis_error(&self.url, e))?
            {
                redis::Value::Okay | redis::Value::SimpleString(_) => {
                    self.heads.insert(chain.to_string(), (next, hash));
                    return Ok(next);
                }
                other => {
                    let (s, h): (String, String) =
                        redis::from_redis_value(other).map_err(|e| redis_error(&self.url, e))?;
                    seq = s.parse().unwrap_or(0);
                    prev = if seq == 0 { crate::GENESIS.to_string() } else { h };
                }
            }
        }
        Err(redis_error(
            &self.url,
            format!("chain {chain}: too many concurrent appends"),
        ))
    }
}

fn read_head(conn: &mut redis::Connection, chain: &str) -> redis::RedisResult<(u64, String)> {
    let (seq, hash): (Option<u64>, Option<String>) = redis::cmd("HMGET")
        .arg(head_key(chain))
        .arg("seq")
        .arg("hash")
        .query(conn)?;
    Ok(match seq {
        Some(s) if s > 0 => (s, hash.unwrap_or_default()),
        _ => (0, crate::GENESIS.to_string()),
    })
}

impl Sink for RedisSink {
    fn write(&mut self, chain: &str, records: &[&Pending], _sync: bool) -> Result<u64, AuditError> {
        let result = self.try_write(chain, records);
        if result.is_err() {
            // Reconnect and re-read the head next time.
            self.conn = None;
            self.heads.remove(chain);
        }
        result
    }

    fn dirty(&self) -> bool {
        false
    }

    fn sync_all(&mut self) {}
}

/// The chains of the trail in Redis at `url`, sorted.
pub(crate) fn chains(url: &str) -> Result<Vec<String>, AuditError> {
    let mut conn = connect(url)?;
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(CHAINS)
        .query(&mut conn)
        .map_err(|e| redis_error(url, e))?;
    names.sort();
    Ok(names)
}

/// One stream entry as XRANGE returns it: its id and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// Calls `visit` with each entry of `chain`'s stream (its position and line), oldest first.
fn entries(url: &str, chain: &str, mut visit: impl FnMut(u64, &[u8]) -> ControlFlow<()>) -> Result<(), AuditError> {
    let mut conn = connect(url)?;
    let key = stream_key(chain);
    let mut start = "-".to_string();
    let mut position = 0u64;
    loop {
        let page: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)
            .map_err(|e| redis_error(url, e))?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        start = format!("({last}");
        for (_, fields) in &page {
            position += 1;
            let line = fields
                .iter()
                .find(|(k, _)| k == "line")
                .map(|(_, v)| v.as_slice())
                .unwrap_or(b"");
            if visit(position, line).is_break() {
                return Ok(());
            }
        }
    }
}

/// Verifies `chain` in Redis at `url` link by link, as the files are verified.
pub(crate) fn verify(url: &str, chain: &str) -> Result<Report, AuditError> {
    let mut report = Report::new(chain);
    let mut broken = None;
    let location = PathBuf::from(format!(
        "redis {} {}",
        invariant_core::secret::redact_url(url),
        stream_key(chain)
    ));
    entries(url, chain, |position, line| {
        let expected = report.head_seq + 1;
        if let Some(reason) = link_fault(chain, expected, &report.head_hash, line) {
            broken = Some(Broken {
                seq: expected,
                segment: location.clone(),
                line: position as usize,
                reason,
            });
            return ControlFlow::Break(());
        }
        report.accept(line);
        ControlFlow::Continue(())
    })?;
    report.broken = broken;
    Ok(report)
}

/// Calls `visit` with each record of `chain` that passes `filter`, oldest first.
pub(crate) fn read(
    url: &str,
    chain: &str,
    filter: &Filter,
    mut visit: impl FnMut(serde_json::Value) -> ControlFlow<()>,
) -> Result<(), AuditError> {
    entries(url, chain, |_, line| {
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(record) if filter.matches(&record) => visit(record),
            _ => ControlFlow::Continue(()),
        }
    })
}
