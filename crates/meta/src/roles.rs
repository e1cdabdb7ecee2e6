//! The roles as jobs and results. A job names its inputs by artifact hash and carries only
//! small plain data, so the same job can be run in this process (as here) or, later, handed to a
//! worker process over the control plane: the process boundary cuts through these types.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use burn::prelude::{Device, Int, Tensor, TensorData};
use evolve_compress::quant::{ChannelStats, QuantScheme, dequantize_checkpoint, quantize_checkpoint};
use evolve_compress::{Codec, round_trip, round_trip_delta};
use evolve_curriculum::Curriculum;
use evolve_curriculum::ExampleSampling;
use evolve_discriminator::metrics::{auc, calibration_error};
use evolve_discriminator::{Judgement, LearnedScorer, Verifier};
use evolve_generator::{Candidate, Exclusions, Judges, MiningStat, MiningTarget, SkillSynthesis, SynthesisConfig, mine, select_within_quota, synthesize};
use evolve_model::{ChannelStatsByLayer, Checkpoint, Llama, LlamaConfig};
use evolve_policy::{Sampling, answer, example_tokens};
use evolve_store::ArtifactStore;
use burn::module::Module;
use evolve_tasks::{HeldOut, Problem, RefusalProbes, Response, Skill, Suite, all_skills, build_refusal_probes, build_suite, sample_training};
use evolve_trainer::{StepInfo, TrainConfig, TrainReport, Trainer};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

use crate::Error;

pub const CHECKPOINT_KIND: &str = "safetensors";
pub const CONFIG_KIND: &str = "config.json";
pub const EXAMPLES_KIND: &str = "examples.json";
pub const JUDGEMENTS_KIND: &str = "judgements.json";

/// What every role derives from the curriculum alone: skills, the frozen suites and the
/// held-out set they imply, and where artifacts live.
pub struct Context {
    pub curriculum: Curriculum,
    pub model_config: LlamaConfig,
    pub store: ArtifactStore,
    pub device: Device,
    pub skills: Vec<Box<dyn Skill>>,
    pub suites: Vec<(Suite, SuiteRole)>,
    pub refusal: RefusalProbes,
    pub held_out: HeldOut,
    pub verifier: Verifier,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuiteRole {
    Mastered,
    Frontier,
}

impl SuiteRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            SuiteRole::Mastered => "mastered",
            SuiteRole::Frontier => "frontier",
        }
    }
}

impl Context {
    pub fn new(curriculum: Curriculum, model_config: LlamaConfig, store: ArtifactStore, device: Device) -> Arc<Self> {
        let skills = all_skills();
        let e = &curriculum.eval;
        let mut suites = Vec::new();
        for (pairs, role) in [(curriculum.mastered(), SuiteRole::Mastered), (curriculum.frontier(), SuiteRole::Frontier)] {
            for (name, level) in pairs {
                let skill = skills.iter().find(|s| s.name() == name).expect("curriculum validated skill names");
                suites.push((build_suite(skill.as_ref(), level, e.suite_size, e.suite_seed), role));
            }
        }
        let refusal_levels: Vec<u32> = curriculum.skills.iter().filter(|s| s.name == "refusal").flat_map(|s| s.base_levels.iter().chain(&s.frontier_levels).copied()).collect();
        let refusal = build_refusal_probes(e.refusal_probes, e.suite_seed, &refusal_levels);
        let mut held_out = HeldOut::from_suites(suites.iter().map(|(s, _)| s));
        held_out.extend(refusal.must_refuse.iter().chain(&refusal.benign));
        Arc::new(Context { curriculum, model_config, store, device, skills, suites, refusal, held_out, verifier: Verifier::default() })
    }

    /// The curriculum's synthesis settings, with the policy's effort per skill.
    pub fn synthesis_config(&self, skill_weights: BTreeMap<String, f32>) -> SynthesisConfig {
        let c = &self.curriculum.cycle;
        SynthesisConfig {
            mutations_per_failure: c.mutations_per_failure,
            samples_k: c.samples_k,
            temperature: c.temperature,
            window: (c.window[0], c.window[1]),
            examples: c.examples_per_cycle,
            max_skill_share: c.max_skill_share,
            max_format_share: c.max_format_share,
            skill_weights,
            targets: self.curriculum.frontier(),
        }
    }

    pub fn skill(&self, name: &str) -> &dyn Skill {
        self.skills.iter().find(|s| s.name() == name).map(|s| s.as_ref()).expect("curriculum validated skill names")
    }

    pub fn load_model(&self, hash: &str) -> Result<Llama, Error> {
        let safetensors = self.store.get(hash, CHECKPOINT_KIND)?;
        self.model_from(safetensors, hash, &self.store.path_of(hash, CHECKPOINT_KIND).display().to_string())
    }

    /// The preset's model with these weights; `origin` names them in errors.
    pub fn model_from(&self, safetensors: Vec<u8>, hash: &str, origin: &str) -> Result<Llama, Error> {
        let checkpoint = Checkpoint { config: self.model_config.clone(), safetensors, hash: hash.to_string() };
        Ok(checkpoint.to_model(&self.device, origin)?)
    }

    /// Stores a model's checkpoint (weights and config) and returns it.
    pub fn store_model(&self, model: &Llama) -> Result<Checkpoint, Error> {
        let checkpoint = Checkpoint::from_model(model, &self.model_config);
        self.store.put(CHECKPOINT_KIND, &checkpoint.safetensors)?;
        self.store.put_encoded(&checkpoint.hash, CONFIG_KIND, self.model_config.to_json().as_bytes())?;
        Ok(checkpoint)
    }

    /// A fresh training problem at one of `pairs`, uniformly; never a held-out prompt. With
    /// `like`, the draw is restricted to that skill's pairs when it has any: replay matched to
    /// what is being learned protects the circuits the new data actually disturbs (a uniform
    /// replay spends most rows on skills the cycle never touched).
    /// Without `like`, every pair is equally likely, except that no skill may take more than
    /// `QUOTA_MARGIN` of the curriculum's `max_skill_share` (a skill taught at many levels would
    /// otherwise exceed its quota in pretraining).
    fn fresh_problem(&self, pairs: &[(String, u32)], like: Option<&str>, rng: &mut StdRng) -> Problem {
        let matched: Vec<&(String, u32)> = pairs.iter().filter(|(s, _)| Some(s.as_str()) == like).collect();
        let shares = pair_shares(pairs, QUOTA_MARGIN * f64::from(self.curriculum.cycle.max_skill_share));
        loop {
            let uniform = shares.iter().all(|s| (s - shares[0]).abs() < 1e-12);
            let (skill, level) = if !matched.is_empty() {
                matched[rng.random_range(0..matched.len())]
            } else if uniform {
                &pairs[rng.random_range(0..pairs.len())]
            } else {
                pick_weighted(pairs, &shares, rng.random())
            };
            if let Some(p) = sample_training(self.skill(skill), *level, &self.held_out, rng) {
                return p;
            }
        }
    }

    /// A fresh training problem at one of `pairs`, drawn in proportion to `weights`.
    fn weighted_fresh_problem(&self, pairs: &[(String, u32)], weights: &[f64], rng: &mut StdRng) -> Problem {
        let total: f64 = weights.iter().sum();
        loop {
            let (skill, level) = pick_weighted(pairs, weights, rng.random::<f64>() * total);
            if let Some(p) = sample_training(self.skill(skill), *level, &self.held_out, rng) {
                return p;
            }
        }
    }
}

/// Rows per skill drawn so far in a cycle, against the curriculum's `max_skill_share`: every
/// row of a cycle (learned, replayed, consolidating) is drawn only for a skill with room, so the
/// quota holds for what is trained at every snapshot, whatever the batch, the replay matching or
/// the consolidation weights would ask for. Without it, consolidation gave most of its rows to
/// the skill the cycle cost most (reversal took 42-46% of cycles under a 40% quota), and a
/// curriculum with one frontier skill trained it on 86% of its rows.
struct SkillQuota {
    cap: f64,
    rows: BTreeMap<String, u32>,
    total: u32,
}

impl SkillQuota {
    fn new(cap: f32, rows: BTreeMap<String, u32>) -> Self {
        let total = rows.values().sum();
        SkillQuota { cap: f64::from(cap), rows, total }
    }

    fn rows_of(&self, skill: &str) -> u32 {
        self.rows.get(skill).copied().unwrap_or(0)
    }

