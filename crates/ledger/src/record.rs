//! Writers for the facts added in schema 2: per-item correctness, role usage
//! (the budget), quantized evaluations next to their compression row, and
//! the learned discriminator's proxy gap.
//!
//! They come as *extras* beside the 0001-era records ([`CycleOutcome`],
//! [`CompressionRecord`]) instead of new fields on them, so that every
//! existing caller keeps compiling unchanged; an empty extras value writes
//! exactly what the 0001 API wrote.

use serde::Serialize;
use sqlx::{Sqlite, Transaction};

use crate::{CompressionRecord, CycleOutcome, Ledger, LedgerError, RunId};

/// Per-problem correctness of one suite of a cycle's evaluation: `items[i]`
/// is whether problem `i` of the frozen suite was answered right. Must agree
/// with the suite's counts in the same [`CycleOutcome`] (`items.len() == n`,
/// number of `true` == `correct`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalItems {
    pub suite: String,
    pub items: Vec<bool>,
}

/// What one worker of one role spent during one cycle. Today there is one
/// in-process worker per role; the key (run, cycle, role, worker) already
/// allows many.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RoleUsage {
    pub run_id: RunId,
    pub cycle: u32,
    pub role: String,
    pub worker: String,
    /// e.g. `cpu`, `RTX4090`.
    pub device: String,
    pub busy_seconds: f64,
    pub idle_seconds: f64,
    /// Device-seconds held (busy + idle on a GPU; 0 on CPU-only workers).
    pub gpu_seconds: f64,
    pub cost_usd: f64,
    pub leases: u64,
    pub failures: u64,
}

/// The learned discriminator against the verifier on held-out
/// verifier-labelled data for one skill.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProxyGapRecord {
    pub run_id: RunId,
    pub cycle: u32,
    pub skill: String,
    pub n: u32,
    /// ROC AUC in [0, 1]; `None` when undefined (a single class among n).
    pub auc: Option<f64>,
    /// Expected calibration error in [0, 1].
    pub calibration_error: Option<f64>,
}

/// Facts of a cycle that [`Ledger::commit_cycle_with`] writes in the same
/// transaction as the [`CycleOutcome`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct CycleExtras {
    /// Per-item correctness for some or all suites of `CycleOutcome::evals`;
    /// suites without an entry simply have no items recorded.
    pub eval_items: Vec<EvalItems>,
    /// Must all belong to the outcome's run and cycle.
    pub role_usage: Vec<RoleUsage>,
    /// Must all belong to the outcome's run and cycle.
    pub proxy_gap: Vec<ProxyGapRecord>,
    /// Must all belong to the outcome's run and cycle.
    pub policy: Vec<PolicyChoice>,
}

/// The curriculum policy's view of one frontier target in one cycle (schema 3).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PolicyChoice {
    pub run_id: RunId,
    pub cycle: u32,
    pub skill: String,
    pub level: u32,
    pub pass_rate: Option<f64>,
    pub progress: Option<f64>,
    /// Share of the cycle's synthesis effort, in [0, 1].
    pub weight: f64,
    pub reason: String,
}

/// One arm of an ablation (schema 3).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AblationArm {
    pub ablation_id: u32,
    pub arm: String,
    pub curriculum: String,
    pub sampling: String,
    pub surgery: String,
    pub run_id: RunId,
    pub cycles: u32,
    pub accepted: u32,
    pub tokens_trained: u64,
    pub frontier_gain: f64,
    pub forgetting: f64,
    pub refusal_drift: f64,
    pub seconds: f64,
}

/// The quantized copy's accuracy on one suite next to the lossless
/// checkpoint's on the same `n` problems.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QuantizedEval {
    pub suite: String,
    pub n: u32,
    pub correct: u32,
    pub lossless_correct: u32,
}

