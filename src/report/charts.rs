//! The report's charts, each drawn once per backend into an SVG string and a PNG file.
//!
//! | file | what |
//! |---|---|
//! | `dice_vs_rank` | Dice vs rank (log2 axis), one panel per module, one line per adapter kind, SD error bars, bands (mean ± SD) for `none` and for `full` on that module |
//! | `dice_vs_params` | Dice vs trainable parameters (log axis), points per kind, the Pareto front, `none` as a line |
//! | `dice_by_stratum` | Dice per annotated-volume stratum, bars grouped by kind (each kind's best cell) |
//! | `volume_scatter` | predicted vs annotated mL of each kind's best cell, with the identity line |
//! | `bland_altman` | Bland–Altman plot of the best cell overall: bias and 95% limits |
//! | `loss_curves` | training loss per kind (each kind's best cell with curves, mean over folds per step) |
//!
//! Design: a chart is a struct of prepared numbers implementing [`Chart`], whose `draw` is
//! generic over the plotters backend, so the SVG and the PNG come from the same code. Text
//! uses DejaVu Sans, compiled into the binary and registered with plotters' `ab_glyph` font
//! table, so rendering needs no system fonts. plotters escapes text in SVG (`<`, `&`, quotes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::table::{Row, Table};
use super::{ReportError, ReportInput};
use crate::model::AdaptationKind;

/// DejaVu Sans 2.37 (Bitstream Vera license, see assets/fonts/LICENSE-DejaVu.txt).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The family name every chart asks for; registered to [`FONT`].
const FAMILY: &str = "sans-serif";

/// Chart size in pixels (SVG user units and PNG pixels alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChartConfig {
    pub width: u32,
    pub height: u32,
}

impl Default for ChartConfig {
    fn default() -> Self {
        ChartConfig {
            width: 960,
            height: 600,
        }
    }
}

/// A chart written to disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartFile {
    /// File stem: `dice_vs_rank`, ...
    pub name: String,
    /// Caption, also the alt text.
    pub title: String,
    pub svg: PathBuf,
    pub png: PathBuf,
    /// The SVG text (inlined into `index.html`).
    pub svg_text: String,
    /// Legend labels of the chart's series.
    pub series: Vec<String>,
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A chart: a name, a caption, its legend labels, and drawing on any backend.
pub trait Chart {
    fn name(&self) -> &'static str;
    fn title(&self) -> String;
    fn series(&self) -> Vec<String>;
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

fn register_font() -> Result<(), ReportError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ReportError::Chart {
            chart: "(font)".into(),
            reason: "the embedded DejaVu Sans could not be parsed".into(),
        })
    }
}

/// A fixed colour per kind, so a kind looks the same in every chart.
pub fn kind_color(kind: AdaptationKind) -> RGBColor {
    match kind {
        AdaptationKind::None => RGBColor(110, 110, 110),
        AdaptationKind::Full => RGBColor(20, 20, 20),
        AdaptationKind::LoraC => RGBColor(31, 119, 180),
        AdaptationKind::ConvLora => RGBColor(44, 160, 44),
        AdaptationKind::CpLora => RGBColor(214, 39, 40),
        AdaptationKind::DoraC => RGBColor(148, 103, 189),
        AdaptationKind::ConvDora => RGBColor(255, 127, 14),
        AdaptationKind::CpDora => RGBColor(23, 190, 207),
    }
}

fn font(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().into()
}

