//! `--device cpu|cuda:N` parsing, the choice of a worker's device where it runs, and the record
//! of what ran a job ([`RanOn`]). One `Device` per GPU: candle's `Device::new_cuda` makes a new
//! device id on every call, so callers create it once and clone it.
//!
//! The device is never part of a plan: a job file carries none. A worker takes, in order, its
//! `--device` flag, the [`DEVICE_ENV`] marker its launcher set (the local scheduler per slot,
//! `submit --gres gpu:N` per array task), a `device:` a hand-written job file gives, and else
//! what its environment offers: the GPU of `CUDA_VISIBLE_DEVICES` on a CUDA build, the CPU
//! otherwise. A GPU asked for by any of the first three is a *GPU job*: on a build without CUDA
//! or on a host with no visible GPU it is a usage error, never a silent CPU run.

use candle_core::Device;
use serde::{Deserialize, Serialize};

/// The marker a launcher sets for its workers: `cuda` (the first GPU the environment gives),
/// `cuda:N` or `cpu`.
pub const DEVICE_ENV: &str = "RANKSWEEP_DEVICE";

/// What to build for GPU jobs; named in every error about a missing CUDA build.
pub const CUDA_BUILD_HINT: &str =
    "build the GPU binary with `scripts/build-cuda.sh cudnn` (README, \"GPUs\") and run that one";

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected `cpu` or `cuda:N` (N a GPU index)")]
    Unknown(String),
    #[error(
        "device `{0}` needs a CUDA build of ranksweep, and this one has none: {CUDA_BUILD_HINT}"
    )]
    CudaNotBuilt(String),
    #[error("`{value}` in {DEVICE_ENV}: expected `cpu`, `cuda` or `cuda:N`")]
    BadMarker { value: String },
    #[error(
        "this is a GPU job (`{device}` from {from}), but this ranksweep was built without CUDA and never trains a GPU job on the CPU: {CUDA_BUILD_HINT}"
    )]
    GpuJobWithoutCuda { device: String, from: &'static str },
    #[error(
        "this is a GPU job (`{device}` from {from}), but no GPU is visible here (CUDA_VISIBLE_DEVICES={visible}); run it where its GPU is, with the CUDA build (`scripts/build-cuda.sh cudnn`)"
    )]
    NoVisibleGpu {
        device: String,
        from: &'static str,
        visible: String,
    },
    #[error("cannot open device `{name}`: {source}")]
    Open {
        name: String,
        #[source]
        source: candle_core::Error,
    },
}

/// A parsed device name, before any device is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("cpu") {
            return Ok(DeviceSpec::Cpu);
        }
        if let Some(idx) = t.strip_prefix("cuda:").or_else(|| t.strip_prefix("cuda")) {
            let idx = if idx.is_empty() {
                Ok(0)
            } else {
                idx.parse::<usize>()
            };
            return idx
                .map(DeviceSpec::Cuda)
                .map_err(|_| DeviceError::Unknown(s.to_string()));
        }
        Err(DeviceError::Unknown(s.to_string()))
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. `cuda:N` fails clearly when the binary was built without CUDA.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) => open_cuda(i, &self.to_string()),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(i: usize, name: &str) -> Result<Device, DeviceError> {
    Device::new_cuda(i).map_err(|source| DeviceError::Open {
        name: name.to_string(),
        source,
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_i: usize, name: &str) -> Result<Device, DeviceError> {
    Err(DeviceError::CudaNotBuilt(name.to_string()))
}

impl DeviceError {
    /// Whether the error is the caller's (exit 2): a device that cannot be asked for here.
    pub fn is_usage(&self) -> bool {
        !matches!(self, DeviceError::Open { .. })
    }
}

/// Where a worker's device choice came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSource {
    Flag,
    Marker,
    JobFile,
    Environment,
}

impl DeviceSource {
    fn name(self) -> &'static str {
        match self {
            DeviceSource::Flag => "--device",
            DeviceSource::Marker => DEVICE_ENV,
            DeviceSource::JobFile => "the job file's `device`",
            DeviceSource::Environment => "CUDA_VISIBLE_DEVICES",
        }
    }
}

/// The environment a worker reads its device from (a struct, so tests need no global state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceEnv {
    pub marker: Option<String>,
    pub cuda_visible_devices: Option<String>,
}

impl DeviceEnv {
    pub fn from_process() -> Self {
        DeviceEnv {
            marker: std::env::var(DEVICE_ENV)
                .ok()
                .filter(|s| !s.trim().is_empty()),
            cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        }
    }
}

/// Whether this binary can run GPU jobs.
pub const fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

