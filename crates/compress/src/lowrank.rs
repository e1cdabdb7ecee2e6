//! The low-rank route, kept as a measurement rather than a codec: predict each 2D weight (or its
//! change from the parent) by a rank-r truncated SVD, store the factors as f32 and the exact XOR
//! between the true bit patterns and the f32 prediction's, both through evolve-fp.
//!
//! The SVD is a randomized subspace iteration in f64 with a fixed seed, hand-written because the
//! matrices are small and the route only has to be measured honestly, not shipped. The
//! prediction is recomputed in f32 in a fixed summation order, so decode is bit-reproducible.
//! `measure` decodes everything again and checks the child is rebuilt bit-exactly.

use std::collections::HashMap;
use std::time::Instant;

use crate::bench::f32_matrices;
use crate::synth::{Rng, f32_bytes, safetensors};
use crate::{Codec, CompressError, Options, decode_with, encode_with};

#[derive(Clone, Debug)]
pub struct LowRankMeasure {
    pub stored_bytes: usize,
    /// Decode plus prediction plus XOR, i.e. what a real decoder would pay.
    pub decode_secs: f64,
    pub tensors_2d: usize,
    /// 2D tensors for which the prediction beat plain (delta) coding and was used.
    pub tensors_predicted: usize,
}

/// Orthonormalises the columns of `a` (rows x k, column-major) by modified Gram-Schmidt, twice
/// for stability; a column that collapses is left as zeros (it then predicts nothing).
fn orthonormalize(a: &mut [Vec<f64>]) {
    for _ in 0..2 {
        for j in 0..a.len() {
            for i in 0..j {
                let d: f64 = a[i].iter().zip(&a[j]).map(|(x, y)| x * y).sum();
                let (lo, hi) = a.split_at_mut(j);
                hi[0].iter_mut().zip(&lo[i]).for_each(|(y, x)| *y -= d * x);
            }
            let n = a[j].iter().map(|x| x * x).sum::<f64>().sqrt();
            if n > 1e-300 {
                a[j].iter_mut().for_each(|x| *x /= n);
            } else {
                a[j].iter_mut().for_each(|x| *x = 0.0);
            }
        }
    }
}

/// Rank-`r` factors (U: rows x r, V: r x cols, both row-major f32) of the row-major matrix `t`.
pub(crate) fn low_rank(t: &[f64], rows: usize, cols: usize, r: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed);
    // Q columns (each of length rows) spanning T's dominant column space.
    let times = |cols_in: &[Vec<f64>]| -> Vec<Vec<f64>> {
        cols_in.iter().map(|w| (0..rows).map(|i| t[i * cols..(i + 1) * cols].iter().zip(w).map(|(a, b)| a * b).sum()).collect()).collect()
    };
    let times_t = |cols_in: &[Vec<f64>]| -> Vec<Vec<f64>> {
        cols_in
            .iter()
            .map(|q| {
                let mut z = vec![0.0; cols];
                for i in 0..rows {
                    let qi = q[i];
                    z.iter_mut().zip(&t[i * cols..(i + 1) * cols]).for_each(|(zj, a)| *zj += qi * a);
                }
                z
            })
            .collect()
    };
    let omega: Vec<Vec<f64>> = (0..r).map(|_| (0..cols).map(|_| rng.normal()).collect()).collect();
    let mut q = times(&omega);
    orthonormalize(&mut q);
    for _ in 0..3 {
        let mut z = times_t(&q);
        orthonormalize(&mut z);
        q = times(&z);
        orthonormalize(&mut q);
    }
    let v = times_t(&q); // row k of V = q_k^T T
    let u: Vec<f32> = (0..rows).flat_map(|i| q.iter().map(move |qk| qk[i] as f32)).collect();
    let v: Vec<f32> = v.iter().flat_map(|row| row.iter().map(|&x| x as f32)).collect();
    (u, v)
}

/// base + U V in f32, fixed order: the decoder's prediction, bit for bit.
pub(crate) fn predict(base: Option<&[f32]>, u: &[f32], v: &[f32], rows: usize, cols: usize, r: usize) -> Vec<f32> {
    let mut p = vec![0f32; rows * cols];
    for i in 0..rows {
        let row = &mut p[i * cols..(i + 1) * cols];
        for k in 0..r {
            let uik = u[i * r + k];
            row.iter_mut().zip(&v[k * cols..(k + 1) * cols]).for_each(|(x, vk)| *x += uik * vk);
        }
        if let Some(b) = base {
            row.iter_mut().zip(&b[i * cols..(i + 1) * cols]).for_each(|(x, b)| *x += b);
        }
    }
    p
}

fn xor_bits(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| f32::from_bits(x.to_bits() ^ y.to_bits())).collect()
}

