//! `evolve start --simulate`: the scheduling of a run on a budget this machine does not have,
//! measured on a fast-forwarded clock. The control plane's own scheduler ([`Queue`]: jobs,
//! leases, heartbeats, expiry, idempotent results, usage per worker and role) runs unchanged;
//! around it, the controller's calls of a run come in the order `run` makes them, each stage's
//! jobs submitted together (pretrain, base evaluation, the judge's bootstrap; per cycle:
//! generate, train the judge, train, every snapshot's evaluation at once, the three quantized
//! copies' evaluations at once), and one simulated worker
//! per device of the plan takes leases of its roles and holds each for the time the catalogue's
//! throughput gives the job's FLOPs (at [`MFU`]).
//!
//! What is modelled and what is measured:
//! - Each HTTP exchange between a worker and the control plane costs [`NETWORK_ONE_WAY`] each
//!   way (a LAN hop); the scheduler's own work is measured, not modelled: every queue operation
//!   is timed on the real clock and that time is added to the simulated one.
//! - A worker that dies (`death_window`: every worker once, at a seeded random moment) loses its
//!   lease's work; its launcher sees the death after [`LAUNCHER_NOTICES`] and hands the lease
//!   out again at once (as `Pool` does), and the worker is back after [`RESTART`].
//! - Scheduling overhead is the wall time beyond the run's critical path:
//!   `1 - Σ over stages of the longest job's duration / wall`, since the controller waits for a
//!   stage's last result before it submits the next. What remains is the scheduling path (and,
//!   with deaths, the work they cost and the wait for a replacement).
//!
//! The gate's verdicts are not simulated: every cycle is taken as accepted, the most expensive
//! path (it adds the quantized copies' evaluations).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use evolve_curriculum::Curriculum;
use evolve_model::LlamaConfig;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::budget::Budget;
use crate::control::{HEARTBEAT, Queue, RoleJob, Tick};
use crate::plan::{MFU, Plan, Role};

/// One way of an HTTP exchange between a worker and the control plane.
pub const NETWORK_ONE_WAY: Duration = Duration::from_micros(250);
/// How long a launcher takes to see that its worker died (the Slurm watcher's interval; the
/// local supervisor looks every 0.3 s).
pub const LAUNCHER_NOTICES: Duration = Duration::from_secs(1);
/// From a worker's death to its replacement asking for work (process start, model load).
pub const RESTART: Duration = Duration::from_secs(10);