/// GPUs this process can open (after `CUDA_VISIBLE_DEVICES`); always 0 without CUDA.
#[cfg(feature = "cuda")]
pub fn visible_gpus() -> usize {
    candle_core::cuda_backend::cudarc::driver::CudaContext::device_count()
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

/// GPUs this process can open (after `CUDA_VISIBLE_DEVICES`); always 0 without CUDA.
#[cfg(not(feature = "cuda"))]
pub fn visible_gpus() -> usize {
    0
}

/// Chooses the device a worker runs on (see the module docs for the order). `gpus` is how many
/// GPUs this process sees ([`visible_gpus`]; a parameter so tests can vary it).
pub fn resolve(
    flag: Option<DeviceSpec>,
    job_file: Option<DeviceSpec>,
    env: &DeviceEnv,
    cuda: bool,
    gpus: usize,
) -> Result<DeviceSpec, DeviceError> {
    let marker = match &env.marker {
        Some(m) => Some(
            m.parse::<DeviceSpec>()
                .map_err(|_| DeviceError::BadMarker { value: m.clone() })?,
        ),
        None => None,
    };
    let asked = flag
        .map(|d| (d, DeviceSource::Flag))
        .or(marker.map(|d| (d, DeviceSource::Marker)))
        .or(job_file.map(|d| (d, DeviceSource::JobFile)));
    match asked {
        Some((DeviceSpec::Cpu, _)) => Ok(DeviceSpec::Cpu),
        Some((d @ DeviceSpec::Cuda(i), from)) => {
            if !cuda {
                return Err(DeviceError::GpuJobWithoutCuda {
                    device: d.to_string(),
                    from: from.name(),
                });
            }
            if i >= gpus {
                return Err(DeviceError::NoVisibleGpu {
                    device: d.to_string(),
                    from: from.name(),
                    visible: env
                        .cuda_visible_devices
                        .clone()
                        .unwrap_or_else(|| "(unset)".into()),
                });
            }
            Ok(d)
        }
        // Nothing asked: a GPU the environment gives, on a build that can use it.
        None => {
            let hidden = env
                .cuda_visible_devices
                .as_deref()
                .is_some_and(|v| v.trim().is_empty() || v.trim() == "-1");
            Ok(if cuda && !hidden && gpus > 0 {
                DeviceSpec::Cuda(0)
            } else {
                DeviceSpec::Cpu
            })
        }
    }
}

/// What actually ran a job: the CPU and its threads, or the GPU with its driver, CUDA version
/// and cuDNN; and the precision. Written into `result.json`, the worker's `start` event and
/// every attempt row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RanOn {
    /// `cpu` or `cuda:N` (as the worker opened it).
    pub device: String,
    /// rayon threads (CPU jobs; GPU jobs use them for data and metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// The GPU's `nvidia-smi` id on its host (entry of `CUDA_VISIBLE_DEVICES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The driver's CUDA version, else the one the binary was built for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<String>,
    /// Built with the `cudnn` feature (GPU jobs only).
    #[serde(default)]
    pub cudnn: bool,
    /// `f32` or `bf16`.
    pub precision: String,
}

impl RanOn {
    /// The record for `spec`, asking `nvidia-smi` about a GPU.
    pub fn detect(spec: DeviceSpec, threads: usize, precision: &str, env: &DeviceEnv) -> RanOn {
        let base = RanOn {
            device: spec.to_string(),
            threads: Some(threads),
            gpu_id: None,
            gpu: None,
            driver: None,
            cuda: None,
            cudnn: false,
            precision: precision.to_string(),
        };
        let DeviceSpec::Cuda(i) = spec else {
            return base;
        };
        let id = super::gpu::physical_id(env.cuda_visible_devices.as_deref(), i);
        let who = super::gpu::identity(&id);
        RanOn {
            gpu: who.as_ref().map(|w| w.name.clone()),
            driver: who.as_ref().map(|w| w.driver.clone()),
            cuda: who.and_then(|w| w.cuda).or_else(build_cuda_version),
            gpu_id: Some(id),
            cudnn: cfg!(feature = "cudnn"),
            ..base
        }
    }

    pub fn is_gpu(&self) -> bool {
        self.device.starts_with("cuda")
    }
}

/// `CUDARC_CUDA_VERSION` of the build (`13000` → `13.0`), set by scripts/build-cuda.sh.
fn build_cuda_version() -> Option<String> {
    let v: u32 = option_env!("CUDARC_CUDA_VERSION")?.parse().ok()?;
    Some(format!("{}.{}", v / 1000, (v % 1000) / 10))
}

