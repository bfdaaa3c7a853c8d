//! `majordomo prices`: the price table in use, and what a model costs.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::pricing::live::{http_client, LivePrices};

#[derive(Subcommand, Debug)]
pub enum PricesCommand {
    /// Price one model name as a provider returns it (e.g. claude-sonnet-4-5-20250929).
    Show {
        model: String,
        /// Prompt size, to choose a long-context tier.
        #[arg(long, default_value_t = 0)]
        prompt_tokens: u64,
        #[arg(long)]
        json: bool,
    },
    /// List every model in the table.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Loads the table the gateway would use (snapshot, file, overrides) and,
/// unless `offline`, refreshes it once from `pricing.remote_url`.
async fn load(config: &Config, offline: bool, out: &mut dyn Write) -> anyhow::Result<LivePrices> {
    let prices = LivePrices::from_config(&config.pricing).map_err(anyhow::Error::msg)?;
    if !offline && prices.remote_enabled() {
        let client = http_client();
        match tokio::time::timeout(Duration::from_secs(10), prices.refresh_once(&client)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => writeln!(
                out,
                "note: remote prices unavailable ({e}); using the local table"
            )?,
            Err(_) => writeln!(out, "note: remote prices timed out; using the local table")?,
        }
    }
    Ok(prices)
}

pub async fn run(
    config: &Config,
    cmd: Option<PricesCommand>,
    offline: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let prices = load(config, offline, &mut std::io::stderr()).await?;
    let loaded = prices.current();
    let table = &loaded.table;
    match cmd {
        None => {
            writeln!(out, "source:     {}", table.source())?;
            writeln!(
                out,
                "updated at: {}{}",
                table.updated_at().unwrap_or("-"),
                age(table.updated_at())
            )?;
            writeln!(
                out,
                "remote:     {}",
                if loaded.remote { "merged" } else { "not used" }
            )?;
            writeln!(out, "models:     {}", table.len())?;
            writeln!(
                out,
                "(majordomo prices list | majordomo prices show <model>)"
            )?;
        }
        Some(PricesCommand::List { json }) => {
            if json {
                let all: Vec<_> = table
                    .iter()
                    .map(|(id, p)| json!({"id": id, "input": p.input, "output": p.output, "input_cached": p.input_cached}))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(all))?;
            } else {
                writeln!(
                    out,
                    "{:<44} {:>10} {:>10} {:>12}   (USD per 1M tokens)",
                    "MODEL", "INPUT", "OUTPUT", "CACHED IN"
                )?;
                for (id, p) in table.iter() {
                    let cached = p
                        .input_cached
                        .map(|c| c.normalize().to_string())
                        .unwrap_or_else(|| "-".into());
                    writeln!(
                        out,
                        "{:<44} {:>10} {:>10} {:>12}",
                        id,
                        p.input.normalize(),
                        p.output.normalize(),
                        cached
                    )?;
                }
            }
        }
        Some(PricesCommand::Show {
            model,
            prompt_tokens,
            json,
        }) => {
            match table.lookup(&model, prompt_tokens) {
                None => {
                    if json {
                        writeln!(out, "{}", json!({"model": model, "found": false}))?;
                    } else {
                        writeln!(out, "{model}: no price (requests for it are logged with price_found = false)")?;
                    }
                    anyhow::bail!("no price for {model}");
                }
                Some(m) => {
                    if json {
                        writeln!(
                            out,
                            "{}",
                            json!({"model": model, "found": true, "id": m.id, "match": m.how.as_str(),
                               "input": m.price.input, "output": m.price.output, "input_cached": m.price.input_cached})
                        )?;
                    } else {
                        writeln!(out, "model:        {model}")?;
                        writeln!(out, "priced as:    {} ({} match)", m.id, m.how.as_str())?;
                        writeln!(
                            out,
                            "input:        ${} per 1M tokens",
                            m.price.input.normalize()
                        )?;
                        writeln!(
                            out,
                            "output:       ${} per 1M tokens",
                            m.price.output.normalize()
                        )?;
                        match m.price.input_cached {
                        Some(c) => writeln!(out, "cached input: ${} per 1M tokens", c.normalize())?,
                        None => writeln!(out, "cached input: no rate in the table (Anthropic: 0.1 x input; others: input)")?,
                    }
                        writeln!(out, "source:       {}", table.source())?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// " (N days ago)" for a date or RFC 3339 timestamp.
fn age(updated_at: Option<&str>) -> String {
    let Some(s) = updated_at else {
        return String::new();
    };
    let date = chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.date_naive())
        .or_else(|_| chrono::NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d"));
    match date {
        Ok(d) => format!(
            " ({} days ago)",
            (chrono::Utc::now().date_naive() - d).num_days()
        ),
        Err(_) => String::new(),
    }
}
