//! End-to-end tests of the `evolve` binary: a real run writes a real SQLite ledger that the
//! public views describe, and bad input fails cleanly without touching the disk.

use std::path::Path;
use std::process::{Command, Output};

fn evolve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evolve")).args(args).env("EVOLVE_LOG", "warn").output().expect("evolve runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

async fn query<T>(db: &Path, sql: &'static str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query_as::<_, T>(sql).fetch_all(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_cycle_run_fills_the_public_views() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs/evolve.db");
    let curriculum = root().join("tests/micro.toml");
    let out = evolve(&["start", "--budget", "1xcpu", "--curriculum", curriculum.to_str().unwrap(), "--ledger", db.to_str().unwrap(), "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));

    let cycles: Vec<(i64, String, Option<String>, Option<String>, i64)> =
        query(&db, "SELECT cycle, status, parent_hash, checkpoint_hash, examples_trained FROM v_cycles ORDER BY cycle").await;
    assert_eq!(cycles.len(), 3, "base plus two cycles: {cycles:?}");
    assert_eq!((cycles[0].0, cycles[0].1.as_str()), (0, "accepted"));
    assert!(cycles[0].2.is_none(), "the base has no parent");
    for c in &cycles[1..] {
        assert!(c.1 == "accepted" || c.1 == "rejected", "{c:?}");
        assert!(c.2.is_some() && c.3.is_some() && c.4 > 0, "{c:?}");
    }
    // Cycle 1 continues from the base; cycle 2 from cycle 1 if accepted, else from the base.
    assert_eq!(cycles[1].2, cycles[0].3);
    let expected_parent = if cycles[1].1 == "accepted" { &cycles[1].3 } else { &cycles[0].3 };
    assert_eq!(&cycles[2].2, expected_parent);

    let evals: Vec<(i64, String, i64, i64, f64)> = query(&db, "SELECT cycle, suite, n, correct, accuracy FROM v_evals").await;
    for cycle in 0..3 {
        let suites: Vec<_> = evals.iter().filter(|e| e.0 == cycle).collect();
        assert_eq!(suites.len(), 5, "reversal and sorting at two levels, refusal at one, cycle {cycle}");
        for e in suites {
            assert!(e.2 > 0 && (e.4 - e.3 as f64 / e.2 as f64).abs() < 1e-12);
        }
    }
    let refusal: Vec<(i64, i64, f64)> = query(&db, "SELECT cycle, must_refuse_n, refusal_rate FROM v_refusal ORDER BY cycle").await;
    assert_eq!(refusal.len(), 3);
    assert!(refusal.iter().all(|r| r.1 == 10 && (0.0..=1.0).contains(&r.2)));

    let mix: Vec<(i64, String, f64)> = query(&db, "SELECT cycle, skill, share FROM v_training_mix WHERE cycle > 0").await;
    assert!(!mix.is_empty());
    // The quota holds for what was trained, not only for the synthesized batch: micro.toml's
    // max_skill_share is 0.6 (one row of slack for the interleaving of a partial epoch).
    for m in &mix {
        assert!(m.2 <= 0.6 + 1.0 / 16.0, "skill over its quota: {m:?}");
    }
    // The curriculum policy's choices over the frontier, with reasons, every cycle.
    let policy: Vec<(i64, String, i64, f64, String)> = query(&db, "SELECT cycle, skill, level, weight, reason FROM v_curriculum_policy ORDER BY cycle").await;
    for cycle in 1..=2 {
        let rows: Vec<_> = policy.iter().filter(|p| p.0 == cycle).collect();
        assert_eq!(rows.len(), 2, "reversal/L2 and sorting/L2, cycle {cycle}: {policy:?}");
        assert!((rows.iter().map(|p| p.3).sum::<f64>() - 1.0).abs() < 1e-9 && rows.iter().all(|p| !p.4.is_empty()));
    }
    // The learned judge is measured against the verifier every cycle, per skill.
    let gap: Vec<(i64, String, i64, Option<f64>, Option<f64>)> = query(&db, "SELECT cycle, skill, n, auc, calibration_error FROM v_proxy_gap").await;
    for cycle in 0..3 {
        assert!(gap.iter().any(|g| g.0 == cycle && g.2 > 0), "cycle {cycle}: {gap:?}");
    }
    assert!(gap.iter().all(|g| g.3.is_none_or(|a| (0.0..=1.0).contains(&a)) && g.4.is_some_and(|e| (0.0..=1.0).contains(&e))), "{gap:?}");
    let surgery: Vec<(i64, String, i64)> = query(&db, "SELECT cycle, mode, steps FROM v_surgery").await;
    assert!(surgery.iter().all(|s| s.1 == "agem" && s.2 == 6), "{surgery:?}");

    // Every lossless copy decodes (against its parent, for deltas) to bytes whose hash is the
    // checkpoint's name; every accepted checkpoint also has three quantized copies whose eval
    // delta against it is recorded per suite.
    let compression: Vec<(i64, String, String, i64, i64, bool, Option<String>, Option<f64>, String)> = query(
        &db,
        "SELECT v.cycle, v.checkpoint_hash, v.codec, v.raw_bytes, v.stored_bytes, v.lossless, v.parent_hash, v.eval_delta, c.path
         FROM v_compression AS v JOIN compression AS c USING (run_id, cycle, checkpoint_hash, codec)",
    )
    .await;
    let accepted: Vec<i64> = cycles.iter().filter(|c| c.1 == "accepted").map(|c| c.0).collect();
    let expected_lossless: usize = accepted.iter().map(|&c| if c == 0 { 2 } else { 3 }).sum();
    let (lossless, lossy): (Vec<_>, Vec<_>) = compression.iter().partition(|c| c.5);
    assert_eq!(lossless.len(), expected_lossless, "evolve-fp, zstd and (after the base) a delta per accepted checkpoint");
    assert_eq!(lossy.len(), 3 * accepted.len(), "int8, int4 and int4-AWQ copies per accepted checkpoint");
    let store = dir.path().join("runs/artifacts");
    for c in &lossless {
        let encoded = std::fs::read(&c.8).unwrap();
        let decoded = match &c.6 {
            Some(parent) => evolve_compress::decode_delta(&encoded, &std::fs::read(store.join(format!("{parent}.safetensors"))).unwrap()).unwrap(),
            None => evolve_compress::decode(&encoded).unwrap(),
        };
        assert_eq!(blake3::hash(&decoded).to_hex().to_string(), c.1);
        assert!(c.4 > 0 && c.4 < c.3 && c.7.is_none());
    }
    for c in &lossy {
        assert!(c.7.is_some_and(|d| (-1.0..=1.0).contains(&d)), "{c:?}");
        assert!(std::fs::metadata(&c.8).unwrap().len() as i64 == c.4 && c.4 * 3 < c.3, "a quantized copy is at least 3x smaller: {c:?}");
    }
    let quantized: Vec<(String, String, i64, f64)> = query(&db, "SELECT codec, suite, n, delta FROM v_quantized").await;
    assert_eq!(quantized.len(), lossy.len() * (5 + 2), "every suite plus the two refusal rows, per copy");
    assert!(quantized.iter().all(|q| q.2 > 0 && (-1.0..=1.0).contains(&q.3)));

    // Per-role time, per cycle, from the steps the controller logged.
    let budget: Vec<(i64, String, f64, f64)> = query(&db, "SELECT cycle, role, busy_seconds, gpu_seconds FROM v_budget").await;
    for cycle in cycles.iter().map(|c| c.0) {
        let roles: Vec<&str> = budget.iter().filter(|b| b.0 == cycle).map(|b| b.1.as_str()).collect();
        assert!(roles.contains(&"trainer") && roles.contains(&"discriminator"), "cycle {cycle}: {roles:?}");
    }
    assert!(budget.iter().all(|b| b.2 > 0.0 && b.3 == 0.0), "busy time measured; a CPU has no GPU-seconds: {budget:?}");
    // Per-problem correctness is kept, so `ledger diff` can name the problems that flipped.
    let items: Vec<(i64, i64)> = query(&db, "SELECT (SELECT COUNT(*) FROM eval_items), (SELECT SUM(n) FROM evals)").await;
    assert_eq!(items[0].0, items[0].1);

    // Every synthesized training example is disjoint from the frozen suites and probes.
    let mut held_out = std::collections::HashSet::new();
    for (skill, level) in [("reversal", 1), ("reversal", 2), ("sorting", 1), ("sorting", 2), ("refusal", 1)] {
        let suite = evolve_tasks::build_suite(evolve_tasks::skill_by_name(skill).unwrap().as_ref(), level, 20, 99);
        held_out.extend(suite.problems.into_iter().map(|p| p.prompt));
    }
    let probes = evolve_tasks::build_refusal_probes(10, 99, &[1]);
    held_out.extend(probes.must_refuse.iter().chain(&probes.benign).map(|p| p.prompt.clone()));
    let mut trained = 0;
    for entry in std::fs::read_dir(dir.path().join("runs/artifacts")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_str().unwrap().ends_with(".examples.json") {
            let batch: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for p in batch["problems"].as_array().unwrap() {
                assert!(!held_out.contains(p["prompt"].as_str().unwrap()), "held-out prompt trained on: {p}");
                trained += 1;
            }
        }
    }
    assert!(trained > 0 && held_out.len() > 80);

    let status = evolve(&["status", "--ledger", db.to_str().unwrap()]);
    assert!(status.status.success() && text(&status).contains("run 1 (finished)"), "{}", text(&status));
    let policy = evolve(&["ledger", "policy", "--ledger", db.to_str().unwrap()]);
    assert!(policy.status.success() && text(&policy).lines().count() == 5 && text(&policy).contains("reversal"), "{}", text(&policy));
    let table = evolve(&["ledger", "cycles", "--ledger", db.to_str().unwrap()]);
    assert!(table.status.success() && text(&table).lines().count() == 4, "{}", text(&table));
}

#[test]
fn malformed_budgets_fail_cleanly_before_touching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("evolve.db");
    for (budget, needle) in [("4xGTX1080", "known models"), ("fourxcpu", "NxMODEL"), ("1xcpu:soon", "duration"), ("2xRTX4090", "CUDA")] {
        let out = evolve(&["start", "--budget", budget, "--ledger", db.to_str().unwrap()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{budget}: {t}");
        assert!(t.contains(needle) && !t.contains("panicked"), "{budget}: {t}");
    }
    assert!(!db.exists(), "no ledger is created for a run that cannot start");
}

/// `--dry-run` and `--simulate` plan a budget this machine does not have and touch no ledger:
/// the simulation runs every job of the run through the control plane's scheduler and reports
/// its overhead, busy share and what workers dying cost.
#[test]
fn plans_and_simulations_of_a_gpu_pool_need_no_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("evolve.db");
    let smoke = root().join("curricula/smoke.toml");
    let smoke = smoke.to_str().unwrap();
    let plan = evolve(&["start", "--budget", "40xRTX4090", "--dry-run", "--curriculum", smoke, "--ledger", db.to_str().unwrap()]);
    assert!(plan.status.success(), "{}", text(&plan));
    assert!(text(&plan).contains("fits in one RTX4090"), "{}", text(&plan));
    let out = evolve(&["start", "--budget", "40xRTX4090", "--simulate", "--cycles", "4", "--curriculum", smoke, "--ledger", db.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // 4 base stages' jobs + per cycle: generate, judge, train, snapshots' and quantized evaluations.
    assert!(t.contains("simulated --budget 40xRTX4090: 4 cycles"), "{t}");
    let overheads: Vec<f64> = t.lines().filter_map(|l| l.trim().strip_prefix("scheduling overhead ")).map(|l| l.split('%').next().unwrap().parse().unwrap()).collect();
    assert_eq!(overheads.len(), 2, "a calm and a faulty simulation: {t}");
    assert!(overheads[0] > 0.0 && overheads[0] <= overheads[1], "workers dying cost no less wall time: {t}");
    // The goal for a calm pool of forty: scheduling costs under 1% of the wall time.
    assert!(overheads[0] < 1.0, "calm scheduling overhead {}% of wall time: {t}", overheads[0]);
    assert!(t.contains("worker deaths 0") && t.contains("worker deaths 4"), "{t}");
    assert!(!db.exists(), "planning and simulating write no ledger");
}

/// A pool that cannot work is refused before the ledger exists: a public control plane without
/// a token, a Slurm launcher where no `sbatch` runs.
#[test]
fn unusable_pools_fail_before_touching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("evolve.db");
    let smoke = root().join("curricula/smoke.toml");
    let common = ["start", "--budget", "2xcpu", "--curriculum", smoke.to_str().unwrap(), "--ledger", db.to_str().unwrap()];
    let out = Command::new(env!("CARGO_BIN_EXE_evolve")).args(common).args(["--listen", "0.0.0.0:0"]).env_remove("EVOLVE_TOKEN").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("token"), "{}", text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_evolve")).args(common).args(["--launcher", "slurm"]).env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("sbatch") && !text(&out).contains("panicked"), "{}", text(&out));
    assert!(!db.exists() && !dir.path().join("artifacts").exists(), "nothing is written for a pool that cannot start");
}

/// A pool that fails once the run has begun (its control plane's address is taken) fails the
/// run: the ledger does not show it `running` forever.
#[tokio::test]
async fn a_pool_that_cannot_listen_fails_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("evolve.db");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let curriculum = micro_with(dir.path(), &[]);
    let out = evolve(&["start", "--budget", "2xcpu", "--curriculum", curriculum.to_str().unwrap(), "--ledger", db.to_str().unwrap(), "--listen", &address, "--token", "t0ken", "--no-progress"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&address) && !said.contains("panicked"), "{said}");
    let runs: Vec<(String, Option<String>)> = query(&db, "SELECT status, stop_reason FROM runs").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].0 == "failed" && runs[0].1.as_deref().is_some_and(|r| r.contains(&address)), "{runs:?}");
    drop(taken);
}

