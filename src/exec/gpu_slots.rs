//! How many jobs share a GPU, from measurement: the peak GPU memory that finished attempts of
//! the same *shape* recorded (the orchestrator samples each GPU worker with `nvidia-smi`).
//!
//! A shape is what sets a job's GPU memory: the Unet (input channels, widths), the batch, the
//! prediction batch, whether it trains, and the precision. Adapters, ranks, folds and seeds change
//! it by little, so jobs that differ only there share their measurements.
//!
//! Slots per GPU = ⌊(usable share of the GPU's memory) / (largest measured peak of the planned
//! shapes × headroom)⌋, between 1 and [`MAX_SLOTS_PER_GPU`]. With nothing measured it is the
//! conservative [`FALLBACK_SLOTS_PER_GPU`]; admission to a GPU slot ([`super::scheduler`]) then
//! checks free memory before each start, and an out-of-memory attempt is retried with fewer
//! jobs on its GPU, so the first run measures what later runs size from.

use std::collections::HashMap;

use crate::train::JobConfig;

/// Slots per GPU when no attempt of the planned shapes was measured.
pub const FALLBACK_SLOTS_PER_GPU: usize = 2;
/// More jobs than this on one GPU contend for its SMs and for the host's cores.
pub const MAX_SLOTS_PER_GPU: usize = 16;
/// A measured peak is raised by this much (allocator slack, a larger case).
pub const HEADROOM: f64 = 1.25;
/// Share of a GPU's memory the slots may plan for (the rest: other users, the driver).
pub const USABLE_SHARE: f64 = 0.9;

/// The shape of a job, as a string key.
pub fn shape(config: &JobConfig) -> String {
    format!(
        "in{} f{:?} b{} p{} {} {}",
        config.model.in_channels,
        config.model.features,
        config.train.batch_size,
        config.train.predict_batch,
        if config.stage.trains() {
            "train"
        } else {
            "eval"
        },
        config.precision()
    )
}

/// The largest measured peak (MiB) per shape, from `(config_json, peak_mb)` rows.
pub fn peaks_by_shape(rows: &[(String, f64)]) -> HashMap<String, f64> {
    let mut out: HashMap<String, f64> = HashMap::new();
    for (json, mb) in rows {
        let Ok(c) = serde_json::from_str::<JobConfig>(json) else {
            continue;
        };
        let e = out.entry(shape(&c)).or_insert(0.0);
        *e = e.max(*mb);
    }
    out
}

/// The GPU memory a job is expected to need (MiB), with headroom; `None` if its shape was never
/// measured.
pub fn need_mb(config: &JobConfig, peaks: &HashMap<String, f64>) -> Option<u64> {
    peaks
        .get(&shape(config))
        .map(|p| (p * HEADROOM).ceil() as u64)
}

/// Slots per GPU for jobs needing `need_mb` each on a GPU of `total_mb`: `None` inputs give the
/// fallback.
pub fn slots_per_gpu(need_mb: Option<u64>, total_mb: Option<f64>) -> usize {
    match (need_mb, total_mb) {
        (Some(need), Some(total)) if need > 0 && total > 0.0 => {
            let n = (total * USABLE_SHARE / need as f64).floor() as usize;
            n.clamp(1, MAX_SLOTS_PER_GPU)
        }
        _ => FALLBACK_SLOTS_PER_GPU,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(features: &str, batch: usize) -> JobConfig {
        JobConfig::from_text(&format!(
            "stage: pretrain\ndata: {{dataset: d}}\nmodel: {{features: {features}}}\ntrain: {{batch_size: {batch}}}\noutput: o\n"
        ))
        .unwrap()
    }

    #[test]
    fn slots_follow_the_measured_peak_of_the_shape() {
        let small = job("[4, 8, 16]", 8);
        let big = job("[32, 64, 128]", 8);
        assert_ne!(shape(&small), shape(&big));
        let mut other_seed = small.clone();
        other_seed.seed = 7;
        assert_eq!(shape(&small), shape(&other_seed));
        let rows = vec![
            (serde_json::to_string(&small).unwrap(), 300.0),
            (serde_json::to_string(&other_seed).unwrap(), 400.0),
            ("not a job".to_string(), 1e9),
        ];
        let peaks = peaks_by_shape(&rows);
        assert_eq!(need_mb(&small, &peaks), Some(500));
        assert_eq!(need_mb(&big, &peaks), None);
        // 143,771 MiB (an H200) × 0.9 / 500 → capped at 16; an 8 GiB card takes 14.
        assert_eq!(slots_per_gpu(Some(500), Some(143_771.0)), MAX_SLOTS_PER_GPU);
        assert_eq!(slots_per_gpu(Some(500), Some(8192.0)), 14);
        assert_eq!(slots_per_gpu(Some(100_000), Some(8192.0)), 1);
        assert_eq!(slots_per_gpu(None, Some(8192.0)), FALLBACK_SLOTS_PER_GPU);
        assert_eq!(slots_per_gpu(Some(500), None), FALLBACK_SLOTS_PER_GPU);
    }
}
