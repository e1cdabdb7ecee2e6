//! `evolve start --simulate`: the scheduling of a run on a budget this machine does not have,
//! measured on a fast-forwarded clock. The control plane's own scheduler ([`Queue`]: jobs,
//! leases, heartbeats, expiry, idempotent results, usage per worker and role) runs unchanged;
//! around it, the controller submits and awaits the jobs of a run as `run` does in a pool (the
//! base: pretrain, evaluate, recompress, the judge's bootstrap; per cycle: generate; the judge
//! and every candidate's training at once (unless a skill is judge-decided: then the judge
//! first); every snapshot's evaluation at once; the previous accepted cycle's recompression
//! running from the cycle's start to its commit; the next cycle's recalibration queued once the
//! gate accepts, before that commit), and one simulated worker
//! per device of the plan takes leases of its roles and holds each for the time the catalogue's
//! throughput gives the job's FLOPs (at [`MFU`]), or its kernel launches one after another
//! when those take longer (`CycleWork::seconds`: a small model on a big GPU is launch-bound).
//!
//! What is modelled and what is measured:
//! - Each HTTP exchange between a worker and the control plane costs [`NETWORK_ONE_WAY`] each
//!   way (a LAN hop); the scheduler's own work is measured, not modelled: every queue operation
//!   is timed on the real clock and that time is added to the simulated one.
//! - A worker that dies (`death_window`: one death per ten workers, at least one, each at a
//!   seeded random moment, striking a worker that holds a lease if any does) loses its
//!   lease's work; its launcher sees the death after [`LAUNCHER_NOTICES`] and hands the lease
//!   out again at once (as `Pool` does), and the worker is back after [`RESTART`].
//! - Scheduling overhead is the wall time beyond the same run on an ideal control plane (no
//!   network, a scheduler that costs nothing, no deaths): `1 - ideal / wall`. With deaths it
//!   includes the work they cost and the wait for a replacement.
//!
//! The gate's verdicts are not simulated: every cycle is taken as accepted, the most expensive
//! path (it adds the quantized copies' evaluations).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use evolve_curriculum::Curriculum;
use evolve_model::LlamaConfig;
use rand::{Rng, SeedableRng, seq::IndexedRandom};
use serde::Serialize;

use crate::budget::Budget;
use crate::control::{FALLBACK, HEARTBEAT, Queue, RoleJob, Tick};
use crate::plan::{LAUNCH_SECONDS, MFU, Plan, Role, train_step_launches};
use evolve_trainer::Surgery;

/// One way of an HTTP exchange between a worker and the control plane.
pub const NETWORK_ONE_WAY: Duration = Duration::from_micros(250);
/// How long a launcher takes to see that its worker died (the Slurm watcher's interval; the
/// local supervisor looks every 0.3 s).
pub const LAUNCHER_NOTICES: Duration = Duration::from_secs(1);
/// From a worker's death to its replacement asking for work (process start, model load).
pub const RESTART: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct SimulateOptions {
    pub budget: Budget,
    pub cycles: u32,
    pub seed: u64,
    /// One death per ten workers (at least one), each at a random moment in the first this many
    /// simulated seconds, of a random worker holding a lease (any worker if none does); `None`:
    /// no worker dies.
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
    /// The same run's wall time on an ideal control plane (no network, a free scheduler, no
    /// deaths): the run's critical path.
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
    background: bool,
}

impl RoleJob for SimulatedJob {
    fn role(&self) -> Role {
        self.role
    }

    fn background(&self) -> bool {
        self.background
    }
}

/// What the simulated controller does next: queue a job (by its index in the run's job list),
/// or wait for the results of the listed jobs.
#[derive(Clone, Debug)]
enum Action {
    Submit(usize),
    Await(Vec<usize>),
    /// Each `(training, evaluations)`: the evaluations are queued when the training is done;
    /// over when every evaluation is.
    Chain(Vec<(usize, Vec<usize>)>),
}

