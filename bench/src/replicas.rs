//! Replicas that agree, measured: transition latency (p50/p99) on one node (file control
//! state) against three replicas sharing one Redis; the time from a promotion's
//! acknowledgement until every replica serves it, p50/p99 over 100 promotions; and the
//! routing decision, which the shared control state must leave as cheap as before.

use crate::{start_server, Args};
use anyhow::{bail, Result};
use invariant_blackbox::{free_port, RedisServer};
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Promotes trust-scorer's two versions in turn on `ports` (round robin), `n` times; returns
/// each transition's latency and, when `watch`, how long after its acknowledgement every
/// server routed to the promoted version (ms).
async fn promotions(ports: &[u16], n: usize, watch: bool) -> Result<(Vec<f64>, Vec<f64>)> {
    let client = reqwest::Client::new();
    let mut latency = Vec::new();
    let mut spread = Vec::new();
    for i in 0..n {
        let version = if i % 2 == 0 { "1.1.0" } else { "1.2.0" };
        let port = ports[i % ports.len()];
        let url = format!("http://127.0.0.1:{port}/admin/v1/models/trust-scorer/versions/{version}/promote");
        let start = Instant::now();
        let r = client
            .post(&url)
            .json(&serde_json::json!({"reason": format!("bench {i}")}))
            .send()
            .await?;
        if r.status() != 200 {
            bail!("promotion {i} on {port}: {} {}", r.status(), r.text().await?);
        }
        let acked = Instant::now();
        latency.push((acked - start).as_secs_f64() * 1e3);
        if !watch {
            continue;
        }
        for &other in ports {
            let view = format!("http://127.0.0.1:{other}/admin/v1/models/trust-scorer");
            loop {
                let v: serde_json::Value = client.get(&view).send().await?.json().await?;
                if v["active"] == version {
                    break;
                }
                if acked.elapsed() > Duration::from_secs(10) {
                    bail!("replica {other} did not serve {version} within 10 s");
                }
            }
        }
        spread.push(acked.elapsed().as_secs_f64() * 1e3);
    }
    latency.sort_by(f64::total_cmp);
    spread.sort_by(f64::total_cmp);
    Ok((latency, spread))
}

/// The replicas section.
pub fn bench_replicas(args: &Args) -> Result<()> {
    let n = 100;
    let redis = RedisServer::start();
    let single_port = free_port();
    let single = start_server(&args.binary, single_port, &[])?;
    let mut replicas = Vec::new();
    let mut ports = Vec::new();
    let env = [
        ("INVARIANT_CACHE__REDIS_URL", redis.url()),
        ("INVARIANT_CONTROL__BACKEND", "redis".to_string()),
    ];
    for _ in 0..3 {
        let port = free_port();
        replicas.push(start_server(&args.binary, port, &env)?);
        ports.push(port);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (one, _) = rt.block_on(promotions(&[single_port], n, false))?;
    let (three, spread) = rt.block_on(promotions(&ports, n, true))?;
    drop((single, replicas));
    println!("\n# control state: {n} promotions, one node (file backend) vs three replicas (one Redis)");
    println!("{:<28} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    println!(
        "{:<28} {:>9.2} {:>9.2}",
        "transition, one node",
        percentile(&one, 0.5),
        percentile(&one, 0.99)
    );
    println!(
        "{:<28} {:>9.2} {:>9.2}",
        "transition, three replicas",
        percentile(&three, 0.5),
        percentile(&three, 0.99)
    );
    println!(
        "{:<28} {:>9.2} {:>9.2}",
        "ack -> all three serve it",
        percentile(&spread, 0.5),
        percentile(&spread, 0.99)
    );
    println!(
        "replicas / one node, p50: {:.2}; p99: {:.2}",
        percentile(&three, 0.5) / percentile(&one, 0.5),
        percentile(&three, 0.99) / percentile(&one, 0.99)
    );
    crate::bench_routing()
}
