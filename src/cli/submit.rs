//! `ranksweep submit SPEC --backend slurm`: the sweep as SLURM job arrays plus an `afterany`
//! ingest-and-report job; `--dry-run` writes the submission folder and prints its scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::exec::slurm::{IngestOptions, SbatchOptions, SubmitOptions, submit_sweep};

/// Where the jobs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// SLURM job arrays (sbatch).
    Slurm,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The sweep spec (YAML).
    pub spec: PathBuf,
    /// The scheduler to submit to.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// SLURM partition (default: the cluster's).
    #[arg(long)]
    pub partition: Option<String>,
    /// SLURM account (default: yours).
    #[arg(long)]
    pub account: Option<String>,
    /// Generic resources per task, e.g. `gpu:1` (default: none).
    #[arg(long)]
    pub gres: Option<String>,
    /// CPUs per task.
    #[arg(long, default_value_t = 4)]
    pub cpus_per_task: u32,
    /// Memory per task, e.g. `16G`.
    #[arg(long)]
    pub mem: Option<String>,
    /// Time limit per task, e.g. `2h`, `30m`; the worker gets USR1 120 s before it.
    #[arg(long, value_parser = super::bounds::positive_duration, default_value = "24h")]
    pub time: std::time::Duration,
    /// Tasks of one array running at once (`--array=0-N%K`).
    #[arg(long, default_value_t = 4)]
    pub max_parallel: u32,
    /// Also resubmit jobs that failed before.
    #[arg(long)]
    pub rerun_failed: bool,
    /// Write the job files, scripts and manifest and print the scripts; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,
}

pub fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let Backend::Slurm = args.backend;
    let opts = SubmitOptions {
        spec: args.spec,
        results: args.store.results.clone(),
        db: args.store.db_path(),
        sbatch: SbatchOptions {
            job_name: String::new(),
            partition: args.partition.clone(),
            account: args.account.clone(),
            gres: args.gres,
            cpus_per_task: args.cpus_per_task,
            mem: args.mem,
            time_limit: args.time,
            parallel: args.max_parallel,
            ..SbatchOptions::default()
        },
        ingest: IngestOptions::default(),
        program: None,
        rerun_failed: args.rerun_failed,
        dry_run: args.dry_run,
    };
    let out = submit_sweep(&opts)?;
    println!(
        "{}: {} jobs planned, {} done, {} queued or running in earlier submissions, {} failed before (--rerun-failed to resend)",
        out.sweep,
        out.planned,
        out.done,
        out.live.len(),
        out.held_back
    );
    let Some(sub) = &out.submission else {
        println!("nothing to submit");
        return Ok(ExitCode::SUCCESS);
    };
    let tasks: usize = sub.manifest.chunks.iter().map(|c| c.tasks.len()).sum();
    if !out.submitted {
        for script in &sub.scripts {
            println!("# {}", script.display());
            print!("{}", std::fs::read_to_string(script)?);
        }
        println!(
            "dry run: {tasks} job(s) in {} array(s) written to {}; nothing submitted",
            sub.scripts.len(),
            sub.dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for c in &sub.manifest.chunks {
        let after = if c.after.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = c.after.iter().map(u64::to_string).collect();
            format!(" after {}", ids.join(","))
        };
        println!(
            "array {} ({} task(s), --array={}){after}",
            c.slurm_job_id.unwrap_or_default(),
            c.tasks.len(),
            c.array
        );
    }
    if let Some(i) = &sub.manifest.ingest {
        println!(
            "ingest and report: job {}",
            i.slurm_job_id.unwrap_or_default()
        );
    }
    println!(
        "submitted {tasks} job(s) as {}; follow with `ranksweep status {}`",
        sub.dir.display(),
        out.sweep
    );
    Ok(ExitCode::SUCCESS)
}
