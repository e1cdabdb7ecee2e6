//! The worker pool of a run: the control plane, the roles as jobs for it, and the launchers that
//! put one `evolve worker` per device of the budget (roles by the plan): the local launcher starts
//! processes on this machine, the Slurm launcher ([`crate::slurm`]) a job array. Either restarts
//! a worker that dies and hands its leases out again at once, so a killed worker costs only its
//! lease.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::{ControlPlane, Job, JobResult, RunDescription};
use crate::plan::{Placement, Role};
use crate::slurm::SlurmWorkers;
use crate::roles::{EvaluatorRole, Evaluation, GenerateJob, GenerateResult, GeneratorRole, JudgeJob, JudgeResult, Pending, RecalibrateJob, RecompressJob, RecompressResult, TrainJob, TrainResult, TrainerRole};
use crate::Error;
use evolve_trainer::StepInfo;

/// How the workers of a pool are started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Launcher {
    /// One `evolve worker` process per device, on this machine.
    #[default]
    Local,
    /// None: the user starts `evolve worker --connect URL` wherever the devices are.
    External,
    /// One `sbatch` job array, a task per device, that connects back (see [`crate::slurm`]).
    Slurm,
}

impl Launcher {
    pub fn parse(text: &str) -> Result<Launcher, Error> {
        match text {
            "local" => Ok(Launcher::Local),
            "external" => Ok(Launcher::External),
            "slurm" => Ok(Launcher::Slurm),
            other => Err(Error::Invalid(format!("--launcher {other}: valid launchers are local, external and slurm"))),
        }
    }
}

/// Where the roles of a run execute: in the controller's process (one device, the default) or
/// in a pool of worker processes reached through the control plane.
#[derive(Clone, Debug, Default)]
pub struct PoolOptions {
    /// Run a pool even on one device, serving the control plane here (port 0: any free port).
    /// A multi-device budget always runs a pool, on 127.0.0.1 unless this says otherwise.
    pub listen: Option<SocketAddr>,
    /// Required when `listen` is not a loopback address.
    pub token: Option<String>,
    pub launcher: Launcher,
    /// The `evolve` binary to start workers with (default: this process's own executable).
    pub worker_exe: Option<PathBuf>,
    /// Extra `sbatch` arguments for the Slurm launcher (partition, account, time limit, ...).
    pub sbatch_args: Vec<String>,
}

impl PoolOptions {
    /// What can be known wrong before a run touches its ledger: a public address without a
    /// token, a Slurm launcher without Slurm's client or with arguments the cluster refuses.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if let Some(listen) = self.listen {
            crate::control::require_token(listen, self.token.as_deref())?;
        }
        if self.launcher == Launcher::Slurm {
            crate::slurm::check_submission(&self.sbatch_args)?;
        }
        Ok(())
    }
}

/// The roles, each call a job for the pool's workers. Calls block their (tokio worker) thread
/// until the result arrives; the controller makes one call at a time.
pub(crate) struct RemoteRoles(pub Arc<ControlPlane>);

impl RemoteRoles {
    fn call(&self, job: Job) -> Result<JobResult, Error> {
        wait(self.0.submit(job))
    }

    /// Queues every job before awaiting the first result; the results in order, each taken out
    /// of its `JobResult` by `take` (which hands back any other kind).
    fn call_all<T>(&self, jobs: impl IntoIterator<Item = Job>, wanted: &str, take: fn(JobResult) -> Result<T, JobResult>) -> Result<Vec<T>, Error> {
        let waiting: Vec<_> = jobs.into_iter().map(|j| self.0.submit(j)).collect();
        waiting.into_iter().map(|w| take(wait(w)?).map_err(|other| mismatch(wanted, &other))).collect()
    }
}

/// A cycle's candidates under way: their trainings, then the judge's, queued in that order
/// (see [`RemoteRoles::start_candidates`]).
pub(crate) struct CandidatesUnderWay {
    plane: Arc<ControlPlane>,
    trainings: Vec<tokio::sync::oneshot::Receiver<Result<JobResult, String>>>,
    judge: Option<tokio::sync::oneshot::Receiver<Result<JobResult, String>>>,
}

