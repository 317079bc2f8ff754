//! The writer thread: group commit of queued records into each chain's current segment.

use crate::read::{last_record, segments, Segment};
use crate::{AuditError, Mode, Settings, GENESIS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

/// Who waits for a record.
#[derive(Debug)]
pub(crate) enum Done {
    None,
    Async(tokio::sync::oneshot::Sender<Result<(), String>>),
    Blocking(std::sync::mpsc::Sender<Result<(), String>>),
}

impl Done {
    fn send(self, result: Result<(), String>) {
        match self {
            Done::None => {}
            Done::Async(tx) => {
                let _ = tx.send(result);
            }
            Done::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// One queued record.
#[derive(Debug)]
pub(crate) struct Pending {
    pub chain: String,
    pub time: String,
    /// `"event":…,<fields>}`: the end of the line after the chain's own keys.
    pub tail: Vec<u8>,
    /// Sync it before its commit resolves, whatever the mode.
    pub sync: bool,
    pub done: Done,
}

/// `"event":"<event>",<the fields' members>}` for `fields` serialising to a JSON object,
/// serialised once, in place.
pub(crate) fn tail(event: &str, fields: &impl Serialize) -> Result<Vec<u8>, AuditError> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"\"event\":");
    serde_json::to_writer(&mut out, event).map_err(|e| AuditError::Record(e.to_string()))?;
    out.push(b',');
    let start = out.len();
    serde_json::to_writer(&mut out, fields).map_err(|e| AuditError::Record(e.to_string()))?;
    if out.get(start) != Some(&b'{') {
        return Err(AuditError::Record("the fields must serialise to a JSON object".into()));
    }
    if out.len() - start == 2 {
        // `{}`: no members, so no comma after the event.
        out.truncate(start - 1);
        out.push(b'}');
    } else {
        out.remove(start);
    }
    Ok(out)
}

/// Appends the line of record `seq` of `chain` following a record hashed `prev` to `buf`
/// (without its newline) and returns its blake3 (hex).
pub(crate) fn push_record(buf: &mut Vec<u8>, seq: u64, prev: &str, chain: &str, p: &Pending) -> String {
    let start = buf.len();
    buf.extend_from_slice(b"{\"seq\":");
    buf.extend_from_slice(seq.to_string().as_bytes());
    buf.extend_from_slice(b",\"prev\":\"");
    buf.extend_from_slice(prev.as_bytes());
    buf.extend_from_slice(b"\",\"chain\":\"");
    buf.extend_from_slice(chain.as_bytes());
    buf.extend_from_slice(b"\",\"time\":\"");
    buf.extend_from_slice(p.time.as_bytes());
    buf.extend_from_slice(b"\",");
    buf.extend_from_slice(&p.tail);
    blake3::hash(&buf[start..]).to_hex().to_string()
}

/// Where a writer puts records: chain files, or Redis streams.
pub(crate) trait Sink: Send {
    /// Appends `records` to `chain` (synced when `sync`); returns the chain's head sequence.
    fn write(&mut self, chain: &str, records: &[&Pending], sync: bool) -> Result<u64, AuditError>;
    /// Whether anything written is not synced yet.
    fn dirty(&self) -> bool;
    /// Syncs everything written.
    fn sync_all(&mut self);
}

/// Chains in segment files under one directory.
pub(crate) struct FileSink {
    dir: PathBuf,
    segment_bytes: u64,
    chains: BTreeMap<String, Chain>,
}

impl Sink for FileSink {
    fn write(&mut self, name: &str, records: &[&Pending], sync: bool) -> Result<u64, AuditError> {
        if !self.chains.contains_key(name) {
            let chain = Chain::open(&self.dir, name)?;
            self.chains.insert(name.to_string(), chain);
        }
        let chain = self
            .chains
            .get_mut(name)
            .ok_or_else(|| AuditError::NotWritten(format!("chain {name} not open")))?;
        let result = chain.write(records, self.segment_bytes, sync);
        if result.is_err() {
            chain.stale = true;
        }
        result.map(|()| chain.next_seq.saturating_sub(1))
    }

    fn dirty(&self) -> bool {
        self.chains.values().any(|c| c.dirty)
    }

    fn sync_all(&mut self) {
        for c in self.chains.values_mut() {
            if let Err(e) = c.sync() {
                tracing::error!(error = %e, "cannot sync an audit segment");
                metrics::counter!("invariant_audit_errors_total", "chain" => c.name.clone()).increment(1);
                c.stale = true;
            }
        }
    }
}

/// One chain's writing end.
pub(crate) struct Chain {
    name: String,
    dir: PathBuf,
    lock: File,
    file: File,
    path: PathBuf,
    /// Bytes of the current segment as this writer last left it.
    len: u64,
    next_seq: u64,
    prev: String,
    /// The directory's modification time as this writer last left it (another writer's new
    /// segment changes it).
    dir_mtime: Option<SystemTime>,
    /// Re-read the head before the next write (after a failure).
    stale: bool,
    /// Written since the last sync.
    dirty: bool,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.jsonl")
}

fn append_open(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| AuditError::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io(dir, e))
}

impl Chain {
    /// Opens (creating) chain `name` under `root` and reads its head.
    fn open(root: &Path, name: &str) -> Result<Self, AuditError> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| AuditError::io(&dir, e))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| AuditError::io(&lock_path, e))?;
        let path = dir.join(segment_name(1));
        let file = append_open(&path)?;
        let mut chain = Self {
            name: name.to_string(),
            dir,
            lock,
            file,
            path,
            len: 0,
            next_seq: 1,
            prev: GENESIS.to_string(),
            dir_mtime: None,
            stale: true,
            dirty: false,
        };
        chain.locked(|c| c.recover())?;
        Ok(chain)
    }

    fn locked<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, AuditError>) -> Result<T, AuditError> {
        self.lock.lock().map_err(|e| AuditError::io(&self.dir, e))?;
        let result = f(self);
        let _ = self.lock.unlock();
        result
    }

    fn dir_mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.dir).and_then(|m| m.modified()).ok()
    }

    /// Reads the head from disk (under the lock): the last segment, cut back to its last
    /// complete line, and the last record in it (or in the segment before, when it is empty).
    fn recover(&mut self) -> Result<(), AuditError> {
        let mut all = segments(&self.dir)?;
        if all.is_empty() {
            all.push(Segment {
                path: self.dir.join(segment_name(1)),
                first_seq: 1,
            });
        }
        let current = all[all.len() - 1].clone();
        // A line without its newline was never acknowledged (durable commits wait for whole
        // synced lines): cut it off.
        let bytes = match std::fs::read(&current.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(AuditError::io(&current.path, e)),
        };
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let file = append_open(&current.path)?;
        if whole < bytes.len() {
            tracing::warn!(
                chain = %self.name,
                segment = %current.path.display(),
                bytes = bytes.len() - whole,
                "cutting off a torn audit record (never acknowledged)"
            );
            file.set_len(whole as u64)
                .map_err(|e| AuditError::io(&current.path, e))?;
            file.sync_all().map_err(|e| AuditError::io(&current.path, e))?;
        }
        let mut head = None;
        for s in all.iter().rev() {
            if let Some(found) = last_record(&s.path, &self.name)? {
                head = Some(found);
                break;
            }
        }
        (self.next_seq, self.prev) = match head {
            Some((seq, hash)) => (seq + 1, hash),
            None => (current.first_seq, GENESIS.to_string()),
        };
        self.file = file;
        self.path = current.path;
        self.len = whole as u64;
        self.dir_mtime = self.dir_mtime();
        self.stale = false;
        Ok(())
    }

    /// Whether another writer changed the chain since this one last wrote.
    fn changed(&self) -> bool {
        self.stale || self.file.metadata().map(|m| m.len()).ok() != Some(self.len) || self.dir_mtime() != self.dir_mtime
    }

    /// Appends `records` (under the lock), starting new segments as they fill; syncs when
    /// `sync`. Returns whether anything stays unsynced.
    fn write(&mut self, records: &[&Pending], segment_bytes: u64, sync: bool) -> Result<(), AuditError> {
        self.locked(|c| {
            if c.changed() {
                c.recover()?;
            }
            let mut buf = Vec::with_capacity(records.iter().map(|r| r.tail.len() + 160).sum());
            for r in records {
                let start = buf.len();
                c.prev = push_record(&mut buf, c.next_seq, &c.prev, &c.name, r);
                buf.push(b'\n');
                // A record that would overfill the segment starts the next one.
                if c.len + buf.len() as u64 > segment_bytes && c.len + start as u64 > 0 {
                    let line = buf.split_off(start);
                    c.flush(&mut buf)?;
                    c.rotate_at(c.next_seq)?;
                    buf = line;
                }
                c.next_seq += 1;
            }
            c.flush(&mut buf)?;
            c.dir_mtime = c.dir_mtime();
            Ok(())
        })?;
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), AuditError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(buf).map_err(|e| AuditError::io(&self.path, e))?;
        self.len += buf.len() as u64;
        self.dirty = true;
        metrics::counter!("invariant_audit_bytes_total", "chain" => self.name.clone()).increment(buf.len() as u64);
        buf.clear();
        Ok(())
    }

    /// Syncs the current segment and starts the next, named by its first sequence number.
    fn rotate_at(&mut self, first_seq: u64) -> Result<(), AuditError> {
        self.sync()?;
        let path = self.dir.join(segment_name(first_seq));
        self.file = append_open(&path)?;
        self.path = path;
        self.len = 0;
        sync_dir(&self.dir)
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        if !self.dirty {
            return Ok(());
        }
        let started = Instant::now();
        self.file.sync_data().map_err(|e| AuditError::io(&self.path, e))?;
        metrics::histogram!("invariant_audit_fsync_seconds").record(started.elapsed().as_secs_f64());
        self.dirty = false;
        Ok(())
    }
}

