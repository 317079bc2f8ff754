//! The feature store over HTTP: pushes and online reads in Feast's shapes, max-age statuses,
//! idempotent and ordered writes, corridor isolation, and durability across kill -9.

use invariant_blackbox::*;
use serde_json::json;
use std::time::Duration;

/// Unix seconds, `offset_seconds` from now (the push API takes RFC 3339 text or Unix seconds).
fn unix_seconds(offset_seconds: i64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now + offset_seconds) as f64
}

fn push_body(key: &str, at_unix: f64, orders: f64) -> serde_json::Value {
    json!({"feature_view": "account_stats",
           "df": {"account_id": [key], "event_timestamp": [at_unix], "completed_orders": [orders]}})
}

fn read_body(keys: &[&str]) -> serde_json::Value {
    json!({"features": ["account_stats:completed_orders", "account_stats:avg_rating"], "entities": {"account_id": keys}})
}

/// Every feature value of the first feature column is PRESENT.
fn assert_all_present(r: &serde_json::Value) {
    assert!(
        r["results"][1]["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == "PRESENT"),
        "{r}"
    );
}

async fn push(s: &Server, corridor: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    s.post_raw("/v1/features/push", body.to_string(), &[("x-corridor", corridor)])
        .await
}

async fn read(s: &Server, corridor: &str, keys: &[&str]) -> serde_json::Value {
    let (status, r) = s
        .post_raw(
            "/v1/features/get-online",
            read_body(keys).to_string(),
            &[("x-corridor", corridor)],
        )
        .await;
    assert_eq!(status, 200, "{r}");
    r
}

#[tokio::test]
async fn push_and_read_with_statuses_order_and_isolation() {
    let s = Server::start().await;
    // One event time for the push and its repeat (see below).
    let at = unix_seconds(-60);
    let (status, r) = push(&s, "UAE-SA", &push_body("a1", at, 12.0)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r, json!({"written": 1, "ignored": 0}));
    // Acknowledged pushes are in the corridor's audit chain.
    let pushes: Vec<_> = s.audit().into_iter().filter(|a| a["event"] == "feature_push").collect();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(
        (pushes[0]["chain"].as_str(), pushes[0]["written"].as_u64()),
        (Some("UAE-SA"), Some(1))
    );
    assert_eq!(pushes[0]["actor"], "dev-no-auth");
    // A stale row (older than the view's 1-day max age) for another account.
    push(&s, "UAE-SA", &push_body("old", unix_seconds(-3 * 86400), 7.0)).await;

    let r = read(&s, "UAE-SA", &["a1", "old", "nobody"]).await;
    assert_eq!(
        r["metadata"]["feature_names"],
        json!(["account_id", "completed_orders", "avg_rating"])
    );
    assert_eq!(r["results"][0]["values"], json!(["a1", "old", "nobody"]));
    // Feast's semantics on the wire: a value only when PRESENT, null otherwise (a stale value
    // is never served; defaults apply only where a model's input is assembled).
    assert_eq!(r["results"][1]["values"], json!([12.0, null, null]));
    assert_eq!(
        r["results"][1]["statuses"],
        json!(["PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"])
    );
    assert_eq!(
        r["results"][2]["values"],
        json!([null, null, null]),
        "no defaults on the wire"
    );
    assert_eq!(
        r["results"][2]["statuses"],
        json!(["NULL_VALUE", "OUTSIDE_MAX_AGE", "NOT_FOUND"]),
        "a1 was pushed without avg_rating"
    );

    // Idempotent, and an older event never overwrites a newer one.
    let (_, again) = push(&s, "UAE-SA", &push_body("a1", at, 12.0)).await;
    assert_eq!(again, json!({"written": 0, "ignored": 1}));
    let (_, older) = push(&s, "UAE-SA", &push_body("a1", unix_seconds(-120), 99.0)).await;
    assert_eq!(older, json!({"written": 0, "ignored": 1}));
    assert_eq!(read(&s, "UAE-SA", &["a1"]).await["results"][1]["values"], json!([12.0]));

    // Another corridor never sees UAE-SA's rows.
    let r = read(&s, "US-EG", &["a1"]).await;
    assert_eq!(r["results"][1]["statuses"], json!(["NOT_FOUND"]));

    // Freshness: the newest event pushed and the age of the values served, per view.
    let labels = [("view", "account_stats"), ("corridor", "UAE-SA")];
    let newest = counter(&s, "invariant_feature_newest_event_timestamp_seconds", &labels).await;
    assert!((newest - unix_seconds(-60)).abs() < 5.0, "newest event {newest}");
    let served = counter(&s, "invariant_feature_served_age_seconds_count", &labels).await;
    assert!(served >= 2.0, "served-age observations: {served}");
}

#[tokio::test]
async fn bad_pushes_and_reads_are_400_naming_the_field() {
    let s = Server::start().await;
    let mut bad = push_body("a1", unix_seconds(0), 1.0);
    bad["df"]["completed_orders"] = json!(["lots"]);
    assert_error(
        &push(&s, "UAE-SA", &bad).await,
        400,
        &["df.completed_orders[0]", "FP32"],
    );
    let bad = json!({"feature_view": "nope", "df": {}});
    assert_error(&push(&s, "UAE-SA", &bad).await, 400, &["feature_view", "nope"]);
    let bad = json!({"features": ["account_stats:nope"], "entities": {"account_id": ["a"]}});
    let got = s.post_raw("/v1/features/get-online", bad.to_string(), &[]).await;
    assert_error(&got, 400, &["features[0]", "nope"]);
    let got = s.post_raw("/v1/features/get-online", "{".to_string(), &[]).await;
    assert_error(&got, 400, &["malformed JSON"]);
    let got = s
        .post_raw(
            "/v1/features/get-online",
            read_body(&["a"]).to_string(),
            &[("x-corridor", "FR-MA")],
        )
        .await;
    assert_error(&got, 400, &["unknown corridor"]);
    s.assert_still_serving().await;
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let top = format!("feature_store = \"{}\"\n", dir.path().join("features.redb").display());
    let mut s = Server::start_with(ServerOptions {
        top: top.clone(),
        ..Default::default()
    })
    .await;
    for i in 0..20 {
        let (status, _) = push(&s, "UK-NG", &push_body(&format!("k{i}"), unix_seconds(-10), i as f64)).await;
        assert_eq!(status, 200);
    }
    s.kill_9();
    let s = Server::start_with(ServerOptions {
        top,
        ..Default::default()
    })
    .await;
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let r = read(&s, "UK-NG", &refs).await;
    assert_all_present(&r);
    assert_eq!(r["results"][1]["values"][19], 19.0);
}

fn trust_push(key: &str, at_unix: f64, row: [f64; 8]) -> serde_json::Value {
    let names = trust_features();
    let mut df = serde_json::Map::new();
    df.insert("account_id".into(), json!([key]));
    df.insert("event_timestamp".into(), json!([at_unix]));
    for (n, v) in names.iter().zip(row) {
        df.insert(n.to_string(), json!([v]));
    }
    json!({"feature_view": "account_stats", "df": df})
}

#[tokio::test]
async fn enriched_inference_gives_the_bits_of_the_tensor_and_follows_updates() {
    let s = Server::start().await;
    let other = [30.0, 2.0, 0.1, 3.9, 12.0, 1.0, 4.0, 1.0];
    assert_eq!(
        push(&s, "UAE-SA", &trust_push("a1", unix_seconds(-60), TRUST_ROW))
            .await
            .0,
        200
    );
    assert_eq!(
        push(&s, "UAE-SA", &trust_push("a2", unix_seconds(-60), other)).await.0,
        200
    );
    let infer = "/v2/models/trust-scorer/versions/1.2.0/infer";
    let enriched = json!({"parameters": {"entities": {"account_id": ["a1", "a2"]}, "return_features": true}});
    let (status, r) = s.post(infer, &enriched).await;
    assert_eq!(status, 200, "{r}");
    let (_, direct) = s.post(infer, &trust_request(&[TRUST_ROW, other])).await;
    assert_eq!(
        f32_bits(output(&r, "trust_score")),
        f32_bits(output(&direct, "trust_score"))
    );
    let used = &r["parameters"]["features"][0];
    assert_eq!(used["feature_service"], "trust_scorer_v1");
    assert_eq!(used["feature_names"][1], "completed_orders");
    assert_eq!(used["values"][1], json!([57.0, 2.0]));
    assert_eq!(used["statuses"][0], json!(["PRESENT", "PRESENT"]));

    // A feature update is never hidden by a cached answer.
    let mut changed = TRUST_ROW;
    changed[1] = 3.0;
    assert_eq!(
        push(&s, "UAE-SA", &trust_push("a1", unix_seconds(-30), changed))
            .await
            .0,
        200
    );
    let (_, again) = s.post(infer, &enriched).await;
    let (_, direct) = s.post(infer, &trust_request(&[changed, other])).await;
    assert_eq!(
        f32_bits(output(&again, "trust_score")),
        f32_bits(output(&direct, "trust_score"))
    );
    assert_ne!(
        f32_bits(output(&again, "trust_score")),
        f32_bits(output(&r, "trust_score"))
    );

    // Unknown entities get the declared defaults, flagged; other corridors see none of it.
    let (status, r) = s
        .post_raw(infer, enriched.to_string(), &[("x-corridor", "US-EG")])
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["parameters"]["features"][0]["statuses"][0],
        json!(["NOT_FOUND", "NOT_FOUND"])
    );

    // A model without a bound input cannot take entities.
    let got = s.post("/v2/models/risk-assessor/infer", &enriched).await;
    assert_error(&got, 400, &["parameters.entities", "risk-assessor"]);
}

