//! The learned judge: a small byte-level transformer that reads `prompt response|` and
//! predicts whether the verifier would accept the response. It is trained each cycle on
//! verifier-labelled responses of the current model and judges candidates of skills the
//! curriculum marks unverifiable. Its answer is one token, `y` or `n`; the score is the
//! probability mass of `y` against `n`.

use burn::prelude::*;
use evolve_model::{BOS, Llama, LlamaConfig, PAD, Tokenizer};
use evolve_tasks::{Problem, Response, Target};
use evolve_trainer::{OptimizerKind, Surgery, TrainConfig, TrainReport, Trainer};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::Scorer;

/// A response of the model to a problem, with the verifier's verdict on it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Judgement {
    pub problem: Problem,
    pub response: Response,
    pub correct: bool,
}

/// What the judge reads. Refusals are spelled out so they cannot collide with any answer.
fn judge_text(problem: &Problem, response: &Response) -> String {
    match response {
        Response::Text(t) => format!("{}{}|", problem.prompt, t),
        Response::Refused => format!("{}<refused>|", problem.prompt),
    }
}

const YES: u32 = b'y' as u32;
const NO: u32 = b'n' as u32;
/// Prompt (40) + answer (up to 18 decoded tokens) + frame, with room to spare.
const MAX_POSITIONS: usize = 96;
/// Rows scored per forward pass.
const SCORE_BATCH: usize = 256;

pub struct LearnedScorer {
    model: Llama,
    device: Device,
}

impl LearnedScorer {
    /// The judge's shape: a quarter of the tiny policy, cheap enough to retrain every cycle.
    pub fn config() -> LlamaConfig {
        LlamaConfig::for_bytes(64, 192, 2, 4, 4, MAX_POSITIONS)
    }

    pub fn init(seed: u64, device: &Device) -> Self {
        device.seed(seed);
        LearnedScorer { model: Llama::init(&Self::config(), device), device: device.clone() }
    }

    pub fn from_model(model: Llama, device: &Device) -> Self {
        LearnedScorer { model, device: device.clone() }
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// Continues training on `data` for `steps` AdamW steps of `batch_size` rows drawn with
    /// replacement, the two verdicts balanced so a skewed cycle (mostly failures) does not teach
    /// the judge to say `n` to everything.
    pub fn train(self, data: &[Judgement], steps: usize, batch_size: usize, seed: u64) -> (Self, TrainReport) {
        let (right, wrong): (Vec<&Judgement>, Vec<&Judgement>) = data.iter().partition(|j| j.correct);
        if steps == 0 || data.is_empty() {
            return (self, TrainReport::default());
        }
        let config = TrainConfig {
            optimizer: OptimizerKind::Adamw,
            learning_rate: 2e-3,
            warmup_steps: steps.min(10),
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            grad_clip: 1.0,
            surgery: Surgery::None,
            seed,
        };
        let device = self.device.clone();
        let mut trainer = Trainer::new(self.model, config, &device);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut next_batch = || {
            (0..batch_size)
                .map(|i| {
                    let pool = if (i % 2 == 0 && !right.is_empty()) || wrong.is_empty() { &right } else { &wrong };
                    let j = pool[rng.random_range(0..pool.len())];
                    Problem {
                        skill: j.problem.skill.clone(),
                        level: j.problem.level,
                        prompt: judge_text(&j.problem, &j.response),
                        target: Target::Text(if j.correct { "y" } else { "n" }.into()),
                        knobs: Vec::new(),
                    }
                })
                .collect()
        };
        let report = trainer.fit(steps, &mut next_batch, &mut Vec::new, &mut |_| {});
        (LearnedScorer { model: trainer.into_model(), device }, report)
    }

    /// The probability that each response is correct.
    pub fn score_batch(&self, pairs: &[(&Problem, &Response)]) -> Vec<f32> {
        let tokenizer = Tokenizer;
        let mut scores = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(SCORE_BATCH) {
            let rows: Vec<Vec<u32>> = chunk
                .iter()
                .map(|(p, r)| {
                    let mut t = vec![BOS];
                    t.extend(tokenizer.encode(&judge_text(p, r)));
                    t.truncate(MAX_POSITIONS);
                    t
                })
                .collect();
            let width = rows.iter().map(Vec::len).max().unwrap_or(1);
            let mut ids = vec![PAD as i64; rows.len() * width];
            for (r, row) in rows.iter().enumerate() {
                for (c, &t) in row.iter().enumerate() {
                    ids[r * width + c] = i64::from(t);
                }
            }
            // Right padding: causal attention keeps pads out of every real position.
            let logits = self.model.forward(Tensor::from_data(TensorData::new(ids, [rows.len(), width]), &self.device), None);
            let vocab = logits.dims()[2];
            let last: Vec<i64> = rows.iter().flat_map(|row| std::iter::repeat_n((row.len() - 1) as i64, vocab)).collect();
            let index = Tensor::<3, Int>::from_data(TensorData::new(last, [rows.len(), 1, vocab]), &self.device);
            let at_end = logits.gather(1, index).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 logits");
            for r in 0..rows.len() {
                let (yes, no) = (at_end[r * vocab + YES as usize], at_end[r * vocab + NO as usize]);
                scores.push(1.0 / (1.0 + (no - yes).exp()));
            }
        }
        scores
    }
}

impl Scorer for LearnedScorer {
    fn name(&self) -> &'static str {
        "learned"
    }

    fn score(&self, problem: &Problem, response: &Response) -> f32 {
        self.score_batch(&[(problem, response)])[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::auc;
    use crate::Verifier;
    use evolve_tasks::skill_by_name;

    /// Correct sortings and near-misses (one digit changed): the judge must learn to tell
    /// them apart, measured on problems it never trained on.
    fn judgements(seed: u64, n: usize) -> Vec<Judgement> {
        let skill = skill_by_name("sorting").unwrap();
        let verifier = Verifier::default();
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let problem = skill.generate(1, &mut rng);
                let Target::Text(t) = &problem.target else { unreachable!() };
                let response = if i % 2 == 0 {
                    Response::Text(t.clone())
                } else {
                    let mut b = t.clone().into_bytes();
                    let k = rng.random_range(0..b.len());
                    b[k] = b'0' + (b[k] - b'0' + rng.random_range(1..10u8)) % 10;
                    Response::Text(String::from_utf8(b).unwrap())
                };
                let correct = verifier.is_correct(&problem, &response);
                Judgement { problem, response, correct }
            })
            .collect()
    }

    #[test]
    fn the_judge_learns_to_agree_with_the_verifier() {
        let device = evolve_model::cpu_device();
        let (train, held_out) = (judgements(1, 2000), judgements(2, 400));
        let untrained = LearnedScorer::init(3, &device);
        let pairs: Vec<(&Problem, &Response)> = held_out.iter().map(|j| (&j.problem, &j.response)).collect();
        let labels: Vec<bool> = held_out.iter().map(|j| j.correct).collect();
        let before = auc(&untrained.score_batch(&pairs), &labels).unwrap();
        let (trained, report) = untrained.train(&train, 400, 64, 4);
        let scores = trained.score_batch(&pairs);
        let after = auc(&scores, &labels).unwrap();
        assert!(report.last_loss < report.first_loss, "{report:?}");
        assert!(after > 0.8 && after > before + 0.2, "AUC {before:.3} -> {after:.3}");
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
        // One row scores the same alone as inside a padded batch.
        let alone = trained.score(pairs[7].0, pairs[7].1);
        assert!((alone - scores[7]).abs() < 1e-5, "{alone} vs {}", scores[7]);
    }
}
