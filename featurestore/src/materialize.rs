//! Bulk loading (`invariant features materialize`): rows of one feature view from a CSV file
//! into one corridor, in batched transactions. Bad rows (a missing or malformed key, time or
//! value) are reported with their line and reason and skipped; the rest is loaded.

use crate::defs::{Definitions, FeatureView, KeyType};
use crate::store::{Row, WriteOutcome};
use crate::{FeatureError, FeatureStore};
use invariant_core::DataType;
use serde::Serialize;
use serde_json::Value;
use std::io::Read;

/// Most rejected rows listed in a report (all are counted).
pub const MAX_LISTED_REJECTIONS: usize = 20;

/// A row that was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// What a materialization did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaterializeReport {
    /// Data rows read.
    pub rows: u64,
    /// Rows stored.
    pub written: u64,
    /// Rows not stored because a newer or identical event was already there.
    pub ignored: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// The first rejections with their reasons.
    pub rejections: Vec<Rejection>,
    /// Wall time.
    pub seconds: f64,
    /// Data rows per second.
    pub rows_per_second: f64,
}

fn parse_cell(datatype: DataType, text: &str) -> Result<Value, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Value::Null);
    }
    let bad = || format!("'{text}' is not a valid {datatype} value");
    Ok(match datatype {
        DataType::Fp32 => {
            let v: f32 = text.parse().map_err(|_| bad())?;
            if !v.is_finite() {
                return Err(bad());
            }
            Value::from(f64::from(v))
        }
        DataType::Fp64 => {
            let v: f64 = text.parse().map_err(|_| bad())?;
            if !v.is_finite() {
                return Err(bad());
            }
            Value::from(v)
        }
        DataType::Int64 => Value::from(text.parse::<i64>().map_err(|_| bad())?),
        DataType::Bool => match text {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    })
}

fn parse_time(text: &str) -> Result<i64, String> {
    crate::time::parse_text(text).map_err(|e| format!("event_timestamp: {e}"))
}

/// Column positions of a file's header for a view.
struct Columns {
    key: usize,
    time: usize,
    created: Option<usize>,
    features: Vec<Option<usize>>,
}

fn columns(view: &FeatureView, join_key: &str, header: &[String]) -> Result<Columns, FeatureError> {
    let find = |name: &str| header.iter().position(|h| h.trim() == name);
    let key = find(join_key).ok_or_else(|| FeatureError::Request(format!("the file has no '{join_key}' column")))?;
    let time = find("event_timestamp")
        .ok_or_else(|| FeatureError::Request("the file has no 'event_timestamp' column".into()))?;
    for h in header {
        let h = h.trim();
        if h != join_key && h != "event_timestamp" && h != crate::CREATED && !view.features.iter().any(|f| f.name == h)
        {
            return Err(FeatureError::Request(format!(
                "column '{h}': feature view '{}' has no such feature",
                view.name
            )));
        }
    }
    Ok(Columns {
        key,
        time,
        created: find(crate::CREATED),
        features: view.features.iter().map(|f| find(&f.name)).collect(),
    })
}

