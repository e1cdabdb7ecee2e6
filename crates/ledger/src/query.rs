//! Reading the ledger the way researchers do: windows of recent cycles,
//! drift, lineage, budget, refusal, compression, quantized evaluations, the
//! proxy gap, the difference between two cycles, and arbitrary read-only
//! SQL. Every windowed query is an index range over (run_id, cycle), so its
//! cost depends on the window, not on the size of the ledger.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Column as _, Executor as _, Row as _, SqlSafeStr as _, Statement as _, TypeInfo as _, ValueRef as _};

use crate::table::{table_row, Cell, Table};
use crate::{compression_row, cycle_row, refusal_row, CompressionRow, CycleRow, Ledger, LedgerError, RefusalRow, RunId};

/// Which cycles of which run a query covers: `first_cycle..` of `run_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub run_id: RunId,
    pub first_cycle: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub suite: String,
    pub accuracy: Option<f64>,
    pub delta_vs_parent: Option<f64>,
    pub delta_vs_base: Option<f64>,
    pub status: String,
    pub checkpoint_hash: String,
    pub parent_hash: Option<String>,
    pub parent_accuracy: Option<f64>,
    pub base_accuracy: Option<f64>,
    pub role: String,
}
table_row!(DriftRow {
    run_id, cycle, suite, accuracy, delta_vs_parent, delta_vs_base, status, checkpoint_hash,
    parent_hash, parent_accuracy, base_accuracy, role
});

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LineageRow {
    pub checkpoint_hash: String,
    pub parent_hash: Option<String>,
    pub cycle: u32,
    pub status: String,
    pub depth: u32,
    pub run_id: RunId,
}
table_row!(LineageRow { checkpoint_hash, parent_hash, cycle, status, depth, run_id });

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub role: String,
    pub gpu_seconds: f64,
    pub busy_seconds: f64,
    pub cost_usd: f64,
    pub idle_seconds: f64,
    pub leases: i64,
    pub failures: i64,
    pub workers: i64,
    pub utilization: Option<f64>,
}
table_row!(BudgetRow {
    run_id, cycle, role, gpu_seconds, busy_seconds, cost_usd, idle_seconds, leases, failures,
    workers, utilization
});

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantizedRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub checkpoint_hash: String,
    pub codec: String,
    pub suite: String,
    pub accuracy: Option<f64>,
    pub lossless_accuracy: Option<f64>,
    pub delta: Option<f64>,
    pub n: u32,
    pub correct: u32,
    pub lossless_correct: u32,
}
table_row!(QuantizedRow {
    run_id, cycle, checkpoint_hash, codec, suite, accuracy, lossless_accuracy, delta, n, correct,
    lossless_correct
});

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyGapRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub skill: String,
    pub n: u32,
    pub auc: Option<f64>,
    pub calibration_error: Option<f64>,
}
table_row!(ProxyGapRow { run_id, cycle, skill, n, auc, calibration_error });

/// One row of `v_curriculum_policy`.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub skill: String,
    pub level: u32,
    pub pass_rate: Option<f64>,
    pub progress: Option<f64>,
    pub weight: f64,
    pub reason: String,
}
table_row!(PolicyRow { run_id, cycle, skill, level, pass_rate, progress, weight, reason });

table_row!(CycleRow {
    run_id, cycle, status, parent_hash, checkpoint_hash, started_at, finished_at, examples_trained,
    reason
});
table_row!(RefusalRow {
    run_id, cycle, checkpoint_hash, must_refuse_n, refused, refusal_rate, benign_n, over_refused,
    over_refusal_rate
});
table_row!(CompressionRow {
    run_id, cycle, checkpoint_hash, codec, raw_bytes, stored_bytes, ratio, encode_ms, decode_ms,
    lossless, parent_hash, eval_delta
});

/// One suite in [`CycleDiff`]. Items are indices into the frozen suite;
/// they are compared only where both cycles recorded per-item correctness.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SuiteDiff {
    pub suite: String,
    pub accuracy_a: Option<f64>,
    pub accuracy_b: Option<f64>,
    /// b minus a.
    pub delta: Option<f64>,
    /// Items recorded in both cycles (0: no per-item data to compare).
    pub items_compared: u32,
    pub flipped_to_right: u32,
    pub flipped_to_wrong: u32,
    pub to_right_items: Vec<u32>,
    pub to_wrong_items: Vec<u32>,
}
table_row!(SuiteDiff {
    suite, accuracy_a, accuracy_b, delta, items_compared, flipped_to_right, flipped_to_wrong,
    to_right_items, to_wrong_items
});

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RateDiff {
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// b minus a.
    pub delta: Option<f64>,
}

