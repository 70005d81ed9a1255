//! The database schema as an ordered list of migrations. `PRAGMA user_version` holds how many
//! have been applied; a migration is appended, never edited, once released.
//!
//! Conventions: times are RFC 3339 UTC text (sortable, readable in the sqlite3 shell); enums are
//! their kebab-case names with a CHECK; a metric that is NaN (Dice with both masks empty, HD95
//! with one empty) is stored as NULL.

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
CREATE TABLE sweeps (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    spec_path   TEXT NOT NULL,
    spec_text   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- One `run` invocation of the orchestrator.
CREATE TABLE runs (
    id            INTEGER PRIMARY KEY,
    sweep_id      INTEGER NOT NULL REFERENCES sweeps(id),
    started_at    TEXT NOT NULL,
    ended_at      TEXT,
    code_version  TEXT NOT NULL,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    exit_code     INTEGER
);

CREATE TABLE cells (
    sweep_id     INTEGER NOT NULL REFERENCES sweeps(id),
    cell_id      TEXT NOT NULL,
    ordinal      INTEGER NOT NULL,
    block        INTEGER NOT NULL,
    label        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    selector     TEXT,
    rank         INTEGER,
    alpha        REAL,
    train_norms  INTEGER NOT NULL,
    config_json  TEXT NOT NULL,
    -- 0 once a later plan of the sweep no longer has the cell (its results stay).
    active       INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (sweep_id, cell_id)
);

CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY,
    sweep_id     INTEGER NOT NULL REFERENCES sweeps(id),
    job_key      TEXT NOT NULL,
    cell_id      TEXT,
    stage        TEXT NOT NULL CHECK (stage IN ('pretrain', 'finetune', 'evaluate')),
    kind         TEXT,
    selector     TEXT,
    rank         INTEGER,
    alpha        REAL,
    fold         INTEGER,
    seed         INTEGER NOT NULL,
    view         TEXT NOT NULL,
    config_json  TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    active       INTEGER NOT NULL DEFAULT 1,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    UNIQUE (sweep_id, job_key)
);
CREATE INDEX jobs_by_cell ON jobs (sweep_id, cell_id);

CREATE TABLE job_deps (
    job    INTEGER NOT NULL REFERENCES jobs(id),
    needs  INTEGER NOT NULL REFERENCES jobs(id),
    PRIMARY KEY (job, needs)
);

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    job         INTEGER NOT NULL REFERENCES jobs(id),
    run         INTEGER REFERENCES runs(id),
    number      INTEGER NOT NULL,
    host        TEXT NOT NULL,
    device      TEXT NOT NULL,
    pid         INTEGER,
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    exit_class  TEXT CHECK (exit_class IN
                ('ok', 'failed', 'oom', 'nan', 'timeout', 'interrupted', 'lost')),
    exit_code   INTEGER,
    error       TEXT,
    UNIQUE (job, number)
);

CREATE TABLE case_metrics (
    job             INTEGER NOT NULL REFERENCES jobs(id),
    case_id         TEXT NOT NULL,
    dice            REAL,
    tp              INTEGER NOT NULL,
    fp              INTEGER NOT NULL,
    fn              INTEGER NOT NULL,
    hd95            REAL,
    volume_true_ml  REAL NOT NULL,
    volume_pred_ml  REAL NOT NULL,
    stratum         TEXT,
    PRIMARY KEY (job, case_id)
);

CREATE TABLE epochs (
    job       INTEGER NOT NULL REFERENCES jobs(id),
    step      INTEGER NOT NULL,
    loss      REAL,
    lr        REAL,
    val_dice  REAL,
    PRIMARY KEY (job, step)
);

CREATE TABLE param_counts (
    job        INTEGER NOT NULL REFERENCES jobs(id),
    scope      TEXT NOT NULL,
    total      INTEGER NOT NULL,
    trainable  INTEGER NOT NULL,
    PRIMARY KEY (job, scope)
);

