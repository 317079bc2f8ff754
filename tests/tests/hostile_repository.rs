//! A hostile model repository: manifest numbers past their limits, artifacts, manifests and
//! golden files that are FIFOs, links to `/dev/zero` or links leading out of the repository.
//! Each refuses only its own version, with a reason, while every other version serves: at
//! start-up, on hot load, and in `invariant gate` and `invariant models verify`, which name
//! each refused version and exit 1. Nothing may hang or abort.
//!
//! The test never opens a FIFO itself (that would block it): it only creates them.

use invariant_blackbox::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The shipped versions: every one must stay ready and serving.
const SHIPPED: [(&str, &str); 6] = [
    ("price-advisor", "1.0.0"),
    ("price-advisor", "1.0.1"),
    ("risk-assessor", "1.0.0"),
    ("risk-assessor", "1.1.0"),
    ("trust-scorer", "1.1.0"),
    ("trust-scorer", "1.2.0"),
];

/// A version whose artifact is a symbolic link to a file inside the repository: allowed.
const INSIDE_LINK: (&str, &str) = ("trust-scorer", "9.0.9");

/// How long one HTTP call or CLI run may take before it counts as a hang.
const PATIENCE: Duration = Duration::from_secs(20);

/// A hostile version and the fragment its refusal must contain.
struct Hostile {
    model: &'static str,
    version: &'static str,
    reason: String,
}

fn hostile(model: &'static str, version: &'static str, reason: impl Into<String>) -> Hostile {
    Hostile {
        model,
        version,
        reason: reason.into(),
    }
}

/// A one-row request that model scores.
fn request(model: &str) -> Value {
    match model {
        "trust-scorer" => trust_request(&[TRUST_ROW]),
        "risk-assessor" => features_request(&[&[249.99, 1.8, 35.0, 6.0, 2.0, 1.0, 3.0, 2.0, 0.35, 3.0]]),
        "price-advisor" => features_request(&[&[1200.0, 400.0, 3.0, 18.0, 0.0, 2.5]]),
        other => panic!("no request for {other}"),
    }
}

/// Copies version `from` of `model` to a new version `to` that loads and verifies as `from`
/// does: the manifest names `to`, and `from`'s golden files (the first one and those of each
/// CPU class) are copied with their header naming `to`. Returns the new version directory.
fn add_version(repo: &RepoCopy, model: &str, from: &str, to: &str) -> PathBuf {
    let dir = repo.version_dir(model, to);
    copy_tree(&repo.version_dir(model, from), &dir);
    let manifest = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let (old, new) = (format!("\nversion = \"{from}\"\n"), format!("\nversion = \"{to}\"\n"));
    assert!(text.contains(&old), "{}", manifest.display());
    std::fs::write(&manifest, text.replacen(&old, &new, 1)).unwrap();

    let golden = repo.golden().join(model);
    let mut copied = 0;
    for entry in std::fs::read_dir(&golden).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(from) else { continue };
        if rest != ".jsonl" && !(rest.starts_with('@') && rest.ends_with(".jsonl")) {
            continue;
        }
        let text = std::fs::read_to_string(golden.join(&name)).unwrap();
        let (header, vectors) = text.split_once('\n').unwrap();
        let (old, new) = (format!("\"version\":\"{from}\""), format!("\"version\":\"{to}\""));
        assert!(header.contains(&old), "{name}: {header}");
        std::fs::write(
            golden.join(format!("{to}{rest}")),
            format!("{}\n{vectors}", header.replacen(&old, &new, 1)),
        )
        .unwrap();
        copied += 1;
    }
    assert!(copied > 0, "no golden file of {model} {from}");
    dir
}

/// Sets `key = value` in a manifest whose only line starting with `key = ` is rewritten.
fn set_manifest_key(dir: &Path, key: &str, value: &str) {
    let manifest = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let prefix = format!("{key} = ");
    assert_eq!(text.lines().filter(|l| l.starts_with(&prefix)).count(), 1, "{key}");
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                format!("{prefix}{value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&manifest, out.join("\n") + "\n").unwrap();
}

/// Replaces `path` by a FIFO (made by mkfifo(1); never opened here).
fn make_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo(1)");
    assert!(status.success(), "mkfifo {}", path.display());
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
}

