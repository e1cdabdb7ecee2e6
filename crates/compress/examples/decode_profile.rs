//! Decode-only workload for profiling (`valgrind --tool=callgrind`) and phase timing:
//! `cargo run --release -p evolve-compress --example decode_profile -- [f32|bf16] PARAMS REPS`
//! Encodes a synthetic Gaussian checkpoint once, then decodes it REPS times on one thread.

use evolve_compress::bench::{synthetic_gaussian, to_bf16};
use evolve_compress::{Codec, Options, decode_with, encode_with};

fn main() {
    let mut args = std::env::args().skip(1);
    if let Ok(evz) = std::env::var("EVZ") {
        // Check an existing container against the raw file it was made from: EVZ=x.evz RAW=x.
        let enc = std::fs::read(&evz).expect("EVZ");
        let raw = std::fs::read(std::env::var("RAW").expect("RAW")).expect("RAW file");
        let d = evolve_compress::decode(&enc).expect("decode");
        println!("{evz}: {} ({}), identical: {}", String::from_utf8_lossy(&enc[..8]), d.len(), d == raw);
        return;
    }
    let dtype = args.next().unwrap_or_else(|| "f32".into());
    let params: usize = args.next().map_or(1 << 20, |s| s.parse().expect("PARAMS"));
    let reps: usize = args.next().map_or(1, |s| s.parse().expect("REPS"));
    let codec = if std::env::var("CODEC").as_deref() == Ok("zstd") { Codec::Zstd } else { Codec::EvolveFp };
    let mut raw = synthetic_gaussian(params, 42);
    if dtype == "bf16" {
        raw = to_bf16(&raw).expect("own safetensors");
    }
    let o = Options { threads: 1, ..Options::default() };
    let enc = encode_with(&raw, None, codec, o).expect("encode");
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let d = decode_with(&enc, None, o).expect("decode");
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(d.len(), raw.len());
    }
    println!("{dtype} {} bytes -> {} ({:.3}); decode best {:.3} GB/s", raw.len(), enc.len(), raw.len() as f64 / enc.len() as f64, raw.len() as f64 / best / 1e9);
}
