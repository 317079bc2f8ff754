//! API keys against the real binary: every endpoint but the health checks refuses missing,
//! malformed, unknown and revoked keys with 401; a key of one corridor gets 403 for every
//! resource of another (inference, features, admin, governance), with the same answer
//! whether the resource exists or not; the audit actor is the key's id; `--dev-no-auth` is
//! refused off loopback. (The gRPC side runs through the real tritonclient in
//! `conformance.rs`.)

use invariant_blackbox::*;
use reqwest::Method;
use serde_json::{json, Value};

/// One request of the probe.
#[derive(Clone)]
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
    corridor: Option<&'static str>,
}

fn call(method: Method, path: &str, body: Option<Value>, corridor: Option<&'static str>) -> Call {
    Call {
        method,
        path: path.to_string(),
        body,
        corridor,
    }
}

async fn send(s: &Server, c: &Call, key: Option<&str>) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = s.client.request(c.method.clone(), format!("{}{}", s.url, c.path));
    if let Some(k) = key {
        req = req.header("authorization", k);
    }
    if let Some(corridor) = c.corridor {
        req = req.header("x-corridor", corridor);
    }
    if let Some(b) = &c.body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, body, headers)
}

/// Every endpoint that needs a key (none of them corridor-scoped here).
fn every_endpoint() -> Vec<Call> {
    let infer = Some(trust_request(&[TRUST_ROW]));
    let mut calls: Vec<Call> = [
        "/v2",
        "/v2/models/stats",
        "/v2/models/trust-scorer",
        "/v2/models/trust-scorer/versions/1.2.0",
        "/v2/models/trust-scorer/ready",
        "/v2/models/trust-scorer/versions/1.2.0/ready",
        "/v2/models/trust-scorer/config",
        "/v2/models/trust-scorer/versions/1.2.0/config",
        "/v2/models/trust-scorer/stats",
        "/v2/models/trust-scorer/versions/1.2.0/stats",
        "/metrics",
        "/admin/v1/models",
        "/admin/v1/models/trust-scorer",
        "/admin/v1/governance",
        "/admin/v1/corridors",
        "/admin/v1/corridors/UAE-SA",
        "/admin/v1/flags",
    ]
    .into_iter()
    .map(|p| call(Method::GET, p, None, None))
    .collect();
    calls.extend([
        call(Method::POST, "/v2/models/trust-scorer/infer", infer.clone(), None),
        call(
            Method::POST,
            "/v2/models/trust-scorer/versions/1.2.0/infer",
            infer,
            None,
        ),
        call(Method::POST, "/v2/repository/index", None, None),
        call(Method::POST, "/v2/repository/models/trust-scorer/load", None, None),
        call(Method::POST, "/v2/repository/models/trust-scorer/unload", None, None),
        call(Method::POST, "/admin/v1/models/trust-scorer/load", None, None),
        call(
            Method::POST,
            "/admin/v1/models/trust-scorer/versions/1.1.0/deprecate",
            Some(json!({})),
            None,
        ),
        call(
            Method::POST,
            "/admin/v1/governance",
            Some(json!({"op": "kill", "scope": "corridor:UAE-SA", "reason": "probe"})),
            None,
        ),
        call(
            Method::POST,
            "/v1/features/get-online",
            Some(json!({"feature_service": "trust", "entities": {"user_id": ["u1"]}})),
            None,
        ),
        call(
            Method::POST,
            "/v1/features/push",
            Some(json!({"feature_view": "user_trust", "rows": []})),
            None,
        ),
    ]);
    calls
}

/// A server requiring keys, on a copy of the shipped repository (the probes change its
/// registry state), with the copy it serves.
async fn keyed_server() -> (Server, RepoCopy) {
    let repo = RepoCopy::new();
    let s = Server::start_with(ServerOptions {
        auth: true,
        ..repo.options()
    })
    .await;
    (s, repo)
}

