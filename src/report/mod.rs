//! The study's report: tables, charts, statistics, and comparisons between two sweeps.
//!
//! Input is plain data, [`ReportInput`] (one [`CellResult`] per cell with its per-case results
//! and loss curves), which the store fills or `ranksweep report --input` reads from JSON;
//! only `from_store` and `run_ref` read the database. From it:
//! - [`table`]: [`Table`], one [`Row`] per cell: Dice pooled and per fold, completeness,
//!   parameters, strata, volume agreement, paired Wilcoxon tests against `none` and `full`
//!   (Holm-adjusted across the table), best cells — every statistic from `crate::metrics`;
//! - [`render`]: the tables as Markdown, HTML, LaTeX, CSV and a terminal table;
//! - [`charts`]: six charts as SVG and PNG (plotters, embedded font, no system fonts);
//! - [`compare`]: [`Comparison`] of a baseline and a current sweep, with the regression rule;
//! - [`run_ref`]: [`RunRef`], the `SWEEP[@RUN]` / `./file.db[:SWEEP[@RUN]]` references that
//!   `report` and `compare` take, resolved to a [`ReportInput`] from the store or a file;
//! - [`write_report`]: everything written to a folder, in the [`Format`]s asked for.
//!
//! Output folder: `index.html` (self-contained: tables and inline SVG charts, no network),
//! `report.md` with `charts/*.png` beside it, `charts/*.svg`, `csv/*.csv`, `tex/*.tex`.

pub mod charts;
pub mod compare;
mod error;
pub mod from_store;
pub mod input;
pub mod render;
pub mod run_ref;
pub mod table;

use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use charts::{ChartConfig, ChartFile};
pub use compare::{CellChange, Comparison, Source, compare};
pub use error::ReportError;
pub use input::{CaseResult, CellResult, LossCurve, LossPoint, ReportInput};
pub use run_ref::{Resolved, RunRef, RunRefError, RunSel, resolve};
pub use table::{PairedTest, Row, Table, build_table};

use crate::metrics::Strata;

/// An output format of [`write_report`]. Charts are drawn for `md` (PNG) and `html` (SVG);
/// both files are always written when any chart is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Markdown,
    Html,
    Csv,
    Tex,
}

impl Format {
    /// Parses `md,html,csv,tex` (any subset, any order).
    pub fn parse_list(s: &str) -> Result<Vec<Format>, ReportError> {
        let mut out = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let f = entry.parse().map_err(|_| ReportError::UnknownFormat {
                input: s.to_string(),
                entry: entry.to_string(),
            })?;
            if !out.contains(&f) {
                out.push(f);
            }
        }
        if out.is_empty() {
            return Err(ReportError::UnknownFormat {
                input: s.to_string(),
                entry: String::new(),
            });
        }
        Ok(out)
    }
}

