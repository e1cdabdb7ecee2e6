//! Randomness that stays put.
//!
//! Frozen suites must come out byte-identical after a toolchain or `rand` upgrade, so the
//! suite RNG, the seed hash and the integer sampling used by every generator live here rather
//! than in `rand` (whose `StdRng` algorithm and `random_range` sampling are explicitly allowed
//! to change between releases). Generators only ever call `next_u64` on the stream they are
//! given, which keeps them deterministic for any `RngCore`.

use rand::RngCore;

/// SplitMix64: tiny, fast and fully specified, which is all a frozen suite needs.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }
}

impl RngCore for SplitMix64 {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// SplitMix64's finaliser; also used to spread FNV output, whose low bits are weak.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bit. `std`'s `DefaultHasher` is not promised to be stable across releases.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The seed of the frozen suite for `(suite_seed, name, level)`.
pub fn derive_seed(suite_seed: u64, name: &str, level: u32) -> u64 {
    let mut bytes = Vec::with_capacity(8 + name.len() + 1 + 4);
    bytes.extend_from_slice(&suite_seed.to_le_bytes());
    bytes.extend_from_slice(name.as_bytes());
    // The separator keeps ("ab", level) and ("a", level') from sharing a byte string.
    bytes.push(0);
    bytes.extend_from_slice(&level.to_le_bytes());
    mix64(fnv1a64(&bytes))
}

/// Uniform in `0..n` (Lemire's multiply; the bias is below 2^-50 for the tiny `n` used here).
pub(crate) fn below(rng: &mut dyn RngCore, n: usize) -> usize {
    assert!(n > 0, "below(0)");
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// Uniform in `lo..=hi`.
pub(crate) fn range(rng: &mut dyn RngCore, lo: usize, hi: usize) -> usize {
    lo + below(rng, hi - lo + 1)
}

pub(crate) fn coin(rng: &mut dyn RngCore) -> bool {
    rng.next_u64() >> 63 == 1
}

pub(crate) fn pick<'a, T>(rng: &mut dyn RngCore, xs: &'a [T]) -> &'a T {
    &xs[below(rng, xs.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_frozen() {
        // Reference values of SplitMix64 seeded with 0; if these move, every suite moves.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn fnv_matches_reference() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn derived_seeds_differ() {
        assert_ne!(derive_seed(1, "addition", 1), derive_seed(1, "addition", 2));
        assert_ne!(derive_seed(1, "addition", 1), derive_seed(2, "addition", 1));
        assert_ne!(derive_seed(1, "addition", 1), derive_seed(1, "reversal", 1));
        assert_eq!(derive_seed(7, "sorting", 3), derive_seed(7, "sorting", 3));
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = SplitMix64::new(9);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let x = below(&mut r, 7);
            seen[x] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn rand_rng_methods_work_on_dyn_rngcore() {
        use rand::Rng;
        let mut r = SplitMix64::new(1);
        let dyn_rng: &mut dyn RngCore = &mut r;
        let x: u32 = dyn_rng.random_range(0..10);
        assert!(x < 10);
    }
}