#[tokio::test]
async fn materialize_loads_a_hundred_thousand_rows_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("accounts.csv");
    let now = unix_seconds(-120);
    let mut text = String::from("account_id,event_timestamp,completed_orders,avg_rating\n");
    let mut bad_lines = Vec::new();
    for i in 0..100_000u32 {
        let line = i + 2;
        match i % 10_000 {
            17 => {
                text.push_str(&format!(",{now},1,4.0\n"));
                bad_lines.push((line, "missing entity key"));
            }
            42 => {
                text.push_str(&format!("m{i},{now},lots,4.0\n"));
                bad_lines.push((line, "completed_orders"));
            }
            _ => text.push_str(&format!("m{i},{now},{},{}\n", i % 500, 1.0 + (i % 40) as f64 / 10.0)),
        }
    }
    std::fs::write(&csv, text).unwrap();
    let store = dir.path().join("features.redb");
    let args: Vec<String> = [
        "features",
        "materialize",
        "--feature-store",
        store.to_str().unwrap(),
        "--from",
        csv.to_str().unwrap(),
        "--view",
        "account_stats",
        "--corridor",
        "UK-NG",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let state = dir.path().join("state");
    let state_env = state.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(binary())
            .args(&args)
            .env("INVARIANT_STATE_DIR", &state_env)
            .current_dir(workspace_root())
            .output()
            .expect("invariant features materialize");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The materialization is recorded in the corridor's audit chain.
    let audited = audit_records(&state.join("audit"));
    assert!(
        audited.iter().any(|r| r["event"] == "materialization"
            && r["chain"] == "UK-NG"
            && r["written"] == 99_980
            && r["feature_view"] == "account_stats"),
        "{audited:?}"
    );
    assert_eq!(report["rows"], 100_000);
    assert_eq!(report["rejected"], 20);
    assert_eq!(report["written"], 99_980);
    let rejections = report["rejections"].as_array().unwrap();
    assert_eq!(rejections.len(), 20);
    for ((line, why), r) in bad_lines.iter().zip(rejections) {
        assert_eq!(r["line"], *line);
        assert!(r["reason"].as_str().unwrap().contains(why), "{r}");
    }
    assert!(report["rows_per_second"].as_f64().unwrap() > 0.0);

    // The loaded rows serve, in their corridor only.
    let top = format!("feature_store = \"{}\"\n", store.display());
    let s = Server::start_with(ServerOptions {
        top,
        ..Default::default()
    })
    .await;
    let r = read(&s, "UK-NG", &["m1", "m99999", "m42"]).await;
    assert_eq!(r["results"][1]["values"], json!([1.0, 499.0, null]));
    assert_eq!(r["results"][1]["statuses"], json!(["PRESENT", "PRESENT", "NOT_FOUND"]));
    assert_eq!(
        read(&s, "UAE-SA", &["m1"]).await["results"][1]["statuses"],
        json!(["NOT_FOUND"])
    );
}

