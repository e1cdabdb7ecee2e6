//! Measured comparison of the codecs on given checkpoints: ratio and encode/decode throughput of
//! evolve-fp (one core and all cores), plain zstd 3 and 19, deltas against the parent, and the
//! low-rank route. `evolve bench compress` prints `format_table(&bench(&inputs))`.
//!
//! Every evolve figure comes from a verified round trip; throughput is raw bytes over the best
//! of several repeats (the machine is shared, the best run is the least disturbed one).

use std::time::Instant;

use crate::synth::{Rng, f32_bytes, safetensors};
use crate::{Codec, CompressError, Options, decode_with, encode_with, layout, lowrank};

/// One checkpoint to measure, optionally with its parent for the delta rows.
#[derive(Clone, Debug)]
pub struct BenchInput {
    pub name: String,
    pub bytes: Vec<u8>,
    pub parent: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct BenchRow {
    pub input: String,
    pub method: String,
    pub threads: usize,
    pub raw_bytes: usize,
    pub stored_bytes: usize,
    pub ratio: f64,
    /// Raw bytes per wall-clock second, best repeat.
    pub encode_gbps: f64,
    pub decode_gbps: f64,
    /// Raw bytes per second of process CPU time (all threads), averaged over the repeats: the
    /// per-core figure, far less sensitive than wall time to other jobs on a shared machine.
    /// `None` where /proc/self/stat is unavailable.
    pub encode_gbps_per_core: Option<f64>,
    pub decode_gbps_per_core: Option<f64>,
    /// Caveats, e.g. measured on a prefix.
    pub note: String,
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// zstd -19 runs at a few MB/s, so it is measured on at most this many leading bytes.
    pub zstd19_max_bytes: usize,
    /// Ranks tried by the low-rank route; empty skips it.
    pub lowrank_ranks: Vec<usize>,
    /// Repeat each timing until this many raw bytes went through (at least once, at most 20).
    pub min_bytes_timed: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { zstd19_max_bytes: 16 << 20, lowrank_ranks: vec![8, 32], min_bytes_timed: 256 << 20 }
    }
}

fn all_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Process CPU time (user + system, all threads) in seconds, from /proc/self/stat.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux ABI Rust targets.
    Some(ticks / 100.0)
}

/// Timing of one operation: best wall time and mean CPU time per repeat.
#[derive(Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: Option<f64>,
}

/// Times `f` over the repeats `bytes` asks for.
fn best_of<T>(bytes: usize, opts: &BenchOptions, mut f: impl FnMut() -> T) -> (T, Timing) {
    let reps = (opts.min_bytes_timed / bytes.max(1)).clamp(1, 20);
    let mut best = f64::INFINITY;
    let mut out = None;
    let c0 = cpu_seconds();
    for _ in 0..reps {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(v);
    }
    // CPU time ticks at 10 ms: only trusted when the repeats took long enough for it.
    let cpu = c0.zip(cpu_seconds()).map(|(a, b)| (b - a) / reps as f64).filter(|&c| c * reps as f64 >= 0.2);
    (out.expect("at least one repeat"), Timing { wall: best, cpu })
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs.max(1e-12) / 1e9
}

/// Benchmarks with default options.
pub fn bench(inputs: &[BenchInput]) -> Result<Vec<BenchRow>, CompressError> {
    bench_with(inputs, &BenchOptions::default())
}

