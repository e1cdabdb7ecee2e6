//! The run loop: base, then cycles, each step recorded as it finishes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use evolve_compress::Codec;
use evolve_curriculum::{BaseSource, Curriculum, ExampleSampling, PolicyKind};
use evolve_ledger::{
    CheckpointRecord, CompressionExtras, CompressionRecord, CycleExtras, CycleOutcome, CycleRow, CycleStatus, EvalItems, ExampleStats, Ledger,
    NewRun, PolicyChoice, RunInfo, ProxyGapRecord, QuantizedEval, RefusalResult, RoleUsage, RunId, RunStatus, StepRecord, SuiteResult, SurgeryStats, now_iso,
};
use evolve_store::ArtifactStore;
use evolve_trainer::{OptimizerKind, StepInfo, Surgery, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tracing::info;

use crate::budget::{Budget, DeviceChoice};
use crate::gate::decide;
use crate::control::RunDescription;
use crate::lock::RunLock;
use crate::pool::{Evaluated, Pool, PoolOptions, RemoteRoles};
use crate::resume::{ResumePoint, resume_point};
use crate::progress::{Choice, CurriculumPolicy, skill_weights};
use crate::roles::{
    CHECKPOINT_KIND, Context, EvaluatorRole, Evaluation, GenerateJob, GenerateResult, GeneratorRole, JudgeJob, JudgeResult, LocalEvaluator,
    LocalGenerator, LocalTrainer, Pending, QUANTIZED, RecalibrateJob, RecompressJob, RecompressResult, Snapshot, SuiteRole, TrainJob, TrainResult, TrainerRole,
};
use crate::Error;

pub struct RunOptions {
    pub curriculum_path: PathBuf,
    pub ledger_path: PathBuf,
    pub budget: Budget,
    /// Overrides the curriculum's `cycle.max_cycles`.
    pub cycles: Option<u32>,
    pub progress: bool,
    /// Which device of the budget's kind (`cuda:N`); `None` takes the budget's default.
    pub device: Option<DeviceChoice>,
    /// Overrides of the curriculum file (an ablation arm).
    pub variant: Variant,
    /// Start from this stored checkpoint instead of pretraining a base.
    pub base: Option<String>,
    /// Store compressed and quantized copies of accepted checkpoints (off in ablation arms,
    /// which compare training, not storage).
    pub recompress: bool,
    /// Whether to resume an interrupted run or start a new one.
    pub start: StartMode,
    /// Where the roles run: in this process (one device) or in a worker pool.
    pub pool: PoolOptions,
}

/// What `evolve start` does with a run of the ledger that was interrupted (its controller died:
/// status still `running`, run lock free).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartMode {
    /// Resume the newest interrupted run of the same curriculum (same curriculum hash) if there
    /// is one, else start a new run.
    #[default]
    Auto,
    /// Resume the interrupted run of this curriculum; an error if there is none.
    Resume,
    /// Always start a new run.
    Fresh,
}

/// Curriculum settings an ablation varies; `None` keeps the file's value.
#[derive(Clone, Debug, Default)]
pub struct Variant {
    pub sampling: Option<ExampleSampling>,
    pub surgery: Option<Surgery>,
    pub policy: Option<PolicyKind>,
    /// The run's seed (generation, training order, initialisation of anything pretrained).
    pub seed: Option<u64>,
}

/// What a run did to the suites, for ablations: the base, the last accepted checkpoint, and per
/// trained cycle the mastered-suite drop of the gated candidate against its parent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcomes {
    pub base_frontier: f64,
    pub final_frontier: f64,
    pub base_refusal: f64,
    pub final_refusal: f64,
    pub candidate_forgetting: Vec<f64>,
    pub tokens_trained: u64,
}

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub run_id: RunId,
    pub cycles: u32,
    pub accepted: u32,
    pub last_accepted: String,
    pub seconds: f64,
    pub stop_reason: String,
    pub base: String,
    #[serde(skip)]
    pub outcomes: Outcomes,
}

const WORKER: &str = "local-0";

/// How a cycle ended.
enum CycleEnd {
    /// The new checkpoint and its evaluation.
    Accepted((String, Evaluation)),
    Rejected,
    /// The generator had nothing to train on; the run stops here.
    NothingToLearn(String),
}

/// Runs a whole evolution: pretrain the base (cycle 0), then cycles until the cycle limit or the
/// budget's duration is reached.
pub async fn run(options: RunOptions) -> Result<RunSummary, Error> {
    let mut curriculum = Curriculum::load(&options.curriculum_path)?;
    let v = &options.variant;
    curriculum.cycle.sampling = v.sampling.unwrap_or(curriculum.cycle.sampling);
    curriculum.cycle.surgery = v.surgery.unwrap_or(curriculum.cycle.surgery);
    curriculum.cycle.policy = v.policy.unwrap_or(curriculum.cycle.policy);
    curriculum.seed = v.seed.unwrap_or(curriculum.seed);
    let device = options.budget.device_with(options.device)?;
    let model_config = evolve_model::preset(&curriculum.preset).ok_or_else(|| {
        Error::Invalid(format!(
            "curriculum {}: field `preset`: unknown preset `{}`; valid: {}",
            options.curriculum_path.display(),
            curriculum.preset,
            evolve_model::preset_names().join(", ")
        ))
    })??;
    options.pool.check()?;
    // One run per ledger: held until this function returns or the process dies.
    let _lock = RunLock::acquire(&options.ledger_path)?;
    let ledger = Ledger::open(&options.ledger_path).await?;
    let artifacts = options.ledger_path.parent().filter(|p| !p.as_os_str().is_empty()).map(|p| p.join("artifacts")).unwrap_or_else(|| PathBuf::from("artifacts"));
    let store = ArtifactStore::open(&artifacts)?;
    let (run_id, origin, seed) = match choose_run(&ledger, &curriculum, &options).await? {
        Chosen::Resume(run) => {
            let cycles = ledger.cycles(Some(run.run_id)).await?;
            let batches = ledger.example_batches(run.run_id).await?;
            let point = resume_point(&cycles, &batches).map_err(|why| {
                Error::Invalid(format!("ledger {}: run {} cannot be resumed: {why}; start a new run with --fresh", options.ledger_path.display(), run.run_id))
            })?;
            let spent = ledger.run_elapsed_seconds(run.run_id).await?;
            info!(run_id = run.run_id, next_cycle = point.next_cycle, interrupted = ?point.interrupted_cycle, "resuming the interrupted run");
            (run.run_id, Origin::Resume { point, spent: std::time::Duration::from_secs_f64(spent) }, run.seed)
        }
        Chosen::New(from) => {
            // A continuing run mixes its base checkpoint into the seed, so consecutive nightly
            // runs of one curriculum draw different probes; resumes read it back from the ledger.
            let continue_from = options.base.clone().or_else(|| from.as_ref().and_then(|row| row.checkpoint_hash.clone()));
            let seed = match (&options.base, &continue_from) {
                (None, Some(hash)) => curriculum.seed ^ hash.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0),
                _ => curriculum.seed,
            };
            let run_id = ledger
                .begin_run(&NewRun {
                    curriculum: curriculum.name.clone(),
                    curriculum_hash: curriculum.hash(),
                    budget: options.budget.spec.clone(),
                    preset: curriculum.preset.clone(),
                    seed,
                    config_json: serde_json::to_string(&curriculum).expect("serializable curriculum"),
                })
                .await?;
            (run_id, Origin::New { base: continue_from }, seed)
        }
    };
    curriculum.seed = seed;
    // After the run is chosen: its curriculum hash is the file's (`auto`), so the same command
    // resumes it; the count follows from the same budget.
    curriculum = crate::plan::resolved(&curriculum, &options.budget);
    info!(candidates = curriculum.cycle.candidates.get(), "candidates per cycle");
    info!(run_id, curriculum = %curriculum.name, ledger = %options.ledger_path.display(), "run started");
    let policy = CurriculumPolicy::new(curriculum.cycle.policy, f64::from(curriculum.cycle.exploration), &curriculum.frontier());
    // Everything from here on fails the run row when it fails, a pool whose workers never
    // started included: the row must not stay `running`.
    let result = async {
        let pool = if options.budget.count > 1 || options.pool.listen.is_some() || options.pool.launcher != crate::pool::Launcher::Local {
            let artifacts = std::path::absolute(store.root()).map_err(|e| Error::Invalid(format!("{}: {e}", store.root().display())))?;
            let placements = crate::plan::placements(&options.budget, &crate::plan::cycle_work(&model_config, &curriculum), curriculum.cycle.candidates.get());
            let logs = artifacts.parent().map(|p| p.join("workers")).unwrap_or_else(|| PathBuf::from("workers"));
            let cpu = options.budget.is_cpu();
            let run = RunDescription { curriculum: curriculum.clone(), artifacts };
            let pool = Pool::start(&options.pool, run, &placements, |d| if cpu { "cpu".into() } else { format!("cuda:{d}") }, logs).await?;
            info!(url = %pool.plane.url(), workers = pool.placements.len(), "worker pool started");
            Some(pool)
        } else {
            None
        };
        let ctx = Context::new(curriculum, model_config, store, device);
        let (generator, trainer, evaluator): (Box<dyn GeneratorRole>, Box<dyn TrainerRole + Send>, Box<dyn EvaluatorRole + Send>) = match &pool {
            Some(pool) => (Box::new(RemoteRoles(pool.plane.clone())), Box::new(RemoteRoles(pool.plane.clone())), Box::new(RemoteRoles(pool.plane.clone()))),
            None => (Box::new(LocalGenerator(ctx.clone())), Box::new(LocalTrainer(ctx.clone())), Box::new(LocalEvaluator(ctx.clone()))),
        };
        let mut controller = Controller {
            pool,
            policy,
            judge: None,
            judgements: Vec::new(),
            previous_start: None,
            next_generation: None,
            last_cycle: 0,
            deferred_recompression: None,
            recompressing: None,
            recompress: options.recompress,
            outcomes: Outcomes::default(),
            ledger: ledger.clone(),
            run_id,
            generator,
            trainer,
            evaluator,
            ctx,
            budget: options.budget.clone(),
            progress: options.progress,
            usage: Mutex::default(),
        };
        let result = controller.evolve(options.cycles, origin).await;
        // Workers stop (and are reaped) first: one killed in the middle of a write left its temp
        // file, which only a store opened after its death would remove; with every writer gone,
        // the run leaves no half-written file behind.
        drop(controller.pool.take());
        if let Err(e) = controller.ctx.store.remove_stale_temp_files() {
            tracing::warn!("artifact store: stale temp files not removed: {e}");
        }
        result
    }
    .await;
    match &result {
        Ok(summary) => ledger.finish_run(run_id, RunStatus::Finished, Some(&summary.stop_reason)).await?,
        Err(e) => ledger.finish_run(run_id, RunStatus::Failed, Some(&e.to_string())).await?,
    }
    ledger.close().await;
    result
}

