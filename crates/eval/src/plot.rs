//! Plots for run reports, drawn with `plotters`, each written as `stem.png` and `stem.svg` (atomically):
//! a line chart of named series ([`line_chart`]: success vs alpha, success vs layer), a histogram of one
//! or more overlaid value sets ([`histogram`]: KL values of mapped vs mean-ablated runs) and a grouped bar
//! chart ([`bar_chart`]: categories × series, e.g. mapped vs native vs random).
//!
//! The legend is drawn in rows between the title and the plotting area, so it never hides data; bar-chart
//! category names wrap at spaces to their slot's width, so long names do not run into each other.
//!
//! PNG text is rendered with DejaVu Sans, bundled in the crate (`assets/DejaVuSans.ttf`, Bitstream Vera
//! licence in `assets/DejaVuSans-LICENSE.txt`) and registered with plotters' `ab_glyph` renderer, so plots
//! look the same on every machine and need no system fonts or fontconfig. SVG text names `sans-serif`.
//!
//! Inputs are checked (no series, non-finite values, mismatched lengths are errors); drawing failures are
//! [`EvalError::Plot`].
//!
//! ```
//! use rosetta_eval::plot::{line_chart, LineChart};
//! let dir = std::env::temp_dir().join(format!("rosetta-plot-doc-{}", std::process::id()));
//! let chart = LineChart::new("Steering success vs alpha", "alpha", "success")
//!     .with_series("mapped", [(1.0, 0.1), (2.0, 0.4), (4.0, 0.55)])
//!     .with_series("native", [(1.0, 0.12), (2.0, 0.45), (4.0, 0.56)])
//!     .with_y_range(0.0, 1.0);
//! let files = line_chart(&dir.join("success_vs_alpha"), &chart)?;
//! assert!(files.png.exists() && files.svg.exists());
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), rosetta_eval::EvalError>(())
//! ```

use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::atomic::{create_dir_all, write_atomic};
use crate::error::{EvalError, Result};

/// DejaVu Sans (Bitstream Vera licence: `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The family every plot's text uses (plotters' default family too).
const FAMILY: &str = "sans-serif";

/// Register the bundled font with plotters once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(EvalError::Plot {
            what: "font".into(),
            message: "the bundled DejaVuSans.ttf could not be loaded".into(),
        })
    }
}

/// The files a plot was written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotFiles {
    /// `stem.png`.
    pub png: PathBuf,
    /// `stem.svg`.
    pub svg: PathBuf,
}

/// A plot's size in pixels (the SVG's too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlotSize {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Default for PlotSize {
    /// 800 × 500.
    fn default() -> Self {
        PlotSize {
            width: 800,
            height: 500,
        }
    }
}

impl PlotSize {
    /// `width × height`.
    pub fn new(width: u32, height: u32) -> Self {
        PlotSize { width, height }
    }

    fn check(&self, what: &str) -> Result<()> {
        let ok = |v: u32| (100..=8192).contains(&v);
        if ok(self.width) && ok(self.height) {
            Ok(())
        } else {
            Err(EvalError::Invalid(format!(
                "plot {what}: size {}x{} outside 100..=8192 pixels",
                self.width, self.height
            )))
        }
    }
}

/// Tableau 10: distinguishable colours for up to ten series (then they repeat).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// A named series of points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend name.
    pub name: String,
    /// Points `(x, y)`, drawn in this order.
    pub points: Vec<(f64, f64)>,
}

/// A line chart of named series (with point markers).
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The series.
    pub series: Vec<Series>,
    /// Y axis range; `None`: the data's, padded by 5%.
    pub y_range: Option<(f64, f64)>,
    /// Size.
    pub size: PlotSize,
}

impl LineChart {
    /// A chart with no series yet.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        LineChart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            y_range: None,
            size: PlotSize::default(),
        }
    }

    /// With one more series.
    pub fn with_series(
        mut self,
        name: impl Into<String>,
        points: impl IntoIterator<Item = (f64, f64)>,
    ) -> Self {
        self.series.push(Series {
            name: name.into(),
            points: points.into_iter().collect(),
        });
        self
    }

    /// With a fixed y range (e.g. `0..1` for rates).
    pub fn with_y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    /// With a size.
    pub fn with_size(mut self, size: PlotSize) -> Self {
        self.size = size;
        self
    }
}

