//! `sorting`: "sort 3142>" -> "1234". Level L sorts L+2 digits; duplicates are allowed and must
//! all be kept, which is where a model that merely dedupes is caught.

use rand::RngCore;

use super::{clamp_level, make, mutate_with, mutated_level, strip_frame};
use crate::rng::{below, range};
use crate::{MAX_TARGET_BYTES, Problem, Skill, Target};

pub struct Sorting;

const NAME: &str = "sorting";
const PREFIX: &str = "sort ";
const MAX_LEVEL: u32 = 6;

fn natural_level(len: usize) -> u32 {
    (len as u32).saturating_sub(2).max(1)
}

fn random_digit(rng: &mut dyn RngCore) -> u8 {
    b'0' + below(rng, 10) as u8
}

fn sorted(s: &[u8]) -> Vec<u8> {
    let mut s = s.to_vec();
    s.sort_unstable();
    s
}

fn text(s: &[u8]) -> String {
    String::from_utf8(s.to_vec()).expect("ascii digits")
}

fn build(level: u32, s: &[u8]) -> Problem {
    let mut distinct = s.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    make(
        NAME,
        level,
        format!("{PREFIX}{}>", text(s)),
        Target::Text(text(&sorted(s))),
        &[("len", s.len() as i64), ("distinct", distinct.len() as i64)],
    )
}

fn parse(prompt: &str) -> Option<Vec<u8>> {
    let body = strip_frame(prompt, PREFIX, '>')?;
    (body.len() <= MAX_TARGET_BYTES && body.bytes().all(|b| b.is_ascii_digit())).then(|| body.as_bytes().to_vec())
}

impl Skill for Sorting {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "sort digits ascending: \"sort 3142>\" -> \"1234\"; level L has L+2 digits"
    }

    fn max_level(&self) -> u32 {
        MAX_LEVEL
    }

    fn delimiter(&self) -> char {
        '>'
    }

    fn generate(&self, level: u32, rng: &mut dyn RngCore) -> Problem {
        let level = clamp_level(level, MAX_LEVEL);
        let s: Vec<u8> = (0..level as usize + 2).map(|_| random_digit(rng)).collect();
        build(level, &s)
    }

    fn solve(&self, prompt: &str) -> Option<Target> {
        parse(prompt).map(|s| Target::Text(text(&sorted(&s))))
    }

    fn mutate(&self, problem: &Problem, rng: &mut dyn RngCore) -> Problem {
        let Some(original) = parse(&problem.prompt) else {
            return mutate_with(self, problem, 1, rng, |_, _| None);
        };
        let finish = |s: Vec<u8>| Some(build(mutated_level(problem.level, natural_level(s.len()), MAX_LEVEL)?, &s));
        mutate_with(self, problem, 4, rng, |op, rng| {
            let mut s = original.clone();
            match op {
                // One digit changed.
                0 => {
                    let i = below(rng, s.len());
                    s[i] = b'0' + ((s[i] - b'0') as usize + range(rng, 1, 9)) as u8 % 10;
                }
                // One digit longer.
                1 => s.insert(below(rng, s.len() + 1), random_digit(rng)),
                // More duplicates: every copy must survive into the answer.
                2 => {
                    if s.len() < 2 {
                        return None;
                    }
                    let from = below(rng, s.len());
                    let to = (from + range(rng, 1, s.len() - 1)) % s.len();
                    if s[to] == s[from] {
                        return None;
                    }
                    s[to] = s[from];
                }
                // Almost sorted already: one adjacent pair out of order, tempting a copy.
                _ => {
                    s.sort_unstable();
                    let unequal: Vec<usize> = (0..s.len() - 1).filter(|&i| s[i] != s[i + 1]).collect();
                    if unequal.is_empty() {
                        return None;
                    }
                    let i = unequal[below(rng, unequal.len())];
                    s.swap(i, i + 1);
                    if s == original {
                        return None;
                    }
                }
            }
            finish(s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Response;

    #[test]
    fn corrupted_target_is_caught() {
        let p = make(NAME, 1, "sort 3142>".into(), Target::Text("1243".into()), &[]);
        assert!(Sorting.verify(&p, &Response::Text("1234".into())));
        assert!(!Sorting.verify(&p, &Response::Text("1243".into())));
        let dup = make(NAME, 1, "sort 3113>".into(), Target::Text("13".into()), &[]);
        assert!(Sorting.verify(&dup, &Response::Text("1133".into())));
        assert!(!Sorting.verify(&dup, &Response::Text("13".into())));
    }
}
