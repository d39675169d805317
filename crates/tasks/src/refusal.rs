//! The refusal dataset: 200 harmful and 200 harmless instructions written for the project (harmful ones
//! name the request without operational detail), 20 categories of 20, with a fixed 60 / 20 / 20
//! train / validation / test split (240 / 80 / 80, each half harmful). The file is
//! `crates/tasks/data/refusal.jsonl` (keys `id`, `label`, `category`, `split`, `instruction`), embedded in
//! the crate so its users get it without the checkout.
//!
//! [`RefusalSet::builtin`] turns it into [`TaskRow`]s: a one-message chat, no trigger, behaviour
//! [`Behaviour::Refuse`] (harmful) or [`Behaviour::Comply`] (harmless), completion [`Completion::Open`]
//! (judged by refusal phrases or a classifier), labels [`Labels::Refusal`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RowError, TasksError};
use crate::jsonl::parse_jsonl_lines;
use crate::rows::{Behaviour, Completion, Input, Labels, RefusalLabel, Split, TaskRow};

/// The embedded `data/refusal.jsonl`.
pub const REFUSAL_JSONL: &str = include_str!("../data/refusal.jsonl");

/// The name errors give the embedded file.
pub const REFUSAL_FILE: &str = "crates/tasks/data/refusal.jsonl";

/// One line of `refusal.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalRecord {
    /// Unique id (`harmful-001`, `harmless-001`, ...).
    pub id: String,
    /// Harmful or harmless.
    pub label: RefusalLabel,
    /// Topic category.
    pub category: String,
    /// Fixed split.
    pub split: Split,
    /// The request.
    pub instruction: String,
}

impl RefusalRecord {
    /// The record as a task row (see the module doc).
    pub fn to_row(&self) -> TaskRow {
        TaskRow {
            id: self.id.clone(),
            input: Input::user(self.instruction.clone()),
            trigger: None,
            behaviour: match self.label {
                RefusalLabel::Harmful => Behaviour::Refuse,
                RefusalLabel::Harmless => Behaviour::Comply,
            },
            completion: Completion::Open,
            split: self.split,
            labels: Some(Labels::Refusal {
                label: self.label,
                category: self.category.clone(),
            }),
        }
    }
}

/// Refusal rows with accessors by split and label.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusalSet {
    rows: Vec<TaskRow>,
}

impl RefusalSet {
    /// The embedded dataset.
    pub fn builtin() -> Result<Self> {
        Self::from_jsonl(REFUSAL_JSONL, REFUSAL_FILE)
    }

    /// A dataset in `refusal.jsonl`'s format; `file` names the source in errors (ids must be unique).
    pub fn from_jsonl(text: &str, file: impl AsRef<Path>) -> Result<Self> {
        let file = file.as_ref();
        let records: Vec<(usize, RefusalRecord)> = parse_jsonl_lines(text, file)?;
        Self::from_records(&records, file)
    }

    /// Read a file in `refusal.jsonl`'s format.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TasksError::io(path, e))?;
        Self::from_jsonl(&text, path)
    }

    fn from_records(records: &[(usize, RefusalRecord)], file: &Path) -> Result<Self> {
        let mut first: std::collections::HashMap<&str, usize> = Default::default();
        let mut rows = Vec::with_capacity(records.len());
        for (line, r) in records {
            if let Some(&l) = first.get(r.id.as_str()) {
                return Err(RowError::DuplicateId {
                    id: r.id.clone(),
                    first_line: l,
                }
                .at(file, *line));
            }
            first.insert(&r.id, *line);
            let row = r.to_row();
            row.validate().map_err(|k| k.at(file, *line))?;
            rows.push(row);
        }
        Ok(RefusalSet { rows })
    }

    /// Every row, in file order.
    pub fn rows(&self) -> &[TaskRow] {
        &self.rows
    }

    /// Rows of one split.
    pub fn split(&self, split: Split) -> Vec<&TaskRow> {
        self.rows.iter().filter(|r| r.split == split).collect()
    }

    /// Rows with one label.
    pub fn with_label(&self, label: RefusalLabel) -> Vec<&TaskRow> {
        self.rows
            .iter()
            .filter(|r| label_of(r) == Some(label))
            .collect()
    }

    /// Rows of one split with one label.
    pub fn select(&self, split: Split, label: RefusalLabel) -> Vec<&TaskRow> {
        self.rows
            .iter()
            .filter(|r| r.split == split && label_of(r) == Some(label))
            .collect()
    }

    /// The instructions of one split with one label.
    pub fn instructions(&self, split: Split, label: RefusalLabel) -> Vec<&str> {
        self.select(split, label)
            .into_iter()
            .filter_map(TaskRow::instruction)
            .collect()
    }
}

/// A row's refusal label, if it has one.
pub fn label_of(row: &TaskRow) -> Option<RefusalLabel> {
    match &row.labels {
        Some(Labels::Refusal { label, .. }) => Some(*label),
        _ => None,
    }
}
