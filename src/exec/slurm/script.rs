//! Rendering sbatch scripts: one per array chunk, and the `afterany` ingest job.
//!
//! An array script's `#SBATCH` header carries the resources, `--array=0-K%P`, the
//! `--signal=B:USR1@S` warning before the time limit and `--requeue`; its body reads line
//! `SLURM_ARRAY_TASK_ID + 1` of the chunk's job list (`sed -n`) and `exec`s the worker on that
//! job file. `exec` makes the worker the batch step's main process, so `B:USR1` (sent to the
//! batch shell only) and `TERM` (sent on `scancel` and at the time limit) reach it directly,
//! with no trap that could drop or double them. No value from a spec is pasted into shell code
//! unquoted: see [`super::quote`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::quote::{invalid, sbatch_path_pattern, sbatch_quote, sh_quote, sh_quote_path};
use super::{Result, SlurmError};

/// Resources and behaviour of every task of an array (one sweep's SLURM settings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbatchOptions {
    /// `--job-name`.
    pub job_name: String,
    /// `--partition`; the cluster's default when `None`.
    pub partition: Option<String>,
    /// `--account`; the user's default when `None`.
    pub account: Option<String>,
    /// `--gres`, e.g. `gpu:1`; none when `None`.
    pub gres: Option<String>,
    /// `--cpus-per-task`.
    pub cpus_per_task: u32,
    /// `--mem` per node, e.g. `16G`: digits and an optional K/M/G/T suffix.
    pub mem: Option<String>,
    /// `--time`, rendered `D-HH:MM:SS`; must be at least one second.
    pub time_limit: Duration,
    /// The `%P` of `--array=0-K%P`: how many tasks of one chunk may run at once.
    pub parallel: u32,
    /// Seconds before the time limit at which the worker gets `USR1` (`--signal=B:USR1@S`).
    pub signal_before_s: u32,
    /// `--requeue`: let SLURM requeue a task after a node failure or preemption.
    pub requeue: bool,
}

impl Default for SbatchOptions {
    fn default() -> Self {
        Self {
            job_name: "ranksweep".into(),
            partition: None,
            account: None,
            gres: Some("gpu:1".into()),
            cpus_per_task: 4,
            mem: None,
            time_limit: Duration::from_secs(24 * 3600),
            parallel: 4,
            signal_before_s: 120,
            requeue: true,
        }
    }
}

/// Settings of the ingest-and-report job chained after the arrays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestOptions {
    pub job_name: String,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub cpus_per_task: u32,
    pub mem: Option<String>,
    pub time_limit: Duration,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            job_name: "ranksweep-ingest".into(),
            partition: None,
            account: None,
            cpus_per_task: 1,
            mem: Some("4G".into()),
            time_limit: Duration::from_secs(3600),
        }
    }
}

/// The program every task runs: `program args… JOB_FILE` (normally `ranksweep worker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCommand {
    /// Absolute path of the program (tasks run on other hosts, with another working directory).
    /// Its file name should hold no space: SLURM's proctrack/linuxproc loses track of such a
    /// process (see scripts/slurm-local.sh).
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl WorkerCommand {
    /// `<program> worker`, the worker of every backend.
    pub fn ranksweep(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: vec!["worker".into()],
        }
    }
}

