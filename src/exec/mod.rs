//! Running jobs: a scheduler that leases ready jobs to device slots and runs each as a worker
//! subprocess (`ranksweep worker JOB_FILE`), supervised, classified and reported as events.
//!
//! Key types: [`ExecJob`] (what to run, its dependencies and folder; no planner types),
//! [`WorkerCommand`] (how a worker is started), [`RunConfig`] (slots, retries, time limits,
//! cancellation), [`SweepEvent`] (everything that happens, sent over a channel),
//! [`RunSummary`] (each job's final [`JobStatus`]), [`ExitClass`] (the worker exit-code table),
//! [`Reporter`] (bars or plain lines from the events), [`Cancel`] (Ctrl-C and friends).
//!
//! Design (nextest's runner; orchestration.md):
//! - [`run`] is the dispatcher: it alone owns job states and the static [`SlotPool`]; one task
//!   supervises each attempt and reports back. A job is leased once, to one slot.
//! - A worker runs in its own process group, pinned by `CUDA_VISIBLE_DEVICES` and
//!   `RAYON_NUM_THREADS`; its stdout lines go to `<dir>/attempt-<n>.log` and become progress
//!   events; a wall-clock timeout or a silent worker (watchdog) gets SIGTERM, a grace period,
//!   then SIGKILL, on the whole group.
//! - The exit code classifies an attempt; `ok` also needs `result.json`. Only oom, timeout and
//!   interrupted are retried. A failed job never aborts the run: its dependents are blocked.
//! - The first Ctrl-C stops dispatching and terminates workers (recorded interrupted); the
//!   second kills them.
//! - `<dir>/lease.json` names the orchestrator (pid, host) while an attempt runs;
//!   [`reclaim_stale`] removes one whose owner died.
//!
//! [`slurm`] is the other backend: the same worker run by SLURM job arrays (`submit`).
//!
//! The caller (the `run` command) owns the database: it receives events, records them, and
//! passes them to the [`Reporter`].

pub mod class;
pub mod device;
pub mod error;
pub mod estimate;
pub mod event;
pub mod gpu_slots;
pub mod ingest;
pub mod lease;
pub mod reporter;
pub mod scheduler;
pub mod signal;
pub mod slurm;
mod supervise;
pub mod sweep_run;

pub use class::{ExitClass, TimeoutKind, is_retryable};
pub use device::{Device, Slot, SlotConfig, SlotPool, parse_devices};
pub use error::ExecError;
pub use event::{CancelReason, JobStatus, Progress, RunSummary, SweepEvent};
pub use lease::{Lease, LeaseState, reclaim_stale};
pub use reporter::Reporter;
pub use scheduler::{
    ExecJob, RESULT_FILE, RunConfig, StartCheck, WorkerCommand, read_jobs, run, run_blocking,
};
pub use signal::Cancel;