#[tokio::test]
async fn every_endpoint_refuses_missing_malformed_unknown_and_revoked_keys_and_health_is_open() {
    let (s, _repo) = keyed_server().await;
    let (revoked_id, revoked) = s.create_key("old", &["infer", "admin", "metrics"], &["*"]).await;
    let config = s.config_path().display().to_string();
    let (code, out, err) = invariant(&["keys", "revoke", "--config", &config, &revoked_id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&revoked_id), "{out}");
    let (_, good) = s.create_key("svc", &["infer"], &["UAE-SA"]).await;
    // Revocation reaches the server within 1 s (auth.refresh_ms is 250).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;

    assert_eq!(s.get("/v2/health/live").await.0, 200);
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
    let unknown = format!("Bearer inv_0123456789abcdef_{}", "0".repeat(64));
    let wrong_secret = format!("Bearer {}0", &good[..good.len() - 1]);
    let wrong_secret = if wrong_secret == format!("Bearer {good}") {
        format!("Bearer {}1", &good[..good.len() - 1])
    } else {
        wrong_secret
    };
    let revoked = format!("Bearer {revoked}");
    let cases: [(Option<&str>, &str); 7] = [
        (None, "missing API key"),
        (Some("Bearer"), "malformed API key"),
        (Some("Basic dXNlcjpwYXNz"), "malformed API key"),
        (Some("Bearer not-a-key"), "malformed API key"),
        (Some(unknown.as_str()), "unknown API key"),
        (Some(wrong_secret.as_str()), "unknown API key"),
        (Some(revoked.as_str()), "was revoked"),
    ];
    for c in every_endpoint() {
        for (key, message) in cases {
            let (status, body, headers) = send(&s, &c, key).await;
            assert_eq!(status, 401, "{} {} with {key:?}: {body}", c.method, c.path);
            assert!(
                body["error"].as_str().is_some_and(|e| e.contains(message)),
                "{} {} with {key:?}: {body}",
                c.method,
                c.path
            );
            assert_eq!(
                headers.get("www-authenticate").and_then(|v| v.to_str().ok()),
                Some("Bearer realm=\"invariant\""),
                "{} {}",
                c.method,
                c.path
            );
        }
    }
    // Nothing was changed by the refused calls, and a good key is served.
    let (status, body, _) = send(
        &s,
        &call(
            Method::POST,
            "/v2/models/trust-scorer/versions/1.2.0/infer",
            Some(trust_request(&[TRUST_ROW])),
            Some("UAE-SA"),
        ),
        Some(&format!("Bearer {good}")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!s.log().contains(&good[20..]), "a key's secret reached the log");
}

#[tokio::test]
async fn a_key_of_one_corridor_is_refused_everything_of_another_and_every_cross_corridor_change() {
    let (s, _repo) = keyed_server().await;
    let (uae_id, uae) = s
        .create_key(
            "uae-everything",
            &[
                "infer",
                "features:read",
                "features:write",
                "admin",
                "metrics",
                "reviewer",
            ],
            &["UAE-SA"],
        )
        .await;
    let (_, ops) = s.create_key("ops", &["admin"], &["*"]).await;
    let uae = format!("Bearer {uae}");
    let ops = format!("Bearer {ops}");
    let infer = || Some(trust_request(&[TRUST_ROW]));
    let features_read = || Some(json!({"feature_service": "trust", "entities": {"user_id": ["u1"]}}));
    let features_push = || Some(json!({"feature_view": "user_trust", "rows": []}));
    let kill = |scope: &str| Some(json!({"op": "kill", "scope": scope, "reason": "probe"}));
    let promote = |c: &str| Some(json!({"corridors": [c]}));

    // Each request of corridor B (UK-NG declared, FR-MA not), then the same in A.
    let pairs: Vec<(Call, Call)> = vec![
        (
            call(Method::POST, "/v2/models/trust-scorer/infer", infer(), Some("UK-NG")),
            call(Method::POST, "/v2/models/trust-scorer/infer", infer(), Some("UAE-SA")),
        ),
        (
            call(Method::POST, "/v2/models/no-such-model/infer", infer(), Some("UK-NG")),
            call(
                Method::POST,
                "/v2/models/trust-scorer/versions/1.2.0/infer",
                infer(),
                Some("UAE-SA"),
            ),
        ),
        (
            call(Method::POST, "/v2/models/trust-scorer/infer", infer(), Some("FR-MA")),
            call(Method::POST, "/v2/models/trust-scorer/infer", infer(), None),
        ),
        (
            call(
                Method::POST,
                "/v2/models/trust-scorer/infer",
                Some(json!({"inputs": trust_request(&[TRUST_ROW])["inputs"], "parameters": {"corridor": "UK-NG"}})),
                None,
            ),
            call(
                Method::POST,
                "/v2/models/trust-scorer/infer",
                Some(json!({"inputs": trust_request(&[TRUST_ROW])["inputs"], "parameters": {"corridor": "UAE-SA"}})),
                None,
            ),
        ),
        (
            call(Method::POST, "/v1/features/get-online", features_read(), Some("UK-NG")),
            call(Method::POST, "/v1/features/get-online", features_read(), Some("UAE-SA")),
        ),
        (
            call(Method::POST, "/v1/features/push", features_push(), Some("UK-NG")),
            call(Method::POST, "/v1/features/push", features_push(), Some("UAE-SA")),
        ),
        (
            call(Method::GET, "/admin/v1/corridors/UK-NG", None, None),
            call(Method::GET, "/admin/v1/corridors/UAE-SA", None, None),
        ),
        (
            call(Method::GET, "/admin/v1/flags?corridor=UK-NG", None, None),
            call(Method::GET, "/admin/v1/flags?corridor=UAE-SA", None, None),
        ),
        (
            call(Method::POST, "/admin/v1/governance", kill("corridor:UK-NG"), None),
            call(
                Method::POST,
                "/admin/v1/governance",
                kill("model:price-advisor@UAE-SA"),
                None,
            ),
        ),
        (
            call(
                Method::POST,
                "/admin/v1/governance",
                kill("model:trust-scorer@FR-MA"),
                None,
            ),
            call(
                Method::POST,
                "/admin/v1/governance",
                Some(json!({"op": "revive", "scope": "model:price-advisor@UAE-SA"})),
                None,
            ),
        ),
        (
            call(
                Method::POST,
                "/admin/v1/models/risk-assessor/versions/1.1.0/canary",
                Some(json!({"percent": 5, "corridors": ["UAE-SA", "UK-NG"]})),
                None,
            ),
            call(
                Method::POST,
                "/admin/v1/models/risk-assessor/versions/1.1.0/canary",
                Some(json!({"percent": 5, "corridors": ["UAE-SA"]})),
                None,
            ),
        ),
        (
            call(
                Method::POST,
                "/admin/v1/models/risk-assessor/versions/1.0.0/promote",
                promote("UK-NG"),
                None,
            ),
            call(
                Method::POST,
                "/admin/v1/models/risk-assessor/versions/1.0.0/promote",
                promote("UAE-SA"),
                None,
            ),
        ),
    ];
    let mut denials = Vec::new();
    for (b, a) in &pairs {
        let (status, body, _) = send(&s, b, Some(&uae)).await;
        assert_eq!(status, 403, "{} {} in {:?}: {body}", b.method, b.path, b.corridor);
        let message = body["error"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(&uae_id), "{message}");
        denials.push(message);
        let (status, body, _) = send(&s, a, Some(&uae)).await;
        assert!(
            ![401, 403].contains(&status),
            "{} {} in {:?} (its own corridor): {status} {body}",
            a.method,
            a.path,
            a.corridor
        );
    }
    // The inference refusals read the same whether the corridor or the model exists.
    let normalised: Vec<String> = denials[..3]
        .iter()
        .map(|m| m.replace("UK-NG", "C").replace("FR-MA", "C"))
        .collect();
    assert!(normalised.windows(2).all(|w| w[0] == w[1]), "{normalised:?}");

    // What spans corridors needs a `*` key: refused for the corridor key, allowed for ops.
    let global = [
        call(Method::GET, "/metrics", None, None),
        call(Method::GET, "/admin/v1/models", None, None),
        call(Method::GET, "/admin/v1/governance", None, None),
        call(Method::GET, "/admin/v1/corridors", None, None),
        call(Method::GET, "/admin/v1/flags", None, None),
        call(Method::POST, "/v2/repository/index", None, None),
        call(Method::POST, "/admin/v1/governance", kill("global"), None),
        call(
            Method::POST,
            "/admin/v1/models/risk-assessor/versions/1.0.0/promote",
            Some(json!({})),
            None,
        ),
        call(Method::POST, "/v2/repository/models/trust-scorer/unload", None, None),
    ];
    for c in &global {
        let (status, body, _) = send(&s, c, Some(&uae)).await;
        assert_eq!(status, 403, "{} {}: {body}", c.method, c.path);
    }
    for c in &global[1..6] {
        let (status, body, _) = send(&s, c, Some(&ops)).await;
        assert_eq!(status, 200, "{} {} with a * admin key: {body}", c.method, c.path);
    }
    // Metrics needs its own role.
    assert_eq!(send(&s, &global[0], Some(&ops)).await.0, 403);

    // The audit actor is the key's id: a body cannot claim one (an unknown field, named).
    let (status, body, _) = send(
        &s,
        &call(
            Method::POST,
            "/admin/v1/governance",
            Some(json!({"op": "kill", "scope": "corridor:UAE-SA", "reason": "x", "actor": "mallory"})),
            None,
        ),
        Some(&uae),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("actor")), "{body}");
    let (status, body, _) = send(
        &s,
        &call(
            Method::POST,
            "/admin/v1/models/risk-assessor/versions/1.1.0/canary",
            Some(json!({"percent": 5, "corridors": ["UAE-SA"], "actor": "mallory"})),
            None,
        ),
        Some(&uae),
    )
    .await;
    assert_eq!(status, 400, "the transition body has no actor field: {body}");
    let changes: Vec<Value> = s.audit().into_iter().filter(|a| a["event"] == "governance").collect();
    assert!(!changes.is_empty());
    assert!(changes.iter().all(|c| c["actor"] == uae_id.as_str()), "{changes:?}");
    let transitions: Vec<Value> = s.audit().into_iter().filter(|a| a["event"] == "transition").collect();
    assert!(!transitions.is_empty());
    assert!(
        transitions.iter().all(|t| t["actor"] == uae_id.as_str()),
        "{transitions:?}"
    );

    // Corridor B was never touched: no canary or promotion reached UK-NG, nothing killed there.
    let (_, view, _) = send(
        &s,
        &call(Method::GET, "/admin/v1/models/risk-assessor", None, None),
        Some(&ops),
    )
    .await;
    assert!(!view.to_string().contains("UK-NG"), "{view}");
    let (_, g, _) = send(&s, &call(Method::GET, "/admin/v1/governance", None, None), Some(&ops)).await;
    assert!(!g["state"].to_string().contains("UK-NG"), "{g}");
}

