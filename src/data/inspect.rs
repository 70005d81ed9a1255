//! What `ranksweep inspect` reports about a NIfTI file or a dataset folder.
//!
//! Key types: [`Inspection`] (a [`FileReport`] or a [`FolderReport`]), [`LabelCount`].
//! Entry point: [`inspect`]. The CLI only renders these (table or JSON).
//!
//! Design: a file is read in full (HU statistics need every voxel). It "looks like a mask" when
//! every value is a whole number in `0..=255` and there are at most [`MASK_MAX_VALUES`]
//! distinct values; then voxel counts and volumes (mL, from the spacing) are given per value. A
//! folder is indexed from headers ([`index_dataset`]), then every label is read to count its
//! values, so a wrong label value shows up before training. Shapes and spacings are reported in
//! NIfTI's `x, y, z` order, as other tools print them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ::nifti::NiftiType;
use serde::Serialize;

use super::layout::{LayoutError, LayoutKind, index_dataset};
use super::nifti::{VolumeError, read_header, read_label, read_volume};

/// At most this many distinct integer values for a file to count as a mask.
pub const MASK_MAX_VALUES: usize = 16;

/// A path that could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{}: not found", .0.display())]
    NotFound(PathBuf),
}

/// The report for a file or a folder.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Inspection {
    File(FileReport),
    Folder(FolderReport),
}

/// Voxels of one label value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelCount {
    pub value: u8,
    pub voxels: u64,
    pub volume_ml: f64,
}

/// One NIfTI file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub path: PathBuf,
    pub shape_xyz: [usize; 3],
    pub spacing_mm_xyz: [f64; 3],
    pub datatype: String,
    /// As stored in the header (JSON `null` when not a number).
    pub scl_slope: f32,
    pub scl_inter: f32,
    /// After scaling (HU for CT).
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Per-value counts when the file looks like a mask, else absent.
    pub labels: Option<Vec<LabelCount>>,
}

/// A dataset folder.
#[derive(Debug, Clone, Serialize)]
pub struct FolderReport {
    pub path: PathBuf,
    pub layout: LayoutKind,
    pub cases: usize,
    pub channels: Vec<String>,
    pub shape_min_xyz: [usize; 3],
    pub shape_max_xyz: [usize; 3],
    pub spacing_min_mm_xyz: [f64; 3],
    pub spacing_max_mm_xyz: [f64; 3],
    /// Label names and values declared in `dataset.json` (empty for flat pairs).
    pub labels_declared: BTreeMap<String, u8>,
    /// Values found in the label files, with voxels and mL summed over cases.
    pub label_values: Vec<LabelCount>,
    /// Cases whose label has at least one non-zero voxel.
    pub cases_with_foreground: usize,
    pub fingerprint: String,
}

/// Inspects a NIfTI file or a dataset folder.
pub fn inspect(path: impl AsRef<Path>) -> Result<Inspection, InspectError> {
    let path = path.as_ref();
    if path.is_dir() {
        inspect_folder(path).map(Inspection::Folder)
    } else if path.exists() {
        inspect_file(path).map(Inspection::File)
    } else {
        Err(InspectError::NotFound(path.into()))
    }
}

fn xyz<T: Copy>(zyx: [T; 3]) -> [T; 3] {
    [zyx[2], zyx[1], zyx[0]]
}

fn inspect_file(path: &Path) -> Result<FileReport, InspectError> {
    let info = read_header(path)?;
    let vol = read_volume(path)?;
    let (mut min, mut max, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    let mut counts = [0u64; 256];
    let mut maybe_mask = true;
    for &v in vol.data.iter() {
        let v64 = v as f64;
        min = min.min(v64);
        max = max.max(v64);
        sum += v64;
        if maybe_mask {
            if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
                counts[v as usize] += 1;
            } else {
                maybe_mask = false;
            }
        }
    }
    let n = vol.data.len().max(1) as f64;
    let distinct = counts.iter().filter(|&&c| c > 0).count();
    let labels =
        (maybe_mask && distinct <= MASK_MAX_VALUES).then(|| label_counts(&counts, vol.voxel_ml()));
    Ok(FileReport {
        path: path.into(),
        shape_xyz: xyz(info.shape),
        spacing_mm_xyz: xyz(info.spacing),
        datatype: datatype_name(info.datatype).to_string(),
        scl_slope: info.header.scl_slope,
        scl_inter: info.header.scl_inter,
        min,
        max,
        mean: sum / n,
        labels,
    })
}

fn label_counts(counts: &[u64; 256], voxel_ml: f64) -> Vec<LabelCount> {
    (0..256)
        .filter(|&v| counts[v] > 0)
        .map(|v| LabelCount {
            value: v as u8,
            voxels: counts[v],
            volume_ml: counts[v] as f64 * voxel_ml,
        })
        .collect()
}

