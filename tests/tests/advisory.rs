//! Advisory pipelines served: the served advisory is the gated one (same hash), on HTTP and
//! gRPC, cached or not, alone or among concurrent requests; repeats come from the cache with
//! the same hash; decisions that need a person enter the review queue; bad facts are refused
//! naming the field; a killed model gives the declared degraded decision; every advisory is
//! audited; facts come from the feature store for an entity; versions are staged, canaried,
//! promoted and rolled back in the registry, and reloaded while the server runs.

use invariant_blackbox::*;
use invariant_server::grpc::advisory::proto::{
    entity_key, fact_value, AdviseRequest, AdviseResponse, EntityKey, FactValue,
};
use serde_json::{json, Value};

const ADVISE: &str = "/v1/advisory/transaction-review";
/// The version that serves while none was promoted: the highest verified one.
const NEWEST: &str = "1.1.0";

/// The recorded golden cases of transaction-review `version`, by id.
fn golden_of(version: &str) -> Vec<Value> {
    let path = shipped_golden().join(format!("pipelines/transaction-review/{version}.jsonl"));
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn golden_cases() -> Vec<Value> {
    golden_of(NEWEST)
}

fn case(id: &str) -> Value {
    golden_cases().into_iter().find(|c| c["id"] == id).unwrap()
}

fn case_of(version: &str, id: &str) -> Value {
    golden_of(version).into_iter().find(|c| c["id"] == id).unwrap()
}

/// Calls `invariant.advisory.v1.AdvisoryService/Advise` with `metadata`.
async fn grpc_advise(
    s: &Server,
    request: AdviseRequest,
    metadata: &[(&'static str, &str)],
) -> Result<AdviseResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc))
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("gRPC ready");
    let mut request = tonic::Request::new(request);
    for (k, v) in metadata {
        request.metadata_mut().insert(*k, v.parse().unwrap());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/invariant.advisory.v1.AdvisoryService/Advise");
    let codec = tonic_prost::ProstCodec::<AdviseRequest, AdviseResponse>::default();
    client
        .unary(request, path, codec)
        .await
        .map(tonic::Response::into_inner)
}

/// A JSON object of facts as the gRPC message's typed facts.
fn grpc_request(facts: &Value, version: &str) -> AdviseRequest {
    let facts = facts
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let kind = match v {
                Value::Bool(b) => fact_value::Kind::Flag(*b),
                Value::String(t) => fact_value::Kind::Text(t.clone()),
                n => fact_value::Kind::Number(n.as_f64().unwrap()),
            };
            (k.clone(), FactValue { kind: Some(kind) })
        })
        .collect();
    AdviseRequest {
        pipeline: "transaction-review".into(),
        version: version.into(),
        facts,
        entities: Default::default(),
    }
}

