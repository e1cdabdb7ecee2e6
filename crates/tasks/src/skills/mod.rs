//! One module per skill, plus the plumbing they share.

use rand::RngCore;

use crate::rng::below;
use crate::{MAX_PROMPT_BYTES, MAX_TARGET_BYTES, Problem, Skill, Target};

pub mod addition;
pub mod brackets;
pub mod counting;
pub mod multiplication;
pub mod refusal;
pub mod reversal;
pub mod sorting;
pub mod stack;

pub(crate) fn make(skill: &str, level: u32, prompt: String, target: Target, knobs: &[(&str, i64)]) -> Problem {
    Problem {
        skill: skill.to_string(),
        level,
        prompt,
        target,
        knobs: knobs.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
    }
}

/// The body between a fixed prefix and the delimiter; `None` if the frame is wrong or empty.
pub(crate) fn strip_frame<'a>(prompt: &'a str, prefix: &str, delim: char) -> Option<&'a str> {
    let body = prompt.strip_prefix(prefix)?.strip_suffix(delim)?;
    (!body.is_empty()).then_some(body)
}

pub(crate) fn clamp_level(level: u32, max: u32) -> u32 {
    level.clamp(1, max)
}

/// The level a mutated problem is filed under: its natural level, but never easier than the
/// parent (the neighbour of a failure is at least as hard) and at most one step harder (so a
/// mutation is a neighbour, not a jump). `None` when the mutation overshoots.
pub(crate) fn mutated_level(parent: u32, natural: u32, max: u32) -> Option<u32> {
    let lo = clamp_level(parent, max);
    let hi = (lo + 1).min(max);
    (natural <= hi).then_some(natural.max(lo))
}

/// Whether a problem respects the size and alphabet limits every consumer relies on.
pub(crate) fn within_limits(p: &Problem) -> bool {
    let target_ok = match &p.target {
        Target::Text(t) => t.is_ascii() && t.len() <= MAX_TARGET_BYTES,
        Target::Refuse => true,
    };
    p.prompt.is_ascii() && p.prompt.len() <= MAX_PROMPT_BYTES && target_ok
}

/// Tries the operators starting from a random one until one applies, then tags the result.
/// Operators return `None` when they cannot apply (e.g. lengthening at the top level), so
/// a skill only has to guarantee that *some* operator always applies.
pub(crate) fn mutate_with(
    skill: &dyn Skill,
    parent: &Problem,
    n_ops: usize,
    rng: &mut dyn RngCore,
    mut op: impl FnMut(usize, &mut dyn RngCore) -> Option<Problem>,
) -> Problem {
    let start = below(rng, n_ops);
    for i in 0..n_ops {
        let index = (start + i) % n_ops;
        if let Some(mut p) = op(index, rng)
            && within_limits(&p)
        {
            p.knobs.push(("op".to_string(), index as i64));
            return p;
        }
    }
    // Only reachable for a parent this skill could not have produced: a fresh problem at the
    // parent's level is the nearest honest neighbour.
    let mut p = skill.generate(parent.level, rng);
    p.knobs.push(("op".to_string(), -1));
    p
}
