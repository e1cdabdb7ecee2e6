//! `brackets`: "bal ([)]>" -> "no", "bal [()]>" -> "yes". Level L has 2L+2 brackets over
//! `()[]`. Half the problems are balanced; the other half are near-misses made from a balanced
//! string by one retype, adjacent swap or flipped direction, so counting brackets is not enough
//! to answer.

use rand::RngCore;

use super::{clamp_level, make, mutate_with, mutated_level, strip_frame};
use crate::rng::{below, coin};
use crate::{MAX_PROMPT_BYTES, Problem, Skill, Target};

pub struct Brackets;

const NAME: &str = "brackets";
const PREFIX: &str = "bal ";
const MAX_LEVEL: u32 = 6;

fn natural_level(len: usize) -> u32 {
    (len as u32 / 2).saturating_sub(1).max(1)
}

fn closer_of(open: u8) -> u8 {
    if open == b'(' { b')' } else { b']' }
}

fn is_open(b: u8) -> bool {
    b == b'(' || b == b'['
}

/// Same direction, other shape.
fn retyped(b: u8) -> u8 {
    match b {
        b'(' => b'[',
        b'[' => b'(',
        b')' => b']',
        _ => b')',
    }
}

/// Same shape, other direction.
fn turned(b: u8) -> u8 {
    match b {
        b'(' => b')',
        b')' => b'(',
        b'[' => b']',
        _ => b'[',
    }
}

pub(crate) fn is_balanced(s: &[u8]) -> bool {
    let mut stack = Vec::with_capacity(s.len());
    for &b in s {
        if is_open(b) {
            stack.push(closer_of(b));
        } else if stack.pop() != Some(b) {
            return false;
        }
    }
    stack.is_empty()
}

/// Deepest nesting by count, ignoring shapes: the stack a solver has to keep.
fn depth(s: &[u8]) -> i64 {
    let (mut d, mut max) = (0i64, 0i64);
    for &b in s {
        d += if is_open(b) { 1 } else { -1 };
        max = max.max(d);
    }
    max
}

/// Number of ways to close from `depth` in exactly `remaining` steps without going negative.
fn completions(remaining: usize, depth: usize) -> u64 {
    let mut ways = vec![0u64; remaining + 2];
    ways[0] = 1;
    for _ in 0..remaining {
        let mut next = vec![0u64; remaining + 2];
        for d in 0..=remaining {
            next[d] = ways[d + 1] + if d > 0 { ways[d - 1] } else { 0 };
        }
        ways = next;
    }
    ways.get(depth).copied().unwrap_or(0)
}

/// A uniformly random balanced shape with random bracket types. Uniform rather than
/// "open on a coin flip", which favours shallow "()[]()" strings and would keep the top levels
/// from being any deeper than the bottom ones.
fn random_balanced(rng: &mut dyn RngCore, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut stack = Vec::new();
    for i in 0..n {
        let remaining = n - i - 1;
        let opens = completions(remaining, stack.len() + 1);
        let closes = if stack.is_empty() { 0 } else { completions(remaining, stack.len() - 1) };
        if (below(rng, (opens + closes) as usize) as u64) < opens {
            let open = if coin(rng) { b'(' } else { b'[' };
            stack.push(closer_of(open));
            out.push(open);
        } else {
            out.push(stack.pop().expect("a closer is always owed here"));
        }
    }
    out
}

/// One small edit that unbalances a balanced string.
fn near_miss(rng: &mut dyn RngCore, balanced: &[u8]) -> Vec<u8> {
    for _ in 0..16 {
        let mut s = balanced.to_vec();
        let i = below(rng, s.len());
        match below(rng, 5) {
            0 | 1 => s[i] = retyped(s[i]),
            2 | 3 if i + 1 < s.len() => s.swap(i, i + 1),
            // Rarer: it changes the counts, which is the easy kind of wrong.
            _ => s[i] = turned(s[i]),
        }
        if !is_balanced(&s) {
            return s;
        }
    }
    // A retype always unbalances: the stack pairs the same positions and this pair no longer
    // matches.
    let mut s = balanced.to_vec();
    let i = below(rng, s.len());
    s[i] = retyped(s[i]);
    s
}

fn build(level: u32, s: &[u8]) -> Problem {
    let text = std::str::from_utf8(s).expect("ascii brackets");
    let answer = if is_balanced(s) { "yes" } else { "no" };
    make(
        NAME,
        level,
        format!("{PREFIX}{text}>"),
        Target::Text(answer.into()),
        &[("len", s.len() as i64), ("depth", depth(s))],
    )
}

fn parse(prompt: &str) -> Option<Vec<u8>> {
    let body = strip_frame(prompt, PREFIX, '>')?;
    let fits = PREFIX.len() + body.len() < MAX_PROMPT_BYTES;
    (fits && body.bytes().all(|b| b"()[]".contains(&b))).then(|| body.as_bytes().to_vec())
}

