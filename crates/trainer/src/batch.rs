//! Right-padded training batches and the answer-only loss.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use evolve_model::{Llama, PAD};
use evolve_policy::example_tokens;
use evolve_tasks::Problem;

/// Inputs and next-token targets, with a mask that keeps the loss on answer tokens only: the
/// prompt is given, so teaching the model to predict it would spend capacity on noise.
pub struct Batch {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<3, Int>,
    pub mask: Tensor<2>,
    pub answer_tokens: f32,
    /// Tokens fed through the model (rows × padded length).
    pub tokens: usize,
}

impl Batch {
    pub fn new(problems: &[Problem], device: &Device) -> Self {
        let encoded: Vec<(Vec<u32>, usize)> = problems.iter().map(example_tokens).collect();
        let width = encoded.iter().map(|(t, _)| t.len() - 1).max().unwrap_or(1).max(1);
        let rows = encoded.len();
        let mut inputs = vec![PAD as i64; rows * width];
        let mut targets = vec![PAD as i64; rows * width];
        let mut mask = vec![0.0f32; rows * width];
        for (r, (tokens, answer_start)) in encoded.iter().enumerate() {
            for pos in 0..tokens.len() - 1 {
                inputs[r * width + pos] = tokens[pos] as i64;
                targets[r * width + pos] = tokens[pos + 1] as i64;
                // Position `pos` predicts token `pos + 1`.
                if pos + 1 >= *answer_start {
                    mask[r * width + pos] = 1.0;
                }
            }
        }
        let answer_tokens = mask.iter().sum::<f32>().max(1.0);
        Batch {
            inputs: Tensor::from_data(TensorData::new(inputs, [rows, width]), device),
            targets: Tensor::from_data(TensorData::new(targets, [rows, width, 1]), device),
            mask: Tensor::from_data(TensorData::new(mask, [rows, width]), device),
            answer_tokens,
            tokens: rows * width,
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
