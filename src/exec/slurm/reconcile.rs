//! Reconciling a sweep's submissions with SLURM: which array task ran which job, and where
//! each job stands ([`Verdict`]), for `status` and for `submit` (which skips live jobs).
//!
//! Sources, best first: the result file on the shared file system (a job with `result.json`
//! is done, whatever SLURM says), then `sacct` where accounting is on, else `squeue` and, for
//! an array squeue no longer lists, `scontrol show job`. A task that SLURM has forgotten and
//! that wrote no result is [`Verdict::Lost`]. When a job was submitted more than once, the
//! latest submission (submission ids sort by time) speaks for it.
//!
//! [`reconcile`] is pure (manifests + SLURM rows + a result check); [`slurm_status`] gathers
//! the inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::state::{SlurmExit, TaskState, TaskStatus};
use super::submission::Manifest;
use super::{Result, SlurmError};

/// Where a submitted job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Its `result.json` exists.
    Done,
    /// Queued (or requeued, or waiting on its dependency).
    Pending,
    Running,
    /// Ended without a result: non-zero exit, or exit 0 without `result.json`.
    Failed,
    /// Killed at its time limit without a result.
    Timeout,
    /// Cancelled (`scancel`, or its dependency failed) before writing a result.
    Cancelled,
    /// SLURM no longer knows the task and it wrote no result.
    Lost,
    /// Its array was never submitted (sbatch failed, or `--dry-run`).
    NotSubmitted,
}

impl Verdict {
    /// Still queued or running: `submit` must not send it again.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }

    /// Ended without a result.
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Timeout | Self::Cancelled | Self::Lost
        )
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Done => "done",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
            Self::NotSubmitted => "not-submitted",
        };
        f.write_str(s)
    }
}

/// One job of a submission and what SLURM and the file system say about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskView {
    /// The sweep's job id (the planner's key).
    pub job: String,
    pub submission: String,
    /// The array's SLURM id; `None` if never submitted.
    pub array_job_id: Option<u64>,
    pub index: u32,
    pub verdict: Verdict,
    /// SLURM's own state name and reason, when it still knows the task.
    pub slurm_state: Option<String>,
    pub reason: Option<String>,
    pub exit: Option<SlurmExit>,
}

impl TaskView {
    /// `12_3`, SLURM's name of the task, or `-` when never submitted.
    pub fn slurm_name(&self) -> String {
        match self.array_job_id {
            Some(id) => format!("{id}_{}", self.index),
            None => "-".into(),
        }
    }
}

/// Maps every task of `manifests` to a [`Verdict`], using SLURM's `rows` and `has_result`
/// (given a job file, whether its folder holds `result.json`). One view per job: the one of the
/// latest manifest (by submission id) that holds it. Sorted by job id.
pub fn reconcile(
    manifests: &[Manifest],
    rows: &[TaskStatus],
    has_result: impl Fn(&Path) -> bool,
) -> Vec<TaskView> {
    let by_task: BTreeMap<(u64, u32), &TaskStatus> = rows
        .iter()
        .filter_map(|r| Some(((r.array_job_id, r.array_task_id?), r)))
        .collect();
    let mut ordered: Vec<&Manifest> = manifests.iter().collect();
    ordered.sort_by(|a, b| a.submission.cmp(&b.submission));
    let mut views: BTreeMap<String, TaskView> = BTreeMap::new();
    for m in ordered {
        for c in &m.chunks {
            for t in &c.tasks {
                let row = c
                    .slurm_job_id
                    .and_then(|id| by_task.get(&(id, t.index)).copied());
                let verdict = if has_result(&t.job_file) {
                    Verdict::Done
                } else if c.slurm_job_id.is_none() {
                    Verdict::NotSubmitted
                } else {
                    match row.map(|r| r.state) {
                        None => Verdict::Lost,
                        Some(TaskState::Pending) => Verdict::Pending,
                        Some(TaskState::Running) => Verdict::Running,
                        // Exit 0 without result.json is not a success (the result is the
                        // sentinel), and so is any other end.
                        Some(TaskState::Completed | TaskState::Failed) => Verdict::Failed,
                        Some(TaskState::Timeout) => Verdict::Timeout,
                        Some(TaskState::Cancelled) => Verdict::Cancelled,
                    }
                };
                views.insert(
                    t.job_id.clone(),
                    TaskView {
                        job: t.job_id.clone(),
                        submission: m.submission.clone(),
                        array_job_id: c.slurm_job_id,
                        index: t.index,
                        verdict,
                        slurm_state: row.map(|r| r.slurm_state.clone()),
                        reason: row.and_then(|r| r.reason.clone()),
                        exit: row.and_then(|r| r.exit),
                    },
                );
            }
        }
    }
    views.into_values().collect()
}

