//! Helpers shared by the integration tests: the real binary and temporary directories.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the real `ranksweep` binary with `args` in `dir`.
pub fn ranksweep(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ranksweep"))
        .args(args)
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("the ranksweep binary runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
