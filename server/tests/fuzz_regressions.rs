//! Every input a fuzzer found (and the hostile inputs written by hand beside them), kept in
//! `fuzz/regressions/<target>/`, run through the same entry points the fuzz targets call
//! (`invariant_server::fuzz_entry`): each must come back, without a panic, within seconds.
//! The shipped manifests, golden files and feature definitions run through them too.

use std::path::{Path, PathBuf};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `target` on `input` on its own thread: a panic or a run past 10 s fails, naming `what`.
fn run(name: &str, target: fn(&[u8]), input: Vec<u8>, what: &Path) {
    let (done, wait) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        target(&input);
        let _ = done.send(());
    });
    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(Duration::from_secs(10)) {
        panic!("{name}: {} ran for more than 10 s", what.display());
    }
    assert!(handle.join().is_ok(), "{name} panicked on {}", what.display());
}

/// Files under `dir`, `depth` levels down, ending in `.ext`, sorted.
fn files(dir: &Path, depth: usize, ext: Option<&str>) -> Vec<PathBuf> {
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..depth {
        level = level
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
    }
    let mut out: Vec<PathBuf> = level
        .into_iter()
        .filter(|p| p.is_file() && ext.is_none_or(|x| p.extension().is_some_and(|e| e == x)))
        .collect();
    out.sort();
    out
}

#[test]
fn every_kept_fuzz_input_is_answered_without_a_panic() {
    for (name, target) in invariant_server::fuzz_entry::TARGETS {
        let dir = root().join("fuzz/regressions").join(name);
        let inputs = files(&dir, 1, None);
        assert!(!inputs.is_empty(), "{} holds no regression inputs", dir.display());
        for path in inputs {
            run(name, target, std::fs::read(&path).unwrap(), &path);
        }
    }
}

#[test]
fn the_shipped_files_go_through_their_parsers() {
    use invariant_server::fuzz_entry::{feature_definitions, golden_file, manifest};
    let shipped: [(invariant_server::fuzz_entry::Target, Vec<PathBuf>); 3] = [
        (("manifest", manifest), files(&root().join("models"), 3, Some("toml"))),
        (
            ("golden_file", golden_file),
            files(&root().join("golden-vectors"), 2, Some("jsonl")),
        ),
        (
            ("feature_definitions", feature_definitions),
            files(&root().join("features"), 1, Some("toml")),
        ),
    ];
    for ((name, target), paths) in shipped {
        assert!(!paths.is_empty(), "no shipped inputs for {name}");
        for p in paths {
            run(name, target, std::fs::read(&p).unwrap(), &p);
        }
    }
}
