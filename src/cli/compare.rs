//! `ranksweep compare --baseline A.json --current B.json`: the nightly comparison of two
//! sweeps' `report::ReportInput` files.
//!
//! Prints Markdown (or JSON with `--json`); exit 0 without a regression, 1 with one (the rule
//! is in `report::compare`), 2 on bad input.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::report::{self, ReportInput};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The reference sweep, a `ReportInput` JSON file.
    #[arg(long)]
    pub baseline: PathBuf,
    /// The sweep to check against it, a `ReportInput` JSON file.
    #[arg(long)]
    pub current: PathBuf,
    /// Tolerated drop in Dice (absolute); a cell regresses only when it falls by more than
    /// this and more than its noise band.
    #[arg(long, default_value_t = 0.01, value_parser = parse_tolerance)]
    pub tolerance: f64,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

fn parse_tolerance(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}`: expected a non-negative number, e.g. 0.01")),
    }
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let baseline = ReportInput::from_json_file(&args.baseline)?;
    let current = ReportInput::from_json_file(&args.current)?;
    let cmp = report::compare(&baseline, &current, args.tolerance)?;
    let text = if args.json {
        cmp.to_json() + "\n"
    } else {
        cmp.to_markdown()
    };
    if let Err(e) = std::io::stdout().lock().write_all(text.as_bytes())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    Ok(if cmp.regressed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
