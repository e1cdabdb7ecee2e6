//! The curriculum policy: which frontier targets (skill x level) get the next cycle's synthesis
//! effort. `progress` is a learning-progress bandit: a target's value is how much the model's
//! competence on it moved the last time the parent changed (absolute learning progress, as in
//! Oudeyer's and Portelas' teacher algorithms). Competence is the mean probability of the whole
//! correct answer on the mining probes (teacher-forced), not greedy accuracy: a frontier answered
//! 0% right can still be getting closer, and an accuracy-driven bandit would starve it. Nor is it
//! the per-token answer loss: that moves a lot on a target whose answers stay out of reach while
//! some of their tokens get easier. Under it, smoke's reversal/L2 (0% right, whole answers at
//! probability 1e-9) drew a third of cycle 4's effort, and brackets/L2, 36 points up, the least.
//! Effort follows value, with an `exploration` share spread evenly so no target starves; targets
//! not yet measured under two parents are valued optimistically (as the best measured one). A
//! target the parent already solves gets only the exploration share. `even` gives every target the same weight,
//! for ablations. Every choice is returned with its reason, for the ledger.

use std::collections::BTreeMap;

use evolve_curriculum::PolicyKind;
use evolve_generator::MiningStat;

/// A target is solved when the parent passes this share of its probes.
const SOLVED: f64 = 0.95;

/// What the policy knows of one target.
#[derive(Clone, Debug)]
struct Observation {
    parent: String,
    probes: usize,
    pass_rate: f64,
    /// Mean probability of the whole correct answer, when the target's answers can be trusted
    /// to measure it on.
    answer_prob: Option<f64>,
}

#[derive(Clone, Debug, Default)]
struct TargetHistory {
    /// One per mining, in order.
    observations: Vec<Observation>,
    /// The latest mining found no fresh problem at this level: every one is held out or was
    /// trained on, so there is nothing left to mine or teach.
    exhausted: bool,
}

impl TargetHistory {
    fn pass_rate(&self) -> Option<f64> {
        self.observations.last().map(|o| o.pass_rate)
    }

    /// |change in competence| between the latest parent and the one before it, and whether it
    /// is in answer probability (both parents measured it) or else in pass rate. Minings under
    /// the same parent (a rejected cycle; an accepted child's own mining and the next
    /// generation's) differ by sampling noise only and are averaged, weighted by their probes.
    fn progress(&self) -> Option<(f64, bool)> {
        let latest = &self.observations.last()?.parent;
        let previous = &self.observations.iter().rev().find(|o| &o.parent != latest)?.parent;
        let mean_of = |parent: &str, measure: &dyn Fn(&Observation) -> Option<f64>| {
            let (sum, n) = self
                .observations
                .iter()
                .filter(|o| o.parent == parent)
                .filter_map(|o| Some((measure(o)? * o.probes as f64, o.probes as f64)))
                .fold((0.0, 0.0), |(s, n), (v, w)| (s + v, n + w));
            (n > 0.0).then(|| sum / n)
        };
        let by_prob = |o: &Observation| o.answer_prob;
        let by_rate = |o: &Observation| Some(o.pass_rate);
        match (mean_of(latest, &by_prob), mean_of(previous, &by_prob)) {
            (Some(now), Some(before)) => Some(((now - before).abs(), true)),
            _ => Some(((mean_of(latest, &by_rate)? - mean_of(previous, &by_rate)?).abs(), false)),
        }
    }
}

/// The policy's decision for one target.
#[derive(Clone, Debug)]
pub struct Choice {
    pub skill: String,
    pub level: u32,
    pub pass_rate: Option<f64>,
    pub progress: Option<f64>,
    pub weight: f64,
    pub reason: String,
}

pub struct CurriculumPolicy {
    kind: PolicyKind,
    exploration: f64,
    targets: BTreeMap<(String, u32), TargetHistory>,
}

impl CurriculumPolicy {
    pub fn new(kind: PolicyKind, exploration: f64, targets: &[(String, u32)]) -> Self {
        CurriculumPolicy { kind, exploration, targets: targets.iter().map(|t| (t.clone(), TargetHistory::default())).collect() }
    }

    /// Records what mining under `parent` found.
    pub fn observe(&mut self, parent: &str, stats: &[MiningStat]) {
        for s in stats {
            if let Some(t) = self.targets.get_mut(&(s.skill.clone(), s.level)) {
                t.exhausted = s.probes == 0;
                if s.probes > 0 {
                    t.observations.push(Observation { parent: parent.to_string(), probes: s.probes, pass_rate: 1.0 - s.failures as f64 / s.probes as f64, answer_prob: s.mean_answer_prob });
                }
            }
        }
    }