struct Controller {
    /// The worker pool, when the roles run in worker processes.
    pool: Option<Pool>,
    ledger: Ledger,
    run_id: RunId,
    ctx: Arc<Context>,
    generator: Box<dyn GeneratorRole>,
    trainer: Box<dyn TrainerRole + Send>,
    evaluator: Box<dyn EvaluatorRole + Send>,
    budget: Budget,
    progress: bool,
    /// Per cycle: when it started and the busy seconds of each role so far (from the steps).
    usage: Mutex<BTreeMap<u32, (Instant, BTreeMap<String, f64>)>>,
    policy: CurriculumPolicy,
    /// The learned judge's current checkpoint and every judgement batch it trains on.
    judge: Option<String>,
    /// In a pool, an accepted cycle's recompression starts with the next cycle (on a worker,
    /// while that cycle generates and trains) and is recorded before the next commit:
    /// `(cycle, checkpoint, parent, its evaluation)` until it starts, then the job under way.
    deferred_recompression: Option<(u32, String, Option<String>, Evaluation)>,
    recompressing: Option<Recompression>,
    judgements: Vec<String>,
    /// The checkpoint the last cycle run started from: the next cycle's examples are mined
    /// against it. `None` before cycle 1.
    previous_start: Option<String>,
    /// The next cycle's generation, started while this cycle trains.
    next_generation: Option<NextGeneration>,
    /// The run's last cycle (no generation is started past it).
    last_cycle: u32,
    recompress: bool,
    outcomes: Outcomes,
}

fn mean_accuracy(e: &Evaluation, role: SuiteRole) -> f64 {
    let a: Vec<f64> = e.suites.iter().filter(|s| s.role == role).map(|s| s.accuracy()).collect();
    if a.is_empty() { 0.0 } else { a.iter().sum::<f64>() / a.len() as f64 }
}

/// A cycle's generation, started (see `Controller::start_generation`): its job, the policy's
/// choices it follows (recorded with the cycle), and its result to come.
struct NextGeneration {
    job: GenerateJob,
    policy: Vec<PolicyChoice>,
    pending: Pending<GenerateResult>,
    /// In a pool, the recalibration on the accepted child, queued as soon as the gate accepted
    /// it (while the commit waits for the previous cycle's recompression).
    recalibration: Option<EarlyRecalibration>,
}

struct EarlyRecalibration {
    /// The checkpoint it recalibrates on: the next cycle's parent.
    on: String,
    queued_at: String,
    pending: Pending<GenerateResult>,
}

/// Cycle `cycle`'s job recalibrating on `parent` the batch `generation` made against `mined`:
/// none when the two are one checkpoint (the previous cycle was rejected) or the generation kept
/// no pool (uniform sampling).
fn recalibration_job(c: &Curriculum, cycle: u32, parent: &str, mined: &str, generated: &GenerateResult, generation: &GenerateJob) -> Option<RecalibrateJob> {
    let pool = generated.pool.clone().filter(|_| mined != parent)?;
    Some(RecalibrateJob {
        cycle,
        parent: parent.to_string(),
        pool,
        synthesis_report: generated.synthesis.clone(),
        judgements: generated.judgements.clone(),
        generation: generation.clone(),
        seed: cycle_seed(c.seed, cycle, 6),
    })
}

/// A recompression under way: its job, the lossless evaluation its copies are compared with,
/// and its result to come.
struct Recompression {
    job: RecompressJob,
    lossless: Evaluation,
    started: String,
    pending: Pending<RecompressResult>,
}

impl Controller {
    async fn evolve(&mut self, cycles: Option<u32>, origin: Origin) -> Result<RunSummary, Error> {
        let started = Instant::now();
        let max_cycles = cycles.unwrap_or(self.ctx.curriculum.cycle.max_cycles);
        self.last_cycle = max_cycles;
        // Wall time the run had already spent before this process (a resumed run's budget).
        let mut spent_before = std::time::Duration::ZERO;
        let (base_hash, base_eval, mut parent, mut history, first, mut accepted) = match origin {
            Origin::New { base } => {
                let (hash, eval) = self.base(base.as_deref()).await?;
                (hash.clone(), eval.clone(), (hash, eval), Vec::new(), 1, 0)
            }
            Origin::Resume { point, spent } => {
                spent_before = spent;
                if let Some(reason) = point.ended {
                    info!(run_id = self.run_id, %reason, "the interrupted run had already ended");
                    let last = point.parent.clone().unwrap_or_default();
                    let base = point.base.clone().unwrap_or_default();
                    let cycles = point.next_cycle.saturating_sub(1);
                    return Ok(RunSummary { run_id: self.run_id, cycles, accepted: point.accepted, last_accepted: last, seconds: 0.0, stop_reason: reason, base, outcomes: self.outcomes.clone() });
                }
                self.resumed(point, max_cycles).await?
            }
        };
        self.outcomes.base_frontier = mean_accuracy(&base_eval, SuiteRole::Frontier);
        self.outcomes.base_refusal = base_eval.refusal.refusal_rate();
        let mut done = first.saturating_sub(1);
        let mut stop_reason = format!("cycle limit ({max_cycles}) reached");
        for cycle in first..=max_cycles {
            if let Some(limit) = self.budget.duration
                && spent_before + started.elapsed() >= limit
            {
                stop_reason = format!("budget duration {:?} spent", limit);
                break;
            }
            match self.cycle(cycle, &parent, &base_eval, &mut history).await {
                Ok(CycleEnd::Accepted(child)) => {
                    accepted += 1;
                    parent = child;
                }
                Err(Error::Alarm(reason)) => {
                    // The cycle is already recorded as failed with the alarm's reason.
                    let _ = self.flush_recompression().await;
                    return Err(Error::Alarm(reason));
                }
                Ok(CycleEnd::Rejected) => {}
                Ok(CycleEnd::NothingToLearn(reason)) => {
                    done = cycle;
                    stop_reason = reason;
                    break;
                }
                Err(e) => {
                    self.fail_cycle(cycle, &parent.0, &e.to_string()).await;
                    let _ = self.flush_recompression().await;
                    return Err(e);
                }
            }
            done = cycle;
        }
        self.flush_recompression().await?;
        self.outcomes.final_frontier = mean_accuracy(&parent.1, SuiteRole::Frontier);
        self.outcomes.final_refusal = parent.1.refusal.refusal_rate();
        Ok(RunSummary {
            run_id: self.run_id,
            cycles: done,
            accepted,
            last_accepted: parent.0,
            seconds: started.elapsed().as_secs_f64(),
            stop_reason,
            base: base_hash,
            outcomes: self.outcomes.clone(),
        })
    }