/// A histogram of one or more value sets over shared bins (sets overlaid, translucent).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Title.
    pub title: String,
    /// X axis label (what the values are).
    pub x_label: String,
    /// The value sets, each with a legend name.
    pub sets: Vec<(String, Vec<f64>)>,
    /// Number of equal-width bins (default 30).
    pub bins: usize,
    /// Range the bins cover; `None`: from the smallest to the largest value.
    pub range: Option<(f64, f64)>,
    /// Size.
    pub size: PlotSize,
}

impl Histogram {
    /// A histogram with no values yet, 30 bins.
    pub fn new(title: impl Into<String>, x_label: impl Into<String>) -> Self {
        Histogram {
            title: title.into(),
            x_label: x_label.into(),
            sets: Vec::new(),
            bins: 30,
            range: None,
            size: PlotSize::default(),
        }
    }

    /// With one more value set.
    pub fn with_values(
        mut self,
        name: impl Into<String>,
        values: impl IntoIterator<Item = f64>,
    ) -> Self {
        self.sets.push((name.into(), values.into_iter().collect()));
        self
    }

    /// With a bin count.
    pub fn with_bins(mut self, bins: usize) -> Self {
        self.bins = bins;
        self
    }

    /// With a fixed range for the bins (values outside it are not counted).
    pub fn with_range(mut self, lo: f64, hi: f64) -> Self {
        self.range = Some((lo, hi));
        self
    }

    /// With a size.
    pub fn with_size(mut self, size: PlotSize) -> Self {
        self.size = size;
        self
    }
}

/// A grouped bar chart: one group of bars per category, one bar per series in each group.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// Title.
    pub title: String,
    /// Y axis label.
    pub y_label: String,
    /// Category names (x axis).
    pub categories: Vec<String>,
    /// Series: a legend name and one value per category.
    pub series: Vec<(String, Vec<f64>)>,
    /// Y axis range; `None`: from `min(0, data)` to the data's maximum plus 10%.
    pub y_range: Option<(f64, f64)>,
    /// Size.
    pub size: PlotSize,
}

impl BarChart {
    /// A chart over these categories, with no series yet.
    pub fn new<S: Into<String>>(
        title: impl Into<String>,
        y_label: impl Into<String>,
        categories: impl IntoIterator<Item = S>,
    ) -> Self {
        BarChart {
            title: title.into(),
            y_label: y_label.into(),
            categories: categories.into_iter().map(Into::into).collect(),
            series: Vec::new(),
            y_range: None,
            size: PlotSize::default(),
        }
    }

    /// With one more series (one value per category).
    pub fn with_series(
        mut self,
        name: impl Into<String>,
        values: impl IntoIterator<Item = f64>,
    ) -> Self {
        self.series
            .push((name.into(), values.into_iter().collect()));
        self
    }

    /// With a fixed y range.
    pub fn with_y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    /// With a size.
    pub fn with_size(mut self, size: PlotSize) -> Self {
        self.size = size;
        self
    }
}

/// Counts of `values` in `bins` equal-width bins over `[lo, hi]` (the last bin includes `hi`; values
/// outside are not counted). Errors on `bins == 0`, a non-finite or empty range, or a non-finite value.
pub fn bin_counts(values: &[f64], bins: usize, lo: f64, hi: f64) -> Result<Vec<u64>> {
    if bins == 0 {
        return Err(EvalError::Invalid("histogram: 0 bins".into()));
    }
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(EvalError::Invalid(format!(
            "histogram: bad range [{lo}, {hi}]"
        )));
    }
    let mut counts = vec![0u64; bins];
    let width = (hi - lo) / bins as f64;
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() {
            return Err(EvalError::Invalid(format!("histogram: value {i} is {v}")));
        }
        if v < lo || v > hi {
            continue;
        }
        // Truncation is the binning; `min` puts `hi` in the last bin.
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    Ok(counts)
}

