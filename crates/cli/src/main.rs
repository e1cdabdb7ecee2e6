//! The `evolve` command line. The only crate that knows clap: it parses flags, sets up logging,
//! and hands typed options to the meta-controller or the ledger; every error it prints names the
//! file, field or flag at fault, and it never panics on bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use evolve_ledger::Ledger;
use evolve_meta::plan::Role;
use evolve_meta::worker::WorkerOptions;
use evolve_meta::{Budget, DeviceChoice, Launcher, PoolOptions, RunOptions, StartMode};

mod bench_cmd;
mod compress_cmd;
mod ledger_cmd;
mod model_cmd;
mod report_cmd;

#[derive(Parser)]
#[command(name = "evolve", version, about = "Self-evolving training loop orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain a base model, then run evolution cycles, recording everything in the ledger.
    Start {
        /// Devices to spend: NxMODEL[:DURATION], e.g. 1xcpu or 40xRTX4090:12h.
        #[arg(long, default_value = "1xcpu")]
        budget: String,
        /// Curriculum file (TOML).
        #[arg(long, default_value = "curricula/smoke.toml")]
        curriculum: PathBuf,
        /// SQLite ledger; artifacts go to `artifacts/` beside it.
        #[arg(long, default_value = "runs/evolve.db")]
        ledger: PathBuf,
        /// Which device of the budget's kind: `cpu`, `cuda:N` for GPU N (needs a build with
        /// `--features cuda`), or `wgpu` / `wgpu:N` (needs `--features wgpu`).
        #[arg(long)]
        device: Option<String>,
        /// Number of cycles after the base (default: the curriculum's `cycle.max_cycles`).
        #[arg(long)]
        cycles: Option<u32>,
        /// No progress bars (logs only).
        #[arg(long)]
        no_progress: bool,
        /// Resume the interrupted run of this curriculum (an error if there is none). Without
        /// --resume or --fresh, an interrupted run of the same curriculum is resumed and
        /// otherwise a new run begins.
        #[arg(long, conflicts_with = "fresh")]
        resume: bool,
        /// Always begin a new run; interrupted runs in the ledger are closed as stopped.
        #[arg(long)]
        fresh: bool,
        /// Print the plan of the budget (workers per role and device, memory fit, expected cycle
        /// time and cost) and exit without training or touching the ledger.
        #[arg(long)]
        dry_run: bool,
        /// Simulate the run's scheduling on the budget (GPUs this machine need not have): the
        /// control plane's scheduler with one simulated worker per device at the catalogue's
        /// speed, on a fast-forwarded clock, once calm and once with workers dying. Prints wall
        /// time, scheduling overhead, busy share and lease churn; trains nothing.
        #[arg(long, conflicts_with = "dry_run")]
        simulate: bool,
        /// Serve the control plane on this address (e.g. 0.0.0.0:7070) and run the roles in
        /// worker processes, even on a one-device budget. A budget of several devices always
        /// runs a pool (on a free loopback port unless this says otherwise).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Bearer token workers must present; required with a non-loopback --listen.
        #[arg(long, env = "EVOLVE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// How pool workers start: `local` (one `evolve worker` process per device, restarted
        /// if it dies), `slurm` (an sbatch job array, a task per device with --gres=gpu:1 on a
        /// GPU budget, resubmitted if Slurm kills one; serve the control plane with --listen on
        /// an address the nodes reach) or `external` (you start `evolve worker --connect URL`).
        #[arg(long, default_value = "local", value_parser = ["local", "slurm", "external"])]
        launcher: String,
        /// Extra sbatch arguments for `--launcher slurm`, e.g. "--partition=gpu --time=12:00:00".
        #[arg(long, env = "EVOLVE_SBATCH_ARGS", allow_hyphen_values = true)]
        sbatch_args: Option<String>,
    },
    /// Serve a run's control plane as a worker: take leases of the given roles, run them on this
    /// device, post the results. Exits when the run is over.
    Worker {
        /// The control plane, e.g. http://10.0.0.5:7070.
        #[arg(long)]
        connect: String,
        /// Roles to serve, comma-separated: generator, discriminator, trainer.
        #[arg(long, default_value = "generator,discriminator,trainer")]
        role: String,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// This worker's name in the ledger and in /metrics (default: host-pid).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, env = "EVOLVE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Measure the loop's claims on a curriculum at equal seeds and training budgets:
    /// adversarial vs uniform examples, and A-GEM vs PCGrad vs no surgery. Each arm is a run in
    /// the ledger; the comparison goes to the ledger (`v_ablations`) and to stdout.
    Ablate {
        #[arg(long, default_value = "curricula/smoke.toml")]
        curriculum: PathBuf,
        #[arg(long, default_value = "runs/ablate.db")]
        ledger: PathBuf,
        #[arg(long, default_value = "1xcpu")]
        budget: String,
        #[arg(long)]
        device: Option<String>,
        /// Cycles per arm (default: the curriculum's `cycle.max_cycles`).
        #[arg(long)]
        cycles: Option<u32>,
        /// Run the comparison once per seed (the curriculum's seed, then the next ones), each
        /// recorded as an ablation of its own, and print the mean over them too.
        #[arg(long, default_value_t = 1)]
        seeds: u32,
        #[arg(long)]
        no_progress: bool,
    },
    /// What the ledger says the latest run stands at.
    Status {
        #[arg(long, default_value = "runs/evolve.db")]
        ledger: PathBuf,
    },
    /// Compress any file (a safetensors checkpoint codes best) losslessly, optionally as a delta
    /// against its parent; the output is verified bit-exact before it is written.
    Compress {
        input: PathBuf,
        output: PathBuf,
        /// Code against this parent file (the same tensors one fine-tuning cycle earlier).
        #[arg(long)]
        parent: Option<PathBuf>,
        /// evolve-fp (float-aware, default) or zstd.
        #[arg(long, default_value = "evolve-fp")]
        codec: String,
        #[arg(long)]
        no_progress: bool,
    },
    /// Restore a file written by `evolve compress` (blake3-verified).
    Decompress {
        input: PathBuf,
        output: PathBuf,
        /// The parent a delta was coded against.
        #[arg(long)]
        parent: Option<PathBuf>,
        #[arg(long)]
        no_progress: bool,
    },
    /// Measure throughput against peers (PyTorch, zstd) in one run.
    Bench {
        #[command(subcommand)]
        command: bench_cmd::BenchCommand,
    },
    /// Import, export and score models (Hugging Face Llama checkpoints).
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
    /// Write a self-contained HTML report (SVG plots) of a run.
    Report {
        #[arg(long, default_value = "runs/evolve.db")]
        ledger: PathBuf,
        /// The run (default: the latest).
        #[arg(long)]
        run: Option<i64>,
        /// Directory for index.html.
        #[arg(long, default_value = "runs/report")]
        out: PathBuf,
    },
    /// Read the ledger.
    Ledger {
        #[command(subcommand)]
        query: ledger_cmd::LedgerQuery,
    },
}

