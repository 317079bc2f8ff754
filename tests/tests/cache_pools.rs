//! The inference cache (L1, Redis L2, single flight, TTL, corridor isolation, invalidation
//! across replicas) and the per-corridor pools (dynamic batching, backpressure, deadlines).

use invariant_blackbox::*;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const INFER: &str = "/v2/models/trust-scorer/versions/1.2.0/infer";

fn row(i: usize) -> [f64; 8] {
    let mut r = TRUST_ROW;
    r[0] = 100.0 + i as f64;
    r
}

async fn post_in(s: &Server, path: &str, body: &serde_json::Value, corridor: &str) -> (u16, serde_json::Value) {
    s.post_raw(path, body.to_string(), &[("x-corridor", corridor)]).await
}

#[tokio::test]
async fn hits_misses_identical_bytes_spelling_and_corridor_isolation() {
    let s = Server::start().await;
    let req = trust_request(&[row(1)]);
    let (status, first) = post_in(&s, INFER, &req, "UAE-SA").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["parameters"]["cached"], false);
    let key = first["parameters"]["cache_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64);
    let (_, second) = post_in(&s, INFER, &req, "UAE-SA").await;
    assert_eq!(second["parameters"]["cached"], true);
    assert_eq!(second["parameters"]["cache_key"], key.as_str());
    assert_eq!(
        second["outputs"], first["outputs"],
        "cached answers are the computed bytes"
    );

    // 101 and 101.0 are the same FP32 value: the same key, a hit.
    let spelled =
        r#"{"inputs":[{"name":"features","datatype":"FP32","shape":[1,8],"data":[101.0,57,2e-2,4.6,3.5,2,1,0]}]}"#;
    let (_, third) = s
        .post_raw(INFER, spelled.to_string(), &[("x-corridor", "UAE-SA")])
        .await;
    assert_eq!(third["parameters"]["cache_key"], key.as_str());
    assert_eq!(third["parameters"]["cached"], true);

    // Another corridor has its own cache and key space.
    let (_, other) = post_in(&s, INFER, &req, "US-EG").await;
    assert_eq!(other["parameters"]["cached"], false);
    assert_ne!(other["parameters"]["cache_key"], key.as_str());
    assert_eq!(other["outputs"], first["outputs"]);

    // Selecting outputs is part of the key; selecting all of them is the same as none.
    let risk = features_request(&[&[249.99, 1.8, 35.0, 6.0, 2.0, 1.0, 3.0, 2.0, 0.35, 3.0]]);
    let path = "/v2/models/risk-assessor/versions/1.1.0/infer";
    let (_, all) = post_in(&s, path, &risk, "UAE-SA").await;
    let mut both = risk.clone();
    both["outputs"] = json!([{"name": "probabilities"}, {"name": "label"}]);
    let (_, both) = post_in(&s, path, &both, "UAE-SA").await;
    assert_eq!(both["parameters"]["cache_key"], all["parameters"]["cache_key"]);
    assert_eq!(both["parameters"]["cached"], true);
    assert_eq!(
        both["outputs"][0]["name"], "probabilities",
        "requested order is kept on a hit"
    );
    let mut one = risk.clone();
    one["outputs"] = json!([{"name": "probabilities"}]);
    let (_, one) = post_in(&s, path, &one, "UAE-SA").await;
    assert_ne!(one["parameters"]["cache_key"], all["parameters"]["cache_key"]);
    assert_eq!(one["outputs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn entries_expire_after_the_manifest_ttl() {
    let repo = RepoCopy::new();
    let manifest = repo.version_dir("trust-scorer", "1.2.0").join("manifest.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("device = \"auto\"", "device = \"auto\"\ncache_ttl_seconds = 1");
    std::fs::write(&manifest, text).unwrap();
    let s = Server::start_with(repo.options()).await;
    let req = trust_request(&[row(2)]);
    assert_eq!(s.post(INFER, &req).await.1["parameters"]["cached"], false);
    assert_eq!(s.post(INFER, &req).await.1["parameters"]["cached"], true);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        s.post(INFER, &req).await.1["parameters"]["cached"],
        false,
        "expired after 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_identical_misses_run_the_engine_once() {
    let s = Arc::new(Server::start().await);
    let labels = [("model", "trust-scorer"), ("version", "1.2.0"), ("corridor", "UAE-SA")];
    let before = counter(&s, "invariant_engine_runs_total", &labels).await;
    let req = trust_request(&[row(3)]);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (s, req) = (s.clone(), req.clone());
        tasks.push(tokio::spawn(async move { s.post(INFER, &req).await }));
    }
    let mut computed = 0;
    let mut outputs = Vec::new();
    for t in tasks {
        let (status, r) = t.await.unwrap();
        assert_eq!(status, 200, "{r}");
        computed += usize::from(r["parameters"]["cached"] == false);
        outputs.push(r["outputs"].clone());
    }
    assert_eq!(computed, 1, "one request computed, 99 shared its answer");
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(counter(&s, "invariant_engine_runs_total", &labels).await - before, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_never_changes_an_answer() {
    let options = ServerOptions {
        extra: "[cache]\nenabled = false\n[pools]\nworkers = 1\nmax_queue_delay_us = 20000\n".into(),
        ..Default::default()
    };
    let s = Arc::new(Server::start_with(options).await);
    // Alone, one at a time.
    let mut solo = Vec::new();
    for i in 0..48 {
        let (status, r) = s.post(INFER, &trust_request(&[row(i)])).await;
        assert_eq!(status, 200);
        solo.push(f32_bits(output(&r, "trust_score")));
    }
    let labels = [("model", "trust-scorer"), ("version", "1.2.0"), ("corridor", "UAE-SA")];
    let runs_before = counter(&s, "invariant_engine_runs_total", &labels).await;
    let requests_before = counter(&s, "invariant_engine_requests_total", &labels).await;
    // In a crowd: the batcher merges them.
    let mut tasks = Vec::new();
    for i in 0..48 {
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { s.post(INFER, &trust_request(&[row(i)])).await },
        ));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, r) = t.await.unwrap();
        assert_eq!(status, 200, "{r}");
        assert_eq!(f32_bits(output(&r, "trust_score")), solo[i], "row {i}");
    }
    let runs = counter(&s, "invariant_engine_runs_total", &labels).await - runs_before;
    let requests = counter(&s, "invariant_engine_requests_total", &labels).await - requests_before;
    assert_eq!(requests, 48.0);
    assert!(
        runs < requests,
        "requests were batched: {runs} engine runs for {requests} requests"
    );
}

