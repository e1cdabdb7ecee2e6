//! `stack`: run a program of a tiny stack language and answer the top of the stack:
//! "run 3 4 + 2 *;" -> "14". Tokens are single digits (push), `+ - *` (pop b, pop a, push
//! a op b), `d` (duplicate the top) and `s` (swap the top two). Level L has exactly L+1
//! operations, so the answer takes L+1 dependent steps: the multi-step family, where a model
//! that pattern-matches the last operation is caught.

use rand::RngCore;

use super::{clamp_level, make, mutate_with, mutated_level, strip_frame};
use crate::rng::{below, range};
use crate::{MAX_PROMPT_BYTES, Problem, Skill, Target};

pub struct Stack;

const NAME: &str = "stack";
const PREFIX: &str = "run ";
const MAX_LEVEL: u32 = 6;
/// Intermediate values stay within this magnitude, so answers stay short and learnable.
const MAX_VALUE: i64 = 9999;
/// The stack a generated program may build; deeper stacks need longer prompts than fit.
const MAX_DEPTH: usize = 4;

fn is_op(t: u8) -> bool {
    b"+-*ds".contains(&t)
}

fn ops_of(program: &[u8]) -> usize {
    program.iter().filter(|&&t| is_op(t)).count()
}

fn natural_level(ops: usize) -> u32 {
    (ops as u32).saturating_sub(1).max(1)
}

/// The stack after each token, or `None` on underflow or a value out of range.
fn run(program: &[u8]) -> Option<(i64, usize)> {
    let mut stack: Vec<i64> = Vec::with_capacity(8);
    let mut deepest = 0;
    for &t in program {
        match t {
            b'0'..=b'9' => stack.push(i64::from(t - b'0')),
            b'd' => stack.push(*stack.last()?),
            b's' => {
                let n = stack.len();
                if n < 2 {
                    return None;
                }
                stack.swap(n - 1, n - 2);
            }
            b'+' | b'-' | b'*' => {
                let b = stack.pop()?;
                let a = stack.pop()?;
                let v = match t {
                    b'+' => a + b,
                    b'-' => a - b,
                    _ => a * b,
                };
                if v.abs() > MAX_VALUE {
                    return None;
                }
                stack.push(v);
            }
            _ => return None,
        }
        deepest = deepest.max(stack.len());
    }
    stack.last().map(|&top| (top, deepest))
}

fn text(program: &[u8]) -> String {
    let tokens: Vec<String> = program.iter().map(|&t| (t as char).to_string()).collect();
    tokens.join(" ")
}

fn build(level: u32, program: &[u8]) -> Option<Problem> {
    let (top, deepest) = run(program)?;
    let prompt = format!("{PREFIX}{};", text(program));
    (prompt.len() <= MAX_PROMPT_BYTES).then(|| {
        make(
            NAME,
            level,
            prompt,
            Target::Text(top.to_string()),
            &[("ops", ops_of(program) as i64), ("depth", deepest as i64), ("pushes", program.iter().filter(|t| t.is_ascii_digit()).count() as i64)],
        )
    })
}

fn parse(prompt: &str) -> Option<Vec<u8>> {
    let body = strip_frame(prompt, PREFIX, ';')?;
    if prompt.len() > MAX_PROMPT_BYTES {
        return None;
    }
    let mut program = Vec::new();
    for token in body.split(' ') {
        let &[t] = token.as_bytes() else { return None };
        if !(t.is_ascii_digit() || is_op(t)) {
            return None;
        }
        program.push(t);
    }
    // A program whose last token is a push asks nothing to be computed.
    program.last().is_some_and(|&t| is_op(t)).then_some(program)
}

fn random_digit(rng: &mut dyn RngCore) -> u8 {
    b'0' + below(rng, 10) as u8
}

/// One random program with exactly `ops` operations that ends with one value on the stack, so
/// every operation feeds the answer; `None` when the draw left the value range (the caller
/// draws again).
fn random_program(rng: &mut dyn RngCore, ops: usize) -> Option<Vec<u8>> {
    let mut program = vec![random_digit(rng)];
    let (mut depth, mut done) = (1usize, 0usize);
    while done < ops {
        let remaining = ops - done;
        // Every value above the first must still be combined by a binary operation.
        let can_push = depth < MAX_DEPTH && depth < remaining;
        let must_push = depth < 2;
        if must_push || (can_push && below(rng, 5) < 2) {
            program.push(random_digit(rng));
            depth += 1;
            continue;
        }
        let t = match below(rng, 10) {
            0 if depth < MAX_DEPTH && depth + 1 < remaining => b'd',
            1 if depth < remaining => b's',
            _ => b"+-*"[below(rng, 3)],
        };
        match t {
            b'd' => depth += 1,
            b's' => {}
            _ => depth -= 1,
        }
        program.push(t);
        done += 1;
    }
    run(&program).map(|_| program)
}

