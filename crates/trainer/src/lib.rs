//! The trainer role: AdamW with warm-up and cosine decay over answer-token cross-entropy, and
//! gradient surgery so that learning the frontier does not erase what the model already knows.
//!
//! A-GEM (Chaudhry et al. 2019): per step, the gradient `g` of the new-data loss and the
//! gradient `r` of a replay (anchor) batch are taken over *all* parameters; when `g·r < 0` the
//! update would increase the replay loss, so `g` is replaced by `g - (g·r / r·r) r`, its
//! projection onto the plane normal to `r`. Mode `none` is plain fine-tuning, kept for ablations.
//!
//! Architecture invariants: the trainer sees problems and a model, never the ledger or the
//! curriculum file; it reports what it did (`TrainReport`) and the caller records it. The device
//! is a run-time argument; the autodiff wrapper is added and removed here and nowhere else.

mod batch;
mod surgery;

use std::collections::BTreeMap;
use std::time::Instant;

use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, OptimizerRecord, SgdConfig};
use burn::prelude::*;
use evolve_model::{CpuTrainPass, Llama, TokenBatch, cpu_device};
use evolve_policy::example_tokens;
use evolve_tasks::Problem;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

pub use batch::{AnswerLikelihood, Batch, answer_likelihood, answer_loss, token_batch};
pub use surgery::{Gradient, PcgradPlan, Projection, agem_project, agem_project_flat, agem_project_in_place, agem_project_grads, combine, combine_grads, gradient_gram, gram, pcgrad_plan};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Surgery {
    None,
    Agem,
    Pcgrad,
}

impl Surgery {
    pub fn as_str(&self) -> &'static str {
        match self {
            Surgery::None => "none",
            Surgery::Agem => "agem",
            Surgery::Pcgrad => "pcgrad",
        }
    }
}

/// AdamW for pretraining; SGD with momentum for fine-tuning a trained model, where AdamW's
/// per-coordinate normalization (with fresh moments) gives parameters that the new data barely
/// touches full-size steps in noisy directions, and so erases mastered skills. Under SGD the
/// update is proportional to the gradient, which is also what A-GEM's guarantee assumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of the peak, reached by cosine decay.
    pub min_lr_ratio: f64,
    pub weight_decay: f32,
    pub grad_clip: f32,
    pub surgery: Surgery,
    /// Seeds PCGrad's per-step projection order.
    pub seed: u64,
}

/// What one `fit` did, for the ledger.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainReport {
    pub steps: usize,
    pub examples: usize,
    /// Tokens of the training examples, prompt and answer, without padding. A-GEM's reference
    /// batches are not training data and are not counted, so arms of an ablation that train
    /// the same rows report the same tokens whatever their surgery (counting what was fed,
    /// padding and references, PCGrad's length-grouped slices showed half of A-GEM's).
    pub tokens: usize,
    pub projected_steps: usize,
    /// Mean cosine before projection: between new-data and replay gradients (A-GEM), or over
    /// pairs of group gradients (PCGrad).
    pub mean_cosine: Option<f64>,
    pub first_loss: f32,
    pub last_loss: f32,
    pub seconds: f64,
}

impl TrainReport {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Progress of one step, for progress bars, logs and snapshots.
pub struct StepInfo<'a> {
    pub step: usize,
    pub steps: usize,
    pub lr: f64,
    /// What training has done up to and including this step.
    pub report: &'a TrainReport,
    /// The weights after this step (with autodiff; `valid()` gives a plain copy).
    pub model: &'a Llama,
}

pub struct Trainer {
    model: Llama,
    optimizer: ModuleOptimizer,
    config: TrainConfig,
    device: Device,
    /// Steps taken before this trainer was resumed, so the schedule continues where it was.
    resumed_at: usize,
    /// Gradients from the fused CPU pass (`evolve_model::CpuTrainPass`) instead of burn's
    /// autodiff: on the CPU unless turned off.
    fused_cpu: bool,
    /// The last step's pass, whose buffers the next step reuses.
    spent_pass: Option<CpuTrainPass>,
}

/// Why optimizer state could not be saved or resumed.
#[derive(Debug, thiserror::Error)]
pub enum TrainerStateError {
    #[error("optimizer state {path}: {why}")]
    State { path: String, why: String },
}

impl Trainer {
    /// Takes ownership of a model (on a plain device) and trains it on `device`'s autodiff twin.
    pub fn new(model: Llama, config: TrainConfig, device: &Device) -> Self {
        let device = device.clone().autodiff();
        let clipping = Some(GradientClippingConfig::Norm(config.grad_clip));
        let optimizer = match config.optimizer {
            OptimizerKind::Adamw => AdamWConfig::new().with_weight_decay(config.weight_decay).with_grad_clipping(clipping).init(),
            OptimizerKind::Sgd => SgdConfig::new().with_momentum(Some(MomentumConfig::new().with_momentum(0.9))).with_gradient_clipping(clipping).init(),
        };
        let fused_cpu = device.clone().inner() == cpu_device();
        // Stable ids: optimizer state saved here lines up with the same model loaded elsewhere.
        Trainer { model: model.with_stable_param_ids().fork(&device).train(), optimizer, config, device, resumed_at: 0, fused_cpu, spent_pass: None }
    }

