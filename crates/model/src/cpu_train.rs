//! The fused CPU training pass: the answer-token cross-entropy and its gradient with respect to
//! every parameter, computed by hand instead of through burn's autodiff.
//!
//! burn's CPU backend spends most of a training step of evolve's small models on dispatching,
//! allocating and recording ~100 small tensor operations per layer, not on arithmetic (about a
//! third of a step is in `gemm`). This pass does the same mathematics as `Llama::forward` plus
//! `answer_loss` and their backward pass, as a few `gemm` calls per layer over the whole batch
//! (transposes and column bands of the fused q/k/v buffer are strides, never copies) and
//! hand-written loops for RMSNorm, rotary, causal attention and SwiGLU, parallel over batch rows.
//! Logits are formed only at answer positions, the only ones the loss reads.
//!
//! Results agree with burn's autodiff up to float rounding (the trainer's tests hold loss and
//! every gradient to it); the sums are formed in an order fixed by the shapes alone, so a step is
//! deterministic whatever the thread count. Only the CPU uses it; other devices train through
//! burn's autodiff, and the optimizer step stays burn's on every device.

use burn::module::{Param, ParamId};
use burn::prelude::Tensor;
use std::ops::Range;

use rayon::prelude::*;

use crate::cpu_kernels::{Operand, dot, exp_in_place, gemm_into, rope_table, rotate, side_by_side, simd_fn, values};
use crate::llama::Llama;

/// A right-padded batch as token ids, `[rows, width]` each: position `p` of row `r` reads
/// `inputs[r * width + p]` and predicts `targets[..]`, counted in the loss with weight `mask[..]`
/// (1 on answer tokens, 0 elsewhere). The loss is `Σ mask · -log p(target) / answer_tokens`.
pub struct TokenBatch {
    pub rows: usize,
    pub width: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub mask: Vec<f32>,
    pub answer_tokens: f32,
}

/// One parameter tensor: its id in the model, its shape, and where it sits in the flat vectors
/// of values and gradients.
#[derive(Clone, Debug)]
pub struct ParamSlot {
    pub id: ParamId,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl ParamSlot {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Offsets of one layer's parameters in the flat vector.
struct LayerAt {
    attn_norm: usize,
    q: usize,
    k: usize,
    v: usize,
    o: usize,
    mlp_norm: usize,
    gate: usize,
    up: usize,
    down: usize,
    /// In `CpuTrainPass::fused`: `[d, d + 2 kv]` (q, k, v side by side) and `[d, 2 inter]`
    /// (gate, up), so each product with the layer's input is one `gemm`.
    qkv: usize,
    gate_up: usize,
}

/// Buffers of earlier passes, kept for the next: a step's activations are tens of megabytes, and
/// fresh allocations of that size come from the kernel as new pages to fault in and zero.
#[derive(Default)]
struct Buffers(std::sync::Mutex<Vec<Vec<f32>>>);

impl Buffers {
    /// A zeroed buffer of `len`, reusing the smallest kept one that is large enough.
    fn take(&self, len: usize) -> Vec<f32> {
        let mut buffer = self.take_for_overwrite(0);
        buffer.resize(len, 0.0);
        buffer
    }

    /// A buffer of `len` whose contents are unspecified: for outputs written in full.
    fn take_for_overwrite(&self, len: usize) -> Vec<f32> {
        let mut kept = self.0.lock().expect("buffer pool");
        let best = kept.iter().enumerate().filter(|(_, b)| b.capacity() >= len).min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i);
        let mut buffer = best.map(|i| kept.swap_remove(i)).unwrap_or_default();
        buffer.truncate(len);
        buffer.resize(len, 0.0);
        buffer
    }

    fn copy_of(&self, data: &[f32]) -> Vec<f32> {
        let mut buffer = self.take(0);
        buffer.extend_from_slice(data);
        buffer
    }

    fn give(&self, buffers: impl IntoIterator<Item = Vec<f32>>) {
        self.0.lock().expect("buffer pool").extend(buffers);
    }
}

/// A snapshot of a model's weights, flat, with the shapes the pass needs.
pub struct CpuTrainPass {
    d: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    inter: usize,
    vocab: usize,
    rope_theta: f64,
    attn_eps: Vec<f32>,
    mlp_eps: Vec<f32>,
    final_eps: f32,
    values: Vec<f32>,
    fused: Vec<f32>,
    slots: Vec<ParamSlot>,
    embed: usize,
    layers: Vec<LayerAt>,
    norm: usize,
    /// `None` when the output projection is the embedding's transpose.
    lm_head: Option<usize>,
    buffers: Buffers,
}

/// What the forward pass keeps for the backward pass, per layer.
struct LayerActivations {
    input: Vec<f32>,
    attn_x: Vec<f32>,
    attn_inv_rms: Vec<f32>,
    /// `[n, d + 2 kv]`: queries and keys after rotary, values.
    qkv: Vec<f32>,
    /// `[heads, len, len]` per row, zero above the diagonal.
    probs: Vec<f32>,
    context: Vec<f32>,
    middle: Vec<f32>,
    mlp_x: Vec<f32>,
    mlp_inv_rms: Vec<f32>,
    /// `[n, 2 inter]`: gate and up projections side by side.
    gate_up: Vec<f32>,
    act: Vec<f32>,
}

impl CpuTrainPass {
    /// Copies the weights out of `model` (any device; the copy lives in host memory).
    pub fn new(model: &Llama) -> Self {
        Self::reusing(model, None)
    }

