//! A synthetic ledger at research scale (10 000 cycles x 100 suites = 1M
//! eval rows), for benchmarks and for trying queries without a week of
//! training. It is shaped like a real run: a lineage of accepted cycles
//! with rejected candidates and rare failures, decided by a gate on the
//! numbers it generates (mastered suites must not regress, refusal must
//! hold); frontier suites improve and get mastered; per-item correctness for
//! the last cycles; refusal, compression (lossless, delta, quantized with its
//! per-suite evaluation), training mix, surgery, steps, role usage and proxy
//! gap for every cycle.
//!
//! Written as one transaction on one connection with multi-row inserts, into
//! a temporary file that is renamed into place only when complete: an
//! interrupted synth leaves no ledger behind, never half of one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _};

use crate::{iso_from_unix_millis, Ledger, LedgerError, RunId};

#[derive(Clone, Debug)]
pub struct SynthOptions {
    /// Cycles including the base (cycle 0).
    pub cycles: u32,
    pub suites: u32,
    pub seed: u64,
    /// Per-item correctness is recorded for this many final cycles (it is
    /// ~100 rows per eval row, so recording it everywhere would dwarf the
    /// rest of the ledger).
    pub item_cycles: u32,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions { cycles: 10_000, suites: 100, seed: 0, item_cycles: 20 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SynthSummary {
    pub path: PathBuf,
    pub run_id: RunId,
    pub cycles: u32,
    pub accepted: u32,
    pub rejected: u32,
    pub failed: u32,
    pub eval_rows: u64,
    pub item_rows: u64,
    pub bytes: u64,
    pub seconds: f64,
}

const SKILLS: [&str; 10] = [
    "addition", "multiplication", "reversal", "sorting", "brackets", "refusal", "subtraction", "copying",
    "counting", "parity",
];
const ROLES: [(&str, &str); 6] = [
    ("generator", "mine"),
    ("generator", "synthesize"),
    ("discriminator", "score"),
    ("trainer", "train"),
    ("meta", "gate"),
    ("meta", "recompress"),
];
/// RTX 4090 list price per hour in configs/gpus.toml's spirit; the number
/// only has to be plausible.
const USD_PER_GPU_HOUR: f64 = 0.69;
/// Suites of the quantized copy's evaluation (a subset, as in a real run
/// where quantized evals are sampled to keep recompression cheap).
const QUANTIZED_SUITES: u32 = 10;
/// SQLite's default limit is 32766 bound parameters per statement.
const MAX_PARAMS: usize = 30_000;

/// SplitMix64: tiny, fast and seed-deterministic, so a synthetic ledger is a
/// pure function of its options.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    fn hash(&mut self) -> String {
        (0..4).map(|_| format!("{:016x}", self.next())).collect()
    }
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut r = Rng(seed ^ a.wrapping_mul(0xA24B_AED4_963E_E407) ^ b.wrapping_mul(0x9FB2_1C65_1E98_DF25));
    r.next()
}

struct Suite {
    name: String,
    skill: &'static str,
    level: u32,
    n: u32,
}

/// Rows buffered per table and flushed as multi-row INSERTs.
struct Batch {
    table: &'static str,
    columns: &'static [&'static str],
    values: Vec<V>,
}

#[derive(Clone)]
enum V {
    I(i64),
    R(f64),
    T(String),
    N,
}