/// The manifests under `<sweep_dir>/submissions/*/manifest.json`; none if that folder is absent.
pub fn read_manifests(sweep_dir: &Path) -> Result<Vec<Manifest>> {
    let dir = sweep_dir.join("submissions");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let io = |source| SlurmError::Io {
        path: dir.clone(),
        source,
    };
    let mut subs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    subs.sort();
    subs.iter().map(|p| Manifest::read(p)).collect()
}

/// Which program told us the tasks' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateSource {
    Sacct,
    /// `squeue`, and `scontrol show job` for arrays squeue does not list.
    Squeue,
    /// Nothing was submitted: SLURM was not asked.
    None,
}

/// SLURM's rows for the array ids `ids`: sacct where accounting is on, else squeue (per array,
/// since squeue fails on the whole list when one id is forgotten) and scontrol.
pub fn query_states(ids: &[u64]) -> Result<(Vec<TaskStatus>, StateSource)> {
    if ids.is_empty() {
        return Ok((Vec::new(), StateSource::None));
    }
    if let Some(rows) = super::command::sacct_tasks(ids)? {
        return Ok((rows, StateSource::Sacct));
    }
    let mut rows = Vec::new();
    for &id in ids {
        match super::command::squeue_tasks(&[id]) {
            Ok(r) if !r.is_empty() => rows.extend(r),
            // Forgotten by squeue (or never listed): scontrol may still know it.
            Ok(_) | Err(SlurmError::Failed { .. }) => {
                if let Ok(r) = super::command::scontrol_show_job(id) {
                    rows.extend(r);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok((rows, StateSource::Squeue))
}

/// Every submitted job of the sweep in `sweep_dir` with its verdict, and where the states came
/// from. Reads the manifests, asks SLURM about their arrays, checks the result files.
pub fn slurm_status(sweep_dir: &Path) -> Result<(Vec<TaskView>, StateSource)> {
    let manifests = read_manifests(sweep_dir)?;
    let ids: Vec<u64> = manifests.iter().flat_map(Manifest::submitted_ids).collect();
    let (rows, source) = query_states(&ids)?;
    let views = reconcile(&manifests, &rows, |job_file| {
        job_file
            .parent()
            .is_some_and(|d| d.join(crate::train::job_run::RESULT_FILE).is_file())
    });
    Ok((views, source))
}

/// Counts per verdict, in [`Verdict`] order.
pub fn verdict_counts(views: &[TaskView]) -> BTreeMap<Verdict, usize> {
    let mut counts = BTreeMap::new();
    for v in views {
        *counts.entry(v.verdict).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::super::submission::{ManifestChunk, ManifestTask};
    use super::*;

    fn manifest(submission: &str, chunks: &[(Option<u64>, &[&str])]) -> Manifest {
        Manifest {
            version: 1,
            sweep: "s".into(),
            submission: submission.into(),
            chunks: chunks
                .iter()
                .enumerate()
                .map(|(i, (id, jobs))| ManifestChunk {
                    chunk: i,
                    phase: 0,
                    after: Vec::new(),
                    array: format!("0-{}%2", jobs.len() - 1),
                    script: format!("chunk-{i:03}.sbatch"),
                    job_list: format!("chunk-{i:03}.jobs"),
                    slurm_job_id: *id,
                    tasks: jobs
                        .iter()
                        .enumerate()
                        .map(|(k, j)| ManifestTask {
                            index: k as u32,
                            job_id: (*j).into(),
                            job_file: PathBuf::from(format!("/r/jobs/{j}/job.json")),
                        })
                        .collect(),
                })
                .collect(),
            ingest: None,
        }
    }

    fn row(array: u64, index: u32, slurm_state: &str, exit: Option<i32>) -> TaskStatus {
        TaskStatus {
            job_id: array + 100 + u64::from(index),
            array_job_id: array,
            array_task_id: Some(index),
            state: TaskState::from_slurm(slurm_state).unwrap(),
            slurm_state: slurm_state.into(),
            reason: None,
            exit: exit.map(|code| SlurmExit { code, signal: 0 }),
        }
    }

    #[test]
    fn every_slurm_end_maps_to_a_verdict_and_a_result_file_wins() {
        let m = manifest(
            "20261127T120000Z",
            &[
                (Some(7), &["a", "b", "c", "d", "e", "f", "g"]),
                (None, &["h"]),
            ],
        );
        let rows = [
            row(7, 0, "COMPLETED", Some(0)),
            row(7, 1, "CANCELLED", Some(0)),
            row(7, 2, "TIMEOUT", Some(0)),
            row(7, 3, "COMPLETED", Some(0)),
            row(7, 4, "PENDING", None),
            row(7, 5, "RUNNING", None),
            // g (index 6): SLURM forgot it.
            // Another array's task 1 must not be mistaken for ours.
            row(8, 6, "RUNNING", None),
        ];
        // Only a has its result; d exited 0 without one.
        let views = reconcile(&[m], &rows, |f| f.starts_with("/r/jobs/a"));
        let got: Vec<(&str, Verdict, String)> = views
            .iter()
            .map(|v| (v.job.as_str(), v.verdict, v.slurm_name()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Verdict::Done, "7_0".into()),
                ("b", Verdict::Cancelled, "7_1".into()),
                ("c", Verdict::Timeout, "7_2".into()),
                ("d", Verdict::Failed, "7_3".into()),
                ("e", Verdict::Pending, "7_4".into()),
                ("f", Verdict::Running, "7_5".into()),
                ("g", Verdict::Lost, "7_6".into()),
                ("h", Verdict::NotSubmitted, "-".into()),
            ]
        );
        assert_eq!(views[1].slurm_state.as_deref(), Some("CANCELLED"));
        let counts = verdict_counts(&views);
        assert_eq!(counts[&Verdict::Done], 1);
        assert_eq!(views.iter().filter(|v| v.verdict.is_problem()).count(), 4);
        assert_eq!(views.iter().filter(|v| v.verdict.is_live()).count(), 2);
    }

    #[test]
    fn the_latest_submission_speaks_for_a_resubmitted_job() {
        let old = manifest("20261127T120000Z", &[(Some(7), &["a", "b"])]);
        let new = manifest("20261127T130000Z", &[(Some(9), &["b"])]);
        let rows = [
            row(7, 0, "CANCELLED", None),
            row(7, 1, "CANCELLED", None),
            row(9, 0, "RUNNING", None),
        ];
        // Given newest first: order of the slice must not matter.
        let views = reconcile(&[new, old], &rows, |_| false);
        let got: Vec<(&str, Verdict, &str)> = views
            .iter()
            .map(|v| (v.job.as_str(), v.verdict, v.submission.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Verdict::Cancelled, "20261127T120000Z"),
                ("b", Verdict::Running, "20261127T130000Z"),
            ]
        );
    }

    #[test]
    fn manifests_are_read_in_submission_order_and_a_missing_folder_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(read_manifests(tmp.path()).unwrap().is_empty());
        for (name, id) in [("20261127T130000Z", 9), ("20261127T120000Z", 7)] {
            let dir = tmp.path().join("submissions").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            manifest(name, &[(Some(id), &["a"])]).write(&dir).unwrap();
        }
        // A folder without a manifest (a failed write) is skipped.
        std::fs::create_dir_all(tmp.path().join("submissions/partial")).unwrap();
        let ms = read_manifests(tmp.path()).unwrap();
        let names: Vec<&str> = ms.iter().map(|m| m.submission.as_str()).collect();
        assert_eq!(names, ["20261127T120000Z", "20261127T130000Z"]);
    }
}