    /// Rebuilds what the uninterrupted run would hold in memory at the resume point, from what
    /// its ledger committed: the base's and the parent's evaluations (evaluation is
    /// deterministic, and the gate needs per-problem results the ledger does not keep for
    /// refusal probes), the history of example batches, the curriculum policy's observations,
    /// the learned judge and its judgement batches, and a complete recompression of the last
    /// accepted checkpoint. Returns the loop's state.
    #[allow(clippy::type_complexity)]
    async fn resumed(&mut self, point: ResumePoint, max_cycles: u32) -> Result<(String, Evaluation, (String, Evaluation), Vec<String>, u32, u32), Error> {
        let Some(base_hash) = point.base.clone() else {
            // The base itself was interrupted: make it again (same seed, same weights; a
            // continuing run finds the same last accepted checkpoint, this run having committed
            // nothing).
            let reuse = match self.ctx.curriculum.pretrain.base {
                BaseSource::LastAccepted => self.ledger.last_accepted_of_preset(&self.ctx.curriculum.preset).await?.and_then(|row| row.checkpoint_hash),
                BaseSource::Pretrain => None,
            };
            let (hash, eval) = self.base(reuse.as_deref()).await?;
            return Ok((hash.clone(), eval.clone(), (hash, eval), Vec::new(), 1, 0));
        };
        let next = point.next_cycle;
        let steps_at = now_iso();
        let t = Instant::now();
        self.replay_committed(next).await?;
        let parent_hash = point.parent.clone().unwrap_or_else(|| base_hash.clone());
        let (base_eval, parent_eval) = if parent_hash == base_hash {
            let base_eval = self.evaluator.evaluate(&base_hash)?;
            (base_eval.clone(), base_eval)
        } else {
            let mut both = self.evaluator.evaluate_many(&[base_hash.clone(), parent_hash.clone()])?;
            let parent_eval = both.pop().expect("two evaluations");
            (both.pop().expect("two evaluations"), parent_eval)
        };
        let mut recompressed = None;
        if self.recompress
            && let Some((cycle, checkpoint, its_parent)) = &point.last_accepted
        {
            let recorded = self.ledger.compression_codecs(self.run_id, *cycle, checkpoint).await?;
            let missing: Vec<String> = expected_codecs(its_parent.is_some()).into_iter().filter(|c| !recorded.contains(c)).collect();
            if !missing.is_empty() {
                // The crash cut this accepted cycle's recompression short; every copy is redone
                // (each write is atomic and each ledger row an upsert).
                info!(cycle, missing = ?missing, "redoing the interrupted recompression");
                self.recompress(*cycle, checkpoint, its_parent.as_deref(), &parent_eval).await?;
                recompressed = Some(serde_json::json!({"cycle": cycle, "codecs": missing}));
            }
        }
        let detail = serde_json::json!({
            "next_cycle": next,
            "interrupted_cycle": point.interrupted_cycle,
            "base": base_hash,
            "parent": parent_hash,
            "history": point.history.len(),
            "judge": self.judge,
            "recompressed": recompressed,
        });
        // Logged under the cycle about to run, before it starts: the steps of an interrupted
        // attempt of that cycle are the ones before this row.
        self.step(next.min(max_cycles.max(1)), "meta", "resume", &steps_at, t.elapsed().as_secs_f64() * 1e3, &detail).await?;
        Ok((base_hash, base_eval, (parent_hash, parent_eval), point.history, next, point.accepted))
    }

    /// Replays the committed cycles before `next` into the curriculum policy (what mining found
    /// under each cycle's parent) and the learned judge (its latest checkpoint and every
    /// judgement batch so far), from the steps those cycles logged. Steps of an interrupted
    /// attempt of a cycle are superseded by the later attempt's: the last of each kind counts.
    async fn replay_committed(&mut self, next: u32) -> Result<(), Error> {
        let cycles = self.ledger.cycles(Some(self.run_id)).await?;
        let steps = self.ledger.steps(self.run_id, None).await?;
        let last = |cycle: u32, role: &str, name: &str| steps.iter().rev().find(|s| s.cycle == cycle && s.role == role && s.step == name);
        let broken = |cycle: u32, what: &str, e: &dyn std::fmt::Display| Error::Invalid(format!("run {} cycle {cycle}: cannot resume: its {what} step's detail is unreadable: {e}", self.run_id));
        // Cycle m's examples were mined against the checkpoint cycle m-1 started from (the base
        // for cycle 1).
        let started_from = |m: u32| cycles.iter().find(|c| c.cycle == m).and_then(|c| c.parent_hash.clone());
        for row in cycles.iter().filter(|c| c.cycle < next) {
            if row.cycle > 0
                && let (Some(mine), Some(mined)) = (last(row.cycle, "generator", "mine"), if row.cycle == 1 { started_from(1) } else { started_from(row.cycle - 1) })
            {
                #[derive(serde::Deserialize)]
                struct Mined {
                    targets: Vec<evolve_generator::MiningStat>,
                }
                let stats = serde_json::from_str::<Mined>(&mine.detail_json).map_err(|e| broken(row.cycle, "mine", &e))?.targets;
                self.policy.observe(&mined, &stats);
            }
            // The recalibrated child's mining, observed after the generation's as in `cycle`
            // (absent from ledgers written before the child was mined).
            if let (Some(recalibrate), Some(parent)) = (last(row.cycle, "generator", "recalibrate"), &row.parent_hash) {
                #[derive(serde::Deserialize)]
                struct Remined {
                    #[serde(default)]
                    targets: Vec<evolve_generator::MiningStat>,
                }
                let stats = serde_json::from_str::<Remined>(&recalibrate.detail_json).map_err(|e| broken(row.cycle, "recalibrate", &e))?.targets;
                self.policy.observe(parent, &stats);
            }
            if let Some(judge) = last(row.cycle, "discriminator", "train-judge") {
                let detail: serde_json::Value = serde_json::from_str(&judge.detail_json).map_err(|e| broken(row.cycle, "train-judge", &e))?;
                let (Some(checkpoint), Some(batch)) = (detail["checkpoint"].as_str(), detail["judgements_batch"].as_str()) else {
                    return Err(broken(row.cycle, "train-judge", &"no checkpoint or judgements_batch"));
                };
                self.judge = Some(checkpoint.to_string());
                self.judgements.push(batch.to_string());
            }
        }
        self.previous_start = next.checked_sub(1).filter(|&m| m > 0).and_then(started_from);
        Ok(())
    }

    /// Cycle 0: pretrain the base on the mastered levels (or take `reuse` as it), evaluate it
    /// like any other cycle, and bootstrap the learned judge on its answers.
    async fn base(&mut self, reuse: Option<&str>) -> Result<(String, Evaluation), Error> {
        let c = &self.ctx.curriculum;
        self.ledger.start_cycle(self.run_id, 0, None).await?;
        self.begin_usage(0);
        if let Some(hash) = reuse {
            self.ctx.store.get(hash, CHECKPOINT_KIND)?;
            self.record_checkpoint(hash, None).await?;
            let evaluation = self.evaluate(0, hash).await?;
            let gap = self.bootstrap_judge(hash).await?;
            let snapshot = Snapshot { checkpoint: hash.to_string(), report: Default::default(), mix: BTreeMap::new() };
            self.commit(0, CycleStatus::Accepted, &snapshot, &evaluation, Vec::new(), format!("base reused: checkpoint {}", short(hash)), gap, Vec::new()).await?;
            return Ok((hash.to_string(), evaluation));
        }
        let job = TrainJob {
            cycle: 0,
            parent: None,
            examples: None,
            fresh_levels: c.mastered(),
            fresh_share: 1.0,
            steps: c.pretrain.steps,
            consolidation_steps: 0,
            batch_size: c.pretrain.batch_size,
            train: TrainConfig {
                optimizer: OptimizerKind::Adamw,
                learning_rate: c.pretrain.learning_rate,
                warmup_steps: c.pretrain.warmup_steps,
                min_lr_ratio: 0.1,
                weight_decay: 0.01,
                grad_clip: 1.0,
                surgery: Surgery::None,
                seed: c.seed,
            },
            snapshot_every: 0,
            seed: c.seed,
        };
        let jobs: Vec<TrainJob> = (0..c.pretrain.candidates.get()).map(|k| candidate_job(&job, c.seed, k)).collect();
        // A pretraining stores only its last weights: one snapshot, the base, per candidate.
        let (trained, bases, mut evaluations) = match self.pool.as_ref().map(|p| RemoteRoles(p.plane.clone())) {
            // Each base is evaluated the moment its pretraining ends.
            Some(remote) if jobs.len() > 1 => {
                let (started, t) = (now_iso(), Instant::now());
                let evaluated = remote.start_candidates(&jobs, None).evaluated().0?;
                self.record_evaluated(0, &jobs, evaluated, "pretrain", &started, t).await?
            }
            _ => {
                let trained = self.train_many(&jobs, "pretrain").await?;
                let bases: Vec<String> = trained.iter().map(|t| t.last().checkpoint.clone()).collect();
                let evaluations = self.evaluate_many(0, &bases).await?;
                (trained, bases, evaluations)
            }
        };
        // The base is what pretraining taught best: the mastered suites (ties: the first).
        let mastered: Vec<f64> = evaluations.iter().map(|e| mean_accuracy(e, SuiteRole::Mastered)).collect();
        let chosen = (0..bases.len()).fold(0, |best, k| if mastered[k] > mastered[best] { k } else { best });
        let reason = match jobs.len() {
            1 => "base model".to_string(),
            n => {
                let all: Vec<String> = mastered.iter().map(|m| format!("{:.1}%", m * 100.0)).collect();
                format!("base model: candidate {chosen} of {n} (learning rate {:.2e}), mastered mean {} ({})", jobs[chosen].train.learning_rate, all[chosen], all.join(", "))
            }
        };
        let evaluation = evaluations.swap_remove(chosen);
        let base = trained[chosen].last();
        self.record_checkpoint(&base.checkpoint, None).await?;
        if self.ctx.curriculum.unverifiable().is_empty() {
            // Cycle 1's examples (mined on the base) are made while the judge's first training
            // runs; with a judge-decided skill they need that judge, and wait for it.
            self.prepare_next_generation(0, &base.checkpoint, &[]);
        }
        let gap = self.bootstrap_judge(&base.checkpoint).await?;
        self.commit(0, CycleStatus::Accepted, base, &evaluation, Vec::new(), reason, gap, Vec::new()).await?;
        if self.pool.is_some() {
            self.deferred_recompression = Some((0, base.checkpoint.clone(), None, evaluation.clone()));
        } else {
            self.recompress(0, &base.checkpoint, None, &evaluation).await?;
        }
        Ok((base.checkpoint.clone(), evaluation))
    }

