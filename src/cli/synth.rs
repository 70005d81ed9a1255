//! `ranksweep synth --cohort tbi|sah --cases N --seed S --out DIR [--shape X,Y,Z]
//! [--spacing SX,SY,SZ]`: write a synthetic head-CT phantom cohort in the nnU-Net v2 layout.
//!
//! The generator is [`crate::data::phantom`]; this file parses the grid and prints a summary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::data::phantom::{
    Cohort, DEFAULT_SHAPE, DEFAULT_SPACING, PhantomConfig, write_cohort, xyz,
};

/// Synthesize a cohort of head-CT phantoms: images (int16 HU), blood labels (uint8),
/// `dataset.json` and per-case metadata (`phantom.json`). The same seed gives the same files.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// `tbi` (traumatic brain injury, the pre-training cohort) or `sah` (aneurysmal subarachnoid
    /// haemorrhage, the fine-tuning cohort).
    #[arg(long, value_parser = |s: &str| s.parse::<Cohort>())]
    pub cohort: Cohort,
    /// Number of cases (at least 1).
    #[arg(long, value_parser = super::bounds::cases)]
    pub cases: usize,
    /// Seed of the cohort: case `i` depends only on the cohort, the seed, `i` and the grid.
    #[arg(long)]
    pub seed: u64,
    /// Output folder; must not exist or be empty. Written atomically (all or nothing).
    #[arg(long)]
    pub out: PathBuf,
    /// Grid size in voxels, X,Y,Z [default: 64,64,24]; e.g. 512,512,40 for realistic scans.
    #[arg(long, value_parser = parse_shape)]
    pub shape: Option<[usize; 3]>,
    /// Voxel size in mm, X,Y,Z [default: 3.4,3.4,6]; e.g. 0.45,0.45,5 with 512,512,40.
    #[arg(long, value_parser = parse_spacing)]
    pub spacing: Option<[f64; 3]>,
}

fn three<T: std::str::FromStr>(s: &str, what: &str) -> Result<[T; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let err = || format!("expected three comma-separated {what} X,Y,Z, got `{s}`");
    if parts.len() != 3 {
        return Err(err());
    }
    let mut out = Vec::with_capacity(3);
    for p in parts {
        out.push(p.parse::<T>().map_err(|_| err())?);
    }
    out.try_into().map_err(|_| err())
}

fn parse_shape(s: &str) -> Result<[usize; 3], String> {
    let shape: [usize; 3] = three(s, "voxel counts")?;
    let max = crate::limits::MAX_IMAGE_DIM;
    let voxels = crate::limits::product(shape);
    if shape.iter().any(|&n| n == 0 || n > max)
        || voxels.is_none_or(|v| v > crate::limits::MAX_VOXELS)
    {
        return Err(format!(
            "expected voxel counts from 1 to {max} per axis and at most {} voxels (the limits), got `{s}`",
            crate::limits::MAX_VOXELS
        ));
    }
    Ok(shape)
}

fn parse_spacing(s: &str) -> Result<[f64; 3], String> {
    three(s, "sizes in mm")
}

pub fn run(args: SynthArgs) -> anyhow::Result<ExitCode> {
    let cfg = PhantomConfig {
        cohort: args.cohort,
        cases: args.cases,
        seed: args.seed,
        // The command line says X,Y,Z; volumes are [z, y, x].
        shape: args.shape.map_or(DEFAULT_SHAPE, xyz),
        spacing: args.spacing.map_or(DEFAULT_SPACING, xyz),
    };
    let summary = write_cohort(&cfg, &args.out)
        .with_context(|| format!("cannot synthesize the {} cohort", cfg.cohort))?;
    let [nx, ny, nz] = xyz(cfg.shape);
    let [sx, sy, sz] = xyz(cfg.spacing);
    println!(
        "wrote {} {} cases to {} ({nx}×{ny}×{nz} voxels of {sx}×{sy}×{sz} mm)",
        summary.cases.len(),
        cfg.cohort,
        summary.dir.display()
    );
    let (lo, hi) = summary.volume_range_ml();
    let strata: Vec<String> = summary
        .stratum_counts()
        .into_iter()
        .map(|(label, n)| format!("{label} mL: {n}"))
        .collect();
    println!(
        "blood {lo:.1}–{hi:.1} mL; {}; blood-free: {}",
        strata.join(", "),
        summary.cases.iter().filter(|c| c.blood_free).count()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_arguments_need_three_values() {
        assert_eq!(parse_shape("512,512,40").unwrap(), [512, 512, 40]);
        assert_eq!(parse_spacing("0.45, 0.45, 5").unwrap(), [0.45, 0.45, 5.0]);
        let e = parse_shape("64,64").unwrap_err();
        assert!(e.contains("X,Y,Z") && e.contains("`64,64`"), "{e}");
        assert!(parse_shape("64,64,-1").is_err());
        assert!(parse_spacing("1,x,1").is_err());
    }
}
