//! The embedded online store: one redb file, every key in a corridor namespace.
//!
//! Key: `corridor \0 view \0 entity key`. Value: the row in its binary form ([`Row::encode`]:
//! event time, write time, creation time, schema version, values in the view's feature order);
//! rows written as JSON by earlier versions are still read. Writes commit with redb's default
//! immediate durability, so an acknowledged write survives `kill -9`.

use crate::FeatureError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("online_rows");

/// Where rows live: the embedded store or Redis.
pub trait OnlineStore: Send + Sync + std::fmt::Debug {
    /// Writes rows of one view; a row replaces the stored one only if its event is newer, or
    /// equal with different values.
    fn write(&self, corridor: &str, view: &str, rows: &[(String, Row)]) -> Result<Vec<WriteOutcome>, FeatureError>;
    /// The rows of `entities` in `view` of `corridor`, in order.
    fn read(&self, corridor: &str, view: &str, entities: &[String]) -> Result<Vec<Option<Row>>, FeatureError>;
    /// Whether `corridor`'s rows can be reached now (a round trip to its Redis; the embedded
    /// file is always reachable once open).
    fn check(&self, _corridor: &str) -> Result<(), FeatureError> {
        Ok(())
    }
    /// Whether reads are local (a file in this process's page cache, no network): cheap
    /// enough to run where they are asked for.
    fn local_reads(&self) -> bool {
        false
    }
    /// [`OnlineStore::read`] over an asynchronous client, which holds no thread while the
    /// store answers: `Some` where `corridor` has one (see [`OnlineStore::async_reads`]),
    /// `None` where its reads are blocking calls. The future must run inside a Tokio runtime.
    fn read_async<'a>(&'a self, _corridor: &'a str, _view: &'a str, _entities: &'a [String]) -> Option<ReadFuture<'a>> {
        None
    }
    /// Whether [`OnlineStore::read_async`] answers `Some` for `corridor`.
    fn async_reads(&self, _corridor: &str) -> bool {
        false
    }
}

/// A pending [`OnlineStore::read_async`]: the rows of the entities, in order.
pub type ReadFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Option<Row>>, FeatureError>> + Send + 'a>>;

/// One stored row of a feature view for one entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// When the values were true (milliseconds since the Unix epoch).
    pub event_ms: i64,
    /// When the row was written.
    pub written_ms: i64,
    /// When its source created it (Feast's `created` column): the tie-breaker between rows of
    /// the same event time, the later winning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<i64>,
    /// The view's schema version at write time.
    pub schema_version: u32,
    /// Values in the view's feature order (`null` where the push had none).
    pub values: Vec<serde_json::Value>,
}

impl Row {
    /// Whether this row replaces `old`: its event is newer, or equal with a later creation
    /// time, or equal in both with different values. A stored row whose event time is out of
    /// range (a corrupt write) is always replaced.
    pub fn replaces(&self, old: &Row) -> bool {
        if crate::time::check_ms(old.event_ms).is_err() {
            return true;
        }
        let created = |r: &Row| r.created_ms.unwrap_or(-1);
        (self.event_ms, created(self)) > (old.event_ms, created(old))
            || ((self.event_ms, created(self)) == (old.event_ms, created(old)) && self.values != old.values)
    }
}

/// The first byte of a row in its binary form; a row stored as JSON starts with `{`.
const BINARY_ROW: u8 = 1;

/// Tags of the values of a binary row.
mod tag {
    pub(super) const NULL: u8 = 0;
    pub(super) const FALSE: u8 = 1;
    pub(super) const TRUE: u8 = 2;
    pub(super) const I64: u8 = 3;
    pub(super) const U64: u8 = 4;
    pub(super) const F64: u8 = 5;
    pub(super) const STRING: u8 = 6;
    /// An array or object, as JSON text.
    pub(super) const JSON: u8 = 7;
}

