//! Model configuration with Hugging Face `LlamaConfig` field names, so `config.json` written by
//! evolve is read by `transformers` and vice versa.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::tokenizer::{BOS, EOS, PAD, VOCAB_SIZE};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default, deserialize_with = "first_token_id")]
    pub bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "first_token_id")]
    pub eos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "first_token_id")]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_dtype")]
    pub torch_dtype: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Read so that an imported model using it is refused rather than silently mis-computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// transformers 5 keeps `rope_theta` (and the rope type) here; read and folded into
    /// `rope_theta`, never written (the flat field is what every version reads).
    #[serde(default, skip_serializing)]
    pub rope_parameters: Option<serde_json::Value>,
}

/// Hugging Face configs give a token id as a number, a list of numbers (Llama 3's several
/// end-of-turn tokens) or null; evolve keeps the first.
fn first_token_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<Id>::deserialize(d)? {
        Some(Id::One(id)) => Some(id),
        Some(Id::Many(ids)) => ids.first().copied(),
        None => None,
    })
}

fn default_architectures() -> Vec<String> {
    vec!["LlamaForCausalLM".into()]
}
fn default_model_type() -> String {
    "llama".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10000.0
}
fn default_act() -> String {
    "silu".into()
}
fn default_dtype() -> String {
    "float32".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read model config: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not a Llama config: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("{path}: field `{field}` is invalid: {why}")]
    Invalid { path: String, field: &'static str, why: String },
}

impl LlamaConfig {
    /// A config for evolve's byte tokenizer with the given shape.
    pub fn for_bytes(hidden: usize, intermediate: usize, layers: usize, heads: usize, kv_heads: usize, max_positions: usize) -> Self {
        LlamaConfig {
            architectures: default_architectures(),
            model_type: default_model_type(),
            vocab_size: VOCAB_SIZE,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            max_position_embeddings: max_positions,
            rms_norm_eps: default_eps(),
            rope_theta: default_theta(),
            tie_word_embeddings: false,
            hidden_act: default_act(),
            bos_token_id: Some(BOS),
            eos_token_id: Some(EOS),
            pad_token_id: Some(PAD),
            torch_dtype: default_dtype(),
            attention_bias: false,
            mlp_bias: false,
            rope_scaling: None,
            head_dim: None,
            rope_parameters: None,
        }
    }

    pub fn from_json(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut config: LlamaConfig = serde_json::from_str(text)
            .map_err(|source| ConfigError::Parse { path: origin.to_string(), source })?;
        if let Some(rope) = config.rope_parameters.take().filter(|r| !r.is_null()) {
            let invalid = |why: String| ConfigError::Invalid { path: origin.to_string(), field: "rope_parameters", why };
            match rope.get("rope_type").and_then(|t| t.as_str()) {
                None | Some("default") => {}
                Some(other) => return Err(invalid(format!("rope_type `{other}` is not supported; valid: default"))),
            }
            if let Some(theta) = rope.get("rope_theta") {
                config.rope_theta = theta.as_f64().ok_or_else(|| invalid(format!("rope_theta {theta} is not a number")))?;
            }
        }
        config.validate(origin)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: origin.clone(), source })?;
        Self::from_json(&text, &origin)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serializes")
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field, why: String| Err(ConfigError::Invalid { path: origin.to_string(), field, why });
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return invalid("hidden_size", format!("{} must be a positive multiple of num_attention_heads ({})", self.hidden_size, self.num_attention_heads));
        }
        if self.head_dim() % 2 != 0 {
            return invalid("hidden_size", format!("head dim {} must be even for rotary positions", self.head_dim()));
        }
        if self.kv_heads() == 0 || self.num_attention_heads % self.kv_heads() != 0 {
            return invalid("num_key_value_heads", format!("{} must divide num_attention_heads ({})", self.kv_heads(), self.num_attention_heads));
        }
        if self.vocab_size == 0 || self.intermediate_size == 0 || self.num_hidden_layers == 0 || self.max_position_embeddings == 0 {
            return invalid("vocab_size", "vocab_size, intermediate_size, num_hidden_layers and max_position_embeddings must be positive".into());
        }
        if self.hidden_act != "silu" {
            return invalid("hidden_act", format!("`{}` is not supported; valid: silu", self.hidden_act));
        }
        if self.attention_bias || self.mlp_bias {
            return invalid("attention_bias", "biased projections are not supported".into());
        }
        if self.model_type != "llama" {
            return invalid("model_type", format!("`{}` is not supported; valid: llama", self.model_type));
        }
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            return invalid("rope_scaling", format!("{scaling} is not supported; valid: null (plain rotary positions)"));
        }
        if let Some(h) = self.head_dim.filter(|&h| h != self.hidden_size / self.num_attention_heads) {
            return invalid("head_dim", format!("{h} is not supported; valid: hidden_size / num_attention_heads = {}", self.hidden_size / self.num_attention_heads));
        }
        Ok(())
    }

    /// Parameter count, computed from the shape (matches `Module::num_params`).
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let kv = self.kv_heads() * self.head_dim();
        let per_layer = d * d * 2 + d * kv * 2 + 3 * d * self.intermediate_size + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * d };
        self.vocab_size * d + self.num_hidden_layers * per_layer + d + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_hugging_face_field_names() {
        let c = LlamaConfig::for_bytes(128, 352, 4, 4, 2, 64);
        let json = c.to_json();
        assert!(json.contains("\"num_key_value_heads\": 2"));
        assert!(json.contains("\"model_type\": \"llama\""));
        assert_eq!(LlamaConfig::from_json(&json, "x").unwrap(), c);
    }

    #[test]
    fn invalid_head_split_is_named() {
        let mut c = LlamaConfig::for_bytes(128, 352, 4, 4, 3, 64);
        c.num_key_value_heads = Some(3);
        let err = LlamaConfig::from_json(&c.to_json(), "cfg.json").unwrap_err().to_string();
        assert!(err.contains("cfg.json") && err.contains("num_key_value_heads"), "{err}");
    }
}
