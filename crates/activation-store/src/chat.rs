//! Documents as each model reads them, with every token's span in a text the models share.
//!
//! A plain-text document is read by both models as the same string, so token spans are already comparable.
//! A chat is not: each model renders its own chat template (`<|im_start|>user\n...`,
//! `<start_of_turn>user\n...`, different default system prompts), so the rendered strings differ. What
//! the models do share is the **content** of the messages. Rosetta therefore aligns chats in *content
//! coordinates*:
//!
//! - the shared text of a chat is its message contents joined by `"\n"` ([`chat_content_text`]): message
//!   `k` occupies characters `[base_k, base_k + len_k)` with `base_{k+1} = base_k + len_k + 1`, so a token
//!   ending at the end of one message never ties with a token of the next;
//! - each model's rendering is located message by message ([`render_chat`]: the template is rendered once
//!   with a unique placeholder per message, and must reproduce the real rendering when the placeholders are
//!   replaced by the contents, verbatim or trimmed as Gemma's template does), so a content span is exact
//!   even when a default system prompt happens to contain the same words;
//! - a token lying entirely inside one message's rendered content gets that span shifted into content
//!   coordinates; **template tokens** (role headers, default system prompts, turn markers, the generation
//!   prompt), **special tokens** (ids in [`crate::special_token_ids`], written by the template) and tokens
//!   straddling a content boundary get no shared span.
//!
//! [`crate::Alignment::CharEnd`] then pairs tokens whose shared spans end at the same content character;
//! tokens without a shared span are never paired and count as not kept in the keep report (the
//! collection reports how many there were). The causal context of a kept row still includes the model's
//! own template: rows compare how each model reads the same content in its own chat format.
//! [`crate::Alignment::Identity`] (identical tokenizers) pairs every position and so needs identical
//! renderings; a single-model store keeps every position of the model's rendering, template tokens
//! included (as it keeps a text's BOS). A model without a chat template cannot read chats at all (an
//! error names it).

use crate::error::{Result, StoreError};
use rosetta_model_hooks::{ChatMessage, Encoded, Tokenizer};
use std::collections::BTreeSet;

/// Joins message contents in a chat's shared text.
pub const CONTENT_SEPARATOR: char = '\n';

/// The shared text of a chat: its message contents joined by [`CONTENT_SEPARATOR`].
pub fn chat_content_text(messages: &[ChatMessage]) -> String {
    let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    contents.join(&CONTENT_SEPARATOR.to_string())
}

/// Whether a chat gets the generation prompt when collected: yes unless it ends with an assistant turn
/// (a prompt is read up to where the model would answer; a finished conversation as it is).
pub fn wants_generation_prompt(messages: &[ChatMessage]) -> bool {
    messages.last().is_some_and(|m| m.role != "assistant")
}

/// Where one message's content lies in a rendered chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentSpan {
    /// Character range `[start, end)` of the rendered content.
    pub rendered: (usize, usize),
    /// Characters of the original content before the rendered part (leading whitespace a trimming
    /// template dropped).
    pub skipped: usize,
}

fn placeholder(k: usize) -> String {
    format!("\u{E000}rosetta-message-{k}\u{E001}")
}

/// Render `messages` with the tokenizer's chat template and locate each message's content in the result.
///
/// Errors when the checkpoint has no chat template, or when the template does not write every content
/// exactly once, verbatim or trimmed (a template that rewrites contents cannot be aligned on them).
pub fn render_chat(
    tokenizer: &Tokenizer,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<(String, Vec<ContentSpan>)> {
    let real = tokenizer.apply_chat_template(messages, add_generation_prompt)?;
    let marked: Vec<ChatMessage> = messages
        .iter()
        .enumerate()
        .map(|(k, m)| ChatMessage::new(m.role.clone(), placeholder(k)))
        .collect();
    let template = tokenizer.apply_chat_template(&marked, add_generation_prompt)?;
    // Split the placeholder rendering into literal pieces and message slots, in order.
    let mut pieces: Vec<(&str, usize)> = Vec::new();
    let mut rest = template.as_str();
    let mut found = vec![0usize; messages.len()];
    loop {
        let next = (0..messages.len())
            .filter_map(|k| rest.find(&placeholder(k)).map(|at| (at, k)))
            .min();
        let Some((at, k)) = next else { break };
        pieces.push((&rest[..at], k));
        found[k] += 1;
        rest = &rest[at + placeholder(k).len()..];
    }
    if let Some(k) = found.iter().position(|&n| n != 1) {
        return Err(StoreError::Alignment(format!(
            "the chat template renders message {k} ({}) {} times: its content cannot be located",
            messages[k].role, found[k]
        )));
    }
    for trimmed in [false, true] {
        let mut text = String::with_capacity(real.len());
        let mut chars = 0usize;
        let mut spans = vec![
            ContentSpan {
                rendered: (0, 0),
                skipped: 0,
            };
            messages.len()
        ];
        for &(literal, k) in &pieces {
            text.push_str(literal);
            chars += literal.chars().count();
            let content = messages[k].content.as_str();
            let (written, skipped) = if trimmed {
                let t = content.trim();
                let lead = content.len() - content.trim_start().len();
                (t, content[..lead].chars().count())
            } else {
                (content, 0)
            };
            let n = written.chars().count();
            spans[k] = ContentSpan {
                rendered: (chars, chars + n),
                skipped,
            };
            text.push_str(written);
            chars += n;
        }
        text.push_str(rest);
        if text == real {
            return Ok((real, spans));
        }
    }
    Err(StoreError::Alignment(
        "the chat template changes message contents (they appear neither verbatim nor trimmed): \
         the chat cannot be aligned on them"
            .into(),
    ))
}

/// One model's encoding of a document, with each token's span in the document's shared text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocEncoding {
    /// What the model reads: the text with the tokenizer's special tokens, or the rendered chat.
    pub encoded: Encoded,
    /// Each token's character span in [`DocEncoding::shared_text`]; `None` for special tokens, chat
    /// template text and tokens straddling a content boundary.
    pub shared: Vec<Option<(usize, usize)>>,
    /// The text both models share: the document's text, or [`chat_content_text`] of a chat.
    pub shared_text: String,
}

