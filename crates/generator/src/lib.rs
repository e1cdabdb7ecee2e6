//! The generator role. Each cycle it
//! 1. **mines**: answers fresh probe problems at the curriculum's target levels and keeps the
//!    ones the current checkpoint gets wrong;
//! 2. **synthesizes**: mutates each failure into neighbours (the skill's own operators: same
//!    carry pattern, longer operand, near-miss brackets, a benign look-alike …), drops
//!    duplicates, held-out prompts and candidates the verifier does not admit, samples `k`
//!    answers per candidate and keeps those in the *learnability window* (pass rate in
//!    `[p_lo, p_hi]`: solved sometimes, not always, not never), under a per-skill quota so that
//!    no task type dominates the batch.
//!
//! Architecture invariants: the generator reads a model and writes problems; it never trains,
//! never touches the ledger, and judges responses only through the discriminator's `Scorer`.

use std::collections::{BTreeMap, HashSet};

use burn::prelude::*;
use evolve_discriminator::{Scorer, Verifier};
use evolve_model::Llama;
use evolve_policy::{Sampling, answer};
use evolve_tasks::{HeldOut, Problem, Skill, sample_training};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

/// Per (skill, level): how many probes were tried and how many failed.
#[derive(Clone, Debug, Serialize)]
pub struct MiningStat {
    pub skill: String,
    pub level: u32,
    pub probes: usize,
    pub failures: usize,
}

pub struct MiningReport {
    pub failures: Vec<Problem>,
    pub stats: Vec<MiningStat>,
}

