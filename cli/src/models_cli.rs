//! `invariant models ...`: the model registry CLI. Every command works on the repository
//! directly, or, with `--server URL`, against a running server's admin API.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use invariant_registry::lifecycle::Action;
use serde_json::{json, Value};
use std::path::PathBuf;

use crate::ConfigArgs;

/// Registry subcommands.
#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Every version with its lifecycle (STAGED, CANARY, ACTIVE, DEPRECATED, FAILED).
    List(Common),
    /// One model: versions, active version, corridor overrides, canary.
    Show(ModelArgs),
    /// The transitions of one model: who, what, when, why.
    History(ModelArgs),
    /// Load and verify every version exactly as the server does; exit 1 if any fails.
    Verify(Common),
    /// Copy an artifact into the repository as a new STAGED version: hashes, manifest, golden vectors.
    ///
    /// A new ONNX graph runs on the portable engine (the same bits on every CPU) when every
    /// operator is in the portable set, else on ONNX Runtime; the manifest's description says
    /// which and why. Graphs with random operators are refused.
    #[command(disable_version_flag = true)]
    Import(ImportArgs),
    /// Take a version out of traffic (STAGED).
    Stage(TransitionArgs),
    /// Send a deterministic share of traffic to a version.
    Canary(CanaryArgs),
    /// Make a version ACTIVE, globally or in the given corridors.
    Promote(TransitionArgs),
    /// Cancel a canary, drop corridor overrides, or return to the previously active version.
    Rollback(TransitionArgs),
    /// Retire a version (it answers only requests that name it).
    Deprecate(TransitionArgs),
    /// Take a loaded version out of memory on a running server (needs --server).
    Unload(TransitionArgs),
    /// Print the sha256 and blake3 of files, as [[artifacts]] entries for a manifest.
    Hash {
        /// Files to hash.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Options every registry command takes.
#[derive(Args)]
pub struct Common {
    #[command(flatten)]
    config: ConfigArgs,
    /// Golden vector directory (overrides golden_vectors).
    #[arg(long)]
    golden_vectors: Option<PathBuf>,
    /// Work against this running server's admin API instead of the repository files (the API
    /// key is read from INVARIANT_API_KEY). `models list` takes it several times, one per
    /// replica, and shows the control-state revisions each one applies.
    #[arg(long = "server", value_name = "URL")]
    servers: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// A model name.
#[derive(Args)]
pub struct ModelArgs {
    #[command(flatten)]
    common: Common,
    /// Model name.
    model: String,
}

/// A transition on one version.
#[derive(Args)]
pub struct TransitionArgs {
    #[command(flatten)]
    common: Common,
    /// Model name, or `pipelines/<name>` for an advisory pipeline.
    model: String,
    /// Version.
    #[arg(value_name = "VERSION")]
    model_version: String,
    /// Limit the action to these corridors (repeatable).
    #[arg(long = "corridor", value_name = "CORRIDOR")]
    corridors: Vec<String>,
    /// Why (recorded in the history and the audit log).
    #[arg(long, default_value = "")]
    reason: String,
    /// Who, for a change on the repository files (default: $USER); through --server, the API
    /// key's id is the actor.
    #[arg(long)]
    actor: Option<String>,
}

/// A canary.
#[derive(Args)]
pub struct CanaryArgs {
    #[command(flatten)]
    transition: TransitionArgs,
    /// Share of requests, in percent (0 < p ≤ 100).
    #[arg(long)]
    percent: f64,
}

/// An import.
#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    common: Common,
    /// The artifact (.onnx; .safetensors with --like).
    artifact: PathBuf,
    /// Model name.
    #[arg(long)]
    name: String,
    /// New semantic version.
    #[arg(long = "version", value_name = "VERSION")]
    model_version: String,
    /// Copy signature and settings from this existing version's manifest.
    #[arg(long, value_name = "VERSION")]
    like: Option<String>,
    /// Description for the manifest.
    #[arg(long)]
    description: Option<String>,
    /// Do not record golden vectors (the version cannot serve until they exist).
    #[arg(long)]
    no_golden: bool,
}

impl Common {
    /// The one server this command acts on, if any.
    fn server(&self) -> Result<Option<&String>> {
        match self.servers.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            more => bail!(
                "--server is given {} times; only `models list` compares several servers",
                more.len()
            ),
        }
    }

    fn config(&self) -> Result<invariant_serving::config::Config> {
        let mut config = self.config.load()?;
        if let Some(dir) = &self.golden_vectors {
            config.golden_vectors = dir.clone();
        }
        Ok(config)
    }
}