pub struct SimulateOptions {
    pub budget: Budget,
    pub cycles: u32,
    pub seed: u64,
    /// Every worker dies once, at a random moment in the first this many simulated seconds;
    /// `None`: no worker dies.
    pub death_window: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RoleShare {
    pub workers: u32,
    pub busy_seconds: f64,
    /// Busy seconds over (workers × wall).
    pub busy_share: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SimulationReport {
    pub budget: String,
    pub devices: u32,
    pub cycles: u32,
    /// Every worker died once within this many simulated seconds, if set.
    pub death_window: Option<f64>,
    pub jobs: u64,
    /// Simulated seconds from the first job to the last result.
    pub wall_seconds: f64,
    /// The critical path: Σ over stages of the longest job's duration.
    pub work_seconds: f64,
    pub scheduling_overhead: f64,
    pub roles: BTreeMap<String, RoleShare>,
    /// All workers: busy seconds over (devices × wall).
    pub busy_share: f64,
    pub leases: u64,
    pub lease_failures: u64,
    pub heartbeats: u64,
    pub deaths: u64,
    /// Real seconds the scheduler's operations took (already inside `wall_seconds`).
    pub scheduler_cpu_seconds: f64,
    /// Real seconds the whole simulation took.
    pub real_seconds: f64,
}

/// A simulated job: the role whose workers take it and how long it computes on one device.
#[derive(Clone, Debug)]
struct SimulatedJob {
    role: Role,
    cycle: u32,
    seconds: f64,
}

impl RoleJob for SimulatedJob {
    fn role(&self) -> Role {
        self.role
    }
}

/// The controller's calls of a run, in stages (a stage's jobs are submitted together and all
/// awaited), each job with the seconds it computes for on one device of the budget.
fn run_stages(plan: &Plan, model: &LlamaConfig, curriculum: &Curriculum, flops_per_second: f64, cycles: u32) -> Vec<Vec<SimulatedJob>> {
    let seq = model.max_position_embeddings as f64;
    let p = model.num_params() as f64;
    let c = &curriculum.cycle;
    let snapshots = if c.snapshot_every == 0 { 1 } else { c.train_steps.div_ceil(c.snapshot_every) };
    let evaluations = snapshots + 3;
    let evaluate = plan.work.discriminator_flops / evaluations as f64 / flops_per_second;
    let generate = plan.work.generator_flops / flops_per_second;
    let train = plan.work.trainer_flops / flops_per_second;
    let pretrain = 6.0 * p * seq * (curriculum.pretrain.batch_size * curriculum.pretrain.steps) as f64 / flops_per_second;
    // The learned judge: 2 layers at d=64 over bytes, about 0.1M parameters, batches of 32.
    let judge = 6.0 * 1e5 * seq * 32.0 * curriculum.discriminator.train_steps as f64 / flops_per_second;
    let job = |role: Role, cycle: u32, seconds: f64| SimulatedJob { role, cycle, seconds };
    let (g, d, t) = (Role::Generator, Role::Discriminator, Role::Trainer);
    let mut stages = vec![vec![job(t, 0, pretrain)], vec![job(d, 0, evaluate)], vec![job(g, 0, generate)], vec![job(d, 0, judge)]];
    for cycle in 1..=cycles {
        stages.extend([vec![job(g, cycle, generate)], vec![job(d, cycle, judge)], vec![job(t, cycle, train)]]);
        stages.push((0..snapshots).map(|_| job(d, cycle, evaluate)).collect());
        stages.push((0..3).map(|_| job(d, cycle, evaluate)).collect());
    }
    stages
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A worker's lease request reaches the control plane.
    Ask { worker: usize, life: u32 },
    /// The worker's heart beats for its lease.
    Beat { worker: usize, life: u32, lease: u64 },
    /// The worker's result reaches the control plane.
    Post { worker: usize, life: u32, lease: u64 },
    Dies { worker: usize, life: u32 },
    Noticed { worker: usize },
    Back { worker: usize },
}

struct Worker {
    name: String,
    roles: Vec<Role>,
    /// Bumped at each death, so the dead life's events are ignored.
    life: u32,
    alive: bool,
    /// Waiting in a long-poll.
    polling: bool,
}

/// Runs the simulation. The returned report is what `--simulate` prints.
pub fn simulate(options: &SimulateOptions, plan: &Plan, model: &LlamaConfig, curriculum: &Curriculum) -> SimulationReport {
    let real = Instant::now();
    let flops_per_second = options.budget.model.bf16_tflops * 1e12 * MFU;
    let stages = run_stages(plan, model, curriculum, flops_per_second, options.cycles);
    let jobs: usize = stages.iter().map(Vec::len).sum();
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let mut workers: Vec<Worker> =
        plan.placements.iter().map(|p| Worker { name: format!("w{}", p.device), roles: p.roles.clone(), life: 0, alive: true, polling: false }).collect();

    let mut queue: Queue<SimulatedJob> = Queue::default();
    let mut scheduler = Duration::ZERO;
    // Every queue operation runs on the real clock and its time joins the simulated one.
    macro_rules! timed {
        ($now:ident, $op:expr) => {{
            let t = Instant::now();
            let out = $op;
            let took = t.elapsed();
            scheduler += took;
            $now += took;
            out
        }};
    }
    let mut events: BinaryHeap<Reverse<(Tick, u64, Event)>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut push = |events: &mut BinaryHeap<Reverse<(Tick, u64, Event)>>, at: Tick, e: Event| {
        order += 1;
        events.push(Reverse((at, order, e)));
    };
    let mut now = Tick::ZERO;
    for (i, w) in workers.iter().enumerate() {
        push(&mut events, now + NETWORK_ONE_WAY, Event::Ask { worker: i, life: 0 });
        if let Some(window) = options.death_window {
            push(&mut events, Duration::from_secs_f64(rng.random::<f64>() * window), Event::Dies { worker: i, life: w.life });
        }
    }
    // The controller: one stage at a time, all of its jobs queued at once.
    let mut next_stage = 0usize;
    let (mut work, mut heartbeats, mut deaths, mut leases) = (0.0f64, 0u64, 0u64, 0u64);
    // The jobs of the stage the controller waits for (id → seconds).
    let submit_next = |queue: &mut Queue<SimulatedJob>, next_stage: &mut usize, now: &mut Tick, scheduler: &mut Duration| -> BTreeMap<u64, f64> {
        let Some(stage) = stages.get(*next_stage) else { return BTreeMap::new() };
        *next_stage += 1;
        let t = Instant::now();
        let ids = stage.iter().map(|job| (queue.submit(job.cycle, job.clone()), job.seconds)).collect();
        *scheduler += t.elapsed();
        *now += t.elapsed();
        ids
    };
    let mut in_flight = submit_next(&mut queue, &mut next_stage, &mut now, &mut scheduler);
    let mut stage_longest = 0.0f64;
    while let Some(Reverse((at, _, event))) = events.pop() {
        if in_flight.is_empty() {
            break;
        }
        now = now.max(at);
        match event {
            Event::Ask { worker, life } if workers[worker].alive && workers[worker].life == life => {
                let w = &workers[worker];
                match timed!(now, queue.take(&w.name, &w.roles, now)) {
                    Some((lease, job)) => {
                        leases += 1;
                        workers[worker].polling = false;
                        let done = now + NETWORK_ONE_WAY + Duration::from_secs_f64(job.seconds);
                        push(&mut events, done + NETWORK_ONE_WAY, Event::Post { worker, life, lease });
                        push(&mut events, now + NETWORK_ONE_WAY + HEARTBEAT, Event::Beat { worker, life, lease });
                    }
                    None => workers[worker].polling = true,
                }
            }
            Event::Beat { worker, life, lease } if workers[worker].alive && workers[worker].life == life => {
                heartbeats += 1;
                if timed!(now, queue.beat(lease, now)) {
                    push(&mut events, now + HEARTBEAT, Event::Beat { worker, life, lease });
                }
            }
            Event::Post { worker, life, lease } if workers[worker].alive && workers[worker].life == life => {
                if let Some(job_id) = timed!(now, queue.complete(lease, now))
                    && let Some(seconds) = in_flight.remove(&job_id)
                {
                    stage_longest = stage_longest.max(seconds);
                    if in_flight.is_empty() {
                        work += stage_longest;
                        stage_longest = 0.0;
                        // The controller's next stage.
                        in_flight = submit_next(&mut queue, &mut next_stage, &mut now, &mut scheduler);
                    }
                }
                // The worker's next long-poll arrives after the post's answer went back; its heart
                // stops (the Beat events of this lease find no lease and end).
                push(&mut events, now + 2 * NETWORK_ONE_WAY, Event::Ask { worker, life });
            }
            Event::Dies { worker, life } if workers[worker].alive && workers[worker].life == life => {
                deaths += 1;
                let w = &mut workers[worker];
                w.alive = false;
                w.polling = false;
                w.life += 1;
                push(&mut events, now + LAUNCHER_NOTICES, Event::Noticed { worker });
                push(&mut events, now + RESTART, Event::Back { worker });
            }
            Event::Noticed { worker } => {
                timed!(now, queue.release(&workers[worker].name, now));
            }
            Event::Back { worker } => {
                let w = &mut workers[worker];
                w.alive = true;
                push(&mut events, now + NETWORK_ONE_WAY, Event::Ask { worker, life: w.life });
            }
            _ => {} // an event of a life that has ended
        }
        // A long-poll waiting at the control plane while a job is queued is answered at once
        // (its request is already there; the lease then takes one hop to the worker).
        if queue.has_pending() {
            for (i, w) in workers.iter_mut().enumerate().filter(|(_, w)| w.alive && w.polling) {
                w.polling = false;
                push(&mut events, now, Event::Ask { worker: i, life: w.life });
            }
        }
    }
    let wall = now.as_secs_f64();
    let mut roles: BTreeMap<String, RoleShare> = BTreeMap::new();
    for w in &workers {
        for r in &w.roles {
            roles.entry(r.as_str().to_string()).or_default().workers += 1;
        }
    }
    let mut busy_total = 0.0;
    for ((_, _, role), u) in queue.usage() {
        roles.entry(role.as_str().to_string()).or_default().busy_seconds += u.busy_seconds;
        busy_total += u.busy_seconds;
    }
    for share in roles.values_mut() {
        share.busy_share = share.busy_seconds / (share.workers.max(1) as f64 * wall.max(f64::MIN_POSITIVE));
    }
    SimulationReport {
        budget: options.budget.spec.clone(),
        devices: workers.len() as u32,
        cycles: options.cycles,
        death_window: options.death_window,
        jobs: jobs as u64,
        wall_seconds: wall,
        work_seconds: work,
        scheduling_overhead: if wall > 0.0 { 1.0 - work / wall } else { 0.0 },
        roles,
        busy_share: busy_total / (workers.len().max(1) as f64 * wall.max(f64::MIN_POSITIVE)),
        leases,
        lease_failures: queue.lease_failures(),
        heartbeats,
        deaths,
        scheduler_cpu_seconds: scheduler.as_secs_f64(),
        real_seconds: real.elapsed().as_secs_f64(),
    }
}

impl SimulationReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let deaths = match self.death_window {
            Some(w) => format!("every worker dying once in the first {w:.3} s"),
            None => "no worker dying".into(),
        };
        let _ = writeln!(out, "simulated --budget {}: {} cycles, {} jobs (the controller's calls, stage by stage), {deaths}", self.budget, self.cycles, self.jobs);
        let _ = writeln!(out, "  wall {:.3} s simulated (in {:.2} s real), critical path {:.3} s", self.wall_seconds, self.real_seconds, self.work_seconds);
        let _ = writeln!(out, "  scheduling overhead {:.3}% of wall time (scheduler code {:.1} ms of it)", 100.0 * self.scheduling_overhead, 1e3 * self.scheduler_cpu_seconds);
        let _ = writeln!(out, "  busy share {:.1}% of {} workers", 100.0 * self.busy_share, self.devices);
        for (role, r) in &self.roles {
            let _ = writeln!(out, "    {:<13} {:>3} workers  busy {:>10.3} s  {:>5.1}%", role, r.workers, r.busy_seconds, 100.0 * r.busy_share);
        }
        let _ = writeln!(out, "  leases {}  expired or released {}  heartbeats {}  worker deaths {}", self.leases, self.lease_failures, self.heartbeats, self.deaths);
        out
    }
}