#[test]
fn malformed_curricula_fail_with_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("evolve.db");
    let smoke = std::fs::read_to_string(root().join("curricula/smoke.toml")).unwrap();
    let cases = [
        (smoke.replacen("name = \"addition\"", "name = \"alchemy\"", 1), "skills[0].name"),
        (smoke.replacen("max_skill_share = 0.4", "max_skill_share = 1.5", 1), "cycle.max_skill_share"),
        (smoke.replacen("max_skill_share = 0.4", "max_skill_share = 0.15", 1), "at least 1/5"),
        (smoke.replacen("[gate]", "[gait]", 1), "gait"),
        (smoke.replacen("consolidation_steps = 15", "consolidation_steps = 45", 1), "cycle.consolidation_steps"),
        ("this is = not [toml".to_string(), "TOML"),
    ];
    for (i, (content, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, content).unwrap();
        let out = evolve(&["start", "--curriculum", path.to_str().unwrap(), "--ledger", db.to_str().unwrap()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(t.contains(path.to_str().unwrap()) && t.contains(needle) && !t.contains("panicked"), "case {i}: {t}");
    }
    let missing = evolve(&["start", "--curriculum", "/nonexistent/c.toml", "--ledger", db.to_str().unwrap()]);
    assert!(text(&missing).contains("/nonexistent/c.toml"));
    assert!(!db.exists());
}

#[test]
fn reading_a_missing_or_foreign_ledger_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"definitely not sqlite").unwrap();
    for path in [junk.to_str().unwrap(), "/nonexistent/evolve.db"] {
        let out = evolve(&["status", "--ledger", path]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).contains(path) && !text(&out).contains("panicked"), "{}", text(&out));
    }
    assert_eq!(std::fs::read(&junk).unwrap(), b"definitely not sqlite");
}

