//! Every V2 endpoint of `invariant serve`, over real HTTP.

use invariant_blackbox::*;
use serde_json::json;

#[tokio::test]
async fn health_and_server_metadata() {
    let s = Server::start().await;
    assert_eq!(s.get("/v2/health/live").await.0, 200);
    let (status, ready) = s.get("/v2/health/ready").await;
    assert_eq!(status, 200);
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["versions_ready"], 6);
    assert_eq!(ready["versions_failed"], 0);
    let (status, meta) = s.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "invariant");
    assert!(meta["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(meta["extensions"].is_array());
}

#[tokio::test]
async fn model_metadata_lists_versions_and_signatures() {
    let s = Server::start().await;
    let (status, m) = s.get("/v2/models/trust-scorer").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["name"], "trust-scorer");
    assert_eq!(m["versions"], json!(["1.1.0", "1.2.0"]));
    assert_eq!(
        m["version"], "1.2.0",
        "unversioned metadata describes the highest version"
    );
    assert_eq!(m["platform"], "invariant_native");
    assert_eq!(m["inputs"][0]["name"], "features");
    assert_eq!(m["inputs"][0]["datatype"], "FP32");
    assert_eq!(m["inputs"][0]["shape"], json!([-1, 8]));
    assert_eq!(m["inputs"][0]["columns"][0], "account_age_days");
    assert_eq!(
        m["outputs"][0],
        json!({"name": "trust_score", "datatype": "FP32", "shape": [-1, 1]})
    );
    assert_eq!(m["device"], "cpu");
    assert_eq!(m["runtime"]["name"], "invariant-native");
    assert_eq!(m["portability"]["portable"], true);
    assert_eq!(m["portability"]["golden_file"], "1.2.0.jsonl");
    assert!(m["portability"]["host_cpu_class"]
        .as_str()
        .unwrap()
        .starts_with("x86-64-v"));
    let (_, p) = s.get("/v2/models/price-advisor/versions/1.0.0").await;
    assert_eq!(p["runtime"]["name"], "onnxruntime");
    assert_eq!(p["portability"]["portable"], false);
    assert!(
        p["portability"]["reason"].as_str().unwrap().contains("CPU feature"),
        "{p}"
    );
    // The golden file of this host's class (the first file when it was recorded on it).
    let file = p["portability"]["golden_file"].as_str().unwrap();
    assert!(file.starts_with("1.0.0") && file.ends_with(".jsonl"), "{file}");
    let (_, p) = s.get("/v2/models/price-advisor/versions/1.0.1").await;
    assert_eq!(p["runtime"]["name"], "invariant-portable");
    assert_eq!(p["portability"]["portable"], true);
    assert_eq!(m["max_batch_size"], 256);
    assert_eq!(m["content_hash"].as_str().map(str::len), Some(64));

    let (status, v) = s.get("/v2/models/trust-scorer/versions/1.1.0").await;
    assert_eq!(status, 200);
    assert_eq!(v["version"], "1.1.0");
    assert_ne!(v["content_hash"], m["content_hash"]);

    let (status, r) = s.get("/v2/models/risk-assessor/versions/1.0.0").await;
    assert_eq!(status, 200);
    assert_eq!(r["platform"], "onnxruntime_onnx");
    assert_eq!(r["runtime"]["name"], "onnxruntime");
    assert_eq!(r["runtime"]["version"], "1.31.1");
    assert_eq!(
        r["outputs"][0],
        json!({"name": "label", "datatype": "INT64", "shape": [-1]})
    );
    assert_eq!(
        r["outputs"][1],
        json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]})
    );

    let (status, p) = s.get("/v2/models/price-advisor").await;
    assert_eq!(status, 200);
    assert_eq!(p["versions"], json!(["1.0.0", "1.0.1"]));
    assert_eq!(p["outputs"][0]["name"], "surge_multiplier");
}

