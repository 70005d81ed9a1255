//! Data pipeline across modules (write → index → folds → sample → predict → write back) and the
//! `inspect` subcommand through the real binary.

use std::fs;
use std::path::Path;

use ndarray::Array3;
use ranksweep::data::Volume;
use ranksweep::data::folds::{SPLITS_FILE, load_or_create_splits};
use ranksweep::data::layout::{LabelMap, index_dataset};
use ranksweep::data::nifti::{affine, header_for, read_label, write_i16, write_u8};
use ranksweep::data::preprocess::{HuWindow, View, multiple_for_levels, prepare_slice};
use ranksweep::data::sampling::{SamplerConfig, SliceSampler, TrainCase};

use crate::util::{ranksweep, stderr, stdout};

const SPACING: [f64; 3] = [5.0, 0.5, 0.45];

/// A tiny nnU-Net v2 dataset: `n` cases of 4 × 12 × 10 voxels; labels 0, 1 (ICH), 4 (SAH) in
/// a block whose size depends on the case.
fn write_dataset(root: &Path, n: usize) {
    fs::create_dir_all(root.join("imagesTr")).unwrap();
    fs::create_dir_all(root.join("labelsTr")).unwrap();
    for i in 0..n {
        let id = format!("sah_{i:03}");
        let mut header = header_for([4, 12, 10], SPACING);
        header.srow_x[3] = 7.5 + i as f32; // a per-case origin, as real scans have
        let hu = Array3::from_shape_fn((4, 12, 10), |(z, y, x)| {
            if (2..2 + i % 5 + 1).contains(&y) && (3..7).contains(&x) && z >= 1 {
                70
            } else {
                30 + (x as i16)
            }
        });
        let mut img = Volume::new(hu, SPACING);
        img.header = Some(Box::new(header));
        write_i16(&img, root.join(format!("imagesTr/{id}_0000.nii.gz"))).unwrap();
        let label = img.map(|&v| if v == 70 { 4u8 } else { 0 });
        let mut label = label;
        label.data[[0, 0, 0]] = 1;
        write_u8(&label, root.join(format!("labelsTr/{id}.nii.gz"))).unwrap();
    }
    let json = serde_json::json!({
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "ich": 1, "sah": 4},
        "numTraining": n,
        "file_ending": ".nii.gz",
    });
    fs::write(root.join("dataset.json"), json.to_string()).unwrap();
}

#[test]
fn dataset_to_batches_and_back_to_the_source_grid() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Dataset001_SAH");
    write_dataset(&root, 6);

    let ds = index_dataset(&root).unwrap();
    assert_eq!(ds.cases.len(), 6);
    let target = LabelMap::Values(vec![4]);
    target.check(&ds).unwrap();

    let splits_path = dir.path().join(SPLITS_FILE);
    let (splits, created) =
        load_or_create_splits(&splits_path, &ds.case_ids(), 3, 42, None).unwrap();
    assert!(created);
    let fold = splits.fold(1).unwrap();
    assert_eq!(fold.train.len() + fold.val.len(), 6);

    let train: Vec<TrainCase> = fold
        .train
        .iter()
        .map(|id| {
            TrainCase::from_loaded(ds.load_case(ds.case(id).unwrap()).unwrap(), &target).unwrap()
        })
        .collect();
    let cfg = SamplerConfig {
        windows: vec![HuWindow::BRAIN, HuWindow::SUBDURAL],
        batch_size: 4,
        foreground_fraction: 0.5,
        multiple: multiple_for_levels(4),
        seed: 3,
        ..SamplerConfig::default()
    };
    let mut sampler = SliceSampler::new(train, cfg.clone()).unwrap();
    let batch = sampler.next_batch();
    assert_eq!(batch.shape, [4, 2, 16, 16]);
    assert_eq!(batch.targets.len(), 4 * 16 * 16);
    // Label 1 is not part of the SAH target: targets hold only SAH voxels.
    assert!(batch.picks.iter().filter(|p| p.forced_foreground).count() >= 2);
    // Same seed, same batch.
    let again = SliceSampler::new(sampler.cases().to_vec(), cfg)
        .unwrap()
        .next_batch();
    assert_eq!(again, batch);

    // "Predict" a validation case slice by slice (threshold on the brain window), crop, stack,
    // and write on the source grid: the mask and the affine come back.
    let case = ds.load_case(ds.case(&fold.val[0]).unwrap()).unwrap();
    let hu = &case.images[0];
    let mut pred = Array3::<u8>::zeros(hu.data.dim());
    for z in 0..View::Axial.num_slices(hu.shape()) {
        let (x, pad) = prepare_slice(hu.data.view(), View::Axial, z, &[HuWindow::BRAIN], 8);
        let prob = x
            .index_axis(ndarray::Axis(0), 0)
            .mapv(|v| u8::from(v > 0.8));
        View::Axial
            .slice_mut(&mut pred, z)
            .assign(&pad.crop(prob.view()));
    }
    let pred = hu.with_data(pred);
    let out = dir.path().join("pred.nii.gz");
    write_u8(&pred, &out).unwrap();
    let back = read_label(&out).unwrap();
    let truth = target.binarize(&case.label);
    assert_eq!(back.data, truth.data);
    assert_eq!(
        affine(back.header.as_ref().unwrap()),
        affine(case.label.header.as_ref().unwrap())
    );
}

