//! A-GEM projection over all parameters at once: the dot products are global, not per tensor,
//! because the guarantee (the step does not increase the replay loss to first order) is about the
//! whole update.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use rayon::prelude::*;

/// A step's gradient: one flat host vector from the fused CPU pass, or burn's per-parameter
/// tensors on other devices. Each surgery below works on either, with the same mathematics.
pub enum Gradient {
    Host(Vec<f32>),
    Tensors(GradientsParams),
}

/// Gradients after surgery, and what the surgery saw.
pub struct Projection<G = GradientsParams> {
    pub grads: G,
    /// Whether `g·r < 0`, so that `g` was projected.
    pub projected: bool,
    /// Cosine between `g` and `r` before projection.
    pub cosine: f64,
}

/// A-GEM on plain vectors: returns the projected gradient, whether it projected, and the cosine.
pub fn agem_project_flat(g: &[f32], r: &[f32]) -> (Vec<f32>, bool, f64) {
    let mut out = g.to_vec();
    let (projected, cosine) = agem_project_in_place(&mut out, r);
    (out, projected, cosine)
}

/// A-GEM on a host vector, in place: one parallel pass for the three sums (f64, per chunk of
/// fixed size, added in chunk order, so the result does not depend on the thread count), one more
/// only when it projects.
pub fn agem_project_in_place(g: &mut [f32], r: &[f32]) -> (bool, f64) {
    const CHUNK: usize = 1 << 16;
    let partial: Vec<[f64; 3]> = g
        .par_chunks(CHUNK)
        .zip(r.par_chunks(CHUNK))
        .map(|(g, r)| {
            let (mut dot, mut gg, mut rr) = (0.0f64, 0.0f64, 0.0f64);
            for (a, b) in g.iter().zip(r) {
                let (a, b) = (*a as f64, *b as f64);
                dot += a * b;
                gg += a * a;
                rr += b * b;
            }
            [dot, gg, rr]
        })
        .collect();
    let [dot, gg, rr] = partial.iter().fold([0.0f64; 3], |acc, p| [acc[0] + p[0], acc[1] + p[1], acc[2] + p[2]]);
    let cosine = cosine(dot, gg, rr);
    if dot >= 0.0 || rr == 0.0 {
        return (false, cosine);
    }
    let scale = dot / rr;
    g.par_chunks_mut(CHUNK).zip(r.par_chunks(CHUNK)).for_each(|(g, r)| {
        for (a, b) in g.iter_mut().zip(r) {
            *a = (*a as f64 - scale * *b as f64) as f32;
        }
    });
    (true, cosine)
}

fn cosine(dot: f64, gg: f64, rr: f64) -> f64 {
    if gg == 0.0 || rr == 0.0 { 0.0 } else { dot / (gg.sqrt() * rr.sqrt()) }
}

/// A-GEM of `g` against the reference gradient `r`, both of the same kind.
pub fn agem_project<M: Module>(module: &M, g: Gradient, r: &Gradient) -> Projection<Gradient> {
    match (g, r) {
        (Gradient::Host(mut g), Gradient::Host(r)) => {
            let (projected, cosine) = agem_project_in_place(&mut g, r);
            Projection { grads: Gradient::Host(g), projected, cosine }
        }
        (Gradient::Tensors(g), Gradient::Tensors(r)) => {
            let p = agem_project_grads(module, g, r);
            Projection { grads: Gradient::Tensors(p.grads), projected: p.projected, cosine: p.cosine }
        }
        _ => unreachable!("a step's gradients all come from the same pass"),
    }
}

/// The Gram matrix of group gradients over all parameters.
pub fn gram<M: Module>(module: &M, groups: &[Gradient]) -> Vec<Vec<f64>> {
    if let Some(host) = host_vectors(groups) {
        return host.iter().map(|a| host.iter().map(|b| a.iter().zip(*b).map(|(x, y)| *x as f64 * *y as f64).sum()).collect()).collect();
    }
    gram_of(module, &tensor_groups(groups))
}

