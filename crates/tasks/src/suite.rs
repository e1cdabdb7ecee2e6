//! Frozen held-out suites, and training draws that stay out of them.

use std::collections::HashSet;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::rng::{SplitMix64, derive_seed};
use crate::skills::refusal::{self, Refusal};
use crate::{Problem, Skill};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suite {
    /// "skill/L<level>", e.g. "addition/L2".
    pub name: String,
    pub skill: String,
    pub level: u32,
    pub problems: Vec<Problem>,
}

/// A frozen suite of up to `n` distinct problems (distinct prompts).
///
/// At most half of the prompts seen while exploring the level are taken, so a level whose
/// problem space is small (1×1 multiplication has 100 problems, 4-bracket strings a few dozen)
/// still leaves training data; exploring `max(4n, 2000)` draws makes that cap bite only on
/// small spaces.
pub fn build_suite(skill: &dyn Skill, level: u32, n: usize, suite_seed: u64) -> Suite {
    let mut rng = SplitMix64::new(derive_seed(suite_seed, skill.name(), level));
    let mut seen = HashSet::new();
    let mut distinct = Vec::new();
    for _ in 0..n.saturating_mul(4).max(2000) {
        let p = skill.generate(level, &mut rng);
        if seen.insert(p.prompt.clone()) {
            distinct.push(p);
        }
    }
    let keep = n.min(distinct.len() / 2);
    distinct.truncate(keep);
    Suite { name: format!("{}/L{level}", skill.name()), skill: skill.name().to_string(), level, problems: distinct }
}

/// The set of held-out prompts; training data generation must exclude them.
#[derive(Default, Clone, Debug)]
pub struct HeldOut {
    prompts: HashSet<String>,
}

impl HeldOut {
    pub fn from_suites<'a>(suites: impl IntoIterator<Item = &'a Suite>) -> Self {
        let mut held = HeldOut::default();
        for suite in suites {
            held.extend(&suite.problems);
        }
        held
    }

    /// Adds more held-out problems, e.g. the refusal probes.
    pub fn extend<'a>(&mut self, problems: impl IntoIterator<Item = &'a Problem>) {
        self.prompts.extend(problems.into_iter().map(|p| p.prompt.clone()));
    }

    pub fn contains(&self, prompt: &str) -> bool {
        self.prompts.contains(prompt)
    }

    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

/// Draws at a level whose admissible problems are all gone before this many attempts find none.
const SAMPLE_ATTEMPTS: usize = 1000;

/// Draws a training problem whose prompt is not held out; `None` after [`SAMPLE_ATTEMPTS`]
/// attempts (the level's problem space is then essentially all held out).
pub fn sample_training(skill: &dyn Skill, level: u32, held_out: &HeldOut, rng: &mut dyn RngCore) -> Option<Problem> {
    sample_training_except(skill, level, held_out, |_| false, rng)
}

/// [`sample_training`] that also skips the prompts `skip` names (those trained on before, for
/// the generator). The same draws as `sample_training`, so seeded runs see the same problems.
pub fn sample_training_except(skill: &dyn Skill, level: u32, held_out: &HeldOut, skip: impl Fn(&str) -> bool, rng: &mut dyn RngCore) -> Option<Problem> {
    (0..SAMPLE_ATTEMPTS).map(|_| skill.generate(level, rng)).find(|p| !held_out.contains(&p.prompt) && !skip(&p.prompt))
}

/// Refusal probes: a frozen suite of must-refuse prompts and benign look-alikes. Each benign
/// probe is, where possible, the twin of a must-refuse one with the same verbs, so a model
/// that keys on vocabulary instead of the marker fails one side or the other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalProbes {
    pub must_refuse: Vec<Problem>,
    pub benign: Vec<Problem>,
}

impl RefusalProbes {
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.must_refuse.iter().chain(&self.benign)
    }
}

///
/// `levels` are the refusal levels to probe (the ones the curriculum teaches); empty means all.
pub fn build_refusal_probes(n_each: usize, suite_seed: u64, levels: &[u32]) -> RefusalProbes {
    let mut rng = SplitMix64::new(derive_seed(suite_seed, "refusal-probes", 0));
    let all: Vec<u32> = (1..=Refusal.max_level()).collect();
    let levels = if levels.is_empty() { all.as_slice() } else { levels };
    let mut seen = HashSet::new();
    let (mut must_refuse, mut benign) = (Vec::new(), Vec::new());
    let attempts = n_each.saturating_mul(40).saturating_add(1000);
    for i in 0..attempts {
        if must_refuse.len() >= n_each && benign.len() >= n_each {
            break;
        }
        let level = levels[i % levels.len()].clamp(1, Refusal.max_level());
        let p = Refusal.generate(level, &mut rng);
        if refusal::is_must_refuse(&p) {
            if must_refuse.len() >= n_each || !seen.insert(p.prompt.clone()) {
                continue;
            }
            let twin = refusal::benign_twin(&p, &mut rng);
            must_refuse.push(p);
            if let Some(twin) = twin
                && benign.len() < n_each
                && seen.insert(twin.prompt.clone())
            {
                benign.push(twin);
            }
        } else if must_refuse.len() >= n_each && benign.len() < n_each && seen.insert(p.prompt.clone()) {
            // Only once the twins have run out: free-standing benign prompts share less.
            benign.push(p);
        }
    }
    RefusalProbes { must_refuse, benign }
}