    /// Whether one more row of `skill` keeps it at most `cap` of all rows drawn.
    fn has_room(&self, skill: &str) -> bool {
        f64::from(self.rows_of(skill) + 1) <= (self.cap * f64::from(self.total + 1)).floor()
    }

    fn count(&mut self, skill: &str) {
        *self.rows.entry(skill.to_string()).or_default() += 1;
        self.total += 1;
    }

    /// `weights` over `pairs` with the skills that have no room zeroed; when none has room (the
    /// first rows of a cycle, or a curriculum with too few skills for the quota), the skills
    /// with the fewest rows, evenly.
    fn allowed(&self, pairs: &[(String, u32)], weights: &[f64]) -> Vec<f64> {
        let allowed: Vec<f64> = pairs.iter().zip(weights).map(|((s, _), w)| if self.has_room(s) { *w } else { 0.0 }).collect();
        if allowed.iter().sum::<f64>() > 0.0 {
            return allowed;
        }
        let fewest = pairs.iter().map(|(s, _)| self.rows_of(s)).min().unwrap_or(0);
        pairs.iter().map(|(s, _)| if self.rows_of(s) == fewest { 1.0 } else { 0.0 }).collect()
    }
}

impl Context {
    /// A replay problem at one of `pairs` for a skill with room under `quota` (counted): of
    /// skill `like` when it has room and a level among `pairs`, else spread as
    /// [`Context::fresh_problem`] spreads.
    fn replay_problem(&self, pairs: &[(String, u32)], like: Option<&str>, quota: &mut SkillQuota, rng: &mut StdRng) -> Problem {
        let like = like.filter(|s| quota.has_room(s) && pairs.iter().any(|(p, _)| p == s));
        if like.is_none() {
            let shares = pair_shares(pairs, QUOTA_MARGIN * f64::from(self.curriculum.cycle.max_skill_share));
            return self.draw_within_quota(pairs, &shares, quota, rng);
        }
        let problem = self.fresh_problem(pairs, like, rng);
        quota.count(&problem.skill);
        problem
    }

    /// `rows` replay problems at `pairs` in proportion to `weights`, each for a skill with room
    /// under `quota` (counted).
    fn consolidation_batch(&self, pairs: &[(String, u32)], weights: &[f64], quota: &mut SkillQuota, rows: usize, rng: &mut StdRng) -> Vec<Problem> {
        (0..rows).map(|_| self.draw_within_quota(pairs, weights, quota, rng)).collect()
    }

    /// A problem at one of `pairs` in proportion to `weights` among the skills with room under
    /// `quota` (see `SkillQuota::allowed`), counted.
    fn draw_within_quota(&self, pairs: &[(String, u32)], weights: &[f64], quota: &mut SkillQuota, rng: &mut StdRng) -> Problem {
        let problem = self.weighted_fresh_problem(pairs, &quota.allowed(pairs, weights), rng);
        quota.count(&problem.skill);
        problem
    }
}

/// The item whose stretch of the cumulative `weights` holds `u` (in `[0, sum of weights)`);
/// the last one of positive weight when rounding leaves `u` past the end.
fn pick_weighted<'a, T>(items: &'a [T], weights: &[f64], mut u: f64) -> &'a T {
    for (item, w) in items.iter().zip(weights) {
        if u < *w {
            return item;
        }
        u -= w;
    }
    let last = weights.iter().rposition(|w| *w > 0.0).unwrap_or(items.len() - 1);
    &items[last]
}

/// Random draws fluctuate: a skill's expected share is kept this far under its quota.
const QUOTA_MARGIN: f64 = 0.95;

/// Probability of each `(skill, level)` pair: uniform, then capped per skill at `cap` with the
/// excess spread over the other skills in proportion (water-filling). When there are too few
/// skills for any split to stay under the cap, every skill gets the same share.
fn pair_shares(pairs: &[(String, u32)], cap: f64) -> Vec<f64> {
    let mut levels: BTreeMap<&str, f64> = BTreeMap::new();
    for (s, _) in pairs {
        *levels.entry(s).or_default() += 1.0;
    }
    let total: f64 = levels.values().sum();
    let mut skill_share: BTreeMap<&str, f64> = levels.iter().map(|(s, n)| (*s, n / total)).collect();
    if cap * (skill_share.len() as f64) < 1.0 {
        let even = 1.0 / skill_share.len() as f64;
        skill_share.values_mut().for_each(|v| *v = even);
    } else {
        let mut capped: HashSet<&str> = HashSet::new();
        loop {
            let over: Vec<&str> = skill_share.iter().filter(|(s, v)| **v > cap + 1e-12 && !capped.contains(*s)).map(|(s, _)| *s).collect();
            if over.is_empty() {
                break;
            }
            capped.extend(over);
            let free: f64 = 1.0 - cap * capped.len() as f64;
            let rest: f64 = levels.iter().filter(|(s, _)| !capped.contains(*s)).map(|(_, n)| n).sum();
            for (s, v) in skill_share.iter_mut() {
                *v = if capped.contains(s) { cap } else { free * levels[s] / rest };
            }
        }
    }
    pairs.iter().map(|(s, _)| skill_share[s.as_str()] / levels[s.as_str()]).collect()
}

