//! What ran the jobs (schema 5): one `job_devices` row per result, `ran_on` and `peak_gpu_mb`
//! per attempt; and the GPU memory finished attempts needed, which sizes the slots per GPU.

use rusqlite::params;

use super::{AttemptId, Store, StoreError, SweepId};

/// One result's device, as ingested from `result.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// One line (`cpu (2 threads), f32`, `NVIDIA H200 (GPU 0), …, bf16`).
    pub ran_on: String,
    /// The worker's record as JSON.
    pub info: String,
}

impl Store {
    /// Records what ran an attempt and the most GPU memory its worker held. Call before
    /// [`Store::record_attempt_end`]; either value may be unknown.
    pub fn record_attempt_device(
        &mut self,
        attempt: AttemptId,
        ran_on: Option<&str>,
        peak_gpu_mb: Option<f64>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE attempts SET ran_on = COALESCE(?2, ran_on),
                                     peak_gpu_mb = COALESCE(?3, peak_gpu_mb)
                 WHERE id = ?1",
                params![attempt.0, ran_on, peak_gpu_mb.filter(|m| m.is_finite())],
            )
            .map_err(self.sql("recording an attempt's device"))?;
        Ok(())
    }

    /// The device row of a job's result, if it has one.
    pub fn job_device(&self, sweep: SweepId, key: &str) -> Result<Option<DeviceRow>, StoreError> {
        let job = self.job_row(sweep, key)?;
        Ok(self
            .rows(
                "reading a job's device",
                "SELECT device, ran_on, info FROM job_devices WHERE job = ?1",
                [job],
                |r| {
                    Ok(DeviceRow {
                        device: r.get(0)?,
                        ran_on: r.get(1)?,
                        info: r.get(2)?,
                    })
                },
            )?
            .pop())
    }

    /// What ran the sweep's active jobs that have a result: each distinct `ran_on` line with
    /// its number of jobs, most jobs first.
    pub fn ran_on_counts(&self, sweep: SweepId) -> Result<Vec<(String, usize)>, StoreError> {
        self.rows(
            "counting what ran the jobs",
            "SELECT d.ran_on, COUNT(*) FROM job_devices d JOIN jobs j ON j.id = d.job
             WHERE j.sweep_id = ?1 AND j.active = 1
             GROUP BY d.ran_on ORDER BY COUNT(*) DESC, d.ran_on",
            [sweep.0],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize)),
        )
    }

    /// `(config_json, peak_gpu_mb)` of every `ok` attempt, in any sweep, whose GPU memory was
    /// measured: what jobs of a shape need.
    pub fn gpu_peaks(&self) -> Result<Vec<(String, f64)>, StoreError> {
        self.rows(
            "reading measured GPU memory",
            "SELECT j.config_json, a.peak_gpu_mb FROM attempts a JOIN jobs j ON j.id = a.job
             WHERE a.exit_class = 'ok' AND a.peak_gpu_mb IS NOT NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::results::JobRows;
    use crate::store::tests::pretrain_job;
    use crate::store::{AttemptEnd, AttemptStart, ExitClass, schema};

    #[test]
    fn devices_of_attempts_and_results_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut st = Store::open(&d.path().join("db.sqlite")).unwrap();
        let sw = st
            .upsert_sweep("s", std::path::Path::new("s.yaml"), "")
            .unwrap();
        st.upsert_jobs(sw, &[pretrain_job("a"), pretrain_job("b")])
            .unwrap();
        let start = AttemptStart {
            run: None,
            host: "h".into(),
            device: "cuda:0".into(),
            pid: Some(1),
        };
        let at = st.record_attempt_start(sw, "a", &start).unwrap();
        let line = "NVIDIA H200 (GPU 0), driver 580.65.06, CUDA 13.0, cuDNN on, f32";
        st.record_attempt_device(at, Some(line), Some(812.5))
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
        let a = &st.attempts(sw, "a").unwrap()[0];
        assert_eq!(a.ran_on.as_deref(), Some(line));
        assert_eq!(a.peak_gpu_mb, Some(812.5));
        let peaks = st.gpu_peaks().unwrap();
        assert_eq!(peaks.len(), 1);
        assert_eq!(peaks[0].1, 812.5);

        let row = |key: &str, ran_on: &str| JobRows {
            key: key.into(),
            device: Some(DeviceRow {
                device: "cpu".into(),
                ran_on: ran_on.into(),
                info: "{}".into(),
            }),
            ..JobRows::default()
        };
        st.record_results(
            sw,
            &[row("a", line), row("b", "cpu (2 threads), f32")],
            true,
        )
        .unwrap();
        // Ingesting again replaces the row.
        st.record_results(sw, &[row("a", line)], true).unwrap();
        assert_eq!(st.job_device(sw, "a").unwrap().unwrap().ran_on, line);
        assert_eq!(
            st.ran_on_counts(sw).unwrap(),
            [
                (line.to_string(), 1),
                ("cpu (2 threads), f32".to_string(), 1)
            ]
        );
    }

    #[test]
    fn migration_4_keeps_old_attempts() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("db.sqlite");
        let c = schema::database_at_version(&path, 3);
        c.execute_batch(
            "INSERT INTO sweeps VALUES (1, 's', 's.yaml', '', 't', 't');
             INSERT INTO jobs (id, sweep_id, job_key, stage, seed, view, config_json, created_at, updated_at)
                 VALUES (1, 1, 'a', 'pretrain', 0, 'axial', '{}', 't', 't');
             INSERT INTO attempts (job, number, host, device, started_at, exit_class)
                 VALUES (1, 1, 'h', 'cpu', 't', 'ok');",
        )
        .unwrap();
        drop(c);
        let st = Store::open(&path).unwrap();
        assert_eq!(st.schema_version().unwrap(), schema::VERSION);
        let a = &st.attempts(SweepId(1), "a").unwrap()[0];
        assert_eq!((a.ran_on.clone(), a.peak_gpu_mb), (None, None));
        assert!(st.job_device(SweepId(1), "a").unwrap().is_none());
    }
}