fn inspect_folder(path: &Path) -> Result<FolderReport, InspectError> {
    let ds = index_dataset(path)?;
    let mut shape_min = [usize::MAX; 3];
    let mut shape_max = [0usize; 3];
    let mut sp_min = [f64::INFINITY; 3];
    let mut sp_max = [0.0f64; 3];
    let mut voxels = [0u64; 256];
    let mut ml = [0.0f64; 256];
    let mut with_fg = 0;
    for case in &ds.cases {
        for i in 0..3 {
            shape_min[i] = shape_min[i].min(case.shape[i]);
            shape_max[i] = shape_max[i].max(case.shape[i]);
            sp_min[i] = sp_min[i].min(case.spacing[i]);
            sp_max[i] = sp_max[i].max(case.spacing[i]);
        }
        let label = read_label(&case.label)?;
        let voxel_ml = label.voxel_ml();
        let mut counts = [0u64; 256];
        for &v in label.data.iter() {
            counts[v as usize] += 1;
        }
        with_fg += usize::from(counts[1..].iter().any(|&c| c > 0));
        for v in 0..256 {
            voxels[v] += counts[v];
            ml[v] += counts[v] as f64 * voxel_ml;
        }
    }
    let label_values = (0..256)
        .filter(|&v| voxels[v] > 0)
        .map(|v| LabelCount {
            value: v as u8,
            voxels: voxels[v],
            volume_ml: ml[v],
        })
        .collect();
    Ok(FolderReport {
        path: path.into(),
        layout: ds.layout,
        cases: ds.cases.len(),
        channels: ds.channels,
        shape_min_xyz: xyz(shape_min),
        shape_max_xyz: xyz(shape_max),
        spacing_min_mm_xyz: xyz(sp_min),
        spacing_max_mm_xyz: xyz(sp_max),
        labels_declared: ds.labels,
        label_values,
        cases_with_foreground: with_fg,
        fingerprint: ds.fingerprint,
    })
}

/// The lowercase NIfTI type name (`int16`, `float32`, ...).
pub fn datatype_name(t: NiftiType) -> &'static str {
    match t {
        NiftiType::Uint8 => "uint8",
        NiftiType::Int8 => "int8",
        NiftiType::Uint16 => "uint16",
        NiftiType::Int16 => "int16",
        NiftiType::Uint32 => "uint32",
        NiftiType::Int32 => "int32",
        NiftiType::Uint64 => "uint64",
        NiftiType::Int64 => "int64",
        NiftiType::Float32 => "float32",
        NiftiType::Float64 => "float64",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Volume;
    use crate::data::nifti::{write_i16, write_u8};
    use ndarray::Array3;
    use std::fs;

    #[test]
    fn a_scan_gets_hu_statistics_and_no_label_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ct.nii.gz");
        let data =
            Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 100 + y * 10 + x) as i16 - 1000);
        write_i16(&Volume::new(data, [5.0, 0.5, 0.4]), &p).unwrap();
        let Inspection::File(r) = inspect(&p).unwrap() else {
            panic!("a file")
        };
        assert_eq!(r.shape_xyz, [4, 3, 2]);
        assert_eq!(r.spacing_mm_xyz, [0.4, 0.5, 5.0]);
        assert_eq!(r.datatype, "int16");
        assert_eq!((r.min, r.max), (-1000.0, -1000.0 + 123.0));
        assert!((r.mean - (-1000.0 + 61.5)).abs() < 1e-9);
        assert!(r.labels.is_none(), "negative HU are not a mask");
    }

    #[test]
    fn a_mask_gets_counts_and_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mask.nii");
        // 10 × 10 × 10 voxels of 0.5 × 1 × 2 mm (1 µL each): 100 of value 4, 10 of value 1.
        let data = Array3::from_shape_fn((10, 10, 10), |(z, y, x)| match (z, y, x) {
            (0, _, _) => 4,
            (1, 0, _) => 1,
            _ => 0,
        });
        write_u8(&Volume::new(data, [2.0, 1.0, 0.5]), &p).unwrap();
        let Inspection::File(r) = inspect(&p).unwrap() else {
            panic!("a file")
        };
        let labels = r.labels.unwrap();
        let got: Vec<(u8, u64)> = labels.iter().map(|l| (l.value, l.voxels)).collect();
        assert_eq!(got, [(0, 890), (1, 10), (4, 100)]);
        assert!((labels[2].volume_ml - 0.1).abs() < 1e-12);
    }

    #[test]
    fn a_folder_is_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("images")).unwrap();
        fs::create_dir_all(root.join("ground truths")).unwrap();
        for (id, z, sp, lab) in [("a", 3, 5.0, 4u8), ("b", 5, 2.5, 0u8)] {
            let img = Volume::new(Array3::<i16>::zeros((z, 4, 4)), [sp, 0.5, 0.5]);
            write_i16(&img, root.join(format!("images/{id}.nii.gz"))).unwrap();
            let mut l = Array3::<u8>::zeros((z, 4, 4));
            l[[0, 0, 0]] = lab;
            write_u8(
                &Volume::new(l, [sp, 0.5, 0.5]),
                root.join(format!("ground truths/{id}.nii.gz")),
            )
            .unwrap();
        }
        let Inspection::Folder(r) = inspect(root).unwrap() else {
            panic!("a folder")
        };
        assert_eq!(r.layout, LayoutKind::Bhsd);
        assert_eq!(r.cases, 2);
        assert_eq!(r.shape_min_xyz, [4, 4, 3]);
        assert_eq!(r.shape_max_xyz, [4, 4, 5]);
        assert_eq!(r.spacing_min_mm_xyz[2], 2.5);
        assert_eq!(r.spacing_max_mm_xyz[2], 5.0);
        assert_eq!(r.cases_with_foreground, 1);
        let vals: Vec<(u8, u64)> = r.label_values.iter().map(|l| (l.value, l.voxels)).collect();
        assert_eq!(vals, [(0, 47 + 80), (4, 1)]);
        assert!((r.label_values[1].volume_ml - 1.25e-3).abs() < 1e-12);
    }

    #[test]
    fn missing_and_bad_paths_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let e = inspect(dir.path().join("gone.nii"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone.nii") && e.contains("not found"), "{e}");
        let p = dir.path().join("bad.nii.gz");
        fs::write(&p, b"\x1f\x8b\x08\x00garbage").unwrap();
        let e = inspect(&p).unwrap_err().to_string();
        assert!(e.contains("bad.nii.gz") && e.contains("gzip"), "{e}");
    }
}