/// `Σ_k c_k g_k`, as PCGrad's plan gives it.
pub fn combine<M: Module>(module: &M, groups: &[Gradient], coefficients: &[f64]) -> Gradient {
    if let Some(host) = host_vectors(groups) {
        let mut sum = vec![0.0f64; host.first().map_or(0, |g| g.len())];
        for (g, &c) in host.iter().zip(coefficients) {
            for (s, x) in sum.iter_mut().zip(*g) {
                *s += c * *x as f64;
            }
        }
        return Gradient::Host(sum.into_iter().map(|x| x as f32).collect());
    }
    Gradient::Tensors(combine_of(module, &tensor_groups(groups), coefficients))
}

fn host_vectors(groups: &[Gradient]) -> Option<Vec<&Vec<f32>>> {
    groups.iter().map(|g| if let Gradient::Host(v) = g { Some(v) } else { None }).collect()
}

fn tensor_groups(groups: &[Gradient]) -> Vec<&GradientsParams> {
    groups
        .iter()
        .map(|g| match g {
            Gradient::Tensors(t) => t,
            Gradient::Host(_) => unreachable!("a step's gradients all come from the same pass"),
        })
        .collect()
}

/// Accumulates `g·r`, `g·g`, `r·r` on the device; one host read per step.
struct Dots<'a> {
    g: &'a GradientsParams,
    r: &'a GradientsParams,
    sums: Option<Tensor<1>>,
}

impl ModuleVisitor for Dots<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (Some(g), Some(r)) = (self.g.get::<D>(param.id), self.r.get::<D>(param.id)) else {
            return;
        };
        let parts = Tensor::cat(
            vec![(g.clone() * r.clone()).sum(), (g.clone() * g).sum(), (r.clone() * r).sum()],
            0,
        );
        self.sums = Some(match self.sums.take() {
            Some(acc) => acc + parts,
            None => parts,
        });
    }
}

/// `g ← g - scale · r` for every parameter that has both gradients.
struct Subtract<'a> {
    g: GradientsParams,
    r: &'a GradientsParams,
    scale: f64,
}

impl ModuleVisitor for Subtract<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let (Some(g), Some(r)) = (self.g.remove::<D>(param.id), self.r.get::<D>(param.id)) {
            self.g.register(param.id, g - r.mul_scalar(self.scale));
        }
    }
}

/// A-GEM over a module's gradients `g` against the reference gradients `r`.
pub fn agem_project_grads<M: Module>(module: &M, g: GradientsParams, r: &GradientsParams) -> Projection {
    let mut dots = Dots { g: &g, r, sums: None };
    module.visit(&mut dots);
    let Some(sums) = dots.sums else {
        return Projection { grads: g, projected: false, cosine: 0.0 };
    };
    let s = sums.into_data().convert::<f64>().try_to_vec::<f64>().expect("three sums");
    let (dot, gg, rr) = (s[0], s[1], s[2]);
    let cos = cosine(dot, gg, rr);
    if dot >= 0.0 || rr == 0.0 {
        return Projection { grads: g, projected: false, cosine: cos };
    }
    let mut subtract = Subtract { g, r, scale: dot / rr };
    module.visit(&mut subtract);
    Projection { grads: subtract.g, projected: true, cosine: cos }
}

/// PCGrad's combination of group gradients, as coefficients on the original gradients.
///
/// Every projected `g_i'` is a linear combination of the original `g_k`, so the whole procedure
/// runs on their Gram matrix (`gram[i][j] = g_i·g_j`) on the host, and the device then forms one
/// weighted sum per parameter: the cost is the group backward passes plus two passes over the
/// parameters, whatever the number of groups.
#[derive(Clone, Debug, PartialEq)]
pub struct PcgradPlan {
    /// Final gradient = Σ_k `coefficients[k]` · g_k.
    pub coefficients: Vec<f64>,
    /// Projections made (pairs `(i, j)` where `g_i'·g_j < 0`).
    pub projections: usize,
    /// Mean cosine over group pairs before projection (0 with fewer than two groups).
    pub mean_cosine: f64,
}

