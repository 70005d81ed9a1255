//! What `nvidia-smi` says about the GPUs of this host: memory per GPU, memory per process, and a
//! GPU's name, driver and CUDA version. Works with any build (CPU or CUDA): the orchestrator of a
//! CPU-only build still schedules GPU workers, and needs no CUDA library for it.
//!
//! Every query goes through the [`GpuQuery`] trait, so that the scheduler's memory admission is
//! tested with a fake `nvidia-smi` script on `PATH` (or another implementation) and the real one
//! runs on GPU hosts. Each call has a time limit: a wedged driver must not hang a sweep.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one `nvidia-smi` call may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuQueryError {
    #[error("cannot run `nvidia-smi`: {0}")]
    Run(String),
    #[error("`nvidia-smi {args}` failed: {message}")]
    Failed { args: String, message: String },
    #[error("`nvidia-smi {args}` printed an unexpected line: `{line}`")]
    Parse { args: String, line: String },
}

/// Memory of one GPU in MiB, by its `nvidia-smi` index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuMemory {
    pub index: u32,
    pub total_mb: f64,
    pub used_mb: f64,
    pub free_mb: f64,
}

/// GPU memory one process holds, in MiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessMemory {
    pub pid: u32,
    pub used_mb: f64,
}

/// Who a GPU is, for the record of what ran a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuIdentity {
    pub name: String,
    pub driver: String,
    /// The highest CUDA version the driver supports (`nvidia-smi`'s header), e.g. `13.0`.
    pub cuda: Option<String>,
}

/// The GPU questions the scheduler and the worker ask.
pub trait GpuQuery: Send + Sync + std::fmt::Debug {
    /// Memory of every GPU of the host.
    fn memory(&self) -> Result<Vec<GpuMemory>, GpuQueryError>;
    /// GPU memory of every process that holds some.
    fn processes(&self) -> Result<Vec<ProcessMemory>, GpuQueryError>;
}

/// The real `nvidia-smi`, found on `PATH` (or at a given path).
#[derive(Debug, Clone)]
pub struct NvidiaSmi {
    pub program: std::path::PathBuf,
}

impl Default for NvidiaSmi {
    fn default() -> Self {
        NvidiaSmi {
            program: "nvidia-smi".into(),
        }
    }
}

impl NvidiaSmi {
    fn run(&self, args: &[&str]) -> Result<String, GpuQueryError> {
        run_program(&self.program, args)
    }
}

impl GpuQuery for NvidiaSmi {
    fn memory(&self) -> Result<Vec<GpuMemory>, GpuQueryError> {
        let args = [
            "--query-gpu=index,memory.total,memory.used,memory.free",
            "--format=csv,noheader,nounits",
        ];
        parse_memory(&args.join(" "), &self.run(&args)?)
    }

    fn processes(&self) -> Result<Vec<ProcessMemory>, GpuQueryError> {
        let args = [
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ];
        parse_processes(&args.join(" "), &self.run(&args)?)
    }
}

/// Name, driver and CUDA version of GPU `id` (an index, UUID or PCI id as `nvidia-smi -i`
/// takes it); `None` when `nvidia-smi` cannot tell.
pub fn identity(id: &str) -> Option<GpuIdentity> {
    let args = [
        "-i",
        id,
        "--query-gpu=name,driver_version",
        "--format=csv,noheader",
    ];
    let out = nvidia_smi(&args).ok()?;
    let line = out.lines().find(|l| !l.trim().is_empty())?;
    let (name, driver) = line.rsplit_once(',')?;
    // The header of the plain output is the only place that names the CUDA version.
    let cuda = nvidia_smi(&[]).ok().and_then(|h| cuda_version(&h));
    Some(GpuIdentity {
        name: name.trim().to_string(),
        driver: driver.trim().to_string(),
        cuda,
    })
}

