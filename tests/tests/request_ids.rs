//! Request ids against the real binary: `x-request-id` is echoed, a W3C `traceparent` gives
//! its trace id, anything else gets a generated id; over HTTP (computed answers, reply-cache
//! hits, errors, 404s) and gRPC (as initial metadata, through grpcio in `conformance.rs`).

use invariant_blackbox::*;

async fn id_of(s: &Server, path: &str, body: Option<String>, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = match &body {
        Some(b) => s.client.post(format!("{}{path}", s.url)).body(b.clone()),
        None => s.client.get(format!("{}{path}", s.url)),
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, id)
}

#[tokio::test]
async fn every_reply_carries_the_request_id() {
    let s = Server::start().await;
    let infer = "/v2/models/trust-scorer/versions/1.2.0/infer";
    let body = Some(trust_request(&[TRUST_ROW]).to_string());
    // Computed, then a reply-cache hit of the same bytes: each echoes its own id.
    assert_eq!(
        id_of(&s, infer, body.clone(), &[("x-request-id", "first")]).await,
        (200, "first".into())
    );
    assert_eq!(
        id_of(&s, infer, body.clone(), &[("x-request-id", "second")]).await,
        (200, "second".into())
    );
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        id_of(&s, infer, body.clone(), &[("traceparent", tp)]).await,
        (200, "4bf92f3577b34da6a3ce929d0e0e4736".into())
    );
    // Errors and unknown routes carry one too; without any, ids are generated and differ.
    assert_eq!(
        id_of(&s, infer, Some("{".into()), &[("x-request-id", "bad-body")]).await,
        (400, "bad-body".into())
    );
    assert_eq!(
        id_of(&s, "/nowhere", None, &[("x-request-id", "lost")]).await,
        (404, "lost".into())
    );
    let (_, a) = id_of(&s, "/v2/health/live", None, &[]).await;
    let (_, b) = id_of(&s, "/v2/health/live", None, &[]).await;
    assert_eq!(a.len(), 32, "{a}");
    assert_ne!(a, b);
    // An id that is not a reasonable one is replaced.
    let long = "x".repeat(300);
    let (_, c) = id_of(&s, "/v2/health/live", None, &[("x-request-id", &long)]).await;
    assert_eq!(c.len(), 32, "{c}");
    // The log lines written while a request is handled carry its id (a reload logs each
    // version it verifies).
    let (status, _) = id_of(
        &s,
        "/v2/repository/models/trust-scorer/load",
        Some(String::new()),
        &[("x-request-id", "reload-9")],
    )
    .await;
    assert_eq!(status, 200);
    let lines: Vec<String> = s
        .log()
        .lines()
        .filter(|l| l.contains("reload-9"))
        .map(str::to_string)
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("trust-scorer")),
        "no log line of the reload names its request id:\n{}",
        s.log()
    );
}
