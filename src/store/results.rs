//! Batched result rows: many jobs' per-case metrics, training curves and parameter counts in
//! one transaction with prepared statements — what ingesting a cluster's thousands of result
//! files needs (one transaction per job and table made it ~5 commits per file).
//!
//! Rows replace earlier rows of the same case or scope, a curve replaces the job's earlier curve,
//! and a job already done keeps its row untouched, so ingesting the same files twice gives the
//! same database.
//!
//! A curve is one `curves` row per job holding compact JSON `[[step, loss, lr, val_dice], ...]`
//! (schema migration 3): one row per point made SQLite's per-row insert cost dominate ingest.
//! JSON rather than a packed BLOB keeps curves readable with SQLite's JSON functions and lets
//! the migration convert old rows in SQL; [`encode_curve`] and [`decode_curve`] are the format.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{CaseMetric, EpochPoint, ParamCount, Store, StoreError, SweepId, finite, now};

/// One stored point: `[step, loss, lr, val_dice]`.
type StoredPoint = (u64, Option<f64>, Option<f64>, Option<f64>);

/// A value JSON can hold: NaN and infinities become null.
fn json_value(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite())
}

/// One job's result rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobRows {
    pub key: String,
    pub cases: Vec<CaseMetric>,
    pub epochs: Vec<EpochPoint>,
    pub params: Vec<ParamCount>,
    /// What ran the job (`result.json`'s `ran_on`); `None` leaves an earlier row.
    pub device: Option<super::devices::DeviceRow>,
}