#[tokio::test]
async fn served_advisories_are_the_gated_ones_cached_audited_and_queued_for_review() {
    let s = Server::start().await;
    let (status, list) = s.get("/v1/advisory").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["pipelines"][0]["state"], "READY", "{list}");

    // Every recorded case gives, through the server, the decision and hash the gate checks.
    for c in golden_cases() {
        let (status, r) = s.post(ADVISE, &json!({"facts": c["facts"]})).await;
        assert_eq!(status, 200, "{r}");
        let (a, want) = (&r["advisory"], &c["advisory"]);
        assert_eq!(a["advisory_hash"], want["advisory_hash"], "case {}: {r}", c["id"]);
        assert_eq!(
            (&a["recommendation"], &a["priority"], &a["reason_codes"]),
            (&want["recommendation"], &want["priority"], &want["reason_codes"]),
            "case {}",
            c["id"]
        );
        assert_eq!(r["cached"], false);
    }
    // A repeat is answered from the cache with the same hash, and queues nothing new.
    let high = case("001-high-value");
    let (_, again) = s.post(ADVISE, &json!({"facts": high["facts"]})).await;
    assert_eq!(
        (again["cached"].clone(), again["advisory"]["advisory_hash"].clone()),
        (json!(true), high["advisory"]["advisory_hash"].clone())
    );
    let item = again["review_item"]
        .as_str()
        .expect("a manual_review advisory enters the queue")
        .to_string();
    let (_, shown) = s.get(&format!("/v1/corridors/UAE-SA/review/items/{item}")).await;
    assert_eq!(shown["priority"], "P1", "{shown}");
    assert_eq!(shown["source"], format!("advisory:transaction-review@{NEWEST}"));
    assert_eq!(shown["reason_codes"], json!(["HIGH_VALUE_OVER_1000"]));
    assert_eq!(shown["subject"], "listing:L-8812");
    // Auto-cleared advisories queue nothing.
    let (_, clear) = s
        .post(ADVISE, &json!({"facts": case("011-no-escrow-false")["facts"]}))
        .await;
    assert_eq!(
        (
            clear["advisory"]["recommendation"].clone(),
            clear["review_item"].clone()
        ),
        (json!("auto_clear"), Value::Null)
    );
    assert_eq!(again["routing"], "active", "{again}");
    // The same request names the older version explicitly: that version's recorded hash.
    let (status, named) = s
        .post(ADVISE, &json!({"facts": high["facts"], "version": "1.0.0"}))
        .await;
    assert_eq!(
        (
            status,
            named["advisory"]["advisory_hash"].clone(),
            named["routing"].clone()
        ),
        (
            200,
            case_of("1.0.0", "001-high-value")["advisory"]["advisory_hash"].clone(),
            json!("explicit")
        )
    );

    // Every advisory is in the corridor's audit chain with its hash.
    let audited: Vec<Value> = s.audit().into_iter().filter(|r| r["event"] == "advisory").collect();
    // (The later requests repeat recorded cases: cache hits, not new advisories; the one
    // named 1.0.0 is new.)
    assert_eq!(
        audited.len(),
        golden_cases().len() + 1,
        "cache hits are not new advisories"
    );
    assert!(audited
        .iter()
        .any(|r| r["advisory_hash"] == high["advisory"]["advisory_hash"] && r["chain"] == "UAE-SA"));

    // Bad input names the field; the server keeps serving.
    let mut facts = high["facts"].clone();
    facts["amount_usd"] = json!(-5);
    assert_error(
        &s.post(ADVISE, &json!({"facts": facts})).await,
        400,
        &["facts.amount_usd"],
    );
    facts["amount_usd"] = json!("lots");
    assert_error(
        &s.post(ADVISE, &json!({"facts": facts})).await,
        400,
        &["facts.amount_usd"],
    );
    let mut missing = high["facts"].clone();
    missing.as_object_mut().unwrap().remove("kyc_level");
    assert_error(
        &s.post(ADVISE, &json!({"facts": missing})).await,
        400,
        &["facts.kyc_level", "required"],
    );
    assert_error(
        &s.post(ADVISE, &json!({"facts": high["facts"], "colour": 1})).await,
        400,
        &["colour"],
    );
    assert_error(
        &s.post("/v1/advisory/no-such", &json!({"facts": {}})).await,
        404,
        &["no-such"],
    );
    assert_error(
        &s.post(ADVISE, &json!({"facts": high["facts"], "version": "9.9.9"}))
            .await,
        404,
        &["9.9.9"],
    );
    s.assert_still_serving().await;
}

#[tokio::test]
async fn a_killed_model_gives_the_declared_degraded_decision_never_a_guess() {
    let s = Server::start().await;
    let kill = json!({"op": "kill", "scope": "model:risk-assessor", "reason": "incident 12"});
    let (status, r) = s.post("/admin/v1/governance", &kill).await;
    assert_eq!(status, 200, "{r}");
    let clean = case("000-clean-small");
    assert_eq!(
        clean["advisory"]["recommendation"], "auto_clear",
        "the models would clear it"
    );
    let (status, r) = s.post(ADVISE, &json!({"facts": clean["facts"]})).await;
    assert_eq!(status, 200, "{r}");
    let a = &r["advisory"];
    assert_eq!(
        (a["recommendation"].clone(), a["source"].clone()),
        (json!("manual_review"), json!("degraded")),
        "{r}"
    );
    assert_eq!(a["reason_codes"], json!(["AI_DEGRADED"]));
    assert_eq!(a["priority"], "P4");
    assert!(r["degraded"].as_str().unwrap().contains("risk-assessor"), "{r}");
    assert!(r["review_item"].is_string(), "a person decides instead: {r}");
    // Not cached: once the model is back, the models decide again.
    let revive = json!({"op": "revive", "scope": "model:risk-assessor"});
    assert_eq!(s.post("/admin/v1/governance", &revive).await.0, 200);
    let (_, r) = s.post(ADVISE, &json!({"facts": clean["facts"]})).await;
    assert_eq!(
        r["advisory"]["advisory_hash"], clean["advisory"]["advisory_hash"],
        "{r}"
    );
}

