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

/// Writes two tiny phantom cohorts (6 cases each, 32×32×8) under `root/data`.
pub fn tiny_cohorts(root: &Path) {
    for (cohort, seed) in [("tbi", "0"), ("sah", "1")] {
        let out = root.join("data").join(cohort);
        let o = ranksweep(
            root,
            &[
                "synth",
                "--cohort",
                cohort,
                "--cases",
                "6",
                "--seed",
                seed,
                "--out",
                out.to_str().unwrap(),
                "--shape",
                "32,32,8",
                "--spacing",
                "6,6,6",
            ],
        );
        assert!(o.status.success(), "synth: {}", stderr(&o));
    }
}