fn slow_request(seed: usize) -> serde_json::Value {
    let data: Vec<f64> = (0..64 * 256)
        .map(|k| (((k + seed * 7) % 200) as f64 / 100.0) - 1.0)
        .collect();
    json!({"inputs": [{"name": "x", "shape": [64, 256], "datatype": "FP32", "data": data}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_at_once_while_another_corridor_serves() {
    let repo = RepoCopy::new().with_fixture("slow-probe");
    let options = ServerOptions {
        uk_ng: "workers = 1\nqueue = 1\n".into(),
        extra: "[cache]\nenabled = false\n".into(),
        ..repo.options()
    };
    let s = Arc::new(Server::start_with(options).await);
    let mut flood = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        // The body is built before the clock starts: only the server's answer is timed.
        let body = slow_request(i).to_string();
        flood.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = s
                .client
                .post(format!("{}/v2/models/slow-probe/infer", s.url))
                .header("x-corridor", "UK-NG")
                .body(body)
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (
                r.status().as_u16(),
                retry_after,
                started.elapsed(),
                r.text().await.unwrap(),
            )
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The other corridor is unaffected while UK-NG is flooded.
    for i in 0..10 {
        let started = Instant::now();
        let (status, _) = post_in(&s, INFER, &trust_request(&[row(1000 + i)]), "UAE-SA").await;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "UAE-SA slowed down: {:?}",
            started.elapsed()
        );
    }
    let mut rejected = 0;
    for t in flood {
        let (status, retry_after, elapsed, body) = t.await.unwrap();
        if status == 429 {
            rejected += 1;
            assert_eq!(retry_after.as_deref(), Some("1"));
            assert!(body.contains("UK-NG") && body.contains("capacity"), "{body}");
            assert!(elapsed < Duration::from_millis(150), "429 took {elapsed:?}");
        } else {
            assert_eq!(status, 200, "{body}");
        }
    }
    assert!(
        rejected >= 5,
        "only {rejected} of 8 rejected with 1 worker and a queue of 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_corridor_runs_onnx_versions_on_its_own_instances() {
    let repo = RepoCopy::new().with_fixture("slow-probe");
    let s = Arc::new(
        Server::start_with(ServerOptions {
            uk_ng: "workers = 2\nqueue = 4\n".into(),
            extra: "[cache]\nenabled = false\n[pools]\nbatching = false\nworkers = 1\n".into(),
            ..repo.options()
        })
        .await,
    );
    // One instance per corridor, with as many sessions as the corridor has workers.
    let (status, meta) = s.get("/v2/models/slow-probe").await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["instances"]["per_corridor"], true, "{meta}");
    assert_eq!(
        meta["instances"]["sessions"],
        json!({"UAE-SA": 1, "UK-NG": 2, "US-EG": 1}),
        "{meta}"
    );
    // Native versions share immutable weights: no sessions, no per-corridor copies.
    let (_, native) = s.get("/v2/models/trust-scorer").await;
    assert_eq!(native["instances"], json!({"per_corridor": false, "sessions": null}));

    // UK-NG keeps both of its sessions busy with 64-row runs (~200 ms each). Were sessions
    // shared, a UAE-SA request would wait for one of them; with its own instance it is
    // answered while UK-NG's runs are still going.
    let mut flood = Vec::new();
    for i in 0..2 {
        let s = s.clone();
        flood.push(tokio::spawn(async move {
            let (status, body) = s
                .post_raw(
                    "/v2/models/slow-probe/infer",
                    slow_request(i).to_string(),
                    &[("x-corridor", "UK-NG")],
                )
                .await;
            assert_eq!(status, 200, "{body}");
            Instant::now()
        }));
    }
    tokio::time::sleep(Duration::from_millis(80)).await;
    let one_row: Vec<f64> = (0..256).map(|k| (k % 200) as f64 / 100.0 - 1.0).collect();
    let small = json!({"inputs": [{"name": "x", "shape": [1, 256], "datatype": "FP32", "data": one_row}]});
    let (status, body) = s
        .post_raw(
            "/v2/models/slow-probe/infer",
            small.to_string(),
            &[("x-corridor", "UAE-SA")],
        )
        .await;
    let uae_done = Instant::now();
    assert_eq!(status, 200, "{body}");
    for t in flood {
        let uk_done = t.await.unwrap();
        assert!(
            uae_done < uk_done,
            "UAE-SA waited for UK-NG's runs: it finished {:?} after one of them",
            uae_done - uk_done
        );
    }
}

#[tokio::test]
async fn requests_past_their_deadline_get_504() {
    let repo = RepoCopy::new().with_fixture("slow-probe");
    let s = Server::start_with(ServerOptions {
        extra: "[cache]\nenabled = false\n".into(),
        ..repo.options()
    })
    .await;
    let started = Instant::now();
    let got = s
        .post_raw(
            "/v2/models/slow-probe/infer",
            slow_request(1).to_string(),
            &[("x-deadline-ms", "30")],
        )
        .await;
    assert_error(&got, 504, &["deadline of 30 ms exceeded"]);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let got = s
        .post_raw(
            INFER,
            trust_request(&[TRUST_ROW]).to_string(),
            &[("x-deadline-ms", "soon")],
        )
        .await;
    assert_error(&got, 400, &["x-deadline-ms"]);
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_redis_answers_and_invalidate_on_promotion() {
    let redis = RedisServer::start();
    let repo = RepoCopy::new();
    let extra = format!(
        "[cache]\nredis_url = \"{}\"\n[control]\nbackend = \"redis\"\n",
        redis.url()
    );
    let a = Server::start_with(ServerOptions {
        extra: extra.clone(),
        ..repo.options()
    })
    .await;
    let b = Server::start_with(ServerOptions {
        extra,
        ..repo.options()
    })
    .await;
    let req = trust_request(&[row(4)]);
    let unversioned = "/v2/models/trust-scorer/infer";
    let (_, ra) = a.post(unversioned, &req).await;
    assert_eq!(
        (ra["parameters"]["cached"].clone(), ra["model_version"].clone()),
        (json!(false), json!("1.2.0"))
    );
    // B finds A's answer in Redis without running its engine.
    let labels = [("model", "trust-scorer"), ("source", "l2")];
    let (_, rb) = b.post(unversioned, &req).await;
    assert_eq!(rb["parameters"]["cached"], true);
    assert_eq!(rb["outputs"], ra["outputs"]);
    assert_eq!(counter(&b, "invariant_inference_requests_total", &labels).await, 1.0);

    // A promotes 1.1.0; B hears it from the shared control state and routes to 1.1.0 without a restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.admin("trust-scorer", "1.1.0", "promote", json!({})).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, r) = b.post(unversioned, &req).await;
        if r["model_version"] == "1.1.0" {
            assert_eq!(r["parameters"]["cached"], false, "a new version is a new key space");
            break;
        }
        assert!(Instant::now() < deadline, "B never saw the promotion");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_dead_redis_costs_hits_not_answers() {
    let mut redis = RedisServer::start();
    let extra = format!("[cache]\nredis_url = \"{}\"\n", redis.url());
    let s = Server::start_with(ServerOptions {
        extra,
        ..Default::default()
    })
    .await;
    assert_eq!(s.post(INFER, &trust_request(&[row(5)])).await.0, 200);
    redis.kill();
    for i in 0..5 {
        let (status, r) = s.post(INFER, &trust_request(&[row(10 + i)])).await;
        assert_eq!(status, 200, "{r}");
    }
    // It comes back and is used again.
    let _redis = RedisServer::start_on(redis.port);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _) = s.post(INFER, &trust_request(&[row(20)])).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_reply_cache_follows_promotions_and_corridors() {
    let repo = RepoCopy::new();
    let s = Server::start_with(repo.options()).await;
    let req = trust_request(&[row(6)]);
    let unversioned = "/v2/models/trust-scorer/infer";
    let (_, first) = s.post(unversioned, &req).await;
    let (_, again) = s.post(unversioned, &req).await;
    assert_eq!(
        (first["model_version"].clone(), again["parameters"]["cached"].clone()),
        (json!("1.2.0"), json!(true))
    );
    // The repeat came from the reply cache: trust-scorer binds an input to a
    // feature service (1.1.0), but a request sending its own tensor uses no feature values.
    let reply_hits = [
        ("model", "trust-scorer"),
        ("source", "reply"),
        ("transport", "http_json"),
    ];
    assert_eq!(
        counter(&s, "invariant_inference_requests_total", &reply_hits).await,
        1.0
    );
    let raw = s
        .client
        .post(format!("{}{unversioned}", s.url))
        .body(req.to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&raw).unwrap(), again);
    assert_eq!(
        counter(&s, "invariant_inference_requests_total", &reply_hits).await,
        2.0
    );
    // The identical request after a promotion is answered by the new version.
    assert_eq!(s.admin("trust-scorer", "1.1.0", "promote", json!({})).await.0, 200);
    let (_, after) = s.post(unversioned, &req).await;
    assert_eq!(after["model_version"], "1.1.0");
    assert_eq!(after["parameters"]["cached"], false);
    assert_eq!(f32_bits(output(&after, "trust_score")).len(), 1);

    // A body naming another corridor is answered from that corridor's cache only.
    let mut in_us = req.clone();
    in_us["parameters"] = json!({"corridor": "US-EG"});
    let (_, us1) = s.post(unversioned, &in_us).await;
    let (_, us2) = s.post(unversioned, &in_us).await;
    assert_eq!(us1["parameters"]["corridor"], "US-EG");
    assert_eq!(us1["parameters"]["cached"], false);
    assert_eq!(us2["parameters"]["corridor"], "US-EG");
    assert_eq!(us2["parameters"]["cached"], true);
}

#[tokio::test]
async fn a_body_sent_in_chunks_is_read_whole_and_then_answered_from_the_reply_cache() {
    let s = Server::start().await;
    let body = trust_request(&[row(9)]).to_string().into_bytes();
    let thirds = |b: &[u8]| b.chunks(b.len() / 3 + 1).map(<[u8]>::to_vec).collect::<Vec<_>>();
    let (status, chunked) = s.post_chunked(INFER, thirds(&body)).await;
    assert_eq!(status, 200, "{chunked}");
    assert_eq!(chunked["parameters"]["cached"], false);
    // The same bytes sent in one piece: the same request, so the stored reply.
    let (_, whole) = s.post_raw(INFER, body.clone(), &[]).await;
    assert_eq!(whole["parameters"]["cached"], true);
    assert_eq!(
        f32_bits(output(&whole, "trust_score")),
        f32_bits(output(&chunked, "trust_score"))
    );
    let (_, again) = s.post_chunked(INFER, thirds(&body)).await;
    assert_eq!(again, whole, "a chunked repeat is a reply-cache hit too");
    let reply_hits = [
        ("model", "trust-scorer"),
        ("source", "reply"),
        ("transport", "http_json"),
    ];
    assert_eq!(
        counter(&s, "invariant_inference_requests_total", &reply_hits).await,
        2.0
    );
    // A body cut short is a different request: decoded (and refused) by the full path.
    let (status, cut) = s.post_chunked(INFER, vec![body[..body.len() - 1].to_vec()]).await;
    assert_error(&(status, cut), 400, &["malformed JSON"]);
    s.assert_still_serving().await;
}

/// One binary-tensor exchange (Triton's extension, tritonclient's default): status, headers,
/// the reply's JSON header and its raw output bytes.
async fn post_binary(s: &Server, body: &[u8], header_length: usize) -> (u16, String, serde_json::Value, Vec<u8>) {
    let r = s
        .client
        .post(format!("{}{INFER}", s.url))
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", header_length.to_string())
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    let split: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let header = serde_json::from_slice(&bytes[..split]).unwrap();
    (status, kind, header, bytes[split..].to_vec())
}

#[tokio::test]
async fn binary_tensor_replies_are_kept_and_repeated_from_the_reply_cache() {
    let s = Server::start().await;
    let header = json!({
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "parameters": {"binary_data_size": 32}}],
        "outputs": [{"name": "trust_score", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for v in row(30) {
        body.extend_from_slice(&(v as f32).to_le_bytes());
    }
    let (status, kind, first, first_raw) = post_binary(&s, &body, header.len()).await;
    assert_eq!((status, kind.as_str()), (200, "application/octet-stream"), "{first}");
    assert_eq!(first["parameters"]["cached"], false);
    assert_eq!(first["outputs"][0]["parameters"]["binary_data_size"], 4);
    let reply_hits = [
        ("model", "trust-scorer"),
        ("source", "reply"),
        ("transport", "http_binary"),
    ];
    assert_eq!(
        counter(&s, "invariant_inference_requests_total", &reply_hits).await,
        0.0
    );
    // The identical request: the stored reply, framed as the first (its own header length).
    let (status, kind, again, again_raw) = post_binary(&s, &body, header.len()).await;
    assert_eq!((status, kind.as_str()), (200, "application/octet-stream"), "{again}");
    assert_eq!(again["parameters"]["cached"], true);
    assert_eq!(again["outputs"], first["outputs"]);
    assert_eq!(again_raw, first_raw, "a stored reply carries the computed bits");
    assert_eq!(
        counter(&s, "invariant_inference_requests_total", &reply_hits).await,
        1.0
    );
    // The same input as JSON is another request: answered in JSON, with the same bits.
    let (status, json_reply) = s.post(INFER, &trust_request(&[row(30)])).await;
    assert_eq!(status, 200, "{json_reply}");
    assert_eq!(
        f32_bits(output(&json_reply, "trust_score")),
        vec![u32::from_le_bytes(first_raw[..4].try_into().unwrap())]
    );
    assert_eq!(
        counter(&s, "invariant_inference_requests_total", &reply_hits).await,
        1.0
    );
    // A body cut short under the same header length is a different request, refused by the
    // full path, and the stored reply is still served after it.
    let (status, cut) = s
        .post_raw(
            INFER,
            body[..body.len() - 1].to_vec(),
            &[("inference-header-content-length", &header.len().to_string())],
        )
        .await;
    assert_eq!(status, 400, "{cut}");
    let (_, _, third, third_raw) = post_binary(&s, &body, header.len()).await;
    assert_eq!(
        (third["parameters"]["cached"].clone(), third_raw),
        (json!(true), first_raw)
    );
    assert_eq!(
        counter(&s, "invariant_inference_requests_total", &reply_hits).await,
        2.0
    );
}