impl FromStr for Format {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "md" | "markdown" => Ok(Format::Markdown),
            "html" => Ok(Format::Html),
            "csv" => Ok(Format::Csv),
            "tex" | "latex" => Ok(Format::Tex),
            _ => Err(ReportError::UnknownFormat {
                input: s.to_string(),
                entry: s.to_string(),
            }),
        }
    }
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportPaths {
    pub dir: PathBuf,
    pub html: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub csv: Vec<PathBuf>,
    pub tex: Vec<PathBuf>,
    pub charts: Vec<ChartFile>,
    /// The computed table (for the terminal table, or a caller's own use).
    pub table: Table,
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf, ReportError> {
    std::fs::write(&path, text).map_err(|source| ReportError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn mkdir(path: PathBuf) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(&path).map_err(|source| ReportError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Writes the report of `input` into `out_dir` (created if missing) in `formats`, with Dice
/// per stratum over `strata`.
pub fn write_report(
    input: &ReportInput,
    out_dir: &Path,
    formats: &[Format],
    strata: &Strata,
) -> Result<ReportPaths, ReportError> {
    write_report_with(input, out_dir, formats, strata, ChartConfig::default())
}

/// [`write_report`] with a chart size.
pub fn write_report_with(
    input: &ReportInput,
    out_dir: &Path,
    formats: &[Format],
    strata: &Strata,
    chart_cfg: ChartConfig,
) -> Result<ReportPaths, ReportError> {
    let table = build_table(input, strata)?;
    let dir = mkdir(out_dir.to_path_buf())?;
    let grids = render::grids(&table);
    let wants = |f: Format| formats.contains(&f);
    let charts = if wants(Format::Markdown) || wants(Format::Html) {
        charts::write_charts(&table, input, &dir.join("charts"), chart_cfg)?
    } else {
        Vec::new()
    };
    let mut paths = ReportPaths {
        dir: dir.clone(),
        html: None,
        markdown: None,
        csv: Vec::new(),
        tex: Vec::new(),
        charts: Vec::new(),
        table: table.clone(),
    };
    if wants(Format::Markdown) {
        paths.markdown = Some(write(
            dir.join("report.md"),
            &markdown(&table, &grids, &charts),
        )?);
    }
    if wants(Format::Html) {
        paths.html = Some(write(
            dir.join("index.html"),
            &html(&table, &grids, &charts),
        )?);
    }
    if wants(Format::Csv) {
        let csv_dir = mkdir(dir.join("csv"))?;
        for (name, text) in render::csv_files(&table) {
            paths.csv.push(write(csv_dir.join(name), &text)?);
        }
    }
    if wants(Format::Tex) {
        let tex_dir = mkdir(dir.join("tex"))?;
        for (name, grid) in ["main.tex", "strata.tex", "agreement.tex"]
            .iter()
            .zip(&grids)
        {
            paths.tex.push(write(tex_dir.join(name), &grid.to_latex())?);
        }
    }
    paths.charts = charts;
    Ok(paths)
}

/// The text above the tables: what the markers and the tests mean.
const LEGEND: &str = "Dice: mean ± sample SD over the test cases of all folds pooled (cases \
with an undefined Dice, both masks empty, are skipped); per fold: the mean of that fold's \
cases. Tests: paired Wilcoxon signed-rank over the cases both cells share (scipy's defaults), \
Δ = mean difference of this cell minus the other; p-values Holm-adjusted across every test \
of the table; * p < 0.05, ** p < 0.01, *** p < 0.001.";

fn best_line(table: &Table) -> String {
    let best: Vec<String> = table
        .best_per_kind()
        .map(|r| format!("{}: {} ({})", r.kind, r.cell, render::fmt3(r.dice.mean)))
        .collect();
    match table.best_overall() {
        Some(b) => format!(
            "Best overall: {} (Dice {}). Best per kind: {}.",
            b.cell,
            render::fmt3(b.dice.mean),
            best.join("; ")
        ),
        None => "No cell has a defined Dice yet.".into(),
    }
}

/// `Ran on: NVIDIA H200 (GPU 0), …, f32 (12 jobs); cpu (2 threads), f32 (1 job).`, or nothing
/// when no result says.
pub fn ran_on_line(table: &Table) -> Option<String> {
    if table.ran_on.is_empty() {
        return None;
    }
    let parts: Vec<String> = table
        .ran_on
        .iter()
        .map(|(what, n)| format!("{what} ({n} job{})", if *n == 1 { "" } else { "s" }))
        .collect();
    Some(format!("Ran on: {}.", parts.join("; ")))
}

fn markdown(table: &Table, grids: &[render::Grid], charts: &[ChartFile]) -> String {
    let mut s = format!("# Report: sweep {}\n\n", render::escape_md(&table.sweep));
    s.push_str(&format!(
        "{}\n\n{}\n\n",
        render::escape_md(&best_line(table)),
        LEGEND
    ));
    if let Some(line) = ran_on_line(table) {
        s.push_str(&format!("{}\n\n", render::escape_md(&line)));
    }
    for g in grids {
        s.push_str(&g.to_markdown());
        s.push('\n');
    }
    for c in charts {
        s.push_str(&format!(
            "![{}](charts/{}.png)\n\n",
            render::escape_md(&c.title),
            c.name
        ));
    }
    s
}

/// Drops the XML prolog so the SVG can sit inside HTML.
fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

fn html(table: &Table, grids: &[render::Grid], charts: &[ChartFile]) -> String {
    let title = format!("Report: sweep {}", render::escape_html(&table.sweep));
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n\
<style>\nbody{{font-family:sans-serif;margin:2em;max-width:1400px}}\
table{{border-collapse:collapse;margin-bottom:2em;font-size:13px}}\
th,td{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
td:first-child,th:first-child{{text-align:left}}th{{background:#f2f2f2}}\
figure{{margin:1em 0}}svg{{max-width:100%;height:auto}}\n</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );
    s.push_str(&format!(
        "<p>{}</p>\n<p>{}</p>\n",
        render::escape_html(&best_line(table)),
        render::escape_html(LEGEND)
    ));
    if let Some(line) = ran_on_line(table) {
        s.push_str(&format!("<p>{}</p>\n", render::escape_html(&line)));
    }
    for g in grids {
        s.push_str(&g.to_html());
    }
    for c in charts {
        s.push_str(&format!(
            "<figure id=\"{}\">\n{}\n<figcaption>{}</figcaption>\n</figure>\n",
            c.name,
            inline_svg(&c.svg_text),
            render::escape_html(&c.title)
        ));
    }
    s.push_str("</body>\n</html>\n");
    s
}

/// The main table for the terminal (comfy-table), with the best-cell line under it.
pub fn terminal_table(table: &Table) -> String {
    format!(
        "{}{}\n",
        render::main_grid(table).to_terminal(),
        best_line(table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_lists_parse_and_name_the_bad_entry() {
        assert_eq!(
            Format::parse_list("md, tex,md").unwrap(),
            [Format::Markdown, Format::Tex]
        );
        let err = Format::parse_list("md,pdf").unwrap_err().to_string();
        assert_eq!(
            err,
            "format `md,pdf`: unknown `pdf`, expected a comma-separated list of md, html, csv, tex"
        );
        assert!(Format::parse_list(",").is_err());
    }

    #[test]
    fn svg_prolog_is_dropped_for_html() {
        assert_eq!(inline_svg("<?xml version=\"1.0\"?>\n<svg a>"), "<svg a>");
        assert_eq!(inline_svg("<svg>"), "<svg>");
    }
}