    /// Weights (summing to 1) over all targets for the next cycle; an exhausted target gets
    /// none, and the exploration share is spread over the others.
    pub fn choose(&self) -> Vec<Choice> {
        let live = self.targets.values().filter(|t| !t.exhausted).count();
        let n = live.max(1) as f64;
        // When every target is exhausted, none is singled out: they are valued as usual.
        let idle = |t: &TargetHistory| t.exhausted && live > 0;
        let measured: Vec<f64> = self.targets.values().filter_map(|t| t.progress().map(|p| p.0)).collect();
        let best = measured.iter().copied().fold(0.0f64, f64::max);
        let values: Vec<(f64, String)> = self
            .targets
            .values()
            .map(|t| match (self.kind, t.pass_rate(), t.progress()) {
                _ if idle(t) => (0.0, "no fresh problem left at this level (every one is held out or trained on): no effort".to_string()),
                (PolicyKind::Even, _, _) => (1.0, "even split (policy = even)".to_string()),
                (_, Some(p), _) if p >= SOLVED => (0.0, format!("solved by the parent ({:.0}% of probes): exploration share only", p * 100.0)),
                (_, _, Some((lp, true))) => (lp, format!("learning progress: the correct answer's probability moved {:.1} points since the previous parent", lp * 100.0)),
                (_, _, Some((lp, false))) => (lp, format!("learning progress: pass rate moved {:.1} points since the previous parent", lp * 100.0)),
                (_, _, None) if best > 0.0 => (best, "not yet measured under two parents: valued as the best measured target".to_string()),
                (_, _, None) => (1.0, "no learning progress measured yet: even split".to_string()),
            })
            .collect();
        let total: f64 = values.iter().map(|v| v.0).sum();
        let explore = if self.kind == PolicyKind::Even || total <= 0.0 { 1.0 } else { self.exploration };
        self.targets
            .iter()
            .zip(values)
            .map(|(((skill, level), t), (value, reason))| {
                let exploit = if total > 0.0 { value / total } else { 0.0 };
                let floor = if idle(t) { 0.0 } else { explore / n };
                Choice { skill: skill.clone(), level: *level, pass_rate: t.pass_rate(), progress: t.progress().map(|p| p.0), weight: floor + (1.0 - explore) * exploit, reason }
            })
            .collect()
    }
}

