//! Advisory pipelines served: the served advisory is the gated one (same hash), repeats come
//! from the cache with the same hash, decisions that need a person enter the review queue,
//! bad facts are refused naming the field, a killed model gives the declared degraded
//! decision, and every advisory is audited.

use invariant_blackbox::*;
use serde_json::{json, Value};

const ADVISE: &str = "/v1/advisory/transaction-review";

/// The recorded golden cases of transaction-review 1.0.0, by id.
fn golden_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(shipped_golden().join("pipelines/transaction-review/1.0.0.jsonl")).unwrap();
    text.lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn case(id: &str) -> Value {
    golden_cases().into_iter().find(|c| c["id"] == id).unwrap()
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
    assert_eq!(shown["source"], "advisory:transaction-review@1.0.0");
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
    // The same request names the same version explicitly.
    let (status, named) = s
        .post(ADVISE, &json!({"facts": high["facts"], "version": "1.0.0"}))
        .await;
    assert_eq!(
        (status, named["advisory"]["advisory_hash"].clone()),
        (200, high["advisory"]["advisory_hash"].clone())
    );

    // Every advisory is in the corridor's audit chain with its hash.
    let audited: Vec<Value> = s.audit().into_iter().filter(|r| r["event"] == "advisory").collect();
    // (The later requests repeat recorded cases: cache hits, not new advisories.)
    assert_eq!(audited.len(), golden_cases().len(), "cache hits are not new advisories");
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