#[test]
fn authentication_can_be_switched_off_only_on_loopback() {
    let (code, _, err) = invariant(&["serve", "--dev-no-auth", "--http-addr", "0.0.0.0:0", "--grpc-addr", ""]);
    assert_ne!(code, 0);
    assert!(err.contains("--dev-no-auth is refused on 0.0.0.0:0"), "{err}");
    let (code, _, err) = invariant(&[
        "serve",
        "--dev-no-auth",
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "[::]:0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("refused on [::]:0"), "{err}");
}

#[test]
fn keys_are_created_listed_and_revoked_without_their_secret_ever_being_stored() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("invariant.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n{}",
            dir.path().join("state").display(),
            std::fs::read_to_string(workspace_root().join("invariant.toml"))
                .unwrap()
                .replace("state_dir = \".invariant\"", ""),
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let (code, out, err) = invariant(&[
        "keys",
        "create",
        "--config",
        &config,
        "--name",
        "checkout",
        "--role",
        "infer,features:read",
        "--corridor",
        "uae-sa",
        "--corridor",
        "US-EG",
    ]);
    assert_eq!(code, 0, "{err}");
    let secret = out
        .lines()
        .find(|l| l.starts_with("inv_"))
        .unwrap_or_else(|| panic!("no key printed: {out}"))
        .to_string();
    assert!(out.contains("only time"), "{out}");
    let (code, _, err) = invariant(&[
        "keys",
        "create",
        "--config",
        &config,
        "--name",
        "x",
        "--role",
        "root",
        "--corridor",
        "*",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown role 'root'"), "{err}");
    let (code, list, err) = invariant(&["keys", "list", "--config", &config, "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "checkout");
    assert_eq!(list[0]["corridors"], json!(["UAE-SA", "US-EG"]));
    assert_eq!(list[0]["roles"], json!(["infer", "features:read"]));
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert!(secret.contains(&id));
    let stored = std::fs::read_to_string(dir.path().join("state/keys.json")).unwrap();
    assert!(!stored.contains(&secret[21..]), "the secret is stored");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("state/key-pepper"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (code, _, err) = invariant(&["keys", "revoke", "--config", &config, &id]);
    assert_eq!(code, 0, "{err}");
    let (_, text, _) = invariant(&["keys", "list", "--config", &config]);
    assert!(text.contains("revoked"), "{text}");
    let (code, _, err) = invariant(&["keys", "revoke", "--config", &config, "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("no API key with id 'nope'"), "{err}");
}

#[tokio::test]
async fn keys_created_and_revoked_on_one_key_file_reach_every_replica_within_a_second() {
    let shared = tempfile::tempdir().unwrap();
    let auth = format!(
        "[auth]\nkeys = \"{}\"\npepper_file = \"{}\"\n",
        shared.path().join("keys.json").display(),
        shared.path().join("key-pepper").display()
    );
    let start = || {
        Server::start_with(ServerOptions {
            auth: true,
            top: auth.clone(),
            extra: "[control]\npoll_ms = 250\n".into(),
            ..Default::default()
        })
    };
    let (a, b) = (start().await, start().await);
    // Created through replica a's configuration, accepted by both.
    let (id, key) = a.create_key("svc", &["infer"], &["UAE-SA"]).await;
    let probe = call(Method::GET, "/v2", None, None);
    let bearer = format!("Bearer {key}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while send(&b, &probe, Some(&bearer)).await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "replica b never accepted the key");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let config = b.config_path().display().to_string();
    let (code, _, err) = invariant(&["keys", "revoke", "--config", &config, &id]);
    assert_eq!(code, 0, "{err}");
    let revoked = std::time::Instant::now();
    for s in [&a, &b] {
        loop {
            let (status, body, _) = send(s, &probe, Some(&bearer)).await;
            if status == 401 {
                assert!(body["error"].as_str().unwrap_or_default().contains("revoked"), "{body}");
                break;
            }
            assert!(
                revoked.elapsed() < std::time::Duration::from_secs(1),
                "still accepted after 1 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn request_limits_refuse_with_the_field_and_the_limit_and_the_server_keeps_serving() {
    let s = Server::start_with(ServerOptions {
        top: "[limits.request]\nmax_entities = 3\nmax_push_rows = 2\nmax_bytes_element = 8\n".into(),
        ..Default::default()
    })
    .await;
    let keys = |n: usize| (0..n).map(|i| format!("u{i}")).collect::<Vec<_>>();
    let (status, body) = s
        .post(
            "/v1/features/get-online",
            &json!({"feature_service": "x", "entities": {"account_id": keys(2), "other": keys(2)}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("4 entity keys exceed the limit of 3 (limits.request.max_entities)"),
        "{body}"
    );
    let (status, body) = s
        .post(
            "/v1/features/push",
            &json!({"feature_view": "v", "df": {"account_id": ["a", "b", "c"], "event_timestamp": [1, 2, 3]}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("3 rows exceed the limit of 2 per push"),
        "{body}"
    );
    let mut enriched = trust_request(&[TRUST_ROW]);
    enriched["parameters"] = json!({"entities": {"account_id": keys(5)}});
    let (status, body) = s.post("/v2/models/trust-scorer/versions/1.2.0/infer", &enriched).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("parameters.entities: 5 entity keys"),
        "{body}"
    );
    let bytes = json!({"inputs": [{"name": "features", "shape": [1], "datatype": "BYTES", "data": ["0123456789"]}]});
    let (status, body) = s.post("/v2/models/trust-scorer/versions/1.2.0/infer", &bytes).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("element 0 is 10 bytes, over the limit of 8"),
        "{body}"
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn malformed_paths_wrong_methods_and_large_admin_bodies_answer_v2_error_bodies() {
    let s = Server::start_with(ServerOptions {
        max_body_bytes: 1024,
        ..Default::default()
    })
    .await;
    for (method, path, body) in [
        (Method::GET, "/v2/models/%ff/ready", None),
        (Method::POST, "/v2/models/%ff/versions/1.0.0/infer", Some(json!({}))),
        (Method::DELETE, "/v2/health/live", None),
        (Method::PUT, "/admin/v1/governance", Some(json!({}))),
        (
            Method::POST,
            "/admin/v1/models/trust-scorer/versions/1.1.0/stage",
            Some(json!({"reason": "x".repeat(4096)})),
        ),
    ] {
        let (status, reply, headers) = send(&s, &call(method.clone(), path, body, None), None).await;
        assert!([400, 405, 413].contains(&status), "{method} {path}: {status} {reply}");
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{method} {path}"
        );
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {reply}"
        );
    }
    s.assert_still_serving().await;
}

#[tokio::test]
async fn the_gate_sends_its_key_to_a_server_that_requires_one() {
    let (s, repo) = keyed_server().await;
    let (_, key) = s.create_key("ci", &["infer"], &["UAE-SA"]).await;
    let gate = |key: Option<&str>| {
        let mut command = std::process::Command::new(binary());
        command
            .args(["gate", "trust-scorer:1.2.0", "--server", &s.url])
            .args(repo.args())
            .current_dir(workspace_root())
            .env_remove("INVARIANT_API_KEY");
        if let Some(k) = key {
            command.env("INVARIANT_API_KEY", k);
        }
        let out = command.output().expect("run the gate");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = gate(Some(&key));
    assert_eq!(code, 0, "{text}");
    let (code, text) = gate(None);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("401") || text.contains("missing API key"), "{text}");
}

/// ONNX Runtime's builds keep a device id and an event store under the user's cache directory
/// and send usage events to Microsoft from any process that creates an environment, unless
/// `ORT_DISABLE_TELEMETRY` is set. The server sets it for itself, whatever it was started with.
#[tokio::test]
async fn the_server_keeps_onnx_runtime_from_writing_a_device_id_or_sending_telemetry() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start_with(ServerOptions {
        env: vec![
            ("HOME".into(), home.path().display().to_string()),
            ("XDG_CACHE_HOME".into(), home.path().join("cache").display().to_string()),
            // As a user's environment might say: "0" leaves the runtime's telemetry on.
            ("ORT_DISABLE_TELEMETRY".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await;
    // A version on ONNX Runtime is loaded, so the runtime's environment exists.
    let (status, meta) = server.get("/v2/models/risk-assessor").await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["runtime"]["name"], "onnxruntime", "{meta}");
    let (status, ready) = server.get("/v2/models/risk-assessor/ready").await;
    assert_eq!(status, 200, "{ready}");
    let written = walk(home.path());
    assert!(written.is_empty(), "ONNX Runtime wrote under HOME: {written:?}");
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
