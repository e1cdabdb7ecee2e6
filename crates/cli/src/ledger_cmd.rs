//! `evolve ledger …`: read-only queries of the ledger and the synthetic
//! ledger generator. Every query answer is a `Table`, printed by one
//! formatter as an aligned table, JSON or CSV.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use evolve_ledger::synth::{synthesize, SynthOptions};
use evolve_ledger::{Ledger, LedgerError, Table, Window};

#[derive(Args)]
pub struct Source {
    /// SQLite ledger to read (opened read-only; never changed).
    #[arg(long, default_value = "runs/evolve.db")]
    ledger: PathBuf,
    /// Run to read (default: the latest run).
    #[arg(long)]
    run: Option<i64>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Args)]
pub struct Recent {
    /// Only the last N cycles of the run.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    last: u32,
    /// Every cycle of the run (overrides --last).
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
pub enum LedgerQuery {
    /// One row per cycle: status, checkpoints, examples trained.
    Cycles {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        recent: Recent,
    },
    /// Per cycle and suite: accuracy, delta vs the parent checkpoint and vs the base.
    Drift {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        recent: Recent,
        /// Only this suite, e.g. addition/L2.
        #[arg(long)]
        suite: Option<String>,
    },
    /// Refusal of must-refuse prompts and over-refusal of benign look-alikes per cycle.
    Refusal {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        recent: Recent,
    },
    /// Stored sizes, ratios and times per checkpoint and codec.
    Compression {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        recent: Recent,
    },
    /// The checkpoint tree from the base: accepted chain and rejected candidates.
    Lineage {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        recent: Recent,
    },
    /// GPU-seconds, busy seconds and cost per cycle and role.
    Budget {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        recent: Recent,
    },
    /// Quantized copies' accuracy against the lossless checkpoint per suite.
    Quantized {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        recent: Recent,
        /// Only this suite.
        #[arg(long)]
        suite: Option<String>,
    },
    /// The learned discriminator against the verifier per skill (AUC, calibration error).
    ProxyGap {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        recent: Recent,
    },
    /// The curriculum policy's choices per frontier target (skill x level), with reasons.
    Policy {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        recent: Recent,
    },
    /// What changed from CYCLE_A to CYCLE_B: accuracy and refusal deltas, flipped items.
    Diff {
        cycle_a: u32,
        cycle_b: u32,
        #[command(flatten)]
        source: Source,
    },
    /// Run one read-only SQL statement (SELECT, WITH, VALUES, EXPLAIN, read-only PRAGMA).
    Sql {
        query: String,
        #[arg(long, default_value = "runs/evolve.db")]
        ledger: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Write a synthetic ledger (for benchmarks and trying queries); PATH must not exist.
    Synth {
        #[arg(long)]
        out: PathBuf,
        /// Cycles including the base (cycle 0).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
        cycles: u32,
        /// Eval suites per cycle (1 to 3000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=3000))]
        suites: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Record per-item correctness for this many final cycles.
        #[arg(long, default_value_t = 20)]
        item_cycles: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl From<Format> for evolve_ledger::Format {
    fn from(f: Format) -> Self {
        match f {
            Format::Table => evolve_ledger::Format::Table,
            Format::Json => evolve_ledger::Format::Json,
            Format::Csv => evolve_ledger::Format::Csv,
        }
    }
}

pub async fn execute(query: LedgerQuery) -> Result<(), String> {
    run(query).await.map_err(|e| e.to_string())
}

async fn run(query: LedgerQuery) -> Result<(), LedgerError> {
    use LedgerQuery as Q;
    match query {
        Q::Cycles { source, recent } => {
            windowed(&source, &recent, |l, w| async move { Ok(Table::from_rows(&l.cycles_in(w).await?)) }).await
        }
        Q::Drift { source, recent, suite } => {
            windowed(&source, &recent, |l, w| async move { Ok(Table::from_rows(&l.drift(w, suite.as_deref()).await?)) }).await
        }
        Q::Refusal { source, recent } => {
            windowed(&source, &recent, |l, w| async move { Ok(Table::from_rows(&l.refusal_in(w).await?)) }).await
        }
        Q::Compression { source, recent } => {
            windowed(&source, &recent, |l, w| async move { Ok(Table::from_rows(&l.compression_in(w).await?)) }).await
        }
        Q::Lineage { source, recent } => {
            windowed(&source, &recent, |l, w| async move { Ok(Table::from_rows(&l.lineage(w).await?)) }).await
        }
        Q::Budget { source, recent } => {
            windowed(&source, &recent, |l, w| async move { Ok(Table::from_rows(&l.budget(w).await?)) }).await
        }
        Q::Quantized { source, recent, suite } => {
            windowed(&source, &recent, |l, w| async move { Ok(Table::from_rows(&l.quantized(w, suite.as_deref()).await?)) }).await
        }
        Q::Policy { source, recent } => {
            windowed(&source, &recent, |l, w| async move { Ok(Table::from_rows(&l.policy(w).await?)) }).await
        }
        Q::ProxyGap { source, recent } => {
            windowed(&source, &recent, |l, w| async move { Ok(Table::from_rows(&l.proxy_gap(w).await?)) }).await
        }
        Q::Diff { cycle_a, cycle_b, source } => {
            let ledger = Ledger::open_upgrading(&source.ledger).await?;
            let answer = async {
                let run = ledger.resolve_run(source.run).await?;
                Ok::<_, LedgerError>(ledger.diff(run, cycle_a, cycle_b).await?.table())
            }
            .await;
            ledger.close().await;
            print(&answer?, source.format);
            Ok(())
        }
        Q::Sql { query, ledger, format } => {
            let handle = Ledger::open_upgrading(&ledger).await?;
            let answer = handle.sql_read_only(&query).await;
            handle.close().await;
            print(&answer?, format);
            Ok(())
        }
        Q::Synth { out, cycles, suites, seed, item_cycles } => {
            let s = synthesize(&out, &SynthOptions { cycles, suites, seed, item_cycles }).await?;
            println!(
                "{}: run {}, {} cycles ({} accepted, {} rejected, {} failed after the base), {} eval rows, {} item rows, {:.1} MB in {:.1}s",
                s.path.display(),
                s.run_id,
                s.cycles,
                s.accepted,
                s.rejected,
                s.failed,
                s.eval_rows,
                s.item_rows,
                s.bytes as f64 / 1e6,
                s.seconds
            );
            Ok(())
        }
    }
}

/// Opens the ledger read-only, resolves run and window, runs one query and
/// prints it; the handle is closed whatever the query's outcome.
async fn windowed<F, Fut>(source: &Source, recent: &Recent, query: F) -> Result<(), LedgerError>
where
    F: FnOnce(Ledger, Window) -> Fut,
    Fut: std::future::Future<Output = Result<Table, LedgerError>>,
{
    let ledger = open(&source.ledger).await?;
    let answer = async {
        let w = ledger.window(source.run, (!recent.all).then_some(recent.last)).await?;
        query(ledger.clone(), w).await
    }
    .await;
    ledger.close().await;
    print(&answer?, source.format);
    Ok(())
}

async fn open(path: &Path) -> Result<Ledger, LedgerError> {
    Ledger::open_upgrading(path).await
}

fn print(table: &Table, format: Format) {
    use std::io::Write as _;
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = std::io::stdout().lock().write_all(table.render(format.into()).as_bytes());
}
