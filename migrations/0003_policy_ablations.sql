-- Schema 3: the curriculum policy's choices and the ablation table.

-- Per cycle and frontier target (skill x level): what the policy saw and how much of the
-- cycle's synthesis budget it gave the target, with why.
CREATE TABLE curriculum_policy (
    run_id    INTEGER NOT NULL REFERENCES runs(run_id),
    cycle     INTEGER NOT NULL CHECK (cycle >= 0),
    skill     TEXT    NOT NULL,
    level     INTEGER NOT NULL CHECK (level >= 1),
    -- Pass rate of the parent on this cycle's mining probes; NULL before the first mining.
    pass_rate REAL    CHECK (pass_rate IS NULL OR (pass_rate >= 0 AND pass_rate <= 1)),
    -- Absolute learning progress (change in pass rate across the last parent change); NULL
    -- until the target has been mined under two different parents.
    progress  REAL    CHECK (progress IS NULL OR progress >= 0),
    weight    REAL    NOT NULL CHECK (weight >= 0 AND weight <= 1),
    reason    TEXT    NOT NULL,
    PRIMARY KEY (run_id, cycle, skill, level)
);

CREATE VIEW v_curriculum_policy AS
SELECT run_id, cycle, skill, level, pass_rate, progress, weight, reason
FROM curriculum_policy;

-- One row per arm of an `evolve ablate` invocation; every arm is an ordinary run in the same
-- ledger (run_id), so its cycles can be inspected like any other.
CREATE TABLE ablations (
    ablation_id   INTEGER NOT NULL CHECK (ablation_id >= 1),
    arm           TEXT    NOT NULL,
    curriculum    TEXT    NOT NULL,
    sampling      TEXT    NOT NULL,
    surgery       TEXT    NOT NULL,
    run_id        INTEGER NOT NULL REFERENCES runs(run_id),
    cycles        INTEGER NOT NULL CHECK (cycles >= 0),
    accepted      INTEGER NOT NULL CHECK (accepted >= 0),
    tokens_trained INTEGER NOT NULL CHECK (tokens_trained >= 0),
    -- Mean frontier accuracy of the run's last accepted checkpoint minus the base's.
    frontier_gain REAL    NOT NULL,
    -- Mean over trained cycles of the mastered suites' accuracy drop from parent to the
    -- trained candidate, accepted or not: what the training did to old skills before the gate.
    forgetting    REAL    NOT NULL,
    -- Refusal rate of the last accepted checkpoint minus the base's (must-refuse probes).
    refusal_drift REAL    NOT NULL,
    seconds       REAL    NOT NULL CHECK (seconds >= 0),
    created_at    TEXT    NOT NULL,
    PRIMARY KEY (ablation_id, arm)
);

CREATE VIEW v_ablations AS
SELECT ablation_id, arm, curriculum, sampling, surgery, run_id, cycles, accepted, tokens_trained,
       frontier_gain, forgetting, refusal_drift, seconds, created_at
FROM ablations;
