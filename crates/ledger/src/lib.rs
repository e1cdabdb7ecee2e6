//! The evolve ledger: every fact of every training cycle, in one plain SQLite
//! file (WAL journal) that researchers query with the ordinary `sqlite3`
//! client while training is still running. The schema exists only as the
//! migrations in `/migrations`, embedded at build time and applied when a
//! ledger is opened, so a ledger file always says which schema it holds. The
//! `v_*` views are a public contract (names and leading columns never change);
//! the tables behind them are not. This is the only crate in the workspace
//! that speaks SQL: everything else goes through [`Ledger`]. Every `record_*`
//! (and `begin_run`, `start_cycle`, `commit_cycle`, ...) call is exactly one
//! transaction, so a crash loses no fact that was already committed and never
//! leaves a half-written row or a half-committed cycle behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Connection as _, Row as _};

mod query;
mod record;
pub mod synth;
mod table;

pub use query::*;
pub use record::*;
pub use table::{Cell, Format, Table, TableRow};

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Long enough to ride out a researcher's `sqlite3` session or a concurrent
/// checkpoint, short enough that a genuinely stuck lock surfaces as an error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub type RunId = i64;

/// Every variant names the ledger file, because the orchestrator, the CLI and
/// nightly jobs may each have several ledgers open and the message is often
/// all a user sees.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {}: not an evolve ledger ({why})", .path.display())]
    NotALedger { path: PathBuf, why: String },
    #[error(
        "ledger {}: written by a newer evolve (unknown schema migration {version}); upgrade evolve to open it",
        .path.display()
    )]
    NewerSchema { path: PathBuf, version: i64 },
    #[error("ledger {}: schema problem: {why}", .path.display())]
    Schema { path: PathBuf, why: String },
    #[error("ledger {}: written by an older evolve (migration {version} not applied); open it once for writing to upgrade", .path.display())]
    Outdated { path: PathBuf, version: i64 },
    #[error("ledger {}: file does not exist", .path.display())]
    Missing { path: PathBuf },
    #[error("ledger {}: {action}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger {}: {action}: {source}", .path.display())]
    Sql {
        path: PathBuf,
        action: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("ledger {}: applying schema migrations: {source}", .path.display())]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("ledger {}: no run {run_id}", .path.display())]
    UnknownRun { path: PathBuf, run_id: RunId },
    #[error(
        "ledger {}: run {run_id} cycle {cycle} is already committed as '{status}'; committed cycles are never rewritten",
        .path.display()
    )]
    CycleCommitted {
        path: PathBuf,
        run_id: RunId,
        cycle: u32,
        status: String,
    },
    #[error("ledger {}: invalid record: {what}", .path.display())]
    Invalid { path: PathBuf, what: String },
    #[error("ledger {}: already exists; synth writes new ledgers only (remove it or choose another path)", .path.display())]
    Exists { path: PathBuf },
    #[error("ledger {}: no runs recorded yet", .path.display())]
    NoRuns { path: PathBuf },
    #[error("ledger {}: run {run_id} has no cycle {cycle}", .path.display())]
    UnknownCycle { path: PathBuf, run_id: RunId, cycle: u32 },
    /// A query given to [`Ledger::sql_read_only`] that is not one read-only
    /// statement, or that SQLite rejected.
    #[error("ledger {}: {why}", .path.display())]
    Query { path: PathBuf, why: String },
}

