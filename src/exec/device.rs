//! Device slots: the static pool that jobs are leased to, and how a worker is pinned to its slot.
//!
//! `--devices cpu` or `--devices cuda:0,cuda:1`, times `--slots-per-device N`, gives the pool.
//! A worker on `cuda:i` sees only that GPU (`CUDA_VISIBLE_DEVICES=i`) and so opens it as
//! `cuda:0`; a CPU worker sees none (`CUDA_VISIBLE_DEVICES=""`). Every worker gets
//! `RAYON_NUM_THREADS=T`, so that N CPU jobs do not each spawn a thread per core.
//!
//! The pool is owned by the scheduler alone (one task), so a lease is a plain index: a slot is
//! given to one job at a time, and releasing a free slot is a bug the pool refuses to hide.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use super::error::ExecError;

/// One device a slot runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    Cpu,
    /// A GPU by its index on this host (as `nvidia-smi` numbers it).
    Cuda(u32),
}

impl Device {
    pub fn is_gpu(self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// The value of `CUDA_VISIBLE_DEVICES` for a worker on this device.
    pub fn cuda_visible_devices(self) -> String {
        match self {
            Device::Cpu => String::new(),
            Device::Cuda(i) => i.to_string(),
        }
    }

    /// The device the worker opens: with the pinning above, a GPU is always its `cuda:0`.
    pub fn worker_device(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda:0",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        match s.strip_prefix("cuda:").map(str::parse::<u32>) {
            Some(Ok(i)) => Ok(Device::Cuda(i)),
            _ => Err(format!("`{s}` is not `cpu` or `cuda:<index>`")),
        }
    }
}

/// Parses `--devices`: a comma-separated list of `cpu` and `cuda:<index>`, each at most once.
pub fn parse_devices(input: &str) -> Result<Vec<Device>, ExecError> {
    let invalid = |reason: String| ExecError::InvalidDevices {
        input: input.to_string(),
        reason,
    };
    if input.trim().is_empty() {
        return Err(invalid(
            "expected `cpu` or a list like `cuda:0,cuda:1`".into(),
        ));
    }
    let mut devices = Vec::new();
    for part in input.split(',') {
        let device: Device = part.parse().map_err(invalid)?;
        if devices.contains(&device) {
            return Err(invalid(format!("`{device}` is listed twice")));
        }
        devices.push(device);
    }
    Ok(devices)
}

/// The pool's shape: which devices, how many jobs at once on each, how many threads per job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    pub devices: Vec<Device>,
    pub slots_per_device: usize,
    pub threads_per_job: usize,
}

impl Default for SlotConfig {
    /// One CPU slot with every core.
    fn default() -> Self {
        SlotConfig {
            devices: vec![Device::Cpu],
            slots_per_device: 1,
            threads_per_job: default_threads(1),
        }
    }
}

/// The cores of this machine shared by `slots` concurrent jobs (at least one thread each).
pub fn default_threads(slots: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / slots.max(1)).max(1)
}

/// One place a job can run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// Position in the pool, stable for a run (the reporter draws one bar per slot).
    pub index: usize,
    pub device: Device,
    pub threads: usize,
}

