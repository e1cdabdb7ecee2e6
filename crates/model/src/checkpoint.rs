//! Checkpoints on disk: `model.safetensors` with Hugging Face Llama tensor names and layouts
//! (`[out, in]` projection weights) beside a `config.json` with `LlamaConfig` field names, so
//! `transformers` and any safetensors reader open them. A checkpoint is addressed by the blake3
//! hash of its safetensors bytes.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use evolve_store::write_atomic;

use crate::config::{ConfigError, LlamaConfig};
use crate::llama::Llama;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{origin}: not a safetensors file: {why}")]
    Format { origin: String, why: String },
    #[error("{origin}: tensor `{name}` is missing")]
    Missing { origin: String, name: String },
    #[error("{origin}: tensor `{name}` has shape {found:?} and dtype {dtype}; the config needs {expected:?} F32")]
    Shape { origin: String, name: String, found: Vec<usize>, expected: Vec<usize>, dtype: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] evolve_store::StoreError),
}

/// The blake3 hash (hex) that names a checkpoint.
pub fn checkpoint_hash(safetensors: &[u8]) -> String {
    evolve_store::hash_bytes(safetensors)
}

/// A model's weights as safetensors bytes plus its config: the unit evolve stores, hashes,
/// compresses and ships between roles.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub config: LlamaConfig,
    pub safetensors: Vec<u8>,
    pub hash: String,
}

struct Named {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 tensor")
}

fn linear_out_in(name: String, l: &Linear) -> Named {
    // burn keeps `[in, out]`; safetensors/Hugging Face keep `[out, in]`.
    let w = l.weight.val().transpose();
    let shape = w.dims().to_vec();
    Named { name, shape, values: values(w) }
}