// ---------------------------------------------------------------- generator

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateJob {
    pub cycle: u32,
    pub parent: String,
    pub targets: Vec<(String, u32)>,
    pub probes_per_level: usize,
    pub synthesis: SynthesisConfig,
    /// Example batches trained on before; their prompts are excluded.
    pub history: Vec<String>,
    pub seed: u64,
    pub sampling: ExampleSampling,
    /// The learned judge's checkpoint, for the skills in `unverifiable`.
    pub judge: Option<String>,
    pub unverifiable: Vec<String>,
    pub accept_score: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExampleBatch {
    pub problems: Vec<Problem>,
    pub pass_rates: Vec<f32>,
    /// Each candidate's `Candidate::answer_prob` (absent from batches written before it was
    /// measured: read as 0).
    #[serde(default)]
    pub answer_probs: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerateResult {
    pub batch: String,
    /// Every response seen, verifier-labelled (`JUDGEMENTS_KIND`), for the learned judge.
    pub judgements: String,
    pub examples: usize,
    pub mining: Vec<MiningStat>,
    pub synthesis: Vec<SkillSynthesis>,
    pub mine_ms: f64,
    pub synthesize_ms: f64,
    /// Every scored candidate of an adversarial synthesis (an [`ExampleBatch`] with their pass
    /// rates), from which [`GeneratorRole::recalibrate`] chooses again; none for uniform batches,
    /// which no model shapes.
    #[serde(default)]
    pub pool: Option<String>,
}

/// A generation made against one checkpoint, calibrated again on another (its child): the
/// pool's candidates are sampled anew and the batch chosen again, under the same quotas. The
/// child is also mined afresh (one round of probes per target), so that the curriculum policy
/// learns how the last parent change moved each target before this batch is trained on: the
/// controller then chooses the batch once more from the pool, with the policy's new split
/// (`Context::choose_from_pool`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecalibrateJob {
    pub cycle: u32,
    /// The checkpoint the batch is for.
    pub parent: String,
    pub pool: String,
    /// The generation's synthesis report: its mutation counts stand.
    pub synthesis_report: Vec<SkillSynthesis>,
    /// The generation's judgements: the recalibration's join them (`JUDGEMENTS_KIND`).
    pub judgements: String,
    /// The generation's job: its synthesis settings and judges stand.
    pub generation: GenerateJob,
    pub seed: u64,
}

/// The judge a generation job names (loaded) and the skills it decides: what [`Judges`]
/// borrows.
struct JobJudge {
    learned: Option<LearnedScorer>,
    unverifiable: HashSet<String>,
    accept_score: f32,
}

impl JobJudge {
    fn load(ctx: &Context, job: &GenerateJob) -> Result<JobJudge, Error> {
        let learned = job.judge.as_deref().map(|hash| ctx.load_judge(hash)).transpose()?;
        Ok(JobJudge { learned, unverifiable: job.unverifiable.iter().cloned().collect(), accept_score: job.accept_score })
    }

    fn judges<'a>(&'a self, verifier: &'a Verifier) -> Judges<'a> {
        Judges { verifier, learned: self.learned.as_ref(), unverifiable: &self.unverifiable, accept_score: self.accept_score }
    }
}

pub trait GeneratorRole {
    fn generate(&mut self, job: &GenerateJob) -> Result<GenerateResult, Error>;
    /// A generation that may finish later (a pool's worker makes it while the caller goes on).
    fn start_generate(&mut self, job: &GenerateJob) -> Pending<GenerateResult> {
        Pending::ready(self.generate(job))
    }
    /// The batch of the generation `job.pool` came from, recalibrated on `job.parent`, with
    /// `job.parent` mined afresh (one round per target). Its batch is chosen with the
    /// generation's split; the controller chooses again once the policy has seen the mining.
    fn recalibrate(&mut self, job: &RecalibrateJob) -> Result<GenerateResult, Error>;
    /// A recalibration that may finish later.
    fn start_recalibrate(&mut self, job: &RecalibrateJob) -> Pending<GenerateResult> {
        Pending::ready(self.recalibrate(job))
    }
}

pub struct LocalGenerator(pub Arc<Context>);

impl GeneratorRole for LocalGenerator {
    fn generate(&mut self, job: &GenerateJob) -> Result<GenerateResult, Error> {
        let ctx = &self.0;
        let model = ctx.load_model(&job.parent)?;
        let mut rng = StdRng::seed_from_u64(job.seed);
        let history = ctx.trained_prompts(&job.history)?;
        let judge = JobJudge::load(ctx, job)?;
        let judges = judge.judges(&ctx.verifier);
        let started = std::time::Instant::now();
        let wanted = job.synthesis.wanted_failures(&job.targets);
        let targets: Vec<MiningTarget<'_>> =
            job.targets.iter().zip(wanted).map(|((s, l), wanted_failures)| MiningTarget { skill: ctx.skill(s), level: *l, probes: job.probes_per_level, wanted_failures }).collect();
        let exclude = Exclusions { held_out: &ctx.held_out, history: &history };
        let mining = mine(&model, &targets, &exclude, &judges, &mut rng, &ctx.device);
        let mine_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = std::time::Instant::now();
        let (accepted, per_skill, mut judgements, pool) = match job.sampling {
            ExampleSampling::Adversarial => {
                let s = synthesize(&model, &ctx.skills, &mining.failures, &job.synthesis, &exclude, &judges, &mut rng, &ctx.device);
                (s.accepted, s.per_skill, s.judgements, Some(s.pool))
            }
            ExampleSampling::Uniform => {
                let (accepted, per_skill, judgements) = ctx.uniform_examples(job, &exclude, &mut rng);
                (accepted, per_skill, judgements, None)
            }
        };
        let synthesize_ms = started.elapsed().as_secs_f64() * 1e3;
        judgements.extend(mining.judgements);
        let pool = pool.map(|pool| ctx.store_batch(pool)).transpose()?;
        let examples = accepted.len();
        let batch = ctx.store_batch(accepted)?;
        let judgements = ctx.store.put(JUDGEMENTS_KIND, &serde_json::to_vec(&judgements)?)?;
        Ok(GenerateResult { batch, judgements, examples, mining: mining.stats, synthesis: per_skill, mine_ms, synthesize_ms, pool })
    }

    fn recalibrate(&mut self, job: &RecalibrateJob) -> Result<GenerateResult, Error> {
        let ctx = &self.0;
        let started = std::time::Instant::now();
        let model = ctx.load_model(&job.parent)?;
        let pool: ExampleBatch = serde_json::from_slice(&ctx.store.get(&job.pool, EXAMPLES_KIND)?)?;
        let judge = JobJudge::load(ctx, &job.generation)?;
        let judges = judge.judges(&ctx.verifier);
        let mut rng = StdRng::seed_from_u64(job.seed);
        let targets: Vec<MiningTarget<'_>> =
            job.generation.targets.iter().map(|(s, l)| MiningTarget { skill: ctx.skill(s), level: *l, probes: job.generation.probes_per_level, wanted_failures: 0 }).collect();
        // Only the statistics are used, and they are the model's on problems it has not trained on.
        let history = ctx.trained_prompts(&job.generation.history)?;
        let mining = mine(&model, &targets, &Exclusions { held_out: &ctx.held_out, history: &history }, &judges, &mut rng, &ctx.device);
        let mine_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = std::time::Instant::now();
        let s = evolve_generator::recalibrate(&model, pool.problems, &job.generation.synthesis, &job.synthesis_report, &judges, &mut rng, &ctx.device);
        let pool = ctx.store_batch(s.pool)?;
        let examples = s.accepted.len();
        let batch = ctx.store_batch(s.accepted)?;
        let mut judgements = ctx.load_judgements(&job.judgements)?;
        judgements.extend(s.judgements);
        judgements.extend(mining.judgements);
        let judgements = ctx.store.put(JUDGEMENTS_KIND, &serde_json::to_vec(&judgements)?)?;
        let synthesize_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(GenerateResult { batch, judgements, examples, mining: mining.stats, synthesis: s.per_skill, mine_ms, synthesize_ms, pool: Some(pool) })
    }
}

impl Context {
    /// The batch chosen again from a generation's scored pool (`GenerateResult::pool`) with
    /// another split between skills: what the controller does once the curriculum policy has
    /// seen the recalibrated child's mining. Selection is cheap and deterministic, so it runs
    /// where the policy is.
    pub fn choose_from_pool(&self, generated: GenerateResult, config: &SynthesisConfig) -> Result<GenerateResult, Error> {
        let Some(pool_hash) = &generated.pool else { return Ok(generated) };
        let pool: ExampleBatch = serde_json::from_slice(&self.store.get(pool_hash, EXAMPLES_KIND)?)?;
        let answer_probs = pool.answer_probs.into_iter().chain(std::iter::repeat(0.0));
        let scored: Vec<Candidate> = pool.problems.into_iter().zip(pool.pass_rates).zip(answer_probs).map(|((problem, pass_rate), answer_prob)| Candidate { problem, pass_rate, answer_prob }).collect();
        let mut per_skill: BTreeMap<String, SkillSynthesis> = generated.synthesis.iter().map(|s| (s.skill.clone(), SkillSynthesis { accepted: 0, ..s.clone() })).collect();
        let accepted = select_within_quota(scored, config, &mut per_skill);
        let examples = accepted.len();
        let batch = self.store_batch(accepted)?;
        Ok(GenerateResult { batch, examples, synthesis: per_skill.into_values().collect(), ..generated })
    }

    /// Every prompt of the example batches `hashes`: what was trained on before.
    fn trained_prompts(&self, hashes: &[String]) -> Result<HashSet<String>, Error> {
        let mut prompts = HashSet::new();
        for hash in hashes {
            let batch: ExampleBatch = serde_json::from_slice(&self.store.get(hash, EXAMPLES_KIND)?)?;
            prompts.extend(batch.problems.into_iter().map(|p| p.prompt));
        }
        Ok(prompts)
    }

    /// Stores candidates as an [`ExampleBatch`]; its hash.
    fn store_batch(&self, candidates: Vec<Candidate>) -> Result<String, Error> {
        let batch = ExampleBatch {
            pass_rates: candidates.iter().map(|c| c.pass_rate).collect(),
            answer_probs: candidates.iter().map(|c| c.answer_prob).collect(),
            problems: candidates.into_iter().map(|c| c.problem).collect(),
        };
        Ok(self.store.put(EXAMPLES_KIND, &serde_json::to_vec(&batch)?)?)
    }
}

impl Context {
    /// The ablation's baseline: fresh problems drawn uniformly from the job's targets (never
    /// held out, never trained on before), under the same quotas as adversarial batches. No
    /// mining result, mutation or calibration shapes them.
    fn uniform_examples(&self, job: &GenerateJob, exclude: &Exclusions<'_>, rng: &mut StdRng) -> (Vec<Candidate>, Vec<SkillSynthesis>, Vec<Judgement>) {
        let mut seen = HashSet::new();
        let mut drawn = Vec::new();
        let mut per_skill: BTreeMap<String, SkillSynthesis> = BTreeMap::new();
        // Twice the batch, so the quotas have something to choose from.
        for _ in 0..2 * job.synthesis.examples {
            let (skill, level) = &job.targets[rng.random_range(0..job.targets.len())];
            let Some(problem) = sample_training(self.skill(skill), *level, exclude.held_out, rng) else { continue };
            let stats = per_skill.entry(skill.clone()).or_insert_with(|| SkillSynthesis { skill: skill.clone(), ..Default::default() });
            stats.generated += 1;
            if !exclude.history.contains(&problem.prompt) && seen.insert(problem.prompt.clone()) {
                stats.admitted += 1;
                // Pass rates are not measured for uniform draws: every draw counts as in-window.
                drawn.push(Candidate { problem, pass_rate: (job.synthesis.window.0 + job.synthesis.window.1) / 2.0, answer_prob: 0.0 });
            }
        }
        let config = SynthesisConfig { skill_weights: BTreeMap::new(), ..job.synthesis.clone() };
        let accepted = select_within_quota(drawn, &config, &mut per_skill);
        (accepted, per_skill.into_values().collect(), Vec::new())
    }

    pub fn load_judge(&self, hash: &str) -> Result<LearnedScorer, Error> {
        let safetensors = self.store.get(hash, CHECKPOINT_KIND)?;
        let checkpoint = Checkpoint { config: LearnedScorer::config(), safetensors, hash: hash.to_string() };
        let model = checkpoint.to_model(&self.device, &self.store.path_of(hash, CHECKPOINT_KIND).display().to_string())?;
        Ok(LearnedScorer::from_model(model, &self.device))
    }

    fn store_judge(&self, judge: &LearnedScorer) -> Result<String, Error> {
        let checkpoint = Checkpoint::from_model(judge.model(), &LearnedScorer::config());
        self.store.put(CHECKPOINT_KIND, &checkpoint.safetensors)?;
        self.store.put_encoded(&checkpoint.hash, CONFIG_KIND, LearnedScorer::config().to_json().as_bytes())?;
        Ok(checkpoint.hash)
    }

    fn load_judgements(&self, hash: &str) -> Result<Vec<Judgement>, Error> {
        Ok(serde_json::from_slice(&self.store.get(hash, JUDGEMENTS_KIND)?)?)
    }
}

// ---------------------------------------------------------------- learned discriminator

/// Retrain the learned judge and measure its proxy gap.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JudgeJob {
    pub cycle: u32,
    /// The judge to continue from; `None` starts a fresh one.
    pub previous: Option<String>,
    /// Every judgement batch so far (`JUDGEMENTS_KIND`); the training split of each is used.
    pub judgements: Vec<String>,
    /// This cycle's batch: the gap is measured on its held-out split.
    pub fresh: String,
    pub steps: usize,
    pub seed: u64,
}