/// Schema-2 facts of a compression row, written atomically with it by
/// [`Ledger::record_compression_with`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompressionExtras {
    /// Delta-coded rows: the parent checkpoint the delta is against.
    pub parent_hash: Option<String>,
    /// Lossy rows: mean accuracy delta (quantized minus lossless) over
    /// suites. `None` with non-empty `quantized_evals` is computed from
    /// them (mean over suites with n > 0). Must be `None` for lossless rows.
    pub eval_delta: Option<f64>,
    /// Lossy rows: per-suite evaluation of the quantized copy. Replaces any
    /// earlier set for the same (run, cycle, checkpoint, codec).
    pub quantized_evals: Vec<QuantizedEval>,
}

impl Ledger {
    /// Records role usage rows in one transaction. A row for the same (run,
    /// cycle, role, worker) replaces the earlier one: the controller reports
    /// cumulative totals for a cycle, and a resumed cycle re-reports them.
    pub async fn record_role_usage(&self, rows: &[RoleUsage]) -> Result<(), LedgerError> {
        for u in rows {
            self.check_role_usage(u)?;
        }
        let mut tx = self.begin_immediate("recording role usage").await?;
        for u in rows {
            self.insert_role_usage(&mut tx, u).await?;
        }
        tx.commit().await.map_err(|e| self.sql("recording role usage: committing", e))
    }

    /// Records proxy-gap rows in one transaction; the same (run, cycle,
    /// skill) replaces the earlier measurement.
    pub async fn record_proxy_gap(&self, rows: &[ProxyGapRecord]) -> Result<(), LedgerError> {
        for g in rows {
            self.check_proxy_gap(g)?;
        }
        let mut tx = self.begin_immediate("recording proxy gap").await?;
        for g in rows {
            self.insert_proxy_gap(&mut tx, g).await?;
        }
        tx.commit().await.map_err(|e| self.sql("recording proxy gap: committing", e))
    }

