//! `addition`: "123+45=" -> "168". Level L: the longer operand has L+1 digits (level 1: one or
//! two); the other has 1..=that many. Carries are what a small model gets wrong, so they are a
//! knob and the mutators aim at them.

use rand::RngCore;

use super::{clamp_level, make, mutate_with, mutated_level, strip_frame};
use crate::rng::{below, coin, range};
use crate::{Problem, Skill, Target};

pub struct Addition;

const NAME: &str = "addition";
const MAX_LEVEL: u32 = 5;
/// Sums of two 18-digit numbers fit in u64; longer operands are malformed for us anyway.
const MAX_OPERAND_DIGITS: usize = 18;

fn natural_level(digits: usize) -> u32 {
    (digits as u32).saturating_sub(1).max(1)
}

pub(crate) fn n_digits(x: u64) -> usize {
    x.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// A number with exactly `digits` digits (a single digit may be 0).
pub(crate) fn random_number(rng: &mut dyn RngCore, digits: usize) -> u64 {
    if digits == 1 {
        return below(rng, 10) as u64;
    }
    let mut x = range(rng, 1, 9) as u64;
    for _ in 1..digits {
        x = x * 10 + below(rng, 10) as u64;
    }
    x
}

pub(crate) fn parse_number(s: &str, max_digits: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Which columns (least significant first) produce a carry.
fn carry_pattern(mut a: u64, mut b: u64) -> Vec<bool> {
    let cols = n_digits(a).max(n_digits(b));
    let mut carry = 0;
    let mut out = Vec::with_capacity(cols);
    for _ in 0..cols {
        let s = a % 10 + b % 10 + carry;
        carry = u64::from(s >= 10);
        out.push(s >= 10);
        a /= 10;
        b /= 10;
    }
    out
}

fn build(level: u32, a: u64, b: u64) -> Problem {
    let carries = carry_pattern(a, b).iter().filter(|&&c| c).count();
    make(
        NAME,
        level,
        format!("{a}+{b}="),
        Target::Text((a + b).to_string()),
        &[("digits", n_digits(a).max(n_digits(b)) as i64), ("carries", carries as i64)],
    )
}

fn parse(prompt: &str) -> Option<(u64, u64)> {
    let (a, b) = strip_frame(prompt, "", '=')?.split_once('+')?;
    Some((parse_number(a, MAX_OPERAND_DIGITS)?, parse_number(b, MAX_OPERAND_DIGITS)?))
}

/// Digits allowed in column `col` of an operand `len` digits long; `None` past its end.
fn column_digits(col: usize, len: usize) -> Option<std::ops::RangeInclusive<u64>> {
    match col {
        c if c >= len => None,
        c if c == len - 1 && len > 1 => Some(1..=9),
        _ => Some(0..=9),
    }
}

/// Fresh operands of lengths `la`, `lb` whose columns carry exactly where `want` says.
/// `None` if the pattern is impossible (a carry out of a column only one operand reaches needs
/// a carry in and a 9).
fn operands_with_carries(la: usize, lb: usize, want: &[bool], rng: &mut dyn RngCore) -> Option<(u64, u64)> {
    let (mut a, mut b, mut scale, mut carry) = (0u64, 0u64, 1u64, 0u64);
    for (col, &want_carry) in want.iter().enumerate() {
        let da = column_digits(col, la);
        let db = column_digits(col, lb);
        let mut options = Vec::new();
        for x in da.clone().unwrap_or(0..=0) {
            for y in db.clone().unwrap_or(0..=0) {
                if (x + y + carry >= 10) == want_carry {
                    options.push((x, y));
                }
            }
        }
        if options.is_empty() {
            return None;
        }
        let (x, y) = options[below(rng, options.len())];
        carry = u64::from(x + y + carry >= 10);
        a += x * scale;
        b += y * scale;
        scale *= 10;
    }
    Some((a, b))
}

impl Skill for Addition {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "add two decimal numbers: \"123+45=\" -> \"168\"; level L has operands of up to L+1 digits"
    }

    fn max_level(&self) -> u32 {
        MAX_LEVEL
    }

    fn delimiter(&self) -> char {
        '='
    }

    fn generate(&self, level: u32, rng: &mut dyn RngCore) -> Problem {
        let level = clamp_level(level, MAX_LEVEL);
        // Exactly L+1 digits from level 2 on keeps the levels disjoint and strictly harder;
        // level 1 also admits the one-digit facts everything else is built on.
        let long = if level == 1 { range(rng, 1, 2) } else { level as usize + 1 };
        let short = range(rng, 1, long);
        let (x, y) = (random_number(rng, long), random_number(rng, short));
        let (a, b) = if coin(rng) { (x, y) } else { (y, x) };
        build(level, a, b)
    }

    fn solve(&self, prompt: &str) -> Option<Target> {
        parse(prompt).map(|(a, b)| Target::Text((a + b).to_string()))
    }

    fn mutate(&self, problem: &Problem, rng: &mut dyn RngCore) -> Problem {
        let Some((a, b)) = parse(&problem.prompt) else {
            return mutate_with(self, problem, 1, rng, |_, _| None);
        };
        let (la, lb) = (n_digits(a), n_digits(b));
        let carries = carry_pattern(a, b);
        let level_of = |a: u64, b: u64| mutated_level(problem.level, natural_level(n_digits(a).max(n_digits(b))), MAX_LEVEL);
        mutate_with(self, problem, 4, rng, |op, rng| match op {
            // Same carry pattern, new digits: did it learn carrying or memorise these digits?
            0 => {
                let (a, b) = operands_with_carries(la, lb, &carries, rng)?;
                Some(build(level_of(a, b)?, a, b))
            }
            // One operand a digit longer.
            1 => {
                let first = coin(rng);
                [first, !first].into_iter().find_map(|lengthen_a| {
                    let d = range(rng, 1, 9) as u64;
                    let (a, b) = if lengthen_a {
                        (d * 10u64.pow(la as u32) + a, b)
                    } else {
                        (a, d * 10u64.pow(lb as u32) + b)
                    };
                    Some(build(level_of(a, b)?, a, b))
                })
            }
            // One more carry, everything else about the carry pattern kept.
            2 => {
                let free: Vec<usize> = (0..carries.len()).filter(|&c| !carries[c]).collect();
                if free.is_empty() {
                    return None;
                }
                let mut want = carries.clone();
                want[free[below(rng, free.len())]] = true;
                let (a, b) = operands_with_carries(la, lb, &want, rng)?;
                Some(build(level_of(a, b)?, a, b))
            }
            // Operands swapped: addition is commutative, the model's attention need not be.
            _ => Some(build(level_of(b, a)?, b, a)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Response, SplitMix64};

    #[test]
    fn corrupted_target_is_caught() {
        let p = make(NAME, 1, "2+2=".into(), Target::Text("5".into()), &[]);
        assert!(Addition.verify(&p, &Response::Text("4".into())));
        assert!(!Addition.verify(&p, &Response::Text("5".into())));
        assert!(Addition.verify(&p, &Response::Text(" 4\n".into())));
        assert!(!Addition.verify(&p, &Response::Text("04".into())));
    }

    #[test]
    fn malformed_prompts_fail() {
        for prompt in ["2+2", "+2=", "2+=", "a+2=", "2-2=", "2+2+2=", "1234567890123456789+1="] {
            let p = make(NAME, 1, prompt.into(), Target::Text("4".into()), &[]);
            assert!(!Addition.verify(&p, &Response::Text("4".into())), "{prompt}");
        }
    }

    #[test]
    fn carries_are_counted() {
        assert_eq!(carry_pattern(999, 1), vec![true, true, true]);
        assert_eq!(carry_pattern(123, 45), vec![false, false, false]);
        assert_eq!(build(2, 95, 7).knob("carries"), Some(2));
    }

    #[test]
    fn same_carry_operator_keeps_the_pattern() {
        let mut rng = SplitMix64::new(5);
        for _ in 0..300 {
            let p = Addition.generate(4, &mut rng);
            let (a, b) = parse(&p.prompt).unwrap();
            let want = carry_pattern(a, b);
            let (x, y) = operands_with_carries(n_digits(a), n_digits(b), &want, &mut rng).unwrap();
            assert_eq!(carry_pattern(x, y), want);
            assert_eq!((n_digits(x), n_digits(y)), (n_digits(a), n_digits(b)));
        }
    }

    #[test]
    fn more_carries_operator_adds_a_carry() {
        let mut rng = SplitMix64::new(6);
        let mut seen = 0;
        for _ in 0..500 {
            let p = Addition.generate(3, &mut rng);
            let m = Addition.mutate(&p, &mut rng);
            if m.knob("op") == Some(2) {
                seen += 1;
                assert_eq!(m.knob("carries").unwrap(), p.knob("carries").unwrap() + 1);
            }
        }
        assert!(seen > 20);
    }
}