pub fn bench_with(inputs: &[BenchInput], opts: &BenchOptions) -> Result<Vec<BenchRow>, CompressError> {
    let mut rows = Vec::new();
    for inp in inputs {
        let raw = &inp.bytes;
        let n = raw.len();
        let row = |method: &str, threads: usize, stored: usize, enc: Timing, dec: Timing, raw_bytes: usize, note: String| BenchRow {
            input: inp.name.clone(),
            method: method.to_string(),
            threads,
            raw_bytes,
            stored_bytes: stored,
            ratio: raw_bytes as f64 / stored.max(1) as f64,
            encode_gbps: gbps(raw_bytes, enc.wall),
            decode_gbps: gbps(raw_bytes, dec.wall),
            encode_gbps_per_core: enc.cpu.map(|c| gbps(raw_bytes, c)),
            decode_gbps_per_core: dec.cpu.map(|c| gbps(raw_bytes, c)),
            note,
        };
        let ours = |codec: Codec, parent: Option<&[u8]>, threads: usize, method: &str| -> Result<BenchRow, CompressError> {
            let o = Options { threads, ..Options::default() };
            let (enc, te) = best_of(n, opts, || encode_with(raw, parent, codec, o));
            let enc = enc?;
            let (dec, td) = best_of(n, opts, || decode_with(&enc, parent, o));
            if &dec? != raw {
                return Err(CompressError::Corrupt(format!("{method} round trip differs on {}", inp.name)));
            }
            Ok(row(method, threads, enc.len(), te, td, n, String::new()))
        };
        rows.push(ours(Codec::EvolveFp, None, 1, "evolve-fp")?);
        rows.push(ours(Codec::EvolveFp, None, all_threads(), "evolve-fp")?);
        // Plain zstd exactly as a user would run it: one frame, one thread.
        for (level, cap) in [(3, usize::MAX), (19, opts.zstd19_max_bytes)] {
            let part = &raw[..n.min(cap)];
            let (z, te) = best_of(part.len() * if level == 19 { 64 } else { 1 }, opts, || zstd::bulk::compress(part, level).expect("in-memory zstd"));
            let (d, td) = best_of(part.len(), opts, || zstd::bulk::decompress(&z, part.len()).expect("own output"));
            debug_assert_eq!(d, part);
            let note = if part.len() < n { format!("first {} MiB", part.len() >> 20) } else { String::new() };
            rows.push(row(&format!("zstd-{level}"), 1, z.len(), te, td, part.len(), note));
        }
        if let Some(parent) = &inp.parent {
            rows.push(ours(Codec::EvolveFp, Some(parent), all_threads(), "delta evolve-fp")?);
            rows.push(ours(Codec::Zstd, Some(parent), all_threads(), "delta zstd")?);
        }
        // The route predicts F32 matrices only; elsewhere it would just repeat the evolve-fp row.
        let has_f32_matrices = !f32_matrices(raw).is_empty();
        for &rank in opts.lowrank_ranks.iter().filter(|_| has_f32_matrices) {
            let parent = inp.parent.as_deref();
            let t = Instant::now();
            let m = lowrank::measure(raw, parent, rank)?;
            let te = Timing { wall: t.elapsed().as_secs_f64(), cpu: None };
            let what = if parent.is_some() { "delta lowrank" } else { "lowrank" };
            rows.push(row(
                &format!("{what} r={rank}"),
                all_threads(),
                m.stored_bytes,
                te,
                Timing { wall: m.decode_secs, cpu: None },
                n,
                format!("{} of {} 2D tensors predicted; experiment, not a codec", m.tensors_predicted, m.tensors_2d),
            ));
        }
    }
    Ok(rows)
}

/// Plain-text table, one row per (input, method).
pub fn format_table(rows: &[BenchRow]) -> String {
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    let mut s = format!(
        "{:<20} {:<18} {:>3} {:>10} {:>10} {:>7} {:>8} {:>8} {:>9} {:>9}  {}\n",
        "input", "method", "thr", "raw", "stored", "ratio", "enc GB/s", "dec GB/s", "enc /core", "dec /core", "note"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<20} {:<18} {:>3} {:>10} {:>10} {:>7.3} {:>8.3} {:>8.3} {:>9} {:>9}  {}\n",
            r.input,
            r.method,
            r.threads,
            r.raw_bytes,
            r.stored_bytes,
            r.ratio,
            r.encode_gbps,
            r.decode_gbps,
            opt(r.encode_gbps_per_core),
            opt(r.decode_gbps_per_core),
            r.note
        ));
    }
    s.push_str("GB/s: raw bytes per best wall-clock second; /core: raw bytes per CPU-second of all threads (mean).\n");
    s
}

/// The standard input set: each named file as F32 and converted to BF16, each file's parent
/// being the previous one (a parent -> child chain from a run), plus a deterministic Gaussian
/// checkpoint of `gaussian_params` parameters (none if 0) in both dtypes.
pub fn chain_inputs(files: &[(String, Vec<u8>)], gaussian_params: usize) -> Result<Vec<BenchInput>, CompressError> {
    let mut inputs = Vec::new();
    let mut prev: Option<(&Vec<u8>, Vec<u8>)> = None;
    for (name, raw) in files {
        let bf = to_bf16(raw).map_err(|e| CompressError::Invalid(format!("{name}: {e}")))?;
        inputs.push(BenchInput { name: format!("{name} f32"), bytes: raw.clone(), parent: prev.as_ref().map(|p| p.0.clone()) });
        inputs.push(BenchInput { name: format!("{name} bf16"), bytes: bf.clone(), parent: prev.as_ref().map(|p| p.1.clone()) });
        prev = Some((raw, bf));
    }
    if gaussian_params > 0 {
        let g = synthetic_gaussian(gaussian_params, 42);
        let label = format!("gaussian {:.1}M", gaussian_params as f64 / 1e6);
        inputs.push(BenchInput { name: format!("{label} bf16"), bytes: to_bf16(&g)?, parent: None });
        inputs.insert(inputs.len() - 1, BenchInput { name: format!("{label} f32"), bytes: g, parent: None });
    }
    Ok(inputs)
}