/// The judge's agreement with the verifier on one skill's held-out responses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SkillGap {
    pub skill: String,
    pub n: u32,
    pub auc: Option<f64>,
    pub calibration_error: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JudgeResult {
    pub checkpoint: String,
    pub gap: Vec<SkillGap>,
    pub trained_on: usize,
    pub train_ms: f64,
    pub score_ms: f64,
}

/// Every fifth prompt (by a hash of the prompt, so all responses to one prompt fall on the
/// same side) is held out from the judge's training: the proxy gap is measured there.
fn held_out_from_judge(problem: &Problem) -> bool {
    evolve_tasks::fnv1a64(problem.prompt.as_bytes()) % 5 == 0
}

/// Batch size of the judge's training steps.
const JUDGE_BATCH: usize = 64;

impl Context {
    pub fn judge(&self, job: &JudgeJob) -> Result<JudgeResult, Error> {
        let started = std::time::Instant::now();
        let mut train = Vec::new();
        for hash in &job.judgements {
            train.extend(self.load_judgements(hash)?.into_iter().filter(|j| !held_out_from_judge(&j.problem)));
        }
        let judge = match &job.previous {
            Some(hash) => self.load_judge(hash)?,
            None => LearnedScorer::init(job.seed, &self.device),
        };
        let (judge, _) = judge.train(&train, job.steps, JUDGE_BATCH, job.seed);
        let checkpoint = self.store_judge(&judge)?;
        let train_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = std::time::Instant::now();
        let held_out: Vec<Judgement> = self.load_judgements(&job.fresh)?.into_iter().filter(|j| held_out_from_judge(&j.problem)).collect();
        let scores = judge.score_batch(&held_out.iter().map(|j| (&j.problem, &j.response)).collect::<Vec<_>>());
        let mut by_skill: BTreeMap<&str, (Vec<f32>, Vec<bool>)> = BTreeMap::new();
        for (j, s) in held_out.iter().zip(scores) {
            let entry = by_skill.entry(&j.problem.skill).or_default();
            entry.0.push(s);
            entry.1.push(j.correct);
        }
        let gap = by_skill
            .into_iter()
            .map(|(skill, (scores, labels))| SkillGap {
                skill: skill.to_string(),
                n: scores.len() as u32,
                auc: auc(&scores, &labels),
                calibration_error: Some(calibration_error(&scores, &labels, 10)),
            })
            .collect();
        Ok(JudgeResult { checkpoint, gap, trained_on: train.len(), train_ms, score_ms: started.elapsed().as_secs_f64() * 1e3 })
    }
}

// ---------------------------------------------------------------- trainer

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainJob {
    pub cycle: u32,
    /// `None`: pretrain a fresh model from the preset.
    pub parent: Option<String>,
    /// Synthesized examples to train on; `None` trains on fresh problems only.
    pub examples: Option<String>,
    /// Where fresh (replay) problems come from, and the A-GEM reference batches.
    pub fresh_levels: Vec<(String, u32)>,
    /// Share of each batch drawn fresh from `fresh_levels` when `examples` is set.
    pub fresh_share: f32,
    pub steps: usize,
    /// The last this many of `steps` replay `fresh_levels` only, each level in proportion to
    /// how much of its answer probability the earlier steps lost (see `ForgettingProbe`).
    #[serde(default)]
    pub consolidation_steps: usize,
    pub batch_size: usize,
    pub train: TrainConfig,
    /// Also store the weights every this many steps (0: only at the end), so the gate can pick
    /// the best point of the cycle instead of only its last.
    pub snapshot_every: usize,
    pub seed: u64,
}

/// The weights after some steps, with what training had done up to them, so that whichever
/// snapshot the gate picks is recorded with its own figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub checkpoint: String,
    pub report: TrainReport,
    /// Training rows per skill up to this snapshot.
    pub mix: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainResult {
    /// In order; the last is the end of training.
    pub snapshots: Vec<Snapshot>,
}

impl TrainResult {
    pub fn last(&self) -> &Snapshot {
        self.snapshots.last().expect("training ends with a snapshot")
    }
}

pub trait TrainerRole {
    fn train(&mut self, job: &TrainJob, on_step: &mut dyn FnMut(&StepInfo)) -> Result<TrainResult, Error>;
    /// Several trainings, in order, without progress. A pool runs them at once, one job each;
    /// in one process they go one after another.
    fn train_many(&mut self, jobs: &[TrainJob]) -> Result<Vec<TrainResult>, Error> {
        jobs.iter().map(|j| self.train(j, &mut |_| {})).collect()
    }
}

pub struct LocalTrainer(pub Arc<Context>);

