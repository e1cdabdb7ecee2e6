//! A-GEM projection over all parameters at once: the dot products are global, not per tensor,
//! because the guarantee (the step does not increase the replay loss to first order) is about the
//! whole update.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

/// Gradients after surgery, and what the surgery saw.
pub struct Projection {
    pub grads: GradientsParams,
    /// Whether `g·r < 0`, so that `g` was projected.
    pub projected: bool,
    /// Cosine between `g` and `r` before projection.
    pub cosine: f64,
}

/// A-GEM on plain vectors: the reference implementation the tensor version is tested against.
pub fn agem_project_flat(g: &[f32], r: &[f32]) -> (Vec<f32>, bool, f64) {
    let dot: f64 = g.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum();
    let gg: f64 = g.iter().map(|a| (*a as f64).powi(2)).sum();
    let rr: f64 = r.iter().map(|b| (*b as f64).powi(2)).sum();
    let cosine = cosine(dot, gg, rr);
    if dot >= 0.0 || rr == 0.0 {
        return (g.to_vec(), false, cosine);
    }
    let scale = dot / rr;
    (g.iter().zip(r).map(|(a, b)| (*a as f64 - scale * *b as f64) as f32).collect(), true, cosine)
}

fn cosine(dot: f64, gg: f64, rr: f64) -> f64 {
    if gg == 0.0 || rr == 0.0 { 0.0 } else { dot / (gg.sqrt() * rr.sqrt()) }
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