/// What changed from cycle `a` to cycle `b` of a run, each measured on the
/// checkpoint its cycle recorded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CycleDiff {
    pub run_id: RunId,
    pub cycle_a: u32,
    pub cycle_b: u32,
    pub checkpoint_a: Option<String>,
    pub checkpoint_b: Option<String>,
    pub suites: Vec<SuiteDiff>,
    pub refusal: RateDiff,
    pub over_refusal: RateDiff,
}

impl CycleDiff {
    /// The suites, then the refusal and over-refusal rates as two rows named
    /// `[refusal]` and `[over-refusal]`, so a diff prints like every other
    /// answer.
    pub fn table(&self) -> Table {
        let mut t = Table::from_rows(&self.suites);
        for (name, r) in [("[refusal]", &self.refusal), ("[over-refusal]", &self.over_refusal)] {
            let mut row = vec![Cell::from(name), Cell::from(r.a), Cell::from(r.b), Cell::from(r.delta)];
            row.resize(t.columns.len(), Cell::Null);
            t.rows.push(row);
        }
        t
    }
}

// Each windowed query in two static forms, with and without a suite, rather
// than `(?3 IS NULL OR suite = ?3)`: SQLite plans a statement once, before
// the binding is known, and the OR form can never use the suite index.
// v_drift's definition for one run's window, shaped for speed, with the
// same numbers (a test checks the rows equal the view's):
// - one result row per cycle, its suites aggregated by SQLite into a JSON
//   array: moving rows out of SQLite one by one costs more than computing
//   them, and a cycle has ~100 suites;
// - counts travel as integers (n * 2^32 + correct for the parent and base,
//   exact in JSON) and accuracies and deltas are computed in Rust with the
//   same f64 operations the view does in SQL (JSON text would round reals);
// - the base checkpoint is an uncorrelated subquery, evaluated once per
//   statement, and each comparison is one index lookup used once.
macro_rules! drift_select {
    ($evals:literal) => {
        concat!("SELECT e.cycle, c.status, e.checkpoint_hash, c.parent_hash,
                json_group_array(json_array(e.suite, e.role, e.n, e.correct,
                    (SELECT q.n * 4294967296 + q.correct
                       FROM evals AS q
                      WHERE q.run_id = ?1 AND q.checkpoint_hash = c.parent_hash AND q.suite = e.suite
                        AND q.cycle < e.cycle
                      ORDER BY q.cycle DESC LIMIT 1),
                    (SELECT b.n * 4294967296 + b.correct
                       FROM evals AS b
                      WHERE b.run_id = ?1 AND b.cycle = 0 AND b.suite = e.suite
                        AND b.checkpoint_hash = (SELECT checkpoint_hash FROM cycles
                                                  WHERE run_id = ?1 AND cycle = 0)))) AS suites
         FROM ", $evals, "
         JOIN cycles AS c ON c.run_id = e.run_id AND c.cycle = e.cycle
         WHERE e.run_id = ?1 AND e.cycle >= ?2
           AND (c.checkpoint_hash IS NULL OR e.checkpoint_hash = c.checkpoint_hash)")
    };
}
const DRIFT: &str =
    concat!(drift_select!("evals AS e"), " GROUP BY e.cycle, e.checkpoint_hash ORDER BY e.cycle, e.checkpoint_hash");
// INDEXED BY: grouping by cycle tempts the planner into the (run, cycle)
// range, which for `--suite --all` walks every eval of the run; one suite's
// history is a range of evals_by_suite.
const DRIFT_SUITE: &str = concat!(
    drift_select!("evals AS e INDEXED BY evals_by_suite"),
    " AND e.suite = ?3 GROUP BY e.cycle, e.checkpoint_hash ORDER BY e.cycle, e.checkpoint_hash"
);

/// One suite of a cycle as [`DRIFT`] aggregates it: suite, role, n, correct,
/// and the parent's and base's counts packed as n * 2^32 + correct.
type DriftSuite = (String, String, i64, i64, Option<i64>, Option<i64>);

/// `correct / n` as v_drift computes it (`CAST(correct AS REAL) / n`).
fn accuracy(n: i64, correct: i64) -> Option<f64> {
    (n > 0).then(|| correct as f64 / n as f64)
}

fn packed_accuracy(packed: Option<i64>) -> Option<f64> {
    packed.and_then(|v| accuracy(v >> 32, v & 0xFFFF_FFFF))
}

macro_rules! quantized_select {
    () => {
        "SELECT run_id, cycle, checkpoint_hash, codec, suite, accuracy, lossless_accuracy, delta,
                n, correct, lossless_correct
         FROM v_quantized WHERE run_id = ?1 AND cycle >= ?2"
    };
}
const QUANTIZED: &str = concat!(quantized_select!(), " ORDER BY cycle, checkpoint_hash, codec, suite");
const QUANTIZED_SUITE: &str = concat!(quantized_select!(), " AND suite = ?3 ORDER BY cycle, checkpoint_hash, codec");

const CYCLES: &str = "SELECT run_id, cycle, status, parent_hash, checkpoint_hash, started_at,
        finished_at, examples_trained, reason FROM v_cycles
 WHERE run_id = ?1 AND cycle >= ?2 ORDER BY cycle";

const REFUSAL: &str = "SELECT run_id, cycle, checkpoint_hash, must_refuse_n, refused, refusal_rate,
        benign_n, over_refused, over_refusal_rate
 FROM v_refusal WHERE run_id = ?1 AND cycle >= ?2 ORDER BY cycle, checkpoint_hash";

const COMPRESSION: &str = "SELECT run_id, cycle, checkpoint_hash, codec, raw_bytes, stored_bytes, ratio,
        encode_ms, decode_ms, lossless, parent_hash, eval_delta
 FROM v_compression WHERE run_id = ?1 AND cycle >= ?2 ORDER BY cycle, checkpoint_hash, codec";

const BUDGET: &str = "SELECT run_id, cycle, role, gpu_seconds, busy_seconds, cost_usd, idle_seconds,
        leases, failures, workers, utilization
 FROM v_budget WHERE run_id = ?1 AND cycle >= ?2 ORDER BY cycle, role";

const PROXY_GAP: &str = "SELECT run_id, cycle, skill, n, auc, calibration_error
 FROM v_proxy_gap WHERE run_id = ?1 AND cycle >= ?2 ORDER BY cycle, skill";

const POLICY: &str = "SELECT run_id, cycle, skill, level, pass_rate, progress, weight, reason
 FROM v_curriculum_policy WHERE run_id = ?1 AND cycle >= ?2 ORDER BY cycle, skill, level";

// v_lineage's recursive definition, seeded with one run's base only: the
// view itself walks every run, and a filter outside a recursive CTE cannot
// be pushed into it. Kept identical to the view otherwise (a test compares
// the two).
const LINEAGE: &str = "WITH RECURSIVE tree (checkpoint_hash, parent_hash, cycle, status, depth, run_id) AS (
    SELECT checkpoint_hash, parent_hash, cycle, status, 0, run_id
      FROM cycles
     WHERE run_id = ?1 AND cycle = 0 AND checkpoint_hash IS NOT NULL AND status IN ('accepted', 'rejected')
    UNION ALL
    SELECT c.checkpoint_hash, c.parent_hash, c.cycle, c.status, t.depth + 1, c.run_id
      FROM tree AS t
      JOIN cycles AS c ON c.run_id = t.run_id AND c.parent_hash = t.checkpoint_hash
     WHERE (t.status = 'accepted' OR t.depth = 0)
       AND c.cycle > t.cycle
       AND c.checkpoint_hash IS NOT NULL
       AND c.status IN ('accepted', 'rejected')
)
SELECT checkpoint_hash, parent_hash, cycle, status, depth, run_id FROM tree
 WHERE cycle >= ?2 ORDER BY cycle";

