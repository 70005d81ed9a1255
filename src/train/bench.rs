//! `bench train-step`: the median time of one full training step (forward, backward, AdamW)
//! of a Unet, with achieved conv GFLOP/s and peak memory. The same configuration as
//! `shared/bench/torch_unet.py`, so the two can be compared side by side.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::step::Trainer;
use crate::model::{AdamWConfig, AdaptationSpec, LrSchedule, Selector, Unet2d, UnetConfig};
use crate::nn::{DeviceSpec, Precision};

#[derive(Debug, Clone)]
pub struct TrainStepBench {
    pub model: UnetConfig,
    pub batch: usize,
    pub size: usize,
    /// `None`: pre-training (every tensor trains, from a random init).
    pub adaptation: Option<AdaptationSpec>,
    pub steps: usize,
    pub warmup: usize,
    pub device: DeviceSpec,
    /// `bf16`: autocast (CUDA only).
    pub precision: Precision,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainStepReport {
    pub mode: String,
    /// 2 or 3 (a size² image or a size³ patch per batch element).
    pub dims: usize,
    pub features: Vec<usize>,
    pub batch: usize,
    pub size: usize,
    pub device: String,
    pub precision: String,
    pub threads: usize,
    pub trainable_params: usize,
    pub total_params: usize,
    pub steps: usize,
    pub median_step_s: f64,
    pub min_step_s: f64,
    /// Forward conv FLOPs × 3 (forward + two backward products) per second.
    pub gflops: f64,
    pub peak_rss_mb: f64,
    /// The most GPU memory this process held (MiB), sampled with `nvidia-smi` every 100 ms;
    /// `None` on the CPU or without `nvidia-smi`.
    pub peak_gpu_mb: Option<f64>,
    pub final_loss: f32,
}

/// Samples this process's GPU memory in the background until dropped; `peak` then holds the
/// maximum seen.
struct GpuPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Option<f64>>>,
}

