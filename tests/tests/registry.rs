//! The model registry: lifecycle over the admin API, deterministic traffic splits, state that
//! survives kill -9, hot swap under load, canary auto-rollback, unload/load, and the CLI.

use invariant_blackbox::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const RISK_ROW: [f64; 10] = [249.99, 1.8, 35.0, 6.0, 2.0, 1.0, 3.0, 2.0, 0.35, 3.0];

async fn risk(s: &Server, corridor: &str, key: &str) -> (String, String) {
    let body = features_request(&[&RISK_ROW]).to_string();
    let (status, r) = s
        .post_raw(
            "/v2/models/risk-assessor/infer",
            body,
            &[("x-corridor", corridor), ("x-routing-key", key)],
        )
        .await;
    assert_eq!(status, 200, "{r}");
    (
        r["model_version"].as_str().unwrap().to_string(),
        r["parameters"]["routing"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn canary_in_one_corridor_splits_deterministically() {
    let repo = RepoCopy::new();
    let s = Server::start_with(repo.options()).await;
    let (status, r) = s
        .admin("risk-assessor", "1.0.0", "promote", json!({"reason": "pin"}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["transition"]["to"], "ACTIVE");
    let (status, r) = s
        .admin(
            "risk-assessor",
            "1.1.0",
            "canary",
            json!({"percent": 10, "corridors": ["UAE-SA"], "reason": "try"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"]["canary"]["version"], "1.1.0");

    let mut canary = 0;
    for i in 0..200 {
        let key = format!("user-{i}");
        let (version, routing) = risk(&s, "UAE-SA", &key).await;
        assert_eq!((version == "1.1.0"), (routing == "canary"), "{version} {routing}");
        canary += usize::from(routing == "canary");
        // The same key always reaches the same version.
        assert_eq!(risk(&s, "UAE-SA", &key).await.0, version);
        // Other corridors never see the canary.
        assert_eq!(
            risk(&s, "US-EG", &key).await,
            ("1.0.0".to_string(), "active".to_string())
        );
    }
    assert!((8..=36).contains(&canary), "{canary} of 200 requests in a 10% canary");

    // Explicit versions bypass routing.
    let (_, r) = s
        .post(
            "/v2/models/risk-assessor/versions/1.1.0/infer",
            &features_request(&[&RISK_ROW]),
        )
        .await;
    assert_eq!(r["parameters"]["routing"], "explicit");

    let (_, view) = s.get("/admin/v1/models/risk-assessor").await;
    assert_eq!(view["active"], "1.0.0");
    let history = view["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    // The actor is the caller's key (here the development caller), never a claim of the body.
    assert_eq!(history[1]["actor"], "dev-no-auth");
    assert_eq!(history[1]["action"], "canary");
    assert_eq!(history[1]["percent"], 10.0);
    assert_eq!(history[1]["corridors"], json!(["UAE-SA"]));
    let audited: Vec<_> = s.audit().into_iter().filter(|a| a["event"] == "transition").collect();
    assert_eq!(audited.len(), 2);
    assert!(audited
        .iter()
        .all(|a| a["actor"] == "dev-no-auth" && a["time"].is_string()));
}

#[tokio::test]
async fn invalid_transitions_are_refused_with_clear_errors() {
    let repo = RepoCopy::new();
    let s = Server::start_with(repo.options()).await;
    assert_error(
        &s.admin("risk-assessor", "1.1.0", "deprecate", json!({})).await,
        409,
        &["ACTIVE"],
    );
    assert_error(
        &s.admin("risk-assessor", "1.0.0", "canary", json!({})).await,
        400,
        &["percent"],
    );
    assert_error(
        &s.admin("risk-assessor", "1.0.0", "canary", json!({"percent": 150}))
            .await,
        409,
        &["percent"],
    );
    assert_error(
        &s.admin("risk-assessor", "9.9.9", "promote", json!({})).await,
        404,
        &["9.9.9"],
    );
    assert_error(&s.admin("nope", "1.0.0", "promote", json!({})).await, 404, &["nope"]);
    assert_error(
        &s.admin("risk-assessor", "1.0.0", "explode", json!({})).await,
        404,
        &["explode"],
    );
    assert_error(
        &s.admin("risk-assessor", "1.0.0", "promote", json!({"corridors": ["FR-MA"]}))
            .await,
        400,
        &["FR-MA"],
    );
    assert_error(
        &s.admin("risk-assessor", "1.0.0", "promote", json!({"bogus": 1})).await,
        400,
        &["bogus"],
    );
    assert_error(
        &s.admin("risk-assessor", "1.1.0", "rollback", json!({})).await,
        409,
        &["no previous ready version"],
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn state_survives_kill_9_and_routes_the_same_keys_the_same_way() {
    let repo = RepoCopy::new();
    let options = ServerOptions {
        state_dir: Some(repo.state_dir()),
        ..repo.options()
    };
    let mut s = Server::start_with(options.clone()).await;
    assert_eq!(s.admin("risk-assessor", "1.0.0", "promote", json!({})).await.0, 200);
    assert_eq!(
        s.admin("risk-assessor", "1.1.0", "canary", json!({"percent": 30}))
            .await
            .0,
        200
    );
    let mut before = BTreeMap::new();
    for i in 0..60 {
        before.insert(i, risk(&s, "UK-NG", &format!("k{i}")).await);
    }
    s.kill_9();
    let s = Server::start_with(options).await;
    let (_, view) = s.get("/admin/v1/models/risk-assessor").await;
    assert_eq!(view["canary"]["percent"], 30.0);
    assert_eq!(view["active"], "1.0.0");
    for (i, expected) in before {
        assert_eq!(risk(&s, "UK-NG", &format!("k{i}")).await, expected, "key k{i}");
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo.state_dir().join("registry.json")).unwrap()).unwrap();
    assert_eq!(state["revision"], 2);
}

/// 20 promotions and rollbacks under continuous load: no request fails, every answer carries
/// the golden bits of the version it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_rollback_twenty_times_under_load() {
    let repo = RepoCopy::new();
    let s = Arc::new(Server::start_with(repo.options()).await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (s, stop) = (s.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = BTreeMap::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = trust_request(&[TRUST_ROW]).to_string();
                let key = format!("w{w}-{n}");
                let (status, r) = s
                    .post_raw("/v2/models/trust-scorer/infer", body, &[("x-routing-key", &key)])
                    .await;
                assert_eq!(status, 200, "request failed during a swap: {r}");
                let version = r["model_version"].as_str().unwrap().to_string();
                let expected = match version.as_str() {
                    "1.1.0" => 0x3f769b4e_u32,
                    "1.2.0" => 0x3f537c58,
                    other => panic!("unexpected version {other}"),
                };
                assert_eq!(f32_bits(output(&r, "trust_score")), [expected]);
                *seen.entry(version).or_insert(0) += 1;
                n += 1;
            }
            seen
        }));
    }
    for round in 0..20 {
        let (status, r) = s
            .admin(
                "trust-scorer",
                "1.1.0",
                "promote",
                json!({"reason": format!("round {round}")}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        let (status, r) = s.admin("trust-scorer", "1.1.0", "rollback", json!({})).await;
        assert_eq!(status, 200, "{r}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = BTreeMap::new();
    for w in workers {
        for (v, n) in w.await.expect("a worker saw a failed request") {
            *total.entry(v).or_insert(0) += n;
        }
    }
    assert!(
        total.get("1.1.0").copied().unwrap_or(0) > 0 && total.get("1.2.0").copied().unwrap_or(0) > 0,
        "{total:?}"
    );
    let (_, view) = s.get("/admin/v1/models/trust-scorer").await;
    assert_eq!(view["active"], "1.2.0");
    assert_eq!(view["history"].as_array().unwrap().len(), 40);
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_automatically() {
    let repo = RepoCopy::new().with_fixture("canary-probe");
    let s = Server::start_with(repo.options()).await;
    assert_eq!(s.admin("canary-probe", "1.0.0", "promote", json!({})).await.0, 200);
    assert_eq!(
        s.admin("canary-probe", "1.1.0", "canary", json!({"percent": 50}))
            .await
            .0,
        200
    );
    // x = 10 is out of 1.1.0's lookup table: its runs fail; 1.0.0 answers.
    let body = json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [10.0, 0.0]}]}).to_string();
    let mut canary_failures = 0;
    let mut rolled_back_at = None;
    for i in 0..400 {
        let key = format!("k{i}");
        let (status, r) = s
            .post_raw(
                "/v2/models/canary-probe/infer",
                body.clone(),
                &[("x-routing-key", &key)],
            )
            .await;
        if status == 500 {
            canary_failures += 1;
            assert!(r["error"].as_str().unwrap().contains("Gather"), "{r}");
        } else {
            assert_eq!(status, 200, "{r}");
            assert_eq!(r["model_version"], "1.0.0");
        }
        let (_, view) = s.get("/admin/v1/models/canary-probe").await;
        if view["canary"].is_null() {
            rolled_back_at = Some(i);
            break;
        }
    }
    let at = rolled_back_at.expect("the canary was never rolled back");
    assert!(
        canary_failures >= 2,
        "{canary_failures} canary failures before rollback at request {at}"
    );
    // After the rollback every request is served by the active version.
    for i in 0..50 {
        let key = format!("after{i}");
        let (status, r) = s
            .post_raw(
                "/v2/models/canary-probe/infer",
                body.clone(),
                &[("x-routing-key", &key)],
            )
            .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["model_version"], "1.0.0");
    }
    let (_, view) = s.get("/admin/v1/models/canary-probe").await;
    let last = view["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "auto-rollback");
    assert_eq!(last["action"], "rollback");
    assert!(last["reason"].as_str().unwrap().contains("error rate"), "{last}");
    let metrics = s.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("invariant_canary_auto_rollbacks_total") && l.contains("canary-probe")),
        "{metrics}"
    );
    assert!(s
        .audit()
        .iter()
        .any(|a| a["event"] == "transition" && a["actor"] == "auto-rollback"));
}

#[tokio::test]
async fn unload_and_load_at_run_time() {
    let repo = RepoCopy::new();
    let s = Server::start_with(repo.options()).await;
    assert_error(
        &s.admin("trust-scorer", "1.2.0", "unload", json!({})).await,
        409,
        &["receives traffic"],
    );
    let (status, r) = s
        .admin("trust-scorer", "1.1.0", "unload", json!({"reason": "memory"}))
        .await;
    assert_eq!(status, 200, "{r}");
    let got = s
        .post(
            "/v2/models/trust-scorer/versions/1.1.0/infer",
            &trust_request(&[TRUST_ROW]),
        )
        .await;
    assert_error(&got, 503, &["unloaded by dev-no-auth"]);
    let (status, r) = s.post("/admin/v1/models/trust-scorer/load", &json!({})).await;
    assert_eq!(status, 200, "{r}");
    let (status, _) = s
        .post(
            "/v2/models/trust-scorer/versions/1.1.0/infer",
            &trust_request(&[TRUST_ROW]),
        )
        .await;
    assert_eq!(status, 200);
    // Both changes are in the server-wide audit chain, with their actor.
    let audit = s.audit();
    let unload = audit.iter().find(|a| a["event"] == "unload").expect("unload audited");
    assert_eq!(
        (
            unload["version"].as_str(),
            unload["reason"].as_str(),
            unload["actor"].as_str()
        ),
        (Some("1.1.0"), Some("memory"), Some("dev-no-auth"))
    );
    let load = audit.iter().find(|a| a["event"] == "load").expect("load audited");
    assert_eq!(
        (load["model"].as_str(), load["chain"].as_str()),
        (Some("trust-scorer"), Some("_server"))
    );
    assert!(load["versions"].as_array().is_some_and(|v| !v.is_empty()), "{load}");
}

fn cli(args: &[&str], repo: &RepoCopy) -> (i32, String, String) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(repo.args());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    invariant(&refs)
}

#[test]
fn cli_works_on_the_repository_without_a_server() {
    let repo = RepoCopy::new();
    let (code, out, err) = cli(
        &[
            "models",
            "promote",
            "risk-assessor",
            "1.0.0",
            "--reason",
            "pin",
            "--actor",
            "bob",
        ],
        &repo,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("promote risk-assessor 1.0.0: STAGED -> ACTIVE (revision 1)"),
        "{out}"
    );
    let (code, out, _) = cli(
        &[
            "models",
            "canary",
            "risk-assessor",
            "1.1.0",
            "--percent",
            "5",
            "--corridor",
            "UAE-SA",
        ],
        &repo,
    );
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = cli(&["models", "deprecate", "risk-assessor", "1.1.0"], &repo);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot deprecate risk-assessor 1.1.0: it is CANARY"),
        "{err}"
    );
    let (_, out, _) = cli(&["models", "show", "risk-assessor"], &repo);
    assert!(
        out.contains("active: 1.0.0") && out.contains("canary: 1.1.0 at 5% in UAE-SA"),
        "{out}"
    );
    let (_, out, _) = cli(&["models", "history", "risk-assessor", "--json"], &repo);
    let history: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history[0]["actor"], "bob");
    assert_eq!(history[1]["action"], "canary");
    let (_, out, _) = cli(&["models", "list"], &repo);
    assert!(
        out.lines()
            .any(|l| l.contains("risk-assessor") && l.contains("1.1.0") && l.contains("CANARY")),
        "{out}"
    );
}

#[tokio::test]
async fn cli_drives_a_running_server() {
    let repo = RepoCopy::new();
    let s = Server::start_with(repo.options()).await;
    let url = s.url.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        invariant(&[
            "models",
            "promote",
            "trust-scorer",
            "1.1.0",
            "--server",
            &url,
            "--reason",
            "cli",
            "--json",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let transition: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(transition["to"], "ACTIVE");
    let (_, r) = s
        .post("/v2/models/trust-scorer/infer", &trust_request(&[TRUST_ROW]))
        .await;
    assert_eq!(r["model_version"], "1.1.0");
    let url = s.url.clone();
    let (code, _, err) =
        tokio::task::spawn_blocking(move || invariant(&["models", "stage", "trust-scorer", "1.1.0", "--server", &url]))
            .await
            .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("409") && err.contains("roll it back"), "{err}");
}

#[test]
fn cli_imports_onnx_and_native_artifacts() {
    let repo = RepoCopy::new();
    let onnx = shipped_models().join("price-advisor/1.0.0/model.onnx");
    let (code, out, err) = cli(
        &[
            "models",
            "import",
            onnx.to_str().unwrap(),
            "--name",
            "surge",
            "--version",
            "0.1.0",
        ],
        &repo,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("imported surge 0.1.0") && out.contains("41 golden vectors"),
        "{out}"
    );
    let manifest = std::fs::read_to_string(repo.version_dir("surge", "0.1.0").join("manifest.toml")).unwrap();
    assert!(
        manifest.contains("name = \"features\"") && manifest.contains("name = \"surge_multiplier\""),
        "{manifest}"
    );
    assert!(manifest.contains("shape = [-1, 6]"), "{manifest}");
    // Every operator of the graph is in the portable set: the portable engine, and why.
    assert!(manifest.contains("engine = \"portable\""), "{manifest}");
    assert!(manifest.contains("every operator is in the portable set"), "{manifest}");
    assert!(repo.golden().join("surge/0.1.0.jsonl").exists());

    // A graph with an operator outside the portable set stays on ONNX Runtime and says so;
    // one with a random operator is refused.
    use invariant_portable::proto::*;
    use prost::Message;
    let graph = |op: &str| {
        let io = |name: &str| ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeProtoTensor {
                    elem_type: Some(elem::FLOAT),
                    shape: Some(TensorShapeProto {
                        dim: vec![
                            Dimension {
                                dim_value: None,
                                dim_param: Some("N".into()),
                            },
                            Dimension {
                                dim_value: Some(3),
                                dim_param: None,
                            },
                        ],
                    }),
                }),
            }),
        };
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    name: Some("n".into()),
                    op_type: Some(op.into()),
                    ..Default::default()
                }],
                name: Some("g".into()),
                input: vec![io("x")],
                output: vec![io("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let dir = tempfile::tempdir().unwrap();
    for (op, version) in [("Erf", "0.2.0"), ("RandomNormalLike", "0.3.0")] {
        let path = dir.path().join(format!("{op}.onnx"));
        std::fs::write(&path, graph(op)).unwrap();
        let (code, out, err) = cli(
            &[
                "models",
                "import",
                path.to_str().unwrap(),
                "--name",
                "surge",
                "--version",
                version,
            ],
            &repo,
        );
        if op == "Erf" {
            assert_eq!(code, 0, "{out}{err}");
            let manifest = std::fs::read_to_string(repo.version_dir("surge", version).join("manifest.toml")).unwrap();
            assert!(manifest.contains("engine = \"onnxruntime\""), "{manifest}");
            assert!(manifest.contains("outside the portable set (Erf)"), "{manifest}");
        } else {
            assert_ne!(code, 0, "{out}");
            assert!(
                err.contains("nondeterministic") && err.contains("RandomNormalLike"),
                "{err}"
            );
            assert!(!repo.version_dir("surge", version).exists());
        }
    }

    let weights = shipped_models().join("trust-scorer/1.2.0/model.safetensors");
    let like = [
        "models",
        "import",
        weights.to_str().unwrap(),
        "--name",
        "trust-scorer",
        "--version",
        "1.3.0",
        "--like",
        "1.2.0",
    ];
    let (code, out, err) = cli(&like, &repo);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(
        &[
            "models",
            "import",
            weights.to_str().unwrap(),
            "--name",
            "x",
            "--version",
            "1.0.0",
        ],
        &repo,
    );
    assert_ne!(code, 0);
    assert!(err.contains("--like"), "{err}");
    let (code, _, err) = cli(&like, &repo);
    assert_ne!(code, 0, "importing the same version twice must fail");
    assert!(err.contains("already exists"), "{err}");
    let (code, out, err) = cli(&["models", "verify"], &repo);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("READY").count(), 9, "{out}");
    let (_, out, _) = cli(&["models", "list"], &repo);
    assert!(
        out.lines()
            .any(|l| l.contains("trust-scorer") && l.contains("1.3.0") && l.contains("ACTIVE")),
        "{out}"
    );
}
