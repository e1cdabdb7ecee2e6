//! Properties every skill must have. Each assertion is one a plausible bug would break.

use std::collections::{HashMap, HashSet};

use crate::skills::refusal::{HARMFUL, OK};
use crate::*;

const PER_LEVEL: usize = 500;

fn correct_response(target: &Target) -> Response {
    match target {
        Target::Text(t) => Response::Text(t.clone()),
        Target::Refuse => Response::Refused,
    }
}

/// The target with its last character changed to another of the same kind.
fn last_char_changed(t: &str) -> String {
    let mut b = t.as_bytes().to_vec();
    let last = b.last_mut().expect("non-empty target");
    *last = match *last {
        c @ b'0'..=b'9' => b'0' + (c - b'0' + 1) % 10,
        c @ b'a'..=b'z' => b'a' + (c - b'a' + 1) % 26,
        _ => b'x',
    };
    String::from_utf8(b).unwrap()
}

/// Knob that must grow with the level.
fn difficulty_knob(skill: &str) -> &'static str {
    match skill {
        "addition" | "multiplication" => "digits",
        "reversal" | "sorting" | "brackets" => "len",
        "refusal" => "distractors",
        "counting" => "len",
        "stack" => "ops",
        other => panic!("no difficulty knob named for {other}"),
    }
}

fn assert_well_formed(skill: &dyn Skill, p: &Problem) {
    assert_eq!(p.skill, skill.name());
    assert!(p.prompt.is_ascii() && p.prompt.len() <= MAX_PROMPT_BYTES, "prompt {:?}", p.prompt);
    assert!(p.prompt.ends_with(skill.delimiter()), "delimiter {:?}", p.prompt);
    assert_eq!(p.prompt.matches(skill.delimiter()).count(), 1, "delimiter must end, not split, {:?}", p.prompt);
    if let Target::Text(t) = &p.target {
        assert!(!t.is_empty() && t.is_ascii() && t.len() <= MAX_TARGET_BYTES, "target {t:?}");
    }
    assert!((1..=skill.max_level()).contains(&p.level));
    assert!(!p.knobs.is_empty());
}

#[test]
fn registry_is_consistent() {
    let names = skill_names();
    for expected in ["addition", "multiplication", "reversal", "sorting", "brackets", "counting", "stack", "refusal"] {
        assert!(names.contains(&expected), "{expected} missing");
    }
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len(), "duplicate names");
    for name in names {
        let skill = skill_by_name(name).unwrap();
        assert_eq!(skill.name(), name);
        assert!(skill.max_level() >= 4);
        assert!(!skill.description().is_empty());
    }
    assert!(skill_by_name("nope").is_none());
}

#[test]
fn generated_problems_verify_and_wrong_answers_do_not() {
    for skill in all_skills() {
        let mut rng = SplitMix64::new(42);
        for level in 1..=skill.max_level() {
            for _ in 0..PER_LEVEL {
                let p = skill.generate(level, &mut rng);
                assert_well_formed(skill.as_ref(), &p);
                assert_eq!(p.level, level);
                assert_eq!(skill.solve(&p.prompt).as_ref(), Some(&p.target), "{}", p.prompt);
                assert!(skill.verify(&p, &correct_response(&p.target)), "{} {:?}", p.prompt, p.target);
                match &p.target {
                    Target::Text(t) => {
                        assert!(!skill.verify(&p, &Response::Text(last_char_changed(t))), "{}", p.prompt);
                        assert!(!skill.verify(&p, &Response::Text(format!("{t}{t}"))), "{}", p.prompt);
                        assert!(!skill.verify(&p, &Response::Text(String::new())), "{}", p.prompt);
                        assert!(!skill.verify(&p, &Response::Refused), "{}", p.prompt);
                    }
                    Target::Refuse => {
                        assert!(!skill.verify(&p, &Response::Text(OK.into())), "{}", p.prompt);
                        assert!(!skill.verify(&p, &Response::Text(String::new())), "{}", p.prompt);
                    }
                }
                // A problem filed under another skill is not this skill's to pass.
                let mut foreign = p.clone();
                foreign.skill = "other".into();
                assert!(!skill.verify(&foreign, &correct_response(&p.target)));
            }
        }
    }
}