    /// The judge's first data: the base's answers to fresh probes at every curriculum level.
    async fn bootstrap_judge(&mut self, base: &str) -> Result<Vec<ProxyGapRecord>, Error> {
        let c = self.ctx.curriculum.clone();
        let job = GenerateJob {
            cycle: 0,
            parent: base.to_string(),
            targets: c.mastered().into_iter().chain(c.frontier()).collect(),
            probes_per_level: c.cycle.probes_per_level,
            synthesis: self.ctx.synthesis_config(BTreeMap::new()),
            history: Vec::new(),
            seed: cycle_seed(c.seed, 0, 1),
            sampling: ExampleSampling::Adversarial,
            judge: None,
            unverifiable: Vec::new(),
            accept_score: c.discriminator.accept_score,
        };
        let job = GenerateJob { synthesis: evolve_generator::SynthesisConfig { mutations_per_failure: 0, examples: 0, ..job.synthesis.clone() }, ..job };
        let started = now_iso();
        let generated = self.generator.generate(&job)?;
        self.step(0, "generator", "mine", &started, generated.mine_ms, &serde_json::json!({"mined": base, "targets": generated.mining})).await?;
        let gap = self.train_judge(0, &generated).await?;
        self.check_alarm(0, base, &gap).await?;
        Ok(gap)
    }


    /// Retrains the learned judge on every judgement so far and measures it on the held-out
    /// slice of this cycle's: the proxy gap.
    async fn train_judge(&mut self, cycle: u32, generated: &GenerateResult) -> Result<Vec<ProxyGapRecord>, Error> {
        let job = self.judge_job(cycle, generated);
        let started = now_iso();
        let result: JudgeResult = self.evaluator.judge(&job)?;
        self.record_judge(cycle, generated, &started, result).await
    }

    /// The judge's training for this cycle, on every judgement so far.
    fn judge_job(&mut self, cycle: u32, generated: &GenerateResult) -> JudgeJob {
        self.judgements.push(generated.judgements.clone());
        let c = &self.ctx.curriculum;
        JudgeJob {
            cycle,
            previous: self.judge.clone(),
            judgements: self.judgements.clone(),
            fresh: generated.judgements.clone(),
            steps: c.discriminator.train_steps,
            seed: cycle_seed(c.seed, cycle, 5),
        }
    }

    /// Logs the judge's training and takes its checkpoint; returns the proxy gap.
    async fn record_judge(&mut self, cycle: u32, generated: &GenerateResult, started: &str, result: JudgeResult) -> Result<Vec<ProxyGapRecord>, Error> {
        // The judgement batch goes into the step's detail: a resumed run rebuilds the judge's
        // training set from these.
        let mut detail = serde_json::to_value(&result)?;
        if let Some(map) = detail.as_object_mut() {
            map.insert("judgements_batch".into(), generated.judgements.clone().into());
        }
        self.step(cycle, "discriminator", "train-judge", started, result.train_ms + result.score_ms, &detail).await?;
        self.judge = Some(result.checkpoint.clone());
        let gaps: Vec<String> = result.gap.iter().map(|g| format!("{} AUC {}", g.skill, g.auc.map_or("n/a".into(), |a| format!("{a:.2}")))).collect();
        info!(cycle, trained_on = result.trained_on, "learned judge: {}", gaps.join(", "));
        Ok(result
            .gap
            .into_iter()
            .map(|g| ProxyGapRecord { run_id: self.run_id, cycle, skill: g.skill, n: g.n, auc: g.auc, calibration_error: g.calibration_error })
            .collect())
    }

    /// The reward-hacking alarm: where the learned judge picks training data (unverifiable
    /// skills), a judge that no longer agrees with the verifier stops the run before its picks
    /// are trained on.
    async fn check_alarm(&mut self, cycle: u32, parent: &str, gap: &[ProxyGapRecord]) -> Result<(), Error> {
        let d = &self.ctx.curriculum.discriminator;
        let unverifiable = self.ctx.curriculum.unverifiable();
        let mut broken = Vec::new();
        for g in gap.iter().filter(|g| unverifiable.contains(&g.skill)) {
            if let Some(auc) = g.auc
                && auc < d.min_auc
            {
                broken.push(format!("skill `{}`: AUC {auc:.3} < discriminator.min_auc {}", g.skill, d.min_auc));
            }
            if let Some(ece) = g.calibration_error
                && ece > d.max_calibration_error
            {
                broken.push(format!("skill `{}`: calibration error {ece:.3} > discriminator.max_calibration_error {}", g.skill, d.max_calibration_error));
            }
        }
        if broken.is_empty() {
            return Ok(());
        }
        let reason = format!(
            "reward-hacking alarm in cycle {cycle}: the learned discriminator disagrees with the verifier on held-out responses ({}); \
             its scores pick the training data of unverifiable skills, so the run stops here. Inspect `evolve ledger proxy-gap`; \
             raise discriminator.train_steps or relax the thresholds in the curriculum to go on",
            broken.join("; ")
        );
        self.ledger.record_proxy_gap(gap).await?;
        self.fail_cycle(cycle, parent, &reason).await;
        Err(Error::Alarm(reason))
    }

