//! The transformer itself. Field names follow Hugging Face's `LlamaForCausalLM` so that the
//! checkpoint module can map them one-to-one onto safetensors names.

use burn::module::{ModuleMapper, Param, ParamId};
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
        let (cos, sin) = crate::cpu_kernels::rope_table(head_dim, theta, len);
        RopeTables {
            cos: Tensor::from_data(TensorData::new(cos, [len, head_dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [len, head_dim]), device),
        }
    }

    fn len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// `x`: `[batch, heads, seq, head_dim]` at positions `offset..offset + seq`.
    fn apply(&self, x: Tensor<4>, offset: usize) -> Tensor<4> {
        let [_, _, seq, head_dim] = x.dims();
        let half = head_dim / 2;
        let cos = self.cos.clone().narrow(0, offset, seq).unsqueeze::<4>();
        let sin = self.sin.clone().narrow(0, offset, seq).unsqueeze::<4>();
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

    /// Gives every parameter an id that depends only on its place in the module tree, so state
    /// keyed by parameter id (an optimizer's moments) saved by one process lines up with the
    /// same model loaded by another. burn otherwise draws fresh random ids on every load.
    pub fn with_stable_param_ids(self) -> Self {
        struct StableIds(u64);
        impl ModuleMapper for StableIds {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                self.0 += 1;
                // `from_mapped_value` keeps whether the parameter trains (`initialized` resets it).
                let (_, value, mapper) = param.consume();
                Param::from_mapped_value(ParamId::from(self.0), value, mapper)
            }
        }
        self.map(&mut StableIds(0))
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
        let seq = tokens.dims()[1];
        let rope = RopeTables::new(self.head_dim(), self.rope_theta, seq, &tokens.device());
        self.forward_at(tokens, key_padding, &rope, &mut [], None)
    }

    /// Logits for `tokens` `[batch, new]` that continue the sequences already in `cache`, whose
    /// keys and values it extends. `key_padding` covers all `cache.len() + new` positions.
    /// Feeding a prompt and then one token at a time gives the same logits as `forward` on the
    /// whole sequence, at the cost of only the new positions.
    pub fn forward_cached(&self, tokens: Tensor<2, Int>, key_padding: Option<&[Vec<bool>]>, cache: &mut KvCache) -> Tensor<3> {
        let new = tokens.dims()[1];
        assert!(cache.len + new <= cache.rope.len(), "KV cache capacity {} exceeded", cache.rope.len());
        let KvCache { layers, rope, .. } = cache;
        let logits = self.forward_at(tokens, key_padding, rope, layers, None);
        cache.len += new;
        logits
    }

    /// Per input channel statistics of every linear layer's input over `tokens`, keyed by the
    /// layer's checkpoint tensor name: what activation-aware quantization calibrates on.
    /// Padding positions count too, so callers pass unpadded batches.
    pub fn linear_input_stats(&self, tokens: Tensor<2, Int>, stats: &mut ChannelStatsByLayer) {
        let seq = tokens.dims()[1];
        let rope = RopeTables::new(self.head_dim(), self.rope_theta, seq, &tokens.device());
        self.forward_at(tokens, None, &rope, &mut [], Some(stats));
    }

    /// The one forward pass. `past` is empty (no cache) or one slot per layer.
    fn forward_at(
        &self,
        tokens: Tensor<2, Int>,
        key_padding: Option<&[Vec<bool>]>,
        rope: &RopeTables,
        past: &mut [LayerCache],
        mut stats: Option<&mut ChannelStatsByLayer>,
    ) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let offset = past.first().and_then(|p| p.as_ref()).map_or(0, |(k, _)| k.dims()[2]);
        let bias = attention_bias(batch, seq, offset, key_padding, &device);
        let mut h = self.embed_tokens.forward(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = past.get_mut(i);
            let observe = stats.as_deref_mut().map(|s| (s, i));
            h = layer.forward(h, rope, offset, bias.clone(), slot, observe);
        }
        let h = self.norm.forward(h);
        match &self.lm_head {
            Some(head) => {
                if let Some(s) = stats.as_deref_mut() {
                    s.record("lm_head.weight", &h);
                }
                head.forward(h)
            }
            None => h.matmul(self.embed_tokens.weight.val().transpose().unsqueeze::<3>()),
        }
    }
}

/// One layer's keys and values so far: `[batch, kv_heads, len, head_dim]`, rotary applied.
type LayerCache = Option<(Tensor<4>, Tensor<4>)>;

/// Keys and values of the positions decoded so far, per layer, with rotary tables for the whole
/// capacity, so each decoding step costs only its new positions.
pub struct KvCache {
    layers: Vec<LayerCache>,
    rope: RopeTables,
    len: usize,
}

impl KvCache {
    pub fn new(model: &Llama, capacity: usize, device: &Device) -> Self {
        KvCache {
            layers: vec![None; model.layers.len()],
            rope: RopeTables::new(model.head_dim(), model.rope_theta, capacity, device),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the given batch rows, in that order (finished sequences leave the batch).
    pub fn retain_rows(&mut self, rows: &[usize], device: &Device) {
        let index = Tensor::<1, Int>::from_data(TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]), device);
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, index.clone());
            *v = v.clone().select(0, index.clone());
        }
    }
}