/// The sink of `settings`: Redis streams when a Redis URL is set, else the files, with every
/// chain already in the directory opened (so a damaged one stops the start-up, not a request).
pub(crate) fn open_sink(settings: &Settings) -> Result<Box<dyn Sink>, AuditError> {
    if !settings.redis_url.is_empty() {
        return Ok(Box::new(crate::redis_stream::RedisSink::new(&settings.redis_url)?));
    }
    std::fs::create_dir_all(&settings.dir).map_err(|e| AuditError::io(&settings.dir, e))?;
    let mut chains = BTreeMap::new();
    for name in crate::read::chains(&settings.dir)? {
        let chain = Chain::open(&settings.dir, &name)?;
        metrics::gauge!("invariant_audit_chain_head_sequence", "chain" => name.clone())
            .set(chain.next_seq.saturating_sub(1) as f64);
        chains.insert(name, chain);
    }
    Ok(Box::new(FileSink {
        dir: settings.dir.clone(),
        segment_bytes: settings.segment_bytes,
        chains,
    }))
}

/// The writer loop: takes everything queued, writes it chain by chain, syncs as the mode
/// asks, resolves the commits; then parks until woken (a durable or synced record's sender
/// unparks it) or until the next tick (`flush_ms / 2`), so buffered records cost their senders
/// no wake-up. Returns, with everything written and synced, when every sender is gone.
pub(crate) fn run(settings: Settings, mut sink: Box<dyn Sink>, queue: Receiver<Pending>) {
    let flush = Duration::from_millis(settings.flush_ms.max(1));
    let tick = (flush / 2).max(Duration::from_millis(1));
    let durable = settings.mode == Mode::Durable;
    let mut last_sync = Instant::now();
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        let mut closing = false;
        loop {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closing = true;
                    break;
                }
            }
        }
        let idle = batch.is_empty();
        // Whether anyone waits for this batch (durable appends, synced admin records).
        let awaited = batch.iter().any(|p| p.sync || !matches!(p.done, Done::None));
        let drained = batch.len();
        let sync_all = closing || durable || last_sync.elapsed() >= tick;
        commit(sink.as_mut(), &mut batch, sync_all);
        if sync_all && sink.dirty() {
            sink.sync_all();
            last_sync = Instant::now();
        } else if !sink.dirty() {
            last_sync = Instant::now();
        }
        if closing {
            return;
        }
        // In buffered mode nobody waits for a record: a tick's records are gathered into one
        // write instead of each few being written as they come (a busy writer would otherwise
        // spin on small writes beside the requests). A record someone waits for unparks the
        // writer; a queue filling up is drained without a pause.
        if idle || (!durable && !awaited && drained < crate::QUEUE / 8) {
            std::thread::park_timeout(tick);
        }
    }
}

