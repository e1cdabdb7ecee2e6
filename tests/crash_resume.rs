//! kill -9 of the controller at many moments, then the same `evolve start` command: every trial
//! must end with exactly the ledger and the artifacts of a run that was never interrupted —
//! the same cycles with the same verdicts, parents and checkpoint hashes (one unbroken
//! lineage, no duplicate or lost cycle), the same artifact files, each of which hash-verifies,
//! and no temp file left behind. The run is real: a real process, a real SQLite file, SIGKILL.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// micro.toml made quick (a 10-step judge) and permissive (every cycle accepted unless a mastered
/// suite drops), so each cycle moves the lineage and recompresses: the states a crash can cut.
/// Two base candidates and two cycle candidates, whatever the budget.
fn curriculum(dir: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(root().join("tests/micro.toml")).unwrap();
    for (from, to) in [
        ("max_cycles = 2", "max_cycles = 3"),
        ("train_steps = 6", "train_steps = 12"),
        ("learning_rate = 1e-4", "learning_rate = 3e-3"),
        ("max_regression = 0.02", "max_regression = 0.02\nmin_frontier_gain = -1.0"),
        ("[gate]", "[discriminator]\ntrain_steps = 10\n\n[gate]"),
        // Pools and the in-process reference must train the same candidates (`auto` follows
        // the budget); two of each, so a crash can cut a cycle between its candidates.
        ("surgery = \"agem\"", "surgery = \"agem\"\ncandidates = 2"),
        ("warmup_steps = 5", "warmup_steps = 5\ncandidates = 2"),
    ] {
        assert!(text.contains(from), "{from}");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join("fault.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Most tests here time their kills off a reference run they made themselves, so each must have
/// the machine to itself: a run sharing two cores with another test's runs is slowed, and when
/// that other test ends the trials speed up and finish before their kills. The tests take turns.
fn machine_to_itself() -> std::sync::MutexGuard<'static, ()> {
    static MACHINE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed test poisons the lock; the next test still needs only the turn.
    MACHINE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start(curriculum: &Path, ledger: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_evolve"));
    command
        .args(["start", "--no-progress", "--curriculum"])
        .arg(curriculum)
        .arg("--ledger")
        .arg(ledger)
        .env("EVOLVE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runs to the end; panics with its stderr if it fails.
fn run_to_end(curriculum: &Path, ledger: &Path) -> Duration {
    let started = Instant::now();
    let out = start(curriculum, ledger).output().unwrap();
    assert!(out.status.success(), "evolve start failed: {}", String::from_utf8_lossy(&out.stderr));
    started.elapsed()
}

/// Starts the run and SIGKILLs it after `after` (if it is still running then).
fn kill_after(curriculum: &Path, ledger: &Path, after: Duration) -> bool {
    let mut child = start(curriculum, ledger).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    true
}

type CycleRow = (i64, String, Option<String>, Option<String>);

/// What must not depend on crashes: the cycles, the compression rows per cycle and codec, the
/// runs, and the artifact files.
#[derive(Debug, PartialEq)]
struct Outcome {
    cycles: Vec<CycleRow>,
    compression: Vec<(i64, String, String)>,
    runs: Vec<(i64, String)>,
    files: BTreeSet<String>,
}

async fn outcome(ledger: &Path) -> Outcome {
    let url = format!("sqlite://{}?mode=ro", ledger.display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let cycles = sqlx::query_as("SELECT cycle, status, parent_hash, checkpoint_hash FROM cycles ORDER BY run_id, cycle").fetch_all(&mut conn).await.unwrap();
    let compression =
        sqlx::query_as("SELECT cycle, codec, checkpoint_hash FROM compression ORDER BY cycle, codec, checkpoint_hash").fetch_all(&mut conn).await.unwrap();
    let runs = sqlx::query_as("SELECT run_id, status FROM runs ORDER BY run_id").fetch_all(&mut conn).await.unwrap();
    let artifacts = ledger.parent().unwrap().join("artifacts");
    let files = std::fs::read_dir(&artifacts).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    Outcome { cycles, compression, runs, files }
}

/// Every content-addressed file hashes to its name; every compressed checkpoint decodes (the
/// decoder checks the original's hash) to the checkpoint it names.
fn verify_artifacts(artifacts: &Path) {
    for entry in std::fs::read_dir(artifacts).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "temp file left behind: {name}");
        let (hash, kind) = name.split_once('.').unwrap();
        match kind {
            "safetensors" | "examples.json" | "judgements.json" => {
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(blake3::hash(&bytes).to_hex().as_str(), hash, "{name} does not hash to its name");
            }
            "evolve-fp.evz" | "zstd.evz" => {
                let out = artifacts.parent().unwrap().join("decoded.safetensors");
                let decoded = Command::new(env!("CARGO_BIN_EXE_evolve")).arg("decompress").arg(&path).arg(&out).output().unwrap();
                assert!(decoded.status.success(), "{name}: {}", String::from_utf8_lossy(&decoded.stderr));
                assert_eq!(blake3::hash(&std::fs::read(&out).unwrap()).to_hex().as_str(), hash, "{name} decodes to another checkpoint");
                std::fs::remove_file(out).unwrap();
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_controller_anywhere_loses_and_duplicates_nothing() {
    let _turn = machine_to_itself();
    let dir = tempfile::tempdir().unwrap();
    let curriculum = curriculum(dir.path());
    let reference_ledger = dir.path().join("reference/evolve.db");
    let run_time = run_to_end(&curriculum, &reference_ledger);
    let reference = outcome(&reference_ledger).await;
    assert_eq!(reference.cycles.len(), 4, "{reference:?}");
    assert!(reference.cycles.iter().all(|c| c.1 == "accepted"), "the fault curriculum accepts every cycle: {reference:?}");
    verify_artifacts(&reference_ledger.parent().unwrap().join("artifacts"));

    // Kill moments spread over the whole run (pretraining, each cycle's generation, judge,
    // training, gate, commit and recompression), some trials killed twice.
    let trials: [&[f64]; 6] = [&[0.08], &[0.27], &[0.43, 0.2], &[0.61], &[0.78, 0.15], &[0.9]];
    let mut killed = 0;
    for (t, kills) in trials.iter().enumerate() {
        let ledger = dir.path().join(format!("trial{t}/evolve.db"));
        let mut finished = false;
        for &at in kills.iter() {
            if kill_after(&curriculum, &ledger, run_time.mul_f64(at)) {
                killed += 1;
            } else {
                // The resumed run finished before this kill: starting again would begin a new
                // run, which is not what is being tested.
                finished = true;
                break;
            }
        }
        if !finished {
            run_to_end(&curriculum, &ledger);
        }
        let got = outcome(&ledger).await;
        assert_eq!(got, reference, "trial {t} (killed at {kills:?} of the run's length)");
        verify_artifacts(&ledger.parent().unwrap().join("artifacts"));
    }
    // Timing varies with the machine's load; most kills must still land mid-run.
    assert!(killed >= 5, "only {killed} kills landed while the run was going");
    assert_eq!(reference.runs, vec![(1, "finished".to_string())]);
}

#[test]
fn a_second_controller_on_a_busy_ledger_is_refused() {
    let _turn = machine_to_itself();
    let dir = tempfile::tempdir().unwrap();
    let curriculum = curriculum(dir.path());
    let ledger = dir.path().join("evolve.db");
    let mut first = start(&curriculum, &ledger).spawn().unwrap();
    // Wait until the first run has the lock and has begun (its ledger exists).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ledger.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = start(&curriculum, &ledger).output().unwrap();
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(message.contains("in use by evolve process") && message.contains(&first.id().to_string()), "{message}");
    first.kill().unwrap();
    first.wait().unwrap();
    // The lock died with its holder: the next start resumes and finishes.
    run_to_end(&curriculum, &ledger);
}

/// How long the reference run took, from its ledger (start to finish of the run row).
async fn run_time_guess(ledger: &Path) -> Duration {
    let url = format!("sqlite://{}?mode=ro", ledger.display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let seconds: f64 = sqlx::query_scalar("SELECT (julianday(finished_at) - julianday(started_at)) * 86400.0 FROM runs WHERE run_id = 1").fetch_one(&mut conn).await.unwrap();
    Duration::from_secs_f64(seconds.max(1.0))
}

/// Pids of the direct children of `pid` (the pool's worker processes).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// `GET path` on the control plane, with a plain socket (the tests need no HTTP client).
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// A pooled run's cycles, compression rows, runs and files are the reference's, and every
/// artifact hash-verifies.
async fn assert_same_outcome(ledger: &Path, reference: &Outcome) {
    let got = outcome(ledger).await;
    assert_eq!(got.cycles, reference.cycles);
    assert_eq!(got.compression, reference.compression);
    assert_eq!(got.runs, reference.runs);
    assert_eq!(got.files, reference.files);
    verify_artifacts(&ledger.parent().unwrap().join("artifacts"));
}

/// (expired or released leases, distinct workers) over the pool's `role_usage` rows.
async fn worker_usage(ledger: &Path) -> (i64, i64) {
    let url = format!("sqlite://{}?mode=ro", ledger.display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query_as("SELECT SUM(failures), COUNT(DISTINCT worker) FROM role_usage WHERE worker != 'controller'").fetch_one(&mut conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_pool_workers_costs_only_their_leases() {
    let _turn = machine_to_itself();
    let dir = tempfile::tempdir().unwrap();
    let curriculum = curriculum(dir.path());
    let reference_ledger = dir.path().join("reference/evolve.db");
    run_to_end(&curriculum, &reference_ledger);
    let reference = outcome(&reference_ledger).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ledger = dir.path().join("pool/evolve.db");
    let mut controller = start(&curriculum, &ledger).args(["--budget", "3xcpu", "--listen", &format!("127.0.0.1:{port}")]).spawn().unwrap();
    // Three times: wait until some worker holds a lease, then SIGKILL every worker of the pool.
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while kills < 3 && Instant::now() < deadline && controller.try_wait().unwrap().is_none() {
        let metrics = http_get(port, "/metrics").unwrap_or_default();
        let active = metric(&metrics, "evolve_leases_active").unwrap_or(0.0);
        // The dead workers' leases stay active until they expire: the next kill waits for that.
        let expired = metric(&metrics, "evolve_lease_failures_total").unwrap_or(0.0);
        let workers = children(controller.id());
        if active >= 1.0 && expired >= kills as f64 && workers.len() == 3 {
            for pid in workers {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            kills += 1;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let metrics = http_get(port, "/metrics");
    let out = controller.wait_with_output().unwrap();
    assert!(out.status.success(), "the pooled run failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(kills, 3, "the workers were not all killed three times while holding leases");
    // The pool computes exactly what the in-process roles compute, kills or not.
    assert_same_outcome(&ledger, &reference).await;
    let (failures, workers) = worker_usage(&ledger).await;
    assert!(failures >= 3, "each kill cost at least one lease, and the ledger counts them: {failures}");
    assert_eq!(workers, 3);
    // Killing a pool's controller takes its workers with it, and the same command resumes the
    // run in a new pool with the same outcome.
    let ledger = dir.path().join("pool-resume/evolve.db");
    let mut pooled = start(&curriculum, &ledger).args(["--budget", "3xcpu"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while children(pooled.id()).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(run_time_guess(&reference_ledger).await.mul_f64(0.5));
    let workers = children(pooled.id());
    assert_eq!(workers.len(), 3);
    pooled.kill().unwrap();
    pooled.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for pid in workers {
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")), "worker {pid} outlived its controller");
    }
    let out = start(&curriculum, &ledger).args(["--budget", "3xcpu"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(outcome(&ledger).await, reference);

    // /metrics answered during the run, counting the expired leases.
    let metrics = metrics.expect("/metrics answers while the run goes on");
    assert!(metric(&metrics, "evolve_lease_failures_total").is_some_and(|n| n >= 1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nightly_run_continues_from_the_last_accepted_checkpoint() {
    let _turn = machine_to_itself();
    let dir = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(curriculum(dir.path())).unwrap();
    text = text.replacen("warmup_steps = 5", "warmup_steps = 5\nbase = \"last-accepted\"", 1);
    let nightly = dir.path().join("nightly.toml");
    std::fs::write(&nightly, text).unwrap();
    let ledger = dir.path().join("evolve.db");
    run_to_end(&nightly, &ledger);
    run_to_end(&nightly, &ledger);
    let url = format!("sqlite://{}?mode=ro", ledger.display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let cycles: Vec<(i64, i64, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT run_id, cycle, status, parent_hash, checkpoint_hash FROM cycles ORDER BY run_id, cycle").fetch_all(&mut conn).await.unwrap();
    let last_of_first = cycles.iter().filter(|c| c.0 == 1 && c.2 == "accepted").next_back().unwrap().4.clone();
    let second: Vec<_> = cycles.iter().filter(|c| c.0 == 2).collect();
    assert_eq!(second[0].4, last_of_first, "night 2's base is night 1's last accepted checkpoint");
    assert_eq!(second[1].3, last_of_first, "and its first cycle trains from it");
    let pretrained: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM steps WHERE run_id = 2 AND step = 'pretrain'").fetch_one(&mut conn).await.unwrap();
    assert_eq!(pretrained, 0, "night 2 does not pretrain");
    // The lineage runs on unbroken across the nights.
    let parent: Option<String> = sqlx::query_scalar("SELECT parent_hash FROM checkpoints WHERE checkpoint_hash = ?").bind(&last_of_first).fetch_one(&mut conn).await.unwrap();
    assert!(parent.is_some(), "night 1's last checkpoint keeps its own parent");
}

/// The fault suite on a 4-worker CPU pool: in every trial, at moments drawn from a seeded RNG,
/// either one random worker or the controller is SIGKILLed (the controller is then started
/// again with the same command) until the run finishes. Every trial must end with the
/// uninterrupted run's ledger and artifacts. `EVOLVE_FAULT_SEED` and `EVOLVE_FAULT_TRIALS`
/// (default 2026 and 4) run other or longer series.
#[tokio::test(flavor = "multi_thread")]
async fn random_kills_on_a_four_worker_pool() {
    let _turn = machine_to_itself();
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let dir = tempfile::tempdir().unwrap();
    let curriculum = curriculum(dir.path());
    let reference_ledger = dir.path().join("reference/evolve.db");
    let run_time = run_to_end(&curriculum, &reference_ledger);
    let reference = outcome(&reference_ledger).await;
    let setting = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let mut rng = StdRng::seed_from_u64(setting("EVOLVE_FAULT_SEED", 2026));
    let (mut worker_kills, mut controller_kills) = (0, 0);
    for trial in 0..setting("EVOLVE_FAULT_TRIALS", 4) {
        let ledger = dir.path().join(format!("trial{trial}/evolve.db"));
        let mut controller = start(&curriculum, &ledger).args(["--budget", "4xcpu"]).stderr(Stdio::null()).spawn().unwrap();
        let mut faults = 0;
        loop {
            let wait = run_time.mul_f64(rng.random_range(0.1..0.5));
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline && controller.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(status) = controller.try_wait().unwrap() {
                assert!(status.success(), "trial {trial}: the controller failed");
                break;
            }
            if faults == 3 {
                // Enough faults for this trial: let it finish.
                assert!(controller.wait().unwrap().success(), "trial {trial}: the controller failed");
                break;
            }
            faults += 1;
            let workers = children(controller.id());
            if rng.random_bool(0.3) || workers.is_empty() {
                controller.kill().unwrap();
                controller.wait().unwrap();
                controller_kills += 1;
                controller = start(&curriculum, &ledger).args(["--budget", "4xcpu"]).stderr(Stdio::null()).spawn().unwrap();
            } else {
                let pid = workers[rng.random_range(0..workers.len())];
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                worker_kills += 1;
            }
        }
        assert_eq!(outcome(&ledger).await, reference, "trial {trial}");
        verify_artifacts(&ledger.parent().unwrap().join("artifacts"));
    }
    eprintln!("fault suite: {worker_kills} worker kills, {controller_kills} controller kills, every trial identical to the uninterrupted run");
    assert!(worker_kills >= 3 && controller_kills >= 1, "{worker_kills} worker kills, {controller_kills} controller kills");
}

/// A real single-node Slurm (slurmctld, slurmd, munge; fake GPUs for `--gres`), started by
/// `scripts/slurm-local.sh` for this test and stopped when it ends.
struct SlurmCluster {
    dir: PathBuf,
    conf: String,
}

impl SlurmCluster {
    fn start(dir: PathBuf) -> SlurmCluster {
        let out = Command::new(root().join("scripts/slurm-local.sh")).arg("start").arg(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "a real local Slurm is needed (Debian: apt-get install slurmctld slurmd slurm-client munge, as .ci/run does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let conf = stdout.lines().filter_map(|l| l.strip_prefix("export SLURM_CONF=")).last().expect("the script prints SLURM_CONF").trim().to_string();
        SlurmCluster { dir, conf }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf);
        command
    }

    /// `squeue` ids (`12_3`) of the evolve workers' tasks in `states`.
    fn worker_tasks(&self, states: &str) -> Vec<String> {
        let out = self.command("squeue").args(["-h", "-r", "--name=evolve-worker", "-t", states, "-o", "%i"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/slurm-local.sh")).arg("stop").arg(&self.dir).status();
    }
}

/// `--launcher slurm` on a real Slurm: the workers run as one sbatch job array with a (fake) GPU
/// each; twice, Slurm cancels every worker while one holds a lease; the watcher hands the leases
/// out again and resubmits the tasks; the run ends exactly as the in-process run does, and no
/// worker job is left queued or running.
#[tokio::test(flavor = "multi_thread")]
async fn slurm_places_the_pool_and_requeues_the_work_of_jobs_it_kills() {
    let _turn = machine_to_itself();
    let dir = tempfile::tempdir().unwrap();
    let slurm = SlurmCluster::start(dir.path().join("slurm"));
    let curriculum = curriculum(dir.path());
    let reference_ledger = dir.path().join("reference/evolve.db");
    run_to_end(&curriculum, &reference_ledger);
    let reference = outcome(&reference_ledger).await;

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ledger = dir.path().join("slurm-pool/evolve.db");
    let mut controller = start(&curriculum, &ledger)
        .args(["--budget", "3xcpu", "--launcher", "slurm", "--sbatch-args=--gres=gpu:1", "--listen", &format!("127.0.0.1:{port}")])
        .env("SLURM_CONF", &slurm.conf)
        .spawn()
        .unwrap();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while kills < 2 && Instant::now() < deadline && controller.try_wait().unwrap().is_none() {
        let metrics = http_get(port, "/metrics").unwrap_or_default();
        let active = metric(&metrics, "evolve_leases_active").unwrap_or(0.0);
        let expired = metric(&metrics, "evolve_lease_failures_total").unwrap_or(0.0);
        let running = slurm.worker_tasks("RUNNING");
        if active >= 1.0 && expired >= kills as f64 && running.len() == 3 {
            let cancelled = slurm.command("scancel").args(&running).status().unwrap();
            assert!(cancelled.success());
            kills += 1;
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let out = controller.wait_with_output().unwrap();
    assert!(out.status.success(), "the Slurm-placed run failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(kills, 2, "Slurm did not get to cancel the workers twice while one held a lease");
    assert_same_outcome(&ledger, &reference).await;
    let (failures, workers) = worker_usage(&ledger).await;
    assert!(failures >= 2, "each cancellation cost the lease it held: {failures}");
    assert_eq!(workers, 3);
    // Each task was granted a (fake) GPU by --gres, and the run cancelled its jobs at the end.
    let logs: Vec<String> = std::fs::read_dir(ledger.parent().unwrap().join("workers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("slurm-"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(logs.len() >= 9, "3 tasks, then 3 resubmissions after each of the 2 cancellations: {} logs", logs.len());
    assert!(logs.iter().all(|l| l.contains("CUDA_VISIBLE_DEVICES=") && !l.contains("CUDA_VISIBLE_DEVICES= ")), "a task without a GPU: {logs:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !slurm.worker_tasks("PENDING,RUNNING,CONFIGURING").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(slurm.worker_tasks("PENDING,RUNNING,CONFIGURING"), Vec::<String>::new(), "worker jobs outlived the run");
}
