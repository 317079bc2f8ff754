//! Replicas that agree: the control state shared through Redis loses no acknowledged
//! transition under concurrency, across kill -9 and across a partition; replicas converge; a
//! second server on one embedded state directory refuses to start; a registry file left in
//! the model repository is adopted once.

use invariant_blackbox::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Options of a replica sharing `redis_url` for its cache and its control state.
fn replica(repo: &RepoCopy, redis_url: &str, poll_ms: u64) -> ServerOptions {
    ServerOptions {
        extra: format!("[cache]\nredis_url = \"{redis_url}\"\n[control]\nbackend = \"redis\"\npoll_ms = {poll_ms}\n"),
        ..repo.options()
    }
}

/// The `i`-th transition of a mix that is valid in any order: canaries of two models at
/// varying shares, and a version deprecated and staged again.
fn transition(i: usize) -> (&'static str, &'static str, &'static str, Value) {
    let reason = format!("t{i}");
    match i % 4 {
        0 => (
            "trust-scorer",
            "1.1.0",
            "canary",
            json!({"percent": (i % 50) + 1, "reason": reason}),
        ),
        1 => ("price-advisor", "1.0.0", "deprecate", json!({"reason": reason})),
        2 => (
            "risk-assessor",
            "1.0.0",
            "canary",
            json!({"percent": (i % 30) + 1, "reason": reason}),
        ),
        _ => ("price-advisor", "1.0.0", "stage", json!({"reason": reason})),
    }
}

/// Every transition in a server's registry views, by revision.
async fn history(s: &Server) -> BTreeMap<u64, Value> {
    let (status, all) = s.get("/admin/v1/models").await;
    assert_eq!(status, 200, "{all}");
    let mut out = BTreeMap::new();
    for m in all["models"].as_array().unwrap() {
        for t in m["history"].as_array().unwrap() {
            let revision = t["revision"].as_u64().unwrap();
            assert!(out.insert(revision, t.clone()).is_none(), "revision {revision} twice");
        }
    }
    out
}

async fn revision(s: &Server) -> u64 {
    let (_, all) = s.get("/admin/v1/models").await;
    all["revision"].as_u64().unwrap()
}