/// A time in milliseconds as the Unix seconds text the CSV path reads.
fn seconds_text(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// Units per second of a Parquet INT64 timestamp column (`None`: not a timestamp).
fn timestamp_units(column: &parquet::schema::types::ColumnDescriptor) -> Option<i64> {
    use parquet::basic::{LogicalType, TimeUnit};
    match column.logical_type_ref() {
        Some(LogicalType::Timestamp(t)) => Some(match t.unit {
            TimeUnit::MILLIS => 1000,
            TimeUnit::MICROS => 1_000_000,
            TimeUnit::NANOS => 1_000_000_000,
        }),
        _ => None,
    }
}

/// A Parquet cell as the text the CSV path would have read; `units` is the units per second
/// of its column when it is a timestamp (nanoseconds arrive as plain INT64 values).
fn parquet_text(field: &parquet::record::Field, units: Option<i64>) -> Result<String, String> {
    use parquet::record::Field;
    Ok(match field {
        Field::Long(v) if units.is_some() => seconds_text(crate::time::from_units(*v, units.unwrap_or(1))?),
        Field::TimestampMillis(ms) => seconds_text(crate::time::from_units(*ms, 1000)?),
        Field::TimestampMicros(us) => seconds_text(crate::time::from_units(*us, 1_000_000)?),
        Field::Null => String::new(),
        Field::Bool(b) => b.to_string(),
        Field::Byte(v) => v.to_string(),
        Field::Short(v) => v.to_string(),
        Field::Int(v) => v.to_string(),
        Field::Long(v) => v.to_string(),
        Field::UByte(v) => v.to_string(),
        Field::UShort(v) => v.to_string(),
        Field::UInt(v) => v.to_string(),
        Field::ULong(v) => v.to_string(),
        Field::Float(v) => v.to_string(),
        Field::Double(v) => v.to_string(),
        Field::Str(v) => v.clone(),
        other => return Err(format!("unsupported Parquet value {other}")),
    })
}

impl FeatureStore {
    /// Loads a CSV file (a header row naming the join key, `event_timestamp` and features) into
    /// `view` of `corridor`, `batch` rows per transaction. `progress` is called with the bytes
    /// read so far. Rows are written with the usual rule: an older event never overwrites a
    /// newer one, and the same event twice changes nothing.
    pub fn materialize_csv(
        &self,
        corridor: &str,
        view_name: &str,
        input: impl Read,
        batch: usize,
        progress: impl FnMut(u64),
    ) -> Result<MaterializeReport, FeatureError> {
        materialize_csv_into(&self.defs, view_name, input, batch, progress, |view, rows| {
            count(self.write_rows(corridor, view, rows)?)
        })
    }

    /// Loads a Parquet file (columns named like the CSV header; uncompressed or Snappy) the same
    /// way; rejections name the row (1-based) instead of a line. `progress` gets rows read.
    pub fn materialize_parquet(
        &self,
        corridor: &str,
        view_name: &str,
        file: std::fs::File,
        batch: usize,
        progress: impl FnMut(u64),
    ) -> Result<MaterializeReport, FeatureError> {
        materialize_parquet_into(&self.defs, view_name, file, batch, progress, |view, rows| {
            count(self.write_rows(corridor, view, rows)?)
        })
    }
}

/// (written, ignored) of write outcomes.
fn count(outcomes: Vec<WriteOutcome>) -> Result<(u64, u64), FeatureError> {
    let written = outcomes.iter().filter(|o| **o == WriteOutcome::Written).count() as u64;
    Ok((written, outcomes.len() as u64 - written))
}

/// Where checked rows go: `write(view, rows)` stores a batch and returns (written, ignored).
pub trait RowSink: FnMut(&str, &[(String, Row)]) -> Result<(u64, u64), FeatureError> {}
impl<F: FnMut(&str, &[(String, Row)]) -> Result<(u64, u64), FeatureError>> RowSink for F {}

/// [`FeatureStore::materialize_csv`] with the rows of `view_name` (of `defs`) written by
/// `write`, a batch at a time (e.g. pushed to a running server).
pub fn materialize_csv_into(
    defs: &Definitions,
    view_name: &str,
    input: impl Read,
    batch: usize,
    mut progress: impl FnMut(u64),
    write: impl RowSink,
) -> Result<MaterializeReport, FeatureError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| FeatureError::Request(format!("CSV header: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut record = csv::StringRecord::new();
    let records = std::iter::from_fn(move || {
        let line = reader.position().line();
        let next = match reader.read_record(&mut record) {
            Ok(false) => return None,
            Ok(true) => Ok(record.iter().map(str::to_string).collect()),
            Err(e) => Err(format!("unreadable CSV: {e}")),
        };
        progress(reader.position().byte());
        Some((line, next))
    });
    materialize_records(defs, view_name, &header, records, batch, write)
}

/// [`FeatureStore::materialize_parquet`] with the rows written by `write`.
pub fn materialize_parquet_into(
    defs: &Definitions,
    view_name: &str,
    file: std::fs::File,
    batch: usize,
    mut progress: impl FnMut(u64),
    write: impl RowSink,
) -> Result<MaterializeReport, FeatureError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e: parquet::errors::ParquetError| FeatureError::Request(format!("Parquet: {e}"));
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let columns = reader.metadata().file_metadata().schema_descr().columns().to_vec();
    let header: Vec<String> = columns.iter().map(|c| c.name().to_string()).collect();
    let units: std::collections::BTreeMap<String, i64> = columns
        .iter()
        .filter_map(|c| timestamp_units(c).map(|u| (c.name().to_string(), u)))
        .collect();
    let rows = reader.get_row_iter(None).map_err(bad)?;
    let mut n = 0u64;
    let records = rows.map(|row| {
        n += 1;
        progress(n);
        let cells = row.map_err(|e| format!("unreadable Parquet row: {e}")).and_then(|row| {
            let by_name: std::collections::BTreeMap<String, String> = row
                .get_column_iter()
                .map(|(name, field)| {
                    parquet_text(field, units.get(name).copied())
                        .map(|t| (name.clone(), t))
                        .map_err(|e| format!("{name}: {e}"))
                })
                .collect::<Result<_, _>>()?;
            Ok(header
                .iter()
                .map(|h| by_name.get(h).cloned().unwrap_or_default())
                .collect())
        });
        (n, cells)
    });
    let header_copy = header.clone();
    materialize_records(defs, view_name, &header_copy, records, batch, write)
}

/// Checks and writes records (position, cells in header order), `batch` per write.
fn materialize_records(
    defs: &Definitions,
    view_name: &str,
    header: &[String],
    records: impl Iterator<Item = (u64, Result<Vec<String>, String>)>,
    batch: usize,
    mut write: impl RowSink,
) -> Result<MaterializeReport, FeatureError> {
    let started = std::time::Instant::now();
    let (view, entity) = defs.view_with_entity(view_name)?;
    let cols = columns(view, &entity.join_key, header)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut report = MaterializeReport {
        rows: 0,
        written: 0,
        ignored: 0,
        rejected: 0,
        rejections: Vec::new(),
        seconds: 0.0,
        rows_per_second: 0.0,
    };
    let mut flush = |pending: &mut Vec<(String, Row)>, report: &mut MaterializeReport| -> Result<(), FeatureError> {
        if pending.is_empty() {
            return Ok(());
        }
        let (written, ignored) = write(&view.name, pending)?;
        report.written += written;
        report.ignored += ignored;
        pending.clear();
        Ok(())
    };
    let mut pending: Vec<(String, Row)> = Vec::with_capacity(batch.max(1));
    for (line, cells) in records {
        report.rows += 1;
        let row = cells.and_then(|cells| -> Result<(String, Row), String> {
            let cell = |i: usize| cells.get(i).map(String::as_str).unwrap_or("");
            let key = Some(cell(cols.key).trim())
                .filter(|k| !k.is_empty())
                .ok_or("missing entity key")?;
            if entity.key_type == KeyType::Int64 && key.parse::<i64>().is_err() {
                return Err(format!("entity key '{key}' is not an INT64"));
            }
            let time = parse_time(cell(cols.time))?;
            let created_ms = match cols.created.map(cell).map(str::trim) {
                None | Some("") => None,
                Some(text) => Some(crate::time::parse_text(text).map_err(|e| format!("{}: {e}", crate::CREATED))?),
            };
            let mut values = Vec::with_capacity(view.features.len());
            for (f, col) in view.features.iter().zip(&cols.features) {
                let v = match col {
                    Some(c) => parse_cell(f.datatype, cell(*c)).map_err(|m| format!("{}: {m}", f.name))?,
                    None => Value::Null,
                };
                values.push(v);
            }
            Ok((
                key.to_string(),
                Row {
                    event_ms: time,
                    written_ms: now,
                    created_ms,
                    schema_version: view.schema_version,
                    values,
                },
            ))
        });
        match row {
            Ok(r) => pending.push(r),
            Err(reason) => {
                report.rejected += 1;
                if report.rejections.len() < MAX_LISTED_REJECTIONS {
                    report.rejections.push(Rejection { line, reason });
                }
            }
        }
        if pending.len() >= batch.max(1) {
            flush(&mut pending, &mut report)?;
        }
    }
    flush(&mut pending, &mut report)?;
    report.seconds = started.elapsed().as_secs_f64();
    report.rows_per_second = report.rows as f64 / report.seconds.max(1e-9);
    Ok(report)
}

/// Checked rows of `view` as a push request (the `df` of `POST /v1/features/push`): the join
/// key, `event_timestamp` and `created` as Unix seconds with milliseconds, and the values.
pub fn push_request(
    defs: &Definitions,
    view_name: &str,
    rows: &[(String, Row)],
) -> Result<crate::PushRequest, FeatureError> {
    use serde_json::value::RawValue;
    let (view, entity) = defs.view_with_entity(view_name)?;
    let raw = |v: &Value| RawValue::from_string(v.to_string()).map_err(|e| FeatureError::Request(e.to_string()));
    let seconds = |ms: i64| RawValue::from_string(seconds_text(ms)).map_err(|e| FeatureError::Request(e.to_string()));
    let mut df: std::collections::BTreeMap<String, Vec<Box<RawValue>>> = std::collections::BTreeMap::new();
    for (key, row) in rows {
        let key = match entity.key_type {
            KeyType::String => Value::from(key.as_str()),
            KeyType::Int64 => Value::from(key.parse::<i64>().map_err(|e| FeatureError::Request(e.to_string()))?),
        };
        df.entry(entity.join_key.clone()).or_default().push(raw(&key)?);
        df.entry("event_timestamp".into())
            .or_default()
            .push(seconds(row.event_ms)?);
        if rows.iter().any(|(_, r)| r.created_ms.is_some()) {
            let created = match row.created_ms {
                Some(ms) => seconds(ms)?,
                None => raw(&Value::Null)?,
            };
            df.entry(crate::CREATED.into()).or_default().push(created);
        }
        for (f, v) in view.features.iter().zip(&row.values) {
            df.entry(f.name.clone()).or_default().push(raw(v)?);
        }
    }
    Ok(crate::PushRequest {
        feature_view: view.name.clone(),
        df,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_parquet_like_csv() {
        use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, FloatType};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.parquet");
        let schema = Arc::new(
            parquet::schema::parser::parse_message_type(
                "message rows { REQUIRED BYTE_ARRAY account_id (UTF8); REQUIRED DOUBLE event_timestamp; \
                 OPTIONAL FLOAT completed_orders; }",
            )
            .unwrap(),
        );
        let mut writer = SerializedFileWriter::new(
            std::fs::File::create(&path).unwrap(),
            schema,
            Arc::new(WriterProperties::builder().build()),
        )
        .unwrap();
        let mut group = writer.next_row_group().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        let keys: Vec<ByteArray> = ["p1", "", "p3"].iter().map(|k| ByteArray::from(*k)).collect();
        col.typed::<ByteArrayType>().write_batch(&keys, None, None).unwrap();
        col.close().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<DoubleType>()
            .write_batch(&[1794900000.0, 1794900000.0, 1794900000.5], None, None)
            .unwrap();
        col.close().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<FloatType>()
            .write_batch(&[0.1, 2.0], Some(&[1, 1, 0]), None)
            .unwrap();
        col.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();

        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../features");
        let fs = FeatureStore::open(&repo, &dir.path().join("applied.json"), &dir.path().join("f.redb")).unwrap();
        let mut rows_seen = 0;
        let r = fs
            .materialize_parquet(
                "UAE-SA",
                "account_stats",
                std::fs::File::open(&path).unwrap(),
                10,
                |n| rows_seen = n,
            )
            .unwrap();
        assert_eq!((r.rows, r.written, r.rejected), (3, 2, 1));
        assert_eq!(
            r.rejections[0],
            Rejection {
                line: 2,
                reason: "missing entity key".into()
            }
        );
        assert_eq!(rows_seen, 3);
        let req: crate::GetOnlineRequest = serde_json::from_value(serde_json::json!({
            "features": ["account_stats:completed_orders"], "entities": {"account_id": ["p1", "p3"]}
        }))
        .unwrap();
        let got = fs.get_online("UAE-SA", &req, 1_794_900_010_000).unwrap();
        assert_eq!(
            (got.results[1].values[0].as_f64().unwrap() as f32).to_bits(),
            0.1f32.to_bits(),
            "FP32 kept exactly"
        );
        assert_eq!(
            got.results[1].statuses,
            ["PRESENT", "NULL_VALUE"],
            "a null cell is a null value"
        );
        assert_eq!(got.results[1].values[1], Value::Null);
    }

    #[test]
    fn loads_good_rows_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../features");
        let fs = FeatureStore::open(&repo, &dir.path().join("applied.json"), &dir.path().join("f.redb")).unwrap();
        let csv = "account_id,event_timestamp,completed_orders,kyc_level\n\
                   a1,2026-11-17T00:00:00Z,12,2\n\
                   ,2026-11-17T00:00:00Z,1,1\n\
                   a3,not-a-time,1,1\n\
                   a4,1794900000,many,1\n\
                   a5,1794900000,5,\n";
        let mut seen = 0;
        let r = fs
            .materialize_csv("UAE-SA", "account_stats", csv.as_bytes(), 2, |b| seen = b)
            .unwrap();
        assert_eq!((r.rows, r.written, r.rejected), (5, 2, 3));
        assert_eq!(
            r.rejections[0],
            Rejection {
                line: 3,
                reason: "missing entity key".into()
            }
        );
        assert!(r.rejections[1].reason.contains("not-a-time") && r.rejections[1].line == 4);
        assert!(r.rejections[2].reason.contains("completed_orders") && r.rejections[2].line == 5);
        assert_eq!(seen, csv.len() as u64);
        let again = fs
            .materialize_csv("UAE-SA", "account_stats", csv.as_bytes(), 100, |_| {})
            .unwrap();
        assert_eq!(
            (again.written, again.ignored),
            (0, 2),
            "loading the same file twice changes nothing"
        );
        let bad = fs.materialize_csv(
            "UAE-SA",
            "account_stats",
            "account_id,event_timestamp,bogus\n".as_bytes(),
            10,
            |_| {},
        );
        assert!(bad.unwrap_err().to_string().contains("bogus"));
    }
}
