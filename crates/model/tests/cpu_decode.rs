//! The fused CPU decoder against burn's tensor path on the same weights: logits to 1e-5 at every
//! position (prompt pass and step by step), and identical greedy and sampled tokens, with
//! grouped-query attention and with tied and untied embeddings.

use burn::prelude::*;
use evolve_model::{CpuDecoder, DecodeOptions, Llama, LlamaConfig, RowToken, cpu_device, decode_batch};

fn config(kv_heads: usize, tied: bool) -> LlamaConfig {
    LlamaConfig { tie_word_embeddings: tied, ..LlamaConfig::for_bytes(32, 64, 2, 4, kv_heads, 48) }
}

fn burn_logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    let device = cpu_device();
    let t = Tensor::<2, Int>::from_data(TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, ids.len()]), &device);
    model.forward(t, None).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn fused_logits_match_burn_at_every_position() {
    let device = cpu_device();
    for (seed, kv_heads, tied) in [(1, 2, false), (2, 4, true), (3, 1, false)] {
        device.seed(seed);
        let config = config(kv_heads, tied);
        let model = Llama::init(&config, &device);
        let decoder = CpuDecoder::new(&model);
        let vocab = decoder.vocab();
        let sequences: Vec<Vec<u32>> = vec![(0..9).map(|j| (j * 37 + 5) % 256).collect(), (0..4).map(|j| (j * 11 + 100) % 256).collect()];
        let mut cache = decoder.cache(sequences.len(), 16);
        // Both prompts but their last tokens in one pass (wanting every position's logits), then
        // the last tokens as one step: logits in row order.
        let rows: Vec<RowToken> = sequences
            .iter()
            .enumerate()
            .flat_map(|(s, ids)| ids[..ids.len() - 1].iter().enumerate().map(move |(p, &t)| RowToken { sequence: s, position: p, token: t, wants_logits: true }))
            .collect();
        let mut fused = decoder.forward(&rows, &mut cache);
        let last: Vec<RowToken> = sequences.iter().enumerate().map(|(s, ids)| RowToken { sequence: s, position: ids.len() - 1, token: ids[ids.len() - 1], wants_logits: true }).collect();
        let step = decoder.forward(&last, &mut cache);
        let mut expected = Vec::new();
        for ids in &sequences {
            let all = burn_logits(&model, ids);
            expected.extend_from_slice(&all[..(ids.len() - 1) * vocab]);
        }
        for ids in &sequences {
            let all = burn_logits(&model, ids);
            expected.extend_from_slice(&all[(ids.len() - 1) * vocab..]);
        }
        fused.extend(step);
        assert_eq!(fused.len(), expected.len());
        let worst = fused.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "seed {seed}: fused logits differ from burn's by {worst}");
    }
}

#[test]
fn fused_decoding_gives_burns_tokens() {
    let device = cpu_device();
    device.seed(5);
    let model = Llama::init(&config(2, false), &device);
    // Prompts of different lengths (burn left-pads them; the fused decoder does not).
    let prompts: Vec<Vec<u32>> = (0..20u32).map(|i| (0..(2 + i % 7)).map(|j| (i * 29 + j * 13) % 256).collect()).collect();
    for options in [DecodeOptions::greedy(16), DecodeOptions::sampled(16, 0.9, 7), DecodeOptions { top_p: 0.8, batch_size: 6, ..DecodeOptions::sampled(16, 1.2, 3) }] {
        let fused = decode_batch(&model, &prompts, &options, &device);
        let tensors = decode_batch(&model, &prompts, &DecodeOptions { fused_cpu: false, ..options.clone() }, &device);
        assert_eq!(fused, tensors, "{options:?}");
        assert!(fused.iter().all(|g| !g.is_empty() && g.len() <= 16));
    }
}