impl Row {
    /// The row in its stored binary form: [`BINARY_ROW`], event, write and creation times
    /// (little-endian `i64`s; a flag byte before the creation time), the schema version
    /// (`u32`), the number of values (`u32`), then each value as a tag byte and its bytes
    /// (numbers keep their kind: `i64`, `u64` or the `f64`'s bits). Decoding gives back an equal
    /// row, bit for bit.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(34 + self.values.len() * 9);
        out.push(BINARY_ROW);
        out.extend_from_slice(&self.event_ms.to_le_bytes());
        out.extend_from_slice(&self.written_ms.to_le_bytes());
        out.push(u8::from(self.created_ms.is_some()));
        out.extend_from_slice(&self.created_ms.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        out.extend_from_slice(&(self.values.len() as u32).to_le_bytes());
        let text = |out: &mut Vec<u8>, t: u8, bytes: &[u8]| {
            out.push(t);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        for v in &self.values {
            match v {
                serde_json::Value::Null => out.push(tag::NULL),
                serde_json::Value::Bool(b) => out.push(if *b { tag::TRUE } else { tag::FALSE }),
                serde_json::Value::Number(n) => {
                    let (t, bits) = match (n.as_i64(), n.as_u64(), n.as_f64()) {
                        (Some(i), _, _) => (tag::I64, i.to_le_bytes()),
                        (None, Some(u), _) => (tag::U64, u.to_le_bytes()),
                        (None, None, f) => (tag::F64, f.unwrap_or(0.0).to_bits().to_le_bytes()),
                    };
                    out.push(t);
                    out.extend_from_slice(&bits);
                }
                serde_json::Value::String(s) => text(&mut out, tag::STRING, s.as_bytes()),
                other => text(&mut out, tag::JSON, other.to_string().as_bytes()),
            }
        }
        out
    }

    /// A stored row: its binary form ([`Row::encode`]) or, as earlier versions wrote it, JSON.
    pub fn decode(bytes: &[u8]) -> Result<Row, String> {
        if bytes.first() != Some(&BINARY_ROW) {
            return serde_json::from_slice(bytes).map_err(|e| format!("stored row: {e}"));
        }
        let mut r = Reader { rest: &bytes[1..] };
        let event_ms = r.i64()?;
        let written_ms = r.i64()?;
        let has_created = r.take(1)?[0] != 0;
        let created = r.i64()?;
        let schema_version = u32::from_le_bytes(r.array()?);
        let n = u32::from_le_bytes(r.array()?) as usize;
        // Every value takes at least its tag byte: a count past that is corrupt, and nothing is
        // allocated for it.
        if n > r.rest.len() {
            return Err(format!("stored row: {n} values in {} bytes", r.rest.len()));
        }
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let t = r.take(1)?[0];
            values.push(match t {
                tag::NULL => serde_json::Value::Null,
                tag::FALSE => serde_json::Value::Bool(false),
                tag::TRUE => serde_json::Value::Bool(true),
                tag::I64 => serde_json::Value::from(r.i64()?),
                tag::U64 => serde_json::Value::from(u64::from_le_bytes(r.array()?)),
                tag::F64 => serde_json::Number::from_f64(f64::from_bits(u64::from_le_bytes(r.array()?)))
                    .map_or(serde_json::Value::Null, serde_json::Value::Number),
                tag::STRING | tag::JSON => {
                    let len = u32::from_le_bytes(r.array()?) as usize;
                    let text = std::str::from_utf8(r.take(len)?).map_err(|e| format!("stored row: {e}"))?;
                    if t == tag::STRING {
                        serde_json::Value::String(text.to_string())
                    } else {
                        serde_json::from_str(text).map_err(|e| format!("stored row: {e}"))?
                    }
                }
                other => return Err(format!("stored row: unknown value tag {other}")),
            });
        }
        if !r.rest.is_empty() {
            return Err(format!("stored row: {} bytes after the values", r.rest.len()));
        }
        Ok(Row {
            event_ms,
            written_ms,
            created_ms: has_created.then_some(created),
            schema_version,
            values,
        })
    }
}

/// Reads the fields of a binary row in order.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err("stored row: truncated".to_string());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored.
    Written,
    /// Not stored: a newer row exists, or the same event was already written.
    Ignored,
}

/// The embedded store.
pub struct EmbeddedStore {
    db: Database,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedStore")
    }
}

fn key(corridor: &str, view: &str, entity: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(corridor.len() + view.len() + entity.len() + 2);
    k.extend_from_slice(corridor.as_bytes());
    k.push(0);
    k.extend_from_slice(view.as_bytes());
    k.push(0);
    k.extend_from_slice(entity.as_bytes());
    k
}

fn store_err(e: impl std::fmt::Display) -> FeatureError {
    FeatureError::Store(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> Result<Self, FeatureError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(store_err)?;
        }
        let db = Database::create(path).map_err(|e| FeatureError::Store(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(store_err)?;
        txn.open_table(ROWS).map_err(store_err)?;
        txn.commit().map_err(store_err)?;
        Ok(Self { db })
    }

    /// Writes rows of one view in one transaction. A row replaces the stored one only if its
    /// event time is newer, or equal with different values; an older event never overwrites a
    /// newer one, and writing the same event twice changes nothing.
    fn write_rows(
        &self,
        corridor: &str,
        view: &str,
        rows: &[(String, Row)],
    ) -> Result<Vec<WriteOutcome>, FeatureError> {
        let txn = self.db.begin_write().map_err(store_err)?;
        let mut outcomes = Vec::with_capacity(rows.len());
        {
            let mut table = txn.open_table(ROWS).map_err(store_err)?;
            for (entity, row) in rows {
                let k = key(corridor, view, entity);
                let existing: Option<Row> = match table.get(k.as_slice()).map_err(store_err)? {
                    Some(v) => Row::decode(v.value()).ok(),
                    None => None,
                };
                let newer = existing.as_ref().is_none_or(|old| row.replaces(old));
                if newer {
                    table.insert(k.as_slice(), row.encode().as_slice()).map_err(store_err)?;
                    outcomes.push(WriteOutcome::Written);
                } else {
                    outcomes.push(WriteOutcome::Ignored);
                }
            }
        }
        txn.commit().map_err(store_err)?;
        Ok(outcomes)
    }

    /// The rows of `entities` in `view` of `corridor`, in order (`None` where there is none).
    fn read_rows(&self, corridor: &str, view: &str, entities: &[String]) -> Result<Vec<Option<Row>>, FeatureError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let table = txn.open_table(ROWS).map_err(store_err)?;
        entities
            .iter()
            .map(
                |e| match table.get(key(corridor, view, e).as_slice()).map_err(store_err)? {
                    Some(v) => Row::decode(v.value()).map(Some).map_err(store_err),
                    None => Ok(None),
                },
            )
            .collect()
    }
}

