//! `ranksweep inspect PATH [--json]`: what a NIfTI file or a dataset folder holds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::data::inspect::{FileReport, FolderReport, Inspection, LabelCount, inspect};

/// Show a NIfTI file's grid, type, scaling and HU range (with label counts for a mask), or a
/// dataset folder's layout, cases, grids and label values.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A `.nii`/`.nii.gz` file, or a dataset folder (nnU-Net v2, Decathlon, INSTANCE, BHSD,
    /// PhysioNet).
    pub path: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let report = inspect(&args.path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &report {
            Inspection::File(r) => print_file(r),
            Inspection::Folder(r) => print_folder(r),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t
}

fn dims(v: [usize; 3]) -> String {
    format!("{} × {} × {}", v[0], v[1], v[2])
}

fn mm(v: [f64; 3]) -> String {
    format!("{:.4} × {:.4} × {:.4} mm", v[0], v[1], v[2])
}

fn print_file(r: &FileReport) {
    let mut t = table();
    t.set_header(vec!["file", &r.path.display().to_string()]);
    t.add_row(vec!["shape (x × y × z)".to_string(), dims(r.shape_xyz)]);
    t.add_row(vec![
        "spacing (x × y × z)".to_string(),
        mm(r.spacing_mm_xyz),
    ]);
    t.add_row(vec!["datatype".to_string(), r.datatype.clone()]);
    t.add_row(vec![
        "scl_slope / scl_inter".to_string(),
        format!("{} / {}", r.scl_slope, r.scl_inter),
    ]);
    t.add_row(vec![
        "min / max / mean".to_string(),
        format!("{} / {} / {:.3}", r.min, r.max, r.mean),
    ]);
    let kind = if r.labels.is_some() { "mask" } else { "image" };
    t.add_row(vec!["looks like".to_string(), kind.to_string()]);
    println!("{t}");
    if let Some(labels) = &r.labels {
        println!("{}", label_table(labels));
    }
}

fn print_folder(r: &FolderReport) {
    let mut t = table();
    t.set_header(vec!["dataset", &r.path.display().to_string()]);
    t.add_row(vec!["layout".to_string(), r.layout.to_string()]);
    t.add_row(vec!["cases".to_string(), r.cases.to_string()]);
    t.add_row(vec!["channels".to_string(), r.channels.join(", ")]);
    t.add_row(vec![
        "shape min (x × y × z)".to_string(),
        dims(r.shape_min_xyz),
    ]);
    t.add_row(vec![
        "shape max (x × y × z)".to_string(),
        dims(r.shape_max_xyz),
    ]);
    t.add_row(vec![
        "spacing min (x × y × z)".to_string(),
        mm(r.spacing_min_mm_xyz),
    ]);
    t.add_row(vec![
        "spacing max (x × y × z)".to_string(),
        mm(r.spacing_max_mm_xyz),
    ]);
    if !r.labels_declared.is_empty() {
        let declared: Vec<String> = r
            .labels_declared
            .iter()
            .map(|(name, v)| format!("{v} {name}"))
            .collect();
        t.add_row(vec![
            "labels (dataset.json)".to_string(),
            declared.join(", "),
        ]);
    }
    t.add_row(vec![
        "cases with foreground".to_string(),
        r.cases_with_foreground.to_string(),
    ]);
    t.add_row(vec!["fingerprint".to_string(), r.fingerprint.clone()]);
    println!("{t}");
    println!("{}", label_table(&r.label_values));
}

fn label_table(labels: &[LabelCount]) -> Table {
    let mut t = table();
    t.set_header(vec!["label value", "voxels", "volume (mL)"]);
    for l in labels {
        t.add_row(vec![
            l.value.to_string(),
            l.voxels.to_string(),
            format!("{:.3}", l.volume_ml),
        ]);
    }
    t
}
