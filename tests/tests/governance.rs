//! Corridor governance against the real binary: kill switches (HTTP, gRPC through
//! tritonclient, reply-cache hits), freezes (in-flight requests finish, feature writes
//! refused), rate limits (429 + Retry-After, no spill-over), circuit breakers and the cache
//! fallback, degradation levels (operator-set and computed), flags, persistence across
//! kill -9, changes from the CLI reaching a running server within a second, compare-and-set,
//! and corridor B's isolation while corridor A is flooded, killed, frozen and failing.

use invariant_blackbox::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TRUST: &str = "/v2/models/trust-scorer/versions/1.1.0/infer";

fn trust_body() -> String {
    trust_request(&[TRUST_ROW]).to_string()
}

async fn infer(s: &Server, path: &str, body: &str, corridor: &str) -> (u16, Value) {
    s.post_raw(path, body.to_string(), &[("x-corridor", corridor)]).await
}

/// A risk-assessor 1.1.0 request in `corridor`.
async fn risk(s: &Server, corridor: &str) -> (u16, Value) {
    let body = json!({"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32",
        "data": [1200.0, 0.3, 400.0, 2.0, 1.0, 0.0, 100.0, 12.0, 0.2, 1.0]}]});
    infer(
        s,
        "/v2/models/risk-assessor/versions/1.1.0/infer",
        &body.to_string(),
        corridor,
    )
    .await
}

async fn govern(s: &Server, change: Value) -> (u16, Value) {
    s.post("/admin/v1/governance", &change).await
}

fn error_of(r: &Value) -> String {
    r["error"].as_str().unwrap_or_default().to_string()
}