#[test]
fn verifiers_recompute_instead_of_trusting_the_target() {
    for skill in all_skills() {
        let mut rng = SplitMix64::new(7);
        for level in 1..=skill.max_level() {
            for _ in 0..50 {
                let p = skill.generate(level, &mut rng);
                let truth = correct_response(&p.target);
                let mut corrupted = p.clone();
                corrupted.target = match &p.target {
                    Target::Text(t) if t == OK && skill.name() == "refusal" => Target::Refuse,
                    Target::Text(t) => Target::Text(last_char_changed(t)),
                    Target::Refuse => Target::Text(OK.into()),
                };
                assert!(skill.verify(&corrupted, &truth), "{}", p.prompt);
                assert!(!skill.verify(&corrupted, &correct_response(&corrupted.target)), "{}", p.prompt);
            }
        }
    }
}

#[test]
fn generation_is_deterministic_per_seed() {
    for skill in all_skills() {
        let draw = |seed: u64| {
            let mut rng = SplitMix64::new(seed);
            (0..50).map(|i| skill.generate(1 + i % skill.max_level(), &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1), "{}", skill.name());
        assert_ne!(draw(1), draw(2), "{}", skill.name());
        // Any RngCore works, std's included.
        let with_std = |seed: u64| {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            (0..20).map(|_| skill.generate(2, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(with_std(3), with_std(3));
    }
}

#[test]
fn levels_get_harder() {
    for skill in all_skills() {
        let knob = difficulty_knob(skill.name());
        let mut rng = SplitMix64::new(9);
        let mut previous: Option<(f64, i64, f64)> = None;
        for level in 1..=skill.max_level() {
            let problems: Vec<Problem> = (0..PER_LEVEL).map(|_| skill.generate(level, &mut rng)).collect();
            let values: Vec<i64> = problems.iter().map(|p| p.knob(knob).unwrap()).collect();
            let mean = values.iter().sum::<i64>() as f64 / values.len() as f64;
            let min = *values.iter().min().unwrap();
            let len = problems.iter().map(|p| p.prompt.len()).sum::<usize>() as f64 / problems.len() as f64;
            if let Some((prev_mean, prev_max, prev_len)) = previous {
                assert!(mean > prev_mean, "{} L{level}: {knob} mean {mean} <= {prev_mean}", skill.name());
                assert!(len > prev_len, "{} L{level}: prompt length {len} <= {prev_len}", skill.name());
                if skill.name() != "refusal" {
                    // Length-graded skills: no overlap at all between neighbouring levels.
                    assert!(min > prev_max, "{} L{level}: {knob} min {min} <= previous max {prev_max}", skill.name());
                }
            }
            previous = Some((mean, *values.iter().max().unwrap(), len));
        }
    }
}

#[test]
fn generate_clamps_out_of_range_levels() {
    for skill in all_skills() {
        let mut rng = SplitMix64::new(1);
        assert_eq!(skill.generate(0, &mut rng).level, 1);
        assert_eq!(skill.generate(99, &mut rng).level, skill.max_level());
    }
}

#[test]
fn mutations_are_correct_neighbours() {
    for skill in all_skills() {
        let mut rng = SplitMix64::new(17);
        let mut ops: HashMap<i64, usize> = HashMap::new();
        let (mut total, mut changed) = (0, 0);
        for level in 1..=skill.max_level() {
            for _ in 0..200 {
                let mut p = skill.generate(level, &mut rng);
                // Chains of mutations too: the loop mutates mutated problems.
                for _ in 0..3 {
                    let m = skill.mutate(&p, &mut rng);
                    assert_well_formed(skill.as_ref(), &m);
                    let hi = (p.level + 1).min(skill.max_level());
                    assert!((p.level..=hi).contains(&m.level), "{}: L{} -> L{}", skill.name(), p.level, m.level);
                    assert_eq!(skill.solve(&m.prompt).as_ref(), Some(&m.target), "{}", m.prompt);
                    assert!(skill.verify(&m, &correct_response(&m.target)), "{}", m.prompt);
                    let op = m.knob("op").expect("op knob");
                    assert!(op >= 0, "{} fell back on {}", skill.name(), p.prompt);
                    *ops.entry(op).or_default() += 1;
                    total += 1;
                    changed += usize::from(m.prompt != p.prompt);
                    // The ledger wants one op per problem, not the history.
                    assert_eq!(m.knobs.iter().filter(|(k, _)| k == "op").count(), 1);
                    p = m;
                }
            }
        }
        assert!(ops.len() >= 4, "{}: only ops {:?} ever applied", skill.name(), ops);
        assert!(changed * 100 >= total * 95, "{}: {changed}/{total} mutations changed the prompt", skill.name());
    }
}

#[test]
fn mutation_is_deterministic() {
    for skill in all_skills() {
        let run = || {
            let mut rng = SplitMix64::new(23);
            let p = skill.generate(2, &mut rng);
            (0..20).map(|_| skill.mutate(&p, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}

#[test]
fn mutation_can_cross_the_refusal_line() {
    let skill = skill_by_name("refusal").unwrap();
    let mut rng = SplitMix64::new(29);
    let (mut to_benign, mut to_unsafe) = (0, 0);
    for _ in 0..1000 {
        let p = skill.generate(1 + below_4(&mut rng), &mut rng);
        let m = skill.mutate(&p, &mut rng);
        match (is_must_refuse(&p), is_must_refuse(&m)) {
            (true, false) => to_benign += 1,
            (false, true) => to_unsafe += 1,
            _ => {}
        }
    }
    assert!(to_benign > 50 && to_unsafe > 50, "{to_benign} {to_unsafe}");
}

fn below_4(rng: &mut SplitMix64) -> u32 {
    (rand::RngCore::next_u64(rng) % 4) as u32
}

#[test]
fn suites_are_frozen_distinct_and_disjoint() {
    let mut all_prompts: HashMap<String, String> = HashMap::new();
    for skill in all_skills() {
        for level in 1..=skill.max_level() {
            let a = build_suite(skill.as_ref(), level, 200, 1234);
            let b = build_suite(skill.as_ref(), level, 200, 1234);
            assert_eq!(a, b, "{} not deterministic", a.name);
            assert_eq!(a.name, format!("{}/L{level}", skill.name()));
            assert_eq!((a.skill.as_str(), a.level), (skill.name(), level));
            assert!(!a.problems.is_empty());
            let c = build_suite(skill.as_ref(), level, 200, 4321);
            assert_ne!(a.problems, c.problems, "{}: seed ignored", a.name);
            let prompts: HashSet<&str> = a.problems.iter().map(|p| p.prompt.as_str()).collect();
            assert_eq!(prompts.len(), a.problems.len(), "{}: duplicate prompts", a.name);
            for p in &a.problems {
                assert_eq!(p.level, level);
                if let Some(other) = all_prompts.insert(p.prompt.clone(), a.name.clone()) {
                    panic!("{} is in both {other} and {}", p.prompt, a.name);
                }
            }
        }
    }
}

#[test]
fn small_levels_keep_training_data() {
    let skill = skill_by_name("multiplication").unwrap();
    let suite = build_suite(skill.as_ref(), 1, 10_000, 5);
    assert_eq!(suite.problems.len(), 50, "half of the 100 1x1 problems");
    let held = HeldOut::from_suites([&suite]);
    let mut rng = SplitMix64::new(1);
    for _ in 0..200 {
        let p = sample_training(skill.as_ref(), 1, &held, &mut rng).unwrap();
        assert!(!held.contains(&p.prompt));
    }
    // With everything held out there is nothing to train on, and the draw gives up.
    let mut everything = held.clone();
    let all: Vec<Problem> = (0..10u64)
        .flat_map(|a| (0..10u64).map(move |b| (a, b)))
        .map(|(a, b)| Problem {
            skill: "multiplication".into(),
            level: 1,
            prompt: format!("{a}*{b}="),
            target: Target::Text((a * b).to_string()),
            knobs: vec![],
        })
        .collect();
    everything.extend(&all);
    assert_eq!(everything.len(), 100);
    assert!(sample_training(skill.as_ref(), 1, &everything, &mut rng).is_none());
    // And every small first level still has room.
    for skill in all_skills() {
        let suite = build_suite(skill.as_ref(), 1, 10_000, 5);
        let held = HeldOut::from_suites([&suite]);
        assert!(sample_training(skill.as_ref(), 1, &held, &mut rng).is_some(), "{}", skill.name());
    }
}

#[test]
fn training_draws_never_hit_held_out_prompts() {
    let skills = all_skills();
    let suites: Vec<Suite> = skills
        .iter()
        .flat_map(|s| (1..=s.max_level()).map(move |l| (s, l)))
        .map(|(s, l)| build_suite(s.as_ref(), l, 100, 77))
        .collect();
    let held = HeldOut::from_suites(&suites);
    assert_eq!(held.len(), suites.iter().map(|s| s.problems.len()).sum::<usize>());
    assert!(!held.is_empty() && HeldOut::default().is_empty());
    let mut rng = SplitMix64::new(78);
    for skill in &skills {
        let mut hits_without_filter = 0;
        for i in 0..5000u32 {
            let level = 1 + i % skill.max_level();
            let p = sample_training(skill.as_ref(), level, &held, &mut rng).expect("space not exhausted");
            assert!(!held.contains(&p.prompt), "{} leaked", p.prompt);
            assert_eq!(p.level, level);
            hits_without_filter += usize::from(held.contains(&skill.generate(level, &mut rng).prompt));
        }
        // The filter must be doing something: unfiltered draws do collide with the suites.
        assert!(hits_without_filter > 0, "{}: suites never collide, test is vacuous", skill.name());
    }
}

#[test]
fn refusal_probes_share_vocabulary_across_the_line() {
    let probes = build_refusal_probes(100, 9, &[]);
    assert_eq!(probes.must_refuse.len(), 100);
    assert_eq!(probes.benign.len(), 100);
    assert_eq!(build_refusal_probes(100, 9, &[]), probes);
    assert_ne!(build_refusal_probes(100, 10, &[]), probes);
    let refusal = skill_by_name("refusal").unwrap();
    let words = |p: &Problem| -> HashSet<String> {
        p.prompt.trim_end_matches('?').split(' ').map(|w| w.trim_start_matches('!').to_string()).collect()
    };
    let mut shared_verbs = 0;
    for p in &probes.must_refuse {
        assert!(is_must_refuse(p));
        assert!(refusal.verify(p, &Response::Refused));
        assert!(!refusal.verify(p, &Response::Text(OK.into())));
        let verbs: Vec<String> = words(p).into_iter().filter(|w| HARMFUL.contains(&w.as_str())).collect();
        shared_verbs += usize::from(
            verbs.iter().any(|v| probes.benign.iter().any(|b| words(b).contains(v))),
        );
    }
    assert_eq!(shared_verbs, probes.must_refuse.len(), "every unsafe verb has a benign look-alike");
    for p in &probes.benign {
        assert!(!is_must_refuse(p));
        assert!(refusal.verify(p, &Response::Text(OK.into())));
        assert!(refusal.verify(p, &Response::Text(" ok\n".into())));
        assert!(!refusal.verify(p, &Response::Refused));
        assert!(HARMFUL.iter().any(|v| words(p).contains(*v)), "benign probe without a harmful verb: {}", p.prompt);
    }
    let all: HashSet<&str> = probes.iter().map(|p| p.prompt.as_str()).collect();
    assert_eq!(all.len(), 200, "probes are distinct");
    let mut held = HeldOut::default();
    held.extend(probes.iter());
    assert_eq!(held.len(), 200);
}

#[test]
fn problems_round_trip_through_serde_shapes() {
    // The ledger stores knobs as (name, value) pairs; names must be plain identifiers.
    for skill in all_skills() {
        let mut rng = SplitMix64::new(31);
        let p = skill.mutate(&skill.generate(1, &mut rng), &mut rng);
        for (k, _) in &p.knobs {
            assert!(k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{k}");
        }
    }
}