/// The jobs of a run on one device of the budget each, and the controller's script over them.
fn run_script(plan: &Plan, model: &LlamaConfig, curriculum: &Curriculum, flops_per_second: f64, cycles: u32) -> (Vec<SimulatedJob>, Vec<Action>) {
    let seq = model.max_position_embeddings as f64;
    let p = model.num_params() as f64;
    let c = &curriculum.cycle;
    let snapshots = if c.snapshot_every == 0 { 1 } else { c.train_steps.div_ceil(c.snapshot_every) };
    let candidates = c.candidates.get();
    let work = &plan.work;
    let evaluate = work.seconds(Role::Discriminator, flops_per_second) / (snapshots * candidates + 3) as f64;
    let generate = work.seconds(Role::Generator, flops_per_second);
    // The plan's trainer work covers every candidate.
    let train = work.seconds(Role::Trainer, flops_per_second) / candidates as f64;
    // A training job of `steps`, each of `flops` and `launches` (see `CycleWork::seconds`).
    let training = |flops: f64, launches: f64, steps: usize| steps as f64 * (flops / flops_per_second).max(launches * LAUNCH_SECONDS);
    let pretrain = training(6.0 * p * seq * curriculum.pretrain.batch_size as f64, train_step_launches(model, Surgery::None), curriculum.pretrain.steps);
    // The learned judge: 2 layers at d=64 over bytes, about 0.1M parameters, batches of 32.
    let judge_model = LlamaConfig { num_hidden_layers: 2, ..model.clone() };
    let judge = training(6.0 * 1e5 * seq * 32.0, train_step_launches(&judge_model, Surgery::None), curriculum.discriminator.train_steps);
    // Recompression's FLOPs are its three quantized copies' evaluations, one part each (the
    // lossless part's coding is not counted).
    let recompress = vec![(Role::Discriminator, evaluate); 3];
    // Recalibration samples the pool again: the synthesis share of a generation's sequences.
    let sampled = (c.mutations_per_failure * c.samples_k) as f64;
    let recalibrate = generate * sampled / (1.0 + sampled);
    let (g, d, t) = (Role::Generator, Role::Discriminator, Role::Trainer);
    let mut jobs: Vec<SimulatedJob> = Vec::new();
    let mut script = Vec::new();
    let stage = |jobs: &mut Vec<SimulatedJob>, script: &mut Vec<Action>, cycle: u32, specs: &[(Role, f64)]| -> Vec<usize> {
        let ids: Vec<usize> = specs.iter().map(|&(role, seconds)| {
            jobs.push(SimulatedJob { role, cycle, seconds, background: false });
            jobs.len() - 1
        }).collect();
        script.extend(ids.iter().map(|&i| Action::Submit(i)));
        ids
    };
    // The base: its candidates pretrain at once, all are evaluated, then the judge's first data
    // and training; its recompression runs during cycle 1, like every accepted cycle's.
    let bases: Vec<(Role, f64)> = (0..curriculum.pretrain.candidates.get()).map(|_| (t, pretrain)).collect();
    let base_evaluations: Vec<(Role, f64)> = (0..bases.len()).map(|_| (d, evaluate)).collect();
    for specs in [bases, base_evaluations, vec![(g, generate)], vec![(d, judge)]] {
        let ids = stage(&mut jobs, &mut script, 0, &specs);
        script.push(Action::Await(ids));
    }
    let overlap_judge = curriculum.unverifiable().is_empty();
    // Cycle 1's generation is made at its start; each later one while the cycle before trains.
    let mut generation = stage(&mut jobs, &mut script, 1, &[(g, generate)]);
    let mut recalibration = Vec::new();
    for cycle in 1..=cycles {
        script.push(Action::Await(generation.clone()));
        // Made against the previous cycle's parent; recalibrated on its child (every cycle is
        // taken as accepted), queued when the previous cycle's gate accepted.
        script.push(Action::Await(std::mem::take(&mut recalibration)));
        if !overlap_judge {
            let ids = stage(&mut jobs, &mut script, cycle, &[(d, judge)]);
            script.push(Action::Await(ids));
        }
        let trainings = stage(&mut jobs, &mut script, cycle, &vec![(t, train); candidates]);
        let judging = if overlap_judge { stage(&mut jobs, &mut script, cycle, &[(d, judge)]) } else { Vec::new() };
        if cycle < cycles {
            generation = stage(&mut jobs, &mut script, cycle + 1, &[(g, generate)]);
        }
        // The previous accepted cycle's recompression, queued behind the cycle's critical jobs.
        let recompressing = stage(&mut jobs, &mut script, cycle, &recompress);
        for &i in &recompressing {
            jobs[i].background = true;
        }
        let chains = trainings
            .into_iter()
            .map(|training| {
                let evaluations: Vec<usize> = (0..snapshots).map(|_| {
                    jobs.push(SimulatedJob { role: d, cycle, seconds: evaluate, background: false });
                    jobs.len() - 1
                }).collect();
                (training, evaluations)
            })
            .collect();
        script.push(Action::Chain(chains));
        script.push(Action::Await(judging));
        if cycle < cycles {
            // `Controller::recalibrate_early`: the next batch is recalibrated on this cycle's
            // child while the commit waits for the previous cycle's recompression.
            script.push(Action::Await(generation.clone()));
            recalibration = stage(&mut jobs, &mut script, cycle + 1, &[(g, recalibrate)]);
        }
        script.push(Action::Await(recompressing));
    }
    let ids = stage(&mut jobs, &mut script, cycles, &recompress);
    for &i in &ids {
        jobs[i].background = true;
    }
    script.push(Action::Await(ids));
    (jobs, script)
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
    /// A queued job may have become anyone's: polls are looked at again.
    Fallback,
    /// A worker dies: one holding a lease, if any does.
    Strike,
}

