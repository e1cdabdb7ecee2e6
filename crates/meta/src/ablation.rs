//! `evolve ablate`: the loop's claims, measured. At equal seeds and equal training budgets
//! (same curriculum, same cycles, steps and batch sizes, the same pretrained base) it runs
//! (a) adversarial against uniform sampling of examples from the same frontier skills, and
//! (b) A-GEM against PCGrad against plain fine-tuning, each arm an ordinary run in the same
//! ledger, and records one comparison table. With several seeds the whole comparison runs once
//! per seed (each a table of its own, every arm from the same base), so a claim can be read off
//! the mean rather than one seed's luck: a single cycle's verdict moves an arm's gain by points.

use std::path::PathBuf;
use std::time::Instant;

use evolve_curriculum::{Curriculum, ExampleSampling, PolicyKind};
use evolve_ledger::{AblationArm, Ledger};
use evolve_trainer::Surgery;

use crate::budget::{Budget, DeviceChoice};
use crate::controller::{RunOptions, StartMode, Variant, run};
use crate::Error;

pub struct AblateOptions {
    pub curriculum_path: PathBuf,
    pub ledger_path: PathBuf,
    pub budget: Budget,
    pub device: Option<DeviceChoice>,
    /// Overrides the curriculum's `cycle.max_cycles`.
    pub cycles: Option<u32>,
    /// Comparisons to run: seed `s` of the curriculum, then `s + 1`, …
    pub seeds: u32,
    pub progress: bool,
}

/// One comparison per seed, in order.
pub struct AblationReport {
    pub ablations: Vec<Ablation>,
    pub seconds: f64,
}

pub struct Ablation {
    pub ablation_id: u32,
    pub seed: u64,
    pub arms: Vec<AblationArm>,
}

impl AblationReport {
    /// Each arm's figures averaged over the seeds; counts (cycles, accepted, tokens, seconds)
    /// summed; run ids from the first seed.
    pub fn mean(&self) -> Vec<AblationArm> {
        let Some(first) = self.ablations.first() else { return Vec::new() };
        let n = self.ablations.len() as f64;
        first
            .arms
            .iter()
            .enumerate()
            .map(|(i, arm)| {
                let all: Vec<&AblationArm> = self.ablations.iter().map(|a| &a.arms[i]).collect();
                let mean = |f: fn(&AblationArm) -> f64| all.iter().map(|a| f(a)).sum::<f64>() / n;
                AblationArm {
                    accepted: all.iter().map(|a| a.accepted).sum(),
                    cycles: all.iter().map(|a| a.cycles).sum(),
                    tokens_trained: all.iter().map(|a| a.tokens_trained).sum(),
                    frontier_gain: mean(|a| a.frontier_gain),
                    forgetting: mean(|a| a.forgetting),
                    refusal_drift: mean(|a| a.refusal_drift),
                    seconds: all.iter().map(|a| a.seconds).sum(),
                    ..arm.clone()
                }
            })
            .collect()
    }
}

/// One of the loop's claims read off the seeds pairwise: per seed, how far the claimed arm is
/// ahead of its baseline (positive: the claim holds on that seed).
pub struct Claim {
    pub claim: String,
    pub per_seed: Vec<f64>,
}

impl Claim {
    pub fn mean(&self) -> f64 {
        self.per_seed.iter().sum::<f64>() / self.per_seed.len().max(1) as f64
    }

    /// Standard error of the mean over seeds; `None` with one seed.
    pub fn standard_error(&self) -> Option<f64> {
        let n = self.per_seed.len();
        (n > 1).then(|| {
            let m = self.mean();
            (self.per_seed.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (n - 1) as f64 / n as f64).sqrt()
        })
    }

    pub fn seeds_ahead(&self) -> usize {
        self.per_seed.iter().filter(|d| **d > 0.0).count()
    }
}

impl AblationReport {
    /// The two claims, paired by seed: adversarial ahead of uniform on frontier gain
    /// (both with the curriculum's surgery), and each surgery ahead of none on forgetting (both
    /// adversarial). Paired, because every arm of a seed starts from the same base and seeds.
    pub fn claims(&self) -> Vec<Claim> {
        let arm = |a: &Ablation, name: &str| a.arms.iter().find(|r| r.arm == name).cloned();
        let Some(first) = self.ablations.first() else { return Vec::new() };
        let own = first.arms.first().map(|a| a.surgery.clone()).unwrap_or_default();
        let mut claims = Vec::new();
        let pair = |ahead: &str, behind: &str, f: fn(&AblationArm, &AblationArm) -> f64| -> Option<Vec<f64>> {
            self.ablations.iter().map(|a| Some(f(&arm(a, ahead)?, &arm(a, behind)?))).collect()
        };
        let (adversarial, uniform) = (format!("adversarial+{own}"), format!("uniform+{own}"));
        if let Some(per_seed) = pair(&adversarial, &uniform, |a, u| a.frontier_gain - u.frontier_gain) {
            claims.push(Claim { claim: format!("{adversarial} minus {uniform}, frontier gain"), per_seed });
        }
        for surgery in ["agem", "pcgrad"] {
            let (with, none) = (format!("adversarial+{surgery}"), "adversarial+none".to_string());
            if let Some(per_seed) = pair(&with, &none, |s, n| n.forgetting - s.forgetting) {
                claims.push(Claim { claim: format!("forgetting of {none} minus {with}"), per_seed });
            }
        }
        claims
    }
}

/// The arms: the curriculum's own surgery with adversarial and with uniform sampling, then
/// adversarial sampling with each other surgery.
fn arms(curriculum: &Curriculum) -> Vec<(ExampleSampling, Surgery)> {
    let own = curriculum.cycle.surgery;
    let mut arms = vec![(ExampleSampling::Adversarial, own), (ExampleSampling::Uniform, own)];
    arms.extend([Surgery::Agem, Surgery::Pcgrad, Surgery::None].into_iter().filter(|&s| s != own).map(|s| (ExampleSampling::Adversarial, s)));
    arms
}

