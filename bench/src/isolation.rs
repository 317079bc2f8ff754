//! The isolation harness's numbers: corridor B (the default corridor) under steady load
//! (wrk, 4 connections, distinct uncached inputs) while corridor A (the first corridor of
//! another market) is sent 10× its rate limit (64 paced senders), and once a wrk flood as fast
//! as it goes; then killed, frozen, cut off from its Redis and given a hung Redis (SIGSTOP)
//! under 10× feature reads, and sent 10× calls to a version that fails every call. Prints B's throughput and p99 in each phase against the
//! mean of repeated baseline runs, as a deviation in percent, with the baseline's spread.

use crate::{start_server, wrk, Args, WrkResult};
use anyhow::{bail, Context, Result};
use invariant_blackbox::{free_port, RedisServer, RepoCopy};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A background flood, stopped when dropped (its answers are mostly refusals: not parsed).
enum Flood {
    /// wrk as fast as it goes.
    Unbounded(Child),
    /// A paced sender on its own thread.
    Paced(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        Option<std::thread::JoinHandle<()>>,
    ),
}

impl Drop for Flood {
    fn drop(&mut self) {
        match self {
            Flood::Unbounded(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Flood::Paced(stop, handle) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(h) = handle.take() {
                    let _ = h.join();
                }
            }
        }
    }
}

