//! The plan of a budget: how many workers of each role go on which device, whether the model
//! preset fits in one device's memory while training, and what a cycle is expected to take and
//! cost. A pure function of the budget (device count, the catalogue's memory, throughput and
//! price), the model preset and the curriculum: `evolve start --dry-run` prints it, and the
//! local pool assigns roles with it.
//!
//! The estimates are first-order and say so: FLOPs are the usual 2·params per token forward and
//! 6·params per token for a training step, at the catalogue's dense bf16 throughput times an
//! assumed model FLOPs utilisation ([`MFU`]), but never faster than the step's kernel launches
//! one after another ([`LAUNCH_SECONDS`] each: what bounds a small model on a big GPU); memory
//! is weights + gradients + AdamW moments (at the preset's dtype) plus an activation estimate for
//! one training batch.

use evolve_curriculum::{Candidates, Curriculum};
use evolve_model::LlamaConfig;
use evolve_trainer::Surgery;
use serde::{Deserialize, Serialize};

use crate::budget::Budget;

/// Assumed model FLOPs utilisation: the share of the catalogue's peak throughput that training
/// and decoding of a small model reach. Small models reach less than large ones; 0.3 is a
/// typical figure for well-fed transformer training.
pub const MFU: f64 = 0.3;
/// Share of a GPU's memory left for the model; the rest goes to the CUDA context, allocator
/// fragmentation and workspace.
pub const USABLE_MEMORY: f64 = 0.9;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Generator,
    Discriminator,
    Trainer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Generator => "generator",
            Role::Discriminator => "discriminator",
            Role::Trainer => "trainer",
        }
    }
}

/// One device of the budget and the role(s) its worker serves. With fewer than three devices a
/// device serves several roles in turn.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Placement {
    pub device: u32,
    pub roles: Vec<Role>,
}

/// Bytes one training worker needs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryEstimate {
    pub params: u64,
    pub bytes_per_value: u64,
    pub weights: u64,
    pub gradients: u64,
    /// AdamW's two moments (pretraining; cycles use SGD with one momentum buffer, less).
    pub optimizer: u64,
    /// One training batch's activations kept for the backward pass.
    pub activations: u64,
    pub total: u64,
    /// Usable bytes of one device ([`USABLE_MEMORY`] of the catalogue's memory); `None` for the
    /// CPU, whose memory is the host's.
    pub capacity: Option<u64>,
    pub fits: bool,
}

/// What one kernel launch costs a GPU whatever the kernel does: CUDA's launch latency plus the
/// framework's dispatch (2–10 µs as commonly measured; the low end is taken, so the estimate
/// errs towards short jobs). A small model's step is a few hundred launches that each do little,
/// so its time is bound by their number, not by its FLOPs: a training step of the tiny preset
/// is 0.02 ms of FLOPs on a 4090 at [`MFU`] and 2 ms of launches.
pub const LAUNCH_SECONDS: f64 = 5e-6;
/// Sequences decoded together (`DecodeOptions`' batch).
const DECODE_BATCH: f64 = 256.0;

/// Kernels one training step launches one after another: per layer about 15 forward (two
/// norms, the projections, rotary, attention, SwiGLU, residuals) and 30 backward, times the
/// surgery's passes; then one fused optimizer kernel per parameter tensor (9 per layer).
pub fn train_step_launches(model: &LlamaConfig, surgery: Surgery) -> f64 {
    let layers = model.num_hidden_layers as f64;
    (45.0 * layers + 10.0) * surgery_factor(surgery) + 9.0 * layers + 5.0
}

/// Kernels that decoding `sequences` launches one after another: batches of [`DECODE_BATCH`],
/// each a prefill and then one step per answer token (answers taken as a quarter of the
/// context), each step about 15 kernels per layer.
fn decode_launches(model: &LlamaConfig, sequences: f64) -> f64 {
    let steps = 1.0 + (model.max_position_embeddings as f64 / 4.0).ceil();
    (sequences / DECODE_BATCH).ceil() * steps * (15.0 * model.num_hidden_layers as f64 + 5.0)
}

/// FLOPs of one cycle per role, and the kernel launches that bound it from below.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CycleWork {
    pub generator_flops: f64,
    pub discriminator_flops: f64,
    pub trainer_flops: f64,
    pub generator_launches: f64,
    pub discriminator_launches: f64,
    pub trainer_launches: f64,
}

impl CycleWork {
    fn of(&self, role: Role) -> f64 {
        match role {
            Role::Generator => self.generator_flops,
            Role::Discriminator => self.discriminator_flops,
            Role::Trainer => self.trainer_flops,
        }
    }

