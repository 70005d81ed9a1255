//! `ranksweep eval` on tiny NIfTI folders written here with the nifti crate.

use std::path::Path;

use ndarray::{Array3, s};
use nifti::NiftiHeader;
use nifti::writer::WriterOptions;
use serde_json::Value;

use crate::util;

/// Voxel size in mm along [z, y, x]: 5 mm slices, 0.5 mm pixels.
const SPACING: [f64; 3] = [5.0, 0.5, 0.5];

/// Writes a `[z, y, x]` mask as NIfTI (`[x, y, z]` on disk) with `spacing` and mm units.
fn write_mask(path: &Path, mask: &Array3<u8>, spacing: [f64; 3]) {
    let hdr = NiftiHeader {
        // pixdim[1..4] = x, y, z sizes; a negative x as in many scanners' headers.
        pixdim: [
            1.0,
            -spacing[2] as f32,
            spacing[1] as f32,
            spacing[0] as f32,
            1.0,
            1.0,
            1.0,
            1.0,
        ],
        xyzt_units: 2, // mm
        ..NiftiHeader::default()
    };
    WriterOptions::new(path)
        .reference_header(&hdr)
        .write_nifti(&mask.view().reversed_axes())
        .unwrap();
}

/// A 12×24×24 grid with a 4×10×10 box at `origin` [z, y, x].
fn boxed(origin: [usize; 3]) -> Array3<u8> {
    let mut m = Array3::<u8>::zeros((12, 24, 24));
    let [z, y, x] = origin;
    m.slice_mut(s![z..z + 4, y..y + 10, x..x + 10]).fill(1);
    m
}

/// pred/ and truth/ with four cases:
/// - `a`: boxes shifted 2 voxels along x: Dice 0.8, HD95 2 × 0.5 = 1 mm;
/// - `b`: both empty: Dice null;
/// - `c`: truth empty, 3 predicted voxels: Dice 0, FP 3.75 mm³;
/// - `d`: boxes shifted 1 slice along z: Dice 0.75, HD95 5 mm.
fn write_cases(root: &Path) {
    let (pred, truth) = (root.join("pred"), root.join("truth"));
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::create_dir_all(&truth).unwrap();
    let empty = Array3::<u8>::zeros((12, 24, 24));
    let mut few = empty.clone();
    few.slice_mut(s![3, 4, 5..8]).fill(1);
    let cases = [
        ("a", boxed([4, 7, 9]), boxed([4, 7, 7])),
        ("b", empty.clone(), empty.clone()),
        ("c", few, empty),
        ("d", boxed([5, 7, 7]), boxed([4, 7, 7])),
    ];
    for (case, p, t) in cases {
        // Mixed endings on purpose: both are accepted.
        write_mask(&pred.join(format!("{case}.nii.gz")), &p, SPACING);
        write_mask(&truth.join(format!("{case}.nii")), &t, SPACING);
    }
    // Not masks: skipped.
    std::fs::write(pred.join("._a.nii.gz"), b"resource fork").unwrap();
    std::fs::write(truth.join("notes.txt"), b"x").unwrap();
}

fn close(v: &Value, expected: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - expected).abs() < 1e-9)
}