fn coded_len(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> usize {
    encode_with(&safetensors(tensors, None), None, Codec::EvolveFp, Options { threads: 1, ..Options::default() }).map(|e| e.len()).unwrap_or(usize::MAX)
}

/// Stored size of `raw` via the low-rank route (against `parent` if given), verified by a full
/// decode and reconstruction.
pub fn measure(raw: &[u8], parent: Option<&[u8]>, rank: usize) -> Result<LowRankMeasure, CompressError> {
    let child = f32_matrices(raw);
    let parents: HashMap<String, (usize, usize, Vec<f32>)> = parent.map(f32_matrices).unwrap_or_default().into_iter().map(|(n, r, c, v)| (n, (r, c, v))).collect();
    let mut extra: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut replaced: HashMap<String, ()> = HashMap::new();
    let mut chosen: Vec<(String, usize, usize)> = Vec::new();
    for (name, rows, cols, w) in &child {
        if rows.min(cols) <= &(2 * rank) {
            continue;
        }
        let base = parents.get(name).filter(|(r, c, _)| r == rows && c == cols).map(|(_, _, v)| v.as_slice());
        let t: Vec<f64> = match base {
            Some(b) => w.iter().zip(b).map(|(x, y)| *x as f64 - *y as f64).collect(),
            None => w.iter().map(|&x| x as f64).collect(),
        };
        let (u, v) = low_rank(&t, *rows, *cols, rank, 0x5eed);
        let pred = predict(base, &u, &v, *rows, *cols, rank);
        let resid = f32_bytes(&xor_bits(w, &pred));
        let plain = f32_bytes(&match base {
            Some(b) => xor_bits(w, b),
            None => w.clone(),
        });
        let shape = vec![*rows, *cols];
        let with = coded_len(&[("r", "F32", shape.clone(), resid.clone()), ("u", "F32", vec![*rows, rank], f32_bytes(&u)), ("v", "F32", vec![rank, *cols], f32_bytes(&v))]);
        if with < coded_len(&[("r", "F32", shape.clone(), plain)]) {
            extra.push((format!("{name}.lr_residual"), shape, resid));
            extra.push((format!("{name}.lr_u"), vec![*rows, rank], f32_bytes(&u)));
            extra.push((format!("{name}.lr_v"), vec![rank, *cols], f32_bytes(&v)));
            replaced.insert(name.clone(), ());
            chosen.push((name.clone(), *rows, *cols));
        }
    }
    // The transformed file: untouched tensors keep their names (so the delta coder XORs them
    // with the parent), predicted ones are replaced by residual and factors.
    let (_, tensors) = crate::layout::parse(raw).ok_or_else(|| CompressError::Invalid("low-rank route needs safetensors".into()))?;
    let mut all: Vec<(String, String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .filter(|t| !replaced.contains_key(&t.name))
        .map(|t| (t.name.clone(), t.dtype.clone(), t.shape.iter().map(|&d| d as usize).collect(), raw[t.start..t.end].to_vec()))
        .collect();
    all.extend(extra.into_iter().map(|(n, s, b)| (n, "F32".to_string(), s, b)));
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = all.iter().map(|(n, d, s, b)| (n.as_str(), d.as_str(), s.clone(), b.clone())).collect();
    let transformed = safetensors(&refs, None);
    let enc = encode_with(&transformed, parent, Codec::EvolveFp, Options::default())?;

    let t = Instant::now();
    let dec = decode_with(&enc, parent, Options::default())?;
    let got: HashMap<String, (usize, usize, Vec<f32>)> = f32_matrices(&dec).into_iter().map(|(n, r, c, v)| (n, (r, c, v))).collect();
    let mut rebuilt: Vec<(String, Vec<f32>)> = Vec::new();
    for (name, rows, cols) in &chosen {
        let missing = || CompressError::Corrupt(format!("low-rank parts of {name} missing"));
        let resid = &got.get(&format!("{name}.lr_residual")).ok_or_else(missing)?.2;
        let u = &got.get(&format!("{name}.lr_u")).ok_or_else(missing)?.2;
        let v = &got.get(&format!("{name}.lr_v")).ok_or_else(missing)?.2;
        let base = parents.get(name).map(|(_, _, b)| b.as_slice());
        rebuilt.push((name.clone(), xor_bits(resid, &predict(base, u, v, *rows, *cols, rank))));
    }
    let decode_secs = t.elapsed().as_secs_f64();
    for (name, w) in rebuilt {
        let orig = &child.iter().find(|c| c.0 == name).expect("chosen from child").3;
        if orig.iter().zip(&w).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(CompressError::Corrupt(format!("low-rank route did not rebuild {name} exactly")));
        }
    }
    Ok(LowRankMeasure { stored_bytes: enc.len(), decode_secs, tensors_2d: child.len(), tensors_predicted: chosen.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exactly_low_rank_matrix_and_wins_on_it() {
        let (rows, cols, r) = (64, 48, 3);
        let mut rng = Rng(4);
        let a: Vec<f64> = (0..rows * r).map(|_| rng.normal()).collect();
        let b: Vec<f64> = (0..r * cols).map(|_| rng.normal()).collect();
        let t: Vec<f64> = (0..rows * cols).map(|ij| (0..r).map(|k| a[(ij / cols) * r + k] * b[k * cols + ij % cols]).sum()).collect();
        let (u, v) = low_rank(&t, rows, cols, r, 1);
        let p = predict(None, &u, &v, rows, cols, r);
        let err = p.iter().zip(&t).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "max error {err}");
        let w: Vec<f32> = t.iter().map(|&x| x as f32).collect();
        let st = safetensors(&[("w", "F32", vec![rows, cols], f32_bytes(&w))], None);
        let m = measure(&st, None, r).unwrap();
        assert_eq!(m.tensors_predicted, 1);
        assert!(m.stored_bytes < encode_with(&st, None, Codec::EvolveFp, Options::default()).unwrap().len());
    }
}
