//! What earlier runs left behind, read for planning: every job a sweep ever had (so `plan
//! --explain` can say why a key is new), the fingerprints each run planned with, and the
//! durations of finished attempts (for `plan`'s estimate).
//!
//! Design: read-only queries on the tables of the first migration; fingerprints are kept as
//! `fingerprint.*` entries of a run's environment (no schema change), written by `run`.

use rusqlite::{OptionalExtension, params};

use super::{JobRecord, RunId, Stage, Store, StoreError, SweepId, parse_stage};
use crate::model::AdaptationKind;

/// Environment keys under which `run` records the fingerprints it planned with.
pub const ENV_CODE: &str = "fingerprint.code";
pub const ENV_SOURCE: &str = "fingerprint.source";
pub const ENV_TARGET: &str = "fingerprint.target";

/// The code and data fingerprints a run planned with, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFingerprints {
    pub run: RunId,
    pub code: String,
    pub source: Option<String>,
    pub target: Option<String>,
}

/// A finished (`ok`) attempt and what its job was, for duration estimates.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedAttempt {
    pub stage: Stage,
    pub kind: Option<AdaptationKind>,
    pub config_json: String,
    pub seconds: f64,
}

impl FinishedAttempt {
    /// The typed job config (as [`JobRecord::config`]).
    pub fn config(&self) -> Result<crate::train::JobConfig, serde_json::Error> {
        serde_json::from_str(&self.config_json)
    }
}

impl Store {
    /// Every job the sweep ever had, active or not, oldest first.
    pub fn all_jobs(&self, sweep: SweepId) -> Result<Vec<JobRecord>, StoreError> {
        self.select_jobs(sweep, false)
    }

    /// The fingerprints of the run that last started an attempt of job `key`, or, if it never
    /// ran, of the sweep's latest run; `None` when no run recorded them.
    pub fn run_fingerprints(
        &self,
        sweep: SweepId,
        key: &str,
    ) -> Result<Option<RunFingerprints>, StoreError> {
        let err = self.sql("reading run fingerprints");
        let by_attempt: Option<i64> = self
            .conn
            .query_row(
                "SELECT a.run FROM attempts a JOIN jobs j ON j.id = a.job
                 WHERE j.sweep_id = ?1 AND j.job_key = ?2 AND a.run IS NOT NULL
                 ORDER BY a.id DESC LIMIT 1",
                params![sweep.0, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?;
        let run = match by_attempt {
            Some(r) => Some(r),
            None => self
                .conn
                .query_row(
                    "SELECT r.id FROM runs r JOIN environment e ON e.run = r.id
                     WHERE r.sweep_id = ?1 AND e.key = ?2 ORDER BY r.id DESC LIMIT 1",
                    params![sweep.0, ENV_CODE],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&err)?,
        };
        let Some(run) = run else {
            return Ok(None);
        };
        let env = self.environment(RunId(run))?;
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let code = match get(ENV_CODE) {
            Some(c) => c,
            None => self
                .conn
                .query_row("SELECT code_version FROM runs WHERE id = ?1", [run], |r| {
                    r.get(0)
                })
                .map_err(&err)?,
        };
        Ok(Some(RunFingerprints {
            run: RunId(run),
            code,
            source: get(ENV_SOURCE),
            target: get(ENV_TARGET),
        }))
    }

    /// Every `ok` attempt in the database (all sweeps) with its wall time, oldest first.
    pub fn finished_attempts(&self) -> Result<Vec<FinishedAttempt>, StoreError> {
        let err = self.sql("reading attempt durations");
        let mut st = self
            .conn
            .prepare(
                "SELECT j.stage, j.kind, j.config_json, a.started_at, a.ended_at
                 FROM attempts a JOIN jobs j ON j.id = a.job
                 WHERE a.exit_class = 'ok' AND a.ended_at IS NOT NULL ORDER BY a.id",
            )
            .map_err(&err)?;
        type Raw = (String, Option<String>, String, String, String);
        let raws: Vec<Raw> = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        let mut out = Vec::with_capacity(raws.len());
        for (stage, kind, config_json, started, ended) in raws {
            let stage = parse_stage(&stage).ok_or_else(|| self.corrupt("jobs.stage", &stage))?;
            let kind = match kind {
                None => None,
                Some(k) => Some(
                    k.parse::<AdaptationKind>()
                        .map_err(|_| self.corrupt("jobs.kind", &k))?,
                ),
            };
            let (Ok(a), Ok(b)) = (
                humantime::parse_rfc3339(&started),
                humantime::parse_rfc3339(&ended),
            ) else {
                continue;
            };
            let Ok(d) = b.duration_since(a) else {
                continue;
            };
            out.push(FinishedAttempt {
                stage,
                kind,
                config_json,
                seconds: d.as_secs_f64(),
            });
        }
        Ok(out)
    }
}
