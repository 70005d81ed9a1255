//! Cross-module tests, one binary (each tests/*.rs file would be another slow link with candle).

mod bounds;
mod crash;
#[cfg(feature = "cuda")]
mod cuda;
mod data;
mod exec;
mod gpu;
mod job;
mod lifecycle;
mod metrics;
mod model;
mod model3d;
mod phantom;
mod report;
mod runs;
mod slurm;
mod submit;
mod sweep;
mod util;