#[tokio::test]
async fn readiness_endpoints() {
    let s = Server::start().await;
    let (status, r) = s.get("/v2/models/risk-assessor/ready").await;
    assert_eq!(status, 200);
    assert_eq!(r["ready"], true);
    assert_eq!(r["version"], "1.1.0");
    let (status, r) = s.get("/v2/models/risk-assessor/versions/1.0.0/ready").await;
    assert_eq!(status, 200);
    assert_eq!(r["version"], "1.0.0");
    assert_error(&s.get("/v2/models/nope/ready").await, 404, &["nope"]);
    assert_error(
        &s.get("/v2/models/risk-assessor/versions/9.9.9/ready").await,
        404,
        &["9.9.9"],
    );
}

#[tokio::test]
async fn unknown_models_versions_and_routes_are_404() {
    let s = Server::start().await;
    assert_error(&s.get("/v2/models/nope").await, 404, &["unknown model 'nope'"]);
    assert_error(
        &s.get("/v2/models/trust-scorer/versions/3.0.0").await,
        404,
        &["trust-scorer", "3.0.0"],
    );
    assert_error(
        &s.post("/v2/models/nope/infer", &trust_request(&[TRUST_ROW])).await,
        404,
        &["nope"],
    );
    assert_error(
        &s.post(
            "/v2/models/trust-scorer/versions/0.0.1/infer",
            &trust_request(&[TRUST_ROW]),
        )
        .await,
        404,
        &["0.0.1"],
    );
    assert_error(&s.get("/v2/elsewhere").await, 404, &["/v2/elsewhere"]);
    s.assert_still_serving().await;
}

#[tokio::test]
async fn infer_echoes_id_names_version_and_corridor() {
    let s = Server::start().await;
    let mut req = trust_request(&[TRUST_ROW, TRUST_ROW]);
    req["id"] = json!("req-42");
    let (status, r) = s.post("/v2/models/trust-scorer/infer", &req).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["id"], "req-42");
    assert_eq!(r["model_name"], "trust-scorer");
    assert_eq!(r["model_version"], "1.2.0");
    assert_eq!(r["parameters"]["corridor"], "UAE-SA", "default corridor applies");
    let out = output(&r, "trust_score");
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["shape"], json!([2, 1]));
    let bits = f32_bits(out);
    assert_eq!(bits[0], bits[1], "identical rows give identical bits");

    // Without an id, none is invented.
    let (_, r) = s
        .post("/v2/models/trust-scorer/infer", &trust_request(&[TRUST_ROW]))
        .await;
    assert!(r.get("id").is_none());

    // Corridor from the header, or from parameters.corridor (case-insensitive).
    let (status, r) = s
        .post_raw(
            "/v2/models/trust-scorer/infer",
            trust_request(&[TRUST_ROW]).to_string(),
            &[("x-corridor", "UK-NG")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(r["parameters"]["corridor"], "UK-NG");
    let mut req = trust_request(&[TRUST_ROW]);
    req["parameters"] = json!({"corridor": "us-eg"});
    let (status, r) = s.post("/v2/models/trust-scorer/infer", &req).await;
    assert_eq!(status, 200);
    assert_eq!(r["parameters"]["corridor"], "US-EG");
}

#[tokio::test]
async fn outputs_selection_returns_only_the_requested_outputs_in_order() {
    let s = Server::start().await;
    let row: &[f64] = &[249.99, 1.8, 35.0, 6.0, 2.0, 1.0, 3.0, 2.0, 0.35, 3.0];
    let mut req = features_request(&[row]);
    let (_, all) = s.post("/v2/models/risk-assessor/infer", &req).await;
    let names: Vec<_> = all["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("label"), json!("probabilities")]);

    req["outputs"] = json!([{"name": "probabilities"}]);
    let (status, one) = s.post("/v2/models/risk-assessor/infer", &req).await;
    assert_eq!(status, 200);
    assert_eq!(one["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(
        f32_bits(output(&one, "probabilities")),
        f32_bits(output(&all, "probabilities"))
    );

    req["outputs"] = json!([{"name": "probabilities"}, {"name": "label"}]);
    let (_, both) = s.post("/v2/models/risk-assessor/infer", &req).await;
    assert_eq!(both["outputs"][0]["name"], "probabilities");
    assert_eq!(both["outputs"][1]["name"], "label");
}