fn check_finite(what: &str, name: &str, values: impl IntoIterator<Item = f64>) -> Result<()> {
    for (i, v) in values.into_iter().enumerate() {
        if !v.is_finite() {
            return Err(EvalError::Invalid(format!(
                "plot {what}: series {name:?} value {i} is {v}"
            )));
        }
    }
    Ok(())
}

fn check_range(what: &str, (lo, hi): (f64, f64)) -> Result<()> {
    if lo.is_finite() && hi.is_finite() && lo < hi {
        Ok(())
    } else {
        Err(EvalError::Invalid(format!(
            "plot {what}: bad axis range [{lo}, {hi}]"
        )))
    }
}

/// `lo..hi` widened by `pad` of its length on both sides, or by ±0.5 (±5% of |v|) when it is one value.
fn padded(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
    if hi > lo {
        let d = (hi - lo) * pad;
        (lo - d, hi + d)
    } else {
        let d = if lo == 0.0 { 0.5 } else { lo.abs() * 0.05 };
        (lo - d, hi + d)
    }
}

fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values.into_iter().fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A category axis: categories at 0, 1, …, n−1 over `[-0.5, n−0.5]`, labelled by name at exactly those
/// points.
struct CategoryAxis {
    names: Vec<String>,
}

impl Ranged for CategoryAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let r = self.range();
        let logic = (value - r.start) / (r.end - r.start);
        let actual = limit.1 - limit.0;
        if actual == 0 {
            return limit.1;
        }
        limit.0 + (f64::from(actual) * logic + 1e-3).floor() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let n = self.names.len();
        let max = hint.max_num_points().max(1);
        let step = n.div_ceil(max).max(1);
        (0..n).step_by(step).map(|i| i as f64).collect()
    }

    fn range(&self) -> Range<f64> {
        -0.5..(self.names.len() as f64 - 0.5)
    }
}

impl ValueFormatter<f64> for CategoryAxis {
    fn format_ext(&self, value: &f64) -> String {
        let i = value.round();
        if i >= 0.0 && (value - i).abs() < 1e-6 {
            self.names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    }
}

type DrawResult = std::result::Result<(), String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// What each plot kind draws, on any backend.
trait Draw {
    fn size(&self) -> PlotSize;
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult;
}

/// The title font: 22 px, shrunk (down to 12 px) until `title` fits the area's width with the margins, so
/// a long title is not cut off at the edges.
fn title_font<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> TextStyle<'static> {
    let room = root.dim_in_pixel().0.saturating_sub(2 * MARGIN);
    let style = |size: u32| -> TextStyle<'static> { (FAMILY, size).into_font().into() };
    (12..=22)
        .rev()
        .find(|&size| {
            root.estimate_text_size(title, &style(size))
                .is_ok_and(|(w, _)| w <= room)
        })
        .map_or_else(|| style(12), style)
}

fn label_font() -> TextStyle<'static> {
    (FAMILY, 15).into_font().into()
}

fn axis_font() -> TextStyle<'static> {
    (FAMILY, 13).into_font().into()
}

/// Outer margin of every plot, in pixels.
const MARGIN: u32 = 14;
/// Width of the y label area (tick labels and the axis description).
const Y_LABEL_AREA: u32 = 64;
/// Height of one line of axis-font text (legend rows, wrapped category labels).
const LINE_HEIGHT: u32 = 17;

/// The width of `text` in the axis font, as the backend will draw it (a rough estimate if it cannot say).
fn text_width<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, text: &str) -> u32 {
    root.estimate_text_size(text, &axis_font())
        .map_or(7 * text.chars().count() as u32, |(w, _)| w)
}

/// The plotting area's width on `root`: the image less the outer margins and the y label area.
fn plot_width<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>) -> u32 {
    root.dim_in_pixel()
        .0
        .saturating_sub(2 * MARGIN + Y_LABEL_AREA)
}

/// `text` broken at spaces into lines no wider than `room` (as `width` measures them), words in order;
/// a word wider than `room` gets a line of its own.
fn wrap_words(text: &str, room: u32, width: impl Fn(&str) -> u32) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if width(&format!("{line} {word}")) <= room => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
}

