//! Parsers for what SLURM prints about jobs: `sbatch --parsable`, `squeue`, `sacct` and
//! `scontrol show job`, into one row per array task ([`TaskStatus`]) with a coarse
//! [`TaskState`] for `status`.
//!
//! A pending array whose tasks have not been split yet is one record with an index range
//! (`0-9%3`, `[5-9]`, `1,3,5-7`); it is expanded into one row per index, so callers can always
//! look a task up by (array job id, index). The raw SLURM state and reason are kept.
//! Fixtures under `fixtures/` were captured from SLURM 22.05 (see the README there).

use serde::{Deserialize, Serialize};

use super::{Result, SlurmError};

/// `--format` for [`parse_squeue`]: job id, array job id, array task id (or range, or `N/A`),
/// long state, reason. Use it with `--noheader --array --states=all`.
pub const SQUEUE_FORMAT: &str = "%A|%F|%K|%T|%r";

/// `--format` for [`parse_sacct`]; use it with `--noheader --parsable2 --allocations`.
pub const SACCT_FORMAT: &str = "JobID,State,ExitCode";

/// A ranged index list longer than this is refused (SLURM's own MaxArraySize ceiling).
const MAX_RANGE: u64 = 4_000_001;

/// Where a task is, coarsely; what `status` shows and what decides a rerun.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// Queued, held, waiting on a dependency or requeued.
    Pending,
    /// Allocated: configuring, running, completing, suspended.
    Running,
    /// Exit code 0.
    Completed,
    /// Non-zero exit, a node or boot failure, out of memory.
    Failed,
    /// Killed at its time limit (or deadline).
    Timeout,
    /// Cancelled by a user or preempted without requeue.
    Cancelled,
}

impl TaskState {
    /// The coarse state of a SLURM job state name (`squeue %T`, `scontrol JobState`, `sacct
    /// State`; sacct's `CANCELLED by 0` is read by its first word). `None` if unknown.
    pub fn from_slurm(state: &str) -> Option<Self> {
        let word = state.split_whitespace().next().unwrap_or("");
        // Trailing `+` marks a state with more flags in sacct (e.g. `CANCELLED+`).
        let word = word.trim_end_matches('+');
        Some(match word {
            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD"
            | "SPECIAL_EXIT" => Self::Pending,
            "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "SIGNALING"
            | "STAGE_OUT" | "RESIZING" => Self::Running,
            "COMPLETED" => Self::Completed,
            "FAILED" | "NODE_FAIL" | "BOOT_FAIL" | "OUT_OF_MEMORY" => Self::Failed,
            "TIMEOUT" | "DEADLINE" => Self::Timeout,
            "CANCELLED" | "PREEMPTED" | "REVOKED" => Self::Cancelled,
            _ => return None,
        })
    }

    /// True once the task will not change any more (unless requeued by hand).
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

/// `ExitCode=code:signal` as scontrol and sacct print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmExit {
    pub code: i32,
    pub signal: i32,
}

/// One array task (or one plain job) as SLURM reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The SLURM job id of this record (a split array task has its own; an unsplit pending
    /// task carries the array's id).
    pub job_id: u64,
    /// The array's job id (the id `sbatch` printed); equals `job_id` for a plain job.
    pub array_job_id: u64,
    /// The array index; `None` for a plain job.
    pub array_task_id: Option<u32>,
    pub state: TaskState,
    /// SLURM's own state name, e.g. `NODE_FAIL`.
    pub slurm_state: String,
    /// SLURM's reason, e.g. `Dependency`, `JobArrayTaskLimit`; `None` when it says `None`.
    pub reason: Option<String>,
    /// Exit code and signal, where the source reports them (scontrol, sacct).
    pub exit: Option<SlurmExit>,
}

/// What `sbatch --parsable` printed: `jobid` or `jobid;cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub job_id: u64,
    pub cluster: Option<String>,
}

/// Parses `sbatch --parsable` output: the last non-empty line, `jobid[;cluster]`.
pub fn parse_sbatch_parsable(out: &str) -> Result<Submitted> {
    let (n, line) = out
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .last()
        .ok_or_else(|| parse_err("sbatch --parsable", 1, out, "`jobid[;cluster]`"))?;
    let line = line.trim();
    let (id, cluster) = match line.split_once(';') {
        Some((id, cluster)) if !cluster.is_empty() => (id, Some(cluster.to_owned())),
        Some(_) => {
            return Err(parse_err(
                "sbatch --parsable",
                n + 1,
                line,
                "a cluster name after `;`",
            ));
        }
        None => (line, None),
    };
    let job_id = id
        .parse()
        .map_err(|_| parse_err("sbatch --parsable", n + 1, line, "`jobid[;cluster]`"))?;
    Ok(Submitted { job_id, cluster })
}

