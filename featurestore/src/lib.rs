//! Corridor-sharded online feature store of Invariant.
//!
//! Feature definitions (entities, feature views with a max age, feature services) come from
//! the TOML files of a feature repository ([`defs`]). Rows live in a corridor namespace of the
//! embedded store ([`store`], a durable redb file): no call reads across corridors. Reads
//! follow Feast's `get-online-features` shape and enforce each view's max age: a value older
//! than the view's TTL is served as the declared default with status `OUTSIDE_MAX_AGE`, never
//! silently. Pushes are idempotent on entity and event time, and an older event never
//! overwrites a newer one. This crate knows nothing of models or HTTP.

pub mod defs;
pub mod materialize;
pub mod plan;
pub mod redis_store;
pub mod store;
pub mod time;

use defs::{check_value, Definitions, FeatureRef, KeyType};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use store::{EmbeddedStore, OnlineStore, Row, WriteOutcome};
use thiserror::Error;

/// Feature store errors.
#[derive(Debug, Error)]
pub enum FeatureError {
    /// The definitions are invalid.
    #[error("feature definitions: {0}")]
    Definition(String),
    /// A request is malformed; the message names the field.
    #[error("{0}")]
    Request(String),
    /// The store failed.
    #[error("feature store: {0}")]
    Store(String),
}

/// `POST /v1/features/get-online` (Feast's shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetOnlineRequest {
    /// `view:feature` references (or use `feature_service`).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// A feature service name.
    #[serde(default)]
    pub feature_service: Option<String>,
    /// One join key and its entity keys, e.g. `{"account_id": ["a1", "a2"]}`.
    pub entities: BTreeMap<String, Vec<Value>>,
    /// Name features `view__feature` instead of `feature`.
    #[serde(default)]
    pub full_feature_names: bool,
    /// Add each view read and its schema version to the reply's metadata
    /// (`feature_view_metadata`), as Feast 0.6x does.
    #[serde(default)]
    pub include_feature_view_version_metadata: bool,
}

/// One column of a reply: a value, status and event time per entity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureColumn {
    /// Values, one per entity.
    pub values: Vec<Value>,
    /// `PRESENT`, `NOT_FOUND` or `OUTSIDE_MAX_AGE`.
    pub statuses: Vec<&'static str>,
    /// RFC 3339 event times (`1970-01-01T00:00:00Z` where none), each formatted once per
    /// row and shared by the columns of its view.
    #[serde(serialize_with = "texts")]
    pub event_timestamps: Vec<Stamp>,
}

/// An event time as RFC 3339 text, shared by the columns that carry it.
pub type Stamp = std::sync::Arc<str>;

fn texts<S: serde::Serializer>(stamps: &[Stamp], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(stamps.iter().map(|t| &**t))
}

/// Reply metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    /// Column names: the join key, then the features in requested order.
    pub feature_names: Vec<String>,
    /// The views read and their schema versions, when the request asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub feature_view_metadata: Vec<ViewVersion>,
}

/// A view read and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewVersion {
    /// The view.
    pub name: String,
    /// Its schema version.
    pub version: u32,
}

/// The reply of `get-online`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GetOnlineResponse {
    /// Column names.
    pub metadata: Metadata,
    /// Columns: the entity keys first, then one per feature.
    pub results: Vec<FeatureColumn>,
    /// Per view read: the event time of the oldest value served as `PRESENT` (for freshness
    /// metrics; not part of the reply body).
    #[serde(skip)]
    pub oldest_served: Vec<(String, Option<i64>)>,
}

impl GetOnlineResponse {
    /// The reply as JSON, written into a buffer sized for it up front.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let cells: usize = self.results.iter().map(|c| c.values.len()).sum();
        let mut out = Vec::with_capacity(64 + self.results.len() * 64 + cells * 64);
        serde_json::to_writer(&mut out, self)?;
        Ok(out)
    }
}

/// `POST /v1/features/push`: columns of rows for one feature view.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The view written.
    pub feature_view: String,
    /// Columns: the join key, `event_timestamp` (RFC 3339 text or Unix seconds), features.
    /// Cells are kept as JSON text so FP32 features are rounded once, straight to `f32`.
    pub df: BTreeMap<String, Vec<Box<serde_json::value::RawValue>>>,
}

