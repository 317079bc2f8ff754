//! The CI determinism gate (`invariant gate`) and golden-vector recording
//! (`invariant golden record`).
//!
//! For every selected version the gate checks: artifact hashes; every golden vector bit for
//! bit; three identical runs; batch invariance (each vector alone and inside batches of 2, 7,
//! 32 and the maximum, at several positions); thread invariance (engine thread counts 1 and
//! the machine's cores); and, with a server URL, that the running server returns the same bits
//! over HTTP as the in-process engine.

use invariant_core::json::parse_data_with_shape;
use invariant_core::tensor::concrete_shape;
use invariant_core::{DataType, Tensor};
use invariant_engine::{EngineOptions, Model};
use invariant_gpu::DeviceLayer;
use invariant_registry::RegistryError;
use invariant_serving::config::Config;
use invariant_verify::checks::{thread_invariance, Check, Collector};
use invariant_verify::{locate, record, verify_deploy, GoldenFile, GoldenOutput, Violation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::path::PathBuf;
use std::time::Instant;
use thiserror::Error;

/// Why the gate or a recording could not run at all (violations are not errors).
#[derive(Debug, Error)]
pub enum GateError {
    /// The repository cannot be read.
    #[error(transparent)]
    Repository(#[from] RegistryError),
    /// A selected model or version is not in the repository.
    #[error("{0}")]
    NotFound(String),
    /// Recording failed.
    #[error(transparent)]
    Verify(#[from] invariant_verify::VerifyError),
    /// The version cannot be loaded.
    #[error("{0}")]
    Load(String),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct GateOptions {
    /// `model` or `model:version` selectors; empty means every version.
    pub selectors: Vec<String>,
    /// Base URL of a running server to compare with (`--server`).
    pub server: Option<String>,
}

/// The result of one check on one version.
#[derive(Debug, Clone, Serialize)]
pub struct CheckStatus {
    /// The check.
    pub check: Check,
    /// Passed, failed, or skipped (with why).
    pub status: &'static str,
    /// Why it was skipped, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The gate's findings for one version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionReport {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: String,
    /// True when no check found a violation.
    pub passed: bool,
    /// Golden vectors checked.
    pub vectors: usize,
    /// Each check's status.
    pub checks: Vec<CheckStatus>,
    /// Every violation.
    pub violations: Vec<Violation>,
    /// Wall time of this version's checks.
    pub seconds: f64,
    /// The engine that runs the version (`onnxruntime`, `invariant-portable`, …), when it
    /// loaded.
    pub engine: Option<String>,
    /// Whether the engine's bits are the same on every CPU.
    pub portable: Option<bool>,
    /// CPU classes with golden vectors for this version.
    pub golden_classes: Vec<String>,
    /// Why the version cannot be verified (and is refused) on this host's CPU class: a
    /// non-portable version without golden vectors for it. Such a version does not fail the
    /// gate; it is not served here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The gate's report.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    /// True when every version passed.
    pub passed: bool,
    /// Versions checked.
    pub versions: Vec<VersionReport>,
    /// Advisory pipeline versions checked (all of them when no selection is given).
    pub pipelines: Vec<crate::pipeline_gate::PipelineReport>,
    /// Engine thread counts compared.
    pub thread_counts: Vec<usize>,
    /// This host's CPU class.
    pub cpu_class: String,
    /// Total wall time.
    pub seconds: f64,
}

impl GateReport {
    /// Per version: engine, portability, the CPU classes with golden vectors, and the result
    /// on this host's class.
    pub fn render_portability(&self) -> String {
        let mut out = format!(
            "invariant gate --portability: this host is {} — {}\n",
            self.cpu_class,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        out.push_str(&format!(
            "  {:<16} {:<9} {:<19} {:<9} {:<32} {}\n",
            "model", "version", "engine", "portable", "verified on (golden classes)", "here"
        ));
        for v in &self.versions {
            let classes = if v.portable == Some(true) {
                format!("every class (recorded on {})", v.golden_classes.join(", "))
            } else {
                v.golden_classes.join(", ")
            };
            let here = if v.refused.is_some() {
                "REFUSED (no golden vectors for this class)"
            } else if v.passed {
                "PASS"
            } else {
                "FAIL"
            };
            out.push_str(&format!(
                "  {:<16} {:<9} {:<19} {:<9} {:<32} {}\n",
                v.model,
                v.version,
                v.engine.as_deref().unwrap_or("-"),
                v.portable.map_or("-", |p| if p { "yes" } else { "no" }),
                classes,
                here
            ));
        }
        out
    }

    /// A human-readable report.
    pub fn render(&self) -> String {
        let violations: usize = self.versions.iter().map(|v| v.violations.len()).sum::<usize>()
            + self.pipelines.iter().map(|p| p.violations.len()).sum::<usize>();
        let mut out = format!(
            "invariant gate: {} version(s), {} pipeline(s), {} violation(s), engine threads {:?}, {:.1} s — {}\n",
            self.versions.len(),
            self.pipelines.len(),
            violations,
            self.thread_counts,
            self.seconds,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        for v in &self.versions {
            let checks: Vec<String> = v
                .checks
                .iter()
                .map(|c| match c.status {
                    "passed" => c.check.to_string(),
                    other => format!("{}:{other}", c.check),
                })
                .collect();
            if let Some(why) = &v.refused {
                out.push_str(&format!("  REFUSED {} {}: {why}\n", v.model, v.version));
                continue;
            }
            out.push_str(&format!(
                "  {} {} {} ({} vectors, {:.2} s): {}\n",
                if v.passed { "PASS" } else { "FAIL" },
                v.model,
                v.version,
                v.vectors,
                v.seconds,
                checks.join(" ")
            ));
            for violation in &v.violations {
                out.push_str(&format!("    {violation}\n"));
            }
        }
        for p in &self.pipelines {
            out.push_str(&format!(
                "  {} pipeline {} {} ({} cases): scores and advisories\n",
                if p.passed { "PASS" } else { "FAIL" },
                p.pipeline,
                p.version,
                p.cases
            ));
            for violation in &p.violations {
                out.push_str(&format!("    {violation}\n"));
            }
        }
        out
    }
}

fn selected(selectors: &[String], model: &str, version: &str) -> bool {
    selectors.is_empty()
        || selectors.iter().any(|s| match s.split_once(':') {
            Some((m, v)) => m == model && v == version,
            None => s == model,
        })
}

/// The engine thread counts compared: 1 and the machine's cores.
pub fn thread_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut counts = vec![1, cores];
    counts.dedup();
    counts
}

/// Runs the gate over the configured repository.
pub fn run_gate(config: &Config, options: &GateOptions) -> Result<GateReport, GateError> {
    let started = Instant::now();
    let onnx_unavailable = invariant_serving::init_onnx(config);
    let devices = DeviceLayer::discover();
    let scanned = invariant_registry::scan_with_limits(&config.model_repository, &config.limits.repository)?;
    for s in &options.selectors {
        let (m, v) = s.split_once(':').map_or((s.as_str(), None), |(m, v)| (m, Some(v)));
        if !scanned.iter().any(|x| x.model == m && v.is_none_or(|v| x.version == v)) {
            return Err(GateError::NotFound(format!(
                "'{s}' is not in the repository {}",
                config.model_repository.display()
            )));
        }
    }
    let threads = thread_counts();
    let mut versions = Vec::new();
    for s in scanned
        .into_iter()
        .filter(|s| selected(&options.selectors, &s.model, &s.version))
    {
        let t0 = Instant::now();
        let mut c = Collector::new(&s.model, &s.version);
        let (mut engine, mut portable, mut refused) = (None, None, None);
        let golden_classes = GoldenFile::recorded_classes(&config.golden_vectors, &s.model, &s.version);
        let mut checks = Vec::new();
        let mut vectors = 0;
        let status = |checks: &mut Vec<CheckStatus>, check, ok: bool| {
            checks.push(CheckStatus {
                check,
                status: if ok { "passed" } else { "failed" },
                note: None,
            })
        };
        match s.result {
            Err(e) => {
                let check = match e {
                    RegistryError::HashMismatch { .. } | RegistryError::MissingArtifact { .. } => Check::Hashes,
                    _ => Check::Load,
                };
                c.fail(check, None, e.to_string());
                status(&mut checks, check, false);
            }
            Ok(v) => {
                status(&mut checks, Check::Hashes, true);
                let loaded = match (&onnx_unavailable, v.manifest.uses_onnxruntime()) {
                    (Some(why), true) => Err(why.clone()),
                    _ => Model::load(
                        &v,
                        &devices,
                        &EngineOptions {
                            instances: 1,
                            threads: None,
                        },
                    )
                    .map_err(|e| e.to_string()),
                };
                let loaded = loaded.and_then(|m| {
                    engine = Some(m.runtime().name.to_string());
                    portable = Some(m.portability().portable);
                    match locate(&config.golden_vectors, &s.model, &s.version, &m.portability()) {
                        Err(e @ invariant_verify::VerifyError::UnrecordedClass { .. }) => {
                            refused = Some(e.to_string());
                            Err(String::new())
                        }
                        Err(e) => Err(e.to_string()),
                        Ok(path) => GoldenFile::read_with_limits(&path, &config.limits.golden)
                            .map(|(g, _)| (m, g))
                            .map_err(|e| e.to_string()),
                    }
                });
                match loaded {
                    Err(_) if refused.is_some() => {}
                    Err(e) => {
                        c.fail(Check::Load, None, e);
                        status(&mut checks, Check::Load, false);
                    }
                    Ok((model, golden)) => {
                        vectors = golden.vectors.len();
                        let reference = match verify_deploy(&model, &golden) {
                            Err(e) => {
                                c.fail(Check::Load, None, e.to_string());
                                None
                            }
                            Ok(report) => {
                                let golden_ok = !report.violations.iter().any(|x| x.check == Check::Golden);
                                let repeat_ok = !report.violations.iter().any(|x| x.check == Check::Repeat);
                                status(&mut checks, Check::Golden, golden_ok);
                                status(&mut checks, Check::Repeat, repeat_ok);
                                status(&mut checks, Check::BatchInvariance, report.batch_invariant());
                                c.violations.extend(report.violations);
                                c.violations.extend(report.batch_violations);
                                Some(report.alone)
                            }
                        };
                        if let Some(reference) = reference {
                            let engines: Vec<(usize, Model)> = threads
                                .iter()
                                .filter_map(|&t| {
                                    Model::load(
                                        &v,
                                        &devices,
                                        &EngineOptions {
                                            instances: 1,
                                            threads: Some(t),
                                        },
                                    )
                                    .ok()
                                    .map(|m| (t, m))
                                })
                                .collect();
                            let refs: Vec<(usize, &Model)> = engines.iter().map(|(t, m)| (*t, m)).collect();
                            let n = c.violations.len();
                            if let Err(e) = thread_invariance(&refs, &golden, &reference, &mut c) {
                                c.fail(Check::ThreadInvariance, None, e.to_string());
                            }
                            let ok = c.violations.len() == n && engines.len() == threads.len();
                            status(&mut checks, Check::ThreadInvariance, ok);
                        }
                        if let Some(url) = &options.server {
                            let n = c.violations.len();
                            server_check(url, &model, &golden, &mut c);
                            status(&mut checks, Check::Server, c.violations.len() == n);
                        }
                    }
                }
            }
        }
        let violations = c.finish();
        versions.push(VersionReport {
            passed: violations.is_empty(),
            model: s.model,
            version: s.version,
            vectors,
            checks,
            violations,
            seconds: t0.elapsed().as_secs_f64(),
            engine,
            portable,
            golden_classes,
            refused,
        });
    }
    let pipelines = if options.selectors.is_empty() {
        crate::pipeline_gate::check_pipelines(config)
    } else {
        Vec::new()
    };
    Ok(GateReport {
        passed: versions.iter().all(|v| v.passed) && pipelines.iter().all(|p| p.passed),
        versions,
        pipelines,
        thread_counts: threads,
        cpu_class: invariant_verify::cpu_class(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[derive(Deserialize)]
struct ReplyOutput {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
struct Reply {
    model_version: String,
    outputs: Vec<ReplyOutput>,
}

fn decode_reply(text: &str) -> Result<(String, Vec<Tensor>), String> {
    let reply: Reply = serde_json::from_str(text).map_err(|e| format!("unreadable reply ({e}): {text}"))?;
    let mut outputs = Vec::new();
    for (i, o) in reply.outputs.iter().enumerate() {
        let field = format!("outputs[{i}]");
        let datatype = DataType::parse(&o.datatype, &field).map_err(|e| e.to_string())?;
        let shape = concrete_shape(&o.shape, &field).map_err(|e| e.to_string())?;
        let data = parse_data_with_shape(o.data.get(), datatype, &shape, &format!("{field}.data"))
            .map_err(|e| e.to_string())?;
        outputs.push(Tensor::new(o.name.clone(), shape, data, &field).map_err(|e| e.to_string())?);
    }
    Ok((reply.model_version, outputs))
}

/// Sends every golden vector to the running server and compares the bits it returns with the
/// in-process engine's.
fn server_check(url: &str, model: &Model, golden: &GoldenFile, c: &mut Collector) {
    let manifest = model.manifest();
    let version = manifest.version.to_string();
    let endpoint = format!(
        "{}/v2/models/{}/versions/{version}/infer",
        url.trim_end_matches('/'),
        manifest.name
    );
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return c.fail(Check::Server, None, format!("cannot start an HTTP client: {e}")),
    };
    let client = reqwest::Client::new();
    let key = std::env::var("INVARIANT_API_KEY").ok().filter(|k| !k.trim().is_empty());
    for v in &golden.vectors {
        let inputs: Vec<serde_json::Value> = v
            .inputs
            .iter()
            .map(|t| serde_json::json!({ "name": t.name, "datatype": t.datatype(), "shape": t.shape, "data": t.data }))
            .collect();
        let body = serde_json::json!({ "id": v.id, "inputs": inputs }).to_string();
        // A rate-limited answer (429) is retried after its Retry-After, a few times: the gate
        // checks bits, not the corridor's limit.
        let sent = runtime.block_on(async {
            let mut attempt = 0;
            loop {
                let mut request = client
                    .post(&endpoint)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(k) = &key {
                    request = request.bearer_auth(k.trim());
                }
                let r = request.send().await?;
                let status = r.status();
                let wait = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1)
                    .min(5);
                if status == reqwest::StatusCode::TOO_MANY_REQUESTS && attempt < 5 {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                    continue;
                }
                return Ok::<_, reqwest::Error>((status, r.text().await?));
            }
        });
        let (status, text) = match sent {
            Ok(x) => x,
            Err(e) => return c.fail(Check::Server, Some(&v.id), format!("POST {endpoint}: {e}")),
        };
        if !status.is_success() {
            c.fail(Check::Server, Some(&v.id), format!("POST {endpoint}: {status}: {text}"));
            continue;
        }
        match decode_reply(&text) {
            Err(e) => c.fail(Check::Server, Some(&v.id), e),
            Ok((served_version, _)) if served_version != version => {
                c.fail(
                    Check::Server,
                    Some(&v.id),
                    format!("server answered with version {served_version}"),
                );
            }
            Ok((_, outputs)) => {
                let local = match model.infer(v.inputs.clone()) {
                    Ok(o) => o,
                    Err(e) => return c.fail(Check::Server, Some(&v.id), e.to_string()),
                };
                let expected: Vec<GoldenOutput> = local.iter().map(GoldenOutput::of).collect();
                c.compare(Check::Server, &v.id, &expected, &outputs, "over HTTP vs in-process");
            }
        }
    }
}

/// Records golden vectors for one version and writes them (refusing to overwrite without
/// `force`). With `cpu_class` (which must be this host's class, and only for a version that
/// is not portable) they go to the per-class file `<version>@<class>.jsonl`. Returns the
/// file written and the number of vectors.
pub fn record_golden(
    config: &Config,
    model: &str,
    version: &str,
    cpu_class: Option<&str>,
    force: bool,
) -> Result<(PathBuf, usize), GateError> {
    let dir = config.model_repository.join(model).join(version);
    if !dir.join(invariant_registry::MANIFEST_FILE).exists() {
        return Err(GateError::NotFound(format!(
            "{model} {version}: no manifest in {}",
            dir.display()
        )));
    }
    let host = invariant_verify::cpu_class();
    if let Some(class) = cpu_class {
        if class != host {
            return Err(GateError::Invalid(format!(
                "--cpu-class {class}: this host is {host}; record a class on a host of that class \
                 (or under `qemu-x86_64 -cpu MODEL`, see docs/determinism.md)"
            )));
        }
    }
    let path = match cpu_class {
        Some(class) => GoldenFile::class_path(&config.golden_vectors, model, version, class),
        None => GoldenFile::path(&config.golden_vectors, model, version),
    };
    if path.exists() && !force {
        return Err(invariant_verify::VerifyError::Exists(path).into());
    }
    let verified = invariant_registry::load_version(&dir)?;
    if verified.manifest.uses_onnxruntime() {
        if let Some(why) = invariant_serving::init_onnx(config) {
            return Err(GateError::Load(why));
        }
    }
    let loaded = Model::load(
        &verified,
        &DeviceLayer::discover(),
        &EngineOptions {
            instances: 1,
            threads: None,
        },
    )
    .map_err(|e| GateError::Load(e.to_string()))?;
    if cpu_class.is_some() && loaded.portability().portable {
        return Err(GateError::Invalid(format!(
            "{model} {version} is portable ({}): one golden file serves every CPU class; record it without --cpu-class",
            loaded.runtime().name
        )));
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let golden = record(&loaded, &now)?;
    golden.write(&path, force)?;
    Ok((path, golden.vectors.len()))
}