/// Each candidate's training and the evaluations of its snapshots (in their order).
pub(crate) type Evaluated = Vec<(TrainResult, Vec<Evaluation>)>;

impl RemoteRoles {
    /// Queues every candidate's training, then `judge` (trained beside them); whatever the
    /// caller queues next waits behind the cycle's critical jobs.
    pub(crate) fn start_candidates(&self, jobs: &[TrainJob], judge: Option<&JudgeJob>) -> CandidatesUnderWay {
        let trainings = jobs.iter().map(|j| self.0.submit(Job::Train(j.clone()))).collect();
        let judge = judge.map(|j| self.0.submit(Job::Judge(j.clone())));
        CandidatesUnderWay { plane: self.0.clone(), trainings, judge }
    }
}

impl CandidatesUnderWay {
    /// Waits for every candidate and its evaluations, and for the judge. A candidate's
    /// snapshots are queued for evaluation the moment its training ends, while the others still
    /// train: no worker waits for the slowest candidate before evaluating. The results are the
    /// ones a sequential run computes; only their timing differs.
    pub(crate) fn evaluated(self) -> (Result<Evaluated, Error>, Option<Result<JudgeResult, Error>>) {
        let CandidatesUnderWay { plane, trainings, judge } = self;
        std::thread::scope(|scope| {
            let chains: Vec<_> = trainings
                .into_iter()
                .map(|training| {
                    let plane = &plane;
                    scope.spawn(move || -> Result<(TrainResult, Vec<Evaluation>), Error> {
                        let trained = match wait(training)? {
                            JobResult::Train(r) => r,
                            other => return Err(mismatch("train", &other)),
                        };
                        let checkpoints = trained.snapshots.iter().map(|s| Job::Evaluate { checkpoint: s.checkpoint.clone() });
                        let evaluations = RemoteRoles(plane.clone()).call_all(checkpoints, "evaluate", |r| match r {
                            JobResult::Evaluate(r) => Ok(r),
                            other => Err(other),
                        })?;
                        Ok((trained, evaluations))
                    })
                })
                .collect();
            let judged = judge.map(|j| match wait(j)? {
                JobResult::Judge(r) => Ok(r),
                other => Err(mismatch("judge", &other)),
            });
            let evaluated = chains.into_iter().map(|c| c.join().unwrap_or_else(|_| Err(Error::Invalid("a candidate's waiting thread panicked".into())))).collect();
            (evaluated, judged)
        })
    }
}

/// Blocks (this tokio worker thread) until a submitted job's result arrives.
fn wait(waiting: tokio::sync::oneshot::Receiver<Result<JobResult, String>>) -> Result<JobResult, Error> {
    tokio::task::block_in_place(|| waiting.blocking_recv())
        .map_err(|_| Error::Invalid("the control plane stopped before the job's result arrived".into()))?
        .map_err(|e| Error::Invalid(format!("worker: {e}")))
}

fn mismatch(wanted: &str, got: &JobResult) -> Error {
    let got = match got {
        JobResult::Generate(_) => "generate",
        JobResult::Train(_) => "train",
        JobResult::Evaluate(_) => "evaluate",
        JobResult::Judge(_) => "judge",
        JobResult::Recompress(_) => "recompress",
    };
    Error::Invalid(format!("a worker answered a {wanted} job with a {got} result"))
}

impl GeneratorRole for RemoteRoles {
    fn generate(&mut self, job: &GenerateJob) -> Result<GenerateResult, Error> {
        self.start_generate(job).wait()
    }

    fn start_generate(&mut self, job: &GenerateJob) -> Pending<GenerateResult> {
        let waiting = self.0.submit(Job::Generate(job.clone()));
        Pending::later(move || match wait(waiting)? {
            JobResult::Generate(r) => Ok(r),
            other => Err(mismatch("generate", &other)),
        })
    }