fn vector(name: String, n: &RmsNorm) -> Named {
    let g = n.gamma.val();
    Named { name, shape: g.dims().to_vec(), values: g.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 tensor") }
}

impl Checkpoint {
    pub fn from_model(model: &Llama, config: &LlamaConfig) -> Self {
        let mut named = Vec::new();
        let emb = model.embed_tokens.weight.val();
        named.push(Named { name: "model.embed_tokens.weight".into(), shape: emb.dims().to_vec(), values: values(emb) });
        for (i, layer) in model.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &layer.self_attn;
            named.push(linear_out_in(format!("{p}.self_attn.q_proj.weight"), &a.q_proj));
            named.push(linear_out_in(format!("{p}.self_attn.k_proj.weight"), &a.k_proj));
            named.push(linear_out_in(format!("{p}.self_attn.v_proj.weight"), &a.v_proj));
            named.push(linear_out_in(format!("{p}.self_attn.o_proj.weight"), &a.o_proj));
            named.push(linear_out_in(format!("{p}.mlp.gate_proj.weight"), &layer.mlp.gate_proj));
            named.push(linear_out_in(format!("{p}.mlp.up_proj.weight"), &layer.mlp.up_proj));
            named.push(linear_out_in(format!("{p}.mlp.down_proj.weight"), &layer.mlp.down_proj));
            named.push(vector(format!("{p}.input_layernorm.weight"), &layer.input_layernorm));
            named.push(vector(format!("{p}.post_attention_layernorm.weight"), &layer.post_attention_layernorm));
        }
        named.push(vector("model.norm.weight".into(), &model.norm));
        if let Some(head) = &model.lm_head {
            named.push(linear_out_in("lm_head.weight".into(), head));
        }
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = named
            .into_iter()
            .map(|n| (n.name, n.shape, n.values.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, TensorView<'_>)> = bytes
            .iter()
            .map(|(name, shape, data)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), data).expect("consistent view")))
            .collect();
        // One metadata key only: the header's metadata map is a HashMap, and a single key keeps
        // the bytes (and so the hash) deterministic.
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let safetensors = safetensors::serialize(views, Some(metadata)).expect("serializable tensors");
        let hash = checkpoint_hash(&safetensors);
        Checkpoint { config: config.clone(), safetensors, hash }
    }

    /// Rebuilds the model on `device`, checking every tensor's name, dtype and shape against
    /// the config.
    pub fn to_model(&self, device: &Device, origin: &str) -> Result<Llama, CheckpointError> {
        let st = SafeTensors::deserialize(&self.safetensors)
            .map_err(|e| CheckpointError::Format { origin: origin.into(), why: e.to_string() })?;
        let c = &self.config;
        let read = |name: &str, expected: Vec<usize>| -> Result<Vec<f32>, CheckpointError> {
            let view = st.tensor(name).map_err(|_| CheckpointError::Missing { origin: origin.into(), name: name.into() })?;
            if view.dtype() != Dtype::F32 || view.shape() != expected.as_slice() {
                return Err(CheckpointError::Shape {
                    origin: origin.into(),
                    name: name.into(),
                    found: view.shape().to_vec(),
                    expected,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            Ok(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        };
        let linear = |name: String, d_in: usize, d_out: usize| -> Result<Linear, CheckpointError> {
            let out_in = read(&name, vec![d_out, d_in])?;
            let mut in_out = vec![0.0f32; out_in.len()];
            for o in 0..d_out {
                for i in 0..d_in {
                    in_out[i * d_out + o] = out_in[o * d_in + i];
                }
            }
            let w = Tensor::from_data(TensorData::new(in_out, [d_in, d_out]), device);
            Ok(Linear { weight: Param::from_tensor(w), bias: None })
        };
        let norm = |name: String| -> Result<RmsNorm, CheckpointError> {
            let g = read(&name, vec![c.hidden_size])?;
            Ok(RmsNorm { gamma: Param::from_tensor(Tensor::from_data(TensorData::new(g, [c.hidden_size]), device)), epsilon: c.rms_norm_eps })
        };

        let mut model = Llama::init(c, device);
        let (d, kv, ff) = (c.hidden_size, c.kv_heads() * c.head_dim(), c.intermediate_size);
        let emb = read("model.embed_tokens.weight", vec![c.vocab_size, d])?;
        model.embed_tokens = Embedding { weight: Param::from_tensor(Tensor::from_data(TensorData::new(emb, [c.vocab_size, d]), device)) };
        for (i, layer) in model.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            layer.self_attn.q_proj = linear(format!("{p}.self_attn.q_proj.weight"), d, d)?;
            layer.self_attn.k_proj = linear(format!("{p}.self_attn.k_proj.weight"), d, kv)?;
            layer.self_attn.v_proj = linear(format!("{p}.self_attn.v_proj.weight"), d, kv)?;
            layer.self_attn.o_proj = linear(format!("{p}.self_attn.o_proj.weight"), d, d)?;
            layer.mlp.gate_proj = linear(format!("{p}.mlp.gate_proj.weight"), d, ff)?;
            layer.mlp.up_proj = linear(format!("{p}.mlp.up_proj.weight"), d, ff)?;
            layer.mlp.down_proj = linear(format!("{p}.mlp.down_proj.weight"), ff, d)?;
            layer.input_layernorm = norm(format!("{p}.input_layernorm.weight"))?;
            layer.post_attention_layernorm = norm(format!("{p}.post_attention_layernorm.weight"))?;
        }
        model.norm = norm("model.norm.weight".into())?;
        model.lm_head = if c.tie_word_embeddings { None } else { Some(linear("lm_head.weight".into(), d, c.vocab_size)?) };
        Ok(model)
    }

    /// Writes `config.json` and `model.safetensors` into `dir`, each atomically (temp + rename).
    pub fn write_dir(&self, dir: &Path) -> Result<(), CheckpointError> {
        write_atomic(&dir.join("config.json"), self.config.to_json().as_bytes())?;
        write_atomic(&dir.join("model.safetensors"), &self.safetensors)?;
        Ok(())
    }

    /// Reads a checkpoint directory (`config.json` + `model.safetensors`).
    pub fn read_dir(dir: &Path) -> Result<Self, CheckpointError> {
        Self::read_pair(&dir.join("config.json"), &dir.join("model.safetensors"))
    }

    /// Finds a checkpoint the way users name one: a checkpoint directory, a `.safetensors` file
    /// (its config beside it as `<hash>.config.json` in an artifact store, or `config.json`), or
    /// a hash or unique hash prefix (at least 8 characters) in the artifact store `store`.
    pub fn open(spec: &str, store: &Path) -> Result<Self, CheckpointError> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::read_dir(path);
        }
        if path.is_file() {
            let stem = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".safetensors"));
            let sibling = stem.map(|s| path.with_file_name(format!("{s}.config.json"))).filter(|p| p.is_file());
            let config_path = sibling.unwrap_or_else(|| path.with_file_name("config.json"));
            return Self::read_pair(&config_path, path);
        }
        let is_hex = spec.len() >= 8 && spec.chars().all(|c| c.is_ascii_hexdigit());
        if !is_hex {
            return Err(CheckpointError::Format {
                origin: spec.into(),
                why: "is neither a checkpoint directory, a .safetensors file nor a checkpoint hash (at least 8 hex digits)".into(),
            });
        }
        let entries = std::fs::read_dir(store).map_err(|source| CheckpointError::Io { path: store.display().to_string(), source })?;
        let mut matches: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(spec) && n.ends_with(".safetensors")))
            .collect();
        matches.sort();
        match matches.as_slice() {
            [one] => {
                let name = one.file_name().and_then(|n| n.to_str()).unwrap_or_default().trim_end_matches(".safetensors").to_string();
                Self::read_pair(&store.join(format!("{name}.config.json")), one)
            }
            [] => Err(CheckpointError::Format { origin: spec.into(), why: format!("no checkpoint with this hash in {}", store.display()) }),
            many => Err(CheckpointError::Format { origin: spec.into(), why: format!("matches {} checkpoints in {}; give more digits", many.len(), store.display()) }),
        }
    }

    fn read_pair(config_path: &Path, weights: &Path) -> Result<Self, CheckpointError> {
        let config = LlamaConfig::load(config_path)?;
        let safetensors = std::fs::read(weights).map_err(|source| CheckpointError::Io { path: weights.display().to_string(), source })?;
        SafeTensors::deserialize(&safetensors)
            .map_err(|e| CheckpointError::Format { origin: weights.display().to_string(), why: e.to_string() })?;
        let hash = checkpoint_hash(&safetensors);
        Ok(Checkpoint { config, safetensors, hash })
    }
}