/// Renders the sbatch script of one array chunk of `tasks` tasks (indices `0..tasks`).
///
/// `job_list` is the chunk's list file (line i+1 = job file of index i) and `log_dir` the
/// folder for `%A_%a.out`/`.err`; both must be absolute, since tasks start elsewhere.
pub fn render_array_script(
    opts: &SbatchOptions,
    worker: &WorkerCommand,
    tasks: usize,
    job_list: &Path,
    log_dir: &Path,
) -> Result<String> {
    if tasks == 0 {
        return Err(SlurmError::NoJobs);
    }
    if opts.parallel == 0 {
        return Err(invalid(
            "parallel",
            "0",
            "expected at least 1 task at a time",
        ));
    }
    absolute("job_list", job_list)?;
    absolute("log_dir", log_dir)?;
    absolute("worker.program", &worker.program)?;

    let mut s = String::from("#!/bin/bash\n");
    header(
        &mut s,
        &opts.job_name,
        opts.partition.as_deref(),
        opts.account.as_deref(),
    )?;
    if let Some(gres) = &opts.gres {
        sbatch_line(&mut s, "gres", &sbatch_quote("gres", gres)?);
    }
    resources(
        &mut s,
        opts.cpus_per_task,
        opts.mem.as_deref(),
        opts.time_limit,
    )?;
    let parallel = opts.parallel.min(u32::try_from(tasks).unwrap_or(u32::MAX));
    sbatch_line(&mut s, "array", &format!("0-{}%{parallel}", tasks - 1));
    sbatch_line(
        &mut s,
        "signal",
        &format!("B:USR1@{}", opts.signal_before_s),
    );
    if opts.requeue {
        s.push_str("#SBATCH --requeue\n");
    }
    sbatch_line(
        &mut s,
        "output",
        &sbatch_path_pattern("log_dir", log_dir, "%A_%a.out")?,
    );
    sbatch_line(
        &mut s,
        "error",
        &sbatch_path_pattern("log_dir", log_dir, "%A_%a.err")?,
    );

    // A task that holds a GPU runs a GPU job: the worker must use it or fail, never train on
    // the CPU (a CPU-only build exits 2 saying which build to use).
    let gpu_marker = if opts.gres.as_deref().is_some_and(gres_has_gpu) {
        format!(
            "# --gres names a GPU: every task is a GPU job on the GPU SLURM gives it.\nexport {}=cuda\n",
            crate::nn::device::DEVICE_ENV
        )
    } else {
        String::new()
    };
    let mut cmd = sh_quote_path("worker.program", &worker.program)?;
    for arg in &worker.args {
        cmd.push(' ');
        cmd.push_str(&sh_quote(arg));
    }
    let _ = write!(
        s,
        r#"
# Rendered by ranksweep: array task i runs the worker on line i+1 of the job list.
set -euo pipefail
job_list={list}
task=${{SLURM_ARRAY_TASK_ID:-}}
if [[ ! $task =~ ^[0-9]+$ ]]; then
    echo "ranksweep: SLURM_ARRAY_TASK_ID is not a task index: '$task'" >&2
    exit 2
fi
job_file=$(sed -n "$((10#$task + 1))p" -- "$job_list")
if [[ -z $job_file ]]; then
    echo "ranksweep: no job file on line $((10#$task + 1)) of $job_list" >&2
    exit 2
fi
{gpu_marker}# exec: the worker receives USR1 (--signal=B:USR1) and TERM itself.
exec {cmd} "$job_file"
"#,
        list = sh_quote_path("job_list", job_list)?,
    );
    Ok(s)
}

/// Whether a `--gres` value asks for GPUs: an entry `gpu`, `gpu:N` or `gpu:TYPE:N` (also as
/// `gres/gpu…`).
pub fn gres_has_gpu(gres: &str) -> bool {
    gres.split(',').any(|e| {
        let e = e.trim();
        let e = e.strip_prefix("gres/").unwrap_or(e);
        let name = e.split(':').next().unwrap_or("");
        name == "gpu" && !e.ends_with(":0")
    })
}

/// What the ingest job runs: `program ingest <results>/<sweep> --sweep <sweep> --results
/// <results> --db <db>`, then `program report <sweep> --results <results> --db <db>`.
#[derive(Debug, Clone, Copy)]
pub struct IngestCommand<'a> {
    /// Absolute path of `ranksweep`.
    pub program: &'a Path,
    /// The results root (absolute): the sweep's folder is `<results>/<sweep>`.
    pub results: &'a Path,
    /// The database (absolute); the ingest job is its only writer while the arrays run.
    pub db: &'a Path,
    pub sweep: &'a str,
}