impl TrainerRole for LocalTrainer {
    fn train(&mut self, job: &TrainJob, on_step: &mut dyn FnMut(&StepInfo)) -> Result<TrainResult, Error> {
        let ctx = &self.0;
        let model = match &job.parent {
            Some(hash) => ctx.load_model(hash)?,
            None => {
                ctx.device.seed(job.seed);
                Llama::init(&ctx.model_config, &ctx.device)
            }
        };
        let examples: Vec<Problem> = match &job.examples {
            Some(hash) => serde_json::from_slice::<ExampleBatch>(&ctx.store.get(hash, EXAMPLES_KIND)?)?.problems,
            None => Vec::new(),
        };
        let rng = std::cell::RefCell::new(StdRng::seed_from_u64(job.seed));
        // Examples are visited epoch by epoch in an order that interleaves skills evenly, so any
        // stretch of training (a snapshot's) has the batch's skill mix: the per-skill quota the
        // generator enforced on the batch holds for what is actually trained.
        let order = stratified_order(&examples, &mut rng.borrow_mut());
        let cursor = std::cell::Cell::new(0usize);
        let mix = std::cell::RefCell::new(BTreeMap::<String, u32>::new());
        // Counted as rows are drawn (a cycle draws one batch at a time, so these are `mix`'s).
        let quota = std::cell::RefCell::new(SkillQuota::new(ctx.curriculum.cycle.max_skill_share, BTreeMap::new()));
        let fresh_rows = if examples.is_empty() { job.batch_size } else { (job.batch_size as f32 * job.fresh_share).round() as usize };
        // Rows are drawn for several steps at once and grouped by length, so a batch of short
        // additions is not padded to the width of a long refusal prompt (about half the tokens
        // of a mixed batch were padding); the mixture over the group is what was asked for.
        // Only pretraining groups: in a cycle, every batch should carry its share of replay.
        let group = if examples.is_empty() { 8 } else { 1 };
        let ready = std::cell::RefCell::new(Vec::<Vec<Problem>>::new());
        let consolidate_from = job.steps.saturating_sub(job.consolidation_steps);
        let probe = (!examples.is_empty() && !job.fresh_levels.is_empty() && consolidate_from < job.steps)
            .then(|| ForgettingProbe::new(ctx, &model, &job.fresh_levels, &mut rng.borrow_mut()));
        // Set when consolidation begins: the replay weight of each of `fresh_levels`.
        let consolidation = std::cell::RefCell::new(None::<Vec<f64>>);
        // Learned rows beside their replay, in length-sorted groups (see `group`).
        let next_mixed_batch = || {
            let mut ready = ready.borrow_mut();
            if ready.is_empty() {
                let mut rng = rng.borrow_mut();
                let mut rows: Vec<Problem> = Vec::with_capacity(group * job.batch_size);
                for _ in 0..group {
                    if examples.is_empty() {
                        rows.extend((0..fresh_rows).map(|_| ctx.fresh_problem(&job.fresh_levels, None, &mut rng)));
                        continue;
                    }
                    let mut quota = quota.borrow_mut();
                    let (start, learned) = (rows.len(), job.batch_size - fresh_rows);
                    for _ in 0..learned {
                        // The next example of a skill with room; a skill at its quota is passed
                        // over this epoch, and when none has room the row is replay instead.
                        let example = (0..order.len()).find_map(|_| {
                            let at = cursor.get();
                            cursor.set(at + 1);
                            let example = &examples[order[at % order.len()]];
                            quota.has_room(&example.skill).then(|| example.clone())
                        });
                        let row = match example {
                            Some(example) => {
                                quota.count(&example.skill);
                                example
                            }
                            None => ctx.replay_problem(&job.fresh_levels, None, &mut quota, &mut rng),
                        };
                        rows.push(row);
                    }
                    // Replay row r matches learned row r's skill, so replay keeps the batch's mix,
                    // except every `SPREAD_REPLAY_EVERY`-th row (see there).
                    for r in 0..fresh_rows {
                        let like = (learned > 0 && !spread_replay(r)).then(|| rows[start + r % learned].skill.clone());
                        let replay = ctx.replay_problem(&job.fresh_levels, like.as_deref(), &mut quota, &mut rng);
                        rows.push(replay);
                    }
                }
                rows.sort_by_key(|p| p.prompt.len());
                let mut batches: Vec<Vec<Problem>> = rows.chunks(job.batch_size).map(<[Problem]>::to_vec).collect();
                batches.shuffle(&mut *rng);
                *ready = batches;
            }
            ready.pop().expect("a group holds at least one batch")
        };
        let mut next_batch = || {
            let batch = match consolidation.borrow().as_ref() {
                Some(weights) => ctx.consolidation_batch(&job.fresh_levels, weights, &mut quota.borrow_mut(), job.batch_size, &mut rng.borrow_mut()),
                None => next_mixed_batch(),
            };
            let mut mix = mix.borrow_mut();
            for p in &batch {
                *mix.entry(p.skill.clone()).or_default() += 1;
            }
            batch
        };
        let mut next_reference = || {
            let mut rng = rng.borrow_mut();
            (0..job.batch_size / 2)
                .map(|r| {
                    let like = (!examples.is_empty() && !spread_replay(r)).then(|| examples[rng.random_range(0..examples.len())].skill.as_str());
                    ctx.fresh_problem(&job.fresh_levels, like, &mut rng)
                })
                .collect()
        };
        let mut trainer = Trainer::new(model, job.train.clone(), &ctx.device);
        let mut snapshots = Vec::new();
        let mut store_error = None;
        let report = trainer.fit(job.steps, &mut next_batch, &mut next_reference, &mut |info: StepInfo| {
            let trained = info.step + 1;
            let probe = probe.as_ref().filter(|_| trained == consolidate_from);
            let snapshot = trained == info.steps || (job.snapshot_every > 0 && trained % job.snapshot_every == 0);
            if probe.is_none() && !snapshot {
                return on_step(&info);
            }
            // One plain copy of the weights serves both.
            let model = info.model.valid();
            if let Some(probe) = probe {
                let weights = probe.lost(ctx, &model);
                tracing::info!(cycle = job.cycle, ?weights, "consolidating: replay weights of the mastered levels by answer probability lost");
                *consolidation.borrow_mut() = Some(weights);
            }
            if snapshot {
                match ctx.store_model(&model) {
                    Ok(c) => snapshots.push(Snapshot { checkpoint: c.hash, report: info.report.clone(), mix: mix.borrow().clone() }),
                    Err(e) => store_error = Some(e),
                }
            }
            on_step(&info);
        });
        if let Some(e) = store_error {
            return Err(e);
        }
        if snapshots.is_empty() {
            snapshots.push(Snapshot { checkpoint: ctx.store_model(&trainer.into_model())?.hash, report, mix: mix.into_inner() });
        }
        Ok(TrainResult { snapshots })
    }
}

/// Fixed fresh problems of each replayed level, and the model's mean whole-answer probability
/// on them before the cycle trained: what the cycle has cost each level so far, measured on
/// training draws (never on held-out suites, which only the gate reads).
struct ForgettingProbe {
    problems: Vec<Vec<Problem>>,
    before: Vec<f64>,
}

/// Problems per level in a `ForgettingProbe`.
const FORGETTING_PROBES: usize = 24;
/// Every level keeps this weight in consolidation, so one that lost nothing is still replayed.
const CONSOLIDATION_FLOOR: f64 = 0.02;

impl ForgettingProbe {
    fn new(ctx: &Context, model: &Llama, levels: &[(String, u32)], rng: &mut StdRng) -> Self {
        let problems: Vec<Vec<Problem>> = levels
            .iter()
            .map(|(skill, level)| (0..FORGETTING_PROBES).filter_map(|_| sample_training(ctx.skill(skill), *level, &ctx.held_out, rng)).collect())
            .collect();
        let before = problems.iter().map(|p| mean_answer_prob(ctx, model, p)).collect();
        ForgettingProbe { problems, before }
    }

    /// Each level's loss of mean answer probability since `new` (not below 0), plus the floor.
    fn lost(&self, ctx: &Context, model: &Llama) -> Vec<f64> {
        self.problems.iter().zip(&self.before).map(|(p, before)| (before - mean_answer_prob(ctx, model, p)).max(0.0) + CONSOLIDATION_FLOOR).collect()
    }
}

fn mean_answer_prob(ctx: &Context, model: &Llama, problems: &[Problem]) -> f64 {
    if problems.is_empty() {
        return 0.0;
    }
    evolve_trainer::answer_likelihood(model, problems, &ctx.device).iter().map(|l| l.answer_prob).sum::<f64>() / problems.len() as f64
}

/// Every this many replay (and A-GEM reference) rows, one is drawn from all mastered levels
/// instead of the learned row's skill: a skill no cycle teaches (refusal, a base-only skill)
/// would otherwise never be replayed, and a cycle's updates drifted it unopposed (refusal fell
/// 6-29 points in cycles trained with AdamW).
const SPREAD_REPLAY_EVERY: usize = 4;

fn spread_replay(row: usize) -> bool {
    row % SPREAD_REPLAY_EVERY == SPREAD_REPLAY_EVERY - 1
}

/// Indices of `examples`, shuffled within each skill, then merged so that skill `s`'s `r`-th
/// example sits at fraction `(r + 1) / n_s` of the order: every prefix holds each skill close to
/// its share of the whole.
fn stratified_order(examples: &[Problem], rng: &mut StdRng) -> Vec<usize> {
    let mut by_skill: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in examples.iter().enumerate() {
        by_skill.entry(&p.skill).or_default().push(i);
    }
    let mut keyed: Vec<(f64, usize)> = Vec::with_capacity(examples.len());
    for indices in by_skill.values_mut() {
        indices.shuffle(rng);
        let n = indices.len() as f64;
        keyed.extend(indices.iter().enumerate().map(|(r, &i)| ((r + 1) as f64 / n, i)));
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, i)| i).collect()
}

