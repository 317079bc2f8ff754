//! `invariant-bench`: measures, in one run, the raw in-process engine throughput of every
//! shipped model version and the throughput and latency of the same models served over HTTP
//! by a real `invariant serve`, driven by `wrk`; prints the ratios served/raw-engine and
//! served/floor, where the floor is `GET /v2/health/live` of the same server.

use anyhow::{bail, Context, Result};

/// The server's allocator (see `server/src/main.rs`), so the in-process sections (engines,
/// portable kernels vs ONNX Runtime) allocate as they do when served.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::Parser;
use invariant_blackbox::free_port;
use invariant_core::{DataType, Tensor, TensorData};
use invariant_serving::config::Config;
use invariant_serving::models::VersionState;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod advisory;
mod governance;
mod isolation;
mod observability;
mod portable;
mod replicas;
mod security;
mod transports;

/// Raw engine and served-over-HTTP benchmarks of the shipped models.
#[derive(Parser)]
#[command(name = "invariant-bench")]
struct Args {
    /// The release `invariant` binary to serve with.
    #[arg(long, default_value = "target/release/invariant")]
    binary: PathBuf,
    /// Seconds per engine measurement.
    #[arg(long, default_value_t = 2.0)]
    engine_seconds: f64,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    http_seconds: u32,
    /// Concurrency levels (open connections) for the HTTP runs.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<u32>,
    /// Skip the HTTP runs.
    #[arg(long)]
    engine_only: bool,
    /// Run only the feature-store section.
    #[arg(long)]
    features_only: bool,
    /// Size in MB of the artifact for the import + verify + activate benchmark (0 skips it).
    #[arg(long, default_value_t = 100)]
    import_mb: usize,
    /// Run only the inference-cache sections (cache hits against the HTTP floor, L1 vs L2).
    #[arg(long)]
    cache_only: bool,
    /// Rounds of the cache-hit runs (each target run between two floor runs); the medians are
    /// printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Run only the transport section (HTTP JSON, HTTP binary and gRPC, cache off and on).
    #[arg(long)]
    transports_only: bool,
    /// Run only the governance section (in-process cost, served on vs off).
    #[arg(long)]
    governance_only: bool,
    /// Run only the security section (API keys on vs off; TLS vs plain text).
    #[arg(long)]
    security_only: bool,
    /// Run only the observability section (audit off / buffered / durable served; audit
    /// appends in-process; the metrics scrape with 50 corridors × 5 models).
    #[arg(long)]
    observability_only: bool,
    /// With --security-only: only its TLS part.
    #[arg(long)]
    tls_only: bool,
    /// With --security-only: only its API-key part.
    #[arg(long)]
    auth_only: bool,
    /// Run only the advisory section (advisories vs single inferences, uncached).
    #[arg(long)]
    advisory_only: bool,
    /// Run only the replicas section (transition latency on one node vs three replicas
    /// sharing Redis; time until every replica serves a promotion; the routing decision).
    #[arg(long)]
    replicas_only: bool,
    /// Run only the isolation harness (corridor B's load while corridor A is flooded, killed,
    /// frozen, cut off from Redis and failing).
    #[arg(long)]
    isolation_only: bool,
    /// Run only the portable-kernels section (portable engine vs ONNX Runtime on the same
    /// graphs, batch 1, 32 and 256).
    #[arg(long)]
    portable_only: bool,
    /// Model of the transport section (its active version); the first served model when
    /// absent.
    #[arg(long)]
    transport_model: Option<String>,
}

/// Deterministic, plausible inputs: small non-negative values varying by position.
fn inputs_for(model: &invariant_engine::Model, batch: usize) -> Vec<Tensor> {
    model
        .manifest()
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .map(|&d| if d == -1 { batch } else { d as usize })
                .collect();
            let n: usize = shape.iter().product();
            let data = match spec.datatype {
                DataType::Fp32 => TensorData::Fp32((0..n).map(|i| (i % 13) as f32 * 0.75).collect()),
                DataType::Fp64 => TensorData::Fp64((0..n).map(|i| (i % 13) as f64 * 0.75).collect()),
                DataType::Int64 => TensorData::Int64((0..n).map(|i| (i % 13) as i64).collect()),
                DataType::Int32 => TensorData::Int32((0..n).map(|i| (i % 13) as i32).collect()),
                _ => TensorData::Bool((0..n).map(|i| i % 2 == 0).collect()),
            };
            Tensor {
                name: spec.name.clone(),
                shape,
                data,
            }
        })
        .collect()
}

struct EngineResult {
    model: String,
    version: String,
    batch: usize,
    requests_per_s: f64,
}

fn bench_engines(config: Config, seconds: f64) -> Result<Vec<EngineResult>> {
    let state = invariant_serving::InferenceService::build(config.clone())?;
    let snapshot = state.snapshot();
    let table = &snapshot.table;
    let mut results = Vec::new();
    for (name, entry) in table.entries() {
        let VersionState::Ready(serving) = &entry.state else {
            bail!("{name} {} failed to load", entry.version);
        };
        let model = &serving.model;
        for batch in [1usize, 32] {
            let inputs = inputs_for(model, batch);
            for _ in 0..50 {
                model.infer(inputs.clone())?;
            }
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                model.infer(inputs.clone())?;
                n += 1;
            }
            let rps = n as f64 / start.elapsed().as_secs_f64();
            results.push(EngineResult {
                model: name.to_string(),
                version: entry.version.clone(),
                batch,
                requests_per_s: rps,
            });
        }
    }
    Ok(results)
}

