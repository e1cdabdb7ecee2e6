//! A-GEM removes the conflict and leaves agreeing gradients alone — on plain vectors and on a
//! real model's gradients over all parameters.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use evolve_model::{Llama, LlamaConfig, cpu_device};
use evolve_tasks::{Problem, Target};
use evolve_trainer::{Batch, agem_project_flat, agem_project_grads, answer_loss};

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

#[test]
fn flat_projection_removes_the_conflict() {
    let g = [1.0f32, -2.0, 0.5, 3.0];
    let r = [-1.0f32, 1.0, 0.0, -0.5];
    assert!(dot(&g, &r) < 0.0);
    let (p, projected, cosine) = agem_project_flat(&g, &r);
    assert!(projected && cosine < 0.0);
    assert!(dot(&p, &r).abs() < 1e-6, "projected gradient is orthogonal to the reference");
    // The projection is the closest such vector: what was removed is parallel to r.
    let removed: Vec<f32> = g.iter().zip(&p).map(|(a, b)| a - b).collect();
    let k = removed[0] / r[0];
    for (x, y) in removed.iter().zip(&r) {
        assert!((x - k * y).abs() < 1e-6);
    }
}

#[test]
fn flat_projection_keeps_agreeing_gradients() {
    let g = [1.0f32, 2.0, 0.5];
    let r = [0.5f32, 1.0, -0.1];
    let (p, projected, cosine) = agem_project_flat(&g, &r);
    assert!(!projected && cosine > 0.0);
    assert_eq!(p, g);
}

struct Flatten<'a>(&'a GradientsParams, Vec<f32>);

impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.0.get::<D>(param.id) {
            self.1.extend(g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap());
        }
    }
}

fn flat(model: &Llama, grads: &GradientsParams) -> Vec<f32> {
    let mut f = Flatten(grads, Vec::new());
    model.visit(&mut f);
    f.1
}

fn problems(prompt: &str, answer: &str) -> Vec<Problem> {
    vec![Problem { skill: "reversal".into(), level: 1, prompt: prompt.into(), target: Target::Text(answer.into()), knobs: vec![] }; 4]
}

#[test]
fn model_gradients_are_projected_globally() {
    let device = cpu_device().autodiff();
    device.seed(11);
    let model = Llama::init(&LlamaConfig::for_bytes(32, 64, 2, 4, 2, 32), &device);
    let grads_of = |ps: &[Problem], sign: f32| {
        let loss = answer_loss(&model, &Batch::new(ps, &device)).mul_scalar(sign);
        GradientsParams::from_grads(loss.backward(), &model)
    };
    // The reference is the negated loss of the same data: a guaranteed conflict.
    let g = grads_of(&problems("rev abc>", "cba"), 1.0);
    let r = grads_of(&problems("rev abc>", "cba"), -0.5);
    let (g_flat, r_flat) = (flat(&model, &g), flat(&model, &r));
    assert!(dot(&g_flat, &r_flat) < 0.0);
    let projection = agem_project_grads(&model, g, &r);
    assert!(projection.projected);
    assert!(projection.cosine < -0.99, "cosine {}", projection.cosine);
    let after = flat(&model, &projection.grads);
    let residual = dot(&after, &r_flat) / dot(&r_flat, &r_flat);
    assert!(residual.abs() < 1e-4, "dot with the reference after projection: {residual}");
    let (expected, _, _) = agem_project_flat(&g_flat, &r_flat);
    for (a, b) in after.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5);
    }

    // A reference that agrees (the same loss, scaled) leaves the gradient exactly as it was.
    let g = grads_of(&problems("rev abc>", "cba"), 1.0);
    let r = grads_of(&problems("rev abc>", "cba"), 0.5);
    let before = flat(&model, &g);
    assert!(dot(&before, &flat(&model, &r)) > 0.0);
    let projection = agem_project_grads(&model, g, &r);
    assert!(!projection.projected && projection.cosine > 0.99);
    assert_eq!(flat(&model, &projection.grads), before);
}
