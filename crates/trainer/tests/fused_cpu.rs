//! The fused CPU training pass computes what burn's autodiff computes: the same loss and, for
//! every parameter, the same gradient up to float rounding, with grouped-query attention, tied
//! and untied output projections and right-padded rows of different lengths; and a trainer that
//! uses it takes the same steps under each surgery.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use evolve_model::{CpuTrainPass, Llama, LlamaConfig, cpu_device};
use evolve_tasks::{Problem, Target};
use evolve_trainer::{Batch, OptimizerKind, Surgery, TrainConfig, Trainer, answer_loss, token_batch};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn problems(rows: usize, seed: u64) -> Vec<Problem> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = |n: usize| -> String { (0..n).map(|_| rng.random_range(b'a'..=b'z') as char).collect() };
    (0..rows)
        .map(|i| Problem {
            skill: format!("skill{}", i % 3),
            level: 1 + (i % 2) as u32,
            prompt: text(3 + (i * 7) % 11),
            target: Target::Text(text(1 + (i * 5) % 6)),
            knobs: vec![],
        })
        .collect()
}

fn answering(problems: Vec<Problem>, answer: &str) -> Vec<Problem> {
    problems.into_iter().map(|p| Problem { target: Target::Text(answer.into()), ..p }).collect()
}

fn config(tied: bool) -> LlamaConfig {
    let mut c = LlamaConfig::for_bytes(48, 96, 2, 4, 2, 32);
    c.tie_word_embeddings = tied;
    c
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Largest difference relative to the larger of the two tensors' largest magnitudes.
fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().chain(b).fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn fused_loss_and_gradients_match_burn_autodiff() {
    for tied in [false, true] {
        let device = cpu_device();
        device.seed(7);
        let model = Llama::init(&config(tied), &device);
        // Weights of a trained-looking scale, not only the init's, so no term is negligible.
        let model = model.map(&mut Scale(3.0));
        let batch = problems(9, 1);

        let autodiff = device.clone().autodiff();
        let tracked = model.clone().fork(&autodiff).train();
        let loss = answer_loss(&tracked, &Batch::new(&batch, &autodiff));
        let burn_loss = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &tracked);

        let pass = CpuTrainPass::new(&model);
        let (fused_loss, flat) = pass.loss_and_gradient(&token_batch(&batch));
        assert!((fused_loss - burn_loss).abs() <= 1e-5 * burn_loss.abs().max(1.0), "tied={tied}: loss {fused_loss} vs burn {burn_loss}");
        assert_eq!(pass.slots().len(), 3 + 9 * model.layers.len() - usize::from(tied));
        for slot in pass.slots() {
            let burn_grad = match slot.shape.len() {
                1 => host(grads.get::<1>(slot.id).expect("a gradient for every parameter")),
                _ => host(grads.get::<2>(slot.id).expect("a gradient for every parameter")),
            };
            let fused = &flat[slot.offset..slot.offset + slot.len()];
            let gap = relative_gap(fused, &burn_grad);
            assert!(gap < 3e-4, "tied={tied}: parameter {:?} {:?} differs by {gap} (relative)", slot.id, slot.shape);
            assert!(fused.iter().any(|v| *v != 0.0), "tied={tied}: {:?} has an all-zero gradient", slot.shape);
        }
    }
}

struct Scale(f32);

impl burn::module::ModuleMapper for Scale {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
        let (id, value, mapper) = param.consume();
        burn::module::Param::from_mapped_value(id, value.mul_scalar(self.0), mapper)
    }
}

fn weights(model: &Llama) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.extend(host(param.val()));
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

