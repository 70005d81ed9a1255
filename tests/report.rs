//! The report on a hand-made sweep: golden numbers for the tables and tests, every file and
//! chart written and valid, escaping, and the `report` / `compare` subcommands.

use std::collections::HashSet;
use std::path::Path;

use ranksweep::metrics::Strata;
use ranksweep::model::AdaptationKind;
use ranksweep::report::{
    self, CaseResult, CellResult, ChartConfig, Format, LossCurve, LossPoint, ReportInput,
};

use crate::util;

/// Six cases; fold = index % 3; annotated mL 2, 4, 8, 12, 20, 40 → strata <5: a, b;
/// 5–15: c, d; 15–30: e; ≥30: f.
const CASES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const TRUTH_ML: [f64; 6] = [2.0, 4.0, 8.0, 12.0, 20.0, 40.0];
/// The default Unet's parameter count (model-contract.md).
const TOTAL: u64 = 482_449;

fn cell(
    kind: AdaptationKind,
    module: Option<&str>,
    rank: Option<u32>,
    trainable: u64,
    dice: &[(usize, f64)],
    pred_offset: [f64; 6],
) -> CellResult {
    let cases = dice
        .iter()
        .map(|&(i, d)| CaseResult {
            case: CASES[i].into(),
            fold: (i % 3) as u32,
            dice: d,
            tp: 10,
            fp: 2,
            fn_: 3,
            hd95_mm: 4.0,
            truth_ml: TRUTH_ML[i],
            pred_ml: TRUTH_ML[i] + pred_offset[i],
        })
        .collect();
    let loss_curves = if kind == AdaptationKind::None {
        vec![]
    } else {
        (0..2)
            .map(|fold| LossCurve {
                fold,
                points: (0..20u64)
                    .map(|step| LossPoint {
                        step: step * 10,
                        loss: 1.0 / (1.0 + step as f64) + 0.05 * fold as f64,
                    })
                    .collect(),
            })
            .collect()
    };
    CellResult {
        kind,
        module: module.map(String::from),
        rank,
        alpha: None,
        trainable_params: trainable,
        total_params: TOTAL,
        folds_expected: 3,
        folds_done: 3,
        folds_failed: 0,
        cases,
        loss_curves,
    }
}

fn all6(d: [f64; 6]) -> Vec<(usize, f64)> {
    d.into_iter().enumerate().collect()
}

