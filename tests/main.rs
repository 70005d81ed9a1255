//! Cross-module tests, one binary (each tests/*.rs file would be another slow link with candle).

mod data;
mod metrics;
mod model;
mod phantom;
mod util;