const DIFF_EVALS: &str = "SELECT suite, CASE WHEN n > 0 THEN CAST(correct AS REAL) / n END AS accuracy
 FROM evals WHERE run_id = ?1 AND cycle = ?2 AND checkpoint_hash = ?3";

// Aggregated in SQLite: one row per suite instead of one per item pair.
// group_concat skips the NULLs of items that did not flip.
const DIFF_ITEMS: &str = "SELECT a.suite, COUNT(*) AS compared,
        group_concat(CASE WHEN a.correct = 0 AND b.correct = 1 THEN a.item END, ' ') AS to_right,
        group_concat(CASE WHEN a.correct = 1 AND b.correct = 0 THEN a.item END, ' ') AS to_wrong
 FROM eval_items AS a
 JOIN eval_items AS b
   ON b.run_id = a.run_id AND b.cycle = ?4 AND b.checkpoint_hash = ?5
  AND b.suite = a.suite AND b.item = a.item
 WHERE a.run_id = ?1 AND a.cycle = ?2 AND a.checkpoint_hash = ?3
 GROUP BY a.suite";

const DIFF_REFUSAL: &str = "SELECT refusal_rate, over_refusal_rate FROM v_refusal
 WHERE run_id = ?1 AND cycle = ?2 AND checkpoint_hash = ?3";

