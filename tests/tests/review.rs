//! The human review queue: deterministic order, SLAs, one owner per item under concurrent
//! claims, claim expiry, corridor-scoped reviewers, intake stopped by a freeze while the queue
//! stays workable, every action audited, metrics, and durability across kill -9.

use invariant_blackbox::*;
use serde_json::{json, Value};
use std::time::Duration;

const H_MS: i64 = 3_600_000;

async fn send(s: &Server, method: reqwest::Method, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = s.client.request(method, format!("{}{path}", s.url));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

const ITEMS: &str = "/v1/corridors/UAE-SA/review/items";

fn item(priority: &str, subject: &str) -> Value {
    json!({"priority": priority, "subject": subject, "reason_codes": ["HIGH_VALUE_OVER_1000"],
           "facts": {"amount": 1800, "currency": "USD"}})
}

async fn submit(s: &Server, key: Option<&str>, priority: &str, subject: &str) -> Value {
    let (status, r) = send(s, reqwest::Method::POST, ITEMS, key, Some(item(priority, subject))).await;
    assert_eq!(status, 200, "{r}");
    r
}

async fn act(s: &Server, key: Option<&str>, id: &str, action: &str, body: Value) -> (u16, Value) {
    send(
        s,
        reqwest::Method::POST,
        &format!("{ITEMS}/{id}/{action}"),
        key,
        Some(body),
    )
    .await
}

async fn every_item(s: &Server) -> Value {
    let path = format!("{ITEMS}?status=open,claimed,resolved");
    send(s, reqwest::Method::GET, &path, None, None).await.1
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reviewers_work_the_queue_in_order_one_owner_at_a_time_and_every_action_is_audited() {
    let s = Server::start_with(ServerOptions {
        auth: true,
        extra: "[review]\nclaim_ttl_ms = 1500\n[control]\npoll_ms = 100\n".into(),
        ..Default::default()
    })
    .await;
    let (_, ana) = s.create_key("ana", &["reviewer"], &["UAE-SA"]).await;
    let (_, ben) = s.create_key("ben", &["reviewer"], &["UAE-SA"]).await;
    let (_, uk) = s.create_key("uk-reviewer", &["reviewer"], &["UK-NG"]).await;
    let (_, infer) = s.create_key("svc", &["infer"], &["UAE-SA"]).await;
    let (_, ops) = s.create_key("ops", &["admin", "metrics"], &["*"]).await;
    let (ana, ben, uk, infer, ops) = (ana.as_str(), ben.as_str(), uk.as_str(), infer.as_str(), ops.as_str());

    let p4 = submit(&s, Some(ana), "P4", "listing:1").await;
    let p1 = submit(&s, Some(ana), "P1", "order:2").await;
    let p2 = submit(&s, Some(ben), "P2", "account:3").await;
    let p1b = submit(&s, Some(ben), "p1", "order:4").await;
    assert_eq!(
        p1["deadline_ms"].as_i64().unwrap() - p1["created_ms"].as_i64().unwrap(),
        4 * H_MS
    );
    assert_eq!(
        p4["deadline_ms"].as_i64().unwrap() - p4["created_ms"].as_i64().unwrap(),
        24 * H_MS
    );
    assert_eq!(p1["status"], "open");
    let (status, list) = send(&s, reqwest::Method::GET, ITEMS, Some(ana), None).await;
    assert_eq!(status, 200, "{list}");
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    assert_eq!(
        ids(&list),
        [id(&p1), id(&p1b), id(&p2), id(&p4)],
        "priority, deadline, id"
    );

    // Eight reviewers claim one item at the same moment: exactly one gets it.
    let target = id(&p1);
    let mut reviewers = Vec::new();
    for n in 0..8 {
        reviewers.push(s.create_key(&format!("r{n}"), &["reviewer"], &["UAE-SA"]).await.1);
    }
    let mut tasks = Vec::new();
    for key in reviewers.clone() {
        let (client, url) = (s.client.clone(), format!("{}{ITEMS}/{target}/claim", s.url));
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("authorization", format!("Bearer {key}"))
                .send()
                .await
                .unwrap();
            (key, r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (key, status, text) = t.await.unwrap();
        match status {
            200 => winners.push(key),
            409 => assert!(text.contains("claimed by"), "{text}"),
            other => panic!("claim answered {other}: {text}"),
        }
    }
    assert_eq!(winners.len(), 1, "one owner");
    let owner = winners[0].as_str();
    let other = reviewers.iter().find(|k| k.as_str() != owner).unwrap().as_str();
    let (_, shown) = send(&s, reqwest::Method::GET, &format!("{ITEMS}/{target}"), Some(ana), None).await;
    assert_eq!(shown["status"], "claimed", "{shown}");
    let (status, r) = act(&s, Some(other), &target, "claim", json!({})).await;
    assert_eq!(status, 409, "{r}");
    let (status, r) = act(&s, Some(other), &target, "resolve", json!({"decision": "approve"})).await;
    assert_eq!(status, 409, "only the claimant resolves: {r}");

    // The claim expires: the other reviewer takes it; the first can no longer resolve.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (_, shown) = send(&s, reqwest::Method::GET, &format!("{ITEMS}/{target}"), Some(ana), None).await;
    assert_eq!(shown["status"], "open", "{shown}");
    assert_eq!(act(&s, Some(other), &target, "claim", json!({})).await.0, 200);
    let (status, r) = act(&s, Some(owner), &target, "resolve", json!({"decision": "approve"})).await;
    assert_eq!(status, 409, "{r}");
    let (status, done) = act(
        &s,
        Some(other),
        &target,
        "resolve",
        json!({"decision": "reject", "note": "forged invoice"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (done["status"].clone(), done["resolution"]["decision"].clone()),
        (json!("resolved"), json!("reject"))
    );
    let (_, open) = send(&s, reqwest::Method::GET, ITEMS, Some(ana), None).await;
    assert!(!ids(&open).contains(&target));
    let (_, resolved) = send(
        &s,
        reqwest::Method::GET,
        &format!("{ITEMS}?status=resolved"),
        Some(ana),
        None,
    )
    .await;
    assert_eq!(ids(&resolved), vec![target.clone()]);

    // Escalation and release.
    let (status, up) = act(
        &s,
        Some(ana),
        &id(&p4),
        "escalate",
        json!({"reason": "repeat offender"}),
    )
    .await;
    assert_eq!((status, up["priority"].as_str()), (200, Some("P3")), "{up}");
    assert_eq!(act(&s, Some(ana), &id(&p2), "claim", json!({})).await.0, 200);
    assert_eq!(act(&s, Some(ana), &id(&p2), "release", json!({})).await.0, 200);
    assert_eq!(act(&s, Some(ben), &id(&p2), "claim", json!({})).await.0, 200);

    // Scopes: other corridors' reviewers, inference keys and no key are refused.
    assert_eq!(send(&s, reqwest::Method::GET, ITEMS, Some(uk), None).await.0, 403);
    assert_eq!(send(&s, reqwest::Method::GET, ITEMS, Some(infer), None).await.0, 403);
    assert_eq!(send(&s, reqwest::Method::GET, ITEMS, None, None).await.0, 401);
    assert_eq!(
        send(
            &s,
            reqwest::Method::GET,
            "/v1/corridors/UK-NG/review/items",
            Some(uk),
            None
        )
        .await
        .0,
        200
    );

    // Bad input names the field; the server keeps serving.
    for (body, field) in [
        (json!({"priority": "P9", "subject": "x"}), "priority"),
        (json!({"priority": "P1", "subject": ""}), "subject"),
        (json!({"priority": "P1", "subject": "x", "colour": 1}), "colour"),
        (
            json!({"priority": "P1", "subject": "x", "reason_codes": ["not ok"]}),
            "reason_codes[0]",
        ),
        (json!({"priority": "P1", "subject": "x", "facts": [1]}), "facts"),
    ] {
        let (status, r) = send(&s, reqwest::Method::POST, ITEMS, Some(ana), Some(body)).await;
        assert_error(&(status, r), 400, &[field]);
    }
    assert_error(
        &act(&s, Some(ben), &id(&p2), "resolve", json!({})).await,
        400,
        &["decision"],
    );
    assert_error(
        &act(&s, Some(ben), &id(&p2), "resolve", json!({"decision": "maybe"})).await,
        400,
        &["decision"],
    );
    assert_error(
        &act(&s, Some(ben), &id(&p2), "teleport", json!({})).await,
        404,
        &["teleport"],
    );
    assert_error(
        &act(&s, Some(ben), "UAE-SA-99999999", "claim", json!({})).await,
        404,
        &["UAE-SA-99999999"],
    );
    assert_error(
        &send(
            &s,
            reqwest::Method::GET,
            "/v1/corridors/FR-MA/review/items",
            Some(ops),
            None,
        )
        .await,
        404,
        &["FR-MA"],
    );

    // Metrics and the corridor's health carry the queue.
    let auth_metrics = |path: &'static str| send(&s, reqwest::Method::GET, path, Some(ops), None);
    let text = s
        .client
        .get(format!("{}/metrics", s.url))
        .header("authorization", format!("Bearer {ops}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |name: &str, p: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(name) && l.contains("corridor=\"UAE-SA\"") && l.contains(&format!("priority=\"{p}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(line("invariant_review_queue_depth", "P1"), Some(1.0), "{text}");
    assert_eq!(line("invariant_review_queue_depth", "P2"), Some(1.0));
    assert_eq!(line("invariant_review_queue_depth", "P3"), Some(1.0));
    assert_eq!(line("invariant_review_queue_depth", "P4"), Some(0.0));
    let (_, health) = auth_metrics("/v1/corridors/UAE-SA/health").await;
    assert_eq!(health["review"]["depth"]["P1"], 1, "{health}");
    assert_eq!(health["review"]["claimed"], 1, "{health}");
    let (_, summary) = send(
        &s,
        reqwest::Method::GET,
        "/v1/corridors/UAE-SA/review/summary",
        Some(ana),
        None,
    )
    .await;
    assert_eq!(summary["active_reviewers"], 1, "{summary}");

    // Every action is in the corridor's audit chain, with who did it.
    let actions: Vec<String> = s
        .audit()
        .iter()
        .filter(|r| r["event"] == "review" && r["chain"] == "UAE-SA")
        .map(|r| r["action"].as_str().unwrap().to_string())
        .collect();
    for a in ["submit", "claim", "resolve", "escalate", "release"] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
    assert_eq!(actions.iter().filter(|a| *a == "submit").count(), 4);
    let infer_call = send(
        &s,
        reqwest::Method::POST,
        "/v2/models/trust-scorer/infer",
        Some(infer),
        Some(trust_request(&[TRUST_ROW])),
    )
    .await;
    assert_eq!(infer_call.0, 200, "still serving: {}", infer_call.1);
}

#[tokio::test]
async fn a_frozen_corridor_takes_no_new_items_but_its_queue_stays_workable() {
    let s = Server::start().await;
    let first = submit(&s, None, "P2", "account:9").await;
    let id = first["id"].as_str().unwrap().to_string();
    let freeze = json!({"op": "freeze", "scope": "corridor:UAE-SA", "reason": "incident 7"});
    assert_eq!(s.post("/admin/v1/governance", &freeze).await.0, 200);
    let (status, r) = send(&s, reqwest::Method::POST, ITEMS, None, Some(item("P1", "order:10"))).await;
    assert_eq!(status, 503, "{r}");
    assert!(r["error"].as_str().unwrap().contains("frozen"), "{r}");
    assert_eq!(act(&s, None, &id, "claim", json!({})).await.0, 200);
    let (status, r) = act(&s, None, &id, "resolve", json!({"decision": "approve", "note": "ok"})).await;
    assert_eq!(status, 200, "{r}");
    // The CLI works the same queue through the server.
    let url = s.url.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let submitted = invariant(&[
            "review",
            "submit",
            "--server",
            &url,
            "--corridor",
            "UAE-SA",
            "--priority",
            "P0",
            "--subject",
            "escrow:77",
            "--reason-code",
            "ESCROW_DISPUTE",
        ]);
        assert_ne!(submitted.0, 0, "a frozen corridor refuses the CLI's item too");
        assert!(submitted.2.contains("frozen"), "{}", submitted.2);
        invariant(&[
            "review",
            "list",
            "--server",
            &url,
            "--corridor",
            "UAE-SA",
            "--status",
            "resolved",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&id) && out.contains("resolved") && out.contains("account:9"),
        "{out}"
    );
    // Another corridor takes items as usual.
    let (status, r) = send(
        &s,
        reqwest::Method::POST,
        "/v1/corridors/US-EG/review/items",
        None,
        Some(item("P3", "kyc:1")),
    )
    .await;
    assert_eq!(status, 200, "{r}");
}

#[tokio::test]
async fn acknowledged_review_changes_survive_kill_9() {
    let state = tempfile::tempdir().unwrap();
    let options = ServerOptions {
        state_dir: Some(state.path().to_path_buf()),
        ..Default::default()
    };
    let mut s = Server::start_with(options.clone()).await;
    let mut made = Vec::new();
    for (i, p) in ["P0", "P3", "P5", "P1", "P4"].into_iter().enumerate() {
        made.push(
            submit(&s, None, p, &format!("subject:{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(act(&s, None, &made[1], "claim", json!({})).await.0, 200);
    assert_eq!(act(&s, None, &made[2], "claim", json!({})).await.0, 200);
    let (status, _) = act(
        &s,
        None,
        &made[2],
        "resolve",
        json!({"decision": "approve", "note": "fine"}),
    )
    .await;
    assert_eq!(status, 200);
    let before = every_item(&s).await;
    s.kill_9();
    let s = Server::start_with(options).await;
    let after = every_item(&s).await;
    let strip = |v: &Value| -> Vec<Value> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| json!([i["id"], i["priority"], i["claim"], i["resolution"], i["deadline_ms"]]))
            .collect()
    };
    assert_eq!(strip(&after), strip(&before));
    assert_eq!(strip(&after).len(), 5);
    // The sequence continues.
    let next = submit(&s, None, "P2", "subject:5").await;
    assert_eq!(next["id"], "UAE-SA-00000006");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_redis_queue_claims_never_collide_and_acknowledged_changes_survive_kill_9() {
    let redis = RedisServer::start();
    // Replicas share the key pepper (docs/replicas.md).
    let shared = tempfile::tempdir().unwrap();
    let pepper = shared.path().join("key-pepper");
    std::fs::write(&pepper, "a-pepper-shared-by-both-replicas-0123456789abcdef").unwrap();
    let extra = format!(
        "[cache]\nredis_url = \"{}\"\n[control]\nbackend = \"redis\"\npoll_ms = 100\n[review]\nbackend = \"redis\"\n[auth]\npepper_file = \"{}\"\n",
        redis.url(),
        pepper.display()
    );
    let options = || ServerOptions {
        auth: true,
        extra: extra.clone(),
        ..Default::default()
    };
    let mut a = Server::start_with(options()).await;
    let b = Server::start_with(options()).await;
    let (ana_id, ana) = a.create_key("ana", &["reviewer"], &["UAE-SA"]).await;
    let (_, ben) = a.create_key("ben", &["reviewer"], &["UAE-SA"]).await;
    // The keys are in the shared control state: B accepts them too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = send(&b, reqwest::Method::GET, ITEMS, Some(&ben), None).await;
        if answer.0 == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never accepted the key: {answer:?}\n{}",
            std::fs::read_to_string(b.config_path()).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Submissions through both replicas at once: one sequence, no id twice, no gap.
    let mut calls = Vec::new();
    for i in 0..30 {
        let (server, key) = if i % 2 == 0 {
            (&a, ana.clone())
        } else {
            (&b, ben.clone())
        };
        let priority = ["P1", "P2", "P4"][i % 3];
        calls.push(async move { submit(server, Some(&key), priority, &format!("listing:R-{i}")).await });
    }
    let submitted: Vec<Value> = join_all(calls).await;
    let mut got: Vec<String> = submitted
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let want: Vec<String> = (1..=30).map(|n| format!("UAE-SA-{n:08}")).collect();
    assert_eq!(got, want);
    // Both replicas list the same queue in the same order.
    let on_a = listed(&a, &ana).await;
    assert_eq!(on_a.len(), 30);
    assert_eq!(on_a, listed(&b, &ben).await);
    // Concurrent claims of the same items through different replicas: one owner each.
    let targets: Vec<String> = on_a[..10].to_vec();
    let mut races = Vec::new();
    for id in &targets {
        let (a, b, ana, ben, id) = (&a, &b, ana.clone(), ben.clone(), id.clone());
        races.push(async move {
            let (x, y) = tokio::join!(
                act(a, Some(&ana), &id, "claim", json!({})),
                act(b, Some(&ben), &id, "claim", json!({}))
            );
            (id, x, y)
        });
    }
    for (id, x, y) in join_all(races).await {
        let mut codes = [x.0, y.0];
        codes.sort();
        assert_eq!(codes, [200, 409], "{id}: {x:?} {y:?}");
        let winner = if x.0 == 200 { &x.1 } else { &y.1 };
        let (_, shown) = send(&b, reqwest::Method::GET, &format!("{ITEMS}/{id}"), Some(&ben), None).await;
        assert_eq!(shown["claim"]["by"], winner["claim"]["by"], "{shown}");
    }
    // Resolved through A, acknowledged, then A is killed: B has it, and the queue summary.
    let first = &targets[0];
    let (_, owner) = send(&a, reqwest::Method::GET, &format!("{ITEMS}/{first}"), Some(&ana), None).await;
    let owner_key = if owner["claim"]["by"] == ana_id.as_str() {
        ana.clone()
    } else {
        ben.clone()
    };
    let (status, done) = act(
        &a,
        Some(&owner_key),
        first,
        "resolve",
        json!({"decision": "reject", "note": "stolen card"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    let (status, late) = send(
        &a,
        reqwest::Method::POST,
        ITEMS,
        Some(&ana),
        Some(item("P0", "escrow:E-9")),
    )
    .await;
    assert_eq!(status, 200, "{late}");
    a.kill_9();
    let (_, shown) = send(&b, reqwest::Method::GET, &format!("{ITEMS}/{first}"), Some(&ben), None).await;
    assert_eq!(
        (shown["status"].clone(), shown["resolution"]["note"].clone()),
        (json!("resolved"), json!("stolen card")),
        "{shown}"
    );
    let (status, shown) = send(
        &b,
        reqwest::Method::GET,
        &format!("{ITEMS}/{}", late["id"].as_str().unwrap()),
        Some(&ben),
        None,
    )
    .await;
    assert_eq!((status, shown["priority"].clone()), (200, json!("P0")), "{shown}");
    let (_, summary) = send(
        &b,
        reqwest::Method::GET,
        "/v1/corridors/UAE-SA/review/summary",
        Some(&ben),
        None,
    )
    .await;
    assert_eq!(summary["depth"]["P0"], 1, "{summary}");
    assert_eq!(summary["claimed"], 9, "{summary}");
    let total: u64 = summary["depth"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 30, "29 left of the 30, and the P0: {summary}");
}

/// Every item of UAE-SA's queue in queue order, as `key` sees it on `s`.
async fn listed(s: &Server, key: &str) -> Vec<String> {
    let path = format!("{ITEMS}?status=open,claimed,resolved");
    ids(&send(s, reqwest::Method::GET, &path, Some(key), None).await.1)
}
