//! `evolve bench …`: throughput of the hot paths, each next to its peer measured in the same run
//! (this machine is noisy, so only ratios from one run mean anything).
//!
//! The peers for training and generation are PyTorch / Hugging Face `transformers` on the same
//! Llama config, batch shape and thread count (`scripts/peer_bench.py`); when Python lacks them
//! the bench says so and reports evolve's side alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Subcommand;
use evolve_model::{DecodeOptions, Llama, LlamaConfig, cpu_device, decode_batch, preset, preset_names};
use evolve_tasks::{Problem, Target};
use evolve_trainer::{OptimizerKind, Surgery, TrainConfig, Trainer};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Training tokens/s (AdamW step; the fused CPU pass, and burn's autodiff for comparison), the
    /// cost of A-GEM and PCGrad steps, and PyTorch's tokens/s.
    Train {
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        seq: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Rounds: each measures every configuration and the peer once, in turn; the fastest
        /// round of each is reported (interference only ever slows a round down).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Skip the PyTorch peer.
        #[arg(long)]
        no_peer: bool,
    },
    /// Batched greedy generation tokens/s with the KV cache (fused CPU decoder and burn's
    /// tensors), recomputing the prefix, and Hugging Face `generate`.
    Generate {
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 16)]
        prompt: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        /// Timed runs per decoder (and for the peer); the fastest is reported on both sides
        /// (the usual rule for timing on a shared machine: interference only ever slows a run
        /// down, and one run lasts a fraction of a second).
        #[arg(long, default_value_t = 9)]
        repeats: usize,
        #[arg(long)]
        no_peer: bool,
    },
    /// The checkpoint codec against zstd -3 and -19: ratio and GB/s on the accepted checkpoints
    /// of a real run (f32 and converted to bf16, standalone and as deltas against their parents)
    /// and on synthetic Gaussian weights.
    Compress {
        /// Ledger whose latest run's accepted checkpoints (in lineage order) are measured.
        #[arg(long, default_value = "runs/evolve.db")]
        ledger: PathBuf,
        /// Measure these safetensors files instead, each the parent of the next.
        files: Vec<PathBuf>,
        /// Parameters of the synthetic Gaussian checkpoint (0 for none).
        #[arg(long, default_value_t = 16_000_000)]
        gaussian: usize,
        /// Ranks of the low-rank (SVD) route to measure (empty for none).
        #[arg(long, value_delimiter = ',', default_value = "8,32")]
        ranks: Vec<usize>,
    },
}

pub async fn execute(command: BenchCommand) -> Result<(), String> {
    match command {
        BenchCommand::Compress { ledger, files, gaussian, ranks } => compress(&ledger, files, gaussian, ranks).await,
        BenchCommand::Train { preset, batch, seq, steps, repeats, no_peer } => train(&preset, batch, seq, steps, repeats, no_peer),
        BenchCommand::Generate { preset, batch, prompt, new_tokens, repeats, no_peer } => generate(&preset, batch, prompt, new_tokens, repeats, no_peer),
    }
}