/// Renders the job that runs after every array job ends (`--dependency=afterany:<ids>`): it
/// ingests the sweep's result files, then writes the report even when ingest found unreadable
/// files, and exits with ingest's status.
pub fn render_ingest_script(
    opts: &IngestOptions,
    cmd: &IngestCommand<'_>,
    after: &[u64],
    log_dir: &Path,
) -> Result<String> {
    if after.is_empty() {
        return Err(SlurmError::NoJobs);
    }
    absolute("program", cmd.program)?;
    absolute("results", cmd.results)?;
    absolute("db", cmd.db)?;
    absolute("log_dir", log_dir)?;
    let mut s = String::from("#!/bin/bash\n");
    header(
        &mut s,
        &opts.job_name,
        opts.partition.as_deref(),
        opts.account.as_deref(),
    )?;
    resources(
        &mut s,
        opts.cpus_per_task,
        opts.mem.as_deref(),
        opts.time_limit,
    )?;
    let ids: Vec<String> = after.iter().map(u64::to_string).collect();
    sbatch_line(&mut s, "dependency", &format!("afterany:{}", ids.join(":")));
    sbatch_line(
        &mut s,
        "output",
        &sbatch_path_pattern("log_dir", log_dir, "ingest_%j.out")?,
    );
    sbatch_line(
        &mut s,
        "error",
        &sbatch_path_pattern("log_dir", log_dir, "ingest_%j.err")?,
    );
    let program = sh_quote_path("program", cmd.program)?;
    let store = format!(
        "--results {} --db {}",
        sh_quote_path("results", cmd.results)?,
        sh_quote_path("db", cmd.db)?
    );
    let _ = write!(
        s,
        "\n# Rendered by ranksweep: store the sweep's result files, then report.\n\
         set -uo pipefail\n\
         status=0\n\
         {program} ingest {dir} --sweep {sweep} {store} || status=$?\n\
         {program} report {sweep} {store} --quiet || status=$((status ? status : $?))\n\
         exit \"$status\"\n",
        dir = sh_quote_path("results", &cmd.results.join(cmd.sweep))?,
        sweep = sh_quote(cmd.sweep),
    );
    Ok(s)
}

fn header(
    s: &mut String,
    name: &str,
    partition: Option<&str>,
    account: Option<&str>,
) -> Result<()> {
    if name.trim().is_empty() {
        return Err(invalid("job_name", name, "expected a non-empty job name"));
    }
    sbatch_line(s, "job-name", &sbatch_quote("job_name", name)?);
    if let Some(p) = partition {
        sbatch_line(s, "partition", &sbatch_quote("partition", p)?);
    }
    if let Some(a) = account {
        sbatch_line(s, "account", &sbatch_quote("account", a)?);
    }
    Ok(())
}

fn resources(s: &mut String, cpus: u32, mem: Option<&str>, time: Duration) -> Result<()> {
    if cpus == 0 {
        return Err(invalid("cpus_per_task", "0", "expected at least 1"));
    }
    sbatch_line(s, "cpus-per-task", &cpus.to_string());
    if let Some(mem) = mem {
        sbatch_line(s, "mem", &check_mem(mem)?);
    }
    sbatch_line(s, "time", &slurm_time(time)?);
    Ok(())
}

fn sbatch_line(s: &mut String, flag: &str, value: &str) {
    let _ = writeln!(s, "#SBATCH --{flag}={value}");
}

/// `--mem` values: digits and an optional unit (K, M, G, T), as sbatch accepts them.
fn check_mem(mem: &str) -> Result<String> {
    let digits = mem.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let unit_len = mem.len() - digits.len();
    if digits.is_empty() || unit_len > 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "mem",
            mem,
            "expected a size like 16G or 4000M (digits and one of K, M, G, T)",
        ));
    }
    Ok(mem.to_owned())
}

/// `D-HH:MM:SS`, rounding sub-seconds up.
fn slurm_time(t: Duration) -> Result<String> {
    let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
    if secs == 0 {
        return Err(invalid("time_limit", "0s", "expected at least one second"));
    }
    Ok(format!(
        "{}-{:02}:{:02}:{:02}",
        secs / 86400,
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    ))
}