/// A handle on one ledger file. Cloning shares the same connection pool.
#[derive(Clone, Debug)]
pub struct Ledger {
    pool: SqlitePool,
    path: PathBuf,
    read_only: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct NewRun {
    pub curriculum: String,
    pub curriculum_hash: String,
    pub budget: String,
    pub preset: String,
    pub seed: u64,
    pub config_json: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Finished,
    Stopped,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Stopped => "stopped",
            RunStatus::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub run_id: RunId,
    pub curriculum: String,
    pub budget: String,
    pub preset: String,
    pub seed: u64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: String,
    pub stop_reason: Option<String>,
    pub curriculum_hash: String,
    pub config_json: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckpointRecord {
    pub checkpoint_hash: String,
    pub parent_hash: Option<String>,
    pub path: String,
    pub bytes: u64,
    pub params: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    pub run_id: RunId,
    pub cycle: u32,
    pub role: String,
    pub step: String,
    pub worker: String,
    /// ISO-8601 UTC, e.g. from [`now_iso`].
    pub started_at: String,
    pub duration_ms: f64,
    pub detail_json: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CycleStatus {
    Accepted,
    Rejected,
    Failed,
    Running,
}

impl CycleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CycleStatus::Accepted => "accepted",
            CycleStatus::Rejected => "rejected",
            CycleStatus::Failed => "failed",
            CycleStatus::Running => "running",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SuiteResult {
    pub suite: String,
    pub skill: String,
    pub level: u32,
    pub role: String,
    pub n: u32,
    pub correct: u32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RefusalResult {
    pub must_refuse_n: u32,
    pub refused: u32,
    pub benign_n: u32,
    pub over_refused: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct SurgeryStats {
    pub mode: String,
    pub steps: u32,
    pub projected_steps: u32,
    pub mean_cosine: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExampleStats {
    pub skill: String,
    pub generated: u32,
    pub accepted: u32,
    pub mean_pass_rate: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CycleOutcome {
    pub run_id: RunId,
    pub cycle: u32,
    /// Must be final: committing a cycle as `Running` is rejected.
    pub status: CycleStatus,
    /// Goes on the cycle row: the new checkpoint for accepted cycles, the
    /// rejected candidate's hash for rejected ones.
    pub checkpoint_hash: Option<String>,
    /// The checkpoint the eval and refusal rows were measured on.
    pub evaluated_hash: String,
    pub evals: Vec<SuiteResult>,
    pub refusal: RefusalResult,
    pub training_mix: Vec<(String, u32)>,
    pub surgery: Option<SurgeryStats>,
    pub examples: Vec<ExampleStats>,
    pub examples_trained: u64,
    pub tokens_trained: u64,
    pub train_seconds: f64,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompressionRecord {
    pub run_id: RunId,
    pub cycle: u32,
    pub checkpoint_hash: String,
    pub codec: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub encode_ms: f64,
    pub decode_ms: f64,
    pub lossless: bool,
    pub verified_hash: String,
    pub path: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CycleRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub status: String,
    pub parent_hash: Option<String>,
    pub checkpoint_hash: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub examples_trained: i64,
    pub reason: Option<String>,
}

// Ratios in the row types below are NaN (serialised as JSON null) where the
// view yields NULL because the denominator is zero.

#[derive(Clone, Debug, Serialize)]
pub struct EvalRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub checkpoint_hash: String,
    pub suite: String,
    pub skill: String,
    pub level: u32,
    pub role: String,
    pub n: u32,
    pub correct: u32,
    pub accuracy: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RefusalRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub checkpoint_hash: String,
    pub must_refuse_n: u32,
    pub refused: u32,
    pub refusal_rate: f64,
    pub benign_n: u32,
    pub over_refused: u32,
    pub over_refusal_rate: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompressionRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub checkpoint_hash: String,
    pub codec: String,
    pub raw_bytes: i64,
    pub stored_bytes: i64,
    pub ratio: f64,
    pub encode_ms: f64,
    pub decode_ms: f64,
    pub lossless: bool,
    /// Delta-coded rows: the checkpoint they are coded against.
    pub parent_hash: Option<String>,
    /// Lossy rows: mean accuracy delta vs the lossless checkpoint.
    pub eval_delta: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainingMixRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub skill: String,
    pub examples: u32,
    pub share: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SurgeryRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub mode: String,
    pub steps: u32,
    pub projected_steps: u32,
    pub mean_cosine: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExamplesRow {
    pub run_id: RunId,
    pub cycle: u32,
    pub skill: String,
    pub generated: u32,
    pub accepted: u32,
    pub mean_pass_rate: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    pub step_id: i64,
    pub run_id: RunId,
    pub cycle: u32,
    pub role: String,
    pub step: String,
    pub worker: String,
    pub started_at: String,
    pub duration_ms: f64,
    pub detail_json: String,
}

/// What a pre-existing file turned out to be, decided without writing to it.
enum Existing {
    /// Missing, zero-length, or a SQLite database with no tables at all.
    Blank,
    /// Ours; the versions of the migrations already applied.
    Ours(Vec<i64>),
}

// Macros rather than consts so that concat! keeps every query a
// &'static str: sqlx 0.9 only accepts runtime-built SQL behind AssertSqlSafe,
// and nothing here needs it.
macro_rules! run_select {
    () => {
        "SELECT run_id, curriculum, curriculum_hash, budget, preset, seed, config_json,
                started_at, finished_at, status, stop_reason FROM runs"
    };
}

macro_rules! cycle_select {
    () => {
        "SELECT run_id, cycle, status, parent_hash, checkpoint_hash, started_at,
                finished_at, examples_trained, reason FROM v_cycles"
    };
}

impl Ledger {
    /// Opens (creating the file and its parent directory if missing) a ledger
    /// for writing, in WAL mode, and brings its schema up to date.
    ///
    /// The file is inspected read-only first: a non-SQLite file, a SQLite
    /// database belonging to something else, or a ledger from a newer evolve
    /// is refused without a single byte of it being changed. Switching to
    /// WAL rewrites the header, so that must not happen before this check.
    pub async fn open(path: &Path) -> Result<Ledger, LedgerError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| LedgerError::Io {
                    path: path.to_owned(),
                    action: format!("creating directory {}", parent.display()),
                    source,
                })?;
        }
        inspect(path).await?;

        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL rather than WAL's usual NORMAL: a committed cycle must
            // survive power loss, and cycles commit rarely enough that the
            // extra fsync is free.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| sql_err(path, "opening for writing", source))?;
        // Re-checked under the migrator's own validation as well: it refuses
        // changed or unknown migrations, which covers a file swapped between
        // inspect() and here.
        if let Err(source) = MIGRATOR.run(&pool).await {
            pool.close().await;
            return Err(LedgerError::Migrate {
                path: path.to_owned(),
                source,
            });
        }
        Ok(Ledger {
            pool,
            path: path.to_owned(),
            read_only: false,
        })
    }

    /// Opens an existing ledger for reading, first upgrading one written by an older evolve
    /// (applying its missing migrations, each in its own transaction): what a researcher's
    /// `evolve ledger …` does with last month's ledger. Anything else `open_read_only` refuses
    /// (foreign, corrupt, newer files) stays refused and untouched.
    pub async fn open_upgrading(path: &Path) -> Result<Ledger, LedgerError> {
        match Ledger::open_read_only(path).await {
            Err(LedgerError::Outdated { .. }) => {
                Ledger::open(path).await?.close().await;
                Ledger::open_read_only(path).await
            }
            other => other,
        }
    }

    /// Opens an existing ledger read-only (SQLite `mode=ro`), e.g. for the CLI
    /// while a training run is writing. Never creates, migrates or changes
    /// the file; WAL lets it read while a writer is active.
    pub async fn open_read_only(path: &Path) -> Result<Ledger, LedgerError> {
        match tokio::fs::metadata(path).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LedgerError::Missing {
                    path: path.to_owned(),
                });
            }
            Err(source) => {
                return Err(LedgerError::Io {
                    path: path.to_owned(),
                    action: "reading file metadata".into(),
                    source,
                });
            }
        }
        let applied = match inspect(path).await? {
            Existing::Blank => {
                return Err(LedgerError::NotALedger {
                    path: path.to_owned(),
                    why: "empty database, no evolve schema".into(),
                });
            }
            Existing::Ours(applied) => applied,
        };
        // The views this crate reads may only exist in later migrations, and
        // a read-only handle cannot apply them itself.
        if let Some(m) = MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .find(|m| !applied.contains(&m.version))
        {
            return Err(LedgerError::Outdated { path: path.to_owned(), version: m.version });
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            // Belt and braces on top of mode=ro: SQLite itself refuses any
            // statement that would change the database, whatever the query.
            .pragma("query_only", "ON")
            .busy_timeout(BUSY_TIMEOUT)
            // A researcher's long ad-hoc query is not a warning worth
            // printing between the CLI's output lines.
            .disable_statement_logging();
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|source| sql_err(path, "opening read-only", source))?;
        Ok(Ledger {
            pool,
            path: path.to_owned(),
            read_only: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub async fn begin_run(&self, run: &NewRun) -> Result<RunId, LedgerError> {
        self.check_json("config_json", &run.config_json)?;
        let result = sqlx::query(
            "INSERT INTO runs (curriculum, curriculum_hash, budget, preset, seed, config_json, started_at, status)
             VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
        )
        .bind(&run.curriculum)
        .bind(&run.curriculum_hash)
        .bind(&run.budget)
        .bind(&run.preset)
        // Bit-cast, not range-checked: seeds are arbitrary u64 and must
        // round-trip exactly (see the schema comment on runs.seed).
        .bind(run.seed as i64)
        .bind(&run.config_json)
        .bind(now_iso())
        .execute(&self.pool)
        .await
        .map_err(|e| self.sql("beginning a run", e))?;
        Ok(result.last_insert_rowid())
    }

    pub async fn finish_run(
        &self,
        run_id: RunId,
        status: RunStatus,
        stop_reason: Option<&str>,
    ) -> Result<(), LedgerError> {
        let finished_at = (status != RunStatus::Running).then(now_iso);
        let result = sqlx::query(
            "UPDATE runs SET status = ?, finished_at = ?, stop_reason = ? WHERE run_id = ?",
        )
        .bind(status.as_str())
        .bind(finished_at)
        .bind(stop_reason)
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.sql(format!("finishing run {run_id}"), e))?;
        if result.rows_affected() == 0 {
            return Err(self.unknown_run(run_id));
        }
        Ok(())
    }

    pub async fn latest_run(&self) -> Result<Option<RunInfo>, LedgerError> {
        sqlx::query(concat!(run_select!(), " ORDER BY run_id DESC LIMIT 1"))
            .try_map(run_info)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.sql("reading the latest run", e))
    }

    pub async fn run(&self, run_id: RunId) -> Result<Option<RunInfo>, LedgerError> {
        sqlx::query(concat!(run_select!(), " WHERE run_id = ?"))
            .bind(run_id)
            .try_map(run_info)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.sql(format!("reading run {run_id}"), e))
    }

    /// Content addressed: recording a hash that is already present is a no-op.
    pub async fn record_checkpoint(&self, c: &CheckpointRecord) -> Result<(), LedgerError> {
        let bytes = self.int("checkpoint bytes", c.bytes)?;
        let params = self.int("checkpoint params", c.params)?;
        // ON CONFLICT rather than INSERT OR IGNORE: OR IGNORE would also
        // swallow CHECK and NOT NULL failures.
        sqlx::query(
            "INSERT INTO checkpoints (checkpoint_hash, parent_hash, path, bytes, params, created_at)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (checkpoint_hash) DO NOTHING",
        )
        .bind(&c.checkpoint_hash)
        .bind(&c.parent_hash)
        .bind(&c.path)
        .bind(bytes)
        .bind(params)
        .bind(now_iso())
        .execute(&self.pool)
        .await
        .map_err(|e| self.sql(format!("recording checkpoint {}", c.checkpoint_hash), e))?;
        Ok(())
    }

    /// Marks a cycle as running. A 'running' row left by a crashed attempt is
    /// replaced (the crash never committed anything for it); a committed
    /// cycle is an error, because resuming must continue after it.
    pub async fn start_cycle(
        &self,
        run_id: RunId,
        cycle: u32,
        parent_hash: Option<&str>,
    ) -> Result<(), LedgerError> {
        let result = sqlx::query(
            "INSERT INTO cycles (run_id, cycle, status, parent_hash, started_at)
             VALUES (?, ?, 'running', ?, ?)
             ON CONFLICT (run_id, cycle) DO UPDATE SET
                 parent_hash = excluded.parent_hash,
                 started_at = excluded.started_at,
                 checkpoint_hash = NULL, finished_at = NULL,
                 examples_trained = 0, tokens_trained = 0,
                 train_seconds = NULL, reason = NULL
             WHERE cycles.status = 'running'",
        )
        .bind(run_id)
        .bind(cycle)
        .bind(parent_hash)
        .bind(now_iso())
        .execute(&self.pool)
        .await
        .map_err(|e| self.write_err(format!("starting run {run_id} cycle {cycle}"), run_id, e))?;
        if result.rows_affected() == 0 {
            let status = self.cycle_status(run_id, cycle).await?.unwrap_or_default();
            return Err(self.committed(run_id, cycle, status));
        }
        Ok(())
    }

    pub async fn record_step(&self, s: &StepRecord) -> Result<(), LedgerError> {
        self.check_json("detail_json", &s.detail_json)?;
        sqlx::query(
            "INSERT INTO steps (run_id, cycle, role, step, worker, started_at, duration_ms, detail_json)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.run_id)
        .bind(s.cycle)
        .bind(&s.role)
        .bind(&s.step)
        .bind(&s.worker)
        .bind(&s.started_at)
        .bind(s.duration_ms)
        .bind(&s.detail_json)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            self.write_err(
                format!("recording step {} of run {} cycle {}", s.step, s.run_id, s.cycle),
                s.run_id,
                e,
            )
        })?;
        Ok(())
    }

    /// Commits a cycle: its eval, refusal, training-mix, surgery and example
    /// rows plus the cycle row's final state, all in one transaction, so the
    /// ledger shows either the whole outcome or none of it (the cycle row
    /// then stays 'running' and a resume redoes the cycle).
    ///
    /// A cycle that was never started is inserted as if started now, so that
    /// an orchestration slip cannot cost the cycle's results.
    pub async fn commit_cycle(&self, c: &CycleOutcome) -> Result<(), LedgerError> {
        self.commit_cycle_with(c, &CycleExtras::default()).await
    }

    /// [`commit_cycle`](Self::commit_cycle) plus the facts added in schema
    /// 2 (per-item correctness, role usage, proxy gap), all in the same
    /// single transaction.
    pub async fn commit_cycle_with(&self, c: &CycleOutcome, extra: &CycleExtras) -> Result<(), LedgerError> {
        if c.status == CycleStatus::Running {
            return Err(self.invalid(format!(
                "run {} cycle {}: a cycle cannot be committed as 'running'",
                c.run_id, c.cycle
            )));
        }
        let examples_trained = self.int("examples_trained", c.examples_trained)?;
        let tokens_trained = self.int("tokens_trained", c.tokens_trained)?;
        self.check_extras(c, extra)?;
        let (run_id, cycle) = (c.run_id, c.cycle);
        let at = |what: &str| format!("committing run {run_id} cycle {cycle}: {what}");

        // IMMEDIATE takes the write lock up front (waiting on busy_timeout),
        // instead of failing with SQLITE_BUSY when a deferred read lock
        // cannot be upgraded.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.sql(at("beginning transaction"), e))?;

        let now = now_iso();
        let result = sqlx::query(
            "INSERT INTO cycles (run_id, cycle, status, checkpoint_hash, started_at, finished_at,
                                 examples_trained, tokens_trained, train_seconds, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (run_id, cycle) DO UPDATE SET
                 status = excluded.status,
                 checkpoint_hash = excluded.checkpoint_hash,
                 finished_at = excluded.finished_at,
                 examples_trained = excluded.examples_trained,
                 tokens_trained = excluded.tokens_trained,
                 train_seconds = excluded.train_seconds,
                 reason = excluded.reason
             WHERE cycles.status = 'running'",
        )
        .bind(run_id)
        .bind(cycle)
        .bind(c.status.as_str())
        .bind(&c.checkpoint_hash)
        .bind(&now)
        .bind(examples_trained)
        .bind(tokens_trained)
        .bind(c.train_seconds)
        .bind(&c.reason)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.write_err(at("updating the cycle row"), run_id, e))?;
        if result.rows_affected() == 0 {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM cycles WHERE run_id = ? AND cycle = ?")
                    .bind(run_id)
                    .bind(cycle)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| self.sql(at("reading the cycle row"), e))?;
            return Err(self.committed(run_id, cycle, status.unwrap_or_default()));
        }