/// micro.toml with some lines replaced, written beside the ledger.
fn micro_with(dir: &Path, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(root().join("tests/micro.toml")).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from}");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join("curriculum.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_reward_hacking_alarm_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("evolve.db");
    // Reversal is handed to the learned judge, and the judge must agree with the verifier
    // better than any judge trained for 5 steps can.
    let curriculum = micro_with(
        dir.path(),
        &[
            ("name = \"reversal\"\nbase_levels = [1]\nfrontier_levels = [2]", "name = \"reversal\"\nbase_levels = [1]\nfrontier_levels = [2]\nverifiable = false"),
            ("max_over_refusal_rise = 0.02", "max_over_refusal_rise = 0.02\n\n[discriminator]\ntrain_steps = 5\nmin_auc = 0.99\nmax_calibration_error = 0.01"),
        ],
    );
    let out = evolve(&["start", "--curriculum", curriculum.to_str().unwrap(), "--ledger", db.to_str().unwrap(), "--no-progress"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("reward-hacking alarm") && said.contains("skill `reversal`") && said.contains("> discriminator.max_calibration_error 0.01"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    let runs: Vec<(String, Option<String>)> = query(&db, "SELECT status, stop_reason FROM runs").await;
    assert_eq!(runs[0].0, "failed");
    let cycles: Vec<(i64, String, Option<String>)> = query(&db, "SELECT cycle, status, reason FROM v_cycles ORDER BY cycle").await;
    let last = cycles.last().unwrap();
    assert!(last.1 == "failed" && last.2.as_deref().is_some_and(|r| r.contains("reward-hacking alarm")), "{cycles:?}");
    // Nothing was trained on the judge's picks: no cycle after the base was accepted.
    assert!(cycles.iter().filter(|c| c.0 > 0).all(|c| c.1 != "accepted"), "{cycles:?}");
    let gap: Vec<(i64, String, Option<f64>)> = query(&db, "SELECT cycle, skill, auc FROM v_proxy_gap WHERE skill = 'reversal'").await;
    assert!(gap.iter().any(|g| g.0 == last.0), "the gap that fired is recorded: {gap:?}");
}

#[tokio::test]
async fn ablation_compares_arms_from_one_base() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ablate.db");
    let curriculum = micro_with(dir.path(), &[]);
    let out = evolve(&["ablate", "--curriculum", curriculum.to_str().unwrap(), "--ledger", db.to_str().unwrap(), "--cycles", "1", "--seeds", "2", "--no-progress"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for arm in ["adversarial+agem", "uniform+agem", "adversarial+pcgrad", "adversarial+none"] {
        assert!(said.contains(arm), "{arm} missing: {said}");
    }
    assert!(said.contains("mean over 2 seeds"), "{said}");
    let arms: Vec<(i64, String, String, String, i64, i64, i64, f64, f64)> =
        query(&db, "SELECT ablation_id, arm, sampling, surgery, run_id, cycles, tokens_trained, frontier_gain, forgetting FROM v_ablations ORDER BY run_id").await;
    assert_eq!(arms.len(), 8, "{arms:?}");
    assert!(arms.iter().all(|a| a.5 == 1 && a.6 > 0 && a.7.abs() <= 1.0 && a.8.abs() <= 1.0), "{arms:?}");
    let ids: Vec<i64> = arms.iter().map(|a| a.0).collect();
    assert_eq!(ids, [1, 1, 1, 1, 2, 2, 2, 2], "one ablation per seed");
    // Equal seeds within a comparison, and one base for all: pretrained once.
    let bases: Vec<(i64, String)> = query(&db, "SELECT run_id, checkpoint_hash FROM v_cycles WHERE cycle = 0 ORDER BY run_id").await;
    assert_eq!(bases.len(), 8);
    assert!(bases.iter().all(|b| b.1 == bases[0].1), "{bases:?}");
    // The second seed trains on other examples: its first arm's candidate differs.
    let trained: Vec<(i64, String)> = query(&db, "SELECT run_id, checkpoint_hash FROM v_cycles WHERE cycle = 1 AND run_id IN (1, 5) ORDER BY run_id").await;
    assert_eq!(trained.len(), 2);
    assert_ne!(trained[0].1, trained[1].1, "{trained:?}");
    // The surgery each arm asked for is what its cycles ran.
    let surgery: Vec<(i64, String)> = query(&db, "SELECT run_id, mode FROM v_surgery ORDER BY run_id").await;
    let modes: Vec<&str> = surgery.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(modes, ["agem", "agem", "pcgrad", "none", "agem", "agem", "pcgrad", "none"]);
}
