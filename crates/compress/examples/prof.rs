// Temporary profiling harness.
fn main() {
    let a = std::env::args().nth(1).unwrap();
    let mode = std::env::args().nth(2).unwrap();
    let raw = std::fs::read(&a).unwrap();
    let o = evolve_compress::Options { threads: 1, ..Default::default() };
    let enc = evolve_compress::encode_with(&raw, None, evolve_compress::Codec::EvolveFp, o).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..100 {
        if mode == "d" { std::hint::black_box(evolve_compress::decode_with(&enc, None, o).unwrap()); }
        else { std::hint::black_box(evolve_compress::encode_with(&raw, None, evolve_compress::Codec::EvolveFp, o).unwrap()); }
    }
    println!("{:.3} GB/s wall", raw.len() as f64 * 100.0 / t.elapsed().as_secs_f64() / 1e9);
}