/// Time per forward pass of each shipped native network with the fixed-order kernel and with
/// candle's default matmul, at batch 1, 32 and 256.
fn bench_kernels(config: &Config, seconds: f64) -> Result<()> {
    use invariant_engine::native::NativeEngine;
    use invariant_registry::{Format, Kernel};
    println!("\n# native kernels: fixed-order (batch-invariant) vs candle matmul (x·Wᵀ), {seconds} s each");
    println!(
        "{:<15} {:<8} {:>5} {:>14} {:>14} {:>8}",
        "model", "version", "batch", "fixed us/run", "candle us/run", "ratio"
    );
    for scanned in invariant_registry::scan(&config.model_repository)? {
        let Ok(version) = scanned.result else { continue };
        if version.manifest.format != Format::Native {
            continue;
        }
        let fixed = NativeEngine::load(&version)?;
        let mut naive_version = version.clone();
        if let Some(native) = naive_version.manifest.native.as_mut() {
            native.kernel = Kernel::CandleMatmul;
        }
        let naive = NativeEngine::load(&naive_version)?;
        let width = version.manifest.native.as_ref().map(|n| n.input_size).unwrap_or(1);
        for batch in [1usize, 32, 256] {
            let x: Vec<f32> = (0..batch * width).map(|i| (i % 13) as f32 * 0.75).collect();
            let time = |engine: &NativeEngine| -> Result<f64> {
                for _ in 0..20 {
                    engine.forward(&x, 1)?;
                }
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed().as_secs_f64() < seconds {
                    engine.forward(&x, 1)?;
                    n += 1;
                }
                Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
            };
            let (a, b) = (time(&fixed)?, time(&naive)?);
            println!(
                "{:<15} {:<8} {:>5} {:>14.2} {:>14.2} {:>8.3}",
                scanned.model,
                scanned.version,
                batch,
                a,
                b,
                a / b
            );
        }
    }
    Ok(())
}

/// Wall time of the determinism gate over the shipped repository.
fn bench_gate(config: &Config) -> Result<()> {
    let report = invariant_cli::gate::run_gate(config, &Default::default())?;
    println!(
        "\n# determinism gate over the shipped repository: {} versions, passed={}, {:.2} s wall",
        report.versions.len(),
        report.passed,
        report.seconds
    );
    for v in &report.versions {
        println!(
            "{:<15} {:<8} {:>4} vectors {:>8.3} s",
            v.model, v.version, v.vectors, v.seconds
        );
    }
    Ok(())
}