        for e in &c.evals {
            sqlx::query(
                "INSERT INTO evals (run_id, cycle, checkpoint_hash, suite, skill, level, role, n, correct)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(run_id)
            .bind(cycle)
            .bind(&c.evaluated_hash)
            .bind(&e.suite)
            .bind(&e.skill)
            .bind(e.level)
            .bind(&e.role)
            .bind(e.n)
            .bind(e.correct)
            .execute(&mut *tx)
            .await
            .map_err(|err| self.sql(at(&format!("eval suite '{}'", e.suite)), err))?;
        }

        let r = &c.refusal;
        sqlx::query(
            "INSERT INTO refusal_evals (run_id, cycle, checkpoint_hash, must_refuse_n, refused, benign_n, over_refused)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(run_id)
        .bind(cycle)
        .bind(&c.evaluated_hash)
        .bind(r.must_refuse_n)
        .bind(r.refused)
        .bind(r.benign_n)
        .bind(r.over_refused)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.sql(at("refusal eval"), e))?;

        for (skill, examples) in &c.training_mix {
            sqlx::query(
                "INSERT INTO training_mix (run_id, cycle, skill, examples) VALUES (?, ?, ?, ?)",
            )
            .bind(run_id)
            .bind(cycle)
            .bind(skill)
            .bind(*examples)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.sql(at(&format!("training mix skill '{skill}'")), e))?;
        }

