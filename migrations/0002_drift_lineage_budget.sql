-- evolve ledger, schema version 2: drift, lineage, budget, quantized
-- evaluations, the learned discriminator's proxy gap, per-item correctness,
-- and the indexes that keep researchers' queries index lookups at a million
-- eval rows.
--
-- Same rules as 0001: never edit once released; views keep their names and
-- leading columns, new columns go at the end; ratios with a zero denominator
-- are NULL; no window functions, so old sqlite3 clients can query every view.

-- ---------------------------------------------------------------- indexes
-- evals' primary key (run_id, cycle, checkpoint_hash, suite) serves "one
-- cycle". These serve "the parent's / the base's result on a suite" (drift,
-- diff; covering, so those lookups never touch the table) and "one suite
-- over time" (drift --suite).
CREATE INDEX evals_by_checkpoint ON evals (run_id, checkpoint_hash, suite, cycle, n, correct);
CREATE INDEX evals_by_suite ON evals (run_id, suite, cycle);
-- Lineage walks parent -> child within a run (v_lineage), and researchers
-- walk child -> parent from the current checkpoint (docs/ledger.md).
CREATE INDEX cycles_by_parent ON cycles (run_id, parent_hash);
CREATE INDEX cycles_by_checkpoint ON cycles (run_id, checkpoint_hash);

-- ---------------------------------------------------------------- per-item correctness
-- One row per problem of a frozen held-out suite: item is the problem's index
-- in the suite, which is stable across cycles because the suites are frozen.
-- Written by commit_cycle with its eval row, so it references that row.
-- WITHOUT ROWID: the key is the whole row, so the primary-key b-tree is the
-- table and there is no second copy.
CREATE TABLE eval_items (
    run_id          INTEGER NOT NULL,
    cycle           INTEGER NOT NULL,
    checkpoint_hash TEXT    NOT NULL,
    suite           TEXT    NOT NULL,
    item            INTEGER NOT NULL CHECK (item >= 0),
    correct         INTEGER NOT NULL CHECK (correct IN (0, 1)),
    PRIMARY KEY (run_id, cycle, checkpoint_hash, suite, item),
    FOREIGN KEY (run_id, cycle, checkpoint_hash, suite)
        REFERENCES evals (run_id, cycle, checkpoint_hash, suite)
) WITHOUT ROWID;

-- ---------------------------------------------------------------- budget
-- What each worker of each role spent in a cycle. References the run only:
-- usage accrues while a cycle is still running (and for cycle 0's pretrain
-- before its row exists), like steps.
CREATE TABLE role_usage (
    run_id       INTEGER NOT NULL REFERENCES runs(run_id),
    cycle        INTEGER NOT NULL CHECK (cycle >= 0),
    role         TEXT    NOT NULL, -- generator | discriminator | trainer | meta
    worker       TEXT    NOT NULL,
    device       TEXT    NOT NULL, -- e.g. cpu, RTX4090
    busy_seconds REAL    NOT NULL CHECK (busy_seconds >= 0),
    idle_seconds REAL    NOT NULL CHECK (idle_seconds >= 0),
    gpu_seconds  REAL    NOT NULL CHECK (gpu_seconds >= 0),
    cost_usd     REAL    NOT NULL CHECK (cost_usd >= 0),
    leases       INTEGER NOT NULL CHECK (leases >= 0),
    failures     INTEGER NOT NULL CHECK (failures >= 0),
    recorded_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (run_id, cycle, role, worker)
);

-- ---------------------------------------------------------------- compression
-- parent_hash: set on delta-coded rows, the checkpoint they are coded against.
-- eval_delta: mean accuracy delta (quantized minus lossless) over the suites
-- in quantized_evals; NULL for lossless rows.
ALTER TABLE compression ADD COLUMN parent_hash TEXT;
ALTER TABLE compression ADD COLUMN eval_delta REAL;

