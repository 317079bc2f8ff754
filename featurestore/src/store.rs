//! The embedded online store: one redb file, every key in a corridor namespace.
//!
//! Key: `corridor \0 view \0 entity key`. Value: the row as JSON (event time, write time,
//! schema version, values in the view's feature order). Writes commit with redb's default
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
                    Some(v) => serde_json::from_slice(v.value()).ok(),
                    None => None,
                };
                let newer = existing.as_ref().is_none_or(|old| row.replaces(old));
                if newer {
                    let bytes = serde_json::to_vec(row).map_err(store_err)?;
                    table.insert(k.as_slice(), bytes.as_slice()).map_err(store_err)?;
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
                    Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(store_err),
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
