//! Hugging Face Llama checkpoints in and out, and per-token log-probabilities (what parity with
//! `transformers` is checked on).
//!
//! An import reads `config.json` and `model.safetensors` (or the shards listed in
//! `model.safetensors.index.json`), accepts F32, BF16 and F16 weights, and normalizes them into an
//! evolve checkpoint: F32, evolve's deterministic safetensors layout, so the hash names the
//! weights and not the way they were saved. Features evolve does not compute (rope scaling, a
//! head size other than `hidden / heads`, biases) are refused by the config check, never
//! approximated.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::LlamaConfig;
use crate::llama::Llama;

/// Reads a Hugging Face Llama directory into an evolve checkpoint (weights checked against the
/// config by loading them).
pub fn import_hf_dir(dir: &Path, device: &Device) -> Result<Checkpoint, CheckpointError> {
    let config = LlamaConfig::load(&dir.join("config.json"))?;
    let files = weight_files(dir)?;
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for file in &files {
        let origin = file.display().to_string();
        let bytes = std::fs::read(file).map_err(|source| CheckpointError::Io { path: origin.clone(), source })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Format { origin: origin.clone(), why: e.to_string() })?;
        for (name, view) in st.tensors() {
            // Buffers older exports carry, and the tied head that newer ones may repeat.
            if name.ends_with("rotary_emb.inv_freq") || (config.tie_word_embeddings && name == "lm_head.weight") {
                continue;
            }
            let f32s = to_f32_bytes(&view).ok_or_else(|| CheckpointError::Shape {
                origin: origin.clone(),
                name: name.clone(),
                found: view.shape().to_vec(),
                expected: view.shape().to_vec(),
                dtype: format!("{:?} (valid: F32, BF16, F16)", view.dtype()),
            })?;
            tensors.insert(name, (view.shape().to_vec(), f32s));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (shape, data))| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), data).expect("consistent view")))
        .collect();
    let raw = safetensors::serialize(views, None).expect("serializable tensors");
    let staged = Checkpoint { config: config.clone(), hash: String::new(), safetensors: raw };
    let model = staged.to_model(device, &dir.display().to_string())?;
    let expected = config.num_params();
    let found: usize = tensors.values().map(|(shape, _)| shape.iter().product::<usize>()).sum();
    if found != expected {
        return Err(CheckpointError::Format {
            origin: dir.display().to_string(),
            why: format!("holds {found} weights where the config needs {expected}: unexpected extra tensors"),
        });
    }
    Ok(Checkpoint::from_model(&model, &config))
}

/// Writes a directory `transformers.LlamaForCausalLM.from_pretrained` loads.
pub fn export_hf_dir(checkpoint: &Checkpoint, dir: &Path) -> Result<(), CheckpointError> {
    checkpoint.write_dir(dir)
}

fn weight_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, CheckpointError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let origin = index.display().to_string();
    let text = std::fs::read_to_string(&index).map_err(|_| CheckpointError::Format {
        origin: dir.display().to_string(),
        why: "has neither model.safetensors nor model.safetensors.index.json".into(),
    })?;
    let parsed: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::Format { origin: origin.clone(), why: e.to_string() })?;
    let map = parsed.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| CheckpointError::Format {
        origin: origin.clone(),
        why: "no `weight_map` object".into(),
    })?;
    let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

fn to_f32_bytes(view: &TensorView<'_>) -> Option<Vec<u8>> {
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => return Some(data.to_vec()),
        Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => return None,
    };
    Some(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// `log p(ids[i] | ids[..i])` for every position after the first (the first has no context).
pub fn token_logprobs(model: &Llama, ids: &[u32], device: &Device) -> Vec<f32> {
    if ids.len() < 2 {
        return Vec::new();
    }
    let n = ids.len();
    let input: Vec<i64> = ids[..n - 1].iter().map(|&i| i as i64).collect();
    let target: Vec<i64> = ids[1..].iter().map(|&i| i as i64).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(input, [1, n - 1]), device);
    let targets = Tensor::<3, Int>::from_data(TensorData::new(target, [1, n - 1, 1]), device);
    let logp = log_softmax(model.forward(tokens, None), 2).gather(2, targets);
    logp.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 log-probs")
}