/// Calls the admin API of a running server.
pub(crate) fn call(server: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
    let (status, value) = call_any(server, method, path, body)?;
    if !(200..300).contains(&status) {
        bail!("{status}: {}", value["error"].as_str().unwrap_or("request failed"));
    }
    Ok(value)
}

/// [`call`] that returns the status and body of any answer.
pub(crate) fn call_any(server: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut req = reqwest::Client::new().request(method, &url);
        if let Some(key) = std::env::var("INVARIANT_API_KEY").ok().filter(|k| !k.is_empty()) {
            req = req.bearer_auth(key.trim());
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let response = req.send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let text = response.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "error": text }));
        Ok((status.as_u16(), value))
    })
}

/// The registry view of every model (or one), from the server or the repository.
fn views(common: &Common, model: Option<&str>) -> Result<Vec<Value>> {
    if let Some(server) = common.server()? {
        return match model {
            Some(m) => Ok(vec![call(
                server,
                reqwest::Method::GET,
                &format!("/admin/v1/models/{m}"),
                None,
            )?]),
            None => {
                let all = call(server, reqwest::Method::GET, "/admin/v1/models", None)?;
                Ok(all["models"].as_array().cloned().unwrap_or_default())
            }
        };
    }
    let state = invariant_serving::InferenceService::build_for_tools(common.config()?)?;
    let snapshot = state.snapshot();
    let names: Vec<String> = match model {
        Some(m) => vec![m.to_string()],
        None => snapshot.table.names().map(str::to_string).collect(),
    };
    names
        .iter()
        .map(|m| invariant_serving::control::model_view(&snapshot, m).with_context(|| format!("unknown model '{m}'")))
        .collect()
}