/// Parses `squeue --noheader --array --states=all --format=`[`SQUEUE_FORMAT`] output.
pub fn parse_squeue(out: &str) -> Result<Vec<TaskStatus>> {
    const WHAT: &str = "squeue";
    const EXPECTED: &str = "`jobid|arrayjobid|taskid|STATE|reason` (--format='%A|%F|%K|%T|%r')";
    let mut rows = Vec::new();
    for (i, line) in out.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.splitn(5, '|').collect();
        if f.len() != 5 {
            return Err(parse_err(WHAT, i + 1, line, EXPECTED));
        }
        let num = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| parse_err(WHAT, i + 1, line, EXPECTED))
        };
        let (job_id, array_job_id) = (num(f[0])?, num(f[1])?);
        let state = known_state(WHAT, i + 1, f[3])?;
        let tasks = task_ids(f[2]).ok_or_else(|| parse_err(WHAT, i + 1, line, EXPECTED))?;
        push_rows(
            &mut rows,
            job_id,
            array_job_id,
            tasks,
            state,
            f[3],
            reason(f[4]),
            None,
        );
    }
    Ok(rows)
}

/// Parses `sacct --noheader --parsable2 --allocations --format=`[`SACCT_FORMAT`] output:
/// `JobID|State|ExitCode`, JobID being `123`, `123_4` or `123_[5-9%2]`. Step lines
/// (`123.batch`) are skipped in case `--allocations` was left out.
pub fn parse_sacct(out: &str) -> Result<Vec<TaskStatus>> {
    const WHAT: &str = "sacct";
    const EXPECTED: &str = "`jobid[_task]|STATE|code:signal` (--format=JobID,State,ExitCode)";
    let mut rows = Vec::new();
    for (i, line) in out.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('|').collect();
        if f.len() != 3 {
            return Err(parse_err(WHAT, i + 1, line, EXPECTED));
        }
        if f[0].contains('.') {
            continue;
        }
        let bad = || parse_err(WHAT, i + 1, line, EXPECTED);
        let (array_job_id, tasks) = match f[0].split_once('_') {
            Some((id, tasks)) => (
                id.parse::<u64>().map_err(|_| bad())?,
                task_ids(tasks).ok_or_else(bad)?,
            ),
            None => (f[0].parse::<u64>().map_err(|_| bad())?, None),
        };
        let state = known_state(WHAT, i + 1, f[1])?;
        let exit = parse_exit(f[2]).ok_or_else(bad)?;
        // sacct prints array ids, not each task's own job id.
        push_rows(
            &mut rows,
            array_job_id,
            array_job_id,
            tasks,
            state,
            f[1],
            None,
            Some(exit),
        );
    }
    Ok(rows)
}

/// Parses `scontrol show job` output (the default multi-line layout, one record per job,
/// records starting with `JobId=`). The one-line `-o` layout is not accepted: there a job name
/// with spaces cannot be told from the fields after it.
pub fn parse_scontrol_show_job(out: &str) -> Result<Vec<TaskStatus>> {
    const WHAT: &str = "scontrol show job";
    let mut rows = Vec::new();
    let mut record: Option<(usize, Vec<(String, String)>)> = None;
    for (i, line) in out.lines().enumerate() {
        if line.starts_with("JobId=") {
            if let Some((start, fields)) = record.take() {
                scontrol_record(&mut rows, start, &fields)?;
            }
            record = Some((i + 1, Vec::new()));
        }
        let Some((_, fields)) = record.as_mut() else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(parse_err(
                WHAT,
                i + 1,
                line,
                "a record starting with `JobId=`",
            ));
        };
        scontrol_line(line, fields);
    }
    if let Some((start, fields)) = record {
        scontrol_record(&mut rows, start, &fields)?;
    }
    Ok(rows)
}

