//! `invariant audit verify|show|replay`: the audit trail read from its files (or, for `show`,
//! through a running server's API with `--server`).

use crate::ConfigArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use invariant_audit::read::{parse_since, Filter};
use serde_json::{json, Value};
use std::ops::ControlFlow;

/// `invariant audit …`
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every chain (or one) link by link: sequence numbers, the hash of each record in
    /// the next, segments without gaps. Names the first broken link; exits 1 if any.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only this chain (a corridor id, or `_server`).
        #[arg(long)]
        corridor: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a chain's records, oldest first.
    Show(ShowArgs),
    /// Re-run inference records whose inputs were retained (`[audit.models.<name>]
    /// retain_inputs = true`) on the recorded version, and confirm each output hash. Exits 1
    /// if any record does not replay to its hash.
    Replay(ReplayArgs),
}

/// Which records.
#[derive(Args)]
pub struct Selection {
    /// The chain: a corridor id, or `_server`.
    #[arg(long)]
    corridor: String,
    /// Records at or after this time: RFC 3339, or a duration back from now (`15m`, `2h`).
    #[arg(long)]
    since: Option<String>,
    /// Records of this model only.
    #[arg(long)]
    model: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

impl Selection {
    fn chain(&self) -> Result<String> {
        if self.corridor == invariant_audit::SERVER_CHAIN {
            return Ok(self.corridor.clone());
        }
        Ok(invariant_core::CorridorId::parse(&self.corridor)
            .with_context(|| format!("--corridor {}", self.corridor))?
            .to_string())
    }

    fn filter(&self, event: Option<String>) -> Result<Filter> {
        Ok(Filter {
            since: self
                .since
                .as_deref()
                .map(parse_since)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--since: {e}"))?,
            model: self.model.clone(),
            event,
        })
    }
}

/// `invariant audit show`
#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    selection: Selection,
    /// Records of this event only (`inference`, `transition`, `governance`, …).
    #[arg(long)]
    event: Option<String>,
    /// Read through this running server's API (the key from INVARIANT_API_KEY must be an
    /// admin key of the corridor) instead of the files.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// One JSON record per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// `invariant audit replay`
#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    selection: Selection,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs an audit command.
pub fn run(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Verify { config, corridor, json } => verify(&config, corridor, json),
        AuditCommand::Show(args) => show(args),
        AuditCommand::Replay(args) => replay(args),
    }
}

fn verify(config: &ConfigArgs, corridor: Option<String>, json: bool) -> Result<()> {
    let config = config.load()?;
    let settings = config.audit_settings();
    let dir = if settings.redis_url.is_empty() {
        config.audit_dir().display().to_string()
    } else {
        format!("Redis {}", invariant_core::secret::redact_url(&settings.redis_url))
    };
    let chains = match corridor {
        Some(c) => vec![Selection {
            corridor: c,
            since: None,
            model: None,
            limit: 0,
        }
        .chain()?],
        None => invariant_audit::list_chains(&settings)?,
    };
    let mut reports = Vec::new();
    for chain in &chains {
        reports.push(invariant_audit::verify_chain(&settings, chain)?);
    }
    let broken = reports.iter().filter(|r| !r.ok()).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "dir": dir, "chains": reports }))?
        );
    } else {
        if reports.is_empty() {
            println!("no audit chains in {dir}");
        }
        for r in &reports {
            match &r.broken {
                None => println!(
                    "{}: ok, {} records, head {} {}{}",
                    r.chain,
                    r.records,
                    r.head_seq,
                    r.head_hash,
                    if r.torn_tail {
                        " (ends in a torn, unacknowledged record)"
                    } else {
                        ""
                    }
                ),
                Some(b) => println!(
                    "{}: BROKEN at record {} ({} line {}): {}; {} records verified before it",
                    r.chain,
                    b.seq,
                    b.segment.display(),
                    b.line,
                    b.reason,
                    r.records
                ),
            }
        }
    }
    if broken > 0 {
        bail!("{broken} audit chain(s) broken");
    }
    Ok(())
}

