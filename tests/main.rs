//! Cross-module tests, one binary (each tests/*.rs file would be another slow link with candle).

mod crash;
mod data;
mod exec;
mod job;
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
