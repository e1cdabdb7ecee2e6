//! `cargo run --release -p evolve-compress --example bench -- [--gaussian PARAMS] [--ranks 8,32] CHAIN...`
//!
//! CHAIN is a list of safetensors files, each the parent of the next (the first has none); each
//! is measured as f32 and converted to bf16. `--gaussian` adds a synthetic checkpoint.

use evolve_compress::bench::{BenchInput, BenchOptions, bench_with, format_table, synthetic_gaussian, to_bf16};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut files = Vec::new();
    let mut gaussian = 0usize;
    let mut opts = BenchOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--gaussian" => gaussian = args.next().ok_or("--gaussian needs a count")?.parse()?,
            "--ranks" => opts.lowrank_ranks = args.next().ok_or("--ranks needs a list")?.split(',').filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>()?,
            _ => files.push(a),
        }
    }
    let mut inputs = Vec::new();
    let mut prev: Option<(Vec<u8>, Vec<u8>)> = None;
    for f in &files {
        let raw = std::fs::read(f)?;
        let bf = to_bf16(&raw)?;
        let short: String = std::path::Path::new(f).file_name().and_then(|s| s.to_str()).unwrap_or(f).chars().take(8).collect();
        inputs.push(BenchInput { name: format!("{short} f32"), bytes: raw.clone(), parent: prev.as_ref().map(|p| p.0.clone()) });
        inputs.push(BenchInput { name: format!("{short} bf16"), bytes: bf.clone(), parent: prev.as_ref().map(|p| p.1.clone()) });
        prev = Some((raw, bf));
    }
    if gaussian > 0 {
        let g = synthetic_gaussian(gaussian, 42);
        inputs.push(BenchInput { name: format!("gaussian {}M f32", gaussian / 1_000_000), bytes: g.clone(), parent: None });
        inputs.push(BenchInput { name: format!("gaussian {}M bf16", gaussian / 1_000_000), bytes: to_bf16(&g)?, parent: None });
    }
    let rows = bench_with(&inputs, &opts)?;
    print!("{}", format_table(&rows));
    Ok(())
}