/// The crate's hot queries by name, with how many parameters each takes,
/// for [`Ledger::query_plans`].
const HOT_QUERIES: &[(&str, &str, usize)] = &[
    ("cycles", CYCLES, 2),
    ("drift", DRIFT, 2),
    ("drift --suite", DRIFT_SUITE, 3),
    ("refusal", REFUSAL, 2),
    ("compression", COMPRESSION, 2),
    ("lineage", LINEAGE, 2),
    ("budget", BUDGET, 2),
    ("quantized", QUANTIZED, 2),
    ("quantized --suite", QUANTIZED_SUITE, 3),
    ("proxy-gap", PROXY_GAP, 2),
    ("diff evals", DIFF_EVALS, 3),
    ("diff items", DIFF_ITEMS, 5),
    ("diff refusal", DIFF_REFUSAL, 3),
];

fn opt_ratio(r: &SqliteRow, column: &str) -> Result<Option<f64>, sqlx::Error> {
    r.try_get(column)
}

impl Ledger {
    /// The run a query is about: `run` if given (it must exist), else the
    /// latest run.
    pub async fn resolve_run(&self, run: Option<RunId>) -> Result<RunId, LedgerError> {
        match run {
            Some(id) => match self.run(id).await? {
                Some(_) => Ok(id),
                None => Err(self.unknown_run(id)),
            },
            None => match self.latest_run().await? {
                Some(r) => Ok(r.run_id),
                None => Err(LedgerError::NoRuns { path: self.path.clone() }),
            },
        }
    }