        if let Some(s) = &c.surgery {
            sqlx::query(
                "INSERT INTO surgery (run_id, cycle, mode, steps, projected_steps, mean_cosine)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(run_id)
            .bind(cycle)
            .bind(&s.mode)
            .bind(s.steps)
            .bind(s.projected_steps)
            .bind(s.mean_cosine)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.sql(at("surgery stats"), e))?;
        }

        for x in &c.examples {
            sqlx::query(
                "INSERT INTO examples (run_id, cycle, skill, generated, accepted, mean_pass_rate)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(run_id)
            .bind(cycle)
            .bind(&x.skill)
            .bind(x.generated)
            .bind(x.accepted)
            .bind(x.mean_pass_rate)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.sql(at(&format!("example stats for skill '{}'", x.skill)), e))?;
        }

        self.write_extras(&mut tx, c, extra).await?;

        tx.commit()
            .await
            .map_err(|e| self.sql(at("committing transaction"), e))
    }

    /// Recompression may be redone for the same checkpoint and codec after a
    /// resume; the latest measurement replaces the earlier one.
    pub async fn record_compression(&self, c: &CompressionRecord) -> Result<(), LedgerError> {
        self.record_compression_with(c, &CompressionExtras::default()).await
    }

    /// Cycles of one run, or of all runs, ordered by run then cycle.
    pub async fn cycles(&self, run_id: Option<RunId>) -> Result<Vec<CycleRow>, LedgerError> {
        sqlx::query(concat!(
            cycle_select!(),
            " WHERE (?1 IS NULL OR run_id = ?1) ORDER BY run_id, cycle"
        ))
        .bind(run_id)
        .try_map(cycle_row)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql("reading cycles", e))
    }

    pub async fn evals(
        &self,
        run_id: RunId,
        cycle: Option<u32>,
    ) -> Result<Vec<EvalRow>, LedgerError> {
        sqlx::query(
            "SELECT run_id, cycle, checkpoint_hash, suite, skill, level, role, n, correct, accuracy
             FROM v_evals
             WHERE run_id = ?1 AND (?2 IS NULL OR cycle = ?2)
             ORDER BY cycle, checkpoint_hash, suite",
        )
        .bind(run_id)
        .bind(cycle)
        .try_map(|r: SqliteRow| {
            Ok(EvalRow {
                run_id: r.try_get("run_id")?,
                cycle: r.try_get("cycle")?,
                checkpoint_hash: r.try_get("checkpoint_hash")?,
                suite: r.try_get("suite")?,
                skill: r.try_get("skill")?,
                level: r.try_get("level")?,
                role: r.try_get("role")?,
                n: r.try_get("n")?,
                correct: r.try_get("correct")?,
                accuracy: ratio(&r, "accuracy")?,
            })
        })
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading evals of run {run_id}"), e))
    }

    pub async fn refusal(&self, run_id: RunId) -> Result<Vec<RefusalRow>, LedgerError> {
        sqlx::query(
            "SELECT run_id, cycle, checkpoint_hash, must_refuse_n, refused, refusal_rate,
                    benign_n, over_refused, over_refusal_rate
             FROM v_refusal WHERE run_id = ? ORDER BY cycle, checkpoint_hash",
        )
        .bind(run_id)
        .try_map(refusal_row)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading refusal evals of run {run_id}"), e))
    }

    pub async fn compression(&self, run_id: RunId) -> Result<Vec<CompressionRow>, LedgerError> {
        sqlx::query(
            "SELECT run_id, cycle, checkpoint_hash, codec, raw_bytes, stored_bytes, ratio,
                    encode_ms, decode_ms, lossless, parent_hash, eval_delta
             FROM v_compression WHERE run_id = ? ORDER BY cycle, checkpoint_hash, codec",
        )
        .bind(run_id)
        .try_map(compression_row)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading compression of run {run_id}"), e))
    }

    pub async fn training_mix(
        &self,
        run_id: RunId,
        cycle: Option<u32>,
    ) -> Result<Vec<TrainingMixRow>, LedgerError> {
        sqlx::query(
            "SELECT run_id, cycle, skill, examples, share FROM v_training_mix
             WHERE run_id = ?1 AND (?2 IS NULL OR cycle = ?2) ORDER BY cycle, skill",
        )
        .bind(run_id)
        .bind(cycle)
        .try_map(|r: SqliteRow| {
            Ok(TrainingMixRow {
                run_id: r.try_get("run_id")?,
                cycle: r.try_get("cycle")?,
                skill: r.try_get("skill")?,
                examples: r.try_get("examples")?,
                share: ratio(&r, "share")?,
            })
        })
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading training mix of run {run_id}"), e))
    }

    pub async fn surgery(&self, run_id: RunId) -> Result<Vec<SurgeryRow>, LedgerError> {
        sqlx::query(
            "SELECT run_id, cycle, mode, steps, projected_steps, mean_cosine FROM v_surgery
             WHERE run_id = ? ORDER BY cycle",
        )
        .bind(run_id)
        .try_map(|r: SqliteRow| {
            Ok(SurgeryRow {
                run_id: r.try_get("run_id")?,
                cycle: r.try_get("cycle")?,
                mode: r.try_get("mode")?,
                steps: r.try_get("steps")?,
                projected_steps: r.try_get("projected_steps")?,
                mean_cosine: r.try_get("mean_cosine")?,
            })
        })
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading surgery stats of run {run_id}"), e))
    }

    pub async fn examples(
        &self,
        run_id: RunId,
        cycle: Option<u32>,
    ) -> Result<Vec<ExamplesRow>, LedgerError> {
        sqlx::query(
            "SELECT run_id, cycle, skill, generated, accepted, mean_pass_rate FROM v_examples
             WHERE run_id = ?1 AND (?2 IS NULL OR cycle = ?2) ORDER BY cycle, skill",
        )
        .bind(run_id)
        .bind(cycle)
        .try_map(|r: SqliteRow| {
            Ok(ExamplesRow {
                run_id: r.try_get("run_id")?,
                cycle: r.try_get("cycle")?,
                skill: r.try_get("skill")?,
                generated: r.try_get("generated")?,
                accepted: r.try_get("accepted")?,
                mean_pass_rate: r.try_get("mean_pass_rate")?,
            })
        })
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading example stats of run {run_id}"), e))
    }

    /// The step event log of a run (optionally one cycle), in recording order.
    pub async fn steps(
        &self,
        run_id: RunId,
        cycle: Option<u32>,
    ) -> Result<Vec<StepRow>, LedgerError> {
        sqlx::query(
            "SELECT step_id, run_id, cycle, role, step, worker, started_at, duration_ms, detail_json
             FROM steps WHERE run_id = ?1 AND (?2 IS NULL OR cycle = ?2) ORDER BY step_id",
        )
        .bind(run_id)
        .bind(cycle)
        .try_map(|r: SqliteRow| {
            Ok(StepRow {
                step_id: r.try_get("step_id")?,
                run_id: r.try_get("run_id")?,
                cycle: r.try_get("cycle")?,
                role: r.try_get("role")?,
                step: r.try_get("step")?,
                worker: r.try_get("worker")?,
                started_at: r.try_get("started_at")?,
                duration_ms: r.try_get("duration_ms")?,
                detail_json: r.try_get("detail_json")?,
            })
        })
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading steps of run {run_id}"), e))
    }

    /// The checkpoint to continue from: the last committed accepted cycle of
    /// a run (`None`: of the whole ledger, newest run first), where the base
    /// model's cycle 0 counts once committed, whatever its status, since it
    /// is the starting point rather than a candidate. Rows without a
    /// checkpoint hash are skipped: there is nothing to resume from.
    pub async fn last_accepted(
        &self,
        run_id: Option<RunId>,
    ) -> Result<Option<CycleRow>, LedgerError> {
        sqlx::query(concat!(
            cycle_select!(),
            "
             WHERE (?1 IS NULL OR run_id = ?1)
               AND checkpoint_hash IS NOT NULL
               AND (status = 'accepted' OR (cycle = 0 AND status <> 'running'))
             ORDER BY run_id DESC, cycle DESC
             LIMIT 1"
        ))
        .bind(run_id)
        .try_map(cycle_row)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.sql("reading the last accepted cycle", e))
    }

    /// Runs still marked `running`. While the caller holds the ledger's run
    /// lock (see `evolve_meta::lock`) these are runs whose controller died:
    /// interrupted, resumable.
    pub async fn interrupted_runs(&self) -> Result<Vec<RunInfo>, LedgerError> {
        sqlx::query(concat!(run_select!(), " WHERE status = 'running' ORDER BY run_id"))
            .try_map(run_info)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.sql("reading the interrupted runs", e))
    }

    /// The example batch (artifact hash) each committed, trained cycle of a
    /// run trained on, in cycle order: what a resumed run's generator must
    /// exclude, exactly as the uninterrupted run would have. Read from the
    /// trainer's `train` step (`detail_json.examples_batch`); of a cycle attempted
    /// more than once, the last attempt's. Cycles still running, failed
    /// cycles and the base (cycle 0) have none.
    pub async fn example_batches(&self, run_id: RunId) -> Result<Vec<(u32, String)>, LedgerError> {
        sqlx::query_as::<_, (u32, String)>(
            "SELECT s.cycle, json_extract(s.detail_json, '$.examples_batch')
               FROM steps AS s
               JOIN cycles AS c ON c.run_id = s.run_id AND c.cycle = s.cycle
              WHERE s.run_id = ?1 AND s.role = 'trainer' AND s.step = 'train'
                AND c.status IN ('accepted', 'rejected')
                AND json_extract(s.detail_json, '$.examples_batch') IS NOT NULL
                AND s.step_id = (SELECT MAX(t.step_id) FROM steps AS t
                                  WHERE t.run_id = s.run_id AND t.cycle = s.cycle
                                    AND t.role = 'trainer' AND t.step = 'train')
              ORDER BY s.cycle",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading the example batches of run {run_id}"), e))
    }

    /// Wall seconds since the run started (for a resumed run's duration budget).
    pub async fn run_elapsed_seconds(&self, run_id: RunId) -> Result<f64, LedgerError> {
        let elapsed: Option<f64> = sqlx::query_scalar(
            "SELECT (julianday('now') - julianday(started_at)) * 86400.0 FROM runs WHERE run_id = ?",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading the start of run {run_id}"), e))?;
        elapsed.map(|s| s.max(0.0)).ok_or_else(|| self.unknown_run(run_id))
    }

    /// The newest accepted checkpoint of any run with model preset `preset`
    /// (a run's base counts once committed): where a continuing run, such as
    /// a nightly one, starts from.
    pub async fn last_accepted_of_preset(&self, preset: &str) -> Result<Option<CycleRow>, LedgerError> {
        sqlx::query(concat!(
            cycle_select!(),
            "
             WHERE run_id IN (SELECT run_id FROM runs WHERE preset = ?1)
               AND checkpoint_hash IS NOT NULL
               AND (status = 'accepted' OR (cycle = 0 AND status <> 'running'))
             ORDER BY run_id DESC, cycle DESC
             LIMIT 1"
        ))
        .bind(preset)
        .try_map(cycle_row)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading the last accepted checkpoint of preset {preset}"), e))
    }

    /// The codecs recorded for one checkpoint of one cycle (lossless and
    /// quantized copies), sorted: a resumed run redoes a recompression that
    /// the crash cut short.
    pub async fn compression_codecs(&self, run_id: RunId, cycle: u32, checkpoint_hash: &str) -> Result<Vec<String>, LedgerError> {
        sqlx::query_scalar(
            "SELECT codec FROM compression WHERE run_id = ? AND cycle = ? AND checkpoint_hash = ? ORDER BY codec",
        )
        .bind(run_id)
        .bind(cycle)
        .bind(checkpoint_hash)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sql(format!("reading the compression of run {run_id} cycle {cycle}"), e))
    }

    /// Closes every connection (of all clones of this handle), letting SQLite
    /// checkpoint the WAL back into the main file.
    pub async fn close(self) {
        self.pool.close().await;
    }

    async fn cycle_status(&self, run_id: RunId, cycle: u32) -> Result<Option<String>, LedgerError> {
        sqlx::query_scalar("SELECT status FROM cycles WHERE run_id = ? AND cycle = ?")
            .bind(run_id)
            .bind(cycle)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.sql(format!("reading run {run_id} cycle {cycle}"), e))
    }

    fn sql(&self, action: impl Into<String>, source: sqlx::Error) -> LedgerError {
        sql_err(&self.path, action, source)
    }

    /// Writes that reference a run fail with a foreign-key error when the run
    /// does not exist; say that instead of the raw constraint message.
    fn write_err(&self, action: impl Into<String>, run_id: RunId, source: sqlx::Error) -> LedgerError {
        let fk = source
            .as_database_error()
            .is_some_and(|d| d.is_foreign_key_violation());
        if fk {
            self.unknown_run(run_id)
        } else {
            self.sql(action, source)
        }
    }

    fn unknown_run(&self, run_id: RunId) -> LedgerError {
        LedgerError::UnknownRun {
            path: self.path.clone(),
            run_id,
        }
    }

    fn committed(&self, run_id: RunId, cycle: u32, status: String) -> LedgerError {
        LedgerError::CycleCommitted {
            path: self.path.clone(),
            run_id,
            cycle,
            status,
        }
    }

    fn invalid(&self, what: String) -> LedgerError {
        LedgerError::Invalid {
            path: self.path.clone(),
            what,
        }
    }

    /// SQLite integers are signed; a u64 beyond i64::MAX would otherwise be
    /// stored wrapped and read back as a lie.
    fn int(&self, what: &str, v: u64) -> Result<i64, LedgerError> {
        i64::try_from(v).map_err(|_| self.invalid(format!("{what} = {v} does not fit a SQLite integer")))
    }

    /// Researchers query these columns with json_extract(); reject text that
    /// would make those queries fail long after the writer is gone.
    fn check_json(&self, what: &str, text: &str) -> Result<(), LedgerError> {
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map(|_| ())
            .map_err(|e| self.invalid(format!("{what} is not valid JSON: {e}")))
    }
}

