//! Time of NIfTI I/O on a scan-sized volume (figures, not a test).
//!
//! `cargo bench --bench data_io` writes a 512×512×40 int16 head-CT-like volume (0.45×0.45×5 mm:
//! air, a skull ring, brain with noise) to a temporary folder as `.nii.gz` and `.nii`, then
//! prints the median of a few runs of:
//! - `read_volume` on the `.nii.gz` (gzip decode, int16 → f32 HU), the case the trainer loads;
//! - `read_volume` on the `.nii` (no gzip);
//! - `read_header` (what indexing a dataset costs per file);
//! - `write_i16` to `.nii.gz` (phantom generation, prediction export).

use std::time::Instant;

use ndarray::Array3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ranksweep::data::Volume;
use ranksweep::data::nifti::{read_header, read_volume, write_i16};

const SHAPE: (usize, usize, usize) = (40, 512, 512);
const SPACING: [f64; 3] = [5.0, 0.45, 0.45];

/// Air outside an ellipse, a 6 mm skull ring, brain ~35 HU with ±5 HU noise: realistic
/// entropy for gzip, which dominates reading time.
fn head() -> Volume<i16> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let data = Array3::from_shape_fn(SHAPE, |(_, y, x)| {
        let dy = (y as f64 - 256.0) * SPACING[1] / 90.0;
        let dx = (x as f64 - 256.0) * SPACING[2] / 75.0;
        let r = (dy * dy + dx * dx).sqrt();
        let noise: i16 = rng.random_range(-5..=5);
        if r > 1.0 {
            -1000 + noise
        } else if r > 0.92 {
            1200 + 10 * noise
        } else {
            35 + noise
        }
    });
    Volume::new(data, SPACING)
}

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vol = head();
    let gz = dir.path().join("head.nii.gz");
    let nii = dir.path().join("head.nii");
    write_i16(&vol, &nii).expect("write .nii");

    let write_ms = median_ms(3, || write_i16(&vol, &gz).expect("write .nii.gz"));
    let size =
        |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    println!(
        "volume 512×512×40 int16 ({:.1} MB raw, {:.1} MB gzip)",
        size(&nii),
        size(&gz)
    );
    let back = read_volume(&gz).expect("read");
    assert_eq!(back.data, vol.data.mapv(f32::from), "round trip");

    let read_gz = median_ms(5, || {
        read_volume(&gz).expect("read .nii.gz");
    });
    let read_nii = median_ms(5, || {
        read_volume(&nii).expect("read .nii");
    });
    let header = median_ms(21, || {
        read_header(&gz).expect("header");
    });
    println!("read_volume .nii.gz   {read_gz:8.1} ms (median of 5)");
    println!("read_volume .nii      {read_nii:8.1} ms (median of 5)");
    println!("read_header .nii.gz   {header:8.3} ms (median of 21)");
    println!("write_i16  .nii.gz    {write_ms:8.1} ms (median of 3)");
}