/// Items of the given widths laid out left to right in rows no wider than `room`, `gap` apart; each row
/// holds at least one item.
fn pack_rows(widths: &[u32], gap: u32, room: u32) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for (i, &w) in widths.iter().enumerate() {
        match rows.last_mut() {
            Some(row) if used + gap + w <= room => {
                row.push(i);
                used += gap + w;
            }
            _ => {
                rows.push(vec![i]);
                used = w;
            }
        }
    }
    rows
}

/// A tick label for an axis of whole numbers: "12" at whole values, nothing between them.
fn whole_number_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// How a legend entry shows its series.
#[derive(Clone, Copy)]
enum Swatch {
    /// A short line (line charts).
    Line(ShapeStyle),
    /// A filled square (bars, histogram sets).
    Fill(ShapeStyle),
}

/// The legend, drawn in rows between the title and the plotting area, so that it never covers data.
struct Legend {
    entries: Vec<(String, Swatch)>,
    /// Entry widths (swatch, gap, text).
    widths: Vec<u32>,
    rows: Vec<Vec<usize>>,
}

/// Swatch width plus the gap before its text.
const SWATCH: u32 = 28;
/// Space between two legend entries in a row.
const ENTRY_GAP: u32 = 22;

impl Legend {
    /// Lays out `entries` to fit the plotting area's width on `root`.
    fn new<DB: DrawingBackend>(
        root: &DrawingArea<DB, Shift>,
        entries: Vec<(String, Swatch)>,
    ) -> Self {
        let room = plot_width(root);
        let widths: Vec<u32> = entries
            .iter()
            .map(|(name, _)| SWATCH + text_width(root, name))
            .collect();
        let rows = pack_rows(&widths, ENTRY_GAP, room);
        Legend {
            entries,
            widths,
            rows,
        }
    }

    /// The height it takes above the plotting area.
    fn height(&self) -> u32 {
        if self.rows.is_empty() {
            0
        } else {
            self.rows.len() as u32 * LINE_HEIGHT + 8
        }
    }

    /// Draws it on `root` just above `plot`, the plotting area, each row centred over it.
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        plot: (Range<i32>, Range<i32>),
    ) -> DrawResult {
        let (xs, ys) = plot;
        let text = axis_font().pos(Pos::new(HPos::Left, VPos::Center));
        for (r, row) in self.rows.iter().enumerate() {
            let total: u32 = row.iter().map(|&i| self.widths[i]).sum::<u32>()
                + ENTRY_GAP * (row.len() as u32 - 1);
            let mut x = (xs.start + xs.end) / 2 - total as i32 / 2;
            let y =
                ys.start - self.height() as i32 + (r as u32 * LINE_HEIGHT + LINE_HEIGHT / 2) as i32;
            for &i in row {
                let (name, swatch) = &self.entries[i];
                match *swatch {
                    Swatch::Line(style) => root
                        .draw(&PathElement::new(vec![(x, y), (x + 22, y)], style))
                        .map_err(err)?,
                    Swatch::Fill(style) => root
                        .draw(&Rectangle::new([(x + 4, y - 6), (x + 18, y + 6)], style))
                        .map_err(err)?,
                }
                root.draw(&Text::new(
                    name.clone(),
                    (x + SWATCH as i32, y),
                    text.clone(),
                ))
                .map_err(err)?;
                x += (self.widths[i] + ENTRY_GAP) as i32;
            }
        }
        Ok(())
    }
}

/// The part of `root` a chart is built on: inside the outer margin, below the title (centred at the top)
/// and below the legend's rows, which [`Legend::draw`] fills in just above the plotting area.
fn chart_area<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    legend: &Legend,
) -> std::result::Result<DrawingArea<DB, Shift>, String> {
    let titled = root
        .margin(MARGIN, MARGIN, MARGIN, MARGIN)
        .titled(title, title_font(root, title))
        .map_err(err)?;
    Ok(titled.margin(legend.height(), 0, 0, 0))
}

