//! The discriminator role: it scores every synthesized candidate (is its target right?) and
//! every model response (is this answer right?). Where a skill is checkable the score is the
//! verifier's ground truth; where the curriculum marks a skill unverifiable, a learned judge
//! (`learned`, a small burn transformer retrained each cycle on verifier-labelled responses)
//! scores behind the same `Scorer` trait, and its agreement with the verifier on held-out
//! responses (`metrics`: AUC and calibration error, the *proxy gap*) is what the
//! reward-hacking alarm watches.
//!
//! Architecture invariants: scoring is a function of (problem, response) and, for the learned
//! judge, its own weights; it never sees the policy model, the ledger or the curriculum, so it
//! can run in any process.

use evolve_tasks::{Problem, Response, Skill, Target};

pub mod learned;
pub mod metrics;

pub use learned::{Judgement, LearnedScorer};

/// A judge of responses, in `[0, 1]`.
pub trait Scorer: Send + Sync {
    fn name(&self) -> &'static str;
    fn score(&self, problem: &Problem, response: &Response) -> f32;
}

/// Ground truth from each skill's verifier.
pub struct Verifier {
    skills: Vec<Box<dyn Skill>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier { skills: evolve_tasks::all_skills() }
    }
}

impl Verifier {
    fn skill(&self, name: &str) -> Option<&dyn Skill> {
        self.skills.iter().find(|s| s.name() == name).map(|s| s.as_ref())
    }

    pub fn is_correct(&self, problem: &Problem, response: &Response) -> bool {
        self.skill(&problem.skill).is_some_and(|s| s.verify(problem, response))
    }

    /// A candidate is admissible when its own target passes the verifier: a mutation operator
    /// with a bug must not teach the model a wrong answer.
    pub fn admits(&self, candidate: &Problem) -> bool {
        let response = match &candidate.target {
            Target::Text(t) => Response::Text(t.clone()),
            Target::Refuse => Response::Refused,
        };
        self.is_correct(candidate, &response)
    }
}

impl Scorer for Verifier {
    fn name(&self) -> &'static str {
        "verifier"
    }

    fn score(&self, problem: &Problem, response: &Response) -> f32 {
        if self.is_correct(problem, response) { 1.0 } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evolve_tasks::skill_by_name;

    #[test]
    fn wrong_targets_are_not_admitted() {
        let v = Verifier::default();
        let skill = skill_by_name("addition").unwrap();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
        let mut p = skill.generate(1, &mut rng);
        assert!(v.admits(&p));
        assert_eq!(v.score(&p, &Response::Refused), 0.0);
        p.target = Target::Text("not a number".into());
        assert!(!v.admits(&p));
    }
}
