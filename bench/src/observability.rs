//! What observability costs: served throughput and p99 with the audit trail off, buffered and
//! durable (uncached and on reply-cache hits, the three servers side by side, runs rotating);
//! audit appends per second in-process; and the time of one `/metrics` scrape with 50
//! corridors × 5 models of series.

use crate::{median, post_scripts, start_server, wrk_measured, Args};
use anyhow::Result;
use invariant_blackbox::free_port;
use std::path::Path;
use std::time::{Duration, Instant};

/// Served throughput and p99, audit off / buffered / durable.
fn served(args: &Args, path: &str, body: &str, scripts: &Path) -> Result<()> {
    println!(
        "\n# audit trail off vs buffered vs durable, batch 1 JSON: three servers side by side, runs rotating, medians of {} rounds",
        args.rounds
    );
    println!(
        "{:<9} {:>4} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "path", "conc", "off req/s", "buf req/s", "dur req/s", "off p99", "buf p99", "dur p99", "buf/off", "dur/off"
    );
    let modes: [(&str, Vec<(&str, String)>); 3] = [
        ("off", vec![("INVARIANT_AUDIT__INFERENCE", "false".into())]),
        ("buffered", vec![("INVARIANT_AUDIT__MODE", "buffered".into())]),
        ("durable", vec![("INVARIANT_AUDIT__MODE", "durable".into())]),
    ];
    for (label, cache) in [("uncached", "false"), ("hits", "true")] {
        let mut servers = Vec::new();
        for (_, env) in &modes {
            let port = free_port();
            let mut env = env.clone();
            env.push(("INVARIANT_CACHE__ENABLED", cache.to_string()));
            servers.push((port, start_server(&args.binary, port, &env)?));
        }
        let (hit, vary) = post_scripts(scripts, &format!("audit-{label}"), body, &[])?;
        let script = if cache == "true" { hit } else { vary };
        for &c in &args.concurrency {
            let mut rps = [vec![], vec![], vec![]];
            let mut p99 = [vec![], vec![], vec![]];
            let mut ratio = [vec![], vec![]];
            for round in 0..args.rounds.max(1) {
                let mut got = [(0.0, 0.0); 3];
                // Rotate the order so none always runs first.
                for k in 0..3 {
                    let i = (k + round) % 3;
                    let (port, server) = &servers[i];
                    let url = format!("http://127.0.0.1:{port}{path}");
                    let m = wrk_measured(server.child.id(), &url, c, args.http_seconds, Some(&script))?;
                    got[i] = (m.wrk.requests_per_s, m.wrk.p99_ms);
                }
                for i in 0..3 {
                    rps[i].push(got[i].0);
                    p99[i].push(got[i].1);
                }
                ratio[0].push(got[1].0 / got[0].0);
                ratio[1].push(got[2].0 / got[0].0);
            }
            let [r0, r1, r2] = rps.map(median);
            let [p0, p1, p2] = p99.map(median);
            let [b, d] = ratio.map(median);
            println!(
                "{label:<9} {c:>4} {r0:>10.0} {r1:>10.0} {r2:>10.0} {p0:>9.2} {p1:>9.2} {p2:>9.2} {b:>8.3} {d:>8.3}"
            );
        }
    }
    Ok(())
}

/// A record shaped like an inference record.
fn record(i: u64) -> serde_json::Value {
    serde_json::json!({
        "request_id": format!("{i:032x}"),
        "transport": "http_json",
        "model": "trust-scorer",
        "version": "1.2.0",
        "routing": "active",
        "input_hash": "3100cc570472c56bad4413dff0bba4330ba2fb8d262b2fc83f84d9e21ba9fe1b",
        "output_hash": "fe4581317ff5250de856fc0d2531012b5922431436dd850f480206a6183171e6",
        "source": "computed",
        "degraded": false,
        "status": 200,
        "caller": "51d1878d1395689d",
        "rows": 1,
    })
}