impl Skill for Stack {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "run a stack program, answer the top: \"run 3 4 + 2 *;\" -> \"14\"; level L has L+1 operations"
    }

    fn max_level(&self) -> u32 {
        MAX_LEVEL
    }

    fn delimiter(&self) -> char {
        ';'
    }

    fn generate(&self, level: u32, rng: &mut dyn RngCore) -> Problem {
        let level = clamp_level(level, MAX_LEVEL);
        loop {
            if let Some(p) = random_program(rng, level as usize + 1).and_then(|program| build(level, &program)) {
                return p;
            }
        }
    }

    fn solve(&self, prompt: &str) -> Option<Target> {
        parse(prompt).and_then(|program| run(&program)).map(|(top, _)| Target::Text(top.to_string()))
    }

    fn mutate(&self, problem: &Problem, rng: &mut dyn RngCore) -> Problem {
        let Some(original) = parse(&problem.prompt) else {
            return mutate_with(self, problem, 1, rng, |_, _| None);
        };
        let finish = |program: Vec<u8>| build(mutated_level(problem.level, natural_level(ops_of(&program)), MAX_LEVEL)?, &program);
        mutate_with(self, problem, 5, rng, |op, rng| {
            let mut p = original.clone();
            let digits: Vec<usize> = (0..p.len()).filter(|&i| p[i].is_ascii_digit()).collect();
            let binary: Vec<usize> = (0..p.len()).filter(|&i| b"+-*".contains(&p[i])).collect();
            match op {
                // One operand changed.
                0 => {
                    let i = digits[below(rng, digits.len())];
                    p[i] = b'0' + ((p[i] - b'0') as usize + range(rng, 1, 9)) as u8 % 10;
                }
                // One operator changed: same shape, other arithmetic.
                1 => {
                    if binary.is_empty() {
                        return None;
                    }
                    let i = binary[below(rng, binary.len())];
                    let others: Vec<u8> = b"+-*".iter().copied().filter(|&t| t != p[i]).collect();
                    p[i] = others[below(rng, others.len())];
                }
                // One step longer: push and combine at the end.
                2 => {
                    p.push(random_digit(rng));
                    p.push(b"+-*"[below(rng, 3)]);
                }
                // A distractor at the bottom of the stack: same answer, longer program.
                3 => p.insert(0, random_digit(rng)),
                // Two neighbouring operands swapped: tests order for `-` and `s`.
                _ => {
                    let pairs: Vec<usize> = (0..p.len() - 1).filter(|&i| p[i].is_ascii_digit() && p[i + 1].is_ascii_digit() && p[i] != p[i + 1]).collect();
                    if pairs.is_empty() {
                        return None;
                    }
                    let i = pairs[below(rng, pairs.len())];
                    p.swap(i, i + 1);
                }
            }
            finish(p)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Response, SplitMix64};

    #[test]
    fn programs_run_left_to_right_on_a_stack() {
        assert_eq!(run(b"34+2*"), Some((14, 2)));
        assert_eq!(run(b"52-"), Some((3, 2)));
        assert_eq!(run(b"52s-"), Some((-3, 2)));
        assert_eq!(run(b"3d*"), Some((9, 2)));
        assert_eq!(run(b"3+"), None, "underflow");
        assert_eq!(Stack.solve("run 3 4 + 2 *;"), Some(Target::Text("14".into())));
        assert_eq!(Stack.solve("run 3 4;"), None, "nothing to compute");
        assert_eq!(Stack.solve("run 3 x +;"), None);
        assert_eq!(Stack.solve("run 34 +;"), None, "one digit per push");
    }

    #[test]
    fn answers_need_every_step() {
        // If answers could be read off the last operation alone, the family would not be
        // multi-step: dropping the first operation must change the answer often.
        let mut rng = SplitMix64::new(5);
        let (mut differs, n) = (0, 500);
        for _ in 0..n {
            let p = Stack.generate(3, &mut rng);
            let program = parse(&p.prompt).unwrap();
            let first_op = program.iter().position(|&t| is_op(t)).unwrap();
            let mut shorter = program.clone();
            shorter.remove(first_op);
            differs += usize::from(run(&shorter).map(|r| r.0) != run(&program).map(|r| r.0));
        }
        assert!(differs * 10 > n * 7, "{differs}/{n}");
    }

    #[test]
    fn corrupted_target_is_caught() {
        let p = make(NAME, 1, "run 5 2 s -;".into(), Target::Text("3".into()), &[]);
        assert!(Stack.verify(&p, &Response::Text("-3".into())));
        assert!(!Stack.verify(&p, &Response::Text("3".into())));
    }
}