fn records(config: &ConfigArgs, selection: &Selection, event: Option<String>) -> Result<Vec<Value>> {
    let config = config.load()?;
    let chain = selection.chain()?;
    let filter = selection.filter(event)?;
    let mut out = Vec::new();
    invariant_audit::read_chain(&config.audit_settings(), &chain, &filter, |r| {
        if out.len() >= selection.limit {
            return ControlFlow::Break(());
        }
        out.push(r);
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

fn show(args: ShowArgs) -> Result<()> {
    let list = match &args.server {
        Some(server) => {
            let s = &args.selection;
            let chain = s.chain()?;
            let mut query = vec![format!("limit={}", s.limit.clamp(1, 1000))];
            for (k, v) in [("since", &s.since), ("model", &s.model), ("event", &args.event)] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", urlencoding(v)));
                }
            }
            let path = if chain == invariant_audit::SERVER_CHAIN {
                format!("/admin/v1/audit?{}", query.join("&"))
            } else {
                format!("/v1/corridors/{chain}/audit?{}", query.join("&"))
            };
            let reply = crate::models_cli::call(server, reqwest::Method::GET, &path, None)?;
            reply["records"].as_array().cloned().unwrap_or_default()
        }
        None => records(&args.config, &args.selection, args.event.clone())?,
    };
    if args.json {
        for r in &list {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    println!(
        "{:<6} {:<24} {:<14} {:<22} {:<9} {:<6} {:<9} caller",
        "seq", "time", "event", "model", "version", "status", "source"
    );
    for r in &list {
        println!(
            "{:<6} {:<24} {:<14} {:<22} {:<9} {:<6} {:<9} {}",
            text(&r["seq"]),
            text(&r["time"]),
            text(&r["event"]),
            text(&r["model"]),
            text(&r["version"]),
            text(&r["status"]),
            text(&r["source"]),
            text(if r["caller"].is_null() {
                &r["actor"]
            } else {
                &r["caller"]
            }),
        );
    }
    Ok(())
}

/// Percent-encodes a query value.
fn urlencoding(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn replay(args: ReplayArgs) -> Result<()> {
    let chain = args.selection.chain()?;
    if chain == invariant_audit::SERVER_CHAIN {
        bail!("--corridor: replay needs a corridor's chain (inference records name their corridor)");
    }
    let list: Vec<Value> = records(&args.config, &args.selection, Some("inference".into()))?
        .into_iter()
        .filter(|r| r["inputs"].is_string() && r["output_hash"].is_string())
        .collect();
    let config = args.config.load()?;
    let service = invariant_serving::InferenceService::build_for_tools(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut results = Vec::new();
    for r in &list {
        let (model, version) = (r["model"].as_str().unwrap_or(""), r["version"].as_str().unwrap_or(""));
        let expected = r["output_hash"].as_str().unwrap_or("");
        let outputs: Vec<String> = r["outputs"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let outcome = match invariant_serving::audit::Retained::decode_inputs(r["inputs"].as_str().unwrap_or("")) {
            None => Err("the retained inputs do not decode".to_string()),
            Some(inputs) => runtime
                .block_on(service.recompute((model, version, &chain), inputs, &outputs, r["artifact_hash"].as_str()))
                .map_err(|e| e.to_string())
                .map(|out| invariant_serving::audit::output_hash(&out)),
        };
        let (status, detail) = match &outcome {
            Ok(h) if h == expected => ("match", String::new()),
            Ok(h) => ("MISMATCH", format!("recomputed {h}")),
            Err(why) => ("NOT REPLAYED", why.clone()),
        };
        results.push(json!({
            "seq": r["seq"], "request_id": r["request_id"], "model": model, "version": version,
            "output_hash": expected, "status": status, "detail": detail,
        }));
    }
    let failed = results.iter().filter(|r| r["status"] != "match").count();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "chain": chain, "records": results, "failed": failed }))?
        );
    } else {
        for r in &results {
            println!(
                "{:<6} {} {} {}: {} {}",
                r["seq"],
                r["model"].as_str().unwrap_or(""),
                r["version"].as_str().unwrap_or(""),
                r["output_hash"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or(""),
                r["detail"].as_str().unwrap_or("")
            );
        }
        println!(
            "{} record(s) replayed, {} confirmed, {failed} not",
            results.len(),
            results.len() - failed
        );
    }
    if failed > 0 {
        bail!("{failed} record(s) did not replay to their recorded output hash");
    }
    Ok(())
}