/// `none`, `full decoder`, `lora-c decoder r4` (partial: fold 2 missing, case e NaN) and
/// `dora-c decoder r16`. Differences to `none` and `full` are distinct, so the Wilcoxon
/// p-values are exact and can be counted by hand (see `golden_table`).
pub fn fixture(sweep: &str) -> ReportInput {
    let none = cell(
        AdaptationKind::None,
        None,
        None,
        0,
        &all6([0.30, 0.40, 0.50, 0.20, 0.60, 0.10]),
        [0.0; 6],
    );
    let full = cell(
        AdaptationKind::Full,
        Some("decoder"),
        None,
        188_720,
        &all6([0.40, 0.52, 0.64, 0.36, 0.78, 0.30]),
        [0.0; 6],
    );
    let mut lora = cell(
        AdaptationKind::LoraC,
        Some("decoder"),
        Some(4),
        20_160,
        &[(0, 0.35), (1, 0.45), (3, 0.25), (4, f64::NAN)],
        [0.0; 6],
    );
    lora.folds_done = 2;
    let dora = cell(
        AdaptationKind::DoraC,
        Some("decoder"),
        Some(16),
        80_864,
        &all6([0.45, 0.51, 0.67, 0.38, 0.82, 0.36]),
        [1.0, -1.0, 1.0, -1.0, 1.0, -1.0],
    );
    ReportInput {
        ran_on: Vec::new(),
        sweep: sweep.into(),
        // Deliberately unsorted: the table sorts by kind, module, rank.
        cells: vec![dora, lora, none, full],
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn golden_table() {
    let t = report::build_table(&fixture("golden"), &Strata::default()).unwrap();
    let labels: Vec<&str> = t.rows.iter().map(|r| r.cell.as_str()).collect();
    assert_eq!(
        labels,
        [
            "none",
            "full decoder",
            "lora-c decoder r4",
            "dora-c decoder r16"
        ]
    );
    let [none, full, lora, dora] = [&t.rows[0], &t.rows[1], &t.rows[2], &t.rows[3]];

    // Pooled mean ± sample SD (Python's statistics.mean / stdev of the literals).
    for (row, mean, sd, n) in [
        (none, 0.35, 0.18708286933869706, 6),
        (full, 0.5, 0.18330302779823363, 6),
        (lora, 0.35, 0.1, 3),
        (dora, 0.5316666666666666, 0.17993517351164742, 6),
    ] {
        assert!(close(row.dice.mean, mean), "{}: {:?}", row.cell, row.dice);
        assert!(close(row.dice.sd, sd), "{}: {:?}", row.cell, row.dice);
        assert_eq!(row.dice.n, n, "{}", row.cell);
    }
    assert_eq!((lora.n_cases, dora.n_cases), (4, 6));
    // Per fold: dora fold 0 = (0.45 + 0.38) / 2, fold 1 = (0.51 + 0.82) / 2, fold 2 = (0.67 + 0.36) / 2.
    let folds: Vec<(u32, f64)> = dora
        .dice_per_fold
        .iter()
        .map(|f| (f.fold, f.dice.mean))
        .collect();
    assert_eq!(folds.len(), 3);
    for ((fold, mean), (ef, em)) in folds.iter().zip([(0, 0.415), (1, 0.665), (2, 0.515)]) {
        assert!(*fold == ef && close(*mean, em), "{folds:?}");
    }
    // lora-c: fold 0 = a, d (0.35, 0.25); fold 1 = b only (e is NaN); no fold 2.
    assert_eq!(lora.dice_per_fold.len(), 2);
    assert!(close(lora.dice_per_fold[0].dice.mean, 0.30));
    assert_eq!(lora.dice_per_fold[1].dice.n, 1);
    assert!(lora.dice_per_fold[1].dice.sd.is_nan());
    assert!(!lora.complete && dora.complete);
    assert_eq!((lora.folds_done, lora.folds_expected), (2, 3));

    // Strata counts and means.
    assert_eq!(t.strata, ["<5", "5–15", "15–30", "≥30"]);
    let n: Vec<usize> = dora.strata.iter().map(|s| s.n_cases).collect();
    assert_eq!(n, [2, 2, 1, 1]);
    assert!(close(dora.strata[0].dice.mean, 0.48) && close(dora.strata[3].dice.mean, 0.36));
    let n: Vec<(usize, usize)> = lora.strata.iter().map(|s| (s.n_cases, s.dice.n)).collect();
    assert_eq!(n, [(2, 2), (1, 1), (1, 0), (0, 0)]);
    assert!(lora.strata[2].dice.mean.is_nan());

    // Parameters as % of the full model: 100 · 188720 / 482449, ...
    assert!(close(none.trainable_pct, 0.0));
    assert!(close(full.trainable_pct, 39.117088023811846));
    assert!(close(lora.trainable_pct, 4.178680026282571));
    assert!(close(dora.trainable_pct, 16.76114988320009));

    // Volume agreement: dora's prediction is truth ± 1 mL alternately: bias 0, SD √(6/5),
    // limits ±1.96·1.0954 = ±2.147072425420251. The others predict exactly.
    let ba = dora.agreement.bland_altman;
    assert!(
        close(ba.bias, 0.0) && close(ba.upper, 2.147072425420251),
        "{ba:?}"
    );
    assert!(close(full.agreement.pearson_r, 1.0) && close(full.agreement.icc2_1, 1.0));
    assert!(dora.agreement.pearson_r < 1.0 && dora.agreement.pearson_r > 0.99);

    // Wilcoxon, exact null (no ties, no zeros), scipy.stats.wilcoxon's two-sided p:
    // - full vs none, dora vs none: 6 positive differences, W+ = 21: p = 2 · 1/64 = 0.03125;
    // - dora vs full: differences .05 −.01 .03 .02 .04 .06, W− = 1: p = 2 · 2/64 = 0.0625;
    // - lora vs none (+.05 ×3, float noise breaks the ties) and vs full (−.05 −.07 −.11),
    //   3 pairs (e is NaN and dropped): p = 2 · 1/8 = 0.25.
    // Holm over the 5 in table order [0.03125, 0.25, 0.25, 0.03125, 0.0625]:
    // 5·0.03125 = 0.15625, max(4·0.03125, ·) = 0.15625, 3·0.0625 = 0.1875, 2·0.25 = 0.5, 0.5.
    let t_full_none = full.vs_none.as_ref().unwrap();
    let t_lora_none = lora.vs_none.as_ref().unwrap();
    let t_lora_full = lora.vs_full.as_ref().unwrap();
    let t_dora_none = dora.vs_none.as_ref().unwrap();
    let t_dora_full = dora.vs_full.as_ref().unwrap();
    for (test, p, holm, n) in [
        (t_full_none, 0.03125, 0.15625, 6),
        (t_lora_none, 0.25, 0.5, 3),
        (t_lora_full, 0.25, 0.5, 3),
        (t_dora_none, 0.03125, 0.15625, 6),
        (t_dora_full, 0.0625, 0.1875, 6),
    ] {
        assert!(close(test.p_value, p), "{test:?}");
        assert!(close(test.p_holm, holm), "{test:?}");
        assert_eq!(test.n, n, "{test:?}");
    }
    assert_eq!(t_dora_full.against, "full decoder");
    assert!(close(t_lora_full.mean_diff, -0.23 / 3.0));
    assert!(none.vs_none.is_none() && full.vs_full.is_none());

    // Best: every kind has one cell; dora-c is best overall.
    assert!(t.rows.iter().all(|r| r.best_of_kind));
    assert_eq!(t.best_overall().unwrap().cell, "dora-c decoder r16");
}

/// Checks a PNG: decodes, has the stated size and more than one distinct pixel colour.
fn check_png(path: &Path, (w, h): (u32, u32)) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (w, h), "{}", path.display());
    let bpp = info.color_type.samples();
    let colours: HashSet<&[u8]> = buf[..info.buffer_size()].chunks(bpp).collect();
    assert!(colours.len() > 1, "{} is blank", path.display());
}