struct Worker {
    name: String,
    roles: Vec<Role>,
    /// Bumped at each death, so the dead life's events are ignored.
    life: u32,
    alive: bool,
    /// Waiting in a long-poll.
    polling: bool,
    /// Holding a lease.
    busy: bool,
}

/// Runs the simulation. The returned report is what `--simulate` prints.
pub fn simulate(options: &SimulateOptions, plan: &Plan, model: &LlamaConfig, curriculum: &Curriculum) -> SimulationReport {
    let real = Instant::now();
    let flops_per_second = options.budget.model.bf16_tflops * 1e12 * MFU;
    let (jobs, script) = run_script(plan, model, curriculum, flops_per_second, options.cycles);
    let ideal = Clock { network: Duration::ZERO, measure: false };
    let ideal = run(&SimulateOptions { death_window: None, ..options.clone() }, plan, &jobs, &script, ideal).wall_seconds;
    let mut report = run(options, plan, &jobs, &script, Clock { network: NETWORK_ONE_WAY, measure: true });
    report.work_seconds = ideal;
    report.scheduling_overhead = if report.wall_seconds > 0.0 { 1.0 - ideal / report.wall_seconds } else { 0.0 };
    report.real_seconds = real.elapsed().as_secs_f64();
    report
}

/// The simulated control plane's physics: one way of an exchange, and whether the scheduler's
/// real time joins the simulated clock.
#[derive(Clone, Copy)]
struct Clock {
    network: Duration,
    measure: bool,
}

