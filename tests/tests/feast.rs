//! Feast wire compatibility with the real Feast SDK (`.venv-feast`, from
//! `scripts/setup-python.sh`): a Parquet file written by pandas the way a Feast source is
//! (nanosecond, UTC timestamps and a `created` column) is materialized, then a Feast repository
//! whose online store is this server (`type: remote`, the API key sent as Feast's kubernetes
//! auth token) writes, pushes and reads; see `tests/conformance/feast_client.py`.

use invariant_blackbox::*;
use std::process::Command;

fn feast_python() -> std::path::PathBuf {
    let p = workspace_root().join(".venv-feast/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup-python.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

fn run_suite(envs: &[(&str, String)]) -> (bool, String) {
    let out = Command::new(feast_python())
        .arg(workspace_root().join("tests/conformance/feast_client.py"))
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run the Feast conformance script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains(" 0 failures"), text)
}

#[tokio::test]
async fn feasts_own_sdk_writes_pushes_and_reads_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let parquet = dir.path().join("source.parquet");
    let parquet_text = parquet.display().to_string();
    let (ok, out) = run_suite(&[
        ("FEAST_SUITE", "parquet".into()),
        ("FEAST_PARQUET", parquet_text.clone()),
    ]);
    assert!(ok, "{out}");

    // Materialized before the server starts (it holds the embedded store).
    let store = dir.path().join("features.redb");
    let state = dir.path().join("state");
    let out = Command::new(binary())
        .args(["features", "materialize", "--feature-store"])
        .arg(&store)
        .args([
            "--from",
            &parquet_text,
            "--view",
            "account_stats",
            "--corridor",
            "UAE-SA",
            "--json",
        ])
        .env("INVARIANT_STATE_DIR", &state)
        .current_dir(workspace_root())
        .output()
        .expect("materialize");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        (report["written"].as_u64(), report["rejected"].as_u64()),
        (Some(2), Some(0)),
        "{report}"
    );

    let s = Server::start_with(ServerOptions {
        top: format!("feature_store = \"{}\"\n", store.display()),
        auth: true,
        ..ServerOptions::default()
    })
    .await;
    let (_, key) = s
        .create_key("feast", &["features:read", "features:write"], &["UAE-SA"])
        .await;
    let url = s.url.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        run_suite(&[
            ("FEAST_SUITE", "sdk".into()),
            ("FEAST_URL", url),
            ("FEAST_KEY", key),
            ("FEAST_PARQUET", parquet_text),
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{out}\nserver log:\n{}", s.log());
    let checks: usize = out
        .lines()
        .find_map(|l| l.split(" checks").next().and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0);
    assert!(checks >= 20, "only {checks} checks ran:\n{out}");
    // Without a key, Feast's client is refused in Feast's error shape.
    let r = s
        .client
        .post(format!("{}/get-online-features", s.url))
        .body(r#"{"features": ["account_stats:kyc_level"], "entities": {"account_id": ["p1"]}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
}
