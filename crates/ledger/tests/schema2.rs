//! Schema 2: migration of an old ledger, drift and lineage numerics on a
//! hand-built ledger, the new writers, the query API, read-only SQL, query
//! plans, concurrent readers beside a writer, and the synthetic ledger.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use evolve_ledger::synth::{synthesize, SynthOptions};
use evolve_ledger::*;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection as _;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

async fn raw_ro(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .expect("raw read-only connection")
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-12,
        (None, None) => true,
        _ => false,
    }
}

fn new_run() -> NewRun {
    NewRun {
        curriculum: "hand".into(),
        curriculum_hash: "h".into(),
        budget: "1xcpu".into(),
        preset: "tiny".into(),
        seed: 7,
        config_json: "{}".into(),
    }
}

fn suite(name: &str, n: u32, correct: u32) -> SuiteResult {
    SuiteResult { suite: name.into(), skill: name.split('/').next().unwrap().into(), level: 1, role: "mastered".into(), n, correct }
}

fn outcome(run_id: RunId, cycle: u32, status: CycleStatus, hash: Option<&str>, evals: Vec<SuiteResult>, refused: u32, over: u32) -> CycleOutcome {
    CycleOutcome {
        run_id,
        cycle,
        status,
        checkpoint_hash: hash.map(Into::into),
        evaluated_hash: hash.unwrap_or("none").into(),
        evals,
        refusal: RefusalResult { must_refuse_n: 10, refused, benign_n: 20, over_refused: over },
        training_mix: vec![],
        surgery: None,
        examples: vec![],
        examples_trained: 0,
        tokens_trained: 0,
        train_seconds: 1.0,
        reason: None,
    }
}

fn items(suite: &str, bits: &str) -> EvalItems {
    EvalItems { suite: suite.into(), items: bits.chars().map(|c| c == '1').collect() }
}

/// The hand-built run every numeric test reads:
///
/// | cycle | status   | checkpoint | parent | s/a (n=10) | s/b (n=20) | s/c (n=0) | s/d (n=2) |
/// | 0     | accepted | B          | -      | 5          | 10         | 0         | -         |
/// | 1     | accepted | C1         | B      | 6          | 5          | 0         | -         |
/// | 2     | rejected | R2         | C1     | 4          | 20         | -         | -         |
/// | 3     | accepted | C3         | C1     | 7          | -          | -         | 1         |
/// | 4     | failed   | -          | C3     | -          | -          | -         | -         |
async fn hand_built(path: &Path) -> RunId {
    let l = Ledger::open(path).await.unwrap();
    let run = l.begin_run(&new_run()).await.unwrap();
    l.start_cycle(run, 0, None).await.unwrap();
    l.commit_cycle(&outcome(run, 0, CycleStatus::Accepted, Some("B"), vec![suite("s/a", 10, 5), suite("s/b", 20, 10), suite("s/c", 0, 0)], 8, 2))
        .await
        .unwrap();
    l.start_cycle(run, 1, Some("B")).await.unwrap();
    l.commit_cycle_with(
        &outcome(run, 1, CycleStatus::Accepted, Some("C1"), vec![suite("s/a", 10, 6), suite("s/b", 20, 5), suite("s/c", 0, 0)], 9, 2),
        &CycleExtras { eval_items: vec![items("s/a", "1111110000")], ..Default::default() },
    )
    .await
    .unwrap();
    l.start_cycle(run, 2, Some("C1")).await.unwrap();
    l.commit_cycle(&outcome(run, 2, CycleStatus::Rejected, Some("R2"), vec![suite("s/a", 10, 4), suite("s/b", 20, 20)], 5, 6))
        .await
        .unwrap();
    l.start_cycle(run, 3, Some("C1")).await.unwrap();
    l.commit_cycle_with(
        &outcome(run, 3, CycleStatus::Accepted, Some("C3"), vec![suite("s/a", 10, 7), suite("s/d", 2, 1)], 10, 1),
        &CycleExtras { eval_items: vec![items("s/a", "0011111101")], ..Default::default() },
    )
    .await
    .unwrap();
    l.start_cycle(run, 4, Some("C3")).await.unwrap();
    let mut failed = outcome(run, 4, CycleStatus::Failed, None, vec![], 0, 0);
    failed.evaluated_hash = "C3".into();
    failed.refusal = RefusalResult::default();
    l.commit_cycle(&failed).await.unwrap();
    l.close().await;
    run
}

