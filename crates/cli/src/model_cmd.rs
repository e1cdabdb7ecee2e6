//! `evolve model …`: bring a Hugging Face Llama in, write one out, and score token sequences.

use std::path::PathBuf;

use clap::Subcommand;
use evolve_model::{Checkpoint, Tokenizer, VOCAB_SIZE, cpu_device, export_hf_dir, import_hf_dir, token_logprobs};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Import a Hugging Face Llama directory (config.json + model.safetensors or shards) as an
    /// evolve checkpoint directory.
    Import {
        /// The Hugging Face directory.
        dir: PathBuf,
        /// Where to write the evolve checkpoint (config.json + model.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a checkpoint as a directory `transformers` loads (LlamaForCausalLM).
    Export {
        /// A checkpoint directory, a .safetensors file, or a hash in the artifact store.
        #[arg(long)]
        checkpoint: String,
        #[arg(long)]
        out: PathBuf,
        /// Artifact store for checkpoint hashes.
        #[arg(long, default_value = "runs/artifacts")]
        store: PathBuf,
    },
    /// Per-token log-probabilities of a text (evolve's byte tokenizer) or of token ids.
    Score {
        /// A checkpoint directory, a .safetensors file, or a hash in the artifact store.
        #[arg(long)]
        checkpoint: String,
        /// Text, encoded with evolve's byte tokenizer (BOS first).
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        text: Option<String>,
        /// Comma-separated token ids, for models imported without evolve's tokenizer.
        #[arg(long, value_delimiter = ',')]
        ids: Option<Vec<u32>>,
        #[arg(long, default_value = "runs/artifacts")]
        store: PathBuf,
        /// Print JSON (`{"ids": [...], "logprobs": [null, ...]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn execute(command: ModelCommand) -> Result<(), String> {
    let device = cpu_device();
    match command {
        ModelCommand::Import { dir, out } => {
            let checkpoint = import_hf_dir(&dir, &device).map_err(|e| e.to_string())?;
            checkpoint.write_dir(&out).map_err(|e| e.to_string())?;
            println!("imported {} ({} parameters) into {}: checkpoint {}", dir.display(), checkpoint.config.num_params(), out.display(), checkpoint.hash);
            Ok(())
        }
        ModelCommand::Export { checkpoint, out, store } => {
            let checkpoint = Checkpoint::open(&checkpoint, &store).map_err(|e| e.to_string())?;
            export_hf_dir(&checkpoint, &out).map_err(|e| e.to_string())?;
            println!("wrote {} (config.json + model.safetensors): checkpoint {}", out.display(), checkpoint.hash);
            Ok(())
        }
        ModelCommand::Score { checkpoint, text, ids, store, json } => {
            let spec = checkpoint;
            let checkpoint = Checkpoint::open(&spec, &store).map_err(|e| e.to_string())?;
            let vocab = checkpoint.config.vocab_size;
            let ids = match (text, ids) {
                (Some(text), _) => {
                    if vocab != VOCAB_SIZE {
                        return Err(format!("--text: {spec} has a {vocab}-token vocabulary, not evolve's byte tokenizer ({VOCAB_SIZE}); pass --ids"));
                    }
                    Tokenizer.encode_prompt(&text)
                }
                (None, Some(ids)) => ids,
                (None, None) => return Err("give --text or --ids".into()),
            };
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(format!("--ids: token {bad} is outside the model's vocabulary (valid: 0..{vocab})"));
            }
            if ids.len() < 2 {
                return Err("--ids/--text: need at least two tokens (the first one has no log-probability)".into());
            }
            if ids.len() > checkpoint.config.max_position_embeddings {
                return Err(format!("{} tokens exceed the model's max_position_embeddings ({})", ids.len(), checkpoint.config.max_position_embeddings));
            }
            let model = checkpoint.to_model(&device, &spec).map_err(|e| e.to_string())?;
            let logprobs = token_logprobs(&model, &ids, &device);
            let padded: Vec<Option<f32>> = std::iter::once(None).chain(logprobs.iter().map(|&l| Some(l))).collect();
            if json {
                println!("{}", serde_json::json!({"checkpoint": checkpoint.hash, "ids": ids, "logprobs": padded, "total": logprobs.iter().map(|&l| l as f64).sum::<f64>()}));
            } else {
                println!("{:>5} {:>8} {:>12}", "pos", "id", "logprob");
                for (i, (id, lp)) in ids.iter().zip(&padded).enumerate() {
                    println!("{:>5} {:>8} {:>12}", i, id, lp.map(|l| format!("{l:.6}")).unwrap_or_else(|| "-".into()));
                }
                println!("total {:.6}", logprobs.iter().map(|&l| l as f64).sum::<f64>());
            }
            Ok(())
        }
    }
}
