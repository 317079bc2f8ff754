//! Hash-verified loading: a tampered, missing or unparsable artifact refuses that version
//! with a reason naming the file and hashes; every other version keeps loading and serving.

use invariant_blackbox::*;

fn repo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&shipped_models(), dir.path());
    dir
}

fn flip_one_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn manifest_hash(dir: &std::path::Path, key: &str) -> String {
    let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

#[tokio::test]
async fn a_flipped_byte_refuses_only_that_version() {
    let repo = repo_copy();
    let version_dir = repo.path().join("risk-assessor/1.1.0");
    let expected = manifest_hash(&version_dir, "sha256");
    let artifact = version_dir.join("model.onnx");
    flip_one_byte(&artifact);
    let actual = invariant_sha256(&artifact);
    assert_ne!(expected, actual);

    let s = Server::start_with(ServerOptions {
        model_repository: repo.path().to_path_buf(),
        ..Default::default()
    })
    .await;
    let (status, ready) = s.get("/v2/models/risk-assessor/versions/1.1.0/ready").await;
    assert_eq!(status, 503);
    assert_eq!(ready["ready"], false);
    let reason = ready["error"].as_str().unwrap();
    assert!(
        reason.contains("model.onnx") && reason.contains(&expected) && reason.contains(&actual),
        "{reason}"
    );

    let row: &[f64] = &[249.99, 1.8, 35.0, 6.0, 2.0, 1.0, 3.0, 2.0, 0.35, 3.0];
    let got = s
        .post(
            "/v2/models/risk-assessor/versions/1.1.0/infer",
            &features_request(&[row]),
        )
        .await;
    assert_error(&got, 503, &["failed to load", "model.onnx", "sha256 mismatch"]);

    // The model's other version now answers unversioned requests; everything else serves.
    let (status, r) = s
        .post("/v2/models/risk-assessor/infer", &features_request(&[row]))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model_version"], "1.0.0");
    let (_, meta) = s.get("/v2/models/risk-assessor").await;
    assert_eq!(meta["versions"], serde_json::json!(["1.0.0"]));
    assert_eq!(meta["failed_versions"][0]["version"], "1.1.0");
    let (_, health) = s.get("/v2/health/ready").await;
    assert_eq!(health["versions_ready"], 5);
    assert_eq!(health["versions_failed"], 1);
    s.assert_still_serving().await;
    assert!(s.log().contains("model version refused"), "the refusal is logged");
}

#[tokio::test]
async fn missing_artifact_and_bad_manifest_are_refused_with_reasons() {
    let repo = repo_copy();
    std::fs::remove_file(repo.path().join("trust-scorer/1.1.0/model.safetensors")).unwrap();
    std::fs::write(
        repo.path().join("price-advisor/1.0.0/manifest.toml"),
        "name = \"price-advisor\"\nversion = [",
    )
    .unwrap();
    let native = repo.path().join("trust-scorer/1.2.0/model.safetensors");
    flip_one_byte(&native);

    let s = Server::start_with(ServerOptions {
        model_repository: repo.path().to_path_buf(),
        ..Default::default()
    })
    .await;
    let (status, r) = s.get("/v2/models/trust-scorer/versions/1.1.0/ready").await;
    assert_eq!(status, 503);
    assert!(
        r["error"].as_str().unwrap().contains("model.safetensors is missing"),
        "{r}"
    );
    let (status, r) = s.get("/v2/models/trust-scorer/versions/1.2.0/ready").await;
    assert_eq!(status, 503);
    assert!(r["error"].as_str().unwrap().contains("sha256 mismatch"), "{r}");
    let (status, r) = s.get("/v2/models/price-advisor/versions/1.0.0/ready").await;
    assert_eq!(status, 503);
    assert!(r["error"].as_str().unwrap().contains("cannot parse manifest"), "{r}");
    // No version of trust-scorer loaded: unversioned requests say so.
    assert_error(
        &s.post("/v2/models/trust-scorer/infer", &trust_request(&[TRUST_ROW]))
            .await,
        503,
        &["no version"],
    );
    // Risk assessor is untouched and serves.
    let row: &[f64] = &[249.99, 1.8, 35.0, 6.0, 2.0, 1.0, 3.0, 2.0, 0.35, 3.0];
    assert_eq!(
        s.post("/v2/models/risk-assessor/infer", &features_request(&[row]))
            .await
            .0,
        200
    );
}

/// sha256 of a file, computed by the system's sha256sum (independent of the server's code).
fn invariant_sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
