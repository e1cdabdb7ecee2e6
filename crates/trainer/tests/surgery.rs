//! A-GEM removes the conflict and leaves agreeing gradients alone — on plain vectors and on a
//! real model's gradients over all parameters.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use evolve_model::{Llama, LlamaConfig, cpu_device};
use evolve_tasks::{Problem, Target};
use evolve_trainer::{Batch, agem_project_flat, agem_project_grads, answer_loss, combine_grads, gradient_gram, pcgrad_plan};

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

/// PCGrad exactly as the paper's pseudo-code states it, on plain vectors.
fn pcgrad_naive(grads: &[Vec<f64>], weights: &[f64], orders: &[Vec<usize>]) -> Vec<f64> {
    let d = grads[0].len();
    let dotf = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut out = vec![0.0; d];
    for (i, g) in grads.iter().enumerate() {
        let mut p = g.clone();
        for &j in &orders[i] {
            let dot = dotf(&p, &grads[j]);
            if dot < 0.0 {
                let scale = dot / dotf(&grads[j], &grads[j]);
                for (x, y) in p.iter_mut().zip(&grads[j]) {
                    *x -= scale * y;
                }
            }
        }
        for (o, x) in out.iter_mut().zip(&p) {
            *o += weights[i] * x;
        }
    }
    out
}

#[test]
fn pcgrad_plan_matches_the_papers_procedure() {
    let grads = vec![vec![1.0, 0.0, 1.0], vec![-1.0, 1.0, 0.0], vec![0.5, -2.0, 0.1], vec![0.0, 0.0, 1.0]];
    let gram: Vec<Vec<f64>> = grads.iter().map(|a| grads.iter().map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum()).collect()).collect();
    let weights = vec![0.4, 0.3, 0.2, 0.1];
    let orders = vec![vec![2, 1, 3], vec![0, 3, 2], vec![3, 1, 0], vec![1, 2, 0]];
    let plan = pcgrad_plan(&gram, &weights, &orders);
    let from_plan: Vec<f64> = (0..3).map(|c| (0..4).map(|k| plan.coefficients[k] * grads[k][c]).sum()).collect();
    let expected = pcgrad_naive(&grads, &weights, &orders);
    for (a, b) in from_plan.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-12, "{from_plan:?} vs {expected:?}");
    }
    assert!(plan.projections > 0 && plan.mean_cosine < 0.0);

    // Two conflicting gradients: after projection each is orthogonal to the other's original.
    let grads = vec![vec![1.0, 0.0], vec![-1.0, 1.0]];
    let gram = vec![vec![1.0, -1.0], vec![-1.0, 2.0]];
    let single = |i: usize| {
        let mut w = vec![0.0; 2];
        w[i] = 1.0;
        let plan = pcgrad_plan(&gram, &w, &[vec![1], vec![0]]);
        (0..2).map(|c| (0..2).map(|k| plan.coefficients[k] * grads[k][c]).sum::<f64>()).collect::<Vec<f64>>()
    };
    let (p0, p1) = (single(0), single(1));
    assert!((p0[0] * grads[1][0] + p0[1] * grads[1][1]).abs() < 1e-12);
    assert!((p1[0] * grads[0][0] + p1[1] * grads[0][1]).abs() < 1e-12);

    // No conflict: the weighted sum, unchanged.
    let gram = vec![vec![1.0, 0.5], vec![0.5, 1.0]];
    let plan = pcgrad_plan(&gram, &[0.5, 0.5], &[vec![1], vec![0]]);
    assert_eq!(plan.coefficients, vec![0.5, 0.5]);
    assert_eq!(plan.projections, 0);
}

#[test]
fn pcgrad_on_model_gradients_uses_global_dot_products() {
    let device = cpu_device().autodiff();
    device.seed(12);
    let model = Llama::init(&LlamaConfig::for_bytes(32, 64, 2, 4, 2, 32), &device);
    let grads_of = |ps: &[Problem], sign: f32| {
        let loss = answer_loss(&model, &Batch::new(ps, &device)).mul_scalar(sign);
        GradientsParams::from_grads(loss.backward(), &model)
    };
    let mixed: Vec<Problem> = [problems("rev abc>", "cba"), problems("rev xyz>", "zyx")].concat();
    let groups = vec![grads_of(&mixed, 1.0), grads_of(&problems("rev abc>", "cba"), -0.7)];
    let flats: Vec<Vec<f32>> = groups.iter().map(|g| flat(&model, g)).collect();
    let gram = gradient_gram(&model, &groups);
    for i in 0..2 {
        for j in 0..2 {
            let expected = dot(&flats[i], &flats[j]);
            assert!((gram[i][j] - expected).abs() <= 1e-4 * expected.abs().max(1.0), "gram[{i}][{j}] {} vs {expected}", gram[i][j]);
        }
    }
    assert!(gram[0][1] < 0.0, "the second group negates part of the first, so the two conflict");
    // Group 0 alone, projected off group 1: orthogonal to group 1's gradient over all parameters.
    let plan = pcgrad_plan(&gram, &[1.0, 0.0], &[vec![1], vec![0]]);
    assert_eq!(plan.projections, 2);
    let combined = flat(&model, &combine_grads(&model, &groups, &plan.coefficients));
    let residual = dot(&combined, &flats[1]) / dot(&flats[1], &flats[1]);
    assert!(residual.abs() < 1e-4, "dot with the other group after projection: {residual}");
}