    /// The last `last` cycles of a run (`None`: all of them), counted back
    /// from its highest cycle number.
    pub async fn window(&self, run: Option<RunId>, last: Option<u32>) -> Result<Window, LedgerError> {
        // One round trip: the run (given or latest) and its highest cycle.
        let found: Option<(RunId, Option<i64>)> = sqlx::query_as(
            "SELECT r.run_id, (SELECT MAX(c.cycle) FROM cycles AS c WHERE c.run_id = r.run_id)
             FROM runs AS r WHERE (?1 IS NULL OR r.run_id = ?1) ORDER BY r.run_id DESC LIMIT 1",
        )
        .bind(run)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.sql("reading the run to query", e))?;
        let Some((run_id, max)) = found else {
            return Err(match run {
                Some(id) => self.unknown_run(id),
                None => LedgerError::NoRuns { path: self.path.clone() },
            });
        };
        let first_cycle = match last {
            None => 0,
            Some(n) => u32::try_from((max.unwrap_or(0) + 1 - i64::from(n)).max(0)).unwrap_or(0),
        };
        Ok(Window { run_id, first_cycle })
    }

    pub async fn cycles_in(&self, w: Window) -> Result<Vec<CycleRow>, LedgerError> {
        sqlx::query(CYCLES)
            .bind(w.run_id)
            .bind(w.first_cycle)
            .try_map(cycle_row)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.sql(format!("reading cycles of run {}", w.run_id), e))
    }

    /// Per cycle and suite: accuracy and its deltas vs the parent checkpoint
    /// and vs the base (v_drift), optionally for one suite.
    pub async fn drift(&self, w: Window, suite: Option<&str>) -> Result<Vec<DriftRow>, LedgerError> {
        let q = match suite {
            Some(s) => sqlx::query_as(DRIFT_SUITE).bind(w.run_id).bind(w.first_cycle).bind(s.to_owned()),
            None => sqlx::query_as(DRIFT).bind(w.run_id).bind(w.first_cycle),
        };
        let cycles: Vec<(u32, String, String, Option<String>, String)> = q
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.sql(format!("reading drift of run {}", w.run_id), e))?;
        let mut rows = Vec::with_capacity(cycles.len() * 100);
        for (cycle, status, checkpoint_hash, parent_hash, json) in cycles {
            let mut suites: Vec<DriftSuite> = serde_json::from_str(&json).map_err(|e| {
                self.invalid(format!("reading drift of run {} cycle {cycle}: unexpected aggregate from SQLite: {e}", w.run_id))
            })?;
            // The view's order: by suite, in SQLite's binary collation (bytes).
            suites.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (suite, role, n, correct, parent, base) in suites {
                let accuracy = accuracy(n, correct);
                let parent_accuracy = packed_accuracy(parent);
                let base_accuracy = packed_accuracy(base);
                rows.push(DriftRow {
                    run_id: w.run_id,
                    cycle,
                    suite,
                    accuracy,
                    delta_vs_parent: accuracy.zip(parent_accuracy).map(|(a, p)| a - p),
                    delta_vs_base: accuracy.zip(base_accuracy).map(|(a, b)| a - b),
                    status: status.clone(),
                    checkpoint_hash: checkpoint_hash.clone(),
                    parent_hash: parent_hash.clone(),
                    parent_accuracy,
                    base_accuracy,
                    role,
                });
            }
        }
        Ok(rows)
    }

    /// The run's checkpoint tree from its base (v_lineage), rows with cycle
    /// in the window.
    pub async fn lineage(&self, w: Window) -> Result<Vec<LineageRow>, LedgerError> {
        sqlx::query(LINEAGE)
            .bind(w.run_id)
            .bind(w.first_cycle)
            .try_map(|r: SqliteRow| {
                Ok(LineageRow {
                    checkpoint_hash: r.try_get("checkpoint_hash")?,
                    parent_hash: r.try_get("parent_hash")?,
                    cycle: r.try_get("cycle")?,
                    status: r.try_get("status")?,
                    depth: r.try_get("depth")?,
                    run_id: r.try_get("run_id")?,
                })
            })
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.sql(format!("reading lineage of run {}", w.run_id), e))
    }

    pub async fn budget(&self, w: Window) -> Result<Vec<BudgetRow>, LedgerError> {
        sqlx::query(BUDGET)
            .bind(w.run_id)
            .bind(w.first_cycle)
            .try_map(|r: SqliteRow| {
                Ok(BudgetRow {
                    run_id: r.try_get("run_id")?,
                    cycle: r.try_get("cycle")?,
                    role: r.try_get("role")?,
                    gpu_seconds: r.try_get("gpu_seconds")?,
                    busy_seconds: r.try_get("busy_seconds")?,
                    cost_usd: r.try_get("cost_usd")?,
                    idle_seconds: r.try_get("idle_seconds")?,
                    leases: r.try_get("leases")?,
                    failures: r.try_get("failures")?,
                    workers: r.try_get("workers")?,
                    utilization: opt_ratio(&r, "utilization")?,
                })
            })
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.sql(format!("reading budget of run {}", w.run_id), e))
    }

    pub async fn refusal_in(&self, w: Window) -> Result<Vec<RefusalRow>, LedgerError> {
        sqlx::query(REFUSAL)
            .bind(w.run_id)
            .bind(w.first_cycle)
            .try_map(refusal_row)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.sql(format!("reading refusal evals of run {}", w.run_id), e))
    }

    pub async fn compression_in(&self, w: Window) -> Result<Vec<CompressionRow>, LedgerError> {
        sqlx::query(COMPRESSION)
            .bind(w.run_id)
            .bind(w.first_cycle)
            .try_map(compression_row)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.sql(format!("reading compression of run {}", w.run_id), e))
    }

    pub async fn quantized(&self, w: Window, suite: Option<&str>) -> Result<Vec<QuantizedRow>, LedgerError> {
        let q = match suite {
            Some(s) => sqlx::query(QUANTIZED_SUITE).bind(w.run_id).bind(w.first_cycle).bind(s.to_owned()),
            None => sqlx::query(QUANTIZED).bind(w.run_id).bind(w.first_cycle),
        };
        q.try_map(|r: SqliteRow| {
            Ok(QuantizedRow {
                run_id: r.try_get("run_id")?,
                cycle: r.try_get("cycle")?,
                checkpoint_hash: r.try_get("checkpoint_hash")?,
                codec: r.try_get("codec")?,
                suite: r.try_get("suite")?,
                accuracy: opt_ratio(&r, "accuracy")?,
                lossless_accuracy: opt_ratio(&r, "lossless_accuracy")?,
                delta: opt_ratio(&r, "delta")?,
                n: r.try_get("n")?,
                correct: r.try_get("correct")?,
                lossless_correct: r.try_get("lossless_correct")?,
            })
        })
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading quantized evals of run {}", w.run_id), e))
    }

    pub async fn proxy_gap(&self, w: Window) -> Result<Vec<ProxyGapRow>, LedgerError> {
        sqlx::query(PROXY_GAP)
            .bind(w.run_id)
            .bind(w.first_cycle)
            .try_map(|r: SqliteRow| {
                Ok(ProxyGapRow {
                    run_id: r.try_get("run_id")?,
                    cycle: r.try_get("cycle")?,
                    skill: r.try_get("skill")?,
                    n: r.try_get("n")?,
                    auc: r.try_get("auc")?,
                    calibration_error: r.try_get("calibration_error")?,
                })
            })
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.sql(format!("reading proxy gap of run {}", w.run_id), e))
    }

    pub async fn policy(&self, w: Window) -> Result<Vec<PolicyRow>, LedgerError> {
        sqlx::query(POLICY)
            .bind(w.run_id)
            .bind(w.first_cycle)
            .try_map(|r: SqliteRow| {
                Ok(PolicyRow {
                    run_id: r.try_get("run_id")?,
                    cycle: r.try_get("cycle")?,
                    skill: r.try_get("skill")?,
                    level: r.try_get("level")?,
                    pass_rate: r.try_get("pass_rate")?,
                    progress: r.try_get("progress")?,
                    weight: r.try_get("weight")?,
                    reason: r.try_get("reason")?,
                })
            })
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.sql(format!("reading the curriculum policy of run {}", w.run_id), e))
    }

    /// Cycle `a` against cycle `b` of a run: per-suite accuracy deltas,
    /// refusal and over-refusal deltas, and the items whose correctness
    /// flipped (where both cycles recorded per-item correctness). Both
    /// cycles must exist; a cycle that evaluated nothing (failed) simply
    /// contributes no accuracies.
    pub async fn diff(&self, run_id: RunId, a: u32, b: u32) -> Result<CycleDiff, LedgerError> {
        let cycle = |c: u32| async move {
            let row: Option<Option<String>> =
                sqlx::query_scalar("SELECT checkpoint_hash FROM cycles WHERE run_id = ? AND cycle = ?")
                    .bind(run_id)
                    .bind(c)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| self.sql(format!("reading run {run_id} cycle {c}"), e))?;
            row.ok_or(LedgerError::UnknownCycle { path: self.path.clone(), run_id, cycle: c })
        };
        self.resolve_run(Some(run_id)).await?;
        let hash_a = cycle(a).await?;
        let hash_b = cycle(b).await?;
        let at = |what: &str| format!("diffing run {run_id} cycles {a} and {b}: {what}");

        let evals = |c: u32, h: Option<String>| async move {
            let Some(h) = h else { return Ok(Vec::new()) };
            sqlx::query_as::<_, (String, Option<f64>)>(DIFF_EVALS)
                .bind(run_id)
                .bind(c)
                .bind(h)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.sql(at("reading evals"), e))
        };
        let mut suites: BTreeMap<String, SuiteDiff> = BTreeMap::new();
        let blank = |suite: &str| SuiteDiff {
            suite: suite.to_owned(),
            accuracy_a: None,
            accuracy_b: None,
            delta: None,
            items_compared: 0,
            flipped_to_right: 0,
            flipped_to_wrong: 0,
            to_right_items: Vec::new(),
            to_wrong_items: Vec::new(),
        };
        for (suite, acc) in evals(a, hash_a.clone()).await? {
            suites.entry(suite.clone()).or_insert_with(|| blank(&suite)).accuracy_a = acc;
        }
        for (suite, acc) in evals(b, hash_b.clone()).await? {
            suites.entry(suite.clone()).or_insert_with(|| blank(&suite)).accuracy_b = acc;
        }

        if let (Some(ha), Some(hb)) = (&hash_a, &hash_b) {
            let per_suite: Vec<(String, i64, Option<String>, Option<String>)> = sqlx::query_as(DIFF_ITEMS)
                .bind(run_id)
                .bind(a)
                .bind(ha)
                .bind(b)
                .bind(hb)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.sql(at("reading eval items"), e))?;
            let items = |list: Option<String>| -> Result<Vec<u32>, LedgerError> {
                list.unwrap_or_default()
                    .split_whitespace()
                    .map(|i| i.parse::<u32>().map_err(|_| self.invalid(at(&format!("eval item index '{i}' is not a non-negative integer")))))
                    .collect()
            };
            for (suite, compared, to_right, to_wrong) in per_suite {
                let d = suites.entry(suite.clone()).or_insert_with(|| blank(&suite));
                d.items_compared = u32::try_from(compared).unwrap_or(u32::MAX);
                d.to_right_items = items(to_right)?;
                d.to_wrong_items = items(to_wrong)?;
            }
        }
        for d in suites.values_mut() {
            d.delta = d.accuracy_b.zip(d.accuracy_a).map(|(b, a)| b - a);
            d.to_right_items.sort_unstable();
            d.to_wrong_items.sort_unstable();
            d.flipped_to_right = d.to_right_items.len() as u32;
            d.flipped_to_wrong = d.to_wrong_items.len() as u32;
        }

        let refusal = |c: u32, h: Option<String>| async move {
            let Some(h) = h else { return Ok((None, None)) };
            let row: Option<(Option<f64>, Option<f64>)> = sqlx::query_as(DIFF_REFUSAL)
                .bind(run_id)
                .bind(c)
                .bind(h)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.sql(at("reading refusal evals"), e))?;
            Ok::<_, LedgerError>(row.unwrap_or((None, None)))
        };
        let (ra, oa) = refusal(a, hash_a.clone()).await?;
        let (rb, ob) = refusal(b, hash_b.clone()).await?;
        let rate = |a: Option<f64>, b: Option<f64>| RateDiff { a, b, delta: b.zip(a).map(|(b, a)| b - a) };
        Ok(CycleDiff {
            run_id,
            cycle_a: a,
            cycle_b: b,
            checkpoint_a: hash_a,
            checkpoint_b: hash_b,
            suites: suites.into_values().collect(),
            refusal: rate(ra, rb),
            over_refusal: rate(oa, ob),
        })
    }

    /// Runs one read-only SQL statement on this read-only handle and
    /// returns its rows. Refused with a clear error, before SQLite sees it:
    /// anything but exactly one statement, and statements that do not start
    /// as a query (SELECT, WITH, VALUES, EXPLAIN, or a PRAGMA without `=`).
    /// Anything that slips past (`WITH ... DELETE`, a writing PRAGMA) is
    /// stopped by SQLite itself: the handle is `mode=ro` with `query_only`.
    pub async fn sql_read_only(&self, query: &str) -> Result<Table, LedgerError> {
        let refuse = |why: String| LedgerError::Query { path: self.path.clone(), why };
        if !self.read_only {
            return Err(refuse("sql_read_only needs a handle from Ledger::open_read_only".into()));
        }
        let statements = split_statements(query).map_err(refuse)?;
        let stmt = match statements.as_slice() {
            [] => return Err(refuse("the query is empty; give one SELECT statement".into())),
            [one] => one.clone(),
            more => {
                return Err(refuse(format!(
                    "the query holds {} statements; `evolve ledger sql` runs exactly one read-only statement",
                    more.len()
                )));
            }
        };
        let first = first_keyword(&stmt);
        let allowed = match first.as_str() {
            "SELECT" | "WITH" | "VALUES" | "EXPLAIN" => true,
            "PRAGMA" => read_only_pragma(&stmt),
            _ => false,
        };
        if !allowed {
            return Err(refuse(format!(
                "refused a {} statement: the ledger is read-only here; valid: one SELECT, WITH, VALUES, EXPLAIN or read-only PRAGMA statement",
                if first.is_empty() { "non-query".to_string() } else { first }
            )));
        }
        let sql_error = |e: sqlx::Error| match e.as_database_error() {
            Some(d) if d.code().as_deref() == Some("8") || d.message().contains("readonly") => {
                refuse(format!("refused: the statement would write ({}); the ledger is read-only here", d.message()))
            }
            Some(d) if matches!(d.code().as_deref(), Some("26") | Some("11")) => LedgerError::NotALedger {
                path: self.path.clone(),
                why: format!("the file is corrupt or not a database ({})", d.message()),
            },
            Some(d) => refuse(format!("SQL error: {}", d.message())),
            None => self.sql("running the query", e),
        };
        // Prepared first so an empty answer still has its column names.
        let prepared = (&self.pool).prepare(AssertSqlSafe(stmt.clone()).into_sql_str()).await.map_err(sql_error)?;
        let columns: Vec<String> = prepared.columns().iter().map(|c| c.name().to_string()).collect();
        let rows = sqlx::query(AssertSqlSafe(stmt)).fetch_all(&self.pool).await.map_err(sql_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut cells = Vec::with_capacity(columns.len());
            for i in 0..r.len() {
                cells.push(cell(r, i).map_err(sql_error)?);
            }
            out.push(cells);
        }
        Ok(Table { columns, rows: out })
    }

    /// `EXPLAIN QUERY PLAN` of every query this crate runs for the CLI, by
    /// name, one plan line per element: how tests and the benchmark check
    /// that none of them scans a large table.
    pub async fn query_plans(&self) -> Result<Vec<(String, Vec<String>)>, LedgerError> {
        let mut out = Vec::new();
        for (name, sql, params) in HOT_QUERIES {
            let mut q = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
            for _ in 0..*params {
                q = q.bind(0_i64);
            }
            let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.sql(format!("explaining query '{name}'"), e))?;
            let mut plan = Vec::new();
            for r in rows {
                plan.push(r.try_get::<String, _>("detail").map_err(|e| self.sql(format!("explaining query '{name}'"), e))?);
            }
            out.push((name.to_string(), plan));
        }
        Ok(out)
    }
}

