//! Post-training weight quantization (lossy, unlike everything else in this crate): pure math on
//! row-major f32 `[out, in]` weights, and a safetensors container for quantized checkpoints.
//!
//! - int8: symmetric, one scale per output row (`scale = max|w| / 127`); error <= scale / 2.
//! - int4: groups of 32 or 64 consecutive input channels per row, asymmetric: `w ~ min + q *
//!   scale` with `q in 0..=15` and `scale = (max - min) / 15`. Asymmetric because small groups
//!   are rarely centred on zero, and it uses all 16 levels over the actual range, so the step is
//!   at most that of symmetric int4 (`max|w| / 7`) and usually well below; the offset is stored
//!   as an f32 (not an integer zero point) so the bound |w - w_hat| <= scale / 2 holds exactly.
//! - AWQ (int4): per-input-channel scales `s_j = mean|x_j|^alpha` (normalised), chosen over
//!   alpha in {0, 0.1, ..., 1} to minimise sum_j E[x_j^2] sum_i (W_ij - W_hat_ij)^2, the diagonal
//!   proxy of the output error. alpha = 0 is plain round-to-nearest, so AWQ is never worse than
//!   RTN on that objective.
//!
//! Quantized checkpoint: for each quantized weight `<name>.qweight` (I8 `[rows, cols]`, or U8
//! `[rows, cols / 2]` with column 2k in the low nibble), `<name>.scales` (F32), `<name>.zeros`
//! (F32 group minimums, int4 only), `<name>.awq_scale` (F32 `[cols]`, when AWQ ran); every
//! other tensor unchanged; metadata `format` = `evolve-int8` | `evolve-int4-g32` |
//! `evolve-int4-g64`. `dequantize_checkpoint` gives back an F32 file with the original names and
//! shapes (integer tensors unchanged), loadable by the unmodified model code.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::CompressError;

fn invalid(m: impl Into<String>) -> CompressError {
    CompressError::Invalid(m.into())
}

/// Calibration statistics of one linear layer's input, per input channel.
#[derive(Clone, Debug, Default)]
pub struct ChannelStats {
    /// E[x_j^2] over calibration tokens: weights the proxy error.
    pub mean_sq: Vec<f32>,
    /// E[|x_j|]: the base of the AWQ scales.
    pub mean_abs: Vec<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantScheme {
    Int8,
    /// `group` is 32 or 64. AWQ is applied to every tensor that has calibration statistics.
    Int4 { group: usize },
}

impl QuantScheme {
    pub fn format(&self) -> String {
        match self {
            QuantScheme::Int8 => "evolve-int8".into(),
            QuantScheme::Int4 { group } => format!("evolve-int4-g{group}"),
        }
    }

