//! The trail on disk: chains verify, tampering is named, crashes and second writers keep
//! links whole, segments rotate.

use invariant_audit::read::{self, Filter};
use invariant_audit::{Mode, Settings, Trail};
use serde_json::{json, Value};
use std::path::Path;

fn settings(dir: &Path, mode: Mode, segment_bytes: u64) -> Settings {
    Settings {
        dir: dir.to_path_buf(),
        mode,
        flush_ms: 5,
        segment_bytes,
        redis_url: String::new(),
    }
}

fn all(dir: &Path, chain: &str) -> Vec<Value> {
    let mut out = Vec::new();
    read::read(dir, chain, &Filter::default(), |r| {
        out.push(r);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn segment_files(dir: &Path, chain: &str) -> Vec<std::path::PathBuf> {
    read::segments(&dir.join(chain))
        .unwrap()
        .into_iter()
        .map(|s| s.path)
        .collect()
}

#[tokio::test]
async fn durable_records_chain_per_corridor_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = Trail::open(settings(tmp.path(), Mode::Durable, 1 << 20)).unwrap();
    for i in 0..10 {
        let chain = if i % 2 == 0 { "UAE-SA" } else { "US-EG" };
        let commit = trail.append(chain, "inference", &json!({"model": "m", "i": i}));
        assert!(commit.is_pending(), "durable commits wait for the sync");
        commit.wait().await.unwrap();
    }
    // Once a durable commit resolved, the record is on disk (read without closing the trail).
    let records = all(tmp.path(), "UAE-SA");
    assert_eq!(records.len(), 5);
    assert_eq!(records[0]["seq"], 1);
    assert_eq!(records[0]["prev"], invariant_audit::GENESIS);
    assert_eq!(records[4]["seq"], 5);
    assert_eq!(records[4]["i"], 8);
    assert!(records
        .iter()
        .all(|r| r["chain"] == "UAE-SA" && r["event"] == "inference"));
    assert_eq!(read::chains(tmp.path()).unwrap(), vec!["UAE-SA", "US-EG"]);
    for chain in ["UAE-SA", "US-EG"] {
        let report = read::verify(tmp.path(), chain).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.records, 5);
        assert_eq!(report.head_seq, 5);
    }
}

#[test]
fn an_edited_or_deleted_record_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let trail = Trail::open(settings(tmp.path(), Mode::Buffered, 1 << 20)).unwrap();
        for i in 0..6 {
            trail
                .append_synced("UAE-SA", "inference", &json!({"output_hash": format!("h{i}")}))
                .unwrap();
        }
    }
    let file = segment_files(tmp.path(), "UAE-SA").remove(0);
    let original = std::fs::read_to_string(&file).unwrap();

    // Edit record 3's output hash: the link from record 4 breaks.
    std::fs::write(&file, original.replace("\"h2\"", "\"forged\"")).unwrap();
    let report = read::verify(tmp.path(), "UAE-SA").unwrap();
    let broken = report.broken.expect("an edit is detected");
    assert_eq!((broken.seq, broken.line), (4, 4), "{broken:?}");
    assert!(broken.reason.contains("hash of record 3"), "{}", broken.reason);
    assert_eq!(report.records, 3);

    // Delete record 2: record 3 sits where 2 was due.
    let kept: Vec<&str> = original
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&file, kept.join("\n") + "\n").unwrap();
    let broken = read::verify(tmp.path(), "UAE-SA")
        .unwrap()
        .broken
        .expect("a deletion is detected");
    assert_eq!(broken.seq, 2);
    assert!(
        broken.reason.contains("sequence number 3 where 2 was due"),
        "{}",
        broken.reason
    );

    // Restored, it verifies again.
    std::fs::write(&file, &original).unwrap();
    assert!(read::verify(tmp.path(), "UAE-SA").unwrap().ok());
}

#[test]
fn a_torn_tail_is_cut_off_and_the_chain_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let trail = Trail::open(settings(tmp.path(), Mode::Buffered, 1 << 20)).unwrap();
        for i in 0..3 {
            trail.append_synced("UAE-SA", "inference", &json!({"i": i})).unwrap();
        }
    }
    let file = segment_files(tmp.path(), "UAE-SA").remove(0);
    // A crash in the middle of a write leaves half a line.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(br#"{"seq":4,"prev":"ab"#);
    std::fs::write(&file, &bytes).unwrap();
    let report = read::verify(tmp.path(), "UAE-SA").unwrap();
    assert!(report.ok() && report.torn_tail && report.records == 3, "{report:?}");

    let trail = Trail::open(settings(tmp.path(), Mode::Buffered, 1 << 20)).unwrap();
    trail.append_synced("UAE-SA", "inference", &json!({"i": 3})).unwrap();
    drop(trail);
    let report = read::verify(tmp.path(), "UAE-SA").unwrap();
    assert!(report.ok() && !report.torn_tail, "{report:?}");
    assert_eq!(report.records, 4);
    assert_eq!(all(tmp.path(), "UAE-SA")[3]["i"], 3);
}

