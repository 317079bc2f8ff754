//! The audit trail, black-box: every answer of a durable server killed with SIGKILL under
//! load has its record and the chains verify; a buffered server's chains verify after the
//! same; `invariant audit verify` names an edited or deleted record; `invariant audit replay`
//! confirms recorded outputs from retained inputs and catches a forged one.

use invariant_blackbox::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn options(mode: &str, extra: &str) -> ServerOptions {
    ServerOptions {
        extra: format!("[audit]\nmode = \"{mode}\"\nflush_ms = 20\n{extra}"),
        ..ServerOptions::default()
    }
}

/// Sends requests from `clients` tasks (distinct rows, ids `c<i>-<n>`) until `kill_after`,
/// then kills the server with SIGKILL while they are in flight; returns the ids answered 200.
async fn load_then_kill(s: &mut Server, clients: usize, kill_after: Duration) -> BTreeSet<String> {
    let answered = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Instant::now() + kill_after + Duration::from_millis(500);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = s.client.clone();
        let url = format!("{}/v2/models/trust-scorer/infer", s.url);
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            while Instant::now() < stop {
                let id = format!("c{c}-{n}");
                let mut row = TRUST_ROW;
                row[0] = f64::from(n) + c as f64 * 100_000.0;
                let sent = client
                    .post(&url)
                    .header("x-request-id", &id)
                    .body(trust_request(&[row]).to_string())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        if r.bytes().await.is_ok() {
                            answered.lock().unwrap().insert(id);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(kill_after).await;
    s.kill_9();
    for t in tasks {
        let _ = t.await;
    }
    let out = answered.lock().unwrap().clone();
    out
}

fn verify(s: &Server) -> (i32, String) {
    let config = s.config_path().display().to_string();
    let (code, out, err) = invariant(&["audit", "verify", "--config", &config]);
    (code, format!("{out}{err}"))
}

#[tokio::test]
async fn a_durable_server_killed_under_load_audited_every_answer_it_gave() {
    let mut s = Server::start_with(options("durable", "")).await;
    let answered = load_then_kill(&mut s, 4, Duration::from_millis(1500)).await;
    assert!(
        answered.len() > 20,
        "too few answers to mean anything: {}",
        answered.len()
    );
    let (code, out) = verify(&s);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("UAE-SA: ok"), "{out}");
    let recorded: BTreeSet<String> = s
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "inference" && r["status"] == 200)
        .filter_map(|r| r["request_id"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = answered.difference(&recorded).collect();
    assert!(missing.is_empty(), "answers without a record: {missing:?}");
}

#[tokio::test]
async fn a_buffered_server_killed_under_load_leaves_chains_that_verify() {
    let mut s = Server::start_with(options("buffered", "")).await;
    let answered = load_then_kill(&mut s, 4, Duration::from_millis(1500)).await;
    assert!(answered.len() > 20, "{}", answered.len());
    let (code, out) = verify(&s);
    assert_eq!(code, 0, "{out}");
    // The loss window is flush_ms: nearly every answer is there.
    let recorded = s.audit().iter().filter(|r| r["event"] == "inference").count();
    assert!(
        recorded * 10 >= answered.len() * 8,
        "{recorded} of {} answers recorded",
        answered.len()
    );
}

#[tokio::test]
async fn verify_names_an_edited_or_deleted_record_and_replay_confirms_outputs() {
    let mut s = Server::start_with(options(
        "durable",
        "[audit.models.trust-scorer]\nretain_inputs = true\n",
    ))
    .await;
    for n in 0..5 {
        let mut row = TRUST_ROW;
        row[1] = f64::from(n);
        assert_eq!(
            s.post("/v2/models/trust-scorer/infer", &trust_request(&[row])).await.0,
            200
        );
    }
    // A repeat is a cache hit: it is recorded too, with the same output hash.
    assert_eq!(
        s.post("/v2/models/trust-scorer/infer", &trust_request(&[TRUST_ROW]))
            .await
            .0,
        200
    );
    s.kill_9();
    let config = s.config_path().display().to_string();
    let (code, out, err) = invariant(&["audit", "replay", "--config", &config, "--corridor", "UAE-SA"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("6 record(s) replayed, 6 confirmed, 0 not"), "{out}");

    let segment = s.audit_dir().join("UAE-SA/00000000000000000001.jsonl");
    let original = std::fs::read_to_string(&segment).expect("segment");
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), 6);

    // Forge the output hash of record 3: the link from record 4 breaks, and replay disagrees.
    let r3: Value = serde_json::from_str(lines[2]).unwrap();
    let forged_hash = "0".repeat(64);
    let forged = original.replace(r3["output_hash"].as_str().unwrap(), &forged_hash);
    std::fs::write(&segment, &forged).unwrap();
    let (code, out) = verify(&s);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("UAE-SA: BROKEN at record"), "{out}");
    let (code, out, _) = invariant(&["audit", "replay", "--config", &config, "--corridor", "UAE-SA"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("MISMATCH"), "{out}");

    // Delete record 2: the sequence jumps where it was.
    let without: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| *l)
        .collect();
    std::fs::write(&segment, without.join("\n") + "\n").unwrap();
    let (code, out) = verify(&s);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN at record 2") && out.contains("sequence number 3 where 2 was due"),
        "{out}"
    );

    // Restored, it verifies, and `show` reads it back filtered.
    std::fs::write(&segment, &original).unwrap();
    assert_eq!(verify(&s).0, 0);
    let (code, out, err) = invariant(&[
        "audit",
        "show",
        "--config",
        &config,
        "--corridor",
        "UAE-SA",
        "--model",
        "trust-scorer",
        "--since",
        "1h",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 6, "{out}");
    let (code, out, _) = invariant(&["audit", "show", "--config", &config, "--corridor", "US-EG", "--json"]);
    assert_eq!((code, out.lines().count()), (0, 0), "{out}");
    let (code, _, err) = invariant(&["audit", "show", "--config", &config, "--corridor", "../etc"]);
    assert_eq!(code, 1);
    assert!(err.contains("--corridor"), "{err}");
}