impl Slot {
    /// The environment a worker on this slot runs with.
    pub fn env(&self) -> [(&'static str, String); 5] {
        [
            ("CUDA_VISIBLE_DEVICES", self.device.cuda_visible_devices()),
            ("RAYON_NUM_THREADS", self.threads.to_string()),
            // candle's own pool spins between ops and fights the job's rayon threads; the own
            // ops parallelise through rayon, so candle's internal gemm threads stay at one.
            ("CANDLE_NUM_THREADS", "1".to_string()),
            // The device spelled as the worker opens it, for workers that take no flag.
            ("RANKSWEEP_DEVICE", self.device.worker_device().to_string()),
            // CUDA numbers GPUs fastest first unless told otherwise; nvidia-smi (our indices,
            // the memory queries) numbers them by PCI bus.
            ("CUDA_DEVICE_ORDER", "PCI_BUS_ID".to_string()),
        ]
    }
}

/// The static pool: every slot, and which job holds it.
#[derive(Debug)]
pub struct SlotPool {
    slots: Vec<Slot>,
    holder: Vec<Option<String>>,
}

impl SlotPool {
    /// Slots in device order: `cuda:0` slot 0 and 1, then `cuda:1`, and so on.
    pub fn new(config: &SlotConfig) -> Result<Self, ExecError> {
        if config.devices.is_empty() {
            return Err(ExecError::InvalidDevices {
                input: String::new(),
                reason: "expected at least one device".into(),
            });
        }
        if config.slots_per_device == 0 {
            return Err(ExecError::InvalidSlots {
                field: "slots-per-device",
                value: 0,
            });
        }
        if config.threads_per_job == 0 {
            return Err(ExecError::InvalidSlots {
                field: "threads-per-job",
                value: 0,
            });
        }
        let slots: Vec<Slot> = config
            .devices
            .iter()
            .flat_map(|&device| std::iter::repeat_n(device, config.slots_per_device))
            .enumerate()
            .map(|(index, device)| Slot {
                index,
                device,
                threads: config.threads_per_job,
            })
            .collect();
        let holder = vec![None; slots.len()];
        Ok(SlotPool { slots, holder })
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn has_gpu(&self) -> bool {
        self.slots.iter().any(|s| s.device.is_gpu())
    }

    pub fn free(&self) -> usize {
        self.holder.iter().filter(|h| h.is_none()).count()
    }

    /// Leases a free slot to `job`: a GPU slot if it needs one, else a CPU slot first (keeping
    /// GPUs for jobs that need them), else any free slot. `None` when no fitting slot is free.
    pub fn lease(&mut self, job: &str, needs_gpu: bool) -> Option<Slot> {
        self.lease_where(job, needs_gpu, |_| true)
    }

    /// Like [`SlotPool::lease`], among the free slots that `admit` accepts.
    pub fn lease_where(
        &mut self,
        job: &str,
        needs_gpu: bool,
        admit: impl Fn(&Slot) -> bool,
    ) -> Option<Slot> {
        let free = |want_gpu: bool| {
            (0..self.slots.len()).find(|&i| {
                self.holder[i].is_none()
                    && self.slots[i].device.is_gpu() == want_gpu
                    && admit(&self.slots[i])
            })
        };
        let index = if needs_gpu {
            free(true)
        } else {
            free(false).or_else(|| free(true))
        }?;
        self.holder[index] = Some(job.to_string());
        Some(self.slots[index].clone())
    }

    /// Jobs running on `device` now.
    pub fn running_on(&self, device: Device) -> usize {
        self.slots
            .iter()
            .zip(&self.holder)
            .filter(|(s, h)| s.device == device && h.is_some())
            .count()
    }

    /// Whether a GPU slot is free.
    pub fn gpu_free(&self) -> bool {
        self.slots
            .iter()
            .zip(&self.holder)
            .any(|(s, h)| s.device.is_gpu() && h.is_none())
    }

    /// Returns a slot to the pool. Returns false (and changes nothing) if `job` did not hold it.
    pub fn release(&mut self, index: usize, job: &str) -> bool {
        match self.holder.get_mut(index) {
            Some(h) if h.as_deref() == Some(job) => {
                *h = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(devices: &str, per: usize) -> SlotPool {
        SlotPool::new(&SlotConfig {
            devices: parse_devices(devices).unwrap(),
            slots_per_device: per,
            threads_per_job: 3,
        })
        .unwrap()
    }

    #[test]
    fn devices_parse_and_print() {
        assert_eq!(parse_devices("cpu").unwrap(), [Device::Cpu]);
        assert_eq!(
            parse_devices("cuda:0, cuda:3").unwrap(),
            [Device::Cuda(0), Device::Cuda(3)]
        );
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for (bad, why) in [
            ("", "expected `cpu`"),
            ("gpu0", "`gpu0` is not"),
            ("cuda:", "`cuda:` is not"),
            ("cuda:-1", "`cuda:-1` is not"),
            ("cuda:1,cuda:1", "`cuda:1` is listed twice"),
        ] {
            let e = parse_devices(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("devices `{bad}`")), "{e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn slots_are_pinned_to_their_device() {
        let p = pool("cuda:2,cpu", 2);
        let devices: Vec<_> = p.slots().iter().map(|s| s.device).collect();
        assert_eq!(
            devices,
            [Device::Cuda(2), Device::Cuda(2), Device::Cpu, Device::Cpu]
        );
        let env = p.slots()[1].env();
        assert_eq!(env[0], ("CUDA_VISIBLE_DEVICES", "2".to_string()));
        assert_eq!(env[1], ("RAYON_NUM_THREADS", "3".to_string()));
        assert_eq!(env[2], ("CANDLE_NUM_THREADS", "1".to_string()));
        assert_eq!(env[3], ("RANKSWEEP_DEVICE", "cuda:0".to_string()));
        let env = p.slots()[3].env();
        assert_eq!(env[0], ("CUDA_VISIBLE_DEVICES", String::new()));
        assert_eq!(env[3].1, "cpu");
    }

    #[test]
    fn a_slot_is_leased_once() {
        let mut p = pool("cuda:0", 2);
        let a = p.lease("a", true).unwrap();
        let b = p.lease("b", true).unwrap();
        assert_ne!(a.index, b.index);
        assert_eq!(p.lease("c", true), None);
        assert_eq!(p.free(), 0);
        assert!(!p.release(a.index, "b"), "only the holder releases");
        assert!(p.release(a.index, "a"));
        assert!(
            !p.release(a.index, "a"),
            "a free slot cannot be released twice"
        );
        assert_eq!(p.lease("c", true).unwrap().index, a.index);
    }

    #[test]
    fn gpu_jobs_wait_for_gpu_slots_and_cpu_jobs_prefer_cpu() {
        let mut p = pool("cpu,cuda:1", 1);
        let cpu_job = p.lease("eval", false).unwrap();
        assert_eq!(cpu_job.device, Device::Cpu);
        // The only CPU slot is busy: a CPU job may borrow the GPU slot.
        let gpu = p.lease("gpu-job", true).unwrap();
        assert_eq!(gpu.device, Device::Cuda(1));
        assert_eq!(p.lease("another-gpu-job", true), None);
        let mut p = pool("cpu", 4);
        assert!(!p.has_gpu());
        assert_eq!(p.lease("gpu-job", true), None);
    }

    #[test]
    fn zero_slots_or_threads_are_refused() {
        for (per, threads, field) in [(0, 1, "slots-per-device"), (1, 0, "threads-per-job")] {
            let e = SlotPool::new(&SlotConfig {
                devices: vec![Device::Cpu],
                slots_per_device: per,
                threads_per_job: threads,
            })
            .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("`{field}`: expected a positive integer, got 0")
            );
        }
        assert!(default_threads(1_000_000) >= 1);
    }
}