#[test]
fn two_writers_on_one_directory_keep_one_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Trail::open(settings(tmp.path(), Mode::Buffered, 4096)).unwrap();
    let b = Trail::open(settings(tmp.path(), Mode::Buffered, 4096)).unwrap();
    std::thread::scope(|s| {
        for (name, trail) in [("a", &a), ("b", &b)] {
            s.spawn(move || {
                for i in 0..100 {
                    trail
                        .append_synced("UAE-SA", "governance", &json!({"writer": name, "i": i}))
                        .unwrap();
                }
            });
        }
    });
    drop((a, b));
    let report = read::verify(tmp.path(), "UAE-SA").unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.records, 200);
    assert!(segment_files(tmp.path(), "UAE-SA").len() > 1, "small segments rotate");
}

#[test]
fn segments_rotate_and_a_missing_one_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let trail = Trail::open(settings(tmp.path(), Mode::Buffered, 1024)).unwrap();
        for i in 0..60 {
            let _ = trail.append(
                "US-EG",
                "inference",
                &json!({"model": if i % 3 == 0 { "a" } else { "b" }, "i": i}),
            );
        }
    }
    let files = segment_files(tmp.path(), "US-EG");
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() <= 1024);
    }
    let report = read::verify(tmp.path(), "US-EG").unwrap();
    assert!(report.ok() && report.records == 60, "{report:?}");
    let model_a = {
        let mut n = 0;
        let filter = Filter {
            model: Some("a".into()),
            ..Filter::default()
        };
        read::read(tmp.path(), "US-EG", &filter, |_| {
            n += 1;
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        n
    };
    assert_eq!(model_a, 20);

    std::fs::remove_file(&files[1]).unwrap();
    let broken = read::verify(tmp.path(), "US-EG")
        .unwrap()
        .broken
        .expect("a missing segment is detected");
    assert!(broken.reason.contains("segment starts at record"), "{}", broken.reason);
}

#[test]
fn since_accepts_times_and_durations() {
    assert_eq!(
        read::parse_since("2026-12-01T10:00:00Z").unwrap(),
        "2026-12-01T10:00:00.000Z"
    );
    let recent = read::parse_since("15m").unwrap();
    assert!(recent > invariant_audit::read::parse_since("2h").unwrap());
    assert!(read::parse_since("yesterday-ish").unwrap_err().contains("RFC 3339"));
}

#[test]
fn bad_chain_names_and_fields_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = Trail::open(settings(tmp.path(), Mode::Buffered, 1 << 20)).unwrap();
    assert!(trail.append_synced("../etc", "x", &json!({})).is_err());
    assert!(trail.append_synced("UAE-SA", "x", &json!([1, 2])).is_err());
    trail.append_synced("UAE-SA", "bare", &json!({})).unwrap();
    drop(trail);
    assert_eq!(all(tmp.path(), "UAE-SA")[0]["event"], "bare");
}

#[test]
fn a_busy_buffered_trail_writes_each_tick_and_synced_records_do_not_wait_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(tmp.path(), Mode::Buffered, 1 << 24);
    // A tick (half the flush window) of a second: long enough to tell "at once" from "at the
    // next tick" on a loaded machine.
    s.flush_ms = 2000;
    let trail = std::sync::Arc::new(Trail::open(s).unwrap());
    // A producer that keeps the queue busy (about 20 000 appends a second).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (trail, stop) = (trail.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let commit = trail.append("UAE-SA", "inference", &json!({ "i": n }));
                assert!(!commit.is_pending(), "buffered appends resolve at once");
                n += 1;
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    // A record someone waits for is written and synced at once (with everything queued before
    // it), not at the next tick.
    let asked = std::time::Instant::now();
    trail.append_synced("UAE-SA", "admin", &json!({ "what": "x" })).unwrap();
    assert!(
        asked.elapsed() < std::time::Duration::from_millis(600),
        "a synced record waited {:?} for a buffered tick",
        asked.elapsed()
    );
    let first = all(tmp.path(), "UAE-SA");
    assert!(
        first.len() > 1,
        "the records queued before the synced one are written with it"
    );
    assert!(first.iter().any(|r| r["event"] == "admin"));
    // While appends go on, each tick writes what came since.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let later = all(tmp.path(), "UAE-SA").len();
    assert!(
        later > first.len(),
        "no records written in a tick while the producer kept the queue busy"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = producer.join().unwrap();
    trail.close();
    let records = all(tmp.path(), "UAE-SA");
    assert_eq!(
        records.len() as u64,
        appended + 1,
        "every acknowledged record is written on close"
    );
    let report = read::verify(tmp.path(), "UAE-SA").unwrap();
    assert!(report.ok(), "{report:?}");
}
