//! Observability, black-box: `/metrics` counts every request once by outcome (checked with
//! promtool's parser), histograms and `# HELP` for every family; readiness names what is not
//! ready (a failing ACTIVE version, a required Redis that is down); corridor health; JSON logs
//! with request ids, quiet CLI commands; the shipped alert rules pass promtool's unit tests.

use invariant_blackbox::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `promtool check metrics` on `text` (fails loudly when promtool is missing: scripts/test.sh
/// installs Debian's prometheus package).
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (scripts/test.sh installs the prometheus package)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every sample of `text` as (name{labels}, value).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The sum of the samples of family `name` whose labels include all of `labels`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(name) && k[name.len()..].starts_with(['{', ' ']))
        .filter(|(k, _)| labels.iter().all(|(n, v)| k.contains(&format!("{n}=\"{v}\""))))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_count_every_outcome_once_with_histograms_and_help() {
    let s = Server::start().await;
    let before = samples(&s.metrics().await);
    let ok = trust_request(&[TRUST_ROW]);
    assert_eq!(s.post("/v2/models/trust-scorer/infer", &ok).await.0, 200);
    assert_eq!(s.post("/v2/models/trust-scorer/infer", &ok).await.0, 200);
    let bad = json!({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [1, 2]}]});
    assert_eq!(s.post("/v2/models/trust-scorer/infer", &bad).await.0, 400);
    // A name the server does not know never becomes a label.
    assert_eq!(s.post("/v2/models/no-such-model-x9/infer", &ok).await.0, 404);
    let text = s.metrics().await;
    let after = samples(&text);
    let delta = |name: &str, labels: &[(&str, &str)]| sum(&after, name, labels) - sum(&before, name, labels);

    let requests = "invariant_inference_requests_total";
    let trust = ("model", "trust-scorer");
    assert_eq!(
        delta(requests, &[trust, ("code", "200"), ("class", "2xx"), ("status", "ok")]),
        2.0,
        "{text}"
    );
    assert_eq!(
        delta(requests, &[trust, ("source", "computed"), ("code", "200")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(
            requests,
            &[trust, ("code", "400"), ("class", "4xx"), ("status", "invalid_argument")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            requests,
            &[("model", "unknown"), ("code", "404"), ("status", "not_found")]
        ),
        1.0
    );
    assert_eq!(delta(requests, &[]), 4.0, "each request counted once");
    assert!(!text.contains("no-such-model-x9"), "raw names are not labels");

    // Latency histograms, in seconds, with buckets from 10 µs to 10 s.
    // The malformed body never resolved its corridor: it is timed with corridor="".
    let labels = [trust, ("corridor", "UAE-SA"), ("transport", "http_json")];
    assert_eq!(
        delta("invariant_request_duration_seconds_count", &labels),
        2.0,
        "{text}"
    );
    assert_eq!(
        delta(
            "invariant_request_duration_seconds_count",
            &[trust, ("transport", "http_json")]
        ),
        3.0
    );
    assert_eq!(delta("invariant_compute_seconds_count", &[trust]), 1.0, "{text}");
    assert_eq!(delta("invariant_queue_wait_seconds_count", &[trust]), 1.0, "{text}");
    for le in ["0.00001", "0.5", "10", "+Inf"] {
        assert!(
            text.contains(&format!(
                "invariant_request_duration_seconds_bucket{{model=\"trust-scorer\",corridor=\"UAE-SA\",transport=\"http_json\",le=\"{le}\"}}"
            )),
            "bucket {le}: {text}"
        );
    }
    assert_eq!(sum(&after, "invariant_batch_size_count", &[trust]), 1.0);
    // Gauges and counters read at scrape time.
    assert_eq!(
        sum(&after, "invariant_model_verified", &[trust, ("version", "1.2.0")]),
        1.0
    );
    assert!(sum(&after, "invariant_cache_misses_total", &[("corridor", "UAE-SA")]) >= 1.0);
    assert!(sum(&after, "invariant_pool_capacity", &[("corridor", "UAE-SA")]) > 0.0);
    assert!(sum(&after, "invariant_audit_records_total", &[("chain", "_server")]) >= 6.0);
    assert!(sum(&after, "invariant_audit_chain_head_sequence", &[("chain", "_server")]) >= 6.0);
    assert_eq!(sum(&after, "invariant_kill_switch_active", &[("scope", "global")]), 0.0);

    // Every family has # HELP and # TYPE, and the text passes promtool's parser and lint.
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or("");
            assert!(
                lines[..i].iter().any(|h| h.starts_with(&format!("# HELP {name} "))),
                "no # HELP for {name}"
            );
        }
    }
    let families = lines.iter().filter(|l| l.starts_with("# TYPE ")).count();
    assert!(families >= 15, "{families} families");
    let (ok, out) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics: {out}\n{text}");
    s.assert_still_serving().await;
}

