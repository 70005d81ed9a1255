//! Training and evaluation: the optimisation step, benchmarks of it, and (with the data layer)
//! the worker's job.

pub mod bench;
pub mod step;

pub use step::Trainer;