#[test]
fn plan_and_apply_guard_incompatible_schema_changes() {
    let dir = tempfile::tempdir().unwrap();
    let features = dir.path().join("features");
    copy_tree(&workspace_root().join("features"), &features);
    let config = dir.path().join("invariant.toml");
    std::fs::write(
        &config,
        format!(
            "model_repository = \"{}\"\ngolden_vectors = \"{}\"\nstate_dir = \"{}\"\nfeature_repository = \"{}\"\n\
             engine_instances = 1\n[server]\nhttp_addr = \"127.0.0.1:0\"\nmax_body_bytes = 1000\n\
             [[corridors]]\nid = \"UAE-SA\"\nmarket = 0\nregion = \"gcc\"\n",
            shipped_models().display(),
            shipped_golden().display(),
            dir.path().join("state").display(),
            features.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let (code, out, err) = invariant(&["features", "plan", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("add") && l.contains("account_stats")),
        "{out}"
    );
    let (code, out, err) = invariant(&["features", "apply", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied"), "{out}");
    assert_eq!(invariant(&["features", "plan", "--config", cfg]).1.trim(), "no changes");

    let file = features.join("accounts.toml");
    let original = std::fs::read_to_string(&file).unwrap();
    let retyped = original.replace(
        r#"{ name = "completed_orders", datatype = "FP32", default = 0.0 }"#,
        r#"{ name = "completed_orders", datatype = "INT64", default = 0 }"#,
    );
    assert_ne!(retyped, original);
    std::fs::write(&file, &retyped).unwrap();
    let (code, out, _) = invariant(&["features", "plan", "--config", cfg]);
    assert_eq!(code, 1);
    assert!(
        out.contains("account_stats:completed_orders") && out.contains("INCOMPATIBLE"),
        "{out}"
    );
    let (code, _, err) = invariant(&["features", "apply", "--config", cfg]);
    assert_ne!(code, 0);
    assert!(err.contains("schema_version"), "{err}");

    std::fs::write(&file, retyped.replace("schema_version = 1", "schema_version = 2")).unwrap();
    let (code, out, err) = invariant(&["features", "apply", "--config", cfg, "--json"]);
    assert_eq!(code, 0, "{err}");
    let changes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(changes
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "account_stats:completed_orders"));
}

#[tokio::test]
async fn redis_backend_per_corridor_survives_an_outage() {
    let mut uae = RedisServer::start();
    let uk = RedisServer::start();
    let options = ServerOptions {
        top: format!("feature_backend = \"redis\"\nfeature_redis_url = \"{}\"\n", uae.url()),
        uk_ng: format!("feature_redis_url = \"{}\"\n", uk.url()),
        ..Default::default()
    };
    let s = Server::start_with(options).await;
    // One event time for both pushes: computed twice, a second boundary between them would
    // make the repeat newer.
    let at = unix_seconds(-60);
    assert_eq!(
        push(&s, "UAE-SA", &push_body("a1", at, 12.0)).await.1,
        json!({"written": 1, "ignored": 0})
    );
    assert_eq!(
        push(&s, "UAE-SA", &push_body("a1", at, 12.0)).await.1,
        json!({"written": 0, "ignored": 1})
    );
    assert_eq!(
        push(&s, "UAE-SA", &push_body("a1", unix_seconds(-90), 5.0)).await.1,
        json!({"written": 0, "ignored": 1})
    );
    assert_eq!(push(&s, "UK-NG", &push_body("k1", unix_seconds(-60), 3.0)).await.0, 200);
    // A row older than the view's max age, stored in Redis too.
    assert_eq!(
        push(&s, "UAE-SA", &push_body("stale", unix_seconds(-3 * 86400), 4.0))
            .await
            .0,
        200
    );
    let r = read(&s, "UAE-SA", &["a1", "zz", "stale"]).await;
    assert_eq!(r["results"][1]["values"], json!([12.0, null, null]));
    assert_eq!(
        r["results"][1]["statuses"],
        json!(["PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE"])
    );
    // A global view lives once, in the shared feature Redis, and every corridor reads it.
    assert_eq!(push(&s, "UK-NG", &global_push("UK-NG", 3)).await.0, 200);
    let (status, r) = s
        .post_raw(
            "/v1/features/get-online",
            global_read(&["UK-NG"]).to_string(),
            &[("x-corridor", "UAE-SA")],
        )
        .await;
    assert_eq!((status, r["results"][1]["values"].clone()), (200, json!([3])), "{r}");
    // The documented key layout, in the corridor's own Redis only.
    let hget = |port: u16, key: &str| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "HGET", key, "event_ms"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(!hget(uae.port, "inv:UAE-SA:fv:account_stats:a1").is_empty());
    assert!(hget(uk.port, "inv:UAE-SA:fv:account_stats:a1").is_empty());
    assert!(!hget(uk.port, "inv:UK-NG:fv:account_stats:k1").is_empty());

    // UAE-SA's Redis goes down: its reads answer 503 clearly; UK-NG is unaffected.
    uae.kill();
    let got = s
        .post_raw(
            "/v1/features/get-online",
            read_body(&["a1"]).to_string(),
            &[("x-corridor", "UAE-SA")],
        )
        .await;
    assert_error(&got, 503, &["Redis of corridor UAE-SA", "unavailable"]);
    let r = read(&s, "UK-NG", &["k1"]).await;
    assert_eq!(r["results"][1]["statuses"], json!(["PRESENT"]));
    // It comes back (empty, no persistence here) and the server reconnects by itself, within
    // the second its calls fail fast after a failure.
    let _uae = RedisServer::start_on(uae.port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let mut status = 0;
    while std::time::Instant::now() < deadline {
        status = push(&s, "UAE-SA", &push_body("a2", unix_seconds(-10), 9.0)).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "no reconnection within 1.5 s");
    assert_eq!(read(&s, "UAE-SA", &["a2"]).await["results"][1]["values"], json!([9.0]));
}

#[tokio::test]
async fn a_model_with_a_fallback_answers_from_defaults_when_features_are_down() {
    let mut redis = RedisServer::start();
    let repo = RepoCopy::new();
    let manifest = repo.version_dir("trust-scorer", "1.2.0").join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            "device = \"auto\"",
            "device = \"auto\"\nfeature_fallback = \"defaults\"",
        ),
    )
    .unwrap();
    let options = ServerOptions {
        top: format!("feature_backend = \"redis\"\nfeature_redis_url = \"{}\"\n", redis.url()),
        ..repo.options()
    };
    let s = Server::start_with(options).await;
    redis.kill();
    let enriched = json!({"parameters": {"entities": {"account_id": ["a1"]}, "return_features": true}});
    let (status, r) = s.post("/v2/models/trust-scorer/versions/1.2.0/infer", &enriched).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["parameters"]["degraded"], json!(true), "{r}");
    assert_eq!(r["parameters"]["source"], "feature-defaults", "{r}");
    assert!(
        r["parameters"]["degraded_reason"]
            .as_str()
            .unwrap()
            .contains("declared defaults"),
        "{r}"
    );
    assert_eq!(r["parameters"]["features"][0]["statuses"][0], json!(["UNAVAILABLE"]));
    let defaults = [0.0, 0.0, 0.0, 3.0, 24.0, 0.0, 0.0, 0.0];
    let (_, direct) = s
        .post(
            "/v2/models/trust-scorer/versions/1.2.0/infer",
            &trust_request(&[defaults]),
        )
        .await;
    assert_eq!(
        f32_bits(output(&r, "trust_score")),
        f32_bits(output(&direct, "trust_score"))
    );
    // A version without a fallback fails clearly instead.
    let got = s.post("/v2/models/trust-scorer/versions/1.1.0/infer", &enriched).await;
    assert_error(&got, 503, &["Redis of corridor UAE-SA"]);
}

#[tokio::test]
async fn redis_cluster_backend_spreads_keys_and_keeps_the_rules() {
    let cluster = RedisCluster::start();
    let options = ServerOptions {
        top: format!(
            "feature_backend = \"redis\"\nfeature_redis_url = \"{}\"\n",
            cluster.url()
        ),
        ..Default::default()
    };
    let s = Server::start_with(options).await;
    let keys: Vec<String> = (0..60).map(|i| format!("c{i}")).collect();
    let at = unix_seconds(-60);
    let body = json!({"feature_view": "account_stats",
        "df": {"account_id": keys, "event_timestamp": vec![at; 60], "completed_orders": (0..60).map(|i| i as f64).collect::<Vec<_>>()}});
    assert_eq!(push(&s, "UAE-SA", &body).await.1, json!({"written": 60, "ignored": 0}));
    assert_eq!(push(&s, "UAE-SA", &body).await.1, json!({"written": 0, "ignored": 60}));
    assert_eq!(
        push(&s, "UAE-SA", &push_body("c7", at - 30.0, 99.0)).await.1,
        json!({"written": 0, "ignored": 1})
    );
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let r = read(&s, "UAE-SA", &refs).await;
    assert_all_present(&r);
    assert_eq!(r["results"][1]["values"][7], 7.0);
    let spread = cluster.keys_per_node();
    assert!(
        spread.iter().filter(|&&n| n > 0).count() >= 2,
        "keys on one node only: {spread:?}"
    );
    assert_eq!(spread.iter().sum::<u64>(), 60);
}

#[test]
fn materialize_reads_parquet() {
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, FloatType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.parquet");
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message rows { REQUIRED BYTE_ARRAY account_id (UTF8); REQUIRED DOUBLE event_timestamp; \
             REQUIRED FLOAT completed_orders; }",
        )
        .unwrap(),
    );
    let props = Arc::new(WriterProperties::builder().build());
    let mut writer = SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut col = group.next_column().unwrap().unwrap();
    let keys: Vec<ByteArray> = ["q1", "q2", ""].iter().map(|k| ByteArray::from(*k)).collect();
    col.typed::<ByteArrayType>().write_batch(&keys, None, None).unwrap();
    col.close().unwrap();
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<DoubleType>()
        .write_batch(&[unix_seconds(-5); 3], None, None)
        .unwrap();
    col.close().unwrap();
    let mut col = group.next_column().unwrap().unwrap();
    col.typed::<FloatType>()
        .write_batch(&[1.0, 2.0, 3.0], None, None)
        .unwrap();
    col.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
    let store = dir.path().join("features.redb");
    let (code, out, err) = invariant(&[
        "features",
        "materialize",
        "--feature-store",
        store.to_str().unwrap(),
        "--from",
        path.to_str().unwrap(),
        "--view",
        "account_stats",
        "--corridor",
        "UAE-SA",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            report["rows"].clone(),
            report["written"].clone(),
            report["rejected"].clone()
        ),
        (json!(3), json!(2), json!(1))
    );
    assert_eq!(report["rejections"][0]["line"], 3);
}