impl Draw for LineChart {
    fn size(&self) -> PlotSize {
        self.size
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let all = || self.series.iter().flat_map(|s| s.points.iter().copied());
        let (x_lo, x_hi) = min_max(all().map(|p| p.0)).ok_or("no points")?;
        let (x_lo, x_hi) = padded(x_lo, x_hi, 0.02);
        let (y_lo, y_hi) = match self.y_range {
            Some(r) => r,
            None => {
                let (lo, hi) = min_max(all().map(|p| p.1)).ok_or("no points")?;
                padded(lo, hi, 0.05)
            }
        };
        let legend = Legend::new(
            root,
            self.series
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), Swatch::Line(color(i).stroke_width(2))))
                .collect(),
        );
        root.fill(&WHITE).map_err(err)?;
        let area = chart_area(root, &self.title, &legend)?;
        let mut chart = ChartBuilder::on(&area)
            .x_label_area_size(48)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(err)?;
        // Whole-number x values (layers, counts) get whole-number ticks: "12", not "12.0".
        let whole_x = all().all(|(x, _)| x.fract() == 0.0);
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .axis_desc_style(label_font())
            .label_style(axis_font())
            .light_line_style(RGBColor(235, 235, 235));
        if whole_x {
            mesh.x_label_formatter(&whole_number_label);
        }
        mesh.draw().map_err(err)?;
        for (i, s) in self.series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                .map_err(err)?;
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, c.filled())),
                )
                .map_err(err)?;
        }
        legend.draw(root, chart.plotting_area().get_pixel_range())?;
        root.present().map_err(err)
    }
}

impl Histogram {
    fn bin_range(&self) -> Result<(f64, f64)> {
        if let Some(r) = self.range {
            check_range("histogram", r)?;
            return Ok(r);
        }
        let (lo, hi) = min_max(self.sets.iter().flat_map(|s| s.1.iter().copied()))
            .ok_or(EvalError::Empty("histogram"))?;
        Ok(if hi > lo {
            (lo, hi)
        } else {
            padded(lo, hi, 0.0)
        })
    }
}

impl Draw for Histogram {
    fn size(&self) -> PlotSize {
        self.size
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let (lo, hi) = self.bin_range().map_err(err)?;
        let counts: Vec<Vec<u64>> = self
            .sets
            .iter()
            .map(|(_, v)| bin_counts(v, self.bins, lo, hi))
            .collect::<Result<_>>()
            .map_err(err)?;
        let top = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
        let width = (hi - lo) / self.bins as f64;
        let alpha = if self.sets.len() > 1 { 0.55 } else { 0.85 };
        let legend = Legend::new(
            root,
            self.sets
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (name.clone(), Swatch::Fill(color(i).mix(alpha).filled())))
                .collect(),
        );
        root.fill(&WHITE).map_err(err)?;
        let area = chart_area(root, &self.title, &legend)?;
        let mut chart = ChartBuilder::on(&area)
            .x_label_area_size(48)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(lo..hi, 0.0..(top as f64 * 1.08))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc("count")
            .axis_desc_style(label_font())
            .label_style(axis_font())
            // Counts are integers: fractional ticks (small counts) stay unlabelled.
            .y_label_formatter(&whole_number_label)
            .disable_x_mesh()
            .max_light_lines(0)
            .draw()
            .map_err(err)?;
        for (i, counts) in counts.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(
                    counts
                        .iter()
                        .enumerate()
                        .filter(|(_, &n)| n > 0)
                        .map(|(b, &n)| {
                            let x0 = lo + b as f64 * width;
                            Rectangle::new(
                                [(x0, 0.0), (x0 + width, n as f64)],
                                c.mix(alpha).filled(),
                            )
                        }),
                )
                .map_err(err)?;
        }
        legend.draw(root, chart.plotting_area().get_pixel_range())?;
        root.present().map_err(err)
    }
}

