//! Batched decoding: greedy or temperature / top-p sampling, with stop tokens.
//!
//! Prompts are sorted by length and left-padded within a batch (exact under rotary attention,
//! see `Llama::forward`); rows leave the batch as soon as they emit a stop token, so a batch
//! costs what its longest answer costs, not `max_new_tokens`.

use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rayon::prelude::*;

use crate::cpu_decode::{CpuDecoder, RowToken, Session};
use crate::llama::{KvCache, Llama};
use crate::tokenizer::{PAD, Tokenizer};

#[derive(Clone, Debug)]
pub struct DecodeOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub batch_size: usize,
    pub seed: u64,
    /// Keep keys and values of decoded positions instead of recomputing the prefix every step.
    /// Off only to measure what the cache saves.
    pub kv_cache: bool,
    /// On the CPU, decode with the fused CPU decoder (`cpu_decode`) instead of burn's tensors.
    /// Same tokens; off only to compare the two. Other devices always use burn's tensors.
    pub fused_cpu: bool,
}

impl DecodeOptions {
    pub fn greedy(max_new_tokens: usize) -> Self {
        DecodeOptions { max_new_tokens, temperature: 0.0, top_p: 1.0, batch_size: 256, seed: 0, kv_cache: true, fused_cpu: true }
    }

    pub fn sampled(max_new_tokens: usize, temperature: f32, seed: u64) -> Self {
        DecodeOptions { max_new_tokens, temperature, top_p: 1.0, batch_size: 256, seed, kv_cache: true, fused_cpu: true }
    }
}

/// Generates a continuation for every prompt (token ids, `BOS` included); returns the new
/// tokens of each, ending with the stop token when one was produced.
pub fn decode_batch(model: &Llama, prompts: &[Vec<u32>], options: &DecodeOptions, device: &Device) -> Vec<Vec<u32>> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut outputs = vec![Vec::new(); prompts.len()];
    let fused = (options.fused_cpu && options.kv_cache && *device == crate::cpu_device() && prompts.iter().all(|p| !p.is_empty()))
        .then(|| CpuDecoder::new(model));
    for chunk in order.chunks(options.batch_size.max(1)) {
        let generated = match &fused {
            Some(decoder) => decode_chunk_fused(decoder, prompts, chunk, options, &mut rng),
            None => decode_chunk(model, prompts, chunk, options, &mut rng, device),
        };
        for (&i, g) in chunk.iter().zip(generated) {
            outputs[i] = g;
        }
    }
    outputs
}

/// Rows below which a batch is not split further across threads: `gemm` loses efficiency on
/// thinner matrices than this.
const MIN_ROWS_PER_THREAD: usize = 8;

/// One thread's share of a fused decoding chunk: a contiguous slice of its sequences.
struct Part<'a> {
    session: Session<'a>,
    /// Sequences still generating, as (index in the part, position of its next token).
    active: Vec<(usize, usize)>,
    rows: Vec<RowToken>,
}

/// `decode_chunk` on the fused CPU decoder: the same rows choose in the same order with the same
/// random draws, so the tokens are the same as burn's path (up to float rounding in the logits).
/// The chunk is cut into one part per thread, each computed serially, so a step costs one fork
/// and join instead of one inside every matrix product.
fn decode_chunk_fused(decoder: &CpuDecoder, prompts: &[Vec<u32>], chunk: &[usize], options: &DecodeOptions, rng: &mut StdRng) -> Vec<Vec<u32>> {
    let tokenizer = Tokenizer;
    let vocab = decoder.vocab();
    let width = chunk.iter().map(|&i| prompts[i].len()).max().unwrap_or(0);
    let chunk_prompts: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i].as_slice()).collect();
    let per_part = chunk.len().div_ceil(rayon::current_num_threads()).max(MIN_ROWS_PER_THREAD);
    let mut parts: Vec<Part> = chunk_prompts
        .chunks(per_part)
        .map(|part| Part {
            session: Session::new(decoder, part.len(), width + options.max_new_tokens),
            active: part.iter().enumerate().map(|(sequence, p)| (sequence, p.len())).collect(),
            rows: Vec::with_capacity(part.len()),
        })
        .collect();
    parts.par_iter_mut().zip(chunk_prompts.par_chunks(per_part)).for_each(|(part, prompts)| part.session.prefill(prompts));
    let mut generated = vec![Vec::new(); chunk.len()];
    for step in 0..options.max_new_tokens {
        // Sampling stays serial, in row order across the parts, so the draws match burn's path.
        for (index, part) in parts.iter_mut().enumerate() {
            part.rows.clear();
            for (row, &(sequence, position)) in part.active.iter().enumerate() {
                let next = choose(&part.session.logits[row * vocab..(row + 1) * vocab], options, rng);
                generated[index * per_part + sequence].push(next);
                if !tokenizer.is_stop(next) {
                    part.rows.push(RowToken { sequence, position, token: next, wants_logits: true });
                }
            }
            part.active = part.rows.iter().map(|r| (r.sequence, r.position + 1)).collect();
        }
        if parts.iter().all(|p| p.rows.is_empty()) || step + 1 == options.max_new_tokens {
            break;
        }
        parts.par_iter_mut().filter(|p| !p.rows.is_empty()).for_each(|p| p.session.step(&p.rows));
    }
    generated
}

