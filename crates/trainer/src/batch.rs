//! Right-padded training batches and the answer-only loss.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use evolve_model::{Llama, PAD, TokenBatch};
use evolve_policy::example_tokens;
use evolve_tasks::Problem;

/// Inputs and next-token targets, with a mask that keeps the loss on answer tokens only: the
/// prompt is given, so teaching the model to predict it would spend capacity on noise.
pub struct Batch {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<3, Int>,
    pub mask: Tensor<2>,
    pub answer_tokens: f32,
}

/// The host-side batch: token ids, targets and the answer mask, `[rows, width]` each.
pub fn token_batch(problems: &[Problem]) -> TokenBatch {
    let encoded: Vec<(Vec<u32>, usize)> = problems.iter().map(example_tokens).collect();
    let width = encoded.iter().map(|(t, _)| t.len() - 1).max().unwrap_or(1).max(1);
    let rows = encoded.len();
    let mut inputs = vec![PAD; rows * width];
    let mut targets = vec![PAD; rows * width];
    let mut mask = vec![0.0f32; rows * width];
    for (r, (tokens, answer_start)) in encoded.iter().enumerate() {
        for pos in 0..tokens.len() - 1 {
            inputs[r * width + pos] = tokens[pos];
            targets[r * width + pos] = tokens[pos + 1];
            // Position `pos` predicts token `pos + 1`.
            if pos + 1 >= *answer_start {
                mask[r * width + pos] = 1.0;
            }
        }
    }
    let answer_tokens = mask.iter().sum::<f32>().max(1.0);
    TokenBatch { rows, width, inputs, targets, mask, answer_tokens }
}

impl Batch {
    pub fn new(problems: &[Problem], device: &Device) -> Self {
        let t = token_batch(problems);
        let ids = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        Batch {
            inputs: Tensor::from_data(TensorData::new(ids(&t.inputs), [t.rows, t.width]), device),
            targets: Tensor::from_data(TensorData::new(ids(&t.targets), [t.rows, t.width, 1]), device),
            mask: Tensor::from_data(TensorData::new(t.mask, [t.rows, t.width]), device),
            answer_tokens: t.answer_tokens,
        }
    }
}

/// Mean cross-entropy over answer tokens.
pub fn answer_loss(model: &Llama, batch: &Batch) -> Tensor<1> {
    let logits = model.forward(batch.inputs.clone(), None);
    let [rows, width, _] = logits.dims();
    let picked = log_softmax(logits, 2).gather(2, batch.targets.clone()).reshape([rows, width]);
    (picked * batch.mask.clone()).sum().neg().div_scalar(batch.answer_tokens)
}

/// How likely the model finds each problem's own target, teacher-forced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnswerLikelihood {
    /// Mean negative log-likelihood per answer token.
    pub nll_per_token: f32,
    /// Probability of the whole answer: what sampling at temperature 1 would get right. It
    /// moves before greedy accuracy does (a frontier answered 0% right can still be getting
    /// closer), but unlike the per-token loss it does not move on a target whose answers stay
    /// out of reach while a few of their tokens get easier.
    pub answer_prob: f64,
}

pub fn answer_likelihood(model: &Llama, problems: &[Problem], device: &Device) -> Vec<AnswerLikelihood> {
    let mut out = Vec::with_capacity(problems.len());
    for chunk in problems.chunks(256) {
        let batch = Batch::new(chunk, device);
        let logits = model.forward(batch.inputs.clone(), None);
        let [rows, width, _] = logits.dims();
        let picked = log_softmax(logits, 2).gather(2, batch.targets.clone()).reshape([rows, width]);
        let per_row = (picked * batch.mask.clone()).sum_dim(1).reshape([rows]).neg();
        let answer_tokens = batch.mask.clone().sum_dim(1).reshape([rows]).clamp_min(1.0);
        let totals = per_row.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 losses");
        let tokens = answer_tokens.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 counts");
        out.extend(totals.iter().zip(&tokens).map(|(&total, &n)| AnswerLikelihood { nll_per_token: total / n, answer_prob: (-f64::from(total)).exp() }));
    }
    out
}
