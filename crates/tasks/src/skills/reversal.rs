//! `reversal`: "rev abc>" -> "cba". Level L reverses L+2 lowercase letters; the answer has to
//! be read off right to left, which a byte-level model cannot fake by copying.

use rand::RngCore;

use super::{clamp_level, make, mutate_with, mutated_level, strip_frame};
use crate::rng::{below, range};
use crate::{MAX_TARGET_BYTES, Problem, Skill, Target};

pub struct Reversal;

const NAME: &str = "reversal";
const PREFIX: &str = "rev ";
const MAX_LEVEL: u32 = 6;

fn natural_level(len: usize) -> u32 {
    (len as u32).saturating_sub(2).max(1)
}

fn random_letter(rng: &mut dyn RngCore) -> u8 {
    b'a' + below(rng, 26) as u8
}

fn reversed(s: &[u8]) -> String {
    s.iter().rev().map(|&b| b as char).collect()
}

fn build(level: u32, s: &[u8]) -> Problem {
    let text = std::str::from_utf8(s).expect("ascii letters");
    make(NAME, level, format!("{PREFIX}{text}>"), Target::Text(reversed(s)), &[("len", s.len() as i64)])
}

fn parse(prompt: &str) -> Option<Vec<u8>> {
    let body = strip_frame(prompt, PREFIX, '>')?;
    (body.len() <= MAX_TARGET_BYTES && body.bytes().all(|b| b.is_ascii_lowercase())).then(|| body.as_bytes().to_vec())
}

impl Skill for Reversal {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "reverse lowercase letters: \"rev abc>\" -> \"cba\"; level L has L+2 letters"
    }

    fn max_level(&self) -> u32 {
        MAX_LEVEL
    }

    fn delimiter(&self) -> char {
        '>'
    }

    fn generate(&self, level: u32, rng: &mut dyn RngCore) -> Problem {
        let level = clamp_level(level, MAX_LEVEL);
        let s: Vec<u8> = (0..level as usize + 2).map(|_| random_letter(rng)).collect();
        build(level, &s)
    }

    fn solve(&self, prompt: &str) -> Option<Target> {
        parse(prompt).map(|s| Target::Text(reversed(&s)))
    }

    fn mutate(&self, problem: &Problem, rng: &mut dyn RngCore) -> Problem {
        let Some(s) = parse(&problem.prompt) else {
            return mutate_with(self, problem, 1, rng, |_, _| None);
        };
        let finish = |s: Vec<u8>| Some(build(mutated_level(problem.level, natural_level(s.len()), MAX_LEVEL)?, &s));
        mutate_with(self, problem, 4, rng, |op, rng| {
            let mut s = s.clone();
            match op {
                // One letter changed.
                0 => {
                    let i = below(rng, s.len());
                    s[i] = b'a' + ((s[i] - b'a') as usize + range(rng, 1, 25)) as u8 % 26;
                }
                // One letter longer.
                1 => s.insert(below(rng, s.len() + 1), random_letter(rng)),
                // A run of repeated letters: position is easy to lose inside a run.
                2 => {
                    if s.len() < 2 {
                        return None;
                    }
                    let i = below(rng, s.len() - 1);
                    let run = range(rng, 2, 3).min(s.len() - i);
                    let c = s[i];
                    s[i..i + run].fill(c);
                    if s == parse(&problem.prompt)? {
                        return None;
                    }
                }
                // A near-palindrome: copying the input is almost, but not quite, right.
                _ => {
                    let n = s.len();
                    for i in 0..n / 2 {
                        s[n - 1 - i] = s[i];
                    }
                    let i = below(rng, n);
                    s[i] = b'a' + ((s[i] - b'a') as usize + range(rng, 1, 25)) as u8 % 26;
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
        let p = make(NAME, 1, "rev abc>".into(), Target::Text("abc".into()), &[]);
        assert!(Reversal.verify(&p, &Response::Text("cba".into())));
        assert!(!Reversal.verify(&p, &Response::Text("abc".into())));
        for bad in ["rev abc", "rev aBc>", "rv abc>", "rev >"] {
            let p = make(NAME, 1, bad.into(), Target::Text("cba".into()), &[]);
            assert!(!Reversal.verify(&p, &Response::Text("cba".into())), "{bad}");
        }
    }
}