/// Round-to-nearest-even f32 -> bf16 bits (NaN kept quiet and NaN).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// The same checkpoint with every F32 tensor converted to BF16 (round to nearest even); other
/// tensors and metadata unchanged. Errors on bytes that are not safetensors.
pub fn to_bf16(st: &[u8]) -> Result<Vec<u8>, CompressError> {
    let parsed = safetensors::SafeTensors::deserialize(st).map_err(|e| CompressError::Invalid(format!("not safetensors: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(st).map_err(|e| CompressError::Invalid(format!("not safetensors: {e}")))?;
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in parsed.tensors() {
        let (dtype, data) = if view.dtype() == safetensors::Dtype::F32 {
            let d: Vec<u8> = view.data().chunks_exact(4).flat_map(|c| bf16_bits(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()).collect();
            (safetensors::Dtype::BF16, d)
        } else {
            (view.dtype(), view.data().to_vec())
        };
        owned.push((name, dtype, view.shape().to_vec(), data));
    }
    crate::quant::write_safetensors(&owned, meta.metadata().clone())
}

/// Deterministic Gaussian "checkpoint" of about `params` parameters as [1024, k] F32 matrices
/// with std 0.02 (the usual init scale), so it has realistic exponents but no training signal.
pub fn synthetic_gaussian(params: usize, seed: u64) -> Vec<u8> {
    let cols = 1024;
    let per = cols * 1024;
    let mut rng = Rng(seed);
    let mut tensors = Vec::new();
    let mut left = params;
    let mut i = 0;
    while left > 0 {
        let rows = (left.min(per)).div_ceil(cols);
        let n = rows * cols;
        let w: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.02) as f32).collect();
        tensors.push((format!("layers.{i}.weight"), rows, f32_bytes(&w)));
        left = left.saturating_sub(n);
        i += 1;
    }
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = tensors.iter().map(|(n, r, b)| (n.as_str(), "F32", vec![*r, cols], b.clone())).collect();
    safetensors(&refs, None)
}

/// 2D F32 tensors of a safetensors file: (name, rows, cols, values).
pub(crate) fn f32_matrices(raw: &[u8]) -> Vec<(String, usize, usize, Vec<f32>)> {
    let Some((_, tensors)) = layout::parse(raw) else { return Vec::new() };
    tensors
        .into_iter()
        .filter(|t| t.dtype == "F32" && t.shape.len() == 2 && t.shape[0].checked_mul(t.shape[1]).and_then(|n| n.checked_mul(4)) == Some((t.end - t.start) as u64))
        .map(|t| {
            let v = raw[t.start..t.end].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (t.name, t.shape[0] as usize, t.shape[1] as usize, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_conversion_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert!(f32::from_bits((bf16_bits(f32::NAN) as u32) << 16).is_nan());
        let st = synthetic_gaussian(5000, 1);
        let bf = to_bf16(&st).unwrap();
        let p = safetensors::SafeTensors::deserialize(&bf).unwrap();
        assert!(p.tensors().iter().all(|(_, v)| v.dtype() == safetensors::Dtype::BF16));
        assert!(bf.len() < st.len() * 51 / 100 + 200);
    }

    #[test]
    fn bench_rows_are_consistent() {
        let st = synthetic_gaussian(70_000, 2);
        let opts = BenchOptions { zstd19_max_bytes: 100_000, lowrank_ranks: vec![4], min_bytes_timed: 0 };
        let rows = bench_with(&[BenchInput { name: "g".into(), bytes: st.clone(), parent: Some(st.clone()) }], &opts).unwrap();
        let fp = rows.iter().find(|r| r.method == "evolve-fp").unwrap();
        let z3 = rows.iter().find(|r| r.method == "zstd-3").unwrap();
        assert!(fp.ratio > z3.ratio);
        // A child identical to its parent is almost free as a delta.
        let d = rows.iter().find(|r| r.method == "delta evolve-fp").unwrap();
        assert!(d.ratio > 100.0, "identical delta ratio {}", d.ratio);
        assert_eq!(format_table(&rows).lines().count(), rows.len() + 2);
    }
}
