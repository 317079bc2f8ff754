//! Reading a trail back: its chains, each chain's segments, verification link by link, and
//! records filtered by time, event and model.

use crate::{valid_chain, AuditError, GENESIS};
use serde::Serialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// One segment file: the records of a chain from `first_seq` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The file.
    pub path: PathBuf,
    /// The sequence number of its first record (its file name).
    pub first_seq: u64,
}

/// The entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>, AuditError> {
    match std::fs::read_dir(dir) {
        Ok(e) => e.collect::<Result<_, _>>().map_err(|e| AuditError::io(dir, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(AuditError::io(dir, e)),
    }
}

/// The chains of the trail in `root`, sorted.
pub fn chains(root: &Path) -> Result<Vec<String>, AuditError> {
    let mut out = Vec::new();
    for entry in entries(root)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if valid_chain(&name) && entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The segments of the chain in `dir`, in order.
pub fn segments(dir: &Path) -> Result<Vec<Segment>, AuditError> {
    let mut out = Vec::new();
    for entry in entries(dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(first_seq) = name.strip_suffix(".jsonl").and_then(|n| n.parse::<u64>().ok()) {
            out.push(Segment {
                path: entry.path(),
                first_seq,
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// The facts of one line that links depend on.
#[derive(serde::Deserialize)]
pub(crate) struct Link<'a> {
    pub(crate) seq: u64,
    #[serde(borrow)]
    pub(crate) prev: &'a str,
    #[serde(borrow)]
    pub(crate) chain: &'a str,
}

/// Calls `visit` with each complete line of `path` (without its newline) and its 1-based line
/// number; a last line without a newline is passed to `torn` instead.
fn lines(
    path: &Path,
    mut visit: impl FnMut(&[u8], usize) -> std::ops::ControlFlow<()>,
    mut torn: impl FnMut(usize),
) -> Result<(), AuditError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(AuditError::io(path, e)),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| AuditError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            torn(number);
            return Ok(());
        }
        line.pop();
        if visit(&line, number).is_break() {
            return Ok(());
        }
    }
}

/// The sequence number and hash of the last complete record of the segment at `path`.
pub(crate) fn last_record(path: &Path, chain: &str) -> Result<Option<(u64, String)>, AuditError> {
    let mut last: Option<Result<(u64, String), String>> = None;
    lines(
        path,
        |line, number| {
            last = Some(match serde_json::from_slice::<Link>(line) {
                Ok(link) => Ok((link.seq, blake3::hash(line).to_hex().to_string())),
                Err(e) => Err(format!("{} line {number}: {e}", path.display())),
            });
            std::ops::ControlFlow::Continue(())
        },
        |_| {},
    )?;
    match last {
        None => Ok(None),
        Some(Ok(head)) => Ok(Some(head)),
        Some(Err(message)) => Err(AuditError::Chain {
            chain: chain.to_string(),
            message: format!("the last record is unreadable ({message}); run `invariant audit verify`"),
        }),
    }
}

/// Where a chain first stops holding together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The sequence number the record at fault should have.
    pub seq: u64,
    /// Its segment file.
    pub segment: PathBuf,
    /// Its line in that file (1-based).
    pub line: usize,
    /// What does not hold.
    pub reason: String,
}

/// The result of verifying one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The chain.
    pub chain: String,
    /// Records that verified (up to the first broken link).
    pub records: u64,
    /// The last verified record's sequence number (0: none).
    pub head_seq: u64,
    /// Its hash (compare it with a head kept elsewhere to detect a cut-off tail).
    pub head_hash: String,
    /// The first broken link, if any.
    pub broken: Option<Broken>,
    /// Whether the chain ends in a torn line (a record being written, or cut short by a crash;
    /// never an acknowledged one).
    pub torn_tail: bool,
}

impl Report {
    /// A report of `chain` with nothing verified yet.
    pub fn new(chain: &str) -> Self {
        Self {
            chain: chain.to_string(),
            records: 0,
            head_seq: 0,
            head_hash: GENESIS.to_string(),
            broken: None,
            torn_tail: false,
        }
    }

    /// Whether every link holds.
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }

    /// Counts `line` as the next verified record.
    pub(crate) fn accept(&mut self, line: &[u8]) {
        self.records += 1;
        self.head_seq += 1;
        self.head_hash = blake3::hash(line).to_hex().to_string();
    }
}

/// Why `line` is not record `expected` of `chain` following a record hashed `prev`, if it
/// is not.
pub(crate) fn link_fault(chain: &str, expected: u64, prev: &str, line: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Link>(line) {
        Err(e) => Some(format!("not a record: {e}")),
        Ok(link) if link.chain != chain => Some(format!("record of chain '{}'", link.chain)),
        Ok(link) if link.seq != expected => Some(format!(
            "sequence number {} where {expected} was due (a record was deleted, duplicated or moved)",
            link.seq
        )),
        Ok(link) if link.prev != prev => Some(format!(
            "prev does not match the hash of record {} (that record, or this link, was changed, or a record was deleted)",
            expected - 1
        )),
        Ok(_) => None,
    }
}