/// Cost of the traffic-split decision: `RegistryState::route` with a canary, per call.
pub(crate) fn bench_routing() -> Result<()> {
    use invariant_registry::lifecycle::{Action, RegistryState, TransitionContext};
    let ready: &dyn Fn(&str) -> bool = &|_| true;
    let ctx = TransitionContext {
        actor: "bench",
        reason: "",
        time: "",
        ready,
        default_active: Some("1.0.0"),
    };
    let (state, _) = RegistryState::default().apply(
        "risk-assessor",
        "1.1.0",
        &Action::Canary {
            percent: 5.0,
            corridors: vec!["UAE-SA".into()],
        },
        &ctx,
    )?;
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let n = 2_000_000;
    let start = Instant::now();
    let mut canary = 0u64;
    for i in 0..n {
        let route = state.route(
            "risk-assessor",
            "UAE-SA",
            keys[i % keys.len()].as_bytes(),
            ready,
            Some("1.0.0"),
        );
        canary += u64::from(route.is_some_and(|r| r.reason == "canary"));
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("\n# traffic split: RegistryState::route with a 5% corridor canary");
    println!(
        "{ns:.0} ns per routing decision over {n} calls ({:.2}% went to the canary)",
        canary as f64 * 100.0 / n as f64
    );
    Ok(())
}

fn time_command(cmd: &str, file: &Path) -> Result<f64> {
    let start = Instant::now();
    let out = Command::new(cmd)
        .arg(file)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} failed");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Import (copy + sha256 + blake3 + manifest + golden vectors), verification on load, and
/// activation of a native network of about `mb` MB, against `sha256sum` and `b3sum` on the
/// same file as the hashing floor.
fn bench_import(config: &Config, mb: usize) -> Result<()> {
    let work = std::env::temp_dir().join(format!("invariant-import-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (repo, golden) = (work.join("models"), work.join("golden"));
    let template = repo.join("big").join("0.1.0");
    std::fs::create_dir_all(&template)?;
    // 8 -> 4096 -> hidden -> 1 with `mb` MB of f32 weights in all.
    let hidden = ((mb * (1 << 20) / 4).saturating_sub(8 * 4096) / 4097).max(1);
    let sizes = [(8usize, 4096usize), (4096, hidden), (hidden, 1)];
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, &(inp, out)) in sizes.iter().enumerate() {
        let scale = 1.0 / (inp as f32).sqrt();
        let w: Vec<u8> = (0..inp * out)
            .flat_map(|k| ((((k * 7919) % 1000) as f32 / 500.0 - 1.0) * scale).to_le_bytes())
            .collect();
        let b: Vec<u8> = (0..out).flat_map(|k| ((k % 7) as f32 * 0.01).to_le_bytes()).collect();
        tensors.push((format!("layers.{i}.weight"), vec![inp, out], w));
        tensors.push((format!("layers.{i}.bias"), vec![out], b));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)?,
            ))
        })
        .collect::<Result<_>>()?;
    let artifact = work.join("big.safetensors");
    safetensors::serialize_to_file(views, None, &artifact)?;
    drop(tensors);
    let manifest = format!(
        r#"name = "big"
version = "0.1.0"
format = "native"
description = "import benchmark"
[[artifacts]]
path = "model.safetensors"
sha256 = "{z}"
blake3 = "{z}"
[[inputs]]
name = "features"
datatype = "FP32"
shape = [-1, 8]
[[outputs]]
name = "score"
datatype = "FP32"
shape = [-1, 1]
[inference]
max_batch_size = 32
[native]
weights = "model.safetensors"
input_size = 8
layers = [{{ size = 4096, activation = "relu" }}, {{ size = {hidden}, activation = "relu" }}, {{ size = 1, activation = "sigmoid" }}]
"#,
        z = "0".repeat(64)
    );
    std::fs::write(template.join("manifest.toml"), manifest)?;
    let bytes = std::fs::metadata(&artifact)?.len();
    let mut cfg = config.clone();
    cfg.model_repository = repo.clone();
    cfg.golden_vectors = golden;
    cfg.state_dir = work.join("state");
    cfg.registry_state = work.join("registry.json").display().to_string();

    let total = Instant::now();
    let request = invariant_cli::import::ImportRequest {
        artifact: artifact.clone(),
        name: "big".into(),
        version: "1.0.0".into(),
        like: Some("0.1.0".into()),
        description: None,
        record_golden: true,
    };
    let outcome = invariant_cli::import::import(&cfg, &request, |_, _| {})?;
    std::fs::remove_dir_all(&template)?;
    // Activation: the server loads the new version (hashes, parse, deploy-time verification);
    // as the model's only version it serves from then on.
    let load = Instant::now();
    let state = invariant_serving::InferenceService::build(cfg)?;
    let load_seconds = load.elapsed().as_secs_f64();
    let serving = state.snapshot().table.resolve("big", None).is_ok();
    if !serving {
        bail!("the imported version does not serve");
    }
    let total_seconds = total.elapsed().as_secs_f64();
    let sha = time_command("sha256sum", &artifact)?;
    let b3 = time_command("b3sum", &artifact)?;
    println!(
        "\n# import + verify + activate a {:.1} MB native artifact",
        bytes as f64 / 1e6
    );
    println!("copy + sha256 + blake3 (one pass)  {:>8.3} s", outcome.copy_seconds);
    println!(
        "load check + golden record         {:>8.3} s ({} vectors)",
        outcome.load_seconds, outcome.golden_vectors
    );
    println!("activate: load, hashes, verification {load_seconds:>6.3} s (then serving)");
    println!("total                              {total_seconds:>8.3} s");
    println!("floor: sha256sum {sha:.3} s, b3sum {b3:.3} s, sum {:.3} s", sha + b3);
    println!(
        "copy+hash / (sha256sum + b3sum) = {:.2}",
        outcome.copy_seconds / (sha + b3)
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[derive(Clone, Copy)]
struct WrkResult {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: f64,
}

/// CPU seconds (user + system) of this process's waited-for children (wrk) so far.
fn children_cpu_seconds() -> f64 {
    proc_cpu_seconds("/proc/self/stat", 15)
}

/// CPU seconds (user + system) a process has used so far.
fn process_cpu_seconds(pid: u32) -> f64 {
    proc_cpu_seconds(&format!("/proc/{pid}/stat"), 13)
}

/// Sums two consecutive clock-tick fields of a `/proc/<pid>/stat` line (fields counted from 0
/// after the command name): 13/14 are the process's own user/system time, 15/16 its children's.
fn proc_cpu_seconds(path: &str, first: usize) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let after_name = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `after_name` starts at field 2 (the state).
    let tick = |i: usize| fields.get(i - 2).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(first) + tick(first + 1)) / 100.0
}

/// A wrk run with the CPU time per request that the server and wrk itself spent.
struct Measured {
    wrk: WrkResult,
    server_us: f64,
    wrk_us: f64,
}