fn decode_chunk(
    model: &Llama,
    prompts: &[Vec<u32>],
    chunk: &[usize],
    options: &DecodeOptions,
    rng: &mut StdRng,
    device: &Device,
) -> Vec<Vec<u32>> {
    let tokenizer = Tokenizer;
    let width = chunk.iter().map(|&i| prompts[i].len()).max().unwrap_or(0);
    // Rows still generating: (position in chunk, tokens, padding flags).
    let mut active: Vec<(usize, Vec<u32>, Vec<bool>)> = chunk
        .iter()
        .enumerate()
        .map(|(slot, &i)| {
            let pad = width - prompts[i].len();
            let mut tokens = vec![PAD; pad];
            tokens.extend(&prompts[i]);
            let mut flags = vec![true; pad];
            flags.extend(std::iter::repeat_n(false, prompts[i].len()));
            (slot, tokens, flags)
        })
        .collect();
    let mut generated = vec![Vec::new(); chunk.len()];
    let mut cache = options.kv_cache.then(|| KvCache::new(model, width + options.max_new_tokens, device));
    // Tokens not yet fed to the model: the whole prompt first, then one token per step.
    let mut fresh = width;
    for _ in 0..options.max_new_tokens {
        let (rows, seq) = (active.len(), active[0].1.len());
        let flags: Vec<Vec<bool>> = active.iter().map(|(_, _, f)| f.clone()).collect();
        let padding = active.iter().any(|(_, _, f)| f[0]).then_some(flags.as_slice());
        let logits = match cache.as_mut() {
            Some(cache) => {
                let ids: Vec<i64> = active.iter().flat_map(|(_, t, _)| t[seq - fresh..].iter().map(|&id| id as i64)).collect();
                let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, fresh]), device);
                model.forward_cached(tokens, padding, cache)
            }
            None => {
                let ids: Vec<i64> = active.iter().flat_map(|(_, t, _)| t.iter().map(|&id| id as i64)).collect();
                model.forward(Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, seq]), device), padding)
            }
        };
        let [_, new, vocab] = logits.dims();
        let last: Vec<f32> = logits
            .narrow(1, new - 1, 1)
            .reshape([rows, vocab])
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 logits");
        let mut still = Vec::with_capacity(rows);
        let mut kept = Vec::with_capacity(rows);
        for (row, (slot, mut tokens, mut flags)) in active.into_iter().enumerate() {
            let next = choose(&last[row * vocab..(row + 1) * vocab], options, rng);
            generated[slot].push(next);
            if !tokenizer.is_stop(next) {
                tokens.push(next);
                flags.push(false);
                still.push((slot, tokens, flags));
                kept.push(row);
            }
        }
        active = still;
        if active.is_empty() {
            break;
        }
        if let Some(cache) = cache.as_mut().filter(|_| kept.len() < rows) {
            cache.retain_rows(&kept, device);
        }
        fresh = 1;
    }
    generated
}

fn choose(logits: &[f32], options: &DecodeOptions, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    if options.temperature <= 0.0 {
        return argmax();
    }
    // PAD is never a sensible continuation.
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, if i as u32 == PAD { 0.0 } else { ((l - max) / options.temperature).exp() }))
        .collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    if !(total.is_finite() && total > 0.0) {
        return argmax();
    }
    if options.top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut kept = 0.0;
        let cut = probs
            .iter()
            .position(|p| {
                kept += p.1 / total;
                kept >= options.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(cut);
    }
    let total: f32 = probs.iter().map(|p| p.1).sum();
    let mut x = rng.random::<f32>() * total;
    for &(i, p) in &probs {
        if x < p {
            return i as u32;
        }
        x -= p;
    }
    probs.last().map(|p| p.0 as u32).unwrap_or_else(argmax)
}