/// Yu et al. 2020: each `g_i` is projected off every conflicting `g_j` (`g_i'·g_j < 0`), in the
/// given order (`orders[i]`, a permutation of the others, random per step in the paper), always
/// against the *original* `g_j`; the results are summed with `weights`.
pub fn pcgrad_plan(gram: &[Vec<f64>], weights: &[f64], orders: &[Vec<usize>]) -> PcgradPlan {
    let n = gram.len();
    let mut coefficients = vec![0.0; n];
    let mut projections = 0;
    for i in 0..n {
        // g_i' = Σ_k a[k] g_k, starting from g_i.
        let mut a = vec![0.0; n];
        a[i] = 1.0;
        for &j in &orders[i] {
            let norm = gram[j][j];
            if j == i || norm <= 0.0 {
                continue;
            }
            let dot: f64 = (0..n).map(|k| a[k] * gram[k][j]).sum();
            if dot < 0.0 {
                a[j] -= dot / norm;
                projections += 1;
            }
        }
        for k in 0..n {
            coefficients[k] += weights[i] * a[k];
        }
    }
    let mut cosines = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            cosines.push(cosine(gram[i][j], gram[i][i], gram[j][j]));
        }
    }
    let mean_cosine = if cosines.is_empty() { 0.0 } else { cosines.iter().sum::<f64>() / cosines.len() as f64 };
    PcgradPlan { coefficients, projections, mean_cosine }
}

/// Accumulates the Gram matrix of several gradients over all parameters, on the device.
struct Gram<'a> {
    groups: &'a [&'a GradientsParams],
    sums: Option<Tensor<2>>,
}

impl ModuleVisitor for Gram<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let rows: Option<Vec<Tensor<2>>> = self.groups.iter().map(|g| g.get::<D>(param.id).map(|t| t.flatten::<1>(0, D - 1).unsqueeze::<2>())).collect();
        let Some(rows) = rows else { return };
        let stacked = Tensor::cat(rows, 0);
        let gram = stacked.clone().matmul(stacked.transpose());
        self.sums = Some(match self.sums.take() {
            Some(acc) => acc + gram,
            None => gram,
        });
    }
}

/// `Σ_k c_k g_k` per parameter.
struct Combine<'a> {
    groups: &'a [&'a GradientsParams],
    coefficients: &'a [f64],
    out: GradientsParams,
}

impl ModuleVisitor for Combine<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let mut sum: Option<Tensor<D>> = None;
        for (g, &c) in self.groups.iter().zip(self.coefficients) {
            if let Some(t) = g.get::<D>(param.id) {
                let term = t.mul_scalar(c);
                sum = Some(match sum.take() {
                    Some(acc) => acc + term,
                    None => term,
                });
            }
        }
        if let Some(sum) = sum {
            self.out.register(param.id, sum);
        }
    }
}

/// The Gram matrix of group gradients over all of a module's parameters (one host read).
pub fn gradient_gram<M: Module>(module: &M, groups: &[GradientsParams]) -> Vec<Vec<f64>> {
    gram_of(module, &groups.iter().collect::<Vec<_>>())
}

fn gram_of<M: Module>(module: &M, groups: &[&GradientsParams]) -> Vec<Vec<f64>> {
    let n = groups.len();
    let mut visitor = Gram { groups, sums: None };
    module.visit(&mut visitor);
    let Some(sums) = visitor.sums else { return vec![vec![0.0; n]; n] };
    let flat = sums.into_data().convert::<f64>().try_to_vec::<f64>().expect("gram entries");
    flat.chunks(n).map(|row| row.to_vec()).collect()
}

/// Applies a PCGrad plan: one gradient per parameter, the plan's weighted sum of the groups'.
pub fn combine_grads<M: Module>(module: &M, groups: &[GradientsParams], coefficients: &[f64]) -> GradientsParams {
    combine_of(module, &groups.iter().collect::<Vec<_>>(), coefficients)
}

fn combine_of<M: Module>(module: &M, groups: &[&GradientsParams], coefficients: &[f64]) -> GradientsParams {
    let mut visitor = Combine { groups, coefficients, out: GradientsParams::new() };
    module.visit(&mut visitor);
    visitor.out
}
