//! Order-0 rANS with 32-bit states, 16-bit renormalisation and 8 (`EVOLVEZ2`) or 32 (`EVOLVEZ3`)
//! interleaved states.
//!
//! Why rANS and not zstd: the exponent field of trained weights carries ~2.6 bits per symbol
//! with no useful repetition, which is an order-0 entropy problem; zstd's LZ stage finds nothing
//! and its Huffman stage only sees bytes that straddle exponent and mantissa. Four states give
//! the decoder independent dependency chains, which is what makes it run at memory-ish speed.
//!
//! Stream layout: symbol table (see `write_table`), varint word count, then little-endian u16
//! words. The encoder starts every state at `L`, so a decoder that does not end with every state
//! back at `L` and every word consumed has been fed a corrupt stream.

use crate::CompressError;
use crate::varint::{get_varint, put_varint};

pub const PROB_BITS: u32 = 12;
const M: u32 = 1 << PROB_BITS;
const L: u32 = 1 << 16;

fn corrupt(what: &str) -> CompressError {
    CompressError::Corrupt(format!("rANS stream: {what}"))
}

pub fn histogram(bytes: &[u8]) -> [u32; 256] {
    // Four sub-histograms break the store-to-load dependency on runs of equal bytes.
    let mut h = [[0u32; 256]; 4];
    let mut it = bytes.chunks_exact(4);
    for c in &mut it {
        h[0][c[0] as usize] += 1;
        h[1][c[1] as usize] += 1;
        h[2][c[2] as usize] += 1;
        h[3][c[3] as usize] += 1;
    }
    for &b in it.remainder() {
        h[0][b as usize] += 1;
    }
    let mut out = [0u32; 256];
    for (s, o) in out.iter_mut().enumerate() {
        *o = h[0][s] + h[1][s] + h[2][s] + h[3][s];
    }
    out
}

/// Bytes an order-0 coder needs for this histogram, ignoring the table: used to decide whether
/// entropy coding pays before spending time on it.
pub fn entropy_bytes(hist: &[u32; 256]) -> f64 {
    let n: f64 = hist.iter().map(|&c| c as f64).sum();
    if n == 0.0 {
        return 0.0;
    }
    let bits: f64 = hist.iter().filter(|&&c| c > 0).map(|&c| -(c as f64) * (c as f64 / n).log2()).sum();
    bits / 8.0
}

/// Scales counts to frequencies summing to `M`, every present symbol at least 1. Requires at
/// least two distinct symbols (a single symbol would need frequency `M`, which does not fit the
/// packed decode table; callers store such streams as constants).
fn normalize(hist: &[u32; 256]) -> [u32; 256] {
    let total: u64 = hist.iter().map(|&c| c as u64).sum();
    let mut f = [0u32; 256];
    for s in 0..256 {
        if hist[s] > 0 {
            f[s] = ((hist[s] as u64 * M as u64 + total / 2) / total).max(1) as u32;
        }
    }
    let mut sum: i64 = f.iter().map(|&x| x as i64).sum();
    // Rounding and the max(1) floor leave the sum off by at most a few hundred; correct it on the
    // most frequent symbols, whose relative cost of a unit change is smallest.
    while sum != M as i64 {
        let (best, _) = f.iter().enumerate().filter(|&(_, &x)| sum < M as i64 || x > 1).max_by_key(|&(_, &x)| x).expect("two symbols present");
        if sum > M as i64 {
            let take = ((sum - M as i64) as u32).min(f[best] - 1).max(1);
            f[best] -= take;
            sum -= take as i64;
        } else {
            f[best] += (M as i64 - sum) as u32;
            sum = M as i64;
        }
    }
    f
}

