//! `evolve report`: the ledger's view of one run, as a self-contained HTML page with SVG plots.
//! This module only moves rows from the ledger's query API into `evolve_report::ReportData`.

use std::path::Path;

use evolve_ledger::Ledger;
use evolve_report::{BudgetPoint, CompressionPoint, CyclePoint, MixPoint, ProxyGapPoint, RefusalPoint, ReportData, RunSummary, SuitePoint};

pub async fn execute(ledger_path: &Path, run: Option<i64>, out: &Path) -> Result<(), String> {
    let ledger = Ledger::open_upgrading(ledger_path).await.map_err(|e| e.to_string())?;
    let data = gather(&ledger, run).await.map_err(|e| e.to_string());
    ledger.close().await;
    let data = data?;
    let page = evolve_report::write_report(out, &data).map_err(|e| e.to_string())?;
    println!("report of run {} ({} cycles) written to {}", data.run.run_id, data.cycles.len(), page.display());
    Ok(())
}

async fn gather(ledger: &Ledger, run: Option<i64>) -> Result<ReportData, evolve_ledger::LedgerError> {
    let window = ledger.window(run, None).await?;
    let run_id = window.run_id;
    let info = ledger.run(run_id).await?.expect("window() resolved an existing run");
    let cycles = ledger.cycles_in(window).await?;
    // The suites of a cycle are those measured on the checkpoint the cycle row names.
    let evaluated: std::collections::HashMap<u32, Option<String>> = cycles.iter().map(|c| (c.cycle, c.checkpoint_hash.clone())).collect();
    let suites = ledger
        .evals(run_id, None)
        .await?
        .into_iter()
        .filter(|e| evaluated.get(&e.cycle).is_some_and(|h| h.as_deref() == Some(e.checkpoint_hash.as_str())))
        .map(|e| SuitePoint { suite: e.suite, skill: e.skill, role: e.role, cycle: e.cycle, accuracy: e.accuracy })
        .collect();
    Ok(ReportData {
        run: RunSummary {
            run_id,
            curriculum: info.curriculum,
            budget: info.budget,
            preset: info.preset,
            status: info.status,
            started_at: info.started_at,
            finished_at: info.finished_at,
            stop_reason: info.stop_reason,
        },
        cycles: cycles
            .iter()
            .map(|c| CyclePoint { cycle: c.cycle, status: c.status.clone(), checkpoint_hash: c.checkpoint_hash.clone(), examples_trained: c.examples_trained as i64 })
            .collect(),
        suites,
        refusal: ledger
            .refusal(run_id)
            .await?
            .into_iter()
            .map(|r| RefusalPoint { cycle: r.cycle, refusal_rate: Some(r.refusal_rate), over_refusal_rate: Some(r.over_refusal_rate) })
            .collect(),
        proxy_gap: ledger
            .proxy_gap(window)
            .await?
            .into_iter()
            .map(|g| ProxyGapPoint { cycle: g.cycle, skill: g.skill, auc: g.auc, calibration_error: g.calibration_error })
            .collect(),
        training_mix: ledger
            .training_mix(run_id, None)
            .await?
            .into_iter()
            .map(|m| MixPoint { cycle: m.cycle, skill: m.skill, examples: m.examples as i64, share: Some(m.share) })
            .collect(),
        compression: ledger
            .compression(run_id)
            .await?
            .into_iter()
            .map(|c| CompressionPoint { cycle: c.cycle, codec: c.codec, ratio: Some(c.ratio), lossless: c.lossless })
            .collect(),
        budget: ledger
            .budget(window)
            .await?
            .into_iter()
            .map(|b| BudgetPoint { cycle: b.cycle, role: b.role, gpu_seconds: b.gpu_seconds, busy_seconds: b.busy_seconds, cost_usd: b.cost_usd })
            .collect(),
    })
}
