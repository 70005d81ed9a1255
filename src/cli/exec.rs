//! `ranksweep exec JOBS.json`: run a prepared list of jobs on device slots, without a sweep
//! database (the `run` command plans, records and reports; this one only executes).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::exec::{
    Reporter, RunConfig, SlotConfig, WorkerCommand, device::default_threads, parse_devices,
    read_jobs, run_blocking,
};

/// Run the jobs of a JSON file (a list of `{id, deps, job_file, dir, needs_gpu, label}`) as
/// worker processes on device slots. Exits 0 when every job finished ok, 1 when any failed, was
/// blocked or was not run (Ctrl-C), 2 on unusable input.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The jobs file. Relative paths in it are relative to its folder.
    pub jobs: PathBuf,
    /// Devices to run on: `cpu`, or GPUs like `cuda:0,cuda:1`.
    #[arg(long, default_value = "cpu")]
    pub devices: String,
    /// Jobs at once on each device.
    #[arg(long, default_value_t = 1, value_parser = super::bounds::slots)]
    pub slots_per_device: usize,
    /// RAYON_NUM_THREADS for each worker [default: the cores divided by the slots].
    #[arg(long, value_parser = super::bounds::threads)]
    pub threads_per_job: Option<usize>,
    /// Extra attempts for a job that ends oom, timeout or interrupted.
    #[arg(long, default_value_t = 1, value_parser = super::bounds::retries)]
    pub retries: u32,
    /// Wall-clock limit of one attempt, in seconds.
    #[arg(long, value_parser = super::bounds::positive_seconds)]
    pub timeout_s: Option<f64>,
    /// Stop an attempt that prints no progress line for this many seconds.
    #[arg(long, value_parser = super::bounds::positive_seconds)]
    pub watchdog_s: Option<f64>,
    /// Seconds between SIGTERM and SIGKILL when a worker is stopped.
    #[arg(long, default_value_t = 10.0)]
    pub grace_s: f64,
    /// The worker program [default: this executable with `worker`].
    #[arg(long)]
    pub worker: Option<PathBuf>,
    /// Arguments for `--worker` before the job file (repeat the flag for several).
    #[arg(long = "worker-arg", requires = "worker", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,
    /// Append `--device DEVICE` after the job file (`cuda:0` on a pinned GPU, or `cpu`); the
    /// device is in RANKSWEEP_DEVICE either way.
    #[arg(long)]
    pub pass_device: bool,
    /// Print every event as a JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("`{flag}`: expected a positive number of seconds, got {s}"))
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let jobs = read_jobs(&args.jobs)?;
    let devices = parse_devices(&args.devices)?;
    let slots = devices.len() * args.slots_per_device;
    // This binary as the worker: GPUs it cannot use are refused before any job starts.
    if args.worker.is_none() {
        crate::exec::sweep_run::check_gpus_usable(&devices)?;
    }
    let mut worker = match args.worker {
        Some(program) => WorkerCommand {
            program,
            args_before_job_file: args.worker_args,
            device_flag: None,
        },
        None => WorkerCommand::current_exe().context("cannot find this executable")?,
    };
    if args.pass_device {
        worker.device_flag = Some("--device".into());
    }
    let mut config = RunConfig::new(
        SlotConfig {
            devices,
            slots_per_device: args.slots_per_device,
            threads_per_job: args.threads_per_job.unwrap_or(default_threads(slots)),
        },
        worker,
    );
    config.retries = args.retries;
    config.timeout = args
        .timeout_s
        .map(|s| seconds("--timeout-s", s))
        .transpose()?;
    config.watchdog = args
        .watchdog_s
        .map(|s| seconds("--watchdog-s", s))
        .transpose()?;
    config.grace = seconds("--grace-s", args.grace_s)?;
    config.handle_signals = true;

    let mut reporter = Reporter::stderr();
    let mut stdout = std::io::stdout().lock();
    let summary = run_blocking(jobs, config, |event| {
        if args.json {
            // A closed stdout must not stop the run; the summary still decides the exit code.
            let _ = serde_json::to_writer(&mut stdout, event);
            let _ = writeln!(stdout);
        }
        reporter.handle(event);
    })?;
    Ok(if summary.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
