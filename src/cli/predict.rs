//! `ranksweep predict`: one scan → one mask on the scan's grid, with a base checkpoint (and
//! optionally an adapter) per view.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::data::preprocess::{HuWindow, View};
use crate::nn::DeviceSpec;
use crate::train::predict::{PredictFile, predict_file};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Base checkpoint; repeat once per view, in the order of --views.
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// Adapter file for the base; repeat once per view, in the order of --views (default: none).
    #[arg(long)]
    pub adapter: Vec<PathBuf>,
    /// Input scan (NIfTI, HU); repeat for several co-registered images, in channel order.
    #[arg(long, required = true)]
    pub image: Vec<PathBuf>,
    /// The mask to write (`.nii.gz` or `.nii`), u8, on the first image's grid and header.
    #[arg(long)]
    pub out: PathBuf,
    /// Views, comma-separated; their probabilities are averaged.
    #[arg(long, value_delimiter = ',', default_value = "axial")]
    pub views: Vec<View>,
    /// HU windows stacked as input channels: brain, subdural, bone or L<level>/W<width>.
    #[arg(long, value_delimiter = ',', default_value = "brain")]
    pub windows: Vec<HuWindow>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Slices per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Print one JSON object describing the mask.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PredictArgs) -> anyhow::Result<ExitCode> {
    let summary = predict_file(&PredictFile {
        checkpoints: args.checkpoint,
        adapters: args.adapter,
        views: args.views,
        images: args.image,
        windows: args.windows,
        out: args.out,
        device: args.device,
        batch: args.batch,
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "wrote {}: {:?} voxels [z, y, x], {} foreground ({:.2} mL)",
            summary.out.display(),
            summary.shape,
            summary.foreground_voxels,
            summary.foreground_ml
        );
    }
    Ok(ExitCode::SUCCESS)
}