#[tokio::test]
async fn one_advisory_hash_on_http_and_grpc_cached_or_not_and_in_any_batch() {
    let s = Server::start().await;
    let cases = golden_cases();
    // Every case at once over HTTP, twice (concurrent requests share engine batches in any
    // composition), then over gRPC: always the recorded hash.
    let mut calls = Vec::new();
    for c in cases.iter().chain(cases.iter()) {
        let body = json!({"facts": c["facts"]});
        let want = c["advisory"]["advisory_hash"].clone();
        let s = &s;
        calls.push(async move {
            let (status, r) = s.post(ADVISE, &body).await;
            assert_eq!(status, 200, "{r}");
            assert_eq!(r["advisory"]["advisory_hash"], want, "{r}");
        });
    }
    join_all(calls).await;
    for c in &cases {
        for version in ["", NEWEST] {
            let r = grpc_advise(&s, grpc_request(&c["facts"], version), &[("x-corridor", "UAE-SA")])
                .await
                .unwrap_or_else(|e| panic!("case {}: {e}", c["id"]));
            let want = &c["advisory"];
            assert_eq!(
                r.advisory_hash,
                want["advisory_hash"].as_str().unwrap(),
                "case {}",
                c["id"]
            );
            assert_eq!(r.recommendation, want["recommendation"].as_str().unwrap());
            assert_eq!(r.priority, want["priority"].as_str().unwrap_or(""));
            let codes: Vec<&str> = want["reason_codes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(r.reason_codes, codes);
            assert!(r.cached, "HTTP asked first: the cache answers gRPC too");
            assert_eq!((r.version.as_str(), r.corridor.as_str()), (NEWEST, "UAE-SA"));
            assert_eq!(r.models.len(), 2);
        }
    }
    // A fresh corridor's cache is empty: computed over gRPC first, then HTTP hits it.
    let c = case("001-high-value");
    let fresh = grpc_advise(&s, grpc_request(&c["facts"], ""), &[("x-corridor", "US-EG")])
        .await
        .unwrap();
    assert!(!fresh.cached);
    assert_eq!(fresh.advisory_hash, c["advisory"]["advisory_hash"].as_str().unwrap());
    assert!(!fresh.review_item.is_empty(), "manual_review enters the queue");
    let (_, http) = s
        .post_raw(
            ADVISE,
            json!({"facts": c["facts"]}).to_string(),
            &[("x-corridor", "US-EG")],
        )
        .await;
    assert_eq!(
        (http["cached"].clone(), http["advisory"]["advisory_hash"].clone()),
        (json!(true), c["advisory"]["advisory_hash"].clone())
    );

    // Bad input over gRPC: the code and a message naming the field, as over HTTP.
    let mut missing = grpc_request(&c["facts"], "");
    missing.facts.remove("kyc_level");
    let e = grpc_advise(&s, missing, &[]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("facts.kyc_level"), "{e:?}");
    let mut empty = grpc_request(&c["facts"], "");
    empty.facts.insert("amount_usd".into(), FactValue { kind: None });
    let e = grpc_advise(&s, empty, &[]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("facts.amount_usd"), "{e:?}");
    let mut nan = grpc_request(&c["facts"], "");
    nan.facts.insert(
        "amount_usd".into(),
        FactValue {
            kind: Some(fact_value::Kind::Number(f64::NAN)),
        },
    );
    let e = grpc_advise(&s, nan, &[]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let mut unknown = grpc_request(&c["facts"], "");
    unknown.pipeline = "no-such".into();
    assert_eq!(
        grpc_advise(&s, unknown, &[]).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let e = grpc_advise(&s, grpc_request(&c["facts"], "9.9.9"), &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = grpc_advise(&s, grpc_request(&c["facts"], ""), &[("x-corridor", "XX-YY")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    s.assert_still_serving().await;
}

/// The element of array `list` whose `key` is `value`.
fn find(list: &Value, key: &str, value: &str) -> Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .find(|x| x[key] == value)
        .unwrap_or_else(|| panic!("no {key} = {value} in {list}"))
        .clone()
}

#[tokio::test]
async fn facts_come_from_the_feature_store_for_the_entity() {
    let s = Server::start().await;
    // Account facts a float32 feature holds exactly.
    let stored = json!({"account_age_days": 400.0, "completed_orders": 64.0, "dispute_rate": 0.125,
        "avg_rating": 4.5, "response_time_hours": 3.0, "kyc_level": 2.0, "cancellations_90d": 1.0,
        "chargebacks_365d": 0.0});
    let mut df = json!({"account_id": ["acct-7"], "event_timestamp": [now_unix() as i64]});
    for (k, v) in stored.as_object().unwrap() {
        df[k] = json!([v]);
    }
    let (status, r) = s
        .post_raw(
            "/v1/features/push",
            json!({"feature_view": "account_stats", "df": df}).to_string(),
            &[("x-corridor", "UAE-SA")],
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let high = case("001-high-value");
    let mut txn = high["facts"].clone();
    for k in trust_features() {
        txn.as_object_mut().unwrap().remove(&k);
    }
    let (status, from_store) = s
        .post(ADVISE, &json!({"facts": txn, "entities": {"account_id": "acct-7"}}))
        .await;
    assert_eq!(status, 200, "{from_store}");
    let features = from_store["features"].as_array().unwrap();
    assert_eq!(features.len(), 8, "{from_store}");
    assert!(
        features
            .iter()
            .all(|f| f["used"] == "store" && f["status"] == "PRESENT" && f["service"] == "trust_scorer_v1"),
        "{from_store}"
    );
    assert_eq!(features[2]["feature"], "dispute_rate");
    assert_eq!(features[2]["value"], 0.125);
    // The same facts sent by the caller: the same advisory, bit for bit.
    let mut sent = txn.clone();
    for (k, v) in stored.as_object().unwrap() {
        sent[k] = v.clone();
    }
    let (_, direct) = s.post(ADVISE, &json!({"facts": sent})).await;
    assert_eq!(
        direct["advisory"]["advisory_hash"], from_store["advisory"]["advisory_hash"],
        "{direct}"
    );
    assert_eq!(direct["cached"], true, "the same facts are the same advisory: {direct}");
    assert_eq!(direct["features"], json!([]));
    // A fact the caller sends wins over the stored one, and says so.
    let mut mixed = txn.clone();
    mixed["kyc_level"] = json!(0.0);
    let (_, r) = s
        .post(ADVISE, &json!({"facts": mixed, "entities": {"account_id": "acct-7"}}))
        .await;
    let kyc = find(&r["features"], "feature", "kyc_level");
    assert_eq!(
        (kyc["used"].clone(), kyc["value"].clone()),
        (json!("request"), Value::Null),
        "{r}"
    );
    assert_ne!(r["advisory"]["advisory_hash"], from_store["advisory"]["advisory_hash"]);
    // Over gRPC, with the entity key: the same advisory.
    let mut g = grpc_request(&txn, "");
    g.entities.insert(
        "account_id".into(),
        EntityKey {
            kind: Some(entity_key::Kind::Text("acct-7".into())),
        },
    );
    let r = grpc_advise(&s, g, &[]).await.unwrap();
    assert_eq!(
        r.advisory_hash,
        from_store["advisory"]["advisory_hash"].as_str().unwrap()
    );
    assert_eq!(r.features.len(), 8);
    assert!(r.features.iter().all(|f| f.used == "store"));
    // Another corridor's store does not hold acct-7: its declared defaults fill the facts,
    // flagged NOT_FOUND / default.
    let (status, other) = s
        .post_raw(
            ADVISE,
            json!({"facts": txn, "entities": {"account_id": "acct-7"}}).to_string(),
            &[("x-corridor", "US-EG")],
        )
        .await;
    assert_eq!(status, 200, "{other}");
    let f = other["features"].as_array().unwrap();
    assert!(
        f.iter().all(|f| f["status"] == "NOT_FOUND" && f["used"] == "default"),
        "{other}"
    );
    assert_eq!(f[3]["value"], 3.0, "avg_rating's declared default: {other}");
    // New accounts (age 0 by default) need a person.
    assert!(
        other["advisory"]["reason_codes"]
            .as_array()
            .unwrap()
            .contains(&json!("NEW_ACCOUNT")),
        "{other}"
    );
    // Bad entity keys name the field; a pipeline without features refuses entities.
    assert_error(
        &s.post(ADVISE, &json!({"facts": txn, "entities": {"user_id": "u1"}}))
            .await,
        400,
        &["entities.user_id"],
    );
    assert_error(
        &s.post(ADVISE, &json!({"facts": txn, "entities": {"account_id": 12}}))
            .await,
        400,
        &["entities.account_id"],
    );
    assert_error(
        &s.post(
            ADVISE,
            &json!({"facts": high["facts"], "entities": {"account_id": "acct-7"}, "version": "1.0.0"}),
        )
        .await,
        400,
        &["entities.account_id", "no feature service"],
    );
    // Without the entity, the account facts are simply missing.
    assert_error(
        &s.post(ADVISE, &json!({"facts": txn})).await,
        400,
        &["facts.account_age_days", "required"],
    );
    s.assert_still_serving().await;
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn versions_are_staged_canaried_promoted_and_reloaded_in_the_registry() {
    let repo = RepoCopy::new();
    let s = Server::start_with(repo.options()).await;
    let act = |version: &str, action: &str, body: Value| {
        let path = format!("/admin/v1/pipelines/transaction-review/versions/{version}/{action}");
        let s = &s;
        async move { s.post(&path, &body).await }
    };
    let hash_in = |corridor: &'static str, c: Value| {
        let s = &s;
        async move {
            let (status, r) = s
                .post_raw(
                    ADVISE,
                    json!({"facts": c["facts"]}).to_string(),
                    &[("x-corridor", corridor)],
                )
                .await;
            assert_eq!(status, 200, "{r}");
            (
                r["advisory"]["version"].as_str().unwrap().to_string(),
                r["routing"].as_str().unwrap().to_string(),
            )
        }
    };
    let c = case("000-clean-small");
    assert_eq!(
        hash_in("UAE-SA", c.clone()).await,
        (NEWEST.to_string(), "active".to_string())
    );
    // Promote 1.0.0: every corridor's default route moves to it.
    let (status, r) = act("1.0.0", "promote", json!({"reason": "pin"})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["transition"]["to"], "ACTIVE");
    assert_eq!(hash_in("UAE-SA", c.clone()).await.0, "1.0.0");
    // A canary of 1.1.0 at 100 % in UAE-SA only.
    let (status, r) = act(NEWEST, "canary", json!({"percent": 100, "corridors": ["UAE-SA"]})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        hash_in("UAE-SA", c.clone()).await,
        (NEWEST.to_string(), "canary".to_string())
    );
    assert_eq!(
        hash_in("US-EG", c.clone()).await,
        ("1.0.0".to_string(), "active".to_string())
    );
    let (_, list) = s.get("/v1/advisory").await;
    let lifecycle = |v: &str| find(&list["pipelines"], "version", v)["lifecycle"].clone();
    assert_eq!(
        (lifecycle("1.0.0"), lifecycle(NEWEST)),
        (json!("ACTIVE"), json!("CANARY")),
        "{list}"
    );
    // Roll the canary back: 1.0.0 everywhere; every transition is audited.
    let (status, r) = act(NEWEST, "rollback", json!({})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(hash_in("UAE-SA", c.clone()).await.0, "1.0.0");
    let transitions: Vec<Value> = s
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "transition" && r["model"] == "pipelines/transaction-review")
        .collect();
    assert_eq!(transitions.len(), 3, "{transitions:?}");
    // Unknown versions and actions are refused.
    assert_error(&act("9.9.9", "promote", json!({})).await, 404, &["9.9.9"]);
    assert_error(&act("1.0.0", "unload", json!({})).await, 404, &["unload"]);
    assert_error(
        &s.post("/admin/v1/pipelines/nope/versions/1.0.0/promote", &json!({}))
            .await,
        404,
        &["nope"],
    );

    // A new version with a changed threshold, without golden decisions yet: reloaded while
    // serving, it does not verify, and cannot be promoted.
    let dir = repo.models().join("pipelines/transaction-review/1.2.0");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(repo.models().join("pipelines/transaction-review/1.1.0/pipeline.toml"))
        .unwrap()
        .replacen("version = \"1.1.0\"", "version = \"1.2.0\"", 1)
        .replace("value = 1000.0", "value = 500.0");
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
    let (status, r) = s.post("/admin/v1/pipelines/reload", &json!({})).await;
    assert_eq!(status, 200, "{r}");
    let v120 = find(&r["pipelines"], "version", "1.2.0");
    assert_eq!(v120["state"], "FAILED", "{r}");
    assert!(v120["error"].as_str().unwrap().contains("1.2.0"), "{v120}");
    assert_error(&act("1.2.0", "promote", json!({})).await, 409, &["1.2.0"]);
    assert_error(
        &s.post(ADVISE, &json!({"facts": c["facts"], "version": "1.2.0"})).await,
        503,
        &["1.2.0"],
    );
    assert_eq!(
        hash_in("UAE-SA", c.clone()).await.0,
        "1.0.0",
        "the active version serves on"
    );
    // Its golden decisions recorded, a reload verifies it; promoted, it serves the new rule.
    let mut args = vec!["golden", "record-pipeline", "transaction-review", "1.2.0", "--cases"];
    let cases = shipped_golden().join("pipelines/transaction-review/1.0.0.cases.jsonl");
    let cases = cases.display().to_string();
    args.push(&cases);
    let repo_args = repo.args();
    args.extend(repo_args.iter().map(String::as_str));
    let (code, out, err) = invariant(&args);
    assert_eq!(code, 0, "{out}{err}");
    let (_, r) = s.post("/admin/v1/pipelines/reload", &json!({})).await;
    let v120 = find(&r["pipelines"], "version", "1.2.0");
    assert_eq!(
        (v120["state"].clone(), v120["lifecycle"].clone()),
        (json!("READY"), json!("STAGED")),
        "{r}"
    );
    let (status, r) = act("1.2.0", "promote", json!({})).await;
    assert_eq!(status, 200, "{r}");
    let mut mid = c["facts"].clone();
    mid["amount_usd"] = json!(750.0);
    let (_, r) = s.post(ADVISE, &json!({"facts": mid})).await;
    assert_eq!(r["advisory"]["version"], "1.2.0");
    assert!(
        r["advisory"]["reason_codes"]
            .as_array()
            .unwrap()
            .contains(&json!("HIGH_VALUE_OVER_1000")),
        "{r}"
    );
    let loads = s
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "load" && r["pipelines"].is_array())
        .count();
    assert_eq!(loads, 2, "each reload is audited");
}

#[tokio::test]
async fn a_degraded_corridor_and_the_cached_policy_never_guess() {
    // Version 1.3.0: 1.1.0's rules, no advisory cache, and `on_degraded = "cached"`.
    let repo = RepoCopy::new();
    let dir = repo.models().join("pipelines/transaction-review/1.3.0");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(repo.models().join("pipelines/transaction-review/1.1.0/pipeline.toml"))
        .unwrap()
        .replacen("version = \"1.1.0\"", "version = \"1.3.0\"", 1)
        .replace("on_degraded = \"manual_review\"", "on_degraded = \"cached\"")
        .replace("cache_ttl_seconds = 30", "cache_ttl_seconds = 0");
    std::fs::write(dir.join("pipeline.toml"), text).unwrap();
    let cases = shipped_golden().join("pipelines/transaction-review/1.0.0.cases.jsonl");
    let cases = cases.display().to_string();
    let mut args = vec![
        "golden",
        "record-pipeline",
        "transaction-review",
        "1.3.0",
        "--cases",
        &cases,
    ];
    let repo_args = repo.args();
    args.extend(repo_args.iter().map(String::as_str));
    let (code, out, err) = invariant(&args);
    assert_eq!(code, 0, "{out}{err}");
    let s = Server::start_with(repo.options()).await;
    let with = |facts: &Value| json!({"facts": facts, "version": "1.3.0"});
    let clean = case("000-clean-small");
    let (status, first) = s.post(ADVISE, &with(&clean["facts"])).await;
    assert_eq!((status, first["cached"].clone()), (200, json!(false)), "{first}");
    let (_, again) = s.post(ADVISE, &with(&clean["facts"])).await;
    assert_eq!(again["cached"], false, "cache_ttl_seconds = 0: computed every time");
    // The model killed: the advisory computed for these facts answers, saying why.
    let kill = json!({"op": "kill", "scope": "model:risk-assessor", "reason": "incident 31"});
    assert_eq!(s.post("/admin/v1/governance", &kill).await.0, 200);
    let (status, kept) = s.post(ADVISE, &with(&clean["facts"])).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["cached"], true, "{kept}");
    assert_eq!(kept["advisory"], first["advisory"], "the same advisory, hash and all");
    assert!(kept["degraded"].as_str().unwrap().contains("risk-assessor"), "{kept}");
    // Facts never computed: no guess, a person decides.
    let mut fresh = clean["facts"].clone();
    fresh["amount_usd"] = json!(46.25);
    let (_, r) = s.post(ADVISE, &with(&fresh)).await;
    assert_eq!(
        (
            r["advisory"]["recommendation"].clone(),
            r["advisory"]["reason_codes"].clone(),
            r["cached"].clone()
        ),
        (json!("manual_review"), json!(["AI_DEGRADED"]), json!(false)),
        "{r}"
    );
    let revive = json!({"op": "revive", "scope": "model:risk-assessor"});
    assert_eq!(s.post("/admin/v1/governance", &revive).await.0, 200);

    // An isolated corridor (level 3) answers models from their cache only: facts never seen
    // degrade to manual_review, and its review intake is stopped, which the reply says.
    let isolate = json!({"op": "set_level", "corridor": "UAE-SA", "level": 3, "reason": "drill"});
    assert_eq!(s.post("/admin/v1/governance", &isolate).await.0, 200);
    fresh["amount_usd"] = json!(47.75);
    let (status, r) = s.post(ADVISE, &json!({"facts": fresh})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["advisory"]["recommendation"].clone(), r["advisory"]["source"].clone()),
        (json!("manual_review"), json!("degraded")),
        "{r}"
    );
    assert!(r["degraded"].as_str().unwrap().contains("no cached answer"), "{r}");
    assert_eq!(r["review_item"], Value::Null, "{r}");
    assert!(r["review_error"].as_str().unwrap().contains("UAE-SA"), "{r}");
    // Facts whose model answers are cached are the models' own answers: the same advisory.
    let (status, r) = s
        .post(ADVISE, &json!({"facts": clean["facts"], "version": "1.3.0"}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r["advisory"]["advisory_hash"], first["advisory"]["advisory_hash"],
        "{r}"
    );
    assert_eq!(r["degraded"], Value::Null, "{r}");
}

/// A repository copy with the `canary-probe` fixture and pipeline `probe-review` 1.0.0 over
/// its faulty version 1.1.0 (x >= 4 makes the engine fail), golden decisions recorded;
/// `rules_fallback` declares the version's fallback rules (golden vectors re-recorded).
fn probe_repo(rules_fallback: bool) -> RepoCopy {
    let repo = RepoCopy::new().with_fixture("canary-probe");
    let repo_args = repo.args();
    if rules_fallback {
        let manifest = repo.version_dir("canary-probe", "1.1.0").join("manifest.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let rules = "\n[[fallback_rules]]\noutputs = { y = [7.0, 7.0] }\n";
        std::fs::write(
            &manifest,
            text.replace("[inference]\n", "[inference]\nfallback = \"rules\"\n") + rules,
        )
        .unwrap();
        let mut record = vec!["golden", "record", "canary-probe", "1.1.0", "--force"];
        record.extend(repo_args.iter().map(String::as_str));
        let (code, out, err) = invariant(&record);
        assert_eq!(code, 0, "{out}{err}");
    }
    let dir = repo.models().join("pipelines/probe-review/1.0.0");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"name = "probe-review"
version = "1.0.0"
cache_ttl_seconds = 0
on_degraded = "manual_review"
default_priority = "P4"

[[facts]]
name = "x"
type = "number"
min = -100.0
max = 100.0

[[models]]
name = "probe"
model = "canary-probe"
version = "1.1.0"
input = "x"
row = ["x", "x"]
output = "y"
index = 0

[[rules]]
reason = "PROBE_ABOVE_25"
recommend = "manual_review"
priority = "P3"
all = [{ var = "probe", op = ">", value = 25.0 }]
"#,
    )
    .unwrap();
    let cases = repo.models().parent().unwrap().join("probe-cases.jsonl");
    std::fs::write(
        &cases,
        "{\"id\": \"low\", \"facts\": {\"x\": 1.0}}\n{\"id\": \"high\", \"facts\": {\"x\": 2.5}}\n",
    )
    .unwrap();
    let cases = cases.display().to_string();
    let mut args = vec!["golden", "record-pipeline", "probe-review", "1.0.0", "--cases", &cases];
    args.extend(repo_args.iter().map(String::as_str));
    let (code, out, err) = invariant(&args);
    assert_eq!(code, 0, "{out}{err}");
    repo
}

#[tokio::test]
async fn an_open_breaker_or_a_fallback_answer_degrades_the_advisory() {
    for rules_fallback in [false, true] {
        let repo = probe_repo(rules_fallback);
        let s = Server::start_with(ServerOptions {
            extra: "[governance.breaker]\nfailures = 3\nopen_seconds = 600\n[governance.degradation]\nmin_requests = 1000\n"
                .into(),
            ..repo.options()
        })
        .await;
        let advise = |x: f64| {
            let s = &s;
            async move { s.post("/v1/advisory/probe-review", &json!({"facts": {"x": x}})).await }
        };
        let (status, r) = advise(2.5).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            (r["advisory"]["reason_codes"].clone(), r["advisory"]["source"].clone()),
            (json!(["PROBE_ABOVE_25"]), json!("models")),
            "{r}"
        );
        // The model fails (x >= 4): the caller sees the failure, and the breaker counts it.
        for _ in 0..3 {
            let (status, r) = advise(10.0).await;
            assert_eq!(status, 500, "{r}");
        }
        // Open breaker: 503 for the model (or its fallback rules' answer): never a score.
        let (status, r) = advise(2.0).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            (
                r["advisory"]["recommendation"].clone(),
                r["advisory"]["reason_codes"].clone(),
                r["advisory"]["source"].clone()
            ),
            (json!("manual_review"), json!(["AI_DEGRADED"]), json!("degraded")),
            "fallback rules {rules_fallback}: {r}"
        );
        let why = r["degraded"].as_str().unwrap();
        assert!(why.contains("canary-probe"), "{r}");
        if rules_fallback {
            assert!(why.contains("fallback") && why.contains("rules"), "{r}");
        }
    }
}

#[tokio::test]
async fn a_canary_routes_one_request_to_one_version_on_either_transport() {
    let s = Server::start().await;
    let act = |version: &str, action: &str, body: Value| {
        let path = format!("/admin/v1/pipelines/transaction-review/versions/{version}/{action}");
        let s = &s;
        async move { s.post(&path, &body).await }
    };
    assert_eq!(act("1.0.0", "promote", json!({})).await.0, 200);
    assert_eq!(act(NEWEST, "canary", json!({"percent": 50})).await.0, 200);
    let mut versions = std::collections::BTreeSet::new();
    for c in golden_cases() {
        // The recorded facts hold integers (`"completed_orders": 120`); gRPC sends doubles.
        let (status, http) = s.post(ADVISE, &json!({"facts": c["facts"]})).await;
        assert_eq!(status, 200, "{http}");
        let grpc = grpc_advise(&s, grpc_request(&c["facts"], ""), &[]).await.unwrap();
        let version = http["advisory"]["version"].as_str().unwrap().to_string();
        assert_eq!(
            (grpc.version.as_str(), grpc.routing.as_str()),
            (version.as_str(), http["routing"].as_str().unwrap()),
            "case {}",
            c["id"]
        );
        assert_eq!(
            grpc.advisory_hash,
            http["advisory"]["advisory_hash"].as_str().unwrap(),
            "case {}",
            c["id"]
        );
        let want = case_of(&version, c["id"].as_str().unwrap());
        assert_eq!(
            http["advisory"]["advisory_hash"], want["advisory"]["advisory_hash"],
            "case {}",
            c["id"]
        );
        versions.insert(version);
    }
    assert_eq!(versions.len(), 2, "a 50 % canary splits the 24 cases: {versions:?}");
}
