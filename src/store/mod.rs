//! The results database: one SQLite file per results folder, written by one process (the
//! orchestrator); workers never open it (they write `result.json`, which is ingested).
//!
//! Key types: [`Store`] (open/migrate, sweeps, runs, cells, jobs, attempts, metrics, status
//! queries), [`NewJob`] / [`JobRecord`], [`JobStatus`], [`ExitClass`], [`CellStatus`].
//!
//! Design (the SQLite rules in orchestration.md): WAL on a local disk, `busy_timeout`, every
//! write in a short `BEGIN IMMEDIATE` transaction, every query parameterized. The schema is the
//! ordered list in [`schema::MIGRATIONS`], tracked by `PRAGMA user_version`; a database written
//! by a newer ranksweep is refused rather than guessed at. A job is identified by its sweep and
//! its key (the planner's hash); attempts are numbered per job and a job is leased (running)
//! at most once at a time. Re-planning marks jobs and cells no longer in the spec inactive and
//! keeps everything already recorded, so a rerun resumes.

pub mod devices;
pub mod history;
pub mod results;
pub mod reuse;
mod runs;
pub mod schema;

pub use reuse::{DoneElsewhere, job_done};
pub use runs::{CoveredJob, RunJob, RunRecord};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::data::preprocess::View;
use crate::model::AdaptationKind;
use crate::sweep::{Cell, CellId};

/// Why the database cannot be used; each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: cannot open the results database: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}: not an SQLite file; expected a ranksweep results database (pass another --db or --results)", path.display())]
    NotDatabase { path: PathBuf },
    #[error(
        "{}: an SQLite database of another program ({tables} tables, none of them ranksweep's); left untouched, pass another --db or --results",
        path.display()
    )]
    Foreign { path: PathBuf, tables: i64 },
    #[error(
        "{}: database schema version {found} is newer than this ranksweep supports ({supported}); use a newer ranksweep or another results folder",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{}: {context}: {source}", path.display())]
    Sql {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}: no job `{key}` in sweep {sweep}", path.display())]
    UnknownJob {
        path: PathBuf,
        sweep: i64,
        key: String,
    },
    #[error("{}: job `{key}` is already running (attempt {attempt}); a job is leased once", path.display())]
    AlreadyRunning {
        path: PathBuf,
        key: String,
        attempt: i64,
    },
    #[error("{}: attempt {attempt} does not exist or has already ended", path.display())]
    AttemptNotOpen { path: PathBuf, attempt: i64 },
    #[error("{}: unexpected value `{value}` in column {column}", path.display())]
    Corrupt {
        path: PathBuf,
        column: &'static str,
        value: String,
    },
}

/// Refuses a file that is not SQLite, or an SQLite database that ranksweep did not create: an
/// unversioned file (`user_version` 0) that already holds tables. Reads only.
fn check_ours(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let read = || -> rusqlite::Result<(i64, i64)> {
        let version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let tables = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            [],
            |r| r.get(0),
        )?;
        Ok((version, tables))
    };
    match read() {
        Ok((0, tables)) if tables > 0 => Err(StoreError::Foreign {
            path: path.to_path_buf(),
            tables,
        }),
        Ok(_) => Ok(()),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
            Err(StoreError::NotDatabase {
                path: path.to_path_buf(),
            })
        }
        Err(source) => Err(StoreError::Open {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A sweep's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SweepId(pub i64);

/// A `run` invocation's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId(pub i64);

/// An attempt's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttemptId(pub i64);

/// The stage of a job: the job file's own type.
pub use crate::train::job::Stage;

fn parse_stage(s: &str) -> Option<Stage> {
    [Stage::Pretrain, Stage::Finetune, Stage::Evaluate]
        .into_iter()
        .find(|st| st.name() == s)
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Pending,
    Running,
    Done,
    /// The last attempt failed (it may be retried).
    Failed,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitClass {
    Ok,
    Failed,
    Oom,
    Nan,
    Timeout,
    Interrupted,
    /// The process vanished without a result (found at start-up as a stale lease).
    Lost,
}

macro_rules! text_enum {
    ($t:ident { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $($t::$v => $s),* }
            }
            fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($t::$v),)* _ => None }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(JobStatus { Pending = "pending", Running = "running", Done = "done", Failed = "failed" });
text_enum!(ExitClass {
    Ok = "ok",
    Failed = "failed",
    Oom = "oom",
    Nan = "nan",
    Timeout = "timeout",
    Interrupted = "interrupted",
    Lost = "lost",
});

/// A planned job, as the planner hands it to [`Store::upsert_jobs`].
impl From<crate::train::protocol::ExitClass> for ExitClass {
    /// The worker's classes; `lost` exists only here (a lease whose owner died).
    fn from(c: crate::train::protocol::ExitClass) -> Self {
        use crate::train::protocol::ExitClass as W;
        match c {
            W::Ok => ExitClass::Ok,
            W::Failed => ExitClass::Failed,
            W::Nan => ExitClass::Nan,
            W::Oom => ExitClass::Oom,
            W::Timeout => ExitClass::Timeout,
            W::Interrupted => ExitClass::Interrupted,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// The planner's stable hash; unique within the sweep.
    pub key: String,
    /// The cell of a fine-tuning job; `None` for pre-training.
    pub cell: Option<CellId>,
    pub stage: Stage,
    pub kind: Option<AdaptationKind>,
    pub selector: Option<String>,
    pub rank: Option<usize>,
    pub alpha: Option<f64>,
    pub fold: Option<usize>,
    pub seed: u64,
    pub view: View,
    /// The canonical job config the key hashes.
    pub config_json: String,
    /// Keys of the jobs this one needs (in the same sweep).
    pub needs: Vec<String>,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub key: String,
    pub cell: Option<CellId>,
    pub stage: Stage,
    pub kind: Option<AdaptationKind>,
    pub selector: Option<String>,
    pub rank: Option<usize>,
    pub alpha: Option<f64>,
    pub fold: Option<usize>,
    pub seed: u64,
    pub view: View,
    pub config_json: String,
    pub status: JobStatus,
    pub attempts: u32,
    pub needs: Vec<String>,
}

/// What [`Store::upsert_jobs`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpsertSummary {
    /// New jobs.
    pub inserted: usize,
    /// Jobs already stored (their status and attempts are kept).
    pub existing: usize,
    /// Jobs of an earlier plan that this plan no longer has.
    pub deactivated: usize,
}

/// The start of an attempt: who runs it where.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptStart {
    pub run: Option<RunId>,
    pub host: String,
    pub device: String,
    pub pid: Option<u32>,
}

/// The end of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    pub class: ExitClass,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

/// A stored attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub id: AttemptId,
    pub number: u32,
    pub host: String,
    pub device: String,
    pub pid: Option<u32>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub class: Option<ExitClass>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// What ran it, as the worker said (schema 5).
    pub ran_on: Option<String>,
    /// The most GPU memory its worker held, in MiB (GPU attempts).
    pub peak_gpu_mb: Option<f64>,
}

/// Metrics of one evaluated case. NaN Dice/HD95 are stored as NULL and read back as NaN.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseMetric {
    pub case_id: String,
    pub dice: f64,
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
    pub hd95: f64,
    pub volume_true_ml: f64,
    pub volume_pred_ml: f64,
    pub stratum: Option<String>,
}