/// `compact` (the v3 streams): sparse entries carry the frequency as a varint, 1 byte for the
/// many rare symbols of an exponent's tails instead of 2.
fn write_table(f: &[u32; 256], out: &mut Vec<u8>, compact: bool) {
    let present: Vec<usize> = (0..256).filter(|&s| f[s] > 0).collect();
    out.push((present.len() - 1) as u8);
    if present.len() > 170 {
        // Dense: one u16 per symbol is smaller than (symbol, freq) triples.
        for &x in f.iter() {
            out.extend_from_slice(&(x as u16).to_le_bytes());
        }
    } else {
        for &s in &present {
            out.push(s as u8);
            if compact {
                put_varint(out, f[s] as u64);
            } else {
                out.extend_from_slice(&(f[s] as u16).to_le_bytes());
            }
        }
    }
}

fn read_table(bytes: &[u8], at: &mut usize, compact: bool) -> Result<[u32; 256], CompressError> {
    let n = *bytes.get(*at).ok_or_else(|| corrupt("truncated table"))? as usize + 1;
    *at += 1;
    let mut f = [0u32; 256];
    let take = |at: &mut usize, k: usize| -> Result<&[u8], CompressError> {
        let s = bytes.get(*at..*at + k).ok_or_else(|| corrupt("truncated table"))?;
        *at += k;
        Ok(s)
    };
    if n > 170 {
        let t = take(at, 512)?;
        for s in 0..256 {
            f[s] = u16::from_le_bytes([t[2 * s], t[2 * s + 1]]) as u32;
        }
        if f.iter().filter(|&&x| x > 0).count() != n {
            return Err(corrupt("symbol count disagrees with table"));
        }
    } else {
        let mut last: i32 = -1;
        for _ in 0..n {
            let s = take(at, 1)?[0] as i32;
            if s <= last {
                return Err(corrupt("symbols out of order"));
            }
            last = s;
            let x = if compact {
                let v = get_varint(bytes, at)?;
                u32::try_from(v).map_err(|_| corrupt("frequency too large"))?
            } else {
                let e = take(at, 2)?;
                u16::from_le_bytes([e[0], e[1]]) as u32
            };
            if x == 0 || x >= M {
                return Err(corrupt("frequency out of range"));
            }
            f[s as usize] = x;
        }
    }
    if f.iter().sum::<u32>() != M || f.iter().any(|&x| x >= M) {
        return Err(corrupt("frequencies do not sum to the scale"));
    }
    Ok(f)
}

/// Interleaved states, each with its own word stream, so the lanes share no dependency chain
/// (a shared stream would serialise every state's renormalisation through one read position).
/// Lanes of the `RANS` stream tag (containers up to `EVOLVEZ2`).
pub const LANES_V2: usize = 8;
/// Lanes of the `RANS16` stream tag (`EVOLVEZ3`): 16 independent states let the decoder keep
/// two 8-lane vectors in flight, where one vector's gather-multiply chain would stall. (32
/// lanes decode faster still, but their extra final states and lengths cost measurable ratio
/// on checkpoints with many small tensors; 16 with the compact table and lengths cost none.)
pub const LANES_V3: usize = 16;
/// Groups of lanes decoded between bounds checks of the word streams.
const BLOCK: usize = 256;