/// Splits one scontrol line into `Key=value` fields. A word without `=` continues the previous
/// value (reasons and names may hold spaces); free-text keys take the rest of the line.
fn scontrol_line(line: &str, fields: &mut Vec<(String, String)>) {
    const REST_OF_LINE: [&str; 7] = [
        "JobName", "Command", "WorkDir", "StdErr", "StdIn", "StdOut", "Comment",
    ];
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let (word, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        match word.split_once('=') {
            Some((key, value))
                if !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_:/".contains(c)) =>
            {
                if REST_OF_LINE.contains(&key) {
                    let value = rest[key.len() + 1..].trim_end();
                    fields.push((key.to_owned(), value.to_owned()));
                    return;
                }
                fields.push((key.to_owned(), value.to_owned()));
            }
            _ => {
                if let Some((_, value)) = fields.last_mut() {
                    value.push(' ');
                    value.push_str(word);
                }
            }
        }
        rest = tail.trim_start();
    }
}

fn scontrol_record(
    rows: &mut Vec<TaskStatus>,
    line: usize,
    fields: &[(String, String)],
) -> Result<()> {
    const WHAT: &str = "scontrol show job";
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let missing =
        |expected: &'static str| parse_err(WHAT, line, get("JobId").map_or("", |v| v), expected);
    let job_id: u64 = get("JobId")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| missing("a numeric `JobId=`"))?;
    let state_text = get("JobState")
        .ok_or_else(|| missing("a `JobState=` field (multi-line layout, not `-o`)"))?;
    let state = known_state(WHAT, line, state_text)?;
    let (array_job_id, tasks) = match get("ArrayJobId") {
        Some(a) => (
            a.parse().map_err(|_| missing("a numeric `ArrayJobId=`"))?,
            task_ids(get("ArrayTaskId").unwrap_or(""))
                .ok_or_else(|| missing("`ArrayTaskId=` an index or range"))?,
        ),
        None => (job_id, None),
    };
    let exit = match get("ExitCode") {
        Some(e) => Some(parse_exit(e).ok_or_else(|| missing("`ExitCode=code:signal`"))?),
        None => None,
    };
    push_rows(
        rows,
        job_id,
        array_job_id,
        tasks,
        state,
        state_text,
        get("Reason").and_then(reason),
        exit,
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn push_rows(
    rows: &mut Vec<TaskStatus>,
    job_id: u64,
    array_job_id: u64,
    tasks: Option<Vec<u32>>,
    state: TaskState,
    slurm_state: &str,
    reason: Option<String>,
    exit: Option<SlurmExit>,
) {
    let row = |array_task_id| TaskStatus {
        job_id,
        array_job_id,
        array_task_id,
        state,
        slurm_state: slurm_state
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned(),
        reason: reason.clone(),
        exit,
    };
    match tasks {
        None => rows.push(row(None)),
        Some(ids) => rows.extend(ids.into_iter().map(|t| row(Some(t)))),
    }
}

fn known_state(what: &'static str, line: usize, state: &str) -> Result<TaskState> {
    TaskState::from_slurm(state).ok_or_else(|| SlurmError::UnknownState {
        what,
        line,
        state: state.trim().to_owned(),
    })
}

fn reason(r: &str) -> Option<String> {
    let r = r.trim();
    (!r.is_empty() && r != "None" && r != "(null)").then(|| r.to_owned())
}

/// `code:signal`.
fn parse_exit(s: &str) -> Option<SlurmExit> {
    let (code, signal) = s.trim().split_once(':')?;
    Some(SlurmExit {
        code: code.parse().ok()?,
        signal: signal.parse().ok()?,
    })
}

/// An array task field: `N/A` or empty → `Some(None)`-like plain job (`None` inside), an index,
/// or a range list `[1,3,5-7%2]`. The outer `None` means malformed.
#[allow(clippy::option_option)]
fn task_ids(s: &str) -> Option<Option<Vec<u32>>> {
    let s = s.trim();
    if s.is_empty() || s == "N/A" {
        return Some(None);
    }
    let s = s
        .strip_prefix('[')
        .map_or(Some(s), |s| s.strip_suffix(']'))?;
    // `%P` is the throttle, not an index.
    let s = s.split_once('%').map_or(s, |(ranges, _)| ranges);
    let mut ids = Vec::new();
    for part in s.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = part.parse::<u32>().ok()?;
                (a, a)
            }
        };
        // `a-b:step` is not printed by squeue/scontrol for pending arrays; a reversed range is junk.
        if b < a || ids.len() as u64 + u64::from(b - a) + 1 > MAX_RANGE {
            return None;
        }
        ids.extend(a..=b);
    }
    Some(Some(ids))
}