    /// Writes the optimizer's state (moments, step counts) and the schedule position to `path`
    /// atomically: with the weights' checkpoint, what `resume` needs to continue exactly.
    pub fn save_state(&self, path: &std::path::Path, steps_done: usize) -> Result<(), TrainerStateError> {
        let err = |why: String| TrainerStateError::State { path: path.display().to_string(), why };
        let bytes = self.optimizer.to_record().into_bytes().map_err(|e| err(e.to_string()))?;
        let mut out = (steps_done as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&bytes);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &out).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| err(e.to_string()))
    }

    /// A trainer for `model` (the weights saved with the state) that continues from the
    /// optimizer state and schedule position in `path`.
    pub fn resume(model: Llama, config: TrainConfig, device: &Device, path: &std::path::Path) -> Result<Self, TrainerStateError> {
        let err = |why: String| TrainerStateError::State { path: path.display().to_string(), why };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        if bytes.len() < 8 {
            return Err(err("truncated: no schedule position".into()));
        }
        let steps_done = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let record = OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes[8..].to_vec())).map_err(|e| err(format!("not an optimizer record: {e}")))?;
        let mut trainer = Trainer::new(model, config, device);
        trainer.optimizer = trainer.optimizer.load_record(record);
        trainer.resumed_at = steps_done;
        Ok(trainer)
    }

    /// Whether gradients come from the fused CPU pass (on the CPU) or burn's autodiff. Both give
    /// the same gradients up to float rounding; off only to compare the two.
    pub fn with_fused_cpu(mut self, fused: bool) -> Self {
        self.fused_cpu = fused && self.device.clone().inner() == cpu_device();
        self
    }

    /// The current weights, without autodiff.
    pub fn model(&self) -> Llama {
        self.model.valid()
    }

    pub fn into_model(self) -> Llama {
        self.model.valid()
    }

    fn lr_at(&self, step: usize, steps: usize) -> f64 {
        let c = &self.config;
        if step < c.warmup_steps {
            return c.learning_rate * (step + 1) as f64 / c.warmup_steps as f64;
        }
        let span = steps.saturating_sub(c.warmup_steps).max(1) as f64;
        let progress = ((step - c.warmup_steps) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        c.learning_rate * (c.min_lr_ratio + (1.0 - c.min_lr_ratio) * cosine)
    }

    /// Runs `steps` optimizer steps. `next_batch` yields the training problems of each step;
    /// `next_reference` the replay problems A-GEM protects (ignored when surgery is `none`).
    pub fn fit(
        &mut self,
        steps: usize,
        next_batch: &mut dyn FnMut() -> Vec<Problem>,
        next_reference: &mut dyn FnMut() -> Vec<Problem>,
        on_step: &mut dyn FnMut(StepInfo),
    ) -> TrainReport {
        let mut report = TrainReport::default();
        let mut cosine_sum = 0.0;
        let mut rng = StdRng::seed_from_u64(self.config.seed);
        for step in 0..steps {
            let step_started = Instant::now();
            let problems = next_batch();
            report.examples += problems.len();
            report.tokens += problems.iter().map(|p| example_tokens(p).0.len() - 1).sum::<usize>();
            // The fused pass reads a host copy of the weights, taken once per step.
            let pass = self.fused_cpu.then(|| CpuTrainPass::reusing(&self.model, self.spent_pass.take()));
            let (loss_value, grads) = match self.config.surgery {
                Surgery::Pcgrad => {
                    let (loss, grads, plan) = self.pcgrad_step(&problems, pass.as_ref(), &mut rng);
                    cosine_sum += plan.mean_cosine;
                    report.projected_steps += usize::from(plan.projections > 0);
                    (loss, grads)
                }
                Surgery::Agem => {
                    // Two passes, not one over both batches: a doubled batch's activations fall
                    // out of cache, and one pass over twice the rows measured slower than two.
                    let (loss, grads, _) = self.gradient(&problems, pass.as_ref());
                    let (_, reference_grads, _) = self.gradient(&next_reference(), pass.as_ref());
                    let projection = agem_project(&self.model, grads, &reference_grads);
                    cosine_sum += projection.cosine;
                    report.projected_steps += usize::from(projection.projected);
                    (loss, projection.grads)
                }
                Surgery::None => {
                    let (loss, grads, _) = self.gradient(&problems, pass.as_ref());
                    (loss, grads)
                }
            };
            let grads = match (grads, &pass) {
                (Gradient::Host(flat), Some(pass)) => host_gradients(pass, &flat),
                (Gradient::Tensors(grads), _) => grads,
                (Gradient::Host(_), None) => unreachable!("host gradients come only from the fused pass"),
            };
            self.spent_pass = pass;
            let lr = self.lr_at(self.resumed_at + step, self.resumed_at + steps);
            self.model = self.optimizer.step(lr, self.model.clone(), grads);
            if step == 0 {
                report.first_loss = loss_value;
            }
            report.last_loss = loss_value;
            report.steps += 1;
            if self.config.surgery != Surgery::None {
                report.mean_cosine = Some(cosine_sum / report.steps as f64);
            }
            // Time spent training, not in the callback (which may store a snapshot).
            report.seconds += step_started.elapsed().as_secs_f64();
            on_step(StepInfo { step, steps, lr, report: &report, model: &self.model });
        }
        report
    }

    /// One set's loss, gradient and answer tokens (see `gradients_of`).
    fn gradient(&self, problems: &[Problem], pass: Option<&CpuTrainPass>) -> (f32, Gradient, f32) {
        self.gradients_of(&[problems], pass).pop().expect("one set, one gradient")
    }

    /// For each set of problems: its loss at the current weights, its gradient and the answer
    /// tokens the loss averages over. The fused pass takes all the sets in one
    /// pass (PCGrad's groups, small slices of one batch, cost what the batch costs); burn's
    /// autodiff one backward pass each.
    fn gradients_of(&self, sets: &[&[Problem]], pass: Option<&CpuTrainPass>) -> Vec<(f32, Gradient, f32)> {
        if let Some(pass) = pass {
            let batches: Vec<TokenBatch> = sets.iter().map(|s| token_batch(s)).collect();
            let results = pass.loss_and_gradients(&batches.iter().collect::<Vec<_>>());
            return results.into_iter().zip(&batches).map(|((loss, grad), b)| (loss, Gradient::Host(grad), b.answer_tokens)).collect();
        }
        sets.iter()
            .map(|problems| {
                let batch = Batch::new(problems, &self.device);
                let loss = answer_loss(&self.model, &batch);
                let value = loss.clone().into_scalar::<f32>();
                (value, Gradient::Tensors(GradientsParams::from_grads(loss.backward(), &self.model)), batch.answer_tokens)
            })
            .collect()
    }

    /// One backward pass per group (skill × level) of `problems`, then PCGrad. Returns the
    /// batch loss (token-weighted mean of the groups'), the combined gradient and the plan.
    fn pcgrad_step(&self, problems: &[Problem], pass: Option<&CpuTrainPass>, rng: &mut StdRng) -> (f32, Gradient, PcgradPlan) {
        let mut groups: BTreeMap<(&str, u32), Vec<Problem>> = BTreeMap::new();
        for p in problems {
            groups.entry((p.skill.as_str(), p.level)).or_default().push(p.clone());
        }
        let sets: Vec<&[Problem]> = groups.values().map(Vec::as_slice).collect();
        let mut grads = Vec::with_capacity(groups.len());
        let mut answer_tokens = Vec::with_capacity(groups.len());
        let mut loss_sum = 0.0f64;
        for (loss, grad, answers) in self.gradients_of(&sets, pass) {
            loss_sum += loss as f64 * answers as f64;
            answer_tokens.push(answers as f64);
            grads.push(grad);
        }
        let total: f64 = answer_tokens.iter().sum();
        let weights: Vec<f64> = answer_tokens.iter().map(|t| t / total).collect();
        let n = grads.len();
        let orders: Vec<Vec<usize>> = (0..n)
            .map(|i| {
                let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                others.shuffle(rng);
                others
            })
            .collect();
        let plan = pcgrad_plan(&gram(&self.model, &grads), &weights, &orders);
        let combined = combine(&self.model, &grads, &plan.coefficients);
        ((loss_sum / total) as f32, combined, plan)
    }
}

/// The fused pass's flat gradient as burn's per-parameter gradients, for the optimizer.
fn host_gradients(pass: &CpuTrainPass, flat: &[f32]) -> GradientsParams {
    let device = cpu_device();
    let mut grads = GradientsParams::new();
    for slot in pass.slots() {
        let data = TensorData::new(flat[slot.offset..slot.offset + slot.len()].to_vec(), slot.shape.clone());
        match slot.shape.len() {
            1 => grads.register(slot.id, Tensor::<1>::from_data(data, &device)),
            2 => grads.register(slot.id, Tensor::<2>::from_data(data, &device)),
            rank => unreachable!("the model has no rank-{rank} parameters"),
        }
    }
    grads
}