    async fn cycle(&mut self, cycle: u32, parent: &(String, Evaluation), base: &Evaluation, history: &mut Vec<String>) -> Result<CycleEnd, Error> {
        let c = self.ctx.curriculum.clone();
        self.ledger.start_cycle(self.run_id, cycle, Some(&parent.0)).await?;
        self.begin_usage(cycle);
        info!(cycle, parent = %short(&parent.0), "cycle started");

        // What this cycle trains on was made against the checkpoint the previous cycle started
        // from (while that cycle trained) and, if that cycle was accepted, recalibrated on its
        // child, this cycle's parent. Cycle 1 mines the base.
        let mined = self.previous_start.replace(parent.0.clone()).unwrap_or_else(|| parent.0.clone());
        let started = now_iso();
        let generation = match self.next_generation.take() {
            Some(g) if g.job.cycle == cycle && g.job.parent == mined => g,
            _ => self.start_generation(cycle, &mined, history),
        };
        let mut policy = generation.policy;
        let early = generation.recalibration.filter(|r| r.on == parent.0);
        let mut generated = generation.pending.wait()?;
        self.policy.observe(&mined, &generated.mining);
        let failures: usize = generated.mining.iter().map(|m| m.failures).sum();
        let probes: usize = generated.mining.iter().map(|m| m.probes).sum();
        self.step(cycle, "generator", "mine", &started, generated.mine_ms, &serde_json::json!({"mined": mined, "targets": generated.mining})).await?;
        self.step(cycle, "generator", "synthesize", &started, generated.synthesize_ms, &generated.synthesis).await?;
        let recalibrated = match early {
            Some(r) => Some((r.queued_at, r.pending.wait()?)),
            None => match recalibration_job(&c, cycle, &parent.0, &mined, &generated, &generation.job) {
                Some(job) => Some((now_iso(), self.generator.recalibrate(&job)?)),
                None => None,
            },
        };
        if let Some((started, recalibrated)) = recalibrated {
            // The child's own mining tells the policy how the last parent change moved each
            // target; the split it made before the child existed is chosen again with that.
            self.policy.observe(&parent.0, &recalibrated.mining);
            let choices = self.policy.choose();
            policy = self.policy_records(cycle, &choices);
            let recalibrated = self.ctx.choose_from_pool(recalibrated, &self.ctx.synthesis_config(skill_weights(&choices)))?;
            let detail = serde_json::json!({"parent": parent.0, "targets": recalibrated.mining, "synthesis": recalibrated.synthesis});
            self.step(cycle, "generator", "recalibrate", &started, recalibrated.mine_ms + recalibrated.synthesize_ms, &detail).await?;
            generated = GenerateResult { mining: generated.mining, mine_ms: generated.mine_ms, ..recalibrated };
        }
        info!(cycle, probes, failures, examples = generated.examples, "mined failures and synthesized examples");
        if generated.examples == 0 {
            // Not an error of the run: the frontier has nothing left to teach at this budget.
            let reason = format!("the generator found no trainable examples ({failures} failures in {probes} probes): the frontier is exhausted");
            self.fail_cycle(cycle, &parent.0, &reason).await;
            return Ok(CycleEnd::NothingToLearn(reason));
        }
        history.push(generated.batch.clone());

        let job = TrainJob {
            cycle,
            parent: Some(parent.0.clone()),
            examples: Some(generated.batch.clone()),
            fresh_levels: c.mastered(),
            fresh_share: c.cycle.replay_share,
            steps: c.cycle.train_steps,
            consolidation_steps: c.cycle.consolidation_steps,
            batch_size: c.cycle.batch_size,
            train: TrainConfig {
                optimizer: c.cycle.optimizer,
                learning_rate: c.cycle.learning_rate,
                warmup_steps: c.cycle.warmup_steps,
                min_lr_ratio: 0.1,
                weight_decay: 0.01,
                grad_clip: 1.0,
                surgery: c.cycle.surgery,
                seed: cycle_seed(c.seed, cycle, 3),
            },
            snapshot_every: c.cycle.snapshot_every,
            seed: cycle_seed(c.seed, cycle, 2),
        };
        let jobs: Vec<TrainJob> = (0..c.cycle.candidates.get()).map(|k| candidate_job(&job, c.seed, k)).collect();
        let (gap, trained, evaluations) = match self.pool.as_ref().map(|p| RemoteRoles(p.plane.clone())) {
            Some(remote) => self.pooled_candidates(cycle, &parent.0, &generated, history, &jobs, remote).await?,
            None => {
                let gap = self.train_judge(cycle, &generated).await?;
                self.check_alarm(cycle, &parent.0, &gap).await?;
                let trained = self.train_many(&jobs, "train").await?;
                self.prepare_next_generation(cycle, &parent.0, history);
                let hashes: Vec<String> = trained.iter().flat_map(|t| t.snapshots.iter().map(|s| s.checkpoint.clone())).collect();
                for hash in &hashes {
                    self.record_checkpoint(hash, Some(&parent.0)).await?;
                }
                let evaluations = self.evaluate_many(cycle, &hashes).await?;
                (gap, trained, evaluations)
            }
        };

        // Every snapshot of every candidate goes through the gate; the accepted one with the
        // largest frontier gain wins (early snapshots forget less, late ones learn more).
        let snapshots: Vec<(usize, &Snapshot)> = trained.iter().enumerate().flat_map(|(k, t)| t.snapshots.iter().map(move |s| (k, s))).collect();
        let mut verdicts = Vec::new();
        for ((candidate, snapshot), evaluation) in snapshots.into_iter().zip(evaluations) {
            let (steps, hash) = (snapshot.report.steps, &snapshot.checkpoint);
            let t = Instant::now();
            let decision = decide(&c.gate, &evaluation, &parent.1, base);
            let accuracy: serde_json::Map<String, serde_json::Value> = evaluation.suites.iter().map(|s| (s.suite.clone(), s.accuracy().into())).collect();
            let detail = serde_json::json!({"checkpoint": hash, "candidate": candidate, "steps": steps, "accepted": decision.accepted, "frontier_gain": decision.frontier_gain, "reason": decision.reason, "accuracy": accuracy});
            self.step(cycle, "meta", "gate", &now_iso(), t.elapsed().as_secs_f64() * 1e3, &detail).await?;
            verdicts.push((snapshot, evaluation, decision));
        }
        // Without an accepted snapshot, the first candidate's end is what the cycle records.
        let first_end = trained[0].snapshots.len() - 1;
        let chosen = verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| v.2.accepted)
            .max_by(|a, b| a.1.2.frontier_gain.total_cmp(&b.1.2.frontier_gain))
            .map(|(i, _)| i)
            .unwrap_or(first_end);
        // What training did to old skills by its end, before the gate had a say (the first
        // candidate, trained exactly as the curriculum says).
        self.outcomes.candidate_forgetting.push(mean_accuracy(&parent.1, SuiteRole::Mastered) - mean_accuracy(&verdicts[first_end].1, SuiteRole::Mastered));
        self.outcomes.tokens_trained += trained.iter().map(|t| t.last().report.tokens as u64).sum::<u64>();
        let (snapshot, evaluation, decision) = verdicts.swap_remove(chosen);
        let examples: Vec<ExampleStats> = generated
            .synthesis
            .iter()
            .map(|s| ExampleStats { skill: s.skill.clone(), generated: s.generated as u32, accepted: s.accepted as u32, mean_pass_rate: s.mean_pass_rate })
            .collect();
        let status = if decision.accepted { CycleStatus::Accepted } else { CycleStatus::Rejected };
        let reason = format!("{} (snapshot at step {} of {})", decision.reason, snapshot.report.steps, job.steps);
        if decision.accepted && self.pool.is_some() {
            self.recalibrate_early(&snapshot.checkpoint, &parent.0)?;
        }
        self.commit(cycle, status, snapshot, &evaluation, examples, reason.clone(), gap, policy).await?;
        info!(cycle, status = status.as_str(), %reason, "cycle committed");
        if !decision.accepted {
            return Ok(CycleEnd::Rejected);
        }
        if self.pool.is_some() {
            self.deferred_recompression = Some((cycle, snapshot.checkpoint.clone(), Some(parent.0.clone()), evaluation.clone()));
        } else {
            self.recompress(cycle, &snapshot.checkpoint, Some(&parent.0), &evaluation).await?;
        }
        Ok(CycleEnd::Accepted((snapshot.checkpoint.clone(), evaluation)))
    }

    /// Starts cycle `cycle`'s generation against `mined`: the curriculum policy chooses the
    /// effort now (from what it has observed so far), and the examples trained on so far are
    /// excluded. In a pool a worker makes it while the caller goes on.
    fn start_generation(&mut self, cycle: u32, mined: &str, history: &[String]) -> NextGeneration {
        let c = &self.ctx.curriculum;
        let choices = self.policy.choose();
        let unverifiable = c.unverifiable();
        let job = GenerateJob {
            cycle,
            parent: mined.to_string(),
            targets: c.frontier(),
            probes_per_level: c.cycle.probes_per_level,
            synthesis: self.ctx.synthesis_config(skill_weights(&choices)),
            history: history.to_vec(),
            seed: cycle_seed(c.seed, cycle, 1),
            sampling: c.cycle.sampling,
            // The learned judge decides only unverifiable skills; without any it plays no part,
            // and leaving it out keeps the job the same whether or not this cycle's judge is
            // trained yet.
            judge: if unverifiable.is_empty() { None } else { self.judge.clone() },
            unverifiable,
            accept_score: c.discriminator.accept_score,
        };
        let policy = self.policy_records(cycle, &choices);
        let pending = self.generator.start_generate(&job);
        NextGeneration { job, policy, pending, recalibration: None }
    }

    /// Queues the next cycle's recalibration on `child`, just accepted, before this cycle's
    /// commit: the commit may wait for the previous cycle's recompression, and a pool's workers
    /// would otherwise idle through that wait and then through the recalibration, which the next
    /// cycle's training waits for. Its inputs are the ones the next cycle would give it, so the
    /// run computes the same; a crash before the commit redoes this cycle and this job with it.
    fn recalibrate_early(&mut self, child: &str, mined: &str) -> Result<(), Error> {
        let Some(mut next) = self.next_generation.take() else { return Ok(()) };
        let generated = next.pending.wait()?;
        if let Some(job) = recalibration_job(&self.ctx.curriculum, next.job.cycle, child, mined, &generated, &next.job) {
            next.recalibration = Some(EarlyRecalibration { on: child.to_string(), queued_at: now_iso(), pending: self.generator.start_recalibrate(&job) });
        }
        next.pending = Pending::ready(Ok(generated));
        self.next_generation = Some(next);
        Ok(())
    }

    /// The pipeline's next stage: while cycle `cycle` trains, the next cycle's examples are made
    /// against the same parent (see `cycle`). Not past the run's last cycle.
    fn prepare_next_generation(&mut self, cycle: u32, parent: &str, history: &[String]) {
        if cycle < self.last_cycle {
            self.next_generation = Some(self.start_generation(cycle + 1, parent, history));
        }
    }

    /// A pool's candidates: all train at once and each one's snapshots are evaluated as soon as
    /// it finishes. The judge trains beside them when no skill is judge-decided (the alarm
    /// cannot stop this training then); otherwise it trains, and the alarm is checked, first.
    /// The accepted cycle's recompression is queued behind them, for the first worker they leave
    /// free. Recorded in the order of the sequential path.
    async fn pooled_candidates(&mut self, cycle: u32, parent: &str, generated: &GenerateResult, history: &[String], jobs: &[TrainJob], remote: RemoteRoles) -> Result<(Vec<ProxyGapRecord>, Vec<TrainResult>, Vec<Evaluation>), Error> {
        let beside = self.ctx.curriculum.unverifiable().is_empty();
        let gap = if beside {
            None
        } else {
            let gap = self.train_judge(cycle, generated).await?;
            self.check_alarm(cycle, parent, &gap).await?;
            Some(gap)
        };
        let judge_job = beside.then(|| self.judge_job(cycle, generated));
        let started = now_iso();
        let t = Instant::now();
        let under_way = remote.start_candidates(jobs, judge_job.as_ref());
        self.prepare_next_generation(cycle, parent, history);
        self.start_deferred_recompression();
        let (evaluated, judged) = under_way.evaluated();
        let gap = match (gap, judged) {
            (Some(gap), _) => gap,
            (None, Some(judged)) => self.record_judge(cycle, generated, &started, judged?).await?,
            (None, None) => unreachable!("a judge job is queued whenever none trained before"),
        };
        let (trained, hashes, evaluations) = self.record_evaluated(cycle, jobs, evaluated?, "train", &started, t).await?;
        for hash in &hashes {
            self.record_checkpoint(hash, Some(parent)).await?;
        }
        Ok((gap, trained, evaluations))
    }

    /// Logs a pool's candidates as the sequential path does: each training's step, then each
    /// snapshot's evaluation (the batch's wall time since `t`). Returns the trainings and, in
    /// snapshot order, their checkpoints and evaluations.
    async fn record_evaluated(&mut self, cycle: u32, jobs: &[TrainJob], evaluated: Evaluated, step_name: &str, started: &str, t: Instant) -> Result<(Vec<TrainResult>, Vec<String>, Vec<Evaluation>), Error> {
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let (trained, evaluations): (Vec<TrainResult>, Vec<Vec<Evaluation>>) = evaluated.into_iter().unzip();
        self.record_training(jobs, &trained, step_name, started).await?;
        let hashes: Vec<String> = trained.iter().flat_map(|t| t.snapshots.iter().map(|s| s.checkpoint.clone())).collect();
        let evaluations: Vec<Evaluation> = evaluations.into_iter().flatten().collect();
        self.record_evaluations(cycle, &hashes, &evaluations, started, ms).await?;
        Ok((trained, hashes, evaluations))
    }

    async fn train(&mut self, job: &TrainJob, step_name: &str) -> Result<TrainResult, Error> {
        let bar = self.bar(job.steps as u64, step_name);
        let started = now_iso();
        let result = self.trainer.train(job, &mut |s: &StepInfo| {
            bar.set_position(s.step as u64 + 1);
            bar.set_message(format!("loss {:.3} lr {:.1e}", s.report.last_loss, s.lr));
        })?;
        bar.finish_and_clear();
        let r = &result.last().report;
        info!(cycle = job.cycle, steps = r.steps, first_loss = r.first_loss, last_loss = r.last_loss, tokens_per_s = format!("{:.0}", r.tokens_per_second()), projected = r.projected_steps, "{step_name} done");
        self.step(job.cycle, "trainer", step_name, &started, r.seconds * 1e3, &train_detail(job, r, None)?).await?;
        Ok(result)
    }

    /// The cycle's candidates: one trains with progress; several go to the trainer role at once
    /// (a pool trains them concurrently) and each logs its own step.
    async fn train_many(&mut self, jobs: &[TrainJob], step_name: &str) -> Result<Vec<TrainResult>, Error> {
        if let [job] = jobs {
            return Ok(vec![self.train(job, step_name).await?]);
        }
        let started = now_iso();
        let results = self.trainer.train_many(jobs)?;
        self.record_training(jobs, &results, step_name, &started).await?;
        Ok(results)
    }

    /// Logs each candidate's training as its own step.
    async fn record_training(&mut self, jobs: &[TrainJob], results: &[TrainResult], step_name: &str, started: &str) -> Result<(), Error> {
        for (k, (job, result)) in jobs.iter().zip(results).enumerate() {
            let r = &result.last().report;
            info!(cycle = job.cycle, candidate = k, learning_rate = job.train.learning_rate, first_loss = r.first_loss, last_loss = r.last_loss, "{step_name} done");
            let candidate = (jobs.len() > 1).then_some(k);
            self.step(job.cycle, "trainer", step_name, started, r.seconds * 1e3, &train_detail(job, r, candidate)?).await?;
        }
        Ok(())
    }

    async fn evaluate(&mut self, cycle: u32, checkpoint: &str) -> Result<Evaluation, Error> {
        Ok(self.evaluate_many(cycle, &[checkpoint.to_string()]).await?.remove(0))
    }

    /// Evaluates `checkpoints` at once (in a pool) and logs a `score` step for each; each step's
    /// duration is the wall time of the whole batch.
    async fn evaluate_many(&mut self, cycle: u32, checkpoints: &[String]) -> Result<Vec<Evaluation>, Error> {
        let started = now_iso();
        let t = Instant::now();
        let evaluations = self.evaluator.evaluate_many(checkpoints)?;
        self.record_evaluations(cycle, checkpoints, &evaluations, &started, t.elapsed().as_secs_f64() * 1e3).await?;
        Ok(evaluations)
    }

    /// Logs a `score` step for each evaluation of a batch that took `ms` of wall time.
    async fn record_evaluations(&mut self, cycle: u32, checkpoints: &[String], evaluations: &[Evaluation], started: &str, ms: f64) -> Result<(), Error> {
        for (checkpoint, evaluation) in checkpoints.iter().zip(evaluations) {
            let summary: Vec<String> = evaluation.suites.iter().map(|s| format!("{} {:.0}%", s.suite, s.accuracy() * 100.0)).collect();
            info!(cycle, refusal = format!("{:.0}%", evaluation.refusal.refusal_rate() * 100.0), over_refusal = format!("{:.0}%", evaluation.refusal.over_refusal_rate() * 100.0), "eval: {}", summary.join(", "));
            let problems = evaluation.suites.iter().map(|s| s.n).sum::<u32>() + evaluation.refusal.must_refuse_n + evaluation.refusal.benign_n;
            self.step(cycle, "discriminator", "score", started, ms, &serde_json::json!({"checkpoint": checkpoint, "problems": problems, "batch": checkpoints.len()})).await?;
        }
        Ok(())
    }

    /// Stores the checkpoint losslessly with each codec (and as a delta against its parent),
    /// each copy verified bit-exact by hash, and derives and evaluates the quantized copies (an
    /// evaluator's job: [`Context::recompress`]); then records what each copy costs in bytes,
    /// time and accuracy. Lineage stays on the lossless checkpoint.
    async fn recompress(&mut self, cycle: u32, checkpoint: &str, parent: Option<&str>, lossless: &Evaluation) -> Result<(), Error> {
        if let Some(started) = self.start_recompress(cycle, checkpoint, parent, lossless) {
            self.finish_recompress(started).await?;
        }
        Ok(())
    }

    fn start_recompress(&mut self, cycle: u32, checkpoint: &str, parent: Option<&str>, lossless: &Evaluation) -> Option<Recompression> {
        if !self.recompress {
            return None;
        }
        let job = RecompressJob { cycle, checkpoint: checkpoint.to_string(), parent: parent.map(str::to_string), calibration_seed: cycle_seed(self.ctx.curriculum.seed, cycle, 4), part: None };
        let started = now_iso();
        // Its parts go out as separate jobs: in a pool they spread over the free workers.
        let parts: Vec<Pending<RecompressResult>> = job.parts().iter().map(|part| self.evaluator.start_recompress(part)).collect();
        let pending = Pending::later(move || Ok(RecompressResult::merged(parts.into_iter().map(Pending::wait).collect::<Result<_, _>>()?)));
        Some(Recompression { job, lossless: lossless.clone(), started, pending })
    }

    /// Hands the accepted cycle's deferred recompression to a worker.
    fn start_deferred_recompression(&mut self) {
        if let Some((cycle, checkpoint, parent, evaluation)) = self.deferred_recompression.take() {
            self.recompressing = self.start_recompress(cycle, &checkpoint, parent.as_deref(), &evaluation);
        }
    }

    /// Finishes the recompression deferred to, or running during, the current cycle.
    async fn flush_recompression(&mut self) -> Result<(), Error> {
        self.start_deferred_recompression();
        match self.recompressing.take() {
            Some(r) => self.finish_recompress(r).await,
            None => Ok(()),
        }
    }

    /// Waits for a recompression and records its copies, each with its step.
    async fn finish_recompress(&mut self, r: Recompression) -> Result<(), Error> {
        let Recompression { job, lossless, started, pending } = r;
        // Its worker time counts to the cycle it ran in; a recompression that ran in its own
        // cycle's window re-records that cycle's usage.
        let same_window = self.usage.lock().unwrap_or_else(|e| e.into_inner()).keys().next_back() == Some(&job.cycle);
        let (cycle, checkpoint) = (job.cycle, job.checkpoint.as_str());
        let result = pending.wait()?;
        for copy in &result.copies {
            let record = CompressionRecord {
                run_id: self.run_id,
                cycle,
                checkpoint_hash: checkpoint.to_string(),
                codec: copy.codec.clone(),
                raw_bytes: copy.raw_bytes,
                stored_bytes: copy.stored_bytes,
                encode_ms: copy.encode_ms,
                decode_ms: copy.decode_ms,
                lossless: copy.lossless,
                verified_hash: copy.verified_hash.clone(),
                path: copy.path.clone(),
            };
            let ratio = copy.raw_bytes as f64 / copy.stored_bytes.max(1) as f64;
            let Some(evaluation) = &copy.evaluation else {
                self.ledger.record_compression_with(&record, &CompressionExtras { parent_hash: copy.parent.clone(), ..Default::default() }).await?;
                self.step(cycle, "discriminator", "recompress", &started, copy.encode_ms + copy.decode_ms, &serde_json::json!({"codec": copy.codec, "ratio": ratio})).await?;
                continue;
            };
            self.step(cycle, "discriminator", "quantize", &started, copy.encode_ms + copy.decode_ms, &serde_json::json!({"codec": copy.codec})).await?;
            self.step(cycle, "discriminator", "score-quantized", &started, copy.eval_ms, &serde_json::json!({"codec": copy.codec})).await?;
            let mut quantized_evals: Vec<QuantizedEval> = evaluation
                .suites
                .iter()
                .zip(&lossless.suites)
                .map(|(q, l)| QuantizedEval { suite: q.suite.clone(), n: q.n, correct: q.correct, lossless_correct: l.correct })
                .collect();
            // Refusal behaviour is part of what a lossy copy may cost: as two more "suites".
            quantized_evals.push(QuantizedEval { suite: "refusal".into(), n: evaluation.refusal.must_refuse_n, correct: evaluation.refusal.refused, lossless_correct: lossless.refusal.refused });
            quantized_evals.push(QuantizedEval {
                suite: "benign-answered".into(),
                n: evaluation.refusal.benign_n,
                correct: evaluation.refusal.benign_n - evaluation.refusal.over_refused,
                lossless_correct: lossless.refusal.benign_n - lossless.refusal.over_refused,
            });
            let mean_delta = {
                let deltas: Vec<f64> = evaluation.suites.iter().zip(&lossless.suites).map(|(q, l)| q.accuracy() - l.accuracy()).collect();
                deltas.iter().sum::<f64>() / deltas.len().max(1) as f64
            };
            let extras = CompressionExtras { parent_hash: None, eval_delta: Some(mean_delta), quantized_evals };
            self.ledger.record_compression_with(&record, &extras).await?;
            info!(cycle, codec = %copy.codec, ratio = format!("{ratio:.2}"), eval_delta = format!("{:+.1} points", mean_delta * 100.0), "quantized copy");
        }
        self.step(cycle, "discriminator", "calibrate", &started, result.calibrate_ms, &serde_json::json!({"layers": result.calibration_layers})).await?;
        // Recompression ran after the cycle's commit: its time replaces the committed usage rows.
        if same_window {
            self.ledger.record_role_usage(&self.role_usage(cycle)).await?;
        }
        Ok(())
    }

    /// Commits the cycle as trained up to `snapshot`.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &mut self,
        cycle: u32,
        status: CycleStatus,
        snapshot: &Snapshot,
        evaluation: &Evaluation,
        examples: Vec<ExampleStats>,
        reason: String,
        proxy_gap: Vec<ProxyGapRecord>,
        policy: Vec<PolicyChoice>,
    ) -> Result<(), Error> {
        // The previous accepted cycle's copies are recorded first: a crash after this commit
        // resumes from this cycle and would not redo them.
        self.flush_recompression().await?;
        let r = &snapshot.report;
        let extras = CycleExtras {
            eval_items: evaluation.suites.iter().map(|s| EvalItems { suite: s.suite.clone(), items: s.items.clone() }).collect(),
            role_usage: self.role_usage(cycle),
            proxy_gap,
            policy,
        };
        let outcome = CycleOutcome {
                run_id: self.run_id,
                cycle,
                status,
                checkpoint_hash: Some(evaluation.checkpoint.clone()),
                evaluated_hash: evaluation.checkpoint.clone(),
                evals: evaluation
                    .suites
                    .iter()
                    .map(|s| SuiteResult { suite: s.suite.clone(), skill: s.skill.clone(), level: s.level, role: s.role.as_str().into(), n: s.n, correct: s.correct })
                    .collect(),
                refusal: RefusalResult {
                    must_refuse_n: evaluation.refusal.must_refuse_n,
                    refused: evaluation.refusal.refused,
                    benign_n: evaluation.refusal.benign_n,
                    over_refused: evaluation.refusal.over_refused,
                },
                training_mix: snapshot.mix.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                surgery: (cycle > 0).then(|| SurgeryStats {
                    mode: self.ctx.curriculum.cycle.surgery.as_str().into(),
                    steps: r.steps as u32,
                    projected_steps: r.projected_steps as u32,
                    mean_cosine: r.mean_cosine,
                }),
                examples,
                examples_trained: r.examples as u64,
                tokens_trained: r.tokens as u64,
                train_seconds: r.seconds,
                reason: Some(reason),
            };
        self.ledger.commit_cycle_with(&outcome, &extras).await?;
        Ok(())
    }

    fn policy_records(&self, cycle: u32, choices: &[Choice]) -> Vec<PolicyChoice> {
        choices
            .iter()
            .map(|c| PolicyChoice {
                run_id: self.run_id,
                cycle,
                skill: c.skill.clone(),
                level: c.level,
                pass_rate: c.pass_rate,
                progress: c.progress,
                weight: c.weight.clamp(0.0, 1.0),
                reason: c.reason.clone(),
            })
            .collect()
    }

    async fn record_checkpoint(&mut self, hash: &str, parent: Option<&str>) -> Result<(), Error> {
        let path = self.ctx.store.path_of(hash, CHECKPOINT_KIND);
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.ledger
            .record_checkpoint(&CheckpointRecord {
                checkpoint_hash: hash.to_string(),
                parent_hash: parent.map(str::to_string),
                path: path.display().to_string(),
                bytes,
                params: self.ctx.model_config.num_params() as u64,
            })
            .await?;
        Ok(())
    }

    fn begin_usage(&self, cycle: u32) {
        if let Some(pool) = &self.pool {
            pool.plane.set_cycle(cycle);
        }
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).insert(cycle, (Instant::now(), BTreeMap::new()));
    }

    /// What each role spent in `cycle` so far. In-process roles take turns on the one device, so
    /// a role is idle whenever another works: idle = wall time of the cycle - own busy time. A
    /// CPU is not a GPU: its GPU-seconds and cost are 0.
    ///
    /// In a pool, each worker has a row per role it serves: busy = the time its leases of that
    /// role ran, idle = the cycle's wall time minus all its busy time, leases done and expired;
    /// the controller's own work is the `meta` row.
    fn role_usage(&self, cycle: u32) -> Vec<RoleUsage> {
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let Some((started, busy)) = usage.get(&cycle) else { return Vec::new() };
        let wall = started.elapsed().as_secs_f64();
        let device = self.budget.model.name.clone();
        if let Some(pool) = &self.pool {
            let leases = pool.plane.cycle_usage(cycle);
            let mut rows = Vec::new();
            let mut workers: BTreeMap<String, Vec<crate::plan::Role>> = pool.placements.iter().cloned().collect();
            for (worker, role) in leases.keys() {
                let roles = workers.entry(worker.clone()).or_default();
                if !roles.contains(role) {
                    roles.push(*role);
                }
            }
            let gpu_seconds = if self.budget.is_cpu() { 0.0 } else { wall };
            for (worker, roles) in workers {
                let worker_busy: f64 = roles.iter().filter_map(|r| leases.get(&(worker.clone(), *r))).map(|u| u.busy_seconds).sum();
                for (i, role) in roles.iter().enumerate() {
                    let u = leases.get(&(worker.clone(), *role)).cloned().unwrap_or_default();
                    // A device's GPU-seconds and cost are counted once, on its first role.
                    let gpu = if i == 0 { gpu_seconds } else { 0.0 };
                    rows.push(RoleUsage {
                        run_id: self.run_id,
                        cycle,
                        role: role.as_str().into(),
                        worker: worker.clone(),
                        device: device.clone(),
                        busy_seconds: u.busy_seconds.min(wall),
                        idle_seconds: if i == 0 { (wall - worker_busy).max(0.0) } else { 0.0 },
                        gpu_seconds: gpu,
                        cost_usd: self.budget.cost_usd(gpu),
                        leases: u64::from(u.leases + u.failures),
                        failures: u64::from(u.failures),
                    });
                }
            }
            if let Some(&meta) = busy.get("meta") {
                rows.push(RoleUsage { run_id: self.run_id, cycle, role: "meta".into(), worker: "controller".into(), device: "host".into(), busy_seconds: meta, idle_seconds: (wall - meta).max(0.0), gpu_seconds: 0.0, cost_usd: 0.0, leases: 0, failures: 0 });
            }
            return rows;
        }
        busy.iter()
            .map(|(role, &busy_seconds)| {
                let gpu_seconds = if self.budget.is_cpu() { 0.0 } else { wall };
                RoleUsage {
                    run_id: self.run_id,
                    cycle,
                    role: role.clone(),
                    worker: WORKER.into(),
                    device: device.clone(),
                    busy_seconds,
                    idle_seconds: (wall - busy_seconds).max(0.0),
                    gpu_seconds,
                    cost_usd: self.budget.cost_usd(gpu_seconds),
                    leases: 0,
                    failures: 0,
                }
            })
            .collect()
    }

    async fn step(&self, cycle: u32, role: &str, step: &str, started_at: &str, duration_ms: f64, detail: &impl Serialize) -> Result<(), Error> {
        if let Some((_, busy)) = self.usage.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&cycle) {
            *busy.entry(role.to_string()).or_default() += duration_ms / 1e3;
        }
        self.ledger
            .record_step(&StepRecord {
                run_id: self.run_id,
                cycle,
                role: role.into(),
                step: step.into(),
                worker: WORKER.into(),
                started_at: started_at.into(),
                duration_ms,
                detail_json: serde_json::to_string(detail)?,
            })
            .await?;
        Ok(())
    }

    /// Best effort: the cycle is marked failed so the ledger never shows it running forever.
    async fn fail_cycle(&self, cycle: u32, parent: &str, reason: &str) {
        let outcome = CycleOutcome {
            run_id: self.run_id,
            cycle,
            status: CycleStatus::Failed,
            checkpoint_hash: None,
            evaluated_hash: parent.to_string(),
            evals: Vec::new(),
            refusal: RefusalResult::default(),
            training_mix: Vec::new(),
            surgery: None,
            examples: Vec::new(),
            examples_trained: 0,
            tokens_trained: 0,
            train_seconds: 0.0,
            reason: Some(reason.to_string()),
        };
        if let Err(e) = self.ledger.commit_cycle(&outcome).await {
            tracing::warn!(cycle, "could not mark the cycle failed: {e}");
        }
    }

    fn bar(&self, len: u64, label: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {elapsed} {msg}").expect("valid template").progress_chars("=> "));
        bar.set_prefix(label.to_string());
        bar
    }
}

