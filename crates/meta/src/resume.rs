//! Where an interrupted run stands, decided from what its ledger committed — nothing else
//! survives a kill -9 of the controller.
//!
//! Semantics (also in `docs/resume.md`):
//! - A committed cycle (accepted, rejected or failed) is never redone or rewritten.
//! - The cycle that was running when the controller died is redone from its start under the same
//!   cycle number: the ledger's `start_cycle` replaces its `running` row. The steps its
//!   interrupted attempt had logged stay in `steps` (an append-only log); a `meta`/`resume` step
//!   marks where the new attempt begins.
//! - The redone cycle is the one the uninterrupted run would have run: same parent (the last
//!   accepted checkpoint), same seeds (`cycle_seed(seed, cycle, role)`), same history of example
//!   batches (those of the committed, trained cycles, read back from their `train` steps).
//! - A committed `failed` cycle ended its run (the generator had nothing left, or an error): the
//!   resumed run is closed with that reason instead of continuing.

use evolve_ledger::CycleRow;

/// What the run has committed, as the controller needs it to continue.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ResumePoint {
    /// The committed base (cycle 0); `None`: the base itself was interrupted and is redone.
    pub base: Option<String>,
    /// The checkpoint the next cycle trains from (the last accepted one, or the base).
    pub parent: Option<String>,
    pub next_cycle: u32,
    /// Accepted cycles after the base.
    pub accepted: u32,
    /// Example batches of the committed trained cycles, in cycle order.
    pub history: Vec<String>,
    /// The last committed cycle failed: the run ended there, for this reason.
    pub ended: Option<String>,
    /// The last committed cycle, when accepted: `(cycle, checkpoint, its parent)`. Its
    /// recompression ran after the commit and may have been cut short.
    pub last_accepted: Option<(u32, String, Option<String>)>,
    /// The cycle that was running when the controller died.
    pub interrupted_cycle: Option<u32>,
}

