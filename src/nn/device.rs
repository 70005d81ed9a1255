//! `--device cpu|cuda:N` parsing. One `Device` per GPU: candle's `Device::new_cuda` makes a new
//! device id on every call, so callers create it once and clone it.

use candle_core::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected `cpu` or `cuda:N` (N a GPU index)")]
    Unknown(String),
    #[error("device `{0}` needs the `cuda` feature: rebuild with `cargo build --release --features cuda`")]
    CudaNotBuilt(String),
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
            let idx = if idx.is_empty() { Ok(0) } else { idx.parse::<usize>() };
            return idx.map(DeviceSpec::Cuda).map_err(|_| DeviceError::Unknown(s.to_string()));
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
    Device::new_cuda(i).map_err(|source| DeviceError::Open { name: name.to_string(), source })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_i: usize, name: &str) -> Result<Device, DeviceError> {
    Err(DeviceError::CudaNotBuilt(name.to_string()))
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
        assert!(err.contains("--features cuda"), "{err}");
    }
}