fn wrk_measured(server_pid: u32, url: &str, connections: u32, seconds: u32, script: Option<&Path>) -> Result<Measured> {
    let (s0, w0) = (process_cpu_seconds(server_pid), children_cpu_seconds());
    let r = wrk(url, connections, seconds, script)?;
    let (s1, w1) = (process_cpu_seconds(server_pid), children_cpu_seconds());
    let per = |d: f64| d * 1e6 / r.requests.max(1.0);
    Ok(Measured {
        wrk: r,
        server_us: per(s1 - s0),
        wrk_us: per(w1 - w0),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn parse_latency_ms(text: &str) -> Option<f64> {
    let (num, unit) = text
        .trim()
        .split_at(text.trim().find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => return None,
    })
}

fn wrk(url: &str, connections: u32, seconds: u32, script: Option<&Path>) -> Result<WrkResult> {
    let threads = connections.clamp(1, 2);
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        &threads.to_string(),
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
        "--latency",
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (install it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        // A script's `response` may print the first failures (`NON2XX <status> <body>`).
        let shown: Vec<&str> = text.lines().filter(|l| l.starts_with("NON2XX")).collect();
        bail!("requests failed during the benchmark: {line}\n{}", shown.join("\n"));
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim).map(str::to_string))
    };
    let rps: f64 = field("Requests/sec:").context("wrk printed no Requests/sec")?.parse()?;
    let p50 = field("50%")
        .and_then(|v| parse_latency_ms(&v))
        .context("wrk printed no p50")?;
    let p99 = field("99%")
        .and_then(|v| parse_latency_ms(&v))
        .context("wrk printed no p99")?;
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("wrk printed no request count")?;
    Ok(WrkResult {
        requests_per_s: rps,
        p50_ms: p50,
        p99_ms: p99,
        requests,
    })
}

/// Writes a wrk script that POSTs the JSON `body` (in `corridor`, when given).
/// wrk scripts posting `body` to `dir/<name>.lua` (the same body every time: cache hits) and
/// `dir/<name>-varying.lua` (its first data element replaced by a counter: every request
/// differs), each with `headers`.
fn post_scripts(dir: &Path, name: &str, body: &str, headers: &[(&str, &str)]) -> Result<(PathBuf, PathBuf)> {
    let lua_headers: String = std::iter::once(("Content-Type", "application/json"))
        .chain(headers.iter().copied())
        .map(|(k, v)| format!("[\"{k}\"] = \"{v}\", "))
        .collect();
    let constant = dir.join(format!("{name}.lua"));
    std::fs::write(
        &constant,
        format!("wrk.method = \"POST\"\nwrk.body = [[{body}]]\nwrk.headers = {{{lua_headers}}}\n"),
    )?;
    let open = body.find("\"data\":[").map(|i| i + 8).context("body has no data")?;
    let close = open + body[open..].find([',', ']']).context("data is empty")?;
    let varying = dir.join(format!("{name}-varying.lua"));
    std::fs::write(
        &varying,
        format!(
            "counter = 0\nrequest = function()\n  counter = counter + 1\n  local body = [[{}]] .. counter .. [[{}]]\n  return wrk.format(\"POST\", nil, {{{lua_headers}}}, body)\nend\n",
            &body[..open],
            &body[close..]
        ),
    )?;
    Ok((constant, varying))
}

fn json_post_script(path: &Path, body: &str, corridor: Option<&str>) -> Result<()> {
    let mut script =
        format!("wrk.method = \"POST\"\nwrk.body = [[{body}]]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n");
    if let Some(c) = corridor {
        script.push_str(&format!("wrk.headers[\"x-corridor\"] = \"{c}\"\n"));
    }
    std::fs::write(path, script).with_context(|| format!("writing {}", path.display()))
}

/// A running `invariant serve`, killed when dropped.
struct ServerProcess {
    child: Child,
    /// Its gRPC port (every server gets its own, so several can run side by side).
    grpc_port: u16,
    /// Its state directory, removed when it stops (audit segments of a long run are large).
    state: PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn start_server(binary: &Path, port: u16, env: &[(&str, String)]) -> Result<ServerProcess> {
    start_server_auth(binary, port, env, false)
}

/// The state directory of the server on `port`.
fn state_dir(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("invariant-bench-state-{port}"))
}