    /// Like `new`, keeping the buffers of `spent` (the previous step's pass) for this one.
    pub fn reusing(model: &Llama, spent: Option<CpuTrainPass>) -> Self {
        fn add<const D: usize>(flat: &mut Vec<f32>, slots: &mut Vec<ParamSlot>, p: &Param<Tensor<D>>) -> usize {
            let offset = flat.len();
            flat.extend_from_slice(&values(p.val()));
            slots.push(ParamSlot { id: p.id, shape: p.dims().to_vec(), offset });
            offset
        }
        let (buffers, mut flat, mut fused) = match spent {
            Some(spent) => (spent.buffers, spent.values, spent.fused),
            None => (Buffers::default(), Vec::new(), Vec::new()),
        };
        flat.clear();
        fused.clear();
        let mut slots = Vec::new();
        let embed = add(&mut flat, &mut slots, &model.embed_tokens.weight);
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            let (a, m) = (&l.self_attn, &l.mlp);
            let mut p2 = |p: &Param<Tensor<2>>| add(&mut flat, &mut slots, p);
            let (q, k, v, o) = (p2(&a.q_proj.weight), p2(&a.k_proj.weight), p2(&a.v_proj.weight), p2(&a.o_proj.weight));
            let (gate, up, down) = (p2(&m.gate_proj.weight), p2(&m.up_proj.weight), p2(&m.down_proj.weight));
            let attn_norm = add(&mut flat, &mut slots, &l.input_layernorm.gamma);
            let mlp_norm = add(&mut flat, &mut slots, &l.post_attention_layernorm.gamma);
            layers.push(LayerAt { attn_norm, q, k, v, o, mlp_norm, gate, up, down, qkv: 0, gate_up: 0 });
        }
        let norm = add(&mut flat, &mut slots, &model.norm.gamma);
        let lm_head = model.lm_head.as_ref().map(|h| add(&mut flat, &mut slots, &h.weight));
        let first = &model.layers[0].self_attn;
        let [vocab, d] = model.embed_tokens.weight.dims();
        let (kv, inter) = (first.n_kv_heads * first.head_dim, model.layers[0].mlp.down_proj.weight.dims()[0]);
        for at in &mut layers {
            at.qkv = fused.len();
            fused.extend(side_by_side(&[&flat[at.q..at.q + d * d], &flat[at.k..at.k + d * kv], &flat[at.v..at.v + d * kv]], d));
            at.gate_up = fused.len();
            fused.extend(side_by_side(&[&flat[at.gate..at.gate + d * inter], &flat[at.up..at.up + d * inter]], d));
        }
        CpuTrainPass {
            d,
            n_heads: first.n_heads,
            n_kv_heads: first.n_kv_heads,
            head_dim: first.head_dim,
            inter,
            vocab,
            rope_theta: model.rope_theta,
            attn_eps: model.layers.iter().map(|l| l.input_layernorm.epsilon as f32).collect(),
            mlp_eps: model.layers.iter().map(|l| l.post_attention_layernorm.epsilon as f32).collect(),
            final_eps: model.norm.epsilon as f32,
            values: flat,
            fused,
            slots,
            embed,
            layers,
            norm,
            lm_head,
            buffers,
        }
    }

