//! `ranksweep model summary`: the per-layer parameter table of a (possibly adapted) Unet.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};

use super::adapt_args::{AdaptArgs, ModelArgs};
use crate::model::{Unet2d, summary::ModelSummary};

#[derive(Args, Debug)]
pub struct ModelCmd {
    #[command(subcommand)]
    pub command: ModelSub,
}

#[derive(Subcommand, Debug)]
pub enum ModelSub {
    /// Per-layer table of parameters, adapter tensors and what trains, with totals.
    Summary(SummaryArgs),
}

#[derive(Args, Debug)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub adapt: AdaptArgs,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: ModelCmd) -> anyhow::Result<ExitCode> {
    match cmd.command {
        ModelSub::Summary(args) => summary(args),
    }
}

fn summary(args: SummaryArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.model.config()?;
    let spec = args.adapt.spec()?;
    let mut model = Unet2d::init(&cfg, 0, &candle_core::Device::Cpu)?;
    spec.apply(&mut model, 0)?;
    let s = ModelSummary::of(&model, &spec);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "layer",
        "weight shape",
        "base",
        "adapter",
        "trainable",
        "trains",
    ]);
    for l in &s.layers {
        let shape = l
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×");
        table.add_row(vec![
            Cell::new(&l.layer),
            Cell::new(shape),
            Cell::new(l.base_params).set_alignment(CellAlignment::Right),
            Cell::new(l.adapter_params).set_alignment(CellAlignment::Right),
            Cell::new(l.trainable_params).set_alignment(CellAlignment::Right),
            Cell::new(l.trainable.join(", ")),
        ]);
    }
    table.add_row(vec![
        Cell::new("total"),
        Cell::new(""),
        Cell::new(s.base_params).set_alignment(CellAlignment::Right),
        Cell::new(s.adapter_params).set_alignment(CellAlignment::Right),
        Cell::new(s.trainable_params).set_alignment(CellAlignment::Right),
        Cell::new(""),
    ]);
    println!("{table}");
    println!(
        "{}: {} trainable of {} total parameters ({:.2}% of the base model)",
        spec.label(),
        s.trainable_params,
        s.total_params,
        s.trainable_percent
    );
    if let Some(f) = &s.formula {
        println!(
            "per adapted {}D conv: {f} (O, I: out/in channels, k = 3, r: rank)",
            cfg.dims
        );
    }
    Ok(ExitCode::SUCCESS)
}