/// Answers `probes_per_level` fresh problems (never held-out ones) per target and keeps failures.
pub fn mine(
    model: &Llama,
    targets: &[(&dyn Skill, u32)],
    probes_per_level: usize,
    held_out: &HeldOut,
    verifier: &Verifier,
    rng: &mut dyn RngCore,
    device: &Device,
) -> MiningReport {
    let mut probes = Vec::new();
    let mut spans = Vec::new();
    for &(skill, level) in targets {
        let start = probes.len();
        probes.extend((0..probes_per_level).filter_map(|_| sample_training(skill, level, held_out, rng)));
        spans.push((skill.name().to_string(), level, start..probes.len()));
    }
    let responses = answer(model, &probes, 1, &Sampling::greedy(), device);
    let mut failures = Vec::new();
    let mut stats = Vec::new();
    for (skill, level, span) in spans {
        let before = failures.len();
        for i in span.clone() {
            if !verifier.is_correct(&probes[i], &responses[i]) {
                failures.push(probes[i].clone());
            }
        }
        stats.push(MiningStat { skill, level, probes: span.len(), failures: failures.len() - before });
    }
    MiningReport { failures, stats }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SynthesisConfig {
    pub mutations_per_failure: usize,
    pub samples_k: usize,
    pub temperature: f32,
    pub window: (f32, f32),
    pub examples: usize,
    /// No skill may take more than this share of the batch.
    pub max_skill_share: f32,
}

#[derive(Clone, Debug)]
pub struct Candidate {
    pub problem: Problem,
    pub pass_rate: f32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SkillSynthesis {
    pub skill: String,
    pub generated: usize,
    pub admitted: usize,
    pub in_window: usize,
    pub accepted: usize,
    pub mean_pass_rate: Option<f64>,
}

pub struct SynthesisReport {
    pub accepted: Vec<Candidate>,
    pub per_skill: Vec<SkillSynthesis>,
}

/// Everything a candidate must not be: a held-out prompt, something trained on before, or a
/// duplicate within this batch.
pub struct Exclusions<'a> {
    pub held_out: &'a HeldOut,
    pub history: &'a HashSet<String>,
}

pub fn synthesize(
    model: &Llama,
    skills: &[Box<dyn Skill>],
    failures: &[Problem],
    config: &SynthesisConfig,
    exclude: &Exclusions<'_>,
    verifier: &Verifier,
    rng: &mut dyn RngCore,
    device: &Device,
) -> SynthesisReport {
    let mut per_skill: BTreeMap<String, SkillSynthesis> = BTreeMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut candidates = Vec::new();
    for failure in failures {
        let Some(skill) = skills.iter().find(|s| s.name() == failure.skill) else { continue };
        let stats = per_skill.entry(failure.skill.clone()).or_insert_with(|| SkillSynthesis { skill: failure.skill.clone(), ..Default::default() });
        for _ in 0..config.mutations_per_failure {
            let candidate = skill.mutate(failure, rng);
            stats.generated += 1;
            let fresh = !exclude.held_out.contains(&candidate.prompt)
                && !exclude.history.contains(&candidate.prompt)
                && seen.insert(candidate.prompt.clone());
            if fresh && verifier.admits(&candidate) {
                stats.admitted += 1;
                candidates.push(candidate);
            }
        }
    }

    let k = config.samples_k.max(1);
    let sampling = Sampling { temperature: config.temperature, seed: rng.random() };
    let responses = answer(model, &candidates, k, &sampling, device);
    let scored: Vec<Candidate> = candidates
        .into_iter()
        .enumerate()
        .map(|(i, problem)| {
            let passes: f32 = responses[i * k..(i + 1) * k].iter().map(|r| verifier.score(&problem, r)).sum();
            Candidate { pass_rate: passes / k as f32, problem }
        })
        .collect();

    let accepted = select_within_quota(scored, config, &mut per_skill);
    SynthesisReport { accepted, per_skill: per_skill.into_values().collect() }
}

/// Fills the batch skill by skill up to the quota: candidates inside the window first (nearest
/// the middle of the window, where learning signal is largest), then the nearest outside it, so
/// that a frontier the model never solves still gets examples.
fn select_within_quota(scored: Vec<Candidate>, config: &SynthesisConfig, per_skill: &mut BTreeMap<String, SkillSynthesis>) -> Vec<Candidate> {
    let (lo, hi) = config.window;
    let middle = (lo + hi) / 2.0;
    let distance = |p: f32| if p < lo { lo - p } else if p > hi { p - hi } else { 0.0 };
    let mut by_skill: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for c in scored {
        by_skill.entry(c.problem.skill.clone()).or_default().push(c);
    }
    let skills = by_skill.len().max(1);
    let quota = ((config.max_skill_share * config.examples as f32).floor() as usize).max(1);
    // An even split first, capped by the quota; leftovers go to skills that have more.
    let even = (config.examples / skills).min(quota);
    let mut accepted = Vec::new();
    let mut spare: Vec<Candidate> = Vec::new();
    for (skill, mut cands) in by_skill {
        // Ties (typically: never solved) go to the easier level, the nearer step from what the
        // model can already do.
        cands.sort_by(|a, b| {
            (distance(a.pass_rate), (a.pass_rate - middle).abs(), a.problem.level)
                .partial_cmp(&(distance(b.pass_rate), (b.pass_rate - middle).abs(), b.problem.level))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let stats = per_skill.get_mut(&skill).expect("skill seen while synthesizing");
        stats.in_window = cands.iter().filter(|c| distance(c.pass_rate) == 0.0).count();
        if !cands.is_empty() {
            stats.mean_pass_rate = Some(cands.iter().map(|c| c.pass_rate as f64).sum::<f64>() / cands.len() as f64);
        }
        let rest = cands.split_off(even.min(cands.len()));
        accepted.extend(cands);
        spare.extend(rest.into_iter().take(quota - even));
    }
    let room = config.examples.saturating_sub(accepted.len());
    spare.sort_by(|a, b| distance(a.pass_rate).partial_cmp(&distance(b.pass_rate)).unwrap_or(std::cmp::Ordering::Equal));
    accepted.extend(spare.into_iter().take(room));
    for c in &accepted {
        if let Some(s) = per_skill.get_mut(&c.problem.skill) {
            s.accepted += 1;
        }
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;
    use evolve_tasks::Target;

    fn cand(skill: &str, i: usize, pass_rate: f32) -> Candidate {
        Candidate { problem: Problem { skill: skill.into(), level: 1, prompt: format!("{skill}{i}="), target: Target::Text("1".into()), knobs: vec![] }, pass_rate }
    }

    #[test]
    fn quota_caps_every_skill_and_window_comes_first() {
        let config = SynthesisConfig { mutations_per_failure: 1, samples_k: 4, temperature: 1.0, window: (0.25, 0.75), examples: 100, max_skill_share: 0.4 };
        let mut scored: Vec<Candidate> = (0..500).map(|i| cand("a", i, if i % 2 == 0 { 0.5 } else { 0.0 })).collect();
        scored.extend((0..10).map(|i| cand("b", i, 1.0)));
        let mut stats = BTreeMap::new();
        for s in ["a", "b"] {
            stats.insert(s.to_string(), SkillSynthesis { skill: s.into(), ..Default::default() });
        }
        let accepted = select_within_quota(scored, &config, &mut stats);
        let a: Vec<_> = accepted.iter().filter(|c| c.problem.skill == "a").collect();
        assert_eq!(a.len(), 40, "skill a is capped at 40% of 100");
        assert!(a.iter().all(|c| c.pass_rate == 0.5), "in-window candidates are taken first");
        assert_eq!(accepted.iter().filter(|c| c.problem.skill == "b").count(), 10);
        assert_eq!(stats["a"].in_window, 250);
    }
}
