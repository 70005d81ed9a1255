//! Thin wrappers that run SLURM's programs and hand their output to the parsers in
//! [`super::config`] and [`super::state`]. No decisions here; the programs are found on PATH.

use std::path::Path;
use std::process::{Command, Output};

use super::config::parse_max_array_size;
use super::state::{
    SACCT_FORMAT, SQUEUE_FORMAT, Submitted, TaskStatus, parse_sacct, parse_sbatch_parsable,
    parse_scontrol_show_job, parse_squeue,
};
use super::{Result, SlurmError};

/// `MaxArraySize` of the cluster (`scontrol show config`), 1001 when it does not say.
pub fn max_array_size() -> Result<u32> {
    let out = run(Command::new("scontrol").args(["show", "config"]))?;
    parse_max_array_size(&out)
}

/// `sbatch --parsable SCRIPT`, run in `cwd`; the id (and cluster) SLURM gave the job.
pub fn sbatch_submit(script: &Path, cwd: &Path) -> Result<Submitted> {
    sbatch_submit_after(script, cwd, &[])
}

/// Like [`sbatch_submit`], but the job starts only once every job of `after` ended with exit
/// 0 (`--dependency=afterok:…`); if one of them fails, SLURM cancels this job
/// (`--kill-on-invalid-dep=yes`) instead of leaving it pending forever. The ids are passed on
/// the command line because they are only known once the earlier arrays are submitted.
pub fn sbatch_submit_after(script: &Path, cwd: &Path, after: &[u64]) -> Result<Submitted> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if !after.is_empty() {
        let ids: Vec<String> = after.iter().map(u64::to_string).collect();
        cmd.arg(format!("--dependency=afterok:{}", ids.join(":")))
            .arg("--kill-on-invalid-dep=yes");
    }
    let out = run(cmd.arg(script).current_dir(cwd))?;
    parse_sbatch_parsable(&out)
}

/// Every task of the given jobs from `sacct` (accounting keeps them after SLURM's memory
/// forgets them); `None` when the cluster runs without accounting storage.
pub fn sacct_tasks(job_ids: &[u64]) -> Result<Option<Vec<TaskStatus>>> {
    let ids: Vec<String> = job_ids.iter().map(u64::to_string).collect();
    match run(Command::new("sacct")
        .args(["--noheader", "--parsable2", "--allocations"])
        .arg(format!("--format={SACCT_FORMAT}"))
        .arg(format!("--jobs={}", ids.join(","))))
    {
        Ok(out) => parse_sacct(&out).map(Some),
        Err(SlurmError::Failed { stderr, .. })
            if stderr.contains("accounting storage is disabled") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Every task of the given jobs (array ids or plain ids), finished ones included while SLURM
/// still remembers them (`MinJobAge`, 300 s by default). A job SLURM has forgotten gives no
/// row; when every id is unknown, squeue fails ("Invalid job id specified").
pub fn squeue_tasks(job_ids: &[u64]) -> Result<Vec<TaskStatus>> {
    let ids: Vec<String> = job_ids.iter().map(u64::to_string).collect();
    let out = run(Command::new("squeue")
        .args(["--noheader", "--array", "--states=all"])
        .arg(format!("--format={SQUEUE_FORMAT}"))
        .arg(format!("--jobs={}", ids.join(","))))?;
    parse_squeue(&out)
}

/// `scontrol show job ID`: every task of an array, or one job.
pub fn scontrol_show_job(job_id: u64) -> Result<Vec<TaskStatus>> {
    let out = run(Command::new("scontrol")
        .args(["show", "job"])
        .arg(job_id.to_string()))?;
    parse_scontrol_show_job(&out)
}

/// `scancel ID` or `scancel ID_INDEX`.
pub fn scancel(job_id: u64, array_task: Option<u32>) -> Result<()> {
    let target = match array_task {
        Some(t) => format!("{job_id}_{t}"),
        None => job_id.to_string(),
    };
    run(Command::new("scancel").arg(target)).map(drop)
}

/// Runs `cmd`, returning its stdout; a failure carries its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().map_err(|source| SlurmError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !status.success() {
        return Err(SlurmError::Failed {
            command: shown,
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_and_a_failing_one_are_told_apart() {
        let err = run(&mut Command::new("/nonexistent/sbatch")).unwrap_err();
        assert!(matches!(err, SlurmError::Spawn { .. }), "{err}");
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("boom") && text.contains("sh -c"), "{text}");
        assert_eq!(
            run(Command::new("sh").args(["-c", "echo 5"])).unwrap(),
            "5\n"
        );
    }
}