/// Appends the rANS coding of `src` (with its table) to `out`. `hist` must be `histogram(src)`
/// and have at least two distinct symbols.
/// `compact` (v3 streams): varint frequencies in the table and delta-coded lane lengths.
pub fn encode<const LANES: usize>(src: &[u8], hist: &[u32; 256], out: &mut Vec<u8>, compact: bool) {
    let f = normalize(hist);
    let mut cum = [0u32; 256];
    let mut c = 0;
    for s in 0..256 {
        cum[s] = c;
        c += f[s];
    }
    let v3 = compact;
    write_table(&f, out, v3);
    // Division by the frequency via a 128-bit multiply: m = ceil(2^44 / f) gives
    // floor(x / f) = (x * m) >> 44 exactly for every x < 2^32, since m * f - 2^44 < f <= 2^12
    // (Granlund-Montgomery). A hardware divide per symbol would dominate encoding.
    let mut rcp = [0u64; 256];
    for s in 0..256 {
        if f[s] > 0 {
            rcp[s] = (1u64 << 44).div_ceil(f[s] as u64);
        }
    }
    // Each lane emits at most one word per symbol plus its final state; one flat buffer with a
    // slot per lane keeps the hot loop free of capacity checks.
    let n = src.len();
    let cap = n / LANES + 3;
    let mut buf = vec![0u16; cap * LANES];
    let mut cnt = [0usize; LANES];
    let mut x = [L; LANES];
    // Branchless renormalisation (the word is always written, kept only if needed): the
    // condition is unpredictable, and a mispredict per ~6 symbols would dominate.
    macro_rules! put {
        ($k:expr, $sym:expr) => {{
            let s = $sym as usize;
            let fs = f[s];
            // x_max keeps the state below 2^32 after the update.
            let need = x[$k] >= ((L >> PROB_BITS) << 16) * fs;
            buf[$k * cap + cnt[$k]] = x[$k] as u16;
            cnt[$k] += need as usize;
            let st = if need { x[$k] >> 16 } else { x[$k] };
            let q = ((st as u128 * rcp[s] as u128) >> 44) as u32;
            x[$k] = st + q * (M - fs) + cum[s];
        }};
    }
    // Symbols go in reverse; lane of symbol i is i % LANES.
    let full = n - n % LANES;
    for i in (full..n).rev() {
        put!(i - full, src[i]);
    }
    for g in src[..full].chunks_exact(LANES).rev() {
        for k in (0..LANES).rev() {
            put!(k, g[k]);
        }
    }
    let mut prev = 0i64;
    for k in 0..LANES {
        let w = &mut buf[k * cap..k * cap + cnt[k] + 2];
        w[cnt[k]] = (x[k] >> 16) as u16;
        w[cnt[k] + 1] = x[k] as u16;
        w.reverse();
        if v3 && k > 0 {
            // Lanes carry near-equal word counts: the zigzag difference takes 1 byte, not 2.
            let d = w.len() as i64 - prev;
            put_varint(out, ((d << 1) ^ (d >> 63)) as u64);
        } else {
            put_varint(out, w.len() as u64);
        }
        prev = w.len() as i64;
    }
    for k in 0..LANES {
        out.reserve((cnt[k] + 2) * 2);
        for v in &buf[k * cap..k * cap + cnt[k] + 2] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Decodes lanes `half .. half + 4` of every group of `out` (whole groups of `LANES` symbols) with
/// states `x` and word positions `pos`, unless a lane could read past `data`: then it returns
/// false having done nothing, and the caller takes the checked path. Locals rather than arrays
/// so the four states and positions stay in registers; not inlined, so the register allocator
/// sees only this loop (inlined into `decode`, the positions spill to the stack every step).
#[inline(never)]
fn fast_block<const LANES: usize>(tab: &[u32; M as usize], data: &[u8], x: &mut [u32; 4], pos: &mut [usize; 4], out: &mut [u8], half: usize) -> bool {
    let b = out.len() / LANES;
    // A step advances a lane by at most one word, so over `b` groups a lane at byte p reads only
    // words starting in p ..= p + 2 * (b - 1), all inside `data` when p + 2 * b <= data.len().
    if !pos.iter().all(|&p| p.checked_add(2 * b).is_some_and(|e| e <= data.len())) || half + 4 > LANES {
        return false;
    }
    // SAFETY: every offset passed here satisfies p + 2 <= data.len(), by the check above.
    let word = |p: usize| unsafe { u16::from_le_bytes([*data.get_unchecked(p), *data.get_unchecked(p + 1)]) as u32 };
    let [mut x0, mut x1, mut x2, mut x3] = *x;
    let [mut p0, mut p1, mut p2, mut p3] = *pos;
    macro_rules! step {
        ($x:ident, $p:ident) => {{
            let e = tab[($x & (M - 1)) as usize];
            let s = ((e >> 8) & (M - 1)) * ($x >> PROB_BITS) + (e >> 20);
            let need = s < L;
            let w = word($p);
            $x = if need { (s << 16) | w } else { s };
            $p += 2 * need as usize;
            e as u8
        }};
    }
    for g in out.chunks_exact_mut(LANES) {
        let o: &mut [u8; 4] = (&mut g[half..half + 4]).try_into().expect("half + 4 <= LANES, checked above");
        o[0] = step!(x0, p0);
        o[1] = step!(x1, p1);
        o[2] = step!(x2, p2);
        o[3] = step!(x3, p3);
    }
    *x = [x0, x1, x2, x3];
    *pos = [p0, p1, p2, p3];
    true
}

/// Decodes exactly `dst.len()` symbols from `bytes[*at..]`, advancing `at` past the stream.
pub fn decode<const LANES: usize>(bytes: &[u8], at: &mut usize, dst: &mut [u8], compact: bool) -> Result<(), CompressError> {
    let v3 = compact;
    let f = read_table(bytes, at, v3)?;
    // Packed slot table: symbol (8 bits) | freq (12 bits) | slot - cum (12 bits). Fixed size,
    // so indices masked with M - 1 are provably in bounds and the loop has no checks.
    let mut tab: Box<[u32; M as usize]> = Box::new([0u32; M as usize]);
    let mut c = 0usize;
    for (s, &fs) in f.iter().enumerate() {
        for k in 0..fs as usize {
            tab[c + k] = s as u32 | (fs << 8) | ((k as u32) << 20);
        }
        c += fs as usize;
    }
    // Lane k's words are bytes[start[k]..end[k]] (byte offsets into `bytes`).
    let mut end = [0usize; LANES];
    let mut total = 0usize;
    let mut prev = 0usize;
    for (k, e) in end.iter_mut().enumerate() {
        let v = get_varint(bytes, at)?;
        let l = if v3 && k > 0 {
            let d = (v >> 1) as i64 ^ -((v & 1) as i64);
            i64::try_from(prev).ok().and_then(|p| p.checked_add(d)).and_then(|l| usize::try_from(l).ok()).ok_or_else(|| corrupt("lane length out of range"))?
        } else {
            v as usize
        };
        prev = l;
        if l < 2 {
            return Err(corrupt("missing final state"));
        }
        total = l.checked_mul(2).and_then(|b| b.checked_add(total)).ok_or_else(|| corrupt("lane length overflows"))?;
        *e = total;
    }
    let data = bytes.get(*at..).and_then(|b| b.get(..total)).ok_or_else(|| corrupt("truncated data"))?;
    *at += total;
    let word = |p: usize| data.get(p..p + 2).map_or(0, |w| u16::from_le_bytes([w[0], w[1]]) as u32);
    let mut x = [0u32; LANES];
    let mut pos = [0usize; LANES];
    for k in 0..LANES {
        let start = if k == 0 { 0 } else { end[k - 1] };
        x[k] = word(start) | word(start + 2) << 16;
        pos[k] = start + 4;
    }
    // One decode step of a lane with state `$x` and word position `$p`, `$word` reading the
    // u16 at a byte offset. Renormalisation is branchless: whether a state needs a word is
    // data-dependent and unpredictable (~1 in 6 symbols), a branch would mispredict constantly.
    // A corrupt stream may make a lane read into its neighbour's words or past the end (zeros);
    // the final position check catches both, so the hot loop carries no error path.
    macro_rules! step {
        ($x:expr, $p:expr, $word:expr) => {{
            let e = tab[($x & (M - 1)) as usize];
            let s = ((e >> 8) & (M - 1)) * ($x >> PROB_BITS) + (e >> 20);
            let need = s < L;
            let w = $word($p);
            $x = if need { (s << 16) | w } else { s };
            $p += 2 * need as usize;
            e as u8
        }};
    }
    let n_groups = dst.len() / LANES;
    // One pass over the output per four lanes: four states and four word positions fit in
    // registers next to the table, data and output pointers, where eight of each spill to the
    // stack on every step (x86-64 has 16 registers). Four independent chains still hide the
    // table-load and multiply latency.
    const H: usize = 4;
    // Groups already decoded by the vector path (16 or 32 lanes as 8-lane vectors).
    let mut vector_done = 0;
    if LANES == 16 || LANES == 32 {
        while vector_done < n_groups {
            let b = (n_groups - vector_done).min(BLOCK);
            if !simd::block(&tab, data, &mut x, &mut pos, &mut dst[vector_done * LANES..(vector_done + b) * LANES]) {
                break;
            }
            vector_done += b;
        }
    }
    for half in (0..LANES).step_by(H) {
        let mut hx: [u32; H] = x[half..half + H].try_into().expect("half of the lanes");
        let mut hp: [usize; H] = pos[half..half + H].try_into().expect("half of the lanes");
        let mut done = vector_done;
        while done < n_groups {
            let b = (n_groups - done).min(BLOCK);
            done += b;
            // Near or past the end of the words, a block takes the checked path.
            let out = &mut dst[(done - b) * LANES..done * LANES];
            if !fast_block::<LANES>(&tab, data, &mut hx, &mut hp, out, half) {
                for g in out.chunks_exact_mut(LANES) {
                    let o = &mut g[half..half + H];
                    for k in 0..H {
                        o[k] = step!(hx[k], hp[k], word);
                    }
                }
            }
        }
        x[half..half + H].copy_from_slice(&hx);
        pos[half..half + H].copy_from_slice(&hp);
    }
    for (k, o) in dst[n_groups * LANES..].iter_mut().enumerate() {
        *o = step!(x[k], pos[k], word);
    }
    if (0..LANES).any(|k| x[k] != L || pos[k] != end[k]) {
        return Err(corrupt("does not end where it was encoded to end"));
    }
    Ok(())
}

/// AVX2 decoding of 16- or 32-lane streams: lanes 8v..8v+8 are vector v, so two or four
/// independent gather-multiply chains are in flight.
mod simd {
    /// Decodes every whole group of N (16 or 32) symbols of `out` with states `x` and word
    /// positions `pos`; returns false, having done nothing, without AVX2, for another N, or when
    /// a lane could read outside `data` (the caller then takes the scalar path).
    pub fn block<const N: usize>(tab: &[u32; super::M as usize], data: &[u8], x: &mut [u32; N], pos: &mut [usize; N], out: &mut [u8]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if N == 16 || N == 32 {
            let b = out.len() / N;
            // A lane at byte p gathers the u32 at p - 2 (the word sits in its top half) and
            // advances at most 2 bytes per step: over b groups it reads bytes p - 2 ..
            // p + 2 * b, inside `data` when p >= 2 and p + 2 * b <= data.len(). Offsets are i32.
            let ok = data.len() <= i32::MAX as usize && pos.iter().all(|&p| p >= 2 && p.checked_add(2 * b).is_some_and(|e| e <= data.len()));
            if ok && std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present (checked just above); the reads are in bounds by `ok`.
                unsafe { block_avx2(tab, data, x, pos, out) };
                return true;
            }
        }
        let _ = (tab, data, x, pos, out);
        false
    }

    /// # Safety
    /// AVX2 must be available, N 16 or 32, `data.len() <= i32::MAX`, and every `pos[k]` must
    /// satisfy `pos[k] >= 2` and `pos[k] + 2 * (out.len() / N) <= data.len()`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn block_avx2<const N: usize>(tab: &[u32; super::M as usize], data: &[u8], x: &mut [u32; N], pos: &mut [usize; N], out: &mut [u8]) {
        use std::arch::x86_64::*;
        let mask = _mm256_set1_epi32((super::M - 1) as i32);
        let low_byte = _mm256_set1_epi32(0xff);
        let zero = _mm256_setzero_si256();
        let two = _mm256_set1_epi32(2);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let nv = N / 8;
        let mut xv = [zero; 4];
        let mut pv = [zero; 4];
        for v in 0..nv {
            // SAFETY: x has N = 8 * nv elements, so 8v..8v+8 is in bounds; loadu has no alignment need.
            xv[v] = unsafe { _mm256_loadu_si256(x.as_ptr().add(8 * v) as *const __m256i) };
            // pos[k] <= data.len() <= i32::MAX (caller's contract), so the cast is exact; the
            // vector holds p - 2 >= 0, the gather offset.
            let p: [i32; 8] = std::array::from_fn(|k| pos[8 * v + k] as i32 - 2);
            pv[v] = unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) };
        }
        let tab_ptr = tab.as_ptr() as *const i32;
        let data_ptr = data.as_ptr() as *const i32;
        for g in out.chunks_exact_mut(N) {
            let mut e = [zero; 4];
            for v in 0..nv {
                let xs = xv[v];
                // SAFETY: slot = x & (M - 1) < M = tab.len(); scale 4 bytes per entry.
                let ev = unsafe { _mm256_i32gather_epi32::<4>(tab_ptr, _mm256_and_si256(xs, mask)) };
                // SAFETY: pv holds p - 2 with p - 2 >= 0 and p + 2 <= data.len() for every step
                // of this call (caller's contract), so the 4 bytes gathered are inside `data`.
                let wv = _mm256_srli_epi32::<16>(unsafe { _mm256_i32gather_epi32::<1>(data_ptr, pv[v]) });
                let freq = _mm256_and_si256(_mm256_srli_epi32::<8>(ev), mask);
                let s = _mm256_add_epi32(_mm256_mullo_epi32(freq, _mm256_srli_epi32::<{ super::PROB_BITS as i32 }>(xs)), _mm256_srli_epi32::<20>(ev));
                // s < L = 2^16 (unsigned): its top half is zero. need is all-ones where true.
                let need = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(s), zero);
                xv[v] = _mm256_blendv_epi8(s, _mm256_or_si256(_mm256_slli_epi32::<16>(s), wv), need);
                pv[v] = _mm256_add_epi32(pv[v], _mm256_and_si256(need, two));
                e[v] = _mm256_and_si256(ev, low_byte);
            }
            // Symbols are < 256, so the saturating packs are exact; they interleave 128-bit
            // halves, which the permutation undoes (with 16 lanes the upper 16 bytes repeat
            // the lower and are not stored).
            let hi = if N == 32 { _mm256_packus_epi32(e[2], e[3]) } else { _mm256_packus_epi32(e[0], e[1]) };
            let bytes = _mm256_packus_epi16(_mm256_packus_epi32(e[0], e[1]), hi);
            let bytes = _mm256_permutevar8x32_epi32(bytes, order);
            if N == 32 {
                // SAFETY: g is exactly N = 32 bytes; storeu has no alignment need.
                unsafe { _mm256_storeu_si256(g.as_mut_ptr() as *mut __m256i, bytes) };
            } else {
                // SAFETY: g is exactly N = 16 bytes.
                unsafe { _mm_storeu_si128(g.as_mut_ptr() as *mut __m128i, _mm256_castsi256_si128(bytes)) };
            }
        }
        for v in 0..nv {
            let mut xa = [0u32; 8];
            let mut pa = [0i32; 8];
            // SAFETY: 8-element arrays, unaligned stores.
            unsafe {
                _mm256_storeu_si256(xa.as_mut_ptr() as *mut __m256i, xv[v]);
                _mm256_storeu_si256(pa.as_mut_ptr() as *mut __m256i, pv[v]);
            }
            for k in 0..8 {
                x[8 * v + k] = xa[k];
                pos[8 * v + k] = (pa[k] + 2) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_skewed_and_uniform_data() {
        let mut x = 7u64;
        for n in [2usize, 3, 4, 5, 7, 100, 4097, 100_000] {
            for skew in [1u32, 3, 8] {
                let src: Vec<u8> = (0..n)
                    .map(|i| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let v = (x >> 33) as u32;
                        // i % 2 guarantees two distinct symbols even for tiny n.
                        ((v % 256) >> (skew - 1).min(7)) as u8 ^ (i % 2) as u8
                    })
                    .collect();
                let h = histogram(&src);
                if h.iter().filter(|&&c| c > 0).count() < 2 {
                    continue; // single-symbol streams are the caller's CONST case
                }
                let mut enc = Vec::new();
                encode::<LANES_V3>(&src, &h, &mut enc, true);
                let mut dst = vec![0u8; n];
                let mut at = 0;
                decode::<LANES_V3>(&enc, &mut at, &mut dst, true).unwrap();
                assert_eq!(dst, src, "n={n} skew={skew}");
                assert_eq!(at, enc.len());
                for compact in [false, true] {
                    let mut enc8 = Vec::new();
                    encode::<LANES_V2>(&src, &h, &mut enc8, compact);
                    let mut at = 0;
                    decode::<LANES_V2>(&enc8, &mut at, &mut dst, compact).unwrap();
                    assert_eq!(dst, src, "8 lanes n={n} skew={skew}");
                    assert_eq!(at, enc8.len());
                }
                if n == 100_000 {
                    // Within 1% + table of the order-0 entropy: the coder is not leaking bits.
                    assert!((enc.len() as f64) < entropy_bytes(&h) * 1.01 + 600.0, "{} vs {}", enc.len(), entropy_bytes(&h));
                }
            }
        }
    }

    #[test]
    fn corrupt_streams_never_panic() {
        // Long enough that the unchecked block path runs; flips and truncations must give an
        // error or (undetectably at this level, caught by the chunk hash) other bytes.
        let mut r = crate::synth::Rng(11);
        let src: Vec<u8> = (0..50_000).map(|_| (120.0 + (r.normal() * 1.5).abs().floor()) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        let mut enc = Vec::new();
        encode::<LANES_V3>(&src, &histogram(&src), &mut enc, true);
        for at in (0..enc.len()).step_by(37) {
            for bit in [0x01u8, 0x80] {
                let mut bad = enc.clone();
                bad[at] ^= bit;
                let _ = decode::<LANES_V3>(&bad, &mut 0, &mut dst, true);
                let _ = decode::<LANES_V2>(&bad, &mut 0, &mut dst, true);
                let _ = decode::<LANES_V2>(&bad, &mut 0, &mut dst, false);
            }
            let _ = decode::<LANES_V3>(&enc[..at], &mut 0, &mut dst, true);
        }
    }

    #[test]
    fn reciprocal_division_is_exact() {
        let mut r = crate::synth::Rng(5);
        for f in 1..M as u64 {
            let m = (1u64 << 44).div_ceil(f);
            for x in [0u64, 1, f - 1, f, u32::MAX as u64, u32::MAX as u64 - 1].into_iter().chain((0..64).map(|_| r.next_u64() >> 32)) {
                assert_eq!(((x as u128 * m as u128) >> 44) as u64, x / f, "x {x} f {f}");
            }
        }
    }

    #[test]
    fn normalize_handles_many_rare_symbols() {
        let mut h = [1u32; 256];
        h[0] = 10_000_000;
        let f = normalize(&h);
        assert_eq!(f.iter().sum::<u32>(), M);
        assert!(f.iter().all(|&x| x >= 1));
    }
}

#[cfg(test)]
mod speed {
    /// `cargo test --release -p evolve-compress rans_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn rans_speed() {
        let mut r = crate::synth::Rng(1);
        // Exponent-like distribution: ~2.6 bits.
        let src: Vec<u8> = (0..1 << 20).map(|_| (120.0 + (r.normal() * 1.5).abs().floor()) as u8).collect();
        let h = super::histogram(&src);
        let mut enc = Vec::new();
        let t = std::time::Instant::now();
        super::encode::<{ super::LANES_V3 }>(&src, &h, &mut enc, true);
        let te = t.elapsed().as_secs_f64();
        let mut dst = vec![0u8; src.len()];
        let mut best = f64::MAX;
        for _ in 0..50 {
            let t = std::time::Instant::now();
            let mut at = 0;
            super::decode::<{ super::LANES_V3 }>(&enc, &mut at, &mut dst, true).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("bits/sym {:.3} entropy {:.3}; encode {:.2} ns/sym, decode best {:.2} ns/sym", enc.len() as f64 * 8.0 / src.len() as f64, super::entropy_bytes(&h) * 8.0 / src.len() as f64, te * 1e9 / src.len() as f64, best * 1e9 / src.len() as f64);
    }
}
