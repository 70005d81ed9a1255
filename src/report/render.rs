//! Text renderings of the [`Table`]: Markdown, HTML, LaTeX, CSV and the terminal (comfy-table).
//!
//! The three display tables (main, strata, agreement) are built once as a [`Grid`] of
//! formatted strings, then written in each format with that format's escaping; CSV files carry
//! the raw numbers instead (full precision, empty for NaN), one row per cell, with strata and
//! folds in long format so that any number of them fits.

use super::table::{PairedTest, Row, Table};

/// A display table: a title, a header and rows of already formatted cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// 3 decimals, "–" for NaN.
pub fn fmt3(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "–".into()
    }
}

/// A p-value: 3 decimals, scientific below 0.001, "–" for NaN.
pub fn fmt_p(p: f64) -> String {
    if !p.is_finite() {
        "–".into()
    } else if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

fn fmt_test(t: &Option<PairedTest>) -> String {
    match t {
        None => String::new(),
        Some(t) => {
            format!("{:+.3} (p={}){}", t.mean_diff, fmt_p(t.p_holm), t.marker()).replace("NaN", "–")
        }
    }
}

fn best_text(r: &Row) -> String {
    match (r.best_overall, r.best_of_kind) {
        (true, _) => "best overall".into(),
        (false, true) => format!("best {}", r.kind),
        _ => String::new(),
    }
}

/// The main table: Dice pooled and per fold, completeness, parameters, tests, best cells.
pub fn main_grid(t: &Table) -> Grid {
    let header = [
        "cell",
        "n",
        "Dice mean ± SD",
        "Dice per fold",
        "folds",
        "trainable",
        "% of model",
        "vs none Δ (p Holm)",
        "vs full Δ (p Holm)",
        "best",
    ];
    let rows = t
        .rows
        .iter()
        .map(|r| {
            let folds = r
                .dice_per_fold
                .iter()
                .map(|f| format!("{}: {}", f.fold, fmt3(f.dice.mean)))
                .collect::<Vec<_>>()
                .join(", ");
            let status = if r.complete { "complete" } else { "partial" };
            let failed = if r.folds_failed > 0 {
                format!(", {} failed", r.folds_failed)
            } else {
                String::new()
            };
            vec![
                r.cell.clone(),
                r.n_cases.to_string(),
                format!("{} ± {}", fmt3(r.dice.mean), fmt3(r.dice.sd)),
                folds,
                format!("{}/{} {status}{failed}", r.folds_done, r.folds_expected),
                r.trainable_params.to_string(),
                format!("{:.2}%", r.trainable_pct),
                fmt_test(&r.vs_none),
                fmt_test(&r.vs_full),
                best_text(r),
            ]
        })
        .collect();
    Grid {
        title: format!("Dice per cell, sweep {}", t.sweep),
        header: header.iter().map(|s| s.to_string()).collect(),
        rows,
    }
}

/// Dice per annotated-volume stratum, with the number of cases in each.
pub fn strata_grid(t: &Table) -> Grid {
    let mut header = vec!["cell".to_string()];
    header.extend(t.strata.iter().map(|s| format!("{s} mL")));
    let rows = t
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![r.cell.clone()];
            row.extend(r.strata.iter().map(|s| {
                format!(
                    "{} ± {} (n={})",
                    fmt3(s.dice.mean),
                    fmt3(s.dice.sd),
                    s.n_cases
                )
            }));
            row
        })
        .collect();
    Grid {
        title: "Dice per annotated-volume stratum".into(),
        header,
        rows,
    }
}

/// Predicted vs annotated volume: Pearson r, ICCs, Bland–Altman bias and 95% limits.
pub fn agreement_grid(t: &Table) -> Grid {
    let header = [
        "cell",
        "n",
        "Pearson r",
        "ICC(3,1)",
        "ICC(2,1)",
        "bias mL",
        "95% limits mL",
    ];
    let rows = t
        .rows
        .iter()
        .map(|r| {
            let a = &r.agreement;
            let ba = &a.bland_altman;
            vec![
                r.cell.clone(),
                a.n.to_string(),
                fmt3(a.pearson_r),
                fmt3(a.icc3_1),
                fmt3(a.icc2_1),
                fmt3(ba.bias),
                format!("{} to {}", fmt3(ba.lower), fmt3(ba.upper)),
            ]
        })
        .collect();
    Grid {
        title: "Volume agreement (predicted − annotated)".into(),
        header: header.iter().map(|s| s.to_string()).collect(),
        rows,
    }
}

/// The three display tables in report order.
pub fn grids(t: &Table) -> Vec<Grid> {
    vec![main_grid(t), strata_grid(t), agreement_grid(t)]
}

