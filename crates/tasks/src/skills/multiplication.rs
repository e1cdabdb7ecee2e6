//! `multiplication`: "12*7=" -> "84". Levels by operand shape: 1×1, 2×1, 2×2, 3×2, 3×3 digits,
//! the longer operand first. The partial products grow with the shape, which is what makes a
//! level harder.

use rand::RngCore;

use super::addition::{n_digits, parse_number, random_number};
use super::{clamp_level, make, mutate_with, mutated_level, strip_frame};
use crate::rng::{below, coin, range};
use crate::{Problem, Skill, Target};

pub struct Multiplication;

const NAME: &str = "multiplication";
/// (digits of the longer operand, digits of the shorter) per level.
const SHAPES: [(usize, usize); 5] = [(1, 1), (2, 1), (2, 2), (3, 2), (3, 3)];
const MAX_LEVEL: u32 = SHAPES.len() as u32;
/// Keeps the product inside u64 for any prompt we accept.
const MAX_OPERAND_DIGITS: usize = 9;

/// The easiest level whose shape covers these operand lengths.
fn natural_level(la: usize, lb: usize) -> Option<u32> {
    let (hi, lo) = (la.max(lb), la.min(lb));
    SHAPES.iter().position(|&(h, l)| h >= hi && l >= lo).map(|i| i as u32 + 1)
}

fn build(level: u32, a: u64, b: u64) -> Problem {
    let (la, lb) = (n_digits(a), n_digits(b));
    make(
        NAME,
        level,
        format!("{a}*{b}="),
        Target::Text((a * b).to_string()),
        &[("digits", (la + lb) as i64), ("digits_a", la as i64), ("digits_b", lb as i64)],
    )
}

fn parse(prompt: &str) -> Option<(u64, u64)> {
    let (a, b) = strip_frame(prompt, "", '=')?.split_once('*')?;
    Some((parse_number(a, MAX_OPERAND_DIGITS)?, parse_number(b, MAX_OPERAND_DIGITS)?))
}

/// `x` with the digit at `pos` (0 = least significant) replaced by `d`.
fn with_digit(x: u64, pos: usize, d: u64) -> u64 {
    let scale = 10u64.pow(pos as u32);
    x - (x / scale % 10) * scale + d * scale
}

impl Skill for Multiplication {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "multiply two decimal numbers: \"12*7=\" -> \"84\"; levels 1x1, 2x1, 2x2, 3x2, 3x3 digits"
    }

    fn max_level(&self) -> u32 {
        MAX_LEVEL
    }

    fn delimiter(&self) -> char {
        '='
    }

    fn generate(&self, level: u32, rng: &mut dyn RngCore) -> Problem {
        let level = clamp_level(level, MAX_LEVEL);
        let (la, lb) = SHAPES[level as usize - 1];
        let a = random_number(rng, la);
        // Past level 1 a one-digit factor of 0 or 1 would make the problem trivial.
        let b = if lb == 1 && level > 1 { range(rng, 2, 9) as u64 } else { random_number(rng, lb) };
        build(level, a, b)
    }

    fn solve(&self, prompt: &str) -> Option<Target> {
        parse(prompt).map(|(a, b)| Target::Text((a * b).to_string()))
    }

    fn mutate(&self, problem: &Problem, rng: &mut dyn RngCore) -> Problem {
        let Some((a, b)) = parse(&problem.prompt) else {
            return mutate_with(self, problem, 1, rng, |_, _| None);
        };
        let level_of =
            |a: u64, b: u64| mutated_level(problem.level, natural_level(n_digits(a), n_digits(b))?, MAX_LEVEL);
        mutate_with(self, problem, 4, rng, |op, rng| match op {
            // One digit changed, shape kept.
            0 => {
                let on_a = coin(rng);
                let x = if on_a { a } else { b };
                let len = n_digits(x);
                let pos = below(rng, len);
                let lowest = if pos == len - 1 && len > 1 { 1 } else { 0 };
                let old = x / 10u64.pow(pos as u32) % 10;
                let choices: Vec<u64> = (lowest..=9).filter(|&d| d != old).collect();
                let x = with_digit(x, pos, choices[below(rng, choices.len())]);
                let (a, b) = if on_a { (x, b) } else { (a, x) };
                Some(build(level_of(a, b)?, a, b))
            }
            // One operand a digit longer.
            1 => {
                let first = coin(rng);
                [first, !first].into_iter().find_map(|lengthen_a| {
                    let d = range(rng, 1, 9) as u64;
                    let (a, b) = if lengthen_a {
                        (d * 10u64.pow(n_digits(a) as u32) + a, b)
                    } else {
                        (a, d * 10u64.pow(n_digits(b) as u32) + b)
                    };
                    Some(build(level_of(a, b)?, a, b))
                })
            }
            // Operands swapped: the short-first order never appears in generated data.
            2 => Some(build(level_of(b, a)?, b, a)),
            // Big digits, so partial products carry.
            _ => {
                let (mut x, mut y) = (a, b);
                for _ in 0..2 {
                    let on_a = coin(rng);
                    let v = if on_a { &mut x } else { &mut y };
                    let pos = below(rng, n_digits(*v));
                    *v = with_digit(*v, pos, range(rng, 7, 9) as u64);
                }
                if (x, y) == (a, b) {
                    return None;
                }
                Some(build(level_of(x, y)?, x, y))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Response;

    #[test]
    fn corrupted_target_is_caught() {
        let p = make(NAME, 1, "3*4=".into(), Target::Text("7".into()), &[]);
        assert!(Multiplication.verify(&p, &Response::Text("12".into())));
        assert!(!Multiplication.verify(&p, &Response::Text("7".into())));
    }

    #[test]
    fn shapes_map_to_levels() {
        assert_eq!(natural_level(1, 1), Some(1));
        assert_eq!(natural_level(1, 2), Some(2));
        assert_eq!(natural_level(3, 1), Some(4));
        assert_eq!(natural_level(4, 1), None);
        assert_eq!(with_digit(1234, 1, 9), 1294);
    }
}