fn cell(r: &SqliteRow, i: usize) -> Result<Cell, sqlx::Error> {
    let raw = r.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    let kind = raw.type_info().name().to_string();
    Ok(match kind.as_str() {
        "INTEGER" | "BOOLEAN" => Cell::Int(r.try_get(i)?),
        "REAL" => Cell::Real(r.try_get(i)?),
        "BLOB" => {
            let bytes: Vec<u8> = r.try_get(i)?;
            Cell::Text(format!("x'{}'", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
        }
        _ => Cell::Text(r.try_get(i)?),
    })
}

/// Pragmas that only report, with no argument; and those whose argument
/// names what to report on (for the others, `PRAGMA x(v)` sets x, like
/// `PRAGMA x = v`).
const READ_PRAGMAS: &[&str] = &[
    "application_id", "collation_list", "compile_options", "data_version", "database_list", "encoding",
    "freelist_count", "function_list", "journal_mode", "module_list", "page_count", "page_size", "pragma_list",
    "schema_version", "user_version",
];
const READ_PRAGMAS_WITH_ARGUMENT: &[&str] = &[
    "foreign_key_check", "foreign_key_list", "index_info", "index_list", "index_xinfo", "integrity_check",
    "quick_check", "table_info", "table_list", "table_xinfo",
];

/// `PRAGMA [schema.]name` or `PRAGMA [schema.]name(arg)` for a pragma that
/// only reads (see above); never an assignment.
fn read_only_pragma(stmt: &str) -> bool {
    let body = stmt.trim_start();
    let Some(rest) = body.get(6..).filter(|_| body[..6].eq_ignore_ascii_case("pragma")) else {
        return false;
    };
    if rest.contains('=') {
        return false;
    }
    let rest = rest.trim();
    let (name, arg) = match rest.split_once('(') {
        Some((n, a)) => (n.trim(), Some(a)),
        None => (rest, None),
    };
    let name = name.rsplit('.').next().unwrap_or(name).trim().to_ascii_lowercase();
    match arg {
        None => READ_PRAGMAS.contains(&name.as_str()) || READ_PRAGMAS_WITH_ARGUMENT.contains(&name.as_str()),
        Some(_) => READ_PRAGMAS_WITH_ARGUMENT.contains(&name.as_str()),
    }
}

/// The first keyword of a statement, upper-cased, skipping comments and
/// opening parentheses.
fn first_keyword(stmt: &str) -> String {
    let mut s = stmt;
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    s.chars().take_while(|c| c.is_ascii_alphabetic()).collect::<String>().to_ascii_uppercase()
}

/// Splits SQL into statements on the semicolons SQLite would split on:
/// outside string literals ('...'), quoted identifiers ("...", `...`,
/// [...]) and comments. Statements that are only whitespace and comments
/// are dropped, so a trailing `;` is fine.
fn split_statements(sql: &str) -> Result<Vec<String>, String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut has_code = false;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`' | b'[') => {
                let close = if q == b'[' { b']' } else { q };
                let mut j = i + 1;
                loop {
                    if j >= b.len() {
                        return Err(format!("unterminated {} starting at byte {i}", if q == b'\'' { "string literal" } else { "quoted identifier" }));
                    }
                    if b[j] == close {
                        // A doubled quote is an escaped quote, not the end.
                        if close != b']' && j + 1 < b.len() && b[j + 1] == close {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    j += 1;
                }
                has_code = true;
                i = j + 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
            }
            b';' => {
                if has_code {
                    out.push(sql[start..i].to_string());
                }
                has_code = false;
                i += 1;
                start = i;
            }
            c => {
                if !c.is_ascii_whitespace() {
                    has_code = true;
                }
                i += 1;
            }
        }
    }
    if has_code {
        out.push(sql[start..].to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_only_outside_quotes_and_comments() {
        assert_eq!(split_statements("SELECT 1;").unwrap(), vec!["SELECT 1"]);
        assert_eq!(split_statements("SELECT ';' -- ; \n ;  /* ; */ ").unwrap(), vec!["SELECT ';' -- ; \n "]);
        assert_eq!(split_statements("SELECT 1; DROP TABLE runs").unwrap().len(), 2);
        assert_eq!(split_statements("SELECT \"a;b\", [c;d], `e;f`, 'it''s;' FROM t").unwrap().len(), 1);
        assert!(split_statements("SELECT 'open").is_err());
        assert!(split_statements("  -- nothing\n").unwrap().is_empty());
    }

    #[test]
    fn only_reading_pragmas_pass() {
        for ok in ["PRAGMA table_info(v_drift)", "pragma main.index_list('evals')", "PRAGMA user_version", "PRAGMA journal_mode"] {
            assert!(read_only_pragma(ok), "{ok}");
        }
        for bad in ["PRAGMA user_version = 3", "PRAGMA journal_mode(DELETE)", "PRAGMA query_only(0)", "PRAGMA writable_schema", "PRAGMA"] {
            assert!(!read_only_pragma(bad), "{bad}");
        }
    }

    #[test]
    fn first_keyword_skips_comments() {
        assert_eq!(first_keyword("  -- hi\n /* x */ (select 1)"), "SELECT");
        assert_eq!(first_keyword("with x as (select 1) delete from t"), "WITH");
        assert_eq!(first_keyword("attach 'x' as y"), "ATTACH");
        assert_eq!(first_keyword("  "), "");
    }
}