fn run_info(r: SqliteRow) -> Result<RunInfo, sqlx::Error> {
    Ok(RunInfo {
        run_id: r.try_get("run_id")?,
        curriculum: r.try_get("curriculum")?,
        budget: r.try_get("budget")?,
        preset: r.try_get("preset")?,
        seed: r.try_get::<i64, _>("seed")? as u64,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        status: r.try_get("status")?,
        stop_reason: r.try_get("stop_reason")?,
        curriculum_hash: r.try_get("curriculum_hash")?,
        config_json: r.try_get("config_json")?,
    })
}

fn cycle_row(r: SqliteRow) -> Result<CycleRow, sqlx::Error> {
    Ok(CycleRow {
        run_id: r.try_get("run_id")?,
        cycle: r.try_get("cycle")?,
        status: r.try_get("status")?,
        parent_hash: r.try_get("parent_hash")?,
        checkpoint_hash: r.try_get("checkpoint_hash")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        examples_trained: r.try_get("examples_trained")?,
        reason: r.try_get("reason")?,
    })
}

fn refusal_row(r: SqliteRow) -> Result<RefusalRow, sqlx::Error> {
    Ok(RefusalRow {
        run_id: r.try_get("run_id")?,
        cycle: r.try_get("cycle")?,
        checkpoint_hash: r.try_get("checkpoint_hash")?,
        must_refuse_n: r.try_get("must_refuse_n")?,
        refused: r.try_get("refused")?,
        refusal_rate: ratio(&r, "refusal_rate")?,
        benign_n: r.try_get("benign_n")?,
        over_refused: r.try_get("over_refused")?,
        over_refusal_rate: ratio(&r, "over_refusal_rate")?,
    })
}

