//! `counting`: how often a letter occurs in a string, asked in one of two formats:
//! "cnt b: abcab?" or "how many b in abcab?" -> "2". Level L has 2L+3 letters over `a..e`.
//! The two formats are the family's format variants (knob `format`): the same question in
//! another surface, so the generator's per-format quota has something to balance and a model
//! that only learned one phrasing is caught.

use rand::RngCore;

use super::{clamp_level, make, mutate_with, mutated_level};
use crate::rng::{below, coin, range};
use crate::{MAX_PROMPT_BYTES, Problem, Skill, Target};

pub struct Counting;

const NAME: &str = "counting";
const MAX_LEVEL: u32 = 6;
const ALPHABET: &[u8] = b"abcde";
/// `(prefix, middle)` of each format: `{prefix}{letter}{middle}{string}?`.
const FORMATS: [(&str, &str); 2] = [("cnt ", ": "), ("how many ", " in ")];

fn natural_level(len: usize) -> u32 {
    (len.saturating_sub(3) as u32 / 2).max(1)
}

fn count(letter: u8, s: &[u8]) -> usize {
    s.iter().filter(|&&b| b == letter).count()
}

fn build(level: u32, format: usize, letter: u8, s: &[u8]) -> Problem {
    let (prefix, middle) = FORMATS[format];
    let text = std::str::from_utf8(s).expect("ascii letters");
    let n = count(letter, s);
    make(
        NAME,
        level,
        format!("{prefix}{}{middle}{text}?", letter as char),
        Target::Text(n.to_string()),
        &[("len", s.len() as i64), ("format", format as i64), ("count", n as i64)],
    )
}

/// `(format, letter, string)`.
fn parse(prompt: &str) -> Option<(usize, u8, Vec<u8>)> {
    if prompt.len() > MAX_PROMPT_BYTES {
        return None;
    }
    let body = prompt.strip_suffix('?')?;
    FORMATS.iter().enumerate().find_map(|(format, (prefix, middle))| {
        let rest = body.strip_prefix(prefix)?;
        let (&letter, rest) = rest.as_bytes().split_first()?;
        let s = std::str::from_utf8(rest).ok()?.strip_prefix(middle)?.as_bytes();
        let valid = ALPHABET.contains(&letter) && !s.is_empty() && s.iter().all(|b| ALPHABET.contains(b));
        valid.then(|| (format, letter, s.to_vec()))
    })
}

fn random_letter(rng: &mut dyn RngCore) -> u8 {
    ALPHABET[below(rng, ALPHABET.len())]
}

impl Skill for Counting {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "count a letter: \"cnt b: abcab?\" or \"how many b in abcab?\" -> \"2\"; level L has 2L+3 letters"
    }

    fn max_level(&self) -> u32 {
        MAX_LEVEL
    }

    fn delimiter(&self) -> char {
        '?'
    }

    fn generate(&self, level: u32, rng: &mut dyn RngCore) -> Problem {
        let level = clamp_level(level, MAX_LEVEL);
        let s: Vec<u8> = (0..2 * level as usize + 3).map(|_| random_letter(rng)).collect();
        let format = usize::from(coin(rng));
        build(level, format, random_letter(rng), &s)
    }

    fn solve(&self, prompt: &str) -> Option<Target> {
        parse(prompt).map(|(_, letter, s)| Target::Text(count(letter, &s).to_string()))
    }

    fn mutate(&self, problem: &Problem, rng: &mut dyn RngCore) -> Problem {
        let Some((format, letter, original)) = parse(&problem.prompt) else {
            return mutate_with(self, problem, 1, rng, |_, _| None);
        };
        mutate_with(self, problem, 5, rng, |op, rng| {
            let (mut format, mut letter, mut s) = (format, letter, original.clone());
            match op {
                // One occurrence more or fewer: the count moves by one.
                0 => {
                    let i = below(rng, s.len());
                    s[i] = if s[i] == letter { ALPHABET[(ALPHABET.iter().position(|&b| b == letter)? + range(rng, 1, 4)) % 5] } else { letter };
                }
                // Two letters longer.
                1 => {
                    for _ in 0..2 {
                        s.insert(below(rng, s.len() + 1), random_letter(rng));
                    }
                }
                // Another letter asked about in the same string.
                2 => letter = ALPHABET[(ALPHABET.iter().position(|&b| b == letter)? + range(rng, 1, 4)) % 5],
                // The other phrasing: same answer, other surface.
                3 => format = 1 - format,
                // Two different neighbours swapped: same answer, other string.
                _ => {
                    let pairs: Vec<usize> = (0..s.len() - 1).filter(|&i| s[i] != s[i + 1]).collect();
                    if pairs.is_empty() {
                        return None;
                    }
                    let i = pairs[below(rng, pairs.len())];
                    s.swap(i, i + 1);
                }
            }
            Some(build(mutated_level(problem.level, natural_level(s.len()), MAX_LEVEL)?, format, letter, &s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Response, SplitMix64};

    #[test]
    fn both_formats_ask_the_same_question() {
        assert_eq!(Counting.solve("cnt b: abcab?"), Some(Target::Text("2".into())));
        assert_eq!(Counting.solve("how many b in abcab?"), Some(Target::Text("2".into())));
        assert_eq!(Counting.solve("how many b: abcab?"), None, "formats do not mix");
        assert_eq!(Counting.solve("cnt z: abcab?"), None);
        assert_eq!(Counting.solve("cnt b: ?"), None);
    }

    #[test]
    fn formats_are_balanced_and_counts_vary() {
        let mut rng = SplitMix64::new(8);
        let problems: Vec<Problem> = (0..1000).map(|_| Counting.generate(2, &mut rng)).collect();
        let second = problems.iter().filter(|p| p.knob("format") == Some(1)).count();
        assert!((400..600).contains(&second), "{second}");
        let zero = problems.iter().filter(|p| p.knob("count") == Some(0)).count();
        assert!(zero < 400, "answers are not mostly 0: {zero}");
    }

    #[test]
    fn corrupted_target_is_caught() {
        let p = make(NAME, 1, "cnt a: aabaa?".into(), Target::Text("3".into()), &[]);
        assert!(Counting.verify(&p, &Response::Text("4".into())));
        assert!(!Counting.verify(&p, &Response::Text("3".into())));
    }
}
