//! The fused CPU decoder: inference without burn's per-operation overhead.
//!
//! At the sizes evolve trains (a few hundred channels, one new token per sequence per step) a
//! decoding step through burn's tensor API is dominated by the cost of dispatching and
//! allocating ~40 small tensors per layer, not by arithmetic. This module pulls the f32 weights
//! out of a [`Llama`] once (q/k/v and gate/up fused into one matrix each), keeps a preallocated
//! key/value cache per sequence, and runs each layer as a few `gemm` calls over all active
//! sequences plus hand-written RMSNorm, rotary, attention and SwiGLU loops into reused buffers.
//!
//! Sequences are not padded: every row carries its own position, and a prompt is fed in one
//! pass (all its keys and values are written before any query of the layer attends, each query
//! only up to its own position). Rotary attention depends only on relative positions, so this
//! gives the same logits as burn's left-padded batches up to float rounding (the tests hold it
//! to 1e-5 and to identical greedy and sampled tokens). Only the CPU uses it; other devices
//! decode through burn's tensors.

use rayon::prelude::*;

use crate::cpu_kernels::{dot, exp_in_place, grow, matmul, rope_table, rotate, side_by_side, values};
use crate::llama::Llama;

/// Rows per prefill pass: bounds the scratch buffers when many long prompts arrive at once.
const PREFILL_ROWS: usize = 512;

struct Norm {
    gamma: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn of(norm: &burn::nn::RmsNorm) -> Self {
        Norm { gamma: values(norm.gamma.val()), eps: norm.epsilon as f32 }
    }

    /// `out = x / sqrt(mean(x²) + eps) * gamma`, row by row.
    #[inline(always)]
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        let d = self.gamma.len();
        for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mean_sq = dot(x, x) / d as f32;
            let inv = 1.0 / (mean_sq + self.eps).sqrt();
            for ((o, v), g) in out.iter_mut().zip(x).zip(&self.gamma) {
                *o = v * inv * g;
            }
        }
    }
}

struct LayerWeights {
    attn_norm: Norm,
    /// `[d, d + 2 kv]`: q, k and v projections side by side.
    qkv: Vec<f32>,
    o: Vec<f32>,
    mlp_norm: Norm,
    /// `[d, 2 inter]`: gate and up projections side by side.
    gate_up: Vec<f32>,
    down: Vec<f32>,
}

/// A checkpoint's weights laid out for the fused decoder.
pub struct CpuDecoder {
    d: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    inter: usize,
    vocab: usize,
    rope_theta: f64,
    embed: Vec<f32>,
    layers: Vec<LayerWeights>,
    norm: Norm,
    /// `[d, vocab]` (the transposed embedding when tied).
    lm_head: Vec<f32>,
}

