//! Prompts and the token positions a method reads or an intervention touches.
//!
//! A [`Prompt`] is a plain text (encoded with the tokenizer's special tokens, as HF does by default) or a
//! chat (rendered with the checkpoint's chat template and its generation prompt). A [`PositionRule`] picks
//! token indices in it:
//!
//! | rule | tokens |
//! |---|---|
//! | [`PositionRule::Last`] | the last token (for a chat: the last token of the generation prompt) |
//! | [`PositionRule::All`] | every token, the template's and BOS included |
//! | [`PositionRule::PostInstruction`] | a chat's tokens after the last user message's content: what the template puts between the instruction and the answer (Arditi et al.'s post-instruction positions; for Qwen `<\|im_end\|>\n<\|im_start\|>assistant\n`) |
//! | [`PositionRule::Matching`] | tokens overlapping an occurrence of a text, e.g. a trigger `\|prod\|` (every occurrence) |
//!
//! Spans are character offsets in the encoded string (the rendered template for a chat), so a trigger found
//! by its text lands on the right tokens in any tokenizer.

use rosetta_activation_store::render_chat;
use rosetta_model_hooks::{ChatMessage, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SteeringError};

/// Input to a model: a text or a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// A plain text, encoded with the tokenizer's special tokens.
    Text(String),
    /// A conversation, rendered with the chat template and the generation prompt.
    Chat(Vec<ChatMessage>),
}

impl Prompt {
    /// A one-message chat: the user says `instruction`.
    pub fn user(instruction: impl Into<String>) -> Self {
        Prompt::Chat(vec![ChatMessage::user(instruction)])
    }
    /// A plain text.
    pub fn text(text: impl Into<String>) -> Self {
        Prompt::Text(text.into())
    }
}

/// Which tokens of a prompt a method reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionRule {
    /// The last token.
    Last,
    /// Every token.
    All,
    /// A chat's template tokens after the last user message (errors for plain texts).
    PostInstruction,
    /// Tokens overlapping any occurrence of this text (errors when a prompt does not contain it).
    Matching(String),
}

impl std::fmt::Display for PositionRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PositionRule::Last => write!(f, "last token"),
            PositionRule::All => write!(f, "all tokens"),
            PositionRule::PostInstruction => write!(f, "post-instruction tokens"),
            PositionRule::Matching(t) => write!(f, "tokens of {t:?}"),
        }
    }
}

/// A prompt encoded for one model, with the token indices its rule selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPrompt {
    /// Token ids.
    pub ids: Vec<i64>,
    /// `(start, end)` character span of each token in [`EncodedPrompt::text`].
    pub offsets: Vec<(usize, usize)>,
    /// The encoded string (the rendered template for a chat).
    pub text: String,
    /// Where the last user message's content ends in `text` (chats only), in characters.
    pub instruction_end: Option<usize>,
}

impl EncodedPrompt {
    /// Encode `prompt` with `tokenizer`.
    pub fn new(tokenizer: &Tokenizer, prompt: &Prompt) -> Result<Self> {
        match prompt {
            Prompt::Text(t) => {
                let enc = tokenizer.encode(t, true)?;
                if enc.ids.is_empty() {
                    return Err(SteeringError::invalid(format!(
                        "prompt {t:?} encodes to no tokens"
                    )));
                }
                Ok(Self {
                    ids: enc.ids,
                    offsets: enc.offsets,
                    text: enc.text,
                    instruction_end: None,
                })
            }
            Prompt::Chat(messages) => {
                let (text, spans) = render_chat(tokenizer, messages, true)?;
                let user = messages
                    .iter()
                    .rposition(|m| m.role == "user")
                    .ok_or_else(|| SteeringError::invalid("chat prompt has no user message"))?;
                let enc = tokenizer.encode(&text, false)?;
                Ok(Self {
                    ids: enc.ids,
                    offsets: enc.offsets,
                    text,
                    instruction_end: Some(spans[user].rendered.1),
                })
            }
        }
    }

    /// Token indices selected by `rule` (sorted, at least one, else an error naming the prompt).
    pub fn select(&self, rule: &PositionRule) -> Result<Vec<usize>> {
        let n = self.ids.len();
        let picked: Vec<usize> = match rule {
            PositionRule::Last => vec![n - 1],
            PositionRule::All => (0..n).collect(),
            PositionRule::PostInstruction => {
                let end = self.instruction_end.ok_or_else(|| {
                    SteeringError::invalid(
                        "post-instruction positions need chat prompts (a plain text has no template)",
                    )
                })?;
                // The first token starting at or after the instruction's end, and every token after it
                // (template tokens with empty spans in between are kept: they are post-instruction too).
                match self.offsets.iter().position(|&(s, e)| s >= end && e > s) {
                    Some(first) => (first..n).collect(),
                    None => Vec::new(),
                }
            }
            PositionRule::Matching(needle) => {
                self.matching(needle)?.into_iter().flatten().collect()
            }
        };
        if picked.is_empty() {
            return Err(SteeringError::invalid(format!(
                "{rule} select no token in {:?}",
                shorten(&self.text)
            )));
        }
        Ok(picked)
    }

    /// The token indices of each occurrence of `needle` (tokens overlapping its character span), in order.
    pub fn matching(&self, needle: &str) -> Result<Vec<Vec<usize>>> {
        if needle.is_empty() {
            return Err(SteeringError::invalid("an empty text matches no token"));
        }
        let mut spans = Vec::new();
        let mut from = 0;
        while let Some(at) = self.text[from..].find(needle) {
            let byte = from + at;
            let start = self.text[..byte].chars().count();
            let end = start + needle.chars().count();
            let tokens: Vec<usize> = self
                .offsets
                .iter()
                .enumerate()
                .filter(|(_, &(s, e))| e > s && s < end && e > start)
                .map(|(i, _)| i)
                .collect();
            if !tokens.is_empty() {
                spans.push(tokens);
            }
            from = byte + needle.len();
        }
        if spans.is_empty() {
            return Err(SteeringError::invalid(format!(
                "{needle:?} does not occur in {:?}",
                shorten(&self.text)
            )));
        }
        Ok(spans)
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(77).collect::<String>())
    }
}

/// Encode every prompt.
pub fn encode_all(tokenizer: &Tokenizer, prompts: &[Prompt]) -> Result<Vec<EncodedPrompt>> {
    prompts
        .iter()
        .map(|p| EncodedPrompt::new(tokenizer, p))
        .collect()
}
