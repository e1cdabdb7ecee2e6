//! Prints a few problems per skill and level, and one mutation of each, to eyeball formats:
//! `cargo run --release -p evolve-tasks --example samples`.

use evolve_tasks::{SplitMix64, Target, all_skills};

fn main() {
    let mut rng = SplitMix64::new(1);
    for skill in all_skills() {
        println!("== {}: {}", skill.name(), skill.description());
        for level in 1..=skill.max_level() {
            let p = skill.generate(level, &mut rng);
            let m = skill.mutate(&p, &mut rng);
            let show = |t: &Target| match t {
                Target::Text(s) => s.clone(),
                Target::Refuse => "<REFUSE>".into(),
            };
            println!(
                "L{level}: {:<24} -> {:<10} {:?}   mutated(op {}): L{} {} -> {}",
                p.prompt,
                show(&p.target),
                p.knobs,
                m.knob("op").unwrap_or(-1),
                m.level,
                m.prompt,
                show(&m.target)
            );
        }
    }
}
