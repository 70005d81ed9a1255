//! Runs and what each covered: the `run_jobs` table (schema 2) and its queries.
//!
//! Key types: [`CoveredJob`] (what `run` records when it starts), [`RunRecord`] (one row of
//! `runs` with its job counts), [`RunJob`] (a job as one run saw it).
//!
//! Design: a run's coverage is written with the run row in one transaction, before any worker
//! starts, so a killed run still says what it covered. Results stay keyed by job (a job's key
//! changes with its config, code and data, so a done job's metrics never change); what a run
//! adds is *which* jobs and how each ended in that run, read from its attempts.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{ExitClass, RunId, Store, StoreError, SweepId, now};

/// A job a starting run covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoveredJob {
    pub key: String,
    /// Already done when the run started: its recorded result is reused.
    pub cached: bool,
    /// The run means to execute it (not cached, and not a failure left alone).
    pub scheduled: bool,
}

/// One `run` invocation of a sweep, with how many jobs it covered.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: RunId,
    pub sweep: SweepId,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// None while running, or when the run was killed.
    pub ended_at: Option<String>,
    pub code_version: String,
    pub host: String,
    pub pid: u32,
    pub exit_code: Option<i32>,
    /// Jobs covered (0 for runs recorded before schema 2).
    pub jobs: u64,
    /// Of those, already done when the run started.
    pub cached: u64,
}

/// A job as one run saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunJob {
    pub key: String,
    pub cached: bool,
    pub scheduled: bool,
    /// The class of the job's last finished attempt in this run (None: not finished in it).
    pub outcome: Option<ExitClass>,
}

const RUN_COLUMNS: &str = "r.id, r.sweep_id, r.started_at, r.ended_at, r.code_version, r.host, \
     r.pid, r.exit_code, \
     (SELECT count(*) FROM run_jobs x WHERE x.run = r.id), \
     (SELECT count(*) FROM run_jobs x WHERE x.run = r.id AND x.cached = 1)";

fn run_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: RunId(r.get(0)?),
        sweep: SweepId(r.get(1)?),
        started_at: r.get(2)?,
        ended_at: r.get(3)?,
        code_version: r.get(4)?,
        host: r.get(5)?,
        pid: r.get(6)?,
        exit_code: r.get(7)?,
        jobs: r.get::<_, i64>(8)? as u64,
        cached: r.get::<_, i64>(9)? as u64,
    })
}