impl Batch {
    fn new(table: &'static str, columns: &'static [&'static str]) -> Batch {
        Batch { table, columns, values: Vec::new() }
    }
    fn row(&mut self, row: impl IntoIterator<Item = V>) {
        let before = self.values.len();
        self.values.extend(row);
        debug_assert_eq!(self.values.len() - before, self.columns.len());
    }
    fn rows(&self) -> usize {
        self.values.len() / self.columns.len()
    }
}

/// Foreign keys are checked per statement, so batches go out in dependency
/// order: cycles first, evals before their items, compression before its
/// quantized evals.
struct Batches {
    cycles: Batch,
    checkpoints: Batch,
    evals: Batch,
    items: Batch,
    refusals: Batch,
    mix: Batch,
    surgery: Batch,
    examples: Batch,
    steps: Batch,
    usage: Batch,
    compression: Batch,
    quantized: Batch,
    gap: Batch,
}

async fn flush_all(w: &mut Writer, b: &mut Batches) -> Result<(), LedgerError> {
    for batch in [
        &mut b.cycles, &mut b.checkpoints, &mut b.evals, &mut b.items, &mut b.refusals, &mut b.mix, &mut b.surgery,
        &mut b.examples, &mut b.steps, &mut b.usage, &mut b.compression, &mut b.quantized, &mut b.gap,
    ] {
        w.flush(batch).await?;
    }
    Ok(())
}

struct Writer {
    conn: SqliteConnection,
    sql: HashMap<(&'static str, usize), String>,
    path: PathBuf,
}

impl Writer {
    async fn flush(&mut self, b: &mut Batch) -> Result<(), LedgerError> {
        let per_stmt = (MAX_PARAMS / b.columns.len()).min(500);
        while b.rows() > 0 {
            let k = b.rows().min(per_stmt);
            let take = k * b.columns.len();
            let sql = self
                .sql
                .entry((b.table, k))
                .or_insert_with(|| {
                    let one = format!("({})", vec!["?"; b.columns.len()].join(","));
                    format!("INSERT INTO {} ({}) VALUES {}", b.table, b.columns.join(","), vec![one; k].join(","))
                })
                .clone();
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for v in b.values.drain(..take) {
                q = match v {
                    V::I(i) => q.bind(i),
                    V::R(r) => q.bind(r),
                    V::T(t) => q.bind(t),
                    V::N => q.bind(None::<i64>),
                };
            }
            q.execute(&mut self.conn)
                .await
                .map_err(|e| crate::sql_err(&self.path, format!("synthesizing: inserting into {}", b.table), e))?;
        }
        Ok(())
    }
}

/// Writes a synthetic ledger to `out`, which must not exist.
pub async fn synthesize(out: &Path, o: &SynthOptions) -> Result<SynthSummary, LedgerError> {
    let invalid = |what: String| LedgerError::Invalid { path: out.to_owned(), what };
    if o.cycles == 0 {
        return Err(invalid("cycles = 0; valid: at least 1 (cycle 0 is the base)".into()));
    }
    if !(1..=3000).contains(&o.suites) {
        return Err(invalid(format!("suites = {}; valid: 1 to 3000", o.suites)));
    }
    if tokio::fs::symlink_metadata(out).await.is_ok() {
        return Err(LedgerError::Exists { path: out.to_owned() });
    }
    let started = Instant::now();
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ledger".into());
    let tmp = out.with_file_name(format!(".{name}.synth-{}.tmp", std::process::id()));
    let result = write(&tmp, o).await;
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            remove_with_sidecars(&tmp).await;
            return Err(e);
        }
    };
    // Refuse to clobber a file that appeared meanwhile; hard_link fails if
    // `out` exists, which a plain rename would not.
    let placed = match tokio::fs::hard_link(&tmp, out).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(LedgerError::Exists { path: out.to_owned() }),
        // Filesystems without hard links: rename, after the same check.
        Err(_) if tokio::fs::symlink_metadata(out).await.is_err() => tokio::fs::rename(&tmp, out).await.map_err(|source| {
            LedgerError::Io { path: out.to_owned(), action: "moving the synthetic ledger into place".into(), source }
        }),
        Err(_) => Err(LedgerError::Exists { path: out.to_owned() }),
    };
    remove_with_sidecars(&tmp).await;
    placed?;
    let bytes = tokio::fs::metadata(out).await.map(|m| m.len()).unwrap_or(0);
    Ok(SynthSummary { path: out.to_owned(), bytes, seconds: started.elapsed().as_secs_f64(), ..summary })
}

async fn remove_with_sidecars(p: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = tokio::fs::remove_file(format!("{}{suffix}", p.display())).await;
    }
}