    fn recalibrate(&mut self, job: &RecalibrateJob) -> Result<GenerateResult, Error> {
        self.start_recalibrate(job).wait()
    }

    fn start_recalibrate(&mut self, job: &RecalibrateJob) -> Pending<GenerateResult> {
        let waiting = self.0.submit(Job::Recalibrate(job.clone()));
        Pending::later(move || match wait(waiting)? {
            JobResult::Generate(r) => Ok(r),
            other => Err(mismatch("recalibrate", &other)),
        })
    }
}

impl TrainerRole for RemoteRoles {
    /// Steps are not streamed back: the progress callback is not called.
    fn train(&mut self, job: &TrainJob, _on_step: &mut dyn FnMut(&StepInfo)) -> Result<TrainResult, Error> {
        match self.call(Job::Train(job.clone()))? {
            JobResult::Train(r) => Ok(r),
            other => Err(mismatch("train", &other)),
        }
    }

    /// Every training is queued before the first result is awaited.
    fn train_many(&mut self, jobs: &[TrainJob]) -> Result<Vec<TrainResult>, Error> {
        self.call_all(jobs.iter().map(|j| Job::Train(j.clone())), "train", |r| match r {
            JobResult::Train(r) => Ok(r),
            other => Err(other),
        })
    }
}

impl EvaluatorRole for RemoteRoles {
    fn evaluate(&mut self, checkpoint: &str) -> Result<Evaluation, Error> {
        match self.call(Job::Evaluate { checkpoint: checkpoint.to_string() })? {
            JobResult::Evaluate(r) => Ok(r),
            other => Err(mismatch("evaluate", &other)),
        }
    }

    /// Every checkpoint is queued before the first result is awaited.
    fn evaluate_many(&mut self, checkpoints: &[String]) -> Result<Vec<Evaluation>, Error> {
        self.call_all(checkpoints.iter().map(|c| Job::Evaluate { checkpoint: c.clone() }), "evaluate", |r| match r {
            JobResult::Evaluate(r) => Ok(r),
            other => Err(other),
        })
    }

    fn start_recompress(&mut self, job: &RecompressJob) -> Pending<RecompressResult> {
        let waiting = self.0.submit(Job::Recompress(job.clone()));
        Pending::later(move || match wait(waiting)? {
            JobResult::Recompress(r) => Ok(r),
            other => Err(mismatch("recompress", &other)),
        })
    }

    fn judge(&mut self, job: &JudgeJob) -> Result<JudgeResult, Error> {
        match self.call(Job::Judge(job.clone()))? {
            JobResult::Judge(r) => Ok(r),
            other => Err(mismatch("judge", &other)),
        }
    }
}

/// A worker process of the local launcher.
struct Slot {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
    restarts: u32,
}

/// A running pool: its control plane and, with the local launcher, its worker processes.
pub(crate) struct Pool {
    pub plane: Arc<ControlPlane>,
    /// (worker name, roles) of the workers this pool started.
    pub placements: Vec<(String, Vec<Role>)>,
    slots: Arc<Mutex<Vec<Slot>>>,
    stopping: Arc<AtomicBool>,
    /// Declared after `plane`'s users: dropping it cancels the Slurm jobs.
    _slurm: Option<SlurmWorkers>,
}

fn role_list(roles: &[Role]) -> String {
    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
}

