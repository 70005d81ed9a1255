//! `ranksweep compare BASELINE CURRENT`: the nightly comparison of two sweeps or runs, cell by
//! cell. Each side is a run reference (`report::run_ref`): `SWEEP`, `SWEEP@latest`,
//! `SWEEP@previous`, `SWEEP@RUN_ID`, `./other.db[:SWEEP[@RUN]]`, or a `./file.json`
//! `ReportInput`.
//!
//! Prints Markdown (or JSON); exit 0 without a regression, 1 with one (the rule is in
//! `report::compare`), 2 on bad input (unknown sweep or run, no previous run, unreadable file).

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::report::{self, RunRef};

/// Output format of `compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareFormat {
    /// A Markdown summary (a nightly mail): header, regressions first, then every cell.
    Md,
    /// The comparison as JSON, with `regressed`.
    Json,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Run references (BASELINE and CURRENT):
  SWEEP                       the sweep's current state (all planned jobs, latest status)
  SWEEP@latest                the jobs of the sweep's latest run, as that run left them
  SWEEP@previous              the same for the run before the latest
  SWEEP@12                    run 12 (run ids: `ranksweep status SWEEP`)
  ./other.db                  the only sweep of another database file
  ./other.db:SWEEP[@RUN]      a sweep or run of another database file
  ./input.json                a ReportInput JSON file
A file needs a `/` (./ for the current folder); a name without one is always a sweep of the
database given by --db (default <results>/ranksweep.db).

Example (cron, after `ranksweep run sweeps/nightly.yaml`):
  ranksweep compare nightly@previous nightly@latest > mail.md || mail-on-regression mail.md")]
pub struct CompareArgs {
    /// The reference side (see below), e.g. `nightly@previous`.
    #[arg(
        required_unless_present = "baseline_flag",
        conflicts_with = "baseline_flag"
    )]
    pub baseline: Option<String>,
    /// The side checked against it, e.g. `nightly@latest`.
    #[arg(
        required_unless_present = "current_flag",
        conflicts_with = "current_flag"
    )]
    pub current: Option<String>,
    /// The baseline as a flag (older form, same syntax).
    #[arg(long = "baseline", value_name = "REF", hide = true)]
    pub baseline_flag: Option<String>,
    /// The current side as a flag (older form, same syntax).
    #[arg(long = "current", value_name = "REF", hide = true)]
    pub current_flag: Option<String>,
    /// Tolerated drop in Dice (absolute); a cell regresses only when it falls by more than
    /// this and more than its noise band.
    #[arg(long, default_value_t = 0.01, value_parser = parse_tolerance)]
    pub tolerance: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CompareFormat::Md)]
    pub format: CompareFormat,
    /// Same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,
}

fn parse_tolerance(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}`: expected a non-negative number, e.g. 0.01")),
    }
}

/// A file given the old way (`--baseline a.json`, no `/`) stays a file: that form only ever
/// took JSON files.
fn flag_ref(text: &str) -> String {
    if !text.contains('/') && text.ends_with(".json") {
        format!("./{text}")
    } else {
        text.to_string()
    }
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let pick = |pos: &Option<String>, flag: &Option<String>| -> anyhow::Result<String> {
        match (pos, flag) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(f)) => Ok(flag_ref(f)),
            (None, None) => anyhow::bail!("give BASELINE and CURRENT run references"),
        }
    };
    let baseline_text = pick(&args.baseline, &args.baseline_flag)?;
    let current_text = pick(&args.current, &args.current_flag)?;
    let db = args.store.db_path();
    let resolve = |text: &str| -> anyhow::Result<report::Resolved> {
        let r: RunRef = text.parse()?;
        Ok(report::resolve(&r, text, &db)?)
    };
    let baseline = resolve(&baseline_text)?;
    let current = resolve(&current_text)?;
    let mut cmp = report::compare(&baseline.input, &current.input, args.tolerance)?;
    cmp.baseline = baseline.source.reference.clone();
    cmp.current = current.source.reference.clone();
    cmp.baseline_source = Some(baseline.source);
    cmp.current_source = Some(current.source);
    let text = if args.json || args.format == CompareFormat::Json {
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
