//! The control plane: the meta-controller's HTTP/JSON service that worker processes pull work
//! from. A role call of the controller becomes a job in a queue; a worker of that role takes it
//! as a lease with a deadline, keeps the lease alive with heartbeats, and posts the result. A
//! lease whose worker stops heartbeating (killed, hung, its machine gone) expires and the job is
//! handed out again; results are idempotent per job (the first one wins, later ones change
//! nothing), which is safe because a job is a pure function of its inputs: same artifacts, same
//! seeds, same result. Checkpoints and batches never cross this socket, only their hashes; the
//! bytes move through the shared artifact store, verified by hash on every read.
//!
//! Endpoints (all JSON; `Authorization: Bearer TOKEN` required when a token is set, which it must
//! be when bound to anything but loopback):
//! - `GET /v1/run`: what a worker needs to build its context (curriculum, artifact store path).
//! - `POST /v1/lease` `{worker, roles}`: long-polls up to [`LONG_POLL`] for a job of one of those
//!   roles; 200 with `{lease, job, ttl_ms}`, 204 when none came, 410 when the run is over.
//! - `POST /v1/lease/{id}/heartbeat`: extends the lease; 410 when it expired and was re-issued.
//! - `POST /v1/lease/{id}/result` `{ok}` or `{error}`: 200 `{accepted}`.
//! - `GET /metrics`: Prometheus text.
//!
//! Architecture invariant: this module knows jobs and results as the role types of `roles`, and
//! nothing of the ledger; the controller turns what it counts into ledger rows.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use evolve_curriculum::Curriculum;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use crate::plan::Role;
use crate::roles::{Evaluation, GenerateJob, GenerateResult, JudgeJob, JudgeResult, RecalibrateJob, RecompressJob, RecompressResult, TrainJob, TrainResult};
use crate::Error;

/// How long a lease lives without a heartbeat. Workers beat every [`HEARTBEAT`].
pub const LEASE_TTL: Duration = Duration::from_secs(6);
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long `POST /v1/lease` waits for a job before answering 204.
pub const LONG_POLL: Duration = Duration::from_secs(10);
/// A job that has waited this long for a worker of its role goes to any worker: its role's
/// workers are all busy or dead (a job handed out again after its worker died keeps its first
/// queueing time, so it goes to the first free worker at once). Every worker runs every role's
/// code; the plan's roles are a placement preference.
pub const FALLBACK: Duration = Duration::from_secs(2);
// (Sooner when the launcher reports every worker of the role dead: see `Queue::release`.)
/// How often expired leases are looked for.
const REAP_EVERY: Duration = Duration::from_millis(250);

/// Work for a worker: one role call.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    Generate(GenerateJob),
    Train(TrainJob),
    Evaluate { checkpoint: String },
    Judge(JudgeJob),
    Recompress(RecompressJob),
    Recalibrate(RecalibrateJob),
}

/// What the scheduler needs of a job: which role's workers may take it.
pub(crate) trait RoleJob: Clone {
    fn role(&self) -> Role;
    /// A background job (recompression) goes to a worker only when no other job it could take
    /// waits: the cycle's critical jobs, queued later, pass it.
    fn background(&self) -> bool {
        false
    }
}

impl RoleJob for Job {
    fn role(&self) -> Role {
        Job::role(self)
    }

    fn background(&self) -> bool {
        matches!(self, Job::Recompress(_))
    }
}

impl Job {
    pub fn role(&self) -> Role {
        match self {
            Job::Generate(_) | Job::Recalibrate(_) => Role::Generator,
            Job::Train(_) => Role::Trainer,
            // Recompression ends in evaluating the quantized copies: the evaluators' work.
            Job::Evaluate { .. } | Job::Judge(_) | Job::Recompress(_) => Role::Discriminator,
        }
    }

}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    Generate(GenerateResult),
    Train(TrainResult),
    Evaluate(Evaluation),
    Judge(JudgeResult),
    Recompress(RecompressResult),
}