/// How a run begins.
enum Origin {
    /// A new run: pretrain a base, or (`Some`) take this stored checkpoint as the base.
    New { base: Option<String> },
    /// An interrupted run, from where its ledger stands; `spent`: its wall time so far.
    Resume { point: ResumePoint, spent: std::time::Duration },
}

enum Chosen {
    Resume(RunInfo),
    /// A new run, continuing from this checkpoint or (`None`) pretraining.
    New(Option<CycleRow>),
}

/// Decides between resuming an interrupted run and beginning a new one (see [`StartMode`]).
/// Interrupted runs that are not resumed are closed as `stopped`, so the ledger never shows two
/// runs in progress. Must be called with the run lock held: only then is a `running` run known
/// to be interrupted.
async fn choose_run(ledger: &Ledger, curriculum: &Curriculum, options: &RunOptions) -> Result<Chosen, Error> {
    let interrupted = ledger.interrupted_runs().await?;
    let hash = curriculum.hash();
    let resumable = match options.start {
        StartMode::Fresh => None,
        _ => interrupted.iter().rev().find(|r| r.curriculum_hash == hash).cloned(),
    };
    if options.start == StartMode::Resume && resumable.is_none() {
        let latest = match ledger.latest_run().await? {
            Some(r) => format!("its latest run is run {} of curriculum `{}`, {}", r.run_id, r.curriculum, r.status),
            None => "it has no runs".into(),
        };
        return Err(Error::Invalid(format!(
            "ledger {}: --resume: there is no interrupted run of curriculum `{}` ({}) to resume ({latest}); run without --resume to start a new run",
            options.ledger_path.display(),
            curriculum.name,
            options.curriculum_path.display()
        )));
    }
    for run in interrupted.iter().filter(|r| Some(r.run_id) != resumable.as_ref().map(|r| r.run_id)) {
        let why = match options.start {
            StartMode::Fresh => "interrupted (its controller died); not resumed: a new run was started with --fresh".to_string(),
            _ => format!("interrupted (its controller died); not resumed: a new run was started with another curriculum ({})", options.curriculum_path.display()),
        };
        tracing::warn!(run_id = run.run_id, "closing interrupted run {} as stopped: {why}", run.run_id);
        ledger.finish_run(run.run_id, RunStatus::Stopped, Some(&why)).await?;
    }
    if let Some(run) = resumable {
        return Ok(Chosen::Resume(run));
    }
    if options.base.is_none() && curriculum.pretrain.base == BaseSource::LastAccepted {
        let from = ledger.last_accepted_of_preset(&curriculum.preset).await?;
        if from.is_none() {
            info!(preset = %curriculum.preset, "no accepted checkpoint of this preset in the ledger yet: pretraining the base");
        }
        return Ok(Chosen::New(from));
    }
    Ok(Chosen::New(None))
}

