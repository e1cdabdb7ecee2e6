//! The model's contracts: checkpoints round-trip bit-exactly under a stable hash, Llama names
//! and layouts are what Hugging Face expects, and left padding does not change the logits.

use burn::prelude::*;
use evolve_model::{Checkpoint, Llama, LlamaConfig, PAD, cpu_device};

fn tiny(kv_heads: usize) -> LlamaConfig {
    LlamaConfig::for_bytes(32, 64, 2, 4, kv_heads, 32)
}

fn logits(model: &Llama, ids: Vec<i64>, rows: usize, padding: Option<&[Vec<bool>]>) -> Vec<f32> {
    let device = cpu_device();
    let seq = ids.len() / rows;
    let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, seq]), &device);
    model.forward(t, padding).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn checkpoint_round_trip_is_bit_exact_and_hash_stable() {
    let device = cpu_device();
    device.seed(3);
    let config = tiny(2);
    let model = Llama::init(&config, &device);
    let a = Checkpoint::from_model(&model, &config);
    let reloaded = a.to_model(&device, "test").unwrap();
    let b = Checkpoint::from_model(&reloaded, &config);
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.safetensors, b.safetensors);
    let ids: Vec<i64> = (0..10).map(|i| i * 13 % 250).collect();
    assert_eq!(logits(&model, ids.clone(), 1, None), logits(&reloaded, ids, 1, None));
}

#[test]
fn tensors_carry_llama_names_and_out_in_layout() {
    let device = cpu_device();
    let config = tiny(2);
    let ckpt = Checkpoint::from_model(&Llama::init(&config, &device), &config);
    let st = safetensors::SafeTensors::deserialize(&ckpt.safetensors).unwrap();
    let head_dim = 32 / 4;
    assert_eq!(st.tensor("model.layers.1.self_attn.k_proj.weight").unwrap().shape(), &[2 * head_dim, 32]);
    assert_eq!(st.tensor("model.layers.0.mlp.down_proj.weight").unwrap().shape(), &[32, 64]);
    assert_eq!(st.tensor("lm_head.weight").unwrap().shape(), &[config.vocab_size, 32]);
    assert!(st.tensor("model.norm.weight").is_ok());
    assert_eq!(st.len(), 1 + 2 * 9 + 1 + 1);
}

#[test]
fn corrupt_or_mismatched_checkpoints_are_errors() {
    let device = cpu_device();
    let config = tiny(2);
    let mut ckpt = Checkpoint::from_model(&Llama::init(&config, &device), &config);
    ckpt.config.intermediate_size = 65;
    let err = ckpt.to_model(&device, "c.safetensors").unwrap_err().to_string();
    assert!(err.contains("c.safetensors") && err.contains("gate_proj"), "{err}");
    ckpt.safetensors.truncate(100);
    assert!(ckpt.to_model(&device, "c").is_err());
}

#[test]
fn left_padding_does_not_change_the_answer() {
    let device = cpu_device();
    device.seed(5);
    let model = Llama::init(&tiny(4), &device);
    let prompt: Vec<i64> = vec![256, 49, 43, 50, 61];
    let alone = logits(&model, prompt.clone(), 1, None);
    let mut padded = vec![PAD as i64; 3];
    padded.extend(&prompt);
    let flags = vec![vec![true, true, true, false, false, false, false, false]];
    let with_pad = logits(&model, padded, 1, Some(&flags));
    let vocab = alone.len() / prompt.len();
    let last_alone = &alone[alone.len() - vocab..];
    let last_padded = &with_pad[with_pad.len() - vocab..];
    for (a, b) in last_alone.iter().zip(last_padded) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn grouped_query_attention_runs_and_counts_parameters() {
    let device = cpu_device();
    let config = tiny(1);
    let model = Llama::init(&config, &device);
    use burn::module::Module;
    assert_eq!(model.num_params(), config.num_params());
    assert_eq!(logits(&model, vec![1, 2, 3, 4], 2, None).len(), 2 * 2 * config.vocab_size);
}

#[test]
fn checkpoint_directories_hold_config_and_weights() {
    let device = cpu_device();
    let config = tiny(2);
    let ckpt = Checkpoint::from_model(&Llama::init(&config, &device), &config);
    let dir = std::env::temp_dir().join(format!("evolve-ckpt-{}", std::process::id()));
    ckpt.write_dir(&dir).unwrap();
    let back = Checkpoint::read_dir(&dir).unwrap();
    assert_eq!((back.hash.as_str(), &back.config), (ckpt.hash.as_str(), &config));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["architectures"][0], "LlamaForCausalLM");
    std::fs::write(dir.join("model.safetensors"), b"\x05\x00\x00\x00\x00\x00\x00\x00{oops").unwrap();
    let err = Checkpoint::read_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kv_cache_gives_the_logits_of_the_full_forward() {
    let device = cpu_device();
    device.seed(5);
    let model = Llama::init(&tiny(2), &device);
    // Two rows, the second left-padded by two: prompt of 5 positions, then 3 single steps.
    let ids: Vec<i64> = vec![1, 7, 9, 4, 3, 11, 12, 13, PAD as i64, PAD as i64, 5, 6, 2, 8, 10, 14];
    let rows = 2;
    let seq = 8;
    let padding: Vec<Vec<bool>> = vec![vec![false; seq], (0..seq).map(|i| i < 2).collect()];
    let full = logits(&model, ids.clone(), rows, Some(&padding));
    let mut cache = evolve_model::KvCache::new(&model, seq, &device);
    let mut cached = vec![Vec::new(); rows];
    for (start, len) in [(0, 5), (5, 1), (6, 1), (7, 1)] {
        let part: Vec<i64> = (0..rows).flat_map(|r| ids[r * seq + start..r * seq + start + len].to_vec()).collect();
        let pad: Vec<Vec<bool>> = padding.iter().map(|p| p[..start + len].to_vec()).collect();
        let t = Tensor::<2, Int>::from_data(TensorData::new(part, [rows, len]), &device);
        let out = model.forward_cached(t, Some(&pad), &mut cache).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let per_row = out.len() / rows;
        for r in 0..rows {
            cached[r].extend_from_slice(&out[r * per_row..(r + 1) * per_row]);
        }
    }
    assert_eq!(cache.len(), seq);
    let cached: Vec<f32> = cached.concat();
    // Padding positions are excluded: their queries see only masked keys, so their (unused)
    // outputs are arbitrary.
    let vocab = full.len() / (rows * seq);
    let real = |i: &usize| !padding[i / (seq * vocab)][(i / vocab) % seq];
    let worst = (0..full.len()).filter(real).map(|i| (full[i] - cached[i]).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "cached logits differ by {worst}");
}

#[test]
fn decoding_with_and_without_the_cache_gives_the_same_tokens() {
    let device = cpu_device();
    device.seed(9);
    let model = Llama::init(&tiny(2), &device);
    let prompts: Vec<Vec<u32>> = (0..12u32).map(|i| (0..(3 + i % 5)).map(|j| (i * 31 + j * 7) % 250).collect()).collect();
    for options in [evolve_model::DecodeOptions::greedy(12), evolve_model::DecodeOptions::sampled(12, 0.8, 4)] {
        let cached = evolve_model::decode_batch(&model, &prompts, &options, &device);
        let recomputed = evolve_model::decode_batch(&model, &prompts, &evolve_model::DecodeOptions { kv_cache: false, ..options.clone() }, &device);
        assert_eq!(cached, recomputed);
        assert!(cached.iter().all(|g| !g.is_empty() && g.len() <= 12));
    }
}
