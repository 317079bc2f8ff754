//! `invariant keys create|list|revoke`: API keys in the keys document of the control state
//! (the key file `auth.keys`, or Redis for replicas). A key's secret is printed once, when it
//! is created; only its HMAC is stored. Changes are durable before they are reported and
//! reach running servers within their `control.poll_ms`.

use crate::ConfigArgs;
use anyhow::{Context, Result};
use clap::Subcommand;
use invariant_auth::{Corridors, KeyStore, Pepper, Role};
use std::collections::BTreeSet;

/// `invariant keys …`
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key bound to corridors and roles; prints the key once.
    Create {
        #[command(flatten)]
        config: ConfigArgs,
        /// What the key is for, e.g. checkout-service.
        #[arg(long)]
        name: String,
        /// A role: infer, features:read, features:write, admin, reviewer, metrics (repeat or
        /// separate with commas).
        #[arg(long = "role", value_name = "ROLE", value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// A corridor the key may act in, or '*' for every corridor (repeat or separate with
        /// commas).
        #[arg(long = "corridor", value_name = "CORRIDOR", value_delimiter = ',', required = true)]
        corridors: Vec<String>,
        /// Who creates it (default: $USER).
        #[arg(long)]
        actor: Option<String>,
        /// Print JSON (with the key in `secret`).
        #[arg(long)]
        json: bool,
    },
    /// List every key (never its secret).
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id: refused by every server sharing the control state within its
    /// control.poll_ms.
    Revoke {
        #[command(flatten)]
        config: ConfigArgs,
        /// The key's id (as `keys list` shows it).
        id: String,
        /// Who revokes it (default: $USER).
        #[arg(long)]
        actor: Option<String>,
    },
}

fn actor(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into())
}

/// Runs one `keys` command.
pub fn run(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Create {
            config,
            name,
            roles,
            corridors,
            actor: who,
            json,
        } => {
            let config = config.load()?;
            let roles = roles
                .iter()
                .map(|r| Role::parse(r))
                .collect::<Result<BTreeSet<_>, _>>()?;
            let corridors = Corridors::parse(&corridors)?;
            if let Corridors::Only(set) = &corridors {
                for c in set.iter().filter(|c| config.corridor(c).is_none()) {
                    eprintln!("warning: corridor {c} is not declared in this configuration");
                }
            }
            let pepper =
                Pepper::load(&config.pepper_path(), true)?.context("no key pepper could be read or created")?;
            let store = KeyStore::new(config.open_control()?);
            let key = store.create(&pepper, &name, roles, &corridors, &actor(who))?;
            if json {
                let mut value = serde_json::to_value(&key.record)?;
                value["secret"] = serde_json::Value::String(key.secret);
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("created key {} ({})", key.record.id, key.record.name);
                println!("  roles:     {}", names(&key.record.roles));
                println!("  corridors: {}", key.record.corridors.join(", "));
                println!();
                println!("{}", key.secret);
                println!();
                println!(
                    "This is the only time the key is shown: store it now. Send it as 'Authorization: Bearer <key>'."
                );
            }
            Ok(())
        }
        KeysCommand::List { config, json } => {
            let config = config.load()?;
            let file = KeyStore::new(config.open_control()?).read()?;
            if json {
                let records: Vec<_> = file.keys.values().collect();
                println!("{}", serde_json::to_string_pretty(&records)?);
                return Ok(());
            }
            println!(
                "{:<16}  {:<24}  {:<36}  {:<20}  {:<20}  STATE",
                "ID", "NAME", "ROLES", "CORRIDORS", "CREATED"
            );
            for k in file.keys.values() {
                let state = match &k.revoked_at {
                    Some(t) => format!("revoked {t}"),
                    None => "active".into(),
                };
                println!(
                    "{:<16}  {:<24}  {:<36}  {:<20}  {:<20}  {state}",
                    k.id,
                    k.name,
                    names(&k.roles),
                    k.corridors.join(","),
                    k.created_at
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { config, id, actor: who } => {
            let config = config.load()?;
            let record = KeyStore::new(config.open_control()?).revoke(&id, &actor(who))?;
            println!(
                "revoked key {} ({}) at {}",
                record.id,
                record.name,
                record.revoked_at.as_deref().unwrap_or("?")
            );
            Ok(())
        }
    }
}

fn names(roles: &BTreeSet<Role>) -> String {
    roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(",")
}