    /// Device-seconds of `role`'s work on devices of `flops_per_second`: its FLOPs' time, or its
    /// launches' when those take longer.
    pub fn seconds(&self, role: Role, flops_per_second: f64) -> f64 {
        let launches = match role {
            Role::Generator => self.generator_launches,
            Role::Discriminator => self.discriminator_launches,
            Role::Trainer => self.trainer_launches,
        };
        (self.of(role) / flops_per_second).max(launches * LAUNCH_SECONDS)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub budget: String,
    pub gpu: String,
    pub devices: u32,
    pub preset: String,
    /// Candidates each cycle trains (`candidates = "auto"` resolved for the budget).
    pub candidates: usize,
    /// Workers per role (a device serving two roles counts for both).
    pub workers: Vec<(Role, u32)>,
    pub placements: Vec<Placement>,
    pub memory: MemoryEstimate,
    pub work: CycleWork,
    /// Seconds per role for one cycle with its workers, at [`MFU`] of peak throughput or at
    /// [`LAUNCH_SECONDS`] per kernel launch, whichever is longer (see [`CycleWork::seconds`]).
    pub role_seconds: Vec<(Role, f64)>,
    /// One cycle start to end (generate, then train, then evaluate).
    pub cycle_latency_seconds: f64,
    /// Seconds between cycles once pipelined (the generator prepares cycle n+1 while the trainer
    /// trains cycle n): the slowest stage.
    pub cycle_seconds: f64,
    /// All devices of the budget are paid for all the time.
    pub usd_per_hour: f64,
    pub usd_per_cycle: f64,
    /// Cycles that fit in the budget's duration, if it has one.
    pub cycles_in_duration: Option<u64>,
}

/// Per-token FLOPs factor of a training step with each surgery, relative to a plain step:
/// measured with `evolve bench train --steps 5` (README: A-GEM 2.09x, PCGrad 1.19x the time of a
/// plain step).
fn surgery_factor(surgery: Surgery) -> f64 {
    match surgery {
        Surgery::None => 1.0,
        Surgery::Agem => 2.09,
        Surgery::Pcgrad => 1.19,
    }
}

/// Bytes per value of a preset's `torch_dtype`.
fn dtype_bytes(dtype: &str) -> u64 {
    match dtype {
        "bfloat16" | "float16" => 2,
        _ => 4,
    }
}

/// Memory of one training worker.
pub fn memory(budget: &Budget, model: &LlamaConfig, batch_size: usize) -> MemoryEstimate {
    let params = model.num_params() as u64;
    let b = dtype_bytes(&model.torch_dtype);
    let (weights, gradients, optimizer) = (params * b, params * b, 2 * params * b);
    // Activations of one batch at full length (Korthikanti et al. 2022, per layer and token:
    // 34·hidden + 5·heads·seq values at 2 bytes, scaled to the dtype), plus the logits.
    let (s, h, layers) = (model.max_position_embeddings as u64, model.hidden_size as u64, model.num_hidden_layers as u64);
    let heads = model.num_attention_heads as u64;
    let tokens = batch_size as u64 * s;
    let activations = layers * tokens * (34 * h + 5 * heads * s) * b / 2 + tokens * model.vocab_size as u64 * b;
    let total = weights + gradients + optimizer + activations;
    let capacity = (!budget.is_cpu()).then(|| (budget.model.memory_gb * 1e9 * USABLE_MEMORY) as u64);
    MemoryEstimate { params, bytes_per_value: b, weights, gradients, optimizer, activations, total, capacity, fits: capacity.is_none_or(|c| total <= c) }
}

/// FLOPs of one cycle of `curriculum` per role, with sequences at the preset's full length (an
/// upper bound: prompts are shorter).
pub fn cycle_work(model: &LlamaConfig, curriculum: &Curriculum) -> CycleWork {
    let p = model.num_params() as f64;
    let seq = model.max_position_embeddings as f64;
    let c = &curriculum.cycle;
    let frontier = curriculum.frontier().len() as f64;
    // Mining answers every probe once; synthesis samples k answers for each mutation of each
    // failure (at most every probe fails).
    let probes = c.probes_per_level as f64 * frontier;
    let generated_sequences = probes + probes * c.mutations_per_failure as f64 * c.samples_k as f64;
    let generator_flops = 2.0 * p * seq * generated_sequences;
    let trainer_flops = 6.0 * p * seq * c.batch_size as f64 * c.train_steps as f64 * surgery_factor(c.surgery) * c.candidates.get() as f64;
    // Every snapshot is evaluated on every frozen suite and the refusal probes; the accepted one
    // also as three quantized copies.
    let snapshots = if c.snapshot_every == 0 { 1 } else { c.train_steps.div_ceil(c.snapshot_every) } as f64;
    let suites = (curriculum.mastered().len() + curriculum.frontier().len()) as f64;
    let eval_problems = suites * curriculum.eval.suite_size as f64 + 2.0 * curriculum.eval.refusal_probes as f64;
    let evaluations = snapshots * c.candidates.get() as f64 + 3.0;
    let discriminator_flops = 2.0 * p * seq * eval_problems * evaluations;
    CycleWork {
        generator_flops,
        discriminator_flops,
        trainer_flops,
        // Mining's probes are one decoding, synthesis's samples another.
        generator_launches: decode_launches(model, probes) + decode_launches(model, generated_sequences - probes),
        discriminator_launches: decode_launches(model, eval_problems) * evaluations,
        trainer_launches: train_step_launches(model, c.surgery) * c.train_steps as f64 * c.candidates.get() as f64,
    }
}

/// Workers per role for `devices` devices: one trainer per candidate a cycle trains (more would
/// idle), leaving at least two devices, and the other devices split between generator and
/// discriminator in proportion to their work, each at least one. Below three devices roles
/// share: two devices put the discriminator with the trainer (it evaluates what the trainer just
/// made), one device serves all three.
pub fn assign_roles(devices: u32, work: &CycleWork, candidates: u32) -> Vec<Placement> {
    let all = |d: u32, roles: &[Role]| Placement { device: d, roles: roles.to_vec() };
    match devices {
        0 => Vec::new(),
        1 => vec![all(0, &[Role::Generator, Role::Discriminator, Role::Trainer])],
        2 => vec![all(0, &[Role::Trainer, Role::Discriminator]), all(1, &[Role::Generator])],
        n => {
            let trainers = candidates.clamp(1, n - 2);
            let rest = n - trainers;
            let (g, d) = (work.generator_flops.max(0.0), work.discriminator_flops.max(0.0));
            let share = if g + d > 0.0 { g / (g + d) } else { 0.5 };
            let generators = ((rest as f64 * share).round() as u32).clamp(1, rest - 1);
            let mut placements: Vec<Placement> = (0..trainers).map(|i| all(i, &[Role::Trainer])).collect();
            placements.extend((trainers..trainers + generators).map(|i| all(i, &[Role::Generator])));
            placements.extend((trainers + generators..n).map(|i| all(i, &[Role::Discriminator])));
            placements
        }
    }
}

/// Most candidates `candidates = "auto"` trains: a learning-rate ladder longer than this walks
/// off any sensible rate.
pub const AUTO_CANDIDATES_MAX: usize = 8;

/// What `candidates = "auto"` means on `budget`: one candidate per device that would otherwise
/// wait while the cycle trains. In one process that is 1. On a CPU pool, every worker but the
/// one the learned judge trains on (all of them when the judge trains first, as it does when a
/// skill is judge-decided); on GPUs, every device but the generator's and the discriminator's.
/// At most [`AUTO_CANDIDATES_MAX`]. A count is kept as it is.
pub fn auto_candidates(candidates: Candidates, budget: &Budget, judge_trains_first: bool) -> usize {
    let n = budget.count as usize;
    match candidates {
        Candidates::Count(k) => k,
        Candidates::Auto if n <= 1 => 1,
        Candidates::Auto if budget.is_cpu() => if judge_trains_first { n } else { n - 1 }.clamp(1, AUTO_CANDIDATES_MAX),
        Candidates::Auto => n.saturating_sub(2).clamp(1, AUTO_CANDIDATES_MAX),
    }
}

/// `curriculum` with its `candidates` resolved for `budget` (see [`auto_candidates`]). Base
/// candidates on `auto`: nothing else runs while the base pretrains, so on a CPU pool every
/// worker trains one; on GPUs the trainers do.
pub fn resolved(curriculum: &Curriculum, budget: &Budget) -> Curriculum {
    let mut c = curriculum.clone();
    let judge_trains_first = !c.unverifiable().is_empty();
    c.cycle.candidates = Candidates::Count(auto_candidates(c.cycle.candidates, budget, judge_trains_first));
    let every_worker = if budget.is_cpu() { auto_candidates(Candidates::Auto, budget, true) } else { c.cycle.candidates.get().min(budget.count as usize) };
    c.pretrain.candidates = Candidates::Count(match c.pretrain.candidates {
        Candidates::Auto => every_worker,
        count => count.get(),
    });
    c
}

/// The workers of `budget`: on GPUs, roles by [`assign_roles`]; on a CPU budget every worker
/// serves every role, since its devices are one machine's cores and any worker may as well take
/// whichever job is waiting (a pool's concurrent jobs then spread over all of them).
pub fn placements(budget: &Budget, work: &CycleWork, candidates: usize) -> Vec<Placement> {
    let mut placements = assign_roles(budget.count, work, candidates as u32);
    if budget.is_cpu() {
        for p in &mut placements {
            p.roles = vec![Role::Generator, Role::Discriminator, Role::Trainer];
        }
    }
    placements
}

/// The plan for a curriculum file: loads it and its preset (errors name the file and field).
pub fn plan_for(budget: &Budget, curriculum_path: &std::path::Path) -> Result<Plan, crate::Error> {
    let curriculum = Curriculum::load(curriculum_path)?;
    let model = evolve_model::preset(&curriculum.preset).ok_or_else(|| {
        crate::Error::Invalid(format!(
            "curriculum {}: field `preset`: unknown preset `{}`; valid: {}",
            curriculum_path.display(),
            curriculum.preset,
            evolve_model::preset_names().join(", ")
        ))
    })??;
    Ok(plan(budget, &curriculum.preset, &model, &curriculum))
}

/// The plan of `budget` for `model` and `curriculum`.
pub fn plan(budget: &Budget, preset: &str, model: &LlamaConfig, curriculum: &Curriculum) -> Plan {
    let curriculum = &resolved(curriculum, budget);
    let work = cycle_work(model, curriculum);
    let placements = placements(budget, &work, curriculum.cycle.candidates.get());
    let roles = [Role::Generator, Role::Discriminator, Role::Trainer];
    let workers: Vec<(Role, u32)> = roles.iter().map(|&r| (r, placements.iter().filter(|p| p.roles.contains(&r)).count() as u32)).collect();
    let flops_per_second = budget.model.bf16_tflops * 1e12 * MFU;
    // A shared device does its roles in turn: each role's time is its work over its workers,
    // and roles sharing a device add up.
    let role_seconds: Vec<(Role, f64)> = workers.iter().map(|&(r, n)| (r, work.seconds(r, flops_per_second) / n.max(1) as f64)).collect();
    let seconds_of = |r: Role| role_seconds.iter().find(|(x, _)| *x == r).map_or(0.0, |(_, s)| *s);
    let cycle_latency_seconds = roles.iter().map(|&r| seconds_of(r)).sum();
    let cycle_seconds = placements.iter().map(|p| p.roles.iter().map(|&r| seconds_of(r)).sum::<f64>()).fold(0.0, f64::max);
    let usd_per_hour = budget.count as f64 * budget.model.usd_per_hour;
    let memory = memory(budget, model, curriculum.pretrain.batch_size.max(curriculum.cycle.batch_size));
    Plan {
        budget: budget.spec.clone(),
        gpu: budget.model.name.clone(),
        devices: budget.count,
        preset: preset.to_string(),
        candidates: curriculum.cycle.candidates.get(),
        workers,
        placements,
        memory,
        work,
        role_seconds,
        cycle_latency_seconds,
        cycle_seconds,
        usd_per_hour,
        usd_per_cycle: usd_per_hour * cycle_seconds / 3600.0,
        cycles_in_duration: budget.duration.map(|d| if cycle_seconds > 0.0 { (d.as_secs_f64() / cycle_seconds).floor() as u64 } else { 0 }),
    }
}

impl Plan {
    /// The plan as `evolve start --dry-run` prints it.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let gb = |b: u64| b as f64 / 1e9;
        let _ = writeln!(out, "plan for --budget {} ({} x {}), preset {} ({:.2}M parameters); nothing is trained (--dry-run)", self.budget, self.devices, self.gpu, self.preset, self.memory.params as f64 / 1e6);
        let _ = writeln!(out, "candidates per cycle: {}", self.candidates);
        let _ = writeln!(out, "workers:");
        for (role, n) in &self.workers {
            let devices: Vec<u32> = self.placements.iter().filter(|p| p.roles.contains(role)).map(|p| p.device).collect();
            let _ = writeln!(out, "  {:<13} {:>3}  on device {}", role.as_str(), n, ranges(&devices));
        }
        for p in self.placements.iter().filter(|p| p.roles.len() > 1) {
            let names: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
            let _ = writeln!(out, "  device {} serves {} in turn", p.device, names.join(", "));
        }
        let m = &self.memory;
        let _ = writeln!(
            out,
            "memory per training worker: {:.3} GB = weights {:.3} + gradients {:.3} + AdamW moments {:.3} + activations {:.3} ({} bytes per value)",
            gb(m.total), gb(m.weights), gb(m.gradients), gb(m.optimizer), gb(m.activations), m.bytes_per_value
        );
        match m.capacity {
            Some(c) => {
                let verdict = if m.fits { "fits" } else { "does NOT fit" };
                let _ = writeln!(out, "  {verdict} in one {} ({:.1} GB usable of {:.0} GB)", self.gpu, gb(c), c as f64 / USABLE_MEMORY / 1e9);
            }
            None => {
                let _ = writeln!(out, "  on the CPU: host memory");
            }
        }
        let _ = writeln!(out, "expected per cycle (at {:.0}% of the catalogue's bf16 peak, or {:.0} µs per kernel launch where launches take longer):", MFU * 100.0, LAUNCH_SECONDS * 1e6);
        for (role, s) in &self.role_seconds {
            let flops = self.work.of(*role);
            let _ = writeln!(out, "  {:<13} {:>10.3e} FLOPs  {:>10.2} s", role.as_str(), flops, s);
        }
        let _ = writeln!(out, "  cycle: {:.2} s start to end, one every {:.2} s pipelined", self.cycle_latency_seconds, self.cycle_seconds);
        let _ = writeln!(out, "cost: ${:.2}/hour for {} devices, ${:.4} per cycle", self.usd_per_hour, self.devices, self.usd_per_cycle);
        if let Some(n) = self.cycles_in_duration {
            let _ = writeln!(out, "budget duration: about {n} cycles");
        }
        out
    }
}