impl Store {
    /// Records the start of a `run` and the jobs it covers, in one transaction. Every key must
    /// be a job of the sweep (record the plan first).
    pub fn start_run_covering(
        &mut self,
        sweep: SweepId,
        code_version: &str,
        host: &str,
        pid: u32,
        jobs: &[CoveredJob],
    ) -> Result<RunId, StoreError> {
        let path = self.path.clone();
        let err = self.sql_detached("recording the run and its jobs");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        tx.execute(
            "INSERT INTO runs (sweep_id, started_at, code_version, host, pid)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![sweep.0, now(), code_version, host, pid],
        )
        .map_err(&err)?;
        let run = tx.last_insert_rowid();
        {
            let mut find = tx
                .prepare("SELECT id FROM jobs WHERE sweep_id = ?1 AND job_key = ?2")
                .map_err(&err)?;
            let mut insert = tx
                .prepare(
                    "INSERT INTO run_jobs (run, job, cached, scheduled) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(&err)?;
            for j in jobs {
                let id: i64 = find
                    .query_row(params![sweep.0, j.key], |r| r.get(0))
                    .optional()
                    .map_err(&err)?
                    .ok_or_else(|| StoreError::UnknownJob {
                        path: path.clone(),
                        sweep: sweep.0,
                        key: j.key.clone(),
                    })?;
                insert
                    .execute(params![run, id, j.cached, j.scheduled])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        Ok(RunId(run))
    }

    /// The names of all sweeps in the database, sorted.
    pub fn sweep_names(&self) -> Result<Vec<String>, StoreError> {
        self.rows(
            "listing the sweeps",
            "SELECT name FROM sweeps ORDER BY name",
            [],
            |r| r.get(0),
        )
    }

    /// The sweep's runs, oldest first.
    pub fn runs(&self, sweep: SweepId) -> Result<Vec<RunRecord>, StoreError> {
        self.rows(
            "listing the runs",
            &format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.sweep_id = ?1 ORDER BY r.id"),
            [sweep.0],
            run_record,
        )
    }

    /// One run (of any sweep).
    pub fn run(&self, run: RunId) -> Result<Option<RunRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = ?1"),
                [run.0],
                run_record,
            )
            .optional()
            .map_err(self.sql("reading a run"))
    }

    /// The jobs a run covered, in plan order, with how each ended in that run.
    pub fn run_jobs(&self, run: RunId) -> Result<Vec<RunJob>, StoreError> {
        let raws: Vec<(String, bool, bool, Option<String>)> = self.rows(
            "reading the jobs of a run",
            "SELECT j.job_key, x.cached, x.scheduled,
                        (SELECT a.exit_class FROM attempts a
                         WHERE a.job = x.job AND a.run = x.run AND a.exit_class IS NOT NULL
                         ORDER BY a.number DESC LIMIT 1)
                 FROM run_jobs x JOIN jobs j ON j.id = x.job
                 WHERE x.run = ?1 ORDER BY j.id",
            [run.0],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        raws.into_iter()
            .map(|(key, cached, scheduled, class)| {
                let outcome = match class {
                    None => None,
                    Some(c) => Some(
                        ExitClass::parse(&c)
                            .ok_or_else(|| self.corrupt("attempts.exit_class", &c))?,
                    ),
                };
                Ok(RunJob {
                    key,
                    cached,
                    scheduled,
                    outcome,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::{AttemptEnd, AttemptStart, schema};

    use crate::store::tests::pretrain_job as job;

    fn covered(key: &str, cached: bool, scheduled: bool) -> CoveredJob {
        CoveredJob {
            key: key.into(),
            cached,
            scheduled,
        }
    }

    fn attempt(st: &mut Store, sw: SweepId, run: RunId, key: &str, class: ExitClass) {
        let id = st
            .record_attempt_start(
                sw,
                key,
                &AttemptStart {
                    run: Some(run),
                    host: "h".into(),
                    device: "cpu".into(),
                    pid: Some(1),
                },
            )
            .unwrap();
        st.record_attempt_end(
            id,
            &AttemptEnd {
                class,
                exit_code: Some(0),
                error: None,
            },
        )
        .unwrap();
    }

    #[test]
    fn runs_record_their_jobs_and_each_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(&dir.path().join("r.db")).unwrap();
        let sw = st.upsert_sweep("s", Path::new("s.yaml"), "").unwrap();
        let other = st.upsert_sweep("t", Path::new("t.yaml"), "").unwrap();
        st.upsert_jobs(sw, &[job("a"), job("b"), job("c")]).unwrap();
        st.upsert_jobs(other, &[job("a")]).unwrap();

        let first = st
            .start_run_covering(
                sw,
                "v1",
                "h",
                7,
                &[covered("a", false, true), covered("b", false, true)],
            )
            .unwrap();
        attempt(&mut st, sw, first, "a", ExitClass::Ok);
        attempt(&mut st, sw, first, "b", ExitClass::Failed);
        st.end_run(first, 1).unwrap();
        // The second run reuses `a`, retries `b` and is killed before finishing `c`.
        let second = st
            .start_run_covering(
                sw,
                "v1",
                "h",
                8,
                &[
                    covered("a", true, false),
                    covered("b", false, true),
                    covered("c", false, true),
                ],
            )
            .unwrap();
        attempt(&mut st, sw, second, "b", ExitClass::Ok);
        st.start_run_covering(other, "v1", "h", 9, &[covered("a", false, true)])
            .unwrap();

        let runs = st.runs(sw).unwrap();
        assert_eq!(
            runs.iter().map(|r| r.id).collect::<Vec<_>>(),
            [first, second]
        );
        assert_eq!((runs[0].jobs, runs[0].cached), (2, 0));
        assert_eq!((runs[1].jobs, runs[1].cached), (3, 1));
        assert_eq!(runs[0].exit_code, Some(1));
        assert!(runs[0].ended_at.is_some() && runs[1].ended_at.is_none());
        assert_eq!(runs[1].pid, 8);
        assert_eq!(st.run(second).unwrap().unwrap(), runs[1]);
        assert_eq!(st.run(RunId(999)).unwrap(), None);

        let outcomes = |run| {
            st.run_jobs(run)
                .unwrap()
                .into_iter()
                .map(|j| (j.key, j.cached, j.outcome))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            outcomes(first),
            [
                ("a".to_string(), false, Some(ExitClass::Ok)),
                ("b".to_string(), false, Some(ExitClass::Failed)),
            ]
        );
        assert_eq!(
            outcomes(second),
            [
                ("a".to_string(), true, None),
                ("b".to_string(), false, Some(ExitClass::Ok)),
                ("c".to_string(), false, None),
            ]
        );
        assert_eq!(st.sweep_names().unwrap(), ["s", "t"]);
    }

    #[test]
    fn an_unknown_job_records_no_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(&dir.path().join("r.db")).unwrap();
        let sw = st.upsert_sweep("s", Path::new("s.yaml"), "").unwrap();
        st.upsert_jobs(sw, &[job("a")]).unwrap();
        let e = st
            .start_run_covering(
                sw,
                "v",
                "h",
                1,
                &[covered("a", false, true), covered("zz", false, true)],
            )
            .unwrap_err();
        assert!(e.to_string().contains("no job `zz`"), "{e}");
        // One transaction: neither the run nor `a`'s row was kept.
        assert!(st.runs(sw).unwrap().is_empty());
    }

    #[test]
    fn a_schema_1_database_migrates_and_keeps_its_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = schema::database_at_version(&path, 1);
            c.execute_batch(
                "INSERT INTO sweeps (name, spec_path, spec_text, created_at, updated_at)
                    VALUES ('s', 's.yaml', '', 't', 't');
                 INSERT INTO runs (sweep_id, started_at, ended_at, code_version, host, pid,
                                   exit_code)
                    VALUES (1, '2026-01-01T00:00:00Z', '2026-01-01T01:00:00Z', 'old', 'h', 3, 0);",
            )
            .unwrap();
        }
        let st = Store::open(&path).unwrap();
        assert_eq!(st.schema_version().unwrap(), schema::VERSION);
        let runs = st.runs(SweepId(1)).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].code_version.as_str(), runs[0].jobs), ("old", 0));
        assert!(st.run_jobs(runs[0].id).unwrap().is_empty());
    }
}