#[tokio::test]
async fn a_ledger_written_by_schema_1_migrates_and_keeps_its_data() {
    let dir = tmp();
    let path = dir.path().join("old.db");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ledger-v1.db");
    std::fs::copy(&fixture, &path).unwrap();
    let before = std::fs::read(&path).unwrap();

    // A read-only handle cannot migrate, says so, and leaves the file alone.
    let err = Ledger::open_read_only(&path).await.unwrap_err();
    assert!(matches!(err, LedgerError::Outdated { version: 2, .. }) && err.to_string().contains("open it once for writing"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // What the CLI does: upgrade on first open, then read.
    let upgraded = dir.path().join("upgraded.db");
    std::fs::copy(&fixture, &upgraded).unwrap();
    let reader = Ledger::open_upgrading(&upgraded).await.unwrap();
    assert!(reader.is_read_only());
    assert_eq!(reader.resolve_run(None).await.unwrap(), 1);
    reader.close().await;

    let l = Ledger::open(&path).await.unwrap();
    let run = l.resolve_run(None).await.unwrap();
    assert_eq!(run, 1);
    assert_eq!(l.cycles(Some(run)).await.unwrap().len(), 4);
    assert_eq!(l.evals(run, None).await.unwrap().len(), 40);
    // v_compression: the 0001 columns first and unchanged, the new ones
    // appended and NULL for rows written before them.
    let c = l.compression(run).await.unwrap();
    assert_eq!(c.len(), 8);
    assert!(c.iter().all(|r| r.lossless && r.parent_hash.is_none() && r.eval_delta.is_none() && r.ratio > 1.0));
    let w = l.window(Some(run), None).await.unwrap();
    let drift = l.drift(w, Some("reversal/L1")).await.unwrap();
    // reversal/L1: 87, 88, 88, 88 out of 100 in cycles 0..3.
    type Drift = (u32, Option<f64>, Option<f64>, Option<f64>);
    let got: Vec<Drift> =
        drift.iter().map(|d| (d.cycle, d.accuracy, d.delta_vs_parent, d.delta_vs_base)).collect();
    let want = [(0, Some(0.87), None, Some(0.0)), (1, Some(0.88), Some(0.88 - 0.87), Some(0.88 - 0.87)), (2, Some(0.88), Some(0.0), Some(0.88 - 0.87)), (3, Some(0.88), Some(0.0), Some(0.88 - 0.87))];
    assert_eq!(got.len(), 4);
    for (g, w) in got.iter().zip(want) {
        assert!(g.0 == w.0 && close(g.1, w.1) && close(g.2, w.2) && close(g.3, w.3), "{got:?}");
    }
    let lineage = l.lineage(w).await.unwrap();
    assert_eq!(lineage.iter().map(|r| r.depth).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    l.close().await;

    // Opened again: nothing left to apply, and the read-only handle works.
    let ro = Ledger::open_read_only(&path).await.unwrap();
    let t = ro.sql_read_only("SELECT COUNT(*) AS n FROM v_drift").await.unwrap();
    assert_eq!(t.rows, vec![vec![Cell::Int(40)]]);
    let mut raw = raw_ro(&path).await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version").fetch_all(&mut raw).await.unwrap();
    assert_eq!(versions, vec![1, 2, 3]);
    ro.close().await;
}

#[tokio::test]
async fn drift_deltas_are_against_parent_and_base() {
    let dir = tmp();
    let path = dir.path().join("l.db");
    let run = hand_built(&path).await;
    let l = Ledger::open_read_only(&path).await.unwrap();
    let w = l.window(Some(run), None).await.unwrap();
    let rows = l.drift(w, None).await.unwrap();
    let find = |cycle: u32, s: &str| rows.iter().find(|r| r.cycle == cycle && r.suite == s).unwrap_or_else(|| panic!("no drift row {cycle} {s}: {rows:?}"));
    let check = |cycle: u32, s: &str, acc: Option<f64>, dp: Option<f64>, db: Option<f64>| {
        let r = find(cycle, s);
        assert!(close(r.accuracy, acc) && close(r.delta_vs_parent, dp) && close(r.delta_vs_base, db), "cycle {cycle} {s}: {r:?}");
    };
    check(0, "s/a", Some(0.5), None, Some(0.0));
    check(0, "s/c", None, None, None); // n = 0: no accuracy, no deltas
    check(1, "s/a", Some(0.6), Some(0.1), Some(0.1));
    check(1, "s/b", Some(0.25), Some(-0.25), Some(-0.25));
    check(1, "s/c", None, None, None);
    // The rejected candidate is compared with its parent C1, not with cycle 1's row by number.
    check(2, "s/a", Some(0.4), Some(-0.2), Some(-0.1));
    check(2, "s/b", Some(1.0), Some(0.75), Some(0.5));
    // Cycle 3's parent is C1 (cycle 1), not the rejected cycle 2.
    check(3, "s/a", Some(0.7), Some(0.1), Some(0.2));
    // A suite the parent and base never saw: accuracy, no deltas.
    check(3, "s/d", Some(0.5), None, None);
    assert_eq!(rows.len(), 3 + 3 + 2 + 2, "the failed cycle has no drift rows: {rows:?}");
    assert_eq!(find(2, "s/a").status, "rejected");
    assert_eq!(find(3, "s/a").parent_hash.as_deref(), Some("C1"));

    // Suite filter and window give the same numbers for fewer rows.
    let only = l.drift(l.window(Some(run), Some(2)).await.unwrap(), Some("s/a")).await.unwrap();
    assert_eq!(only.iter().map(|r| r.cycle).collect::<Vec<_>>(), vec![3], "last 2 cycles are 3 and 4; 4 failed");
    assert!(close(only[0].delta_vs_parent, Some(0.1)));

    // The API's own query and the public view agree on every column.
    assert_eq!(Table::from_rows(&rows), view_drift(&l, run).await);

    // The public view says the same as the API.
    let t = l.sql_read_only("SELECT cycle, suite, delta_vs_parent, delta_vs_base FROM v_drift WHERE suite = 's/b' ORDER BY cycle").await.unwrap();
    assert_eq!(t.columns, vec!["cycle", "suite", "delta_vs_parent", "delta_vs_base"]);
    assert_eq!(t.rows.len(), 3);
    assert_eq!(t.rows[0][2], Cell::Null);
    assert!(close(t.rows[2][2].as_f64(), Some(0.75)));
    l.close().await;
}

#[tokio::test]
async fn a_ledger_without_runs_says_so() {
    let dir = tmp();
    let path = dir.path().join("empty.db");
    Ledger::open(&path).await.unwrap().close().await;
    let l = Ledger::open_read_only(&path).await.unwrap();
    let err = l.window(None, Some(20)).await.unwrap_err();
    assert!(matches!(err, LedgerError::NoRuns { .. }) && err.to_string().contains(path.to_str().unwrap()), "{err}");
    l.close().await;
}

/// v_drift for a whole run, in the API's column order and row order.
async fn view_drift(l: &Ledger, run: RunId) -> Table {
    l.sql_read_only(&format!(
        "SELECT run_id, cycle, suite, accuracy, delta_vs_parent, delta_vs_base, status, checkpoint_hash,
                parent_hash, parent_accuracy, base_accuracy, role
         FROM v_drift WHERE run_id = {run} ORDER BY cycle, checkpoint_hash, suite"
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn lineage_has_depths_and_rejected_leaves() {
    let dir = tmp();
    let path = dir.path().join("l.db");
    let run = hand_built(&path).await;
    let l = Ledger::open_read_only(&path).await.unwrap();
    let rows = l.lineage(l.window(Some(run), None).await.unwrap()).await.unwrap();
    let got: Vec<(&str, Option<&str>, u32, &str, u32)> =
        rows.iter().map(|r| (r.checkpoint_hash.as_str(), r.parent_hash.as_deref(), r.cycle, r.status.as_str(), r.depth)).collect();
    assert_eq!(
        got,
        vec![("B", None, 0, "accepted", 0), ("C1", Some("B"), 1, "accepted", 1), ("R2", Some("C1"), 2, "rejected", 2), ("C3", Some("C1"), 3, "accepted", 2)]
    );
    // The public view (all runs) agrees with the per-run query.
    let t = l.sql_read_only("SELECT checkpoint_hash, depth FROM v_lineage ORDER BY cycle").await.unwrap();
    let view: Vec<(String, i64)> = t.rows.iter().map(|r| match (&r[0], &r[1]) {
        (Cell::Text(h), Cell::Int(d)) => (h.clone(), *d),
        other => panic!("{other:?}"),
    }).collect();
    assert_eq!(view, rows.iter().map(|r| (r.checkpoint_hash.clone(), i64::from(r.depth))).collect::<Vec<_>>());
    l.close().await;
}

#[tokio::test]
async fn diff_reports_deltas_and_flipped_items() {
    let dir = tmp();
    let path = dir.path().join("l.db");
    let run = hand_built(&path).await;
    let l = Ledger::open_read_only(&path).await.unwrap();
    let d = l.diff(run, 1, 3).await.unwrap();
    assert_eq!((d.checkpoint_a.as_deref(), d.checkpoint_b.as_deref()), (Some("C1"), Some("C3")));
    let s = |name: &str| d.suites.iter().find(|s| s.suite == name).unwrap();
    let a = s("s/a");
    assert!(close(a.delta, Some(0.1)));
    // 1111110000 -> 0011111101: items 0 and 1 lost, items 6, 7 and 9 gained.
    assert_eq!((a.items_compared, a.flipped_to_right, a.flipped_to_wrong), (10, 3, 2));
    assert_eq!((a.to_right_items.clone(), a.to_wrong_items.clone()), (vec![6, 7, 9], vec![0, 1]));
    assert!(s("s/b").delta.is_none() && close(s("s/b").accuracy_a, Some(0.25)) && s("s/b").items_compared == 0);
    assert!(close(s("s/d").accuracy_b, Some(0.5)) && s("s/d").accuracy_a.is_none());
    assert!(close(d.refusal.delta, Some(0.1)) && close(d.over_refusal.delta, Some(-0.05)));
    let t = d.table();
    assert_eq!(t.rows.len(), 4 + 2);
    assert_eq!(t.rows[4][0], Cell::Text("[refusal]".into()));
    assert_eq!(t.rows[0][t.column("to_right_items").unwrap()], Cell::Text("6 7 9".into()));

    // A failed cycle contributes nothing, an unknown one is an error naming it.
    let f = l.diff(run, 3, 4).await.unwrap();
    assert!(f.checkpoint_b.is_none() && f.suites.iter().all(|s| s.accuracy_b.is_none()));
    let err = l.diff(run, 1, 9).await.unwrap_err();
    assert!(matches!(err, LedgerError::UnknownCycle { cycle: 9, .. }) && err.to_string().contains("no cycle 9"), "{err}");
    let err = l.diff(run + 5, 1, 3).await.unwrap_err();
    assert!(matches!(err, LedgerError::UnknownRun { .. }), "{err}");
    l.close().await;
}

#[tokio::test]
async fn bad_eval_items_are_refused_and_nothing_is_committed() {
    let dir = tmp();
    let path = dir.path().join("l.db");
    let l = Ledger::open(&path).await.unwrap();
    let run = l.begin_run(&new_run()).await.unwrap();
    l.start_cycle(run, 0, None).await.unwrap();
    let o = outcome(run, 0, CycleStatus::Accepted, Some("B"), vec![suite("s/a", 4, 2)], 1, 1);
    for (extra, needle) in [
        (CycleExtras { eval_items: vec![items("s/a", "111")], ..Default::default() }, "3 items"),
        (CycleExtras { eval_items: vec![items("s/a", "1110")], ..Default::default() }, "3 right"),
        (CycleExtras { eval_items: vec![items("s/zz", "1100")], ..Default::default() }, "'s/zz'"),
        (CycleExtras { eval_items: vec![items("s/a", "1100"), items("s/a", "1100")], ..Default::default() }, "twice"),
        (
            CycleExtras {
                role_usage: vec![RoleUsage { run_id: run, cycle: 0, role: "trainer".into(), worker: "w".into(), busy_seconds: -1.0, ..Default::default() }],
                ..Default::default()
            },
            "busy_seconds = -1",
        ),
        (
            CycleExtras {
                proxy_gap: vec![ProxyGapRecord { run_id: run, cycle: 0, skill: "add".into(), n: 5, auc: Some(1.5), calibration_error: None }],
                ..Default::default()
            },
            "auc = 1.5",
        ),
    ] {
        let err = l.commit_cycle_with(&o, &extra).await.unwrap_err();
        assert!(matches!(err, LedgerError::Invalid { .. }) && err.to_string().contains(needle), "{needle}: {err}");
        assert_eq!(l.cycles(Some(run)).await.unwrap()[0].status, "running");
        assert!(l.evals(run, None).await.unwrap().is_empty());
    }
    l.commit_cycle_with(&o, &CycleExtras { eval_items: vec![items("s/a", "0101")], ..Default::default() }).await.unwrap();
    let ro = Ledger::open_read_only(&path).await.unwrap();
    let t = ro.sql_read_only("SELECT item, correct FROM v_eval_items ORDER BY item").await.unwrap();
    assert_eq!(t.rows.iter().map(|r| r[1].clone()).collect::<Vec<_>>(), vec![Cell::Int(0), Cell::Int(1), Cell::Int(0), Cell::Int(1)]);
    ro.close().await;
    l.close().await;
}

#[tokio::test]
async fn compression_quantized_budget_and_proxy_gap_round_trip() {
    let dir = tmp();
    let path = dir.path().join("l.db");
    let run = hand_built(&path).await;
    let l = Ledger::open(&path).await.unwrap();
    let rec = |codec: &str, lossless: bool| CompressionRecord {
        run_id: run,
        cycle: 3,
        checkpoint_hash: "C3".into(),
        codec: codec.into(),
        raw_bytes: 1000,
        stored_bytes: 250,
        encode_ms: 1.0,
        decode_ms: 2.0,
        lossless,
        verified_hash: "C3".into(),
        path: "p".into(),
    };
    l.record_compression_with(&rec("delta-zstd", true), &CompressionExtras { parent_hash: Some("C1".into()), ..Default::default() }).await.unwrap();
    let q = |suite: &str, n, correct, lossless_correct| QuantizedEval { suite: suite.into(), n, correct, lossless_correct };
    // eval_delta not given: the mean of (-2/10) and (+1/20) over suites with n > 0.
    l.record_compression_with(&rec("int8", false), &CompressionExtras { quantized_evals: vec![q("s/a", 10, 5, 7), q("s/d", 20, 11, 10), q("s/e", 0, 0, 0)], ..Default::default() })
        .await
        .unwrap();
    let err = l
        .record_compression_with(&rec("zstd", true), &CompressionExtras { eval_delta: Some(0.0), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lossless row has no eval_delta"), "{err}");
    let err = l
        .record_compression_with(&rec("int4", false), &CompressionExtras { quantized_evals: vec![q("s/a", 10, 11, 0)], ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must be <= n"), "{err}");

    let usage = |role: &str, worker: &str, busy: f64, cost: f64| RoleUsage {
        run_id: run,
        cycle: 3,
        role: role.into(),
        worker: worker.into(),
        device: "RTX4090".into(),
        busy_seconds: busy,
        idle_seconds: 10.0,
        gpu_seconds: busy + 10.0,
        cost_usd: cost,
        leases: 2,
        failures: 1,
    };
    l.record_role_usage(&[usage("trainer", "t0", 30.0, 0.5), usage("trainer", "t1", 50.0, 0.25), usage("generator", "g0", 0.0, 0.0)]).await.unwrap();
    // Re-reporting a worker replaces its row.
    l.record_role_usage(&[usage("trainer", "t1", 70.0, 0.25)]).await.unwrap();
    let err = l.record_role_usage(&[RoleUsage { run_id: run + 9, cycle: 0, role: "x".into(), ..Default::default() }]).await.unwrap_err();
    assert!(matches!(err, LedgerError::UnknownRun { .. }), "{err}");
    l.record_proxy_gap(&[ProxyGapRecord { run_id: run, cycle: 3, skill: "s".into(), n: 50, auc: Some(0.8), calibration_error: Some(0.1) }]).await.unwrap();
    l.close().await;

    let l = Ledger::open_read_only(&path).await.unwrap();
    let w = l.window(Some(run), None).await.unwrap();
    let c = l.compression_in(w).await.unwrap();
    let delta = c.iter().find(|r| r.codec == "delta-zstd").unwrap();
    assert_eq!((delta.parent_hash.as_deref(), delta.eval_delta, delta.ratio), (Some("C1"), None, 4.0));
    let int8 = c.iter().find(|r| r.codec == "int8").unwrap();
    assert!(close(int8.eval_delta, Some((-0.2 + 0.05) / 2.0)), "{int8:?}");
    let qrows = l.quantized(w, None).await.unwrap();
    assert_eq!(qrows.len(), 3);
    assert!(close(qrows[0].delta, Some(-0.2)) && close(qrows[0].lossless_accuracy, Some(0.7)));
    assert!(qrows.iter().find(|q| q.suite == "s/e").unwrap().delta.is_none(), "n = 0: no delta");
    assert_eq!(l.quantized(w, Some("s/d")).await.unwrap().len(), 1);

    let b = l.budget(w).await.unwrap();
    let trainer = b.iter().find(|r| r.role == "trainer").unwrap();
    assert_eq!((trainer.busy_seconds, trainer.gpu_seconds, trainer.cost_usd, trainer.workers, trainer.leases, trainer.failures), (100.0, 120.0, 0.75, 2, 4, 2));
    assert!(close(trainer.utilization, Some(100.0 / 120.0)));
    let generator = b.iter().find(|r| r.role == "generator").unwrap();
    assert!(close(generator.utilization, Some(0.0)));
    let g = l.proxy_gap(w).await.unwrap();
    assert_eq!((g.len(), g[0].auc, g[0].calibration_error), (1, Some(0.8), Some(0.1)));
    l.close().await;
}

fn digest(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read ledger")
}

#[tokio::test]
async fn read_only_sql_refuses_writes_and_leaves_the_file_byte_identical() {
    let dir = tmp();
    let path = dir.path().join("l.db");
    hand_built(&path).await;
    let before = digest(&path);
    let l = Ledger::open_read_only(&path).await.unwrap();
    let side = dir.path().join("side.db");
    for (sql, needle) in [
        ("INSERT INTO runs (curriculum, curriculum_hash, budget, preset, seed, config_json) VALUES ('a','b','c','d',1,'{}')", "INSERT"),
        ("UPDATE cycles SET status = 'accepted'", "UPDATE"),
        ("DELETE FROM evals", "DELETE"),
        ("DROP VIEW v_drift", "DROP"),
        ("CREATE TABLE x (a)", "CREATE"),
        ("REPLACE INTO proxy_gap VALUES (1, 0, 's', 1, NULL, NULL)", "REPLACE"),
        (&format!("ATTACH DATABASE '{}' AS side", side.display()), "ATTACH"),
        ("PRAGMA user_version = 5", "PRAGMA"),
        ("PRAGMA journal_mode=DELETE", "PRAGMA"),
        ("PRAGMA journal_mode(DELETE)", "PRAGMA"),
        ("PRAGMA query_only(0)", "PRAGMA"),
        ("VACUUM", "VACUUM"),
        ("SELECT 1; DELETE FROM evals", "2 statements"),
        ("SELECT 1; SELECT 2", "2 statements"),
        ("WITH x AS (SELECT 1) DELETE FROM evals", "would write"),
        ("   ", "empty"),
    ] {
        let err = l.sql_read_only(sql).await.unwrap_err();
        assert!(matches!(err, LedgerError::Query { .. }), "{sql}: {err:?}");
        assert!(err.to_string().contains(needle) && err.to_string().contains(path.to_str().unwrap()), "{sql}: {err}");
    }
    let err = l.sql_read_only("SELEC * FROM evals").await.unwrap_err();
    assert!(err.to_string().contains("refused a non-query") || err.to_string().contains("SELEC"), "{err}");
    let err = l.sql_read_only("SELECT * FROM no_such_table").await.unwrap_err();
    assert!(err.to_string().contains("SQL error") && err.to_string().contains("no_such_table"), "{err}");
    let err = l.sql_read_only("SELECT * FROM evals WHERE").await.unwrap_err();
    assert!(err.to_string().contains("SQL error"), "{err}");
    // Queries, including a trailing semicolon and comments, work.
    let t = l.sql_read_only("-- per status\nSELECT status, COUNT(*) AS n FROM v_cycles GROUP BY status ORDER BY status;").await.unwrap();
    assert_eq!(t.columns, vec!["status", "n"]);
    assert_eq!(t.rows.len(), 3);
    let empty = l.sql_read_only("SELECT run_id, cycle FROM v_drift WHERE 0").await.unwrap();
    assert_eq!((empty.columns.len(), empty.rows.len()), (2, 0));
    let pragma = l.sql_read_only("PRAGMA table_info(v_drift)").await.unwrap();
    assert!(pragma.rows.len() >= 6);
    l.close().await;
    assert_eq!(digest(&path), before, "the ledger changed");
    assert!(!side.exists(), "ATTACH created a file");

    // A writable handle is not where arbitrary SQL runs.
    let rw = Ledger::open(&path).await.unwrap();
    assert!(rw.sql_read_only("SELECT 1").await.is_err());
    rw.close().await;
}

#[tokio::test]
async fn corrupt_and_foreign_files_are_refused_untouched() {
    let dir = tmp();
    let path = dir.path().join("l.db");
    hand_built(&path).await;
    // Corrupt every page after the first (the schema page): the file still
    // looks like a ledger until a query reads the damaged pages.
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    for b in bytes[page..].iter_mut() {
        *b ^= 0x5A;
    }
    std::fs::write(&path, &bytes).unwrap();
    match Ledger::open_read_only(&path).await {
        Err(e) => assert!(e.to_string().contains(path.to_str().unwrap()), "{e}"),
        Ok(l) => {
            let err = l.sql_read_only("SELECT COUNT(*) FROM evals").await.unwrap_err();
            assert!(err.to_string().contains(path.to_str().unwrap()) && err.to_string().contains("corrupt"), "{err}");
            l.close().await;
        }
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    let foreign = dir.path().join("foreign.db");
    {
        let mut c = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&foreign).create_if_missing(true)).await.unwrap();
        sqlx::query("CREATE TABLE notes (t TEXT)").execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    }
    let before = std::fs::read(&foreign).unwrap();
    let err = Ledger::open_read_only(&foreign).await.unwrap_err();
    assert!(matches!(err, LedgerError::NotALedger { .. }) && err.to_string().contains("notes"), "{err}");
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
}

#[tokio::test]
async fn hot_queries_never_scan_a_table() {
    let dir = tmp();
    // Synth runs ANALYZE; a controller-written ledger has no statistics.
    // Both must plan index lookups.
    let analyzed = dir.path().join("s.db");
    synthesize(&analyzed, &SynthOptions { cycles: 60, suites: 10, seed: 3, item_cycles: 5 }).await.unwrap();
    let plain = dir.path().join("h.db");
    hand_built(&plain).await;
    for path in [plain, analyzed] {
        check_plans(&path).await;
    }
}

async fn check_plans(path: &Path) {
    let l = Ledger::open_read_only(path).await.unwrap();
    let plans = l.query_plans().await.unwrap();
    assert!(plans.len() >= 10);
    for (name, plan) in &plans {
        // Scanning a subquery's or CTE's own result (a co-routine, e.g. the
        // aggregated v_budget after the run/cycle filter was pushed into
        // it, or the recursive queue "tree", aliased "t" in its recursive
        // step) is not a table scan.
        let mut derived: Vec<String> = plan
            .iter()
            .filter_map(|l| l.strip_prefix("CO-ROUTINE ").or_else(|| l.strip_prefix("MATERIALIZE ")))
            .map(|n| n.split_whitespace().next().unwrap_or("").to_string())
            .collect();
        derived.extend(["t".to_string(), "CONSTANT".to_string()]);
        for line in plan {
            if let Some(rest) = line.strip_prefix("SCAN ") {
                let what = rest.split_whitespace().next().unwrap_or("");
                assert!(derived.iter().any(|d| d == what), "{name} scans a table: {line}\n{plan:#?}");
            }
        }
    }
    let plan = |n: &str| plans.iter().find(|p| p.0 == n).unwrap().1.join("\n");
    assert!(plan("drift").contains("SEARCH e USING"), "{}", plan("drift"));
    assert!(plan("drift --suite").contains("evals_by_suite"), "{}", plan("drift --suite"));
    assert!(plan("drift").contains("evals_by_checkpoint"), "parent lookup: {}", plan("drift"));
    assert!(plan("diff items").contains("SEARCH a USING PRIMARY KEY") || plan("diff items").contains("SEARCH a USING INDEX"), "{}", plan("diff items"));
    l.close().await;
}

#[tokio::test]
async fn synth_writes_a_consistent_ledger_and_refuses_to_overwrite() {
    let dir = tmp();
    let path = dir.path().join("s.db");
    let s = synthesize(&path, &SynthOptions { cycles: 400, suites: 12, seed: 11, item_cycles: 7 }).await.unwrap();
    assert_eq!(s.accepted + s.rejected + s.failed + 1, 400);
    assert!(s.accepted > 50 && s.rejected > 20, "{s:?}");
    assert_eq!(s.eval_rows, u64::from(400 - s.failed) * 12);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");

    let l = Ledger::open_read_only(&path).await.unwrap();
    let count = |sql: &'static str| {
        let l = l.clone();
        async move {
            match l.sql_read_only(sql).await.unwrap().rows[0][0] {
                Cell::Int(n) => n,
                ref c => panic!("{c:?}"),
            }
        }
    };
    assert_eq!(count("SELECT COUNT(*) FROM evals").await as u64, s.eval_rows);
    assert_eq!(count("SELECT COUNT(*) FROM eval_items").await as u64, s.item_rows);
    assert_eq!(count("SELECT COUNT(*) FROM pragma_foreign_key_check").await, 0);
    // The accepted chain is as deep as the number of accepted cycles.
    let w = l.window(None, None).await.unwrap();
    let lineage = l.lineage(w).await.unwrap();
    let deepest = lineage.iter().filter(|r| r.status == "accepted").map(|r| r.depth).max().unwrap();
    assert_eq!(deepest, s.accepted);
    assert_eq!(lineage.iter().filter(|r| r.status == "rejected").count() as u32, s.rejected);
    // The drift API equals the public view over every cycle, rejected and
    // failed ones included, and the lineage API equals v_lineage.
    assert_eq!(Table::from_rows(&l.drift(w, None).await.unwrap()), view_drift(&l, w.run_id).await);
    let view_lineage = l
        .sql_read_only("SELECT checkpoint_hash, parent_hash, cycle, status, depth, run_id FROM v_lineage ORDER BY cycle")
        .await
        .unwrap();
    assert_eq!(Table::from_rows(&lineage), view_lineage);
    // Every view answers, with plausible numbers.
    let drift = l.drift(l.window(None, Some(20)).await.unwrap(), None).await.unwrap();
    assert!(!drift.is_empty() && drift.iter().all(|d| d.cycle >= 380 && d.delta_vs_base.is_some()));
    let d = l.diff(w.run_id, 393, 399).await.unwrap();
    assert!(d.suites.iter().any(|s| s.items_compared > 0), "{d:?}");
    assert!(!l.budget(w).await.unwrap().is_empty() && !l.quantized(w, None).await.unwrap().is_empty());
    assert_eq!(l.latest_run().await.unwrap().unwrap().status, "finished");
    l.close().await;

    let before = std::fs::read(&path).unwrap();
    let err = synthesize(&path, &SynthOptions { cycles: 5, suites: 2, seed: 0, item_cycles: 0 }).await.unwrap_err();
    assert!(matches!(err, LedgerError::Exists { .. }) && err.to_string().contains(path.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let err = synthesize(&dir.path().join("z.db"), &SynthOptions { cycles: 0, ..Default::default() }).await.unwrap_err();
    assert!(err.to_string().contains("cycles = 0"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_do_not_block_the_writer() {
    let dir = tmp();
    let path = dir.path().join("l.db");
    let writer = Ledger::open(&path).await.unwrap();
    let run = writer.begin_run(&new_run()).await.unwrap();
    let suites: Vec<SuiteResult> = (0..50).map(|i| suite(&format!("s/{i}"), 10, (i % 11) as u32)).collect();
    writer.commit_cycle(&outcome(run, 0, CycleStatus::Accepted, Some("h0"), suites.clone(), 5, 5)).await.unwrap();

    let reader = Ledger::open_read_only(&path).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = {
        let (reader, stop) = (reader.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let w = reader.window(Some(run), Some(5)).await.unwrap();
                let d = reader.drift(w, None).await.unwrap();
                let all = reader.sql_read_only("SELECT COUNT(*) FROM evals").await.unwrap();
                seen.push((d.len(), all.rows[0][0].clone()));
            }
            seen
        })
    };
    let mut slowest = Duration::ZERO;
    for cycle in 1..=60u32 {
        let t = Instant::now();
        let parent = format!("h{}", cycle - 1);
        writer.start_cycle(run, cycle, Some(&parent)).await.unwrap();
        writer.commit_cycle(&outcome(run, cycle, CycleStatus::Accepted, Some(&format!("h{cycle}")), suites.clone(), 5, 5)).await.unwrap();
        slowest = slowest.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reading.await.unwrap();
    assert!(seen.len() > 5, "the reader made progress: {}", seen.len());
    // Counts only ever grow: every read saw a committed state, never a partial cycle.
    let counts: Vec<i64> = seen.iter().map(|s| match s.1 { Cell::Int(n) => n, _ => -1 }).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]) && counts.iter().all(|n| n % 50 == 0), "{counts:?}");
    assert!(slowest < Duration::from_secs(2), "a commit waited {slowest:?} behind readers");
    reader.close().await;
    writer.close().await;
    let l = Ledger::open_read_only(&path).await.unwrap();
    let last = l.drift(l.window(Some(run), Some(1)).await.unwrap(), None).await.unwrap();
    assert_eq!(last.len(), 50);
    assert!(last.iter().all(|d| d.delta_vs_parent == Some(0.0)));
    l.close().await;
}