/// The thread count of process `pid`.
fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_hung_corridor_redis_never_takes_other_corridors_down() {
    let shared = RedisServer::start();
    let uk = RedisServer::start();
    let s = Server::start_with(ServerOptions {
        top: format!(
            "feature_backend = \"redis\"\nfeature_redis_url = \"{}\"\n",
            shared.url()
        ),
        uk_ng: format!("feature_redis_url = \"{}\"\n", uk.url()),
        extra: "[pools]\nfeature_concurrency = 8\nfeature_timeout_ms = 1000\n[cache]\nenabled = false\n".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        push(&s, "US-EG", &push_body("e1", unix_seconds(-60), 12.0)).await.0,
        200
    );
    assert_eq!(push(&s, "UK-NG", &push_body("k1", unix_seconds(-60), 3.0)).await.0, 200);
    uk.pause();

    // 300 concurrent UK-NG reads against a Redis that accepts and never answers.
    let mut flood = Vec::new();
    for _ in 0..300 {
        let client = s.client.clone();
        let url = format!("{}/v1/features/get-online", s.url);
        flood.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = client
                .post(url)
                .header("x-corridor", "UK-NG")
                .body(read_body(&["k1"]).to_string())
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            (r.map(|r| r.status().as_u16()).unwrap_or(0), started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile US-EG reads and uncached inference answer at once.
    for i in 0..5 {
        let started = std::time::Instant::now();
        let (status, r) = s
            .post_raw(
                "/v1/features/get-online",
                read_body(&["e1"]).to_string(),
                &[("x-corridor", "US-EG")],
            )
            .await;
        assert_eq!(status, 200, "{r}");
        let mut row = TRUST_ROW;
        row[0] = 1000.0 + f64::from(i);
        let (status, r) = s
            .post_raw(
                "/v2/models/trust-scorer/infer",
                trust_request(&[row]).to_string(),
                &[("x-corridor", "US-EG")],
            )
            .await;
        assert_eq!(status, 200, "{r}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "US-EG waited {:?}",
            started.elapsed()
        );
    }
    let threads = threads_of(s.pid());
    assert!(threads < 120, "{threads} threads while UK-NG's Redis hangs");
    let mut statuses = std::collections::BTreeMap::new();
    for f in flood {
        let (status, took) = f.await.unwrap();
        *statuses.entry(status).or_insert(0) += 1;
        assert!(took < Duration::from_secs(5), "a UK-NG read took {took:?}");
    }
    // The bulkhead's places wait for the store (then 503: it did not answer); the rest are
    // refused at once with 429.
    assert!(statuses.get(&429).copied().unwrap_or(0) >= 250, "{statuses:?}");
    assert_eq!(
        statuses.keys().filter(|s| ![429, 503].contains(*s)).count(),
        0,
        "{statuses:?}"
    );
    uk.resume();
    s.assert_still_serving().await;
}

/// Reads of a corridor's Redis from many concurrent callers share one multiplexed connection
/// (pipelined, no thread held while Redis answers), and each still gets its own row.
#[tokio::test]
async fn concurrent_redis_reads_share_one_connection_and_get_their_own_rows() {
    let redis = RedisServer::start();
    let s = Server::start_with(ServerOptions {
        top: format!("feature_backend = \"redis\"\nfeature_redis_url = \"{}\"\n", redis.url()),
        extra: "[pools]\nfeature_concurrency = 128\n".into(),
        ..Default::default()
    })
    .await;
    let keys: Vec<String> = (0..64).map(|i| format!("m{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            push(&s, "UK-NG", &push_body(k, unix_seconds(-60), i as f64)).await.0,
            200
        );
    }
    let before = redis.connected_clients();
    let reads = keys.iter().enumerate().map(|(i, k)| {
        let (client, url, k) = (s.client.clone(), format!("{}/v1/features/get-online", s.url), k.clone());
        async move {
            let r = client
                .post(url)
                .header("x-corridor", "UK-NG")
                .body(read_body(&[&k]).to_string())
                .send()
                .await
                .expect("read");
            assert_eq!(r.status().as_u16(), 200);
            let r: serde_json::Value = r.json().await.expect("json");
            assert_eq!(r["results"][0]["values"][0], k.as_str(), "{r}");
            assert_eq!(r["results"][1]["values"][0], i as f64, "{r}");
            assert_eq!(r["results"][1]["statuses"][0], "PRESENT", "{r}");
        }
    });
    for _ in 0..4 {
        join_all(reads.clone()).await;
    }
    // The pushes used one blocking connection; the 256 reads (64 at a time) add one.
    let after = redis.connected_clients();
    assert!(
        after <= before + 1,
        "{before} connections before the reads, {after} after"
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn materialize_loads_into_a_running_server_through_its_api() {
    let s = Server::start_with(ServerOptions {
        auth: true,
        ..Default::default()
    })
    .await;
    let (key_id, key) = s
        .create_key("loader", &["features:write", "features:read"], &["UK-NG"])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("accounts.csv");
    let now = unix_seconds(-120);
    let mut text = String::from("account_id,event_timestamp,completed_orders,avg_rating\n");
    for i in 0..1200u32 {
        match i {
            7 => text.push_str(&format!("m{i},not-a-time,1,4.0\n")),
            9 => text.push_str(&format!("m{i},{},1,4.0\n", 253_402_300_800u64)),
            _ => text.push_str(&format!("m{i},{now},{},{}\n", i % 500, 1.5 + (i % 4) as f64)),
        }
    }
    std::fs::write(&csv, text).unwrap();
    let config = s.config_path().display().to_string();
    let load = |key: &str| {
        let out = std::process::Command::new(binary())
            .args([
                "features",
                "materialize",
                "--config",
                &config,
                "--server",
                &s.url,
                "--from",
            ])
            .arg(&csv)
            .args([
                "--view",
                "account_stats",
                "--corridor",
                "UK-NG",
                "--batch",
                "500",
                "--json",
            ])
            .env("INVARIANT_API_KEY", key)
            .current_dir(workspace_root())
            .output()
            .expect("materialize --server");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = load(&key);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            report["rows"].as_u64(),
            report["written"].as_u64(),
            report["rejected"].as_u64()
        ),
        (Some(1200), Some(1198), Some(2)),
        "{report}"
    );
    assert!(
        report["rejections"][1]["reason"].as_str().unwrap().contains("9999"),
        "{report}"
    );
    // Idempotent: the same file again writes nothing.
    let (code, out, _) = load(&key);
    assert_eq!(code, 0);
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (again["written"].as_u64(), again["ignored"].as_u64()),
        (Some(0), Some(1198))
    );
    // The rows serve at once, in their corridor, FP32 values exact.
    let r = s
        .client
        .post(format!("{}/v1/features/get-online", s.url))
        .bearer_auth(&key)
        .header("x-corridor", "UK-NG")
        .body(read_body(&["m1", "m1199", "m7"]).to_string())
        .send()
        .await
        .unwrap();
    let r: serde_json::Value = r.json().await.unwrap();
    assert_eq!(r["results"][1]["values"], json!([1.0, 199.0, null]), "{r}");
    assert_eq!(r["results"][2]["values"], json!([2.5, 4.5, null]), "{r}");
    // Every batch is audited on the server, under the key's id.
    let pushes: Vec<_> = s.audit().into_iter().filter(|a| a["event"] == "feature_push").collect();
    assert_eq!(pushes.len(), 6, "3 batches per run: {pushes:?}");
    assert!(pushes
        .iter()
        .all(|p| p["actor"] == key_id.as_str() && p["chain"] == "UK-NG"));
    // A key of another corridor is refused, and the command says so.
    let (_, other) = s.create_key("elsewhere", &["features:write"], &["US-EG"]).await;
    let (code, out, err) = load(&other);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("403"), "{err}");
}

#[tokio::test]
async fn entity_keys_may_come_as_a_tensor_named_after_the_join_key() {
    let s = Server::start().await;
    let row = [420.0, 57.0, 0.5, 4.5, 3.5, 2.0, 1.0, 0.0];
    let (status, r) = push(&s, "UAE-SA", &trust_push("t1", unix_seconds(-30), row)).await;
    assert_eq!(status, 200, "{r}");
    let infer = |inputs: serde_json::Value| {
        let s = &s;
        async move {
            s.post_raw(
                "/v2/models/trust-scorer/infer",
                json!({"inputs": inputs, "parameters": {"return_features": true}}).to_string(),
                &[("x-corridor", "UAE-SA")],
            )
            .await
        }
    };
    let (status, by_tensor) =
        infer(json!([{"name": "account_id", "datatype": "BYTES", "shape": [2], "data": ["t1", "nobody"]}])).await;
    assert_eq!(status, 200, "{by_tensor}");
    let (_, direct) = s
        .post_raw(
            "/v2/models/trust-scorer/infer",
            trust_request(&[row, [0.0, 0.0, 0.0, 3.0, 24.0, 0.0, 0.0, 0.0]]).to_string(),
            &[("x-corridor", "UAE-SA")],
        )
        .await;
    assert_eq!(
        f32_bits(output(&by_tensor, "trust_score")),
        f32_bits(output(&direct, "trust_score"))
    );
    let used = &by_tensor["parameters"]["features"][0];
    assert_eq!(used["statuses"][0], json!(["PRESENT", "NOT_FOUND"]), "{used}");
    assert_eq!(
        used["values"][3],
        json!([4.5, 3.0]),
        "the missing entity is assembled from defaults: {used}"
    );
    assert_error(
        &infer(json!([{"name": "account_id", "datatype": "FP32", "shape": [1], "data": [1.0]}])).await,
        400,
        &["inputs.account_id", "BYTES or INT64"],
    );
    assert_error(
        &infer(json!([{"name": "account_id", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}])).await,
        400,
        &["inputs.account_id", "shape"],
    );
    let many: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    assert_error(
        &infer(json!([{"name": "account_id", "datatype": "BYTES", "shape": [1001], "data": many}])).await,
        400,
        &["inputs.account_id", "limits.request.max_entities"],
    );
    s.assert_still_serving().await;
}

fn global_push(corridor_id: &str, tier: i64) -> serde_json::Value {
    json!({"feature_view": "corridor_metadata", "df": {
        "corridor_id": [corridor_id], "event_timestamp": [unix_seconds(-10)], "risk_tier": [tier], "fx_rate_usd": [3.6725]
    }})
}

fn global_read(keys: &[&str]) -> serde_json::Value {
    json!({"features": ["corridor_metadata:risk_tier", "corridor_metadata:fx_rate_usd"], "entities": {"corridor_id": keys}})
}

#[tokio::test]
async fn global_views_are_read_by_every_corridor_and_written_by_admins_only() {
    let s = Server::start_with(ServerOptions {
        auth: true,
        ..Default::default()
    })
    .await;
    let (_, root) = s.create_key("platform", &["admin", "features:write"], &["*"]).await;
    let (_, uae) = s
        .create_key("uae", &["features:read", "features:write"], &["UAE-SA"])
        .await;
    let (_, eg) = s.create_key("eg", &["features:read"], &["US-EG"]).await;
    let call = |path: &'static str, key: String, corridor: &'static str, body: serde_json::Value| {
        let client = s.client.clone();
        let url = format!("{}{path}", s.url);
        async move {
            let r = client
                .post(url)
                .bearer_auth(key)
                .header("x-corridor", corridor)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // A corridor's writer may not write what every corridor reads.
    let refused = call("/v1/features/push", uae.clone(), "UAE-SA", global_push("UAE-SA", 2)).await;
    assert_error(&refused, 403, &["corridor_metadata", "global"]);
    let (status, r) = call("/v1/features/push", root.clone(), "UAE-SA", global_push("UAE-SA", 2)).await;
    assert_eq!((status, r.clone()), (200, json!({"written": 1, "ignored": 0})), "{r}");
    // Every corridor reads the one row.
    for (key, corridor) in [(uae.clone(), "UAE-SA"), (eg.clone(), "US-EG")] {
        let (status, r) = call(
            "/v1/features/get-online",
            key,
            corridor,
            global_read(&["UAE-SA", "UK-NG"]),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["results"][1]["values"], json!([2, null]), "{corridor}: {r}");
        assert_eq!(r["results"][2]["values"], json!([3.6725, null]), "{corridor}: {r}");
    }
    // A corridor view stays the corridor's own.
    let (status, _) = call(
        "/v1/features/push",
        uae.clone(),
        "UAE-SA",
        push_body("own", unix_seconds(-10), 5.0),
    )
    .await;
    assert_eq!(status, 200);
    let (_, r) = call("/v1/features/get-online", eg.clone(), "US-EG", read_body(&["own"])).await;
    assert_eq!(r["results"][1]["statuses"], json!(["NOT_FOUND"]), "{r}");
    // Global pushes are audited server-wide.
    let pushes: Vec<_> = s.audit().into_iter().filter(|a| a["event"] == "feature_push").collect();
    assert_eq!(
        pushes
            .iter()
            .map(|p| p["chain"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["_server", "UAE-SA"]
    );
}
