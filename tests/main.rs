//! Cross-module tests, one binary (each tests/*.rs file would be another slow link with candle).

mod job;
mod model;
mod util;