/// `0-3,7` for `[0, 1, 2, 3, 7]`.
fn ranges(devices: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < devices.len() {
        let mut j = i;
        while j + 1 < devices.len() && devices[j + 1] == devices[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { devices[i].to_string() } else { format!("{}-{}", devices[i], devices[j]) });
        i = j + 1;
    }
    if parts.is_empty() { "-".into() } else { parts.join(",") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curriculum() -> Curriculum {
        Curriculum::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../curricula/smoke.toml"))).unwrap()
    }

    fn tiny() -> LlamaConfig {
        evolve_model::preset("tiny").unwrap().unwrap()
    }

    #[test]
    fn roles_cover_every_device_once_with_one_trainer() {
        let work = CycleWork { generator_flops: 3.0, discriminator_flops: 1.0, trainer_flops: 5.0, ..CycleWork::default() };
        for n in 1..=64 {
            let placements = assign_roles(n, &work, 1);
            assert_eq!(placements.iter().map(|p| p.device).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
            for role in [Role::Generator, Role::Discriminator, Role::Trainer] {
                let workers = placements.iter().filter(|p| p.roles.contains(&role)).count();
                assert!(workers >= 1, "{n} devices: no {role:?}");
                if role == Role::Trainer {
                    assert_eq!(workers, 1);
                }
            }
        }
        // 40 devices: 39 split 3:1 between generator and discriminator.
        let placements = assign_roles(40, &work, 1);
        let generators = placements.iter().filter(|p| p.roles == [Role::Generator]).count();
        assert_eq!(generators, 29); // round(39 * 0.75)
        // A trainer per candidate, leaving room for a generator and a discriminator.
        let trainers = |n, candidates| assign_roles(n, &work, candidates).iter().filter(|p| p.roles == [Role::Trainer]).count();
        assert_eq!((trainers(40, 8), trainers(4, 8), trainers(3, 8)), (8, 2, 1));
        // Even a role with no measured work keeps one worker.
        let lopsided = assign_roles(5, &CycleWork { generator_flops: 1.0, discriminator_flops: 0.0, trainer_flops: 1.0, ..CycleWork::default() }, 1);
        assert_eq!(lopsided.iter().filter(|p| p.roles == [Role::Discriminator]).count(), 1);
    }

    #[test]
    fn memory_counts_weights_gradients_moments_and_activations() {
        let budget = Budget::parse("40xRTX4090").unwrap();
        let model = tiny();
        let m = memory(&budget, &model, 64);
        let p = model.num_params() as u64;
        assert_eq!((m.params, m.weights, m.gradients, m.optimizer), (p, 4 * p, 4 * p, 8 * p));
        assert_eq!(m.total, m.weights + m.gradients + m.optimizer + m.activations);
        assert!(m.activations > 0 && m.fits && m.capacity == Some(21_600_000_000));
        // A 7B-class Llama in f32 needs 16 bytes per parameter before activations: > 24 GB.
        let big = LlamaConfig { hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: Some(32), vocab_size: 32000, max_position_embeddings: 2048, ..model.clone() };
        let m = memory(&budget, &big, 1);
        assert!(m.params > 6_000_000_000 && !m.fits, "{m:?}");
        assert!(memory(&Budget::parse("1xH100").unwrap(), &LlamaConfig { num_hidden_layers: 2, ..big }, 1).fits);
        // The CPU has no device memory to fit in.
        assert_eq!(memory(&Budget::parse("1xcpu").unwrap(), &model, 64).capacity, None);
    }

    /// `auto`: one candidate per device free beside the judge (all of them when the judge
    /// trains first), capped; one process trains one; a count stays as written.
    #[test]
    fn auto_candidates_fill_the_free_workers() {
        let auto = |spec: &str, judge_first: bool| auto_candidates(Candidates::Auto, &Budget::parse(spec).unwrap(), judge_first);
        assert_eq!((auto("1xcpu", false), auto("4xcpu", false), auto("4xcpu", true)), (1, 3, 4));
        assert_eq!((auto("40xRTX4090", false), auto("3xRTX4090", false), auto("20xcpu", false)), (AUTO_CANDIDATES_MAX, 1, AUTO_CANDIDATES_MAX));
        assert_eq!(auto_candidates(Candidates::Count(5), &Budget::parse("1xcpu").unwrap(), false), 5);
        let c = resolved(&curriculum(), &Budget::parse("4xcpu").unwrap());
        assert_eq!((c.cycle.candidates, c.pretrain.candidates), (Candidates::Count(3), Candidates::Count(4)), "bases: every worker");
    }

    #[test]
    fn cycle_time_and_cost_follow_throughput_and_price() {
        let c = curriculum();
        let model = tiny();
        let p40 = plan(&Budget::parse("40xRTX4090:12h").unwrap(), "tiny", &model, &c);
        assert_eq!(p40.workers.iter().map(|(_, n)| n).sum::<u32>(), 40);
        assert!((p40.usd_per_hour - 40.0 * 0.34).abs() < 1e-9);
        assert!((p40.usd_per_cycle - p40.usd_per_hour * p40.cycle_seconds / 3600.0).abs() < 1e-12);
        let trainer = p40.role_seconds.iter().find(|(r, _)| *r == Role::Trainer).unwrap().1;
        // `candidates = "auto"`: a trainer per candidate, each training one.
        assert_eq!(p40.candidates, AUTO_CANDIDATES_MAX);
        // The tiny preset's steps are bound by their kernel launches on a 4090, not its FLOPs.
        let (flops_bound, launch_bound) = (p40.work.trainer_flops / (165e12 * MFU), p40.work.trainer_launches * LAUNCH_SECONDS);
        assert!(launch_bound > flops_bound, "{launch_bound} s of launches, {flops_bound} s of FLOPs");
        assert!((trainer - launch_bound / p40.candidates as f64).abs() < 1e-12);
        assert!(p40.cycle_seconds <= p40.cycle_latency_seconds && p40.cycle_seconds >= trainer);
        assert_eq!(p40.cycles_in_duration, Some((12.0 * 3600.0 / p40.cycle_seconds).floor() as u64));
        // For a model big enough to be bound by its FLOPs, six times the throughput per device
        // is a sixth of the time; one device does everything in turn.
        let big = LlamaConfig { hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: Some(32), max_position_embeddings: 2048, ..model };
        let one = plan(&Budget::parse("1xRTX4090").unwrap(), "7b", &big, &c);
        assert!((one.cycle_seconds - one.cycle_latency_seconds).abs() < 1e-12);
        let h100 = plan(&Budget::parse("1xH100").unwrap(), "7b", &big, &c);
        assert!((h100.cycle_seconds * 989.0 - one.cycle_seconds * 165.0).abs() < 1e-9 * one.cycle_seconds * 165.0);
        let text = p40.render();
        assert!(text.contains("trainer") && text.contains("fits in one RTX4090") && text.contains("$13.60/hour"), "{text}");
    }

    #[test]
    fn device_lists_are_compact() {
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert_eq!(ranges(&[]), "-");
    }
}