/// Replaces `path` by a symbolic link to `target`.
fn make_link(target: &Path, path: &Path) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// The golden file of a version.
fn golden_file(repo: &RepoCopy, model: &str, version: &str) -> PathBuf {
    repo.golden().join(model).join(format!("{version}.jsonl"))
}

const FIFO: &str = "is refused: not a regular file (it is a FIFO)";

/// A copy of the shipped repository with one hostile version per case (each otherwise a
/// faithful copy of a shipped version, so only the protection refuses it) and one version
/// whose artifact links inside the repository (which must load).
fn hostile_repo() -> (RepoCopy, Vec<Hostile>) {
    let repo = RepoCopy::new();
    let mut cases = Vec::new();

    let dir = add_version(&repo, "trust-scorer", "1.2.0", "9.0.1");
    set_manifest_key(&dir, "max_batch_size", "1000000000");
    cases.push(hostile(
        "trust-scorer",
        "9.0.1",
        "inference.max_batch_size = 1000000000 exceeds the limit of 4096",
    ));

    // ONNX Runtime builds one session per thread.
    let dir = add_version(&repo, "price-advisor", "1.0.0", "9.0.2");
    set_manifest_key(&dir, "threads", "1000000");
    cases.push(hostile(
        "price-advisor",
        "9.0.2",
        "inference.threads = 1000000 exceeds the limit of 64",
    ));

    let dir = add_version(&repo, "trust-scorer", "1.2.0", "9.0.3");
    make_fifo(&dir.join("model.safetensors"));
    cases.push(hostile(
        "trust-scorer",
        "9.0.3",
        format!("9.0.3/model.safetensors {FIFO}"),
    ));

    let dir = add_version(&repo, "risk-assessor", "1.1.0", "9.0.4");
    make_link(Path::new("/dev/zero"), &dir.join("model.onnx"));
    cases.push(hostile(
        "risk-assessor",
        "9.0.4",
        "9.0.4/model.onnx is refused: resolves to /dev/zero, outside",
    ));

    // The very bytes the manifest names, but outside the repository: only the link check
    // can refuse it.
    let outside = repo.models().parent().unwrap().join("outside.safetensors");
    std::fs::copy(
        repo.version_dir("trust-scorer", "1.2.0").join("model.safetensors"),
        &outside,
    )
    .unwrap();
    let outside = std::fs::canonicalize(outside).unwrap();
    let dir = add_version(&repo, "trust-scorer", "1.2.0", "9.0.5");
    make_link(&outside, &dir.join("model.safetensors"));
    cases.push(hostile(
        "trust-scorer",
        "9.0.5",
        format!(
            "9.0.5/model.safetensors is refused: resolves to {}, outside",
            outside.display()
        ),
    ));

    let dir = add_version(&repo, "trust-scorer", "1.2.0", "9.0.6");
    make_fifo(&dir.join("manifest.toml"));
    cases.push(hostile("trust-scorer", "9.0.6", format!("9.0.6/manifest.toml {FIFO}")));

    add_version(&repo, "trust-scorer", "1.2.0", "9.0.7");
    make_fifo(&golden_file(&repo, "trust-scorer", "9.0.7"));
    cases.push(hostile(
        "trust-scorer",
        "9.0.7",
        "trust-scorer/9.0.7.jsonl are refused: not a regular file (it is a FIFO)",
    ));

    add_version(&repo, "trust-scorer", "1.2.0", "9.0.8");
    make_link(Path::new("/dev/zero"), &golden_file(&repo, "trust-scorer", "9.0.8"));
    cases.push(hostile(
        "trust-scorer",
        "9.0.8",
        "trust-scorer/9.0.8.jsonl are refused: not a regular file (it is a character device)",
    ));

    let (model, version) = INSIDE_LINK;
    let dir = add_version(&repo, model, "1.2.0", version);
    make_link(Path::new("../1.2.0/model.safetensors"), &dir.join("model.safetensors"));
    (repo, cases)
}

/// Every version that must serve: the shipped ones and the one linking inside.
fn serving_versions() -> Vec<(&'static str, &'static str)> {
    let mut all = SHIPPED.to_vec();
    all.push(INSIDE_LINK);
    all
}

/// Awaits `f`, failing the test when it takes longer than [`PATIENCE`] (a hang).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {PATIENCE:?}: the server hangs"))
}