/// Audit appends per second in-process, buffered (4 appending threads) and durable (64 tasks
/// each waiting for its commit before the next).
fn appends(scripts: &Path) -> Result<()> {
    use invariant_audit::{Mode, Settings, Trail};
    println!("\n# audit appends in-process (one writer thread, group commit; records ~430 bytes)");
    let records: Vec<serde_json::Value> = (0..1024).map(record).collect();
    for mode in [Mode::Buffered, Mode::Durable] {
        let dir = scripts.join(format!("audit-{}", mode.name()));
        let _ = std::fs::remove_dir_all(&dir);
        let trail = std::sync::Arc::new(Trail::open(Settings {
            dir: dir.clone(),
            mode,
            flush_ms: 50,
            segment_bytes: 64 << 20,
            redis_url: String::new(),
        })?);
        let seconds = 2.0;
        let started = Instant::now();
        let count = std::sync::atomic::AtomicU64::new(0);
        match mode {
            Mode::Buffered => std::thread::scope(|s| {
                for t in 0..4 {
                    let (trail, records, count) = (&trail, &records, &count);
                    s.spawn(move || {
                        let chain = ["UAE-SA", "US-EG", "UK-NG", "DE-ZA"][t];
                        let mut i = 0;
                        while started.elapsed().as_secs_f64() < seconds {
                            let _ = trail.append(chain, "inference", &records[i % records.len()]);
                            i += 1;
                        }
                        count.fetch_add(i as u64, std::sync::atomic::Ordering::Relaxed);
                    });
                }
            }),
            Mode::Durable => {
                let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build()?;
                runtime.block_on(async {
                    let mut tasks = Vec::new();
                    for t in 0..64usize {
                        let (trail, records) = (trail.clone(), records.clone());
                        tasks.push(tokio::spawn(async move {
                            let mut i = 0u64;
                            while started.elapsed().as_secs_f64() < seconds {
                                let chain = ["UAE-SA", "US-EG", "UK-NG", "DE-ZA"][t % 4];
                                let _ = trail
                                    .append(chain, "inference", &records[i as usize % 1024])
                                    .wait()
                                    .await;
                                i += 1;
                            }
                            i
                        }));
                    }
                    for t in tasks {
                        count.fetch_add(t.await.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        }
        trail.close();
        let elapsed = started.elapsed().as_secs_f64();
        let n = count.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let mut ok = 0;
        for chain in invariant_audit::read::chains(&dir)? {
            ok += invariant_audit::read::verify(&dir, &chain)?.records;
        }
        println!(
            "{:<44} {:>12.0} appends/s ({} records verified)",
            format!(
                "{} ({})",
                mode.name(),
                if mode == Mode::Buffered {
                    "4 threads"
                } else {
                    "64 waiting tasks"
                }
            ),
            n / elapsed,
            ok
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// One scrape with 50 corridors × 5 models of request series, histograms and gauges.
fn scrape() -> Result<()> {
    use invariant_serving::guards::{Guard, Outcome, RequestContext};
    use invariant_serving::pool::RunTimings;
    use invariant_serving::{Routing, ServeError, Source, Transport};
    let Some(handle) = invariant_serving::telemetry::install() else {
        anyhow::bail!("another metrics recorder is installed");
    };
    let guard = invariant_serving::telemetry::MetricsGuard::default();
    let corridors: Vec<String> = (0..50).map(|i| format!("C{:02}-X{}", i / 10, i % 10)).collect();
    let models: Vec<String> = (0..5).map(|i| format!("model-{i}")).collect();
    let failure = ServeError::invalid("x");
    let mut observed = 0;
    for corridor in &corridors {
        for model in &models {
            for transport in [Transport::HttpJson, Transport::Grpc] {
                for (result, routing) in [
                    (Ok(Source::Computed), Routing::Active),
                    (Ok(Source::L1), Routing::Active),
                    (Ok(Source::Computed), Routing::Canary),
                    (Err(&failure), Routing::Active),
                ] {
                    let ctx = RequestContext {
                        transport,
                        started: tokio::time::Instant::now(),
                        model,
                        model_known: true,
                        version: Some("1.0.0"),
                        routing: Some(routing),
                        corridor: Some(corridor),
                        request_id: None,
                        body_id: None,
                        caller: None,
                        admitted_early: false,
                        caller_deadline: false,
                        fallback: invariant_registry::Fallback::Refuse,
                    };
                    let outcome = Outcome {
                        result,
                        elapsed: Duration::from_micros(300),
                        run: Some(RunTimings {
                            queue: Duration::from_micros(20),
                            compute: Duration::from_micros(100),
                            batch_requests: 1,
                        }),
                        rows: 1,
                        refused: false,
                        answer: None,
                        features: Some(Duration::from_micros(50)),
                    };
                    guard.observe(&ctx, &outcome);
                    observed += 1;
                }
            }
        }
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let text = handle.render();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        bytes = text.len();
    }
    let samples = {
        let text = handle.render();
        text.lines().filter(|l| !l.starts_with('#')).count()
    };
    println!("\n# /metrics scrape, 50 corridors × 5 models ({observed} label sets observed)");
    println!(
        "{:<44} {:>9.2} ms median of 20 ({samples} samples, {:.1} MiB)",
        "render",
        median(times),
        bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// The observability section.
pub fn bench_observability(args: &Args, path: &str, body: &str, scripts: &Path) -> Result<()> {
    appends(scripts)?;
    scrape()?;
    served(args, path, body, scripts)
}