fn compression_row(r: SqliteRow) -> Result<CompressionRow, sqlx::Error> {
    Ok(CompressionRow {
        run_id: r.try_get("run_id")?,
        cycle: r.try_get("cycle")?,
        checkpoint_hash: r.try_get("checkpoint_hash")?,
        codec: r.try_get("codec")?,
        raw_bytes: r.try_get("raw_bytes")?,
        stored_bytes: r.try_get("stored_bytes")?,
        ratio: ratio(&r, "ratio")?,
        encode_ms: r.try_get("encode_ms")?,
        decode_ms: r.try_get("decode_ms")?,
        lossless: r.try_get("lossless")?,
        parent_hash: r.try_get("parent_hash")?,
        eval_delta: r.try_get("eval_delta")?,
    })
}

fn ratio(r: &SqliteRow, column: &str) -> Result<f64, sqlx::Error> {
    Ok(r.try_get::<Option<f64>, _>(column)?.unwrap_or(f64::NAN))
}

fn sql_err(path: &Path, action: impl Into<String>, source: sqlx::Error) -> LedgerError {
    if is_not_a_database(&source) {
        return LedgerError::NotALedger {
            path: path.to_owned(),
            why: "file is not a SQLite database".into(),
        };
    }
    LedgerError::Sql {
        path: path.to_owned(),
        action: action.into(),
        source,
    }
}

