//! Deploy-time verification: a version whose outputs differ from its golden vectors never
//! serves, every verification is audited, and activating a failing version at run time
//! leaves the serving version answering every request.

use invariant_blackbox::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[tokio::test]
async fn a_version_failing_its_golden_vectors_never_serves_and_is_audited() {
    let repo = RepoCopy::new();
    let dir = repo.version_dir("trust-scorer", "1.2.0");
    bump_weight_one_ulp(&dir.join("model.safetensors"), "layers.2.weight", 0);
    rehash_manifest(&dir);
    let s = Server::start_with(repo.options()).await;

    let (status, r) = s.get("/v2/models/trust-scorer/versions/1.2.0/ready").await;
    assert_eq!(status, 503);
    let reason = r["error"].as_str().unwrap();
    assert!(
        reason.contains("verification failed") && reason.contains("[golden]"),
        "{reason}"
    );
    let (status, r) = s
        .post("/v2/models/trust-scorer/infer", &trust_request(&[TRUST_ROW]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(r["model_version"], "1.1.0", "the previous version keeps serving");

    let audit: Vec<_> = s.audit().into_iter().filter(|a| a["event"] == "verification").collect();
    assert_eq!(audit.len(), 6, "one record per version: {audit:?}");
    let failed = audit
        .iter()
        .find(|a| a["model"] == "trust-scorer" && a["version"] == "1.2.0")
        .unwrap();
    assert_eq!(failed["passed"], false);
    assert!(failed["reason"].as_str().unwrap().contains("[golden]"));
    for a in &audit {
        assert_eq!(a["chain"], "_server", "verifications belong to no corridor: {a}");
        assert_eq!(a["verification_hash"].as_str().map(str::len), Some(64), "{a}");
        assert_eq!(a["golden_hash"].as_str().map(str::len), Some(64), "{a}");
        assert!(a["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(a["engine"].is_string() && a["runtime_version"].is_string() && a["content_hash"].is_string());
    }
    assert_eq!(audit.iter().filter(|a| a["passed"] == true).count(), 5);
}

#[tokio::test]
async fn missing_golden_vectors_refuse_the_version() {
    let repo = RepoCopy::new();
    // Every golden file of 1.0.0: the first one and those recorded per CPU class.
    for entry in std::fs::read_dir(repo.golden().join("price-advisor")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap().starts_with("1.0.0") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let s = Server::start_with(repo.options()).await;
    let (status, r) = s.get("/v2/models/price-advisor/versions/1.0.0/ready").await;
    assert_eq!(status, 503);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("invariant golden record price-advisor 1.0.0"),
        "{r}"
    );
}

#[tokio::test]
async fn metadata_reports_the_verification() {
    let s = Server::start().await;
    let (_, m) = s.get("/v2/models/risk-assessor").await;
    assert_eq!(m["verification"]["golden_vectors"], 41);
    assert_eq!(m["verification"]["batch_invariant"], true);
    assert_eq!(m["verification"]["verification_hash"].as_str().map(str::len), Some(64));
    let (_, index) = s.post("/v2/repository/index", &json!({})).await;
    let rows = index.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["state"] == "READY"), "{index}");
}

/// Continuous load on the unversioned endpoint while versions are activated: every request
/// must succeed, and every answer must carry the bits of the version it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activating_a_failing_version_leaves_the_old_one_serving_under_load() {
    let repo = RepoCopy::new();
    let good_v12 = tempfile::tempdir().unwrap();
    copy_tree(&repo.version_dir("trust-scorer", "1.2.0"), good_v12.path());
    std::fs::remove_dir_all(repo.version_dir("trust-scorer", "1.2.0")).unwrap();
    let s = Arc::new(Server::start_with(repo.options()).await);

    let expected_bits = |version: &str| match version {
        "1.1.0" => 0x3f769b4e_u32,
        "1.2.0" => 0x3f537c58,
        other => panic!("unexpected version {other}"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (s, stop) = (s.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, r) = s
                    .post("/v2/models/trust-scorer/infer", &trust_request(&[TRUST_ROW]))
                    .await;
                assert_eq!(status, 200, "a request failed during activation: {r}");
                let version = r["model_version"].as_str().unwrap().to_string();
                assert_eq!(
                    f32_bits(output(&r, "trust_score")),
                    [expected_bits(&version)],
                    "{version}"
                );
                seen.push(version);
            }
            seen
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // A broken 1.2.0: weights moved by one ULP, hashes updated, golden vectors unchanged.
    let target = repo.version_dir("trust-scorer", "1.2.0");
    copy_tree(good_v12.path(), &target);
    bump_weight_one_ulp(&target.join("model.safetensors"), "layers.2.weight", 0);
    rehash_manifest(&target);
    let (status, r) = s.post("/v2/repository/models/trust-scorer/load", &json!({})).await;
    assert_eq!(status, 400, "{r}");
    let v12 = r["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "1.2.0")
        .unwrap();
    assert_eq!(v12["state"], "FAILED");
    assert!(v12["error"].as_str().unwrap().contains("[golden]"), "{v12}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, meta) = s.get("/v2/models/trust-scorer").await;
    assert_eq!(meta["version"], "1.1.0", "the failed version does not serve");

    // The real 1.2.0 verifies and takes over.
    std::fs::remove_dir_all(&target).unwrap();
    copy_tree(good_v12.path(), &target);
    let (status, r) = s.post("/v2/repository/models/trust-scorer/load", &json!({})).await;
    assert_eq!(status, 200, "{r}");
    let states: Vec<_> = r["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].clone(), v["state"].clone()))
        .collect();
    assert_eq!(
        states,
        vec![(json!("1.1.0"), json!("UNCHANGED")), (json!("1.2.0"), json!("READY"))]
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker panicked: a request failed"));
    }
    assert!(all.len() > 20, "load ran: {} requests", all.len());
    assert!(all.iter().any(|v| v == "1.1.0"));
    assert_eq!(
        all.last().map(String::as_str),
        Some("1.2.0"),
        "1.2.0 serves after activation"
    );
    let (status, _) = s.post("/v2/repository/models/nope/load", &json!({})).await;
    assert_eq!(status, 404);
}

/// The golden inputs of trust-scorer 1.2.0 as requests of at most 128 rows.
fn golden_batches(repo: &RepoCopy) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(repo.golden().join("trust-scorer/1.2.0.jsonl")).unwrap();
    let data: Vec<serde_json::Value> = text
        .lines()
        .skip(1)
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["inputs"][0]["data"].as_array().unwrap().clone()
        })
        .collect();
    data.chunks(8 * 128)
        .map(|c| json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [c.len() / 8, 8], "data": c}]}))
        .collect()
}