/// The frame every single-panel chart shares: title, margins and axis label areas.
fn frame<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    y_label_area: u32,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(root);
    b.caption(title, font(22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(y_label_area);
    b
}

/// The legend box every chart draws, in one style.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    font_size: u32,
    position: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .label_font(font(font_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(position)
        .draw()
}

/// A legend entry for a line series.
fn legend_mark(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
}

/// Draws `chart` as SVG (kept in memory and written) and PNG under `dir`.
pub fn render<C: Chart>(chart: &C, dir: &Path, cfg: ChartConfig) -> Result<ChartFile, ReportError> {
    register_font()?;
    let name = chart.name();
    let fail = |reason: String| ReportError::Chart {
        chart: name.to_string(),
        reason,
    };
    let size = (cfg.width, cfg.height);
    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        chart.draw(&root).map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let svg = dir.join(format!("{name}.svg"));
    std::fs::write(&svg, &svg_text).map_err(|source| ReportError::Write {
        path: svg.clone(),
        source,
    })?;
    let png = dir.join(format!("{name}.png"));
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        chart.draw(&root).map_err(|e| fail(e.to_string()))?;
        root.present()
            .map_err(|e| fail(format!("writing {}: {e}", png.display())))?;
    }
    Ok(ChartFile {
        name: name.to_string(),
        title: chart.title(),
        svg,
        png,
        svg_text,
        series: chart.series(),
    })
}

/// Draws every chart of the report into `dir` (created if missing).
pub fn write_charts(
    table: &Table,
    input: &ReportInput,
    dir: &Path,
    cfg: ChartConfig,
) -> Result<Vec<ChartFile>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(vec![
        render(&DiceVsRank::new(table), dir, cfg)?,
        render(&DiceVsParams::new(table), dir, cfg)?,
        render(&DiceByStratum::new(table), dir, cfg)?,
        render(&VolumeScatter::new(table, input), dir, cfg)?,
        render(&BlandAltmanPlot::new(table, input), dir, cfg)?,
        render(&LossCurves::new(table, input), dir, cfg)?,
    ])
}

/// The y range of Dice, with room for error bars.
const DICE_RANGE: std::ops::Range<f64> = 0.0..1.05;

/// A horizontal mean ± SD band.
#[derive(Debug, Clone)]
struct Band {
    label: String,
    mean: f64,
    sd: f64,
    color: RGBColor,
}

impl Band {
    fn of(row: &Row) -> Option<Band> {
        (!row.dice.mean.is_nan()).then(|| Band {
            label: row.cell.clone(),
            mean: row.dice.mean,
            sd: if row.dice.sd.is_nan() {
                0.0
            } else {
                row.dice.sd
            },
            color: kind_color(row.kind),
        })
    }
}

/// Points per series label with its colour, in legend order.
type Groups = Vec<(String, RGBColor, Vec<(f64, f64)>)>;

/// Lines of (x, mean, sd) per series label, in order.
type Lines = Vec<(String, RGBColor, Vec<(f64, f64, f64)>)>;

struct Panel {
    module: String,
    bands: Vec<Band>,
    lines: Lines,
}

/// Dice vs rank, one panel per module.
pub struct DiceVsRank {
    panels: Vec<Panel>,
    rank_range: (f64, f64),
}

impl DiceVsRank {
    pub fn new(t: &Table) -> Self {
        let none = t
            .rows
            .iter()
            .find(|r| r.kind == AdaptationKind::None)
            .and_then(Band::of);
        let mut modules: Vec<String> = t
            .rows
            .iter()
            .filter(|r| r.kind.is_adapter())
            .filter_map(|r| r.module.clone())
            .collect();
        modules.sort();
        modules.dedup();
        if modules.is_empty() {
            modules.push("(no adapter cells)".into());
        }
        let panels = modules
            .into_iter()
            .map(|module| {
                let mut bands: Vec<Band> = none.iter().cloned().collect();
                bands.extend(
                    t.rows
                        .iter()
                        .filter(|r| {
                            r.kind == AdaptationKind::Full && r.module.as_ref() == Some(&module)
                        })
                        .filter_map(Band::of),
                );
                let lines = AdaptationKind::ADAPTERS
                    .iter()
                    .filter_map(|&kind| {
                        let mut pts: Vec<(f64, f64, f64)> = t
                            .rows
                            .iter()
                            .filter(|r| r.kind == kind && r.module.as_ref() == Some(&module))
                            .filter_map(|r| Some((r.rank? as f64, r.dice.mean, r.dice.sd)))
                            .filter(|p| !p.1.is_nan())
                            .collect();
                        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                        (!pts.is_empty()).then(|| (kind.name().to_string(), kind_color(kind), pts))
                    })
                    .collect();
                Panel {
                    module,
                    bands,
                    lines,
                }
            })
            .collect::<Vec<_>>();
        let ranks: Vec<f64> = panels
            .iter()
            .flat_map(|p| p.lines.iter().flat_map(|l| l.2.iter().map(|q| q.0)))
            .collect();
        let lo = ranks.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ranks.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let rank_range = if lo.is_finite() {
            (lo / 1.5, hi * 1.5)
        } else {
            (1.0, 128.0)
        };
        DiceVsRank { panels, rank_range }
    }
}