#[tokio::test]
async fn readiness_names_a_required_redis_that_is_down_and_recovers() {
    let port = free_port();
    let s = Server::start_with(ServerOptions {
        extra: format!(
            "[cache]\nredis_url = \"redis://127.0.0.1:{port}/\"\nredis_required = true\nredis_timeout_ms = 200\n"
        ),
        ..ServerOptions::default()
    })
    .await;
    assert_eq!(s.get("/v2/health/live").await, (200, json!({"live": true})));
    let (status, r) = s.get("/v2/health/ready").await;
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["ready"], false);
    let why = r["not_ready"].to_string();
    assert!(why.contains("cache_l2") && why.contains("UAE-SA"), "{r}");
    let (status, h) = s.get("/v1/corridors/UAE-SA/health").await;
    assert_eq!(status, 503, "{h}");
    let l2 = h["dependencies"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "cache_l2"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        (l2["ok"].clone(), l2["required"].clone()),
        (json!(false), json!(true)),
        "{h}"
    );
    let (code, out, err) = invariant(&["corridors", "health", "UAE-SA", "--server", &s.url]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("UAE-SA: NOT READY") && out.contains("cache_l2: DOWN"),
        "{out}"
    );
    // Inference still answers (an unreachable L2 is a miss), and liveness never moved.
    assert_eq!(
        s.post("/v2/models/trust-scorer/infer", &trust_request(&[TRUST_ROW]))
            .await
            .0,
        200
    );

    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, r) = s.get("/v2/health/ready").await;
        if status == 200 {
            assert_eq!(r["ready"], true);
            assert_eq!(r["not_ready"], json!([]));
            break;
        }
        assert!(Instant::now() < deadline, "never ready once Redis is up: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, h) = s.get("/v1/corridors/UAE-SA/health").await;
    assert_eq!(status, 200, "{h}");
    let (code, out, err) = invariant(&["corridors", "health", "UAE-SA", "--server", &s.url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("UAE-SA: ready") && out.contains("cache_l2: ok") && out.contains("p99"),
        "{out}"
    );
    assert_eq!(h["recent"]["requests"], 1, "{h}");
    assert!(h["pool"]["capacity"].as_u64() > Some(0), "{h}");
    assert_eq!(h["governance"]["level"], 0, "{h}");
    assert_error(&s.get("/v1/corridors/FR-MA/health").await, 404, &["FR-MA"]);
    assert_error(&s.get("/v1/corridors/not-a-corridor/health").await, 400, &["corridor"]);
}

#[tokio::test]
async fn an_active_version_that_fails_verification_makes_the_server_not_ready() {
    // Pin trust-scorer 1.2.0 as ACTIVE (it answers by default, as the highest verified
    // version, without being pinned).
    let repo = RepoCopy::new();
    // The registry state must outlive the first server.
    let options = ServerOptions {
        state_dir: Some(repo.state_dir()),
        ..repo.options()
    };
    {
        let s = Server::start_with(options.clone()).await;
        for v in ["1.1.0", "1.2.0"] {
            let (status, r) = s.admin("trust-scorer", v, "promote", json!({"reason": "pin"})).await;
            assert_eq!(status, 200, "{r}");
        }
        assert_eq!(s.get("/v2/health/ready").await.0, 200);
    }
    let dir = repo.version_dir("trust-scorer", "1.2.0");
    bump_weight_one_ulp(&dir.join("model.safetensors"), "layers.2.weight", 0);
    rehash_manifest(&dir);
    let s = Server::start_with(options).await;
    let (status, r) = s.get("/v2/health/ready").await;
    assert_eq!(status, 503, "{r}");
    let why = r["not_ready"].to_string();
    assert!(
        why.contains("trust-scorer 1.2.0 (active)") && why.contains("[golden]"),
        "{r}"
    );
    assert_eq!(r["versions_failed"], 1, "{r}");
    // A failed verification is a critical alert's input.
    assert_eq!(
        sum(
            &samples(&s.metrics().await),
            "invariant_model_verified",
            &[("model", "trust-scorer"), ("version", "1.2.0")]
        ),
        0.0
    );
    // Rolling the pin over to a verified version makes it ready again.
    let (status, r) = s
        .admin("trust-scorer", "1.1.0", "promote", json!({"reason": "roll over"}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
}

#[tokio::test]
async fn corridor_health_and_audit_answer_only_keys_of_the_corridor() {
    let s = Server::start_with(ServerOptions {
        auth: true,
        ..ServerOptions::default()
    })
    .await;
    let (infer_id, infer_key) = s.create_key("caller", &["infer"], &["*"]).await;
    let (_, uae_admin) = s.create_key("uae-ops", &["admin"], &["UAE-SA"]).await;
    let (_, eg_admin) = s.create_key("eg-ops", &["admin"], &["US-EG"]).await;
    let (_, root) = s.create_key("root", &["admin"], &["*"]).await;
    let call = |path: String, key: Option<String>| {
        let client = s.client.clone();
        let url = format!("{}{path}", s.url);
        async move {
            let mut req = client.get(url);
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let r = req.send().await.expect("GET");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let infer = |corridor: &'static str, key: Option<String>| {
        let client = s.client.clone();
        let url = format!("{}/v2/models/trust-scorer/infer", s.url);
        async move {
            let mut req = client
                .post(url)
                .header("x-corridor", corridor)
                .body(trust_request(&[TRUST_ROW]).to_string());
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            req.send().await.expect("POST").status().as_u16()
        }
    };
    assert_eq!(infer("UAE-SA", Some(infer_key.clone())).await, 200);
    assert_eq!(infer("UAE-SA", Some(infer_key.clone())).await, 200);
    assert_eq!(infer("US-EG", Some(infer_key.clone())).await, 200);
    // Unauthenticated requests are refused and not recorded.
    assert_eq!(infer("UAE-SA", None).await, 401);

    // Buffered records reach the files within flush_ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let records = loop {
        let (status, r) = call(
            "/v1/corridors/UAE-SA/audit?event=inference".into(),
            Some(uae_admin.clone()),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        let records = r["records"].as_array().cloned().unwrap_or_default();
        if records.len() >= 2 || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(records.len(), 2, "{records:?}");
    for rec in &records {
        assert_eq!(rec["chain"], "UAE-SA");
        assert_eq!(rec["caller"], infer_id.as_str(), "the key's id, never the key: {rec}");
        assert_eq!(rec["status"], 200);
        assert!(
            rec["input_hash"].as_str().map(str::len) == Some(64)
                && rec["output_hash"].as_str().map(str::len) == Some(64)
        );
        assert!(!rec.to_string().contains(&infer_key), "no secret in records");
    }
    // Another corridor's records are never readable with this corridor's key, whatever exists.
    for path in [
        "/v1/corridors/US-EG/audit",
        "/v1/corridors/UK-NG/audit",
        "/v1/corridors/FR-MA/audit",
        "/admin/v1/audit",
    ] {
        assert_eq!(call(path.into(), Some(uae_admin.clone())).await.0, 403, "{path}");
    }
    assert_eq!(call("/v1/corridors/US-EG/audit".into(), None).await.0, 401);
    assert_eq!(
        call("/v1/corridors/US-EG/audit".into(), Some(infer_key.clone()))
            .await
            .0,
        403
    );
    let (status, r) = call("/v1/corridors/US-EG/audit".into(), Some(eg_admin.clone())).await;
    assert_eq!(status, 200, "{r}");
    let eg: Vec<Value> = r["records"].as_array().cloned().unwrap_or_default();
    assert_eq!(eg.iter().filter(|r| r["event"] == "inference").count(), 1, "{r}");
    assert!(eg.iter().all(|r| r["chain"] == "US-EG"));
    let (status, r) = call("/admin/v1/audit?event=verification".into(), Some(root.clone())).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["records"].as_array().map(Vec::len), Some(6), "{r}");
    assert_error(
        &call("/v1/corridors/UAE-SA/audit?limit=0".into(), Some(uae_admin.clone())).await,
        400,
        &["limit"],
    );
    assert_error(
        &call(
            "/v1/corridors/UAE-SA/audit?since=tomorrow-ish".into(),
            Some(uae_admin.clone()),
        )
        .await,
        400,
        &["since"],
    );
    assert_error(
        &call("/v1/corridors/UAE-SA/audit?bogus=1".into(), Some(uae_admin.clone())).await,
        400,
        &["bogus"],
    );
    let (status, r) = call("/v1/corridors/UAE-SA/audit?limit=1".into(), Some(uae_admin.clone())).await;
    assert_eq!((status, r["truncated"].clone()), (200, json!(true)), "{r}");

    // Corridor health: the corridor's admin keys (or a metrics key), nobody else.
    assert_eq!(
        call("/v1/corridors/UAE-SA/health".into(), Some(uae_admin.clone()))
            .await
            .0,
        200
    );
    assert_eq!(
        call("/v1/corridors/US-EG/health".into(), Some(uae_admin.clone()))
            .await
            .0,
        403
    );
    assert_eq!(call("/v1/corridors/US-EG/health".into(), None).await.0, 401);
    let (_, metrics_key) = s.create_key("prometheus", &["metrics"], &["*"]).await;
    assert_eq!(
        call("/v1/corridors/US-EG/health".into(), Some(metrics_key)).await.0,
        200
    );
    // The CLI reads a corridor's records through the API with the corridor's key.
    let (code, out, err) = {
        let mut c = Command::new(binary());
        c.args(["audit", "show", "--corridor", "UAE-SA", "--server", &s.url, "--json"])
            .env("INVARIANT_API_KEY", &uae_admin);
        let out = c.output().expect("invariant audit show");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains("\"event\":\"inference\"")).count(),
        2,
        "{out}"
    );
}

#[tokio::test]
async fn logs_are_json_with_request_ids_and_cli_commands_are_quiet() {
    let s = Server::start().await;
    let r = s
        .client
        .post(format!("{}/v2/repository/models/trust-scorer/load", s.url))
        .header("x-request-id", "trace-me-7f3a")
        .send()
        .await
        .expect("load");
    assert_eq!(r.status(), 200);
    // A value only the request carries never reaches the log.
    let marker = json!({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
        "data": [987654.25, 57, 0.02, 4.6, 3.5, 2, 1, 0]}]});
    assert_eq!(s.post("/v2/models/trust-scorer/infer", &marker).await.0, 200);
    let log = s.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string()));
    let reload = lines
        .iter()
        .find(|l| l["message"] == "model reloaded")
        .unwrap_or_else(|| panic!("no reload line: {log}"));
    assert_eq!(reload["span"]["id"], "trace-me-7f3a", "{reload}");
    assert!(!log.contains("987654.25"), "no request payloads in logs");

    // A tool command logs warnings only, unless -v.
    let config = s.config_path().display().to_string();
    let (code, _, err) = invariant(&["models", "list", "--config", &config]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("INFO"), "{err}");
    let (code, _, err) = invariant(&["-v", "models", "list", "--config", &config, "--log-format", "text"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("INFO") && err.contains("verified"), "{err}");
}

