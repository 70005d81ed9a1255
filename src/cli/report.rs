//! `ranksweep report --input FILE.json --out DIR`: writes a sweep's report (tables, charts,
//! CSV, LaTeX) and prints the main table.
//!
//! The input is a `report::ReportInput` as JSON; reading a sweep from the store
//! (`ranksweep report SWEEP`) comes with the store. Exit 0 when written, 2 on bad input.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::metrics::Strata;
use crate::report::{self, Format, ReportInput};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A `ReportInput` JSON file: `{"sweep": ..., "cells": [...]}`, one entry per cell with
    /// its per-case results and loss curves.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder (created if missing): index.html, report.md, charts/, csv/, tex/.
    #[arg(long)]
    pub out: PathBuf,
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
    let input = ReportInput::from_json_file(&args.input)?;
    let paths = report::write_report(&input, &args.out, &formats, &args.strata)?;
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
