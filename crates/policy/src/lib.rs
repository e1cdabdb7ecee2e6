//! The bridge between skills and the model: how a `Problem` becomes training tokens, and how a
//! batch of problems is answered by a checkpoint and turned back into `Response`s that the
//! verifiers judge.
//!
//! Architecture invariants: the only crate that knows both the task vocabulary (`Problem`,
//! `Target`, `Response`) and the token vocabulary (`BOS`, `EOS`, `REFUSE`). The generator, the
//! trainer and the meta-controller all answer problems through `answer`, so mining, calibration
//! and the gate see the model the same way.

use burn::prelude::*;
use evolve_model::{BOS, DecodeOptions, EOS, Llama, REFUSE, Tokenizer, decode_batch};
use evolve_tasks::{Problem, Response, Target};

/// Longest answer the decoder produces before giving up; targets are at most 16 bytes.
pub const MAX_ANSWER_TOKENS: usize = 18;

/// Training tokens for a problem: `BOS prompt answer EOS` (or `BOS prompt REFUSE`), and the index
/// of the first answer token: only answer tokens carry loss.
pub fn example_tokens(problem: &Problem) -> (Vec<u32>, usize) {
    let tokenizer = Tokenizer;
    let mut tokens = vec![BOS];
    tokens.extend(tokenizer.encode(&problem.prompt));
    let answer_start = tokens.len();
    match &problem.target {
        Target::Text(text) => {
            tokens.extend(tokenizer.encode(text));
            tokens.push(EOS);
        }
        Target::Refuse => tokens.push(REFUSE),
    }
    (tokens, answer_start)
}

/// Reads a generated continuation as a response: a leading refusal token means refused.
pub fn response_of(generated: &[u32]) -> Response {
    if generated.first() == Some(&REFUSE) {
        Response::Refused
    } else {
        Response::Text(Tokenizer.decode(generated))
    }
}

/// How to answer: greedy for evaluation, sampled for calibration.
#[derive(Clone, Debug)]
pub struct Sampling {
    pub temperature: f32,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling { temperature: 0.0, seed: 0 }
    }
}

/// Answers every problem `k` times (row `i * k + j` is sample `j` of problem `i`).
pub fn answer(model: &Llama, problems: &[Problem], k: usize, sampling: &Sampling, device: &Device) -> Vec<Response> {
    let tokenizer = Tokenizer;
    let prompts: Vec<Vec<u32>> = problems
        .iter()
        .flat_map(|p| std::iter::repeat_n(tokenizer.encode_prompt(&p.prompt), k))
        .collect();
    let options = DecodeOptions { batch_size: 256, ..DecodeOptions::sampled(MAX_ANSWER_TOKENS, sampling.temperature, sampling.seed) };
    decode_batch(model, &prompts, &options, device).iter().map(|g| response_of(g)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(target: Target) -> Problem {
        Problem { skill: "t".into(), level: 1, prompt: "1+1=".into(), target, knobs: vec![] }
    }

    #[test]
    fn answer_tokens_follow_the_prompt() {
        let (tokens, start) = example_tokens(&problem(Target::Text("2".into())));
        assert_eq!(tokens, vec![BOS, 49, 43, 49, 61, 50, EOS]);
        assert_eq!(start, 5);
        let (tokens, start) = example_tokens(&problem(Target::Refuse));
        assert_eq!(&tokens[start..], &[REFUSE]);
    }

    #[test]
    fn refusal_token_reads_as_refused() {
        assert_eq!(response_of(&[REFUSE]), Response::Refused);
        assert_eq!(response_of(&[50, EOS]), Response::Text("2".into()));
    }
}
