//! `evolve compress` / `evolve decompress`: the checkpoint codec on any file (safetensors or
//! not), optionally as a delta against a parent. The output is written only after it has been
//! decoded again and found bit-exact, and then atomically.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use evolve_compress::{Codec, Options, decode_with, encode_with};
use indicatif::{ProgressBar, ProgressStyle};

/// Files at least this large get a progress bar.
const BAR_BYTES: u64 = 64 << 20;

static BAR: OnceLock<ProgressBar> = OnceLock::new();

fn tick(bytes: u64) {
    if let Some(bar) = BAR.get() {
        bar.inc(bytes);
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

fn options(total: u64, verb: &str, progress: bool) -> Options {
    let mut opts = Options::default();
    if progress && total >= BAR_BYTES {
        let bar = BAR.get_or_init(|| ProgressBar::new(0));
        bar.reset();
        bar.set_length(total);
        bar.set_style(ProgressStyle::with_template("{msg:>11} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}").expect("valid template").progress_chars("=> "));
        bar.set_message(verb.to_string());
        opts.progress = Some(tick);
    }
    opts
}

fn finish_bar() {
    if let Some(bar) = BAR.get() {
        bar.finish_and_clear();
    }
}

pub fn compress(input: &Path, output: &Path, parent: Option<&PathBuf>, codec: &str, progress: bool) -> Result<(), String> {
    let codec = Codec::from_name(codec).ok_or_else(|| format!("--codec: unknown codec `{codec}`; valid: evolve-fp, zstd"))?;
    let raw = read(input, "input")?;
    let parent_bytes = parent.map(|p| read(p, "--parent")).transpose()?;
    let started = Instant::now();
    let encoded = encode_with(&raw, parent_bytes.as_deref(), codec, options(raw.len() as u64, "compressing", progress))
        .map_err(|e| format!("{}: {e}", input.display()))?;
    let encode_s = started.elapsed().as_secs_f64();
    let decoded = decode_with(&encoded, parent_bytes.as_deref(), options(raw.len() as u64, "verifying", progress))
        .map_err(|e| format!("{}: the fresh encoding does not decode ({e}); nothing written", input.display()))?;
    finish_bar();
    if decoded != raw {
        return Err(format!("{}: the fresh encoding decodes to different bytes; nothing written", input.display()));
    }
    evolve_store::write_atomic(output, &encoded).map_err(|e| e.to_string())?;
    println!(
        "{} -> {}: {} -> {} bytes ({:.3}x, {}{}), encoded in {:.2}s, verified bit-exact",
        input.display(),
        output.display(),
        raw.len(),
        encoded.len(),
        raw.len() as f64 / encoded.len().max(1) as f64,
        codec.name(),
        parent.map(|p| format!(", delta against {}", p.display())).unwrap_or_default(),
        encode_s
    );
    Ok(())
}

pub fn decompress(input: &Path, output: &Path, parent: Option<&PathBuf>, progress: bool) -> Result<(), String> {
    let encoded = read(input, "input")?;
    let parent_bytes = parent.map(|p| read(p, "--parent")).transpose()?;
    let started = Instant::now();
    let raw_len = evolve_compress::raw_len(&encoded).unwrap_or(0);
    let raw = decode_with(&encoded, parent_bytes.as_deref(), options(raw_len, "decompressing", progress)).map_err(|e| format!("{}: {e}", input.display()))?;
    finish_bar();
    evolve_store::write_atomic(output, &raw).map_err(|e| e.to_string())?;
    println!("{} -> {}: {} bytes in {:.2}s, blake3 verified", input.display(), output.display(), raw.len(), started.elapsed().as_secs_f64());
    Ok(())
}
