//! `majordomo metadata …`: which `X-Majordomo-*` keys each API key sends,
//! and which are indexed.

use std::io::Write;

use anyhow::anyhow;
use clap::Subcommand;
use uuid::Uuid;

use crate::store::Store;

#[derive(Subcommand, Debug)]
pub enum MetadataCommand {
    /// Metadata keys seen (requests, last seen, approximate distinct values, indexed).
    List {
        /// Only this API key's metadata.
        #[arg(long = "key")]
        api_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Copy this metadata key's values into `indexed_metadata` (GIN-indexed) for new rows.
    Activate { api_key: String, name: String },
    /// Stop indexing this metadata key.
    Deactivate { api_key: String, name: String },
}

/// The name as rows carry it: lowercase, without the header's
/// `X-Majordomo-` prefix (`X-Majordomo-User-Id` and `user-id` are one name).
fn metadata_name(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    match name.strip_prefix(crate::gateway::metadata::HEADER_PREFIX) {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => name,
    }
}

fn parse_id(id: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(id.trim())
        .map_err(|_| anyhow!("{id:?} is not a key id (see `majordomo keys list`)"))
}

pub async fn run(store: &Store, cmd: MetadataCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        MetadataCommand::List { api_key, json } => {
            let filter = api_key.as_deref().map(parse_id).transpose()?;
            let rows = store.list_metadata_keys(filter).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&rows)?)?;
                return Ok(());
            }
            if rows.is_empty() {
                writeln!(
                    out,
                    "No metadata seen yet (send X-Majordomo-<Name> headers)."
                )?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<36}  {:<24}  {:>9}  {:>9}  {:<7}  LAST SEEN",
                "API KEY", "NAME", "REQUESTS", "~DISTINCT", "INDEXED"
            )?;
            for r in rows {
                writeln!(
                    out,
                    "{:<36}  {:<24}  {:>9}  {:>9}  {:<7}  {}",
                    r.api_key_id,
                    r.key_name,
                    r.request_count,
                    r.approx_cardinality,
                    if r.is_active { "yes" } else { "no" },
                    r.last_seen_at
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "-".into())
                )?;
            }
        }
        MetadataCommand::Activate { api_key, name }
        | MetadataCommand::Deactivate { api_key, name }
            if name.trim().is_empty() =>
        {
            let _ = api_key;
            return Err(anyhow!("the metadata name must not be empty"));
        }
        MetadataCommand::Activate { api_key, name } => {
            let id = parse_id(&api_key)?;
            let name = metadata_name(&name);
            if !store.set_metadata_active(id, &name, true).await? {
                return Err(anyhow!("no key with id {id}"));
            }
            writeln!(
                out,
                "Indexing metadata {name:?} for key {id} (new requests)"
            )?;
        }
        MetadataCommand::Deactivate { api_key, name } => {
            let id = parse_id(&api_key)?;
            let name = metadata_name(&name);
            if !store.set_metadata_active(id, &name, false).await? {
                return Err(anyhow!("no key with id {id}"));
            }
            writeln!(out, "Stopped indexing metadata {name:?} for key {id}")?;
        }
    }
    Ok(())
}
