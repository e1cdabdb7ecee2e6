//! One chunk of the container: a sequence of segments, each a byte range of one kind, optionally
//! XORed with the parent, split into fields and coded stream by stream.
//!
//! Float fields, chosen so that the predictable bits land in their own stream:
//! - F32: exponent byte | sign + top 7 mantissa bits | mantissa bits 15..8 | mantissa bits 7..0
//! - BF16: exponent byte | sign + 7 mantissa bits
//! - F16: high byte (sign, 5 exponent bits, 2 mantissa bits) | low mantissa byte
//!
//! Each stream is stored as the smallest of raw, constant, rANS and (where it can pay) zstd.

use crate::layout::{Kind, Run};
use crate::varint::{get_varint, put_varint};
use crate::{CompressError, rans};

const RAW: u8 = 0;
const CONST: u8 = 1;
const RANS: u8 = 2;
const ZSTD: u8 = 3;
/// rANS with `rans::LANES_V3` lanes, compact table and lane lengths; only in `EVOLVEZ3`
/// containers (`RANS` has 8 lanes).
const RANS16: u8 = 4;
/// rANS with 8 lanes, compact table and lane lengths; only in `EVOLVEZ3` containers, for streams
/// too short for 16 lanes' extra final states to pay.
const RANS8C: u8 = 5;
/// Shortest stream coded with 16 lanes: below it the 8 extra 4-byte final states cost more than
/// 0.1% of the stream.
const MIN_RANS16: usize = 1 << 16;
const XOR_FLAG: u8 = 0x80;
pub const ZSTD_LEVEL: i32 = 3;

fn corrupt(what: impl Into<String>) -> CompressError {
    CompressError::Corrupt(what.into())
}

#[derive(Clone, Copy)]
pub struct Plan {
    /// Plain-zstd codec: every segment is one zstd stream, no field split, no entropy coder.
    pub zstd_only: bool,
    /// Container version 3 or later: rANS streams have 16 lanes (`RANS16`). Version 2 writes
    /// and accepts only 8-lane `RANS`.
    pub v3: bool,
}

fn put_stream(out: &mut Vec<u8>, src: &[u8], try_zstd: bool, plan: Plan) {
    if plan.zstd_only {
        out.push(ZSTD);
        let z = zstd::bulk::compress(src, ZSTD_LEVEL).expect("in-memory zstd cannot fail");
        put_varint(out, z.len() as u64);
        out.extend_from_slice(&z);
        return;
    }
    let n = src.len();
    // Mantissa fields are near-uniform; a 1/16 sample shows that at a sixteenth of the cost of
    // a full histogram (the sample's bias, ~0.2% low on 256 symbols, errs towards trying rANS).
    if !try_zstd && n >= 1 << 16 {
        let sample: Vec<u8> = src.iter().step_by(16).copied().collect();
        if rans::entropy_bytes(&rans::histogram(&sample)) * 16.0 > 0.985 * n as f64 {
            out.push(RAW);
            out.extend_from_slice(src);
            return;
        }
    }
    let hist = rans::histogram(src);
    let distinct = hist.iter().filter(|&&c| c > 0).count();
    if distinct <= 1 {
        out.push(CONST);
        out.push(src.first().copied().unwrap_or(0));
        return;
    }
    let est = rans::entropy_bytes(&hist);
    let mut best: Option<Vec<u8>> = None;
    // Table and final states cost ~20..600 bytes; below a 3% saving rANS is not worth decoding.
    if est < 0.97 * n as f64 - 64.0 {
        let mut r;
        if plan.v3 && n >= MIN_RANS16 {
            r = vec![RANS16];
            rans::encode::<{ rans::LANES_V3 }>(src, &hist, &mut r, true);
        } else if plan.v3 {
            r = vec![RANS8C];
            rans::encode::<{ rans::LANES_V2 }>(src, &hist, &mut r, true);
        } else {
            r = vec![RANS];
            rans::encode::<{ rans::LANES_V2 }>(src, &hist, &mut r, false);
        }
        best = Some(r);
    }
    // zstd only pays where there are repeats an order-0 model cannot see: opaque bytes (JSON,
    // integer tensors) and the mostly-zero fields of a delta.
    if try_zstd || est < n as f64 / 8.0 {
        let z = zstd::bulk::compress(src, ZSTD_LEVEL).expect("in-memory zstd cannot fail");
        if best.as_ref().is_none_or(|b| z.len() + 6 < b.len()) && z.len() + 6 < n {
            let mut v = vec![ZSTD];
            put_varint(&mut v, z.len() as u64);
            v.extend_from_slice(&z);
            best = Some(v);
        }
    }
    match best {
        Some(b) if b.len() < n + 1 => out.extend_from_slice(&b),
        _ => {
            out.push(RAW);
            out.extend_from_slice(src);
        }
    }
}

