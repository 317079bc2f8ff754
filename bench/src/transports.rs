//! The same model and input over HTTP JSON, HTTP binary tensors (Triton's binary extension)
//! and gRPC (KServe / Triton `ModelInfer`), uncached and cached, at each concurrency: every
//! transport's throughput as a ratio to HTTP JSON and to `GET /v2/health/live` of the same
//! server, measured in one run. HTTP load comes from wrk; gRPC load from a tonic client in
//! this process, one HTTP/2 connection per concurrent caller (as wrk opens one connection per
//! caller), on as many threads as wrk uses, and from `h2load` (nghttp2's C load generator,
//! as cheap per request as wrk), the same way.

use crate::{children_cpu_seconds, median, process_cpu_seconds, start_server, wrk_measured, Args, Measured, WrkResult};
use anyhow::{bail, Context, Result};
use invariant_blackbox::free_port;
use invariant_core::Tensor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The generated client and messages.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use proto::model_infer_request::InferInputTensor;
use proto::ModelInferRequest;

/// One model version and the request bodies that send the same input three ways.
pub struct Workload {
    /// Model name.
    pub model: String,
    /// Version string.
    pub version: String,
    /// The batch-1 inputs.
    pub inputs: Vec<Tensor>,
    /// Output names (all requested binary in the binary body).
    pub outputs: Vec<String>,
}

impl Workload {
    /// The batch-1 V2 JSON body.
    pub fn json_body(&self) -> String {
        serde_json::json!({ "inputs": self.inputs.iter().map(|t| serde_json::json!({
            "name": t.name, "shape": t.shape, "datatype": t.datatype(), "data": t.data,
        })).collect::<Vec<_>>() })
        .to_string()
    }

    /// Triton's binary extension: a JSON header naming each input's byte size, then the raw
    /// little-endian tensors; every output asked for in binary.
    fn binary_body(&self) -> (Vec<u8>, usize) {
        let raw: Vec<Vec<u8>> = self.inputs.iter().map(|t| t.data.to_le_bytes()).collect();
        let header = serde_json::json!({
            "inputs": self.inputs.iter().zip(&raw).map(|(t, r)| serde_json::json!({
                "name": t.name, "shape": t.shape, "datatype": t.datatype(),
                "parameters": { "binary_data_size": r.len() },
            })).collect::<Vec<_>>(),
            "outputs": self.outputs.iter().map(|o| serde_json::json!({
                "name": o, "parameters": { "binary_data": true },
            })).collect::<Vec<_>>(),
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        for r in raw {
            body.extend_from_slice(&r);
        }
        (body, header.len())
    }

    fn grpc_request(&self) -> ModelInferRequest {
        ModelInferRequest {
            model_name: self.model.clone(),
            model_version: self.version.clone(),
            inputs: self
                .inputs
                .iter()
                .map(|t| InferInputTensor {
                    name: t.name.clone(),
                    datatype: t.datatype().to_string(),
                    shape: t.shape.iter().map(|&d| d as i64).collect(),
                    ..Default::default()
                })
                .collect(),
            raw_input_contents: self.inputs.iter().map(|t| t.data.to_le_bytes()).collect(),
            ..Default::default()
        }
    }
}

/// Writes the wrk scripts: the JSON body inline, the binary body read from a file (Lua
/// strings carry any bytes, but a file keeps the script printable).
fn scripts(work: &Workload, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let json = dir.join("transport-json.lua");
    crate::json_post_script(&json, &work.json_body(), None)?;
    let (body, header_len) = work.binary_body();
    let body_file = dir.join("transport-binary.bin");
    std::fs::write(&body_file, body)?;
    let binary = dir.join("transport-binary.lua");
    std::fs::write(
        &binary,
        format!(
            "local f = assert(io.open(\"{}\", \"rb\"))\nwrk.body = f:read(\"*a\")\nf:close()\n\
             wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n\
             wrk.headers[\"Inference-Header-Content-Length\"] = \"{header_len}\"\n",
            body_file.display()
        ),
    )?;
    Ok((json, binary))
}

/// Drives `ModelInfer` from `connections` concurrent callers, each on its own HTTP/2
/// connection, for `seconds`; every answer must be OK with one raw output per requested
/// output.
fn grpc_load(port: u16, request: &ModelInferRequest, connections: u32, seconds: u32) -> Result<WrkResult> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(connections.clamp(1, 2) as usize)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut clients = Vec::new();
        for _ in 0..connections {
            let mut client = GrpcInferenceServiceClient::connect(endpoint.clone())
                .await
                .with_context(|| format!("connecting to {endpoint}"))?;
            // One warm-up call per connection, outside the timed window.
            client.model_infer(request.clone()).await.context("gRPC warm-up call")?;
            clients.push(client);
        }
        let start = Instant::now();
        let end = start + Duration::from_secs(u64::from(seconds));
        let mut tasks = Vec::new();
        for mut client in clients {
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies_us: Vec<u32> = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    let reply = client.model_infer(request.clone()).await?.into_inner();
                    latencies_us.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    if reply.raw_output_contents.is_empty() {
                        return Err(tonic::Status::internal("answer carried no raw outputs"));
                    }
                }
                Ok::<_, tonic::Status>(latencies_us)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await?.map_err(|s| anyhow::anyhow!("gRPC call failed: {s}"))?);
        }
        let elapsed = start.elapsed().as_secs_f64();
        if all.is_empty() {
            bail!("no gRPC call completed");
        }
        all.sort_unstable();
        let at = |q: f64| f64::from(all[((all.len() - 1) as f64 * q) as usize]) / 1000.0;
        Ok(WrkResult {
            requests_per_s: all.len() as f64 / elapsed,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            requests: all.len() as f64,
        })
    })
}