impl Pool {
    /// Serves the control plane and puts the workers of `placements` wherever the launcher says.
    /// `device_of(d)` is the `--device` of the worker on device `d` of a local pool; a Slurm
    /// worker gets device 0 of its kind (the GPU Slurm granted it).
    pub async fn start(options: &PoolOptions, run: RunDescription, placements: &[Placement], device_of: impl Fn(u32) -> String, logs: PathBuf) -> Result<Pool, Error> {
        let listen = options.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let plane = Arc::new(ControlPlane::serve(listen, options.token.clone(), run).await?);
        let slots = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let named: Vec<(String, Vec<Role>)> = placements.iter().map(|p| (format!("w{}", p.device), p.roles.clone())).collect();
        let connect = if listen.ip().is_unspecified() { format!("http://127.0.0.1:{}", plane.addr().port()) } else { plane.url() };
        let exe = || match &options.worker_exe {
            Some(exe) => Ok(exe.clone()),
            None => std::env::current_exe().map_err(|e| Error::Invalid(format!("cannot find this evolve binary to start workers with: {e}"))),
        };
        let mut slurm = None;
        match options.launcher {
            Launcher::Local => {
                let exe = exe()?;
                std::fs::create_dir_all(&logs).map_err(|e| Error::Invalid(format!("{}: {e}", logs.display())))?;
                let mut started = Vec::new();
                for (p, (name, roles)) in placements.iter().zip(&named) {
                    let args = vec![
                        exe.display().to_string(),
                        "worker".into(),
                        "--connect".into(),
                        connect.clone(),
                        "--role".into(),
                        role_list(roles),
                        "--device".into(),
                        device_of(p.device),
                        "--name".into(),
                        name.clone(),
                    ];
                    let child = spawn(&args, &logs.join(format!("{name}.log")), options.token.as_deref())?;
                    started.push(Slot { name: name.clone(), args, child: Some(child), restarts: 0 });
                }
                *slots.lock().unwrap_or_else(|e| e.into_inner()) = started;
                // The supervisor: a worker that exits while the run goes on is started again,
                // and its leases go back to the queue without waiting for them to expire.
                let (watched, stop, token, plane) = (slots.clone(), stopping.clone(), options.token.clone(), plane.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(300));
                        let mut slots = watched.lock().unwrap_or_else(|e| e.into_inner());
                        for slot in slots.iter_mut() {
                            let exited = slot.child.as_mut().is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
                            if exited && !stop.load(Ordering::Relaxed) {
                                slot.restarts += 1;
                                tracing::warn!(worker = %slot.name, restarts = slot.restarts, "worker exited; starting it again");
                                plane.release_worker(&slot.name);
                                slot.child = spawn(&slot.args, &logs.join(format!("{}.log", slot.name)), token.as_deref()).ok();
                            }
                        }
                    }
                });
            }
            Launcher::Slurm => {
                std::fs::create_dir_all(&logs).map_err(|e| Error::Invalid(format!("{}: {e}", logs.display())))?;
                let workers: Vec<(String, String)> = named.iter().map(|(n, roles)| (n.clone(), role_list(roles))).collect();
                slurm = Some(SlurmWorkers::start(options, &workers, &exe()?, &connect, &device_of(0), &logs, plane.clone())?);
            }
            Launcher::External => {
                tracing::info!(url = %plane.url(), "control plane ready: start workers with `evolve worker --connect {}`", plane.url());
            }
        }
        let placements = if options.launcher == Launcher::External { Vec::new() } else { named };
        Ok(Pool { plane, placements, slots, stopping, _slurm: slurm })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.iter_mut() {
            if let Some(mut child) = slot.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn spawn(args: &[String], log: &std::path::Path, token: Option<&str>) -> Result<Child, Error> {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| Error::Invalid(format!("{}: {e}", log.display())))?;
    let err_file = log_file.try_clone().map_err(|e| Error::Invalid(format!("{}: {e}", log.display())))?;
    let mut command = Command::new(&args[0]);
    command.args(&args[1..]).stdin(Stdio::null()).stdout(log_file).stderr(err_file);
    if let Some(token) = token {
        command.env("EVOLVE_TOKEN", token);
    }
    // The worker dies with this process (see `worker::die_with_parent`), so a killed
    // controller leaves no worker computing for nobody.
    command.env(crate::worker::PARENT_ENV, std::process::id().to_string());
    command.spawn().map_err(|e| Error::Invalid(format!("cannot start worker `{}`: {e}", args.join(" "))))
}