/// The trust scores of `requests`, in order.
async fn scores(s: &Server, path: &str, requests: &[serde_json::Value]) -> Vec<u32> {
    let mut bits = Vec::new();
    for r in requests {
        let (status, reply) = s.post(path, r).await;
        assert_eq!(status, 200, "{reply}");
        bits.extend(f32_bits(output(&reply, "trust_score")));
    }
    bits
}

#[tokio::test]
async fn a_version_reloaded_with_new_weights_is_batched_on_its_new_instance() {
    let repo = RepoCopy::new();
    let s = Server::start_with(repo.options()).await;
    let path = "/v2/models/trust-scorer/versions/1.2.0/infer";
    let (_, meta) = s.get("/v2/models/trust-scorer/versions/1.2.0").await;
    assert_eq!(meta["verification"]["rows_run"], "batched", "{meta}");
    let requests = golden_batches(&repo);
    let before = scores(&s, path, &requests).await;

    // New weights under the same version, with golden vectors recorded for them.
    let dir = repo.version_dir("trust-scorer", "1.2.0");
    bump_weight_one_ulp(&dir.join("model.safetensors"), "layers.2.weight", 0);
    rehash_manifest(&dir);
    let args = repo.args();
    let mut record: Vec<&str> = vec!["golden", "record", "trust-scorer", "1.2.0", "--force"];
    record.extend(args.iter().map(String::as_str));
    let (code, out, err) = invariant(&record);
    assert_eq!(code, 0, "{out}{err}");
    let (status, r) = s.post("/v2/repository/models/trust-scorer/load", &json!({})).await;
    assert_eq!(status, 200, "{r}");

    // What the new weights answer, from a server that never saw the old ones.
    let fresh = Server::start_with(repo.options()).await;
    let expected = scores(&fresh, path, &requests).await;
    assert_ne!(before, expected, "the new weights change some golden output");
    assert_eq!(
        scores(&s, path, &requests).await,
        expected,
        "answered by the reloaded instance"
    );
}
