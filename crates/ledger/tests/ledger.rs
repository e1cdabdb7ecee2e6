//! Every test works on a real ledger file in a fresh temporary directory,
//! because the properties that matter (WAL, atomic commits, refusing foreign
//! files untouched, readers beside a writer) only exist on disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use evolve_ledger::*;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection as _;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A raw read-only look at the file, independent of the crate under test.
async fn raw_ro(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .expect("raw read-only connection")
}

async fn raw_rw(path: &Path, create: bool) -> SqliteConnection {
    SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .busy_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("raw read-write connection")
}

fn new_run(seed: u64) -> NewRun {
    NewRun {
        curriculum: "arith-v1".into(),
        curriculum_hash: "c0ffee".into(),
        budget: "1h".into(),
        preset: "tiny".into(),
        seed,
        config_json: r#"{"lr":0.001,"batch":32}"#.into(),
    }
}

fn suite(suite: &str, skill: &str, level: u32, role: &str, n: u32, correct: u32) -> SuiteResult {
    SuiteResult {
        suite: suite.into(),
        skill: skill.into(),
        level,
        role: role.into(),
        n,
        correct,
    }
}

fn outcome(run_id: RunId, cycle: u32, status: CycleStatus, hash: &str) -> CycleOutcome {
    CycleOutcome {
        run_id,
        cycle,
        status,
        checkpoint_hash: Some(hash.into()),
        evaluated_hash: hash.into(),
        evals: vec![
            suite("add-2", "add", 2, "mastered", 200, 190),
            suite("mul-1", "mul", 1, "frontier", 100, 37),
            suite("empty", "none", 0, "other", 0, 0),
        ],
        refusal: RefusalResult {
            must_refuse_n: 40,
            refused: 30,
            benign_n: 50,
            over_refused: 5,
        },
        training_mix: vec![("add".into(), 300), ("mul".into(), 100)],
        surgery: Some(SurgeryStats {
            mode: "pcgrad".into(),
            steps: 120,
            projected_steps: 30,
            mean_cosine: Some(-0.25),
        }),
        examples: vec![
            ExampleStats {
                skill: "add".into(),
                generated: 500,
                accepted: 300,
                mean_pass_rate: Some(0.75),
            },
            ExampleStats {
                skill: "mul".into(),
                generated: 400,
                accepted: 100,
                mean_pass_rate: None,
            },
        ],
        examples_trained: 400,
        tokens_trained: 51_200,
        train_seconds: 12.5,
        reason: Some("frontier improved".into()),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

async fn columns(conn: &mut SqliteConnection, view: &str) -> Vec<String> {
    // The table-valued form of `PRAGMA table_info(view)`, so the name binds.
    sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
        .bind(view)
        .fetch_all(&mut *conn)
        .await
        .expect("table_info")
}

fn sidecars(path: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", path.display())))
        .filter(|p| p.exists())
        .collect()
}

#[tokio::test]
async fn open_creates_a_wal_ledger_with_the_contract_views() {
    let dir = tmp();
    let path = dir.path().join("nested/deeper/ledger.db");
    let ledger = Ledger::open(&path).await.expect("open");
    assert_eq!(ledger.path(), path.as_path());
    assert!(path.is_file(), "ledger file created with its parent dirs");

    let mut conn = raw_ro(&path).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");

    let migrations: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(migrations, vec![(1, true), (2, true), (3, true)]);

    let views: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        views,
        [
            "v_ablations",
            "v_budget",
            "v_compression",
            "v_curriculum_policy",
            "v_cycles",
            "v_drift",
            "v_eval_items",
            "v_evals",
            "v_examples",
            "v_lineage",
            "v_proxy_gap",
            "v_quantized",
            "v_refusal",
            "v_surgery",
            "v_training_mix"
        ]
    );

    // (view, contract columns, whether the contract allows columns after them)
    let contract: &[(&str, &[&str], bool)] = &[
        (
            "v_cycles",
            &[
                "run_id",
                "cycle",
                "status",
                "parent_hash",
                "checkpoint_hash",
                "started_at",
                "finished_at",
                "examples_trained",
            ],
            true,
        ),
        (
            "v_evals",
            &["run_id", "cycle", "checkpoint_hash", "suite", "skill", "n", "correct", "accuracy"],
            true,
        ),
        (
            "v_refusal",
            &[
                "run_id",
                "cycle",
                "checkpoint_hash",
                "must_refuse_n",
                "refused",
                "refusal_rate",
                "benign_n",
                "over_refused",
                "over_refusal_rate",
            ],
            false,
        ),
        (
            "v_compression",
            &[
                "run_id",
                "cycle",
                "checkpoint_hash",
                "codec",
                "raw_bytes",
                "stored_bytes",
                "ratio",
                "encode_ms",
                "decode_ms",
                "lossless",
            ],
            true,
        ),
        ("v_training_mix", &["run_id", "cycle", "skill", "examples", "share"], false),
        (
            "v_surgery",
            &["run_id", "cycle", "mode", "steps", "projected_steps", "mean_cosine"],
            false,
        ),
        (
            "v_examples",
            &["run_id", "cycle", "skill", "generated", "accepted", "mean_pass_rate"],
            false,
        ),
        // Schema 2.
        (
            "v_drift",
            &["run_id", "cycle", "suite", "accuracy", "delta_vs_parent", "delta_vs_base"],
            true,
        ),
        (
            "v_lineage",
            &["checkpoint_hash", "parent_hash", "cycle", "status", "depth"],
            true,
        ),
        (
            "v_budget",
            &["run_id", "cycle", "role", "gpu_seconds", "busy_seconds", "cost_usd"],
            true,
        ),
        (
            "v_quantized",
            &["run_id", "cycle", "checkpoint_hash", "codec", "suite", "accuracy", "lossless_accuracy", "delta"],
            true,
        ),
        (
            "v_proxy_gap",
            &["run_id", "cycle", "skill", "n", "auc", "calibration_error"],
            false,
        ),
        (
            "v_eval_items",
            &["run_id", "cycle", "checkpoint_hash", "suite", "item", "correct"],
            false,
        ),
    ];
    for (view, cols, open_ended) in contract {
        let got = columns(&mut conn, view).await;
        if *open_ended {
            assert!(got.len() >= cols.len(), "{view}: {got:?}");
            assert_eq!(&got[..cols.len()], *cols, "{view}");
        } else {
            assert_eq!(got, *cols, "{view}");
        }
    }
    // The documented extras sit after the contract columns.
    assert_eq!(&columns(&mut conn, "v_evals").await[8..], ["level", "role"]);
    assert_eq!(&columns(&mut conn, "v_compression").await[10..], ["parent_hash", "eval_delta"]);
    assert_eq!(&columns(&mut conn, "v_lineage").await[5..], ["run_id"]);
    conn.close().await.unwrap();
    ledger.close().await;
}

#[tokio::test]
async fn a_full_run_reads_back_through_the_views() {
    let dir = tmp();
    let path = dir.path().join("ledger.db");
    let ledger = Ledger::open(&path).await.unwrap();

    // Seeds are arbitrary u64s and must survive the signed SQLite column.
    let run = ledger.begin_run(&new_run(u64::MAX - 6)).await.unwrap();
    let info = ledger.run(run).await.unwrap().expect("run exists");
    assert_eq!(info.seed, u64::MAX - 6);
    assert_eq!(info.status, "running");
    assert_eq!(info.curriculum, "arith-v1");
    assert_eq!(info.config_json, r#"{"lr":0.001,"batch":32}"#);
    assert!(info.finished_at.is_none());

    ledger
        .record_checkpoint(&CheckpointRecord {
            checkpoint_hash: "h1".into(),
            parent_hash: Some("h0".into()),
            path: "/ckpt/h1.safetensors".into(),
            bytes: 4096,
            params: 1000,
        })
        .await
        .unwrap();
    // Content addressed: the same hash again is a no-op, not an error.
    ledger
        .record_checkpoint(&CheckpointRecord {
            checkpoint_hash: "h1".into(),
            parent_hash: Some("h0".into()),
            path: "/elsewhere/h1.safetensors".into(),
            bytes: 4096,
            params: 1000,
        })
        .await
        .unwrap();

    ledger.start_cycle(run, 0, Some("h0")).await.unwrap();
    let started = ledger.cycles(Some(run)).await.unwrap();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].status, "running");

    ledger
        .record_step(&StepRecord {
            run_id: run,
            cycle: 0,
            role: "trainer".into(),
            step: "train".into(),
            worker: "w0".into(),
            started_at: now_iso(),
            duration_ms: 12.5,
            detail_json: r#"{"loss":1.5}"#.into(),
        })
        .await
        .unwrap();

    ledger
        .commit_cycle(&outcome(run, 0, CycleStatus::Accepted, "h1"))
        .await
        .unwrap();
    ledger
        .record_compression(&CompressionRecord {
            run_id: run,
            cycle: 0,
            checkpoint_hash: "h1".into(),
            codec: "zstd-19".into(),
            raw_bytes: 4000,
            stored_bytes: 1600,
            encode_ms: 3.0,
            decode_ms: 1.0,
            lossless: true,
            verified_hash: "h1".into(),
            path: "/ckpt/h1.zst".into(),
        })
        .await
        .unwrap();
    ledger.finish_run(run, RunStatus::Finished, None).await.unwrap();

    let info = ledger.latest_run().await.unwrap().unwrap();
    assert_eq!(info.run_id, run);
    assert_eq!(info.status, "finished");
    assert!(info.finished_at.is_some());

    let cycles = ledger.cycles(None).await.unwrap();
    assert_eq!(cycles.len(), 1);
    let c = &cycles[0];
    assert_eq!((c.run_id, c.cycle, c.status.as_str()), (run, 0, "accepted"));
    assert_eq!(c.parent_hash.as_deref(), Some("h0"));
    assert_eq!(c.checkpoint_hash.as_deref(), Some("h1"));
    assert_eq!(c.examples_trained, 400);
    assert_eq!(c.reason.as_deref(), Some("frontier improved"));
    assert!(c.finished_at.as_deref().unwrap() >= c.started_at.as_str());

    let evals = ledger.evals(run, Some(0)).await.unwrap();
    assert_eq!(evals.len(), 3);
    let by_suite = |s: &str| evals.iter().find(|e| e.suite == s).unwrap();
    assert!(close(by_suite("add-2").accuracy, 0.95));
    assert!(close(by_suite("mul-1").accuracy, 0.37));
    assert_eq!(by_suite("mul-1").role, "frontier");
    assert_eq!(by_suite("mul-1").level, 1);
    assert_eq!(by_suite("add-2").checkpoint_hash, "h1");
    // n = 0 has no accuracy; it must not read as 0% or 100%.
    assert!(by_suite("empty").accuracy.is_nan());
    assert!(ledger.evals(run, Some(1)).await.unwrap().is_empty());
    assert_eq!(ledger.evals(run, None).await.unwrap().len(), 3);

    let refusal = ledger.refusal(run).await.unwrap();
    assert_eq!(refusal.len(), 1);
    assert!(close(refusal[0].refusal_rate, 0.75));
    assert!(close(refusal[0].over_refusal_rate, 0.1));
    assert_eq!((refusal[0].must_refuse_n, refusal[0].refused), (40, 30));

    let comp = ledger.compression(run).await.unwrap();
    assert_eq!(comp.len(), 1);
    assert!(close(comp[0].ratio, 2.5));
    assert!(comp[0].lossless);
    assert_eq!((comp[0].raw_bytes, comp[0].stored_bytes), (4000, 1600));

    let mix = ledger.training_mix(run, Some(0)).await.unwrap();
    assert_eq!(mix.len(), 2);
    assert!(close(mix[0].share, 0.75) && mix[0].skill == "add");
    assert!(close(mix[1].share, 0.25) && mix[1].skill == "mul");

    let surgery = ledger.surgery(run).await.unwrap();
    assert_eq!(surgery.len(), 1);
    assert_eq!((surgery[0].steps, surgery[0].projected_steps), (120, 30));
    assert_eq!(surgery[0].mean_cosine, Some(-0.25));

    let examples = ledger.examples(run, None).await.unwrap();
    assert_eq!(examples.len(), 2);
    assert_eq!(examples[1].mean_pass_rate, None);

    let steps = ledger.steps(run, None).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].detail_json, r#"{"loss":1.5}"#);

    // Researchers use the views directly; check them without the crate too.
    let mut conn = raw_ro(&path).await;
    let share: f64 = sqlx::query_scalar(
        "SELECT share FROM v_training_mix WHERE run_id = ? AND cycle = 0 AND skill = 'mul'",
    )
    .bind(run)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(close(share, 0.25));
    let null_accuracy: Option<f64> =
        sqlx::query_scalar("SELECT accuracy FROM v_evals WHERE suite = 'empty'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(null_accuracy, None);
    conn.close().await.unwrap();

    // Rows serialise for the CLI's JSON output, with undefined ratios as null.
    let json = serde_json::to_value(by_suite("empty")).unwrap();
    assert!(json["accuracy"].is_null());
    ledger.close().await;
}