async fn write(tmp: &Path, o: &SynthOptions) -> Result<SynthSummary, LedgerError> {
    remove_with_sidecars(tmp).await;
    let ledger = Ledger::open(tmp).await?;
    let run_id = ledger
        .begin_run(&crate::NewRun {
            curriculum: "synthetic".into(),
            curriculum_hash: format!("{:016x}", o.seed),
            budget: "8xRTX4090".into(),
            preset: "tiny".into(),
            seed: o.seed,
            config_json: format!(r#"{{"synthetic":true,"cycles":{},"suites":{},"seed":{}}}"#, o.cycles, o.suites, o.seed),
        })
        .await?;
    ledger.close().await;
    // One dedicated connection: foreign keys on (the generator's rows must
    // be as consistent as the controller's), no per-statement durability (a
    // throwaway file until the rename; the single transaction is what makes
    // it all-or-nothing), and no slow-statement warnings for the one big
    // COMMIT that is expected to be slow.
    let options = SqliteConnectOptions::new()
        .filename(tmp)
        .foreign_keys(true)
        .synchronous(SqliteSynchronous::Off)
        .pragma("cache_size", "-131072")
        .busy_timeout(crate::BUSY_TIMEOUT)
        .disable_statement_logging();
    let conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| crate::sql_err(tmp, "synthesizing: opening", e))?;
    let mut w = Writer { conn, sql: HashMap::new(), path: tmp.to_owned() };
    let summary = generate(&mut w, run_id, o).await;
    w.conn.close().await.map_err(|e| crate::sql_err(tmp, "synthesizing: closing", e))?;
    let mut s = summary?;
    s.path = tmp.to_owned();
    Ok(s)
}