/// Asserts a hostile version is refused everywhere a client can see it: not ready with the
/// reason, no inference, and UNAVAILABLE with the reason in `index`.
async fn assert_refused(s: &Server, h: &Hostile, index: &[Value]) {
    let (model, version) = (h.model, h.version);
    let what = format!("{model} {version}");
    let got = within("ready", s.get(&format!("/v2/models/{model}/versions/{version}/ready"))).await;
    assert_eq!(got.1["ready"], false, "{what}: {}", got.1);
    assert_error(&got, 503, &[&h.reason]);
    let got = within(
        "infer",
        s.post(&format!("/v2/models/{model}/versions/{version}/infer"), &request(model)),
    )
    .await;
    assert_error(&got, 503, &[&h.reason]);
    let row = index
        .iter()
        .find(|r| r["name"] == model && r["version"] == version)
        .unwrap_or_else(|| panic!("{what} is not in the repository index: {index:?}"));
    assert_eq!(row["state"], "UNAVAILABLE", "{what}: {row}");
    let reason = row["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&h.reason),
        "{what}: index reason {reason:?} lacks {:?}",
        h.reason
    );
}

/// Asserts a version is ready, READY in `index`, and scores a request; returns the answer.
async fn assert_serves(s: &Server, model: &str, version: &str, index: &[Value]) -> Value {
    let got = within("ready", s.get(&format!("/v2/models/{model}/versions/{version}/ready"))).await;
    assert_eq!(got.0, 200, "{model} {version} is not ready: {}\n{}", got.1, s.log());
    let row = index
        .iter()
        .find(|r| r["name"] == model && r["version"] == version)
        .unwrap_or_else(|| panic!("{model} {version} is not in the index: {index:?}"));
    assert_eq!(row["state"], "READY", "{row}");
    let (status, r) = within(
        "infer",
        s.post(&format!("/v2/models/{model}/versions/{version}/infer"), &request(model)),
    )
    .await;
    assert_eq!(status, 200, "{model} {version} does not serve: {r}");
    assert_eq!(r["model_version"], version, "{r}");
    r
}

async fn index(s: &Server) -> Vec<Value> {
    let (status, index) = within("repository index", s.post("/v2/repository/index", &json!({}))).await;
    assert_eq!(status, 200, "{index}");
    index.as_array().expect("index is an array").clone()
}

/// The bits of the first output of an answer.
fn bits(answer: &Value) -> Vec<u32> {
    f32_bits(&answer["outputs"][0])
}

#[tokio::test]
async fn each_hostile_version_is_refused_alone_at_start_up() {
    let (repo, cases) = hostile_repo();
    let started = Instant::now();
    let s = Server::start_with(repo.options()).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "start-up took {:?}",
        started.elapsed()
    );
    assert_eq!(s.get("/v2/health/live").await.0, 200);

    let index = index(&s).await;
    for h in &cases {
        assert_refused(&s, h, &index).await;
    }
    let mut answers = Vec::new();
    for (model, version) in serving_versions() {
        answers.push(assert_serves(&s, model, version, &index).await);
    }
    assert_eq!(
        index.len(),
        serving_versions().len() + cases.len(),
        "one row per version: {index:?}"
    );
    let (_, health) = s.get("/v2/health/ready").await;
    assert_eq!(health["versions_ready"], serving_versions().len(), "{health}");
    assert_eq!(health["versions_failed"], cases.len(), "{health}");

    // The version linking inside the repository runs 1.2.0's weights.
    let v12 = SHIPPED.iter().position(|v| *v == ("trust-scorer", "1.2.0")).unwrap();
    assert_eq!(bits(&answers[SHIPPED.len()]), bits(&answers[v12]));

    // Unversioned requests are answered by a version that serves, never a refused one.
    for model in ["trust-scorer", "risk-assessor", "price-advisor"] {
        let (status, r) = s.post(&format!("/v2/models/{model}/infer"), &request(model)).await;
        assert_eq!(status, 200, "{model}: {r}");
        let version = r["model_version"].as_str().unwrap();
        assert!(
            serving_versions().contains(&(model, version)),
            "{model} answered from {version}"
        );
    }
    s.assert_still_serving().await;
    assert!(s.log().contains("model version refused"), "refusals are logged");
}