impl Chart for DiceVsRank {
    fn name(&self) -> &'static str {
        "dice_vs_rank"
    }
    fn title(&self) -> String {
        "Dice vs rank per module (mean ± SD over test cases)".into()
    }
    fn series(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .panels
            .iter()
            .flat_map(|p| {
                p.bands
                    .iter()
                    .map(|b| b.label.clone())
                    .chain(p.lines.iter().map(|l| l.0.clone()))
            })
            .collect();
        s.sort();
        s.dedup();
        s
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let root = root.titled(&self.title(), font(22))?;
        let n = self.panels.len();
        let cols = n.min(3);
        let rows = n.div_ceil(cols);
        let areas = root.split_evenly((rows, cols));
        let (x0, x1) = self.rank_range;
        for (panel, area) in self.panels.iter().zip(&areas) {
            let mut chart = ChartBuilder::on(area)
                .caption(format!("module {}", panel.module), font(16))
                .margin(8)
                .x_label_area_size(36)
                .y_label_area_size(44)
                .build_cartesian_2d((x0..x1).log_scale().base(2.0), DICE_RANGE)?;
            chart
                .configure_mesh()
                .x_desc("rank")
                .y_desc("Dice")
                .label_style(font(12))
                .axis_desc_style(font(13))
                .x_label_formatter(&|v| format!("{v:.0}"))
                .draw()?;
            for b in &panel.bands {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, b.mean - b.sd), (x1, b.mean + b.sd)],
                    b.color.mix(0.12).filled(),
                )))?;
                chart
                    .draw_series(LineSeries::new(
                        [(x0, b.mean), (x1, b.mean)],
                        b.color.stroke_width(2),
                    ))?
                    .label(b.label.clone())
                    .legend(legend_mark(b.color));
            }
            for (label, color, pts) in &panel.lines {
                let color = *color;
                chart
                    .draw_series(LineSeries::new(
                        pts.iter().map(|p| (p.0, p.1)),
                        color.stroke_width(2),
                    ))?
                    .label(label.clone())
                    .legend(legend_mark(color));
                chart.draw_series(pts.iter().map(|p| {
                    let sd = if p.2.is_nan() { 0.0 } else { p.2 };
                    ErrorBar::new_vertical(p.0, p.1 - sd, p.1, p.1 + sd, color.filled(), 8)
                }))?;
                chart.draw_series(
                    pts.iter()
                        .map(|p| Circle::new((p.0, p.1), 3, color.filled())),
                )?;
            }
            draw_legend(&mut chart, 11, SeriesLabelPosition::LowerRight)?;
        }
        Ok(())
    }
}

/// Dice vs trainable parameters with the Pareto front.
pub struct DiceVsParams {
    points: Vec<(AdaptationKind, Vec<(f64, f64)>)>,
    front: Vec<(f64, f64)>,
    none: Option<f64>,
}

/// The cells no other cell beats with as few or fewer parameters: sorted by parameters, the
/// points whose Dice exceeds every Dice before them.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = points.iter().copied().filter(|p| !p.1.is_nan()).collect();
    // Fewer parameters first; at equal counts the higher Dice first, so it alone enters.
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut front: Vec<(f64, f64)> = Vec::new();
    for p in sorted {
        if front.last().is_none_or(|last| p.1 > last.1) {
            front.push(p);
        }
    }
    front
}

impl DiceVsParams {
    pub fn new(t: &Table) -> Self {
        let mut points = Vec::new();
        for kind in AdaptationKind::ALL {
            let pts: Vec<(f64, f64)> = t
                .rows
                .iter()
                .filter(|r| r.kind == kind && r.trainable_params > 0 && !r.dice.mean.is_nan())
                .map(|r| (r.trainable_params as f64, r.dice.mean))
                .collect();
            if !pts.is_empty() {
                points.push((kind, pts));
            }
        }
        let all: Vec<(f64, f64)> = points.iter().flat_map(|p| p.1.iter().copied()).collect();
        let none = t
            .rows
            .iter()
            .find(|r| r.kind == AdaptationKind::None)
            .map(|r| r.dice.mean)
            .filter(|m| !m.is_nan());
        DiceVsParams {
            front: pareto_front(&all),
            points,
            none,
        }
    }
}

