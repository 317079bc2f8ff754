//! `invariant switches …`, `invariant corridors …` and `invariant flags …`: corridor
//! governance, either on the control state directly (the configured backend: a file, or Redis;
//! running servers apply the change within their `control.poll_ms`) or, with `--server URL`,
//! through a running server's admin API. Every change is durable and audited before it is reported.

use crate::models_cli::{call, table};
use crate::ConfigArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use invariant_governance::state::{Change, ControlState, Scope};
use serde_json::{json, Value};

/// Options shared by the governance commands.
#[derive(Args, Clone)]
pub struct GovernArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Work through this running server's admin API instead of the state file (the API key is
    /// read from INVARIANT_API_KEY; the change is then recorded under the key's id).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Who makes a change on the state file (default: $USER); through --server, the API key's
    /// id is the actor.
    #[arg(long)]
    actor: Option<String>,
    /// Refuse the change unless the control state is still at this revision.
    #[arg(long, value_name = "N")]
    expected_revision: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `invariant switches …`
#[derive(Subcommand)]
pub enum SwitchesCommand {
    /// The kill switches that are on.
    List(GovernArgs),
    /// Turn a kill switch on: SCOPE is global (FF_EMERGENCY_DISABLE_ALL), market:N,
    /// corridor:ID, model:NAME or model:NAME@CORRIDOR. Requests in scope get 503.
    Kill {
        /// The scope.
        scope: String,
        /// Why (shown to every refused caller).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        args: GovernArgs,
    },
    /// Turn a kill switch off.
    Revive {
        /// The scope.
        scope: String,
        #[command(flatten)]
        args: GovernArgs,
    },
}

/// `invariant corridors …`
#[derive(Subcommand)]
pub enum CorridorsCommand {
    /// Every corridor's level, switches, freeze, limit and open breakers (live values need
    /// --server; on the file: what operators set).
    Status(GovernArgs),
    /// Freeze a corridor or market (corridor ID, or market:N): new requests and feature writes
    /// get 503, requests in flight finish.
    Freeze {
        /// Corridor id, or market:N.
        target: String,
        /// Why.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        args: GovernArgs,
    },
    /// Lift a freeze.
    Unfreeze {
        /// Corridor id, or market:N.
        target: String,
        #[command(flatten)]
        args: GovernArgs,
    },
    /// Set a corridor's degradation level (0 full … 4 emergency), overriding the computed one.
    Level {
        /// Corridor id.
        corridor: String,
        /// 0–4.
        level: u8,
        /// Why.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        args: GovernArgs,
    },
    /// Go back to the computed level.
    ClearLevel {
        /// Corridor id.
        corridor: String,
        #[command(flatten)]
        args: GovernArgs,
    },
    /// Set a rate limit: SCOPE is a corridor id, market:N or model:NAME@CORRIDOR.
    Limit {
        /// The scope.
        scope: String,
        /// Requests per second.
        rate: f64,
        /// Bucket size (default: one second's worth).
        #[arg(long)]
        burst: Option<u32>,
        #[command(flatten)]
        args: GovernArgs,
    },
    /// Go back to the configured rate limit.
    ClearLimit {
        /// The scope.
        scope: String,
        #[command(flatten)]
        args: GovernArgs,
    },
    /// A corridor's health from a running server (--server): readiness and why not,
    /// dependencies, pool load, recent p50/p99 and error rate, level, switches, breakers.
    /// Exits 1 when the corridor does not serve.
    Health {
        /// Corridor id.
        corridor: String,
        #[command(flatten)]
        args: GovernArgs,
    },
}

/// `invariant flags …`
#[derive(Subcommand)]
pub enum FlagsCommand {
    /// The flags in force (for one corridor: global, then its market's, then its own).
    List {
        /// Corridor id.
        #[arg(long)]
        corridor: Option<String>,
        #[command(flatten)]
        args: GovernArgs,
    },
    /// Set a flag: SCOPE is global, market:N or a corridor id.
    Set {
        /// The scope.
        scope: String,
        /// Flag name.
        name: String,
        /// true or false.
        #[arg(action = clap::ArgAction::Set)]
        value: bool,
        #[command(flatten)]
        args: GovernArgs,
    },
    /// Remove a flag at one scope.
    Clear {
        /// The scope.
        scope: String,
        /// Flag name.
        name: String,
        #[command(flatten)]
        args: GovernArgs,
    },
}

/// A scope as operators type it: a bare corridor id means `corridor:ID`.
fn scope(text: &str) -> Result<Scope> {
    let full = if text.contains(':') || text == "global" {
        text.to_string()
    } else {
        format!("corridor:{text}")
    };
    Ok(full.parse::<Scope>()?)
}

fn actor(args: &GovernArgs) -> String {
    args.actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into())
}