#[tokio::test]
async fn hostile_versions_added_at_run_time_fail_their_load_and_the_rest_serve() {
    let repo = RepoCopy::new();
    let s = Server::start_with(repo.options()).await;
    let before = assert_serves(&s, "trust-scorer", "1.2.0", &index(&s).await).await;

    // New hostile versions of two models, and the serving trust-scorer 1.2.0's weights
    // swapped for a link out of the repository (after the copies of 1.2.0: copying that link
    // would read /dev/zero).
    let dir = add_version(&repo, "trust-scorer", "1.2.0", "9.1.0");
    make_fifo(&dir.join("model.safetensors"));
    let dir = add_version(&repo, "trust-scorer", "1.2.0", "9.1.1");
    set_manifest_key(&dir, "max_batch_size", "1000000000");
    add_version(&repo, "trust-scorer", "1.2.0", "9.1.2");
    make_fifo(&golden_file(&repo, "trust-scorer", "9.1.2"));
    make_link(
        Path::new("/dev/zero"),
        &repo.version_dir("trust-scorer", "1.2.0").join("model.safetensors"),
    );
    let dir = add_version(&repo, "price-advisor", "1.0.0", "9.1.3");
    set_manifest_key(&dir, "threads", "1000000");
    let dir = add_version(&repo, "price-advisor", "1.0.1", "9.1.4");
    make_fifo(&dir.join("manifest.toml"));
    let new = [
        hostile("trust-scorer", "9.1.0", format!("9.1.0/model.safetensors {FIFO}")),
        hostile(
            "trust-scorer",
            "9.1.1",
            "inference.max_batch_size = 1000000000 exceeds the limit of 4096",
        ),
        hostile(
            "trust-scorer",
            "9.1.2",
            "trust-scorer/9.1.2.jsonl are refused: not a regular file (it is a FIFO)",
        ),
        hostile(
            "price-advisor",
            "9.1.3",
            "inference.threads = 1000000 exceeds the limit of 64",
        ),
        hostile("price-advisor", "9.1.4", format!("9.1.4/manifest.toml {FIFO}")),
    ];
    let swapped = "1.2.0/model.safetensors is refused: resolves to /dev/zero, outside";

    for model in ["trust-scorer", "price-advisor"] {
        let started = Instant::now();
        let (status, r) = within(
            "load",
            s.post(&format!("/v2/repository/models/{model}/load"), &json!({})),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "load took {:?}",
            started.elapsed()
        );
        assert_eq!(status, 400, "{model}: {r}");
        let outcomes = r["versions"].as_array().unwrap_or_else(|| panic!("{r}"));
        let outcome = |version: &str| {
            outcomes
                .iter()
                .find(|o| o["version"] == version)
                .unwrap_or_else(|| panic!("no outcome for {model} {version}: {r}"))
        };
        for h in new.iter().filter(|h| h.model == model) {
            let o = outcome(h.version);
            assert_eq!(o["state"], "FAILED", "{o}");
            let error = o["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(&h.reason),
                "{model} {}: {error:?} lacks {:?}",
                h.version,
                h.reason
            );
            let summary = r["error"].as_str().unwrap_or_default();
            assert!(summary.contains(&format!("{}: ", h.version)), "{summary}");
        }
        for (m, version) in SHIPPED.iter().filter(|(m, _)| *m == model) {
            let o = outcome(version);
            if (*m, *version) == ("trust-scorer", "1.2.0") {
                assert_eq!(o["state"], "FAILED", "{o}");
                assert!(o["error"].as_str().unwrap_or_default().contains(swapped), "{o}");
            } else {
                assert_eq!(o["state"], "UNCHANGED", "{o}");
            }
        }
        assert_eq!(
            outcomes.len(),
            2 + new.iter().filter(|h| h.model == model).count(),
            "{r}"
        );
    }

    assert_eq!(s.get("/v2/health/live").await.0, 200, "the process survived the loads");
    let index = index(&s).await;
    for h in &new {
        assert_refused(&s, h, &index).await;
    }
    // Every shipped version still serves; 1.2.0 on its old instance, with its old bits.
    for (model, version) in SHIPPED {
        let answer = assert_serves(&s, model, version, &index).await;
        if (model, version) == ("trust-scorer", "1.2.0") {
            assert_eq!(bits(&answer), bits(&before), "1.2.0 serves its verified weights");
        }
    }
    // A model left alone still loads.
    let (status, r) = within("load", s.post("/v2/repository/models/risk-assessor/load", &json!({}))).await;
    assert_eq!(status, 200, "{r}");
    s.assert_still_serving().await;
}

