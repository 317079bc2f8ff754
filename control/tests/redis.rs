//! The Redis backend against a real `redis-server` (started here on a free loopback port;
//! `scripts/test.sh` installs it, and a missing one fails loudly).

use invariant_control::redis_backend::RedisBackend;
use invariant_control::{Backend, Control, ControlError, Document, Stored, REGISTRY};
use serde::{Deserialize, Serialize};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Redis {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, url, _dir: dir }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Log {
    revision: u64,
    entries: Vec<String>,
}

impl Document for Log {
    const NAME: &'static str = REGISTRY;
    fn revision(&self) -> u64 {
        self.revision
    }
}

fn append(entry: String) -> impl FnMut(&Log) -> Result<(Log, ()), ControlError> {
    move |log: &Log| {
        let mut next = log.clone();
        next.revision += 1;
        next.entries.push(entry.clone());
        Ok((next, ()))
    }
}

#[test]
fn writers_on_separate_connections_lose_nothing_and_stale_swaps_conflict() {
    let redis = Redis::start();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let url = redis.url.clone();
            std::thread::spawn(move || {
                let control = Control::new(Arc::new(RedisBackend::open(&url, "test").unwrap()));
                for i in 0..25 {
                    control.update::<Log, _, _>(None, append(format!("{t}-{i}"))).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let backend = Arc::new(RedisBackend::open(&redis.url, "test").unwrap());
    assert_eq!(backend.durability(), "Redis appendonly yes, appendfsync always");
    let control = Control::new(backend.clone());
    let log: Log = control.load().unwrap();
    assert_eq!(log.revision, 100);
    let unique: std::collections::BTreeSet<&String> = log.entries.iter().collect();
    assert_eq!(unique.len(), 100, "every change exactly once");
    let stale = Stored {
        revision: 100,
        bytes: br#"{"revision": 100, "entries": []}"#.to_vec(),
    };
    let err = backend.swap(REGISTRY, 99, &stale).unwrap_err();
    assert!(
        matches!(
            err,
            ControlError::Conflict {
                expected: 99,
                current: 100,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(backend.revision(REGISTRY).unwrap(), 100);
    // Another prefix is another deployment.
    let other = RedisBackend::open(&redis.url, "elsewhere").unwrap();
    assert_eq!(other.revision(REGISTRY).unwrap(), 0);
    assert!(other.read(REGISTRY).unwrap().is_none());
}

#[test]
fn the_watcher_reports_notified_documents_and_polls() {
    let redis = Redis::start();
    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::open(&redis.url, "inv").unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
    let tx = std::sync::Mutex::new(tx);
    invariant_control::watch::spawn(
        backend.clone(),
        Duration::from_millis(300),
        Box::new(move |doc| tx.lock().unwrap().send(doc.map(str::to_string)).is_ok()),
    )
    .unwrap();
    // Subscribed: a full check first.
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), None);
    let control = Control::new(backend);
    control.update::<Log, _, _>(None, append("x".into())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = rx.recv_timeout(Duration::from_secs(2)).unwrap();
        if got.as_deref() == Some(REGISTRY) {
            break;
        }
        assert!(Instant::now() < deadline, "no notification for the registry");
    }
    // Without changes it still asks for a full check every period.
    let start = Instant::now();
    while rx.recv_timeout(Duration::from_secs(2)).unwrap().is_some() {}
    assert!(start.elapsed() < Duration::from_secs(1));
}