/// Writes one batch, grouped by chain in arrival order, and resolves its commits.
fn commit(sink: &mut dyn Sink, batch: &mut Vec<Pending>, sync_all: bool) {
    if batch.is_empty() {
        return;
    }
    let mut by_chain: BTreeMap<&str, Vec<&Pending>> = BTreeMap::new();
    for p in batch.iter() {
        by_chain.entry(p.chain.as_str()).or_default().push(p);
    }
    let mut results: BTreeMap<String, Result<(), String>> = BTreeMap::new();
    for (name, records) in by_chain {
        let sync = sync_all || records.iter().any(|r| r.sync);
        let result = sink.write(name, &records, sync);
        match &result {
            Ok(head) => {
                metrics::counter!("invariant_audit_records_total", "chain" => name.to_string())
                    .increment(records.len() as u64);
                metrics::gauge!("invariant_audit_chain_head_sequence", "chain" => name.to_string()).set(*head as f64);
            }
            Err(e) => {
                tracing::error!(chain = name, error = %e, records = records.len(), "audit records not written");
                metrics::counter!("invariant_audit_errors_total", "chain" => name.to_string()).increment(1);
            }
        }
        results.insert(name.to_string(), result.map(|_| ()).map_err(|e| e.to_string()));
    }
    for p in batch.drain(..) {
        let result = results.get(&p.chain).cloned().unwrap_or(Ok(()));
        p.done.send(result);
    }
}