/// Decodes a stream of `n` symbols: a raw stream is returned in place (no copy), anything else
/// is decoded into `scratch`.
fn stream_ref<'a>(bytes: &'a [u8], at: &mut usize, n: usize, scratch: &'a mut Vec<u8>, v3: bool) -> Result<&'a [u8], CompressError> {
    if bytes.get(*at) == Some(&RAW) {
        let s = bytes.get(*at + 1..).and_then(|b| b.get(..n)).ok_or(CompressError::Truncated("raw stream"))?;
        *at += 1 + n;
        return Ok(s);
    }
    scratch.resize(n, 0);
    get_stream(bytes, at, scratch, v3)?;
    Ok(scratch)
}

fn get_stream(bytes: &[u8], at: &mut usize, dst: &mut [u8], v3: bool) -> Result<(), CompressError> {
    let tag = *bytes.get(*at).ok_or(CompressError::Truncated("stream tag"))?;
    *at += 1;
    match tag {
        RAW => {
            let s = bytes.get(*at..).and_then(|b| b.get(..dst.len())).ok_or(CompressError::Truncated("raw stream"))?;
            dst.copy_from_slice(s);
            *at += dst.len();
        }
        CONST => {
            let b = *bytes.get(*at).ok_or(CompressError::Truncated("constant stream"))?;
            *at += 1;
            dst.fill(b);
        }
        RANS if !v3 => rans::decode::<{ rans::LANES_V2 }>(bytes, at, dst, false)?,
        RANS8C if v3 => rans::decode::<{ rans::LANES_V2 }>(bytes, at, dst, true)?,
        RANS16 if v3 => rans::decode::<{ rans::LANES_V3 }>(bytes, at, dst, true)?,
        ZSTD => {
            let n = get_varint(bytes, at)? as usize;
            let s = bytes.get(*at..).and_then(|b| b.get(..n)).ok_or(CompressError::Truncated("zstd stream"))?;
            *at += n;
            let got = zstd::bulk::decompress_to_buffer(s, dst).map_err(|e| corrupt(format!("zstd stream: {e}")))?;
            if got != dst.len() {
                return Err(corrupt(format!("zstd stream decoded to {got} bytes, expected {}", dst.len())));
            }
        }
        t => return Err(corrupt(format!("unknown stream tag {t}"))),
    }
    Ok(())
}

fn split_f32(src: &[u8]) -> [Vec<u8>; 4] {
    let n = src.len() / 4;
    let mut f: [Vec<u8>; 4] = std::array::from_fn(|_| vec![0u8; n]);
    let [e, s2, s1, s0] = &mut f;
    // Zipped iterators over preallocated fields: no capacity or bounds checks in the loop.
    for ((((w, e), s2), s1), s0) in src.chunks_exact(4).zip(e.iter_mut()).zip(s2.iter_mut()).zip(s1.iter_mut()).zip(s0.iter_mut()) {
        let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        *e = (v >> 23) as u8;
        *s2 = ((v >> 24) & 0x80) as u8 | ((v >> 16) & 0x7f) as u8;
        *s1 = (v >> 8) as u8;
        *s0 = v as u8;
    }
    f
}

