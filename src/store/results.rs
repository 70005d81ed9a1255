//! Batched result rows: many jobs' per-case metrics, training curves and parameter counts in
//! one transaction with prepared statements — what ingesting a cluster's thousands of result
//! files needs (one transaction per job and table made it ~5 commits per file).
//!
//! Rows replace earlier rows of the same case, step or scope, and a job already done keeps its
//! row untouched, so ingesting the same files twice gives the same database.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{CaseMetric, EpochPoint, ParamCount, Store, StoreError, SweepId, finite, now};

/// One job's result rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobRows {
    pub key: String,
    pub cases: Vec<CaseMetric>,
    pub epochs: Vec<EpochPoint>,
    pub params: Vec<ParamCount>,
}

impl Store {
    /// The keys of every job the sweep has (active or not).
    pub fn job_keys(&self, sweep: SweepId) -> Result<HashSet<String>, StoreError> {
        let err = self.sql("reading job keys");
        let mut st = self
            .conn
            .prepare("SELECT job_key FROM jobs WHERE sweep_id = ?1")
            .map_err(&err)?;
        st.query_map([sweep.0], |r| r.get(0))
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)
    }

    /// Records the rows of `jobs` in one transaction and, with `mark_done`, sets them done. A
    /// key the sweep does not have fails the whole batch (nothing is written).
    pub fn record_results(
        &mut self,
        sweep: SweepId,
        jobs: &[JobRows],
        mark_done: bool,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sql {
            path: path.clone(),
            context: "saving results",
            source,
        };
        let t = now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut find = tx
                .prepare("SELECT id FROM jobs WHERE sweep_id = ?1 AND job_key = ?2")
                .map_err(err)?;
            let mut case = tx
                .prepare(
                    "INSERT OR REPLACE INTO case_metrics (job, case_id, dice, tp, fp, fn, hd95,
                                                        volume_true_ml, volume_pred_ml, stratum)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(err)?;
            let mut epoch = tx
                .prepare(
                    "INSERT OR REPLACE INTO epochs (job, step, loss, lr, val_dice)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            let mut count = tx
                .prepare(
                    "INSERT OR REPLACE INTO param_counts (job, scope, total, trainable)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            let mut done = tx
                .prepare("UPDATE jobs SET status = 'done', updated_at = ?2 WHERE id = ?1 AND status <> 'done'")
                .map_err(err)?;
            for j in jobs {
                let id: i64 = find
                    .query_row(params![sweep.0, j.key], |r| r.get(0))
                    .optional()
                    .map_err(err)?
                    .ok_or_else(|| StoreError::UnknownJob {
                        path: path.clone(),
                        sweep: sweep.0,
                        key: j.key.clone(),
                    })?;
                for c in &j.cases {
                    case.execute(params![
                        id,
                        c.case_id,
                        finite(c.dice),
                        c.tp as i64,
                        c.fp as i64,
                        c.fn_ as i64,
                        finite(c.hd95),
                        c.volume_true_ml,
                        c.volume_pred_ml,
                        c.stratum,
                    ])
                    .map_err(err)?;
                }
                for p in &j.epochs {
                    epoch
                        .execute(params![
                            id,
                            p.step as i64,
                            p.loss.and_then(finite),
                            p.lr,
                            p.val_dice.and_then(finite)
                        ])
                        .map_err(err)?;
                }
                for c in &j.params {
                    count
                        .execute(params![id, c.scope, c.total as i64, c.trainable as i64])
                        .map_err(err)?;
                }
                if mark_done {
                    done.execute(params![id, t]).map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)
    }
}