#[tokio::test]
async fn debug_logs_carry_the_serving_steps_under_the_request_id() {
    let s = Server::start_with(ServerOptions {
        env: vec![("INVARIANT_LOG".into(), "info,invariant_serving::service=debug".into())],
        extra: "[cache]\nenabled = false\n".into(),
        ..ServerOptions::default()
    })
    .await;
    let (status, r) = s
        .post_raw(
            "/v2/models/trust-scorer/infer",
            trust_request(&[TRUST_ROW]).to_string(),
            &[("x-request-id", "steps-1"), ("x-corridor", "US-EG")],
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let log = s.log();
    let mine: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["id"] == "steps-1"))
        })
        .collect();
    let routed = mine
        .iter()
        .find(|l| l["message"] == "routed and admitted")
        .unwrap_or_else(|| panic!("no routing step under the request id: {log}"));
    assert_eq!(
        (routed["corridor"].as_str(), routed["routing"].as_str()),
        (Some("US-EG"), Some("active"))
    );
    let names: Vec<&str> = routed["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["request", "infer"], "{routed}");
    let computed = mine
        .iter()
        .find(|l| l["message"] == "computed")
        .unwrap_or_else(|| panic!("no compute step under the request id: {log}"));
    assert!(
        computed["compute_us"].is_u64() && computed["queue_us"].is_u64(),
        "{computed}"
    );
    let names: Vec<&str> = computed["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["request", "infer", "cache_or_compute"], "{computed}");
}

#[test]
fn the_shipped_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = workspace_root().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool must be installed (scripts/test.sh installs the prometheus package)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The rules name the server's own metric families.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("alerts.yml");
    for family in [
        "invariant_inference_requests_total",
        "invariant_request_duration_seconds_bucket",
        "invariant_compute_seconds_bucket",
        "invariant_circuit_breaker_open",
        "invariant_model_verified",
    ] {
        assert!(rules.contains(family), "{family}");
    }
}