fn config_of(name: &str) -> Result<LlamaConfig, String> {
    match preset(name) {
        Some(c) => c.map_err(|e| e.to_string()),
        None => Err(format!("--preset: unknown preset `{name}`; valid: {}", preset_names().join(", "))),
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Problems whose examples are exactly `seq` input tokens, half of them answer, spread over
/// `skills` names (the groups PCGrad splits by).
fn fixed_problems(rows: usize, seq: usize, skills: usize, rng: &mut StdRng) -> Vec<Problem> {
    let answer = seq / 2;
    let prompt = seq - answer - 1;
    let letters = |n: usize, rng: &mut StdRng| -> String { (0..n).map(|_| rng.random_range(b'a'..=b'z') as char).collect() };
    (0..rows)
        .map(|i| Problem {
            skill: format!("bench{}", i % skills.max(1)),
            level: 1,
            prompt: letters(prompt, rng),
            target: Target::Text(letters(answer, rng)),
            knobs: vec![],
        })
        .collect()
}

fn train(preset_name: &str, batch: usize, seq: usize, steps: usize, repeats: usize, no_peer: bool) -> Result<(), String> {
    let config = config_of(preset_name)?;
    if seq > config.max_position_embeddings || seq < 4 {
        return Err(format!("--seq: {seq} is outside 4..={} (the preset's max_position_embeddings)", config.max_position_embeddings));
    }
    if repeats == 0 || steps == 0 {
        return Err("--repeats and --steps must be at least 1".into());
    }
    let device = cpu_device();
    let mut rng = StdRng::seed_from_u64(1);
    let data = fixed_problems(batch, seq, 4, &mut rng);
    let reference = fixed_problems(batch, seq, 4, &mut rng);
    // The trainer role draws A-GEM's reference batches at half the batch's rows.
    let half_reference = reference[..(batch / 2).max(1)].to_vec();
    let measure = |optimizer: OptimizerKind, surgery: Surgery, fused: bool, reference: &[Problem]| -> f64 {
        device.seed(0);
        let model = Llama::init(&config, &device);
        let train = TrainConfig { optimizer, learning_rate: 1e-3, warmup_steps: 0, min_lr_ratio: 1.0, weight_decay: 0.01, grad_clip: 1.0, surgery, seed: 0 };
        let mut trainer = Trainer::new(model, train, &device).with_fused_cpu(fused);
        // Two warm-up steps: the first allocations and kernel choices are not throughput.
        trainer.fit(2, &mut || data.clone(), &mut || reference.to_vec(), &mut |_| {});
        let start = Instant::now();
        trainer.fit(steps, &mut || data.clone(), &mut || reference.to_vec(), &mut |_| {});
        start.elapsed().as_secs_f64() / steps as f64
    };
    let tokens = (batch * seq) as f64;
    let configurations = [
        (OptimizerKind::Adamw, Surgery::None, true, &reference),
        (OptimizerKind::Adamw, Surgery::None, false, &reference),
        (OptimizerKind::Sgd, Surgery::None, true, &reference),
        (OptimizerKind::Sgd, Surgery::Agem, true, &reference),
        (OptimizerKind::Sgd, Surgery::Agem, true, &half_reference),
        (OptimizerKind::Sgd, Surgery::Pcgrad, true, &reference),
    ];
    let mut fastest = [f64::INFINITY; 6];
    let mut peer_rate: Result<f64, String> = if no_peer { Err("--no-peer".into()) } else { Ok(0.0) };
    let peer_args = ["--batch".to_string(), batch.to_string(), "--seq".into(), seq.to_string(), "--steps".into(), steps.to_string()];
    for _ in 0..repeats {
        for (best, &(optimizer, surgery, fused, reference)) in fastest.iter_mut().zip(&configurations) {
            *best = best.min(measure(optimizer, surgery, fused, reference));
        }
        if let Ok(best) = &peer_rate {
            peer_rate = peer("train", &config, &peer_args).map(|rate| rate.max(*best));
        }
    }
    let [adamw, autodiff, sgd, agem, agem_half, pcgrad] = fastest;
    println!("evolve bench train: preset {preset_name} ({} parameters), batch {batch} × {seq} tokens, {steps} steps, {} threads, fastest of {repeats} interleaved rounds", config.num_params(), threads());
    println!("{:<28} {:>12} {:>12} {:>10}", "step", "ms/step", "tokens/s", "vs plain");
    println!("{:<28} {:>12.1} {:>12.0} {:>10}", "evolve AdamW", adamw * 1e3, tokens / adamw, "-");
    println!("{:<28} {:>12.1} {:>12.0} {:>10}", "evolve AdamW, burn autodiff", autodiff * 1e3, tokens / autodiff, "-");
    println!("{:<28} {:>12.1} {:>12.0} {:>10}", "evolve SGD (plain)", sgd * 1e3, tokens / sgd, "1.00x");
    println!("{:<28} {:>12.1} {:>12.0} {:>9.2}x", "evolve SGD + A-GEM", agem * 1e3, tokens / agem, agem / sgd);
    println!("{:<28} {:>12.1} {:>12.0} {:>9.2}x", "  reference of batch/2", agem_half * 1e3, tokens / agem_half, agem_half / sgd);
    println!("{:<28} {:>12.1} {:>12.0} {:>9.2}x", "evolve SGD + PCGrad (4 grp)", pcgrad * 1e3, tokens / pcgrad, pcgrad / sgd);
    match peer_rate {
        Ok(peer) => {
            println!("{:<28} {:>12.1} {:>12.0} {:>10}", "PyTorch AdamW (peer)", tokens / peer * 1e3, peer, "-");
            println!("evolve/PyTorch training throughput: {:.2}x", (tokens / adamw) / peer);
        }
        Err(why) if !no_peer => println!("peer skipped: {why}"),
        Err(_) => {}
    }
    Ok(())
}

fn generate(preset_name: &str, batch: usize, prompt: usize, new_tokens: usize, repeats: usize, no_peer: bool) -> Result<(), String> {
    let config = config_of(preset_name)?;
    if prompt + new_tokens > config.max_position_embeddings || prompt == 0 || new_tokens == 0 {
        return Err(format!("--prompt + --new-tokens must be within 1..={} (the preset's max_position_embeddings)", config.max_position_embeddings));
    }
    if repeats == 0 {
        return Err("--repeats must be at least 1".into());
    }
    let device = cpu_device();
    device.seed(0);
    let model = Llama::init(&config, &device);
    let mut rng = StdRng::seed_from_u64(2);
    let prompts: Vec<Vec<u32>> = (0..batch).map(|_| (0..prompt).map(|_| rng.random_range(0..256u32)).collect()).collect();
    let run = |kv_cache: bool, fused_cpu: bool| -> (f64, usize) {
        let options = DecodeOptions { batch_size: batch, kv_cache, fused_cpu, ..DecodeOptions::greedy(new_tokens) };
        decode_batch(&model, &prompts, &options, &device);
        let mut rates = Vec::with_capacity(repeats);
        let mut generated = 0;
        for _ in 0..repeats {
            let start = Instant::now();
            let out = decode_batch(&model, &prompts, &options, &device);
            generated = out.iter().map(Vec::len).sum();
            rates.push(generated as f64 / start.elapsed().as_secs_f64());
        }
        (rates.iter().copied().fold(0.0, f64::max), generated)
    };
    let (cached, n_cached) = run(true, true);
    let (tensors, n_tensors) = run(true, false);
    let (recomputed, n_recomputed) = run(false, false);
    println!("evolve bench generate: preset {preset_name}, batch {batch}, prompt {prompt}, up to {new_tokens} new tokens (greedy), {} threads, fastest of {repeats} runs", threads());
    println!("{:<34} {:>12} {:>10}", "decoder", "tokens/s", "tokens");
    println!("{:<34} {:>12.0} {:>10}", "evolve, KV cache (fused CPU)", cached, n_cached);
    println!("{:<34} {:>12.0} {:>10}", "evolve, KV cache (burn tensors)", tensors, n_tensors);
    println!("{:<34} {:>12.0} {:>10}", "evolve, recomputing the prefix", recomputed, n_recomputed);
    println!("KV cache (fused) vs recomputing: {:.2}x", cached / recomputed);
    if !no_peer {
        let args = ["--batch".to_string(), batch.to_string(), "--prompt".into(), prompt.to_string(), "--new".into(), new_tokens.to_string(), "--repeats".into(), repeats.to_string()];
        match peer("generate", &config, &args) {
            Ok(peer) => {
                println!("{:<34} {:>12.0}", "transformers generate (peer)", peer);
                println!("evolve KV cache vs transformers generate: {:.2}x", cached / peer);
            }
            Err(why) => println!("peer skipped: {why}"),
        }
    }
    Ok(())
}

/// Runs the PyTorch side; its tokens/s.
fn peer(mode: &str, config: &LlamaConfig, args: &[String]) -> Result<f64, String> {
    let script = peer_script().ok_or("scripts/peer_bench.py not found (run from the repository)")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_json()).map_err(|e| e.to_string())?;
    let output = Command::new("python3")
        .arg(&script)
        .arg(mode)
        .arg("--config")
        .arg(&config_path)
        .args(args)
        .args(["--threads", &threads().to_string()])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("");
        return Err(format!("{} failed ({last}); it needs `pip install torch transformers`", script.display()));
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let parsed: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| format!("peer printed {line:?}: {e}"))?;
    parsed["tokens_per_second"].as_f64().ok_or_else(|| format!("peer printed {line:?}"))
}

