//! `cargo run --release -p evolve-compress --example bench -- [--gaussian PARAMS] [--ranks 8,32] CHAIN...`
//!
//! CHAIN is a list of safetensors files, each the parent of the next (the first has none); each
//! is measured as f32 and converted to bf16. `--gaussian` adds a synthetic checkpoint.

use evolve_compress::bench::{BenchOptions, bench_with, chain_inputs, format_table};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut files = Vec::new();
    let mut gaussian = 0usize;
    let mut opts = BenchOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--gaussian" => gaussian = args.next().ok_or("--gaussian needs a count")?.parse()?,
            "--ranks" => opts.lowrank_ranks = args.next().ok_or("--ranks needs a list")?.split(',').filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>()?,
            path => {
                let short: String = std::path::Path::new(path).file_name().and_then(|s| s.to_str()).unwrap_or(path).chars().take(8).collect();
                files.push((short, std::fs::read(path).map_err(|e| format!("{path}: {e}"))?));
            }
        }
    }
    let rows = bench_with(&chain_inputs(&files, gaussian)?, &opts)?;
    print!("{}", format_table(&rows));
    Ok(())
}