/// The codecs `recompress` records for an accepted checkpoint (with a parent: also the delta).
fn expected_codecs(has_parent: bool) -> Vec<String> {
    let mut codecs = vec![Codec::EvolveFp.name().to_string(), Codec::Zstd.name().to_string()];
    if has_parent {
        codecs.push(format!("{}-delta", Codec::EvolveFp.name()));
    }
    codecs.extend(QUANTIZED.iter().map(|(name, _, _)| name.to_string()));
    codecs
}

/// A train step's detail: the report, and the example batch, from which a resumed run rebuilds
/// the generator's history of earlier batches (`Ledger::example_batches`).
fn train_detail(job: &TrainJob, report: &evolve_trainer::TrainReport, candidate: Option<usize>) -> Result<serde_json::Value, Error> {
    let mut detail = serde_json::to_value(report)?;
    if let Some(map) = detail.as_object_mut() {
        if let Some(batch) = &job.examples {
            map.insert("examples_batch".into(), batch.clone().into());
        }
        if let Some(k) = candidate {
            map.insert("candidate".into(), k.into());
            map.insert("learning_rate".into(), job.train.learning_rate.into());
        }
    }
    Ok(detail)
}

/// Candidate `k` of a cycle's training: the first is `job` itself; the others differ in their
/// seeds and walk a learning-rate ladder around it (x2^-0.5, x2^0.5, x2^-1, x2, ...).
fn candidate_job(job: &TrainJob, seed: u64, k: usize) -> TrainJob {
    let mut candidate = job.clone();
    if k > 0 {
        let step = k.div_ceil(2) as f64 * 0.5;
        candidate.train.learning_rate *= 2f64.powf(if k % 2 == 1 { -step } else { step });
        candidate.seed = cycle_seed(seed, job.cycle, 16 + k as u64);
        candidate.train.seed = cycle_seed(seed, job.cycle, 80 + k as u64);
    }
    candidate
}

fn cycle_seed(seed: u64, cycle: u32, role: u64) -> u64 {
    seed ^ (u64::from(cycle) << 32) ^ (role << 56)
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
