//! The SLURM backend: a sweep's jobs as SLURM job arrays. Everything but [`submit`] is
//! independent of the planner and the store.
//!
//! What it owns:
//! - [`config`]: `MaxArraySize` from `scontrol show config` ([`parse_max_array_size`]);
//! - [`submission`]: chunking N jobs into arrays of at most `MaxArraySize` tasks
//!   ([`chunk_jobs`]) and writing a submission folder `results/<sweep>/submissions/<id>/`
//!   ([`write_submission`]): per chunk a job list (one job-file path per line), an sbatch
//!   script, plus `manifest.json` mapping (chunk, array index) → job id and the SLURM ids once
//!   submitted ([`Manifest`]);
//! - [`script`]: rendering the sbatch scripts ([`render_array_script`], [`render_ingest_script`])
//!   with safe quoting;
//! - [`state`]: parsers for `sbatch --parsable`, `squeue`, `sacct` and `scontrol show job`
//!   output into [`TaskStatus`] rows with a [`TaskState`];
//! - [`command`]: thin wrappers that run those programs and call the parsers;
//! - [`reconcile`]: manifests + SLURM's states + result files → a [`Verdict`] per job
//!   ([`slurm_status`]), for `status` and for `submit`;
//! - [`submit`]: `submit SPEC --backend slurm` end to end ([`submit_sweep`]): plan and record
//!   as `run` does, write the pending jobs' files and a submission, `sbatch` the arrays
//!   (fine-tuning after pre-training, `afterok`) and the `afterany` ingest job.
//!
//! Design: every function that decides something is pure and tested on text fixtures captured
//! from a real SLURM 22.05 (`scripts/slurm-local.sh`, under `fixtures/`); [`command`] only runs
//! programs. No text derived from a spec is interpolated into a script's shell code: an array
//! task finds its job file by reading line `SLURM_ARRAY_TASK_ID + 1` of the chunk's job list
//! with `sed -n`, and every path or name in a script is quoted (single quotes in shell code,
//! double quotes with backslash escapes in `#SBATCH` lines, as sbatch parses them).
//! The worker is the same `ranksweep worker JOB_FILE` every backend runs; the script `exec`s it
//! so that it is the batch step's main process and receives `--signal=B:USR1@…` and `TERM`.

use std::path::PathBuf;

pub mod command;
pub mod config;
pub mod quote;
pub mod reconcile;
pub mod script;
pub mod state;
pub mod submission;
pub mod submit;

pub use command::{
    max_array_size, sacct_tasks, sbatch_submit, sbatch_submit_after, scancel, scontrol_show_job,
    squeue_tasks,
};
pub use config::{DEFAULT_MAX_ARRAY_SIZE, parse_max_array_size};
pub use reconcile::{StateSource, TaskView, Verdict, reconcile, slurm_status};
pub use script::{
    IngestCommand, IngestOptions, SbatchOptions, WorkerCommand, render_array_script,
    render_ingest_script,
};
pub use state::{
    SACCT_FORMAT, SQUEUE_FORMAT, SlurmExit, Submitted, TaskState, TaskStatus, parse_sacct,
    parse_sbatch_parsable, parse_scontrol_show_job, parse_squeue,
};
pub use submission::{
    ArrayChunk, Manifest, ManifestChunk, ManifestIngest, ManifestTask, Submission, SubmitJob,
    SubmitRequest, chunk_jobs, chunk_phases, write_ingest, write_submission,
};
pub use submit::{SubmitOptions, SubmitOutcome, submit_sweep};

/// Errors of the SLURM backend; each names the input (command, file, field) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// A line of a program's output does not have the expected shape.
    #[error("{what} line {line}: `{text}`: expected {expected}")]
    Parse {
        what: &'static str,
        line: usize,
        text: String,
        expected: &'static str,
    },
    /// A job state this module does not know.
    #[error("{what} line {line}: unknown job state `{state}`")]
    UnknownState {
        what: &'static str,
        line: usize,
        state: String,
    },
    /// A value that cannot be written into an sbatch script or a submission folder.
    #[error("`{field}`: {reason}, got {value:?}")]
    InvalidValue {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    /// `MaxArraySize` is 0: the cluster has job arrays disabled.
    #[error(
        "the cluster has job arrays disabled (MaxArraySize = 0); ask its admins or use the local backend"
    )]
    ArraysDisabled,
    /// Nothing to submit.
    #[error("no jobs to submit")]
    NoJobs,
    /// Reading or writing a file of the submission folder.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `manifest.json` could not be read back.
    #[error("{}: invalid manifest: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A SLURM program could not be started (not installed, not on PATH).
    #[error("cannot run `{program}`: {source} (is SLURM installed? see scripts/slurm-local.sh)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A SLURM program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Results of this module.
pub type Result<T, E = SlurmError> = std::result::Result<T, E>;
