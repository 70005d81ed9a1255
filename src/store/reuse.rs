//! What the lifecycle of a job needs from the database beyond one sweep (#12): jobs already
//! done under the same key in another sweep (reused, their results linked through
//! `jobs.result_of`, schema 4), runs whose process died without ending, and a read-only
//! "is this job done" for a run that shares a sweep with another.
//!
//! Design: a job key hashes the canonical config, the code and the data (and its
//! dependencies' keys), so the same key done anywhere in the database is the same result. A
//! reused job points at the original's row; it never gets copies of the rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{JobRecord, RunId, Store, StoreError, SweepId, now};

/// A job done under the same key in another sweep.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DoneElsewhere {
    /// The original job's row (what `result_of` links to).
    #[serde(skip)]
    pub job: i64,
    pub sweep: String,
    /// The run of its `ok` attempt (None for a job made done by `ingest`).
    pub run: Option<i64>,
    /// Its folder, from its recorded job config (`output`).
    pub dir: Option<PathBuf>,
}

impl JobRecord {
    /// The typed job config: the one place `config_json` is parsed.
    pub fn config(&self) -> Result<crate::train::JobConfig, serde_json::Error> {
        serde_json::from_str(&self.config_json)
    }
}

impl Store {
    /// Done jobs with results of their own in every sweep but `except`, by key (the oldest
    /// when a key is done in several).
    pub fn done_elsewhere(
        &self,
        except: Option<SweepId>,
    ) -> Result<HashMap<String, DoneElsewhere>, StoreError> {
        let rows: Vec<(String, i64, String, Option<i64>, String)> = self.rows(
            "finding jobs done in other sweeps",
            "SELECT j.job_key, j.id, s.name,
                    (SELECT a.run FROM attempts a WHERE a.job = j.id AND a.exit_class = 'ok'
                     ORDER BY a.number DESC LIMIT 1),
                    j.config_json
             FROM jobs j JOIN sweeps s ON s.id = j.sweep_id
             WHERE j.status = 'done' AND j.result_of IS NULL AND j.sweep_id <> ?1
             ORDER BY j.id",
            [except.map_or(-1, |s| s.0)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        let mut out = HashMap::new();
        for (key, job, sweep, run, config) in rows {
            let dir = serde_json::from_str::<serde_json::Value>(&config)
                .ok()
                .and_then(|v| v.get("output")?.as_str().map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty());
            out.entry(key).or_insert(DoneElsewhere {
                job,
                sweep,
                run,
                dir,
            });
        }
        Ok(out)
    }

    /// Marks job `key` of `sweep` done with the results of job row `source` (another sweep's).
    pub fn link_result(
        &mut self,
        sweep: SweepId,
        key: &str,
        source: i64,
    ) -> Result<(), StoreError> {
        let job = self.job_row(sweep, key)?;
        self.conn
            .execute(
                "UPDATE jobs SET status = 'done', result_of = ?2, updated_at = ?3
                 WHERE id = ?1 AND status <> 'running'",
                params![job, source, now()],
            )
            .map_err(self.sql("linking a reused result"))?;
        Ok(())
    }

    /// The sweep's reused jobs by key, each with the sweep and run its results come from.
    pub fn linked_results(
        &self,
        sweep: SweepId,
    ) -> Result<HashMap<String, DoneElsewhere>, StoreError> {
        let rows: Vec<(String, i64, String, Option<i64>)> = self.rows(
            "reading reused results",
            "SELECT j.job_key, o.id, s.name,
                    (SELECT a.run FROM attempts a WHERE a.job = o.id AND a.exit_class = 'ok'
                     ORDER BY a.number DESC LIMIT 1)
             FROM jobs j JOIN jobs o ON o.id = j.result_of JOIN sweeps s ON s.id = o.sweep_id
             WHERE j.sweep_id = ?1",
            [sweep.0],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        Ok(rows
            .into_iter()
            .map(|(key, job, sweep, run)| {
                let d = DoneElsewhere {
                    job,
                    sweep,
                    run,
                    dir: None,
                };
                (key, d)
            })
            .collect())
    }

    /// Ends the runs of `sweep` on `host` that never ended and whose process `alive` says is
    /// gone (a kill -9, a crash): `ended_at` is set now, `exit_code` stays NULL (killed).
    /// Returns their ids. Runs on other hosts are left alone: only their host can tell.
    pub fn end_dead_runs(
        &mut self,
        sweep: SweepId,
        host: &str,
        alive: impl Fn(u32) -> bool,
    ) -> Result<Vec<RunId>, StoreError> {
        let open: Vec<(i64, u32)> = self.rows(
            "finding runs that never ended",
            "SELECT id, pid FROM runs WHERE sweep_id = ?1 AND host = ?2 AND ended_at IS NULL",
            params![sweep.0, host],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut ended = Vec::new();
        for (id, pid) in open {
            if pid == std::process::id() || alive(pid) {
                continue;
            }
            self.conn
                .execute(
                    "UPDATE runs SET ended_at = ?2 WHERE id = ?1 AND ended_at IS NULL",
                    params![id, now()],
                )
                .map_err(self.sql("ending a killed run"))?;
            ended.push(RunId(id));
        }
        Ok(ended)
    }
}

/// Whether job `key` of `sweep` is done, read through a read-only connection of its own (so
/// that the dispatcher can ask while the recorder writes): `run` checks before each start
/// whether another run of the same sweep finished the job meanwhile.
pub fn job_done(db: &Path, sweep: SweepId, key: &str) -> Result<bool, StoreError> {
    let err = |context| {
        move |source| StoreError::Sql {
            path: db.to_path_buf(),
            context,
            source,
        }
    };
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(err("opening the database to read"))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err("opening the database to read"))?;
    let status: Option<String> = conn
        .query_row(
            "SELECT status FROM jobs WHERE sweep_id = ?1 AND job_key = ?2",
            params![sweep.0, key],
            |r| r.get(0),
        )
        .optional()
        .map_err(err("reading a job's status"))?;
    Ok(status.as_deref() == Some("done"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema;
    use crate::store::tests::pretrain_job;
    use crate::store::{AttemptEnd, AttemptStart, CaseMetric, ExitClass, JobStatus};

    fn metric(case: &str, dice: f64) -> CaseMetric {
        CaseMetric {
            case_id: case.into(),
            dice,
            tp: 1,
            fp: 0,
            fn_: 0,
            hd95: 1.0,
            volume_true_ml: 1.0,
            volume_pred_ml: 1.0,
            stratum: None,
        }
    }

    #[test]
    fn a_job_done_in_another_sweep_is_linked_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(&dir.path().join("db")).unwrap();
        let a = st.upsert_sweep("a", Path::new("a.yaml"), "").unwrap();
        let b = st.upsert_sweep("b", Path::new("b.yaml"), "").unwrap();
        st.upsert_jobs(a, &[pretrain_job("k")]).unwrap();
        st.upsert_jobs(b, &[pretrain_job("k")]).unwrap();
        let run = st.start_run(a, "c", "h", 1).unwrap();
        let at = st
            .record_attempt_start(
                a,
                "k",
                &AttemptStart {
                    run: Some(run),
                    host: "h".into(),
                    device: "cpu".into(),
                    pid: None,
                },
            )
            .unwrap();
        st.record_attempt_end(
            at,
            &AttemptEnd {
                class: ExitClass::Ok,
                exit_code: Some(0),
                error: None,
            },
        )
        .unwrap();
        let rows = crate::store::results::JobRows {
            key: "k".into(),
            cases: vec![metric("c1", 0.5)],
            ..Default::default()
        };
        st.record_results(a, &[rows], false).unwrap();
        let found = st.done_elsewhere(Some(b)).unwrap();
        let orig = &found["k"];
        assert_eq!((orig.sweep.as_str(), orig.run), ("a", Some(run.0)));
        assert!(st.done_elsewhere(Some(a)).unwrap().is_empty());
        st.link_result(b, "k", orig.job).unwrap();
        assert_eq!(st.job(b, "k").unwrap().unwrap().status, JobStatus::Done);
        assert_eq!(
            st.case_metrics(b, "k").unwrap(),
            st.case_metrics(a, "k").unwrap()
        );
        assert_eq!(st.linked_results(b).unwrap()["k"].sweep, "a");
        assert!(st.linked_results(a).unwrap().is_empty());
        // One row, not two; a linked job is not a source itself.
        let c = Connection::open(dir.path().join("db")).unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM case_metrics", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(st.done_elsewhere(None).unwrap().len(), 1);
        assert!(job_done(&dir.path().join("db"), b, "k").unwrap());
    }

    #[test]
    fn a_run_whose_process_is_gone_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(&dir.path().join("db")).unwrap();
        let s = st.upsert_sweep("s", Path::new("s.yaml"), "").unwrap();
        let dead = st.start_run(s, "c", "h", 4_000_000).unwrap();
        let live = st.start_run(s, "c", "h", 4_000_001).unwrap();
        let other = st.start_run(s, "c", "elsewhere", 4_000_002).unwrap();
        let ended = st.end_dead_runs(s, "h", |pid| pid == 4_000_001).unwrap();
        assert_eq!(ended, vec![dead]);
        let r = st.run(dead).unwrap().unwrap();
        assert!(r.ended_at.is_some() && r.exit_code.is_none());
        assert!(st.run(live).unwrap().unwrap().ended_at.is_none());
        assert!(st.run(other).unwrap().unwrap().ended_at.is_none());
    }

    #[test]
    fn migration_4_adds_result_links_to_a_version_3_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let c = schema::database_at_version(&path, 3);
            c.execute(
                "INSERT INTO sweeps (name, spec_path, spec_text, created_at, updated_at)
                 VALUES ('s', 's.yaml', '', 't', 't')",
                [],
            )
            .unwrap();
        }
        let st = Store::open(&path).unwrap();
        assert_eq!(st.schema_version().unwrap(), schema::VERSION);
        assert!(st.sweep_id("s").unwrap().is_some());
        let c = Connection::open(&path).unwrap();
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = 'result_of'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }
}