#[test]
fn a_trainer_takes_the_same_steps_with_the_fused_pass_under_every_surgery() {
    for (surgery, optimizer) in [(Surgery::None, OptimizerKind::Sgd), (Surgery::None, OptimizerKind::Adamw), (Surgery::Agem, OptimizerKind::Sgd), (Surgery::Pcgrad, OptimizerKind::Sgd)] {
        // One model for both runs: the device's seed is global, and tests run side by side.
        let device = cpu_device();
        device.seed(3);
        // A model that has learnt to answer `ab`, so a replay that asks `zq` conflicts with more `ab`.
        let initial = {
            let adamw = TrainConfig { optimizer: OptimizerKind::Adamw, learning_rate: 0.01, warmup_steps: 1, min_lr_ratio: 1.0, weight_decay: 0.0, grad_clip: 1.0, surgery: Surgery::None, seed: 0 };
            let mut trainer = Trainer::new(Llama::init(&config(false), &device), adamw, &device);
            let mut seed = 1000;
            trainer.fit(10, &mut || {
                seed += 1;
                answering(problems(12, seed), "ab")
            }, &mut Vec::new, &mut |_| {});
            trainer.into_model()
        };
        let run = |fused: bool| {
            let model = initial.clone();
            let train = TrainConfig { optimizer, learning_rate: 0.05, warmup_steps: 1, min_lr_ratio: 0.1, weight_decay: 0.01, grad_clip: 1.0, surgery, seed: 5 };
            let mut trainer = Trainer::new(model, train, &device).with_fused_cpu(fused);
            // The replay batch asks other answers of the same prompts: a conflict A-GEM must resolve.
            let (mut data, mut replay) = (0u64, 0u64);
            let report = trainer.fit(6, &mut || {
                data += 1;
                answering(problems(12, data), "ab")
            }, &mut || {
                replay += 1;
                answering(problems(6, replay), "zq")
            }, &mut |_| {});
            (report, weights(&trainer.into_model()))
        };
        let (burn_report, burn_weights) = run(false);
        let (fused_report, fused_weights) = run(true);
        assert_eq!((fused_report.steps, fused_report.tokens, fused_report.projected_steps), (burn_report.steps, burn_report.tokens, burn_report.projected_steps), "{surgery:?}");
        assert!((fused_report.last_loss - burn_report.last_loss).abs() < 1e-4, "{surgery:?}: last loss {} vs {}", fused_report.last_loss, burn_report.last_loss);
        if let (Some(a), Some(b)) = (fused_report.mean_cosine, burn_report.mean_cosine) {
            assert!((a - b).abs() < 1e-3, "{surgery:?}: cosine {a} vs {b}");
        }
        if surgery != Surgery::None {
            assert!(fused_report.projected_steps > 0, "{surgery:?} never projected: the test does not exercise it");
        }
        let moved = relative_gap(&fused_weights, &burn_weights);
        assert!(moved < 1e-4, "{surgery:?}: weights differ by {moved} (relative)");
    }
}

#[test]
fn one_pass_over_several_batches_gives_each_batch_its_own_loss_and_gradient() {
    for tied in [false, true] {
        let device = cpu_device();
        device.seed(9);
        let model = Llama::init(&config(tied), &device).map(&mut Scale(2.0));
        let pass = CpuTrainPass::new(&model);
        let batches = [token_batch(&problems(7, 2)), token_batch(&problems(5, 3)), token_batch(&answering(problems(4, 4), "zz"))];
        let together = pass.loss_and_gradients(&batches.iter().collect::<Vec<_>>());
        assert_eq!(together.len(), 3);
        for (batch, (loss, grad)) in batches.iter().zip(&together) {
            let (alone_loss, alone) = pass.loss_and_gradient(batch);
            assert!((loss - alone_loss).abs() <= 1e-6 * alone_loss.abs().max(1.0), "tied={tied}: loss {loss} vs {alone_loss} alone");
            for slot in pass.slots() {
                let range = slot.offset..slot.offset + slot.len();
                let gap = relative_gap(&grad[range.clone()], &alone[range]);
                assert!(gap < 1e-5, "tied={tied}: {:?} differs by {gap} from the batch alone", slot.shape);
            }
        }
    }
}

/// What an ablation compares arms at: every surgery, fed the same rows, reports the same tokens,
/// the examples' own (BOS, prompt and answer bytes, EOS, less the last, which predicts nothing),
/// neither the padding of its batches (PCGrad's per-group slices pad less) nor A-GEM's reference
/// batches.
#[test]
fn every_surgery_reports_the_tokens_of_the_rows_it_trained_on() {
    let device = cpu_device();
    device.seed(9);
    let initial = Llama::init(&config(false), &device);
    let rows: Vec<Vec<Problem>> = (0..3).map(|s| problems(12, 50 + s)).collect();
    let own_tokens: usize = rows.iter().flatten().map(|p| match &p.target {
        Target::Text(t) => p.prompt.len() + t.len() + 1,
        Target::Refuse => p.prompt.len() + 1,
    }).sum();
    let padded: usize = rows.iter().map(|b| token_batch(b)).map(|t| t.rows * t.width).sum();
    assert!(padded > own_tokens, "the rows must differ in length for padding to be told apart");
    for surgery in [Surgery::None, Surgery::Agem, Surgery::Pcgrad] {
        for fused in [true, false] {
            let train = TrainConfig { optimizer: OptimizerKind::Sgd, learning_rate: 0.01, warmup_steps: 1, min_lr_ratio: 1.0, weight_decay: 0.0, grad_clip: 1.0, surgery, seed: 1 };
            let mut trainer = Trainer::new(initial.clone(), train, &device).with_fused_cpu(fused);
            let mut next = rows.clone().into_iter();
            let report = trainer.fit(3, &mut || next.next().unwrap(), &mut || problems(12, 7), &mut |_| {});
            assert_eq!((report.examples, report.tokens), (36, own_tokens), "{surgery:?}, fused {fused}");
        }
    }
}