/// Runs python from the project venv with tritonclient; returns its stdout.
fn python(script: &str, grpc: &str) -> String {
    let py = workspace_root().join(".venv/bin/python");
    assert!(py.exists(), "{} is missing: run scripts/setup-python.sh", py.display());
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .env("GRPC", grpc)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// gRPC ModelInfer of trust-scorer 1.1.0 in `corridor` through tritonclient: `OK` or the
/// status code and message of the error.
async fn grpc_trust(s: &Server, corridor: &str) -> String {
    let script = format!(
        r#"
import os, numpy as np, tritonclient.grpc as g
from tritonclient.utils import InferenceServerException
c = g.InferenceServerClient(os.environ["GRPC"])
x = g.InferInput("features", [1, 8], "FP32")
x.set_data_from_numpy(np.array([[{row}]], dtype=np.float32))
try:
    c.infer("trust-scorer", [x], model_version="1.1.0", headers={{"x-corridor": "{corridor}"}})
    print("OK")
except InferenceServerException as e:
    print(e.status(), e.message())
"#,
        row = TRUST_ROW.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
    );
    let grpc = s.grpc.clone();
    tokio::task::spawn_blocking(move || python(&script, &grpc))
        .await
        .unwrap()
}

/// Polls `check` every 25 ms until it holds or `within` passes; returns the time it took.
async fn within<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

#[tokio::test]
async fn kill_switches_refuse_their_scope_only_over_http_grpc_and_reply_cache_hits() {
    let s = Server::start().await;
    let body = trust_body();
    // Warm the reply cache: the second answer is a stored reply.
    for _ in 0..2 {
        assert_eq!(infer(&s, TRUST, &body, "UAE-SA").await.0, 200);
    }
    let (status, r) = govern(
        &s,
        json!({"op": "kill", "scope": "model:trust-scorer@UAE-SA", "reason": "incident 7"}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["revision"], 1);
    // The exact repeat (a reply-cache hit before), a new input, and the default corridor (no
    // header: admitted after the body is parsed) are all refused.
    let other_row = trust_request(&[[1.0, 2.0, 0.1, 4.0, 2.0, 1.0, 0.0, 0.0]]).to_string();
    for (b, headers) in [
        (&body, vec![("x-corridor", "UAE-SA")]),
        (&other_row, vec![("x-corridor", "UAE-SA")]),
        (&body, vec![]),
    ] {
        let (status, r) = s.post_raw(TRUST, b.clone(), &headers).await;
        assert_eq!(status, 503, "{r}");
        let e = error_of(&r);
        for part in ["model:trust-scorer@UAE-SA", "incident 7", "since", "dev-no-auth"] {
            assert!(e.contains(part), "'{part}' missing from: {e}");
        }
    }
    let grpc = grpc_trust(&s, "UAE-SA").await;
    assert!(
        grpc.contains("UNAVAILABLE") && grpc.contains("model:trust-scorer@UAE-SA") && grpc.contains("incident 7"),
        "{grpc}"
    );
    // Named in the header, the corridor is admitted before the body is parsed: a broken body
    // is refused by the switch, not parsed; without the header it is parsed first (400).
    let (status, r) = s.post_raw(TRUST, "{not json", &[("x-corridor", "UAE-SA")]).await;
    assert_eq!(status, 503, "{r}");
    assert!(error_of(&r).contains("kill switch"), "{r}");
    let (status, r) = s.post_raw(TRUST, "{not json", &[]).await;
    assert_eq!(status, 400, "{r}");
    // Every other scope is untouched: the same model elsewhere, another model here.
    assert_eq!(infer(&s, TRUST, &body, "UK-NG").await.0, 200);
    assert_eq!(grpc_trust(&s, "US-EG").await.trim(), "OK");
    let (status, r) = infer(&s, "/v2/models/trust-scorer/versions/1.2.0/infer", &body, "UAE-SA").await;
    assert_eq!(status, 503, "model-in-corridor covers every version of the model: {r}");
    let (status, r) = risk(&s, "UAE-SA").await;
    assert_eq!(status, 200, "another model in the killed corridor: {r}");

    // The global switch stops everything, with the platform's name; revive restores.
    assert_eq!(
        govern(&s, json!({"op": "kill", "scope": "global", "reason": "drill"}))
            .await
            .0,
        200
    );
    let (status, r) = infer(&s, TRUST, &body, "UK-NG").await;
    assert_eq!(status, 503);
    assert!(error_of(&r).contains("FF_EMERGENCY_DISABLE_ALL"), "{r}");
    // Level 4 everywhere, visible in the corridor view within a second.
    let level4 = within(Duration::from_secs(1), || async {
        s.get("/admin/v1/corridors/UK-NG").await.1["level"] == 4
    })
    .await;
    assert!(level4.is_some(), "{}", s.get("/admin/v1/corridors/UK-NG").await.1);
    assert_eq!(govern(&s, json!({"op": "revive", "scope": "global"})).await.0, 200);
    assert_eq!(infer(&s, TRUST, &body, "UK-NG").await.0, 200);
    // Reviving what is not killed names the scope.
    let (status, r) = govern(&s, json!({"op": "revive", "scope": "market:1"})).await;
    assert_eq!(status, 404, "{r}");
    assert!(error_of(&r).contains("market:1"), "{r}");
    // Bad changes name the field.
    let (status, r) = govern(&s, json!({"op": "kill", "scope": "corridor:XX-YY", "reason": ""})).await;
    assert_eq!(status, 400);
    assert!(error_of(&r).contains("XX-YY"), "{r}");
    let (status, r) = govern(&s, json!({"op": "kill", "scope": "planet:mars"})).await;
    assert_eq!(status, 400);
    assert!(error_of(&r).contains("planet:mars"), "{r}");
    // Every change is audited with its actor.
    let changes: Vec<Value> = s.audit().into_iter().filter(|a| a["event"] == "governance").collect();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert_eq!(changes[0]["actor"], "dev-no-auth");
    assert_eq!(changes[0]["change"]["op"], "kill");
    assert_eq!(
        govern(&s, json!({"op": "revive", "scope": "model:trust-scorer@UAE-SA"}))
            .await
            .0,
        200
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn changes_persist_across_kill_9_and_reach_a_running_server_from_the_cli_within_a_second() {
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("governance.json");
    let options = ServerOptions {
        extra: format!(
            "[governance]\nstate = \"{}\"\nrefresh_ms = 100\n[control]\npoll_ms = 100\n",
            state_file.display()
        ),
        ..Default::default()
    };
    let mut a = Server::start_with(options.clone()).await;
    let config = a.dir().join("invariant.toml");
    let body = trust_body();
    assert_eq!(infer(&a, TRUST, &body, "UK-NG").await.0, 200);
    // The CLI works on the state file; the running server re-reads it.
    let (code, out, err) = invariant(&[
        "corridors",
        "freeze",
        "UK-NG",
        "--reason",
        "quarterly audit",
        "--actor",
        "risk-officer",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let took = within(Duration::from_secs(1), || async {
        infer(&a, TRUST, &body, "UK-NG").await.0 == 503
    })
    .await;
    assert!(took.is_some(), "the freeze did not reach the server within 1 s");
    let (_, r) = infer(&a, TRUST, &body, "UK-NG").await;
    assert!(
        error_of(&r).contains("frozen") && error_of(&r).contains("quarterly audit"),
        "{r}"
    );
    // Feature writes are refused too; other corridors are untouched.
    let push = json!({"feature_view": "account_stats",
        "df": {"account_id": ["a1"], "event_timestamp": [1.7e9], "completed_orders": [3.0]}});
    let (status, r) = a
        .post_raw("/v1/features/push", push.to_string(), &[("x-corridor", "UK-NG")])
        .await;
    assert_eq!(status, 503, "{r}");
    assert!(error_of(&r).contains("frozen"), "{r}");
    let (status, r) = a
        .post_raw("/v1/features/push", push.to_string(), &[("x-corridor", "UAE-SA")])
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(infer(&a, TRUST, &body, "UAE-SA").await.0, 200);

    // Acknowledged, so it survives kill -9.
    a.kill_9();
    let b = Server::start_with(options).await;
    let (status, r) = infer(&b, TRUST, &body, "UK-NG").await;
    assert_eq!(status, 503, "the freeze was lost across kill -9: {r}");
    // Compare-and-set: a change against an old revision is refused with 409.
    let (status, r) = govern(
        &b,
        json!({"op": "unfreeze", "scope": "corridor:UK-NG", "expected_revision": 0}),
    )
    .await;
    assert_eq!(status, 409, "{r}");
    assert!(error_of(&r).contains("revision"), "{r}");
    let (code, out, err) = invariant(&["corridors", "unfreeze", "UK-NG", "--server", &b.url]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(infer(&b, TRUST, &body, "UK-NG").await.0, 200);
    // The CLI reads what the server holds.
    let (code, out, _) = invariant(&["switches", "list", "--server", &b.url]);
    assert_eq!(code, 0);
    assert!(out.contains("no kill switch"), "{out}");
    let (code, out, err) = invariant(&["corridors", "status", "--server", &b.url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("UK-NG") && out.contains("full service"), "{out}");
    // Flags: set per scope, read through the API with the narrowest scope winning.
    for args in [
        vec!["flags", "set", "global", "review-queue-v2", "true"],
        vec!["flags", "set", "market:1", "review-queue-v2", "false"],
    ] {
        let mut args = args;
        args.extend(["--server", &b.url]);
        let (code, out, err) = invariant(&args);
        assert_eq!(code, 0, "{out}{err}");
    }
    let (_, f) = b.get("/admin/v1/flags?corridor=UK-NG").await;
    assert_eq!(f["flags"]["review-queue-v2"], false, "{f}");
    let (_, f) = b.get("/admin/v1/flags?corridor=UAE-SA").await;
    assert_eq!(f["flags"]["review-queue-v2"], true, "{f}");
    let (status, f) = b.get("/admin/v1/flags?corridor=XX-YY").await;
    assert_eq!(status, 400, "{f}");
    let audit = audit_records(&a.audit_dir());
    assert!(
        audit
            .iter()
            .any(|r| r["event"] == "governance" && r["actor"] == "risk-officer"),
        "the CLI's change is audited: {audit:?}"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_never_spill_over() {
    let s = Server::start_with(ServerOptions {
        uk_ng: "rate_limit = 5\n".into(),
        ..Default::default()
    })
    .await;
    let body = trust_body();
    let client = http_client();
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..20 {
        // Mostly reply-cache hits: they count against the limit like any answer.
        let r = client
            .post(format!("{}{TRUST}", s.url))
            .header("x-corridor", "UK-NG")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=2).contains(&retry), "{retry}");
                let v: Value = r.json().await.unwrap();
                assert!(
                    error_of(&v).contains("corridor:UK-NG") && error_of(&v).contains("5 requests/s"),
                    "{v}"
                );
            }
            other => panic!("unexpected {other}"),
        }
        // Another corridor at the same moment is never refused.
        assert_eq!(infer(&s, TRUST, &body, "UAE-SA").await.0, 200);
    }
    assert!(limited >= 10, "{ok} answered, {limited} limited");
    assert!((5..=8).contains(&ok), "{ok} answered, {limited} limited");
    // A limit set at run time for one model in one corridor.
    let (status, r) = govern(
        &s,
        json!({"op": "set_limit", "scope": "model:trust-scorer@US-EG", "rate_per_s": 0.5, "burst": 2}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(infer(&s, TRUST, &body, "US-EG").await.0, 200);
    assert_eq!(infer(&s, TRUST, &body, "US-EG").await.0, 200);
    let (status, r) = infer(&s, TRUST, &body, "US-EG").await;
    assert_eq!(status, 429, "{r}");
    assert!(error_of(&r).contains("model:trust-scorer@US-EG"), "{r}");
    let grpc = grpc_trust(&s, "US-EG").await;
    assert!(grpc.contains("RESOURCE_EXHAUSTED"), "{grpc}");
    let (status, r) = risk(&s, "US-EG").await;
    assert_eq!(status, 200, "another model of the corridor keeps its budget: {r}");
    let (status, r) = govern(
        &s,
        json!({"op": "set_limit", "scope": "corridor:US-EG", "rate_per_s": -1}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error_of(&r).contains("rate_per_s"), "{r}");
}

fn probe(x: f64) -> String {
    json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [x, x]}]}).to_string()
}

const PROBE: &str = "/v2/models/canary-probe/versions/1.1.0/infer";

#[tokio::test]
async fn breakers_open_per_corridor_half_open_close_and_fall_back_to_the_cache() {
    let repo = RepoCopy::new().with_fixture("canary-probe").with_fixture("slow-probe");
    // This copy declares the cache fallback.
    let manifest = repo.version_dir("canary-probe", "1.1.0").join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("[inference]\n", "[inference]\nfallback = \"cache\"\n"),
    )
    .unwrap();
    let s = Server::start_with(ServerOptions {
        extra: "[governance.breaker]\nfailures = 3\nopen_seconds = 1\nsuccesses = 2\n\
                [governance.degradation]\nmin_requests = 1000\n"
            .into(),
        ..repo.options()
    })
    .await;
    // A caller's own short deadline is not the model's failure: it never opens the breaker.
    let slow =
        json!({"inputs": [{"name": "x", "shape": [1, 256], "datatype": "FP32", "data": vec![0.5; 256]}]}).to_string();
    let slow_path = "/v2/models/slow-probe/versions/1.0.0/infer";
    for _ in 0..5 {
        let (status, r) = s
            .post_raw(
                slow_path,
                slow.clone(),
                &[("x-corridor", "US-EG"), ("x-deadline-ms", "1")],
            )
            .await;
        assert_eq!(status, 504, "{r}");
    }
    let (status, r) = infer(&s, slow_path, &slow, "US-EG").await;
    assert_eq!(status, 200, "five caller deadlines opened the breaker: {r}");
    // An answer to keep in the cache, then three engine failures in UK-NG.
    assert_eq!(infer(&s, PROBE, &probe(1.0), "UK-NG").await.0, 200);
    for _ in 0..3 {
        let (status, r) = infer(&s, PROBE, &probe(10.0), "UK-NG").await;
        assert_eq!(status, 500, "{r}");
    }
    // Open: the cached input answers from the fallback, flagged; an uncached one is refused
    // fast, naming the breaker.
    let (status, r) = infer(&s, PROBE, &probe(1.0), "UK-NG").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["parameters"]["degraded"], true, "{r}");
    assert_eq!(r["parameters"]["source"], "cache", "{r}");
    assert!(
        r["parameters"]["degraded_reason"]
            .as_str()
            .unwrap()
            .contains("circuit breaker"),
        "{r}"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("invariant_inference_requests_total")
                && l.contains("model=\"canary-probe\"")
                && l.contains("source=\"fallback\"")
                && l.contains("corridor=\"UK-NG\"")),
        "a fallback answer is counted: {metrics}"
    );
    let started = Instant::now();
    let (status, r) = infer(&s, PROBE, &probe(2.0), "UK-NG").await;
    assert_eq!(status, 503, "{r}");
    assert!(
        error_of(&r).contains("circuit breaker") && error_of(&r).contains("no cached answer"),
        "{r}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    // Another corridor's breaker for the same model is its own: still closed.
    assert_eq!(infer(&s, PROBE, &probe(10.0), "UAE-SA").await.0, 500);
    assert_eq!(infer(&s, PROBE, &probe(2.0), "UAE-SA").await.0, 200);
    let (_, c) = s.get("/admin/v1/corridors/UK-NG").await;
    assert_eq!(c["breakers"]["canary-probe"], "open", "{c}");
    // After open_seconds it lets trials through; two successes close it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(infer(&s, PROBE, &probe(2.0), "UK-NG").await.0, 200);
    assert_eq!(infer(&s, PROBE, &probe(3.0), "UK-NG").await.0, 200);
    let (status, r) = infer(&s, PROBE, &probe(0.5), "UK-NG").await;
    assert_eq!(status, 200, "{r}");
    assert!(r["parameters"].get("degraded").is_none(), "{r}");
    // Breaker transitions are audited by the governance task (every refresh_ms): wait for it.
    let expected = ["UK-NG closed->open", "UK-NG open->half_open", "UK-NG half_open->closed"];
    let deadline = Instant::now() + Duration::from_secs(3);
    let transitions = loop {
        let transitions: Vec<String> = s
            .audit()
            .into_iter()
            .filter(|a| a["event"] == "circuit_breaker")
            .map(|a| {
                format!(
                    "{} {}->{}",
                    a["corridor"].as_str().unwrap(),
                    a["from"].as_str().unwrap(),
                    a["to"].as_str().unwrap()
                )
            })
            .collect();
        if transitions.len() >= expected.len() || Instant::now() > deadline {
            break transitions;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(transitions, expected, "{transitions:?}");
    // The breaker gauge follows: closed again, and every transition in UK-NG's audit chain.
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("invariant_circuit_breaker_open{corridor=\"UK-NG\",model=\"canary-probe\"} 0"),
        "{metrics}"
    );
    assert!(s
        .audit()
        .iter()
        .filter(|a| a["event"] == "circuit_breaker")
        .all(|a| a["chain"] == "UK-NG"));
}

#[tokio::test]
async fn degradation_levels_behave_as_documented_and_are_computed_from_errors() {
    let repo = RepoCopy::new().with_fixture("canary-probe");
    let s = Server::start_with(ServerOptions {
        extra: "[governance]\nrefresh_ms = 100\n[governance.breaker]\nfailures = 1000\n\
                [governance.degradation]\nmin_requests = 10\nwindow_seconds = 30\n"
            .into(),
        ..repo.options()
    })
    .await;
    let body = trust_body();
    let fresh = |i: u32| trust_request(&[[i as f64, 2.0, 0.1, 4.0, 2.0, 1.0, 0.0, 0.0]]).to_string();
    assert_eq!(infer(&s, TRUST, &body, "UK-NG").await.0, 200);
    let push = json!({"feature_view": "account_stats",
        "df": {"account_id": ["a1"], "event_timestamp": [1.7e9], "completed_orders": [3.0]}})
    .to_string();
    let level = |l: u8| json!({"op": "set_level", "corridor": "UK-NG", "level": l, "reason": "drill"});
    // Level 1: a model without a fallback keeps computing.
    assert_eq!(govern(&s, level(1)).await.0, 200);
    let (status, r) = infer(&s, TRUST, &fresh(1), "UK-NG").await;
    assert_eq!(status, 200, "{r}");
    assert!(r["parameters"].get("degraded").is_none(), "{r}");
    // Level 2: cached answers only, flagged; a miss is refused; feature writes still pass.
    assert_eq!(govern(&s, level(2)).await.0, 200);
    let (status, r) = infer(&s, TRUST, &body, "UK-NG").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["parameters"]["degraded"].clone(), r["parameters"]["source"].clone()),
        (json!(true), json!("cache"))
    );
    let (status, r) = infer(&s, TRUST, &fresh(2), "UK-NG").await;
    assert_eq!(status, 503, "{r}");
    assert!(error_of(&r).contains("level 2"), "{r}");
    assert_eq!(
        s.post_raw("/v1/features/push", push.clone(), &[("x-corridor", "UK-NG")])
            .await
            .0,
        200
    );
    // Level 3: as 2, and feature writes are refused.
    assert_eq!(govern(&s, level(3)).await.0, 200);
    assert_eq!(infer(&s, TRUST, &body, "UK-NG").await.0, 200);
    let (status, r) = s
        .post_raw("/v1/features/push", push.clone(), &[("x-corridor", "UK-NG")])
        .await;
    assert_eq!(status, 503, "{r}");
    assert!(error_of(&r).contains("level 3"), "{r}");
    // Level 4: everything refused, cached or not.
    assert_eq!(govern(&s, level(4)).await.0, 200);
    let (status, r) = infer(&s, TRUST, &body, "UK-NG").await;
    assert_eq!(status, 503, "{r}");
    assert!(error_of(&r).contains("emergency"), "{r}");
    // Other corridors never moved.
    assert_eq!(infer(&s, TRUST, &fresh(3), "UAE-SA").await.0, 200);
    assert_eq!(
        govern(&s, json!({"op": "clear_level", "corridor": "UK-NG"})).await.0,
        200
    );
    assert_eq!(infer(&s, TRUST, &fresh(4), "UK-NG").await.0, 200);

    // Computed: an error rate over 10 % in US-EG's window makes it level 2 by itself.
    for i in 0..10 {
        let x = if i < 3 { 10.0 } else { 1.0 + i as f64 / 10.0 };
        infer(&s, PROBE, &probe(x), "US-EG").await;
    }
    let computed = within(Duration::from_secs(1), || async {
        s.get("/admin/v1/corridors/US-EG").await.1["computed_level"] == 2
    })
    .await;
    assert!(computed.is_some(), "{}", s.get("/admin/v1/corridors/US-EG").await.1);
    let (status, r) = infer(&s, TRUST, &fresh(5), "US-EG").await;
    assert_eq!(status, 503, "a computed level 2 serves cached answers only: {r}");
    let changes: Vec<Value> = s.audit().into_iter().filter(|a| a["event"] == "degradation").collect();
    assert!(
        changes
            .iter()
            .any(|c| c["corridor"] == "US-EG" && c["to"] == 2 && c["reason"].as_str().unwrap().contains("error rate")),
        "{changes:?}"
    );
    assert!(
        changes.iter().any(|c| c["corridor"] == "UK-NG" && c["to"] == 4),
        "{changes:?}"
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("invariant_corridor_degradation_level{corridor=\"US-EG\"} 2"),
        "{metrics}"
    );
}

/// Corridor B's steady load during an isolation test: UAE-SA inference with distinct inputs
/// (computed answers) and, when given, a feature read each round; every non-200 is kept.
struct BLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u32, Vec<String>)>,
}

