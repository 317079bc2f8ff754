//! The ops dashboard in a real browser: Debian's chromium, headless, driven over the DevTools
//! protocol against a running server under traffic. The page signs in with an admin key and
//! loads with no console error; the numbers it shows match the API; flipping the kill switch
//! from the page (with confirmation) makes that corridor answer 503, audited as the key's
//! change; resolving an item from the page resolves it. A screenshot is saved as a test
//! artifact (`target/test-artifacts/dashboard.png`).

use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use invariant_blackbox::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Waits until `expression` (JavaScript) is true in the page, or fails naming it.
fn wait_for(tab: &Tab, expression: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = tab.evaluate(expression, false).ok().and_then(|r| r.value);
        if value == Some(Value::Bool(true)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what} ({expression})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The text of the first element matching `selector`.
fn text(tab: &Tab, selector: &str) -> String {
    let js = format!("(document.querySelector({}) || {{}}).textContent", json!(selector));
    match tab.evaluate(&js, false).ok().and_then(|r| r.value) {
        Some(Value::String(s)) => s,
        other => panic!("no text at {selector}: {other:?}"),
    }
}

fn click(tab: &Tab, selector: &str) {
    tab.wait_for_element_with_custom_timeout(selector, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{selector}: {e}"))
        .click()
        .unwrap_or_else(|e| panic!("click {selector}: {e}"));
}

/// Focuses the field with a click and enters `value` as the browser's text input
/// (`Input.insertText`: one event for the whole text, where typing it key by key costs a
/// round trip per character).
fn type_into(tab: &Tab, selector: &str, value: &str) {
    click(tab, selector);
    tab.send_character(value)
        .unwrap_or_else(|e| panic!("type into {selector}: {e}"));
}

/// One inference in `corridor` with `key`: status and body.
async fn infer_in(s: &Server, key: &str, corridor: &str) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    s.post_raw(
        "/v2/models/trust-scorer/versions/1.1.0/infer",
        trust_request(&[TRUST_ROW]).to_string(),
        &[("x-corridor", corridor), ("authorization", &auth)],
    )
    .await
}

async fn call(s: &Server, key: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = s.client.request(method, format!("{}{path}", s.url)).bearer_auth(key);
    if let Some(b) = body {
        request = request.json(&b);
    }
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// UAE-SA's review queue summary, as the API gives it.
async fn review_summary(s: &Server, key: &str) -> Value {
    call(
        s,
        key,
        reqwest::Method::GET,
        "/v1/corridors/UAE-SA/review/summary",
        None,
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_api_numbers_and_its_actions_take_effect() {
    let s = Arc::new(
        Server::start_with(ServerOptions {
            auth: true,
            // P5's SLA is 7.2 s here, so its item nears and passes its deadline while the page
            // is open.
            extra: "[review]\nsla_hours = [2.0, 4.0, 4.0, 8.0, 24.0, 0.002]\n".into(),
            ..Default::default()
        })
        .await,
    );
    let (admin_id, admin) = s.create_key("ops-admin", &["admin", "infer", "reviewer"], &["*"]).await;
    let (_, metrics_only) = s.create_key("scraper", &["metrics"], &["*"]).await;
    let (status, _) = call(&s, &metrics_only, reqwest::Method::GET, "/admin/v1/dashboard", None).await;
    assert_eq!(status, 403, "the dashboard needs admin or reviewer");
    // A reviewer sees the corridors of its key, without the admin's switches.
    let (_, reviewer) = s.create_key("uk-reviewer", &["reviewer"], &["UK-NG"]).await;
    let (status, view) = call(&s, &reviewer, reqwest::Method::GET, "/admin/v1/dashboard", None).await;
    assert_eq!(status, 200, "{view}");
    let seen: Vec<(Value, Value)> = view["corridors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["corridor"].clone(), c["admin"].clone()))
        .collect();
    assert_eq!(seen, [(json!("UK-NG"), json!(false))], "{view}");
    // Review items in UAE-SA, one to resolve from the page.
    let mut ids = Vec::new();
    for (p, subject) in [
        ("P1", "listing:L-1"),
        ("P1", "listing:L-2"),
        ("P4", "listing:<b>L-3</b>"),
        ("P5", "listing:L-4"),
    ] {
        let body = json!({"priority": p, "subject": subject, "reason_codes": ["HIGH_VALUE_OVER_1000"]});
        let (status, item) = call(
            &s,
            &admin,
            reqwest::Method::POST,
            "/v1/corridors/UAE-SA/review/items",
            Some(body),
        )
        .await;
        assert_eq!(status, 200, "{item}");
        ids.push(item["id"].as_str().unwrap().to_string());
    }
    // Traffic in UAE-SA while the page is open: half repeats (cache hits), half new inputs.
    let running = Arc::new(AtomicBool::new(true));
    let traffic = {
        let (s, running, key) = (s.clone(), running.clone(), admin.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while running.load(Ordering::Relaxed) {
                let mut row = TRUST_ROW;
                row[0] = if i.is_multiple_of(2) { 100.0 } else { f64::from(i) };
                let body = trust_request(&[row]);
                let _ = s
                    .client
                    .post(format!("{}/v2/models/trust-scorer/infer", s.url))
                    .bearer_auth(&key)
                    .header("x-corridor", "UAE-SA")
                    .json(&body)
                    .send()
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let browser = Browser::new(LaunchOptions {
        path: Some(CHROMIUM.into()),
        headless: true,
        sandbox: false,
        window_size: Some((1400, 1800)),
        idle_browser_timeout: Duration::from_secs(120),
        ..LaunchOptions::default()
    })
    .expect("chromium starts (the test command installs Debian's chromium)");
    let tab = browser.new_tab().expect("a tab");
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    tab.enable_log().unwrap();
    tab.enable_runtime().unwrap();
    {
        let errors = errors.clone();
        tab.add_event_listener(Arc::new(move |event: &Event| {
            let error = match event {
                Event::RuntimeExceptionThrown(e) => Some(format!("exception: {:?}", e.params.exception_details)),
                Event::RuntimeConsoleAPICalled(c) if format!("{:?}", c.params.Type) == "Error" => {
                    Some(format!("console.error: {:?}", c.params.args))
                }
                Event::LogEntryAdded(l) if format!("{:?}", l.params.entry.level) == "Error" => {
                    Some(format!("log: {} ({:?})", l.params.entry.text, l.params.entry.url))
                }
                _ => None,
            };
            if let Some(e) = error {
                errors.lock().unwrap().push(e);
            }
        }))
        .unwrap();
    }
    tab.navigate_to(&format!("{}/dashboard", s.url)).unwrap();
    tab.wait_until_navigated().unwrap();
    type_into(&tab, "#login-key", &admin);
    click(&tab, "#login-submit");
    wait_for(&tab, "document.body.dataset.loaded === 'true'", "the signed-in page");
    let card = "[data-corridor=\"UAE-SA\"]";
    // Traffic shows up in the next refreshes.
    wait_for(
        &tab,
        &format!("Number(document.querySelector('{card} [data-field=requests]').textContent) > 20"),
        "UAE-SA's requests",
    );
    assert!(text(&tab, "#who").contains(&admin_id), "{}", text(&tab, "#who"));

    // The numbers match the API.
    let (_, gov) = call(&s, &admin, reqwest::Method::GET, "/admin/v1/corridors/UAE-SA", None).await;
    let level = gov["level"].as_u64().expect("level");
    assert!(
        text(&tab, &format!("{card} [data-field=level]")).starts_with(&level.to_string()),
        "{gov}"
    );
    assert_eq!(text(&tab, &format!("{card} [data-field=killed]")), "off");
    let summary = review_summary(&s, &admin).await;
    for p in ["P0", "P1", "P4", "P5"] {
        let want = summary["depth"][p].as_u64().unwrap_or(0).to_string();
        assert_eq!(
            text(&tab, &format!("{card} [data-field=depth-{p}]")),
            want,
            "{p}: {summary}"
        );
    }
    assert_eq!(text(&tab, &format!("{card} [data-field=depth-P1]")), "2");
    let (_, models) = call(&s, &admin, reqwest::Method::GET, "/admin/v1/models", None).await;
    // Lifecycle and verification state of every version, and each model's traffic split in
    // the corridor: its active version.
    for m in models["models"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        for v in m["versions"].as_array().unwrap() {
            let row = format!(
                "#models tr[data-model=\"{name}\"][data-version=\"{}\"]",
                v["version"].as_str().unwrap()
            );
            assert_eq!(
                text(&tab, &format!("{row} [data-field=lifecycle]")),
                v["lifecycle"].as_str().unwrap(),
                "{row}"
            );
            assert!(
                text(&tab, &format!("{row} [data-field=state]")).starts_with(v["state"].as_str().unwrap()),
                "{row}"
            );
        }
        let split = text(&tab, &format!("{card} tr[data-model=\"{name}\"] [data-field=split]"));
        assert_eq!(split, format!("{} 100%", m["active"].as_str().unwrap()), "{name}");
    }
    // Rate-limit use against the corridor's limit, as governance reports it.
    let rate = text(&tab, &format!("{card} [data-field=rate]"));
    match gov["rate_limit"].as_f64() {
        Some(limit) => assert!(rate.ends_with(&format!("of {limit} req/s")), "{rate} vs {gov}"),
        None => assert!(rate.ends_with("no limit"), "{rate} vs {gov}"),
    }
    assert_eq!(text(&tab, &format!("{card} [data-field=breakers]")), "none", "{gov}");
    // The P5 item is highlighted once it is near its SLA, then breached.
    wait_for(
        &tab,
        &format!(
            "document.querySelector('[data-item=\"{}\"]').classList.contains('breached')",
            ids[3]
        ),
        "the breached P5 item highlighted",
    );
    let summary = review_summary(&s, &admin).await;
    assert_eq!(summary["breached"]["P5"], 1, "{summary}");
    wait_for(
        &tab,
        &format!("document.querySelector('{card} [data-field=near-P5]').textContent === '1'"),
        "near-SLA P5 count",
    );
    let (_, pipelines) = call(&s, &admin, reqwest::Method::GET, "/v1/advisory", None).await;
    let rows = tab
        .evaluate("document.querySelectorAll('#pipelines tbody tr').length", false)
        .unwrap()
        .value;
    assert_eq!(rows, Some(json!(pipelines["pipelines"].as_array().unwrap().len())));
    // Item subjects are text, never markup.
    assert_eq!(
        tab.evaluate(&format!("document.querySelectorAll('{card} .items b').length"), false)
            .unwrap()
            .value,
        Some(json!(0))
    );
    assert!(text(&tab, &format!("[data-item=\"{}\"]", ids[2])).contains("<b>L-3</b>"));
    // Charts are drawn for the five-minute series.
    let charts = tab
        .evaluate(
            &format!("document.querySelectorAll('{card} .chart polyline').length"),
            false,
        )
        .unwrap()
        .value;
    assert_eq!(charts, Some(json!(4)));

    // Resolve an item from the page: confirm with a note; the API shows it resolved.
    click(&tab, &format!("[data-item=\"{}\"] [data-action=resolve]", ids[0]));
    wait_for(&tab, "!document.getElementById('confirm').hidden", "the confirmation");
    type_into(&tab, "#confirm-reason", "checked the listing");
    click(&tab, "#confirm-ok");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, item) = call(
            &s,
            &admin,
            reqwest::Method::GET,
            &format!("/v1/corridors/UAE-SA/review/items/{}", ids[0]),
            None,
        )
        .await;
        if item["status"] == "resolved" {
            assert_eq!(item["resolution"]["note"], "checked the listing", "{item}");
            assert_eq!(item["resolution"]["by"], admin_id.as_str(), "{item}");
            break;
        }
        assert!(Instant::now() < deadline, "the item was not resolved: {item}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(
        &tab,
        &format!("document.querySelector('{card} [data-field=depth-P1]').textContent === '1'"),
        "the queue after the resolve",
    );

    // Cancel does nothing; confirm flips the kill switch: UAE-SA answers 503.
    click(&tab, &format!("{card} [data-action=kill]"));
    click(&tab, "#confirm-cancel");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = infer_in(&s, &admin, "UAE-SA").await;
    assert_eq!(ok.0, 200, "cancelled: still serving: {}", ok.1);
    click(&tab, &format!("{card} [data-action=kill]"));
    wait_for(&tab, "!document.getElementById('confirm').hidden", "the confirmation");
    type_into(&tab, "#confirm-reason", "incident 77 from the dashboard");
    click(&tab, "#confirm-ok");
    wait_for(
        &tab,
        &format!("!!document.querySelector('{card} [data-action=revive]')"),
        "the revive button",
    );
    let (_, gov) = call(&s, &admin, reqwest::Method::GET, "/admin/v1/corridors/UAE-SA", None).await;
    let switch = gov["killed"].as_str().expect("killed").to_string();
    wait_for(
        &tab,
        &format!(
            "document.querySelector('{card} [data-field=killed]').textContent === {}",
            json!(format!("killed: {switch}"))
        ),
        "the kill switch on the page",
    );
    let killed = infer_in(&s, &admin, "UAE-SA").await;
    assert_eq!(killed.0, 503, "{}", killed.1);
    let other = infer_in(&s, &admin, "US-EG").await;
    assert_eq!(other.0, 200, "other corridors serve on: {}", other.1);
    let audited = s.audit().into_iter().any(|r| {
        r["event"] == "governance"
            && r.to_string().contains("incident 77 from the dashboard")
            && r.to_string().contains(&admin_id)
    });
    assert!(audited, "the kill is audited as the key's change");
    wait_for(
        &tab,
        &format!("document.querySelector('{card} [data-field=ready]').textContent === 'not ready'"),
        "UAE-SA not ready",
    );

    running.store(false, Ordering::Relaxed);
    let _ = traffic.await;
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("a screenshot");
    let dir = workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.png"), &png).unwrap();
    assert!(png.len() > 10_000, "a real screenshot");
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}