fn merge_f32(f: [&[u8]; 4], dst: &mut [u8]) {
    // The vector path does whole blocks of 32 elements; the loop below finishes the rest.
    let done = simd::merge_f32(f, dst);
    let dst = &mut dst[4 * done..];
    let [e, s2, s1, s0] = f.map(|p| p.get(done..).unwrap_or(&[]));
    // Zipped iterators: no bounds checks in the loop, so it vectorises.
    for ((((w, &e), &s2), &s1), &s0) in dst.chunks_exact_mut(4).zip(e).zip(s2).zip(s1).zip(s0) {
        let v = (e as u32) << 23 | ((s2 & 0x80) as u32) << 24 | ((s2 & 0x7f) as u32) << 16 | (s1 as u32) << 8 | s0 as u32;
        w.copy_from_slice(&v.to_le_bytes());
    }
}

fn split_bf16(src: &[u8]) -> [Vec<u8>; 2] {
    let n = src.len() / 2;
    let mut f: [Vec<u8>; 2] = std::array::from_fn(|_| vec![0u8; n]);
    let [e, s] = &mut f;
    for ((w, e), s) in src.chunks_exact(2).zip(e.iter_mut()).zip(s.iter_mut()) {
        let v = u16::from_le_bytes([w[0], w[1]]);
        *e = (v >> 7) as u8;
        *s = ((v >> 8) & 0x80) as u8 | (v & 0x7f) as u8;
    }
    f
}

fn merge_bf16(f: [&[u8]; 2], dst: &mut [u8]) {
    let done = simd::merge_bf16(f, dst);
    let dst = &mut dst[2 * done..];
    let [e, s] = f.map(|p| p.get(done..).unwrap_or(&[]));
    for ((w, &e), &s) in dst.chunks_exact_mut(2).zip(e).zip(s) {
        let v = (e as u16) << 7 | ((s & 0x80) as u16) << 8 | (s & 0x7f) as u16;
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// AVX2 re-interleaving of float fields, 32 elements at a time: widening bytes to u32 lanes
/// one element at a time (all SSE2 offers) costs ~6 instructions per element.
mod simd {
    /// Merges the leading whole blocks of 32 elements; returns how many elements it wrote (0
    /// without AVX2).
    pub fn merge_f32(f: [&[u8]; 4], dst: &mut [u8]) -> usize {
        let n = (dst.len() / 4).min(f.iter().map(|p| p.len()).min().unwrap_or(0)) / 32 * 32;
        #[cfg(target_arch = "x86_64")]
        if n > 0 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present; every plane has >= n bytes and dst >= 4n (n's definition).
            unsafe { merge_f32_avx2(f, dst, n) };
            return n;
        }
        let _ = (f, dst, n);
        0
    }

    pub fn merge_bf16(f: [&[u8]; 2], dst: &mut [u8]) -> usize {
        let n = (dst.len() / 2).min(f[0].len()).min(f[1].len()) / 32 * 32;
        #[cfg(target_arch = "x86_64")]
        if n > 0 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present; both planes have >= n bytes and dst >= 2n.
            unsafe { merge_bf16_avx2(f, dst, n) };
            return n;
        }
        let _ = (f, dst, n);
        0
    }

    /// Bytes 2 and 3 of an F32 (or 0 and 1 of a BF16) from the exponent and the sign+top
    /// mantissa field: (s & 0x7f) | (e & 1) << 7 and (s & 0x80) | e >> 1. The 16-bit shifts
    /// leak bits across byte boundaries only into positions the masks clear.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn high_bytes(e: std::arch::x86_64::__m256i, s: std::arch::x86_64::__m256i) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        let m80 = _mm256_set1_epi8(0x80u8 as i8);
        let m7f = _mm256_set1_epi8(0x7f);
        let lo = _mm256_or_si256(_mm256_and_si256(s, m7f), _mm256_and_si256(_mm256_slli_epi16::<7>(e), m80));
        let hi = _mm256_or_si256(_mm256_and_si256(s, m80), _mm256_and_si256(_mm256_srli_epi16::<1>(e), m7f));
        (lo, hi)
    }

    /// # Safety
    /// AVX2 must be available, `n` a multiple of 32, every plane at least `n` bytes long and
    /// `dst` at least `4 * n`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn merge_f32_avx2(f: [&[u8]; 4], dst: &mut [u8], n: usize) {
        use std::arch::x86_64::*;
        let [e, s2, s1, s0] = f;
        for i in (0..n).step_by(32) {
            // SAFETY: i + 32 <= n <= each plane's length (contract); loadu is unaligned.
            let ld = |p: &[u8]| unsafe { _mm256_loadu_si256(p.as_ptr().add(i) as *const __m256i) };
            let (b0, b1) = (ld(s0), ld(s1));
            let (b2, b3) = high_bytes(ld(e), ld(s2));
            // Unpacks work within 128-bit halves: w0..w3 hold elements {0-3,16-19}, {4-7,20-23},
            // {8-11,24-27}, {12-15,28-31}; the cross-half permutes put them in order.
            let (l01, h01) = (_mm256_unpacklo_epi8(b0, b1), _mm256_unpackhi_epi8(b0, b1));
            let (l23, h23) = (_mm256_unpacklo_epi8(b2, b3), _mm256_unpackhi_epi8(b2, b3));
            let (w0, w1) = (_mm256_unpacklo_epi16(l01, l23), _mm256_unpackhi_epi16(l01, l23));
            let (w2, w3) = (_mm256_unpacklo_epi16(h01, h23), _mm256_unpackhi_epi16(h01, h23));
            let out = [_mm256_permute2x128_si256::<0x20>(w0, w1), _mm256_permute2x128_si256::<0x20>(w2, w3), _mm256_permute2x128_si256::<0x31>(w0, w1), _mm256_permute2x128_si256::<0x31>(w2, w3)];
            for (k, v) in out.into_iter().enumerate() {
                // SAFETY: 4 * i + 32 * k + 32 <= 4 * n <= dst.len() (contract).
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(4 * i + 32 * k) as *mut __m256i, v) };
            }
        }
    }

    /// # Safety
    /// AVX2 must be available, `n` a multiple of 32, both planes at least `n` bytes long and
    /// `dst` at least `2 * n`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn merge_bf16_avx2(f: [&[u8]; 2], dst: &mut [u8], n: usize) {
        use std::arch::x86_64::*;
        let [e, s] = f;
        for i in (0..n).step_by(32) {
            // SAFETY: i + 32 <= n <= each plane's length (contract).
            let ld = |p: &[u8]| unsafe { _mm256_loadu_si256(p.as_ptr().add(i) as *const __m256i) };
            let (lo, hi) = high_bytes(ld(e), ld(s));
            let (a, b) = (_mm256_unpacklo_epi8(lo, hi), _mm256_unpackhi_epi8(lo, hi));
            let out = [_mm256_permute2x128_si256::<0x20>(a, b), _mm256_permute2x128_si256::<0x31>(a, b)];
            for (k, v) in out.into_iter().enumerate() {
                // SAFETY: 2 * i + 32 * k + 32 <= 2 * n <= dst.len() (contract).
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(2 * i + 32 * k) as *mut __m256i, v) };
            }
        }
    }
}

