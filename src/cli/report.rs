//! `ranksweep report SWEEP` (from the database) or `ranksweep report --input FILE.json`:
//! writes a sweep's report (tables, charts, CSV, LaTeX) and prints the main table.
//! Exit 0 when written, 2 on bad input.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::metrics::Strata;
use crate::report::{self, Format, ReportInput};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The sweep's name, read from the database.
    #[arg(required_unless_present = "input", conflicts_with = "input")]
    pub sweep: Option<String>,
    /// A `ReportInput` JSON file instead of the database: `{"sweep": ..., "cells": [...]}`,
    /// one entry per cell with its per-case results and loss curves.
    #[arg(long)]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,
    /// Output folder (created if missing): index.html, report.md, charts/, csv/, tex/.
    /// Default: `<results>/<sweep>/report`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Comma-separated formats among md, html, csv, tex.
    #[arg(long, default_value = "md,html,csv")]
    pub format: String,
    /// Bin edges in mL of the annotated-volume strata, strictly increasing; 5,15,30 gives <5,
    /// 5–15, 15–30 and ≥30 mL.
    #[arg(long, default_value = "5,15,30")]
    pub strata: Strata,
    /// Do not print the main table.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let formats = Format::parse_list(&args.format)?;
    let input = match (&args.input, &args.sweep) {
        (Some(file), _) => ReportInput::from_json_file(file)?,
        (None, Some(name)) => report::from_store::load_input(&args.store.open_existing()?, name)?,
        (None, None) => anyhow::bail!("give a sweep name or `--input FILE.json`"),
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.store.results.join(&input.sweep).join("report"));
    let paths = report::write_report(&input, &out, &formats, &args.strata)?;
    if !args.quiet {
        let text = format!(
            "{}wrote {}\n",
            report::terminal_table(&paths.table),
            paths.dir.display()
        );
        // A closed pipe (`| head`) is not an error (ripgrep's convention).
        if let Err(e) = std::io::stdout().lock().write_all(text.as_bytes())
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            return Err(e.into());
        }
    }
    Ok(ExitCode::SUCCESS)
}