/// Applies `change`, through the server or on the state file; returns the new state.
fn apply(args: &GovernArgs, change: Change) -> Result<Value> {
    let actor = actor(args);
    let state = match &args.server {
        Some(server) => {
            let mut body = serde_json::to_value(&change)?;
            if let Some(r) = args.expected_revision {
                body["expected_revision"] = json!(r);
            }
            call(server, reqwest::Method::POST, "/admin/v1/governance", Some(body))?["state"].clone()
        }
        None => {
            let config = args.config.load()?;
            let governance = config
                .open_control()
                .map_err(anyhow::Error::from)
                .and_then(|control| Ok(config.open_governance(control)?))
                .context("opening the governance control state")?;
            let audit = invariant_serving::audit::AuditLog::open(&config)
                .with_context(|| format!("opening the audit trail {}", config.audit_dir().display()))?;
            let state = invariant_serving::governance::apply_change(
                &governance,
                &audit,
                &change,
                &actor,
                args.expected_revision,
            )?;
            serde_json::to_value(&*state)?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        println!("{}: done (revision {})", describe(&change), state["revision"]);
    }
    Ok(state)
}

fn describe(change: &Change) -> String {
    match change {
        Change::Kill { scope, .. } => format!("kill {scope}"),
        Change::Revive { scope } => format!("revive {scope}"),
        Change::Freeze { scope, .. } => format!("freeze {scope}"),
        Change::Unfreeze { scope } => format!("unfreeze {scope}"),
        Change::SetLimit { scope, rate_per_s, .. } => format!("limit {scope} to {rate_per_s} requests/s"),
        Change::ClearLimit { scope } => format!("clear the limit of {scope}"),
        Change::SetLevel { corridor, level, .. } => format!("set {corridor} to level {level}"),
        Change::ClearLevel { corridor } => format!("clear the level of {corridor}"),
        Change::SetFlag { scope, name, value } => format!("set flag {name} = {value} at {scope}"),
        Change::ClearFlag { scope, name } => format!("clear flag {name} at {scope}"),
    }
}

/// The control state (and, from a server, the live corridor status).
fn read(args: &GovernArgs) -> Result<Value> {
    match &args.server {
        Some(server) => call(server, reqwest::Method::GET, "/admin/v1/governance", None),
        None => {
            let config = args.config.load()?;
            let governance = config.open_governance(config.open_control()?)?;
            let state: ControlState = (*governance.state()).clone();
            let limits: serde_json::Map<String, Value> = governance
                .limits()
                .into_iter()
                .map(|(s, l)| (s.to_string(), json!({ "rate_per_s": l.rate_per_s, "burst": l.burst })))
                .collect();
            Ok(json!({ "state": state, "limits": limits, "corridors": Value::Null }))
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs `invariant switches …`.
pub fn switches(command: SwitchesCommand) -> Result<()> {
    match command {
        SwitchesCommand::List(args) => {
            let view = read(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&view["state"]["switches"])?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = view["state"]["switches"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(scope, v)| vec![scope.clone(), s(&v["since"]), s(&v["actor"]), s(&v["reason"])])
                .collect();
            if rows.is_empty() {
                println!("no kill switch is on (revision {})", view["state"]["revision"]);
            } else {
                table(&["scope", "since", "actor", "reason"], &rows);
            }
            Ok(())
        }
        SwitchesCommand::Kill {
            scope: text,
            reason,
            args,
        } => apply(
            &args,
            Change::Kill {
                scope: scope(&text)?,
                reason,
            },
        )
        .map(drop),
        SwitchesCommand::Revive { scope: text, args } => {
            apply(&args, Change::Revive { scope: scope(&text)? }).map(drop)
        }
    }
}

/// Runs `invariant corridors …`.
pub fn corridors(command: CorridorsCommand) -> Result<()> {
    match command {
        CorridorsCommand::Health { corridor, args } => {
            let Some(server) = &args.server else {
                bail!("corridors health reads live state: name the server with --server URL");
            };
            let (status, h) = crate::models_cli::call_any(
                server,
                reqwest::Method::GET,
                &format!("/v1/corridors/{corridor}/health"),
                None,
            )?;
            if status != 200 && status != 503 {
                bail!("{status}: {}", h["error"].as_str().unwrap_or("request failed"));
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                let r = &h["recent"];
                println!(
                    "{}: {}",
                    h["corridor"].as_str().unwrap_or(&corridor),
                    if h["ready"] == true { "ready" } else { "NOT READY" }
                );
                for why in h["not_ready"].as_array().into_iter().flatten() {
                    println!("  not ready: {}", why.as_str().unwrap_or(""));
                }
                for d in h["dependencies"].as_array().into_iter().flatten() {
                    println!(
                        "  {}: {}{}",
                        d["name"].as_str().unwrap_or(""),
                        if d["ok"] == true { "ok" } else { "DOWN" },
                        d["error"].as_str().map(|e| format!(" ({e})")).unwrap_or_default()
                    );
                }
                println!(
                    "  pool: {} in flight, {} queued, {} places",
                    h["pool"]["in_flight"], h["pool"]["queued"], h["pool"]["capacity"]
                );
                println!(
                    "  last {} s: {} requests, error rate {:.2} %, p50 {} ms, p99 {} ms",
                    invariant_serving::health::RECENT_SECONDS,
                    r["requests"],
                    r["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                    r["p50_ms"],
                    r["p99_ms"]
                );
                if let Some(g) = h["governance"].as_object() {
                    println!(
                        "  level {} ({}), killed: {}, frozen: {}, breakers: {}",
                        g["level"],
                        g["level_name"].as_str().unwrap_or(""),
                        g["killed"].as_str().unwrap_or("no"),
                        g["frozen"].as_str().unwrap_or("no"),
                        g["breakers"]
                    );
                }
            }
            if h["ready"] != true {
                bail!("corridor {corridor} does not serve");
            }
            Ok(())
        }
        CorridorsCommand::Status(args) => {
            let view = read(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
                return Ok(());
            }
            let Some(list) = view["corridors"].as_array() else {
                let config = args.config.load()?;
                let state = &view["state"];
                let rows: Vec<Vec<String>> = config
                    .corridors
                    .iter()
                    .map(|c| {
                        let id = c.id.to_string();
                        vec![
                            id.clone(),
                            c.market.to_string(),
                            s(&state["levels"][&id]["level"]),
                            s(&state["freezes"][format!("corridor:{id}")]["reason"]),
                            s(&view["limits"][format!("corridor:{id}")]["rate_per_s"]),
                        ]
                    })
                    .collect();
                table(&["corridor", "market", "operator level", "frozen", "rate limit"], &rows);
                println!(
                    "(revision {}; live levels and breakers: pass --server)",
                    state["revision"]
                );
                return Ok(());
            };
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        s(&c["corridor"]),
                        s(&c["market"]),
                        format!("{} ({})", s(&c["level"]), s(&c["level_name"])),
                        s(&c["killed"]),
                        s(&c["frozen"]),
                        s(&c["rate_limit"]),
                        format!(
                            "{} req, {:.1}% err, p99 {} ms",
                            s(&c["signals"]["requests"]),
                            c["signals"]["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                            s(&c["signals"]["p99_ms"])
                        ),
                        s(&c["breakers"]),
                    ]
                })
                .collect();
            table(
                &[
                    "corridor",
                    "market",
                    "level",
                    "killed",
                    "frozen",
                    "rate limit",
                    "window",
                    "breakers",
                ],
                &rows,
            );
            Ok(())
        }
        CorridorsCommand::Freeze { target, reason, args } => apply(
            &args,
            Change::Freeze {
                scope: scope(&target)?,
                reason,
            },
        )
        .map(drop),
        CorridorsCommand::Unfreeze { target, args } => {
            apply(&args, Change::Unfreeze { scope: scope(&target)? }).map(drop)
        }
        CorridorsCommand::Level {
            corridor,
            level,
            reason,
            args,
        } => apply(
            &args,
            Change::SetLevel {
                corridor,
                level,
                reason,
            },
        )
        .map(drop),
        CorridorsCommand::ClearLevel { corridor, args } => apply(&args, Change::ClearLevel { corridor }).map(drop),
        CorridorsCommand::Limit {
            scope: text,
            rate,
            burst,
            args,
        } => apply(
            &args,
            Change::SetLimit {
                scope: scope(&text)?,
                rate_per_s: rate,
                burst,
            },
        )
        .map(drop),
        CorridorsCommand::ClearLimit { scope: text, args } => {
            apply(&args, Change::ClearLimit { scope: scope(&text)? }).map(drop)
        }
    }
}

/// Runs `invariant flags …`.
pub fn flags(command: FlagsCommand) -> Result<()> {
    match command {
        FlagsCommand::List { corridor, args } => {
            let flags = match &args.server {
                Some(server) => {
                    let path = match &corridor {
                        Some(c) => format!("/admin/v1/flags?corridor={c}"),
                        None => "/admin/v1/flags".into(),
                    };
                    call(server, reqwest::Method::GET, &path, None)?["flags"].clone()
                }
                None => {
                    let config = args.config.load()?;
                    let governance = config.open_governance(config.open_control()?)?;
                    let id = match &corridor {
                        Some(c) => Some(
                            config
                                .corridor(c)
                                .map(|c| c.id.to_string())
                                .with_context(|| format!("unknown corridor '{c}'"))?,
                        ),
                        None => None,
                    };
                    let market = id.as_deref().and_then(|c| governance.topology().market(c));
                    serde_json::to_value(governance.state().flags_for(market, id.as_deref()))?
                }
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&flags)?);
            } else {
                let rows: Vec<Vec<String>> = flags
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| vec![k.clone(), s(v)])
                    .collect();
                if rows.is_empty() {
                    println!("no flags set");
                } else {
                    table(&["flag", "value"], &rows);
                }
            }
            Ok(())
        }
        FlagsCommand::Set {
            scope: text,
            name,
            value,
            args,
        } => {
            if name.is_empty() {
                bail!("a flag needs a name");
            }
            apply(
                &args,
                Change::SetFlag {
                    scope: scope(&text)?,
                    name,
                    value,
                },
            )
            .map(drop)
        }
        FlagsCommand::Clear {
            scope: text,
            name,
            args,
        } => apply(
            &args,
            Change::ClearFlag {
                scope: scope(&text)?,
                name,
            },
        )
        .map(drop),
    }
}