/// `rate` requests per second of `body` to `url` in `corridor`, from 64 concurrent senders
/// (one runtime thread), until dropped.
fn paced(url: &str, body: &str, corridor: &str, rate: f64) -> Result<Flood> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, body, corridor, flag) = (url.to_string(), body.to_string(), corridor.to_string(), stop.clone());
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            let client = reqwest::Client::new();
            let senders = 64u32;
            let period = std::time::Duration::from_secs_f64(f64::from(senders) / rate);
            let tasks: Vec<_> = (0..senders)
                .map(|i| {
                    let (client, url, body, corridor, stop) = (
                        client.clone(),
                        url.clone(),
                        body.clone(),
                        corridor.clone(),
                        flag.clone(),
                    );
                    tokio::spawn(async move {
                        tokio::time::sleep(period * i / senders).await;
                        let mut tick = tokio::time::interval(period);
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            tick.tick().await;
                            let _ = client
                                .post(&url)
                                .header("content-type", "application/json")
                                .header("x-corridor", &corridor)
                                .body(body.clone())
                                .send()
                                .await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        });
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(Flood::Paced(stop, Some(handle)))
}

fn flood(url: &str, script: &Path, seconds: u32) -> Result<Flood> {
    let child = Command::new("wrk")
        .args(["-t", "1", "-c", "64", "-d", &format!("{}s", seconds + 5)])
        .arg("-s")
        .arg(script)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running wrk")?;
    // Let it reach full speed before B is measured.
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(Flood::Unbounded(child))
}

fn lua(dir: &Path, name: &str, body: &str, corridor: &str) -> Result<PathBuf> {
    let path = dir.join(format!("isolation-{name}.lua"));
    crate::json_post_script(&path, body, Some(corridor))?;
    Ok(path)
}

fn invariant(binary: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(binary).args(args).output()?;
    if !out.status.success() {
        bail!("invariant {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The section. `b_path`/`b_varying`: B's inference path and its varying-body wrk script;
/// `a_body`: a valid body of the same model for A.
pub fn bench_isolation(args: &Args, b_path: &str, b_varying: &Path, a_body: &str, dir: &Path) -> Result<()> {
    let config = invariant_serving::config::Config::load(None)?;
    let b = config.server.default_corridor.clone().context("no default corridor")?;
    let b_market = config.corridor(b.as_str()).map(|c| c.market).unwrap_or(0);
    let a = config
        .corridors
        .iter()
        .find(|c| c.market != b_market)
        .context("no corridor in another market")?;
    let (a_id, a_market) = (a.id.to_string(), a.market);
    let repo = RepoCopy::new().with_fixture("canary-probe");
    let (redis_a, redis_b) = (RedisServer::start(), RedisServer::start());
    // A's feature rows in its own Redis, everyone else's in B's.
    let marker = format!("id = \"{a_id}\"\n");
    let text = invariant_serving::config::EMBEDDED_DEFAULTS.replacen(
        &marker,
        &format!("{marker}feature_redis_url = \"{}\"\n", redis_a.url()),
        1,
    );
    let config_path = dir.join("isolation.toml");
    std::fs::write(&config_path, text)?;
    let port = free_port();
    let rate = config
        .governance
        .corridor_rate
        .get(&a_market.to_string())
        .copied()
        .unwrap_or(100.0);
    let env = vec![
        ("INVARIANT_CONFIG", config_path.display().to_string()),
        ("INVARIANT_MODEL_REPOSITORY", repo.models().display().to_string()),
        ("INVARIANT_GOLDEN_VECTORS", repo.golden().display().to_string()),
        ("INVARIANT_CACHE__ENABLED", "false".into()),
        ("INVARIANT_FEATURE_BACKEND", "redis".into()),
        ("INVARIANT_FEATURE_REDIS_URL", redis_b.url()),
        // A keeps the shipped limit of its market; B's is lifted (it is not what is measured).
        (
            if a_market == 0 {
                "INVARIANT_GOVERNANCE__CORRIDOR_RATE__0"
            } else {
                "INVARIANT_GOVERNANCE__CORRIDOR_RATE__1"
            },
            rate.to_string(),
        ),
        ("INVARIANT_GOVERNANCE__BREAKER__OPEN_SECONDS", "600".into()),
    ];
    let _server = start_server(&args.binary, port, &env)?;
    let base = format!("http://127.0.0.1:{port}");
    let b_url = format!("{base}{b_path}");
    let a_infer = lua(dir, "infer", a_body, &a_id)?;
    let secs = args.http_seconds;
    let measure = || wrk(&b_url, 4, secs, Some(b_varying));
    println!(
        "\n# isolation: corridor B ({b}, 4 connections, uncached) while corridor A ({a_id}, limit {rate} req/s) is \
         flooded; {secs} s per phase"
    );
    let mut baseline: Vec<WrkResult> = Vec::new();
    for _ in 0..3 {
        baseline.push(measure()?);
    }
    let mean = |f: fn(&WrkResult) -> f64| baseline.iter().map(f).sum::<f64>() / baseline.len() as f64;
    let spread = |f: fn(&WrkResult) -> f64| {
        let (lo, hi) = baseline
            .iter()
            .map(f)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        (hi - lo) / mean(f) * 100.0
    };
    let (rps0, p990) = (mean(|r| r.requests_per_s), mean(|r| r.p99_ms));
    println!(
        "{:<44} {:>10} {:>9} {:>12} {:>12}",
        "phase (A's state)", "B req/s", "B p99 ms", "req/s dev %", "p99 dev %"
    );
    println!(
        "{:<44} {:>10.0} {:>9.3} {:>12} {:>12}",
        "baseline (mean of 3)",
        rps0,
        p990,
        format!("±{:.1} spread", spread(|r| r.requests_per_s)),
        format!("±{:.1} spread", spread(|r| r.p99_ms))
    );
    let row = |label: &str, r: &WrkResult| {
        println!(
            "{:<44} {:>10.0} {:>9.3} {:>12.1} {:>12.1}",
            label,
            r.requests_per_s,
            r.p99_ms,
            (r.requests_per_s / rps0 - 1.0) * 100.0,
            (r.p99_ms / p990 - 1.0) * 100.0
        )
    };
    let a_url = format!("{base}{b_path}");
    let features_url = format!("{base}/v1/features/get-online");
    let scope = format!("corridor:{a_id}");
    let bin = args.binary.as_path();
    let ten_x = rate * 10.0;
    let features_body =
        r#"{"features": ["account_stats:completed_orders"], "entities": {"account_id": ["a1", "a2", "a3"]}}"#;
    let failing_body = r#"{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [10.0, 10.0]}]}"#;
    {
        let _f = paced(&a_url, a_body, &a_id, ten_x)?;
        row(&format!("flooded at 10x its limit ({ten_x} req/s)"), &measure()?);
    }
    {
        let _f = flood(&a_url, &a_infer, secs)?;
        row("flooded by wrk, 64 connections, unbounded", &measure()?);
    }
    invariant(
        bin,
        &["switches", "kill", &scope, "--reason", "bench", "--server", &base],
    )?;
    {
        let _f = paced(&a_url, a_body, &a_id, ten_x)?;
        row("killed, 10x flood", &measure()?);
    }
    invariant(bin, &["switches", "revive", &scope, "--server", &base])?;
    invariant(
        bin,
        &["corridors", "freeze", &a_id, "--reason", "bench", "--server", &base],
    )?;
    {
        let _f = paced(&a_url, a_body, &a_id, ten_x)?;
        row("frozen, 10x flood", &measure()?);
    }
    invariant(bin, &["corridors", "unfreeze", &a_id, "--server", &base])?;
    let mut redis_a = redis_a;
    let redis_port = redis_a.port;
    redis_a.kill();
    {
        let _f = paced(&features_url, features_body, &a_id, ten_x)?;
        row("Redis down, 10x feature reads", &measure()?);
    }
    let redis_a = RedisServer::start_on(redis_port);
    redis_a.pause();
    {
        let _f = paced(&features_url, features_body, &a_id, ten_x)?;
        row("Redis hung (SIGSTOP), 10x feature reads", &measure()?);
    }
    redis_a.resume();
    {
        let failing_url = format!("{base}/v2/models/canary-probe/versions/1.1.0/infer");
        let _f = paced(&failing_url, failing_body, &a_id, ten_x)?;
        row("failing version, 10x flood (breaker opens)", &measure()?);
    }
    for _ in 0..2 {
        row("baseline again (A idle)", &measure()?);
    }
    drop(redis_b);
    Ok(())
}