#[tokio::test]
async fn replicas_sharing_a_redis_trail_keep_one_verifiable_chain_per_corridor() {
    let redis = RedisServer::start();
    let shared = format!("redis_url = \"{}\"\n", redis.url());
    let a = Server::start_with(options("durable", &shared)).await;
    let b = Server::start_with(options("durable", &shared)).await;
    let mut tasks = Vec::new();
    for (name, s) in [("a", &a), ("b", &b)] {
        for c in 0..2 {
            let client = s.client.clone();
            let url = format!("{}/v2/models/trust-scorer/infer", s.url);
            tasks.push(tokio::spawn(async move {
                let mut answered = Vec::new();
                for n in 0..40 {
                    let id = format!("{name}{c}-{n}");
                    let mut row = TRUST_ROW;
                    row[0] = f64::from(n);
                    let r = client
                        .post(&url)
                        .header("x-request-id", &id)
                        .body(trust_request(&[row]).to_string())
                        .send()
                        .await
                        .expect("infer");
                    if r.status() == 200 {
                        answered.push(id);
                    }
                }
                answered
            }));
        }
    }
    let mut answered = BTreeSet::new();
    for t in tasks {
        answered.extend(t.await.expect("client task"));
    }
    assert_eq!(answered.len(), 160);
    let (code, out) = verify(&a);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("UAE-SA: ok, 160 records"), "{out}");
    // Both servers' answers are in the one chain, read through either server's API.
    let (status, r) = a.get("/v1/corridors/UAE-SA/audit?limit=1000&event=inference").await;
    assert_eq!(status, 200, "{r}");
    let ids: BTreeSet<String> = r["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["request_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, answered);

    // Deleting an entry from the stream is named by verify.
    let deleted = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "XDEL", "inv:{UAE-SA}:audit", "40-0"])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&deleted.stdout).trim(), "1");
    let (code, out) = verify(&a);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN at record 40") && out.contains("sequence number 41 where 40 was due"),
        "{out}"
    );
}