    /// Every parameter, in the order of the flat gradient vector.
    pub fn slots(&self) -> &[ParamSlot] {
        &self.slots
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    fn w(&self, offset: usize, len: usize) -> &[f32] {
        &self.values[offset..offset + len]
    }

    fn fused(&self, offset: usize, len: usize) -> &[f32] {
        &self.fused[offset..offset + len]
    }

    /// The loss of `batch` and its gradient, flat in `slots()` order.
    pub fn loss_and_gradient(&self, batch: &TokenBatch) -> (f32, Vec<f32>) {
        self.loss_and_gradients(&[batch]).pop().expect("one batch, one gradient")
    }

    /// Each batch's loss and gradient, from one pass over all their rows: PCGrad's group
    /// gradients cost one pass of the batch they were cut from, not one small pass each. Only
    /// the sums that form weight gradients are split by batch; every row's activations and their
    /// gradients are the row's alone. (Two full batches are faster in two passes: the doubled
    /// activations fall out of cache.)
    pub fn loss_and_gradients(&self, batches: &[&TokenBatch]) -> Vec<(f32, Vec<f32>)> {
        // Each row runs only up to its last answer token: under causal attention later positions
        // (the right padding) cannot change the loss, so the batches are packed without them, one
        // after the other, and attention runs per row at that row's length.
        let (mut lengths, mut groups) = (Vec::new(), Vec::with_capacity(batches.len()));
        let (mut inputs, mut targets, mut mask, mut positions, mut scales) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for batch in batches {
            let (rows, width) = (batch.rows, batch.width);
            assert!(batch.inputs.len() == rows * width && batch.targets.len() == rows * width && batch.mask.len() == rows * width, "token batch is not {rows}x{width}");
            let start = inputs.len();
            for r in 0..rows {
                let at = r * width;
                let len = batch.mask[at..at + width].iter().rposition(|&m| m != 0.0).map_or(0, |p| p + 1);
                lengths.push(len);
                inputs.extend_from_slice(&batch.inputs[at..at + len]);
                targets.extend_from_slice(&batch.targets[at..at + len]);
                mask.extend_from_slice(&batch.mask[at..at + len]);
                positions.extend(0..len);
            }
            scales.push(1.0 / batch.answer_tokens);
            groups.push(start..inputs.len());
        }
        let n = inputs.len();
        let width = batches.iter().map(|b| b.width).max().unwrap_or(1);
        let (d, kv, inter, vocab) = (self.d, self.kv_dim(), self.inter, self.vocab);
        let pool = &self.buffers;
        let qkv_width = d + 2 * kv;
        let (cos, sin) = rope_table(self.head_dim, self.rope_theta, width);
        let embed = self.w(self.embed, vocab * d);
        let shape = Shape { d, kv, heads: self.n_heads, kv_heads: self.n_kv_heads, head_dim: self.head_dim };
        let heads = self.n_heads;

        // Forward, keeping what the backward pass reads.
        let mut h = pool.take_for_overwrite(n * d);
        for (out, &t) in h.chunks_exact_mut(d).zip(&inputs) {
            out.copy_from_slice(&embed[t as usize * d..(t as usize + 1) * d]);
        }
        let mut saved = Vec::with_capacity(self.layers.len());
        for (l, at) in self.layers.iter().enumerate() {
            let input = pool.copy_of(&h);
            let (attn_x, attn_inv_rms) = rms_norm(pool, &h, self.w(at.attn_norm, d), self.attn_eps[l]);
            let mut qkv = pool.take_for_overwrite(n * qkv_width);
            gemm_into(&mut qkv, qkv_width, Operand::rows(&attn_x, d), Operand::rows(self.fused(at.qkv, d * qkv_width), qkv_width), (n, d, qkv_width), false, true);
            qkv.par_chunks_mut(qkv_width).zip(positions.par_iter()).for_each(|(x, &p)| rotate_row(&mut x[..d + kv], &cos, &sin, p, self.head_dim));
            let mut probs = pool.take(lengths.iter().map(|l| heads * l * l).sum());
            let mut context = pool.take(n * d);
            split_mut(&mut context, lengths.iter().map(|l| l * d))
                .into_par_iter()
                .zip(split_mut(&mut probs, lengths.iter().map(|l| heads * l * l)))
                .zip(split(&qkv, lengths.iter().map(|l| l * qkv_width)))
                .zip(lengths.par_iter())
                .for_each(|(((context, probs), qkv), &len)| attention_forward(&shape, len, qkv, probs, context));
            gemm_into(&mut h, d, Operand::rows(&context, d), Operand::rows(self.w(at.o, d * d), d), (n, d, d), true, true);
            let middle = pool.copy_of(&h);
            let (mlp_x, mlp_inv_rms) = rms_norm(pool, &h, self.w(at.mlp_norm, d), self.mlp_eps[l]);
            let mut gate_up = pool.take_for_overwrite(n * 2 * inter);
            gemm_into(&mut gate_up, 2 * inter, Operand::rows(&mlp_x, d), Operand::rows(self.fused(at.gate_up, d * 2 * inter), 2 * inter), (n, d, 2 * inter), false, true);
            let mut act = pool.take_for_overwrite(n * inter);
            act.par_chunks_mut(inter).zip(gate_up.par_chunks(2 * inter)).for_each(|(a, gu)| swiglu_forward(gu, a));
            gemm_into(&mut h, d, Operand::rows(&act, inter), Operand::rows(self.w(at.down, inter * d), d), (n, inter, d), true, true);
            saved.push(LayerActivations { input, attn_x, attn_inv_rms, qkv, probs, context, middle, mlp_x, mlp_inv_rms, gate_up, act });
        }
        let (normed, inv_rms) = rms_norm(pool, &h, self.w(self.norm, d), self.final_eps);

        // The loss, from logits at answer positions only.
        let answer_rows: Vec<usize> = (0..n).filter(|&i| mask[i] != 0.0).collect();
        let na = answer_rows.len();
        // Each batch's answer rows, as a range of `answer_rows` (both are in packed order).
        let answer_groups: Vec<Range<usize>> = groups.iter().map(|g| answer_rows.partition_point(|&i| i < g.start)..answer_rows.partition_point(|&i| i < g.end)).collect();
        let mut picked = pool.take_for_overwrite(na * d);
        for (out, &i) in picked.chunks_exact_mut(d).zip(&answer_rows) {
            out.copy_from_slice(&normed[i * d..(i + 1) * d]);
        }
        let head = match self.lm_head {
            Some(offset) => Operand::rows(self.w(offset, d * vocab), vocab),
            None => Operand::rows(embed, d).t(),
        };
        let mut logits = pool.take_for_overwrite(na * vocab);
        gemm_into(&mut logits, vocab, Operand::rows(&picked, d), head, (na, d, vocab), false, true);
        let mut losses = vec![0.0f32; batches.len()];
        for (g, answers) in answer_groups.iter().enumerate() {
            let scale = scales[g];
            let row_losses: Vec<f64> = logits[answers.start * vocab..answers.end * vocab]
                .par_chunks_mut(vocab)
                .zip(answer_rows[answers.clone()].par_iter())
                .map(|(z, &i)| cross_entropy_backward(z, targets[i] as usize, mask[i], scale) as f64)
                .collect();
            losses[g] = (row_losses.iter().sum::<f64>() * scale as f64) as f32;
        }
        // `logits` now holds d loss / d logits, each row scaled by its own batch's answer tokens.

        let mut grads = vec![vec![0.0f32; self.values.len()]; batches.len()];
        let mut dpicked = pool.take_for_overwrite(na * d);
        match self.lm_head {
            Some(offset) => {
                weight_gradients(&mut grads, offset, &answer_groups, Operand::rows(&picked, d), Operand::rows(&logits, vocab), (d, vocab));
                gemm_into(&mut dpicked, d, Operand::rows(&logits, vocab), Operand::rows(self.w(offset, d * vocab), vocab).t(), (na, vocab, d), false, true);
            }
            None => {
                weight_gradients(&mut grads, self.embed, &answer_groups, Operand::rows(&logits, vocab), Operand::rows(&picked, d), (vocab, d));
                gemm_into(&mut dpicked, d, Operand::rows(&logits, vocab), Operand::rows(embed, d), (na, vocab, d), false, true);
            }
        }
        let mut dnormed = pool.take(n * d);
        for (g, &i) in dpicked.chunks_exact(d).zip(&answer_rows) {
            dnormed[i * d..(i + 1) * d].copy_from_slice(g);
        }
        pool.give([logits, picked]);
        let mut dh = pool.take(n * d);
        rms_norm_backward(&dnormed, &h, &inv_rms, self.w(self.norm, d), &mut dh, &mut grads, self.norm, &groups);

        let mut dx = pool.take_for_overwrite(n * d);
        for (at, s) in self.layers.iter().zip(&saved).rev() {
            // MLP: h_out = middle + act · W_down.
            let mut dact = pool.take_for_overwrite(n * inter);
            gemm_into(&mut dact, inter, Operand::rows(&dh, d), Operand::rows(self.w(at.down, inter * d), d).t(), (n, d, inter), false, true);
            weight_gradients(&mut grads, at.down, &groups, Operand::rows(&s.act, inter), Operand::rows(&dh, d), (inter, d));
            let mut dgate_up = pool.take_for_overwrite(n * 2 * inter);
            dgate_up.par_chunks_mut(2 * inter).zip(dact.par_chunks(inter)).zip(s.gate_up.par_chunks(2 * inter)).for_each(|((dgu, da), gu)| swiglu_backward(gu, da, dgu));
            for (offset, from) in [(at.gate, 0), (at.up, inter)] {
                weight_gradients(&mut grads, offset, &groups, Operand::rows(&s.mlp_x, d), Operand::band(&dgate_up, 2 * inter, from), (d, inter));
            }
            gemm_into(&mut dx, d, Operand::rows(&dgate_up, 2 * inter), Operand::rows(self.fused(at.gate_up, d * 2 * inter), 2 * inter).t(), (n, 2 * inter, d), false, true);
            rms_norm_backward(&dx, &s.middle, &s.mlp_inv_rms, self.w(at.mlp_norm, d), &mut dh, &mut grads, at.mlp_norm, &groups);

            // Attention: middle = input + context · W_o.
            let mut dcontext = pool.take_for_overwrite(n * d);
            gemm_into(&mut dcontext, d, Operand::rows(&dh, d), Operand::rows(self.w(at.o, d * d), d).t(), (n, d, d), false, true);
            weight_gradients(&mut grads, at.o, &groups, Operand::rows(&s.context, d), Operand::rows(&dh, d), (d, d));
            let mut dqkv = pool.take(n * qkv_width);
            split_mut(&mut dqkv, lengths.iter().map(|l| l * qkv_width))
                .into_par_iter()
                .zip(split(&dcontext, lengths.iter().map(|l| l * d)))
                .zip(split(&s.qkv, lengths.iter().map(|l| l * qkv_width)))
                .zip(split(&s.probs, lengths.iter().map(|l| heads * l * l)))
                .zip(lengths.par_iter())
                .for_each(|((((dqkv, dcontext), qkv), probs), &len)| attention_backward(&shape, len, qkv, probs, dcontext, dqkv));
            dqkv.par_chunks_mut(qkv_width).zip(positions.par_iter()).for_each(|(x, &p)| unrotate_row(&mut x[..d + kv], &cos, &sin, p, self.head_dim));
            for (offset, from, cols) in [(at.q, 0, d), (at.k, d, kv), (at.v, d + kv, kv)] {
                weight_gradients(&mut grads, offset, &groups, Operand::rows(&s.attn_x, d), Operand::band(&dqkv, qkv_width, from), (d, cols));
            }
            gemm_into(&mut dx, d, Operand::rows(&dqkv, qkv_width), Operand::rows(self.fused(at.qkv, d * qkv_width), qkv_width).t(), (n, qkv_width, d), false, true);
            rms_norm_backward(&dx, &s.input, &s.attn_inv_rms, self.w(at.attn_norm, d), &mut dh, &mut grads, at.attn_norm, &groups);
            pool.give([dact, dgate_up, dcontext, dqkv]);
        }
        // Embedding rows: what each input token's row received.
        for (grad, rows) in grads.iter_mut().zip(&groups) {
            let dembed = &mut grad[self.embed..self.embed + vocab * d];
            for (g, &t) in dh[rows.start * d..rows.end * d].chunks_exact(d).zip(&inputs[rows.clone()]) {
                for (e, g) in dembed[t as usize * d..(t as usize + 1) * d].iter_mut().zip(g) {
                    *e += g;
                }
            }
        }
        for s in saved {
            pool.give([s.input, s.attn_x, s.attn_inv_rms, s.qkv, s.probs, s.context, s.middle, s.mlp_x, s.mlp_inv_rms, s.gate_up, s.act]);
        }
        pool.give([h, normed, inv_rms, dpicked, dnormed, dh, dx]);
        losses.into_iter().zip(grads).collect()
    }
}

/// `buffer` cut into consecutive parts of the given sizes (one per batch row).
fn split_mut(mut buffer: &mut [f32], sizes: impl Iterator<Item = usize>) -> Vec<&mut [f32]> {
    sizes
        .map(|size| {
            let (part, rest) = std::mem::take(&mut buffer).split_at_mut(size);
            buffer = rest;
            part
        })
        .collect()
}

fn split(mut buffer: &[f32], sizes: impl Iterator<Item = usize>) -> Vec<&[f32]> {
    sizes
        .map(|size| {
            let (part, rest) = buffer.split_at(size);
            buffer = rest;
            part
        })
        .collect()
}

/// Attention shapes, shared by the per-row loops.
struct Shape {
    d: usize,
    kv: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// `x / rms(x) · gamma` per row, and each row's `1 / rms`.
fn rms_norm(pool: &Buffers, x: &[f32], gamma: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let mut out = pool.take_for_overwrite(x.len());
    let mut inv = pool.take_for_overwrite(x.len() / d);
    out.par_chunks_mut(d).zip(inv.par_iter_mut()).zip(x.par_chunks(d)).with_min_len(64).for_each(|((out, inv), x)| *inv = rms_norm_row(x, gamma, eps, out));
    (out, inv)
}

simd_fn! {
    fn rms_norm_row(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) -> f32 {
        let inv = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
        for ((o, v), g) in out.iter_mut().zip(x).zip(gamma) {
            *o = v * inv * g;
        }
        inv
    }
}

/// Backward of `y = x · r · gamma` with `r = 1 / rms(x)`: `dx += r·u - x·r³·(u·x)/d` with
/// `u = dy · gamma` (added into `dx`, the residual stream's gradient), `dgamma = Σ dy · x · r`
/// (summed over rows in order, so it does not depend on the thread count).
fn rms_norm_backward(dy: &[f32], x: &[f32], inv_rms: &[f32], gamma: &[f32], dx: &mut [f32], grads: &mut [Vec<f32>], offset: usize, groups: &[Range<usize>]) {
    let d = gamma.len();
    dx.par_chunks_mut(d).zip(dy.par_chunks(d)).zip(x.par_chunks(d)).zip(inv_rms.par_iter()).with_min_len(64).for_each(|(((dx, dy), x), &r)| rms_norm_backward_row(dy, x, r, gamma, dx));
    for (grad, rows) in grads.iter_mut().zip(groups) {
        let (a, b) = (rows.start * d, rows.end * d);
        gamma_gradient(&dy[a..b], &x[a..b], &inv_rms[rows.clone()], &mut grad[offset..offset + d]);
    }
}

/// For each batch: `grads[g][offset..]` (`[m, n]`, row-major) = `x[rows_g]ᵀ · dy[rows_g]`, the
/// weight gradient from that batch's rows alone.
fn weight_gradients(grads: &mut [Vec<f32>], offset: usize, groups: &[Range<usize>], x: Operand, dy: Operand, (m, n): (usize, usize)) {
    for (grad, rows) in grads.iter_mut().zip(groups) {
        gemm_into(&mut grad[offset..], n, x.from_row(rows.start).t(), dy.from_row(rows.start), (m, rows.len(), n), false, true);
    }
}

simd_fn! {
    fn rms_norm_backward_row(dy: &[f32], x: &[f32], r: f32, gamma: &[f32], dx: &mut [f32]) {
        let d = gamma.len();
        let mut ux = 0.0f32;
        for ((dy, x), g) in dy.iter().zip(x).zip(gamma) {
            ux += dy * g * x;
        }
        let c = r * r * r * ux / d as f32;
        for (((dx, dy), x), g) in dx.iter_mut().zip(dy).zip(x).zip(gamma) {
            *dx += r * dy * g - x * c;
        }
    }
}

simd_fn! {
    fn gamma_gradient(dy: &[f32], x: &[f32], inv_rms: &[f32], dgamma: &mut [f32]) {
        let d = dgamma.len();
        for ((dy, x), r) in dy.chunks_exact(d).zip(x.chunks_exact(d)).zip(inv_rms) {
            for ((g, dy), x) in dgamma.iter_mut().zip(dy).zip(x) {
                *g += dy * x * r;
            }
        }
    }
}

/// Rotary on the query and key heads of one row at `position`.
fn rotate_row(x: &mut [f32], cos: &[f32], sin: &[f32], position: usize, head_dim: usize) {
    let (cos, sin) = (&cos[position * head_dim..], &sin[position * head_dim..]);
    for head in x.chunks_exact_mut(head_dim) {
        rotate(head, cos, sin);
    }
}

/// The transpose of `rotate_row` (a rotation's inverse): gradients back through rotary.
fn unrotate_row(x: &mut [f32], cos: &[f32], sin: &[f32], position: usize, head_dim: usize) {
    let half = head_dim / 2;
    let (cos, sin) = (&cos[position * head_dim..], &sin[position * head_dim..]);
    for head in x.chunks_exact_mut(head_dim) {
        let (x1, x2) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (x1[i], x2[i]);
            x1[i] = a * cos[i] + b * sin[i + half];
            x2[i] = b * cos[i + half] - a * sin[i];
        }
    }
}

simd_fn! {
    /// Causal attention of one batch row of `w` positions: `probs` `[heads, w, w]` and `context`
    /// `[w, d]` from `qkv` `[w, d + 2 kv]`.
    fn attention_forward(s: &Shape, w: usize, qkv: &[f32], probs: &mut [f32], context: &mut [f32]) {
        let (hd, d, kv) = (s.head_dim, s.d, s.kv);
        let stride = d + 2 * kv;
        let groups = s.heads / s.kv_heads;
        let scale = (hd as f64).sqrt().recip() as f32;
        for head in 0..s.heads {
            let (qo, ko, vo) = (head * hd, d + (head / groups) * hd, d + kv + (head / groups) * hd);
            for i in 0..w {
                let q = &qkv[i * stride + qo..i * stride + qo + hd];
                let p = &mut probs[(head * w + i) * w..(head * w + i) * w + i + 1];
                let mut max = f32::NEG_INFINITY;
                for (j, p) in p.iter_mut().enumerate() {
                    *p = dot(q, &qkv[j * stride + ko..j * stride + ko + hd]) * scale;
                    max = max.max(*p);
                }
                for p in p.iter_mut() {
                    *p -= max;
                }
                exp_in_place(p);
                let inv_total = 1.0 / p.iter().sum::<f32>();
                let out = &mut context[i * d + qo..i * d + qo + hd];
                for (j, p) in p.iter_mut().enumerate() {
                    *p *= inv_total;
                    let v = &qkv[j * stride + vo..j * stride + vo + hd];
                    for (o, v) in out.iter_mut().zip(v) {
                        *o += *p * v;
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// Backward of `attention_forward` for one batch row: `dqkv` (queries and keys in rotated
    /// space) from `dcontext`. Keys and values shared by a group of query heads sum the group's
    /// gradients.
    fn attention_backward(s: &Shape, w: usize, qkv: &[f32], probs: &[f32], dcontext: &[f32], dqkv: &mut [f32]) {
        let (hd, d, kv) = (s.head_dim, s.d, s.kv);
        let stride = d + 2 * kv;
        let groups = s.heads / s.kv_heads;
        let scale = (hd as f64).sqrt().recip() as f32;
        let mut dp = vec![0.0f32; w];
        let mut dq = vec![0.0f32; hd];
        // One group's key and value gradients, `[width, head_dim]`, summed over its query heads.
        let (mut dk, mut dv) = (vec![0.0f32; w * hd], vec![0.0f32; w * hd]);
        for group in 0..s.kv_heads {
            let (ko, vo) = (d + group * hd, d + kv + group * hd);
            dk.fill(0.0);
            dv.fill(0.0);
            for head in group * groups..(group + 1) * groups {
                let qo = head * hd;
                for i in 0..w {
                    let p = &probs[(head * w + i) * w..(head * w + i) * w + i + 1];
                    let dc = &dcontext[i * d + qo..i * d + qo + hd];
                    let q = &qkv[i * stride + qo..i * stride + qo + hd];
                    let dp = &mut dp[..i + 1];
                    let mut weighted = 0.0f32;
                    for (j, (dp, &p)) in dp.iter_mut().zip(p).enumerate() {
                        *dp = dot(dc, &qkv[j * stride + vo..j * stride + vo + hd]);
                        weighted += p * *dp;
                    }
                    // dS = P ⊙ (dP - Σ P dP), scaled as the scores were.
                    for (dp, &p) in dp.iter_mut().zip(p) {
                        *dp = p * (*dp - weighted) * scale;
                    }
                    dq.fill(0.0);
                    for (j, (&ds, &p)) in dp.iter().zip(p).enumerate() {
                        axpy(&mut dq, ds, &qkv[j * stride + ko..j * stride + ko + hd]);
                        axpy(&mut dk[j * hd..(j + 1) * hd], ds, q);
                        axpy(&mut dv[j * hd..(j + 1) * hd], p, dc);
                    }
                    axpy(&mut dqkv[i * stride + qo..i * stride + qo + hd], 1.0, &dq);
                }
            }
            for j in 0..w {
                axpy(&mut dqkv[j * stride + ko..j * stride + ko + hd], 1.0, &dk[j * hd..(j + 1) * hd]);
                axpy(&mut dqkv[j * stride + vo..j * stride + vo + hd], 1.0, &dv[j * hd..(j + 1) * hd]);
            }
        }
    }
}

/// `y += a · x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

simd_fn! {
    /// `act = silu(gate) · up` for one row of `[gate | up]`.
    fn swiglu_forward(gate_up: &[f32], act: &mut [f32]) {
        let (gate, up) = gate_up.split_at(act.len());
        for (a, &g) in act.iter_mut().zip(gate) {
            *a = -g;
        }
        exp_in_place(act);
        for ((a, &g), &u) in act.iter_mut().zip(gate).zip(up) {
            *a = g / (1.0 + *a) * u;
        }
    }
}

simd_fn! {
    /// One row of `[dgate | dup]` from `dact`: `dgate = dact·up·σ(g)(1 + g(1 - σ(g)))`,
    /// `dup = dact·silu(g)`.
    fn swiglu_backward(gate_up: &[f32], dact: &[f32], dgate_up: &mut [f32]) {
        let (gate, up) = gate_up.split_at(dact.len());
        let (dgate, dup) = dgate_up.split_at_mut(dact.len());
        for (e, &g) in dgate.iter_mut().zip(gate) {
            *e = -g;
        }
        exp_in_place(dgate);
        for ((((dg, du), &g), &u), &da) in dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up).zip(dact) {
            let sigmoid = 1.0 / (1.0 + *dg);
            *dg = da * u * sigmoid * (1.0 + g * (1.0 - sigmoid));
            *du = da * g * sigmoid;
        }
    }
}

simd_fn! {
    /// One answer position's `mask · -log softmax(z)[target]`; `z` becomes its gradient,
    /// `mask · scale · (softmax(z) - onehot(target))`.
    fn cross_entropy_backward(z: &mut [f32], target: usize, mask: f32, scale: f32) -> f32 {
        let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let picked = z[target] - max;
        for v in z.iter_mut() {
            *v -= max;
        }
        exp_in_place(z);
        let total: f32 = z.iter().sum();
        let weight = mask * scale / total;
        for v in z.iter_mut() {
            *v *= weight;
        }
        z[target] -= mask * scale;
        mask * (total.ln() - picked)
    }
}