impl BLoad {
    fn start(s: std::sync::Arc<Server>, feature_read: Option<String>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut n = 0u32;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let body = trust_request(&[[n as f64, 2.0, 0.1, 4.0, 2.0, 1.0, 0.0, 0.0]]).to_string();
                let (status, r) = infer(&s, TRUST, &body, "UAE-SA").await;
                if status != 200 {
                    errors.push(format!("infer {status} {r}"));
                }
                if let Some(read) = &feature_read {
                    let (status, r) = s
                        .post_raw("/v1/features/get-online", read.clone(), &[("x-corridor", "UAE-SA")])
                        .await;
                    if status != 200 {
                        errors.push(format!("features {status} {r}"));
                    }
                }
            }
            (n, errors)
        });
        Self { stop, task }
    }

    /// Stops the load; asserts it made more than `min` rounds and never saw an error.
    async fn finish(self, min: u32) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (n, errors) = self.task.await.unwrap();
        assert!(n > min, "B made only {n} rounds");
        assert!(errors.is_empty(), "B saw errors: {errors:?}");
    }
}

/// Corridor B under steady load while corridor A is flooded past its limit, killed, frozen
/// while busy and given a version that fails every call: B never sees an error.
#[tokio::test]
async fn corridor_b_never_sees_an_error_caused_by_corridor_a() {
    let repo = RepoCopy::new().with_fixture("canary-probe").with_fixture("slow-probe");
    let s = std::sync::Arc::new(
        Server::start_with(ServerOptions {
            uk_ng: "rate_limit = 20\n".into(),
            extra: "[governance.breaker]\nfailures = 3\nopen_seconds = 30\n".into(),
            ..repo.options()
        })
        .await,
    );
    // B: UAE-SA, steady, distinct inputs (computed answers).
    let b = BLoad::start(s.clone(), None);
    let a = "UK-NG";
    let body = trust_body();
    // (1) A flooded at 10x its limit for a second: 429s, with some answers.
    let flood: Vec<_> = (0..200)
        .map(|_| {
            let (s, body) = (s.clone(), body.clone());
            tokio::spawn(async move { infer(&s, TRUST, &body, a).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for f in flood {
        statuses.push(f.await.unwrap());
    }
    assert!(statuses.contains(&429) && statuses.contains(&200), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // (2) A killed.
    govern(
        &s,
        json!({"op": "kill", "scope": format!("corridor:{a}"), "reason": "phase 2"}),
    )
    .await;
    assert_eq!(infer(&s, TRUST, &body, a).await.0, 503);
    govern(&s, json!({"op": "revive", "scope": format!("corridor:{a}")})).await;
    // (3) A frozen while busy: the slow request in flight finishes, new ones are refused.
    let slow = {
        let s = s.clone();
        let data: Vec<f64> = (0..64 * 256).map(|i| ((i % 7) as f64) / 10.0).collect();
        let body = json!({"inputs": [{"name": "x", "shape": [64, 256], "datatype": "FP32", "data": data}]}).to_string();
        tokio::spawn(async move { infer(&s, "/v2/models/slow-probe/versions/1.0.0/infer", &body, a).await })
    };
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(
        govern(
            &s,
            json!({"op": "freeze", "scope": format!("corridor:{a}"), "reason": "phase 3"})
        )
        .await
        .0,
        200
    );
    let (status, r) = infer(&s, TRUST, &body, a).await;
    assert_eq!(status, 503, "{r}");
    let (status, r) = slow.await.unwrap();
    assert_eq!(status, 200, "the request in flight when A froze must finish: {r}");
    govern(&s, json!({"op": "unfreeze", "scope": format!("corridor:{a}")})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // (5) A's version fails every call: 500s, then its breaker opens (503).
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(infer(&s, PROBE, &probe(10.0), a).await.0);
    }
    assert_eq!(seen, [500, 500, 500, 503, 503]);
    b.finish(50).await;
}

/// Corridor B's inference and feature reads keep answering while corridor A's own Redis is
/// killed, and then hung (SIGSTOP: it accepts connections and never answers), under many
/// concurrent feature reads in A; A's reads answer 503 naming its Redis within the timeout, or
/// 429 at once past A's feature bulkhead.
#[tokio::test]
async fn corridor_b_is_untouched_when_corridor_as_redis_is_down_or_hung() {
    let redis_b = RedisServer::start();
    let mut redis_a = RedisServer::start();
    let port_a = redis_a.port;
    let s = std::sync::Arc::new(
        Server::start_with(ServerOptions {
            top: format!(
                "feature_backend = \"redis\"\nfeature_redis_url = \"{}\"\n",
                redis_b.url()
            ),
            uk_ng: format!("feature_redis_url = \"{}\"\n", redis_a.url()),
            ..Default::default()
        })
        .await,
    );
    let read = json!({"features": ["account_stats:completed_orders"], "entities": {"account_id": ["a1"]}}).to_string();
    let read_in = |corridor: &'static str| {
        let (s, read) = (s.clone(), read.clone());
        async move {
            s.post_raw("/v1/features/get-online", read, &[("x-corridor", corridor)])
                .await
        }
    };
    assert_eq!(read_in("UK-NG").await.0, 200);
    let b = BLoad::start(s.clone(), Some(read.clone()));
    let flood = move |label: &'static str| async move {
        let started = Instant::now();
        let reads: Vec<_> = (0..64).map(|_| tokio::spawn(read_in("UK-NG"))).collect();
        for r in reads {
            let (status, body) = r.await.unwrap();
            // 503: the store did not answer; 429: A's feature bulkhead was full (more than
            // pools.feature_concurrency reads in flight), refused at once.
            assert!(status == 503 || status == 429, "{label}: {status} {body}");
            assert!(error_of(&body).contains("UK-NG"), "{label}: {body}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{label}: took {:?}",
            started.elapsed()
        );
    };
    redis_a.kill();
    flood("redis killed").await;
    let redis_a = RedisServer::start_on(port_a);
    redis_a.pause();
    flood("redis hung").await;
    redis_a.resume();
    let back = within(Duration::from_secs(5), || async { read_in("UK-NG").await.0 == 200 }).await;
    assert!(back.is_some(), "A's reads did not come back after its Redis did");
    b.finish(20).await;
}

/// A version declaring `fallback = "rules"`: refused until its golden vectors record the rules'
/// answers; then, with its breaker open, each row gets the first matching rule's outputs,
/// flagged `source = "rules"`.
#[tokio::test]
async fn rule_fallbacks_are_covered_by_golden_vectors_and_answer_when_the_breaker_is_open() {
    let repo = RepoCopy::new().with_fixture("canary-probe");
    let manifest = repo.version_dir("canary-probe", "1.1.0").join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let rules =
        "\n[[fallback_rules]]\ninput = \"x\"\ncolumn = 0\nop = \">\"\nvalue = 2.5\noutputs = { y = [99.0, 99.0] }\n\n\
                 [[fallback_rules]]\noutputs = { y = [7.0, 7.0] }\n";
    std::fs::write(
        &manifest,
        text.replace("[inference]\n", "[inference]\nfallback = \"rules\"\n") + rules,
    )
    .unwrap();
    let mut args = vec!["models", "verify"];
    let repo_args = repo.args();
    args.extend(repo_args.iter().map(String::as_str));
    let (code, out, err) = invariant(&args);
    assert_ne!(
        code, 0,
        "a version whose golden vectors do not cover its rules must not verify"
    );
    assert!(format!("{out}{err}").contains("fallback_outputs"), "{out}{err}");
    let mut record = vec!["golden", "record", "canary-probe", "1.1.0", "--force"];
    record.extend(repo_args.iter().map(String::as_str));
    let (code, out, err) = invariant(&record);
    assert_eq!(code, 0, "{out}{err}");
    let golden = std::fs::read_to_string(repo.golden().join("canary-probe/1.1.0.jsonl")).unwrap();
    assert!(golden.contains("fallback_outputs"), "the rules' answers are recorded");
    let (code, out, err) = invariant(&args);
    assert_eq!(code, 0, "{out}{err}");

    let s = Server::start_with(ServerOptions {
        extra:
            "[governance.breaker]\nfailures = 3\nopen_seconds = 600\n[governance.degradation]\nmin_requests = 1000\n"
                .into(),
        ..repo.options()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(infer(&s, PROBE, &probe(10.0), "UK-NG").await.0, 500);
    }
    let two_rows =
        json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [2.9, 1.0, 0.5, 0.5]}]});
    let (status, r) = infer(&s, PROBE, &two_rows.to_string(), "UK-NG").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["parameters"]["degraded"], true, "{r}");
    assert_eq!(r["parameters"]["source"], "rules", "{r}");
    assert_eq!(r["outputs"][0]["data"], json!([99.0, 99.0, 7.0, 7.0]), "{r}");
    assert_eq!(r["outputs"][0]["shape"], json!([2, 2]), "{r}");
    // Elsewhere the model computes as usual.
    let (status, r) = infer(&s, PROBE, &two_rows.to_string(), "UAE-SA").await;
    assert_eq!(status, 200, "{r}");
    assert!(r["parameters"].get("degraded").is_none(), "{r}");
    assert_eq!(r["outputs"][0]["data"], json!([30.0, 20.0, 10.0, 10.0]), "{r}");
    // A bad rule table is refused at load, naming the field.
    let bad = RepoCopy::new().with_fixture("canary-probe");
    let m = bad.version_dir("canary-probe", "1.1.0").join("manifest.toml");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(
        &m,
        text.replace("[inference]\n", "[inference]\nfallback = \"rules\"\n")
            + "\n[[fallback_rules]]\noutputs = { y = [1.0] }\n",
    )
    .unwrap();
    let mut args = vec!["models", "verify"];
    let bad_args = bad.args();
    args.extend(bad_args.iter().map(String::as_str));
    let (code, out, err) = invariant(&args);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("fallback_rules[0].outputs.y"),
        "{out}{err}"
    );
}
