//! A model repository and golden vectors on object storage (moto's S3-compatible server):
//! loaded, hot-reloaded after an upload, fetched again only when objects change, and a
//! tampered object refused while the rest serves.

use invariant_blackbox::*;
use serde_json::Value;
use std::path::PathBuf;

const BUCKET: &str = "invariant-models";

/// A server on `s3://BUCKET/repo` and `s3://BUCKET/golden` at `endpoint`, its cache in `state`.
fn options(endpoint: &str, state: &std::path::Path) -> ServerOptions {
    ServerOptions {
        model_repository: PathBuf::from(format!("s3://{BUCKET}/repo")),
        golden_vectors: PathBuf::from(format!("s3://{BUCKET}/golden")),
        state_dir: Some(state.to_path_buf()),
        extra: format!("[object_store]\nendpoint = \"{endpoint}\"\nallow_http = true\n"),
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ],
        ..Default::default()
    }
}

async fn fetched(s: &Server) -> f64 {
    counter(s, "invariant_object_store_fetched_objects_total", &[]).await
}

async fn version_state(s: &Server, model: &str, version: &str) -> (String, String) {
    let (_, index) = s.post("/v2/repository/index", &serde_json::json!({})).await;
    let row = index
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == model && r["version"] == version)
        .cloned()
        .unwrap_or(Value::Null);
    (
        row["state"].as_str().unwrap_or("ABSENT").to_string(),
        row["reason"].as_str().unwrap_or("").to_string(),
    )
}

async fn reload(s: &Server, model: &str) {
    let (status, r) = s
        .post(&format!("/v2/repository/models/{model}/load"), &serde_json::json!({}))
        .await;
    assert!(status == 200 || status == 400, "{status} {r}");
}

/// A new version `to` of trust-scorer made of `from`'s files (its weights optionally
/// altered), with `from`'s golden vectors when they still apply.
async fn upload_version(s3: &S3Server, from: &str, to: &str, weights: Vec<u8>, golden: bool) {
    let dir = shipped_models().join("trust-scorer").join(from);
    let manifest = std::fs::read_to_string(dir.join("manifest.toml")).unwrap().replacen(
        &format!("version = \"{from}\""),
        &format!("version = \"{to}\""),
        1,
    );
    s3.put(BUCKET, &format!("repo/trust-scorer/{to}/model.safetensors"), weights)
        .await;
    s3.put(
        BUCKET,
        &format!("repo/trust-scorer/{to}/manifest.toml"),
        manifest.into_bytes(),
    )
    .await;
    if golden {
        let text = std::fs::read_to_string(shipped_golden().join(format!("trust-scorer/{from}.jsonl"))).unwrap();
        let text = text.replacen(&format!("\"version\":\"{from}\""), &format!("\"version\":\"{to}\""), 1);
        s3.put(BUCKET, &format!("golden/trust-scorer/{to}.jsonl"), text.into_bytes())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_on_object_storage_loads_reloads_after_an_upload_and_refuses_a_tampered_object() {
    let s3 = S3Server::start().await;
    let s3_endpoint = s3.endpoint.clone();
    s3.create_bucket(BUCKET).await;
    let models = s3.put_tree(BUCKET, "repo", &shipped_models()).await;
    let golden = s3.put_tree(BUCKET, "golden", &shipped_golden()).await;
    let state = tempfile::tempdir().unwrap();
    let s = Server::start_with(options(&s3.endpoint, state.path())).await;

    // Everything was fetched once and serves, bit-exact against the golden vectors.
    assert_eq!(fetched(&s).await, (models + golden) as f64);
    assert_eq!(version_state(&s, "trust-scorer", "1.2.0").await.0, "READY");
    let (status, r) = s
        .post("/v2/models/trust-scorer/infer", &trust_request(&[TRUST_ROW]))
        .await;
    assert_eq!((status, r["model_version"].as_str()), (200, Some("1.2.0")), "{r}");
    let (_, ready) = s.get("/v2/health/ready").await;
    assert_eq!(ready["ready"], true, "{ready}");

    // A reload with nothing changed fetches nothing.
    reload(&s, "trust-scorer").await;
    assert_eq!(fetched(&s).await, (models + golden) as f64);

    // Upload 1.3.0 (the same weights, its own manifest and golden vectors): a reload fetches
    // exactly those three objects and serves it.
    let weights = std::fs::read(shipped_models().join("trust-scorer/1.2.0/model.safetensors")).unwrap();
    upload_version(&s3, "1.2.0", "1.3.0", weights.clone(), true).await;
    reload(&s, "trust-scorer").await;
    assert_eq!(fetched(&s).await, (models + golden + 3) as f64);
    assert_eq!(version_state(&s, "trust-scorer", "1.3.0").await.0, "READY");
    let (status, r) = s
        .post(
            "/v2/models/trust-scorer/versions/1.3.0/infer",
            &trust_request(&[TRUST_ROW]),
        )
        .await;
    assert_eq!(status, 200, "{r}");

    // 1.4.0's weights differ from what its manifest hashes: refused before parsing, and the
    // other versions keep serving.
    let mut tampered = weights.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    upload_version(&s3, "1.2.0", "1.4.0", tampered, true).await;
    reload(&s, "trust-scorer").await;
    let (lifecycle, reason) = version_state(&s, "trust-scorer", "1.4.0").await;
    assert_eq!(lifecycle, "UNAVAILABLE", "{reason}");
    assert!(
        reason.contains("model.safetensors") && reason.contains("sha256"),
        "{reason}"
    );
    let (status, r) = s
        .post("/v2/models/trust-scorer/infer", &trust_request(&[TRUST_ROW]))
        .await;
    assert_eq!(status, 200, "{r}");
    s.assert_still_serving().await;

    // Fixed in the bucket: the changed object is fetched again and the version serves.
    s3.put(BUCKET, "repo/trust-scorer/1.4.0/model.safetensors", weights)
        .await;
    let before = fetched(&s).await;
    reload(&s, "trust-scorer").await;
    assert_eq!(fetched(&s).await, before + 1.0, "only the changed object is fetched");
    assert_eq!(version_state(&s, "trust-scorer", "1.4.0").await.0, "READY");

    // Removed from the bucket: gone after the next reload.
    s3.delete(BUCKET, "repo/trust-scorer/1.4.0/model.safetensors").await;
    s3.delete(BUCKET, "repo/trust-scorer/1.4.0/manifest.toml").await;
    reload(&s, "trust-scorer").await;
    assert_eq!(version_state(&s, "trust-scorer", "1.4.0").await.0, "ABSENT");

    // A restart on the same cache fetches nothing that did not change.
    drop(s);
    let s = Server::start_with(options(&s3.endpoint, state.path())).await;
    assert_eq!(version_state(&s, "trust-scorer", "1.3.0").await.0, "READY");
    assert_eq!(fetched(&s).await, 0.0);
    // With the store gone, the restart serves the verified copy it has.
    drop(s);
    drop(s3);
    let s = Server::start_with(options(&s3_endpoint, state.path())).await;
    assert_eq!(version_state(&s, "trust-scorer", "1.3.0").await.0, "READY");
    assert!(s.log().contains("serving the local copy"), "{}", s.log());
}

#[tokio::test]
async fn an_unreachable_store_with_no_local_copy_refuses_to_start_with_the_reason() {
    let state = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let Err(log) = Server::try_start(options(&endpoint, state.path())).await else {
        panic!("a server started with no reachable repository and no copy of it");
    };
    assert!(log.contains(&format!("s3://{BUCKET}/repo")), "{log}");
    assert!(log.contains("no local copy"), "{log}");
}