/// Keys and values, `[layer][sequence][position][kv_dim]`, with rotary tables for every position.
pub struct SequenceCache {
    k: Vec<f32>,
    v: Vec<f32>,
    sequences: usize,
    capacity: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Buffers reused across passes (grown, never shrunk).
#[derive(Default)]
struct Scratch {
    h: Vec<f32>,
    x: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    scores: Vec<f32>,
    last: Vec<f32>,
}

/// One token to run: which sequence, at which position, and whether its logits are wanted.
#[derive(Clone, Copy, Debug)]
pub struct RowToken {
    pub sequence: usize,
    pub position: usize,
    pub token: u32,
    pub wants_logits: bool,
}

impl CpuDecoder {
    /// Copies the weights out of `model` (any device; the copy lives in host memory).
    pub fn new(model: &Llama) -> Self {
        let first = &model.layers[0].self_attn;
        let [vocab, d] = model.embed_tokens.weight.dims();
        let embed = values(model.embed_tokens.weight.val());
        let layers: Vec<LayerWeights> = model
            .layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                let qkv = side_by_side(&[&values(a.q_proj.weight.val()), &values(a.k_proj.weight.val()), &values(a.v_proj.weight.val())], d);
                let gate_up = side_by_side(&[&values(l.mlp.gate_proj.weight.val()), &values(l.mlp.up_proj.weight.val())], d);
                LayerWeights {
                    attn_norm: Norm::of(&l.input_layernorm),
                    qkv,
                    o: values(a.o_proj.weight.val()),
                    mlp_norm: Norm::of(&l.post_attention_layernorm),
                    gate_up,
                    down: values(l.mlp.down_proj.weight.val()),
                }
            })
            .collect();
        let lm_head = match &model.lm_head {
            Some(head) => values(head.weight.val()),
            None => {
                let mut t = vec![0.0; d * vocab];
                for tok in 0..vocab {
                    for j in 0..d {
                        t[j * vocab + tok] = embed[tok * d + j];
                    }
                }
                t
            }
        };
        CpuDecoder {
            d,
            n_heads: first.n_heads,
            n_kv_heads: first.n_kv_heads,
            head_dim: first.head_dim,
            inter: model.layers[0].mlp.down_proj.weight.dims()[0],
            vocab,
            rope_theta: model.rope_theta,
            embed,
            layers,
            norm: Norm::of(&model.norm),
            lm_head,
        }
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// An empty cache for `sequences` sequences of up to `capacity` positions each.
    pub fn cache(&self, sequences: usize, capacity: usize) -> SequenceCache {
        let size = self.layers.len() * sequences * capacity * self.kv_dim();
        let (cos, sin) = rope_table(self.head_dim, self.rope_theta, capacity);
        SequenceCache { k: vec![0.0; size], v: vec![0.0; size], sequences, capacity, cos, sin }
    }

    /// Runs `rows` through the model, writing their keys and values into `cache`; returns the
    /// logits (`vocab` each) of the rows that want them, in order. A row's sequence must already
    /// hold positions `0..position` (earlier in `rows` or from earlier calls).
    pub fn forward(&self, rows: &[RowToken], cache: &mut SequenceCache) -> Vec<f32> {
        let mut scratch = Scratch::default();
        let mut logits = Vec::new();
        self.forward_into(rows, cache, &mut scratch, &mut logits, true);
        logits
    }