/// What a server routes: each model's active version and canary.
async fn routing(s: &Server) -> Vec<Value> {
    let (_, all) = s.get("/admin/v1/models").await;
    all["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!([m["name"], m["active"], m["canary"], m["corridor_active"]]))
        .collect()
}

/// Waits until `s` applies registry revision `want`; returns how long it took.
async fn converged(s: &Server, want: u64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = revision(s).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{} applies registry revision {got}, not {want}, after {within:?}",
            s.url
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that the history is gapless from 1 and holds every acknowledged transition (reason →
/// revision it was acknowledged with) exactly once, at its revision.
fn assert_complete(history: &BTreeMap<u64, Value>, acked: &BTreeMap<String, u64>) {
    let revisions: Vec<u64> = history.keys().copied().collect();
    let expected: Vec<u64> = (1..=revisions.len() as u64).collect();
    assert_eq!(revisions, expected, "revisions are gapless from 1");
    let mut by_reason: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (rev, t) in history {
        by_reason.entry(t["reason"].as_str().unwrap()).or_default().push(*rev);
    }
    for (reason, rev) in acked {
        assert_eq!(
            by_reason.get(reason.as_str()),
            Some(&vec![*rev]),
            "acknowledged transition {reason} (revision {rev}) is in the history exactly once, at its revision"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_sharing_redis_keep_every_acknowledged_transition_and_converge() {
    let redis = RedisServer::start();
    let repo = RepoCopy::new();
    let mut replicas = Vec::new();
    // Polling only every 30 s: converging within 3 s below is the notifications' doing.
    for _ in 0..3 {
        replicas.push(Server::start_with(replica(&repo, &redis.url(), 30_000)).await);
    }
    let replicas = std::sync::Arc::new(replicas);
    // 200 transitions at once, spread over the three replicas.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let replicas = replicas.clone();
        tasks.push(tokio::spawn(async move {
            let s = &replicas[i % 3];
            let (model, version, action, body) = transition(i);
            let (status, r) = s.admin(model, version, action, body).await;
            (i, status, r)
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        let (i, status, r) = t.await.unwrap();
        assert_eq!(status, 200, "transition t{i}: {r}");
        let revision = r["transition"]["revision"].as_u64().unwrap();
        acked.insert(format!("t{i}"), revision);
    }
    let distinct: BTreeSet<u64> = acked.values().copied().collect();
    assert_eq!(
        distinct.len(),
        200,
        "no two transitions were acknowledged with the same revision"
    );
    // Every replica applies revision 200 at once.
    for s in replicas.iter() {
        converged(s, 200, Duration::from_secs(3)).await;
    }
    let first = history(&replicas[0]).await;
    assert_eq!(first.len(), 200);
    assert_complete(&first, &acked);
    let routes = routing(&replicas[0]).await;
    for s in &replicas[1..] {
        assert_eq!(history(s).await, first, "{} has the same history", s.url);
        assert_eq!(routing(s).await, routes, "{} routes the same", s.url);
    }
    // The same routing key reaches the same version on every replica.
    let req = trust_request(&[TRUST_ROW]);
    for key in ["k1", "k2", "k3", "k4", "k5", "k6"] {
        let mut versions = BTreeSet::new();
        for s in replicas.iter() {
            let (status, r) = s
                .post_raw(
                    "/v2/models/trust-scorer/infer",
                    req.to_string(),
                    &[("x-routing-key", key)],
                )
                .await;
            assert_eq!(status, 200, "{r}");
            versions.insert(r["model_version"].as_str().unwrap().to_string());
        }
        assert_eq!(versions.len(), 1, "key {key}: {versions:?}");
    }
    // The applied revision is in metrics, health and the CLI's list of replicas.
    for s in replicas.iter() {
        let rev = counter(s, "invariant_control_revision", &[("document", "registry")]).await;
        assert_eq!(rev, 200.0);
        let (_, ready) = s.get("/v2/health/ready").await;
        assert_eq!(ready["control"]["backend"], "redis", "{ready}");
        assert_eq!(ready["control"]["revisions"]["registry"], 200, "{ready}");
        assert!(ready["control"]["error"].is_null(), "{ready}");
    }
    let urls: Vec<String> = replicas.iter().map(|s| s.url.clone()).collect();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let mut args = vec!["models", "list", "--json"];
        for u in &urls {
            args.extend(["--server", u.as_str()]);
        }
        invariant(&args)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["agree"], true, "{list}");
    let seen: Vec<&Value> = list["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["control"]["revisions"]["registry"])
        .collect();
    assert_eq!(seen, [&json!(200), &json!(200), &json!(200)]);
    let ids: BTreeSet<&str> = list["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["control"]["server_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "one row per replica: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_redis_keeps_serving_and_converges_after_reconnecting() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(redis.port);
    let repo = RepoCopy::new();
    let a = Server::start_with(replica(&repo, &redis.url(), 500)).await;
    let c = Server::start_with(replica(&repo, &proxy.redis_url(), 500)).await;
    let (status, r) = a
        .admin(
            "trust-scorer",
            "1.1.0",
            "canary",
            json!({"percent": 10, "reason": "before"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    converged(&c, 1, Duration::from_secs(3)).await;

    proxy.cut();
    for (i, percent) in [20, 30, 40, 50, 60].into_iter().enumerate() {
        let body = json!({"percent": percent, "reason": format!("during-{i}")});
        assert_eq!(a.admin("trust-scorer", "1.1.0", "canary", body).await.0, 200);
    }
    assert_eq!(
        a.admin("risk-assessor", "1.0.0", "promote", json!({"reason": "during"}))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Cut off, C keeps the last state it had and keeps serving; its health says why.
    assert_eq!(revision(&c).await, 1);
    let (status, r) = c
        .post("/v2/models/trust-scorer/infer", &trust_request(&[TRUST_ROW]))
        .await;
    assert_eq!(status, 200, "{r}");
    let (_, ready) = c.get("/v2/health/ready").await;
    assert!(!ready["control"]["error"].is_null(), "{ready}");

    proxy.restore();
    let took = converged(&c, 7, Duration::from_secs(5)).await;
    assert_eq!(routing(&c).await, routing(&a).await);
    assert_eq!(history(&c).await, history(&a).await);
    let (_, view) = c.get("/admin/v1/models/trust-scorer").await;
    assert_eq!(view["canary"]["percent"], 60.0, "{view}");
    let (_, view) = c.get("/admin/v1/models/risk-assessor").await;
    assert_eq!(view["active"], "1.0.0", "{view}");
    eprintln!("converged {took:?} after the partition healed");
    // And its health is clean again.
    let (_, ready) = c.get("/v2/health/ready").await;
    assert!(ready["control"]["error"].is_null(), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_replica_mid_transition_loses_no_acknowledged_change() {
    let redis = RedisServer::start();
    let repo = RepoCopy::new();
    let dir = tempfile::tempdir().unwrap();
    let a_options = ServerOptions {
        state_dir: Some(dir.path().join("a")),
        ..replica(&repo, &redis.url(), 500)
    };
    let mut a = Server::start_with(a_options.clone()).await;
    let b = Server::start_with(replica(&repo, &redis.url(), 500)).await;
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let (client, url) = (a.client.clone(), a.url.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0.. {
                let i = w * 1000 + n;
                let (model, version, action, body) = transition(i);
                let sent = client
                    .post(format!("{url}/admin/v1/models/{model}/versions/{version}/{action}"))
                    .json(&body)
                    .send()
                    .await;
                let Ok(reply) = sent else { break };
                if reply.status() != 200 {
                    break;
                }
                let Ok(r) = reply.json::<Value>().await else { break };
                acked.push((format!("t{i}"), r["transition"]["revision"].as_u64().unwrap()));
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.kill_9();
    let mut acked = BTreeMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() >= 4,
        "transitions were acknowledged before the kill: {acked:?}"
    );
    let newest = *acked.values().max().unwrap();
    // B (which never restarted) and A restarted on its state both hold every acknowledged one.
    let start = Instant::now();
    while revision(&b).await < newest {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "B never applied revision {newest}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settled = revision(&b).await;
    let a = Server::start_with(a_options).await;
    converged(&a, settled, Duration::from_secs(3)).await;
    for s in [&a, &b] {
        let h = history(s).await;
        assert_eq!(h.len() as u64, settled);
        assert_complete(&h, &acked);
    }
}

#[tokio::test]
async fn a_second_server_on_one_embedded_state_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions {
        state_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut first = Server::start_with(options.clone()).await;
    let Err(log) = Server::try_start(options.clone()).await else {
        panic!("a second server started on the same state directory");
    };
    assert!(log.contains("is in use by another server"), "{log}");
    assert!(log.contains(&format!("process {}", first.pid())), "{log}");
    assert!(
        log.contains("backend = \"redis\""),
        "the message says how to run replicas: {log}"
    );
    first.assert_still_serving().await;
    // kill -9 releases the claim: the next server starts on the same state.
    first.kill_9();
    let again = Server::start_with(options).await;
    again.assert_still_serving().await;
}

#[tokio::test]
async fn a_registry_file_left_in_the_model_repository_is_adopted_once_into_the_state_directory() {
    let repo = RepoCopy::new();
    let old = json!({
        "format": "invariant-registry/1",
        "revision": 3,
        "models": {"risk-assessor": {
            "versions": {"1.0.0": "ACTIVE", "1.1.0": "STAGED"},
            "active": "1.0.0",
            "previous": ["1.1.0"]
        }},
        "history": []
    });
    let legacy = repo.models().join("registry.json");
    std::fs::write(&legacy, old.to_string()).unwrap();
    let options = ServerOptions {
        state_dir: Some(repo.state_dir()),
        ..repo.options()
    };
    let mut s = Server::start_with(options.clone()).await;
    let (_, view) = s.get("/admin/v1/models/risk-assessor").await;
    assert_eq!(
        (view["active"].clone(), view["revision"].clone()),
        (json!("1.0.0"), json!(3))
    );
    let adopted = repo.state_dir().join("registry.json");
    assert!(adopted.exists(), "the state is in state_dir now");
    let (status, r) = s
        .admin(
            "risk-assessor",
            "1.1.0",
            "canary",
            json!({"percent": 5, "reason": "after"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["transition"]["revision"], 4);
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&adopted).unwrap()).unwrap();
    assert_eq!(stored["revision"], 4);
    let untouched: Value = serde_json::from_str(&std::fs::read_to_string(&legacy).unwrap()).unwrap();
    assert_eq!(untouched, old, "the model repository is not written");
    // Adopted once: a restart keeps revision 4, not the repository's 3.
    s.kill_9();
    let s = Server::start_with(options).await;
    assert_eq!(revision(&s).await, 4);
}
