//! TLS against the real binary with raw rustls clients: the certificate served is the
//! configured one, ALPN offers HTTP/1.1 (and h2), plain text on a TLS port gets no answer,
//! client certificates are required when a client CA is configured, SIGHUP swaps in new
//! certificate files (a broken file keeps the old one), and a non-loopback address without
//! TLS is refused at start. The real tritonclient over TLS is in `conformance.rs`.

use invariant_blackbox::*;
use std::io::{Read, Write};
use std::time::Duration;

const LIVE: &[u8] = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

fn der_of(pem: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn addr(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn the_configured_certificate_is_served_and_plain_text_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path(), "first");
    let s = Server::start_with(ServerOptions {
        server: pki.server_table(false),
        tls_ca: Some(pki.ca.clone()),
        ..Default::default()
    })
    .await;
    let reply = tls_exchange(&addr(&s), &pki.ca, None, LIVE).await.unwrap();
    assert!(reply.text.starts_with("HTTP/1.1 200"), "{}", reply.text);
    assert!(reply.text.contains(r#"{"live":true}"#), "{}", reply.text);
    assert_eq!(reply.certificates[0], der_of(&pki.server_cert));
    assert_eq!(reply.alpn.as_deref(), Some(&b"http/1.1"[..]));
    // A client trusting another CA refuses the server.
    let other = TestPki::generate(&dir.path().join("other"), "other");
    let e = tls_exchange(&addr(&s), &other.ca, None, LIVE)
        .await
        .err()
        .unwrap_or_default();
    assert!(e.contains("handshake"), "{e}");
    // Plain text on the TLS port: no HTTP answer, and the server keeps serving.
    let mut plain = std::net::TcpStream::connect(addr(&s)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    plain.write_all(LIVE).unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1 200"));
    let reply = tls_exchange(&addr(&s), &pki.ca, None, LIVE).await.unwrap();
    assert!(reply.text.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path(), "mtls");
    let s = Server::start_with(ServerOptions {
        server: pki.server_table(true),
        tls_ca: Some(pki.ca.clone()),
        tls_client: Some((pki.client_cert.clone(), pki.client_key.clone())),
        ..Default::default()
    })
    .await;
    let with = tls_exchange(&addr(&s), &pki.ca, Some((&pki.client_cert, &pki.client_key)), LIVE)
        .await
        .unwrap();
    assert!(with.text.starts_with("HTTP/1.1 200"), "{}", with.text);
    // Without a certificate, or with one from another CA: no answer.
    let stranger = TestPki::generate(&dir.path().join("stranger"), "stranger");
    for client in [
        None,
        Some((stranger.client_cert.as_path(), stranger.client_key.as_path())),
    ] {
        match tls_exchange(&addr(&s), &pki.ca, client, LIVE).await {
            Err(e) => assert!(
                e.contains("read") || e.contains("handshake") || e.contains("write"),
                "{e}"
            ),
            Ok(reply) => panic!("served without a valid client certificate: {}", reply.text),
        }
    }
}

#[tokio::test]
async fn sighup_swaps_in_new_certificate_files_and_a_broken_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestPki::generate(&dir.path().join("a"), "first");
    let s = Server::start_with(ServerOptions {
        server: first.server_table(false),
        tls_ca: Some(first.ca.clone()),
        ..Default::default()
    })
    .await;
    let before = tls_exchange(&addr(&s), &first.ca, None, LIVE).await.unwrap();
    assert_eq!(before.certificates[0], der_of(&first.server_cert));
    // New files in place (another CA), then SIGHUP.
    let second = TestPki::generate(&dir.path().join("b"), "second");
    std::fs::copy(&second.server_cert, &first.server_cert).unwrap();
    std::fs::copy(&second.server_key, &first.server_key).unwrap();
    let hup = |pid: u32| {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup(s.pid());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let after = loop {
        if let Ok(r) = tls_exchange(&addr(&s), &second.ca, None, LIVE).await {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served: {}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after.certificates[0], der_of(&second.server_cert));
    assert!(s.log().contains("TLS certificate reloaded"), "{}", s.log());
    // A broken certificate file: the reload fails, the second certificate stays.
    std::fs::write(&first.server_cert, "not a certificate").unwrap();
    hup(s.pid());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !s.log().contains("TLS reload failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload failure logged: {}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still = tls_exchange(&addr(&s), &second.ca, None, LIVE).await.unwrap();
    assert!(still.text.starts_with("HTTP/1.1 200"));
    assert_eq!(still.certificates[0], der_of(&second.server_cert));
}

#[test]
fn plain_text_off_loopback_is_refused_unless_allowed() {
    let (code, _, err) = invariant(&["serve", "--http-addr", "0.0.0.0:0", "--grpc-addr", ""]);
    assert_ne!(code, 0);
    assert!(
        err.contains("0.0.0.0:0 is not a loopback address and [server.tls] is not configured"),
        "{err}"
    );
}