/// A pushed cell as a stored value: FP32 numbers parsed from their text straight to `f32`
/// (stored as the f64 that equals it exactly), everything else as JSON.
fn cell(
    datatype: invariant_core::DataType,
    raw: &serde_json::value::RawValue,
    field: &str,
) -> Result<Value, FeatureError> {
    let text = raw.get().trim();
    if datatype == invariant_core::DataType::Fp32 && text != "null" {
        let v: f32 = text
            .parse()
            .map_err(|_| FeatureError::Request(format!("{field}: {text} is not a valid FP32 value")))?;
        if !v.is_finite() {
            return Err(FeatureError::Request(format!(
                "{field}: {text} is not a finite FP32 value"
            )));
        }
        return Ok(Value::from(f64::from(v)));
    }
    serde_json::from_str(text).map_err(|e| FeatureError::Request(format!("{field}: {e}")))
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushOutcome {
    /// Rows stored.
    pub written: usize,
    /// Rows not stored because the store holds a newer or identical event.
    pub ignored: usize,
    /// The view written and the newest event time among the stored rows (for freshness
    /// metrics; not part of the reply body).
    #[serde(skip)]
    pub newest_written: (String, Option<i64>),
}

/// RFC 3339 of a stored time; the epoch for none or an out-of-range one.
fn rfc3339(ms: i64) -> Stamp {
    time::rfc3339(ms).map_or_else(|| Stamp::from("1970-01-01T00:00:00.000Z"), Stamp::from)
}

fn event_ms(v: &Value, field: &str) -> Result<i64, FeatureError> {
    time::from_json(v).map_err(|e| FeatureError::Request(format!("{field}: {e}")))
}

/// The namespace of global views' rows (in place of a corridor): read by every corridor.
pub const GLOBAL: &str = "_global";

/// The column of a row's creation time (Feast's `created`): the tie-breaker between rows of the
/// same event time.
pub const CREATED: &str = "created";

/// The definitions a store serves: those applied at `applied` (`invariant features apply`),
/// or, when nothing was applied yet, those of `repository`.
pub fn load_definitions(repository: &Path, applied: &Path) -> Result<Definitions, FeatureError> {
    match plan::Applied::load(applied)? {
        Some(a) => Ok(a.definitions()),
        None => Definitions::load_dir(repository),
    }
}

/// The feature store: definitions and the embedded store.
#[derive(Debug)]
pub struct FeatureStore {
    /// Definitions.
    pub defs: Definitions,
    store: Box<dyn OnlineStore>,
}

/// A read, planned: see [`FeatureStore::get_online`].
struct ReadPlan<'a> {
    /// The features, in requested order.
    resolved: Vec<FeatureRef>,
    /// The request's join key and its entity keys as sent.
    join_key: &'a str,
    keys: &'a Vec<Value>,
    /// The entity keys as stored.
    entity_keys: Vec<String>,
    /// Each view read (by index, in index order) and its namespace.
    reads: Vec<(usize, &'a str)>,
}

impl FeatureStore {
    /// Whether `corridor`'s rows can be reached now (see [`OnlineStore::check`]).
    pub fn check(&self, corridor: &str) -> Result<(), FeatureError> {
        self.store.check(corridor)
    }

    /// Opens the store file with the definitions applied at `applied` (`invariant features
    /// apply`), or, when nothing was applied yet, those of `repository`.
    pub fn open(repository: &Path, applied: &Path, store_path: &Path) -> Result<Self, FeatureError> {
        let defs = load_definitions(repository, applied)?;
        Ok(Self {
            defs,
            store: Box::new(EmbeddedStore::open(store_path)?),
        })
    }

    /// Like [`FeatureStore::open`], with rows in Redis: `urls` maps each corridor to its Redis.
    pub fn open_redis(
        repository: &Path,
        applied: &Path,
        urls: &BTreeMap<String, String>,
        timeout: std::time::Duration,
    ) -> Result<Self, FeatureError> {
        let defs = load_definitions(repository, applied)?;
        Ok(Self {
            defs,
            store: Box::new(redis_store::RedisStore::new(urls, timeout)?),
        })
    }

    /// Writes already-checked rows of one view (see [`store::EmbeddedStore::write`]).
    pub fn write_rows(
        &self,
        corridor: &str,
        view: &str,
        rows: &[(String, Row)],
    ) -> Result<Vec<WriteOutcome>, FeatureError> {
        let namespace = if self.is_global(view) { GLOBAL } else { corridor };
        self.store.write(namespace, view, rows)
    }

    fn entity_key(&self, key_type: KeyType, v: &Value, field: &str) -> Result<String, FeatureError> {
        match (key_type, v) {
            (KeyType::String, Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            (KeyType::Int64, Value::Number(n)) if n.as_i64().is_some() => Ok(n.to_string()),
            (t, other) => Err(FeatureError::Request(format!(
                "{field}: {other} is not a {t:?} entity key"
            ))),
        }
    }

    /// Whether reads are local (the embedded file), with no network round trip to wait for.
    pub fn local_reads(&self) -> bool {
        self.store.local_reads()
    }

    /// Whether `view` is global (shared by every corridor, written by admins only).
    pub fn is_global(&self, view: &str) -> bool {
        self.defs.view(view).is_some_and(|(_, v)| v.global)
    }

    /// The join key of the entity `service`'s features are keyed by.
    pub fn service_join_key(&self, service: &str) -> Option<&str> {
        let first = self.defs.service(service)?.features.first()?;
        let view_name = first.split(':').next()?;
        let (_, view) = self.defs.view(view_name)?;
        Some(self.defs.entity(&view.entity)?.join_key.as_str())
    }

    /// The views fed by push source `name` (Feast's `push_source_name`).
    pub fn views_of_push_source(&self, name: &str) -> Vec<String> {
        self.defs
            .views
            .iter()
            .filter(|v| v.push_source.as_deref() == Some(name))
            .map(|v| v.name.clone())
            .collect()
    }

    /// The declared defaults of `service`'s features, in its order.
    pub fn service_defaults(&self, service: &str) -> Result<Vec<Option<Value>>, FeatureError> {
        let refs = &self
            .defs
            .service(service)
            .ok_or_else(|| FeatureError::Request(format!("unknown feature service '{service}'")))?
            .features;
        Ok(self
            .defs
            .resolve(refs)?
            .iter()
            .map(|r| self.defs.views[r.view].features[r.feature].default.clone())
            .collect())
    }

    /// Reads features of entities in `corridor` at time `now_ms`, with blocking reads.
    pub fn get_online(
        &self,
        corridor: &str,
        req: &GetOnlineRequest,
        now_ms: i64,
    ) -> Result<GetOnlineResponse, FeatureError> {
        // Without asynchronous reads nothing in the read waits: it is done at its first poll.
        let mut read = std::pin::pin!(self.read_online(corridor, req, now_ms, false));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match std::future::Future::poll(read.as_mut(), &mut context) {
            std::task::Poll::Ready(reply) => reply,
            std::task::Poll::Pending => Err(FeatureError::Store("a blocking read did not complete".into())),
        }
    }

    /// [`FeatureStore::get_online`] without holding a thread while the store answers, where it
    /// has an asynchronous client for the corridor (see [`FeatureStore::async_reads`]); other
    /// reads are made here, blocking. Must run inside a Tokio runtime.
    pub async fn get_online_async(
        &self,
        corridor: &str,
        req: &GetOnlineRequest,
        now_ms: i64,
    ) -> Result<GetOnlineResponse, FeatureError> {
        self.read_online(corridor, req, now_ms, true).await
    }

    /// A read: the plan, one read per view (over the asynchronous client when `use_async` and
    /// the store has one), the reply.
    async fn read_online(
        &self,
        corridor: &str,
        req: &GetOnlineRequest,
        now_ms: i64,
        use_async: bool,
    ) -> Result<GetOnlineResponse, FeatureError> {
        let plan = self.plan(corridor, req)?;
        let mut rows = BTreeMap::new();
        for &(view, namespace) in &plan.reads {
            let name = &self.defs.views[view].name;
            let pending = use_async.then(|| self.store.read_async(namespace, name, &plan.entity_keys));
            let read = match pending.flatten() {
                Some(pending) => pending.await?,
                None => self.store.read(namespace, name, &plan.entity_keys)?,
            };
            rows.insert(view, read);
        }
        self.assemble(req, plan, rows, now_ms)
    }

    /// Whether every read of `corridor` (its own views and the global ones) has an
    /// asynchronous client: then [`FeatureStore::get_online_async`] waits for the network
    /// without a thread.
    pub fn async_reads(&self, corridor: &str) -> bool {
        self.store.async_reads(corridor) && self.store.async_reads(GLOBAL)
    }

    /// What a read needs: the features resolved, the entity keys checked and rendered, and
    /// one read per view (all its entities at once), whatever the number of features.
    fn plan<'a>(&'a self, corridor: &'a str, req: &'a GetOnlineRequest) -> Result<ReadPlan<'a>, FeatureError> {
        // Feast sends `features: []` along with a feature service.
        let features = req.features.as_ref().filter(|f| !f.is_empty());
        let refs: &[String] = match (features, &req.feature_service) {
            (Some(f), None) => f,
            (None, Some(s)) => {
                &self
                    .defs
                    .service(s)
                    .ok_or_else(|| FeatureError::Request(format!("feature_service: unknown feature service '{s}'")))?
                    .features
            }
            _ => {
                return Err(FeatureError::Request(
                    "give exactly one of features (non-empty) or feature_service".into(),
                ))
            }
        };
        let resolved: Vec<FeatureRef> = self.defs.resolve(refs)?;
        let (join_key, keys) = match req.entities.iter().next() {
            Some((k, v)) if req.entities.len() == 1 => (k.as_str(), v),
            _ => {
                return Err(FeatureError::Request(
                    "entities: give exactly one join key with its entity keys".into(),
                ))
            }
        };
        let mut entity_keys = Vec::with_capacity(keys.len());
        for r in &resolved {
            let view = &self.defs.views[r.view];
            let entity = self
                .defs
                .entity(&view.entity)
                .ok_or_else(|| FeatureError::Definition(view.entity.clone()))?;
            if entity.join_key != join_key {
                return Err(FeatureError::Request(format!(
                    "entities: feature view '{}' is keyed by '{}', not '{join_key}'",
                    view.name, entity.join_key
                )));
            }
            if entity_keys.is_empty() {
                for (i, k) in keys.iter().enumerate() {
                    entity_keys.push(self.entity_key(entity.key_type, k, &format!("entities.{join_key}[{i}]"))?);
                }
            }
        }
        let mut reads: Vec<(usize, &str)> = Vec::new();
        for r in &resolved {
            if !reads.iter().any(|(v, _)| *v == r.view) {
                let namespace = if self.defs.views[r.view].global {
                    GLOBAL
                } else {
                    corridor
                };
                reads.push((r.view, namespace));
            }
        }
        reads.sort_unstable();
        Ok(ReadPlan {
            resolved,
            join_key,
            keys,
            entity_keys,
            reads,
        })
    }

    /// The reply of a read from the rows of each view of `plan`.
    fn assemble(
        &self,
        req: &GetOnlineRequest,
        plan: ReadPlan<'_>,
        rows: BTreeMap<usize, Vec<Option<Row>>>,
        now_ms: i64,
    ) -> Result<GetOnlineResponse, FeatureError> {
        let ReadPlan {
            resolved,
            join_key,
            keys,
            ..
        } = plan;
        // Each row's event time, formatted once for all the features of its view.
        let stamps: BTreeMap<usize, Vec<Stamp>> = rows
            .iter()
            .map(|(&vi, rows)| {
                (
                    vi,
                    rows.iter()
                        .map(|r| rfc3339(r.as_ref().map_or(0, |r| r.event_ms)))
                        .collect(),
                )
            })
            .collect();
        let mut names = Vec::with_capacity(resolved.len() + 1);
        names.push(join_key.to_string());
        let mut results = Vec::with_capacity(resolved.len() + 1);
        results.push(FeatureColumn {
            values: keys.clone(),
            statuses: vec!["PRESENT"; keys.len()],
            event_timestamps: vec![rfc3339(0); keys.len()],
        });
        for r in &resolved {
            let view = &self.defs.views[r.view];
            let feature = &view.features[r.feature];
            names.push(if req.full_feature_names {
                format!("{}__{}", view.name, feature.name)
            } else {
                feature.name.clone()
            });
            let mut column = FeatureColumn {
                values: Vec::with_capacity(keys.len()),
                statuses: Vec::with_capacity(keys.len()),
                event_timestamps: Vec::with_capacity(keys.len()),
            };
            for (row, stamp) in rows[&r.view].iter().zip(&stamps[&r.view]) {
                // Feast's semantics: a value only when PRESENT, `null` otherwise (defaults are
                // applied where a model's input is assembled, flagged there).
                let (value, status) = match row {
                    None => (Value::Null, "NOT_FOUND"),
                    // A row whose time is out of range (written before times were checked)
                    // is answered as invalid, never formatted or served.
                    Some(row) if time::check_ms(row.event_ms).is_err() => (Value::Null, "INVALID"),
                    Some(row) => {
                        let stale = view.ttl_seconds > 0 && now_ms - row.event_ms > (view.ttl_seconds as i64) * 1000;
                        match row.values.get(r.feature) {
                            _ if stale => (Value::Null, "OUTSIDE_MAX_AGE"),
                            Some(v) if !v.is_null() => (v.clone(), "PRESENT"),
                            _ => (Value::Null, "NULL_VALUE"),
                        }
                    }
                };
                column.values.push(value);
                column.statuses.push(status);
                column.event_timestamps.push(stamp.clone());
            }
            results.push(column);
        }
        let oldest_served = rows
            .iter()
            .map(|(&vi, rows)| {
                let view = &self.defs.views[vi];
                let fresh = |r: &&Row| {
                    time::check_ms(r.event_ms).is_ok()
                        && (view.ttl_seconds == 0 || now_ms - r.event_ms <= (view.ttl_seconds as i64) * 1000)
                };
                (
                    view.name.clone(),
                    rows.iter().flatten().filter(fresh).map(|r| r.event_ms).min(),
                )
            })
            .collect();
        let feature_view_metadata = if req.include_feature_view_version_metadata {
            let mut seen = Vec::new();
            for r in &resolved {
                let view = &self.defs.views[r.view];
                if !seen.iter().any(|v: &ViewVersion| v.name == view.name) {
                    seen.push(ViewVersion {
                        name: view.name.clone(),
                        version: view.schema_version,
                    });
                }
            }
            seen
        } else {
            Vec::new()
        };
        Ok(GetOnlineResponse {
            metadata: Metadata {
                feature_names: names,
                feature_view_metadata,
            },
            results,
            oldest_served,
        })
    }

    /// Writes rows of one view in `corridor`, written at `now_ms`. The whole request is checked
    /// first (unknown columns, missing keys or times, values of the wrong type: 400 naming
    /// `df.<column>[row]`), then written in one transaction.
    pub fn push(&self, corridor: &str, req: &PushRequest, now_ms: i64) -> Result<PushOutcome, FeatureError> {
        let (view, entity) = self.defs.view_with_entity(&req.feature_view).map_err(|e| match e {
            FeatureError::Request(m) => FeatureError::Request(format!("feature_view: {m}")),
            other => other,
        })?;
        let column = |name: &str| {
            req.df
                .get(name)
                .ok_or_else(|| FeatureError::Request(format!("df.{name}: required column is missing")))
        };
        let keys = column(&entity.join_key)?;
        let times = column("event_timestamp")?;
        let created = req.df.get(CREATED);
        let n = keys.len();
        for (name, values) in &req.df {
            if name != &entity.join_key
                && name != "event_timestamp"
                && name != CREATED
                && !view.features.iter().any(|f| &f.name == name)
            {
                return Err(FeatureError::Request(format!(
                    "df.{name}: feature view '{}' has no such feature",
                    view.name
                )));
            }
            if values.len() != n {
                return Err(FeatureError::Request(format!(
                    "df.{name}: {} values, but {n} rows",
                    values.len()
                )));
            }
        }
        let json = |raw: &serde_json::value::RawValue, field: String| {
            serde_json::from_str::<Value>(raw.get()).map_err(|e| FeatureError::Request(format!("{field}: {e}")))
        };
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let key_field = format!("df.{}[{i}]", entity.join_key);
            let key = self.entity_key(entity.key_type, &json(&keys[i], key_field.clone())?, &key_field)?;
            let time_field = format!("df.event_timestamp[{i}]");
            let event = event_ms(&json(&times[i], time_field.clone())?, &time_field)?;
            let created_ms = match created {
                Some(c) => {
                    let field = format!("df.{CREATED}[{i}]");
                    match json(&c[i], field.clone())? {
                        Value::Null => None,
                        v => Some(event_ms(&v, &field)?),
                    }
                }
                None => None,
            };
            let mut values = Vec::with_capacity(view.features.len());
            for f in &view.features {
                let v = match req.df.get(&f.name) {
                    Some(c) => cell(f.datatype, &c[i], &format!("df.{}[{i}]", f.name))?,
                    None => Value::Null,
                };
                if !v.is_null() {
                    check_value(f.datatype, &v)
                        .map_err(|m| FeatureError::Request(format!("df.{}[{i}]: {m}", f.name)))?;
                }
                values.push(v);
            }
            rows.push((
                key,
                Row {
                    event_ms: event,
                    written_ms: now_ms,
                    created_ms,
                    schema_version: view.schema_version,
                    values,
                },
            ));
        }
        let namespace = if view.global { GLOBAL } else { corridor };
        let outcomes = self.store.write(namespace, &view.name, &rows)?;
        let written = outcomes.iter().filter(|o| **o == WriteOutcome::Written).count();
        let newest = rows
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == WriteOutcome::Written)
            .map(|((_, r), _)| r.event_ms)
            .max();
        Ok(PushOutcome {
            written,
            ignored: outcomes.len() - written,
            newest_written: (view.name.clone(), newest),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, FeatureStore) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../features");
        let fs = FeatureStore::open(
            &repo,
            &dir.path().join("applied.json"),
            &dir.path().join("features.redb"),
        )
        .unwrap();
        (dir, fs)
    }

    fn push(fs: &FeatureStore, corridor: &str, key: &str, ts: &str, orders: f64) -> PushOutcome {
        let req: PushRequest = serde_json::from_value(json!({
            "feature_view": "account_stats",
            "df": {"account_id": [key], "event_timestamp": [ts], "completed_orders": [orders]}
        }))
        .unwrap();
        fs.push(corridor, &req, 1_800_000_000_000).unwrap()
    }

    fn get(fs: &FeatureStore, corridor: &str, keys: &[&str], now_ms: i64) -> GetOnlineResponse {
        let req: GetOnlineRequest = serde_json::from_value(json!({
            "features": ["account_stats:completed_orders", "account_stats:avg_rating"],
            "entities": {"account_id": keys},
        }))
        .unwrap();
        fs.get_online(corridor, &req, now_ms).unwrap()
    }

    const NOW: i64 = 1_794_916_800_000; // 2026-11-17T12:00:00Z

    #[test]
    fn round_trip_defaults_and_not_found() {
        let (_d, fs) = store();
        let outcome = push(&fs, "UAE-SA", "a1", "2026-11-17T00:00:00Z", 12.0);
        assert_eq!((outcome.written, outcome.ignored), (1, 0));
        assert_eq!(
            outcome.newest_written,
            ("account_stats".to_string(), Some(1_794_873_600_000))
        );
        assert_eq!(
            get(&fs, "UAE-SA", &["a1"], NOW).oldest_served,
            vec![("account_stats".to_string(), Some(1_794_873_600_000))]
        );
        let r = get(&fs, "UAE-SA", &["a1", "zz"], NOW);
        assert_eq!(
            r.metadata.feature_names,
            ["account_id", "completed_orders", "avg_rating"]
        );
        // Feast's semantics: a value only when present, null with the status otherwise.
        assert_eq!(r.results[1].values, [json!(12.0), Value::Null]);
        assert_eq!(r.results[1].statuses, ["PRESENT", "NOT_FOUND"]);
        assert_eq!(
            r.results[2].statuses,
            ["NULL_VALUE", "NOT_FOUND"],
            "pushed without avg_rating"
        );
        assert_eq!(
            r.results[2].values,
            [Value::Null, Value::Null],
            "no default on the wire"
        );
        assert_eq!(fs.service_defaults("trust_scorer_v1").unwrap().len(), 8);
        assert_eq!(&*r.results[1].event_timestamps[0], "2026-11-17T00:00:00.000Z");
        assert_eq!(
            r.oldest_served,
            vec![("account_stats".to_string(), Some(1_794_873_600_000))]
        );
    }

    #[test]
    fn stale_values_are_flagged_and_not_served() {
        let (_d, fs) = store();
        push(&fs, "UAE-SA", "a1", "2026-11-10T00:00:00Z", 12.0);
        let r = get(&fs, "UAE-SA", &["a1"], NOW);
        assert_eq!(r.results[1].statuses, ["OUTSIDE_MAX_AGE"]);
        assert_eq!(r.results[1].values, [Value::Null]);
    }

    #[test]
    fn out_of_range_times_are_refused_and_corrupt_rows_answered_invalid_then_replaced() {
        let (_d, fs) = store();
        for bad in [
            json!(253402300800u64),
            json!(1e30),
            json!(i64::MAX),
            json!("10000-01-01T00:00:00Z"),
            json!(-5),
        ] {
            let req: PushRequest = serde_json::from_value(json!({
                "feature_view": "account_stats",
                "df": {"account_id": ["a1"], "event_timestamp": [bad], "completed_orders": [1.0]}
            }))
            .unwrap();
            let e = fs.push("UAE-SA", &req, NOW).unwrap_err().to_string();
            assert!(e.contains("df.event_timestamp[0]"), "{bad}: {e}");
        }
        // A row stored before times were checked: read as INVALID (never formatted), and the
        // next valid push replaces it.
        let corrupt = Row {
            event_ms: i64::MAX,
            written_ms: NOW,
            created_ms: None,
            schema_version: 1,
            values: vec![json!(5.0)],
        };
        fs.write_rows("UAE-SA", "account_stats", &[("a1".into(), corrupt)])
            .unwrap();
        let r = get(&fs, "UAE-SA", &["a1"], NOW);
        assert_eq!(r.results[1].statuses, ["INVALID"]);
        assert_eq!(r.results[1].values, [Value::Null]);
        assert_eq!(
            r.results[1].event_timestamps.iter().map(|t| &**t).collect::<Vec<_>>(),
            ["1970-01-01T00:00:00.000Z"]
        );
        assert_eq!(r.oldest_served, vec![("account_stats".to_string(), None)]);
        assert_eq!(push(&fs, "UAE-SA", "a1", "2026-11-17T00:00:00Z", 12.0).written, 1);
        assert_eq!(get(&fs, "UAE-SA", &["a1"], NOW).results[1].values, [json!(12.0)]);
    }

    #[test]
    fn the_created_column_breaks_ties_between_rows_of_the_same_event() {
        let (_d, fs) = store();
        let push_created = |created: &str, orders: f64| {
            let req: PushRequest = serde_json::from_value(json!({
                "feature_view": "account_stats",
                "df": {"account_id": ["a1"], "event_timestamp": ["2026-11-17T00:00:00Z"],
                       "created": [created], "completed_orders": [orders]}
            }))
            .unwrap();
            fs.push("UAE-SA", &req, NOW).unwrap()
        };
        assert_eq!(push_created("2026-11-17T01:00:00Z", 1.0).written, 1);
        assert_eq!(
            push_created("2026-11-17T00:30:00Z", 2.0).ignored,
            1,
            "created earlier: loses"
        );
        assert_eq!(get(&fs, "UAE-SA", &["a1"], NOW).results[1].values, [json!(1.0)]);
        // The same event and creation instant (written with an offset) with other values: the
        // later write wins, as without a created column.
        assert_eq!(push_created("2026-11-17T02:00:00+01:00", 3.0).written, 1);
        assert_eq!(
            push_created("2026-11-17T03:00:00Z", 4.0).written,
            1,
            "created later: wins"
        );
        assert_eq!(get(&fs, "UAE-SA", &["a1"], NOW).results[1].values, [json!(4.0)]);
    }

    #[test]
    fn pushes_are_idempotent_and_never_go_back_in_time() {
        let (_d, fs) = store();
        assert_eq!(push(&fs, "UAE-SA", "a1", "2026-11-17T00:00:00Z", 12.0).written, 1);
        assert_eq!(push(&fs, "UAE-SA", "a1", "2026-11-17T00:00:00Z", 12.0).ignored, 1);
        assert_eq!(push(&fs, "UAE-SA", "a1", "2026-11-16T00:00:00Z", 99.0).ignored, 1);
        assert_eq!(get(&fs, "UAE-SA", &["a1"], NOW).results[1].values, [json!(12.0)]);
        assert_eq!(push(&fs, "UAE-SA", "a1", "2026-11-17T12:00:00Z", 13.0).written, 1);
        assert_eq!(get(&fs, "UAE-SA", &["a1"], NOW).results[1].values, [json!(13.0)]);
    }

    #[test]
    fn corridors_never_see_each_other() {
        let (_d, fs) = store();
        push(&fs, "UAE-SA", "a1", "2026-11-17T00:00:00Z", 12.0);
        assert_eq!(get(&fs, "US-EG", &["a1"], NOW).results[1].statuses, ["NOT_FOUND"]);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let (_d, fs) = store();
        let bad = |df: Value| {
            let req: PushRequest = serde_json::from_value(json!({"feature_view": "account_stats", "df": df})).unwrap();
            fs.push("UAE-SA", &req, NOW).unwrap_err().to_string()
        };
        assert!(bad(json!({"event_timestamp": ["2026-11-17T00:00:00Z"]})).contains("df.account_id"));
        assert!(bad(json!({"account_id": ["a"], "event_timestamp": ["yesterday"]})).contains("df.event_timestamp[0]"));
        let e = bad(json!({"account_id": ["a"], "event_timestamp": [1.0], "completed_orders": ["many"]}));
        assert!(e.contains("df.completed_orders[0]"), "{e}");
        assert!(bad(json!({"account_id": ["a"], "event_timestamp": [1.0], "bogus": [1]})).contains("df.bogus"));
        let req: GetOnlineRequest =
            serde_json::from_value(json!({"features": ["account_stats:nope"], "entities": {"account_id": ["a"]}}))
                .unwrap();
        assert!(fs
            .get_online("UAE-SA", &req, NOW)
            .unwrap_err()
            .to_string()
            .contains("features[0]"));
        let req: GetOnlineRequest =
            serde_json::from_value(json!({"feature_service": "trust_scorer_v1", "entities": {"user": ["a"]}})).unwrap();
        assert!(fs
            .get_online("UAE-SA", &req, NOW)
            .unwrap_err()
            .to_string()
            .contains("account_id"));
    }

    #[test]
    fn fp32_features_are_rounded_once() {
        let (_d, fs) = store();
        // Just above the midpoint between 1.0 and the next f32: one rounding gives 1.0000001.
        let req: PushRequest = serde_json::from_str(
            r#"{"feature_view": "account_stats", "df": {"account_id": ["a"], "event_timestamp": ["2026-11-17T11:00:00Z"],
                "completed_orders": [1.00000005960464477539062500000001]}}"#,
        )
        .unwrap();
        fs.push("UAE-SA", &req, NOW).unwrap();
        let r = get(&fs, "UAE-SA", &["a"], NOW);
        let v = r.results[1].values[0].as_f64().unwrap() as f32;
        assert_eq!(v.to_bits(), 0x3f80_0001);
    }

    #[test]
    fn feature_service_order_and_full_names() {
        let (_d, fs) = store();
        let req: GetOnlineRequest = serde_json::from_value(
            json!({"feature_service": "trust_scorer_v1", "entities": {"account_id": ["a1"]}, "full_feature_names": true}),
        )
        .unwrap();
        let r = fs.get_online("UAE-SA", &req, NOW).unwrap();
        assert_eq!(r.metadata.feature_names.len(), 9);
        assert_eq!(r.metadata.feature_names[1], "account_stats__account_age_days");
        assert_eq!(r.metadata.feature_names[8], "account_stats__chargebacks_365d");
    }
}