impl OnlineStore for EmbeddedStore {
    fn local_reads(&self) -> bool {
        true
    }

    fn write(&self, corridor: &str, view: &str, rows: &[(String, Row)]) -> Result<Vec<WriteOutcome>, FeatureError> {
        self.write_rows(corridor, view, rows)
    }

    fn read(&self, corridor: &str, view: &str, entities: &[String]) -> Result<Vec<Option<Row>>, FeatureError> {
        self.read_rows(corridor, view, entities)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(values: Vec<serde_json::Value>, created_ms: Option<i64>) -> Row {
        Row {
            event_ms: 1_794_900_000_123,
            written_ms: -5,
            created_ms,
            schema_version: 3,
            values,
        }
    }

    #[test]
    fn binary_rows_decode_to_the_same_row_bit_for_bit() {
        let values = vec![
            json!(null),
            json!(true),
            json!(false),
            json!(-7),
            json!(u64::MAX),
            json!(0.1f32 as f64),
            json!(-0.0),
            json!(1.0),
            json!(f64::MAX),
            json!("naïve \"quoted\" \u{0}"),
            json!([1, "a", {"b": null}]),
            json!({"k": [2.5]}),
        ];
        for created in [None, Some(0), Some(i64::MIN)] {
            let r = row(values.clone(), created);
            let bytes = r.encode();
            assert_eq!(bytes[0], BINARY_ROW);
            let back = Row::decode(&bytes).unwrap();
            assert_eq!(back, r);
            // Numbers keep their kind and bits: 1.0 stays a float, -0.0 keeps its sign.
            assert!(back.values[7].is_f64() && back.values[3].is_i64() && back.values[4].is_u64());
            assert_eq!(back.values[6].as_f64().unwrap().to_bits(), (-0.0f64).to_bits());
            assert!(!r.replaces(&back), "a decoded row is the same row");
        }
    }

    #[test]
    fn rows_stored_as_json_are_still_read() {
        let r = row(vec![json!(1.5), json!(null), json!("x")], Some(9));
        let legacy = serde_json::to_vec(&r).unwrap();
        assert_eq!(Row::decode(&legacy).unwrap(), r);
    }

    #[test]
    fn corrupt_binary_rows_are_errors_not_panics() {
        let bytes = row(vec![json!("abc"), json!(2.0)], None).encode();
        for cut in 1..bytes.len() {
            assert!(Row::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Row::decode(&extra).unwrap_err().contains("after the values"));
        let mut huge = bytes[..34].to_vec();
        huge[30..34].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Row::decode(&huge).unwrap_err().contains("values in"));
        let mut bad_tag = row(vec![json!(null)], None).encode();
        *bad_tag.last_mut().unwrap() = 99;
        assert!(Row::decode(&bad_tag).unwrap_err().contains("unknown value tag 99"));
    }

    #[test]
    fn the_embedded_store_round_trips_rows_and_reads_older_json_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("rows.redb")).unwrap();
        let a = row(vec![json!(0.25), json!("s")], None);
        store.write("C", "v", &[("a".into(), a.clone())]).unwrap();
        // A row written as JSON by an earlier version, in place.
        let b = row(vec![json!(7)], Some(1));
        let txn = store.db.begin_write().unwrap();
        txn.open_table(ROWS)
            .unwrap()
            .insert(
                key("C", "v", "b").as_slice(),
                serde_json::to_vec(&b).unwrap().as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
        let got = store.read("C", "v", &["a".into(), "b".into(), "c".into()]).unwrap();
        assert_eq!(got, vec![Some(a), Some(b.clone()), None]);
        // The JSON row is replaced by a newer one, which is then stored in the binary form.
        let newer = Row {
            event_ms: b.event_ms + 1,
            ..b.clone()
        };
        assert_eq!(
            store
                .write("C", "v", &[("b".into(), newer.clone()), ("b".into(), b)])
                .unwrap(),
            vec![WriteOutcome::Written, WriteOutcome::Ignored]
        );
        assert_eq!(store.read("C", "v", &["b".into()]).unwrap(), vec![Some(newer)]);
    }
}