/// `CUDA Version: 13.0` in `nvidia-smi`'s header.
pub fn cuda_version(header: &str) -> Option<String> {
    let rest = header.split("CUDA Version:").nth(1)?;
    let v: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

/// The `nvidia-smi` id of the GPU a process opens as `cuda:i`: entry `i` of
/// `CUDA_VISIBLE_DEVICES` when that is set (the pinning of the local scheduler and SLURM),
/// else `i` itself.
pub fn physical_id(cuda_visible_devices: Option<&str>, i: usize) -> String {
    match cuda_visible_devices {
        Some(list) if !list.trim().is_empty() => list
            .split(',')
            .nth(i)
            .map_or_else(|| i.to_string(), |s| s.trim().to_string()),
        _ => i.to_string(),
    }
}

fn number(args: &str, line: &str, field: &str) -> Result<f64, GpuQueryError> {
    field
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| GpuQueryError::Parse {
            args: args.to_string(),
            line: line.to_string(),
        })
}

/// `index, total, used, free` lines (MiB, no units).
pub fn parse_memory(args: &str, out: &str) -> Result<Vec<GpuMemory>, GpuQueryError> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let bad = || GpuQueryError::Parse {
                args: args.to_string(),
                line: line.to_string(),
            };
            if f.len() != 4 {
                return Err(bad());
            }
            Ok(GpuMemory {
                index: f[0].trim().parse().map_err(|_| bad())?,
                total_mb: number(args, line, f[1])?,
                used_mb: number(args, line, f[2])?,
                free_mb: number(args, line, f[3])?,
            })
        })
        .collect()
}

/// `pid, used_memory` lines (MiB, no units); `[N/A]` memory (no permission) counts as 0.
pub fn parse_processes(args: &str, out: &str) -> Result<Vec<ProcessMemory>, GpuQueryError> {
    out.lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("No running"))
        .map(|line| {
            let bad = || GpuQueryError::Parse {
                args: args.to_string(),
                line: line.to_string(),
            };
            let (pid, mem) = line.split_once(',').ok_or_else(bad)?;
            let mem = mem.trim();
            Ok(ProcessMemory {
                pid: pid.trim().parse().map_err(|_| bad())?,
                used_mb: if mem.starts_with('[') {
                    0.0
                } else {
                    number(args, line, mem)?
                },
            })
        })
        .collect()
}

/// Runs `nvidia-smi ARGS` (from `PATH`) with a time limit and returns its stdout.
fn nvidia_smi(args: &[&str]) -> Result<String, GpuQueryError> {
    run_program(std::path::Path::new("nvidia-smi"), args)
}

fn run_program(program: &std::path::Path, args: &[&str]) -> Result<String, GpuQueryError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| GpuQueryError::Run(e.to_string()))?;
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if t0.elapsed() < TIMEOUT => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(GpuQueryError::Failed {
                    args: args.join(" "),
                    message: format!("no answer in {} s", TIMEOUT.as_secs()),
                });
            }
            Err(e) => return Err(GpuQueryError::Run(e.to_string())),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    if !status.success() {
        let message = if err.trim().is_empty() {
            out.trim().to_string()
        } else {
            err.trim().to_string()
        };
        return Err(GpuQueryError::Failed {
            args: args.join(" "),
            message: format!("{status}: {message}"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_and_processes() {
        let m = parse_memory("q", "0, 143771, 512, 143259\n1, 81559, 0, 81559\n").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].index, 1);
        assert_eq!(m[0].free_mb, 143259.0);
        let e = parse_memory("q", "0, 143771, 512\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unexpected line: `0, 143771, 512`"), "{e}");
        assert!(parse_memory("q", "0, x, 1, 2").is_err());
        let p = parse_processes("q", "4242, 1536\n77, [N/A]\n").unwrap();
        assert_eq!(p[0].pid, 4242);
        assert_eq!(p[0].used_mb, 1536.0);
        assert_eq!(p[1].used_mb, 0.0);
        assert!(parse_processes("q", "").unwrap().is_empty());
        assert!(parse_processes("q", "x, 3").is_err());
    }

    #[test]
    fn cuda_version_and_physical_ids() {
        let header =
            "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0     |";
        assert_eq!(cuda_version(header).as_deref(), Some("13.0"));
        assert_eq!(cuda_version("no header"), None);
        assert_eq!(physical_id(Some("3,5"), 0), "3");
        assert_eq!(physical_id(Some("GPU-ab12, 5"), 1), "5");
        assert_eq!(physical_id(None, 1), "1");
        assert_eq!(physical_id(Some(""), 0), "0");
    }
}