fn split_planes(src: &[u8]) -> [Vec<u8>; 2] {
    [src.iter().step_by(2).copied().collect(), src.iter().skip(1).step_by(2).copied().collect()]
}

fn merge_planes(f: [&[u8]; 2], dst: &mut [u8]) {
    for ((w, &lo), &hi) in dst.chunks_exact_mut(2).zip(f[0]).zip(f[1]) {
        w[0] = lo;
        w[1] = hi;
    }
}

fn n_streams(kind: Kind) -> usize {
    match kind {
        Kind::Other => 1,
        Kind::F32 => 4,
        Kind::Bf16 | Kind::F16 => 2,
    }
}

/// Segments of one chunk `[c0, c1)`: runs cut to the chunk, with float runs cut further so that
/// every float segment holds whole elements (a straddling element is coded as opaque bytes).
fn segments(runs: &[Run], c0: usize, c1: usize) -> Vec<Run> {
    let mut segs: Vec<Run> = Vec::new();
    let mut push = |s: Run| {
        if s.end > s.start {
            // Merge opaque neighbours so zstd sees them together.
            if let Some(last) = segs.last_mut()
                && last.kind == Kind::Other
                && s.kind == Kind::Other
                && last.parent.is_none()
                && s.parent.is_none()
                && last.end == s.start
            {
                last.end = s.end;
                return;
            }
            segs.push(s);
        }
    };
    let first = runs.partition_point(|r| r.end <= c0);
    for r in &runs[first..] {
        if r.start >= c1 {
            break;
        }
        let (a, b) = (r.start.max(c0), r.end.min(c1));
        let shifted = |x: usize| r.parent.map(|p| p + (x - r.start));
        let es = r.kind.elem();
        let fa = a + (es - (a - r.start) % es) % es;
        let fb = b - (b - r.start) % es;
        if r.kind == Kind::Other || fa >= fb {
            push(Run { start: a, end: b, kind: Kind::Other, parent: shifted(a) });
        } else {
            push(Run { start: a, end: fa, kind: Kind::Other, parent: shifted(a) });
            push(Run { start: fa, end: fb, kind: r.kind, parent: shifted(fa) });
            push(Run { start: fb, end: b, kind: Kind::Other, parent: shifted(fb) });
        }
    }
    segs
}

