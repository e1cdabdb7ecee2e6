//! The transformer itself. Field names follow Hugging Face's `LlamaForCausalLM` so that the
//! checkpoint module can map them one-to-one onto safetensors names.

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};

use crate::config::LlamaConfig;

/// Large negative instead of -inf: a row whose keys are all masked (a left-pad query) then gets
/// finite uniform weights instead of NaN, and NaN cannot leak into real rows through `0 * NaN`.
const MASKED: f32 = -1.0e9;

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

#[derive(Module, Debug)]
pub struct Llama {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `None` when the output projection is tied to the embedding.
    pub lm_head: Option<Linear>,
    pub rope_theta: f64,
}

/// Rotary cos/sin tables in Hugging Face's `rotate_half` layout (the two halves of a head share
/// one frequency), for positions `0..len`.
pub struct RopeTables {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl RopeTables {
    pub fn new(head_dim: usize, theta: f64, len: usize, device: &Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for pos in 0..len {
            for i in 0..head_dim {
                let inv_freq = 1.0 / theta.powf((2 * (i % half)) as f64 / head_dim as f64);
                let angle = pos as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTables {
            cos: Tensor::from_data(TensorData::new(cos, [len, head_dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [len, head_dim]), device),
        }
    }

    /// `x`: `[batch, heads, seq, head_dim]`.
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, seq, head_dim] = x.dims();
        let half = head_dim / 2;
        let cos = self.cos.clone().narrow(0, 0, seq).unsqueeze::<4>();
        let sin = self.sin.clone().narrow(0, 0, seq).unsqueeze::<4>();
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }
}

fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out).with_bias(false).init(device)
}

impl Llama {
    pub fn init(config: &LlamaConfig, device: &Device) -> Self {
        let d = config.hidden_size;
        let head_dim = config.head_dim();
        let kv = config.kv_heads() * head_dim;
        let norm = || RmsNormConfig::new(d).with_epsilon(config.rms_norm_eps).init(device);
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj: linear(d, d, device),
                    k_proj: linear(d, kv, device),
                    v_proj: linear(d, kv, device),
                    o_proj: linear(d, d, device),
                    n_heads: config.num_attention_heads,
                    n_kv_heads: config.kv_heads(),
                    head_dim,
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj: linear(d, config.intermediate_size, device),
                    up_proj: linear(d, config.intermediate_size, device),
                    down_proj: linear(config.intermediate_size, d, device),
                },
            })
            .collect();
        Llama {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, d)
                .with_initializer(burn::nn::Initializer::Normal { mean: 0.0, std: 0.02 })
                .init(device),
            layers,
            norm: norm(),
            lm_head: (!config.tie_word_embeddings).then(|| linear(d, config.vocab_size, device)),
            rope_theta: config.rope_theta,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.layers.first().map(|l| l.self_attn.head_dim).unwrap_or(2)
    }

    /// Logits `[batch, seq, vocab]` for `tokens` `[batch, seq]`.
    ///
    /// `key_padding` marks (per row) positions that are padding on the left; they are never
    /// attended to. Because rotary attention depends only on relative positions, a left-padded
    /// row gives the same logits as the unpadded one, which is what makes batched decoding of
    /// prompts of different lengths exact.
    pub fn forward(&self, tokens: Tensor<2, Int>, key_padding: Option<&[Vec<bool>]>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let rope = RopeTables::new(self.head_dim(), self.rope_theta, seq, &device);
        let bias = attention_bias(batch, seq, key_padding, &device);
        let mut h = self.embed_tokens.forward(tokens);
        for layer in &self.layers {
            h = layer.forward(h, &rope, bias.clone());
        }
        let h = self.norm.forward(h);
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => h.matmul(self.embed_tokens.weight.val().transpose().unsqueeze::<3>()),
        }
    }
}

/// Additive attention bias `[batch, 1, seq, seq]`: causal, plus masked left padding.
fn attention_bias(batch: usize, seq: usize, key_padding: Option<&[Vec<bool>]>, device: &Device) -> Tensor<4> {
    let rows = if key_padding.is_some() { batch } else { 1 };
    let mut bias = vec![0.0f32; rows * seq * seq];
    for r in 0..rows {
        for q in 0..seq {
            for k in 0..seq {
                let pad = key_padding.is_some_and(|p| p[r][k]);
                if k > q || pad {
                    bias[(r * seq + q) * seq + k] = MASKED;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(bias, [rows, 1, seq, seq]), device)
}

impl DecoderLayer {
    fn forward(&self, x: Tensor<3>, rope: &RopeTables, bias: Tensor<4>) -> Tensor<3> {
        let h = x.clone() + self.self_attn.forward(self.input_layernorm.forward(x), rope, bias);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj.forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

impl Attention {
    fn forward(&self, x: Tensor<3>, rope: &RopeTables, bias: Tensor<4>) -> Tensor<3> {
        let [batch, seq, d] = x.dims();
        let heads = |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2);
        let q = rope.apply(heads(self.q_proj.forward(x.clone()), self.n_heads));
        let k = rope.apply(heads(self.k_proj.forward(x.clone()), self.n_kv_heads));
        let v = heads(self.v_proj.forward(x), self.n_kv_heads);
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let scale = (self.head_dim as f64).sqrt().recip();
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + bias;
        let context = softmax(scores, 3).matmul(v);
        self.o_proj.forward(context.swap_dims(1, 2).reshape([batch, seq, d]))
    }

    /// Grouped-query attention: each key/value head serves `n_heads / n_kv_heads` query heads.
    fn repeat_kv(&self, t: Tensor<4>) -> Tensor<4> {
        let groups = self.n_heads / self.n_kv_heads;
        if groups == 1 {
            return t;
        }
        let [batch, kv_heads, seq, head_dim] = t.dims();
        t.unsqueeze_dim::<5>(2)
            .repeat_dim(2, groups)
            .reshape([batch, kv_heads * groups, seq, head_dim])
    }
}