impl Chart for DiceVsParams {
    fn name(&self) -> &'static str {
        "dice_vs_params"
    }
    fn title(&self) -> String {
        "Dice vs trainable parameters, with the Pareto front".into()
    }
    fn series(&self) -> Vec<String> {
        let mut s: Vec<String> = self.points.iter().map(|p| p.0.name().to_string()).collect();
        if self.none.is_some() {
            s.push("none".into());
        }
        if !self.front.is_empty() {
            s.push("Pareto front".into());
        }
        s
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let xs: Vec<f64> = self
            .points
            .iter()
            .flat_map(|p| p.1.iter().map(|q| q.0))
            .collect();
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (x0, x1) = if lo.is_finite() {
            (lo / 2.0, hi * 2.0)
        } else {
            (1.0, 1e6)
        };
        let mut chart =
            frame(root, &self.title(), 50).build_cartesian_2d((x0..x1).log_scale(), DICE_RANGE)?;
        chart
            .configure_mesh()
            .x_desc("trainable parameters")
            .y_desc("Dice (mean over cases)")
            .label_style(font(13))
            .axis_desc_style(font(14))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        if let Some(m) = self.none {
            let c = kind_color(AdaptationKind::None);
            chart
                .draw_series(LineSeries::new([(x0, m), (x1, m)], c.stroke_width(2)))?
                .label("none")
                .legend(legend_mark(c));
        }
        if !self.front.is_empty() {
            // A step: a front point holds until the next one.
            let mut step = Vec::new();
            for (i, p) in self.front.iter().enumerate() {
                if i > 0 {
                    step.push((p.0, self.front[i - 1].1));
                }
                step.push(*p);
            }
            step.push((x1, self.front[self.front.len() - 1].1));
            let c = RGBColor(200, 0, 120);
            chart
                .draw_series(LineSeries::new(step, c.stroke_width(2)))?
                .label("Pareto front")
                .legend(legend_mark(c));
        }
        for (kind, pts) in &self.points {
            let c = kind_color(*kind);
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?
                .label(kind.name())
                .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
        }
        draw_legend(&mut chart, 12, SeriesLabelPosition::LowerRight)?;
        Ok(())
    }
}

/// Dice per stratum, bars grouped by kind (each kind's best cell).
pub struct DiceByStratum {
    strata: Vec<String>,
    /// (label, colour, mean per stratum)
    groups: Vec<(String, RGBColor, Vec<f64>)>,
}

impl DiceByStratum {
    pub fn new(t: &Table) -> Self {
        let groups = t
            .best_per_kind()
            .map(|r| {
                (
                    r.cell.clone(),
                    kind_color(r.kind),
                    r.strata.iter().map(|s| s.dice.mean).collect(),
                )
            })
            .collect();
        DiceByStratum {
            strata: t.strata.clone(),
            groups,
        }
    }
}

