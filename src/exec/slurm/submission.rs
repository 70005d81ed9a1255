//! A submission folder: N jobs cut into arrays below `MaxArraySize`, with their job lists,
//! sbatch scripts and a manifest.
//!
//! Layout of `results/<sweep>/submissions/<id>/`:
//! - `chunk-000.jobs`: job-file paths, one per line; line i+1 is array index i;
//! - `chunk-000.sbatch`: the array script ([`super::render_array_script`]);
//! - `ingest.sbatch`: the `afterany` ingest job, written once the arrays have SLURM ids;
//! - `logs/`: `%A_%a.out`/`.err` of every task;
//! - `manifest.json`: [`Manifest`], (chunk, index) → job id and job file, and the SLURM ids.
//!
//! The manifest is the only place that maps SLURM's numbers back to our jobs, so `status`
//! reads it with the parsers of [`super::state`]. It is written atomically (temp + rename).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::quote::invalid;
use super::script::{
    IngestCommand, IngestOptions, SbatchOptions, WorkerCommand, render_array_script,
    render_ingest_script,
};
use super::{Result, SlurmError};

/// Manifest layout version; bump on incompatible changes.
pub const MANIFEST_VERSION: u32 = 1;

/// One array: jobs `first..first + len` of the submission, as indices `0..len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrayChunk {
    pub chunk: usize,
    pub first: usize,
    pub len: usize,
    /// The `%P` throttle, at most `len`.
    pub parallel: u32,
}

impl ArrayChunk {
    /// The `--array` value, `0-K%P`.
    pub fn array_spec(&self) -> String {
        format!("0-{}%{}", self.len - 1, self.parallel)
    }
}

/// Cuts `n_jobs` jobs into arrays of at most `max_array_size` tasks (indices stay below
/// `MaxArraySize`), each throttled to `parallel` running tasks.
pub fn chunk_jobs(n_jobs: usize, max_array_size: u32, parallel: u32) -> Result<Vec<ArrayChunk>> {
    if max_array_size == 0 {
        return Err(SlurmError::ArraysDisabled);
    }
    if parallel == 0 {
        return Err(invalid(
            "parallel",
            "0",
            "expected at least 1 task at a time",
        ));
    }
    let size = max_array_size as usize;
    Ok((0..n_jobs.div_ceil(size))
        .map(|chunk| {
            let first = chunk * size;
            let len = size.min(n_jobs - first);
            ArrayChunk {
                chunk,
                first,
                len,
                parallel: parallel.min(u32::try_from(len).unwrap_or(u32::MAX)),
            }
        })
        .collect())
}

/// A job to submit: its id (the planner's hash), its job file and its phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitJob {
    pub job_id: String,
    /// Absolute path, UTF-8, without a newline (it is one line of the job list).
    pub job_file: PathBuf,
    /// Jobs of phase p may need jobs of earlier phases (0 = pre-training, 1 = fine-tuning):
    /// each phase gets its own arrays, so that later phases can wait on earlier ones.
    #[serde(default)]
    pub phase: u32,
}