/// `evolve start --simulate`: the plan's budget simulated twice on `curriculum_path`, calm and
/// with every worker dying once at a random moment of the calm run's wall time.
pub fn simulate_budget(budget: &Budget, curriculum_path: &std::path::Path, cycles: Option<u32>) -> Result<(SimulationReport, SimulationReport), crate::Error> {
    let plan = crate::plan::plan_for(budget, curriculum_path)?;
    let curriculum = Curriculum::load(curriculum_path)?;
    let model = evolve_model::preset(&curriculum.preset).expect("plan_for checked the preset")?;
    let cycles = cycles.unwrap_or(curriculum.cycle.max_cycles);
    let mut options = SimulateOptions { budget: budget.clone(), cycles, seed: curriculum.seed, death_window: None };
    // The queue's warnings (a lease expired) are the simulated workers' deaths: not news.
    let quiet = |options: &SimulateOptions| tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || simulate(options, &plan, &model, &curriculum));
    let calm = quiet(&options);
    options.death_window = Some(calm.wall_seconds);
    let faulty = quiet(&options);
    Ok((calm, faulty))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(spec: &str) -> (Budget, Plan, LlamaConfig, Curriculum) {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../curricula/smoke.toml"));
        let budget = Budget::parse(spec).unwrap();
        let plan = crate::plan::plan_for(&budget, path).unwrap();
        let curriculum = Curriculum::load(path).unwrap();
        let model = evolve_model::preset(&curriculum.preset).unwrap().unwrap();
        (budget, plan, model, curriculum)
    }

    /// Every job of the run completes once, the work adds up to the jobs' durations, and the
    /// wall time is the work plus the scheduling path.
    #[test]
    fn a_calm_pool_runs_every_job_once() {
        let (budget, plan, model, curriculum) = setup("40xRTX4090");
        let options = SimulateOptions { budget, cycles: 3, seed: 1, death_window: None };
        let report = simulate(&options, &plan, &model, &curriculum);
        let flops = options.budget.model.bf16_tflops * 1e12 * MFU;
        let stages = run_stages(&plan, &model, &curriculum, flops, 3);
        let expected: f64 = stages.iter().map(|s| s.iter().map(|j| j.seconds).fold(0.0, f64::max)).sum();
        assert_eq!(report.jobs, stages.iter().map(Vec::len).sum::<usize>() as u64);
        assert_eq!(report.leases, report.jobs);
        assert_eq!((report.lease_failures, report.deaths), (0, 0));
        assert!((report.work_seconds - expected).abs() < 1e-9 * expected, "{report:?}");
        // Each stage waits two network hops for its lease and one for its result, at least.
        let hops = 2.0 * NETWORK_ONE_WAY.as_secs_f64() * stages.len() as f64;
        assert!(report.wall_seconds >= expected + hops, "{report:?}");
        assert_eq!(report.devices, 40);
        assert!((0.0..1.0).contains(&report.scheduling_overhead));
    }

    /// Dying workers cost leases, which are handed out again; the run still completes every job.
    #[test]
    fn dying_workers_cost_leases_but_no_job() {
        let (budget, plan, model, curriculum) = setup("4xRTX4090");
        let calm = simulate(&SimulateOptions { budget: budget.clone(), cycles: 4, seed: 3, death_window: None }, &plan, &model, &curriculum);
        let faulty = simulate(&SimulateOptions { budget, cycles: 4, seed: 3, death_window: Some(calm.wall_seconds) }, &plan, &model, &curriculum);
        assert_eq!(faulty.deaths, 4, "{faulty:?}");
        assert_eq!(faulty.jobs, calm.jobs);
        assert!((faulty.work_seconds - calm.work_seconds).abs() < 1e-9 * calm.work_seconds, "every job's result counted once");
        assert!(faulty.wall_seconds > calm.wall_seconds);
        assert!(faulty.leases >= faulty.jobs && faulty.leases - faulty.jobs == faulty.lease_failures, "{faulty:?}");
    }
}
