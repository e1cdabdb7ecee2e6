//! Times every `evolve ledger` query at research scale: synthesizes a
//! 10 000-cycle x 100-suite ledger (1M eval rows) once, then runs each
//! subcommand's default invocation the way the CLI does (open read-only,
//! resolve run and window, query, render as a table, close) and checks the
//! median against a 50 ms budget. Exits non-zero if any query is over.
//!
//!     cargo bench -p evolve-ledger
//!     EVOLVE_BENCH_LEDGER=/tmp/big.db cargo bench -p evolve-ledger   # keep/reuse the ledger
//!
//! `EVOLVE_BENCH_REPS` sets the repetitions per query (default 15).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Instant;

use evolve_ledger::synth::{synthesize, SynthOptions};
use evolve_ledger::{Format, Ledger, LedgerError, Table};

const BUDGET_MS: f64 = 50.0;

type Query = Box<dyn Fn(Ledger) -> Pin<Box<dyn Future<Output = Result<Table, LedgerError>>>>>;

fn windowed<F, Fut>(last: Option<u32>, f: F) -> Query
where
    F: Fn(Ledger, evolve_ledger::Window) -> Fut + Clone + 'static,
    Fut: Future<Output = Result<Table, LedgerError>> + 'static,
{
    Box::new(move |l: Ledger| {
        let f = f.clone();
        Box::pin(async move {
            let w = l.window(None, last).await?;
            f(l, w).await
        })
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(bench());
    std::process::exit(code);
}

async fn bench() -> i32 {
    let keep = std::env::var_os("EVOLVE_BENCH_LEDGER").map(PathBuf::from);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = keep.clone().unwrap_or_else(|| dir.path().join("bench.db"));
    if !path.exists() {
        let t = Instant::now();
        match synthesize(&path, &SynthOptions::default()).await {
            Ok(s) => println!(
                "synthesized {}: {} cycles ({} accepted, {} rejected, {} failed), {} eval rows, {} item rows, {:.0} MB in {:.1}s",
                path.display(),
                s.cycles,
                s.accepted,
                s.rejected,
                s.failed,
                s.eval_rows,
                s.item_rows,
                s.bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    } else {
        println!("reusing {}", path.display());
    }
    let reps: usize = std::env::var("EVOLVE_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let last = Some(20);
    let suite = "sorting/L3".to_string();
    let s2 = suite.clone();
    let s3 = suite.clone();
    let s4 = "addition/L1".to_string();
    let s5 = s4.clone();
    let queries: Vec<(&str, Query)> = vec![
        ("(open + close only)", Box::new(|_l: Ledger| Box::pin(async move { Ok(Table::default()) }))),
        ("ledger cycles", windowed(last, |l, w| async move { Ok(Table::from_rows(&l.cycles_in(w).await?)) })),
        ("ledger cycles --run 1", Box::new(|l: Ledger| Box::pin(async move {
            let w = l.window(Some(1), Some(20)).await?;
            Ok(Table::from_rows(&l.cycles_in(w).await?))
        }))),
        ("ledger drift", windowed(last, |l, w| async move { Ok(Table::from_rows(&l.drift(w, None).await?)) })),
        ("ledger drift --suite S", windowed(last, move |l, w| {
            let s = s2.clone();
            async move { Ok(Table::from_rows(&l.drift(w, Some(&s)).await?)) }
        })),
        ("ledger drift --suite S --all", windowed(None, move |l, w| {
            let s = s3.clone();
            async move { Ok(Table::from_rows(&l.drift(w, Some(&s)).await?)) }
        })),
        ("ledger refusal", windowed(last, |l, w| async move { Ok(Table::from_rows(&l.refusal_in(w).await?)) })),
        ("ledger refusal --all", windowed(None, |l, w| async move { Ok(Table::from_rows(&l.refusal_in(w).await?)) })),
        ("ledger compression", windowed(last, |l, w| async move { Ok(Table::from_rows(&l.compression_in(w).await?)) })),
        ("ledger lineage", windowed(last, |l, w| async move { Ok(Table::from_rows(&l.lineage(w).await?)) })),
        ("ledger budget", windowed(last, |l, w| async move { Ok(Table::from_rows(&l.budget(w).await?)) })),
        ("ledger budget --all", windowed(None, |l, w| async move { Ok(Table::from_rows(&l.budget(w).await?)) })),
        ("ledger quantized", windowed(last, |l, w| async move { Ok(Table::from_rows(&l.quantized(w, None).await?)) })),
        ("ledger quantized --suite Q", windowed(last, move |l, w| {
            let s = s5.clone();
            async move { Ok(Table::from_rows(&l.quantized(w, Some(&s)).await?)) }
        })),
        ("ledger quantized --suite Q --all", windowed(None, move |l, w| {
            let s = s4.clone();
            async move { Ok(Table::from_rows(&l.quantized(w, Some(&s)).await?)) }
        })),
        ("ledger proxy-gap", windowed(last, |l, w| async move { Ok(Table::from_rows(&l.proxy_gap(w).await?)) })),
        ("ledger diff 9990 9999", Box::new(|l: Ledger| Box::pin(async move {
            let run = l.resolve_run(None).await?;
            Ok(l.diff(run, 9990, 9999).await?.table())
        }))),
        ("ledger diff 0 9999", Box::new(|l: Ledger| Box::pin(async move {
            let run = l.resolve_run(None).await?;
            Ok(l.diff(run, 0, 9999).await?.table())
        }))),
        ("ledger sql (v_drift, one suite)", Box::new(move |l: Ledger| {
            let sql = format!("SELECT cycle, accuracy, delta_vs_base FROM v_drift WHERE run_id = 1 AND suite = '{suite}' AND cycle >= 9000");
            Box::pin(async move { l.sql_read_only(&sql).await })
        })),
    ];

    if std::env::var_os("EVOLVE_BENCH_BREAKDOWN").is_some() {
        for _ in 0..5 {
            let t = Instant::now();
            let l = Ledger::open_read_only(&path).await.unwrap();
            let t_open = t.elapsed();
            let w = l.window(None, Some(20)).await.unwrap();
            let t_window = t.elapsed();
            let rows = l.drift(w, None).await.unwrap();
            let t_query = t.elapsed();
            let table = Table::from_rows(&rows);
            let text = table.render(Format::Table);
            let t_render = t.elapsed();
            let raw = l.sql_read_only("SELECT * FROM v_drift WHERE run_id = 1 AND cycle >= 9980").await.unwrap();
            let t_sql = t.elapsed();
            let n = l.sql_read_only("SELECT COUNT(*), SUM(delta_vs_parent) FROM v_drift WHERE run_id = 1 AND cycle >= 9980").await.unwrap();
            let t_count = t.elapsed();
            l.close().await;
            println!(
                "drift breakdown: open {:?} window {:?} query {:?} render {:?} ({} bytes) | sql {} rows {:?} | sql count {:?} {:?}",
                t_open, t_window - t_open, t_query - t_window, t_render - t_query, text.len(), raw.rows.len(), t_sql - t_render, t_count - t_sql, n.rows[0]
            );
        }
    }
    println!("\n{:<34} {:>7} {:>10} {:>10}  budget", "invocation (1M eval rows)", "rows", "median ms", "max ms");
    let mut over = 0;
    for (name, q) in &queries {
        let mut times = Vec::with_capacity(reps);
        let mut rows = 0;
        for _ in 0..reps {
            match time(&path, q).await {
                Ok((ms, n)) => {
                    times.push(ms);
                    rows = n;
                }
                Err(e) => {
                    eprintln!("error: {name}: {e}");
                    return 1;
                }
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let max = times[times.len() - 1];
        // `--all` returns every cycle of a 10 000-cycle run (10k-40k rows):
        // not a default invocation, timed for information only.
        let budgeted = !name.contains("--all");
        let ok = median < BUDGET_MS;
        over += usize::from(budgeted && !ok);
        let verdict = match (budgeted, ok) {
            (false, _) => "(not budgeted)",
            (true, true) => "ok",
            (true, false) => "OVER 50 ms",
        };
        println!("{name:<34} {rows:>7} {median:>10.2} {max:>10.2}  {verdict}");
    }
    if over > 0 {
        eprintln!("{over} queries over the {BUDGET_MS} ms budget");
        1
    } else {
        0
    }
}

/// One CLI-shaped invocation: open read-only, query, render, close.
async fn time(path: &Path, q: &Query) -> Result<(f64, usize), LedgerError> {
    let t = Instant::now();
    let l = Ledger::open_read_only(path).await?;
    let table = q(l.clone()).await;
    l.close().await;
    let table = table?;
    let text = table.render(Format::Table);
    std::hint::black_box(text);
    Ok((t.elapsed().as_secs_f64() * 1e3, table.rows.len()))
}