/// Reads the resume point from a run's cycle rows (any order) and the example batches of its
/// trained cycles. Errors name what is inconsistent; they mean the ledger was edited by hand or
/// written by something other than evolve, and the run cannot be continued faithfully.
pub(crate) fn resume_point(cycles: &[CycleRow], batches: &[(u32, String)]) -> Result<ResumePoint, String> {
    let mut rows: Vec<&CycleRow> = cycles.iter().collect();
    rows.sort_by_key(|c| c.cycle);
    let mut point = ResumePoint { base: None, parent: None, next_cycle: 0, accepted: 0, history: Vec::new(), ended: None, last_accepted: None, interrupted_cycle: None };
    for (i, row) in rows.iter().enumerate() {
        if row.cycle as usize != i {
            return Err(format!("cycle {} is recorded but cycle {i} is not: cycles must be consecutive from 0", row.cycle));
        }
        if row.status == "running" {
            if i + 1 != rows.len() {
                return Err(format!("cycle {} is still running although cycle {} was started after it", row.cycle, rows[i + 1].cycle));
            }
            point.interrupted_cycle = Some(row.cycle);
            break;
        }
        if point.ended.is_some() {
            return Err(format!("cycle {} was recorded after cycle {} failed and ended the run", row.cycle, row.cycle - 1));
        }
        if row.cycle == 0 {
            let Some(hash) = row.checkpoint_hash.clone() else {
                return Err("the base (cycle 0) is committed without a checkpoint".into());
            };
            point.base = Some(hash.clone());
            point.parent = Some(hash.clone());
            point.last_accepted = Some((0, hash, None));
            point.next_cycle = 1;
            continue;
        }
        if row.parent_hash != point.parent {
            return Err(format!(
                "cycle {} trained from {} but the last accepted checkpoint before it is {}: the lineage is broken",
                row.cycle,
                row.parent_hash.as_deref().unwrap_or("nothing"),
                point.parent.as_deref().unwrap_or("nothing")
            ));
        }
        point.last_accepted = None;
        match row.status.as_str() {
            "accepted" | "rejected" => {
                let Some(batch) = batches.iter().find(|(c, _)| *c == row.cycle) else {
                    return Err(format!("cycle {} is committed but its training step names no example batch (a ledger from an evolve without resume support)", row.cycle));
                };
                point.history.push(batch.1.clone());
                if row.status == "accepted" {
                    let Some(hash) = row.checkpoint_hash.clone() else {
                        return Err(format!("cycle {} is accepted without a checkpoint", row.cycle));
                    };
                    point.accepted += 1;
                    point.last_accepted = Some((row.cycle, hash.clone(), point.parent.clone()));
                    point.parent = Some(hash);
                }
            }
            "failed" => point.ended = Some(row.reason.clone().unwrap_or_else(|| format!("cycle {} failed", row.cycle))),
            other => return Err(format!("cycle {} has unknown status `{other}`", row.cycle)),
        }
        point.next_cycle = row.cycle + 1;
    }
    Ok(point)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cycle: u32, status: &str, parent: Option<&str>, checkpoint: Option<&str>) -> CycleRow {
        CycleRow {
            run_id: 1,
            cycle,
            status: status.into(),
            parent_hash: parent.map(str::to_string),
            checkpoint_hash: checkpoint.map(str::to_string),
            started_at: String::new(),
            finished_at: None,
            examples_trained: 0,
            reason: Some(format!("reason {cycle}")),
        }
    }

    fn batches(n: u32) -> Vec<(u32, String)> {
        (1..=n).map(|c| (c, format!("b{c}"))).collect()
    }

    #[test]
    fn continues_after_the_last_committed_cycle_from_the_last_accepted_checkpoint() {
        let cycles = [
            row(2, "rejected", Some("c1"), Some("x2")),
            row(0, "accepted", None, Some("base")),
            row(1, "accepted", Some("base"), Some("c1")),
            row(3, "running", Some("c1"), None),
        ];
        let p = resume_point(&cycles, &batches(3)).unwrap();
        assert_eq!(p.base.as_deref(), Some("base"));
        assert_eq!(p.parent.as_deref(), Some("c1"));
        assert_eq!((p.next_cycle, p.accepted, p.interrupted_cycle), (3, 1, Some(3)));
        // The interrupted cycle's batch (b3) is not history: it was never committed.
        assert_eq!(p.history, vec!["b1", "b2"]);
        assert_eq!(p.last_accepted, None, "the last committed cycle was rejected");
        assert_eq!(p.ended, None);
    }

    #[test]
    fn an_accepted_last_cycle_is_offered_for_recompression() {
        let cycles = [row(0, "accepted", None, Some("base")), row(1, "accepted", Some("base"), Some("c1"))];
        let p = resume_point(&cycles, &batches(1)).unwrap();
        assert_eq!(p.last_accepted, Some((1, "c1".to_string(), Some("base".to_string()))));
        assert_eq!((p.next_cycle, p.interrupted_cycle), (2, None));
        let base_only = resume_point(&cycles[..1], &[]).unwrap();
        assert_eq!(base_only.last_accepted, Some((0, "base".to_string(), None)));
    }

    #[test]
    fn an_interrupted_base_is_redone_and_a_failed_cycle_ends_the_run() {
        let p = resume_point(&[row(0, "running", None, None)], &[]).unwrap();
        assert_eq!((p.base.clone(), p.next_cycle, p.interrupted_cycle), (None, 0, Some(0)));
        assert_eq!(resume_point(&[], &[]).unwrap().next_cycle, 0);
        let p = resume_point(&[row(0, "accepted", None, Some("base")), row(1, "failed", Some("base"), None)], &[]).unwrap();
        assert_eq!(p.ended.as_deref(), Some("reason 1"));
        assert_eq!(p.next_cycle, 2);
    }

    #[test]
    fn inconsistent_ledgers_are_refused_with_the_cycle_named() {
        let base = row(0, "accepted", None, Some("base"));
        let gap = resume_point(&[base.clone(), row(2, "rejected", Some("base"), Some("x"))], &batches(2)).unwrap_err();
        assert!(gap.contains("cycle 2") && gap.contains("cycle 1"), "{gap}");
        let broken = resume_point(&[base.clone(), row(1, "accepted", Some("elsewhere"), Some("c1"))], &batches(1)).unwrap_err();
        assert!(broken.contains("lineage"), "{broken}");
        let no_batch = resume_point(&[base.clone(), row(1, "rejected", Some("base"), Some("x"))], &[]).unwrap_err();
        assert!(no_batch.contains("example batch"), "{no_batch}");
        let running_early = resume_point(&[base, row(1, "running", Some("base"), None), row(2, "rejected", Some("base"), Some("x"))], &batches(2)).unwrap_err();
        assert!(running_early.contains("still running"), "{running_early}");
    }
}
