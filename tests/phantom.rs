//! `ranksweep synth` through the real binary: the nnU-Net v2 folder it writes is what the data
//! loader reads, the same seed gives the same bytes, and bad values are usage errors.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use ranksweep::data::layout::{LayoutKind, index_dataset};
use ranksweep::data::nifti::{affine, read_label, read_volume};
use ranksweep::data::phantom::CohortMeta;

use crate::util::{ranksweep, stderr, stdout};

/// Every file under `root`, by relative path.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["", "imagesTr", "labelsTr"] {
        for e in fs::read_dir(root.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                out.insert(
                    p.strip_prefix(root).unwrap().display().to_string(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn synth_writes_an_nnunet_cohort_byte_for_byte_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["synth", "--cohort", "sah", "--cases", "4", "--seed", "11"];
    for out in ["a", "b"] {
        let run = ranksweep(dir.path(), &[&args[..], &["--out", out]].concat());
        assert!(run.status.success(), "{}", stderr(&run));
        assert!(
            stdout(&run).contains("wrote 4 sah cases"),
            "{}",
            stdout(&run)
        );
    }
    let (a, b) = (files(&dir.path().join("a")), files(&dir.path().join("b")));
    assert_eq!(a.len(), 2 + 4 + 4);
    assert_eq!(a, b, "same seed, same bytes");
    assert!(
        a.contains_key("imagesTr/sah_003_0000.nii.gz") && a.contains_key("labelsTr/sah_003.nii.gz")
    );

    let root = dir.path().join("a");
    let json: serde_json::Value = serde_json::from_slice(&a["dataset.json"]).unwrap();
    assert_eq!(json["channel_names"]["0"], "CT");
    assert_eq!(json["labels"]["blood"], 1);
    assert_eq!(json["numTraining"], 4);
    assert_eq!(json["file_ending"], ".nii.gz");
    let description = json["description"].as_str().unwrap();
    assert!(
        description.contains("sah") && description.contains("seed 11"),
        "{description}"
    );

    // The loader recognises the folder, and the label files agree with the metadata.
    let ds = index_dataset(&root).unwrap();
    assert_eq!(ds.layout, LayoutKind::NnunetV2);
    assert_eq!(ds.case_ids(), ["sah_000", "sah_001", "sah_002", "sah_003"]);
    let meta: CohortMeta = serde_json::from_slice(&a["phantom.json"]).unwrap();
    assert_eq!(meta.seed, 11);
    for (case, m) in ds.cases.iter().zip(&meta.cases) {
        assert_eq!(case.id, m.case);
        assert_eq!(case.shape, [24, 64, 64]);
        let spacing_ok = case
            .spacing
            .iter()
            .zip([6.0, 3.4, 3.4])
            .all(|(a, b)| (a - b).abs() < 1e-5);
        assert!(spacing_ok, "{:?}", case.spacing);
        let label = read_label(&case.label).unwrap();
        let n = label.data.iter().filter(|&&v| v == 1).count();
        assert_eq!(n, m.label_voxels, "{}", case.id);
        assert!(
            (n as f64 * label.voxel_ml() - m.blood_volume_ml).abs() < 1e-3,
            "{}",
            case.id
        );
        assert!(label.data.iter().all(|&v| v <= 1));
        // Images are int16 HU on the same grid; the affine puts the brain centre at the origin.
        let image = read_volume(&case.images[0]).unwrap();
        assert!(image.data.iter().any(|&v| v > 900.0) && image.data.iter().any(|&v| v < -900.0));
        let h = image.header.as_deref().unwrap();
        let a = affine(h);
        let centre_x = a[0][3] + a[0][0] * 31.5;
        assert!(centre_x.abs() < 1e-3, "x origin {centre_x}");
        // The aneurysm lies in the field of view.
        let p = m.aneurysm.as_ref().unwrap().position_mm;
        let k = ((p[2] - a[2][3]) / a[2][2]).round();
        assert!((0.0..24.0).contains(&k), "aneurysm at slice {k}");
    }
}

#[test]
fn synth_realistic_grid_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    // A realistic in-plane size on few slices keeps the test quick.
    let run = ranksweep(
        dir.path(),
        &[
            "synth",
            "--cohort",
            "tbi",
            "--cases",
            "1",
            "--seed",
            "1",
            "--out",
            "t",
            "--shape",
            "512,512,8",
            "--spacing",
            "0.45,0.45,5",
        ],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let ds = index_dataset(dir.path().join("t")).unwrap();
    assert_eq!(ds.cases[0].shape, [8, 512, 512]);
}

#[test]
fn synth_bad_values_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["synth", "--cohort", "tbi", "--seed", "1", "--out", "x"];
    let cases: [(&[&str], &str); 6] = [
        (&["--cases", "0"], "--cases"),
        (&["--cases", "2", "--spacing", "3.4,0,6"], "`spacing`"),
        (&["--cases", "2", "--spacing", "3.4,-3.4,6"], "`spacing`"),
        (&["--cases", "2", "--shape", "8,8,2"], "`shape`"),
        (
            &["--cases", "2", "--shape", "64,64,24", "--spacing", "1,1,1"],
            "field of view",
        ),
        (&["--cases", "2", "--shape", "64,64"], "X,Y,Z"),
    ];
    for (extra, needle) in cases {
        let run = ranksweep(dir.path(), &[&base[..], extra].concat());
        assert_eq!(run.status.code(), Some(2), "{extra:?}: {}", stderr(&run));
        assert!(stderr(&run).contains(needle), "{extra:?}: {}", stderr(&run));
        assert!(!dir.path().join("x").exists(), "{extra:?} left an output");
    }
    let run = ranksweep(
        dir.path(),
        &[
            "synth", "--cohort", "ich", "--cases", "1", "--seed", "1", "--out", "x",
        ],
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(stderr(&run).contains("`tbi` or `sah`"), "{}", stderr(&run));

    // An existing, non-empty output is left alone.
    fs::create_dir(dir.path().join("x")).unwrap();
    fs::write(dir.path().join("x/keep.txt"), "mine").unwrap();
    let run = ranksweep(dir.path(), &[&base[..], &["--cases", "1"]].concat());
    assert_eq!(run.status.code(), Some(2));
    assert!(stderr(&run).contains("not empty"), "{}", stderr(&run));
    assert_eq!(
        fs::read_to_string(dir.path().join("x/keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary folder left"
    );
}