/// Codes `raw[c0..c1]`.
pub fn encode_chunk(raw: &[u8], parent: Option<&[u8]>, runs: &[Run], c0: usize, c1: usize, plan: Plan) -> Vec<u8> {
    let segs = segments(runs, c0, c1);
    let mut out = Vec::with_capacity((c1 - c0) / 2);
    put_varint(&mut out, segs.len() as u64);
    let mut xored = Vec::new();
    for s in &segs {
        let mut src = &raw[s.start..s.end];
        let xor_src = s.parent.and_then(|p| parent.map(|pb| &pb[p..p + (s.end - s.start)]));
        out.push(s.kind.id() | if xor_src.is_some() { XOR_FLAG } else { 0 });
        put_varint(&mut out, (s.end - s.start) as u64);
        if let Some(pb) = xor_src {
            put_varint(&mut out, s.parent.expect("xor implies parent") as u64);
            xored.clear();
            xored.extend(src.iter().zip(pb).map(|(a, b)| a ^ b));
            src = &xored;
        }
        let opaque = s.kind == Kind::Other;
        match s.kind {
            _ if plan.zstd_only || opaque => put_stream(&mut out, src, true, plan),
            Kind::F32 => split_f32(src).iter().for_each(|f| put_stream(&mut out, f, false, plan)),
            Kind::Bf16 => split_bf16(src).iter().for_each(|f| put_stream(&mut out, f, false, plan)),
            Kind::F16 | Kind::Other => split_planes(src).iter().for_each(|f| put_stream(&mut out, f, false, plan)),
        }
    }
    out
}