/// Chunks per phase: jobs must come sorted by phase; each phase's jobs are cut into arrays of
/// their own ([`chunk_jobs`]), numbered on from the previous phase's. Returns (phase, chunk).
pub fn chunk_phases(
    jobs: &[SubmitJob],
    max_array_size: u32,
    parallel: u32,
) -> Result<Vec<(u32, ArrayChunk)>> {
    if let Some(w) = jobs.windows(2).find(|w| w[1].phase < w[0].phase) {
        return Err(invalid(
            "phase",
            &format!("{} after {}", w[1].phase, w[0].phase),
            "expected jobs sorted by phase",
        ));
    }
    let mut out = Vec::new();
    let mut first = 0;
    while first < jobs.len() {
        let phase = jobs[first].phase;
        let len = jobs[first..]
            .iter()
            .take_while(|j| j.phase == phase)
            .count();
        for c in chunk_jobs(len, max_array_size, parallel)? {
            out.push((
                phase,
                ArrayChunk {
                    chunk: out.len(),
                    first: first + c.first,
                    ..c
                },
            ));
        }
        first += len;
    }
    Ok(out)
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub sweep: String,
    pub submission: String,
    pub chunks: Vec<ManifestChunk>,
    /// Set by [`write_ingest`].
    pub ingest: Option<ManifestIngest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestChunk {
    pub chunk: usize,
    /// The phase of its jobs ([`SubmitJob::phase`]).
    #[serde(default)]
    pub phase: u32,
    /// SLURM ids this array waited on (`--dependency=afterok:…`), once submitted.
    #[serde(default)]
    pub after: Vec<u64>,
    /// `--array` value.
    pub array: String,
    /// File names inside the submission folder.
    pub script: String,
    pub job_list: String,
    /// The array's SLURM job id, once submitted ([`Manifest::set_submitted`]).
    pub slurm_job_id: Option<u64>,
    pub tasks: Vec<ManifestTask>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestTask {
    pub index: u32,
    pub job_id: String,
    pub job_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestIngest {
    pub script: String,
    pub after: Vec<u64>,
    pub slurm_job_id: Option<u64>,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = fs::read_to_string(&path).map_err(|source| SlurmError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| SlurmError::Manifest { path, source })
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("the manifest serializes");
        write_atomic(&dir.join("manifest.json"), text.as_bytes())
    }

    /// Records the SLURM id `sbatch` gave chunk `chunk`.
    pub fn set_submitted(&mut self, chunk: usize, slurm_job_id: u64) -> Result<()> {
        let n = self.chunks.len();
        let c = self
            .chunks
            .get_mut(chunk)
            .ok_or_else(|| SlurmError::InvalidValue {
                field: "chunk",
                value: chunk.to_string(),
                reason: if n == 1 {
                    "expected 0 (one chunk)"
                } else {
                    "expected a chunk of this manifest"
                },
            })?;
        c.slurm_job_id = Some(slurm_job_id);
        Ok(())
    }

    /// The job behind SLURM array `array_job_id`, index `index`.
    pub fn task(&self, array_job_id: u64, index: u32) -> Option<&ManifestTask> {
        let chunk = self
            .chunks
            .iter()
            .find(|c| c.slurm_job_id == Some(array_job_id))?;
        chunk.tasks.get(index as usize).filter(|t| t.index == index)
    }

    /// The SLURM ids of all submitted chunks.
    pub fn submitted_ids(&self) -> Vec<u64> {
        self.chunks.iter().filter_map(|c| c.slurm_job_id).collect()
    }
}

/// What [`write_submission`] needs.
#[derive(Debug, Clone)]
pub struct SubmitRequest<'a> {
    /// The results root, e.g. `results`; the folder becomes `<root>/<sweep>/submissions/<id>`.
    pub results_root: &'a Path,
    pub sweep: &'a str,
    /// A new name per submission (e.g. a timestamp); an existing folder is refused.
    pub submission: &'a str,
    pub jobs: &'a [SubmitJob],
    pub max_array_size: u32,
    pub sbatch: &'a SbatchOptions,
    pub worker: &'a WorkerCommand,
}

/// A written submission folder.
#[derive(Debug, Clone)]
pub struct Submission {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The array scripts, in chunk order.
    pub scripts: Vec<PathBuf>,
}

/// Writes the submission folder: job lists, array scripts, `logs/` and `manifest.json`.
pub fn write_submission(req: &SubmitRequest<'_>) -> Result<Submission> {
    if req.jobs.is_empty() {
        return Err(SlurmError::NoJobs);
    }
    path_component("sweep", req.sweep)?;
    path_component("submission", req.submission)?;
    for job in req.jobs {
        check_job_file(&job.job_file)?;
    }
    let chunks = chunk_phases(req.jobs, req.max_array_size, req.sbatch.parallel)?;
    let root = absolute_dir(req.results_root)?;
    let dir = root
        .join(req.sweep)
        .join("submissions")
        .join(req.submission);
    if dir.exists() {
        return Err(invalid(
            "submission",
            &dir.to_string_lossy(),
            "this submission folder already exists; use a new submission id",
        ));
    }
    let logs = dir.join("logs");
    fs::create_dir_all(&logs).map_err(|source| SlurmError::Io {
        path: logs.clone(),
        source,
    })?;

    let mut manifest = Manifest {
        version: MANIFEST_VERSION,
        sweep: req.sweep.to_owned(),
        submission: req.submission.to_owned(),
        chunks: Vec::with_capacity(chunks.len()),
        ingest: None,
    };
    let mut scripts = Vec::with_capacity(chunks.len());
    for (phase, c) in &chunks {
        let jobs = &req.jobs[c.first..c.first + c.len];
        let list_name = format!("chunk-{:03}.jobs", c.chunk);
        let script_name = format!("chunk-{:03}.sbatch", c.chunk);
        let list: String = jobs
            .iter()
            .map(|j| format!("{}\n", j.job_file.display()))
            .collect();
        write_atomic(&dir.join(&list_name), list.as_bytes())?;
        let opts = SbatchOptions {
            parallel: c.parallel,
            ..req.sbatch.clone()
        };
        let script = render_array_script(&opts, req.worker, c.len, &dir.join(&list_name), &logs)?;
        let script_path = dir.join(&script_name);
        write_atomic(&script_path, script.as_bytes())?;
        scripts.push(script_path);
        manifest.chunks.push(ManifestChunk {
            chunk: c.chunk,
            phase: *phase,
            after: Vec::new(),
            array: c.array_spec(),
            script: script_name,
            job_list: list_name,
            slurm_job_id: None,
            tasks: jobs
                .iter()
                .enumerate()
                .map(|(i, j)| ManifestTask {
                    index: i as u32,
                    job_id: j.job_id.clone(),
                    job_file: j.job_file.clone(),
                })
                .collect(),
        });
    }
    manifest.write(&dir)?;
    Ok(Submission {
        dir,
        manifest,
        scripts,
    })
}

/// Writes `ingest.sbatch` for a submission whose chunks all have SLURM ids, records it in the
/// manifest and returns the script's path. The ingest job reads `<submission>/../..`, the
/// sweep's folder, into the database `db` and writes the report under the results root
/// `<submission>/../../..`.
pub fn write_ingest(
    sub: &mut Submission,
    opts: &IngestOptions,
    program: &Path,
    db: &Path,
) -> Result<PathBuf> {
    let after = sub.manifest.submitted_ids();
    if after.len() != sub.manifest.chunks.len() {
        return Err(invalid(
            "manifest",
            &sub.dir.to_string_lossy(),
            "every chunk must be submitted (have a SLURM id) before the ingest job",
        ));
    }
    let sweep_dir = sub
        .dir
        .parent()
        .and_then(Path::parent)
        .expect("a submission folder is <sweep>/submissions/<id>");
    let results = sweep_dir
        .parent()
        .expect("a sweep folder is <results>/<sweep>");
    let script = render_ingest_script(
        opts,
        &IngestCommand {
            program,
            results,
            db,
            sweep: &sub.manifest.sweep,
        },
        &after,
        &sub.dir.join("logs"),
    )?;
    let path = sub.dir.join("ingest.sbatch");
    write_atomic(&path, script.as_bytes())?;
    sub.manifest.ingest = Some(ManifestIngest {
        script: "ingest.sbatch".into(),
        after,
        slurm_job_id: None,
    });
    sub.manifest.write(&sub.dir)?;
    Ok(path)
}

fn path_component(field: &'static str, s: &str) -> Result<()> {
    if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\0', '\n', '\r']) {
        return Err(invalid(
            field,
            s,
            "expected a folder name: not empty, `.` or `..`, without `/` or newlines",
        ));
    }
    Ok(())
}