    /// With `parallel`, each operation spreads over rayon's threads; without, all of it runs on
    /// the calling thread (for callers that run several batches side by side).
    ///
    /// The release build targets baseline x86-64 (SSE2); on a CPU with AVX2 and FMA the loops
    /// around the matrix products (attention, norms, rotary, SwiGLU) are compiled a second time
    /// for them and chosen at run time, as `gemm` does for its kernels.
    fn forward_into(&self, rows: &[RowToken], cache: &mut SequenceCache, s: &mut Scratch, logits: &mut Vec<f32>, parallel: bool) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has both features, checked just above.
            return unsafe { self.forward_avx2(rows, cache, s, logits, parallel) };
        }
        self.forward_portable(rows, cache, s, logits, parallel)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(&self, rows: &[RowToken], cache: &mut SequenceCache, s: &mut Scratch, logits: &mut Vec<f32>, parallel: bool) {
        self.forward_portable(rows, cache, s, logits, parallel)
    }

    #[inline(always)]
    fn forward_portable(&self, rows: &[RowToken], cache: &mut SequenceCache, s: &mut Scratch, logits: &mut Vec<f32>, parallel: bool) {
        let (n, d, kv, inter) = (rows.len(), self.d, self.kv_dim(), self.inter);
        let width = d + 2 * kv;
        for r in rows {
            assert!(r.sequence < cache.sequences && r.position < cache.capacity, "sequence cache too small for {r:?}");
        }
        let h = grow(&mut s.h, n * d);
        for (out, r) in h.chunks_exact_mut(d).zip(rows) {
            let t = r.token as usize;
            out.copy_from_slice(&self.embed[t * d..(t + 1) * d]);
        }
        let x = grow(&mut s.x, n * d);
        let qkv = grow(&mut s.qkv, n * width);
        let context = grow(&mut s.context, n * d);
        let gate_up = grow(&mut s.gate_up, n * 2 * inter);
        let act = grow(&mut s.act, n * inter);
        let scores = grow(&mut s.scores, n * cache.capacity * self.n_heads);
        let layer_size = cache.sequences * cache.capacity * kv;
        for (l, w) in self.layers.iter().enumerate() {
            w.attn_norm.apply(h, x);
            matmul(qkv, x, &w.qkv, n, d, width, false, parallel);
            let (k_cache, v_cache) = (&mut cache.k[l * layer_size..(l + 1) * layer_size], &mut cache.v[l * layer_size..(l + 1) * layer_size]);
            for (row, r) in qkv.chunks_exact_mut(width).zip(rows) {
                let (cos, sin) = (&cache.cos[r.position * self.head_dim..], &cache.sin[r.position * self.head_dim..]);
                for head in row[..d + kv].chunks_exact_mut(self.head_dim) {
                    rotate(head, cos, sin);
                }
                let at = (r.sequence * cache.capacity + r.position) * kv;
                k_cache[at..at + kv].copy_from_slice(&row[d..d + kv]);
                v_cache[at..at + kv].copy_from_slice(&row[d + kv..]);
            }
            let (k_cache, v_cache) = (&*k_cache, &*v_cache);
            let per_row = cache.capacity * self.n_heads;
            let attend_row = |ctx: &mut [f32], scores: &mut [f32], qkv: &[f32], r: &RowToken| {
                let base = r.sequence * cache.capacity * kv;
                self.attend(&qkv[..d], &k_cache[base..], &v_cache[base..], r.position + 1, scores, ctx);
            };
            if parallel {
                context.par_chunks_mut(d).zip(scores.par_chunks_mut(per_row)).zip(qkv.par_chunks(width)).zip(rows.par_iter()).with_min_len(8).for_each(
                    |(((ctx, scores), qkv), r)| attend_row(ctx, scores, qkv, r),
                );
            } else {
                // Not through the closure: a closure is compiled on its own, without this
                // function's AVX2, where `attend` inlined here gets it.
                for (((ctx, scores), qkv), r) in context.chunks_mut(d).zip(scores.chunks_mut(per_row)).zip(qkv.chunks(width)).zip(rows) {
                    let base = r.sequence * cache.capacity * kv;
                    self.attend(&qkv[..d], &k_cache[base..], &v_cache[base..], r.position + 1, scores, ctx);
                }
            }
            matmul(h, context, &w.o, n, d, d, true, parallel);
            w.mlp_norm.apply(h, x);
            matmul(gate_up, x, &w.gate_up, n, d, 2 * inter, false, parallel);
            for (a, gu) in act.chunks_exact_mut(inter).zip(gate_up.chunks_exact(2 * inter)) {
                let (g, u) = gu.split_at(inter);
                for (a, &g) in a.iter_mut().zip(g) {
                    *a = -g;
                }
                exp_in_place(a);
                for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
                    *a = g / (1.0 + *a) * u;
                }
            }
            matmul(h, act, &w.down, n, inter, d, true, parallel);
        }
        let wanted: Vec<usize> = rows.iter().enumerate().filter(|(_, r)| r.wants_logits).map(|(i, _)| i).collect();
        let last = grow(&mut s.last, wanted.len() * d);
        for (out, &i) in last.chunks_exact_mut(d).zip(&wanted) {
            self.norm.apply(&h[i * d..(i + 1) * d], out);
        }
        logits.clear();
        logits.resize(wanted.len() * self.vocab, 0.0);
        matmul(logits, last, &self.lm_head, wanted.len(), d, self.vocab, false, parallel);
    }

    /// Causal attention of one query row over the first `len` cached positions of its sequence.
    #[inline(always)]
    fn attend(&self, q: &[f32], keys: &[f32], vals: &[f32], len: usize, scores: &mut [f32], ctx: &mut [f32]) {
        let (hd, kv) = (self.head_dim, self.kv_dim());
        let groups = self.n_heads / self.n_kv_heads;
        let scale = (hd as f64).sqrt().recip() as f32;
        ctx.fill(0.0);
        for head in 0..self.n_heads {
            let g = head / groups;
            let q = &q[head * hd..(head + 1) * hd];
            let scores = &mut scores[head * len..(head + 1) * len];
            let mut max = f32::NEG_INFINITY;
            for (t, s) in scores.iter_mut().enumerate() {
                *s = dot(q, &keys[t * kv + g * hd..t * kv + (g + 1) * hd]) * scale;
                max = max.max(*s);
            }
            for s in scores.iter_mut() {
                *s -= max;
            }
            exp_in_place(scores);
            let total: f32 = scores.iter().sum();
            let inv_total = 1.0 / total;
            let out = &mut ctx[head * hd..(head + 1) * hd];
            for (t, &p) in scores.iter().enumerate() {
                let p = p * inv_total;
                let v = &vals[t * kv + g * hd..t * kv + (g + 1) * hd];
                for (o, &v) in out.iter_mut().zip(v) {
                    *o += p * v;
                }
            }
        }
    }
}