impl GpuPeak {
    fn start() -> GpuPeak {
        use crate::nn::gpu::GpuQuery;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let smi = crate::nn::gpu::NvidiaSmi::default();
            let me = std::process::id();
            let mut peak: Option<f64> = None;
            loop {
                let Ok(ps) = smi.processes() else {
                    return peak;
                };
                if let Some(p) = ps.iter().find(|p| p.pid == me) {
                    peak = Some(peak.map_or(p.used_mb, |m| m.max(p.used_mb)));
                }
                if flag.load(Ordering::SeqCst) {
                    return peak;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        GpuPeak {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Option<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.take().and_then(|h| h.join().ok().flatten())
    }
}

/// Multiply-add FLOPs (×2) of every conv in one forward pass.
pub fn forward_conv_flops(cfg: &UnetConfig, batch: usize, size: usize) -> f64 {
    let f = &cfg.features;
    let l = f.len();
    let mut flops = 0.0;
    // k^dims kernel taps at s^dims positions.
    let d = cfg.dims as u32;
    let conv = |o: usize, i: usize, k: usize, s: usize| 2.0 * (o * i * k.pow(d) * s.pow(d)) as f64;
    let mut s = size;
    let mut cin = cfg.in_channels;
    for &c in &f[..l - 1] {
        flops += conv(c, cin, 3, s) + conv(c, c, 3, s);
        cin = c;
        s /= 2;
    }
    flops += conv(f[l - 1], f[l - 2], 3, s) + conv(f[l - 1], f[l - 1], 3, s);
    for j in 0..l - 1 {
        let (ci, co) = (f[l - 1 - j], f[l - 2 - j]);
        flops += conv(co, ci, 2, s); // transposed 2×2 on the coarse grid
        s *= 2;
        flops += conv(co, 2 * co, 3, s) + conv(co, co, 3, s);
    }
    flops += conv(1, f[0], 1, s);
    flops * batch as f64
}

/// Peak resident memory of this process in MB (Linux `ru_maxrss` is in KiB).
pub fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    if ok {
        usage.ru_maxrss as f64 / 1024.0
    } else {
        f64::NAN
    }
}

/// Largest cube side `bench train-step --dims 3` accepts.
pub const MAX_SIZE_3D: usize = 256;

pub fn run(b: &TrainStepBench) -> anyhow::Result<TrainStepReport> {
    b.model.validate()?;
    if b.model.is_3d() {
        // Bounded before allocating: 256³ patches of the widest level already need gigabytes.
        anyhow::ensure!(
            b.size <= MAX_SIZE_3D,
            "`--size`: expected at most {MAX_SIZE_3D} for a 3D model (a size³ patch), got {}",
            b.size
        );
        b.model.check_input3(b.size, b.size, b.size)?;
    } else {
        b.model.check_input(b.size, b.size)?;
    }
    anyhow::ensure!(b.batch > 0, "`--batch`: expected a positive integer");
    anyhow::ensure!(b.steps > 0, "`--steps`: expected a positive integer");
    let device = b.device.open()?;
    let gpu_peak = matches!(b.device, DeviceSpec::Cuda(_)).then(GpuPeak::start);
    super::job_run::check_precision(b.precision, &device)?;
    let mut model = Unet2d::init(&b.model, 0, &device)?;
    let mode = match &b.adaptation {
        None => {
            AdaptationSpec::full(Selector::all()).apply(&mut model, 0)?;
            "pretrain".to_string()
        }
        Some(spec) => {
            spec.apply(&mut model, 0)?;
            spec.label()
        }
    };
    let (trainable_params, total_params) = (model.trainable_params(), model.total_params());
    anyhow::ensure!(
        trainable_params > 0,
        "`{mode}` trains nothing: there is no step to time"
    );
    let (x, y) = batch(&b.model, b.batch, b.size, &device)?;
    let cfg = AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.0,
        schedule: LrSchedule::Constant,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, cfg, b.steps + b.warmup)?;
    trainer.set_precision(b.precision);
    let mut times = Vec::with_capacity(b.steps);
    let mut loss = f32::NAN;
    for i in 0..b.steps + b.warmup {
        device.synchronize()?;
        let t = Instant::now();
        loss = trainer.step(&x, &y)?.loss;
        device.synchronize()?;
        if i >= b.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let peak_gpu_mb = gpu_peak.and_then(GpuPeak::finish);
    Ok(TrainStepReport {
        mode,
        dims: b.model.dims,
        features: b.model.features.clone(),
        batch: b.batch,
        size: b.size,
        device: b.device.to_string(),
        precision: b.precision.to_string(),
        threads: rayon::current_num_threads(),
        trainable_params,
        total_params,
        steps: b.steps,
        median_step_s: median,
        min_step_s: times[0],
        gflops: 3.0 * forward_conv_flops(&b.model, b.batch, b.size) / median / 1e9,
        peak_rss_mb: peak_rss_mb(),
        peak_gpu_mb,
        final_loss: loss,
    })
}

/// A fixed random batch: normal inputs, ~10% foreground targets (as torch_unet.py).
fn batch(
    cfg: &UnetConfig,
    n: usize,
    size: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let spatial = vec![size; cfg.dims];
    let xs = [vec![n, cfg.in_channels], spatial.clone()].concat();
    let ys = [vec![n, 1], spatial].concat();
    let x = crate::model::param::normal(0, "bench.x", &xs, 1.0, device)?;
    let y: Vec<f32> = (0..ys.iter().product::<usize>())
        .map(|_| if rng.random::<f64>() > 0.9 { 1.0 } else { 0.0 })
        .collect();
    let y = Tensor::from_vec(y, ys.as_slice(), device)?.to_dtype(DType::F32)?;
    Ok((x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_count_of_a_two_level_net() {
        // in 1 → 4 (3×3 at 8²), bottleneck 4 → 8 (at 4²), up 8 → 4 (2×2 at 4²), decoder 8 → 4
        // and 4 → 4 (at 8²), head 4 → 1.
        let cfg = UnetConfig::new(1, vec![4, 8]).unwrap();
        let c = |o: f64, i: f64, k: f64, s: f64| 2.0 * o * i * k * k * s * s;
        let want = c(4., 1., 3., 8.)
            + c(4., 4., 3., 8.)
            + c(8., 4., 3., 4.)
            + c(8., 8., 3., 4.)
            + c(4., 8., 2., 4.)
            + c(4., 8., 3., 8.)
            + c(4., 4., 3., 8.)
            + c(1., 4., 1., 8.);
        assert_eq!(forward_conv_flops(&cfg, 2, 8), 2.0 * want);
    }

    #[test]
    fn runs_a_3d_step_and_bounds_the_size() {
        let b = TrainStepBench {
            model: UnetConfig::with_dims(1, vec![4, 8], 3).unwrap(),
            batch: 1,
            size: 8,
            adaptation: None,
            steps: 1,
            warmup: 0,
            device: DeviceSpec::Cpu,
            precision: Precision::F32,
        };
        let r = run(&b).unwrap();
        assert!(r.median_step_s > 0.0 && r.final_loss.is_finite());
        let c = |o: f64, i: f64, k: f64, s: f64| 2.0 * o * i * k.powi(3) * s.powi(3);
        assert_eq!(
            forward_conv_flops(&b.model, 1, 8),
            c(4., 1., 3., 8.)
                + c(4., 4., 3., 8.)
                + c(8., 4., 3., 4.)
                + c(8., 8., 3., 4.)
                + c(4., 8., 2., 4.)
                + c(4., 8., 3., 8.)
                + c(4., 4., 3., 8.)
                + c(1., 4., 1., 8.)
        );
        let big = TrainStepBench {
            size: 512,
            ..b.clone()
        };
        assert!(run(&big).unwrap_err().to_string().contains("at most 256"));
        let odd = TrainStepBench { size: 7, ..b };
        assert!(run(&odd).unwrap_err().to_string().contains("7×7×7"));
    }
}
