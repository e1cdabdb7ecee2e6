//! The loops the fused CPU passes share (the decoder, `cpu_decode`, and the training pass,
//! `cpu_train`): `gemm` calls on row-major or strided operands, a vectorizable `exp`, dot
//! products, RMSNorm and rotary tables laid out exactly as burn's path computes them.

/// The release build targets baseline x86-64 (SSE2). A function declared through this macro is
/// compiled twice, once for AVX2 with FMA, chosen at run time, as `gemm` does for its kernels.
/// Closures are compiled on their own, without their caller's target features, so the hot loops
/// handed to rayon are declared as such functions.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if $crate::cpu_kernels::has_avx2_fma() {
                    // SAFETY: the CPU has both features, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

#[inline(always)]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) fn values<const D: usize>(t: burn::prelude::Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 weights")
}

pub(crate) fn grow(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// Rotary cos/sin tables `[len, head_dim]` in Hugging Face's `rotate_half` layout (the two halves
/// of a head share one frequency), computed in f64 and rounded once: every path (burn's tensors,
/// the fused decoder, the fused training pass) uses exactly these values.
pub(crate) fn rope_table(head_dim: usize, theta: f64, len: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for pos in 0..len {
        for i in 0..head_dim {
            let inv_freq = 1.0 / theta.powf((2 * (i % half)) as f64 / head_dim as f64);
            let angle = pos as f64 * inv_freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Columns of several `[d_in, d_out_i]` matrices, side by side in one `[d_in, Σ d_out_i]`.
pub(crate) fn side_by_side(parts: &[&[f32]], d_in: usize) -> Vec<f32> {
    let widths: Vec<usize> = parts.iter().map(|p| p.len() / d_in).collect();
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for row in 0..d_in {
        for (p, &w) in parts.iter().zip(&widths) {
            out.extend_from_slice(&p[row * w..(row + 1) * w]);
        }
    }
    out
}

/// A matrix operand of `gemm`: element `(i, j)` is `data[i * row_stride + j * col_stride]`, so a
/// transpose or a band of columns of a wider matrix costs no copy.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Operand { data, row_stride: cols, col_stride: 1 }
    }

    /// Columns `from..` of a row-major matrix `cols` wide.
    pub fn band(data: &'a [f32], cols: usize, from: usize) -> Self {
        Operand { data: &data[from..], row_stride: cols, col_stride: 1 }
    }

    /// The rows from `row` on.
    pub fn from_row(self, row: usize) -> Self {
        Operand { data: &self.data[(row * self.row_stride).min(self.data.len())..], ..self }
    }

    pub fn t(self) -> Self {
        Operand { data: self.data, row_stride: self.col_stride, col_stride: self.row_stride }
    }

    fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `out[m, n] (+)= a[m, k] · b[k, n]`, `out` row-major with row stride `out_stride`; large
/// products are split over rayon's threads (by blocks of `out`, so the sums, and the results,
/// do not depend on the thread count).
pub(crate) fn gemm_into(out: &mut [f32], out_stride: usize, a: Operand, b: Operand, (m, k, n): (usize, usize, usize), accumulate: bool, parallel: bool) {
    assert!(a.covers(m, k) && b.covers(k, n), "gemm operands smaller than {m}x{k} · {k}x{n}");
    assert!(m == 0 || n == 0 || (m - 1) * out_stride + n <= out.len(), "gemm output smaller than {m}x{n}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in out.chunks_mut(out_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if parallel && m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: every element the strides reach lies inside its slice (asserted above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `out[m, n] (+)= a[m, k] · b[k, n]`, all row-major.
pub(crate) fn matmul(out: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, accumulate: bool, parallel: bool) {
    gemm_into(out, n, Operand::rows(a, k), Operand::rows(b, n), (m, k, n), accumulate, parallel);
}

#[inline(always)]
/// `a · b` in eight independent partial sums, which the compiler keeps in one SIMD register
/// (a single running sum is a serial dependency chain it may not reorder).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}


/// `e^x` for every element, in place, without branches or calls so the loop vectorizes (libm's
/// `expf` is one call per element). Cody-Waite range reduction to `x = n ln2 + r`, |r| ≤ ln2/2,
/// then a degree-6 Taylor polynomial for `e^r`: relative error below 2e-7 over the clamped range
/// [-87.3, 88.0]; below it the result is ~1e-38 rather than 0 and above it ~1.6e38 rather than
/// infinity, which softmax and SiLU do not mind.
#[inline(always)]
pub(crate) fn exp_in_place(xs: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer for |v| < 2^22.
    const ROUND: f32 = 12_582_912.0;
    for x in xs.iter_mut() {
        let v = x.clamp(-87.3, 88.0);
        let n = (v * LOG2E + ROUND) - ROUND;
        let r = (v - n * LN2_HI) - n * LN2_LO;
        let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        *x = p * f32::from_bits(((n as i32 + 127) << 23) as u32);
    }
}


/// Hugging Face's `rotate_half` rotary embedding of one head, in place.
#[inline(always)]
pub(crate) fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        x1[i] = a * cos[i] - b * sin[i];
        x2[i] = b * cos[i + half] + a * sin[i + half];
    }
}