CREATE TABLE environment (
    run    INTEGER NOT NULL REFERENCES runs(id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run, key)
);
"#,
    // 2: which jobs each `run` covered, so a run can be reported and compared on its own.
    r#"
-- Written in one transaction when the run starts, so a killed run still says what it covered.
-- `cached`: the job was already done when the run started; `scheduled`: the run meant to
-- execute it (a job neither cached nor scheduled had failed before and was not retried).
CREATE TABLE run_jobs (
    run        INTEGER NOT NULL REFERENCES runs(id),
    job        INTEGER NOT NULL REFERENCES jobs(id),
    cached     INTEGER NOT NULL CHECK (cached IN (0, 1)),
    scheduled  INTEGER NOT NULL CHECK (scheduled IN (0, 1)),
    PRIMARY KEY (run, job)
);
CREATE INDEX runs_by_sweep ON runs (sweep_id, id);
"#,
    // 3: a job's training curve is one row instead of one row per point: ingesting 10,000
    // results wrote 3 M `epochs` rows, and SQLite's per-row insert cost dominated (#5).
    r#"
-- `points`: compact JSON `[[step, loss, lr, val_dice], ...]` ordered by step, with null for a
-- missing or non-finite value (JSON has no NaN or infinity). Readable with the JSON functions,
-- e.g. `SELECT value ->> 1 FROM curves, json_each(points) WHERE job = 7`.
CREATE TABLE curves (
    job     INTEGER PRIMARY KEY REFERENCES jobs(id),
    points  TEXT NOT NULL
);
-- REAL columns could hold an infinite `lr`; NaN was already stored as NULL.
INSERT INTO curves (job, points)
SELECT job,
       json_group_array(json_array(
           step,
           CASE WHEN loss BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308
                THEN loss END,
           CASE WHEN lr BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308
                THEN lr END,
           CASE WHEN val_dice BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308
                THEN val_dice END
       ) ORDER BY step)
FROM epochs GROUP BY job;
DROP TABLE epochs;
"#,
    // 4: a job already done in another sweep of the database is reused, not rerun (#12).
    r#"
-- The job whose result rows (case metrics, curve, parameter counts) stand for this one: the
-- same key done in another sweep. Linked, not copied; NULL for a job with its own results.
-- (A run whose process died is ended by a later run: `ended_at` set, `exit_code` NULL.)
ALTER TABLE jobs ADD COLUMN result_of INTEGER REFERENCES jobs(id);
"#,
    // 5: what ran each attempt and each result: the device is chosen where a job runs, not in
    // its plan, so only the worker can say (#11).
    r#"
-- `ran_on`: one line from the worker's start event, e.g. `NVIDIA H200 (GPU 0), driver
-- 580.65.06, CUDA 13.0, cuDNN on, bf16` or `cpu (2 threads), f32`; NULL when the worker said
-- nothing (it failed before opening its device). `peak_gpu_mb`: the most GPU memory the
-- worker's process held, sampled by the orchestrator with nvidia-smi (GPU attempts only).
ALTER TABLE attempts ADD COLUMN ran_on TEXT;
ALTER TABLE attempts ADD COLUMN peak_gpu_mb REAL;
-- From `result.json` at ingest (local or cluster): `device` `cpu` or `cuda:N`, `ran_on` the
-- line above, `info` the worker's record as JSON.
CREATE TABLE job_devices (
    job     INTEGER PRIMARY KEY REFERENCES jobs(id),
    device  TEXT NOT NULL,
    ran_on  TEXT NOT NULL,
    info    TEXT NOT NULL
);
"#,
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// A new database at `path` at schema `version`: its migrations applied, the newer ones not.
/// For migration tests.
#[cfg(test)]
pub(crate) fn database_at_version(path: &std::path::Path, version: usize) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    for m in &MIGRATIONS[..version] {
        c.execute_batch(m).unwrap();
    }
    c.pragma_update(None, "user_version", version as i64)
        .unwrap();
    c
}
