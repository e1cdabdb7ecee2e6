//! `evolve ledger …`: read-only queries of the ledger, printed as a table or JSON.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use evolve_ledger::Ledger;

#[derive(Subcommand)]
pub enum LedgerQuery {
    /// One row per cycle: status, checkpoints, examples trained.
    Cycles {
        #[arg(long, default_value = "runs/evolve.db")]
        ledger: PathBuf,
        /// Only this run (default: all runs).
        #[arg(long)]
        run: Option<i64>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub async fn execute(query: LedgerQuery) -> Result<(), String> {
    match query {
        LedgerQuery::Cycles { ledger, run, format } => cycles(&ledger, run, format).await.map_err(|e| e.to_string()),
    }
}

async fn cycles(path: &std::path::Path, run: Option<i64>, format: Format) -> Result<(), evolve_ledger::LedgerError> {
    let ledger = Ledger::open_read_only(path).await?;
    let rows = ledger.cycles(run).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialize")),
        Format::Table => {
            println!("{:>4} {:>5}  {:<9} {:<12} {:<12} {:>8}  {:<24} {}", "run", "cycle", "status", "parent", "checkpoint", "examples", "finished", "reason");
            for r in rows {
                let short = |h: &Option<String>| h.as_deref().map(|h| h[..h.len().min(12)].to_string()).unwrap_or_else(|| "-".into());
                println!(
                    "{:>4} {:>5}  {:<9} {:<12} {:<12} {:>8}  {:<24} {}",
                    r.run_id,
                    r.cycle,
                    r.status,
                    short(&r.parent_hash),
                    short(&r.checkpoint_hash),
                    r.examples_trained,
                    r.finished_at.as_deref().unwrap_or("-"),
                    r.reason.as_deref().unwrap_or("")
                );
            }
        }
    }
    ledger.close().await;
    Ok(())
}