    pub fn from_format(f: &str) -> Option<QuantScheme> {
        match f {
            "evolve-int8" => Some(QuantScheme::Int8),
            "evolve-int4-g32" => Some(QuantScheme::Int4 { group: 32 }),
            "evolve-int4-g64" => Some(QuantScheme::Int4 { group: 64 }),
            _ => None,
        }
    }
}

fn check_matrix(w: &[f32], rows: usize, cols: usize) -> Result<(), CompressError> {
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(w.len()) {
        return Err(invalid(format!("weight of {} values is not [{rows}, {cols}]", w.len())));
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(invalid(format!("weight [{}, {}] is not finite ({})", i / cols, i % cols, w[i])));
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Int8Weight {
    pub rows: usize,
    pub cols: usize,
    pub q: Vec<i8>,
    /// One per row.
    pub scales: Vec<f32>,
}

pub fn quantize_int8_per_channel(w: &[f32], rows: usize, cols: usize) -> Result<Int8Weight, CompressError> {
    check_matrix(w, rows, cols)?;
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    for row in w.chunks_exact(cols) {
        let m = row.iter().fold(0f32, |a, x| a.max(x.abs()));
        let scale = m / 127.0;
        // An all-zero row has scale 0 and quantizes exactly to 0.
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        q.extend(row.iter().map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    Ok(Int8Weight { rows, cols, q, scales })
}

impl Int8Weight {
    /// Errors (rather than panicking) if the fields, which are public, disagree in size.
    pub fn dequantize(&self) -> Result<Vec<f32>, CompressError> {
        if self.cols == 0 || self.q.len() != self.rows * self.cols || self.scales.len() != self.rows {
            return Err(invalid(format!("int8 weight [{}, {}] with {} values and {} scales", self.rows, self.cols, self.q.len(), self.scales.len())));
        }
        Ok(self.q.chunks_exact(self.cols).zip(&self.scales).flat_map(|(r, &s)| r.iter().map(move |&q| q as f32 * s)).collect())
    }
}

#[derive(Clone, Debug)]
pub struct Int4Weight {
    pub rows: usize,
    pub cols: usize,
    pub group: usize,
    /// rows x ceil(cols / 2); column 2k in the low nibble, 2k + 1 in the high nibble.
    pub packed: Vec<u8>,
    /// rows x n_groups step sizes.
    pub scales: Vec<f32>,
    /// rows x n_groups group minimums (the value of q = 0).
    pub zeros: Vec<f32>,
    /// Per-input-channel AWQ scale the weight was multiplied by before quantization.
    pub act_scale: Option<Vec<f32>>,
}

impl Int4Weight {
    pub fn n_groups(&self) -> usize {
        self.cols.div_ceil(self.group.max(1))
    }

    /// Errors (rather than panicking) if the fields, which are public, disagree in size.
    pub fn dequantize(&self) -> Result<Vec<f32>, CompressError> {
        if self.group == 0 {
            return Err(invalid("int4 group of 0"));
        }
        let (g, ng, half) = (self.group, self.n_groups(), self.cols.div_ceil(2));
        if self.packed.len() != self.rows * half || self.scales.len() != self.rows * ng || self.zeros.len() != self.rows * ng || self.act_scale.as_ref().is_some_and(|s| s.len() != self.cols) {
            return Err(invalid(format!("int4 weight [{}, {}] g{} with inconsistent packed / scales / zeros / act_scale sizes", self.rows, self.cols, self.group)));
        }
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                let b = self.packed[r * half + c / 2];
                let q = if c % 2 == 0 { b & 0xf } else { b >> 4 };
                let k = r * ng + c / g;
                let v = self.zeros[k] + q as f32 * self.scales[k];
                out.push(match &self.act_scale {
                    Some(s) => v / s[c],
                    None => v,
                });
            }
        }
        Ok(out)
    }
}

/// Round-to-nearest int4 with per-group scale and offset; with `act_scale`, quantizes
/// `W diag(act_scale)` and records the scale so `dequantize` divides it back out.
pub fn quantize_int4_grouped(w: &[f32], rows: usize, cols: usize, group: usize, act_scale: Option<&[f32]>) -> Result<Int4Weight, CompressError> {
    check_matrix(w, rows, cols)?;
    if group != 32 && group != 64 {
        return Err(invalid(format!("int4 group must be 32 or 64, not {group}")));
    }
    if let Some(s) = act_scale
        && (s.len() != cols || s.iter().any(|x| !x.is_finite() || *x <= 0.0))
    {
        return Err(invalid(format!("act_scale needs {cols} positive finite values")));
    }
    let ng = cols.div_ceil(group);
    let half = cols.div_ceil(2);
    let mut packed = vec![0u8; rows * half];
    let mut scales = Vec::with_capacity(rows * ng);
    let mut zeros = Vec::with_capacity(rows * ng);
    let mut row_buf = vec![0f32; cols];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        match act_scale {
            Some(s) => row_buf.iter_mut().zip(row).zip(s).for_each(|((o, x), s)| *o = x * s),
            None => row_buf.copy_from_slice(row),
        }
        for (gi, grp) in row_buf.chunks(group).enumerate() {
            let (lo, hi) = grp.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
            let scale = (hi - lo) / 15.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (k, &x) in grp.iter().enumerate() {
                let q = ((x - lo) * inv).round().clamp(0.0, 15.0) as u8;
                let c = gi * group + k;
                packed[r * half + c / 2] |= if c.is_multiple_of(2) { q } else { q << 4 };
            }
            scales.push(scale);
            zeros.push(lo);
        }
    }
    Ok(Int4Weight { rows, cols, group, packed, scales, zeros, act_scale: act_scale.map(<[f32]>::to_vec) })
}

/// sum_j mean_sq_j sum_i (W_ij - W_hat_ij)^2: the output error a diagonal input covariance
/// predicts.
pub fn proxy_error(w: &[f32], w_hat: &[f32], cols: usize, mean_sq: &[f32]) -> Result<f64, CompressError> {
    if cols == 0 || mean_sq.len() != cols || w.len() != w_hat.len() || !w.len().is_multiple_of(cols) {
        return Err(invalid(format!("proxy error of {} vs {} values over {cols} columns with {} statistics", w.len(), w_hat.len(), mean_sq.len())));
    }
    Ok(w.iter().zip(w_hat).enumerate().map(|(i, (a, b))| mean_sq[i % cols] as f64 * ((a - b) as f64).powi(2)).sum())
}

#[derive(Clone, Debug)]
pub struct AwqChoice {
    pub alpha: f32,
    pub weight: Int4Weight,
    pub proxy_error: f64,
    /// The same objective for plain round-to-nearest (alpha = 0).
    pub rtn_proxy_error: f64,
}

/// AWQ scale search for int4: tries alpha in {0, 0.1, ..., 1} and keeps the best on the proxy.
pub fn awq_search(w: &[f32], rows: usize, cols: usize, group: usize, stats: &ChannelStats) -> Result<AwqChoice, CompressError> {
    check_matrix(w, rows, cols)?;
    if stats.mean_sq.len() != cols || stats.mean_abs.len() != cols {
        return Err(invalid(format!("calibration statistics cover {} / {} channels, the weight has {cols}", stats.mean_sq.len(), stats.mean_abs.len())));
    }
    if stats.mean_sq.iter().chain(&stats.mean_abs).any(|x| !x.is_finite() || *x < 0.0) {
        return Err(invalid("calibration statistics must be finite and non-negative"));
    }
    // Channels never active in calibration would get scale 0 and an unbounded 1/s; floor them
    // at 1e-4 of the largest, as AWQ does.
    let top = stats.mean_abs.iter().fold(0f32, |a, &x| a.max(x));
    let floor = (top * 1e-4).max(f32::MIN_POSITIVE);
    let base: Vec<f64> = stats.mean_abs.iter().map(|&x| x.max(floor) as f64).collect();
    let mut best: Option<AwqChoice> = None;
    let mut rtn = 0.0;
    for step in 0..=10 {
        let alpha = step as f64 / 10.0;
        let weight = if step == 0 {
            quantize_int4_grouped(w, rows, cols, group, None)?
        } else {
            let s: Vec<f64> = base.iter().map(|x| x.powf(alpha)).collect();
            // Normalise to geometric mean of the extremes 1 so the weight's range stays put.
            let (mx, mn) = s.iter().fold((0f64, f64::INFINITY), |(a, b), &x| (a.max(x), b.min(x)));
            let norm = (mx * mn).sqrt();
            let s: Vec<f32> = s.iter().map(|x| (x / norm) as f32).collect();
            quantize_int4_grouped(w, rows, cols, group, Some(&s))?
        };
        let err = proxy_error(w, &weight.dequantize()?, cols, &stats.mean_sq)?;
        if step == 0 {
            rtn = err;
        }
        if best.as_ref().is_none_or(|b| err < b.proxy_error) {
            best = Some(AwqChoice { alpha: alpha as f32, weight, proxy_error: err, rtn_proxy_error: rtn });
        }
    }
    let mut b = best.expect("eleven candidates");
    b.rtn_proxy_error = rtn;
    Ok(b)
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise the mantissa.
            let lz = m.leading_zeros() - 22; // leading zeros within the 10-bit field
            sign | ((127 - 15 - lz) << 23) | (((m << (lz + 1)) & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Float tensor data as f32, or None for non-float dtypes.
fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        _ => return None,
    })
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn write_safetensors(t: &[(String, Dtype, Vec<usize>, Vec<u8>)], meta: Option<HashMap<String, String>>) -> Result<Vec<u8>, CompressError> {
    let views = t
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b).map_err(|e| invalid(format!("tensor {n}: {e}")))?)))
        .collect::<Result<Vec<_>, CompressError>>()?;
    safetensors::serialize(views, meta).map_err(|e| invalid(format!("serializing safetensors: {e}")))
}

