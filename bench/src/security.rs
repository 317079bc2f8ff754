//! What security costs: served throughput with API keys on vs off (`--dev-no-auth`), uncached
//! and on reply-cache hits; TLS vs plain text, keep-alive throughput of cache hits and the
//! cost of a new connection per request (the handshake), at each concurrency.

use crate::{median, post_scripts, start_server_auth, state_dir, wrk_measured, Args};
use anyhow::{bail, Context, Result};
use invariant_blackbox::{free_port, TestPki};
use std::path::Path;

/// Creates a `*` infer key in the key file of the server on `port`; returns the key.
fn create_key(binary: &Path, port: u16) -> Result<String> {
    let out = std::process::Command::new(binary)
        .args([
            "keys",
            "create",
            "--name",
            "bench",
            "--role",
            "infer",
            "--corridor",
            "*",
            "--json",
        ])
        .env("INVARIANT_STATE_DIR", state_dir(port))
        .env("INVARIANT_LOG", "warn")
        .output()
        .context("invariant keys create")?;
    if !out.status.success() {
        bail!("keys create failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let key: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let secret = key["secret"].as_str().context("no secret")?.to_string();
    // The server re-reads the keys at least every control.poll_ms (1 s by default).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    Ok(secret)
}

/// Medians over `args.rounds` of (req/s, p99 ms, server µs per request, req/s ÷ floor).
fn measure(args: &Args, pid: u32, url: &str, floor: &str, c: u32, script: Option<&Path>) -> Result<[f64; 4]> {
    let (mut rps, mut p99, mut cpu, mut ratio) = (vec![], vec![], vec![], vec![]);
    for _ in 0..args.rounds.max(1) {
        let f = wrk_measured(pid, floor, c, args.http_seconds, None)?;
        let m = wrk_measured(pid, url, c, args.http_seconds, script)?;
        rps.push(m.wrk.requests_per_s);
        p99.push(m.wrk.p99_ms);
        cpu.push(m.server_us);
        ratio.push(m.wrk.requests_per_s / f.wrk.requests_per_s);
    }
    Ok([median(rps), median(p99), median(cpu), median(ratio)])
}

/// API keys on vs off, uncached (cache disabled, every body differs) and on reply-cache hits.
/// Both servers run side by side and their runs alternate (off, on, on, off, …), so drift of
/// the shared machine and the order hit both alike; on/off is the median of the per-pair
/// ratios.
fn auth_on_off(args: &Args, path: &str, body: &str, scripts: &Path) -> Result<()> {
    println!(
        "\n# API keys on vs off, batch 1 JSON: both servers side by side, runs alternating, medians of {} pairs",
        args.rounds
    );
    println!(
        "{:<9} {:>4} {:>12} {:>12} {:>8} {:>14} {:>14}",
        "path", "conc", "off req/s", "on req/s", "on/off", "off cpu µs", "on cpu µs"
    );
    for (label, cache) in [("uncached", "false"), ("hits", "true")] {
        let env = vec![("INVARIANT_CACHE__ENABLED", cache.to_string())];
        let (off_port, on_port) = (free_port(), free_port());
        let off = start_server_auth(&args.binary, off_port, &env, false)?;
        let on = start_server_auth(&args.binary, on_port, &env, true)?;
        let bearer = format!("Bearer {}", create_key(&args.binary, on_port)?);
        let (off_hit, off_vary) = post_scripts(scripts, &format!("security-{label}-off"), body, &[])?;
        let (on_hit, on_vary) = post_scripts(
            scripts,
            &format!("security-{label}-on"),
            body,
            &[("Authorization", bearer.as_str())],
        )?;
        let (off_script, on_script) = if cache == "true" {
            (off_hit, on_hit)
        } else {
            (off_vary, on_vary)
        };
        for &c in &args.concurrency {
            let (mut off_rps, mut on_rps, mut ratio, mut off_cpu, mut on_cpu) =
                (vec![], vec![], vec![], vec![], vec![]);
            for round in 0..args.rounds.max(1) {
                let off_url = format!("http://127.0.0.1:{off_port}{path}");
                let on_url = format!("http://127.0.0.1:{on_port}{path}");
                let run_off = || wrk_measured(off.child.id(), &off_url, c, args.http_seconds, Some(&off_script));
                let run_on = || wrk_measured(on.child.id(), &on_url, c, args.http_seconds, Some(&on_script));
                // The order alternates too, so neither side always runs first.
                let (a, b) = if round % 2 == 0 {
                    let a = run_off()?;
                    (a, run_on()?)
                } else {
                    let b = run_on()?;
                    (run_off()?, b)
                };
                ratio.push(b.wrk.requests_per_s / a.wrk.requests_per_s);
                off_rps.push(a.wrk.requests_per_s);
                on_rps.push(b.wrk.requests_per_s);
                off_cpu.push(a.server_us);
                on_cpu.push(b.server_us);
            }
            println!(
                "{:<9} {:>4} {:>12.0} {:>12.0} {:>8.3} {:>14.1} {:>14.1}",
                label,
                c,
                median(off_rps),
                median(on_rps),
                median(ratio),
                median(off_cpu),
                median(on_cpu)
            );
        }
    }
    Ok(())
}

/// TLS vs plain: keep-alive cache hits, and one new connection per request (the handshake).
fn tls_vs_plain(args: &Args, path: &str, body: &str, scripts: &Path) -> Result<()> {
    let pki_dir = scripts.join("pki");
    let pki = TestPki::generate(&pki_dir, "invariant bench");
    println!(
        "\n# TLS vs plain text (medians of {} rounds): cache hits over keep-alive connections, and GET /v2/health/live with a new connection per request",
        args.rounds
    );
    println!(
        "{:<24} {:<6} {:>4} {:>10} {:>9} {:>11} {:>9} {:>14}",
        "workload", "wire", "conc", "req/s", "p99 ms", "server cpu", "tls/plain", "extra µs/conn"
    );
    let (constant, _) = post_scripts(scripts, "security-tls", body, &[])?;
    let close = scripts.join("security-close.lua");
    std::fs::write(&close, "wrk.headers[\"Connection\"] = \"close\"\n")?;
    let workloads: [(&str, &str, &Path); 2] = [
        ("hits, keep-alive", path, &constant),
        ("health, conn/request", "/v2/health/live", &close),
    ];
    for (label, target, script) in workloads {
        let mut plain: Vec<f64> = Vec::new();
        for tls in [false, true] {
            let port = free_port();
            let mut env = Vec::new();
            if tls {
                env.push(("INVARIANT_SERVER__TLS__CERT", pki.server_cert.display().to_string()));
                env.push(("INVARIANT_SERVER__TLS__KEY", pki.server_key.display().to_string()));
            }
            let server = start_server_auth(&args.binary, port, &env, false)?;
            let scheme = if tls { "https" } else { "http" };
            let base = format!("{scheme}://127.0.0.1:{port}");
            for (i, &c) in args.concurrency.iter().enumerate() {
                let [rps, p99, cpu, _] = measure(
                    args,
                    server.child.id(),
                    &format!("{base}{target}"),
                    &format!("{base}/v2/health/live"),
                    c,
                    Some(script),
                )?;
                if !tls {
                    plain.push(rps);
                }
                let (ratio, extra) = if tls {
                    // Per request, at this concurrency: the extra time TLS adds.
                    let extra = (1.0 / rps - 1.0 / plain[i]) * 1e6 * f64::from(c);
                    (format!("{:.3}", rps / plain[i]), format!("{extra:.0}"))
                } else {
                    ("-".into(), "-".into())
                };
                println!(
                    "{:<24} {:<6} {:>4} {:>10.0} {:>9.3} {:>11.1} {:>9} {:>14}",
                    label,
                    if tls { "tls" } else { "plain" },
                    c,
                    rps,
                    p99,
                    cpu,
                    ratio,
                    if label.starts_with("health") { extra } else { "-".into() }
                );
            }
        }
    }
    Ok(())
}

/// Nanoseconds per key check in-process: a key already verified (a lookup), and a key
/// verified from scratch (its HMAC), over a key file of 1 000 keys.
fn in_process(scripts: &Path) -> Result<()> {
    use invariant_auth::{Corridors, KeyStore, Keyring, Pepper, Role};
    let backend =
        invariant_control::file::FileBackend::new([(invariant_control::KEYS, scripts.join("bench-keys.json"))]);
    let store = KeyStore::new(invariant_control::Control::new(std::sync::Arc::new(backend)));
    let pepper = Pepper::new(b"bench pepper, sixteen bytes or more".to_vec())?;
    let mut secrets = Vec::new();
    for i in 0..1000 {
        let key = store.create(
            &pepper,
            &format!("k{i}"),
            [Role::Infer].into(),
            &Corridors::All,
            "bench",
        )?;
        secrets.push(key.secret);
    }
    let file = store.read()?;
    println!("\n# API key checks in-process (1 000 keys in the file)");
    let n = 200_000u32;
    let (ring, _) = Keyring::new(&file, &pepper);
    let start = std::time::Instant::now();
    for i in 0..n {
        std::hint::black_box(ring.authenticate(&secrets[i as usize % 1000])?);
    }
    println!(
        "{:<58} {:>8.0} ns/request",
        "a key in use (verified before: one lookup)",
        start.elapsed().as_nanos() as f64 / f64::from(n)
    );
    let start = std::time::Instant::now();
    let rounds = 20u32;
    for _ in 0..rounds {
        // A fresh keyring (as after a reload): every key is verified by its HMAC once.
        let (ring, _) = Keyring::new(&file, &pepper);
        for s in &secrets {
            std::hint::black_box(ring.authenticate(s)?);
        }
    }
    println!(
        "{:<58} {:>8.0} ns/request",
        "a key seen for the first time (HMAC-SHA-256, incl. reload)",
        start.elapsed().as_nanos() as f64 / f64::from(rounds * 1000)
    );
    Ok(())
}

/// The whole section.
pub fn bench_security(args: &Args, path: &str, body: &str, scripts: &Path) -> Result<()> {
    if !args.tls_only {
        in_process(scripts)?;
        auth_on_off(args, path, body, scripts)?;
    }
    if args.auth_only {
        return Ok(());
    }
    tls_vs_plain(args, path, body, scripts)
}