/// `models list --server A [--server B …]`: the first server's models, then what each server
/// applies of the control state, with a warning when they disagree.
fn list_replicas(common: &Common) -> Result<()> {
    let mut replicas = Vec::new();
    let mut models = None;
    for server in &common.servers {
        let all = call(server, reqwest::Method::GET, "/admin/v1/models", None)?;
        replicas.push(json!({"server": server, "control": all["control"]}));
        models.get_or_insert_with(|| all["models"].as_array().cloned().unwrap_or_default());
    }
    let models = models.unwrap_or_default();
    let revisions: std::collections::BTreeSet<String> =
        replicas.iter().map(|r| r["control"]["revisions"].to_string()).collect();
    if common.json {
        let out = json!({"replicas": replicas, "agree": revisions.len() == 1, "models": models});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_versions(&models);
    println!();
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|r| {
            let c = &r["control"];
            vec![
                text(&r["server"]),
                text(&c["backend"]),
                text(&c["revisions"]["registry"]),
                text(&c["revisions"]["governance"]),
                text(&c["revisions"]["keys"]),
                c["last_check_ms_ago"]
                    .as_u64()
                    .map_or("-".into(), |ms| format!("{ms} ms ago")),
                c["error"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SERVER",
            "CONTROL",
            "REGISTRY",
            "GOVERNANCE",
            "KEYS",
            "CHECKED",
            "ERROR",
        ],
        &rows,
    );
    if revisions.len() > 1 {
        eprintln!("warning: the servers apply different control-state revisions (converging, or cut off from it)");
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn print_versions(views: &[Value]) {
    let mut rows = Vec::new();
    for m in views {
        for v in m["versions"].as_array().into_iter().flatten() {
            rows.push(vec![
                text(&m["name"]),
                text(&v["version"]),
                text(&v["platform"]),
                text(&v["lifecycle"]),
                v["error"].as_str().unwrap_or("").chars().take(100).collect(),
            ]);
        }
    }
    table(&["MODEL", "VERSION", "PLATFORM", "LIFECYCLE", "ERROR"], &rows);
}

/// Runs a registry command.
pub fn run(command: ModelsCommand) -> Result<()> {
    match command {
        ModelsCommand::List(common) if common.servers.is_empty() => {
            let views = views(&common, None)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print_versions(&views);
            }
        }
        ModelsCommand::List(common) => list_replicas(&common)?,
        ModelsCommand::Show(args) => {
            let views = views(&args.common, Some(&args.model))?;
            if args.common.json {
                println!("{}", serde_json::to_string_pretty(&views[0])?);
            } else {
                let m = &views[0];
                print_versions(&views);
                println!("\nactive: {}", text(&m["active"]));
                if let Some(overrides) = m["corridor_active"].as_object().filter(|o| !o.is_empty()) {
                    for (c, v) in overrides {
                        println!("active in {c}: {}", text(v));
                    }
                }
                match m["canary"].as_object() {
                    Some(c) => println!(
                        "canary: {} at {}% in {}",
                        text(&c["version"]),
                        c["percent"].as_f64().unwrap_or_default(),
                        c["corridors"]
                            .as_array()
                            .filter(|a| !a.is_empty())
                            .map_or("every corridor".into(), |a| {
                                a.iter().map(text).collect::<Vec<_>>().join(", ")
                            })
                    ),
                    None => println!("canary: none"),
                }
            }
        }
        ModelsCommand::History(args) => {
            let views = views(&args.common, Some(&args.model))?;
            let history = views[0]["history"].as_array().cloned().unwrap_or_default();
            if args.common.json {
                println!("{}", serde_json::to_string_pretty(&history)?);
            } else {
                let rows: Vec<Vec<String>> = history
                    .iter()
                    .map(|t| {
                        vec![
                            text(&t["revision"]),
                            text(&t["time"]),
                            text(&t["actor"]),
                            text(&t["action"]),
                            text(&t["version"]),
                            format!("{} -> {}", text(&t["from"]), text(&t["to"])),
                            t["percent"].as_f64().map(|p| format!("{p}%")).unwrap_or_default(),
                            t["corridors"]
                                .as_array()
                                .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                                .unwrap_or_default(),
                            text(&t["reason"]),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "REV",
                        "TIME",
                        "ACTOR",
                        "ACTION",
                        "VERSION",
                        "STATE",
                        "PERCENT",
                        "CORRIDORS",
                        "REASON",
                    ],
                    &rows,
                );
            }
        }
        ModelsCommand::Verify(common) => verify(&common.config()?, common.json)?,
        ModelsCommand::Import(args) => import(args)?,
        ModelsCommand::Stage(t) => transition(t, Action::Stage, "stage", None)?,
        ModelsCommand::Promote(t) => {
            let corridors = t.corridors.clone();
            transition(t, Action::Promote { corridors }, "promote", None)?
        }
        ModelsCommand::Rollback(t) => {
            let corridors = t.corridors.clone();
            transition(t, Action::Rollback { corridors }, "rollback", None)?
        }
        ModelsCommand::Deprecate(t) => transition(t, Action::Deprecate, "deprecate", None)?,
        ModelsCommand::Canary(c) => {
            let corridors = c.transition.corridors.clone();
            let percent = c.percent;
            transition(
                c.transition,
                Action::Canary { percent, corridors },
                "canary",
                Some(percent),
            )?
        }
        ModelsCommand::Unload(t) => {
            let Some(server) = t.common.server()? else {
                bail!("unload acts on a running server's memory: pass --server URL");
            };
            let path = format!("/admin/v1/models/{}/versions/{}/unload", t.model, t.model_version);
            let body = json!({ "reason": t.reason });
            let reply = call(server, reqwest::Method::POST, &path, Some(body))?;
            println!("unloaded {} {}", t.model, text(&reply["unloaded"]));
        }
        ModelsCommand::Hash { files } => {
            for file in files {
                let h = invariant_registry::hash_file(&file, |_| {})?;
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                println!(
                    "[[artifacts]]\npath = \"{name}\"\nsha256 = \"{}\"\nblake3 = \"{}\"\n",
                    h.sha256, h.blake3
                );
            }
        }
    }
    Ok(())
}

/// Loads and verifies every version as the server does; fails if any version fails.
fn verify(config: &invariant_serving::config::Config, as_json: bool) -> Result<()> {
    use invariant_serving::models::VersionState;
    let state = invariant_serving::InferenceService::build_for_tools(config.clone())?;
    let snapshot = state.snapshot();
    let rows: Vec<Value> = snapshot
        .table
        .entries()
        .map(|(name, e)| match &e.state {
            VersionState::Ready(s) => json!({ "model": name, "version": e.version,
                "platform": s.model.manifest().format.platform(), "state": "READY", "error": null }),
            VersionState::Failed { reason } => {
                json!({ "model": name, "version": e.version, "platform": null, "state": "FAILED", "error": reason })
            }
        })
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let state = match r["error"].as_str() {
                    Some(e) => format!("FAILED: {e}"),
                    None => "READY".into(),
                };
                vec![text(&r["model"]), text(&r["version"]), text(&r["platform"]), state]
            })
            .collect();
        table(&["MODEL", "VERSION", "PLATFORM", "STATE"], &cells);
    }
    let failures = rows.iter().filter(|r| r["state"] == "FAILED").count();
    if failures > 0 {
        bail!("{failures} model version(s) failed verification");
    }
    Ok(())
}

fn actor(t: &TransitionArgs) -> String {
    t.actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into())
}