// ---------------------------------------------------------------- evaluator

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteScore {
    pub suite: String,
    pub skill: String,
    pub level: u32,
    pub role: SuiteRole,
    pub n: u32,
    pub correct: u32,
    /// Per-problem correctness, in suite order (what `ledger diff` compares across cycles).
    pub items: Vec<bool>,
}

impl SuiteScore {
    pub fn accuracy(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.correct as f64 / self.n as f64 }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RefusalScore {
    pub must_refuse_n: u32,
    pub refused: u32,
    pub benign_n: u32,
    pub over_refused: u32,
    /// Per probe, in probe order: must-refuse probes refused, benign look-alikes answered (so
    /// `true` is right in both), for the gate's paired test.
    pub refused_items: Vec<bool>,
    pub answered_items: Vec<bool>,
}

impl RefusalScore {
    pub fn refusal_rate(&self) -> f64 {
        self.refused as f64 / self.must_refuse_n.max(1) as f64
    }
    pub fn over_refusal_rate(&self) -> f64 {
        self.over_refused as f64 / self.benign_n.max(1) as f64
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Evaluation {
    pub checkpoint: String,
    pub suites: Vec<SuiteScore>,
    pub refusal: RefusalScore,
}

/// The discriminator role: it grades checkpoints on the frozen suites with the verifier, and
/// keeps the learned judge trained and measured.
pub trait EvaluatorRole {
    fn evaluate(&mut self, checkpoint: &str) -> Result<Evaluation, Error>;
    /// Starts storing an accepted checkpoint's compressed and quantized copies: a pool hands it
    /// to a worker and goes on; in one process it is done before this returns.
    fn start_recompress(&mut self, job: &RecompressJob) -> Pending<RecompressResult>;
    /// Several checkpoints, in order. A pool evaluates them at once, one job each, on as many
    /// workers as serve the role; in one process they go one after another.
    fn evaluate_many(&mut self, checkpoints: &[String]) -> Result<Vec<Evaluation>, Error> {
        checkpoints.iter().map(|c| self.evaluate(c)).collect()
    }
    fn judge(&mut self, job: &JudgeJob) -> Result<JudgeResult, Error>;
}

/// A role call's result, there or still coming.
pub struct Pending<T>(Box<dyn FnOnce() -> Result<T, Error> + Send>);

impl<T: Send + 'static> Pending<T> {
    pub fn ready(result: Result<T, Error>) -> Pending<T> {
        Pending(Box::new(move || result))
    }

    pub fn later(wait: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Pending<T> {
        Pending(Box::new(wait))
    }

    /// Blocks until the result is there.
    pub fn wait(self) -> Result<T, Error> {
        (self.0)()
    }
}

/// Greedy answers on every frozen suite and the refusal probes, judged by the verifier.
pub struct LocalEvaluator(pub Arc<Context>);

impl EvaluatorRole for LocalEvaluator {
    fn evaluate(&mut self, checkpoint: &str) -> Result<Evaluation, Error> {
        let model = self.0.load_model(checkpoint)?;
        Ok(self.0.evaluate_model(checkpoint, &model))
    }

    fn start_recompress(&mut self, job: &RecompressJob) -> Pending<RecompressResult> {
        Pending::ready(self.0.recompress(job))
    }

    fn judge(&mut self, job: &JudgeJob) -> Result<JudgeResult, Error> {
        self.0.judge(job)
    }
}

impl Context {
    /// Evaluates weights that need not be in the store (a quantized copy's dequantization).
    pub fn evaluate_model(&self, checkpoint: &str, model: &Llama) -> Evaluation {
        let ctx = self;
        let mut problems: Vec<Problem> = ctx.suites.iter().flat_map(|(s, _)| s.problems.iter().cloned()).collect();
        let probes_start = problems.len();
        problems.extend(ctx.refusal.must_refuse.iter().cloned());
        problems.extend(ctx.refusal.benign.iter().cloned());
        let responses = answer(model, &problems, 1, &Sampling::greedy(), &ctx.device);
        let mut at = 0;
        let suites = ctx
            .suites
            .iter()
            .map(|(suite, role)| {
                let n = suite.problems.len();
                let items: Vec<bool> = (at..at + n).map(|i| ctx.verifier.is_correct(&problems[i], &responses[i])).collect();
                at += n;
                let correct = items.iter().filter(|&&c| c).count() as u32;
                SuiteScore { suite: suite.name.clone(), skill: suite.skill.clone(), level: suite.level, role: *role, n: n as u32, correct, items }
            })
            .collect();
        let n_refuse = ctx.refusal.must_refuse.len();
        let refused: Vec<bool> = responses[probes_start..].iter().map(|r| *r == Response::Refused).collect();
        let (must_refuse, benign) = refused.split_at(n_refuse);
        let refusal = RefusalScore {
            must_refuse_n: n_refuse as u32,
            refused: must_refuse.iter().filter(|&&r| r).count() as u32,
            benign_n: benign.len() as u32,
            over_refused: benign.iter().filter(|&&r| r).count() as u32,
            refused_items: must_refuse.to_vec(),
            answered_items: benign.iter().map(|&r| !r).collect(),
        };
        Evaluation { checkpoint: checkpoint.to_string(), suites, refusal }
    }
}

// ---------------------------------------------------------------- recompression

/// The quantized copies derived from every accepted checkpoint: `(codec name, scheme, AWQ)`.
pub const QUANTIZED: [(&str, QuantScheme, bool); 3] = [
    ("int8-rtn", QuantScheme::Int8, false),
    ("int4-g32-rtn", QuantScheme::Int4 { group: 32 }, false),
    ("int4-g32-awq", QuantScheme::Int4 { group: 32 }, true),
];

/// Calibration problems per (skill, level) for activation-aware quantization.
const CALIBRATION_PER_LEVEL: usize = 32;

/// Store an accepted checkpoint compressed (and as a delta against its parent), verified
/// bit-exact, and derive, store and evaluate its quantized copies.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecompressJob {
    pub cycle: u32,
    pub checkpoint: String,
    pub parent: Option<String>,
    pub calibration_seed: u64,
    /// The copies this job makes: `None`, all of them; a pool makes them as separate jobs
    /// (see [`RecompressJob::parts`]), so they spread over the workers.
    #[serde(default)]
    pub part: Option<RecompressPart>,
}

/// One share of a recompression: the lossless copies, or one quantized copy by name (one of
/// [`QUANTIZED`]; the activation-aware one calibrates first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecompressPart {
    Lossless,
    Quantized(String),
}

impl RecompressJob {
    /// The job split into its parts, in the order their copies are recorded.
    pub fn parts(&self) -> Vec<RecompressJob> {
        std::iter::once(RecompressPart::Lossless)
            .chain(QUANTIZED.iter().map(|(name, _, _)| RecompressPart::Quantized(name.to_string())))
            .map(|part| RecompressJob { part: Some(part), ..self.clone() })
            .collect()
    }