/// Weight per skill: the sum over its targets.
pub fn skill_weights(choices: &[Choice]) -> BTreeMap<String, f32> {
    let mut weights = BTreeMap::new();
    for c in choices {
        *weights.entry(c.skill.clone()).or_insert(0.0) += c.weight as f32;
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(skill: &str, level: u32, failures: usize) -> MiningStat {
        MiningStat { skill: skill.into(), level, probes: 100, failures, mean_nll: None, mean_answer_prob: None }
    }

    fn stat_with_likelihood(skill: &str, level: u32, failures: usize, nll: f64, answer_prob: f64) -> MiningStat {
        MiningStat { mean_nll: Some(nll), mean_answer_prob: Some(answer_prob), ..stat(skill, level, failures) }
    }

    fn targets() -> Vec<(String, u32)> {
        vec![("a".into(), 2), ("b".into(), 2), ("c".into(), 2)]
    }

    #[test]
    fn effort_follows_learning_progress_and_explores() {
        let mut policy = CurriculumPolicy::new(PolicyKind::Progress, 0.3, &targets());
        let first = policy.choose();
        assert!(first.iter().all(|c| (c.weight - 1.0 / 3.0).abs() < 1e-9), "nothing known: even");
        policy.observe("p0", &[stat("a", 2, 90), stat("b", 2, 90), stat("c", 2, 10)]);
        policy.observe("p1", &[stat("a", 2, 60), stat("b", 2, 88), stat("c", 2, 2)]);
        let choices = policy.choose();
        let w = |s: &str| choices.iter().find(|c| c.skill == s).unwrap().weight;
        assert!((choices.iter().map(|c| c.weight).sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(w("a") > w("b"), "a moved 30 points, b 2");
        assert!((w("c") - 0.1).abs() < 1e-9, "c is solved (98%): exploration share only, {}", w("c"));
        assert!(w("b") >= 0.1);
        assert!(choices[0].reason.contains("pass rate moved 30.0 points"), "{}", choices[0].reason);
    }

    #[test]
    fn progress_is_the_answer_probability_not_the_per_token_loss() {
        // a: 0% right, but its answers got likelier (1% -> 8%): it is getting closer.
        // b: 0% right, its per-token loss fell 0.5 nats, yet its answers stay out of reach.
        let mut policy = CurriculumPolicy::new(PolicyKind::Progress, 0.2, &targets()[..2]);
        policy.observe("p0", &[stat_with_likelihood("a", 2, 100, 1.2, 0.01), stat_with_likelihood("b", 2, 100, 2.0, 1e-5)]);
        policy.observe("p1", &[stat_with_likelihood("a", 2, 100, 1.1, 0.08), stat_with_likelihood("b", 2, 100, 1.5, 1e-4)]);
        let choices = policy.choose();
        assert!(choices[0].weight > 0.85, "a's answers moved, b's did not: {choices:?}");
        assert!(choices[0].reason.contains("probability moved 7.0 points"), "{}", choices[0].reason);
    }

    #[test]
    fn a_rejected_cycle_does_not_count_as_progress() {
        let mut policy = CurriculumPolicy::new(PolicyKind::Progress, 0.2, &targets()[..1]);
        policy.observe("p0", &[stat("a", 2, 80)]);
        policy.observe("p0", &[stat("a", 2, 70)]);
        assert_eq!(policy.targets[&("a".to_string(), 2)].progress(), None, "same parent twice: noise, not progress");
        policy.observe("p1", &[stat("a", 2, 55)]);
        let lp = policy.targets[&("a".to_string(), 2)].progress().unwrap().0;
        assert!((lp - 0.20).abs() < 1e-9, "45% vs the mean 25% under p0: {lp}");
    }

    #[test]
    fn minings_under_one_parent_are_weighted_by_their_probes() {
        let mut policy = CurriculumPolicy::new(PolicyKind::Progress, 0.2, &targets()[..1]);
        // A generation's eight rounds (400 probes at 50%) and a child's one round (50 at 90%).
        policy.observe("p0", &[MiningStat { probes: 400, failures: 200, ..stat("a", 2, 0) }]);
        policy.observe("p0", &[MiningStat { probes: 50, failures: 5, ..stat("a", 2, 0) }]);
        policy.observe("p1", &[MiningStat { probes: 100, failures: 40, ..stat("a", 2, 0) }]);
        let (lp, by_prob) = policy.targets[&("a".to_string(), 2)].progress().unwrap();
        assert!(!by_prob);
        assert!((lp - (0.6 - 245.0 / 450.0)).abs() < 1e-9, "{lp}");
    }

    #[test]
    fn a_target_with_no_fresh_problem_left_gets_no_effort() {
        let mut policy = CurriculumPolicy::new(PolicyKind::Progress, 0.3, &targets());
        policy.observe("p0", &[stat("a", 2, 90), stat("b", 2, 90), stat("c", 2, 90)]);
        // b moved most, then its level ran out of problems that are neither held out nor trained on.
        policy.observe("p1", &[stat("a", 2, 80), stat("b", 2, 40), stat("c", 2, 85)]);
        policy.observe("p1", &[stat("a", 2, 80), MiningStat { probes: 0, failures: 0, ..stat("b", 2, 0) }, stat("c", 2, 85)]);
        let choices = policy.choose();
        let w = |s: &str| choices.iter().find(|c| c.skill == s).unwrap().weight;
        assert_eq!(w("b"), 0.0, "{choices:?}");
        assert!(choices[1].reason.contains("no fresh problem left"), "{}", choices[1].reason);
        assert!((w("a") + w("c") - 1.0).abs() < 1e-9, "the exploration share goes to the others: {choices:?}");
        assert!(w("a") > w("c"), "a moved 10 points, c 5");
        // Fresh problems again (a later level of history, say): valued as before.
        policy.observe("p2", &[stat("b", 2, 30)]);
        assert!(policy.choose()[1].weight > 0.1);
    }

    #[test]
    fn even_policy_ignores_progress() {
        let mut policy = CurriculumPolicy::new(PolicyKind::Even, 0.3, &targets());
        policy.observe("p0", &[stat("a", 2, 90)]);
        policy.observe("p1", &[stat("a", 2, 10)]);
        assert!(policy.choose().iter().all(|c| (c.weight - 1.0 / 3.0).abs() < 1e-9));
    }
}