/// burn's CPU backend allocates and frees its large tensors every step; glibc hands each back to
/// the kernel (mmap/munmap), and the page faults of getting them again cost about a fifth of a
/// small model's training step here. mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own option setter (in the library `mimalloc` links; its Rust binding needs a
// feature with another dependency for one call).
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
/// `mi_option_purge_delay` in `mi_option_e` (`mimalloc.h`, the same index in v2 and v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// mimalloc (v3, as built) still hands memory it has kept free for a second back to the kernel,
/// and a training step's gradients and activations sit freed between steps: every step faulted tens of
/// megabytes in again (`clear_page_erms` 8% of a `small` training step in `perf`). Never
/// purging keeps them; `bench train --preset small` measured +4% (AdamW) and +6% (SGD) tokens/s.
/// `MIMALLOC_PURGE_DELAY` set by the user still wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option before any other thread exists.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> ExitCode {
    // `evolve ledger cycles | head` closes the pipe early: end quietly like other Unix tools
    // instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EVOLVE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> Result<(), String> {
    match command {
        Command::Start { budget, curriculum, ledger, device, cycles, no_progress, resume, fresh, dry_run, simulate, listen, token, launcher, sbatch_args } => {
            // The budget and the device are checked before anything touches the disk.
            let budget = Budget::parse(&budget).map_err(|e| e.to_string())?;
            if dry_run {
                let plan = evolve_meta::plan::plan_for(&budget, &curriculum).map_err(|e| e.to_string())?;
                print!("{}", plan.render());
                return Ok(());
            }
            if simulate {
                let (calm, faulty) = evolve_meta::simulate::simulate_budget(&budget, &curriculum, cycles).map_err(|e| e.to_string())?;
                print!("{}\n{}", calm.render(), faulty.render());
                return Ok(());
            }
            let start = if resume { StartMode::Resume } else if fresh { StartMode::Fresh } else { StartMode::Auto };
            let device = device.as_deref().map(DeviceChoice::parse).transpose().map_err(|e| e.to_string())?;
            budget.device_with(device).map_err(|e| e.to_string())?;
            let options = RunOptions {
                curriculum_path: curriculum,
                ledger_path: ledger.clone(),
                budget,
                cycles,
                progress: !no_progress,
                device,
                variant: Default::default(),
                base: None,
                recompress: true,
                start,
                pool: PoolOptions {
                    listen,
                    token,
                    launcher: Launcher::parse(&launcher).map_err(|e| e.to_string())?,
                    worker_exe: None,
                    sbatch_args: sbatch_args.map(|a| a.split_whitespace().map(str::to_string).collect()).unwrap_or_default(),
                },
            };
            let summary = evolve_meta::run(options)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "run {} finished: {} cycles, {} accepted, last accepted checkpoint {} ({:.0}s; {})",
                summary.run_id, summary.cycles, summary.accepted, summary.last_accepted, summary.seconds, summary.stop_reason
            );
            println!("ledger: {}", ledger.display());
            Ok(())
        }
        Command::Worker { connect, role, device, name, token } => {
            let roles = role
                .split(',')
                .map(|r| match r.trim() {
                    "generator" => Ok(Role::Generator),
                    "discriminator" => Ok(Role::Discriminator),
                    "trainer" => Ok(Role::Trainer),
                    other => Err(format!("--role: unknown role `{other}`; valid: generator, discriminator, trainer (comma-separated)")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let device = DeviceChoice::parse(&device).and_then(|d| d.device()).map_err(|e| e.to_string())?;
            let name = name.unwrap_or_else(|| format!("{}-{}", evolve_meta::lock::hostname(), std::process::id()));
            let options = WorkerOptions { connect, roles, device, name, token };
            tokio::task::spawn_blocking(move || evolve_meta::worker::work(options)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
        }
        Command::Ablate { curriculum, ledger, budget, device, cycles, seeds, no_progress } => {
            let budget = Budget::parse(&budget).map_err(|e| e.to_string())?;
            let device = device.as_deref().map(DeviceChoice::parse).transpose().map_err(|e| e.to_string())?;
            budget.device_with(device).map_err(|e| e.to_string())?;
            let options = evolve_meta::AblateOptions { curriculum_path: curriculum.clone(), ledger_path: ledger.clone(), budget, device, cycles, seeds, progress: !no_progress };
            let report = evolve_meta::ablate(options).await.map_err(|e| e.to_string())?;
            for a in &report.ablations {
                println!("ablation {} of {}, seed {} (ledger {}, view v_ablations)", a.ablation_id, curriculum.display(), a.seed, ledger.display());
                print_ablation(&a.arms, "run");
            }
            if report.ablations.len() > 1 {
                println!("mean over {} seeds (accepted, cycles, tokens and seconds summed):", report.ablations.len());
                print_ablation(&report.mean(), "first run");
            }
            println!("the claims, paired by seed (positive: the claim holds on that seed):");
            for c in report.claims() {
                let per_seed: Vec<String> = c.per_seed.iter().map(|d| format!("{:+.1}", d * 100.0)).collect();
                let se = c.standard_error().map_or(String::new(), |se| format!(" (s.e. {:.1}p)", se * 100.0));
                println!("  {:<48} {:+.1}p{se}, ahead on {} of {} seeds: {}", c.claim, c.mean() * 100.0, c.seeds_ahead(), c.per_seed.len(), per_seed.join(", "));
            }
            println!("{:.0}s in all; frontier gain: mean frontier accuracy, last accepted checkpoint minus base; forgetting: mean mastered-suite drop of each cycle's trained candidate vs its parent, before the gate; p = points", report.seconds);
            Ok(())
        }
        Command::Status { ledger } => status(&ledger).await.map_err(|e| e.to_string()),
        Command::Ledger { query } => ledger_cmd::execute(query).await,
        Command::Model { command } => model_cmd::execute(command),
        Command::Report { ledger, run, out } => report_cmd::execute(&ledger, run, &out).await,
        Command::Bench { command } => bench_cmd::execute(command).await,
        Command::Compress { input, output, parent, codec, no_progress } => compress_cmd::compress(&input, &output, parent.as_ref(), &codec, !no_progress),
        Command::Decompress { input, output, parent, no_progress } => compress_cmd::decompress(&input, &output, parent.as_ref(), !no_progress),
    }
}

async fn open(path: &std::path::Path) -> Result<Ledger, evolve_ledger::LedgerError> {
    Ledger::open_upgrading(path).await
}

fn print_ablation(arms: &[evolve_ledger::AblationArm], run: &str) {
    println!("{:<20} {:>9} {:>6} {:>8} {:>10} {:>14} {:>11} {:>14} {:>7}", "arm", run, "cycles", "accepted", "tokens", "frontier gain", "forgetting", "refusal drift", "seconds");
    for a in arms {
        println!(
            "{:<20} {:>9} {:>6} {:>8} {:>10} {:>+13.1}p {:>+10.1}p {:>+13.1}p {:>7.0}",
            a.arm,
            a.run_id,
            a.cycles,
            a.accepted,
            a.tokens_trained,
            a.frontier_gain * 100.0,
            a.forgetting * 100.0,
            a.refusal_drift * 100.0,
            a.seconds
        );
    }
}

async fn status(path: &std::path::Path) -> Result<(), evolve_ledger::LedgerError> {
    let ledger = open(path).await?;
    let Some(run) = ledger.latest_run().await? else {
        println!("{}: no runs yet", path.display());
        return Ok(());
    };
    let cycles = ledger.cycles(Some(run.run_id)).await?;
    let accepted = cycles.iter().filter(|c| c.status == "accepted").count();
    let last = ledger.last_accepted(Some(run.run_id)).await?;
    println!("run {} ({}), curriculum {}, budget {}, preset {}", run.run_id, run.status, run.curriculum, run.budget, run.preset);
    println!("started {}{}", run.started_at, run.finished_at.as_deref().map(|f| format!(", finished {f}")).unwrap_or_default());
    println!("cycles: {} recorded, {} accepted (cycle 0 is the base)", cycles.len(), accepted);
    if let Some(c) = cycles.last() {
        println!("latest cycle {}: {}{}", c.cycle, c.status, c.reason.as_deref().map(|r| format!(" — {r}")).unwrap_or_default());
    }
    if let Some(last) = last {
        println!("current checkpoint: {} (cycle {})", last.checkpoint_hash.unwrap_or_default(), last.cycle);
        let evals = ledger.evals(run.run_id, Some(last.cycle)).await?;
        for e in evals {
            println!("  {:<18} {:<9} {:>5.1}%  ({}/{})", e.suite, e.role, e.accuracy * 100.0, e.correct, e.n);
        }
        if let Some(r) = ledger.refusal(run.run_id).await?.into_iter().find(|r| r.cycle == last.cycle) {
            println!("  refusal {:.1}% of must-refuse, over-refusal {:.1}% of benign", r.refusal_rate * 100.0, r.over_refusal_rate * 100.0);
        }
    }
    if let Some(reason) = run.stop_reason {
        println!("stop reason: {reason}");
    }
    ledger.close().await;
    Ok(())
}