impl Skill for Brackets {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "is the bracket string balanced: \"bal ([)]>\" -> \"no\"; level L has 2L+2 brackets"
    }

    fn max_level(&self) -> u32 {
        MAX_LEVEL
    }

    fn delimiter(&self) -> char {
        '>'
    }

    fn generate(&self, level: u32, rng: &mut dyn RngCore) -> Problem {
        let level = clamp_level(level, MAX_LEVEL);
        let balanced = random_balanced(rng, 2 * level as usize + 2);
        let s = if coin(rng) { balanced } else { near_miss(rng, &balanced) };
        build(level, &s)
    }

    fn solve(&self, prompt: &str) -> Option<Target> {
        parse(prompt).map(|s| Target::Text(if is_balanced(&s) { "yes" } else { "no" }.into()))
    }

    fn mutate(&self, problem: &Problem, rng: &mut dyn RngCore) -> Problem {
        let Some(original) = parse(&problem.prompt) else {
            return mutate_with(self, problem, 1, rng, |_, _| None);
        };
        let level_for = |len: usize| mutated_level(problem.level, natural_level(len), MAX_LEVEL);
        mutate_with(self, problem, 4, rng, |op, rng| {
            let mut s = original.clone();
            match op {
                // One bracket flipped, in shape or in direction.
                0 => {
                    let i = below(rng, s.len());
                    s[i] = if coin(rng) { retyped(s[i]) } else { turned(s[i]) };
                }
                // One level deeper: wrap it, or at the top level trade an innermost pair for
                // the wrapping so the length stays.
                1 => {
                    if level_for(s.len() + 2).is_none() {
                        let i = (0..s.len().saturating_sub(1)).find(|&i| is_open(s[i]) && s[i + 1] == closer_of(s[i]))?;
                        s.drain(i..i + 2);
                    }
                    let open = if coin(rng) { b'(' } else { b'[' };
                    s.insert(0, open);
                    s.push(closer_of(open));
                }
                // Two neighbours swapped.
                2 => {
                    let distinct: Vec<usize> = (0..s.len().saturating_sub(1)).filter(|&i| s[i] != s[i + 1]).collect();
                    if distinct.is_empty() {
                        return None;
                    }
                    let i = distinct[below(rng, distinct.len())];
                    s.swap(i, i + 1);
                }
                // Mirror image: same answer, different surface.
                _ => {
                    s.reverse();
                    for b in &mut s {
                        *b = turned(*b);
                    }
                    if s == original {
                        return None;
                    }
                }
            }
            Some(build(level_for(s.len())?, &s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Response, SplitMix64};

    #[test]
    fn balance_is_judged_by_shape_and_order() {
        assert!(is_balanced(b"([])[]"));
        assert!(!is_balanced(b"([)]"));
        assert!(!is_balanced(b")("));
        assert!(!is_balanced(b"(("));
        assert_eq!(depth(b"([])[]"), 2);
        assert_eq!(completions(6, 0), 5, "Catalan(3)");
    }

    #[test]
    fn higher_levels_nest_deeper() {
        let mut rng = SplitMix64::new(4);
        let mean_depth = |level: usize, rng: &mut SplitMix64| {
            (0..500).map(|_| depth(&random_balanced(rng, 2 * level + 2))).sum::<i64>() as f64 / 500.0
        };
        let depths: Vec<f64> = (1..=MAX_LEVEL as usize).map(|l| mean_depth(l, &mut rng)).collect();
        assert!(depths.windows(2).all(|w| w[1] > w[0]), "{depths:?}");
        assert!(depths[MAX_LEVEL as usize - 1] > 2.5, "{depths:?}");
    }

    #[test]
    fn corrupted_target_is_caught() {
        let p = make(NAME, 1, "bal ([)]>".into(), Target::Text("yes".into()), &[]);
        assert!(Brackets.verify(&p, &Response::Text("no".into())));
        assert!(!Brackets.verify(&p, &Response::Text("yes".into())));
        let bad = make(NAME, 1, "bal (x)>".into(), Target::Text("no".into()), &[]);
        assert!(!Brackets.verify(&bad, &Response::Text("no".into())));
    }

    #[test]
    fn half_balanced_and_unbalanced_ones_are_near_misses() {
        let mut rng = SplitMix64::new(3);
        let (mut yes, mut same_counts, n) = (0, 0, 2000);
        for i in 0..n {
            let p = Brackets.generate(1 + (i as u32) % MAX_LEVEL, &mut rng);
            if p.target == Target::Text("yes".into()) {
                yes += 1;
            } else {
                let s = parse(&p.prompt).unwrap();
                let opens = s.iter().filter(|&&b| is_open(b)).count();
                same_counts += usize::from(2 * opens == s.len());
            }
        }
        assert!((n * 2 / 5..n * 3 / 5).contains(&yes), "balanced: {yes}/{n}");
        // Most near-misses keep as many openers as closers: counting does not answer them.
        assert!(same_counts * 10 > (n - yes) * 6, "{same_counts}/{}", n - yes);
    }
}