fn check_job_file(p: &Path) -> Result<()> {
    let Some(s) = p.to_str() else {
        return Err(invalid(
            "job_file",
            &p.to_string_lossy(),
            "expected a UTF-8 path",
        ));
    };
    if !p.is_absolute() {
        return Err(invalid("job_file", s, "expected an absolute path"));
    }
    if s.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            "job_file",
            s,
            "a job file path is one line of the job list; it cannot hold a newline",
        ));
    }
    Ok(())
}

fn absolute_dir(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    let cwd = std::env::current_dir().map_err(|source| SlurmError::Io {
        path: p.to_owned(),
        source,
    })?;
    Ok(cwd.join(p))
}

/// Writes `path` durably through [`crate::durable`].
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::durable::write_atomic(path, bytes).map_err(|source| SlurmError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn jobs(dir: &Path, n: usize) -> Vec<SubmitJob> {
        (0..n)
            .map(|i| SubmitJob {
                job_id: format!("j{i:04}"),
                job_file: dir.join(format!("jobs/j{i:04}/job.json")),
                phase: 0,
            })
            .collect()
    }

    #[test]
    fn chunks_cover_every_job_once_below_max_array_size() {
        for (n, max, par) in [
            (1, 1001, 4),
            (1001, 1001, 8),
            (1002, 1001, 8),
            (7, 3, 2),
            (6, 3, 5),
            (0, 5, 1),
        ] {
            let chunks = chunk_jobs(n, max, par).unwrap();
            let mut next = 0;
            for (i, c) in chunks.iter().enumerate() {
                assert_eq!((c.chunk, c.first), (i, next));
                assert!(c.len >= 1 && c.len <= max as usize, "{c:?}");
                assert!(c.parallel >= 1 && c.parallel <= par && c.parallel as usize <= c.len);
                next += c.len;
            }
            assert_eq!(next, n, "{n} {max}");
        }
        let c = chunk_jobs(1002, 1001, 8).unwrap();
        assert_eq!(
            c.iter().map(ArrayChunk::array_spec).collect::<Vec<_>>(),
            ["0-1000%8", "0-0%1"]
        );
        assert!(matches!(
            chunk_jobs(3, 0, 1),
            Err(SlurmError::ArraysDisabled)
        ));
        assert!(chunk_jobs(3, 5, 0).is_err());
    }

    #[test]
    fn phases_are_chunked_apart_below_a_small_max_array_size() {
        let tmp = tempfile::tempdir().unwrap();
        let mut js = jobs(tmp.path(), 8);
        // 3 pre-training jobs, then 5 fine-tuning jobs; MaxArraySize 2 (indices 0 and 1).
        for j in &mut js[3..] {
            j.phase = 1;
        }
        let chunks = chunk_phases(&js, 2, 4).unwrap();
        let got: Vec<(u32, usize, usize, usize, String)> = chunks
            .iter()
            .map(|(p, c)| (*p, c.chunk, c.first, c.len, c.array_spec()))
            .collect();
        assert_eq!(
            got,
            [
                (0, 0, 0, 2, "0-1%2".into()),
                (0, 1, 2, 1, "0-0%1".into()),
                (1, 2, 3, 2, "0-1%2".into()),
                (1, 3, 5, 2, "0-1%2".into()),
                (1, 4, 7, 1, "0-0%1".into()),
            ]
        );
        // A chunk never mixes phases, so a later phase can wait on whole earlier arrays.
        for (p, c) in &chunks {
            assert!(js[c.first..c.first + c.len].iter().all(|j| j.phase == *p));
        }
        js.swap(0, 7);
        let err = chunk_phases(&js, 2, 4).unwrap_err().to_string();
        assert!(err.contains("`phase`") && err.contains("sorted"), "{err}");
        assert!(chunk_phases(&[], 2, 4).unwrap().is_empty());
    }

    #[test]
    fn submission_folder_has_lists_scripts_and_a_manifest_that_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let jobs = jobs(tmp.path(), 7);
        let opts = SbatchOptions {
            parallel: 2,
            time_limit: Duration::from_secs(600),
            ..Default::default()
        };
        let worker = WorkerCommand::ranksweep("/usr/bin/ranksweep");
        let req = SubmitRequest {
            results_root: tmp.path(),
            sweep: "my sweep",
            submission: "s1",
            jobs: &jobs,
            max_array_size: 3,
            sbatch: &opts,
            worker: &worker,
        };
        let mut sub = write_submission(&req).unwrap();
        assert_eq!(sub.dir, tmp.path().join("my sweep/submissions/s1"));
        assert!(sub.dir.join("logs").is_dir());
        assert_eq!(sub.scripts.len(), 3);
        let list2 = fs::read_to_string(sub.dir.join("chunk-002.jobs")).unwrap();
        assert_eq!(list2, format!("{}\n", jobs[6].job_file.display()));
        let s1 = fs::read_to_string(&sub.scripts[1]).unwrap();
        assert!(s1.contains("#SBATCH --array=0-2%2\n"), "{s1}");
        let s2 = fs::read_to_string(&sub.scripts[2]).unwrap();
        assert!(s2.contains("#SBATCH --array=0-0%1\n"), "{s2}");

        let m = Manifest::read(&sub.dir).unwrap();
        assert_eq!(m, sub.manifest);
        assert_eq!(m.chunks[1].tasks[2].job_id, "j0005");

        sub.manifest.set_submitted(0, 40).unwrap();
        sub.manifest.set_submitted(1, 41).unwrap();
        assert!(
            write_ingest(
                &mut sub,
                &IngestOptions::default(),
                Path::new("/usr/bin/ranksweep"),
                Path::new("/db/r.db"),
            )
            .is_err()
        );
        sub.manifest.set_submitted(2, 45).unwrap();
        assert!(sub.manifest.set_submitted(3, 1).is_err());
        let ingest = write_ingest(
            &mut sub,
            &IngestOptions::default(),
            Path::new("/usr/bin/ranksweep"),
            Path::new("/db/r.db"),
        )
        .unwrap();
        let text = fs::read_to_string(ingest).unwrap();
        assert!(text.contains("--dependency=afterany:40:41:45"));
        assert!(text.contains(&format!(
            "ingest '{}' --sweep 'my sweep' --results '{}' --db '/db/r.db'",
            tmp.path().join("my sweep").display(),
            tmp.path().display()
        )));
        let m = Manifest::read(&sub.dir).unwrap();
        assert_eq!(m.task(41, 1).unwrap().job_id, "j0004");
        assert_eq!(m.task(45, 0).unwrap().job_id, "j0006");
        assert!(m.task(45, 1).is_none() && m.task(99, 0).is_none());
        assert_eq!(m.ingest.unwrap().after, [40, 41, 45]);

        // The same submission id twice would mix two submissions' logs.
        assert!(
            write_submission(&req)
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
    }

    #[test]
    fn bad_inputs_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = SbatchOptions::default();
        let worker = WorkerCommand::ranksweep("/usr/bin/ranksweep");
        let good = jobs(tmp.path(), 2);
        let newline = [SubmitJob {
            job_id: "a".into(),
            job_file: tmp.path().join("a\nb"),
            phase: 0,
        }];
        let relative = [SubmitJob {
            job_id: "a".into(),
            job_file: "jobs/a.json".into(),
            phase: 0,
        }];
        for (sweep, submission, jobs, field) in [
            ("s", "x", &newline[..], "job_file"),
            ("s", "x", &relative[..], "job_file"),
            ("a/b", "x", &good[..], "sweep"),
            ("s", "..", &good[..], "submission"),
        ] {
            let req = SubmitRequest {
                results_root: tmp.path(),
                sweep,
                submission,
                jobs,
                max_array_size: 10,
                sbatch: &opts,
                worker: &worker,
            };
            let err = write_submission(&req).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
        let req = SubmitRequest {
            results_root: tmp.path(),
            sweep: "s",
            submission: "x",
            jobs: &[],
            max_array_size: 10,
            sbatch: &opts,
            worker: &worker,
        };
        assert!(matches!(write_submission(&req), Err(SlurmError::NoJobs)));
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