/// What a worker needs to serve this run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunDescription {
    pub curriculum: Curriculum,
    /// The shared artifact store (a path every worker can read and write).
    pub artifacts: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub worker: String,
    pub roles: Vec<Role>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Lease {
    pub lease: u64,
    pub job: Job,
    pub ttl_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<JobResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Per worker and role, within one cycle: what the leases cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerCycleUsage {
    pub busy_seconds: f64,
    pub leases: u32,
    pub failures: u32,
}

struct PendingJob<J> {
    id: u64,
    /// When the job was first queued (a job handed out again keeps it).
    queued_at: Tick,
    /// The cycle the controller was in when it asked: whose usage the job's leases count to.
    cycle: u32,
    job: J,
}

/// Time on the control plane's clock: since it started serving (or, in a simulation, since the
/// simulated run began), so the same queue runs on real and on fast-forwarded time.
pub(crate) type Tick = Duration;

struct ActiveLease<J> {
    job_id: u64,
    queued_at: Tick,
    cycle: u32,
    job: J,
    worker: String,
    started: Tick,
    deadline: Tick,
}

/// The scheduler: jobs waiting, leases out, results in, usage counted. Every operation takes the
/// time it happens at; the HTTP handlers pass the wall clock, `simulate` a simulated one.
pub(crate) struct Queue<J = Job> {
    next_id: u64,
    pending: Vec<PendingJob<J>>,
    leases: HashMap<u64, ActiveLease<J>>,
    /// Jobs whose result arrived (job id → whether it was accepted), for idempotence.
    done: HashMap<u64, ()>,
    waiters: HashMap<u64, oneshot::Sender<Result<JobResult, String>>>,
    /// (cycle, worker, role) → usage.
    usage: BTreeMap<(u32, String, Role), WorkerCycleUsage>,
    /// Workers seen, with their last contact.
    workers: BTreeMap<String, Tick>,
    /// The roles each worker asked for, and the workers known dead (released by a launcher and
    /// not heard from since): a job whose role has no live worker left is anyone's at once.
    roles_of: BTreeMap<String, Vec<Role>>,
    dead: std::collections::BTreeSet<String>,
    lease_failures: u64,
    jobs_done: u64,
    finished: bool,
}

impl<J> Default for Queue<J> {
    fn default() -> Self {
        Queue {
            next_id: 0,
            pending: Vec::new(),
            leases: HashMap::new(),
            done: HashMap::new(),
            waiters: HashMap::new(),
            usage: BTreeMap::new(),
            workers: BTreeMap::new(),
            roles_of: BTreeMap::new(),
            dead: Default::default(),
            lease_failures: 0,
            jobs_done: 0,
            finished: false,
        }
    }
}

impl<J: RoleJob> Queue<J> {
    /// Queues `job` (counted to `cycle`) at `now`; returns its id.
    pub(crate) fn submit(&mut self, cycle: u32, job: J, now: Tick) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        tracing::debug!(job = id, cycle, role = job.role().as_str(), "job queued");
        self.pending.push(PendingJob { id, queued_at: now, cycle, job });
        id
    }

    /// The first waiting job of one of `roles`, or else the first that has waited [`FALLBACK`]
    /// for a worker of its role (they are all busy, or dead), as a new lease of `worker`.
    pub(crate) fn take(&mut self, worker: &str, roles: &[Role], now: Tick) -> Option<(u64, J)> {
        self.workers.insert(worker.to_string(), now);
        self.roles_of.insert(worker.to_string(), roles.to_vec());
        self.dead.remove(worker);
        // Its own role's jobs first, then anyone's that waited; background jobs after both.
        let own = |p: &PendingJob<J>| roles.contains(&p.job.role());
        let pick = |background: bool| {
            let of_kind = |p: &PendingJob<J>| p.job.background() == background;
            self.pending.iter().position(|p| of_kind(p) && own(p)).or_else(|| self.pending.iter().position(|p| of_kind(p) && self.anyones(p, now)))
        };
        let at = pick(false).or_else(|| pick(true))?;
        let pending = self.pending.remove(at);
        self.next_id += 1;
        let lease = self.next_id;
        let job = pending.job.clone();
        tracing::debug!(lease, job = pending.id, worker, role = pending.job.role().as_str(), waited_ms = now.saturating_sub(pending.queued_at).as_secs_f64() * 1e3, "lease granted");
        let active = ActiveLease { job_id: pending.id, queued_at: pending.queued_at, cycle: pending.cycle, job: pending.job, worker: worker.to_string(), started: now, deadline: now + LEASE_TTL };
        self.leases.insert(lease, active);
        Some((lease, job))
    }

    /// Whether a worker of `roles` could take a job now.
    pub(crate) fn has_pending_for(&self, roles: &[Role], now: Tick) -> bool {
        self.pending.iter().any(|p| roles.contains(&p.job.role()) || self.anyones(p, now))
    }

    /// A job any worker may take: it waited [`FALLBACK`], or every worker of its role seen so
    /// far is dead.
    fn anyones(&self, p: &PendingJob<J>, now: Tick) -> bool {
        let role = p.job.role();
        let mut serving = self.roles_of.iter().filter(|(_, roles)| roles.contains(&role)).peekable();
        now.saturating_sub(p.queued_at) >= FALLBACK || (serving.peek().is_some() && serving.all(|(w, _)| self.dead.contains(w)))
    }

    /// Extends `lease`; false when it expired (its job went back to the queue).
    pub(crate) fn beat(&mut self, lease: u64, now: Tick) -> bool {
        let Some(l) = self.leases.get_mut(&lease) else { return false };
        l.deadline = now + LEASE_TTL;
        let worker = l.worker.clone();
        self.workers.insert(worker, now);
        true
    }

    /// A result for `lease`: the id of its job if this is the job's first result (the one that
    /// counts); `None` for a duplicate or a lease that had expired.
    pub(crate) fn complete(&mut self, lease: u64, now: Tick) -> Option<u64> {
        let id = lease;
        let lease = self.leases.remove(&lease)?;
        tracing::debug!(lease = id, job = lease.job_id, worker = %lease.worker, role = lease.job.role().as_str(), busy_ms = now.saturating_sub(lease.started).as_secs_f64() * 1e3, "lease completed");
        let usage = self.usage.entry((lease.cycle, lease.worker.clone(), lease.job.role())).or_default();
        usage.busy_seconds += (now - lease.started).as_secs_f64();
        usage.leases += 1;
        if self.done.contains_key(&lease.job_id) {
            return None;
        }
        self.done.insert(lease.job_id, ());
        self.jobs_done += 1;
        // A lease that expired may have put a second copy of the job back: drop it.
        self.pending.retain(|p| p.id != lease.job_id);
        Some(lease.job_id)
    }

    /// Puts every expired lease's job back at the front of the queue; true if any was.
    pub(crate) fn reap(&mut self, now: Tick) -> bool {
        let expired: Vec<u64> = self.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(&id, _)| id).collect();
        for &id in &expired {
            let lease = self.leases.remove(&id).expect("listed above");
            let role = lease.job.role();
            let usage = self.usage.entry((lease.cycle, lease.worker.clone(), role)).or_default();
            usage.failures += 1;
            usage.busy_seconds += now.saturating_sub(lease.started).as_secs_f64();
            self.lease_failures += 1;
            tracing::warn!(lease = id, worker = %lease.worker, role = role.as_str(), "lease expired without a result: the job goes back to the queue");
            self.pending.insert(0, PendingJob { id: lease.job_id, queued_at: lease.queued_at, cycle: lease.cycle, job: lease.job });
        }
        !expired.is_empty()
    }

    /// Usage per (cycle, worker, role) of the leases that ended.
    pub(crate) fn usage(&self) -> &BTreeMap<(u32, String, Role), WorkerCycleUsage> {
        &self.usage
    }

    pub(crate) fn lease_failures(&self) -> u64 {
        self.lease_failures
    }

    /// `worker` is known dead: its leases expire now.
    pub(crate) fn release(&mut self, worker: &str, now: Tick) -> bool {
        self.dead.insert(worker.to_string());
        for lease in self.leases.values_mut().filter(|l| l.worker == worker) {
            lease.deadline = now;
        }
        // Jobs of a role whose last worker this was may now go to anyone: wake the polls.
        self.reap(now) || !self.pending.is_empty()
    }
}