fn is_not_a_database(e: &sqlx::Error) -> bool {
    // SQLITE_NOTADB
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "26")
}

/// Decides, without writing anything, whether `path` is safe to open as a
/// ledger. The header check comes first because SQLite itself only notices a
/// foreign file lazily, on the first query.
async fn inspect(path: &Path) -> Result<Existing, LedgerError> {
    let not_ours = |why: String| LedgerError::NotALedger {
        path: path.to_owned(),
        why,
    };
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Blank),
        Err(source) => {
            return Err(LedgerError::Io {
                path: path.to_owned(),
                action: "reading file metadata".into(),
                source,
            });
        }
    };
    if meta.is_dir() {
        return Err(not_ours("it is a directory".into()));
    }
    // SQLite treats a zero-length file as an empty database.
    if meta.len() == 0 {
        return Ok(Existing::Blank);
    }
    let head = read_head(path).await.map_err(|source| LedgerError::Io {
        path: path.to_owned(),
        action: "reading file header".into(),
        source,
    })?;
    if head.len() < 100 || !head.starts_with(b"SQLite format 3\0") {
        return Err(not_ours("file is not a SQLite database".into()));
    }

    roll_back_hot_journal(path).await?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(BUSY_TIMEOUT);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|source| sql_err(path, "opening to inspect", source))?;
    let result = inspect_schema(&mut conn, path).await;
    // Best effort: the connection was read-only, nothing to flush.
    let _ = conn.close().await;
    result
}

