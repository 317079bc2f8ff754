//! Conformance with the real clients: tritonclient (HTTP binary and JSON, gRPC, async, the
//! gRPC stream) and KServe's REST and gRPC clients, run from the project venv
//! (`scripts/setup-python.sh`) against a server started here. Every golden vector of every
//! shipped version must come back bit-exact over every transport, errors must surface as the
//! client's exception with the server's message, and the parity table (corridors, cache hits,
//! batching, routing keys, feature enrichment) must give the same bits over gRPC as over HTTP.
//! See `tests/conformance/clients.py`.

use invariant_blackbox::*;
use std::process::Command;

fn python() -> std::path::PathBuf {
    let p = workspace_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup-python.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

async fn suite(s: &Server, name: &str) {
    suite_with(s, name, "{}").await;
}

async fn suite_with(s: &Server, name: &str, keys: &str) {
    suite_env(s, name, &[("CONFORMANCE_KEYS", keys)]).await;
}

/// Runs suite `name` with extra environment variables.
pub async fn suite_env(s: &Server, name: &str, env: &[(&str, &str)]) {
    let script = workspace_root().join("tests/conformance/clients.py");
    let http = s.url.trim_start_matches("http://").to_string();
    let grpc = s.grpc.clone();
    let golden = shipped_golden();
    let py = python();
    let name = name.to_string();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .envs(env)
            .arg(script)
            .env("CONFORMANCE_HTTP", http)
            .env("CONFORMANCE_GRPC", grpc)
            .env("CONFORMANCE_GOLDEN", golden)
            .env("CONFORMANCE_SUITE", &name)
            .output()
            .expect("run the conformance script")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(" 0 failures"),
        "conformance suite failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        s.log()
    );
    // A suite that checked nothing would also print "0 failures".
    let checks: usize = stdout
        .lines()
        .find_map(|l| {
            l.split(": ")
                .nth(1)?
                .strip_suffix(" failures")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(checks > 50, "too few checks ran:\n{stdout}");
}

#[tokio::test]
async fn tritonclient_over_http_binary_json_and_grpc() {
    let s = Server::start().await;
    suite(&s, "triton").await;
}

#[tokio::test]
async fn kserve_clients_over_rest_and_grpc() {
    let s = Server::start().await;
    suite(&s, "kserve").await;
}

#[tokio::test]
async fn tritonclient_with_api_keys_over_http_and_grpc() {
    let s = Server::start_with(ServerOptions {
        auth: true,
        ..Default::default()
    })
    .await;
    let (_, uae) = s.create_key("uae-client", &["infer"], &["UAE-SA"]).await;
    let (_, admin) = s.create_key("ops", &["admin"], &["*"]).await;
    let (revoked_id, revoked) = s.create_key("old", &["infer"], &["*"]).await;
    let config = s.config_path().display().to_string();
    let (code, _, err) = invariant(&["keys", "revoke", "--config", &config, &revoked_id]);
    assert_eq!(code, 0, "{err}");
    // Refused once the server has picked up the change (its poll period is well under a
    // second; a loaded test machine may take longer, so wait for it rather than a fixed time).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = s
            .client
            .get(format!("{}/v2/models/price-advisor", s.url))
            .bearer_auth(&revoked)
            .send()
            .await
            .expect("metadata with the revoked key")
            .status()
            .as_u16();
        if status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked key was still accepted (HTTP {status}) 10 s after its revocation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let keys = serde_json::json!({ "uae": uae, "admin": admin, "revoked": revoked }).to_string();
    suite_with(&s, "triton-auth", &keys).await;
}

/// A server over TLS on both listeners, and the PKI it uses.
async fn tls_server(dir: &std::path::Path, mtls: bool) -> (Server, TestPki) {
    let pki = TestPki::generate(dir, "invariant test server");
    let s = Server::start_with(ServerOptions {
        server: pki.server_table(mtls),
        tls_ca: Some(pki.ca.clone()),
        tls_client: mtls.then(|| (pki.client_cert.clone(), pki.client_key.clone())),
        ..Default::default()
    })
    .await;
    (s, pki)
}

#[tokio::test]
async fn tritonclient_over_tls_on_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let (s, pki) = tls_server(dir.path(), false).await;
    let tls = serde_json::json!({ "ca": pki.ca }).to_string();
    suite_env(&s, "triton-tls", &[("CONFORMANCE_TLS", &tls)]).await;
}

#[tokio::test]
async fn tritonclient_with_client_certificates_and_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let (s, pki) = tls_server(dir.path(), true).await;
    let tls = serde_json::json!({
        "ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key, "mtls": true
    })
    .to_string();
    suite_env(&s, "triton-tls", &[("CONFORMANCE_TLS", &tls)]).await;
}