/// Checks an SVG: the root element with the stated size, and each label present (as plotters
/// escapes text).
fn check_svg(path: &Path, (w, h): (u32, u32), labels: &[String]) {
    let svg = std::fs::read_to_string(path).unwrap();
    let root = &svg[svg.find("<svg").unwrap()..];
    let root = &root[..root.find('>').unwrap()];
    assert!(
        root.contains(&format!("width=\"{w}\"")) && root.contains(&format!("height=\"{h}\"")),
        "{root}"
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.matches("<text").count() > 5,
        "{} has no text",
        path.display()
    );
    for label in labels {
        let escaped = label
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&apos;");
        assert!(
            svg.contains(&escaped),
            "{} lacks `{escaped}`",
            path.display()
        );
    }
}

const SMALL: ChartConfig = ChartConfig {
    width: 480,
    height: 320,
};

#[test]
fn every_file_and_chart_is_written_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let formats = [Format::Markdown, Format::Html, Format::Csv, Format::Tex];
    let paths = report::write_report_with(
        &fixture("files"),
        dir.path(),
        &formats,
        &Strata::default(),
        SMALL,
    )
    .unwrap();
    let names: Vec<&str> = paths.charts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "dice_vs_rank",
            "dice_vs_params",
            "dice_by_stratum",
            "volume_scatter",
            "bland_altman",
            "loss_curves"
        ]
    );
    for c in &paths.charts {
        check_png(&c.png, (SMALL.width, SMALL.height));
        check_svg(&c.svg, (SMALL.width, SMALL.height), &c.series);
        assert!(!c.series.is_empty(), "{} has no series", c.name);
    }
    // Each chart's series are the ones the fixture calls for.
    let series = |name: &str| &paths.charts.iter().find(|c| c.name == name).unwrap().series;
    assert_eq!(
        *series("dice_vs_rank"),
        ["dora-c", "full decoder", "lora-c", "none"]
    );
    assert_eq!(
        *series("dice_vs_params"),
        ["full", "lora-c", "dora-c", "none", "Pareto front"]
    );
    assert_eq!(series("bland_altman")[0], "dora-c decoder r16");
    assert_eq!(series("loss_curves").len(), 3);

    let md = std::fs::read_to_string(paths.markdown.as_ref().unwrap()).unwrap();
    assert!(md.contains("| dora-c decoder r16 | 6 | 0.532 ± 0.180 | 0: 0.415, 1: 0.665, 2: 0.515 | 3/3 complete | 80864 | 16.76% | +0.182 (p=0.156) | +0.032 (p=0.188) | best overall |"), "{md}");
    assert!(
        md.contains("| lora-c decoder r4 | 4 | 0.350 ± 0.100 |"),
        "{md}"
    );
    assert!(md.contains("2/3 partial"));
    assert!(
        md.contains("| none | 0.350 ± 0.187 (n=2) |") || md.contains("| none | 0.350"),
        "{md}"
    );
    assert!(md.contains(
        "![Dice vs rank per module (mean ± SD over test cases)](charts/dice_vs_rank.png)"
    ));

    let html = std::fs::read_to_string(paths.html.as_ref().unwrap()).unwrap();
    assert_eq!(html.matches("<svg").count(), 6);
    // Self-contained: nothing is fetched (the SVG namespace URI is a name, not a fetch).
    for tag in [
        "<script", "<img", "<link", "src=", "href=", "@import", "url(",
    ] {
        assert!(!html.contains(tag), "index.html contains {tag}");
    }

    let csv_names: Vec<String> = paths
        .csv
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        csv_names,
        ["cells.csv", "folds.csv", "strata.csv", "agreement.csv"]
    );
    let cells = std::fs::read_to_string(&paths.csv[0]).unwrap();
    let lines: Vec<&str> = cells.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("cell,kind,module,rank,alpha,n_cases,dice_n,dice_mean,dice_sd,"));
    assert!(
        lines[4].starts_with("dora-c decoder r16,dora-c,decoder,16,,6,6,0.531666"),
        "{}",
        lines[4]
    );
    let strata = std::fs::read_to_string(&paths.csv[2]).unwrap();
    assert!(
        strata.contains("lora-c decoder r4,15–30,1,0,,\n"),
        "{strata}"
    );
    assert_eq!(paths.tex.len(), 3);
    let tex = std::fs::read_to_string(&paths.tex[0]).unwrap();
    assert!(
        tex.contains("\\begin{tabular}") && tex.contains("0.532 $\\pm$ 0.180"),
        "{tex}"
    );

    let term = report::terminal_table(&paths.table);
    assert!(
        term.contains("dora-c decoder r16") && term.contains("Best overall: dora-c decoder r16")
    );
}