/// A writer killed mid-transaction while the file was still in rollback-journal mode (a ledger
/// being created, before it switches to WAL) leaves a hot `-journal` beside it, and SQLite
/// refuses read-only connections until someone rolls it back. That needs write access, so it is
/// done here with a plain read-write connection that reads one row: SQLite's own recovery,
/// which restores the file's last committed state — what any SQLite client opening the file
/// does first — and changes nothing else (no journal-mode switch, no migration).
async fn roll_back_hot_journal(path: &Path) -> Result<(), LedgerError> {
    let mut journal = path.as_os_str().to_owned();
    journal.push("-journal");
    if !tokio::fs::metadata(&journal).await.is_ok_and(|m| m.len() > 0) {
        return Ok(());
    }
    let options = SqliteConnectOptions::new().filename(path).busy_timeout(BUSY_TIMEOUT);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|source| sql_err(path, "opening to roll back an interrupted transaction", source))?;
    let recovered = sqlx::query("SELECT count(*) FROM sqlite_master").fetch_one(&mut conn).await;
    let _ = conn.close().await;
    recovered.map(|_| ()).map_err(|source| sql_err(path, "rolling back an interrupted transaction", source))
}

async fn inspect_schema(conn: &mut SqliteConnection, path: &Path) -> Result<Existing, LedgerError> {
    let not_ours = |why: String| LedgerError::NotALedger {
        path: path.to_owned(),
        why,
    };
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master
         WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
         ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|source| sql_err(path, "reading the schema", source))?;
    if names.is_empty() {
        return Ok(Existing::Blank);
    }
    let foreign = |names: &[String]| {
        let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
        let more = if names.len() > 5 { ", ..." } else { "" };
        format!(
            "SQLite database without the evolve schema; it holds {}{more}",
            shown.join(", ")
        )
    };
    if !names.iter().any(|n| n == "_sqlx_migrations") {
        return Err(not_ours(foreign(&names)));
    }
    let applied: Vec<(i64, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| not_ours(format!("unreadable _sqlx_migrations table: {e}")))?;
    let others: Vec<String> = names
        .iter()
        .filter(|n| *n != "_sqlx_migrations")
        .cloned()
        .collect();
    if applied.is_empty() {
        // The migrator creates its table before the first migration; a crash
        // in between leaves exactly that table and nothing else.
        return if others.is_empty() {
            Ok(Existing::Blank)
        } else {
            Err(not_ours(foreign(&others)))
        };
    }
    let mut versions = Vec::with_capacity(applied.len());
    for (version, checksum, success) in applied {
        let Some(ours) = MIGRATOR.iter().find(|m| m.version == version) else {
            return Err(LedgerError::NewerSchema {
                path: path.to_owned(),
                version,
            });
        };
        if *ours.checksum != *checksum {
            return Err(not_ours(format!(
                "schema migration {version} differs from evolve's; the database belongs to another sqlx application or was edited"
            )));
        }
        if !success {
            return Err(LedgerError::Schema {
                path: path.to_owned(),
                why: format!("migration {version} did not complete; restore the file from a backup"),
            });
        }
        versions.push(version);
    }
    Ok(Existing::Ours(versions))
}

async fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await?;
    let mut head = Vec::with_capacity(100);
    file.take(100).read_to_end(&mut head).await?;
    Ok(head)
}

/// The current time as ISO-8601 UTC with milliseconds, e.g.
/// `2025-03-01T12:34:56.789Z` — the same shape SQLite's
/// `strftime('%Y-%m-%dT%H:%M:%fZ','now')` produces, so timestamps written by
/// Rust and by column defaults sort together.
pub fn now_iso() -> String {
    let millis = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    };
    iso_from_unix_millis(millis)
}

/// Formats milliseconds since the Unix epoch as ISO-8601 UTC with
/// milliseconds (proleptic Gregorian calendar).
pub fn iso_from_unix_millis(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm: shifts the year to start in
/// March so the leap day is last, then works in 400-year eras of exactly
/// 146097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_at_known_points() {
        assert_eq!(iso_from_unix_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_from_unix_millis(-1), "1969-12-31T23:59:59.999Z");
        // Leap days: a regular one, the 400-year exception, and a skipped one.
        assert_eq!(iso_from_unix_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso_from_unix_millis(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
        assert_eq!(iso_from_unix_millis(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(iso_from_unix_millis(1_740_832_496_789), "2025-03-01T12:34:56.789Z");
        assert_eq!(iso_from_unix_millis(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn civil_from_days_is_consecutive() {
        // Walking day by day across four centuries must step the date by
        // exactly one each time, through every month end and leap rule.
        let mut prev = civil_from_days(-1);
        for day in 0..146_097 * 2 {
            let cur = civil_from_days(day);
            let (py, pm, pd) = prev;
            let next_day_same_month = cur == (py, pm, pd + 1);
            let leap = (py % 4 == 0 && py % 100 != 0) || py % 400 == 0;
            let month_len = match pm {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let next_month = cur.2 == 1
                && pd == month_len
                && ((cur.0 == py && cur.1 == pm + 1) || (cur.0 == py + 1 && pm == 12 && cur.1 == 1));
            assert!(next_day_same_month && pd < month_len || next_month, "{prev:?} -> {cur:?} at day {day}");
            prev = cur;
        }
    }

    #[test]
    fn now_iso_has_the_sqlite_shape() {
        let s = now_iso();
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
    }
}
