//! The OpenAPI contract: `GET /openapi.json` is an OpenAPI 3.1 document of every HTTP route
//! (served without a key), and bounded schemathesis runs (from the project venv) find no 5xx
//! and no response that violates the document, both against the server's own document and
//! against KServe's V2 (Open Inference Protocol) REST document as KServe generates it.

use invariant_blackbox::*;
use std::process::Command;

fn venv(tool: &str) -> std::path::PathBuf {
    let p = workspace_root().join(".venv/bin").join(tool);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup-python.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A server requiring keys, and an infer + features:read key of UAE-SA (no admin: the runs
/// cannot change the server's state, and admin endpoints answer 403).
async fn keyed() -> (Server, String, RepoCopy) {
    let repo = RepoCopy::new();
    let s = Server::start_with(ServerOptions {
        auth: true,
        ..repo.options()
    })
    .await;
    let (_, key) = s
        .create_key("schemathesis", &["infer", "features:read"], &["UAE-SA"])
        .await;
    (s, key, repo)
}

/// Runs schemathesis on `spec` against `s` with `checks`; returns its output, asserting
/// success and at least `min_cases` test cases.
async fn schemathesis(
    s: &Server,
    key: &str,
    spec: &str,
    config: &str,
    checks: &str,
    extra: &[&str],
    min_cases: usize,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("schemathesis.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut args: Vec<String> = vec![
        "--config-file".into(),
        config_path.display().to_string(),
        "run".into(),
        spec.into(),
        "--url".into(),
        s.url.clone(),
        "-H".into(),
        format!("Authorization: Bearer {key}"),
        "--checks".into(),
        checks.into(),
        "--max-examples".into(),
        "30".into(),
        "--workers".into(),
        "2".into(),
        "--seed".into(),
        "1".into(),
        "--generation-database".into(),
        "none".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let tool = venv("schemathesis");
    let work = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        // Its working directory is the temporary one: schemathesis keeps a cache there.
        Command::new(tool)
            .args(&args)
            .current_dir(&work)
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\nserver log:\n{}",
        s.log()
    );
    let cases: usize = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_suffix(" passed")?
                .split(" generated, ")
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no test-case summary:\n{text}"));
    assert!(cases >= min_cases, "only {cases} test cases ran:\n{text}");
    assert!(!s.log().contains("panicked"), "{}", s.log());
    text
}

#[tokio::test]
async fn the_document_describes_every_route_and_needs_no_key() {
    let (s, _, _repo) = keyed().await;
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    let operations: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    for expected in [
        "GET /v2",
        "GET /v2/health/live",
        "GET /v2/health/ready",
        "GET /v2/models/stats",
        "GET /v2/models/{model}",
        "GET /v2/models/{model}/versions/{version}",
        "GET /v2/models/{model}/ready",
        "GET /v2/models/{model}/versions/{version}/ready",
        "GET /v2/models/{model}/config",
        "GET /v2/models/{model}/versions/{version}/config",
        "GET /v2/models/{model}/stats",
        "GET /v2/models/{model}/versions/{version}/stats",
        "POST /v2/models/{model}/infer",
        "POST /v2/models/{model}/versions/{version}/infer",
        "POST /v2/repository/index",
        "POST /v2/repository/models/{model}/load",
        "POST /v2/repository/models/{model}/unload",
        "GET /metrics",
        "GET /admin/v1/models",
        "GET /admin/v1/models/{model}",
        "POST /admin/v1/models/{model}/load",
        "POST /admin/v1/models/{model}/versions/{version}/{action}",
        "GET /admin/v1/governance",
        "POST /admin/v1/governance",
        "GET /admin/v1/corridors",
        "GET /admin/v1/corridors/{corridor}",
        "GET /admin/v1/flags",
        "POST /v1/features/get-online",
        "POST /v1/features/push",
        "GET /v1/corridors/{corridor}/health",
        "GET /v1/corridors/{corridor}/audit",
        "GET /admin/v1/audit",
        "POST /get-online-features",
        "POST /push",
        "POST /write-to-online-store",
        "GET /health",
        "POST /corridors/{corridor}/get-online-features",
        "POST /corridors/{corridor}/push",
        "POST /corridors/{corridor}/write-to-online-store",
        "GET /openapi.json",
        "GET /v1/corridors/{corridor}/review/items",
        "POST /v1/corridors/{corridor}/review/items",
        "GET /v1/corridors/{corridor}/review/items/{id}",
        "POST /v1/corridors/{corridor}/review/items/{id}/{action}",
        "GET /v1/corridors/{corridor}/review/summary",
        "GET /v1/advisory",
        "POST /v1/advisory/{pipeline}",
        "POST /admin/v1/pipelines/reload",
        "POST /admin/v1/pipelines/{pipeline}/versions/{version}/{action}",
        "GET /admin/v1/dashboard",
    ] {
        assert!(
            operations.iter().any(|o| o == expected),
            "{expected} is not documented: {operations:?}"
        );
    }
    assert_eq!(operations.len(), 50, "{operations:?}");
    // Only the health checks and the document itself need no key.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let open = op["security"] == serde_json::json!([{}]);
            let should = ["/v2/health/live", "/v2/health/ready", "/health", "/openapi.json"].contains(&path.as_str());
            assert_eq!(open, should, "{method} {path}: {}", op["security"]);
            assert!(
                op["responses"]["401"].is_object() && op["responses"]["403"].is_object(),
                "{method} {path}"
            );
        }
    }
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_or_schema_violation_in_the_servers_own_document() {
    let (s, key, _repo) = keyed().await;
    let spec = format!("{}/openapi.json", s.url);
    // Real names for the path parameters, so requests reach past the 404s.
    let config =
        "[parameters]\nmodel = \"trust-scorer\"\nversion = \"1.2.0\"\ncorridor = \"UAE-SA\"\naction = \"stage\"\n";
    schemathesis(
        &s,
        &key,
        &spec,
        config,
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
        &[],
        500,
    )
    .await;
    // Nothing the run sent changed what serves, and the key still works.
    let (status, body) = s
        .post_raw(
            "/v2/models/trust-scorer/versions/1.2.0/infer",
            trust_request(&[TRUST_ROW]).to_string(),
            &[("authorization", &format!("Bearer {key}")), ("x-corridor", "UAE-SA")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn schemathesis_with_kserves_v2_document_finds_no_server_error() {
    let (s, key, _repo) = keyed().await;
    let script = workspace_root().join("tests/conformance/kserve_openapi.py");
    let py = venv("python");
    let out = Command::new(py)
        .arg(script)
        .output()
        .expect("generate KServe's document");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("kserve-v2.json");
    std::fs::write(&spec, &out.stdout).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["paths"]["/v2/models/{model_name}/infer"].is_object(), "{doc}");
    let config = "[parameters]\nmodel_name = \"trust-scorer\"\nmodel_version = \"1.2.0\"\n";
    // KServe's document declares only 200 and 422, so only server errors are checked; its
    // coverage phase trips an internal schemathesis error on this document, so it is left out.
    schemathesis(
        &s,
        &key,
        &spec.display().to_string(),
        config,
        "not_a_server_error",
        &["--phases", "examples,fuzzing,stateful", "--max-examples", "100"],
        300,
    )
    .await;
}
