//! The trainer makes a model learn: a small model trained from scratch on three-letter reversal
//! goes from never right to mostly right on a frozen held-out suite.

use evolve_discriminator::Verifier;
use evolve_model::{Llama, LlamaConfig, cpu_device};
use evolve_policy::{Sampling, answer};
use evolve_tasks::{HeldOut, build_suite, sample_training, skill_by_name};
use evolve_trainer::{OptimizerKind, Surgery, TrainConfig, Trainer};
use rand::{SeedableRng, rngs::StdRng};

#[test]
fn reversal_is_learned_from_scratch() {
    let device = cpu_device();
    device.seed(1);
    let config = LlamaConfig::for_bytes(64, 192, 2, 4, 4, 32);
    let skill = skill_by_name("reversal").unwrap();
    let suite = build_suite(skill.as_ref(), 1, 100, 42);
    let held_out = HeldOut::from_suites([&suite]);
    let verifier = Verifier::default();
    let accuracy = |model: &Llama| {
        let responses = answer(model, &suite.problems, 1, &Sampling::greedy(), &device);
        suite.problems.iter().zip(&responses).filter(|(p, r)| verifier.is_correct(p, r)).count() as f64 / suite.problems.len() as f64
    };
    let model = Llama::init(&config, &device);
    let before = accuracy(&model);

    let train = TrainConfig { optimizer: OptimizerKind::Adamw, learning_rate: 3e-3, warmup_steps: 20, min_lr_ratio: 0.1, weight_decay: 0.01, grad_clip: 1.0, surgery: Surgery::None, seed: 7 };
    let mut trainer = Trainer::new(model, train, &device);
    let mut rng = StdRng::seed_from_u64(5);
    let mut next = || (0..32).map(|_| sample_training(skill.as_ref(), 1, &held_out, &mut rng).unwrap()).collect();
    let report = trainer.fit(300, &mut next, &mut Vec::new, &mut |_| {});
    let after = accuracy(&trainer.model());

    assert!(before <= 0.02, "an untrained model is not right by chance: {before}");
    assert!(report.last_loss < report.first_loss / 4.0, "loss {} -> {}", report.first_loss, report.last_loss);
    assert!(after >= 0.6, "held-out reversal accuracy after training: {after}");
}

/// AdamW's moments are the state that matters: ten steps in one go and five steps, a save (the
/// weights as a checkpoint, the optimizer state beside them), a resume in a fresh trainer and
/// five more steps give the same weights. A resume with fresh moments does not.
#[test]
fn resuming_from_saved_optimizer_state_continues_exactly() {
    let device = cpu_device();
    device.seed(2);
    let config = LlamaConfig::for_bytes(32, 64, 2, 4, 2, 32);
    let skill = skill_by_name("reversal").unwrap();
    let batches: Vec<Vec<evolve_tasks::Problem>> = {
        let mut rng = StdRng::seed_from_u64(9);
        (0..10).map(|_| (0..8).map(|_| sample_training(skill.as_ref(), 1, &HeldOut::default(), &mut rng).unwrap()).collect()).collect()
    };
    let train = TrainConfig { optimizer: OptimizerKind::Adamw, learning_rate: 1e-2, warmup_steps: 0, min_lr_ratio: 1.0, weight_decay: 0.01, grad_clip: 1.0, surgery: Surgery::None, seed: 7 };
    let start = Llama::init(&config, &device);
    let weights = |m: &Llama| evolve_model::Checkpoint::from_model(m, &config);
    let feed = |from: usize| {
        let batches = batches.clone();
        let mut i = from;
        move || {
            i += 1;
            batches[i - 1].clone()
        }
    };

    let mut straight = Trainer::new(start.clone(), train.clone(), &device);
    straight.fit(10, &mut feed(0), &mut Vec::new, &mut |_| {});
    let expected = weights(&straight.model());

    let mut first = Trainer::new(start.clone(), train.clone(), &device);
    first.fit(5, &mut feed(0), &mut Vec::new, &mut |_| {});
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("optimizer.state");
    first.save_state(&state, 5).unwrap();
    let saved = weights(&first.model());
    drop(first);
    let reloaded = saved.to_model(&device, "saved").unwrap();
    let mut resumed = Trainer::resume(reloaded, train.clone(), &device, &state).unwrap();
    resumed.fit(5, &mut feed(5), &mut Vec::new, &mut |_| {});
    assert_eq!(weights(&resumed.model()).hash, expected.hash, "resumed training must match uninterrupted training bit for bit");

    let mut fresh = Trainer::new(saved.to_model(&device, "saved").unwrap(), train.clone(), &device);
    fresh.fit(5, &mut feed(5), &mut Vec::new, &mut |_| {});
    assert_ne!(weights(&fresh.model()).hash, expected.hash, "fresh moments diverge, so the state is what made the difference");

    std::fs::write(&state, b"junk").unwrap();
    let err = Trainer::resume(saved.to_model(&device, "saved").unwrap(), train, &device, &state).err().unwrap().to_string();
    assert!(err.contains("optimizer.state"), "{err}");
}