#[test]
fn names_with_markup_are_escaped() {
    let mut input = fixture(r#"night <b>&"q"'"#);
    for c in &mut input.cells {
        if c.module.is_some() {
            c.module = Some(r#"dec<1>&"x""#.into());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = report::write_report_with(
        &input,
        dir.path(),
        &[Format::Markdown, Format::Html],
        &Strata::default(),
        SMALL,
    )
    .unwrap();
    let html = std::fs::read_to_string(paths.html.unwrap()).unwrap();
    assert!(!html.contains("<b>") && !html.contains("dec<1>"));
    assert!(
        html.contains("night &lt;b&gt;&amp;&quot;q&quot;&#39;"),
        "title not escaped"
    );
    assert!(html.contains("<td>full dec&lt;1&gt;&amp;&quot;x&quot;</td>"));
    // plotters escapes SVG text; the inline SVG in the page carries the escaped label too.
    assert!(html.contains("module dec&lt;1&gt;&amp;&quot;x&quot;"));
    for c in &paths.charts {
        let svg = std::fs::read_to_string(&c.svg).unwrap();
        assert!(!svg.contains("dec<1>"), "{} has a raw name", c.name);
    }
    let md = std::fs::read_to_string(paths.markdown.unwrap()).unwrap();
    assert!(md.contains("full dec&lt;1&gt;&amp;&quot;x&quot;") && !md.contains("dec<1>"));
}

fn write_json(dir: &Path, name: &str, input: &ReportInput) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(input).unwrap()).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn report_cli_writes_the_folder_and_prints_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_json(dir.path(), "sweep.json", &fixture("cli"));
    let out = util::ranksweep(
        dir.path(),
        &[
            "report", "--input", &input, "--out", "rep", "--format", "csv,md",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", util::stderr(&out));
    let stdout = util::stdout(&out);
    assert!(
        stdout.contains("dora-c decoder r16") && stdout.contains("0.532 ± 0.180"),
        "{stdout}"
    );
    assert!(dir.path().join("rep/report.md").is_file());
    assert!(dir.path().join("rep/csv/cells.csv").is_file());
    assert!(dir.path().join("rep/charts/loss_curves.png").is_file());
    assert!(!dir.path().join("rep/index.html").exists());

    let bad = util::ranksweep(
        dir.path(),
        &[
            "report", "--input", &input, "--out", "rep", "--format", "md,pdf",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        util::stderr(&bad).contains("unknown `pdf`"),
        "{}",
        util::stderr(&bad)
    );
    let missing = util::ranksweep(
        dir.path(),
        &["report", "--input", "nope.json", "--out", "x"],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(util::stderr(&missing).contains("report input nope.json"));
}

#[test]
fn compare_cli_flags_a_planted_regression_only() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("base");
    let a = write_json(dir.path(), "a.json", &base);
    let same = util::ranksweep(dir.path(), &["compare", "--baseline", &a, "--current", &a]);
    assert_eq!(same.status.code(), Some(0), "{}", util::stdout(&same));
    assert!(util::stdout(&same).contains("no regression"));

    // Plant a regression: dora-c loses 0.1 Dice on every case.
    let mut worse = fixture("worse");
    for c in &mut worse.cells {
        if c.kind == AdaptationKind::DoraC {
            for k in &mut c.cases {
                k.dice -= 0.1;
            }
        }
    }
    let b = write_json(dir.path(), "b.json", &worse);
    let out = util::ranksweep(dir.path(), &["compare", "--baseline", &a, "--current", &b]);
    assert_eq!(out.status.code(), Some(1), "{}", util::stdout(&out));
    let md = util::stdout(&out);
    assert!(
        md.contains("REGRESSION") && md.contains("| dora-c decoder r16 | 0.532 | 0.432 | -0.100 |"),
        "{md}"
    );
    let json = util::ranksweep(
        dir.path(),
        &["compare", "--baseline", &a, "--current", &b, "--json"],
    );
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&util::stdout(&json)).unwrap();
    assert_eq!(v["regressed"], true);
    // A huge tolerance forgives it.
    let lenient = util::ranksweep(
        dir.path(),
        &[
            "compare",
            "--baseline",
            &a,
            "--current",
            &b,
            "--tolerance",
            "0.5",
        ],
    );
    assert_eq!(lenient.status.code(), Some(0));
    let bad = util::ranksweep(
        dir.path(),
        &[
            "compare",
            "--baseline",
            &a,
            "--current",
            &b,
            "--tolerance",
            "-1",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn an_empty_sweep_and_a_cell_whose_folds_all_failed_still_render() {
    let dir = tempfile::tempdir().unwrap();
    let formats = [Format::Markdown, Format::Html, Format::Csv, Format::Tex];
    let empty = ReportInput {
        ran_on: Vec::new(),
        sweep: "empty".into(),
        cells: vec![],
    };
    let paths =
        report::write_report_with(&empty, dir.path(), &formats, &Strata::default(), SMALL).unwrap();
    assert_eq!(paths.charts.len(), 6);
    for c in &paths.charts {
        check_png(&c.png, (SMALL.width, SMALL.height));
    }
    assert!(report::terminal_table(&paths.table).contains("No cell has a defined Dice yet."));

    let mut input = fixture("failed");
    let mut dead = cell(
        AdaptationKind::CpLora,
        Some("decoder"),
        Some(8),
        4_768,
        &[],
        [0.0; 6],
    );
    dead.folds_done = 0;
    dead.folds_failed = 3;
    dead.loss_curves.clear();
    input.cells.push(dead);
    let paths = report::write_report_with(
        &input,
        dir.path().join("failed").as_path(),
        &formats,
        &Strata::default(),
        SMALL,
    )
    .unwrap();
    let row = paths
        .table
        .rows
        .iter()
        .find(|r| r.cell == "cp-lora decoder r8")
        .unwrap();
    assert_eq!(row.n_cases, 0);
    assert!(row.dice.mean.is_nan() && !row.best_of_kind);
    // No pairs: the test's p is NaN and does not count in Holm's m (still 5 tests).
    assert!(row.vs_none.as_ref().unwrap().p_value.is_nan());
    let dora = paths
        .table
        .rows
        .iter()
        .find(|r| r.cell == "dora-c decoder r16")
        .unwrap();
    assert!(close(dora.vs_none.as_ref().unwrap().p_holm, 0.15625));
    let md = std::fs::read_to_string(paths.markdown.unwrap()).unwrap();
    assert!(
        md.contains("| cp-lora decoder r8 | 0 | – ± – |  | 0/3 partial, 3 failed |"),
        "{md}"
    );
}
