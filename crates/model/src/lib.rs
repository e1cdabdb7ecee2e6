//! The model: a Llama-style decoder-only transformer (RMSNorm, rotary positions, SwiGLU MLP,
//! causal grouped-query self-attention) written against burn's device-agnostic `Tensor` API, a
//! byte-level tokenizer, checkpoints as safetensors with Hugging Face Llama tensor names, and
//! batched decoding.
//!
//! Architecture invariants: nothing here knows about skills, curricula, cycles or the ledger;
//! the device is always a run-time argument (flex on the CPU by default, CUDA when built with it),
//! never a type parameter; a checkpoint's identity is the blake3 hash of its safetensors bytes,
//! and those bytes are a pure function of the weights, so equal weights give equal hashes.

mod checkpoint;
mod config;
mod cpu_decode;
mod cpu_kernels;
mod cpu_train;
mod decode;
mod hf;
mod llama;
mod presets;
mod tokenizer;

pub use checkpoint::{Checkpoint, CheckpointError, checkpoint_hash};
pub use config::{ConfigError, LlamaConfig};
pub use cpu_decode::{CpuDecoder, RowToken, SequenceCache};
pub use cpu_train::{CpuTrainPass, ParamSlot, TokenBatch};
pub use decode::{DecodeOptions, decode_batch};
pub use hf::{export_hf_dir, import_hf_dir, token_logprobs};
pub use llama::{ChannelStatsByLayer, ChannelSums, KvCache, Llama, RopeTables};
pub use presets::{preset, preset_names};
pub use tokenizer::{BOS, EOS, PAD, REFUSE, VOCAB_SIZE, Tokenizer};

/// The devices evolve can compute on; the choice is made at run time from the budget.
pub fn cpu_device() -> burn::tensor::Device {
    burn::tensor::Device::flex()
}