    /// [`record_compression`](Self::record_compression) with the delta
    /// parent, the eval delta and the quantized copy's per-suite evaluation,
    /// in one transaction: the compression row never exists without its
    /// quantized evaluations or the other way round.
    pub async fn record_compression_with(
        &self,
        c: &CompressionRecord,
        extra: &CompressionExtras,
    ) -> Result<(), LedgerError> {
        let raw = self.int("raw_bytes", c.raw_bytes)?;
        let stored = self.int("stored_bytes", c.stored_bytes)?;
        let what = format!(
            "compression of {} with {} (run {} cycle {})",
            c.checkpoint_hash, c.codec, c.run_id, c.cycle
        );
        if c.lossless && (extra.eval_delta.is_some() || !extra.quantized_evals.is_empty()) {
            return Err(self.invalid(format!(
                "{what}: a lossless row has no eval_delta or quantized_evals (it is the reference they are measured against)"
            )));
        }
        if let Some(d) = extra.eval_delta
            && !(d.is_finite() && (-1.0..=1.0).contains(&d))
        {
            return Err(self.invalid(format!("{what}: eval_delta = {d}; valid: a finite accuracy difference in [-1, 1]")));
        }
        let mut seen = std::collections::HashSet::new();
        for q in &extra.quantized_evals {
            if q.correct > q.n || q.lossless_correct > q.n {
                return Err(self.invalid(format!(
                    "{what}: quantized eval of suite '{}' has correct = {}, lossless_correct = {} out of n = {}; both must be <= n",
                    q.suite, q.correct, q.lossless_correct, q.n
                )));
            }
            if !seen.insert(q.suite.as_str()) {
                return Err(self.invalid(format!("{what}: suite '{}' appears twice in quantized_evals", q.suite)));
            }
        }
        let eval_delta = extra.eval_delta.or_else(|| mean_delta(&extra.quantized_evals));

        let mut tx = self.begin_immediate(&format!("recording {what}")).await?;
        sqlx::query(
            "INSERT INTO compression (run_id, cycle, checkpoint_hash, codec, raw_bytes, stored_bytes,
                                      encode_ms, decode_ms, lossless, verified_hash, path, recorded_at,
                                      parent_hash, eval_delta)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (run_id, cycle, checkpoint_hash, codec) DO UPDATE SET
                 raw_bytes = excluded.raw_bytes,
                 stored_bytes = excluded.stored_bytes,
                 encode_ms = excluded.encode_ms,
                 decode_ms = excluded.decode_ms,
                 lossless = excluded.lossless,
                 verified_hash = excluded.verified_hash,
                 path = excluded.path,
                 recorded_at = excluded.recorded_at,
                 parent_hash = excluded.parent_hash,
                 eval_delta = excluded.eval_delta",
        )
        .bind(c.run_id)
        .bind(c.cycle)
        .bind(&c.checkpoint_hash)
        .bind(&c.codec)
        .bind(raw)
        .bind(stored)
        .bind(c.encode_ms)
        .bind(c.decode_ms)
        .bind(c.lossless)
        .bind(&c.verified_hash)
        .bind(&c.path)
        .bind(crate::now_iso())
        .bind(&extra.parent_hash)
        .bind(eval_delta)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.write_err(format!("recording {what}"), c.run_id, e))?;

        // The latest measurement replaces the earlier one as a whole: a
        // suite measured before a resume and not after must not linger.
        sqlx::query(
            "DELETE FROM quantized_evals
             WHERE run_id = ? AND cycle = ? AND checkpoint_hash = ? AND codec = ?",
        )
        .bind(c.run_id)
        .bind(c.cycle)
        .bind(&c.checkpoint_hash)
        .bind(&c.codec)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.sql(format!("replacing quantized evals of {what}"), e))?;
        for q in &extra.quantized_evals {
            sqlx::query(
                "INSERT INTO quantized_evals (run_id, cycle, checkpoint_hash, codec, suite, n, correct, lossless_correct)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(c.run_id)
            .bind(c.cycle)
            .bind(&c.checkpoint_hash)
            .bind(&c.codec)
            .bind(&q.suite)
            .bind(q.n)
            .bind(q.correct)
            .bind(q.lossless_correct)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.sql(format!("recording quantized eval of suite '{}' for {what}", q.suite), e))?;
        }
        tx.commit().await.map_err(|e| self.sql(format!("recording {what}: committing"), e))
    }

    async fn begin_immediate(&self, action: &str) -> Result<Transaction<'static, Sqlite>, LedgerError> {
        // IMMEDIATE: take the write lock now (waiting on busy_timeout) rather
        // than failing on a read-to-write upgrade mid-transaction.
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.sql(format!("{action}: beginning transaction"), e))
    }

    /// Everything checkable before the transaction starts, so a bad extra
    /// never costs a half-done commit.
    pub(crate) fn check_extras(&self, c: &CycleOutcome, extra: &CycleExtras) -> Result<(), LedgerError> {
        let at = format!("run {} cycle {}", c.run_id, c.cycle);
        let mut seen = std::collections::HashSet::new();
        for it in &extra.eval_items {
            let Some(s) = c.evals.iter().find(|s| s.suite == it.suite) else {
                return Err(self.invalid(format!(
                    "{at}: eval_items for suite '{}', which is not among the cycle's evals",
                    it.suite
                )));
            };
            if !seen.insert(it.suite.as_str()) {
                return Err(self.invalid(format!("{at}: eval_items for suite '{}' given twice", it.suite)));
            }
            let right = it.items.iter().filter(|&&b| b).count();
            if it.items.len() != s.n as usize || right != s.correct as usize {
                return Err(self.invalid(format!(
                    "{at}: eval_items of suite '{}' hold {} items with {right} right, but the suite's eval says n = {}, correct = {}",
                    it.suite,
                    it.items.len(),
                    s.n,
                    s.correct
                )));
            }
        }
        for u in &extra.role_usage {
            if (u.run_id, u.cycle) != (c.run_id, c.cycle) {
                return Err(self.invalid(format!(
                    "{at}: role usage of {}/{} is for run {} cycle {}",
                    u.role, u.worker, u.run_id, u.cycle
                )));
            }
            self.check_role_usage(u)?;
        }
        for g in &extra.proxy_gap {
            if (g.run_id, g.cycle) != (c.run_id, c.cycle) {
                return Err(self.invalid(format!(
                    "{at}: proxy gap of skill '{}' is for run {} cycle {}",
                    g.skill, g.run_id, g.cycle
                )));
            }
            self.check_proxy_gap(g)?;
        }
        for p in &extra.policy {
            if (p.run_id, p.cycle) != (c.run_id, c.cycle) {
                return Err(self.invalid(format!("{at}: policy choice for {}/L{} is for run {} cycle {}", p.skill, p.level, p.run_id, p.cycle)));
            }
            if !(0.0..=1.0).contains(&p.weight) || p.level == 0 || p.pass_rate.is_some_and(|v| !(0.0..=1.0).contains(&v)) || p.progress.is_some_and(|v| !(v >= 0.0)) {
                return Err(self.invalid(format!(
                    "{at}: policy choice for {}/L{}: weight {} must be in [0, 1], level >= 1, pass rate in [0, 1], progress >= 0",
                    p.skill, p.level, p.weight
                )));
            }
        }
        Ok(())
    }

    /// The next free ablation id (1 for a ledger without ablations).
    pub async fn next_ablation_id(&self) -> Result<u32, LedgerError> {
        let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(ablation_id) FROM ablations")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.sql("reading the last ablation id", e))?;
        Ok(max.unwrap_or(0) as u32 + 1)
    }

    /// Records the arms of one ablation in one transaction.
    pub async fn record_ablation(&self, arms: &[AblationArm]) -> Result<(), LedgerError> {
        for a in arms {
            for (name, v) in [("frontier_gain", a.frontier_gain), ("forgetting", a.forgetting), ("refusal_drift", a.refusal_drift), ("seconds", a.seconds)] {
                if !v.is_finite() {
                    return Err(self.invalid(format!("ablation {} arm '{}': {name} = {v}; valid: a finite number", a.ablation_id, a.arm)));
                }
            }
        }
        let mut tx = self.begin_immediate("recording an ablation").await?;
        for a in arms {
            sqlx::query(
                "INSERT INTO ablations (ablation_id, arm, curriculum, sampling, surgery, run_id, cycles, accepted,
                                        tokens_trained, frontier_gain, forgetting, refusal_drift, seconds, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(a.ablation_id)
            .bind(&a.arm)
            .bind(&a.curriculum)
            .bind(&a.sampling)
            .bind(&a.surgery)
            .bind(a.run_id)
            .bind(a.cycles)
            .bind(a.accepted)
            .bind(self.int("ablation tokens_trained", a.tokens_trained)?)
            .bind(a.frontier_gain)
            .bind(a.forgetting)
            .bind(a.refusal_drift)
            .bind(a.seconds)
            .bind(crate::now_iso())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.write_err(format!("recording ablation {} arm '{}'", a.ablation_id, a.arm), a.run_id, e))?;
        }
        tx.commit().await.map_err(|e| self.sql("recording an ablation: committing", e))
    }

    pub(crate) async fn write_extras(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        c: &CycleOutcome,
        extra: &CycleExtras,
    ) -> Result<(), LedgerError> {
        let (run_id, cycle) = (c.run_id, c.cycle);
        for it in &extra.eval_items {
            for (i, &right) in it.items.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO eval_items (run_id, cycle, checkpoint_hash, suite, item, correct)
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(run_id)
                .bind(cycle)
                .bind(&c.evaluated_hash)
                .bind(&it.suite)
                .bind(i as i64)
                .bind(right)
                .execute(&mut **tx)
                .await
                .map_err(|e| {
                    self.sql(format!("committing run {run_id} cycle {cycle}: eval item {i} of suite '{}'", it.suite), e)
                })?;
            }
        }
        for u in &extra.role_usage {
            self.insert_role_usage(tx, u).await?;
        }
        for g in &extra.proxy_gap {
            self.insert_proxy_gap(tx, g).await?;
        }
        for p in &extra.policy {
            sqlx::query(
                "INSERT INTO curriculum_policy (run_id, cycle, skill, level, pass_rate, progress, weight, reason)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (run_id, cycle, skill, level) DO UPDATE SET
                     pass_rate = excluded.pass_rate, progress = excluded.progress,
                     weight = excluded.weight, reason = excluded.reason",
            )
            .bind(run_id)
            .bind(cycle)
            .bind(&p.skill)
            .bind(p.level)
            .bind(p.pass_rate)
            .bind(p.progress)
            .bind(p.weight)
            .bind(&p.reason)
            .execute(&mut **tx)
            .await
            .map_err(|e| self.sql(format!("committing run {run_id} cycle {cycle}: policy choice for {}/L{}", p.skill, p.level), e))?;
        }
        Ok(())
    }

    fn check_role_usage(&self, u: &RoleUsage) -> Result<(), LedgerError> {
        for (name, v) in [
            ("busy_seconds", u.busy_seconds),
            ("idle_seconds", u.idle_seconds),
            ("gpu_seconds", u.gpu_seconds),
            ("cost_usd", u.cost_usd),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(self.invalid(format!(
                    "role usage of {}/{} (run {} cycle {}): {name} = {v}; valid: a finite number >= 0",
                    u.role, u.worker, u.run_id, u.cycle
                )));
            }
        }
        self.int("role usage leases", u.leases)?;
        self.int("role usage failures", u.failures)?;
        Ok(())
    }

    fn check_proxy_gap(&self, g: &ProxyGapRecord) -> Result<(), LedgerError> {
        for (name, v) in [("auc", g.auc), ("calibration_error", g.calibration_error)] {
            if let Some(v) = v
                && !(0.0..=1.0).contains(&v)
            {
                return Err(self.invalid(format!(
                    "proxy gap of skill '{}' (run {} cycle {}): {name} = {v}; valid: a number in [0, 1], or none",
                    g.skill, g.run_id, g.cycle
                )));
            }
        }
        Ok(())
    }

    async fn insert_role_usage(&self, tx: &mut Transaction<'static, Sqlite>, u: &RoleUsage) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO role_usage (run_id, cycle, role, worker, device, busy_seconds, idle_seconds,
                                     gpu_seconds, cost_usd, leases, failures, recorded_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (run_id, cycle, role, worker) DO UPDATE SET
                 device = excluded.device,
                 busy_seconds = excluded.busy_seconds,
                 idle_seconds = excluded.idle_seconds,
                 gpu_seconds = excluded.gpu_seconds,
                 cost_usd = excluded.cost_usd,
                 leases = excluded.leases,
                 failures = excluded.failures,
                 recorded_at = excluded.recorded_at",
        )
        .bind(u.run_id)
        .bind(u.cycle)
        .bind(&u.role)
        .bind(&u.worker)
        .bind(&u.device)
        .bind(u.busy_seconds)
        .bind(u.idle_seconds)
        .bind(u.gpu_seconds)
        .bind(u.cost_usd)
        .bind(u.leases as i64)
        .bind(u.failures as i64)
        .bind(crate::now_iso())
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            self.write_err(
                format!("recording role usage of {}/{} (run {} cycle {})", u.role, u.worker, u.run_id, u.cycle),
                u.run_id,
                e,
            )
        })?;
        Ok(())
    }

    async fn insert_proxy_gap(&self, tx: &mut Transaction<'static, Sqlite>, g: &ProxyGapRecord) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO proxy_gap (run_id, cycle, skill, n, auc, calibration_error)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (run_id, cycle, skill) DO UPDATE SET
                 n = excluded.n, auc = excluded.auc, calibration_error = excluded.calibration_error",
        )
        .bind(g.run_id)
        .bind(g.cycle)
        .bind(&g.skill)
        .bind(g.n)
        .bind(g.auc)
        .bind(g.calibration_error)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            self.write_err(
                format!("recording proxy gap of skill '{}' (run {} cycle {})", g.skill, g.run_id, g.cycle),
                g.run_id,
                e,
            )
        })?;
        Ok(())
    }
}

/// Mean over suites with n > 0 of (quantized - lossless) accuracy.
fn mean_delta(q: &[QuantizedEval]) -> Option<f64> {
    let deltas: Vec<f64> = q
        .iter()
        .filter(|q| q.n > 0)
        .map(|q| (f64::from(q.correct) - f64::from(q.lossless_correct)) / f64::from(q.n))
        .collect();
    (!deltas.is_empty()).then(|| deltas.iter().sum::<f64>() / deltas.len() as f64)
}