/// CPU seconds (user + system) this process has used so far (the gRPC load generator).
fn own_cpu_seconds() -> f64 {
    crate::proc_cpu_seconds("/proc/self/stat", 13)
}

fn grpc_measured(server_pid: u32, port: u16, request: &ModelInferRequest, c: u32, seconds: u32) -> Result<Measured> {
    let (s0, g0) = (process_cpu_seconds(server_pid), own_cpu_seconds());
    let r = grpc_load(port, request, c, seconds)?;
    let (s1, g1) = (process_cpu_seconds(server_pid), own_cpu_seconds());
    let per = |d: f64| d * 1e6 / r.requests.max(1.0);
    Ok(Measured {
        wrk: r,
        server_us: per(s1 - s0),
        wrk_us: per(g1 - g0),
    })
}

/// The server's count of gRPC inference requests that did not end `ok` (from `/metrics`):
/// h2load sees HTTP statuses only, a gRPC failure is a 200 with a `grpc-status` trailer.
fn grpc_failures(base: &str) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let text = rt.block_on(async {
        invariant_blackbox::http_client()
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await
    })?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("invariant_inference_requests_total{"))
        .filter(|l| l.contains("transport=\"grpc\"") && !l.contains("status=\"ok\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

/// Drives `ModelInfer` with `h2load` (Debian's nghttp2-client, a C load generator as cheap
/// as wrk): `c` calls in flight, for `seconds`, over `c` connections of one stream each, or
/// (`multiplexed`) over at most 2 connections carrying the calls as concurrent streams, as
/// a gRPC client's channel does. Latencies come
/// from its per-request log; every answer must be HTTP 200, and the server must count no gRPC
/// failure meanwhile.
#[allow(clippy::too_many_arguments)]
fn h2load_measured(
    server_pid: u32,
    base: &str,
    port: u16,
    request: &ModelInferRequest,
    c: u32,
    seconds: u32,
    dir: &Path,
    multiplexed: bool,
) -> Result<Measured> {
    use prost::Message;
    let (connections, streams) = if multiplexed {
        let connections = c.clamp(1, 2);
        (connections, c.div_ceil(connections))
    } else {
        (c, 1)
    };
    let body = dir.join("grpc-body.bin");
    let message = request.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    framed.extend_from_slice(&message);
    std::fs::write(&body, framed)?;
    let log = dir.join("h2load.log");
    // h2load appends to its log: each run starts from an empty one.
    let _ = std::fs::remove_file(&log);
    let failures_before = grpc_failures(base)?;
    let (s0, w0) = (process_cpu_seconds(server_pid), children_cpu_seconds());
    let out = std::process::Command::new("h2load")
        .args([
            "-D",
            &seconds.to_string(),
            "-c",
            &connections.to_string(),
            "-m",
            &streams.to_string(),
            "-t",
            &connections.clamp(1, 2).to_string(),
        ])
        .arg("-d")
        .arg(&body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!(
            "http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"
        ))
        .output()
        .context("running h2load (install it: apt-get install nghttp2-client)")?;
    let (s1, w1) = (process_cpu_seconds(server_pid), children_cpu_seconds());
    if !out.status.success() {
        bail!(
            "h2load failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&log)?;
    let mut latencies_us: Vec<u64> = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(status), Some(us)) = (cols.get(1), cols.get(2)) else {
            continue;
        };
        if *status != "200" {
            bail!("h2load: an answer was HTTP {status}");
        }
        latencies_us.push(us.trim().parse()?);
    }
    let failed = grpc_failures(base)? - failures_before;
    if failed > 0.0 {
        bail!("h2load: the server counted {failed} failed gRPC requests");
    }
    if latencies_us.is_empty() {
        bail!("h2load completed no request");
    }
    latencies_us.sort_unstable();
    let at = |q: f64| latencies_us[((latencies_us.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    let requests = latencies_us.len() as f64;
    let per = |d: f64| d * 1e6 / requests;
    Ok(Measured {
        wrk: WrkResult {
            requests_per_s: requests / f64::from(seconds),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            requests,
        },
        server_us: per(s1 - s0),
        wrk_us: per(w1 - w0),
    })
}

/// Runs the section: for the server with the inference cache off (every answer computed)
/// and with it on (every answer after the first a cache hit), at every concurrency, rounds
/// of `floor, JSON, binary, gRPC (tonic client), gRPC (h2load: a connection per call, then
/// the calls multiplexed over 2 connections), floor`; each row prints medians over the rounds, its ratio
/// to HTTP JSON of the same round and to the mean of that round's two floor runs.
pub fn bench_transports(args: &Args, work: &Workload, dir: &Path) -> Result<()> {
    let (json, binary) = scripts(work, dir)?;
    let request = work.grpc_request();
    println!(
        "\n# transports: {} {} batch 1, the same input over HTTP JSON, HTTP binary and gRPC",
        work.model, work.version
    );
    println!(
        "# medians of {} rounds (floor, JSON, binary, gRPC with the tonic client, gRPC with h2load: one connection per call, then \
         mux: the calls as streams of at most 2 connections, floor); vs json / vs floor: ratio to \
         HTTP JSON and to the mean of the round's two floor runs; cpu = microseconds of CPU per \
         request, server / load generator",
        args.rounds
    );
    println!(
        "{:<8} {:<22} {:>4} {:>10} {:>9} {:>9} {:>8} {:>9} {:>11} {:>9}",
        "cache", "transport", "conc", "req/s", "p50 ms", "p99 ms", "vs json", "vs floor", "server cpu", "load cpu"
    );
    for (label, env) in [
        ("off", vec![("INVARIANT_CACHE__ENABLED", "false".to_string())]),
        ("on", vec![]),
    ] {
        let port = free_port();
        let server = start_server(&args.binary, port, &env)?;
        let pid = server.child.id();
        let base = format!("http://127.0.0.1:{port}");
        let live = format!("{base}/v2/health/live");
        let infer = format!("{base}/v2/models/{}/versions/{}/infer", work.model, work.version);
        let names = [
            "GET /v2/health/live",
            "HTTP JSON",
            "HTTP binary",
            "gRPC (tonic)",
            "gRPC (h2load)",
            "gRPC (h2load, mux)",
        ];
        for &c in &args.concurrency {
            let mut runs: Vec<Vec<Measured>> = names.iter().map(|_| Vec::new()).collect();
            let mut vs_json: Vec<Vec<f64>> = names.iter().map(|_| Vec::new()).collect();
            let mut vs_floor: Vec<Vec<f64>> = names.iter().map(|_| Vec::new()).collect();
            for _ in 0..args.rounds.max(1) {
                let before = wrk_measured(pid, &live, c, args.http_seconds, None)?;
                let j = wrk_measured(pid, &infer, c, args.http_seconds, Some(&json))?;
                let b = wrk_measured(pid, &infer, c, args.http_seconds, Some(&binary))?;
                let g = grpc_measured(pid, server.grpc_port, &request, c, args.http_seconds)?;
                let h = h2load_measured(pid, &base, server.grpc_port, &request, c, args.http_seconds, dir, false)?;
                let x = h2load_measured(pid, &base, server.grpc_port, &request, c, args.http_seconds, dir, true)?;
                let after = wrk_measured(pid, &live, c, args.http_seconds, None)?;
                let floor = (before.wrk.requests_per_s + after.wrk.requests_per_s) / 2.0;
                let json_rps = j.wrk.requests_per_s;
                for (i, m) in [(1, j), (2, b), (3, g), (4, h), (5, x)] {
                    vs_json[i].push(m.wrk.requests_per_s / json_rps);
                    vs_floor[i].push(m.wrk.requests_per_s / floor);
                    runs[i].push(m);
                }
                vs_floor[0].push(1.0);
                runs[0].push(before);
                runs[0].push(after);
            }
            for (i, name) in names.iter().enumerate() {
                let m = &runs[i];
                let of = |f: fn(&Measured) -> f64| median(m.iter().map(f).collect());
                let json_ratio = if i == 0 {
                    "-".to_string()
                } else {
                    format!("{:.3}", median(vs_json[i].clone()))
                };
                println!(
                    "{:<8} {:<22} {:>4} {:>10.0} {:>9.3} {:>9.3} {:>8} {:>9.3} {:>11.1} {:>9.1}",
                    label,
                    name,
                    c,
                    of(|r| r.wrk.requests_per_s),
                    of(|r| r.wrk.p50_ms),
                    of(|r| r.wrk.p99_ms),
                    json_ratio,
                    median(vs_floor[i].clone()),
                    of(|r| r.server_us),
                    of(|r| r.wrk_us)
                );
            }
        }
        drop(server);
    }
    Ok(())
}