/// Runs the prompts (`sequences[i]` holds sequence `i`'s prompt) into `cache`; the logits after
/// each prompt's last token, `vocab` per sequence.
fn prefill(decoder: &CpuDecoder, prompts: &[&[u32]], cache: &mut SequenceCache, scratch: &mut Scratch, scratch_logits: &mut Vec<f32>) -> Vec<f32> {
    let rows: Vec<RowToken> = prompts
        .iter()
        .enumerate()
        .flat_map(|(sequence, p)| {
            p.iter().enumerate().map(move |(position, &token)| RowToken { sequence, position, token, wants_logits: position + 1 == p.len() })
        })
        .collect();
    let mut out = Vec::with_capacity(prompts.len() * decoder.vocab);
    for block in rows.chunks(PREFILL_ROWS) {
        decoder.forward_into(block, cache, scratch, scratch_logits, false);
        out.extend_from_slice(scratch_logits);
    }
    out
}

/// A decoding session over one batch: the decoder's weights, a cache, and reused buffers. A
/// session computes on its caller's thread; `decode` runs one per thread, side by side.
pub(crate) struct Session<'a> {
    decoder: &'a CpuDecoder,
    pub cache: SequenceCache,
    scratch: Scratch,
    pub logits: Vec<f32>,
}

impl<'a> Session<'a> {
    pub fn new(decoder: &'a CpuDecoder, sequences: usize, capacity: usize) -> Self {
        Session { decoder, cache: decoder.cache(sequences, capacity), scratch: Scratch::default(), logits: Vec::new() }
    }

    /// The logits after each prompt's last token.
    pub fn prefill(&mut self, prompts: &[&[u32]]) {
        let mut tmp = Vec::new();
        self.logits = prefill(self.decoder, prompts, &mut self.cache, &mut self.scratch, &mut tmp);
    }

    /// One step: every row's next token; `self.logits` then holds their logits, in order.
    pub fn step(&mut self, rows: &[RowToken]) {
        self.decoder.forward_into(rows, &mut self.cache, &mut self.scratch, &mut self.logits, false);
    }
}

#[cfg(test)]
mod tests {
    use crate::cpu_kernels::exp_in_place;

    #[test]
    fn fast_exp_matches_libm_and_stays_finite() {
        // Down to -80: below, results are near f32's smallest normal and lose relative precision.
        let inputs: Vec<f32> = (-1830..=2000).map(|i| i as f32 * 0.0437).collect();
        let mut fast = inputs.clone();
        exp_in_place(&mut fast);
        for (&x, &y) in inputs.iter().zip(&fast) {
            let exact = (x as f64).exp();
            let relative = ((y as f64 - exact) / exact).abs();
            assert!(relative < 3e-7, "exp({x}) = {y}, libm {exact}: relative error {relative}");
        }
        let mut extremes = vec![-1e30, -200.0, -88.0, 89.0, 200.0, 1e30];
        exp_in_place(&mut extremes);
        assert!(extremes.iter().all(|v| v.is_finite() && *v >= 0.0), "{extremes:?}");
        assert!(extremes[0] < 1e-37 && extremes[5] > 1e38);
    }
}
