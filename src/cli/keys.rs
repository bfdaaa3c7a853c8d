//! `majordomo keys …`: key management against the configured store.

use std::io::Write;

use anyhow::anyhow;
use clap::Subcommand;
use serde_json::json;
use uuid::Uuid;

use crate::store::{ApiKey, NewKey, Store};

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; its plaintext is printed once and never stored.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List all keys.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's name or description.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key (permanent): requests with it get 401.
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn parse_id(id: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(id.trim())
        .map_err(|_| anyhow!("{id:?} is not a key id (a UUID as shown by `majordomo keys list`)"))
}

pub async fn run(store: &Store, cmd: KeysCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            name,
            description,
            json,
        } => {
            if name.trim().is_empty() {
                return Err(anyhow!("--name must not be empty"));
            }
            let generated =
                crate::keys::generate().map_err(|e| anyhow!("no randomness from the OS: {e}"))?;
            let key = store
                .create_key(NewKey {
                    name: &name,
                    description: description.as_deref(),
                    key_hash: &generated.hash,
                    key_hint: &generated.hint,
                })
                .await?;
            if json {
                let mut v = key_json(&key);
                v["key"] = json!(generated.plaintext);
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "Created API key {}", key.id)?;
                writeln!(out, "  name: {}", key.name)?;
                writeln!(out, "  key:  {}", generated.plaintext)?;
                writeln!(out, "Store this key now: it will not be shown again.")?;
            }
        }
        KeysCommand::List { json } => {
            let keys = store.list_keys().await?;
            if json {
                let all: Vec<_> = keys.iter().map(key_json).collect();
                writeln!(out, "{}", serde_json::Value::Array(all))?;
            } else {
                print_table(&keys, out)?;
            }
        }
        KeysCommand::Get { id, json } => {
            let id = parse_id(&id)?;
            let key = store
                .get_key(id)
                .await?
                .ok_or_else(|| anyhow!("no key with id {id}"))?;
            print_one(&key, json, out)?;
        }
        KeysCommand::Update {
            id,
            name,
            description,
            json,
        } => {
            let id = parse_id(&id)?;
            if name.is_none() && description.is_none() {
                return Err(anyhow!(
                    "nothing to update: give --name and/or --description"
                ));
            }
            if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                return Err(anyhow!("--name must not be empty"));
            }
            let key = store
                .update_key(id, name.as_deref(), description.as_deref())
                .await?
                .ok_or_else(|| anyhow!("no key with id {id}"))?;
            print_one(&key, json, out)?;
        }
        KeysCommand::Revoke { id, json } => {
            let id = parse_id(&id)?;
            let (key, _hash) = store
                .revoke_key(id)
                .await?
                .ok_or_else(|| anyhow!("no key with id {id}"))?;
            if json {
                writeln!(out, "{}", key_json(&key))?;
            } else {
                writeln!(out, "Revoked API key {} ({})", key.id, key.name)?;
            }
        }
    }
    Ok(())
}

fn key_json(k: &ApiKey) -> serde_json::Value {
    json!({
        "id": k.id,
        "name": k.name,
        "description": k.description,
        "key_hint": k.key_hint,
        "is_active": k.is_active,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
        "last_used_at": k.last_used_at,
        "request_count": k.request_count,
    })
}

fn print_one(k: &ApiKey, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", key_json(k))?;
        return Ok(());
    }
    let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "-".into())
    };
    writeln!(out, "id:            {}", k.id)?;
    writeln!(out, "name:          {}", k.name)?;
    writeln!(
        out,
        "description:   {}",
        k.description.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "key:           {}",
        k.key_hint.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "status:        {}",
        if k.is_active { "active" } else { "revoked" }
    )?;
    writeln!(out, "created:       {}", fmt(Some(k.created_at)))?;
    writeln!(out, "revoked:       {}", fmt(k.revoked_at))?;
    writeln!(out, "last used:     {}", fmt(k.last_used_at))?;
    writeln!(out, "requests:      {}", k.request_count)?;
    Ok(())
}

fn print_table(keys: &[ApiKey], out: &mut dyn Write) -> anyhow::Result<()> {
    if keys.is_empty() {
        writeln!(
            out,
            "No API keys yet. Create one with: majordomo keys create --name \"My key\""
        )?;
        return Ok(());
    }
    let name_w = keys
        .iter()
        .map(|k| k.name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 40);
    writeln!(
        out,
        "{:<36}  {:<name_w$}  {:<13}  {:<7}  {:>9}  {:<20}",
        "ID", "NAME", "KEY", "STATUS", "REQUESTS", "LAST USED"
    )?;
    for k in keys {
        let name: String = k.name.chars().take(40).collect();
        writeln!(
            out,
            "{:<36}  {:<name_w$}  {:<13}  {:<7}  {:>9}  {:<20}",
            k.id,
            name,
            k.key_hint.as_deref().unwrap_or("-"),
            if k.is_active { "active" } else { "revoked" },
            k.request_count,
            k.last_used_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
        )?;
    }
    Ok(())
}