impl BarChart {
    fn value_range(&self) -> Result<(f64, f64)> {
        if let Some(r) = self.y_range {
            check_range("bar chart", r)?;
            return Ok(r);
        }
        let (lo, hi) = min_max(self.series.iter().flat_map(|s| s.1.iter().copied()))
            .ok_or(EvalError::Empty("bar chart"))?;
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let span = if hi > lo { hi - lo } else { 1.0 };
        Ok((
            if lo < 0.0 { lo - 0.1 * span } else { 0.0 },
            if hi > 0.0 || lo == 0.0 {
                hi + 0.1 * span
            } else {
                0.0
            },
        ))
    }
}

impl Draw for BarChart {
    fn size(&self) -> PlotSize {
        self.size
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let (y_lo, y_hi) = self.value_range().map_err(err)?;
        let axis = CategoryAxis {
            names: self.categories.clone(),
        };
        let legend = Legend::new(
            root,
            self.series
                .iter()
                .enumerate()
                .map(|(j, (name, _))| (name.clone(), Swatch::Fill(color(j).filled())))
                .collect(),
        );
        // Category names wrap at spaces to the width of their slot on the axis, so neighbours never
        // overlap; the label area grows by a line for each line the longest name needs.
        let slot = plot_width(root) / self.categories.len().max(1) as u32;
        let labels: Vec<Vec<String>> = self
            .categories
            .iter()
            .map(|name| wrap_words(name, slot * 9 / 10, |t| text_width(root, t)))
            .collect();
        let lines = labels.iter().map(Vec::len).max().unwrap_or(1) as u32;
        root.fill(&WHITE).map_err(err)?;
        let area = chart_area(root, &self.title, &legend)?;
        let mut chart = ChartBuilder::on(&area)
            .x_label_area_size(16 + lines * LINE_HEIGHT)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(axis, y_lo..y_hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .y_desc(&self.y_label)
            .axis_desc_style(label_font())
            .label_style(axis_font())
            .x_labels(self.categories.len())
            // Ticks only: the names are drawn below, wrapped.
            .x_label_formatter(&|_| String::new())
            .disable_x_mesh()
            .max_light_lines(0)
            .draw()
            .map_err(err)?;
        let text = axis_font().pos(Pos::new(HPos::Center, VPos::Top));
        for (i, lines) in labels.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64, y_lo));
            for (l, line) in lines.iter().enumerate() {
                let y = y + 8 + (l as u32 * LINE_HEIGHT) as i32;
                root.draw(&Text::new(line.clone(), (x, y), text.clone()))
                    .map_err(err)?;
            }
        }
        let k = self.series.len() as f64;
        let group = 0.8;
        let bar = group / k;
        let base = 0.0_f64.clamp(y_lo, y_hi);
        for (j, (_, values)) in self.series.iter().enumerate() {
            let c = color(j);
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let x0 = i as f64 - group / 2.0 + j as f64 * bar;
                    Rectangle::new([(x0 + 0.01, base), (x0 + bar - 0.01, v)], c.filled())
                }))
                .map_err(err)?;
        }
        legend.draw(root, chart.plotting_area().get_pixel_range())?;
        root.present().map_err(err)
    }
}

/// `stem` with `ext` appended (`runs/a.b` → `runs/a.b.png`, not `runs/a.png`).
fn with_ext(stem: &Path, ext: &str) -> PathBuf {
    let mut s: OsString = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn encode_png(rgb: &[u8], size: PlotSize) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, size.width, size.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(rgb)?;
        w.finish()?;
    }
    Ok(out)
}

/// Draw `plot` into memory twice (bitmap, SVG) and write both files atomically.
fn render<P: Draw>(stem: &Path, plot: &P) -> Result<PlotFiles> {
    let what = stem.display().to_string();
    let plot_err = |message: String| EvalError::Plot {
        what: what.clone(),
        message,
    };
    let size = plot.size();
    size.check(&what)?;
    ensure_font()?;
    let (w, h) = (size.width, size.height);
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        plot.draw(&root).map_err(plot_err)?;
    }
    let png_bytes = encode_png(&rgb, size).map_err(|e| plot_err(format!("PNG: {e}")))?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        plot.draw(&root).map_err(plot_err)?;
    }
    if let Some(dir) = stem.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(dir)?;
    }
    let files = PlotFiles {
        png: with_ext(stem, "png"),
        svg: with_ext(stem, "svg"),
    };
    write_atomic(&files.png, &png_bytes)?;
    write_atomic(&files.svg, svg.as_bytes())?;
    Ok(files)
}

