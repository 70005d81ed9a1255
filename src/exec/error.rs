//! The one error type of the exec module: what stops a run before (or instead of) running jobs.
//!
//! A job that fails is not an error here: it is an [`ExitClass`](super::ExitClass) in an event
//! and in the [`RunSummary`](super::RunSummary), and the sweep goes on. Errors are for input the
//! scheduler cannot run at all (a bad device list, a job graph with an unknown dependency or a
//! cycle) and for lease files it cannot read or write.

use std::path::PathBuf;

use thiserror::Error;

/// Why the scheduler could not start, or a lease file could not be handled.
#[derive(Debug, Error)]
pub enum ExecError {
    /// `--devices` is empty or names a device that is neither `cpu` nor `cuda:<index>`.
    #[error("devices `{input}`: {reason}")]
    InvalidDevices { input: String, reason: String },
    /// A slot setting that cannot be used (`slots-per-device`, `threads-per-job`).
    #[error("`{field}`: expected a positive integer, got {value}")]
    InvalidSlots { field: &'static str, value: usize },
    /// Two jobs share an id.
    #[error("job `{id}` is listed twice; job ids must be unique")]
    DuplicateJob { id: String },
    /// Two jobs share a folder: they would overwrite each other's result, logs and lease.
    #[error("jobs `{first}` and `{second}` share the folder {}; each job needs its own", dir.display())]
    SharedDir {
        first: String,
        second: String,
        dir: PathBuf,
    },
    /// A dependency that is not in the job list.
    #[error("job `{job}` depends on `{dep}`, which is not in the job list")]
    UnknownDependency { job: String, dep: String },
    /// The dependencies form a cycle, so none of its jobs could ever start.
    #[error("jobs depend on each other in a cycle: {}", cycle.join(" -> "))]
    DependencyCycle { cycle: Vec<String> },
    /// A job needs a GPU but the device list has none.
    #[error("job `{job}` needs a GPU, but the devices ({devices}) include no `cuda:<index>`")]
    NoGpuSlot { job: String, devices: String },
    /// A lease file that exists but is not a lease.
    #[error("lease file {}: {reason}", path.display())]
    InvalidLease { path: PathBuf, reason: String },
    /// The async runtime or the signal handler could not be set up.
    #[error("cannot start {what}: {source}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A jobs file that is not a JSON list of jobs.
    #[error("jobs file {}: {reason}", path.display())]
    InvalidJobs { path: PathBuf, reason: String },
    /// Reading or writing a job's folder, log or lease failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ExecError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ExecError {
        let path = path.into();
        move |source| ExecError::Io { path, source }
    }
}