#[tokio::test]
async fn commit_cycle_is_all_or_nothing() {
    let dir = tmp();
    let path = dir.path().join("ledger.db");
    let ledger = Ledger::open(&path).await.unwrap();
    let run = ledger.begin_run(&new_run(1)).await.unwrap();
    ledger.start_cycle(run, 0, None).await.unwrap();

    // Duplicate suite: the PK conflict hits after the cycle row was updated.
    let mut dup_suite = outcome(run, 0, CycleStatus::Accepted, "h1");
    dup_suite.evals.push(dup_suite.evals[0].clone());
    // Duplicate mix skill: fails even later, after evals and refusal rows.
    let mut dup_mix = outcome(run, 0, CycleStatus::Accepted, "h1");
    dup_mix.training_mix.push(("add".into(), 1));
    // Duplicate example skill: the very last insert of the transaction.
    let mut dup_examples = outcome(run, 0, CycleStatus::Accepted, "h1");
    dup_examples.examples.push(ExampleStats {
        skill: "add".into(),
        generated: 1,
        accepted: 1,
        mean_pass_rate: None,
    });
    // Impossible numbers are refused by the schema's CHECKs.
    let mut too_many_correct = outcome(run, 0, CycleStatus::Accepted, "h1");
    too_many_correct.evals.push(suite("odd", "add", 1, "other", 10, 11));

    for bad in [dup_suite, dup_mix, dup_examples, too_many_correct] {
        let err = ledger.commit_cycle(&bad).await.expect_err("must fail");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");

        let cycles = ledger.cycles(Some(run)).await.unwrap();
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].status, "running", "{err}");
        assert_eq!(cycles[0].checkpoint_hash, None);
        assert_eq!(cycles[0].examples_trained, 0);
        assert_eq!(cycles[0].finished_at, None);
        assert!(ledger.evals(run, None).await.unwrap().is_empty(), "{err}");
        assert!(ledger.refusal(run).await.unwrap().is_empty(), "{err}");
        assert!(ledger.training_mix(run, None).await.unwrap().is_empty(), "{err}");
        assert!(ledger.surgery(run).await.unwrap().is_empty(), "{err}");
        assert!(ledger.examples(run, None).await.unwrap().is_empty(), "{err}");
    }

    // A failed commit leaves the cycle committable.
    ledger
        .commit_cycle(&outcome(run, 0, CycleStatus::Accepted, "h1"))
        .await
        .unwrap();
    assert_eq!(ledger.evals(run, None).await.unwrap().len(), 3);

    // A committed cycle is never rewritten, neither by commit nor by start.
    let again = ledger
        .commit_cycle(&outcome(run, 0, CycleStatus::Rejected, "h2"))
        .await
        .expect_err("second commit");
    assert!(matches!(again, LedgerError::CycleCommitted { .. }), "{again}");
    let restart = ledger.start_cycle(run, 0, None).await.expect_err("restart");
    assert!(restart.to_string().contains("already committed as 'accepted'"), "{restart}");
    let c = &ledger.cycles(Some(run)).await.unwrap()[0];
    assert_eq!((c.status.as_str(), c.checkpoint_hash.as_deref()), ("accepted", Some("h1")));

    let running = ledger
        .commit_cycle(&outcome(run, 1, CycleStatus::Running, "h3"))
        .await
        .expect_err("running is not a final status");
    assert!(matches!(running, LedgerError::Invalid { .. }), "{running}");
    ledger.close().await;
}