/// One point of a training curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    pub step: usize,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub val_dice: Option<f64>,
}

/// Parameter counts of a job's model under one scope (`model`, or a layer path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamCount {
    pub scope: String,
    pub total: u64,
    pub trainable: u64,
}

/// Completeness of one cell: its active fine-tuning jobs by status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellStatus {
    pub cell: CellId,
    pub label: String,
    pub jobs: usize,
    pub done: usize,
    pub failed: usize,
    pub running: usize,
    pub pending: usize,
}

impl CellStatus {
    /// Every fold/seed/view of the cell has a result (reports aggregate only these).
    pub fn is_complete(&self) -> bool {
        self.jobs > 0 && self.done == self.jobs
    }
}

/// Active jobs of a sweep by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusCounts {
    pub pending: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
}

/// How long a writer waits for the lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// NaN → NULL.
fn finite(x: f64) -> Option<f64> {
    (!x.is_nan()).then_some(x)
}

/// The results database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Before the first write (WAL, migrations): never touch another program's file.
        check_ours(&conn, path)?;
        // WAL: readers never block the writer. Returns the mode actually set.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(open_err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sql {
            path: self.path.clone(),
            context,
            source,
        }
    }

    /// Like [`Store::sql`], but owning the path, for use while a transaction borrows the
    /// connection mutably.
    fn sql_detached(
        &self,
        context: &'static str,
    ) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
        let path = self.path.clone();
        move |source| StoreError::Sql {
            path: path.clone(),
            context,
            source,
        }
    }

    /// Runs a read query and collects its rows; every SQL error names `context`.
    fn rows<T>(
        &self,
        context: &'static str,
        sql: &str,
        params: impl rusqlite::Params,
        map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let err = self.sql(context);
        let mut st = self.conn.prepare(sql).map_err(&err)?;
        st.query_map(params, map)
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)
    }

    fn corrupt(&self, column: &'static str, value: &str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            column,
            value: value.to_string(),
        }
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.sql("reading the schema version"))
    }

    /// Applies the missing migrations, each in its own immediate transaction; refuses a newer
    /// schema. Idempotent.
    pub fn migrate(&mut self) -> Result<(), StoreError> {
        loop {
            let path = self.path.clone();
            let err = |context| {
                let path = path.clone();
                move |source| StoreError::Sql {
                    path,
                    context,
                    source,
                }
            };
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err("starting a migration"))?;
            // Read inside the lock, so two processes never apply the same migration.
            let found: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(err("reading the schema version"))?;
            if found > schema::VERSION {
                return Err(StoreError::TooNew {
                    path,
                    found,
                    supported: schema::VERSION,
                });
            }
            if found == schema::VERSION {
                return Ok(());
            }
            tx.execute_batch(schema::MIGRATIONS[found as usize])
                .map_err(err("applying a schema migration"))?;
            // PRAGMA takes no parameters; the value is our own integer.
            tx.execute_batch(&format!("PRAGMA user_version = {}", found + 1))
                .map_err(err("recording the schema version"))?;
            tx.commit().map_err(err("committing a migration"))?;
        }
    }

    /// Inserts the sweep or updates its spec; returns its id.
    pub fn upsert_sweep(
        &mut self,
        name: &str,
        spec_path: &Path,
        spec_text: &str,
    ) -> Result<SweepId, StoreError> {
        let t = now();
        let id = self
            .conn
            .query_row(
                "INSERT INTO sweeps (name, spec_path, spec_text, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (name) DO UPDATE SET
                    spec_path = excluded.spec_path, spec_text = excluded.spec_text,
                    updated_at = excluded.updated_at
                 RETURNING id",
                params![name, spec_path.display().to_string(), spec_text, t],
                |r| r.get(0),
            )
            .map_err(self.sql("saving the sweep"))?;
        Ok(SweepId(id))
    }

    pub fn sweep_id(&self, name: &str) -> Result<Option<SweepId>, StoreError> {
        self.conn
            .query_row("SELECT id FROM sweeps WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map(|o| o.map(SweepId))
            .map_err(self.sql("looking up the sweep"))
    }

    /// Records the start of a `run` invocation.
    pub fn start_run(
        &mut self,
        sweep: SweepId,
        code_version: &str,
        host: &str,
        pid: u32,
    ) -> Result<RunId, StoreError> {
        self.conn
            .execute(
                "INSERT INTO runs (sweep_id, started_at, code_version, host, pid)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![sweep.0, now(), code_version, host, pid],
            )
            .map_err(self.sql("recording the run"))?;
        Ok(RunId(self.conn.last_insert_rowid()))
    }

    pub fn end_run(&mut self, run: RunId, exit_code: i32) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE runs SET ended_at = ?2, exit_code = ?3 WHERE id = ?1",
                params![run.0, now(), exit_code],
            )
            .map_err(self.sql("ending the run"))?;
        Ok(())
    }

    /// Records the run's environment (git commit, versions, device names), replacing keys.
    pub fn record_environment(
        &mut self,
        run: RunId,
        entries: &[(String, String)],
    ) -> Result<(), StoreError> {
        let err = self.sql_detached("recording the environment");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO environment (run, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (run, key) DO UPDATE SET value = excluded.value",
                )
                .map_err(&err)?;
            for (k, v) in entries {
                st.execute(params![run.0, k, v]).map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    pub fn environment(&self, run: RunId) -> Result<Vec<(String, String)>, StoreError> {
        self.rows(
            "reading the environment",
            "SELECT key, value FROM environment WHERE run = ?1 ORDER BY key",
            [run.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Makes `cells` the sweep's active cells, in this order; cells of an earlier plan that are
    /// missing become inactive (their jobs and results stay).
    pub fn upsert_cells(&mut self, sweep: SweepId, cells: &[Cell]) -> Result<(), StoreError> {
        let err = self.sql_detached("saving the cells");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        tx.execute("UPDATE cells SET active = 0 WHERE sweep_id = ?1", [sweep.0])
            .map_err(&err)?;
        {
            let mut st = tx
                .prepare(
                    "INSERT INTO cells (sweep_id, cell_id, ordinal, block, label, kind, selector,
                                        rank, alpha, train_norms, config_json, active)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1)
                     ON CONFLICT (sweep_id, cell_id) DO UPDATE SET
                        ordinal = excluded.ordinal, block = excluded.block,
                        label = excluded.label, active = 1",
                )
                .map_err(&err)?;
            for (i, c) in cells.iter().enumerate() {
                let a = &c.adaptation;
                st.execute(params![
                    sweep.0,
                    c.id.as_str(),
                    i as i64,
                    c.block as i64,
                    c.label(),
                    a.kind.name(),
                    a.module.as_ref().map(|m| m.to_string()),
                    a.rank.map(|r| r as i64),
                    a.alpha,
                    a.train_norms,
                    c.canonical_json(),
                ])
                .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    /// The sweep's active cell ids, in plan order.
    pub fn cell_ids(&self, sweep: SweepId) -> Result<Vec<CellId>, StoreError> {
        let ids: Vec<String> = self.rows(
            "reading the cells",
            "SELECT cell_id FROM cells WHERE sweep_id = ?1 AND active = 1 ORDER BY ordinal",
            [sweep.0],
            |r| r.get(0),
        )?;
        ids.iter()
            .map(|s| CellId::from_hex(s).ok_or_else(|| self.corrupt("cells.cell_id", s)))
            .collect()
    }

    /// Makes `jobs` the sweep's active jobs. A job already stored (same key) keeps its status,
    /// attempts and results, so a rerun of the same plan does only what is missing.
    /// Dependencies must name jobs in `jobs` or already stored.
    pub fn upsert_jobs(
        &mut self,
        sweep: SweepId,
        jobs: &[NewJob],
    ) -> Result<UpsertSummary, StoreError> {
        let path = self.path.clone();
        let err = self.sql_detached("saving the jobs");
        let t = now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let active_before: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE sweep_id = ?1 AND active = 1",
                [sweep.0],
                |r| r.get(0),
            )
            .map_err(&err)?;
        let mut summary = UpsertSummary::default();
        let mut existing_active = 0i64;
        {
            let mut find = tx
                .prepare("SELECT id, active FROM jobs WHERE sweep_id = ?1 AND job_key = ?2")
                .map_err(&err)?;
            let mut insert = tx
                .prepare(
                    "INSERT INTO jobs (sweep_id, job_key, cell_id, stage, kind, selector, rank,
                                       alpha, fold, seed, view, config_json, created_at,
                                       updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)",
                )
                .map_err(&err)?;
            let mut keep = Vec::with_capacity(jobs.len());
            for j in jobs {
                let found: Option<(i64, bool)> = find
                    .query_row(params![sweep.0, j.key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(&err)?;
                match found {
                    Some((id, active)) => {
                        keep.push(id);
                        existing_active += i64::from(active);
                        summary.existing += 1;
                    }
                    None => {
                        insert
                            .execute(params![
                                sweep.0,
                                j.key,
                                j.cell.as_ref().map(|c| c.as_str()),
                                j.stage.name(),
                                j.kind.map(|k| k.name()),
                                j.selector,
                                j.rank.map(|r| r as i64),
                                j.alpha,
                                j.fold.map(|f| f as i64),
                                // Bit-cast: seeds above i64::MAX round-trip through `as u64`.
                                j.seed as i64,
                                j.view.name(),
                                j.config_json,
                                t,
                            ])
                            .map_err(&err)?;
                        keep.push(tx.last_insert_rowid());
                        summary.inserted += 1;
                    }
                }
            }
            // Only this plan's jobs stay active.
            tx.execute("UPDATE jobs SET active = 0 WHERE sweep_id = ?1", [sweep.0])
                .map_err(&err)?;
            let mut revive = tx
                .prepare("UPDATE jobs SET active = 1, updated_at = ?2 WHERE id = ?1")
                .map_err(&err)?;
            for id in keep {
                revive.execute(params![id, t]).map_err(&err)?;
            }
            let mut dep = tx
                .prepare(
                    "INSERT OR IGNORE INTO job_deps (job, needs)
                     SELECT j.id, d.id FROM jobs j, jobs d
                     WHERE j.sweep_id = ?1 AND j.job_key = ?2
                       AND d.sweep_id = ?1 AND d.job_key = ?3",
                )
                .map_err(&err)?;
            let mut exists = tx
                .prepare("SELECT EXISTS (SELECT 1 FROM jobs WHERE sweep_id = ?1 AND job_key = ?2)")
                .map_err(&err)?;
            for j in jobs {
                for need in &j.needs {
                    dep.execute(params![sweep.0, j.key, need]).map_err(&err)?;
                    let known: bool = exists
                        .query_row(params![sweep.0, need], |r| r.get(0))
                        .map_err(&err)?;
                    if !known {
                        return Err(StoreError::UnknownJob {
                            path: path.clone(),
                            sweep: sweep.0,
                            key: need.clone(),
                        });
                    }
                }
            }
        }
        summary.deactivated = (active_before - existing_active).max(0) as usize;
        tx.commit().map_err(&err)?;
        Ok(summary)
    }
}

/// Row → `JobRecord` with enums still as text (parsed after, to report bad values by column).
type RawJob = (
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<f64>,
    Option<i64>,
    i64,
    String,
    String,
    String,
    i64,
);

const JOB_COLUMNS: &str = "id, job_key, cell_id, stage, kind, selector, rank, alpha, fold, seed, \
                           view, config_json, status, attempts";

fn raw_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawJob> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    ))
}

impl Store {
    fn job_from_raw(&self, raw: RawJob) -> Result<JobRecord, StoreError> {
        let (
            id,
            key,
            cell,
            stage,
            kind,
            selector,
            rank,
            alpha,
            fold,
            seed,
            view,
            config,
            status,
            attempts,
        ) = raw;
        let cell = match cell {
            None => None,
            Some(c) => Some(CellId::from_hex(&c).ok_or_else(|| self.corrupt("jobs.cell_id", &c))?),
        };
        let stage = parse_stage(&stage).ok_or_else(|| self.corrupt("jobs.stage", &stage))?;
        let kind = match kind {
            None => None,
            Some(k) => Some(
                k.parse::<AdaptationKind>()
                    .map_err(|_| self.corrupt("jobs.kind", &k))?,
            ),
        };
        let view: View = view.parse().map_err(|_| self.corrupt("jobs.view", &view))?;
        let status =
            JobStatus::parse(&status).ok_or_else(|| self.corrupt("jobs.status", &status))?;
        let err = self.sql("reading job dependencies");
        let mut st = self
            .conn
            .prepare(
                "SELECT d.job_key FROM job_deps x JOIN jobs d ON d.id = x.needs
                 WHERE x.job = ?1 ORDER BY d.job_key",
            )
            .map_err(&err)?;
        let needs = st
            .query_map([id], |r| r.get(0))
            .map_err(&err)?
            .collect::<Result<Vec<String>, _>>()
            .map_err(&err)?;
        Ok(JobRecord {
            key,
            cell,
            stage,
            kind,
            selector,
            rank: rank.map(|r| r as usize),
            alpha,
            fold: fold.map(|f| f as usize),
            seed: seed as u64,
            view,
            config_json: config,
            status,
            attempts: attempts as u32,
            needs,
        })
    }

    /// One job of the sweep (active or not).
    pub fn job(&self, sweep: SweepId, key: &str) -> Result<Option<JobRecord>, StoreError> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE sweep_id = ?1 AND job_key = ?2"),
                params![sweep.0, key],
                raw_job,
            )
            .optional()
            .map_err(self.sql("reading a job"))?;
        raw.map(|r| self.job_from_raw(r)).transpose()
    }

    /// The sweep's active jobs in plan order.
    pub fn jobs(&self, sweep: SweepId) -> Result<Vec<JobRecord>, StoreError> {
        self.select_jobs(sweep, true)
    }

    /// The sweep's jobs in plan order, only the active ones or all it ever had.
    fn select_jobs(&self, sweep: SweepId, active_only: bool) -> Result<Vec<JobRecord>, StoreError> {
        let err = self.sql("reading the jobs");
        let active = if active_only { "AND active = 1" } else { "" };
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE sweep_id = ?1 {active} ORDER BY id"
            ))
            .map_err(&err)?;
        let raws = st
            .query_map([sweep.0], raw_job)
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        raws.into_iter().map(|r| self.job_from_raw(r)).collect()
    }

    fn job_row(&self, sweep: SweepId, key: &str) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT id FROM jobs WHERE sweep_id = ?1 AND job_key = ?2",
                params![sweep.0, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("looking up a job"))?
            .ok_or_else(|| StoreError::UnknownJob {
                path: self.path.clone(),
                sweep: sweep.0,
                key: key.to_string(),
            })
    }

    /// The row whose results stand for the job: its own, or the job it reuses (`result_of`).
    fn result_row(&self, sweep: SweepId, key: &str) -> Result<i64, StoreError> {
        let job = self.job_row(sweep, key)?;
        self.conn
            .query_row(
                "SELECT COALESCE(result_of, id) FROM jobs WHERE id = ?1",
                [job],
                |r| r.get(0),
            )
            .map_err(self.sql("looking up a job's results"))
    }

    /// Leases the job: marks it running and opens attempt `attempts + 1`. Refuses a job that
    /// is already running.
    pub fn record_attempt_start(
        &mut self,
        sweep: SweepId,
        key: &str,
        start: &AttemptStart,
    ) -> Result<AttemptId, StoreError> {
        let path = self.path.clone();
        let err = self.sql_detached("starting an attempt");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let (job, status, attempts): (i64, String, i64) = tx
            .query_row(
                "SELECT id, status, attempts FROM jobs WHERE sweep_id = ?1 AND job_key = ?2",
                params![sweep.0, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(&err)?
            .ok_or_else(|| StoreError::UnknownJob {
                path: path.clone(),
                sweep: sweep.0,
                key: key.to_string(),
            })?;
        if status == JobStatus::Running.as_str() {
            return Err(StoreError::AlreadyRunning {
                path: path.clone(),
                key: key.to_string(),
                attempt: attempts,
            });
        }
        let t = now();
        tx.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, updated_at = ?2
             WHERE id = ?1",
            params![job, t],
        )
        .map_err(&err)?;
        tx.execute(
            "INSERT INTO attempts (job, run, number, host, device, pid, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job,
                start.run.map(|r| r.0),
                attempts + 1,
                start.host,
                start.device,
                start.pid,
                t
            ],
        )
        .map_err(&err)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(&err)?;
        Ok(AttemptId(id))
    }

    /// Closes an open attempt and sets its job to done (`ok`) or failed (anything else).
    pub fn record_attempt_end(
        &mut self,
        attempt: AttemptId,
        end: &AttemptEnd,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = self.sql_detached("ending an attempt");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let job: i64 = tx
            .query_row(
                "SELECT job FROM attempts WHERE id = ?1 AND ended_at IS NULL",
                [attempt.0],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?
            .ok_or_else(|| StoreError::AttemptNotOpen {
                path: path.clone(),
                attempt: attempt.0,
            })?;
        let t = now();
        tx.execute(
            "UPDATE attempts SET ended_at = ?2, exit_class = ?3, exit_code = ?4, error = ?5
             WHERE id = ?1",
            params![attempt.0, t, end.class.as_str(), end.exit_code, end.error],
        )
        .map_err(&err)?;
        let status = if end.class == ExitClass::Ok {
            JobStatus::Done
        } else {
            JobStatus::Failed
        };
        tx.execute(
            "UPDATE jobs SET status = ?2, updated_at = ?3 WHERE id = ?1",
            params![job, status.as_str(), t],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)
    }

    /// Marks a job done whose result was made elsewhere (`ingest` of cluster results).
    pub fn mark_done(&mut self, sweep: SweepId, key: &str) -> Result<(), StoreError> {
        let job = self.job_row(sweep, key)?;
        let path = self.path.clone();
        self.conn
            .execute(
                // Already done: left as is, so that ingesting twice gives the same database.
                "UPDATE jobs SET status = 'done', updated_at = ?2 WHERE id = ?1 AND status <> 'done'",
                params![job, now()],
            )
            .map_err(|source| StoreError::Sql {
                path,
                context: "marking a job done",
                source,
            })?;
        Ok(())
    }

    /// Ends, as `lost`, the open attempts on `host` whose process `alive` says is gone (a kill
    /// left them "running"); returns the keys of the jobs set back to failed. Attempts on other
    /// hosts are left alone: only their host can tell.
    pub fn reclaim_stale(
        &mut self,
        sweep: SweepId,
        host: &str,
        alive: impl Fn(u32) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let open: Vec<(i64, Option<u32>, String)> = {
            self.rows(
                "finding stale attempts",
                "SELECT a.id, a.pid, j.job_key FROM attempts a JOIN jobs j ON j.id = a.job
                     WHERE j.sweep_id = ?1 AND a.host = ?2 AND a.ended_at IS NULL ORDER BY a.id",
                params![sweep.0, host],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
        };
        let mut reclaimed = Vec::new();
        for (id, pid, key) in open {
            if pid.is_some_and(&alive) {
                continue;
            }
            self.record_attempt_end(
                AttemptId(id),
                &AttemptEnd {
                    class: ExitClass::Lost,
                    exit_code: None,
                    error: Some("the worker was gone at start-up (stale lease)".into()),
                },
            )?;
            reclaimed.push(key);
        }
        Ok(reclaimed)
    }

    /// A job's attempts, oldest first.
    pub fn attempts(&self, sweep: SweepId, key: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let job = self.job_row(sweep, key)?;
        let err = self.sql("reading attempts");
        let mut st = self
            .conn
            .prepare(
                "SELECT id, number, host, device, pid, started_at, ended_at, exit_class,
                        exit_code, error, ran_on, peak_gpu_mb
                 FROM attempts WHERE job = ?1 ORDER BY number",
            )
            .map_err(&err)?;
        type Raw = (
            i64,
            i64,
            String,
            String,
            Option<u32>,
            String,
            Option<String>,
            Option<String>,
            Option<i32>,
            Option<String>,
            Option<String>,
            Option<f64>,
        );
        let raws: Vec<Raw> = st
            .query_map([job], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                ))
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        raws.into_iter()
            .map(
                |(
                    id,
                    number,
                    host,
                    device,
                    pid,
                    started_at,
                    ended_at,
                    class,
                    exit_code,
                    error,
                    ran_on,
                    peak_gpu_mb,
                )| {
                    let class = match class {
                        None => None,
                        Some(c) => Some(
                            ExitClass::parse(&c)
                                .ok_or_else(|| self.corrupt("attempts.exit_class", &c))?,
                        ),
                    };
                    Ok(AttemptRecord {
                        id: AttemptId(id),
                        number: number as u32,
                        host,
                        device,
                        pid,
                        started_at,
                        ended_at,
                        class,
                        exit_code,
                        error,
                        ran_on,
                        peak_gpu_mb,
                    })
                },
            )
            .collect()
    }

    pub fn case_metrics(&self, sweep: SweepId, key: &str) -> Result<Vec<CaseMetric>, StoreError> {
        let job = self.result_row(sweep, key)?;
        self.rows(
            "reading case metrics",
            "SELECT case_id, dice, tp, fp, fn, hd95, volume_true_ml, volume_pred_ml, stratum
                 FROM case_metrics WHERE job = ?1 ORDER BY case_id",
            [job],
            |r| {
                Ok(CaseMetric {
                    case_id: r.get(0)?,
                    dice: r.get::<_, Option<f64>>(1)?.unwrap_or(f64::NAN),
                    tp: r.get::<_, i64>(2)? as u64,
                    fp: r.get::<_, i64>(3)? as u64,
                    fn_: r.get::<_, i64>(4)? as u64,
                    hd95: r.get::<_, Option<f64>>(5)?.unwrap_or(f64::NAN),
                    volume_true_ml: r.get(6)?,
                    volume_pred_ml: r.get(7)?,
                    stratum: r.get(8)?,
                })
            },
        )
    }

    /// The job's training curve ordered by step; empty when it has none.
    pub fn epochs(&self, sweep: SweepId, key: &str) -> Result<Vec<EpochPoint>, StoreError> {
        let job = self.result_row(sweep, key)?;
        let err = self.sql("reading the training curve");
        let text: Option<String> = self
            .conn
            .query_row("SELECT points FROM curves WHERE job = ?1", [job], |r| {
                r.get(0)
            })
            .optional()
            .map_err(&err)?;
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        results::decode_curve(&text).map_err(|why| StoreError::Corrupt {
            path: self.path.clone(),
            column: "curves.points",
            value: format!("{}… ({why})", text.chars().take(40).collect::<String>()),
        })
    }

    pub fn param_counts(&self, sweep: SweepId, key: &str) -> Result<Vec<ParamCount>, StoreError> {
        let job = self.result_row(sweep, key)?;
        self.rows(
            "reading parameter counts",
            "SELECT scope, total, trainable FROM param_counts WHERE job = ?1 ORDER BY scope",
            [job],
            |r| {
                Ok(ParamCount {
                    scope: r.get(0)?,
                    total: r.get::<_, i64>(1)? as u64,
                    trainable: r.get::<_, i64>(2)? as u64,
                })
            },
        )
    }

    /// Per active cell, in plan order: how many of its active jobs (fine-tuning, or evaluation for
    /// `none`) are in each status.
    pub fn cell_status(&self, sweep: SweepId) -> Result<Vec<CellStatus>, StoreError> {
        let raws: Vec<(String, String, i64, i64, i64, i64, i64)> = self.rows(
            "reading cell status",
            "SELECT c.cell_id, c.label, COUNT(j.id),
                        COALESCE(SUM(j.status = 'done'), 0),
                        COALESCE(SUM(j.status = 'failed'), 0),
                        COALESCE(SUM(j.status = 'running'), 0),
                        COALESCE(SUM(j.status = 'pending'), 0)
                 FROM cells c
                 LEFT JOIN jobs j ON j.sweep_id = c.sweep_id AND j.cell_id = c.cell_id
                                  AND j.active = 1 AND j.stage != 'pretrain'
                 WHERE c.sweep_id = ?1 AND c.active = 1
                 GROUP BY c.cell_id
                 ORDER BY c.ordinal",
            [sweep.0],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )?;
        raws.into_iter()
            .map(|(id, label, jobs, done, failed, running, pending)| {
                Ok(CellStatus {
                    cell: CellId::from_hex(&id)
                        .ok_or_else(|| self.corrupt("cells.cell_id", &id))?,
                    label,
                    jobs: jobs as usize,
                    done: done as usize,
                    failed: failed as usize,
                    running: running as usize,
                    pending: pending as usize,
                })
            })
            .collect()
    }

    /// The sweep's active jobs by status.
    pub fn status_counts(&self, sweep: SweepId) -> Result<StatusCounts, StoreError> {
        let rows: Vec<(String, i64)> = self.rows(
            "counting jobs",
            "SELECT status, COUNT(*) FROM jobs WHERE sweep_id = ?1 AND active = 1
                 GROUP BY status",
            [sweep.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut c = StatusCounts::default();
        for (s, n) in rows {
            let n = n as usize;
            match JobStatus::parse(&s).ok_or_else(|| self.corrupt("jobs.status", &s))? {
                JobStatus::Pending => c.pending = n,
                JobStatus::Running => c.running = n,
                JobStatus::Done => c.done = n,
                JobStatus::Failed => c.failed = n,
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::parse;

    const SPEC: &str = "\
name: s
data: {source: a, target: b, folds: 2}
model: {features: [4, 8, 16]}
grid:
  - kind: none
  - kind: lora-c
    module: decoder
    rank: [4, 8]
";

    fn temp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.sqlite");
        (dir, path)
    }

    /// A bare pre-training job keyed `key` (also used by the `runs` tests).
    pub(super) fn pretrain_job(key: &str) -> NewJob {
        NewJob {
            key: key.into(),
            cell: None,
            stage: Stage::Pretrain,
            kind: None,
            selector: None,
            rank: None,
            alpha: None,
            fold: None,
            seed: 0,
            view: View::Axial,
            config_json: "{}".into(),
            needs: vec![],
        }
    }

    /// The pretrain job plus one fine-tuning job per cell × fold, keyed by hand.
    fn plan(cells: &[Cell]) -> Vec<NewJob> {
        let mut jobs = vec![pretrain_job("pre")];
        for c in cells {
            for fold in 0..2 {
                let a = &c.adaptation;
                jobs.push(NewJob {
                    key: format!("{}-f{fold}", c.id),
                    cell: Some(c.id.clone()),
                    // As the planner does: `none` is evaluated, not trained.
                    stage: if a.kind == AdaptationKind::None {
                        Stage::Evaluate
                    } else {
                        Stage::Finetune
                    },
                    kind: Some(a.kind),
                    selector: a.module.as_ref().map(|m| m.to_string()),
                    rank: a.rank,
                    alpha: a.alpha,
                    fold: Some(fold),
                    seed: u64::MAX,
                    view: View::Coronal,
                    config_json: c.canonical_json(),
                    needs: vec!["pre".into()],
                });
            }
        }
        jobs
    }

    fn setup(path: &Path) -> (Store, SweepId, Vec<Cell>, Vec<NewJob>) {
        let spec = parse(SPEC, Path::new("s.yaml")).unwrap();
        let mut st = Store::open(path).unwrap();
        let sw = st.upsert_sweep("s", Path::new("s.yaml"), SPEC).unwrap();
        st.upsert_cells(sw, &spec.cells).unwrap();
        let jobs = plan(&spec.cells);
        st.upsert_jobs(sw, &jobs).unwrap();
        (st, sw, spec.cells, jobs)
    }

    fn start(st: &mut Store, sw: SweepId, key: &str) -> AttemptId {
        st.record_attempt_start(
            sw,
            key,
            &AttemptStart {
                run: None,
                host: "h".into(),
                device: "cpu".into(),
                pid: Some(42),
            },
        )
        .unwrap()
    }

    fn end(class: ExitClass) -> AttemptEnd {
        AttemptEnd {
            class,
            exit_code: Some(if class == ExitClass::Ok { 0 } else { 1 }),
            error: (class != ExitClass::Ok).then(|| "boom".to_string()),
        }
    }

    #[test]
    fn opens_with_wal_and_migrates_idempotently() {
        let (_d, path) = temp();
        let st = Store::open(&path).unwrap();
        assert_eq!(st.schema_version().unwrap(), schema::VERSION);
        let mode: String = st
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(st);
        // Reopening (and a second handle at once) applies nothing twice.
        let mut a = Store::open(&path).unwrap();
        let b = Store::open(&path).unwrap();
        a.migrate().unwrap();
        assert_eq!(a.schema_version().unwrap(), schema::VERSION);
        assert_eq!(b.schema_version().unwrap(), schema::VERSION);
        let tables: i64 = b
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 12);
        // Migration 3 replaced the per-point table.
        let names: Vec<String> = b
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE name IN ('curves', 'epochs')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(names, ["curves"]);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let (_d, path) = temp();
        drop(Store::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.execute_batch(&format!("PRAGMA user_version = {}", schema::VERSION + 1))
            .unwrap();
        drop(c);
        let e = Store::open(&path).unwrap_err();
        assert!(matches!(e, StoreError::TooNew { found, .. } if found == schema::VERSION + 1));
        let msg = e.to_string();
        assert!(
            msg.contains("results.sqlite") && msg.contains("newer than this ranksweep"),
            "{msg}"
        );
    }

    #[test]
    fn sweeps_cells_and_jobs_round_trip() {
        let (_d, path) = temp();
        let (st, sw, cells, jobs) = setup(&path);
        assert_eq!(st.sweep_id("s").unwrap(), Some(sw));
        assert_eq!(st.sweep_id("other").unwrap(), None);
        let ids: Vec<CellId> = cells.iter().map(|c| c.id.clone()).collect();
        assert_eq!(st.cell_ids(sw).unwrap(), ids);
        let stored = st.jobs(sw).unwrap();
        assert_eq!(stored.len(), 1 + 3 * 2);
        for (s, j) in stored.iter().zip(&jobs) {
            assert_eq!(s.key, j.key);
            assert_eq!(s.cell, j.cell);
            assert_eq!(
                (s.stage, s.kind, s.rank, s.alpha),
                (j.stage, j.kind, j.rank, j.alpha)
            );
            assert_eq!((s.fold, s.seed, s.view), (j.fold, j.seed, j.view));
            assert_eq!(s.selector, j.selector);
            assert_eq!(s.config_json, j.config_json);
            assert_eq!(s.needs, j.needs);
            assert_eq!((s.status, s.attempts), (JobStatus::Pending, 0));
        }
        assert_eq!(stored[1].seed, u64::MAX, "seeds round-trip through i64");
    }

    #[test]
    fn attempts_lease_once_and_set_status() {
        let (_d, path) = temp();
        let (mut st, sw, _cells, jobs) = setup(&path);
        let key = &jobs[1].key;
        let a1 = start(&mut st, sw, key);
        assert_eq!(st.job(sw, key).unwrap().unwrap().status, JobStatus::Running);
        let again = st.record_attempt_start(
            sw,
            key,
            &AttemptStart {
                run: None,
                host: "h".into(),
                device: "cuda:0".into(),
                pid: None,
            },
        );
        assert!(matches!(again, Err(StoreError::AlreadyRunning { .. })));
        st.record_attempt_end(a1, &end(ExitClass::Oom)).unwrap();
        assert!(matches!(
            st.record_attempt_end(a1, &end(ExitClass::Ok)),
            Err(StoreError::AttemptNotOpen { .. })
        ));
        let j = st.job(sw, key).unwrap().unwrap();
        assert_eq!((j.status, j.attempts), (JobStatus::Failed, 1));
        let a2 = start(&mut st, sw, key);
        st.record_attempt_end(a2, &end(ExitClass::Ok)).unwrap();
        let j = st.job(sw, key).unwrap().unwrap();
        assert_eq!((j.status, j.attempts), (JobStatus::Done, 2));
        let at = st.attempts(sw, key).unwrap();
        assert_eq!(at.len(), 2);
        assert_eq!((at[0].number, at[0].class), (1, Some(ExitClass::Oom)));
        assert_eq!(at[0].error.as_deref(), Some("boom"));
        assert_eq!((at[1].number, at[1].class), (2, Some(ExitClass::Ok)));
        assert!(at[1].ended_at.is_some());
        assert!(matches!(
            st.record_attempt_start(
                sw,
                "nope",
                &AttemptStart {
                    run: None,
                    host: "h".into(),
                    device: "cpu".into(),
                    pid: None
                }
            ),
            Err(StoreError::UnknownJob { .. })
        ));
    }

    #[test]
    fn replanning_keeps_results_and_deactivates_dropped_jobs() {
        let (_d, path) = temp();
        let (mut st, sw, cells, jobs) = setup(&path);
        let a = start(&mut st, sw, &jobs[1].key);
        st.record_attempt_end(a, &end(ExitClass::Ok)).unwrap();
        // Same plan again: nothing new, the finished job stays finished.
        let s = st.upsert_jobs(sw, &jobs).unwrap();
        assert_eq!(
            s,
            UpsertSummary {
                inserted: 0,
                existing: 7,
                deactivated: 0
            }
        );
        assert_eq!(
            st.job(sw, &jobs[1].key).unwrap().unwrap().status,
            JobStatus::Done
        );
        // Drop the last cell (2 jobs) and add one job.
        let mut next: Vec<NewJob> = jobs[..5].to_vec();
        let mut extra = jobs[1].clone();
        extra.key = "extra".into();
        next.push(extra);
        let s = st.upsert_jobs(sw, &next).unwrap();
        assert_eq!(
            s,
            UpsertSummary {
                inserted: 1,
                existing: 5,
                deactivated: 2
            }
        );
        assert_eq!(st.jobs(sw).unwrap().len(), 6);
        // A dropped job is still there for history.
        assert!(st.job(sw, &jobs[6].key).unwrap().is_some());
        st.upsert_cells(sw, &cells[..2]).unwrap();
        assert_eq!(st.cell_ids(sw).unwrap().len(), 2);
        // A dependency on an unknown job is refused.
        let mut bad = jobs[1].clone();
        bad.needs = vec!["missing".into()];
        let e = st.upsert_jobs(sw, &[bad]).unwrap_err();
        assert!(
            matches!(e, StoreError::UnknownJob { ref key, .. } if key == "missing"),
            "{e}"
        );
    }

    #[test]
    fn cell_status_counts_folds() {
        let (_d, path) = temp();
        let (mut st, sw, cells, jobs) = setup(&path);
        // Cell 0: both folds done. Cell 1: one failed, one running. Cell 2: untouched.
        for k in [&jobs[1].key, &jobs[2].key] {
            let a = start(&mut st, sw, k);
            st.record_attempt_end(a, &end(ExitClass::Ok)).unwrap();
        }
        let a = start(&mut st, sw, &jobs[3].key);
        st.record_attempt_end(a, &end(ExitClass::Nan)).unwrap();
        start(&mut st, sw, &jobs[4].key);
        let cs = st.cell_status(sw).unwrap();
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0].cell, cells[0].id);
        assert_eq!(cs[0].label, "none");
        assert_eq!((cs[0].jobs, cs[0].done), (2, 2));
        assert!(cs[0].is_complete());
        assert_eq!(
            (cs[1].done, cs[1].failed, cs[1].running, cs[1].pending),
            (0, 1, 1, 0)
        );
        assert!(!cs[1].is_complete());
        assert_eq!((cs[2].jobs, cs[2].pending), (2, 2));
        assert_eq!(
            st.status_counts(sw).unwrap(),
            StatusCounts {
                pending: 3,
                running: 1,
                done: 2,
                failed: 1
            }
        );
    }

    #[test]
    fn stale_leases_on_this_host_are_reclaimed() {
        let (_d, path) = temp();
        let (mut st, sw, _cells, jobs) = setup(&path);
        start(&mut st, sw, &jobs[1].key); // pid 42 on host h
        st.record_attempt_start(
            sw,
            &jobs[2].key,
            &AttemptStart {
                run: None,
                host: "other".into(),
                device: "cpu".into(),
                pid: Some(7),
            },
        )
        .unwrap();
        // pid 42 is alive: nothing to do.
        assert!(st.reclaim_stale(sw, "h", |p| p == 42).unwrap().is_empty());
        let got = st.reclaim_stale(sw, "h", |_| false).unwrap();
        assert_eq!(got, vec![jobs[1].key.clone()]);
        assert_eq!(
            st.job(sw, &jobs[1].key).unwrap().unwrap().status,
            JobStatus::Failed
        );
        assert_eq!(
            st.attempts(sw, &jobs[1].key).unwrap()[0].class,
            Some(ExitClass::Lost)
        );
        assert_eq!(
            st.job(sw, &jobs[2].key).unwrap().unwrap().status,
            JobStatus::Running
        );
    }

    #[test]
    fn metrics_curves_counts_environment_round_trip() {
        let (_d, path) = temp();
        let (mut st, sw, _cells, jobs) = setup(&path);
        let key = &jobs[1].key;
        let cases = vec![
            CaseMetric {
                case_id: "sah_001".into(),
                dice: 0.75,
                tp: 300,
                fp: 50,
                fn_: 150,
                hd95: 4.5,
                volume_true_ml: 12.5,
                volume_pred_ml: 9.0,
                stratum: Some("5-15".into()),
            },
            CaseMetric {
                case_id: "sah_002".into(),
                dice: f64::NAN,
                tp: 0,
                fp: 0,
                fn_: 0,
                hd95: f64::NAN,
                volume_true_ml: 0.0,
                volume_pred_ml: 0.0,
                stratum: None,
            },
        ];
        let rows = |cases: &[CaseMetric], epochs: &[EpochPoint], params: &[ParamCount]| {
            vec![results::JobRows {
                key: key.to_string(),
                cases: cases.to_vec(),
                epochs: epochs.to_vec(),
                params: params.to_vec(),
                device: None,
            }]
        };
        st.record_results(sw, &rows(&cases, &[], &[]), false)
            .unwrap();
        // Ingesting twice replaces rather than duplicates.
        st.record_results(sw, &rows(&cases, &[], &[]), false)
            .unwrap();
        let back = st.case_metrics(sw, key).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0], cases[0]);
        assert!(back[1].dice.is_nan() && back[1].hd95.is_nan());
        assert_eq!(back[1].tp, 0);

        let pts = vec![
            EpochPoint {
                step: 0,
                loss: Some(0.9),
                lr: Some(1e-3),
                val_dice: None,
            },
            EpochPoint {
                step: 10,
                loss: Some(0.5),
                lr: Some(5e-4),
                val_dice: Some(0.4),
            },
        ];
        st.record_results(sw, &rows(&[], &pts, &[]), false).unwrap();
        assert_eq!(st.epochs(sw, key).unwrap(), pts);
        // Re-ingesting replaces the whole curve (not point by point); no points keeps it.
        let shorter = vec![EpochPoint {
            step: 5,
            loss: Some(f64::NAN),
            lr: Some(f64::INFINITY),
            val_dice: Some(0.25),
        }];
        st.record_results(sw, &rows(&[], &shorter, &[]), false)
            .unwrap();
        let none = EpochPoint {
            loss: None,
            lr: None,
            ..shorter[0]
        };
        assert_eq!(st.epochs(sw, key).unwrap(), [none]);
        st.record_results(sw, &rows(&[], &[], &[]), false).unwrap();
        assert_eq!(st.epochs(sw, key).unwrap(), [none]);
        assert_eq!(st.epochs(sw, &jobs[0].key).unwrap(), []);
        st.record_results(sw, &rows(&[], &pts, &[]), false).unwrap();
        assert_eq!(st.epochs(sw, key).unwrap(), pts);

        let pc = vec![
            ParamCount {
                scope: "decoder.0.conv1".into(),
                total: 1000,
                trainable: 64,
            },
            ParamCount {
                scope: "model".into(),
                total: 50_000,
                trainable: 640,
            },
        ];
        st.record_results(sw, &rows(&[], &[], &pc), false).unwrap();
        assert_eq!(st.param_counts(sw, key).unwrap(), pc);

        let run = st.start_run(sw, "abc123+dirty", "h", 1).unwrap();
        let env = vec![
            ("device".to_string(), "cpu".to_string()),
            ("git".to_string(), "abc".to_string()),
        ];
        st.record_environment(run, &env).unwrap();
        st.record_environment(run, &[("git".to_string(), "def".to_string())])
            .unwrap();
        assert_eq!(
            st.environment(run).unwrap(),
            vec![
                ("device".to_string(), "cpu".to_string()),
                ("git".to_string(), "def".to_string())
            ]
        );
        st.end_run(run, 0).unwrap();
        let mut unknown = rows(&[], &pts, &[]);
        unknown[0].key = "nope".into();
        assert!(matches!(
            st.record_results(sw, &unknown, false),
            Err(StoreError::UnknownJob { .. })
        ));
    }
}