/// Draw a line chart to `stem.png` and `stem.svg`. Errors on no series, an empty series, a non-finite
/// coordinate or a bad y range.
pub fn line_chart(stem: &Path, chart: &LineChart) -> Result<PlotFiles> {
    if chart.series.is_empty() {
        return Err(EvalError::Empty("line chart: series"));
    }
    for s in &chart.series {
        if s.points.is_empty() {
            return Err(EvalError::Invalid(format!(
                "line chart: series {:?} has no points",
                s.name
            )));
        }
        check_finite(
            "line chart",
            &s.name,
            s.points.iter().flat_map(|p| [p.0, p.1]),
        )?;
    }
    if let Some(r) = chart.y_range {
        check_range("line chart", r)?;
    }
    render(stem, chart)
}

/// Draw a histogram to `stem.png` and `stem.svg`. Errors on no value set, an empty one, a non-finite
/// value, 0 bins or a bad range.
pub fn histogram(stem: &Path, hist: &Histogram) -> Result<PlotFiles> {
    if hist.sets.is_empty() {
        return Err(EvalError::Empty("histogram: value sets"));
    }
    for (name, values) in &hist.sets {
        if values.is_empty() {
            return Err(EvalError::Invalid(format!(
                "histogram: value set {name:?} is empty"
            )));
        }
        check_finite("histogram", name, values.iter().copied())?;
    }
    let (lo, hi) = hist.bin_range()?;
    bin_counts(&[], hist.bins, lo, hi)?;
    render(stem, hist)
}

/// Draw a grouped bar chart to `stem.png` and `stem.svg`. Errors on no category, no series, a series
/// whose length differs from the categories', a non-finite value or a bad y range.
pub fn bar_chart(stem: &Path, chart: &BarChart) -> Result<PlotFiles> {
    if chart.categories.is_empty() {
        return Err(EvalError::Empty("bar chart: categories"));
    }
    if chart.series.is_empty() {
        return Err(EvalError::Empty("bar chart: series"));
    }
    for (name, values) in &chart.series {
        if values.len() != chart.categories.len() {
            return Err(EvalError::LengthMismatch {
                what: "bar chart series vs categories",
                left: values.len(),
                right: chart.categories.len(),
            });
        }
        check_finite("bar chart", name, values.iter().copied())?;
    }
    chart.value_range()?;
    render(stem, chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Width of monospace text, 10 pixels a character.
    fn mono(t: &str) -> u32 {
        10 * t.chars().count() as u32
    }

    #[test]
    fn words_wrap_to_the_room_in_order() {
        let lines = wrap_words("ridge (generic text) / mapped contrast", 120, mono);
        assert_eq!(
            lines,
            ["ridge", "(generic", "text) /", "mapped", "contrast"]
        );
        assert!(lines.iter().all(|l| mono(l) <= 120));
        assert_eq!(lines.join(" "), "ridge (generic text) / mapped contrast");
        // Room for everything: one line; a word wider than the room stands alone; empty text: one line.
        assert_eq!(
            wrap_words("native (target)", 500, mono),
            ["native (target)"]
        );
        assert_eq!(
            wrap_words("a incomprehensibly b", 60, mono),
            ["a", "incomprehensibly", "b"]
        );
        assert_eq!(wrap_words("", 60, mono), [""]);
    }

    #[test]
    fn legend_entries_pack_into_rows() {
        assert_eq!(pack_rows(&[100, 100, 100], 20, 1000), vec![vec![0, 1, 2]]);
        assert_eq!(
            pack_rows(&[100, 100, 100], 20, 220),
            vec![vec![0, 1], vec![2]]
        );
        // An entry wider than the room still gets a row.
        assert_eq!(pack_rows(&[300, 50], 20, 200), vec![vec![0], vec![1]]);
        assert!(pack_rows(&[], 20, 200).is_empty());
    }
}