fn parse(bytes: &[u8]) -> Result<(SafeTensors<'_>, HashMap<String, String>), CompressError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| invalid(format!("not a safetensors file: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| invalid(format!("not a safetensors file: {e}")))?;
    Ok((st, meta.metadata().clone().unwrap_or_default()))
}

const SUFFIXES: [&str; 4] = [".qweight", ".scales", ".zeros", ".awq_scale"];

/// Quantizes every 2D float tensor (int4 additionally needs an even column count; others stay
/// as they are). `calib` maps weight names to their input statistics; int4 weights with
/// statistics get AWQ scales.
pub fn quantize_checkpoint(bytes: &[u8], scheme: QuantScheme, calib: &HashMap<String, ChannelStats>) -> Result<Vec<u8>, CompressError> {
    if let QuantScheme::Int4 { group } = scheme
        && group != 32
        && group != 64
    {
        return Err(invalid(format!("int4 group must be 32 or 64, not {group}")));
    }
    let (st, mut meta) = parse(bytes)?;
    let names: std::collections::HashSet<String> = st.names().into_iter().map(str::to_string).collect();
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let floats = if shape.len() == 2 { to_f32(view.dtype(), view.data()) } else { None };
        let (Some(w), [rows, cols]) = (floats, shape.as_slice()) else {
            out.push((name, view.dtype(), shape, view.data().to_vec()));
            continue;
        };
        let (rows, cols) = (*rows, *cols);
        if matches!(scheme, QuantScheme::Int4 { .. }) && cols % 2 == 1 || rows == 0 || cols == 0 {
            out.push((name, view.dtype(), shape, view.data().to_vec()));
            continue;
        }
        if let Some(clash) = SUFFIXES.iter().map(|s| format!("{name}{s}")).find(|n| names.contains(n)) {
            return Err(invalid(format!("cannot quantize {name}: the file already has a tensor {clash}")));
        }
        let ctx = |e: CompressError| invalid(format!("{name}: {e}"));
        match scheme {
            QuantScheme::Int8 => {
                let q = quantize_int8_per_channel(&w, rows, cols).map_err(ctx)?;
                out.push((format!("{name}.qweight"), Dtype::I8, vec![rows, cols], q.q.iter().map(|&x| x as u8).collect()));
                out.push((format!("{name}.scales"), Dtype::F32, vec![rows], bytes_f32(&q.scales)));
            }
            QuantScheme::Int4 { group } => {
                let q = match calib.get(&name) {
                    Some(stats) => awq_search(&w, rows, cols, group, stats).map_err(ctx)?.weight,
                    None => quantize_int4_grouped(&w, rows, cols, group, None).map_err(ctx)?,
                };
                let ng = q.n_groups();
                out.push((format!("{name}.qweight"), Dtype::U8, vec![rows, cols / 2], q.packed));
                out.push((format!("{name}.scales"), Dtype::F32, vec![rows, ng], bytes_f32(&q.scales)));
                out.push((format!("{name}.zeros"), Dtype::F32, vec![rows, ng], bytes_f32(&q.zeros)));
                if let Some(s) = &q.act_scale {
                    out.push((format!("{name}.awq_scale"), Dtype::F32, vec![cols], bytes_f32(s)));
                }
            }
        }
    }
    if let Some(f) = meta.remove("format") {
        meta.insert("source_format".into(), f);
    }
    meta.insert("format".into(), scheme.format());
    write_safetensors(&out, Some(meta))
}