fn run(options: &SimulateOptions, plan: &Plan, jobs: &[SimulatedJob], script: &[Action], clock: Clock) -> SimulationReport {
    let hop = clock.network;
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let mut workers: Vec<Worker> =
        plan.placements.iter().map(|p| Worker { name: format!("w{}", p.device), roles: p.roles.clone(), life: 0, alive: true, polling: false, busy: false }).collect();

    let mut queue: Queue<SimulatedJob> = Queue::default();
    let mut scheduler = Duration::ZERO;
    // Every queue operation runs on the real clock and its time joins the simulated one.
    macro_rules! timed {
        ($now:ident, $op:expr) => {{
            let t = Instant::now();
            let out = $op;
            if clock.measure {
                let took = t.elapsed();
                scheduler += took;
                $now += took;
            }
            out
        }};
    }
    let mut events: BinaryHeap<Reverse<(Tick, u64, Event)>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut push = |events: &mut BinaryHeap<Reverse<(Tick, u64, Event)>>, at: Tick, e: Event| {
        order += 1;
        events.push(Reverse((at, order, e)));
    };
    let now_start = Tick::ZERO;
    for i in 0..workers.len() {
        push(&mut events, now_start + hop, Event::Ask { worker: i, life: 0 });
    }
    if let Some(window) = options.death_window {
        for _ in 0..workers.len().div_ceil(10) {
            push(&mut events, Duration::from_secs_f64(rng.random::<f64>() * window), Event::Strike);
        }
    }
    let mut now = now_start;
    let (mut heartbeats, mut deaths, mut leases) = (0u64, 0u64, 0u64);
    // The controller: `script` up to the first wait that is not over. Queue id → job index.
    let mut at = 0usize;
    let mut submitted: BTreeMap<u64, usize> = BTreeMap::new();
    let mut done = vec![false; jobs.len()];
    // Evaluations a `Chain` has queued.
    let mut chained = vec![false; jobs.len()];
    while at < script.len() {
        // The controller's turn: everything up to a wait whose jobs are not all done.
        while let Some(action) = script.get(at) {
            match action {
                Action::Submit(i) => {
                    let id = timed!(now, queue.submit(jobs[*i].cycle, jobs[*i].clone(), now));
                    submitted.insert(id, *i);
                    push(&mut events, now + FALLBACK, Event::Fallback);
                }
                Action::Await(ids) if ids.iter().all(|&i| done[i]) => {}
                Action::Await(_) => break,
                Action::Chain(chains) => {
                    let ready: Vec<&Vec<usize>> = chains.iter().filter(|(t, e)| done[*t] && e.iter().all(|&i| !chained[i])).map(|(_, e)| e).collect();
                    for evaluations in ready {
                        for &i in evaluations {
                            chained[i] = true;
                            let id = timed!(now, queue.submit(jobs[i].cycle, jobs[i].clone(), now));
                            submitted.insert(id, i);
                            push(&mut events, now + FALLBACK, Event::Fallback);
                        }
                    }
                    if !chains.iter().all(|(_, e)| e.iter().all(|&i| done[i])) {
                        break;
                    }
                }
            }
            at += 1;
        }
        if at == script.len() {
            break;
        }
        // A long-poll waiting at the control plane while a job is queued is answered at once
        // (its request is already there; the lease then takes one hop to the worker).
        for (i, w) in workers.iter_mut().enumerate().filter(|(_, w)| w.alive && w.polling) {
            if queue.has_pending_for(&w.roles, now) {
                w.polling = false;
                push(&mut events, now, Event::Ask { worker: i, life: w.life });
            }
        }
        let Some(Reverse((when, _, event))) = events.pop() else { break };
        now = now.max(when);
        match event {
            Event::Ask { worker, life } if workers[worker].alive && workers[worker].life == life => {
                let w = &workers[worker];
                match timed!(now, queue.take(&w.name, &w.roles, now)) {
                    Some((lease, job)) => {
                        leases += 1;
                        workers[worker].polling = false;
                        workers[worker].busy = true;
                        let finished = now + hop + Duration::from_secs_f64(job.seconds);
                        push(&mut events, finished + hop, Event::Post { worker, life, lease });
                        push(&mut events, now + hop + HEARTBEAT, Event::Beat { worker, life, lease });
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
                workers[worker].busy = false;
                if let Some(id) = timed!(now, queue.complete(lease, now))
                    && let Some(&i) = submitted.get(&id)
                {
                    done[i] = true;
                }
                // The worker's next long-poll arrives after the post's answer went back; its heart
                // stops (the Beat events of this lease find no lease and end).
                push(&mut events, now + 2 * hop, Event::Ask { worker, life });
            }
            Event::Strike => {
                let busy: Vec<usize> = (0..workers.len()).filter(|&i| workers[i].alive && workers[i].busy).collect();
                let alive: Vec<usize> = (0..workers.len()).filter(|&i| workers[i].alive).collect();
                let victim = if busy.is_empty() { alive.choose(&mut rng) } else { busy.choose(&mut rng) };
                if let Some(&worker) = victim {
                    push(&mut events, now, Event::Dies { worker, life: workers[worker].life });
                }
            }
            Event::Dies { worker, life } if workers[worker].alive && workers[worker].life == life => {
                deaths += 1;
                let w = &mut workers[worker];
                w.alive = false;
                w.polling = false;
                w.busy = false;
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
                push(&mut events, now + hop, Event::Ask { worker, life: w.life });
            }
            _ => {} // an event of a life that has ended
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
        jobs: jobs.len() as u64,
        wall_seconds: wall,
        work_seconds: 0.0,
        scheduling_overhead: 0.0,
        roles,
        busy_share: busy_total / (workers.len().max(1) as f64 * wall.max(f64::MIN_POSITIVE)),
        leases,
        lease_failures: queue.lease_failures(),
        heartbeats,
        deaths,
        scheduler_cpu_seconds: scheduler.as_secs_f64(),
        real_seconds: 0.0,
    }
}

impl SimulationReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let deaths = match self.death_window {
            Some(w) => format!("{} worker(s) dying, busy ones first, in the first {w:.3} s", (self.devices as usize).div_ceil(10)),
            None => "no worker dying".into(),
        };
        let _ = writeln!(out, "simulated --budget {}: {} cycles, {} jobs, {deaths}", self.budget, self.cycles, self.jobs);
        let _ = writeln!(out, "  wall {:.3} s simulated (in {:.2} s real), {:.3} s on an ideal control plane", self.wall_seconds, self.real_seconds, self.work_seconds);
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
/// with one death per ten workers at random moments of the calm run's wall time.
pub fn simulate_budget(budget: &Budget, curriculum_path: &std::path::Path, cycles: Option<u32>) -> Result<(SimulationReport, SimulationReport), crate::Error> {
    let plan = crate::plan::plan_for(budget, curriculum_path)?;
    let curriculum = crate::plan::resolved(&Curriculum::load(curriculum_path)?, budget);
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
        let curriculum = crate::plan::resolved(&Curriculum::load(path).unwrap(), &budget);
        let model = evolve_model::preset(&curriculum.preset).unwrap().unwrap();
        (budget, plan, model, curriculum)
    }

    /// Every job of the run completes once; the wall time is the ideal run's plus at least
    /// the network hops of the controller's waits.
    #[test]
    fn a_calm_pool_runs_every_job_once() {
        let (budget, _, model, mut curriculum) = setup("40xRTX4090");
        // Few enough candidates that every evaluation of a wait has its own worker.
        curriculum.cycle.candidates = evolve_curriculum::Candidates::Count(4);
        curriculum.pretrain.candidates = evolve_curriculum::Candidates::Count(4);
        let plan = crate::plan::plan(&budget, "tiny", &model, &curriculum);
        let options = SimulateOptions { budget, cycles: 3, seed: 1, death_window: None };
        let report = simulate(&options, &plan, &model, &curriculum);
        let flops = options.budget.model.bf16_tflops * 1e12 * MFU;
        let (jobs, script) = run_script(&plan, &model, &curriculum, flops, 3);
        assert_eq!(report.jobs, jobs.len() as u64);
        assert_eq!(report.leases, report.jobs);
        assert_eq!((report.lease_failures, report.deaths), (0, 0));
        // With 40 workers the ideal run is the script's critical path: every wait ends when its
        // longest job does (jobs of one wait run at once, one per worker).
        let mut submitted_at = vec![0.0f64; jobs.len()];
        let mut t = 0.0f64;
        for action in &script {
            match action {
                Action::Submit(i) => submitted_at[*i] = t,
                Action::Await(ids) => t = ids.iter().map(|&i| submitted_at[i] + jobs[i].seconds).fold(t, f64::max),
                Action::Chain(chains) => {
                    for (training, evaluations) in chains {
                        let trained = submitted_at[*training] + jobs[*training].seconds;
                        t = evaluations.iter().map(|&i| trained + jobs[i].seconds).fold(t, f64::max);
                    }
                }
            }
        }
        // Durations on the simulated clock are whole nanoseconds.
        assert!((report.work_seconds - t).abs() < 1e-6, "ideal {} vs critical path {t}", report.work_seconds);
        // Waits on jobs still running cost the lease's and the result's hop each.
        // A chain waits twice: for the training, then for its evaluations.
        let waits: usize = script.iter().map(|a| match a { Action::Await(_) => 1, Action::Chain(_) => 2, Action::Submit(_) => 0 }).sum();
        let hop = NETWORK_ONE_WAY.as_secs_f64();
        assert!(report.wall_seconds > t + 2.0 * hop && report.wall_seconds < t + 4.0 * hop * waits as f64, "{report:?}");
        assert_eq!(report.devices, 40);
        assert!((0.0..1.0).contains(&report.scheduling_overhead));
    }

    /// Dying workers cost leases, which are handed out again; the run still completes every job.
    #[test]
    fn dying_workers_cost_leases_but_no_job() {
        let (budget, plan, model, curriculum) = setup("4xRTX4090");
        let calm = simulate(&SimulateOptions { budget: budget.clone(), cycles: 4, seed: 3, death_window: None }, &plan, &model, &curriculum);
        let faulty = simulate(&SimulateOptions { budget, cycles: 4, seed: 3, death_window: Some(calm.wall_seconds) }, &plan, &model, &curriculum);
        assert_eq!(faulty.deaths, 1, "one worker in ten, at least one: {faulty:?}");
        assert_eq!(faulty.jobs, calm.jobs);
        assert!((faulty.work_seconds - calm.work_seconds).abs() < 1e-6, "the same ideal run");
        assert!(faulty.wall_seconds > calm.wall_seconds);
        assert!(faulty.leases >= faulty.jobs && faulty.leases - faulty.jobs == faulty.lease_failures, "{faulty:?}");
    }
}