/// Decodes one chunk into `dst` (whose length the container fixes) and checks the chunk is
/// consumed exactly.
pub fn decode_chunk(bytes: &[u8], parent: Option<&[u8]>, dst: &mut [u8], plan: Plan) -> Result<(), CompressError> {
    let mut at = 0;
    let n_segs = get_varint(bytes, &mut at)?;
    if n_segs > dst.len() as u64 + 1 {
        return Err(corrupt(format!("{n_segs} segments in a chunk of {} bytes", dst.len())));
    }
    let mut pos = 0usize;
    let mut scratch: [Vec<u8>; 4] = Default::default();
    for _ in 0..n_segs {
        let tag = *bytes.get(at).ok_or(CompressError::Truncated("segment kind"))?;
        at += 1;
        let kind = Kind::from_id(tag & !XOR_FLAG).ok_or_else(|| corrupt(format!("unknown segment kind {tag}")))?;
        let len = get_varint(bytes, &mut at)? as usize;
        let end = pos.checked_add(len).filter(|&e| e <= dst.len()).ok_or_else(|| corrupt("segment runs past its chunk"))?;
        if !len.is_multiple_of(kind.elem()) {
            return Err(corrupt("float segment of partial elements"));
        }
        let xor = if tag & XOR_FLAG != 0 {
            let p = get_varint(bytes, &mut at)? as usize;
            let pb = parent.ok_or_else(|| corrupt("delta segment without a parent"))?;
            Some(pb.get(p..).and_then(|s| s.get(..len)).ok_or_else(|| corrupt("delta segment outside the parent"))?)
        } else {
            None
        };
        let out = &mut dst[pos..end];
        let k = n_streams(kind);
        // A zstd-only container codes float segments as one stream too.
        if kind == Kind::Other || plan.zstd_only {
            get_stream(bytes, &mut at, out, plan.v3)?;
        } else {
            let m = len / k;
            let [s0, s1, s2, s3] = &mut scratch;
            match kind {
                Kind::F32 => {
                    let f = [stream_ref(bytes, &mut at, m, s0, plan.v3)?, stream_ref(bytes, &mut at, m, s1, plan.v3)?, stream_ref(bytes, &mut at, m, s2, plan.v3)?, stream_ref(bytes, &mut at, m, s3, plan.v3)?];
                    merge_f32(f, out)
                }
                Kind::Bf16 => merge_bf16([stream_ref(bytes, &mut at, m, s0, plan.v3)?, stream_ref(bytes, &mut at, m, s1, plan.v3)?], out),
                _ => merge_planes([stream_ref(bytes, &mut at, m, s0, plan.v3)?, stream_ref(bytes, &mut at, m, s1, plan.v3)?], out),
            }
        }
        if let Some(pb) = xor {
            out.iter_mut().zip(pb).for_each(|(o, p)| *o ^= p);
        }
        pos = end;
    }
    if pos != dst.len() {
        return Err(corrupt(format!("chunk decoded to {pos} bytes, expected {}", dst.len())));
    }
    if at != bytes.len() {
        return Err(corrupt("trailing bytes after the last segment of a chunk"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn merges_invert_splits_at_every_length() {
        let mut r = crate::synth::Rng(3);
        for n in [0usize, 1, 31, 32, 33, 64, 100, 1000] {
            let raw: Vec<u8> = (0..4 * n).map(|_| r.next_u64() as u8).collect();
            let f = super::split_f32(&raw);
            let mut out = vec![0u8; 4 * n];
            super::merge_f32([&f[0], &f[1], &f[2], &f[3]], &mut out);
            assert_eq!(out, raw, "f32 n={n}");
            let f = super::split_bf16(&raw[..2 * n]);
            let mut out = vec![0u8; 2 * n];
            super::merge_bf16([&f[0], &f[1]], &mut out);
            assert_eq!(out, &raw[..2 * n], "bf16 n={n}");
        }
    }
}

#[cfg(test)]
mod speed {
    /// `EVOLVE_ST=file cargo test --release -p evolve-compress exponent_coders -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn exponent_coders() {
        let Ok(path) = std::env::var("EVOLVE_ST") else { return };
        let raw = std::fs::read(path).unwrap();
        let (he, _) = crate::layout::parse(&raw).unwrap();
        let body = &raw[he..];
        let body = &body[..body.len() / 4 * 4];
        let f = super::split_f32(body);
        for (name, s) in [("exp", &f[0]), ("sign+m7", &f[1])] {
            let h = crate::rans::histogram(s);
            let mut r = Vec::new();
            crate::rans::encode::<{ crate::rans::LANES_V3 }>(s, &h, &mut r, true);
            let mut dst = vec![0u8; s.len()];
            let time = |f: &mut dyn FnMut()| {
                let mut best = f64::MAX;
                for _ in 0..30 {
                    let t = std::time::Instant::now();
                    f();
                    best = best.min(t.elapsed().as_secs_f64());
                }
                best * 1e9 / s.len() as f64
            };
            let tr = time(&mut || {
                let mut at = 0;
                crate::rans::decode::<{ crate::rans::LANES_V3 }>(&r, &mut at, &mut dst, true).unwrap();
            });
            println!("{name}: n={} entropy {:.0} B; rans {} B {:.2} ns/sym", s.len(), crate::rans::entropy_bytes(&h), r.len(), tr);
            for level in [1, 3, 19] {
                let z = zstd::bulk::compress(s, level).unwrap();
                let tz = time(&mut || {
                    zstd::bulk::decompress_to_buffer(&z, &mut dst).unwrap();
                });
                println!("  zstd-{level} {} B {:.2} ns/sym", z.len(), tz);
            }
        }
    }
}