impl Chart for DiceByStratum {
    fn name(&self) -> &'static str {
        "dice_by_stratum"
    }
    fn title(&self) -> String {
        "Dice per annotated-volume stratum (best cell of each kind)".into()
    }
    fn series(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.0.clone()).collect()
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let n = self.strata.len() as f64;
        let strata = &self.strata;
        let label = move |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < strata.len() {
                format!("{} mL", strata[i as usize])
            } else {
                String::new()
            }
        };
        let mut chart =
            frame(root, &self.title(), 50).build_cartesian_2d(-0.5..n - 0.5, DICE_RANGE)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(4 * self.strata.len() + 1)
            .x_label_formatter(&label)
            .y_desc("Dice (mean over cases)")
            .x_desc("annotated volume")
            .label_style(font(13))
            .axis_desc_style(font(14))
            .draw()?;
        let k = self.groups.len().max(1) as f64;
        let width = 0.8 / k;
        for (g, (name, color, means)) in self.groups.iter().enumerate() {
            let c = *color;
            let bars = means
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.is_nan())
                .map(move |(s, m)| {
                    let left = s as f64 - 0.4 + g as f64 * width;
                    Rectangle::new([(left, 0.0), (left + width * 0.9, *m)], c.filled())
                });
            chart
                .draw_series(bars)?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        draw_legend(&mut chart, 12, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// (truth mL, predicted mL) of a cell's cases.
fn volumes(input: &ReportInput, cell: &str) -> Vec<(f64, f64)> {
    input
        .cells
        .iter()
        .find(|c| c.label() == cell)
        .map(|c| c.cases.iter().map(|k| (k.truth_ml, k.pred_ml)).collect())
        .unwrap_or_default()
}

/// Predicted vs annotated volume of each kind's best cell, with the identity line.
pub struct VolumeScatter {
    groups: Groups,
}

impl VolumeScatter {
    pub fn new(t: &Table, input: &ReportInput) -> Self {
        VolumeScatter {
            groups: t
                .best_per_kind()
                .map(|r| (r.cell.clone(), kind_color(r.kind), volumes(input, &r.cell)))
                .collect(),
        }
    }
}

impl Chart for VolumeScatter {
    fn name(&self) -> &'static str {
        "volume_scatter"
    }
    fn title(&self) -> String {
        "Predicted vs annotated hemorrhage volume (best cell of each kind)".into()
    }
    fn series(&self) -> Vec<String> {
        let mut s: Vec<String> = self.groups.iter().map(|g| g.0.clone()).collect();
        s.push("identity".into());
        s
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let max = self
            .groups
            .iter()
            .flat_map(|g| g.2.iter().flat_map(|p| [p.0, p.1]))
            .fold(1.0f64, f64::max)
            * 1.05;
        let mut chart = frame(root, &self.title(), 50).build_cartesian_2d(0.0..max, 0.0..max)?;
        chart
            .configure_mesh()
            .x_desc("annotated volume (mL)")
            .y_desc("predicted volume (mL)")
            .label_style(font(13))
            .axis_desc_style(font(14))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (max, max)],
                BLACK.mix(0.6).stroke_width(1),
            ))?
            .label("identity")
            .legend(legend_mark(RGBColor(90, 90, 90)));
        for (name, color, pts) in &self.groups {
            let c = *color;
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?
                .label(name.clone())
                .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
        }
        draw_legend(&mut chart, 12, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// Bland–Altman plot of the best cell overall.
pub struct BlandAltmanPlot {
    cell: String,
    color: RGBColor,
    /// (mean of the two volumes, predicted − annotated)
    points: Vec<(f64, f64)>,
    bias: f64,
    lower: f64,
    upper: f64,
}

impl BlandAltmanPlot {
    pub fn new(t: &Table, input: &ReportInput) -> Self {
        match t.best_overall() {
            Some(r) => {
                let ba = &r.agreement.bland_altman;
                BlandAltmanPlot {
                    cell: r.cell.clone(),
                    color: kind_color(r.kind),
                    points: volumes(input, &r.cell)
                        .into_iter()
                        .map(|(t, p)| ((t + p) / 2.0, p - t))
                        .collect(),
                    bias: ba.bias,
                    lower: ba.lower,
                    upper: ba.upper,
                }
            }
            None => BlandAltmanPlot {
                cell: "(no cell with a Dice)".into(),
                color: BLACK,
                points: vec![],
                bias: f64::NAN,
                lower: f64::NAN,
                upper: f64::NAN,
            },
        }
    }
}

impl Chart for BlandAltmanPlot {
    fn name(&self) -> &'static str {
        "bland_altman"
    }
    fn title(&self) -> String {
        format!("Bland–Altman, {}", self.cell)
    }
    fn series(&self) -> Vec<String> {
        vec![self.cell.clone(), "bias".into(), "95% limits".into()]
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let xmax = self.points.iter().map(|p| p.0).fold(1.0f64, f64::max) * 1.05;
        let ys = self
            .points
            .iter()
            .map(|p| p.1)
            .chain([self.lower, self.upper, 0.0])
            .filter(|v| v.is_finite());
        let (lo, hi) = ys.fold((-1.0f64, 1.0f64), |(a, b), v| (a.min(v), b.max(v)));
        let pad = 0.1 * (hi - lo);
        let mut chart =
            frame(root, &self.title(), 50).build_cartesian_2d(0.0..xmax, (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("mean of predicted and annotated volume (mL)")
            .y_desc("predicted − annotated (mL)")
            .label_style(font(13))
            .axis_desc_style(font(14))
            .draw()?;
        let c = self.color;
        chart
            .draw_series(self.points.iter().map(|p| Circle::new(*p, 3, c.filled())))?
            .label(self.cell.clone())
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
        if self.bias.is_finite() {
            let b = RGBColor(200, 0, 0);
            chart
                .draw_series(LineSeries::new(
                    [(0.0, self.bias), (xmax, self.bias)],
                    b.stroke_width(2),
                ))?
                .label("bias")
                .legend(legend_mark(b));
        }
        if self.lower.is_finite() && self.upper.is_finite() {
            let l = RGBColor(90, 90, 90);
            chart
                .draw_series(
                    [self.lower, self.upper]
                        .map(|y| PathElement::new(vec![(0.0, y), (xmax, y)], l.stroke_width(1))),
                )?
                .label("95% limits")
                .legend(legend_mark(l));
        }
        draw_legend(&mut chart, 12, SeriesLabelPosition::UpperRight)?;
        Ok(())
    }
}

/// Training loss per kind: each kind's best cell with curves, mean over folds at each step.
pub struct LossCurves {
    lines: Groups,
}

impl LossCurves {
    pub fn new(t: &Table, input: &ReportInput) -> Self {
        let mut lines = Vec::new();
        for kind in AdaptationKind::ALL {
            // Prefer the best cell of the kind; fall back to its first cell that has curves.
            let best = t.rows.iter().find(|r| r.kind == kind && r.best_of_kind);
            let with_curves = |label: &str| {
                input
                    .cells
                    .iter()
                    .find(|c| c.label() == label && !c.loss_curves.is_empty())
            };
            let cell = best.and_then(|r| with_curves(&r.cell)).or_else(|| {
                input
                    .cells
                    .iter()
                    .find(|c| c.kind == kind && !c.loss_curves.is_empty())
            });
            let Some(cell) = cell else { continue };
            let mut per_step: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
            for p in cell.loss_curves.iter().flat_map(|c| &c.points) {
                if p.loss.is_finite() {
                    let e = per_step.entry(p.step).or_insert((0.0, 0));
                    e.0 += p.loss;
                    e.1 += 1;
                }
            }
            let pts: Vec<(f64, f64)> = per_step
                .into_iter()
                .map(|(s, (sum, n))| (s as f64, sum / n as f64))
                .collect();
            if !pts.is_empty() {
                lines.push((cell.label(), kind_color(kind), pts));
            }
        }
        LossCurves { lines }
    }
}

impl Chart for LossCurves {
    fn name(&self) -> &'static str {
        "loss_curves"
    }
    fn title(&self) -> String {
        "Training loss (best cell of each kind, mean over folds)".into()
    }
    fn series(&self) -> Vec<String> {
        self.lines.iter().map(|l| l.0.clone()).collect()
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let pts = || self.lines.iter().flat_map(|l| l.2.iter());
        let xmax = pts().map(|p| p.0).fold(1.0f64, f64::max);
        let (lo, hi) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo, hi)
        } else if lo.is_finite() {
            (lo - 0.5, lo + 0.5)
        } else {
            (0.0, 1.0)
        };
        let pad = 0.05 * (hi - lo);
        let mut chart =
            frame(root, &self.title(), 60).build_cartesian_2d(0.0..xmax, (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("training loss")
            .label_style(font(13))
            .axis_desc_style(font(14))
            .draw()?;
        for (name, color, pts) in &self.lines {
            let c = *color;
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(name.clone())
                .legend(legend_mark(c));
        }
        draw_legend(&mut chart, 12, SeriesLabelPosition::UpperRight)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_keeps_only_undominated_cells() {
        let pts = [
            (100.0, 0.5),
            (10.0, 0.4),
            (50.0, 0.3),
            (1000.0, 0.6),
            (10.0, 0.45),
            (500.0, 0.55),
        ];
        assert_eq!(
            pareto_front(&pts),
            [(10.0, 0.45), (100.0, 0.5), (500.0, 0.55), (1000.0, 0.6)]
        );
        assert!(pareto_front(&[(1.0, f64::NAN)]).is_empty());
    }

    #[test]
    fn the_embedded_font_registers() {
        register_font().unwrap();
        register_font().unwrap();
    }
}