#[tokio::test]
async fn a_crashed_running_cycle_is_replaced_on_restart() {
    let dir = tmp();
    let path = dir.path().join("ledger.db");
    let ledger = Ledger::open(&path).await.unwrap();
    let run = ledger.begin_run(&new_run(2)).await.unwrap();
    ledger.start_cycle(run, 3, Some("old-parent")).await.unwrap();
    // Simulate a crash: drop the handle without committing.
    drop(ledger);

    let ledger = Ledger::open(&path).await.unwrap();
    ledger.start_cycle(run, 3, Some("new-parent")).await.unwrap();
    let cycles = ledger.cycles(Some(run)).await.unwrap();
    assert_eq!(cycles.len(), 1);
    assert_eq!(cycles[0].parent_hash.as_deref(), Some("new-parent"));
    assert_eq!(cycles[0].status, "running");

    let err = ledger.start_cycle(run + 100, 0, None).await.expect_err("no such run");
    assert!(matches!(err, LedgerError::UnknownRun { .. }), "{err}");
    let err = ledger
        .finish_run(run + 100, RunStatus::Stopped, Some("signal"))
        .await
        .expect_err("no such run");
    assert!(matches!(err, LedgerError::UnknownRun { .. }), "{err}");
    let mut bad = new_run(3);
    bad.config_json = "{not json".into();
    let err = ledger.begin_run(&bad).await.expect_err("bad json");
    assert!(matches!(err, LedgerError::Invalid { .. }), "{err}");
    ledger.close().await;
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_remigrate() {
    let dir = tmp();
    let path = dir.path().join("ledger.db");
    let ledger = Ledger::open(&path).await.unwrap();
    let run = ledger.begin_run(&new_run(7)).await.unwrap();
    ledger.start_cycle(run, 0, None).await.unwrap();
    ledger
        .commit_cycle(&outcome(run, 0, CycleStatus::Accepted, "h1"))
        .await
        .unwrap();
    ledger.close().await;

    for _ in 0..2 {
        let ledger = Ledger::open(&path).await.expect("reopen");
        assert_eq!(ledger.latest_run().await.unwrap().unwrap().run_id, run);
        assert_eq!(ledger.cycles(Some(run)).await.unwrap().len(), 1);
        assert_eq!(ledger.evals(run, Some(0)).await.unwrap().len(), 3);
        ledger.close().await;
    }
    let mut conn = raw_ro(&path).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 3, "one row per migration, none applied twice");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_non_sqlite_file_is_refused_untouched() {
    let dir = tmp();
    let path = dir.path().join("weights.bin");
    // Deterministic noise (xorshift) so a failure is reproducible.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, &bytes).unwrap();

    let err = Ledger::open(&path).await.expect_err("not a ledger");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not an evolve ledger (file is not a SQLite database)"), "{msg}");
    let err = Ledger::open_read_only(&path).await.expect_err("not a ledger");
    assert!(matches!(err, LedgerError::NotALedger { .. }), "{err}");

    assert_eq!(std::fs::read(&path).unwrap(), bytes, "file must be untouched");
    assert!(sidecars(&path).is_empty(), "{:?}", sidecars(&path));

    // A plausible header is not enough: a file that merely starts like
    // SQLite but is garbage must also be refused without a panic.
    let mut fake = b"SQLite format 3\0".to_vec();
    fake.extend_from_slice(&bytes);
    std::fs::write(&path, &fake).unwrap();
    let err = Ledger::open(&path).await.expect_err("corrupt");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), fake, "file must be untouched");

    let missing = dir.path().join("missing.db");
    let err = Ledger::open_read_only(&missing).await.expect_err("missing");
    assert!(matches!(err, LedgerError::Missing { .. }), "{err}");
    assert!(!missing.exists(), "read-only open must not create the file");
}