/// Escapes text for HTML content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a Markdown table cell: HTML specials as entities (Markdown passes raw HTML
/// through), `|` and `\` with a backslash, newlines as spaces.
pub fn escape_md(s: &str) -> String {
    escape_html(s)
        .replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('\n', " ")
}

/// Escapes text for LaTeX, mapping the report's few non-ASCII symbols to math.
pub fn escape_tex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '<' => out.push_str("\\textless{}"),
            '>' => out.push_str("\\textgreater{}"),
            '±' => out.push_str("$\\pm$"),
            '≥' => out.push_str("$\\geq$"),
            '–' => out.push_str("--"),
            '−' => out.push_str("$-$"),
            'α' => out.push_str("$\\alpha$"),
            'Δ' => out.push_str("$\\Delta$"),
            c => out.push(c),
        }
    }
    out
}

impl Grid {
    /// A GitHub-flavoured Markdown table under a `###` title.
    pub fn to_markdown(&self) -> String {
        let line = |cells: &[String]| {
            let escaped: Vec<String> = cells.iter().map(|c| escape_md(c)).collect();
            format!("| {} |\n", escaped.join(" | "))
        };
        let mut s = format!("### {}\n\n", escape_md(&self.title));
        s.push_str(&line(&self.header));
        s.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }

    /// An HTML `<table>` under an `<h3>` title.
    pub fn to_html(&self) -> String {
        let mut s = format!(
            "<h3>{}</h3>\n<table>\n<thead><tr>",
            escape_html(&self.title)
        );
        for h in &self.header {
            s.push_str(&format!("<th>{}</th>", escape_html(h)));
        }
        s.push_str("</tr></thead>\n<tbody>\n");
        for r in &self.rows {
            s.push_str("<tr>");
            for c in r {
                s.push_str(&format!("<td>{}</td>", escape_html(c)));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</tbody>\n</table>\n");
        s
    }

    /// A standalone-includable LaTeX `table` with booktabs rules.
    pub fn to_latex(&self) -> String {
        let mut s = String::from("% needs \\usepackage{booktabs}\n\\begin{table}\n\\centering\n");
        s.push_str(&format!("\\caption{{{}}}\n", escape_tex(&self.title)));
        s.push_str(&format!(
            "\\begin{{tabular}}{{l{}}}\n\\toprule\n",
            "r".repeat(self.header.len().saturating_sub(1))
        ));
        let line = |cells: &[String]| {
            let escaped: Vec<String> = cells.iter().map(|c| escape_tex(c)).collect();
            format!("{} \\\\\n", escaped.join(" & "))
        };
        s.push_str(&line(&self.header));
        s.push_str("\\midrule\n");
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s.push_str("\\bottomrule\n\\end{tabular}\n\\end{table}\n");
        s
    }

    /// A terminal table (comfy-table, UTF-8 borders, wrapped to the terminal when known).
    pub fn to_terminal(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
            .set_header(&self.header);
        for r in &self.rows {
            t.add_row(r);
        }
        format!("{}\n{t}\n", self.title)
    }
}

/// One CSV field: quoted when it holds a comma, quote or newline (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A number at full precision, empty for NaN.
fn csv_num(v: f64) -> String {
    if v.is_finite() {
        v.to_string()
    } else {
        String::new()
    }
}

fn csv(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut s = header.join(",");
    s.push('\n');
    for r in rows {
        let fields: Vec<String> = r.iter().map(|f| csv_field(f)).collect();
        s.push_str(&fields.join(","));
        s.push('\n');
    }
    s
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_default()
}

fn test_fields(t: &Option<PairedTest>) -> Vec<String> {
    match t {
        None => vec![String::new(); 5],
        Some(t) => vec![
            t.against.clone(),
            t.n.to_string(),
            csv_num(t.mean_diff),
            csv_num(t.p_value),
            csv_num(t.p_holm),
        ],
    }
}

/// `(file name, contents)` of every CSV table: `cells.csv` (one row per cell), `folds.csv`
/// and `strata.csv` (one row per cell and fold / stratum), `agreement.csv`.
pub fn csv_files(t: &Table) -> Vec<(&'static str, String)> {
    let cells = csv(
        &[
            "cell",
            "kind",
            "module",
            "rank",
            "alpha",
            "n_cases",
            "dice_n",
            "dice_mean",
            "dice_sd",
            "folds_done",
            "folds_expected",
            "folds_failed",
            "complete",
            "trainable_params",
            "total_params",
            "trainable_pct",
            "vs_none",
            "vs_none_n",
            "vs_none_mean_diff",
            "vs_none_p",
            "vs_none_p_holm",
            "vs_full",
            "vs_full_n",
            "vs_full_mean_diff",
            "vs_full_p",
            "vs_full_p_holm",
            "best_of_kind",
            "best_overall",
        ],
        t.rows
            .iter()
            .map(|r| {
                let mut f = vec![
                    r.cell.clone(),
                    r.kind.to_string(),
                    opt(&r.module),
                    opt(&r.rank),
                    opt(&r.alpha),
                    r.n_cases.to_string(),
                    r.dice.n.to_string(),
                    csv_num(r.dice.mean),
                    csv_num(r.dice.sd),
                    r.folds_done.to_string(),
                    r.folds_expected.to_string(),
                    r.folds_failed.to_string(),
                    r.complete.to_string(),
                    r.trainable_params.to_string(),
                    r.total_params.to_string(),
                    csv_num(r.trainable_pct),
                ];
                f.extend(test_fields(&r.vs_none));
                f.extend(test_fields(&r.vs_full));
                f.push(r.best_of_kind.to_string());
                f.push(r.best_overall.to_string());
                f
            })
            .collect(),
    );
    let folds = csv(
        &["cell", "fold", "dice_n", "dice_mean", "dice_sd"],
        t.rows
            .iter()
            .flat_map(|r| {
                r.dice_per_fold.iter().map(|f| {
                    vec![
                        r.cell.clone(),
                        f.fold.to_string(),
                        f.dice.n.to_string(),
                        csv_num(f.dice.mean),
                        csv_num(f.dice.sd),
                    ]
                })
            })
            .collect(),
    );
    let strata = csv(
        &[
            "cell",
            "stratum",
            "n_cases",
            "dice_n",
            "dice_mean",
            "dice_sd",
        ],
        t.rows
            .iter()
            .flat_map(|r| {
                r.strata.iter().map(|s| {
                    vec![
                        r.cell.clone(),
                        s.label.clone(),
                        s.n_cases.to_string(),
                        s.dice.n.to_string(),
                        csv_num(s.dice.mean),
                        csv_num(s.dice.sd),
                    ]
                })
            })
            .collect(),
    );
    let agreement = csv(
        &[
            "cell",
            "n",
            "pearson_r",
            "spearman_rho",
            "icc3_1",
            "icc2_1",
            "ba_bias_ml",
            "ba_sd_ml",
            "ba_lower_ml",
            "ba_upper_ml",
        ],
        t.rows
            .iter()
            .map(|r| {
                let a = &r.agreement;
                vec![
                    r.cell.clone(),
                    a.n.to_string(),
                    csv_num(a.pearson_r),
                    csv_num(a.spearman_rho),
                    csv_num(a.icc3_1),
                    csv_num(a.icc2_1),
                    csv_num(a.bland_altman.bias),
                    csv_num(a.bland_altman.sd),
                    csv_num(a.bland_altman.lower),
                    csv_num(a.bland_altman.upper),
                ]
            })
            .collect(),
    );
    vec![
        ("cells.csv", cells),
        ("folds.csv", folds),
        ("strata.csv", strata),
        ("agreement.csv", agreement),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_per_format() {
        let name = r#"dec<1> & "x" | y_2"#;
        assert_eq!(escape_html(name), "dec&lt;1&gt; &amp; &quot;x&quot; | y_2");
        assert_eq!(escape_md(name), "dec&lt;1&gt; &amp; &quot;x&quot; \\| y_2");
        assert_eq!(escape_tex("a_b & 5–15 ±"), "a\\_b \\& 5--15 $\\pm$");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn numbers_format_nan_as_a_dash() {
        assert_eq!(fmt3(0.12345), "0.123");
        assert_eq!(fmt3(f64::NAN), "–");
        assert_eq!(fmt_p(0.0625), "0.062");
        assert_eq!(fmt_p(0.00012), "1.2e-4");
        assert_eq!(csv_num(f64::NAN), "");
    }

    #[test]
    fn grid_renders_in_every_format() {
        let g = Grid {
            title: "T".into(),
            header: vec!["a".into(), "b".into()],
            rows: vec![vec!["x<y".into(), "1".into()]],
        };
        assert_eq!(
            g.to_markdown(),
            "### T\n\n| a | b |\n|---|---|\n| x&lt;y | 1 |\n"
        );
        assert!(g.to_html().contains("<td>x&lt;y</td><td>1</td>"));
        assert!(g.to_latex().contains("x\\textless{}y & 1 \\\\"));
        assert!(g.to_terminal().contains("x<y"));
    }
}