/// Runs the `invariant` binary in the workspace root, failing the test when it runs past
/// [`PATIENCE`] (a hang) or dies of a signal (an abort: exit 134 in a shell); returns the exit
/// code, stdout and stderr.
fn invariant_within(args: &[String]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(workspace_root())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn invariant");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "invariant {args:?} ran past {PATIENCE:?} (a hang); stdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    );
    let code = status.code().unwrap_or_else(|| {
        panic!(
            "invariant {args:?} died of signal {:?} (6 is an abort, exit 134); stderr:\n{err}",
            std::os::unix::process::ExitStatusExt::signal(&status)
        )
    });
    (code, out, err)
}

fn cli(command: &[&str], repo: &RepoCopy) -> (i32, String, String) {
    let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    args.extend(repo.args());
    invariant_within(&args)
}

#[test]
fn gate_and_models_verify_name_each_hostile_version_and_exit_1() {
    let (repo, cases) = hostile_repo();

    let (code, out, err) = cli(&["gate", "--json"], &repo);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("determinism gate failed: {} version(s)", cases.len())),
        "{err}"
    );
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["passed"], false);
    let versions = report["versions"].as_array().unwrap();
    let find = |model: &str, version: &str| {
        versions
            .iter()
            .find(|v| v["model"] == model && v["version"] == version)
            .unwrap_or_else(|| panic!("the gate does not report {model} {version}: {out}"))
    };
    for h in &cases {
        let v = find(h.model, h.version);
        assert_eq!(v["passed"], false, "{v}");
        let named = v["violations"].as_array().unwrap().iter().any(|x| {
            x["model"] == h.model
                && x["version"] == h.version
                && x["detail"].as_str().is_some_and(|d| d.contains(&h.reason))
        });
        assert!(
            named,
            "{} {}: no violation naming {:?}: {v}",
            h.model, h.version, h.reason
        );
    }
    for (model, version) in serving_versions() {
        assert_eq!(find(model, version)["passed"], true, "{model} {version}: {out}");
    }
    assert_eq!(versions.len(), serving_versions().len() + cases.len(), "{out}");

    // The text report names each version too.
    let (code, out, err) = cli(&["gate"], &repo);
    assert_eq!(code, 1, "{out}{err}");
    for h in &cases {
        assert!(out.contains(&format!("FAIL {} {} ", h.model, h.version)), "{out}");
    }
    for (model, version) in serving_versions() {
        assert!(out.contains(&format!("PASS {model} {version} ")), "{out}");
    }

    let (code, out, err) = cli(&["models", "verify", "--json"], &repo);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("{} model version(s) failed verification", cases.len())),
        "{err}"
    );
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let rows = rows.as_array().unwrap();
    let find = |model: &str, version: &str| {
        rows.iter()
            .find(|r| r["model"] == model && r["version"] == version)
            .unwrap_or_else(|| panic!("models verify does not list {model} {version}: {out}"))
    };
    for h in &cases {
        let r = find(h.model, h.version);
        assert_eq!(r["state"], "FAILED", "{r}");
        assert!(r["error"].as_str().is_some_and(|e| e.contains(&h.reason)), "{r}");
    }
    for (model, version) in serving_versions() {
        assert_eq!(find(model, version)["state"], "READY", "{model} {version}: {out}");
    }
    assert_eq!(rows.len(), serving_versions().len() + cases.len(), "{out}");

    let (code, out, err) = cli(&["models", "verify"], &repo);
    assert_eq!(code, 1, "{out}{err}");
    for h in &cases {
        let line = out
            .lines()
            .find(|l| l.starts_with(h.model) && l.split_whitespace().nth(1) == Some(h.version))
            .unwrap_or_else(|| panic!("models verify does not name {} {}: {out}", h.model, h.version));
        assert!(line.contains("FAILED") && line.contains(&h.reason), "{line}");
    }
}