pub async fn ablate(options: AblateOptions) -> Result<AblationReport, Error> {
    let started = Instant::now();
    let curriculum = Curriculum::load(&options.curriculum_path)?;
    if options.seeds == 0 {
        return Err(Error::Invalid("--seeds: must be at least 1".into()));
    }
    let mut base: Option<String> = None;
    let mut ablations = Vec::new();
    for k in 0..options.seeds {
        let seed = curriculum.seed.wrapping_add(u64::from(k));
        let (ablation_id, arms) = compare(&options, &curriculum, seed, &mut base).await?;
        ablations.push(Ablation { ablation_id, seed, arms });
    }
    Ok(AblationReport { ablations, seconds: started.elapsed().as_secs_f64() })
}

/// Every arm at `seed`, recorded as one ablation. The first arm pretrains the base when `base`
/// is still unset; every other arm (of every seed) starts from it.
async fn compare(options: &AblateOptions, curriculum: &Curriculum, seed: u64, base: &mut Option<String>) -> Result<(u32, Vec<AblationArm>), Error> {
    let mut rows = Vec::new();
    for (sampling, surgery) in arms(curriculum) {
        let arm = format!("{}+{}", sampling.as_str(), surgery.as_str());
        tracing::info!(arm, seed, "ablation arm started");
        let arm_started = Instant::now();
        let summary = run(RunOptions {
            curriculum_path: options.curriculum_path.clone(),
            ledger_path: options.ledger_path.clone(),
            budget: options.budget.clone(),
            cycles: options.cycles,
            progress: options.progress,
            device: options.device,
            variant: Variant {
                sampling: Some(sampling),
                surgery: Some(surgery),
                // Uniform draws ignore the policy's weights; say so in the ledger too.
                policy: (sampling == ExampleSampling::Uniform).then_some(PolicyKind::Even),
                seed: Some(seed),
            },
            // Every arm starts from the first arm's base: same seed, same weights.
            base: base.clone(),
            recompress: false,
            // Each arm is a run of its own, never the continuation of an earlier one.
            start: StartMode::Fresh,
            pool: Default::default(),
        })
        .await?;
        base.get_or_insert(summary.base.clone());
        let o = &summary.outcomes;
        let forgetting = if o.candidate_forgetting.is_empty() { 0.0 } else { o.candidate_forgetting.iter().sum::<f64>() / o.candidate_forgetting.len() as f64 };
        rows.push(AblationArm {
            ablation_id: 0,
            arm,
            curriculum: curriculum.name.clone(),
            sampling: sampling.as_str().into(),
            surgery: surgery.as_str().into(),
            run_id: summary.run_id,
            cycles: summary.cycles,
            accepted: summary.accepted,
            tokens_trained: o.tokens_trained,
            frontier_gain: o.final_frontier - o.base_frontier,
            forgetting,
            refusal_drift: o.final_refusal - o.base_refusal,
            seconds: arm_started.elapsed().as_secs_f64(),
        });
    }
    let ledger = Ledger::open(&options.ledger_path).await?;
    let ablation_id = ledger.next_ablation_id().await?;
    for r in &mut rows {
        r.ablation_id = ablation_id;
    }
    ledger.record_ablation(&rows).await?;
    ledger.close().await;
    Ok((ablation_id, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(name: &str, frontier_gain: f64, forgetting: f64) -> AblationArm {
        let (sampling, surgery) = name.split_once('+').unwrap();
        AblationArm {
            ablation_id: 1,
            arm: name.into(),
            curriculum: "c".into(),
            sampling: sampling.into(),
            surgery: surgery.into(),
            run_id: 1,
            cycles: 4,
            accepted: 4,
            tokens_trained: 0,
            frontier_gain,
            forgetting,
            refusal_drift: 0.0,
            seconds: 0.0,
        }
    }

    #[test]
    fn claims_are_paired_by_seed() {
        let seed = |adv: f64, uni: f64, agem: f64, none: f64| Ablation {
            ablation_id: 1,
            seed: 7,
            arms: vec![arm("adversarial+agem", adv, agem), arm("uniform+agem", uni, 0.0), arm("adversarial+pcgrad", 0.0, 0.02), arm("adversarial+none", 0.0, none)],
        };
        let report = AblationReport { ablations: vec![seed(0.12, 0.10, 0.01, 0.03), seed(0.08, 0.10, 0.02, 0.03), seed(0.15, 0.11, 0.02, 0.01)], seconds: 0.0 };
        let claims = report.claims();
        assert_eq!(claims.len(), 3);
        assert_eq!(claims[0].claim, "adversarial+agem minus uniform+agem, frontier gain");
        assert_eq!(claims[0].seeds_ahead(), 2);
        assert!((claims[0].mean() - 0.04 / 3.0).abs() < 1e-12);
        let d: [f64; 3] = [0.02, -0.02, 0.04];
        let m = d.iter().sum::<f64>() / 3.0;
        let se = (d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 2.0 / 3.0).sqrt();
        assert!((claims[0].standard_error().unwrap() - se).abs() < 1e-12);
        // Forgetting: none minus surgery, so positive means the surgery forgot less.
        assert_eq!(claims[1].claim, "forgetting of adversarial+none minus adversarial+agem");
        assert_eq!(claims[1].per_seed.iter().map(|d| (d * 100.0).round() as i64).collect::<Vec<_>>(), vec![2, 1, -1]);
        assert_eq!(claims[2].seeds_ahead(), 2);
    }
}
