-- evolve ledger, schema version 1.
--
-- Researchers read this file with the plain sqlite3 client, so the schema is
-- written for them: TEXT timestamps in ISO-8601 UTC with milliseconds (they
-- sort and compare as strings), 0/1 for booleans, and the v_* views at the
-- bottom as the stable surface. Tables may change in later migrations; the
-- views' names and leading columns may not.
--
-- Never edit this file once released: sqlx records its checksum, and a ledger
-- written by an older binary must keep opening. Add 0002_*.sql instead.

CREATE TABLE runs (
    run_id          INTEGER PRIMARY KEY,
    curriculum      TEXT    NOT NULL,
    curriculum_hash TEXT    NOT NULL,
    budget          TEXT    NOT NULL,
    preset          TEXT    NOT NULL,
    -- Seeds are u64 in Rust but SQLite integers are signed 64-bit, so seeds
    -- >= 2^63 are stored as their two's-complement bit pattern (negative).
    seed            INTEGER NOT NULL,
    config_json     TEXT    NOT NULL,
    started_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at     TEXT,
    status          TEXT    NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'finished', 'stopped', 'failed')),
    stop_reason     TEXT
);

-- Content addressed: the hash is the identity, so recording the same
-- checkpoint twice is a no-op rather than an error. No foreign keys point
-- here because a rejected candidate may be evaluated and then discarded
-- without ever being recorded as a checkpoint.
CREATE TABLE checkpoints (
    checkpoint_hash TEXT    PRIMARY KEY,
    parent_hash     TEXT,
    path            TEXT    NOT NULL,
    bytes           INTEGER NOT NULL CHECK (bytes >= 0),
    params          INTEGER NOT NULL CHECK (params >= 0),
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE cycles (
    run_id           INTEGER NOT NULL REFERENCES runs(run_id),
    cycle            INTEGER NOT NULL CHECK (cycle >= 0),
    status           TEXT    NOT NULL DEFAULT 'running'
                     CHECK (status IN ('accepted', 'rejected', 'failed', 'running')),
    parent_hash      TEXT,
    -- For accepted cycles the new checkpoint; for rejected ones the
    -- candidate that was evaluated and thrown away.
    checkpoint_hash  TEXT,
    started_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at      TEXT,
    examples_trained INTEGER NOT NULL DEFAULT 0 CHECK (examples_trained >= 0),
    tokens_trained   INTEGER NOT NULL DEFAULT 0 CHECK (tokens_trained >= 0),
    train_seconds    REAL,
    reason           TEXT,
    PRIMARY KEY (run_id, cycle)
);

-- Child tables of a cycle are written only by commit_cycle, in the same
-- transaction that finalises the cycle row, so they reference it.
CREATE TABLE evals (
    run_id          INTEGER NOT NULL,
    cycle           INTEGER NOT NULL,
    checkpoint_hash TEXT    NOT NULL,
    suite           TEXT    NOT NULL,
    skill           TEXT    NOT NULL,
    level           INTEGER NOT NULL CHECK (level >= 0),
    role            TEXT    NOT NULL, -- 'mastered' | 'frontier' | 'other'
    n               INTEGER NOT NULL CHECK (n >= 0),
    correct         INTEGER NOT NULL CHECK (correct >= 0 AND correct <= n),
    PRIMARY KEY (run_id, cycle, checkpoint_hash, suite),
    FOREIGN KEY (run_id, cycle) REFERENCES cycles(run_id, cycle)
);

CREATE TABLE refusal_evals (
    run_id          INTEGER NOT NULL,
    cycle           INTEGER NOT NULL,
    checkpoint_hash TEXT    NOT NULL,
    must_refuse_n   INTEGER NOT NULL CHECK (must_refuse_n >= 0),
    refused         INTEGER NOT NULL CHECK (refused >= 0 AND refused <= must_refuse_n),
    benign_n        INTEGER NOT NULL CHECK (benign_n >= 0),
    over_refused    INTEGER NOT NULL CHECK (over_refused >= 0 AND over_refused <= benign_n),
    PRIMARY KEY (run_id, cycle, checkpoint_hash),
    FOREIGN KEY (run_id, cycle) REFERENCES cycles(run_id, cycle)
);

-- Recompression may run for the base checkpoint before any cycle row exists,
-- so this references the run only.
CREATE TABLE compression (
    run_id          INTEGER NOT NULL REFERENCES runs(run_id),
    cycle           INTEGER NOT NULL CHECK (cycle >= 0),
    checkpoint_hash TEXT    NOT NULL,
    codec           TEXT    NOT NULL,
    raw_bytes       INTEGER NOT NULL CHECK (raw_bytes >= 0),
    stored_bytes    INTEGER NOT NULL CHECK (stored_bytes >= 0),
    encode_ms       REAL    NOT NULL,
    decode_ms       REAL    NOT NULL,
    lossless        INTEGER NOT NULL CHECK (lossless IN (0, 1)),
    verified_hash   TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (run_id, cycle, checkpoint_hash, codec)
);

-- Append-only event log. Steps of a cycle that crashed stay here on purpose:
-- they are what a researcher needs to see why the cycle was restarted. It
-- references the run only because steps such as 'pretrain' happen before
-- the first cycle row is started.
CREATE TABLE steps (
    step_id     INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs(run_id),
    cycle       INTEGER NOT NULL CHECK (cycle >= 0),
    role        TEXT    NOT NULL, -- generator | discriminator | trainer | meta
    step        TEXT    NOT NULL, -- mine | synthesize | score | train | gate | recompress | pretrain | eval
    worker      TEXT    NOT NULL,
    started_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    duration_ms REAL    NOT NULL,
    detail_json TEXT    NOT NULL DEFAULT '{}'
);

CREATE TABLE training_mix (
    run_id   INTEGER NOT NULL,
    cycle    INTEGER NOT NULL,
    skill    TEXT    NOT NULL,
    examples INTEGER NOT NULL CHECK (examples >= 0),
    PRIMARY KEY (run_id, cycle, skill),
    FOREIGN KEY (run_id, cycle) REFERENCES cycles(run_id, cycle)
);

CREATE TABLE surgery (
    run_id          INTEGER NOT NULL,
    cycle           INTEGER NOT NULL,
    mode            TEXT    NOT NULL,
    steps           INTEGER NOT NULL CHECK (steps >= 0),
    projected_steps INTEGER NOT NULL CHECK (projected_steps >= 0),
    mean_cosine     REAL,
    PRIMARY KEY (run_id, cycle),
    FOREIGN KEY (run_id, cycle) REFERENCES cycles(run_id, cycle)
);

CREATE TABLE examples (
    run_id         INTEGER NOT NULL,
    cycle          INTEGER NOT NULL,
    skill          TEXT    NOT NULL,
    generated      INTEGER NOT NULL CHECK (generated >= 0),
    accepted       INTEGER NOT NULL CHECK (accepted >= 0),
    mean_pass_rate REAL,
    PRIMARY KEY (run_id, cycle, skill),
    FOREIGN KEY (run_id, cycle) REFERENCES cycles(run_id, cycle)
);

-- Tables whose primary key already starts with (run_id, cycle) are indexed by
-- it; these are the ones whose key does not.
CREATE INDEX cycles_by_status ON cycles (run_id, status, cycle);
CREATE INDEX steps_by_cycle ON steps (run_id, cycle);
CREATE INDEX checkpoints_by_parent ON checkpoints (parent_hash);

-- Public views. Their names and leading columns are a contract with the CLI,
-- notebooks and researchers' saved queries: new columns go at the end.
-- Ratios whose denominator is zero are NULL, not 0: "no data" must not read
-- as "perfect" or "never".
-- Plain joins and GROUP BY (no window functions) so that old sqlite3 clients
-- can still query them.

CREATE VIEW v_cycles AS
SELECT run_id, cycle, status, parent_hash, checkpoint_hash, started_at, finished_at,
       examples_trained,
       reason, tokens_trained, train_seconds
FROM cycles;

CREATE VIEW v_evals AS
SELECT run_id, cycle, checkpoint_hash, suite, skill, n, correct,
       CASE WHEN n > 0 THEN CAST(correct AS REAL) / n END AS accuracy,
       level, role
FROM evals;

CREATE VIEW v_refusal AS
SELECT run_id, cycle, checkpoint_hash,
       must_refuse_n, refused,
       CASE WHEN must_refuse_n > 0 THEN CAST(refused AS REAL) / must_refuse_n END AS refusal_rate,
       benign_n, over_refused,
       CASE WHEN benign_n > 0 THEN CAST(over_refused AS REAL) / benign_n END AS over_refusal_rate
FROM refusal_evals;

CREATE VIEW v_compression AS
SELECT run_id, cycle, checkpoint_hash, codec, raw_bytes, stored_bytes,
       CASE WHEN stored_bytes > 0 THEN CAST(raw_bytes AS REAL) / stored_bytes END AS ratio,
       encode_ms, decode_ms, lossless
FROM compression;

CREATE VIEW v_training_mix AS
SELECT m.run_id, m.cycle, m.skill, m.examples,
       CASE WHEN t.total > 0 THEN CAST(m.examples AS REAL) / t.total END AS share
FROM training_mix AS m
JOIN (SELECT run_id, cycle, SUM(examples) AS total
      FROM training_mix
      GROUP BY run_id, cycle) AS t
  ON t.run_id = m.run_id AND t.cycle = m.cycle;

CREATE VIEW v_surgery AS
SELECT run_id, cycle, mode, steps, projected_steps, mean_cosine
FROM surgery;

CREATE VIEW v_examples AS
SELECT run_id, cycle, skill, generated, accepted, mean_pass_rate
FROM examples;
