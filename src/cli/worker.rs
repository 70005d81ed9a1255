//! `ranksweep worker JOB_FILE`: run one job for a machine — the entry point every backend
//! (local pool, SLURM array task) starts. Progress goes to stdout as JSON lines, errors to
//! stderr, and the exit code is the job's class (see `train::protocol::ExitClass`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::train::job_run::{RESULT_FILE, choose_device};
use crate::train::signal::install_stop_handler;
use crate::train::{Event, ExitClass, JobConfig, run_job};

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The job file (YAML or JSON). Relative paths in it are relative to its folder.
    pub job_file: PathBuf,
    /// Run on this device (`cpu`, `cuda`, `cuda:N`). Without it: RANKSWEEP_DEVICE, else the job
    /// file's `device`, else the GPU of CUDA_VISIBLE_DEVICES on a CUDA build, else the CPU. A
    /// GPU job on a build without CUDA or without a visible GPU exits 2.
    #[arg(long)]
    pub device: Option<crate::nn::DeviceSpec>,
}

pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let stop = install_stop_handler()?;
    let mut stdout = std::io::stdout();
    // A closed pipe must not kill the job: write errors are ignored, the result file counts.
    let mut emit = move |e: &Event| {
        let _ = writeln!(stdout, "{}", e.to_json_line());
        let _ = stdout.flush();
    };
    let device = args.device;
    // A panic is a bug, not a class of its own: it ends as `failed` with the panic message as
    // the error, like any other failure (the hook has already printed it with its location).
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut job = JobConfig::from_file(&args.job_file)?;
        let key = job.output.file_name().unwrap_or_default().to_string_lossy();
        crate::train::fault::inject(&key)?;
        match choose_device(&mut job, device) {
            Ok(()) => {}
            Err(e) if e.is_usage() => return Ok(Err(e)),
            Err(e) => return Err(e.into()),
        }
        run_job(&job, stop, &mut emit).map(|_| Ok(job.output.join(RESULT_FILE)))
    }));
    let outcome = match outcome {
        Ok(o) => o,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let error = format!("panic: {msg}");
            emit(&Event::End {
                class: ExitClass::Failed,
                error: Some(error),
                result: None,
            });
            return Ok(ExitCode::from(ExitClass::Failed.code()));
        }
    };
    match outcome {
        // A device this build or host cannot give: the caller's error (exit 2), reported in
        // the `end` event too so that the orchestrator's attempt row says why.
        Ok(Err(e)) => {
            eprintln!("ranksweep: `device`: {e}");
            emit(&Event::End {
                class: ExitClass::Failed,
                error: Some(format!("`device`: {e}")),
                result: None,
            });
            Ok(ExitCode::from(crate::cli::EXIT_USAGE))
        }
        Ok(Ok(result)) => {
            emit(&Event::End {
                class: ExitClass::Ok,
                error: None,
                result: Some(result),
            });
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            let class = err.class();
            let _ = writeln!(std::io::stderr(), "ranksweep: {err}");
            emit(&Event::End {
                class,
                error: Some(err.to_string()),
                result: None,
            });
            Ok(ExitCode::from(class.code()))
        }
    }
}