#[test]
fn inspect_a_file_as_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), 2);
    let out = ranksweep(dir.path(), &["inspect", "imagesTr/sah_001_0000.nii.gz"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("10 × 12 × 4") && text.contains("int16") && text.contains("image"),
        "{text}"
    );

    let out = ranksweep(
        dir.path(),
        &["inspect", "--json", "labelsTr/sah_001.nii.gz"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["kind"], "file");
    assert_eq!(json["datatype"], "uint8");
    assert_eq!(json["shape_xyz"], serde_json::json!([10, 12, 4]));
    let labels = json["labels"].as_array().unwrap();
    let values: Vec<u64> = labels
        .iter()
        .map(|l| l["value"].as_u64().unwrap())
        .collect();
    assert_eq!(values, [0, 1, 4]);
    // Case 1: SAH block of 2 rows × 4 columns × 3 slices = 24 voxels of 0.5 × 0.45 × 5 mm.
    assert_eq!(labels[2]["voxels"], 24);
    let ml = labels[2]["volume_ml"].as_f64().unwrap();
    assert!((ml - 24.0 * 5.0 * 0.5 * 0.45 / 1000.0).abs() < 1e-6, "{ml}");
}

#[test]
fn inspect_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), 3);
    let out = ranksweep(dir.path(), &["inspect", "--json", "."]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["kind"], "folder");
    assert_eq!(json["layout"], "nnunet-v2");
    assert_eq!(json["cases"], 3);
    assert_eq!(json["labels_declared"]["sah"], 4);
    assert_eq!(json["cases_with_foreground"], 3);
    assert_eq!(json["fingerprint"].as_str().unwrap().len(), 64);
    let out = ranksweep(dir.path(), &["inspect", "."]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nnunet-v2"), "{}", stdout(&out));
}

#[test]
fn inspect_bad_input_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("broken.nii.gz"), b"\x1f\x8b\x08\x00\x00").unwrap();
    fs::write(dir.path().join("empty.nii"), b"").unwrap();
    for (arg, why) in [
        ("broken.nii.gz", "gzip"),
        ("empty.nii", "empty"),
        ("missing.nii", "not found"),
    ] {
        let out = ranksweep(dir.path(), &["inspect", arg]);
        assert_eq!(out.status.code(), Some(2), "{arg}");
        let err = stderr(&out);
        assert!(err.contains(arg) && err.contains(why), "{arg}: {err}");
        assert!(stdout(&out).is_empty());
    }
    // A folder with a case whose label is missing.
    write_dataset(dir.path(), 2);
    fs::remove_file(dir.path().join("labelsTr/sah_001.nii.gz")).unwrap();
    let out = ranksweep(dir.path(), &["inspect", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("labelsTr/sah_001.nii.gz"),
        "{}",
        stderr(&out)
    );
}
