//! `ranksweep report SWEEP[@RUN]` (from the database; any run reference of
//! `report::run_ref`) or `ranksweep report --input FILE.json`: writes a sweep's report (tables,
//! charts, CSV, LaTeX) and prints the main table.
//! Exit 0 when written, 2 on bad input.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::metrics::Strata;
use crate::report::{self, Format, ReportInput};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// What to report: `SWEEP` (its current state), `SWEEP@latest`, `SWEEP@previous`,
    /// `SWEEP@RUN_ID` (the jobs that run covered), `./other.db[:SWEEP[@RUN]]` (another
    /// database file) or `./file.json`. A file needs a `/`.
    #[arg(
        required_unless_present = "input",
        conflicts_with = "input",
        value_name = "REF"
    )]
    pub sweep: Option<String>,
    /// A `ReportInput` JSON file instead of the database: `{"sweep": ..., "cells": [...]}`,
    /// one entry per cell with its per-case results and loss curves.
    #[arg(long)]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,
    /// Output folder (created if missing): index.html, report.md, charts/, csv/, tex/.
    /// Default: `<results>/<sweep>/report`, or `<results>/<sweep>/runs/<id>/report` for a run.
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
    let (input, run) = match (&args.input, &args.sweep) {
        (Some(file), _) => (ReportInput::from_json_file(file)?, None),
        (None, Some(text)) => {
            let r: report::RunRef = text.parse()?;
            let resolved = report::resolve(&r, text, &args.store.db_path())?;
            let run = resolved.run();
            (resolved.input, run)
        }
        (None, None) => anyhow::bail!("give a sweep name or `--input FILE.json`"),
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let sweep = args.store.results.join(&input.sweep);
        match run {
            Some(id) => sweep.join("runs").join(id.to_string()).join("report"),
            None => sweep.join("report"),
        }
    });
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