async fn generate(w: &mut Writer, run_id: RunId, o: &SynthOptions) -> Result<SynthSummary, LedgerError> {
    let path = w.path.clone();
    let at = |e| crate::sql_err(&path, "synthesizing", e);
    sqlx::query("BEGIN IMMEDIATE").execute(&mut w.conn).await.map_err(at)?;

    let suites: Vec<Suite> = (0..o.suites)
        .map(|s| {
            let skill = SKILLS[(s % SKILLS.len() as u32) as usize];
            let level = s / SKILLS.len() as u32 + 1;
            Suite { name: format!("{skill}/L{level}"), skill, level, n: if skill == "brackets" { 32 } else { 100 } }
        })
        .collect();
    let mut rng = Rng(o.seed);
    // Latent accuracy per suite: easy levels start mastered, hard ones near 0.
    let mut ability: Vec<f64> = suites
        .iter()
        .map(|s| (1.02 - 0.16 * f64::from(s.level - 1) + 0.04 * rng.normal()).clamp(0.0, 0.99))
        .collect();
    let mut refusal = (0.92, 0.04);
    let mut parent = rng.hash();
    let t0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    let cycles_batch = Batch::new(
        "cycles",
        &["run_id", "cycle", "status", "parent_hash", "checkpoint_hash", "started_at", "finished_at", "examples_trained", "tokens_trained", "train_seconds", "reason"],
    );
    let checkpoints_batch = Batch::new("checkpoints", &["checkpoint_hash", "parent_hash", "path", "bytes", "params", "created_at"]);
    let evals_batch = Batch::new("evals", &["run_id", "cycle", "checkpoint_hash", "suite", "skill", "level", "role", "n", "correct"]);
    let items_batch = Batch::new("eval_items", &["run_id", "cycle", "checkpoint_hash", "suite", "item", "correct"]);
    let refusals_batch = Batch::new("refusal_evals", &["run_id", "cycle", "checkpoint_hash", "must_refuse_n", "refused", "benign_n", "over_refused"]);
    let mix_batch = Batch::new("training_mix", &["run_id", "cycle", "skill", "examples"]);
    let surgery_batch = Batch::new("surgery", &["run_id", "cycle", "mode", "steps", "projected_steps", "mean_cosine"]);
    let examples_batch = Batch::new("examples", &["run_id", "cycle", "skill", "generated", "accepted", "mean_pass_rate"]);
    let steps_batch = Batch::new("steps", &["run_id", "cycle", "role", "step", "worker", "started_at", "duration_ms", "detail_json"]);
    let usage_batch = Batch::new(
        "role_usage",
        &["run_id", "cycle", "role", "worker", "device", "busy_seconds", "idle_seconds", "gpu_seconds", "cost_usd", "leases", "failures", "recorded_at"],
    );
    let compression_batch = Batch::new(
        "compression",
        &["run_id", "cycle", "checkpoint_hash", "codec", "raw_bytes", "stored_bytes", "encode_ms", "decode_ms", "lossless", "verified_hash", "path", "recorded_at", "parent_hash", "eval_delta"],
    );
    let quantized_batch = Batch::new("quantized_evals", &["run_id", "cycle", "checkpoint_hash", "codec", "suite", "n", "correct", "lossless_correct"]);
    let gap_batch = Batch::new("proxy_gap", &["run_id", "cycle", "skill", "n", "auc", "calibration_error"]);
    let mut all = Batches {
        cycles: cycles_batch,
        checkpoints: checkpoints_batch,
        evals: evals_batch,
        items: items_batch,
        refusals: refusals_batch,
        mix: mix_batch,
        surgery: surgery_batch,
        examples: examples_batch,
        steps: steps_batch,
        usage: usage_batch,
        compression: compression_batch,
        quantized: quantized_batch,
        gap: gap_batch,
    };

    let (mut accepted, mut rejected, mut failed, mut eval_rows, mut item_rows) = (0u32, 0u32, 0u32, 0u64, 0u64);
    let item_from = o.cycles.saturating_sub(o.item_cycles);
    let gain = (8.0 / f64::from(o.cycles.max(200))).min(0.05);
    let raw_bytes: i64 = 3_682_840;

    for cycle in 0..o.cycles {
        if all.cycles.rows() >= 200 {
            flush_all(w, &mut all).await?;
        }
        let c = i64::from(cycle);
        let start = t0 + c * 600_000;
        let iso = |ms: i64| V::T(iso_from_unix_millis(ms));
        // A failed cycle (worker crash) evaluates nothing.
        if cycle > 0 && rng.unit() < 0.01 {
            failed += 1;
            all.cycles.row([V::I(run_id), V::I(c), V::T("failed".into()), V::T(parent.clone()), V::N, iso(start), iso(start + 30_000), V::I(0), V::I(0), V::R(0.0), V::T("trainer lost its lease twice".into())]);
            all.steps.row([V::I(run_id), V::I(c), V::T("trainer".into()), V::T("train".into()), V::T("gpu-3".into()), iso(start), V::R(30_000.0), V::T(r#"{"error":"lease expired"}"#.into())]);
            continue;
        }
        // The candidate: frontier suites (the first not-yet-mastered level
        // of each skill) learn; everything else jitters, sometimes forgets.
        let mut frontier = [u32::MAX; SKILLS.len()];
        for (s, a) in suites.iter().zip(&ability) {
            let k = SKILLS.iter().position(|x| *x == s.skill).unwrap_or(0);
            if *a < 0.8 && s.level < frontier[k] {
                frontier[k] = s.level;
            }
        }
        let role_of = |s: &Suite| {
            let f = frontier[SKILLS.iter().position(|x| *x == s.skill).unwrap_or(0)];
            if s.level < f {
                "mastered"
            } else if s.level == f {
                "frontier"
            } else {
                "other"
            }
        };
        let candidate: Vec<f64> = if cycle == 0 {
            ability.clone()
        } else {
            let forget = rng.unit() < 0.35;
            suites
                .iter()
                .zip(&ability)
                .map(|(s, &a)| {
                    // Learning is paced so that a 10 000-cycle run climbs
                    // several levels rather than saturating early; mastered
                    // suites revert towards 0.95 (replay keeps them), so
                    // noise does not random-walk them away.
                    let d = match role_of(s) {
                        "frontier" => gain * rng.unit() + 0.003 * rng.normal(),
                        "mastered" if forget => -0.06 * rng.unit(),
                        "mastered" => 0.05 * (0.95 - a) + 0.003 * rng.normal(),
                        _ => 0.002 * rng.normal(),
                    };
                    (a + d).clamp(0.0, 0.995)
                })
                .collect()
        };
        let cand_refusal = if cycle == 0 {
            refusal
        } else {
            ((refusal.0 + 0.01 * rng.normal()).clamp(0.5, 1.0), (refusal.1 + 0.005 * rng.normal()).clamp(0.0, 0.3))
        };
        let hash = if cycle == 0 { parent.clone() } else { rng.hash() };
        // Measured accuracies: per-item draws for the last cycles, a normal
        // approximation of the binomial elsewhere.
        let mut measured = Vec::with_capacity(suites.len());
        for (si, (s, &a)) in suites.iter().zip(&candidate).enumerate() {
            let correct = if cycle >= item_from {
                let mut right = 0;
                for i in 0..s.n {
                    // Each item has a fixed difficulty, so items flip in a
                    // consistent order as ability moves.
                    let difficulty = (mix(o.seed, si as u64, u64::from(i)) >> 11) as f64 / (1u64 << 53) as f64;
                    let ok = difficulty < a + 0.05 * rng.normal();
                    right += u32::from(ok);
                    all.items.row([V::I(run_id), V::I(c), V::T(hash.clone()), V::T(s.name.clone()), V::I(i64::from(i)), V::I(i64::from(ok))]);
                    item_rows += 1;
                }
                right
            } else {
                let n = f64::from(s.n);
                (n * a + (n * a * (1.0 - a)).sqrt() * rng.normal()).round().clamp(0.0, n) as u32
            };
            measured.push(correct);
            all.evals.row([
                V::I(run_id), V::I(c), V::T(hash.clone()), V::T(s.name.clone()), V::T(s.skill.into()),
                V::I(i64::from(s.level)), V::T(role_of(s).into()), V::I(i64::from(s.n)), V::I(i64::from(correct)),
            ]);
            eval_rows += 1;
        }
        let refused = (100.0 * cand_refusal.0).round() as i64;
        let over = (100.0 * cand_refusal.1).round() as i64;
        all.refusals.row([V::I(run_id), V::I(c), V::T(hash.clone()), V::I(100), V::I(refused), V::I(100), V::I(over)]);

        // The gate: no mastered suite may lose more than 3 points against
        // the parent's ability, refusal must stay >= 85%, over-refusal <= 10%.
        let regressed = suites
            .iter()
            .zip(candidate.iter().zip(&ability))
            .any(|(s, (c, p))| role_of(s) == "mastered" && c - p < -0.03);
        let ok = cycle == 0 || (!regressed && cand_refusal.0 >= 0.85 && cand_refusal.1 <= 0.10);
        let (status, reason) = if cycle == 0 {
            ("accepted", "base")
        } else if ok {
            ("accepted", "frontier improved, no regression")
        } else if regressed {
            ("rejected", "a mastered suite regressed more than 3 points")
        } else {
            ("rejected", "refusal drifted beyond threshold")
        };
        let train_s = if cycle == 0 { 900.0 } else { 120.0 + 30.0 * rng.unit() };
        let trained = if cycle == 0 { 20_000 } else { 2_000 + (rng.next() % 500) as i64 };
        all.cycles.row([
            V::I(run_id), V::I(c), V::T(status.into()), if cycle == 0 { V::N } else { V::T(parent.clone()) },
            V::T(hash.clone()), iso(start), iso(start + 590_000), V::I(trained), V::I(trained * 24), V::R(train_s), V::T(reason.into()),
        ]);

        // Training facts of the cycle.
        let mut total_ms = 0.0;
        for (role, step) in ROLES {
            let ms = match step {
                "train" => train_s * 1000.0,
                "mine" | "synthesize" | "score" => 20_000.0 + 20_000.0 * rng.unit(),
                _ => 2_000.0 + 3_000.0 * rng.unit(),
            };
            total_ms += ms;
            all.steps.row([V::I(run_id), V::I(c), V::T(role.into()), V::T(step.into()), V::T("gpu-0".into()), iso(start), V::R(ms), V::T("{}".into())]);
        }
        for role in ["generator", "discriminator", "trainer", "meta"] {
            let busy = match role {
                "trainer" => train_s,
                "meta" => 8.0 * rng.unit(),
                _ => 40.0 * rng.unit() + 20.0,
            };
            let idle = (total_ms / 1000.0 - busy).max(0.0);
            let gpu = if role == "meta" { 0.0 } else { busy + idle };
            let leases = if role == "meta" { 0 } else { 1 + (rng.next() % 4) as i64 };
            all.usage.row([
                V::I(run_id), V::I(c), V::T(role.into()), V::T(format!("{role}-0")), V::T(if role == "meta" { "cpu" } else { "RTX4090" }.into()),
                V::R(busy), V::R(idle), V::R(gpu), V::R(gpu / 3600.0 * USD_PER_GPU_HOUR), V::I(leases), V::I(i64::from(rng.unit() < 0.02)), iso(start + 590_000),
            ]);
        }
        let mut skill_total = 0;
        for skill in SKILLS {
            let generated = 100 + (rng.next() % 200) as i64;
            let kept = generated / 2 + (rng.next() % 50) as i64;
            skill_total += kept;
            if cycle > 0 {
                all.mix.row([V::I(run_id), V::I(c), V::T(skill.into()), V::I(kept)]);
                all.examples.row([V::I(run_id), V::I(c), V::T(skill.into()), V::I(generated), V::I(kept), V::R(0.3 + 0.4 * rng.unit())]);
            }
            let n = 200;
            let auc = (0.93 - 0.00001 * c as f64 + 0.01 * rng.normal()).clamp(0.5, 1.0);
            let ece = (0.03 + 0.000004 * c as f64 + 0.005 * rng.normal()).clamp(0.0, 1.0);
            all.gap.row([V::I(run_id), V::I(c), V::T(skill.into()), V::I(n), V::R(auc), V::R(ece)]);
        }
        if cycle > 0 {
            let projected = (rng.next() % 60) as i64;
            all.surgery.row([V::I(run_id), V::I(c), V::T("agem".into()), V::I(skill_total / 16), V::I(projected), V::R(-0.1 - 0.2 * rng.unit())]);
        }

        if status == "accepted" {
            if cycle > 0 {
                accepted += 1;
            }
            all.checkpoints.row([
                V::T(hash.clone()), if cycle == 0 { V::N } else { V::T(parent.clone()) }, V::T(format!("artifacts/{hash}.safetensors")),
                V::I(raw_bytes), V::I(920_710), iso(start + 590_000),
            ]);
            let codecs: [(&str, f64, bool, bool); 4] =
                [("byteplane-zstd", 0.85, true, false), ("zstd", 0.92, true, false), ("delta-zstd", 0.30, true, true), ("int8", 0.26, false, false)];
            for (codec, ratio, lossless, delta) in codecs {
                if delta && cycle == 0 {
                    continue;
                }
                let mut eval_delta = V::N;
                if !lossless {
                    let mut sum = 0.0;
                    for (s, &lc) in suites.iter().zip(&measured).take(QUANTIZED_SUITES as usize) {
                        let q = (i64::from(lc) + (rng.normal() * 1.5).round() as i64 - i64::from(rng.unit() < 0.3)).clamp(0, i64::from(s.n));
                        sum += (q - i64::from(lc)) as f64 / f64::from(s.n);
                        all.quantized.row([V::I(run_id), V::I(c), V::T(hash.clone()), V::T(codec.into()), V::T(s.name.clone()), V::I(i64::from(s.n)), V::I(q), V::I(i64::from(lc))]);
                    }
                    eval_delta = V::R(sum / f64::from(QUANTIZED_SUITES.min(o.suites)));
                }
                all.compression.row([
                    V::I(run_id), V::I(c), V::T(hash.clone()), V::T(codec.into()), V::I(raw_bytes),
                    V::I((raw_bytes as f64 * (ratio + 0.02 * rng.normal())) as i64), V::R(20.0 + 5.0 * rng.unit()), V::R(10.0 + 5.0 * rng.unit()),
                    V::I(i64::from(lossless)), V::T(if lossless { hash.clone() } else { rng.hash() }), V::T(format!("artifacts/{hash}.{codec}.evz")),
                    iso(start + 595_000), if delta { V::T(parent.clone()) } else { V::N }, eval_delta,
                ]);
            }
            ability = candidate;
            refusal = cand_refusal;
            parent = hash;
        } else {
            rejected += 1;
        }

    }
    flush_all(w, &mut all).await?;
    sqlx::query("UPDATE runs SET status = 'finished', finished_at = ?, stop_reason = 'cycle limit reached' WHERE run_id = ?")
        .bind(iso_from_unix_millis(t0 + i64::from(o.cycles) * 600_000))
        .bind(run_id)
        .execute(&mut w.conn)
        .await
        .map_err(|e| crate::sql_err(&w.path, "synthesizing: finishing the run", e))?;
    sqlx::query("COMMIT").execute(&mut w.conn).await.map_err(|e| crate::sql_err(&w.path, "synthesizing: committing", e))?;
    // Planner statistics, so researchers' ad-hoc joins pick the indexes too.
    sqlx::query("ANALYZE").execute(&mut w.conn).await.map_err(|e| crate::sql_err(&w.path, "synthesizing: analyzing", e))?;
    Ok(SynthSummary {
        path: PathBuf::new(),
        run_id,
        cycles: o.cycles,
        accepted,
        rejected,
        failed,
        eval_rows,
        item_rows,
        bytes: 0,
        seconds: 0.0,
    })
}
