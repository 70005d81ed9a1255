//! `ranksweep bench train-step`: time a full training step, side by side with
//! `shared/bench/torch_unet.py`.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::adapt_args::{AdaptArgs, ModelArgs};
use crate::nn::{DeviceSpec, Precision};
use crate::train::bench::{TrainStepBench, run as run_bench};

#[derive(Args, Debug)]
pub struct BenchCmd {
    #[command(subcommand)]
    pub command: BenchSub,
}

#[derive(Subcommand, Debug)]
pub enum BenchSub {
    /// Median time of forward + backward + AdamW, GFLOP/s and peak RSS.
    TrainStep(TrainStepArgs),
}

#[derive(Args, Debug)]
pub struct TrainStepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 8, value_parser = super::bounds::batch)]
    pub batch: usize,
    /// Input height and width.
    #[arg(long, default_value_t = 128, value_parser = super::bounds::image_dim)]
    pub size: usize,
    #[command(flatten)]
    pub adapt: AdaptArgs,
    /// Time pre-training (every tensor trains) instead of an adaptation.
    #[arg(long, conflicts_with_all = ["kind", "module", "rank", "alpha", "train_norms"])]
    pub pretrain: bool,
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 10, value_parser = super::bounds::steps)]
    pub steps: usize,
    /// CPU threads (rayon).
    #[arg(long, default_value_t = 2, value_parser = super::bounds::threads)]
    pub threads: usize,
    /// cpu or cuda:N (a CUDA build; `nvidia-smi` then gives the peak GPU memory).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// f32 or bf16 (autocast: convolutions in bf16, f32 master weights; CUDA only).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd.command {
        BenchSub::TrainStep(args) => train_step(args),
    }
}

fn train_step(args: TrainStepArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.threads > 0, "`--threads`: expected a positive integer");
    let adaptation = if args.pretrain {
        None
    } else {
        anyhow::ensure!(
            args.adapt.is_given(),
            "give `--pretrain` or an adaptation (`--kind K --module M [--rank R]`)"
        );
        Some(args.adapt.spec()?)
    };
    let bench = TrainStepBench {
        model: args.model.config()?,
        batch: args.batch,
        size: args.size,
        adaptation,
        steps: args.steps,
        warmup: 2,
        device: args.device,
        precision: args.precision,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let report = pool.install(|| run_bench(&bench))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} features {:?} batch {} {}×{} on {} {} ({} threads): median step {:.4} s (min {:.4} s), {:.1} GFLOP/s, peak RSS {:.0} MB{}, {} trainable of {} parameters",
            report.mode,
            report.features,
            report.batch,
            report.size,
            report.size,
            report.device,
            report.precision,
            report.threads,
            report.median_step_s,
            report.min_step_s,
            report.gflops,
            report.peak_rss_mb,
            report
                .peak_gpu_mb
                .map_or(String::new(), |m| format!(", peak GPU {m:.0} MiB")),
            report.trainable_params,
            report.total_params
        );
    }
    Ok(ExitCode::SUCCESS)
}