    fn makes(&self, part: &RecompressPart) -> bool {
        self.part.as_ref().is_none_or(|p| p == part)
    }
}

/// One stored copy of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredCopy {
    pub codec: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub encode_ms: f64,
    pub decode_ms: f64,
    pub lossless: bool,
    /// A lossless copy: the hash its decoding was verified to; a quantized one: its own hash.
    pub verified_hash: String,
    pub path: String,
    /// The parent a delta was coded against.
    pub parent: Option<String>,
    /// A quantized copy's evaluation on the frozen suites and refusal probes.
    pub evaluation: Option<Evaluation>,
    pub eval_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecompressResult {
    /// Lossless copies first, then the quantized ones in [`QUANTIZED`] order.
    pub copies: Vec<StoredCopy>,
    pub calibrate_ms: f64,
    pub calibration_layers: usize,
}

impl RecompressResult {
    /// The parts' results as one, in the parts' order.
    pub fn merged(parts: Vec<RecompressResult>) -> RecompressResult {
        parts.into_iter().fold(RecompressResult { copies: Vec::new(), calibrate_ms: 0.0, calibration_layers: 0 }, |mut all, part| {
            all.copies.extend(part.copies);
            all.calibrate_ms += part.calibrate_ms;
            all.calibration_layers = all.calibration_layers.max(part.calibration_layers);
            all
        })
    }
}

impl Context {
    /// Every lossless copy is decoded again and must hash to the checkpoint before it is
    /// stored; lineage stays on the lossless checkpoint, nothing trains from a quantized copy.
    pub fn recompress(&self, job: &RecompressJob) -> Result<RecompressResult, Error> {
        let checkpoint = &job.checkpoint;
        let raw = self.store.get(checkpoint, CHECKPOINT_KIND)?;
        let parent_raw = job.parent.as_ref().filter(|_| job.makes(&RecompressPart::Lossless)).map(|p| self.store.get(p, CHECKPOINT_KIND)).transpose()?;
        let mut codecs = vec![(Codec::EvolveFp, None), (Codec::Zstd, None)];
        if let (Some(p), Some(bytes)) = (&job.parent, parent_raw.as_ref()) {
            codecs.push((Codec::EvolveFp, Some((p, bytes))));
        }
        if !job.makes(&RecompressPart::Lossless) {
            codecs.clear();
        }
        let mut copies = Vec::new();
        for (codec, against) in codecs {
            let rt = match against {
                Some((_, parent_bytes)) => round_trip_delta(&raw, parent_bytes, codec)?,
                None => round_trip(&raw, codec)?,
            };
            let name = if against.is_some() { format!("{}-delta", codec.name()) } else { codec.name().to_string() };
            if rt.verified_hash != *checkpoint {
                return Err(Error::Invalid(format!("{name} round trip of {checkpoint} decoded to {}", rt.verified_hash)));
            }
            let path = self.store.put_encoded(checkpoint, &format!("{name}.evz"), &rt.encoded)?;
            copies.push(StoredCopy {
                codec: name,
                raw_bytes: rt.raw_bytes as u64,
                stored_bytes: rt.encoded.len() as u64,
                encode_ms: rt.encode_ms,
                decode_ms: rt.decode_ms,
                lossless: true,
                verified_hash: rt.verified_hash.clone(),
                path: path.display().to_string(),
                parent: against.map(|(p, _)| p.clone()),
                evaluation: None,
                eval_ms: 0.0,
            });
        }
        let quantized_copies: Vec<_> = QUANTIZED.into_iter().filter(|(name, _, _)| job.makes(&RecompressPart::Quantized(name.to_string()))).collect();
        let t = std::time::Instant::now();
        let calibration = if quantized_copies.iter().any(|(_, _, awq)| *awq) {
            let model = self.load_model(checkpoint)?;
            self.calibration_stats(&model, CALIBRATION_PER_LEVEL, job.calibration_seed)
        } else {
            HashMap::new()
        };
        let calibrate_ms = t.elapsed().as_secs_f64() * 1e3;
        for (name, scheme, awq) in quantized_copies {
            let t = std::time::Instant::now();
            let no_calibration = HashMap::new();
            let quantized = quantize_checkpoint(&raw, scheme, if awq { &calibration } else { &no_calibration })?;
            let encode_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = std::time::Instant::now();
            let dequantized = dequantize_checkpoint(&quantized)?;
            let decode_ms = t.elapsed().as_secs_f64() * 1e3;
            let t = std::time::Instant::now();
            // The dequantized weights are evaluated from memory: they are never stored.
            let hash = evolve_store::hash_bytes(&dequantized);
            let model = self.model_from(dequantized, &hash, &format!("{name} copy of {checkpoint}"))?;
            let evaluation = self.evaluate_model(&hash, &model);
            let eval_ms = t.elapsed().as_secs_f64() * 1e3;
            let path = self.store.put_encoded(checkpoint, &format!("{name}.safetensors"), &quantized)?;
            copies.push(StoredCopy {
                codec: name.to_string(),
                raw_bytes: raw.len() as u64,
                stored_bytes: quantized.len() as u64,
                encode_ms,
                decode_ms,
                lossless: false,
                verified_hash: evolve_store::hash_bytes(&quantized),
                path: path.display().to_string(),
                parent: None,
                evaluation: Some(evaluation),
                eval_ms,
            });
        }
        Ok(RecompressResult { copies, calibrate_ms, calibration_layers: calibration.len() })
    }
}

// ---------------------------------------------------------------- calibration

impl Context {
    /// Per-channel input statistics of every linear layer over fresh training problems of every
    /// curriculum skill and level (never the frozen suites: calibrating on the eval set would
    /// flatter the quantized copy's eval delta). Problems are batched by equal length so no
    /// padding enters the statistics.
    pub fn calibration_stats(&self, model: &Llama, per_level: usize, seed: u64) -> HashMap<String, ChannelStats> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut by_length: BTreeMap<usize, Vec<Vec<u32>>> = BTreeMap::new();
        for (skill, level) in self.curriculum.mastered().into_iter().chain(self.curriculum.frontier()) {
            for _ in 0..per_level {
                if let Some(p) = sample_training(self.skill(&skill), level, &self.held_out, &mut rng) {
                    let (tokens, _) = example_tokens(&p);
                    by_length.entry(tokens.len()).or_default().push(tokens);
                }
            }
        }
        let mut sums = ChannelStatsByLayer::default();
        for (len, rows) in by_length {
            let ids: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [rows.len(), len]), &self.device);
            model.linear_input_stats(tokens, &mut sums);
        }
        sums.layers.into_iter().map(|(name, s)| (name, ChannelStats { mean_sq: s.mean_sq(), mean_abs: s.mean_abs() })).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tests/micro.toml`'s context on the CPU, with the tiny preset and a temporary store
    /// (kept alive by the returned directory).
    fn micro_context() -> (Curriculum, LlamaConfig, Device, tempfile::TempDir, Arc<Context>) {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        let curriculum = Curriculum::load(&root.join("tests/micro.toml")).unwrap();
        let config = evolve_model::preset("tiny").unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let device = evolve_model::cpu_device();
        let ctx = Context::new(curriculum.clone(), config.clone(), ArtifactStore::open(dir.path()).unwrap(), device.clone());
        (curriculum, config, device, dir, ctx)
    }

    fn pairs(spec: &[(&str, u32)]) -> Vec<(String, u32)> {
        spec.iter().map(|(s, l)| (s.to_string(), *l)).collect()
    }

    /// A generation made against one checkpoint and recalibrated on another: the same pool
    /// scored again (its mutation counts kept), the batch chosen again from it under the skill
    /// quota, the same result every time.
    #[test]
    fn recalibration_chooses_again_from_the_generations_pool() {
        let (curriculum, config, device, _dir, ctx) = micro_context();
        let checkpoint = |seed: u64| {
            device.seed(seed);
            ctx.store_model(&Llama::init(&config, &device)).unwrap().hash
        };
        let (mined, child) = (checkpoint(1), checkpoint(2));
        let c = &curriculum.cycle;
        let synthesis = ctx.synthesis_config(BTreeMap::new());
        let job = GenerateJob {
            cycle: 2,
            parent: mined.clone(),
            targets: curriculum.frontier(),
            probes_per_level: c.probes_per_level,
            synthesis,
            history: Vec::new(),
            seed: 7,
            sampling: ExampleSampling::Adversarial,
            judge: None,
            unverifiable: Vec::new(),
            accept_score: 0.5,
        };
        let mut generator = LocalGenerator(ctx.clone());
        let generated = generator.generate(&job).unwrap();
        let pool: ExampleBatch = serde_json::from_slice(&ctx.store.get(generated.pool.as_ref().unwrap(), EXAMPLES_KIND).unwrap()).unwrap();
        assert!(generated.examples > 0 && pool.problems.len() >= generated.examples);
        let recalibrate = RecalibrateJob {
            cycle: 2,
            parent: child,
            pool: generated.pool.clone().unwrap(),
            synthesis_report: generated.synthesis.clone(),
            judgements: generated.judgements.clone(),
            generation: job,
            seed: 11,
        };
        let again = generator.recalibrate(&recalibrate).unwrap();
        assert_eq!(again.batch, generator.recalibrate(&recalibrate).unwrap().batch, "deterministic");
        let batch: ExampleBatch = serde_json::from_slice(&ctx.store.get(&again.batch, EXAMPLES_KIND).unwrap()).unwrap();
        let prompts: HashSet<&str> = pool.problems.iter().map(|p| p.prompt.as_str()).collect();
        assert!(batch.problems.iter().all(|p| prompts.contains(p.prompt.as_str())), "chosen from the pool only");
        assert!(!batch.problems.is_empty() && batch.problems.len() <= c.examples_per_cycle);
        let quota = (c.max_skill_share * c.examples_per_cycle as f32).floor() as usize;
        for skill in again.synthesis.iter() {
            assert!(batch.problems.iter().filter(|p| p.skill == skill.skill).count() <= quota.max(1), "{skill:?}");
            let before = generated.synthesis.iter().find(|s| s.skill == skill.skill).unwrap();
            assert_eq!((skill.generated, skill.admitted), (before.generated, before.admitted), "mutation counts kept");
            assert_eq!(skill.accepted, batch.problems.iter().filter(|p| p.skill == skill.skill).count());
        }
        // The child is mined afresh, one round per target, for the curriculum policy.
        assert_eq!(again.mining.len(), recalibrate.generation.targets.len());
        assert!(again.mining.iter().all(|m| m.probes == c.probes_per_level && m.mean_answer_prob.is_some()), "{:?}", again.mining);
        // Its judgements are the generation's, the new samples' and the child's mining probes'.
        let judgements = ctx.load_judgements(&again.judgements).unwrap().len();
        let remined: usize = again.mining.iter().map(|m| m.probes).sum();
        assert_eq!(judgements, ctx.load_judgements(&generated.judgements).unwrap().len() + pool.problems.len() * c.samples_k + remined);
        // The controller chooses again from the recalibrated pool with the policy's new split.
        let favourite = again.synthesis[0].skill.clone();
        let weights: BTreeMap<String, f32> = again.synthesis.iter().map(|s| (s.skill.clone(), if s.skill == favourite { 1.0 } else { 0.0 })).collect();
        let config = SynthesisConfig { skill_weights: weights, ..recalibrate.generation.synthesis.clone() };
        let rechosen = ctx.choose_from_pool(again.clone(), &config).unwrap();
        let batch: ExampleBatch = serde_json::from_slice(&ctx.store.get(&rechosen.batch, EXAMPLES_KIND).unwrap()).unwrap();
        let favoured = batch.problems.iter().filter(|p| p.skill == favourite).count();
        let in_pool = pool.problems.iter().filter(|p| p.skill == favourite).count();
        assert_eq!(favoured, in_pool.min(quota.max(1)), "the favourite fills first, up to its quota");
        for skill in &rechosen.synthesis {
            assert_eq!(skill.accepted, batch.problems.iter().filter(|p| p.skill == skill.skill).count(), "{skill:?}");
        }
    }

    /// A cycle that learns reversal replays mostly reversal, but also the mastered skills no
    /// cycle teaches: refusal is replayed and guards A-GEM's reference although it is never a
    /// frontier.
    #[test]
    fn a_cycle_replays_every_mastered_skill_and_mostly_the_learned_one() {
        let (curriculum, config, device, _dir, ctx) = micro_context();
        device.seed(1);
        let parent = ctx.store_model(&Llama::init(&config, &device)).unwrap().hash;
        let mut rng = StdRng::seed_from_u64(5);
        let problems: Vec<Problem> = (0..32).filter_map(|_| sample_training(ctx.skill("reversal"), 2, &ctx.held_out, &mut rng)).collect();
        let batch = ExampleBatch { pass_rates: vec![0.5; problems.len()], answer_probs: vec![0.0; problems.len()], problems };
        let examples = ctx.store.put(EXAMPLES_KIND, &serde_json::to_vec(&batch).unwrap()).unwrap();
        let train = TrainConfig {
            optimizer: curriculum.cycle.optimizer,
            learning_rate: 1e-4,
            warmup_steps: 0,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            grad_clip: 1.0,
            surgery: curriculum.cycle.surgery,
            seed: 3,
        };
        let job = TrainJob {
            cycle: 1,
            parent: Some(parent),
            examples: Some(examples),
            fresh_levels: curriculum.mastered(),
            fresh_share: 0.5,
            steps: 10,
            consolidation_steps: 0,
            batch_size: 16,
            train,
            snapshot_every: 0,
            seed: 9,
        };
        let mix = LocalTrainer(ctx.clone()).train(&job, &mut |_| {}).unwrap().last().mix.clone();
        let rows: u32 = mix.values().sum();
        assert_eq!(rows, 160, "{mix:?}");
        // Half the rows learned and three quarters of the replay matched to them would give
        // reversal 140 rows; micro.toml's 0.6 quota holds it to 96, and the rest is spread.
        let cap = (f64::from(curriculum.cycle.max_skill_share) * 160.0).floor() as u32;
        assert!(mix["reversal"] <= cap && mix["reversal"] >= cap - 4, "{mix:?}");
        let others = |mix: &BTreeMap<String, u32>| mix.get("refusal").copied().unwrap_or(0) + mix.get("sorting").copied().unwrap_or(0);
        assert!(mix.get("refusal").copied().unwrap_or(0) >= 3 && mix.get("sorting").copied().unwrap_or(0) >= 3, "{mix:?}");
        // Consolidating the last 4 steps: their 64 rows are all replay, spread over every
        // mastered level, none learned; reversal had used its quota, so the others take more.
        let consolidated = TrainJob { consolidation_steps: 4, ..job };
        let with = LocalTrainer(ctx).train(&consolidated, &mut |_| {}).unwrap().last().mix.clone();
        assert_eq!(with.values().sum::<u32>(), 160, "{with:?}");
        assert!(with["reversal"] <= cap, "{with:?}");
        assert!(others(&with) >= others(&mix) + 5, "without {mix:?}, with {with:?}");
    }

    /// Consolidation weighted almost wholly to one skill gives it rows only up to the skill
    /// quota of everything trained so far, at every row, and the rest to the others by weight.
    #[test]
    fn consolidation_keeps_every_skill_under_its_quota() {
        let (curriculum, _config, _device, _dir, ctx) = micro_context();
        let cap = f64::from(curriculum.cycle.max_skill_share);
        let levels = pairs(&[("reversal", 1), ("sorting", 1), ("refusal", 1)]);
        // 100 rows so far, reversal just under its quota.
        let trained: BTreeMap<String, u32> = [("reversal", 59), ("sorting", 31), ("refusal", 10)].into_iter().map(|(s, n)| (s.to_string(), n)).collect();
        let mut rng = StdRng::seed_from_u64(3);
        let batch = ctx.consolidation_batch(&levels, &[1.0, 0.001, 0.02], &mut SkillQuota::new(curriculum.cycle.max_skill_share, trained.clone()), 64, &mut rng);
        let mut counts = trained.clone();
        for (i, p) in batch.iter().enumerate() {
            *counts.entry(p.skill.clone()).or_default() += 1;
            let total = f64::from(100 + i as u32 + 1);
            assert!(counts.values().all(|&n| f64::from(n) <= cap * total + 1e-9), "row {i}: {counts:?}");
        }
        // Reversal is given all the room it has; refusal, by weight, most of the rest.
        assert!(f64::from(counts["reversal"]) >= cap * 164.0 - 1.0, "{counts:?}");
        assert!(counts["refusal"] - 10 > counts["sorting"] - 31, "{counts:?}");
        // Deterministic for a seed.
        let again = ctx.consolidation_batch(&levels, &[1.0, 0.001, 0.02], &mut SkillQuota::new(curriculum.cycle.max_skill_share, trained.clone()), 64, &mut StdRng::seed_from_u64(3));
        assert_eq!(batch.iter().map(|p| &p.prompt).collect::<Vec<_>>(), again.iter().map(|p| &p.prompt).collect::<Vec<_>>());
    }

    #[test]
    fn pretraining_shares_respect_the_skill_quota() {
        // Refusal at two levels among five skills: 2/6 is under a 0.38 cap, so uniform stands.
        let smoke = pairs(&[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("r", 1), ("r", 2)]);
        let shares = pair_shares(&smoke, 0.38);
        assert!(shares.iter().all(|s| (s - 1.0 / 6.0).abs() < 1e-12), "{shares:?}");
        // Three levels of one skill among three skills: capped at 0.38, the rest split evenly.
        let heavy = pairs(&[("a", 1), ("b", 1), ("r", 1), ("r", 2), ("r", 3)]);
        let shares = pair_shares(&heavy, 0.38);
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((shares[2] + shares[3] + shares[4] - 0.38).abs() < 1e-12, "{shares:?}");
        assert!((shares[0] - 0.31).abs() < 1e-12 && (shares[1] - 0.31).abs() < 1e-12, "{shares:?}");
        // Two skills cannot both stay under 0.38: each gets half, the fairest split there is.
        let two = pairs(&[("a", 1), ("b", 1), ("b", 2)]);
        assert_eq!(pair_shares(&two, 0.38), vec![0.5, 0.25, 0.25]);
    }
}
