//! A worker process (`evolve worker`): it asks the control plane for leases of its roles, runs
//! each job with the same role code the in-process controller uses, beats the lease's heart while
//! it works, and posts the result. It holds no state between jobs but the model presets and the
//! frozen suites every role derives from the curriculum; everything else arrives as artifact
//! hashes and is read, hash-verified, from the shared store. Killing a worker costs its lease:
//! the job is handed to another worker once the lease expires.
//!
//! Architecture invariant: a worker never opens the ledger.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use burn::prelude::Device;
use evolve_store::ArtifactStore;

use crate::control::{HEARTBEAT, Job, JobResult, LONG_POLL, Lease, LeaseRequest, Outcome, RunDescription};
use crate::plan::Role;
use crate::roles::{Context, EvaluatorRole, GeneratorRole, LocalEvaluator, LocalGenerator, LocalTrainer, TrainerRole};
use crate::Error;

/// How long a worker keeps trying to reach a controller that does not answer before it gives up.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(30);

pub struct WorkerOptions {
    /// The control plane, e.g. `http://127.0.0.1:7070`.
    pub connect: String,
    pub roles: Vec<Role>,
    pub device: Device,
    /// How this worker is named in the ledger and in /metrics.
    pub name: String,
    pub token: Option<String>,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.send_json(body)
    }

    fn get(&self, path: &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.call()
    }
}

fn unreachable(connect: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("--connect {connect}: the control plane did not answer for {}s: {e}", UNREACHABLE_LIMIT.as_secs()))
}

/// Set by the local launcher to its own pid: the worker then dies with it.
pub const PARENT_ENV: &str = "EVOLVE_WORKER_PARENT";

/// A worker the local launcher started asks the kernel to SIGKILL it when its parent (the
/// controller) dies, however it dies: otherwise a kill -9 of the controller would leave its
/// workers finishing jobs nobody will collect. If the parent is already gone, exit now.
fn die_with_parent() {
    let Some(parent) = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse::<i32>().ok()) else { return };
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number reads no memory of ours;
        // getppid cannot fail.
        let now_parent = unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::getppid()
        };
        if now_parent != parent {
            tracing::warn!(parent, "the controller that started this worker is gone");
            std::process::exit(1);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
}

/// Serves leases until the run is over (the control plane answers 410) or the control plane
/// stays unreachable for [`UNREACHABLE_LIMIT`].
pub fn work(options: WorkerOptions) -> Result<(), Error> {
    die_with_parent();
    let config = ureq::Agent::config_builder().timeout_global(Some(LONG_POLL + Duration::from_secs(30))).http_status_as_error(false).build();
    let client = Arc::new(Client { agent: ureq::Agent::new_with_config(config), base: options.connect.trim_end_matches('/').to_string(), token: options.token.clone() });
    let started = Instant::now();
    let run: RunDescription = loop {
        match client.get("/v1/run") {
            Ok(mut r) if r.status().is_success() => break r.body_mut().read_json().map_err(|e| Error::Invalid(format!("--connect {}: unreadable run description: {e}", options.connect)))?,
            Ok(r) => return Err(Error::Invalid(format!("--connect {}: the control plane refused: HTTP {}", options.connect, r.status()))),
            Err(e) if started.elapsed() > UNREACHABLE_LIMIT => return Err(unreachable(&options.connect, e)),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let model_config = evolve_model::preset(&run.curriculum.preset)
        .ok_or_else(|| Error::Invalid(format!("the run's preset `{}` is unknown to this evolve", run.curriculum.preset)))??;
    let store = ArtifactStore::open(&run.artifacts)?;
    let ctx = Context::new(run.curriculum, model_config, store, options.device.clone());
    let (mut generator, mut trainer, mut evaluator) = (LocalGenerator(ctx.clone()), LocalTrainer(ctx.clone()), LocalEvaluator(ctx));
    tracing::info!(worker = %options.name, roles = ?options.roles, "worker ready");
    let request = LeaseRequest { worker: options.name.clone(), roles: options.roles.clone() };
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let lease: Lease = match client.post("/v1/lease", &request) {
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_LIMIT {
                    return Err(unreachable(&options.connect, e));
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Ok(mut r) => {
                unreachable_since = None;
                match r.status().as_u16() {
                    200 => r.body_mut().read_json().map_err(|e| Error::Invalid(format!("unreadable lease: {e}")))?,
                    204 => continue,
                    410 => {
                        tracing::info!(worker = %options.name, "the run is over");
                        return Ok(());
                    }
                    status => return Err(Error::Invalid(format!("--connect {}: lease request refused: HTTP {status}", options.connect))),
                }
            }
        };
        // The heart beats until the job is done (its channel closes), without delaying the result.
        let (done, stopped) = mpsc::channel::<()>();
        let heart = {
            let (client, id) = (client.clone(), lease.lease);
            std::thread::spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
                    if let Ok(r) = client.post(&format!("/v1/lease/{id}/heartbeat"), &())
                        && r.status().as_u16() == 410
                    {
                        // Someone else has the job now; our result will be ignored.
                        break;
                    }
                }
            })
        };
        let result = match lease.job {
            Job::Generate(job) => generator.generate(&job).map(JobResult::Generate),
            Job::Recalibrate(job) => generator.recalibrate(&job).map(JobResult::Generate),
            Job::Train(job) => trainer.train(&job, &mut |_| {}).map(JobResult::Train),
            Job::Evaluate { checkpoint } => evaluator.evaluate(&checkpoint).map(JobResult::Evaluate),
            Job::Judge(job) => evaluator.judge(&job).map(JobResult::Judge),
            Job::Recompress(job) => evaluator.start_recompress(&job).wait().map(JobResult::Recompress),
        };
        drop(done);
        let _ = heart.join();
        let outcome = match result {
            Ok(ok) => Outcome { ok: Some(ok), error: None },
            Err(e) => Outcome { ok: None, error: Some(e.to_string()) },
        };
        // A lost post is a lost lease: it expires and the job runs again elsewhere.
        if let Err(e) = client.post(&format!("/v1/lease/{}/result", lease.lease), &outcome) {
            tracing::warn!(worker = %options.name, lease = lease.lease, "could not post the result: {e}");
        }
    }
}