/// Anyone who can reach a non-loopback port could take jobs and post results: it needs a token.
pub(crate) fn require_token(bind: SocketAddr, token: Option<&str>) -> Result<(), Error> {
    if !bind.ip().is_loopback() && token.is_none_or(str::is_empty) {
        return Err(Error::Invalid(format!(
            "--listen {bind}: the control plane only binds a non-loopback address with a token (--token or EVOLVE_TOKEN), so that only your workers can take jobs"
        )));
    }
    Ok(())
}

/// The control plane of one run.
pub struct ControlPlane {
    queue: Arc<Mutex<Queue>>,
    clock: Clock,
    cycle: std::sync::atomic::AtomicU32,
    wake: Arc<Notify>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

/// The wall clock as [`Tick`]s.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> Tick {
        self.0.elapsed()
    }
}

#[derive(Clone)]
struct Shared {
    queue: Arc<Mutex<Queue>>,
    clock: Clock,
    wake: Arc<Notify>,
    token: Option<String>,
    run: Arc<RunDescription>,
}

fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl ControlPlane {
    /// Binds `bind` (port 0: any free port) and serves until dropped. A non-loopback address
    /// needs a token: anyone who can reach the port could otherwise take jobs and post results.
    pub async fn serve(bind: SocketAddr, token: Option<String>, run: RunDescription) -> Result<ControlPlane, Error> {
        require_token(bind, token.as_deref())?;
        let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| Error::Invalid(format!("--listen {bind}: cannot bind: {e}")))?;
        let addr = listener.local_addr().map_err(|e| Error::Invalid(format!("--listen {bind}: {e}")))?;
        let queue = Arc::new(Mutex::new(Queue::default()));
        let wake = Arc::new(Notify::new());
        let clock = Clock(Instant::now());
        let shared = Shared { queue: queue.clone(), clock, wake: wake.clone(), token, run: Arc::new(run) };
        let app = Router::new()
            .route("/v1/run", get(run_description))
            .route("/v1/lease", post(take_lease))
            .route("/v1/lease/{id}/heartbeat", post(heartbeat))
            .route("/v1/lease/{id}/result", post(post_result))
            .route("/metrics", get(metrics))
            .with_state(shared);
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = served.await {
                tracing::error!("control plane stopped: {e}");
            }
        });
        // The reaper: expired leases go back to the queue and wake the long-polls.
        let (reap_queue, reap_wake) = (queue.clone(), wake.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_EVERY).await;
                let mut q = lock(&reap_queue);
                if q.finished {
                    break;
                }
                let now = clock.now();
                // A job that became anyone's since the last look wakes the polls once.
                let crossed = q.pending.iter().any(|p| (FALLBACK..FALLBACK + REAP_EVERY).contains(&now.saturating_sub(p.queued_at)));
                if q.reap(now) || crossed {
                    reap_wake.notify_waiters();
                }
            }
        });
        tracing::info!(%addr, "control plane listening");
        Ok(ControlPlane { queue, clock, cycle: Default::default(), wake, addr, shutdown: Some(shutdown) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The cycle whose usage the next jobs count to.
    pub fn set_cycle(&self, cycle: u32) {
        self.cycle.store(cycle, std::sync::atomic::Ordering::Relaxed);
    }

    /// Queues `job`; the receiver gets its result (or the worker's error) once one arrives.
    pub fn submit(&self, job: Job) -> oneshot::Receiver<Result<JobResult, String>> {
        let (tx, rx) = oneshot::channel();
        let cycle = self.cycle.load(std::sync::atomic::Ordering::Relaxed);
        {
            let mut q = lock(&self.queue);
            let id = q.submit(cycle, job, self.clock.now());
            q.waiters.insert(id, tx);
        }
        self.wake.notify_waiters();
        rx
    }

    /// Usage per (worker, role) in `cycle` so far, including leases still running.
    pub fn cycle_usage(&self, cycle: u32) -> BTreeMap<(String, Role), WorkerCycleUsage> {
        let q = lock(&self.queue);
        let mut out: BTreeMap<(String, Role), WorkerCycleUsage> =
            q.usage.iter().filter(|((c, _, _), _)| *c == cycle).map(|((_, w, r), u)| ((w.clone(), *r), u.clone())).collect();
        let now = self.clock.now();
        for lease in q.leases.values().filter(|l| l.cycle == cycle) {
            out.entry((lease.worker.clone(), lease.job.role())).or_default().busy_seconds += now.saturating_sub(lease.started).as_secs_f64();
        }
        out
    }

    /// The launcher saw `worker` die: its leases go back to the queue now instead of when they
    /// expire, each counted as a failure.
    pub fn release_worker(&self, worker: &str) {
        if lock(&self.queue).release(worker, self.clock.now()) {
            self.wake.notify_waiters();
        }
    }

    /// Workers that have asked for work so far.
    pub fn workers(&self) -> Vec<String> {
        lock(&self.queue).workers.keys().cloned().collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        lock(&self.queue).finished = true;
        self.wake.notify_waiters();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &shared.token else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token.as_str()) {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response())
    }
}