/// Running sums of `|x|` and `x²` per input channel, per linear layer (by tensor name).
#[derive(Clone, Debug, Default)]
pub struct ChannelStatsByLayer {
    pub layers: std::collections::BTreeMap<String, ChannelSums>,
}

#[derive(Clone, Debug, Default)]
pub struct ChannelSums {
    pub count: u64,
    pub sum_abs: Vec<f64>,
    pub sum_sq: Vec<f64>,
}

impl ChannelSums {
    pub fn mean_abs(&self) -> Vec<f32> {
        self.sum_abs.iter().map(|s| (s / self.count.max(1) as f64) as f32).collect()
    }

    pub fn mean_sq(&self) -> Vec<f32> {
        self.sum_sq.iter().map(|s| (s / self.count.max(1) as f64) as f32).collect()
    }
}

impl ChannelStatsByLayer {
    /// Records one input that several layers read (q/k/v, gate/up): the sums are computed once.
    fn record_shared<const N: usize>(&mut self, names: [String; N], x: &Tensor<3>) {
        let [first, rest @ ..] = names.as_slice() else { return };
        self.record(first, x);
        // Layers that share an input have seen exactly the same activations.
        let sums = self.layers[first].clone();
        for name in rest {
            self.layers.insert(name.clone(), sums.clone());
        }
    }

    fn record(&mut self, name: &str, x: &Tensor<3>) {
        let [b, s, d] = x.dims();
        let flat = x.clone().reshape([b * s, d]);
        let abs: Vec<f32> = flat.clone().abs().sum_dim(0).into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 sums");
        let sq: Vec<f32> = flat.powi_scalar(2).sum_dim(0).into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 sums");
        let entry = self.layers.entry(name.to_string()).or_default();
        if entry.sum_abs.is_empty() {
            entry.sum_abs = vec![0.0; d];
            entry.sum_sq = vec![0.0; d];
        }
        entry.count += (b * s) as u64;
        for j in 0..d {
            entry.sum_abs[j] += abs[j] as f64;
            entry.sum_sq[j] += sq[j] as f64;
        }
    }
}

/// Additive attention bias `[batch, 1, seq, offset + seq]` for queries at positions
/// `offset..offset + seq`: causal, plus masked left padding.
fn attention_bias(batch: usize, seq: usize, offset: usize, key_padding: Option<&[Vec<bool>]>, device: &Device) -> Tensor<4> {
    let rows = if key_padding.is_some() { batch } else { 1 };
    let keys = offset + seq;
    let mut bias = vec![0.0f32; rows * seq * keys];
    for r in 0..rows {
        for q in 0..seq {
            for k in 0..keys {
                let pad = key_padding.is_some_and(|p| p[r][k]);
                if k > offset + q || pad {
                    bias[(r * seq + q) * keys + k] = MASKED;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(bias, [rows, 1, seq, keys]), device)
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        offset: usize,
        bias: Tensor<4>,
        cache: Option<&mut LayerCache>,
        mut observe: Option<(&mut ChannelStatsByLayer, usize)>,
    ) -> Tensor<3> {
        let name = |i: usize, linear: &str| format!("model.layers.{i}.{linear}.weight");
        let normed = self.input_layernorm.forward(x.clone());
        if let Some((s, i)) = observe.as_mut() {
            s.record_shared(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].map(|l| name(*i, l)), &normed);
        }
        let attn_observe = observe.as_mut().map(|(s, i)| (&mut **s, *i));
        let h = x + self.self_attn.forward(normed, rope, offset, bias, cache, attn_observe);
        let normed = self.post_attention_layernorm.forward(h.clone());
        if let Some((s, i)) = observe.as_mut() {
            s.record_shared(["mlp.gate_proj", "mlp.up_proj"].map(|l| name(*i, l)), &normed);
        }
        h + self.mlp.forward(normed, observe)
    }
}

impl Mlp {
    fn forward(&self, x: Tensor<3>, observe: Option<(&mut ChannelStatsByLayer, usize)>) -> Tensor<3> {
        let inner = silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x);
        if let Some((s, i)) = observe {
            s.record(&format!("model.layers.{i}.mlp.down_proj.weight"), &inner);
        }
        self.down_proj.forward(inner)
    }
}

impl Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        offset: usize,
        bias: Tensor<4>,
        cache: Option<&mut LayerCache>,
        observe: Option<(&mut ChannelStatsByLayer, usize)>,
    ) -> Tensor<3> {
        let [batch, seq, d] = x.dims();
        let heads = |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2);
        let q = rope.apply(heads(self.q_proj.forward(x.clone()), self.n_heads), offset);
        let mut k = rope.apply(heads(self.k_proj.forward(x.clone()), self.n_kv_heads), offset);
        let mut v = heads(self.v_proj.forward(x), self.n_kv_heads);
        if let Some(slot) = cache {
            if let Some((past_k, past_v)) = slot.take() {
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let scale = (self.head_dim as f64).sqrt().recip();
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + bias;
        let context = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([batch, seq, d]);
        if let Some((s, i)) = observe {
            s.record(&format!("model.layers.{i}.self_attn.o_proj.weight"), &context);
        }
        self.o_proj.forward(context)
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