fn parse_err(what: &'static str, line: usize, text: &str, expected: &'static str) -> SlurmError {
    SlurmError::Parse {
        what,
        line,
        text: text.to_owned(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(rows: &[TaskStatus], array: u64, task: Option<u32>) -> &TaskStatus {
        let found: Vec<_> = rows
            .iter()
            .filter(|r| r.array_job_id == array && r.array_task_id == task)
            .collect();
        assert_eq!(found.len(), 1, "{array} {task:?} in {rows:#?}");
        found[0]
    }

    #[test]
    fn sbatch_parsable_with_and_without_cluster() {
        assert_eq!(
            parse_sbatch_parsable("10\n").unwrap(),
            Submitted {
                job_id: 10,
                cluster: None
            }
        );
        assert_eq!(
            parse_sbatch_parsable("sbatch: warning: x\n4242;gpu-cluster\n").unwrap(),
            Submitted {
                job_id: 4242,
                cluster: Some("gpu-cluster".into())
            }
        );
        for bad in ["", "Submitted batch job 5", "12;", "x;y"] {
            assert!(parse_sbatch_parsable(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn squeue_real_mixed_states() {
        let rows = parse_squeue(include_str!("fixtures/squeue_mixed.txt")).unwrap();
        assert_eq!(rows.len(), 8);
        let t0 = find(&rows, 10, Some(0));
        assert_eq!((t0.job_id, t0.state), (13, TaskState::Completed));
        assert_eq!(find(&rows, 10, Some(1)).state, TaskState::Failed);
        assert_eq!(
            find(&rows, 10, Some(3)).reason.as_deref(),
            Some("NonZeroExitCode")
        );
        assert_eq!(find(&rows, 10, Some(2)).state, TaskState::Running);
        let t5 = find(&rows, 10, Some(5));
        assert_eq!(t5.state, TaskState::Pending);
        assert_eq!(t5.reason.as_deref(), Some("JobArrayTaskLimit"));
        let dep = find(&rows, 12, None);
        assert_eq!((dep.job_id, dep.state), (12, TaskState::Pending));
        assert_eq!(dep.reason.as_deref(), Some("Dependency"));
        assert_eq!(find(&rows, 11, None).reason.as_deref(), Some("Resources"));
        assert_eq!(t0.reason, None);
    }

    #[test]
    fn squeue_real_finished_states_include_timeout_and_cancelled() {
        let rows = parse_squeue(include_str!("fixtures/squeue_finished.txt")).unwrap();
        assert_eq!(find(&rows, 11, None).state, TaskState::Timeout);
        assert_eq!(find(&rows, 10, Some(2)).state, TaskState::Cancelled);
        // Cancelled while still pending: keeps the array's own job id.
        let t5 = find(&rows, 10, Some(5));
        assert_eq!((t5.job_id, t5.state), (10, TaskState::Cancelled));
        assert_eq!(find(&rows, 12, None).state, TaskState::Completed);
        assert!(
            rows.iter()
                .filter(|r| r.array_job_id == 10)
                .all(|r| r.array_task_id.is_some())
        );
    }

    #[test]
    fn squeue_unsplit_range_expands_to_one_row_per_index() {
        let rows = parse_squeue(include_str!("fixtures/squeue_pending_range.txt")).unwrap();
        let ids: Vec<_> = rows.iter().map(|r| r.array_task_id.unwrap()).collect();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        assert!(
            rows.iter()
                .all(|r| r.job_id == 18 && r.state == TaskState::Pending)
        );
    }

    #[test]
    fn squeue_rejects_other_formats_and_unknown_states() {
        let default_layout = "  JOBID PARTITION NAME USER ST TIME NODES NODELIST(REASON)\n";
        assert!(matches!(
            parse_squeue(default_layout),
            Err(SlurmError::Parse { line: 1, .. })
        ));
        let err = parse_squeue("5|5|N/A|WEIRD|None\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown job state `WEIRD`"),
            "{err}"
        );
        assert!(
            parse_squeue("5|5|7-3|PENDING|None\n").is_err(),
            "reversed range"
        );
        assert!(
            parse_squeue("5|5|0-4294967295|PENDING|None\n").is_err(),
            "huge range"
        );
    }

    #[test]
    fn scontrol_real_array_records() {
        let rows = parse_scontrol_show_job(include_str!("fixtures/scontrol_array.txt")).unwrap();
        assert_eq!(rows.len(), 6);
        let t1 = find(&rows, 10, Some(1));
        assert_eq!((t1.job_id, t1.state), (14, TaskState::Failed));
        assert_eq!(t1.exit, Some(SlurmExit { code: 1, signal: 0 }));
        assert_eq!(
            find(&rows, 10, Some(3)).exit,
            Some(SlurmExit { code: 3, signal: 0 })
        );
        let t2 = find(&rows, 10, Some(2));
        assert_eq!(t2.state, TaskState::Cancelled);
        assert_eq!(
            t2.exit,
            Some(SlurmExit {
                code: 0,
                signal: 15
            })
        );
        assert_eq!(find(&rows, 10, Some(4)).state, TaskState::Running);
        assert_eq!(find(&rows, 10, Some(0)).state, TaskState::Completed);
    }

    #[test]
    fn scontrol_real_timeout_dependency_and_range() {
        let t = parse_scontrol_show_job(include_str!("fixtures/scontrol_timeout.txt")).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].job_id, t[0].array_task_id, t[0].state),
            (11, None, TaskState::Timeout)
        );
        assert_eq!(t[0].reason.as_deref(), Some("TimeLimit"));
        let d = parse_scontrol_show_job(include_str!("fixtures/scontrol_dependency.txt")).unwrap();
        assert_eq!((d[0].job_id, d[0].state), (12, TaskState::Pending));
        assert_eq!(d[0].reason.as_deref(), Some("Dependency"));
        let r =
            parse_scontrol_show_job(include_str!("fixtures/scontrol_pending_range.txt")).unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(r[9].array_task_id, Some(9));
    }

    #[test]
    fn scontrol_job_name_cannot_fake_a_state() {
        let text = "JobId=7 JobName=x JobState=COMPLETED ExitCode=0:0\n   JobState=FAILED Reason=NonZeroExitCode\n   ExitCode=2:0\n";
        let rows = parse_scontrol_show_job(text).unwrap();
        assert_eq!(rows[0].state, TaskState::Failed);
        assert_eq!(rows[0].exit, Some(SlurmExit { code: 2, signal: 0 }));
    }

    #[test]
    fn scontrol_errors_name_what_is_missing() {
        let err = parse_scontrol_show_job("JobId=7 JobName=a b UserId=root(0) JobState=RUNNING\n")
            .unwrap_err();
        assert!(err.to_string().contains("JobState"), "{err}");
        assert!(
            parse_scontrol_show_job("slurm_load_jobs error: Invalid job id specified\n").is_err()
        );
        assert!(parse_scontrol_show_job("").unwrap().is_empty());
    }

    #[test]
    fn sacct_documented_layout() {
        // sacct -n -P -X -o JobID,State,ExitCode (hand-written: the local SLURM has no accounting).
        let text = "20_0|COMPLETED|0:0\n20_1|FAILED|1:0\n20_1.batch|FAILED|1:0\n20_2|CANCELLED by 0|0:15\n20_[3-4%2]|PENDING|0:0\n21|TIMEOUT|0:15\n22|OUT_OF_MEMORY|0:125\n";
        let rows = parse_sacct(text).unwrap();
        assert_eq!(rows.len(), 7);
        assert_eq!(find(&rows, 20, Some(1)).state, TaskState::Failed);
        let c = find(&rows, 20, Some(2));
        assert_eq!(
            (c.state, c.slurm_state.as_str()),
            (TaskState::Cancelled, "CANCELLED")
        );
        assert_eq!(find(&rows, 20, Some(4)).state, TaskState::Pending);
        assert_eq!(find(&rows, 21, None).state, TaskState::Timeout);
        assert_eq!(find(&rows, 22, None).state, TaskState::Failed);
        assert!(parse_sacct("Slurm accounting storage is disabled\n").is_err());
    }

    #[test]
    fn every_documented_state_maps_and_finished_is_right() {
        for (s, want) in [
            ("REQUEUED", TaskState::Pending),
            ("COMPLETING", TaskState::Running),
            ("NODE_FAIL", TaskState::Failed),
            ("DEADLINE", TaskState::Timeout),
            ("PREEMPTED", TaskState::Cancelled),
            ("CANCELLED+", TaskState::Cancelled),
        ] {
            assert_eq!(TaskState::from_slurm(s), Some(want), "{s}");
        }
        assert_eq!(TaskState::from_slurm("running"), None);
        assert!(!TaskState::Running.is_finished() && TaskState::Timeout.is_finished());
    }
}
