//! The command line: one file per subcommand, each a clap `Args` plus `run(args) -> Result<ExitCode>`
//! that calls one library function. No logic lives here beyond turning arguments into the
//! library's typed options and results into text.
//!
//! Exit codes (one table for every subcommand):
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the command ran and found something wrong (a regression, failed jobs) |
//! | 2 | usage or input error: bad arguments, unreadable or invalid files |
//!
//! `worker` and `train` exit with the job's class instead (`train::protocol::ExitClass`):
//! 0 ok, 1 failed, 3 nan, 4 oom, 5 timeout, 6 interrupted.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod adapt_args;
pub mod bench;
pub mod compare;
pub mod eval;
pub mod exec;
pub mod ingest;
pub mod inspect;
pub mod model;
pub mod plan;
pub mod predict;
pub mod report;
pub mod run;
pub mod selftest;
pub mod status;
pub mod store_args;
pub mod submit;
pub mod synth;
pub mod train;
pub mod worker;

/// Exit code for usage and input errors.
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(name = "ranksweep", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a sweep on this machine: synthesize missing phantom data, plan, run, ingest, report.
    Run(run::RunArgs),
    /// Show the exact jobs a run would make, and why each would (re)run.
    Plan(plan::PlanArgs),
    /// Per-cell completeness, running jobs and failures of a sweep.
    Status(status::StatusArgs),
    /// Record result files made elsewhere (a cluster) in the database.
    Ingest(ingest::IngestArgs),
    /// Inspect the Unet: per-layer parameters under an adaptation.
    Model(model::ModelCmd),
    /// Benchmarks (figures, not tests).
    Bench(bench::BenchCmd),
    /// Score predicted masks against annotations: Dice, HD95, volumes, strata, agreement.
    Eval(eval::EvalArgs),
    /// Show what a NIfTI file or a dataset folder holds.
    Inspect(inspect::InspectArgs),
    /// Run a JSON list of prepared jobs as worker processes on device slots.
    Exec(exec::ExecArgs),
    /// Run one job file for a machine: JSON progress lines, exit code = class (0 ok, 1 failed,
    /// 3 nan, 4 oom, 5 timeout, 6 interrupted).
    Worker(worker::WorkerArgs),
    /// Run one job file for a person: a progress bar and a summary table.
    Train(train::TrainArgs),
    /// Predict one scan with a base checkpoint (and adapter) per view.
    Predict(predict::PredictArgs),
    /// Write a sweep's or a run's report (tables, charts, CSV, LaTeX): `SWEEP[@RUN]`.
    Report(report::ReportArgs),
    /// Compare two sweeps or runs cell by cell (`nightly@previous nightly@latest`); exit 1 on a
    /// regression.
    Compare(compare::CompareArgs),
    /// Synthesize a TBI or SAH head-CT phantom cohort (nnU-Net v2 layout).
    Synth(synth::SynthArgs),
    /// Submit a sweep to a cluster scheduler (SLURM job arrays) with an ingest-and-report job.
    Submit(submit::SubmitArgs),
    /// Run the op and model checks on a device (`--device cuda:0`): a pass/fail table, exit 1
    /// on a failure.
    Selftest(selftest::SelftestArgs),
}

/// Parses the command line, runs the subcommand and maps errors to the documented exit codes.
pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Status(args) => status::run(args),
        Command::Ingest(args) => ingest::run(args),
        Command::Model(cmd) => model::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Worker(args) => worker::run(args),
        Command::Train(args) => train::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Report(args) => report::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Exec(args) => exec::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Submit(args) => submit::run(args),
        Command::Selftest(args) => selftest::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // Not `eprintln!`: it panics when stderr cannot be written (a full disk).
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "ranksweep: {}", error_chain(&err));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `error: context: cause: cause`, the way ripgrep prints a chain.
pub fn error_chain(err: &anyhow::Error) -> String {
    err.chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RANKSWEEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal;
    // Colour codes only for a terminal: logs, pipes and CI files get plain text; NO_COLOR
    // (no-color.org: any non-empty value) turns them off on a terminal too.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr)
        .try_init();
}

/// clap parsers that bound what a user types (see [`crate::limits`]).
pub mod bounds {
    use std::time::Duration;

    /// A duration such as `30m`, greater than zero.
    pub fn positive_duration(s: &str) -> Result<Duration, String> {
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() => Err(format!("expected a duration above zero, got `{s}`")),
            Ok(d) => Ok(d),
            Err(e) => Err(format!("expected a duration such as 2h, 30m or 90s ({e})")),
        }
    }

    /// Seconds, finite and greater than zero.
    pub fn positive_seconds(s: &str) -> Result<f64, String> {
        match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => Err(format!("expected a positive number of seconds, got `{s}`")),
        }
    }

    fn in_range(s: &str, max: usize) -> Result<usize, String> {
        match s.trim().parse::<usize>() {
            Ok(v) if (1..=max).contains(&v) => Ok(v),
            _ => Err(format!(
                "expected an integer from 1 to {max} (the limit), got `{s}`"
            )),
        }
    }

    pub fn threads(s: &str) -> Result<usize, String> {
        in_range(s, crate::limits::MAX_THREADS)
    }
    pub fn slots(s: &str) -> Result<usize, String> {
        in_range(s, crate::limits::MAX_SLOTS)
    }
    pub fn batch(s: &str) -> Result<usize, String> {
        in_range(s, crate::limits::MAX_BATCH)
    }
    pub fn image_dim(s: &str) -> Result<usize, String> {
        in_range(s, crate::limits::MAX_IMAGE_DIM)
    }
    pub fn cases(s: &str) -> Result<usize, String> {
        in_range(s, crate::limits::MAX_CASES)
    }
    pub fn steps(s: &str) -> Result<usize, String> {
        in_range(s, crate::limits::MAX_STEPS)
    }
    pub fn rank(s: &str) -> Result<usize, String> {
        in_range(s, crate::limits::MAX_RANK)
    }
    pub fn in_channels(s: &str) -> Result<usize, String> {
        in_range(s, crate::limits::MAX_IN_CHANNELS)
    }
    pub fn retries(s: &str) -> Result<u32, String> {
        match s.trim().parse::<u32>() {
            Ok(v) if v <= crate::limits::MAX_RETRIES => Ok(v),
            _ => Err(format!(
                "expected an integer from 0 to {} (the limit), got `{s}`",
                crate::limits::MAX_RETRIES
            )),
        }
    }
}