#[test]
fn eval_json_reports_hand_computed_metrics() {
    let dir = tempfile::tempdir().unwrap();
    write_cases(dir.path());
    let out = util::ranksweep(
        dir.path(),
        &["eval", "--pred", "pred", "--truth", "truth", "--json"],
    );
    assert!(out.status.success(), "{}", util::stderr(&out));
    let v: Value = serde_json::from_str(&util::stdout(&out)).unwrap();
    let cases = v["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["case"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    let (a, b, c, d) = (&cases[0], &cases[1], &cases[2], &cases[3]);

    // a: 400 voxels each, overlap 320; 1.25 mm³ voxels → 0.5 mL.
    assert_eq!(
        (a["tp"].as_u64(), a["fp"].as_u64(), a["fn"].as_u64()),
        (Some(320), Some(80), Some(80))
    );
    assert!(
        close(&a["dice"], 0.8) && close(&a["iou"], 320.0 / 480.0),
        "{a}"
    );
    assert!(
        close(&a["truth_ml"], 0.5) && close(&a["pred_ml"], 0.5),
        "{a}"
    );
    assert!(close(&a["hd95_mm"], 1.0), "x shift 2 × 0.5 mm: {a}");
    assert_eq!(
        a["spacing"],
        serde_json::json!([5.0, 0.5, 0.5]),
        "axes [z, y, x] from pixdim"
    );
    assert_eq!(a["stratum"], "<5");

    assert!(b["dice"].is_null() && b["hd95_mm"].is_null(), "{b}");
    assert!(close(&c["dice"], 0.0) && close(&c["fp_ml"], 0.00375), "{c}");
    assert!(c["hd95_mm"].is_null(), "{c}");
    // d: overlap 3×10×10 of 400 each.
    assert!(
        close(&d["dice"], 0.75) && close(&d["hd95_mm"], 5.0),
        "z shift 1 × 5 mm: {d}"
    );

    let s = &v["summary"];
    assert_eq!(s["n_cases"], 4);
    assert_eq!(s["dice"]["n"], 3, "the empty/empty case is excluded");
    assert!(close(&s["dice"]["mean"], (0.8 + 0.0 + 0.75) / 3.0), "{s}");
    assert_eq!(s["n_truth_empty"], 2);
    assert_eq!(s["strata"][0]["label"], "<5");
    assert_eq!(s["strata"][0]["n_cases"], 4);
    assert_eq!(s["volume_agreement"]["n"], 4);
    assert!(v["conventions"].as_str().unwrap().contains("HD95"));
}

#[test]
fn eval_tables_and_custom_strata() {
    let dir = tempfile::tempdir().unwrap();
    write_cases(dir.path());
    let out = util::ranksweep(
        dir.path(),
        &[
            "eval", "--pred", "pred", "--truth", "truth", "--strata", "0.1,0.4",
        ],
    );
    assert!(out.status.success(), "{}", util::stderr(&out));
    let text = util::stdout(&out);
    for needle in [
        "Dice",
        "HD95 mm",
        "0.800",
        "n/a",
        "<0.1",
        "0.1–0.4",
        "≥0.4",
        "ICC(2,1)",
        "Bland–Altman",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // With edges 0.1, 0.4 the 0.5 mL boxes are in "≥0.4".
    let json = util::ranksweep(
        dir.path(),
        &[
            "eval", "--pred", "pred", "--truth", "truth", "--strata", "0.1,0.4", "--json",
        ],
    );
    let v: Value = serde_json::from_str(&util::stdout(&json)).unwrap();
    assert_eq!(v["cases"][0]["stratum"], "≥0.4");
    assert_eq!(v["summary"]["strata"][2]["n_cases"], 2);
}

#[test]
fn eval_rejects_bad_strata() {
    let dir = tempfile::tempdir().unwrap();
    write_cases(dir.path());
    let out = util::ranksweep(
        dir.path(),
        &[
            "eval", "--pred", "pred", "--truth", "truth", "--strata", "15,5",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        util::stderr(&out).contains("strictly increasing"),
        "{}",
        util::stderr(&out)
    );
}

#[test]
fn eval_names_mismatched_cases() {
    let dir = tempfile::tempdir().unwrap();
    write_cases(dir.path());
    std::fs::remove_file(dir.path().join("truth/c.nii")).unwrap();
    write_mask(
        &dir.path().join("truth/e.nii.gz"),
        &boxed([0, 0, 0]),
        SPACING,
    );
    let out = util::ranksweep(dir.path(), &["eval", "--pred", "pred", "--truth", "truth"]);
    assert_eq!(out.status.code(), Some(2));
    let err = util::stderr(&out);
    assert!(
        err.contains("case sets differ; only in pred: c; only in truth: e"),
        "{err}"
    );
}

#[test]
fn eval_names_files_of_mismatched_grids() {
    let dir = tempfile::tempdir().unwrap();
    write_cases(dir.path());
    write_mask(
        &dir.path().join("pred/d.nii.gz"),
        &Array3::zeros((12, 24, 23)),
        SPACING,
    );
    let out = util::ranksweep(dir.path(), &["eval", "--pred", "pred", "--truth", "truth"]);
    assert_eq!(out.status.code(), Some(2));
    let err = util::stderr(&out);
    assert!(
        err.contains("pred/d.nii.gz: grid [12, 24, 23]") && err.contains("truth/d.nii"),
        "{err}"
    );

    write_mask(
        &dir.path().join("pred/d.nii.gz"),
        &boxed([5, 7, 7]),
        [2.5, 0.5, 0.5],
    );
    let out = util::ranksweep(dir.path(), &["eval", "--pred", "pred", "--truth", "truth"]);
    assert_eq!(out.status.code(), Some(2));
    let err = util::stderr(&out);
    assert!(
        err.contains("pred/d.nii.gz: spacing [2.5, 0.5, 0.5]"),
        "{err}"
    );
}

#[test]
fn eval_rejects_a_folder_without_masks() {
    let dir = tempfile::tempdir().unwrap();
    write_cases(dir.path());
    std::fs::create_dir(dir.path().join("none")).unwrap();
    let out = util::ranksweep(dir.path(), &["eval", "--pred", "none", "--truth", "truth"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        util::stderr(&out).contains("none: no masks"),
        "{}",
        util::stderr(&out)
    );
}