#[tokio::test]
async fn a_foreign_sqlite_database_is_refused_untouched() {
    let dir = tmp();
    let path = dir.path().join("other.db");
    let mut conn = raw_rw(&path, true).await;
    sqlx::query("CREATE TABLE foo (id INTEGER PRIMARY KEY, v TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO foo (v) VALUES ('precious')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let before = std::fs::read(&path).unwrap();

    let err = Ledger::open(&path).await.expect_err("foreign");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not an evolve ledger") && msg.contains("foo"), "{msg}");
    let err = Ledger::open_read_only(&path).await.expect_err("foreign");
    assert!(matches!(err, LedgerError::NotALedger { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "file must be untouched");

    // Another sqlx application's database: same table name, other schema.
    let path2 = dir.path().join("other-sqlx.db");
    let mut conn = raw_rw(&path2, true).await;
    sqlx::raw_sql(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
             installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL,
             checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);
         INSERT INTO _sqlx_migrations VALUES (1, 'users', CURRENT_TIMESTAMP, 1, x'00', 1);
         CREATE TABLE users (id INTEGER PRIMARY KEY);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let before2 = std::fs::read(&path2).unwrap();
    let err = Ledger::open(&path2).await.expect_err("other sqlx app");
    assert!(matches!(err, LedgerError::NotALedger { .. }), "{err}");
    assert_eq!(std::fs::read(&path2).unwrap(), before2, "file must be untouched");

    // An empty SQLite database holds nothing to protect and becomes a ledger.
    let path3 = dir.path().join("empty.db");
    raw_rw(&path3, true).await.close().await.unwrap();
    Ledger::open(&path3).await.expect("empty db").close().await;
}

#[tokio::test]
async fn a_ledger_from_a_newer_evolve_is_refused_untouched() {
    let dir = tmp();
    let path = dir.path().join("ledger.db");
    Ledger::open(&path).await.unwrap().close().await;
    let mut conn = raw_rw(&path, false).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', 1, x'00', 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let before = std::fs::read(&path).unwrap();

    let err = Ledger::open(&path).await.expect_err("newer");
    assert!(matches!(err, LedgerError::NewerSchema { version: 9999, .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    let err = Ledger::open_read_only(&path).await.expect_err("newer");
    assert!(matches!(err, LedgerError::NewerSchema { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "file must be untouched");
}

#[tokio::test]
async fn last_accepted_skips_rejected_and_uncommitted_cycles() {
    let dir = tmp();
    let path = dir.path().join("ledger.db");
    let ledger = Ledger::open(&path).await.unwrap();
    assert!(ledger.last_accepted(None).await.unwrap().is_none());

    let run = ledger.begin_run(&new_run(1)).await.unwrap();
    for (cycle, status, hash) in [
        (0, CycleStatus::Accepted, "base"),
        (1, CycleStatus::Accepted, "c1"),
        (2, CycleStatus::Rejected, "c2-candidate"),
        (3, CycleStatus::Failed, "c3-candidate"),
    ] {
        ledger.start_cycle(run, cycle, None).await.unwrap();
        ledger
            .commit_cycle(&outcome(run, cycle, status, hash))
            .await
            .unwrap();
    }
    ledger.start_cycle(run, 4, Some("c1")).await.unwrap(); // crashed mid-cycle
    let last = ledger.last_accepted(Some(run)).await.unwrap().unwrap();
    assert_eq!((last.cycle, last.checkpoint_hash.as_deref()), (1, Some("c1")));

    // A second run that only has its base so far: the base is where it
    // continues from, and it is now the newest in the whole ledger.
    let run2 = ledger.begin_run(&new_run(2)).await.unwrap();
    ledger.start_cycle(run2, 0, None).await.unwrap();
    assert!(ledger.last_accepted(Some(run2)).await.unwrap().is_none());
    ledger
        .commit_cycle(&outcome(run2, 0, CycleStatus::Accepted, "base2"))
        .await
        .unwrap();
    ledger.start_cycle(run2, 1, None).await.unwrap();
    ledger
        .commit_cycle(&outcome(run2, 1, CycleStatus::Rejected, "r"))
        .await
        .unwrap();
    let last = ledger.last_accepted(Some(run2)).await.unwrap().unwrap();
    assert_eq!((last.run_id, last.cycle), (run2, 0));
    let last = ledger.last_accepted(None).await.unwrap().unwrap();
    assert_eq!((last.run_id, last.checkpoint_hash.as_deref()), (run2, Some("base2")));
    // The earlier run's answer is unaffected by the newer run.
    let last = ledger.last_accepted(Some(run)).await.unwrap().unwrap();
    assert_eq!(last.checkpoint_hash.as_deref(), Some("c1"));
    ledger.close().await;
}

#[tokio::test]
async fn a_read_only_reader_works_beside_a_writer() {
    let dir = tmp();
    let path = dir.path().join("ledger.db");
    let writer = Ledger::open(&path).await.unwrap();
    let run = writer.begin_run(&new_run(1)).await.unwrap();
    writer.start_cycle(run, 0, None).await.unwrap();
    writer
        .commit_cycle(&outcome(run, 0, CycleStatus::Accepted, "h1"))
        .await
        .unwrap();

    let reader = Ledger::open_read_only(&path).await.expect("reader");
    assert_eq!(reader.cycles(Some(run)).await.unwrap().len(), 1);
    assert_eq!(reader.evals(run, None).await.unwrap().len(), 3);

    // The writer keeps writing and the reader sees each commit.
    writer.start_cycle(run, 1, Some("h1")).await.unwrap();
    writer
        .commit_cycle(&outcome(run, 1, CycleStatus::Rejected, "h2"))
        .await
        .unwrap();
    assert_eq!(reader.cycles(Some(run)).await.unwrap().len(), 2);

    // While another connection holds the write lock mid-transaction, the
    // reader neither blocks nor sees the uncommitted row (that is WAL).
    let mut holder = raw_rw(&path, false).await;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut holder).await.unwrap();
    sqlx::query("INSERT INTO cycles (run_id, cycle, status) VALUES (?, 2, 'running')")
        .bind(run)
        .execute(&mut holder)
        .await
        .unwrap();
    let read = tokio::time::timeout(Duration::from_secs(2), reader.cycles(Some(run)))
        .await
        .expect("reader must not wait for the writer")
        .unwrap();
    assert_eq!(read.len(), 2);
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    assert_eq!(reader.cycles(Some(run)).await.unwrap().len(), 3);

    // Writing through a read-only handle is an error, not a panic, and
    // changes nothing.
    assert!(reader.is_read_only());
    let err = reader.begin_run(&new_run(9)).await.expect_err("read-only");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert_eq!(writer.latest_run().await.unwrap().unwrap().run_id, run);

    reader.close().await;
    writer.close().await;
}

#[tokio::test]
async fn iso_timestamps_agree_with_sqlite() {
    let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
    // From year 1 to year 9999 in uneven strides, so every month, leap rule
    // and time of day gets exercised against SQLite's own calendar.
    let (lo, hi) = (-62_135_596_800_i64, 253_402_300_799_i64);
    let mut secs = lo;
    let mut checked = 0;
    while secs <= hi {
        let ours = iso_from_unix_millis(secs * 1000 + 123);
        let theirs: String =
            sqlx::query_scalar("SELECT strftime('%Y-%m-%dT%H:%M:%S', ?, 'unixepoch')")
                .bind(secs)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(ours, format!("{theirs}.123Z"), "at {secs}");
        secs += 31_556_951_u64 as i64 / 7 + 86_399;
        checked += 1;
    }
    assert!(checked > 1000);

    // now_iso must be within a few seconds of SQLite's 'now'.
    let before = now_iso();
    let theirs: String = sqlx::query_scalar("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let after = now_iso();
    assert_eq!(before.len(), theirs.len(), "{before} vs {theirs}");
    // Compared to the second: the two clocks may round milliseconds apart.
    assert!(
        before[..19] <= theirs[..19] && theirs[..19] <= after[..19],
        "{before} <= {theirs} <= {after}"
    );
    conn.close().await.unwrap();
}