fn peer_script() -> Option<PathBuf> {
    [Path::new("scripts/peer_bench.py").to_path_buf(), Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/peer_bench.py")]
        .into_iter()
        .find(|p| p.is_file())
}

async fn compress(ledger_path: &Path, files: Vec<PathBuf>, gaussian: usize, ranks: Vec<usize>) -> Result<(), String> {
    let files = if files.is_empty() { accepted_chain(ledger_path).await? } else { files };
    let mut named = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let short: String = f.file_name().and_then(|n| n.to_str()).unwrap_or("file").chars().take(8).collect();
        named.push((short, bytes));
    }
    let inputs = evolve_compress::bench::chain_inputs(&named, gaussian).map_err(|e| e.to_string())?;
    let options = evolve_compress::bench::BenchOptions { lowrank_ranks: ranks, ..Default::default() };
    println!("evolve bench compress: {} checkpoint(s) in lineage order{}, {} threads", files.len(), if gaussian > 0 { format!(" + Gaussian {gaussian} parameters") } else { String::new() }, threads());
    let rows = evolve_compress::bench::bench_with(&inputs, &options).map_err(|e| e.to_string())?;
    print!("{}", evolve_compress::bench::format_table(&rows));
    Ok(())
}

/// The latest run's base and accepted checkpoints, oldest first, as artifact paths.
async fn accepted_chain(ledger_path: &Path) -> Result<Vec<PathBuf>, String> {
    let ledger = evolve_ledger::Ledger::open_upgrading(ledger_path).await.map_err(|e| e.to_string())?;
    let run = ledger.latest_run().await.map_err(|e| e.to_string())?.ok_or_else(|| format!("{}: no runs; pass checkpoint files instead", ledger_path.display()))?;
    let cycles = ledger.cycles(Some(run.run_id)).await.map_err(|e| e.to_string())?;
    ledger.close().await;
    let store = ledger_path.parent().unwrap_or(Path::new(".")).join("artifacts");
    let chain: Vec<PathBuf> = cycles
        .iter()
        .filter(|c| c.status == "accepted")
        .filter_map(|c| c.checkpoint_hash.as_ref())
        .map(|h| store.join(format!("{h}.safetensors")))
        .filter(|p| p.is_file())
        .collect();
    if chain.is_empty() {
        return Err(format!("{}: run {} has no accepted checkpoint in {}", ledger_path.display(), run.run_id, store.display()));
    }
    Ok(chain)
}