/// Verifies chain `chain` of the trail in `root`: segments follow one another without a gap,
/// each record carries the next sequence number, its chain's name, and the blake3 of the line
/// before it. Stops at the first broken link and names it.
pub fn verify(root: &Path, chain: &str) -> Result<Report, AuditError> {
    let segs = segments(&root.join(chain))?;
    let mut report = Report::new(chain);
    let mut expected = segs.first().map_or(1, |s| s.first_seq);
    if expected != 1 {
        report.broken = Some(Broken {
            seq: 1,
            segment: segs[0].path.clone(),
            line: 0,
            reason: format!(
                "the chain starts at record {expected}: records 1 to {} are missing",
                expected - 1
            ),
        });
        return Ok(report);
    }
    for (i, seg) in segs.iter().enumerate() {
        if seg.first_seq != expected {
            report.broken = Some(Broken {
                seq: expected,
                segment: seg.path.clone(),
                line: 0,
                reason: format!(
                    "segment starts at record {} but the one before ends at {}",
                    seg.first_seq,
                    expected - 1
                ),
            });
            return Ok(report);
        }
        let last_segment = i + 1 == segs.len();
        let mut broken = None;
        let mut torn_line = None;
        lines(
            &seg.path,
            |line, number| {
                let fault = link_fault(chain, expected, &report.head_hash, line);
                if let Some(reason) = fault {
                    broken = Some(Broken {
                        seq: expected,
                        segment: seg.path.clone(),
                        line: number,
                        reason,
                    });
                    return std::ops::ControlFlow::Break(());
                }
                report.accept(line);
                expected += 1;
                std::ops::ControlFlow::Continue(())
            },
            |number| torn_line = Some(number),
        )?;
        if let Some(b) = broken {
            report.broken = Some(b);
            return Ok(report);
        }
        if let Some(number) = torn_line {
            if last_segment {
                report.torn_tail = true;
            } else {
                report.broken = Some(Broken {
                    seq: expected,
                    segment: seg.path.clone(),
                    line: number,
                    reason: "a torn record in the middle of the chain".into(),
                });
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// Which records to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Records at or after this time (RFC 3339, as records carry it).
    pub since: Option<String>,
    /// Records of this model only.
    pub model: Option<String>,
    /// Records of this event only (`inference`, `transition`, …).
    pub event: Option<String>,
}

impl Filter {
    /// Whether `record` passes.
    pub fn matches(&self, record: &serde_json::Value) -> bool {
        let field = |k: &str| record.get(k).and_then(serde_json::Value::as_str);
        self.since
            .as_deref()
            .is_none_or(|s| field("time").is_some_and(|t| t >= s))
            && self.model.as_deref().is_none_or(|m| field("model") == Some(m))
            && self.event.as_deref().is_none_or(|e| field("event") == Some(e))
    }
}

/// Parses a `--since` value: an RFC 3339 time, or a duration back from now (`15m`, `2h`,
/// `1day`), into the form records carry.
pub fn parse_since(value: &str) -> Result<String, String> {
    let value = value.trim();
    if let Ok(t) = humantime::parse_rfc3339_weak(value) {
        return Ok(humantime::format_rfc3339_millis(t).to_string());
    }
    match humantime::parse_duration(value) {
        Ok(d) => {
            let t = std::time::SystemTime::now()
                .checked_sub(d)
                .unwrap_or(std::time::UNIX_EPOCH);
            Ok(humantime::format_rfc3339_millis(t).to_string())
        }
        Err(_) => Err(format!(
            "'{value}' is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a duration (15m, 2h)"
        )),
    }
}

/// Calls `visit` with each record of `chain` that passes `filter`, oldest first, until it
/// returns `Break`. Lines that are not records are skipped (`verify` reports them).
pub fn read(
    root: &Path,
    chain: &str,
    filter: &Filter,
    mut visit: impl FnMut(serde_json::Value) -> std::ops::ControlFlow<()>,
) -> Result<(), AuditError> {
    if !valid_chain(chain) {
        return Err(AuditError::InvalidChain(chain.to_string()));
    }
    let mut stop = false;
    for seg in segments(&root.join(chain))? {
        lines(
            &seg.path,
            |line, _| match serde_json::from_slice::<serde_json::Value>(line) {
                Ok(record) if filter.matches(&record) => {
                    let flow = visit(record);
                    stop = flow.is_break();
                    flow
                }
                _ => std::ops::ControlFlow::Continue(()),
            },
            |_| {},
        )?;
        if stop {
            break;
        }
    }
    Ok(())
}