impl DocEncoding {
    /// Encode plain text with the tokenizer's special tokens (HF's default); tokens whose id is in
    /// `special_ids` or whose span is empty get no shared span.
    pub fn text(tokenizer: &Tokenizer, text: &str, special_ids: &BTreeSet<i64>) -> Result<Self> {
        let mut encoded = tokenizer.encode(text, true)?;
        crate::align::mark_special_tokens(&mut encoded, special_ids);
        let shared = encoded
            .offsets
            .iter()
            .zip(&encoded.special)
            .map(|(&(s, e), &special)| (!special && s < e).then_some((s, e)))
            .collect();
        Ok(Self {
            encoded,
            shared,
            shared_text: text.to_string(),
        })
    }

    /// Render a chat with the tokenizer's template ([`render_chat`]), encode it without adding special
    /// tokens (the template writes them), and map the tokens inside message contents to content
    /// coordinates (see the module docs).
    pub fn chat(
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        special_ids: &BTreeSet<i64>,
    ) -> Result<Self> {
        let (rendered, spans) = render_chat(tokenizer, messages, add_generation_prompt)?;
        let mut encoded = tokenizer.encode(&rendered, false)?;
        crate::align::mark_special_tokens(&mut encoded, special_ids);
        let mut bases = Vec::with_capacity(messages.len());
        let mut base = 0;
        for m in messages {
            bases.push(base);
            base += m.content.chars().count() + 1;
        }
        let shared = encoded
            .offsets
            .iter()
            .zip(&encoded.special)
            .map(|(&(s, e), &special)| {
                if special || s >= e {
                    return None;
                }
                spans.iter().zip(&bases).find_map(|(span, &base)| {
                    let (rs, re) = span.rendered;
                    (rs <= s && e <= re).then(|| {
                        let shift = base + span.skipped;
                        (s - rs + shift, e - rs + shift)
                    })
                })
            })
            .collect();
        Ok(Self {
            encoded,
            shared,
            shared_text: chat_content_text(messages),
        })
    }

    /// The encoding in shared coordinates, for [`crate::align()`]: same ids, offsets in the shared text,
    /// tokens without a shared span flagged special with an empty span (never paired by `CharEnd`).
    pub fn shared_view(&self) -> Encoded {
        Encoded {
            ids: self.encoded.ids.clone(),
            offsets: self.shared.iter().map(|s| s.unwrap_or((0, 0))).collect(),
            special: self.shared.iter().map(Option::is_none).collect(),
            text: self.shared_text.clone(),
        }
    }

    /// Tokens without a shared span (special and template tokens).
    pub fn outside(&self) -> usize {
        self.shared.iter().filter(|s| s.is_none()).count()
    }

    /// Keep the first `n` tokens.
    pub fn truncate(&mut self, n: usize) {
        self.encoded.ids.truncate(n);
        self.encoded.offsets.truncate(n);
        self.encoded.special.truncate(n);
        self.shared.truncate(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_text_and_generation_prompt() {
        let m = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::user("Hi"),
        ];
        assert_eq!(chat_content_text(&m), "Be brief.\nHi");
        assert!(wants_generation_prompt(&m));
        let mut done = m.clone();
        done.push(ChatMessage::new("assistant", "Hello"));
        assert!(!wants_generation_prompt(&done));
    }
}