fn transition(t: TransitionArgs, action: Action, name: &str, percent: Option<f64>) -> Result<()> {
    let result = match t.common.server()? {
        Some(server) => {
            let body = json!({ "reason": t.reason, "corridors": t.corridors, "percent": percent });
            let path = match t.model.strip_prefix(invariant_serving::advisory::SUBJECT_PREFIX) {
                Some(pipeline) => format!("/admin/v1/pipelines/{pipeline}/versions/{}/{name}", t.model_version),
                None => format!("/admin/v1/models/{}/versions/{}/{name}", t.model, t.model_version),
            };
            call(server, reqwest::Method::POST, &path, Some(body))?["transition"].clone()
        }
        None => {
            let state = invariant_serving::InferenceService::build_for_tools(t.common.config()?)?;
            let transition = state.transition(&t.model, &t.model_version, &action, &actor(&t), &t.reason)?;
            serde_json::to_value(transition)?
        }
    };
    if t.common.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "{} {} {}: {} -> {} (revision {})",
            name,
            t.model,
            t.model_version,
            text(&result["from"]),
            text(&result["to"]),
            text(&result["revision"])
        );
    }
    Ok(())
}

fn import(args: ImportArgs) -> Result<()> {
    let config = args.common.config()?;
    let request = crate::import::ImportRequest {
        artifact: args.artifact.clone(),
        name: args.name.clone(),
        version: args.model_version.clone(),
        like: args.like.clone(),
        description: args.description.clone(),
        record_golden: !args.no_golden,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("copying and hashing");
    let outcome = crate::import::import(&config, &request, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    if let Some(server) = args.common.server()? {
        call(
            server,
            reqwest::Method::POST,
            &format!("/admin/v1/models/{}/load", args.name),
            None,
        )?;
    }
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!(
            "imported {} {} into {} ({} bytes, sha256 {}, blake3 {}), {} golden vectors; lifecycle STAGED",
            args.name,
            args.model_version,
            outcome.dir.display(),
            outcome.bytes,
            outcome.sha256,
            outcome.blake3,
            outcome.golden_vectors
        );
        println!(
            "next: invariant models canary {} {} --percent 5",
            args.name, args.model_version
        );
    }
    Ok(())
}
