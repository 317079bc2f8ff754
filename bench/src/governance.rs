//! What corridor governance costs: the guard's checks per request in-process (kill switches,
//! freeze, the rate-limit buckets, the breaker and level lookups, the observation), and
//! served throughput with governance on and off, uncached and on reply-cache hits, against
//! `GET /v2/health/live` of the same server.

use crate::{median, start_server, wrk_measured, Args};
use anyhow::Result;
use invariant_blackbox::free_port;
use invariant_serving::config::Config;
use std::path::Path;
use std::time::{Duration, Instant};

/// Nanoseconds per request of the governance checks, in-process, on a state with a kill
/// switch and a limit override set elsewhere (so the maps are not empty).
fn in_process(config: &Config, model: &str) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("invariant-governance-bench-{}", std::process::id()));
    let mut config = config.clone();
    config.state_dir = dir.clone();
    config.governance.state = dir.join("governance.json").display().to_string();
    for rate in config.governance.corridor_rate.values_mut() {
        *rate = 1e9;
    }
    let g = config.open_governance(config.open_control()?)?;
    let corridors: Vec<String> = config.corridors.iter().map(|c| c.id.to_string()).collect();
    let (Some(first), Some(last)) = (corridors.first(), corridors.last()) else {
        anyhow::bail!("no corridors configured");
    };
    let measure = |label: &str| {
        let n = 2_000_000u32;
        let start = Instant::now();
        for _ in 0..n {
            let admitted = g.admit(first, model).is_ok();
            let (mode, _) = g.mode(first, model);
            std::hint::black_box((admitted, mode));
            g.observe(first, model, Duration::from_micros(100), false);
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
        println!("{label:<58} {ns:>8.0} ns/request");
    };
    println!("\n# governance checks in-process (admit: switches, freeze, buckets; mode: level, breaker; observe)");
    measure("empty control state");
    use invariant_governance::state::{Change, Scope};
    g.change(
        &Change::Kill {
            scope: Scope::Corridor(last.clone()),
            reason: "bench".into(),
        },
        "bench",
        None,
    )?;
    g.change(
        &Change::Freeze {
            scope: Scope::Corridor(last.clone()),
            reason: "bench".into(),
        },
        "bench",
        None,
    )?;
    measure("a kill switch and a freeze set on another corridor");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The whole section.
pub fn bench_governance(args: &Args, config: &Config, model: &str, path: &str, constant: &Path) -> Result<()> {
    in_process(config, model)?;
    println!(
        "\n# served with governance on vs off, {model} batch 1 JSON (medians of {} rounds; floor = GET /v2/health/live of the same server)",
        args.rounds
    );
    println!(
        "{:<8} {:<12} {:>4} {:>10} {:>9} {:>9} {:>10} {:>11}",
        "cache", "governance", "conc", "req/s", "p99 ms", "vs floor", "on/off", "server cpu"
    );
    for (cache, cache_env) in [("off", "false"), ("hits", "true")] {
        let mut results = Vec::new();
        for (label, enabled) in [("off", "false"), ("on", "true")] {
            let env = vec![
                ("INVARIANT_CACHE__ENABLED", cache_env.to_string()),
                ("INVARIANT_GOVERNANCE__ENABLED", enabled.to_string()),
            ];
            let port = free_port();
            let server = start_server(&args.binary, port, &env)?;
            let pid = server.child.id();
            let base = format!("http://127.0.0.1:{port}");
            let mut per_c = Vec::new();
            for &c in &args.concurrency {
                let (mut rps, mut p99, mut ratio, mut cpu) = (vec![], vec![], vec![], vec![]);
                for _ in 0..args.rounds.max(1) {
                    let before = wrk_measured(pid, &format!("{base}/v2/health/live"), c, args.http_seconds, None)?;
                    let m = wrk_measured(pid, &format!("{base}{path}"), c, args.http_seconds, Some(constant))?;
                    let after = wrk_measured(pid, &format!("{base}/v2/health/live"), c, args.http_seconds, None)?;
                    ratio.push(m.wrk.requests_per_s / ((before.wrk.requests_per_s + after.wrk.requests_per_s) / 2.0));
                    rps.push(m.wrk.requests_per_s);
                    p99.push(m.wrk.p99_ms);
                    cpu.push(m.server_us);
                }
                per_c.push((c, median(rps), median(p99), median(ratio), median(cpu)));
            }
            results.push((label, per_c));
        }
        let off = results[0].1.clone();
        for (label, per_c) in &results {
            for (i, (c, rps, p99, ratio, cpu)) in per_c.iter().enumerate() {
                println!(
                    "{:<8} {:<12} {:>4} {:>10.0} {:>9.3} {:>9.3} {:>10.3} {:>11.1}",
                    cache,
                    label,
                    c,
                    rps,
                    p99,
                    ratio,
                    rps / off[i].1,
                    cpu
                );
            }
        }
    }
    Ok(())
}
