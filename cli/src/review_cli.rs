//! `invariant review list|submit|show|claim|release|resolve|escalate|summary`: the human
//! review queue of a corridor, through a running server's API (`--server URL`, the API key
//! from `INVARIANT_API_KEY`; the server holds the queue's file).

use crate::models_cli::{call, table};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where and how.
#[derive(Args)]
pub struct Target {
    /// The running server, e.g. http://127.0.0.1:8000.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The corridor whose queue this is.
    #[arg(long)]
    corridor: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `invariant review …`
#[derive(Subcommand)]
pub enum ReviewCommand {
    /// The queue in order (priority, SLA deadline, id).
    List {
        #[command(flatten)]
        target: Target,
        /// Statuses, comma-separated: open, claimed, resolved.
        #[arg(long, default_value = "open,claimed")]
        status: String,
        /// At most this many items.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Add an item.
    Submit {
        #[command(flatten)]
        target: Target,
        /// P0 (escrow disputes, 2 h) … P5 (spot checks, 48 h).
        #[arg(long)]
        priority: String,
        /// What is to be reviewed, e.g. order:8812.
        #[arg(long)]
        subject: String,
        /// Reason codes, e.g. HIGH_VALUE_OVER_1000.
        #[arg(long = "reason-code")]
        reason_codes: Vec<String>,
        /// Facts as a JSON object.
        #[arg(long, default_value = "{}")]
        facts: String,
    },
    /// One item.
    Show {
        #[command(flatten)]
        target: Target,
        /// The item's id.
        id: String,
    },
    /// Claim an item (for the server's review.claim_ttl_ms).
    Claim {
        #[command(flatten)]
        target: Target,
        /// The item's id.
        id: String,
    },
    /// Give a claim up.
    Release {
        #[command(flatten)]
        target: Target,
        /// The item's id.
        id: String,
    },
    /// Decide a claimed item.
    Resolve {
        #[command(flatten)]
        target: Target,
        /// The item's id.
        id: String,
        /// approve or reject.
        #[arg(long)]
        decision: String,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Raise an item's priority (one level, or to --to).
    Escalate {
        #[command(flatten)]
        target: Target,
        /// The item's id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// The new priority.
        #[arg(long)]
        to: Option<String>,
    },
    /// Depth, oldest age, near-breach items by priority, claims and the overflow signals.
    Summary {
        #[command(flatten)]
        target: Target,
    },
}

fn items_path(t: &Target) -> String {
    format!("/v1/corridors/{}/review/items", t.corridor)
}

fn print_item(t: &Target, item: &Value) -> Result<()> {
    if t.json {
        println!("{}", serde_json::to_string_pretty(item)?);
    } else {
        println!(
            "{} {} {} ({}; due {}): {}",
            item["id"].as_str().unwrap_or("-"),
            item["priority"].as_str().unwrap_or("-"),
            item["status"].as_str().unwrap_or("-"),
            item["reason_codes"],
            item["deadline"].as_str().unwrap_or("-"),
            item["subject"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}

/// Runs one review command.
pub fn run(command: ReviewCommand) -> Result<()> {
    let post = |t: &Target, path: String, body: Value| call(&t.server, reqwest::Method::POST, &path, Some(body));
    match command {
        ReviewCommand::List { target, status, limit } => {
            let path = format!("{}?status={status}&limit={limit}", items_path(&target));
            let list = call(&target.server, reqwest::Method::GET, &path, None)?;
            if target.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
                    vec![
                        text(&i["id"]),
                        text(&i["priority"]),
                        text(&i["status"]),
                        text(&i["deadline"]),
                        if i["breached"] == true {
                            "BREACHED".into()
                        } else {
                            String::new()
                        },
                        i["claim"]["by"]
                            .as_str()
                            .filter(|_| i["status"] == "claimed")
                            .unwrap_or("")
                            .to_string(),
                        text(&i["subject"]),
                    ]
                })
                .collect();
            table(
                &["ID", "PRIORITY", "STATUS", "DUE", "SLA", "CLAIMED BY", "SUBJECT"],
                &rows,
            );
        }
        ReviewCommand::Submit {
            target,
            priority,
            subject,
            reason_codes,
            facts,
        } => {
            let facts: Value = serde_json::from_str(&facts).map_err(|e| anyhow::anyhow!("--facts is not JSON: {e}"))?;
            let body = json!({"priority": priority, "subject": subject, "reason_codes": reason_codes, "facts": facts});
            print_item(&target, &post(&target, items_path(&target), body)?)?;
        }
        ReviewCommand::Show { target, id } => {
            let item = call(
                &target.server,
                reqwest::Method::GET,
                &format!("{}/{id}", items_path(&target)),
                None,
            )?;
            print_item(&target, &item)?;
        }
        ReviewCommand::Claim { target, id } => print_item(
            &target,
            &post(&target, format!("{}/{id}/claim", items_path(&target)), json!({}))?,
        )?,
        ReviewCommand::Release { target, id } => print_item(
            &target,
            &post(&target, format!("{}/{id}/release", items_path(&target)), json!({}))?,
        )?,
        ReviewCommand::Resolve {
            target,
            id,
            decision,
            note,
        } => {
            let body = json!({"decision": decision, "note": note});
            print_item(
                &target,
                &post(&target, format!("{}/{id}/resolve", items_path(&target)), body)?,
            )?
        }
        ReviewCommand::Escalate { target, id, reason, to } => {
            let body = json!({"reason": reason, "to": to});
            print_item(
                &target,
                &post(&target, format!("{}/{id}/escalate", items_path(&target)), body)?,
            )?
        }
        ReviewCommand::Summary { target } => {
            let path = format!("/v1/corridors/{}/review/summary", target.corridor);
            let s = call(&target.server, reqwest::Method::GET, &path, None)?;
            if target.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                for p in ["P0", "P1", "P2", "P3", "P4", "P5"] {
                    println!(
                        "{p}: {} waiting, oldest {:.1} h, {} near breach, {} breached",
                        s["depth"][p],
                        s["oldest_age_seconds"][p].as_f64().unwrap_or(0.0) / 3600.0,
                        s["near_breach"][p],
                        s["breached"][p]
                    );
                }
                println!("claimed: {} by {} reviewers", s["claimed"], s["active_reviewers"]);
                for signal in s["signals"].as_array().into_iter().flatten() {
                    println!(
                        "signal {}: {}",
                        signal["kind"].as_str().unwrap_or("-"),
                        signal["suggestion"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}
