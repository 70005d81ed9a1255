//! Training and evaluation: the optimisation step, its benchmark, and the worker's job.
//!
//! - [`step`]: [`Trainer`], one AdamW step with BCE + soft-Dice;
//! - [`job`]: [`JobConfig`], the job file every backend runs, and [`JobError`];
//! - [`job_run`]: [`run_job`], train → select → predict in 3D → measure → `result.json` last;
//! - [`predict`]: per-view slice prediction on the native grid and view fusion;
//! - [`protocol`]: the worker's progress [`Event`]s and [`ExitClass`] codes, versioned;
//! - [`signal`]: SIGTERM/SIGINT/SIGUSR1 → a stop flag polled between steps;
//! - [`bench`]: the training-step benchmark;
//! - [`fault`]: `RANKSWEEP_FAULT`, the test-only fault injection of the worker.

pub mod bench;
pub mod fault;
pub mod files;
pub mod job;
pub mod job_run;
pub mod predict;
pub mod protocol;
pub mod signal;
pub mod step;

pub use job::{JobConfig, JobError, Selection, Stage};
pub use job_run::{JobResult, run_job};
pub use protocol::{Event, ExitClass};
pub use step::Trainer;