/// [`start_server`], requiring API keys when `auth` (its key file is in [`state_dir`]).
fn start_server_auth(binary: &Path, port: u16, env: &[(&str, String)], auth: bool) -> Result<ServerProcess> {
    let grpc_port = free_port();
    let mut command = Command::new(binary);
    command.args([
        "serve",
        "--http-addr",
        &format!("127.0.0.1:{port}"),
        "--grpc-addr",
        &format!("127.0.0.1:{grpc_port}"),
    ]);
    if !auth {
        command.arg("--dev-no-auth");
    }
    let child = command
        .env("INVARIANT_LOG", "warn")
        // The shipped limits (200 and 100 requests/s per corridor) would cap every run: the
        // benchmarks lift them (the buckets still run) unless a run sets its own.
        .env("INVARIANT_GOVERNANCE__CORRIDOR_RATE__0", "100000000")
        .env("INVARIANT_GOVERNANCE__CORRIDOR_RATE__1", "100000000")
        .env("INVARIANT_STATE_DIR", state_dir(port))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let server = ServerProcess {
        child,
        grpc_port,
        state: state_dir(port),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let up = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
        if up(port) && up(grpc_port) {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("server did not start listening on ports {port} (HTTP) and {grpc_port} (gRPC)")
}

/// The feature store: materialization rows/s, and `get-online` for 1 and 10 entities × 20
/// features over HTTP, with rows in the embedded store (floor: the health check of the same
/// server) and in Redis (floor: a bare `redis-benchmark` of the same HGETs).
fn bench_features(args: &Args) -> Result<()> {
    let work = std::env::temp_dir().join(format!("invariant-features-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let repo = work.join("features");
    std::fs::create_dir_all(&repo)?;
    let features: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
    let mut toml = String::from(
        "[[entities]]\nname = \"user\"\njoin_key = \"user_id\"\nkey_type = \"STRING\"\n\n\
         [[feature_views]]\nname = \"user_stats\"\nentity = \"user\"\nttl_seconds = 0\nfeatures = [\n",
    );
    for f in &features {
        toml.push_str(&format!(
            "  {{ name = \"{f}\", datatype = \"FP32\", default = 0.0 }},\n"
        ));
    }
    toml.push_str("]\n");
    std::fs::write(repo.join("bench.toml"), toml)?;
    let users = 100_000;
    let mut csv = format!("user_id,event_timestamp,{}\n", features.join(","));
    for u in 0..users {
        csv.push_str(&format!("u{u},1794900000"));
        for i in 0..20 {
            csv.push_str(&format!(",{}", (u * 7 + i) % 1000));
        }
        csv.push('\n');
    }
    let csv_path = work.join("users.csv");
    std::fs::write(&csv_path, csv)?;
    let refs: Vec<String> = features.iter().map(|f| format!("\"user_stats:{f}\"")).collect();

    let materialize = |label: &str, env: &[(&str, String)]| -> Result<()> {
        let out = Command::new(&args.binary)
            .args([
                "features",
                "materialize",
                "--json",
                "--view",
                "user_stats",
                "--corridor",
                "UAE-SA",
                "--from",
            ])
            .arg(&csv_path)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("INVARIANT_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!(
                "materialize into {label} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        println!(
            "\n# feature store ({label}): materialize {} rows x 20 features from CSV in {:.2} s: {:.0} rows/s",
            report["written"],
            report["seconds"].as_f64().unwrap_or(0.0),
            report["rows_per_second"].as_f64().unwrap_or(0.0)
        );
        Ok(())
    };
    let get_online = |base: &str, c: u32, entities: usize| -> Result<WrkResult> {
        let keys: Vec<String> = (0..entities).map(|e| format!("\"u{}\"", e * 997)).collect();
        let body = format!(
            "{{\"features\": [{}], \"entities\": {{\"user_id\": [{}]}}}}",
            refs.join(","),
            keys.join(",")
        );
        let script = work.join(format!("get-{entities}.lua"));
        json_post_script(&script, &body, Some("UAE-SA"))?;
        wrk(
            &format!("{base}/v1/features/get-online"),
            c,
            args.http_seconds,
            Some(&script),
        )
    };
    let row = |target: &str, c: u32, r: &WrkResult, floor: f64| {
        println!(
            "{:<24} {:>4} {:>10.0} {:>9.3} {:>9.3} {:>12.3}",
            target,
            c,
            r.requests_per_s,
            r.p50_ms,
            r.p99_ms,
            r.requests_per_s / floor
        )
    };
    let header = || {
        println!(
            "{:<24} {:>4} {:>10} {:>9} {:>9} {:>12}",
            "target", "conc", "req/s", "p50 ms", "p99 ms", "served/floor"
        )
    };

    // Embedded store, against the health check of the same server.
    let store = work.join("features.redb");
    let embedded_env = [
        ("INVARIANT_FEATURE_REPOSITORY", repo.display().to_string()),
        ("INVARIANT_FEATURE_STORE", store.display().to_string()),
    ];
    materialize("embedded redb", &embedded_env)?;
    {
        let port = free_port();
        let _server = start_server(&args.binary, port, &embedded_env)?;
        let base = format!("http://127.0.0.1:{port}");
        println!(
            "get-online over HTTP (wrk, {} s per run), against GET /v2/health/live of the same server",
            args.http_seconds
        );
        header();
        for &c in &args.concurrency {
            let floor = wrk(&format!("{base}/v2/health/live"), c, args.http_seconds, None)?;
            row("GET /v2/health/live", c, &floor, floor.requests_per_s);
            for entities in [1usize, 10] {
                row(
                    &format!("{entities} entities x 20"),
                    c,
                    &get_online(&base, c, entities)?,
                    floor.requests_per_s,
                );
            }
        }
    }

    // Redis, against a bare redis-benchmark of the same HGETs (pipelined 10 deep for 10).
    let redis = invariant_blackbox::RedisServer::start();
    let redis_port = redis.port;
    let redis_env = [
        ("INVARIANT_FEATURE_REPOSITORY", repo.display().to_string()),
        ("INVARIANT_FEATURE_BACKEND", "redis".to_string()),
        ("INVARIANT_FEATURE_REDIS_URL", redis.url()),
    ];
    materialize("Redis", &redis_env)?;
    let port = free_port();
    let _server = start_server(&args.binary, port, &redis_env)?;
    let base = format!("http://127.0.0.1:{port}");
    println!("get-online over HTTP against redis-benchmark of the same HGETs (pipelined 10 for 10 entities)");
    header();
    for &c in &args.concurrency {
        for entities in [1usize, 10] {
            let bench = Command::new("redis-benchmark")
                .args([
                    "-p",
                    &redis_port.to_string(),
                    "-c",
                    &c.to_string(),
                    "-n",
                    "100000",
                    "-P",
                    &entities.to_string(),
                    "-q",
                ])
                .args(["HGET", "inv:UAE-SA:fv:user_stats:u0", "row"])
                .output()
                .context("running redis-benchmark")?;
            let text = String::from_utf8_lossy(&bench.stdout).into_owned();
            let ops: f64 = text
                .split_whitespace()
                .zip(text.split_whitespace().skip(1))
                .find_map(|(n, w)| (w == "requests").then(|| n.parse().ok()).flatten())
                .with_context(|| format!("redis-benchmark printed no rate: {text}"))?;
            let floor = ops / entities as f64;
            println!(
                "{:<24} {:>4} {:>10.0} {:>9} {:>9} {:>12}",
                format!("redis-benchmark x{entities}"),
                c,
                floor,
                "-",
                "-",
                "1.000"
            );
            row(
                &format!("{entities} entities x 20"),
                c,
                &get_online(&base, c, entities)?,
                floor,
            );
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The in-process sections: raw engines, native kernels, the gate, routing, import.
fn run_engine_sections(args: &Args, config: &Config) -> Result<Vec<EngineResult>> {
    println!("# raw engine (in-process Model::infer: signature checks + engine, no HTTP)");
    let engines = bench_engines(config.clone(), args.engine_seconds)?;

    println!(
        "{:<15} {:<8} {:>5} {:>12} {:>12}",
        "model", "version", "batch", "req/s", "rows/s"
    );
    for r in &engines {
        println!(
            "{:<15} {:<8} {:>5} {:>12.0} {:>12.0}",
            r.model,
            r.version,
            r.batch,
            r.requests_per_s,
            r.requests_per_s * r.batch as f64
        );
    }
    bench_kernels(config, args.engine_seconds / 2.0)?;
    portable::bench_portable(&config.model_repository, args.engine_seconds)?;
    bench_gate(config)?;
    bench_routing()?;
    if args.import_mb > 0 {
        bench_import(config, args.import_mb)?;
    }
    Ok(engines)
}

fn main() -> Result<()> {
    // The portable-kernel section loads ONNX Runtime in this process (see the server's main).
    invariant_engine::onnx::opt_out_of_telemetry();
    let args = Args::parse();
    invariant_remote::install_tls_provider();
    if args.features_only {
        return bench_features(&args);
    }
    if args.replicas_only {
        return replicas::bench_replicas(&args);
    }
    if args.advisory_only {
        let scripts = std::env::temp_dir().join(format!("invariant-bench-advisory-{}", std::process::id()));
        std::fs::create_dir_all(&scripts)?;
        let done = advisory::bench_advisory(&args, &scripts);
        let _ = std::fs::remove_dir_all(&scripts);
        return done;
    }
    let config = Config::load(None)?;
    if args.portable_only {
        invariant_serving::init_onnx(&config);
        return portable::bench_portable(&config.model_repository, args.engine_seconds);
    }
    let sections_only = args.transports_only
        || args.governance_only
        || args.isolation_only
        || args.security_only
        || args.observability_only;
    let engines = if args.cache_only || sections_only {
        Vec::new()
    } else {
        run_engine_sections(&args, &config)?
    };
    if args.engine_only {
        return Ok(());
    }

    let scripts = std::env::temp_dir().join(format!("invariant-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scripts)?;
    let state = invariant_serving::InferenceService::build(config.clone())?;
    let snapshot = state.snapshot();
    let table = &snapshot.table;
    // Per model: a batch-1 JSON body, and the same body with its first element left open so
    // every request of a run differs (cache misses).
    let mut bodies = Vec::new();
    let mut transport_work = None;
    for name in table.names() {
        let serving = table
            .resolve(name, None)
            .map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
        let model = &serving.model;
        let version = model.manifest().version.to_string();
        let inputs = inputs_for(model, 1);
        if transport_work.is_none() && args.transport_model.as_deref().is_none_or(|m| m == name) {
            transport_work = Some(transports::Workload {
                model: name.to_string(),
                version: version.clone(),
                inputs: inputs.clone(),
                outputs: model.manifest().outputs.iter().map(|o| o.name.clone()).collect(),
            });
        }
        let body = serde_json::json!({ "inputs": inputs.iter().map(|t| serde_json::json!({
            "name": t.name, "shape": t.shape, "datatype": t.datatype(), "data": t.data,
        })).collect::<Vec<_>>() })
        .to_string();
        let engine = engines
            .iter()
            .find(|e| e.model == name && e.version == version && e.batch == 1)
            .map(|e| e.requests_per_s)
            .unwrap_or(f64::NAN);
        let (constant, varying) = post_scripts(&scripts, name, &body, &[])?;
        let path = format!("/v2/models/{name}/versions/{version}/infer");
        bodies.push((name.to_string(), version, path, constant, varying, engine));
    }
    let row = |target: &str, c: u32, r: &WrkResult, engine: Option<f64>, floor: f64| {
        println!(
            "{:<26} {:>4} {:>10.0} {:>9.3} {:>9.3} {:>14} {:>12.3}",
            target,
            c,
            r.requests_per_s,
            r.p50_ms,
            r.p99_ms,
            engine
                .map(|e| format!("{:.3}", r.requests_per_s / e))
                .unwrap_or_else(|| "-".into()),
            r.requests_per_s / floor
        )
    };
    let header = || {
        println!(
            "{:<26} {:>4} {:>10} {:>9} {:>9} {:>14} {:>12}",
            "target", "conc", "req/s", "p50 ms", "p99 ms", "served/engine", "served/floor"
        )
    };

    // 1. Computed answers (cache off), against the raw engine and the HTTP floor.
    if !args.cache_only && !sections_only {
        let port = free_port();
        let _server = start_server(&args.binary, port, &[("INVARIANT_CACHE__ENABLED", "false".into())])?;
        let base = format!("http://127.0.0.1:{port}");
        println!(
            "\n# served over HTTP, cache off (wrk, {} s per run, batch 1, JSON)",
            args.http_seconds
        );
        header();
        for &c in &args.concurrency {
            let floor = wrk(&format!("{base}/v2/health/live"), c, args.http_seconds, None)?;
            row("GET /v2/health/live", c, &floor, None, floor.requests_per_s);
            for (name, version, path, _, varying, engine) in &bodies {
                let r = wrk(&format!("{base}{path}"), c, args.http_seconds, Some(varying))?;
                row(&format!("{name} {version}"), c, &r, Some(*engine), floor.requests_per_s);
            }
        }
    }

    let transport_work = transport_work.context("the transport model is not served")?;
    let (_, _, governance_path, governance_body, varying_body, _) = bodies
        .iter()
        .find(|b| b.0 == transport_work.model)
        .context("no body for the transport model")?;
    let isolation = || {
        isolation::bench_isolation(
            &args,
            governance_path,
            varying_body,
            &transport_work.json_body(),
            &scripts,
        )
    };
    if sections_only {
        if args.transports_only {
            transports::bench_transports(&args, &transport_work, &scripts)?;
        }
        if args.governance_only {
            governance::bench_governance(&args, &config, &transport_work.model, governance_path, governance_body)?;
        }
        if args.isolation_only {
            isolation()?;
        }
        if args.security_only {
            security::bench_security(&args, governance_path, &transport_work.json_body(), &scripts)?;
        }
        if args.observability_only {
            observability::bench_observability(&args, governance_path, &transport_work.json_body(), &scripts)?;
        }
        let _ = std::fs::remove_dir_all(&scripts);
        return Ok(());
    }
    if !args.cache_only {
        transports::bench_transports(&args, &transport_work, &scripts)?;
        governance::bench_governance(&args, &config, &transport_work.model, governance_path, governance_body)?;
        isolation()?;
        security::bench_security(&args, governance_path, &transport_work.json_body(), &scripts)?;
        observability::bench_observability(&args, governance_path, &transport_work.json_body(), &scripts)?;
    }

    // 2. Cache hits (L1), against the HTTP floor of the same server: interleaved rounds, each
    // target run between two floor runs; medians are printed.
    {
        let port = free_port();
        let server = start_server(&args.binary, port, &[])?;
        let pid = server.child.id();
        let base = format!("http://127.0.0.1:{port}");
        println!("\n# cache hits (L1) vs the HTTP floor of the same server (target >= 0.90)");
        println!(
            "# medians of {} rounds, each target run between two floor runs and compared with their \
             mean; cpu = microseconds of CPU per request, server / wrk",
            args.rounds
        );
        println!(
            "{:<26} {:>4} {:>10} {:>9} {:>9} {:>12} {:>11} {:>8}",
            "target", "conc", "req/s", "p50 ms", "p99 ms", "served/floor", "server cpu", "wrk cpu"
        );
        // The same floor carrying the request body: what reading a body costs in the HTTP stack.
        let with_body = scripts.join("floor-with-body.lua");
        let body = &bodies.first().context("no models")?.3;
        let constant = std::fs::read_to_string(body)?.replace("wrk.method = \"POST\"", "wrk.method = \"GET\"");
        std::fs::write(&with_body, constant)?;
        let live = format!("{base}/v2/health/live");
        let mut targets: Vec<(String, String, Option<&Path>)> = vec![
            ("GET /v2/health/live".into(), live.clone(), None),
            ("  same, with the body".into(), live.clone(), Some(with_body.as_path())),
        ];
        for (name, version, path, constant, _, _) in &bodies {
            targets.push((
                format!("{name} {version} hit"),
                format!("{base}{path}"),
                Some(constant.as_path()),
            ));
        }
        for &c in &args.concurrency {
            // Each round runs the floor between every two targets (F T1 F T2 … Tn F), and each
            // target's ratio is to the mean of the floor runs just before and just after it:
            // drift on this shared machine over a round then hits both sides alike.
            let mut runs: Vec<Vec<Measured>> = targets.iter().map(|_| Vec::new()).collect();
            let mut ratios: Vec<Vec<f64>> = targets.iter().map(|_| Vec::new()).collect();
            let (floor_url, floor_script) = (&targets[0].1, targets[0].2);
            for _ in 0..args.rounds.max(1) {
                let mut before = wrk_measured(pid, floor_url, c, args.http_seconds, floor_script)?;
                ratios[0].push(1.0);
                for (i, (_, url, script)) in targets.iter().enumerate().skip(1) {
                    let m = wrk_measured(pid, url, c, args.http_seconds, *script)?;
                    let after = wrk_measured(pid, floor_url, c, args.http_seconds, floor_script)?;
                    let floor = (before.wrk.requests_per_s + after.wrk.requests_per_s) / 2.0;
                    ratios[i].push(m.wrk.requests_per_s / floor);
                    runs[i].push(m);
                    runs[0].push(std::mem::replace(&mut before, after));
                }
                runs[0].push(before);
            }
            for (i, (label, _, _)) in targets.iter().enumerate() {
                let m = &runs[i];
                let of = |f: fn(&Measured) -> f64| median(m.iter().map(f).collect());
                let ratio = median(ratios[i].clone());
                println!(
                    "{:<26} {:>4} {:>10.0} {:>9.3} {:>9.3} {:>12.3} {:>11.1} {:>8.1}",
                    label,
                    c,
                    of(|r| r.wrk.requests_per_s),
                    of(|r| r.wrk.p50_ms),
                    of(|r| r.wrk.p99_ms),
                    ratio,
                    of(|r| r.server_us),
                    of(|r| r.wrk_us)
                );
            }
        }
    }

    // 3. Cache hits from Redis (L1 holding nothing) vs L1 hits, concurrency 32.
    {
        let redis = invariant_blackbox::RedisServer::start();
        let url = redis.url();
        let (p1, p2) = (free_port(), free_port());
        let _l1 = start_server(&args.binary, p1, &[])?;
        let _l2 = start_server(
            &args.binary,
            p2,
            &[
                ("INVARIANT_CACHE__REDIS_URL", url.clone()),
                ("INVARIANT_CACHE__L1_MAX_BYTES", "0".into()),
            ],
        )?;
        println!("\n# cache-hit path: L1 only vs Redis L2 (L1 holding nothing), concurrency 32");
        println!(
            "{:<26} {:>10} {:>9} {:>9} {:>10}",
            "target", "req/s", "p50 ms", "p99 ms", "l2/l1"
        );
        for (name, version, path, constant, _, _) in &bodies {
            let l1 = wrk(
                &format!("http://127.0.0.1:{p1}{path}"),
                32,
                args.http_seconds,
                Some(constant),
            )?;
            let l2 = wrk(
                &format!("http://127.0.0.1:{p2}{path}"),
                32,
                args.http_seconds,
                Some(constant),
            )?;
            println!(
                "{:<26} {:>10.0} {:>9.3} {:>9.3} {:>10}",
                format!("{name} {version} L1"),
                l1.requests_per_s,
                l1.p50_ms,
                l1.p99_ms,
                "-"
            );
            println!(
                "{:<26} {:>10.0} {:>9.3} {:>9.3} {:>10.3}",
                format!("{name} {version} L2"),
                l2.requests_per_s,
                l2.p50_ms,
                l2.p99_ms,
                l2.requests_per_s / l1.requests_per_s
            );
        }
        drop(redis);
    }

    // 4. Uncached throughput at concurrency 32 with and without dynamic batching.
    if !args.cache_only {
        let (p_off, p_on) = (free_port(), free_port());
        let off = vec![
            ("INVARIANT_CACHE__ENABLED", "false".to_string()),
            ("INVARIANT_POOLS__BATCHING", "false".into()),
        ];
        let on = vec![
            ("INVARIANT_CACHE__ENABLED", "false".to_string()),
            ("INVARIANT_POOLS__BATCHING", "true".into()),
        ];
        let _off = start_server(&args.binary, p_off, &off)?;
        let _on = start_server(&args.binary, p_on, &on)?;
        println!("\n# uncached, concurrency 32: dynamic batching off vs on (max_queue_delay_us 0)");
        println!(
            "{:<22} {:>12} {:>10} {:>12} {:>10} {:>9}",
            "model", "off req/s", "off p99", "on req/s", "on p99", "speed-up"
        );
        for (name, version, path, _, varying, _) in &bodies {
            let a = wrk(
                &format!("http://127.0.0.1:{p_off}{path}"),
                32,
                args.http_seconds,
                Some(varying),
            )?;
            let b = wrk(
                &format!("http://127.0.0.1:{p_on}{path}"),
                32,
                args.http_seconds,
                Some(varying),
            )?;
            println!(
                "{:<22} {:>12.0} {:>10.3} {:>12.0} {:>10.3} {:>9.2}",
                format!("{name} {version}"),
                a.requests_per_s,
                a.p99_ms,
                b.requests_per_s,
                b.p99_ms,
                b.requests_per_s / a.requests_per_s
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scripts);
    if args.cache_only {
        return Ok(());
    }
    bench_features(&args)
}
