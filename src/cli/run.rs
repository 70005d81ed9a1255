//! `ranksweep run SPEC`: run a sweep on this machine, then print its table and write its report.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::exec::sweep_run::{RunOptions, run_sweep};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The sweep spec (YAML).
    pub spec: PathBuf,
    /// Device slots: `cpu`, or GPUs `cuda:0,cuda:1,...`.
    #[arg(long, default_value = "cpu")]
    pub devices: String,
    /// Concurrent jobs per device (default 1 per GPU, 2 on cpu).
    #[arg(long, value_parser = super::bounds::slots)]
    pub slots_per_device: Option<usize>,
    /// CPU threads per job (default: the spec's `resources.threads`).
    #[arg(long, value_parser = super::bounds::threads)]
    pub threads_per_job: Option<usize>,
    /// Extra attempts for retryable failures (oom, timeout, interrupted); default: the spec's.
    #[arg(long, value_parser = super::bounds::retries)]
    pub retries: Option<u32>,
    /// Per-attempt wall-clock limit, e.g. `30m`, `2h` (default: the spec's).
    #[arg(long, value_parser = super::bounds::positive_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Also rerun jobs that failed before.
    #[arg(long)]
    pub rerun_failed: bool,
    /// Plan and record, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let opts = RunOptions {
        spec: args.spec,
        results: args.store.results.clone(),
        db: args.store.db_path(),
        devices: args.devices,
        slots_per_device: args.slots_per_device,
        threads_per_job: args.threads_per_job,
        retries: args.retries,
        timeout: args.timeout,
        rerun_failed: args.rerun_failed,
        dry_run: args.dry_run,
    };
    let outcome = run_sweep(&opts)?;
    let Some(summary) = &outcome.summary else {
        println!(
            "{}: {} jobs planned, {} already done, {} blocked (dry run: nothing ran)",
            outcome.sweep,
            outcome.planned,
            outcome.cached,
            outcome.blocked.len()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let store = crate::store::Store::open(&outcome.db)?;
    let input = crate::report::from_store::load_input(&store, &outcome.sweep)?;
    let out = args.store.results.join(&outcome.sweep).join("report");
    let formats = crate::report::Format::parse_list("md,html,csv")?;
    let paths =
        crate::report::write_report(&input, &out, &formats, &crate::metrics::Strata::default())?;
    print!("{}", crate::report::terminal_table(&paths.table));
    let elsewhere = match summary.elsewhere() {
        0 => String::new(),
        n => format!(", {n} done or held by another run"),
    };
    println!(
        "{}: {} jobs planned, {} already done, {} blocked by a failed dependency, {} ran ({} ok, {} failed, {} blocked{elsewhere}) in {:.0?}",
        outcome.sweep,
        outcome.planned,
        outcome.cached,
        outcome.blocked.len(),
        summary.jobs.len(),
        summary.ok(),
        summary.failed(),
        summary.blocked(),
        summary.elapsed
    );
    println!("report: {}", paths.dir.join("index.html").display());
    Ok(ExitCode::from(outcome.exit_code))
}