impl Store {
    /// The keys of every job the sweep has (active or not).
    pub fn job_keys(&self, sweep: SweepId) -> Result<HashSet<String>, StoreError> {
        self.rows(
            "reading job keys",
            "SELECT job_key FROM jobs WHERE sweep_id = ?1",
            [sweep.0],
            |r| r.get(0),
        )
        .map(|keys| keys.into_iter().collect())
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
        let err = self.sql_detached("saving results");
        let t = now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        {
            // A reused job's rows are those of the job it links to (`result_of`).
            let mut find = tx
                .prepare(
                    "SELECT id, COALESCE(result_of, id) FROM jobs
                     WHERE sweep_id = ?1 AND job_key = ?2",
                )
                .map_err(&err)?;
            let mut case = tx
                .prepare(
                    "INSERT OR REPLACE INTO case_metrics (job, case_id, dice, tp, fp, fn, hd95,
                                                        volume_true_ml, volume_pred_ml, stratum)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(&err)?;
            let mut curve = tx
                .prepare("INSERT OR REPLACE INTO curves (job, points) VALUES (?1, ?2)")
                .map_err(&err)?;
            let mut count = tx
                .prepare(
                    "INSERT OR REPLACE INTO param_counts (job, scope, total, trainable)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(&err)?;
            let mut device = tx
                .prepare(
                    "INSERT OR REPLACE INTO job_devices (job, device, ran_on, info)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(&err)?;
            let mut done = tx
                .prepare("UPDATE jobs SET status = 'done', updated_at = ?2 WHERE id = ?1 AND status <> 'done'")
                .map_err(&err)?;
            for j in jobs {
                let (job, id): (i64, i64) = find
                    .query_row(params![sweep.0, j.key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(&err)?
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
                    .map_err(&err)?;
                }
                // No points (an evaluation job) leaves any earlier curve, as before.
                if !j.epochs.is_empty() {
                    curve
                        .execute(params![id, encode_curve(&j.epochs)])
                        .map_err(&err)?;
                }
                for c in &j.params {
                    count
                        .execute(params![id, c.scope, c.total as i64, c.trainable as i64])
                        .map_err(&err)?;
                }
                if let Some(d) = &j.device {
                    device
                        .execute(params![id, d.device, d.ran_on, d.info])
                        .map_err(&err)?;
                }
                if mark_done {
                    done.execute(params![job, t]).map_err(&err)?;
                }
            }
        }
        tx.commit().map_err(&err)
    }
}

/// The `curves.points` text of `points`: ordered by step, a repeated step keeping its last point
/// (what the per-point table's `INSERT OR REPLACE` did), non-finite values as null.
pub(super) fn encode_curve(points: &[EpochPoint]) -> String {
    let mut stored: Vec<StoredPoint> = points
        .iter()
        .map(|p| {
            (
                p.step as u64,
                json_value(p.loss),
                json_value(p.lr),
                json_value(p.val_dice),
            )
        })
        .collect();
    // Curves arrive ordered; sort (stable, so the last of equal steps stays last) only if not.
    if stored.windows(2).any(|w| w[0].0 >= w[1].0) {
        stored.sort_by_key(|p| p.0);
        let mut kept: Vec<StoredPoint> = Vec::with_capacity(stored.len());
        for p in stored {
            match kept.last_mut() {
                Some(last) if last.0 == p.0 => *last = p,
                _ => kept.push(p),
            }
        }
        stored = kept;
    }
    serde_json::to_string(&stored).expect("integers and finite floats serialize")
}

/// The points of a `curves.points` text; `Err` holds why it is not a curve.
pub(super) fn decode_curve(text: &str) -> Result<Vec<EpochPoint>, String> {
    let stored: Vec<StoredPoint> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    stored
        .into_iter()
        .map(|(step, loss, lr, val_dice)| {
            Ok(EpochPoint {
                step: usize::try_from(step).map_err(|_| format!("step {step} is too large"))?,
                loss,
                lr,
                val_dice,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::store::schema;

    fn pt(step: usize, loss: Option<f64>, lr: Option<f64>, val_dice: Option<f64>) -> EpochPoint {
        EpochPoint {
            step,
            loss,
            lr,
            val_dice,
        }
    }

    #[test]
    fn curves_encode_ordered_compact_and_round_trip_exactly() {
        let pts = vec![
            pt(0, Some(1.0 / 3.0), Some(1e-3), None),
            pt(10, Some(f64::from(0.412_345_67_f32)), None, Some(0.0)),
            pt(20_000, Some(-0.0), Some(5e-324), Some(1.0)),
        ];
        let text = encode_curve(&pts);
        assert!(
            text.starts_with("[[0,0.3333333333333333,0.001,null],[10,"),
            "{text}"
        );
        assert_eq!(decode_curve(&text).unwrap(), pts);
        assert_eq!(decode_curve("[]").unwrap(), []);
    }

    #[test]
    fn non_finite_values_become_null_and_steps_are_sorted_last_wins() {
        let pts = [
            pt(
                20,
                Some(f64::NAN),
                Some(f64::INFINITY),
                Some(f64::NEG_INFINITY),
            ),
            pt(10, Some(0.5), None, None),
            pt(20, Some(0.25), None, None),
            pt(0, Some(0.9), None, None),
        ];
        let text = encode_curve(&pts);
        assert_eq!(
            text,
            "[[0,0.9,null,null],[10,0.5,null,null],[20,0.25,null,null]]"
        );
        assert_eq!(
            encode_curve(&pts[..1]),
            "[[20,null,null,null]]",
            "NaN and infinities are not JSON numbers"
        );
    }

    #[test]
    fn a_broken_curve_is_an_error_not_a_panic() {
        for bad in [
            "",
            "[[1,2]",
            "{\"a\":1}",
            "[[1,2,3]]",
            "[[-1,null,null,null]]",
            "[[1,\"x\",null,null]]",
        ] {
            assert!(decode_curve(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_schema_2_database_migrates_its_curve_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let c = schema::database_at_version(&path, 2);
            c.execute_batch(
                "INSERT INTO sweeps (name, spec_path, spec_text, created_at, updated_at)
                    VALUES ('s', 's.yaml', '', 't', 't');
                 INSERT INTO jobs (sweep_id, job_key, stage, seed, view, config_json,
                                   created_at, updated_at)
                    VALUES (1, 'a', 'pretrain', 0, 'axial', '{}', 't', 't'),
                           (1, 'b', 'finetune', 0, 'axial', '{}', 't', 't'),
                           (1, 'c', 'evaluate', 0, 'axial', '{}', 't', 't');",
            )
            .unwrap();
            // Inserted out of step order, with NULLs, an infinite lr and 17-digit values.
            let mut ins = c
                .prepare("INSERT INTO epochs (job, step, loss, lr, val_dice) VALUES (?1, ?2, ?3, ?4, ?5)")
                .unwrap();
            let rows: [(i64, StoredPoint); 5] = [
                (1, (20, Some(0.1), Some(f64::INFINITY), Some(0.7))),
                (1, (0, Some(1.0 / 3.0), Some(1e-3), None)),
                (
                    1,
                    (10, None, Some(2.5e-4), Some(f64::from(0.412_345_67_f32))),
                ),
                (2, (100, Some(0.2), None, None)),
                (2, (110, Some(1.0), None, None)),
            ];
            for (job, (step, loss, lr, dice)) in rows {
                ins.execute(params![job, step as i64, loss, lr, dice])
                    .unwrap();
            }
        }
        let st = Store::open(&path).unwrap();
        assert_eq!(st.schema_version().unwrap(), schema::VERSION);
        let sw = SweepId(1);
        assert_eq!(
            st.epochs(sw, "a").unwrap(),
            [
                pt(0, Some(1.0 / 3.0), Some(1e-3), None),
                pt(10, None, Some(2.5e-4), Some(f64::from(0.412_345_67_f32))),
                pt(20, Some(0.1), None, Some(0.7)),
            ]
        );
        assert_eq!(
            st.epochs(sw, "b").unwrap(),
            [
                pt(100, Some(0.2), None, None),
                pt(110, Some(1.0), None, None)
            ]
        );
        assert_eq!(st.epochs(sw, "c").unwrap(), []);
        let rows: i64 = st
            .conn
            .query_row("SELECT COUNT(*) FROM curves", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "one row per job with a curve");
    }

    #[test]
    fn a_corrupt_curve_row_names_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut st = Store::open(&path).unwrap();
        st.conn
            .execute_batch(
                "INSERT INTO sweeps (name, spec_path, spec_text, created_at, updated_at)
                    VALUES ('s', 's.yaml', '', 't', 't');
                 INSERT INTO jobs (sweep_id, job_key, stage, seed, view, config_json,
                                   created_at, updated_at)
                    VALUES (1, 'a', 'pretrain', 0, 'axial', '{}', 't', 't');
                 INSERT INTO curves (job, points) VALUES (1, '[[0,0.5,null');",
            )
            .unwrap();
        let e = st.epochs(SweepId(1), "a").unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Corrupt {
                    column: "curves.points",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("[[0,0.5,null"), "{e}");
        // A good re-ingest repairs it.
        let jobs = [JobRows {
            key: "a".into(),
            epochs: vec![pt(0, Some(0.5), None, None)],
            ..JobRows::default()
        }];
        st.record_results(SweepId(1), &jobs, false).unwrap();
        assert_eq!(st.epochs(SweepId(1), "a").unwrap(), jobs[0].epochs);
    }
}
