//! The queries a resumed or continuing run is built from, on a real ledger file.

use evolve_ledger::*;

fn new_run(curriculum_hash: &str, preset: &str) -> NewRun {
    NewRun {
        curriculum: "micro".into(),
        curriculum_hash: curriculum_hash.into(),
        budget: "1xcpu".into(),
        preset: preset.into(),
        seed: 3,
        config_json: "{}".into(),
    }
}

fn outcome(run_id: RunId, cycle: u32, status: CycleStatus, hash: &str) -> CycleOutcome {
    CycleOutcome {
        run_id,
        cycle,
        status,
        checkpoint_hash: Some(hash.into()),
        evaluated_hash: hash.into(),
        evals: Vec::new(),
        refusal: RefusalResult::default(),
        training_mix: Vec::new(),
        surgery: None,
        examples: Vec::new(),
        examples_trained: 0,
        tokens_trained: 0,
        train_seconds: 0.0,
        reason: None,
    }
}

fn step(run_id: RunId, cycle: u32, role: &str, step: &str, detail: &str) -> StepRecord {
    StepRecord {
        run_id,
        cycle,
        role: role.into(),
        step: step.into(),
        worker: "local-0".into(),
        started_at: now_iso(),
        duration_ms: 1.0,
        detail_json: detail.into(),
    }
}

#[tokio::test]
async fn resume_queries_read_what_the_interrupted_run_committed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("evolve.db")).await.unwrap();
    let done = ledger.begin_run(&new_run("h1", "tiny")).await.unwrap();
    ledger.start_cycle(done, 0, None).await.unwrap();
    ledger.commit_cycle(&outcome(done, 0, CycleStatus::Accepted, "base1")).await.unwrap();
    ledger.finish_run(done, RunStatus::Finished, Some("cycle limit")).await.unwrap();

    let run = ledger.begin_run(&new_run("h2", "tiny")).await.unwrap();
    ledger.start_cycle(run, 0, None).await.unwrap();
    ledger.commit_cycle(&outcome(run, 0, CycleStatus::Accepted, "base2")).await.unwrap();
    // Cycle 1: trained on batch b1, accepted. Its first attempt crashed after training on the
    // same batch; the last attempt's step is the one that counts.
    ledger.start_cycle(run, 1, Some("base2")).await.unwrap();
    ledger.record_step(&step(run, 1, "trainer", "train", r#"{"examples_batch":"b1-first-attempt"}"#)).await.unwrap();
    ledger.start_cycle(run, 1, Some("base2")).await.unwrap();
    ledger.record_step(&step(run, 1, "generator", "synthesize", r#"{"examples_batch":"not-a-train-step"}"#)).await.unwrap();
    ledger.record_step(&step(run, 1, "trainer", "train", r#"{"examples_batch":"b1","steps":6}"#)).await.unwrap();
    ledger.commit_cycle(&outcome(run, 1, CycleStatus::Accepted, "c1")).await.unwrap();
    // Cycle 2: rejected, batch b2.
    ledger.start_cycle(run, 2, Some("c1")).await.unwrap();
    ledger.record_step(&step(run, 2, "trainer", "train", r#"{"examples_batch":"b2"}"#)).await.unwrap();
    ledger.commit_cycle(&outcome(run, 2, CycleStatus::Rejected, "c2")).await.unwrap();
    // Cycle 3: trained, then the controller died before the commit: not history yet.
    ledger.start_cycle(run, 3, Some("c1")).await.unwrap();
    ledger.record_step(&step(run, 3, "trainer", "train", r#"{"examples_batch":"b3"}"#)).await.unwrap();

    let interrupted = ledger.interrupted_runs().await.unwrap();
    assert_eq!(interrupted.iter().map(|r| (r.run_id, r.curriculum_hash.as_str())).collect::<Vec<_>>(), vec![(run, "h2")]);
    assert_eq!(ledger.example_batches(run).await.unwrap(), vec![(1, "b1".to_string()), (2, "b2".to_string())]);
    assert!(ledger.example_batches(done).await.unwrap().is_empty());
    let elapsed = ledger.run_elapsed_seconds(run).await.unwrap();
    assert!((0.0..60.0).contains(&elapsed), "{elapsed}");
    assert!(matches!(ledger.run_elapsed_seconds(99).await, Err(LedgerError::UnknownRun { .. })));

    // The newest accepted checkpoint of the preset, across runs; none for another preset.
    let last = ledger.last_accepted_of_preset("tiny").await.unwrap().unwrap();
    assert_eq!((last.run_id, last.cycle, last.checkpoint_hash.as_deref()), (run, 1, Some("c1")));
    assert!(ledger.last_accepted_of_preset("small").await.unwrap().is_none());

    let record = |codec: &str| CompressionRecord {
        run_id: run,
        cycle: 1,
        checkpoint_hash: "c1".into(),
        codec: codec.into(),
        raw_bytes: 10,
        stored_bytes: 5,
        encode_ms: 1.0,
        decode_ms: 1.0,
        lossless: true,
        verified_hash: "c1".into(),
        path: "x".into(),
    };
    ledger.record_compression(&record("zstd")).await.unwrap();
    ledger.record_compression(&record("evolve-fp")).await.unwrap();
    assert_eq!(ledger.compression_codecs(run, 1, "c1").await.unwrap(), vec!["evolve-fp", "zstd"]);
    assert!(ledger.compression_codecs(run, 2, "c2").await.unwrap().is_empty());

    ledger.finish_run(run, RunStatus::Finished, None).await.unwrap();
    assert!(ledger.interrupted_runs().await.unwrap().is_empty());
}
