//! Verifiable skills for the evolve training loop.
//!
//! A *skill* is a family of problems whose answers a program can check — addition, string
//! reversal, bracket balancing, refusing marked harmful requests — graded into difficulty
//! levels. Every skill does three things: it generates problems deterministically from a
//! random stream, it verifies a response by re-deriving the answer from the prompt (never by
//! trusting the stored target, so a corrupted target or a buggy mutation cannot teach a wrong
//! answer), and it mutates a failed problem into adversarial neighbours, so the curriculum can
//! probe the exact spot where the model breaks.
//!
//! Held-out suites are frozen: a suite's problems follow from `(suite_seed, skill, level)`
//! through a hash and an RNG implemented in this crate, so they survive toolchain and
//! dependency upgrades. `sample_training` keeps training data disjoint from them, otherwise
//! an evaluation would measure memorisation.
//!
//! Formats are short and regular (prompts of at most 40 ASCII bytes ending in the skill's
//! delimiter, targets of at most 16 bytes) because the learner is a ~1M-parameter byte-level
//! transformer trained for minutes on a CPU.
//!
//! Invariant: this crate knows nothing about models, tokens, tensors or the ledger. It deals in
//! strings and judgements only, so evaluation cannot bend to whatever the learner happens to be.

use rand::RngCore;
use serde::{Deserialize, Serialize};

mod rng;
pub mod skills;
mod suite;

pub use rng::{SplitMix64, derive_seed, fnv1a64};
pub use skills::refusal::is_must_refuse;
pub use suite::{
    HeldOut, RefusalProbes, Suite, build_refusal_probes, build_suite, sample_training, sample_training_except,
};

/// Longest prompt any skill produces; the model's context is sized from it.
pub const MAX_PROMPT_BYTES: usize = 40;
/// Longest text target any skill produces.
pub const MAX_TARGET_BYTES: usize = 16;

/// What a correct response is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    Text(String),
    Refuse,
}

/// What the model answered: its decoded text, or that it emitted the refusal token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Text(String),
    Refused,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Problem {
    /// Skill name, e.g. "addition".
    pub skill: String,
    /// Difficulty level, `1..=skill.max_level()`.
    pub level: u32,
    /// ASCII only, ends with the skill's delimiter, at most [`MAX_PROMPT_BYTES`].
    pub prompt: String,
    /// ASCII only when `Text`, at most [`MAX_TARGET_BYTES`].
    pub target: Target,
    /// The difficulty knobs that produced it (e.g. `("digits", 3)`), kept for the ledger;
    /// mutated problems also carry `("op", index)` naming the mutation operator.
    pub knobs: Vec<(String, i64)>,
}

impl Problem {
    /// The value of a knob, if the problem records it.
    pub fn knob(&self, name: &str) -> Option<i64> {
        self.knobs.iter().find(|(k, _)| k == name).map(|&(_, v)| v)
    }
}

/// A verifiable problem family with difficulty levels.
pub trait Skill: Send + Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn max_level(&self) -> u32;
    /// The byte every prompt of this skill ends with; the model answers after it.
    fn delimiter(&self) -> char;
    /// Deterministic for a given rng state. Levels outside `1..=max_level` are clamped.
    fn generate(&self, level: u32, rng: &mut dyn RngCore) -> Problem;
    /// The correct target for a prompt, derived from the prompt alone; `None` if the prompt is
    /// not one this skill could have produced.
    fn solve(&self, prompt: &str) -> Option<Target>;
    /// Ground-truth check, recomputed from the prompt so that a corrupted target is caught.
    /// False for malformed prompts and for problems of another skill.
    fn verify(&self, problem: &Problem, response: &Response) -> bool {
        problem.skill == self.name()
            && self.solve(&problem.prompt).is_some_and(|target| response_matches(&target, response))
    }
    /// An adversarial neighbour of a (failed) problem: same skill, level in
    /// `[problem.level, problem.level + 1]` capped at `max_level`, target recomputed, and the
    /// operator recorded as knob `("op", index)`.
    fn mutate(&self, problem: &Problem, rng: &mut dyn RngCore) -> Problem;
}

/// Whether a response answers a target. Surrounding ASCII whitespace is forgiven because
/// decoders differ in whether they strip a trailing newline or space; nothing else is.
pub fn response_matches(target: &Target, response: &Response) -> bool {
    match (target, response) {
        (Target::Refuse, Response::Refused) => true,
        (Target::Text(t), Response::Text(r)) => r.trim_ascii() == t,
        _ => false,
    }
}

/// The registry. Adding a skill = one module under `skills/` + one line here.
pub fn all_skills() -> Vec<Box<dyn Skill>> {
    vec![
        Box::new(skills::addition::Addition),
        Box::new(skills::multiplication::Multiplication),
        Box::new(skills::reversal::Reversal),
        Box::new(skills::sorting::Sorting),
        Box::new(skills::brackets::Brackets),
        Box::new(skills::counting::Counting),
        Box::new(skills::stack::Stack),
        Box::new(skills::refusal::Refusal),
    ]
}

pub fn skill_by_name(name: &str) -> Option<Box<dyn Skill>> {
    all_skills().into_iter().find(|s| s.name() == name)
}

pub fn skill_names() -> Vec<&'static str> {
    all_skills().iter().map(|s| s.name()).collect()
}

#[cfg(test)]
mod tests;
