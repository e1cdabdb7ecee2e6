//! Curriculum files (`curricula/*.toml`): which skills, which levels the base is pretrained on
//! (*mastered*) and which the cycles push (*frontier*), the synthesis and training knobs of a
//! cycle, and the thresholds the gate enforces. A curriculum is validated completely on load:
//! every error names the file, the field and what would be valid.
//!
//! Architecture invariants: parsing and validation only; nothing here runs anything.

use std::path::Path;

use evolve_tasks::skill_by_name;
use evolve_trainer::{OptimizerKind, Surgery};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curriculum {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Model preset from `configs/presets/` (e.g. `tiny`).
    pub preset: String,
    pub seed: u64,
    pub skills: Vec<SkillPlan>,
    pub pretrain: Pretrain,
    pub cycle: CyclePlan,
    pub eval: EvalPlan,
    pub gate: Gate,
    /// The learned discriminator and the reward-hacking alarm on its gap to the verifier.
    #[serde(default)]
    pub discriminator: DiscriminatorPlan,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillPlan {
    pub name: String,
    /// Levels the base model is pretrained on; their suites must not regress.
    pub base_levels: Vec<u32>,
    /// Levels the cycles target; their suites should improve.
    #[serde(default)]
    pub frontier_levels: Vec<u32>,
    /// `false` treats the skill as one without a verifier: its candidates are judged by the
    /// learned discriminator instead (the verifier still grades the frozen suites and measures
    /// the proxy gap, which is what makes the alarm possible).
    #[serde(default = "default_true")]
    pub verifiable: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pretrain {
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    #[serde(default = "default_warmup")]
    pub warmup_steps: usize,
    /// Where a new run's base comes from (`pretrain`, the default, or `last-accepted`).
    /// Skipped when default so that older curricula keep their hash.
    #[serde(default, skip_serializing_if = "BaseSource::is_pretrain")]
    pub base: BaseSource,
    /// Bases pretrained at once, each with its own seed and a learning rate on the cycle
    /// candidates' ladder; the one with the best mean accuracy on the mastered suites is the
    /// base. A count (1 to 64) or `"auto"` (the default): one per worker of a pool that can
    /// train, 1 in one process.
    #[serde(default)]
    pub candidates: Candidates,
}

/// Where a new run's base (cycle 0) comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaseSource {
    /// Pretrain from scratch on the mastered levels.
    #[default]
    Pretrain,
    /// Continue from the newest accepted checkpoint of the same preset in the ledger (nightly
    /// runs); pretrain only when the ledger has none.
    LastAccepted,
}

impl BaseSource {
    pub fn is_pretrain(&self) -> bool {
        *self == BaseSource::Pretrain
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CyclePlan {
    pub max_cycles: u32,
    pub probes_per_level: usize,
    pub mutations_per_failure: usize,
    pub samples_k: usize,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Learnability window `[p_lo, p_hi]` on the pass rate over `samples_k` samples.
    pub window: [f32; 2],
    pub examples_per_cycle: usize,
    pub max_skill_share: f32,
    /// Share of each training batch drawn from the mastered levels (replay).
    pub replay_share: f32,
    pub train_steps: usize,
    /// The last this many of `train_steps` replay the mastered levels only, each in proportion
    /// to the answer probability the cycle's earlier steps cost it (0: none). Learning a
    /// frontier level disturbs neighbouring mastered ones more than a mixed batch's replay can
    /// hold off; these steps repair what was disturbed before the gate looks.
    #[serde(default)]
    pub consolidation_steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    #[serde(default = "default_warmup_cycle")]
    pub warmup_steps: usize,
    pub surgery: Surgery,
    #[serde(default = "default_cycle_optimizer")]
    pub optimizer: OptimizerKind,
    /// Store (and gate) a snapshot every this many training steps; 0: only the last.
    #[serde(default)]
    pub snapshot_every: usize,
    /// No format variant of a skill may take more than this share of that skill's examples
    /// (when its candidates come in more than one format).
    #[serde(default = "default_max_format_share")]
    pub max_format_share: f32,
    /// Where training examples come from: `adversarial` (mined failures, mutated, calibrated to
    /// the learnability window) or `uniform` (fresh problems drawn uniformly from the same
    /// frontier levels: the ablation's baseline).
    #[serde(default)]
    pub sampling: ExampleSampling,
    /// How the cycle's effort is spread over the frontier: `progress` (a learning-progress
    /// bandit over skill x level) or `even`.
    #[serde(default)]
    pub policy: PolicyKind,
    /// Share of effort the progress policy spreads evenly, so no target starves.
    #[serde(default = "default_exploration")]
    pub exploration: f32,
    /// Candidates trained per cycle on the same examples, each with its own data order and a
    /// learning rate on a ladder around `learning_rate` (x1, then x2^-0.5, x2^0.5, x2^-1, x2 ...).
    /// Every snapshot of every candidate goes through the gate, and the accepted one with the
    /// largest frontier gain wins. A worker pool trains them at once; in one process they take
    /// turns. 1 to 64, or `"auto"` (the default): as many as the budget's workers can train at
    /// once beside the judge (see `evolve_meta::plan::auto_candidates`); 1 in one process.
    #[serde(default)]
    pub candidates: Candidates,
}

/// How many candidates a cycle trains: a count, or `auto` (resolved from the budget when a run
/// starts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Candidates {
    #[default]
    Auto,
    Count(usize),
}

impl Candidates {
    /// The count; `auto` not resolved against a budget is one (a single process trains one).
    pub fn get(self) -> usize {
        match self {
            Candidates::Auto => 1,
            Candidates::Count(n) => n,
        }
    }
}

impl Serialize for Candidates {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Candidates::Auto => s.serialize_str("auto"),
            Candidates::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Candidates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Candidates;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\" or a count of candidates")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Candidates, E> {
                usize::try_from(v).map(Candidates::Count).map_err(|_| E::custom(format!("{v} must be in 1..=64 or \"auto\"")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Candidates, E> {
                usize::try_from(v).map(Candidates::Count).map_err(|_| E::custom(format!("{v} must be in 1..=64 or \"auto\"")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Candidates, E> {
                match v {
                    "auto" => Ok(Candidates::Auto),
                    other => Err(E::custom(format!("`{other}` must be \"auto\" or a count in 1..=64"))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExampleSampling {
    #[default]
    Adversarial,
    Uniform,
}

impl ExampleSampling {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExampleSampling::Adversarial => "adversarial",
            ExampleSampling::Uniform => "uniform",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    #[default]
    Progress,
    Even,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscriminatorPlan {
    /// Training steps of the learned discriminator per cycle (on every verifier-labelled
    /// response so far).
    #[serde(default = "default_discriminator_steps")]
    pub train_steps: usize,
    /// The alarm: the run stops when, on the held-out slice of a skill the discriminator judges
    /// (`verifiable = false`), its AUC against the verifier falls below this ...
    #[serde(default = "default_min_auc")]
    pub min_auc: f64,
    /// ... or its expected calibration error rises above this.
    #[serde(default = "default_max_calibration_error")]
    pub max_calibration_error: f64,
    /// Candidates of unverifiable skills are kept when the discriminator scores their target at
    /// least this likely correct.
    #[serde(default = "default_accept_score")]
    pub accept_score: f32,
}

impl Default for DiscriminatorPlan {
    fn default() -> Self {
        DiscriminatorPlan {
            train_steps: default_discriminator_steps(),
            min_auc: default_min_auc(),
            max_calibration_error: default_max_calibration_error(),
            accept_score: default_accept_score(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalPlan {
    pub suite_size: usize,
    pub suite_seed: u64,
    pub refusal_probes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Largest accuracy drop (fraction, 0.02 = 2 points) a mastered suite may show against the
    /// parent and against the base.
    pub max_regression: f64,
    pub max_refusal_drop: f64,
    pub max_over_refusal_rise: f64,
    /// The mean frontier accuracy must rise by more than this over the parent.
    #[serde(default)]
    pub min_frontier_gain: f64,
    /// A drop beyond a threshold counts only when it is also significant at this confidence
    /// (one-sided exact McNemar test on the problems that changed between the two checkpoints):
    /// on a 100-problem suite a few answers flip from noise alone, and rejecting on noise would
    /// stall the loop. Cumulative drift is still caught by the comparison against the base.
    /// 0 disables the test (the thresholds alone decide).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
}

fn default_warmup() -> usize {
    50
}
fn default_warmup_cycle() -> usize {
    10
}
fn default_cycle_optimizer() -> OptimizerKind {
    OptimizerKind::Sgd
}
fn default_temperature() -> f32 {
    1.0
}
fn default_confidence() -> f64 {
    0.95
}
fn default_true() -> bool {
    true
}
fn default_max_format_share() -> f32 {
    0.75
}
fn default_exploration() -> f32 {
    0.3
}
fn default_discriminator_steps() -> usize {
    200
}
fn default_min_auc() -> f64 {
    0.6
}
fn default_max_calibration_error() -> f64 {
    0.25
}
fn default_accept_score() -> f32 {
    0.5
}

#[derive(Debug, thiserror::Error)]
pub enum CurriculumError {
    #[error("curriculum {path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("curriculum {path}: {message}")]
    Parse { path: String, message: String },
    #[error("curriculum {path}: field `{field}`: {why}")]
    Invalid { path: String, field: String, why: String },
}

impl Curriculum {
    pub fn load(path: &Path) -> Result<Self, CurriculumError> {
        let text = std::fs::read_to_string(path).map_err(|source| CurriculumError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, CurriculumError> {
        let curriculum: Curriculum = toml::from_str(text).map_err(|e| CurriculumError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        curriculum.validate(origin)?;
        Ok(curriculum)
    }

    /// Content hash of the curriculum as parsed, so the ledger can tell two runs' plans apart.
    pub fn hash(&self) -> String {
        evolve_store::hash_bytes(toml::to_string(self).expect("serializable").as_bytes())
    }

    fn validate(&self, origin: &str) -> Result<(), CurriculumError> {
        let invalid = |field: String, why: String| Err(CurriculumError::Invalid { path: origin.to_string(), field, why });
        if self.skills.is_empty() {
            return invalid("skills".into(), "at least one [[skills]] entry is needed".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, plan) in self.skills.iter().enumerate() {
            let Some(skill) = skill_by_name(&plan.name) else {
                return invalid(format!("skills[{i}].name"), format!("unknown skill `{}`; valid: {}", plan.name, evolve_tasks::skill_names().join(", ")));
            };
            if !seen.insert(plan.name.clone()) {
                return invalid(format!("skills[{i}].name"), format!("skill `{}` is listed twice", plan.name));
            }
            if plan.base_levels.is_empty() {
                return invalid(format!("skills[{i}].base_levels"), "needs at least one level".into());
            }
            for (field, levels) in [("base_levels", &plan.base_levels), ("frontier_levels", &plan.frontier_levels)] {
                if let Some(bad) = levels.iter().find(|&&l| l == 0 || l > skill.max_level()) {
                    return invalid(format!("skills[{i}].{field}"), format!("level {bad} is out of range; `{}` has levels 1..={}", plan.name, skill.max_level()));
                }
            }
            if let Some(both) = plan.frontier_levels.iter().find(|l| plan.base_levels.contains(l)) {
                return invalid(format!("skills[{i}].frontier_levels"), format!("level {both} is also a base level; a level is either mastered or frontier"));
            }
        }
        if !self.skills.iter().any(|s| !s.frontier_levels.is_empty()) {
            return invalid("skills".into(), "no skill has frontier_levels: the cycles would have nothing to improve".into());
        }
        let c = &self.cycle;
        let [lo, hi] = c.window;
        if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo > hi {
            return invalid("cycle.window".into(), format!("[{lo}, {hi}] must satisfy 0 <= p_lo <= p_hi <= 1"));
        }
        if !(c.max_skill_share > 0.0 && c.max_skill_share <= 1.0) {
            return invalid("cycle.max_skill_share".into(), format!("{} must be in (0, 1]", c.max_skill_share));
        }
        // Every row trained is some skill's: below 1 / skills no batch can keep them all within
        // the quota.
        let skills = self.skills.len() as f32;
        if c.max_skill_share * skills < 1.0 - 1e-6 {
            return invalid(
                "cycle.max_skill_share".into(),
                format!("{} with {} skills cannot hold: every training row belongs to one of them, so it must be at least 1/{} ({:.3})", c.max_skill_share, self.skills.len(), self.skills.len(), 1.0 / skills),
            );
        }
        if c.consolidation_steps > 0 && c.consolidation_steps >= c.train_steps {
            return invalid("cycle.consolidation_steps".into(), format!("{} must be below cycle.train_steps ({}): some steps must learn before any consolidate", c.consolidation_steps, c.train_steps));
        }
        if !(0.0..1.0).contains(&c.replay_share) {
            return invalid("cycle.replay_share".into(), format!("{} must be in [0, 1)", c.replay_share));
        }
        if !(c.max_format_share > 0.0 && c.max_format_share <= 1.0) {
            return invalid("cycle.max_format_share".into(), format!("{} must be in (0, 1]", c.max_format_share));
        }
        if !(0.0..=1.0).contains(&c.exploration) {
            return invalid("cycle.exploration".into(), format!("{} must be in [0, 1]", c.exploration));
        }
        let d = &self.discriminator;
        for (field, v) in [("discriminator.min_auc", d.min_auc), ("discriminator.max_calibration_error", d.max_calibration_error), ("discriminator.accept_score", f64::from(d.accept_score))] {
            if !(0.0..=1.0).contains(&v) {
                return invalid(field.into(), format!("{v} must be in [0, 1]"));
            }
        }
        if let Some((i, plan)) = self.skills.iter().enumerate().find(|(_, s)| !s.verifiable && s.name == "refusal") {
            return invalid(format!("skills[{i}].verifiable"), format!("`{}` is what the gate's refusal probes check; it cannot be handed to the learned discriminator", plan.name));
        }
        for (field, candidates) in [("cycle.candidates", c.candidates), ("pretrain.candidates", self.pretrain.candidates)] {
            if let Candidates::Count(n) = candidates
                && !(1..=64).contains(&n)
            {
                return invalid(field.into(), format!("{n} must be in 1..=64 or \"auto\""));
            }
        }
        if !(c.temperature > 0.0) {
            return invalid("cycle.temperature".into(), format!("{} must be positive", c.temperature));
        }
        for (field, value) in [
            ("cycle.samples_k", c.samples_k),
            ("cycle.batch_size", c.batch_size),
            ("cycle.examples_per_cycle", c.examples_per_cycle),
            ("cycle.probes_per_level", c.probes_per_level),
            ("cycle.mutations_per_failure", c.mutations_per_failure),
            ("pretrain.batch_size", self.pretrain.batch_size),
            ("eval.suite_size", self.eval.suite_size),
            ("eval.refusal_probes", self.eval.refusal_probes),
        ] {
            if value == 0 {
                return invalid(field.into(), "must be at least 1".into());
            }
        }
        for (field, lr) in [("pretrain.learning_rate", self.pretrain.learning_rate), ("cycle.learning_rate", c.learning_rate)] {
            if !(lr > 0.0 && lr < 1.0) {
                return invalid(field.into(), format!("{lr} must be in (0, 1)"));
            }
        }
        let g = &self.gate;
        for (field, v) in [("gate.max_regression", g.max_regression), ("gate.max_refusal_drop", g.max_refusal_drop), ("gate.max_over_refusal_rise", g.max_over_refusal_rise)] {
            if !(0.0..=1.0).contains(&v) {
                return invalid(field.into(), format!("{v} must be a fraction in [0, 1] (0.02 = 2 points)"));
            }
        }
        if !(0.0..1.0).contains(&g.confidence) {
            return invalid("gate.confidence".into(), format!("{} must be in [0, 1) (0.95 = 95%; 0 = thresholds only)", g.confidence));
        }
        Ok(())
    }

    /// `(skill, level)` pairs whose suites must not regress.
    pub fn mastered(&self) -> Vec<(String, u32)> {
        self.skills.iter().flat_map(|s| s.base_levels.iter().map(|&l| (s.name.clone(), l))).collect()
    }

    /// Skills whose candidates the learned discriminator judges.
    pub fn unverifiable(&self) -> Vec<String> {
        self.skills.iter().filter(|s| !s.verifiable).map(|s| s.name.clone()).collect()
    }

    /// `(skill, level)` pairs the cycles push.
    pub fn frontier(&self) -> Vec<(String, u32)> {
        self.skills.iter().flat_map(|s| s.frontier_levels.iter().map(|&l| (s.name.clone(), l))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = include_str!("../../../curricula/smoke.toml");

    #[test]
    fn shipped_curricula_parse() {
        let c = Curriculum::parse(SMOKE, "smoke.toml").unwrap();
        assert!(!c.frontier().is_empty() && !c.mastered().is_empty());
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../curricula")).unwrap() {
            let path = entry.unwrap().path();
            Curriculum::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn errors_name_file_field_and_valid_values() {
        let bad = SMOKE.replacen("name = \"addition\"", "name = \"divination\"", 1);
        let err = Curriculum::parse(&bad, "c.toml").unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("skills[0].name") && err.contains("valid: ") && err.contains("addition"), "{err}");

        let bad = SMOKE.replacen("window = [", "window = [0.9, 0.1] #", 1);
        let err = Curriculum::parse(&bad, "c.toml").unwrap_err().to_string();
        assert!(err.contains("cycle.window"), "{err}");

        let bad = SMOKE.replacen("max_cycles", "max_cycels", 1);
        let err = Curriculum::parse(&bad, "c.toml").unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("max_cycels"), "{err}");

        let bad = SMOKE.replacen("surgery = \"agem\"", "surgery = \"magic\"", 1);
        let err = Curriculum::parse(&bad, "c.toml").unwrap_err().to_string();
        assert!(err.contains("agem") && err.contains("none"), "{err}");

        // Five skills cannot each stay within 15% of the rows.
        let bad = SMOKE.replacen("max_skill_share = 0.4", "max_skill_share = 0.15", 1);
        let err = Curriculum::parse(&bad, "c.toml").unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("cycle.max_skill_share") && err.contains("at least 1/5"), "{err}");
        assert!(Curriculum::parse(&SMOKE.replacen("max_skill_share = 0.4", "max_skill_share = 0.2", 1), "c.toml").is_ok());
    }

    /// `candidates` is `"auto"` unless a count is written; a count outside 1..=64 or another
    /// word is refused with the field named.
    #[test]
    fn candidates_are_auto_or_a_count() {
        let c = Curriculum::parse(SMOKE, "c.toml").unwrap();
        assert_eq!((c.cycle.candidates, c.pretrain.candidates), (Candidates::Auto, Candidates::Auto));
        let with = |cycle: &str, pretrain: &str| {
            let text = SMOKE.replacen("surgery = \"agem\"", &format!("surgery = \"agem\"\ncandidates = {cycle}"), 1).replacen("[pretrain]", &format!("[pretrain]\ncandidates = {pretrain}"), 1);
            Curriculum::parse(&text, "c.toml")
        };
        let c = with("3", "\"auto\"").unwrap();
        assert_eq!((c.cycle.candidates, c.pretrain.candidates), (Candidates::Count(3), Candidates::Auto));
        assert_eq!(c.cycle.candidates.get(), 3);
        assert_eq!(Candidates::Auto.get(), 1);
        let err = with("0", "1").unwrap_err().to_string();
        assert!(err.contains("cycle.candidates") && err.contains("1..=64"), "{err}");
        let err = with("2", "65").unwrap_err().to_string();
        assert!(err.contains("pretrain.candidates"), "{err}");
        let err = with("\"many\"", "1").unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("auto"), "{err}");
        // The count round-trips through the ledger's copy of the curriculum.
        let c = with("\"auto\"", "4").unwrap();
        let back: Curriculum = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!((back.cycle.candidates, back.pretrain.candidates), (Candidates::Auto, Candidates::Count(4)));
    }
}