/// Inverse of `quantize_checkpoint` up to quantization error: F32 tensors with the original
/// names and shapes; other float tensors converted to F32, integer tensors unchanged.
pub fn dequantize_checkpoint(bytes: &[u8]) -> Result<Vec<u8>, CompressError> {
    let (st, mut meta) = parse(bytes)?;
    let format = meta.get("format").cloned().unwrap_or_default();
    let scheme = QuantScheme::from_format(&format).ok_or_else(|| invalid(format!("not an evolve quantized checkpoint (format {format:?})")))?;
    let get = |n: &str, dtype: Dtype| -> Result<(Vec<usize>, Vec<u8>), CompressError> {
        let v = st.tensor(n).map_err(|_| invalid(format!("missing tensor {n}")))?;
        if v.dtype() != dtype {
            return Err(invalid(format!("tensor {n} is {:?}, expected {dtype:?}", v.dtype())));
        }
        Ok((v.shape().to_vec(), v.data().to_vec()))
    };
    let f32s = |b: &[u8]| to_f32(Dtype::F32, b).expect("F32 converts");
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(base) = name.strip_suffix(".qweight") {
            let shape = view.shape();
            let &[rows, stored_cols] = shape else { return Err(invalid(format!("{name} is not 2D"))) };
            let w = match scheme {
                QuantScheme::Int8 => {
                    let (qs, q) = get(&name, Dtype::I8)?;
                    let (ss, s) = get(&format!("{base}.scales"), Dtype::F32)?;
                    if ss != [rows] || qs != [rows, stored_cols] {
                        return Err(invalid(format!("{base}: scales {ss:?} do not fit qweight {qs:?}")));
                    }
                    Int8Weight { rows, cols: stored_cols, q: q.iter().map(|&b| b as i8).collect(), scales: f32s(&s) }.dequantize()?
                }
                QuantScheme::Int4 { group } => {
                    let cols = stored_cols * 2;
                    let (_, packed) = get(&name, Dtype::U8)?;
                    let (ss, s) = get(&format!("{base}.scales"), Dtype::F32)?;
                    let (zs, z) = get(&format!("{base}.zeros"), Dtype::F32)?;
                    let ng = cols.div_ceil(group);
                    if ss != [rows, ng] || zs != [rows, ng] {
                        return Err(invalid(format!("{base}: scales {ss:?} / zeros {zs:?} do not fit [{rows}, {ng}]")));
                    }
                    let act_scale = match st.tensor(&format!("{base}.awq_scale")) {
                        Ok(_) => {
                            let (a_s, a) = get(&format!("{base}.awq_scale"), Dtype::F32)?;
                            let a = f32s(&a);
                            if a_s != [cols] || a.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                                return Err(invalid(format!("{base}.awq_scale must be {cols} positive values")));
                            }
                            Some(a)
                        }
                        Err(_) => None,
                    };
                    Int4Weight { rows, cols, group, packed, scales: f32s(&s), zeros: f32s(&z), act_scale }.dequantize()?
                }
            };
            out.push((base.to_string(), Dtype::F32, vec![rows, w.len() / rows.max(1)], bytes_f32(&w)));
            continue;
        }
        let is_part = SUFFIXES[1..].iter().any(|s| name.strip_suffix(s).is_some_and(|b| st.tensor(&format!("{b}.qweight")).is_ok()));
        if is_part {
            continue;
        }
        match to_f32(view.dtype(), view.data()) {
            Some(v) => out.push((name, Dtype::F32, view.shape().to_vec(), bytes_f32(&v))),
            None => out.push((name, view.dtype(), view.shape().to_vec(), view.data().to_vec())),
        }
    }
    meta.remove("format");
    if let Some(f) = meta.remove("source_format") {
        meta.insert("format".into(), f);
    }
    write_safetensors(&out, Some(meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{Rng, gaussian_f32};

    #[test]
    fn int8_error_is_at_most_half_a_step_per_row() {
        let (rows, cols) = (17, 50);
        let mut w = gaussian_f32(rows * cols, 0.05, 3);
        w[3 * cols..4 * cols].iter_mut().for_each(|x| *x = 0.0); // an all-zero row
        w[5 * cols] = 2.0; // an outlier only affects its own row
        let q = quantize_int8_per_channel(&w, rows, cols).unwrap();
        let d = q.dequantize().unwrap();
        for r in 0..rows {
            let s = q.scales[r];
            for c in 0..cols {
                let e = (w[r * cols + c] - d[r * cols + c]).abs();
                assert!(e <= s / 2.0 * (1.0 + 1e-5) + f32::MIN_POSITIVE, "row {r} col {c}: {e} > {}", s / 2.0);
            }
        }
        assert_eq!(q.scales[3], 0.0);
        assert!(q.scales[5] > 10.0 * q.scales[4]);
        assert!(quantize_int8_per_channel(&w, rows, cols + 1).is_err());
        let mut nan = w.clone();
        nan[7] = f32::NAN;
        assert!(quantize_int8_per_channel(&nan, rows, cols).is_err());
    }

    #[test]
    fn int4_error_is_at_most_half_a_step_per_group() {
        // 72 columns: two full groups of 32 and a partial one of 8.
        let (rows, cols, group) = (5, 72, 32);
        let w: Vec<f32> = gaussian_f32(rows * cols, 0.05, 4).iter().map(|x| x + 0.03).collect();
        let q = quantize_int4_grouped(&w, rows, cols, group, None).unwrap();
        assert_eq!(q.n_groups(), 3);
        let d = q.dequantize().unwrap();
        for r in 0..rows {
            for c in 0..cols {
                let s = q.scales[r * 3 + c / group];
                let e = (w[r * cols + c] - d[r * cols + c]).abs();
                assert!(e <= s / 2.0 * (1.0 + 1e-4), "[{r},{c}] error {e} step {s}");
            }
        }
        // Asymmetric beats the symmetric step max|w| / 7 on shifted weights.
        let sym = w[..group].iter().fold(0f32, |a, x| a.max(x.abs())) / 7.0;
        assert!(q.scales[0] < sym);
        assert!(quantize_int4_grouped(&w, rows, cols, 48, None).is_err());
        let mut broken = q.clone();
        broken.scales.pop();
        assert!(broken.dequantize().is_err());
        assert!(quantize_int4_grouped(&w, rows, cols, 32, Some(&vec![1.0; cols - 1])).is_err());
    }

    fn salient_case() -> (Vec<f32>, usize, usize, ChannelStats) {
        let (rows, cols) = (64, 128);
        let mut rng = Rng(11);
        let w: Vec<f32> = (0..rows * cols).map(|_| (rng.normal() * 0.02) as f32).collect();
        // Eight salient input channels see activations 30x larger than the rest.
        let act: Vec<f32> = (0..cols).map(|j| if j % 16 == 3 { 30.0 } else { 1.0 }).collect();
        let stats = ChannelStats { mean_sq: act.iter().map(|a| a * a).collect(), mean_abs: act.clone() };
        (w, rows, cols, stats)
    }

    #[test]
    fn awq_beats_round_to_nearest_when_channels_are_salient() {
        let (w, rows, cols, stats) = salient_case();
        for group in [32, 64] {
            let a = awq_search(&w, rows, cols, group, &stats).unwrap();
            let rtn = quantize_int4_grouped(&w, rows, cols, group, None).unwrap();
            let rtn_err = proxy_error(&w, &rtn.dequantize().unwrap(), cols, &stats.mean_sq).unwrap();
            assert!((a.rtn_proxy_error - rtn_err).abs() <= 1e-12 * rtn_err);
            assert!(a.alpha > 0.0, "group {group}: AWQ kept alpha 0");
            assert!(a.proxy_error < 0.8 * rtn_err, "group {group}: awq {} vs rtn {rtn_err}", a.proxy_error);
            assert_eq!(a.weight.act_scale.as_ref().unwrap().len(), cols);
        }
        // Uniform activations: nothing to gain, and AWQ never does worse than RTN.
        let flat = ChannelStats { mean_sq: vec![1.0; cols], mean_abs: vec![1.0; cols] };
        let a = awq_search(&w, rows, cols, 32, &flat).unwrap();
        assert!(a.proxy_error <= a.rtn_proxy_error);
        assert!(awq_search(&w, rows, cols, 32, &ChannelStats { mean_sq: vec![1.0; 3], mean_abs: vec![1.0; 3] }).is_err());
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0200), 2f32.powi(-15));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    fn checkpoint() -> (Vec<u8>, Vec<f32>) {
        let (w, rows, cols, _) = salient_case();
        let norm: Vec<u8> = (0..cols).flat_map(|j| (1.0f32 + j as f32 * 1e-3).to_le_bytes()).collect();
        let ids: Vec<u8> = (0..4i64).flat_map(|i| i.to_le_bytes()).collect();
        let bf: Vec<u8> = w[..64 * 32].iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let t = vec![
            ("layer.weight".to_string(), Dtype::F32, vec![rows, cols], bytes_f32(&w)),
            ("layer.norm".to_string(), Dtype::F32, vec![cols], norm),
            ("pos".to_string(), Dtype::I64, vec![4], ids),
            ("half.weight".to_string(), Dtype::BF16, vec![64, 32], bf),
        ];
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        (write_safetensors(&t, Some(meta)).unwrap(), w)
    }

    #[test]
    fn checkpoints_round_trip_names_shapes_and_values() {
        let (st, w) = checkpoint();
        let (_, _, cols, stats) = salient_case();
        let calib = HashMap::from([("layer.weight".to_string(), stats)]);
        for scheme in [QuantScheme::Int8, QuantScheme::Int4 { group: 32 }, QuantScheme::Int4 { group: 64 }] {
            let q = quantize_checkpoint(&st, scheme, &calib).unwrap();
            let (qs, qmeta) = parse(&q).unwrap();
            assert_eq!(qmeta["format"], scheme.format());
            let qw = qs.tensor("layer.weight.qweight").unwrap();
            match scheme {
                QuantScheme::Int8 => assert_eq!((qw.dtype(), qw.shape()), (Dtype::I8, &[64, 128][..])),
                QuantScheme::Int4 { .. } => {
                    assert_eq!((qw.dtype(), qw.shape()), (Dtype::U8, &[64, 64][..]));
                    assert_eq!(qs.tensor("layer.weight.awq_scale").unwrap().shape(), &[cols]);
                    assert!(qs.tensor("half.weight.awq_scale").is_err(), "no statistics, no AWQ");
                }
            }
            assert!(q.len() < st.len() / 2);
            let d = dequantize_checkpoint(&q).unwrap();
            let (ds, dmeta) = parse(&d).unwrap();
            assert_eq!(dmeta["format"], "pt");
            let (os, _) = parse(&st).unwrap();
            let mut on: Vec<_> = os.names();
            let mut dn: Vec<_> = ds.names();
            on.sort();
            dn.sort();
            assert_eq!(on, dn);
            for n in on {
                let (a, b) = (os.tensor(n).unwrap(), ds.tensor(n).unwrap());
                assert_eq!(a.shape(), b.shape(), "{n}");
                let want = if a.dtype() == Dtype::I64 { Dtype::I64 } else { Dtype::F32 };
                assert_eq!(b.dtype(), want, "{n}");
            }
            assert_eq!(ds.tensor("layer.norm").unwrap().data(), os.tensor("layer.norm").unwrap().data());
            assert_eq!(ds.tensor("pos").unwrap().data(), os.tensor("pos").unwrap().data());
            let back = to_f32(Dtype::F32, ds.tensor("layer.weight").unwrap().data()).unwrap();
            let max_err = w.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let max_w = w.iter().fold(0f32, |a, x| a.max(x.abs()));
            let bound = match scheme {
                QuantScheme::Int8 => max_w / 127.0 / 2.0 * 1.001,
                // With AWQ the step is in scaled units; divided back it is at most this.
                QuantScheme::Int4 { .. } => max_w * 2.0 / 15.0 * 30.0,
            };
            assert!(max_err <= bound, "{scheme:?}: max error {max_err} above {bound}");
        }
    }

    #[test]
    fn bad_checkpoints_are_clear_errors() {
        assert!(quantize_checkpoint(b"nope", QuantScheme::Int8, &HashMap::new()).is_err());
        assert!(quantize_checkpoint(&checkpoint().0, QuantScheme::Int4 { group: 16 }, &HashMap::new()).is_err());
        let (st, _) = checkpoint();
        let err = dequantize_checkpoint(&st).unwrap_err().to_string();
        assert!(err.contains("not an evolve quantized checkpoint"), "{err}");
        // Scales missing: refused, not guessed.
        let q = quantize_checkpoint(&st, QuantScheme::Int8, &HashMap::new()).unwrap();
        let (qs, meta) = parse(&q).unwrap();
        let kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = qs.tensors().into_iter().filter(|(n, _)| n != "layer.weight.scales").map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
        let broken = write_safetensors(&kept, Some(meta)).unwrap();
        assert!(dequantize_checkpoint(&broken).unwrap_err().to_string().contains("missing tensor layer.weight.scales"));
    }
}