async fn run_description(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&shared, &headers) {
        return denied;
    }
    Json(shared.run.as_ref().clone()).into_response()
}

async fn take_lease(State(shared): State<Shared>, headers: HeaderMap, Json(request): Json<LeaseRequest>) -> Response {
    if let Err(denied) = authorized(&shared, &headers) {
        return denied;
    }
    let deadline = Instant::now() + LONG_POLL;
    loop {
        // Registered before looking, so a job queued in between still wakes this poll.
        let woken = shared.wake.notified();
        {
            let mut q = lock(&shared.queue);
            if q.finished {
                return (StatusCode::GONE, "the run is over").into_response();
            }
            if let Some((lease, job)) = q.take(&request.worker, &request.roles, shared.clock.now()) {
                return Json(Lease { lease, job, ttl_ms: LEASE_TTL.as_millis() as u64 }).into_response();
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, woken).await.is_err() {
            return StatusCode::NO_CONTENT.into_response();
        }
    }
}

async fn heartbeat(State(shared): State<Shared>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    if let Err(denied) = authorized(&shared, &headers) {
        return denied;
    }
    if lock(&shared.queue).beat(id, shared.clock.now()) {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::GONE, "lease expired; its job was handed out again").into_response()
    }
}

#[derive(Serialize)]
struct Accepted {
    accepted: bool,
}