-- The quantized copy's evaluation next to the lossless checkpoint's, on the
-- same items, per suite. Written in the same transaction as its compression
-- row, which it references.
CREATE TABLE quantized_evals (
    run_id           INTEGER NOT NULL,
    cycle            INTEGER NOT NULL,
    checkpoint_hash  TEXT    NOT NULL,
    codec            TEXT    NOT NULL,
    suite            TEXT    NOT NULL,
    n                INTEGER NOT NULL CHECK (n >= 0),
    correct          INTEGER NOT NULL CHECK (correct >= 0 AND correct <= n),
    lossless_correct INTEGER NOT NULL CHECK (lossless_correct >= 0 AND lossless_correct <= n),
    PRIMARY KEY (run_id, cycle, checkpoint_hash, codec, suite),
    FOREIGN KEY (run_id, cycle, checkpoint_hash, codec)
        REFERENCES compression (run_id, cycle, checkpoint_hash, codec)
);
CREATE INDEX quantized_by_suite ON quantized_evals (run_id, suite, cycle);

-- ---------------------------------------------------------------- proxy gap
-- How far the learned discriminator's score is from the verifier on held-out
-- verifier-labelled data, per skill: a rising gap is the reward-hacking
-- alarm. References the run only: scoring happens before the cycle commits.
CREATE TABLE proxy_gap (
    run_id            INTEGER NOT NULL REFERENCES runs(run_id),
    cycle             INTEGER NOT NULL CHECK (cycle >= 0),
    skill             TEXT    NOT NULL,
    n                 INTEGER NOT NULL CHECK (n >= 0),
    -- NULL when undefined (one class only among the n labels).
    auc               REAL    CHECK (auc IS NULL OR (auc >= 0 AND auc <= 1)),
    calibration_error REAL    CHECK (calibration_error IS NULL OR (calibration_error >= 0 AND calibration_error <= 1)),
    PRIMARY KEY (run_id, cycle, skill)
);

-- ---------------------------------------------------------------- views

-- Leading columns unchanged from 0001; parent_hash and eval_delta appended.
DROP VIEW v_compression;
CREATE VIEW v_compression AS
SELECT run_id, cycle, checkpoint_hash, codec, raw_bytes, stored_bytes,
       CASE WHEN stored_bytes > 0 THEN CAST(raw_bytes AS REAL) / stored_bytes END AS ratio,
       encode_ms, decode_ms, lossless,
       parent_hash, eval_delta
FROM compression;

-- Per cycle and suite: the accuracy of the checkpoint the cycle recorded
-- (accepted or rejected candidate), against its parent and against the run's
-- base (cycle 0). The parent's accuracy is its most recent evaluation on that
-- suite in an earlier cycle of the same run; NULL when it was never evaluated
-- there. Joins rather than correlated subqueries in the select list, so each
-- comparison row is looked up once (a flattened subquery would evaluate
-- every lookup twice: once for the column, once for the delta); every join
-- is an index lookup (evals_by_checkpoint, evals_by_suite, primary keys).
CREATE VIEW v_drift AS
SELECT e.run_id, e.cycle, e.suite,
       CASE WHEN e.n > 0 THEN CAST(e.correct AS REAL) / e.n END AS accuracy,
       CASE WHEN e.n > 0 AND p.n > 0
            THEN CAST(e.correct AS REAL) / e.n - CAST(p.correct AS REAL) / p.n END AS delta_vs_parent,
       CASE WHEN e.n > 0 AND b.n > 0
            THEN CAST(e.correct AS REAL) / e.n - CAST(b.correct AS REAL) / b.n END AS delta_vs_base,
       c.status, e.checkpoint_hash, c.parent_hash,
       CASE WHEN p.n > 0 THEN CAST(p.correct AS REAL) / p.n END AS parent_accuracy,
       CASE WHEN b.n > 0 THEN CAST(b.correct AS REAL) / b.n END AS base_accuracy,
       e.role