impl std::fmt::Display for RanOn {
    /// One line: `cpu (2 threads), f32` or
    /// `NVIDIA H200 (GPU 0), driver 580.65.06, CUDA 13.0, cuDNN on, bf16`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.is_gpu() {
            match self.threads {
                Some(t) => write!(f, "cpu ({t} thread{})", if t == 1 { "" } else { "s" })?,
                None => f.write_str("cpu")?,
            }
            return write!(f, ", {}", self.precision);
        }
        f.write_str(self.gpu.as_deref().unwrap_or("unknown GPU"))?;
        if let Some(id) = &self.gpu_id {
            write!(f, " (GPU {id})")?;
        }
        if let Some(d) = &self.driver {
            write!(f, ", driver {d}")?;
        }
        if let Some(c) = &self.cuda {
            write!(f, ", CUDA {c}")?;
        }
        let cudnn = if self.cudnn { "on" } else { "off" };
        write!(f, ", cuDNN {cudnn}, {}", self.precision)
    }
}

/// A short human name for logs and results (`cpu`, `cuda:0`).
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(err.contains("scripts/build-cuda.sh"), "{err}");
    }

    #[test]
    fn the_device_is_chosen_where_the_worker_runs() {
        let env = |marker: Option<&str>, cvd: Option<&str>| DeviceEnv {
            marker: marker.map(String::from),
            cuda_visible_devices: cvd.map(String::from),
        };
        let none = env(None, None);
        // Nothing asked: the CPU without CUDA, the environment's GPU with it.
        assert_eq!(
            resolve(None, None, &none, false, 0).unwrap(),
            DeviceSpec::Cpu
        );
        assert_eq!(
            resolve(None, None, &env(None, Some("2")), true, 1).unwrap(),
            DeviceSpec::Cuda(0)
        );
        assert_eq!(
            resolve(None, None, &env(None, Some("")), true, 0).unwrap(),
            DeviceSpec::Cpu
        );
        assert_eq!(
            resolve(None, None, &none, true, 0).unwrap(),
            DeviceSpec::Cpu
        );
        // The flag beats the marker, the marker beats the job file.
        let cpu_marker = env(Some("cpu"), None);
        assert_eq!(
            resolve(None, Some(DeviceSpec::Cuda(0)), &cpu_marker, false, 0).unwrap(),
            DeviceSpec::Cpu
        );
        let gpu_marker = env(Some("cuda"), Some("3"));
        assert_eq!(
            resolve(Some(DeviceSpec::Cpu), None, &gpu_marker, false, 0).unwrap(),
            DeviceSpec::Cpu
        );
        // A GPU job never runs on the CPU.
        let e = resolve(None, None, &gpu_marker, false, 0).unwrap_err();
        assert!(e.is_usage());
        let m = e.to_string();
        assert!(
            m.contains("GPU job (`cuda:0` from RANKSWEEP_DEVICE)")
                && m.contains("built without CUDA")
                && m.contains("scripts/build-cuda.sh cudnn"),
            "{m}"
        );
        let e = resolve(None, None, &gpu_marker, true, 0).unwrap_err();
        assert!(e.is_usage());
        assert!(
            e.to_string()
                .contains("no GPU is visible here (CUDA_VISIBLE_DEVICES=3)"),
            "{e}"
        );
        let e = resolve(Some(DeviceSpec::Cuda(1)), None, &none, true, 1).unwrap_err();
        assert!(e.to_string().contains("from --device"), "{e}");
        let e = resolve(None, Some(DeviceSpec::Cuda(0)), &none, false, 0).unwrap_err();
        assert!(e.to_string().contains("the job file's `device`"), "{e}");
        let e = resolve(None, None, &env(Some("gpu"), None), true, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`gpu` in RANKSWEEP_DEVICE: expected `cpu`, `cuda` or `cuda:N`"
        );
    }

    #[test]
    fn ran_on_reads_as_one_line_and_round_trips() {
        let cpu = RanOn::detect(DeviceSpec::Cpu, 2, "f32", &DeviceEnv::default());
        assert_eq!(cpu.to_string(), "cpu (2 threads), f32");
        let gpu = RanOn {
            device: "cuda:0".into(),
            threads: Some(4),
            gpu_id: Some("3".into()),
            gpu: Some("NVIDIA H200".into()),
            driver: Some("580.65.06".into()),
            cuda: Some("13.0".into()),
            cudnn: true,
            precision: "bf16".into(),
        };
        assert_eq!(
            gpu.to_string(),
            "NVIDIA H200 (GPU 3), driver 580.65.06, CUDA 13.0, cuDNN on, bf16"
        );
        let json = serde_json::to_string(&gpu).unwrap();
        assert_eq!(serde_json::from_str::<RanOn>(&json).unwrap(), gpu);
    }
}
