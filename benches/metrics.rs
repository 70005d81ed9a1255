//! Time of the per-case metrics on scan-sized masks (figures, not a test).
//!
//! `cargo bench --bench metrics` prints the median of a few runs of `CaseMetrics::compute`
//! (counts, Dice, HD95 and ASSD with the exact EDT) for a 512×512×40 grid at 0.45×0.45×5 mm:
//! - a ~20 mL lesion, the typical case (work is limited to the lesions' bounding box);
//! - a lesion spanning most of the head, the worst case for the distance transforms;
//! - empty masks, where only the voxel counts run.

use std::time::Instant;

use ndarray::Array3;
use ranksweep::metrics::{CaseMetrics, Strata};

const SHAPE: (usize, usize, usize) = (40, 512, 512);
const SPACING: [f64; 3] = [5.0, 0.45, 0.45];

/// An ellipsoid with centre `c` and radii `r` in mm, on the grid.
fn ellipsoid(c: [f64; 3], r: [f64; 3]) -> Array3<u8> {
    Array3::from_shape_fn(SHAPE, |(z, y, x)| {
        let p = [z, y, x];
        let q: f64 = (0..3)
            .map(|k| ((p[k] as f64 * SPACING[k] - c[k]) / r[k]).powi(2))
            .sum();
        u8::from(q <= 1.0)
    })
}

fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

fn main() {
    let strata = Strata::default();
    let cases = [
        (
            "~20 mL lesion",
            ellipsoid([100.0, 115.0, 115.0], [20.0, 15.0, 16.0]),
            ellipsoid([102.0, 117.0, 114.0], [19.0, 16.0, 15.0]),
        ),
        (
            "head-sized mask",
            ellipsoid([100.0, 115.0, 115.0], [95.0, 110.0, 110.0]),
            ellipsoid([100.0, 116.0, 114.0], [92.0, 108.0, 109.0]),
        ),
        ("empty masks", Array3::zeros(SHAPE), Array3::zeros(SHAPE)),
    ];
    println!("CaseMetrics::compute on {SHAPE:?} [z, y, x] voxels at {SPACING:?} mm");
    for (name, pred, truth) in &cases {
        let mut m = None;
        let secs = median_seconds(5, || {
            m = Some(CaseMetrics::compute(pred.view(), truth.view(), SPACING, &strata).unwrap());
        });
        let m = m.unwrap();
        println!(
            "{name:>16}: {:8.1} ms  (truth {:.1} mL, Dice {:.3}, HD95 {:.2} mm)",
            secs * 1e3,
            m.truth_ml,
            m.dice,
            m.hd95_mm
        );
    }
}