async fn post_result(State(shared): State<Shared>, headers: HeaderMap, Path(id): Path<u64>, Json(outcome): Json<Outcome>) -> Response {
    if let Err(denied) = authorized(&shared, &headers) {
        return denied;
    }
    let mut q = lock(&shared.queue);
    // Unknown or expired: a duplicate, or a worker that lost its lease. Changes nothing.
    let Some(job_id) = q.complete(id, shared.clock.now()) else {
        return Json(Accepted { accepted: false }).into_response();
    };
    let result = match (outcome.ok, outcome.error) {
        (Some(ok), _) => Ok(ok),
        (None, Some(error)) => Err(error),
        (None, None) => Err("the worker posted neither a result nor an error".into()),
    };
    if let Some(waiter) = q.waiters.remove(&job_id) {
        let _ = waiter.send(result);
    }
    Json(Accepted { accepted: true }).into_response()
}

async fn metrics(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorized(&shared, &headers) {
        return denied;
    }
    let q = lock(&shared.queue);
    let mut busy: BTreeMap<(String, &'static str), f64> = BTreeMap::new();
    let mut leases: BTreeMap<(String, &'static str), u32> = BTreeMap::new();
    for ((_, worker, role), u) in &q.usage {
        *busy.entry((worker.clone(), role.as_str())).or_default() += u.busy_seconds;
        *leases.entry((worker.clone(), role.as_str())).or_default() += u.leases;
    }
    let mut text = String::new();
    text.push_str("# HELP evolve_jobs_pending Jobs waiting for a worker.\n# TYPE evolve_jobs_pending gauge\n");
    text.push_str(&format!("evolve_jobs_pending {}\n", q.pending.len()));
    text.push_str("# HELP evolve_leases_active Leases held by workers now.\n# TYPE evolve_leases_active gauge\n");
    text.push_str(&format!("evolve_leases_active {}\n", q.leases.len()));
    text.push_str("# HELP evolve_jobs_done_total Jobs whose result arrived.\n# TYPE evolve_jobs_done_total counter\n");
    text.push_str(&format!("evolve_jobs_done_total {}\n", q.jobs_done));
    text.push_str("# HELP evolve_lease_failures_total Leases that expired without a result.\n# TYPE evolve_lease_failures_total counter\n");
    text.push_str(&format!("evolve_lease_failures_total {}\n", q.lease_failures));
    text.push_str("# HELP evolve_worker_busy_seconds_total Seconds workers spent on leases.\n# TYPE evolve_worker_busy_seconds_total counter\n");
    for ((worker, role), seconds) in &busy {
        text.push_str(&format!("evolve_worker_busy_seconds_total{{worker=\"{worker}\",role=\"{role}\"}} {seconds:.3}\n"));
    }
    text.push_str("# HELP evolve_worker_leases_total Leases completed.\n# TYPE evolve_worker_leases_total counter\n");
    for ((worker, role), n) in &leases {
        text.push_str(&format!("evolve_worker_leases_total{{worker=\"{worker}\",role=\"{role}\"}} {n}\n"));
    }
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description() -> RunDescription {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../curricula/smoke.toml")).unwrap();
        RunDescription { curriculum: Curriculum::parse(&text, "smoke.toml").unwrap(), artifacts: "/tmp/artifacts".into() }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build())
    }

    /// Over a real socket: a worker leases the job, a duplicate result changes nothing, and the
    /// controller gets the first result.
    #[tokio::test(flavor = "multi_thread")]
    async fn results_are_idempotent_per_job() {
        let plane = ControlPlane::serve(SocketAddr::from(([127, 0, 0, 1], 0)), None, description()).await.unwrap();
        let url = plane.url();
        let waiting = plane.submit(Job::Evaluate { checkpoint: "abc".into() });
        let posted = tokio::task::spawn_blocking(move || {
            let agent = agent();
            let mut r = agent.post(format!("{url}/v1/lease")).send_json(LeaseRequest { worker: "w".into(), roles: vec![Role::Discriminator] }).unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let lease: Lease = r.body_mut().read_json().unwrap();
            assert!(matches!(&lease.job, Job::Evaluate { checkpoint } if checkpoint == "abc"));
            let post = |error: &str| {
                let mut r = agent.post(format!("{url}/v1/lease/{}/result", lease.lease)).send_json(Outcome { ok: None, error: Some(error.into()) }).unwrap();
                r.body_mut().read_json::<serde_json::Value>().unwrap()["accepted"].as_bool().unwrap()
            };
            (post("first"), post("second"))
        })
        .await
        .unwrap();
        assert_eq!(posted, (true, false));
        assert_eq!(waiting.await.unwrap().unwrap_err(), "first");
        assert_eq!(plane.cycle_usage(0)[&("w".to_string(), Role::Discriminator)].leases, 1);
    }

    /// A job goes to a worker of its role at once, and to a worker of another role only once it
    /// has waited [`FALLBACK`] (over the socket: the generator's long-poll is woken then). Once
    /// the run is over a lease request says 410, or finds the server gone.
    #[tokio::test(flavor = "multi_thread")]
    async fn leases_prefer_roles_and_a_finished_run_says_gone() {
        let plane = ControlPlane::serve(SocketAddr::from(([127, 0, 0, 1], 0)), None, description()).await.unwrap();
        let url = plane.url();
        let ask = |url: String, role: Role| {
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let status = agent().post(format!("{url}/v1/lease")).send_json(LeaseRequest { worker: "w".into(), roles: vec![role] }).map(|r| r.status().as_u16()).ok();
                (status, t.elapsed())
            })
        };
        let _waiting = plane.submit(Job::Evaluate { checkpoint: "abc".into() });
        let (status, took) = ask(url.clone(), Role::Discriminator).await.unwrap();
        assert_eq!(status, Some(200));
        assert!(took < FALLBACK, "{took:?}");
        let _waiting = plane.submit(Job::Evaluate { checkpoint: "def".into() });
        let (status, took) = ask(url.clone(), Role::Generator).await.unwrap();
        assert_eq!(status, Some(200));
        assert!(took >= FALLBACK - Duration::from_millis(50) && took < LONG_POLL, "{took:?}");
        drop(plane);
        let (after, _) = ask(url, Role::Generator).await.unwrap();
        assert!(matches!(after, Some(410) | None), "{after:?}");
    }

    #[test]
    fn a_job_goes_to_its_role_first_and_to_anyone_after_the_fallback() {
        let mut q: Queue = Queue::default();
        let t0 = Duration::from_secs(10);
        q.submit(0, Job::Evaluate { checkpoint: "a".into() }, t0);
        assert!(q.take("g", &[Role::Generator], t0 + FALLBACK / 2).is_none());
        assert!(!q.has_pending_for(&[Role::Generator], t0 + FALLBACK / 2));
        assert!(q.has_pending_for(&[Role::Discriminator], t0));
        assert!(q.take("g", &[Role::Generator], t0 + FALLBACK).is_some());
        // A job handed out again after its worker died keeps its first queueing time.
        let (lease, _) = {
            q.submit(0, Job::Evaluate { checkpoint: "b".into() }, t0);
            q.take("d", &[Role::Discriminator], t0).unwrap()
        };
        q.release("d", t0 + Duration::from_millis(100));
        assert!(q.leases.get(&lease).is_none());
        assert!(q.take("t", &[Role::Trainer], t0 + FALLBACK).is_some(), "the dead worker's job goes to the first free worker");
        // Once the only discriminator is known dead, a fresh job of its role is anyone's at once.
        let t1 = t0 + Duration::from_secs(60);
        q.submit(0, Job::Evaluate { checkpoint: "c".into() }, t1);
        assert!(q.take("g", &[Role::Generator], t1).is_some(), "no live discriminator: the generator takes it");
        // A discriminator asking again is alive: its role's jobs wait for it first again.
        assert!(q.take("d", &[Role::Discriminator], t1).is_none());
        q.submit(0, Job::Evaluate { checkpoint: "e".into() }, t1);
        assert!(q.take("g", &[Role::Generator], t1).is_none());
    }

    fn train_job() -> TrainJob {
        let train = evolve_trainer::TrainConfig {
            optimizer: evolve_trainer::OptimizerKind::Adamw,
            learning_rate: 1e-3,
            warmup_steps: 0,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            grad_clip: 1.0,
            surgery: evolve_trainer::Surgery::None,
            seed: 0,
        };
        TrainJob { cycle: 1, parent: None, examples: None, fresh_levels: Vec::new(), fresh_share: 0.0, steps: 1, consolidation_steps: 0, batch_size: 1, train, snapshot_every: 0, seed: 0 }
    }

    /// Recompression is background work: a critical job queued after it goes first, and it is
    /// taken only when nothing else a worker could take waits (also another role's job past
    /// the fallback).
    #[test]
    fn background_jobs_wait_for_every_critical_job() {
        let mut q: Queue = Queue::default();
        let t0 = Duration::from_secs(10);
        let recompress = RecompressJob { cycle: 1, checkpoint: "c".into(), parent: None, calibration_seed: 0, part: None };
        q.submit(1, Job::Recompress(recompress), t0);
        q.submit(1, Job::Evaluate { checkpoint: "a".into() }, t0 + Duration::from_millis(1));
        let first = q.take("d", &[Role::Discriminator], t0 + Duration::from_millis(2)).unwrap().1;
        assert!(matches!(first, Job::Evaluate { .. }), "the evaluation queued later goes first: {first:?}");
        // A trainer's job that waited past the fallback still beats the discriminator's own
        // background job.
        q.submit(1, Job::Train(train_job()), t0);
        let second = q.take("d", &[Role::Discriminator], t0 + FALLBACK).unwrap().1;
        assert!(matches!(second, Job::Train(_)), "{second:?}");
        let third = q.take("d", &[Role::Discriminator], t0 + FALLBACK).unwrap().1;
        assert!(matches!(third, Job::Recompress(_)), "then the background job: {third:?}");
        assert!(q.take("d", &[Role::Discriminator], t0 + FALLBACK).is_none());
    }

    #[tokio::test]
    async fn a_public_address_needs_a_token_and_requests_must_carry_it() {
        let refused = ControlPlane::serve(SocketAddr::from(([0, 0, 0, 0], 0)), None, description()).await.err().unwrap().to_string();
        assert!(refused.contains("token"), "{refused}");
        let plane = ControlPlane::serve(SocketAddr::from(([127, 0, 0, 1], 0)), Some("s3cret".into()), description()).await.unwrap();
        let url = plane.url();
        let (without, with) = tokio::task::spawn_blocking(move || {
            let agent = agent();
            let without = agent.get(format!("{url}/metrics")).call().unwrap().status().as_u16();
            let with = agent.get(format!("{url}/metrics")).header("authorization", "Bearer s3cret").call().unwrap().status().as_u16();
            (without, with)
        })
        .await
        .unwrap();
        assert_eq!((without, with), (401, 200));
    }

    #[test]
    fn an_expired_lease_puts_its_job_back_and_counts_a_failure() {
        let mut q = Queue::default();
        let now = Duration::from_secs(100);
        let job = Job::Evaluate { checkpoint: "abc".into() };
        q.leases.insert(7, ActiveLease { job_id: 1, queued_at: now, cycle: 0, job, worker: "w1".into(), started: now, deadline: now + Duration::from_secs(1) });
        q.reap(now);
        assert!(q.pending.is_empty(), "not yet expired");
        q.reap(now + Duration::from_secs(2));
        assert_eq!(q.pending.len(), 1);
        assert_eq!(q.pending[0].id, 1);
        assert!(q.leases.is_empty());
        assert_eq!(q.lease_failures, 1);
        assert_eq!(q.usage[&(0, "w1".to_string(), Role::Discriminator)].failures, 1);
    }
}