FROM evals AS e
JOIN cycles AS c ON c.run_id = e.run_id AND c.cycle = e.cycle
LEFT JOIN cycles AS bc ON bc.run_id = e.run_id AND bc.cycle = 0
LEFT JOIN evals AS b
       ON b.run_id = e.run_id AND b.cycle = 0 AND b.checkpoint_hash = bc.checkpoint_hash
      AND b.suite = e.suite
LEFT JOIN evals AS p
       ON p.run_id = e.run_id AND p.checkpoint_hash = c.parent_hash AND p.suite = e.suite
      AND p.cycle = (SELECT MAX(q.cycle) FROM evals AS q
                      WHERE q.run_id = e.run_id AND q.checkpoint_hash = c.parent_hash
                        AND q.suite = e.suite AND q.cycle < e.cycle)
WHERE c.checkpoint_hash IS NULL OR e.checkpoint_hash = c.checkpoint_hash;

-- The checkpoint family tree of each run. Depth 0 is the base (cycle 0,
-- once committed); every accepted cycle whose parent is in the tree is one
-- deeper than its parent. Rejected candidates appear as leaves (status
-- 'rejected', depth = parent's depth + 1) so a researcher sees what was tried
-- from each checkpoint, but nothing descends from them; failed and running
-- cycles do not appear (they have no checkpoint of their own).
CREATE VIEW v_lineage AS
WITH RECURSIVE tree (checkpoint_hash, parent_hash, cycle, status, depth, run_id) AS (
    SELECT checkpoint_hash, parent_hash, cycle, status, 0, run_id
      FROM cycles
     WHERE cycle = 0 AND checkpoint_hash IS NOT NULL AND status IN ('accepted', 'rejected')
    -- UNION ALL: no de-duplication pass over every row. The walk ends because
    -- each step goes to a strictly later cycle.
    UNION ALL
    SELECT c.checkpoint_hash, c.parent_hash, c.cycle, c.status, t.depth + 1, c.run_id
      FROM tree AS t
      JOIN cycles AS c ON c.run_id = t.run_id AND c.parent_hash = t.checkpoint_hash
     WHERE (t.status = 'accepted' OR t.depth = 0)
       AND c.cycle > t.cycle
       AND c.checkpoint_hash IS NOT NULL
       AND c.status IN ('accepted', 'rejected')
)
SELECT checkpoint_hash, parent_hash, cycle, status, depth, run_id FROM tree;

CREATE VIEW v_budget AS
SELECT run_id, cycle, role,
       SUM(gpu_seconds) AS gpu_seconds,
       SUM(busy_seconds) AS busy_seconds,
       SUM(cost_usd) AS cost_usd,
       SUM(idle_seconds) AS idle_seconds,
       SUM(leases) AS leases,
       SUM(failures) AS failures,
       COUNT(*) AS workers,
       CASE WHEN SUM(busy_seconds) + SUM(idle_seconds) > 0
            THEN SUM(busy_seconds) / (SUM(busy_seconds) + SUM(idle_seconds)) END AS utilization
FROM role_usage
GROUP BY run_id, cycle, role;

CREATE VIEW v_quantized AS
SELECT run_id, cycle, checkpoint_hash, codec, suite,
       CASE WHEN n > 0 THEN CAST(correct AS REAL) / n END AS accuracy,
       CASE WHEN n > 0 THEN CAST(lossless_correct AS REAL) / n END AS lossless_accuracy,
       CASE WHEN n > 0 THEN CAST(correct - lossless_correct AS REAL) / n END AS delta,
       n, correct, lossless_correct
FROM quantized_evals;

CREATE VIEW v_proxy_gap AS
SELECT run_id, cycle, skill, n, auc, calibration_error
FROM proxy_gap;

CREATE VIEW v_eval_items AS
SELECT run_id, cycle, checkpoint_hash, suite, item, correct
FROM eval_items;