fn absolute(field: &'static str, p: &Path) -> Result<()> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            field,
            &p.to_string_lossy(),
            "expected an absolute path (tasks start on other hosts and folders)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::*;

    const HOSTILE: &str = "we'ird $HOME `id` \"q\" 50% #x";

    fn opts() -> SbatchOptions {
        SbatchOptions {
            job_name: format!("sweep {HOSTILE}"),
            partition: Some("gpu a100".into()),
            account: Some("lab's".into()),
            gres: Some("gpu:1".into()),
            cpus_per_task: 8,
            mem: Some("32G".into()),
            time_limit: Duration::from_secs(26 * 3600 + 61),
            parallel: 2,
            signal_before_s: 120,
            requeue: true,
        }
    }

    /// `bash -n` accepts the script.
    fn bash_n(script: &str, dir: &Path) {
        let path = dir.join("check.sh");
        std::fs::write(&path, script).unwrap();
        let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "bash -n: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn gres_that_asks_for_gpus() {
        for yes in ["gpu", "gpu:1", "gpu:a100:2", "gres/gpu:4", "shard:2,gpu:1"] {
            assert!(gres_has_gpu(yes), "{yes}");
        }
        for no in ["", "shard:2", "mps:100", "gpu:0", "gpus:1x"] {
            assert!(!gres_has_gpu(no), "{no}");
        }
    }

    #[test]
    fn header_lines_in_order_and_values_quoted() {
        let s = render_array_script(
            &opts(),
            &WorkerCommand::ranksweep("/opt/rs/ranksweep"),
            5,
            Path::new("/r/s/chunk-000.jobs"),
            Path::new("/r/s/logs"),
        )
        .unwrap();
        let header: Vec<&str> = s.lines().filter(|l| l.starts_with("#SBATCH")).collect();
        assert_eq!(
            header,
            [
                r#"#SBATCH --job-name="sweep we'ird $HOME `id` \"q\" 50% #x""#,
                r#"#SBATCH --partition="gpu a100""#,
                r#"#SBATCH --account="lab's""#,
                r#"#SBATCH --gres="gpu:1""#,
                "#SBATCH --cpus-per-task=8",
                "#SBATCH --mem=32G",
                "#SBATCH --time=1-02:01:01",
                "#SBATCH --array=0-4%2",
                "#SBATCH --signal=B:USR1@120",
                "#SBATCH --requeue",
                r#"#SBATCH --output="/r/s/logs/%A_%a.out""#,
                r#"#SBATCH --error="/r/s/logs/%A_%a.err""#,
            ]
        );
        // sbatch stops reading #SBATCH at the first command: all of them come first.
        let first_cmd = s.lines().position(|l| l.starts_with("set ")).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        let last_sbatch = lines
            .iter()
            .rposition(|l| l.starts_with("#SBATCH"))
            .unwrap();
        assert!(last_sbatch < first_cmd);
    }

    #[test]
    fn throttle_is_capped_by_the_chunk_and_options_are_checked() {
        let w = WorkerCommand::ranksweep("/bin/rs");
        let (l, d) = (Path::new("/l"), Path::new("/d"));
        let one = render_array_script(&opts(), &w, 1, l, d).unwrap();
        assert!(one.contains("#SBATCH --array=0-0%1\n"));
        let mut o = opts();
        o.gres = None;
        o.requeue = false;
        o.partition = None;
        let s = render_array_script(&o, &w, 3, l, d).unwrap();
        assert!(!s.contains("--gres") && !s.contains("--requeue") && !s.contains("--partition"));
        assert!(!s.contains("RANKSWEEP_DEVICE"), "no GPU asked: no GPU job");
        // A GPU in --gres makes every task a GPU job, set before the worker starts.
        let gpu = render_array_script(&opts(), &w, 3, l, d).unwrap();
        let marker = gpu.find("\nexport RANKSWEEP_DEVICE=cuda\n").unwrap();
        assert!(marker < gpu.find("\nexec ").unwrap(), "{gpu}");
        for (field, bad) in [
            (
                "mem",
                SbatchOptions {
                    mem: Some("lots".into()),
                    ..opts()
                },
            ),
            (
                "mem",
                SbatchOptions {
                    mem: Some("4GB".into()),
                    ..opts()
                },
            ),
            (
                "parallel",
                SbatchOptions {
                    parallel: 0,
                    ..opts()
                },
            ),
            (
                "time_limit",
                SbatchOptions {
                    time_limit: Duration::ZERO,
                    ..opts()
                },
            ),
            (
                "job_name",
                SbatchOptions {
                    job_name: "a\nb".into(),
                    ..opts()
                },
            ),
            (
                "cpus_per_task",
                SbatchOptions {
                    cpus_per_task: 0,
                    ..opts()
                },
            ),
        ] {
            let err = render_array_script(&bad, &w, 2, l, d)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
        assert!(render_array_script(&opts(), &w, 0, l, d).is_err());
        assert!(render_array_script(&opts(), &w, 2, Path::new("rel.jobs"), d).is_err());
    }

    #[test]
    fn script_with_hostile_paths_runs_the_right_job_with_a_fake_worker() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(HOSTILE);
        std::fs::create_dir_all(&dir).unwrap();
        // A fake worker that records its arguments, one per line.
        let worker = dir.join("fake worker's.sh");
        std::fs::write(
            &worker,
            "#!/bin/bash\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$RS_OUT\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let jobs: Vec<PathBuf> = (0..3)
            .map(|i| dir.join(format!("job {i} $(touch pwned) 'x'.json")))
            .collect();
        let list = dir.join("chunk $0.jobs");
        let text: String = jobs.iter().map(|j| format!("{}\n", j.display())).collect();
        std::fs::write(&list, text).unwrap();
        let w = WorkerCommand {
            program: worker,
            args: vec!["worker".into(), "--flag=a b".into()],
        };
        let script = render_array_script(&opts(), &w, 3, &list, &dir.join("logs")).unwrap();
        bash_n(&script, tmp.path());
        let path = dir.join("chunk.sbatch");
        std::fs::write(&path, &script).unwrap();

        let run = |task: &str| {
            let out_file = tmp.path().join("args.txt");
            let _ = std::fs::remove_file(&out_file);
            let out = Command::new("bash")
                .arg(&path)
                .env("SLURM_ARRAY_TASK_ID", task)
                .env("RS_OUT", &out_file)
                .current_dir(tmp.path())
                .output()
                .unwrap();
            (out, std::fs::read_to_string(&out_file).ok())
        };
        let (out, args) = run("1");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            args.unwrap(),
            format!("worker\n--flag=a b\n{}\n", jobs[1].display())
        );
        let (_, args) = run("0");
        assert!(args.unwrap().ends_with(&format!("{}\n", jobs[0].display())));
        assert!(!tmp.path().join("pwned").exists() && !dir.join("pwned").exists());

        for bad in ["3", "", "1;id", "-1"] {
            let (out, args) = run(bad);
            assert_eq!(out.status.code(), Some(2), "task {bad:?}");
            assert!(args.is_none(), "task {bad:?} ran the worker");
        }
    }

    #[test]
    fn ingest_script_depends_on_all_arrays_and_runs_ingest_then_report() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(HOSTILE);
        std::fs::create_dir_all(&dir).unwrap();
        // A stand-in program that appends its arguments (NUL-separated, one call per line).
        let program = dir.join("fake-ranksweep");
        std::fs::write(
            &program,
            "#!/bin/bash\nprintf '%s\\0' \"$@\" >> \"$(dirname \"$0\")/calls\"\necho >> \"$(dirname \"$0\")/calls\"\n[[ $1 == ingest ]] && exit 1\nexit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let results = dir.join("res ults");
        let db = dir.join("it's.db");
        let sweep = "it's $x";
        let s = render_ingest_script(
            &IngestOptions::default(),
            &IngestCommand {
                program: &program,
                results: &results,
                db: &db,
                sweep,
            },
            &[101, 205],
            &dir.join("logs"),
        )
        .unwrap();
        bash_n(&s, tmp.path());
        assert!(s.contains("#SBATCH --dependency=afterany:101:205\n"), "{s}");
        assert!(s.contains("#SBATCH --job-name=\"ranksweep-ingest\"\n"));
        let path = tmp.path().join("ingest.sbatch");
        std::fs::write(&path, &s).unwrap();
        let out = Command::new("bash").arg(&path).output().unwrap();
        // ingest failed (1): report still ran, and the job exits with ingest's status.
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
        let calls: Vec<Vec<&str>> = calls
            .lines()
            .map(|l| l.trim_end_matches('\0').split('\0').collect())
            .collect();
        let (r, d) = (results.to_str().unwrap(), db.to_str().unwrap());
        let sweep_dir = results.join(sweep);
        assert_eq!(
            calls,
            [
                vec![
                    "ingest",
                    sweep_dir.to_str().unwrap(),
                    "--sweep",
                    sweep,
                    "--results",
                    r,
                    "--db",
                    d
                ],
                vec!["report", sweep, "--results", r, "--db", d, "--quiet"],
            ]
        );
        let cmd = IngestCommand {
            program: Path::new("/p"),
            results: Path::new("/d"),
            db: Path::new("/d/x.db"),
            sweep: "s",
        };
        assert!(
            render_ingest_script(&IngestOptions::default(), &cmd, &[], Path::new("/l")).is_err()
        );
        let relative_db = IngestCommand {
            db: Path::new("x.db"),
            ..cmd
        };
        let err = render_ingest_script(
            &IngestOptions::default(),
            &relative_db,
            &[1],
            Path::new("/l"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`db`"), "{err}");
    }

    #[test]
    fn time_limit_rendering() {
        assert_eq!(slurm_time(Duration::from_secs(59)).unwrap(), "0-00:00:59");
        assert_eq!(
            slurm_time(Duration::from_millis(1500)).unwrap(),
            "0-00:00:02"
        );
        assert_eq!(
            slurm_time(Duration::from_secs(3 * 86400 + 3600)).unwrap(),
            "3-01:00:00"
        );
    }
}
